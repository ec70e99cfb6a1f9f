//! Bench groups of the pruning kernels: compaction against a device-to-device
//! copy of the same kept bytes, and the fused token scorer against the
//! unfused path (cuBLASLt GEMM with a bias+GELU epilogue writing the
//! `[rows, Hs]` hidden layer, then `score_dot_f16`).

use criterion::{Criterion, Throughput};
use cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
use cudarc::driver::CudaSlice;
use half::f16;
use smarttrim::ops::{
    compact, score_dot, token_scores, CompactInputs, CompactOutputs, CompactShape, KeepRuleDev,
    LnDev, PrunerInput, TokenPrunerDev, TokenScoreOutputs, TokenScoreWorkspace,
};

use crate::common::{data_f16, device, time_iters};

const SEQ: usize = 577;
const D: usize = 768;
const HS: usize = 384;

/// Compaction of `batch` x 577 rows of 768 at keep ratios 0.9 / 0.5 / 0.2
/// (threshold flags: every row i of a sequence with (i * 37) % 100 < 100 *
/// ratio, plus the first) against a dtod copy of the kept bytes.
pub fn compact_group(c: &mut Criterion) {
    let Some(dev) = device("compact") else {
        return;
    };
    let stream = dev.stream().clone();
    let mut g = c.benchmark_group("compact");
    for &batch in &[1usize, 32] {
        let total = batch * SEQ;
        let cu: Vec<i32> = (0..=batch).map(|b| (b * SEQ) as i32).collect();
        let orig: Vec<i32> = (0..total).map(|i| (i % SEQ) as i32).collect();
        let x = stream.clone_htod(&data_f16(total * D, 5)).unwrap();
        let cu_d = stream.clone_htod(&cu).unwrap();
        let oi_d = stream.clone_htod(&orig).unwrap();
        let mut ox = stream.alloc_zeros::<f16>(total * D).unwrap();
        let mut ox_copy = stream.alloc_zeros::<f16>(total * D).unwrap();
        let mut ocu = stream.alloc_zeros::<i32>(batch + 1).unwrap();
        let mut ooi = stream.alloc_zeros::<i32>(total).unwrap();
        let mut counts = stream.alloc_zeros::<i32>(batch).unwrap();
        let mut scratch = stream.alloc_zeros::<i32>(total).unwrap();
        let mut new_total = stream.alloc_zeros::<i32>(1).unwrap();
        for &ratio in &[0.9f32, 0.5, 0.2] {
            let flags: Vec<u8> = (0..total)
                .map(|i| (((i % SEQ) * 37) % 100 < (ratio * 100.0) as usize) as u8)
                .collect();
            let kept = flags
                .iter()
                .enumerate()
                .filter(|(i, &f)| f == 1 || i % SEQ == 0)
                .count();
            let flags_d = stream.clone_htod(&flags).unwrap();
            let mut run = || {
                compact(
                    &dev,
                    CompactShape {
                        batch,
                        total_rows: total,
                        max_seqlen: SEQ,
                        d: D,
                    },
                    KeepRuleDev::Flags(&flags_d),
                    true,
                    CompactInputs {
                        rows: &x,
                        cu_seqlens: &cu_d,
                        orig_index: &oi_d,
                    },
                    CompactOutputs {
                        rows: &mut ox,
                        cu_seqlens: &mut ocu,
                        orig_index: &mut ooi,
                        kept_counts: &mut counts,
                        scratch: &mut scratch,
                        new_total: Some(&mut new_total),
                        keep_out: None,
                    },
                )
                .unwrap()
            };
            let kept_bytes = kept * D * 2;
            g.throughput(Throughput::Bytes(2 * kept_bytes as u64));
            let name = format!("batch={batch}/keep={ratio}");
            g.bench_function(format!("compact_f16/{name}"), |b| {
                b.iter_custom(|iters| time_iters(&dev, iters, &mut run))
            });
            let src = x.slice(0..kept * D);
            let mut copy = || {
                let mut dst = ox_copy.slice_mut(0..kept * D);
                stream.memcpy_dtod(&src, &mut dst).unwrap()
            };
            g.bench_function(format!("memcpy_dtod_kept/{name}"), |b| {
                b.iter_custom(|iters| time_iters(&dev, iters, &mut copy))
            });
            let t_k = time_iters(&dev, 200, &mut run);
            let t_c = time_iters(&dev, 200, &mut copy);
            println!(
                "compact {name}: {:.1} us vs dtod copy of the kept bytes {:.1} us: ratio {:.2}",
                t_k.as_secs_f64() * 1e6 / 200.0,
                t_c.as_secs_f64() * 1e6 / 200.0,
                t_k.as_secs_f64() / t_c.as_secs_f64()
            );
        }
    }
    g.finish();
}

/// The fused token scorer (`token_scores`: LN, means, context, fused rows)
/// against the unfused row scorer (cuBLASLt `U W1x^T + b` with a GELU
/// epilogue into `[rows, Hs]`, then `score_dot_f16`). The unfused figure
/// leaves out the LN / mean / context steps, so it flatters the baseline.
pub fn score_group(c: &mut Criterion) {
    let Some(dev) = device("score") else {
        return;
    };
    let stream = dev.stream().clone();
    let blas = match CudaBlasLT::new(stream.clone()) {
        Ok(b) => b,
        Err(e) => {
            println!("skipped bench group score: cuBLASLt unavailable: {e:?}");
            return;
        }
    };
    let mut g = c.benchmark_group("score");
    let up = |n: usize, seed: u32| -> CudaSlice<f16> {
        // Small weights so GELU stays in its interesting range.
        let v: Vec<f16> = data_f16(n, seed)
            .iter()
            .map(|x| f16::from_f32(x.to_f32() * 0.05))
            .collect();
        stream.clone_htod(&v).unwrap()
    };
    let ln_g = stream.clone_htod(&vec![f16::ONE; D]).unwrap();
    let ln_b = stream.alloc_zeros::<f16>(D).unwrap();
    let (w1x, w1s, b1, w2) = (up(HS * D, 11), up(HS * D, 12), up(HS, 13), up(HS, 14));
    for &batch in &[1usize, 32] {
        let total = batch * SEQ;
        let cu: Vec<i32> = (0..=batch).map(|b| (b * SEQ) as i32).collect();
        let x = stream.clone_htod(&data_f16(total * D, 7)).unwrap();
        let cu_d = stream.clone_htod(&cu).unwrap();
        let mut u = stream.alloc_zeros::<f16>(total * D).unwrap();
        let mut g_self = stream.alloc_zeros::<f32>(batch * D).unwrap();
        let mut ctx = stream.alloc_zeros::<f32>(batch * HS).unwrap();
        let mut partial = stream.alloc_zeros::<f32>((HS / 64) * total).unwrap();
        let mut scores = stream.alloc_zeros::<f32>(total).unwrap();
        let mut flags = stream.alloc_zeros::<u8>(total).unwrap();
        let mut hidden = stream.alloc_zeros::<f16>(total * HS).unwrap();
        let mut scores_u = stream.alloc_zeros::<f32>(total).unwrap();
        let mut flags_u = stream.alloc_zeros::<u8>(total).unwrap();
        let flops = 2 * total * HS * D;
        g.throughput(Throughput::Elements(flops as u64));
        let w = TokenPrunerDev {
            ln_p: LnDev {
                gamma: &ln_g,
                beta: &ln_b,
            },
            ln_c: None,
            w1x: &w1x,
            w1s: &w1s,
            w1c: None,
            b1: &b1,
            w2: &w2,
            b2: 0.0,
            d: D,
            d_other: None,
            hs: HS,
            eps: 1e-6,
        };
        let mut fused = || {
            let input = PrunerInput {
                batch,
                total_rows: total,
                x: &x,
                cu_seqlens: &cu_d,
                other: None,
            };
            token_scores(
                &dev,
                &input,
                &w,
                TokenScoreWorkspace {
                    u: &mut u,
                    uy: None,
                    g_self: &mut g_self,
                    g_cross: None,
                    context: &mut ctx,
                    partial: Some(&mut partial),
                },
                TokenScoreOutputs {
                    scores: &mut scores,
                    flags: Some(&mut flags),
                    tau: 0.5,
                    keep_first: true,
                },
            )
            .unwrap()
        };
        let name = format!("rows={total}x{D}/hs={HS}");
        g.bench_function(format!("fused_token_scores/{name}"), |b| {
            b.iter_custom(|iters| time_iters(&dev, iters, &mut fused))
        });
        // Column-major view: H^T [HS, rows] = W1x [HS, D] (row-major, i.e.
        // col-major [D, HS] transposed) x U^T (col-major [D, rows]).
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: HS as u64,
            n: total as u64,
            k: D as u64,
            alpha: 1.0,
            lda: D as i64,
            ldb: D as i64,
            beta: 0.0,
            ldc: HS as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let mut unfused = || {
            // SAFETY: w1x holds HS * D, x (standing in for u) total * D and
            // hidden total * HS f16 elements, matching cfg's shapes and leading
            // dimensions; b1 holds HS (the bias over m).
            unsafe {
                blas.matmul(
                    cfg,
                    &w1x,
                    &x,
                    &mut hidden,
                    Some(&b1),
                    Some(&Activation::Gelu),
                )
            }
            .unwrap();
            score_dot(
                &dev,
                total,
                HS,
                &hidden,
                &w2,
                0.0,
                0.5,
                &mut scores_u,
                Some(&mut flags_u),
            )
            .unwrap()
        };
        g.bench_function(format!("unfused_gemm_gelu_dot/{name}"), |b| {
            b.iter_custom(|iters| time_iters(&dev, iters, &mut unfused))
        });
        let t_f = time_iters(&dev, 100, &mut fused);
        let t_u = time_iters(&dev, 100, &mut unfused);
        println!(
            "score {name}: fused {:.1} us, unfused (GEMM+GELU, dot) {:.1} us: ratio {:.2}",
            t_f.as_secs_f64() * 1e6 / 100.0,
            t_u.as_secs_f64() * 1e6 / 100.0,
            t_f.as_secs_f64() / t_u.as_secs_f64()
        );
    }
    g.finish();
}
