//! `smarttrim::embed` on all-MiniLM-L6-v2 (fetched by scripts/fetch-minilm.sh)
//! against an independent implementation: candle's BertModel, run on each
//! sentence alone, mean-pooled and normalised as sentence-transformers does.

use std::io::Write as _;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use smarttrim::embed::{Pooling, SentenceEmbedder};

/// The model directory, or None after printing why the test is skipped.
/// Under CI (CI=true) a missing model is a failure: scripts/test.sh fetches it.
fn model_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SMARTTRIM_MINILM_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/smarttrim/models/all-MiniLM-L6-v2"))
        })?;
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let why = format!(
        "{} has no MiniLM model; run scripts/fetch-minilm.sh",
        dir.display()
    );
    assert!(std::env::var("CI").is_err(), "{test}: {why}");
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
    None
}

const TEXTS: &[&str] = &[
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "SmartTrim prunes redundant tokens and attention heads per instance, so easy inputs cost less.",
    "A much longer sentence, which goes on for a while about vision-language transformers, \
     adaptive pruning, packed ragged sequences, CUDA kernels and the price of padding tokens \
     in a batch where the lengths differ a lot from one example to the next.",
    "naïve café — ümlauts & symbols: 3.14 % $",
];

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_candle_bert() {
    let Some(dir) = model_dir("minilm_matches_candle_bert") else {
        return;
    };
    let ours = SentenceEmbedder::load(&dir).expect("load MiniLM");
    assert_eq!(ours.pooling(), Pooling::Mean);
    assert!(ours.normalize());
    assert_eq!(ours.max_seq_length(), 256);
    let got = ours.embed(TEXTS).expect("embed");

    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY (test): the file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let bert = BertModel::load(vb, &config).unwrap();

    for e in &got {
        assert_eq!(e.ids.first(), Some(&101), "[CLS] first");
        assert_eq!(e.ids.last(), Some(&102), "[SEP] last");
        assert_eq!(e.embedding.len(), 384);
        let n = e.ids.len();
        let ids = Tensor::new(e.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .reshape((1, n))
            .unwrap();
        let types = ids.zeros_like().unwrap();
        let hidden = bert.forward(&ids, &types, None).unwrap(); // [1, n, 384]
        let mean = (hidden.sum(1).unwrap() / n as f64).unwrap();
        let v: Vec<f32> = mean.squeeze(0).unwrap().to_vec1().unwrap();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let want: Vec<f32> = v.iter().map(|x| x / norm).collect();
        let c = cosine(&e.embedding, &want);
        println!(
            "{:>3} tokens: cosine {c:.8}  ({:?}...)",
            n,
            &e.text[..e.text.len().min(30)]
        );
        assert!(c >= 0.99999, "text {:?}: cosine {c} < 0.99999", e.text);
    }
}

#[test]
fn minilm_truncates_to_max_seq_length_and_rejects_empty_text() {
    let Some(dir) = model_dir("minilm_truncates_to_max_seq_length_and_rejects_empty_text") else {
        return;
    };
    let ours = SentenceEmbedder::load(&dir).unwrap();
    let long = "word ".repeat(400);
    let ids = ours.tokenize(&[long.as_str()]).unwrap();
    assert_eq!(ids[0].len(), 256);
    assert_eq!(ids[0].last(), Some(&102), "[SEP] kept after truncation");
    let err = ours.embed(&["fine", "  "]).unwrap_err().to_string();
    assert!(err.contains("text 1 is empty"), "{err}");
}

#[test]
fn missing_model_dir_is_an_error() {
    let err = SentenceEmbedder::load("/nonexistent/model/dir").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model/dir"), "{err}");
}
