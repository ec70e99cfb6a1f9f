//! The safetensors file format of [`Weights`]: f32 tensors under the naming
//! scheme, saved and loaded (f32, f16 and bf16 accepted), every problem of
//! a file reported at once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::*;
use crate::{Error, Result};

/// f32 tensors `(name, shape, data)` as safetensors bytes, with optional
/// string metadata (the file header's `__metadata__`).
pub(crate) fn tensors_to_safetensors(
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (n, s, b) in &bytes {
        let v = safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| {
            Error::Safetensors {
                context: n.clone(),
                message: e.to_string(),
            }
        })?;
        views.push((n.clone(), v));
    }
    safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
        context: "serialize".into(),
        message: e.to_string(),
    })
}

impl Weights {
    /// Serialises every tensor as f32 safetensors bytes.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        tensors_to_safetensors(self.tensors(), None)
    }

    /// Writes [`Weights::to_safetensors_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = path.as_ref();
        let b = self.to_safetensors_bytes()?;
        std::fs::write(p, b).map_err(|e| Error::io(p, e))
    }

    /// Loads weights for `config` from a safetensors file (our naming scheme).
    pub fn load(config: &ModelConfig, path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        Self::from_safetensors_bytes(config, &bytes, &p.display().to_string())
    }

    /// Loads weights for `config` from safetensors bytes (our naming scheme).
    /// f32, f16 and bf16 tensors are accepted. Every problem (missing tensor,
    /// wrong shape, unsupported dtype, NaN/Inf, unexpected name) is reported
    /// at once in [`Error::Weights`].
    pub fn from_safetensors_bytes(
        config: &ModelConfig,
        bytes: &[u8],
        context: &str,
    ) -> Result<Self> {
        let map = read_safetensors(bytes, context)?;
        Self::from_tensor_map(config, map, &mut Vec::new())
    }

    /// Builds weights from named tensors, checking everything against the
    /// config; `errs` may already hold problems found by the caller.
    pub(crate) fn from_tensor_map(
        config: &ModelConfig,
        mut map: BTreeMap<String, RawTensor>,
        errs: &mut Vec<String>,
    ) -> Result<Self> {
        let mut w = Weights::zeros(config)?;
        w.visit(&mut |name, shape, _, data| match map.remove(name) {
            None => errs.push(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            )),
            Some(t) => {
                if t.shape != shape {
                    errs.push(format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.shape
                    ));
                    return;
                }
                match t.to_f32() {
                    Err(msg) => errs.push(format!("tensor `{name}`: {msg}")),
                    Ok(v) => {
                        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                            errs.push(format!(
                                "tensor `{name}` holds a non-finite value ({}) at element {i}",
                                v[i]
                            ));
                        } else if v.len() == data.len() {
                            *data = v;
                        } else {
                            errs.push(format!("tensor `{name}` has the wrong number of elements"));
                        }
                    }
                }
            }
        });
        for name in map.keys() {
            errs.push(format!("unexpected tensor `{name}`"));
        }
        if errs.is_empty() {
            Ok(w)
        } else {
            Err(Error::Weights(std::mem::take(errs)))
        }
    }
}

/// A tensor as read from a file, not yet converted.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<u8>,
}

impl RawTensor {
    pub(crate) fn from_f32(shape: Vec<usize>, v: &[f32]) -> Self {
        RawTensor {
            dtype: Dtype::F32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub(crate) fn to_f32(&self) -> std::result::Result<Vec<f32>, String> {
        match self.dtype {
            Dtype::F32 => Ok(self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            Dtype::F16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            Dtype::BF16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            d => Err(format!(
                "unsupported dtype {d:?} (only F32, F16 and BF16 are accepted)"
            )),
        }
    }
}

/// Refuses a safetensors header that names a tensor (or `__metadata__`)
/// more than once: the parser keeps the last entry and drops the others
/// without a word. A header that is not a JSON object is left to the
/// parser to report.
pub(crate) fn check_unique_names(bytes: &[u8], context: &str) -> Result<()> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Names(Vec<String>);
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> Result<Vec<String>, A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                self.0.push(k);
            }
            Ok(self.0)
        }
    }

    let Some(len) = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
    else {
        return Ok(());
    };
    let Some(header) = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Ok(());
    };
    let mut de = serde_json::Deserializer::from_slice(header);
    let Ok(mut names) = de.deserialize_map(Names(Vec::new())) else {
        return Ok(());
    };
    names.sort_unstable();
    let mut dups: Vec<&str> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].as_str())
        .collect();
    dups.dedup();
    if dups.is_empty() {
        return Ok(());
    }
    Err(Error::Safetensors {
        context: context.to_string(),
        message: format!(
            "the header names {} more than once ({}); each name may appear once",
            if dups.len() == 1 {
                "a tensor"
            } else {
                "tensors"
            },
            dups.iter()
                .map(|d| format!("`{d}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

pub(crate) fn read_safetensors(bytes: &[u8], context: &str) -> Result<BTreeMap<String, RawTensor>> {
    check_unique_names(bytes, context)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        context: context.to_string(),
        message: e.to_string(),
    })?;
    let mut map = BTreeMap::new();
    for (name, view) in st.iter() {
        map.insert(
            name.to_string(),
            RawTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            },
        );
    }
    Ok(map)
}
