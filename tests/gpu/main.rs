//! GPU tests: every kernel against the CPU reference. One integration-test
//! target, one module per kernel family or model, so the GPU bundle carries a
//! single executable.
//!
//! Without a usable GPU each test prints one line saying it was skipped and
//! why, and passes; with `SMARTTRIM_REQUIRE_GPU=1` the same situation fails.

mod attention;
mod common;
mod compact;
mod concurrency;
mod elementwise;
mod embed;
mod emu;
mod emulator;
mod faults;
mod forward;
mod gemm;
mod layernorm;
mod minilm;
mod score;
