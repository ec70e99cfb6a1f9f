//! HuggingFace BERT/RoBERTa checkpoints as they are published
//! ([`Weights::load_hf_bert`]): their names mapped onto the naming scheme.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::spec::config::{EmbeddingConfig, StreamConfig};
use crate::{Error, Result};

impl Weights {
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
            (crate::spec::config::ModelKind::Encoder, Some(s))
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
