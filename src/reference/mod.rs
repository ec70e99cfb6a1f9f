//! The exact f32 CPU forward pass: the semantics of DESIGN.md, plain and
//! readable. The GPU pass is tested against it.
//!
//! - [`ops`]: LayerNorm, GELU, sigmoid, `x W^T` GEMM (from [`crate::pass::math`]).
//! - [`pruner`]: token scores, keep rules, head logits and masks.
//! - [`compact`](mod@compact): masked compaction of packed rows.
//! - [`attention`](mod@attention): multi-head attention over packed ragged sequences.
//! - [`model`]: embeddings, layers and [`forward`].
//!
//! The pass's inputs, outputs, per-layer records, packed rows, input
//! validation and host embedding are shared with the GPU pass and live in
//! [`crate::pass`]; the names below (and `reference::model::*`,
//! `reference::compact::Packed`) re-export them.

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
