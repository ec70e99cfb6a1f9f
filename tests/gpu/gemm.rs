//! cuBLASLt linear layers against an f64 CPU product.

use smarttrim::ops::{Blas, Epilogue, LinearShape};

use crate::common::*;

fn cpu_linear(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for j in 0..n {
            let mut acc = b.map_or(0.0, |b| b[j] as f64);
            for i in 0..k {
                acc += x[r * k + i] as f64 * w[j * k + i] as f64;
            }
            y[r * n + j] = acc as f32;
        }
    }
    y
}

fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

#[test]
fn linear_matches_cpu() {
    let Some(dev) = device("linear_matches_cpu") else {
        return;
    };
    let stream = dev.stream().clone();
    let blas = Blas::new(&dev).expect("cuBLASLt handle");
    let mut rng = Rng::new(3);
    for &(rows, k, n) in &[(1usize, 64usize, 64usize), (31, 768, 2304), (577, 768, 384)] {
        for epi in [Epilogue::None, Epilogue::Bias, Epilogue::BiasGeluTanh] {
            let x = round_f16(&rng.normals(rows * k, 1.0, 0.0));
            let w = round_f16(&rng.normals(n * k, 0.05, 0.0));
            let b = round_f16(&rng.normals(n, 0.1, 0.0));
            let with_bias = epi != Epilogue::None;
            let mut want = cpu_linear(&x, &w, with_bias.then_some(&b[..]), rows, k, n);
            if epi == Epilogue::BiasGeluTanh {
                want.iter_mut().for_each(|v| *v = gelu_tanh(*v));
            }
            let x_d = stream.clone_htod(&to_f16(&x)).unwrap();
            let w_d = stream.clone_htod(&to_f16(&w)).unwrap();
            let b_d = stream.clone_htod(&to_f16(&b)).unwrap();
            let mut y_d = stream.clone_htod(&nan_f16(rows * n)).unwrap();
            let b_view = b_d.as_view();
            blas.linear(
                LinearShape { rows, k, n },
                &x_d.as_view(),
                &w_d.as_view(),
                with_bias.then_some(&b_view),
                epi,
                &mut y_d,
            )
            .unwrap();
            let y = from_f16(&stream.clone_dtoh(&y_d).unwrap());
            let err = rel_err(&y, &want);
            println!("linear rows={rows} k={k} n={n} {epi:?}: rel err {err:.2e}");
            assert!(err < 3e-3, "rows={rows} k={k} n={n} {epi:?}: rel err {err}");
        }
    }
}
