//! Linear layers through cuBLASLt: `y = x W^T (+ b) (then GELU)` on packed f16
//! rows, f32 accumulation.
//!
//! Layout: `x` is `[rows, k]` row-major, `W` is `[n, k]` row-major (the
//! PyTorch / safetensors convention), `y` is `[rows, n]` row-major. cuBLASLt
//! is column-major, so the call computes `y^T = W x^T`: `W` read as a k x n
//! column-major matrix and transposed, `x` read as k x rows untransposed, and
//! `y` written as n x rows with leading dimension n — which is exactly the
//! row-major `[rows, n]` buffer. The bias epilogue then adds `b[j]` to row j
//! of the column-major result, i.e. to column j of `y`.
//!
//! cuBLASLt's GELU epilogue is the tanh approximation, not the erf form of
//! DESIGN.md (they differ by at most ~1e-3 absolute); [`Epilogue::BiasGeluTanh`]
//! says so in its name, and the exact path is [`Epilogue::Bias`] followed by
//! the erf GELU kernel.

use std::sync::Arc;

use cudarc::cublaslt::{
    sys as lt_sys, Activation, Matmul, MatmulConfig, MatmulShared, Workspace as LtWorkspace,
};
use cudarc::driver::{CudaStream, CudaView, DevicePtrMut};
use half::f16;

use super::check_len;
use crate::device::Device;
use crate::{Error, Result};

const OP: &str = "linear";

/// What cuBLASLt fuses after the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `y = x W^T`.
    None,
    /// `y = x W^T + b`.
    Bias,
    /// `y = GELU_tanh(x W^T + b)` (cuBLASLt's approximate GELU).
    BiasGeluTanh,
}

/// The shape of one linear layer call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of `x` and `y`.
    pub rows: usize,
    /// Input features (columns of `x`, of `W`).
    pub k: usize,
    /// Output features (rows of `W`, columns of `y`).
    pub n: usize,
}

impl LinearShape {
    /// Checks sizes against buffer lengths; needs no GPU.
    pub fn validate(
        &self,
        x_len: usize,
        w_len: usize,
        bias_len: Option<usize>,
        y_len: usize,
    ) -> Result<()> {
        let LinearShape { rows, k, n } = *self;
        if k == 0 || n == 0 {
            return Err(Error::invalid(
                OP,
                format!("k = {k}, n = {n}: both must be positive"),
            ));
        }
        if k % 8 != 0 || n % 8 != 0 {
            return Err(Error::invalid(
                OP,
                format!("k = {k}, n = {n}: both must be multiples of 8 (16-byte f16 rows)"),
            ));
        }
        if i32::try_from(rows.max(k).max(n)).is_err() {
            return Err(Error::invalid(OP, "a dimension does not fit in 32 bits"));
        }
        check_len(OP, "x", x_len, rows * k)?;
        check_len(OP, "weight", w_len, n * k)?;
        check_len(OP, "y", y_len, rows * n)?;
        if let Some(b) = bias_len {
            if b != n {
                return Err(Error::invalid(
                    OP,
                    format!("bias has {b} elements, expected n = {n}"),
                ));
            }
        }
        Ok(())
    }
}

/// A cuBLASLt handle, optionally with a default stream and workspace.
/// [`Blas::linear`] runs on those (a handle made by [`Blas::new`]);
/// [`Blas::linear_on`] runs on any stream of the context with a caller-held
/// [`BlasWorkspace`] (cuBLASLt handles are not tied to a stream, but two
/// calls running at once must not share a workspace). The handle is made
/// directly, not through cudarc's `CudaBlasLT::new`, which unwraps its own
/// workspace allocation and panics when the device is out of memory.
pub struct Blas {
    handle: lt_sys::cublasLtHandle_t,
    default: Option<(BlasWorkspace, Arc<CudaStream>)>,
}

// SAFETY: a cuBLASLt handle may be used from any thread (cuBLASLt's handles
// are thread safe; every call passes its own stream and workspace), and the
// default workspace and stream are themselves Send + Sync.
unsafe impl Send for Blas {}
// SAFETY: as above; `Blas` has no interior mutability of its own.
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed
        // once, here; no call using it can still be running on the host
        // (every call borrows `self`). A failure is ignored: nothing could
        // be done about it in a destructor.
        let _ = unsafe { cudarc::cublaslt::result::destroy_handle(self.handle) };
    }
}

/// A cuBLASLt workspace (32 MiB on Hopper, 4 MiB before), for
/// [`Blas::linear_on`]. Allocated without cudarc's event tracking, so it may
/// be used inside a CUDA-graph capture; its user orders access by stream.
#[derive(Debug, Clone)]
pub struct BlasWorkspace {
    ws: LtWorkspace,
}

impl BlasWorkspace {
    /// Allocates a workspace on `dev`'s context.
    pub fn new(dev: &Device) -> Result<Self> {
        let ws = dev
            .untracked(|| LtWorkspace::new(dev.stream().clone()))
            .map_err(|e| Error::driver("allocating the cuBLASLt workspace", e))?;
        Ok(BlasWorkspace { ws })
    }
}

/// One call's view of the handle: the stream and workspace it runs with.
struct LtCall<'a> {
    handle: &'a lt_sys::cublasLtHandle_t,
    ws: &'a LtWorkspace,
    stream: &'a Arc<CudaStream>,
}

impl MatmulShared for LtCall<'_> {
    fn handle(&self) -> &lt_sys::cublasLtHandle_t {
        self.handle
    }
    fn workspace(&self) -> &LtWorkspace {
        self.ws
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}

impl Matmul<f16> for LtCall<'_> {
    fn matrix_type() -> lt_sys::cudaDataType {
        lt_sys::cudaDataType_t::CUDA_R_16F
    }
    fn compute_type() -> lt_sys::cublasComputeType_t {
        // f16 operands, f32 accumulation (as cudarc's own f16 matmul).
        lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    }
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blas(cuBLASLt)")
    }
}

fn handle() -> Result<lt_sys::cublasLtHandle_t> {
    cudarc::cublaslt::result::create_handle().map_err(|e| Error::Blas {
        context: "creating the cuBLASLt handle (is libcublasLt on the library path?)".into(),
        message: format!("{e:?}"),
    })
}

impl Blas {
    /// A cuBLASLt handle with a workspace of its own (32 MiB on Hopper,
    /// 4 MiB before) on `dev`'s stream, for [`Blas::linear`].
    pub fn new(dev: &Device) -> Result<Self> {
        let ws = BlasWorkspace::new(dev)?;
        Ok(Blas {
            handle: handle()?,
            default: Some((ws, dev.stream().clone())),
        })
    }

    /// A cuBLASLt handle alone, for [`Blas::linear_on`] with workspaces the
    /// caller holds (a [`crate::model::GpuModel`]'s: each workspace brings
    /// its own).
    pub fn handle_only() -> Result<Self> {
        Ok(Blas {
            handle: handle()?,
            default: None,
        })
    }

    /// `y = epilogue(x W^T + b)`; `bias` is required by the bias epilogues and
    /// must be `None` for [`Epilogue::None`]. Pass buffers as views
    /// (`slice.as_view()`, `slice.slice(a..b)`), so sub-ranges of workspaces
    /// work directly.
    pub fn linear<Y: DevicePtrMut<f16>>(
        &self,
        shape: LinearShape,
        x: &CudaView<'_, f16>,
        w: &CudaView<'_, f16>,
        bias: Option<&CudaView<'_, f16>>,
        epilogue: Epilogue,
        y: &mut Y,
    ) -> Result<()> {
        let Some((ws, stream)) = &self.default else {
            return Err(Error::invalid(
                OP,
                "this cuBLASLt handle has no default workspace (Blas::handle_only): use \
                 Blas::linear_on",
            ));
        };
        let call = LtCall {
            handle: &self.handle,
            ws: &ws.ws,
            stream,
        };
        run(&call, shape, x, w, bias, epilogue, y)
    }

    /// [`Blas::linear`] enqueued on `dev`'s stream with the workspace `ws`
    /// (which no other call may be using at the same time).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_on<Y: DevicePtrMut<f16>>(
        &self,
        dev: &Device,
        ws: &BlasWorkspace,
        shape: LinearShape,
        x: &CudaView<'_, f16>,
        w: &CudaView<'_, f16>,
        bias: Option<&CudaView<'_, f16>>,
        epilogue: Epilogue,
        y: &mut Y,
    ) -> Result<()> {
        let call = LtCall {
            handle: &self.handle,
            ws: &ws.ws,
            stream: dev.stream(),
        };
        run(&call, shape, x, w, bias, epilogue, y)
    }
}

/// Validates, then enqueues one cuBLASLt matmul through `call`'s handle,
/// workspace and stream.
fn run<Y: DevicePtrMut<f16>>(
    call: &LtCall<'_>,
    shape: LinearShape,
    x: &CudaView<'_, f16>,
    w: &CudaView<'_, f16>,
    bias: Option<&CudaView<'_, f16>>,
    epilogue: Epilogue,
    y: &mut Y,
) -> Result<()> {
    shape.validate(x.len(), w.len(), bias.map(|b| b.len()), y.len())?;
    match (epilogue, bias.is_some()) {
        (Epilogue::None, true) => {
            return Err(Error::invalid(OP, "a bias was given with Epilogue::None"))
        }
        (Epilogue::Bias | Epilogue::BiasGeluTanh, false) => {
            return Err(Error::invalid(OP, "the bias epilogues need a bias"))
        }
        _ => {}
    }
    if shape.rows == 0 {
        return Ok(());
    }
    let LinearShape { rows, k, n } = shape;
    let cfg = MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: rows as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    let act = match epilogue {
        Epilogue::BiasGeluTanh => Some(Activation::Gelu),
        _ => None,
    };
    // SAFETY: the configuration describes exactly the buffers validated
    // above (W: n*k, x: rows*k, y: rows*n, bias: n elements, all f16 views
    // of live allocations); cudarc records the stream-ordering events of
    // each view that has them; the handle, workspace and stream are live.
    unsafe { call.matmul(cfg, w, x, y, bias, act.as_ref()) }.map_err(|e| Error::Blas {
        context: format!("linear rows={rows} k={k} n={n} {epilogue:?}"),
        message: format!("{e:?}"),
    })
}
