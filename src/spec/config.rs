//! Model configurations: plain serde data (JSON), validated before use.
//!
//! A [`ModelConfig`] is a [`ModelKind`] plus one [`StreamConfig`] per stream.
//! Every stream carries its own sizes, its embedding (if any), and one
//! [`LayerConfig`] per layer saying which pruners run there. See
//! `docs/FORMATS.md` for the schema with defaults and examples.

use serde::{Deserialize, Serialize};

use super::parse::parse_config;
use super::presets::layers;
pub use super::presets::{preset, PRESETS};
use crate::{Error, Result};

/// How a stream's rows are kept by its token pruner (DESIGN.md, token pruner).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum KeepRule {
    /// Keep row `i` iff `sigmoid(s_i) > tau`.
    Threshold {
        /// The probability threshold (default 0.5 in presets).
        tau: f32,
    },
    /// Keep `k = max(1, ceil(rho * n))` rows per sequence, `rho * n` computed
    /// in f32 (`(rho * n as f32).ceil()`), `k` clamped to `n`.
    Budget {
        /// The fraction of rows kept, in `(0, 1]`.
        rho: f32,
    },
}

impl KeepRule {
    /// The budget `k` for a sequence of `n` rows (only meaningful for
    /// [`KeepRule::Budget`]; for a threshold it returns `n`).
    pub fn budget(&self, n: usize) -> usize {
        match *self {
            KeepRule::Threshold { .. } => n,
            KeepRule::Budget { rho } => {
                if n == 0 {
                    return 0;
                }
                let k = (rho * n as f32).ceil();
                let k = if k.is_finite() && k > 0.0 {
                    k as usize
                } else {
                    1
                };
                k.clamp(1, n)
            }
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_tau_h() -> f32 {
    0.5
}
fn default_min_heads() -> usize {
    1
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_head_eps() -> f32 {
    1e-5
}

/// The activation of a stream's FFN (the pruners' MLPs always use the erf
/// GELU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU, erf form `0.5 x (1 + erf(x / sqrt 2))` (BERT, ViT, BLIP, METER's fusion).
    #[default]
    Gelu,
    /// CLIP's quick GELU `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl Activation {
    /// Whether this is the default ([`Activation::Gelu`]).
    pub fn is_default(&self) -> bool {
        *self == Activation::Gelu
    }
}

/// A token pruner placed before a layer of one stream.
///
/// Read from JSON as `{"rule": "threshold", "tau": 0.5}` or
/// `{"rule": "budget", "rho": 0.5}` plus the optional fields; any other
/// field (a `rho` on a threshold rule, a misspelt `keep_first`) is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TokenPrunerFields")]
pub struct TokenPrunerConfig {
    /// The keep rule (`{"rule": "threshold", "tau": 0.5}` or `{"rule": "budget", "rho": 0.5}`).
    #[serde(flatten)]
    pub rule: KeepRule,
    /// Always keep the sequence's current first row (default true).
    #[serde(default = "default_true")]
    pub keep_first: bool,
    /// Hidden width `Hs` of the pruner MLP (default `hidden / 2`).
    #[serde(default)]
    pub hidden: Option<usize>,
}

/// A token pruner's fields as a config file spells them (the keep rule's
/// tag and parameters side by side, so that every unknown or misplaced
/// field is refused: serde cannot deny unknown fields through `flatten`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenPrunerFields {
    rule: String,
    #[serde(default)]
    tau: Option<f32>,
    #[serde(default)]
    rho: Option<f32>,
    #[serde(default = "default_true")]
    keep_first: bool,
    #[serde(default)]
    hidden: Option<usize>,
}

impl TryFrom<TokenPrunerFields> for TokenPrunerConfig {
    type Error = String;

    fn try_from(f: TokenPrunerFields) -> std::result::Result<Self, String> {
        let rule = match (f.rule.as_str(), f.tau, f.rho) {
            ("threshold", Some(tau), None) => KeepRule::Threshold { tau },
            ("budget", None, Some(rho)) => KeepRule::Budget { rho },
            ("threshold", _, Some(_)) => {
                return Err("a `threshold` rule takes `tau`, not `rho`".into())
            }
            ("threshold", None, None) => return Err("a `threshold` rule needs `tau`".into()),
            ("budget", Some(_), _) => return Err("a `budget` rule takes `rho`, not `tau`".into()),
            ("budget", None, None) => return Err("a `budget` rule needs `rho`".into()),
            (other, _, _) => {
                return Err(format!(
                    "unknown variant `{other}`, expected `threshold` or `budget`"
                ))
            }
        };
        Ok(TokenPrunerConfig {
            rule,
            keep_first: f.keep_first,
            hidden: f.hidden,
        })
    }
}

/// A head pruner for one attention module (self or cross) of a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadPrunerConfig {
    /// Head `j` is active iff `sigmoid(a_j) > tau_h` (default 0.5).
    #[serde(default = "default_tau_h")]
    pub tau_h: f32,
    /// At least this many heads stay active (default 1).
    #[serde(default = "default_min_heads")]
    pub min_heads: usize,
    /// Hidden width `hh` of the pruner MLP (default `hidden / 2`).
    #[serde(default)]
    pub hidden: Option<usize>,
}

/// Which pruners run at one layer of one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// Token pruner on the rows entering the layer.
    #[serde(default)]
    pub token_pruner: Option<TokenPrunerConfig>,
    /// Head pruner of the self-attention module.
    #[serde(default)]
    pub self_head_pruner: Option<HeadPrunerConfig>,
    /// Head pruner of the cross-attention module (cross layers only).
    #[serde(default)]
    pub cross_head_pruner: Option<HeadPrunerConfig>,
}

/// How a stream's input rows are produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EmbeddingConfig {
    /// No embedding: the stream takes packed rows `[total, hidden]`.
    None,
    /// ViT: patch embedding (a GEMM over `patch x patch x channels` patches,
    /// flattened channel-major `(c, ky, kx)` like a PyTorch conv weight), a CLS
    /// row, position embeddings for `1 + patches` rows.
    Vit {
        /// Image height = width in pixels.
        image_size: usize,
        /// Patch side in pixels.
        patch_size: usize,
        /// Input channels (3).
        channels: usize,
        /// Whether the patch projection has a bias (default true; CLIP's has
        /// none).
        #[serde(default = "default_true", skip_serializing_if = "is_true")]
        patch_bias: bool,
        /// A LayerNorm over the embedded rows before the first layer (CLIP's
        /// `ln_pre`; default false).
        #[serde(default, skip_serializing_if = "is_false")]
        ln: bool,
    },
    /// BERT/RoBERTa: word + position + token-type embeddings, then LayerNorm.
    Bert {
        /// Vocabulary size.
        vocab_size: usize,
        /// Number of position embeddings.
        max_positions: usize,
        /// Number of token types (segments); 0 for none (BLIP's text
        /// encoder: no token-type table, no type ids accepted).
        type_vocab_size: usize,
        /// Position id of a sequence's first token (0 for BERT, 2 for RoBERTa).
        #[serde(default)]
        position_offset: usize,
    },
    /// An input transform in front of a fusion encoder (METER): the stream
    /// takes packed rows `input_hidden` wide and makes `W x + b` (`W`
    /// `[hidden, input_hidden]`), plus a modality-type vector when
    /// `type_vector`.
    Transform {
        /// Width of the rows it takes.
        input_hidden: usize,
        /// Add a learned modality-type vector `[hidden]` (default true).
        #[serde(default = "default_true")]
        type_vector: bool,
    },
}

impl EmbeddingConfig {
    /// Width of the rows a stream with this embedding takes as input
    /// (`Some(input_hidden)` for a transform, `Some(hidden)` for none, `None`
    /// for token and pixel inputs).
    pub fn input_width(&self, hidden: usize) -> Option<usize> {
        match *self {
            EmbeddingConfig::None => Some(hidden),
            EmbeddingConfig::Transform { input_hidden, .. } => Some(input_hidden),
            _ => None,
        }
    }

    /// Rows per image for a ViT embedding (`1 + (image/patch)^2`).
    pub fn vit_rows(&self) -> Option<usize> {
        match *self {
            EmbeddingConfig::Vit {
                image_size,
                patch_size,
                ..
            } if patch_size > 0 => {
                let g = image_size / patch_size;
                Some(1 + g * g)
            }
            _ => None,
        }
    }
}

/// One stream: a stack of layers of the same width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream's name, the first component of its tensor names (`text`, `image`).
    pub name: String,
    /// Hidden size `D`.
    pub hidden: usize,
    /// Attention heads `H` (must divide `D`).
    pub heads: usize,
    /// FFN inner size.
    pub ffn: usize,
    /// LayerNorm epsilon (all LayerNorms of the stream, pruners' included).
    pub ln_eps: f32,
    /// Pre-LN (ViT) if true, post-LN (BERT, METER, BLIP) if false.
    #[serde(default)]
    pub pre_ln: bool,
    /// A LayerNorm after the last layer (ViT; CLIP's `ln_post` as METER
    /// uses it), on every row.
    #[serde(default)]
    pub final_ln: bool,
    /// The FFN activation (default `gelu`, erf form; `quick_gelu` for CLIP).
    #[serde(default, skip_serializing_if = "Activation::is_default")]
    pub activation: Activation,
    /// A pooler on the final first row: `tanh(W x_0 + b)`, `W` `[D, D]`
    /// (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pooler: bool,
    /// The stream's embedding.
    pub embedding: EmbeddingConfig,
    /// One entry per layer.
    pub layers: Vec<LayerConfig>,
}

impl StreamConfig {
    /// Head size `D / H`.
    pub fn head_dim(&self) -> usize {
        self.hidden.checked_div(self.heads).unwrap_or(0)
    }
    /// Token pruner hidden width for a pruner config.
    pub fn token_pruner_hidden(&self, p: &TokenPrunerConfig) -> usize {
        p.hidden.unwrap_or(self.hidden / 2)
    }
    /// Head pruner hidden width for a pruner config.
    pub fn head_pruner_hidden(&self, p: &HeadPrunerConfig) -> usize {
        p.hidden.unwrap_or(self.hidden / 2)
    }
}

/// How the streams are composed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelKind {
    /// One stream of `EncoderLayer`s (ViT, BERT). No other stream: pruners see none.
    Encoder,
    /// METER's co-attention fusion encoder: two streams (`streams[0]` text,
    /// `streams[1]` image) of `CrossLayer`s in lockstep, each reading the
    /// other's previous output. Both streams must have the same number of layers.
    CoAttention,
    /// BLIP's text encoder: one stream of `CrossLayer`s whose other stream is a
    /// fixed context (the image encoder's output, `context_hidden` wide), the
    /// same at every layer and never pruned here.
    CrossEncoder {
        /// Width of the context rows.
        context_hidden: usize,
    },
    /// BLIP (ITM / VQA encoders), a whole model: `streams[0]` the image
    /// encoder (a ViT of `EncoderLayer`s, its pruners inside it), then
    /// `streams[1]` the text encoder (BERT-style embeddings, `CrossLayer`s)
    /// whose every layer cross-attends the image encoder's final rows — after
    /// the image encoder's pruning — as its fixed other stream.
    Blip,
    /// METER, a whole model: `streams[0]` the text encoder (RoBERTa) and
    /// `streams[1]` the image encoder (CLIP ViT), each a single stream of
    /// `EncoderLayer`s; then the co-attention fusion encoder, `streams[2]`
    /// (text) and `streams[3]` (image) in lockstep, whose inputs are the
    /// final rows of `streams[0]` / `streams[1]` through their input
    /// transforms ([`EmbeddingConfig::Transform`]).
    Meter,
}

/// A task head on the model's features (the concatenation, over
/// [`ModelConfig::output_streams`], of each stream's pooler output, or of
/// its final first row when it has no pooler): `F` wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadConfig {
    /// Image-text matching logits: `Linear(F, 2)` (METER's `itm_score`,
    /// BLIP's `itm_head`).
    Itm,
    /// METER's VQA classifier: `Linear(F, F)`, `LayerNorm`, GELU (erf),
    /// `Linear(F, labels)`.
    Vqa {
        /// Answer classes (3129 for VQAv2).
        labels: usize,
        /// Epsilon of the head's LayerNorm (default 1e-5, PyTorch's).
        #[serde(default = "default_head_eps")]
        ln_eps: f32,
    },
}

impl HeadConfig {
    /// Width of the logits.
    pub fn outputs(&self) -> usize {
        match *self {
            HeadConfig::Itm => 2,
            HeadConfig::Vqa { labels, .. } => labels,
        }
    }
}

/// A whole model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// How the streams compose.
    pub kind: ModelKind,
    /// The streams, in order (see [`ModelKind`]).
    pub streams: Vec<StreamConfig>,
    /// An optional task head on the output streams' features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadConfig>,
}

/// Where a [`Stage`]'s streams get their rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageInput {
    /// From the model's inputs (tokens, pixels, packed rows).
    Inputs,
    /// From the model's inputs, with a cross encoder's context made of the
    /// final rows of whole-model stream `.0` (BLIP's text encoder).
    ContextFrom(usize),
    /// Each stream's packed rows are the final rows of a whole-model stream
    /// (METER's fusion encoder: stage stream `i` takes stream `.0[i]`'s).
    RowsFrom(Vec<usize>),
}

/// One step of a whole model: a model of one of the basic kinds
/// ([`ModelKind::Encoder`], [`ModelKind::CoAttention`],
/// [`ModelKind::CrossEncoder`]) over some of the whole model's streams.
/// Basic models are one stage; BLIP is two, METER three.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// The stage as a model of its own (its streams copied, no head).
    pub config: ModelConfig,
    /// Whole-model stream index of each stage stream.
    pub streams: Vec<usize>,
    /// Where its rows come from.
    pub input: StageInput,
}

impl ModelConfig {
    /// Parses and validates a JSON config. Every object refuses fields it
    /// does not know; an unknown field or variant is an [`Error::Config`]
    /// naming it, the line and column, and the nearest known name.
    pub fn from_json(json: &str) -> Result<Self> {
        let c = parse_config(json, "model config")?;
        c.validate()?;
        Ok(c)
    }

    /// Reads, parses and validates a JSON config file (as
    /// [`ModelConfig::from_json`]).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let p = path.as_ref();
        let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let c = parse_config(&s, &p.display().to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Json {
            context: "model config".into(),
            source: e,
        })
    }

    /// Whether layers of this (basic) model are `CrossLayer`s (self-attn,
    /// cross-attn, FFN); for whole models, whether any stream's are (see
    /// [`ModelConfig::stream_is_cross`]).
    pub fn is_cross(&self) -> bool {
        !matches!(self.kind, ModelKind::Encoder)
    }

    /// Whether stream `s`'s layers are `CrossLayer`s.
    pub fn stream_is_cross(&self, s: usize) -> bool {
        match self.kind {
            ModelKind::Encoder => false,
            ModelKind::CoAttention | ModelKind::CrossEncoder { .. } => true,
            ModelKind::Blip => s == 1,
            ModelKind::Meter => s >= 2,
        }
    }

    /// Whether this is a whole model of several stages ([`ModelKind::Blip`],
    /// [`ModelKind::Meter`]).
    pub fn is_composite(&self) -> bool {
        matches!(self.kind, ModelKind::Blip | ModelKind::Meter)
    }

    /// Width of the other stream seen by stream `s` (`None` for single-stream
    /// models and streams).
    pub fn other_hidden(&self, s: usize) -> Option<usize> {
        let h = |i: usize| self.streams.get(i).map(|o| o.hidden);
        match self.kind {
            ModelKind::Encoder => None,
            ModelKind::CoAttention => h(1 - s.min(1)),
            ModelKind::CrossEncoder { context_hidden } => Some(context_hidden),
            ModelKind::Blip => (s == 1).then(|| h(0)).flatten(),
            ModelKind::Meter => match s {
                2 => h(3),
                3 => h(2),
                _ => None,
            },
        }
    }

    /// The streams that take the model's inputs (tokens, pixels or packed
    /// rows), in order: every stream of a basic model; BLIP's image and text
    /// streams; METER's two unimodal encoders (its fusion streams take
    /// their rows from them).
    pub fn input_streams(&self) -> Vec<usize> {
        match self.kind {
            ModelKind::Meter => vec![0, 1],
            _ => (0..self.streams.len()).collect(),
        }
    }

    /// The streams whose features a task head reads (and that a user reads
    /// first): every stream of a basic model; BLIP's text stream; METER's
    /// two fusion streams (text, image).
    pub fn output_streams(&self) -> Vec<usize> {
        match self.kind {
            ModelKind::Blip => vec![1],
            ModelKind::Meter => vec![2, 3],
            _ => (0..self.streams.len()).collect(),
        }
    }

    /// Width `F` of the features a head reads (sum of the output streams'
    /// hidden sizes).
    pub fn feature_width(&self) -> usize {
        self.output_streams()
            .into_iter()
            .filter_map(|s| self.streams.get(s).map(|c| c.hidden))
            .sum()
    }

    /// The stages of the model, in the order they run (see [`Stage`]). For a
    /// basic model, one stage: the model itself (without its head).
    pub fn stages(&self) -> Vec<Stage> {
        let sub = |kind: ModelKind, idx: &[usize]| ModelConfig {
            kind,
            streams: idx
                .iter()
                .filter_map(|&i| self.streams.get(i).cloned())
                .collect(),
            head: None,
        };
        match self.kind {
            ModelKind::Blip => vec![
                Stage {
                    config: sub(ModelKind::Encoder, &[0]),
                    streams: vec![0],
                    input: StageInput::Inputs,
                },
                Stage {
                    config: sub(
                        ModelKind::CrossEncoder {
                            context_hidden: self.streams.first().map_or(0, |s| s.hidden),
                        },
                        &[1],
                    ),
                    streams: vec![1],
                    input: StageInput::ContextFrom(0),
                },
            ],
            ModelKind::Meter => vec![
                Stage {
                    config: sub(ModelKind::Encoder, &[0]),
                    streams: vec![0],
                    input: StageInput::Inputs,
                },
                Stage {
                    config: sub(ModelKind::Encoder, &[1]),
                    streams: vec![1],
                    input: StageInput::Inputs,
                },
                Stage {
                    config: sub(ModelKind::CoAttention, &[2, 3]),
                    streams: vec![2, 3],
                    input: StageInput::RowsFrom(vec![0, 1]),
                },
            ],
            _ => vec![Stage {
                config: ModelConfig {
                    head: None,
                    ..self.clone()
                },
                streams: (0..self.streams.len()).collect(),
                input: StageInput::Inputs,
            }],
        }
    }

    /// The streams SmartTrim prunes: every stream of a basic model; both of
    /// BLIP's; METER's fusion streams (its unimodal encoders run dense).
    pub fn pruned_streams(&self) -> Vec<usize> {
        match self.kind {
            ModelKind::Meter => vec![2, 3],
            _ => (0..self.streams.len()).collect(),
        }
    }

    /// This config with SmartTrim-style pruners, placed as the presets place
    /// them, on every stream of [`ModelConfig::pruned_streams`] (others and
    /// existing pruners are replaced by none): with `n` layers, token
    /// pruners (threshold 0.5) at layers `n/4`, `n/2`, `3n/4` and head
    /// pruners (self, and cross in cross layers) from layer `n/6` on when
    /// `n >= 8` (BLIP's 12 layers: 3, 6, 9 and from 2); token pruners at
    /// layers `1 ..= n - 2` and head pruners from layer 1 otherwise (METER's
    /// 6 fusion layers: 1 to 4, from 1).
    pub fn with_default_pruners(&self) -> ModelConfig {
        let mut c = super::schedule::without_pruners(self);
        for s in self.pruned_streams() {
            let cross = self.stream_is_cross(s);
            let Some(sc) = c.streams.get_mut(s) else {
                continue;
            };
            let n = sc.layers.len();
            let (token_at, heads_from): (Vec<usize>, usize) = if n >= 8 {
                (vec![n / 4, n / 2, 3 * n / 4], n / 6)
            } else {
                ((1..n.saturating_sub(1)).collect(), 1)
            };
            sc.layers = layers(n, &token_at, heads_from, cross);
        }
        c
    }

    /// Layers of the deepest stream (the length of a pass's `[layer][stream]`
    /// statistics; streams with fewer layers have empty entries past theirs).
    pub fn max_layers(&self) -> usize {
        self.streams
            .iter()
            .map(|s| s.layers.len())
            .max()
            .unwrap_or(0)
    }

    /// Builds a BERT/RoBERTa encoder config (stream `text`, post-LN, no pruners)
    /// from a HuggingFace `config.json` document.
    ///
    /// Reads `vocab_size`, `hidden_size`, `num_hidden_layers`,
    /// `num_attention_heads`, `intermediate_size`, `max_position_embeddings`,
    /// `type_vocab_size` (default 2), `layer_norm_eps` (default 1e-12),
    /// `hidden_act` (must be `gelu` if present), `model_type` (`roberta` sets
    /// the position offset to `pad_token_id + 1`).
    pub fn from_hf_bert_config(json: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| Error::Json {
            context: "HuggingFace BERT config".into(),
            source: e,
        })?;
        let mut errs = Vec::new();
        let mut get = |k: &str, default: Option<u64>| -> usize {
            match v.get(k).and_then(|x| x.as_u64()).or(default) {
                Some(x) => x as usize,
                None => {
                    errs.push(format!("missing or non-integer field `{k}`"));
                    0
                }
            }
        };
        let vocab_size = get("vocab_size", None);
        let hidden = get("hidden_size", None);
        let layers = get("num_hidden_layers", None);
        let heads = get("num_attention_heads", None);
        let ffn = get("intermediate_size", None);
        let max_positions = get("max_position_embeddings", None);
        let type_vocab_size = get("type_vocab_size", Some(2));
        let pad = get("pad_token_id", Some(1));
        let eps = v
            .get("layer_norm_eps")
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-12) as f32;
        if let Some(act) = v.get("hidden_act").and_then(|x| x.as_str()) {
            if act != "gelu" {
                errs.push(format!(
                    "hidden_act `{act}` is not supported (only the erf `gelu`)"
                ));
            }
        }
        let roberta = v.get("model_type").and_then(|x| x.as_str()) == Some("roberta");
        if !errs.is_empty() {
            return Err(Error::Config(errs.join("; ")));
        }
        let c = ModelConfig {
            kind: ModelKind::Encoder,
            streams: vec![StreamConfig {
                name: "text".into(),
                hidden,
                heads,
                ffn,
                ln_eps: eps,
                pre_ln: false,
                final_ln: false,
                activation: Activation::Gelu,
                pooler: false,
                embedding: EmbeddingConfig::Bert {
                    vocab_size,
                    max_positions,
                    type_vocab_size,
                    position_offset: if roberta { pad + 1 } else { 0 },
                },
                layers: vec![LayerConfig::default(); layers],
            }],
            head: None,
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_roundtrip_json() {
        for name in PRESETS {
            let c = preset(name).unwrap();
            let j = c.to_json().unwrap();
            assert_eq!(ModelConfig::from_json(&j).unwrap(), c, "{name}");
        }
        let e = preset("nope").unwrap_err().to_string();
        assert!(e.contains("tiny-meter"), "{e}");
    }

    #[test]
    fn budget_k() {
        let r = KeepRule::Budget { rho: 0.5 };
        assert_eq!(r.budget(1), 1);
        assert_eq!(r.budget(3), 2);
        assert_eq!(r.budget(40), 20);
        assert_eq!(KeepRule::Budget { rho: 0.01 }.budget(5), 1);
        assert_eq!(KeepRule::Budget { rho: 1.0 }.budget(31), 31);
    }

    #[test]
    fn whole_models_have_stages() {
        let b = preset("blip").unwrap();
        let st = b.stages();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].config.kind, ModelKind::Encoder);
        assert_eq!(
            st[1].config.kind,
            ModelKind::CrossEncoder {
                context_hidden: 768
            }
        );
        assert_eq!(st[1].input, StageInput::ContextFrom(0));
        assert_eq!(b.other_hidden(0), None);
        assert_eq!(b.other_hidden(1), Some(768));
        assert!(!b.stream_is_cross(0) && b.stream_is_cross(1));
        assert_eq!(b.feature_width(), 768);
        let m = preset("meter-full").unwrap();
        let st = m.stages();
        assert_eq!(st.len(), 3);
        assert_eq!(st[2].streams, vec![2, 3]);
        assert_eq!(st[2].input, StageInput::RowsFrom(vec![0, 1]));
        assert_eq!(m.input_streams(), vec![0, 1]);
        assert_eq!(m.output_streams(), vec![2, 3]);
        assert_eq!(m.feature_width(), 1536);
        assert_eq!(m.max_layers(), 12);
        assert_eq!(m.streams[1].embedding.vit_rows(), Some(1297));
        assert_eq!(m.streams[1].layers.len(), 11);
        // A basic model is its own single stage, without its head.
        let t = preset("tiny-meter").unwrap();
        let st = t.stages();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].config, t);
    }

    #[test]
    fn default_pruners_match_the_presets() {
        use crate::spec::schedule::without_pruners;
        for name in ["blip", "meter-full", "meter"] {
            let c = preset(name).unwrap();
            assert_eq!(without_pruners(&c).with_default_pruners(), c, "{name}");
        }
        let t = preset("tiny-meter-full").unwrap();
        let d = t.with_default_pruners();
        assert!(d.streams[0]
            .layers
            .iter()
            .all(|l| *l == LayerConfig::default()));
        assert!(d.streams[2].layers[1].token_pruner.is_some());
        assert!(d.streams[2].layers[1].cross_head_pruner.is_some());
    }
}
