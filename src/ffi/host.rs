//! The host-buffer entry point: [`smarttrim_forward`] on packed f32 rows the
//! caller owns, the workspace allocated or grown on demand.

use std::ffi::{c_int, c_void};

use super::*;
use crate::model::{Capacity, GpuModel, Workspace};
use crate::pass::{Inputs, StreamInput};
use crate::spec::{EmbeddingConfig, ModelKind};
use crate::Error;

/// One stream's (or a cross encoder's context's) input: host buffers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SmarttrimPackedInput {
    /// Packed rows, row-major `[cu_seqlens[batch], hidden]` f32.
    pub rows: *const f32,
    /// `[batch + 1]`, starting at 0, non-decreasing.
    pub cu_seqlens: *const i32,
}

/// Copies one packed input into owned vectors, validating `cu_seqlens` before
/// the rows are read (their count comes from it).
///
/// # Safety
///
/// `inp.cu_seqlens` must be readable for `batch + 1` values, and `inp.rows`
/// for `cu_seqlens[batch] * hidden` values, when non-null.
unsafe fn read_packed(
    inp: &SmarttrimPackedInput,
    batch: usize,
    hidden: usize,
    what: &str,
) -> Result<(Vec<f32>, Vec<i32>), Fail> {
    nonnull(inp.cu_seqlens, &format!("{what}.cu_seqlens"))?;
    nonnull(inp.rows, &format!("{what}.rows"))?;
    // SAFETY: the caller promises `batch + 1` readable values.
    let cu = unsafe { read_slice(inp.cu_seqlens, batch + 1) }.to_vec();
    let bad = |m: String| fail(SmarttrimStatus::InvalidArgument, format!("{what}: {m}"));
    if cu[0] != 0 {
        return Err(bad(format!("cu_seqlens[0] = {} (must be 0)", cu[0])));
    }
    if let Some(i) = cu.windows(2).position(|w| w[1] < w[0]) {
        return Err(bad(format!(
            "cu_seqlens decreases at index {} ({} -> {})",
            i + 1,
            cu[i],
            cu[i + 1]
        )));
    }
    let total = cu[batch] as usize;
    let n = total
        .checked_mul(hidden)
        .ok_or_else(|| bad(format!("{total} rows x {hidden} overflows")))?;
    // SAFETY: the caller promises `cu_seqlens[batch] * hidden` readable values.
    let rows = unsafe { read_slice(inp.rows, n) }.to_vec();
    Ok((rows, cu))
}

/// Runs one pruned forward pass of `batch` sequences.
///
/// - `stream`: the caller's `CUstream` (NULL: no ordering with the caller).
///   It must belong to the device's primary context (as CUDA runtime API
///   streams do). The pass runs on the workspace's own stream after the work
///   enqueued on `stream` so far; the call returns when the pass is done.
/// - `inputs`: `n_inputs` entries, one per config stream, in config order.
/// - `context`: a cross encoder's context rows (NULL for other models).
/// - `flags`: `SMARTTRIM_FORWARD_DENSE`, `SMARTTRIM_FORWARD_UPPER_BOUND`.
///
/// The workspace is allocated on the first pass and grown when a batch
/// needs more (a new one allocated before the old one goes, so a failure
/// leaves the old one; never one in caller memory, which is an
/// `INVALID_ARGUMENT` instead; never while a caller's CUDA graph uses it).
/// Statistics: [`smarttrim_stats`].
///
/// # Safety
///
/// `inputs` must be readable for `n_inputs` entries, each entry's buffers
/// as [`SmarttrimPackedInput`] describes; likewise `context`; `stream` a
/// valid `CUstream` of the device's context, or NULL.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_forward(
    model: *mut SmarttrimModel,
    stream: *mut c_void,
    inputs: *const SmarttrimPackedInput,
    n_inputs: usize,
    context: *const SmarttrimPackedInput,
    batch: usize,
    flags: u32,
) -> c_int {
    guard(|| {
        let h = lookup(model)?;
        nonnull(inputs, "inputs")?;
        let mut live = lock(&h);
        let cfg = live.model.config().clone();
        let invalid = |m: String| fail(SmarttrimStatus::InvalidArgument, m);
        if n_inputs != cfg.streams.len() {
            return Err(invalid(format!(
                "n_inputs = {n_inputs}, the model has {} streams",
                cfg.streams.len()
            )));
        }
        if batch == 0 || batch > 65_535 {
            return Err(invalid(format!("batch = {batch}: must be in 1..=65535")));
        }
        if flags & !ALL_FLAGS != 0 {
            return Err(invalid(format!("unknown flags {flags:#x}")));
        }
        // SAFETY: non-null; the caller promises `n_inputs` entries.
        let entries = unsafe { read_slice(inputs, n_inputs) };
        let mut streams = Vec::with_capacity(n_inputs);
        for (sc, e) in cfg.streams.iter().zip(entries) {
            if !matches!(sc.embedding, EmbeddingConfig::None) {
                return Err(fail(
                    SmarttrimStatus::Unsupported,
                    format!(
                        "stream `{}` takes token ids or pixels; this version of the C API \
                         takes packed rows only",
                        sc.name
                    ),
                ));
            }
            let what = format!("inputs[{}] (`{}`)", streams.len(), sc.name);
            // SAFETY: the caller promises the entry's buffers as documented.
            let (rows, cu_seqlens) = unsafe { read_packed(e, batch, sc.hidden, &what)? };
            streams.push(StreamInput::Packed { rows, cu_seqlens });
        }
        let context = match cfg.kind {
            ModelKind::CrossEncoder { context_hidden } => {
                nonnull(context, "context")?;
                // SAFETY: non-null; the caller promises one readable entry.
                let c = unsafe { &*context };
                // SAFETY: the caller promises the entry's buffers as documented.
                Some(unsafe { read_packed(c, batch, context_hidden, "context")? })
            }
            _ => None,
        };
        let inputs = Inputs { streams, context };
        // Validate and size before touching the device.
        let model_ref = &live.model;
        let prep = crate::model::prepare_inputs(&cfg, embeddings_of(model_ref), &inputs, None)?;
        let need = Capacity::for_inputs(&prep);
        let grow = match &live.workspace {
            Some(ws) => !fits(&ws.capacity, &need),
            None => true,
        };
        if grow {
            if let Some(ws) = &live.workspace {
                if ws.foreign {
                    // The caller's memory: never replaced behind its back.
                    return Err(invalid(format!(
                        "this pass needs a larger workspace than the one in caller memory \
                         (smarttrim_model_set_workspace, {:?}); give it more memory, or \
                         smarttrim_model_reserve",
                        ws.capacity
                    )));
                }
            }
            super::workspace::check_unpinned(&live, "smarttrim_forward (growing the workspace)")?;
            let cap = match &live.workspace {
                Some(ws) => merge(&ws.capacity, &need),
                None => need,
            };
            // The new workspace first (validated and allocated): a failure
            // leaves the old one, and the last statistics, in place.
            let ws = Workspace::new(&live.model, cap)?;
            live.device_pass = None;
            live.workspace = Some(ws);
        }
        let ws_stream = match &live.workspace {
            Some(ws) => ws.stream.clone(),
            None => return Err(invalid("no workspace".into())),
        };
        if !stream.is_null() {
            let ctx = live.model.device().context().clone();
            // SAFETY: the caller promises `stream` is a live CUstream of this
            // device's context and keeps it alive during the call; the
            // wrapper is borrowed (never destroys it) and dropped before
            // returning.
            let theirs = unsafe { ctx.wrap_borrowed_stream(stream.cast()) };
            // The pass runs on the workspace's stream (GpuModel::forward).
            ws_stream
                .join(&theirs)
                .map_err(|e| Error::driver("ordering after the caller's stream", e))?;
        }
        let opts = options(flags);
        let (model, ws) = live.begin_pass()?;
        let out = model.forward(ws, &inputs, &opts)?;
        live.stats = Some(collect_stats(&out.stats(), batch));
        Ok(())
    })
}

fn embeddings_of(m: &GpuModel) -> &[crate::spec::EmbeddingWeights] {
    &m.embeddings
}
