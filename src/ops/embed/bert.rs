//! The BERT/RoBERTa embedding on the device ([`bert_embed`]; module docs of
//! `ops::embed`), and the host check of its token ids ([`check_bert_ids`]).

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use super::super::{check_aligned, check_len, opt_ptr, rows_i32};
use crate::device::Device;
use crate::spec::{EmbeddingConfig, StreamConfig};
use crate::{Error, Result};

const BERT_OP: &str = "bert_embed";
const BERT_WARPS_PER_BLOCK: u32 = 4;

/// The sizes of one BERT/RoBERTa embedding launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BertEmbedShape {
    /// Sequences; `cu_seqlens` holds `batch + 1` entries.
    pub batch: usize,
    /// Packed tokens (rows) of this pass; an upper bound is allowed (rows at
    /// or past the device `cu_seqlens[batch]` are left untouched).
    pub total_rows: usize,
    /// Hidden size `D`; a positive multiple of 8.
    pub d: usize,
    /// Rows of the word table.
    pub vocab_size: usize,
    /// Rows of the position table.
    pub max_positions: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// Position id of a sequence's first token (0 for BERT, 2 for RoBERTa).
    pub position_offset: usize,
    /// Embedding LayerNorm epsilon.
    pub eps: f32,
}

/// Element counts of the buffers handed to [`bert_embed`], checked by
/// [`BertEmbedShape::validate`] before anything touches the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BertEmbedLens {
    /// `ids`.
    pub ids: usize,
    /// `type_ids`, when given.
    pub type_ids: Option<usize>,
    /// `cu_seqlens`.
    pub cu_seqlens: usize,
    /// The word table.
    pub word: usize,
    /// The position table.
    pub position: usize,
    /// The token-type table.
    pub token_type: usize,
    /// LayerNorm gamma.
    pub gamma: usize,
    /// LayerNorm beta.
    pub beta: usize,
    /// Output rows.
    pub out: usize,
    /// Output `orig_index`.
    pub orig_index: usize,
}

impl BertEmbedShape {
    /// The shape for a BERT stream of a model config, for `batch` sequences
    /// and `total_rows` tokens. [`Error::InvalidArgument`] when the stream
    /// has no BERT embedding. Needs no GPU.
    pub fn from_stream(s: &StreamConfig, batch: usize, total_rows: usize) -> Result<Self> {
        match s.embedding {
            EmbeddingConfig::Bert {
                vocab_size,
                max_positions,
                type_vocab_size,
                position_offset,
            } => Ok(BertEmbedShape {
                batch,
                total_rows,
                d: s.hidden,
                vocab_size,
                max_positions,
                // No token types (BLIP's text encoder): the GPU model holds
                // one zero row, and no type ids are accepted.
                type_vocab_size: type_vocab_size.max(1),
                position_offset,
                eps: s.ln_eps,
            }),
            ref other => Err(Error::invalid(
                BERT_OP,
                format!(
                    "stream `{}` has embedding {other:?}, not a BERT embedding",
                    s.name
                ),
            )),
        }
    }

    /// Checks the shape and buffer sizes; [`bert_embed`] calls this before
    /// any device work, and it needs no GPU. Tables must have exactly their
    /// configured sizes; ids, outputs may be longer than needed.
    pub fn validate(&self, lens: &BertEmbedLens) -> Result<()> {
        const OP: &str = BERT_OP;
        let BertEmbedShape {
            batch,
            total_rows,
            d,
            vocab_size,
            max_positions,
            type_vocab_size,
            position_offset,
            eps,
        } = *self;
        if d == 0 || d % 8 != 0 {
            return Err(Error::invalid(
                OP,
                format!("d = {d}: the row width must be a positive multiple of 8"),
            ));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("eps = {eps}: must be positive and finite"),
            ));
        }
        if batch == 0 || i32::try_from(batch + 1).is_err() {
            return Err(Error::invalid(
                OP,
                format!("batch = {batch}: must be positive and fit the kernel's 32-bit count"),
            ));
        }
        rows_i32(OP, total_rows, d)?;
        for (name, n) in [
            ("vocab_size", vocab_size),
            ("max_positions", max_positions),
            ("type_vocab_size", type_vocab_size),
        ] {
            if n == 0 {
                return Err(Error::invalid(OP, format!("{name} = 0: must be positive")));
            }
        }
        if position_offset >= max_positions
            || i32::try_from(max_positions + position_offset).is_err()
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "position_offset = {position_offset}: must be below max_positions = \
                     {max_positions} (and their sum fit 32 bits)"
                ),
            ));
        }
        if lens.cu_seqlens != batch + 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "`cu_seqlens` holds {} entries; batch + 1 = {} needed",
                    lens.cu_seqlens,
                    batch + 1
                ),
            ));
        }
        check_len(OP, "ids", lens.ids, total_rows)?;
        if let Some(t) = lens.type_ids {
            check_len(OP, "type_ids", t, total_rows)?;
        }
        for (name, have, rows) in [
            ("word", lens.word, vocab_size),
            ("position", lens.position, max_positions),
            ("token_type", lens.token_type, type_vocab_size),
            ("gamma", lens.gamma, 1),
            ("beta", lens.beta, 1),
        ] {
            let need = rows
                .checked_mul(d)
                .ok_or_else(|| Error::invalid(OP, format!("`{name}`: {rows} x {d} overflows")))?;
            if have != need {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "`{name}` holds {have} elements; it must hold exactly {rows} x d = {need}"
                    ),
                ));
            }
        }
        check_len(OP, "out", lens.out, total_rows * d)?;
        check_len(OP, "orig_index", lens.orig_index, total_rows)?;
        Ok(())
    }
}

/// Host-side check of BERT inputs before they are uploaded (the kernel
/// trusts them; see the module docs). Pure, needs no GPU.
///
/// [`Error::InvalidArgument`] when the slices do not match `shape`
/// (`cu_seqlens` not `batch + 1` long, `ids` not `total_rows` long);
/// [`Error::Input`], listing every problem, when the data is out of range:
/// `cu_seqlens` not starting at 0, decreasing, or not ending at the number of
/// ids; an id `>= vocab_size`; type ids of the wrong count or `>=
/// type_vocab_size`; a sequence whose `length + position_offset` exceeds
/// `max_positions`. The same checks, in the same words, as the CPU
/// reference's input validation.
pub fn check_bert_ids(
    shape: &BertEmbedShape,
    ids: &[u32],
    type_ids: Option<&[u32]>,
    cu_seqlens: &[i32],
) -> Result<()> {
    const OP: &str = "check_bert_ids";
    if cu_seqlens.len() != shape.batch + 1 {
        return Err(Error::invalid(
            OP,
            format!(
                "`cu_seqlens` holds {} entries; batch + 1 = {} needed",
                cu_seqlens.len(),
                shape.batch + 1
            ),
        ));
    }
    if ids.len() != shape.total_rows {
        return Err(Error::invalid(
            OP,
            format!(
                "`ids` holds {} tokens but the shape says total_rows = {}",
                ids.len(),
                shape.total_rows
            ),
        ));
    }
    let total = ids.len();
    let mut errs = Vec::new();
    if cu_seqlens[0] != 0 {
        errs.push("cu_seqlens must start with 0".to_string());
    } else if let Some(b) = cu_seqlens.windows(2).position(|w| w[1] < w[0]) {
        errs.push(format!(
            "cu_seqlens must be non-decreasing (entry {} is {} after {})",
            b + 1,
            cu_seqlens[b + 1],
            cu_seqlens[b]
        ));
    } else if cu_seqlens[shape.batch] as i64 != total as i64 {
        errs.push(format!(
            "cu_seqlens ends at {} but there are {total} token ids",
            cu_seqlens[shape.batch]
        ));
    } else if let Some((b, l)) = cu_seqlens
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .enumerate()
        .find(|&(_, l)| l + shape.position_offset > shape.max_positions)
    {
        errs.push(format!(
            "sequence {b} has {l} tokens; with position offset {} that exceeds max_positions {}",
            shape.position_offset, shape.max_positions
        ));
    }
    if let Some(i) = ids.iter().position(|&t| t as usize >= shape.vocab_size) {
        errs.push(format!(
            "token id {} at {i} is outside the vocabulary ({})",
            ids[i], shape.vocab_size
        ));
    }
    if let Some(t) = type_ids {
        if t.len() != total {
            errs.push(format!("{} type ids for {total} tokens", t.len()));
        } else if let Some(i) = t.iter().position(|&x| x as usize >= shape.type_vocab_size) {
            errs.push(format!(
                "type id {} at {i} is outside 0..{}",
                t[i], shape.type_vocab_size
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Input(errs))
    }
}

/// Mirror of `struct BertEmbedShape` in `kernels/embed.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct BertEmbedShapeC {
    batch: i32,
    total_rows: i32,
    d: i32,
    position_offset: i32,
    eps: f32,
}
// SAFETY: `#[repr(C)]` plain data of i32/f32, laid out as the C struct the
// kernel takes by value.
unsafe impl DeviceRepr for BertEmbedShapeC {}

/// The token inputs of [`bert_embed`], on the device.
pub struct BertEmbedInputs<'a> {
    /// Packed token ids `[total_rows]` u32 (checked with [`check_bert_ids`]
    /// before upload).
    pub ids: &'a dyn DevicePtr<u32>,
    /// Packed token type ids `[total_rows]` u32; `None` means all 0.
    pub type_ids: Option<&'a dyn DevicePtr<u32>>,
    /// `[batch + 1]` i32.
    pub cu_seqlens: &'a dyn DevicePtr<i32>,
}

/// The embedding tables of [`bert_embed`] (f16, row-major).
pub struct BertEmbedTables<'a> {
    /// `[vocab_size, D]`.
    pub word: &'a dyn DevicePtr<f16>,
    /// `[max_positions, D]`.
    pub position: &'a dyn DevicePtr<f16>,
    /// `[type_vocab_size, D]`.
    pub token_type: &'a dyn DevicePtr<f16>,
    /// Embedding LayerNorm scale `[D]`.
    pub gamma: &'a dyn DevicePtr<f16>,
    /// Embedding LayerNorm shift `[D]`.
    pub beta: &'a dyn DevicePtr<f16>,
}

/// Where [`bert_embed`] writes.
pub struct BertEmbedOutputs<'a> {
    /// `[total_rows, D]` f16.
    pub rows: &'a mut dyn DevicePtrMut<f16>,
    /// `[total_rows]` i32: each row's position within its sequence.
    pub orig_index: &'a mut dyn DevicePtrMut<i32>,
}

/// BERT/RoBERTa embeddings: `rows[r] = LN(word[id_r] + position[r -
/// cu[b] + offset] + token_type[type_r])`, `orig_index[r] = r - cu[b]`.
///
/// The ids must have passed [`check_bert_ids`] on the host (the kernel does
/// not bounds-check them). All f16 buffers must start 16-byte aligned.
pub fn bert_embed(
    dev: &Device,
    shape: BertEmbedShape,
    inputs: BertEmbedInputs<'_>,
    tables: BertEmbedTables<'_>,
    outputs: BertEmbedOutputs<'_>,
) -> Result<()> {
    const OP: &str = BERT_OP;
    shape.validate(&BertEmbedLens {
        ids: inputs.ids.len(),
        type_ids: inputs.type_ids.map(|t| t.len()),
        cu_seqlens: inputs.cu_seqlens.len(),
        word: tables.word.len(),
        position: tables.position.len(),
        token_type: tables.token_type.len(),
        gamma: tables.gamma.len(),
        beta: tables.beta.len(),
        out: outputs.rows.len(),
        orig_index: outputs.orig_index.len(),
    })?;
    if shape.total_rows == 0 {
        return Ok(());
    }
    crate::kernels::ensure_built()?;
    let func = dev.function("embed", "bert_embed_f16")?;
    let stream = dev.stream();
    let (ids_ptr, _gi) = inputs.ids.device_ptr(stream);
    let (ty_ptr, _gt) = opt_ptr(inputs.type_ids, stream);
    let (cu_ptr, _gc) = inputs.cu_seqlens.device_ptr(stream);
    let (w_ptr, _gw) = tables.word.device_ptr(stream);
    let (p_ptr, _gp) = tables.position.device_ptr(stream);
    let (tt_ptr, _gtt) = tables.token_type.device_ptr(stream);
    let (g_ptr, _gg) = tables.gamma.device_ptr(stream);
    let (b_ptr, _gb) = tables.beta.device_ptr(stream);
    let (o_ptr, _go) = outputs.rows.device_ptr_mut(stream);
    let (oi_ptr, _goi) = outputs.orig_index.device_ptr_mut(stream);
    for (name, p) in [
        ("word", w_ptr),
        ("position", p_ptr),
        ("token_type", tt_ptr),
        ("gamma", g_ptr),
        ("beta", b_ptr),
        ("out", o_ptr),
    ] {
        check_aligned(OP, name, p, 16)?;
    }
    let params = BertEmbedShapeC {
        batch: shape.batch as i32,
        total_rows: shape.total_rows as i32,
        d: shape.d as i32,
        position_offset: shape.position_offset as i32,
        eps: shape.eps,
    };
    let cfg = LaunchConfig {
        grid_dim: (
            (shape.total_rows as u32).div_ceil(BERT_WARPS_PER_BLOCK),
            1,
            1,
        ),
        block_dim: (32 * BERT_WARPS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&ids_ptr)
        .arg(&ty_ptr)
        .arg(&cu_ptr)
        .arg(&w_ptr)
        .arg(&p_ptr)
        .arg(&tt_ptr)
        .arg(&g_ptr)
        .arg(&b_ptr)
        .arg(&o_ptr)
        .arg(&oi_ptr)
        .arg(&params);
    // SAFETY: arguments match `bert_embed_f16(const u32*, const u32*, const
    // int*, const half* x5, half*, int*, BertEmbedShape)`; every pointer is
    // live for the launch (guards held above). Validated: ids and type ids
    // (or null) hold total_rows entries, cu_seqlens batch + 1, the tables
    // exactly vocab/max_positions/type_vocab x d and gamma/beta d elements,
    // out total_rows * d and orig_index total_rows, f16 buffers 16-byte
    // aligned. The caller's contract (check_bert_ids before upload): ids and
    // type ids index inside their tables, positions inside the position
    // table, and cu_seqlens is non-decreasing from 0, so every table read is
    // in bounds. One warp per row below min(total_rows, cu[batch]).
    unsafe { launch.launch(cfg) }.map_err(|e| Error::driver("launching bert_embed_f16", e))?;
    dev.check_launch("bert_embed_f16")
}
