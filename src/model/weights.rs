//! The model's weights on the device (f16, uploaded once) and the check that
//! the kernels support a config.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;

use crate::device::Device;
use crate::ops::score::{HEAD_MAX_HEADS, HEAD_MAX_HIDDEN, HEAD_MAX_IN, SCORE_TILE};
use crate::ops::Blas;
use crate::spec::{
    EmbeddingConfig, EmbeddingWeights, HeadConfig, HeadPrunerWeights, HeadWeights, KeepRule,
    LayerNormWeights, Linear, ModelConfig, ModelKind, StageInput, TokenPrunerWeights, Weights,
};
use crate::{Error, Result};

const OP: &str = "GpuModel";

fn unsupported(message: String) -> Error {
    Error::Unsupported { op: OP, message }
}

/// Checks that the GPU kernels support every part of `cfg` (needs no GPU):
/// head size 16, 32 or 64; hidden, FFN and context widths multiples of 8; for
/// token pruners, `D` and the hidden width `Hs` multiples of 64; for head
/// pruners, hidden width a multiple of 8 up to 4096, at most 64 heads and
/// `D + D_other` up to 4096. Anything else is [`Error::Unsupported`].
pub fn check_supported(cfg: &ModelConfig) -> Result<()> {
    cfg.validate()?;
    let mut errs = Vec::new();
    if cfg.is_composite() {
        // Every stage is a basic model the same checks cover; what the
        // composition adds: the rows a stage hands on stay on the device,
        // and METER's fusion streams need their rows' lengths on the host.
        for stage in cfg.stages() {
            match check_supported(&stage.config) {
                Ok(()) => {}
                Err(Error::Unsupported { message, .. }) => errs.push(message),
                Err(e) => errs.push(e.to_string()),
            }
            if let StageInput::RowsFrom(srcs) = &stage.input {
                for &src in srcs {
                    let thr = cfg.streams[src].layers.iter().any(|l| {
                        matches!(
                            l.token_pruner.as_ref().map(|t| t.rule),
                            Some(KeepRule::Threshold { .. })
                        )
                    });
                    if thr {
                        errs.push(format!(
                            "stream `{}` feeds a fusion stream: its lengths must be known on the \
                             host, so its token pruners must use the budget rule (threshold \
                             pruners there are not supported on the GPU)",
                            cfg.streams[src].name
                        ));
                    }
                }
            }
        }
    }
    if let Some(h) = &cfg.head {
        let f = cfg.feature_width();
        if f % 8 != 0 {
            errs.push(format!(
                "task head {h:?}: its input width {f} must be a multiple of 8"
            ));
        }
    }
    for sc in &cfg.streams {
        if let EmbeddingConfig::Transform { input_hidden, .. } = sc.embedding {
            if input_hidden % 8 != 0 {
                errs.push(format!(
                    "stream `{}`: input transform width {input_hidden} must be a multiple of 8",
                    sc.name
                ));
            }
        }
    }
    if cfg.is_composite() {
        return if errs.is_empty() {
            Ok(())
        } else {
            Err(unsupported(errs.join("; ")))
        };
    }
    if let ModelKind::CrossEncoder { context_hidden } = cfg.kind {
        if context_hidden % 8 != 0 {
            errs.push(format!(
                "context_hidden = {context_hidden}: must be a multiple of 8"
            ));
        }
    }
    for (s, sc) in cfg.streams.iter().enumerate() {
        let n = &sc.name;
        let dh = sc.head_dim();
        if ![16, 32, 64].contains(&dh) {
            errs.push(format!(
                "stream `{n}`: head size {} / {} = {dh}; the attention kernel handles 16, 32 and 64",
                sc.hidden, sc.heads
            ));
        }
        if sc.hidden % 8 != 0 || sc.ffn % 8 != 0 {
            errs.push(format!(
                "stream `{n}`: hidden {} and ffn {} must be multiples of 8",
                sc.hidden, sc.ffn
            ));
        }
        // The embedding kernels' own limits (e.g. a ViT patch width C*p*p
        // that is a multiple of 8), checked on a one-sequence shape.
        let embed_check = match sc.embedding {
            EmbeddingConfig::None | EmbeddingConfig::Transform { .. } => Ok(()),
            EmbeddingConfig::Bert { .. } => {
                crate::ops::BertEmbedShape::from_stream(sc, 1, 1).map(|_| ())
            }
            EmbeddingConfig::Vit { .. } => {
                crate::ops::VitEmbedShape::from_stream(sc, 1).and_then(|v| v.validate())
            }
        };
        if let Err(e) = embed_check {
            errs.push(format!("stream `{n}`: embedding: {e}"));
        }
        let d_other = cfg.other_hidden(s).unwrap_or(0);
        for (l, lc) in sc.layers.iter().enumerate() {
            if let Some(tp) = &lc.token_pruner {
                let hs = sc.token_pruner_hidden(tp);
                if sc.hidden % SCORE_TILE != 0 || hs % SCORE_TILE != 0 {
                    errs.push(format!(
                        "stream `{n}` layer {l}: the fused token scorer needs hidden ({}) and \
                         pruner width ({hs}) multiples of {SCORE_TILE}",
                        sc.hidden
                    ));
                }
            }
            for hp in [&lc.self_head_pruner, &lc.cross_head_pruner]
                .into_iter()
                .flatten()
            {
                let hh = sc.head_pruner_hidden(hp);
                if hh % 8 != 0 || hh > HEAD_MAX_HIDDEN {
                    errs.push(format!(
                        "stream `{n}` layer {l}: head pruner width {hh} must be a multiple of 8 \
                         up to {HEAD_MAX_HIDDEN}"
                    ));
                }
                if sc.heads > HEAD_MAX_HEADS || sc.hidden + d_other > HEAD_MAX_IN {
                    errs.push(format!(
                        "stream `{n}` layer {l}: the head pruner handles up to {HEAD_MAX_HEADS} \
                         heads and D + D_other up to {HEAD_MAX_IN}"
                    ));
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(unsupported(errs.join("; ")))
    }
}

pub(crate) struct DevLinear {
    pub(crate) w: CudaSlice<f16>,
    pub(crate) b: CudaSlice<f16>,
}

pub(crate) struct DevLn {
    pub(crate) gamma: CudaSlice<f16>,
    pub(crate) beta: CudaSlice<f16>,
}

pub(crate) struct DevTokenPruner {
    pub(crate) ln_p: DevLn,
    pub(crate) ln_c: Option<DevLn>,
    pub(crate) w1x: CudaSlice<f16>,
    pub(crate) w1s: CudaSlice<f16>,
    pub(crate) w1c: Option<CudaSlice<f16>>,
    pub(crate) b1: CudaSlice<f16>,
    pub(crate) w2: CudaSlice<f16>,
    pub(crate) b2: f32,
    pub(crate) hs: usize,
    pub(crate) d_other: Option<usize>,
}

pub(crate) struct DevHeadPruner {
    pub(crate) ln_h: DevLn,
    pub(crate) ln_hc: Option<DevLn>,
    pub(crate) w1: CudaSlice<f16>,
    pub(crate) b1: CudaSlice<f16>,
    pub(crate) w2: CudaSlice<f16>,
    pub(crate) b2: CudaSlice<f16>,
    pub(crate) hh: usize,
    pub(crate) d_other: Option<usize>,
}

pub(crate) struct DevCross {
    pub(crate) q: DevLinear,
    pub(crate) kv: DevLinear,
    pub(crate) out: DevLinear,
    pub(crate) ln: DevLn,
    pub(crate) head_pruner: Option<DevHeadPruner>,
}

pub(crate) struct DevLayer {
    pub(crate) token_pruner: Option<DevTokenPruner>,
    pub(crate) qkv: DevLinear,
    pub(crate) self_out: DevLinear,
    pub(crate) self_ln: DevLn,
    pub(crate) self_head_pruner: Option<DevHeadPruner>,
    pub(crate) cross: Option<DevCross>,
    pub(crate) fc1: DevLinear,
    pub(crate) fc2: DevLinear,
    pub(crate) ffn_ln: DevLn,
}

/// A stream's embedding tables on the device.
pub(crate) enum DevEmbedding {
    /// Packed rows are the input.
    None,
    /// ViT: patch projection `[D, C*P*P]` (+ bias), CLS `[D]`, positions
    /// `[N, D]`.
    Vit {
        patch: DevLinear,
        /// Whether `patch.b` is a real bias (CLIP's projection has none).
        patch_bias: bool,
        cls: CudaSlice<f16>,
        position: CudaSlice<f16>,
        /// CLIP's `ln_pre` on the assembled rows.
        ln: Option<DevLn>,
    },
    /// BERT: word, position and type tables `[_, D]` and the embedding LN
    /// (without token types, one zero row).
    Bert {
        word: CudaSlice<f16>,
        position: CudaSlice<f16>,
        token_type: CudaSlice<f16>,
        ln: DevLn,
    },
    /// An input transform `W x + (b + type_vector)` (`W` `[D, D_in]`; the
    /// modality-type vector folded into the bias at upload, in f32).
    Transform { w: DevLinear, input_hidden: usize },
}

pub(crate) struct DevStream {
    pub(crate) embedding: DevEmbedding,
    pub(crate) layers: Vec<DevLayer>,
    pub(crate) final_ln: Option<DevLn>,
    /// `tanh(W x_0 + b)` on the final first row.
    pub(crate) pooler: Option<DevLinear>,
}

/// A task head on the device. Output widths that are not multiples of 8
/// (ITM's 2, VQA's 3129) are padded with zero rows of the last linear's
/// weight and bias to a multiple of 8 ([`padded`]); the padding columns are
/// dropped on the host.
// One per model: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum DevHead {
    Itm {
        fc: DevLinear,
    },
    Vqa {
        fc1: DevLinear,
        ln: DevLn,
        fc2: DevLinear,
        eps: f32,
    },
}

/// Output width rounded up to a multiple of 8.
pub(crate) fn padded(n: usize) -> usize {
    n.div_ceil(8) * 8
}

struct Uploader<'a> {
    stream: &'a Arc<CudaStream>,
    bytes: usize,
}

impl Uploader<'_> {
    fn vec(&mut self, v: &[f32]) -> Result<CudaSlice<f16>> {
        let h: Vec<f16> = if v.is_empty() {
            vec![f16::ZERO]
        } else {
            v.iter().map(|&x| f16::from_f32(x)).collect()
        };
        self.bytes += h.len() * 2;
        self.stream
            .clone_htod(&h)
            .map_err(|e| Error::driver("uploading weights", e))
    }
    fn linear(&mut self, l: &Linear) -> Result<DevLinear> {
        Ok(DevLinear {
            w: self.vec(&l.weight)?,
            b: self.vec(&l.bias)?,
        })
    }
    fn ln(&mut self, l: &LayerNormWeights) -> Result<DevLn> {
        Ok(DevLn {
            gamma: self.vec(&l.gamma)?,
            beta: self.vec(&l.beta)?,
        })
    }
    fn ln_opt(&mut self, g: &Option<Vec<f32>>, b: &Option<Vec<f32>>) -> Result<Option<DevLn>> {
        match (g, b) {
            (Some(g), Some(b)) => Ok(Some(DevLn {
                gamma: self.vec(g)?,
                beta: self.vec(b)?,
            })),
            _ => Ok(None),
        }
    }
    fn token(&mut self, t: &TokenPrunerWeights) -> Result<DevTokenPruner> {
        Ok(DevTokenPruner {
            ln_p: DevLn {
                gamma: self.vec(&t.ln_p_gamma)?,
                beta: self.vec(&t.ln_p_beta)?,
            },
            ln_c: self.ln_opt(&t.ln_c_gamma, &t.ln_c_beta)?,
            w1x: self.vec(&t.w1x)?,
            w1s: self.vec(&t.w1s)?,
            w1c: t.w1c.as_ref().map(|w| self.vec(w)).transpose()?,
            b1: self.vec(&t.b1)?,
            w2: self.vec(&t.w2)?,
            b2: t.b2,
            hs: t.hs,
            d_other: t.d_other,
        })
    }
    fn embedding(&mut self, e: &EmbeddingWeights) -> Result<DevEmbedding> {
        Ok(match e {
            EmbeddingWeights::None => DevEmbedding::None,
            EmbeddingWeights::Vit {
                patch,
                cls,
                position,
                ln,
            } => DevEmbedding::Vit {
                patch: self.linear(patch)?,
                patch_bias: !patch.bias.is_empty(),
                cls: self.vec(cls)?,
                position: self.vec(position)?,
                ln: ln.as_ref().map(|l| self.ln(l)).transpose()?,
            },
            EmbeddingWeights::Transform {
                transform,
                type_vector,
            } => {
                let mut b = transform.bias.clone();
                if let Some(t) = type_vector {
                    for (x, y) in b.iter_mut().zip(t) {
                        *x += y;
                    }
                }
                DevEmbedding::Transform {
                    w: DevLinear {
                        w: self.vec(&transform.weight)?,
                        b: self.vec(&b)?,
                    },
                    input_hidden: transform.inp,
                }
            }
            EmbeddingWeights::Bert {
                word,
                position,
                token_type,
                ln,
            } => DevEmbedding::Bert {
                word: self.vec(word)?,
                position: self.vec(position)?,
                token_type: if token_type.is_empty() {
                    // No token types: one zero row, never indexed past.
                    self.vec(&vec![0.0; ln.gamma.len()])?
                } else {
                    self.vec(token_type)?
                },
                ln: self.ln(ln)?,
            },
        })
    }
    /// A linear whose output rows are padded with zeros to `n_pad`.
    fn linear_padded(&mut self, l: &Linear, n_pad: usize) -> Result<DevLinear> {
        let mut w = l.weight.clone();
        w.resize(n_pad * l.inp, 0.0);
        let mut b = l.bias.clone();
        b.resize(n_pad, 0.0);
        Ok(DevLinear {
            w: self.vec(&w)?,
            b: self.vec(&b)?,
        })
    }
    fn task_head(&mut self, cfg: &HeadConfig, h: &HeadWeights) -> Result<DevHead> {
        Ok(match (cfg, h) {
            (HeadConfig::Vqa { ln_eps, .. }, HeadWeights::Vqa { fc1, ln, fc2 }) => DevHead::Vqa {
                fc1: self.linear(fc1)?,
                ln: self.ln(ln)?,
                fc2: self.linear_padded(fc2, padded(fc2.out))?,
                eps: *ln_eps,
            },
            (_, HeadWeights::Itm { fc }) => DevHead::Itm {
                fc: self.linear_padded(fc, padded(fc.out))?,
            },
            (HeadConfig::Itm, HeadWeights::Vqa { .. }) => {
                return Err(Error::Weights(vec![
                    "the head weights are VQA's but the config asks for ITM".into(),
                ]))
            }
        })
    }
    fn head(&mut self, h: &HeadPrunerWeights) -> Result<DevHeadPruner> {
        Ok(DevHeadPruner {
            ln_h: DevLn {
                gamma: self.vec(&h.ln_h_gamma)?,
                beta: self.vec(&h.ln_h_beta)?,
            },
            ln_hc: self.ln_opt(&h.ln_hc_gamma, &h.ln_hc_beta)?,
            w1: self.vec(&h.w1)?,
            b1: self.vec(&h.b1)?,
            w2: self.vec(&h.w2)?,
            b2: self.vec(&h.b2)?,
            hh: h.hh,
            d_other: h.d_other,
        })
    }
}

/// A model on the GPU: its config, its weights as f16 device buffers
/// (uploaded once), its host-side embedding weights (embeddings run on the
/// host, see [`crate::model`]), and a cuBLASLt handle on the device's stream.
pub struct GpuModel {
    /// Unique per model built in this process (keys the CUDA graphs a
    /// workspace caches, which hold this model's weight pointers).
    pub(crate) id: u64,
    pub(crate) dev: Device,
    pub(crate) blas: Blas,
    pub(crate) config: ModelConfig,
    pub(crate) embeddings: Vec<EmbeddingWeights>,
    /// A basic model's streams (empty for a whole model).
    pub(crate) streams: Vec<DevStream>,
    /// A whole model's stages, each a basic model on the same device and
    /// stream ([`ModelConfig::stages`]); empty for a basic model.
    pub(crate) stages: Vec<GpuModel>,
    /// The task head, if the config has one.
    pub(crate) head: Option<DevHead>,
    weight_bytes: usize,
    /// CUDA graphs of the caller's that hold this model's weight addresses
    /// (see [`GpuModel::graph_pins`]).
    pub(crate) pins: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        // Every pass ordered the model's stream after itself (PassScope), so
        // the weights' frees, enqueued there, follow every pass. A weight a
        // caller's graph still reads is leaked instead (graph_pins).
        if crate::device::settled_pins(&self.pins) > 0 {
            std::mem::forget(std::mem::take(&mut self.streams));
            std::mem::forget(self.head.take());
            for s in &self.stages {
                s.pins.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("kind", &self.config.kind)
            .field("streams", &self.config.streams.len())
            .field("weight_bytes", &self.weight_bytes)
            .finish()
    }
}

impl GpuModel {
    /// Checks the weights and that the kernels support the model
    /// ([`check_supported`]), then uploads every weight once as f16 on
    /// `dev`'s stream (the model shares that stream) and loads every kernel
    /// module ([`Device::load_all_modules`]), so no pass loads one — in
    /// particular none recorded into a caller's CUDA graph.
    pub fn new(dev: &Device, weights: &Weights) -> Result<Self> {
        let cfg = &weights.config;
        cfg.validate()?;
        if weights.streams.len() != cfg.streams.len() {
            return Err(Error::Weights(vec![format!(
                "weights hold {} streams, config {}",
                weights.streams.len(),
                cfg.streams.len()
            )]));
        }
        weights.check()?;
        check_supported(cfg)?;
        let dev = dev.on_stream(dev.stream().clone())?;
        // Weights carry no cudarc ordering events: they are written once here
        // (completed before `new` returns) and only read afterwards, from any
        // stream and inside CUDA-graph captures.
        let probe = dev.on_stream(dev.stream().clone())?;
        let model = probe.untracked(|| upload_model(dev, weights, cfg))?;
        model.dev.load_all_modules()?;
        Ok(model)
    }
}

static NEXT_MODEL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn upload_model(dev: Device, weights: &Weights, cfg: &ModelConfig) -> Result<GpuModel> {
    {
        // The handle alone: every pass brings its workspace's cuBLASLt
        // workspace.
        let blas = Blas::handle_only()?;
        let mut up = Uploader {
            stream: dev.stream(),
            bytes: 0,
        };
        // A whole model: one basic model per stage (its streams' weights),
        // then the head here.
        let mut stages = Vec::new();
        if cfg.is_composite() {
            for stage in cfg.stages() {
                let sw = Weights {
                    config: stage.config.clone(),
                    streams: stage
                        .streams
                        .iter()
                        .map(|&s| weights.streams[s].clone())
                        .collect(),
                    head: None,
                };
                let sdev = dev.on_stream(dev.stream().clone())?;
                stages.push(upload_model(sdev, &sw, &stage.config)?);
            }
        }
        let head = match (&cfg.head, weights.head.as_deref()) {
            (Some(hc), Some(hw)) => Some(up.task_head(hc, hw)?),
            _ => None,
        };
        let mut streams = Vec::with_capacity(weights.streams.len());
        let basic: &[crate::spec::StreamWeights] = if cfg.is_composite() {
            &[]
        } else {
            &weights.streams
        };
        for sw in basic {
            let mut layers = Vec::with_capacity(sw.layers.len());
            for lw in &sw.layers {
                layers.push(DevLayer {
                    token_pruner: lw.token_pruner.as_ref().map(|t| up.token(t)).transpose()?,
                    qkv: up.linear(&lw.self_attn.qkv)?,
                    self_out: up.linear(&lw.self_attn.out)?,
                    self_ln: up.ln(&lw.self_attn.ln)?,
                    self_head_pruner: lw
                        .self_attn
                        .head_pruner
                        .as_ref()
                        .map(|h| up.head(h))
                        .transpose()?,
                    cross: match &lw.cross_attn {
                        Some(c) => Some(DevCross {
                            q: up.linear(&c.q)?,
                            kv: up.linear(&c.kv)?,
                            out: up.linear(&c.out)?,
                            ln: up.ln(&c.ln)?,
                            head_pruner: c.head_pruner.as_ref().map(|h| up.head(h)).transpose()?,
                        }),
                        None => None,
                    },
                    fc1: up.linear(&lw.ffn.fc1)?,
                    fc2: up.linear(&lw.ffn.fc2)?,
                    ffn_ln: up.ln(&lw.ffn.ln)?,
                });
            }
            streams.push(DevStream {
                embedding: up.embedding(&sw.embeddings)?,
                layers,
                final_ln: sw.final_ln.as_ref().map(|l| up.ln(l)).transpose()?,
                pooler: sw.pooler.as_ref().map(|p| up.linear(p)).transpose()?,
            });
        }
        let weight_bytes = up.bytes + stages.iter().map(|s| s.weight_bytes).sum::<usize>();
        // The uploads are asynchronous from pageable memory; wait once so a
        // pass on another stream never reads a weight still in flight.
        dev.synchronize()?;
        Ok(GpuModel {
            id: NEXT_MODEL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            blas,
            config: cfg.clone(),
            embeddings: weights
                .streams
                .iter()
                .map(|s| s.embeddings.clone())
                .collect(),
            streams,
            stages,
            head,
            weight_bytes,
            dev,
            pins: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }
}

impl GpuModel {
    /// CUDA graphs of the caller's that still hold this model's weight
    /// addresses: each [`GpuModel::forward_device`] recorded inside the
    /// caller's stream capture pins the model (and the workspace) to that
    /// graph until the graph and every executable graph made from it are
    /// destroyed (the driver says so a moment after the destroy). Dropping
    /// a pinned model waits up to 200 ms for that, then leaks its weights
    /// rather than free memory a graph may still read.
    pub fn graph_pins(&self) -> usize {
        self.pins.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device (sharing the stream of the one given to [`GpuModel::new`]).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Bytes of f16 weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
}

/// A variant of `cfg` the kernels support, for small test models such as the
/// `tiny-*` presets: a stream whose head size is below 32 gets
/// `hidden / 32` heads (head size 32), and every token pruner's hidden width
/// is rounded up to a multiple of 64. Everything else is unchanged (so
/// [`check_supported`] may still reject it, e.g. for a hidden size that is
/// not a multiple of 64 with token pruners).
pub fn gpu_variant(cfg: &ModelConfig) -> ModelConfig {
    let mut c = cfg.clone();
    for s in &mut c.streams {
        if s.heads > 0 && s.hidden / s.heads < 32 && s.hidden % 32 == 0 && s.hidden >= 32 {
            s.heads = s.hidden / 32;
        }
        let hidden = s.hidden;
        for l in &mut s.layers {
            if let Some(tp) = &mut l.token_pruner {
                let hs = tp.hidden.unwrap_or(hidden / 2);
                tp.hidden = Some(hs.div_ceil(SCORE_TILE).max(1) * SCORE_TILE);
            }
            for hp in [&mut l.self_head_pruner, &mut l.cross_head_pruner]
                .into_iter()
                .flatten()
            {
                hp.min_heads = hp.min_heads.min(s.heads);
            }
        }
    }
    c
}
