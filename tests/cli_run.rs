//! `smarttrim init-weights` and `smarttrim run` end to end, through the
//! built binary: round trips for every model kind, `--dense` against pruners
//! that keep everything, and bad inputs (one message naming each problem, a
//! non-zero exit, no output file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::{Dtype, SafeTensors};
use smarttrim::reference::{forward, synthetic_inputs, ForwardOptions, Inputs};
use smarttrim::spec::{preset, KeepRule, ModelConfig, Weights};
use smarttrim::tensor_io::{input_tensors, tensors_to_bytes, OutputTensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smarttrim"))
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Runs the binary; returns (success, stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = bin().args(args).output().expect("run smarttrim");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, c: &ModelConfig) -> PathBuf {
    let p = dir.join("config.json");
    std::fs::write(&p, c.to_json().unwrap()).unwrap();
    p
}

fn write_inputs(path: &Path, tensors: &[OutputTensor]) {
    std::fs::write(path, tensors_to_bytes(tensors).unwrap()).unwrap();
}

/// All tensors of a safetensors file as (dtype, shape, bytes).
fn read_all(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                (v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// init-weights, run on the CPU, read OUT back; compare with the library.
fn round_trip(preset_name: &str, batch: usize) {
    let dir = tmpdir();
    let c = preset(preset_name).unwrap();
    let cfg = write_config(dir.path(), &c);
    let w = dir.path().join("w.safetensors");
    let (ok, err) = run(&[
        "init-weights",
        "--config",
        cfg.to_str().unwrap(),
        "--seed",
        "5",
        "--out",
        w.to_str().unwrap(),
    ]);
    assert!(ok, "init-weights {preset_name}: {err}");
    let inputs: Inputs = synthetic_inputs(&c, batch, 9, true);
    let inp = dir.path().join("in.safetensors");
    write_inputs(&inp, &input_tensors(&c, &inputs));
    let out = dir.path().join("out.safetensors");
    let (ok, err) = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "run {preset_name}: {err}");

    let want = forward(
        &Weights::random(&c, 5).unwrap(),
        &inputs,
        &ForwardOptions::default(),
    )
    .unwrap();
    let got = read_all(&out);
    for s in &want.streams {
        let n = &s.name;
        let (dt, shape, rows) = &got[&format!("{n}.rows")];
        assert_eq!(*dt, Dtype::F32);
        assert_eq!(shape, &vec![s.packed.rows.len() / s.packed.d, s.packed.d]);
        assert_eq!(f32s(rows), s.packed.rows, "{preset_name} {n}.rows");
        assert_eq!(
            i32s(&got[&format!("{n}.cu_seqlens")].2),
            s.packed.cu_seqlens
        );
        assert_eq!(
            i32s(&got[&format!("{n}.orig_index")].2),
            s.packed.orig_index
        );
        assert_eq!(f32s(&got[&format!("{n}.pooled_mean")].2), s.pooled_mean);
        match &s.pooler {
            Some(p) => assert_eq!(&f32s(&got[&format!("{n}.pooler")].2), p, "{n}.pooler"),
            None => assert!(!got.contains_key(&format!("{n}.pooler"))),
        }
        for (l, r) in s.layers.iter().enumerate() {
            let p = format!("{n}.layers.{l}");
            assert_eq!(i32s(&got[&format!("{p}.kept")].2), r.kept, "{p}.kept");
            match &r.scores {
                Some(sc) => assert_eq!(&f32s(&got[&format!("{p}.token_scores")].2), sc),
                None => assert!(!got.contains_key(&format!("{p}.token_scores"))),
            }
            if let Some(k) = &r.keep {
                let flags: Vec<bool> = got[&format!("{p}.keep")]
                    .2
                    .iter()
                    .map(|&b| b == 1)
                    .collect();
                assert_eq!(&flags, k, "{p}.keep");
            }
            if let Some(h) = &r.self_heads {
                assert_eq!(&got[&format!("{p}.self_head_mask")].2, &h.mask);
                assert_eq!(&f32s(&got[&format!("{p}.self_head_logits")].2), &h.logits);
            }
        }
    }
    match &want.logits {
        Some(l) => {
            let (dt, shape, b) = &got["logits"];
            assert_eq!(*dt, Dtype::F32);
            assert_eq!(shape, &vec![batch, c.head.as_ref().unwrap().outputs()]);
            assert_eq!(&f32s(b), l, "{preset_name} logits");
        }
        None => assert!(!got.contains_key("logits")),
    }
    let (dt, shape, fl) = &got["flops.pruned_model"];
    assert_eq!((*dt, shape.clone()), (Dtype::U64, vec![batch]));
    let model: Vec<u64> = fl
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want_model: Vec<u64> = want.flops.iter().map(|f| f.pruned.model).collect();
    assert_eq!(model, want_model);
    for k in [
        "flops.pruned_executed",
        "flops.dense_model",
        "flops.dense_executed",
    ] {
        assert!(got.contains_key(k), "{k} missing");
    }
}

#[test]
fn round_trip_bert_encoder() {
    round_trip("tiny-bert", 3);
}

#[test]
fn round_trip_vit_encoder() {
    round_trip("tiny-vit", 2);
}

#[test]
fn round_trip_meter_co_attention() {
    round_trip("tiny-meter", 3);
}

#[test]
fn round_trip_blip_cross_encoder() {
    round_trip("tiny-blip", 2);
}

#[test]
fn round_trip_whole_blip() {
    round_trip("tiny-blip-full", 2);
}

#[test]
fn round_trip_whole_meter() {
    round_trip("tiny-meter-full", 3);
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// `info --model DIR` prints the derived config; `init-weights --model DIR`
/// writes seeded pruners for it; `run --model DIR [--pruners P]` runs the
/// checkpoint as it is and equals the library's pass.
#[test]
fn run_a_huggingface_directory_as_it_is() {
    let dir = tmpdir();
    let blip = fixture("blip");
    let out = bin()
        .args(["info", "--model", blip.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let derived = ModelConfig::from_json(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(derived.kind, smarttrim::spec::ModelKind::Blip);
    assert!(String::from_utf8_lossy(&out.stderr).contains("HuggingFace Blip"));
    let p = dir.path().join("p.safetensors");
    let (ok, err) = run(&[
        "init-weights",
        "--model",
        blip.to_str().unwrap(),
        "--seed",
        "3",
        "--out",
        p.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let input = blip.join("inputs.safetensors");
    for pruners in [None, Some(&p)] {
        let o = dir.path().join("o.safetensors");
        let mut args = vec![
            "run",
            "--model",
            blip.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            o.to_str().unwrap(),
        ];
        if let Some(p) = pruners {
            args.extend(["--pruners", p.to_str().unwrap()]);
        }
        let (ok, err) = run(&args);
        assert!(ok, "{err}");
        let loaded =
            smarttrim::spec::hf::load_model_dir(&blip, None, pruners.map(|p| p.as_path())).unwrap();
        assert_eq!(
            loaded.weights.config.streams[0]
                .layers
                .iter()
                .any(|l| l.self_head_pruner.is_some()),
            pruners.is_some()
        );
        let inputs = smarttrim::tensor_io::read_inputs(&loaded.weights.config, &input).unwrap();
        let want = forward(&loaded.weights, &inputs, &ForwardOptions::default()).unwrap();
        let got = read_all(&o);
        assert_eq!(f32s(&got["text.rows"].2), want.streams[1].packed.rows);
        assert_eq!(&f32s(&got["logits"].2), want.logits.as_ref().unwrap());
    }
    // A smarttrim directory (the converted METER checkpoint) runs the same way.
    let meter = fixture("meter");
    let o = dir.path().join("m.safetensors");
    let (ok, err) = run(&[
        "run",
        "--model",
        meter.to_str().unwrap(),
        "--input",
        meter.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        o.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(read_all(&o)["logits"].1, vec![2, 10]);
    // Mistakes: --weights with --model, a missing directory.
    let (ok, err) = run(&[
        "run",
        "--model",
        blip.to_str().unwrap(),
        "--weights",
        p.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        o.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--model DIR holds the weights"),
        "{err}"
    );
    let (ok, err) = run(&["info", "--model", "/nonexistent/dir"]);
    assert!(!ok && err.contains("config.json"), "{err}");
}

#[test]
fn dense_flag_equals_pruners_that_keep_everything() {
    let dir = tmpdir();
    let c = preset("tiny-meter").unwrap();
    // The same model with every pruner keeping everything: token budget 1.0
    // and head threshold 0 (sigmoid > 0 always).
    let mut keep_all = c.clone();
    for s in &mut keep_all.streams {
        for l in &mut s.layers {
            if let Some(tp) = &mut l.token_pruner {
                tp.rule = KeepRule::Budget { rho: 1.0 };
            }
            for hp in [&mut l.self_head_pruner, &mut l.cross_head_pruner]
                .into_iter()
                .flatten()
            {
                hp.tau_h = 0.0;
            }
        }
    }
    let cfg = write_config(dir.path(), &c);
    let cfg_all = dir.path().join("keep_all.json");
    std::fs::write(&cfg_all, keep_all.to_json().unwrap()).unwrap();
    let w = dir.path().join("w.safetensors");
    assert!(
        run(&[
            "init-weights",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            w.to_str().unwrap()
        ])
        .0
    );
    let inp = dir.path().join("in.safetensors");
    write_inputs(&inp, &input_tensors(&c, &synthetic_inputs(&c, 2, 1, true)));
    let dense = dir.path().join("dense.safetensors");
    let all = dir.path().join("all.safetensors");
    let base = |cfg: &Path, out: &Path| {
        vec![
            "run".to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "--weights".into(),
            w.display().to_string(),
            "--input".into(),
            inp.display().to_string(),
            "--output".into(),
            out.display().to_string(),
        ]
    };
    let mut a = base(&cfg, &dense);
    a.push("--dense".into());
    let (ok, err) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let b = base(&cfg_all, &all);
    let (ok, err) = run(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let (d, k) = (read_all(&dense), read_all(&all));
    for s in &c.streams {
        for t in [
            "rows",
            "cu_seqlens",
            "orig_index",
            "pooled_first",
            "pooled_mean",
        ] {
            let name = format!("{}.{t}", s.name);
            assert_eq!(d[&name], k[&name], "{name} differs");
        }
    }
    // The dense run ran no pruner: no scores or masks; the keep-all run did.
    assert!(!d.keys().any(|n| n.ends_with(".token_scores")));
    assert!(k.keys().any(|n| n.ends_with(".token_scores")));
    assert_eq!(d["flops.pruned_model"], d["flops.dense_model"]);
}

/// (what, config, weights, input tensors, substrings the error must hold).
type BadCase<'a> = (&'a str, &'a Path, &'a Path, Vec<OutputTensor>, Vec<&'a str>);

/// Each bad input: the message names the problem, exit is non-zero, and no
/// output file is left.
#[test]
fn bad_inputs_are_reported_and_leave_no_file() {
    let dir = tmpdir();
    let bert = preset("tiny-bert").unwrap();
    let meter = preset("tiny-meter").unwrap();
    let bert_cfg = dir.path().join("bert.json");
    std::fs::write(&bert_cfg, bert.to_json().unwrap()).unwrap();
    let meter_cfg = dir.path().join("meter.json");
    std::fs::write(&meter_cfg, meter.to_json().unwrap()).unwrap();
    let bert_w = dir.path().join("bert.safetensors");
    let meter_w = dir.path().join("meter.safetensors");
    assert!(
        run(&[
            "init-weights",
            "--config",
            bert_cfg.to_str().unwrap(),
            "--out",
            bert_w.to_str().unwrap()
        ])
        .0
    );
    assert!(
        run(&[
            "init-weights",
            "--config",
            meter_cfg.to_str().unwrap(),
            "--out",
            meter_w.to_str().unwrap()
        ])
        .0
    );

    let good_meter = input_tensors(&meter, &synthetic_inputs(&meter, 2, 3, false));
    let good_bert = input_tensors(&bert, &synthetic_inputs(&bert, 2, 3, false));
    let vocab = match bert.streams[0].embedding {
        smarttrim::spec::EmbeddingConfig::Bert { vocab_size, .. } => vocab_size,
        _ => unreachable!("tiny-bert is a BERT stream"),
    };
    let i32t = |name: &str, v: &[i32]| -> OutputTensor {
        (
            name.to_string(),
            Dtype::I32,
            vec![v.len()],
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    };
    let edit = |base: &[OutputTensor], f: &dyn Fn(&mut Vec<OutputTensor>)| {
        let mut t = base.to_vec();
        f(&mut t);
        t
    };
    // A copy of `base` with tensor `name` changed by `f`.
    let with = |base: &[OutputTensor], name: &str, f: &dyn Fn(&mut OutputTensor)| {
        let mut t = base.to_vec();
        let x = t.iter_mut().find(|x| x.0 == name).expect("tensor present");
        f(x);
        t
    };
    let text_rows = meter.streams[0].hidden;
    let cases: Vec<BadCase<'_>> = vec![
        (
            "missing tensor",
            &meter_cfg,
            &meter_w,
            edit(&good_meter, &|t| t.retain(|x| x.0 != "image.rows")),
            vec!["missing tensor `image.rows`"],
        ),
        (
            "misnamed tensor",
            &meter_cfg,
            &meter_w,
            with(&good_meter, "text.cu_seqlens", &|x| {
                x.0 = "text.cu_seqlen".into();
            }),
            vec![
                "missing tensor `text.cu_seqlens`",
                "unexpected tensor `text.cu_seqlen`",
            ],
        ),
        (
            "wrong width",
            &meter_cfg,
            &meter_w,
            with(&good_meter, "text.rows", &|x| {
                // Same bytes, but twice as wide as the stream.
                x.2 = vec![x.2[0] / 2, 2 * text_rows];
            }),
            vec!["`text.rows` has", "columns"],
        ),
        (
            "wrong dtype",
            &meter_cfg,
            &meter_w,
            with(&good_meter, "image.rows", &|x| {
                x.1 = Dtype::I32;
            }),
            vec!["`image.rows` has dtype I32"],
        ),
        (
            "cu_seqlens decreasing",
            &meter_cfg,
            &meter_w,
            with(&good_meter, "text.cu_seqlens", &|x| {
                *x = i32t("text.cu_seqlens", &[0, 60, 40]);
            }),
            vec!["cu_seqlens"],
        ),
        (
            "cu_seqlens not matching rows",
            &meter_cfg,
            &meter_w,
            with(&good_meter, "image.cu_seqlens", &|x| {
                *x = i32t("image.cu_seqlens", &[0, 10, 20]);
            }),
            vec!["`image.cu_seqlens` ends at 20"],
        ),
        (
            "token id past the vocabulary",
            &bert_cfg,
            &bert_w,
            with(&good_bert, "text.input_ids", &|x| {
                let n = x.2[0];
                let mut ids = vec![1i32; n];
                ids[3] = vocab as i32 + 7;
                *x = i32t("text.input_ids", &ids);
            }),
            vec!["outside the vocabulary"],
        ),
    ];
    for (what, cfg, w, tensors, needles) in cases {
        let inp = dir.path().join("bad_in.safetensors");
        write_inputs(&inp, &tensors);
        let out = dir.path().join("bad_out.safetensors");
        let (ok, err) = run(&[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--input",
            inp.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(!ok, "{what}: run succeeded");
        for n in needles {
            assert!(err.contains(n), "{what}: stderr lacks `{n}`:\n{err}");
        }
        assert!(!out.exists(), "{what}: an output file was left behind");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{what}: temporary files left: {leftovers:?}"
        );
    }
}

#[test]
fn bad_cli_input_gives_one_line_and_nonzero_exit() {
    let (ok, err) = run(&["demo", "--preset", "no-such-model"]);
    assert!(!ok);
    assert!(
        err.contains("no-such-model") && err.contains("meter"),
        "{err}"
    );
    let (ok, err) = run(&["embed", "--model", "/nonexistent/dir", "hello"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/dir"), "{err}");
    let (ok, err) = run(&["embed", "--model", "/nonexistent/dir", ""]);
    assert!(!ok);
    assert!(err.contains("empty"), "{err}");
    let (ok, err) = run(&["demo", "--batch", "0"]);
    assert!(!ok);
    assert!(err.contains("--batch"), "{err}");
    for (args, what) in [
        (&["demo", "--preset", "no-such-model"][..], "unknown preset"),
        (
            &["embed", "--model", "/nonexistent/dir", "hello"][..],
            "missing model dir",
        ),
    ] {
        let (_, err) = run(args);
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: expected a one-line error, got:\n{err}"
        );
    }
}

#[test]
fn demo_runs_and_json_is_machine_readable() {
    let out = bin()
        .args([
            "demo",
            "--preset",
            "tiny-meter",
            "--batch",
            "2",
            "--json",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        preset("tiny-meter").unwrap().streams[0].layers.len()
    );
    assert!(v["model_flops_ratio"].as_f64().unwrap() <= 1.0);
    assert_eq!(v["batch"], 2);
    let out = bin()
        .args(["demo", "--preset", "tiny-meter"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CPU reference"), "{text}");
    assert!(text.contains("model FLOPs"), "{text}");
}

#[test]
fn output_piped_into_a_closed_reader_is_not_a_crash() {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = bin()
        .args(["demo", "--preset", "tiny-meter", "--batch", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then hang up, as `smarttrim demo | head -c 1` would.
    let mut out = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    out.read_exact(&mut one).unwrap();
    drop(out);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "exit {status:?}: {err}");
}

/// `run --device cuda`: on a machine without a usable GPU a clear error, a
/// non-zero exit and no output file; with one, the same tensors as the CPU
/// run with the same first-layer bookkeeping and the pruning within the
/// f16 tolerance (`--device auto` falls back to the CPU and says so).
#[test]
fn run_on_the_gpu_or_a_clear_error() {
    let dir = tmpdir();
    let c = smarttrim::model::gpu_variant(&preset("tiny-meter").unwrap());
    let cfg = write_config(dir.path(), &c);
    let w = dir.path().join("w.safetensors");
    Weights::random(&c, 5).unwrap().save(&w).unwrap();
    let inp = dir.path().join("in.safetensors");
    write_inputs(&inp, &input_tensors(&c, &synthetic_inputs(&c, 3, 9, true)));
    let out_of = |device: &str| dir.path().join(format!("out-{device}.safetensors"));
    let go = |device: &str| {
        run(&[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--input",
            inp.to_str().unwrap(),
            "--output",
            out_of(device).to_str().unwrap(),
            "--device",
            device,
        ])
    };
    let (ok, err) = go("cpu");
    assert!(ok, "{err}");
    let (ok, err) = go("cuda");
    if !ok {
        assert!(err.contains("--device cuda"), "{err}");
        assert!(!out_of("cuda").exists(), "no output on failure");
        assert!(
            std::env::var("SMARTTRIM_REQUIRE_GPU").map_or(true, |v| v != "1"),
            "SMARTTRIM_REQUIRE_GPU=1 but: {err}"
        );
        let (ok, err) = go("auto");
        assert!(ok && err.contains("CPU reference"), "{err}");
        return;
    }
    assert!(err.contains("host wait"), "{err}");
    let (cpu, gpu) = (read_all(&out_of("cpu")), read_all(&out_of("cuda")));
    let mut names: Vec<_> = cpu.keys().collect();
    names.sort();
    let mut gnames: Vec<_> = gpu.keys().collect();
    gnames.sort();
    assert_eq!(names, gnames, "the same tensors");
    for n in [
        "text.layers.0.rows_in",
        "text.layers.0.orig_index_in",
        "image.layers.0.orig_index_in",
    ] {
        assert_eq!(cpu[n].2, gpu[n].2, "{n}");
    }
}
