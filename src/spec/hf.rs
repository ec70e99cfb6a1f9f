//! HuggingFace checkpoints as they are published: a `config.json` becomes a
//! [`ModelConfig`], and the checkpoint's tensor names are mapped onto ours.
//!
//! Supported `model_type`s (the names the hub files use, transformers'
//! v4-style names, which transformers 5 still writes):
//!
//! | `model_type` | what | config |
//! | --- | --- | --- |
//! | `bert`, `roberta` | text encoder | [`ModelKind::Encoder`], stream `text` |
//! | `vit` | ViT (`ViTModel`, with or without the `vit.` prefix) | [`ModelKind::Encoder`], stream `image` (pre-LN, final LN, pooler if the checkpoint has one) |
//! | `clip_vision_model`, `clip` (its vision tower) | CLIP image encoder | [`ModelKind::Encoder`], stream `image` (`ln_pre`, no patch bias, `quick_gelu`, final LN on every row) |
//! | `blip` (`BlipForImageTextRetrieval`, `BlipForQuestionAnswering`) | BLIP's two encoders | [`ModelKind::Blip`], streams `image`, `text`; the ITM head if the checkpoint has `itm_head` |
//!
//! Sizes come from `config.json` (BLIP: its `vision_config` and
//! `text_config`); a key missing there takes transformers' default for that
//! config class, as transformers itself does when it loads the file, and
//! every tensor's shape is then checked against the derived config. Names
//! the model does not use are an error listing them, except those knowingly
//! ignored: `*.position_ids`; BERT/RoBERTa `pooler.*`, `cls.*`, `lm_head.*`;
//! BLIP `text_decoder.*` (the VQA answer decoder and its tied weights),
//! `vision_proj.*`, `text_proj.*`; CLIP `text_model.*`, `text_projection.*`,
//! `visual_projection.*`, `logit_scale`.
//!
//! Pruners are not part of these checkpoints: their tensors come under our
//! own names (`image.layers.3.token_pruner.w1x`, ...), either in the same
//! file or in a second one ([`load_model_dir`]'s `pruners`).
//!
//! [`load_model_dir`] also loads smarttrim model directories (a
//! `config.json` in smarttrim's schema and tensors under smarttrim's names,
//! as `scripts/convert_meter.py` writes for METER's checkpoints).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use super::config::{
    Activation, EmbeddingConfig, HeadConfig, HeadPrunerConfig, KeepRule, LayerConfig, ModelConfig,
    ModelKind, StreamConfig, TokenPrunerConfig,
};
use super::weights::{read_safetensors, RawTensor, Weights};
use crate::{Error, Result};

/// The metadata key under which a pruner file written by smarttrim holds the
/// whole model config (JSON) its pruners belong to.
pub const PRUNER_CONFIG_KEY: &str = "smarttrim.config";

/// Which HuggingFace model family a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfFamily {
    /// `bert`.
    Bert,
    /// `roberta`.
    Roberta,
    /// `vit`.
    Vit,
    /// `clip_vision_model`, or a whole `clip` checkpoint's vision tower.
    ClipVision,
    /// `blip`.
    Blip,
}

/// A HuggingFace checkpoint's derived description.
#[derive(Debug, Clone, PartialEq)]
pub struct HfModel {
    /// The family.
    pub family: HfFamily,
    /// The config derived from `config.json` (no pruners).
    pub config: ModelConfig,
}

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

fn parse_json(json: &str, context: &str) -> Result<Value> {
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

/// Tensors renamed to ours, and the problems found while renaming.
struct Mapper {
    out: BTreeMap<String, RawTensor>,
    errs: Vec<String>,
    /// Pieces to concatenate by rows: target name -> (source name, piece) in order.
    concat: BTreeMap<String, Vec<(String, Option<RawTensor>)>>,
}

impl Mapper {
    fn new() -> Self {
        Mapper {
            out: BTreeMap::new(),
            errs: Vec::new(),
            concat: BTreeMap::new(),
        }
    }

    fn put(&mut self, target: String, source: &str, t: RawTensor) {
        match self.out.entry(target) {
            std::collections::btree_map::Entry::Occupied(e) => self.errs.push(format!(
                "tensor `{source}` maps onto `{}`, which is given twice",
                e.key()
            )),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(t);
            }
        }
    }

    /// Reshapes when the element count matches (else the shape check reports it).
    fn put_as(&mut self, target: String, source: &str, mut t: RawTensor, shape: Vec<usize>) {
        if t.shape.iter().product::<usize>() == shape.iter().product::<usize>() {
            t.shape = shape;
        }
        self.put(target, source, t);
    }

    /// Piece `i` of `n` of `target` (rows concatenated in order).
    fn piece(&mut self, target: String, i: usize, n: usize, source: &str, t: RawTensor) {
        let e = self
            .concat
            .entry(target)
            .or_insert_with(|| vec![(String::new(), None); n]);
        if let Some(slot) = e.get_mut(i) {
            *slot = (source.to_string(), Some(t));
        }
    }

    fn unexpected(&mut self, name: &str, what: &str) {
        self.errs
            .push(format!("unexpected tensor `{name}` in a {what} checkpoint"));
    }

    /// Concatenates the collected pieces and returns the map.
    fn finish(
        mut self,
        missing_name: impl Fn(&str, usize) -> String,
    ) -> (BTreeMap<String, RawTensor>, Vec<String>) {
        for (target, parts) in std::mem::take(&mut self.concat) {
            let mut data = Vec::new();
            let mut rows = 0usize;
            let mut tail: Option<Vec<usize>> = None;
            let mut ok = true;
            for (i, (src, part)) in parts.into_iter().enumerate() {
                match part {
                    None => {
                        self.errs
                            .push(format!("missing tensor `{}`", missing_name(&target, i)));
                        ok = false;
                    }
                    Some(t) => match t.to_f32() {
                        Err(m) => {
                            self.errs.push(format!("tensor `{src}`: {m}"));
                            ok = false;
                        }
                        Ok(v) => {
                            let rest = t.shape.get(1..).map(|x| x.to_vec()).unwrap_or_default();
                            if t.shape.is_empty() || tail.as_ref().is_some_and(|r| *r != rest) {
                                self.errs.push(format!(
                                    "tensor `{src}` has shape {:?}, inconsistent with its siblings",
                                    t.shape
                                ));
                                ok = false;
                            }
                            tail = Some(rest);
                            rows += t.shape.first().copied().unwrap_or(0);
                            data.extend(v);
                        }
                    },
                }
            }
            if ok {
                let mut shape = vec![rows];
                shape.extend(tail.unwrap_or_default());
                self.out.insert(target, RawTensor::from_f32(shape, &data));
            }
        }
        (self.out, self.errs)
    }
}

/// `(stem, "weight" | "bias")` of a parameter name.
fn split_param(n: &str) -> Option<(&str, &'static str)> {
    match n.rsplit_once('.') {
        Some((a, "weight")) => Some((a, "weight")),
        Some((a, "bias")) => Some((a, "bias")),
        _ => None,
    }
}

/// `N.rest` -> `(N, rest)`.
fn layer_index(rest: &str) -> Option<(usize, &str)> {
    let (l, tail) = rest.split_once('.')?;
    Some((l.parse().ok()?, tail))
}

/// BERT-family layers (`encoder.layer.N.*`, self- and cross-attention),
/// embeddings, under stream `sn`. `n` has its model prefix removed.
fn map_bert_name(m: &mut Mapper, sn: &str, name: &str, n: &str, t: RawTensor, what: &str) {
    let n = n
        .replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias");
    let emb = match n.as_str() {
        "embeddings.word_embeddings.weight" => Some("word"),
        "embeddings.position_embeddings.weight" => Some("position"),
        "embeddings.token_type_embeddings.weight" => Some("token_type"),
        "embeddings.LayerNorm.weight" => Some("ln.weight"),
        "embeddings.LayerNorm.bias" => Some("ln.bias"),
        _ => None,
    };
    if let Some(e) = emb {
        m.put(format!("{sn}.embeddings.{e}"), name, t);
        return;
    }
    let Some((l, tail)) = n.strip_prefix("encoder.layer.").and_then(layer_index) else {
        return m.unexpected(name, what);
    };
    let Some((stem, kind)) = split_param(tail) else {
        return m.unexpected(name, what);
    };
    let p = format!("{sn}.layers.{l}");
    let qkv = |i| (format!("{p}.self_attn.qkv.{kind}"), i, 3);
    let kv = |i| (format!("{p}.cross_attn.kv.{kind}"), i, 2);
    let piece = match stem {
        "attention.self.query" => Some(qkv(0)),
        "attention.self.key" => Some(qkv(1)),
        "attention.self.value" => Some(qkv(2)),
        "crossattention.self.key" => Some(kv(0)),
        "crossattention.self.value" => Some(kv(1)),
        _ => None,
    };
    if let Some((target, i, k)) = piece {
        return m.piece(target, i, k, name, t);
    }
    let ours = match stem {
        "attention.output.dense" => "self_attn.out",
        "attention.output.LayerNorm" => "self_attn.ln",
        "crossattention.self.query" => "cross_attn.q",
        "crossattention.output.dense" => "cross_attn.out",
        "crossattention.output.LayerNorm" => "cross_attn.ln",
        "intermediate.dense" => "ffn.fc1",
        "output.dense" => "ffn.fc2",
        "output.LayerNorm" => "ffn.ln",
        _ => return m.unexpected(name, what),
    };
    m.put(format!("{p}.{ours}.{kind}"), name, t);
}

/// The HF name of piece `i` of one of our concatenated tensors (for
/// "missing tensor" messages), in BERT naming.
fn bert_piece_name(prefix: &str, target: &str, i: usize) -> String {
    let (stem, kind) = target.rsplit_once('.').unwrap_or((target, ""));
    let l = stem.split('.').nth(2).unwrap_or("?");
    if stem.ends_with("cross_attn.kv") {
        let w = ["key", "value"].get(i).copied().unwrap_or("?");
        format!("{prefix}encoder.layer.{l}.crossattention.self.{w}.{kind}")
    } else {
        let w = ["query", "key", "value"].get(i).copied().unwrap_or("?");
        format!("{prefix}encoder.layer.{l}.attention.self.{w}.{kind}")
    }
}

/// A ViT's names (prefix removed) under stream `sn` with config `s`.
fn map_vit_name(m: &mut Mapper, s: &StreamConfig, name: &str, n: &str, t: RawTensor) {
    let sn = &s.name;
    let d = s.hidden;
    let what = "ViT";
    match n {
        "embeddings.cls_token" => {
            return m.put_as(format!("{sn}.embeddings.cls"), name, t, vec![d])
        }
        "embeddings.position_embeddings" => {
            let rows = t.shape.iter().product::<usize>() / d.max(1);
            return m.put_as(format!("{sn}.embeddings.position"), name, t, vec![rows, d]);
        }
        "embeddings.patch_embeddings.projection.weight" => {
            let k = t.shape.iter().skip(1).product();
            return m.put_as(format!("{sn}.embeddings.patch.weight"), name, t, vec![d, k]);
        }
        "embeddings.patch_embeddings.projection.bias" => {
            return m.put(format!("{sn}.embeddings.patch.bias"), name, t)
        }
        "layernorm.weight" => return m.put(format!("{sn}.final_ln.weight"), name, t),
        "layernorm.bias" => return m.put(format!("{sn}.final_ln.bias"), name, t),
        "pooler.dense.weight" => return m.put(format!("{sn}.pooler.weight"), name, t),
        "pooler.dense.bias" => return m.put(format!("{sn}.pooler.bias"), name, t),
        _ => {}
    }
    let Some((l, tail)) = n.strip_prefix("encoder.layer.").and_then(layer_index) else {
        return m.unexpected(name, what);
    };
    let Some((stem, kind)) = split_param(tail) else {
        return m.unexpected(name, what);
    };
    let p = format!("{sn}.layers.{l}");
    let qkv = |i| (format!("{p}.self_attn.qkv.{kind}"), i);
    match stem {
        "attention.attention.query" => {
            let (a, i) = qkv(0);
            return m.piece(a, i, 3, name, t);
        }
        "attention.attention.key" => {
            let (a, i) = qkv(1);
            return m.piece(a, i, 3, name, t);
        }
        "attention.attention.value" => {
            let (a, i) = qkv(2);
            return m.piece(a, i, 3, name, t);
        }
        _ => {}
    }
    let ours = match stem {
        "attention.output.dense" => "self_attn.out",
        "layernorm_before" => "self_attn.ln",
        "layernorm_after" => "ffn.ln",
        "intermediate.dense" => "ffn.fc1",
        "output.dense" => "ffn.fc2",
        _ => return m.unexpected(name, what),
    };
    m.put(format!("{p}.{ours}.{kind}"), name, t);
}

/// CLIP's and BLIP's vision towers (`vision_model.` removed): the same
/// layer names, different embeddings and attention projections.
fn map_clip_blip_vision_name(
    m: &mut Mapper,
    s: &StreamConfig,
    name: &str,
    n: &str,
    t: RawTensor,
    blip: bool,
) {
    let sn = &s.name;
    let d = s.hidden;
    let what = if blip { "BLIP" } else { "CLIP" };
    match n {
        "embeddings.class_embedding" => {
            return m.put_as(format!("{sn}.embeddings.cls"), name, t, vec![d])
        }
        "embeddings.patch_embedding.weight" => {
            let k = t.shape.iter().skip(1).product();
            return m.put_as(format!("{sn}.embeddings.patch.weight"), name, t, vec![d, k]);
        }
        "embeddings.patch_embedding.bias" if blip => {
            return m.put(format!("{sn}.embeddings.patch.bias"), name, t)
        }
        "embeddings.position_embedding" | "embeddings.position_embedding.weight" => {
            let rows = t.shape.iter().product::<usize>() / d.max(1);
            return m.put_as(format!("{sn}.embeddings.position"), name, t, vec![rows, d]);
        }
        "pre_layrnorm.weight" if !blip => {
            return m.put(format!("{sn}.embeddings.ln.weight"), name, t)
        }
        "pre_layrnorm.bias" if !blip => return m.put(format!("{sn}.embeddings.ln.bias"), name, t),
        "post_layernorm.weight" => return m.put(format!("{sn}.final_ln.weight"), name, t),
        "post_layernorm.bias" => return m.put(format!("{sn}.final_ln.bias"), name, t),
        _ => {}
    }
    let Some((l, tail)) = n.strip_prefix("encoder.layers.").and_then(layer_index) else {
        return m.unexpected(name, what);
    };
    let Some((stem, kind)) = split_param(tail) else {
        return m.unexpected(name, what);
    };
    let p = format!("{sn}.layers.{l}");
    if !blip {
        let i = match stem {
            "self_attn.q_proj" => Some(0),
            "self_attn.k_proj" => Some(1),
            "self_attn.v_proj" => Some(2),
            _ => None,
        };
        if let Some(i) = i {
            return m.piece(format!("{p}.self_attn.qkv.{kind}"), i, 3, name, t);
        }
    }
    let ours = match (stem, blip) {
        ("self_attn.qkv", true) => "self_attn.qkv",
        ("self_attn.projection", true) => "self_attn.out",
        ("self_attn.out_proj", false) => "self_attn.out",
        ("layer_norm1", _) => "self_attn.ln",
        ("layer_norm2", _) => "ffn.ln",
        ("mlp.fc1", _) => "ffn.fc1",
        ("mlp.fc2", _) => "ffn.fc2",
        _ => return m.unexpected(name, what),
    };
    m.put(format!("{p}.{ours}.{kind}"), name, t);
}

/// Maps a checkpoint's tensors (HF names; ours pass through) onto our names
/// for `config` (derived by [`config_from_hf`], pruners possibly added).
fn map_hf(
    family: HfFamily,
    config: &ModelConfig,
    raw: BTreeMap<String, RawTensor>,
) -> (BTreeMap<String, RawTensor>, Vec<String>) {
    let mut m = Mapper::new();
    let ours: Vec<String> = config
        .streams
        .iter()
        .map(|s| format!("{}.", s.name))
        .collect();
    let s0 = &config.streams[0];
    for (name, t) in raw {
        if ours.iter().any(|p| name.starts_with(p.as_str())) || name.starts_with("head.") {
            m.put(name.clone(), &name, t);
            continue;
        }
        if name.ends_with("position_ids") {
            continue;
        }
        match family {
            HfFamily::Bert | HfFamily::Roberta => {
                let n = name
                    .strip_prefix("bert.")
                    .or_else(|| name.strip_prefix("roberta."))
                    .unwrap_or(&name);
                if n.starts_with("pooler.") || n.starts_with("cls.") || n.starts_with("lm_head.") {
                    continue;
                }
                let n = n.to_string();
                map_bert_name(&mut m, &s0.name, &name, &n, t, "BERT");
            }
            HfFamily::Vit => {
                let n = name.strip_prefix("vit.").unwrap_or(&name).to_string();
                map_vit_name(&mut m, s0, &name, &n, t);
            }
            HfFamily::ClipVision => {
                if name.starts_with("text_model.")
                    || name.starts_with("text_projection.")
                    || name.starts_with("visual_projection.")
                    || name == "logit_scale"
                {
                    continue;
                }
                let n = name
                    .strip_prefix("vision_model.")
                    .unwrap_or(&name)
                    .to_string();
                map_clip_blip_vision_name(&mut m, s0, &name, &n, t, false);
            }
            HfFamily::Blip => {
                if name.starts_with("text_decoder.")
                    || name.starts_with("vision_proj.")
                    || name.starts_with("text_proj.")
                {
                    continue;
                }
                if let Some(n) = name.strip_prefix("vision_model.") {
                    let n = n.to_string();
                    map_clip_blip_vision_name(&mut m, s0, &name, &n, t, true);
                } else if let Some(n) = name.strip_prefix("text_encoder.") {
                    let n = n.to_string();
                    let tn = config.streams[1].name.clone();
                    map_bert_name(&mut m, &tn, &name, &n, t, "BLIP");
                } else if let Some(kind) = name.strip_prefix("itm_head.") {
                    let kind = kind.to_string();
                    m.put(format!("head.fc.{kind}"), &name, t);
                } else {
                    m.unexpected(&name, "BLIP");
                }
            }
        }
    }
    let prefix = match family {
        HfFamily::Blip => "text_encoder.",
        _ => "",
    };
    let streams: Vec<String> = config.streams.iter().map(|s| s.name.clone()).collect();
    m.finish(|target, i| {
        let vision = streams
            .first()
            .is_some_and(|s0| target.starts_with(&format!("{s0}.")))
            && matches!(family, HfFamily::Vit | HfFamily::ClipVision);
        if vision {
            let (stem, kind) = target.rsplit_once('.').unwrap_or((target, ""));
            let l = stem.split('.').nth(2).unwrap_or("?");
            match family {
                HfFamily::Vit => format!(
                    "encoder.layer.{l}.attention.attention.{}.{kind}",
                    ["query", "key", "value"].get(i).copied().unwrap_or("?")
                ),
                _ => format!(
                    "vision_model.encoder.layers.{l}.self_attn.{}.{kind}",
                    ["q_proj", "k_proj", "v_proj"]
                        .get(i)
                        .copied()
                        .unwrap_or("?")
                ),
            }
        } else {
            bert_piece_name(prefix, target, i)
        }
    })
}

/// Weights for `config` from a HuggingFace checkpoint's safetensors bytes
/// (and, optionally, a second safetensors of pruner tensors under our
/// names). Every problem — missing or unexpected tensors, shapes, dtypes,
/// non-finite values, a tensor given in both files — is reported at once in
/// [`Error::Weights`].
pub fn hf_weights_from_bytes(
    family: HfFamily,
    config: &ModelConfig,
    bytes: &[u8],
    context: &str,
    pruners: Option<(&[u8], &str)>,
) -> Result<Weights> {
    config.validate()?;
    let mut raw = read_safetensors(bytes, context)?;
    let mut errs = Vec::new();
    if let Some((pb, pc)) = pruners {
        merge_pruners(&mut raw, pb, pc, context, &mut errs)?;
    }
    let (map, mut e) = map_hf(family, config, raw);
    errs.append(&mut e);
    Weights::from_tensor_map(config, map, &mut errs)
}

/// What a model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirFormat {
    /// A HuggingFace checkpoint (`config.json` with a `model_type`, tensors
    /// under HuggingFace's names).
    HuggingFace(HfFamily),
    /// A smarttrim model (`config.json` in smarttrim's schema, tensors under
    /// smarttrim's names), e.g. written by `scripts/convert_meter.py`.
    Smarttrim,
}

/// A model directory (`config.json` + `model.safetensors`) as loaded.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// What the directory holds.
    pub format: DirFormat,
    /// The config the directory describes (for a HuggingFace checkpoint,
    /// derived from `config.json`, with no pruners).
    pub derived: ModelConfig,
    /// The weights (their `config` is the config the model runs with).
    pub weights: Weights,
}

/// The config a pruner file carries in its metadata (written by
/// `smarttrim init-weights`), if any.
pub fn pruner_file_config(bytes: &[u8], context: &str) -> Result<Option<ModelConfig>> {
    super::weights::check_unique_names(bytes, context)?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
            context: context.to_string(),
            message: e.to_string(),
        })?;
    match meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(PRUNER_CONFIG_KEY))
    {
        None => Ok(None),
        Some(j) => ModelConfig::from_json(j).map(Some),
    }
}

/// Pruners placed as the tensors of a pruner file name them (under our
/// names): a token pruner (threshold rule, `tau` 0.5, `keep_first`) where
/// `{s}.layers.{l}.token_pruner.w1x` is present, its width from that
/// tensor; head pruners (`tau_h` 0.5, `min_heads` 1) where
/// `{s}.layers.{l}.{self_attn,cross_attn}.head_pruner.w1` is.
pub fn pruners_from_names(
    config: &ModelConfig,
    bytes: &[u8],
    context: &str,
) -> Result<ModelConfig> {
    let raw = read_safetensors(bytes, context)?;
    let mut c = config.clone();
    for s in &mut c.streams {
        let d = s.hidden;
        for (l, lc) in s.layers.iter_mut().enumerate() {
            let p = format!("{}.layers.{l}", s.name);
            if let Some(t) = raw.get(&format!("{p}.token_pruner.w1x")) {
                lc.token_pruner = Some(TokenPrunerConfig {
                    rule: KeepRule::Threshold { tau: 0.5 },
                    keep_first: true,
                    hidden: t.shape.first().copied().filter(|&h| h != d / 2),
                });
            }
            for (m, slot) in [
                ("self_attn", &mut lc.self_head_pruner),
                ("cross_attn", &mut lc.cross_head_pruner),
            ] {
                if let Some(t) = raw.get(&format!("{p}.{m}.head_pruner.w1")) {
                    *slot = Some(HeadPrunerConfig {
                        tau_h: 0.5,
                        min_heads: 1,
                        hidden: t.shape.first().copied().filter(|&h| h != d / 2),
                    });
                }
            }
        }
    }
    c.validate()?;
    Ok(c)
}

/// `a` and `b` describe the same backbone: equal once pruners are removed.
pub fn same_backbone(a: &ModelConfig, b: &ModelConfig) -> bool {
    super::schedule::without_pruners(a) == super::schedule::without_pruners(b)
}

/// The format and config a model directory describes, from its
/// `config.json` and its tensors' names (not their data): a HuggingFace
/// checkpoint ([`config_from_hf`]) or a smarttrim model (its config as it
/// is).
pub fn dir_config(config_json: &str, tensor_names: &[&str]) -> Result<(DirFormat, ModelConfig)> {
    let v = parse_json(config_json, "config.json")?;
    if v.get("model_type").is_some() {
        let m = config_from_hf(config_json, tensor_names)?;
        Ok((DirFormat::HuggingFace(m.family), m.config))
    } else if v.get("kind").is_some() && v.get("streams").is_some() {
        Ok((DirFormat::Smarttrim, ModelConfig::from_json(config_json)?))
    } else {
        Err(Error::Config(
            "config.json is neither a HuggingFace config (no `model_type`) nor a smarttrim \
             config (no `kind` and `streams`)"
                .into(),
        ))
    }
}

/// Reads a model directory's `config.json` and the tensor names of its
/// `model.safetensors` ([`dir_config`]).
pub fn read_dir_config(dir: impl AsRef<Path>) -> Result<(DirFormat, ModelConfig)> {
    let dir = dir.as_ref();
    let cpath = dir.join("config.json");
    let wpath = dir.join("model.safetensors");
    let json = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    let names = tensor_names(&bytes, &wpath.display().to_string())?;
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    dir_config(&json, &names)
}

/// Loads a model directory (`config.json` and `model.safetensors`) as it
/// is: a HuggingFace checkpoint, or a smarttrim model such as
/// `scripts/convert_meter.py` writes.
///
/// The config it runs with: `config` if given (it must describe the same
/// backbone as the directory, [`same_backbone`]; `smarttrim info --model
/// DIR` prints the directory's to start from), else the one a pruner file
/// carries in its metadata ([`pruner_file_config`]), else the directory's
/// with pruners where the pruner file has tensors ([`pruners_from_names`]),
/// else the directory's. Pruner tensors come from `pruners` (under our
/// names), or from `model.safetensors` itself.
pub fn load_model_dir(
    dir: impl AsRef<Path>,
    config: Option<&ModelConfig>,
    pruners: Option<&Path>,
) -> Result<LoadedModel> {
    let dir = dir.as_ref();
    let cpath = dir.join("config.json");
    let wpath = dir.join("model.safetensors");
    let json = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    let pbytes = match pruners {
        Some(p) => Some((
            std::fs::read(p).map_err(|e| Error::io(p, e))?,
            p.display().to_string(),
        )),
        None => None,
    };
    load_model_from_memory(
        &json,
        &bytes,
        &wpath.display().to_string(),
        config,
        pbytes.as_ref().map(|(b, c)| (&b[..], c.as_str())),
    )
}

/// [`load_model_dir`] on a `config.json` document and safetensors bytes in
/// memory (`context` names the bytes in errors; `pruners`: a pruner file's
/// bytes and name).
pub fn load_model_from_memory(
    config_json: &str,
    bytes: &[u8],
    context: &str,
    config: Option<&ModelConfig>,
    pruners: Option<(&[u8], &str)>,
) -> Result<LoadedModel> {
    let names = tensor_names(bytes, context)?;
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let (format, derived) = dir_config(config_json, &names)?;
    let run = match (config, pruners) {
        (Some(c), _) => c.clone(),
        (None, Some((pb, pc))) => match pruner_file_config(pb, pc)? {
            Some(c) => c,
            None => pruners_from_names(&derived, pb, pc)?,
        },
        (None, None) => derived.clone(),
    };
    if !same_backbone(&run, &derived) {
        return Err(Error::Config(format!(
            "the config does not describe the model directory's backbone (`smarttrim info \
             --model DIR` prints the directory's config): expected {}",
            super::schedule::without_pruners(&derived).to_json()?
        )));
    }
    let weights = match format {
        DirFormat::HuggingFace(family) => {
            hf_weights_from_bytes(family, &run, bytes, context, pruners)?
        }
        DirFormat::Smarttrim => {
            run.validate()?;
            let mut raw = read_safetensors(bytes, context)?;
            let mut errs = Vec::new();
            if let Some((pb, pc)) = pruners {
                merge_pruners(&mut raw, pb, pc, context, &mut errs)?;
            }
            Weights::from_tensor_map(&run, raw, &mut errs)?
        }
    };
    Ok(LoadedModel {
        format,
        derived,
        weights,
    })
}

/// Weights for `config` from a safetensors file under our names, plus the
/// pruner tensors of a second file if given (every problem at once, in
/// [`Error::Weights`]; a tensor in both files is one).
pub fn load_weights_files(
    config: &ModelConfig,
    weights: &Path,
    pruners: Option<&Path>,
) -> Result<Weights> {
    config.validate()?;
    let bytes = std::fs::read(weights).map_err(|e| Error::io(weights, e))?;
    let context = weights.display().to_string();
    let mut raw = read_safetensors(&bytes, &context)?;
    let mut errs = Vec::new();
    if let Some(p) = pruners {
        let pb = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        merge_pruners(&mut raw, &pb, &p.display().to_string(), &context, &mut errs)?;
    }
    Weights::from_tensor_map(config, raw, &mut errs)
}

/// Adds a pruner file's tensors to `raw`; a name in both is a problem.
fn merge_pruners(
    raw: &mut BTreeMap<String, RawTensor>,
    pb: &[u8],
    pc: &str,
    context: &str,
    errs: &mut Vec<String>,
) -> Result<()> {
    for (name, t) in read_safetensors(pb, pc)? {
        match raw.entry(name) {
            std::collections::btree_map::Entry::Occupied(e) => errs.push(format!(
                "tensor `{}` is in both {context} and {pc}",
                e.key()
            )),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(t);
            }
        }
    }
    Ok(())
}

/// Names of the tensors of a safetensors file (header only).
fn tensor_names(bytes: &[u8], context: &str) -> Result<Vec<String>> {
    super::weights::check_unique_names(bytes, context)?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
            context: context.to_string(),
            message: e.to_string(),
        })?;
    let mut v: Vec<String> = meta.tensors().keys().cloned().collect();
    v.sort();
    Ok(v)
}

/// The pruner tensors of `weights` (token and head pruners of every layer,
/// under our names) as safetensors bytes, with the whole config in the
/// metadata ([`PRUNER_CONFIG_KEY`]), for `--pruners`.
pub fn pruner_file_bytes(weights: &Weights) -> Result<Vec<u8>> {
    let tensors: Vec<_> = weights
        .tensors()
        .into_iter()
        .filter(|(n, _, _)| n.contains(".token_pruner.") || n.contains(".head_pruner."))
        .collect();
    let mut meta = HashMap::new();
    meta.insert(PRUNER_CONFIG_KEY.to_string(), weights.config.to_json()?);
    super::weights::tensors_to_safetensors(tensors, Some(meta))
}
