//! The dense attention baseline ([`DenseAttentionBaseline`]): the same
//! attention through padded batches and cuBLAS, what the fused kernel is
//! measured against.

use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::f16;

use super::super::{check_aligned, check_len};
use super::{validate_attention, AttentionBuffers, AttentionLayout, AttentionShape, MODULE, OP};
use crate::device::Device;
use crate::{Error, Result};

fn blas_err(context: &str, e: cudarc::cublas::result::CublasError) -> Error {
    Error::Blas {
        context: context.to_string(),
        message: format!("{e:?}"),
    }
}

/// The unfused dense attention the benches compare the fused kernel with:
/// pad the packed operands to `[batch, heads, max_len, dh]`, `S = Q K^T / sqrt(dh)`
/// with one cuBLAS strided-batched GEMM, a row softmax kernel (keys past the
/// true length get 0), `O = P V` with a second GEMM, unpad into `out`. Every
/// head of every sequence is computed (no head sparsity), `S` is
/// materialised in f16.
pub struct DenseAttentionBaseline {
    blas: CudaBlas,
    shape: AttentionShape,
    q_pad: CudaSlice<f16>,
    k_pad: CudaSlice<f16>,
    v_pad: CudaSlice<f16>,
    s: CudaSlice<f16>,
    o_pad: CudaSlice<f16>,
}

impl DenseAttentionBaseline {
    /// Allocates the padded workspaces for `shape` (its `max_seqlen_*` are the
    /// padded lengths).
    pub fn new(dev: &Device, shape: AttentionShape) -> Result<Self> {
        validate_attention(
            &shape,
            AttentionLayout::Cross,
            &AttentionBuffers {
                q: usize::MAX,
                kv: usize::MAX,
                cu_q: shape.batch + 1,
                cu_k: shape.batch + 1,
                active: usize::MAX,
                n_active: 1,
                head_mask: None,
                out: usize::MAX,
            },
        )?;
        crate::kernels::ensure_built()?;
        let stream = dev.stream();
        let bh = shape.batch * shape.heads;
        let (lq, lk, dh) = (shape.max_seqlen_q, shape.max_seqlen_k, shape.head_dim);
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<f16>(n.max(1))
                .map_err(|e| Error::driver("allocating the dense baseline workspace", e))
        };
        Ok(DenseAttentionBaseline {
            blas: CudaBlas::new(stream.clone()).map_err(|e| blas_err("creating a handle", e))?,
            shape,
            q_pad: alloc(bh * lq * dh)?,
            k_pad: alloc(bh * lk * dh)?,
            v_pad: alloc(bh * lk * dh)?,
            s: alloc(bh * lq * lk)?,
            o_pad: alloc(bh * lq * dh)?,
        })
    }

    /// Dense self-attention on a packed `[rows_q, 3D]` `qkv`.
    pub fn self_attention<X, C, O>(
        &mut self,
        dev: &Device,
        qkv: &X,
        cu_seqlens: &C,
        out: &mut O,
    ) -> Result<()>
    where
        X: DevicePtr<f16>,
        C: DevicePtr<i32>,
        O: DevicePtrMut<f16>,
    {
        let s = self.shape;
        let d = s.hidden();
        check_len(OP, "qkv", qkv.len(), s.rows_q * 3 * d)?;
        check_len(OP, "cu_seqlens", cu_seqlens.len(), s.batch + 1)?;
        check_len(OP, "out", out.len(), s.rows_q * d)?;
        if s.rows_k != s.rows_q || s.max_seqlen_k != s.max_seqlen_q {
            return Err(Error::invalid(
                OP,
                "dense self-attention needs rows_k == rows_q and max_seqlen_k == max_seqlen_q",
            ));
        }
        let stream = dev.stream().clone();
        let (x, _g1) = qkv.device_ptr(&stream);
        let (cu, _g2) = cu_seqlens.device_ptr(&stream);
        let (o, _g3) = out.device_ptr_mut(&stream);
        let dd = 2 * d as u64;
        self.run(
            dev,
            [(x, 3 * d), (x + dd, 3 * d), (x + 2 * dd, 3 * d)],
            cu,
            cu,
            o,
        )
    }

    /// Dense cross-attention: `q` `[rows_q, D]`, `kv` `[rows_k, 2D]`.
    pub fn cross_attention<Q, KV, C1, C2, O>(
        &mut self,
        dev: &Device,
        q: &Q,
        kv: &KV,
        cu_q: &C1,
        cu_k: &C2,
        out: &mut O,
    ) -> Result<()>
    where
        Q: DevicePtr<f16>,
        KV: DevicePtr<f16>,
        C1: DevicePtr<i32>,
        C2: DevicePtr<i32>,
        O: DevicePtrMut<f16>,
    {
        let s = self.shape;
        let d = s.hidden();
        check_len(OP, "q", q.len(), s.rows_q * d)?;
        check_len(OP, "kv", kv.len(), s.rows_k * 2 * d)?;
        check_len(OP, "cu_seqlens_q", cu_q.len(), s.batch + 1)?;
        check_len(OP, "cu_seqlens_k", cu_k.len(), s.batch + 1)?;
        check_len(OP, "out", out.len(), s.rows_q * d)?;
        let stream = dev.stream().clone();
        let (qp, _g1) = q.device_ptr(&stream);
        let (kvp, _g2) = kv.device_ptr(&stream);
        let (cq, _g3) = cu_q.device_ptr(&stream);
        let (ck, _g4) = cu_k.device_ptr(&stream);
        let (o, _g5) = out.device_ptr_mut(&stream);
        let dd = 2 * d as u64;
        self.run(dev, [(qp, d), (kvp, 2 * d), (kvp + dd, 2 * d)], cq, ck, o)
    }

    /// `src`: (pointer with column offset, row stride) of q, k, v.
    fn run(
        &mut self,
        dev: &Device,
        src: [(u64, usize); 3],
        cu_q: u64,
        cu_k: u64,
        out: u64,
    ) -> Result<()> {
        let s = self.shape;
        if s.batch == 0 {
            return Ok(());
        }
        for (name, p) in [
            ("q", src[0].0),
            ("k", src[1].0),
            ("v", src[2].0),
            ("out", out),
        ] {
            check_aligned(OP, name, p, 16)?;
        }
        let stream = dev.stream().clone();
        let (h, dh) = (s.heads as i32, s.head_dim as i32);
        let (lq, lk) = (s.max_seqlen_q as i32, s.max_seqlen_k as i32);
        let bh = (s.batch * s.heads) as i32;

        let pad = dev.function(MODULE, "attention_pad_f16")?;
        {
            let (qd, _g1) = self.q_pad.device_ptr_mut(&stream);
            let (kd, _g2) = self.k_pad.device_ptr_mut(&stream);
            let (vd, _g3) = self.v_pad.device_ptr_mut(&stream);
            for ((ptr, stride), dst, cu, len) in [
                (src[0], qd, cu_q, lq),
                (src[1], kd, cu_k, lk),
                (src[2], vd, cu_k, lk),
            ] {
                let stride = stride as i32;
                let mut b = stream.launch_builder(&pad);
                b.arg(&ptr)
                    .arg(&stride)
                    .arg(&cu)
                    .arg(&h)
                    .arg(&dh)
                    .arg(&len)
                    .arg(&dst);
                let cfg = LaunchConfig {
                    grid_dim: (len as u32, s.batch as u32, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: arguments match `attention_pad_f16`; `dst` holds
                // batch * heads * len * dh f16 (allocated in `new`), the source
                // covers the rows named by cu (checked by the caller) and the
                // kernel clamps lengths to `len`. Guards are held.
                unsafe { b.launch(cfg) }
                    .map_err(|e| Error::driver("launching attention_pad_f16", e))?;
            }
        }

        // S (row-major [lq, lk]) is column-major [lk, lq] = K_cm^T * Q_cm,
        // where row-major [L, dh] operands are column-major [dh, L].
        let scale = f16::from_f32(1.0 / (s.head_dim as f32).sqrt());
        let cfg1 = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
                transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m: lk,
                n: lq,
                k: dh,
                alpha: scale,
                lda: dh,
                ldb: dh,
                beta: f16::ZERO,
                ldc: lk,
            },
            batch_size: bh,
            stride_a: (lk * dh) as i64,
            stride_b: (lq * dh) as i64,
            stride_c: (lq * lk) as i64,
        };
        // SAFETY: every operand is a workspace allocated in `new` for exactly
        // batch * heads matrices of these sizes and strides.
        unsafe {
            self.blas
                .gemm_strided_batched(cfg1, &self.k_pad, &self.q_pad, &mut self.s)
        }
        .map_err(|e| blas_err("dense baseline S = Q K^T", e))?;

        let softmax = dev.function(MODULE, "attention_softmax_f16")?;
        {
            let rows = bh * lq;
            let (sp, _g) = self.s.device_ptr_mut(&stream);
            let mut b = stream.launch_builder(&softmax);
            b.arg(&sp).arg(&cu_k).arg(&h).arg(&lq).arg(&lk).arg(&rows);
            let cfg = LaunchConfig {
                grid_dim: ((rows as u32).div_ceil(4), 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match `attention_softmax_f16`; S holds
            // rows * lk f16, cu_k batch + 1 i32; the guard is held.
            unsafe { b.launch(cfg) }
                .map_err(|e| Error::driver("launching attention_softmax_f16", e))?;
        }

        // O (row-major [lq, dh]) is column-major [dh, lq] = V_cm [dh, lk] * P_cm [lk, lq].
        let cfg2 = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m: dh,
                n: lq,
                k: lk,
                alpha: f16::ONE,
                lda: dh,
                ldb: lk,
                beta: f16::ZERO,
                ldc: dh,
            },
            batch_size: bh,
            stride_a: (lk * dh) as i64,
            stride_b: (lq * lk) as i64,
            stride_c: (lq * dh) as i64,
        };
        // SAFETY: as above, workspaces sized in `new`.
        unsafe {
            self.blas
                .gemm_strided_batched(cfg2, &self.v_pad, &self.s, &mut self.o_pad)
        }
        .map_err(|e| blas_err("dense baseline O = P V", e))?;

        let unpad = dev.function(MODULE, "attention_unpad_f16")?;
        {
            let (op, _g) = self.o_pad.device_ptr(&stream);
            let d = s.hidden() as i32;
            let mut b = stream.launch_builder(&unpad);
            b.arg(&op)
                .arg(&cu_q)
                .arg(&h)
                .arg(&dh)
                .arg(&lq)
                .arg(&out)
                .arg(&d);
            let cfg = LaunchConfig {
                grid_dim: (lq as u32, s.batch as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match `attention_unpad_f16`; the source is the
            // padded workspace, `out` covers rows_q * D (checked by the caller)
            // and only rows below each clamped length are written.
            unsafe { b.launch(cfg) }
                .map_err(|e| Error::driver("launching attention_unpad_f16", e))?;
        }
        dev.check_launch("dense attention baseline")
    }
}
