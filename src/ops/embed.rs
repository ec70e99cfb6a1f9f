//! Embeddings on the device (`kernels/embed.cu`): the same semantics as
//! [`crate::reference::model::embed`], producing the packed f16 rows,
//! `orig_index` (and, for ViT, `cu_seqlens`) that enter the first layer.
//!
//! - **BERT / RoBERTa** ([`bert_embed`], kernel `bert_embed_f16`): word +
//!   position + token-type rows summed in f32, then the embedding LayerNorm
//!   (two-pass statistics in f32), one warp per packed row. Position of row
//!   `r` of sequence `b` is `r - cu_seqlens[b] + position_offset`;
//!   `orig_index[r] = r - cu_seqlens[b]`. `cu_seqlens` is an input here (the
//!   host knows the lengths) and is not rewritten.
//! - **ViT** ([`vit_embed`] = [`vit_patchify`] + [`Blas::linear`] +
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

use cudarc::driver::{
    CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::f16;

use super::gemm::{Blas, Epilogue, LinearShape};
use super::{check_aligned, check_len, opt_ptr, rows_i32};
use crate::device::Device;
use crate::spec::{EmbeddingConfig, StreamConfig};
use crate::{Error, Result};

const BERT_OP: &str = "bert_embed";
const PATCHIFY_OP: &str = "vit_patchify";
const ASSEMBLE_OP: &str = "vit_assemble";
const VIT_OP: &str = "vit_embed";
const BERT_WARPS_PER_BLOCK: u32 = 4;
const THREADS: u32 = 256;

// ---------------------------------------------------------------------------
// BERT

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

// ---------------------------------------------------------------------------
// ViT

/// The sizes of a ViT patch embedding: `batch` images of `channels x
/// image_size x image_size` pixels, cut into `patch_size`-pixel patches,
/// embedded to width `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitEmbedShape {
    /// Images.
    pub batch: usize,
    /// Input channels `C`.
    pub channels: usize,
    /// Image height = width `H`, pixels.
    pub image_size: usize,
    /// Patch side `p`, pixels; divides `image_size`.
    pub patch_size: usize,
    /// Hidden size `D`; a positive multiple of 8.
    pub d: usize,
}

impl VitEmbedShape {
    /// The shape for a ViT stream of a model config and `batch` images.
    /// [`Error::InvalidArgument`] when the stream has no ViT embedding.
    /// Needs no GPU.
    pub fn from_stream(s: &StreamConfig, batch: usize) -> Result<Self> {
        match s.embedding {
            EmbeddingConfig::Vit {
                image_size,
                patch_size,
                channels,
                ..
            } => Ok(VitEmbedShape {
                batch,
                channels,
                image_size,
                patch_size,
                d: s.hidden,
            }),
            ref other => Err(Error::invalid(
                VIT_OP,
                format!(
                    "stream `{}` has embedding {other:?}, not a ViT embedding",
                    s.name
                ),
            )),
        }
    }

    /// Patches per side, `H / p` (0 for a zero patch size).
    pub fn grid(&self) -> usize {
        self.image_size.checked_div(self.patch_size).unwrap_or(0)
    }

    /// Patches per image, `P = (H / p)^2`.
    pub fn patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Width of a patch row, `K = C * p * p` (the patch GEMM's `k`).
    pub fn patch_dim(&self) -> usize {
        self.channels * self.patch_size * self.patch_size
    }

    /// Rows per image after the embedding, `P + 1` (CLS first).
    pub fn rows_per_image(&self) -> usize {
        self.patches() + 1
    }

    /// Patch rows of the whole batch, `B * P` (the patch GEMM's rows).
    pub fn patch_rows(&self) -> usize {
        self.batch * self.patches()
    }

    /// Rows of the whole batch after the embedding, `B * (P + 1)`.
    pub fn total_rows(&self) -> usize {
        self.batch * self.rows_per_image()
    }

    /// Pixel values of the whole batch, `B * C * H * H`.
    pub fn pixels_len(&self) -> usize {
        self.batch * self.channels * self.image_size * self.image_size
    }

    /// The patch GEMM: `[B * P, K] x [D, K]^T -> [B * P, D]`.
    pub fn linear_shape(&self) -> LinearShape {
        LinearShape {
            rows: self.patch_rows(),
            k: self.patch_dim(),
            n: self.d,
        }
    }

    /// Checks the sizes themselves (not buffers); needs no GPU.
    /// [`Error::Unsupported`] when `C * p * p` is not a multiple of 8 (the
    /// kernels store 16-byte vectors, and cuBLASLt's f16 path wants it).
    pub fn validate(&self) -> Result<()> {
        let VitEmbedShape {
            batch,
            channels,
            image_size,
            patch_size,
            d,
        } = *self;
        let op = VIT_OP;
        if batch == 0 {
            return Err(Error::invalid(op, "batch = 0: must be positive"));
        }
        if channels == 0 || image_size == 0 || patch_size == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "channels = {channels}, image_size = {image_size}, patch_size = \
                     {patch_size}: all must be positive"
                ),
            ));
        }
        if image_size % patch_size != 0 {
            return Err(Error::invalid(
                op,
                format!("patch_size = {patch_size} does not divide image_size = {image_size}"),
            ));
        }
        if d == 0 || d % 8 != 0 {
            return Err(Error::invalid(
                op,
                format!("d = {d}: the row width must be a positive multiple of 8"),
            ));
        }
        let k = self.patch_dim();
        if k % 8 != 0 {
            return Err(Error::Unsupported {
                op,
                message: format!(
                    "patch rows of C * p * p = {channels} x {patch_size} x {patch_size} = {k} \
                     values; a multiple of 8 is needed (16-byte rows)"
                ),
            });
        }
        // Every count the kernels keep in 32 bits, and every product the
        // wrappers form in usize.
        let fits = |x: Option<usize>| x.is_some_and(|v| i32::try_from(v).is_ok());
        let rows = batch.checked_mul(self.rows_per_image());
        if !fits(rows)
            || !fits(Some(image_size))
            || !fits(Some(k))
            || batch
                .checked_mul(channels)
                .and_then(|x| x.checked_mul(image_size))
                .and_then(|x| x.checked_mul(image_size))
                .is_none()
            || rows.and_then(|r| r.checked_mul(d.max(k))).is_none()
        {
            return Err(Error::invalid(
                op,
                format!(
                    "batch = {batch} of {channels} x {image_size} x {image_size} images is too \
                     large for the kernels' 32-bit row counts"
                ),
            ));
        }
        rows_i32(op, self.total_rows(), d)?;
        Ok(())
    }
}

/// Checks a [`vit_patchify`] launch: the shape, then `pixels` (`B * C * H *
/// H` f32) and `patches` (`B * P * K` f16). Needs no GPU.
pub fn validate_vit_patchify(
    shape: &VitEmbedShape,
    pixels_len: usize,
    patches_len: usize,
) -> Result<()> {
    shape.validate()?;
    check_len(PATCHIFY_OP, "pixels", pixels_len, shape.pixels_len())?;
    check_len(
        PATCHIFY_OP,
        "patches",
        patches_len,
        shape.patch_rows() * shape.patch_dim(),
    )
}

/// Element counts of the buffers handed to [`vit_assemble`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VitAssembleLens {
    /// The patch GEMM output, `[B * P, D]`.
    pub patch_out: usize,
    /// The CLS row, `[D]`.
    pub cls: usize,
    /// The position table, `[P + 1, D]`.
    pub position: usize,
    /// Output rows, `[B * (P + 1), D]`.
    pub rows: usize,
    /// Output `orig_index`, `[B * (P + 1)]`.
    pub orig_index: usize,
    /// Output `cu_seqlens`, exactly `B + 1`.
    pub cu_seqlens: usize,
}

/// Checks a [`vit_assemble`] launch. Needs no GPU.
pub fn validate_vit_assemble(shape: &VitEmbedShape, lens: &VitAssembleLens) -> Result<()> {
    const OP: &str = ASSEMBLE_OP;
    shape.validate()?;
    let d = shape.d;
    let n = shape.rows_per_image();
    check_len(OP, "patch_out", lens.patch_out, shape.patch_rows() * d)?;
    if lens.cls != d {
        return Err(Error::invalid(
            OP,
            format!(
                "`cls` holds {} elements; it must hold exactly d = {d}",
                lens.cls
            ),
        ));
    }
    if lens.position != n * d {
        return Err(Error::invalid(
            OP,
            format!(
                "`position` holds {} elements; it must hold exactly (P + 1) x d = {n} x {d} = {}",
                lens.position,
                n * d
            ),
        ));
    }
    check_len(OP, "rows", lens.rows, shape.total_rows() * d)?;
    check_len(OP, "orig_index", lens.orig_index, shape.total_rows())?;
    if lens.cu_seqlens != shape.batch + 1 {
        return Err(Error::invalid(
            OP,
            format!(
                "`cu_seqlens` holds {} entries; batch + 1 = {} needed",
                lens.cu_seqlens,
                shape.batch + 1
            ),
        ));
    }
    Ok(())
}

/// Mirror of `struct PatchifyShape` in `kernels/embed.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PatchifyShapeC {
    batch: i32,
    channels: i32,
    image: i32,
    patch: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as the C struct.
unsafe impl DeviceRepr for PatchifyShapeC {}

/// Mirror of `struct AssembleShape` in `kernels/embed.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AssembleShapeC {
    batch: i32,
    patches: i32,
    d: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as the C struct.
unsafe impl DeviceRepr for AssembleShapeC {}

/// Blocks for a grid-stride launch over `vecs` 16-byte vectors.
fn stride_grid(vecs: usize) -> u32 {
    (vecs as u64).div_ceil(THREADS as u64).clamp(1, 65_535 * 8) as u32
}

/// f32 NCHW pixels `[B, C, H, H]` -> f16 patch rows `[B * P, C * p * p]`:
/// patch `(py, px)` of image `b` is row `b * P + py * (H / p) + px`, and
/// column `c * p * p + ky * p + kx` holds pixel `(c, py * p + ky, px * p +
/// kx)` (the PyTorch conv weight's order, as the reference flattens patches).
/// `pixels` must start 16-byte aligned, `patches` too.
pub fn vit_patchify(
    dev: &Device,
    shape: &VitEmbedShape,
    pixels: &dyn DevicePtr<f32>,
    patches: &mut dyn DevicePtrMut<f16>,
) -> Result<()> {
    const OP: &str = PATCHIFY_OP;
    validate_vit_patchify(shape, pixels.len(), patches.len())?;
    crate::kernels::ensure_built()?;
    let func = dev.function("embed", "vit_patchify_f16")?;
    let stream = dev.stream();
    let (px_ptr, _gpx) = pixels.device_ptr(stream);
    let (pa_ptr, _gpa) = patches.device_ptr_mut(stream);
    check_aligned(OP, "pixels", px_ptr, 16)?;
    check_aligned(OP, "patches", pa_ptr, 16)?;
    let params = PatchifyShapeC {
        batch: shape.batch as i32,
        channels: shape.channels as i32,
        image: shape.image_size as i32,
        patch: shape.patch_size as i32,
    };
    let cfg = LaunchConfig {
        grid_dim: (
            stride_grid(shape.patch_rows() * shape.patch_dim() / 8),
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&func);
    launch.arg(&px_ptr).arg(&pa_ptr).arg(&params);
    // SAFETY: arguments match `vit_patchify_f16(const float*, half*,
    // PatchifyShape)`; both pointers live (guards held). Validated: pixels
    // hold B * C * H * H f32 and patches B * P * K f16 with K = C * p * p a
    // multiple of 8, p divides H, both 16-byte aligned (the kernel's float4
    // path, taken when p % 8 == 0, reads 32-byte aligned runs inside one
    // image row). The grid-stride loop stops at B * P * K / 8 vectors, and
    // every pixel it reads is inside its image.
    unsafe { launch.launch(cfg) }.map_err(|e| Error::driver("launching vit_patchify_f16", e))?;
    dev.check_launch("vit_patchify_f16")
}

/// The inputs of [`vit_assemble`] (f16).
pub struct VitAssembleInputs<'a> {
    /// The patch GEMM output (bias included), `[B * P, D]`.
    pub patch_out: &'a dyn DevicePtr<f16>,
    /// The CLS row, `[D]`.
    pub cls: &'a dyn DevicePtr<f16>,
    /// Position embeddings, `[P + 1, D]`.
    pub position: &'a dyn DevicePtr<f16>,
}

/// Where [`vit_assemble`] and [`vit_embed`] write.
pub struct VitEmbedOutputs<'a> {
    /// `[B * (P + 1), D]` f16.
    pub rows: &'a mut dyn DevicePtrMut<f16>,
    /// `[B * (P + 1)]` i32: 0 for CLS, `1 + i` for patch `i`.
    pub orig_index: &'a mut dyn DevicePtrMut<i32>,
    /// `[B + 1]` i32: `b * (P + 1)`.
    pub cu_seqlens: &'a mut dyn DevicePtrMut<i32>,
}

/// The rows entering a ViT's first layer: row `b * (P + 1)` is `cls +
/// position[0]`, row `b * (P + 1) + 1 + i` is `patch_out[b * P + i] +
/// position[1 + i]` (f32 sum, one rounding); `orig_index` and uniform
/// `cu_seqlens` too. f16 buffers must start 16-byte aligned.
pub fn vit_assemble(
    dev: &Device,
    shape: &VitEmbedShape,
    inputs: VitAssembleInputs<'_>,
    outputs: VitEmbedOutputs<'_>,
) -> Result<()> {
    const OP: &str = ASSEMBLE_OP;
    validate_vit_assemble(
        shape,
        &VitAssembleLens {
            patch_out: inputs.patch_out.len(),
            cls: inputs.cls.len(),
            position: inputs.position.len(),
            rows: outputs.rows.len(),
            orig_index: outputs.orig_index.len(),
            cu_seqlens: outputs.cu_seqlens.len(),
        },
    )?;
    crate::kernels::ensure_built()?;
    let func = dev.function("embed", "vit_assemble_f16")?;
    let stream = dev.stream();
    let (po_ptr, _gpo) = inputs.patch_out.device_ptr(stream);
    let (c_ptr, _gc) = inputs.cls.device_ptr(stream);
    let (p_ptr, _gp) = inputs.position.device_ptr(stream);
    let (r_ptr, _gr) = outputs.rows.device_ptr_mut(stream);
    let (oi_ptr, _goi) = outputs.orig_index.device_ptr_mut(stream);
    let (cu_ptr, _gcu) = outputs.cu_seqlens.device_ptr_mut(stream);
    for (name, p) in [
        ("patch_out", po_ptr),
        ("cls", c_ptr),
        ("position", p_ptr),
        ("rows", r_ptr),
    ] {
        check_aligned(OP, name, p, 16)?;
    }
    let params = AssembleShapeC {
        batch: shape.batch as i32,
        patches: shape.patches() as i32,
        d: shape.d as i32,
    };
    let cfg = LaunchConfig {
        grid_dim: (stride_grid(shape.total_rows() * shape.d / 8), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&po_ptr)
        .arg(&c_ptr)
        .arg(&p_ptr)
        .arg(&r_ptr)
        .arg(&oi_ptr)
        .arg(&cu_ptr)
        .arg(&params);
    // SAFETY: arguments match `vit_assemble_f16(const half*, const half*,
    // const half*, half*, int*, int*, AssembleShape)`; pointers live (guards
    // held). Validated: patch_out holds B * P * D, cls D, position (P + 1) *
    // D, rows B * (P + 1) * D (all f16, 16-byte aligned), orig_index B * (P +
    // 1) and cu_seqlens B + 1 entries. The grid-stride loops stop at B * (P +
    // 1) * D / 8 vectors and B + 1 offsets.
    unsafe { launch.launch(cfg) }.map_err(|e| Error::driver("launching vit_assemble_f16", e))?;
    dev.check_launch("vit_assemble_f16")
}

/// The device weights of a ViT embedding (f16 views).
pub struct VitEmbedWeights<'a> {
    /// Patch projection `[D, C * p * p]` (columns `(c, ky, kx)`).
    pub patch_weight: CudaView<'a, f16>,
    /// Patch projection bias `[D]`.
    pub patch_bias: CudaView<'a, f16>,
    /// CLS row `[D]`.
    pub cls: CudaView<'a, f16>,
    /// Position embeddings `[P + 1, D]`.
    pub position: CudaView<'a, f16>,
}

/// Scratch of [`vit_embed`] (both only needed during the call; a runtime can
/// lend any free f16 workspace regions of at least these sizes).
pub struct VitEmbedScratch<'a> {
    /// Patch rows, at least `B * P * K` ([`VitEmbedShape::patch_rows`] x
    /// [`VitEmbedShape::patch_dim`]).
    pub patches: CudaViewMut<'a, f16>,
    /// Patch GEMM output, at least `B * P * D`.
    pub patch_out: CudaViewMut<'a, f16>,
}

/// Element counts of [`vit_embed`]'s buffers, for [`validate_vit_embed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VitEmbedLens {
    /// `pixels`.
    pub pixels: usize,
    /// `weights.patch_weight`.
    pub patch_weight: usize,
    /// `weights.patch_bias`.
    pub patch_bias: usize,
    /// `scratch.patches`.
    pub patches: usize,
    /// The rest: GEMM output, CLS, positions and the outputs.
    pub assemble: VitAssembleLens,
}

/// Checks a whole [`vit_embed`] (patchify, GEMM, assemble) before any of
/// its launches. Needs no GPU.
pub fn validate_vit_embed(shape: &VitEmbedShape, lens: &VitEmbedLens) -> Result<()> {
    validate_vit_patchify(shape, lens.pixels, lens.patches)?;
    let ls = shape.linear_shape();
    ls.validate(
        lens.patches,
        lens.patch_weight,
        Some(lens.patch_bias),
        lens.assemble.patch_out,
    )?;
    if lens.patch_weight != ls.n * ls.k {
        return Err(Error::invalid(
            VIT_OP,
            format!(
                "`patch_weight` holds {} elements; it must hold exactly D x C * p * p = {} x {} = {}",
                lens.patch_weight,
                ls.n,
                ls.k,
                ls.n * ls.k
            ),
        ));
    }
    validate_vit_assemble(shape, &lens.assemble)
}

/// The whole ViT embedding on the device: [`vit_patchify`] into
/// `scratch.patches`, the patch GEMM with its bias (cuBLASLt, f32
/// accumulation) into `scratch.patch_out`, then [`vit_assemble`] into the
/// outputs. Three launches on `dev`'s stream (`blas` must be bound to the
/// same stream), no host synchronisation. Everything is validated first.
pub fn vit_embed(
    dev: &Device,
    blas: &Blas,
    shape: &VitEmbedShape,
    pixels: &dyn DevicePtr<f32>,
    weights: &VitEmbedWeights<'_>,
    scratch: VitEmbedScratch<'_>,
    outputs: VitEmbedOutputs<'_>,
) -> Result<()> {
    let VitEmbedScratch {
        mut patches,
        mut patch_out,
    } = scratch;
    validate_vit_embed(
        shape,
        &VitEmbedLens {
            pixels: pixels.len(),
            patch_weight: weights.patch_weight.len(),
            patch_bias: weights.patch_bias.len(),
            patches: patches.len(),
            assemble: VitAssembleLens {
                patch_out: patch_out.len(),
                cls: weights.cls.len(),
                position: weights.position.len(),
                rows: outputs.rows.len(),
                orig_index: outputs.orig_index.len(),
                cu_seqlens: outputs.cu_seqlens.len(),
            },
        },
    )?;
    vit_patchify(dev, shape, pixels, &mut patches)?;
    blas.linear(
        shape.linear_shape(),
        &patches.as_view(),
        &weights.patch_weight,
        Some(&weights.patch_bias),
        Epilogue::Bias,
        &mut patch_out,
    )?;
    vit_assemble(
        dev,
        shape,
        VitAssembleInputs {
            patch_out: &patch_out,
            cls: &weights.cls,
            position: &weights.position,
        },
        outputs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
