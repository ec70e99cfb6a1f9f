//! Masked token compaction (DESIGN.md, "masked token compaction").

/// The pass's packed rows ([`crate::pass::Packed`]), re-exported where they
/// used to live.
pub use crate::pass::Packed;

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
