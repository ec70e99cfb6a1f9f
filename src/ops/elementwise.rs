//! Bias + GELU, bias + activation, bias + residual, per-sequence pooling and
//! column copies over packed f16 rows (`kernels/elementwise.cu`:
//! `bias_gelu_f16`, `bias_act_f16`, `bias_residual_f16`, `mean_pool_f16`,
//! `first_token_f16`, `copy_cols_f16`).

use cudarc::driver::{
    CudaFunction, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::f16;

use super::{check_aligned, check_len, launched, opt_ptr, rows_i32};
use crate::device::Device;
use crate::{Error, Result};

const THREADS: u32 = 256;

/// The shape of a bias/GELU or bias/residual launch: `rows` rows of width `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColsShape {
    /// Rows (a host upper bound when a device row count is given).
    pub rows: usize,
    /// Row width; a positive multiple of 8.
    pub n: usize,
}

/// Mirror of `struct ColsShape` in `kernels/elementwise.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ColsShapeC {
    rows: i32,
    n: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as the C struct.
unsafe impl DeviceRepr for ColsShapeC {}

impl ColsShapeC {
    fn of(shape: ColsShape) -> Self {
        ColsShapeC {
            rows: shape.rows as i32,
            n: shape.n as i32,
        }
    }
}

/// Mirror of `struct PoolShape` in `kernels/elementwise.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolShapeC {
    pub(crate) batch: i32,
    pub(crate) d: i32,
    pub(crate) rows: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as the C struct.
unsafe impl DeviceRepr for PoolShapeC {}

impl PoolShapeC {
    fn of(shape: PoolShape) -> Self {
        // Fits in i32: validate_pool checked total_rows * d.
        PoolShapeC {
            batch: shape.batch as i32,
            d: shape.d as i32,
            rows: shape.total_rows as i32,
        }
    }
}

/// Checks a [`ColsShape`] against buffer lengths (`x`, `bias`, optional
/// `residual`, optional `rows_dev`), before any device use.
pub fn validate_cols(
    op: &'static str,
    shape: ColsShape,
    x_len: usize,
    bias_len: usize,
    residual_len: Option<usize>,
    rows_dev_len: Option<usize>,
) -> Result<()> {
    let ColsShape { rows, n } = shape;
    if n == 0 || n % 8 != 0 {
        return Err(Error::invalid(
            op,
            format!("n = {n}: the row width must be a positive multiple of 8"),
        ));
    }
    rows_i32(op, rows, n)?;
    check_len(op, "x", x_len, rows * n)?;
    if bias_len != n {
        return Err(Error::invalid(
            op,
            format!("`bias` holds {bias_len} elements; it must hold exactly n = {n}"),
        ));
    }
    if let Some(r) = residual_len {
        check_len(op, "residual", r, rows * n)?;
    }
    if let Some(c) = rows_dev_len {
        check_len(op, "rows_dev", c, 1)?;
    }
    Ok(())
}

fn cols_grid(rows: usize, n: usize) -> u32 {
    // One thread per 16-byte vector, grid-stride beyond 65535 * 8 blocks.
    let vecs = (rows * n / 8) as u64;
    vecs.div_ceil(THREADS as u64).clamp(1, 65_535 * 8) as u32
}

/// The launch configuration of every column-wise kernel (bias + GELU,
/// bias + activation, bias + residual, column copies) over `rows x n`.
fn cols_config(rows: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols_grid(rows, n), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The start of every column-wise launch after its size checks: nothing to
/// do without rows (`None`), else the kernels built and `name` loaded from
/// the elementwise module.
fn cols_function(dev: &Device, rows: usize, name: &str) -> Result<Option<CudaFunction>> {
    if rows == 0 {
        return Ok(None);
    }
    crate::kernels::ensure_built()?;
    dev.function("elementwise", name).map(Some)
}

/// `x = GELU(x + bias)` in place over `[rows, n]` f16 (erf GELU, f32 math).
/// `rows_dev`: an optional device row count (rows at or past it untouched).
pub fn bias_gelu<X, B, N>(
    dev: &Device,
    shape: ColsShape,
    x: &mut X,
    bias: &B,
    rows_dev: Option<&N>,
) -> Result<()>
where
    X: DevicePtrMut<f16>,
    B: DevicePtr<f16>,
    N: DevicePtr<i32>,
{
    const OP: &str = "bias_gelu";
    validate_cols(
        OP,
        shape,
        x.len(),
        bias.len(),
        None,
        rows_dev.map(|n| n.len()),
    )?;
    let Some(func) = cols_function(dev, shape.rows, "bias_gelu_f16")? else {
        return Ok(());
    };
    let stream = dev.stream();
    let (x_ptr, _gx) = x.device_ptr_mut(stream);
    let (b_ptr, _gb) = bias.device_ptr(stream);
    let (n_ptr, _gn) = opt_ptr(rows_dev, stream);
    check_aligned(OP, "x", x_ptr, 16)?;
    check_aligned(OP, "bias", b_ptr, 16)?;
    let params = ColsShapeC::of(shape);
    let cfg = cols_config(shape.rows, shape.n);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x_ptr).arg(&b_ptr).arg(&n_ptr).arg(&params);
    // SAFETY: arguments match `bias_gelu_f16(half*, const half*, const int*,
    // ColsShape)`; x covers rows * n and bias n elements (validated), both
    // 16-byte aligned; rows_dev is null or one live i32. The kernel touches
    // only vectors below rows * n / 8 (grid-stride loop).
    launched(dev, "bias_gelu_f16", unsafe { launch.launch(cfg) })
}

/// `x = x + bias + residual` in place over `[rows, n]` f16 (one rounding).
pub fn bias_residual<X, B, R, N>(
    dev: &Device,
    shape: ColsShape,
    x: &mut X,
    bias: &B,
    residual: &R,
    rows_dev: Option<&N>,
) -> Result<()>
where
    X: DevicePtrMut<f16>,
    B: DevicePtr<f16>,
    R: DevicePtr<f16>,
    N: DevicePtr<i32>,
{
    const OP: &str = "bias_residual";
    validate_cols(
        OP,
        shape,
        x.len(),
        bias.len(),
        Some(residual.len()),
        rows_dev.map(|n| n.len()),
    )?;
    let Some(func) = cols_function(dev, shape.rows, "bias_residual_f16")? else {
        return Ok(());
    };
    let stream = dev.stream();
    let (x_ptr, _gx) = x.device_ptr_mut(stream);
    let (b_ptr, _gb) = bias.device_ptr(stream);
    let (r_ptr, _gr) = residual.device_ptr(stream);
    let (n_ptr, _gn) = opt_ptr(rows_dev, stream);
    for (name, p) in [("x", x_ptr), ("bias", b_ptr), ("residual", r_ptr)] {
        check_aligned(OP, name, p, 16)?;
    }
    let params = ColsShapeC::of(shape);
    let cfg = cols_config(shape.rows, shape.n);
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&x_ptr)
        .arg(&b_ptr)
        .arg(&r_ptr)
        .arg(&n_ptr)
        .arg(&params);
    // SAFETY: arguments match `bias_residual_f16(half*, const half*, const
    // half*, const int*, ColsShape)`; x and residual cover rows * n, bias n
    // elements, all 16-byte aligned; rows_dev is null or one live i32.
    launched(dev, "bias_residual_f16", unsafe { launch.launch(cfg) })
}

/// The shape of a pooling launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    /// Sequences (`cu_seqlens` holds `batch + 1` entries).
    pub batch: usize,
    /// Host upper bound on the packed rows (`x` must hold `total_rows * d`).
    pub total_rows: usize,
    /// Row width; a positive multiple of 8.
    pub d: usize,
}

/// Checks a [`PoolShape`] against the buffer lengths (`x`, `cu_seqlens`, and
/// the `[batch, d]` output), before any device use.
pub fn validate_pool(
    op: &'static str,
    shape: PoolShape,
    x_len: usize,
    cu_len: usize,
    out_len: usize,
) -> Result<()> {
    let PoolShape {
        batch,
        total_rows,
        d,
    } = shape;
    if d == 0 || d % 8 != 0 {
        return Err(Error::invalid(
            op,
            format!("d = {d}: the row width must be a positive multiple of 8"),
        ));
    }
    if batch == 0 || batch > 65_535 {
        return Err(Error::invalid(
            op,
            format!("batch = {batch}: must be in 1..=65535"),
        ));
    }
    rows_i32(op, total_rows, d)?;
    if cu_len != batch + 1 {
        return Err(Error::invalid(
            op,
            format!(
                "`cu_seqlens` holds {cu_len} entries; batch + 1 = {} needed",
                batch + 1
            ),
        ));
    }
    check_len(op, "x", x_len, total_rows * d)?;
    check_len(op, "out", out_len, batch * d)?;
    Ok(())
}

/// Where [`mean_pool`] writes `[batch, d]`.
pub enum PoolOut<'a> {
    /// f32 means.
    F32(&'a mut dyn DevicePtrMut<f32>),
    /// f16 means.
    F16(&'a mut dyn DevicePtrMut<f16>),
}

impl PoolOut<'_> {
    fn len(&self) -> usize {
        match self {
            PoolOut::F32(o) => o.len(),
            PoolOut::F16(o) => o.len(),
        }
    }
}

/// Mean of each sequence's rows, `[batch, d]` (zeros for an empty sequence),
/// accumulated in f32. `cu_seqlens` is read on the device.
pub fn mean_pool(
    dev: &Device,
    shape: PoolShape,
    x: &dyn DevicePtr<f16>,
    cu_seqlens: &dyn DevicePtr<i32>,
    out: PoolOut<'_>,
) -> Result<()> {
    const OP: &str = "mean_pool";
    validate_pool(OP, shape, x.len(), cu_seqlens.len(), out.len())?;
    crate::kernels::ensure_built()?;
    let stream = dev.stream();
    let (x_ptr, _gx) = x.device_ptr(stream);
    let (c_ptr, _gc) = cu_seqlens.device_ptr(stream);
    check_aligned(OP, "x", x_ptr, 16)?;
    match out {
        PoolOut::F32(o) => {
            let (o_ptr, _go) = o.device_ptr_mut(stream);
            launch_mean_pool(dev, shape, x_ptr, c_ptr, o_ptr, 0)
        }
        PoolOut::F16(o) => {
            let (o_ptr, _go) = o.device_ptr_mut(stream);
            check_aligned(OP, "out", o_ptr, 16)?;
            launch_mean_pool(dev, shape, x_ptr, c_ptr, 0, o_ptr)
        }
    }
}

/// Raw launch of `mean_pool_f16`; callers validated the shape and hold the
/// pointers' guards. `out_f32` / `out_f16`: 0 for absent.
pub(crate) fn launch_mean_pool(
    dev: &Device,
    shape: PoolShape,
    x_ptr: u64,
    cu_ptr: u64,
    out_f32: u64,
    out_f16: u64,
) -> Result<()> {
    let func = dev.function("elementwise", "mean_pool_f16")?;
    let params = PoolShapeC::of(shape);
    let cfg = LaunchConfig {
        grid_dim: ((shape.d as u32).div_ceil(256), shape.batch as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = dev.stream().launch_builder(&func);
    launch
        .arg(&x_ptr)
        .arg(&cu_ptr)
        .arg(&out_f32)
        .arg(&out_f16)
        .arg(&params);
    // SAFETY: arguments match `mean_pool_f16(const half*, const int*, float*,
    // half*, PoolShape)`. The caller validated x (total_rows * d, 16-byte
    // aligned), cu_seqlens (batch + 1 entries, describing rows within x) and
    // the [batch, d] output; the grid is (ceil(d / 256), batch), and the
    // kernel guards column vectors past d / 8.
    launched(dev, "mean_pool_f16", unsafe { launch.launch(cfg) })
}

/// `out[b] = x[cu_seqlens[b]]` (first-token / CLS pooling), `[batch, d]` f16;
/// zeros for an empty sequence.
pub fn first_token<X, C, O>(
    dev: &Device,
    shape: PoolShape,
    x: &X,
    cu_seqlens: &C,
    out: &mut O,
) -> Result<()>
where
    X: DevicePtr<f16>,
    C: DevicePtr<i32>,
    O: DevicePtrMut<f16>,
{
    const OP: &str = "first_token";
    validate_pool(OP, shape, x.len(), cu_seqlens.len(), out.len())?;
    crate::kernels::ensure_built()?;
    let func = dev.function("elementwise", "first_token_f16")?;
    let stream = dev.stream();
    let (x_ptr, _gx) = x.device_ptr(stream);
    let (c_ptr, _gc) = cu_seqlens.device_ptr(stream);
    let (o_ptr, _go) = out.device_ptr_mut(stream);
    check_aligned(OP, "x", x_ptr, 16)?;
    check_aligned(OP, "out", o_ptr, 16)?;
    let params = PoolShapeC::of(shape);
    let cfg = LaunchConfig {
        grid_dim: ((shape.batch as u32).div_ceil(4), 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x_ptr).arg(&c_ptr).arg(&o_ptr).arg(&params);
    // SAFETY: arguments match `first_token_f16(const half*, const int*,
    // half*, PoolShape)`; buffers validated (x total_rows * d, cu_seqlens
    // batch + 1, out batch * d), 16-byte aligned; one warp per sequence,
    // warps past batch return.
    launched(dev, "first_token_f16", unsafe { launch.launch(cfg) })
}

/// The activation of a [`bias_act`] launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// GELU, erf form (BERT, ViT, BLIP, METER's fusion FFN and VQA head).
    Gelu,
    /// CLIP's quick GELU `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `tanh` (poolers).
    Tanh,
}

impl Act {
    /// The kernel's `ACT_*` code.
    fn code(self) -> i32 {
        match self {
            Act::Gelu => 0,
            Act::QuickGelu => 1,
            Act::Tanh => 2,
        }
    }
}

impl From<crate::spec::Activation> for Act {
    fn from(a: crate::spec::Activation) -> Self {
        match a {
            crate::spec::Activation::Gelu => Act::Gelu,
            crate::spec::Activation::QuickGelu => Act::QuickGelu,
        }
    }
}

/// Mirror of `struct ActShape` in `kernels/elementwise.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ActShapeC {
    rows: i32,
    n: i32,
    act: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as the C struct.
unsafe impl DeviceRepr for ActShapeC {}

/// `x = act(x + bias)` (or `act(x)` without a bias) in place over
/// `[rows, n]` f16, f32 math. `rows_dev`: an optional device row count (rows
/// at or past it untouched).
pub fn bias_act<X, B, N>(
    dev: &Device,
    shape: ColsShape,
    act: Act,
    x: &mut X,
    bias: Option<&B>,
    rows_dev: Option<&N>,
) -> Result<()>
where
    X: DevicePtrMut<f16>,
    B: DevicePtr<f16>,
    N: DevicePtr<i32>,
{
    const OP: &str = "bias_act";
    validate_cols(
        OP,
        shape,
        x.len(),
        bias.map_or(shape.n, |b| b.len()),
        None,
        rows_dev.map(|n| n.len()),
    )?;
    let Some(func) = cols_function(dev, shape.rows, "bias_act_f16")? else {
        return Ok(());
    };
    let stream = dev.stream();
    let (x_ptr, _gx) = x.device_ptr_mut(stream);
    let (b_ptr, _gb) = opt_ptr(bias, stream);
    let (n_ptr, _gn) = opt_ptr(rows_dev, stream);
    check_aligned(OP, "x", x_ptr, 16)?;
    check_aligned(OP, "bias", b_ptr, 16)?;
    let params = ActShapeC {
        rows: shape.rows as i32,
        n: shape.n as i32,
        act: act.code(),
    };
    let cfg = cols_config(shape.rows, shape.n);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x_ptr).arg(&b_ptr).arg(&n_ptr).arg(&params);
    // SAFETY: arguments match `bias_act_f16(half*, const half*, const int*,
    // ActShape)`; x covers rows * n elements and bias (when not null) n,
    // both 16-byte aligned (validated); rows_dev is null or one live i32;
    // act is one of the kernel's codes. The kernel touches only vectors
    // below rows * n / 8 (grid-stride loop).
    launched(dev, "bias_act_f16", unsafe { launch.launch(cfg) })
}

/// The shape of a [`copy_cols`] launch: `rows x n` from a matrix of row
/// stride `src_ld` into columns `dst_col .. dst_col + n` of one of row
/// stride `dst_ld`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyColsShape {
    /// Rows copied.
    pub rows: usize,
    /// Columns copied; a positive multiple of 8.
    pub n: usize,
    /// Source row stride (elements); a multiple of 8, at least `n`.
    pub src_ld: usize,
    /// Destination row stride (elements); a multiple of 8.
    pub dst_ld: usize,
    /// First destination column; a multiple of 8, `dst_col + n <= dst_ld`.
    pub dst_col: usize,
}

/// Mirror of `struct CopyColsShape` in `kernels/elementwise.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CopyColsShapeC {
    rows: i32,
    n: i32,
    src_ld: i32,
    dst_ld: i32,
    dst_col: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as the C struct.
unsafe impl DeviceRepr for CopyColsShapeC {}

/// Checks a [`CopyColsShape`] against the buffers' lengths (needs no GPU).
pub fn validate_copy_cols(shape: CopyColsShape, src_len: usize, dst_len: usize) -> Result<()> {
    const OP: &str = "copy_cols";
    let CopyColsShape {
        rows,
        n,
        src_ld,
        dst_ld,
        dst_col,
    } = shape;
    if n == 0 || n % 8 != 0 || src_ld % 8 != 0 || dst_ld % 8 != 0 || dst_col % 8 != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "n = {n}, src_ld = {src_ld}, dst_ld = {dst_ld}, dst_col = {dst_col}: n must be \
                 a positive multiple of 8 and the rest multiples of 8 (16-byte vectors)"
            ),
        ));
    }
    if src_ld < n || dst_col + n > dst_ld {
        return Err(Error::invalid(
            OP,
            format!(
                "columns out of range: n = {n}, src_ld = {src_ld}, dst_col + n = {} > dst_ld = \
                 {dst_ld}",
                dst_col + n
            ),
        ));
    }
    rows_i32(OP, rows, src_ld.max(dst_ld))?;
    if rows > 0 {
        check_len(OP, "src", src_len, (rows - 1) * src_ld + n)?;
        check_len(OP, "dst", dst_len, (rows - 1) * dst_ld + dst_col + n)?;
    }
    Ok(())
}

/// Copies `rows x n` f16 values from `src` into columns `dst_col ..` of
/// `dst` (row strides `src_ld`, `dst_ld`): e.g. two streams' pooled rows
/// side by side as a task head's `[batch, F]` features.
pub fn copy_cols<S, D>(dev: &Device, shape: CopyColsShape, src: &S, dst: &mut D) -> Result<()>
where
    S: DevicePtr<f16>,
    D: DevicePtrMut<f16>,
{
    const OP: &str = "copy_cols";
    validate_copy_cols(shape, src.len(), dst.len())?;
    let Some(func) = cols_function(dev, shape.rows, "copy_cols_f16")? else {
        return Ok(());
    };
    let stream = dev.stream();
    let (s_ptr, _gs) = src.device_ptr(stream);
    let (d_ptr, _gd) = dst.device_ptr_mut(stream);
    check_aligned(OP, "src", s_ptr, 16)?;
    check_aligned(OP, "dst", d_ptr, 16)?;
    let params = CopyColsShapeC {
        rows: shape.rows as i32,
        n: shape.n as i32,
        src_ld: shape.src_ld as i32,
        dst_ld: shape.dst_ld as i32,
        dst_col: shape.dst_col as i32,
    };
    let cfg = cols_config(shape.rows, shape.n);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&s_ptr).arg(&d_ptr).arg(&params);
    // SAFETY: arguments match `copy_cols_f16(const half*, half*,
    // CopyColsShape)`; src holds (rows - 1) * src_ld + n and dst (rows - 1)
    // * dst_ld + dst_col + n elements (validated), both 16-byte aligned, and
    // every stride and offset is a multiple of 8 elements, so every vector
    // access is aligned and in bounds (grid-stride over rows * n / 8).
    launched(dev, "copy_cols_f16", unsafe { launch.launch(cfg) })
}
