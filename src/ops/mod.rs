//! Safe wrappers around the hand-written kernels: each validates its
//! arguments (lengths, shapes, alignment, supported sizes) and returns an
//! [`crate::Error`] instead of launching on inconsistent input. All
//! `unsafe` launch code of the crate lives in this module.

pub mod attention;
pub mod compact;
pub mod elementwise;
pub mod embed;
pub mod gemm;
pub mod layernorm;
pub mod score;

pub use attention::{
    build_active_heads, cross_attention, self_attention, validate_attention, AttentionBuffers,
    AttentionLayout, AttentionShape, DenseAttentionBaseline, HeadSelection,
};
pub use compact::{
    compact, seq_positions, validate_compact, validate_seq_positions, CompactInputs, CompactLens,
    CompactOutputs, CompactShape, KeepRuleDev,
};
pub use elementwise::{
    bias_act, bias_gelu, bias_residual, copy_cols, first_token, mean_pool, validate_copy_cols, Act,
    ColsShape, CopyColsShape, PoolOut, PoolShape,
};
pub use embed::{
    bert_embed, check_bert_ids, validate_vit_assemble, validate_vit_embed, validate_vit_patchify,
    vit_assemble, vit_embed, vit_patchify, BertEmbedInputs, BertEmbedLens, BertEmbedOutputs,
    BertEmbedShape, BertEmbedTables, VitAssembleInputs, VitAssembleLens, VitEmbedLens,
    VitEmbedOutputs, VitEmbedScratch, VitEmbedShape, VitEmbedWeights,
};
pub use gemm::{Blas, BlasWorkspace, Epilogue, LinearShape};
pub use layernorm::{layer_norm, layer_norm_ext, LayerNormExtras, LayerNormLens, LayerNormShape};
pub use score::{
    head_scores, score_dot, token_scores, validate_head_scores, validate_token_scores,
    HeadPrunerDev, HeadScoreOutputs, HeadScoreWorkspace, LnDev, OtherStream, PrunerInput,
    TokenPrunerDev, TokenScoreOutputs, TokenScoreWorkspace,
};

use crate::{Error, Result};

/// `have >= need` or an error naming the buffer.
pub(crate) fn check_len(op: &'static str, name: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        Err(Error::invalid(
            op,
            format!("`{name}` holds {have} elements but {need} are needed"),
        ))
    } else {
        Ok(())
    }
}

/// `rows` as the kernel's i32, checking `rows * d` also fits in i32 index
/// arithmetic where kernels use it for per-row offsets within a sequence.
pub(crate) fn rows_i32(op: &'static str, rows: usize, d: usize) -> Result<i32> {
    let total = rows.checked_mul(d);
    match (i32::try_from(rows), total) {
        (Ok(r), Some(_)) => Ok(r),
        _ => Err(Error::invalid(
            op,
            format!("rows = {rows} (x d = {d}) does not fit the kernel's 32-bit row count"),
        )),
    }
}

/// A device pointer must be `align`-byte aligned (0, meaning absent, passes).
pub(crate) fn check_aligned(op: &'static str, name: &str, ptr: u64, align: u64) -> Result<()> {
    if ptr % align != 0 {
        Err(Error::invalid(
            op,
            format!("`{name}` at {ptr:#x} is not {align}-byte aligned (vector loads need it)"),
        ))
    } else {
        Ok(())
    }
}

/// The result of an `unsafe` kernel launch named `name`, as the wrappers
/// report it: a failed launch is [`Error::Driver`] ("launching `name`"),
/// then [`crate::device::Device::check_launch`].
pub(crate) fn launched<T>(
    dev: &crate::device::Device,
    name: &str,
    launch: std::result::Result<T, cudarc::driver::DriverError>,
) -> Result<()> {
    launch.map_err(|e| Error::driver(format!("launching {name}"), e))?;
    dev.check_launch(name)
}

/// A nullable device pointer: the pointer and its guard, or `(0, None)`.
pub(crate) fn opt_ptr<'a, T, P: cudarc::driver::DevicePtr<T> + ?Sized>(
    p: Option<&'a P>,
    stream: &'a cudarc::driver::CudaStream,
) -> (u64, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match p {
        Some(p) => {
            let (ptr, g) = p.device_ptr(stream);
            (ptr, Some(g))
        }
        None => (0, None),
    }
}

/// A nullable mutable device pointer: the pointer and its guard, or `(0, None)`.
pub(crate) fn opt_ptr_mut<'a, T, P: cudarc::driver::DevicePtrMut<T> + ?Sized>(
    p: Option<&'a mut P>,
    stream: &'a cudarc::driver::CudaStream,
) -> (u64, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match p {
        Some(p) => {
            let (ptr, g) = p.device_ptr_mut(stream);
            (ptr, Some(g))
        }
        None => (0, None),
    }
}
