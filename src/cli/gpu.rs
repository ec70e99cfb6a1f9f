//! The GPU forward pass for the CLI: one model, one workspace, results in
//! the CPU reference's output type so `run` and `demo` print and write both
//! backends' results with one code path.

use std::time::Instant;

use anyhow::Context;
use smarttrim::device::Device;
use smarttrim::model::{
    validate_inputs, Capacity, GpuForwardOptions, GpuModel, GpuOutputs, SyncPolicy, Workspace,
};
use smarttrim::reference::{Inputs, LayerRecord, Outputs, StreamOutput};
use smarttrim::spec::{ModelConfig, Weights};

/// The host synchronisation policy, as a CLI option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncChoice {
    /// Read the row counts after each threshold-rule pruning layer.
    ReadCounts,
    /// Size launches by the host's bound; no wait inside the pass.
    UpperBound,
}

impl From<SyncChoice> for SyncPolicy {
    fn from(s: SyncChoice) -> Self {
        match s {
            SyncChoice::ReadCounts => SyncPolicy::ReadCounts,
            SyncChoice::UpperBound => SyncPolicy::UpperBound,
        }
    }
}

/// A model on GPU 0 with a workspace sized for one input.
pub struct GpuRunner {
    model: GpuModel,
    ws: Workspace,
    /// The device's name, for reports.
    pub device_name: String,
}

impl GpuRunner {
    /// Opens GPU 0, uploads the weights and sizes a workspace for `inputs`.
    pub fn new(weights: &Weights, inputs: &Inputs) -> anyhow::Result<Self> {
        let dev = Device::open(0)?;
        let device_name = dev.info().map(|i| i.name).unwrap_or_else(|_| "GPU".into());
        let model = GpuModel::new(&dev, weights).context("uploading the model to the GPU")?;
        let embeddings: Vec<_> = weights
            .streams
            .iter()
            .map(|s| s.embeddings.clone())
            .collect();
        let prep = validate_inputs(&weights.config, &embeddings, inputs, None)?;
        let ws = Workspace::new(&model, Capacity::for_inputs(&prep))?;
        Ok(GpuRunner {
            model,
            ws,
            device_name,
        })
    }

    /// One pass; returns the outputs (as the reference's type), the
    /// blocking waits inside the pass and the wall time in ms.
    pub fn forward(
        &mut self,
        inputs: &Inputs,
        dense: bool,
        sync: SyncPolicy,
    ) -> anyhow::Result<(Outputs, usize, f64)> {
        let opts = GpuForwardOptions {
            dense,
            sync,
            graph: false,
        };
        let t = Instant::now();
        let out = self.model.forward(&mut self.ws, inputs, &opts)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let syncs = out.syncs;
        Ok((to_outputs(self.model.config(), out), syncs, ms))
    }
}

/// The GPU pass's results as the reference's [`Outputs`]. The one field the
/// GPU does not log, each layer's `orig_index_in`, follows from the first
/// layer's positions and the keep flags: a layer's entering rows are
/// the previous layer's entering rows it kept.
pub fn to_outputs(cfg: &ModelConfig, gpu: GpuOutputs) -> Outputs {
    let streams = gpu
        .streams
        .into_iter()
        .zip(&cfg.streams)
        .map(|(s, _sc)| {
            let first = s
                .layers
                .first()
                .map(|l| l.rows_in.clone())
                .unwrap_or_default();
            let mut orig: Vec<i32> = first.iter().flat_map(|&n| 0..n.max(0)).collect();
            let layers = s
                .layers
                .into_iter()
                .map(|l| {
                    let orig_index_in = orig.clone();
                    if let Some(k) = &l.keep {
                        orig = orig
                            .iter()
                            .zip(k)
                            .filter(|(_, &keep)| keep)
                            .map(|(&o, _)| o)
                            .collect();
                    }
                    LayerRecord {
                        rows_in: l.rows_in,
                        orig_index_in,
                        scores: l.scores,
                        keep: l.keep,
                        kept: l.kept,
                        self_heads: l.self_heads,
                        cross_heads: l.cross_heads,
                        active_self_heads: l.active_self_heads,
                        active_cross_heads: l.active_cross_heads,
                        flops: l.flops,
                    }
                })
                .collect();
            StreamOutput {
                name: s.name,
                packed: s.packed,
                pooled_first: s.pooled_first,
                pooled_mean: s.pooled_mean,
                layers,
                flops: s.flops,
            }
        })
        .collect();
    Outputs {
        streams,
        flops: gpu.flops,
    }
}
