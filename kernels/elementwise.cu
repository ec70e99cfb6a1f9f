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

// ---------------------------------------------------------------------------
// Bias + GELU, bias + residual, pooling.
//
// Floors: bias_gelu reads and writes the matrix once (4 bytes/element),
// bias_residual reads two matrices and writes one (6 bytes/element), the
// pools read each pooled row once and write [B, D].

struct ColsShape {
    int rows;  // host upper bound on the number of rows
    int n;     // row width; a multiple of 8
};

// x[r, c] = GELU(x[r, c] + bias[c]) in place. One thread per 16-byte vector;
// vector v covers columns (v % (n/8)) * 8 .. +8 of row v / (n/8).
extern "C" __global__ void bias_gelu_f16(__half* __restrict__ x, const __half* __restrict__ bias,
                                         const int* __restrict__ rows_dev, ColsShape shape) {
    const int rows = effective_rows(shape.rows, rows_dev);
    const int vpr = shape.n >> 3;
    const size_t total = static_cast<size_t>(rows) * vpr;
    for (size_t v = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
         v += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int col = static_cast<int>(v % vpr) * 8;
        float a[8], bb[8];
        half8_to_float(load_half8(x + v * 8), a);
        half8_to_float(load_half8(bias + col), bb);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = gelu_erf(a[i] + bb[i]);
        store_half8(x + v * 8, float_to_half8(a));
    }
}

// x[r, c] += bias[c] + residual[r, c] in place (the sum in f32, one rounding).
extern "C" __global__ void bias_residual_f16(__half* __restrict__ x,
                                             const __half* __restrict__ bias,
                                             const __half* __restrict__ residual,
                                             const int* __restrict__ rows_dev, ColsShape shape) {
    const int rows = effective_rows(shape.rows, rows_dev);
    const int vpr = shape.n >> 3;
    const size_t total = static_cast<size_t>(rows) * vpr;
    for (size_t v = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
         v += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int col = static_cast<int>(v % vpr) * 8;
        float a[8], bb[8], r[8];
        half8_to_float(load_half8(x + v * 8), a);
        half8_to_float(load_half8(bias + col), bb);
        half8_to_float(load_half8(residual + v * 8), r);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] += bb[i] + r[i];
        store_half8(x + v * 8, float_to_half8(a));
    }
}

#define POOL_COLS_VECS 32  // 16-byte column vectors per block (256 columns)
#define POOL_ROW_GROUPS 8  // row strides per block

struct PoolShape {
    int batch;
    int d;     // a multiple of 8
    int rows;  // rows in x (host bound): cu_seqlens is clamped to it
};

// out[b, :] = mean of rows cu[b] .. cu[b+1] (zeros for an empty sequence),
// accumulated in f32. Block (32, 8): threadIdx.x picks a 16-byte column
// vector (blockIdx.x * 32 + threadIdx.x), threadIdx.y strides over the rows by
// 8; the 8 partial sums meet in shared memory. Grid (ceil(d / 256), batch).
// Writes f32 to out_f32 and/or f16 to out_f16 (either may be null).
extern "C" __global__ void __launch_bounds__(32 * POOL_ROW_GROUPS)
    mean_pool_f16(const __half* __restrict__ x, const int* __restrict__ cu_seqlens,
                  float* __restrict__ out_f32, __half* __restrict__ out_f16, PoolShape shape) {
    __shared__ float part[POOL_ROW_GROUPS][POOL_COLS_VECS * 8 + 4];
    const int b = blockIdx.y;
    const int cv = blockIdx.x * POOL_COLS_VECS + threadIdx.x;
    const int vpr = shape.d >> 3;
    // Clamped to x's rows, so an inconsistent device cu_seqlens pools
    // garbage but never reads past the buffer.
    const int begin = min(max(cu_seqlens[b], 0), shape.rows);
    const int n = min(max(cu_seqlens[b + 1], begin), shape.rows) - begin;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (cv < vpr) {
        for (int i = threadIdx.y; i < n; i += POOL_ROW_GROUPS) {
            float a[8];
            half8_to_float(load_half8(x + static_cast<size_t>(begin + i) * shape.d + cv * 8), a);
#pragma unroll
            for (int k = 0; k < 8; ++k) acc[k] += a[k];
        }
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) part[threadIdx.y][threadIdx.x * 8 + k] = acc[k];
    __syncthreads();
    if (threadIdx.y == 0 && cv < vpr) {
        const float inv = n > 0 ? 1.f / static_cast<float>(n) : 0.f;
        float m[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            float s = 0.f;
#pragma unroll
            for (int g = 0; g < POOL_ROW_GROUPS; ++g) s += part[g][threadIdx.x * 8 + k];
            m[k] = s * inv;
        }
        const size_t o = static_cast<size_t>(b) * shape.d + cv * 8;
        if (out_f32 != nullptr) {
#pragma unroll
            for (int k = 0; k < 8; ++k) out_f32[o + k] = m[k];
        }
        if (out_f16 != nullptr) store_half8(out_f16 + o, float_to_half8(m));
    }
}

// out[b, :] = x[cu[b], :] (first-token / CLS pooling; zeros for an empty
// sequence). One warp per sequence, 16-byte vectors.
extern "C" __global__ void first_token_f16(const __half* __restrict__ x,
                                           const int* __restrict__ cu_seqlens,
                                           __half* __restrict__ out, PoolShape shape) {
    const int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= shape.batch) return;
    // Clamped to x's rows, as in mean_pool_f16.
    const int begin = min(max(cu_seqlens[b], 0), shape.rows);
    const bool empty = min(cu_seqlens[b + 1], shape.rows) <= begin;
    for (int v = lane; v < (shape.d >> 3); v += 32) {
        half8 h;
        if (empty) {
            const float z[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            h = float_to_half8(z);
        } else {
            h = load_half8(x + static_cast<size_t>(begin) * shape.d + v * 8);
        }
        store_half8(out + static_cast<size_t>(b) * shape.d + v * 8, h);
    }
}

// ---------------------------------------------------------------------------
// Bias + activation (the per-stream FFN activation, poolers, heads) and a
// column copy (the features a task head reads).

// Activation codes of ActShape::act (mirrored in src/ops/elementwise.rs).
#define ACT_GELU 0        // erf GELU, as bias_gelu_f16
#define ACT_QUICK_GELU 1  // CLIP: x * sigmoid(1.702 x)
#define ACT_TANH 2        // poolers: tanh(x)

struct ActShape {
    int rows;  // host upper bound on the number of rows
    int n;     // row width; a multiple of 8
    int act;   // ACT_*
};

ST_DEVICE float activate(float x, int act) {
    switch (act) {
        case ACT_QUICK_GELU:
            // The exact exp (not __expf): this is a layer activation, the
            // same f32 math as the CPU reference's.
            return x / (1.0f + expf(-1.702f * x));
        case ACT_TANH:
            return tanhf(x);
        default:
            return gelu_erf(x);
    }
}

// x[r, c] = act(x[r, c] + bias[c]) in place (bias may be null: act(x)). One
// thread per 16-byte vector, grid-stride; rows at or past *rows_dev (when
// given) are untouched.
extern "C" __global__ void bias_act_f16(__half* __restrict__ x, const __half* __restrict__ bias,
                                        const int* __restrict__ rows_dev, ActShape shape) {
    const int rows = effective_rows(shape.rows, rows_dev);
    const int vpr = shape.n >> 3;
    const size_t total = static_cast<size_t>(rows) * vpr;
    for (size_t v = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
         v += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int col = static_cast<int>(v % vpr) * 8;
        float a[8];
        half8_to_float(load_half8(x + v * 8), a);
        if (bias != nullptr) {
            float bb[8];
            half8_to_float(load_half8(bias + col), bb);
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] += bb[i];
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = activate(a[i], shape.act);
        store_half8(x + v * 8, float_to_half8(a));
    }
}

struct CopyColsShape {
    int rows;     // rows copied
    int n;        // columns copied; a multiple of 8
    int src_ld;   // src row stride (elements); a multiple of 8, >= n
    int dst_ld;   // dst row stride (elements); a multiple of 8
    int dst_col;  // first dst column; a multiple of 8, dst_col + n <= dst_ld
};

// dst[r, dst_col + c] = src[r, c] for r < rows, c < n. One thread per 16-byte
// vector, grid-stride.
extern "C" __global__ void copy_cols_f16(const __half* __restrict__ src, __half* __restrict__ dst,
                                         CopyColsShape shape) {
    const int vpr = shape.n >> 3;
    const size_t total = static_cast<size_t>(shape.rows) * vpr;
    for (size_t v = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
         v += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const size_t r = v / vpr;
        const int c = static_cast<int>(v % vpr) * 8;
        const half8 h = load_half8(src + r * shape.src_ld + c);
        store_half8(dst + r * shape.dst_ld + shape.dst_col + c, h);
    }
}
