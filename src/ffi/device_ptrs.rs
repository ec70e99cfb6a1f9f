//! The device-pointer entry point: [`smarttrim_forward_device`] on the
//! caller's device buffers and `CUstream`, allocating nothing.

use std::ffi::{c_int, c_void};

use super::*;
use crate::device::Device;
use crate::model::{DevicePacked, DeviceStreamOutput};
use crate::spec::ModelKind;

/// One stream's (or a cross encoder's context's) input on the device, for
/// [`smarttrim_forward_device`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SmarttrimDeviceInput {
    /// `CUdeviceptr` of the packed rows entering the first layer, f16,
    /// row-major `[cu_seqlens[batch], hidden]`, 16-byte aligned.
    pub rows: u64,
    /// `CUdeviceptr` of `cu_seqlens`, `[batch + 1]` int32.
    pub cu_seqlens: u64,
    /// The same `cu_seqlens` on the host, `[batch + 1]` (sizes the launches).
    pub host_cu_seqlens: *const i32,
}

/// Where one stream's results go on the device ([`smarttrim_forward_device`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SmarttrimDeviceOutput {
    /// `CUdeviceptr` of f16 rows, room for `rows_capacity` elements (at
    /// least the input's `cu_seqlens[batch] * hidden`).
    pub rows: u64,
    /// Elements `rows` holds.
    pub rows_capacity: usize,
    /// `CUdeviceptr` of `[batch + 1]` int32: the final `cu_seqlens`.
    pub cu_seqlens: u64,
    /// `CUdeviceptr` of int32, room for `orig_capacity` elements (at least
    /// the input's `cu_seqlens[batch]`): each final row's original position.
    pub orig_index: u64,
    /// Elements `orig_index` holds.
    pub orig_capacity: usize,
}

/// A wrapped device input: rows, device `cu_seqlens`, host `cu_seqlens`.
type DeviceInputParts<'a> = (
    crate::device::ForeignSlice<half::f16>,
    crate::device::ForeignSlice<i32>,
    &'a [i32],
);

/// Reads one device input's host `cu_seqlens` (validated by the runtime).
///
/// # Safety
///
/// `e.host_cu_seqlens` must be readable for `batch + 1` values when non-null.
unsafe fn device_input<'a>(
    dev: &Device,
    e: &SmarttrimDeviceInput,
    batch: usize,
    width: usize,
    what: &str,
) -> Result<DeviceInputParts<'a>, Fail> {
    nonnull(e.host_cu_seqlens, &format!("{what}.host_cu_seqlens"))?;
    for (p, name) in [(e.rows, "rows"), (e.cu_seqlens, "cu_seqlens")] {
        if p == 0 {
            return Err(fail(
                SmarttrimStatus::NullPointer,
                format!("`{what}.{name}` is a null device pointer"),
            ));
        }
    }
    // SAFETY: non-null; the caller promises `batch + 1` readable values.
    let host: &'a [i32] = unsafe { read_slice(e.host_cu_seqlens, batch + 1) };
    let total = usize::try_from(host[batch]).map_err(|_| {
        fail(
            SmarttrimStatus::InvalidArgument,
            format!("{what}: cu_seqlens[batch] = {} is negative", host[batch]),
        )
    })?;
    // SAFETY: the caller promises device buffers of these sizes on the
    // model's context, alive and unused by other work during the pass; the
    // wrappers never free them.
    let rows = unsafe { crate::device::ForeignSlice::new(dev, e.rows, total * width) };
    // SAFETY: as above, `batch + 1` int32 values.
    let cu = unsafe { crate::device::ForeignSlice::new(dev, e.cu_seqlens, batch + 1) };
    Ok((rows, cu, host))
}

/// Runs one forward pass on **device** buffers, enqueued on the caller's
/// `stream` (NULL: the model's own stream), without allocating and, under
/// `SMARTTRIM_FORWARD_UPPER_BOUND` or with budget-rule pruners, without
/// waiting: the call returns once the work is enqueued, and the outputs are
/// ready in stream order. The pass waits (on the device) for the previous
/// pass of the model's workspace, whatever stream that ran on. Works inside
/// the caller's stream capture (the pass must then have no inner wait): the
/// caller's graph then holds the workspace's and the weights' addresses, so
/// [`smarttrim_model_reserve`], [`smarttrim_model_set_workspace`] and
/// [`smarttrim_model_destroy`] are refused (`INVALID_ARGUMENT`) until that
/// graph and every executable graph made from it are destroyed.
///
/// - `inputs`: `n_inputs` entries, one per config stream: the rows entering
///   the first layer (streams with embeddings take embedded rows here).
/// - `context`: a cross encoder's context (NULL for other models).
/// - `outputs`: `n_outputs` (= streams) entries.
/// - `flags`: `SMARTTRIM_FORWARD_DENSE`, `_UPPER_BOUND`, `_GRAPH`.
///
/// Needs the workspace reserved first ([`smarttrim_model_reserve`]) for at
/// least this batch and these lengths. Statistics: [`smarttrim_stats`],
/// which then waits for `stream` (so it must still be alive).
///
/// # Safety
///
/// The arrays must be readable for their counts; each entry's host pointer
/// readable for `batch + 1` values; each device pointer a live allocation of
/// the model's context of the documented size, not used by other work
/// while the pass runs; `stream` a live `CUstream` of that context, or NULL.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn smarttrim_forward_device(
    model: *mut SmarttrimModel,
    stream: *mut c_void,
    inputs: *const SmarttrimDeviceInput,
    n_inputs: usize,
    context: *const SmarttrimDeviceInput,
    batch: usize,
    outputs: *const SmarttrimDeviceOutput,
    n_outputs: usize,
    flags: u32,
) -> c_int {
    guard(|| {
        let h = lookup(model)?;
        nonnull(inputs, "inputs")?;
        nonnull(outputs, "outputs")?;
        let mut live = lock(&h);
        let cfg = live.model.config().clone();
        let ns = cfg.streams.len();
        let invalid = |m: String| fail(SmarttrimStatus::InvalidArgument, m);
        if n_inputs != ns || n_outputs != ns {
            return Err(invalid(format!(
                "n_inputs = {n_inputs}, n_outputs = {n_outputs}: the model has {ns} streams"
            )));
        }
        if batch == 0 || batch > 65_535 {
            return Err(invalid(format!("batch = {batch}: must be in 1..=65535")));
        }
        if flags & !ALL_FLAGS != 0 {
            return Err(invalid(format!("unknown flags {flags:#x}")));
        }
        if live.workspace.is_none() {
            return Err(invalid(
                "no workspace: call smarttrim_model_reserve first (this call allocates nothing)"
                    .into(),
            ));
        }
        let dev = match stream.is_null() {
            true => live
                .model
                .device()
                .on_stream(live.model.device().stream().clone())?,
            false => {
                let ctx = live.model.device().context().clone();
                // SAFETY: the caller promises a live CUstream of this context;
                // the wrapper is borrowed (never destroys it).
                let theirs = unsafe { ctx.wrap_borrowed_stream(stream.cast()) };
                live.model.device().on_stream(theirs)?
            }
        };
        // SAFETY: non-null; the caller promises the counts.
        let (ins, outs) = unsafe { (read_slice(inputs, n_inputs), read_slice(outputs, n_outputs)) };
        let mut held = Vec::with_capacity(ns);
        for (s, (sc, e)) in cfg.streams.iter().zip(ins).enumerate() {
            let what = format!("inputs[{s}] (`{}`)", sc.name);
            // SAFETY: the caller's promise on the entry.
            held.push(unsafe { device_input(&dev, e, batch, sc.hidden, &what)? });
        }
        let ctx_held = match (&cfg.kind, context.is_null()) {
            (ModelKind::CrossEncoder { context_hidden }, false) => {
                // SAFETY: non-null; the caller promises one readable entry.
                let c = unsafe { &*context };
                // SAFETY: the caller's promise on the entry.
                Some(unsafe { device_input(&dev, c, batch, *context_hidden, "context")? })
            }
            (ModelKind::CrossEncoder { .. }, true) => {
                return Err(fail(
                    SmarttrimStatus::NullPointer,
                    "`context` is a null pointer",
                ))
            }
            (_, false) => return Err(invalid("a context was given to a model without one".into())),
            (_, true) => None,
        };
        let mut out_held = Vec::with_capacity(ns);
        for (s, o) in outs.iter().enumerate() {
            for (p, name) in [
                (o.rows, "rows"),
                (o.cu_seqlens, "cu_seqlens"),
                (o.orig_index, "orig_index"),
            ] {
                if p == 0 {
                    return Err(fail(
                        SmarttrimStatus::NullPointer,
                        format!("`outputs[{s}].{name}` is a null device pointer"),
                    ));
                }
            }
            // SAFETY: the caller promises device buffers of the stated
            // capacities on the model's context; the wrappers never free them.
            out_held.push(unsafe {
                (
                    crate::device::ForeignSlice::<half::f16>::new(&dev, o.rows, o.rows_capacity),
                    crate::device::ForeignSlice::<i32>::new(&dev, o.cu_seqlens, batch + 1),
                    crate::device::ForeignSlice::<i32>::new(&dev, o.orig_index, o.orig_capacity),
                )
            });
        }
        let dins: Vec<DevicePacked> = held
            .iter()
            .map(|(r, c, hc)| DevicePacked {
                rows: r.as_view(),
                cu_seqlens: c.as_view(),
                host_cu_seqlens: hc,
            })
            .collect();
        let dctx = ctx_held.as_ref().map(|(r, c, hc)| DevicePacked {
            rows: r.as_view(),
            cu_seqlens: c.as_view(),
            host_cu_seqlens: hc,
        });
        let mut douts: Vec<DeviceStreamOutput> = out_held
            .iter_mut()
            .map(|(r, c, o)| DeviceStreamOutput {
                rows: r.as_view_mut(),
                cu_seqlens: c.as_view_mut(),
                orig_index: o.as_view_mut(),
            })
            .collect();
        let (model, ws) = live.begin_pass()?;
        let pass = model.forward_device(
            dev.stream(),
            ws,
            &dins,
            dctx.as_ref(),
            &mut douts,
            &options(flags),
        )?;
        live.device_pass = Some((pass, stream as usize));
        Ok(())
    })
}
