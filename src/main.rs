//! The `smarttrim` command-line tool.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Ctrl-C (or SIGTERM / SIGHUP): remove the temporary file of any output
    // being written (`tensor_io::write_atomic`), so that an interrupted
    // `init-weights` or `run` leaves nothing behind, then exit as a shell
    // expects of an interrupted command. Failing to install the handler only
    // loses that clean-up.
    let _ = ctrlc::set_handler(|| {
        let removed = smarttrim::tensor_io::remove_temp_files();
        cli::progress::clear();
        eprintln!(
            "\nsmarttrim: interrupted{}",
            if removed > 0 {
                "; the partial output was removed"
            } else {
                ""
            }
        );
        std::process::exit(130);
    });
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`smarttrim demo | head`): not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            cli::progress::clear();
            eprintln!("smarttrim: error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line for the common case: the error, then each cause that its
/// message does not already contain (the library's errors print their
/// source themselves; an anyhow context does not).
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
