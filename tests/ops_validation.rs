//! CPU-side checks that always run: the kernel wrappers' validation rejects
//! inconsistent shapes before any device use, and the embedded kernels have
//! no register spills and export the expected entry points.

use smarttrim::kernels;
use smarttrim::ops::compact::{validate_compact, CompactLens, CompactShape};
use smarttrim::ops::elementwise::{validate_cols, validate_pool, ColsShape, PoolShape};
use smarttrim::ops::score::{
    validate_head_scores, validate_token_scores, HeadScoreDims, HeadScoreLens, TokenScoreDims,
    TokenScoreLens,
};
use smarttrim::Error;

fn token_ok() -> (TokenScoreDims, TokenScoreLens) {
    let (b, n, d, hs, n_y, dc) = (2usize, 100usize, 768usize, 384usize, 50usize, 64usize);
    (
        TokenScoreDims {
            batch: b,
            total_rows: n,
            other_total_rows: Some(n_y),
            d,
            d_other: Some(dc),
            hs,
            eps: 1e-6,
            tau: 0.5,
        },
        TokenScoreLens {
            x: n * d,
            cu_seqlens: b + 1,
            y: Some(n_y * dc),
            y_cu_seqlens: Some(b + 1),
            ln_p: (d, d),
            ln_c: Some((dc, dc)),
            w1x: hs * d,
            w1s: hs * d,
            w1c: Some(hs * dc),
            b1: hs,
            w2: hs,
            u: n * d,
            uy: Some(n_y * dc),
            g_self: b * d,
            g_cross: Some(b * dc),
            context: b * hs,
            partial: Some((hs / 64) * n),
            scores: n,
            flags: Some(n),
        },
    )
}

#[test]
fn token_scores_validation() {
    let (dims, lens) = token_ok();
    validate_token_scores(&dims, &lens).unwrap();
    // Single stream.
    let single = TokenScoreDims {
        other_total_rows: None,
        d_other: None,
        ..dims
    };
    let single_lens = TokenScoreLens {
        y: None,
        y_cu_seqlens: None,
        ln_c: None,
        w1c: None,
        uy: None,
        g_cross: None,
        ..lens
    };
    validate_token_scores(&single, &single_lens).unwrap();
    let bad_dims = [
        TokenScoreDims { d: 760, ..dims },
        TokenScoreDims { d: 96, ..dims },
        TokenScoreDims { hs: 100, ..dims },
        TokenScoreDims { hs: 0, ..dims },
        TokenScoreDims { batch: 0, ..dims },
        TokenScoreDims { eps: 0.0, ..dims },
        TokenScoreDims {
            tau: f32::NAN,
            ..dims
        },
        TokenScoreDims {
            d_other: Some(60),
            ..dims
        },
        TokenScoreDims {
            d_other: None,
            ..dims
        },
    ];
    for d in bad_dims {
        assert!(validate_token_scores(&d, &lens).is_err(), "{d:?}");
    }
    assert!(matches!(
        validate_token_scores(&TokenScoreDims { hs: 100, ..dims }, &lens),
        Err(Error::Unsupported { .. })
    ));
    let bad_lens = [
        TokenScoreLens {
            cu_seqlens: 2,
            ..lens
        },
        TokenScoreLens {
            x: lens.x - 1,
            ..lens
        },
        TokenScoreLens {
            w1x: lens.w1x + 1,
            ..lens
        },
        TokenScoreLens { w1s: 5, ..lens },
        TokenScoreLens {
            w1c: Some(5),
            ..lens
        },
        TokenScoreLens { w1c: None, ..lens },
        TokenScoreLens { b1: 383, ..lens },
        TokenScoreLens { w2: 385, ..lens },
        TokenScoreLens {
            ln_p: (768, 767),
            ..lens
        },
        TokenScoreLens { ln_c: None, ..lens },
        TokenScoreLens {
            y: Some(10),
            ..lens
        },
        TokenScoreLens {
            y_cu_seqlens: Some(4),
            ..lens
        },
        TokenScoreLens { u: 10, ..lens },
        TokenScoreLens { uy: None, ..lens },
        TokenScoreLens { g_self: 10, ..lens },
        TokenScoreLens {
            g_cross: None,
            ..lens
        },
        TokenScoreLens {
            context: 10,
            ..lens
        },
        TokenScoreLens { scores: 99, ..lens },
        TokenScoreLens {
            flags: Some(99),
            ..lens
        },
    ];
    for l in bad_lens {
        assert!(validate_token_scores(&dims, &l).is_err(), "{l:?}");
    }
}

#[test]
fn head_scores_validation() {
    let (b, n, d, hh, h) = (3usize, 40usize, 768usize, 192usize, 12usize);
    let dims = HeadScoreDims {
        batch: b,
        total_rows: n,
        other_total_rows: None,
        d,
        d_other: None,
        hh,
        heads: h,
        eps: 1e-12,
        tau: 0.5,
    };
    let lens = HeadScoreLens {
        x: n * d,
        cu_seqlens: b + 1,
        y: None,
        y_cu_seqlens: None,
        ln_h: (d, d),
        ln_hc: None,
        w1: hh * d,
        b1: hh,
        w2: h * hh,
        b2: h,
        u: n * d,
        uy: None,
        g_x: b * d,
        g_y: None,
        logits: b * h,
        mask: b * h,
        pairs: 2 * b * h,
        pair_count: 1,
        head_counts: Some(b),
    };
    validate_head_scores(&dims, &lens).unwrap();
    for dd in [
        HeadScoreDims { heads: 65, ..dims },
        HeadScoreDims { heads: 0, ..dims },
        HeadScoreDims { hh: 100, ..dims },
        HeadScoreDims { d: 4100, ..dims },
        HeadScoreDims { d: 12, ..dims },
        HeadScoreDims {
            other_total_rows: Some(5),
            ..dims
        },
    ] {
        assert!(validate_head_scores(&dd, &lens).is_err(), "{dd:?}");
    }
    for l in [
        HeadScoreLens {
            cu_seqlens: 3,
            ..lens
        },
        HeadScoreLens {
            w1: hh * d + 1,
            ..lens
        },
        HeadScoreLens { w2: 1, ..lens },
        HeadScoreLens { b2: 11, ..lens },
        HeadScoreLens {
            pairs: b * h,
            ..lens
        },
        HeadScoreLens {
            pair_count: 0,
            ..lens
        },
        HeadScoreLens { mask: 5, ..lens },
        HeadScoreLens {
            head_counts: Some(2),
            ..lens
        },
    ] {
        assert!(validate_head_scores(&dims, &l).is_err(), "{l:?}");
    }
}

#[test]
fn compact_validation() {
    let shape = CompactShape {
        batch: 3,
        total_rows: 50,
        max_seqlen: 30,
        d: 16,
    };
    let lens = CompactLens {
        rows: 800,
        cu_seqlens: 4,
        orig_index: 50,
        rule: 50,
        out_rows: 800,
        out_cu_seqlens: 4,
        out_orig_index: 50,
        kept_counts: 3,
        scratch: 50,
        new_total: None,
        keep_out: None,
    };
    validate_compact(shape, Some(0.5), &lens).unwrap();
    assert!(validate_compact(
        shape,
        None,
        &CompactLens {
            cu_seqlens: 3,
            ..lens
        }
    )
    .is_err());
    assert!(validate_compact(CompactShape { d: 12, ..shape }, None, &lens).is_err());
    assert!(validate_compact(
        shape,
        None,
        &CompactLens {
            out_rows: 799,
            ..lens
        }
    )
    .is_err());
}

#[test]
fn seq_positions_validation() {
    use smarttrim::ops::validate_seq_positions;
    validate_seq_positions(2, 5, 8, 3, 8).unwrap();
    validate_seq_positions(1, 0, 0, 2, 0).unwrap();
    for (args, needle) in [
        ((0, 1, 1, 1, 1), "batch"),
        ((2, 5, 8, 2, 8), "cu_seqlens"),
        ((2, 5, 8, 3, 7), "orig_index"),
        ((2, 9, 8, 3, 8), "max_seqlen"),
    ] {
        let (b, m, t, c, o) = args;
        let e = validate_seq_positions(b, m, t, c, o).unwrap_err();
        assert!(e.to_string().contains(needle), "{args:?}: {e}");
    }
}

#[test]
fn elementwise_validation() {
    validate_cols("t", ColsShape { rows: 4, n: 16 }, 64, 16, Some(64), Some(1)).unwrap();
    assert!(validate_cols("t", ColsShape { rows: 4, n: 12 }, 48, 12, None, None).is_err());
    assert!(validate_cols("t", ColsShape { rows: 4, n: 16 }, 63, 16, None, None).is_err());
    assert!(validate_cols("t", ColsShape { rows: 4, n: 16 }, 64, 15, None, None).is_err());
    assert!(validate_cols("t", ColsShape { rows: 4, n: 16 }, 64, 16, Some(10), None).is_err());
    assert!(validate_cols("t", ColsShape { rows: 4, n: 16 }, 64, 16, None, Some(0)).is_err());
    let p = PoolShape {
        batch: 2,
        total_rows: 10,
        d: 8,
    };
    validate_pool("t", p, 80, 3, 16).unwrap();
    assert!(validate_pool("t", p, 80, 2, 16).is_err());
    assert!(validate_pool("t", p, 79, 3, 16).is_err());
    assert!(validate_pool("t", p, 80, 3, 15).is_err());
    assert!(validate_pool("t", PoolShape { d: 9, ..p }, 90, 3, 18).is_err());
}

#[test]
fn kernels_have_no_spills() {
    if !kernels::BUILT {
        eprintln!(
            "skipped kernels_have_no_spills: {}",
            kernels::NOT_BUILT_REASON
        );
        return;
    }
    let all = kernels::all_resources();
    assert!(!all.is_empty(), "no ptxas reports embedded");
    for (module, target, r) in &all {
        println!(
            "{module}/{target} {}: {} regs, {} B smem, {} B stack, spills {}/{}",
            r.name,
            r.registers,
            r.shared_bytes,
            r.stack_frame_bytes,
            r.spill_store_bytes,
            r.spill_load_bytes
        );
        assert_eq!(
            (r.spill_store_bytes, r.spill_load_bytes),
            (0, 0),
            "{module}/{target} {} spills registers",
            r.name
        );
    }
}

#[test]
fn ptx_modules_export_expected_entries() {
    if !kernels::BUILT {
        eprintln!(
            "skipped ptx_modules_export_expected_entries: {}",
            kernels::NOT_BUILT_REASON
        );
        return;
    }
    let expected: &[(&str, &[&str])] = &[
        (
            "elementwise",
            &[
                "layernorm_f16",
                "bias_gelu_f16",
                "bias_residual_f16",
                "mean_pool_f16",
                "first_token_f16",
            ],
        ),
        (
            "compact",
            &[
                "compact_plan_flags",
                "compact_plan_budget",
                "compact_scan",
                "compact_gather_f16",
                "seq_positions_i32",
            ],
        ),
        (
            "score",
            &[
                "score_context_f16",
                "score_rows_f16",
                "head_logits_f16",
                "head_pairs",
                "score_dot_f16",
                "score_finalize",
            ],
        ),
    ];
    for (module, names) in expected {
        let variants: Vec<_> = kernels::MODULES
            .iter()
            .filter(|m| m.name == *module)
            .collect();
        assert!(!variants.is_empty(), "module {module} not embedded");
        for m in variants {
            let entries = kernels::ptx_entries(m.ptx);
            for n in *names {
                assert!(
                    entries.iter().any(|e| e == n),
                    "{module}/{} lacks {n}: {entries:?}",
                    m.target
                );
            }
            let reported: Vec<String> = kernels::parse_ptxas_report(m.ptxas_report)
                .into_iter()
                .map(|r| r.name)
                .collect();
            for n in *names {
                assert!(
                    reported.iter().any(|e| e == n),
                    "{module}/{}: no ptxas report for {n}",
                    m.target
                );
            }
        }
    }
}

#[test]
fn score_split_heuristic() {
    use smarttrim::ops::score::score_splits;
    // Batch 1 of 577 rows (10 tiles), Hs 384 (6 slices), 132 SMs: all 6.
    assert_eq!(score_splits(10, 384, 132), 6);
    // Batch 32 (289 tiles): 528 / 289 -> 2 (divides 6).
    assert_eq!(score_splits(289, 384, 132), 2);
    // Plenty of tiles: no split.
    assert_eq!(score_splits(5000, 384, 132), 1);
    // Want 4 of 6 slices -> the largest divisor below: 3.
    assert_eq!(score_splits(130, 384, 132), 3);
    assert_eq!(score_splits(1, 64, 132), 1);
}
