//! One kernel call: LayerNorm over 4 packed f16 rows of width 64 on GPU 0,
//! checked against the host computation.
//!
//! ```sh
//! cargo run --example 01_kernel_layernorm
//! ```
//!
//! Without a GPU (or without the kernels built in) it prints the library's
//! typed error (`Error::NoDriver`, `Error::NoDevice`, `Error::KernelsNotBuilt`)
//! and exits with status 1.

use half::f16;
use smarttrim::device::Device;
use smarttrim::ops::{layer_norm, LayerNormShape};

fn run() -> smarttrim::Result<()> {
    let dev = Device::open(0)?;
    println!("{}", dev.info()?);
    let (rows, d, eps) = (4usize, 64usize, 1e-5f32);
    let x: Vec<f32> = (0..rows * d)
        .map(|i| ((i * 7 % 23) as f32) / 10.0 - 1.0)
        .collect();
    let to16 = |v: &[f32]| v.iter().map(|&a| f16::from_f32(a)).collect::<Vec<_>>();
    let stream = dev.stream();
    let drv = |what: &'static str| move |e| smarttrim::Error::driver(what, e);
    let x_d = stream.clone_htod(&to16(&x)).map_err(drv("upload x"))?;
    let g_d = stream
        .clone_htod(&to16(&vec![1.0; d]))
        .map_err(drv("upload gamma"))?;
    let b_d = stream
        .clone_htod(&to16(&vec![0.0; d]))
        .map_err(drv("upload beta"))?;
    let mut out = stream
        .alloc_zeros::<f16>(rows * d)
        .map_err(drv("alloc out"))?;
    layer_norm(
        &dev,
        LayerNormShape { rows, d, eps },
        &x_d,
        &g_d,
        &b_d,
        &mut out,
    )?;
    let got = stream.clone_dtoh(&out).map_err(drv("download out"))?;
    let mut worst = 0f32;
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        for (c, v) in row.iter().enumerate() {
            let want = (v - mean) / (var + eps).sqrt();
            worst = worst.max((got[r * d + c].to_f32() - want).abs());
        }
    }
    println!("layer_norm: {rows} rows x {d}, max |gpu - host| = {worst:.2e}");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("01_kernel_layernorm: {e}");
        eprintln!("(typed error: {e:?})");
        std::process::exit(1);
    }
}
