//! Benchmark workloads and pruning schedules: what `smarttrim bench` and the
//! criterion group `forward` run, the same for the GPU pass and the CPU
//! reference.
//!
//! A [`Workload`] is a built-in model ([`crate::spec::preset`], for the small
//! ones its GPU-runnable [`crate::model::gpu_variant`]) plus fixed input
//! lengths; its inputs are seeded random rows or pixels ([`Workload::inputs`],
//! never zeros) and its weights seeded random ([`Workload::weights`]).
//!
//! A [`Schedule`] says which pruners run:
//!
//! - `dense`: the model with no pruner at all, run through the pruned code
//!   path (`dense: false`), so its time against the `dense: true` pass shows
//!   what the pruning machinery costs when it prunes nothing;
//! - `budget-70`, `budget-50`, `budget-35`: every token pruner switched to
//!   the budget rule (`k = max(1, ceil(rho * n))` rows per sequence) with
//!   one common `rho`, found by bisection
//!   ([`crate::spec::schedule::solve_rho`]) so that the pass's model FLOPs
//!   are 70 / 50 / 35 % of the dense pass's for the workload's input lengths.
//!   **Head pruners are removed** in these schedules: the rows kept are then
//!   a pure function of the lengths, so the work (and its FLOPs) is known on
//!   the host before running ([`Plan::predicted_flops_ratio`]), whatever the
//!   weights. A target the model cannot reach (layers before the first
//!   pruner already cost more, say) gets the closest reachable ratio, and
//!   [`Plan::fit`] says so;
//! - `threshold`: the preset's own pruners (threshold rule, head pruners) on
//!   the seeded random pruner weights; the work depends on the data, so the
//!   FLOPs ratio is measured from the run's statistics.

use crate::reference::{Inputs, StreamInput};
use crate::spec::schedule::{
    budget_config, budget_flops, flops_from_stats, model_flops_ratio, solve_rho, without_pruners,
    LayerStats, Lengths, RhoFit,
};
use crate::spec::{preset, EmbeddingConfig, ModelConfig, ModelKind, Rng, Weights};
use crate::{Error, Result};

/// A benchmark workload: a built-in model and fixed input lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// The workload's name (`meter-vqa`, `blip-vit`, ...).
    pub name: &'static str,
    /// The built-in model ([`crate::spec::preset`]).
    pub preset: &'static str,
    /// Run the preset's [`crate::model::gpu_variant`] (head size 32, token
    /// pruner width a multiple of 64), on both backends, so that the GPU
    /// kernels support it: needed for the `tiny-*` presets.
    pub gpu_variant: bool,
    /// Rows entering the first layer, per stream, for every sequence (a ViT
    /// stream's count must equal its `1 + patches`; a stream fed by another,
    /// METER's fusion streams, its source's).
    pub rows: &'static [usize],
    /// A cross encoder's context rows per sequence (`None` for other models).
    pub context_rows: Option<usize>,
    /// One line on what it is.
    pub about: &'static str,
}

/// Every workload.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "meter-vqa",
        preset: "meter",
        gpu_variant: false,
        rows: &[40, 577],
        context_rows: None,
        about: "METER fusion encoder at VQA shapes: text 40 + image 577 rows entering \
                (packed random rows; the fusion encoder has no embeddings)",
    },
    Workload {
        name: "blip-vit",
        preset: "blip-vit",
        gpu_variant: false,
        rows: &[577],
        context_rows: None,
        about: "BLIP's ViT-B/16 image encoder at 384 px: 577 tokens from random pixels",
    },
    Workload {
        name: "blip-itm",
        preset: "blip",
        gpu_variant: false,
        rows: &[577, 40],
        context_rows: None,
        about: "BLIP ITM end to end at 384 px: ViT-B/16 over 577 patches from random pixels \
                (pruned), then the 12-layer text encoder over 40 tokens cross-attending the \
                pruned image rows, and the ITM head",
    },
    Workload {
        name: "meter-full-vqa",
        preset: "meter-full",
        gpu_variant: false,
        rows: &[40, 1297, 40, 1297],
        context_rows: None,
        about: "METER VQA end to end at 576 px: RoBERTa over 40 tokens, CLIP ViT-B/16 (11 \
                layers) over 1297 patches, the pruned 6-layer fusion encoder, poolers and the \
                VQA head",
    },
    Workload {
        name: "tiny-meter",
        preset: "tiny-meter",
        gpu_variant: true,
        rows: &[12, 17],
        context_rows: None,
        about: "tiny-meter's GPU variant (hidden 64, 2 heads, 3 layers), text 12 + image 17 rows",
    },
    Workload {
        name: "tiny-blip-full",
        preset: "tiny-blip-full",
        gpu_variant: true,
        rows: &[17, 12],
        context_rows: None,
        about: "tiny-blip-full's GPU variant (hidden 64, 2 heads): 32 px images (17 rows), \
                then 12 text tokens over the pruned image rows, ITM head",
    },
    Workload {
        name: "tiny-meter-full",
        preset: "tiny-meter-full",
        gpu_variant: true,
        rows: &[12, 17, 12, 17],
        context_rows: None,
        about: "tiny-meter-full's GPU variant: RoBERTa 12 tokens and a CLIP ViT over 17 rows \
                (hidden 32), the fusion encoder (hidden 64), poolers, VQA head",
    },
    Workload {
        name: "tiny-vit",
        preset: "tiny-vit",
        gpu_variant: true,
        rows: &[17],
        context_rows: None,
        about: "tiny-vit's GPU variant (hidden 64, 2 heads, 3 layers), 32 px images: 17 tokens",
    },
];

/// The workloads `smarttrim bench` runs when none is named.
pub const DEFAULT_WORKLOADS: &[&str] = &["meter-vqa", "blip-vit"];

/// The workload called `name`, or an [`Error::InvalidArgument`] listing the
/// known names.
pub fn workload(name: &str) -> Result<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name).ok_or_else(|| {
        Error::invalid(
            "workload",
            format!(
                "unknown workload `{name}`{}; known workloads: {}",
                crate::spec::parse::nearest(
                    name,
                    &WORKLOADS.iter().map(|w| w.name).collect::<Vec<_>>()
                )
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default(),
                WORKLOADS
                    .iter()
                    .map(|w| w.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

impl Workload {
    /// The model config (the preset, or its GPU variant), validated against
    /// the workload's lengths.
    pub fn config(&self) -> Result<ModelConfig> {
        let base = preset(self.preset)?;
        let cfg = if self.gpu_variant {
            crate::model::gpu_variant(&base)
        } else {
            base
        };
        cfg.validate()?;
        if cfg.streams.len() != self.rows.len() {
            return Err(Error::Config(format!(
                "workload `{}`: {} row counts for {} streams",
                self.name,
                self.rows.len(),
                cfg.streams.len()
            )));
        }
        for stage in cfg.stages() {
            if let crate::spec::StageInput::RowsFrom(srcs) = &stage.input {
                for (&s, &src) in stage.streams.iter().zip(srcs) {
                    if self.rows[s] != self.rows[src] {
                        return Err(Error::Config(format!(
                            "workload `{}`: stream `{}` takes the rows of `{}` ({}), not {}",
                            self.name,
                            cfg.streams[s].name,
                            cfg.streams[src].name,
                            self.rows[src],
                            self.rows[s]
                        )));
                    }
                }
            }
        }
        for (s, &n) in cfg.streams.iter().zip(self.rows) {
            if let Some(v) = s.embedding.vit_rows() {
                if v != n {
                    return Err(Error::Config(format!(
                        "workload `{}`: stream `{}` has {v} rows per image, not {n}",
                        self.name, s.name
                    )));
                }
            }
            if n == 0 {
                return Err(Error::Config(format!(
                    "workload `{}`: stream `{}` has no rows",
                    self.name, s.name
                )));
            }
        }
        if matches!(cfg.kind, ModelKind::CrossEncoder { .. }) != self.context_rows.is_some() {
            return Err(Error::Config(format!(
                "workload `{}`: a context length is given iff the model is a cross encoder",
                self.name
            )));
        }
        Ok(cfg)
    }

    /// The input lengths of a batch of `batch` sequences.
    pub fn lengths(&self, batch: usize) -> Lengths {
        Lengths::uniform(self.rows, self.context_rows, batch)
    }

    /// Seeded random weights for [`Workload::config`], pruners included
    /// ([`Weights::random`]).
    pub fn weights(&self, seed: u64) -> Result<Weights> {
        Weights::random(&self.config()?, seed)
    }

    /// Deterministic inputs for `batch` sequences from `seed`: packed rows
    /// and pixels `N(0, 1)`, token ids uniform in `1..vocab` (never zeros).
    pub fn inputs(&self, batch: usize, seed: u64) -> Result<Inputs> {
        let cfg = self.config()?;
        let mut rng = Rng::new(seed ^ 0x5EED_B3AC_0000_0001);
        let cu = |n: usize| -> Vec<i32> { (0..=batch).map(|b| (b * n) as i32).collect() };
        let streams = cfg
            .input_streams()
            .into_iter()
            .map(|i| (&cfg.streams[i], &self.rows[i]))
            .map(|(s, &n)| match s.embedding {
                EmbeddingConfig::None | EmbeddingConfig::Transform { .. } => StreamInput::Packed {
                    rows: (0..batch * n * s.embedding.input_width(s.hidden).unwrap_or(s.hidden))
                        .map(|_| rng.normal())
                        .collect(),
                    cu_seqlens: cu(n),
                },
                EmbeddingConfig::Vit {
                    image_size,
                    channels,
                    ..
                } => StreamInput::Pixels {
                    pixels: (0..batch * channels * image_size * image_size)
                        .map(|_| rng.normal())
                        .collect(),
                    batch,
                },
                EmbeddingConfig::Bert { vocab_size, .. } => StreamInput::Tokens {
                    ids: (0..batch * n)
                        .map(|_| 1 + (rng.next_u64() % (vocab_size.max(2) as u64 - 1)) as u32)
                        .collect(),
                    type_ids: None,
                    cu_seqlens: cu(n),
                },
            })
            .collect();
        let context = match (cfg.kind, self.context_rows) {
            (ModelKind::CrossEncoder { context_hidden }, Some(m)) => Some((
                (0..batch * m * context_hidden)
                    .map(|_| rng.normal())
                    .collect(),
                cu(m),
            )),
            _ => None,
        };
        Ok(Inputs { streams, context })
    }

    /// The config and, for budget schedules, the fitted `rho` of `schedule`
    /// on this workload.
    pub fn plan(&self, schedule: Schedule) -> Result<Plan> {
        let cfg = self.config()?;
        let lengths = self.lengths(1);
        let (config, fit) = match schedule {
            Schedule::Dense => (without_pruners(&cfg), None),
            Schedule::Threshold => (cfg, None),
            Schedule::Budget { percent } => {
                let fit = solve_rho(&cfg, &lengths, percent as f64 / 100.0)?;
                (budget_config(&cfg, fit.rho), Some(fit))
            }
        };
        Ok(Plan {
            workload: *self,
            schedule,
            config,
            fit,
        })
    }
}

/// Which pruners a benchmarked pass runs (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// No pruner at all (through the pruned code path).
    Dense,
    /// Every token pruner on the budget rule with a common `rho` giving
    /// `percent` % of the dense model FLOPs; no head pruner.
    Budget {
        /// The target model FLOPs, in percent of the dense pass.
        percent: u32,
    },
    /// The preset's own pruners (threshold rule, head pruners).
    Threshold,
}

/// Every schedule, in table order.
pub const SCHEDULES: &[Schedule] = &[
    Schedule::Dense,
    Schedule::Budget { percent: 70 },
    Schedule::Budget { percent: 50 },
    Schedule::Budget { percent: 35 },
    Schedule::Threshold,
];

impl Schedule {
    /// The schedule's name: `dense`, `budget-<percent>`, `threshold`.
    pub fn name(&self) -> String {
        match self {
            Schedule::Dense => "dense".into(),
            Schedule::Budget { percent } => format!("budget-{percent}"),
            Schedule::Threshold => "threshold".into(),
        }
    }

    /// Parses a name: `dense`, `threshold`, or `budget-P` for any `P` in
    /// `1..=100` (the three of [`SCHEDULES`] are the defaults).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "dense" => Ok(Schedule::Dense),
            "threshold" => Ok(Schedule::Threshold),
            _ => match name.strip_prefix("budget-").map(str::parse::<u32>) {
                Some(Ok(p)) if (1..=100).contains(&p) => Ok(Schedule::Budget { percent: p }),
                _ => Err(Error::invalid(
                    "schedule",
                    format!(
                        "unknown schedule `{name}`; known: dense, budget-70, budget-50, \
                         budget-35 (any budget-P with P in 1..=100), threshold"
                    ),
                )),
            },
        }
    }

    /// The target model FLOPs ratio of a budget schedule.
    pub fn target(&self) -> Option<f64> {
        match self {
            Schedule::Budget { percent } => Some(*percent as f64 / 100.0),
            _ => None,
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A schedule resolved on a workload: the config its pruned pass runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The workload.
    pub workload: Workload,
    /// The schedule.
    pub schedule: Schedule,
    /// The config of the pruned pass (pruners as the schedule says).
    pub config: ModelConfig,
    /// A budget schedule's fitted `rho`, the ratio it gives, and whether the
    /// target was reachable.
    pub fit: Option<RhoFit>,
}

impl Plan {
    /// Weights for [`Plan::config`] from the workload's weights (`base`,
    /// from [`Workload::weights`]): the same tensors, without the pruners
    /// the schedule drops.
    pub fn weights(&self, base: &Weights) -> Result<Weights> {
        let mut w = base.clone();
        if w.streams.len() != self.config.streams.len() {
            return Err(Error::Weights(vec![format!(
                "weights hold {} streams, the plan's config {}",
                w.streams.len(),
                self.config.streams.len()
            )]));
        }
        for (sw, sc) in w.streams.iter_mut().zip(&self.config.streams) {
            for (lw, lc) in sw.layers.iter_mut().zip(&sc.layers) {
                if lc.token_pruner.is_none() {
                    lw.token_pruner = None;
                }
                if lc.self_head_pruner.is_none() {
                    lw.self_attn.head_pruner = None;
                }
                if lc.cross_head_pruner.is_none() {
                    if let Some(c) = &mut lw.cross_attn {
                        c.head_pruner = None;
                    }
                }
            }
        }
        w.config = self.config.clone();
        w.check()?;
        Ok(w)
    }

    /// The model FLOPs ratio computed on the host, without running the
    /// model: for `dense` 1.0, for budget schedules from the lengths
    /// ([`crate::spec::schedule::budget_flops`]); `None` for `threshold`
    /// (data dependent).
    pub fn predicted_flops_ratio(&self, batch: usize) -> Result<Option<f64>> {
        match self.schedule {
            Schedule::Threshold => Ok(None),
            _ => Ok(Some(model_flops_ratio(&budget_flops(
                &self.config,
                &self.workload.lengths(batch),
            )?))),
        }
    }

    /// The model FLOPs ratio of a pass of this plan from its statistics
    /// (`[layer][stream]`, e.g. `model::GpuOutputs::stats`), over a batch of
    /// `batch` of the workload's inputs.
    pub fn flops_ratio_from_stats(&self, batch: usize, stats: &[Vec<LayerStats>]) -> Result<f64> {
        Ok(model_flops_ratio(&flops_from_stats(
            &self.config,
            &self.workload.lengths(batch),
            stats,
            false,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{forward, ForwardOptions};

    #[test]
    fn workloads_are_consistent() {
        for w in WORKLOADS {
            let cfg = w.config().unwrap();
            if w.gpu_variant {
                crate::model::check_supported(&cfg).unwrap();
            }
            let inputs = w.inputs(2, 1).unwrap();
            assert_eq!(inputs, w.inputs(2, 1).unwrap(), "{}: deterministic", w.name);
            assert_ne!(inputs, w.inputs(2, 2).unwrap(), "{}: seeded", w.name);
            for s in &inputs.streams {
                if let StreamInput::Packed { rows, .. } | StreamInput::Pixels { pixels: rows, .. } =
                    s
                {
                    assert!(rows.iter().all(|&x| x != 0.0 && x.is_finite()));
                }
            }
        }
        for n in DEFAULT_WORKLOADS {
            workload(n).unwrap();
        }
        let e = workload("nope").unwrap_err().to_string();
        assert!(e.contains("meter-vqa"), "{e}");
    }

    #[test]
    fn schedules_parse_and_print() {
        for s in SCHEDULES {
            assert_eq!(Schedule::parse(&s.name()).unwrap(), *s);
        }
        assert_eq!(
            Schedule::parse("budget-42").unwrap(),
            Schedule::Budget { percent: 42 }
        );
        for bad in ["budget-0", "budget-101", "budget-x", "sparse"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    /// The host FLOPs of budget schedules (and of `dense`) equal what the CPU
    /// reference reports after actually running them; for `threshold`, the
    /// FLOPs from the statistics equal the reference's.
    #[test]
    fn host_flops_match_the_reference() {
        for name in [
            "tiny-meter",
            "tiny-vit",
            "tiny-blip-full",
            "tiny-meter-full",
        ] {
            let w = workload(name).unwrap();
            let base = w.weights(3).unwrap();
            for batch in [1, 3] {
                let inputs = w.inputs(batch, 4).unwrap();
                for &s in SCHEDULES {
                    let plan = w.plan(s).unwrap();
                    let pw = plan.weights(&base).unwrap();
                    let out = forward(&pw, &inputs, &ForwardOptions { dense: false }).unwrap();
                    let lengths = w.lengths(batch);
                    let from_stats =
                        flops_from_stats(&plan.config, &lengths, &out.stats(), false).unwrap();
                    assert_eq!(
                        from_stats, out.flops,
                        "{name} {s} batch {batch}: from stats"
                    );
                    let got = model_flops_ratio(&out.flops);
                    assert_eq!(
                        plan.flops_ratio_from_stats(batch, &out.stats()).unwrap(),
                        got
                    );
                    match s {
                        Schedule::Threshold => {
                            assert_eq!(plan.predicted_flops_ratio(batch).unwrap(), None);
                            assert!(got < 1.0, "{name} threshold prunes: {got}");
                        }
                        _ => {
                            let host = budget_flops(&plan.config, &lengths).unwrap();
                            assert_eq!(host, out.flops, "{name} {s} batch {batch}: host");
                            assert_eq!(plan.predicted_flops_ratio(batch).unwrap(), Some(got));
                        }
                    }
                    if let Some(fit) = plan.fit {
                        assert_eq!(fit.flops_ratio, got, "{name} {s}");
                    }
                    // dense: true ignores pruners: ratio 1.
                    let dense = forward(&pw, &inputs, &ForwardOptions { dense: true }).unwrap();
                    assert_eq!(model_flops_ratio(&dense.flops), 1.0);
                    assert_eq!(
                        flops_from_stats(&plan.config, &lengths, &dense.stats(), true).unwrap(),
                        dense.flops
                    );
                }
            }
        }
    }

    #[test]
    fn full_size_budget_targets_are_met() {
        for name in DEFAULT_WORKLOADS {
            let w = workload(name).unwrap();
            for &s in SCHEDULES {
                let plan = w.plan(s).unwrap();
                if let (Some(target), Some(fit)) = (s.target(), plan.fit) {
                    assert!(fit.reachable, "{name} {s}: {fit:?}");
                    assert!(
                        (fit.flops_ratio - target).abs() < 0.005,
                        "{name} {s}: {fit:?}"
                    );
                    assert_eq!(
                        plan.predicted_flops_ratio(32).unwrap(),
                        Some(fit.flops_ratio)
                    );
                }
            }
        }
    }
}
