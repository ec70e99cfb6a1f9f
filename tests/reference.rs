//! CPU semantics tests of the reference pass (DESIGN.md). Fast: tiny presets.

use smarttrim::reference::compact::{compact, Packed};
use smarttrim::reference::model::{layer, self_attention};
use smarttrim::reference::ops::matmul_t;
use smarttrim::reference::pruner::{head_mask, keep_rows};
use smarttrim::reference::{attention, forward, ForwardOptions, Inputs, StreamInput};
use smarttrim::spec::flops::{layer_flops, LayerCounts};
use smarttrim::spec::{preset, KeepRule, LayerConfig, ModelConfig, Rng, Weights};
use smarttrim::Error;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).normals(n)
}

fn cu_of(lengths: &[usize]) -> Vec<i32> {
    let mut cu = vec![0i32];
    for &l in lengths {
        cu.push(cu.last().unwrap() + l as i32);
    }
    cu
}

/// tiny-meter inputs: text and image rows of the given lengths.
fn meter_inputs(c: &ModelConfig, text: &[usize], image: &[usize], seed: u64) -> Inputs {
    let dt = c.streams[0].hidden;
    let di = c.streams[1].hidden;
    let nt: usize = text.iter().sum();
    let ni: usize = image.iter().sum();
    Inputs {
        streams: vec![
            StreamInput::Packed {
                rows: randn(nt * dt, seed),
                cu_seqlens: cu_of(text),
            },
            StreamInput::Packed {
                rows: randn(ni * di, seed + 1),
                cu_seqlens: cu_of(image),
            },
        ],
        context: None,
    }
}

fn bert_inputs(lengths: &[usize], vocab: u32, seed: u64) -> StreamInput {
    let mut r = Rng::new(seed);
    let total: usize = lengths.iter().sum();
    StreamInput::Tokens {
        ids: (0..total)
            .map(|_| (r.next_u64() % vocab as u64) as u32)
            .collect(),
        type_ids: Some((0..total).map(|i| (i % 2) as u32).collect()),
        cu_seqlens: cu_of(lengths),
    }
}

fn all_inputs(name: &str, c: &ModelConfig) -> Inputs {
    match name {
        "tiny-meter" => meter_inputs(c, &[5, 9], &[17, 3], 11),
        "tiny-vit" => Inputs {
            streams: vec![StreamInput::Pixels {
                pixels: randn(2 * 3 * 32 * 32, 5),
                batch: 2,
            }],
            context: None,
        },
        "tiny-bert" => Inputs {
            streams: vec![bert_inputs(&[7, 12], 100, 3)],
            context: None,
        },
        "tiny-blip" => Inputs {
            streams: vec![bert_inputs(&[7, 12], 100, 3)],
            context: Some((randn((17 + 5) * 48, 9), cu_of(&[17, 5]))),
        },
        _ => unreachable!(),
    }
}

const TINY: [&str; 4] = ["tiny-meter", "tiny-vit", "tiny-bert", "tiny-blip"];

/// Rewrites every pruner of the config (rules, head thresholds) in place.
fn set_rules(c: &mut ModelConfig, rule: KeepRule, tau_h: f32) {
    for s in &mut c.streams {
        for l in &mut s.layers {
            if let Some(t) = &mut l.token_pruner {
                t.rule = rule;
            }
            for h in [&mut l.self_head_pruner, &mut l.cross_head_pruner]
                .into_iter()
                .flatten()
            {
                h.tau_h = tau_h;
            }
        }
    }
}

#[test]
fn threshold_zero_and_budget_one_equal_dense_bitwise() {
    for name in TINY {
        let c = preset(name).unwrap();
        let w = Weights::random(&c, 42).unwrap();
        let inputs = all_inputs(name, &c);
        let dense = forward(&w, &inputs, &ForwardOptions { dense: true }).unwrap();
        for rule in [
            KeepRule::Threshold { tau: 0.0 },
            KeepRule::Budget { rho: 1.0 },
        ] {
            let mut c2 = c.clone();
            set_rules(&mut c2, rule, 0.0);
            let mut w2 = w.clone();
            w2.config = c2;
            let out = forward(&w2, &inputs, &ForwardOptions::default()).unwrap();
            for (a, b) in out.streams.iter().zip(&dense.streams) {
                assert_eq!(a.packed, b.packed, "{name} {rule:?}");
                // pruners ran (and kept everything)
                assert!(a.layers.iter().any(|l| l.keep.is_some()), "{name}");
            }
        }
        // the pruned pass with default thresholds prunes something, not everything
        let out = forward(&w, &inputs, &ForwardOptions::default()).unwrap();
        let dropped: i32 = out
            .streams
            .iter()
            .flat_map(|s| &s.layers)
            .map(|l| l.rows_in.iter().sum::<i32>() - l.kept.iter().sum::<i32>())
            .sum();
        assert!(dropped > 0, "{name}: random pruners dropped nothing");
        for s in &out.streams {
            assert!(s.packed.rows.iter().all(|x| x.is_finite()));
            for (f, b) in s.flops.iter().enumerate() {
                assert!(b.pruned.model <= b.dense.model, "{name} seq {f}");
                assert!(b.pruned.model <= b.pruned.executed, "{name} seq {f}");
            }
            assert!(s.packed.cu_seqlens.windows(2).all(|w| w[1] > w[0]));
        }
    }
}

#[test]
fn keep_first_holds_when_every_score_is_low() {
    let cu = vec![0, 3, 4, 9];
    let orig: Vec<i32> = vec![0, 1, 2, 0, 0, 1, 2, 3, 4];
    let scores = vec![-50.0f32; 9];
    let k = keep_rows(&scores, &cu, &orig, &KeepRule::Threshold { tau: 0.5 }, true);
    assert_eq!(
        k,
        vec![true, false, false, true, true, false, false, false, false]
    );
    let k = keep_rows(
        &scores,
        &cu,
        &orig,
        &KeepRule::Threshold { tau: 0.5 },
        false,
    );
    assert!(k.iter().all(|&x| !x));
    // through the whole model: a hugely negative b2 leaves only the first row
    let c = preset("tiny-meter").unwrap();
    let mut w = Weights::random(&c, 1).unwrap();
    for s in &mut w.streams {
        for l in &mut s.layers {
            if let Some(t) = &mut l.token_pruner {
                t.b2 = -1e4;
            }
        }
    }
    let out = forward(
        &w,
        &meter_inputs(&c, &[5, 9], &[17, 3], 2),
        &ForwardOptions::default(),
    )
    .unwrap();
    for s in &out.streams {
        assert_eq!(s.packed.cu_seqlens, vec![0, 1, 2]);
        assert_eq!(s.packed.orig_index, vec![0, 0]);
    }
}

#[test]
fn compaction_preserves_order_and_orig_index() {
    let d = 3;
    let rows: Vec<f32> = (0..7 * d).map(|x| x as f32).collect();
    let p = Packed::new(rows, d, vec![0, 4, 4, 7]);
    assert_eq!(p.orig_index, vec![0, 1, 2, 3, 0, 1, 2]);
    let keep = [true, false, true, true, false, true, false];
    let (c, kept) = compact(&p, &keep);
    assert_eq!(kept, vec![3, 0, 1]);
    assert_eq!(c.cu_seqlens, vec![0, 3, 3, 4]);
    assert_eq!(c.orig_index, vec![0, 2, 3, 1]);
    let want: Vec<f32> = [0, 2, 3, 5]
        .iter()
        .flat_map(|&r| (0..d).map(move |j| (r * d + j) as f32))
        .collect();
    assert_eq!(c.rows, want);
    // compacting again composes: orig_index refers to the unpruned positions
    let (c2, _) = compact(&c, &[true, false, true, true]);
    assert_eq!(c2.orig_index, vec![0, 3, 1]);
}

#[test]
fn inactive_head_is_zero_and_equals_zeroed_out_proj_columns() {
    let (heads, dh) = (4, 8);
    let w = heads * dh;
    let cu = vec![0, 5, 12];
    let q = randn(12 * w, 1);
    let k = randn(12 * w, 2);
    let v = randn(12 * w, 3);
    let mask = vec![1u8, 0, 1, 1, 0, 0, 1, 0];
    let full = attention(&q, &k, &v, &cu, &cu, heads, dh, None);
    let masked = attention(&q, &k, &v, &cu, &cu, heads, dh, Some(&mask));
    for b in 0..2 {
        for r in cu[b] as usize..cu[b + 1] as usize {
            for h in 0..heads {
                let s = r * w + h * dh..r * w + (h + 1) * dh;
                if mask[b * heads + h] == 0 {
                    assert!(masked[s].iter().all(|&x| x == 0.0));
                } else {
                    assert_eq!(masked[s.clone()], full[s]);
                }
            }
        }
    }
    // Out projection of the masked context == projection of the full context
    // through a weight whose inactive heads' input columns are zero (per sequence).
    let d = w;
    let wo = randn(d * d, 4);
    let y_masked = matmul_t(&masked, 12, &wo, d, d);
    for b in 0..2usize {
        let mut wz = wo.clone();
        for o in 0..d {
            for h in 0..heads {
                if mask[b * heads + h] == 0 {
                    for c in h * dh..(h + 1) * dh {
                        wz[o * d + c] = 0.0;
                    }
                }
            }
        }
        let y = matmul_t(&full, 12, &wz, d, d);
        for r in cu[b] as usize..cu[b + 1] as usize {
            for j in 0..d {
                let (a, e) = (y_masked[r * d + j], y[r * d + j]);
                assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "{a} vs {e}");
            }
        }
    }
    // self_attention with a mask equals the same module with zeroed columns
    let c = preset("tiny-bert").unwrap();
    let wt = Weights::random(&c, 3).unwrap();
    let sa = &wt.streams[0].layers[0].self_attn;
    let x = randn(12 * 64, 9);
    let m2 = vec![0u8, 1, 0, 0, 1, 1, 1, 1];
    let y1 = self_attention(&x, &cu, 64, 4, sa, Some(&m2));
    let y0 = self_attention(&x, &cu, 64, 4, sa, None);
    assert_ne!(y1, y0);
}

#[test]
fn budget_rule_keeps_exactly_k_with_tie_rule() {
    // 8 rows, all equal scores, orig_index scrambled: lower orig_index wins
    let cu = vec![0, 8];
    let orig = vec![0, 7, 3, 5, 1, 6, 2, 4];
    let scores = vec![0.25f32; 8];
    let k = keep_rows(&scores, &cu, &orig, &KeepRule::Budget { rho: 0.5 }, true);
    // k = 4: row 0, then orig 1, 2, 3 (rows 4, 6, 2)
    assert_eq!(k, vec![true, false, true, false, true, false, true, false]);
    // without keep_first: plain top 4 by tie rule -> orig 0,1,2,3
    let k = keep_rows(&scores, &cu, &orig, &KeepRule::Budget { rho: 0.5 }, false);
    assert_eq!(k, vec![true, false, true, false, true, false, true, false]);
    // scores decide before ties; keep_first keeps row 0 even if lowest
    let scores = vec![-9.0, 1.0, 3.0, 3.0, 0.0, 2.0, -1.0, 3.0];
    let k = keep_rows(&scores, &cu, &orig, &KeepRule::Budget { rho: 0.4 }, true);
    // k = ceil(3.2) = 4: row 0 + three 3.0s (rows 2, 3, 7)
    assert_eq!(k, vec![true, false, true, true, false, false, false, true]);
    let k = keep_rows(&scores, &cu, &orig, &KeepRule::Budget { rho: 0.25 }, true);
    // k = 2: row 0 + the 3.0 with the lowest orig_index (row 2, orig 3)
    assert_eq!(
        k,
        vec![true, false, true, false, false, false, false, false]
    );
    // k = max(1, ...) and exactly k per sequence in a batch
    let cu = vec![0, 1, 3, 13];
    let orig: Vec<i32> = vec![0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    let scores = randn(13, 5);
    let k = keep_rows(&scores, &cu, &orig, &KeepRule::Budget { rho: 0.3 }, true);
    let counts: Vec<usize> = cu
        .windows(2)
        .map(|w| {
            k[w[0] as usize..w[1] as usize]
                .iter()
                .filter(|&&x| x)
                .count()
        })
        .collect();
    assert_eq!(counts, vec![1, 1, 3]);
}

#[test]
fn head_mask_min_heads_top_up() {
    let logits = vec![-3.0, -1.0, -1.0, -2.0, 5.0, -4.0, 0.1, -9.0];
    let m = head_mask(&logits, 4, 0.5, 2);
    assert_eq!(m, vec![0, 1, 1, 0, 1, 0, 1, 0]);
    let m = head_mask(&logits, 4, 0.5, 1);
    assert_eq!(m, vec![0, 1, 0, 0, 1, 0, 1, 0]);
}

#[test]
fn co_attention_reads_previous_outputs() {
    let mut c = preset("tiny-meter").unwrap();
    for s in &mut c.streams {
        s.layers = vec![LayerConfig::default(); 2];
    }
    let w = Weights::random(&c, 7).unwrap();
    let inputs = meter_inputs(&c, &[4, 6], &[9, 2], 3);
    let out = forward(&w, &inputs, &ForwardOptions::default()).unwrap();
    let to_packed = |i: &StreamInput| match i {
        StreamInput::Packed { rows, cu_seqlens } => {
            Packed::new(rows.clone(), 64, cu_seqlens.clone())
        }
        _ => unreachable!(),
    };
    let t0 = to_packed(&inputs.streams[0]);
    let i0 = to_packed(&inputs.streams[1]);
    let (st, si) = (&c.streams[0], &c.streams[1]);
    let (wt, wi) = (&w.streams[0].layers, &w.streams[1].layers);
    let t1 = Packed {
        rows: layer(st, &wt[0], &t0, Some(&i0), None, None),
        ..t0.clone()
    };
    let i1 = Packed {
        rows: layer(si, &wi[0], &i0, Some(&t0), None, None),
        ..i0.clone()
    };
    let t2 = layer(st, &wt[1], &t1, Some(&i1), None, None);
    let i2 = layer(si, &wi[1], &i1, Some(&t1), None, None);
    assert_eq!(out.streams[0].packed.rows, t2);
    assert_eq!(out.streams[1].packed.rows, i2);
    // and NOT the sequential reading (image seeing the text's new output)
    let i2_wrong = layer(
        si,
        &wi[1],
        &i1,
        Some(&Packed {
            rows: t2.clone(),
            ..t1.clone()
        }),
        None,
        None,
    );
    assert_ne!(out.streams[1].packed.rows, i2_wrong);
}

#[test]
fn flops_hand_computed() {
    let mut c = preset("tiny-bert").unwrap();
    let s = &mut c.streams[0];
    s.hidden = 8;
    s.heads = 2;
    s.ffn = 16;
    let mut lc = s.layers[1].clone(); // token pruner + self head pruner, hidden 4
    lc.token_pruner.as_mut().unwrap().hidden = Some(4);
    lc.self_head_pruner.as_mut().unwrap().hidden = Some(4);
    let counts = LayerCounts {
        rows_in: 5,
        rows_kept: 3,
        other_rows: None,
        self_heads: 1,
        cross_heads: 0,
    };
    let f = layer_flops(s, &lc, None, &counts);
    // D=8, H=2, dh=4, F=16, n=5, n'=3, a=1, Hs=4, hh=4
    let attn_model = 2 * 3 * 8 * (3 * 4) + 4 * 3 * 3 * 4 + 2 * 3 * 4 * 8; // 576+144+192
    let attn_exec = 2 * 3 * 8 * 24 + 4 * 3 * 3 * 4 + 2 * 3 * 8 * 8; // 1152+144+384
    let ffn = 4 * 3 * 8 * 16; // 1536
    let token_pruner = 2 * 5 * 8 * 4 + 2 * 5 * 4 + 2 * 8 * 4; // 320+40+64
    let head_pruner = 2 * 8 * 4 + 2 * 4 * 2; // 64+16
    assert_eq!(
        f.model,
        (attn_model + ffn + token_pruner + head_pruner) as u64
    );
    assert_eq!(
        f.executed,
        (attn_exec + ffn + token_pruner + head_pruner) as u64
    );
    // cross layer: m'=7 rows of width Do=6, c=2 heads, no pruners
    let counts = LayerCounts {
        rows_in: 3,
        rows_kept: 3,
        other_rows: Some(7),
        self_heads: 2,
        cross_heads: 2,
    };
    let f = layer_flops(s, &LayerConfig::default(), Some(6), &counts);
    let self_full = 2 * 3 * 8 * 24 + 4 * 9 * 8 + 2 * 3 * 8 * 8;
    let cross = 2 * 3 * 8 * 8 + 2 * 7 * 6 * 16 + 4 * 3 * 7 * 8 + 2 * 3 * 8 * 8;
    assert_eq!(f.model, (self_full + cross + ffn) as u64);
    assert_eq!(f.model, f.executed);
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn serialize(entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = entries
        .iter()
        .map(|(n, dt, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn loader_reports_every_problem_at_once() {
    let c = preset("tiny-meter").unwrap();
    let w = Weights::random(&c, 5).unwrap();
    let mut entries = Vec::new();
    for (n, s, d) in w.tensors() {
        match n.as_str() {
            "text.layers.0.ffn.fc1.weight" => {} // missing
            "image.layers.1.self_attn.qkv.weight" => {
                let wrong = vec![s[0] / 3, s[1] * 3];
                entries.push((n, safetensors::Dtype::F32, wrong, f32_bytes(&d)));
            }
            "image.layers.1.token_pruner.w1x" => {
                let b: Vec<u8> = d.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect();
                entries.push((n, safetensors::Dtype::I32, s, b));
            }
            "text.layers.2.ffn.ln.bias" => {
                let mut d = d.clone();
                d[3] = f32::NAN;
                entries.push((n, safetensors::Dtype::F32, s, f32_bytes(&d)));
            }
            _ => entries.push((n, safetensors::Dtype::F32, s, f32_bytes(&d))),
        }
    }
    entries.push((
        "text.layers.9.bogus".into(),
        safetensors::Dtype::F32,
        vec![1],
        f32_bytes(&[0.0]),
    ));
    let bytes = serialize(entries);
    match Weights::from_safetensors_bytes(&c, &bytes, "test") {
        Err(Error::Weights(problems)) => {
            let all = problems.join("\n");
            for name in [
                "text.layers.0.ffn.fc1.weight",
                "image.layers.1.self_attn.qkv.weight",
                "image.layers.1.token_pruner.w1x",
                "text.layers.2.ffn.ln.bias",
                "text.layers.9.bogus",
            ] {
                assert!(all.contains(name), "{name} not reported in:\n{all}");
            }
            assert_eq!(problems.len(), 5, "{all}");
            assert!(all.contains("missing") && all.contains("shape") && all.contains("dtype"));
        }
        other => panic!("expected Error::Weights, got {other:?}"),
    }
}

#[test]
fn corrupt_or_truncated_files_are_errors() {
    let c = preset("tiny-bert").unwrap();
    let bytes = Weights::random(&c, 1)
        .unwrap()
        .to_safetensors_bytes()
        .unwrap();
    for cut in [0, 3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let r = Weights::from_safetensors_bytes(&c, &bytes[..cut], "cut");
        assert!(
            matches!(r, Err(Error::Safetensors { .. })),
            "cut {cut}: {r:?}"
        );
    }
    let mut bad = bytes.clone();
    bad[0] = 0xff;
    bad[5] = 0x7f; // absurd header length
    assert!(Weights::from_safetensors_bytes(&c, &bad, "bad").is_err());
    let mut bad = bytes.clone();
    for b in bad.iter_mut().skip(8).take(40) {
        *b = b'#'; // garbage JSON header
    }
    assert!(Weights::from_safetensors_bytes(&c, &bad, "bad").is_err());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    assert!(Weights::load(&c, &p).is_err());
    assert!(matches!(
        Weights::load(&c, dir.path().join("nope.safetensors")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn random_weights_deterministic_and_roundtrip() {
    let c = preset("tiny-blip").unwrap();
    let a = Weights::random(&c, 99).unwrap();
    assert_eq!(a, Weights::random(&c, 99).unwrap());
    assert_ne!(a, Weights::random(&c, 100).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    a.save(&p).unwrap();
    assert_eq!(Weights::load(&c, &p).unwrap(), a);
    // f16 and bf16 files load too (converted to f32)
    for dt in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let entries = a
            .tensors()
            .into_iter()
            .map(|(n, s, d)| {
                let b: Vec<u8> = d
                    .iter()
                    .flat_map(|&x| match dt {
                        safetensors::Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                        _ => half::bf16::from_f32(x).to_le_bytes(),
                    })
                    .collect();
                (n, dt, s, b)
            })
            .collect();
        let w = Weights::from_safetensors_bytes(&c, &serialize(entries), "half").unwrap();
        let (x, y) = (
            &w.streams[0].layers[1].ffn.fc1.weight,
            &a.streams[0].layers[1].ffn.fc1.weight,
        );
        assert!(x
            .iter()
            .zip(y)
            .all(|(p, q)| (p - q).abs() <= 1e-2 * q.abs() + 1e-6));
    }
}

#[test]
fn ragged_batches_match_single_sequences() {
    let lengths = [1usize, 2, 31, 40];
    // BERT stream (token ids)
    let c = preset("tiny-bert").unwrap();
    let w = Weights::random(&c, 4).unwrap();
    let inp = bert_inputs(&lengths, 100, 8);
    let out = forward(
        &w,
        &Inputs {
            streams: vec![inp.clone()],
            context: None,
        },
        &ForwardOptions::default(),
    )
    .unwrap();
    let StreamInput::Tokens {
        ids,
        type_ids,
        cu_seqlens,
    } = inp
    else {
        unreachable!()
    };
    let s = &out.streams[0];
    assert_eq!(s.layers[0].rows_in, vec![1, 2, 31, 40]);
    for b in 0..4 {
        let (lo, hi) = (cu_seqlens[b] as usize, cu_seqlens[b + 1] as usize);
        let one = StreamInput::Tokens {
            ids: ids[lo..hi].to_vec(),
            type_ids: type_ids.as_ref().map(|t| t[lo..hi].to_vec()),
            cu_seqlens: vec![0, (hi - lo) as i32],
        };
        let o1 = forward(
            &w,
            &Inputs {
                streams: vec![one],
                context: None,
            },
            &ForwardOptions::default(),
        )
        .unwrap();
        let p1 = &o1.streams[0].packed;
        let (a, z) = (
            s.packed.cu_seqlens[b] as usize,
            s.packed.cu_seqlens[b + 1] as usize,
        );
        assert_eq!(p1.orig_index, s.packed.orig_index[a..z].to_vec(), "seq {b}");
        let got = &s.packed.rows[a * 64..z * 64];
        for (x, y) in got.iter().zip(&p1.rows) {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "seq {b}: {x} vs {y}"
            );
        }
        assert_eq!(o1.flops[0], out.flops[b]);
    }
    // co-attention with ragged lengths on both streams
    let c = preset("tiny-meter").unwrap();
    let w = Weights::random(&c, 4).unwrap();
    let out = forward(
        &w,
        &meter_inputs(&c, &lengths, &[40, 31, 2, 1], 6),
        &ForwardOptions::default(),
    )
    .unwrap();
    assert_eq!(out.streams[1].layers[0].rows_in, vec![40, 31, 2, 1]);
    assert!(out
        .streams
        .iter()
        .all(|s| s.packed.rows.iter().all(|x| x.is_finite())));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let c = preset("tiny-bert").unwrap();
    let w = Weights::random(&c, 4).unwrap();
    let bad = StreamInput::Tokens {
        ids: vec![1, 2, 300],
        type_ids: Some(vec![0, 5, 0]),
        cu_seqlens: vec![0, 3],
    };
    match forward(
        &w,
        &Inputs {
            streams: vec![bad],
            context: None,
        },
        &ForwardOptions::default(),
    ) {
        Err(Error::Input(p)) => assert_eq!(p.len(), 2, "{p:?}"),
        other => panic!("{other:?}"),
    }
    let c = preset("tiny-meter").unwrap();
    let w = Weights::random(&c, 4).unwrap();
    let mut inp = meter_inputs(&c, &[3], &[4, 4], 1);
    assert!(matches!(
        forward(&w, &inp, &ForwardOptions::default()),
        Err(Error::Input(_))
    ));
    inp.streams.pop();
    assert!(matches!(
        forward(&w, &inp, &ForwardOptions::default()),
        Err(Error::Input(_))
    ));
}

#[test]
fn hf_bert_checkpoint_loads_as_is() {
    let hf = r#"{"model_type":"bert","vocab_size":100,"hidden_size":64,"num_hidden_layers":2,
        "num_attention_heads":4,"intermediate_size":128,"max_position_embeddings":64,
        "type_vocab_size":2,"layer_norm_eps":1e-12,"hidden_act":"gelu"}"#;
    let c = ModelConfig::from_hf_bert_config(hf).unwrap();
    let w = Weights::random(&c, 12).unwrap();
    let mut entries = Vec::new();
    let f = |n: &str, s: Vec<usize>, d: &[f32]| {
        (n.to_string(), safetensors::Dtype::F32, s, f32_bytes(d))
    };
    let sw = &w.streams[0];
    if let smarttrim::spec::EmbeddingWeights::Bert {
        word,
        position,
        token_type,
        ln,
    } = &sw.embeddings
    {
        entries.push(f(
            "bert.embeddings.word_embeddings.weight",
            vec![100, 64],
            word,
        ));
        entries.push(f(
            "bert.embeddings.position_embeddings.weight",
            vec![64, 64],
            position,
        ));
        entries.push(f(
            "bert.embeddings.token_type_embeddings.weight",
            vec![2, 64],
            token_type,
        ));
        entries.push(f("bert.embeddings.LayerNorm.weight", vec![64], &ln.gamma));
        entries.push(f("bert.embeddings.LayerNorm.bias", vec![64], &ln.beta));
    }
    entries.push(f("bert.embeddings.position_ids", vec![64], &[0.0; 64]));
    entries.push(f("bert.pooler.dense.weight", vec![64, 64], &[0.0; 64 * 64]));
    for (l, lw) in sw.layers.iter().enumerate() {
        let p = format!("bert.encoder.layer.{l}");
        let qkv = &lw.self_attn.qkv;
        for (i, nm) in ["query", "key", "value"].iter().enumerate() {
            entries.push(f(
                &format!("{p}.attention.self.{nm}.weight"),
                vec![64, 64],
                &qkv.weight[i * 64 * 64..(i + 1) * 64 * 64],
            ));
            entries.push(f(
                &format!("{p}.attention.self.{nm}.bias"),
                vec![64],
                &qkv.bias[i * 64..(i + 1) * 64],
            ));
        }
        for (hfn, lin) in [
            ("attention.output.dense", &lw.self_attn.out),
            ("intermediate.dense", &lw.ffn.fc1),
            ("output.dense", &lw.ffn.fc2),
        ] {
            entries.push(f(
                &format!("{p}.{hfn}.weight"),
                vec![lin.out, lin.inp],
                &lin.weight,
            ));
            entries.push(f(&format!("{p}.{hfn}.bias"), vec![lin.out], &lin.bias));
        }
        for (hfn, ln) in [
            ("attention.output.LayerNorm", &lw.self_attn.ln),
            ("output.LayerNorm", &lw.ffn.ln),
        ] {
            entries.push(f(&format!("{p}.{hfn}.weight"), vec![64], &ln.gamma));
            entries.push(f(&format!("{p}.{hfn}.bias"), vec![64], &ln.beta));
        }
    }
    let bytes = serialize(entries.clone());
    assert_eq!(Weights::from_hf_bert_bytes(&c, &bytes, "hf").unwrap(), w);
    // a missing key piece is reported by its HF name
    entries.retain(|e| e.0 != "bert.encoder.layer.1.attention.self.key.weight");
    let e = Weights::from_hf_bert_bytes(&c, &serialize(entries), "hf")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder.layer.1.attention.self.key.weight"),
        "{e}"
    );
}

#[test]
fn formats_md_json_examples_parse() {
    let doc = include_str!("../docs/FORMATS.md");
    let mut n = 0;
    for block in doc.split("```json").skip(1) {
        let json = block.split("```").next().unwrap();
        let c = ModelConfig::from_json(json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        Weights::random(&c, 0).unwrap();
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn pruners_see_entering_rows_then_compacted_rows() {
    use smarttrim::reference::pruner::{head_logits, token_scores};
    let c = preset("tiny-meter").unwrap(); // no pruners at layer 0, all kinds at layer 1
    let w = Weights::random(&c, 21).unwrap();
    let inputs = meter_inputs(&c, &[6, 9], &[17, 12], 4);
    let out = forward(&w, &inputs, &ForwardOptions::default()).unwrap();
    let to_packed = |i: &StreamInput| match i {
        StreamInput::Packed { rows, cu_seqlens } => {
            Packed::new(rows.clone(), 64, cu_seqlens.clone())
        }
        _ => unreachable!(),
    };
    let (t0, i0) = (to_packed(&inputs.streams[0]), to_packed(&inputs.streams[1]));
    let (st, si) = (&c.streams[0], &c.streams[1]);
    let (wt, wi) = (&w.streams[0].layers, &w.streams[1].layers);
    let t1 = Packed {
        rows: layer(st, &wt[0], &t0, Some(&i0), None, None),
        ..t0.clone()
    };
    let i1 = Packed {
        rows: layer(si, &wi[0], &i0, Some(&t0), None, None),
        ..i0.clone()
    };
    // token scores at layer 1: own entering rows, other's entering rows (unpruned)
    let tp_t = wt[1].token_pruner.as_ref().unwrap();
    let tp_i = wi[1].token_pruner.as_ref().unwrap();
    let st1 = token_scores(
        &t1.rows,
        &t1.cu_seqlens,
        Some((&i1.rows, &i1.cu_seqlens)),
        tp_t,
        1e-12,
    );
    let si1 = token_scores(
        &i1.rows,
        &i1.cu_seqlens,
        Some((&t1.rows, &t1.cu_seqlens)),
        tp_i,
        1e-12,
    );
    let rec_t = &out.streams[0].layers[1];
    let rec_i = &out.streams[1].layers[1];
    assert_eq!(rec_t.scores.as_ref().unwrap(), &st1);
    assert_eq!(rec_i.scores.as_ref().unwrap(), &si1);
    // head pruners: compacted own rows, compacted other rows
    let (tc, _) = compact(&t1, rec_t.keep.as_ref().unwrap());
    let (ic, _) = compact(&i1, rec_i.keep.as_ref().unwrap());
    let hp = wt[1]
        .cross_attn
        .as_ref()
        .unwrap()
        .head_pruner
        .as_ref()
        .unwrap();
    let a = head_logits(
        &tc.rows,
        &tc.cu_seqlens,
        Some((&ic.rows, &ic.cu_seqlens)),
        hp,
        1e-12,
    );
    assert_eq!(rec_t.cross_heads.as_ref().unwrap().logits, a);
    let hp = wi[1].self_attn.head_pruner.as_ref().unwrap();
    let a = head_logits(
        &ic.rows,
        &ic.cu_seqlens,
        Some((&tc.rows, &tc.cu_seqlens)),
        hp,
        1e-12,
    );
    assert_eq!(rec_i.self_heads.as_ref().unwrap().logits, a);
    // the layer: cross keys/values are the other's compacted entering rows
    let sm = &rec_t.self_heads.as_ref().unwrap().mask;
    let cm = &rec_t.cross_heads.as_ref().unwrap().mask;
    let t2 = layer(st, &wt[1], &tc, Some(&ic), Some(sm), Some(cm));
    let rec_t2 = &out.streams[0].layers[2];
    // layer 2 entering rows are t2: its recorded scores must match
    let tp2 = wt[2].token_pruner.as_ref().unwrap();
    let sm_i = &rec_i.self_heads.as_ref().unwrap().mask;
    let cm_i = &rec_i.cross_heads.as_ref().unwrap().mask;
    let i2 = layer(si, &wi[1], &ic, Some(&tc), Some(sm_i), Some(cm_i));
    let s2 = token_scores(&t2, &tc.cu_seqlens, Some((&i2, &ic.cu_seqlens)), tp2, 1e-12);
    assert_eq!(rec_t2.scores.as_ref().unwrap(), &s2);
    assert_eq!(rec_t2.orig_index_in, tc.orig_index);
}

#[test]
fn hf_roberta_config_sets_position_offset() {
    let hf = r#"{"model_type":"roberta","vocab_size":50,"hidden_size":32,"num_hidden_layers":1,
        "num_attention_heads":2,"intermediate_size":64,"max_position_embeddings":20,
        "type_vocab_size":1,"pad_token_id":1,"layer_norm_eps":1e-5}"#;
    let c = ModelConfig::from_hf_bert_config(hf).unwrap();
    match &c.streams[0].embedding {
        smarttrim::spec::EmbeddingConfig::Bert {
            position_offset, ..
        } => {
            assert_eq!(*position_offset, 2)
        }
        e => panic!("{e:?}"),
    }
    let bad = r#"{"hidden_size":32}"#;
    assert!(matches!(
        ModelConfig::from_hf_bert_config(bad),
        Err(Error::Config(_))
    ));
}

#[test]
fn inconsistent_weights_are_an_error_not_a_panic() {
    let c = preset("tiny-meter").unwrap();
    let mut w = Weights::random(&c, 2).unwrap();
    w.check().unwrap();
    w.streams[1].layers[2].ffn.fc1.weight.pop();
    w.streams[0].layers[1].token_pruner = None;
    let inputs = meter_inputs(&c, &[3], &[4], 1);
    assert!(matches!(
        forward(&w, &inputs, &ForwardOptions::default()),
        Err(Error::Weights(_))
    ));
    let mut w = Weights::random(&c, 2).unwrap();
    w.streams[1].layers[2].ffn.fc1.weight.pop();
    match w.check() {
        Err(Error::Weights(p)) => assert!(p[0].contains("image.layers.2.ffn.fc1.weight"), "{p:?}"),
        other => panic!("{other:?}"),
    }
}

/// `spec::flops::stream_flops` (what the GPU pass uses to account its
/// FLOPs from its statistics) gives exactly the reference's FLOPs, per layer
/// and per sequence, for every model kind, pruned and dense.
#[test]
fn stream_flops_from_statistics_equals_the_reference() {
    use smarttrim::spec::flops::{stream_flops, LayerRun};
    use smarttrim::spec::ModelKind;
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let c = preset(name).unwrap();
        let w = Weights::random(&c, 3).unwrap();
        let inputs = smarttrim::reference::synthetic_inputs(&c, 8, 4, true);
        for dense in [false, true] {
            let out = forward(&w, &inputs, &ForwardOptions { dense }).unwrap();
            let context: Option<Vec<i32>> = inputs
                .context
                .as_ref()
                .map(|(_, cu)| cu.windows(2).map(|x| x[1] - x[0]).collect());
            let mut total = vec![smarttrim::spec::SequenceFlops::default(); 8];
            for (s, so) in out.streams.iter().enumerate() {
                let sc = &c.streams[s];
                let other_initial: Option<Vec<i32>> = match c.kind {
                    ModelKind::Encoder | ModelKind::Blip | ModelKind::Meter => None,
                    ModelKind::CoAttention => Some(out.streams[1 - s].layers[0].rows_in.clone()),
                    ModelKind::CrossEncoder { .. } => context.clone(),
                };
                let runs: Vec<LayerRun> = so
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(l, r)| {
                        let lc = &sc.layers[l];
                        LayerRun {
                            ran: LayerConfig {
                                token_pruner: lc
                                    .token_pruner
                                    .clone()
                                    .filter(|_| r.scores.is_some()),
                                self_head_pruner: lc
                                    .self_head_pruner
                                    .clone()
                                    .filter(|_| r.self_heads.is_some()),
                                cross_head_pruner: lc
                                    .cross_head_pruner
                                    .clone()
                                    .filter(|_| r.cross_heads.is_some()),
                            },
                            rows_in: &r.rows_in,
                            kept: &r.kept,
                            active_self_heads: &r.active_self_heads,
                            active_cross_heads: &r.active_cross_heads,
                            other_rows: match c.kind {
                                ModelKind::Encoder | ModelKind::Blip | ModelKind::Meter => None,
                                ModelKind::CoAttention => {
                                    Some(&out.streams[1 - s].layers[l].kept[..])
                                }
                                ModelKind::CrossEncoder { .. } => context.as_deref(),
                            },
                        }
                    })
                    .collect();
                let (per_layer, seq) = stream_flops(
                    sc,
                    c.other_hidden(s),
                    &runs,
                    &so.layers[0].rows_in,
                    other_initial.as_deref(),
                );
                for (l, r) in so.layers.iter().enumerate() {
                    assert_eq!(
                        per_layer[l], r.flops,
                        "{name} dense={dense} stream {s} layer {l}"
                    );
                }
                assert_eq!(seq, so.flops, "{name} dense={dense} stream {s}");
                for (t, f) in total.iter_mut().zip(&seq) {
                    t.pruned += f.pruned;
                    t.dense += f.dense;
                }
            }
            assert_eq!(total, out.flops, "{name} dense={dense}: totals");
        }
    }
}

/// `check_inputs` validates exactly as `embed_inputs` does and gives the same
/// shapes (token and pixel streams without their rows).
#[test]
fn check_inputs_matches_embed_inputs() {
    use smarttrim::reference::model::{check_inputs, embed_inputs};
    for name in ["tiny-meter", "tiny-bert", "tiny-vit", "tiny-blip"] {
        let c = preset(name).unwrap();
        let w = Weights::random(&c, 3).unwrap();
        let emb: Vec<_> = w.streams.iter().map(|s| &s.embeddings).collect();
        let inputs = smarttrim::reference::synthetic_inputs(&c, 5, 4, true);
        let (full, fctx) = embed_inputs(&c, &emb, &inputs).unwrap();
        let (shape, sctx) = check_inputs(&c, &emb, &inputs).unwrap();
        for (f, s) in full.iter().zip(&shape) {
            assert_eq!(f.cu_seqlens, s.cu_seqlens, "{name}");
            assert_eq!(f.orig_index, s.orig_index, "{name}");
            assert!(s.rows.is_empty() || s.rows == f.rows, "{name}");
        }
        assert_eq!(fctx, sctx, "{name}");
        // A broken input: the same message from both.
        let mut bad = inputs.clone();
        match &mut bad.streams[0] {
            StreamInput::Packed { cu_seqlens, .. } | StreamInput::Tokens { cu_seqlens, .. } => {
                cu_seqlens[0] = 1
            }
            StreamInput::Pixels { pixels, .. } => pixels[0] = f32::NAN,
        }
        let a = embed_inputs(&c, &emb, &bad).unwrap_err().to_string();
        let b = check_inputs(&c, &emb, &bad).unwrap_err().to_string();
        assert_eq!(a, b, "{name}");
    }
}

/// Whole models (BLIP, METER): the host accounting from statistics
/// (`flops_from_stats`, what the GPU pass and the bench use) equals the
/// reference's FLOPs, pruned and dense; a budget schedule's statistics and
/// FLOPs are predicted on the host from the input lengths alone (a fusion
/// stream's length entry is not used: it takes its source's rows).
#[test]
fn whole_model_flops_and_budget_stats_match_the_reference() {
    use smarttrim::spec::schedule::{
        budget_config, budget_flops, budget_stats, flops_from_stats, Lengths,
    };
    for name in ["tiny-blip-full", "tiny-meter-full"] {
        let c = preset(name).unwrap();
        let inputs = smarttrim::reference::synthetic_inputs(&c, 4, 4, true);
        let lengths_of = |out: &smarttrim::reference::Outputs| Lengths {
            streams: out
                .streams
                .iter()
                .enumerate()
                .map(|(s, so)| {
                    let fed = c.input_streams().contains(&s);
                    so.layers[0]
                        .rows_in
                        .iter()
                        .map(|&n| if fed { n as usize } else { 0 })
                        .collect()
                })
                .collect(),
            context: None,
        };
        let w = Weights::random(&c, 3).unwrap();
        for dense in [false, true] {
            let out = forward(&w, &inputs, &ForwardOptions { dense }).unwrap();
            let stats = out.stats();
            assert_eq!(stats.len(), c.max_layers(), "{name}");
            let f = flops_from_stats(&c, &lengths_of(&out), &stats, dense).unwrap();
            assert_eq!(f, out.flops, "{name} dense={dense}");
            if !dense {
                assert!(out.flops.iter().all(|x| x.pruned.model < x.dense.model));
            }
        }
        let bc = budget_config(&c, 0.6);
        let bw = Weights::random(&bc, 3).unwrap();
        let out = forward(&bw, &inputs, &ForwardOptions::default()).unwrap();
        let lengths = lengths_of(&out);
        assert_eq!(budget_stats(&bc, &lengths).unwrap(), out.stats(), "{name}");
        assert_eq!(budget_flops(&bc, &lengths).unwrap(), out.flops, "{name}");
    }
}

/// A whole model is its stages: BLIP's text encoder run on its own as a
/// cross encoder over the whole pass's final image rows (pruned, after the
/// final LN) gives the whole pass's text results bitwise, so its pruners and
/// cross-attention saw the pruned image rows; METER's fusion encoder run on
/// its own on the unimodal encoders' final rows gives the fusion results.
#[test]
fn whole_models_compose_their_stages() {
    use smarttrim::spec::StageInput;
    for name in ["tiny-blip-full", "tiny-meter-full"] {
        let c = preset(name).unwrap();
        let w = Weights::random(&c, 11).unwrap();
        let inputs = smarttrim::reference::synthetic_inputs(&c, 3, 12, true);
        let out = forward(&w, &inputs, &ForwardOptions::default()).unwrap();
        let input_streams = c.input_streams();
        let mut pruned_somewhere = false;
        for stage in c.stages() {
            let sw = Weights {
                config: stage.config.clone(),
                streams: stage
                    .streams
                    .iter()
                    .map(|&s| w.streams[s].clone())
                    .collect(),
                head: None,
            };
            let streams: Vec<StreamInput> = stage
                .streams
                .iter()
                .enumerate()
                .map(|(i, &s)| match &stage.input {
                    StageInput::RowsFrom(srcs) => {
                        let p = &out.streams[srcs[i]].packed;
                        StreamInput::Packed {
                            rows: p.rows.clone(),
                            cu_seqlens: p.cu_seqlens.clone(),
                        }
                    }
                    _ => {
                        let j = input_streams.iter().position(|&x| x == s).unwrap();
                        inputs.streams[j].clone()
                    }
                })
                .collect();
            let context = match stage.input {
                StageInput::ContextFrom(src) => {
                    let p = &out.streams[src].packed;
                    let total = p.cu_seqlens[p.cu_seqlens.len() - 1] as usize;
                    pruned_somewhere |=
                        total < out.streams[src].layers[0].rows_in.iter().sum::<i32>() as usize;
                    Some((p.rows.clone(), p.cu_seqlens.clone()))
                }
                _ => None,
            };
            let alone = forward(
                &sw,
                &Inputs { streams, context },
                &ForwardOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            for (i, &s) in stage.streams.iter().enumerate() {
                let (a, b) = (&alone.streams[i], &out.streams[s]);
                assert_eq!(a.packed, b.packed, "{name} stream `{}`", b.name);
                assert_eq!(a.layers, b.layers, "{name} stream `{}` records", b.name);
                assert_eq!(a.pooler, b.pooler, "{name} stream `{}` pooler", b.name);
            }
        }
        if name == "tiny-blip-full" {
            assert!(
                pruned_somewhere,
                "the image encoder pruned rows before the text encoder"
            );
        }
        assert!(out.logits.is_some());
    }
}
