//! `smarttrim bench`: pruned forward passes measured against the dense pass
//! of the same runtime, on the workloads and schedules of
//! [`smarttrim::workloads`], in one table (and optionally JSON rows; schema
//! in docs/bench/README.md), optionally next to a PyTorch baseline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use smarttrim::device::Device;
use smarttrim::model::SyncPolicy;
use smarttrim::reference::{forward, ForwardOptions, Inputs};
use smarttrim::spec::schedule::{budget_flops, without_pruners};
use smarttrim::spec::Weights;
use smarttrim::workloads::{workload, Plan, Schedule, Workload, DEFAULT_WORKLOADS, SCHEDULES};
use smarttrim::Error;

use super::gpu::SyncChoice;
use super::progress;

mod engine;
mod table;
mod torch;

use engine::*;
use table::*;
use torch::*;

/// Where the passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchDevice {
    /// The GPU pass (`smarttrim::model`) on device 0.
    Cuda,
    /// The exact f32 CPU reference.
    Cpu,
}

/// CUDA graph capture of the passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphChoice {
    /// Plain launches.
    Off,
    /// Captured once per input shape, then replayed.
    On,
    /// A row for each.
    Both,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workload to run (repeatable, or comma separated): meter-vqa, blip-vit,
    /// tiny-meter, tiny-vit. Default: meter-vqa and blip-vit.
    #[arg(long = "workload", value_name = "NAME", value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Batch sizes (sequences per stream), comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
    pub batch: Vec<usize>,
    /// Schedules, comma separated: dense, budget-70, budget-50, budget-35
    /// (any budget-P), threshold. Default: all five.
    #[arg(long, value_delimiter = ',')]
    pub schedule: Vec<String>,
    /// Where to run: the GPU, or the CPU reference (slow at full size; for
    /// checking the table, or on a machine without a GPU).
    #[arg(long, value_enum, default_value_t = BenchDevice::Cuda)]
    pub device: BenchDevice,
    /// Untimed forward passes before each measurement.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed forward passes per measurement.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// The GPU pass's host synchronisation policy.
    #[arg(long, value_enum, default_value_t = SyncChoice::ReadCounts)]
    pub sync: SyncChoice,
    /// CUDA graph capture: off, on, or both (rows the runtime cannot run
    /// with a graph are reported as unsupported).
    #[arg(long, value_enum, default_value_t = GraphChoice::Off)]
    pub graph: GraphChoice,
    /// Also write the rows as a JSON list to this file (docs/bench/README.md);
    /// written only when the whole run succeeds.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A PyTorch baseline (JSON list written by scripts/torch_baseline.py)
    /// to show next to ours, matched on (workload, batch).
    #[arg(long, value_name = "FILE")]
    pub torch: Option<PathBuf>,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `SMARTTRIM_COMMIT`, else `git rev-parse --short HEAD`, else "unknown".
fn commit() -> String {
    if let Ok(c) = std::env::var("SMARTTRIM_COMMIT") {
        if !c.trim().is_empty() {
            return c.trim().to_string();
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// One JSON row (docs/bench/README.md).
#[derive(Debug, Clone, Serialize)]
struct Row {
    workload: String,
    batch: usize,
    schedule: String,
    device: String,
    commit: String,
    status: &'static str,
    note: Option<String>,
    graph: bool,
    sync_policy: String,
    warmup: usize,
    iters: usize,
    seed: u64,
    flops_ratio: Option<f64>,
    target_flops_ratio: Option<f64>,
    target_reachable: Option<bool>,
    rho: Option<f32>,
    predicted_flops_ratio: Option<f64>,
    dense_ms: Option<f64>,
    dense_p10_ms: Option<f64>,
    dense_p90_ms: Option<f64>,
    pruned_ms: Option<f64>,
    pruned_p10_ms: Option<f64>,
    pruned_p90_ms: Option<f64>,
    dense_wall_ms: Option<f64>,
    pruned_wall_ms: Option<f64>,
    speedup: Option<f64>,
    efficiency: Option<f64>,
    syncs_per_forward: Option<usize>,
    dense_syncs_per_forward: Option<usize>,
    torch_dense_ms: Option<f64>,
    torch_compile_dense_ms: Option<f64>,
    torch_version: Option<String>,
    torch_device: Option<String>,
    torch_baseline_mode: Option<&'static str>,
    dense_vs_torch: Option<f64>,
    pruned_vs_torch: Option<f64>,
}

/// `v` without repeats, first occurrences kept in order.
fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn graph_modes(g: GraphChoice) -> &'static [bool] {
    match g {
        GraphChoice::Off => &[false],
        GraphChoice::On => &[true],
        GraphChoice::Both => &[false, true],
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // Everything checked before any work.
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch takes sizes of at least 1");
    }
    let names: Vec<String> = if args.workloads.is_empty() {
        DEFAULT_WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        args.workloads.clone()
    };
    let workloads: Vec<&'static Workload> = dedup(
        names
            .iter()
            .map(|n| workload(n.trim()))
            .collect::<smarttrim::Result<_>>()?,
    );
    let schedules: Vec<Schedule> = if args.schedule.is_empty() {
        SCHEDULES.to_vec()
    } else {
        args.schedule
            .iter()
            .map(|s| Schedule::parse(s.trim()))
            .collect::<smarttrim::Result<_>>()?
    };
    let schedules = dedup(schedules);
    let batches = dedup(args.batch.clone());
    let torch = args.torch.as_ref().map(read_torch).transpose()?;
    if let Some(p) = &args.json {
        smarttrim::tensor_io::check_output_path(p)?;
    }
    for w in &workloads {
        let bytes = batches.iter().try_fold(0u64, |acc, &b| {
            input_bytes(w, b).map(|x| acc.saturating_add(x))
        })?;
        smarttrim::limits::check_memory(
            &format!("{}: the inputs of --batch {:?}", w.name, batches),
            bytes,
        )?;
    }
    let sync = SyncPolicy::from(args.sync);
    let (engine, device_name, sync_name) = match args.device {
        BenchDevice::Cpu => (Engine::Cpu, "cpu".to_string(), "none".to_string()),
        BenchDevice::Cuda => {
            let dev = Device::open(0).map_err(|e| {
                anyhow!("--device cuda: {e}; `--device cpu` runs the CPU reference instead")
            })?;
            smarttrim::kernels::ensure_built().map_err(|e| anyhow!("--device cuda: {e}"))?;
            dev.refuse_timing("smarttrim bench --device cuda")
                .map_err(|e| anyhow!("{e}"))?;
            let name = dev
                .info()
                .map(|i| i.name)
                .unwrap_or_else(|_| "cuda:0".into());
            let sync_name = match sync {
                SyncPolicy::ReadCounts => "read-counts",
                SyncPolicy::UpperBound => "upper-bound",
            };
            (Engine::Cuda { dev, sync }, name, sync_name.to_string())
        }
    };
    let commit = commit();
    let graphs = graph_modes(args.graph);
    // Passes per measurement, measurements per (workload, batch, graph):
    // the dense baseline and one per schedule.
    let per_measurement = (args.warmup + args.iters) as u64;
    let measurements =
        (workloads.len() * batches.len() * graphs.len() * (1 + schedules.len())) as u64;
    // On the CPU, a pass of a full-size workload takes seconds: time one
    // and say what the whole run will take before starting it.
    let mut calibration: Option<(&'static str, Weights)> = None;
    if matches!(engine, Engine::Cpu) {
        let (w0, b0) = (workloads[0], batches.iter().copied().min().unwrap_or(1));
        let base = {
            let _p = progress::spinner(format!("{}: generating weights", w0.name));
            w0.weights(args.seed)?
        };
        let inputs = w0.inputs(b0, args.seed.wrapping_add(1))?;
        let secs = {
            let _p = progress::spinner(format!(
                "timing one dense pass of {} batch {b0} to estimate the run",
                w0.name
            ));
            let t = Instant::now();
            forward(&base, &inputs, &ForwardOptions { dense: true })?;
            t.elapsed().as_secs_f64()
        };
        let flops0 = dense_flops(w0, b0)?.max(1) as f64;
        // CPU rows with a graph are unsupported at once: no pass.
        let runs = if graphs.contains(&false) { 1.0 } else { 0.0 };
        let mut total = 0.0;
        for w in &workloads {
            for &b in &batches {
                // The dense baseline, then each schedule at its target share
                // of the dense work (the whole of it where there is none).
                let share: f64 = 1.0
                    + schedules
                        .iter()
                        .map(|s| s.target().unwrap_or(1.0))
                        .sum::<f64>();
                total += runs * share * per_measurement as f64 * secs * dense_flops(w, b)? as f64
                    / flops0;
            }
        }
        eprintln!(
            "bench: estimated total on the CPU reference: about {} for {} forward passes (one \
             dense {} batch {b0} pass took {}); --workload, --batch, --schedule, --warmup and \
             --iters shorten it",
            duration(total),
            runs as u64 * measurements / graphs.len() as u64 * per_measurement,
            w0.name,
            duration(secs)
        );
        calibration = Some((w0.name, base));
    }
    let bar = progress::bar(measurements * per_measurement, "bench");

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for w in &workloads {
        // Plans: always the dense one (it carries the dense baseline).
        let mut plans: Vec<Plan> = vec![w.plan(Schedule::Dense)?];
        for &s in &schedules {
            if s != Schedule::Dense && !plans.iter().any(|p| p.schedule == s) {
                plans.push(w.plan(s)?);
            }
        }
        for p in &plans {
            if let (Some(fit), Some(target)) = (p.fit, p.schedule.target()) {
                if !fit.reachable {
                    notes.push(format!(
                        "{} {}: target FLOPs ratio {target:.2} is not reachable (reachable: \
                         {:.3} to {:.3}); ran the closest, {:.3} (rho = {})",
                        w.name, p.schedule, fit.min_ratio, fit.max_ratio, fit.flops_ratio, fit.rho
                    ));
                }
            }
        }
        bar.set_message(format!("bench {}", w.name));
        let base = match calibration.take() {
            Some((name, base)) if name == w.name => base,
            _ => {
                bar.suspend(|| {
                    eprintln!("bench: {}: generating weights (seed {})", w.name, args.seed)
                });
                w.weights(args.seed)?
            }
        };
        let inputs: Vec<Inputs> = args
            .batch
            .iter()
            .map(|&b| w.inputs(b, args.seed.wrapping_add(1)))
            .collect::<smarttrim::Result<_>>()?;
        // (batch index, graph, schedule) -> outcome; (batch index, graph) -> dense baseline.
        let mut pruned: HashMap<(usize, bool, Schedule), Outcome> = HashMap::new();
        let mut dense: HashMap<(usize, bool), Outcome> = HashMap::new();
        for plan in &plans {
            let loaded = match engine.load(plan.weights(&base)?) {
                Ok(l) => Ok(l),
                Err(Error::Unsupported { message, .. }) => Err(message),
                Err(e) => return Err(e.into()),
            };
            for (bi, &batch) in batches.iter().enumerate() {
                let mut session = match &loaded {
                    Ok(l) => match l.session(w, batch, &inputs[bi]) {
                        Ok(s) => Ok(s),
                        Err(Error::Unsupported { message, .. }) => Err(message),
                        Err(e) => return Err(e.into()),
                    },
                    Err(m) => Err(m.clone()),
                };
                for &graph in graphs {
                    let mut one = |dense_pass: bool| -> anyhow::Result<Outcome> {
                        let what = format!(
                            "{} {} batch {batch}{}{}",
                            w.name,
                            plan.schedule,
                            if graph { " graph" } else { "" },
                            if dense_pass { " (dense pass)" } else { "" }
                        );
                        let o = match &mut session {
                            Ok(s) => measure(
                                s,
                                plan,
                                batch,
                                dense_pass,
                                graph,
                                args.warmup,
                                args.iters,
                                &bar,
                            )
                            .with_context(|| what.clone())?,
                            Err(m) => {
                                bar.inc_by(per_measurement);
                                Err(m.clone())
                            }
                        };
                        bar.suspend(|| match &o {
                            Ok(m) => eprintln!("bench: {what}: {:.3} ms", m.timing.median),
                            Err(m) => eprintln!("bench: {what}: unsupported: {m}"),
                        });
                        Ok(o)
                    };
                    if plan.schedule == Schedule::Dense {
                        dense.insert((bi, graph), one(true)?);
                        if schedules.contains(&Schedule::Dense) {
                            pruned.insert((bi, graph, Schedule::Dense), one(false)?);
                        }
                    } else {
                        pruned.insert((bi, graph, plan.schedule), one(false)?);
                    }
                }
            }
        }
        for (bi, &batch) in batches.iter().enumerate() {
            let t = torch
                .as_ref()
                .and_then(|m| m.get(&(w.name.to_string(), batch)).cloned());
            for &s in &schedules {
                let plan = plans
                    .iter()
                    .find(|p| p.schedule == s)
                    .expect("a plan per schedule");
                for &graph in graphs {
                    let d = &dense[&(bi, graph)];
                    let p = &pruned[&(bi, graph, s)];
                    let mut row = Row {
                        workload: w.name.to_string(),
                        batch,
                        schedule: s.name(),
                        device: device_name.clone(),
                        commit: commit.clone(),
                        status: "ok",
                        note: None,
                        graph,
                        sync_policy: sync_name.clone(),
                        warmup: args.warmup,
                        iters: args.iters,
                        seed: args.seed,
                        flops_ratio: None,
                        target_flops_ratio: s.target(),
                        target_reachable: plan.fit.map(|f| f.reachable),
                        rho: plan.fit.map(|f| f.rho),
                        predicted_flops_ratio: plan.predicted_flops_ratio(batch)?,
                        dense_ms: None,
                        dense_p10_ms: None,
                        dense_p90_ms: None,
                        pruned_ms: None,
                        pruned_p10_ms: None,
                        pruned_p90_ms: None,
                        dense_wall_ms: None,
                        pruned_wall_ms: None,
                        speedup: None,
                        efficiency: None,
                        syncs_per_forward: None,
                        dense_syncs_per_forward: None,
                        torch_dense_ms: t.as_ref().and_then(|t| t.eager_ms),
                        torch_compile_dense_ms: t.as_ref().and_then(|t| t.compile_ms),
                        torch_version: t.as_ref().and_then(|t| t.version.clone()),
                        torch_device: t.as_ref().and_then(|t| t.device.clone()),
                        torch_baseline_mode: None,
                        dense_vs_torch: None,
                        pruned_vs_torch: None,
                    };
                    match (d, p) {
                        (Ok(d), Ok(p)) => {
                            let speedup = d.timing.median / p.timing.median;
                            row.flops_ratio = Some(p.flops_ratio);
                            row.dense_ms = Some(d.timing.median);
                            row.dense_p10_ms = Some(d.timing.p10);
                            row.dense_p90_ms = Some(d.timing.p90);
                            row.pruned_ms = Some(p.timing.median);
                            row.pruned_p10_ms = Some(p.timing.p10);
                            row.pruned_p90_ms = Some(p.timing.p90);
                            row.dense_wall_ms = Some(d.wall.median);
                            row.pruned_wall_ms = Some(p.wall.median);
                            row.speedup = Some(speedup);
                            row.efficiency = Some(speedup * p.flops_ratio);
                            row.syncs_per_forward = Some(p.syncs);
                            row.dense_syncs_per_forward = Some(d.syncs);
                            if let Some((best, mode)) = t.as_ref().and_then(|t| t.best()) {
                                row.torch_baseline_mode = Some(mode);
                                row.dense_vs_torch = Some(best / d.timing.median);
                                row.pruned_vs_torch = Some(best / p.timing.median);
                            }
                            if let Some(pred) = row.predicted_flops_ratio {
                                if (pred - p.flops_ratio).abs() > 1e-12 {
                                    notes.push(format!(
                                        "{} {} batch {batch}: the pass's statistics give a FLOPs \
                                         ratio of {:.4}, the host predicted {pred:.4}",
                                        w.name, s, p.flops_ratio
                                    ));
                                }
                            }
                        }
                        (Err(m), _) | (_, Err(m)) => {
                            row.status = "unsupported";
                            row.note = Some(m.clone());
                        }
                    }
                    rows.push(row);
                }
            }
        }
    }

    drop(bar);
    print_table(
        &rows,
        &device_name,
        &commit,
        &sync_name,
        args,
        torch.is_some(),
    )?;
    for n in &notes {
        outln!("note: {n}")?;
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&rows)?;
        text.push('\n');
        smarttrim::tensor_io::write_atomic(path, text.as_bytes())?;
        eprintln!("bench: wrote {} rows to {}", rows.len(), path.display());
    }
    Ok(())
}

/// The dense pass's executed FLOPs of `w` at batch `b` (host arithmetic).
fn dense_flops(w: &Workload, b: usize) -> anyhow::Result<u64> {
    let cfg = without_pruners(&w.config()?);
    Ok(budget_flops(&cfg, &w.lengths(b))?
        .iter()
        .map(|f| f.dense.executed)
        .sum())
}

/// Bytes of `w`'s generated inputs at batch `b` (f32), before generating them.
fn input_bytes(w: &Workload, b: usize) -> anyhow::Result<u64> {
    use smarttrim::spec::EmbeddingConfig as E;
    let cfg = w.config()?;
    let mut n: u128 = 0;
    for i in cfg.input_streams() {
        let s = &cfg.streams[i];
        n += match s.embedding {
            E::Vit {
                image_size,
                channels,
                ..
            } => (channels * image_size * image_size) as u128,
            _ => w.rows[i] as u128 * s.embedding.input_width(s.hidden).unwrap_or(1) as u128,
        };
    }
    if let (smarttrim::spec::ModelKind::CrossEncoder { context_hidden }, Some(m)) =
        (&cfg.kind, w.context_rows)
    {
        n += (m * context_hidden) as u128;
    }
    Ok(u64::try_from(n * b as u128 * 4).unwrap_or(u64::MAX))
}
