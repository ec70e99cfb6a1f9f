//! Pruning schedules described on the config alone, and the model FLOPs of a
//! pass computed from its row and head counts (no model run needed).
//!
//! - [`flops_from_stats`]: the per-sequence FLOPs ([`SequenceFlops`], the
//!   accounting of [`super::flops`]) of a pass, from the rows entering the
//!   first layer and the per-layer statistics the passes report
//!   (`reference::Outputs::stats`, `model::GpuOutputs::stats`), through
//!   [`super::flops::stream_flops`] (which both passes use for the FLOPs
//!   they report), so a run's FLOPs can be checked against its statistics.
//! - [`budget_config`]: every token pruner of a config switched to the budget
//!   rule with one common `rho`, **every head pruner removed**. The rows a
//!   budget pruner keeps, `k = max(1, ceil(rho * n))`, depend on the length
//!   `n` alone, so with no head pruner the whole pass's work is a pure
//!   function of the input lengths: [`budget_stats`] predicts its
//!   statistics and [`budget_flops`] its FLOPs on the host, without running
//!   the model.
//! - [`solve_rho`]: the common `rho` whose model FLOPs, as a fraction of the
//!   dense pass, come closest to a target, by bisection (the ratio is a
//!   non-decreasing step function of `rho`); an unreachable target gives
//!   the closest reachable ratio and says so ([`RhoFit::reachable`]).

use super::config::{KeepRule, LayerConfig, ModelConfig, ModelKind, StageInput};
use super::flops::{head_flops, stream_flops, LayerRun};
use super::SequenceFlops;
use crate::{Error, Result};

/// Statistics of one layer of one stream, per sequence: (kept rows, active
/// self-attention heads, active cross-attention heads). The same type as
/// `pass::LayerStats`; a pass's statistics are indexed
/// `[layer][stream]`.
pub type LayerStats = (Vec<i32>, Vec<i32>, Vec<i32>);

/// Rows entering the first layer of every stream, per sequence, and the
/// rows of a cross encoder's context per sequence (`None` for other models).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lengths {
    /// One entry per config stream: the length of each sequence.
    pub streams: Vec<Vec<usize>>,
    /// A cross encoder's context length per sequence.
    pub context: Option<Vec<usize>>,
}

impl Lengths {
    /// Every sequence of stream `s` has `per_stream[s]` rows; a cross
    /// encoder's context has `context` rows per sequence.
    pub fn uniform(per_stream: &[usize], context: Option<usize>, batch: usize) -> Self {
        Lengths {
            streams: per_stream.iter().map(|&n| vec![n; batch]).collect(),
            context: context.map(|c| vec![c; batch]),
        }
    }

    /// Sequences per stream (of the first stream).
    pub fn batch(&self) -> usize {
        self.streams.first().map_or(0, |s| s.len())
    }

    fn check(&self, cfg: &ModelConfig, op: &'static str) -> Result<usize> {
        let batch = self.batch();
        if self.streams.len() != cfg.streams.len() {
            return Err(Error::invalid(
                op,
                format!(
                    "lengths of {} streams for a model of {}",
                    self.streams.len(),
                    cfg.streams.len()
                ),
            ));
        }
        if self.streams.iter().any(|s| s.len() != batch) {
            return Err(Error::invalid(op, "streams have different batch sizes"));
        }
        match (&cfg.kind, &self.context) {
            (ModelKind::CrossEncoder { .. }, Some(c)) if c.len() == batch => {}
            (ModelKind::CrossEncoder { .. }, _) => {
                return Err(Error::invalid(
                    op,
                    "a cross encoder needs one context length per sequence",
                ))
            }
            _ => {}
        }
        Ok(batch)
    }
}

/// The per-sequence model and executed FLOPs (pruned, and dense) of a pass
/// over inputs of `lengths` whose per-layer statistics are `stats`
/// (`[layer][stream]`, the shape of `reference::Outputs::stats`: as many
/// layers as the deepest stream, empty entries for a stream past its last
/// layer), with the accounting of [`super::flops`]: embeddings, layers,
/// poolers, the task head, and the cost of every pruner of `cfg` that ran
/// (none when `dense`).
///
/// In a whole model ([`ModelConfig::stages`]) a stream fed by another
/// (METER's fusion streams, BLIP's text context) sees the rows its source
/// kept; its entry in `lengths` is not used.
///
/// This is exactly what the CPU reference reports in `Outputs::flops` when
/// the weights hold every pruner the config names (as weights built for the
/// config always do). Statistics of the wrong shape, or kept rows above the
/// rows entering, are an [`Error::InvalidArgument`].
pub fn flops_from_stats(
    cfg: &ModelConfig,
    lengths: &Lengths,
    stats: &[Vec<LayerStats>],
    dense: bool,
) -> Result<Vec<SequenceFlops>> {
    let per_stream = stream_flops_from_stats(cfg, lengths, stats, dense)?;
    let mut out = vec![SequenceFlops::default(); lengths.batch()];
    for (_, seq) in &per_stream {
        for (t, f) in out.iter_mut().zip(seq) {
            t.pruned += f.pruned;
            t.dense += f.dense;
        }
    }
    let hf = head_flops(cfg);
    for t in &mut out {
        t.pruned += hf;
        t.dense += hf;
    }
    Ok(out)
}

/// Per config stream, what [`flops_from_stats`] sums: the per-layer,
/// per-sequence FLOPs and the stream's per-sequence totals (embedding and
/// pooler included, the task head not), as
/// [`super::flops::stream_flops`] gives them.
pub fn stream_flops_from_stats(
    cfg: &ModelConfig,
    lengths: &Lengths,
    stats: &[Vec<LayerStats>],
    dense: bool,
) -> Result<StreamFlops> {
    const OP: &str = "flops_from_stats";
    let batch = lengths.check(cfg, OP)?;
    let ns = cfg.streams.len();
    let nl = cfg.max_layers();
    if stats.len() != nl {
        return Err(Error::invalid(
            OP,
            format!("statistics of {} layers for a model of {nl}", stats.len()),
        ));
    }
    for (l, row) in stats.iter().enumerate() {
        let bad = row.len() != ns
            || row.iter().zip(&cfg.streams).any(|((k, a, c), sc)| {
                let want = if l < sc.layers.len() { batch } else { 0 };
                k.len() != want || a.len() != want || c.len() != want
            });
        if bad {
            return Err(Error::invalid(
                OP,
                format!(
                    "statistics of layer {l} do not hold {ns} streams of {batch} sequences \
                     (empty past a stream's last layer)"
                ),
            ));
        }
    }
    let as_i32 = |v: &[usize]| v.iter().map(|&n| n as i32).collect::<Vec<i32>>();
    // Per whole-model stream: rows entering its first layer (this pass and
    // the dense pass), and its final rows (this pass).
    let mut entering: Vec<Vec<i32>> = lengths.streams.iter().map(|v| as_i32(v)).collect();
    let mut dense_in: Vec<Vec<i32>> = entering.clone();
    let final_rows = |s: usize, entering: &[Vec<i32>]| -> Vec<i32> {
        match cfg.streams[s].layers.len() {
            0 => entering[s].clone(),
            n => stats[n - 1][s].0.clone(),
        }
    };
    let context = lengths.context.as_deref().map(as_i32);
    let mut out: StreamFlops = vec![(Vec::new(), Vec::new()); ns];
    for stage in cfg.stages() {
        if let StageInput::RowsFrom(srcs) = &stage.input {
            for (&s, &src) in stage.streams.iter().zip(srcs) {
                entering[s] = final_rows(src, &entering);
                dense_in[s] = dense_in[src].clone();
            }
        }
        let (ctx, dense_ctx) = match &stage.input {
            StageInput::ContextFrom(src) => (
                Some(final_rows(*src, &entering)),
                Some(dense_in[*src].clone()),
            ),
            _ => (context.clone(), context.clone()),
        };
        for (i, &s) in stage.streams.iter().enumerate() {
            let sc = &cfg.streams[s];
            let other = stage
                .streams
                .get(1 - i.min(1))
                .copied()
                .filter(|_| stage.streams.len() == 2);
            // Rows entering each layer: the first layer's, then each layer's kept rows.
            let mut rows_in = Vec::with_capacity(sc.layers.len());
            let mut cur = entering[s].clone();
            for (l, row) in stats.iter().enumerate().take(sc.layers.len()) {
                if let Some(b) = (0..batch).find(|&b| row[s].0[b].max(0) > cur[b]) {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "stream `{}` layer {l} sequence {b}: {} rows kept of {} entering",
                            sc.name, row[s].0[b], cur[b]
                        ),
                    ));
                }
                rows_in.push(std::mem::replace(&mut cur, row[s].0.clone()));
            }
            let runs: Vec<LayerRun> = sc
                .layers
                .iter()
                .zip(stats)
                .zip(&rows_in)
                .map(|((lc, row), r_in)| LayerRun {
                    ran: if dense {
                        LayerConfig::default()
                    } else {
                        lc.clone()
                    },
                    rows_in: r_in,
                    kept: &row[s].0,
                    active_self_heads: &row[s].1,
                    active_cross_heads: &row[s].2,
                    other_rows: match stage.config.kind {
                        ModelKind::CoAttention => other.map(|o| &row[o].0[..]),
                        ModelKind::CrossEncoder { .. } => ctx.as_deref(),
                        _ => None,
                    },
                })
                .collect();
            let other_initial = match stage.config.kind {
                ModelKind::CoAttention => other.map(|o| dense_in[o].clone()),
                ModelKind::CrossEncoder { .. } => dense_ctx.clone(),
                _ => None,
            };
            out[s] = stream_flops(
                sc,
                cfg.other_hidden(s),
                &runs,
                &dense_in[s],
                other_initial.as_deref(),
            );
        }
    }
    Ok(out)
}

/// Per config stream: per layer the per-sequence [`super::Flops`], and the
/// stream's per-sequence totals.
pub type StreamFlops = Vec<(Vec<Vec<super::Flops>>, Vec<SequenceFlops>)>;

/// `cfg` with every token pruner switched to the budget rule with `rho`
/// (`keep_first` and widths unchanged) and every head pruner removed.
pub fn budget_config(cfg: &ModelConfig, rho: f32) -> ModelConfig {
    let mut c = cfg.clone();
    for s in &mut c.streams {
        for l in &mut s.layers {
            if let Some(tp) = &mut l.token_pruner {
                tp.rule = KeepRule::Budget { rho };
            }
            l.self_head_pruner = None;
            l.cross_head_pruner = None;
        }
    }
    c
}

/// `cfg` with no pruner at all.
pub fn without_pruners(cfg: &ModelConfig) -> ModelConfig {
    let mut c = cfg.clone();
    for s in &mut c.streams {
        for l in &mut s.layers {
            *l = LayerConfig::default();
        }
    }
    c
}

/// Whether the work of a pass of `cfg` is known from the input lengths
/// alone: every token pruner uses the budget rule and there is no head
/// pruner.
pub fn is_length_determined(cfg: &ModelConfig) -> bool {
    cfg.streams.iter().flat_map(|s| &s.layers).all(|l| {
        l.self_head_pruner.is_none()
            && l.cross_head_pruner.is_none()
            && l.token_pruner
                .as_ref()
                .is_none_or(|t| matches!(t.rule, KeepRule::Budget { .. }))
    })
}

/// The statistics (`[layer][stream]`, as `reference::Outputs::stats`) a
/// pass of `cfg` will report for inputs of `lengths`, when that is a pure
/// function of the lengths ([`is_length_determined`]); otherwise an
/// [`Error::InvalidArgument`] naming the pruner that depends on the data.
pub fn budget_stats(cfg: &ModelConfig, lengths: &Lengths) -> Result<Vec<Vec<LayerStats>>> {
    const OP: &str = "budget_stats";
    cfg.validate()?;
    let batch = lengths.check(cfg, OP)?;
    let ns = cfg.streams.len();
    let nl = cfg.max_layers();
    // Rows entering each stream's first layer; a derived stream's are its
    // source's final rows.
    let mut entering: Vec<Vec<usize>> = lengths.streams.clone();
    let mut finals: Vec<Vec<usize>> = vec![Vec::new(); ns];
    let mut per_stream: Vec<Vec<LayerStats>> = vec![Vec::new(); ns];
    for stage in cfg.stages() {
        if let StageInput::RowsFrom(srcs) = &stage.input {
            for (&s, &src) in stage.streams.iter().zip(srcs) {
                entering[s] = finals[src].clone();
            }
        }
        for &s in &stage.streams {
            let sc = &cfg.streams[s];
            let mut rows = entering[s].clone();
            for (l, lc) in sc.layers.iter().enumerate() {
                if lc.self_head_pruner.is_some() || lc.cross_head_pruner.is_some() {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "stream `{}` layer {l} has a head pruner: its work depends on the data",
                            sc.name
                        ),
                    ));
                }
                let kept: Vec<usize> = match &lc.token_pruner {
                    None => rows.clone(),
                    Some(tp) => match tp.rule {
                        KeepRule::Budget { .. } => {
                            rows.iter().map(|&n| tp.rule.budget(n)).collect()
                        }
                        KeepRule::Threshold { .. } => {
                            return Err(Error::invalid(
                                OP,
                                format!(
                                    "stream `{}` layer {l} has a threshold token pruner: its work \
                                     depends on the data",
                                    sc.name
                                ),
                            ))
                        }
                    },
                };
                let heads = sc.heads as i32;
                let cross = if cfg.stream_is_cross(s) { heads } else { 0 };
                per_stream[s].push((
                    kept.iter().map(|&k| k as i32).collect(),
                    vec![heads; batch],
                    vec![cross; batch],
                ));
                rows = kept;
            }
            finals[s] = rows;
        }
    }
    Ok((0..nl)
        .map(|l| {
            per_stream
                .iter()
                .map(|v| {
                    v.get(l)
                        .cloned()
                        .unwrap_or_else(|| (Vec::new(), Vec::new(), Vec::new()))
                })
                .collect()
        })
        .collect())
}

/// The per-sequence FLOPs of a pass of `cfg` over inputs of `lengths`,
/// computed on the host ([`budget_stats`] then [`flops_from_stats`]); only
/// for configs whose work the lengths determine ([`is_length_determined`]).
pub fn budget_flops(cfg: &ModelConfig, lengths: &Lengths) -> Result<Vec<SequenceFlops>> {
    let stats = budget_stats(cfg, lengths)?;
    flops_from_stats(cfg, lengths, &stats, false)
}

/// Model FLOPs of the pruned pass over model FLOPs of the dense pass, summed
/// over sequences (1.0 for an empty batch).
pub fn model_flops_ratio(flops: &[SequenceFlops]) -> f64 {
    let (p, d) = flops.iter().fold((0u64, 0u64), |a, f| {
        (a.0 + f.pruned.model, a.1 + f.dense.model)
    });
    if d == 0 {
        1.0
    } else {
        p as f64 / d as f64
    }
}

/// The result of [`solve_rho`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RhoFit {
    /// The budget fraction chosen.
    pub rho: f32,
    /// The model FLOPs ratio (pruned / dense) it gives.
    pub flops_ratio: f64,
    /// The ratio asked for.
    pub target: f64,
    /// Whether the target lies within the reachable range
    /// `[ratio(rho -> 0), ratio(rho = 1)]`. When it does not, `rho` is the end
    /// of the range nearest the target.
    pub reachable: bool,
    /// The lowest reachable ratio (every pruner keeping one row).
    pub min_ratio: f64,
    /// The highest reachable ratio (`rho = 1`: every row kept, the pruners
    /// still paid for).
    pub max_ratio: f64,
}

/// The smallest `rho` tried: small enough that every budget is one row for
/// any sequence shorter than a million rows.
pub const RHO_MIN: f32 = 1e-6;

/// The common budget `rho` for every token pruner of `cfg` (switched to the
/// budget rule, head pruners removed: [`budget_config`]) whose model FLOPs
/// over the dense pass's come closest to `target`, for inputs of
/// `lengths`.
///
/// The ratio is a non-decreasing step function of `rho` (more rows kept at a
/// layer never means fewer entering the next). Bisection on `rho` in
/// `[RHO_MIN, 1]` keeps `ratio(lo) < target <= ratio(hi)` and stops when the
/// two are adjacent `f32` values (at most a few dozen steps, never an
/// unbounded loop); the closer of the two steps is returned. A target
/// outside the reachable range returns the nearest end with
/// `reachable: false`. A non-finite target is an [`Error::InvalidArgument`].
pub fn solve_rho(cfg: &ModelConfig, lengths: &Lengths, target: f64) -> Result<RhoFit> {
    if !target.is_finite() {
        return Err(Error::invalid(
            "solve_rho",
            format!("target {target} is not finite"),
        ));
    }
    let ratio = |rho: f32| -> Result<f64> {
        Ok(model_flops_ratio(&budget_flops(
            &budget_config(cfg, rho),
            lengths,
        )?))
    };
    let (mut lo, mut hi) = (RHO_MIN, 1.0f32);
    let (min_ratio, max_ratio) = (ratio(lo)?, ratio(hi)?);
    let fit = |rho: f32, flops_ratio: f64, reachable: bool| RhoFit {
        rho,
        flops_ratio,
        target,
        reachable,
        min_ratio,
        max_ratio,
    };
    if target <= min_ratio {
        return Ok(fit(lo, min_ratio, target == min_ratio));
    }
    if target >= max_ratio {
        return Ok(fit(hi, max_ratio, target == max_ratio));
    }
    // Invariant: ratio(lo) < target <= ratio(hi).
    let (mut r_lo, mut r_hi) = (min_ratio, max_ratio);
    for _ in 0..200 {
        let mid = lo + (hi - lo) / 2.0;
        if mid <= lo || mid >= hi {
            break;
        }
        let r = ratio(mid)?;
        if r < target {
            lo = mid;
            r_lo = r;
        } else {
            hi = mid;
            r_hi = r;
        }
    }
    Ok(if target - r_lo < r_hi - target {
        fit(lo, r_lo, true)
    } else {
        fit(hi, r_hi, true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::preset;

    #[test]
    fn budget_stats_follow_the_lengths() {
        let cfg = budget_config(&preset("tiny-meter").unwrap(), 0.5);
        let lengths = Lengths {
            streams: vec![vec![7, 1, 0], vec![17, 17, 3]],
            context: None,
        };
        let st = budget_stats(&cfg, &lengths).unwrap();
        assert_eq!(st.len(), 3);
        // layer 0: no pruner; layers 1 and 2 halve (rounded up).
        assert_eq!(st[0][0].0, vec![7, 1, 0]);
        assert_eq!(st[1][0].0, vec![4, 1, 0]);
        assert_eq!(st[2][0].0, vec![2, 1, 0]);
        assert_eq!(st[2][1].0, vec![5, 5, 1]);
        assert_eq!(st[1][1].1, vec![4; 3]);
        assert_eq!(st[1][1].2, vec![4; 3]);
    }

    #[test]
    fn data_dependent_pruners_are_refused() {
        let cfg = preset("tiny-meter").unwrap();
        assert!(!is_length_determined(&cfg));
        let l = Lengths::uniform(&[5, 17], None, 2);
        let e = budget_stats(&cfg, &l).unwrap_err().to_string();
        assert!(e.contains("head pruner"), "{e}");
        let mut c = budget_config(&cfg, 0.5);
        assert!(is_length_determined(&c));
        c.streams[0].layers[1].token_pruner.as_mut().unwrap().rule =
            KeepRule::Threshold { tau: 0.5 };
        let e = budget_stats(&c, &l).unwrap_err().to_string();
        assert!(e.contains("threshold"), "{e}");
    }

    #[test]
    fn dense_stats_give_ratio_one() {
        let cfg = without_pruners(&preset("meter").unwrap());
        let l = Lengths::uniform(&[40, 577], None, 2);
        let f = budget_flops(&cfg, &l).unwrap();
        assert_eq!(model_flops_ratio(&f), 1.0);
        assert!(f.iter().all(|s| s.pruned == s.dense));
    }

    #[test]
    fn ratio_is_monotone_in_rho() {
        let cfg = preset("meter").unwrap();
        let l = Lengths::uniform(&[40, 577], None, 1);
        let mut last = 0.0;
        for i in 1..=20 {
            let r = model_flops_ratio(
                &budget_flops(&budget_config(&cfg, i as f32 / 20.0), &l).unwrap(),
            );
            assert!(r >= last, "rho {}: {r} < {last}", i as f32 / 20.0);
            last = r;
        }
        // rho = 1 keeps every row and still pays for the pruners.
        assert!(last > 1.0 && last < 1.05, "{last}");
    }

    #[test]
    fn solve_rho_hits_reachable_targets() {
        for (name, lens, ctx) in [
            ("meter", vec![40, 577], None),
            ("blip-vit", vec![577], None),
        ] {
            let cfg = preset(name).unwrap();
            let l = Lengths::uniform(&lens, ctx, 1);
            for target in [0.7, 0.5] {
                let fit = solve_rho(&cfg, &l, target).unwrap();
                assert!(fit.reachable, "{name} {target}: {fit:?}");
                assert!(
                    (fit.flops_ratio - target).abs() < 0.01,
                    "{name} {target}: {fit:?}"
                );
                let again =
                    model_flops_ratio(&budget_flops(&budget_config(&cfg, fit.rho), &l).unwrap());
                assert_eq!(again, fit.flops_ratio);
            }
        }
    }

    #[test]
    fn unreachable_targets_give_the_nearest_end() {
        // blip-vit prunes from layer 3 on: layers 0-2 alone are 3/12 of the
        // dense work, so 0.1 cannot be reached.
        let cfg = preset("blip-vit").unwrap();
        let l = Lengths::uniform(&[577], None, 1);
        let fit = solve_rho(&cfg, &l, 0.1).unwrap();
        assert!(!fit.reachable);
        assert_eq!(fit.rho, RHO_MIN);
        assert_eq!(fit.flops_ratio, fit.min_ratio);
        assert!(fit.min_ratio > 0.25, "{fit:?}");
        let fit = solve_rho(&cfg, &l, 1.5).unwrap();
        assert!(!fit.reachable);
        assert_eq!(fit.rho, 1.0);
        // no token pruner at all: every rho gives the same ratio.
        let fit = solve_rho(&preset("bert-base").unwrap(), &l, 0.5).unwrap();
        assert!(!fit.reachable);
        assert_eq!(fit.flops_ratio, 1.0);
        assert!(solve_rho(&cfg, &l, f64::NAN).is_err());
        // BLIP's text encoder: the cross-attention keys and values over the
        // fixed 577-row image context are never pruned.
        let cfg = preset("blip-text").unwrap();
        let l = Lengths::uniform(&[40], Some(577), 1);
        let fit = solve_rho(&cfg, &l, 0.5).unwrap();
        assert!(!fit.reachable && fit.min_ratio > 0.7, "{fit:?}");
    }

    #[test]
    fn stats_of_the_wrong_shape_are_refused() {
        let cfg = budget_config(&preset("tiny-vit").unwrap(), 0.5);
        let l = Lengths::uniform(&[17], None, 2);
        let mut st = budget_stats(&cfg, &l).unwrap();
        st[1][0].0[0] = 18;
        assert!(flops_from_stats(&cfg, &l, &st, false).is_err());
        st.pop();
        assert!(flops_from_stats(&cfg, &l, &st, false).is_err());
        let bad = Lengths::uniform(&[17, 3], None, 2);
        assert!(budget_stats(&cfg, &bad).is_err());
    }
}
