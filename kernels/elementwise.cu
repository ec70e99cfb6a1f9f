// Elementwise and row-wise kernels on packed rows: LayerNorm (optionally
// fused with a residual add).
#include "common.cuh"

struct LayerNormShape {
    int rows;   // host upper bound on the number of rows
    int d;      // row width; a multiple of 8
    float eps;
};

// LayerNorm over packed rows: one warp per row, f16 in and out, statistics in
// f32. out = LN(x + residual) * gamma + beta, where residual may be null.
// Two passes over the row (mean, then centred variance) instead of
// sum/sum-of-squares: the latter cancels badly when |mean| >> std, and the
// second read of a row comes from L1.
extern "C" __global__ void layernorm_f16(const __half* __restrict__ x,
                                         const __half* __restrict__ residual,
                                         const __half* __restrict__ gamma,
                                         const __half* __restrict__ beta,
                                         __half* __restrict__ out,
                                         const int* __restrict__ rows_dev,
                                         LayerNormShape shape) {
    const int lane = threadIdx.x & 31;
    const int warps_per_block = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const int rows = effective_rows(shape.rows, rows_dev);
    if (row >= rows) return;

    const int d = shape.d;
    const int vecs = d >> 3;  // 16-byte vectors per row
    // 64-bit row offset: rows * d can pass 2^31 for large batches.
    const size_t base = static_cast<size_t>(row) * d;
    const __half* xr = x + base;
    const __half* rr = residual != nullptr ? residual + base : nullptr;

    float sum = 0.f;
    for (int v = lane; v < vecs; v += 32) {
        float a[8];
        half8_to_float(load_half8(xr + v * 8), a);
        if (rr != nullptr) {
            float b[8];
            half8_to_float(load_half8(rr + v * 8), b);
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] += b[i];
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) sum += a[i];
    }
    const float mean = warp_sum(sum) / d;

    float sq = 0.f;
    for (int v = lane; v < vecs; v += 32) {
        float a[8];
        half8_to_float(load_half8(xr + v * 8), a);
        if (rr != nullptr) {
            float b[8];
            half8_to_float(load_half8(rr + v * 8), b);
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] += b[i];
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float c = a[i] - mean;
            sq += c * c;
        }
    }
    const float rstd = rsqrtf(warp_sum(sq) / d + shape.eps);

    __half* orow = out + base;
    for (int v = lane; v < vecs; v += 32) {
        float a[8], g[8], b[8];
        half8_to_float(load_half8(xr + v * 8), a);
        if (rr != nullptr) {
            float r[8];
            half8_to_float(load_half8(rr + v * 8), r);
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] += r[i];
        }
        half8_to_float(load_half8(gamma + v * 8), g);
        half8_to_float(load_half8(beta + v * 8), b);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = (a[i] - mean) * rstd * g[i] + b[i];
        store_half8(orow + v * 8, float_to_half8(a));
    }
}
