//! Embeddings on the device (`kernels/embed.cu`): the same semantics as
//! [`crate::pass::embed`] (the host embedding), producing the packed f16 rows,
//! `orig_index` (and, for ViT, `cu_seqlens`) that enter the first layer.
//!
//! - **BERT / RoBERTa** ([`bert_embed`], kernel `bert_embed_f16`): word +
//!   position + token-type rows summed in f32, then the embedding LayerNorm
//!   (two-pass statistics in f32), one warp per packed row. Position of row
//!   `r` of sequence `b` is `r - cu_seqlens[b] + position_offset`;
//!   `orig_index[r] = r - cu_seqlens[b]`. `cu_seqlens` is an input here (the
//!   host knows the lengths) and is not rewritten.
//! - **ViT** ([`vit_embed`] = [`vit_patchify`] + [`Blas::linear`](super::Blas::linear) +
//!   [`vit_assemble`]): f32 NCHW pixels -> f16 patch rows `[B * P, C * p *
//!   p]` in the patch weight's `(c, ky, kx)` column order; the patch GEMM with
//!   its bias through cuBLASLt; then CLS + position rows, `orig_index` and
//!   uniform `cu_seqlens` (every image has `P + 1` rows). No LayerNorm at the
//!   embedding (ViT is pre-LN; the reference has none either).
//!
//! **Token ids are trusted by the kernel.** It reads `word[id]`,
//! `token_type[type_id]` and `position[len + offset]` without clamping, so an
//! out-of-range id would read outside the tables. The ids live on the device
//! by the time the kernel runs, so they are checked on the host before the
//! upload: [`check_bert_ids`] (pure, no GPU) checks ids against the
//! vocabulary, type ids against the type vocabulary, `cu_seqlens` for shape
//! and order, and every sequence's length against `max_positions`. A caller
//! that uploads ids must run it first (the GPU forward pass does).
//!
//! Workspace a runtime needs (elements; `T` = total tokens of a pass,
//! `B` = images, `P`/`K` from [`VitEmbedShape`]):
//!
//! | buffer | BERT | ViT |
//! | --- | --- | --- |
//! | ids `u32` | `T` | — |
//! | type ids `u32` (optional) | `T` | — |
//! | `cu_seqlens` `i32` | `batch + 1` (input) | `B + 1` (output) |
//! | pixels `f32` | — | `B * C * H * W` |
//! | patches `f16` (scratch) | — | `B * P * K` |
//! | patch GEMM output `f16` (scratch) | — | `B * P * D` |
//! | rows `f16` (output) | `T * D` | `B * (P + 1) * D` |
//! | `orig_index` `i32` (output) | `T` | `B * (P + 1)` |
//!
//! One file per embedding: `bert.rs` and `vit.rs`.

mod bert;
mod vit;

pub use bert::{
    bert_embed, check_bert_ids, BertEmbedInputs, BertEmbedLens, BertEmbedOutputs, BertEmbedShape,
    BertEmbedTables,
};
pub use vit::{
    validate_vit_assemble, validate_vit_embed, validate_vit_patchify, vit_assemble, vit_embed,
    vit_patchify, VitAssembleInputs, VitAssembleLens, VitEmbedLens, VitEmbedOutputs,
    VitEmbedScratch, VitEmbedShape, VitEmbedWeights,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::LinearShape;
    use crate::Error;

    fn bert() -> BertEmbedShape {
        BertEmbedShape {
            batch: 2,
            total_rows: 5,
            d: 16,
            vocab_size: 10,
            max_positions: 8,
            type_vocab_size: 2,
            position_offset: 2,
            eps: 1e-12,
        }
    }

    #[test]
    fn host_id_check_accepts_valid_and_lists_every_problem() {
        let s = bert();
        check_bert_ids(&s, &[1, 2, 3, 9, 0], Some(&[0, 1, 0, 1, 1]), &[0, 3, 5]).unwrap();
        check_bert_ids(&s, &[1, 2, 3, 9, 0], None, &[0, 0, 5]).unwrap();
        // Sequence of 7 with offset 2 exceeds 8 positions; id 10 and type 2 too.
        let long = BertEmbedShape { total_rows: 7, ..s };
        match check_bert_ids(
            &long,
            &[1, 2, 3, 9, 0, 10, 1],
            Some(&[0, 0, 0, 0, 0, 0, 2]),
            &[0, 0, 7],
        ) {
            Err(Error::Input(errs)) => {
                assert_eq!(errs.len(), 3, "{errs:?}");
                assert!(errs[0].contains("max_positions"), "{errs:?}");
                assert!(errs[1].contains("token id 10 at 5"), "{errs:?}");
                assert!(errs[2].contains("type id 2 at 6"), "{errs:?}");
            }
            other => panic!("{other:?}"),
        }
        // Exactly max_positions - offset tokens fit.
        let six = BertEmbedShape {
            total_rows: 6,
            batch: 1,
            ..s
        };
        check_bert_ids(&six, &[1; 6], None, &[0, 6]).unwrap();
    }

    #[test]
    fn host_id_check_rejects_bad_cu_seqlens() {
        let s = bert();
        for cu in [[1, 3, 5], [0, 4, 3], [0, 2, 4]] {
            assert!(
                matches!(check_bert_ids(&s, &[0; 5], None, &cu), Err(Error::Input(_))),
                "{cu:?}"
            );
        }
        assert!(matches!(
            check_bert_ids(&s, &[0; 5], None, &[0, 5]),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            check_bert_ids(&s, &[0; 4], None, &[0, 2, 4]),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            check_bert_ids(&s, &[0; 5], Some(&[0; 4]), &[0, 2, 5]),
            Err(Error::Input(_))
        ));
    }

    #[test]
    fn vit_sizes() {
        let s = VitEmbedShape {
            batch: 3,
            channels: 3,
            image_size: 384,
            patch_size: 16,
            d: 768,
        };
        s.validate().unwrap();
        assert_eq!(s.grid(), 24);
        assert_eq!(s.patches(), 576);
        assert_eq!(s.rows_per_image(), 577);
        assert_eq!(s.patch_dim(), 768);
        assert_eq!(s.patch_rows(), 3 * 576);
        assert_eq!(s.total_rows(), 3 * 577);
        assert_eq!(s.pixels_len(), 3 * 3 * 384 * 384);
        assert_eq!(
            s.linear_shape(),
            LinearShape {
                rows: 3 * 576,
                k: 768,
                n: 768
            }
        );
    }
}
