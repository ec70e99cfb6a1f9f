//! Token and head pruners (DESIGN.md, "Token pruner" and "Head pruner").

use rayon::prelude::*;

use super::ops::{gelu, layer_norm_rows, matmul_t, mean_rows, sigmoid};
use crate::spec::{HeadPrunerWeights, KeepRule, TokenPrunerWeights};

fn seq(cu: &[i32], b: usize) -> (usize, usize) {
    (cu[b].max(0) as usize, cu[b + 1].max(0) as usize)
}

/// `mean_j LN(y_j)` over sequence `b` of the other stream, or zeros.
fn other_mean(
    other: Option<(&[f32], &[i32])>,
    b: usize,
    d_other: Option<usize>,
    gamma: Option<&Vec<f32>>,
    beta: Option<&Vec<f32>>,
    eps: f32,
) -> Option<Vec<f32>> {
    let (y, cu) = other?;
    let d_o = d_other?;
    let (g, be) = (gamma?, beta?);
    if b + 1 >= cu.len() {
        return Some(vec![0.0; d_o]);
    }
    let (lo, hi) = seq(cu, b);
    let ln = layer_norm_rows(&y[lo * d_o..hi * d_o], d_o, g, be, eps);
    Some(mean_rows(&ln, d_o, 0, hi - lo))
}

/// `s_i` for every row (DESIGN.md token pruner). `other` = the other
/// stream's rows of the same sequences and their cu_seqlens (same batch), or
/// None for single-stream models. The cross term is used when both `other`
/// and the pruner's cross weights (`ln_c`, `w1c`) are present; otherwise
/// `g_cross` is absent (equivalent to zero).
pub fn token_scores(
    x: &[f32],
    cu_seqlens: &[i32],
    other: Option<(&[f32], &[i32])>,
    p: &TokenPrunerWeights,
    eps: f32,
) -> Vec<f32> {
    let d = p.d;
    let hs = p.hs;
    let total = x.len() / d.max(1);
    let u = layer_norm_rows(x, d, &p.ln_p_gamma, &p.ln_p_beta, eps);
    // W1x u_i for every row at once.
    let hx = matmul_t(&u, total, &p.w1x, hs, d);
    let batch = cu_seqlens.len().saturating_sub(1);
    let mut scores = vec![0.0f32; total];
    let per_seq: Vec<(usize, usize, Vec<f32>)> = (0..batch)
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = seq(cu_seqlens, b);
            let g_self = mean_rows(&u, d, lo, hi);
            let mut c = matmul_t(&g_self, 1, &p.w1s, hs, d);
            if let (Some(gc), Some(w1c), Some(d_o)) = (
                other_mean(
                    other,
                    b,
                    p.d_other,
                    p.ln_c_gamma.as_ref(),
                    p.ln_c_beta.as_ref(),
                    eps,
                ),
                p.w1c.as_ref(),
                p.d_other,
            ) {
                let cc = matmul_t(&gc, 1, w1c, hs, d_o);
                for (a, v) in c.iter_mut().zip(cc) {
                    *a += v;
                }
            }
            for (a, v) in c.iter_mut().zip(&p.b1) {
                *a += v;
            }
            let s: Vec<f32> = (lo..hi)
                .map(|i| {
                    let mut acc = 0.0f32;
                    for j in 0..hs {
                        acc += p.w2[j] * gelu(hx[i * hs + j] + c[j]);
                    }
                    acc + p.b2
                })
                .collect();
            (lo, hi, s)
        })
        .collect();
    for (lo, hi, s) in per_seq {
        scores[lo..hi].copy_from_slice(&s);
    }
    scores
}

/// Keep flag per row under the rule: threshold keeps `sigmoid(s) > tau`;
/// budget keeps `k = max(1, ceil(rho*n))` rows (see [`KeepRule::budget`]):
/// with `keep_first` the sequence's current first row plus the `k - 1`
/// others with the largest scores, else simply the top `k`; ties broken by
/// lower `orig_index`, then lower row. NaN scores rank lowest and never pass
/// a threshold. With `keep_first` the current first row of every non-empty
/// sequence is kept whatever its score.
pub fn keep_rows(
    scores: &[f32],
    cu_seqlens: &[i32],
    orig_index: &[i32],
    rule: &KeepRule,
    keep_first: bool,
) -> Vec<bool> {
    let mut keep = vec![false; scores.len()];
    let batch = cu_seqlens.len().saturating_sub(1);
    for b in 0..batch {
        let (lo, hi) = seq(cu_seqlens, b);
        if hi <= lo {
            continue;
        }
        match *rule {
            KeepRule::Threshold { tau } => {
                for i in lo..hi {
                    keep[i] = sigmoid(scores[i]) > tau;
                }
                if keep_first {
                    keep[lo] = true;
                }
            }
            KeepRule::Budget { .. } => {
                let k = rule.budget(hi - lo);
                let start = if keep_first { lo + 1 } else { lo };
                let mut idx: Vec<usize> = (start..hi).collect();
                let key = |i: usize| {
                    let s = scores[i];
                    if s.is_nan() {
                        f32::NEG_INFINITY
                    } else {
                        s
                    }
                };
                idx.sort_by(|&a, &b| {
                    key(b)
                        .partial_cmp(&key(a))
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(orig_index[a].cmp(&orig_index[b]))
                        .then(a.cmp(&b))
                });
                let mut left = k;
                if keep_first {
                    keep[lo] = true;
                    left -= 1;
                }
                for &i in idx.iter().take(left) {
                    keep[i] = true;
                }
            }
        }
    }
    keep
}

/// `z_b = [mean_i LN_h(x_i) ; mean_j LN_hc(y_j)]` for every sequence
/// (`[batch, d + d_other]`), the head pruner's input.
pub fn head_pruner_input(
    x: &[f32],
    cu_seqlens: &[i32],
    other: Option<(&[f32], &[i32])>,
    p: &HeadPrunerWeights,
    eps: f32,
) -> Vec<f32> {
    let d = p.d;
    let zin = d + p.d_other.unwrap_or(0);
    let batch = cu_seqlens.len().saturating_sub(1);
    let mut z = vec![0.0f32; batch * zin];
    z.par_chunks_mut(zin.max(1))
        .enumerate()
        .for_each(|(b, zb)| {
            let (lo, hi) = seq(cu_seqlens, b);
            let ln = layer_norm_rows(&x[lo * d..hi * d], d, &p.ln_h_gamma, &p.ln_h_beta, eps);
            zb[..d].copy_from_slice(&mean_rows(&ln, d, 0, hi - lo));
            if let Some(g) = other_mean(
                other,
                b,
                p.d_other,
                p.ln_hc_gamma.as_ref(),
                p.ln_hc_beta.as_ref(),
                eps,
            ) {
                zb[d..].copy_from_slice(&g);
            }
        });
    z
}

/// `a_b` logits, `[batch * heads]` row-major: `W2h GELU(W1h z_b + b1h) + b2h`.
pub fn head_logits(
    x: &[f32],
    cu_seqlens: &[i32],
    other: Option<(&[f32], &[i32])>,
    p: &HeadPrunerWeights,
    eps: f32,
) -> Vec<f32> {
    let batch = cu_seqlens.len().saturating_sub(1);
    let zin = p.d + p.d_other.unwrap_or(0);
    let z = head_pruner_input(x, cu_seqlens, other, p, eps);
    let mut h = matmul_t(&z, batch, &p.w1, p.hh, zin);
    for row in h.chunks_mut(p.hh.max(1)) {
        for (v, b) in row.iter_mut().zip(&p.b1) {
            *v = gelu(*v + b);
        }
    }
    let mut a = matmul_t(&h, batch, &p.w2, p.heads, p.hh);
    for row in a.chunks_mut(p.heads.max(1)) {
        for (v, b) in row.iter_mut().zip(&p.b2) {
            *v += b;
        }
    }
    a
}

/// Mask `[batch * heads]` (1 active, 0 inactive) from logits:
/// `sigmoid(a) > tau`, then a `min_heads` top-up by highest logit (ties by
/// lower head index; NaN logits rank lowest).
pub fn head_mask(logits: &[f32], heads: usize, tau: f32, min_heads: usize) -> Vec<u8> {
    let mut mask = vec![0u8; logits.len()];
    if heads == 0 {
        return mask;
    }
    for (m, a) in mask.chunks_mut(heads).zip(logits.chunks(heads)) {
        let mut active = 0;
        for (mj, &aj) in m.iter_mut().zip(a) {
            if sigmoid(aj) > tau {
                *mj = 1;
                active += 1;
            }
        }
        if active < min_heads {
            let key = |j: usize| {
                if a[j].is_nan() {
                    f32::NEG_INFINITY
                } else {
                    a[j]
                }
            };
            let mut idx: Vec<usize> = (0..a.len()).filter(|&j| m[j] == 0).collect();
            idx.sort_by(|&x, &y| {
                key(y)
                    .partial_cmp(&key(x))
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(x.cmp(&y))
            });
            for &j in idx.iter().take(min_heads - active) {
                m[j] = 1;
            }
        }
    }
    mask
}
