//! What the host knows of a pass: the shape of its inputs ([`PassShape`],
//! which sizes the launches and keys a CUDA graph), where each stream stands
//! as the pass proceeds ([`Cur`]: current buffers, row bounds, updated by
//! [`after_pruning`]), and the state the pass ends in ([`PassEnd`]).

use super::super::input::PreparedInputs;
use crate::pass::{Inputs, StreamInput};
use crate::spec::KeepRule;

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
    pub(super) fn of(prep: &PreparedInputs, inputs: &Inputs) -> Self {
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
    pub(super) cur: Vec<Cur>,
    /// Per stream: the `x` buffer holding the final rows.
    pub(super) fin: Vec<usize>,
    /// `[layer][stream]` -> (token pruner, self head pruner, cross head
    /// pruner) ran.
    pub(super) ran: Vec<Vec<[bool; 3]>>,
    /// Blocking host waits inside the pass.
    pub(super) syncs: usize,
    /// Per stream: every sequence's final length, when the host knows it
    /// (no pruner, or budget-rule pruners only).
    pub(super) known: Vec<Option<Vec<i32>>>,
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

/// Updates the host's view of stream rows after a token pruner with `rule`
/// compacted them: exact counts when the sequence lengths are known and the
/// rule is the budget rule (`k = max(1, ceil(rho n))` per sequence, the
/// same f32 arithmetic as the kernel), otherwise bounds (a budget step on
/// unknown lengths keeps at most `ceil(rho n) + 1` rows of each sequence,
/// the `+ 1` covering f32 rounding in `ceil`; a threshold step may keep
/// all). Returns whether the counts are exact.
pub(super) fn after_pruning(
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
pub(super) struct Cur {
    /// Current rows buffer (`x[x]`).
    pub(super) x: usize,
    /// Current `cu_seqlens` / `orig_index` buffers.
    pub(super) c: usize,
    /// Host row count: exact under `ReadCounts`, the unpruned total under
    /// `UpperBound`.
    pub(super) rows: usize,
    /// The unpruned longest sequence.
    pub(super) max_len: usize,
}

impl Cur {
    /// Host bound on any sequence's length, never above the rows present.
    pub(super) fn max_seqlen(&self) -> usize {
        self.max_len.min(self.rows)
    }
}
