//! The order of a pass on the device ([`GpuModel::enqueue`]): the embeddings,
//! then at every layer the token pruners on the entering rows, the
//! compaction of every pruned stream (and, under
//! [`SyncPolicy::ReadCounts`], the one wait for data-dependent row counts),
//! the head pruners on the compacted rows and the layer itself; then the
//! final LayerNorm and pooling. The same order as the CPU reference.

use cudarc::driver::CudaSlice;
use half::f16;

use super::super::weights::GpuModel;
use super::super::workspace::Workspace;
use super::super::{GpuForwardOptions, SyncPolicy};
use super::buffers::{head_off, other_of, pair, split, stat_off};
use super::launch::{drv, linear, ln, ln_dev, Lin};
use super::layer::Heads;
use super::pruners::{pruner_input, run_head_pruner};
use super::shape::{after_pruning, Cur, PassEnd, PassShape};
use crate::device::Device;
use crate::ops::{
    bias_act, build_active_heads, compact, first_token, mean_pool, token_scores, Act,
    BlasWorkspace, ColsShape, CompactInputs, CompactOutputs, CompactShape, KeepRuleDev, PoolOut,
    PoolShape, TokenPrunerDev, TokenScoreOutputs, TokenScoreWorkspace,
};
use crate::spec::KeepRule;
use crate::{Error, Result};

impl GpuModel {
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
}
