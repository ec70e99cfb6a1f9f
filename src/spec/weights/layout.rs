//! The naming scheme as code (module docs of `spec::weights`): one visitor
//! walks every tensor of a [`Weights`] in a fixed order with its name, shape
//! and initialisation, and zeros, shapes, tensor lists and checks all go
//! through it.

use std::collections::HashMap;

use super::*;
use crate::spec::config::{EmbeddingConfig, HeadConfig};
use crate::{Error, Result};

/// What a tensor is, for random initialisation.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Init {
    /// N(0, 0.02).
    Linear,
    /// Bias: N(0, 0.02).
    Bias,
    /// LN gamma: 1 + N(0, 0.02).
    Gamma,
    /// LN beta: N(0, 0.02).
    Beta,
    /// Pruner LN beta: N(0, 0.5) (gives mean-pooled features some structure).
    PrunerBeta,
    /// Pruner first-layer weights: N(0, 1/sqrt(fan_in)).
    PrunerW1,
    /// Pruner output weights: N(0, 1.5/sqrt(fan_in)).
    PrunerW2,
    /// Constant.
    Const(f32),
}

/// Visits every tensor (name, shape, init, data) of a weights struct, in a
/// fixed order. The single definition of the naming scheme.
pub(super) type Visitor<'a> = dyn FnMut(&str, &[usize], Init, &mut Vec<f32>) + 'a;

fn visit_ln(p: &str, ln: &mut LayerNormWeights, f: &mut Visitor, pruner: bool) {
    let d = ln.gamma.len();
    f(&format!("{p}.weight"), &[d], Init::Gamma, &mut ln.gamma);
    let bi = if pruner { Init::PrunerBeta } else { Init::Beta };
    f(&format!("{p}.bias"), &[d], bi, &mut ln.beta);
}

fn visit_linear(p: &str, l: &mut Linear, f: &mut Visitor) {
    f(
        &format!("{p}.weight"),
        &[l.out, l.inp],
        Init::Linear,
        &mut l.weight,
    );
    f(&format!("{p}.bias"), &[l.out], Init::Bias, &mut l.bias);
}

fn visit_token_pruner(p: &str, t: &mut TokenPrunerWeights, f: &mut Visitor) {
    let (d, hs) = (t.d, t.hs);
    f(
        &format!("{p}.ln_p.weight"),
        &[d],
        Init::Gamma,
        &mut t.ln_p_gamma,
    );
    f(
        &format!("{p}.ln_p.bias"),
        &[d],
        Init::PrunerBeta,
        &mut t.ln_p_beta,
    );
    if let (Some(o), Some(g), Some(b)) = (t.d_other, &mut t.ln_c_gamma, &mut t.ln_c_beta) {
        f(&format!("{p}.ln_c.weight"), &[o], Init::Gamma, g);
        f(&format!("{p}.ln_c.bias"), &[o], Init::PrunerBeta, b);
    }
    f(&format!("{p}.w1x"), &[hs, d], Init::PrunerW1, &mut t.w1x);
    f(&format!("{p}.w1s"), &[hs, d], Init::PrunerW1, &mut t.w1s);
    if let (Some(o), Some(w)) = (t.d_other, &mut t.w1c) {
        f(&format!("{p}.w1c"), &[hs, o], Init::PrunerW1, w);
    }
    f(&format!("{p}.b1"), &[hs], Init::Bias, &mut t.b1);
    f(&format!("{p}.w2"), &[hs], Init::PrunerW2, &mut t.w2);
    let mut b2 = vec![t.b2];
    f(&format!("{p}.b2"), &[1], Init::Const(0.4), &mut b2);
    t.b2 = b2.first().copied().unwrap_or(0.0);
}

fn visit_head_pruner(p: &str, h: &mut HeadPrunerWeights, f: &mut Visitor) {
    let (d, hh, heads) = (h.d, h.hh, h.heads);
    f(
        &format!("{p}.ln_h.weight"),
        &[d],
        Init::Gamma,
        &mut h.ln_h_gamma,
    );
    f(
        &format!("{p}.ln_h.bias"),
        &[d],
        Init::PrunerBeta,
        &mut h.ln_h_beta,
    );
    if let (Some(o), Some(g), Some(b)) = (h.d_other, &mut h.ln_hc_gamma, &mut h.ln_hc_beta) {
        f(&format!("{p}.ln_hc.weight"), &[o], Init::Gamma, g);
        f(&format!("{p}.ln_hc.bias"), &[o], Init::PrunerBeta, b);
    }
    let zin = d + h.d_other.unwrap_or(0);
    f(&format!("{p}.w1"), &[hh, zin], Init::PrunerW1, &mut h.w1);
    f(&format!("{p}.b1"), &[hh], Init::Bias, &mut h.b1);
    f(&format!("{p}.w2"), &[heads, hh], Init::PrunerW2, &mut h.w2);
    f(&format!("{p}.b2"), &[heads], Init::Const(0.6), &mut h.b2);
}

impl Weights {
    /// A lower bound of the bytes the f32 weights of `config` take (its
    /// matrices and embedding tables; vectors and pruners left out),
    /// computed without allocating. Saturates at `u64::MAX`.
    pub fn min_bytes(config: &ModelConfig) -> u64 {
        let mut n: u128 = 0;
        for (si, s) in config.streams.iter().enumerate() {
            let (d, f) = (s.hidden as u128, s.ffn as u128);
            let d_other = config.other_hidden(si).unwrap_or(0) as u128;
            n += match s.embedding {
                EmbeddingConfig::None => 0,
                EmbeddingConfig::Vit {
                    patch_size,
                    channels,
                    ..
                } => {
                    let rows = s.embedding.vit_rows().unwrap_or(0) as u128;
                    d * (channels as u128) * (patch_size as u128).pow(2) + rows * d
                }
                EmbeddingConfig::Bert {
                    vocab_size,
                    max_positions,
                    type_vocab_size,
                    ..
                } => (vocab_size as u128 + max_positions as u128 + type_vocab_size as u128) * d,
                EmbeddingConfig::Transform { input_hidden, .. } => d * input_hidden as u128,
            };
            let layer = 4 * d * d
                + 2 * d * f
                + if config.stream_is_cross(si) {
                    2 * d * d + 2 * d * d_other
                } else {
                    0
                };
            n += layer * s.layers.len() as u128;
            if s.pooler {
                n += d * d;
            }
        }
        let fw = config.feature_width() as u128;
        n += match config.head {
            None => 0,
            Some(HeadConfig::Itm) => 2 * fw,
            Some(HeadConfig::Vqa { labels, .. }) => fw * fw + labels as u128 * fw,
        };
        u64::try_from(n.saturating_mul(4)).unwrap_or(u64::MAX)
    }

    /// Weights of the right shapes for `config`: zeros, LayerNorm gammas 1.
    ///
    /// Refused with [`Error::TooLarge`] before allocating when
    /// [`Weights::min_bytes`] exceeds the memory available
    /// ([`crate::limits::check_memory`]).
    pub fn zeros(config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        crate::limits::check_memory("the model's weights (f32)", Weights::min_bytes(config))?;
        let streams = config
            .streams
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let d = s.hidden;
                let d_other = config.other_hidden(si);
                let cross = config.stream_is_cross(si);
                let embeddings = match s.embedding {
                    EmbeddingConfig::None => EmbeddingWeights::None,
                    EmbeddingConfig::Vit {
                        patch_size,
                        channels,
                        patch_bias,
                        ln,
                        ..
                    } => {
                        let mut patch = Linear::zeros(d, channels * patch_size * patch_size);
                        if !patch_bias {
                            patch.bias.clear();
                        }
                        EmbeddingWeights::Vit {
                            patch,
                            cls: vec![0.0; d],
                            position: vec![0.0; s.embedding.vit_rows().unwrap_or(1) * d],
                            ln: ln.then(|| LayerNormWeights::ones(d)),
                        }
                    }
                    EmbeddingConfig::Transform {
                        input_hidden,
                        type_vector,
                    } => EmbeddingWeights::Transform {
                        transform: Linear::zeros(d, input_hidden),
                        type_vector: type_vector.then(|| vec![0.0; d]),
                    },
                    EmbeddingConfig::Bert {
                        vocab_size,
                        max_positions,
                        type_vocab_size,
                        ..
                    } => EmbeddingWeights::Bert {
                        word: vec![0.0; vocab_size * d],
                        position: vec![0.0; max_positions * d],
                        token_type: vec![0.0; type_vocab_size * d],
                        ln: LayerNormWeights::ones(d),
                    },
                };
                let layers = s
                    .layers
                    .iter()
                    .map(|lc| LayerWeights {
                        token_pruner: lc.token_pruner.as_ref().map(|tp| {
                            TokenPrunerWeights::zeros(d, d_other, s.token_pruner_hidden(tp))
                        }),
                        self_attn: SelfAttentionWeights {
                            qkv: Linear::zeros(3 * d, d),
                            out: Linear::zeros(d, d),
                            ln: LayerNormWeights::ones(d),
                            head_pruner: lc.self_head_pruner.as_ref().map(|hp| {
                                HeadPrunerWeights::zeros(
                                    d,
                                    d_other,
                                    s.head_pruner_hidden(hp),
                                    s.heads,
                                )
                            }),
                        },
                        cross_attn: if cross {
                            let o = d_other.unwrap_or(d);
                            Some(CrossAttentionWeights {
                                q: Linear::zeros(d, d),
                                kv: Linear::zeros(2 * d, o),
                                out: Linear::zeros(d, d),
                                ln: LayerNormWeights::ones(d),
                                head_pruner: lc.cross_head_pruner.as_ref().map(|hp| {
                                    HeadPrunerWeights::zeros(
                                        d,
                                        d_other,
                                        s.head_pruner_hidden(hp),
                                        s.heads,
                                    )
                                }),
                            })
                        } else {
                            None
                        },
                        ffn: FfnWeights {
                            fc1: Linear::zeros(s.ffn, d),
                            fc2: Linear::zeros(d, s.ffn),
                            ln: LayerNormWeights::ones(d),
                        },
                    })
                    .collect();
                StreamWeights {
                    embeddings,
                    layers,
                    final_ln: if s.final_ln {
                        Some(LayerNormWeights::ones(d))
                    } else {
                        None
                    },
                    pooler: s.pooler.then(|| Linear::zeros(d, d)),
                }
            })
            .collect();
        let f = config.feature_width();
        let head = config.head.as_ref().map(|h| {
            Box::new(match *h {
                HeadConfig::Itm => HeadWeights::Itm {
                    fc: Linear::zeros(2, f),
                },
                HeadConfig::Vqa { labels, .. } => HeadWeights::Vqa {
                    fc1: Linear::zeros(f, f),
                    ln: LayerNormWeights::ones(f),
                    fc2: Linear::zeros(labels, f),
                },
            })
        });
        Ok(Weights {
            config: config.clone(),
            streams,
            head,
        })
    }

    pub(super) fn visit(&mut self, f: &mut Visitor) {
        let names: Vec<String> = self.config.streams.iter().map(|s| s.name.clone()).collect();
        for (sw, name) in self.streams.iter_mut().zip(&names) {
            match &mut sw.embeddings {
                EmbeddingWeights::None => {}
                EmbeddingWeights::Vit {
                    patch,
                    cls,
                    position,
                    ln,
                } => {
                    let p = format!("{name}.embeddings.patch");
                    if patch.bias.is_empty() {
                        f(
                            &format!("{p}.weight"),
                            &[patch.out, patch.inp],
                            Init::Linear,
                            &mut patch.weight,
                        );
                    } else {
                        visit_linear(&p, patch, f);
                    }
                    let d = cls.len();
                    f(&format!("{name}.embeddings.cls"), &[d], Init::Linear, cls);
                    f(
                        &format!("{name}.embeddings.position"),
                        &[position.len() / d.max(1), d],
                        Init::Linear,
                        position,
                    );
                    if let Some(ln) = ln {
                        visit_ln(&format!("{name}.embeddings.ln"), ln, f, false);
                    }
                }
                EmbeddingWeights::Transform {
                    transform,
                    type_vector,
                } => {
                    visit_linear(&format!("{name}.embeddings.transform"), transform, f);
                    if let Some(t) = type_vector {
                        let d = t.len();
                        f(
                            &format!("{name}.embeddings.type_vector"),
                            &[d],
                            Init::Linear,
                            t,
                        );
                    }
                }
                EmbeddingWeights::Bert {
                    word,
                    position,
                    token_type,
                    ln,
                } => {
                    let d = ln.gamma.len().max(1);
                    for (n, t) in [
                        ("word", word),
                        ("position", position),
                        ("token_type", token_type),
                    ] {
                        if t.is_empty() && n == "token_type" {
                            continue; // no token types (BLIP's text encoder)
                        }
                        let shape = [t.len() / d, d];
                        f(&format!("{name}.embeddings.{n}"), &shape, Init::Linear, t);
                    }
                    visit_ln(&format!("{name}.embeddings.ln"), ln, f, false);
                }
            }
            for (l, lw) in sw.layers.iter_mut().enumerate() {
                let p = format!("{name}.layers.{l}");
                if let Some(tp) = &mut lw.token_pruner {
                    visit_token_pruner(&format!("{p}.token_pruner"), tp, f);
                }
                let sa = &mut lw.self_attn;
                visit_linear(&format!("{p}.self_attn.qkv"), &mut sa.qkv, f);
                visit_linear(&format!("{p}.self_attn.out"), &mut sa.out, f);
                visit_ln(&format!("{p}.self_attn.ln"), &mut sa.ln, f, false);
                if let Some(hp) = &mut sa.head_pruner {
                    visit_head_pruner(&format!("{p}.self_attn.head_pruner"), hp, f);
                }
                if let Some(ca) = &mut lw.cross_attn {
                    visit_linear(&format!("{p}.cross_attn.q"), &mut ca.q, f);
                    visit_linear(&format!("{p}.cross_attn.kv"), &mut ca.kv, f);
                    visit_linear(&format!("{p}.cross_attn.out"), &mut ca.out, f);
                    visit_ln(&format!("{p}.cross_attn.ln"), &mut ca.ln, f, false);
                    if let Some(hp) = &mut ca.head_pruner {
                        visit_head_pruner(&format!("{p}.cross_attn.head_pruner"), hp, f);
                    }
                }
                visit_linear(&format!("{p}.ffn.fc1"), &mut lw.ffn.fc1, f);
                visit_linear(&format!("{p}.ffn.fc2"), &mut lw.ffn.fc2, f);
                visit_ln(&format!("{p}.ffn.ln"), &mut lw.ffn.ln, f, false);
            }
            if let Some(ln) = &mut sw.final_ln {
                visit_ln(&format!("{name}.final_ln"), ln, f, false);
            }
            if let Some(p) = &mut sw.pooler {
                visit_linear(&format!("{name}.pooler"), p, f);
            }
        }
        match self.head.as_deref_mut() {
            None => {}
            Some(HeadWeights::Itm { fc }) => visit_linear("head.fc", fc, f),
            Some(HeadWeights::Vqa { fc1, ln, fc2 }) => {
                visit_linear("head.fc1", fc1, f);
                visit_ln("head.ln", ln, f, false);
                visit_linear("head.fc2", fc2, f);
            }
        }
    }

    /// Element counts of every tensor, in the order of the naming scheme
    /// (a read-only mirror of the visitor, for [`Weights::check`]).
    fn data_lens(&self) -> Vec<usize> {
        fn ln(v: &mut Vec<usize>, l: &LayerNormWeights) {
            v.extend([l.gamma.len(), l.beta.len()]);
        }
        fn lin(v: &mut Vec<usize>, l: &Linear) {
            v.extend([l.weight.len(), l.bias.len()]);
        }
        fn hp(v: &mut Vec<usize>, h: &HeadPrunerWeights) {
            v.extend([h.ln_h_gamma.len(), h.ln_h_beta.len()]);
            if let (Some(_), Some(g), Some(b)) = (h.d_other, &h.ln_hc_gamma, &h.ln_hc_beta) {
                v.extend([g.len(), b.len()]);
            }
            v.extend([h.w1.len(), h.b1.len(), h.w2.len(), h.b2.len()]);
        }
        let mut v = Vec::new();
        for sw in &self.streams {
            match &sw.embeddings {
                EmbeddingWeights::None => {}
                EmbeddingWeights::Vit {
                    patch,
                    cls,
                    position,
                    ln: l,
                } => {
                    if patch.bias.is_empty() {
                        v.push(patch.weight.len());
                    } else {
                        lin(&mut v, patch);
                    }
                    v.extend([cls.len(), position.len()]);
                    if let Some(l) = l {
                        ln(&mut v, l);
                    }
                }
                EmbeddingWeights::Bert {
                    word,
                    position,
                    token_type,
                    ln: l,
                } => {
                    v.extend([word.len(), position.len()]);
                    if !token_type.is_empty() {
                        v.push(token_type.len());
                    }
                    ln(&mut v, l);
                }
                EmbeddingWeights::Transform {
                    transform,
                    type_vector,
                } => {
                    lin(&mut v, transform);
                    if let Some(t) = type_vector {
                        v.push(t.len());
                    }
                }
            }
            for lw in &sw.layers {
                if let Some(t) = &lw.token_pruner {
                    v.extend([t.ln_p_gamma.len(), t.ln_p_beta.len()]);
                    if let (Some(_), Some(g), Some(b)) = (t.d_other, &t.ln_c_gamma, &t.ln_c_beta) {
                        v.extend([g.len(), b.len()]);
                    }
                    v.extend([t.w1x.len(), t.w1s.len()]);
                    if let (Some(_), Some(w)) = (t.d_other, &t.w1c) {
                        v.push(w.len());
                    }
                    v.extend([t.b1.len(), t.w2.len(), 1]);
                }
                lin(&mut v, &lw.self_attn.qkv);
                lin(&mut v, &lw.self_attn.out);
                ln(&mut v, &lw.self_attn.ln);
                if let Some(h) = &lw.self_attn.head_pruner {
                    hp(&mut v, h);
                }
                if let Some(ca) = &lw.cross_attn {
                    lin(&mut v, &ca.q);
                    lin(&mut v, &ca.kv);
                    lin(&mut v, &ca.out);
                    ln(&mut v, &ca.ln);
                    if let Some(h) = &ca.head_pruner {
                        hp(&mut v, h);
                    }
                }
                lin(&mut v, &lw.ffn.fc1);
                lin(&mut v, &lw.ffn.fc2);
                ln(&mut v, &lw.ffn.ln);
            }
            if let Some(l) = &sw.final_ln {
                ln(&mut v, l);
            }
            if let Some(p) = &sw.pooler {
                lin(&mut v, p);
            }
        }
        match self.head.as_deref() {
            None => {}
            Some(HeadWeights::Itm { fc }) => lin(&mut v, fc),
            Some(HeadWeights::Vqa { fc1, ln: l, fc2 }) => {
                lin(&mut v, fc1);
                ln(&mut v, l);
                lin(&mut v, fc2);
            }
        }
        v
    }

    /// Checks that every tensor of these weights has the size its config
    /// asks for (weights built by hand or modified through the public fields),
    /// listing every mismatch in [`Error::Weights`]. [`Weights::zeros`],
    /// [`Weights::random`] and the loaders always produce consistent weights.
    pub fn check(&self) -> Result<()> {
        let specs = Self::tensor_specs(&self.config)?;
        let lens = self.data_lens();
        let mut errs = Vec::new();
        if specs.len() != lens.len() {
            errs.push(format!(
                "weights hold {} tensors but the config needs {} (pruners or layers differ)",
                lens.len(),
                specs.len()
            ));
        } else {
            for ((name, shape), len) in specs.iter().zip(&lens) {
                let want: usize = shape.iter().product();
                if want != *len {
                    errs.push(format!(
                        "tensor `{name}` holds {len} values, expected {want} ({shape:?})"
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Weights(errs))
        }
    }

    /// Every tensor name the config needs, with its shape, in a fixed order.
    pub fn tensor_specs(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let mut w = Weights::zeros(config)?;
        let mut out = Vec::new();
        w.visit(&mut |n, s, _, _| out.push((n.to_string(), s.to_vec())));
        Ok(out)
    }

    /// Every tensor as `(name, shape, data)`, in the scheme's order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut me = self.clone();
        let mut out = Vec::new();
        me.visit(&mut |n, s, _, d| out.push((n.to_string(), s.to_vec(), d.clone())));
        out
    }
}

/// Tensors by name, for tests and tools that build files by hand.
pub fn tensor_map(w: &Weights) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    w.tensors()
        .into_iter()
        .map(|(n, s, d)| (n, (s, d)))
        .collect()
}
