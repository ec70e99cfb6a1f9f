//! Model handles: the opaque [`SmarttrimModel`], the registry of live
//! handles behind it, and their lifecycle (create from files or memory,
//! destroy).

use std::collections::HashMap;
use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::*;
use crate::device::Device;
use crate::model::{check_supported, GpuModel, Workspace};
use crate::spec::{ModelConfig, Weights};

/// An opaque model handle (`smarttrim_model` in C): a config, its weights on
/// one GPU, a workspace grown on demand, and the last pass's statistics.
pub struct SmarttrimModel {
    _opaque: [u8; 0],
}

pub(super) struct Live {
    pub(super) model: GpuModel,
    pub(super) workspace: Option<Workspace>,
    pub(super) stats: Option<Stats>,
    /// The last device-pointer pass and its stream (statistics are fetched
    /// from the device when asked for).
    pub(super) device_pass: Option<(crate::model::DevicePass, usize)>,
}

impl Live {
    /// Starts a pass: the model and its workspace (`INVALID_ARGUMENT`
    /// without a workspace, the last statistics kept); the last pass's
    /// statistics are then forgotten (a failing pass leaves none).
    pub(super) fn begin_pass(&mut self) -> Result<(&GpuModel, &mut Workspace), Fail> {
        let ws = self
            .workspace
            .as_mut()
            .ok_or_else(|| fail(SmarttrimStatus::InvalidArgument, "no workspace"))?;
        self.stats = None;
        self.device_pass = None;
        Ok((&self.model, ws))
    }
}

pub(super) type Handle = Arc<Mutex<Live>>;

fn registry() -> MutexGuard<'static, HashMap<usize, Handle>> {
    static REG: OnceLock<Mutex<HashMap<usize, Handle>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Handle ids: never 0, never reused (a stale handle stays bad forever).
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn handle_id(p: *const SmarttrimModel) -> usize {
    p as usize
}

pub(super) fn lookup(p: *const SmarttrimModel) -> Result<Handle, Fail> {
    nonnull(p, "model")?;
    registry().get(&handle_id(p)).cloned().ok_or_else(|| {
        fail(
            SmarttrimStatus::BadHandle,
            format!("model handle {p:p} is not live (destroyed, or never created)"),
        )
    })
}

pub(super) fn lock(h: &Handle) -> MutexGuard<'_, Live> {
    h.lock().unwrap_or_else(|p| p.into_inner())
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
/// a call on it, and after the last pass enqueued on it, in stream order).
/// NULL is `SMARTTRIM_STATUS_NULL_POINTER`; a handle already destroyed is
/// `SMARTTRIM_STATUS_BAD_HANDLE`. While a CUDA graph the caller recorded with
/// [`smarttrim_forward_device`] still exists (it or any executable graph
/// made from it), destroying is refused with
/// `SMARTTRIM_STATUS_INVALID_ARGUMENT` and the handle stays live; should a
/// graph be recorded on another thread meanwhile, the memory it uses is
/// leaked rather than freed.
#[no_mangle]
pub extern "C" fn smarttrim_model_destroy(model: *mut SmarttrimModel) -> c_int {
    guard(|| {
        nonnull(model, "model")?;
        // A caller's graph still using the model keeps the handle alive.
        if let Some(h) = registry().get(&handle_id(model)).cloned() {
            super::workspace::check_unpinned(&lock(&h), "smarttrim_model_destroy")?;
        }
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
