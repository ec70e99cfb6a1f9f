//! CPU-side checks that always run: the kernel wrappers' validation rejects
//! inconsistent shapes before any device use, and the embedded kernels have
//! no register spills and export the expected entry points.

use smarttrim::kernels;
use smarttrim::ops::compact::{validate_compact, CompactLens, CompactShape};
use smarttrim::ops::elementwise::{validate_cols, validate_pool, ColsShape, PoolShape};
use smarttrim::ops::embed::{
    check_bert_ids, validate_vit_assemble, validate_vit_embed, validate_vit_patchify,
    BertEmbedLens, BertEmbedShape, VitAssembleLens, VitEmbedLens, VitEmbedShape,
};
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
                "bias_act_f16",
                "copy_cols_f16",
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
            "embed",
            &["bert_embed_f16", "vit_patchify_f16", "vit_assemble_f16"],
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

fn bert_ok() -> (BertEmbedShape, BertEmbedLens) {
    let (b, t, d, v, mp, tv) = (3usize, 74usize, 384usize, 1000usize, 512usize, 2usize);
    (
        BertEmbedShape {
            batch: b,
            total_rows: t,
            d,
            vocab_size: v,
            max_positions: mp,
            type_vocab_size: tv,
            position_offset: 0,
            eps: 1e-12,
        },
        BertEmbedLens {
            ids: t,
            type_ids: Some(t),
            cu_seqlens: b + 1,
            word: v * d,
            position: mp * d,
            token_type: tv * d,
            gamma: d,
            beta: d,
            out: t * d,
            orig_index: t,
        },
    )
}

/// The `op` and message of an `InvalidArgument`, or a panic.
fn invalid(r: smarttrim::Result<()>) -> (&'static str, String) {
    match r {
        Err(Error::InvalidArgument { op, message }) => (op, message),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bert_embed_validation() {
    let (shape, lens) = bert_ok();
    shape.validate(&lens).unwrap();
    shape
        .validate(&BertEmbedLens {
            type_ids: None,
            ..lens
        })
        .unwrap();
    // Longer id/output buffers (workspace regions) are fine.
    shape
        .validate(&BertEmbedLens {
            ids: 100,
            out: 100 * 384,
            orig_index: 100,
            ..lens
        })
        .unwrap();
    // Empty pass: valid, nothing launched.
    BertEmbedShape {
        total_rows: 0,
        ..shape
    }
    .validate(&lens)
    .unwrap();
    let bad_shapes = [
        (BertEmbedShape { d: 380, ..shape }, "d = 380"),
        (BertEmbedShape { d: 0, ..shape }, "d = 0"),
        (BertEmbedShape { eps: 0.0, ..shape }, "eps"),
        (
            BertEmbedShape {
                eps: f32::NAN,
                ..shape
            },
            "eps",
        ),
        (BertEmbedShape { batch: 0, ..shape }, "batch = 0"),
        (
            BertEmbedShape {
                vocab_size: 0,
                ..shape
            },
            "vocab_size",
        ),
        (
            BertEmbedShape {
                position_offset: 512,
                ..shape
            },
            "position_offset",
        ),
        (
            BertEmbedShape {
                total_rows: 75,
                ..shape
            },
            "`ids`",
        ),
    ];
    for (s, needle) in bad_shapes {
        let (op, msg) = invalid(s.validate(&lens));
        assert_eq!(op, "bert_embed");
        assert!(msg.contains(needle), "{s:?}: {msg}");
    }
    let bad_lens = [
        (BertEmbedLens { ids: 73, ..lens }, "`ids`"),
        (
            BertEmbedLens {
                type_ids: Some(10),
                ..lens
            },
            "`type_ids`",
        ),
        (
            BertEmbedLens {
                cu_seqlens: 5,
                ..lens
            },
            "`cu_seqlens`",
        ),
        (
            BertEmbedLens {
                word: 999 * 384,
                ..lens
            },
            "`word`",
        ),
        (
            BertEmbedLens {
                position: 513 * 384,
                ..lens
            },
            "`position`",
        ),
        (
            BertEmbedLens {
                token_type: 384,
                ..lens
            },
            "`token_type`",
        ),
        (BertEmbedLens { gamma: 383, ..lens }, "`gamma`"),
        (BertEmbedLens { beta: 385, ..lens }, "`beta`"),
        (
            BertEmbedLens {
                out: 74 * 384 - 1,
                ..lens
            },
            "`out`",
        ),
        (
            BertEmbedLens {
                orig_index: 73,
                ..lens
            },
            "`orig_index`",
        ),
    ];
    for (l, needle) in bad_lens {
        let (_, msg) = invalid(shape.validate(&l));
        assert!(msg.contains(needle), "{l:?}: {msg}");
    }
}

#[test]
fn bert_host_id_check() {
    let (shape, _) = bert_ok();
    let cu = [0, 1, 33, 74];
    let ids: Vec<u32> = (0..74).map(|i| (i * 13 % 1000) as u32).collect();
    let types: Vec<u32> = (0..74).map(|i| (i % 2) as u32).collect();
    check_bert_ids(&shape, &ids, Some(&types), &cu).unwrap();
    check_bert_ids(&shape, &ids, None, &cu).unwrap();
    let mut bad = ids.clone();
    bad[40] = 1000;
    let mut bad_types = types.clone();
    bad_types[3] = 2;
    match check_bert_ids(&shape, &bad, Some(&bad_types), &cu) {
        Err(Error::Input(errs)) => {
            assert_eq!(errs.len(), 2, "{errs:?}");
            assert!(errs[0].contains("token id 1000 at 40"), "{errs:?}");
            assert!(errs[1].contains("type id 2 at 3"), "{errs:?}");
        }
        other => panic!("{other:?}"),
    }
    // A sequence longer than the position table (with RoBERTa's offset).
    let short = BertEmbedShape {
        max_positions: 42,
        position_offset: 2,
        ..shape
    };
    match check_bert_ids(&short, &ids, None, &cu) {
        Err(Error::Input(errs)) => {
            assert!(errs[0].contains("sequence 2 has 41 tokens"), "{errs:?}")
        }
        other => panic!("{other:?}"),
    }
    let roberta_fits = BertEmbedShape {
        max_positions: 43,
        ..short
    };
    check_bert_ids(&roberta_fits, &ids, None, &cu).unwrap();
    // cu_seqlens: wrong start, decreasing, wrong end; wrong lengths.
    for bad_cu in [[1, 1, 33, 74], [0, 34, 33, 74], [0, 1, 33, 73]] {
        assert!(
            matches!(
                check_bert_ids(&shape, &ids, None, &bad_cu),
                Err(Error::Input(_))
            ),
            "{bad_cu:?}"
        );
    }
    assert!(matches!(
        check_bert_ids(&shape, &ids, None, &[0, 74]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        check_bert_ids(&shape, &ids[..73], None, &cu),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        check_bert_ids(&shape, &ids, Some(&types[..70]), &cu),
        Err(Error::Input(_))
    ));
}

#[test]
fn bert_shape_from_config() {
    let cfg = smarttrim::spec::preset("tiny-bert").unwrap();
    let s = &cfg.streams[0];
    let shape = BertEmbedShape::from_stream(s, 2, 9).unwrap();
    assert_eq!((shape.batch, shape.total_rows, shape.d), (2, 9, s.hidden));
    assert_eq!(shape.eps, s.ln_eps);
    let vit = smarttrim::spec::preset("tiny-vit").unwrap();
    let (op, msg) = invalid(BertEmbedShape::from_stream(&vit.streams[0], 2, 9).map(|_| ()));
    assert_eq!(op, "bert_embed");
    assert!(msg.contains("not a BERT embedding"), "{msg}");
    assert!(VitEmbedShape::from_stream(&s.clone(), 2).is_err());
}

fn vit_ok() -> VitEmbedShape {
    VitEmbedShape {
        batch: 2,
        channels: 3,
        image_size: 32,
        patch_size: 8,
        d: 64,
    }
}

fn assemble_lens(s: &VitEmbedShape) -> VitAssembleLens {
    VitAssembleLens {
        patch_out: s.patch_rows() * s.d,
        cls: s.d,
        position: s.rows_per_image() * s.d,
        rows: s.total_rows() * s.d,
        orig_index: s.total_rows(),
        cu_seqlens: s.batch + 1,
    }
}

#[test]
fn vit_embed_validation() {
    let s = vit_ok();
    assert_eq!(
        (
            s.patches(),
            s.patch_dim(),
            s.rows_per_image(),
            s.total_rows()
        ),
        (16, 192, 17, 34)
    );
    s.validate().unwrap();
    validate_vit_patchify(&s, s.pixels_len(), s.patch_rows() * s.patch_dim()).unwrap();
    validate_vit_assemble(&s, &assemble_lens(&s)).unwrap();
    let lens = VitEmbedLens {
        pixels: s.pixels_len(),
        patch_weight: s.d * s.patch_dim(),
        patch_bias: s.d,
        patches: s.patch_rows() * s.patch_dim(),
        assemble: assemble_lens(&s),
    };
    validate_vit_embed(&s, &lens).unwrap();

    for (bad, needle) in [
        (VitEmbedShape { batch: 0, ..s }, "batch = 0"),
        (VitEmbedShape { channels: 0, ..s }, "must be positive"),
        (VitEmbedShape { patch_size: 0, ..s }, "must be positive"),
        (VitEmbedShape { patch_size: 6, ..s }, "does not divide"),
        (VitEmbedShape { d: 60, ..s }, "d = 60"),
    ] {
        let (op, msg) = invalid(bad.validate());
        assert_eq!(op, "vit_embed");
        assert!(msg.contains(needle), "{bad:?}: {msg}");
    }
    // C * p * p = 3 * 14 * 14 = 588 rows cannot be stored as 16-byte vectors.
    let p14 = VitEmbedShape {
        image_size: 224,
        patch_size: 14,
        ..s
    };
    assert!(matches!(p14.validate(), Err(Error::Unsupported { .. })));

    let (op, msg) = invalid(validate_vit_patchify(
        &s,
        s.pixels_len() - 1,
        s.patch_rows() * s.patch_dim(),
    ));
    assert_eq!(op, "vit_patchify");
    assert!(msg.contains("`pixels`"), "{msg}");
    let (_, msg) = invalid(validate_vit_patchify(&s, s.pixels_len(), 100));
    assert!(msg.contains("`patches`"), "{msg}");

    let a = assemble_lens(&s);
    for (bad, needle) in [
        (
            VitAssembleLens {
                patch_out: a.patch_out - 8,
                ..a
            },
            "`patch_out`",
        ),
        (VitAssembleLens { cls: 128, ..a }, "`cls`"),
        (
            VitAssembleLens {
                position: 16 * 64,
                ..a
            },
            "`position`",
        ),
        (VitAssembleLens { rows: 64, ..a }, "`rows`"),
        (
            VitAssembleLens {
                orig_index: 33,
                ..a
            },
            "`orig_index`",
        ),
        (VitAssembleLens { cu_seqlens: 4, ..a }, "`cu_seqlens`"),
    ] {
        let (op, msg) = invalid(validate_vit_assemble(&s, &bad));
        assert_eq!(op, "vit_assemble");
        assert!(msg.contains(needle), "{bad:?}: {msg}");
    }

    // The composed check covers the GEMM's operands too.
    assert!(validate_vit_embed(
        &s,
        &VitEmbedLens {
            patch_weight: 64 * 191,
            ..lens
        }
    )
    .is_err());
    assert!(validate_vit_embed(
        &s,
        &VitEmbedLens {
            patch_weight: 64 * 193,
            ..lens
        }
    )
    .is_err());
    assert!(validate_vit_embed(
        &s,
        &VitEmbedLens {
            patch_bias: 65,
            ..lens
        }
    )
    .is_err());
    assert!(validate_vit_embed(
        &s,
        &VitEmbedLens {
            assemble: VitAssembleLens { cls: 8, ..a },
            ..lens
        }
    )
    .is_err());
}

#[test]
fn vit_shape_from_config() {
    let vit = smarttrim::spec::preset("tiny-vit").unwrap();
    let sc = &vit.streams[0];
    let s = VitEmbedShape::from_stream(sc, 4).unwrap();
    s.validate().unwrap();
    assert_eq!(Some(s.rows_per_image()), sc.embedding.vit_rows());
    assert_eq!(s.total_rows(), 4 * s.rows_per_image());
    assert_eq!(s.d, sc.hidden);
}

/// copy_cols's validation: widths, strides and offsets multiples of 8, the
/// columns inside the destination, buffers long enough.
#[test]
fn copy_cols_validation() {
    use smarttrim::ops::{validate_copy_cols, CopyColsShape};
    let ok = CopyColsShape {
        rows: 3,
        n: 16,
        src_ld: 16,
        dst_ld: 32,
        dst_col: 16,
    };
    validate_copy_cols(ok, 48, 96).unwrap();
    for (bad, src, dst) in [
        (CopyColsShape { n: 12, ..ok }, 48, 96),
        (CopyColsShape { dst_col: 20, ..ok }, 48, 96),
        (CopyColsShape { dst_col: 24, ..ok }, 48, 96),
        (CopyColsShape { src_ld: 8, ..ok }, 48, 96),
        (ok, 47, 96),
        (ok, 48, 95),
    ] {
        match validate_copy_cols(bad, src, dst) {
            Err(smarttrim::Error::InvalidArgument { .. }) => {}
            other => panic!("{bad:?} src={src} dst={dst}: {other:?}"),
        }
    }
    // No rows: nothing to check against the buffers.
    validate_copy_cols(CopyColsShape { rows: 0, ..ok }, 0, 0).unwrap();
}
