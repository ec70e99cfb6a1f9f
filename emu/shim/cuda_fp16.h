// The emulated device's stand-in for <cuda_fp16.h>: __half / __half2 as
// IEEE binary16 (_Float16, round-to-nearest-even conversions, as the cuda_fp16
// `_rn` intrinsics), plus every CUDA built-in the kernels use
// (emu_builtins.h). The kernel files include it as <cuda_fp16.h> through
// common.cuh, unchanged. Test equipment: see emu/README.md.
#pragma once

#include "emu_builtins.h"

struct __half {
    _Float16 v;
};

struct __half2 {
    __half x, y;  // x is the low 16 bits, as on the GPU
};

static_assert(sizeof(__half) == 2 && alignof(__half) == 2, "__half must be 2 bytes");
static_assert(sizeof(__half2) == 4, "__half2 must be 4 bytes");

static inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
static inline __half __float2half(float f) { return __float2half_rn(f); }
static inline float __half2float(__half h) { return static_cast<float>(h.v); }
static inline __half2 __floats2half2_rn(float lo, float hi) {
    return __half2{__float2half_rn(lo), __float2half_rn(hi)};
}
static inline __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
static inline float2 __half22float2(__half2 h) {
    return float2{__half2float(h.x), __half2float(h.y)};
}
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
