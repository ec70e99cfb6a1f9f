//! Faults, injected by the emulated device (`smarttrim_emu_fail_after`):
//! the N-th driver call, allocation, kernel launch or cuBLAS(Lt) call made to
//! fail, for every N over creating a model and a workspace and over a whole
//! pass, through the Rust API and the C API; and a kernel that faults while
//! it runs (a sticky context error), in a child process. Every call must
//! return a typed error or status — nothing panics, nothing crashes — and
//! afterwards the model and workspace either still work (the next pass gives
//! the fault-free pass's results exactly) or refuse further use with a clear
//! error. The tests print how many injection points they tried.

use std::panic::{catch_unwind, AssertUnwindSafe};

use smarttrim::model::{GpuForwardOptions, GpuModel, SyncPolicy, Workspace};
use smarttrim::reference::{self, Inputs};
use smarttrim::spec::{ModelConfig, Weights};

use crate::common::*;
use crate::emu::Emu;

const KINDS: [&str; 4] = ["driver", "alloc", "launch", "blas"];

fn setup() -> (ModelConfig, Weights, Inputs) {
    small_cross_model(11)
}

/// Calls of `kind` that `f` makes (counted by the emulator, none failed).
fn calls_of<T>(emu: &Emu, kind: &str, f: impl FnOnce() -> T) -> (T, u64) {
    emu.fail_after(kind, u64::MAX);
    let r = f();
    let n = emu.calls(kind);
    emu.fail_after(kind, 0);
    (r, n)
}

/// Runs `f` with the calling thread's `n`-th call of `kind` made to fail;
/// returns its result (or the panic's message) and whether the failure was
/// injected (false: `f` made fewer than `n` such calls).
fn injected<T>(emu: &Emu, kind: &str, n: u64, f: impl FnOnce() -> T) -> (Result<T, String>, bool) {
    let before = emu.injected();
    emu.fail_after(kind, n);
    let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    });
    emu.fail_after(kind, 0);
    (r, emu.injected() > before)
}

/// Creating a model and its workspace, with every call of every kind made
/// to fail in turn: a typed error each time, never a panic; once the
/// failure falls past the calls made, creation succeeds.
#[test]
fn injected_failures_while_creating() {
    let Some(dev) = device("injected_failures_while_creating") else {
        return;
    };
    let Some(emu) = Emu::get() else {
        eprintln!("skipped injected_failures_while_creating: needs the emulated device");
        return;
    };
    let (cfg, w, inputs) = setup();
    let cap = capacity(&cfg, &w, &inputs);
    let create = || {
        let m = GpuModel::new(&dev, &w)?;
        let ws = Workspace::new(&m, cap.clone())?;
        Ok::<_, smarttrim::Error>((m, ws))
    };
    // A first creation loads the kernel modules into `dev`'s cache, so every
    // later one makes the same calls.
    create().unwrap();
    let mut points = 0;
    for kind in KINDS {
        let (r, total) = calls_of(emu, kind, create);
        r.unwrap_or_else(|e| panic!("{kind}: creation failed with nothing injected: {e}"));
        for n in 1..=total {
            let (r, fired) = injected(emu, kind, n, create);
            let r = r.unwrap_or_else(|p| panic!("{kind} call #{n} while creating: panicked: {p}"));
            assert!(fired, "{kind} call #{n} of {total}: not reached");
            points += 1;
            if let Err(e) = &r {
                assert!(!e.to_string().is_empty(), "{kind} #{n}: an empty message");
            }
        }
    }
    eprintln!("injected_failures_while_creating: {points} injection points, none panicked");
}

/// A pass with every call of every kind made to fail in turn, eagerly and
/// with graphs (capture, then replay): typed errors only; the next pass
/// gives the fault-free results or a clear error (then a new model and
/// workspace are made for the next point).
#[test]
fn injected_failures_in_a_pass() {
    let Some(dev) = device("injected_failures_in_a_pass") else {
        return;
    };
    let Some(emu) = Emu::get() else {
        eprintln!("skipped injected_failures_in_a_pass: needs the emulated device");
        return;
    };
    let (cfg, w, inputs) = setup();
    let cap = capacity(&cfg, &w, &inputs);
    let mut points = 0;
    let mut refused = 0;
    for graph in [false, true] {
        let opts = GpuForwardOptions {
            dense: false,
            sync: if graph {
                SyncPolicy::UpperBound
            } else {
                SyncPolicy::ReadCounts
            },
            graph,
        };
        let fresh = || {
            let m = GpuModel::new(&dev, &w).unwrap();
            let ws = Workspace::new(&m, cap.clone()).unwrap();
            (m, ws)
        };
        let (mut model, mut ws) = fresh();
        let want = model.forward(&mut ws, &inputs, &opts).unwrap();
        // With graphs the first pass captured; the ones measured replay.
        for kind in KINDS {
            let (r, total) = calls_of(emu, kind, || model.forward(&mut ws, &inputs, &opts));
            assert!(
                same(&r.unwrap(), &want),
                "graph={graph}: a clean pass differs"
            );
            for n in 1..=total {
                let what = format!("graph={graph} {kind} call #{n} of {total}");
                let (r, fired) = injected(emu, kind, n, || model.forward(&mut ws, &inputs, &opts));
                let r = r.unwrap_or_else(|p| panic!("{what}: panicked: {p}"));
                assert!(fired, "{what}: not reached");
                points += 1;
                if let Ok(out) = &r {
                    assert!(
                        same(out, &want),
                        "{what}: the pass succeeded with wrong results"
                    );
                }
                match model.forward(&mut ws, &inputs, &opts) {
                    Ok(out) => assert!(same(&out, &want), "{what}: the next pass differs"),
                    Err(e) => {
                        assert!(!e.to_string().is_empty(), "{what}: an empty refusal");
                        refused += 1;
                        (model, ws) = fresh();
                        model.forward(&mut ws, &inputs, &opts).unwrap();
                    }
                }
            }
        }
    }
    eprintln!(
        "injected_failures_in_a_pass: {points} injection points, none panicked; the next pass \
         was refused {refused} time(s) and right every other time"
    );
}

/// The C API under the same injections: `smarttrim_model_create_from_memory`
/// (every allocation and cuBLASLt call) and `smarttrim_forward` (every call
/// of every kind) return a status (never `PANIC`) and a message; afterwards
/// `smarttrim_forward` and `smarttrim_stats` work or fail with a status, and
/// `smarttrim_model_destroy` always succeeds.
#[test]
fn injected_failures_through_the_c_api() {
    use smarttrim::ffi::*;
    let Some(_dev) = device("injected_failures_through_the_c_api") else {
        return;
    };
    let Some(emu) = Emu::get() else {
        eprintln!("skipped injected_failures_through_the_c_api: needs the emulated device");
        return;
    };
    let (cfg, w, inputs) = setup();
    let json = cfg.to_json().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wp = dir.path().join("w.safetensors");
    w.save(&wp).unwrap();
    let bytes = std::fs::read(&wp).unwrap();
    let packed: Vec<(Vec<f32>, Vec<i32>)> = inputs
        .streams
        .iter()
        .map(|s| match s {
            reference::StreamInput::Packed { rows, cu_seqlens } => {
                (rows.clone(), cu_seqlens.clone())
            }
            _ => panic!("tiny-meter takes packed rows"),
        })
        .collect();
    let c_inputs: Vec<SmarttrimPackedInput> = packed
        .iter()
        .map(|(r, c)| SmarttrimPackedInput {
            rows: r.as_ptr(),
            cu_seqlens: c.as_ptr(),
        })
        .collect();
    let panic_status = SmarttrimStatus::Panic as i32;
    let message = || {
        let mut buf = vec![0u8; 1024];
        // SAFETY: `buf` is writable for its length.
        unsafe { smarttrim_last_error_message(buf.as_mut_ptr().cast(), buf.len()) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    };
    let create = || c_create_from_memory(&json, &bytes);
    let forward = |m| {
        // SAFETY: a live handle (or a null/destroyed one, which is reported)
        // and inputs as documented.
        unsafe {
            smarttrim_forward(
                m,
                std::ptr::null_mut(),
                c_inputs.as_ptr(),
                c_inputs.len(),
                std::ptr::null(),
                2,
                0,
            )
        }
    };
    let stats = |m| {
        let mut kept = vec![0i32; 64];
        let (mut l, mut s, mut b) = (0usize, 0usize, 0usize);
        // SAFETY: writable outputs of the given length.
        let st = unsafe {
            smarttrim_stats(
                m,
                &mut l,
                &mut s,
                &mut b,
                kept.as_mut_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                kept.len(),
            )
        };
        (st, kept)
    };
    let (st, m) = create();
    assert_eq!(st, 0, "{}", message());
    assert_eq!(forward(m), 0, "{}", message());
    let (st, want) = stats(m);
    assert_eq!(st, 0, "{}", message());
    assert_eq!(smarttrim_model_destroy(m), 0);
    let mut points = 0;
    // Creation: every allocation and cuBLASLt call made to fail (the driver
    // calls of creation are GpuModel::new's, swept through the Rust API).
    for kind in ["alloc", "blas"] {
        let ((st, m), total) = calls_of(emu, kind, create);
        assert_eq!(st, 0, "{kind}: nothing injected: {}", message());
        assert_eq!(smarttrim_model_destroy(m), 0);
        for n in 1..=total {
            let what = format!("C API create, {kind} call #{n} of {total}");
            let (r, fired) = injected(emu, kind, n, create);
            let (st, m) = r.unwrap_or_else(|p| panic!("{what}: panicked: {p}"));
            assert!(fired, "{what}: not reached");
            points += 1;
            assert_ne!(st, panic_status, "{what}: {}", message());
            if st == 0 {
                assert_eq!(smarttrim_model_destroy(m), 0, "{what}: destroy");
            } else {
                assert!(m.is_null(), "{what}: a failed create handed out a handle");
                assert!(!message().is_empty(), "{what}: a failure without a message");
            }
        }
    }
    // The pass: every call of every kind of `smarttrim_forward` made to fail
    // (the first forward also reserves the workspace); then the next forward
    // and its statistics are right, or the forward fails with a status.
    for kind in KINDS {
        let (st, mut m) = create();
        assert_eq!(st, 0, "{}", message());
        let (f, total) = calls_of(emu, kind, || forward(m));
        assert_eq!(f, 0, "{kind}: nothing injected: {}", message());
        assert_eq!(smarttrim_model_destroy(m), 0);
        let (st, m2) = create();
        assert_eq!(st, 0, "{}", message());
        m = m2;
        for n in 1..=total {
            let what = format!("C API forward, {kind} call #{n} of {total}");
            let (r, fired) = injected(emu, kind, n, || forward(m));
            let f = r.unwrap_or_else(|p| panic!("{what}: panicked: {p}"));
            assert!(fired, "{what}: not reached");
            points += 1;
            assert_ne!(f, panic_status, "{what}: {}", message());
            if f != 0 {
                assert!(!message().is_empty(), "{what}: a failure without a message");
            }
            let f2 = forward(m);
            assert_ne!(f2, panic_status, "{what}: the next forward: {}", message());
            if f2 == 0 {
                let (s, kept) = stats(m);
                assert_eq!(s, 0, "{what}: stats after a good pass: {}", message());
                assert_eq!(kept, want, "{what}: statistics of the next pass");
            }
            // A fresh model for the next point, whose first forward then
            // reserves its workspace exactly as the counted one did.
            assert_eq!(smarttrim_model_destroy(m), 0, "{what}: destroy");
            let (st, m2) = create();
            assert_eq!(st, 0, "{}", message());
            m = m2;
        }
        assert_eq!(smarttrim_model_destroy(m), 0);
    }
    eprintln!("injected_failures_through_the_c_api: {points} injection points, no PANIC status");
}

/// A kernel that faults while it runs makes the context's error sticky (as
/// on a GPU): the pass that launched it reports it, and so does every later
/// call. Runs in a child process, because the fault poisons the process's
/// primary context for every other test.
#[test]
fn a_kernel_fault_is_reported_by_its_pass() {
    let Some(_dev) = device("a_kernel_fault_is_reported_by_its_pass") else {
        return;
    };
    if Emu::get().is_none() {
        eprintln!("skipped a_kernel_fault_is_reported_by_its_pass: needs the emulated device");
        return;
    }
    let text = run_child_test(
        "faults::kernel_fault_child",
        &[("SMARTTRIM_FAULT_CHILD", "1")],
    );
    assert!(text.contains("kernel fault reported by its pass"), "{text}");
}

/// The child of [`a_kernel_fault_is_reported_by_its_pass`].
#[test]
#[ignore = "run by a_kernel_fault_is_reported_by_its_pass in a child process"]
fn kernel_fault_child() {
    if std::env::var("SMARTTRIM_FAULT_CHILD").is_err() {
        return;
    }
    let dev = device("kernel_fault_child").expect("the parent checked the device");
    let emu = Emu::get().expect("the parent checked the emulator");
    let (cfg, w, inputs) = setup();
    let cap = capacity(&cfg, &w, &inputs);
    let model = GpuModel::new(&dev, &w).unwrap();
    let mut ws = Workspace::new(&model, cap).unwrap();
    let opts = GpuForwardOptions::default();
    model.forward(&mut ws, &inputs, &opts).unwrap();
    emu.fail_after("kernel_fault", 5);
    let r = model.forward(&mut ws, &inputs, &opts);
    emu.fail_after("kernel_fault", 0);
    let e = r.expect_err("a pass whose fifth kernel faults").to_string();
    assert!(e.contains("ILLEGAL_ADDRESS"), "{e}");
    // Sticky: the next call fails too, with the same error.
    let e2 = model
        .forward(&mut ws, &inputs, &opts)
        .expect_err("the context is faulted")
        .to_string();
    assert!(e2.contains("ILLEGAL_ADDRESS"), "{e2}");
    println!("kernel fault reported by its pass: {e}");
}
