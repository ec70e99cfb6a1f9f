//! Seeded synthetic inputs for any config: what the demo, the benches and the
//! tests feed a model when no real data is at hand.
//!
//! Lengths per stream: a ViT stream takes `batch` random images (its row
//! count follows from the config); a BERT stream takes random token ids; a
//! stream without embedding takes random rows, `N(0, 1)`. Default lengths are
//! METER's VQA shapes: 40 rows for the first stream (text), 577 for the
//! second (image); a BLIP cross encoder's context is 577 rows. Whole models
//! (BLIP, METER) get inputs for their input streams only. With
//! `ragged`, sequence `b > 0` of a text-like stream gets a length drawn
//! between half and all of the default, so batches are ragged.

use crate::pass::{Inputs, StreamInput};
use crate::spec::Rng;
use crate::spec::{EmbeddingConfig, ModelConfig, ModelKind};

/// Text-like streams' default length (METER VQA questions).
pub const TEXT_ROWS: usize = 40;
/// Image-like streams' default length (ViT-B/16 at 384 px: 24 x 24 + CLS).
pub const IMAGE_ROWS: usize = 577;

/// Seeded random inputs for `config`, `batch` sequences per stream.
pub fn synthetic_inputs(config: &ModelConfig, batch: usize, seed: u64, ragged: bool) -> Inputs {
    let mut rng = Rng::new(seed ^ 0x5EED_1A7A);
    let lengths = |default: usize, rng: &mut Rng| -> Vec<usize> {
        (0..batch)
            .map(|b| {
                if ragged && b > 0 && default > 2 {
                    let lo = default / 2;
                    lo + (rng.next_u64() as usize) % (default - lo + 1)
                } else {
                    default
                }
            })
            .collect()
    };
    let cu = |lens: &[usize]| -> Vec<i32> {
        let mut cu = vec![0i32];
        for &l in lens {
            cu.push(cu[cu.len() - 1] + l as i32);
        }
        cu
    };
    let streams = config
        .input_streams()
        .into_iter()
        .filter_map(|i| config.streams.get(i).map(|s| (i, s)))
        .map(|(i, s)| match &s.embedding {
            EmbeddingConfig::Vit {
                image_size,
                channels,
                ..
            } => StreamInput::Pixels {
                pixels: (0..batch * channels * image_size * image_size)
                    .map(|_| rng.normal())
                    .collect(),
                batch,
            },
            EmbeddingConfig::Bert { vocab_size, .. } => {
                let lens = lengths(TEXT_ROWS, &mut rng);
                let total: usize = lens.iter().sum();
                StreamInput::Tokens {
                    ids: (0..total)
                        .map(|_| (rng.next_u64() % *vocab_size as u64) as u32)
                        .collect(),
                    type_ids: None,
                    cu_seqlens: cu(&lens),
                }
            }
            EmbeddingConfig::None | EmbeddingConfig::Transform { .. } => {
                let default = if i == 0 { TEXT_ROWS } else { IMAGE_ROWS };
                let lens = if i == 0 {
                    lengths(default, &mut rng)
                } else {
                    vec![default; batch]
                };
                let total: usize = lens.iter().sum();
                let width = s.embedding.input_width(s.hidden).unwrap_or(s.hidden);
                StreamInput::Packed {
                    rows: (0..total * width).map(|_| rng.normal()).collect(),
                    cu_seqlens: cu(&lens),
                }
            }
        })
        .collect();
    let context = match config.kind {
        ModelKind::CrossEncoder { context_hidden } => {
            let lens = vec![IMAGE_ROWS; batch];
            let total = IMAGE_ROWS * batch;
            Some((
                (0..total * context_hidden).map(|_| rng.normal()).collect(),
                cu(&lens),
            ))
        }
        _ => None,
    };
    Inputs { streams, context }
}
