//! The GPU forward pass for the CLI: one model, one workspace, results in
//! the CPU reference's output type so `run` and `demo` print and write both
//! backends' results with one code path.

use std::time::Instant;

use anyhow::Context;
use smarttrim::device::Device;
use smarttrim::model::{
    validate_inputs, Capacity, GpuForwardOptions, GpuModel, GpuOutputs, SyncPolicy, Workspace,
};
use smarttrim::reference::{Inputs, Outputs};
use smarttrim::spec::Weights;

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
    /// Whether the device is the CPU emulator (its times mean nothing).
    pub emulated: bool,
}

impl GpuRunner {
    /// Opens GPU 0, uploads the weights and sizes a workspace for `inputs`.
    pub fn new(weights: &Weights, inputs: &Inputs) -> anyhow::Result<Self> {
        let dev = Device::open(0)?;
        let device_name = dev.info().map(|i| i.name).unwrap_or_else(|_| "GPU".into());
        let emulated = dev.is_emulated();
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
            emulated,
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
        Ok((to_outputs(out), syncs, ms))
    }
}

/// The GPU pass's results as the reference's [`Outputs`] (the records are
/// already the reference's types).
pub fn to_outputs(gpu: GpuOutputs) -> Outputs {
    Outputs {
        streams: gpu.streams,
        flops: gpu.flops,
        logits: gpu.logits,
    }
}
