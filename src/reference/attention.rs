//! Multi-head attention over packed ragged sequences, with head masks.

use rayon::prelude::*;

/// Multi-head attention over packed ragged sequences. q: `[Nq, heads*dh]`, k
/// and v: `[Nk, heads*dh]` (row-major, each row's head h at columns
/// `h*dh..(h+1)*dh`). Sequence b's queries `cu_q[b]..cu_q[b+1]` attend to
/// keys `cu_k[b]..cu_k[b+1]`. Scale `1/sqrt(dh)`, no mask. `head_mask`:
/// `[batch*heads]`, None = all active; inactive heads' output slices are
/// exactly 0. A sequence with queries but no keys gets zero output.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu_q: &[i32],
    cu_k: &[i32],
    heads: usize,
    dh: usize,
    head_mask: Option<&[u8]>,
) -> Vec<f32> {
    let w = heads * dh;
    let nq = q.len() / w.max(1);
    let mut out = vec![0.0f32; nq * w];
    let batch = cu_q.len().saturating_sub(1);
    let scale = 1.0 / (dh as f32).sqrt();
    let pairs: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..heads).map(move |h| (b, h)))
        .filter(|&(b, h)| head_mask.is_none_or(|m| m[b * heads + h] != 0))
        .collect();
    let results: Vec<(usize, usize, Vec<f32>)> = pairs
        .into_par_iter()
        .map(|(b, h)| {
            let (q0, q1) = (cu_q[b] as usize, cu_q[b + 1] as usize);
            let (k0, k1) = (cu_k[b] as usize, cu_k[b + 1] as usize);
            let (m, n) = (q1 - q0, k1 - k0);
            let mut o = vec![0.0f32; m * dh];
            if m == 0 || n == 0 {
                return (b, h, o);
            }
            let mut s = vec![0.0f32; m * n];
            // SAFETY: Q_h is [m, dh] at q[q0*w + h*dh] with row stride w;
            // K_h^T is [dh, n] with element (c, j) at k[(k0+j)*w + h*dh + c];
            // S is [m, n] row-major; all indices lie inside q, k and s.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    dh,
                    n,
                    scale,
                    q.as_ptr().add(q0 * w + h * dh),
                    w as isize,
                    1,
                    k.as_ptr().add(k0 * w + h * dh),
                    1,
                    w as isize,
                    0.0,
                    s.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            for row in s.chunks_mut(n) {
                let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for x in row.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
            // SAFETY: P is [m, n] row-major; V_h is [n, dh] at
            // v[k0*w + h*dh] with row stride w; O is [m, dh] row-major.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    n,
                    dh,
                    1.0,
                    s.as_ptr(),
                    n as isize,
                    1,
                    v.as_ptr().add(k0 * w + h * dh),
                    w as isize,
                    1,
                    0.0,
                    o.as_mut_ptr(),
                    dh as isize,
                    1,
                );
            }
            (b, h, o)
        })
        .collect();
    for (b, h, o) in results {
        let q0 = cu_q[b] as usize;
        for (i, r) in o.chunks(dh.max(1)).enumerate() {
            let at = (q0 + i) * w + h * dh;
            out[at..at + dh].copy_from_slice(r);
        }
    }
    out
}
