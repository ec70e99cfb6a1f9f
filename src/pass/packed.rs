//! Packed rows: one stream's rows of every sequence back to back, with
//! `cu_seqlens` and `orig_index` (DESIGN.md, "Data layout").

/// Packed rows of one stream: `rows [total, d]` row-major, `cu_seqlens
/// [batch + 1]`, `orig_index [total]` (position before any pruning).
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    /// `[total, d]` row-major.
    pub rows: Vec<f32>,
    /// Row width.
    pub d: usize,
    /// `[batch + 1]`, sequence `b` owns rows `cu_seqlens[b]..cu_seqlens[b+1]`.
    pub cu_seqlens: Vec<i32>,
    /// `[total]`, each row's position in its sequence before any pruning.
    pub orig_index: Vec<i32>,
}

impl Packed {
    /// Unpruned packed rows: `orig_index` counts 0.. within each sequence.
    pub fn new(rows: Vec<f32>, d: usize, cu_seqlens: Vec<i32>) -> Self {
        let mut orig_index = Vec::with_capacity(rows.len() / d.max(1));
        for w in cu_seqlens.windows(2) {
            orig_index.extend(0..(w[1] - w[0]).max(0));
        }
        Packed {
            rows,
            d,
            cu_seqlens,
            orig_index,
        }
    }
    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }
    /// Total rows.
    pub fn total(&self) -> usize {
        self.orig_index.len()
    }
    /// Rows of sequence `b`.
    pub fn len(&self, b: usize) -> usize {
        (self.cu_seqlens[b + 1] - self.cu_seqlens[b]).max(0) as usize
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
    /// Rows per sequence.
    pub fn lengths(&self) -> Vec<i32> {
        self.cu_seqlens.windows(2).map(|w| w[1] - w[0]).collect()
    }
}
