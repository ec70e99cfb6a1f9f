//! The readback: the one wait at the end of a pass, then the results copied
//! to the host and turned into the CPU reference's records (per layer and
//! sequence: rows entering and kept, active heads, scores, keep flags, head
//! logits and masks).

use half::f16;

use super::super::weights::GpuModel;
use super::super::workspace::Workspace;
use super::super::{GpuForwardOptions, GpuOutputs};
use super::buffers::{head_off, stat_off};
use super::launch::drv;
use super::shape::{PassEnd, PassShape};
use crate::device::Device;
use crate::pass::{HeadRecord, LayerRecord, Packed, StreamOutput};
use crate::{Error, Result};

/// One layer of one stream: per sequence, rows entering and kept, active
/// self- and cross-attention heads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerCounts {
    pub(crate) rows_in: Vec<i32>,
    pub(crate) kept: Vec<i32>,
    pub(crate) active_self_heads: Vec<i32>,
    pub(crate) active_cross_heads: Vec<i32>,
}

impl GpuModel {
    /// Copies a finished pass's results to the host (the caller has waited
    /// for the pass: the copies run on the idle stream).
    pub(in crate::model) fn readback(
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
        Ok(GpuOutputs {
            // The caller times the whole pass (a whole model's stages are
            // not timed one by one): pass_device_ms.
            device_ms: 0.0,
            streams: outs,
            syncs: end.syncs,
            policy: opts.sync,
            graph: opts.graph,
            flops,
            logits: None,
        })
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
}

/// The device time between a pass's start and end events (both complete:
/// the caller has waited for the pass).
pub(in crate::model) fn pass_device_ms(ws: &Workspace) -> Result<f32> {
    ws.events
        .0
        .elapsed_ms(&ws.events.1)
        .map_err(drv("reading the pass's device time"))
}
