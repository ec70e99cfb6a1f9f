//! The model's description shared by the CPU reference and the GPU pass:
//! configs ([`config`]) and the built-in ones ([`presets`]), host-side
//! weights and their file format ([`weights`]), FLOPs accounting
//! ([`flops`]), pruning schedules and the FLOPs of a pass computed from its
//! counts ([`schedule`]), and HuggingFace checkpoints as they are published
//! ([`hf`]: configs and name maps).

pub mod config;
pub mod flops;
pub mod hf;
pub(crate) mod parse;
pub mod presets;
pub mod schedule;
mod validate;
pub mod weights;

pub use config::{
    preset, Activation, EmbeddingConfig, HeadConfig, HeadPrunerConfig, KeepRule, LayerConfig,
    ModelConfig, ModelKind, Stage, StageInput, StreamConfig, TokenPrunerConfig, PRESETS,
};
pub use flops::{Flops, LayerCounts, SequenceFlops};
pub use weights::{
    CrossAttentionWeights, EmbeddingWeights, FfnWeights, HeadPrunerWeights, HeadWeights,
    LayerNormWeights, LayerWeights, Linear, Rng, SelfAttentionWeights, StreamWeights,
    TokenPrunerWeights, Weights,
};
