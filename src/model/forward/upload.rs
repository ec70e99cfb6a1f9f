//! The inputs' upload into the workspace's first buffers, before any device
//! work of the pass (packed rows converted to f16 on the host).

use half::f16;

use super::super::input::PreparedInputs;
use super::super::workspace::{StreamWs, Workspace};
use super::launch::drv;
use crate::device::Device;
use crate::pass::{Inputs, Packed, StreamInput};
use crate::spec::{ModelConfig, StreamConfig};
use crate::Result;

/// One stream's input into its first buffers (see [`upload`]); `p` is its
/// validated view (`orig_index` of packed rows).
pub(in crate::model) fn upload_stream(
    dev: &Device,
    sc: &StreamConfig,
    inp: &StreamInput,
    p: &Packed,
    w: &mut StreamWs,
) -> Result<()> {
    let stream = dev.stream();
    match inp {
        StreamInput::Packed { rows, cu_seqlens } => {
            let rows16 = to_f16(rows);
            // An input transform's rows go to `src`, the others enter the
            // first layer as they are.
            let dst = match sc.embedding {
                crate::spec::EmbeddingConfig::Transform { .. } => &mut w.src,
                _ => &mut w.x[0],
            };
            if !rows16.is_empty() {
                stream
                    .memcpy_htod(&rows16, dst)
                    .map_err(drv("uploading input rows"))?;
                stream
                    .memcpy_htod(&p.orig_index, &mut w.orig[0])
                    .map_err(drv("uploading orig_index"))?;
            }
            stream
                .memcpy_htod(cu_seqlens, &mut w.cu[0])
                .map_err(drv("uploading cu_seqlens"))?;
        }
        StreamInput::Tokens {
            ids,
            type_ids,
            cu_seqlens,
        } => {
            if !ids.is_empty() {
                stream
                    .memcpy_htod(ids, &mut w.ids)
                    .map_err(drv("uploading token ids"))?;
                if let Some(t) = type_ids {
                    stream
                        .memcpy_htod(t, &mut w.type_ids)
                        .map_err(drv("uploading type ids"))?;
                }
            }
            stream
                .memcpy_htod(cu_seqlens, &mut w.cu[0])
                .map_err(drv("uploading cu_seqlens"))?;
        }
        StreamInput::Pixels { pixels, .. } => {
            stream
                .memcpy_htod(pixels, &mut w.pixels)
                .map_err(drv("uploading pixels"))?;
        }
    }
    Ok(())
}

/// f32 rows as f16 (round to nearest even), converted in parallel chunks
/// with `half`'s vectorised slice conversion: a METER batch of 32 is about
/// 15 M values, converted on the host at every pass.
pub(super) fn to_f16(v: &[f32]) -> Vec<f16> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    let mut out = vec![f16::ZERO; v.len()];
    out.par_chunks_mut(1 << 16)
        .zip(v.par_chunks(1 << 16))
        .for_each(|(o, i)| o.convert_from_f32_slice(i));
    out
}

/// Uploads the inputs into the first buffers of `ws`, on `dev`'s stream:
/// packed rows as f16 with their `orig_index` and `cu_seqlens`, token and
/// type ids with `cu_seqlens`, pixels as they are (f32); the context. The
/// embeddings then run on the device at the start of the pass.
pub(super) fn upload(
    dev: &Device,
    cfg: &ModelConfig,
    ws: &mut Workspace,
    inputs: &Inputs,
    prep: &PreparedInputs,
) -> Result<()> {
    let stream = dev.stream();
    for (((inp, p), w), sc) in inputs
        .streams
        .iter()
        .zip(&prep.streams)
        .zip(ws.streams.iter_mut())
        .zip(&cfg.streams)
    {
        upload_stream(dev, sc, inp, p, w)?;
    }
    if let Some(c) = &prep.context {
        let rows16 = to_f16(&c.rows);
        if !rows16.is_empty() {
            stream
                .memcpy_htod(&rows16, &mut *ws.context_rows)
                .map_err(drv("uploading the context rows"))?;
        }
        stream
            .memcpy_htod(&c.cu_seqlens, &mut *ws.context_cu)
            .map_err(drv("uploading the context cu_seqlens"))?;
    }
    Ok(())
}
