//! Embeddings, layers and the whole forward pass of the CPU reference.
//!
//! The order within a layer `l` (DESIGN.md): every stream's token pruner
//! scores the rows entering `l`, each seeing the other stream's entering
//! rows; then every stream is compacted; then head pruners run on the
//! compacted rows (seeing the other stream's compacted rows); then the layer
//! runs, its cross-attention taking the other stream's compacted entering
//! rows as keys and values. In a BLIP cross encoder the other stream is the
//! fixed context, the same at every layer, never pruned.
//!
//! The pass's inputs, outputs and per-layer records, the input validation
//! and the host embedding are the pass's description ([`crate::pass`]),
//! shared with the GPU pass; they are re-exported here, where they used to
//! live, so `reference::model::{Inputs, StreamInput, HeadRecord,
//! LayerRecord, StreamOutput, LayerStats, layer_stats, embed, embed_inputs,
//! check_inputs}` keep working.

use super::attention::attention;
use super::compact::{compact, Packed};
use super::ops::{
    add_in_place, gelu_in_place, layer_norm_rows, linear, mean_rows, quick_gelu_in_place,
};
use super::pruner::{head_logits, head_mask, keep_rows, token_scores};
use crate::spec::flops::{
    dense_layer_flops, embedding_flops, head_flops, layer_flops, pooler_flops, LayerCounts,
};
use crate::spec::{
    Activation, CrossAttentionWeights, EmbeddingWeights, FfnWeights, Flops, HeadConfig,
    HeadWeights, LayerNormWeights, LayerWeights, ModelConfig, ModelKind, SelfAttentionWeights,
    SequenceFlops, StageInput, StreamConfig, StreamWeights, Weights,
};
use crate::{Error, Result};

pub use crate::pass::{
    check_inputs, embed, embed_inputs, layer_stats, HeadRecord, Inputs, LayerRecord, LayerStats,
    StreamInput, StreamOutput,
};

/// Options of [`forward`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ForwardOptions {
    /// Ignore all pruners (the dense pass).
    pub dense: bool,
}

/// Results of [`forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// One per config stream.
    pub streams: Vec<StreamOutput>,
    /// FLOPs per sequence, summed over streams (and the task head).
    pub flops: Vec<SequenceFlops>,
    /// The task head's logits `[batch, outputs]`, if the model has a head.
    pub logits: Option<Vec<f32>>,
}

impl Outputs {
    /// Per-layer statistics: `[layer][stream]` -> (kept rows, active self
    /// heads, active cross heads), each per sequence.
    pub fn stats(&self) -> Vec<Vec<LayerStats>> {
        layer_stats(&self.streams)
    }
}

fn ln(x: &[f32], d: usize, w: &LayerNormWeights, eps: f32) -> Vec<f32> {
    layer_norm_rows(x, d, &w.gamma, &w.beta, eps)
}

/// Copies columns `c0..c0+width` of a `[rows, stride]` matrix.
fn columns(x: &[f32], stride: usize, c0: usize, width: usize) -> Vec<f32> {
    x.chunks(stride)
        .flat_map(|r| r[c0..c0 + width].iter().copied())
        .collect()
}

/// Self-attention module output (before residual): `out(attn(QKV x))`.
pub fn self_attention(
    x: &[f32],
    cu: &[i32],
    d: usize,
    heads: usize,
    w: &SelfAttentionWeights,
    mask: Option<&[u8]>,
) -> Vec<f32> {
    let n = x.len() / d;
    let qkv = linear(x, n, &w.qkv.weight, &w.qkv.bias, 3 * d, d);
    let q = columns(&qkv, 3 * d, 0, d);
    let k = columns(&qkv, 3 * d, d, d);
    let v = columns(&qkv, 3 * d, 2 * d, d);
    let ctx = attention(&q, &k, &v, cu, cu, heads, d / heads, mask);
    linear(&ctx, n, &w.out.weight, &w.out.bias, d, d)
}

/// Cross-attention module output (before residual): queries from `x`,
/// keys/values from the other stream's rows `y` (`[m, d_other]`).
#[allow(clippy::too_many_arguments)]
pub fn cross_attention(
    x: &[f32],
    cu: &[i32],
    d: usize,
    heads: usize,
    y: &[f32],
    cu_y: &[i32],
    d_other: usize,
    w: &CrossAttentionWeights,
    mask: Option<&[u8]>,
) -> Vec<f32> {
    let n = x.len() / d;
    let m = y.len() / d_other.max(1);
    let q = linear(x, n, &w.q.weight, &w.q.bias, d, d);
    let kv = linear(y, m, &w.kv.weight, &w.kv.bias, 2 * d, d_other);
    let k = columns(&kv, 2 * d, 0, d);
    let v = columns(&kv, 2 * d, d, d);
    let ctx = attention(&q, &k, &v, cu, cu_y, heads, d / heads, mask);
    linear(&ctx, n, &w.out.weight, &w.out.bias, d, d)
}

/// FFN module output (before residual): `fc2(act(fc1 x))`, `act` the
/// stream's activation (erf GELU or quick GELU).
pub fn ffn(x: &[f32], d: usize, w: &FfnWeights, act: Activation) -> Vec<f32> {
    let n = x.len() / d;
    let mut h = linear(x, n, &w.fc1.weight, &w.fc1.bias, w.fc1.out, d);
    match act {
        Activation::Gelu => gelu_in_place(&mut h),
        Activation::QuickGelu => quick_gelu_in_place(&mut h),
    }
    linear(&h, n, &w.fc2.weight, &w.fc2.bias, d, w.fc2.inp)
}

/// One layer on compacted rows `x` (an `EncoderLayer` when `other` is None
/// and the weights have no cross-attention, else a `CrossLayer`).
///
/// Pre-LN: `h = x + SA(LN1 x)`; `h = h + CA(LN2 h, y)`; `o = h + FFN(LN3 h)`.
/// Post-LN: `h = LN1(x + SA x)`; `h = LN2(h + CA(h, y))`; `o = LN3(h + FFN h)`.
pub fn layer(
    s: &StreamConfig,
    w: &LayerWeights,
    x: &Packed,
    other: Option<&Packed>,
    self_mask: Option<&[u8]>,
    cross_mask: Option<&[u8]>,
) -> Vec<f32> {
    let (d, hd, eps) = (s.hidden, s.heads, s.ln_eps);
    let cu = &x.cu_seqlens;
    let cross = |h: &[f32], y: &Packed, ca: &CrossAttentionWeights| {
        cross_attention(h, cu, d, hd, &y.rows, &y.cu_seqlens, y.d, ca, cross_mask)
    };
    if s.pre_ln {
        let mut h = x.rows.clone();
        let a = self_attention(
            &ln(&h, d, &w.self_attn.ln, eps),
            cu,
            d,
            hd,
            &w.self_attn,
            self_mask,
        );
        add_in_place(&mut h, &a);
        if let (Some(ca), Some(y)) = (&w.cross_attn, other) {
            let c = cross(&ln(&h, d, &ca.ln, eps), y, ca);
            add_in_place(&mut h, &c);
        }
        let f = ffn(&ln(&h, d, &w.ffn.ln, eps), d, &w.ffn, s.activation);
        add_in_place(&mut h, &f);
        h
    } else {
        let mut h = x.rows.clone();
        let a = self_attention(&h, cu, d, hd, &w.self_attn, self_mask);
        add_in_place(&mut h, &a);
        let mut h = ln(&h, d, &w.self_attn.ln, eps);
        if let (Some(ca), Some(y)) = (&w.cross_attn, other) {
            let c = cross(&h, y, ca);
            add_in_place(&mut h, &c);
            h = ln(&h, d, &ca.ln, eps);
        }
        let f = ffn(&h, d, &w.ffn, s.activation);
        add_in_place(&mut h, &f);
        ln(&h, d, &w.ffn.ln, eps)
    }
}

fn active_per_seq(mask: Option<&[u8]>, batch: usize, heads: usize) -> Vec<i32> {
    (0..batch)
        .map(|b| match mask {
            None => heads as i32,
            Some(m) => m[b * heads..(b + 1) * heads]
                .iter()
                .map(|&x| x as i32)
                .sum(),
        })
        .collect()
}

/// Hidden states of a pass, per stream (as HuggingFace's `hidden_states`):
/// `[0]` the rows entering the first layer (after the embedding, and CLIP's
/// `ln_pre`), `[l + 1]` the rows leaving layer `l` (the rows it kept), each
/// `[rows, D]` packed in the stream's order; the final LayerNorm, if any, is
/// in the stream's final rows, not here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// One entry per config stream.
    pub streams: Vec<Vec<Vec<f32>>>,
}

/// The whole forward pass (DESIGN.md semantics). Inputs are validated first
/// and every problem is reported in one [`Error::Input`]. `inputs.streams`
/// holds one input per input stream ([`ModelConfig::input_streams`]: every
/// stream of a basic model; BLIP's image and text; METER's two unimodal
/// encoders).
pub fn forward(weights: &Weights, inputs: &Inputs, options: &ForwardOptions) -> Result<Outputs> {
    run(weights, inputs, options, false).map(|(o, _)| o)
}

/// [`forward`], also returning every layer's hidden states ([`Trace`]).
pub fn forward_traced(
    weights: &Weights,
    inputs: &Inputs,
    options: &ForwardOptions,
) -> Result<(Outputs, Trace)> {
    run(weights, inputs, options, true)
}

fn run(
    weights: &Weights,
    inputs: &Inputs,
    options: &ForwardOptions,
    trace: bool,
) -> Result<(Outputs, Trace)> {
    let cfg = &weights.config;
    cfg.validate()?;
    let ns = cfg.streams.len();
    if weights.streams.len() != ns {
        return Err(Error::Weights(vec![format!(
            "weights hold {} streams, config {ns}",
            weights.streams.len()
        )]));
    }
    weights.check()?;
    let embeddings: Vec<&EmbeddingWeights> =
        weights.streams.iter().map(|w| &w.embeddings).collect();
    let (xs, context) = embed_inputs(cfg, &embeddings, inputs)?;
    let batch = xs[0].batch();
    let input_streams = cfg.input_streams();
    // Per config stream: its embedded entering rows (input streams now,
    // derived streams when their source has run), its output.
    let mut entering: Vec<Option<Packed>> = vec![None; ns];
    for (&s, x) in input_streams.iter().zip(xs) {
        entering[s] = Some(x);
    }
    let mut outs: Vec<Option<StreamOutput>> = vec![None; ns];
    let mut hidden: Vec<Vec<Vec<f32>>> = vec![Vec::new(); ns];
    // Rows entering each stream's first layer in the dense pass.
    let mut dense_lengths: Vec<Option<Vec<i32>>> = entering
        .iter()
        .map(|x| x.as_ref().map(|p| p.lengths()))
        .collect();
    let final_lengths_dense = |dl: &[Option<Vec<i32>>], s: usize| dl[s].clone().unwrap_or_default();
    for stage in cfg.stages() {
        let sc = &stage.config;
        let sw: Vec<&StreamWeights> = stage.streams.iter().map(|&s| &weights.streams[s]).collect();
        let (xs, ctx, dense_ctx): (Vec<Packed>, Option<Packed>, Option<Vec<i32>>) =
            match &stage.input {
                StageInput::Inputs => (
                    stage
                        .streams
                        .iter()
                        .map(|&s| {
                            entering[s]
                                .take()
                                .unwrap_or_else(|| Packed::new(Vec::new(), 1, vec![0]))
                        })
                        .collect(),
                    context.clone(),
                    context.as_ref().map(|c| c.lengths()),
                ),
                StageInput::ContextFrom(src) => {
                    let o = outs[*src].as_ref().map(|o| o.packed.clone());
                    (
                        stage
                            .streams
                            .iter()
                            .map(|&s| {
                                entering[s]
                                    .take()
                                    .unwrap_or_else(|| Packed::new(Vec::new(), 1, vec![0]))
                            })
                            .collect(),
                        o,
                        Some(final_lengths_dense(&dense_lengths, *src)),
                    )
                }
                StageInput::RowsFrom(srcs) => {
                    let mut errs = Vec::new();
                    let mut xs = Vec::new();
                    for (&s, &src) in stage.streams.iter().zip(srcs) {
                        let o = outs[src].as_ref().map(|o| &o.packed);
                        let input = StreamInput::Packed {
                            rows: o.map(|p| p.rows.clone()).unwrap_or_default(),
                            cu_seqlens: o.map(|p| p.cu_seqlens.clone()).unwrap_or_else(|| vec![0]),
                        };
                        if let Some(p) = embed(
                            &cfg.streams[s],
                            &weights.streams[s].embeddings,
                            &input,
                            &mut errs,
                        ) {
                            xs.push(p);
                        }
                        dense_lengths[s] = Some(final_lengths_dense(&dense_lengths, src));
                    }
                    if !errs.is_empty() {
                        return Err(Error::Input(errs));
                    }
                    (xs, None, None)
                }
            };
        let dl: Vec<Vec<i32>> = stage
            .streams
            .iter()
            .map(|&s| final_lengths_dense(&dense_lengths, s))
            .collect();
        let (souts, shidden) = run_stage(
            sc,
            &sw,
            xs,
            ctx,
            &StageDense {
                lengths: dl,
                other: dense_ctx,
            },
            options.dense,
            trace,
        );
        for ((&s, o), h) in stage.streams.iter().zip(souts).zip(shidden) {
            outs[s] = Some(o);
            hidden[s] = h;
        }
    }
    let streams: Vec<StreamOutput> = outs.into_iter().flatten().collect();
    let mut total = vec![SequenceFlops::default(); batch];
    for so in &streams {
        for (t, f) in total.iter_mut().zip(&so.flops) {
            t.pruned += f.pruned;
            t.dense += f.dense;
        }
    }
    let logits = match (&cfg.head, weights.head.as_deref()) {
        (Some(hc), Some(hw)) => {
            let hf = head_flops(cfg);
            for t in &mut total {
                t.pruned += hf;
                t.dense += hf;
            }
            Some(task_head(cfg, hc, hw, &streams, batch))
        }
        _ => None,
    };
    Ok((
        Outputs {
            streams,
            flops: total,
            logits,
        },
        Trace { streams: hidden },
    ))
}

/// The features a task head reads, `[batch, F]`: over the output streams,
/// each stream's pooler output, or its final first row without a pooler.
pub fn head_features(cfg: &ModelConfig, streams: &[StreamOutput], batch: usize) -> Vec<f32> {
    let outs = cfg.output_streams();
    let f: usize = outs.iter().map(|&s| cfg.streams[s].hidden).sum();
    let mut x = vec![0.0f32; batch * f];
    let mut c0 = 0;
    for &s in &outs {
        let d = cfg.streams[s].hidden;
        let so = &streams[s];
        let src = so.pooler.as_ref().unwrap_or(&so.pooled_first);
        for b in 0..batch {
            x[b * f + c0..b * f + c0 + d].copy_from_slice(&src[b * d..(b + 1) * d]);
        }
        c0 += d;
    }
    x
}

/// The task head's logits `[batch, outputs]` (see [`HeadConfig`]).
fn task_head(
    cfg: &ModelConfig,
    hc: &HeadConfig,
    hw: &HeadWeights,
    streams: &[StreamOutput],
    batch: usize,
) -> Vec<f32> {
    let x = head_features(cfg, streams, batch);
    let f = cfg.feature_width();
    match (hc, hw) {
        (_, HeadWeights::Itm { fc }) => linear(&x, batch, &fc.weight, &fc.bias, fc.out, f),
        (HeadConfig::Vqa { ln_eps, .. }, HeadWeights::Vqa { fc1, ln: l, fc2 }) => {
            let h = linear(&x, batch, &fc1.weight, &fc1.bias, f, f);
            let mut h = ln(&h, f, l, *ln_eps);
            gelu_in_place(&mut h);
            linear(&h, batch, &fc2.weight, &fc2.bias, fc2.out, f)
        }
        // Weights::check makes the head weights match the config.
        (HeadConfig::Itm, HeadWeights::Vqa { .. }) => Vec::new(),
    }
}

/// What the dense pass of a whole model feeds a stage: the rows entering
/// each stage stream's first layer, and a cross encoder's context lengths.
struct StageDense {
    lengths: Vec<Vec<i32>>,
    other: Option<Vec<i32>>,
}

/// One stage (a basic model) on its embedded entering rows: the layers, the
/// final LayerNorm, pooling, the pooler, and the FLOPs (pruned, and dense
/// from `dense`).
#[allow(clippy::too_many_arguments)]
fn run_stage(
    cfg: &ModelConfig,
    weights: &[&StreamWeights],
    mut xs: Vec<Packed>,
    context: Option<Packed>,
    dense_in: &StageDense,
    dense: bool,
    trace: bool,
) -> (Vec<StreamOutput>, Vec<Vec<Vec<f32>>>) {
    let ns = cfg.streams.len();
    let batch = xs[0].batch();
    let nl = cfg.streams[0].layers.len();
    let other_of = |xs: &[Packed], si: usize| -> Option<Packed> {
        match cfg.kind {
            ModelKind::CoAttention => Some(xs[1 - si].clone()),
            ModelKind::CrossEncoder { .. } => context.clone(),
            _ => None,
        }
    };
    let initial_lengths: Vec<Vec<i32>> = xs.iter().map(|x| x.lengths()).collect();
    let mut hidden: Vec<Vec<Vec<f32>>> = xs
        .iter()
        .map(|x| {
            if trace {
                vec![x.rows.clone()]
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut records: Vec<Vec<LayerRecord>> = vec![Vec::new(); ns];
    for l in 0..nl {
        // 1. token pruners score the entering rows (each sees the other's entering rows).
        let mut keeps: Vec<Option<(Vec<f32>, Vec<bool>)>> = Vec::new();
        for (si, s) in cfg.streams.iter().enumerate() {
            let lw = &weights[si].layers[l];
            let lc = &s.layers[l];
            keeps.push(match (&lw.token_pruner, &lc.token_pruner) {
                (Some(tw), Some(tc)) if !dense => {
                    let x = &xs[si];
                    let o = other_of(&xs, si);
                    let sc = token_scores(
                        &x.rows,
                        &x.cu_seqlens,
                        o.as_ref().map(|o| (&o.rows[..], &o.cu_seqlens[..])),
                        tw,
                        s.ln_eps,
                    );
                    let k = keep_rows(&sc, &x.cu_seqlens, &x.orig_index, &tc.rule, tc.keep_first);
                    Some((sc, k))
                }
                _ => None,
            });
        }
        // 2. compaction of every stream.
        let mut compacted = Vec::with_capacity(ns);
        let mut partial: Vec<LayerRecord> = Vec::with_capacity(ns);
        for (si, kk) in keeps.into_iter().enumerate() {
            let x = &xs[si];
            let rows_in = x.lengths();
            let orig_index_in = x.orig_index.clone();
            let (c, kept, scores, keep) = match kk {
                Some((sc, k)) => {
                    let (c, kept) = compact(x, &k);
                    (c, kept, Some(sc), Some(k))
                }
                None => (x.clone(), rows_in.clone(), None, None),
            };
            compacted.push(c);
            partial.push(LayerRecord {
                rows_in,
                orig_index_in,
                scores,
                keep,
                kept,
                self_heads: None,
                cross_heads: None,
                active_self_heads: Vec::new(),
                active_cross_heads: Vec::new(),
                flops: Vec::new(),
            });
        }
        // 3. head pruners on the compacted rows; 4. the layer.
        let mut outs = Vec::with_capacity(ns);
        for (si, s) in cfg.streams.iter().enumerate() {
            let lw = &weights[si].layers[l];
            let lc = &s.layers[l];
            let x = &compacted[si];
            let other = other_of(&compacted, si);
            let o_ref = other.as_ref().map(|o| (&o.rows[..], &o.cu_seqlens[..]));
            let run_hp = |hw: Option<&crate::spec::HeadPrunerWeights>,
                          hc: &Option<crate::spec::HeadPrunerConfig>| {
                match (hw, hc) {
                    (Some(hw), Some(hc)) if !dense => {
                        let logits = head_logits(&x.rows, &x.cu_seqlens, o_ref, hw, s.ln_eps);
                        let mask = head_mask(&logits, s.heads, hc.tau_h, hc.min_heads);
                        Some(HeadRecord { logits, mask })
                    }
                    _ => None,
                }
            };
            let sh = run_hp(lw.self_attn.head_pruner.as_ref(), &lc.self_head_pruner);
            let ch = run_hp(
                lw.cross_attn.as_ref().and_then(|c| c.head_pruner.as_ref()),
                &lc.cross_head_pruner,
            );
            let y = layer(
                s,
                lw,
                x,
                other.as_ref(),
                sh.as_ref().map(|h| &h.mask[..]),
                ch.as_ref().map(|h| &h.mask[..]),
            );
            let rec = &mut partial[si];
            rec.active_self_heads =
                active_per_seq(sh.as_ref().map(|h| &h.mask[..]), batch, s.heads);
            rec.active_cross_heads = if lw.cross_attn.is_some() {
                active_per_seq(ch.as_ref().map(|h| &h.mask[..]), batch, s.heads)
            } else {
                vec![0; batch]
            };
            let lcx = if dense {
                crate::spec::LayerConfig::default()
            } else {
                lc.clone()
            };
            let lcx = crate::spec::LayerConfig {
                token_pruner: lcx.token_pruner.filter(|_| lw.token_pruner.is_some()),
                self_head_pruner: lcx.self_head_pruner.filter(|_| sh.is_some()),
                cross_head_pruner: lcx.cross_head_pruner.filter(|_| ch.is_some()),
            };
            rec.flops = (0..batch)
                .map(|b| {
                    layer_flops(
                        s,
                        &lcx,
                        cfg.other_hidden(si),
                        &LayerCounts {
                            rows_in: rec.rows_in[b] as usize,
                            rows_kept: rec.kept[b] as usize,
                            other_rows: other.as_ref().map(|o| o.len(b)),
                            self_heads: rec.active_self_heads[b] as usize,
                            cross_heads: rec.active_cross_heads[b] as usize,
                        },
                    )
                })
                .collect();
            rec.self_heads = sh;
            rec.cross_heads = ch;
            if trace {
                hidden[si].push(y.clone());
            }
            outs.push(Packed {
                rows: y,
                ..x.clone()
            });
        }
        for (si, r) in partial.into_iter().enumerate() {
            records[si].push(r);
        }
        xs = outs;
    }
    // final LN, pooling, pooler, FLOPs.
    let mut streams = Vec::with_capacity(ns);
    for (si, (s, mut x)) in cfg.streams.iter().zip(xs).enumerate() {
        if let Some(f) = &weights[si].final_ln {
            x.rows = ln(&x.rows, s.hidden, f, s.ln_eps);
        }
        let d = s.hidden;
        let mut pooled_first = vec![0.0f32; batch * d];
        let mut pooled_mean = vec![0.0f32; batch * d];
        for b in 0..batch {
            let (lo, hi) = (x.cu_seqlens[b] as usize, x.cu_seqlens[b + 1] as usize);
            if hi > lo {
                pooled_first[b * d..(b + 1) * d].copy_from_slice(&x.rows[lo * d..(lo + 1) * d]);
            }
            pooled_mean[b * d..(b + 1) * d].copy_from_slice(&mean_rows(&x.rows, d, lo, hi));
        }
        let pooler = weights[si].pooler.as_ref().map(|p| {
            let mut y = linear(&pooled_first, batch, &p.weight, &p.bias, d, d);
            y.iter_mut().for_each(|v| *v = v.tanh());
            y
        });
        let other_d = cfg.other_hidden(si);
        let flops: Vec<SequenceFlops> = (0..batch)
            .map(|b| {
                let n = initial_lengths[si][b] as usize;
                let nd = dense_in.lengths[si].get(b).copied().unwrap_or(0).max(0) as usize;
                let emb = embedding_flops(s, n);
                let emb_dense = embedding_flops(s, nd);
                let pool = pooler_flops(s);
                let mut pruned = Flops {
                    model: emb + pool,
                    executed: emb + pool,
                };
                for r in &records[si] {
                    pruned += r.flops[b];
                }
                let other_rows = match cfg.kind {
                    ModelKind::CoAttention => {
                        dense_in.lengths[1 - si].get(b).map(|&n| n.max(0) as usize)
                    }
                    ModelKind::CrossEncoder { .. } => dense_in
                        .other
                        .as_ref()
                        .and_then(|o| o.get(b))
                        .map(|&n| n.max(0) as usize),
                    _ => None,
                };
                let dl = dense_layer_flops(s, other_d, nd, other_rows);
                let dense_total = emb_dense + pool + dl * s.layers.len() as u64;
                SequenceFlops {
                    pruned,
                    dense: Flops {
                        model: dense_total,
                        executed: dense_total,
                    },
                }
            })
            .collect();
        streams.push(StreamOutput {
            name: s.name.clone(),
            packed: x,
            pooled_first,
            pooled_mean,
            pooler,
            layers: std::mem::take(&mut records[si]),
            flops,
        });
    }
    (streams, hidden)
}
