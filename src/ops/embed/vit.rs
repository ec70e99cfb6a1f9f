//! The ViT embedding on the device ([`vit_embed`] = [`vit_patchify`] + the
//! patch GEMM + [`vit_assemble`]; module docs of `ops::embed`).

use cudarc::driver::{
    CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::f16;

use super::super::gemm::{Blas, Epilogue, LinearShape};
use super::super::{check_aligned, check_len, rows_i32};
use crate::device::Device;
use crate::spec::{EmbeddingConfig, StreamConfig};
use crate::{Error, Result};

const PATCHIFY_OP: &str = "vit_patchify";
const ASSEMBLE_OP: &str = "vit_assemble";
const VIT_OP: &str = "vit_embed";
const THREADS: u32 = 256;

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
