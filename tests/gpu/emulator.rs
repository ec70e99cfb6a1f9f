//! Driver rules the runtime relies on, checked on whatever device runs the
//! tests (the emulator must refuse what a GPU refuses), the emulator's own
//! promises (it says it is emulated; deferred streams expose a missing
//! join), and the host-involvement table of every model kind (counted by the
//! emulator: launches, matmuls, copies, allocations, waits per pass).

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use smarttrim::device::Device;
use smarttrim::model::{gpu_variant, Capacity, GpuForwardOptions, GpuModel, SyncPolicy, Workspace};
use smarttrim::reference;
use smarttrim::spec::{preset, KeepRule, ModelConfig, Weights};

use crate::common::*;
use crate::emu::{Counters, Emu};

/// `seq_positions_i32(cu_seqlens, orig_index, rows, max_seqlen)` (launch
/// bounds 256) on
/// `stream` with `threads` per block: one sequence of `n` rows.
fn launch_positions(
    dev: &Device,
    stream: &Arc<CudaStream>,
    cu: &CudaSlice<i32>,
    out: &mut CudaSlice<i32>,
    threads: u32,
) -> Result<(), cudarc::driver::DriverError> {
    let f = dev.function("compact", "seq_positions_i32").unwrap();
    let (cu_ptr, _g1) = cu.device_ptr(stream);
    let rows = out.len() as i32;
    let (out_ptr, _g2) = out.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&cu_ptr).arg(&out_ptr).arg(&rows).arg(&rows);
    // SAFETY: the kernel's signature is (const int*, int*, int rows, int
    // max_seqlen); it clamps `cu`'s one sequence to out.len() rows, so every
    // write is in bounds.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map(|_| ())
}

#[test]
fn emulated_device_says_so() {
    let Some(dev) = device("emulated_device_says_so") else {
        return;
    };
    let info = dev.info().unwrap();
    assert_eq!(info.emulated, dev.is_emulated());
    assert_eq!(info.emulated, Emu::get().is_some(), "{info}");
    if dev.is_emulated() {
        assert!(info.to_string().contains("emulated"), "{info}");
        let e = dev.refuse_timing("a benchmark").unwrap_err().to_string();
        assert!(e.contains("emulator") && e.contains("a benchmark"), "{e}");
        eprintln!("emulator: {}", Emu::get().unwrap().describe());
    } else {
        dev.refuse_timing("a benchmark").unwrap();
    }
}

/// More threads than `__launch_bounds__` allow: the launch is refused (a
/// GPU's driver refuses it too), and the context stays usable.
#[test]
fn launch_past_launch_bounds_is_refused() {
    let Some(dev) = device("launch_past_launch_bounds_is_refused") else {
        return;
    };
    let stream = dev.stream().clone();
    let cu = stream.clone_htod(&[0i32, 100]).unwrap();
    let mut out = stream.alloc_zeros::<i32>(100).unwrap();
    assert!(launch_positions(&dev, &stream, &cu, &mut out, 512).is_err());
    launch_positions(&dev, &stream, &cu, &mut out, 256).unwrap();
    let got = stream.clone_dtoh(&out).unwrap();
    assert_eq!(got, (0..100).collect::<Vec<i32>>());
}

/// A wait, or a copy from pageable host memory, inside a capture: the
/// driver refuses it and the capture is invalidated.
#[test]
fn capture_refuses_waits_and_pageable_copies() {
    let Some(dev) = device("capture_refuses_waits_and_pageable_copies") else {
        return;
    };
    let ctx = dev.context().clone();
    let stream = ctx.new_stream().unwrap();
    // SAFETY: buffers without events, as inside a capture; every use is on
    // `stream`, in order.
    let (cu, mut out) = unsafe {
        dev.without_event_tracking(|| {
            (
                stream.clone_htod(&[0i32, 64]).unwrap(),
                stream.alloc_zeros::<i32>(64).unwrap(),
            )
        })
    };
    // Loads the module outside any capture (loading inside one is refused).
    launch_positions(&dev, &stream, &cu, &mut out, 256).unwrap();
    stream.synchronize().unwrap();
    let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;

    stream.begin_capture(mode).unwrap();
    launch_positions(&dev, &stream, &cu, &mut out, 256).unwrap();
    assert!(
        stream.synchronize().is_err(),
        "a synchronize inside a capture"
    );
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    assert!(
        ended.is_err(),
        "an invalidated capture must not give a graph"
    );

    stream.begin_capture(mode).unwrap();
    let host = vec![0i32, 64];
    assert!(
        stream.memcpy_htod(&host, &mut out).is_err(),
        "a pageable copy in a capture"
    );
    assert!(stream.end_capture(CUgraphInstantiate_flags(0)).is_err());

    // A clean capture still works afterwards, and replays.
    stream.begin_capture(mode).unwrap();
    launch_positions(&dev, &stream, &cu, &mut out, 256).unwrap();
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a graph");
    stream.memset_zeros(&mut out).unwrap();
    graph.launch().unwrap();
    assert_eq!(
        stream.clone_dtoh(&out).unwrap(),
        (0..64).collect::<Vec<i32>>()
    );
}

/// Deferred streams (the emulator's default): work on one stream read from
/// another without an event between them sees the buffer as it was, not
/// the result; with the event it sees the result.
#[test]
fn deferred_streams_expose_a_missing_join() {
    let Some(dev) = device("deferred_streams_expose_a_missing_join") else {
        return;
    };
    let Some(emu) = Emu::get() else {
        eprintln!("skipped deferred_streams_expose_a_missing_join: needs the emulated device");
        return;
    };
    if !emu.describe().contains("streams deferred") {
        eprintln!("skipped deferred_streams_expose_a_missing_join: streams run eagerly");
        return;
    }
    let ctx = dev.context().clone();
    let a = ctx.new_stream().unwrap();
    let b = ctx.new_stream().unwrap();
    // SAFETY: untracked buffers (no automatic cross-stream events), as the
    // runtime allocates its own; the test orders (or deliberately does not
    // order) their uses itself.
    let (cu, mut out) = unsafe {
        dev.without_event_tracking(|| {
            (
                a.clone_htod(&[0i32, 32]).unwrap(),
                a.clone_htod(&[-7i32; 32]).unwrap(),
            )
        })
    };
    a.synchronize().unwrap();

    launch_positions(&dev, &a, &cu, &mut out, 256).unwrap();
    let unjoined = b.clone_dtoh(&out).unwrap();
    assert_eq!(
        unjoined,
        vec![-7; 32],
        "stream b saw stream a's unjoined result"
    );
    a.synchronize().unwrap();

    a.memcpy_htod(&[-7i32; 32], &mut out).unwrap();
    launch_positions(&dev, &a, &cu, &mut out, 256).unwrap();
    let ev = a.record_event(None).unwrap();
    b.wait(&ev).unwrap();
    let joined = b.clone_dtoh(&out).unwrap();
    assert_eq!(joined, (0..32).collect::<Vec<i32>>());
}

/// Every token pruner on the budget rule (rho 0.5): row counts known on the
/// host, no wait.
fn budget_variant(cfg: &ModelConfig) -> ModelConfig {
    let mut c = cfg.clone();
    for s in &mut c.streams {
        for l in &mut s.layers {
            if let Some(t) = &mut l.token_pruner {
                t.rule = KeepRule::Budget { rho: 0.5 };
            }
        }
    }
    c
}

/// Layers at which a threshold-rule token pruner runs (a whole model: over
/// its stages), each a host wait under `ReadCounts`.
fn threshold_layers(cfg: &ModelConfig) -> usize {
    if cfg.is_composite() {
        return cfg
            .stages()
            .iter()
            .map(|st| threshold_layers(&st.config))
            .sum();
    }
    let layers = cfg.streams[0].layers.len();
    (0..layers)
        .filter(|&l| {
            cfg.streams.iter().any(|s| {
                matches!(
                    s.layers[l].token_pruner.as_ref().map(|t| &t.rule),
                    Some(KeepRule::Threshold { .. })
                )
            })
        })
        .count()
}

struct Row {
    model: &'static str,
    batch: usize,
    rule: &'static str,
    sync: &'static str,
    graph: bool,
    delta: Option<Counters>,
    inner_waits: usize,
}

/// Host involvement of one forward pass (after a first pass that loads the
/// modules, sizes nothing new and, with graphs, captures), for every model
/// kind at batch 1 and 8, threshold and budget pruners, both sync policies,
/// graphs off and on, counted by the emulator. Asserts what the design
/// promises: no allocation or free inside a pass, no host wait inside a
/// pass under `UpperBound` or budget rules and one per threshold layer under
/// `ReadCounts` (`GpuOutputs::syncs` and the counted waits agree; the pass
/// then waits once to fetch its results, and `device_ms` synchronizes its two
/// events, complete by then), a graph replay is one graph launch
/// with no kernel launch or matmul of its own (a whole model: one per
/// stage, and the task head outside them). Prints the table
/// docs/BENCHMARKS.md shows.
#[test]
fn host_involvement_per_pass() {
    let Some(dev) = device("host_involvement_per_pass") else {
        return;
    };
    let Some(emu) = Emu::get() else {
        eprintln!("skipped host_involvement_per_pass: counters come from the emulated device");
        return;
    };
    let mut rows = Vec::new();
    for name in [
        "tiny-meter",
        "tiny-bert",
        "tiny-vit",
        "tiny-blip",
        "tiny-blip-full",
        "tiny-meter-full",
    ] {
        let base = gpu_variant(&preset(name).unwrap());
        for (rule, cfg) in [
            ("threshold", base.clone()),
            ("budget", budget_variant(&base)),
        ] {
            let w = Weights::random(&cfg, 5).unwrap();
            let model = GpuModel::new(&dev, &w).unwrap();
            for batch in [1usize, 8] {
                let inputs = reference::synthetic_inputs(&cfg, batch, 9, batch > 1);
                let emb: Vec<_> = w.streams.iter().map(|s| s.embeddings.clone()).collect();
                let prep = smarttrim::model::validate_inputs(&cfg, &emb, &inputs, None).unwrap();
                let mut ws = Workspace::new(&model, Capacity::for_inputs(&prep)).unwrap();
                for (sync_name, sync) in [
                    ("read-counts", SyncPolicy::ReadCounts),
                    ("upper-bound", SyncPolicy::UpperBound),
                ] {
                    for graph in [false, true] {
                        let opts = GpuForwardOptions {
                            dense: false,
                            sync,
                            graph,
                        };
                        let mut row = Row {
                            model: name,
                            batch,
                            rule,
                            sync: sync_name,
                            graph,
                            delta: None,
                            inner_waits: 0,
                        };
                        if graph && !model.graph_capturable(&opts) {
                            rows.push(row);
                            continue;
                        }
                        model.forward(&mut ws, &inputs, &opts).unwrap();
                        let before = emu.counters();
                        let out = model.forward(&mut ws, &inputs, &opts).unwrap();
                        let delta = emu.counters().since(&before);
                        let what = format!("{name} b{batch} {rule} {sync_name} graph={graph}");
                        assert_eq!(delta.get("allocs"), 0, "{what}: allocations in a pass");
                        assert_eq!(delta.get("frees"), 0, "{what}: frees in a pass");
                        assert_eq!(delta.get("unimplemented"), 0, "{what}");
                        let expected = if sync == SyncPolicy::ReadCounts && rule == "threshold" {
                            threshold_layers(&cfg)
                        } else {
                            0
                        };
                        assert_eq!(out.syncs, expected, "{what}: waits inside the pass");
                        // Inside the pass: one stream synchronize per wait; then
                        // the result fetch: one stream synchronize, and the two
                        // event synchronizes of `device_ms` (complete by then).
                        assert_eq!(
                            delta.get("stream_syncs"),
                            expected as u64 + 1,
                            "{what}: stream synchronizes (inside + the fetch): {delta:?}"
                        );
                        assert_eq!(delta.get("event_syncs"), 2, "{what}: {delta:?}");
                        assert_eq!(delta.get("ctx_syncs"), 0, "{what}: {delta:?}");
                        if graph && cfg.is_composite() {
                            // One graph per stage; the links between stages
                            // and the task head run outside the graphs.
                            assert_eq!(
                                delta.get("graph_launches"),
                                cfg.stages().len() as u64,
                                "{what}: {delta:?}"
                            );
                            // Outside them: only the task head (at most two
                            // matmuls and their few element-wise kernels).
                            assert!(
                                delta.get("kernel_launches") <= 4 && delta.get("blas_matmuls") <= 2,
                                "{what}: {delta:?}"
                            );
                        } else if graph {
                            assert_eq!(delta.get("graph_launches"), 1, "{what}");
                            assert_eq!(delta.get("kernel_launches"), 0, "{what}");
                            assert_eq!(delta.get("blas_matmuls"), 0, "{what}");
                        } else {
                            assert_eq!(delta.get("graph_launches"), 0, "{what}");
                            assert!(delta.get("kernel_launches") > 0, "{what}");
                        }
                        row.inner_waits = out.syncs;
                        row.delta = Some(delta);
                        rows.push(row);
                    }
                }
            }
        }
    }
    let mut table = String::from(
        "| model | batch | pruners | sync | graph | kernel launches | graph launches | \
         matmuls | heuristics | HtoD copies (bytes) | DtoH copies (bytes) | DtoD | memsets | \
         allocs/frees | waits inside | waits total |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        match &r.delta {
            None => table.push_str(&format!(
                "| {} | {} | {} | {} | {} | unsupported (the pass waits inside) |||||||||||\n",
                r.model,
                r.batch,
                r.rule,
                r.sync,
                if r.graph { "on" } else { "off" }
            )),
            Some(d) => table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {}/{} | {} | {} |\n",
                r.model,
                r.batch,
                r.rule,
                r.sync,
                if r.graph { "on" } else { "off" },
                d.get("kernel_launches"),
                d.get("graph_launches"),
                d.get("blas_matmuls"),
                d.get("blas_heuristics"),
                d.get("copies_htod"),
                d.get("bytes_htod"),
                d.get("copies_dtoh"),
                d.get("bytes_dtoh"),
                d.get("copies_dtod"),
                d.get("memsets"),
                d.get("allocs"),
                d.get("frees"),
                r.inner_waits,
                d.waits(),
            )),
        }
    }
    eprintln!("host involvement per forward pass (emulated device, counts):\n{table}");
}
