//! A whole pruned forward pass on the exact CPU reference: the `tiny-meter`
//! preset (2 co-attention streams, 3 layers, token pruners at layers 1 and
//! 2), seeded random weights and synthetic ragged inputs. Needs no GPU.
//!
//! ```sh
//! cargo run --example 02_forward_cpu
//! ```

use smarttrim::reference::{forward, synthetic_inputs, ForwardOptions};
use smarttrim::spec::{preset, Weights};

fn main() -> smarttrim::Result<()> {
    let cfg = preset("tiny-meter")?;
    let weights = Weights::random(&cfg, 42)?;
    let batch = 3;
    let inputs = synthetic_inputs(&cfg, batch, 7, true);
    let out = forward(&weights, &inputs, &ForwardOptions::default())?;
    for (l, per_stream) in out.stats().iter().enumerate() {
        for (s, (kept, self_heads, cross_heads)) in per_stream.iter().enumerate() {
            println!(
                "layer {l} {:>5}: kept rows {kept:?}, active self heads {self_heads:?}, \
                 cross heads {cross_heads:?}",
                cfg.streams[s].name
            );
        }
    }
    for (i, f) in out.flops.iter().enumerate() {
        println!(
            "instance {i}: {:.1}% of the dense model FLOPs",
            100.0 * f.pruned.model as f64 / f.dense.model as f64
        );
    }
    Ok(())
}
