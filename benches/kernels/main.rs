//! Criterion benchmarks of the kernel families, one group per kernel, each
//! measuring its baseline in the same run. Timing uses `iter_custom` with a
//! device synchronisation inside the timed region. Without a usable GPU the
//! groups print that they were skipped. The group `forward` times the whole
//! forward pass, dense against pruning schedules (`forward.rs`).

use criterion::{criterion_group, criterion_main, Criterion};

mod attention;
mod common;
mod forward;
mod prune;

fn layernorm(c: &mut Criterion) {
    common::layernorm_group(c);
}

fn compact(c: &mut Criterion) {
    prune::compact_group(c);
}

fn score(c: &mut Criterion) {
    prune::score_group(c);
}

fn attention(c: &mut Criterion) {
    attention::attention_group(c);
}

fn forward(c: &mut Criterion) {
    forward::forward_group(c);
}

criterion_group!(benches, layernorm, compact, score, attention, forward);
criterion_main!(benches);
