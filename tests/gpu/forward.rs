//! The whole GPU forward pass (`smarttrim::model`) against the CPU reference
//! (`smarttrim::reference::forward`) on random weights and synthetic inputs:
//! tiny-meter, tiny-bert, tiny-vit, tiny-blip (their GPU variants: head size
//! 32, token pruner width 64, see `model::gpu_variant`) at batch 1 and a
//! ragged batch of 8, and `meter` at batch 1; both sync policies; dense
//! mode; keep-everything pruners against dense; the sync counter; repeated
//! forwards (`SMARTTRIM_FORWARD_REPEATS`, default 50) giving identical keep
//! decisions with no growth in device memory use; the HuggingFace fixtures
//! (tests/fixtures/hf, real model layouts, head size 16) dense.
//!
//! Weights and packed inputs are rounded through f16 first, so both sides
//! start from the same values. Keep decisions must equal the reference's except near ties
//! (`|sigmoid(s) - tau| < 1e-3`, reported); after a tie the two passes run
//! on different rows, so the rows of that case are not compared.

use smarttrim::model::{
    gpu_variant, prepare_inputs, Capacity, GpuForwardOptions, GpuModel, GpuOutputs, SyncPolicy,
    Workspace,
};
use smarttrim::reference::{self, ForwardOptions, Inputs, Outputs, StreamInput};
use smarttrim::spec::{preset, KeepRule, ModelConfig, Weights};

use crate::common::*;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

const TIE: f32 = 1e-3;
const TOL: f64 = 1e-2;

/// Compares a GPU pass with the reference. Returns the number of near-tie
/// keep (or head) disagreements; panics on any other disagreement.
fn compare(what: &str, cfg: &ModelConfig, gpu: &GpuOutputs, r: &Outputs) -> usize {
    assert_eq!(gpu.streams.len(), r.streams.len(), "{what}");
    for (s, (g, rs)) in gpu.streams.iter().zip(&r.streams).enumerate() {
        let sc = &cfg.streams[s];
        for (l, (gl, rl)) in g.layers.iter().zip(&rs.layers).enumerate() {
            let at = format!("{what}: stream `{}` layer {l}", sc.name);
            assert_eq!(gl.rows_in, rl.rows_in, "{at}: rows entering");
            match (&gl.keep, &rl.keep, &rl.scores) {
                (Some(gk), Some(rk), Some(rsc)) => {
                    let gs = gl.scores.as_ref().expect("scores with keep flags");
                    let e = rel_err(gs, rsc);
                    assert!(e < TOL, "{at}: token scores rel err {e:.2e}");
                    let tau = match sc.layers[l].token_pruner.as_ref().map(|t| t.rule) {
                        Some(KeepRule::Threshold { tau }) => Some(tau),
                        _ => None,
                    };
                    let mut ties = 0;
                    for (i, (&a, &b)) in gk.iter().zip(rk).enumerate() {
                        if a != b {
                            let p = sigmoid(rsc[i]);
                            match tau {
                                Some(t) if (p - t).abs() < TIE => {
                                    eprintln!(
                                        "{at}: near tie at row {i}: p = {p:.6}, tau = {t}, gpu keep {a}, reference {b}"
                                    );
                                    ties += 1;
                                }
                                _ => panic!(
                                    "{at}: keep flag of row {i} differs (gpu {a}, reference {b}, \
                                     reference p = {p:.6}, gpu s = {}, reference s = {})",
                                    gs[i], rsc[i]
                                ),
                            }
                        }
                    }
                    if ties > 0 {
                        return ties;
                    }
                }
                (None, None, _) => {}
                (a, b, _) => panic!(
                    "{at}: token pruner ran on the GPU: {}, in the reference: {}",
                    a.is_some(),
                    b.is_some()
                ),
            }
            assert_eq!(gl.kept, rl.kept, "{at}: kept rows");
            for (m, (gh, rh)) in [
                (&gl.self_heads, &rl.self_heads),
                (&gl.cross_heads, &rl.cross_heads),
            ]
            .into_iter()
            .enumerate()
            {
                match (gh, rh) {
                    (Some(gh), Some(rh)) => {
                        let e = rel_err(&gh.logits, &rh.logits);
                        assert!(e < TOL, "{at}: head logits ({m}) rel err {e:.2e}");
                        let lc = &sc.layers[l];
                        let tau_h = [&lc.self_head_pruner, &lc.cross_head_pruner][m]
                            .as_ref()
                            .map_or(0.5, |h| h.tau_h);
                        if gh.mask != rh.mask {
                            let near = rh.logits.iter().any(|&a| (sigmoid(a) - tau_h).abs() < TIE);
                            assert!(
                                near,
                                "{at}: head mask ({m}) differs without a near tie: gpu {:?} reference {:?}",
                                gh.mask, rh.mask
                            );
                            eprintln!("{at}: head mask ({m}) differs at a near tie");
                            return 1;
                        }
                    }
                    (None, None) => {}
                    _ => panic!("{at}: head pruner ({m}) ran on one side only"),
                }
            }
            assert_eq!(
                gl.active_self_heads, rl.active_self_heads,
                "{at}: self heads"
            );
            assert_eq!(
                gl.active_cross_heads, rl.active_cross_heads,
                "{at}: cross heads"
            );
        }
        let at = format!("{what}: stream `{}`", sc.name);
        assert_eq!(
            g.packed.cu_seqlens, rs.packed.cu_seqlens,
            "{at}: cu_seqlens"
        );
        assert_eq!(
            g.packed.orig_index, rs.packed.orig_index,
            "{at}: orig_index"
        );
        let e = rel_err(&g.packed.rows, &rs.packed.rows);
        let ef = rel_err(&g.pooled_first, &rs.pooled_first);
        let em = rel_err(&g.pooled_mean, &rs.pooled_mean);
        eprintln!(
            "{at}: final rows rel err {e:.2e}, pooled first {ef:.2e}, mean {em:.2e}, {} rows",
            g.packed.orig_index.len()
        );
        assert!(e < TOL, "{at}: final rows rel err {e:.2e}");
        assert!(ef < TOL, "{at}: pooled first rel err {ef:.2e}");
        assert!(em < TOL, "{at}: pooled mean rel err {em:.2e}");
        match (&g.pooler, &rs.pooler) {
            (Some(gp), Some(rp)) => {
                let ep = rel_err(gp, rp);
                eprintln!("{at}: pooler rel err {ep:.2e}");
                assert!(ep < TOL, "{at}: pooler rel err {ep:.2e}");
            }
            (None, None) => {}
            _ => panic!("{at}: a pooler output on one side only"),
        }
    }
    match (&gpu.logits, &r.logits) {
        (Some(gl), Some(rl)) => {
            let e = rel_err(gl, rl);
            eprintln!("{what}: logits rel err {e:.2e}");
            assert!(e < TOL, "{what}: logits rel err {e:.2e}");
        }
        (None, None) => {}
        _ => panic!("{what}: logits on one side only"),
    }
    assert_eq!(gpu.stats(), r.stats(), "{what}: statistics");
    assert_eq!(gpu.flops, r.flops, "{what}: FLOPs per sequence");
    0
}

/// Layers at which some stream's threshold-rule token pruner runs (where
/// `SyncPolicy::ReadCounts` waits for the row counts), summed over the
/// stages of a whole model (each stage's streams run in lockstep).
fn threshold_pruning_layers(w: &Weights) -> usize {
    w.config
        .stages()
        .iter()
        .map(|stage| {
            let nl = w.config.streams[stage.streams[0]].layers.len();
            (0..nl)
                .filter(|&l| {
                    stage.streams.iter().any(|&s| {
                        matches!(
                            w.config.streams[s].layers[l]
                                .token_pruner
                                .as_ref()
                                .map(|t| t.rule),
                            Some(KeepRule::Threshold { .. })
                        ) && w.streams[s].layers[l].token_pruner.is_some()
                    })
                })
                .count()
        })
        .sum()
}

/// `cfg` with every token pruner on the budget rule at `rho`.
fn budget_variant(cfg: &ModelConfig, rho: f32) -> ModelConfig {
    let mut cfg = cfg.clone();
    for s in &mut cfg.streams {
        for l in &mut s.layers {
            if let Some(tp) = &mut l.token_pruner {
                tp.rule = KeepRule::Budget { rho };
            }
        }
    }
    cfg
}

/// Two GPU passes that ran the same launches: identical decisions and
/// bitwise identical rows.
fn assert_same_pass(what: &str, a: &GpuOutputs, b: &GpuOutputs) {
    for (sa, sb) in a.streams.iter().zip(&b.streams) {
        for (l, (la, lb)) in sa.layers.iter().zip(&sb.layers).enumerate() {
            assert_eq!(la, lb, "{what}: layer {l} record");
        }
        assert_eq!(sa.packed, sb.packed, "{what}: final rows");
        assert_eq!(sa.pooled_first, sb.pooled_first, "{what}: pooled first");
        assert_eq!(sa.pooled_mean, sb.pooled_mean, "{what}: pooled mean");
    }
}

struct Case {
    name: &'static str,
    batch: usize,
    ragged: bool,
}

/// The weights rounded through f16 (as the device holds them), so the
/// reference computes with exactly the device's weight values.
fn round_weights(w: &Weights) -> Weights {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .tensors()
        .into_iter()
        .map(|(n, s, d)| {
            let b = round_f16(&d).iter().flat_map(|x| x.to_le_bytes()).collect();
            (n, s, b)
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .expect("tensor view");
            (n.clone(), v)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    Weights::from_safetensors_bytes(&w.config, &bytes, "f16-rounded weights").expect("reload")
}

/// Packed input rows and the context rounded through f16 (as uploaded), so
/// the reference sees the device's inputs (token and pixel streams are
/// embedded on the device from f16 tables, which the reference, in f32,
/// does not mirror; the tolerance covers it).
fn round_inputs(inputs: &mut Inputs) {
    for s in &mut inputs.streams {
        if let StreamInput::Packed { rows, .. } = s {
            *rows = round_f16(rows);
        }
    }
    if let Some((rows, _)) = &mut inputs.context {
        *rows = round_f16(rows);
    }
}

fn setup(cfg: &ModelConfig, batch: usize, ragged: bool, seed: u64) -> (Weights, Inputs, Capacity) {
    let w = round_weights(&Weights::random(cfg, seed).expect("random weights"));
    let mut inputs = reference::synthetic_inputs(cfg, batch, seed + 1, ragged);
    round_inputs(&mut inputs);
    let emb: Vec<_> = w.streams.iter().map(|s| s.embeddings.clone()).collect();
    let prep = prepare_inputs(cfg, &emb, &inputs, None).expect("valid inputs");
    let cap = Capacity::for_inputs(&prep);
    (w, inputs, cap)
}

fn run_case(test: &str, case: &Case) {
    let Some(dev) = device(test) else { return };
    let mut cfg = gpu_variant(&preset(case.name).unwrap());
    if cpu_sized() && cfg.streams[0].hidden >= 512 {
        // METER-sized widths and lengths, but 3 layers (the first pruned
        // ones among them) on the emulated device; all of them on a GPU.
        for s in &mut cfg.streams {
            s.layers.truncate(3);
        }
        eprintln!("{test}: the first 3 layers on the emulated device (SMARTTRIM_EMU_FULL=1: all)");
    }
    let (w, inputs, cap) = setup(&cfg, case.batch, case.ragged, 7);
    let model = GpuModel::new(&dev, &w).expect("GpuModel::new");
    let mut ws = Workspace::new(&model, cap).expect("Workspace::new");
    let reference = reference::forward(&w, &inputs, &ForwardOptions { dense: false }).unwrap();
    let reference_dense = reference::forward(&w, &inputs, &ForwardOptions { dense: true }).unwrap();
    let what = format!("{} batch {}", case.name, case.batch);
    for sync in [SyncPolicy::ReadCounts, SyncPolicy::UpperBound] {
        let out = model
            .forward(
                &mut ws,
                &inputs,
                &GpuForwardOptions {
                    dense: false,
                    sync,
                    graph: false,
                },
            )
            .unwrap_or_else(|e| panic!("{what} {sync:?}: {e}"));
        let want_syncs = match sync {
            SyncPolicy::ReadCounts => threshold_pruning_layers(&w),
            SyncPolicy::UpperBound => 0,
        };
        assert_eq!(out.syncs, want_syncs, "{what} {sync:?}: syncs");
        let ties = compare(&format!("{what} {sync:?}"), &cfg, &out, &reference);
        if ties > 0 {
            eprintln!("{what} {sync:?}: {ties} near tie(s); rows after the tie not compared");
        }
        let dense = model
            .forward(
                &mut ws,
                &inputs,
                &GpuForwardOptions {
                    dense: true,
                    sync,
                    graph: false,
                },
            )
            .unwrap_or_else(|e| panic!("{what} dense {sync:?}: {e}"));
        assert_eq!(dense.syncs, 0, "{what} dense {sync:?}: syncs");
        assert_eq!(
            compare(
                &format!("{what} dense {sync:?}"),
                &cfg,
                &dense,
                &reference_dense
            ),
            0
        );
    }
    // CUDA graphs: the first call captures, the second replays; both must
    // be the eager pass exactly (same launches), with no host wait inside.
    let eager = model
        .forward(
            &mut ws,
            &inputs,
            &GpuForwardOptions {
                dense: false,
                sync: SyncPolicy::UpperBound,
                graph: false,
            },
        )
        .unwrap();
    let gopts = GpuForwardOptions {
        dense: false,
        sync: SyncPolicy::UpperBound,
        graph: true,
    };
    assert!(model.graph_capturable(&gopts));
    for round in ["capture", "replay"] {
        let g = model
            .forward(&mut ws, &inputs, &gopts)
            .unwrap_or_else(|e| panic!("{what} graph {round}: {e}"));
        assert!(g.graph && g.syncs == 0, "{what} graph {round}");
        assert_same_pass(&format!("{what} graph {round}"), &g, &eager);
    }
    assert_eq!(
        ws.cached_graphs(),
        cfg.stages().len(),
        "{what}: one graph per stage for one shape"
    );
    // ReadCounts cannot be captured with threshold pruners in the model.
    let err = model
        .forward(
            &mut ws,
            &inputs,
            &GpuForwardOptions {
                dense: false,
                sync: SyncPolicy::ReadCounts,
                graph: true,
            },
        )
        .expect_err("ReadCounts + graph with threshold pruners");
    assert!(err.to_string().contains("graph capture"), "{err}");

    // Budget-rule pruners: the host knows every row count, so ReadCounts
    // takes no wait and the exact-size pass can be captured.
    let bcfg = budget_variant(&cfg, 0.5);
    let bw = Weights::from_safetensors_bytes(&bcfg, &w.to_safetensors_bytes().unwrap(), "budget")
        .unwrap();
    let bmodel = GpuModel::new(&dev, &bw).expect("GpuModel::new (budget)");
    let mut bws = Workspace::new(&bmodel, ws.capacity().clone()).unwrap();
    let bref = reference::forward(&bw, &inputs, &ForwardOptions { dense: false }).unwrap();
    for graph in [false, true, true] {
        let o = bmodel
            .forward(
                &mut bws,
                &inputs,
                &GpuForwardOptions {
                    dense: false,
                    sync: SyncPolicy::ReadCounts,
                    graph,
                },
            )
            .unwrap_or_else(|e| panic!("{what} budget graph={graph}: {e}"));
        assert_eq!(o.syncs, 0, "{what} budget: no wait");
        assert_eq!(
            compare(&format!("{what} budget graph={graph}"), &bcfg, &o, &bref),
            0,
            "{what} budget: no ties expected with the budget rule"
        );
    }
}

#[test]
fn forward_tiny_meter_batch1() {
    run_case(
        "forward_tiny_meter_batch1",
        &Case {
            name: "tiny-meter",
            batch: 1,
            ragged: false,
        },
    );
}

#[test]
fn forward_tiny_meter_ragged8() {
    run_case(
        "forward_tiny_meter_ragged8",
        &Case {
            name: "tiny-meter",
            batch: 8,
            ragged: true,
        },
    );
}

#[test]
fn forward_tiny_bert_batch1() {
    run_case(
        "forward_tiny_bert_batch1",
        &Case {
            name: "tiny-bert",
            batch: 1,
            ragged: false,
        },
    );
}

#[test]
fn forward_tiny_bert_ragged8() {
    run_case(
        "forward_tiny_bert_ragged8",
        &Case {
            name: "tiny-bert",
            batch: 8,
            ragged: true,
        },
    );
}

#[test]
fn forward_tiny_vit_batch1() {
    run_case(
        "forward_tiny_vit_batch1",
        &Case {
            name: "tiny-vit",
            batch: 1,
            ragged: false,
        },
    );
}

#[test]
fn forward_tiny_vit_batch8() {
    run_case(
        "forward_tiny_vit_batch8",
        &Case {
            name: "tiny-vit",
            batch: 8,
            ragged: true,
        },
    );
}

#[test]
fn forward_tiny_blip_batch1() {
    run_case(
        "forward_tiny_blip_batch1",
        &Case {
            name: "tiny-blip",
            batch: 1,
            ragged: false,
        },
    );
}

#[test]
fn forward_tiny_blip_ragged8() {
    run_case(
        "forward_tiny_blip_ragged8",
        &Case {
            name: "tiny-blip",
            batch: 8,
            ragged: true,
        },
    );
}

#[test]
fn forward_tiny_blip_full_batch1() {
    run_case(
        "forward_tiny_blip_full_batch1",
        &Case {
            name: "tiny-blip-full",
            batch: 1,
            ragged: false,
        },
    );
}

/// BLIP end to end: the ViT's pruned rows handed to the text encoder on the
/// device, type-less BERT embeddings, the ITM head.
#[test]
fn forward_tiny_blip_full_ragged8() {
    run_case(
        "forward_tiny_blip_full_ragged8",
        &Case {
            name: "tiny-blip-full",
            batch: 8,
            ragged: true,
        },
    );
}

#[test]
fn forward_tiny_meter_full_batch1() {
    run_case(
        "forward_tiny_meter_full_batch1",
        &Case {
            name: "tiny-meter-full",
            batch: 1,
            ragged: false,
        },
    );
}

/// METER end to end: RoBERTa (positions from 2), the CLIP ViT (ln_pre, no
/// patch bias, quick GELU, ln_post on every row), input transforms with
/// modality vectors, the fusion encoder, poolers and the VQA head.
#[test]
fn forward_tiny_meter_full_ragged8() {
    run_case(
        "forward_tiny_meter_full_ragged8",
        &Case {
            name: "tiny-meter-full",
            batch: 8,
            ragged: true,
        },
    );
}

#[test]
fn forward_meter_batch1() {
    run_case(
        "forward_meter_batch1",
        &Case {
            name: "meter",
            batch: 1,
            ragged: false,
        },
    );
}

/// Pruners that keep everything (threshold 0, head threshold 0) give the
/// dense pass's results, and keep and activate everything.
#[test]
fn forward_keep_everything_equals_dense() {
    let Some(dev) = device("forward_keep_everything_equals_dense") else {
        return;
    };
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let mut cfg = gpu_variant(&preset(name).unwrap());
        for s in &mut cfg.streams {
            for l in &mut s.layers {
                if let Some(tp) = &mut l.token_pruner {
                    tp.rule = KeepRule::Threshold { tau: 0.0 };
                }
                for hp in [&mut l.self_head_pruner, &mut l.cross_head_pruner]
                    .into_iter()
                    .flatten()
                {
                    hp.tau_h = 0.0;
                }
            }
        }
        let (w, inputs, cap) = setup(&cfg, 8, true, 21);
        let model = GpuModel::new(&dev, &w).unwrap();
        let mut ws = Workspace::new(&model, cap).unwrap();
        for sync in [SyncPolicy::ReadCounts, SyncPolicy::UpperBound] {
            let p = model
                .forward(
                    &mut ws,
                    &inputs,
                    &GpuForwardOptions {
                        dense: false,
                        sync,
                        graph: false,
                    },
                )
                .unwrap();
            let d = model
                .forward(
                    &mut ws,
                    &inputs,
                    &GpuForwardOptions {
                        dense: true,
                        sync,
                        graph: false,
                    },
                )
                .unwrap();
            for (ps, ds) in p.streams.iter().zip(&d.streams) {
                for (l, pl) in ps.layers.iter().enumerate() {
                    assert_eq!(pl.kept, pl.rows_in, "{name} layer {l}: kept everything");
                    let h = cfg.streams[0].heads as i32;
                    assert!(pl.active_self_heads.iter().all(|&a| a == h), "{name} {l}");
                }
                assert_eq!(ps.packed.cu_seqlens, ds.packed.cu_seqlens, "{name}");
                assert_eq!(ps.packed.orig_index, ds.packed.orig_index, "{name}");
                let e = rel_err(&ps.packed.rows, &ds.packed.rows);
                let bitwise = ps.packed.rows == ds.packed.rows;
                eprintln!("{name} {sync:?}: keep-everything vs dense rel err {e:.2e} (bitwise equal: {bitwise})");
                assert!(
                    e < 1e-6,
                    "{name} {sync:?}: keep-everything vs dense {e:.2e}"
                );
            }
        }
    }
}

/// Repeated forwards: identical keep decisions and statistics every time,
/// and no device memory taken after the first pass.
#[test]
fn forward_repeated_is_stable() {
    let Some(dev) = device("forward_repeated_is_stable") else {
        return;
    };
    // 50 on a GPU (1000 in the bundle's run), 5 on the emulated device.
    let repeats: usize = std::env::var("SMARTTRIM_FORWARD_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cpu_sized() { 5 } else { 50 });
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let (w, inputs, cap) = setup(&cfg, 8, true, 5);
    let model = GpuModel::new(&dev, &w).unwrap();
    let mut ws = Workspace::new(&model, cap).unwrap();
    for (sync, graph) in [
        (SyncPolicy::ReadCounts, false),
        (SyncPolicy::UpperBound, false),
        (SyncPolicy::UpperBound, true),
    ] {
        let opts = GpuForwardOptions {
            dense: false,
            sync,
            graph,
        };
        let first = model.forward(&mut ws, &inputs, &opts).unwrap();
        let (free0, _) = dev.context().mem_get_info().unwrap();
        // On the emulated device, this thread's own allocations (free
        // memory is device-wide, and tests run in parallel).
        let counted = crate::emu::Emu::get().map(|e| (e, e.counters()));
        let mut rows_identical = true;
        for i in 0..repeats {
            let o = model.forward(&mut ws, &inputs, &opts).unwrap();
            assert_eq!(o.syncs, first.syncs, "{sync:?} repeat {i}: syncs");
            for (a, b) in o.streams.iter().zip(&first.streams) {
                for (la, lb) in a.layers.iter().zip(&b.layers) {
                    assert_eq!(la.keep, lb.keep, "{sync:?} repeat {i}: keep flags");
                    assert_eq!(la.kept, lb.kept, "{sync:?} repeat {i}: kept");
                    assert_eq!(
                        la.self_heads.as_ref().map(|h| &h.mask),
                        lb.self_heads.as_ref().map(|h| &h.mask)
                    );
                    assert_eq!(
                        la.cross_heads.as_ref().map(|h| &h.mask),
                        lb.cross_heads.as_ref().map(|h| &h.mask)
                    );
                }
                assert_eq!(
                    a.packed.orig_index, b.packed.orig_index,
                    "{sync:?} repeat {i}"
                );
                assert_eq!(
                    a.packed.cu_seqlens, b.packed.cu_seqlens,
                    "{sync:?} repeat {i}"
                );
                rows_identical &= a.packed.rows == b.packed.rows;
            }
        }
        let (free1, _) = dev.context().mem_get_info().unwrap();
        eprintln!(
            "{sync:?}: {repeats} repeats, free memory {free0} -> {free1}, rows bitwise identical: {rows_identical}"
        );
        if let Some((emu, before)) = counted {
            let d = emu.counters().since(&before);
            assert_eq!(
                (d.get("allocs"), d.get("frees")),
                (0, 0),
                "{sync:?}: allocations in {repeats} repeated passes"
            );
        } else {
            // Device-wide: run this test alone for the figure to mean this
            // test's passes.
            assert!(
                free1 >= free0,
                "{sync:?}: device memory use grew by {} bytes",
                free0 - free1
            );
        }
    }
}

/// Typed errors before any device work: a batch over the workspace's
/// capacity, the wrong number of streams, a workspace of another model.
#[test]
fn forward_rejects_bad_inputs() {
    let Some(dev) = device("forward_rejects_bad_inputs") else {
        return;
    };
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let (w, inputs, cap) = setup(&cfg, 2, false, 9);
    let model = GpuModel::new(&dev, &w).unwrap();
    let mut ws = Workspace::new(&model, cap).unwrap();
    let opts = GpuForwardOptions::default();
    let big = reference::synthetic_inputs(&cfg, 3, 1, false);
    assert!(matches!(
        model.forward(&mut ws, &big, &opts),
        Err(smarttrim::Error::InvalidArgument { .. })
    ));
    let mut wrong = inputs.clone();
    wrong.streams.pop();
    assert!(matches!(
        model.forward(&mut ws, &wrong, &opts),
        Err(smarttrim::Error::Input(_))
    ));
    let raw = preset("tiny-meter").unwrap();
    assert!(matches!(
        GpuModel::new(&dev, &Weights::random(&raw, 1).unwrap()),
        Err(smarttrim::Error::Unsupported { .. })
    ));
    let other_cfg = gpu_variant(&preset("tiny-bert").unwrap());
    let (w2, inputs2, cap2) = setup(&other_cfg, 2, false, 9);
    let m2 = GpuModel::new(&dev, &w2).unwrap();
    let mut ws2 = Workspace::new(&m2, cap2).unwrap();
    assert!(model.forward(&mut ws2, &inputs, &opts).is_err());
    m2.forward(&mut ws2, &inputs2, &opts).unwrap();
}

/// Runs without a GPU: the helpers above (f16-rounded weights reload, inputs
/// fit their capacity, the reference passes the GPU tests compare with run
/// and prune something).
#[test]
fn forward_test_setup_is_sound() {
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let cfg = gpu_variant(&preset(name).unwrap());
        smarttrim::model::check_supported(&cfg).unwrap();
        let (w, inputs, cap) = setup(&cfg, 8, true, 7);
        let raw = Weights::random(&cfg, 7).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = w
            .tensors()
            .into_iter()
            .zip(raw.tensors())
            .flat_map(|(x, y)| x.2.into_iter().zip(y.2))
            .unzip();
        let e = rel_err(&a, &b);
        assert!(
            e > 0.0 && e < 1e-3,
            "{name}: f16 rounding changed weights by {e:.2e}"
        );
        assert_eq!(cap.max_batch, 8);
        let r = reference::forward(&w, &inputs, &ForwardOptions { dense: false }).unwrap();
        let pruned: i32 = r
            .streams
            .iter()
            .flat_map(|s| &s.layers)
            .map(|l| l.rows_in.iter().sum::<i32>() - l.kept.iter().sum::<i32>())
            .sum();
        assert!(
            pruned > 0,
            "{name}: the reference pruned nothing; the GPU test would be weak"
        );
        assert!(threshold_pruning_layers(&w) > 0);
    }
}

/// `forward_device` on a caller's stream with device-resident inputs and
/// outputs, for every model kind, against `forward`: bitwise for
/// tiny-meter (packed inputs, the same launches); for the models with an
/// embedding, `forward` embeds on the device while the test hands
/// `forward_device` host-embedded rows, so those run dense (no keep
/// decision can flip on the f16 difference) and compare within tolerance.
/// Then the same pass captured into the *caller's* CUDA graph, replayed
/// twice, must give the eager `forward_device` results bitwise.
#[test]
fn forward_device_matches_forward() {
    use smarttrim::model::{DevicePacked, DeviceStreamOutput};
    let Some(dev) = device("forward_device_matches_forward") else {
        return;
    };
    let ctx = dev.context().clone();
    let theirs = ctx.new_stream().expect("caller stream");
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let cfg = gpu_variant(&preset(name).unwrap());
        let (w, inputs, cap) = setup(&cfg, 8, true, 31);
        let model = GpuModel::new(&dev, &w).unwrap();
        let mut ws = Workspace::new(&model, cap).unwrap();
        let exact = name == "tiny-meter";
        let opts = GpuForwardOptions {
            dense: !exact,
            sync: SyncPolicy::UpperBound,
            graph: false,
        };
        let host = model.forward(&mut ws, &inputs, &opts).unwrap();
        let mut eager: Vec<Vec<f32>> = Vec::new();
        let emb: Vec<_> = w.streams.iter().map(|s| s.embeddings.clone()).collect();
        let prep = prepare_inputs(&cfg, &emb, &inputs, None).unwrap();
        // The caller's buffers, without cudarc events (as a capture needs).
        // SAFETY: every use of them below is on `theirs`, in order.
        let (ins, ctx_in, mut outs) = unsafe {
            dev.without_event_tracking(|| {
                let up = |p: &smarttrim::reference::Packed| {
                    (
                        theirs.clone_htod(&to_f16(&p.rows)).unwrap(),
                        theirs.clone_htod(&p.cu_seqlens).unwrap(),
                    )
                };
                let ins: Vec<_> = prep.streams.iter().map(up).collect();
                let ctx_in = prep.context.as_ref().map(up);
                let outs: Vec<_> = cfg
                    .streams
                    .iter()
                    .zip(&prep.streams)
                    .map(|(sc, p)| {
                        (
                            theirs
                                .alloc_zeros::<half::f16>(p.total() * sc.hidden)
                                .unwrap(),
                            theirs.alloc_zeros::<i32>(prep.batch + 1).unwrap(),
                            theirs.alloc_zeros::<i32>(p.total().max(1)).unwrap(),
                        )
                    })
                    .collect();
                (ins, ctx_in, outs)
            })
        };
        for round in ["eager", "caller graph"] {
            let mut graph = None;
            {
                let dins: Vec<DevicePacked> = ins
                    .iter()
                    .zip(&prep.streams)
                    .map(|((r, c), p)| DevicePacked {
                        rows: r.as_view(),
                        cu_seqlens: c.as_view(),
                        host_cu_seqlens: &p.cu_seqlens,
                    })
                    .collect();
                let dctx = ctx_in
                    .as_ref()
                    .zip(prep.context.as_ref())
                    .map(|((r, c), p)| DevicePacked {
                        rows: r.as_view(),
                        cu_seqlens: c.as_view(),
                        host_cu_seqlens: &p.cu_seqlens,
                    });
                let mut douts: Vec<DeviceStreamOutput> = outs
                    .iter_mut()
                    .map(|(r, c, o)| DeviceStreamOutput {
                        rows: r.as_view_mut(),
                        cu_seqlens: c.as_view_mut(),
                        orig_index: o.as_view_mut(),
                    })
                    .collect();
                if round == "caller graph" {
                    theirs
                        .begin_capture(
                            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                        )
                        .unwrap();
                }
                let pass = model
                    .forward_device(&theirs, &mut ws, &dins, dctx.as_ref(), &mut douts, &opts)
                    .unwrap_or_else(|e| panic!("{name} {round}: {e}"));
                assert_eq!(pass.syncs, 0, "{name} {round}");
                if round == "caller graph" {
                    graph = Some(
                        theirs
                            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
                            .unwrap()
                            .expect("captured work"),
                    );
                } else {
                    let stats = model.device_pass_stats(&theirs, &ws, &pass).unwrap();
                    assert_eq!(stats, host.stats(), "{name}: statistics");
                }
            }
            let launches = if graph.is_some() { 2 } else { 1 };
            for i in 0..launches {
                if let Some(g) = &graph {
                    // Poison the outputs, so a replay that writes nothing fails.
                    for (r, _, _) in &mut outs {
                        theirs.memcpy_htod(&nan_f16(r.len()), r).unwrap();
                    }
                    g.launch().unwrap();
                }
                theirs.synchronize().unwrap();
                for (s, (r, c, o)) in outs.iter().enumerate() {
                    let want = &host.streams[s].packed;
                    let total = want.total();
                    let d = want.d;
                    let cu: Vec<i32> = theirs.clone_dtoh(c).unwrap();
                    assert_eq!(cu, want.cu_seqlens, "{name} {round} {i}: cu_seqlens");
                    let orig: Vec<i32> = theirs.clone_dtoh(o).unwrap();
                    assert_eq!(&orig[..total], &want.orig_index[..], "{name} {round} {i}");
                    let rows = from_f16(&theirs.clone_dtoh(r).unwrap()[..total * d]);
                    if exact {
                        assert_eq!(rows, want.rows, "{name} {round} {i}: final rows");
                    } else {
                        let e = rel_err(&rows, &want.rows);
                        assert!(e < TOL, "{name} {round} {i}: final rows rel err {e:.2e}");
                    }
                    if round == "eager" {
                        eager.push(rows);
                    } else {
                        assert_eq!(rows, eager[s], "{name} {round} {i}: graph vs eager");
                    }
                }
            }
            // The caller's graph pins the workspace and the model until the
            // driver destroys it (and releases the pin on its own thread,
            // a little later).
            let pins = (ws.graph_pins(), model.graph_pins());
            if let Some(g) = graph.take() {
                assert_eq!(pins, (1, 1), "{name}: pins while the caller's graph lives");
                drop(g);
                assert!(
                    eventually(|| ws.graph_pins() == 0 && model.graph_pins() == 0),
                    "{name}: the pins outlived the caller's graph"
                );
            } else {
                assert_eq!(pins, (0, 0), "{name}: pins of an eager pass");
            }
        }
    }
}

/// A workspace carved from the caller's memory (`Workspace::in_memory`):
/// the same pass as with an allocated workspace, bitwise; too little memory
/// is refused; dropping the workspace leaves the caller's memory allocated
/// and usable.
#[test]
fn workspace_in_caller_memory() {
    use smarttrim::device::ForeignSlice;
    use smarttrim::model::WorkspaceLayout;
    let Some(dev) = device("workspace_in_caller_memory") else {
        return;
    };
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let (w, inputs, cap) = setup(&cfg, 8, true, 13);
    let model = GpuModel::new(&dev, &w).unwrap();
    let opts = GpuForwardOptions {
        dense: false,
        sync: SyncPolicy::UpperBound,
        graph: true,
    };
    let mut own = Workspace::new(&model, cap.clone()).unwrap();
    let want = model.forward(&mut own, &inputs, &opts).unwrap();
    let need = WorkspaceLayout::new(&cfg, &cap).unwrap().arena_bytes();
    let stream = dev.stream().clone();
    let mem = stream.alloc_zeros::<u8>(need + 4096).unwrap();
    let base = {
        use cudarc::driver::DevicePtr;
        mem.device_ptr(&stream).0
    };
    // SAFETY: `mem` holds need + 4096 bytes of this context and outlives
    // both workspaces below.
    let small = unsafe { ForeignSlice::<u8>::new(&dev, base, need - 1) };
    assert!(Workspace::in_memory(&model, cap.clone(), small).is_err());
    // SAFETY: as above.
    let region = unsafe { ForeignSlice::<u8>::new(&dev, base, need + 4096) };
    let mut theirs = Workspace::in_memory(&model, cap, region).unwrap();
    for round in ["capture", "replay"] {
        let got = model.forward(&mut theirs, &inputs, &opts).unwrap();
        assert_same_pass(&format!("caller memory {round}"), &got, &want);
    }
    drop(theirs);
    // The caller's memory is still theirs: write and read it back.
    let mut mem = mem;
    stream
        .memcpy_htod(&vec![7u8; need + 4096], &mut mem)
        .unwrap();
    let back: Vec<u8> = stream.clone_dtoh(&mem).unwrap();
    assert!(back.iter().all(|&b| b == 7));
}

/// `forward_on` uploads host buffers, which a CUDA-graph capture cannot
/// record: on a stream being captured it is refused before enqueueing
/// anything (the capture stays valid), and the same stream
/// runs the pass once the capture is over. Passes on alternating streams
/// with one workspace give the same results (each waits for the last).
#[test]
fn forward_on_refuses_a_capturing_stream() {
    let Some(dev) = device("forward_on_refuses_a_capturing_stream") else {
        return;
    };
    let (cfg, w, inputs) = small_cross_model(41);
    let model = GpuModel::new(&dev, &w).unwrap();
    let mut ws = Workspace::new(&model, capacity(&cfg, &w, &inputs)).unwrap();
    let opts = GpuForwardOptions {
        dense: false,
        sync: SyncPolicy::UpperBound,
        graph: false,
    };
    let want = model.forward(&mut ws, &inputs, &opts).unwrap();
    let ctx = dev.context().clone();
    let theirs = ctx.new_stream().unwrap();
    theirs
        .begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
        .unwrap();
    let refused = model.forward_on(&theirs, &mut ws, &inputs, &opts);
    let ended = theirs.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
    let e = refused.expect_err("a pass with host uploads inside a capture");
    assert!(
        matches!(e, smarttrim::Error::InvalidArgument { .. }) && e.to_string().contains("captured"),
        "{e}"
    );
    ended.expect("the capture was not invalidated");
    let other = ctx.new_stream().unwrap();
    for s in [&theirs, &other, &theirs] {
        let got = model.forward_on(s, &mut ws, &inputs, &opts).unwrap();
        assert!(same(&got, &want), "a pass on another stream differs");
    }
}

/// The GPU pass on the HuggingFace fixtures `tests/hf_fixtures.rs` checks
/// the CPU reference with (tests/fixtures/hf: RoBERTa, ViT, CLIP vision,
/// BLIP's two encoders, METER whole; loaded as they are; head size 16):
/// dense, weights and packed inputs rounded through f16, against the CPU
/// reference on the same weights, every stream's final rows, pooled rows,
/// poolers and logits.
#[test]
fn forward_hf_fixtures_match_reference() {
    let Some(dev) = device("forward_hf_fixtures_match_reference") else {
        return;
    };
    // SMARTTRIM_HF_FIXTURES: where the GPU bundle carries them.
    let root = std::env::var_os("SMARTTRIM_HF_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
        });
    for name in ["roberta", "vit", "clip_vision", "blip", "meter"] {
        let dir = root.join(name);
        let loaded = smarttrim::spec::hf::load_model_dir(&dir, None, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let w = round_weights(&loaded.weights);
        let cfg = w.config.clone();
        smarttrim::model::check_supported(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut inputs =
            smarttrim::tensor_io::read_inputs(&cfg, dir.join("inputs.safetensors")).unwrap();
        round_inputs(&mut inputs);
        let emb: Vec<_> = w.streams.iter().map(|s| s.embeddings.clone()).collect();
        let cap = Capacity::for_inputs(&prepare_inputs(&cfg, &emb, &inputs, None).unwrap());
        let model = GpuModel::new(&dev, &w).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut ws = Workspace::new(&model, cap).unwrap();
        let want = reference::forward(&w, &inputs, &ForwardOptions { dense: true }).unwrap();
        for graph in [false, true] {
            let opts = GpuForwardOptions {
                dense: true,
                sync: SyncPolicy::UpperBound,
                graph,
            };
            let got = model
                .forward(&mut ws, &inputs, &opts)
                .unwrap_or_else(|e| panic!("{name} graph={graph}: {e}"));
            let what = format!("hf fixture {name} graph={graph}");
            assert_eq!(
                compare(&what, &cfg, &got, &want),
                0,
                "{what}: no pruner, no tie"
            );
            match (&got.logits, &want.logits) {
                (Some(g), Some(r)) => {
                    let e = rel_err(g, r);
                    assert!(e < TOL, "{what}: logits rel err {e:.2e}");
                }
                (None, None) => {}
                _ => panic!("{what}: logits on one side only"),
            }
        }
    }
}

/// A workspace of another device's model, and a stream of another device,
/// are refused with `InvalidArgument` before anything is enqueued; the
/// model then still runs. Needs two devices: on the emulated device (one by
/// default) it runs in a child process with `SMARTTRIM_EMU_DEVICES=2`; on a
/// one-GPU machine it is skipped.
#[test]
fn another_devices_workspace_or_stream_is_refused() {
    let Some(_dev) = device("another_devices_workspace_or_stream_is_refused") else {
        return;
    };
    if smarttrim::device::device_count().unwrap_or(0) >= 2 {
        return two_devices_check();
    }
    if crate::emu::Emu::get().is_none() {
        eprintln!("skipped another_devices_workspace_or_stream_is_refused: one GPU only");
        return;
    }
    let text = run_child_test(
        "forward::two_devices_child",
        &[
            ("SMARTTRIM_EMU_DEVICES", "2"),
            ("SMARTTRIM_TWO_DEVICES_CHILD", "1"),
        ],
    );
    assert!(text.contains("refused across devices"), "{text}");
}

/// The child of [`another_devices_workspace_or_stream_is_refused`].
#[test]
#[ignore = "run by another_devices_workspace_or_stream_is_refused in a child process"]
fn two_devices_child() {
    if std::env::var("SMARTTRIM_TWO_DEVICES_CHILD").is_ok() {
        two_devices_check();
    }
}

fn two_devices_check() {
    use smarttrim::device::Device;
    let (cfg, w, inputs) = small_cross_model(43);
    let (d0, d1) = (Device::open(0).unwrap(), Device::open(1).unwrap());
    let (m0, m1) = (
        GpuModel::new(&d0, &w).unwrap(),
        GpuModel::new(&d1, &w).unwrap(),
    );
    let cap = capacity(&cfg, &w, &inputs);
    let (mut ws0, mut ws1) = (
        Workspace::new(&m0, cap.clone()).unwrap(),
        Workspace::new(&m1, cap).unwrap(),
    );
    let opts = GpuForwardOptions {
        dense: false,
        sync: SyncPolicy::UpperBound,
        graph: false,
    };
    let want = m0.forward(&mut ws0, &inputs, &opts).unwrap();
    let e = m0
        .forward(&mut ws1, &inputs, &opts)
        .expect_err("a workspace of device 1 with a model of device 0");
    assert!(matches!(e, smarttrim::Error::InvalidArgument { .. }), "{e}");
    let e2 = m0
        .forward_on(d1.stream(), &mut ws0, &inputs, &opts)
        .expect_err("a stream of device 1 with a model of device 0");
    assert!(
        matches!(e2, smarttrim::Error::InvalidArgument { .. }),
        "{e2}"
    );
    let e3 = m0
        .forward_on(d0.stream(), &mut ws1, &inputs, &opts)
        .expect_err("a workspace of device 1 on a stream of device 0");
    assert!(
        matches!(e3, smarttrim::Error::InvalidArgument { .. }),
        "{e3}"
    );
    let again = m0.forward(&mut ws0, &inputs, &opts).unwrap();
    assert!(same(&again, &want), "the model after the refusals");
    assert!(same(&m1.forward(&mut ws1, &inputs, &opts).unwrap(), &want));
    println!("refused across devices: {e}; {e2}; {e3}");
}
