//! Host-side input preparation: validation, embeddings (on the CPU, see the
//! module docs of [`crate::model`]) and capacity checks, all before any
//! device work.

use super::workspace::Capacity;
use crate::reference::model::{embed, Inputs};
use crate::reference::Packed;
use crate::spec::{EmbeddingWeights, ModelConfig, ModelKind};
use crate::{Error, Result};

/// Embedded, validated inputs of one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedInputs {
    /// Sequences per stream.
    pub batch: usize,
    /// One per config stream: the rows entering the first layer (f32).
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

fn check_cu(cu: &[i32], total: usize, what: &str, errs: &mut Vec<String>) {
    if cu.is_empty() || cu[0] != 0 {
        errs.push(format!("{what}: cu_seqlens must start with 0"));
    } else if cu.windows(2).any(|w| w[1] < w[0]) {
        errs.push(format!("{what}: cu_seqlens must be non-decreasing"));
    } else if cu[cu.len() - 1] as usize != total {
        errs.push(format!(
            "{what}: cu_seqlens ends at {} but there are {total} rows",
            cu[cu.len() - 1]
        ));
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
    let ns = cfg.streams.len();
    if inputs.streams.len() != ns {
        return Err(Error::Input(vec![format!(
            "{} stream inputs for a model of {ns} streams",
            inputs.streams.len()
        )]));
    }
    if embeddings.len() != ns {
        return Err(Error::Weights(vec![format!(
            "{} embeddings for a model of {ns} streams",
            embeddings.len()
        )]));
    }
    let mut errs = Vec::new();
    let mut xs = Vec::with_capacity(ns);
    for ((s, w), inp) in cfg.streams.iter().zip(embeddings).zip(&inputs.streams) {
        if let Some(p) = embed(s, w, inp, &mut errs) {
            xs.push(p);
        }
    }
    let context = match cfg.kind {
        ModelKind::CrossEncoder { context_hidden } => match &inputs.context {
            None => {
                errs.push("a cross encoder needs a context (the image rows)".into());
                None
            }
            Some((rows, cu)) => {
                let before = errs.len();
                if rows.len() % context_hidden != 0 {
                    errs.push(format!(
                        "context: {} values is not a multiple of context_hidden {context_hidden}",
                        rows.len()
                    ));
                } else {
                    check_cu(cu, rows.len() / context_hidden, "context", &mut errs);
                }
                if rows.iter().any(|x| !x.is_finite()) {
                    errs.push("context rows hold NaN or Inf".into());
                }
                (errs.len() == before)
                    .then(|| Packed::new(rows.clone(), context_hidden, cu.clone()))
            }
        },
        _ => None,
    };
    if errs.is_empty() {
        let batch = xs[0].batch();
        for (i, x) in xs.iter().enumerate().skip(1) {
            if x.batch() != batch {
                errs.push(format!(
                    "stream `{}` has batch {} but stream `{}` has {batch}",
                    cfg.streams[i].name,
                    x.batch(),
                    cfg.streams[0].name
                ));
            }
        }
        if let Some(c) = &context {
            if c.batch() != batch {
                errs.push(format!(
                    "context has batch {} but the text has {batch}",
                    c.batch()
                ));
            }
        }
        if batch == 0 {
            errs.push("the batch is empty".into());
        }
    }
    if !errs.is_empty() {
        return Err(Error::Input(errs));
    }
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
