//! Shared bench helpers: device acquisition (or a printed skip) and timing.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use half::f16;
use smarttrim::device::Device;
use smarttrim::ops::{layer_norm, LayerNormShape};

/// Device 0, or None after printing why the group is skipped.
pub fn device(group: &str) -> Option<Device> {
    if let Err(e) = smarttrim::kernels::ensure_built() {
        println!("skipped bench group {group}: {e}");
        return None;
    }
    match Device::open(0) {
        Ok(d) => match d.refuse_timing(&format!("bench group {group}")) {
            Ok(()) => Some(d),
            Err(e) => {
                println!("skipped bench group {group}: {e}");
                None
            }
        },
        Err(e) => {
            println!("skipped bench group {group}: no GPU: {e}");
            None
        }
    }
}

/// Times `iters` calls of `f`, synchronising the device before and after so
/// the measured interval covers the GPU work.
pub fn time_iters(dev: &Device, iters: u64, mut f: impl FnMut()) -> Duration {
    dev.synchronize().expect("synchronize");
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().expect("synchronize");
    t.elapsed()
}

/// Deterministic non-zero f16 data (never time zeros).
pub fn data_f16(n: usize, seed: u32) -> Vec<f16> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            f16::from_f32((s % 2001) as f32 / 1000.0 - 1.0)
        })
        .collect()
}

/// LayerNorm over METER-like shapes, against a device-to-device copy of the
/// same bytes (the bandwidth ceiling), measured in the same run.
pub fn layernorm_group(c: &mut Criterion) {
    let Some(dev) = device("layernorm") else {
        return;
    };
    let stream = dev.stream().clone();
    let d = 768;
    let mut g = c.benchmark_group("layernorm");
    for &rows in &[617usize, 32 * 617] {
        let x = stream.clone_htod(&data_f16(rows * d, 1)).unwrap();
        let gamma = stream.clone_htod(&data_f16(d, 2)).unwrap();
        let beta = stream.clone_htod(&data_f16(d, 3)).unwrap();
        let mut out = stream.alloc_zeros::<f16>(rows * d).unwrap();
        let shape = LayerNormShape { rows, d, eps: 1e-6 };
        // Bytes read + written.
        g.throughput(Throughput::Bytes((2 * rows * d * 2) as u64));
        g.bench_function(format!("layernorm_f16/rows={rows}"), |b| {
            b.iter_custom(|iters| {
                time_iters(&dev, iters, || {
                    layer_norm(&dev, shape, &x, &gamma, &beta, &mut out).unwrap()
                })
            })
        });
        g.bench_function(format!("memcpy_dtod/rows={rows}"), |b| {
            b.iter_custom(|iters| {
                time_iters(&dev, iters, || stream.memcpy_dtod(&x, &mut out).unwrap())
            })
        });
    }
    g.finish();
}
