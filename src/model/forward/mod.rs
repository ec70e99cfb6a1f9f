//! [`GpuModel::forward`]: the pruned pass on the device, in the reference's
//! order (module docs of [`crate::model`]), one concern per file:
//!
//! - this file: the entry points ([`GpuModel::forward`],
//!   [`GpuModel::forward_on`], [`GpuModel::graph_capturable`]);
//! - [`shape`]: what the host knows of a pass (its input shape, row bounds,
//!   where it ends);
//! - [`upload`]: the inputs into the workspace's first buffers;
//! - [`order`]: the order of the pass (embeddings, then per layer token
//!   pruners, compaction, head pruners, the layer; final LN and pooling);
//! - [`embed`](mod@embed): the embedding step on the device;
//! - [`pruners`]: what a pruner scores, and the head-pruner step;
//! - [`layer`]: one layer's launches;
//! - [`buffers`]: how the pass finds its buffers in the workspace;
//! - [`launch`]: launch helpers (driver errors, linear, LayerNorm);
//! - [`graph`]: the CUDA graph cache (capture once per shape, replay);
//! - [`readback`]: a finished pass's results on the host;
//! - [`flops`]: FLOPs accounting from the pass's statistics.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;

use super::input::validate_inputs;
use super::layout::WorkspaceLayout;
use super::weights::GpuModel;
use super::workspace::{PassScope, Workspace};
use super::{GpuForwardOptions, GpuOutputs, SyncPolicy};
use crate::device::Device;
use crate::pass::Inputs;
use crate::spec::KeepRule;
use crate::{Error, Result};

mod buffers;
mod embed;
mod flops;
mod graph;
mod launch;
mod layer;
mod order;
mod pruners;
mod readback;
mod shape;
mod upload;

pub(in crate::model) use launch::{drv, linear, Lin};
pub(in crate::model) use readback::pass_device_ms;
pub(crate) use shape::{ContextShape, PassEnd, PassShape, Source};
pub(in crate::model) use upload::upload_stream;

use upload::upload;

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
        if **ws.stream.context() != **self.dev.context() {
            return Err(Error::invalid(
                "GpuModel::forward",
                "the workspace was made for a model on another device (CUDA context)",
            ));
        }
        // The workspace's own stream: passes of one model on several
        // threads (each with its workspace) never share a stream.
        let stream = ws.stream.clone();
        self.forward_on(&stream, ws, inputs, opts)
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
    /// ([`GpuModel::graph_capturable`]); so are a workspace of another CUDA
    /// context and a stream being captured into a CUDA graph (this call
    /// copies host buffers, which a capture cannot record: record
    /// [`GpuModel::forward_device`] instead). A pass waits for the
    /// workspace's previous pass, whatever stream that ran on, and the
    /// workspace's and the model's memory are freed only after the last
    /// pass ([`Workspace`]'s drop).
    pub fn forward_on(
        &self,
        stream: &Arc<CudaStream>,
        ws: &mut Workspace,
        inputs: &Inputs,
        opts: &GpuForwardOptions,
    ) -> Result<GpuOutputs> {
        const FWD: &str = "GpuModel::forward";
        let cfg = &self.config;
        let dev = self.dev.on_stream(stream.clone())?;
        if dev.is_capturing()? {
            return Err(Error::invalid(
                FWD,
                "the stream is being captured into a CUDA graph: this call uploads host \
                 buffers, which a capture cannot record; record GpuModel::forward_device \
                 (device buffers) instead",
            ));
        }
        // Both kinds of model: the workspace must be this model's, and a
        // graph needs a pass without host waits (checked before anything is
        // enqueued).
        if WorkspaceLayout::new(cfg, &ws.capacity)? != ws.layout
            || ws.stages.len() != self.stages.len()
        {
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
        let scope = PassScope::begin(ws, stream, false)?;
        let out = if cfg.is_composite() {
            self.forward_composite(stream, ws, inputs, opts)?
        } else {
            self.forward_basic(&dev, ws, inputs, opts)?
        };
        scope.finish()?;
        Ok(out)
    }

    /// [`GpuModel::forward_on`] for a basic model (one stage).
    fn forward_basic(
        &self,
        dev: &Device,
        ws: &mut Workspace,
        inputs: &Inputs,
        opts: &GpuForwardOptions,
    ) -> Result<GpuOutputs> {
        let cfg = &self.config;
        let prep = validate_inputs(cfg, &self.embeddings, inputs, Some(&ws.capacity))?;
        let shape = PassShape::of(&prep, inputs);
        upload(dev, cfg, ws, inputs, &prep)?;
        ws.events
            .0
            .record(dev.stream())
            .map_err(drv("recording the start event"))?;
        let end = if opts.graph {
            self.run_graph(dev, ws, &shape, opts)?
        } else {
            self.enqueue(dev, ws, &shape, opts)?
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
            self.enqueue_head(dev, blas, head.as_mut(), &feats, shape.batch)?;
        }
        ws.events
            .1
            .record(dev.stream())
            .map_err(drv("recording the end event"))?;
        // The one wait at the end, then copies from the idle stream.
        dev.synchronize()?;
        let mut out = self.readback(dev, ws, &shape, &end, opts)?;
        out.device_ms = pass_device_ms(ws)?;
        out.logits = self.read_logits(dev, ws.head.as_ref(), shape.batch)?;
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
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::buffers::{head_off, pair, stat_off};
    use super::shape::Cur;
    use super::upload::to_f16;

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
