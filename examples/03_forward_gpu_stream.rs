//! The pruned forward pass inside a caller's CUDA stack: the caller owns the
//! context, the stream and the device buffers, and records smarttrim's pass
//! into a CUDA graph of its own, then replays it. The model is the
//! `tiny-meter` preset's GPU variant ([`gpu_variant`]: head size 32, pruner
//! width 64) with seeded random weights; its pruners use the budget rule
//! (half the rows of every sequence), so the host knows every row count and
//! the pass has no host wait: exactly what a capture needs.
//!
//! ```sh
//! cargo run --example 03_forward_gpu_stream
//! ```
//!
//! Without a GPU it prints the library's error and exits with status 1.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaContext;
use half::f16;
use smarttrim::device::{device_count, Device};
use smarttrim::model::{
    gpu_variant, prepare_inputs, Capacity, DevicePacked, DeviceStreamOutput, GpuForwardOptions,
    GpuModel, SyncPolicy, Workspace,
};
use smarttrim::reference::synthetic_inputs;
use smarttrim::spec::{preset, KeepRule, Weights};
use smarttrim::Error;

fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::driver(what, e)
}

fn run() -> smarttrim::Result<()> {
    // Check for a driver and a device first: cudarc's dynamic loading panics
    // on a machine without libcuda, the library's checks do not.
    if device_count()? == 0 {
        return Err(Error::NoDevice("the driver reports no CUDA devices".into()));
    }
    // The caller's side: its context and its stream.
    let ctx: Arc<CudaContext> = CudaContext::new(0).map_err(drv("cuCtx"))?;
    let stream = ctx.new_stream().map_err(drv("new stream"))?;

    // The model lives on the same context; every pass below is enqueued on
    // the caller's stream.
    let dev = Device::with_stream(stream.clone())?;
    println!("{}", dev.info()?);
    let mut cfg = gpu_variant(&preset("tiny-meter")?);
    for l in cfg.streams.iter_mut().flat_map(|s| s.layers.iter_mut()) {
        if let Some(tp) = &mut l.token_pruner {
            tp.rule = KeepRule::Budget { rho: 0.5 };
        }
    }
    let weights = Weights::random(&cfg, 42)?;
    let model = GpuModel::new(&dev, &weights)?;

    // The caller's inputs on the device: rows entering the first layer (f16)
    // and cu_seqlens, plus cu_seqlens on the host.
    let inputs = synthetic_inputs(&cfg, 3, 7, true);
    let embeddings: Vec<_> = weights
        .streams
        .iter()
        .map(|s| s.embeddings.clone())
        .collect();
    let prep = prepare_inputs(&cfg, &embeddings, &inputs, None)?;
    let mut ws = Workspace::new(&model, Capacity::for_inputs(&prep))?;
    // Buffers used inside a capture must not carry cudarc's ordering events
    // (made in smarttrim's scope, which never switches tracking back on
    // under another thread).
    let mut dev_in = Vec::new();
    let mut dev_out = Vec::new();
    // SAFETY: this example orders every use of its buffers by the one stream.
    unsafe {
        dev.without_event_tracking(|| -> Result<(), Error> {
            for (sc, p) in cfg.streams.iter().zip(&prep.streams) {
                let rows: Vec<f16> = p.rows.iter().map(|&v| f16::from_f32(v)).collect();
                dev_in.push((
                    stream.clone_htod(&rows).map_err(drv("upload"))?,
                    stream.clone_htod(&p.cu_seqlens).map_err(drv("upload"))?,
                ));
                dev_out.push((
                    stream
                        .alloc_zeros::<f16>(p.total() * sc.hidden)
                        .map_err(drv("alloc"))?,
                    stream
                        .alloc_zeros::<i32>(prep.batch + 1)
                        .map_err(drv("alloc"))?,
                    stream.alloc_zeros::<i32>(p.total()).map_err(drv("alloc"))?,
                ));
            }
            Ok(())
        })?;
    }

    // Record the pass into the caller's graph.
    let opts = GpuForwardOptions {
        sync: SyncPolicy::ReadCounts,
        ..Default::default()
    };
    assert!(model.graph_capturable(&opts));
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(drv("begin capture"))?;
    let pass = {
        let ins: Vec<DevicePacked> = dev_in
            .iter()
            .zip(&prep.streams)
            .map(|((r, c), p)| DevicePacked {
                rows: r.as_view(),
                cu_seqlens: c.as_view(),
                host_cu_seqlens: &p.cu_seqlens,
            })
            .collect();
        let mut outs: Vec<DeviceStreamOutput> = dev_out
            .iter_mut()
            .map(|(r, c, o)| DeviceStreamOutput {
                rows: r.as_view_mut(),
                cu_seqlens: c.as_view_mut(),
                orig_index: o.as_view_mut(),
            })
            .collect();
        model.forward_device(&stream, &mut ws, &ins, None, &mut outs, &opts)
    };
    // End the capture whatever happened, so the stream is usable again.
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(drv("end capture"))?;
    let pass = pass?;
    let graph = graph.ok_or_else(|| Error::invalid("example", "nothing was captured"))?;
    for _ in 0..2 {
        graph.launch().map_err(drv("graph launch"))?;
    }
    // Statistics of the pass (waits for the stream).
    for (l, per_stream) in model
        .device_pass_stats(&stream, &ws, &pass)?
        .iter()
        .enumerate()
    {
        for (s, (kept, self_heads, cross_heads)) in per_stream.iter().enumerate() {
            println!(
                "layer {l} {:>5}: kept rows {kept:?}, active self heads {self_heads:?}, \
                 cross heads {cross_heads:?}",
                cfg.streams[s].name
            );
        }
    }
    let cu: Vec<i32> = stream.clone_dtoh(&dev_out[0].1).map_err(drv("download"))?;
    println!("text stream's final cu_seqlens (from the caller's buffer): {cu:?}");
    println!("host waits inside the pass: {}", pass.syncs);
    // The graph holds the workspace's and the weights' addresses: they stay
    // pinned until it is destroyed (the workspace and model are then freed
    // normally when they go out of scope).
    println!("graphs pinning the workspace: {}", ws.graph_pins());
    drop(graph);
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("03_forward_gpu_stream: {e}");
        std::process::exit(1);
    }
}
