//! Concurrency: one model shared by 8 threads, each with a workspace of its
//! own, graphs off and on, every pass equal to a single-threaded pass; and
//! the C API the same way, with one handle per thread and with one handle
//! shared by all threads. 200 passes per thread (about 2 minutes in all on
//! the emulated device); `SMARTTRIM_CONCURRENCY_PASSES` sets another count.

use std::sync::Arc;

use smarttrim::ffi::*;
use smarttrim::model::{GpuForwardOptions, GpuModel, SyncPolicy, Workspace};
use smarttrim::reference::StreamInput;

use crate::common::*;

const THREADS: usize = 8;

fn passes() -> usize {
    std::env::var("SMARTTRIM_CONCURRENCY_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[test]
fn one_model_eight_threads() {
    let Some(dev) = device("one_model_eight_threads") else {
        return;
    };
    let (cfg, w, inputs) = small_cross_model(21);
    let cap = capacity(&cfg, &w, &inputs);
    let model = GpuModel::new(&dev, &w).unwrap();
    for graph in [false, true] {
        let opts = GpuForwardOptions {
            dense: false,
            sync: SyncPolicy::UpperBound,
            graph,
        };
        let mut ws = Workspace::new(&model, cap.clone()).unwrap();
        let want = model.forward(&mut ws, &inputs, &opts).unwrap();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (model, inputs, cap, want) = (&model, &inputs, cap.clone(), &want);
                scope.spawn(move || {
                    let mut ws = Workspace::new(model, cap).unwrap();
                    for i in 0..passes() {
                        let out = model
                            .forward(&mut ws, inputs, &opts)
                            .unwrap_or_else(|e| panic!("graph={graph} thread {t} pass {i}: {e}"));
                        assert!(
                            same(&out, want),
                            "graph={graph} thread {t} pass {i} differs"
                        );
                    }
                });
            }
        });
        eprintln!(
            "one_model_eight_threads: graph={graph}: {THREADS} threads x {} passes, all equal to \
             the single-threaded pass",
            passes()
        );
    }
}

/// Per-instance kept rows of the last pass of `m` (a handle).
fn kept(m: *mut SmarttrimModel) -> Vec<i32> {
    let mut v = vec![0i32; 64];
    // SAFETY: writable outputs of the given length.
    let st = unsafe {
        smarttrim_stats(
            m,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            v.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            v.len(),
        )
    };
    assert_eq!(st, 0, "smarttrim_stats");
    v
}

#[test]
fn c_api_eight_threads() {
    let Some(_dev) = device("c_api_eight_threads") else {
        return;
    };
    let (cfg, w, inputs) = small_cross_model(22);
    let json = cfg.to_json().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wp = dir.path().join("w.safetensors");
    w.save(&wp).unwrap();
    let bytes = Arc::new(std::fs::read(&wp).unwrap());
    let packed: Arc<Vec<(Vec<f32>, Vec<i32>)>> = Arc::new(
        inputs
            .streams
            .iter()
            .map(|s| match s {
                StreamInput::Packed { rows, cu_seqlens } => (rows.clone(), cu_seqlens.clone()),
                _ => unreachable!("packed rows"),
            })
            .collect(),
    );
    let create = |json: &str, bytes: &[u8]| {
        let (st, m) = c_create_from_memory(json, bytes);
        assert_eq!(st, 0, "create");
        m
    };
    let forward = |m: *mut SmarttrimModel, packed: &[(Vec<f32>, Vec<i32>)]| {
        let ins: Vec<SmarttrimPackedInput> = packed
            .iter()
            .map(|(r, c)| SmarttrimPackedInput {
                rows: r.as_ptr(),
                cu_seqlens: c.as_ptr(),
            })
            .collect();
        // SAFETY: a live handle and inputs as documented.
        unsafe {
            smarttrim_forward(
                m,
                std::ptr::null_mut(),
                ins.as_ptr(),
                ins.len(),
                std::ptr::null(),
                2,
                0,
            )
        }
    };
    let m0 = create(&json, &bytes);
    assert_eq!(forward(m0, &packed), 0);
    let want = kept(m0);
    // One handle per thread.
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (json, bytes, packed, want) = (&json, &bytes, &packed, &want);
            scope.spawn(move || {
                let m = create(json, bytes);
                for i in 0..passes() {
                    assert_eq!(forward(m, packed), 0, "thread {t} pass {i}");
                    assert_eq!(&kept(m), want, "thread {t} pass {i}: statistics");
                }
                assert_eq!(smarttrim_model_destroy(m), 0);
            });
        }
    });
    // One handle shared by every thread (the handle serialises its passes).
    let shared = m0 as usize;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (packed, want) = (&packed, &want);
            scope.spawn(move || {
                let m = shared as *mut SmarttrimModel;
                for i in 0..passes() {
                    assert_eq!(forward(m, packed), 0, "shared, thread {t} pass {i}");
                    assert_eq!(&kept(m), want, "shared, thread {t} pass {i}: statistics");
                }
            });
        }
    });
    assert_eq!(smarttrim_model_destroy(m0), 0);
    eprintln!(
        "c_api_eight_threads: {THREADS} threads x {} passes with a handle each, and as many on \
         one shared handle, all equal to the single-threaded pass",
        passes()
    );
}
