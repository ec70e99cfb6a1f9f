//! Model inputs from, and every output of a forward pass to, safetensors
//! files (the `smarttrim run` formats; `docs/FORMATS.md` is the reference).
//!
//! **Inputs**, per input stream `S` (the config's stream names; a whole
//! model's input streams, `ModelConfig::input_streams`: BLIP's `image` and
//! `text`, METER's `text_encoder` and `image_encoder`), one of:
//!
//! - `S.rows` `[total, D]` f32/f16/bf16 and `S.cu_seqlens` `[batch + 1]` i32/i64
//!   — rows as they enter the first layer;
//! - `S.input_ids` `[total]` i32/i64/u32, optional `S.token_type_ids` (same),
//!   and `S.cu_seqlens` — a BERT-like stream's tokens;
//! - `S.pixels` `[batch, C, H, W]` f32/f16/bf16 — a ViT stream's images;
//!
//! plus, for a BLIP cross encoder, `context.rows` `[total, context_hidden]` and
//! `context.cu_seqlens`.
//!
//! **Outputs** (f32 unless said): per stream `S.rows` `[total, D]`,
//! `S.cu_seqlens` i32, `S.orig_index` i32, `S.pooled_first` and
//! `S.pooled_mean` `[batch, D]`, `S.pooler` `[batch, D]` (a stream with a
//! pooler); per layer `l` of a stream
//! `S.layers.l.rows_in` i32 `[batch]`, `S.layers.l.orig_index_in` i32,
//! `S.layers.l.kept` i32 `[batch]`, and where a pruner ran
//! `S.layers.l.token_scores` `[rows_in]`, `S.layers.l.keep` u8 `[rows_in]`,
//! `S.layers.l.self_head_logits` / `cross_head_logits` `[batch, H]`,
//! `S.layers.l.self_head_mask` / `cross_head_mask` u8 `[batch, H]`, and
//! always `S.layers.l.self_heads_active` / `cross_heads_active` i32
//! `[batch]`; for the whole model `logits` `[batch, n]` (a model with a task
//! head), `flops.pruned_model`,
//! `flops.pruned_executed`, `flops.dense_model`, `flops.dense_executed`, u64
//! `[batch]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::reference::{Inputs, Outputs, StreamInput};
use crate::spec::weights::check_unique_names;
use crate::spec::{EmbeddingConfig, ModelConfig, ModelKind};
use crate::{Error, Result};

/// Reads a forward pass's inputs for `config` from a safetensors file,
/// reporting every problem the file holds at once: missing, misnamed,
/// repeated or ill-shaped tensors, and what the tensors say about each
/// other and about the config (`cu_seqlens` against the rows, token ids
/// against the vocabulary, sequence lengths against `max_positions`, batch
/// sizes across streams).
pub fn read_inputs(config: &ModelConfig, path: impl AsRef<Path>) -> Result<Inputs> {
    let p = path.as_ref();
    let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
    inputs_from_bytes(config, &bytes, &p.display().to_string())
}

/// [`read_inputs`] on bytes (`context` names them in errors).
pub fn inputs_from_bytes(config: &ModelConfig, bytes: &[u8], context: &str) -> Result<Inputs> {
    check_unique_names(bytes, context)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        context: context.to_string(),
        message: e.to_string(),
    })?;
    let mut errs = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    let mut get = |name: &str| -> Option<TensorView<'_>> {
        let t = st.tensor(name).ok();
        if t.is_some() {
            used.insert(name.to_string());
        }
        t
    };
    let mut streams = Vec::new();
    // (what, batch) of every input that decoded, to compare batch sizes.
    let mut batches: Vec<(String, usize)> = Vec::new();
    for s in config
        .input_streams()
        .into_iter()
        .filter_map(|i| config.streams.get(i))
    {
        let n = &s.name;
        let input = match &s.embedding {
            EmbeddingConfig::None | EmbeddingConfig::Transform { .. } => {
                let width = s.embedding.input_width(s.hidden).unwrap_or(s.hidden);
                let rows = get(&format!("{n}.rows"));
                let cu = get(&format!("{n}.cu_seqlens"));
                match (rows, cu) {
                    (Some(rows), Some(cu)) => {
                        let rows = floats(&format!("{n}.rows"), &rows, Some(2), &mut errs);
                        let rows = rows.and_then(|(shape, v)| {
                            if shape[1] != width {
                                errs.push(format!(
                                    "`{n}.rows` has {} columns, the stream takes rows {width} wide",
                                    shape[1]
                                ));
                                None
                            } else {
                                Some((shape[0], v))
                            }
                        });
                        let cu = ints(&format!("{n}.cu_seqlens"), &cu, &mut errs);
                        let cu = cu.and_then(|cu| {
                            let total = rows.as_ref().map(|(t, _)| (*t, format!("`{n}.rows`")));
                            seqlens(&format!("{n}.cu_seqlens"), &cu, total, &mut errs)
                        });
                        match (rows, cu) {
                            (Some((_, rows)), Some(cu)) => {
                                batches.push((format!("`{n}.cu_seqlens`"), cu.len() - 1));
                                Some(StreamInput::Packed {
                                    rows,
                                    cu_seqlens: cu,
                                })
                            }
                            _ => None,
                        }
                    }
                    (rows, cu) => {
                        if rows.is_none() {
                            errs.push(format!("missing tensor `{n}.rows` ([total, {width}])"));
                        }
                        if cu.is_none() {
                            errs.push(format!("missing tensor `{n}.cu_seqlens` ([batch + 1] i32)"));
                        }
                        None
                    }
                }
            }
            EmbeddingConfig::Bert {
                vocab_size,
                max_positions,
                type_vocab_size,
                position_offset,
            } => {
                let ids = get(&format!("{n}.input_ids"));
                let types = get(&format!("{n}.token_type_ids"));
                let cu = get(&format!("{n}.cu_seqlens"));
                if ids.is_none() {
                    errs.push(format!("missing tensor `{n}.input_ids` ([total] i32/i64)"));
                }
                if cu.is_none() {
                    errs.push(format!("missing tensor `{n}.cu_seqlens` ([batch + 1] i32)"));
                }
                let ids = ids.and_then(|t| ids_of(&format!("{n}.input_ids"), &t, &mut errs));
                let types =
                    types.and_then(|t| ids_of(&format!("{n}.token_type_ids"), &t, &mut errs));
                let cu = cu.and_then(|t| ints(&format!("{n}.cu_seqlens"), &t, &mut errs));
                let cu = cu.and_then(|cu| {
                    let total = ids.as_ref().map(|i| (i.len(), format!("`{n}.input_ids`")));
                    seqlens(&format!("{n}.cu_seqlens"), &cu, total, &mut errs)
                });
                if let Some(i) = &ids {
                    if let Some(at) = i.iter().position(|&t| t as usize >= *vocab_size) {
                        errs.push(format!(
                            "`{n}.input_ids` element {at} is {}, outside the vocabulary \
                             (vocab_size {vocab_size})",
                            i[at]
                        ));
                    }
                }
                match (&ids, &types) {
                    (_, Some(_)) if *type_vocab_size == 0 => errs.push(format!(
                        "`{n}.token_type_ids` given, but stream `{n}` has no token types \
                         (type_vocab_size 0)"
                    )),
                    (Some(i), Some(t)) if i.len() != t.len() => errs.push(format!(
                        "`{n}.token_type_ids` has {} entries, `{n}.input_ids` {}",
                        t.len(),
                        i.len()
                    )),
                    (_, Some(t)) => {
                        if let Some(at) = t.iter().position(|&x| x as usize >= *type_vocab_size) {
                            errs.push(format!(
                                "`{n}.token_type_ids` element {at} is {}, outside \
                                 0..{type_vocab_size} (type_vocab_size)",
                                t[at]
                            ));
                        }
                    }
                    _ => {}
                }
                if let Some(cu) = &cu {
                    let fit = max_positions.saturating_sub(*position_offset);
                    if let Some(b) = cu.windows(2).position(|w| (w[1] - w[0]) as usize > fit) {
                        let l = cu[b + 1] - cu[b];
                        errs.push(if *position_offset > 0 {
                            format!(
                                "`{n}.cu_seqlens`: sequence {b} has {l} tokens, more than the \
                                 {fit} that fit (max_positions {max_positions}, positions \
                                 starting at position_offset {position_offset})"
                            )
                        } else {
                            format!(
                                "`{n}.cu_seqlens`: sequence {b} has {l} tokens, more than \
                                 max_positions {max_positions}"
                            )
                        });
                    }
                }
                match (ids, cu) {
                    (Some(ids), Some(cu)) => {
                        batches.push((format!("`{n}.cu_seqlens`"), cu.len() - 1));
                        Some(StreamInput::Tokens {
                            ids,
                            type_ids: types,
                            cu_seqlens: cu,
                        })
                    }
                    _ => None,
                }
            }
            EmbeddingConfig::Vit {
                image_size,
                channels,
                ..
            } => match get(&format!("{n}.pixels")) {
                None => {
                    errs.push(format!(
                        "missing tensor `{n}.pixels` ([batch, {channels}, {image_size}, {image_size}])"
                    ));
                    None
                }
                Some(t) => {
                    let px = floats(&format!("{n}.pixels"), &t, Some(4), &mut errs);
                    match px {
                        Some((shape, pixels)) => {
                            if shape[1..] != [*channels, *image_size, *image_size] {
                                errs.push(format!(
                                    "`{n}.pixels` has shape {shape:?}, expected [batch, {channels}, {image_size}, {image_size}]"
                                ));
                                None
                            } else if shape[0] == 0 {
                                errs.push(format!(
                                    "`{n}.pixels` holds no image (batch 0); a pass needs at \
                                     least one"
                                ));
                                None
                            } else {
                                batches.push((format!("`{n}.pixels`"), shape[0]));
                                Some(StreamInput::Pixels {
                                    pixels,
                                    batch: shape[0],
                                })
                            }
                        }
                        None => None,
                    }
                }
            },
        };
        streams.push(input);
    }
    let context = match config.kind {
        ModelKind::CrossEncoder { context_hidden } => {
            let rows = get("context.rows");
            let cu = get("context.cu_seqlens");
            if rows.is_none() {
                errs.push(format!(
                    "missing tensor `context.rows` ([total, {context_hidden}]), the image rows a cross encoder attends to"
                ));
            }
            if cu.is_none() {
                errs.push("missing tensor `context.cu_seqlens` ([batch + 1] i32)".into());
            }
            let rows = rows.and_then(|t| floats("context.rows", &t, Some(2), &mut errs));
            let rows = rows.and_then(|(shape, v)| {
                if shape[1] != context_hidden {
                    errs.push(format!(
                        "`context.rows` has {} columns, expected context_hidden = {context_hidden}",
                        shape[1]
                    ));
                    None
                } else {
                    Some((shape[0], v))
                }
            });
            let cu = cu.and_then(|t| ints("context.cu_seqlens", &t, &mut errs));
            let cu = cu.and_then(|cu| {
                let total = rows
                    .as_ref()
                    .map(|(t, _)| (*t, "`context.rows`".to_string()));
                seqlens("context.cu_seqlens", &cu, total, &mut errs)
            });
            match (rows, cu) {
                (Some((_, r)), Some(c)) => {
                    batches.push(("`context.cu_seqlens`".into(), c.len() - 1));
                    Some((r, c))
                }
                _ => None,
            }
        }
        _ => None,
    };
    if let Some((first, b0)) = batches.first() {
        for (what, b) in &batches[1..] {
            if b != b0 {
                errs.push(format!(
                    "{what} gives a batch of {b} sequences, {first} {b0}: every input stream \
                     holds the same batch"
                ));
            }
        }
    }
    let mut unexpected: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|n| !used.contains(*n))
        .collect();
    unexpected.sort_unstable();
    const SHOWN: usize = 8;
    for (i, name) in unexpected.iter().take(SHOWN).enumerate() {
        // The hint rides on the first such line: it is not a problem of its own.
        let hint = if i == 0 {
            format!(
                " (input tensors are named after the config's streams {}; see docs/FORMATS.md)",
                config
                    .streams
                    .iter()
                    .map(|s| format!("`{}`", s.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        errs.push(format!("unexpected tensor `{name}`{hint}"));
    }
    if unexpected.len() > SHOWN {
        errs.push(format!(
            "... and {} more unexpected tensors",
            unexpected.len() - SHOWN
        ));
    }
    if !errs.is_empty() {
        return Err(Error::Input(errs));
    }
    Ok(Inputs {
        streams: streams.into_iter().flatten().collect(),
        context,
    })
}

/// A `cu_seqlens` tensor's values as i32 offsets, checked: at least one
/// sequence, every value within i32 (an i64 file's values are never
/// narrowed silently), starting at 0, non-decreasing, and ending at the
/// row count `total` (with the tensor it counts) where that is known.
fn seqlens(
    name: &str,
    v: &[i64],
    total: Option<(usize, String)>,
    errs: &mut Vec<String>,
) -> Option<Vec<i32>> {
    if v.len() < 2 {
        errs.push(format!(
            "`{name}` has {} entr{}: no sequence (batch 0); a pass needs at least one, \
             [0, n, ...]",
            v.len(),
            if v.len() == 1 { "y" } else { "ies" }
        ));
        return None;
    }
    if let Some(i) = v.iter().position(|&x| i32::try_from(x).is_err()) {
        errs.push(format!(
            "`{name}` element {i} is {}, outside the i32 range of row offsets",
            v[i]
        ));
        return None;
    }
    if v[0] != 0 {
        errs.push(format!("`{name}` starts at {}, not 0", v[0]));
        return None;
    }
    if let Some(i) = v.windows(2).position(|w| w[1] < w[0]) {
        errs.push(format!(
            "`{name}` decreases at element {} ({} -> {})",
            i + 1,
            v[i],
            v[i + 1]
        ));
        return None;
    }
    if let Some((t, what)) = total {
        let last = v[v.len() - 1];
        if last != t as i64 {
            errs.push(format!(
                "`{name}` ends at {last}, but {what} holds {t} rows"
            ));
            return None;
        }
    }
    Some(v.iter().map(|&x| x as i32).collect())
}

/// f32 values (from f32, f16 or bf16) of a tensor with the given rank.
fn floats(
    name: &str,
    t: &TensorView<'_>,
    rank: Option<usize>,
    errs: &mut Vec<String>,
) -> Option<(Vec<usize>, Vec<f32>)> {
    let shape = t.shape().to_vec();
    if let Some(r) = rank {
        if shape.len() != r {
            errs.push(format!("`{name}` has rank {}, expected {r}", shape.len()));
            return None;
        }
    }
    let d = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            errs.push(format!(
                "`{name}` has dtype {other:?}, expected F32, F16 or BF16"
            ));
            return None;
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        errs.push(format!("`{name}` holds a non-finite value at element {i}"));
        return None;
    }
    Some((shape, v))
}

/// Integer values of a rank-1 tensor (i32, i64, u32).
fn ints(name: &str, t: &TensorView<'_>, errs: &mut Vec<String>) -> Option<Vec<i64>> {
    if t.shape().len() != 1 {
        errs.push(format!(
            "`{name}` has shape {:?}, expected rank 1",
            t.shape()
        ));
        return None;
    }
    let d = t.data();
    match t.dtype() {
        Dtype::I32 => Some(
            d.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        Dtype::U32 => Some(
            d.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        Dtype::I64 => Some(
            d.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        other => {
            errs.push(format!(
                "`{name}` has dtype {other:?}, expected I32, I64 or U32"
            ));
            None
        }
    }
}

/// Token ids: non-negative and within u32.
fn ids_of(name: &str, t: &TensorView<'_>, errs: &mut Vec<String>) -> Option<Vec<u32>> {
    let v = ints(name, t, errs)?;
    if let Some(i) = v.iter().position(|&x| x < 0 || x > u32::MAX as i64) {
        errs.push(format!("`{name}` element {i} is {}, not a valid id", v[i]));
        return None;
    }
    Some(v.into_iter().map(|x| x as u32).collect())
}

/// One output tensor: name, dtype, shape, little-endian bytes.
pub type OutputTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_tensor(name: String, shape: Vec<usize>, v: &[f32]) -> OutputTensor {
    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name, Dtype::F32, shape, b)
}

fn i32_tensor(name: String, v: &[i32]) -> OutputTensor {
    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name, Dtype::I32, vec![v.len()], b)
}

fn u8_tensor(name: String, shape: Vec<usize>, v: Vec<u8>) -> OutputTensor {
    (name, Dtype::U8, shape, v)
}

fn u64_tensor(name: String, v: &[u64]) -> OutputTensor {
    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name, Dtype::U64, vec![v.len()], b)
}

/// Every output of a forward pass as named tensors (the names above).
pub fn output_tensors(config: &ModelConfig, out: &Outputs) -> Vec<OutputTensor> {
    let mut t = Vec::new();
    for (s, so) in config.streams.iter().zip(&out.streams) {
        let n = &so.name;
        let d = so.packed.d;
        let batch = so.packed.cu_seqlens.len().saturating_sub(1);
        t.push(f32_tensor(
            format!("{n}.rows"),
            vec![so.packed.rows.len() / d.max(1), d],
            &so.packed.rows,
        ));
        t.push(i32_tensor(format!("{n}.cu_seqlens"), &so.packed.cu_seqlens));
        t.push(i32_tensor(format!("{n}.orig_index"), &so.packed.orig_index));
        t.push(f32_tensor(
            format!("{n}.pooled_first"),
            vec![batch, d],
            &so.pooled_first,
        ));
        t.push(f32_tensor(
            format!("{n}.pooled_mean"),
            vec![batch, d],
            &so.pooled_mean,
        ));
        if let Some(p) = &so.pooler {
            t.push(f32_tensor(format!("{n}.pooler"), vec![batch, d], p));
        }
        for (l, r) in so.layers.iter().enumerate() {
            let p = format!("{n}.layers.{l}");
            t.push(i32_tensor(format!("{p}.rows_in"), &r.rows_in));
            t.push(i32_tensor(format!("{p}.orig_index_in"), &r.orig_index_in));
            t.push(i32_tensor(format!("{p}.kept"), &r.kept));
            if let Some(sc) = &r.scores {
                t.push(f32_tensor(format!("{p}.token_scores"), vec![sc.len()], sc));
            }
            if let Some(k) = &r.keep {
                t.push(u8_tensor(
                    format!("{p}.keep"),
                    vec![k.len()],
                    k.iter().map(|&b| b as u8).collect(),
                ));
            }
            for (which, rec) in [("self", &r.self_heads), ("cross", &r.cross_heads)] {
                if let Some(h) = rec {
                    let heads = h.mask.len() / batch.max(1);
                    t.push(f32_tensor(
                        format!("{p}.{which}_head_logits"),
                        vec![batch, heads],
                        &h.logits,
                    ));
                    t.push(u8_tensor(
                        format!("{p}.{which}_head_mask"),
                        vec![batch, heads],
                        h.mask.clone(),
                    ));
                }
            }
            t.push(i32_tensor(
                format!("{p}.self_heads_active"),
                &r.active_self_heads,
            ));
            t.push(i32_tensor(
                format!("{p}.cross_heads_active"),
                &r.active_cross_heads,
            ));
        }
        let _ = s;
    }
    if let (Some(l), Some(h)) = (&out.logits, &config.head) {
        let n = h.outputs();
        t.push(f32_tensor("logits".into(), vec![l.len() / n.max(1), n], l));
    }
    let f = &out.flops;
    let col =
        |g: &dyn Fn(&crate::spec::SequenceFlops) -> u64| f.iter().map(g).collect::<Vec<u64>>();
    t.push(u64_tensor(
        "flops.pruned_model".into(),
        &col(&|x| x.pruned.model),
    ));
    t.push(u64_tensor(
        "flops.pruned_executed".into(),
        &col(&|x| x.pruned.executed),
    ));
    t.push(u64_tensor(
        "flops.dense_model".into(),
        &col(&|x| x.dense.model),
    ));
    t.push(u64_tensor(
        "flops.dense_executed".into(),
        &col(&|x| x.dense.executed),
    ));
    t
}

/// The tensors of an input file (the names above) for `inputs`: the inverse
/// of [`read_inputs`], e.g. to save a synthetic input.
pub fn input_tensors(config: &ModelConfig, inputs: &Inputs) -> Vec<OutputTensor> {
    let mut t = Vec::new();
    let u32s = |name: String, v: &[u32]| -> OutputTensor {
        let i: Vec<i32> = v.iter().map(|&x| x as i32).collect();
        i32_tensor(name, &i)
    };
    let input_streams = config.input_streams();
    let streams = input_streams.iter().filter_map(|&i| config.streams.get(i));
    for (s, input) in streams.zip(&inputs.streams) {
        let n = &s.name;
        match input {
            StreamInput::Packed { rows, cu_seqlens } => {
                let w = s.embedding.input_width(s.hidden).unwrap_or(s.hidden);
                t.push(f32_tensor(
                    format!("{n}.rows"),
                    vec![rows.len() / w.max(1), w],
                    rows,
                ));
                t.push(i32_tensor(format!("{n}.cu_seqlens"), cu_seqlens));
            }
            StreamInput::Tokens {
                ids,
                type_ids,
                cu_seqlens,
            } => {
                t.push(u32s(format!("{n}.input_ids"), ids));
                if let Some(ty) = type_ids {
                    t.push(u32s(format!("{n}.token_type_ids"), ty));
                }
                t.push(i32_tensor(format!("{n}.cu_seqlens"), cu_seqlens));
            }
            StreamInput::Pixels { pixels, batch } => {
                let per = pixels.len() / (*batch).max(1);
                let c = match s.embedding {
                    EmbeddingConfig::Vit { channels, .. } => channels,
                    _ => 3,
                };
                let side = ((per / c.max(1)) as f64).sqrt().round() as usize;
                t.push(f32_tensor(
                    format!("{n}.pixels"),
                    vec![*batch, c, side, side],
                    pixels,
                ));
            }
        }
    }
    if let Some((rows, cu)) = &inputs.context {
        if let ModelKind::CrossEncoder { context_hidden } = config.kind {
            t.push(f32_tensor(
                "context.rows".into(),
                vec![rows.len() / context_hidden.max(1), context_hidden],
                rows,
            ));
            t.push(i32_tensor("context.cu_seqlens".into(), cu));
        }
    }
    t
}

/// Serialises output tensors to safetensors bytes.
pub fn tensors_to_bytes(tensors: &[OutputTensor]) -> Result<Vec<u8>> {
    let mut views = BTreeMap::new();
    for (name, dtype, shape, data) in tensors {
        let v = TensorView::new(*dtype, shape.clone(), data).map_err(|e| Error::Safetensors {
            context: name.clone(),
            message: e.to_string(),
        })?;
        views.insert(name.clone(), v);
    }
    safetensors::serialize(views, None).map_err(|e| Error::Safetensors {
        context: "serialize outputs".into(),
        message: e.to_string(),
    })
}

/// The temporary files [`write_atomic`] is writing now.
fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static PENDING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the temporary files of every [`write_atomic`] in progress and
/// returns how many there were: for an interrupt handler (the CLI calls it
/// on Ctrl-C before exiting), so that no hidden partial file is left.
pub fn remove_temp_files() -> usize {
    let files = std::mem::take(&mut *pending());
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    files.len()
}

/// Writes bytes to `path` atomically: a temporary file beside it, renamed
/// into place, so a failure never leaves a partial file (and
/// [`remove_temp_files`] removes the temporary file of a write that is
/// interrupted).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let p = path.as_ref();
    let (dir, file) = split_output_path(p)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file.to_string_lossy(),
        std::process::id()
    ));
    pending().push(tmp.clone());
    let res = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, p));
    pending().retain(|t| *t != tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(p, e));
    }
    Ok(())
}

/// The folder (`.` for a bare name) and the file name of an output path.
fn split_output_path(p: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = p
        .file_name()
        .ok_or_else(|| Error::io(p, std::io::Error::other("not a file path")))?;
    Ok((dir, file))
}

/// Checks, before any work, that [`write_atomic`] will be able to write
/// `path`: its folder exists and is a folder, `path` is not a folder, and a
/// file can be created in the folder (a probe file, removed at once).
pub fn check_output_path(path: impl AsRef<Path>) -> Result<()> {
    use std::io::{Error as IoError, ErrorKind};
    let p = path.as_ref();
    let (dir, file) = split_output_path(p)?;
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::io(
                p,
                IoError::new(
                    ErrorKind::NotFound,
                    format!("the folder {} does not exist", dir.display()),
                ),
            ))
        }
        Err(e) => return Err(Error::io(dir, e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::io(
                p,
                IoError::other(format!("{} is not a folder", dir.display())),
            ))
        }
        Ok(_) => {}
    }
    if p.is_dir() {
        return Err(Error::io(
            p,
            IoError::other("is a folder; give a file path"),
        ));
    }
    let probe = dir.join(format!(
        ".{}.probe{}",
        file.to_string_lossy(),
        std::process::id()
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(
            p,
            IoError::new(
                e.kind(),
                format!("cannot create a file in {} ({e})", dir.display()),
            ),
        )),
    }
}

/// Writes every output of a forward pass to a safetensors file, atomically.
pub fn write_outputs(config: &ModelConfig, out: &Outputs, path: impl AsRef<Path>) -> Result<()> {
    let bytes = tensors_to_bytes(&output_tensors(config, out))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqlens_are_checked_not_narrowed() {
        let mut errs = Vec::new();
        let total = Some((10, "`x.rows`".to_string()));
        assert_eq!(
            seqlens("x.cu", &[0, 4, 10], total.clone(), &mut errs),
            Some(vec![0, 4, 10])
        );
        assert!(errs.is_empty());
        for (v, needle) in [
            (vec![0, (1i64 << 32) + 4, 10], "element 1 is 4294967300"),
            (vec![0], "no sequence (batch 0)"),
            (vec![], "no sequence (batch 0)"),
            (vec![2, 4, 10], "starts at 2"),
            (vec![0, 6, 4, 10], "decreases at element 2"),
            (vec![0, 4, 9], "ends at 9, but `x.rows` holds 10 rows"),
        ] {
            let mut errs = Vec::new();
            assert_eq!(seqlens("x.cu", &v, total.clone(), &mut errs), None, "{v:?}");
            assert_eq!(errs.len(), 1, "{v:?}: {errs:?}");
            assert!(errs[0].contains(needle), "{v:?}: {errs:?}");
        }
    }

    #[test]
    fn output_paths_are_checked_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("out.safetensors");
        check_output_path(&ok).unwrap();
        assert!(!ok.exists());
        let e = check_output_path(dir.path().join("no/out.safetensors")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = check_output_path(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is a folder"), "{e}");
        std::fs::write(&ok, b"x").unwrap();
        let e = check_output_path(ok.join("inner")).unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
        // Nothing but the file written above.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn interrupted_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.bin");
        let tmp = dir
            .path()
            .join(format!(".big.bin.tmp{}", std::process::id()));
        // What a handler would find mid-write: the temporary file, registered.
        std::fs::write(&tmp, b"partial").unwrap();
        pending().push(tmp.clone());
        assert_eq!(remove_temp_files(), 1);
        assert!(!tmp.exists());
        assert_eq!(remove_temp_files(), 0);
        write_atomic(&p, b"whole").unwrap();
        assert_eq!(remove_temp_files(), 0, "a finished write is not pending");
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
    }
}
