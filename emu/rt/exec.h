// Runs a kernel launch on the CPU: every block on one OS thread as one fiber
// per GPU thread (blocks spread over a small pool of worker threads), with
// barriers, warp collectives and cp.async groups modelled as the PTX ISA
// defines them and every misuse a launch error.
#pragma once

#include <cstdint>
#include <string>

#include <emu/kernel_abi.h>

namespace emu::rt {

// A host-compiled kernel library (one kernels/*.cu).
struct KernelLib {
    std::string path;
    void* handle = nullptr;
    const emu_module* module = nullptr;
};

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
    uint64_t count() const { return static_cast<uint64_t>(x) * y * z; }
};

// What a launch did. `code` is the CUDA error a GPU would report for the
// fault (0 when ok): 700 illegal address, 716 misaligned address, 719 launch
// failed (a misuse: divergent barrier, collective mismatch, deadlock...).
struct LaunchResult {
    int code = 0;
    std::string message;
};

// Runs every block of `kernel` (from `lib`) with args[i] pointing at
// parameter i's bytes.
LaunchResult run_kernel(const KernelLib& lib, const emu_kernel& kernel, Dim3 grid, Dim3 block,
                        void* const* args);

// Worker threads used for blocks (SMARTTRIM_EMU_WORKERS, default: the
// machine's cores, at most 8).
int worker_count();

}  // namespace emu::rt
