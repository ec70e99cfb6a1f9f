//! What both pruners' wrappers share: the rows a pruner scores and the
//! other stream ([`PrunerInput`], [`OtherStream`]), a LayerNorm's weights
//! ([`LnDev`]), the shared size checks, and the first step of both pruners
//! (LayerNorm of the rows and their per-sequence mean).

use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use super::super::elementwise::{launch_mean_pool, PoolShape};
use super::super::{check_len, rows_i32};
use crate::device::Device;
use crate::{Error, Result};

/// The other stream's rows of the same sequences (cross-modal pruners).
pub struct OtherStream<'a> {
    /// `[total_rows, d_other]` f16.
    pub rows: &'a dyn DevicePtr<f16>,
    /// `[batch + 1]` i32, same batch as the own stream.
    pub cu_seqlens: &'a dyn DevicePtr<i32>,
    /// Host upper bound on its packed rows.
    pub total_rows: usize,
}

/// The rows a pruner scores.
pub struct PrunerInput<'a> {
    /// Sequences.
    pub batch: usize,
    /// Host upper bound on the packed rows.
    pub total_rows: usize,
    /// `[total_rows, d]` f16.
    pub x: &'a dyn DevicePtr<f16>,
    /// `[batch + 1]` i32.
    pub cu_seqlens: &'a dyn DevicePtr<i32>,
    /// The other stream, if the model has one.
    pub other: Option<OtherStream<'a>>,
}

/// A LayerNorm's weights on the device, `[d]` f16 each.
pub struct LnDev<'a> {
    /// Scale.
    pub gamma: &'a dyn DevicePtr<f16>,
    /// Shift.
    pub beta: &'a dyn DevicePtr<f16>,
}

pub(super) fn exact(op: &'static str, name: &str, have: usize, want: usize) -> Result<()> {
    if have != want {
        Err(Error::invalid(
            op,
            format!("`{name}` holds {have} elements; exactly {want} expected"),
        ))
    } else {
        Ok(())
    }
}

pub(super) fn check_batch_d(op: &'static str, batch: usize, d: usize, eps: f32) -> Result<()> {
    if batch == 0 || batch > 65_535 {
        return Err(Error::invalid(
            op,
            format!("batch = {batch}: must be in 1..=65535"),
        ));
    }
    if d == 0 || d % 8 != 0 {
        return Err(Error::invalid(
            op,
            format!("d = {d}: the row width must be a positive multiple of 8"),
        ));
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::invalid(
            op,
            format!("eps = {eps}: must be positive and finite"),
        ));
    }
    Ok(())
}

/// The other stream's shared checks: its width, rows, cu_seqlens, LN_c.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_other(
    op: &'static str,
    batch: usize,
    d_other: Option<usize>,
    other_total: Option<usize>,
    y: Option<usize>,
    y_cu: Option<usize>,
    ln_c: Option<(usize, usize)>,
    uy: Option<usize>,
    g_cross: Option<usize>,
) -> Result<()> {
    let Some(total_y) = other_total else {
        return Ok(());
    };
    let Some(dc) = d_other else {
        return Err(Error::invalid(
            op,
            "an other stream was given but the pruner has no cross-stream weights",
        ));
    };
    if dc == 0 || dc % 8 != 0 {
        return Err(Error::invalid(
            op,
            format!("d_other = {dc}: must be a positive multiple of 8"),
        ));
    }
    rows_i32(op, total_y, dc)?;
    check_len(op, "other.rows", y.unwrap_or(0), total_y * dc)?;
    if y_cu != Some(batch + 1) {
        return Err(Error::invalid(
            op,
            format!(
                "`other.cu_seqlens` holds {} entries; batch + 1 = {} needed",
                y_cu.unwrap_or(0),
                batch + 1
            ),
        ));
    }
    let Some((g, b)) = ln_c else {
        return Err(Error::invalid(
            op,
            "an other stream needs the pruner's LN_c",
        ));
    };
    exact(op, "ln_c.gamma", g, dc)?;
    exact(op, "ln_c.beta", b, dc)?;
    check_len(op, "workspace uy", uy.unwrap_or(0), total_y * dc)?;
    check_len(op, "workspace g_cross", g_cross.unwrap_or(0), batch * dc)?;
    Ok(())
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LayerNormShapeC {
    rows: i32,
    d: i32,
    eps: f32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as `struct LayerNormShape`.
unsafe impl DeviceRepr for LayerNormShapeC {}

/// Raw `layernorm_f16` launch (no residual, host row count). The caller
/// validated every size and holds the pointers' guards.
#[allow(clippy::too_many_arguments)]
fn launch_layernorm(
    dev: &Device,
    rows: usize,
    d: usize,
    eps: f32,
    x: u64,
    gamma: u64,
    beta: u64,
    out: u64,
    rows_dev: u64,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let func = dev.function("elementwise", "layernorm_f16")?;
    let params = LayerNormShapeC {
        rows: rows as i32,
        d: d as i32,
        eps,
    };
    let null = 0u64;
    let mut launch = dev.stream().launch_builder(&func);
    launch
        .arg(&x)
        .arg(&null)
        .arg(&gamma)
        .arg(&beta)
        .arg(&out)
        .arg(&rows_dev)
        .arg(&params);
    // SAFETY: arguments match `layernorm_f16(const half* x, const half*
    // residual, const half* gamma, const half* beta, half* out, const int*
    // rows_dev, LayerNormShape)`; x and out cover rows * d elements, gamma and
    // beta d (validated by the caller), all 16-byte aligned; residual is null
    // (absent); rows_dev points at cu_seqlens[batch] (a live i32), so rows
    // past the device's true total are skipped. One warp per row, 4 per block.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(4), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching layernorm_f16", e))?;
    dev.check_launch("layernorm_f16")
}

/// LN + mean of the own stream (and of the other stream when given) into the
/// workspace; returns nothing, all on the stream. Pointers are raw and
/// validated by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn ln_and_mean(
    dev: &Device,
    batch: usize,
    rows: usize,
    d: usize,
    eps: f32,
    x: u64,
    cu: u64,
    gamma: u64,
    beta: u64,
    u: u64,
    g: u64,
) -> Result<()> {
    // The device total, cu_seqlens[batch], doubles as LayerNorm's device row
    // count: rows past it (stale after pruning) are not normalised.
    let total_dev = cu + 4 * batch as u64;
    launch_layernorm(dev, rows, d, eps, x, gamma, beta, u, total_dev)?;
    launch_mean_pool(
        dev,
        PoolShape {
            batch,
            total_rows: rows,
            d,
        },
        u,
        cu,
        g,
        0,
    )
}
