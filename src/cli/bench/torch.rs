//! The PyTorch baseline file `smarttrim bench --torch` reads (rows of
//! `scripts/torch_baseline.py`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;

/// One row of the PyTorch baseline file.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct TorchRow {
    pub(super) workload: String,
    pub(super) batch: usize,
    pub(super) mode: String,
    /// Required: a number, or `null` for a mode that did not run (a row
    /// without it is a malformed file, not a failed mode).
    #[serde(deserialize_with = "Option::deserialize")]
    pub(super) dense_ms: Option<f64>,
    #[serde(default)]
    pub(super) device: Option<String>,
    #[serde(default)]
    pub(super) torch_version: Option<String>,
}

/// The baseline for one (workload, batch).
#[derive(Debug, Clone, Default)]
pub(super) struct TorchEntry {
    pub(super) eager_ms: Option<f64>,
    pub(super) compile_ms: Option<f64>,
    pub(super) version: Option<String>,
    pub(super) device: Option<String>,
}

impl TorchEntry {
    /// The faster dense time of the modes that worked, and its mode.
    pub(super) fn best(&self) -> Option<(f64, &'static str)> {
        match (self.eager_ms, self.compile_ms) {
            (Some(e), Some(c)) if c < e => Some((c, "compile")),
            (Some(e), _) => Some((e, "eager")),
            (None, Some(c)) => Some((c, "compile")),
            (None, None) => None,
        }
    }
}

pub(super) fn read_torch(path: &PathBuf) -> anyhow::Result<HashMap<(String, usize), TorchEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the PyTorch baseline {}", path.display()))?;
    let rows: Vec<TorchRow> = serde_json::from_str(&text).with_context(|| {
        format!(
            "parsing the PyTorch baseline {} (expected a JSON list of {{workload, batch, mode, \
             dense_ms}} objects, dense_ms a number or null)",
            path.display()
        )
    })?;
    let mut map: HashMap<(String, usize), TorchEntry> = HashMap::new();
    for r in rows {
        if let Some(ms) = r.dense_ms {
            if !(ms.is_finite() && ms > 0.0) {
                bail!(
                    "PyTorch baseline {}: {} batch {} {}: dense_ms {ms} is not a positive time",
                    path.display(),
                    r.workload,
                    r.batch,
                    r.mode
                );
            }
        }
        let e = map.entry((r.workload.clone(), r.batch)).or_default();
        let slot = match r.mode.as_str() {
            "eager" => &mut e.eager_ms,
            "compile" => &mut e.compile_ms,
            m => bail!(
                "PyTorch baseline {}: {} batch {}: mode `{m}` is neither `eager` nor `compile`",
                path.display(),
                r.workload,
                r.batch
            ),
        };
        if slot.is_some() {
            eprintln!(
                "bench: warning: PyTorch baseline lists {} batch {} {} more than once; using the first",
                r.workload, r.batch, r.mode
            );
            continue;
        }
        *slot = r.dense_ms;
        if e.version.is_none() {
            e.version = r.torch_version;
        }
        if e.device.is_none() {
            e.device = r.device;
        }
    }
    Ok(map)
}
