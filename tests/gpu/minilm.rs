//! The real-weights check: all-MiniLM-L6-v2 (fetched by
//! scripts/fetch-minilm.sh) through the GPU forward pass
//! (`smarttrim::model`) against the CPU path (`smarttrim::embed`, the
//! reference), per sentence, on the mean-pooled and L2-normalised output as
//! sentence-transformers computes it: cosine >= 0.9999.
//!
//! The model directory is `SMARTTRIM_MINILM_DIR`, else the fetch script's
//! cache (`$SMARTTRIM_MODEL_CACHE/all-MiniLM-L6-v2`, default
//! `~/.cache/smarttrim/models/all-MiniLM-L6-v2`). Without a GPU the test skips
//! like every GPU test (failing under `SMARTTRIM_REQUIRE_GPU=1`); with a GPU
//! but no model directory it skips with one line saying so — also under
//! `SMARTTRIM_REQUIRE_GPU=1`, which is about the GPU, not the model files
//! (the GPU machine need not carry them).

use std::io::Write as _;
use std::path::PathBuf;

use smarttrim::embed::{Pooling, SentenceEmbedder};
use smarttrim::model::{Capacity, GpuForwardOptions, GpuModel, Workspace};
use smarttrim::reference::{Inputs, StreamInput};
use smarttrim::spec::{ModelConfig, Weights};

use crate::common::*;

const COSINE_MIN: f64 = 0.9999;

/// The model directory, or None after printing why the test is skipped.
fn model_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SMARTTRIM_MINILM_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("SMARTTRIM_MODEL_CACHE")
                .map(|c| PathBuf::from(c).join("all-MiniLM-L6-v2"))
        })
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/smarttrim/models/all-MiniLM-L6-v2"))
        });
    match dir {
        Some(d) if d.join("model.safetensors").is_file() => Some(d),
        other => {
            let where_ = other.map_or("no HOME".to_string(), |d| d.display().to_string());
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: no MiniLM model at {where_} (run scripts/fetch-minilm.sh or set \
                 SMARTTRIM_MINILM_DIR; a missing model skips even with SMARTTRIM_REQUIRE_GPU=1)"
            );
            None
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Mean over `[n, d]` rows (f64 accumulation), then L2-normalised when the
/// model says so: sentence-transformers' mean pooling, as `smarttrim::embed`.
fn mean_pool(rows: &[f32], d: usize, normalize: bool) -> Vec<f32> {
    let n = rows.len() / d;
    let mut acc = vec![0f64; d];
    for r in rows.chunks(d) {
        for (a, &v) in acc.iter_mut().zip(r) {
            *a += v as f64;
        }
    }
    let mut v: Vec<f32> = acc.iter().map(|a| (a / n.max(1) as f64) as f32).collect();
    if normalize {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[test]
fn minilm_gpu_matches_cpu() {
    const TEST: &str = "minilm_gpu_matches_cpu";
    let Some(dev) = device(TEST) else {
        return;
    };
    let Some(dir) = model_dir(TEST) else {
        return;
    };
    let long = "word ".repeat(400); // truncated to 256 tokens
    let texts: Vec<&str> = vec![
        "Hi",
        "The quick brown fox jumps over the lazy dog.",
        "SmartTrim prunes redundant tokens and attention heads per instance, so easy inputs cost less.",
        "A much longer sentence, which goes on for a while about vision-language transformers, \
         adaptive pruning, packed ragged sequences, CUDA kernels and the price of padding tokens \
         in a batch where the lengths differ a lot from one example to the next.",
        "naïve café — ümlauts & symbols: 3.14 % $",
        &long,
    ];

    let cpu = SentenceEmbedder::load(&dir).expect("load MiniLM");
    assert_eq!(cpu.pooling(), Pooling::Mean, "MiniLM pools by the mean");
    let want = cpu.embed(&texts).expect("CPU embeddings");

    let config_json = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let config = ModelConfig::from_hf_bert_config(&config_json).expect("HF config");
    let weights =
        Weights::load_hf_bert(&config, dir.join("model.safetensors")).expect("MiniLM weights");
    let ids: Vec<Vec<u32>> = want.iter().map(|e| e.ids.clone()).collect();
    let cu = cu_of(&ids.iter().map(Vec::len).collect::<Vec<_>>());
    let inputs = Inputs {
        streams: vec![StreamInput::Tokens {
            ids: ids.iter().flatten().copied().collect(),
            type_ids: None,
            cu_seqlens: cu.clone(),
        }],
        context: None,
    };
    let model = GpuModel::new(&dev, &weights).expect("GpuModel::new (MiniLM)");
    let capacity = Capacity {
        max_batch: texts.len(),
        max_seqlen: vec![ids.iter().map(Vec::len).max().unwrap()],
        context_max_seqlen: 0,
    };
    let mut ws = Workspace::new(&model, capacity).expect("Workspace::new");
    let out = model
        .forward(&mut ws, &inputs, &GpuForwardOptions::default())
        .expect("GPU forward");
    let s = &out.streams[0];
    let d = s.packed.d;
    assert_eq!(s.packed.cu_seqlens, cu, "no pruning: lengths unchanged");
    for (b, e) in want.iter().enumerate() {
        let (lo, hi) = (cu[b] as usize, cu[b + 1] as usize);
        let got = mean_pool(&s.packed.rows[lo * d..hi * d], d, cpu.normalize());
        let c = cosine(&got, &e.embedding);
        let c_dev = cosine(&s.pooled_mean[b * d..(b + 1) * d], &e.embedding);
        println!(
            "{:>3} tokens: cosine {c:.8} (device mean pool {c_dev:.8})  ({:?}...)",
            hi - lo,
            e.text.chars().take(30).collect::<String>()
        );
        assert!(c >= COSINE_MIN, "text {b}: cosine {c} < {COSINE_MIN}");
        assert!(
            c_dev >= COSINE_MIN,
            "text {b}: device mean pool cosine {c_dev} < {COSINE_MIN}"
        );
    }
}
