//! FLOPs accounting per instance (one sequence of one stream).
//!
//! A multiply-add counts as 2 FLOPs; only matrix products are counted
//! (LayerNorm, GELU, softmax, sigmoid, residual adds and embedding lookups
//! cost nothing). Notation for one layer of one sequence: `D` hidden, `H`
//! heads, `dh = D/H`, `F` FFN size, `Do` the other stream's hidden, `n` rows
//! entering the layer, `n'` rows kept by the token pruner (`n` without one),
//! `m'` the other stream's rows used as cross keys/values (its compacted
//! entering rows), `a` / `c` active self / cross heads (`H` without a head
//! pruner).
//!
//! **Model FLOPs** (SmartTrim's accounting: pruned tokens and pruned heads'
//! projection columns cost nothing):
//!
//! - self-attention: QKV `2 n' D (3 a dh)`, scores `2 n'^2 a dh`, context
//!   `2 n'^2 a dh`, out-projection `2 n' (a dh) D`;
//! - cross-attention: Q `2 n' D (c dh)`, KV `2 m' Do (2 c dh)`, scores and
//!   context `2 n' m' c dh` each, out-projection `2 n' (c dh) D`;
//! - FFN: `4 n' D F`;
//! - token pruner (on the `n` entering rows): `2 n D Hs` (W1x) `+ 2 n Hs`
//!   (w2) `+ 2 D Hs` (W1s) `+ 2 Do Hs` (W1c, two streams);
//! - head pruner: `2 (D + Do) hh + 2 hh H` (`Do = 0` single stream);
//! - ViT patch embedding: `2 P D (C p^2)` for `P` patches (once per image);
//! - input transform (METER's fusion streams): `2 n D D_in` on the `n` rows
//!   the source hands on;
//! - pooler: `2 D^2` per sequence; task head: `2 F 2` (ITM) or
//!   `2 F F + 2 F labels` (VQA) per instance, `F` the feature width.
//!
//! **Executed FLOPs**: what an implementation does that skips pruned tokens
//! everywhere but inactive heads only inside attention: projections (QKV,
//! Q, KV, out) run full width on the kept rows (`a = c = H` in the projection
//! terms), scores and context use the active heads only. Pruner and
//! embedding costs as above.
//!
//! **Dense**: the same model with no pruners at all (`n' = n`, `a = c = H`,
//! no pruner cost); executed and model FLOPs of the dense pass are equal.

use super::config::{EmbeddingConfig, HeadConfig, LayerConfig, ModelConfig, StreamConfig};

/// Model and executed FLOPs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flops {
    /// SmartTrim accounting.
    pub model: u64,
    /// What the kernels execute.
    pub executed: u64,
}

impl std::ops::AddAssign for Flops {
    fn add_assign(&mut self, o: Flops) {
        self.model += o.model;
        self.executed += o.executed;
    }
}

/// Per sequence FLOPs of the pruned pass and of the dense pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceFlops {
    /// The pruned pass.
    pub pruned: Flops,
    /// The dense pass (model == executed).
    pub dense: Flops,
}

/// What happened at one layer of one stream for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCounts {
    /// Rows entering the layer (`n`).
    pub rows_in: usize,
    /// Rows kept (`n'`).
    pub rows_kept: usize,
    /// Other stream's rows used as cross keys/values (`m'`), cross layers only.
    pub other_rows: Option<usize>,
    /// Active self-attention heads (`a`).
    pub self_heads: usize,
    /// Active cross-attention heads (`c`).
    pub cross_heads: usize,
}

/// FLOPs of one layer of one sequence (see the module docs).
///
/// `other_d` is the other stream's hidden size (two-stream models), which
/// sizes the cross KV projection and the pruners' cross parts.
pub fn layer_flops(
    s: &StreamConfig,
    lc: &LayerConfig,
    other_d: Option<usize>,
    c: &LayerCounts,
) -> Flops {
    let d = s.hidden as u64;
    let h = s.heads as u64;
    let dh = s.head_dim() as u64;
    let f = s.ffn as u64;
    let n = c.rows_in as u64;
    let nk = c.rows_kept as u64;
    let a = c.self_heads as u64;
    let mut model = 0u64;
    let mut exec = 0u64;
    // self-attention
    model += 2 * nk * d * 3 * a * dh + 4 * nk * nk * a * dh + 2 * nk * a * dh * d;
    exec += 2 * nk * d * 3 * d + 4 * nk * nk * a * dh + 2 * nk * d * d;
    // cross-attention
    if let Some(m) = c.other_rows {
        let m = m as u64;
        let cc = c.cross_heads as u64;
        let dout = other_d.unwrap_or(s.hidden) as u64;
        model += 2 * nk * d * cc * dh
            + 2 * m * dout * 2 * cc * dh
            + 4 * nk * m * cc * dh
            + 2 * nk * cc * dh * d;
        exec += 2 * nk * d * d + 2 * m * dout * 2 * d + 4 * nk * m * cc * dh + 2 * nk * d * d;
    }
    // FFN
    model += 4 * nk * d * f;
    exec += 4 * nk * d * f;
    // pruners
    let od = other_d.unwrap_or(0) as u64;
    let mut pr = 0u64;
    if let Some(tp) = &lc.token_pruner {
        let hs = s.token_pruner_hidden(tp) as u64;
        pr += 2 * n * d * hs + 2 * n * hs + 2 * d * hs + 2 * od * hs;
    }
    for hp in [&lc.self_head_pruner, &lc.cross_head_pruner]
        .into_iter()
        .flatten()
    {
        let hh = s.head_pruner_hidden(hp) as u64;
        pr += 2 * (d + od) * hh + 2 * hh * h;
    }
    if c.other_rows.is_none() {
        // no cross module: a cross head pruner cannot have run
    }
    Flops {
        model: model + pr,
        executed: exec + pr,
    }
}

/// FLOPs of the dense layer (no pruners, all rows, all heads).
pub fn dense_layer_flops(
    s: &StreamConfig,
    other_d: Option<usize>,
    rows: usize,
    other_rows: Option<usize>,
) -> u64 {
    let c = LayerCounts {
        rows_in: rows,
        rows_kept: rows,
        other_rows,
        self_heads: s.heads,
        cross_heads: s.heads,
    };
    layer_flops(s, &LayerConfig::default(), other_d, &c).model
}

/// FLOPs of the stream's embedding for one sequence of `rows` rows (ViT
/// patch GEMM, once per image whatever `rows`; an input transform
/// `2 rows D D_in`; BERT lookups cost nothing).
pub fn embedding_flops(s: &StreamConfig, rows: usize) -> u64 {
    match s.embedding {
        EmbeddingConfig::Vit {
            patch_size,
            channels,
            ..
        } => {
            let patches = s.embedding.vit_rows().unwrap_or(1) as u64 - 1;
            2 * patches * (s.hidden as u64) * (channels * patch_size * patch_size) as u64
        }
        EmbeddingConfig::Transform { input_hidden, .. } => {
            2 * rows as u64 * s.hidden as u64 * input_hidden as u64
        }
        _ => 0,
    }
}

/// FLOPs of the stream's pooler for one sequence (`2 D^2`; 0 without one).
pub fn pooler_flops(s: &StreamConfig) -> u64 {
    if s.pooler {
        2 * (s.hidden as u64).pow(2)
    } else {
        0
    }
}

/// FLOPs of the model's task head for one instance (`F` the feature width:
/// ITM `2 F 2`; VQA `2 F F + 2 F labels`; 0 without a head), the same for
/// the pruned and the dense pass.
pub fn head_flops(cfg: &ModelConfig) -> Flops {
    let f = cfg.feature_width() as u64;
    let n = match cfg.head {
        None => 0,
        Some(HeadConfig::Itm) => 2 * f * 2,
        Some(HeadConfig::Vqa { labels, .. }) => 2 * f * f + 2 * f * labels as u64,
    };
    Flops {
        model: n,
        executed: n,
    }
}

/// One layer of one stream as a pass ran it, for [`stream_flops`]; every
/// slice holds one value per sequence.
#[derive(Debug, Clone)]
pub struct LayerRun<'a> {
    /// The layer's pruners that ran (a pruner of the config that did not
    /// run, e.g. in dense mode, must be absent here).
    pub ran: LayerConfig,
    /// Rows entering the layer.
    pub rows_in: &'a [i32],
    /// Rows kept.
    pub kept: &'a [i32],
    /// Active self-attention heads.
    pub active_self_heads: &'a [i32],
    /// Active cross-attention heads.
    pub active_cross_heads: &'a [i32],
    /// Rows of the other stream (or context) the layer's cross-attention
    /// reads; `None` for single-stream models.
    pub other_rows: Option<&'a [i32]>,
}

/// FLOPs of one stream of a pass from what ran at each layer: per layer the
/// per-sequence [`Flops`], and per sequence the totals (embedding and pooler
/// included) of the pruned pass and of the dense pass of the same inputs
/// (`initial`: the stream's lengths entering the first layer in the dense
/// pass; `other_initial`: the other stream's or context's in the dense
/// pass, for the dense cross cost; in a whole model these are the rows the
/// dense pass feeds the stream, e.g. METER's fusion streams get the
/// unimodal encoders' unpruned rows). The same accounting as the CPU
/// reference reports.
pub fn stream_flops(
    s: &StreamConfig,
    other_d: Option<usize>,
    layers: &[LayerRun<'_>],
    initial: &[i32],
    other_initial: Option<&[i32]>,
) -> (Vec<Vec<Flops>>, Vec<SequenceFlops>) {
    let batch = initial.len();
    let n = |v: &[i32], b: usize| v.get(b).copied().unwrap_or(0).max(0) as usize;
    let per_layer: Vec<Vec<Flops>> = layers
        .iter()
        .map(|r| {
            (0..batch)
                .map(|b| {
                    layer_flops(
                        s,
                        &r.ran,
                        other_d,
                        &LayerCounts {
                            rows_in: n(r.rows_in, b),
                            rows_kept: n(r.kept, b),
                            other_rows: r.other_rows.map(|o| n(o, b)),
                            self_heads: n(r.active_self_heads, b),
                            cross_heads: n(r.active_cross_heads, b),
                        },
                    )
                })
                .collect()
        })
        .collect();
    let pool = pooler_flops(s);
    let totals = (0..batch)
        .map(|b| {
            // The rows the embedding made: those entering the first layer.
            let entering = layers.first().map_or(n(initial, b), |r| n(r.rows_in, b));
            let emb = embedding_flops(s, entering) + pool;
            let mut pruned = Flops {
                model: emb,
                executed: emb,
            };
            for l in &per_layer {
                pruned += l[b];
            }
            let dl = dense_layer_flops(s, other_d, n(initial, b), other_initial.map(|o| n(o, b)));
            let dense = embedding_flops(s, n(initial, b)) + pool + dl * s.layers.len() as u64;
            SequenceFlops {
                pruned,
                dense: Flops {
                    model: dense,
                    executed: dense,
                },
            }
        })
        .collect();
    (per_layer, totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::config::preset;

    #[test]
    fn dense_model_equals_executed() {
        let c = preset("tiny-bert").unwrap();
        let s = &c.streams[0];
        let lc = LayerConfig::default();
        let f = layer_flops(
            s,
            &lc,
            None,
            &LayerCounts {
                rows_in: 5,
                rows_kept: 5,
                other_rows: None,
                self_heads: 4,
                cross_heads: 4,
            },
        );
        assert_eq!(f.model, f.executed);
    }
}
