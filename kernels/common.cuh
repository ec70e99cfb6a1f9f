// Shared device helpers for every kernel family. Header-only; each .cu file
// is its own PTX module, so everything here is static inline.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

// The inline-PTX helpers (cp.async, ldmatrix, mma.sync), as <ptx.cuh> so the
// CPU emulator can substitute its own (see the header).
#include <ptx.cuh>

#define ST_DEVICE static __device__ __forceinline__

// 16-byte vector of eight f16 values: the unit of every global load/store on
// packed rows (rows are required to be multiples of 8 elements wide, and row
// starts are then 16-byte aligned because allocations are 256-byte aligned).
struct __align__(16) half8 {
    __half2 h[4];
};

ST_DEVICE half8 load_half8(const __half* p) {
    half8 v;
    *reinterpret_cast<uint4*>(&v) = *reinterpret_cast<const uint4*>(p);
    return v;
}

ST_DEVICE void store_half8(__half* p, const half8& v) {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&v);
}

ST_DEVICE void half8_to_float(const half8& v, float out[8]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f = __half22float2(v.h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

ST_DEVICE half8 float_to_half8(const float in[8]) {
    half8 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v.h[i] = __floats2half2_rn(in[2 * i], in[2 * i + 1]);
    }
    return v;
}

ST_DEVICE float warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
    return x;
}

ST_DEVICE float warp_max(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    }
    return x;
}

// Erf-form GELU, as BERT and ViT define it (DESIGN.md).
ST_DEVICE float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

ST_DEVICE float sigmoidf(float x) {
    return 1.0f / (1.0f + __expf(-x));
}

// The number of rows actually present: a host upper bound, optionally
// tightened by a count the device wrote earlier in the same stream (so a
// launch sized for the unpruned length does no work past the true end).
ST_DEVICE int effective_rows(int host_rows, const int* rows_dev) {
    return rows_dev != nullptr ? min(host_rows, *rows_dev) : host_rows;
}
