//! Embeddings on the device (kernels/embed.cu via `ops::embed`) against the
//! CPU reference's `reference::model::embed`, on fresh random tables and
//! inputs: BERT (offset 0 and RoBERTa's 2, with and without type ids, ragged
//! batches with lengths 1, 2, 31, 40 and an empty sequence), and ViT (32 px
//! images in 8 px patches — the vector path — and 4 px patches — the
//! per-column path — and 384 px in 16 px patches). Outputs are poisoned
//! (NaN rows, `i32::MIN` indices) first. Tables are rounded through f16, so
//! both sides see the device's values; ViT pixels stay f32 on the reference
//! side (the device rounds them to f16 in the patch rows).

use cudarc::driver::DevicePtr;
use smarttrim::ops::embed::{
    bert_embed, check_bert_ids, vit_embed, BertEmbedInputs, BertEmbedOutputs, BertEmbedShape,
    BertEmbedTables, VitEmbedOutputs, VitEmbedScratch, VitEmbedShape, VitEmbedWeights,
};
use smarttrim::ops::Blas;
use smarttrim::reference::model::embed;
use smarttrim::reference::{Packed, StreamInput};
use smarttrim::spec::{EmbeddingConfig, EmbeddingWeights, LayerNormWeights, Linear, StreamConfig};

use crate::common::*;

const TOL: f64 = 1e-2;

fn stream_config(d: usize, embedding: EmbeddingConfig) -> StreamConfig {
    StreamConfig {
        name: "s".into(),
        hidden: d,
        heads: 1,
        ffn: 4 * d,
        ln_eps: 1e-12,
        pre_ln: false,
        final_ln: false,
        activation: Default::default(),
        pooler: false,
        embedding,
        layers: Vec::new(),
    }
}

fn reference_embed(sc: &StreamConfig, w: &EmbeddingWeights, input: &StreamInput) -> Packed {
    let mut errs = Vec::new();
    embed(sc, w, input, &mut errs).unwrap_or_else(|| panic!("reference rejected input: {errs:?}"))
}

#[test]
fn bert_embed_matches_reference() {
    let Some(dev) = device("bert_embed_matches_reference") else {
        return;
    };
    let stream = dev.stream().clone();
    let mut rng = Rng::new(41);
    let length_sets: [&[usize]; 6] = [&[1], &[2], &[31], &[40], &[1, 2, 31, 40], &[40, 0, 3, 1]];
    let (vocab, max_positions, ntypes) = (1000usize, 64usize, 2usize);
    for &(d, position_offset, with_types) in &[
        (384usize, 0usize, true),
        (384, 2, false),
        (768, 0, false),
        (64, 2, true),
    ] {
        let sc = stream_config(
            d,
            EmbeddingConfig::Bert {
                vocab_size: vocab,
                max_positions,
                type_vocab_size: ntypes,
                position_offset,
            },
        );
        let word = round_f16(&rng.normals(vocab * d, 1.0, 0.0));
        let position = round_f16(&rng.normals(max_positions * d, 0.5, 0.0));
        let token_type = round_f16(&rng.normals(ntypes * d, 0.3, 0.0));
        let gamma = round_f16(&rng.normals(d, 0.2, 1.0));
        let beta = round_f16(&rng.normals(d, 0.2, 0.0));
        let word_d = stream.clone_htod(&to_f16(&word)).unwrap();
        let pos_d = stream.clone_htod(&to_f16(&position)).unwrap();
        let type_d = stream.clone_htod(&to_f16(&token_type)).unwrap();
        let gamma_d = stream.clone_htod(&to_f16(&gamma)).unwrap();
        let beta_d = stream.clone_htod(&to_f16(&beta)).unwrap();
        let w = EmbeddingWeights::Bert {
            word,
            position,
            token_type,
            ln: LayerNormWeights { gamma, beta },
        };
        for lens in length_sets {
            let cu = cu_of(lens);
            let total = *cu.last().unwrap() as usize;
            let batch = lens.len();
            let ids: Vec<u32> = (0..total)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect();
            let type_ids: Option<Vec<u32>> = with_types.then(|| {
                (0..total)
                    .map(|_| (rng.next_u64() % ntypes as u64) as u32)
                    .collect()
            });
            let want = reference_embed(
                &sc,
                &w,
                &StreamInput::Tokens {
                    ids: ids.clone(),
                    type_ids: type_ids.clone(),
                    cu_seqlens: cu.clone(),
                },
            );
            let shape = BertEmbedShape::from_stream(&sc, batch, total).unwrap();
            check_bert_ids(&shape, &ids, type_ids.as_deref(), &cu).unwrap();
            let ids_d = stream.clone_htod(&ids).unwrap();
            let types_d = type_ids.as_ref().map(|t| stream.clone_htod(t).unwrap());
            let cu_d = stream.clone_htod(&cu).unwrap();
            let mut out_d = stream.clone_htod(&nan_f16(total * d)).unwrap();
            let mut orig_d = stream.clone_htod(&vec![i32::MIN; total]).unwrap();
            bert_embed(
                &dev,
                shape,
                BertEmbedInputs {
                    ids: &ids_d,
                    type_ids: types_d.as_ref().map(|t| t as &dyn DevicePtr<u32>),
                    cu_seqlens: &cu_d,
                },
                BertEmbedTables {
                    word: &word_d,
                    position: &pos_d,
                    token_type: &type_d,
                    gamma: &gamma_d,
                    beta: &beta_d,
                },
                BertEmbedOutputs {
                    rows: &mut out_d,
                    orig_index: &mut orig_d,
                },
            )
            .unwrap();
            let got = from_f16(&stream.clone_dtoh(&out_d).unwrap());
            let err = rel_err(&got, &want.rows);
            println!(
                "bert_embed d={d} offset={position_offset} types={with_types} lens={lens:?}: rel err {err:.2e}"
            );
            assert!(err < TOL, "d={d} lens={lens:?}: rel err {err:.2e}");
            assert_eq!(
                stream.clone_dtoh(&orig_d).unwrap(),
                want.orig_index,
                "d={d} lens={lens:?}: orig_index"
            );
        }
    }
}

/// With a host row bound past the device `cu_seqlens[batch]`, the rows past
/// the device total stay untouched (NaN / sentinel).
#[test]
fn bert_embed_leaves_rows_past_the_device_total() {
    let Some(dev) = device("bert_embed_leaves_rows_past_the_device_total") else {
        return;
    };
    let stream = dev.stream().clone();
    let mut rng = Rng::new(42);
    let (d, vocab, max_positions, bound) = (128usize, 50usize, 16usize, 20usize);
    let cu = cu_of(&[3, 5]);
    let total = 8usize;
    let mut ids: Vec<u32> = (0..bound)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    ids[total..].iter_mut().for_each(|x| *x = 0);
    let word = stream
        .clone_htod(&to_f16(&rng.normals(vocab * d, 1.0, 0.0)))
        .unwrap();
    let pos = stream
        .clone_htod(&to_f16(&rng.normals(max_positions * d, 0.5, 0.0)))
        .unwrap();
    let ty = stream
        .clone_htod(&to_f16(&rng.normals(d, 0.3, 0.0)))
        .unwrap();
    let gamma = stream
        .clone_htod(&to_f16(&rng.normals(d, 0.2, 1.0)))
        .unwrap();
    let beta = stream
        .clone_htod(&to_f16(&rng.normals(d, 0.2, 0.0)))
        .unwrap();
    let ids_d = stream.clone_htod(&ids).unwrap();
    let cu_d = stream.clone_htod(&cu).unwrap();
    let mut out_d = stream.clone_htod(&nan_f16(bound * d)).unwrap();
    let mut orig_d = stream.clone_htod(&vec![i32::MIN; bound]).unwrap();
    let shape = BertEmbedShape {
        batch: 2,
        total_rows: bound,
        d,
        vocab_size: vocab,
        max_positions,
        type_vocab_size: 1,
        position_offset: 0,
        eps: 1e-12,
    };
    bert_embed(
        &dev,
        shape,
        BertEmbedInputs {
            ids: &ids_d,
            type_ids: None,
            cu_seqlens: &cu_d,
        },
        BertEmbedTables {
            word: &word,
            position: &pos,
            token_type: &ty,
            gamma: &gamma,
            beta: &beta,
        },
        BertEmbedOutputs {
            rows: &mut out_d,
            orig_index: &mut orig_d,
        },
    )
    .unwrap();
    let out = from_f16(&stream.clone_dtoh(&out_d).unwrap());
    let orig = stream.clone_dtoh(&orig_d).unwrap();
    assert!(out[..total * d].iter().all(|x| x.is_finite()));
    assert!(
        out[total * d..].iter().all(|x| x.is_nan()),
        "rows past the total written"
    );
    assert_eq!(&orig[..total], &[0, 1, 2, 0, 1, 2, 3, 4]);
    assert!(orig[total..].iter().all(|&x| x == i32::MIN));
}

fn vit_case(dev: &smarttrim::device::Device, blas: &Blas, rng: &mut Rng, shape: VitEmbedShape) {
    let stream = dev.stream().clone();
    let VitEmbedShape {
        batch,
        channels: c,
        image_size: is,
        patch_size: p,
        d,
    } = shape;
    let (np, k, n) = (shape.patches(), shape.patch_dim(), shape.rows_per_image());
    let sc = stream_config(
        d,
        EmbeddingConfig::Vit {
            image_size: is,
            patch_size: p,
            channels: c,
            patch_bias: true,
            ln: false,
        },
    );
    let weight = round_f16(&rng.normals(d * k, 1.0 / (k as f32).sqrt(), 0.0));
    let bias = round_f16(&rng.normals(d, 0.5, 0.0));
    let cls = round_f16(&rng.normals(d, 1.0, 0.0));
    let position = round_f16(&rng.normals(n * d, 0.5, 0.0));
    let pixels = rng.normals(shape.pixels_len(), 1.0, 0.2);
    let w_d = stream.clone_htod(&to_f16(&weight)).unwrap();
    let b_d = stream.clone_htod(&to_f16(&bias)).unwrap();
    let cls_d = stream.clone_htod(&to_f16(&cls)).unwrap();
    let pos_d = stream.clone_htod(&to_f16(&position)).unwrap();
    let px_d = stream.clone_htod(&pixels).unwrap();
    let want = reference_embed(
        &sc,
        &EmbeddingWeights::Vit {
            patch: Linear {
                weight,
                bias,
                out: d,
                inp: k,
            },
            cls,
            position,
            ln: None,
        },
        &StreamInput::Pixels {
            pixels: pixels.clone(),
            batch,
        },
    );

    let mut patches_d = stream.clone_htod(&nan_f16(batch * np * k)).unwrap();
    let mut patch_out_d = stream.clone_htod(&nan_f16(batch * np * d)).unwrap();
    let mut rows_d = stream.clone_htod(&nan_f16(shape.total_rows() * d)).unwrap();
    let mut orig_d = stream
        .clone_htod(&vec![i32::MIN; shape.total_rows()])
        .unwrap();
    let mut cu_d = stream.clone_htod(&vec![i32::MIN; batch + 1]).unwrap();
    vit_embed(
        dev,
        blas,
        &shape,
        &px_d,
        &VitEmbedWeights {
            patch_weight: w_d.as_view(),
            patch_bias: b_d.as_view(),
            cls: cls_d.as_view(),
            position: pos_d.as_view(),
        },
        VitEmbedScratch {
            patches: patches_d.as_view_mut(),
            patch_out: patch_out_d.as_view_mut(),
        },
        VitEmbedOutputs {
            rows: &mut rows_d,
            orig_index: &mut orig_d,
            cu_seqlens: &mut cu_d,
        },
    )
    .unwrap();

    // The patch rows exactly: column (c, ky, kx) of patch (py, px) is that
    // pixel rounded to f16, as the reference flattens patches.
    let patches = stream.clone_dtoh(&patches_d).unwrap();
    let g = is / p;
    for r in 0..batch * np {
        let (b, pi) = (r / np, r % np);
        let (py, px) = (pi / g, pi % g);
        for ch in 0..c {
            for ky in 0..p {
                for kx in 0..p {
                    let src = pixels[((b * c + ch) * is + py * p + ky) * is + px * p + kx];
                    let got = patches[r * k + ch * p * p + ky * p + kx];
                    assert_eq!(
                        got.to_bits(),
                        half::f16::from_f32(src).to_bits(),
                        "{shape:?}: patch row {r} column ({ch}, {ky}, {kx})"
                    );
                }
            }
        }
    }
    let got = from_f16(&stream.clone_dtoh(&rows_d).unwrap());
    let err = rel_err(&got, &want.rows);
    println!("vit_embed {shape:?}: rel err {err:.2e}");
    assert!(err < TOL, "{shape:?}: rel err {err:.2e}");
    assert_eq!(
        stream.clone_dtoh(&orig_d).unwrap(),
        want.orig_index,
        "{shape:?}: orig_index"
    );
    assert_eq!(
        stream.clone_dtoh(&cu_d).unwrap(),
        want.cu_seqlens,
        "{shape:?}: cu_seqlens"
    );
}

#[test]
fn vit_embed_matches_reference() {
    let Some(dev) = device("vit_embed_matches_reference") else {
        return;
    };
    let blas = Blas::new(&dev).expect("cuBLASLt handle");
    let mut rng = Rng::new(43);
    for shape in [
        VitEmbedShape {
            batch: 2,
            channels: 3,
            image_size: 32,
            patch_size: 8,
            d: 64,
        },
        VitEmbedShape {
            batch: 3,
            channels: 3,
            image_size: 32,
            patch_size: 4,
            d: 128,
        },
        VitEmbedShape {
            batch: 1,
            channels: 3,
            image_size: 32,
            patch_size: 8,
            d: 768,
        },
        VitEmbedShape {
            batch: 2,
            channels: 3,
            image_size: 384,
            patch_size: 16,
            d: 768,
        },
    ] {
        vit_case(&dev, &blas, &mut rng, shape);
    }
}
