//! Statistics of the last pass, per layer, stream and instance
//! ([`smarttrim_stats`]): from a host-buffer pass at once, from a
//! device-pointer pass on demand.

use std::ffi::{c_int, c_void};

use super::*;

/// Per-instance statistics of the last forward pass.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Stats {
    layers: usize,
    streams: usize,
    batch: usize,
    /// `[layer][stream][instance]` each.
    kept: Vec<i32>,
    self_heads: Vec<i32>,
    cross_heads: Vec<i32>,
}

pub(super) fn collect_stats(per_layer: &[Vec<crate::pass::LayerStats>], batch: usize) -> Stats {
    let layers = per_layer.len();
    let streams = per_layer.first().map_or(0, Vec::len);
    let mut s = Stats {
        layers,
        streams,
        batch,
        ..Stats::default()
    };
    for layer in per_layer {
        for (kept, sh, ch) in layer {
            for (v, dst) in [
                (kept, &mut s.kept),
                (sh, &mut s.self_heads),
                (ch, &mut s.cross_heads),
            ] {
                dst.extend((0..batch).map(|i| v.get(i).copied().unwrap_or(0)));
            }
        }
    }
    s
}

/// Statistics of the model's last successful forward pass, each
/// `[layer][stream][instance]` (row-major, `layers * streams * batch`
/// `int32_t`s): rows kept, active self-attention heads, active
/// cross-attention heads (0 without cross-attention).
///
/// The shape is written to `layers`, `streams`, `batch` (each may be NULL).
/// Any of `kept`, `self_heads`, `cross_heads` may be NULL to skip it; the
/// non-null ones must hold `len` values, and `len` must be at least
/// `layers * streams * batch` (else `SMARTTRIM_STATUS_INVALID_ARGUMENT`, with
/// the shape still written). Before any pass: `INVALID_ARGUMENT`.
///
/// # Safety
///
/// Every non-null pointer must be writable (the arrays for `len` values).
#[no_mangle]
pub unsafe extern "C" fn smarttrim_stats(
    model: *const SmarttrimModel,
    layers: *mut usize,
    streams: *mut usize,
    batch: *mut usize,
    kept: *mut i32,
    self_heads: *mut i32,
    cross_heads: *mut i32,
    len: usize,
) -> c_int {
    guard(|| {
        let h = lookup(model)?;
        let mut live = lock(&h);
        if live.stats.is_none() {
            if let Some((pass, stream)) = &live.device_pass {
                let dev = live.model.device();
                let st = if *stream == 0 {
                    dev.stream().clone()
                } else {
                    // SAFETY: the caller promised (smarttrim_forward_device)
                    // the stream is still alive when asking for statistics;
                    // the wrapper is borrowed.
                    unsafe {
                        dev.context()
                            .wrap_borrowed_stream((*stream as *mut c_void).cast())
                    }
                };
                let ws = live.workspace.as_ref().ok_or_else(|| {
                    fail(
                        SmarttrimStatus::InvalidArgument,
                        "the workspace of the last device pass is gone; run a pass again",
                    )
                })?;
                let per_layer = live.model.device_pass_stats(&st, ws, pass)?;
                let batch = per_layer
                    .first()
                    .and_then(|l| l.first())
                    .map_or(0, |(k, _, _)| k.len());
                live.stats = Some(collect_stats(&per_layer, batch));
            }
        }
        let s = live.stats.as_ref().ok_or_else(|| {
            fail(
                SmarttrimStatus::InvalidArgument,
                "no statistics: no forward pass has succeeded on this model yet",
            )
        })?;
        for (p, v) in [(layers, s.layers), (streams, s.streams), (batch, s.batch)] {
            if !p.is_null() {
                // SAFETY: non-null, writable by the caller's promise.
                unsafe { write_out(p, v) };
            }
        }
        let n = s.kept.len();
        let wanted = [kept, self_heads, cross_heads].iter().any(|p| !p.is_null());
        if wanted && len < n {
            return Err(fail(
                SmarttrimStatus::InvalidArgument,
                format!("len = {len}, the statistics need {n} values per array"),
            ));
        }
        for (p, v) in [
            (kept, &s.kept),
            (self_heads, &s.self_heads),
            (cross_heads, &s.cross_heads),
        ] {
            if !p.is_null() {
                // SAFETY: non-null; the caller promises `len >= n` writable
                // values; `v` is our own vector, so the ranges do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, n) };
            }
        }
        Ok(())
    })
}
