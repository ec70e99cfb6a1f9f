//! `smarttrim embed`: sentence embeddings from a HuggingFace BERT-family
//! sentence-transformers directory, one JSON object per text.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use smarttrim::embed::SentenceEmbedder;

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json; the
    /// sentence-transformers pooling files when present).
    #[arg(long)]
    pub model: PathBuf,
    /// Texts to embed.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    if let Some(i) = args.texts.iter().position(|t| t.trim().is_empty()) {
        bail!("text {i} is empty");
    }
    let embedder = SentenceEmbedder::load(&args.model)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    for e in embedder.embed(&texts)? {
        outln!("{}", serde_json::to_string(&e)?)?;
    }
    Ok(())
}
