//! The embedding step on the device: a stream's uploaded ids (BERT) or
//! pixels (ViT), or rows through an input transform, into the rows entering
//! its first layer.

use cudarc::driver::CudaSlice;
use half::f16;

use super::super::weights::{DevEmbedding, GpuModel};
use super::super::workspace::StreamWs;
use super::launch::ln;
use super::shape::Source;
use crate::device::Device;
use crate::ops::{
    bert_embed, vit_assemble, vit_patchify, BertEmbedInputs, BertEmbedOutputs, BertEmbedShape,
    BertEmbedTables, BlasWorkspace, Epilogue, LinearShape, VitAssembleInputs, VitEmbedOutputs,
    VitEmbedShape,
};
use crate::{Error, Result};

impl GpuModel {
    /// Stream `s`'s embedding, from its uploaded ids or pixels into `x[0]`,
    /// `orig_index[0]` (and, for a ViT, `cu_seqlens[0]`); nothing for a
    /// stream given its rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn embed(
        &self,
        dev: &Device,
        lt: &BlasWorkspace,
        s: usize,
        w: &mut StreamWs,
        batch: usize,
        total: usize,
        source: Source,
    ) -> Result<()> {
        let sc = &self.config.streams[s];
        match (&self.streams[s].embedding, source) {
            // An input transform: the uploaded (or handed-on) rows `src`
            // `[total, D_in]` -> x[0] `[total, D]`, bias and type vector in
            // one epilogue; cu_seqlens[0] and orig_index[0] are already set.
            (
                DevEmbedding::Transform {
                    w: tw,
                    input_hidden,
                },
                Source::Rows,
            ) => {
                let x = w.src.slice(0..(total * input_hidden).max(1));
                let [x0, _] = &mut w.x;
                let mut y = x0.slice_mut(0..(total * sc.hidden).max(1));
                self.blas.linear_on(
                    dev,
                    lt,
                    LinearShape {
                        rows: total,
                        k: *input_hidden,
                        n: sc.hidden,
                    },
                    &x,
                    &tw.w.as_view(),
                    Some(&tw.b.as_view()),
                    Epilogue::Bias,
                    &mut y,
                )
            }
            (_, Source::Rows) => Ok(()),
            (
                DevEmbedding::Bert {
                    word,
                    position,
                    token_type,
                    ln,
                },
                Source::Tokens { type_ids },
            ) => {
                let shape = BertEmbedShape::from_stream(sc, batch, total)?;
                let cu = w.cu[0].slice(0..batch + 1);
                let ids = w.ids.slice(0..total.max(1));
                let tys = w.type_ids.slice(0..total.max(1));
                let [x0, _] = &mut w.x;
                let [o0, _] = &mut w.orig;
                bert_embed(
                    dev,
                    shape,
                    BertEmbedInputs {
                        ids: &ids,
                        type_ids: type_ids.then_some(&tys as _),
                        cu_seqlens: &cu,
                    },
                    BertEmbedTables {
                        word,
                        position,
                        token_type,
                        gamma: &ln.gamma,
                        beta: &ln.beta,
                    },
                    BertEmbedOutputs {
                        rows: x0,
                        orig_index: o0,
                    },
                )
            }
            (
                DevEmbedding::Vit {
                    patch,
                    patch_bias,
                    cls,
                    position,
                    ln: ln_pre,
                },
                Source::Pixels,
            ) => {
                let shape = VitEmbedShape::from_stream(sc, batch)?;
                let pixels = w.pixels.slice(0..shape.pixels_len());
                let np = shape.patch_rows();
                let mut patches = w.patches.slice_mut(0..np * shape.patch_dim());
                vit_patchify(dev, &shape, &pixels, &mut patches)?;
                let ls = shape.linear_shape();
                let mut patch_out = w.patch_out.slice_mut(0..np * sc.hidden);
                let pb = patch.b.as_view();
                self.blas.linear_on(
                    dev,
                    lt,
                    ls,
                    &patches.as_view(),
                    &patch.w.as_view(),
                    patch_bias.then_some(&pb),
                    if *patch_bias {
                        Epilogue::Bias
                    } else {
                        Epilogue::None
                    },
                    &mut patch_out,
                )?;
                let [x0, _] = &mut w.x;
                let [o0, _] = &mut w.orig;
                let [c0, _] = &mut w.cu;
                let mut cu = c0.slice_mut(0..batch + 1);
                // With CLIP's ln_pre the rows are assembled into `a`, then
                // normalised into x[0].
                let rows: &mut CudaSlice<f16> = if ln_pre.is_some() { &mut w.a } else { x0 };
                vit_assemble(
                    dev,
                    &shape,
                    VitAssembleInputs {
                        patch_out: &patch_out,
                        cls,
                        position,
                    },
                    VitEmbedOutputs {
                        rows,
                        orig_index: o0,
                        cu_seqlens: &mut cu,
                    },
                )?;
                match ln_pre {
                    None => Ok(()),
                    Some(l) => {
                        let [x0, _] = &mut w.x;
                        let nd = c0.slice(batch..batch + 1);
                        ln(dev, total, sc.hidden, sc.ln_eps, &w.a, None, l, &nd, x0)
                    }
                }
            }
            _ => Err(Error::invalid(
                "GpuModel::forward",
                format!(
                    "stream `{}`: the input does not match the embedding",
                    sc.name
                ),
            )),
        }
    }
}
