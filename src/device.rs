//! CUDA device runtime: context, stream, lazily loaded kernel modules.
//!
//! Nothing here panics on a machine without a GPU: [`driver_available`] checks
//! for libcuda before the first driver call (cudarc's dynamic loading would
//! otherwise panic), and [`device_count`] reports zero devices as
//! [`Error::NoDevice`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::kernels::{self, ModuleSource};
use crate::{Error, Result};

/// Checks that the CUDA driver library can be loaded. Call before any driver
/// call; every constructor in this module does.
pub fn driver_available() -> Result<()> {
    // SAFETY: `is_culib_present` only tries to dlopen libcuda by its usual
    // names and drops the handle; it calls no CUDA function.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::NoDriver)
    }
}

/// The number of CUDA devices the driver reports. `Err(NoDriver)` without
/// libcuda; `Ok(0)` is possible (use [`Device::open`] to get `NoDevice`).
pub fn device_count() -> Result<usize> {
    driver_available()?;
    cudarc::driver::result::init().map_err(|e| Error::driver("cuInit", e))?;
    let n = CudaContext::device_count().map_err(|e| Error::driver("cuDeviceGetCount", e))?;
    Ok(n.max(0) as usize)
}

/// The CUDA driver's version as `(major, minor)`, e.g. `(13, 0)`.
pub fn driver_version() -> Result<(i32, i32)> {
    driver_available()?;
    let mut v: std::ffi::c_int = 0;
    // SAFETY: the driver library is present (checked above) and the out
    // pointer is a valid, live c_int.
    let status = unsafe { sys::cuDriverGetVersion(&mut v) };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(Error::driver(
            "cuDriverGetVersion",
            cudarc::driver::DriverError(status),
        ));
    }
    Ok((v / 1000, (v % 1000) / 10))
}

/// The name the CPU-emulated CUDA device reports (`emu/`, test equipment
/// that runs the kernels on the CPU; it checks correctness and never gives
/// timings).
pub const EMULATED_DEVICE_NAME: &str = "smarttrim emulated device (CPU)";

/// What a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. "NVIDIA H200".
    pub name: String,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (i32, i32),
    /// Total device memory, bytes.
    pub total_memory: usize,
    /// Free device memory at the time of the query, bytes.
    pub free_memory: usize,
    /// Driver version `(major, minor)`.
    pub driver_version: (i32, i32),
    /// The embedded PTX target this device runs.
    pub ptx_target: Option<&'static str>,
    /// Whether this is the CPU-emulated device ([`EMULATED_DEVICE_NAME`]):
    /// results are checked there, times mean nothing.
    pub emulated: bool,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} {} (compute {}.{}), {:.1} GiB total, {:.1} GiB free, driver {}.{}, kernels: {}",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64,
            self.free_memory as f64 / (1u64 << 30) as f64,
            self.driver_version.0,
            self.driver_version.1,
            self.ptx_target.unwrap_or("none"),
        )?;
        if self.emulated {
            write!(f, " [emulated on the CPU: correctness only, no timings]")?;
        }
        Ok(())
    }
}

/// Whether a [`Device`]'s stream was created by it or handed in by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOwnership {
    /// Created by smarttrim (destroyed when the last handle goes).
    Owned,
    /// Supplied by the caller; smarttrim never destroys or synchronizes the
    /// whole device on its behalf.
    Borrowed,
}

/// A CUDA context, the stream smarttrim enqueues on, and a cache of the
/// kernel modules and functions loaded so far (modules load on first use).
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ownership: StreamOwnership,
    cc: (i32, i32),
    emulated: bool,
    cache: Arc<ModuleCache>,
}

/// Loaded modules and functions, shared by every [`Device`] view of one
/// context ([`Device::on_stream`]) so a module loads once per context.
#[derive(Default)]
struct ModuleCache {
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ordinal", &self.ctx.ordinal())
            .field("compute_capability", &self.cc)
            .field("emulated", &self.emulated)
            .field("stream", &self.ownership)
            .finish()
    }
}

impl Device {
    /// Opens device `ordinal` on its primary context (shared with any other
    /// runtime API user in the process) with a new stream of its own.
    pub fn open(ordinal: usize) -> Result<Self> {
        let n = device_count()?;
        if n == 0 {
            return Err(Error::NoDevice(
                "the driver reports no CUDA devices on this machine".into(),
            ));
        }
        if ordinal >= n {
            return Err(Error::NoDevice(format!(
                "device {ordinal} asked for, but only {n} device(s) present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::driver(format!("opening device {ordinal}"), e))?;
        Self::on_context(ctx)
    }

    /// Uses an existing context (for example one the caller's CUDA stack
    /// created) with a new stream of its own.
    pub fn on_context(ctx: Arc<CudaContext>) -> Result<Self> {
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::driver("creating a stream", e))?;
        Self::build(ctx, stream, StreamOwnership::Owned)
    }

    /// Uses an existing context and a stream the caller owns; all work is
    /// enqueued on that stream, ordered with the caller's own work on it.
    pub fn with_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context().clone();
        Self::build(ctx, stream, StreamOwnership::Borrowed)
    }

    fn build(
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        ownership: StreamOwnership,
    ) -> Result<Self> {
        let cc = ctx
            .compute_capability()
            .map_err(|e| Error::driver("querying the compute capability", e))?;
        let emulated = ctx
            .name()
            .map_err(|e| Error::driver("cuDeviceGetName", e))?
            == EMULATED_DEVICE_NAME;
        Ok(Device {
            ctx,
            stream,
            ownership,
            cc,
            emulated,
            cache: Arc::new(ModuleCache::default()),
        })
    }

    /// The same context and module cache with work going to `stream` (a
    /// stream of this device's context — the same `CUcontext`, e.g. the
    /// device's primary context through another `CudaContext` handle —
    /// typically the caller's, borrowed). Costs no driver call; modules
    /// already loaded stay loaded.
    pub fn on_stream(&self, stream: Arc<CudaStream>) -> Result<Self> {
        if **stream.context() != *self.ctx {
            return Err(Error::invalid(
                "Device::on_stream",
                "the stream belongs to a different CUDA context",
            ));
        }
        Ok(Device {
            ctx: self.ctx.clone(),
            stream,
            ownership: StreamOwnership::Borrowed,
            cc: self.cc,
            emulated: self.emulated,
            cache: self.cache.clone(),
        })
    }

    /// Runs `f` (which allocates device buffers) with cudarc's per-buffer
    /// event tracking switched off, so the buffers carry no read/write
    /// events. smarttrim orders all use of its own buffers by stream order
    /// (and explicit events where it changes streams), and events recorded
    /// outside a CUDA-graph capture must not be waited on inside one.
    ///
    /// cudarc's switch belongs to the `CudaContext` object (every clone of
    /// its `Arc`), not to the driver's context: two objects opened on one
    /// device switch separately. Overlapping calls (nested, or on several
    /// threads) share one scope per object: the first to enter switches
    /// tracking off, the last to leave restores what was there before the
    /// first (also when `f` panics). Buffers another thread allocates
    /// through the same object directly while a scope is open are
    /// untracked too.
    pub(crate) fn untracked<T>(&self, f: impl FnOnce() -> T) -> T {
        let _scope = UntrackedScope::enter(&self.ctx);
        f()
    }

    /// Runs `f` with cudarc's per-buffer event tracking off on this
    /// device's context, for buffers of the caller's that will be used
    /// inside a CUDA-graph capture (where an event recorded outside the
    /// capture cannot be waited on) or handed to
    /// [`crate::model::GpuModel::forward_device`]. It shares the scope
    /// smarttrim allocates its own buffers in, so the two never switch
    /// tracking back on under each other; call this instead of cudarc's
    /// `disable_event_tracking` / `enable_event_tracking` when smarttrim
    /// runs on other threads of the process.
    ///
    /// # Safety
    ///
    /// Buffers created inside carry no ordering events: the caller orders
    /// every use of them across streams itself (cudarc's
    /// `disable_event_tracking` contract).
    pub unsafe fn without_event_tracking<T>(&self, f: impl FnOnce() -> T) -> T {
        self.untracked(f)
    }

    /// Whether the stream is being captured into a CUDA graph.
    pub fn is_capturing(&self) -> Result<bool> {
        let st = self
            .stream
            .capture_status()
            .map_err(|e| Error::driver("cuStreamIsCapturing", e))?;
        Ok(st != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all of smarttrim's work on this device is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether the stream is smarttrim's own or the caller's.
    pub fn stream_ownership(&self) -> StreamOwnership {
        self.ownership
    }

    /// Compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// Whether this is the CPU-emulated device (`emu/`): it runs every
    /// kernel and checks launches, barriers and memory, but its times mean
    /// nothing, so benchmarks refuse to run on it.
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    /// An error for timing work asked of the emulated device (`what` names
    /// it), or `Ok` on a real GPU.
    pub fn refuse_timing(&self, what: &str) -> Result<()> {
        if self.emulated {
            Err(Error::Unsupported {
                op: "timing",
                message: format!(
                    "{what}: the device is the CPU emulator ({EMULATED_DEVICE_NAME}), which \
                     checks correctness but gives no meaningful times; run it on a real GPU"
                ),
            })
        } else {
            Ok(())
        }
    }

    /// Name, compute capability, memory and driver version.
    pub fn info(&self) -> Result<DeviceInfo> {
        let name = self
            .ctx
            .name()
            .map_err(|e| Error::driver("cuDeviceGetName", e))?;
        let total_memory = self
            .ctx
            .total_mem()
            .map_err(|e| Error::driver("cuDeviceTotalMem", e))?;
        let (free_memory, _) = self
            .ctx
            .mem_get_info()
            .map_err(|e| Error::driver("cuMemGetInfo", e))?;
        let ptx_target = kernels::module_names()
            .first()
            .and_then(|m| kernels::select(m, self.cc).ok())
            .map(|m| m.target);
        Ok(DeviceInfo {
            ordinal: self.ctx.ordinal(),
            name,
            compute_capability: self.cc,
            total_memory,
            free_memory,
            driver_version: driver_version()?,
            ptx_target,
            emulated: self.emulated,
        })
    }

    /// Blocks until all work enqueued on this device's stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| Error::driver("stream synchronize", e))
    }

    /// The embedded module source this device would load for `module`.
    pub fn module_source(&self, module: &str) -> Result<&'static ModuleSource> {
        kernels::select(module, self.cc)
    }

    /// Loads (once) the module `module` and returns its kernel `name`.
    /// A name the module lacks gives [`Error::MissingKernel`].
    pub fn function(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let src = self.module_source(module)?;
        let key = (src.name, name.to_string());
        if let Some(f) = lock(&self.cache.functions).get(&key) {
            return Ok(f.clone());
        }
        let m = self.module(src)?;
        if !kernels::ptx_entries(src.ptx).iter().any(|e| e == name) {
            return Err(Error::MissingKernel {
                module: src.name.to_string(),
                name: name.to_string(),
            });
        }
        let f = m.load_function(name).map_err(|_| Error::MissingKernel {
            module: src.name.to_string(),
            name: name.to_string(),
        })?;
        lock(&self.cache.functions).insert(key, f.clone());
        Ok(f)
    }

    /// Loads every embedded kernel module and resolves all their kernels
    /// now (a no-op for those already loaded), so that no later launch on
    /// this device's context — from any [`Device::on_stream`] view — loads a
    /// module. Loading a module is not allowed inside a CUDA-graph capture:
    /// call this (or create a [`crate::model::GpuModel`], which does) before
    /// capturing smarttrim's work into a graph of your own.
    pub fn load_all_modules(&self) -> Result<()> {
        for name in kernels::module_names() {
            let src = self.module_source(name)?;
            for entry in kernels::ptx_entries(src.ptx) {
                self.function(name, &entry)?;
            }
        }
        Ok(())
    }

    /// The loaded module of `src` (loading it on first use).
    fn module(&self, src: &'static ModuleSource) -> Result<Arc<CudaModule>> {
        let mut modules = lock(&self.cache.modules);
        if let Some(m) = modules.get(src.name) {
            return Ok(m.clone());
        }
        let m = self.ctx.load_module(Ptx::from_src(src.ptx)).map_err(|e| {
            Error::driver(
                format!("loading PTX module `{}` ({})", src.name, src.target),
                e,
            )
        })?;
        modules.insert(src.name, m.clone());
        Ok(m)
    }

    /// Checks for a launch error cudarc recorded, without waiting.
    ///
    /// A kernel that faults while it runs is reported by the next call that
    /// waits on its stream (a pass's result fetch, a synchronize), as on any
    /// CUDA stream. To attribute a fault to the launch that caused it while
    /// debugging, set `SMARTTRIM_SYNC_EACH_LAUNCH=1`: every launch is then
    /// followed by a stream synchronize (except while the stream is being
    /// captured into a CUDA graph, where a wait is illegal). That is a
    /// debugging aid only: it adds a host wait per launch, which no pass
    /// otherwise has.
    pub fn check_launch(&self, what: &str) -> Result<()> {
        if sync_each_launch() && !self.is_capturing()? {
            self.stream
                .synchronize()
                .map_err(|e| Error::driver(format!("after launching {what}"), e))?;
        }
        self.ctx
            .check_err()
            .map_err(|e| Error::driver(format!("after launching {what}"), e))
    }
}

/// Whether `SMARTTRIM_SYNC_EACH_LAUNCH=1` asks for a synchronize after every
/// launch ([`Device::check_launch`]). Read once.
fn sync_each_launch() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("SMARTTRIM_SYNC_EACH_LAUNCH").is_ok_and(|v| v == "1" || v == "true")
    })
}

/// One open [`Device::untracked`] scope of a context (see there).
struct UntrackedScope {
    ctx: Arc<CudaContext>,
}

/// Per `CudaContext` object (its address: cudarc keeps the tracking switch
/// in the object, and two objects opened on one device's primary context
/// switch separately): open scopes, and whether tracking was on before the
/// first.
fn untracked_scopes() -> &'static Mutex<HashMap<usize, (usize, bool)>> {
    static SCOPES: std::sync::OnceLock<Mutex<HashMap<usize, (usize, bool)>>> =
        std::sync::OnceLock::new();
    SCOPES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl UntrackedScope {
    fn enter(ctx: &Arc<CudaContext>) -> Self {
        let mut scopes = lock(untracked_scopes());
        let e = scopes
            .entry(Arc::as_ptr(ctx) as usize)
            .or_insert((0, false));
        if e.0 == 0 {
            e.1 = ctx.is_event_tracking();
            // SAFETY: turning tracking off only stops cudarc from recording
            // ordering events on buffers created meanwhile; smarttrim orders
            // every use of those buffers itself (module docs of crate::model).
            unsafe { ctx.disable_event_tracking() };
        }
        e.0 += 1;
        UntrackedScope { ctx: ctx.clone() }
    }
}

impl Drop for UntrackedScope {
    fn drop(&mut self) {
        let mut scopes = lock(untracked_scopes());
        let key = Arc::as_ptr(&self.ctx) as usize;
        if let Some(e) = scopes.get_mut(&key) {
            e.0 -= 1;
            if e.0 == 0 {
                if e.1 {
                    // SAFETY: restores the setting the first scope found.
                    unsafe { self.ctx.enable_event_tracking() };
                }
                scopes.remove(&key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned cache only means another thread panicked mid-insert; the map
    // itself is still consistent (inserts are single calls).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A caller-owned device allocation seen as a [`cudarc::driver::CudaSlice`]
/// (for interop: buffers of another CUDA library, or raw `CUdeviceptr`s
/// from C). smarttrim never frees it: dropping the wrapper only forgets the
/// pointer. It carries no cudarc ordering events; the caller orders its own
/// use of the memory with the stream smarttrim runs on (typically by using
/// that same stream).
pub struct ForeignSlice<T> {
    slice: std::mem::ManuallyDrop<cudarc::driver::CudaSlice<T>>,
}

impl<T> ForeignSlice<T> {
    /// Wraps `len` elements of type `T` at device address `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be a device allocation (or part of one) of `dev`'s context
    /// holding at least `len * size_of::<T>()` bytes, aligned for `T`, valid
    /// for `T` where read, and it must stay allocated, and not be used by
    /// other work concurrently with smarttrim's, for as long as the wrapper
    /// and any work smarttrim enqueued on it live.
    pub unsafe fn new(dev: &Device, ptr: sys::CUdeviceptr, len: usize) -> Self {
        // SAFETY: forwarded to the caller's contract above; created without
        // events so nothing but the pointer is attached.
        let slice = dev.untracked(|| unsafe { dev.stream().upgrade_device_ptr::<T>(ptr, len) });
        ForeignSlice {
            slice: std::mem::ManuallyDrop::new(slice),
        }
    }
}

impl<T> std::ops::Deref for ForeignSlice<T> {
    type Target = cudarc::driver::CudaSlice<T>;
    fn deref(&self) -> &Self::Target {
        &self.slice
    }
}

impl<T> std::ops::DerefMut for ForeignSlice<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.slice
    }
}

impl<T> Drop for ForeignSlice<T> {
    fn drop(&mut self) {
        // SAFETY: `slice` is taken exactly once, here, and never used again.
        let s = unsafe { std::mem::ManuallyDrop::take(&mut self.slice) };
        // Forget the pointer instead of freeing the caller's memory.
        let _ = s.leak();
    }
}

/// Pins `counters` to the CUDA graph being captured on `stream`, if it is
/// being captured: each counter goes up by one now and down by one when the
/// driver destroys the graph and every executable graph made from it (a CUDA
/// user object owned by the graph). Returns whether a capture was active.
///
/// smarttrim uses it so that a caller's graph recording a pass keeps the
/// model's and workspace's memory from being freed or replaced
/// ([`crate::model::Workspace::graph_pins`]).
pub(crate) fn pin_to_capture(
    stream: &CudaStream,
    counters: Vec<Arc<std::sync::atomic::AtomicUsize>>,
) -> Result<bool> {
    use std::sync::atomic::Ordering;
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    let mut id: sys::cuuint64_t = 0;
    let mut graph: sys::CUgraph = std::ptr::null_mut();
    let mut deps: *const sys::CUgraphNode = std::ptr::null();
    let mut edges: *const sys::CUgraphEdgeData = std::ptr::null();
    let mut ndeps: usize = 0;
    // SAFETY: a live stream of a live context; every out pointer is a valid
    // local.
    unsafe {
        sys::cuStreamGetCaptureInfo_v3(
            stream.cu_stream(),
            &mut status,
            &mut id,
            &mut graph,
            &mut deps,
            &mut edges,
            &mut ndeps,
        )
    }
    .result()
    .map_err(|e| Error::driver("cuStreamGetCaptureInfo", e))?;
    if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE || graph.is_null() {
        return Ok(false);
    }
    for c in &counters {
        c.fetch_add(1, Ordering::AcqRel);
    }
    let data = Box::into_raw(Box::new(counters)).cast::<std::ffi::c_void>();
    let mut obj: sys::CUuserObject = std::ptr::null_mut();
    // SAFETY: `data` is a leaked Box that `unpin` reclaims exactly once, when
    // the driver destroys the object; `unpin` calls no CUDA function.
    let created = unsafe {
        sys::cuUserObjectCreate(
            &mut obj,
            data,
            Some(unpin),
            1,
            sys::CUuserObject_flags::CU_USER_OBJECT_NO_DESTRUCTOR_SYNC as u32,
        )
    }
    .result();
    if let Err(e) = created {
        // SAFETY: the object was not created: `data` is still ours.
        unsafe { unpin(data) };
        return Err(Error::driver("cuUserObjectCreate", e));
    }
    // SAFETY: `graph` is the capture's graph (live while the capture is);
    // MOVE hands the object's one reference to it.
    let retained = unsafe {
        sys::cuGraphRetainUserObject(
            graph,
            obj,
            1,
            sys::CUuserObjectRetain_flags::CU_GRAPH_USER_OBJECT_MOVE as u32,
        )
    }
    .result();
    if let Err(e) = retained {
        // SAFETY: the reference is still ours; releasing it runs `unpin`.
        let _ = unsafe { sys::cuUserObjectRelease(obj, 1) };
        return Err(Error::driver("cuGraphRetainUserObject", e));
    }
    Ok(true)
}

/// The pins `pins` counts once the driver has caught up: it releases a
/// destroyed graph's user objects on an internal thread, shortly after the
/// destroy returns, so a count above zero is waited on for up to 200 ms.
pub(crate) fn settled_pins(pins: &std::sync::atomic::AtomicUsize) -> usize {
    use std::sync::atomic::Ordering;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while pins.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    pins.load(Ordering::Acquire)
}

/// The destructor of [`pin_to_capture`]'s user object.
unsafe extern "C" fn unpin(data: *mut std::ffi::c_void) {
    // SAFETY: `data` came from Box::into_raw in pin_to_capture and the
    // driver calls the destructor once.
    let counters =
        unsafe { Box::from_raw(data.cast::<Vec<Arc<std::sync::atomic::AtomicUsize>>>()) };
    for c in counters.iter() {
        c.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
