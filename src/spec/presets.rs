//! The built-in model configs ([`preset`], [`PRESETS`]): METER, BLIP and
//! BERT shapes as published, their tiny variants for tests, and the whole
//! BLIP and METER models. Re-exported by `spec::config`, their earlier home.

use super::config::{
    Activation, EmbeddingConfig, HeadConfig, HeadPrunerConfig, KeepRule, LayerConfig, ModelConfig,
    ModelKind, StreamConfig, TokenPrunerConfig,
};
use crate::{Error, Result};

/// Names accepted by [`preset`].
pub const PRESETS: &[&str] = &[
    "meter",
    "blip-vit",
    "blip-text",
    "bert-base",
    "tiny-meter",
    "tiny-vit",
    "tiny-bert",
    "tiny-blip",
    "blip",
    "meter-full",
    "tiny-blip-full",
    "tiny-meter-full",
];

fn tp(tau: f32) -> Option<TokenPrunerConfig> {
    Some(TokenPrunerConfig {
        rule: KeepRule::Threshold { tau },
        keep_first: true,
        hidden: None,
    })
}
fn hp() -> Option<HeadPrunerConfig> {
    Some(HeadPrunerConfig {
        tau_h: 0.5,
        min_heads: 1,
        hidden: None,
    })
}

/// Layers with token pruners at `token_at`, head pruners (self, and cross if
/// `cross`) on every layer from `heads_from` on.
pub(super) fn layers(
    n: usize,
    token_at: &[usize],
    heads_from: usize,
    cross: bool,
) -> Vec<LayerConfig> {
    (0..n)
        .map(|l| LayerConfig {
            token_pruner: if token_at.contains(&l) { tp(0.5) } else { None },
            self_head_pruner: if l >= heads_from { hp() } else { None },
            cross_head_pruner: if cross && l >= heads_from { hp() } else { None },
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn stream(
    name: &str,
    hidden: usize,
    heads: usize,
    ffn: usize,
    eps: f32,
    pre_ln: bool,
    embedding: EmbeddingConfig,
    layers: Vec<LayerConfig>,
) -> StreamConfig {
    StreamConfig {
        name: name.into(),
        hidden,
        heads,
        ffn,
        ln_eps: eps,
        pre_ln,
        final_ln: pre_ln,
        activation: Activation::Gelu,
        pooler: false,
        embedding,
        layers,
    }
}

/// A CLIP ViT image encoder as METER builds it: pre-LN layers, `ln_pre`,
/// `ln_post` on every row, quick GELU, no patch bias, eps 1e-5.
fn clip_stream(
    name: &str,
    hidden: usize,
    heads: usize,
    image_size: usize,
    patch_size: usize,
    layers: Vec<LayerConfig>,
) -> StreamConfig {
    StreamConfig {
        activation: Activation::QuickGelu,
        ..stream(
            name,
            hidden,
            heads,
            4 * hidden,
            1e-5,
            true,
            EmbeddingConfig::Vit {
                image_size,
                patch_size,
                channels: 3,
                patch_bias: false,
                ln: true,
            },
            layers,
        )
    }
}

/// A RoBERTa text encoder (one token type, positions from 2, eps 1e-5).
fn roberta_stream(
    name: &str,
    hidden: usize,
    heads: usize,
    vocab_size: usize,
    max_positions: usize,
    layers: usize,
) -> StreamConfig {
    stream(
        name,
        hidden,
        heads,
        4 * hidden,
        1e-5,
        false,
        EmbeddingConfig::Bert {
            vocab_size,
            max_positions,
            type_vocab_size: 1,
            position_offset: 2,
        },
        vec![LayerConfig::default(); layers],
    )
}

/// One of METER's fusion streams: post-LN co-attention layers (eps 1e-12)
/// over an input transform from `input_hidden`, with a pooler.
fn fusion_stream(
    name: &str,
    hidden: usize,
    heads: usize,
    input_hidden: usize,
    layers: Vec<LayerConfig>,
) -> StreamConfig {
    StreamConfig {
        pooler: true,
        ..stream(
            name,
            hidden,
            heads,
            4 * hidden,
            1e-12,
            false,
            EmbeddingConfig::Transform {
                input_hidden,
                type_vector: true,
            },
            layers,
        )
    }
}

/// A built-in config by name (see [`PRESETS`]).
///
/// - `meter`: METER fusion encoder, text 40 + image 577 rows entering, hidden
///   768, 12 heads, FFN 3072, 6 co-attention layers; token pruners (threshold
///   0.5) on both streams at layers 1, 2, 3, 4 (SmartTrim prunes from layer 1
///   on), head pruners on self- and cross-attention of layers 1..6.
/// - `blip-vit`: ViT-B/16 at 384 px (577 rows), 12 pre-LN layers, token
///   pruners at layers 3, 6, 9, head pruners from layer 2.
/// - `blip-text`: BLIP text encoder, 12 cross layers over a 768-wide image
///   context, token pruners at 3, 6, 9, head pruners from layer 2.
/// - `bert-base`: BERT-base, no pruners.
/// - `tiny-*`: hidden 64, 4 heads, FFN 128 versions for fast tests
///   (`tiny-meter`: 3 lockstep layers, pruners from layer 1; `tiny-vit`:
///   32 px images, 8 px patches (17 rows), 3 layers; `tiny-bert`: vocab 100,
///   3 layers; `tiny-blip`: 3 cross layers over a 48-wide context).
/// - `blip`: BLIP ITM (base, 384 px) end to end: the `blip-vit` image
///   encoder (eps 1e-5 as HuggingFace's configs) with its pruners, then the
///   `blip-text` text encoder (no token types) cross-attending its pruned
///   final rows, and the ITM head on the text's first row.
/// - `meter-full`: METER VQA (576 px, 1297 image rows) end to end: RoBERTa
///   base (12 layers), CLIP ViT-B/16 as METER builds it (11 layers, `ln_pre`,
///   `ln_post` on every row, quick GELU), the input transforms and
///   modality-type vectors, the 6-layer fusion encoder with the `meter`
///   preset's pruners, the two poolers and the VQA head (3129 answers).
/// - `tiny-blip-full`, `tiny-meter-full`: the same structures at hidden 64
///   (METER's unimodal encoders 32 wide), 32 px images with 8 px patches.
pub fn preset(name: &str) -> Result<ModelConfig> {
    let c = match name {
        "meter" => ModelConfig {
            head: None,
            kind: ModelKind::CoAttention,
            streams: vec![
                stream(
                    "text",
                    768,
                    12,
                    3072,
                    1e-12,
                    false,
                    EmbeddingConfig::None,
                    layers(6, &[1, 2, 3, 4], 1, true),
                ),
                stream(
                    "image",
                    768,
                    12,
                    3072,
                    1e-12,
                    false,
                    EmbeddingConfig::None,
                    layers(6, &[1, 2, 3, 4], 1, true),
                ),
            ],
        },
        "blip-vit" => ModelConfig {
            head: None,
            kind: ModelKind::Encoder,
            streams: vec![stream(
                "image",
                768,
                12,
                3072,
                1e-6,
                true,
                EmbeddingConfig::Vit {
                    image_size: 384,
                    patch_size: 16,
                    channels: 3,
                    patch_bias: true,
                    ln: false,
                },
                layers(12, &[3, 6, 9], 2, false),
            )],
        },
        "blip-text" => ModelConfig {
            head: None,
            kind: ModelKind::CrossEncoder {
                context_hidden: 768,
            },
            streams: vec![stream(
                "text",
                768,
                12,
                3072,
                1e-12,
                false,
                EmbeddingConfig::Bert {
                    vocab_size: 30524,
                    max_positions: 512,
                    type_vocab_size: 2,
                    position_offset: 0,
                },
                layers(12, &[3, 6, 9], 2, true),
            )],
        },
        "bert-base" => ModelConfig {
            head: None,
            kind: ModelKind::Encoder,
            streams: vec![stream(
                "text",
                768,
                12,
                3072,
                1e-12,
                false,
                EmbeddingConfig::Bert {
                    vocab_size: 30522,
                    max_positions: 512,
                    type_vocab_size: 2,
                    position_offset: 0,
                },
                layers(12, &[], 12, false),
            )],
        },
        "tiny-meter" => ModelConfig {
            head: None,
            kind: ModelKind::CoAttention,
            streams: vec![
                stream(
                    "text",
                    64,
                    4,
                    128,
                    1e-12,
                    false,
                    EmbeddingConfig::None,
                    layers(3, &[1, 2], 1, true),
                ),
                stream(
                    "image",
                    64,
                    4,
                    128,
                    1e-12,
                    false,
                    EmbeddingConfig::None,
                    layers(3, &[1, 2], 1, true),
                ),
            ],
        },
        "tiny-vit" => ModelConfig {
            head: None,
            kind: ModelKind::Encoder,
            streams: vec![stream(
                "image",
                64,
                4,
                128,
                1e-6,
                true,
                EmbeddingConfig::Vit {
                    image_size: 32,
                    patch_size: 8,
                    channels: 3,
                    patch_bias: true,
                    ln: false,
                },
                layers(3, &[1, 2], 1, false),
            )],
        },
        "tiny-bert" => ModelConfig {
            head: None,
            kind: ModelKind::Encoder,
            streams: vec![stream(
                "text",
                64,
                4,
                128,
                1e-12,
                false,
                EmbeddingConfig::Bert {
                    vocab_size: 100,
                    max_positions: 64,
                    type_vocab_size: 2,
                    position_offset: 0,
                },
                layers(3, &[1, 2], 1, false),
            )],
        },
        "tiny-blip" => ModelConfig {
            head: None,
            kind: ModelKind::CrossEncoder { context_hidden: 48 },
            streams: vec![stream(
                "text",
                64,
                4,
                128,
                1e-12,
                false,
                EmbeddingConfig::Bert {
                    vocab_size: 100,
                    max_positions: 64,
                    type_vocab_size: 2,
                    position_offset: 0,
                },
                layers(3, &[1, 2], 1, true),
            )],
        },
        "blip" => {
            let mut image = stream(
                "image",
                768,
                12,
                3072,
                1e-5,
                true,
                EmbeddingConfig::Vit {
                    image_size: 384,
                    patch_size: 16,
                    channels: 3,
                    patch_bias: true,
                    ln: false,
                },
                layers(12, &[3, 6, 9], 2, false),
            );
            image.final_ln = true;
            ModelConfig {
                kind: ModelKind::Blip,
                streams: vec![
                    image,
                    stream(
                        "text",
                        768,
                        12,
                        3072,
                        1e-12,
                        false,
                        EmbeddingConfig::Bert {
                            vocab_size: 30524,
                            max_positions: 512,
                            type_vocab_size: 0,
                            position_offset: 0,
                        },
                        layers(12, &[3, 6, 9], 2, true),
                    ),
                ],
                head: Some(HeadConfig::Itm),
            }
        }
        "meter-full" => ModelConfig {
            kind: ModelKind::Meter,
            streams: vec![
                roberta_stream("text_encoder", 768, 12, 50265, 514, 12),
                clip_stream(
                    "image_encoder",
                    768,
                    12,
                    576,
                    16,
                    vec![LayerConfig::default(); 11],
                ),
                fusion_stream("text", 768, 12, 768, layers(6, &[1, 2, 3, 4], 1, true)),
                fusion_stream("image", 768, 12, 768, layers(6, &[1, 2, 3, 4], 1, true)),
            ],
            head: Some(HeadConfig::Vqa {
                labels: 3129,
                ln_eps: 1e-5,
            }),
        },
        "tiny-blip-full" => ModelConfig {
            kind: ModelKind::Blip,
            streams: vec![
                stream(
                    "image",
                    64,
                    4,
                    128,
                    1e-5,
                    true,
                    EmbeddingConfig::Vit {
                        image_size: 32,
                        patch_size: 8,
                        channels: 3,
                        patch_bias: true,
                        ln: false,
                    },
                    layers(3, &[1, 2], 1, false),
                ),
                stream(
                    "text",
                    64,
                    4,
                    128,
                    1e-12,
                    false,
                    EmbeddingConfig::Bert {
                        vocab_size: 100,
                        max_positions: 64,
                        type_vocab_size: 0,
                        position_offset: 0,
                    },
                    layers(3, &[1, 2], 1, true),
                ),
            ],
            head: Some(HeadConfig::Itm),
        },
        "tiny-meter-full" => ModelConfig {
            kind: ModelKind::Meter,
            streams: vec![
                roberta_stream("text_encoder", 32, 2, 100, 66, 2),
                clip_stream(
                    "image_encoder",
                    32,
                    2,
                    32,
                    8,
                    vec![LayerConfig::default(); 2],
                ),
                fusion_stream("text", 64, 4, 32, layers(3, &[1, 2], 1, true)),
                fusion_stream("image", 64, 4, 32, layers(3, &[1, 2], 1, true)),
            ],
            head: Some(HeadConfig::Vqa {
                labels: 10,
                ln_eps: 1e-5,
            }),
        },
        _ => {
            return Err(Error::Config(format!(
                "unknown preset `{name}`{}; known presets: {}",
                super::parse::nearest(name, PRESETS)
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default(),
                PRESETS.join(", ")
            )))
        }
    };
    c.validate()?;
    Ok(c)
}
