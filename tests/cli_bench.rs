//! `smarttrim bench` end to end, through the built binary, on the CPU
//! reference and the tiny workloads: the table, every JSON field with sane
//! values, `--torch` merging, `--device cuda` without a GPU, bad arguments.
//!
//! Tolerance of the budget schedules' FLOPs ratio: the tiny workloads have
//! 12 to 17 rows per stream, so the reachable ratios are steps about 0.01
//! apart; a reachable target must be met within 0.02 (the full-size
//! workloads meet theirs within 0.005: `workloads` unit tests). An
//! unreachable target (budget-35 on the tiny models, whose first layer runs
//! unpruned and whose pruners are wide for their size) must say so and run
//! the closest reachable ratio, which is above the target.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const TOL: f64 = 0.02;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smarttrim"));
    c.env_remove("SMARTTRIM_COMMIT");
    c
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd.output().expect("run smarttrim");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A quick CPU run on the tiny workloads.
fn cpu_bench(extra: &[&str], json: &Path) -> (bool, String, String) {
    let mut c = bin();
    c.args([
        "bench",
        "--device",
        "cpu",
        "--workload",
        "tiny-meter",
        "--workload",
        "tiny-vit",
        "--batch",
        "1,2",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--json",
        json.to_str().unwrap(),
    ])
    .args(extra);
    run(&mut c)
}

fn rows(json: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(json).expect("JSON written");
    match serde_json::from_str::<Value>(&text).expect("valid JSON") {
        Value::Array(v) => v,
        other => panic!("not a list: {other}"),
    }
}

fn f(r: &Value, k: &str) -> f64 {
    r[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {r}"))
}

const FIELDS: &[&str] = &[
    "workload",
    "batch",
    "schedule",
    "device",
    "commit",
    "status",
    "note",
    "graph",
    "sync_policy",
    "warmup",
    "iters",
    "seed",
    "flops_ratio",
    "target_flops_ratio",
    "target_reachable",
    "rho",
    "predicted_flops_ratio",
    "dense_ms",
    "dense_p10_ms",
    "dense_p90_ms",
    "pruned_ms",
    "pruned_p10_ms",
    "pruned_p90_ms",
    "speedup",
    "efficiency",
    "syncs_per_forward",
    "dense_syncs_per_forward",
    "torch_dense_ms",
    "torch_compile_dense_ms",
    "torch_version",
    "torch_device",
    "torch_baseline_mode",
    "dense_vs_torch",
    "pruned_vs_torch",
];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn cpu_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let (ok, out, err) = cpu_bench(&["--graph", "both"], &json);
    assert!(ok, "bench failed: {err}");
    // Before the work, on the CPU: an estimate of the whole run (2 workloads x
    // 2 batches x 6 measurements x (1 + 3) passes; the graph rows run none).
    let estimate = err
        .lines()
        .find(|l| l.starts_with("bench: estimated total on the CPU reference: about"))
        .unwrap_or_else(|| panic!("no estimate on stderr:\n{err}"));
    assert!(estimate.contains("for 96 forward passes"), "{estimate}");
    assert!(
        err.find("estimated total") < err.find("(dense pass):"),
        "the estimate comes first:\n{err}"
    );
    // The table: a header, one line per row, notes for the unreachable targets.
    assert!(out.contains("device cpu"), "{out}");
    let header = out
        .lines()
        .find(|l| l.starts_with("workload"))
        .expect("table header");
    for col in [
        "batch",
        "schedule",
        "graph",
        "syncs/fwd",
        "FLOPs ratio",
        "dense ms",
        "pruned ms",
        "speedup",
        "efficiency",
    ] {
        assert!(header.contains(col), "{col} missing from {header}");
    }
    assert!(!header.contains("torch"), "{header}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("tiny-meter") || l.starts_with("tiny-vit"))
        .collect();
    // 2 workloads x 2 batches x 5 schedules x 2 graph modes.
    assert_eq!(lines.len(), 40, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("budget-50") && l.contains(" off ")),
        "{out}"
    );
    assert!(
        lines.iter().filter(|l| l.contains("unsupported: ")).count() == 20,
        "graph rows are unsupported on the CPU: {out}"
    );
    assert!(out.contains("note: tiny-meter budget-35"), "{out}");

    let rows = rows(&json);
    assert_eq!(rows.len(), 40);
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        for k in FIELDS {
            assert!(r.get(*k).is_some(), "field {k} missing from {r}");
        }
        let (w, b, s, g) = (
            r["workload"].as_str().unwrap(),
            r["batch"].as_u64().unwrap(),
            r["schedule"].as_str().unwrap(),
            r["graph"].as_bool().unwrap(),
        );
        assert!(seen.insert((w.to_string(), b, s.to_string(), g)), "dup {r}");
        assert_eq!(r["device"], "cpu");
        assert_eq!(r["sync_policy"], "none");
        assert_eq!(r["iters"], 3);
        assert_eq!(r["warmup"], 1);
        let commit = r["commit"].as_str().unwrap();
        assert!(!commit.is_empty(), "{r}");
        for k in [
            "torch_dense_ms",
            "torch_compile_dense_ms",
            "dense_vs_torch",
            "pruned_vs_torch",
        ] {
            assert!(r[k].is_null(), "{k} without --torch: {r}");
        }
        if g {
            assert_eq!(r["status"], "unsupported", "{r}");
            assert!(r["note"].as_str().unwrap().contains("GPU"), "{r}");
            assert!(r["pruned_ms"].is_null() && r["speedup"].is_null(), "{r}");
            continue;
        }
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["syncs_per_forward"], 0);
        assert_eq!(r["dense_syncs_per_forward"], 0);
        let (dense, pruned) = (f(r, "dense_ms"), f(r, "pruned_ms"));
        assert!(dense > 0.0 && pruned > 0.0, "{r}");
        assert!(f(r, "dense_p10_ms") <= dense && dense <= f(r, "dense_p90_ms"));
        assert!(f(r, "pruned_p10_ms") <= pruned && pruned <= f(r, "pruned_p90_ms"));
        let speedup = f(r, "speedup");
        assert!(close(speedup, dense / pruned), "{r}");
        let ratio = f(r, "flops_ratio");
        assert!(ratio > 0.0 && ratio <= 1.0 + 1e-12, "{r}");
        assert!(close(f(r, "efficiency"), speedup * ratio), "{r}");
        match s {
            "dense" => {
                assert_eq!(ratio, 1.0);
                assert!(r["rho"].is_null() && r["target_flops_ratio"].is_null());
            }
            "threshold" => {
                assert!(ratio < 1.0, "{r}");
                assert!(r["predicted_flops_ratio"].is_null(), "{r}");
            }
            _ => {
                let target = f(r, "target_flops_ratio");
                assert_eq!(
                    target,
                    s.strip_prefix("budget-").unwrap().parse::<f64>().unwrap() / 100.0
                );
                let rho = f(r, "rho");
                assert!(rho > 0.0 && rho <= 1.0, "{r}");
                // The host's prediction is what the reference measured.
                assert_eq!(f(r, "predicted_flops_ratio"), ratio, "{r}");
                if r["target_reachable"].as_bool().unwrap() {
                    assert!((ratio - target).abs() <= TOL, "{r}");
                } else {
                    assert_eq!(s, "budget-35", "{r}");
                    assert!(ratio > target, "{r}");
                }
            }
        }
    }
    assert!(rows
        .iter()
        .any(|r| r["schedule"] == "budget-35" && r["target_reachable"] == false));
}

#[test]
fn torch_baseline_is_merged() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let torch = dir.path().join("torch.json");
    std::fs::write(
        &torch,
        r#"[
  {"workload": "tiny-meter", "batch": 1, "mode": "eager", "dense_ms": 5.0, "device": "NVIDIA H200", "torch_version": "2.9.0"},
  {"workload": "tiny-meter", "batch": 1, "mode": "compile", "dense_ms": null, "device": "NVIDIA H200", "torch_version": "2.9.0"},
  {"workload": "tiny-vit", "batch": 2, "mode": "eager", "dense_ms": 4.0, "device": "NVIDIA H200", "torch_version": "2.9.0"},
  {"workload": "tiny-vit", "batch": 2, "mode": "compile", "dense_ms": 2.5, "device": "NVIDIA H200", "torch_version": "2.9.0"},
  {"workload": "meter-vqa", "batch": 32, "mode": "eager", "dense_ms": 30.0}
]"#,
    )
    .unwrap();
    let mut c = bin();
    c.env("SMARTTRIM_COMMIT", "abc1234");
    c.args([
        "bench",
        "--device",
        "cpu",
        "--workload",
        "tiny-meter,tiny-vit",
        "--batch",
        "1,2",
        "--schedule",
        "dense,budget-50",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--torch",
        torch.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let (ok, out, err) = run(&mut c);
    assert!(ok, "bench failed: {err}");
    let header = out.lines().find(|l| l.starts_with("workload")).unwrap();
    for col in [
        "torch eager ms",
        "torch compile ms",
        "dense vs torch",
        "pruned vs torch",
    ] {
        assert!(header.contains(col), "{col} missing from {header}");
    }
    let rows = rows(&json);
    assert_eq!(rows.len(), 2 * 2 * 2);
    for r in &rows {
        assert_eq!(r["commit"], "abc1234");
        let (w, b) = (
            r["workload"].as_str().unwrap(),
            r["batch"].as_u64().unwrap(),
        );
        let dense = f(r, "dense_ms");
        let pruned = f(r, "pruned_ms");
        match (w, b) {
            ("tiny-meter", 1) => {
                assert_eq!(f(r, "torch_dense_ms"), 5.0);
                assert!(r["torch_compile_dense_ms"].is_null());
                assert_eq!(r["torch_baseline_mode"], "eager");
                assert_eq!(r["torch_version"], "2.9.0");
                assert_eq!(r["torch_device"], "NVIDIA H200");
                assert!(close(f(r, "dense_vs_torch"), 5.0 / dense), "{r}");
                assert!(close(f(r, "pruned_vs_torch"), 5.0 / pruned), "{r}");
            }
            ("tiny-vit", 2) => {
                assert_eq!(f(r, "torch_dense_ms"), 4.0);
                assert_eq!(f(r, "torch_compile_dense_ms"), 2.5);
                // The faster torch mode is the baseline.
                assert_eq!(r["torch_baseline_mode"], "compile");
                assert!(close(f(r, "dense_vs_torch"), 2.5 / dense), "{r}");
                assert!(close(f(r, "pruned_vs_torch"), 2.5 / pruned), "{r}");
            }
            _ => {
                for k in [
                    "torch_dense_ms",
                    "torch_compile_dense_ms",
                    "torch_baseline_mode",
                    "dense_vs_torch",
                    "pruned_vs_torch",
                ] {
                    assert!(r[k].is_null(), "{k}: {r}");
                }
            }
        }
    }
    // A torch row without a match prints "-" in the torch columns.
    let unmatched = out
        .lines()
        .find(|l| l.starts_with("tiny-meter") && l.contains("  2  "))
        .expect("tiny-meter batch 2 row");
    assert!(unmatched.trim_end().ends_with('-'), "{unmatched}");
}

#[test]
fn bad_torch_files_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    for (name, text, want) in [
        ("missing.json", None, "reading the PyTorch baseline"),
        ("notalist.json", Some(r#"{"a": 1}"#), "expected a JSON list"),
        (
            "badmode.json",
            Some(r#"[{"workload": "tiny-vit", "batch": 1, "mode": "jit", "dense_ms": 1.0}]"#),
            "mode `jit`",
        ),
        (
            "negative.json",
            Some(r#"[{"workload": "tiny-vit", "batch": 1, "mode": "eager", "dense_ms": -1.0}]"#),
            "not a positive time",
        ),
    ] {
        let p = dir.path().join(name);
        if let Some(t) = text {
            std::fs::write(&p, t).unwrap();
        }
        let (ok, _, err) = cpu_bench(&["--torch", p.to_str().unwrap()], &json);
        assert!(!ok, "{name}: accepted");
        assert!(err.contains(want), "{name}: {err}");
        assert!(!json.exists(), "{name}: JSON written");
    }
}

#[test]
fn cuda_without_a_gpu_fails_cleanly() {
    if std::env::var("SMARTTRIM_REQUIRE_GPU").is_ok_and(|v| v == "1" || v == "true") {
        eprintln!("skipped: SMARTTRIM_REQUIRE_GPU=1, this test is for machines without a GPU");
        return;
    }
    let usable =
        smarttrim::kernels::ensure_built().is_ok() && smarttrim::device::Device::open(0).is_ok();
    if usable {
        eprintln!("skipped: a GPU is usable here; this test is for machines without one");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut c = bin();
    c.args([
        "bench",
        "--workload",
        "tiny-vit",
        "--batch",
        "1",
        "--iters",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (ok, out, err) = run(&mut c);
    assert!(!ok, "--device cuda succeeded without a GPU: {out}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("--device cuda"), "{err}");
    assert!(
        err.contains("no CUDA driver")
            || err.contains("no CUDA device")
            || err.contains("kernels were not built"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
    assert!(!json.exists(), "JSON written");
}

#[test]
fn bad_arguments_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    for (args, want) in [
        (&["--workload", "nope"][..], "unknown workload `nope`"),
        (
            &["--schedule", "budget-0"][..],
            "unknown schedule `budget-0`",
        ),
        (&["--iters", "0"][..], "--iters"),
        (&["--batch", "0"][..], "--batch"),
    ] {
        let mut c = bin();
        c.args(["bench", "--device", "cpu", "--json", json.to_str().unwrap()])
            .args(args);
        let (ok, _, err) = run(&mut c);
        assert!(!ok, "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!json.exists());
    }
}

#[test]
fn repeated_names_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut c = bin();
    c.args([
        "bench",
        "--device",
        "cpu",
        "--workload",
        "tiny-vit,tiny-vit",
        "--batch",
        "2,2",
        "--schedule",
        "budget-50,budget-50",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (ok, _, err) = run(&mut c);
    assert!(ok, "{err}");
    assert_eq!(rows(&json).len(), 1);
}
