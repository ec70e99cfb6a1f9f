//! `smarttrim info`: what this build and this machine can do.

use clap::Args;
use smarttrim::device::{self, Device};
use smarttrim::kernels;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Also list every kernel's registers, shared memory and spills (ptxas -v).
    #[arg(long)]
    pub kernels: bool,
    /// Instead: print the config smarttrim derives from a model directory
    /// (HuggingFace `config.json` + `model.safetensors`, or a smarttrim one)
    /// as JSON on stdout (a summary on stderr), to edit and pass to
    /// `run --model DIR --config C.json`.
    #[arg(long, conflicts_with = "kernels")]
    pub model: Option<std::path::PathBuf>,
}

fn model_info(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use smarttrim::spec::hf::{self, DirFormat};
    let (format, cfg) = hf::read_dir_config(dir)
        .with_context(|| format!("reading the model directory {}", dir.display()))?;
    let what = match format {
        DirFormat::HuggingFace(f) => format!("a HuggingFace {f:?} checkpoint"),
        DirFormat::Smarttrim => "a smarttrim model".into(),
    };
    eprintln!("{}: {what}, kind {:?}", dir.display(), cfg.kind);
    for s in &cfg.streams {
        eprintln!(
            "  stream `{}`: {} layers, hidden {}, {} heads, ffn {}, {:?}, embedding {:?}",
            s.name,
            s.layers.len(),
            s.hidden,
            s.heads,
            s.ffn,
            s.activation,
            s.embedding
        );
    }
    if let Some(h) = &cfg.head {
        eprintln!("  head: {h:?}");
    }
    eprintln!(
        "  inputs: {}",
        cfg.input_streams()
            .iter()
            .map(|&s| cfg.streams[s].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    outln!("{}", cfg.to_json()?)?;
    Ok(())
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.model {
        return model_info(dir);
    }
    outln!("smarttrim {}", env!("CARGO_PKG_VERSION"))?;
    outln!()?;
    outln!("toolchain")?;
    if kernels::BUILT {
        outln!(
            "  nvcc:        {} ({})",
            kernels::NVCC_PATH,
            kernels::NVCC_VERSION
        )?;
        outln!("  PTX targets: {}", kernels::TARGETS.join(", "))?;
        outln!("  modules:     {}", kernels::module_names().join(", "))?;
    } else {
        outln!("  GPU kernels: not built ({})", kernels::NOT_BUILT_REASON)?;
        outln!("               run scripts/setup-cuda.sh and rebuild to get them")?;
    }
    if args.kernels && kernels::BUILT {
        outln!()?;
        outln!(
            "  {:<12} {:<11} {:<28} {:>5} {:>7} {:>6} {:>7}",
            "module",
            "target",
            "kernel",
            "regs",
            "smem B",
            "stack",
            "spill B"
        )?;
        for (m, t, r) in kernels::all_resources() {
            outln!(
                "  {:<12} {:<11} {:<28} {:>5} {:>7} {:>6} {:>7}",
                m,
                t,
                r.name,
                r.registers,
                r.shared_bytes,
                r.stack_frame_bytes,
                r.spill_store_bytes + r.spill_load_bytes
            )?;
        }
    }
    outln!()?;
    outln!("driver")?;
    match device::driver_version() {
        Ok((major, minor)) => outln!("  CUDA driver {major}.{minor}")?,
        Err(e) => {
            outln!("  none: {e}")?;
            return Ok(());
        }
    }
    outln!()?;
    outln!("devices")?;
    let n = match device::device_count() {
        Ok(n) => n,
        Err(e) => {
            outln!("  none: {e}")?;
            return Ok(());
        }
    };
    if n == 0 {
        outln!("  none: the driver reports no CUDA devices")?;
    }
    for ordinal in 0..n {
        match Device::open(ordinal).and_then(|d| d.info()) {
            Ok(info) => outln!("  {info}")?,
            Err(e) => outln!("  cuda:{ordinal}: cannot open: {e}")?,
        }
    }
    Ok(())
}
