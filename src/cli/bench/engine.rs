//! Where bench passes run (the CPU reference or the GPU pass), one loaded
//! model and session per workload, and the timing of its passes.

use std::time::Instant;

use anyhow::anyhow;
use smarttrim::device::Device;
use smarttrim::model::{Capacity, GpuForwardOptions, GpuModel, SyncPolicy, Workspace};
use smarttrim::reference::{forward, ForwardOptions, Inputs};
use smarttrim::spec::schedule::{model_flops_ratio, LayerStats};
use smarttrim::spec::Weights;
use smarttrim::workloads::{Plan, Workload};
use smarttrim::Error;

use crate::cli::progress::Progress;

/// Where passes run.
pub(super) enum Engine {
    Cpu,
    Cuda { dev: Device, sync: SyncPolicy },
}

/// A model loaded on an engine.
pub(super) enum Loaded {
    Cpu(Weights),
    Cuda(Box<GpuModel>, SyncPolicy),
}

/// A loaded model with inputs (and on the GPU a workspace) to run passes on.
pub(super) enum Session<'a> {
    Cpu {
        weights: &'a Weights,
        inputs: &'a Inputs,
    },
    Cuda {
        model: &'a GpuModel,
        ws: Box<Workspace>,
        inputs: &'a Inputs,
        sync: SyncPolicy,
    },
}

/// What one pass reports.
pub(super) struct PassInfo {
    pub(super) stats: Vec<Vec<LayerStats>>,
    pub(super) syncs: usize,
    /// The CPU reference's FLOPs ratio; `None` on the GPU, whose ratio the
    /// bench computes from the statistics (`Plan::flops_ratio_from_stats`).
    pub(super) flops_ratio: Option<f64>,
    /// The GPU pass's time on the stream (`GpuOutputs::device_ms`).
    pub(super) device_ms: Option<f64>,
}

impl Engine {
    pub(super) fn load(&self, weights: Weights) -> smarttrim::Result<Loaded> {
        match self {
            Engine::Cpu => Ok(Loaded::Cpu(weights)),
            Engine::Cuda { dev, sync } => {
                Ok(Loaded::Cuda(Box::new(GpuModel::new(dev, &weights)?), *sync))
            }
        }
    }
}

impl Loaded {
    pub(super) fn session<'a>(
        &'a self,
        w: &Workload,
        batch: usize,
        inputs: &'a Inputs,
    ) -> smarttrim::Result<Session<'a>> {
        match self {
            Loaded::Cpu(weights) => Ok(Session::Cpu { weights, inputs }),
            Loaded::Cuda(model, sync) => {
                let cap = Capacity {
                    max_batch: batch,
                    max_seqlen: w.rows.to_vec(),
                    context_max_seqlen: w.context_rows.unwrap_or(0),
                };
                Ok(Session::Cuda {
                    model,
                    ws: Box::new(Workspace::new(model, cap)?),
                    inputs,
                    sync: *sync,
                })
            }
        }
    }
}

impl Session<'_> {
    pub(super) fn run(&mut self, dense: bool, graph: bool) -> smarttrim::Result<PassInfo> {
        match self {
            Session::Cpu { weights, inputs } => {
                if graph {
                    return Err(Error::Unsupported {
                        op: "bench",
                        message: "CUDA graphs are a GPU feature; the CPU reference has none".into(),
                    });
                }
                let out = forward(weights, inputs, &ForwardOptions { dense })?;
                Ok(PassInfo {
                    stats: out.stats(),
                    syncs: 0,
                    flops_ratio: Some(model_flops_ratio(&out.flops)),
                    device_ms: None,
                })
            }
            Session::Cuda {
                model,
                ws,
                inputs,
                sync,
            } => {
                let opts = GpuForwardOptions {
                    dense,
                    sync: *sync,
                    graph,
                };
                if graph && !model.graph_capturable(&opts) {
                    return Err(Error::Unsupported {
                        op: "bench",
                        message: "threshold-rule pruners under --sync read-counts wait inside \
                                  the pass, which a CUDA graph cannot; try --sync upper-bound"
                            .into(),
                    });
                }
                let out = model.forward(ws, inputs, &opts)?;
                Ok(PassInfo {
                    stats: out.stats(),
                    syncs: out.syncs,
                    flops_ratio: None,
                    device_ms: Some(f64::from(out.device_ms)),
                })
            }
        }
    }
}

/// Wall times of one measurement, milliseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) median: f64,
    pub(super) p10: f64,
    pub(super) p90: f64,
}

/// Linear interpolation between closest ranks of sorted `v` (non-empty).
pub(super) fn percentile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

impl Timing {
    pub(super) fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(|a, b| a.total_cmp(b));
        Timing {
            median: percentile(&ms, 0.5),
            p10: percentile(&ms, 0.1),
            p90: percentile(&ms, 0.9),
        }
    }
}

/// One measurement: times, syncs per forward (the most seen), FLOPs ratio.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    /// The GPU pass's device time (upload and result copies excluded), or
    /// on the CPU the wall time of the call.
    pub(super) timing: Timing,
    /// Wall time of the whole call.
    pub(super) wall: Timing,
    pub(super) syncs: usize,
    pub(super) flops_ratio: f64,
}

/// A measurement, or why the runtime cannot run it.
pub(super) type Outcome = Result<Measured, String>;

/// Runs `warmup` untimed and `iters` timed passes, each timed around the
/// whole call (which ends with the device synchronised) and, on the GPU, by
/// the pass's own device time. `Error::Unsupported` becomes `Err(message)`;
/// any other error fails the run.
#[allow(clippy::too_many_arguments)]
pub(super) fn measure(
    session: &mut Session<'_>,
    plan: &Plan,
    batch: usize,
    dense: bool,
    graph: bool,
    warmup: usize,
    iters: usize,
    bar: &Progress,
) -> anyhow::Result<Outcome> {
    let mut done = 0u64;
    let unsupported = |e: Error, done: u64| -> anyhow::Result<Outcome> {
        // The passes it will not run count as done.
        bar.inc_by((warmup + iters) as u64 - done);
        match e {
            Error::Unsupported { message, .. } => Ok(Err(message)),
            e => Err(e.into()),
        }
    };
    for _ in 0..warmup {
        if let Err(e) = session.run(dense, graph) {
            return unsupported(e, done);
        }
        bar.inc();
        done += 1;
    }
    let mut ms = Vec::with_capacity(iters);
    let mut wall = Vec::with_capacity(iters);
    let mut syncs = 0;
    let mut last = None;
    for _ in 0..iters {
        let t = Instant::now();
        let r = session.run(dense, graph);
        let dt = t.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(p) => {
                ms.push(p.device_ms.unwrap_or(dt));
                wall.push(dt);
                syncs = syncs.max(p.syncs);
                last = Some(p);
                bar.inc();
                done += 1;
            }
            Err(e) => return unsupported(e, done),
        }
    }
    let last = last.ok_or_else(|| anyhow!("no timed pass (--iters 0)"))?;
    let flops_ratio = if dense {
        1.0
    } else {
        match last.flops_ratio {
            Some(r) => r,
            None => plan.flops_ratio_from_stats(batch, &last.stats)?,
        }
    };
    Ok(Ok(Measured {
        timing: Timing::of(ms),
        wall: Timing::of(wall),
        syncs,
        flops_ratio,
    }))
}
