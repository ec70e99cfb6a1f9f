//! The model's workspace: allocated now ([`smarttrim_model_reserve`]) or
//! carved from device memory the caller owns
//! ([`smarttrim_model_set_workspace`]).

use std::ffi::c_int;

use super::*;
use crate::model::Workspace;

/// Allocates the model's workspace now, for batches of up to `max_batch`
/// sequences and per config stream sequences of up to
/// `max_seqlen_per_stream[s]` rows (a cross encoder: one more entry, its
/// context's), replacing any earlier one. [`smarttrim_forward_device`]
/// needs it (it allocates nothing); [`smarttrim_forward`] grows it on
/// demand. The bytes are [`smarttrim_model_workspace_bytes`] plus the
/// cuBLASLt workspace (32 MiB on Hopper). The earlier workspace is freed
/// after the last pass enqueued with it (stream order). Refused while a CUDA
/// graph recorded with [`smarttrim_forward_device`] still uses the model.
///
/// # Safety
///
/// `max_seqlen_per_stream` must be readable for that many `int`s.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_model_reserve(
    model: *mut SmarttrimModel,
    max_batch: c_int,
    max_seqlen_per_stream: *const c_int,
) -> c_int {
    guard(|| {
        nonnull(max_seqlen_per_stream, "max_seqlen_per_stream")?;
        let h = lookup(model)?;
        let mut live = lock(&h);
        let cfg = live.model.config().clone();
        // SAFETY: non-null; the caller promises one entry per stream (+ context).
        let cap = unsafe { read_capacity(&cfg, max_batch, max_seqlen_per_stream)? };
        check_unpinned(&live, "smarttrim_model_reserve")?;
        // The new workspace first: a failure leaves the old one in place. The
        // old one's memory is freed after its last pass (stream order).
        let ws = Workspace::new(&live.model, cap)?;
        live.device_pass = None;
        live.workspace = Some(ws);
        Ok(())
    })
}

/// Makes the model's workspace out of device memory the caller owns:
/// `bytes` at `ptr` (a `CUdeviceptr` of the model's context, 256-byte
/// aligned, at least [`smarttrim_model_workspace_bytes`] for this capacity),
/// for batches of up to `max_batch` sequences and the given longest
/// sequences (as [`smarttrim_model_reserve`]), replacing any earlier
/// workspace. The memory is zero-filled here and never freed by smarttrim;
/// only the cuBLASLt workspace (32 MiB on Hopper) is allocated. Passes then
/// allocate nothing ([`smarttrim_forward_device`]). Refused while a CUDA
/// graph recorded with [`smarttrim_forward_device`] still uses the model.
///
/// # Safety
///
/// `max_seqlen_per_stream` must be readable for that many `int`s; `ptr`
/// must be device memory of the model's context holding `bytes` bytes,
/// used by nothing else, alive until the model is destroyed or given
/// another workspace and every pass enqueued with it has finished.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_model_set_workspace(
    model: *mut SmarttrimModel,
    ptr: u64,
    bytes: usize,
    max_batch: c_int,
    max_seqlen_per_stream: *const c_int,
) -> c_int {
    guard(|| {
        nonnull(max_seqlen_per_stream, "max_seqlen_per_stream")?;
        if ptr == 0 {
            return Err(fail(
                SmarttrimStatus::NullPointer,
                "`ptr` is a null device pointer",
            ));
        }
        let h = lookup(model)?;
        let mut live = lock(&h);
        let cfg = live.model.config().clone();
        // SAFETY: non-null; the caller promises one entry per stream (+ context).
        let cap = unsafe { read_capacity(&cfg, max_batch, max_seqlen_per_stream)? };
        check_unpinned(&live, "smarttrim_model_set_workspace")?;
        let dev = live.model.device();
        // SAFETY: the caller's contract above; the wrapper never frees it.
        let mem = unsafe { crate::device::ForeignSlice::<u8>::new(dev, ptr, bytes) };
        // The new workspace first: a failure leaves the old one in place.
        let ws = Workspace::in_memory(&live.model, cap, mem)?;
        live.device_pass = None;
        live.workspace = Some(ws);
        Ok(())
    })
}

/// Refuses (`INVALID_ARGUMENT`) to free or replace a workspace, or the
/// model, while CUDA graphs the caller recorded with
/// [`smarttrim_forward_device`] still use them
/// ([`crate::model::Workspace::graph_pins`]). The driver releases a graph's
/// pins shortly after the graph and its executable graphs are destroyed
/// (asynchronously), so a release is waited for a moment first.
pub(super) fn check_unpinned(live: &Live, what: &str) -> Result<(), Fail> {
    let pins = crate::device::settled_pins(&live.model.pins).max(
        live.workspace
            .as_ref()
            .map_or(0, |w| crate::device::settled_pins(&w.pins)),
    );
    match pins {
        0 => Ok(()),
        n => Err(fail(
            SmarttrimStatus::InvalidArgument,
            format!(
                "{what}: {n} CUDA graph(s) recorded with smarttrim_forward_device still use this \
                 model's workspace and weights; destroy them (and every executable graph \
                 instantiated from them) first"
            ),
        )),
    }
}
