//! The PTX modules build.rs compiled from `kernels/*.cu`, embedded in the
//! binary, and their `ptxas -v` resource reports.
//!
//! Each `kernels/<name>.cu` becomes one module per target (`compute_80`, the
//! portable PTX; `sm_90a`, Hopper-only paths). [`select`] picks the module a
//! device runs; [`crate::device::Device`] loads it lazily.

use crate::{Error, Result};

/// One embedded PTX module.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSource {
    /// The kernel file's stem (`elementwise` for `kernels/elementwise.cu`).
    pub name: &'static str,
    /// The nvcc target (`compute_80`, `sm_90a`, ...).
    pub target: &'static str,
    /// The PTX text.
    pub ptx: &'static str,
    /// What `ptxas -v` printed when assembling it for the target's architecture.
    pub ptxas_report: &'static str,
}

mod generated {
    use super::ModuleSource;
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use generated::{BUILT, MODULES, NOT_BUILT_REASON, NVCC_PATH, NVCC_VERSION, TARGETS};

/// Returns `Err(KernelsNotBuilt)` when this build carries no kernels.
pub fn ensure_built() -> Result<()> {
    if BUILT {
        Ok(())
    } else {
        Err(Error::KernelsNotBuilt(NOT_BUILT_REASON.to_string()))
    }
}

/// The names of the embedded modules (one per kernel file).
pub fn module_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = MODULES.iter().map(|m| m.name).collect();
    names.dedup();
    names
}

/// Picks the module variant for a device of compute capability `(major, minor)`.
///
/// `sm_90a` code runs only on compute capability 9.0 exactly (the `a` suffix
/// marks architecture-specific instructions); everything else of 8.0 or later
/// takes the portable `compute_80` PTX, which the driver JIT-compiles.
pub fn select(name: &str, cc: (i32, i32)) -> Result<&'static ModuleSource> {
    ensure_built()?;
    let variants: Vec<&'static ModuleSource> = MODULES.iter().filter(|m| m.name == name).collect();
    if variants.is_empty() {
        return Err(Error::UnknownModule(name.to_string()));
    }
    if cc < (8, 0) {
        return Err(Error::Unsupported {
            op: "kernel module selection",
            message: format!(
                "compute capability {}.{} is below 8.0 (Ampere), the oldest this build targets",
                cc.0, cc.1
            ),
        });
    }
    let arch = cc.0 * 10 + cc.1;
    // Prefer the exact arch-specific build, then the newest portable PTX that
    // the device can JIT (compute_XY with XY <= arch).
    if let Some(m) = variants
        .iter()
        .find(|m| m.target == format!("sm_{arch}a") || m.target == format!("sm_{arch}"))
    {
        return Ok(m);
    }
    variants
        .iter()
        .filter_map(|m| {
            let v: i32 = m.target.strip_prefix("compute_")?.parse().ok()?;
            (v <= arch).then_some((v, *m))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, m)| m)
        .ok_or_else(|| Error::Unsupported {
            op: "kernel module selection",
            message: format!(
                "no embedded PTX for `{name}` runs on compute capability {}.{} (targets: {})",
                cc.0,
                cc.1,
                TARGETS.join(", ")
            ),
        })
}

/// Resources one kernel uses, as `ptxas -v` reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// The entry point.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory, bytes.
    pub shared_bytes: u32,
    /// Stack frame, bytes.
    pub stack_frame_bytes: u32,
    /// Spill stores, bytes.
    pub spill_store_bytes: u32,
    /// Spill loads, bytes.
    pub spill_load_bytes: u32,
}

/// Parses a `ptxas -v` report into one entry per kernel (entry function).
///
/// The report looks like:
///
/// ```text
/// ptxas info    : Compiling entry function 'layernorm_f16' for 'sm_80'
/// ptxas info    : Function properties for layernorm_f16
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 22 registers, used 1 barriers, 256 bytes smem, 380 bytes cmem[0]
/// ```
pub fn parse_ptxas_report(report: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let mut current: Option<usize> = None;
    let mut properties_for: Option<String> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelResources {
                name,
                ..Default::default()
            });
            current = Some(out.len() - 1);
            properties_for = None;
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            properties_for = Some(rest.trim().to_string());
        } else if line.contains("bytes stack frame") {
            // Properties of device functions (not entries) are skipped: their
            // stack usage is folded into the calling entry's report anyway.
            let target = properties_for
                .as_deref()
                .and_then(|n| out.iter().position(|k| k.name == n));
            if let Some(i) = target {
                out[i].stack_frame_bytes = number_before(line, "bytes stack frame");
                out[i].spill_store_bytes = number_before(line, "bytes spill stores");
                out[i].spill_load_bytes = number_before(line, "bytes spill loads");
            }
        } else if line.contains("Used ") && line.contains("registers") {
            if let Some(i) = current {
                out[i].registers = number_before(line, "registers");
                out[i].shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    out
}

/// The integer just before `marker` in `line` (0 when absent).
fn number_before(line: &str, marker: &str) -> u32 {
    let Some(pos) = line.find(marker) else {
        return 0;
    };
    line[..pos]
        .split(|c: char| !c.is_ascii_digit())
        .rev()
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Resource reports of every kernel in every embedded module, as
/// `(module, target, resources)`.
pub fn all_resources() -> Vec<(&'static str, &'static str, KernelResources)> {
    MODULES
        .iter()
        .flat_map(|m| {
            parse_ptxas_report(m.ptxas_report)
                .into_iter()
                .map(move |r| (m.name, m.target, r))
        })
        .collect()
}

/// The `.entry` names declared in a PTX text.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(".visible .entry ")
                .or_else(|| l.strip_prefix(".entry "))?;
            Some(rest.split('(').next()?.trim().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_report() {
        let report = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'layernorm_f16' for 'sm_80'\n\
ptxas info    : Function properties for layernorm_f16\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 22 registers, used 1 barriers, 256 bytes smem, 380 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'other_f16' for 'sm_80'\n\
ptxas info    : Function properties for other_f16\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 40 registers, used 0 barriers, 380 bytes cmem[0]\n";
        let r = parse_ptxas_report(report);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                name: "layernorm_f16".into(),
                registers: 22,
                shared_bytes: 256,
                stack_frame_bytes: 8,
                spill_store_bytes: 4,
                spill_load_bytes: 12,
            }
        );
        assert_eq!(r[1].name, "other_f16");
        assert_eq!(r[1].registers, 40);
        assert_eq!(r[1].shared_bytes, 0);
        assert_eq!(r[1].spill_store_bytes, 0);
    }

    #[test]
    fn finds_ptx_entries() {
        let ptx = ".version 9.0\n.target sm_80\n.visible .entry layernorm_f16(\n\t.param .u64 a\n)\n{\n}\n";
        assert_eq!(ptx_entries(ptx), vec!["layernorm_f16".to_string()]);
    }
}
