//! Sparse-head ragged attention (`kernels/attention.cu`).
//!
//! - [`self_attention`] / [`cross_attention`]: the fused flash-style kernel
//!   (`attention_fwd_d{64,32}_f16`) over packed ragged sequences, visiting
//!   only the `(sequence, head)` pairs of a compacted active list that lives
//!   on the device; then, when a head mask is given, a zero-fill of the
//!   inactive heads' output slices (`attention_zero_inactive_f16`).
//! - [`build_active_heads`]: the `[batch, heads]` u8 mask -> the compacted
//!   list and its count, on the device (`attention_active_list`).
//! - [`DenseAttentionBaseline`]: the unfused dense pass (pad, cuBLAS
//!   `Q K^T`, softmax kernel, cuBLAS `P V`, unpad) the benches compare with.
//!
//! Layouts (row-major f16, no padding between rows):
//! - self-attention reads `q`, `k`, `v` from one packed `[rows_q, 3 * D]`
//!   matrix (q at columns `0..D`, k at `D..2D`, v at `2D..3D`);
//! - cross-attention reads `q` from `[rows_q, D]` and `k`, `v` from one packed
//!   `[rows_k, 2 * D]` matrix of the other stream (k at `0..D`, v at `D..2D`);
//! - the output is `[rows_q, D]`; head `h` sits at columns `h * dh .. (h+1) * dh`
//!   of every operand.
//!
//! The active list is `[batch * heads]` pairs of i32 `(sequence, head)`
//! (stored as `2 * batch * heads` i32), of which the first `*n_active` are
//! valid; the host never reads the count. Sequence lengths come from
//! `cu_seqlens` on the device, clamped to the host bounds `max_seqlen_*` and
//! to the buffers' row counts. Scale `1/sqrt(dh)`, no mask. A sequence with
//! no keys gets a zero output.

use cudarc::driver::{
    CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use half::f16;

use super::{check_aligned, check_len, opt_ptr};
use crate::device::Device;
use crate::{Error, Result};

mod baseline;

pub use baseline::DenseAttentionBaseline;

const OP: &str = "attention";
const MODULE: &str = "attention";
/// Query rows per block of the fused kernel (4 warps x 16 rows).
pub const BLOCK_M: usize = 64;
/// Threads per block of the fused kernel.
const THREADS: u32 = 128;
/// Rows per block of the zero-fill kernel.
const ZERO_ROWS: usize = 16;

/// Sizes of one attention launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences in the batch (`cu_seqlens` have `batch + 1` entries).
    pub batch: usize,
    /// Heads `H`.
    pub heads: usize,
    /// Head size `dh` (16, 32 or 64); `D = heads * head_dim`.
    pub head_dim: usize,
    /// Rows of the query-side buffers (`qkv` or `q`, and `out`).
    pub rows_q: usize,
    /// Rows of the key/value buffer (cross-attention); must equal `rows_q`
    /// for self-attention.
    pub rows_k: usize,
    /// Host upper bound on any sequence's query length (sizes the grid).
    pub max_seqlen_q: usize,
    /// Host upper bound on any sequence's key length; must equal
    /// `max_seqlen_q` for self-attention.
    pub max_seqlen_k: usize,
}

impl AttentionShape {
    /// The hidden size `D = heads * head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Where q, k and v come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionLayout {
    /// q, k, v from one packed `[rows_q, 3D]` matrix.
    SelfPacked,
    /// q from `[rows_q, D]`, k and v from one packed `[rows_k, 2D]` matrix.
    Cross,
}

/// Element counts of the buffers handed to a launch, for [`validate_attention`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttentionBuffers {
    /// `qkv` (self) or `q` (cross).
    pub q: usize,
    /// `kv` (cross; ignored for self-attention).
    pub kv: usize,
    /// `cu_seqlens_q`.
    pub cu_q: usize,
    /// `cu_seqlens_k` (cross; ignored for self-attention).
    pub cu_k: usize,
    /// The active list, in i32 (two per pair).
    pub active: usize,
    /// The device count of active pairs.
    pub n_active: usize,
    /// The `[batch, heads]` u8 head mask, when one is given.
    pub head_mask: Option<usize>,
    /// `out`.
    pub out: usize,
}

fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::invalid(
            OP,
            format!("{what} = {v} does not fit the kernel's 32-bit arithmetic"),
        )
    })
}

/// Checks a launch's shape and buffer sizes without touching a GPU: every
/// condition the kernels rely on (supported head size, `D % 8`, `cu_seqlens`
/// of exactly `batch + 1` entries, buffers covering all rows, an active list
/// of at least `batch * heads` pairs, 32-bit index ranges, grid limits).
pub fn validate_attention(
    shape: &AttentionShape,
    layout: AttentionLayout,
    bufs: &AttentionBuffers,
) -> Result<()> {
    let s = shape;
    if ![16, 32, 64].contains(&s.head_dim) {
        return Err(Error::Unsupported {
            op: OP,
            message: format!(
                "head_dim = {}: only 16, 32 and 64 are implemented",
                s.head_dim
            ),
        });
    }
    if s.heads == 0 {
        return Err(Error::invalid(OP, "heads = 0"));
    }
    let d = s.hidden();
    if d % 8 != 0 {
        return Err(Error::invalid(
            OP,
            format!("D = heads * head_dim = {d} must be a multiple of 8"),
        ));
    }
    if layout == AttentionLayout::SelfPacked
        && (s.rows_k != s.rows_q || s.max_seqlen_k != s.max_seqlen_q)
    {
        return Err(Error::invalid(
            OP,
            format!(
                "self-attention: rows_k ({}) and max_seqlen_k ({}) must equal rows_q ({}) and \
                 max_seqlen_q ({})",
                s.rows_k, s.max_seqlen_k, s.rows_q, s.max_seqlen_q
            ),
        ));
    }
    if s.rows_q > 0 && s.max_seqlen_q == 0 {
        return Err(Error::invalid(
            OP,
            format!("max_seqlen_q = 0 but there are {} query rows", s.rows_q),
        ));
    }
    if s.rows_k > 0 && s.max_seqlen_k == 0 {
        return Err(Error::invalid(
            OP,
            format!("max_seqlen_k = 0 but there are {} key rows", s.rows_k),
        ));
    }
    let pairs = s
        .batch
        .checked_mul(s.heads)
        .ok_or_else(|| Error::invalid(OP, "batch * heads overflows"))?;
    if pairs > 65_535 {
        return Err(Error::invalid(
            OP,
            format!("batch * heads = {pairs} exceeds the grid's y limit of 65535"),
        ));
    }
    // 32-bit ranges the kernels use: row counts, strides, sequence bounds.
    let q_width = match layout {
        AttentionLayout::SelfPacked => 3 * d,
        AttentionLayout::Cross => d,
    };
    to_i32("rows_q", s.rows_q)?;
    to_i32("rows_k", s.rows_k)?;
    to_i32("max_seqlen_q", s.max_seqlen_q)?;
    to_i32("max_seqlen_k", s.max_seqlen_k)?;
    to_i32("the q row stride", q_width)?;
    to_i32("the kv row stride", 2 * d)?;
    let need = |rows: usize, width: usize, what: &str| {
        rows.checked_mul(width)
            .ok_or_else(|| Error::invalid(OP, format!("{what}: {rows} x {width} overflows")))
    };

    let q_name = match layout {
        AttentionLayout::SelfPacked => "qkv",
        AttentionLayout::Cross => "q",
    };
    check_len(OP, q_name, bufs.q, need(s.rows_q, q_width, q_name)?)?;
    check_len(OP, "out", bufs.out, need(s.rows_q, d, "out")?)?;
    if bufs.cu_q != s.batch + 1 {
        return Err(Error::invalid(
            OP,
            format!(
                "`cu_seqlens_q` has {} entries; batch = {} needs exactly {}",
                bufs.cu_q,
                s.batch,
                s.batch + 1
            ),
        ));
    }
    if layout == AttentionLayout::Cross {
        check_len(OP, "kv", bufs.kv, need(s.rows_k, 2 * d, "kv")?)?;
        if bufs.cu_k != s.batch + 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "`cu_seqlens_k` has {} entries; batch = {} needs exactly {}",
                    bufs.cu_k,
                    s.batch,
                    s.batch + 1
                ),
            ));
        }
    }
    check_len(OP, "active (i32 pairs)", bufs.active, 2 * pairs)?;
    check_len(OP, "n_active", bufs.n_active, 1)?;
    if let Some(m) = bufs.head_mask {
        if m != pairs {
            return Err(Error::invalid(
                OP,
                format!(
                    "`head_mask` has {m} entries; [batch, heads] = [{}, {}] needs exactly {pairs}",
                    s.batch, s.heads
                ),
            ));
        }
    }
    Ok(())
}

/// Validates the arguments of [`build_active_heads`] without a GPU.
pub fn validate_active_heads(
    batch: usize,
    heads: usize,
    mask: usize,
    active: usize,
    n_active: usize,
) -> Result<()> {
    let pairs = batch
        .checked_mul(heads)
        .filter(|&p| i32::try_from(p).is_ok())
        .ok_or_else(|| Error::invalid(OP, "batch * heads does not fit in i32"))?;
    if mask != pairs {
        return Err(Error::invalid(
            OP,
            format!("`head_mask` has {mask} entries; [batch, heads] = [{batch}, {heads}] needs exactly {pairs}"),
        ));
    }
    check_len(OP, "active (i32 pairs)", active, 2 * pairs)?;
    check_len(OP, "n_active", n_active, 1)
}

/// The device-side inputs that choose which heads run.
pub struct HeadSelection<'a, A, N, M>
where
    A: DevicePtr<i32>,
    N: DevicePtr<i32>,
    M: DevicePtr<u8>,
{
    /// `[batch * heads]` `(sequence, head)` i32 pairs, the first `*n_active`
    /// valid (for example from [`build_active_heads`]).
    pub active: &'a A,
    /// `[1]` the number of valid pairs.
    pub n_active: &'a N,
    /// `[batch, heads]` u8 mask (nonzero = active). When given, the output
    /// slices of heads with mask 0 are written as zeros; when `None`, the
    /// caller promises every head is in the active list (slices of any head
    /// left out are not written).
    pub head_mask: Option<&'a M>,
}

/// Mirror of `struct AttnParams` in `kernels/attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AttnParamsC {
    q: u64,
    k: u64,
    v: u64,
    out: u64,
    cu_q: u64,
    cu_k: u64,
    active: u64,
    n_active: u64,
    q_stride: i32,
    k_stride: i32,
    v_stride: i32,
    out_stride: i32,
    batch: i32,
    heads: i32,
    rows_q: i32,
    rows_k: i32,
    max_seqlen_q: i32,
    max_seqlen_k: i32,
    scale_log2: f32,
    pad: i32,
}

// SAFETY: plain-old-data `#[repr(C)]` struct (eight u64 device pointers, then
// i32/f32 fields), laid out exactly as `AttnParams` the kernels take by value.
unsafe impl DeviceRepr for AttnParamsC {}

/// Mirror of `struct ZeroParams` in `kernels/attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ZeroParamsC {
    out: u64,
    cu_q: u64,
    mask: u64,
    out_stride: i32,
    batch: i32,
    heads: i32,
    head_dim: i32,
    rows_q: i32,
    max_seqlen_q: i32,
}

// SAFETY: plain-old-data `#[repr(C)]` struct laid out exactly as `ZeroParams`.
unsafe impl DeviceRepr for ZeroParamsC {}

/// Raw device pointers of one launch (all validated by the caller).
struct RawAttention {
    io: QkvPtrs,
    active: u64,
    n_active: u64,
    mask: u64,
    out: u64,
}

/// Self-attention over packed ragged sequences: q, k, v from one packed
/// `[rows_q, 3D]` f16 matrix, `out` `[rows_q, D]` f16. See the module docs.
pub fn self_attention<X, C, A, N, M, O>(
    dev: &Device,
    shape: &AttentionShape,
    qkv: &X,
    cu_seqlens: &C,
    heads: &HeadSelection<'_, A, N, M>,
    out: &mut O,
) -> Result<()>
where
    X: DevicePtr<f16>,
    C: DevicePtr<i32>,
    A: DevicePtr<i32>,
    N: DevicePtr<i32>,
    M: DevicePtr<u8>,
    O: DevicePtrMut<f16>,
{
    let lens = [qkv.len(), 0, cu_seqlens.len(), cu_seqlens.len()];
    attend(
        dev,
        shape,
        AttentionLayout::SelfPacked,
        lens,
        heads,
        out,
        |stream| {
            let d = shape.hidden() as u64;
            let (qkv_ptr, g1) = qkv.device_ptr(stream);
            let (cu_ptr, g2) = cu_seqlens.device_ptr(stream);
            // Column offsets in bytes (f16 = 2 bytes): k at D, v at 2D.
            let ptrs = QkvPtrs {
                q: qkv_ptr,
                k: qkv_ptr + 2 * d,
                v: qkv_ptr + 4 * d,
                q_stride: 3 * shape.hidden(),
                kv_stride: 3 * shape.hidden(),
                cu_q: cu_ptr,
                cu_k: cu_ptr,
            };
            (ptrs, vec![g1, g2])
        },
    )
}

/// Cross-attention: queries from `q` `[rows_q, D]`, keys and values from the
/// other stream's packed `kv` `[rows_k, 2D]`; sequence `b`'s queries
/// `cu_q[b]..cu_q[b+1]` attend to its keys `cu_k[b]..cu_k[b+1]`.
#[allow(clippy::too_many_arguments)]
pub fn cross_attention<Q, KV, C1, C2, A, N, M, O>(
    dev: &Device,
    shape: &AttentionShape,
    q: &Q,
    kv: &KV,
    cu_seqlens_q: &C1,
    cu_seqlens_k: &C2,
    heads: &HeadSelection<'_, A, N, M>,
    out: &mut O,
) -> Result<()>
where
    Q: DevicePtr<f16>,
    KV: DevicePtr<f16>,
    C1: DevicePtr<i32>,
    C2: DevicePtr<i32>,
    A: DevicePtr<i32>,
    N: DevicePtr<i32>,
    M: DevicePtr<u8>,
    O: DevicePtrMut<f16>,
{
    let lens = [q.len(), kv.len(), cu_seqlens_q.len(), cu_seqlens_k.len()];
    attend(
        dev,
        shape,
        AttentionLayout::Cross,
        lens,
        heads,
        out,
        |stream| {
            let d = shape.hidden() as u64;
            let (q_ptr, g1) = q.device_ptr(stream);
            let (kv_ptr, g2) = kv.device_ptr(stream);
            let (cq_ptr, g3) = cu_seqlens_q.device_ptr(stream);
            let (ck_ptr, g4) = cu_seqlens_k.device_ptr(stream);
            let ptrs = QkvPtrs {
                q: q_ptr,
                k: kv_ptr,
                v: kv_ptr + 2 * d,
                q_stride: shape.hidden(),
                kv_stride: 2 * shape.hidden(),
                cu_q: cq_ptr,
                cu_k: ck_ptr,
            };
            (ptrs, vec![g1, g2, g3, g4])
        },
    )
}

/// The query/key/value side of a launch as an entry point lays it out:
/// pointers with their column offsets, row strides (elements) and
/// `cu_seqlens`.
struct QkvPtrs {
    q: u64,
    k: u64,
    v: u64,
    q_stride: usize,
    kv_stride: usize,
    cu_q: u64,
    cu_k: u64,
}

/// What both entry points do around their layout: validate the buffer
/// lengths (`lens`: q, kv, cu_seqlens_q, cu_seqlens_k) for `layout`, and
/// unless there is no work (empty batch, no query rows) take the pointers
/// of `qkv` (with their guards), of the head selection and of `out`, in
/// that order, and launch.
#[allow(clippy::too_many_arguments)]
fn attend<'s, A, N, M, O>(
    dev: &'s Device,
    shape: &AttentionShape,
    layout: AttentionLayout,
    [q, kv, cu_q, cu_k]: [usize; 4],
    heads: &'s HeadSelection<'_, A, N, M>,
    out: &'s mut O,
    qkv: impl FnOnce(&'s CudaStream) -> (QkvPtrs, Vec<SyncOnDrop<'s>>),
) -> Result<()>
where
    A: DevicePtr<i32>,
    N: DevicePtr<i32>,
    M: DevicePtr<u8>,
    O: DevicePtrMut<f16>,
{
    let bufs = AttentionBuffers {
        q,
        kv,
        cu_q,
        cu_k,
        active: heads.active.len(),
        n_active: heads.n_active.len(),
        head_mask: heads.head_mask.map(|m| m.len()),
        out: out.len(),
    };
    validate_attention(shape, layout, &bufs)?;
    if shape.batch == 0 || shape.rows_q == 0 {
        return Ok(());
    }
    crate::kernels::ensure_built()?;
    let stream = dev.stream();
    let (p, _qkv_guards) = qkv(stream);
    let (act_ptr, _g1) = heads.active.device_ptr(stream);
    let (n_ptr, _g2) = heads.n_active.device_ptr(stream);
    let (mask_ptr, _g3) = opt_ptr(heads.head_mask, stream);
    let (out_ptr, _g4) = out.device_ptr_mut(stream);
    launch(
        dev,
        shape,
        &RawAttention {
            io: p,
            active: act_ptr,
            n_active: n_ptr,
            mask: mask_ptr,
            out: out_ptr,
        },
    )
}

/// Launches the fused kernel (and the zero-fill when a mask is given) on
/// validated raw pointers.
fn launch(dev: &Device, shape: &AttentionShape, r: &RawAttention) -> Result<()> {
    let io = &r.io;
    for (name, p, align) in [
        ("q", io.q, 16),
        ("k", io.k, 16),
        ("v", io.v, 16),
        ("out", r.out, 16),
        ("active", r.active, 8),
        ("n_active", r.n_active, 4),
        ("cu_seqlens_q", io.cu_q, 4),
        ("cu_seqlens_k", io.cu_k, 4),
    ] {
        check_aligned(OP, name, p, align)?;
    }
    let d = shape.hidden();
    let name = match shape.head_dim {
        64 => "attention_fwd_d64_f16",
        32 => "attention_fwd_d32_f16",
        // validate_attention admitted only 16, 32 and 64.
        _ => "attention_fwd_d16_f16",
    };
    let params = AttnParamsC {
        q: io.q,
        k: io.k,
        v: io.v,
        out: r.out,
        cu_q: io.cu_q,
        cu_k: io.cu_k,
        active: r.active,
        n_active: r.n_active,
        q_stride: io.q_stride as i32,
        k_stride: io.kv_stride as i32,
        v_stride: io.kv_stride as i32,
        out_stride: d as i32,
        batch: shape.batch as i32,
        heads: shape.heads as i32,
        rows_q: shape.rows_q as i32,
        rows_k: shape.rows_k as i32,
        max_seqlen_q: shape.max_seqlen_q as i32,
        max_seqlen_k: shape.max_seqlen_k as i32,
        scale_log2: std::f32::consts::LOG2_E / (shape.head_dim as f32).sqrt(),
        pad: 0,
    };
    // No sequence is longer than its buffer, so the grid never needs more
    // query tiles than min(bound, rows).
    let q_tiles = shape.max_seqlen_q.min(shape.rows_q).div_ceil(BLOCK_M) as u32;
    let pairs = (shape.batch * shape.heads) as u32;
    let stream = dev.stream();

    if r.mask != 0 {
        let zname = "attention_zero_inactive_f16";
        let zf = dev.function(MODULE, zname)?;
        let zp = ZeroParamsC {
            out: r.out,
            cu_q: io.cu_q,
            mask: r.mask,
            out_stride: d as i32,
            batch: shape.batch as i32,
            heads: shape.heads as i32,
            head_dim: shape.head_dim as i32,
            rows_q: shape.rows_q as i32,
            max_seqlen_q: shape.max_seqlen_q as i32,
        };
        let cfg = LaunchConfig {
            grid_dim: (
                shape.max_seqlen_q.min(shape.rows_q).div_ceil(ZERO_ROWS) as u32,
                shape.batch as u32,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&zf);
        b.arg(&zp);
        // SAFETY: `ZeroParams` by value is the kernel's only argument; `out`
        // covers rows_q * D f16 (validated), `cu_q` batch + 1 i32 and `mask`
        // batch * heads u8; the kernel clamps every sequence to rows_q and
        // max_seqlen_q, so it writes only inside `out`. Guards for all
        // pointers are held by the caller across this call.
        unsafe { b.launch(cfg) }.map_err(|e| Error::driver(format!("launching {zname}"), e))?;
        dev.check_launch(zname)?;
    }

    let f = dev.function(MODULE, name)?;
    let cfg = LaunchConfig {
        grid_dim: (q_tiles, pairs, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&f);
    b.arg(&params);
    // SAFETY: `AttnParams` by value is the kernel's only argument. q/k/v/out
    // were validated to cover rows_q (rows_k) rows of their strides, with the
    // column offsets plus heads * head_dim inside each row; cu_q/cu_k hold
    // batch + 1 i32, active 2 * batch * heads i32 (8-byte aligned, read as
    // int2), n_active one i32. The kernel clamps every sequence to the row
    // counts and host bounds and skips pairs with out-of-range indices, so no
    // access leaves the buffers whatever the device-side values. Pointer
    // guards are held by the caller across this call.
    unsafe { b.launch(cfg) }.map_err(|e| Error::driver(format!("launching {name}"), e))?;
    dev.check_launch(name)
}

/// Builds the compacted active list from a `[batch, heads]` u8 mask on the
/// device: `active` gets the `(sequence, head)` i32 pairs of nonzero entries
/// in row-major order, `n_active[0]` their count. No host round trip.
pub fn build_active_heads<M, A, N>(
    dev: &Device,
    batch: usize,
    heads: usize,
    head_mask: &M,
    active: &mut A,
    n_active: &mut N,
) -> Result<()>
where
    M: DevicePtr<u8>,
    A: DevicePtrMut<i32>,
    N: DevicePtrMut<i32>,
{
    validate_active_heads(batch, heads, head_mask.len(), active.len(), n_active.len())?;
    crate::kernels::ensure_built()?;
    let name = "attention_active_list";
    let f = dev.function(MODULE, name)?;
    let stream = dev.stream();
    let (m_ptr, _g1) = head_mask.device_ptr(stream);
    let (a_ptr, _g2) = active.device_ptr_mut(stream);
    let (n_ptr, _g3) = n_active.device_ptr_mut(stream);
    check_aligned(OP, "active", a_ptr, 8)?;
    check_aligned(OP, "n_active", n_ptr, 4)?;
    let (b32, h32) = (batch as i32, heads as i32);
    let mut b = stream.launch_builder(&f);
    b.arg(&m_ptr).arg(&b32).arg(&h32).arg(&a_ptr).arg(&n_ptr);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `attention_active_list(const u8*, int, int,
    // int2*, int*)`; the mask holds batch * heads bytes, `active` room for
    // batch * heads pairs (8-byte aligned), `n_active` one i32 (validated);
    // the guards are held until after the launch.
    unsafe { b.launch(cfg) }.map_err(|e| Error::driver(format!("launching {name}"), e))?;
    dev.check_launch(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> AttentionShape {
        AttentionShape {
            batch: 2,
            heads: 12,
            head_dim: 64,
            rows_q: 80,
            rows_k: 80,
            max_seqlen_q: 40,
            max_seqlen_k: 40,
        }
    }

    fn bufs(s: &AttentionShape) -> AttentionBuffers {
        let d = s.hidden();
        AttentionBuffers {
            q: s.rows_q * 3 * d,
            kv: 0,
            cu_q: s.batch + 1,
            cu_k: s.batch + 1,
            active: 2 * s.batch * s.heads,
            n_active: 1,
            head_mask: Some(s.batch * s.heads),
            out: s.rows_q * d,
        }
    }

    #[test]
    fn accepts_consistent_self_attention() {
        let s = shape();
        validate_attention(&s, AttentionLayout::SelfPacked, &bufs(&s)).unwrap();
    }

    #[test]
    fn rejects_bad_arguments() {
        let s = shape();
        let b = bufs(&s);
        let bad_dh = AttentionShape { head_dim: 48, ..s };
        assert!(matches!(
            validate_attention(&bad_dh, AttentionLayout::SelfPacked, &b),
            Err(Error::Unsupported { .. })
        ));
        let cases = [
            AttentionBuffers { cu_q: 2, ..b },
            AttentionBuffers { q: b.q - 1, ..b },
            AttentionBuffers {
                out: b.out - 1,
                ..b
            },
            AttentionBuffers {
                active: b.active - 1,
                ..b
            },
            AttentionBuffers { n_active: 0, ..b },
            AttentionBuffers {
                head_mask: Some(5),
                ..b
            },
        ];
        for c in cases {
            assert!(matches!(
                validate_attention(&s, AttentionLayout::SelfPacked, &c),
                Err(Error::InvalidArgument { .. })
            ));
        }
        let mismatched = AttentionShape { rows_k: 81, ..s };
        assert!(validate_attention(&mismatched, AttentionLayout::SelfPacked, &b).is_err());
    }

    #[test]
    fn validates_cross_attention() {
        let s = AttentionShape {
            rows_k: 1154,
            max_seqlen_k: 577,
            ..shape()
        };
        let d = s.hidden();
        let b = AttentionBuffers {
            q: s.rows_q * d,
            kv: s.rows_k * 2 * d,
            ..bufs(&s)
        };
        validate_attention(&s, AttentionLayout::Cross, &b).unwrap();
        let short_kv = AttentionBuffers { kv: b.kv - 8, ..b };
        assert!(validate_attention(&s, AttentionLayout::Cross, &short_kv).is_err());
        let bad_cu_k = AttentionBuffers { cu_k: 4, ..b };
        assert!(validate_attention(&s, AttentionLayout::Cross, &bad_cu_k).is_err());
    }

    #[test]
    fn validates_active_heads() {
        validate_active_heads(2, 12, 24, 48, 1).unwrap();
        assert!(validate_active_heads(2, 12, 23, 48, 1).is_err());
        assert!(validate_active_heads(2, 12, 24, 47, 1).is_err());
        assert!(validate_active_heads(2, 12, 24, 48, 0).is_err());
    }

    #[test]
    fn params_layout_matches_c() {
        assert_eq!(std::mem::size_of::<AttnParamsC>(), 112);
        assert_eq!(std::mem::size_of::<ZeroParamsC>(), 48);
    }
}
