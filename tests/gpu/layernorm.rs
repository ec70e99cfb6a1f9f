//! `layernorm_f16` against an f64 CPU LayerNorm.

use half::f16;
use smarttrim::ops::{layer_norm, layer_norm_ext, LayerNormExtras, LayerNormShape};

use crate::common::*;

fn cpu_layer_norm(
    x: &[f32],
    res: Option<&[f32]>,
    d: usize,
    g: &[f32],
    b: &[f32],
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (r, row) in x.chunks(d).enumerate() {
        let v: Vec<f64> = (0..d)
            .map(|i| row[i] as f64 + res.map_or(0.0, |res| res[r * d + i] as f64))
            .collect();
        let mean = v.iter().sum::<f64>() / d as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for i in 0..d {
            out[r * d + i] = ((v[i] - mean) * rstd * g[i] as f64 + b[i] as f64) as f32;
        }
    }
    out
}

#[test]
fn layernorm_matches_cpu() {
    let Some(dev) = device("layernorm_matches_cpu") else {
        return;
    };
    let stream = dev.stream().clone();
    let mut rng = Rng::new(7);
    for &d in &[384usize, 768] {
        for &rows in &[1usize, 31, 577] {
            for with_res in [false, true] {
                // A large common offset checks the two-pass variance.
                let x = round_f16(&rng.normals(rows * d, 1.5, 3.0));
                let res = round_f16(&rng.normals(rows * d, 0.5, 0.0));
                let g = round_f16(&rng.normals(d, 0.2, 1.0));
                let b = round_f16(&rng.normals(d, 0.2, 0.0));
                let want = cpu_layer_norm(&x, with_res.then_some(&res[..]), d, &g, &b, 1e-6);

                let x_d = stream.clone_htod(&to_f16(&x)).unwrap();
                let r_d = stream.clone_htod(&to_f16(&res)).unwrap();
                let g_d = stream.clone_htod(&to_f16(&g)).unwrap();
                let b_d = stream.clone_htod(&to_f16(&b)).unwrap();
                let mut o_d = stream.clone_htod(&nan_f16(rows * d)).unwrap();
                let shape = LayerNormShape { rows, d, eps: 1e-6 };
                if with_res {
                    let extras = LayerNormExtras::<_, cudarc::driver::CudaSlice<i32>> {
                        residual: Some(&r_d),
                        rows_dev: None,
                    };
                    layer_norm_ext(&dev, shape, &x_d, &g_d, &b_d, &mut o_d, extras).unwrap();
                } else {
                    layer_norm(&dev, shape, &x_d, &g_d, &b_d, &mut o_d).unwrap();
                }
                let out: Vec<f16> = stream.clone_dtoh(&o_d).unwrap();
                let err = rel_err(&from_f16(&out), &want);
                println!("layernorm d={d} rows={rows} residual={with_res}: rel err {err:.2e}");
                assert!(
                    err < 3e-3,
                    "d={d} rows={rows} residual={with_res}: rel err {err}"
                );
            }
        }
    }
}

#[test]
fn layernorm_respects_device_row_count() {
    let Some(dev) = device("layernorm_respects_device_row_count") else {
        return;
    };
    let stream = dev.stream().clone();
    let mut rng = Rng::new(11);
    let (rows, d, valid) = (40usize, 64usize, 17i32);
    let x = round_f16(&rng.normals(rows * d, 1.0, 0.0));
    let g = vec![1f32; d];
    let b = vec![0f32; d];
    let x_d = stream.clone_htod(&to_f16(&x)).unwrap();
    let g_d = stream.clone_htod(&to_f16(&g)).unwrap();
    let b_d = stream.clone_htod(&to_f16(&b)).unwrap();
    let n_d = stream.clone_htod(&[valid]).unwrap();
    let mut o_d = stream.clone_htod(&nan_f16(rows * d)).unwrap();
    let extras = LayerNormExtras::<cudarc::driver::CudaSlice<f16>, _> {
        residual: None,
        rows_dev: Some(&n_d),
    };
    let shape = LayerNormShape { rows, d, eps: 1e-5 };
    layer_norm_ext(&dev, shape, &x_d, &g_d, &b_d, &mut o_d, extras).unwrap();
    let out = from_f16(&stream.clone_dtoh(&o_d).unwrap());
    let valid = valid as usize;
    let want = cpu_layer_norm(&x[..valid * d], None, d, &g, &b, 1e-5);
    assert!(rel_err(&out[..valid * d], &want) < 3e-3);
    assert!(
        out[valid * d..].iter().all(|v| v.is_nan()),
        "rows past the device count must be left untouched"
    );
}
