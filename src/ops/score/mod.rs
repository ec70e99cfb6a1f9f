//! Token and head pruner scoring (`kernels/score.cu`, plus `layernorm_f16`
//! and `mean_pool_f16` from `kernels/elementwise.cu`).
//!
//! [`token_scores`] runs DESIGN.md's token pruner on the device in five
//! launches, none waiting on the host: LayerNorm of the rows into a scratch
//! buffer (and of the other stream's rows), per-sequence means, the
//! per-sequence context `c_b = W1s g_self + W1c g_cross + b1`
//! (`score_context_f16`), then `score_rows_f16`, which computes
//! `s_i = w2 . GELU(W1x u_i + c_b) + b2` on tensor cores with the hidden layer
//! kept in registers, and the threshold keep flags.
//!
//! [`head_scores`] runs the head pruner: LayerNorms and means as above, then
//! `head_logits_f16` (one block per sequence: the head MLP, the mask with its
//! `min_heads` top-up) and `head_pairs` (one block: the compacted list of
//! active `(sequence, head)` pairs and their count).
//!
//! Weights are f16 on the device, biases too, except the token pruner's scalar
//! `b2`, passed by value as f32.
//!
//! One file per wrapper family: `token.rs` (the token scorer and its unfused
//! baseline tail), `head.rs` (the head scorer), and what both share
//! (`common.rs`: the scored rows and the other stream, LayerNorm weights, the
//! shared size checks and the LayerNorm + mean step).

mod common;
mod head;
mod token;

pub use common::{LnDev, OtherStream, PrunerInput};
pub use head::{
    head_scores, validate_head_scores, HeadPrunerDev, HeadScoreDims, HeadScoreLens,
    HeadScoreOutputs, HeadScoreWorkspace, HEAD_MAX_HEADS, HEAD_MAX_HIDDEN, HEAD_MAX_IN,
};
pub use token::{
    score_dot, score_splits, token_scores, validate_token_scores, TokenPrunerDev, TokenScoreDims,
    TokenScoreLens, TokenScoreOutputs, TokenScoreWorkspace, SCORE_TILE,
};
