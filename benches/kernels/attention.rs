//! Sparse-head attention benches on METER/BLIP shapes (D 768, 12 heads,
//! dh 64; text 40 rows, image 577 rows; batch 1 and 32): the fused kernel
//! with 12 / 9 / 6 / 3 active heads per sequence, and the unfused dense
//! baseline (pad, cuBLAS Q K^T, softmax, cuBLAS P V, unpad) in the same run.
//! Throughput is the *useful* FLOPs, `4 * n_q * n_k * dh` per active head
//! (criterion's "elements" are FLOPs). A quick side measurement prints the
//! time ratio of each head count against all heads, and of the dense
//! baseline against the fused kernel with all heads.

use criterion::{Criterion, Throughput};
use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;
use smarttrim::device::Device;
use smarttrim::ops::{
    build_active_heads, cross_attention, self_attention, AttentionShape, DenseAttentionBaseline,
    HeadSelection,
};
use std::sync::Arc;

use crate::common::{data_f16, device, time_iters};

const HEADS: usize = 12;
const DH: usize = 64;
const D: usize = HEADS * DH;
const ACTIVE: [usize; 4] = [12, 9, 6, 3];

struct Case {
    name: &'static str,
    batch: usize,
    len_q: usize,
    /// None: self-attention (keys are the queries' rows).
    len_k: Option<usize>,
}

/// Active-head lists for `k` active heads (heads 0..k of every sequence).
struct Heads {
    mask: CudaSlice<u8>,
    active: CudaSlice<i32>,
    n_active: CudaSlice<i32>,
}

fn heads_for(dev: &Device, stream: &Arc<CudaStream>, batch: usize, k: usize) -> Heads {
    let mask: Vec<u8> = (0..batch * HEADS).map(|i| (i % HEADS < k) as u8).collect();
    let mask = stream.clone_htod(&mask).unwrap();
    let mut active = stream.alloc_zeros::<i32>(2 * batch * HEADS).unwrap();
    let mut n_active = stream.alloc_zeros::<i32>(1).unwrap();
    build_active_heads(dev, batch, HEADS, &mask, &mut active, &mut n_active).unwrap();
    Heads {
        mask,
        active,
        n_active,
    }
}

/// Mean seconds per call over a short fixed run (for the printed ratios).
fn quick(dev: &Device, mut f: impl FnMut()) -> f64 {
    time_iters(dev, 5, &mut f);
    time_iters(dev, 50, &mut f).as_secs_f64() / 50.0
}

pub fn attention_group(c: &mut Criterion) {
    let Some(dev) = device("attention") else {
        return;
    };
    let stream = dev.stream().clone();
    let cases = [
        Case {
            name: "self_text",
            batch: 1,
            len_q: 40,
            len_k: None,
        },
        Case {
            name: "self_text",
            batch: 32,
            len_q: 40,
            len_k: None,
        },
        Case {
            name: "self_image",
            batch: 1,
            len_q: 577,
            len_k: None,
        },
        Case {
            name: "self_image",
            batch: 32,
            len_q: 577,
            len_k: None,
        },
        Case {
            name: "cross_text_image",
            batch: 1,
            len_q: 40,
            len_k: Some(577),
        },
        Case {
            name: "cross_text_image",
            batch: 32,
            len_q: 40,
            len_k: Some(577),
        },
        Case {
            name: "cross_image_text",
            batch: 32,
            len_q: 577,
            len_k: Some(40),
        },
    ];
    let mut g = c.benchmark_group("attention");
    for case in &cases {
        let (b, lq) = (case.batch, case.len_q);
        let lk = case.len_k.unwrap_or(lq);
        let cu_q: Vec<i32> = (0..=b as i32).map(|i| i * lq as i32).collect();
        let cu_k: Vec<i32> = (0..=b as i32).map(|i| i * lk as i32).collect();
        let cq = stream.clone_htod(&cu_q).unwrap();
        let ck = stream.clone_htod(&cu_k).unwrap();
        let q = match case.len_k {
            None => stream.clone_htod(&data_f16(b * lq * 3 * D, 1)).unwrap(),
            Some(_) => stream.clone_htod(&data_f16(b * lq * D, 1)).unwrap(),
        };
        let kv = stream.clone_htod(&data_f16(b * lk * 2 * D, 2)).unwrap();
        let mut out = stream.alloc_zeros::<f16>(b * lq * D).unwrap();
        let shape = AttentionShape {
            batch: b,
            heads: HEADS,
            head_dim: DH,
            rows_q: b * lq,
            rows_k: b * lk,
            max_seqlen_q: lq,
            max_seqlen_k: lk,
        };
        let tag = format!("{}/b={b}/q={lq}/k={lk}", case.name);
        let flops_per_head = (4 * lq * lk * DH * b) as u64;

        let mut fused_times = Vec::new();
        for &k in &ACTIVE {
            let hs = heads_for(&dev, &stream, b, k);
            let sel = HeadSelection {
                active: &hs.active,
                n_active: &hs.n_active,
                head_mask: Some(&hs.mask),
            };
            let mut run = || match case.len_k {
                None => self_attention(&dev, &shape, &q, &cq, &sel, &mut out).unwrap(),
                Some(_) => {
                    cross_attention(&dev, &shape, &q, &kv, &cq, &ck, &sel, &mut out).unwrap()
                }
            };
            fused_times.push(quick(&dev, &mut run));
            g.throughput(Throughput::Elements(flops_per_head * k as u64));
            g.bench_function(format!("fused/{tag}/heads={k}"), |bch| {
                bch.iter_custom(|iters| time_iters(&dev, iters, &mut run))
            });
        }

        let mut dense = DenseAttentionBaseline::new(&dev, shape).unwrap();
        let mut run_dense = || match case.len_k {
            None => dense.self_attention(&dev, &q, &cq, &mut out).unwrap(),
            Some(_) => dense
                .cross_attention(&dev, &q, &kv, &cq, &ck, &mut out)
                .unwrap(),
        };
        let dense_t = quick(&dev, &mut run_dense);
        g.throughput(Throughput::Elements(flops_per_head * HEADS as u64));
        g.bench_function(format!("dense_cublas/{tag}/heads=12"), |bch| {
            bch.iter_custom(|iters| time_iters(&dev, iters, &mut run_dense))
        });

        let all = fused_times[0];
        let ratios: Vec<String> = ACTIVE
            .iter()
            .zip(&fused_times)
            .map(|(k, t)| format!("{k} heads {:.1} us ({:.2}x of 12)", t * 1e6, t / all))
            .collect();
        println!(
            "attention {tag}: fused {}; dense baseline {:.1} us ({:.2}x of fused 12 heads); \
             fused 12 heads {:.1} TFLOP/s",
            ratios.join(", "),
            dense_t * 1e6,
            dense_t / all,
            (flops_per_head * HEADS as u64) as f64 / all / 1e12
        );
    }
    g.finish();
}
