//! What both pruners' wrappers share: the rows a pruner scores and the
//! other stream ([`PrunerInput`], [`OtherStream`]), a LayerNorm's weights
//! ([`LnDev`]), the shared size checks, and the first step of both pruners
//! (LayerNorm of the rows and their per-sequence mean).

use cudarc::driver::{
    DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use half::f16;

use super::super::elementwise::{launch_mean_pool, PoolShape};
use super::super::{check_aligned, check_len, rows_i32};
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

impl LnDev<'_> {
    /// The lengths of `gamma` and `beta`, as the validations take them.
    pub(super) fn lens(&self) -> (usize, usize) {
        (self.gamma.len(), self.beta.len())
    }
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

/// `tau` must be finite (both pruners' thresholds).
pub(super) fn check_tau(op: &'static str, tau: f32) -> Result<()> {
    if !tau.is_finite() {
        return Err(Error::invalid(op, format!("tau = {tau}: must be finite")));
    }
    Ok(())
}

/// The scored rows' shared checks: their count, `x` (`[total_rows, d]`),
/// `cu_seqlens` (`batch + 1`), and the pruner's own LayerNorm (`[d]` gamma
/// and beta, named `ln_name`).
#[allow(clippy::too_many_arguments)]
pub(super) fn check_rows(
    op: &'static str,
    batch: usize,
    total_rows: usize,
    d: usize,
    x: usize,
    cu_seqlens: usize,
    ln_name: &str,
    (gamma, beta): (usize, usize),
) -> Result<()> {
    rows_i32(op, total_rows, d)?;
    check_len(op, "x", x, total_rows * d)?;
    exact(op, "cu_seqlens", cu_seqlens, batch + 1)?;
    exact(op, &format!("{ln_name}.gamma"), gamma, d)?;
    exact(op, &format!("{ln_name}.beta"), beta, d)
}

/// The scored rows' LayerNorm and mean scratch: `u` `[total_rows, d]` and
/// the per-sequence mean (named `g_name`) `[batch, d]`.
pub(super) fn check_scratch(
    op: &'static str,
    batch: usize,
    total_rows: usize,
    d: usize,
    u: usize,
    g_name: &str,
    g: usize,
) -> Result<()> {
    check_len(op, "workspace u", u, total_rows * d)?;
    check_len(op, &format!("workspace {g_name}"), g, batch * d)
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

/// One stream's part of both pruners' first step ([`ln_mean_step`]): the
/// scored rows ([`LnMeanStep::scored`]) or the other stream's
/// ([`LnMeanStep::other`]), with the LayerNorm applied to them and the
/// scratch it writes.
pub(super) struct LnMeanStep<'s> {
    /// Sequences.
    pub(super) batch: usize,
    /// Host bound on the rows.
    pub(super) total_rows: usize,
    /// Row width.
    pub(super) d: usize,
    /// LayerNorm epsilon.
    pub(super) eps: f32,
    /// `[total_rows, d]` f16.
    pub(super) rows: &'s dyn DevicePtr<f16>,
    /// `[batch + 1]` i32.
    pub(super) cu_seqlens: &'s dyn DevicePtr<i32>,
    /// The LayerNorm (`LN_p`, `LN_c`, `LN_h` or `LN_hc`) and its name.
    pub(super) ln: (&'static str, &'s LnDev<'s>),
    /// `[total_rows, d]` f16: the normalised rows.
    pub(super) u: &'s mut dyn DevicePtrMut<f16>,
    /// `[batch, d]` f32: their per-sequence mean, and its buffer's name.
    pub(super) g: (&'static str, &'s mut dyn DevicePtrMut<f32>),
    /// The other stream's rows (`other.rows`, `workspace uy` in errors)
    /// rather than the scored ones (`x`, `workspace u`).
    pub(super) other: bool,
    /// More pointers whose alignment is checked with these: `between` after
    /// the LayerNorm (the scored rows' pruner weights), `after` last (the
    /// token pruner's `W1c`).
    pub(super) between: [Option<(&'static str, u64)>; 2],
    /// See `between`.
    pub(super) after: Option<(&'static str, u64)>,
    /// Launch nothing when there are no rows.
    pub(super) skip_empty: bool,
}

impl<'s> LnMeanStep<'s> {
    /// The scored rows' step: `input`'s rows through the pruner's own
    /// LayerNorm into `u`, their mean into `g`.
    pub(super) fn scored(
        input: &PrunerInput<'s>,
        d: usize,
        eps: f32,
        ln: (&'static str, &'s LnDev<'s>),
        u: &'s mut dyn DevicePtrMut<f16>,
        g: (&'static str, &'s mut dyn DevicePtrMut<f32>),
    ) -> Self {
        LnMeanStep {
            batch: input.batch,
            total_rows: input.total_rows,
            d,
            eps,
            rows: input.x,
            cu_seqlens: input.cu_seqlens,
            ln,
            u,
            g,
            other: false,
            between: [None, None],
            after: None,
            skip_empty: false,
        }
    }

    /// The other stream's step: its rows through the pruner's LayerNorm for
    /// them (`d` wide) into `uy`, their mean into `g`.
    pub(super) fn other(
        batch: usize,
        o: &OtherStream<'s>,
        d: usize,
        eps: f32,
        ln: (&'static str, &'s LnDev<'s>),
        uy: &'s mut dyn DevicePtrMut<f16>,
        g: (&'static str, &'s mut dyn DevicePtrMut<f32>),
    ) -> Self {
        LnMeanStep {
            batch,
            total_rows: o.total_rows,
            d,
            eps,
            rows: o.rows,
            cu_seqlens: o.cu_seqlens,
            ln,
            u: uy,
            g,
            other: true,
            between: [None, None],
            after: None,
            skip_empty: false,
        }
    }
}

/// The pointers [`ln_mean_step`] used, and the guards that keep them valid
/// until the pruner's later launches are enqueued.
pub(super) struct LnMeanPtrs<'s> {
    /// `cu_seqlens`.
    pub(super) cu: u64,
    /// The normalised rows.
    pub(super) u: u64,
    /// Their per-sequence mean.
    pub(super) g: u64,
    /// Whether the LayerNorm and mean were launched (not skipped as empty).
    pub(super) launched: bool,
    _guards: Vec<SyncOnDrop<'s>>,
}

/// Both pruners' first step on one stream: after checking the 16-byte
/// alignment of its rows, the LayerNorm's gamma and beta, `between`, `u`,
/// `g` and `after` (in that order), the LayerNorm of its rows into `u` and their per-sequence mean
/// into `g` ([`ln_and_mean`]; with `skip_empty`, nothing when there are no
/// rows).
pub(super) fn ln_mean_step<'s>(
    dev: &'s Device,
    op: &'static str,
    step: LnMeanStep<'s>,
) -> Result<LnMeanPtrs<'s>> {
    let stream = dev.stream();
    let ((ln_name, ln), (g_name, g)) = (step.ln, step.g);
    let (x_ptr, gx) = step.rows.device_ptr(stream);
    let (cu_ptr, gcu) = step.cu_seqlens.device_ptr(stream);
    let (lg_ptr, glg) = ln.gamma.device_ptr(stream);
    let (lb_ptr, glb) = ln.beta.device_ptr(stream);
    let (u_ptr, gu) = step.u.device_ptr_mut(stream);
    let (g_ptr, gg) = g.device_ptr_mut(stream);
    let ptrs = LnMeanPtrs {
        cu: cu_ptr,
        u: u_ptr,
        g: g_ptr,
        launched: !(step.skip_empty && step.total_rows == 0),
        _guards: vec![gx, gcu, glg, glb, gu, gg],
    };
    let (x_name, u_name) = match step.other {
        false => ("x", "workspace u"),
        true => ("other.rows", "workspace uy"),
    };
    let (gamma, beta) = (format!("{ln_name}.gamma"), format!("{ln_name}.beta"));
    let g_name = format!("workspace {g_name}");
    let checked = [(x_name, x_ptr), (&gamma, lg_ptr), (&beta, lb_ptr)]
        .into_iter()
        .chain(step.between.into_iter().flatten())
        .chain([(u_name, u_ptr), (&g_name, g_ptr)])
        .chain(step.after);
    for (name, p) in checked {
        check_aligned(op, name, p, 16)?;
    }
    if ptrs.launched {
        ln_and_mean(
            dev,
            step.batch,
            step.total_rows,
            step.d,
            step.eps,
            x_ptr,
            cu_ptr,
            lg_ptr,
            lb_ptr,
            u_ptr,
            g_ptr,
        )?;
    }
    Ok(ptrs)
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
