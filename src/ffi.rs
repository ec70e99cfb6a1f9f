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

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::device::Device;
use crate::model::{
    check_supported, Capacity, DevicePacked, DeviceStreamOutput, GpuForwardOptions, GpuModel,
    SyncPolicy, Workspace, WorkspaceLayout,
};
use crate::pass::{Inputs, StreamInput};
use crate::spec::{EmbeddingConfig, ModelConfig, ModelKind, Weights};
use crate::Error;

/// Status codes returned by every function of the C API.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarttrimStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was null.
    NullPointer = 1,
    /// An argument or input is invalid (sizes, `cu_seqlens`, capacity, paths
    /// that are not UTF-8).
    InvalidArgument = 2,
    /// No CUDA driver (libcuda could not be loaded).
    NoDriver = 3,
    /// The driver reports no (such) CUDA device.
    NoDevice = 4,
    /// The library was built without the GPU kernels.
    KernelsNotBuilt = 5,
    /// A CUDA driver, cuBLAS or kernel-loading call failed.
    CudaError = 6,
    /// A file could not be read.
    IoError = 7,
    /// The model config is invalid (or not valid JSON).
    ConfigError = 8,
    /// The weights file is invalid or does not match the config.
    WeightsError = 9,
    /// The model or input kind is not supported (by the kernels or by this API).
    Unsupported = 10,
    /// The library panicked (a bug); the panic was caught at the boundary.
    Panic = 11,
    /// The model handle is not live (destroyed, or never created).
    BadHandle = 12,
}

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

/// One stream's (or a cross encoder's context's) input: host buffers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SmarttrimPackedInput {
    /// Packed rows, row-major `[cu_seqlens[batch], hidden]` f32.
    pub rows: *const f32,
    /// `[batch + 1]`, starting at 0, non-decreasing.
    pub cu_seqlens: *const i32,
}

/// An opaque model handle (`smarttrim_model` in C): a config, its weights on
/// one GPU, a workspace grown on demand, and the last pass's statistics.
pub struct SmarttrimModel {
    _opaque: [u8; 0],
}

/// Per-instance statistics of the last forward pass.
#[derive(Debug, Default, Clone, PartialEq)]
struct Stats {
    layers: usize,
    streams: usize,
    batch: usize,
    /// `[layer][stream][instance]` each.
    kept: Vec<i32>,
    self_heads: Vec<i32>,
    cross_heads: Vec<i32>,
}

struct Live {
    model: GpuModel,
    workspace: Option<Workspace>,
    stats: Option<Stats>,
    /// The last device-pointer pass and its stream (statistics are fetched
    /// from the device when asked for).
    device_pass: Option<(crate::model::DevicePass, usize)>,
}

type Handle = Arc<Mutex<Live>>;

fn registry() -> MutexGuard<'static, HashMap<usize, Handle>> {
    static REG: OnceLock<Mutex<HashMap<usize, Handle>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Handle ids: never 0, never reused (a stale handle stays bad forever).
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A failure on its way to C: status and message.
#[derive(Debug)]
struct Fail(SmarttrimStatus, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(status_of(&e), e.to_string())
    }
}

fn fail(status: SmarttrimStatus, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

/// The status code of a library error.
pub fn status_of(e: &Error) -> SmarttrimStatus {
    use SmarttrimStatus as S;
    match e {
        Error::NoDriver => S::NoDriver,
        Error::NoDevice(_) => S::NoDevice,
        Error::KernelsNotBuilt(_) => S::KernelsNotBuilt,
        Error::Driver { .. }
        | Error::Blas { .. }
        | Error::MissingKernel { .. }
        | Error::UnknownModule(_) => S::CudaError,
        Error::InvalidArgument { .. } | Error::Input(_) => S::InvalidArgument,
        Error::Unsupported { .. } => S::Unsupported,
        Error::Config(_) | Error::Json { .. } => S::ConfigError,
        Error::Weights(_) | Error::Safetensors { .. } => S::WeightsError,
        Error::Io { .. } => S::IoError,
        // Not reachable through this API (tokenizers, pictures).
        Error::Tokenizer(_) | Error::Plot(_) => S::InvalidArgument,
    }
}

/// Runs `body` with panics caught; records the message of a failure.
fn guard(body: impl FnOnce() -> Result<(), Fail>) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown payload".into());
        Err(fail(
            SmarttrimStatus::Panic,
            format!("smarttrim panicked (a bug; please report it): {what}"),
        ))
    });
    match result {
        Ok(()) => SmarttrimStatus::Ok as c_int,
        Err(Fail(status, message)) => {
            LAST_ERROR.with(|m| *m.borrow_mut() = message);
            status as c_int
        }
    }
}

fn nonnull<T>(p: *const T, name: &str) -> Result<(), Fail> {
    if p.is_null() {
        Err(fail(
            SmarttrimStatus::NullPointer,
            format!("`{name}` is a null pointer"),
        ))
    } else {
        Ok(())
    }
}

/// Reads `len` elements the caller promises are readable at `p`.
///
/// # Safety
///
/// `p` must be non-null, aligned and valid for reads of `len` elements.
unsafe fn read_slice<'a, T>(p: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by this function's contract (the C caller's promise).
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// Writes one value to an out-pointer the caller promises is writable.
///
/// # Safety
///
/// `p` must be non-null, aligned and valid for a write of one `T`.
unsafe fn write_out<T>(p: *mut T, v: T) {
    // SAFETY: guaranteed by this function's contract.
    unsafe { p.write(v) }
}

/// A NUL-terminated UTF-8 path from C.
///
/// # Safety
///
/// `p` must be non-null and point to a NUL-terminated string.
unsafe fn c_path(p: *const c_char, name: &str) -> Result<String, Fail> {
    // SAFETY: guaranteed by this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(str::to_string).map_err(|_| {
        fail(
            SmarttrimStatus::InvalidArgument,
            format!("`{name}` is not valid UTF-8"),
        )
    })
}

fn handle_id(p: *const SmarttrimModel) -> usize {
    p as usize
}

fn lookup(p: *const SmarttrimModel) -> Result<Handle, Fail> {
    nonnull(p, "model")?;
    registry().get(&handle_id(p)).cloned().ok_or_else(|| {
        fail(
            SmarttrimStatus::BadHandle,
            format!("model handle {p:p} is not live (destroyed, or never created)"),
        )
    })
}

fn lock(h: &Handle) -> MutexGuard<'_, Live> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Loads a model: reads and validates the config (JSON, docs/FORMATS.md) and
/// the weights (safetensors), checks the kernels support it, opens GPU
/// `device_ordinal` (on its primary context, with a stream of the model's
/// own) and uploads the weights as f16. On success `*out` is a new handle
/// (free it with [`smarttrim_model_destroy`]); on failure `*out` is NULL.
///
/// Config, weights and support errors are reported before any driver call,
/// so they show up on a machine without a GPU too.
///
/// # Safety
///
/// `config_path` and `weights_path` must be NUL-terminated strings; `out`
/// must be writable. Null pointers are reported, not dereferenced.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_model_create(
    config_path: *const c_char,
    weights_path: *const c_char,
    device_ordinal: c_int,
    out: *mut *mut SmarttrimModel,
) -> c_int {
    guard(|| {
        nonnull(out, "out")?;
        // SAFETY: `out` is non-null and the caller promises it is writable.
        unsafe { write_out(out, std::ptr::null_mut()) };
        nonnull(config_path, "config_path")?;
        nonnull(weights_path, "weights_path")?;
        // SAFETY: non-null; the caller promises NUL-terminated strings.
        let (cp, wp) = unsafe {
            (
                c_path(config_path, "config_path")?,
                c_path(weights_path, "weights_path")?,
            )
        };
        let ordinal = ordinal_of(device_ordinal)?;
        let cfg = ModelConfig::from_file(&cp)?;
        let weights = Weights::load(&cfg, &wp)?;
        // SAFETY: `out` is non-null and writable (checked above).
        unsafe { register(cfg, weights, ordinal, out) }
    })
}

/// A C device ordinal as an index (negative is `INVALID_ARGUMENT`).
fn ordinal_of(device_ordinal: c_int) -> Result<usize, Fail> {
    usize::try_from(device_ordinal).map_err(|_| {
        fail(
            SmarttrimStatus::InvalidArgument,
            format!("device_ordinal = {device_ordinal}: must be >= 0"),
        )
    })
}

/// Checks the model is supported, uploads it to GPU `ordinal`, registers
/// it and writes its handle to `*out`.
///
/// # Safety
///
/// `out` must be non-null and writable.
unsafe fn register(
    cfg: ModelConfig,
    weights: Weights,
    ordinal: usize,
    out: *mut *mut SmarttrimModel,
) -> Result<(), Fail> {
    check_supported(&cfg)?;
    let dev = Device::open(ordinal)?;
    let model = GpuModel::new(&dev, &weights)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let live = Live {
        model,
        workspace: None,
        stats: None,
        device_pass: None,
    };
    registry().insert(id, Arc::new(Mutex::new(live)));
    // SAFETY: the caller's contract; the handle is an id, never dereferenced.
    unsafe { write_out(out, std::ptr::without_provenance_mut(id)) };
    Ok(())
}

/// [`smarttrim_model_create`] from memory: the config as JSON text
/// (`config_json`, `config_len` bytes, UTF-8, no NUL needed) and the weights
/// as a safetensors image (`weights`, `weights_len` bytes). Both are read
/// during the call only.
///
/// # Safety
///
/// `config_json` must be readable for `config_len` bytes, `weights` for
/// `weights_len` bytes; `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_model_create_from_memory(
    config_json: *const c_char,
    config_len: usize,
    weights: *const u8,
    weights_len: usize,
    device_ordinal: c_int,
    out: *mut *mut SmarttrimModel,
) -> c_int {
    guard(|| {
        nonnull(out, "out")?;
        // SAFETY: `out` is non-null and the caller promises it is writable.
        unsafe { write_out(out, std::ptr::null_mut()) };
        nonnull(config_json, "config_json")?;
        nonnull(weights, "weights")?;
        // SAFETY: non-null; the caller promises the lengths.
        let (cj, wb) = unsafe {
            (
                read_slice(config_json.cast::<u8>(), config_len),
                read_slice(weights, weights_len),
            )
        };
        let text = std::str::from_utf8(cj).map_err(|e| {
            fail(
                SmarttrimStatus::InvalidArgument,
                format!("config_json is not UTF-8: {e}"),
            )
        })?;
        let ordinal = ordinal_of(device_ordinal)?;
        let cfg = ModelConfig::from_json(text)?;
        let w = Weights::from_safetensors_bytes(&cfg, wb, "weights in memory")?;
        // SAFETY: `out` is non-null and writable (checked above).
        unsafe { register(cfg, w, ordinal, out) }
    })
}

/// Destroys a model: frees its device memory (once no other thread is inside
/// a call on it). NULL is `SMARTTRIM_STATUS_NULL_POINTER`; a handle already
/// destroyed is `SMARTTRIM_STATUS_BAD_HANDLE`.
#[no_mangle]
pub extern "C" fn smarttrim_model_destroy(model: *mut SmarttrimModel) -> c_int {
    guard(|| {
        nonnull(model, "model")?;
        let removed = registry().remove(&handle_id(model));
        match removed {
            // Dropped here, or by the last call still holding it.
            Some(h) => {
                drop(h);
                Ok(())
            }
            None => Err(fail(
                SmarttrimStatus::BadHandle,
                format!("model handle {model:p} is not live (already destroyed, or never created)"),
            )),
        }
    })
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

/// Runs one pruned forward pass of `batch` sequences.
///
/// - `stream`: the caller's `CUstream` (NULL: no ordering with the caller).
///   It must belong to the device's primary context (as CUDA runtime API
///   streams do). The pass runs on the model's own stream after the work
///   enqueued on `stream` so far; the call returns when the pass is done.
/// - `inputs`: `n_inputs` entries, one per config stream, in config order.
/// - `context`: a cross encoder's context rows (NULL for other models).
/// - `flags`: `SMARTTRIM_FORWARD_DENSE`, `SMARTTRIM_FORWARD_UPPER_BOUND`.
///
/// The workspace is allocated on the first pass and grown when a batch
/// needs more. Statistics: [`smarttrim_stats`].
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
            let cap = match &live.workspace {
                Some(ws) => merge(&ws.capacity, &need),
                None => need,
            };
            live.workspace = None;
            let ws = Workspace::new(&live.model, cap)?;
            live.workspace = Some(ws);
        }
        if !stream.is_null() {
            let ctx = live.model.device().context().clone();
            // SAFETY: the caller promises `stream` is a live CUstream of this
            // device's context and keeps it alive during the call; the
            // wrapper is borrowed (never destroys it) and dropped before
            // returning.
            let theirs = unsafe { ctx.wrap_borrowed_stream(stream.cast()) };
            live.model
                .device()
                .stream()
                .join(&theirs)
                .map_err(|e| Error::driver("ordering after the caller's stream", e))?;
        }
        let opts = options(flags);
        let Live {
            model,
            workspace,
            stats,
            device_pass,
        } = &mut *live;
        let ws = workspace.as_mut().expect("allocated above");
        *stats = None;
        *device_pass = None;
        let out = model.forward(ws, &inputs, &opts)?;
        *stats = Some(collect_stats(&out.stats(), batch));
        Ok(())
    })
}

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

/// Allocates the model's workspace now, for batches of up to `max_batch`
/// sequences and per config stream sequences of up to
/// `max_seqlen_per_stream[s]` rows (a cross encoder: one more entry, its
/// context's), replacing any earlier one. [`smarttrim_forward_device`]
/// needs it (it allocates nothing); [`smarttrim_forward`] grows it on
/// demand. The bytes are [`smarttrim_model_workspace_bytes`] plus the
/// cuBLASLt workspace (32 MiB on Hopper).
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
        live.workspace = None;
        live.device_pass = None;
        let ws = Workspace::new(&live.model, cap)?;
        live.workspace = Some(ws);
        Ok(())
    })
}

/// A wrapped device input: rows, device `cu_seqlens`, host `cu_seqlens`.
type DeviceInputParts<'a> = (
    crate::device::ForeignSlice<half::f16>,
    crate::device::ForeignSlice<i32>,
    &'a [i32],
);

/// Makes the model's workspace out of device memory the caller owns:
/// `bytes` at `ptr` (a `CUdeviceptr` of the model's context, 256-byte
/// aligned, at least [`smarttrim_model_workspace_bytes`] for this capacity),
/// for batches of up to `max_batch` sequences and the given longest
/// sequences (as [`smarttrim_model_reserve`]), replacing any earlier
/// workspace. The memory is zero-filled here and never freed by smarttrim;
/// only the cuBLASLt workspace (32 MiB on Hopper) is allocated. Passes then
/// allocate nothing ([`smarttrim_forward_device`]).
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
        live.workspace = None;
        live.device_pass = None;
        let dev = live.model.device();
        // SAFETY: the caller's contract above; the wrapper never frees it.
        let mem = unsafe { crate::device::ForeignSlice::<u8>::new(dev, ptr, bytes) };
        let ws = Workspace::in_memory(&live.model, cap, mem)?;
        live.workspace = Some(ws);
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
unsafe fn read_capacity(
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
/// ready in stream order. Works inside the caller's stream capture (the
/// pass must then have no inner wait).
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
        let Live {
            model,
            workspace,
            stats,
            device_pass,
        } = &mut *live;
        let ws = workspace.as_mut().expect("checked above");
        *stats = None;
        *device_pass = None;
        let pass = model.forward_device(
            dev.stream(),
            ws,
            &dins,
            dctx.as_ref(),
            &mut douts,
            &options(flags),
        )?;
        *device_pass = Some((pass, stream as usize));
        Ok(())
    })
}

fn embeddings_of(m: &GpuModel) -> &[crate::spec::EmbeddingWeights] {
    &m.embeddings
}

fn fits(have: &Capacity, need: &Capacity) -> bool {
    need.max_batch <= have.max_batch
        && need
            .max_seqlen
            .iter()
            .zip(&have.max_seqlen)
            .all(|(n, h)| n <= h)
        && need.context_max_seqlen <= have.context_max_seqlen
}

fn merge(a: &Capacity, b: &Capacity) -> Capacity {
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

fn collect_stats(per_layer: &[Vec<crate::pass::LayerStats>], batch: usize) -> Stats {
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
                let ws = live
                    .workspace
                    .as_ref()
                    .expect("a device pass had a workspace");
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

/// Copies the message of this thread's most recent failing call into `buf`
/// (`len` bytes, NUL included; truncated on a UTF-8 boundary; empty when no
/// call has failed on this thread).
///
/// # Safety
///
/// `buf` must be writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_last_error_message(buf: *mut c_char, len: usize) -> c_int {
    // Not through `guard`: a failure here must not replace the message.
    let r = catch_unwind(AssertUnwindSafe(|| {
        if buf.is_null() {
            return SmarttrimStatus::NullPointer;
        }
        if len == 0 {
            return SmarttrimStatus::InvalidArgument;
        }
        LAST_ERROR.with(|m| {
            let m = m.borrow();
            let mut n = m.len().min(len - 1);
            while !m.is_char_boundary(n) {
                n -= 1;
            }
            // SAFETY: `buf` is non-null and writable for `len > n` bytes; the
            // source is our own string.
            unsafe {
                std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast::<u8>(), n);
                buf.add(n).write(0);
            }
        });
        SmarttrimStatus::Ok
    }));
    r.unwrap_or(SmarttrimStatus::Panic) as c_int
}
