//! Host-side input preparation: validation, embeddings (on the CPU, see the
//! module docs of [`crate::model`]) and capacity checks, all before any
//! device work.

use super::layout::Capacity;
use crate::pass::{check_inputs, embed_inputs, Inputs, Packed};
use crate::spec::{EmbeddingWeights, ModelConfig};
use crate::{Error, Result};

/// Embedded, validated inputs of one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedInputs {
    /// Sequences per stream.
    pub batch: usize,
    /// One per config stream: the rows entering the first layer (f32; a
    /// whole model's streams fed by another stream have no rows here, only
    /// their source's `cu_seqlens`, and BLIP's text encoder no context).
    pub streams: Vec<Packed>,
    /// A cross encoder's fixed context.
    pub context: Option<Packed>,
}

impl PreparedInputs {
    /// The longest sequence of stream `s`.
    pub fn max_seqlen(&self, s: usize) -> usize {
        self.streams[s]
            .lengths()
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(0) as usize
    }
}

/// Validates `inputs` against the model (the same checks as the CPU
/// reference, reported together in one [`Error::Input`]), embeds them on the
/// host, and, when a `capacity` is given, checks they fit it (batch and every
/// sequence's length; [`Error::InvalidArgument`] otherwise). Needs no GPU.
pub fn prepare_inputs(
    cfg: &ModelConfig,
    embeddings: &[EmbeddingWeights],
    inputs: &Inputs,
    capacity: Option<&Capacity>,
) -> Result<PreparedInputs> {
    prepare(cfg, embeddings, inputs, capacity, true)
}

/// [`prepare_inputs`] without the host embedding: the same validation and
/// capacity checks, with token and pixel streams' `rows` left empty (the
/// GPU pass embeds them on the device) — cheap enough to size a
/// [`Capacity`] with ([`Capacity::for_inputs`]).
pub fn validate_inputs(
    cfg: &ModelConfig,
    embeddings: &[EmbeddingWeights],
    inputs: &Inputs,
    capacity: Option<&Capacity>,
) -> Result<PreparedInputs> {
    prepare(cfg, embeddings, inputs, capacity, false)
}

fn prepare(
    cfg: &ModelConfig,
    embeddings: &[EmbeddingWeights],
    inputs: &Inputs,
    capacity: Option<&Capacity>,
    embed: bool,
) -> Result<PreparedInputs> {
    let embeddings: Vec<&EmbeddingWeights> = embeddings.iter().collect();
    let (xs, context) = if embed {
        embed_inputs(cfg, &embeddings, inputs)?
    } else {
        check_inputs(cfg, &embeddings, inputs)?
    };
    // Batch agreement across streams is checked by the reference's
    // validation; an empty batch is valid on the CPU but has no work for
    // the device.
    if xs[0].batch() == 0 {
        return Err(Error::Input(vec!["the batch is empty".into()]));
    }
    // A whole model: the inputs are its input streams'; a stream fed by
    // another gets its source's lengths (a bound: the source may prune).
    let xs = if cfg.is_composite() {
        let mut all: Vec<Option<Packed>> = vec![None; cfg.streams.len()];
        for (&s, x) in cfg.input_streams().iter().zip(xs) {
            all[s] = Some(x);
        }
        for stage in cfg.stages() {
            if let crate::spec::StageInput::RowsFrom(srcs) = &stage.input {
                for (&s, &src) in stage.streams.iter().zip(srcs) {
                    let cu = all[src]
                        .as_ref()
                        .map_or_else(|| vec![0], |p| p.cu_seqlens.clone());
                    all[s] = Some(Packed::new(Vec::new(), cfg.streams[s].hidden, cu));
                }
            }
        }
        all.into_iter()
            .map(|p| p.unwrap_or_else(|| Packed::new(Vec::new(), 1, vec![0])))
            .collect()
    } else {
        xs
    };
    let prep = PreparedInputs {
        batch: xs[0].batch(),
        streams: xs,
        context,
    };
    if let Some(cap) = capacity {
        cap.check_fits(cfg, &prep)?;
    }
    Ok(prep)
}
