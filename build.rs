//! Compiles every `kernels/*.cu` to PTX with nvcc, keeps each module's
//! `ptxas -v` resource report, and writes `$OUT_DIR/kernels.rs`, which the
//! crate includes (`src/kernels.rs`) to embed the PTX with `include_str!`.
//!
//! nvcc is looked up in this order: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `nvcc` on
//! `PATH`, then the folder `scripts/setup-cuda.sh` installs into
//! (`$SMARTTRIM_CUDA_PREFIX`, default `~/.cache/smarttrim/cuda-13.0`).
//!
//! Targets come from `SMARTTRIM_CUDA_TARGETS` (comma separated, default
//! `compute_80,sm_90a`): `compute_80` is the portable PTX every Ampere-or-later
//! GPU can JIT; `sm_90a` carries the Hopper-only code paths.
//!
//! Without nvcc the build still succeeds (one `cargo:warning`), and every GPU
//! entry point returns `Error::KernelsNotBuilt`. With `SMARTTRIM_REQUIRE_CUDA=1`
//! a missing nvcc or a failing compile fails the build with the compiler's
//! message.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_TARGETS: &str = "compute_80,sm_90a";

fn main() {
    if let Err(message) = run() {
        eprintln!("error: smarttrim build script failed:\n{message}");
        std::process::exit(1);
    }
}

struct Kernel {
    stem: String,
    path: PathBuf,
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let kernel_dir = manifest.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    for var in [
        "NVCC",
        "CUDA_HOME",
        "PATH",
        "HOME",
        "SMARTTRIM_CUDA_PREFIX",
        "SMARTTRIM_CUDA_TARGETS",
        "SMARTTRIM_REQUIRE_CUDA",
        "SMARTTRIM_NVCC_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let kernels = list_kernels(&kernel_dir)?;
    let require = env::var("SMARTTRIM_REQUIRE_CUDA").is_ok_and(|v| v == "1" || v == "true");
    let targets = parse_targets()?;

    let Some(nvcc) = find_nvcc() else {
        let reason = "nvcc was not found (looked at $NVCC, $CUDA_HOME/bin/nvcc, PATH, \
                      and the scripts/setup-cuda.sh cache folder)";
        if require {
            return Err(format!(
                "SMARTTRIM_REQUIRE_CUDA=1 but {reason}; run scripts/setup-cuda.sh first"
            ));
        }
        println!(
            "cargo:warning=smarttrim: GPU kernels were not built: {reason}. \
             Run scripts/setup-cuda.sh (or set NVCC) and rebuild to get them."
        );
        return write_manifest(&out_dir, &kernels, &[], None, Some(reason));
    };

    let version = nvcc_version(&nvcc)?;
    match compile_all(&nvcc, &kernel_dir, &out_dir, &kernels, &targets) {
        Ok(()) => write_manifest(&out_dir, &kernels, &targets, Some((&nvcc, &version)), None),
        Err(message) if !require => {
            let first = message.lines().take(6).collect::<Vec<_>>().join(" | ");
            println!(
                "cargo:warning=smarttrim: GPU kernels were not built: compiling them failed: {first}"
            );
            write_manifest(
                &out_dir,
                &kernels,
                &[],
                None,
                Some("compiling the kernels with nvcc failed; rebuild to see the message"),
            )
        }
        Err(message) => Err(message),
    }
}

fn list_kernels(dir: &Path) -> Result<Vec<Kernel>, String> {
    let mut kernels = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if matches!(ext, Some("cu") | Some("cuh")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        if ext == Some("cu") {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| format!("kernel file name is not UTF-8: {}", path.display()))?
                .to_string();
            kernels.push(Kernel { stem, path });
        }
    }
    kernels.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(kernels)
}

fn parse_targets() -> Result<Vec<String>, String> {
    let raw = env::var("SMARTTRIM_CUDA_TARGETS").unwrap_or_else(|_| DEFAULT_TARGETS.to_string());
    let targets: Vec<String> = raw
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        return Err("SMARTTRIM_CUDA_TARGETS is empty".into());
    }
    for t in &targets {
        let ok = (t.starts_with("compute_") || t.starts_with("sm_"))
            && t[t.find('_').unwrap_or(0) + 1..]
                .trim_end_matches('a')
                .chars()
                .all(|c| c.is_ascii_digit());
        if !ok {
            return Err(format!(
                "SMARTTRIM_CUDA_TARGETS entry `{t}` is not of the form compute_XY or sm_XY[a]"
            ));
        }
    }
    Ok(targets)
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        // An explicit NVCC that does not exist is reported by falling through:
        // the warning then says nvcc was not found.
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        let p = PathBuf::from(home).join("bin").join("nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(paths) = env::var_os("PATH") {
        for dir in env::split_paths(&paths) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let prefix = env::var_os("SMARTTRIM_CUDA_PREFIX")
        .map(PathBuf::from)
        .or_else(|| {
            env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/smarttrim/cuda-13.0"))
        })?;
    let p = prefix.join("nvidia/cu13/bin/nvcc");
    p.is_file().then_some(p)
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown")
        .trim()
        .to_string())
}

/// The real architecture ptxas checks a target's PTX against for the report.
fn ptxas_arch(target: &str) -> String {
    match target.strip_prefix("compute_") {
        Some(num) => format!("sm_{num}"),
        None => target.to_string(),
    }
}

fn compile_all(
    nvcc: &Path,
    kernel_dir: &Path,
    out_dir: &Path,
    kernels: &[Kernel],
    targets: &[String],
) -> Result<(), String> {
    let extra: Vec<String> = env::var("SMARTTRIM_NVCC_FLAGS")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let jobs: Vec<(&Kernel, &String)> = kernels
        .iter()
        .flat_map(|k| targets.iter().map(move |t| (k, t)))
        .collect();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(k, t)| {
                let extra = &extra;
                scope.spawn(move || compile_one(nvcc, kernel_dir, out_dir, k, t, extra))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("compile thread panicked".into()))
            })
            .collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n\n"))
    }
}

fn compile_one(
    nvcc: &Path,
    kernel_dir: &Path,
    out_dir: &Path,
    kernel: &Kernel,
    target: &str,
    extra: &[String],
) -> Result<(), String> {
    let ptx = out_dir.join(format!("{}.{target}.ptx", kernel.stem));
    let mut cmd = Command::new(nvcc);
    cmd.arg("--ptx")
        .arg(format!("-arch={target}"))
        .args(["-O3", "-std=c++17", "-lineinfo"])
        .arg("-I")
        .arg(kernel_dir)
        .args(extra)
        .arg("-o")
        .arg(&ptx)
        .arg(&kernel.path);
    run_tool(&mut cmd, &format!("nvcc {} for {target}", kernel.stem))?;

    // Resource report: assemble the PTX for a real architecture with -v.
    let arch = ptxas_arch(target);
    let ptxas = nvcc.with_file_name("ptxas");
    let report = if ptxas.is_file() {
        let mut cmd = Command::new(&ptxas);
        cmd.arg("-v")
            .arg(format!("-arch={arch}"))
            .arg("-o")
            .arg(out_dir.join(format!("{}.{target}.cubin", kernel.stem)))
            .arg(&ptx);
        run_tool(&mut cmd, &format!("ptxas {} for {arch}", kernel.stem))?
    } else {
        let mut cmd = Command::new(nvcc);
        cmd.arg("-cubin")
            .arg(format!("-arch={arch}"))
            .args(["-O3", "-std=c++17", "-Xptxas", "-v"])
            .arg("-I")
            .arg(kernel_dir)
            .args(extra)
            .arg("-o")
            .arg(out_dir.join(format!("{}.{target}.cubin", kernel.stem)))
            .arg(&kernel.path);
        run_tool(&mut cmd, &format!("nvcc -cubin {} for {arch}", kernel.stem))?
    };
    let report_path = out_dir.join(format!("{}.{target}.ptxas.txt", kernel.stem));
    fs::write(&report_path, report)
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))
}

/// Runs a tool; returns its stderr+stdout on success, or an error carrying the
/// command line and everything it printed.
fn run_tool(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}):\n{cmd:?}\n{text}", out.status))
    }
}

fn write_manifest(
    out_dir: &Path,
    kernels: &[Kernel],
    targets: &[String],
    nvcc: Option<(&Path, &str)>,
    not_built: Option<&str>,
) -> Result<(), String> {
    let mut s = String::new();
    let _ = writeln!(s, "// Generated by build.rs; do not edit.");
    let _ = writeln!(s, "/// Whether the kernels were compiled into this build.");
    let _ = writeln!(s, "pub const BUILT: bool = {};", not_built.is_none());
    let _ = writeln!(
        s,
        "/// Why the kernels are missing (empty when they are built).\npub const NOT_BUILT_REASON: &str = {:?};",
        not_built.unwrap_or("")
    );
    let (path, version) = nvcc.map_or((String::new(), String::new()), |(p, v)| {
        (p.display().to_string(), v.to_string())
    });
    let _ = writeln!(
        s,
        "/// The nvcc used.\npub const NVCC_PATH: &str = {path:?};\n/// Its version line.\npub const NVCC_VERSION: &str = {version:?};"
    );
    let _ = writeln!(
        s,
        "/// The PTX targets compiled.\npub const TARGETS: &[&str] = &{:?};",
        targets
    );
    let _ = writeln!(
        s,
        "/// Every embedded module, one per kernel file and target.\npub static MODULES: &[ModuleSource] = &["
    );
    for k in kernels {
        for t in targets {
            let ptx = out_dir.join(format!("{}.{t}.ptx", k.stem));
            let rep = out_dir.join(format!("{}.{t}.ptxas.txt", k.stem));
            let _ = writeln!(
                s,
                "    ModuleSource {{ name: {:?}, target: {:?}, ptx: include_str!({:?}), ptxas_report: include_str!({:?}) }},",
                k.stem,
                t,
                ptx.display().to_string(),
                rep.display().to_string()
            );
        }
    }
    let _ = writeln!(s, "];");
    let dest = out_dir.join("kernels.rs");
    fs::write(&dest, s).map_err(|e| format!("cannot write {}: {e}", dest.display()))
}
