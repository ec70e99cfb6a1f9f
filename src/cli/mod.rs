//! Command-line interface: argument parsing and one module per subcommand.

/// `println!` that returns the write error instead of panicking, so output
/// piped into `head` ends quietly (see `main`).
macro_rules! outln {
    () => {{
        use std::io::Write as _;
        writeln!(std::io::stdout())
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

mod bench;
mod demo;
mod embed;
mod gpu;
mod info;
pub mod progress;
mod run;

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
    /// Run a built-in model (default: METER, text 40 + image 577 tokens) on a
    /// seeded synthetic input, pruned and dense, and print a per-layer table.
    Demo(demo::DemoArgs),
    /// Sentence embeddings from a HuggingFace BERT-family model directory,
    /// one JSON object per text.
    Embed(embed::EmbedArgs),
    /// Write seeded random weights (pruners included) for a config.
    InitWeights(run::InitWeightsArgs),
    /// Run a model on inputs from a safetensors file and write every output
    /// (final rows, scores, keep flags, head masks, pooled, FLOPs) to another.
    Run(run::RunArgs),
    /// Time pruned forward passes against the dense pass of the same runtime
    /// on benchmark workloads (METER VQA, BLIP ViT) and pruning schedules,
    /// in one table; optionally JSON rows and a PyTorch baseline.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Embed(args) => embed::run(&args),
        Command::InitWeights(args) => run::init_weights(&args),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
