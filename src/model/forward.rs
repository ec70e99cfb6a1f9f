//! [`GpuModel::forward`]: the pruned pass on the device, in the reference's
//! order (module docs of [`crate::model`]).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use half::f16;

use super::input::{validate_inputs, PreparedInputs};
use super::weights::{DevCross, DevEmbedding, DevHeadPruner, DevLayer, DevLinear, DevLn, GpuModel};
use super::workspace::{GraphEntry, GraphKey, StreamWs, Workspace, WorkspaceLayout, MAX_GRAPHS};
use super::{GpuForwardOptions, GpuOutputs, SyncPolicy};
use crate::device::Device;
use crate::ops::{
    bert_embed, bias_act, bias_gelu, bias_residual, build_active_heads, compact, cross_attention,
    first_token, head_scores, layer_norm_ext, mean_pool, self_attention, token_scores,
    vit_assemble, vit_patchify, Act, AttentionShape, BertEmbedInputs, BertEmbedOutputs,
    BertEmbedShape, BertEmbedTables, Blas, BlasWorkspace, ColsShape, CompactInputs, CompactOutputs,
    CompactShape, Epilogue, HeadPrunerDev, HeadScoreOutputs, HeadScoreWorkspace, HeadSelection,
    KeepRuleDev, LayerNormExtras, LayerNormShape, LinearShape, LnDev, OtherStream, PoolOut,
    PoolShape, PrunerInput, TokenPrunerDev, TokenScoreOutputs, TokenScoreWorkspace,
    VitAssembleInputs, VitEmbedOutputs, VitEmbedShape,
};
use crate::pass::{HeadRecord, Inputs, LayerRecord, Packed, StreamInput, StreamOutput};
use crate::spec::flops::{stream_flops, LayerRun};
use crate::spec::{
    Activation, HeadPrunerConfig, KeepRule, LayerConfig, ModelConfig, ModelKind, SequenceFlops,
    StreamConfig,
};
use crate::{Error, Result};

/// The host's view of a pass's inputs: what sizes its launches (and keys
/// its CUDA graph).
#[derive(Debug, Clone)]
pub(crate) struct PassShape {
    /// Sequences per stream.
    pub(crate) batch: usize,
    /// Per stream: every sequence's length entering the first layer.
    pub(crate) lengths: Vec<Vec<i32>>,
    /// A cross encoder's context.
    pub(crate) context: Option<ContextShape>,
    /// Per stream: what the pass starts from.
    pub(crate) sources: Vec<Source>,
}

/// A cross encoder's context as the host sees it: per-sequence lengths when
/// it knows them (an uploaded context), else bounds (BLIP's text encoder
/// attending the image encoder's pruned rows, which stay on the device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContextShape {
    /// Every sequence's length, when known on the host.
    pub(crate) lengths: Option<Vec<i32>>,
    /// Host bound on the total rows (exact when `lengths` is known).
    pub(crate) rows: usize,
    /// Host bound on any sequence's length.
    pub(crate) max_seqlen: usize,
    /// Row width.
    pub(crate) d: usize,
}

impl ContextShape {
    /// A context whose lengths the host knows.
    pub(crate) fn known(lengths: Vec<i32>, d: usize) -> Self {
        ContextShape {
            rows: lengths.iter().map(|&n| n.max(0) as usize).sum(),
            max_seqlen: lengths.iter().copied().max().unwrap_or(0).max(0) as usize,
            lengths: Some(lengths),
            d,
        }
    }
}

/// What a stream's pass starts from in the workspace's first buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Rows entering the first layer, `cu_seqlens` and `orig_index`.
    Rows,
    /// Token ids (and type ids when `type_ids`) and `cu_seqlens`: the BERT
    /// embedding runs first, on the device.
    Tokens { type_ids: bool },
    /// Pixels: the ViT embedding runs first, on the device.
    Pixels,
}

impl PassShape {
    fn of(prep: &PreparedInputs, inputs: &Inputs) -> Self {
        PassShape {
            batch: prep.batch,
            lengths: prep.streams.iter().map(|p| p.lengths()).collect(),
            context: prep
                .context
                .as_ref()
                .map(|c| ContextShape::known(c.lengths(), c.d)),
            sources: inputs
                .streams
                .iter()
                .map(|i| match i {
                    StreamInput::Packed { .. } => Source::Rows,
                    StreamInput::Tokens { type_ids, .. } => Source::Tokens {
                        type_ids: type_ids.is_some(),
                    },
                    StreamInput::Pixels { .. } => Source::Pixels,
                })
                .collect(),
        }
    }
}

/// The host-side state a pass ends in: where the results are, the row
/// bounds, which pruners ran, the waits it took. Cached with a captured
/// graph, whose replays end in the same state.
#[derive(Debug, Clone)]
pub(crate) struct PassEnd {
    cur: Vec<Cur>,
    /// Per stream: the `x` buffer holding the final rows.
    fin: Vec<usize>,
    /// `[layer][stream]` -> (token pruner, self head pruner, cross head
    /// pruner) ran.
    ran: Vec<Vec<[bool; 3]>>,
    /// Blocking host waits inside the pass.
    syncs: usize,
    /// Per stream: every sequence's final length, when the host knows it
    /// (no pruner, or budget-rule pruners only).
    known: Vec<Option<Vec<i32>>>,
}

impl PassEnd {
    /// Stream `s`'s final rows: (host bound on their count, `x` buffer,
    /// `cu_seqlens`/`orig_index` buffer).
    pub(crate) fn final_buffers(&self, s: usize) -> (usize, usize, usize) {
        (self.cur[s].rows, self.fin[s], self.cur[s].c)
    }

    /// Blocking host waits inside the pass.
    pub(crate) fn syncs(&self) -> usize {
        self.syncs
    }

    /// The host's bound on any of stream `s`'s final sequences' lengths.
    pub(crate) fn final_max_seqlen(&self, s: usize) -> usize {
        self.cur[s].max_seqlen()
    }

    /// Stream `s`'s final lengths, when the host knows them.
    pub(crate) fn known_lengths(&self, s: usize) -> Option<&[i32]> {
        self.known.get(s).and_then(|k| k.as_deref())
    }
}

/// One layer of one stream: per sequence, rows entering and kept, active
/// self- and cross-attention heads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerCounts {
    pub(crate) rows_in: Vec<i32>,
    pub(crate) kept: Vec<i32>,
    pub(crate) active_self_heads: Vec<i32>,
    pub(crate) active_cross_heads: Vec<i32>,
}

/// One stream's input into its first buffers (see [`upload`]); `p` is its
/// validated view (`orig_index` of packed rows).
pub(super) fn upload_stream(
    dev: &Device,
    sc: &StreamConfig,
    inp: &StreamInput,
    p: &Packed,
    w: &mut StreamWs,
) -> Result<()> {
    let stream = dev.stream();
    match inp {
        StreamInput::Packed { rows, cu_seqlens } => {
            let rows16 = to_f16(rows);
            // An input transform's rows go to `src`, the others enter the
            // first layer as they are.
            let dst = match sc.embedding {
                crate::spec::EmbeddingConfig::Transform { .. } => &mut w.src,
                _ => &mut w.x[0],
            };
            if !rows16.is_empty() {
                stream
                    .memcpy_htod(&rows16, dst)
                    .map_err(drv("uploading input rows"))?;
                stream
                    .memcpy_htod(&p.orig_index, &mut w.orig[0])
                    .map_err(drv("uploading orig_index"))?;
            }
            stream
                .memcpy_htod(cu_seqlens, &mut w.cu[0])
                .map_err(drv("uploading cu_seqlens"))?;
        }
        StreamInput::Tokens {
            ids,
            type_ids,
            cu_seqlens,
        } => {
            if !ids.is_empty() {
                stream
                    .memcpy_htod(ids, &mut w.ids)
                    .map_err(drv("uploading token ids"))?;
                if let Some(t) = type_ids {
                    stream
                        .memcpy_htod(t, &mut w.type_ids)
                        .map_err(drv("uploading type ids"))?;
                }
            }
            stream
                .memcpy_htod(cu_seqlens, &mut w.cu[0])
                .map_err(drv("uploading cu_seqlens"))?;
        }
        StreamInput::Pixels { pixels, .. } => {
            stream
                .memcpy_htod(pixels, &mut w.pixels)
                .map_err(drv("uploading pixels"))?;
        }
    }
    Ok(())
}

/// f32 rows as f16 (round to nearest even), converted in parallel chunks
/// with `half`'s vectorised slice conversion: a METER batch of 32 is about
/// 15 M values, converted on the host at every pass.
fn to_f16(v: &[f32]) -> Vec<f16> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    let mut out = vec![f16::ZERO; v.len()];
    out.par_chunks_mut(1 << 16)
        .zip(v.par_chunks(1 << 16))
        .for_each(|(o, i)| o.convert_from_f32_slice(i));
    out
}

/// Uploads the inputs into the first buffers of `ws`, on `dev`'s stream:
/// packed rows as f16 with their `orig_index` and `cu_seqlens`, token and
/// type ids with `cu_seqlens`, pixels as they are (f32); the context. The
/// embeddings then run on the device at the start of the pass.
fn upload(
    dev: &Device,
    cfg: &ModelConfig,
    ws: &mut Workspace,
    inputs: &Inputs,
    prep: &PreparedInputs,
) -> Result<()> {
    let stream = dev.stream();
    for (((inp, p), w), sc) in inputs
        .streams
        .iter()
        .zip(&prep.streams)
        .zip(ws.streams.iter_mut())
        .zip(&cfg.streams)
    {
        upload_stream(dev, sc, inp, p, w)?;
    }
    if let Some(c) = &prep.context {
        let rows16 = to_f16(&c.rows);
        if !rows16.is_empty() {
            stream
                .memcpy_htod(&rows16, &mut *ws.context_rows)
                .map_err(drv("uploading the context rows"))?;
        }
        stream
            .memcpy_htod(&c.cu_seqlens, &mut *ws.context_cu)
            .map_err(drv("uploading the context cu_seqlens"))?;
    }
    Ok(())
}

/// Updates the host's view of stream rows after a token pruner with `rule`
/// compacted them: exact counts when the sequence lengths are known and the
/// rule is the budget rule (`k = max(1, ceil(rho n))` per sequence, the
/// same f32 arithmetic as the kernel), otherwise bounds (a budget step on
/// unknown lengths keeps at most `ceil(rho n) + 1` rows of each sequence,
/// the `+ 1` covering f32 rounding in `ceil`; a threshold step may keep
/// all). Returns whether the counts are exact.
fn after_pruning(
    cur: &mut Cur,
    known: &mut Option<Vec<i32>>,
    rule: &KeepRule,
    batch: usize,
) -> bool {
    match (rule, known.take()) {
        (KeepRule::Budget { .. }, Some(lens)) => {
            let new: Vec<i32> = lens
                .iter()
                .map(|&n| rule.budget(n.max(0) as usize) as i32)
                .collect();
            cur.rows = new.iter().map(|&n| n as usize).sum();
            cur.max_len = new.iter().copied().max().unwrap_or(0).max(0) as usize;
            *known = Some(new);
            true
        }
        (KeepRule::Budget { rho }, None) => {
            let bound = |n: usize, extra: usize| {
                ((f64::from(*rho) * n as f64).ceil() as usize).saturating_add(extra)
            };
            cur.rows = cur.rows.min(bound(cur.rows, 2 * batch));
            cur.max_len = cur.max_len.min(bound(cur.max_len, 2));
            false
        }
        (KeepRule::Threshold { .. }, _) => false,
    }
}

/// Where a stream stands: which ping-pong buffers are current, and the host's
/// row count sizing the launches.
#[derive(Debug, Clone, Copy)]
struct Cur {
    /// Current rows buffer (`x[x]`).
    x: usize,
    /// Current `cu_seqlens` / `orig_index` buffers.
    c: usize,
    /// Host row count: exact under `ReadCounts`, the unpruned total under
    /// `UpperBound`.
    rows: usize,
    /// The unpruned longest sequence.
    max_len: usize,
}

impl Cur {
    /// Host bound on any sequence's length, never above the rows present.
    fn max_seqlen(&self) -> usize {
        self.max_len.min(self.rows)
    }
}

/// The other stream's (or the context's) rows as a layer or pruner sees them.
struct OtherRef<'a> {
    rows: &'a CudaSlice<f16>,
    cu: CudaView<'a, i32>,
    n: usize,
    max_seqlen: usize,
    d: usize,
}

/// The context of a cross encoder: rows, cu_seqlens, rows, longest, width.
type ContextRef<'a> = (&'a CudaSlice<f16>, &'a CudaSlice<i32>, usize, usize, usize);

/// The other stream as seen by stream `s`: `cur` of the other stream (its
/// entering rows before compaction, its compacted rows after), or the
/// cross encoder's context.
fn other_of<'a>(
    cfg: &ModelConfig,
    s: usize,
    o: Option<&'a StreamWs>,
    cur: &[Cur],
    batch: usize,
    ctx: Option<ContextRef<'a>>,
) -> Option<OtherRef<'a>> {
    match cfg.kind {
        // Whole models run as stages of the basic kinds.
        ModelKind::Encoder | ModelKind::Blip | ModelKind::Meter => None,
        ModelKind::CoAttention => o.map(|o| {
            let c = cur[1 - s];
            OtherRef {
                rows: &o.x[c.x],
                cu: o.cu[c.c].slice(0..batch + 1),
                n: c.rows,
                max_seqlen: c.max_seqlen(),
                d: cfg.streams[1 - s].hidden,
            }
        }),
        ModelKind::CrossEncoder { .. } => ctx.map(|(rows, cu, n, ms, d)| OtherRef {
            rows,
            cu: cu.slice(0..batch + 1),
            n,
            max_seqlen: ms.min(n),
            d,
        }),
    }
}

/// What a token or head pruner scores: a stream's current rows, seeing the
/// other stream (or the context) as it stands.
fn pruner_input<'a>(
    x: &'a CudaSlice<f16>,
    total_rows: usize,
    batch: usize,
    cu_seqlens: &'a CudaView<'a, i32>,
    other: Option<&'a OtherRef<'a>>,
) -> PrunerInput<'a> {
    PrunerInput {
        batch,
        total_rows,
        x,
        cu_seqlens,
        other: other.map(|o| OtherStream {
            rows: o.rows,
            cu_seqlens: &o.cu,
            total_rows: o.n,
        }),
    }
}

/// `(current, other)` of a ping-pong pair.
fn pair<T>(a: &mut [T; 2], cur: usize) -> (&T, &mut T) {
    let [p, q] = a;
    if cur == 0 {
        (&*p, q)
    } else {
        (&*q, p)
    }
}

/// Stream `s` mutably and, in two-stream models, the other one shared.
fn split(v: &mut [StreamWs], s: usize) -> (&mut StreamWs, Option<&StreamWs>) {
    let (lo, hi) = v.split_at_mut(1);
    if s == 0 {
        (&mut lo[0], hi.first())
    } else {
        (&mut hi[0], Some(&lo[0]))
    }
}

pub(super) fn drv(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| Error::driver(what, e)
}

/// The cuBLASLt handle with the stream and workspace of this pass.
pub(super) struct Lin<'a> {
    pub(super) blas: &'a Blas,
    pub(super) dev: &'a Device,
    pub(super) lt: &'a BlasWorkspace,
}

/// `y = x W^T (+ b)` on the first `rows` rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    blas: &Lin<'_>,
    rows: usize,
    k: usize,
    n: usize,
    x: &CudaSlice<f16>,
    l: &DevLinear,
    with_bias: bool,
    y: &mut CudaSlice<f16>,
) -> Result<()> {
    let b = l.b.as_view();
    blas.blas.linear_on(
        blas.dev,
        blas.lt,
        LinearShape { rows, k, n },
        &x.as_view(),
        &l.w.as_view(),
        with_bias.then_some(&b),
        if with_bias {
            Epilogue::Bias
        } else {
            Epilogue::None
        },
        y,
    )
}

/// Cross-attention up to its context (before the output projection): the
/// query projection of `x_q`, the key/value projection of the other
/// stream's rows, and attention over them into `ctx`. Pre- and post-LN
/// layers differ only in what they feed and do around it.
#[allow(clippy::too_many_arguments)]
fn cross_context(
    blas: &Lin<'_>,
    shape: &AttentionShape,
    cw: &DevCross,
    o: &OtherRef<'_>,
    x_q: &CudaSlice<f16>,
    cu_q: &CudaView<'_, i32>,
    heads: &HeadSelection<'_, CudaSlice<i32>, CudaSlice<i32>, CudaView<'_, u8>>,
    (q, kv, ctx): (
        &mut CudaSlice<f16>,
        &mut CudaSlice<f16>,
        &mut CudaSlice<f16>,
    ),
) -> Result<()> {
    let (n, d) = (shape.rows_q, shape.heads * shape.head_dim);
    linear(blas, n, d, d, x_q, &cw.q, true, q)?;
    linear(blas, o.n, o.d, 2 * d, o.rows, &cw.kv, true, kv)?;
    cross_attention(blas.dev, shape, q, kv, cu_q, &o.cu, heads, ctx)
}

/// `out = LN(x (+ residual))` on the rows below the device count `nd`.
#[allow(clippy::too_many_arguments)]
fn ln(
    dev: &Device,
    rows: usize,
    d: usize,
    eps: f32,
    x: &CudaSlice<f16>,
    residual: Option<&CudaSlice<f16>>,
    w: &DevLn,
    nd: &CudaView<'_, i32>,
    out: &mut CudaSlice<f16>,
) -> Result<()> {
    layer_norm_ext(
        dev,
        LayerNormShape { rows, d, eps },
        x,
        &w.gamma,
        &w.beta,
        out,
        LayerNormExtras {
            residual,
            rows_dev: Some(nd),
        },
    )
}

/// The FFN's `act(x + b1)` in place: erf GELU (the `bias_gelu` kernel) or
/// the stream's other activation (`bias_act`).
fn ffn_activation(
    dev: &Device,
    sc: &StreamConfig,
    shape: ColsShape,
    x: &mut CudaSlice<f16>,
    bias: &CudaSlice<f16>,
    nd: &CudaView<'_, i32>,
) -> Result<()> {
    match sc.activation {
        Activation::Gelu => bias_gelu(dev, shape, x, bias, Some(nd)),
        act => bias_act(dev, shape, act.into(), x, Some(bias), Some(nd)),
    }
}

fn ln_dev(l: &DevLn) -> LnDev<'_> {
    LnDev {
        gamma: &l.gamma,
        beta: &l.beta,
    }
}

/// Which heads an attention module runs: all of them, or those of a head
/// pruner's mask at an offset of the stream's mask log.
#[derive(Debug, Clone, Copy)]
enum Heads {
    All,
    Pruned(usize),
}

/// Slot of `[layers][streams][3][batch]` statistics.
fn stat_off(l: usize, s: usize, k: usize, ns: usize, batch: usize) -> usize {
    ((l * ns + s) * 3 + k) * batch
}

/// Slot of `[layers][2][batch * heads]` head logs (module 0 self, 1 cross).
fn head_off(l: usize, m: usize, bh: usize) -> usize {
    (l * 2 + m) * bh
}

impl GpuModel {
    /// Runs the forward pass (DESIGN.md semantics, the reference's order) on
    /// `inputs` with the buffers of `ws`, on the model's stream; see
    /// [`GpuModel::forward_on`].
    pub fn forward(
        &self,
        ws: &mut Workspace,
        inputs: &Inputs,
        opts: &GpuForwardOptions,
    ) -> Result<GpuOutputs> {
        self.forward_on(self.dev.stream(), ws, inputs, opts)
    }

    /// Runs the forward pass on `stream` (any stream of the model's context,
    /// e.g. the caller's, borrowed with `CudaContext::wrap_borrowed_stream`):
    /// every upload, launch and copy of the pass is enqueued there, ordered
    /// after the work already on it, and the call returns once the results
    /// are on the host (one wait on `stream` at the end; see
    /// [`crate::model`] for what runs where and the sync policies).
    ///
    /// Inputs are validated on the host before any device work (every
    /// problem in one [`Error::Input`]) and embedded on the device; a
    /// workspace made for another model or too small for the inputs is an
    /// [`Error::InvalidArgument`], and so is
    /// `opts.graph` with a pass that must wait inside
    /// ([`GpuModel::graph_capturable`]). A workspace must not be used by two
    /// passes at once (the `&mut` enforces it within one process thread; a
    /// caller switching streams between passes needs no extra ordering,
    /// because every pass ends with its stream idle).
    pub fn forward_on(
        &self,
        stream: &Arc<CudaStream>,
        ws: &mut Workspace,
        inputs: &Inputs,
        opts: &GpuForwardOptions,
    ) -> Result<GpuOutputs> {
        const FWD: &str = "GpuModel::forward";
        let cfg = &self.config;
        if cfg.is_composite() {
            return self.forward_composite(stream, ws, inputs, opts);
        }
        if WorkspaceLayout::new(cfg, &ws.capacity)? != ws.layout {
            return Err(Error::invalid(
                FWD,
                "the workspace was allocated for a different model",
            ));
        }
        if opts.graph && !self.graph_capturable(opts) {
            return Err(Error::invalid(
                FWD,
                "graph capture needs a pass without host waits: use SyncPolicy::UpperBound, \
                 or budget-rule token pruners only (SyncPolicy::ReadCounts waits for the row \
                 counts of threshold-rule pruners)",
            ));
        }
        let prep = validate_inputs(cfg, &self.embeddings, inputs, Some(&ws.capacity))?;
        let dev = self.dev.on_stream(stream.clone())?;
        let shape = PassShape::of(&prep, inputs);
        upload(&dev, cfg, ws, inputs, &prep)?;
        ws.events
            .0
            .record(dev.stream())
            .map_err(drv("recording the start event"))?;
        let end = if opts.graph {
            self.run_graph(&dev, ws, &shape, opts)?
        } else {
            self.enqueue(&dev, ws, &shape, opts)?
        };
        // A task head on the streams' features (outside any graph).
        {
            let Workspace {
                streams: sws,
                head,
                blas,
                ..
            } = &mut *ws;
            let feats: Vec<(&CudaSlice<f16>, usize)> = sws
                .iter()
                .zip(&self.streams)
                .zip(&cfg.streams)
                .map(|((w, ds), sc)| {
                    let buf = if ds.pooler.is_some() {
                        &w.pooler
                    } else {
                        &w.pooled_first
                    };
                    (buf, sc.hidden)
                })
                .collect();
            self.enqueue_head(&dev, blas, head.as_mut(), &feats, shape.batch)?;
        }
        ws.events
            .1
            .record(dev.stream())
            .map_err(drv("recording the end event"))?;
        let mut out = self.readback(&dev, ws, &shape, &end, opts)?;
        out.logits = self.read_logits(&dev, ws.head.as_ref(), shape.batch)?;
        if out.logits.is_some() {
            let hf = crate::spec::flops::head_flops(cfg);
            for t in &mut out.flops {
                t.pruned += hf;
                t.dense += hf;
            }
        }
        Ok(out)
    }

    /// Whether a pass under `opts` has no blocking host wait inside, so it
    /// can be captured as a CUDA graph: always in dense mode or under
    /// [`SyncPolicy::UpperBound`]; under [`SyncPolicy::ReadCounts`] only
    /// when every token pruner uses the budget rule (whose row counts the
    /// host computes from the input lengths).
    pub fn graph_capturable(&self, opts: &GpuForwardOptions) -> bool {
        opts.dense
            || opts.sync == SyncPolicy::UpperBound
            || !self.config.streams.iter().any(|s| {
                s.layers.iter().any(|l| {
                    matches!(
                        l.token_pruner.as_ref().map(|t| &t.rule),
                        Some(KeepRule::Threshold { .. })
                    )
                })
            })
    }

    /// Replays the workspace's graph for this shape, or (first pass of a
    /// shape) runs the pass eagerly and then captures the same launches.
    /// The eager run loads every kernel module and cuBLASLt kernel the pass
    /// needs, which must not happen inside a capture, and gives this call's
    /// results; the capture itself executes nothing.
    pub(crate) fn run_graph(
        &self,
        dev: &Device,
        ws: &mut Workspace,
        shape: &PassShape,
        opts: &GpuForwardOptions,
    ) -> Result<PassEnd> {
        let key = GraphKey {
            sources: shape.sources.clone(),
            model: self.id,
            dense: opts.dense,
            sync: opts.sync,
            lengths: shape.lengths.clone(),
            context: shape.context.clone(),
        };
        if let Some(i) = ws.graphs.iter().position(|(k, _)| *k == key) {
            let entry = ws.graphs.remove(i);
            // SAFETY: the executable graph is live (owned by `entry`); it was
            // captured from this model's launches on this workspace's buffers
            // (the key names the model), all of which are alive, and the
            // inputs it reads were uploaded to the same buffers just before.
            let launched = unsafe {
                cudarc::driver::result::graph::launch(
                    entry.1.graph.cu_graph_exec(),
                    dev.stream().cu_stream(),
                )
            };
            let end = entry.1.end.clone();
            ws.graphs.push(entry);
            launched.map_err(drv("launching the captured forward pass"))?;
            return Ok(end);
        }
        let end = self.enqueue(dev, ws, shape, opts)?;
        let stream = dev.stream();
        stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(drv("beginning the graph capture"))?;
        let captured = self.enqueue(dev, ws, shape, opts);
        // Always end the capture, so the stream is usable again whatever
        // happened inside.
        let graph = stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        let captured_end = captured?;
        let graph = graph
            .map_err(drv("ending the graph capture"))?
            .ok_or_else(|| Error::invalid("GpuModel::forward", "the capture recorded no work"))?;
        if ws.graphs.len() >= MAX_GRAPHS {
            ws.graphs.remove(0);
        }
        ws.graphs.push((
            key,
            GraphEntry {
                graph,
                end: captured_end,
            },
        ));
        Ok(end)
    }

    /// Enqueues the pass on `dev`'s stream, from the inputs already in
    /// `x[0]`, `cu_seqlens[0]`, `orig_index[0]` (and the context buffers) to
    /// the final rows and pooled outputs. Blocks only under
    /// [`SyncPolicy::ReadCounts`] after threshold-rule pruning.
    pub(crate) fn enqueue(
        &self,
        dev: &Device,
        ws: &mut Workspace,
        shape: &PassShape,
        opts: &GpuForwardOptions,
    ) -> Result<PassEnd> {
        const FWD: &str = "GpuModel::forward";
        let cfg = &self.config;
        let batch = shape.batch;
        let stream = dev.stream();
        let ns = cfg.streams.len();
        let nl = cfg.streams[0].layers.len();
        let dense = opts.dense;
        let read_counts = opts.sync == SyncPolicy::ReadCounts;
        let mut syncs = 0usize;

        let Workspace {
            streams: sws,
            context_rows,
            context_cu,
            totals,
            stats,
            blas: lt,
            ..
        } = ws;
        let lt: &BlasWorkspace = lt;

        let mut cur: Vec<Cur> = shape
            .lengths
            .iter()
            .map(|l| Cur {
                x: 0,
                c: 0,
                rows: l.iter().map(|&n| n.max(0) as usize).sum(),
                max_len: l.iter().copied().max().unwrap_or(0).max(0) as usize,
            })
            .collect();
        // Per stream: every sequence's current length, while the host knows it.
        let mut known: Vec<Option<Vec<i32>>> = shape.lengths.iter().cloned().map(Some).collect();
        let ctx_info = shape.context.as_ref().map(|c| (c.rows, c.max_seqlen, c.d));
        // Embeddings on the device.
        for (s, w) in sws.iter_mut().enumerate() {
            self.embed(dev, lt, s, w, batch, cur[s].rows, shape.sources[s])?;
        }
        // The all-heads active lists.
        for (s, w) in sws.iter_mut().enumerate() {
            let h = cfg.streams[s].heads;
            build_active_heads(
                dev,
                batch,
                h,
                &w.ones.slice(0..batch * h),
                &mut w.all_pairs,
                &mut w.all_count,
            )?;
        }
        let context_rows: &CudaSlice<f16> = context_rows;
        let context_cu: &CudaSlice<i32> = context_cu;
        let ctx_ref = ctx_info.map(|(n, ms, d)| (context_rows, context_cu, n, ms, d));
        // [layer][stream] -> (token pruner, self head pruner, cross head pruner) ran.
        let mut ran = vec![vec![[false; 3]; ns]; nl];
        #[allow(clippy::needless_range_loop)] // `l` indexes weights, config and logs too
        for l in 0..nl {
            // 1. Token pruners score the entering rows, each seeing the
            //    other stream's entering rows.
            for s in 0..ns {
                let sc = &cfg.streams[s];
                let lw = &self.streams[s].layers[l];
                let (Some(tp), Some(tc)) = (&lw.token_pruner, &sc.layers[l].token_pruner) else {
                    continue;
                };
                if dense {
                    continue;
                }
                ran[l][s][0] = true;
                let (w, o) = split(sws, s);
                let other = other_of(cfg, s, o, &cur, batch, ctx_ref);
                let c = cur[s];
                let r = w.x[0].len() / sc.hidden;
                let cu_v = w.cu[c.c].slice(0..batch + 1);
                let input = pruner_input(&w.x[c.x], c.rows, batch, &cu_v, other.as_ref());
                let weights = TokenPrunerDev {
                    ln_p: ln_dev(&tp.ln_p),
                    ln_c: tp.ln_c.as_ref().map(ln_dev),
                    w1x: &tp.w1x,
                    w1s: &tp.w1s,
                    w1c: tp.w1c.as_ref().map(|x| x as _),
                    b1: &tp.b1,
                    w2: &tp.w2,
                    b2: tp.b2,
                    d: sc.hidden,
                    d_other: tp.d_other,
                    hs: tp.hs,
                    eps: sc.ln_eps,
                };
                let has_other = other.is_some();
                let mut scores = w.score_log.slice_mut(l * r..(l + 1) * r);
                let (tau, flags) = match tc.rule {
                    KeepRule::Threshold { tau } => (tau, Some(&mut w.flags as _)),
                    KeepRule::Budget { .. } => (0.5, None),
                };
                token_scores(
                    dev,
                    &input,
                    &weights,
                    TokenScoreWorkspace {
                        u: &mut w.u,
                        uy: has_other.then_some(&mut w.uy as _),
                        g_self: &mut w.g_self,
                        g_cross: has_other.then_some(&mut w.g_cross as _),
                        context: &mut w.context,
                        partial: None,
                    },
                    TokenScoreOutputs {
                        scores: &mut scores,
                        flags,
                        tau,
                        keep_first: tc.keep_first,
                    },
                )?;
            }
            // 2. Every pruned stream is compacted; the host updates its row
            //    counts where it can know them (budget rule on known
            //    lengths) and its bounds elsewhere.
            let mut unknown = Vec::new();
            for s in 0..ns {
                if !ran[l][s][0] {
                    continue;
                }
                let sc = &cfg.streams[s];
                let Some(tc) = &sc.layers[l].token_pruner else {
                    continue;
                };
                let w = &mut sws[s];
                let c = cur[s];
                let r = w.x[0].len() / sc.hidden;
                let (xin, xout) = pair(&mut w.x, c.x);
                let (cin, cout) = pair(&mut w.cu, c.c);
                let (oin, oout) = pair(&mut w.orig, c.c);
                let cin_v = cin.slice(0..batch + 1);
                let mut cout_v = cout.slice_mut(0..batch + 1);
                let scores_v = w.score_log.slice(l * r..(l + 1) * r);
                let mut keep_v = w.keep_log.slice_mut(l * r..(l + 1) * r);
                let k0 = stat_off(l, s, 0, ns, batch);
                let mut kept_v = stats.slice_mut(k0..k0 + batch);
                let mut total_v = totals.slice_mut(s..s + 1);
                let rule = match tc.rule {
                    KeepRule::Threshold { .. } => KeepRuleDev::Flags(&w.flags),
                    KeepRule::Budget { rho } => KeepRuleDev::Budget {
                        scores: &scores_v,
                        rho,
                    },
                };
                compact(
                    dev,
                    CompactShape {
                        batch,
                        total_rows: c.rows,
                        max_seqlen: c.max_seqlen(),
                        d: sc.hidden,
                    },
                    rule,
                    tc.keep_first,
                    CompactInputs {
                        rows: xin,
                        cu_seqlens: &cin_v,
                        orig_index: oin,
                    },
                    CompactOutputs {
                        rows: xout,
                        cu_seqlens: &mut cout_v,
                        orig_index: oout,
                        kept_counts: &mut kept_v,
                        scratch: &mut w.scratch,
                        new_total: Some(&mut total_v),
                        keep_out: Some(&mut keep_v),
                    },
                )?;
                cur[s].x ^= 1;
                cur[s].c ^= 1;
                if !after_pruning(&mut cur[s], &mut known[s], &tc.rule, batch) {
                    unknown.push(s);
                }
            }
            if !unknown.is_empty() && read_counts {
                // Policy (a): one small copy and one wait for the streams
                // whose new row counts the host cannot know (threshold rule).
                let mut host = vec![0i32; ns];
                stream
                    .memcpy_dtoh(&totals.slice(0..ns), &mut host)
                    .map_err(drv("reading the row counts"))?;
                dev.synchronize()?;
                syncs += 1;
                for &s in &unknown {
                    let n = host[s];
                    if n < 0 || n as usize > cur[s].rows {
                        return Err(Error::invalid(
                            FWD,
                            format!(
                                "the device reports {n} rows after compaction, more than \
                                 the {} that entered",
                                cur[s].rows
                            ),
                        ));
                    }
                    cur[s].rows = n as usize;
                }
            }
            // 3. Head pruners on the compacted rows; 4. the layer.
            for s in 0..ns {
                let sc = &cfg.streams[s];
                let lc = &sc.layers[l];
                let lw = &self.streams[s].layers[l];
                let (w, o) = split(sws, s);
                let other = other_of(cfg, s, o, &cur, batch, ctx_ref);
                let c = cur[s];
                let bh = batch * sc.heads;
                let mut heads = [Heads::All, Heads::All];
                let hps = [
                    (lw.self_head_pruner.as_ref(), &lc.self_head_pruner),
                    (
                        lw.cross.as_ref().and_then(|c| c.head_pruner.as_ref()),
                        &lc.cross_head_pruner,
                    ),
                ];
                for (m, (hw, hc)) in hps.into_iter().enumerate() {
                    let (Some(hw), Some(hc)) = (hw, hc) else {
                        continue;
                    };
                    if dense {
                        continue;
                    }
                    let off = head_off(l, m, bh);
                    let k = stat_off(l, s, 1 + m, ns, batch);
                    let mut counts = stats.slice_mut(k..k + batch);
                    run_head_pruner(
                        dev,
                        sc,
                        w,
                        other.as_ref(),
                        c,
                        batch,
                        hw,
                        hc,
                        m,
                        off,
                        &mut counts,
                    )?;
                    ran[l][s][1 + m] = true;
                    heads[m] = Heads::Pruned(off);
                }
                self.run_layer(dev, lt, sc, lw, w, other.as_ref(), c, batch, heads)?;
            }
            for c in cur.iter_mut() {
                c.x ^= 1;
            }
        }

        // Final LayerNorm and pooling.
        let mut fin = vec![0usize; ns];
        for s in 0..ns {
            let sc = &cfg.streams[s];
            let w = &mut sws[s];
            let c = cur[s];
            let d = sc.hidden;
            fin[s] = c.x;
            if let Some(fl) = &self.streams[s].final_ln {
                let nd = w.cu[c.c].slice(batch..batch + 1);
                let (xin, xout) = pair(&mut w.x, c.x);
                ln(dev, c.rows, d, sc.ln_eps, xin, None, fl, &nd, xout)?;
                fin[s] = c.x ^ 1;
            }
            let cu_v = w.cu[c.c].slice(0..batch + 1);
            let shape = PoolShape {
                batch,
                total_rows: c.rows,
                d,
            };
            first_token(dev, shape, &w.x[fin[s]], &cu_v, &mut w.pooled_first)?;
            mean_pool(
                dev,
                shape,
                &w.x[fin[s]],
                &cu_v,
                PoolOut::F32(&mut w.pooled_mean),
            )?;
            if let Some(p) = &self.streams[s].pooler {
                // tanh(W x_0 + b) on the first rows.
                let blas = Lin {
                    blas: &self.blas,
                    dev,
                    lt,
                };
                linear(&blas, batch, d, d, &w.pooled_first, p, true, &mut w.pooler)?;
                bias_act(
                    dev,
                    ColsShape { rows: batch, n: d },
                    Act::Tanh,
                    &mut w.pooler,
                    None::<&CudaSlice<f16>>,
                    None::<&CudaSlice<i32>>,
                )?;
            }
        }

        Ok(PassEnd {
            known,
            cur,
            fin,
            ran,
            syncs,
        })
    }

    /// Waits for the pass and copies its results to the host.
    pub(super) fn readback(
        &self,
        dev: &Device,
        ws: &mut Workspace,
        shape: &PassShape,
        end: &PassEnd,
        opts: &GpuForwardOptions,
    ) -> Result<GpuOutputs> {
        const FWD: &str = "GpuModel::forward";
        let cfg = &self.config;
        let batch = shape.batch;
        let stream = dev.stream();
        let ns = cfg.streams.len();
        let nl = cfg.streams[0].layers.len();
        let PassEnd { cur, fin, ran, .. } = end;
        let Workspace {
            streams: sws,
            stats,
            ..
        } = ws;
        // The one wait at the end, then copies from the idle stream.
        dev.synchronize()?;
        let stats_h: Vec<i32> = stream
            .clone_dtoh(&stats.slice(0..nl * ns * 3 * batch))
            .map_err(drv("reading the statistics"))?;
        let mut outs = Vec::with_capacity(ns);
        for s in 0..ns {
            let sc = &cfg.streams[s];
            let w = &sws[s];
            let c = cur[s];
            let d = sc.hidden;
            let h = sc.heads;
            let bh = batch * h;
            let r = w.x[0].len() / d;
            let cu_h: Vec<i32> = stream
                .clone_dtoh(&w.cu[c.c].slice(0..batch + 1))
                .map_err(drv("reading cu_seqlens"))?;
            let total = cu_h[batch].max(0) as usize;
            if total > c.rows {
                return Err(Error::invalid(
                    FWD,
                    format!(
                        "stream `{}`: the device reports {total} final rows, more than the {} bound",
                        sc.name, c.rows
                    ),
                ));
            }
            let (rows, orig) = if total > 0 {
                let r16: Vec<f16> = stream
                    .clone_dtoh(&w.x[fin[s]].slice(0..total * d))
                    .map_err(drv("reading the final rows"))?;
                let o: Vec<i32> = stream
                    .clone_dtoh(&w.orig[c.c].slice(0..total))
                    .map_err(drv("reading orig_index"))?;
                (r16.iter().map(|v| v.to_f32()).collect(), o)
            } else {
                (Vec::new(), Vec::new())
            };
            let pf: Vec<f16> = stream
                .clone_dtoh(&w.pooled_first.slice(0..batch * d))
                .map_err(drv("reading pooled rows"))?;
            let pm: Vec<f32> = stream
                .clone_dtoh(&w.pooled_mean.slice(0..batch * d))
                .map_err(drv("reading pooled rows"))?;
            let pooler: Option<Vec<f32>> = match &self.streams[s].pooler {
                None => None,
                Some(_) => {
                    let p: Vec<f16> = stream
                        .clone_dtoh(&w.pooler.slice(0..batch * d))
                        .map_err(drv("reading the pooler's output"))?;
                    Some(p.iter().map(|v| v.to_f32()).collect())
                }
            };
            let any_token = ran.iter().any(|x| x[s][0]);
            let any_head = ran.iter().any(|x| x[s][1] || x[s][2]);
            let (score_log, keep_log) = if any_token {
                (
                    stream
                        .clone_dtoh(&w.score_log.slice(0..nl * r))
                        .map_err(drv("reading scores"))?,
                    stream
                        .clone_dtoh(&w.keep_log.slice(0..nl * r))
                        .map_err(drv("reading keep flags"))?,
                )
            } else {
                (Vec::new(), Vec::new())
            };
            let (logit_log, mask_log) = if any_head {
                (
                    stream
                        .clone_dtoh(&w.logit_log.slice(0..nl * 2 * bh))
                        .map_err(drv("reading head logits"))?,
                    stream
                        .clone_dtoh(&w.mask_log.slice(0..nl * 2 * bh))
                        .map_err(drv("reading head masks"))?,
                )
            } else {
                (Vec::new(), Vec::new())
            };
            let counts = self.layer_counts(shape, end, &stats_h, s);
            let mut layers = Vec::with_capacity(nl);
            // The device does not log each layer's entering positions; they
            // follow from the first layer's and the keep flags (a layer's
            // entering rows are the previous layer's that it kept).
            let mut orig_in: Vec<i32> =
                shape.lengths[s].iter().flat_map(|&n| 0..n.max(0)).collect();
            for (l, (ran_l, c)) in ran.iter().zip(counts).enumerate() {
                let [tok, hs_self, hs_cross] = ran_l[s];
                let n_in: usize = c.rows_in.iter().map(|&x| x.max(0) as usize).sum();
                let head_rec = |m: usize| {
                    let o = head_off(l, m, bh);
                    HeadRecord {
                        logits: logit_log[o..o + bh].to_vec(),
                        mask: mask_log[o..o + bh].to_vec(),
                    }
                };
                let keep: Option<Vec<bool>> = tok.then(|| {
                    keep_log[l * r..l * r + n_in]
                        .iter()
                        .map(|&k| k != 0)
                        .collect()
                });
                let orig_index_in = orig_in.clone();
                if let Some(k) = &keep {
                    orig_in = orig_in
                        .iter()
                        .zip(k)
                        .filter(|(_, &kept)| kept)
                        .map(|(&o, _)| o)
                        .collect();
                }
                layers.push(LayerRecord {
                    orig_index_in,
                    scores: tok.then(|| score_log[l * r..l * r + n_in].to_vec()),
                    keep,
                    kept: c.kept,
                    self_heads: hs_self.then(|| head_rec(0)),
                    cross_heads: hs_cross.then(|| head_rec(1)),
                    active_self_heads: c.active_self_heads,
                    active_cross_heads: c.active_cross_heads,
                    rows_in: c.rows_in,
                    flops: Vec::new(),
                });
            }
            outs.push(StreamOutput {
                name: sc.name.clone(),
                packed: Packed {
                    rows,
                    d,
                    cu_seqlens: cu_h,
                    orig_index: orig,
                },
                pooled_first: pf.iter().map(|v| v.to_f32()).collect(),
                pooled_mean: pm,
                pooler,
                layers,
                flops: Vec::new(),
            });
        }
        let flops = self.account_flops(shape, &mut outs, opts.dense);
        let device_ms = ws
            .events
            .0
            .elapsed_ms(&ws.events.1)
            .map_err(drv("reading the pass's device time"))?;
        Ok(GpuOutputs {
            device_ms,
            streams: outs,
            syncs: end.syncs,
            policy: opts.sync,
            graph: opts.graph,
            flops,
            logits: None,
        })
    }

    /// Stream `s`'s embedding, from its uploaded ids or pixels into `x[0]`,
    /// `orig_index[0]` (and, for a ViT, `cu_seqlens[0]`); nothing for a
    /// stream given its rows.
    #[allow(clippy::too_many_arguments)]
    fn embed(
        &self,
        dev: &Device,
        lt: &BlasWorkspace,
        s: usize,
        w: &mut StreamWs,
        batch: usize,
        total: usize,
        source: Source,
    ) -> Result<()> {
        let sc = &self.config.streams[s];
        match (&self.streams[s].embedding, source) {
            // An input transform: the uploaded (or handed-on) rows `src`
            // `[total, D_in]` -> x[0] `[total, D]`, bias and type vector in
            // one epilogue; cu_seqlens[0] and orig_index[0] are already set.
            (
                DevEmbedding::Transform {
                    w: tw,
                    input_hidden,
                },
                Source::Rows,
            ) => {
                let x = w.src.slice(0..(total * input_hidden).max(1));
                let [x0, _] = &mut w.x;
                let mut y = x0.slice_mut(0..(total * sc.hidden).max(1));
                self.blas.linear_on(
                    dev,
                    lt,
                    LinearShape {
                        rows: total,
                        k: *input_hidden,
                        n: sc.hidden,
                    },
                    &x,
                    &tw.w.as_view(),
                    Some(&tw.b.as_view()),
                    Epilogue::Bias,
                    &mut y,
                )
            }
            (_, Source::Rows) => Ok(()),
            (
                DevEmbedding::Bert {
                    word,
                    position,
                    token_type,
                    ln,
                },
                Source::Tokens { type_ids },
            ) => {
                let shape = BertEmbedShape::from_stream(sc, batch, total)?;
                let cu = w.cu[0].slice(0..batch + 1);
                let ids = w.ids.slice(0..total.max(1));
                let tys = w.type_ids.slice(0..total.max(1));
                let [x0, _] = &mut w.x;
                let [o0, _] = &mut w.orig;
                bert_embed(
                    dev,
                    shape,
                    BertEmbedInputs {
                        ids: &ids,
                        type_ids: type_ids.then_some(&tys as _),
                        cu_seqlens: &cu,
                    },
                    BertEmbedTables {
                        word,
                        position,
                        token_type,
                        gamma: &ln.gamma,
                        beta: &ln.beta,
                    },
                    BertEmbedOutputs {
                        rows: x0,
                        orig_index: o0,
                    },
                )
            }
            (
                DevEmbedding::Vit {
                    patch,
                    patch_bias,
                    cls,
                    position,
                    ln: ln_pre,
                },
                Source::Pixels,
            ) => {
                let shape = VitEmbedShape::from_stream(sc, batch)?;
                let pixels = w.pixels.slice(0..shape.pixels_len());
                let np = shape.patch_rows();
                let mut patches = w.patches.slice_mut(0..np * shape.patch_dim());
                vit_patchify(dev, &shape, &pixels, &mut patches)?;
                let ls = shape.linear_shape();
                let mut patch_out = w.patch_out.slice_mut(0..np * sc.hidden);
                let pb = patch.b.as_view();
                self.blas.linear_on(
                    dev,
                    lt,
                    ls,
                    &patches.as_view(),
                    &patch.w.as_view(),
                    patch_bias.then_some(&pb),
                    if *patch_bias {
                        Epilogue::Bias
                    } else {
                        Epilogue::None
                    },
                    &mut patch_out,
                )?;
                let [x0, _] = &mut w.x;
                let [o0, _] = &mut w.orig;
                let [c0, _] = &mut w.cu;
                let mut cu = c0.slice_mut(0..batch + 1);
                // With CLIP's ln_pre the rows are assembled into `a`, then
                // normalised into x[0].
                let rows: &mut CudaSlice<f16> = if ln_pre.is_some() { &mut w.a } else { x0 };
                vit_assemble(
                    dev,
                    &shape,
                    VitAssembleInputs {
                        patch_out: &patch_out,
                        cls,
                        position,
                    },
                    VitEmbedOutputs {
                        rows,
                        orig_index: o0,
                        cu_seqlens: &mut cu,
                    },
                )?;
                match ln_pre {
                    None => Ok(()),
                    Some(l) => {
                        let [x0, _] = &mut w.x;
                        let nd = c0.slice(batch..batch + 1);
                        ln(dev, total, sc.hidden, sc.ln_eps, &w.a, None, l, &nd, x0)
                    }
                }
            }
            _ => Err(Error::invalid(
                "GpuModel::forward",
                format!(
                    "stream `{}`: the input does not match the embedding",
                    sc.name
                ),
            )),
        }
    }

    /// Fills in the FLOPs of every layer and stream from the pass's
    /// statistics (the CPU reference's accounting, [`stream_flops`]) and
    /// returns the per-sequence totals over streams.
    fn account_flops(
        &self,
        shape: &PassShape,
        outs: &mut [StreamOutput],
        dense: bool,
    ) -> Vec<SequenceFlops> {
        let cfg = &self.config;
        // A context of unknown lengths (a whole model's stage) is accounted
        // by the whole model's pass, which overwrites these FLOPs.
        let context = shape
            .context
            .as_ref()
            .map(|c| c.lengths.clone().unwrap_or_else(|| vec![0; shape.batch]));
        let mut total = vec![SequenceFlops::default(); shape.batch];
        let mut results = Vec::with_capacity(outs.len());
        for (s, so) in outs.iter().enumerate() {
            let sc = &cfg.streams[s];
            let other_initial = match cfg.kind {
                ModelKind::Encoder | ModelKind::Blip | ModelKind::Meter => None,
                ModelKind::CoAttention => Some(shape.lengths[1 - s].clone()),
                ModelKind::CrossEncoder { .. } => context.clone(),
            };
            let runs: Vec<LayerRun> = so
                .layers
                .iter()
                .enumerate()
                .map(|(l, r)| {
                    let lc = &sc.layers[l];
                    let keep = |ran: bool| ran && !dense;
                    LayerRun {
                        ran: LayerConfig {
                            token_pruner: lc
                                .token_pruner
                                .clone()
                                .filter(|_| keep(r.keep.is_some())),
                            self_head_pruner: lc
                                .self_head_pruner
                                .clone()
                                .filter(|_| keep(r.self_heads.is_some())),
                            cross_head_pruner: lc
                                .cross_head_pruner
                                .clone()
                                .filter(|_| keep(r.cross_heads.is_some())),
                        },
                        rows_in: &r.rows_in,
                        kept: &r.kept,
                        active_self_heads: &r.active_self_heads,
                        active_cross_heads: &r.active_cross_heads,
                        other_rows: match cfg.kind {
                            ModelKind::Encoder | ModelKind::Blip | ModelKind::Meter => None,
                            ModelKind::CoAttention => Some(&outs[1 - s].layers[l].kept[..]),
                            ModelKind::CrossEncoder { .. } => context.as_deref(),
                        },
                    }
                })
                .collect();
            let (per_layer, seq) = stream_flops(
                sc,
                cfg.other_hidden(s),
                &runs,
                &shape.lengths[s],
                other_initial.as_deref(),
            );
            for (t, f) in total.iter_mut().zip(&seq) {
                t.pruned += f.pruned;
                t.dense += f.dense;
            }
            results.push((per_layer, seq));
        }
        for (so, (per_layer, seq)) in outs.iter_mut().zip(results) {
            for (r, f) in so.layers.iter_mut().zip(per_layer) {
                r.flops = f;
            }
            so.flops = seq;
        }
        total
    }

    /// Per layer of stream `s`, the rows entering and kept and the active
    /// heads of every sequence, from the pass's statistics buffer `stats_h`
    /// (read back after the pass) and what the host knows of the pass.
    pub(crate) fn layer_counts(
        &self,
        shape: &PassShape,
        end: &PassEnd,
        stats_h: &[i32],
        s: usize,
    ) -> Vec<LayerCounts> {
        let ns = self.config.streams.len();
        let batch = shape.batch;
        let h = self.config.streams[s].heads as i32;
        let has_cross = self.streams[s].layers.iter().any(|l| l.cross.is_some());
        let mut lengths = shape.lengths[s].clone();
        let mut out = Vec::with_capacity(end.ran.len());
        for (l, ran_l) in end.ran.iter().enumerate() {
            let [tok, hs_self, hs_cross] = ran_l[s];
            let slot = |k: usize| {
                let o = stat_off(l, s, k, ns, batch);
                stats_h[o..o + batch].to_vec()
            };
            let rows_in = lengths.clone();
            let kept = if tok { slot(0) } else { rows_in.clone() };
            let layer_has_cross = self.streams[s].layers[l].cross.is_some();
            out.push(LayerCounts {
                rows_in,
                kept: kept.clone(),
                active_self_heads: if hs_self { slot(1) } else { vec![h; batch] },
                active_cross_heads: if hs_cross {
                    slot(2)
                } else if has_cross && layer_has_cross {
                    vec![h; batch]
                } else {
                    vec![0; batch]
                },
            });
            lengths = kept;
        }
        out
    }

    /// One layer of stream `sc` on its current (compacted) rows `x[c.x]`,
    /// writing `x[c.x ^ 1]`. Pre-LN: `h = x + SA(LN1 x)`, `h += CA(LN2 h, y)`,
    /// `o = h + FFN(LN3 h)`; post-LN: `h = LN1(x + SA x)`,
    /// `h = LN2(h + CA(h, y))`, `o = LN3(h + FFN h)`.
    #[allow(clippy::too_many_arguments)]
    fn run_layer(
        &self,
        dev: &Device,
        lt: &BlasWorkspace,
        sc: &StreamConfig,
        lw: &DevLayer,
        w: &mut StreamWs,
        other: Option<&OtherRef<'_>>,
        c: Cur,
        batch: usize,
        heads: [Heads; 2],
    ) -> Result<()> {
        let blas = Lin {
            blas: &self.blas,
            dev,
            lt,
        };
        let blas = &blas;
        let (d, hd, eps, f) = (sc.hidden, sc.heads, sc.ln_eps, sc.ffn);
        let dh = d / hd;
        let n = c.rows;
        let ms = c.max_seqlen();
        let bh = batch * hd;
        let cu_v = w.cu[c.c].slice(0..batch + 1);
        let nd = w.cu[c.c].slice(batch..batch + 1);
        let (xin, xout) = pair(&mut w.x, c.x);
        let off = |h: Heads| match h {
            Heads::All => 0,
            Heads::Pruned(o) => o,
        };
        let mask_s = w.mask_log.slice(off(heads[0])..off(heads[0]) + bh);
        let mask_c = w.mask_log.slice(off(heads[1])..off(heads[1]) + bh);
        let sel_s = match heads[0] {
            Heads::All => HeadSelection {
                active: &w.all_pairs,
                n_active: &w.all_count,
                head_mask: None,
            },
            Heads::Pruned(_) => HeadSelection {
                active: &w.pairs_self,
                n_active: &w.count_self,
                head_mask: Some(&mask_s),
            },
        };
        let sel_c = match heads[1] {
            Heads::All => HeadSelection {
                active: &w.all_pairs,
                n_active: &w.all_count,
                head_mask: None,
            },
            Heads::Pruned(_) => HeadSelection {
                active: &w.pairs_cross,
                n_active: &w.count_cross,
                head_mask: Some(&mask_c),
            },
        };
        let self_shape = AttentionShape {
            batch,
            heads: hd,
            head_dim: dh,
            rows_q: n,
            rows_k: n,
            max_seqlen_q: ms,
            max_seqlen_k: ms,
        };
        let cross = match (&lw.cross, other) {
            (Some(cw), Some(o)) => Some((cw, o)),
            _ => None,
        };
        let cross_shape = |o: &OtherRef<'_>| AttentionShape {
            batch,
            heads: hd,
            head_dim: dh,
            rows_q: n,
            rows_k: o.n,
            max_seqlen_q: ms,
            max_seqlen_k: o.max_seqlen,
        };
        let cols = |width: usize| ColsShape { rows: n, n: width };
        if sc.pre_ln {
            ln(dev, n, d, eps, xin, None, &lw.self_ln, &nd, &mut w.a)?;
            linear(blas, n, d, 3 * d, &w.a, &lw.qkv, true, &mut w.qkv)?;
            self_attention(dev, &self_shape, &w.qkv, &cu_v, &sel_s, &mut w.ctx)?;
            linear(blas, n, d, d, &w.ctx, &lw.self_out, false, &mut w.h)?;
            bias_residual(dev, cols(d), &mut w.h, &lw.self_out.b, xin, Some(&nd))?;
            let hcur = if let Some((cw, o)) = cross {
                ln(dev, n, d, eps, &w.h, None, &cw.ln, &nd, &mut w.a)?;
                let bufs = (&mut w.q, &mut w.kv, &mut w.ctx);
                cross_context(blas, &cross_shape(o), cw, o, &w.a, &cu_v, &sel_c, bufs)?;
                linear(blas, n, d, d, &w.ctx, &cw.out, false, &mut w.t)?;
                bias_residual(dev, cols(d), &mut w.t, &cw.out.b, &w.h, Some(&nd))?;
                &w.t
            } else {
                &w.h
            };
            ln(dev, n, d, eps, hcur, None, &lw.ffn_ln, &nd, &mut w.a)?;
            linear(blas, n, d, f, &w.a, &lw.fc1, false, &mut w.ffn)?;
            ffn_activation(dev, sc, cols(f), &mut w.ffn, &lw.fc1.b, &nd)?;
            linear(blas, n, f, d, &w.ffn, &lw.fc2, false, xout)?;
            bias_residual(dev, cols(d), xout, &lw.fc2.b, hcur, Some(&nd))?;
        } else {
            linear(blas, n, d, 3 * d, xin, &lw.qkv, true, &mut w.qkv)?;
            self_attention(dev, &self_shape, &w.qkv, &cu_v, &sel_s, &mut w.ctx)?;
            linear(blas, n, d, d, &w.ctx, &lw.self_out, true, &mut w.t)?;
            ln(dev, n, d, eps, &w.t, Some(xin), &lw.self_ln, &nd, &mut w.h)?;
            let hcur = if let Some((cw, o)) = cross {
                let bufs = (&mut w.q, &mut w.kv, &mut w.ctx);
                cross_context(blas, &cross_shape(o), cw, o, &w.h, &cu_v, &sel_c, bufs)?;
                linear(blas, n, d, d, &w.ctx, &cw.out, true, &mut w.t)?;
                ln(dev, n, d, eps, &w.t, Some(&w.h), &cw.ln, &nd, &mut w.a)?;
                &w.a
            } else {
                &w.h
            };
            linear(blas, n, d, f, hcur, &lw.fc1, false, &mut w.ffn)?;
            ffn_activation(dev, sc, cols(f), &mut w.ffn, &lw.fc1.b, &nd)?;
            linear(blas, n, f, d, &w.ffn, &lw.fc2, true, &mut w.t)?;
            ln(dev, n, d, eps, &w.t, Some(hcur), &lw.ffn_ln, &nd, xout)?;
        }
        Ok(())
    }
}

/// A head pruner on stream `sc`'s compacted rows: logits and mask into the
/// stream's logs at `off`, active pairs into the module's list, active-head
/// counts into the statistics slot `counts`.
#[allow(clippy::too_many_arguments)]
fn run_head_pruner(
    dev: &Device,
    sc: &StreamConfig,
    w: &mut StreamWs,
    other: Option<&OtherRef<'_>>,
    c: Cur,
    batch: usize,
    hw: &DevHeadPruner,
    hc: &HeadPrunerConfig,
    module: usize,
    off: usize,
    counts: &mut CudaViewMutI32<'_>,
) -> Result<()> {
    let bh = batch * sc.heads;
    let cu_v = w.cu[c.c].slice(0..batch + 1);
    let input = pruner_input(&w.x[c.x], c.rows, batch, &cu_v, other);
    let weights = HeadPrunerDev {
        ln_h: ln_dev(&hw.ln_h),
        ln_hc: hw.ln_hc.as_ref().map(ln_dev),
        w1: &hw.w1,
        b1: &hw.b1,
        w2: &hw.w2,
        b2: &hw.b2,
        d: sc.hidden,
        d_other: hw.d_other,
        hh: hw.hh,
        heads: sc.heads,
        eps: sc.ln_eps,
    };
    let has_other = other.is_some();
    let mut logits = w.logit_log.slice_mut(off..off + bh);
    let mut mask = w.mask_log.slice_mut(off..off + bh);
    let (pairs, count) = if module == 0 {
        (&mut w.pairs_self, &mut w.count_self)
    } else {
        (&mut w.pairs_cross, &mut w.count_cross)
    };
    head_scores(
        dev,
        &input,
        &weights,
        HeadScoreWorkspace {
            u: &mut w.u,
            uy: has_other.then_some(&mut w.uy as _),
            g_x: &mut w.g_self,
            g_y: has_other.then_some(&mut w.g_cross as _),
        },
        HeadScoreOutputs {
            logits: &mut logits,
            mask: &mut mask,
            pairs,
            pair_count: count,
            head_counts: Some(counts),
            tau: hc.tau_h,
            min_heads: hc.min_heads,
        },
    )
}

type CudaViewMutI32<'a> = cudarc::driver::CudaViewMut<'a, i32>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_elementwise() {
        // Across chunk boundaries, with values that round and overflow.
        let v: Vec<f32> = (0..200_003)
            .map(|i| ((i as f32) * 0.37).sin() * 70_000.0 + (i % 7) as f32 * 1e-4)
            .collect();
        let want: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let got = to_f16(&v);
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(to_f16(&[]).is_empty());
    }

    #[test]
    fn ping_pong_and_slots() {
        let mut a = [1, 2];
        let (c, o) = pair(&mut a, 0);
        assert_eq!((*c, *o), (1, 2));
        *o = 5;
        let (c, o) = pair(&mut a, 1);
        assert_eq!((*c, *o), (5, 1));
        // Statistics slots tile [layers][streams][3][batch] without overlap.
        let (nl, ns, b) = (3, 2, 8);
        let mut seen = vec![false; nl * ns * 3 * b];
        for l in 0..nl {
            for s in 0..ns {
                for k in 0..3 {
                    let o = stat_off(l, s, k, ns, b);
                    for x in &mut seen[o..o + b] {
                        assert!(!*x);
                        *x = true;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&x| x));
        assert_eq!(head_off(2, 1, 16), 5 * 16);
        let c = Cur {
            x: 0,
            c: 0,
            rows: 30,
            max_len: 40,
        };
        assert_eq!(c.max_seqlen(), 30);
        let c = Cur { rows: 300, ..c };
        assert_eq!(c.max_seqlen(), 40);
    }
}
