//! Command-line interface: argument parsing and one module per subcommand.

mod info;

use clap::{Parser, Subcommand};

/// Run adaptively pruned (SmartTrim) transformer encoders on NVIDIA GPUs,
/// with an exact CPU reference.
#[derive(Debug, Parser)]
#[command(name = "smarttrim", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the CUDA toolchain and PTX targets built in, the driver and the
    /// devices, or the reason there are none.
    Info(info::InfoArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(args) => info::run(&args),
    }
}
