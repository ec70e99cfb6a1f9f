//! Workspace sizes: the bytes a capacity needs
//! ([`smarttrim_model_workspace_bytes`], [`workspace_bytes`]), capacities
//! read from C, and how a workspace's capacity covers or grows to another's.

use std::ffi::c_int;

use super::*;
use crate::model::{Capacity, WorkspaceLayout};
use crate::spec::{ModelConfig, ModelKind};
use crate::Error;

/// The workspace bytes of `cfg` at a capacity, as caller memory for
/// [`smarttrim_model_set_workspace`] needs them (every buffer 256-byte
/// aligned: [`WorkspaceLayout::arena_bytes`]): `max_seqlen` holds one entry
/// per config stream, plus the context's for a cross encoder.
pub fn workspace_bytes(
    cfg: &ModelConfig,
    max_batch: usize,
    max_seqlen: &[usize],
) -> crate::Result<usize> {
    let cap = capacity(cfg, max_batch, max_seqlen)?;
    Ok(WorkspaceLayout::new(cfg, &cap)?.arena_bytes())
}

fn capacity(cfg: &ModelConfig, max_batch: usize, max_seqlen: &[usize]) -> crate::Result<Capacity> {
    let ns = cfg.streams.len();
    let cross = matches!(cfg.kind, ModelKind::CrossEncoder { .. });
    let want = ns + usize::from(cross);
    if max_seqlen.len() != want {
        return Err(Error::invalid(
            "smarttrim_model_workspace_bytes",
            format!("{} lengths given, the model needs {want}", max_seqlen.len()),
        ));
    }
    Ok(Capacity {
        max_batch,
        max_seqlen: max_seqlen[..ns].to_vec(),
        context_max_seqlen: if cross { max_seqlen[ns] } else { 0 },
    })
}

/// The entries `smarttrim_model_workspace_bytes` reads from
/// `max_seqlen_per_stream`.
fn seqlen_entries(cfg: &ModelConfig) -> usize {
    cfg.streams.len() + usize::from(matches!(cfg.kind, ModelKind::CrossEncoder { .. }))
}

/// The device bytes of the workspace a forward pass of `model` needs for
/// batches of up to `max_batch` sequences and, per config stream, sequences
/// of up to `max_seqlen_per_stream[s]` rows (a cross encoder: one more entry,
/// its context's longest sequence): the size of the memory to hand to
/// [`smarttrim_model_set_workspace`]. Weights not included, nor the
/// cuBLASLt workspace (32 MiB on Hopper) smarttrim allocates itself.
///
/// # Safety
///
/// `max_seqlen_per_stream` must be readable for that many `int`s; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_model_workspace_bytes(
    model: *const SmarttrimModel,
    max_batch: c_int,
    max_seqlen_per_stream: *const c_int,
    out: *mut usize,
) -> c_int {
    guard(|| {
        nonnull(out, "out")?;
        nonnull(max_seqlen_per_stream, "max_seqlen_per_stream")?;
        let h = lookup(model)?;
        let live = lock(&h);
        let cfg = live.model.config();
        let n = seqlen_entries(cfg);
        // SAFETY: non-null; the caller promises one entry per stream (+ context).
        let lens = unsafe { read_slice(max_seqlen_per_stream, n) };
        let lens = lens
            .iter()
            .map(|&v| usize::try_from(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| fail(SmarttrimStatus::InvalidArgument, "a negative max_seqlen"))?;
        let b = usize::try_from(max_batch).map_err(|_| {
            fail(
                SmarttrimStatus::InvalidArgument,
                format!("max_batch = {max_batch}: must be positive"),
            )
        })?;
        let bytes = workspace_bytes(cfg, b, &lens)?;
        // SAFETY: non-null, writable by the caller's promise.
        unsafe { write_out(out, bytes) };
        Ok(())
    })
}

/// Reads and checks `max_batch` and one longest sequence per stream (plus
/// the context's for a cross encoder).
///
/// # Safety
///
/// `max_seqlen_per_stream` must be non-null and readable for that many
/// `int`s.
pub(super) unsafe fn read_capacity(
    cfg: &ModelConfig,
    max_batch: c_int,
    max_seqlen_per_stream: *const c_int,
) -> Result<Capacity, Fail> {
    let n = seqlen_entries(cfg);
    // SAFETY: the caller's contract.
    let lens = unsafe { read_slice(max_seqlen_per_stream, n) };
    let lens = lens
        .iter()
        .map(|&v| usize::try_from(v).ok().filter(|&v| v > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| fail(SmarttrimStatus::InvalidArgument, "a max_seqlen below 1"))?;
    let b = usize::try_from(max_batch)
        .ok()
        .filter(|&b| (1..=65_535).contains(&b))
        .ok_or_else(|| {
            fail(
                SmarttrimStatus::InvalidArgument,
                format!("max_batch = {max_batch}: must be in 1..=65535"),
            )
        })?;
    Ok(capacity(cfg, b, &lens)?)
}

pub(super) fn fits(have: &Capacity, need: &Capacity) -> bool {
    need.max_batch <= have.max_batch
        && need
            .max_seqlen
            .iter()
            .zip(&have.max_seqlen)
            .all(|(n, h)| n <= h)
        && need.context_max_seqlen <= have.context_max_seqlen
}

pub(super) fn merge(a: &Capacity, b: &Capacity) -> Capacity {
    Capacity {
        max_batch: a.max_batch.max(b.max_batch),
        max_seqlen: a
            .max_seqlen
            .iter()
            .zip(&b.max_seqlen)
            .map(|(x, y)| *x.max(y))
            .collect(),
        context_max_seqlen: a.context_max_seqlen.max(b.context_max_seqlen),
    }
}
