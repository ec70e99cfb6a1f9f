//! How the pass finds its buffers in the workspace: the ping-pong pairs,
//! the other stream (or a cross encoder's context) as a stream sees it, and
//! the slots of the statistics and head logs.

use cudarc::driver::{CudaSlice, CudaView};
use half::f16;

use super::super::workspace::StreamWs;
use super::shape::Cur;
use crate::spec::{ModelConfig, ModelKind};

/// The other stream's (or the context's) rows as a layer or pruner sees them.
pub(super) struct OtherRef<'a> {
    pub(super) rows: &'a CudaSlice<f16>,
    pub(super) cu: CudaView<'a, i32>,
    pub(super) n: usize,
    pub(super) max_seqlen: usize,
    pub(super) d: usize,
}

/// The context of a cross encoder: rows, cu_seqlens, rows, longest, width.
pub(super) type ContextRef<'a> = (&'a CudaSlice<f16>, &'a CudaSlice<i32>, usize, usize, usize);

/// The other stream as seen by stream `s`: `cur` of the other stream (its
/// entering rows before compaction, its compacted rows after), or the
/// cross encoder's context.
pub(super) fn other_of<'a>(
    cfg: &ModelConfig,
    s: usize,
    o: Option<&'a StreamWs>,
    cur: &[Cur],
    batch: usize,
    ctx: Option<ContextRef<'a>>,
) -> Option<OtherRef<'a>> {
    match cfg.kind {
        // Whole models run as stages of the basic kinds.
        ModelKind::Encoder | ModelKind::Blip | ModelKind::Meter => None,
        ModelKind::CoAttention => o.map(|o| {
            let c = cur[1 - s];
            OtherRef {
                rows: &o.x[c.x],
                cu: o.cu[c.c].slice(0..batch + 1),
                n: c.rows,
                max_seqlen: c.max_seqlen(),
                d: cfg.streams[1 - s].hidden,
            }
        }),
        ModelKind::CrossEncoder { .. } => ctx.map(|(rows, cu, n, ms, d)| OtherRef {
            rows,
            cu: cu.slice(0..batch + 1),
            n,
            max_seqlen: ms.min(n),
            d,
        }),
    }
}

/// `(current, other)` of a ping-pong pair.
pub(super) fn pair<T>(a: &mut [T; 2], cur: usize) -> (&T, &mut T) {
    let [p, q] = a;
    if cur == 0 {
        (&*p, q)
    } else {
        (&*q, p)
    }
}

/// Stream `s` mutably and, in two-stream models, the other one shared.
pub(super) fn split(v: &mut [StreamWs], s: usize) -> (&mut StreamWs, Option<&StreamWs>) {
    let (lo, hi) = v.split_at_mut(1);
    if s == 0 {
        (&mut lo[0], hi.first())
    } else {
        (&mut hi[0], Some(&lo[0]))
    }
}

/// Slot of `[layers][streams][3][batch]` statistics.
pub(super) fn stat_off(l: usize, s: usize, k: usize, ns: usize, batch: usize) -> usize {
    ((l * ns + s) * 3 + k) * batch
}

/// Slot of `[layers][2][batch * heads]` head logs (module 0 self, 1 cross).
pub(super) fn head_off(l: usize, m: usize, bh: usize) -> usize {
    (l * 2 + m) * bh
}
