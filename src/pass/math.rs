//! Elementwise and dense building blocks in f32 on the host: the CPU
//! reference computes with them, and so does the host embedding
//! ([`super::embed_inputs`]) both backends share. Re-exported as
//! [`crate::reference::ops`], their earlier home.

use rayon::prelude::*;

/// LayerNorm of every `d`-wide row of `x`: `(x - mean) / sqrt(var + eps) *
/// gamma + beta`, with the biased variance (as PyTorch). Statistics are
/// accumulated in f64.
pub fn layer_norm_rows(x: &[f32], d: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    if d == 0 {
        return out;
    }
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, r)| layer_norm_row(r, gamma, beta, eps, o));
    out
}

/// LayerNorm of one row into `out`.
pub fn layer_norm_row(r: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let d = r.len();
    if d == 0 {
        return;
    }
    let mean = r.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
    let var = r
        .iter()
        .map(|&v| {
            let t = v as f64 - mean;
            t * t
        })
        .sum::<f64>()
        / d as f64;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((r[i] as f64 - mean) * inv) as f32 * gamma[i] + beta[i];
    }
}

/// GELU, erf form: `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// CLIP's quick GELU: `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: f32) -> f32 {
    x * sigmoid(1.702 * x)
}

/// Logistic sigmoid `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x [rows, inp] * w[out, inp]^T -> [rows, out]` through `matrixmultiply::sgemm`.
pub fn matmul_t(x: &[f32], rows: usize, w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * out];
    if rows == 0 || out == 0 {
        return y;
    }
    assert!(
        x.len() >= rows * inp && w.len() >= out * inp,
        "matmul_t: buffers too small"
    );
    // SAFETY: the strides describe x as [rows, inp] row-major, w^T as
    // [inp, out] (element (k, j) at w[j * inp + k]) and y as [rows, out]
    // row-major; the asserts above and the allocation of y cover every index.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            inp,
            out,
            1.0,
            x.as_ptr(),
            inp as isize,
            1,
            w.as_ptr(),
            1,
            inp as isize,
            0.0,
            y.as_mut_ptr(),
            out as isize,
            1,
        );
    }
    y
}

/// [`matmul_t`] plus a bias per output column.
pub fn linear(x: &[f32], rows: usize, w: &[f32], b: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let mut y = matmul_t(x, rows, w, out, inp);
    if out > 0 {
        y.par_chunks_mut(out).for_each(|r| {
            for (v, bb) in r.iter_mut().zip(b) {
                *v += bb;
            }
        });
    }
    y
}

/// `a += b` elementwise.
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.par_iter_mut()
        .zip(b.par_iter())
        .for_each(|(x, y)| *x += y);
}

/// Applies [`gelu`] to every element.
pub fn gelu_in_place(a: &mut [f32]) {
    a.par_iter_mut().for_each(|x| *x = gelu(*x));
}

/// Applies [`quick_gelu`] to every element.
pub fn quick_gelu_in_place(a: &mut [f32]) {
    a.par_iter_mut().for_each(|x| *x = quick_gelu(*x));
}

/// Mean of the `d`-wide rows `x[lo..hi]` (a zero vector when empty), in f64.
pub fn mean_rows(x: &[f32], d: usize, lo: usize, hi: usize) -> Vec<f32> {
    let mut acc = vec![0.0f64; d];
    for r in lo..hi {
        for (a, v) in acc.iter_mut().zip(&x[r * d..(r + 1) * d]) {
            *a += *v as f64;
        }
    }
    let n = (hi - lo).max(1) as f64;
    acc.into_iter().map(|a| (a / n) as f32).collect()
}
