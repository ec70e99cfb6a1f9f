//! Bench group `forward`: the whole GPU forward pass on the workloads of
//! `smarttrim::workloads` (meter-vqa, blip-vit) at batch 1 and 32, the dense
//! pass (`dense: true`) against the budget schedules (model FLOPs 70 / 50 /
//! 35 % of dense) and the preset's threshold pruners, all measured in the
//! same run. Each sample times whole `forward` calls (each ends with a device
//! synchronisation) between two more synchronisations; throughput is in
//! sequences. Few samples, flat sampling: the GPU machine's time is short.

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use smarttrim::model::{Capacity, GpuForwardOptions, GpuModel, SyncPolicy, Workspace};
use smarttrim::workloads::{workload, Schedule};

use crate::common::{device, time_iters};

const WORKLOADS: &[&str] = &["meter-vqa", "blip-vit"];
const BATCHES: &[usize] = &[1, 32];
const SCHEDULES: &[Schedule] = &[
    Schedule::Dense,
    Schedule::Budget { percent: 70 },
    Schedule::Budget { percent: 50 },
    Schedule::Budget { percent: 35 },
    Schedule::Threshold,
];

pub fn forward_group(c: &mut Criterion) {
    let Some(dev) = device("forward") else {
        return;
    };
    let mut g = c.benchmark_group("forward");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    for name in WORKLOADS {
        let w = workload(name).expect("known workload");
        let base = w.weights(0).expect("random weights");
        let inputs: Vec<_> = BATCHES
            .iter()
            .map(|&b| w.inputs(b, 1).expect("inputs"))
            .collect();
        for &s in SCHEDULES {
            let plan = w.plan(s).expect("plan");
            let model = match plan.weights(&base).and_then(|pw| GpuModel::new(&dev, &pw)) {
                Ok(m) => m,
                Err(e) => {
                    println!("skipped forward/{name}/{s}: {e}");
                    continue;
                }
            };
            // `dense` is the dense pass; the others prune.
            let opts = GpuForwardOptions {
                dense: s == Schedule::Dense,
                sync: SyncPolicy::default(),
                graph: false,
            };
            for (bi, &batch) in BATCHES.iter().enumerate() {
                let cap = Capacity {
                    max_batch: batch,
                    max_seqlen: w.rows.to_vec(),
                    context_max_seqlen: w.context_rows.unwrap_or(0),
                };
                let mut ws = match Workspace::new(&model, cap) {
                    Ok(ws) => ws,
                    Err(e) => {
                        println!("skipped forward/{name}/b{batch}/{s}: {e}");
                        continue;
                    }
                };
                let x = &inputs[bi];
                if let Err(e) = model.forward(&mut ws, x, &opts) {
                    println!("skipped forward/{name}/b{batch}/{s}: {e}");
                    continue;
                }
                let id = match plan.fit {
                    Some(f) => format!(
                        "{name}/b{batch}/{s}(rho={:.3},flops={:.3})",
                        f.rho, f.flops_ratio
                    ),
                    None => format!("{name}/b{batch}/{s}"),
                };
                g.throughput(Throughput::Elements(batch as u64));
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        time_iters(&dev, iters, || {
                            model.forward(&mut ws, x, &opts).expect("forward");
                        })
                    })
                });
            }
        }
    }
    g.finish();
}
