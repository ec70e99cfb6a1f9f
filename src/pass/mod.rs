//! The pass's description, shared by both backends: the CPU reference
//! ([`crate::reference`]) and the GPU pass ([`crate::model`]) both import
//! it, and neither imports the other (DESIGN.md, "Shape of the code").
//!
//! - [`inputs`](mod@inputs): what goes in ([`Inputs`], one [`StreamInput`]
//!   per input stream).
//! - [`embedding`]: the input validation both backends share
//!   ([`check_inputs`]) and the host embedding ([`embed_inputs`], [`embed`]).
//! - [`packed`](mod@packed): packed rows with `cu_seqlens` and `orig_index`
//!   ([`Packed`]).
//! - [`outputs`](mod@outputs): what comes out per stream ([`StreamOutput`])
//!   and what every layer did ([`LayerRecord`], [`HeadRecord`],
//!   [`layer_stats`]).
//! - [`math`]: the f32 host arithmetic (LayerNorm, GELU, sigmoid, `x W^T`)
//!   the host embedding and the CPU reference compute with.
//!
//! These lived in `reference` before; `reference::{Inputs, StreamInput,
//! Packed, ...}` and `reference::model::...` still name them (re-exports).

pub mod embedding;
pub mod inputs;
pub mod math;
pub mod outputs;
pub mod packed;

pub use embedding::{check_inputs, embed, embed_inputs};
pub use inputs::{Inputs, StreamInput};
pub use outputs::{layer_stats, HeadRecord, LayerRecord, LayerStats, StreamOutput};
pub use packed::Packed;
