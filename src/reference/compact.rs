//! Masked token compaction (DESIGN.md, "masked token compaction").

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

/// Keeps the flagged rows, order preserved; returns the new packed rows and
/// kept count per sequence.
pub fn compact(p: &Packed, keep: &[bool]) -> (Packed, Vec<i32>) {
    let d = p.d;
    let mut rows = Vec::new();
    let mut orig = Vec::new();
    let mut cu = vec![0i32];
    let mut counts = Vec::with_capacity(p.batch());
    for w in p.cu_seqlens.windows(2) {
        let mut c = 0;
        let (lo, hi) = (w[0].max(0) as usize, w[1].max(0) as usize);
        for (i, &k) in keep.iter().enumerate().take(hi).skip(lo) {
            if k {
                rows.extend_from_slice(&p.rows[i * d..(i + 1) * d]);
                orig.push(p.orig_index[i]);
                c += 1;
            }
        }
        counts.push(c);
        cu.push(cu.last().copied().unwrap_or(0) + c);
    }
    (
        Packed {
            rows,
            d,
            cu_seqlens: cu,
            orig_index: orig,
        },
        counts,
    )
}
