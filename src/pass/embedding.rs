//! Input validation and the host embedding, the same for both backends:
//! every stream's input checked against the config (every problem reported
//! together in one [`Error::Input`]), then embedded on the host in f32 (the
//! CPU reference always; the GPU pass validates here and embeds on the
//! device, or embeds here for callers that want the rows).

use rayon::prelude::*;

use super::math::{layer_norm_rows, linear};
use super::{Inputs, Packed, StreamInput};
use crate::spec::{EmbeddingConfig, EmbeddingWeights, ModelConfig, ModelKind, StreamConfig};
use crate::{Error, Result};

fn check_cu(cu: &[i32], total: usize, what: &str, errs: &mut Vec<String>) {
    if cu.is_empty() || cu[0] != 0 {
        errs.push(format!("{what}: cu_seqlens must start with 0"));
        return;
    }
    if cu.windows(2).any(|w| w[1] < w[0]) {
        errs.push(format!("{what}: cu_seqlens must be non-decreasing"));
        return;
    }
    if cu[cu.len() - 1] as usize != total {
        errs.push(format!(
            "{what}: cu_seqlens ends at {} but there are {total} rows",
            cu[cu.len() - 1]
        ));
    }
}

/// Embeds one stream's input into packed rows (validated first).
pub fn embed(
    s: &StreamConfig,
    w: &EmbeddingWeights,
    input: &StreamInput,
    errs: &mut Vec<String>,
) -> Option<Packed> {
    embed_or_check(s, w, input, errs, true)
}

/// [`embed`], or with `compute` false only its validation: token and pixel
/// streams then come back with empty `rows` (their `cu_seqlens` and
/// `orig_index` as embedding would give them).
fn embed_or_check(
    s: &StreamConfig,
    w: &EmbeddingWeights,
    input: &StreamInput,
    errs: &mut Vec<String>,
    compute: bool,
) -> Option<Packed> {
    let d = s.hidden;
    let name = &s.name;
    match (&s.embedding, w, input) {
        (EmbeddingConfig::None, _, StreamInput::Packed { rows, cu_seqlens }) => {
            if rows.len() % d != 0 {
                errs.push(format!(
                    "stream `{name}`: {} values is not a multiple of hidden {d}",
                    rows.len()
                ));
                return None;
            }
            let total = rows.len() / d;
            let before = errs.len();
            check_cu(cu_seqlens, total, &format!("stream `{name}`"), errs);
            if rows.iter().any(|x| !x.is_finite()) {
                errs.push(format!("stream `{name}`: input rows hold NaN or Inf"));
            }
            (errs.len() == before).then(|| Packed::new(rows.clone(), d, cu_seqlens.clone()))
        }
        (
            EmbeddingConfig::Bert {
                vocab_size,
                max_positions,
                type_vocab_size,
                position_offset,
            },
            EmbeddingWeights::Bert {
                word,
                position,
                token_type,
                ln,
            },
            StreamInput::Tokens {
                ids,
                type_ids,
                cu_seqlens,
            },
        ) => {
            let before = errs.len();
            let total = ids.len();
            check_cu(cu_seqlens, total, &format!("stream `{name}`"), errs);
            if let Some(i) = ids.iter().position(|&t| t as usize >= *vocab_size) {
                errs.push(format!(
                    "stream `{name}`: token id {} at {i} is outside the vocabulary ({vocab_size})",
                    ids[i]
                ));
            }
            if let (Some(_), 0) = (type_ids, *type_vocab_size) {
                errs.push(format!(
                    "stream `{name}`: has no token types (type_vocab_size 0), but type ids were given"
                ));
            } else if let Some(t) = type_ids {
                if t.len() != total {
                    errs.push(format!(
                        "stream `{name}`: {} type ids for {total} tokens",
                        t.len()
                    ));
                } else if let Some(i) = t.iter().position(|&x| x as usize >= *type_vocab_size) {
                    errs.push(format!(
                        "stream `{name}`: type id {} at {i} is outside 0..{type_vocab_size}",
                        t[i]
                    ));
                }
            }
            if errs.len() == before {
                if let Some(l) = cu_seqlens
                    .windows(2)
                    .map(|w| (w[1] - w[0]) as usize)
                    .find(|&l| l + position_offset > *max_positions)
                {
                    errs.push(format!(
                        "stream `{name}`: a sequence of {l} tokens exceeds max_positions {max_positions} (positions start at position_offset {position_offset}: at most {} tokens fit)",
                        max_positions.saturating_sub(*position_offset)
                    ));
                }
            }
            if errs.len() != before {
                return None;
            }
            let p = Packed::new(Vec::new(), d, cu_seqlens.clone());
            if !compute {
                return Some(p);
            }
            let mut rows = vec![0.0f32; total * d];
            rows.par_chunks_mut(d).enumerate().for_each(|(i, r)| {
                let id = ids[i] as usize;
                let pos = p.orig_index[i] as usize + position_offset;
                let ty = type_ids.as_ref().map_or(0, |t| t[i] as usize);
                // No token-type table (BLIP's text encoder): nothing is added.
                let tt = token_type.get(ty * d..(ty + 1) * d);
                for (j, v) in r.iter_mut().enumerate() {
                    *v = word[id * d + j] + position[pos * d + j] + tt.map_or(0.0, |t| t[j]);
                }
            });
            let rows = layer_norm_rows(&rows, d, &ln.gamma, &ln.beta, s.ln_eps);
            Some(Packed { rows, ..p })
        }
        (
            EmbeddingConfig::Vit {
                image_size,
                patch_size,
                channels,
                ..
            },
            EmbeddingWeights::Vit {
                patch,
                cls,
                position,
                ln: ln_pre,
            },
            StreamInput::Pixels { pixels, batch },
        ) => {
            let (is, ps, c) = (*image_size, *patch_size, *channels);
            let need = batch * c * is * is;
            if pixels.len() != need {
                errs.push(format!(
                    "stream `{name}`: {} pixel values, expected {batch} x {c} x {is} x {is} = {need}",
                    pixels.len()
                ));
                return None;
            }
            if pixels.iter().any(|x| !x.is_finite()) {
                errs.push(format!("stream `{name}`: pixels hold NaN or Inf"));
                return None;
            }
            let g = is / ps;
            if !compute {
                let n = (g * g + 1) as i32;
                return Some(Packed::new(
                    Vec::new(),
                    d,
                    (0..=*batch as i32).map(|b| b * n).collect(),
                ));
            }
            let np = g * g;
            let pin = c * ps * ps;
            let mut patches = vec![0.0f32; batch * np * pin];
            patches
                .par_chunks_mut(pin)
                .enumerate()
                .for_each(|(r, out)| {
                    let (b, pi) = (r / np, r % np);
                    let (py, px) = (pi / g, pi % g);
                    for ch in 0..c {
                        for ky in 0..ps {
                            for kx in 0..ps {
                                let y = py * ps + ky;
                                let x = px * ps + kx;
                                out[ch * ps * ps + ky * ps + kx] =
                                    pixels[((b * c + ch) * is + y) * is + x];
                            }
                        }
                    }
                });
            // An empty bias (CLIP's patch projection has none) adds nothing.
            let emb = linear(&patches, batch * np, &patch.weight, &patch.bias, d, pin);
            let n = np + 1;
            let mut rows = vec![0.0f32; batch * n * d];
            rows.par_chunks_mut(d).enumerate().for_each(|(r, out)| {
                let (b, i) = (r / n, r % n);
                let src = if i == 0 {
                    &cls[..]
                } else {
                    &emb[(b * np + i - 1) * d..(b * np + i) * d]
                };
                for j in 0..d {
                    out[j] = src[j] + position[i * d + j];
                }
            });
            let rows = match ln_pre {
                Some(w) => layer_norm_rows(&rows, d, &w.gamma, &w.beta, s.ln_eps),
                None => rows,
            };
            let cu = (0..=*batch).map(|b| (b * n) as i32).collect();
            Some(Packed::new(rows, d, cu))
        }
        (
            EmbeddingConfig::Transform { input_hidden, .. },
            EmbeddingWeights::Transform {
                transform,
                type_vector,
            },
            StreamInput::Packed { rows, cu_seqlens },
        ) => {
            let di = *input_hidden;
            if rows.len() % di != 0 {
                errs.push(format!(
                    "stream `{name}`: {} values is not a multiple of its input transform's \
                     width {di}",
                    rows.len()
                ));
                return None;
            }
            let total = rows.len() / di;
            let before = errs.len();
            check_cu(cu_seqlens, total, &format!("stream `{name}`"), errs);
            if rows.iter().any(|x| !x.is_finite()) {
                errs.push(format!("stream `{name}`: input rows hold NaN or Inf"));
            }
            if errs.len() != before {
                return None;
            }
            let p = Packed::new(Vec::new(), d, cu_seqlens.clone());
            if !compute {
                return Some(p);
            }
            let mut y = linear(rows, total, &transform.weight, &transform.bias, d, di);
            if let Some(t) = type_vector {
                y.par_chunks_mut(d).for_each(|r| {
                    for (v, tv) in r.iter_mut().zip(t) {
                        *v += tv;
                    }
                });
            }
            Some(Packed { rows: y, ..p })
        }
        _ => {
            errs.push(format!(
                "stream `{name}`: input kind does not match its embedding ({:?})",
                s.embedding
            ));
            None
        }
    }
}

/// Validates every input stream's input ([`ModelConfig::input_streams`]:
/// every stream of a basic model) and the context of a cross encoder against
/// the config, and embeds them: the packed rows entering the streams' first
/// layers, one per input stream. `embeddings` holds one entry per config
/// stream. Every problem is reported together in one [`Error::Input`].
/// Shared by the CPU pass and the GPU pass's host-side preparation.
pub fn embed_inputs(
    cfg: &ModelConfig,
    embeddings: &[&EmbeddingWeights],
    inputs: &Inputs,
) -> Result<(Vec<Packed>, Option<Packed>)> {
    embed_inputs_impl(cfg, embeddings, inputs, true)
}

/// The validation of [`embed_inputs`] without the embedding itself: packed
/// streams and the context come back whole, token and pixel streams with
/// empty `rows` but their `cu_seqlens` and `orig_index` (for a backend that
/// embeds elsewhere, e.g. on the GPU).
pub fn check_inputs(
    cfg: &ModelConfig,
    embeddings: &[&EmbeddingWeights],
    inputs: &Inputs,
) -> Result<(Vec<Packed>, Option<Packed>)> {
    embed_inputs_impl(cfg, embeddings, inputs, false)
}

fn embed_inputs_impl(
    cfg: &ModelConfig,
    embeddings: &[&EmbeddingWeights],
    inputs: &Inputs,
    compute: bool,
) -> Result<(Vec<Packed>, Option<Packed>)> {
    let ns = cfg.streams.len();
    let input_streams = cfg.input_streams();
    if inputs.streams.len() != input_streams.len() {
        return Err(Error::Input(vec![format!(
            "{} stream inputs for a model taking {} ({})",
            inputs.streams.len(),
            input_streams.len(),
            input_streams
                .iter()
                .map(|&s| format!("`{}`", cfg.streams[s].name))
                .collect::<Vec<_>>()
                .join(", ")
        )]));
    }
    if embeddings.len() != ns {
        return Err(Error::Weights(vec![format!(
            "{} embeddings for a model of {ns} streams",
            embeddings.len()
        )]));
    }
    let mut errs = Vec::new();
    let mut xs: Vec<Packed> = Vec::new();
    for (&si, inp) in input_streams.iter().zip(&inputs.streams) {
        if let Some(p) = embed_or_check(&cfg.streams[si], embeddings[si], inp, &mut errs, compute) {
            xs.push(p);
        }
    }
    if cfg.is_composite() && inputs.context.is_some() {
        errs.push(format!(
            "a {:?} model takes no context: its streams feed each other",
            cfg.kind
        ));
    }
    let context: Option<Packed> = match cfg.kind {
        ModelKind::CrossEncoder { context_hidden } => match &inputs.context {
            None => {
                errs.push("a cross encoder needs a context (the image rows)".into());
                None
            }
            Some((rows, cu)) => {
                let before = errs.len();
                if rows.len() % context_hidden != 0 {
                    errs.push(format!(
                        "context: {} values is not a multiple of context_hidden {context_hidden}",
                        rows.len()
                    ));
                } else {
                    check_cu(cu, rows.len() / context_hidden, "context", &mut errs);
                }
                if rows.iter().any(|x| !x.is_finite()) {
                    errs.push("context rows hold NaN or Inf".into());
                }
                (errs.len() == before)
                    .then(|| Packed::new(rows.clone(), context_hidden, cu.clone()))
            }
        },
        _ => None,
    };
    if errs.is_empty() {
        let batch = xs[0].batch();
        for (i, x) in xs.iter().enumerate().skip(1) {
            if x.batch() != batch {
                errs.push(format!(
                    "stream `{}` has batch {} but stream `{}` has {batch}",
                    cfg.streams[input_streams[i]].name,
                    x.batch(),
                    cfg.streams[input_streams[0]].name
                ));
            }
        }
        if let Some(c) = &context {
            if c.batch() != batch {
                errs.push(format!(
                    "context has batch {} but the text has {batch}",
                    c.batch()
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(Error::Input(errs));
    }
    Ok((xs, context))
}
