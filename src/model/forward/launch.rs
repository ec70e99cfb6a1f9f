//! Launch helpers every step of the pass uses: driver errors, the cuBLASLt
//! linear layer, LayerNorm on the rows below the device count.

use cudarc::driver::{CudaSlice, CudaView};
use half::f16;

use super::super::weights::{DevLinear, DevLn};
use crate::device::Device;
use crate::ops::{
    layer_norm_ext, Blas, BlasWorkspace, Epilogue, LayerNormExtras, LayerNormShape, LinearShape,
    LnDev,
};
use crate::{Error, Result};

pub(in crate::model) fn drv(
    what: &'static str,
) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| Error::driver(what, e)
}

/// The cuBLASLt handle with the stream and workspace of this pass.
pub(in crate::model) struct Lin<'a> {
    pub(in crate::model) blas: &'a Blas,
    pub(in crate::model) dev: &'a Device,
    pub(in crate::model) lt: &'a BlasWorkspace,
}

/// `y = x W^T (+ b)` on the first `rows` rows.
#[allow(clippy::too_many_arguments)]
pub(in crate::model) fn linear(
    blas: &Lin<'_>,
    rows: usize,
    k: usize,
    n: usize,
    x: &CudaSlice<f16>,
    l: &DevLinear,
    with_bias: bool,
    y: &mut CudaSlice<f16>,
) -> Result<()> {
    let b = l.b.as_view();
    blas.blas.linear_on(
        blas.dev,
        blas.lt,
        LinearShape { rows, k, n },
        &x.as_view(),
        &l.w.as_view(),
        with_bias.then_some(&b),
        if with_bias {
            Epilogue::Bias
        } else {
            Epilogue::None
        },
        y,
    )
}

/// `out = LN(x (+ residual))` on the rows below the device count `nd`.
#[allow(clippy::too_many_arguments)]
pub(super) fn ln(
    dev: &Device,
    rows: usize,
    d: usize,
    eps: f32,
    x: &CudaSlice<f16>,
    residual: Option<&CudaSlice<f16>>,
    w: &DevLn,
    nd: &CudaView<'_, i32>,
    out: &mut CudaSlice<f16>,
) -> Result<()> {
    layer_norm_ext(
        dev,
        LayerNormShape { rows, d, eps },
        x,
        &w.gamma,
        &w.beta,
        out,
        LayerNormExtras {
            residual,
            rows_dev: Some(nd),
        },
    )
}

pub(super) fn ln_dev(l: &DevLn) -> LnDev<'_> {
    LnDev {
        gamma: &l.gamma,
        beta: &l.beta,
    }
}
