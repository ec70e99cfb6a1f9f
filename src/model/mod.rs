//! The pruned forward pass on the GPU (DESIGN.md semantics, the same order of
//! operations as [`crate::reference::forward`]).
//!
//! - [`GpuModel::new`] uploads every weight once as f16 and checks that the
//!   kernels support the model ([`check_supported`]).
//! - [`Workspace::new`] allocates, once per model and [`Capacity`] (max batch,
//!   max rows per sequence of each stream), every device buffer a forward pass
//!   needs, or [`Workspace::in_memory`] carves them from device memory the
//!   caller owns ([`WorkspaceLayout::arena_bytes`] bytes); a forward pass
//!   allocates nothing on the device (the first one also loads the kernel
//!   modules).
//! - [`GpuModel::forward`] runs the pass and returns [`GpuOutputs`]: final
//!   packed rows per stream (f32 on the host), `cu_seqlens`, `orig_index`,
//!   pooled first/mean rows, and per layer and sequence the kept rows and
//!   active heads (with the scores, keep flags and head masks behind them).
//!
//! # What runs where
//!
//! - Inputs are validated on the host ([`crate::pass::check_inputs`],
//!   every problem in one [`Error::Input`](crate::Error::Input)) and
//!   uploaded as they are: packed rows as f16, token and type ids, pixels as
//!   f32 (one copy each per forward, before any device work of the pass).
//!   The **embeddings run on the device** at the start of the pass
//!   ([`crate::ops::bert_embed`]; ViT: [`crate::ops::vit_patchify`], the
//!   patch GEMM on cuBLASLt, [`crate::ops::vit_assemble`]), inside the CUDA
//!   graph when one is used. [`prepare_inputs`] still embeds on the host
//!   (f32) for callers that need the rows, e.g. to hand them to
//!   [`GpuModel::forward_device`].
//! - Everything after the embeddings runs on the device too: token pruners
//!   ([`crate::ops::token_scores`]), compaction ([`compact`](fn@crate::ops::compact)),
//!   head pruners ([`crate::ops::head_scores`]), the linear layers (cuBLASLt
//!   with a bias epilogue; GELU is the exact erf form, a separate
//!   [`crate::ops::bias_gelu`] launch, never cuBLASLt's tanh epilogue),
//!   attention, LayerNorms, the final LayerNorm and pooling.
//! - Statistics (kept rows per sequence of every pruned layer, active heads
//!   of every head pruner), token scores, keep flags and head logits/masks
//!   accumulate in device buffers and come back after the one wait at the
//!   end of the pass.
//!
//! # Host synchronisation ([`SyncPolicy`]) and CUDA graphs
//!
//! The host sizes every launch by a row count. Where the host can *know*
//! the count it uses it, under every policy: the input lengths, and after a
//! budget-rule token pruner `k = max(1, ceil(rho n))` per sequence (the
//! same f32 arithmetic as the kernel), so passes whose pruners all use the
//! budget rule run exact-size GEMMs with no wait at all. Threshold-rule
//! pruners keep a data-dependent number of rows; there the policy decides:
//!
//! - [`SyncPolicy::ReadCounts`] (DESIGN.md policy a): after the compaction
//!   step of such a layer, the new total row counts are copied to the host
//!   (one small copy, one wait per such layer, however many streams were
//!   pruned there), and later launches are sized by the true counts.
//! - [`SyncPolicy::UpperBound`] (policy b, without the one-step lag): the
//!   host keeps sizing launches by its bound (the rows before the step);
//!   every kernel is given the device row count (`cu_seqlens[batch]`) or
//!   reads `cu_seqlens`, so rows past the true count are ignored; the GEMMs
//!   compute those stale rows and nobody reads them. No wait inside the pass.
//!
//! [`GpuOutputs::syncs`] counts the blocking host waits *inside* the pass
//! (before its last launch is enqueued): under `ReadCounts` one per layer
//! at which a threshold-rule token pruner ran, otherwise zero. Every pass
//! then waits once more, at the end, to copy its results to the host; that
//! wait is the result fetch and is not counted. With
//! `SMARTTRIM_SYNC_EACH_LAUNCH=1` every launch is followed by a synchronize
//! ([`crate::device::Device::check_launch`], except while capturing), a
//! debugging aid that attributes a kernel fault to its launch; those waits
//! are not part of the pass and not counted.
//!
//! With [`GpuForwardOptions::graph`], a pass without inner waits
//! ([`GpuModel::graph_capturable`]: dense, `UpperBound`, or budget-rule
//! pruners only) is captured as a CUDA graph the first time a shape (every
//! sequence length) is seen — after running it once eagerly, which loads
//! every kernel and gives that call's results — and replayed with one
//! launch afterwards. Graphs are cached in the [`Workspace`] (at most
//! [`MAX_GRAPHS`], least recently used dropped first), keyed by the model
//! (a graph holds its weight pointers), the mode and the lengths. Policy
//! (c) of DESIGN.md (GEMMs reading `M` from device memory, so threshold
//! pruning saves GEMM work without a wait) is not implemented: cuBLASLt
//! takes `M` from the host.
//!
//! # Streams, threads and buffer ordering
//!
//! Each [`Workspace`] has a private stream: [`GpuModel::forward`] runs there
//! and every graph of the workspace is captured there, so passes of one
//! model on several threads (one workspace each; the model is `Sync`) never
//! share a stream or a capture. [`GpuModel::forward_on`] and
//! [`GpuModel::forward_device`] enqueue on a stream of the caller's. Weights
//! and workspace buffers carry no cudarc per-buffer events (an event
//! recorded outside a capture cannot be waited on inside one); ordering is
//! explicit instead:
//!
//! - the weights are complete when [`GpuModel::new`] returns and only read
//!   afterwards;
//! - every pass waits (on the device) for the workspace's previous pass,
//!   whatever stream that ran on, and records its own end, also when it
//!   fails midway; the model's stream, where buffers and weights are freed,
//!   is ordered after it, so dropping a workspace or a model never frees
//!   memory a pass still uses;
//! - [`GpuModel::forward_on`] refuses a stream being captured (it uploads
//!   host buffers); [`GpuModel::forward_device`] records into the caller's
//!   capture, and the caller's graph then pins the workspace and the model
//!   ([`Workspace::graph_pins`], [`GpuModel::graph_pins`]) until the driver
//!   destroys it: a pinned workspace or model is leaked, not freed, if
//!   dropped.
//!
//! Buffers of the caller's that go into a capture must be made without
//! cudarc's events too: [`crate::device::Device::without_event_tracking`]
//! (cudarc's switch belongs to the `CudaContext` object; this shares
//! smarttrim's scope so the two never switch it back under each other).

//! # Supported models
//!
//! See [`check_supported`]: head size 16, 32 or 64, widths multiples of 8,
//! token pruner widths `D` and `Hs` multiples of 64 (the fused scorer's
//! tile), head pruners within the head kernel's limits. The built-in
//! `tiny-*` presets (hidden 64, token pruner width 32) are therefore
//! [`Error::Unsupported`](crate::Error::Unsupported); the tests run their
//! [`gpu_variant`]s (token pruner width 64, and 2 heads: head size 32, the
//! size the real models' kernels share with them).

mod composite;
mod device_io;
mod forward;
mod input;
mod layout;
mod weights;
mod workspace;

pub use device_io::{DevicePacked, DevicePass, DeviceStreamOutput};
pub use input::{prepare_inputs, validate_inputs, PreparedInputs};
pub use layout::{Capacity, StreamLayout, WorkspaceLayout, ARENA_ALIGN};
pub use weights::{check_supported, gpu_variant, GpuModel};
pub use workspace::{Workspace, MAX_GRAPHS};

use crate::pass::StreamOutput;
use crate::spec::SequenceFlops;

/// How the host learns the row counts that size the GEMMs (module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Read the new total row counts after each pruning layer (one small
    /// copy and one wait per pruning layer).
    #[default]
    ReadCounts,
    /// Size every launch by the unpruned upper bound; kernels ignore the rows
    /// past the device count. No wait inside the pass.
    UpperBound,
}

/// Options of [`GpuModel::forward`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuForwardOptions {
    /// Ignore all pruners (the dense pass).
    pub dense: bool,
    /// The host synchronisation policy.
    pub sync: SyncPolicy,
    /// Capture the pass as a CUDA graph (once per input shape) and replay it
    /// (module docs); needs a pass without inner waits
    /// ([`GpuModel::graph_capturable`]).
    pub graph: bool,
}

/// Results of [`GpuModel::forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOutputs {
    /// One per config stream, as the CPU reference reports them (each
    /// layer's `orig_index_in` is rebuilt on the host from the keep flags).
    pub streams: Vec<StreamOutput>,
    /// Blocking host waits inside this pass, not counting the one that
    /// fetches the results (module docs).
    pub syncs: usize,
    /// The policy the pass ran under.
    pub policy: SyncPolicy,
    /// Whether the pass ran as a CUDA graph (captured now or replayed).
    pub graph: bool,
    /// Milliseconds on the stream from the end of the input upload to the
    /// end of the pass's last launch (CUDA events): embeddings and layers,
    /// including any time the device sat idle waiting for the host inside
    /// the pass; excluding the upload and the result copies. On the first
    /// pass of a shape with [`GpuForwardOptions::graph`] it also spans the
    /// capture.
    pub device_ms: f32,
    /// FLOPs per sequence, summed over streams (the CPU reference's
    /// accounting: "executed" assumes exact-size launches, which
    /// [`SyncPolicy::UpperBound`] exceeds after threshold pruning).
    pub flops: Vec<SequenceFlops>,
    /// The task head's logits `[batch, outputs]` (f32 on the host), if the
    /// model has a head.
    pub logits: Option<Vec<f32>>,
}

impl GpuOutputs {
    /// Per-layer statistics: `[layer][stream]` -> (kept rows, active self
    /// heads, active cross heads), each per sequence; the same shape as
    /// [`crate::reference::Outputs::stats`].
    pub fn stats(&self) -> Vec<Vec<crate::pass::LayerStats>> {
        crate::pass::layer_stats(&self.streams)
    }
}
