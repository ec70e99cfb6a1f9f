//! [`ModelConfig::validate`]: every constraint a config must meet before
//! either backend uses it (stream count per kind, sizes, embeddings,
//! pruner placement, stages), all problems reported at once.

use super::config::*;
use crate::{Error, Result};

impl ModelConfig {
    /// Checks every constraint, reporting the first problem found as [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        let want = match self.kind {
            ModelKind::CoAttention | ModelKind::Blip => 2,
            ModelKind::Meter => 4,
            _ => 1,
        };
        if self.streams.len() != want {
            errs.push(format!(
                "model kind {:?} needs {want} stream(s), config has {}",
                self.kind,
                self.streams.len()
            ));
        }
        if let ModelKind::CrossEncoder { context_hidden } = self.kind {
            if context_hidden == 0 {
                errs.push("context_hidden must be positive".into());
            }
        }
        let lockstep = match self.kind {
            ModelKind::CoAttention => Some((0, 1)),
            ModelKind::Meter => Some((2, 3)),
            _ => None,
        };
        if let (Some((a, b)), true) = (lockstep, self.streams.len() == want) {
            if self.streams[a].layers.len() != self.streams[b].layers.len() {
                errs.push(format!(
                    "co-attention streams must have the same number of layers ({} vs {})",
                    self.streams[a].layers.len(),
                    self.streams[b].layers.len()
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.streams {
            if !names.insert(s.name.as_str()) {
                errs.push(format!("stream names must differ (`{}` twice)", s.name));
            }
            if s.name == "head" || s.name == "flops" {
                errs.push(format!(
                    "stream name `{}` is reserved (tensor names `head.*`, `flops.*`)",
                    s.name
                ));
            }
        }
        if self.streams.len() == want {
            let emb = |i: usize| &self.streams[i].embedding;
            let name = |i: usize| &self.streams[i].name;
            match self.kind {
                ModelKind::Blip => {
                    if !matches!(emb(0), EmbeddingConfig::Vit { .. }) {
                        errs.push(format!(
                            "BLIP: stream 0 (`{}`) is the image encoder and needs a ViT embedding",
                            name(0)
                        ));
                    }
                    if !matches!(emb(1), EmbeddingConfig::Bert { .. }) {
                        errs.push(format!(
                            "BLIP: stream 1 (`{}`) is the text encoder and needs a BERT embedding",
                            name(1)
                        ));
                    }
                }
                ModelKind::Meter => {
                    if !matches!(emb(0), EmbeddingConfig::Bert { .. }) {
                        errs.push(format!(
                            "METER: stream 0 (`{}`) is the text encoder and needs a BERT embedding",
                            name(0)
                        ));
                    }
                    if !matches!(emb(1), EmbeddingConfig::Vit { .. }) {
                        errs.push(format!(
                            "METER: stream 1 (`{}`) is the image encoder and needs a ViT embedding",
                            name(1)
                        ));
                    }
                    for (f, src) in [(2, 0), (3, 1)] {
                        match *emb(f) {
                            EmbeddingConfig::Transform { input_hidden, .. }
                                if input_hidden == self.streams[src].hidden => {}
                            _ => errs.push(format!(
                                "METER: fusion stream {f} (`{}`) needs a transform embedding \
                                 with input_hidden = {} (the hidden size of `{}`)",
                                name(f),
                                self.streams[src].hidden,
                                name(src)
                            )),
                        }
                    }
                }
                _ => {}
            }
        }
        match &self.head {
            Some(HeadConfig::Vqa { labels, ln_eps }) => {
                if *labels == 0 {
                    errs.push("the VQA head needs labels > 0".into());
                }
                if !(ln_eps.is_finite() && *ln_eps > 0.0) {
                    errs.push("the VQA head's ln_eps must be positive and finite".into());
                }
            }
            Some(HeadConfig::Itm) | None => {}
        }
        for (si, s) in self.streams.iter().enumerate() {
            let n = &s.name;
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                errs.push(format!(
                    "stream name `{n}` must be non-empty ASCII letters, digits or `_`"
                ));
            }
            if s.hidden == 0 || s.heads == 0 || s.ffn == 0 {
                errs.push(format!(
                    "stream `{n}`: hidden, heads and ffn must be positive"
                ));
            } else if s.hidden % s.heads != 0 {
                errs.push(format!(
                    "stream `{n}`: heads ({}) must divide hidden ({})",
                    s.heads, s.hidden
                ));
            }
            if !(s.ln_eps.is_finite() && s.ln_eps > 0.0) {
                errs.push(format!("stream `{n}`: ln_eps must be positive and finite"));
            }
            match s.embedding {
                EmbeddingConfig::None => {}
                EmbeddingConfig::Transform { input_hidden, .. } => {
                    if input_hidden == 0 {
                        errs.push(format!(
                            "stream `{n}`: the input transform's input_hidden must be positive"
                        ));
                    }
                }
                EmbeddingConfig::Vit {
                    image_size,
                    patch_size,
                    channels,
                    ..
                } => {
                    if patch_size == 0 || channels == 0 || image_size == 0 {
                        errs.push(format!("stream `{n}`: ViT sizes must be positive"));
                    } else if image_size % patch_size != 0 {
                        errs.push(format!(
                            "stream `{n}`: patch_size {patch_size} must divide image_size {image_size}"
                        ));
                    }
                }
                // type_vocab_size 0: no token types (BLIP's text encoder).
                EmbeddingConfig::Bert {
                    vocab_size,
                    max_positions,
                    position_offset,
                    ..
                } => {
                    if vocab_size == 0 || max_positions == 0 {
                        errs.push(format!(
                            "stream `{n}`: vocab_size and max_positions must be positive"
                        ));
                    } else if position_offset >= max_positions {
                        errs.push(format!(
                            "stream `{n}`: position_offset {position_offset} leaves no position \
                             for a token (max_positions {max_positions}; a sequence's first \
                             token takes position {position_offset})"
                        ));
                    }
                }
            }
            if s.layers.is_empty() {
                errs.push(format!(
                    "stream `{n}` has no layers (`layers` is empty; a stream needs at least one)"
                ));
            }
            for (l, lc) in s.layers.iter().enumerate() {
                if let Some(tp) = &lc.token_pruner {
                    match tp.rule {
                        KeepRule::Threshold { tau } if !(0.0..=1.0).contains(&tau) => errs.push(
                            format!("stream `{n}` layer {l}: threshold tau {tau} not in [0, 1]"),
                        ),
                        KeepRule::Budget { rho } if !(rho > 0.0 && rho <= 1.0) => errs.push(
                            format!("stream `{n}` layer {l}: budget rho {rho} not in (0, 1]"),
                        ),
                        _ => {}
                    }
                    if s.token_pruner_hidden(tp) == 0 {
                        errs.push(format!("stream `{n}` layer {l}: token pruner hidden is 0"));
                    }
                }
                for (what, hp) in [
                    ("self", &lc.self_head_pruner),
                    ("cross", &lc.cross_head_pruner),
                ] {
                    if let Some(hp) = hp {
                        if !(0.0..=1.0).contains(&hp.tau_h) {
                            errs.push(format!(
                                "stream `{n}` layer {l}: {what} head pruner tau_h {} not in [0, 1]",
                                hp.tau_h
                            ));
                        }
                        if hp.min_heads > s.heads {
                            errs.push(format!(
                                "stream `{n}` layer {l}: {what} head pruner min_heads {} exceeds heads {}",
                                hp.min_heads, s.heads
                            ));
                        }
                        if s.head_pruner_hidden(hp) == 0 {
                            errs.push(format!(
                                "stream `{n}` layer {l}: {what} head pruner hidden is 0"
                            ));
                        }
                    }
                }
                if lc.cross_head_pruner.is_some() && !self.stream_is_cross(si) {
                    errs.push(format!(
                        "stream `{n}` layer {l}: cross head pruner on a model without cross-attention"
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(errs.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::preset;

    #[test]
    fn heads_must_divide_hidden() {
        let mut c = preset("tiny-bert").unwrap();
        c.streams[0].heads = 5;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn whole_models_are_validated() {
        let mut b = preset("tiny-blip-full").unwrap();
        b.streams.swap(0, 1);
        let e = b.validate().unwrap_err().to_string();
        assert!(
            e.contains("needs a ViT embedding") && e.contains("needs a BERT"),
            "{e}"
        );
        let mut m = preset("tiny-meter-full").unwrap();
        m.streams[2].embedding = EmbeddingConfig::Transform {
            input_hidden: 48,
            type_vector: true,
        };
        m.streams[3].layers.pop();
        m.streams[0].layers[0].cross_head_pruner = Some(HeadPrunerConfig {
            tau_h: 0.5,
            min_heads: 1,
            hidden: None,
        });
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("input_hidden = 32"), "{e}");
        assert!(e.contains("same number of layers"), "{e}");
        assert!(e.contains("cross head pruner"), "{e}");
        let mut m = preset("tiny-meter-full").unwrap();
        m.streams[3].name = "text".into();
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("`text` twice"), "{e}");
        // Unknown fields of a head are refused.
        let j = preset("tiny-meter-full")
            .unwrap()
            .to_json()
            .unwrap()
            .replace("\"labels\": 10", "\"labels\": 10, \"lables\": 3");
        assert!(ModelConfig::from_json(&j).is_err());
    }

    #[test]
    fn layerless_streams_and_offsets_past_the_positions_are_refused() {
        let mut c = preset("tiny-bert").unwrap();
        c.streams[0].layers.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("has no layers"), "{e}");
        let mut c = preset("tiny-bert").unwrap();
        if let EmbeddingConfig::Bert {
            position_offset,
            max_positions,
            ..
        } = &mut c.streams[0].embedding
        {
            *position_offset = *max_positions;
        }
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("position_offset 64 leaves no position"), "{e}");
    }
}
