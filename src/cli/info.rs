//! `smarttrim info`: what this build and this machine can do.

use clap::Args;
use smarttrim::device::{self, Device};
use smarttrim::kernels;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Also list every kernel's registers, shared memory and spills (ptxas -v).
    #[arg(long)]
    pub kernels: bool,
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    println!("smarttrim {}", env!("CARGO_PKG_VERSION"));
    println!();
    println!("toolchain");
    if kernels::BUILT {
        println!(
            "  nvcc:        {} ({})",
            kernels::NVCC_PATH,
            kernels::NVCC_VERSION
        );
        println!("  PTX targets: {}", kernels::TARGETS.join(", "));
        println!("  modules:     {}", kernels::module_names().join(", "));
    } else {
        println!("  GPU kernels: not built ({})", kernels::NOT_BUILT_REASON);
        println!("               run scripts/setup-cuda.sh and rebuild to get them");
    }
    if args.kernels && kernels::BUILT {
        println!();
        println!(
            "  {:<12} {:<11} {:<28} {:>5} {:>7} {:>6} {:>7}",
            "module", "target", "kernel", "regs", "smem B", "stack", "spill B"
        );
        for (m, t, r) in kernels::all_resources() {
            println!(
                "  {:<12} {:<11} {:<28} {:>5} {:>7} {:>6} {:>7}",
                m,
                t,
                r.name,
                r.registers,
                r.shared_bytes,
                r.stack_frame_bytes,
                r.spill_store_bytes + r.spill_load_bytes
            );
        }
    }
    println!();
    println!("driver");
    match device::driver_version() {
        Ok((major, minor)) => println!("  CUDA driver {major}.{minor}"),
        Err(e) => {
            println!("  none: {e}");
            return Ok(());
        }
    }
    println!();
    println!("devices");
    let n = match device::device_count() {
        Ok(n) => n,
        Err(e) => {
            println!("  none: {e}");
            return Ok(());
        }
    };
    if n == 0 {
        println!("  none: the driver reports no CUDA devices");
    }
    for ordinal in 0..n {
        match Device::open(ordinal).and_then(|d| d.info()) {
            Ok(info) => println!("  {info}"),
            Err(e) => println!("  cuda:{ordinal}: cannot open: {e}"),
        }
    }
    Ok(())
}
