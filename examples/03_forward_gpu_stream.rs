//! The pruned forward pass on the GPU, enqueued on a stream the caller
//! created (as a CUDA inference stack would hand one in): the caller makes
//! the context and the stream, [`Device::with_stream`] borrows it, and
//! [`GpuModel`] runs on it. The model is the `tiny-meter` preset's GPU
//! variant ([`gpu_variant`]: head size 32, pruner width 64) with seeded
//! random weights.
//!
//! ```sh
//! cargo run --example 03_forward_gpu_stream
//! ```
//!
//! Without a GPU it prints the library's error and exits with status 1.
//!
//! CUDA-graph capture of the pass is not implemented in the runtime yet; it
//! comes later (the pass still needs host waits and host-side embeddings).

use std::sync::Arc;

use cudarc::driver::CudaContext;
use smarttrim::device::{device_count, Device};
use smarttrim::model::{
    gpu_variant, prepare_inputs, Capacity, GpuForwardOptions, GpuModel, Workspace,
};
use smarttrim::reference::synthetic_inputs;
use smarttrim::spec::{preset, Weights};
use smarttrim::Error;

fn run() -> smarttrim::Result<()> {
    // Check for a driver and a device first: cudarc's dynamic loading panics
    // on a machine without libcuda, the library's checks do not.
    if device_count()? == 0 {
        return Err(Error::NoDevice("the driver reports no CUDA devices".into()));
    }
    // The caller's side: its context and its stream.
    let ctx: Arc<CudaContext> = CudaContext::new(0).map_err(|e| Error::driver("cuCtx", e))?;
    let stream = ctx
        .new_stream()
        .map_err(|e| Error::driver("new stream", e))?;

    // smarttrim enqueues everything on that stream.
    let dev = Device::with_stream(stream.clone())?;
    println!("{} (stream: {:?})", dev.info()?, dev.stream_ownership());
    let cfg = gpu_variant(&preset("tiny-meter")?);
    let weights = Weights::random(&cfg, 42)?;
    let model = GpuModel::new(&dev, &weights)?;
    let inputs = synthetic_inputs(&cfg, 3, 7, true);
    let embeddings: Vec<_> = weights
        .streams
        .iter()
        .map(|s| s.embeddings.clone())
        .collect();
    let prep = prepare_inputs(&cfg, &embeddings, &inputs, None)?;
    let mut ws = Workspace::new(&model, Capacity::for_inputs(&prep))?;
    let out = model.forward(&mut ws, &inputs, &GpuForwardOptions::default())?;
    for (l, per_stream) in out.stats().iter().enumerate() {
        for (s, (kept, self_heads, cross_heads)) in per_stream.iter().enumerate() {
            println!(
                "layer {l} {:>5}: kept rows {kept:?}, active self heads {self_heads:?}, \
                 cross heads {cross_heads:?}",
                cfg.streams[s].name
            );
        }
    }
    println!("host waits in the pass: {}", out.syncs);
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("03_forward_gpu_stream: {e}");
        std::process::exit(1);
    }
}
