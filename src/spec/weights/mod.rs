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
//!
//! One concern per file: this file holds the weight types; `layout.rs` the
//! naming scheme itself (the one visitor every tensor goes through: zeros,
//! shapes, checks), `file.rs` the safetensors format (save, load, raw
//! tensors), `hf_bert.rs` HuggingFace BERT/RoBERTa checkpoints as they are,
//! `rng.rs` the seeded random weights.

mod file;
mod hf_bert;
mod layout;
mod rng;

pub use super::config::KeepRule;
use super::config::ModelConfig;

pub(crate) use file::{check_unique_names, read_safetensors, tensors_to_safetensors, RawTensor};
pub use layout::tensor_map;
pub use rng::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{preset, PRESETS};
    use crate::Error;
    use safetensors::SafeTensors;

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
