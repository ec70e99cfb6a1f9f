//! `compact` (kernels/compact.cu) against `smarttrim::reference::compact` and
//! `reference::pruner::keep_rows`.

use cudarc::driver::CudaSlice;
use smarttrim::ops::{compact, CompactInputs, CompactOutputs, CompactShape, KeepRuleDev};
use smarttrim::reference::{self, Packed};
use smarttrim::spec::KeepRule;

use crate::common::*;

struct Case {
    lens: Vec<usize>,
    d: usize,
}

/// Runs one compaction and checks every output against the reference.
fn check(
    dev: &smarttrim::device::Device,
    case: &Case,
    rule: KeepRule,
    keep_first: bool,
    seed: u64,
) {
    let stream = dev.stream().clone();
    let mut rng = Rng::new(seed);
    let d = case.d;
    let cu = cu_of(&case.lens);
    let total = *cu.last().unwrap() as usize;
    let batch = case.lens.len();
    let max_seqlen = *case.lens.iter().max().unwrap();
    let x = round_f16(&rng.normals(total * d, 1.0, 0.5));
    // Positions from an earlier pruning step: increasing with gaps.
    let mut orig = Vec::with_capacity(total);
    for &n in &case.lens {
        let mut p = 0i32;
        for _ in 0..n {
            orig.push(p);
            p += 1 + (rng.next_u64() % 3) as i32;
        }
    }
    // Quantised scores, so ties (broken by orig_index) really occur.
    let scores: Vec<f32> = (0..total)
        .map(|_| (rng.next_u64() % 16) as f32 * 0.25 - 2.0)
        .collect();
    let keep: Vec<bool> = match rule {
        KeepRule::Threshold { tau } => {
            // The flags the scorer would write; keep_first is applied by the
            // compaction kernel itself, so the flags here omit it.
            (0..total)
                .map(|i| reference::ops::sigmoid(scores[i]) > tau)
                .collect()
        }
        KeepRule::Budget { .. } => Vec::new(),
    };
    let want_keep = match rule {
        KeepRule::Threshold { .. } => {
            let mut k = keep.clone();
            if keep_first {
                for b in 0..batch {
                    if case.lens[b] > 0 {
                        k[cu[b] as usize] = true;
                    }
                }
            }
            k
        }
        KeepRule::Budget { .. } => {
            reference::pruner::keep_rows(&scores, &cu, &orig, &rule, keep_first)
        }
    };
    let packed = Packed {
        rows: x.clone(),
        d,
        cu_seqlens: cu.clone(),
        orig_index: orig.clone(),
    };
    let (want, want_counts) = reference::compact(&packed, &want_keep);

    let x_d = stream.clone_htod(&to_f16(&x)).unwrap();
    let cu_d = stream.clone_htod(&cu).unwrap();
    let oi_d = stream.clone_htod(&orig).unwrap();
    let flags: Vec<u8> = keep.iter().map(|&k| k as u8).collect();
    let flags_d: CudaSlice<u8> = stream
        .clone_htod(&if flags.is_empty() {
            vec![0u8; total]
        } else {
            flags
        })
        .unwrap();
    let scores_d = stream.clone_htod(&scores).unwrap();
    let mut ox = stream.clone_htod(&nan_f16(total * d)).unwrap();
    let mut ocu = stream.clone_htod(&vec![-7i32; batch + 1]).unwrap();
    let mut ooi = stream.clone_htod(&vec![-7i32; total]).unwrap();
    // The counts go to a slot in the middle of a larger statistics buffer.
    let mut stats = stream.clone_htod(&vec![-7i32; 3 * batch]).unwrap();
    let mut scratch = stream.clone_htod(&vec![-7i32; total]).unwrap();
    let mut new_total = stream.clone_htod(&[-7i32]).unwrap();
    let mut keep_out = stream.clone_htod(&vec![7u8; total]).unwrap();
    {
        let mut slot = stats.slice_mut(batch..2 * batch);
        let rule_dev = match rule {
            KeepRule::Threshold { .. } => KeepRuleDev::Flags(&flags_d),
            KeepRule::Budget { rho } => KeepRuleDev::Budget {
                scores: &scores_d,
                rho,
            },
        };
        compact(
            dev,
            CompactShape {
                batch,
                total_rows: total,
                max_seqlen,
                d,
            },
            rule_dev,
            keep_first,
            CompactInputs {
                rows: &x_d,
                cu_seqlens: &cu_d,
                orig_index: &oi_d,
            },
            CompactOutputs {
                rows: &mut ox,
                cu_seqlens: &mut ocu,
                orig_index: &mut ooi,
                kept_counts: &mut slot,
                scratch: &mut scratch,
                new_total: Some(&mut new_total),
                keep_out: Some(&mut keep_out),
            },
        )
        .unwrap();
    }
    let what = format!(
        "lens={:?} d={d} rule={rule:?} keep_first={keep_first}",
        &case.lens[..case.lens.len().min(8)]
    );
    let got_keep: Vec<bool> = stream
        .clone_dtoh(&keep_out)
        .unwrap()
        .iter()
        .map(|&k| k == 1)
        .collect();
    assert_eq!(got_keep, want_keep, "keep decisions, {what}");
    let got_cu = stream.clone_dtoh(&ocu).unwrap();
    assert_eq!(got_cu, want.cu_seqlens, "cu_seqlens, {what}");
    let new_n = *want.cu_seqlens.last().unwrap() as usize;
    assert_eq!(
        stream.clone_dtoh(&new_total).unwrap()[0] as usize,
        new_n,
        "new total, {what}"
    );
    let got_stats = stream.clone_dtoh(&stats).unwrap();
    assert_eq!(
        &got_stats[batch..2 * batch],
        &want_counts[..],
        "kept counts, {what}"
    );
    assert!(
        got_stats[..batch]
            .iter()
            .chain(&got_stats[2 * batch..])
            .all(|&v| v == -7),
        "stats outside the slot touched, {what}"
    );
    let got_oi = stream.clone_dtoh(&ooi).unwrap();
    assert_eq!(&got_oi[..new_n], &want.orig_index[..], "orig_index, {what}");
    let got_rows = from_f16(&stream.clone_dtoh(&ox).unwrap());
    // A copy: bit-exact, and every kept row written (no NaN left).
    assert!(
        got_rows[..new_n * d]
            .iter()
            .zip(&want.rows)
            .all(|(a, b)| a == b),
        "rows, {what}"
    );
    assert!(
        got_rows[new_n * d..].iter().all(|v| v.is_nan()),
        "rows past the new total written, {what}"
    );
    println!("compact {what}: kept {new_n} of {total}");
}

#[test]
fn compact_flags_matches_reference() {
    let Some(dev) = device("compact_flags_matches_reference") else {
        return;
    };
    for (i, lens) in length_sets().into_iter().enumerate() {
        for d in [64usize, 768] {
            let case = Case {
                lens: lens.clone(),
                d,
            };
            // Random flags, all kept (tau -> everything passes), all but
            // the first pruned (nothing passes, keep_first keeps row 0).
            for (tau, kf) in [(0.5f32, true), (0.5, false), (0.0, true), (1.0, true)] {
                check(&dev, &case, KeepRule::Threshold { tau }, kf, 100 + i as u64);
            }
        }
    }
}

#[test]
fn compact_budget_matches_reference() {
    let Some(dev) = device("compact_budget_matches_reference") else {
        return;
    };
    for (i, lens) in length_sets().into_iter().enumerate() {
        let case = Case { lens, d: 128 };
        for rho in [1.0f32, 0.9, 0.5, 0.2, 1e-4] {
            for kf in [true, false] {
                check(&dev, &case, KeepRule::Budget { rho }, kf, 200 + i as u64);
            }
        }
    }
}

/// `seq_positions`: every row's position within its sequence, for the
/// length sets of the testing rules (including empty sequences), with the
/// output poisoned first and a loose host bound on the longest sequence.
#[test]
fn seq_positions_matches_lengths() {
    let Some(dev) = device("seq_positions_matches_lengths") else {
        return;
    };
    let stream = dev.stream().clone();
    for lens in length_sets() {
        let cu = cu_of(&lens);
        let total = *cu.last().unwrap() as usize;
        let batch = lens.len();
        let max_seqlen = lens.iter().copied().max().unwrap_or(0);
        let cu_d = stream.clone_htod(&cu).unwrap();
        let mut orig_d = stream.clone_htod(&vec![-7i32; total.max(1)]).unwrap();
        smarttrim::ops::seq_positions(
            &dev,
            batch,
            // A host bound above the true longest, as a pass gives it.
            (max_seqlen + 3).min(total),
            total,
            &cu_d,
            &mut orig_d,
        )
        .unwrap_or_else(|e| panic!("lengths {lens:?}: {e}"));
        let got = stream.clone_dtoh(&orig_d).unwrap();
        let want: Vec<i32> = lens.iter().flat_map(|&n| 0..n as i32).collect();
        assert_eq!(&got[..total], &want[..], "lengths {lens:?}");
    }
}

/// Defence in depth: device `cu_seqlens` that disagree with the host bounds
/// (a caller's bug: past the rows, negative, decreasing) make the compaction
/// and `seq_positions` kernels clamp, not write out of bounds. Every output
/// buffer has a guard region past its end that must stay as filled (and the
/// AddressSanitizer run of the emulated device sees any access past the
/// exact-size buffers).
#[test]
fn inconsistent_cu_seqlens_stay_in_bounds() {
    let Some(dev) = device("inconsistent_cu_seqlens_stay_in_bounds") else {
        return;
    };
    let stream = dev.stream().clone();
    let (batch, total, max_seqlen, d) = (2usize, 24usize, 16usize, 64usize);
    const GUARD: usize = 64;
    let mut rng = Rng::new(77);
    let x = round_f16(&rng.normals(total * d, 1.0, 0.0));
    let x_d = stream.clone_htod(&to_f16(&x)).unwrap();
    let oi_d = stream
        .clone_htod(&(0..total as i32).collect::<Vec<_>>())
        .unwrap();
    let flags_d = stream.clone_htod(&vec![1u8; total]).unwrap();
    let scores_d = stream.clone_htod(&rng.normals(total, 1.0, 0.0)).unwrap();
    for bad in [
        vec![0i32, 10, 1_000_000],
        vec![0, -50, 20],
        vec![0, 20, 5],
        vec![30, 40, 50],
        vec![-1_000_000, 0, i32::MAX],
    ] {
        let cu_d = stream.clone_htod(&bad).unwrap();
        for budget in [false, true] {
            let mut ox = stream
                .clone_htod(&vec![f16_guard(); total * d + GUARD])
                .unwrap();
            let mut ocu = stream.clone_htod(&vec![-7i32; batch + 1 + GUARD]).unwrap();
            let mut ooi = stream.clone_htod(&vec![-7i32; total + GUARD]).unwrap();
            let mut counts = stream.clone_htod(&vec![-7i32; batch + GUARD]).unwrap();
            let mut scratch = stream.clone_htod(&vec![-7i32; total + GUARD]).unwrap();
            let mut keep_out = stream.clone_htod(&vec![7u8; total + GUARD]).unwrap();
            let rule = if budget {
                KeepRuleDev::Budget {
                    scores: &scores_d,
                    rho: 0.5,
                }
            } else {
                KeepRuleDev::Flags(&flags_d)
            };
            compact(
                &dev,
                CompactShape {
                    batch,
                    total_rows: total,
                    max_seqlen,
                    d,
                },
                rule,
                true,
                CompactInputs {
                    rows: &x_d,
                    cu_seqlens: &cu_d,
                    orig_index: &oi_d,
                },
                CompactOutputs {
                    rows: &mut ox.slice_mut(0..total * d),
                    cu_seqlens: &mut ocu.slice_mut(0..batch + 1),
                    orig_index: &mut ooi.slice_mut(0..total),
                    kept_counts: &mut counts.slice_mut(0..batch),
                    scratch: &mut scratch.slice_mut(0..total),
                    new_total: None,
                    keep_out: Some(&mut keep_out.slice_mut(0..total)),
                },
            )
            .unwrap();
            let mut pos = stream.clone_htod(&vec![-7i32; total + GUARD]).unwrap();
            smarttrim::ops::seq_positions(
                &dev,
                batch,
                max_seqlen,
                total,
                &cu_d,
                &mut pos.slice_mut(0..total),
            )
            .unwrap();
            let what = format!("cu_seqlens {bad:?}, budget {budget}");
            let guard_f16 = stream.clone_dtoh(&ox).unwrap();
            assert!(
                guard_f16[total * d..]
                    .iter()
                    .all(|v| v.to_bits() == f16_guard().to_bits()),
                "{what}: rows written past the buffer"
            );
            for (name, buf, n) in [
                ("cu_seqlens", &ocu, batch + 1),
                ("orig_index", &ooi, total),
                ("kept counts", &counts, batch),
                ("scratch", &scratch, total),
                ("positions", &pos, total),
            ] {
                let v = stream.clone_dtoh(buf).unwrap();
                assert!(
                    v[n..].iter().all(|&x| x == -7),
                    "{what}: {name} written past the buffer"
                );
            }
            let k = stream.clone_dtoh(&keep_out).unwrap();
            assert!(
                k[total..].iter().all(|&x| x == 7),
                "{what}: keep flags past the buffer"
            );
        }
    }
}

fn f16_guard() -> half::f16 {
    half::f16::from_f32(-12345.0)
}
