//! LayerNorm over packed f16 rows (`kernels/elementwise.cu`, `layernorm_f16`).

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use super::{check_aligned, check_len, rows_i32};
use crate::device::Device;
use crate::{Error, Result};

const OP: &str = "layer_norm";
const WARPS_PER_BLOCK: u32 = 4;

/// The shape of one LayerNorm launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormShape {
    /// Rows to normalise (a host upper bound when `rows_dev` is given).
    pub rows: usize,
    /// Row width; must be a positive multiple of 8 (16-byte vector loads).
    pub d: usize,
    /// Variance epsilon.
    pub eps: f32,
}

/// Element counts of the buffers handed to [`layer_norm_ext`], checked by
/// [`LayerNormShape::validate`] before anything touches the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerNormLens {
    /// `x`.
    pub x: usize,
    /// `gamma`.
    pub gamma: usize,
    /// `beta`.
    pub beta: usize,
    /// `out`.
    pub out: usize,
    /// `residual`, when given.
    pub residual: Option<usize>,
    /// `rows_dev`, when given.
    pub rows_dev: Option<usize>,
}

impl LayerNormShape {
    /// Checks the shape and buffer sizes; the wrappers call this before any
    /// device work, and it needs no GPU.
    pub fn validate(&self, lens: &LayerNormLens) -> Result<()> {
        let LayerNormShape { rows, d, eps } = *self;
        if d == 0 || d % 8 != 0 {
            return Err(Error::invalid(
                OP,
                format!("d = {d}: the row width must be a positive multiple of 8"),
            ));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("eps = {eps}: must be positive and finite"),
            ));
        }
        rows_i32(OP, rows, d)?;
        let need = rows * d;
        check_len(OP, "x", lens.x, need)?;
        check_len(OP, "out", lens.out, need)?;
        if lens.gamma != d || lens.beta != d {
            return Err(Error::invalid(
                OP,
                format!(
                    "gamma has {} and beta {} elements; both must have exactly d = {d}",
                    lens.gamma, lens.beta
                ),
            ));
        }
        if let Some(r) = lens.residual {
            check_len(OP, "residual", r, need)?;
        }
        if let Some(n) = lens.rows_dev {
            check_len(OP, "rows_dev", n, 1)?;
        }
        Ok(())
    }
}

/// Mirror of `struct LayerNormShape` in `kernels/elementwise.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LayerNormShapeC {
    rows: i32,
    d: i32,
    eps: f32,
}

// SAFETY: plain-old-data `#[repr(C)]` struct of i32/f32, laid out exactly as
// the C struct the kernel takes by value.
unsafe impl DeviceRepr for LayerNormShapeC {}

/// Optional inputs of [`layer_norm`].
#[derive(Default)]
pub struct LayerNormExtras<'a, R: DevicePtr<f16>, N: DevicePtr<i32>> {
    /// Added to `x` before normalising (`LN(x + residual)`), `[rows, d]`.
    pub residual: Option<&'a R>,
    /// A device count of valid rows (written earlier on the same stream);
    /// rows at or past it are left untouched.
    pub rows_dev: Option<&'a N>,
}

/// `out = LN(x) * gamma + beta` for each of `shape.rows` rows of width `d`.
///
/// `x`, `out`: `[rows, d]` f16 (at least `rows * d` elements); `gamma`, `beta`:
/// `[d]` f16. Statistics in f32. Every buffer must start 16-byte aligned.
pub fn layer_norm<X, G, B, O>(
    dev: &Device,
    shape: LayerNormShape,
    x: &X,
    gamma: &G,
    beta: &B,
    out: &mut O,
) -> Result<()>
where
    X: DevicePtr<f16>,
    G: DevicePtr<f16>,
    B: DevicePtr<f16>,
    O: DevicePtrMut<f16>,
{
    layer_norm_ext::<X, G, B, O, X, cudarc::driver::CudaSlice<i32>>(
        dev,
        shape,
        x,
        gamma,
        beta,
        out,
        LayerNormExtras {
            residual: None,
            rows_dev: None,
        },
    )
}

/// [`layer_norm`] with a residual added first and/or a device-side row count.
pub fn layer_norm_ext<X, G, B, O, R, N>(
    dev: &Device,
    shape: LayerNormShape,
    x: &X,
    gamma: &G,
    beta: &B,
    out: &mut O,
    extras: LayerNormExtras<'_, R, N>,
) -> Result<()>
where
    X: DevicePtr<f16>,
    G: DevicePtr<f16>,
    B: DevicePtr<f16>,
    O: DevicePtrMut<f16>,
    R: DevicePtr<f16>,
    N: DevicePtr<i32>,
{
    shape.validate(&LayerNormLens {
        x: x.len(),
        gamma: gamma.len(),
        beta: beta.len(),
        out: out.len(),
        residual: extras.residual.map(|r| r.len()),
        rows_dev: extras.rows_dev.map(|n| n.len()),
    })?;
    let LayerNormShape { rows, d, eps } = shape;
    if rows == 0 {
        return Ok(());
    }
    crate::kernels::ensure_built()?;
    let func = dev.function("elementwise", "layernorm_f16")?;
    let stream = dev.stream();

    let (x_ptr, _gx) = x.device_ptr(stream);
    let (g_ptr, _gg) = gamma.device_ptr(stream);
    let (b_ptr, _gb) = beta.device_ptr(stream);
    let (o_ptr, _go) = out.device_ptr_mut(stream);
    let (r_ptr, _gr) = match extras.residual {
        Some(r) => {
            let (p, g) = r.device_ptr(stream);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (n_ptr, _gn) = match extras.rows_dev {
        Some(n) => {
            let (p, g) = n.device_ptr(stream);
            (p, Some(g))
        }
        None => (0, None),
    };
    for (name, p) in [
        ("x", x_ptr),
        ("gamma", g_ptr),
        ("beta", b_ptr),
        ("out", o_ptr),
        ("residual", r_ptr),
    ] {
        check_aligned(OP, name, p, 16)?;
    }
    let params = LayerNormShapeC {
        rows: rows as i32,
        d: d as i32,
        eps,
    };
    let cfg = LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(WARPS_PER_BLOCK), 1, 1),
        block_dim: (32 * WARPS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&x_ptr)
        .arg(&r_ptr)
        .arg(&g_ptr)
        .arg(&b_ptr)
        .arg(&o_ptr)
        .arg(&n_ptr)
        .arg(&params);
    // SAFETY: the argument list matches `layernorm_f16`'s signature (six
    // device pointers, then LayerNormShape by value); every pointer is live
    // for the launch (guards held above) and was checked to cover `rows * d`
    // elements (or `d` for gamma/beta, 1 for rows_dev), 16-byte aligned; null
    // residual/rows_dev are the kernel's documented "absent" values. The
    // kernel touches only rows < rows, and the grid covers exactly those.
    unsafe { launch.launch(cfg) }.map_err(|e| Error::driver("launching layernorm_f16", e))?;
    dev.check_launch("layernorm_f16")
}
