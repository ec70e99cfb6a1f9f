//! Seeded random weights ([`Weights::random`]) and the generator behind
//! them ([`Rng`]).

use rayon::prelude::*;

use super::layout::Init;
use super::*;
use crate::Result;

/// Elements per independently seeded chunk in [`Weights::random`].
const RANDOM_CHUNK: usize = 1 << 16;

impl Weights {
    /// Deterministic random weights for `config` from `seed`.
    ///
    /// Each tensor draws from its own generator seeded by `seed` and the
    /// tensor's name, so values do not depend on the order of tensors.
    /// Linears and embeddings N(0, 0.02); biases N(0, 0.02); LayerNorm gamma
    /// 1 + N(0, 0.02), beta N(0, 0.02). Pruners get larger scales so that
    /// their scores spread: LN beta N(0, 0.5), first layer N(0, 1/sqrt(in)),
    /// output N(0, 1.5/sqrt(in)), token pruner `b2 = 0.4` and head pruner
    /// `b2 = 0.6`, so a threshold of 0.5 keeps a nontrivial fraction (about
    /// 55-65% of tokens, most heads).
    pub fn random(config: &ModelConfig, seed: u64) -> Result<Self> {
        let mut w = Weights::zeros(config)?;
        w.visit(&mut |name, shape, init, data| {
            let base = seed ^ fnv1a(name.as_bytes());
            let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
            // Fixed-size chunks, each with its own generator: the values do
            // not depend on the number of threads.
            data.par_chunks_mut(RANDOM_CHUNK)
                .enumerate()
                .for_each(|(ci, chunk)| {
                    let mut rng = Rng::new(Rng::new(base ^ ci as u64).next_u64());
                    for x in chunk.iter_mut() {
                        *x = match init {
                            Init::Linear | Init::Bias | Init::Beta => 0.02 * rng.normal(),
                            Init::Gamma => 1.0 + 0.02 * rng.normal(),
                            Init::PrunerBeta => 0.5 * rng.normal(),
                            Init::PrunerW1 => rng.normal() / fan_in.sqrt(),
                            Init::PrunerW2 => 1.5 * rng.normal() / fan_in.sqrt(),
                            Init::Const(c) => c,
                        };
                    }
                });
        });
        Ok(w)
    }
}

/// FNV-1a hash of a name (stable across platforms and runs).
fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A small deterministic generator: splitmix64 with Box-Muller normals.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    spare: Option<f32>,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare: None,
        }
    }

    /// Next 64 random bits (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some((r * t.sin()) as f32);
        (r * t.cos()) as f32
    }

    /// `n` standard normals.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}
