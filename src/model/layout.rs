//! The workspace's layout: what a [`Capacity`] (largest batch, longest
//! sequences) needs, buffer by buffer ([`StreamLayout`], [`WorkspaceLayout`]),
//! in bytes and in one arena of [`ARENA_ALIGN`]-aligned regions. Pure sizing
//! arithmetic: no GPU needed, tested on its own; [`super::Workspace`]
//! allocates exactly these buffers.

use super::input::PreparedInputs;
use crate::ops::compact::BUDGET_MAX_ROWS;
use crate::spec::{EmbeddingConfig, KeepRule, ModelConfig, ModelKind};
use crate::{Error, Result};

pub(super) const OP: &str = "Workspace";

/// What a [`Workspace`](super::Workspace) must hold: the largest batch and,
/// per stream, the longest sequence (rows before any pruning); a cross
/// encoder's context sequences too. A stream's buffers hold `max_batch * max_seqlen` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Most sequences per forward pass.
    pub max_batch: usize,
    /// Per config stream: the longest sequence (unpruned rows).
    pub max_seqlen: Vec<usize>,
    /// A cross encoder's longest context sequence (0 for other models).
    pub context_max_seqlen: usize,
}

impl Capacity {
    /// The capacity that exactly fits prepared inputs.
    pub fn for_inputs(prep: &PreparedInputs) -> Self {
        Capacity {
            max_batch: prep.batch,
            max_seqlen: (0..prep.streams.len())
                .map(|s| prep.max_seqlen(s).max(1))
                .collect(),
            context_max_seqlen: prep.context.as_ref().map_or(0, |c| {
                c.lengths().into_iter().max().unwrap_or(0).max(1) as usize
            }),
        }
    }

    /// Checks prepared inputs fit: batch, every sequence's length, context.
    pub fn check_fits(&self, cfg: &ModelConfig, prep: &PreparedInputs) -> Result<()> {
        const FWD: &str = "GpuModel::forward";
        if prep.batch > self.max_batch {
            return Err(Error::invalid(
                FWD,
                format!(
                    "batch {} exceeds the workspace capacity of {} sequences",
                    prep.batch, self.max_batch
                ),
            ));
        }
        for (s, sc) in cfg.streams.iter().enumerate() {
            let cap = self.max_seqlen.get(s).copied().unwrap_or(0);
            let have = prep.max_seqlen(s);
            if have > cap {
                return Err(Error::invalid(
                    FWD,
                    format!(
                        "stream `{}`: a sequence of {have} rows exceeds the workspace capacity of {cap}",
                        sc.name
                    ),
                ));
            }
        }
        if let Some(c) = &prep.context {
            let have = c.lengths().into_iter().max().unwrap_or(0).max(0) as usize;
            if have > self.context_max_seqlen {
                return Err(Error::invalid(
                    FWD,
                    format!(
                        "a context sequence of {have} rows exceeds the workspace capacity of {}",
                        self.context_max_seqlen
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Buffer sizes (in elements) of one stream's part of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLayout {
    /// Row capacity `R = max_batch * max_seqlen`.
    pub rows: usize,
    /// Longest sequence (unpruned).
    pub max_seqlen: usize,
    /// Hidden `D`.
    pub d: usize,
    /// FFN width `F`.
    pub ffn: usize,
    /// Heads `H`.
    pub heads: usize,
    /// The other stream's (or context's) width, 0 for none.
    pub d_other: usize,
    /// The other stream's (or context's) row capacity, 0 for none.
    pub other_rows: usize,
    /// Widest token pruner hidden layer (0 without token pruners).
    pub hs: usize,
    /// Layers.
    pub layers: usize,
    /// Whether the layers have cross-attention.
    pub cross: bool,
    /// Token and type ids a BERT stream's embedding reads (elements; 0 for
    /// other streams).
    pub ids: usize,
    /// Pixels (f32) a ViT stream's embedding reads (0 for other streams).
    pub pixels: usize,
    /// ViT patch rows `[max_batch * patches, C * P * P]` f16 (elements).
    pub patches: usize,
    /// ViT projected patches `[max_batch * patches, D]` f16 (elements).
    pub patch_out: usize,
    /// An input transform's input rows `[rows, D_in]` f16 (elements; 0
    /// without a transform).
    pub src: usize,
    /// The pooler's output `[max_batch, D]` f16 (elements; 0 without a
    /// pooler).
    pub pooler: usize,
}

impl StreamLayout {
    /// Every buffer of the stream: (name, elements, bytes per element). Zero
    /// sizes are allocated as one element.
    pub fn buffers(&self, max_batch: usize) -> Vec<(&'static str, usize, usize)> {
        let (r, d, b, h) = (self.rows, self.d, max_batch, self.heads);
        let ro = if self.cross { self.other_rows } else { 0 };
        vec![
            ("x[0]", r * d, 2),
            ("x[1]", r * d, 2),
            ("cu_seqlens[0]", b + 1, 4),
            ("cu_seqlens[1]", b + 1, 4),
            ("orig_index[0]", r, 4),
            ("orig_index[1]", r, 4),
            ("a", r * d, 2),
            ("h", r * d, 2),
            ("t", r * d, 2),
            ("ctx", r * d, 2),
            ("q", if self.cross { r * d } else { 0 }, 2),
            ("qkv", r * 3 * d, 2),
            ("ffn", r * self.ffn, 2),
            ("kv", ro * 2 * d, 2),
            ("u", r * d, 2),
            ("uy", self.other_rows * self.d_other, 2),
            ("g_self", b * d, 4),
            ("g_cross", b * self.d_other, 4),
            ("context", b * self.hs, 4),
            ("flags", r, 1),
            ("scratch", r, 4),
            ("pairs_self", 2 * b * h, 4),
            ("pairs_cross", 2 * b * h, 4),
            ("count_self", 1, 4),
            ("count_cross", 1, 4),
            ("ones", b * h, 1),
            ("all_pairs", 2 * b * h, 4),
            ("all_count", 1, 4),
            ("pooled_first", b * d, 2),
            ("pooled_mean", b * d, 4),
            ("score_log", self.layers * r, 4),
            ("keep_log", self.layers * r, 1),
            ("logit_log", self.layers * 2 * b * h, 4),
            ("mask_log", self.layers * 2 * b * h, 1),
            ("ids", self.ids, 4),
            ("type_ids", self.ids, 4),
            ("pixels", self.pixels, 4),
            ("patches", self.patches, 2),
            ("patch_out", self.patch_out, 2),
            ("src", self.src, 2),
            ("pooler", self.pooler, 2),
        ]
    }

    /// Bytes of the stream's buffers.
    pub fn bytes(&self, max_batch: usize) -> usize {
        self.buffers(max_batch)
            .iter()
            .map(|&(_, n, e)| n.max(1) * e)
            .sum()
    }
}

/// The sizes of every buffer of a [`Workspace`](super::Workspace), computed
/// from the config and a [`Capacity`] without touching a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceLayout {
    /// Most sequences.
    pub max_batch: usize,
    /// One per stream.
    pub streams: Vec<StreamLayout>,
    /// Context row capacity (cross encoder), 0 otherwise.
    pub context_rows: usize,
    /// Context width (cross encoder), 0 otherwise.
    pub context_hidden: usize,
    /// Statistics slots: `[layers][streams][3][max_batch]` i32 (kept rows,
    /// active self heads, active cross heads).
    pub stats: usize,
    /// A task head's buffers, if the model has one.
    pub head: Option<HeadLayout>,
    /// A whole model's stages' layouts ([`ModelConfig::stages`]; empty for a
    /// basic model, whose buffers are the ones above).
    pub stages: Vec<WorkspaceLayout>,
}

/// A task head's buffers: features `[max_batch, F]`, two hidden buffers of
/// the same size (VQA), logits `[max_batch, outputs]` with the outputs
/// padded to a multiple of 8; all f16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    /// The feature width `F`.
    pub features: usize,
    /// The logits' width rounded up to a multiple of 8.
    pub outputs_padded: usize,
}

impl HeadLayout {
    /// (name, elements, bytes per element) of each buffer for `max_batch`.
    pub fn buffers(&self, max_batch: usize) -> Vec<(&'static str, usize, usize)> {
        let f = max_batch * self.features;
        vec![
            ("head.features", f, 2),
            ("head.h1", f, 2),
            ("head.h2", f, 2),
            ("head.logits", max_batch * self.outputs_padded, 2),
        ]
    }
}

fn fits_i32(what: &str, v: Option<usize>) -> Result<usize> {
    match v {
        Some(n) if i32::try_from(n).is_ok() => Ok(n),
        _ => Err(Error::invalid(
            OP,
            format!("{what} does not fit the kernels' 32-bit index arithmetic"),
        )),
    }
}

impl WorkspaceLayout {
    /// Sizes every buffer for `cfg` at `cap`, checking the capacity fits the
    /// kernels (batch limits, 32-bit element counts, the budget rule's
    /// longest sequence).
    pub fn new(cfg: &ModelConfig, cap: &Capacity) -> Result<Self> {
        cfg.validate()?;
        let ns = cfg.streams.len();
        let head = cfg.head.as_ref().map(|h| HeadLayout {
            features: cfg.feature_width(),
            outputs_padded: super::weights::padded(h.outputs()),
        });
        if cfg.is_composite() {
            if cap.max_seqlen.len() != ns {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "the capacity names {} streams' lengths, the model has {ns} streams",
                        cap.max_seqlen.len()
                    ),
                ));
            }
            let stages = cfg
                .stages()
                .iter()
                .map(|st| WorkspaceLayout::new(&st.config, &stage_capacity(st, cap)))
                .collect::<Result<Vec<_>>>()?;
            return Ok(WorkspaceLayout {
                max_batch: cap.max_batch,
                streams: Vec::new(),
                context_rows: 0,
                context_hidden: 0,
                stats: 0,
                head,
                stages,
            });
        }
        let b = cap.max_batch;
        if b == 0 || b > 65_535 {
            return Err(Error::invalid(
                OP,
                format!("max_batch = {b}: must be in 1..=65535"),
            ));
        }
        if cap.max_seqlen.len() != ns {
            return Err(Error::invalid(
                OP,
                format!(
                    "the capacity names {} streams' lengths, the model has {ns} streams",
                    cap.max_seqlen.len()
                ),
            ));
        }
        let is_cross_enc = matches!(cfg.kind, ModelKind::CrossEncoder { .. });
        if is_cross_enc && cap.context_max_seqlen == 0 {
            return Err(Error::invalid(
                OP,
                "a cross encoder needs a positive context_max_seqlen",
            ));
        }
        let rows: Vec<usize> = cap
            .max_seqlen
            .iter()
            .enumerate()
            .map(|(s, &m)| fits_i32(&format!("stream {s} rows"), b.checked_mul(m.max(1))))
            .collect::<Result<_>>()?;
        let (context_rows, context_hidden) = match cfg.kind {
            ModelKind::CrossEncoder { context_hidden } => (
                fits_i32(
                    "context rows",
                    b.checked_mul(cap.context_max_seqlen)
                        .and_then(|r| r.checked_mul(context_hidden))
                        .map(|_| b * cap.context_max_seqlen),
                )?,
                context_hidden,
            ),
            _ => (0, 0),
        };
        let mut streams = Vec::with_capacity(ns);
        for (s, sc) in cfg.streams.iter().enumerate() {
            if b * sc.heads > 65_535 {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "stream `{}`: max_batch * heads = {} exceeds 65535",
                        sc.name,
                        b * sc.heads
                    ),
                ));
            }
            let widest = 3 * sc.hidden.max(sc.ffn);
            fits_i32(
                &format!("stream `{}` rows x widths", sc.name),
                rows[s].checked_mul(widest),
            )?;
            let budget = sc.layers.iter().any(|l| {
                matches!(
                    l.token_pruner.as_ref().map(|t| t.rule),
                    Some(KeepRule::Budget { .. })
                )
            });
            if budget && cap.max_seqlen[s] > BUDGET_MAX_ROWS {
                return Err(Error::Unsupported {
                    op: OP,
                    message: format!(
                        "stream `{}`: the budget keep rule handles sequences of up to \
                         {BUDGET_MAX_ROWS} rows; capacity asks for {}",
                        sc.name, cap.max_seqlen[s]
                    ),
                });
            }
            let (d_other, other_rows) = match cfg.kind {
                ModelKind::Encoder | ModelKind::Blip | ModelKind::Meter => (0, 0),
                ModelKind::CoAttention => (cfg.streams[1 - s].hidden, rows[1 - s]),
                ModelKind::CrossEncoder { context_hidden } => (context_hidden, context_rows),
            };
            fits_i32(
                "other rows x width",
                other_rows.checked_mul(2 * sc.hidden.max(d_other)),
            )?;
            let hs = sc
                .layers
                .iter()
                .filter_map(|l| l.token_pruner.as_ref().map(|t| sc.token_pruner_hidden(t)))
                .max()
                .unwrap_or(0);
            let (ids, pixels, patches, patch_out) = match sc.embedding {
                EmbeddingConfig::None | EmbeddingConfig::Transform { .. } => (0, 0, 0, 0),
                EmbeddingConfig::Bert { .. } => (rows[s], 0, 0, 0),
                EmbeddingConfig::Vit {
                    image_size,
                    patch_size,
                    channels,
                    ..
                } => {
                    let np = (image_size / patch_size).pow(2);
                    let px = b.checked_mul(channels * image_size * image_size);
                    let pr = b * np;
                    (
                        0,
                        fits_i32("pixels", px)?,
                        fits_i32(
                            "patches",
                            pr.checked_mul(channels * patch_size * patch_size),
                        )?,
                        fits_i32("patch rows", pr.checked_mul(sc.hidden))?,
                    )
                }
            };
            streams.push(StreamLayout {
                ids,
                pixels,
                patches,
                patch_out,
                rows: rows[s],
                max_seqlen: cap.max_seqlen[s].max(1),
                d: sc.hidden,
                ffn: sc.ffn,
                heads: sc.heads,
                d_other,
                other_rows,
                hs,
                layers: sc.layers.len(),
                cross: cfg.is_cross(),
                src: match sc.embedding {
                    EmbeddingConfig::Transform { input_hidden, .. } => fits_i32(
                        &format!("stream `{}` input rows", sc.name),
                        rows[s].checked_mul(input_hidden),
                    )?,
                    _ => 0,
                },
                pooler: if sc.pooler { b * sc.hidden } else { 0 },
            });
        }
        let nl = cfg.streams.first().map_or(0, |s| s.layers.len());
        Ok(WorkspaceLayout {
            max_batch: b,
            streams,
            context_rows,
            context_hidden,
            stats: nl * ns * 3 * b,
            head,
            stages: Vec::new(),
        })
    }

    /// Bytes of caller memory
    /// [`Workspace::in_memory`](super::Workspace::in_memory) needs: every
    /// buffer rounded up to [`ARENA_ALIGN`] bytes (the cuBLASLt workspace,
    /// which smarttrim allocates itself, not included).
    pub fn arena_bytes(&self) -> usize {
        let b = self.max_batch;
        let shared = [
            (self.context_rows * self.context_hidden, 2),
            (b + 1, 4),
            (self.streams.len(), 4),
            (self.stats, 4),
        ];
        let head = self.head.map(|h| h.buffers(b)).unwrap_or_default();
        self.streams
            .iter()
            .flat_map(|s| s.buffers(b))
            .chain(head)
            .map(|(_, n, e)| (n, e))
            .chain(shared)
            .map(|(n, e)| align_up(n.max(1) * e))
            .sum::<usize>()
            + self.stages.iter().map(|s| s.arena_bytes()).sum::<usize>()
    }

    /// Total device bytes of the workspace.
    pub fn bytes(&self) -> usize {
        let b = self.max_batch;
        let shared = (self.context_rows * self.context_hidden).max(1) * 2
            + (b + 1) * 4
            + self.streams.len().max(1) * 4
            + self.stats.max(1) * 4;
        let head: usize = self
            .head
            .map(|h| h.buffers(b).iter().map(|&(_, n, e)| n.max(1) * e).sum())
            .unwrap_or(0);
        self.streams.iter().map(|s| s.bytes(b)).sum::<usize>()
            + shared
            + head
            + self.stages.iter().map(|s| s.bytes()).sum::<usize>()
    }
}

/// The capacity of one stage of a whole model from the whole model's: its
/// streams' lengths (a stream fed by another holds at least its source's
/// rows) and, for BLIP's text encoder, the image rows as its context.
pub(crate) fn stage_capacity(stage: &crate::spec::Stage, cap: &Capacity) -> Capacity {
    use crate::spec::StageInput;
    let len = |s: usize| cap.max_seqlen.get(s).copied().unwrap_or(0);
    Capacity {
        max_batch: cap.max_batch,
        max_seqlen: stage
            .streams
            .iter()
            .enumerate()
            .map(|(i, &s)| match &stage.input {
                StageInput::RowsFrom(srcs) => len(s).max(srcs.get(i).map_or(0, |&o| len(o))),
                _ => len(s),
            })
            .collect(),
        context_max_seqlen: match stage.input {
            StageInput::ContextFrom(src) => len(src).max(1),
            _ => cap.context_max_seqlen,
        },
    }
}

/// Alignment of every buffer carved from caller memory (and of the
/// memory itself): enough for the kernels' 16-byte vector accesses and
/// cuBLASLt's preferred alignment.
pub const ARENA_ALIGN: usize = 256;

pub(super) fn align_up(bytes: usize) -> usize {
    bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}
