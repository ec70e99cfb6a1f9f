//! Model configurations: plain serde data (JSON), validated before use.
//!
//! A [`ModelConfig`] is a [`ModelKind`] plus one [`StreamConfig`] per stream.
//! Every stream carries its own sizes, its embedding (if any), and one
//! [`LayerConfig`] per layer saying which pruners run there. See
//! `docs/FORMATS.md` for the schema with defaults and examples.

use serde::{Deserialize, Serialize};

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

/// A token pruner placed before a layer of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A head pruner for one attention module (self or cross) of a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[serde(tag = "type", rename_all = "snake_case")]
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
    },
    /// BERT/RoBERTa: word + position + token-type embeddings, then LayerNorm.
    Bert {
        /// Vocabulary size.
        vocab_size: usize,
        /// Number of position embeddings.
        max_positions: usize,
        /// Number of token types (segments).
        type_vocab_size: usize,
        /// Position id of a sequence's first token (0 for BERT, 2 for RoBERTa).
        #[serde(default)]
        position_offset: usize,
    },
}

impl EmbeddingConfig {
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
    /// A LayerNorm after the last layer (ViT).
    #[serde(default)]
    pub final_ln: bool,
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
#[serde(tag = "type", rename_all = "snake_case")]
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
}

/// A whole model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// How the streams compose.
    pub kind: ModelKind,
    /// The streams, in order (see [`ModelKind`]).
    pub streams: Vec<StreamConfig>,
}

impl ModelConfig {
    /// Parses and validates a JSON config.
    pub fn from_json(json: &str) -> Result<Self> {
        let c: ModelConfig = serde_json::from_str(json).map_err(|e| Error::Json {
            context: "model config".into(),
            source: e,
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Reads, parses and validates a JSON config file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let p = path.as_ref();
        let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let c: ModelConfig = serde_json::from_str(&s).map_err(|e| Error::Json {
            context: p.display().to_string(),
            source: e,
        })?;
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

    /// Whether layers of this model are `CrossLayer`s (self-attn, cross-attn, FFN).
    pub fn is_cross(&self) -> bool {
        !matches!(self.kind, ModelKind::Encoder)
    }

    /// Width of the other stream seen by stream `s` (`None` for single-stream models).
    pub fn other_hidden(&self, s: usize) -> Option<usize> {
        match self.kind {
            ModelKind::Encoder => None,
            ModelKind::CoAttention => self.streams.get(1 - s.min(1)).map(|o| o.hidden),
            ModelKind::CrossEncoder { context_hidden } => Some(context_hidden),
        }
    }

    /// Checks every constraint, reporting the first problem found as [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        let want = match self.kind {
            ModelKind::CoAttention => 2,
            _ => 1,
        };
        if self.streams.len() != want {
            errs.push(format!(
                "model kind {:?} needs {want} stream(s), config has {}",
                self.kind,
                self.streams.len()
            ));
        }
        if let ModelKind::CrossEncoder { context_hidden } = self.kind {
            if context_hidden == 0 {
                errs.push("context_hidden must be positive".into());
            }
        }
        if self.kind == ModelKind::CoAttention && self.streams.len() == 2 {
            if self.streams[0].layers.len() != self.streams[1].layers.len() {
                errs.push(format!(
                    "co-attention streams must have the same number of layers ({} vs {})",
                    self.streams[0].layers.len(),
                    self.streams[1].layers.len()
                ));
            }
            if self.streams[0].name == self.streams[1].name {
                errs.push("stream names must differ".into());
            }
        }
        for s in &self.streams {
            let n = &s.name;
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                errs.push(format!(
                    "stream name `{n}` must be non-empty ASCII letters, digits or `_`"
                ));
            }
            if s.hidden == 0 || s.heads == 0 || s.ffn == 0 {
                errs.push(format!(
                    "stream `{n}`: hidden, heads and ffn must be positive"
                ));
            } else if s.hidden % s.heads != 0 {
                errs.push(format!(
                    "stream `{n}`: heads ({}) must divide hidden ({})",
                    s.heads, s.hidden
                ));
            }
            if !(s.ln_eps.is_finite() && s.ln_eps > 0.0) {
                errs.push(format!("stream `{n}`: ln_eps must be positive and finite"));
            }
            match s.embedding {
                EmbeddingConfig::None => {}
                EmbeddingConfig::Vit {
                    image_size,
                    patch_size,
                    channels,
                } => {
                    if patch_size == 0 || channels == 0 || image_size == 0 {
                        errs.push(format!("stream `{n}`: ViT sizes must be positive"));
                    } else if image_size % patch_size != 0 {
                        errs.push(format!(
                            "stream `{n}`: patch_size {patch_size} must divide image_size {image_size}"
                        ));
                    }
                }
                EmbeddingConfig::Bert {
                    vocab_size,
                    max_positions,
                    type_vocab_size,
                    ..
                } => {
                    if vocab_size == 0 || max_positions == 0 || type_vocab_size == 0 {
                        errs.push(format!(
                            "stream `{n}`: vocab_size, max_positions and type_vocab_size must be positive"
                        ));
                    }
                }
            }
            for (l, lc) in s.layers.iter().enumerate() {
                if let Some(tp) = &lc.token_pruner {
                    match tp.rule {
                        KeepRule::Threshold { tau } if !(0.0..=1.0).contains(&tau) => errs.push(
                            format!("stream `{n}` layer {l}: threshold tau {tau} not in [0, 1]"),
                        ),
                        KeepRule::Budget { rho } if !(rho > 0.0 && rho <= 1.0) => errs.push(
                            format!("stream `{n}` layer {l}: budget rho {rho} not in (0, 1]"),
                        ),
                        _ => {}
                    }
                    if s.token_pruner_hidden(tp) == 0 {
                        errs.push(format!("stream `{n}` layer {l}: token pruner hidden is 0"));
                    }
                }
                for (what, hp) in [
                    ("self", &lc.self_head_pruner),
                    ("cross", &lc.cross_head_pruner),
                ] {
                    if let Some(hp) = hp {
                        if !(0.0..=1.0).contains(&hp.tau_h) {
                            errs.push(format!(
                                "stream `{n}` layer {l}: {what} head pruner tau_h {} not in [0, 1]",
                                hp.tau_h
                            ));
                        }
                        if hp.min_heads > s.heads {
                            errs.push(format!(
                                "stream `{n}` layer {l}: {what} head pruner min_heads {} exceeds heads {}",
                                hp.min_heads, s.heads
                            ));
                        }
                        if s.head_pruner_hidden(hp) == 0 {
                            errs.push(format!(
                                "stream `{n}` layer {l}: {what} head pruner hidden is 0"
                            ));
                        }
                    }
                }
                if lc.cross_head_pruner.is_some() && !self.is_cross() {
                    errs.push(format!(
                        "stream `{n}` layer {l}: cross head pruner on a model without cross-attention"
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(errs.join("; ")))
        }
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
                embedding: EmbeddingConfig::Bert {
                    vocab_size,
                    max_positions,
                    type_vocab_size,
                    position_offset: if roberta { pad + 1 } else { 0 },
                },
                layers: vec![LayerConfig::default(); layers],
            }],
        };
        c.validate()?;
        Ok(c)
    }
}

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
fn layers(n: usize, token_at: &[usize], heads_from: usize, cross: bool) -> Vec<LayerConfig> {
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
        embedding,
        layers,
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
pub fn preset(name: &str) -> Result<ModelConfig> {
    let c = match name {
        "meter" => ModelConfig {
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
                },
                layers(12, &[3, 6, 9], 2, false),
            )],
        },
        "blip-text" => ModelConfig {
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
                },
                layers(3, &[1, 2], 1, false),
            )],
        },
        "tiny-bert" => ModelConfig {
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
        _ => {
            return Err(Error::Config(format!(
                "unknown preset `{name}`; known presets: {}",
                PRESETS.join(", ")
            )))
        }
    };
    c.validate()?;
    Ok(c)
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
    fn heads_must_divide_hidden() {
        let mut c = preset("tiny-bert").unwrap();
        c.streams[0].heads = 5;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
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
}
