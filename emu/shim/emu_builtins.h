// The CUDA built-ins the kernel files use, for compiling them as C++ on the
// emulated device (emu/README.md): qualifiers, vector types, the thread /
// block built-ins, math, barriers and warp collectives. Every synchronising
// built-in is a call into the runtime (libcuda.so.1), which runs one fiber per
// GPU thread and switches fibers there; the call site (file, line) travels
// with it so errors name the kernel's source line.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <emu/kernel_abi.h>

// ---- qualifiers ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// One instance per block: the runtime runs a block's fibers on one OS thread
// and poisons the kernel library's TLS block (exactly these arrays) before
// every block, as a GPU leaves shared memory undefined.
#define __shared__ static thread_local

// ---- vector types (CUDA's sizes and alignments) ----
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
    return uint4{x, y, z, w};
}
static inline float4 make_float4(float x, float y, float z, float w) {
    return float4{x, y, z, w};
}

// ---- thread and block built-ins (per fiber) ----
#define threadIdx (emu_dims_self()->thread_idx)
#define blockIdx (emu_dims_self()->block_idx)
#define blockDim (emu_dims_self()->block_dim)
#define gridDim (emu_dims_self()->grid_dim)
#define warpSize 32

// ---- math (device overloads the kernels call) ----
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) {
    return a < b ? a : b;
}
static inline unsigned long long max(unsigned long long a, unsigned long long b) {
    return a > b ? a : b;
}
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
// glibc already declares __expf (its internal name), so a macro, not a function.
#define __expf(x) expf(x)
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return fminf(fmaxf(x, 0.f), 1.f); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T>
static inline T __ldg(const T* p) {
    return *p;
}

// ---- barriers and warp collectives ----
static inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu_syncthreads(file, line);
}

static inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    emu_warp_collective(EMU_COLL_SYNCWARP, mask, file, line, 0, 32, nullptr, nullptr);
}

namespace emu_shim {
template <class T>
static inline T shuffle(int kind, unsigned mask, T var, int arg, int width, const char* file,
                        int line) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
    uint32_t in[2] = {0, 0};
    uint32_t out[2] = {0, 0};
    memcpy(in, &var, sizeof(T));
    emu_warp_collective(kind, mask, file, line, arg, width, in, out);
    T r;
    memcpy(&r, out, sizeof(T));
    return r;
}
}  // namespace emu_shim

template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                                const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu_shim::shuffle(EMU_COLL_SHFL_XOR, mask, var, lane_mask, width, file, line);
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                               const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu_shim::shuffle(EMU_COLL_SHFL_UP, mask, var, static_cast<int>(delta), width, file,
                             line);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                                 const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
    return emu_shim::shuffle(EMU_COLL_SHFL_DOWN, mask, var, static_cast<int>(delta), width, file,
                             line);
}
template <class T>
static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu_shim::shuffle(EMU_COLL_SHFL_IDX, mask, var, src_lane, width, file, line);
}

static inline unsigned __ballot_sync(unsigned mask, int predicate,
                                     const char* file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    const uint32_t in[1] = {predicate != 0 ? 1u : 0u};
    uint32_t out[1] = {0};
    emu_warp_collective(EMU_COLL_BALLOT, mask, file, line, 0, 32, in, out);
    return out[0];
}
