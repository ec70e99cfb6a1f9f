//! Elementwise and dense building blocks of the CPU reference (f32): they
//! live in [`crate::pass::math`] (the host embedding both backends share
//! computes with them too) and are re-exported here.

pub use crate::pass::math::{
    add_in_place, gelu, gelu_in_place, layer_norm_row, layer_norm_rows, linear, matmul_t,
    mean_rows, quick_gelu, quick_gelu_in_place, sigmoid,
};
