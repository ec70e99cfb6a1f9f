//! A HuggingFace `config.json` read as a [`ModelConfig`] (module docs of
//! `spec::hf`: the supported `model_type`s and their defaults).

use serde_json::Value;

use super::*;
use crate::spec::config::{Activation, EmbeddingConfig, HeadConfig, LayerConfig, StreamConfig};
use crate::{Error, Result};

/// A JSON object's fields, with transformers' defaults for missing ones.
struct Fields<'a> {
    v: &'a Value,
    what: &'a str,
    errs: &'a mut Vec<String>,
}

impl Fields<'_> {
    fn usize(&mut self, k: &str, default: Option<usize>) -> usize {
        match self.v.get(k) {
            Some(x) => match x.as_u64() {
                Some(n) => n as usize,
                None => {
                    self.errs.push(format!(
                        "{}: `{k}` is not a non-negative integer",
                        self.what
                    ));
                    0
                }
            },
            None => match default {
                Some(d) => d,
                None => {
                    self.errs
                        .push(format!("{}: missing field `{k}`", self.what));
                    0
                }
            },
        }
    }
    fn f32(&mut self, k: &str, default: f32) -> f32 {
        match self.v.get(k) {
            Some(x) => match x.as_f64() {
                Some(f) => f as f32,
                None => {
                    self.errs
                        .push(format!("{}: `{k}` is not a number", self.what));
                    default
                }
            },
            None => default,
        }
    }
    fn string(&self, k: &str, default: &str) -> String {
        self.v
            .get(k)
            .and_then(|x| x.as_str())
            .unwrap_or(default)
            .to_string()
    }
    fn activation(&mut self, default: &str) -> Activation {
        let act = self.string("hidden_act", default);
        match act.as_str() {
            "gelu" => Activation::Gelu,
            "quick_gelu" => Activation::QuickGelu,
            other => {
                self.errs.push(format!(
                    "{}: hidden_act `{other}` is not supported (only `gelu`, the erf form, and \
                     `quick_gelu`)",
                    self.what
                ));
                Activation::Gelu
            }
        }
    }
    /// `image_size` / `patch_size` may be an int or a square pair.
    fn side(&mut self, k: &str, default: usize) -> usize {
        match self.v.get(k) {
            None => default,
            Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => {
                a[0].as_u64().map_or(0, |n| n as usize)
            }
            Some(x) => match x.as_u64() {
                Some(n) => n as usize,
                None => {
                    self.errs.push(format!(
                        "{}: `{k}` must be an integer (or a square pair)",
                        self.what
                    ));
                    0
                }
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn plain_stream(
    name: &str,
    hidden: usize,
    heads: usize,
    ffn: usize,
    ln_eps: f32,
    pre_ln: bool,
    embedding: EmbeddingConfig,
    layers: usize,
) -> StreamConfig {
    StreamConfig {
        name: name.into(),
        hidden,
        heads,
        ffn,
        ln_eps,
        pre_ln,
        final_ln: pre_ln,
        activation: Activation::Gelu,
        pooler: false,
        embedding,
        layers: vec![LayerConfig::default(); layers],
    }
}

/// A ViT-style image stream from a vision config object.
fn vision_stream(
    f: &mut Fields<'_>,
    clip: bool,
    eps_default: f32,
    act_default: &str,
) -> StreamConfig {
    let hidden = f.usize("hidden_size", Some(768));
    let layers = f.usize("num_hidden_layers", Some(12));
    let heads = f.usize("num_attention_heads", Some(12));
    let ffn = f.usize("intermediate_size", Some(3072));
    let image_size = f.side("image_size", 224);
    let patch_size = f.side("patch_size", if clip { 32 } else { 16 });
    let channels = f.usize("num_channels", Some(3));
    let eps = f.f32("layer_norm_eps", eps_default);
    let act = f.activation(act_default);
    StreamConfig {
        activation: act,
        ..plain_stream(
            "image",
            hidden,
            heads,
            ffn,
            eps,
            true,
            EmbeddingConfig::Vit {
                image_size,
                patch_size,
                channels,
                patch_bias: !clip,
                ln: clip,
            },
            layers,
        )
    }
}

pub(super) fn parse_json(json: &str, context: &str) -> Result<Value> {
    serde_json::from_str(json).map_err(|e| Error::Json {
        context: context.to_string(),
        source: e,
    })
}

/// Derives our config from a HuggingFace `config.json` and the tensor names
/// of its checkpoint (which say whether optional parts are present: a ViT
/// pooler, BLIP's ITM head). No pruners.
pub fn config_from_hf(json: &str, tensor_names: &[&str]) -> Result<HfModel> {
    let v = parse_json(json, "HuggingFace config.json")?;
    let model_type = v
        .get("model_type")
        .and_then(|x| x.as_str())
        .unwrap_or("")
        .to_string();
    let has = |n: &str| {
        tensor_names
            .iter()
            .any(|t| *t == n || t.ends_with(&format!(".{n}")))
    };
    let mut errs = Vec::new();
    let (family, config) = match model_type.as_str() {
        "bert" | "roberta" => {
            let c = ModelConfig::from_hf_bert_config(json)?;
            let fam = if model_type == "roberta" {
                HfFamily::Roberta
            } else {
                HfFamily::Bert
            };
            (fam, c)
        }
        "vit" => {
            let mut f = Fields {
                v: &v,
                what: "config.json",
                errs: &mut errs,
            };
            let mut s = vision_stream(&mut f, false, 1e-12, "gelu");
            if v.get("qkv_bias").and_then(|x| x.as_bool()) == Some(false) {
                errs.push("ViT with qkv_bias = false is not supported".into());
            }
            let pooler = has("pooler.dense.weight");
            if pooler {
                let act = v
                    .get("pooler_act")
                    .and_then(|x| x.as_str())
                    .unwrap_or("tanh");
                let out = v.get("pooler_output_size").and_then(|x| x.as_u64());
                if act != "tanh" || out.is_some_and(|o| o as usize != s.hidden) {
                    errs.push(format!(
                        "ViT pooler with pooler_act `{act}` and pooler_output_size {out:?} is not \
                         supported (only tanh, hidden wide)"
                    ));
                }
            }
            s.pooler = pooler;
            (
                HfFamily::Vit,
                ModelConfig {
                    kind: ModelKind::Encoder,
                    streams: vec![s],
                    head: None,
                },
            )
        }
        "clip_vision_model" | "clip" => {
            let vc = if model_type == "clip" {
                v.get("vision_config").cloned().unwrap_or(Value::Null)
            } else {
                v.clone()
            };
            if !vc.is_object() {
                errs.push("config.json: a `clip` config needs a `vision_config` object".into());
            }
            let mut f = Fields {
                v: &vc,
                what: "vision config",
                errs: &mut errs,
            };
            let s = vision_stream(&mut f, true, 1e-5, "quick_gelu");
            (
                HfFamily::ClipVision,
                ModelConfig {
                    kind: ModelKind::Encoder,
                    streams: vec![s],
                    head: None,
                },
            )
        }
        "blip" => {
            let vc = v.get("vision_config").cloned().unwrap_or(Value::Null);
            let tc = v.get("text_config").cloned().unwrap_or(Value::Null);
            if !vc.is_object() || !tc.is_object() {
                errs.push(
                    "config.json: a `blip` config needs `vision_config` and `text_config` objects"
                        .into(),
                );
            }
            let image = {
                let mut f = Fields {
                    v: &vc,
                    what: "vision_config",
                    errs: &mut errs,
                };
                let mut s = vision_stream(&mut f, false, 1e-5, "gelu");
                // BlipVisionConfig defaults.
                if vc.get("image_size").is_none() {
                    if let EmbeddingConfig::Vit { image_size, .. } = &mut s.embedding {
                        *image_size = 384;
                    }
                }
                s
            };
            let text = {
                let mut f = Fields {
                    v: &tc,
                    what: "text_config",
                    errs: &mut errs,
                };
                let vocab_size = f.usize("vocab_size", Some(30524));
                let hidden = f.usize("hidden_size", Some(768));
                let layers = f.usize("num_hidden_layers", Some(12));
                let heads = f.usize("num_attention_heads", Some(8));
                let ffn = f.usize("intermediate_size", Some(3072));
                let max_positions = f.usize("max_position_embeddings", Some(512));
                let eps = f.f32("layer_norm_eps", 1e-12);
                let act = f.activation("gelu");
                if act != Activation::Gelu {
                    f.errs
                        .push("text_config: only hidden_act `gelu` is supported".into());
                }
                let enc = tc.get("encoder_hidden_size").and_then(|x| x.as_u64());
                if enc.is_some_and(|e| e as usize != image.hidden) {
                    errs.push(format!(
                        "text_config.encoder_hidden_size {enc:?} differs from the vision hidden \
                         size {} (BlipConfig sets them equal)",
                        image.hidden
                    ));
                }
                plain_stream(
                    "text",
                    hidden,
                    heads,
                    ffn,
                    eps,
                    false,
                    EmbeddingConfig::Bert {
                        vocab_size,
                        max_positions,
                        type_vocab_size: 0,
                        position_offset: 0,
                    },
                    layers,
                )
            };
            let head = has("itm_head.weight").then_some(HeadConfig::Itm);
            (
                HfFamily::Blip,
                ModelConfig {
                    kind: ModelKind::Blip,
                    streams: vec![image, text],
                    head,
                },
            )
        }
        other => {
            return Err(Error::Config(format!(
                "config.json: model_type `{other}` is not supported (bert, roberta, vit, \
                 clip_vision_model, clip, blip); METER checkpoints are converted with \
                 scripts/convert_meter.py"
            )))
        }
    };
    if !errs.is_empty() {
        return Err(Error::Config(errs.join("; ")));
    }
    config.validate()?;
    Ok(HfModel { family, config })
}
