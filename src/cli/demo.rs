//! `smarttrim demo`: a built-in model (or a given config and weights) on a
//! seeded synthetic input, pruned and dense, with a per-layer table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use smarttrim::model::SyncPolicy;
use smarttrim::reference::synthetic::{IMAGE_ROWS, TEXT_ROWS};
use smarttrim::reference::{forward, synthetic_inputs, ForwardOptions, Outputs};
use smarttrim::spec::{preset, ModelConfig, Weights};

use super::gpu::GpuRunner;
use super::progress;

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// The GPU when one is usable, else the CPU reference.
    Auto,
    /// The exact f32 CPU reference.
    Cpu,
    /// The GPU (fails when no GPU forward pass is usable, e.g. no driver,
    /// or a model the kernels do not support).
    Cuda,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Built-in model (meter, blip, meter-full, blip-vit, blip-text,
    /// bert-base, tiny-*).
    #[arg(long, default_value = "meter", conflicts_with = "config")]
    pub preset: String,
    /// A model config (JSON; see docs/FORMATS.md) instead of a preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Weights (safetensors, docs/FORMATS.md names); default: seeded random.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Sequences per stream.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seed of the random weights and the synthetic input.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Give text-like sequences after the first random lengths (50-100%).
    #[arg(long)]
    pub ragged: bool,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw the rows kept at each pruning layer (patch grids for image
    /// streams, token rows for text streams) of one instance into this file
    /// (.svg or .png).
    #[arg(long, value_name = "PATH")]
    pub keep_map: Option<PathBuf>,
    /// The instance (sequence of the batch) that --keep-map draws (default 0).
    #[arg(long, requires = "keep_map")]
    pub instance: Option<usize>,
    /// Draw the histogram of per-instance model FLOPs (% of dense) over the
    /// batch into this file (.svg or .png); use with --batch 64 --ragged.
    #[arg(long, value_name = "PATH")]
    pub flops_hist: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct StreamRow {
    name: String,
    rows_in: i64,
    rows_kept: i64,
    self_heads: f64,
    cross_heads: Option<f64>,
    heads: usize,
}

#[derive(Debug, Serialize)]
struct LayerRow {
    /// The stage of a whole model (BLIP: image encoder, then text encoder;
    /// METER: text encoder, image encoder, fusion); 0 for other models.
    stage: usize,
    layer: usize,
    streams: Vec<StreamRow>,
    model_flops: u64,
    executed_flops: u64,
    dense_flops: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    batch: usize,
    seed: u64,
    device: String,
    device_note: String,
    layers: Vec<LayerRow>,
    model_flops: u64,
    executed_flops: u64,
    dense_flops: u64,
    model_flops_ratio: f64,
    executed_flops_ratio: f64,
    /// Wall times; null on the CPU-emulated device, whose times mean nothing.
    pruned_ms: Option<f64>,
    dense_ms: Option<f64>,
    speedup: Option<f64>,
    /// Whether the pass ran on the CPU-emulated device.
    emulated: bool,
}

/// A lower bound of the host memory the demo takes for `batch` sequences:
/// its synthetic inputs and, on the CPU reference (`cpu`), the FFN's inner
/// rows of a pass plus the final rows of the pruned and the dense pass,
/// which it keeps side by side.
fn demo_bytes(config: &ModelConfig, batch: usize, cpu: bool) -> u64 {
    use smarttrim::spec::EmbeddingConfig as E;
    let b = batch as u128;
    let inputs = config.input_streams();
    // Rows per sequence, per config stream, as `synthetic_inputs` makes them.
    let mut rows = vec![0u128; config.streams.len()];
    for (i, s) in config.streams.iter().enumerate() {
        rows[i] = match s.embedding {
            E::Vit { .. } => s.embedding.vit_rows().unwrap_or(0) as u128,
            E::Bert { .. } => TEXT_ROWS as u128,
            _ => match inputs.iter().position(|&x| x == i) {
                Some(0) => TEXT_ROWS as u128,
                Some(_) => IMAGE_ROWS as u128,
                // A stream fed by another (METER's fusion streams, from
                // the stream two before).
                None => rows.get(i.wrapping_sub(2)).copied().unwrap_or(0),
            },
        };
    }
    let mut n: u128 = 0;
    for &i in &inputs {
        let s = &config.streams[i];
        n += b * match s.embedding {
            E::Vit {
                image_size,
                channels,
                ..
            } => (channels * image_size * image_size) as u128,
            E::Bert { .. } => rows[i],
            _ => rows[i] * s.embedding.input_width(s.hidden).unwrap_or(s.hidden) as u128,
        };
    }
    if let smarttrim::spec::ModelKind::CrossEncoder { context_hidden } = config.kind {
        n += b * IMAGE_ROWS as u128 * context_hidden as u128;
    }
    if cpu {
        for (s, r) in config.streams.iter().zip(&rows) {
            n += b * r * (3 * s.hidden + s.ffn) as u128;
        }
    }
    u64::try_from(n * 4).unwrap_or(u64::MAX)
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    // Everything that can be checked is checked before any work.
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let instance = args.instance.unwrap_or(0);
    if instance >= args.batch {
        bail!(
            "--instance {instance} is out of range for --batch {}",
            args.batch
        );
    }
    for p in [&args.keep_map, &args.flops_hist].into_iter().flatten() {
        smarttrim::report::Format::of(p)?;
        smarttrim::tensor_io::check_output_path(p)?;
    }
    let (config, model_name) = match &args.config {
        Some(p) => (ModelConfig::from_file(p)?, p.display().to_string()),
        None => (preset(&args.preset)?, args.preset.clone()),
    };
    smarttrim::limits::check_memory(
        &format!(
            "--batch {}{}",
            args.batch,
            if args.device == DeviceChoice::Cuda {
                " (its inputs)"
            } else {
                " (its inputs and the CPU reference's passes)"
            }
        ),
        demo_bytes(&config, args.batch, args.device != DeviceChoice::Cuda),
    )?;
    let weights = match &args.weights {
        Some(p) => {
            Weights::load(&config, p).with_context(|| format!("loading weights {}", p.display()))?
        }
        None => {
            let _p = progress::spinner("generating random weights");
            Weights::random(&config, args.seed)?
        }
    };
    let inputs = {
        let _p = progress::spinner("generating the synthetic input");
        synthetic_inputs(&config, args.batch, args.seed, args.ragged)
    };
    let gpu =
        match args.device {
            DeviceChoice::Cpu => Err("asked for".to_string()),
            DeviceChoice::Cuda => Ok(GpuRunner::new(&weights, &inputs)
                .context("--device cuda: the GPU pass is unusable")?),
            DeviceChoice::Auto => GpuRunner::new(&weights, &inputs).map_err(|e| format!("{e:#}")),
        };
    let device_note = match &gpu {
        Ok(g) if g.emulated => format!(
            "{} (f16 weights and activations; emulated on the CPU: times are not reported)",
            g.device_name
        ),
        Ok(g) => format!("{} (f16 weights and activations)", g.device_name),
        Err(why) => format!("CPU reference (f32) — {why}"),
    };
    let (device, emulated) = match &gpu {
        Ok(g) => ("cuda", g.emulated),
        Err(_) => ("cpu-reference", false),
    };

    if !args.json {
        outln!(
            "smarttrim demo: {model_name}, batch {}, seed {}{}",
            args.batch,
            args.seed,
            if args.weights.is_some() {
                ""
            } else {
                ", random weights"
            }
        )?;
        outln!("device: {device_note}")?;
    }

    let (pruned, pruned_ms, dense, dense_ms) = match gpu {
        Ok(mut g) => {
            let _p = progress::spinner(format!("passes on {}", g.device_name));
            // One untimed pass each first: module loading and cuBLASLt
            // heuristics are not the pass.
            let sync = SyncPolicy::ReadCounts;
            g.forward(&inputs, false, sync)?;
            g.forward(&inputs, true, sync)?;
            let (pruned, _, pruned_ms) = g.forward(&inputs, false, sync)?;
            let (dense, _, dense_ms) = g.forward(&inputs, true, sync)?;
            (pruned, pruned_ms, dense, dense_ms)
        }
        Err(_) => {
            let p = progress::spinner(format!(
                "pruned pass on the CPU reference (batch {})",
                args.batch
            ));
            let t = Instant::now();
            let pruned = forward(&weights, &inputs, &ForwardOptions { dense: false })?;
            let pruned_ms = t.elapsed().as_secs_f64() * 1e3;
            p.set_message(format!(
                "dense pass on the CPU reference (batch {})",
                args.batch
            ));
            let t = Instant::now();
            let dense = forward(&weights, &inputs, &ForwardOptions { dense: true })?;
            let dense_ms = t.elapsed().as_secs_f64() * 1e3;
            (pruned, pruned_ms, dense, dense_ms)
        }
    };

    let device = Device {
        name: device.into(),
        note: device_note,
        emulated,
    };
    let report = build_report(
        &config, &pruned, &dense, model_name, args, device, pruned_ms, dense_ms,
    );
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_table(&report)?;
    }
    draw_pictures(args, &config, &pruned)
}

/// Writes the pictures asked for (`--keep-map`, `--flops-hist`).
fn draw_pictures(args: &DemoArgs, config: &ModelConfig, pruned: &Outputs) -> anyhow::Result<()> {
    use smarttrim::report::{self, Format};
    let mut wrote = Vec::new();
    if let Some(p) = &args.keep_map {
        let _p = progress::spinner(format!("drawing {}", p.display()));
        report::keep_map(config, pruned, args.instance.unwrap_or(0), p)
            .with_context(|| format!("drawing the keep map {}", p.display()))?;
        wrote.push(p);
    }
    if let Some(p) = &args.flops_hist {
        let _p = progress::spinner(format!("drawing {}", p.display()));
        report::flops_hist(config, pruned, p)
            .with_context(|| format!("drawing the FLOPs histogram {}", p.display()))?;
        wrote.push(p);
    }
    for p in wrote {
        // Status lines go to stderr so that --json output stays one object.
        eprintln!("wrote {}", p.display());
        if Format::of(p)? == Format::Png && report::png_font().is_none() {
            eprintln!(
                "note: no TrueType font found (set SMARTTRIM_FONT to a .ttf file), so {} has no text",
                p.display()
            );
        }
    }
    Ok(())
}

/// Where the demo ran, for the report.
struct Device {
    name: String,
    note: String,
    emulated: bool,
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    config: &ModelConfig,
    pruned: &Outputs,
    dense: &Outputs,
    model: String,
    args: &DemoArgs,
    device: Device,
    pruned_ms: f64,
    dense_ms: f64,
) -> Report {
    let sum = |v: &[i32]| v.iter().map(|&x| x as i64).sum::<i64>();
    let mean = |v: &[i32]| {
        if v.is_empty() {
            0.0
        } else {
            sum(v) as f64 / v.len() as f64
        }
    };
    let stages = config.stages();
    let layers = stages
        .iter()
        .enumerate()
        .flat_map(|(st, stage)| {
            let n = stage.config.streams.first().map_or(0, |s| s.layers.len());
            (0..n).map(move |l| (st, stage, l))
        })
        .map(|(st, stage, l)| {
            let mut row = LayerRow {
                stage: st,
                layer: l,
                streams: Vec::new(),
                model_flops: 0,
                executed_flops: 0,
                dense_flops: 0,
            };
            for &si in &stage.streams {
                let s = &pruned.streams[si];
                let Some(rec) = s.layers.get(l) else { continue };
                let has_cross = rec.active_cross_heads.iter().any(|&c| c > 0);
                row.streams.push(StreamRow {
                    name: s.name.clone(),
                    rows_in: sum(&rec.rows_in),
                    rows_kept: sum(&rec.kept),
                    self_heads: mean(&rec.active_self_heads),
                    cross_heads: has_cross.then(|| mean(&rec.active_cross_heads)),
                    heads: config.streams[si].heads,
                });
                for f in &rec.flops {
                    row.model_flops += f.model;
                    row.executed_flops += f.executed;
                }
                if let Some(drec) = dense.streams[si].layers.get(l) {
                    row.dense_flops += drec.flops.iter().map(|f| f.model).sum::<u64>();
                }
            }
            row
        })
        .collect();
    let model_flops: u64 = pruned.flops.iter().map(|f| f.pruned.model).sum();
    let executed_flops: u64 = pruned.flops.iter().map(|f| f.pruned.executed).sum();
    let dense_flops: u64 = pruned.flops.iter().map(|f| f.dense.model).sum();
    Report {
        model,
        batch: args.batch,
        seed: args.seed,
        device: device.name,
        device_note: device.note,
        layers,
        model_flops,
        executed_flops,
        dense_flops,
        model_flops_ratio: model_flops as f64 / dense_flops.max(1) as f64,
        executed_flops_ratio: executed_flops as f64 / dense_flops.max(1) as f64,
        pruned_ms: (!device.emulated).then_some(pruned_ms),
        dense_ms: (!device.emulated).then_some(dense_ms),
        speedup: (!device.emulated).then(|| dense_ms / pruned_ms.max(1e-9)),
        emulated: device.emulated,
    }
}

fn print_table(r: &Report) -> std::io::Result<()> {
    let mut last_stage = None;
    for l in &r.layers {
        if last_stage != Some(l.stage) {
            // A header per stage (one for basic models).
            last_stage = Some(l.stage);
            let names: Vec<String> = l.streams.iter().map(|s| s.name.clone()).collect();
            outln!()?;
            let mut header = format!("{:>5}", "layer");
            for n in &names {
                header.push_str(&format!(
                    " | {:>13} {:>6} {:>6}",
                    format!("{n} rows"),
                    "self-h",
                    "cross-h"
                ));
            }
            header.push_str(&format!(
                " | {:>8} {:>8} | {:>9}",
                "model", "executed", "dense"
            ));
            outln!("{header}")?;
            outln!("{}", "-".repeat(header.len()))?;
        }
        let mut line = format!("{:>5}", l.layer);
        for s in &l.streams {
            let cross = s.cross_heads.map_or("-".to_string(), |c| format!("{c:.1}"));
            line.push_str(&format!(
                " | {:>13} {:>6} {:>7}",
                format!("{}/{}", s.rows_kept, s.rows_in),
                format!("{:.1}", s.self_heads),
                cross
            ));
        }
        line.push_str(&format!(
            " | {:>7.1}% {:>7.1}% | {:>6.2} GF",
            100.0 * l.model_flops as f64 / l.dense_flops.max(1) as f64,
            100.0 * l.executed_flops as f64 / l.dense_flops.max(1) as f64,
            l.dense_flops as f64 / 1e9
        ));
        outln!("{line}")?;
    }
    outln!()?;
    outln!(
        "rows: kept/entering, summed over the batch; heads: mean active per sequence \
         (of {}); FLOPs: this layer's, as a share of the dense layer's",
        r.layers
            .first()
            .and_then(|l| l.streams.first())
            .map_or(0, |s| s.heads)
    )?;
    outln!(
        "whole pass (embeddings and pruners included): model FLOPs {:.2} G = {:.1}% of dense \
         {:.2} G; executed {:.2} G = {:.1}%",
        r.model_flops as f64 / 1e9,
        100.0 * r.model_flops_ratio,
        r.dense_flops as f64 / 1e9,
        r.executed_flops as f64 / 1e9,
        100.0 * r.executed_flops_ratio
    )?;
    match (r.pruned_ms, r.dense_ms, r.speedup) {
        (Some(p), Some(d), Some(s)) => outln!(
            "time ({}): pruned {:.1} ms, dense {:.1} ms, speedup {:.2}x",
            r.device,
            p,
            d,
            s
        )?,
        _ => outln!(
            "time ({}): not reported — the device is the CPU emulator, whose times mean nothing",
            r.device
        )?,
    }
    Ok(())
}
