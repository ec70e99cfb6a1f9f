//! What a pruner scores ([`pruner_input`]), and the head-pruner step
//! ([`run_head_pruner`]): logits, mask, active pairs and counts of one
//! attention module, on the compacted rows.

use cudarc::driver::{CudaSlice, CudaView};
use half::f16;

use super::super::weights::DevHeadPruner;
use super::super::workspace::StreamWs;
use super::buffers::OtherRef;
use super::launch::ln_dev;
use super::shape::Cur;
use crate::device::Device;
use crate::ops::{
    head_scores, HeadPrunerDev, HeadScoreOutputs, HeadScoreWorkspace, OtherStream, PrunerInput,
};
use crate::spec::{HeadPrunerConfig, StreamConfig};
use crate::Result;

/// What a token or head pruner scores: a stream's current rows, seeing the
/// other stream (or the context) as it stands.
pub(super) fn pruner_input<'a>(
    x: &'a CudaSlice<f16>,
    total_rows: usize,
    batch: usize,
    cu_seqlens: &'a CudaView<'a, i32>,
    other: Option<&'a OtherRef<'a>>,
) -> PrunerInput<'a> {
    PrunerInput {
        batch,
        total_rows,
        x,
        cu_seqlens,
        other: other.map(|o| OtherStream {
            rows: o.rows,
            cu_seqlens: &o.cu,
            total_rows: o.n,
        }),
    }
}

/// A head pruner on stream `sc`'s compacted rows: logits and mask into the
/// stream's logs at `off`, active pairs into the module's list, active-head
/// counts into the statistics slot `counts`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_head_pruner(
    dev: &Device,
    sc: &StreamConfig,
    w: &mut StreamWs,
    other: Option<&OtherRef<'_>>,
    c: Cur,
    batch: usize,
    hw: &DevHeadPruner,
    hc: &HeadPrunerConfig,
    module: usize,
    off: usize,
    counts: &mut CudaViewMutI32<'_>,
) -> Result<()> {
    let bh = batch * sc.heads;
    let cu_v = w.cu[c.c].slice(0..batch + 1);
    let input = pruner_input(&w.x[c.x], c.rows, batch, &cu_v, other);
    let weights = HeadPrunerDev {
        ln_h: ln_dev(&hw.ln_h),
        ln_hc: hw.ln_hc.as_ref().map(ln_dev),
        w1: &hw.w1,
        b1: &hw.b1,
        w2: &hw.w2,
        b2: &hw.b2,
        d: sc.hidden,
        d_other: hw.d_other,
        hh: hw.hh,
        heads: sc.heads,
        eps: sc.ln_eps,
    };
    let has_other = other.is_some();
    let mut logits = w.logit_log.slice_mut(off..off + bh);
    let mut mask = w.mask_log.slice_mut(off..off + bh);
    let (pairs, count) = if module == 0 {
        (&mut w.pairs_self, &mut w.count_self)
    } else {
        (&mut w.pairs_cross, &mut w.count_cross)
    };
    head_scores(
        dev,
        &input,
        &weights,
        HeadScoreWorkspace {
            u: &mut w.u,
            uy: has_other.then_some(&mut w.uy as _),
            g_x: &mut w.g_self,
            g_y: has_other.then_some(&mut w.g_cross as _),
        },
        HeadScoreOutputs {
            logits: &mut logits,
            mask: &mut mask,
            pairs,
            pair_count: count,
            head_counts: Some(counts),
            tau: hc.tau_h,
            min_heads: hc.min_heads,
        },
    )
}

type CudaViewMutI32<'a> = cudarc::driver::CudaViewMut<'a, i32>;
