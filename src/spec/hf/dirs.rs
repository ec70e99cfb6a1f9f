//! Model directories (HuggingFace checkpoints as published, or smarttrim's
//! own), the same from files in memory, and pruner files (pruner tensors
//! under our names, with the config they belong to).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::config::parse_json;
use super::*;
use crate::spec::config::{HeadPrunerConfig, KeepRule, TokenPrunerConfig};
use crate::spec::weights::{read_safetensors, RawTensor, Weights};
use crate::{Error, Result};

/// What a model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirFormat {
    /// A HuggingFace checkpoint (`config.json` with a `model_type`, tensors
    /// under HuggingFace's names).
    HuggingFace(HfFamily),
    /// A smarttrim model (`config.json` in smarttrim's schema, tensors under
    /// smarttrim's names), e.g. written by `scripts/convert_meter.py`.
    Smarttrim,
}

/// A model directory (`config.json` + `model.safetensors`) as loaded.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// What the directory holds.
    pub format: DirFormat,
    /// The config the directory describes (for a HuggingFace checkpoint,
    /// derived from `config.json`, with no pruners).
    pub derived: ModelConfig,
    /// The weights (their `config` is the config the model runs with).
    pub weights: Weights,
}

/// The config a pruner file carries in its metadata (written by
/// `smarttrim init-weights`), if any.
pub fn pruner_file_config(bytes: &[u8], context: &str) -> Result<Option<ModelConfig>> {
    crate::spec::weights::check_unique_names(bytes, context)?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
            context: context.to_string(),
            message: e.to_string(),
        })?;
    match meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(PRUNER_CONFIG_KEY))
    {
        None => Ok(None),
        Some(j) => ModelConfig::from_json(j).map(Some),
    }
}

/// Pruners placed as the tensors of a pruner file name them (under our
/// names): a token pruner (threshold rule, `tau` 0.5, `keep_first`) where
/// `{s}.layers.{l}.token_pruner.w1x` is present, its width from that
/// tensor; head pruners (`tau_h` 0.5, `min_heads` 1) where
/// `{s}.layers.{l}.{self_attn,cross_attn}.head_pruner.w1` is.
pub fn pruners_from_names(
    config: &ModelConfig,
    bytes: &[u8],
    context: &str,
) -> Result<ModelConfig> {
    let raw = read_safetensors(bytes, context)?;
    let mut c = config.clone();
    for s in &mut c.streams {
        let d = s.hidden;
        for (l, lc) in s.layers.iter_mut().enumerate() {
            let p = format!("{}.layers.{l}", s.name);
            if let Some(t) = raw.get(&format!("{p}.token_pruner.w1x")) {
                lc.token_pruner = Some(TokenPrunerConfig {
                    rule: KeepRule::Threshold { tau: 0.5 },
                    keep_first: true,
                    hidden: t.shape.first().copied().filter(|&h| h != d / 2),
                });
            }
            for (m, slot) in [
                ("self_attn", &mut lc.self_head_pruner),
                ("cross_attn", &mut lc.cross_head_pruner),
            ] {
                if let Some(t) = raw.get(&format!("{p}.{m}.head_pruner.w1")) {
                    *slot = Some(HeadPrunerConfig {
                        tau_h: 0.5,
                        min_heads: 1,
                        hidden: t.shape.first().copied().filter(|&h| h != d / 2),
                    });
                }
            }
        }
    }
    c.validate()?;
    Ok(c)
}

/// `a` and `b` describe the same backbone: equal once pruners are removed.
pub fn same_backbone(a: &ModelConfig, b: &ModelConfig) -> bool {
    crate::spec::schedule::without_pruners(a) == crate::spec::schedule::without_pruners(b)
}

/// The format and config a model directory describes, from its
/// `config.json` and its tensors' names (not their data): a HuggingFace
/// checkpoint ([`config_from_hf`]) or a smarttrim model (its config as it
/// is).
pub fn dir_config(config_json: &str, tensor_names: &[&str]) -> Result<(DirFormat, ModelConfig)> {
    let v = parse_json(config_json, "config.json")?;
    if v.get("model_type").is_some() {
        let m = config_from_hf(config_json, tensor_names)?;
        Ok((DirFormat::HuggingFace(m.family), m.config))
    } else if v.get("kind").is_some() && v.get("streams").is_some() {
        Ok((DirFormat::Smarttrim, ModelConfig::from_json(config_json)?))
    } else {
        Err(Error::Config(
            "config.json is neither a HuggingFace config (no `model_type`) nor a smarttrim \
             config (no `kind` and `streams`)"
                .into(),
        ))
    }
}

/// Reads a model directory's `config.json` and the tensor names of its
/// `model.safetensors` ([`dir_config`]).
pub fn read_dir_config(dir: impl AsRef<Path>) -> Result<(DirFormat, ModelConfig)> {
    let dir = dir.as_ref();
    let cpath = dir.join("config.json");
    let wpath = dir.join("model.safetensors");
    let json = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    let names = tensor_names(&bytes, &wpath.display().to_string())?;
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    dir_config(&json, &names)
}

/// Loads a model directory (`config.json` and `model.safetensors`) as it
/// is: a HuggingFace checkpoint, or a smarttrim model such as
/// `scripts/convert_meter.py` writes.
///
/// The config it runs with: `config` if given (it must describe the same
/// backbone as the directory, [`same_backbone`]; `smarttrim info --model
/// DIR` prints the directory's to start from), else the one a pruner file
/// carries in its metadata ([`pruner_file_config`]), else the directory's
/// with pruners where the pruner file has tensors ([`pruners_from_names`]),
/// else the directory's. Pruner tensors come from `pruners` (under our
/// names), or from `model.safetensors` itself.
pub fn load_model_dir(
    dir: impl AsRef<Path>,
    config: Option<&ModelConfig>,
    pruners: Option<&Path>,
) -> Result<LoadedModel> {
    let dir = dir.as_ref();
    let cpath = dir.join("config.json");
    let wpath = dir.join("model.safetensors");
    let json = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    let pbytes = match pruners {
        Some(p) => Some((
            std::fs::read(p).map_err(|e| Error::io(p, e))?,
            p.display().to_string(),
        )),
        None => None,
    };
    load_model_from_memory(
        &json,
        &bytes,
        &wpath.display().to_string(),
        config,
        pbytes.as_ref().map(|(b, c)| (&b[..], c.as_str())),
    )
}

/// [`load_model_dir`] on a `config.json` document and safetensors bytes in
/// memory (`context` names the bytes in errors; `pruners`: a pruner file's
/// bytes and name).
pub fn load_model_from_memory(
    config_json: &str,
    bytes: &[u8],
    context: &str,
    config: Option<&ModelConfig>,
    pruners: Option<(&[u8], &str)>,
) -> Result<LoadedModel> {
    let names = tensor_names(bytes, context)?;
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let (format, derived) = dir_config(config_json, &names)?;
    let run = match (config, pruners) {
        (Some(c), _) => c.clone(),
        (None, Some((pb, pc))) => match pruner_file_config(pb, pc)? {
            Some(c) => c,
            None => pruners_from_names(&derived, pb, pc)?,
        },
        (None, None) => derived.clone(),
    };
    if !same_backbone(&run, &derived) {
        return Err(Error::Config(format!(
            "the config does not describe the model directory's backbone (`smarttrim info \
             --model DIR` prints the directory's config): expected {}",
            crate::spec::schedule::without_pruners(&derived).to_json()?
        )));
    }
    let weights = match format {
        DirFormat::HuggingFace(family) => {
            hf_weights_from_bytes(family, &run, bytes, context, pruners)?
        }
        DirFormat::Smarttrim => {
            run.validate()?;
            let mut raw = read_safetensors(bytes, context)?;
            let mut errs = Vec::new();
            if let Some((pb, pc)) = pruners {
                merge_pruners(&mut raw, pb, pc, context, &mut errs)?;
            }
            Weights::from_tensor_map(&run, raw, &mut errs)?
        }
    };
    Ok(LoadedModel {
        format,
        derived,
        weights,
    })
}

/// Weights for `config` from a safetensors file under our names, plus the
/// pruner tensors of a second file if given (every problem at once, in
/// [`Error::Weights`]; a tensor in both files is one).
pub fn load_weights_files(
    config: &ModelConfig,
    weights: &Path,
    pruners: Option<&Path>,
) -> Result<Weights> {
    config.validate()?;
    let bytes = std::fs::read(weights).map_err(|e| Error::io(weights, e))?;
    let context = weights.display().to_string();
    let mut raw = read_safetensors(&bytes, &context)?;
    let mut errs = Vec::new();
    if let Some(p) = pruners {
        let pb = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        merge_pruners(&mut raw, &pb, &p.display().to_string(), &context, &mut errs)?;
    }
    Weights::from_tensor_map(config, raw, &mut errs)
}

/// Adds a pruner file's tensors to `raw`; a name in both is a problem.
pub(super) fn merge_pruners(
    raw: &mut BTreeMap<String, RawTensor>,
    pb: &[u8],
    pc: &str,
    context: &str,
    errs: &mut Vec<String>,
) -> Result<()> {
    for (name, t) in read_safetensors(pb, pc)? {
        match raw.entry(name) {
            std::collections::btree_map::Entry::Occupied(e) => errs.push(format!(
                "tensor `{}` is in both {context} and {pc}",
                e.key()
            )),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(t);
            }
        }
    }
    Ok(())
}

/// Names of the tensors of a safetensors file (header only).
fn tensor_names(bytes: &[u8], context: &str) -> Result<Vec<String>> {
    crate::spec::weights::check_unique_names(bytes, context)?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
            context: context.to_string(),
            message: e.to_string(),
        })?;
    let mut v: Vec<String> = meta.tensors().keys().cloned().collect();
    v.sort();
    Ok(v)
}

/// The pruner tensors of `weights` (token and head pruners of every layer,
/// under our names) as safetensors bytes, with the whole config in the
/// metadata ([`PRUNER_CONFIG_KEY`]), for `--pruners`.
pub fn pruner_file_bytes(weights: &Weights) -> Result<Vec<u8>> {
    let tensors: Vec<_> = weights
        .tensors()
        .into_iter()
        .filter(|(n, _, _)| n.contains(".token_pruner.") || n.contains(".head_pruner."))
        .collect();
    let mut meta = HashMap::new();
    meta.insert(PRUNER_CONFIG_KEY.to_string(), weights.config.to_json()?);
    crate::spec::weights::tensors_to_safetensors(tensors, Some(meta))
}
