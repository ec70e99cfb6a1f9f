//! Bad input as a user meets it: a table-driven sweep through the CLI
//! (`run`, `init-weights`, `demo`, `embed`, `bench`, through the debug
//! binary) and the C API (`smarttrim::ffi`, called as C would). Every case
//! asserts the exit status (or C status), that the message names the
//! problem, that nothing panicked, and that nothing is left behind: no
//! output file, no temporary file (the case's folder holds exactly what it
//! held before), no model handle.
//!
//! Cases are small (tiny presets, batches of 2) so the whole sweep takes
//! seconds; `at_least_forty_cases` keeps the table from shrinking.

use std::collections::BTreeSet;
use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

use safetensors::Dtype;
use serde_json::{json, Value};
use smarttrim::ffi::*;
use smarttrim::model::gpu_variant;
use smarttrim::reference::synthetic_inputs;
use smarttrim::spec::{preset, ModelConfig, Weights};
use smarttrim::tensor_io::{input_tensors, tensors_to_bytes, OutputTensor};

/// Exit status of a failed command (anyhow error).
const FAIL: i32 = 1;
/// Exit status of a command line clap refuses.
const USAGE: i32 = 2;

/// One CLI case: arguments, extra environment, the exit status wanted,
/// substrings the message must hold, and substrings it must hold exactly
/// once (a cause printed twice is a defect).
struct Case {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    code: i32,
    needles: Vec<String>,
    once: Vec<String>,
}

fn case(what: &'static str, args: &[&str], needles: &[&str]) -> Case {
    Case {
        what,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        code: FAIL,
        needles: needles.iter().map(|s| s.to_string()).collect(),
        once: Vec::new(),
    }
}

impl Case {
    fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
    fn env(mut self, k: &'static str, v: &str) -> Self {
        self.env.push((k, v.to_string()));
        self
    }
    fn once(mut self, s: &str) -> Self {
        self.once.push(s.to_string());
        self
    }
}

/// Every path under `dir` (recursively), for the nothing-left-behind check.
fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

/// Runs every case in `dir` (the current directory of the command too) and
/// checks it; fails listing every case that failed.
fn run_cases(dir: &Path, cases: Vec<Case>) {
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|c| {
            let what = c.what;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_case(dir, c)))
                .err()
                .map(|_| what.to_string())
        })
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}

/// Runs one case and checks it (panics on a failed check).
fn check_case(dir: &Path, c: Case) {
    {
        let before = listing(dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smarttrim"));
        cmd.args(&c.args).current_dir(dir);
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run smarttrim");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let what = c.what;
        assert_eq!(
            out.status.code(),
            Some(c.code),
            "{what}: exit status {:?}, expected {}; stderr:\n{err}",
            out.status,
            c.code
        );
        for n in &c.needles {
            assert!(
                err.contains(n.as_str()),
                "{what}: stderr lacks `{n}`:\n{err}"
            );
        }
        for n in &c.once {
            assert_eq!(
                err.matches(n.as_str()).count(),
                1,
                "{what}: `{n}` is not printed exactly once:\n{err}"
            );
        }
        assert!(!err.contains("panicked"), "{what}: a panic:\n{err}");
        assert!(
            out.stdout.is_empty() || c.what.starts_with("stdout:"),
            "{what}: printed to stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let after = listing(dir);
        let left: Vec<_> = after.difference(&before).collect();
        assert!(left.is_empty(), "{what}: files left behind: {left:?}");
    }
}

/// A folder of inputs for the cases: configs, weights, input files.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Writes `bytes` to `name` in the fixture; returns its path.
    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let p = self.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }
    /// A config file from a JSON value.
    fn json(&self, name: &str, v: &Value) -> String {
        self.file(name, serde_json::to_string_pretty(v).unwrap())
    }
    /// `name` in the fixture, not created.
    fn out(&self, name: &str) -> String {
        self.path().join(name).to_str().unwrap().to_string()
    }
}

fn config_value(c: &ModelConfig) -> Value {
    serde_json::from_str(&c.to_json().unwrap()).unwrap()
}

/// tiny-bert as JSON, changed by `f`.
fn bert_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = config_value(&preset("tiny-bert").unwrap());
    f(&mut v);
    v
}

fn i32_tensor(name: &str, v: &[i32]) -> OutputTensor {
    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name.to_string(), Dtype::I32, vec![v.len()], b)
}

fn i64_tensor(name: &str, v: &[i64]) -> OutputTensor {
    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name.to_string(), Dtype::I64, vec![v.len()], b)
}

fn u32_tensor(name: &str, v: &[u32]) -> OutputTensor {
    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name.to_string(), Dtype::U32, vec![v.len()], b)
}

fn f32_tensor(name: &str, shape: Vec<usize>, v: &[f32]) -> OutputTensor {
    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name.to_string(), Dtype::F32, shape, b)
}

/// `base` with tensor `name` replaced by `t` (or added).
fn replace(base: &[OutputTensor], t: OutputTensor) -> Vec<OutputTensor> {
    let mut v: Vec<OutputTensor> = base.iter().filter(|x| x.0 != t.0).cloned().collect();
    v.push(t);
    v
}

/// A safetensors image of `tensors` whose header names `dup` a second time
/// (same dtype, shape and bytes): the format's parser keeps one entry and
/// drops the other without a word.
fn with_duplicate(tensors: &[OutputTensor], dup: &str) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    let mut dup_entry = None;
    for (name, dtype, shape, bytes) in tensors {
        let info = json!({
            "dtype": format!("{dtype:?}"),
            "shape": shape,
            "data_offsets": [data.len(), data.len() + bytes.len()],
        });
        if name == dup {
            dup_entry = Some(info.clone());
        }
        entries.push(format!("{}:{}", json!(name), info));
        data.extend_from_slice(bytes);
    }
    entries.push(format!(
        "{}:{}",
        json!(dup),
        dup_entry.expect("the duplicated tensor is present")
    ));
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Weights of `c` as named f32 tensors.
fn weight_tensors(c: &ModelConfig) -> Vec<OutputTensor> {
    Weights::random(c, 1)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(n, s, d)| f32_tensor(&n, s, &d))
        .collect()
}

/// The `run` cases: inputs, configs, weights and output paths.
fn run_table(fx: &Fixture) -> Vec<Case> {
    let bert = preset("tiny-bert").unwrap();
    let cfg = fx.file("bert.json", bert.to_json().unwrap());
    let w_path = fx.out("bert.safetensors");
    Weights::random(&bert, 1).unwrap().save(&w_path).unwrap();
    let good = input_tensors(&bert, &synthetic_inputs(&bert, 2, 3, false));
    let good_in = fx.file("in.safetensors", tensors_to_bytes(&good).unwrap());
    let total = synthetic_inputs(&bert, 2, 3, false).streams[0].clone();
    let total = match total {
        smarttrim::reference::StreamInput::Tokens { ids, .. } => ids.len(),
        _ => unreachable!("tiny-bert takes tokens"),
    };
    let out = fx.out("out.safetensors");
    let inp =
        |name: &str, tensors: &[OutputTensor]| fx.file(name, tensors_to_bytes(tensors).unwrap());
    let w = w_path.clone();
    // `run` over the tiny-bert weights with input file `input`.
    let run_in = |what: &'static str, input: String, needles: &[&str]| {
        case(
            what,
            &[
                "run",
                "--config",
                &cfg,
                "--weights",
                &w,
                "--input",
                &input,
                "--output",
                &out,
            ],
            needles,
        )
    };
    // `run` with config file `config` (weights and input as given).
    let run_cfg = |what: &'static str, config: String, needles: &[&str]| {
        case(
            what,
            &[
                "run",
                "--config",
                &config,
                "--weights",
                &w,
                "--input",
                &good_in,
                "--output",
                &out,
            ],
            needles,
        )
    };

    let big = 4_294_967_296i64 + 4;
    // Five faults in one file of a whole BLIP: one run shows them all.
    let blip = preset("tiny-blip-full").unwrap();
    let blip_cfg = fx.file("blip.json", blip.to_json().unwrap());
    let blip_w = fx.out("blip.safetensors");
    Weights::random(&blip, 1).unwrap().save(&blip_w).unwrap();
    let mut five = input_tensors(&blip, &synthetic_inputs(&blip, 2, 3, false));
    five.retain(|t| t.0 != "text.input_ids" && t.0 != "text.cu_seqlens" && t.0 != "image.pixels");
    let mut ids = vec![1i32; 10 + 70];
    ids[4] = 1000;
    five.push(i32_tensor("text.input_ids", &ids));
    five.push(i32_tensor("text.cu_seqlens", &[0, 10, 80]));
    five.push(i32_tensor("text.token_type_ids", &vec![0; 80]));
    five.push(f32_tensor(
        "image.pixels",
        vec![3, 3, 32, 32],
        &vec![0.5; 3 * 3 * 32 * 32],
    ));
    five.push(i32_tensor("junk", &[1]));
    let five_in = inp("five.safetensors", &five);

    // A RoBERTa-like stream: positions start at 2 of 64.
    let offset_cfg = fx.json(
        "offset.json",
        &bert_with(|v| v["streams"][0]["embedding"]["position_offset"] = json!(2)),
    );
    let long = vec![
        u32_tensor("text.input_ids", &vec![1; 63]),
        i32_tensor("text.cu_seqlens", &[0, 63]),
    ];
    let long_in = inp("long.safetensors", &long);

    vec![
        run_in(
            "cu_seqlens i64 past i32",
            inp(
                "i64.safetensors",
                &replace(
                    &good,
                    i64_tensor("text.cu_seqlens", &[0, big, total as i64]),
                ),
            ),
            &["`text.cu_seqlens` element 1 is 4294967300, outside the i32 range"],
        ),
        run_in(
            "cu_seqlens u32 past i32",
            inp(
                "u32.safetensors",
                &replace(
                    &good,
                    u32_tensor("text.cu_seqlens", &[0, 3_000_000_000, 40]),
                ),
            ),
            &["element 1 is 3000000000, outside the i32 range"],
        ),
        run_in(
            "batch 0",
            inp(
                "batch0.safetensors",
                &[
                    u32_tensor("text.input_ids", &[]),
                    i32_tensor("text.cu_seqlens", &[0]),
                ],
            ),
            &["no sequence (batch 0)"],
        ),
        run_in(
            "cu_seqlens not from 0",
            inp(
                "from1.safetensors",
                &replace(&good, i32_tensor("text.cu_seqlens", &[1, 40, total as i32])),
            ),
            &["`text.cu_seqlens` starts at 1, not 0"],
        ),
        run_in(
            "cu_seqlens ending short",
            inp(
                "short.safetensors",
                &replace(&good, i32_tensor("text.cu_seqlens", &[0, 10, 20])),
            ),
            &["`text.cu_seqlens` ends at 20, but `text.input_ids` holds"],
        ),
        run_in(
            "duplicate tensor name in the input header",
            fx.file(
                "dup_in.safetensors",
                with_duplicate(&good, "text.cu_seqlens"),
            ),
            &["names a tensor more than once (`text.cu_seqlens`)"],
        ),
        case(
            "duplicate tensor name in the weights header",
            &[
                "run",
                "--config",
                &cfg,
                "--weights",
                &fx.file(
                    "dup_w.safetensors",
                    with_duplicate(&weight_tensors(&bert), "text.embeddings.word"),
                ),
                "--input",
                &good_in,
                "--output",
                &out,
            ],
            &["`text.embeddings.word`", "more than once"],
        ),
        case(
            "five faults, one run",
            &[
                "run",
                "--config",
                &blip_cfg,
                "--weights",
                &blip_w,
                "--input",
                &five_in,
                "--output",
                &out,
            ],
            &[
                "5 problem(s)",
                "unexpected tensor `junk`",
                "`text.input_ids` element 4 is 1000, outside the vocabulary",
                "`text.token_type_ids` given, but stream `text` has no token types",
                "sequence 1 has 70 tokens, more than max_positions 64",
                "`text.cu_seqlens` gives a batch of 2 sequences, `image.pixels` 3",
            ],
        ),
        run_in(
            "the hint is not a problem",
            inp(
                "extra.safetensors",
                &replace(&good, i32_tensor("text.extra", &[1])),
            ),
            &[
                "1 problem(s)",
                "unexpected tensor `text.extra` (input tensors are named after",
            ],
        ),
        case(
            "a sequence too long for the positions after the offset",
            &[
                "run",
                "--config",
                &offset_cfg,
                "--weights",
                &w,
                "--input",
                &long_in,
                "--output",
                &out,
            ],
            &["63 tokens, more than the 62 that fit", "position_offset 2"],
        ),
        run_cfg(
            "config typo min_head",
            fx.json(
                "min_head.json",
                &bert_with(|v| {
                    let hp = &mut v["streams"][0]["layers"][1]["self_head_pruner"];
                    hp["min_head"] = json!(2);
                }),
            ),
            &["unknown field `min_head`", "did you mean `min_heads`?"],
        ),
        run_cfg(
            "config typo keep_frist",
            fx.json(
                "keep_frist.json",
                &bert_with(|v| {
                    v["streams"][0]["layers"][1]["token_pruner"]["keep_frist"] = json!(false)
                }),
            ),
            &["unknown field `keep_frist`", "did you mean `keep_first`?"],
        ),
        run_cfg(
            "config typo token_prunner drops no pruner silently",
            fx.json(
                "token_prunner.json",
                &bert_with(|v| {
                    v["streams"][0]["layers"][0]["token_prunner"] =
                        json!({"rule": "threshold", "tau": 0.5})
                }),
            ),
            &[
                "unknown field `token_prunner`",
                "did you mean `token_pruner`?",
            ],
        ),
        run_cfg(
            "unknown top-level key",
            fx.json("top.json", &bert_with(|v| v["seed"] = json!(3))),
            &["unknown field `seed`", "`kind`, `streams`"],
        ),
        run_cfg(
            "unknown embedding field",
            fx.json(
                "max_position.json",
                &bert_with(|v| v["streams"][0]["embedding"]["max_position"] = json!(64)),
            ),
            &[
                "unknown field `max_position`",
                "did you mean `max_positions`?",
            ],
        ),
        run_cfg(
            "unknown field in the model kind",
            fx.json(
                "kind.json",
                &bert_with(|v| v["kind"]["context_hidden"] = json!(48)),
            ),
            &["unknown field `context_hidden`"],
        ),
        run_cfg(
            "a stray rho on a threshold rule",
            fx.json(
                "rho.json",
                &bert_with(|v| v["streams"][0]["layers"][1]["token_pruner"]["rho"] = json!(0.3)),
            ),
            &["a `threshold` rule takes `tau`, not `rho`"],
        ),
        run_cfg(
            "unknown keep rule",
            fx.json(
                "rule.json",
                &bert_with(|v| {
                    v["streams"][0]["layers"][1]["token_pruner"]["rule"] = json!("thresold")
                }),
            ),
            &["unknown variant `thresold`", "did you mean `threshold`?"],
        ),
        run_cfg(
            "position_offset == max_positions",
            fx.json(
                "offset64.json",
                &bert_with(|v| v["streams"][0]["embedding"]["position_offset"] = json!(64)),
            ),
            &["position_offset 64 leaves no position", "max_positions 64"],
        ),
        run_cfg(
            "a zero-layer model",
            fx.json(
                "zero.json",
                &bert_with(|v| v["streams"][0]["layers"] = json!([])),
            ),
            &["stream `text` has no layers"],
        ),
        run_cfg(
            "config not JSON: the cause once",
            fx.file("broken.json", "{ \"kind\": "),
            &["JSON error in", "broken.json", "EOF while parsing"],
        )
        .once("EOF while parsing"),
        case(
            "input file missing: the cause once",
            &[
                "run",
                "--config",
                &cfg,
                "--weights",
                &w,
                "--input",
                &fx.out("nope.safetensors"),
                "--output",
                &out,
            ],
            &["nope.safetensors", "No such file or directory"],
        )
        .once("No such file or directory"),
        case(
            "output folder missing, checked before the work",
            &[
                "run",
                "--config",
                &cfg,
                // Missing too: the output is checked first.
                "--weights",
                &fx.out("missing_weights.safetensors"),
                "--input",
                &good_in,
                "--output",
                &fx.out("no/such/dir/out.safetensors"),
            ],
            &["does not exist", "no/such/dir"],
        ),
        run_in("output is a folder", good_in.clone(), &[]).retarget_output(
            &out,
            fx.path().to_str().unwrap(),
            "is a folder",
        ),
        case(
            "output under a file",
            &[
                "run",
                "--config",
                &cfg,
                "--weights",
                &w,
                "--input",
                &good_in,
                "--output",
                &format!("{cfg}/out.safetensors"),
            ],
            &["is not a folder"],
        ),
        run_in(
            "packed rows for a token stream",
            inp(
                "nan.safetensors",
                &[
                    f32_tensor("text.rows", vec![1, 64], &[f32::NAN; 64]),
                    i32_tensor("text.cu_seqlens", &[0, 1]),
                ],
            ),
            &[
                "missing tensor `text.input_ids`",
                "unexpected tensor `text.rows`",
            ],
        ),
        case(
            "weights of another model",
            &[
                "run",
                "--config",
                &blip_cfg,
                "--weights",
                &w,
                "--input",
                &good_in,
                "--output",
                &out,
            ],
            &["weights do not match the config", "missing tensor `image."],
        ),
        case(
            "preset typo",
            &[
                "run",
                "--preset",
                "tiny-bret",
                "--weights",
                &w,
                "--input",
                &good_in,
                "--output",
                &out,
            ],
            &["unknown preset `tiny-bret`", "did you mean `tiny-bert`?"],
        ),
        case(
            "--model with --weights",
            &[
                "run",
                "--model",
                fx.path().to_str().unwrap(),
                "--weights",
                &w,
                "--input",
                &good_in,
                "--output",
                &out,
            ],
            &["give --weights only with --config or --preset"],
        ),
    ]
}

impl Case {
    /// The same case with its `--output` value replaced, and one more needle.
    fn retarget_output(mut self, from: &str, to: &str, needle: &str) -> Self {
        for a in &mut self.args {
            if a == from {
                *a = to.to_string();
            }
        }
        self.needles.push(needle.to_string());
        self
    }
}

fn init_weights_table(fx: &Fixture) -> Vec<Case> {
    let huge = fx.json(
        "huge.json",
        &bert_with(|v| {
            let s = &mut v["streams"][0];
            s["hidden"] = json!(65536);
            s["ffn"] = json!(65536);
            s["heads"] = json!(1);
        }),
    );
    let cfg = fx.file("bert.json", preset("tiny-bert").unwrap().to_json().unwrap());
    let out = fx.out("w.safetensors");
    vec![
        case(
            "hidden 65536: refused before allocating",
            &["init-weights", "--config", &huge, "--out", &out],
            &["would need at least", "GiB of memory, more than"],
        ),
        case(
            "a stated memory limit",
            &["init-weights", "--preset", "tiny-bert", "--out", &out],
            &["would need at least", "SMARTTRIM_MEMORY_LIMIT=100K"],
        )
        .env("SMARTTRIM_MEMORY_LIMIT", "100K"),
        case(
            "output folder missing",
            &[
                "init-weights",
                "--preset",
                "tiny-bert",
                "--out",
                &fx.out("nowhere/w.safetensors"),
            ],
            &["nowhere", "does not exist"],
        ),
        case(
            "output is a folder",
            &[
                "init-weights",
                "--preset",
                "tiny-bert",
                "--out",
                fx.path().to_str().unwrap(),
            ],
            &["is a folder"],
        ),
        case(
            "config typo",
            &[
                "init-weights",
                "--config",
                &fx.json(
                    "typo.json",
                    &bert_with(|v| v["streams"][0]["pre_lm"] = json!(true)),
                ),
                "--out",
                &out,
            ],
            &["unknown field `pre_lm`", "did you mean `pre_ln`?"],
        ),
        case(
            "--config and --preset",
            &[
                "init-weights",
                "--config",
                &cfg,
                "--preset",
                "tiny-bert",
                "--out",
                &out,
            ],
            &["--preset", "cannot be used with"],
        )
        .code(USAGE),
        case(
            "neither --config nor --preset",
            &["init-weights", "--out", &out],
            &["give exactly one of --config FILE and --preset NAME"],
        ),
    ]
}

fn demo_table(fx: &Fixture) -> Vec<Case> {
    let zero = fx.json(
        "zero.json",
        &bert_with(|v| v["streams"][0]["layers"] = json!([])),
    );
    vec![
        case(
            "--batch 1000000: refused before allocating",
            &[
                "demo", "--preset", "meter", "--batch", "1000000", "--device", "cpu",
            ],
            &["--batch 1000000", "would need at least", "TiB of memory"],
        ),
        case(
            "--instance without --keep-map",
            &["demo", "--preset", "tiny-bert", "--instance", "1"],
            &["--instance", "--keep-map"],
        )
        .code(USAGE),
        case(
            "--instance out of range",
            &[
                "demo",
                "--preset",
                "tiny-bert",
                "--batch",
                "2",
                "--instance",
                "2",
                "--keep-map",
                "map.svg",
            ],
            &["--instance 2 is out of range for --batch 2"],
        ),
        case(
            "--keep-map folder missing, checked before the passes",
            &[
                "demo",
                "--preset",
                "tiny-bert",
                "--keep-map",
                "no/such/map.svg",
            ],
            &["does not exist", "no/such"],
        ),
        case(
            "--flops-hist is a folder",
            &[
                "demo",
                "--preset",
                "tiny-bert",
                "--flops-hist",
                fx.path().join("d.svg").to_str().unwrap(),
            ],
            &["is a folder"],
        )
        .setup_dir(fx, "d.svg"),
        case(
            "--flops-hist with an unknown extension",
            &["demo", "--preset", "tiny-bert", "--flops-hist", "hist.jpg"],
            &["must be .svg or .png"],
        ),
        case(
            "preset typo",
            &["demo", "--preset", "tiny-mter"],
            &["unknown preset `tiny-mter`", "did you mean `tiny-meter`?"],
        ),
        case(
            "a zero-layer config",
            &["demo", "--config", &zero],
            &["stream `text` has no layers"],
        ),
        case(
            "--batch 0",
            &["demo", "--preset", "tiny-bert", "--batch", "0"],
            &["--batch must be at least 1"],
        ),
    ]
}

impl Case {
    /// Creates folder `name` in the fixture for this case.
    fn setup_dir(self, fx: &Fixture, name: &str) -> Self {
        std::fs::create_dir_all(fx.path().join(name)).unwrap();
        self
    }
}

fn embed_table(fx: &Fixture) -> Vec<Case> {
    let dir = |name: &str, config: &str, weights: Option<Vec<u8>>| -> String {
        let d = fx.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), config).unwrap();
        if let Some(w) = weights {
            std::fs::write(d.join("model.safetensors"), w).unwrap();
        }
        d.to_str().unwrap().to_string()
    };
    // An empty safetensors file: the header `{}`.
    let mut empty = 8u64.to_le_bytes().to_vec();
    empty.extend_from_slice(b"{}      ");
    let hf = |hidden: usize| {
        json!({
            "model_type": "bert", "vocab_size": 100, "hidden_size": hidden,
            "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": hidden,
            "max_position_embeddings": 64, "type_vocab_size": 2,
        })
        .to_string()
    };
    let not_json = dir("not_json", "{ nope", None);
    let no_weights = dir("no_weights", &hf(64), None);
    let huge = dir("huge", &hf(65536), Some(empty.clone()));
    let relu = dir(
        "relu",
        &hf(64).replace("\"model_type\"", "\"hidden_act\":\"relu\",\"model_type\""),
        None,
    );
    let zero = dir(
        "zero",
        &hf(64).replace("\"num_hidden_layers\":1", "\"num_hidden_layers\":0"),
        None,
    );
    vec![
        case(
            "model folder missing",
            &["embed", "--model", &fx.out("no_model"), "hello"],
            &["no_model", "model directory not found"],
        )
        .once("model directory not found"),
        case(
            "an empty text",
            &["embed", "--model", &not_json, "hello", " "],
            &["text 1 is empty"],
        ),
        case(
            "config.json not JSON: the cause once",
            &["embed", "--model", &not_json, "hello"],
            &["JSON error in HuggingFace BERT config"],
        )
        .once("key must be a string"),
        case(
            "model.safetensors missing: the cause once",
            &["embed", "--model", &no_weights, "hello"],
            &["model.safetensors", "No such file or directory"],
        )
        .once("No such file or directory"),
        case(
            "hidden 65536: refused before allocating",
            &["embed", "--model", &huge, "hello"],
            &["would need at least", "more than"],
        ),
        case(
            "an activation it does not have",
            &["embed", "--model", &relu, "hello"],
            &["hidden_act `relu` is not supported"],
        ),
        case(
            "zero layers",
            &["embed", "--model", &zero, "hello"],
            &["stream `text` has no layers"],
        ),
        case("no text", &["embed", "--model", &not_json], &["TEXTS"]).code(USAGE),
    ]
}

fn bench_table(fx: &Fixture) -> Vec<Case> {
    let torch = |name: &str, rows: Value| fx.json(name, &rows);
    let no_dense = torch(
        "no_dense.json",
        json!([{"workload": "tiny-meter", "batch": 1, "mode": "eager"}]),
    );
    let cpu = [
        "bench",
        "--device",
        "cpu",
        "--workload",
        "tiny-meter",
        "--batch",
        "1",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        cpu.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let bench = |what: &'static str, extra: &[&str], needles: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        case(what, &args, needles)
    };
    vec![
        bench(
            "--json folder missing, checked before the passes",
            &["--json", "nowhere/bench.json"],
            &["nowhere", "does not exist"],
        ),
        bench(
            "a torch row without dense_ms",
            &["--torch", &no_dense],
            &["missing field `dense_ms`", "dense_ms a number or null"],
        ),
        bench(
            "a torch file that is not JSON: the cause once",
            &["--torch", &fx.file("torch_bad.json", "[{")],
            &["parsing the PyTorch baseline", "EOF while parsing"],
        )
        .once("EOF while parsing"),
        bench(
            "a torch time that is not positive",
            &[
                "--torch",
                &torch(
                    "neg.json",
                    json!([{"workload": "tiny-meter", "batch": 1, "mode": "eager", "dense_ms": -1.0}]),
                ),
            ],
            &["dense_ms -1 is not a positive time"],
        ),
        bench(
            "--iters 0",
            &["--iters", "0"],
            &["--iters must be at least 1"],
        ),
        bench(
            "--batch 0",
            &["--batch", "0"],
            &["--batch takes sizes of at least 1"],
        ),
        bench(
            "--batch past memory: refused before allocating",
            &["--batch", "100000000000"],
            &["the inputs of --batch", "would need at least"],
        ),
        bench(
            "workload typo",
            &["--workload", "tiny-metr"],
            &["unknown workload `tiny-metr`", "did you mean `tiny-meter`?"],
        ),
        bench(
            "unknown schedule",
            &["--schedule", "budget-x"],
            &["budget-x"],
        ),
    ]
}

// ---- the C API ----

const OK: i32 = SmarttrimStatus::Ok as i32;

fn last_error() -> String {
    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: `buf` is writable for its length.
    let st = unsafe { smarttrim_last_error_message(buf.as_mut_ptr(), buf.len()) };
    assert_eq!(st, OK);
    // SAFETY: the function NUL-terminates within `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `smarttrim_model_create_from_memory` on a config text and weights
/// image: (status, whether the out handle is null).
fn from_memory(config: &[u8], weights: &[u8], ordinal: i32) -> (i32, bool) {
    let mut m = ptr::without_provenance_mut::<SmarttrimModel>(0x1234);
    // SAFETY: the slices are readable for their lengths; `m` is writable.
    let st = unsafe {
        smarttrim_model_create_from_memory(
            config.as_ptr().cast(),
            config.len(),
            weights.as_ptr(),
            weights.len(),
            ordinal,
            &mut m,
        )
    };
    (st, m.is_null())
}

/// `smarttrim_model_create` on two paths.
fn from_files(config: &str, weights: &str) -> (i32, bool) {
    let (c, w) = (
        CString::new(config).unwrap(),
        CString::new(weights).unwrap(),
    );
    let mut m = ptr::without_provenance_mut::<SmarttrimModel>(0x1234);
    // SAFETY: valid C strings and out pointer.
    let st = unsafe { smarttrim_model_create(c.as_ptr(), w.as_ptr(), 0, &mut m) };
    (st, m.is_null())
}

struct CCase {
    what: &'static str,
    call: Box<dyn Fn() -> (i32, bool)>,
    status: SmarttrimStatus,
    needles: Vec<&'static str>,
}

fn c_case(
    what: &'static str,
    status: SmarttrimStatus,
    needles: &[&'static str],
    call: impl Fn() -> (i32, bool) + 'static,
) -> CCase {
    CCase {
        what,
        call: Box::new(call),
        status,
        needles: needles.to_vec(),
    }
}

fn c_table(fx: &Fixture) -> Vec<CCase> {
    use SmarttrimStatus as S;
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let weights = Weights::random(&cfg, 1)
        .unwrap()
        .to_safetensors_bytes()
        .unwrap();
    let text = |f: &dyn Fn(&mut Value)| -> Vec<u8> {
        let mut v = config_value(&cfg);
        f(&mut v);
        v.to_string().into_bytes()
    };
    let good = cfg.to_json().unwrap().into_bytes();
    let typo = text(&|v| v["streams"][1]["layers"][1]["cross_head_prunner"] = json!({}));
    let rho = text(&|v| v["streams"][0]["layers"][1]["token_pruner"]["rho"] = json!(0.5));
    let zero = text(&|v| {
        v["streams"][0]["layers"] = json!([]);
        v["streams"][1]["layers"] = json!([]);
    });
    let huge = text(&|v| {
        for s in 0..2 {
            v["streams"][s]["hidden"] = json!(65536);
            v["streams"][s]["ffn"] = json!(65536);
        }
    });
    let mut empty = 8u64.to_le_bytes().to_vec();
    empty.extend_from_slice(b"{}      ");
    let dup = with_duplicate(&weight_tensors(&cfg), "text.layers.0.ffn.fc1.weight");
    let cfg_file = fx.file("c.json", &good);
    let typo_file = fx.file("c_typo.json", &typo);
    let w_file = fx.file("c.safetensors", &weights);
    let missing = fx.out("c_missing.json");
    let w2 = weights.clone();
    let w3 = weights.clone();
    let w4 = weights.clone();
    let w5 = weights.clone();
    let g2 = good.clone();
    let g3 = good.clone();
    let g4 = good.clone();
    let w_file2 = w_file.clone();
    vec![
        c_case(
            "config typo",
            S::ConfigError,
            &[
                "unknown field `cross_head_prunner`",
                "did you mean `cross_head_pruner`?",
            ],
            move || from_memory(&typo, &weights, 0),
        ),
        c_case(
            "a stray rho",
            S::ConfigError,
            &["a `threshold` rule takes `tau`, not `rho`"],
            move || from_memory(&rho, &w2, 0),
        ),
        c_case(
            "zero layers",
            S::ConfigError,
            &["has no layers"],
            move || from_memory(&zero, &w3, 0),
        ),
        c_case(
            "hidden 65536: refused before allocating",
            S::InvalidArgument,
            &["would need at least", "more than"],
            move || from_memory(&huge, &empty, 0),
        ),
        c_case(
            "duplicate tensor name in the weights",
            S::WeightsError,
            &["`text.layers.0.ffn.fc1.weight`", "more than once"],
            move || from_memory(&good, &dup, 0),
        ),
        c_case(
            "weights that are not safetensors",
            S::WeightsError,
            &["safetensors error in weights in memory"],
            move || from_memory(&g2, b"not a safetensors file", 0),
        ),
        c_case(
            "config not UTF-8",
            S::InvalidArgument,
            &["config_json is not UTF-8"],
            move || from_memory(&[0xff, 0xfe, 0x7b], &w4, 0),
        ),
        c_case(
            "negative device ordinal",
            S::InvalidArgument,
            &["device_ordinal = -1"],
            move || from_memory(&g3, &w5, -1),
        ),
        c_case(
            "config file missing",
            S::IoError,
            &["c_missing.json", "No such file or directory"],
            move || from_files(&missing, &w_file),
        ),
        c_case(
            "config file typo",
            S::ConfigError,
            &["c_typo.json", "did you mean `cross_head_pruner`?"],
            move || from_files(&typo_file, &w_file2),
        ),
        c_case(
            "weights file missing",
            S::IoError,
            &["nope.safetensors"],
            move || from_files(&cfg_file, "/nonexistent/nope.safetensors"),
        ),
        c_case(
            "config JSON cut short",
            S::ConfigError,
            &["EOF while parsing"],
            move || from_memory(&g4[..g4.len() / 2], b"", 0),
        ),
    ]
}

fn run_c_cases(cases: Vec<CCase>) {
    let mut failed = Vec::new();
    for c in cases {
        let (st, null) = (c.call)();
        let msg = last_error();
        let mut bad = Vec::new();
        if st != c.status as i32 {
            bad.push(format!("status {st}, expected {}", c.status as i32));
        }
        if !null {
            bad.push("a handle was left in *out".to_string());
        }
        for n in &c.needles {
            if !msg.contains(n) {
                bad.push(format!("message lacks `{n}`"));
            }
        }
        if msg.contains("panicked") {
            bad.push("a panic".to_string());
        }
        if !bad.is_empty() {
            eprintln!("{}: {}: {msg}", c.what, bad.join("; "));
            failed.push(c.what);
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}

#[test]
fn run_refuses_bad_input() {
    let fx = Fixture::new();
    run_cases(fx.path(), run_table(&fx));
}

#[test]
fn init_weights_refuses_bad_input() {
    let fx = Fixture::new();
    run_cases(fx.path(), init_weights_table(&fx));
}

#[test]
fn demo_refuses_bad_input() {
    let fx = Fixture::new();
    run_cases(fx.path(), demo_table(&fx));
}

#[test]
fn embed_refuses_bad_input() {
    let fx = Fixture::new();
    run_cases(fx.path(), embed_table(&fx));
}

#[test]
fn bench_refuses_bad_input() {
    let fx = Fixture::new();
    run_cases(fx.path(), bench_table(&fx));
}

#[test]
fn c_api_refuses_bad_input() {
    let fx = Fixture::new();
    run_c_cases(c_table(&fx));
}

#[test]
fn at_least_forty_cases() {
    let fx = Fixture::new();
    let counts = [
        ("run", run_table(&fx).len()),
        ("init-weights", init_weights_table(&fx).len()),
        ("demo", demo_table(&fx).len()),
        ("embed", embed_table(&fx).len()),
        ("bench", bench_table(&fx).len()),
        ("C API", c_table(&fx).len()),
    ];
    let total: usize = counts.iter().map(|c| c.1).sum();
    println!("bad-input cases: {total} ({counts:?})");
    assert!(total >= 40, "only {total} bad-input cases: {counts:?}");
    assert!(
        counts.iter().all(|c| c.1 >= 5),
        "a command with few cases: {counts:?}"
    );
}

/// Ctrl-C while `init-weights` writes its file: the temporary file is
/// removed and the tool exits with 130. The temporary path is made a FIFO
/// before the tool gets to it, so the test knows when the write is under
/// way (the FIFO yields its first bytes) and the write cannot finish first.
#[cfg(unix)]
#[test]
fn ctrl_c_during_init_weights_leaves_nothing() {
    use std::io::Read;
    let fx = Fixture::new();
    // About 25 MB of weights: a moment to generate, which the test uses to
    // make the FIFO.
    let cfg = fx.json(
        "medium.json",
        &bert_with(|v| {
            let s = &mut v["streams"][0];
            s["hidden"] = json!(512);
            s["heads"] = json!(8);
            s["ffn"] = json!(2048);
            s["layers"] = json!([{}, {}]);
        }),
    );
    let out = fx.path().join("w.safetensors");
    let before = listing(fx.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_smarttrim"))
        .args([
            "init-weights",
            "--config",
            &cfg,
            "--out",
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn smarttrim");
    let tmp = fx.path().join(format!(".w.safetensors.tmp{}", child.id()));
    let made = Command::new("mkfifo").arg(&tmp).status().expect("mkfifo");
    assert!(made.success(), "mkfifo {}", tmp.display());
    // Blocks until the tool opens its temporary file for writing.
    let mut reader = std::fs::File::open(&tmp).expect("open the FIFO");
    let mut first = [0u8; 8];
    reader
        .read_exact(&mut first)
        .expect("the first bytes of the file");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    drop(reader);
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "exit {status:?}; stderr:\n{err}");
    assert!(
        err.contains("interrupted; the partial output was removed"),
        "{err}"
    );
    let left: Vec<_> = listing(fx.path()).difference(&before).cloned().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Pictures are written like `run`'s outputs: to a temporary file, then
/// renamed into place, so a failing write (a full disk) never leaves a
/// truncated picture. Seen from outside: drawing over an existing picture
/// replaces the file (a new inode) instead of rewriting it in place, and no
/// temporary file remains.
#[cfg(unix)]
#[test]
fn pictures_are_written_atomically() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new();
    let cfg = preset("tiny-vit").unwrap();
    let w = Weights::random(&cfg, 1).unwrap();
    let inputs = synthetic_inputs(&cfg, 2, 1, false);
    let out = smarttrim::reference::forward(&w, &inputs, &Default::default()).unwrap();
    for name in ["map.svg", "hist.png"] {
        let p = fx.path().join(name);
        let draw = || {
            if name.starts_with("map") {
                smarttrim::report::keep_map(&cfg, &out, 0, &p).unwrap()
            } else {
                smarttrim::report::flops_hist(&cfg, &out, &p).unwrap()
            }
        };
        draw();
        let first = std::fs::metadata(&p).unwrap();
        assert!(first.len() > 0, "{name}");
        draw();
        let second = std::fs::metadata(&p).unwrap();
        assert_ne!(first.ino(), second.ino(), "{name} was rewritten in place");
        // A path whose folder is missing: an I/O error, nothing written.
        let bad = fx.path().join("missing").join(name);
        let e = smarttrim::report::flops_hist(&cfg, &out, &bad).unwrap_err();
        assert!(matches!(e, smarttrim::Error::Io { .. }), "{e}");
    }
    let names: BTreeSet<String> = std::fs::read_dir(fx.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["hist.png", "map.svg"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "only the pictures, no temporary file"
    );
}

/// The library's own input check (what the C API and Rust callers meet)
/// names the position offset when a sequence is too long for it.
#[test]
fn library_input_check_names_the_position_offset() {
    let mut c = preset("tiny-bert").unwrap();
    if let smarttrim::spec::EmbeddingConfig::Bert {
        position_offset, ..
    } = &mut c.streams[0].embedding
    {
        *position_offset = 2;
    }
    let w = Weights::random(&c, 1).unwrap();
    let inputs = smarttrim::reference::Inputs {
        streams: vec![smarttrim::reference::StreamInput::Tokens {
            ids: vec![1; 63],
            type_ids: None,
            cu_seqlens: vec![0, 63],
        }],
        context: None,
    };
    let e = smarttrim::reference::forward(&w, &inputs, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a sequence of 63 tokens exceeds max_positions 64")
            && e.contains("position_offset 2: at most 62 tokens fit"),
        "{e}"
    );
}
