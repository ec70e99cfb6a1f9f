// Host-side stand-in for <cuda_fp16.h> and the CUDA built-ins the kernels
// use, so a kernel file can be compiled by g++ and run on the CPU (one
// std::thread per emulated GPU thread where warps shuffle). For checking
// index formulas and control flow without a GPU (scripts/emulate_embed.cpp);
// it says nothing about timing, memory ordering or the hardware.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __launch_bounds__(...)

struct __half {
    _Float16 v;
};
struct __half2 {
    __half x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct float2 {
    float x, y;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline float2 __half22float2(__half2 h) { return {(float)h.x.v, (float)h.y.v}; }
inline __half2 __floats2half2_rn(float a, float b) {
    return {{(_Float16)a}, {(_Float16)b}};
}
template <class T>
T __ldg(const T* p) {
    return *p;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
using std::max;
using std::min;

// One warp = 32 std::threads meeting at a barrier in every shuffle.
struct EmuWarp {
    std::barrier<> bar{32};
    float slot[32];
};
inline thread_local EmuWarp* emu_warp = nullptr;
inline thread_local int emu_lane = 0;

inline float __shfl_xor_sync(unsigned, float x, int offset) {
    emu_warp->slot[emu_lane] = x;
    emu_warp->bar.arrive_and_wait();
    const float r = emu_warp->slot[emu_lane ^ offset];
    emu_warp->bar.arrive_and_wait();
    return r;
}

// Runs `kernel` over a 1-D grid of 1-D blocks, each warp as 32 threads.
inline void emu_launch_warps(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    for (unsigned bx = 0; bx < grid; ++bx) {
        for (unsigned w = 0; w < block / 32; ++w) {
            EmuWarp warp;
            std::vector<std::thread> lanes;
            for (int l = 0; l < 32; ++l) {
                lanes.emplace_back([&, l] {
                    blockIdx = {bx, 0, 0};
                    threadIdx = {w * 32 + l, 0, 0};
                    blockDim = {block, 1, 1};
                    gridDim = {grid, 1, 1};
                    emu_warp = &warp;
                    emu_lane = l;
                    kernel();
                });
            }
            for (auto& t : lanes) t.join();
        }
    }
}

// Runs `kernel` over a 1-D grid thread by thread (for kernels with no
// intra-warp communication).
inline void emu_launch_serial(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    for (unsigned bx = 0; bx < grid; ++bx) {
        for (unsigned t = 0; t < block; ++t) {
            blockIdx = {bx, 0, 0};
            threadIdx = {t, 0, 0};
            blockDim = {block, 1, 1};
            gridDim = {grid, 1, 1};
            kernel();
        }
    }
}
