//! A checkpoint's tensor names mapped onto ours (BERT/RoBERTa, ViT, CLIP
//! vision, BLIP), every unexpected name reported; names knowingly ignored
//! are listed in the module docs of `spec::hf`.

use std::collections::BTreeMap;

use super::dirs::merge_pruners;
use super::*;
use crate::spec::config::StreamConfig;
use crate::spec::weights::{read_safetensors, RawTensor, Weights};
use crate::Result;

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
/// [`Error::Weights`](crate::Error::Weights).
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
