//! smarttrim: the inference pass of adaptively pruned (SmartTrim) transformer
//! encoders on NVIDIA GPUs, with an exact CPU reference.
//!
//! Layers, bottom up (dependencies point one way):
//!
//! - [`error`]: the one error type; [`limits`]: sizes checked before allocating.
//! - [`device`] and [`kernels`]: CUDA context, streams, the embedded PTX modules.
//! - [`ops`]: safe wrappers around the hand-written kernels (validate, then launch).
//! - [`spec`]: the model's description (config, weights, FLOPs), shared by both backends.
//! - [`pass`]: a pass's inputs, outputs and per-layer records, the input validation and
//!   the host embedding, shared by both backends.
//! - [`reference`](mod@reference): the exact CPU pass (the semantics of DESIGN.md).
//! - [`embed`], [`tensor_io`]: sentence embeddings from HuggingFace models;
//!   `smarttrim run`'s input and output files.
//! - [`model`]: the pruned forward pass on the GPU (tested against [`reference`](mod@reference)).
//! - [`report`]: pictures of a pass (token keep map, FLOPs histogram).
//! - [`workloads`]: benchmark workloads and pruning schedules (`smarttrim bench`).
//! - [`ffi`]: the C API (`include/smarttrim.h`).
//!
//! See `README.md` for the command-line tool and `DESIGN.md` for the semantics.

#![warn(missing_docs)]

pub mod device;
pub mod embed;
pub mod error;
pub mod ffi;
pub mod kernels;
pub mod limits;
pub mod model;
pub mod ops;
pub mod pass;
pub mod reference;
pub mod report;
pub mod spec;
pub mod tensor_io;
pub mod workloads;

pub use error::{Error, Result};
