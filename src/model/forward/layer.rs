//! One layer of one stream on its compacted rows: self-attention, the
//! cross-attention of a cross layer, the FFN, pre- or post-LN.

use cudarc::driver::{CudaSlice, CudaView};
use half::f16;

use super::super::weights::{DevCross, DevLayer, GpuModel};
use super::super::workspace::StreamWs;
use super::buffers::{pair, OtherRef};
use super::launch::{linear, ln, Lin};
use super::shape::Cur;
use crate::device::Device;
use crate::ops::{
    bias_act, bias_gelu, bias_residual, cross_attention, self_attention, AttentionShape,
    BlasWorkspace, ColsShape, HeadSelection,
};
use crate::spec::{Activation, StreamConfig};
use crate::Result;

/// Which heads an attention module runs: all of them, or those of a head
/// pruner's mask at an offset of the stream's mask log.
#[derive(Debug, Clone, Copy)]
pub(super) enum Heads {
    All,
    Pruned(usize),
}

impl GpuModel {
    /// One layer of stream `sc` on its current (compacted) rows `x[c.x]`,
    /// writing `x[c.x ^ 1]`. Pre-LN: `h = x + SA(LN1 x)`, `h += CA(LN2 h, y)`,
    /// `o = h + FFN(LN3 h)`; post-LN: `h = LN1(x + SA x)`,
    /// `h = LN2(h + CA(h, y))`, `o = LN3(h + FFN h)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_layer(
        &self,
        dev: &Device,
        lt: &BlasWorkspace,
        sc: &StreamConfig,
        lw: &DevLayer,
        w: &mut StreamWs,
        other: Option<&OtherRef<'_>>,
        c: Cur,
        batch: usize,
        heads: [Heads; 2],
    ) -> Result<()> {
        let blas = Lin {
            blas: &self.blas,
            dev,
            lt,
        };
        let blas = &blas;
        let (d, hd, eps, f) = (sc.hidden, sc.heads, sc.ln_eps, sc.ffn);
        let dh = d / hd;
        let n = c.rows;
        let ms = c.max_seqlen();
        let bh = batch * hd;
        let cu_v = w.cu[c.c].slice(0..batch + 1);
        let nd = w.cu[c.c].slice(batch..batch + 1);
        let (xin, xout) = pair(&mut w.x, c.x);
        let off = |h: Heads| match h {
            Heads::All => 0,
            Heads::Pruned(o) => o,
        };
        let mask_s = w.mask_log.slice(off(heads[0])..off(heads[0]) + bh);
        let mask_c = w.mask_log.slice(off(heads[1])..off(heads[1]) + bh);
        let sel_s = match heads[0] {
            Heads::All => HeadSelection {
                active: &w.all_pairs,
                n_active: &w.all_count,
                head_mask: None,
            },
            Heads::Pruned(_) => HeadSelection {
                active: &w.pairs_self,
                n_active: &w.count_self,
                head_mask: Some(&mask_s),
            },
        };
        let sel_c = match heads[1] {
            Heads::All => HeadSelection {
                active: &w.all_pairs,
                n_active: &w.all_count,
                head_mask: None,
            },
            Heads::Pruned(_) => HeadSelection {
                active: &w.pairs_cross,
                n_active: &w.count_cross,
                head_mask: Some(&mask_c),
            },
        };
        let self_shape = AttentionShape {
            batch,
            heads: hd,
            head_dim: dh,
            rows_q: n,
            rows_k: n,
            max_seqlen_q: ms,
            max_seqlen_k: ms,
        };
        let cross = match (&lw.cross, other) {
            (Some(cw), Some(o)) => Some((cw, o)),
            _ => None,
        };
        let cross_shape = |o: &OtherRef<'_>| AttentionShape {
            batch,
            heads: hd,
            head_dim: dh,
            rows_q: n,
            rows_k: o.n,
            max_seqlen_q: ms,
            max_seqlen_k: o.max_seqlen,
        };
        let cols = |width: usize| ColsShape { rows: n, n: width };
        if sc.pre_ln {
            ln(dev, n, d, eps, xin, None, &lw.self_ln, &nd, &mut w.a)?;
            linear(blas, n, d, 3 * d, &w.a, &lw.qkv, true, &mut w.qkv)?;
            self_attention(dev, &self_shape, &w.qkv, &cu_v, &sel_s, &mut w.ctx)?;
            linear(blas, n, d, d, &w.ctx, &lw.self_out, false, &mut w.h)?;
            bias_residual(dev, cols(d), &mut w.h, &lw.self_out.b, xin, Some(&nd))?;
            let hcur = if let Some((cw, o)) = cross {
                ln(dev, n, d, eps, &w.h, None, &cw.ln, &nd, &mut w.a)?;
                let bufs = (&mut w.q, &mut w.kv, &mut w.ctx);
                cross_context(blas, &cross_shape(o), cw, o, &w.a, &cu_v, &sel_c, bufs)?;
                linear(blas, n, d, d, &w.ctx, &cw.out, false, &mut w.t)?;
                bias_residual(dev, cols(d), &mut w.t, &cw.out.b, &w.h, Some(&nd))?;
                &w.t
            } else {
                &w.h
            };
            ln(dev, n, d, eps, hcur, None, &lw.ffn_ln, &nd, &mut w.a)?;
            linear(blas, n, d, f, &w.a, &lw.fc1, false, &mut w.ffn)?;
            ffn_activation(dev, sc, cols(f), &mut w.ffn, &lw.fc1.b, &nd)?;
            linear(blas, n, f, d, &w.ffn, &lw.fc2, false, xout)?;
            bias_residual(dev, cols(d), xout, &lw.fc2.b, hcur, Some(&nd))?;
        } else {
            linear(blas, n, d, 3 * d, xin, &lw.qkv, true, &mut w.qkv)?;
            self_attention(dev, &self_shape, &w.qkv, &cu_v, &sel_s, &mut w.ctx)?;
            linear(blas, n, d, d, &w.ctx, &lw.self_out, true, &mut w.t)?;
            ln(dev, n, d, eps, &w.t, Some(xin), &lw.self_ln, &nd, &mut w.h)?;
            let hcur = if let Some((cw, o)) = cross {
                let bufs = (&mut w.q, &mut w.kv, &mut w.ctx);
                cross_context(blas, &cross_shape(o), cw, o, &w.h, &cu_v, &sel_c, bufs)?;
                linear(blas, n, d, d, &w.ctx, &cw.out, true, &mut w.t)?;
                ln(dev, n, d, eps, &w.t, Some(&w.h), &cw.ln, &nd, &mut w.a)?;
                &w.a
            } else {
                &w.h
            };
            linear(blas, n, d, f, hcur, &lw.fc1, false, &mut w.ffn)?;
            ffn_activation(dev, sc, cols(f), &mut w.ffn, &lw.fc1.b, &nd)?;
            linear(blas, n, f, d, &w.ffn, &lw.fc2, true, &mut w.t)?;
            ln(dev, n, d, eps, &w.t, Some(hcur), &lw.ffn_ln, &nd, xout)?;
        }
        Ok(())
    }
}

/// Cross-attention up to its context (before the output projection): the
/// query projection of `x_q`, the key/value projection of the other
/// stream's rows, and attention over them into `ctx`. Pre- and post-LN
/// layers differ only in what they feed and do around it.
#[allow(clippy::too_many_arguments)]
fn cross_context(
    blas: &Lin<'_>,
    shape: &AttentionShape,
    cw: &DevCross,
    o: &OtherRef<'_>,
    x_q: &CudaSlice<f16>,
    cu_q: &CudaView<'_, i32>,
    heads: &HeadSelection<'_, CudaSlice<i32>, CudaSlice<i32>, CudaView<'_, u8>>,
    (q, kv, ctx): (
        &mut CudaSlice<f16>,
        &mut CudaSlice<f16>,
        &mut CudaSlice<f16>,
    ),
) -> Result<()> {
    let (n, d) = (shape.rows_q, shape.heads * shape.head_dim);
    linear(blas, n, d, d, x_q, &cw.q, true, q)?;
    linear(blas, o.n, o.d, 2 * d, o.rows, &cw.kv, true, kv)?;
    cross_attention(blas.dev, shape, q, kv, cu_q, &o.cu, heads, ctx)
}

/// The FFN's `act(x + b1)` in place: erf GELU (the `bias_gelu` kernel) or
/// the stream's other activation (`bias_act`).
fn ffn_activation(
    dev: &Device,
    sc: &StreamConfig,
    shape: ColsShape,
    x: &mut CudaSlice<f16>,
    bias: &CudaSlice<f16>,
    nd: &CudaView<'_, i32>,
) -> Result<()> {
    match sc.activation {
        Activation::Gelu => bias_gelu(dev, shape, x, bias, Some(nd)),
        act => bias_act(dev, shape, act.into(), x, Some(bias), Some(nd)),
    }
}
