//! `smarttrim init-weights` and `smarttrim run`: any model, inputs from a
//! file, every output to a file (formats: docs/FORMATS.md).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use smarttrim::reference::{forward, ForwardOptions};
use smarttrim::spec::{preset, ModelConfig, Weights};
use smarttrim::tensor_io;

use super::demo::DeviceChoice;
use super::gpu::{GpuRunner, SyncChoice};

/// A model config given as a file or a preset name.
fn load_config(
    config: &Option<PathBuf>,
    preset_name: &Option<String>,
) -> anyhow::Result<ModelConfig> {
    match (config, preset_name) {
        (Some(p), None) => Ok(ModelConfig::from_file(p)?),
        (None, Some(n)) => Ok(preset(n)?),
        _ => bail!("give exactly one of --config FILE and --preset NAME"),
    }
}

#[derive(Debug, Args)]
pub struct InitWeightsArgs {
    /// Model config (JSON; docs/FORMATS.md).
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in model instead of a config file.
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn init_weights(args: &InitWeightsArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config, &args.preset)?;
    let w = Weights::random(&config, args.seed)?;
    tensor_io::write_atomic(&args.out, &w.to_safetensors_bytes()?)?;
    eprintln!(
        "wrote {} ({} tensors, seed {})",
        args.out.display(),
        Weights::tensor_specs(&config)?.len(),
        args.seed
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Model config (JSON; docs/FORMATS.md).
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in model instead of a config file.
    #[arg(long)]
    pub preset: Option<String>,
    /// Weights (safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// Inputs (safetensors; names in docs/FORMATS.md).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write every output (safetensors); written only on success.
    #[arg(long)]
    pub output: PathBuf,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Ignore all pruners (the dense pass).
    #[arg(long)]
    pub dense: bool,
    /// GPU only: how the host learns the row counts after threshold pruning.
    #[arg(long, value_enum, default_value_t = SyncChoice::ReadCounts)]
    pub sync: SyncChoice,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config, &args.preset)?;
    let weights = Weights::load(&config, &args.weights)
        .with_context(|| format!("loading weights {}", args.weights.display()))?;
    let inputs = tensor_io::read_inputs(&config, &args.input)
        .with_context(|| format!("reading inputs {}", args.input.display()))?;
    let gpu = match args.device {
        DeviceChoice::Cpu => None,
        DeviceChoice::Cuda => Some(
            GpuRunner::new(&weights, &inputs).context("--device cuda: the GPU pass is unusable")?,
        ),
        DeviceChoice::Auto => match GpuRunner::new(&weights, &inputs) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("running on the CPU reference: {e:#}");
                None
            }
        },
    };
    let (out, backend) = match gpu {
        Some(mut g) => {
            let (out, syncs, ms) = g
                .forward(&inputs, args.dense, args.sync.into())
                .with_context(|| format!("running the model on {}", args.input.display()))?;
            let note = format!(
                "{} (f16), {ms:.2} ms, {syncs} host wait(s) inside the pass",
                g.device_name
            );
            (out, note)
        }
        None => (
            forward(&weights, &inputs, &ForwardOptions { dense: args.dense })
                .with_context(|| format!("running the model on {}", args.input.display()))?,
            "CPU reference (f32)".to_string(),
        ),
    };
    tensor_io::write_outputs(&config, &out, &args.output)?;
    let flops: (u64, u64) = out
        .flops
        .iter()
        .fold((0, 0), |a, f| (a.0 + f.pruned.model, a.1 + f.dense.model));
    eprintln!(
        "wrote {}: {} sequence(s), model FLOPs {:.1}% of dense; {backend}",
        args.output.display(),
        out.flops.len(),
        100.0 * flops.0 as f64 / flops.1.max(1) as f64
    );
    Ok(())
}
