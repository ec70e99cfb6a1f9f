//! Token and head scorers (kernels/score.cu) against
//! `smarttrim::reference::pruner`.

use cudarc::driver::CudaSlice;
use half::f16;
use smarttrim::device::Device;
use smarttrim::ops::{
    head_scores, token_scores, HeadPrunerDev, HeadScoreOutputs, HeadScoreWorkspace, LnDev,
    OtherStream, PrunerInput, TokenPrunerDev, TokenScoreOutputs, TokenScoreWorkspace,
};
use smarttrim::reference::{self, ops::sigmoid};
use smarttrim::spec::{HeadPrunerWeights, TokenPrunerWeights};

use crate::common::*;

const EPS: f32 = 1e-6;

/// `v` on the device (an empty `v`: one 16-byte vector of zeros, as the
/// driver allocates nothing of size 0).
fn up(dev: &Device, v: &[f32]) -> CudaSlice<f16> {
    let h = if v.is_empty() {
        vec![0.0; 8]
    } else {
        v.to_vec()
    };
    dev.stream().clone_htod(&to_f16(&h)).unwrap()
}

fn token_weights(rng: &mut Rng, d: usize, d_other: Option<usize>, hs: usize) -> TokenPrunerWeights {
    let s1 = 1.0 / (d as f32).sqrt();
    TokenPrunerWeights {
        ln_p_gamma: round_f16(&rng.normals(d, 0.2, 1.0)),
        ln_p_beta: round_f16(&rng.normals(d, 0.2, 0.0)),
        ln_c_gamma: d_other.map(|o| round_f16(&rng.normals(o, 0.2, 1.0))),
        ln_c_beta: d_other.map(|o| round_f16(&rng.normals(o, 0.2, 0.0))),
        w1x: round_f16(&rng.normals(hs * d, s1, 0.0)),
        w1s: round_f16(&rng.normals(hs * d, s1, 0.0)),
        w1c: d_other.map(|o| round_f16(&rng.normals(hs * o, 1.0 / (o as f32).sqrt(), 0.0))),
        b1: round_f16(&rng.normals(hs, 0.5, 0.0)),
        w2: round_f16(&rng.normals(hs, 2.0 / (hs as f32).sqrt(), 0.0)),
        b2: 0.1,
        hs,
        d,
        d_other,
    }
}

/// Scores and flags of one batch against the reference.
fn check_tokens(
    dev: &Device,
    lens: &[usize],
    other_lens: Option<&[usize]>,
    hs: usize,
    tau: f32,
    keep_first: bool,
    seed: u64,
) {
    let stream = dev.stream().clone();
    let mut rng = Rng::new(seed);
    let (d, dc) = (768usize, 768usize);
    let w = token_weights(&mut rng, d, other_lens.map(|_| dc), hs);
    let cu = cu_of(lens);
    let total = *cu.last().unwrap() as usize;
    let batch = lens.len();
    let x = round_f16(&rng.normals(total * d, 1.0, 0.3));
    let (y, cu_y) = match other_lens {
        Some(l) => {
            let c = cu_of(l);
            let n = *c.last().unwrap() as usize;
            (round_f16(&rng.normals(n * dc, 1.0, -0.2)), c)
        }
        None => (Vec::new(), Vec::new()),
    };
    let total_y = y.len() / dc;
    let want =
        reference::pruner::token_scores(&x, &cu, other_lens.map(|_| (&y[..], &cu_y[..])), &w, EPS);

    let x_d = up(dev, &x);
    let cu_d = stream.clone_htod(&cu).unwrap();
    let y_d = up(dev, if y.is_empty() { &[0.0; 8] } else { &y });
    let cuy_d = stream
        .clone_htod(if cu_y.is_empty() {
            &[0i32][..]
        } else {
            &cu_y[..]
        })
        .unwrap();
    let (lpg, lpb) = (up(dev, &w.ln_p_gamma), up(dev, &w.ln_p_beta));
    let lcg = w.ln_c_gamma.as_ref().map(|v| up(dev, v));
    let lcb = w.ln_c_beta.as_ref().map(|v| up(dev, v));
    let (w1x, w1s, b1, w2) = (
        up(dev, &w.w1x),
        up(dev, &w.w1s),
        up(dev, &w.b1),
        up(dev, &w.w2),
    );
    let w1c = w.w1c.as_ref().map(|v| up(dev, v));
    let mut u = stream.clone_htod(&nan_f16(total * d)).unwrap();
    let mut uy = stream.clone_htod(&nan_f16(total_y.max(1) * dc)).unwrap();
    let mut g_self = stream.clone_htod(&vec![f32::NAN; batch * d]).unwrap();
    let mut g_cross = stream.clone_htod(&vec![f32::NAN; batch * dc]).unwrap();
    let mut ctx = stream.clone_htod(&vec![f32::NAN; batch * hs]).unwrap();
    let has_other = other_lens.is_some();
    let input = PrunerInput {
        batch,
        total_rows: total,
        x: &x_d,
        cu_seqlens: &cu_d,
        other: has_other.then_some(OtherStream {
            rows: &y_d,
            cu_seqlens: &cuy_d,
            total_rows: total_y,
        }),
    };
    let wd = TokenPrunerDev {
        ln_p: LnDev {
            gamma: &lpg,
            beta: &lpb,
        },
        ln_c: lcg
            .as_ref()
            .zip(lcb.as_ref())
            .map(|(g, b)| LnDev { gamma: g, beta: b }),
        w1x: &w1x,
        w1s: &w1s,
        w1c: w1c.as_ref().map(|v| v as _),
        b1: &b1,
        w2: &w2,
        b2: w.b2,
        d,
        d_other: w.d_other,
        hs,
        eps: EPS,
    };
    // Without and with the split over hidden slices (partial sums +
    // score_finalize).
    for use_partial in [false, true] {
        let mut partial = stream
            .clone_htod(&vec![f32::NAN; (hs / 64) * total])
            .unwrap();
        let mut scores = stream.clone_htod(&vec![f32::NAN; total]).unwrap();
        let mut flags = stream.clone_htod(&vec![7u8; total]).unwrap();
        token_scores(
            dev,
            &input,
            &wd,
            TokenScoreWorkspace {
                u: &mut u,
                uy: if has_other { Some(&mut uy) } else { None },
                g_self: &mut g_self,
                g_cross: if has_other { Some(&mut g_cross) } else { None },
                context: &mut ctx,
                partial: if use_partial {
                    Some(&mut partial)
                } else {
                    None
                },
            },
            TokenScoreOutputs {
                scores: &mut scores,
                flags: Some(&mut flags),
                tau,
                keep_first,
            },
        )
        .unwrap();
        let got = stream.clone_dtoh(&scores).unwrap();
        let err = rel_err(&got, &want);
        let what = format!(
            "lens={:?} cross={has_other} hs={hs} tau={tau} keep_first={keep_first} \
             split={use_partial}",
            &lens[..lens.len().min(8)]
        );
        println!("token_scores {what}: rel err {err:.2e}");
        assert!(err < 1e-2, "{what}: rel err {err}");
        let got_flags = stream.clone_dtoh(&flags).unwrap();
        let mut ties = 0;
        for b in 0..batch {
            for i in cu[b] as usize..cu[b + 1] as usize {
                let p = sigmoid(want[i]);
                let want_flag = p > tau || (keep_first && i == cu[b] as usize);
                assert!(got_flags[i] <= 1, "{what}: flag {i} unwritten");
                if (got_flags[i] == 1) != want_flag {
                    assert!((p - tau).abs() < 1e-3, "{what}: flag {i} differs (p = {p})");
                    ties += 1;
                }
            }
        }
        if ties > 0 {
            println!("token_scores {what}: {ties} flag(s) differ within 1e-3 of tau (ties)");
        }
    }
}

#[test]
fn token_scores_match_reference() {
    let Some(dev) = device("token_scores_match_reference") else {
        return;
    };
    for (i, lens) in length_sets().into_iter().enumerate() {
        check_tokens(&dev, &lens, None, 384, 0.5, true, 300 + i as u64);
    }
    // Cross-modal: the other stream has its own lengths.
    let lens = vec![1usize, 40, 577, 31];
    let other = vec![40usize, 1, 2, 577];
    check_tokens(&dev, &lens, Some(&other), 384, 0.5, true, 400);
    check_tokens(&dev, &[577; 4], Some(&[40; 4]), 128, 0.5, false, 401);
    // All kept (tau 0) and all but the first pruned (tau ~ 1).
    check_tokens(&dev, &[577, 31, 2], None, 384, 0.0, true, 402);
    check_tokens(&dev, &[577, 31, 2], None, 384, 0.999_999, true, 403);
}

fn head_weights(
    rng: &mut Rng,
    d: usize,
    d_other: Option<usize>,
    hh: usize,
    heads: usize,
) -> HeadPrunerWeights {
    let zin = d + d_other.unwrap_or(0);
    HeadPrunerWeights {
        ln_h_gamma: round_f16(&rng.normals(d, 0.2, 1.0)),
        ln_h_beta: round_f16(&rng.normals(d, 0.2, 0.0)),
        ln_hc_gamma: d_other.map(|o| round_f16(&rng.normals(o, 0.2, 1.0))),
        ln_hc_beta: d_other.map(|o| round_f16(&rng.normals(o, 0.2, 0.0))),
        w1: round_f16(&rng.normals(hh * zin, 3.0 / (zin as f32).sqrt(), 0.0)),
        b1: round_f16(&rng.normals(hh, 0.5, 0.0)),
        w2: round_f16(&rng.normals(heads * hh, 2.0 / (hh as f32).sqrt(), 0.0)),
        b2: round_f16(&rng.normals(heads, 0.5, 0.0)),
        hh,
        heads,
        d,
        d_other,
    }
}

fn check_heads(
    dev: &Device,
    lens: &[usize],
    other_lens: Option<&[usize]>,
    tau: f32,
    min_heads: usize,
    seed: u64,
) {
    let stream = dev.stream().clone();
    let mut rng = Rng::new(seed);
    let (d, dc, hh, heads) = (768usize, 768usize, 384usize, 12usize);
    let w = head_weights(&mut rng, d, other_lens.map(|_| dc), hh, heads);
    let cu = cu_of(lens);
    let total = *cu.last().unwrap() as usize;
    let batch = lens.len();
    let x = round_f16(&rng.normals(total * d, 1.0, 0.3));
    let (y, cu_y) = match other_lens {
        Some(l) => {
            let c = cu_of(l);
            let n = *c.last().unwrap() as usize;
            (round_f16(&rng.normals(n * dc, 1.0, -0.2)), c)
        }
        None => (Vec::new(), Vec::new()),
    };
    let total_y = y.len() / dc;
    let other = other_lens.map(|_| (&y[..], &cu_y[..]));
    let want = reference::pruner::head_logits(&x, &cu, other, &w, EPS);
    let want_mask = reference::pruner::head_mask(&want, heads, tau, min_heads);

    let x_d = up(dev, &x);
    let cu_d = stream.clone_htod(&cu).unwrap();
    let y_d = up(dev, if y.is_empty() { &[0.0; 8] } else { &y });
    let cuy_d = stream
        .clone_htod(if cu_y.is_empty() {
            &[0i32][..]
        } else {
            &cu_y[..]
        })
        .unwrap();
    let (lg, lb) = (up(dev, &w.ln_h_gamma), up(dev, &w.ln_h_beta));
    let lcg = w.ln_hc_gamma.as_ref().map(|v| up(dev, v));
    let lcb = w.ln_hc_beta.as_ref().map(|v| up(dev, v));
    let (w1, b1, w2, b2) = (
        up(dev, &w.w1),
        up(dev, &w.b1),
        up(dev, &w.w2),
        up(dev, &w.b2),
    );
    let mut u = stream.clone_htod(&nan_f16(total.max(1) * d)).unwrap();
    let mut uy = stream.clone_htod(&nan_f16(total_y.max(1) * dc)).unwrap();
    let mut g_x = stream.clone_htod(&vec![f32::NAN; batch * d]).unwrap();
    let mut g_y = stream.clone_htod(&vec![f32::NAN; batch * dc]).unwrap();
    let mut logits = stream.clone_htod(&vec![f32::NAN; batch * heads]).unwrap();
    let mut mask = stream.clone_htod(&vec![7u8; batch * heads]).unwrap();
    let mut pairs = stream.clone_htod(&vec![-7i32; 2 * batch * heads]).unwrap();
    let mut count = stream.clone_htod(&[-7i32]).unwrap();
    let mut counts = stream.clone_htod(&vec![-7i32; batch]).unwrap();
    let has_other = other_lens.is_some();
    let input = PrunerInput {
        batch,
        total_rows: total,
        x: &x_d,
        cu_seqlens: &cu_d,
        other: has_other.then_some(OtherStream {
            rows: &y_d,
            cu_seqlens: &cuy_d,
            total_rows: total_y,
        }),
    };
    let wd = HeadPrunerDev {
        ln_h: LnDev {
            gamma: &lg,
            beta: &lb,
        },
        ln_hc: lcg
            .as_ref()
            .zip(lcb.as_ref())
            .map(|(g, b)| LnDev { gamma: g, beta: b }),
        w1: &w1,
        b1: &b1,
        w2: &w2,
        b2: &b2,
        d,
        d_other: w.d_other,
        hh,
        heads,
        eps: EPS,
    };
    head_scores(
        dev,
        &input,
        &wd,
        HeadScoreWorkspace {
            u: &mut u,
            uy: if has_other { Some(&mut uy) } else { None },
            g_x: &mut g_x,
            g_y: if has_other { Some(&mut g_y) } else { None },
        },
        HeadScoreOutputs {
            logits: &mut logits,
            mask: &mut mask,
            pairs: &mut pairs,
            pair_count: &mut count,
            head_counts: Some(&mut counts),
            tau,
            min_heads,
        },
    )
    .unwrap();
    let what = format!(
        "lens={:?} cross={has_other} tau={tau} min_heads={min_heads}",
        &lens[..lens.len().min(8)]
    );
    let got = stream.clone_dtoh(&logits).unwrap();
    let err = rel_err(&got, &want);
    println!("head_scores {what}: rel err {err:.2e}");
    assert!(err < 1e-2, "{what}: rel err {err}");
    let got_mask = stream.clone_dtoh(&mask).unwrap();
    // Compare masks; a difference is only acceptable on a near-tie (the
    // threshold or the top-up order), and then the rest of the checks use
    // the device's mask.
    for (i, (&g, &m)) in got_mask.iter().zip(&want_mask).enumerate() {
        assert!(g <= 1, "{what}: mask {i} unwritten");
        if g != m {
            let p = sigmoid(want[i]);
            println!(
                "head_scores {what}: mask {i} differs (p = {p}, logit {})",
                want[i]
            );
            let (b, h) = (i / heads, i % heads);
            let row = &want[b * heads..(b + 1) * heads];
            let passing = row.iter().filter(|&&a| sigmoid(a) > tau).count();
            // A top-up choice between heads whose logits nearly tie.
            let near_tie = passing < min_heads
                && row
                    .iter()
                    .enumerate()
                    .any(|(j, &a)| j != h && (a - want[i]).abs() <= 1e-3 * (1.0 + a.abs()));
            assert!(
                (p - tau).abs() < 1e-3 || near_tie,
                "{what}: mask {i} differs"
            );
        }
    }
    let mut want_pairs = Vec::new();
    let mut want_counts = vec![0i32; batch];
    for b in 0..batch {
        for h in 0..heads {
            if got_mask[b * heads + h] == 1 {
                want_pairs.extend([b as i32, h as i32]);
                want_counts[b] += 1;
            }
        }
    }
    for (b, &c) in want_counts.iter().enumerate() {
        assert!(
            c as usize >= min_heads.min(heads),
            "{what}: sequence {b} has {c} heads"
        );
    }
    let n = stream.clone_dtoh(&count).unwrap()[0] as usize;
    assert_eq!(n * 2, want_pairs.len(), "{what}: pair count");
    let got_pairs = stream.clone_dtoh(&pairs).unwrap();
    assert_eq!(&got_pairs[..2 * n], &want_pairs[..], "{what}: pairs");
    assert_eq!(
        stream.clone_dtoh(&counts).unwrap(),
        want_counts,
        "{what}: head counts"
    );
}

#[test]
fn head_scores_match_reference() {
    let Some(dev) = device("head_scores_match_reference") else {
        return;
    };
    for (i, lens) in length_sets().into_iter().enumerate() {
        check_heads(&dev, &lens, None, 0.5, 1, 500 + i as u64);
    }
    check_heads(&dev, &[1, 40, 577, 31], Some(&[40, 1, 2, 577]), 0.5, 1, 600);
    // One head active: nothing passes tau = 1, the top-up adds the best one.
    check_heads(&dev, &[577, 31, 2, 1], None, 1.0, 1, 601);
    // All active.
    check_heads(&dev, &[577, 31], Some(&[31, 577]), 0.0, 1, 602);
    // Top-up to 4.
    check_heads(&dev, &[40; 8], None, 0.9, 4, 603);
    // No scored row in the whole batch (the means are zeros), and no row of
    // the other stream.
    check_heads(&dev, &[0, 0], Some(&[31, 5]), 0.5, 1, 604);
    check_heads(&dev, &[0, 0], None, 0.5, 1, 605);
    check_heads(&dev, &[40, 3], Some(&[0, 0]), 0.5, 1, 606);
}
