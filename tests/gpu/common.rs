//! Shared helpers for the GPU tests: device acquisition with the skip/require
//! policy, seeded random data, NaN poisoning and error measures.

#![allow(dead_code)]

use std::io::Write as _;
use std::sync::OnceLock;

use half::f16;
use smarttrim::device::Device;
use smarttrim::Error;

/// Whether `SMARTTRIM_REQUIRE_GPU=1` is set: a missing GPU then fails tests.
pub fn gpu_required() -> bool {
    std::env::var("SMARTTRIM_REQUIRE_GPU").is_ok_and(|v| v == "1" || v == "true")
}

/// Why no GPU is usable (or None when one is), and whether it is the
/// emulated device. Computed once per process.
fn probe() -> &'static (Option<String>, bool) {
    static PROBE: OnceLock<(Option<String>, bool)> = OnceLock::new();
    PROBE.get_or_init(|| {
        if let Err(e) = smarttrim::kernels::ensure_built() {
            return (Some(e.to_string()), false);
        }
        match Device::open(0) {
            Ok(d) => (None, d.is_emulated()),
            Err(e @ (Error::NoDriver | Error::NoDevice(_))) => (Some(e.to_string()), false),
            Err(e) => (Some(format!("opening device 0 failed: {e}")), false),
        }
    })
}

fn unavailable() -> Option<String> {
    probe().0.clone()
}

/// Whether shapes are sized for the CPU-emulated device (`emu/`): true on
/// the emulator unless `SMARTTRIM_EMU_FULL=1` asks for the GPU's sizes there
/// too. Tests keep their METER-sized cases for a real GPU and run smaller
/// ones (fewer layers, fewer repeats, no 32 x 577 batch) on the emulator,
/// where every thread is a fiber on a 2-core CI machine.
pub fn cpu_sized() -> bool {
    probe().1 && !std::env::var("SMARTTRIM_EMU_FULL").is_ok_and(|v| v == "1" || v == "true")
}

/// Opens device 0 for a test, or returns None after printing why the test is
/// skipped. Panics (fails the test) instead when the GPU is required.
pub fn device(test: &str) -> Option<Device> {
    if let Some(why) = unavailable() {
        if gpu_required() {
            panic!("{test}: SMARTTRIM_REQUIRE_GPU=1 but no GPU is usable: {why}");
        }
        // Written to the stderr handle directly: libtest captures only the
        // print!/eprint! macros, and this line must show in a normal run.
        let _ = writeln!(std::io::stderr(), "skipped {test}: no GPU: {why}");
        return None;
    }
    Some(Device::open(0).expect("device 0 opened a moment ago"))
}

/// A small deterministic generator (SplitMix64) for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale + shift).collect()
    }
}

/// Rounds through f16, so a CPU reference sees exactly the device's inputs.
pub fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

pub fn from_f16(v: &[f16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

/// `||out - ref|| / ||ref||`, failing on any non-finite output element (an
/// unwritten NaN-poisoned element shows up here).
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    if let Some(i) = out.iter().position(|x| !x.is_finite()) {
        panic!("output element {i} is {} (unwritten or overflowed)", out[i]);
    }
    let mut num = 0f64;
    let mut den = 0f64;
    for (&o, &r) in out.iter().zip(reference) {
        num += (o as f64 - r as f64).powi(2);
        den += (r as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// A buffer of `n` f16 NaNs, so unwritten outputs are caught.
pub fn nan_f16(n: usize) -> Vec<f16> {
    vec![f16::NAN; n]
}

/// `cu_seqlens` for the given lengths.
pub fn cu_of(lens: &[usize]) -> Vec<i32> {
    let mut cu = vec![0i32];
    for &n in lens {
        cu.push(cu.last().unwrap() + n as i32);
    }
    cu
}

/// The length sets every packed-sequence test runs: single odd lengths
/// (the testing rules' 1, 2, 31, 40, 325, 577, 901, 1024, 1025, 1297), two
/// mixes with an empty sequence, and a METER-like batch of 32 x 577 (on a
/// real GPU only: see [`cpu_sized`]).
pub fn length_sets() -> Vec<Vec<usize>> {
    let mut sets: Vec<Vec<usize>> = [1, 2, 31, 40, 325, 577, 901, 1024, 1025, 1297]
        .iter()
        .map(|&n| vec![n])
        .collect();
    sets.push(vec![1, 2, 31, 40, 577, 1024, 1025, 3]);
    sets.push(vec![325, 0, 901, 1297]);
    if !cpu_sized() {
        sets.push(vec![577; 32]);
    }
    sets
}

/// A small cross-encoder for sweeps and stress tests: tiny-meter's GPU
/// variant cut to 2 layers (the second with token and head pruners, so
/// compaction and the head pruners run), random weights from `seed`, a
/// ragged batch of 2 short sequences per stream (text 5 and 3 rows, image
/// 17 and 9).
pub fn small_cross_model(
    seed: u64,
) -> (
    smarttrim::spec::ModelConfig,
    smarttrim::spec::Weights,
    smarttrim::reference::Inputs,
) {
    let mut cfg = smarttrim::model::gpu_variant(&smarttrim::spec::preset("tiny-meter").unwrap());
    for s in &mut cfg.streams {
        s.layers.truncate(2);
    }
    let w = smarttrim::spec::Weights::random(&cfg, seed).unwrap();
    let mut rng = Rng::new(seed + 1);
    let streams = cfg
        .streams
        .iter()
        .zip([[5usize, 3], [17, 9]])
        .map(|(s, lens)| smarttrim::reference::StreamInput::Packed {
            rows: rng.normals((lens[0] + lens[1]) * s.hidden, 1.0, 0.0),
            cu_seqlens: cu_of(&lens),
        })
        .collect();
    let inputs = smarttrim::reference::Inputs {
        streams,
        context: None,
    };
    (cfg, w, inputs)
}

/// The workspace capacity `inputs` need.
pub fn capacity(
    cfg: &smarttrim::spec::ModelConfig,
    w: &smarttrim::spec::Weights,
    inputs: &smarttrim::reference::Inputs,
) -> smarttrim::model::Capacity {
    let emb: Vec<_> = w.streams.iter().map(|s| s.embeddings.clone()).collect();
    smarttrim::model::Capacity::for_inputs(
        &smarttrim::model::validate_inputs(cfg, &emb, inputs, None).unwrap(),
    )
}

/// Whether two passes gave the same results (every record, the final rows,
/// the waits).
pub fn same(a: &smarttrim::model::GpuOutputs, b: &smarttrim::model::GpuOutputs) -> bool {
    a.streams == b.streams && a.syncs == b.syncs
}

/// Whether `cond` holds within 10 s (polled), for what the driver does on
/// its own threads (a user object's destructor).
pub fn eventually(cond: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    cond()
}

/// `smarttrim_model_create_from_memory` on device 0 with a config's JSON and
/// a safetensors image: the status and the handle (null on failure).
pub fn c_create_from_memory(
    json: &str,
    bytes: &[u8],
) -> (i32, *mut smarttrim::ffi::SmarttrimModel) {
    let mut m = std::ptr::null_mut();
    // SAFETY: valid buffers for their lengths and a writable out pointer.
    let st = unsafe {
        smarttrim::ffi::smarttrim_model_create_from_memory(
            json.as_ptr().cast(),
            json.len(),
            bytes.as_ptr(),
            bytes.len(),
            0,
            &mut m,
        )
    };
    (st, m)
}

/// Runs the `#[ignore]`d test `test` of this test executable in a child
/// process with `env` set (for what must not touch this process's context);
/// asserts that it passed and returns what it printed.
pub fn run_child_test(test: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--ignored", "--nocapture"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child {test} failed:\n{text}");
    text
}
