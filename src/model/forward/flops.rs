//! FLOPs accounting of a GPU pass: the CPU reference's accounting
//! ([`stream_flops`]) applied to the pass's statistics.

use super::super::weights::GpuModel;
use super::shape::PassShape;
use crate::pass::StreamOutput;
use crate::spec::flops::{stream_flops, LayerRun};
use crate::spec::{LayerConfig, ModelKind, SequenceFlops};

impl GpuModel {
    /// Fills in the FLOPs of every layer and stream from the pass's
    /// statistics (the CPU reference's accounting, [`stream_flops`]) and
    /// returns the per-sequence totals over streams.
    pub(super) fn account_flops(
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
}
