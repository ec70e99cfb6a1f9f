//! The token scorer's wrappers: [`token_scores`] (the fused scorer, see the
//! module docs of `ops::score`) and its unfused baseline tail [`score_dot`].

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use super::super::{check_aligned, check_len, opt_ptr_mut, rows_i32};
use super::common::{
    check_batch_d, check_other, check_rows, check_scratch, check_tau, exact, ln_mean_step, LnDev,
    LnMeanStep, PrunerInput,
};
use crate::device::Device;
use crate::{Error, Result};

const OP_TOKEN: &str = "token_scores";

/// Tile sizes of `score_rows_f16`: `d` and `hs` must be multiples of these.
pub const SCORE_TILE: usize = 64;

/// The token pruner's weights on the device (f16; see DESIGN.md).
pub struct TokenPrunerDev<'a> {
    /// `LN_p`, `[d]`.
    pub ln_p: LnDev<'a>,
    /// `LN_c` for the other stream, `[d_other]` (cross-modal pruners).
    pub ln_c: Option<LnDev<'a>>,
    /// `[hs, d]`.
    pub w1x: &'a dyn DevicePtr<f16>,
    /// `[hs, d]`.
    pub w1s: &'a dyn DevicePtr<f16>,
    /// `[hs, d_other]`.
    pub w1c: Option<&'a dyn DevicePtr<f16>>,
    /// `[hs]`.
    pub b1: &'a dyn DevicePtr<f16>,
    /// `[hs]`.
    pub w2: &'a dyn DevicePtr<f16>,
    /// Output bias.
    pub b2: f32,
    /// Own-stream width (multiple of 64).
    pub d: usize,
    /// Other-stream width (multiple of 8), when the pruner has `LN_c`/`W1c`.
    pub d_other: Option<usize>,
    /// Hidden width (multiple of 64).
    pub hs: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// Scratch buffers of [`token_scores`].
pub struct TokenScoreWorkspace<'a> {
    /// `[total_rows, d]` f16: `LN_p(x)`.
    pub u: &'a mut dyn DevicePtrMut<f16>,
    /// `[other.total_rows, d_other]` f16: `LN_c(y)` (needed with an other stream).
    pub uy: Option<&'a mut dyn DevicePtrMut<f16>>,
    /// `[batch, d]` f32.
    pub g_self: &'a mut dyn DevicePtrMut<f32>,
    /// `[batch, d_other]` f32 (needed with an other stream).
    pub g_cross: Option<&'a mut dyn DevicePtrMut<f32>>,
    /// `[batch, hs]` f32: `c_b`.
    pub context: &'a mut dyn DevicePtrMut<f32>,
    /// Optional `[hs / 64, total_rows]` f32: lets [`token_scores`] split the
    /// hidden units of a row tile over several blocks (per-slice partial row
    /// sums, added up by `score_finalize`) when there are too few row tiles to
    /// fill the GPU (small batches). None: one block per row tile.
    pub partial: Option<&'a mut dyn DevicePtrMut<f32>>,
}

/// What [`token_scores`] writes.
pub struct TokenScoreOutputs<'a> {
    /// `[total_rows]` f32: `s_i`.
    pub scores: &'a mut dyn DevicePtrMut<f32>,
    /// `[total_rows]` u8: the threshold rule's keep flags, if wanted.
    pub flags: Option<&'a mut dyn DevicePtrMut<u8>>,
    /// Threshold on `sigmoid(s_i)` for the flags.
    pub tau: f32,
    /// Flags: force each sequence's first row.
    pub keep_first: bool,
}

/// The sizes [`validate_token_scores`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TokenScoreDims {
    /// Sequences.
    pub batch: usize,
    /// Host bound on the own stream's rows.
    pub total_rows: usize,
    /// Host bound on the other stream's rows, when there is one.
    pub other_total_rows: Option<usize>,
    /// Own width.
    pub d: usize,
    /// The pruner's other-stream width (`LN_c`/`W1c`), if it has one.
    pub d_other: Option<usize>,
    /// Hidden width.
    pub hs: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Threshold.
    pub tau: f32,
}

/// Buffer lengths (elements) for [`validate_token_scores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenScoreLens {
    /// `x`.
    pub x: usize,
    /// `cu_seqlens`.
    pub cu_seqlens: usize,
    /// Other stream `rows`.
    pub y: Option<usize>,
    /// Other stream `cu_seqlens`.
    pub y_cu_seqlens: Option<usize>,
    /// `ln_p` gamma, beta.
    pub ln_p: (usize, usize),
    /// `ln_c` gamma, beta.
    pub ln_c: Option<(usize, usize)>,
    /// `w1x`.
    pub w1x: usize,
    /// `w1s`.
    pub w1s: usize,
    /// `w1c`.
    pub w1c: Option<usize>,
    /// `b1`.
    pub b1: usize,
    /// `w2`.
    pub w2: usize,
    /// Workspace `u`.
    pub u: usize,
    /// Workspace `uy`.
    pub uy: Option<usize>,
    /// Workspace `g_self`.
    pub g_self: usize,
    /// Workspace `g_cross`.
    pub g_cross: Option<usize>,
    /// Workspace `context`.
    pub context: usize,
    /// Workspace `partial`.
    pub partial: Option<usize>,
    /// `scores`.
    pub scores: usize,
    /// `flags`.
    pub flags: Option<usize>,
}

/// Checks a token-scoring call's sizes before any device use.
pub fn validate_token_scores(dims: &TokenScoreDims, lens: &TokenScoreLens) -> Result<()> {
    let op = OP_TOKEN;
    let TokenScoreDims {
        batch,
        total_rows,
        other_total_rows,
        d,
        d_other,
        hs,
        eps,
        tau,
    } = *dims;
    check_batch_d(op, batch, d, eps)?;
    if d % SCORE_TILE != 0 {
        return Err(Error::Unsupported {
            op,
            message: format!("d = {d}: the fused scorer needs a multiple of {SCORE_TILE}"),
        });
    }
    if hs == 0 || hs % SCORE_TILE != 0 {
        return Err(Error::Unsupported {
            op,
            message: format!(
                "hidden width hs = {hs}: the fused scorer needs a positive multiple of {SCORE_TILE}"
            ),
        });
    }
    check_tau(op, tau)?;
    check_rows(
        op,
        batch,
        total_rows,
        d,
        lens.x,
        lens.cu_seqlens,
        "ln_p",
        lens.ln_p,
    )?;
    exact(op, "w1x", lens.w1x, hs * d)?;
    exact(op, "w1s", lens.w1s, hs * d)?;
    exact(op, "b1", lens.b1, hs)?;
    exact(op, "w2", lens.w2, hs)?;
    if let (Some(dc), Some(w1c)) = (d_other, lens.w1c) {
        exact(op, "w1c", w1c, hs * dc)?;
    }
    if other_total_rows.is_some() && lens.w1c.is_none() {
        return Err(Error::invalid(op, "an other stream needs the pruner's W1c"));
    }
    check_other(
        op,
        batch,
        d_other,
        other_total_rows,
        lens.y,
        lens.y_cu_seqlens,
        lens.ln_c,
        lens.uy,
        lens.g_cross,
    )?;
    check_scratch(op, batch, total_rows, d, lens.u, "g_self", lens.g_self)?;
    check_len(op, "workspace context", lens.context, batch * hs)?;
    if let Some(p) = lens.partial {
        check_len(op, "workspace partial", p, (hs / SCORE_TILE) * total_rows)?;
    }
    check_len(op, "scores", lens.scores, total_rows)?;
    if let Some(f) = lens.flags {
        check_len(op, "flags", f, total_rows)?;
    }
    Ok(())
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ScoreContextShapeC {
    batch: i32,
    d: i32,
    dc: i32,
    hs: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as `struct ScoreContextShape`.
unsafe impl DeviceRepr for ScoreContextShapeC {}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ScoreRowsShapeC {
    rows: i32,
    batch: i32,
    d: i32,
    hs: i32,
    b2: f32,
    tau: f32,
    keep_first: i32,
    splits: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as `struct ScoreRowsShape`.
unsafe impl DeviceRepr for ScoreRowsShapeC {}

/// The token pruner's scores `s_i` (and the threshold rule's keep flags) for
/// every packed row, on the device (see the module docs).
pub fn token_scores(
    dev: &Device,
    input: &PrunerInput<'_>,
    w: &TokenPrunerDev<'_>,
    ws: TokenScoreWorkspace<'_>,
    out: TokenScoreOutputs<'_>,
) -> Result<()> {
    let dims = TokenScoreDims {
        batch: input.batch,
        total_rows: input.total_rows,
        other_total_rows: input.other.as_ref().map(|o| o.total_rows),
        d: w.d,
        d_other: w.d_other,
        hs: w.hs,
        eps: w.eps,
        tau: out.tau,
    };
    let lens = TokenScoreLens {
        x: input.x.len(),
        cu_seqlens: input.cu_seqlens.len(),
        y: input.other.as_ref().map(|o| o.rows.len()),
        y_cu_seqlens: input.other.as_ref().map(|o| o.cu_seqlens.len()),
        ln_p: w.ln_p.lens(),
        ln_c: w.ln_c.as_ref().map(LnDev::lens),
        w1x: w.w1x.len(),
        w1s: w.w1s.len(),
        w1c: w.w1c.map(|x| x.len()),
        b1: w.b1.len(),
        w2: w.w2.len(),
        u: ws.u.len(),
        uy: ws.uy.as_ref().map(|x| x.len()),
        g_self: ws.g_self.len(),
        g_cross: ws.g_cross.as_ref().map(|x| x.len()),
        context: ws.context.len(),
        partial: ws.partial.as_ref().map(|x| x.len()),
        scores: out.scores.len(),
        flags: out.flags.as_ref().map(|x| x.len()),
    };
    validate_token_scores(&dims, &lens)?;
    if input.total_rows == 0 {
        return Ok(());
    }
    crate::kernels::ensure_built()?;
    let ctx_fn = dev.function("score", "score_context_f16")?;
    let rows_fn = dev.function("score", "score_rows_f16")?;
    let row_tiles = input.total_rows.div_ceil(SCORE_TILE);
    let splits = if ws.partial.is_some() {
        let sms = dev
            .context()
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| Error::driver("querying the SM count", e))?;
        score_splits(row_tiles, w.hs, sms.max(1) as usize)
    } else {
        1
    };
    let stream = dev.stream();
    let (d, hs, batch) = (w.d, w.hs, input.batch);

    let (w1x_ptr, _gw1x) = w.w1x.device_ptr(stream);
    let (w1s_ptr, _gw1s) = w.w1s.device_ptr(stream);
    let (b1_ptr, _gb1) = w.b1.device_ptr(stream);
    let (w2_ptr, _gw2) = w.w2.device_ptr(stream);
    let (c_ptr, _gc) = ws.context.device_ptr_mut(stream);
    let (s_ptr, _gs) = out.scores.device_ptr_mut(stream);
    let (f_ptr, _gf) = opt_ptr_mut(out.flags, stream);
    let (p_ptr, _gp) = opt_ptr_mut(ws.partial, stream);
    let own = LnMeanStep {
        between: [Some(("w1x", w1x_ptr)), Some(("w1s", w1s_ptr))],
        ..LnMeanStep::scored(
            input,
            d,
            w.eps,
            ("ln_p", &w.ln_p),
            ws.u,
            ("g_self", ws.g_self),
        )
    };
    let own = ln_mean_step(dev, OP_TOKEN, own)?;
    let (cu_ptr, u_ptr, gs_ptr) = (own.cu, own.u, own.g);

    // The cross part: only with an other stream (validated to come with
    // LN_c, W1c and the workspace); otherwise g_cross is the zero vector and
    // W1c g_cross vanishes, so the kernel skips it (null pointers).
    let mut gc_ptr = 0u64;
    let mut w1c_ptr = 0u64;
    let mut dc = 0usize;
    let _other;
    if let (Some(o), Some(ln_c), Some(w1c), Some(uy), Some(g_cross)) =
        (&input.other, &w.ln_c, w.w1c, ws.uy, ws.g_cross)
    {
        dc = w.d_other.unwrap_or(0);
        let (wc_ptr, gwc) = w1c.device_ptr(stream);
        let step = LnMeanStep {
            after: Some(("w1c", wc_ptr)),
            ..LnMeanStep::other(
                batch,
                o,
                dc,
                w.eps,
                ("ln_c", ln_c),
                uy,
                ("g_cross", g_cross),
            )
        };
        let ptrs = ln_mean_step(dev, OP_TOKEN, step)?;
        gc_ptr = ptrs.g;
        w1c_ptr = wc_ptr;
        _other = Some((ptrs, gwc));
    } else {
        _other = None;
    }

    let ctx_params = ScoreContextShapeC {
        batch: batch as i32,
        d: d as i32,
        dc: dc as i32,
        hs: hs as i32,
    };
    let mut launch = stream.launch_builder(&ctx_fn);
    launch
        .arg(&gs_ptr)
        .arg(&gc_ptr)
        .arg(&w1s_ptr)
        .arg(&w1c_ptr)
        .arg(&b1_ptr)
        .arg(&c_ptr)
        .arg(&ctx_params);
    // SAFETY: arguments match `score_context_f16(const float*, const float*,
    // const half*, const half*, const half*, float*, ScoreContextShape)`;
    // g_self [batch, d], g_cross [batch, dc] or null, w1s [hs, d], w1c
    // [hs, dc] or null, b1 [hs], context [batch, hs] (validated, 16-byte
    // aligned where vector-loaded). Grid (hs / 8, batch), a warp per unit.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: ((hs as u32).div_ceil(8), batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching score_context_f16", e))?;
    dev.check_launch("score_context_f16")?;

    let rows_params = ScoreRowsShapeC {
        rows: input.total_rows as i32,
        batch: batch as i32,
        d: d as i32,
        hs: hs as i32,
        b2: w.b2,
        tau: out.tau,
        keep_first: out.keep_first as i32,
        splits: splits as i32,
    };
    let mut launch = stream.launch_builder(&rows_fn);
    launch
        .arg(&u_ptr)
        .arg(&cu_ptr)
        .arg(&w1x_ptr)
        .arg(&w2_ptr)
        .arg(&c_ptr)
        .arg(&s_ptr)
        .arg(&f_ptr)
        .arg(&p_ptr)
        .arg(&rows_params);
    // SAFETY: arguments match `score_rows_f16(const half* u, const int* cu,
    // const half* w1x, const half* w2, const float* c, float* scores, u8*
    // flags, float* partial, ScoreRowsShape)`; partial is null unless splits
    // > 1, and then holds hs / 64 >= splits rows of total_rows f32 (validated;
    // splits divides hs / 64). u covers total_rows * d (d % 64 == 0, 16-byte
    // aligned), w1x hs * d (hs % 64 == 0), w2 hs, c batch * hs, scores and
    // flags (or null) total_rows; rows at or past cu_seqlens[batch] (<=
    // total_rows, the caller's contract) are neither read nor written. Grid
    // (ceil(total_rows / 64), splits), 128 threads, 16 KiB static shared memory.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: (row_tiles as u32, splits as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching score_rows_f16", e))?;
    dev.check_launch("score_rows_f16")?;
    if splits == 1 {
        return Ok(());
    }
    let fin_fn = dev.function("score", "score_finalize")?;
    let mut launch = stream.launch_builder(&fin_fn);
    launch
        .arg(&p_ptr)
        .arg(&cu_ptr)
        .arg(&s_ptr)
        .arg(&f_ptr)
        .arg(&rows_params);
    // SAFETY: arguments match `score_finalize(const float* partial, const int*
    // cu, float* scores, u8* flags, ScoreRowsShape)`; partial holds splits x
    // total_rows f32 written by score_rows_f16 just before on this stream,
    // scores and flags (or null) total_rows entries; threads at or past
    // cu_seqlens[batch] return.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: ((input.total_rows as u32).div_ceil(256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching score_finalize", e))?;
    dev.check_launch("score_finalize")
}

/// How many blocks share a row tile in `score_rows_f16`: enough for about four
/// blocks per SM, as a divisor of `hs / 64` (each block takes an equal share
/// of whole 64-unit slices), at least 1.
pub fn score_splits(row_tiles: usize, hs: usize, sm_count: usize) -> usize {
    let slices = (hs / SCORE_TILE).max(1);
    let target = 4 * sm_count.max(1);
    let want = target.div_ceil(row_tiles.max(1)).clamp(1, slices);
    (1..=want).rev().find(|s| slices % s == 0).unwrap_or(1)
}

// ---------------------------------------------------------------------------
// Unfused tail (baseline).

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ScoreDotShapeC {
    rows: i32,
    hs: i32,
    b2: f32,
    tau: f32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as `struct ScoreDotShape`.
unsafe impl DeviceRepr for ScoreDotShapeC {}

/// `s_r = w2 . h_r + b2` and `flags_r = sigmoid(s_r) > tau` for `rows` rows of
/// an already activated hidden layer `h` (`[rows, hs]` f16, e.g. a cuBLASLt
/// GEMM with a bias+GELU epilogue): the second half of the *unfused* scorer,
/// kept as the fused kernel's baseline. `hs` must be a positive multiple of 8.
#[allow(clippy::too_many_arguments)]
pub fn score_dot<H, W, S, F>(
    dev: &Device,
    rows: usize,
    hs: usize,
    h: &H,
    w2: &W,
    b2: f32,
    tau: f32,
    scores: &mut S,
    flags: Option<&mut F>,
) -> Result<()>
where
    H: DevicePtr<f16>,
    W: DevicePtr<f16>,
    S: DevicePtrMut<f32>,
    F: DevicePtrMut<u8>,
{
    const OP: &str = "score_dot";
    if hs == 0 || hs % 8 != 0 {
        return Err(Error::invalid(
            OP,
            format!("hs = {hs}: must be a positive multiple of 8"),
        ));
    }
    rows_i32(OP, rows, hs)?;
    check_len(OP, "h", h.len(), rows * hs)?;
    exact(OP, "w2", w2.len(), hs)?;
    check_len(OP, "scores", scores.len(), rows)?;
    if let Some(f) = &flags {
        check_len(OP, "flags", f.len(), rows)?;
    }
    if rows == 0 {
        return Ok(());
    }
    crate::kernels::ensure_built()?;
    let func = dev.function("score", "score_dot_f16")?;
    let stream = dev.stream();
    let (h_ptr, _gh) = h.device_ptr(stream);
    let (w_ptr, _gw) = w2.device_ptr(stream);
    let (s_ptr, _gs) = scores.device_ptr_mut(stream);
    let (f_ptr, _gf) = opt_ptr_mut(flags, stream);
    check_aligned(OP, "h", h_ptr, 16)?;
    check_aligned(OP, "w2", w_ptr, 16)?;
    let params = ScoreDotShapeC {
        rows: rows as i32,
        hs: hs as i32,
        b2,
        tau,
    };
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&h_ptr)
        .arg(&w_ptr)
        .arg(&s_ptr)
        .arg(&f_ptr)
        .arg(&params);
    // SAFETY: arguments match `score_dot_f16(const half*, const half*, float*,
    // u8*, ScoreDotShape)`; h covers rows * hs, w2 hs, scores and flags (or
    // null) rows entries (validated), h and w2 16-byte aligned. One warp per
    // row, 8 per block; warps past rows return.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching score_dot_f16", e))?;
    dev.check_launch("score_dot_f16")
}
