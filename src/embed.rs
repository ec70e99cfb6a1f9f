//! Sentence embeddings from a HuggingFace BERT-family sentence-transformers
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`),
//! computed by the CPU reference, pooled and normalised exactly as
//! sentence-transformers does for that model:
//!
//! - tokenisation by the model's own `tokenizer.json` (HF `tokenizers`), with
//!   special tokens, truncated to the model's `max_seq_length` (capped by the
//!   position table) and never padded: each text is its own packed sequence,
//!   so no padding token enters the mean;
//! - the pooling mode of `1_Pooling/config.json` (mean, CLS, max or
//!   mean-sqrt-len);
//! - L2 normalisation when `modules.json` lists a `Normalize` module.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationParams};

use crate::reference::{forward, ForwardOptions, Inputs, StreamInput};
use crate::spec::{EmbeddingConfig, ModelConfig, Weights};
use crate::{Error, Result};

/// How token vectors are pooled into one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the sequence's tokens.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
    /// Element-wise maximum over tokens.
    Max,
    /// Sum over tokens divided by sqrt(token count).
    MeanSqrtLen,
}

/// One text's embedding.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Embedding {
    /// The input text.
    pub text: String,
    /// Its token ids, special tokens included, after truncation.
    pub ids: Vec<u32>,
    /// The pooled (and, where the model says so, normalised) vector.
    pub embedding: Vec<f32>,
}

/// A loaded sentence-embedding model.
pub struct SentenceEmbedder {
    dir: PathBuf,
    config: ModelConfig,
    weights: Weights,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_seq_length: usize,
}

impl std::fmt::Debug for SentenceEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEmbedder")
            .field("dir", &self.dir)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_seq_length", &self.max_seq_length)
            .finish()
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&read_text(path)?).map_err(|e| Error::Json {
        context: path.display().to_string(),
        source: e,
    })
}

impl SentenceEmbedder {
    /// Loads a sentence-transformers model directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::io(
                &dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory not found (expected config.json, model.safetensors, tokenizer.json)",
                ),
            ));
        }
        let config = ModelConfig::from_hf_bert_config(&read_text(&dir.join("config.json"))?)?;
        let weights = Weights::load_hf_bert(&config, dir.join("model.safetensors"))?;
        let max_positions = match config.streams.first().map(|s| &s.embedding) {
            Some(EmbeddingConfig::Bert {
                max_positions,
                position_offset,
                ..
            }) => max_positions.saturating_sub(*position_offset),
            _ => return Err(Error::Config("not a BERT-family encoder".into())),
        };

        // sentence-transformers: modules.json names the pipeline; without it
        // the model is a plain transformer with mean pooling.
        let (pooling_dir, normalize) = match read_json(&dir.join("modules.json")) {
            Ok(modules) => {
                let list = modules.as_array().cloned().unwrap_or_default();
                let ty = |m: &serde_json::Value| {
                    m.get("type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                let pool = list
                    .iter()
                    .find(|m| ty(m).ends_with(".Pooling"))
                    .and_then(|m| m.get("path").and_then(|p| p.as_str()))
                    .map(|p| dir.join(p));
                let norm = list.iter().any(|m| ty(m).ends_with(".Normalize"));
                (pool, norm)
            }
            Err(Error::Io { .. }) => (None, false),
            Err(e) => return Err(e),
        };
        let pooling = match pooling_dir {
            Some(p) => parse_pooling(&read_json(&p.join("config.json"))?)?,
            None => Pooling::Mean,
        };
        let max_seq_length = match read_json(&dir.join("sentence_bert_config.json")) {
            Ok(v) => v
                .get("max_seq_length")
                .and_then(|x| x.as_u64())
                .map_or(max_positions, |m| (m as usize).min(max_positions)),
            Err(Error::Io { .. }) => max_positions,
            Err(e) => return Err(e),
        };

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        // The file's own truncation/padding settings are training-time
        // defaults (often pad-to-128); sentence-transformers overrides them.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;

        Ok(SentenceEmbedder {
            dir,
            config,
            weights,
            tokenizer,
            pooling,
            normalize,
            max_seq_length,
        })
    }

    /// The pooling mode read from the model directory.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether outputs are L2-normalised.
    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// Token limit per text (special tokens included).
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The encoder's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Tokenises texts (special tokens added, truncated, unpadded).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.trim().is_empty() {
                    return Err(Error::Input(vec![format!("text {i} is empty")]));
                }
                let enc = self
                    .tokenizer
                    .encode(*t, true)
                    .map_err(|e| Error::Tokenizer(format!("text {i}: {e}")))?;
                Ok(enc.get_ids().to_vec())
            })
            .collect()
    }

    /// Embeds a batch of texts with one packed forward pass of the CPU
    /// reference (no padding: every text is its own sequence).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Err(Error::Input(vec!["no texts given".into()]));
        }
        let ids = self.tokenize(texts)?;
        let mut cu = vec![0i32];
        for s in &ids {
            cu.push(cu[cu.len() - 1] + s.len() as i32);
        }
        let inputs = Inputs {
            streams: vec![StreamInput::Tokens {
                ids: ids.iter().flatten().copied().collect(),
                type_ids: None,
                cu_seqlens: cu.clone(),
            }],
            context: None,
        };
        let out = forward(&self.weights, &inputs, &ForwardOptions::default())?;
        let stream = &out.streams[0];
        let d = stream.packed.d;
        let rows = &stream.packed.rows;
        let seq_cu = &stream.packed.cu_seqlens;
        Ok(texts
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(b, (text, ids))| {
                let (s, e) = (seq_cu[b] as usize, seq_cu[b + 1] as usize);
                let mut v = pool(&rows[s * d..e * d], d, self.pooling);
                if self.normalize {
                    // sentence-transformers: x / max(||x||, 1e-12).
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                Embedding {
                    text: text.to_string(),
                    ids,
                    embedding: v,
                }
            })
            .collect())
    }
}

fn parse_pooling(v: &serde_json::Value) -> Result<Pooling> {
    let on = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    let modes = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
    ];
    let chosen: Vec<Pooling> = modes
        .iter()
        .filter(|(k, _)| on(k))
        .map(|(_, p)| *p)
        .collect();
    match chosen.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::Config(
            "pooling config enables no pooling mode".into(),
        )),
        _ => Err(Error::Config(
            "pooling config enables several modes at once (concatenated pooling is not supported)"
                .into(),
        )),
    }
}

/// Pools `[n, d]` token rows into one vector.
fn pool(rows: &[f32], d: usize, mode: Pooling) -> Vec<f32> {
    let n = rows.len() / d;
    let mut v = vec![0f32; d];
    match mode {
        Pooling::Cls => v.copy_from_slice(&rows[..d]),
        Pooling::Max => {
            v.fill(f32::NEG_INFINITY);
            for r in rows.chunks(d) {
                for (a, &b) in v.iter_mut().zip(r) {
                    *a = a.max(b);
                }
            }
        }
        Pooling::Mean | Pooling::MeanSqrtLen => {
            for r in rows.chunks(d) {
                for (a, &b) in v.iter_mut().zip(r) {
                    *a += b;
                }
            }
            let div = if mode == Pooling::Mean {
                n as f32
            } else {
                (n as f32).sqrt()
            };
            v.iter_mut().for_each(|a| *a /= div.max(1e-9));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        let rows = [1.0, -2.0, 3.0, 4.0, 5.0, 0.0];
        assert_eq!(pool(&rows, 2, Pooling::Cls), vec![1.0, -2.0]);
        assert_eq!(pool(&rows, 2, Pooling::Max), vec![5.0, 4.0]);
        assert_eq!(pool(&rows, 2, Pooling::Mean), vec![3.0, 2.0 / 3.0]);
        let s = 3f32.sqrt();
        assert_eq!(pool(&rows, 2, Pooling::MeanSqrtLen), vec![9.0 / s, 2.0 / s]);
    }

    #[test]
    fn pooling_config_parsing() {
        let v =
            serde_json::json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false});
        assert_eq!(parse_pooling(&v).unwrap(), Pooling::Mean);
        let v = serde_json::json!({"pooling_mode_cls_token": true});
        assert_eq!(parse_pooling(&v).unwrap(), Pooling::Cls);
        assert!(parse_pooling(&serde_json::json!({})).is_err());
        let both =
            serde_json::json!({"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true});
        assert!(parse_pooling(&both).is_err());
    }
}
