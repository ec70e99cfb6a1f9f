//! Whole models on the GPU (BLIP, METER: [`crate::spec::ModelConfig::stages`])
//! and task heads.
//!
//! A whole model runs its stages one after the other on one stream, each a
//! basic model with its own workspace ([`Workspace::stages`]), exactly as a
//! basic model runs (its embeddings, pruners, layers, final LayerNorm,
//! pooling, pooler; its CUDA graph when asked for). Between stages the rows
//! stay on the device:
//!
//! - BLIP: the image encoder's final rows (after its pruning) and
//!   `cu_seqlens` are copied into the text encoder's context buffers; the
//!   host knows only a bound on their count (exact under
//!   [`super::SyncPolicy::ReadCounts`]), which sizes the cross-attention's
//!   key/value GEMMs, while every kernel reads the true counts from
//!   `cu_seqlens` on the device.
//! - METER: each unimodal encoder's final rows are copied into its fusion
//!   stream's input-transform buffer. The fusion streams' lengths must be
//!   known on the host (they size every launch of the fusion encoder): the
//!   unimodal encoders run unpruned or with budget-rule pruners
//!   ([`super::check_supported`]).
//!
//! Nothing comes back to the host until the end of the pass (besides the
//! row counts `ReadCounts` reads inside a stage), where every stage's
//! results are read after the one final wait. The task head then reads the
//! output streams' pooler outputs (or first rows) side by side
//! ([`crate::ops::copy_cols`]) and runs its GEMMs, LayerNorm and GELU on the
//! device, for basic models and whole models alike.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;

use super::forward::{
    drv, linear, pass_device_ms, upload_stream, ContextShape, Lin, PassEnd, PassShape, Source,
};
use super::input::validate_inputs;
use super::weights::{padded, DevHead, GpuModel};
use super::workspace::{HeadWs, Workspace};
use super::{GpuForwardOptions, GpuOutputs};
use crate::device::Device;
use crate::ops::{
    bias_act, copy_cols, layer_norm_ext, Act, BlasWorkspace, ColsShape, CopyColsShape,
    LayerNormExtras, LayerNormShape,
};
use crate::pass::{Inputs, Packed, StreamInput};
use crate::spec::flops::head_flops;
use crate::spec::schedule::{stream_flops_from_stats, Lengths};
use crate::spec::{SequenceFlops, StageInput};
use crate::{Error, Result};

const FWD: &str = "GpuModel::forward";

impl GpuModel {
    /// Enqueues the task head (if the model has one) on `feats`: per output
    /// stream, its `[batch, D]` features (pooler output or first rows) and
    /// `D`, concatenated into `head.features`; logits into `head.logits`
    /// (`[batch, n_pad]`).
    pub(super) fn enqueue_head(
        &self,
        dev: &Device,
        lt: &BlasWorkspace,
        hw: Option<&mut HeadWs>,
        feats: &[(&CudaSlice<f16>, usize)],
        batch: usize,
    ) -> Result<()> {
        let (Some(head), Some(hw)) = (&self.head, hw) else {
            return Ok(());
        };
        let f: usize = feats.iter().map(|&(_, d)| d).sum();
        let mut c0 = 0;
        for &(src, d) in feats {
            copy_cols(
                dev,
                CopyColsShape {
                    rows: batch,
                    n: d,
                    src_ld: d,
                    dst_ld: f,
                    dst_col: c0,
                },
                src,
                &mut hw.features,
            )?;
            c0 += d;
        }
        let n_pad = padded(self.config.head.as_ref().map_or(0, |h| h.outputs()));
        let blas = Lin {
            blas: &self.blas,
            dev,
            lt,
        };
        match head {
            DevHead::Itm { fc } => linear(
                &blas,
                batch,
                f,
                n_pad,
                &hw.features,
                fc,
                true,
                &mut hw.logits,
            ),
            DevHead::Vqa { fc1, ln, fc2, eps } => {
                linear(&blas, batch, f, f, &hw.features, fc1, true, &mut hw.h1)?;
                layer_norm_ext(
                    dev,
                    LayerNormShape {
                        rows: batch,
                        d: f,
                        eps: *eps,
                    },
                    &hw.h1,
                    &ln.gamma,
                    &ln.beta,
                    &mut hw.h2,
                    LayerNormExtras::<CudaSlice<f16>, CudaSlice<i32>> {
                        residual: None,
                        rows_dev: None,
                    },
                )?;
                bias_act(
                    dev,
                    ColsShape { rows: batch, n: f },
                    Act::Gelu,
                    &mut hw.h2,
                    None::<&CudaSlice<f16>>,
                    None::<&CudaSlice<i32>>,
                )?;
                linear(&blas, batch, f, n_pad, &hw.h2, fc2, true, &mut hw.logits)
            }
        }
    }

    /// The head's logits `[batch, outputs]` (the padding columns dropped),
    /// after the pass's final wait; `None` without a head.
    pub(super) fn read_logits(
        &self,
        dev: &Device,
        hw: Option<&HeadWs>,
        batch: usize,
    ) -> Result<Option<Vec<f32>>> {
        let (Some(h), Some(hw)) = (&self.config.head, hw) else {
            return Ok(None);
        };
        let n = h.outputs();
        let np = padded(n);
        let raw: Vec<f16> = dev
            .stream()
            .clone_dtoh(&hw.logits.slice(0..batch * np))
            .map_err(drv("reading the logits"))?;
        Ok(Some(
            raw.chunks(np)
                .flat_map(|r| r[..n].iter().map(|v| v.to_f32()))
                .collect(),
        ))
    }

    /// [`GpuModel::forward_on`] for a whole model (module docs).
    pub(super) fn forward_composite(
        &self,
        stream: &Arc<CudaStream>,
        ws: &mut Workspace,
        inputs: &Inputs,
        opts: &GpuForwardOptions,
    ) -> Result<GpuOutputs> {
        let cfg = &self.config;
        let prep = validate_inputs(cfg, &self.embeddings, inputs, Some(&ws.capacity))?;
        let dev = self.dev.on_stream(stream.clone())?;
        let batch = prep.batch;
        let stages = cfg.stages();
        let input_streams = cfg.input_streams();
        ws.events
            .0
            .record(dev.stream())
            .map_err(drv("recording the start event"))?;
        // Per whole-model stream: (stage, index in the stage).
        let mut at = vec![(0usize, 0usize); cfg.streams.len()];
        let mut runs: Vec<(PassShape, PassEnd)> = Vec::with_capacity(stages.len());
        for (k, stage) in stages.iter().enumerate() {
            for (i, &s) in stage.streams.iter().enumerate() {
                at[s] = (k, i);
            }
            let sm = &self.stages[k];
            let (done, rest) = ws.stages.split_at_mut(k);
            let Some(sws) = rest.first_mut() else {
                return Err(Error::invalid(FWD, "the workspace lacks a stage"));
            };
            let mut lengths = Vec::with_capacity(stage.streams.len());
            let mut sources = Vec::with_capacity(stage.streams.len());
            for (i, &s) in stage.streams.iter().enumerate() {
                let sc = &cfg.streams[s];
                match &stage.input {
                    StageInput::RowsFrom(srcs) => {
                        // The source's final rows, on the device, into this
                        // stream's input-transform buffer.
                        let src = srcs[i];
                        let (ks, is) = at[src];
                        let end = &runs[ks].1;
                        let lens = end.known_lengths(is).map(<[i32]>::to_vec).ok_or_else(|| {
                            Error::Unsupported {
                                op: FWD,
                                message: format!(
                                    "stream `{}` takes the rows of `{}`, whose lengths the host \
                                     does not know (threshold pruners there)",
                                    sc.name, cfg.streams[src].name
                                ),
                            }
                        })?;
                        let mut cu = vec![0i32];
                        for &n in &lens {
                            cu.push(cu[cu.len() - 1] + n.max(0));
                        }
                        let total = cu[cu.len() - 1] as usize;
                        let din = cfg.streams[src].hidden;
                        let (_, xi, _) = end.final_buffers(is);
                        let from = &done[ks].streams[is].x[xi];
                        let w = &mut sws.streams[i];
                        if from.len() < total * din
                            || w.src.len() < total * din
                            || w.orig[0].len() < total
                            || w.cu[0].len() < batch + 1
                        {
                            return Err(Error::invalid(
                                FWD,
                                format!(
                                    "stream `{}`: {total} rows do not fit its workspace",
                                    sc.name
                                ),
                            ));
                        }
                        if total > 0 {
                            let mut to = w.src.slice_mut(0..total * din);
                            dev.stream()
                                .memcpy_dtod(&from.slice(0..total * din), &mut to)
                                .map_err(drv("handing rows to the fusion encoder"))?;
                        }
                        let p = Packed::new(Vec::new(), sc.hidden, cu.clone());
                        if total > 0 {
                            dev.stream()
                                .memcpy_htod(&p.orig_index, &mut w.orig[0])
                                .map_err(drv("uploading orig_index"))?;
                        }
                        dev.stream()
                            .memcpy_htod(&cu, &mut w.cu[0])
                            .map_err(drv("uploading cu_seqlens"))?;
                        lengths.push(lens);
                        sources.push(Source::Rows);
                    }
                    StageInput::Inputs | StageInput::ContextFrom(_) => {
                        let j = input_streams.iter().position(|&x| x == s).ok_or_else(|| {
                            Error::invalid(FWD, format!("stream `{}` has no input", sc.name))
                        })?;
                        let inp = &inputs.streams[j];
                        let p = &prep.streams[s];
                        upload_stream(&dev, sc, inp, p, &mut sws.streams[i])?;
                        lengths.push(p.lengths());
                        sources.push(match inp {
                            StreamInput::Packed { .. } => Source::Rows,
                            StreamInput::Tokens { type_ids, .. } => Source::Tokens {
                                type_ids: type_ids.is_some(),
                            },
                            StreamInput::Pixels { .. } => Source::Pixels,
                        });
                    }
                }
            }
            let context = match stage.input {
                StageInput::ContextFrom(src) => {
                    // The source's final rows and cu_seqlens, on the device,
                    // into the context buffers.
                    let (ks, is) = at[src];
                    let end = &runs[ks].1;
                    let (rows, xi, ci) = end.final_buffers(is);
                    let d = cfg.streams[src].hidden;
                    let from = &done[ks].streams[is];
                    if sws.context_rows.len() < (rows * d).max(1)
                        || sws.context_cu.len() < batch + 1
                        || from.x[xi].len() < rows * d
                    {
                        return Err(Error::invalid(
                            FWD,
                            format!("{rows} context rows do not fit the text encoder's workspace"),
                        ));
                    }
                    if rows > 0 {
                        let mut to = sws.context_rows.slice_mut(0..rows * d);
                        dev.stream()
                            .memcpy_dtod(&from.x[xi].slice(0..rows * d), &mut to)
                            .map_err(drv("handing the image rows to the text encoder"))?;
                    }
                    let mut cu_to = sws.context_cu.slice_mut(0..batch + 1);
                    dev.stream()
                        .memcpy_dtod(&from.cu[ci].slice(0..batch + 1), &mut cu_to)
                        .map_err(drv("handing the image cu_seqlens to the text encoder"))?;
                    Some(ContextShape {
                        lengths: end.known_lengths(is).map(<[i32]>::to_vec),
                        rows,
                        max_seqlen: end.final_max_seqlen(is),
                        d,
                    })
                }
                _ => None,
            };
            let shape = PassShape {
                batch,
                lengths,
                context,
                sources,
            };
            sws.events
                .0
                .record(dev.stream())
                .map_err(drv("recording a stage's start event"))?;
            let end = if opts.graph {
                sm.run_graph(&dev, sws, &shape, opts)?
            } else {
                sm.enqueue(&dev, sws, &shape, opts)?
            };
            sws.events
                .1
                .record(dev.stream())
                .map_err(drv("recording a stage's end event"))?;
            runs.push((shape, end));
        }
        // The task head on the output streams' features.
        {
            let Workspace {
                stages: sws,
                head,
                blas,
                ..
            } = ws;
            let feats: Vec<(&CudaSlice<f16>, usize)> = cfg
                .output_streams()
                .into_iter()
                .map(|s| {
                    let (k, i) = at[s];
                    let w = &sws[k].streams[i];
                    let buf = if cfg.streams[s].pooler {
                        &w.pooler
                    } else {
                        &w.pooled_first
                    };
                    (buf, cfg.streams[s].hidden)
                })
                .collect();
            self.enqueue_head(&dev, blas, head.as_mut(), &feats, batch)?;
        }
        ws.events
            .1
            .record(dev.stream())
            .map_err(drv("recording the end event"))?;
        // The one wait, then every stage's results.
        dev.synchronize()?;
        let mut stage_outs = Vec::with_capacity(runs.len());
        for (k, (shape, end)) in runs.iter().enumerate() {
            stage_outs.push(self.stages[k].readback(&dev, &mut ws.stages[k], shape, end, opts)?);
        }
        let syncs = stage_outs.iter().map(|o| o.syncs).sum();
        let mut streams = Vec::with_capacity(cfg.streams.len());
        for &(k, i) in &at {
            streams.push(stage_outs[k].streams[i].clone());
        }
        // FLOPs: the whole model's accounting (a stage on its own cannot see
        // the dense pass of its source), the CPU reference's.
        let lengths = Lengths {
            streams: (0..cfg.streams.len())
                .map(|s| {
                    prep.streams[s]
                        .lengths()
                        .into_iter()
                        .map(|n| n.max(0) as usize)
                        .collect()
                })
                .collect(),
            context: None,
        };
        let stats = crate::pass::layer_stats(&streams);
        let per_stream = stream_flops_from_stats(cfg, &lengths, &stats, opts.dense)?;
        let mut flops = vec![SequenceFlops::default(); batch];
        for (so, (per_layer, seq)) in streams.iter_mut().zip(per_stream) {
            for (r, f) in so.layers.iter_mut().zip(per_layer) {
                r.flops = f;
            }
            for (t, f) in flops.iter_mut().zip(&seq) {
                t.pruned += f.pruned;
                t.dense += f.dense;
            }
            so.flops = seq;
        }
        let hf = head_flops(cfg);
        for t in &mut flops {
            t.pruned += hf;
            t.dense += hf;
        }
        let logits = self.read_logits(&dev, ws.head.as_ref(), batch)?;
        let device_ms = pass_device_ms(ws)?;
        Ok(GpuOutputs {
            streams,
            syncs,
            policy: opts.sync,
            graph: opts.graph,
            device_ms,
            flops,
            logits,
        })
    }
}
