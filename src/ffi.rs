//! The C API (`include/smarttrim.h`, generated from this file by cbindgen;
//! see `scripts/gen-header.sh`).
//!
//! **Exception to "unsafe only in `src/ops`"**: a C API has to read and
//! write the caller's raw pointers, so this module holds `unsafe` too, and
//! no other module gains any for it. Reads and writes go through the helpers
//! `read_slice`, `write_out` and `c_path`, plus the array copies of
//! [`smarttrim_stats`] and [`smarttrim_last_error_message`] and the wrapping
//! of the caller's `CUstream`; every `unsafe` block carries a `// SAFETY:`
//! comment naming what the C caller promises. Model handles are never
//! dereferenced (see below).
//!
//! # Conventions
//!
//! - Every function returns an `int` status, a [`SmarttrimStatus`] value
//!   (`SMARTTRIM_STATUS_OK` = 0). On failure the thread's last error message
//!   ([`smarttrim_last_error_message`]) says what went wrong; it keeps the
//!   message of the most recent failing call on the thread.
//! - Nothing unwinds into C: every body runs under
//!   [`std::panic::catch_unwind`], and a panic is `SMARTTRIM_STATUS_PANIC`.
//! - A null pointer where one is required is `SMARTTRIM_STATUS_NULL_POINTER`,
//!   never a crash.
//! - A model handle is an opaque number, never dereferenced: live handles
//!   are kept in a registry, so a destroyed (or never created) handle is
//!   `SMARTTRIM_STATUS_BAD_HANDLE`, never undefined behaviour. Handles are
//!   not reused. Calls on one handle from several threads are serialised.
//!
//! # Two ways to run a pass
//!
//! - [`smarttrim_forward`]: **host** buffers. Per config stream, packed f32
//!   rows `[total, hidden]` and `cu_seqlens[batch + 1]`
//!   ([`SmarttrimPackedInput`]); a cross encoder (BLIP text) also takes its
//!   context that way. Streams with a token or pixel embedding (BERT, ViT)
//!   are `SMARTTRIM_STATUS_UNSUPPORTED` here. The pass runs on the model's
//!   own stream, ordered after the work the caller enqueued on its
//!   `CUstream` so far; the call returns when the pass is done. The
//!   workspace is allocated (or grown) on demand.
//! - [`smarttrim_forward_device`]: **device** buffers (`CUdeviceptr`s) on
//!   the caller's `CUstream`: rows entering the first layer (f16),
//!   `cu_seqlens` on the device and on the host, and device outputs (final
//!   rows, `cu_seqlens`, `orig_index`). Nothing is allocated (reserve the
//!   workspace first with [`smarttrim_model_reserve`]); with
//!   `SMARTTRIM_FORWARD_UPPER_BOUND`, or budget-rule pruners, nothing waits
//!   either, and the call can be recorded into the caller's CUDA graph.
//!
//! Statistics of the last pass, per layer, stream and instance (kept rows,
//! active self/cross-attention heads): [`smarttrim_stats`].
//!
//! # Where things are
//!
//! One file per concern under `src/ffi/`: `handle.rs` (model handles and
//! their lifecycle), `capacity.rs` (workspace sizes), `host.rs` (the
//! host-buffer pass), `workspace.rs` (reserving or handing over the
//! workspace), `device_ptrs.rs` (the device-pointer pass), `stats.rs` (the
//! last pass's statistics), `boundary.rs` (status codes, failures and
//! messages, the panic guard, the caller's pointers). Every public item is
//! re-exported here, at its old path.

// cbindgen (tests/header.rs, scripts/gen-header.sh) reads this file and
// follows these modules in this order, emitting the functions as it meets
// them: the order keeps include/smarttrim.h as it is (blank lines keep
// rustfmt from sorting them). The `path`s are for
// cbindgen, which looks for the children of a crate-level file beside it
// (`src/`, where `src/device.rs` is another module); rustc resolves them to
// the same files.
// Model handles and their lifecycle: the header's first functions.
#[path = "ffi/handle.rs"]
mod handle;

// Workspace sizes.
#[path = "ffi/capacity.rs"]
mod capacity;

// The host-buffer pass.
#[path = "ffi/host.rs"]
mod host;

// Reserving the workspace, or taking the caller's memory for it.
#[path = "ffi/workspace.rs"]
mod workspace;

// The device-pointer pass.
#[path = "ffi/device_ptrs.rs"]
mod device_ptrs;

// The last pass's statistics.
#[path = "ffi/stats.rs"]
mod stats;

// Status codes, failures and messages, the panic guard, the caller's
// pointers: last, as smarttrim_last_error_message is the header's last
// function.
#[path = "ffi/boundary.rs"]
mod boundary;

pub use boundary::{smarttrim_last_error_message, status_of, SmarttrimStatus};
pub use capacity::{smarttrim_model_workspace_bytes, workspace_bytes};
pub use device_ptrs::{smarttrim_forward_device, SmarttrimDeviceInput, SmarttrimDeviceOutput};
pub use handle::{
    smarttrim_model_create, smarttrim_model_create_from_memory, smarttrim_model_destroy,
    SmarttrimModel,
};
pub use host::{smarttrim_forward, SmarttrimPackedInput};
pub use stats::smarttrim_stats;
pub use workspace::{smarttrim_model_reserve, smarttrim_model_set_workspace};

use boundary::{c_path, fail, guard, nonnull, read_slice, write_out, Fail};
use capacity::{fits, merge, read_capacity};
use handle::{lock, lookup, Live};
use stats::{collect_stats, Stats};

use crate::model::{GpuForwardOptions, SyncPolicy};

/// Forward flag: ignore every pruner (the dense pass).
pub const SMARTTRIM_FORWARD_DENSE: u32 = 1;

/// Forward flag: size launches by the host's upper bound (no host wait inside
/// the pass) instead of reading the row counts after each threshold-rule
/// pruning layer.
pub const SMARTTRIM_FORWARD_UPPER_BOUND: u32 = 2;

/// Forward flag: run the pass as a CUDA graph, captured the first time a
/// shape is seen and replayed afterwards (needs a pass without host waits:
/// `SMARTTRIM_FORWARD_UPPER_BOUND`, dense, or budget-rule pruners only).
pub const SMARTTRIM_FORWARD_GRAPH: u32 = 4;

const ALL_FLAGS: u32 =
    SMARTTRIM_FORWARD_DENSE | SMARTTRIM_FORWARD_UPPER_BOUND | SMARTTRIM_FORWARD_GRAPH;

fn options(flags: u32) -> GpuForwardOptions {
    GpuForwardOptions {
        dense: flags & SMARTTRIM_FORWARD_DENSE != 0,
        sync: if flags & SMARTTRIM_FORWARD_UPPER_BOUND != 0 {
            SyncPolicy::UpperBound
        } else {
            SyncPolicy::ReadCounts
        },
        graph: flags & SMARTTRIM_FORWARD_GRAPH != 0,
    }
}
