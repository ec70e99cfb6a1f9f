// The emulated device's C++ versions of exactly the helpers in
// kernels/ptx.cuh (same names, same arguments), for compiling the kernel
// files as C++. common.cuh includes <ptx.cuh>; the emulator's build puts
// emu/shim, not kernels/, on the include path, so this file is found instead
// of the inline-PTX one.
//
// Semantics follow the PTX ISA, not the kernels' use of them:
// - cp.async poisons its 16 destination bytes at issue and writes them at the
//   cp.async.wait_group that retires its commit group, so a read before the
//   wait (or by another thread before a barrier) sees NaNs;
// - ldmatrix and mma.sync are warp collectives (.sync.aligned: all 32 lanes,
//   same instruction) computed from the PTX ISA's fragment layouts; shared
//   addresses are checked to lie in the block's shared memory, 16-byte
//   aligned.
#pragma once

#include <stdint.h>

#include <emu/kernel_abi.h>

static inline uint32_t smem_u32(const void* p, const char* file = __builtin_FILE(),
                                int line = __builtin_LINE()) {
    return emu_smem_offset(p, file, line);
}

static inline void cp_async16(void* dst, const void* src, int src_bytes,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu_cp_async16(dst, src, src_bytes, file, line);
}

static inline void cp_async_commit() { emu_cp_async_commit(); }

template <int N>
static inline void cp_async_wait(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(N >= 0, "cp.async.wait_group takes a non-negative count");
    emu_cp_async_wait(N, file, line);
}

namespace emu_shim {
static inline void ldmatrix(int kind, uint32_t r[4], const void* p, const char* file, int line) {
    const uint64_t a = reinterpret_cast<uintptr_t>(p);
    const uint32_t in[2] = {static_cast<uint32_t>(a), static_cast<uint32_t>(a >> 32)};
    emu_warp_collective(kind, 0xffffffffu, file, line, 0, 32, in, r);
}
}  // namespace emu_shim

static inline void ldmatrix_x4(uint32_t r[4], const void* p, const char* file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
    emu_shim::ldmatrix(EMU_COLL_LDMATRIX_X4, r, p, file, line);
}

static inline void ldmatrix_x4_trans(uint32_t r[4], const void* p,
                                     const char* file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    emu_shim::ldmatrix(EMU_COLL_LDMATRIX_X4_TRANS, r, p, file, line);
}

static inline void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    uint32_t in[10];
    in[0] = a[0];
    in[1] = a[1];
    in[2] = a[2];
    in[3] = a[3];
    in[4] = b0;
    in[5] = b1;
    memcpy(in + 6, c, 4 * sizeof(float));
    uint32_t out[4];
    emu_warp_collective(EMU_COLL_MMA_M16N8K16_F32_F16, 0xffffffffu, file, line, 0, 32, in, out);
    memcpy(c, out, 4 * sizeof(float));
}
