//! The CPU reference against HuggingFace (and METER's own modules), on the
//! tiny random-weight fixtures `scripts/make_hf_fixtures.py` wrote under
//! `tests/fixtures/hf/` (no torch needed here): every fixture loads with our
//! loader as it is, and its dense pass matches the recorded outputs layer by
//! layer at relative error <= 1e-5; the pruned pass with pruners that keep
//! everything equals the dense pass; names outside the model are an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use smarttrim::reference::model::{forward_traced, ForwardOptions, Outputs, Trace};
use smarttrim::spec::hf::{self, DirFormat, HfFamily};
use smarttrim::spec::{HeadPrunerConfig, KeepRule, ModelKind, Weights};
use smarttrim::{tensor_io, Error};

const TOL: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// f32 tensors of a safetensors file.
fn read_f32(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            let d = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, (v.shape().to_vec(), d))
        })
        .collect()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

struct Run {
    weights: Weights,
    out: Outputs,
    trace: Trace,
}

fn run_fixture(name: &str, dense: bool) -> Run {
    let dir = fixture(name);
    let loaded = hf::load_model_dir(&dir, None, None).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inputs = tensor_io::read_inputs(&loaded.weights.config, dir.join("inputs.safetensors"))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (out, trace) = forward_traced(&loaded.weights, &inputs, &ForwardOptions { dense })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Run {
        weights: loaded.weights,
        out,
        trace,
    }
}

/// Compares every recorded output of a fixture with the dense pass; returns
/// the worst relative error and prints each one.
fn compare(name: &str) -> f64 {
    let r = run_fixture(name, true);
    let expected = read_f32(&fixture(name).join("expected.safetensors"));
    let cfg = &r.weights.config;
    let mut worst = 0f64;
    let mut checked = 0;
    let mut bad = Vec::new();
    for (key, (shape, want)) in &expected {
        let got: Vec<f32> = if key == "logits" {
            r.out.logits.clone().expect("the model has a head")
        } else {
            let (stream, what) = key.split_once('.').unwrap();
            let s = cfg
                .streams
                .iter()
                .position(|c| c.name == stream)
                .unwrap_or_else(|| panic!("{name}: no stream `{stream}`"));
            let so = &r.out.streams[s];
            match what {
                "final" => so.packed.rows.clone(),
                "pooler" => so.pooler.clone().expect("the stream has a pooler"),
                "pooled" => so.pooled_first.clone(),
                h => {
                    let k: usize = h.strip_prefix("hidden.").unwrap().parse().unwrap();
                    r.trace.streams[s][k].clone()
                }
            }
        };
        let e = rel_err(&got, want);
        println!("{name:12} {key:24} {shape:?}: relative error {e:.2e}");
        if e > TOL {
            bad.push(format!("{key} relative error {e:.3e} > {TOL:e}"));
        }
        worst = worst.max(e);
        checked += 1;
    }
    assert!(bad.is_empty(), "{name}: {bad:?}");
    assert!(checked >= 4, "{name}: only {checked} outputs recorded");
    worst
}

#[test]
fn roberta_matches_transformers() {
    compare("roberta");
}

#[test]
fn vit_matches_transformers() {
    compare("vit");
}

#[test]
fn clip_vision_matches_transformers() {
    compare("clip_vision");
}

#[test]
fn blip_matches_transformers() {
    compare("blip");
}

#[test]
fn meter_matches_its_own_modules() {
    compare("meter");
}

/// The directories describe what they are.
#[test]
fn model_dirs_are_recognised() {
    for (name, format, kind) in [
        (
            "roberta",
            DirFormat::HuggingFace(HfFamily::Roberta),
            ModelKind::Encoder,
        ),
        (
            "vit",
            DirFormat::HuggingFace(HfFamily::Vit),
            ModelKind::Encoder,
        ),
        (
            "clip_vision",
            DirFormat::HuggingFace(HfFamily::ClipVision),
            ModelKind::Encoder,
        ),
        (
            "blip",
            DirFormat::HuggingFace(HfFamily::Blip),
            ModelKind::Blip,
        ),
        ("meter", DirFormat::Smarttrim, ModelKind::Meter),
    ] {
        let (f, c) = hf::read_dir_config(fixture(name)).unwrap();
        assert_eq!(f, format, "{name}");
        assert_eq!(c.kind, kind, "{name}");
    }
    let (_, blip) = hf::read_dir_config(fixture("blip")).unwrap();
    assert!(blip.head.is_some(), "itm_head makes the ITM head");
    assert_eq!(blip.streams[1].heads, 2, "heads read from config.json");
    let (_, vit) = hf::read_dir_config(fixture("vit")).unwrap();
    assert!(vit.streams[0].pooler, "the checkpoint's pooler is used");
    let (_, clip) = hf::read_dir_config(fixture("clip_vision")).unwrap();
    let s = &clip.streams[0];
    assert_eq!(s.activation, smarttrim::spec::Activation::QuickGelu);
    assert!(matches!(
        s.embedding,
        smarttrim::spec::EmbeddingConfig::Vit {
            patch_bias: false,
            ln: true,
            ..
        }
    ));
}

/// Pruners that keep every row (budget rule, `rho` 1) and every head
/// (`tau_h` 0, `min_heads` = heads), given in a second file as
/// `--pruners` takes it, leave the pass equal to the dense one.
#[test]
fn keep_everything_pruners_equal_dense() {
    for name in ["blip", "meter", "vit", "clip_vision", "roberta"] {
        let dir = fixture(name);
        let (_, derived) = hf::read_dir_config(&dir).unwrap();
        let mut cfg = derived.with_default_pruners();
        let mut any = false;
        for s in &mut cfg.streams {
            let heads = s.heads;
            for l in &mut s.layers {
                if let Some(tp) = &mut l.token_pruner {
                    tp.rule = KeepRule::Budget { rho: 1.0 };
                    any = true;
                }
                for hp in [&mut l.self_head_pruner, &mut l.cross_head_pruner]
                    .into_iter()
                    .flatten()
                {
                    *hp = HeadPrunerConfig {
                        tau_h: 0.0,
                        min_heads: heads,
                        hidden: hp.hidden,
                    };
                }
            }
        }
        // Two-layer fixtures get pruners at no layer by the default rule;
        // place one at the last layer of every pruned stream.
        if !any {
            for s in cfg.pruned_streams() {
                let sc = &mut cfg.streams[s];
                let last = sc.layers.len() - 1;
                sc.layers[last].token_pruner = Some(smarttrim::spec::TokenPrunerConfig {
                    rule: KeepRule::Budget { rho: 1.0 },
                    keep_first: true,
                    hidden: None,
                });
                sc.layers[last].self_head_pruner = Some(HeadPrunerConfig {
                    tau_h: 0.0,
                    min_heads: sc.heads,
                    hidden: None,
                });
            }
        }
        let pruners = Weights::random(&cfg, 7).unwrap();
        let pbytes = hf::pruner_file_bytes(&pruners).unwrap();
        let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let model = std::fs::read(dir.join("model.safetensors")).unwrap();
        let loaded =
            hf::load_model_from_memory(&json, &model, name, None, Some((&pbytes, "pruners")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            loaded.weights.config, cfg,
            "{name}: the pruner file's config is used"
        );
        let inputs = tensor_io::read_inputs(&cfg, dir.join("inputs.safetensors")).unwrap();
        let (pruned, _) =
            forward_traced(&loaded.weights, &inputs, &ForwardOptions { dense: false }).unwrap();
        let (dense, _) =
            forward_traced(&loaded.weights, &inputs, &ForwardOptions { dense: true }).unwrap();
        let ran = pruned
            .streams
            .iter()
            .flat_map(|s| &s.layers)
            .filter(|l| l.keep.is_some())
            .count();
        assert!(ran > 0, "{name}: no token pruner ran");
        for (p, d) in pruned.streams.iter().zip(&dense.streams) {
            assert_eq!(p.packed, d.packed, "{name}: stream `{}`", p.name);
            assert_eq!(p.pooler, d.pooler, "{name}: stream `{}` pooler", p.name);
        }
        assert_eq!(pruned.logits, dense.logits, "{name}: logits");
        assert!(pruned
            .flops
            .iter()
            .zip(&dense.flops)
            .all(|(p, d)| p.pruned.model > d.pruned.model));
    }
}

/// Reads a safetensors file into (name, dtype, shape, bytes).
type Raw = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn raw(path: &Path) -> Raw {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect()
}

fn serialize(t: &Raw) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Names neither used nor knowingly ignored are an error listing every one;
/// the knowingly ignored ones (`*.position_ids`, `text_decoder.*`,
/// `vision_proj`, `text_proj`) load.
#[test]
fn unknown_names_are_listed_and_ignored_names_pass() {
    let dir = fixture("blip");
    let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut t = raw(&dir.join("model.safetensors"));
    let f16_one = half::f16::from_f32(1.0).to_le_bytes().to_vec();
    for n in [
        "text_decoder.bert.embeddings.word_embeddings.weight",
        "text_decoder.cls.predictions.decoder.weight",
        "text_encoder.embeddings.position_ids",
    ] {
        t.push((n.into(), safetensors::Dtype::F16, vec![1], f16_one.clone()));
    }
    assert!(t.iter().any(|x| x.0 == "vision_proj.weight"));
    let ok = serialize(&t);
    hf::load_model_from_memory(&json, &ok, "blip+ignored", None, None).unwrap();
    for n in [
        "text_encoder.encoder.layer.0.attention.bogus.weight",
        "mystery",
    ] {
        t.push((n.into(), safetensors::Dtype::F16, vec![1], f16_one.clone()));
    }
    // And a missing one.
    t.retain(|x| x.0 != "vision_model.post_layernorm.bias");
    let bad = serialize(&t);
    match hf::load_model_from_memory(&json, &bad, "blip+bogus", None, None) {
        Err(Error::Weights(errs)) => {
            let all = errs.join("\n");
            assert!(all.contains("attention.bogus.weight"), "{all}");
            assert!(all.contains("`mystery`"), "{all}");
            assert!(
                all.contains("missing tensor `image.final_ln.bias`"),
                "{all}"
            );
            assert!(!all.contains("text_decoder"), "{all}");
        }
        other => panic!("expected Error::Weights, got {other:?}"),
    }
}

/// A config that is not the directory's backbone is refused, naming it.
#[test]
fn a_foreign_config_is_refused() {
    let dir = fixture("vit");
    let mut c = hf::read_dir_config(&dir).unwrap().1;
    c.streams[0].heads = 4;
    match hf::load_model_dir(&dir, Some(&c), None) {
        Err(Error::Config(m)) => assert!(m.contains("info --model"), "{m}"),
        other => panic!("expected Error::Config, got {other:?}"),
    }
}
