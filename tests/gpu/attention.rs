//! Sparse-head ragged attention (`kernels/attention.cu`) against the CPU
//! reference (`smarttrim::reference::attention::attention`, f32) on the same
//! f16-rounded inputs: self- and cross-attention, dh 64,
//! 32 and 16, ragged batches of 8 mixing 1..1025 query and 1..1300 key rows, all
//! heads / 9-6-3 heads / one head active, NaN-poisoned outputs, inactive
//! heads exactly zero. Plus an always-running check that no attention kernel
//! spills registers.

use half::f16;
use smarttrim::ops::{
    build_active_heads, cross_attention, self_attention, AttentionShape, DenseAttentionBaseline,
    HeadSelection,
};

use smarttrim::reference::attention::attention as reference_attention;

use crate::common::*;

fn cu_of(lens: &[usize]) -> Vec<i32> {
    let mut cu = vec![0i32];
    for &l in lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    cu
}

/// Columns `c0..c0 + width` of every row of a `[rows, stride]` matrix.
fn columns(x: &[f32], stride: usize, c0: usize, width: usize) -> Vec<f32> {
    x.chunks(stride)
        .flat_map(|r| r[c0..c0 + width].iter().copied())
        .collect()
}

/// Head masks to try for `batch` sequences of `heads` heads: all active;
/// per-sequence 9 / 6 / 3 (cycling, different heads per sequence); one head.
fn masks(batch: usize, heads: usize) -> Vec<(&'static str, Vec<u8>)> {
    let all = vec![1u8; batch * heads];
    let mut mixed = vec![0u8; batch * heads];
    for b in 0..batch {
        let keep = [9usize, 6, 3][b % 3].min(heads);
        for i in 0..keep {
            // Spread the kept heads: head (b + 5 i) mod H, distinct for H = 12
            // when gcd(5, 12) = 1.
            mixed[b * heads + (b + 5 * i) % heads] = 1;
        }
    }
    let mut one = vec![0u8; batch * heads];
    for b in 0..batch {
        one[b * heads + (3 * b + 1) % heads] = 1;
    }
    vec![
        ("all heads", all),
        ("9/6/3 heads", mixed),
        ("one head", one),
    ]
}

/// The reference with inactive heads zeroed (the active heads' values do not
/// depend on the mask).
fn apply_mask(full: &[f32], mask: &[u8], cu_q: &[i32], heads: usize, dh: usize) -> Vec<f32> {
    let d = heads * dh;
    let mut out = full.to_vec();
    for b in 0..cu_q.len() - 1 {
        for h in 0..heads {
            if mask[b * heads + h] == 0 {
                for r in cu_q[b] as usize..cu_q[b + 1] as usize {
                    out[r * d + h * dh..r * d + (h + 1) * dh].fill(0.0);
                }
            }
        }
    }
    out
}

fn check_output(
    what: &str,
    out: &[f32],
    want: &[f32],
    mask: &[u8],
    cu_q: &[i32],
    heads: usize,
    dh: usize,
) {
    let d = heads * dh;
    for b in 0..cu_q.len() - 1 {
        for h in 0..heads {
            if mask[b * heads + h] != 0 {
                continue;
            }
            for r in cu_q[b] as usize..cu_q[b + 1] as usize {
                let s = &out[r * d + h * dh..r * d + (h + 1) * dh];
                assert!(
                    s.iter().all(|&x| x.to_bits() == 0),
                    "{what}: inactive head {h} of sequence {b}, row {r} is not exactly +0"
                );
            }
        }
    }
    let err = rel_err(out, want);
    println!("attention {what}: rel err {err:.2e}");
    assert!(err < 1e-2, "{what}: rel err {err:.3e} >= 1e-2");
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    SelfAttn,
    Cross,
}

fn run_family(test: &str, kind: Kind, dh: usize, q_lens: &[usize], k_lens: &[usize], seed: u64) {
    let Some(dev) = device(test) else {
        return;
    };
    let stream = dev.stream().clone();
    let heads = 12;
    let d = heads * dh;
    let batch = q_lens.len();
    let k_lens = if kind == Kind::SelfAttn {
        q_lens
    } else {
        k_lens
    };
    let (cu_q, cu_k) = (cu_of(q_lens), cu_of(k_lens));
    let (nq, nk) = (
        *cu_q.last().unwrap() as usize,
        *cu_k.last().unwrap() as usize,
    );
    let mut rng = Rng::new(seed);
    // Operands: packed qkv [nq, 3D] (self) or q [nq, D] + kv [nk, 2D] (cross),
    // rounded through f16 so the reference sees the device's inputs.
    let (qmat, kvmat) = match kind {
        Kind::SelfAttn => (round_f16(&rng.normals(nq * 3 * d, 1.0, 0.1)), Vec::new()),
        Kind::Cross => (
            round_f16(&rng.normals(nq * d, 1.0, 0.1)),
            round_f16(&rng.normals(nk * 2 * d, 1.0, -0.1)),
        ),
    };
    let (q, k, v) = match kind {
        Kind::SelfAttn => (
            columns(&qmat, 3 * d, 0, d),
            columns(&qmat, 3 * d, d, d),
            columns(&qmat, 3 * d, 2 * d, d),
        ),
        Kind::Cross => (
            qmat.clone(),
            columns(&kvmat, 2 * d, 0, d),
            columns(&kvmat, 2 * d, d, d),
        ),
    };
    let full = reference_attention(&q, &k, &v, &cu_q, &cu_k, heads, dh, None);

    let shape = AttentionShape {
        batch,
        heads,
        head_dim: dh,
        rows_q: nq,
        rows_k: if kind == Kind::SelfAttn { nq } else { nk },
        max_seqlen_q: *q_lens.iter().max().unwrap(),
        max_seqlen_k: if kind == Kind::SelfAttn {
            *q_lens.iter().max().unwrap()
        } else {
            *k_lens.iter().max().unwrap()
        },
    };
    let q_d = stream.clone_htod(&to_f16(&qmat)).unwrap();
    // Self-attention has no kv operand; a one-element stand-in keeps the
    // types uniform (no zero-length allocation).
    let kv_host = if kvmat.is_empty() {
        vec![0f32]
    } else {
        kvmat.clone()
    };
    let kv_d = stream.clone_htod(&to_f16(&kv_host)).unwrap();
    let cq_d = stream.clone_htod(&cu_q).unwrap();
    let ck_d = stream.clone_htod(&cu_k).unwrap();
    for (label, mask) in masks(batch, heads) {
        let mask_d = stream.clone_htod(&mask).unwrap();
        // Poison the list too: only the first *n_active pairs may be read.
        let mut act_d = stream.clone_htod(&vec![-1i32; 2 * batch * heads]).unwrap();
        let mut n_d = stream.clone_htod(&[-7i32]).unwrap();
        build_active_heads(&dev, batch, heads, &mask_d, &mut act_d, &mut n_d).unwrap();
        let n_active: Vec<i32> = stream.clone_dtoh(&n_d).unwrap();
        assert_eq!(
            n_active[0] as usize,
            mask.iter().filter(|&&m| m != 0).count(),
            "active count"
        );
        let act: Vec<i32> = stream.clone_dtoh(&act_d).unwrap();
        let want_pairs: Vec<i32> = (0..batch * heads)
            .filter(|&i| mask[i] != 0)
            .flat_map(|i| [(i / heads) as i32, (i % heads) as i32])
            .collect();
        assert_eq!(&act[..want_pairs.len()], &want_pairs[..], "active list");

        let mut out_d = stream.clone_htod(&nan_f16(nq * d)).unwrap();
        let sel = HeadSelection {
            active: &act_d,
            n_active: &n_d,
            head_mask: Some(&mask_d),
        };
        match kind {
            Kind::SelfAttn => self_attention(&dev, &shape, &q_d, &cq_d, &sel, &mut out_d).unwrap(),
            Kind::Cross => {
                cross_attention(&dev, &shape, &q_d, &kv_d, &cq_d, &ck_d, &sel, &mut out_d).unwrap()
            }
        }
        let out = from_f16(&stream.clone_dtoh(&out_d).unwrap());
        let want = apply_mask(&full, &mask, &cu_q, heads, dh);
        let what = format!(
            "{} dh={dh} q={q_lens:?} k={k_lens:?} {label}",
            if kind == Kind::SelfAttn {
                "self"
            } else {
                "cross"
            }
        );
        check_output(&what, &out, &want, &mask, &cu_q, heads, dh);
    }
}

const Q_LENS: [usize; 8] = [1, 2, 31, 40, 577, 1024, 1025, 40];
const K_LENS: [usize; 8] = [577, 1300, 1, 2, 65, 64, 1023, 129];

#[test]
fn attention_self_d64() {
    run_family("attention_self_d64", Kind::SelfAttn, 64, &Q_LENS, &[], 21);
}

#[test]
fn attention_self_d32() {
    run_family("attention_self_d32", Kind::SelfAttn, 32, &Q_LENS, &[], 22);
}

#[test]
fn attention_self_d16() {
    run_family("attention_self_d16", Kind::SelfAttn, 16, &Q_LENS, &[], 26);
}

#[test]
fn attention_cross_d16() {
    run_family("attention_cross_d16", Kind::Cross, 16, &Q_LENS, &K_LENS, 27);
}

#[test]
fn attention_cross_d64() {
    run_family("attention_cross_d64", Kind::Cross, 64, &Q_LENS, &K_LENS, 23);
}

#[test]
fn attention_cross_d32() {
    run_family("attention_cross_d32", Kind::Cross, 32, &Q_LENS, &K_LENS, 24);
}

/// Short batches: every query length with one key, and one query with every
/// tile-boundary key length (63, 64, 65, 127, 128, 129).
#[test]
fn attention_cross_edges() {
    run_family(
        "attention_cross_edges",
        Kind::Cross,
        64,
        &[1, 1, 1, 1, 1, 64, 65, 63],
        &[63, 64, 65, 127, 128, 129, 1, 1],
        25,
    );
}

/// The unfused dense baseline the benches time must compute the same thing.
#[test]
fn dense_baseline_matches_cpu() {
    let Some(dev) = device("dense_baseline_matches_cpu") else {
        return;
    };
    let stream = dev.stream().clone();
    let (heads, dh) = (12, 64);
    let d = heads * dh;
    let lens = [40usize, 31, 40, 1];
    let cu = cu_of(&lens);
    let n = *cu.last().unwrap() as usize;
    let mut rng = Rng::new(31);
    let qkv = round_f16(&rng.normals(n * 3 * d, 1.0, 0.0));
    let (q, k, v) = (
        columns(&qkv, 3 * d, 0, d),
        columns(&qkv, 3 * d, d, d),
        columns(&qkv, 3 * d, 2 * d, d),
    );
    let want = reference_attention(&q, &k, &v, &cu, &cu, heads, dh, None);
    let shape = AttentionShape {
        batch: lens.len(),
        heads,
        head_dim: dh,
        rows_q: n,
        rows_k: n,
        max_seqlen_q: 40,
        max_seqlen_k: 40,
    };
    let mut base = DenseAttentionBaseline::new(&dev, shape).unwrap();
    let qkv_d = stream.clone_htod(&to_f16(&qkv)).unwrap();
    let cu_d = stream.clone_htod(&cu).unwrap();
    let mut out_d = stream.clone_htod(&nan_f16(n * d)).unwrap();
    base.self_attention(&dev, &qkv_d, &cu_d, &mut out_d)
        .unwrap();
    let out: Vec<f16> = stream.clone_dtoh(&out_d).unwrap();
    let err = rel_err(&from_f16(&out), &want);
    println!("dense baseline: rel err {err:.2e}");
    assert!(err < 1e-2, "dense baseline rel err {err}");
}

/// Runs without a GPU: the ptxas reports embedded in the build show no
/// register spills (or stack) in any attention kernel.
#[test]
fn attention_kernels_do_not_spill() {
    if smarttrim::kernels::ensure_built().is_err() {
        eprintln!("skipped attention_kernels_do_not_spill: kernels not built");
        return;
    }
    let mut seen = 0;
    for (module, target, r) in smarttrim::kernels::all_resources() {
        if module != "attention" {
            continue;
        }
        seen += 1;
        println!(
            "{module}/{target} {}: {} registers, {} B smem, spills {}/{} B",
            r.name, r.registers, r.shared_bytes, r.spill_store_bytes, r.spill_load_bytes
        );
        assert_eq!(
            (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes),
            (0, 0, 0),
            "{module}/{target} {} spills",
            r.name
        );
    }
    assert!(
        seen >= 7,
        "expected the attention kernels in the ptxas reports"
    );
}
