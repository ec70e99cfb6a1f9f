// The C ABI between host-compiled kernel libraries (one per kernels/*.cu,
// built from the kernel file itself against emu/shim/) and the emulator's
// runtime inside libcuda.so.1 (emu/rt/). Test equipment only.
//
// A kernel library exports `smarttrim_emu_module`, a table of its kernels
// with each parameter's size and alignment (from the C++ signature) and an
// invoker; the runtime runs one fiber per GPU thread through the invoker and
// the kernel calls back into the runtime at every barrier, warp collective,
// cp.async operation and misuse it detects.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define EMU_PUBLIC __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

typedef struct emu_uint3 {
    unsigned x, y, z;
} emu_uint3;

// The built-in variables of the calling GPU thread.
typedef struct emu_dims {
    emu_uint3 thread_idx;
    emu_uint3 block_idx;
    emu_uint3 block_dim;
    emu_uint3 grid_dim;
} emu_dims;

typedef struct emu_kernel {
    const char* name;
    int n_params;
    const size_t* param_sizes;   // n_params entries
    const size_t* param_aligns;  // n_params entries
    // Runs the kernel body for the calling fiber with args[i] pointing at
    // parameter i's bytes.
    void (*invoke)(void* const* args);
} emu_kernel;

typedef struct emu_module {
    const char* name;  // the kernel file's stem, e.g. "attention"
    int n_kernels;
    const emu_kernel* kernels;
    // Returns the address of a thread-local variable of the library, so the
    // calling OS thread's instance of the library's TLS block (which holds
    // exactly the kernels' __shared__ arrays) exists.
    void* (*tls_anchor)(void);
} emu_module;

// Exported by every kernel library.
EMU_PUBLIC const emu_module* smarttrim_emu_module(void);

// ---- runtime entry points the shim calls (implemented in libcuda.so.1) ----

// The calling GPU thread's built-ins. Constant for the lifetime of a GPU
// thread (one fiber), hence `const`: the compiler may keep the pointer.
EMU_PUBLIC const emu_dims* emu_dims_self(void) __attribute__((const));

// __syncthreads at (file, line).
EMU_PUBLIC void emu_syncthreads(const char* file, int line);

// Warp collectives. `kind` is one of EMU_COLL_*; every lane of `mask` must
// reach the same collective (kind and site). `in` is this lane's payload
// (up to EMU_LANE_WORDS 32-bit words), `out` receives its result words.
enum {
    EMU_COLL_SYNCWARP = 1,
    EMU_COLL_SHFL_XOR,
    EMU_COLL_SHFL_UP,
    EMU_COLL_SHFL_DOWN,
    EMU_COLL_SHFL_IDX,
    EMU_COLL_BALLOT,
    EMU_COLL_LDMATRIX_X4,
    EMU_COLL_LDMATRIX_X4_TRANS,
    EMU_COLL_MMA_M16N8K16_F32_F16,
};
#define EMU_LANE_WORDS 12
// For shuffles, `arg` is the lane mask / delta / source lane and `width`
// the segment width; unused otherwise.
EMU_PUBLIC void emu_warp_collective(int kind, uint32_t mask, const char* file, int line, int arg, int width,
                         const uint32_t* in, uint32_t* out);

// cp.async: a 16-byte copy of src_bytes (0..16) bytes from global `src` to
// shared `dst`, the rest zero-filled, landing at the wait covering its group.
EMU_PUBLIC void emu_cp_async16(void* dst, const void* src, int src_bytes, const char* file, int line);
EMU_PUBLIC void emu_cp_async_commit(void);
EMU_PUBLIC void emu_cp_async_wait(int n, const char* file, int line);

// The shared-window offset of a shared-memory address (fails the launch for
// an address outside the block's shared memory).
EMU_PUBLIC uint32_t emu_smem_offset(const void* p, const char* file, int line);

// Fails the launch with a message (a misuse the shim detected).
EMU_PUBLIC void emu_fail(const char* file, int line, const char* message) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif
