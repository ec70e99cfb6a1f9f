//! HuggingFace checkpoints as they are published: a `config.json` becomes a
//! [`ModelConfig`], and the checkpoint's tensor names are mapped onto ours.
//!
//! Supported `model_type`s (the names the hub files use, transformers'
//! v4-style names, which transformers 5 still writes):
//!
//! | `model_type` | what | config |
//! | --- | --- | --- |
//! | `bert`, `roberta` | text encoder | [`ModelKind::Encoder`], stream `text` |
//! | `vit` | ViT (`ViTModel`, with or without the `vit.` prefix) | [`ModelKind::Encoder`], stream `image` (pre-LN, final LN, pooler if the checkpoint has one) |
//! | `clip_vision_model`, `clip` (its vision tower) | CLIP image encoder | [`ModelKind::Encoder`], stream `image` (`ln_pre`, no patch bias, `quick_gelu`, final LN on every row) |
//! | `blip` (`BlipForImageTextRetrieval`, `BlipForQuestionAnswering`) | BLIP's two encoders | [`ModelKind::Blip`], streams `image`, `text`; the ITM head if the checkpoint has `itm_head` |
//!
//! Sizes come from `config.json` (BLIP: its `vision_config` and
//! `text_config`); a key missing there takes transformers' default for that
//! config class, as transformers itself does when it loads the file, and
//! every tensor's shape is then checked against the derived config. Names
//! the model does not use are an error listing them, except those knowingly
//! ignored: `*.position_ids`; BERT/RoBERTa `pooler.*`, `cls.*`, `lm_head.*`;
//! BLIP `text_decoder.*` (the VQA answer decoder and its tied weights),
//! `vision_proj.*`, `text_proj.*`; CLIP `text_model.*`, `text_projection.*`,
//! `visual_projection.*`, `logit_scale`.
//!
//! Pruners are not part of these checkpoints: their tensors come under our
//! own names (`image.layers.3.token_pruner.w1x`, ...), either in the same
//! file or in a second one ([`load_model_dir`]'s `pruners`).
//!
//! [`load_model_dir`] also loads smarttrim model directories (a
//! `config.json` in smarttrim's schema and tensors under smarttrim's names,
//! as `scripts/convert_meter.py` writes for METER's checkpoints).
//!
//! One concern per file: `config.rs` (a `config.json` read as a
//! [`ModelConfig`]), `names.rs` (checkpoint tensor names mapped onto ours),
//! `dirs.rs` (model directories, files in memory, pruner files).

mod config;
mod dirs;
mod names;

pub use config::config_from_hf;
pub use dirs::{
    dir_config, load_model_dir, load_model_from_memory, load_weights_files, pruner_file_bytes,
    pruner_file_config, pruners_from_names, read_dir_config, same_backbone, DirFormat, LoadedModel,
};
pub use names::hf_weights_from_bytes;

use super::config::{ModelConfig, ModelKind};

/// The metadata key under which a pruner file written by smarttrim holds the
/// whole model config (JSON) its pruners belong to.
pub const PRUNER_CONFIG_KEY: &str = "smarttrim.config";

/// Which HuggingFace model family a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfFamily {
    /// `bert`.
    Bert,
    /// `roberta`.
    Roberta,
    /// `vit`.
    Vit,
    /// `clip_vision_model`, or a whole `clip` checkpoint's vision tower.
    ClipVision,
    /// `blip`.
    Blip,
}

/// A HuggingFace checkpoint's derived description.
#[derive(Debug, Clone, PartialEq)]
pub struct HfModel {
    /// The family.
    pub family: HfFamily,
    /// The config derived from `config.json` (no pruners).
    pub config: ModelConfig,
}
