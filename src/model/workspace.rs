//! Device buffers of a forward pass, allocated once per model and capacity:
//! [`Workspace`] allocates exactly the buffers its [`WorkspaceLayout`]
//! names (module `layout`), or carves them from the caller's memory.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use half::f16;

use super::layout::{align_up, stage_capacity, Capacity, WorkspaceLayout, ARENA_ALIGN, OP};
use super::weights::GpuModel;
use crate::device::ForeignSlice;
use crate::ops::BlasWorkspace;
use crate::{Error, Result};

/// One stream's device buffers (see [`StreamLayout::buffers`]).
pub(crate) struct StreamWs {
    pub(crate) x: [CudaSlice<f16>; 2],
    pub(crate) cu: [CudaSlice<i32>; 2],
    pub(crate) orig: [CudaSlice<i32>; 2],
    pub(crate) a: CudaSlice<f16>,
    pub(crate) h: CudaSlice<f16>,
    pub(crate) t: CudaSlice<f16>,
    pub(crate) ctx: CudaSlice<f16>,
    pub(crate) q: CudaSlice<f16>,
    pub(crate) qkv: CudaSlice<f16>,
    pub(crate) ffn: CudaSlice<f16>,
    pub(crate) kv: CudaSlice<f16>,
    pub(crate) u: CudaSlice<f16>,
    pub(crate) uy: CudaSlice<f16>,
    pub(crate) g_self: CudaSlice<f32>,
    pub(crate) g_cross: CudaSlice<f32>,
    pub(crate) context: CudaSlice<f32>,
    pub(crate) flags: CudaSlice<u8>,
    pub(crate) scratch: CudaSlice<i32>,
    pub(crate) pairs_self: CudaSlice<i32>,
    pub(crate) pairs_cross: CudaSlice<i32>,
    pub(crate) count_self: CudaSlice<i32>,
    pub(crate) count_cross: CudaSlice<i32>,
    pub(crate) ones: CudaSlice<u8>,
    pub(crate) all_pairs: CudaSlice<i32>,
    pub(crate) all_count: CudaSlice<i32>,
    pub(crate) pooled_first: CudaSlice<f16>,
    pub(crate) pooled_mean: CudaSlice<f32>,
    pub(crate) score_log: CudaSlice<f32>,
    pub(crate) keep_log: CudaSlice<u8>,
    pub(crate) logit_log: CudaSlice<f32>,
    pub(crate) mask_log: CudaSlice<u8>,
    pub(crate) ids: CudaSlice<u32>,
    pub(crate) type_ids: CudaSlice<u32>,
    pub(crate) pixels: CudaSlice<f32>,
    pub(crate) patches: CudaSlice<f16>,
    pub(crate) patch_out: CudaSlice<f16>,
    pub(crate) src: CudaSlice<f16>,
    pub(crate) pooler: CudaSlice<f16>,
}

/// A task head's device buffers ([`HeadLayout`]).
pub(crate) struct HeadWs {
    pub(crate) features: CudaSlice<f16>,
    pub(crate) h1: CudaSlice<f16>,
    pub(crate) h2: CudaSlice<f16>,
    pub(crate) logits: CudaSlice<f16>,
}

impl HeadWs {
    fn forget(self) {
        for b in [self.features, self.h1, self.h2, self.logits] {
            b.leak();
        }
    }
}

/// Every device buffer a forward pass of one model needs, up to a
/// [`Capacity`]; reused by every pass (no device allocation inside a pass).
pub struct Workspace {
    pub(crate) capacity: Capacity,
    pub(crate) layout: WorkspaceLayout,
    pub(crate) streams: Vec<StreamWs>,
    pub(crate) context_rows: ManuallyDrop<CudaSlice<f16>>,
    pub(crate) context_cu: ManuallyDrop<CudaSlice<i32>>,
    pub(crate) totals: ManuallyDrop<CudaSlice<i32>>,
    pub(crate) stats: ManuallyDrop<CudaSlice<i32>>,
    /// The buffers above live in memory the caller owns
    /// ([`Workspace::in_memory`]): dropping the workspace forgets them
    /// instead of freeing them.
    pub(crate) foreign: bool,
    /// Keeps the caller's memory region named while the workspace lives.
    pub(crate) arena: Option<ForeignSlice<u8>>,
    /// The cuBLASLt workspace (leaked instead of freed while pinned).
    pub(crate) blas: ManuallyDrop<BlasWorkspace>,
    /// Timing events recorded around each pass's device work.
    pub(crate) events: (cudarc::driver::CudaEvent, cudarc::driver::CudaEvent),
    /// Captured passes, most recently used last (see [`crate::model`]).
    pub(crate) graphs: Vec<(GraphKey, GraphEntry)>,
    /// A task head's buffers, if the model has one.
    pub(crate) head: Option<HeadWs>,
    /// A whole model's stages' workspaces (empty for a basic model).
    pub(crate) stages: Vec<Workspace>,
    /// The workspace's own stream: [`GpuModel::forward`] runs there, and
    /// every CUDA graph of the workspace is captured there (a private stream:
    /// no other thread's work can land in the capture).
    pub(crate) stream: Arc<CudaStream>,
    /// The stream the buffers were allocated on (the model's): their frees
    /// are enqueued there.
    pub(crate) alloc_stream: Arc<CudaStream>,
    /// Recorded at the end of every pass (also one that failed midway) on
    /// the stream it ran on; the next pass on any stream, and the frees of
    /// the buffers, are ordered after it ([`PassScope`]).
    pub(crate) last_use: Arc<CudaEvent>,
    /// Whether `last_use` has been recorded.
    pub(crate) used: bool,
    /// CUDA graphs of the caller's (recorded with
    /// [`GpuModel::forward_device`] inside the caller's capture) that still
    /// hold this workspace's buffer addresses.
    pub(crate) pins: Arc<AtomicUsize>,
}

/// At most this many captured graphs are kept per workspace; the least
/// recently used one goes first.
pub const MAX_GRAPHS: usize = 16;

/// What a captured pass depends on besides buffer contents: the model (its
/// weight pointers), the mode and every sequence length (launch sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphKey {
    pub(crate) model: u64,
    pub(crate) dense: bool,
    pub(crate) sync: super::SyncPolicy,
    pub(crate) lengths: Vec<Vec<i32>>,
    pub(crate) context: Option<super::forward::ContextShape>,
    pub(crate) sources: Vec<super::forward::Source>,
}

/// A captured pass and the host-side state it ends in (which buffers hold
/// the results, row bounds, which pruners ran).
pub(crate) struct GraphEntry {
    pub(crate) graph: cudarc::driver::CudaGraph,
    pub(crate) end: super::forward::PassEnd,
}

// SAFETY: CUDA graph objects may be used from any thread as long as calls on
// one graph are serialised (CUDA driver docs, "Graph object thread safety");
// a `GraphEntry` lives in a `Workspace`, which passes use through `&mut`, so
// one thread at a time touches it. It is deliberately not `Sync`.
unsafe impl Send for GraphEntry {}

impl Workspace {
    /// CUDA graphs of the caller's that still refer to this workspace: each
    /// [`GpuModel::forward_device`] recorded inside the caller's stream
    /// capture pins the workspace (and the model) to that graph until the
    /// graph and every executable graph instantiated from it are destroyed
    /// (the driver tells smarttrim through a CUDA user object, on its own
    /// thread, a moment after the destroy). Dropping a pinned workspace
    /// waits up to 200 ms for that, then leaks its device memory rather
    /// than free addresses a graph may still write.
    pub fn graph_pins(&self) -> usize {
        self.pins.load(Ordering::Acquire)
    }

    /// Number of CUDA graphs currently cached (a whole model's: one per
    /// stage and shape).
    pub fn cached_graphs(&self) -> usize {
        self.graphs.len() + self.stages.iter().map(|s| s.cached_graphs()).sum::<usize>()
    }

    /// Drops every cached CUDA graph (they are re-captured on demand).
    pub fn clear_graphs(&mut self) {
        self.graphs.clear();
        for s in &mut self.stages {
            s.clear_graphs();
        }
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("capacity", &self.capacity)
            .field("bytes", &self.layout.bytes())
            .finish()
    }
}

/// Where one buffer comes from: a fresh allocation of `n` elements, or a
/// carved device address holding `n` elements.
enum Region {
    Own(usize),
    Carved(u64, usize),
}

impl Region {
    fn into_slice<T: DeviceRepr + ValidAsZeroBits>(
        self,
        stream: &Arc<CudaStream>,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        match self {
            Region::Own(n) => stream
                .alloc_zeros::<T>(n)
                .map_err(|e| Error::driver(format!("allocating workspace buffer `{what}`"), e)),
            // SAFETY: `Arena::carve` handed out this range of the caller's
            // memory (zeroed, aligned, inside the region) to this buffer
            // alone; the workspace never frees it (`Workspace::foreign`).
            Region::Carved(ptr, n) => Ok(unsafe { stream.upgrade_device_ptr::<T>(ptr, n) }),
        }
    }
}

/// Bump allocation over the caller's memory.
struct Arena {
    next: std::cell::Cell<u64>,
    end: u64,
}

impl Arena {
    fn carve(&self, n: usize, size: usize) -> Result<Region> {
        let at = self.next.get();
        let bytes = align_up(n * size) as u64;
        if at + bytes > self.end {
            // Cannot happen after the arena_bytes check; reported, not UB.
            return Err(Error::invalid(
                OP,
                "the caller's workspace memory is too small",
            ));
        }
        self.next.set(at + bytes);
        Ok(Region::Carved(at, n))
    }
}

/// A workspace's library-owned parts (no caller memory): made first, so a
/// failure leaves no carved buffer behind.
struct OwnParts {
    blas: BlasWorkspace,
    /// Timing events recorded around each pass's device work.
    events: (CudaEvent, CudaEvent),
    /// The workspace's own stream.
    stream: Arc<CudaStream>,
    /// Its last-use event (no timing).
    last_use: Arc<CudaEvent>,
}

impl OwnParts {
    fn new(model: &GpuModel) -> Result<Self> {
        let ctx = model.device().context();
        let blas = BlasWorkspace::new(model.device())?;
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ev = || {
            ctx.new_event(timed)
                .map_err(|e| Error::driver("creating a timing event", e))
        };
        let events = (ev()?, ev()?);
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::driver("creating the workspace's stream", e))?;
        let last_use = ctx
            .new_event(None)
            .map_err(|e| Error::driver("creating the workspace's last-use event", e))?;
        Ok(OwnParts {
            blas,
            events,
            stream,
            last_use: Arc::new(last_use),
        })
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Graphs first: they name the buffers (destroying them reads none).
        self.graphs.clear();
        // The frees below go to the allocation stream: order them after the
        // last pass, whichever stream it ran on. (A failure here means the
        // context is lost; the frees then fail too.)
        if self.used {
            let _ = self.alloc_stream.wait(&self.last_use);
        }
        // A caller's graph just destroyed unpins a moment later.
        let pinned = crate::device::settled_pins(&self.pins) > 0;
        let streams = std::mem::take(&mut self.streams);
        // SAFETY: each ManuallyDrop field is taken exactly once, here, and
        // the workspace is not used afterwards.
        let (cr, cc, t, st) = unsafe {
            (
                ManuallyDrop::take(&mut self.context_rows),
                ManuallyDrop::take(&mut self.context_cu),
                ManuallyDrop::take(&mut self.totals),
                ManuallyDrop::take(&mut self.stats),
            )
        };
        if self.foreign || pinned {
            if let Some(h) = self.head.take() {
                h.forget();
            }
            for w in streams {
                w.forget();
            }
            let _ = (cr.leak(), cc.leak(), t.leak(), st.leak());
        }
        if pinned {
            // A caller's graph still writes these buffers and the cuBLASLt
            // workspace: leak them (graph_pins).
            for s in &self.stages {
                s.pins.fetch_add(1, Ordering::AcqRel);
            }
        } else {
            // SAFETY: taken exactly once, here; the workspace is not used
            // afterwards.
            unsafe { ManuallyDrop::drop(&mut self.blas) };
        }
    }
}

/// One pass's use of a workspace on a stream: waits for the workspace's
/// previous pass (whatever stream it ran on) before the pass, and records
/// the workspace's last use when the pass is over — on success or on an
/// error midway — then orders the model's stream after it (so frees of the
/// workspace and of the model's weights never precede the pass). Inside a
/// caller's capture neither happens: a captured pass runs when the caller
/// launches the graph, and the graph pins the workspace instead.
pub(crate) struct PassScope {
    stream: Arc<CudaStream>,
    last_use: Arc<CudaEvent>,
    alloc_stream: Arc<CudaStream>,
    capturing: bool,
    done: bool,
}

impl PassScope {
    /// Starts a pass of `ws` on `stream` (`capturing`: the stream is being
    /// captured by the caller).
    pub(crate) fn begin(
        ws: &mut Workspace,
        stream: &Arc<CudaStream>,
        capturing: bool,
    ) -> Result<Self> {
        if ws.stream.context() != stream.context() {
            return Err(Error::invalid(
                OP,
                "the workspace belongs to another CUDA context (device) than the stream",
            ));
        }
        if !capturing {
            if ws.used {
                stream
                    .wait(&ws.last_use)
                    .map_err(|e| Error::driver("ordering after the workspace's last pass", e))?;
            }
            ws.used = true;
        }
        Ok(PassScope {
            stream: stream.clone(),
            last_use: ws.last_use.clone(),
            alloc_stream: ws.alloc_stream.clone(),
            capturing,
            done: false,
        })
    }

    /// Ends the pass (its work all enqueued).
    pub(crate) fn finish(mut self) -> Result<()> {
        self.done = true;
        self.record()
    }

    fn record(&self) -> Result<()> {
        if self.capturing {
            return Ok(());
        }
        self.last_use
            .record(&self.stream)
            .map_err(|e| Error::driver("recording the workspace's last use", e))?;
        self.alloc_stream
            .wait(&self.last_use)
            .map_err(|e| Error::driver("ordering the model's stream after the pass", e))
    }
}

impl Drop for PassScope {
    fn drop(&mut self) {
        if !self.done {
            // A pass that failed midway: whatever it enqueued is still
            // ordered before the next pass and the frees.
            let _ = self.record();
        }
    }
}

impl StreamWs {
    /// Forgets every buffer without freeing it (caller-owned memory).
    fn forget(self) {
        let StreamWs {
            x: [x0, x1],
            cu: [c0, c1],
            orig: [o0, o1],
            a,
            h,
            t,
            ctx,
            q,
            qkv,
            ffn,
            kv,
            u,
            uy,
            g_self,
            g_cross,
            context,
            flags,
            scratch,
            pairs_self,
            pairs_cross,
            count_self,
            count_cross,
            ones,
            all_pairs,
            all_count,
            pooled_first,
            pooled_mean,
            score_log,
            keep_log,
            logit_log,
            mask_log,
            ids,
            type_ids,
            pixels,
            patches,
            patch_out,
            src,
            pooler,
        } = self;
        for b in [
            x0,
            x1,
            a,
            h,
            t,
            ctx,
            q,
            qkv,
            ffn,
            kv,
            u,
            uy,
            pooled_first,
            patches,
            patch_out,
            src,
            pooler,
        ] {
            b.leak();
        }
        for b in [
            c0,
            c1,
            o0,
            o1,
            scratch,
            pairs_self,
            pairs_cross,
            count_self,
            count_cross,
        ] {
            b.leak();
        }
        for b in [all_pairs, all_count] {
            b.leak();
        }
        for b in [
            g_self,
            g_cross,
            context,
            pooled_mean,
            score_log,
            logit_log,
            pixels,
        ] {
            b.leak();
        }
        for b in [flags, ones, keep_log, mask_log] {
            b.leak();
        }
        for b in [ids, type_ids] {
            b.leak();
        }
    }
}

impl Workspace {
    /// Allocates the buffers of [`WorkspaceLayout::new`] (plus a cuBLASLt
    /// workspace) on the model's device. The buffers carry no cudarc
    /// ordering events (passes order their use by stream order; see
    /// [`crate::model`]); the zero fill is complete when this returns.
    pub fn new(model: &GpuModel, capacity: Capacity) -> Result<Self> {
        let dev = model.device();
        let ws = dev.untracked(|| Self::alloc(model, capacity))?;
        dev.synchronize()?;
        Ok(ws)
    }

    /// Carves the buffers of [`WorkspaceLayout::new`] out of device memory
    /// the caller owns (`mem`, at least [`WorkspaceLayout::arena_bytes`]
    /// bytes, 256-byte aligned), zero-filled here; only the cuBLASLt
    /// workspace and two timing events are allocated by smarttrim. The
    /// memory is never freed by smarttrim: dropping the workspace forgets
    /// it, and it must outlive the workspace and every pass enqueued with
    /// it ([`ForeignSlice::new`]'s contract).
    pub fn in_memory(model: &GpuModel, capacity: Capacity, mem: ForeignSlice<u8>) -> Result<Self> {
        if model.config().is_composite() {
            return Err(Error::Unsupported {
                op: OP,
                message: "a whole model (BLIP, METER) cannot run in caller memory; use \
                          Workspace::new"
                    .into(),
            });
        }
        let layout = WorkspaceLayout::new(model.config(), &capacity)?;
        let need = layout.arena_bytes();
        if mem.len() < need {
            return Err(Error::invalid(
                OP,
                format!(
                    "the caller's workspace memory holds {} bytes; this capacity needs {need}",
                    mem.len()
                ),
            ));
        }
        let dev = model.device();
        let stream = dev.stream();
        let (base, _guard) = mem.device_ptr(stream);
        if base % ARENA_ALIGN as u64 != 0 {
            return Err(Error::invalid(
                OP,
                format!("the caller's workspace memory must be {ARENA_ALIGN}-byte aligned"),
            ));
        }
        drop(_guard);
        // Library-owned parts first: a failure here leaves no carved buffer
        // behind (carved buffers must never reach cudarc's free).
        let own = OwnParts::new(model)?;
        // Zero the whole region once (every buffer starts zeroed, as
        // allocated ones do).
        // SAFETY: `mem` covers `need` bytes from `base` (checked above;
        // ForeignSlice's contract makes them valid device memory).
        unsafe { cudarc::driver::result::memset_d8_async(base, 0, need, stream.cu_stream()) }
            .map_err(|e| Error::driver("zeroing the caller's workspace memory", e))?;
        let arena = Arena {
            next: std::cell::Cell::new(base),
            end: base + need as u64,
        };
        let ws = dev.untracked(|| {
            Self::build(
                stream,
                &layout,
                capacity,
                &|n, size| arena.carve(n, size),
                own,
                true,
            )
        });
        let mut ws = ws?;
        ws.arena = Some(mem);
        ws.fill_ones(stream)?;
        dev.synchronize()?;
        Ok(ws)
    }

    fn alloc(model: &GpuModel, capacity: Capacity) -> Result<Self> {
        let layout = WorkspaceLayout::new(model.config(), &capacity)?;
        let stream = model.device().stream();
        let own = OwnParts::new(model)?;
        let mut ws = Self::build(
            stream,
            &layout,
            capacity.clone(),
            &|n, _| Ok(Region::Own(n)),
            own,
            false,
        )?;
        ws.fill_ones(stream)?;
        for (st, sm) in model.config().stages().iter().zip(&model.stages) {
            ws.stages
                .push(Self::alloc(sm, stage_capacity(st, &capacity))?);
        }
        Ok(ws)
    }

    /// Makes every buffer of `layout`, each from `region(elements, size of
    /// one element)`: allocated on the model's stream, or carved.
    fn build(
        stream: &Arc<CudaStream>,
        layout: &WorkspaceLayout,
        capacity: Capacity,
        region: &dyn Fn(usize, usize) -> Result<Region>,
        own: OwnParts,
        foreign: bool,
    ) -> Result<Self> {
        let stream = stream.clone();
        let b = layout.max_batch;
        let get = |n: usize, size: usize| region(n.max(1), size);
        let mut streams = Vec::with_capacity(layout.streams.len());
        for sl in &layout.streams {
            let bufs = sl.buffers(b);
            let n = |name: &str| {
                bufs.iter()
                    .find(|(k, _, _)| *k == name)
                    .map_or(1, |&(_, n, _)| n)
            };
            let h16 = |name: &str| get(n(name), 2)?.into_slice::<f16>(&stream, name);
            let i32b = |name: &str| get(n(name), 4)?.into_slice::<i32>(&stream, name);
            let u32b = |name: &str| get(n(name), 4)?.into_slice::<u32>(&stream, name);
            let f32b = |name: &str| get(n(name), 4)?.into_slice::<f32>(&stream, name);
            let u8b = |name: &str| get(n(name), 1)?.into_slice::<u8>(&stream, name);
            streams.push(StreamWs {
                x: [h16("x[0]")?, h16("x[1]")?],
                cu: [i32b("cu_seqlens[0]")?, i32b("cu_seqlens[1]")?],
                orig: [i32b("orig_index[0]")?, i32b("orig_index[1]")?],
                a: h16("a")?,
                h: h16("h")?,
                t: h16("t")?,
                ctx: h16("ctx")?,
                q: h16("q")?,
                qkv: h16("qkv")?,
                ffn: h16("ffn")?,
                kv: h16("kv")?,
                u: h16("u")?,
                uy: h16("uy")?,
                g_self: f32b("g_self")?,
                g_cross: f32b("g_cross")?,
                context: f32b("context")?,
                flags: u8b("flags")?,
                scratch: i32b("scratch")?,
                pairs_self: i32b("pairs_self")?,
                pairs_cross: i32b("pairs_cross")?,
                count_self: i32b("count_self")?,
                count_cross: i32b("count_cross")?,
                ones: u8b("ones")?,
                all_pairs: i32b("all_pairs")?,
                all_count: i32b("all_count")?,
                pooled_first: h16("pooled_first")?,
                pooled_mean: f32b("pooled_mean")?,
                score_log: f32b("score_log")?,
                keep_log: u8b("keep_log")?,
                logit_log: f32b("logit_log")?,
                mask_log: u8b("mask_log")?,
                ids: u32b("ids")?,
                type_ids: u32b("type_ids")?,
                pixels: f32b("pixels")?,
                patches: h16("patches")?,
                patch_out: h16("patch_out")?,
                src: h16("src")?,
                pooler: h16("pooler")?,
            });
        }
        let head = match layout.head {
            None => None,
            Some(h) => {
                let bufs = h.buffers(b);
                let mut it = bufs
                    .iter()
                    .map(|&(name, n, e)| get(n, e)?.into_slice::<f16>(&stream, name));
                let mut next = || {
                    it.next()
                        .unwrap_or_else(|| Err(Error::invalid(OP, "head buffer list")))
                };
                Some(HeadWs {
                    features: next()?,
                    h1: next()?,
                    h2: next()?,
                    logits: next()?,
                })
            }
        };
        let context_rows = get(layout.context_rows * layout.context_hidden, 2)?
            .into_slice::<f16>(&stream, "context rows")?;
        let context_cu = get(b + 1, 4)?.into_slice::<i32>(&stream, "context cu_seqlens")?;
        let totals = get(layout.streams.len(), 4)?.into_slice::<i32>(&stream, "totals")?;
        let stats = get(layout.stats, 4)?.into_slice::<i32>(&stream, "stats")?;
        Ok(Workspace {
            capacity,
            layout: layout.clone(),
            streams,
            context_rows: ManuallyDrop::new(context_rows),
            context_cu: ManuallyDrop::new(context_cu),
            totals: ManuallyDrop::new(totals),
            stats: ManuallyDrop::new(stats),
            foreign,
            arena: None,
            blas: ManuallyDrop::new(own.blas),
            events: own.events,
            graphs: Vec::new(),
            head,
            stages: Vec::new(),
            alloc_stream: stream.clone(),
            stream: own.stream,
            last_use: own.last_use,
            used: false,
            pins: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Sets every stream's all-heads mask to ones.
    fn fill_ones(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        for w in &mut self.streams {
            let one_vals = vec![1u8; w.ones.len()];
            stream
                .memcpy_htod(&one_vals, &mut w.ones)
                .map_err(|e| Error::driver("uploading the all-heads mask", e))?;
        }
        Ok(())
    }

    /// The capacity the workspace was allocated for.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// The sizes of its buffers.
    pub fn layout(&self) -> &WorkspaceLayout {
        &self.layout
    }
}
