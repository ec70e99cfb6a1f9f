//! What comes out of a forward pass, per stream: the final rows, pooled rows,
//! the pooler's output, FLOPs, and a record of what every layer did (rows
//! kept, heads active, the scores and masks behind them).

use super::Packed;
use crate::spec::{Flops, SequenceFlops};

/// A head pruner's result for one attention module.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadRecord {
    /// `a_b` logits `[batch * heads]`.
    pub logits: Vec<f32>,
    /// `[batch * heads]`, 1 active.
    pub mask: Vec<u8>,
}

/// What happened at one layer of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRecord {
    /// Rows entering the layer, per sequence.
    pub rows_in: Vec<i32>,
    /// `orig_index` of the entering rows.
    pub orig_index_in: Vec<i32>,
    /// Token scores `s_i` of the entering rows (if a token pruner ran).
    pub scores: Option<Vec<f32>>,
    /// Keep flags of the entering rows (if a token pruner ran).
    pub keep: Option<Vec<bool>>,
    /// Rows kept per sequence (= `rows_in` without a pruner).
    pub kept: Vec<i32>,
    /// Self-attention head pruner (if it ran).
    pub self_heads: Option<HeadRecord>,
    /// Cross-attention head pruner (if it ran).
    pub cross_heads: Option<HeadRecord>,
    /// Active self-attention heads per sequence.
    pub active_self_heads: Vec<i32>,
    /// Active cross-attention heads per sequence (0 without cross-attention).
    pub active_cross_heads: Vec<i32>,
    /// FLOPs of this layer per sequence.
    pub flops: Vec<Flops>,
}

/// One stream's results.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutput {
    /// The stream's name.
    pub name: String,
    /// Final rows (after the final LN if any), `cu_seqlens`, `orig_index`.
    pub packed: Packed,
    /// First row of every sequence `[batch, D]` (zeros for an empty sequence).
    pub pooled_first: Vec<f32>,
    /// Mean of every sequence's final rows `[batch, D]`.
    pub pooled_mean: Vec<f32>,
    /// The pooler's output `tanh(W x_0 + b)` `[batch, D]`, if the stream has
    /// a pooler.
    pub pooler: Option<Vec<f32>>,
    /// One record per layer.
    pub layers: Vec<LayerRecord>,
    /// FLOPs per sequence (embedding + layers), pruned and dense.
    pub flops: Vec<SequenceFlops>,
}

/// Per sequence statistics of one layer of one stream: (kept rows, active
/// self heads, active cross heads); the model description's type.
pub use crate::spec::schedule::LayerStats;

/// Per-layer statistics of streams' records: `[layer][stream]` -> (kept
/// rows, active self heads, active cross heads), each per sequence.
/// As many layers as the deepest stream; a stream past its last layer has
/// empty entries there (whole models: METER's streams have 12, 11 and 6
/// layers).
pub fn layer_stats(streams: &[StreamOutput]) -> Vec<Vec<LayerStats>> {
    let nl = streams.iter().map(|s| s.layers.len()).max().unwrap_or(0);
    (0..nl)
        .map(|l| {
            streams
                .iter()
                .map(|s| match s.layers.get(l) {
                    Some(r) => (
                        r.kept.clone(),
                        r.active_self_heads.clone(),
                        r.active_cross_heads.clone(),
                    ),
                    None => (Vec::new(), Vec::new(), Vec::new()),
                })
                .collect()
        })
        .collect()
}
