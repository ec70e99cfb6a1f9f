//! The exact f32 CPU forward pass: the semantics of DESIGN.md, plain and
//! readable. The GPU pass is tested against it.
//!
//! - [`ops`]: LayerNorm, GELU, sigmoid, `x W^T` GEMM.
//! - [`pruner`]: token scores, keep rules, head logits and masks.
//! - [`compact`](mod@compact): packed rows and masked compaction.
//! - [`attention`](mod@attention): multi-head attention over packed ragged sequences.
//! - [`model`]: embeddings, layers and [`forward`].

pub mod attention;
pub mod compact;
pub mod model;
pub mod ops;
pub mod pruner;
pub mod synthetic;

pub use attention::attention;
pub use compact::{compact, Packed};
pub use model::{
    forward, ForwardOptions, HeadRecord, Inputs, LayerRecord, Outputs, StreamInput, StreamOutput,
};
pub use synthetic::synthetic_inputs;
