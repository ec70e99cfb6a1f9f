//! The GPU forward pass's host-side parts, checked without a GPU: which
//! configs the kernels support, workspace sizing arithmetic, and input
//! validation returning typed errors before any device work.

use smarttrim::model::{
    check_supported, gpu_variant, prepare_inputs, Capacity, StreamLayout, WorkspaceLayout,
};
use smarttrim::reference::{synthetic_inputs, StreamInput};
use smarttrim::spec::{preset, EmbeddingWeights, KeepRule, ModelConfig, Weights};
use smarttrim::Error;

fn embeddings(w: &Weights) -> Vec<EmbeddingWeights> {
    w.streams.iter().map(|s| s.embeddings.clone()).collect()
}

#[test]
fn supported_configs() {
    for name in ["meter", "blip-vit", "blip-text", "bert-base"] {
        check_supported(&preset(name).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let raw = preset(name).unwrap();
        match check_supported(&raw) {
            Err(Error::Unsupported { message, .. }) => {
                assert!(message.contains("fused token scorer"), "{name}: {message}")
            }
            other => panic!("{name}: expected Unsupported, got {other:?}"),
        }
        let v = gpu_variant(&raw);
        check_supported(&v).unwrap_or_else(|e| panic!("{name} gpu variant: {e}"));
        assert_eq!(v.streams[0].head_dim(), 32, "{name}");
        // The variant keeps everything but heads and pruner widths.
        assert_eq!(v.streams[0].hidden, raw.streams[0].hidden);
        assert_eq!(v.streams[0].layers.len(), raw.streams[0].layers.len());
    }
    let mut c = preset("meter").unwrap();
    c.streams[0].layers[1].token_pruner.as_mut().unwrap().hidden = Some(100);
    assert!(matches!(
        check_supported(&c),
        Err(Error::Unsupported { .. })
    ));
}

fn stream_bytes_by_hand(s: &StreamLayout, b: usize) -> usize {
    let (r, d, f, h, l) = (s.rows, s.d, s.ffn, s.heads, s.layers);
    let ro = if s.cross { s.other_rows } else { 0 };
    let q = if s.cross { r * d } else { 0 };
    let m1 = |n: usize| n.max(1);
    // x[2], a, h, t, ctx, u: 7 x r*d f16; q; qkv; ffn; kv; uy.
    2 * (7 * r * d + m1(q) + 3 * r * d + r * f + m1(ro * 2 * d) + m1(s.other_rows * s.d_other))
        // cu[2], orig[2], scratch
        + 4 * (2 * (b + 1) + 2 * r + r)
        // g_self, g_cross, context (f32)
        + 4 * (b * d + m1(b * s.d_other) + m1(b * s.hs))
        // flags, ones (u8)
        + r + b * h
        // pairs x3, counts x3
        + 4 * (3 * 2 * b * h + 3)
        // pooled first (f16), mean (f32)
        + 2 * b * d + 4 * b * d
        // logs: scores f32, keep u8, logits f32, masks u8
        + 4 * l * r + l * r + 4 * l * 2 * b * h + l * 2 * b * h
        // embedding inputs: ids, type ids (u32), pixels (f32), patches and
        // projected patches (f16)
        + 4 * 2 * m1(s.ids) + 4 * m1(s.pixels) + 2 * (m1(s.patches) + m1(s.patch_out))
        // an input transform's input rows, the pooler's output (f16)
        + 2 * (m1(s.src) + m1(s.pooler))
}

#[test]
fn workspace_sizing() {
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let cap = Capacity {
        max_batch: 8,
        max_seqlen: vec![40, 577],
        context_max_seqlen: 0,
    };
    let lay = WorkspaceLayout::new(&cfg, &cap).unwrap();
    assert_eq!(lay.max_batch, 8);
    assert_eq!(lay.streams[0].rows, 320);
    assert_eq!(lay.streams[1].rows, 8 * 577);
    assert_eq!(lay.streams[0].other_rows, 8 * 577);
    assert_eq!(lay.streams[1].other_rows, 320);
    assert_eq!(lay.streams[0].d_other, 64);
    assert_eq!(lay.streams[0].hs, 64);
    assert_eq!(lay.streams[0].heads, 2);
    assert_eq!(lay.stats, 3 * 2 * 3 * 8);
    for s in &lay.streams {
        assert_eq!(s.bytes(8), stream_bytes_by_hand(s, 8));
    }
    // Caller memory: every buffer rounded up to 256 bytes.
    let up = |n: usize| n.div_ceil(256) * 256;
    let arena: usize = lay
        .streams
        .iter()
        .flat_map(|s| s.buffers(8))
        .map(|(_, n, e)| up(n.max(1) * e))
        .sum::<usize>()
        + up(2)
        + up(4 * 9)
        + up(4 * 2)
        + up(4 * lay.stats);
    assert_eq!(lay.arena_bytes(), arena);
    assert!(lay.arena_bytes() >= lay.bytes());
    let shared = 2 + 4 * 9 + 4 * 2 + 4 * lay.stats;
    assert_eq!(
        lay.bytes(),
        lay.streams.iter().map(|s| s.bytes(8)).sum::<usize>() + shared
    );

    // Cross encoder: the context sizes the kv and uy buffers.
    let cfg = gpu_variant(&preset("tiny-blip").unwrap());
    let cap = Capacity {
        max_batch: 4,
        max_seqlen: vec![40],
        context_max_seqlen: 577,
    };
    let lay = WorkspaceLayout::new(&cfg, &cap).unwrap();
    assert_eq!(lay.context_rows, 4 * 577);
    assert_eq!(lay.context_hidden, 48);
    assert_eq!(lay.streams[0].other_rows, 4 * 577);
    assert_eq!(lay.streams[0].d_other, 48);
    assert_eq!(
        lay.streams[0].bytes(4),
        stream_bytes_by_hand(&lay.streams[0], 4)
    );

    // Encoder: no other stream.
    let cfg = gpu_variant(&preset("tiny-vit").unwrap());
    let cap = Capacity {
        max_batch: 2,
        max_seqlen: vec![17],
        context_max_seqlen: 0,
    };
    let lay = WorkspaceLayout::new(&cfg, &cap).unwrap();
    assert_eq!(lay.streams[0].rows, 34);
    assert_eq!((lay.streams[0].other_rows, lay.streams[0].d_other), (0, 0));
    assert!(!lay.streams[0].cross);
}

#[test]
fn bad_capacities_are_typed_errors() {
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let ok = Capacity {
        max_batch: 8,
        max_seqlen: vec![40, 577],
        context_max_seqlen: 0,
    };
    let bad = |c: Capacity, cfg: &ModelConfig| WorkspaceLayout::new(cfg, &c).unwrap_err();
    assert!(matches!(
        bad(
            Capacity {
                max_batch: 0,
                ..ok.clone()
            },
            &cfg
        ),
        Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        bad(
            Capacity {
                max_batch: 70_000,
                ..ok.clone()
            },
            &cfg
        ),
        Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        bad(
            Capacity {
                max_seqlen: vec![40],
                ..ok.clone()
            },
            &cfg
        ),
        Error::InvalidArgument { .. }
    ));
    let blip = gpu_variant(&preset("tiny-blip").unwrap());
    assert!(matches!(
        bad(
            Capacity {
                max_batch: 2,
                max_seqlen: vec![40],
                context_max_seqlen: 0
            },
            &blip
        ),
        Error::InvalidArgument { .. }
    ));
    // The budget rule's longest sequence.
    let mut budget = cfg.clone();
    budget.streams[1].layers[1]
        .token_pruner
        .as_mut()
        .unwrap()
        .rule = KeepRule::Budget { rho: 0.5 };
    assert!(matches!(
        bad(
            Capacity {
                max_batch: 1,
                max_seqlen: vec![40, 5000],
                context_max_seqlen: 0
            },
            &budget
        ),
        Error::Unsupported { .. }
    ));
    WorkspaceLayout::new(&budget, &ok).unwrap();
}

#[test]
fn inputs_are_validated_before_device_work() {
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let cfg = gpu_variant(&preset(name).unwrap());
        let w = Weights::random(&cfg, 3).unwrap();
        let emb = embeddings(&w);
        let inputs = synthetic_inputs(&cfg, 8, 11, true);
        let prep = prepare_inputs(&cfg, &emb, &inputs, None).unwrap();
        assert_eq!(prep.batch, 8, "{name}");
        let cap = Capacity::for_inputs(&prep);
        WorkspaceLayout::new(&cfg, &cap).unwrap();
        prepare_inputs(&cfg, &emb, &inputs, Some(&cap)).unwrap();

        // Batch over capacity.
        let small = Capacity {
            max_batch: 4,
            ..cap.clone()
        };
        match prepare_inputs(&cfg, &emb, &inputs, Some(&small)) {
            Err(Error::InvalidArgument { message, .. }) => {
                assert!(message.contains("batch 8"), "{name}: {message}")
            }
            other => panic!("{name}: {other:?}"),
        }
        // A sequence over capacity.
        let short = Capacity {
            max_seqlen: cap.max_seqlen.iter().map(|&m| m - 1).collect(),
            ..cap.clone()
        };
        assert!(
            matches!(
                prepare_inputs(&cfg, &emb, &inputs, Some(&short)),
                Err(Error::InvalidArgument { .. })
            ),
            "{name}"
        );
        // Wrong stream count.
        let mut wrong = inputs.clone();
        wrong.streams.push(wrong.streams[0].clone());
        assert!(matches!(
            prepare_inputs(&cfg, &emb, &wrong, Some(&cap)),
            Err(Error::Input(_))
        ));
    }
    // Streams of different batch (METER), and NaN rows.
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let w = Weights::random(&cfg, 3).unwrap();
    let emb = embeddings(&w);
    let mut inputs = synthetic_inputs(&cfg, 2, 1, false);
    let other = synthetic_inputs(&cfg, 3, 1, false);
    inputs.streams[1] = other.streams[1].clone();
    match prepare_inputs(&cfg, &emb, &inputs, None) {
        Err(Error::Input(errs)) => assert!(errs[0].contains("batch"), "{errs:?}"),
        other => panic!("{other:?}"),
    }
    let mut inputs = synthetic_inputs(&cfg, 2, 1, false);
    if let StreamInput::Packed { rows, .. } = &mut inputs.streams[0] {
        rows[5] = f32::NAN;
    }
    assert!(matches!(
        prepare_inputs(&cfg, &emb, &inputs, None),
        Err(Error::Input(_))
    ));
    // A cross encoder without its context.
    let cfg = gpu_variant(&preset("tiny-blip").unwrap());
    let w = Weights::random(&cfg, 3).unwrap();
    let mut inputs = synthetic_inputs(&cfg, 2, 1, false);
    inputs.context = None;
    assert!(matches!(
        prepare_inputs(&cfg, &embeddings(&w), &inputs, None),
        Err(Error::Input(_))
    ));
}

/// Embedding input buffers: token and type ids for a BERT stream, pixels,
/// patch rows and projected patches for a ViT stream, nothing otherwise.
#[test]
fn workspace_embedding_buffers() {
    let vit = gpu_variant(&preset("tiny-vit").unwrap());
    let lay = WorkspaceLayout::new(
        &vit,
        &Capacity {
            max_batch: 2,
            max_seqlen: vec![17],
            context_max_seqlen: 0,
        },
    )
    .unwrap();
    let s = &lay.streams[0];
    // 32 px images, 8 px patches, 3 channels: 16 patches of 192 values.
    assert_eq!((s.ids, s.pixels), (0, 2 * 3 * 32 * 32));
    assert_eq!((s.patches, s.patch_out), (2 * 16 * 192, 2 * 16 * s.d));
    let bert = gpu_variant(&preset("tiny-bert").unwrap());
    let lay = WorkspaceLayout::new(
        &bert,
        &Capacity {
            max_batch: 3,
            max_seqlen: vec![31],
            context_max_seqlen: 0,
        },
    )
    .unwrap();
    let s = &lay.streams[0];
    assert_eq!((s.ids, s.pixels, s.patches, s.patch_out), (3 * 31, 0, 0, 0));
}

/// `validate_inputs` sizes a workspace exactly as `prepare_inputs` does,
/// without embedding token and pixel streams on the host.
#[test]
fn validate_inputs_sizes_like_prepare_inputs() {
    use smarttrim::model::{prepare_inputs, validate_inputs};
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let cfg = gpu_variant(&preset(name).unwrap());
        let w = smarttrim::spec::Weights::random(&cfg, 1).unwrap();
        let emb: Vec<_> = w.streams.iter().map(|s| s.embeddings.clone()).collect();
        let inputs = smarttrim::reference::synthetic_inputs(&cfg, 4, 2, true);
        let full = prepare_inputs(&cfg, &emb, &inputs, None).unwrap();
        let shape = validate_inputs(&cfg, &emb, &inputs, None).unwrap();
        assert_eq!(
            Capacity::for_inputs(&full),
            Capacity::for_inputs(&shape),
            "{name}"
        );
        for (s, (f, v)) in full.streams.iter().zip(&shape.streams).enumerate() {
            assert_eq!(f.cu_seqlens, v.cu_seqlens, "{name} stream {s}");
            let embedded = !matches!(
                cfg.streams[s].embedding,
                smarttrim::spec::EmbeddingConfig::None
            );
            assert_eq!(v.rows.is_empty(), embedded, "{name} stream {s}");
        }
    }
}

/// Whole models (BLIP, METER) and their tiny versions: supported as the
/// presets are (the tiny ones through their GPU variants); a METER whose
/// unimodal encoder has threshold pruners is not (its fusion streams'
/// lengths must be known on the host); the workspace is one per stage plus
/// the head's buffers, sized from the whole model's capacity.
#[test]
fn whole_models_are_supported_and_sized() {
    use smarttrim::spec::{LayerConfig, TokenPrunerConfig};
    for name in ["blip", "meter-full"] {
        check_supported(&preset(name).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["tiny-blip-full", "tiny-meter-full"] {
        let raw = preset(name).unwrap();
        assert!(matches!(
            check_supported(&raw),
            Err(Error::Unsupported { .. })
        ));
        check_supported(&gpu_variant(&raw)).unwrap_or_else(|e| panic!("{name} gpu variant: {e}"));
    }
    let mut m = preset("meter-full").unwrap();
    m.streams[1].layers[5] = LayerConfig {
        token_pruner: Some(TokenPrunerConfig {
            rule: KeepRule::Threshold { tau: 0.5 },
            keep_first: true,
            hidden: None,
        }),
        ..LayerConfig::default()
    };
    match check_supported(&m) {
        Err(Error::Unsupported { message, .. }) => {
            assert!(message.contains("feeds a fusion stream"), "{message}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // With a budget pruner there instead, it is supported.
    if let Some(tp) = &mut m.streams[1].layers[5].token_pruner {
        tp.rule = KeepRule::Budget { rho: 0.5 };
    }
    check_supported(&m).unwrap();

    let c = preset("blip").unwrap();
    let w = Weights::zeros(&c).unwrap();
    let inputs = synthetic_inputs(&c, 3, 1, true);
    let prep = prepare_inputs(&c, &embeddings(&w), &inputs, None).unwrap();
    assert_eq!(prep.streams.len(), 2);
    let cap = Capacity::for_inputs(&prep);
    assert_eq!(cap.max_seqlen, vec![577, 40]);
    let l = WorkspaceLayout::new(&c, &cap).unwrap();
    assert_eq!(l.stages.len(), 2);
    assert!(l.streams.is_empty());
    // The text encoder's context holds the image encoder's unpruned rows.
    assert_eq!(l.stages[1].context_rows, 3 * 577);
    assert_eq!(l.stages[1].context_hidden, 768);
    let h = l.head.unwrap();
    assert_eq!((h.features, h.outputs_padded), (768, 8));
    assert!(l.bytes() > l.stages.iter().map(|s| s.bytes()).sum::<usize>());

    let c = preset("meter-full").unwrap();
    let w = Weights::zeros(&c).unwrap();
    let inputs = synthetic_inputs(&c, 2, 1, true);
    let prep = prepare_inputs(&c, &embeddings(&w), &inputs, None).unwrap();
    // Fusion streams take their sources' lengths.
    assert_eq!(prep.streams[2].lengths(), prep.streams[0].lengths());
    assert_eq!(prep.streams[3].lengths(), vec![1297, 1297]);
    let l = WorkspaceLayout::new(&c, &Capacity::for_inputs(&prep)).unwrap();
    assert_eq!(l.stages.len(), 3);
    let fusion = &l.stages[2];
    assert_eq!(fusion.streams[1].src, 2 * 1297 * 768);
    assert_eq!(fusion.streams[0].pooler, 2 * 768);
    assert_eq!(l.head.unwrap().outputs_padded, 3136);
}
