//! `smarttrim init-weights` and `smarttrim run`: any model, inputs from a
//! file, every output to a file (formats: docs/FORMATS.md).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use smarttrim::reference::{forward, ForwardOptions};
use smarttrim::spec::hf::{self, DirFormat};
use smarttrim::spec::{preset, ModelConfig, Weights};
use smarttrim::tensor_io;

use super::demo::DeviceChoice;
use super::gpu::{GpuRunner, SyncChoice};
use super::progress;

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
    /// Model config (JSON; docs/FORMATS.md). With --model: where the pruners
    /// go (the directory's backbone with its own pruner placement).
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in model instead of a config file.
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// A model directory (HuggingFace `config.json` + `model.safetensors`, or
    /// a smarttrim one): write seeded *pruner* weights only, for its
    /// backbone, placed as the presets place them (or as --config says),
    /// with the config in the file's metadata, for `run --pruners`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Seeded random weights for `config`, refused up front when they and
/// their file image (held together while writing) cannot fit in memory.
fn random_weights(config: &ModelConfig, seed: u64) -> anyhow::Result<Weights> {
    smarttrim::limits::check_memory(
        "the weights and their safetensors image",
        Weights::min_bytes(config).saturating_mul(2),
    )?;
    let _p = progress::spinner("generating random weights");
    Ok(Weights::random(config, seed)?)
}

/// Writes `bytes` to `path` atomically, with a spinner.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let _p = progress::spinner(format!(
        "writing {} ({})",
        path.display(),
        smarttrim::limits::human_bytes(bytes.len() as u64)
    ));
    Ok(tensor_io::write_atomic(path, bytes)?)
}

pub fn init_weights(args: &InitWeightsArgs) -> anyhow::Result<()> {
    tensor_io::check_output_path(&args.out)?;
    if let Some(dir) = &args.model {
        let (_, derived) = hf::read_dir_config(dir)
            .with_context(|| format!("reading the model directory {}", dir.display()))?;
        let config = match &args.config {
            Some(p) => {
                let c = ModelConfig::from_file(p)?;
                if !hf::same_backbone(&c, &derived) {
                    bail!(
                        "{} does not describe the backbone of {} (`smarttrim info --model {}` \
                         prints it)",
                        p.display(),
                        dir.display(),
                        dir.display()
                    );
                }
                c
            }
            None => derived.with_default_pruners(),
        };
        let w = random_weights(&config, args.seed)?;
        let bytes = hf::pruner_file_bytes(&w)?;
        write_file(&args.out, &bytes)?;
        let n = w
            .tensors()
            .iter()
            .filter(|(n, _, _)| n.contains("_pruner."))
            .count();
        eprintln!(
            "wrote {} ({n} pruner tensors for {}, seed {}; run with --model {} --pruners {})",
            args.out.display(),
            dir.display(),
            args.seed,
            dir.display(),
            args.out.display()
        );
        return Ok(());
    }
    let config = load_config(&args.config, &args.preset)?;
    let w = random_weights(&config, args.seed)?;
    let bytes = {
        let _p = progress::spinner("serialising the weights");
        w.to_safetensors_bytes()?
    };
    write_file(&args.out, &bytes)?;
    eprintln!(
        "wrote {} ({} tensors, seed {})",
        args.out.display(),
        Weights::tensor_specs(&config)?.len(),
        args.seed
    );
    Ok(())
}

/// The weights `run` uses: a model directory (its config, or --config, or
/// the pruner file's), or a config / preset with a weights file; pruner
/// tensors from --pruners in either case.
fn load_run_weights(args: &RunArgs) -> anyhow::Result<Weights> {
    let pruners = args.pruners.as_deref();
    if let Some(dir) = &args.model {
        if args.weights.is_some() {
            bail!("--model DIR holds the weights; give --weights only with --config or --preset");
        }
        let config = args
            .config
            .as_ref()
            .map(ModelConfig::from_file)
            .transpose()?;
        let loaded = {
            let _p = progress::spinner(format!("loading {}", dir.display()));
            hf::load_model_dir(dir, config.as_ref(), pruners)
                .with_context(|| format!("loading the model directory {}", dir.display()))?
        };
        let what = match loaded.format {
            DirFormat::HuggingFace(f) => format!("HuggingFace {f:?} checkpoint"),
            DirFormat::Smarttrim => "smarttrim model".into(),
        };
        eprintln!("loaded {} ({what})", dir.display());
        return Ok(loaded.weights);
    }
    let config = load_config(&args.config, &args.preset)?;
    let Some(wpath) = &args.weights else {
        bail!("give --weights W.safetensors with --config or --preset (or --model DIR)");
    };
    let _p = progress::spinner(format!("loading {}", wpath.display()));
    hf::load_weights_files(&config, wpath, pruners)
        .with_context(|| format!("loading weights {}", wpath.display()))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Model config (JSON; docs/FORMATS.md). With --model: the config to run
    /// the directory's backbone with (e.g. its pruners), which must match it.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in model instead of a config file.
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// A model directory: HuggingFace (`config.json` + `model.safetensors`,
    /// as published: BERT, RoBERTa, ViT, CLIP vision, BLIP) or smarttrim
    /// (e.g. a converted METER checkpoint).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weights (safetensors, smarttrim names) for --config / --preset.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Pruner weights (safetensors, smarttrim names), e.g. from
    /// `init-weights --model DIR`; its metadata may carry the config.
    #[arg(long)]
    pub pruners: Option<PathBuf>,
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
    tensor_io::check_output_path(&args.output)?;
    let weights = load_run_weights(args)?;
    let config = weights.config.clone();
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
            let note = if g.emulated {
                format!(
                    "{} (f16; emulated on the CPU, no time reported), {syncs} host wait(s) \
                     inside the pass",
                    g.device_name
                )
            } else {
                format!(
                    "{} (f16), {ms:.2} ms, {syncs} host wait(s) inside the pass",
                    g.device_name
                )
            };
            (out, note)
        }
        None => {
            let _p = progress::spinner("running the model on the CPU reference");
            (
                forward(&weights, &inputs, &ForwardOptions { dense: args.dense })
                    .with_context(|| format!("running the model on {}", args.input.display()))?,
                "CPU reference (f32)".to_string(),
            )
        }
    };
    {
        let _p = progress::spinner(format!("writing {}", args.output.display()));
        tensor_io::write_outputs(&config, &out, &args.output)?;
    }
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
