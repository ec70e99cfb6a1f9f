//! The head scorer's wrapper: [`head_scores`] (see the module docs of
//! `ops::score`).

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use super::super::{check_len, opt_ptr_mut};
use super::common::{
    check_batch_d, check_other, check_rows, check_scratch, check_tau, exact, ln_mean_step, LnDev,
    LnMeanStep, PrunerInput,
};
use crate::device::Device;
use crate::{Error, Result};

const OP_HEAD: &str = "head_scores";

/// Largest `d + d_other` and hidden width of the head pruner (shared-memory
/// arrays of `head_logits_f16`).
pub const HEAD_MAX_IN: usize = 4096;

/// Largest head-pruner hidden width.
pub const HEAD_MAX_HIDDEN: usize = 4096;

/// Most heads the head pruner handles.
pub const HEAD_MAX_HEADS: usize = 64;

/// The head pruner's weights on the device (f16).
pub struct HeadPrunerDev<'a> {
    /// `LN_h`, `[d]`.
    pub ln_h: LnDev<'a>,
    /// `LN_hc`, `[d_other]`, for cross-modal pruners.
    pub ln_hc: Option<LnDev<'a>>,
    /// `[hh, d + d_other]` (`d_other` = 0 for single-stream pruners).
    pub w1: &'a dyn DevicePtr<f16>,
    /// `[hh]`.
    pub b1: &'a dyn DevicePtr<f16>,
    /// `[heads, hh]`.
    pub w2: &'a dyn DevicePtr<f16>,
    /// `[heads]`.
    pub b2: &'a dyn DevicePtr<f16>,
    /// Own width.
    pub d: usize,
    /// Other-stream width, if the pruner has `LN_hc`.
    pub d_other: Option<usize>,
    /// Hidden width (multiple of 8).
    pub hh: usize,
    /// Heads.
    pub heads: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// Scratch of [`head_scores`].
pub struct HeadScoreWorkspace<'a> {
    /// `[total_rows, d]` f16.
    pub u: &'a mut dyn DevicePtrMut<f16>,
    /// `[other.total_rows, d_other]` f16 (with an other stream).
    pub uy: Option<&'a mut dyn DevicePtrMut<f16>>,
    /// `[batch, d]` f32.
    pub g_x: &'a mut dyn DevicePtrMut<f32>,
    /// `[batch, d_other]` f32 (with an other stream).
    pub g_y: Option<&'a mut dyn DevicePtrMut<f32>>,
}

/// What [`head_scores`] writes.
pub struct HeadScoreOutputs<'a> {
    /// `[batch, heads]` f32 logits `a_b`.
    pub logits: &'a mut dyn DevicePtrMut<f32>,
    /// `[batch, heads]` u8 mask (1 active).
    pub mask: &'a mut dyn DevicePtrMut<u8>,
    /// `[2 * batch * heads]` i32: active pairs `(sequence, head)`, interleaved,
    /// in (sequence, head) order; only the first `2 * count` entries are written.
    pub pairs: &'a mut dyn DevicePtrMut<i32>,
    /// One i32: the number of active pairs.
    pub pair_count: &'a mut dyn DevicePtrMut<i32>,
    /// `[batch]` i32: active heads per sequence (a statistics slot), if wanted.
    pub head_counts: Option<&'a mut dyn DevicePtrMut<i32>>,
    /// Threshold on `sigmoid(a)`.
    pub tau: f32,
    /// Top-up target.
    pub min_heads: usize,
}

/// Sizes checked by [`validate_head_scores`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HeadScoreDims {
    /// Sequences.
    pub batch: usize,
    /// Host bound on the own rows.
    pub total_rows: usize,
    /// Host bound on the other stream's rows, if any.
    pub other_total_rows: Option<usize>,
    /// Own width.
    pub d: usize,
    /// The pruner's other-stream width, if any.
    pub d_other: Option<usize>,
    /// Hidden width.
    pub hh: usize,
    /// Heads.
    pub heads: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Threshold.
    pub tau: f32,
}

/// Buffer lengths for [`validate_head_scores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadScoreLens {
    /// `x`.
    pub x: usize,
    /// `cu_seqlens`.
    pub cu_seqlens: usize,
    /// Other rows.
    pub y: Option<usize>,
    /// Other cu_seqlens.
    pub y_cu_seqlens: Option<usize>,
    /// `ln_h` gamma, beta.
    pub ln_h: (usize, usize),
    /// `ln_hc` gamma, beta.
    pub ln_hc: Option<(usize, usize)>,
    /// `w1`.
    pub w1: usize,
    /// `b1`.
    pub b1: usize,
    /// `w2`.
    pub w2: usize,
    /// `b2`.
    pub b2: usize,
    /// Workspace `u`.
    pub u: usize,
    /// Workspace `uy`.
    pub uy: Option<usize>,
    /// Workspace `g_x`.
    pub g_x: usize,
    /// Workspace `g_y`.
    pub g_y: Option<usize>,
    /// `logits`.
    pub logits: usize,
    /// `mask`.
    pub mask: usize,
    /// `pairs`.
    pub pairs: usize,
    /// `pair_count`.
    pub pair_count: usize,
    /// `head_counts`.
    pub head_counts: Option<usize>,
}

/// Checks a head-scoring call's sizes before any device use.
pub fn validate_head_scores(dims: &HeadScoreDims, lens: &HeadScoreLens) -> Result<()> {
    let op = OP_HEAD;
    let HeadScoreDims {
        batch,
        total_rows,
        other_total_rows,
        d,
        d_other,
        hh,
        heads,
        eps,
        tau,
    } = *dims;
    check_batch_d(op, batch, d, eps)?;
    check_tau(op, tau)?;
    let dc = d_other.unwrap_or(0);
    if dc % 8 != 0 {
        return Err(Error::invalid(
            op,
            format!("d_other = {dc}: must be a multiple of 8"),
        ));
    }
    if d + dc > HEAD_MAX_IN {
        return Err(Error::Unsupported {
            op,
            message: format!("d + d_other = {} exceeds {HEAD_MAX_IN}", d + dc),
        });
    }
    if hh == 0 || hh % 8 != 0 || hh > HEAD_MAX_HIDDEN {
        return Err(Error::Unsupported {
            op,
            message: format!(
                "hidden width hh = {hh}: must be a positive multiple of 8 up to {HEAD_MAX_HIDDEN}"
            ),
        });
    }
    if heads == 0 || heads > HEAD_MAX_HEADS {
        return Err(Error::Unsupported {
            op,
            message: format!("heads = {heads}: must be in 1..={HEAD_MAX_HEADS}"),
        });
    }
    check_rows(
        op,
        batch,
        total_rows,
        d,
        lens.x,
        lens.cu_seqlens,
        "ln_h",
        lens.ln_h,
    )?;
    exact(op, "w1", lens.w1, hh * (d + dc))?;
    exact(op, "b1", lens.b1, hh)?;
    exact(op, "w2", lens.w2, heads * hh)?;
    exact(op, "b2", lens.b2, heads)?;
    check_other(
        op,
        batch,
        d_other,
        other_total_rows,
        lens.y,
        lens.y_cu_seqlens,
        lens.ln_hc,
        lens.uy,
        lens.g_y,
    )?;
    check_scratch(op, batch, total_rows, d, lens.u, "g_x", lens.g_x)?;
    check_len(op, "logits", lens.logits, batch * heads)?;
    check_len(op, "mask", lens.mask, batch * heads)?;
    check_len(op, "pairs", lens.pairs, 2 * batch * heads)?;
    check_len(op, "pair_count", lens.pair_count, 1)?;
    if let Some(h) = lens.head_counts {
        check_len(op, "head_counts", h, batch)?;
    }
    Ok(())
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct HeadShapeC {
    batch: i32,
    d: i32,
    dc: i32,
    hh: i32,
    heads: i32,
    tau: f32,
    min_heads: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as `struct HeadShape`.
unsafe impl DeviceRepr for HeadShapeC {}

/// The head pruner on the device: logits, mask (with the `min_heads`
/// top-up), the compacted active-pair list and its count (see module docs).
/// A pruner with `LN_hc` but no other stream uses zeros for the cross mean.
pub fn head_scores(
    dev: &Device,
    input: &PrunerInput<'_>,
    w: &HeadPrunerDev<'_>,
    ws: HeadScoreWorkspace<'_>,
    out: HeadScoreOutputs<'_>,
) -> Result<()> {
    let dims = HeadScoreDims {
        batch: input.batch,
        total_rows: input.total_rows,
        other_total_rows: input.other.as_ref().map(|o| o.total_rows),
        d: w.d,
        d_other: w.d_other,
        hh: w.hh,
        heads: w.heads,
        eps: w.eps,
        tau: out.tau,
    };
    let lens = HeadScoreLens {
        x: input.x.len(),
        cu_seqlens: input.cu_seqlens.len(),
        y: input.other.as_ref().map(|o| o.rows.len()),
        y_cu_seqlens: input.other.as_ref().map(|o| o.cu_seqlens.len()),
        ln_h: w.ln_h.lens(),
        ln_hc: w.ln_hc.as_ref().map(LnDev::lens),
        w1: w.w1.len(),
        b1: w.b1.len(),
        w2: w.w2.len(),
        b2: w.b2.len(),
        u: ws.u.len(),
        uy: ws.uy.as_ref().map(|x| x.len()),
        g_x: ws.g_x.len(),
        g_y: ws.g_y.as_ref().map(|x| x.len()),
        logits: out.logits.len(),
        mask: out.mask.len(),
        pairs: out.pairs.len(),
        pair_count: out.pair_count.len(),
        head_counts: out.head_counts.as_ref().map(|x| x.len()),
    };
    validate_head_scores(&dims, &lens)?;
    crate::kernels::ensure_built()?;
    let logits_fn = dev.function("score", "head_logits_f16")?;
    let pairs_fn = dev.function("score", "head_pairs")?;
    let stream = dev.stream();
    let (d, batch) = (w.d, input.batch);

    let (w1_ptr, _gw1) = w.w1.device_ptr(stream);
    let (b1_ptr, _gb1) = w.b1.device_ptr(stream);
    let (w2_ptr, _gw2) = w.w2.device_ptr(stream);
    let (b2_ptr, _gb2) = w.b2.device_ptr(stream);
    let (lo_ptr, _glo) = out.logits.device_ptr_mut(stream);
    let (m_ptr, _gm) = out.mask.device_ptr_mut(stream);
    let (p_ptr, _gp) = out.pairs.device_ptr_mut(stream);
    let (pc_ptr, _gpc) = out.pair_count.device_ptr_mut(stream);
    let (hc_ptr, _ghc) = opt_ptr_mut(out.head_counts, stream);
    let own = LnMeanStep {
        between: [Some(("w1", w1_ptr)), Some(("w2", w2_ptr))],
        skip_empty: true,
        ..LnMeanStep::scored(input, d, w.eps, ("ln_h", &w.ln_h), ws.u, ("g_x", ws.g_x))
    };
    let own = ln_mean_step(dev, OP_HEAD, own)?;
    // No rows in the whole batch: nothing wrote g_x, and the kernel reads
    // zeros for the means instead (a null g_x).
    let gx_ptr = if own.launched { own.g } else { 0 };
    let mut gy_ptr = 0u64;
    let _other;
    if let (Some(o), Some(ln), Some(uy), Some(g_y)) = (&input.other, &w.ln_hc, ws.uy, ws.g_y) {
        let dc = w.d_other.unwrap_or(0);
        let step = LnMeanStep {
            skip_empty: true,
            ..LnMeanStep::other(batch, o, dc, w.eps, ("ln_hc", ln), uy, ("g_y", g_y))
        };
        let ptrs = ln_mean_step(dev, OP_HEAD, step)?;
        if ptrs.launched {
            gy_ptr = ptrs.g;
        }
        _other = Some(ptrs);
    } else {
        _other = None;
    }

    let params = HeadShapeC {
        batch: batch as i32,
        d: d as i32,
        dc: w.d_other.unwrap_or(0) as i32,
        hh: w.hh as i32,
        heads: w.heads as i32,
        tau: out.tau,
        min_heads: out.min_heads.min(w.heads) as i32,
    };
    let mut launch = stream.launch_builder(&logits_fn);
    launch
        .arg(&gx_ptr)
        .arg(&gy_ptr)
        .arg(&w1_ptr)
        .arg(&b1_ptr)
        .arg(&w2_ptr)
        .arg(&b2_ptr)
        .arg(&lo_ptr)
        .arg(&m_ptr)
        .arg(&hc_ptr)
        .arg(&params);
    // SAFETY: arguments match `head_logits_f16(const float* g_x, const float*
    // g_y, const half* w1, const half* b1, const half* w2, const half* b2,
    // float* logits, u8* mask, int* head_counts, HeadShape)`; g_x [batch, d]
    // or null (zeros stand in), g_y [batch, dc] or null (zeros stand in), w1
    // [hh, d + dc], b1 [hh], w2 [heads, hh], b2 [heads], logits and mask
    // [batch, heads], head_counts
    // [batch] or null (validated); d + dc, hh and heads fit the kernel's
    // static shared arrays (validated). One block per sequence.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: (batch as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching head_logits_f16", e))?;
    dev.check_launch("head_logits_f16")?;

    let (b_i, h_i) = (batch as i32, w.heads as i32);
    let mut launch = stream.launch_builder(&pairs_fn);
    launch
        .arg(&m_ptr)
        .arg(&p_ptr)
        .arg(&pc_ptr)
        .arg(&b_i)
        .arg(&h_i);
    // SAFETY: arguments match `head_pairs(const u8* mask, int* pairs, int*
    // count, int batch, int heads)`; mask holds batch * heads entries, pairs
    // 2 * batch * heads (at most that many are active), count one i32. One
    // block.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching head_pairs", e))?;
    dev.check_launch("head_pairs")
}
