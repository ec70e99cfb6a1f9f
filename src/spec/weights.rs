//! Host-side f32 weights, their safetensors naming scheme, loading, saving and
//! seeded random generation.
//!
//! # Naming scheme
//!
//! Every tensor name starts with its stream's name (`{s}` below: `text`,
//! `image`, ...). Linear weights are `[out, in]` (PyTorch convention),
//! `D` the stream's hidden, `Do` the other stream's hidden, `F` the FFN size,
//! `H` heads, `Hs`/`hh` the pruners' hidden widths, `P` the patch side, `C`
//! channels, `N = 1 + (image/P)^2`.
//!
//! | name | shape |
//! |---|---|
//! | `{s}.embeddings.patch.weight` / `.bias` (ViT; the bias with `patch_bias`) | `[D, C*P*P]` / `[D]` |
//! | `{s}.embeddings.cls` (ViT) | `[D]` |
//! | `{s}.embeddings.position` (ViT) | `[N, D]` |
//! | `{s}.embeddings.ln.weight` / `.bias` (ViT with `ln`: CLIP's `ln_pre`) | `[D]` |
//! | `{s}.embeddings.transform.weight` / `.bias` (transform) | `[D, D_in]` / `[D]` |
//! | `{s}.embeddings.type_vector` (transform with `type_vector`) | `[D]` |
//! | `{s}.embeddings.word` (BERT) | `[vocab, D]` |
//! | `{s}.embeddings.position` (BERT) | `[max_positions, D]` |
//! | `{s}.embeddings.token_type` (BERT, `type_vocab > 0`) | `[type_vocab, D]` |
//! | `{s}.embeddings.ln.weight` / `.bias` (BERT) | `[D]` |
//! | `{s}.layers.{l}.self_attn.qkv.weight` / `.bias` | `[3D, D]` / `[3D]` (rows Q, K, V) |
//! | `{s}.layers.{l}.self_attn.out.weight` / `.bias` | `[D, D]` / `[D]` |
//! | `{s}.layers.{l}.self_attn.ln.weight` / `.bias` | `[D]` |
//! | `{s}.layers.{l}.cross_attn.q.weight` / `.bias` (cross) | `[D, D]` / `[D]` |
//! | `{s}.layers.{l}.cross_attn.kv.weight` / `.bias` (cross) | `[2D, Do]` / `[2D]` (rows K, V) |
//! | `{s}.layers.{l}.cross_attn.out.weight` / `.bias` (cross) | `[D, D]` / `[D]` |
//! | `{s}.layers.{l}.cross_attn.ln.weight` / `.bias` (cross) | `[D]` |
//! | `{s}.layers.{l}.ffn.fc1.weight` / `.bias` | `[F, D]` / `[F]` |
//! | `{s}.layers.{l}.ffn.fc2.weight` / `.bias` | `[D, F]` / `[D]` |
//! | `{s}.layers.{l}.ffn.ln.weight` / `.bias` | `[D]` |
//! | `{s}.layers.{l}.token_pruner.ln_p.weight` / `.bias` | `[D]` |
//! | `{s}.layers.{l}.token_pruner.ln_c.weight` / `.bias` (two streams) | `[Do]` |
//! | `{s}.layers.{l}.token_pruner.w1x` / `.w1s` | `[Hs, D]` |
//! | `{s}.layers.{l}.token_pruner.w1c` (two streams) | `[Hs, Do]` |
//! | `{s}.layers.{l}.token_pruner.b1` / `.w2` | `[Hs]` |
//! | `{s}.layers.{l}.token_pruner.b2` | `[1]` |
//! | `{s}.layers.{l}.{self_attn,cross_attn}.head_pruner.ln_h.weight` / `.bias` | `[D]` |
//! | `{s}.layers.{l}.{self_attn,cross_attn}.head_pruner.ln_hc.weight` / `.bias` (two streams) | `[Do]` |
//! | `{s}.layers.{l}.{self_attn,cross_attn}.head_pruner.w1` | `[hh, D (+ Do)]` |
//! | `{s}.layers.{l}.{self_attn,cross_attn}.head_pruner.b1` | `[hh]` |
//! | `{s}.layers.{l}.{self_attn,cross_attn}.head_pruner.w2` / `.b2` | `[H, hh]` / `[H]` |
//! | `{s}.final_ln.weight` / `.bias` (if `final_ln`) | `[D]` |
//! | `{s}.pooler.weight` / `.bias` (if `pooler`) | `[D, D]` / `[D]` |
//! | `head.fc.weight` / `.bias` (ITM head) | `[2, F]` / `[2]` |
//! | `head.fc1`, `head.ln`, `head.fc2` `.weight` / `.bias` (VQA head) | `[F, F]`, `[F]`, `[labels, F]` |
//!
//! In a pre-LN layer, `self_attn.ln` is applied before self-attention,
//! `cross_attn.ln` before cross-attention and `ffn.ln` before the FFN; in a
//! post-LN layer each is applied after its residual sum.
//!
//! In two-stream models (co-attention, cross encoder) every pruner sees the
//! other stream (`ln_c`, `w1c`, `ln_hc` present); in single-stream models none.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

/// Elements per independently seeded chunk in [`Weights::random`].
const RANDOM_CHUNK: usize = 1 << 16;

pub use super::config::KeepRule;
use super::config::{EmbeddingConfig, HeadConfig, ModelConfig, StreamConfig};
use crate::{Error, Result};

/// A linear layer `y = x W^T + b`, `weight` `[out, inp]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// `[out, inp]` row-major.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

impl Linear {
    fn zeros(out: usize, inp: usize) -> Self {
        Linear {
            weight: vec![0.0; out * inp],
            bias: vec![0.0; out],
            out,
            inp,
        }
    }
}

/// LayerNorm parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormWeights {
    /// Scale `[d]`.
    pub gamma: Vec<f32>,
    /// Shift `[d]`.
    pub beta: Vec<f32>,
}

impl LayerNormWeights {
    fn ones(d: usize) -> Self {
        LayerNormWeights {
            gamma: vec![1.0; d],
            beta: vec![0.0; d],
        }
    }
}

/// The token pruner's weights (DESIGN.md, token pruner; `W1 = [W1x|W1s|W1c]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPrunerWeights {
    /// `LN_p` scale `[d]`.
    pub ln_p_gamma: Vec<f32>,
    /// `LN_p` shift `[d]`.
    pub ln_p_beta: Vec<f32>,
    /// `LN_c` scale `[d_other]` (two-stream models).
    pub ln_c_gamma: Option<Vec<f32>>,
    /// `LN_c` shift `[d_other]` (two-stream models).
    pub ln_c_beta: Option<Vec<f32>>,
    /// `[hs, d]`.
    pub w1x: Vec<f32>,
    /// `[hs, d]`.
    pub w1s: Vec<f32>,
    /// `[hs, d_other]` (two-stream models).
    pub w1c: Option<Vec<f32>>,
    /// `[hs]`.
    pub b1: Vec<f32>,
    /// `[hs]`.
    pub w2: Vec<f32>,
    /// Output bias.
    pub b2: f32,
    /// Hidden width.
    pub hs: usize,
    /// Own stream width.
    pub d: usize,
    /// Other stream width, if any.
    pub d_other: Option<usize>,
}

impl TokenPrunerWeights {
    /// All-zero weights (LN gamma 1) of the given sizes.
    pub fn zeros(d: usize, d_other: Option<usize>, hs: usize) -> Self {
        TokenPrunerWeights {
            ln_p_gamma: vec![1.0; d],
            ln_p_beta: vec![0.0; d],
            ln_c_gamma: d_other.map(|o| vec![1.0; o]),
            ln_c_beta: d_other.map(|o| vec![0.0; o]),
            w1x: vec![0.0; hs * d],
            w1s: vec![0.0; hs * d],
            w1c: d_other.map(|o| vec![0.0; hs * o]),
            b1: vec![0.0; hs],
            w2: vec![0.0; hs],
            b2: 0.0,
            hs,
            d,
            d_other,
        }
    }
}

/// The head pruner's weights (DESIGN.md, head pruner).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadPrunerWeights {
    /// `LN_h` scale `[d]`.
    pub ln_h_gamma: Vec<f32>,
    /// `LN_h` shift `[d]`.
    pub ln_h_beta: Vec<f32>,
    /// `LN_hc` scale `[d_other]` (two-stream models).
    pub ln_hc_gamma: Option<Vec<f32>>,
    /// `LN_hc` shift `[d_other]` (two-stream models).
    pub ln_hc_beta: Option<Vec<f32>>,
    /// `[hh, d + d_other]`.
    pub w1: Vec<f32>,
    /// `[hh]`.
    pub b1: Vec<f32>,
    /// `[heads, hh]`.
    pub w2: Vec<f32>,
    /// `[heads]`.
    pub b2: Vec<f32>,
    /// Hidden width.
    pub hh: usize,
    /// Number of heads (logits).
    pub heads: usize,
    /// Own stream width.
    pub d: usize,
    /// Other stream width, if any.
    pub d_other: Option<usize>,
}

impl HeadPrunerWeights {
    /// All-zero weights (LN gamma 1) of the given sizes.
    pub fn zeros(d: usize, d_other: Option<usize>, hh: usize, heads: usize) -> Self {
        let zin = d + d_other.unwrap_or(0);
        HeadPrunerWeights {
            ln_h_gamma: vec![1.0; d],
            ln_h_beta: vec![0.0; d],
            ln_hc_gamma: d_other.map(|o| vec![1.0; o]),
            ln_hc_beta: d_other.map(|o| vec![0.0; o]),
            w1: vec![0.0; hh * zin],
            b1: vec![0.0; hh],
            w2: vec![0.0; heads * hh],
            b2: vec![0.0; heads],
            hh,
            heads,
            d,
            d_other,
        }
    }
}

/// Self-attention module.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfAttentionWeights {
    /// Fused `[3D, D]` (Q rows, then K, then V).
    pub qkv: Linear,
    /// Output projection `[D, D]`.
    pub out: Linear,
    /// The module's LayerNorm (before it in pre-LN, after the residual in post-LN).
    pub ln: LayerNormWeights,
    /// Optional head pruner.
    pub head_pruner: Option<HeadPrunerWeights>,
}

/// Cross-attention module.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossAttentionWeights {
    /// Queries `[D, D]`.
    pub q: Linear,
    /// Fused keys/values over the other stream `[2D, Do]` (K rows, then V).
    pub kv: Linear,
    /// Output projection `[D, D]`.
    pub out: Linear,
    /// The module's LayerNorm.
    pub ln: LayerNormWeights,
    /// Optional head pruner.
    pub head_pruner: Option<HeadPrunerWeights>,
}

/// FFN module: `fc2(GELU(fc1 x))`.
#[derive(Debug, Clone, PartialEq)]
pub struct FfnWeights {
    /// `[F, D]`.
    pub fc1: Linear,
    /// `[D, F]`.
    pub fc2: Linear,
    /// The module's LayerNorm.
    pub ln: LayerNormWeights,
}

/// One layer of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Token pruner on the entering rows.
    pub token_pruner: Option<TokenPrunerWeights>,
    /// Self-attention.
    pub self_attn: SelfAttentionWeights,
    /// Cross-attention (cross layers only).
    pub cross_attn: Option<CrossAttentionWeights>,
    /// FFN.
    pub ffn: FfnWeights,
}

/// A stream's embedding weights.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingWeights {
    /// Packed rows are the input.
    None,
    /// ViT.
    Vit {
        /// `[D, C*P*P]`, patch flattened `(c, ky, kx)`; `bias` empty when the
        /// config has no patch bias (CLIP).
        patch: Linear,
        /// `[D]`.
        cls: Vec<f32>,
        /// `[N, D]`.
        position: Vec<f32>,
        /// The LayerNorm before the first layer (CLIP's `ln_pre`), if any.
        ln: Option<LayerNormWeights>,
    },
    /// BERT.
    Bert {
        /// `[vocab, D]`.
        word: Vec<f32>,
        /// `[max_positions, D]`.
        position: Vec<f32>,
        /// `[type_vocab, D]` (empty without token types).
        token_type: Vec<f32>,
        /// Embedding LayerNorm.
        ln: LayerNormWeights,
    },
    /// An input transform: `W x + b (+ type_vector)`.
    Transform {
        /// `[D, input_hidden]`.
        transform: Linear,
        /// The modality-type vector `[D]`, if the config has one.
        type_vector: Option<Vec<f32>>,
    },
}

/// A task head's weights (see [`crate::spec::HeadConfig`]; `F` the feature
/// width).
#[derive(Debug, Clone, PartialEq)]
pub enum HeadWeights {
    /// `Linear(F, 2)`.
    Itm {
        /// `[2, F]`.
        fc: Linear,
    },
    /// `Linear(F, F)`, LayerNorm, GELU, `Linear(F, labels)`.
    Vqa {
        /// `[F, F]`.
        fc1: Linear,
        /// `[F]`.
        ln: LayerNormWeights,
        /// `[labels, F]`.
        fc2: Linear,
    },
}

/// All weights of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamWeights {
    /// Embeddings.
    pub embeddings: EmbeddingWeights,
    /// Layers.
    pub layers: Vec<LayerWeights>,
    /// Final LayerNorm (if the config asks for one).
    pub final_ln: Option<LayerNormWeights>,
    /// The pooler `[D, D]` (if the config asks for one).
    pub pooler: Option<Linear>,
}

/// All weights of a model, with the config they belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// The (validated) config.
    pub config: ModelConfig,
    /// One entry per config stream.
    pub streams: Vec<StreamWeights>,
    /// The task head (if the config has one).
    pub head: Option<Box<HeadWeights>>,
}

/// What a tensor is, for random initialisation.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Init {
    /// N(0, 0.02).
    Linear,
    /// Bias: N(0, 0.02).
    Bias,
    /// LN gamma: 1 + N(0, 0.02).
    Gamma,
    /// LN beta: N(0, 0.02).
    Beta,
    /// Pruner LN beta: N(0, 0.5) (gives mean-pooled features some structure).
    PrunerBeta,
    /// Pruner first-layer weights: N(0, 1/sqrt(fan_in)).
    PrunerW1,
    /// Pruner output weights: N(0, 1.5/sqrt(fan_in)).
    PrunerW2,
    /// Constant.
    Const(f32),
}

/// Visits every tensor (name, shape, init, data) of a weights struct, in a
/// fixed order. The single definition of the naming scheme.
type Visitor<'a> = dyn FnMut(&str, &[usize], Init, &mut Vec<f32>) + 'a;

fn visit_ln(p: &str, ln: &mut LayerNormWeights, f: &mut Visitor, pruner: bool) {
    let d = ln.gamma.len();
    f(&format!("{p}.weight"), &[d], Init::Gamma, &mut ln.gamma);
    let bi = if pruner { Init::PrunerBeta } else { Init::Beta };
    f(&format!("{p}.bias"), &[d], bi, &mut ln.beta);
}

fn visit_linear(p: &str, l: &mut Linear, f: &mut Visitor) {
    f(
        &format!("{p}.weight"),
        &[l.out, l.inp],
        Init::Linear,
        &mut l.weight,
    );
    f(&format!("{p}.bias"), &[l.out], Init::Bias, &mut l.bias);
}

fn visit_token_pruner(p: &str, t: &mut TokenPrunerWeights, f: &mut Visitor) {
    let (d, hs) = (t.d, t.hs);
    f(
        &format!("{p}.ln_p.weight"),
        &[d],
        Init::Gamma,
        &mut t.ln_p_gamma,
    );
    f(
        &format!("{p}.ln_p.bias"),
        &[d],
        Init::PrunerBeta,
        &mut t.ln_p_beta,
    );
    if let (Some(o), Some(g), Some(b)) = (t.d_other, &mut t.ln_c_gamma, &mut t.ln_c_beta) {
        f(&format!("{p}.ln_c.weight"), &[o], Init::Gamma, g);
        f(&format!("{p}.ln_c.bias"), &[o], Init::PrunerBeta, b);
    }
    f(&format!("{p}.w1x"), &[hs, d], Init::PrunerW1, &mut t.w1x);
    f(&format!("{p}.w1s"), &[hs, d], Init::PrunerW1, &mut t.w1s);
    if let (Some(o), Some(w)) = (t.d_other, &mut t.w1c) {
        f(&format!("{p}.w1c"), &[hs, o], Init::PrunerW1, w);
    }
    f(&format!("{p}.b1"), &[hs], Init::Bias, &mut t.b1);
    f(&format!("{p}.w2"), &[hs], Init::PrunerW2, &mut t.w2);
    let mut b2 = vec![t.b2];
    f(&format!("{p}.b2"), &[1], Init::Const(0.4), &mut b2);
    t.b2 = b2.first().copied().unwrap_or(0.0);
}

fn visit_head_pruner(p: &str, h: &mut HeadPrunerWeights, f: &mut Visitor) {
    let (d, hh, heads) = (h.d, h.hh, h.heads);
    f(
        &format!("{p}.ln_h.weight"),
        &[d],
        Init::Gamma,
        &mut h.ln_h_gamma,
    );
    f(
        &format!("{p}.ln_h.bias"),
        &[d],
        Init::PrunerBeta,
        &mut h.ln_h_beta,
    );
    if let (Some(o), Some(g), Some(b)) = (h.d_other, &mut h.ln_hc_gamma, &mut h.ln_hc_beta) {
        f(&format!("{p}.ln_hc.weight"), &[o], Init::Gamma, g);
        f(&format!("{p}.ln_hc.bias"), &[o], Init::PrunerBeta, b);
    }
    let zin = d + h.d_other.unwrap_or(0);
    f(&format!("{p}.w1"), &[hh, zin], Init::PrunerW1, &mut h.w1);
    f(&format!("{p}.b1"), &[hh], Init::Bias, &mut h.b1);
    f(&format!("{p}.w2"), &[heads, hh], Init::PrunerW2, &mut h.w2);
    f(&format!("{p}.b2"), &[heads], Init::Const(0.6), &mut h.b2);
}

impl Weights {
    /// A lower bound of the bytes the f32 weights of `config` take (its
    /// matrices and embedding tables; vectors and pruners left out),
    /// computed without allocating. Saturates at `u64::MAX`.
    pub fn min_bytes(config: &ModelConfig) -> u64 {
        let mut n: u128 = 0;
        for (si, s) in config.streams.iter().enumerate() {
            let (d, f) = (s.hidden as u128, s.ffn as u128);
            let d_other = config.other_hidden(si).unwrap_or(0) as u128;
            n += match s.embedding {
                EmbeddingConfig::None => 0,
                EmbeddingConfig::Vit {
                    patch_size,
                    channels,
                    ..
                } => {
                    let rows = s.embedding.vit_rows().unwrap_or(0) as u128;
                    d * (channels as u128) * (patch_size as u128).pow(2) + rows * d
                }
                EmbeddingConfig::Bert {
                    vocab_size,
                    max_positions,
                    type_vocab_size,
                    ..
                } => (vocab_size as u128 + max_positions as u128 + type_vocab_size as u128) * d,
                EmbeddingConfig::Transform { input_hidden, .. } => d * input_hidden as u128,
            };
            let layer = 4 * d * d
                + 2 * d * f
                + if config.stream_is_cross(si) {
                    2 * d * d + 2 * d * d_other
                } else {
                    0
                };
            n += layer * s.layers.len() as u128;
            if s.pooler {
                n += d * d;
            }
        }
        let fw = config.feature_width() as u128;
        n += match config.head {
            None => 0,
            Some(HeadConfig::Itm) => 2 * fw,
            Some(HeadConfig::Vqa { labels, .. }) => fw * fw + labels as u128 * fw,
        };
        u64::try_from(n.saturating_mul(4)).unwrap_or(u64::MAX)
    }

    /// Weights of the right shapes for `config`: zeros, LayerNorm gammas 1.
    ///
    /// Refused with [`Error::TooLarge`] before allocating when
    /// [`Weights::min_bytes`] exceeds the memory available
    /// ([`crate::limits::check_memory`]).
    pub fn zeros(config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        crate::limits::check_memory("the model's weights (f32)", Weights::min_bytes(config))?;
        let streams = config
            .streams
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let d = s.hidden;
                let d_other = config.other_hidden(si);
                let cross = config.stream_is_cross(si);
                let embeddings = match s.embedding {
                    EmbeddingConfig::None => EmbeddingWeights::None,
                    EmbeddingConfig::Vit {
                        patch_size,
                        channels,
                        patch_bias,
                        ln,
                        ..
                    } => {
                        let mut patch = Linear::zeros(d, channels * patch_size * patch_size);
                        if !patch_bias {
                            patch.bias.clear();
                        }
                        EmbeddingWeights::Vit {
                            patch,
                            cls: vec![0.0; d],
                            position: vec![0.0; s.embedding.vit_rows().unwrap_or(1) * d],
                            ln: ln.then(|| LayerNormWeights::ones(d)),
                        }
                    }
                    EmbeddingConfig::Transform {
                        input_hidden,
                        type_vector,
                    } => EmbeddingWeights::Transform {
                        transform: Linear::zeros(d, input_hidden),
                        type_vector: type_vector.then(|| vec![0.0; d]),
                    },
                    EmbeddingConfig::Bert {
                        vocab_size,
                        max_positions,
                        type_vocab_size,
                        ..
                    } => EmbeddingWeights::Bert {
                        word: vec![0.0; vocab_size * d],
                        position: vec![0.0; max_positions * d],
                        token_type: vec![0.0; type_vocab_size * d],
                        ln: LayerNormWeights::ones(d),
                    },
                };
                let layers = s
                    .layers
                    .iter()
                    .map(|lc| LayerWeights {
                        token_pruner: lc.token_pruner.as_ref().map(|tp| {
                            TokenPrunerWeights::zeros(d, d_other, s.token_pruner_hidden(tp))
                        }),
                        self_attn: SelfAttentionWeights {
                            qkv: Linear::zeros(3 * d, d),
                            out: Linear::zeros(d, d),
                            ln: LayerNormWeights::ones(d),
                            head_pruner: lc.self_head_pruner.as_ref().map(|hp| {
                                HeadPrunerWeights::zeros(
                                    d,
                                    d_other,
                                    s.head_pruner_hidden(hp),
                                    s.heads,
                                )
                            }),
                        },
                        cross_attn: if cross {
                            let o = d_other.unwrap_or(d);
                            Some(CrossAttentionWeights {
                                q: Linear::zeros(d, d),
                                kv: Linear::zeros(2 * d, o),
                                out: Linear::zeros(d, d),
                                ln: LayerNormWeights::ones(d),
                                head_pruner: lc.cross_head_pruner.as_ref().map(|hp| {
                                    HeadPrunerWeights::zeros(
                                        d,
                                        d_other,
                                        s.head_pruner_hidden(hp),
                                        s.heads,
                                    )
                                }),
                            })
                        } else {
                            None
                        },
                        ffn: FfnWeights {
                            fc1: Linear::zeros(s.ffn, d),
                            fc2: Linear::zeros(d, s.ffn),
                            ln: LayerNormWeights::ones(d),
                        },
                    })
                    .collect();
                StreamWeights {
                    embeddings,
                    layers,
                    final_ln: if s.final_ln {
                        Some(LayerNormWeights::ones(d))
                    } else {
                        None
                    },
                    pooler: s.pooler.then(|| Linear::zeros(d, d)),
                }
            })
            .collect();
        let f = config.feature_width();
        let head = config.head.as_ref().map(|h| {
            Box::new(match *h {
                HeadConfig::Itm => HeadWeights::Itm {
                    fc: Linear::zeros(2, f),
                },
                HeadConfig::Vqa { labels, .. } => HeadWeights::Vqa {
                    fc1: Linear::zeros(f, f),
                    ln: LayerNormWeights::ones(f),
                    fc2: Linear::zeros(labels, f),
                },
            })
        });
        Ok(Weights {
            config: config.clone(),
            streams,
            head,
        })
    }

    fn visit(&mut self, f: &mut Visitor) {
        let names: Vec<String> = self.config.streams.iter().map(|s| s.name.clone()).collect();
        for (sw, name) in self.streams.iter_mut().zip(&names) {
            match &mut sw.embeddings {
                EmbeddingWeights::None => {}
                EmbeddingWeights::Vit {
                    patch,
                    cls,
                    position,
                    ln,
                } => {
                    let p = format!("{name}.embeddings.patch");
                    if patch.bias.is_empty() {
                        f(
                            &format!("{p}.weight"),
                            &[patch.out, patch.inp],
                            Init::Linear,
                            &mut patch.weight,
                        );
                    } else {
                        visit_linear(&p, patch, f);
                    }
                    let d = cls.len();
                    f(&format!("{name}.embeddings.cls"), &[d], Init::Linear, cls);
                    f(
                        &format!("{name}.embeddings.position"),
                        &[position.len() / d.max(1), d],
                        Init::Linear,
                        position,
                    );
                    if let Some(ln) = ln {
                        visit_ln(&format!("{name}.embeddings.ln"), ln, f, false);
                    }
                }
                EmbeddingWeights::Transform {
                    transform,
                    type_vector,
                } => {
                    visit_linear(&format!("{name}.embeddings.transform"), transform, f);
                    if let Some(t) = type_vector {
                        let d = t.len();
                        f(
                            &format!("{name}.embeddings.type_vector"),
                            &[d],
                            Init::Linear,
                            t,
                        );
                    }
                }
                EmbeddingWeights::Bert {
                    word,
                    position,
                    token_type,
                    ln,
                } => {
                    let d = ln.gamma.len().max(1);
                    for (n, t) in [
                        ("word", word),
                        ("position", position),
                        ("token_type", token_type),
                    ] {
                        if t.is_empty() && n == "token_type" {
                            continue; // no token types (BLIP's text encoder)
                        }
                        let shape = [t.len() / d, d];
                        f(&format!("{name}.embeddings.{n}"), &shape, Init::Linear, t);
                    }
                    visit_ln(&format!("{name}.embeddings.ln"), ln, f, false);
                }
            }
            for (l, lw) in sw.layers.iter_mut().enumerate() {
                let p = format!("{name}.layers.{l}");
                if let Some(tp) = &mut lw.token_pruner {
                    visit_token_pruner(&format!("{p}.token_pruner"), tp, f);
                }
                let sa = &mut lw.self_attn;
                visit_linear(&format!("{p}.self_attn.qkv"), &mut sa.qkv, f);
                visit_linear(&format!("{p}.self_attn.out"), &mut sa.out, f);
                visit_ln(&format!("{p}.self_attn.ln"), &mut sa.ln, f, false);
                if let Some(hp) = &mut sa.head_pruner {
                    visit_head_pruner(&format!("{p}.self_attn.head_pruner"), hp, f);
                }
                if let Some(ca) = &mut lw.cross_attn {
                    visit_linear(&format!("{p}.cross_attn.q"), &mut ca.q, f);
                    visit_linear(&format!("{p}.cross_attn.kv"), &mut ca.kv, f);
                    visit_linear(&format!("{p}.cross_attn.out"), &mut ca.out, f);
                    visit_ln(&format!("{p}.cross_attn.ln"), &mut ca.ln, f, false);
                    if let Some(hp) = &mut ca.head_pruner {
                        visit_head_pruner(&format!("{p}.cross_attn.head_pruner"), hp, f);
                    }
                }
                visit_linear(&format!("{p}.ffn.fc1"), &mut lw.ffn.fc1, f);
                visit_linear(&format!("{p}.ffn.fc2"), &mut lw.ffn.fc2, f);
                visit_ln(&format!("{p}.ffn.ln"), &mut lw.ffn.ln, f, false);
            }
            if let Some(ln) = &mut sw.final_ln {
                visit_ln(&format!("{name}.final_ln"), ln, f, false);
            }
            if let Some(p) = &mut sw.pooler {
                visit_linear(&format!("{name}.pooler"), p, f);
            }
        }
        match self.head.as_deref_mut() {
            None => {}
            Some(HeadWeights::Itm { fc }) => visit_linear("head.fc", fc, f),
            Some(HeadWeights::Vqa { fc1, ln, fc2 }) => {
                visit_linear("head.fc1", fc1, f);
                visit_ln("head.ln", ln, f, false);
                visit_linear("head.fc2", fc2, f);
            }
        }
    }

    /// Element counts of every tensor, in the order of the naming scheme
    /// (a read-only mirror of the visitor, for [`Weights::check`]).
    fn data_lens(&self) -> Vec<usize> {
        fn ln(v: &mut Vec<usize>, l: &LayerNormWeights) {
            v.extend([l.gamma.len(), l.beta.len()]);
        }
        fn lin(v: &mut Vec<usize>, l: &Linear) {
            v.extend([l.weight.len(), l.bias.len()]);
        }
        fn hp(v: &mut Vec<usize>, h: &HeadPrunerWeights) {
            v.extend([h.ln_h_gamma.len(), h.ln_h_beta.len()]);
            if let (Some(_), Some(g), Some(b)) = (h.d_other, &h.ln_hc_gamma, &h.ln_hc_beta) {
                v.extend([g.len(), b.len()]);
            }
            v.extend([h.w1.len(), h.b1.len(), h.w2.len(), h.b2.len()]);
        }
        let mut v = Vec::new();
        for sw in &self.streams {
            match &sw.embeddings {
                EmbeddingWeights::None => {}
                EmbeddingWeights::Vit {
                    patch,
                    cls,
                    position,
                    ln: l,
                } => {
                    if patch.bias.is_empty() {
                        v.push(patch.weight.len());
                    } else {
                        lin(&mut v, patch);
                    }
                    v.extend([cls.len(), position.len()]);
                    if let Some(l) = l {
                        ln(&mut v, l);
                    }
                }
                EmbeddingWeights::Bert {
                    word,
                    position,
                    token_type,
                    ln: l,
                } => {
                    v.extend([word.len(), position.len()]);
                    if !token_type.is_empty() {
                        v.push(token_type.len());
                    }
                    ln(&mut v, l);
                }
                EmbeddingWeights::Transform {
                    transform,
                    type_vector,
                } => {
                    lin(&mut v, transform);
                    if let Some(t) = type_vector {
                        v.push(t.len());
                    }
                }
            }
            for lw in &sw.layers {
                if let Some(t) = &lw.token_pruner {
                    v.extend([t.ln_p_gamma.len(), t.ln_p_beta.len()]);
                    if let (Some(_), Some(g), Some(b)) = (t.d_other, &t.ln_c_gamma, &t.ln_c_beta) {
                        v.extend([g.len(), b.len()]);
                    }
                    v.extend([t.w1x.len(), t.w1s.len()]);
                    if let (Some(_), Some(w)) = (t.d_other, &t.w1c) {
                        v.push(w.len());
                    }
                    v.extend([t.b1.len(), t.w2.len(), 1]);
                }
                lin(&mut v, &lw.self_attn.qkv);
                lin(&mut v, &lw.self_attn.out);
                ln(&mut v, &lw.self_attn.ln);
                if let Some(h) = &lw.self_attn.head_pruner {
                    hp(&mut v, h);
                }
                if let Some(ca) = &lw.cross_attn {
                    lin(&mut v, &ca.q);
                    lin(&mut v, &ca.kv);
                    lin(&mut v, &ca.out);
                    ln(&mut v, &ca.ln);
                    if let Some(h) = &ca.head_pruner {
                        hp(&mut v, h);
                    }
                }
                lin(&mut v, &lw.ffn.fc1);
                lin(&mut v, &lw.ffn.fc2);
                ln(&mut v, &lw.ffn.ln);
            }
            if let Some(l) = &sw.final_ln {
                ln(&mut v, l);
            }
            if let Some(p) = &sw.pooler {
                lin(&mut v, p);
            }
        }
        match self.head.as_deref() {
            None => {}
            Some(HeadWeights::Itm { fc }) => lin(&mut v, fc),
            Some(HeadWeights::Vqa { fc1, ln: l, fc2 }) => {
                lin(&mut v, fc1);
                ln(&mut v, l);
                lin(&mut v, fc2);
            }
        }
        v
    }

    /// Checks that every tensor of these weights has the size its config
    /// asks for (weights built by hand or modified through the public fields),
    /// listing every mismatch in [`Error::Weights`]. [`Weights::zeros`],
    /// [`Weights::random`] and the loaders always produce consistent weights.
    pub fn check(&self) -> Result<()> {
        let specs = Self::tensor_specs(&self.config)?;
        let lens = self.data_lens();
        let mut errs = Vec::new();
        if specs.len() != lens.len() {
            errs.push(format!(
                "weights hold {} tensors but the config needs {} (pruners or layers differ)",
                lens.len(),
                specs.len()
            ));
        } else {
            for ((name, shape), len) in specs.iter().zip(&lens) {
                let want: usize = shape.iter().product();
                if want != *len {
                    errs.push(format!(
                        "tensor `{name}` holds {len} values, expected {want} ({shape:?})"
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Weights(errs))
        }
    }

    /// Every tensor name the config needs, with its shape, in a fixed order.
    pub fn tensor_specs(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let mut w = Weights::zeros(config)?;
        let mut out = Vec::new();
        w.visit(&mut |n, s, _, _| out.push((n.to_string(), s.to_vec())));
        Ok(out)
    }

    /// Every tensor as `(name, shape, data)`, in the scheme's order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut me = self.clone();
        let mut out = Vec::new();
        me.visit(&mut |n, s, _, d| out.push((n.to_string(), s.to_vec(), d.clone())));
        out
    }

    /// Deterministic random weights for `config` from `seed`.
    ///
    /// Each tensor draws from its own generator seeded by `seed` and the
    /// tensor's name, so values do not depend on the order of tensors.
    /// Linears and embeddings N(0, 0.02); biases N(0, 0.02); LayerNorm gamma
    /// 1 + N(0, 0.02), beta N(0, 0.02). Pruners get larger scales so that
    /// their scores spread: LN beta N(0, 0.5), first layer N(0, 1/sqrt(in)),
    /// output N(0, 1.5/sqrt(in)), token pruner `b2 = 0.4` and head pruner
    /// `b2 = 0.6`, so a threshold of 0.5 keeps a nontrivial fraction (about
    /// 55-65% of tokens, most heads).
    pub fn random(config: &ModelConfig, seed: u64) -> Result<Self> {
        let mut w = Weights::zeros(config)?;
        w.visit(&mut |name, shape, init, data| {
            let base = seed ^ fnv1a(name.as_bytes());
            let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
            // Fixed-size chunks, each with its own generator: the values do
            // not depend on the number of threads.
            data.par_chunks_mut(RANDOM_CHUNK)
                .enumerate()
                .for_each(|(ci, chunk)| {
                    let mut rng = Rng::new(Rng::new(base ^ ci as u64).next_u64());
                    for x in chunk.iter_mut() {
                        *x = match init {
                            Init::Linear | Init::Bias | Init::Beta => 0.02 * rng.normal(),
                            Init::Gamma => 1.0 + 0.02 * rng.normal(),
                            Init::PrunerBeta => 0.5 * rng.normal(),
                            Init::PrunerW1 => rng.normal() / fan_in.sqrt(),
                            Init::PrunerW2 => 1.5 * rng.normal() / fan_in.sqrt(),
                            Init::Const(c) => c,
                        };
                    }
                });
        });
        Ok(w)
    }

    /// Serialises every tensor as f32 safetensors bytes.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        tensors_to_safetensors(self.tensors(), None)
    }
}

/// f32 tensors `(name, shape, data)` as safetensors bytes, with optional
/// string metadata (the file header's `__metadata__`).
pub(crate) fn tensors_to_safetensors(
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (n, s, b) in &bytes {
        let v = safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| {
            Error::Safetensors {
                context: n.clone(),
                message: e.to_string(),
            }
        })?;
        views.push((n.clone(), v));
    }
    safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
        context: "serialize".into(),
        message: e.to_string(),
    })
}

impl Weights {
    /// Writes [`Weights::to_safetensors_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = path.as_ref();
        let b = self.to_safetensors_bytes()?;
        std::fs::write(p, b).map_err(|e| Error::io(p, e))
    }

    /// Loads weights for `config` from a safetensors file (our naming scheme).
    pub fn load(config: &ModelConfig, path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        Self::from_safetensors_bytes(config, &bytes, &p.display().to_string())
    }

    /// Loads weights for `config` from safetensors bytes (our naming scheme).
    /// f32, f16 and bf16 tensors are accepted. Every problem (missing tensor,
    /// wrong shape, unsupported dtype, NaN/Inf, unexpected name) is reported
    /// at once in [`Error::Weights`].
    pub fn from_safetensors_bytes(
        config: &ModelConfig,
        bytes: &[u8],
        context: &str,
    ) -> Result<Self> {
        let map = read_safetensors(bytes, context)?;
        Self::from_tensor_map(config, map, &mut Vec::new())
    }

    /// Builds weights from named tensors, checking everything against the
    /// config; `errs` may already hold problems found by the caller.
    pub(crate) fn from_tensor_map(
        config: &ModelConfig,
        mut map: BTreeMap<String, RawTensor>,
        errs: &mut Vec<String>,
    ) -> Result<Self> {
        let mut w = Weights::zeros(config)?;
        w.visit(&mut |name, shape, _, data| match map.remove(name) {
            None => errs.push(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            )),
            Some(t) => {
                if t.shape != shape {
                    errs.push(format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.shape
                    ));
                    return;
                }
                match t.to_f32() {
                    Err(msg) => errs.push(format!("tensor `{name}`: {msg}")),
                    Ok(v) => {
                        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                            errs.push(format!(
                                "tensor `{name}` holds a non-finite value ({}) at element {i}",
                                v[i]
                            ));
                        } else if v.len() == data.len() {
                            *data = v;
                        } else {
                            errs.push(format!("tensor `{name}` has the wrong number of elements"));
                        }
                    }
                }
            }
        });
        for name in map.keys() {
            errs.push(format!("unexpected tensor `{name}`"));
        }
        if errs.is_empty() {
            Ok(w)
        } else {
            Err(Error::Weights(std::mem::take(errs)))
        }
    }

    /// Loads a HuggingFace BERT/RoBERTa checkpoint as it is, for a config
    /// from [`ModelConfig::from_hf_bert_config`] (an `Encoder` with one BERT
    /// stream). Names with or without the `bert.`/`roberta.` prefix are
    /// accepted; `query`/`key`/`value` are concatenated into the fused QKV;
    /// `pooler.*`, `cls.*`, `lm_head.*` and `*.position_ids` are ignored.
    /// Pruner tensors, if the config has pruners, are read under our own
    /// names (`text.layers.N.token_pruner.w1x`, ...).
    pub fn load_hf_bert(config: &ModelConfig, path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        Self::from_hf_bert_bytes(config, &bytes, &p.display().to_string())
    }

    /// [`Weights::load_hf_bert`] on bytes.
    pub fn from_hf_bert_bytes(config: &ModelConfig, bytes: &[u8], context: &str) -> Result<Self> {
        let s = match (config.kind.clone(), config.streams.first()) {
            (super::config::ModelKind::Encoder, Some(s))
                if matches!(s.embedding, EmbeddingConfig::Bert { .. }) =>
            {
                s.clone()
            }
            _ => {
                return Err(Error::Config(
                    "HuggingFace BERT loading needs an encoder config with a BERT stream".into(),
                ))
            }
        };
        let raw = read_safetensors(bytes, context)?;
        let (map, mut errs) = map_hf_bert(&s, raw);
        Self::from_tensor_map(config, map, &mut errs)
    }
}

fn map_hf_bert(
    s: &StreamConfig,
    raw: BTreeMap<String, RawTensor>,
) -> (BTreeMap<String, RawTensor>, Vec<String>) {
    let sn = &s.name;
    let mut out = BTreeMap::new();
    let mut errs = Vec::new();
    // query/key/value pieces per layer, concatenated afterwards.
    let mut qkv: BTreeMap<(usize, &'static str), [Option<RawTensor>; 3]> = BTreeMap::new();
    for (name, t) in raw {
        if name.starts_with(&format!("{sn}.")) {
            out.insert(name, t);
            continue;
        }
        let n = name
            .strip_prefix("bert.")
            .or_else(|| name.strip_prefix("roberta."))
            .unwrap_or(&name);
        if n.starts_with("pooler.")
            || n.starts_with("cls.")
            || n.starts_with("lm_head.")
            || n.ends_with("position_ids")
        {
            continue;
        }
        let n = n
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias");
        let mapped = match n.as_str() {
            "embeddings.word_embeddings.weight" => Some(format!("{sn}.embeddings.word")),
            "embeddings.position_embeddings.weight" => Some(format!("{sn}.embeddings.position")),
            "embeddings.token_type_embeddings.weight" => {
                Some(format!("{sn}.embeddings.token_type"))
            }
            "embeddings.LayerNorm.weight" => Some(format!("{sn}.embeddings.ln.weight")),
            "embeddings.LayerNorm.bias" => Some(format!("{sn}.embeddings.ln.bias")),
            _ => None,
        };
        if let Some(m) = mapped {
            out.insert(m, t);
            continue;
        }
        let parsed = n.strip_prefix("encoder.layer.").and_then(|rest| {
            let (l, tail) = rest.split_once('.')?;
            Some((l.parse::<usize>().ok()?, tail.to_string()))
        });
        let Some((l, tail)) = parsed else {
            errs.push(format!("unexpected tensor `{name}` in a BERT checkpoint"));
            continue;
        };
        let p = format!("{sn}.layers.{l}");
        let (stem, kind) = match tail.rsplit_once('.') {
            Some((a, b)) if b == "weight" || b == "bias" => (a.to_string(), b),
            _ => {
                errs.push(format!("unexpected tensor `{name}` in a BERT checkpoint"));
                continue;
            }
        };
        let kind: &'static str = if kind == "weight" { "weight" } else { "bias" };
        let idx = match stem.as_str() {
            "attention.self.query" => Some(0),
            "attention.self.key" => Some(1),
            "attention.self.value" => Some(2),
            _ => None,
        };
        if let Some(i) = idx {
            let e = qkv.entry((l, kind)).or_default();
            e[i] = Some(t);
            continue;
        }
        let ours = match stem.as_str() {
            "attention.output.dense" => "self_attn.out",
            "attention.output.LayerNorm" => "self_attn.ln",
            "intermediate.dense" => "ffn.fc1",
            "output.dense" => "ffn.fc2",
            "output.LayerNorm" => "ffn.ln",
            _ => {
                errs.push(format!("unexpected tensor `{name}` in a BERT checkpoint"));
                continue;
            }
        };
        out.insert(format!("{p}.{ours}.{kind}"), t);
    }
    for ((l, kind), parts) in qkv {
        let name = format!("{sn}.layers.{l}.self_attn.qkv.{kind}");
        let mut data = Vec::new();
        let mut shape0 = 0;
        let mut rest: Option<Vec<usize>> = None;
        let mut ok = true;
        for (i, part) in parts.into_iter().enumerate() {
            let which = ["query", "key", "value"][i];
            match part {
                None => {
                    errs.push(format!(
                        "missing tensor `encoder.layer.{l}.attention.self.{which}.{kind}`"
                    ));
                    ok = false;
                }
                Some(t) => match t.to_f32() {
                    Err(m) => {
                        errs.push(format!(
                            "tensor `encoder.layer.{l}.attention.self.{which}.{kind}`: {m}"
                        ));
                        ok = false;
                    }
                    Ok(v) => {
                        let tail = t.shape.get(1..).map(|x| x.to_vec()).unwrap_or_default();
                        if rest.as_ref().is_some_and(|r| *r != tail) || t.shape.is_empty() {
                            errs.push(format!(
                                "tensor `encoder.layer.{l}.attention.self.{which}.{kind}` has shape {:?}, inconsistent with its siblings",
                                t.shape
                            ));
                            ok = false;
                        }
                        rest = Some(tail);
                        shape0 += t.shape.first().copied().unwrap_or(0);
                        data.extend(v);
                    }
                },
            }
        }
        if ok {
            let mut shape = vec![shape0];
            shape.extend(rest.unwrap_or_default());
            out.insert(name, RawTensor::from_f32(shape, &data));
        }
    }
    (out, errs)
}

/// A tensor as read from a file, not yet converted.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<u8>,
}

impl RawTensor {
    pub(crate) fn from_f32(shape: Vec<usize>, v: &[f32]) -> Self {
        RawTensor {
            dtype: Dtype::F32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub(crate) fn to_f32(&self) -> std::result::Result<Vec<f32>, String> {
        match self.dtype {
            Dtype::F32 => Ok(self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            Dtype::F16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            Dtype::BF16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            d => Err(format!(
                "unsupported dtype {d:?} (only F32, F16 and BF16 are accepted)"
            )),
        }
    }
}

/// Refuses a safetensors header that names a tensor (or `__metadata__`)
/// more than once: the parser keeps the last entry and drops the others
/// without a word. A header that is not a JSON object is left to the
/// parser to report.
pub(crate) fn check_unique_names(bytes: &[u8], context: &str) -> Result<()> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Names(Vec<String>);
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> Result<Vec<String>, A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                self.0.push(k);
            }
            Ok(self.0)
        }
    }

    let Some(len) = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
    else {
        return Ok(());
    };
    let Some(header) = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Ok(());
    };
    let mut de = serde_json::Deserializer::from_slice(header);
    let Ok(mut names) = de.deserialize_map(Names(Vec::new())) else {
        return Ok(());
    };
    names.sort_unstable();
    let mut dups: Vec<&str> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].as_str())
        .collect();
    dups.dedup();
    if dups.is_empty() {
        return Ok(());
    }
    Err(Error::Safetensors {
        context: context.to_string(),
        message: format!(
            "the header names {} more than once ({}); each name may appear once",
            if dups.len() == 1 {
                "a tensor"
            } else {
                "tensors"
            },
            dups.iter()
                .map(|d| format!("`{d}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

pub(crate) fn read_safetensors(bytes: &[u8], context: &str) -> Result<BTreeMap<String, RawTensor>> {
    check_unique_names(bytes, context)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        context: context.to_string(),
        message: e.to_string(),
    })?;
    let mut map = BTreeMap::new();
    for (name, view) in st.iter() {
        map.insert(
            name.to_string(),
            RawTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            },
        );
    }
    Ok(map)
}

/// FNV-1a hash of a name (stable across platforms and runs).
fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A small deterministic generator: splitmix64 with Box-Muller normals.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    spare: Option<f32>,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare: None,
        }
    }

    /// Next 64 random bits (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some((r * t.sin()) as f32);
        (r * t.cos()) as f32
    }

    /// `n` standard normals.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Tensors by name, for tests and tools that build files by hand.
pub fn tensor_map(w: &Weights) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    w.tensors()
        .into_iter()
        .map(|(n, s, d)| (n, (s, d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{preset, PRESETS};

    #[test]
    fn min_bytes_is_a_close_lower_bound() {
        for name in PRESETS {
            let c = preset(name).unwrap();
            for c in [c.clone(), c.with_default_pruners()] {
                let exact: usize = Weights::tensor_specs(&c)
                    .unwrap()
                    .iter()
                    .map(|(_, s)| s.iter().product::<usize>())
                    .sum();
                let exact = 4 * exact as u64;
                let low = Weights::min_bytes(&c);
                assert!(low <= exact, "{name}: {low} > {exact}");
                // Vectors and pruners left out: a large share only in the tiny presets.
                assert!(
                    low as f64 >= 0.75 * exact as f64,
                    "{name}: {low} << {exact}"
                );
            }
        }
    }

    #[test]
    fn weights_past_the_memory_limit_are_refused_before_allocating() {
        let mut c = preset("tiny-bert").unwrap();
        c.streams[0].hidden = 1 << 20;
        c.streams[0].ffn = 1 << 20;
        c.streams[0].heads = 1;
        // 3 layers of 6 (2^20)^2 f32 matrices: 72 TiB.
        assert!(Weights::min_bytes(&c) >= 72 << 40);
        let e = Weights::random(&c, 0).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("TiB"), "{e}");
    }

    #[test]
    fn repeated_names_in_a_header_are_refused() {
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut h = header.to_vec();
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        // The format's own parser takes it, keeping one `a`.
        assert_eq!(SafeTensors::deserialize(&bytes).unwrap().len(), 1);
        let e = read_safetensors(&bytes, "f").unwrap_err().to_string();
        assert!(e.contains("names a tensor more than once (`a`)"), "{e}");
        // Not a safetensors file: left to the parser.
        assert!(check_unique_names(b"short", "f").is_ok());
    }
}
