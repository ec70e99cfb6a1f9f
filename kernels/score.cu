// Token and head pruner scoring (DESIGN.md "Token pruner", "Head pruner").
//
// Token scorer pipeline (the wrapper in src/ops/score.rs launches it):
//   1. layernorm_f16 (elementwise module): u = LN_p(x) into a scratch
//      [rows, D] f16 buffer (and LN_c(y) for the other stream). The LN is a
//      separate pass, not fused into the A-tile load, so the GEMM's inner loop
//      stays a plain tile copy; it costs one extra read+write of [rows, D].
//   2. mean_pool_f16 (elementwise module): g_self [B, D] f32 (g_cross likewise).
//   3. score_context_f16: c_b = W1s g_self + W1c g_cross + b1, [B, Hs] f32.
//   4. score_rows_f16: s_i = w2 . GELU(W1x u_i + c_b) + b2 and the threshold
//      keep flags, with the [rows, Hs] hidden layer kept in registers.
//
// Floors. score_rows_f16: 2 * rows * Hs * D FLOPs on tensor cores (10.9
// GFLOP for 32 x 577 rows, D 768, Hs 384); bytes: u read once (rows * D * 2)
// plus W1x (Hs * D * 2, L2-resident), 5 bytes/row out. score_context_f16:
// (Hs * (D + Dc)) * 2 bytes of weights, B * Hs * (D + Dc) * 2 FLOPs.
// head_logits_f16: the head MLP's weights once per sequence (L2-resident
// after the first), 2 * B * (hh * (D + Dc) + H * hh) FLOPs. head_pairs: B * H
// bytes in, 8 bytes per active pair out.
//
// Weights are f16 on the device, biases f16 too (b2 of the token pruner is a
// by-value f32 scalar in the shape struct); all accumulation is in f32.
#include "common.cuh"

// ---------------------------------------------------------------------------
// score_context_f16: one warp per (hidden unit j, sequence b).

#define CTX_WARPS 8

struct ScoreContextShape {
    int batch;
    int d;   // own-stream width, multiple of 8
    int dc;  // other-stream width, multiple of 8 (0 when there is none)
    int hs;  // hidden width
};

// Dot of an f16 weight row (16-byte aligned) with an f32 vector, one warp.
static __device__ __forceinline__ float warp_dot_h_f(const __half* __restrict__ w,
                                                     const float* __restrict__ g, int n) {
    const int lane = threadIdx.x & 31;
    float acc = 0.f;
    for (int v = lane; v < (n >> 3); v += 32) {
        float a[8];
        half8_to_float(load_half8(w + v * 8), a);
        const float4 g0 = *reinterpret_cast<const float4*>(g + v * 8);
        const float4 g1 = *reinterpret_cast<const float4*>(g + v * 8 + 4);
        acc += a[0] * g0.x + a[1] * g0.y + a[2] * g0.z + a[3] * g0.w;
        acc += a[4] * g1.x + a[5] * g1.y + a[6] * g1.z + a[7] * g1.w;
    }
    return warp_sum(acc);
}

// Grid (ceil(hs / CTX_WARPS), batch), block 32 * CTX_WARPS.
// c[b, j] = W1s[j, :] . g_self[b, :] + W1c[j, :] . g_cross[b, :] + b1[j].
extern "C" __global__ void __launch_bounds__(32 * CTX_WARPS)
    score_context_f16(const float* __restrict__ g_self, const float* __restrict__ g_cross,
                      const __half* __restrict__ w1s, const __half* __restrict__ w1c,
                      const __half* __restrict__ b1, float* __restrict__ c,
                      ScoreContextShape shape) {
    const int b = blockIdx.y;
    const int j = blockIdx.x * CTX_WARPS + (threadIdx.x >> 5);
    if (j >= shape.hs) return;
    float acc = warp_dot_h_f(w1s + static_cast<size_t>(j) * shape.d,
                             g_self + static_cast<size_t>(b) * shape.d, shape.d);
    if (w1c != nullptr && g_cross != nullptr && shape.dc > 0) {
        acc += warp_dot_h_f(w1c + static_cast<size_t>(j) * shape.dc,
                            g_cross + static_cast<size_t>(b) * shape.dc, shape.dc);
    }
    if ((threadIdx.x & 31) == 0) c[static_cast<size_t>(b) * shape.hs + j] = acc + __half2float(b1[j]);
}

// ---------------------------------------------------------------------------
// score_rows_f16: the fused row scorer.
//
// Block: 4 warps, a tile of BM = 64 packed rows (any sequences: each row finds
// its sequence by binary search in cu_seqlens). Warp w owns tile rows
// 16w .. 16w+15 for the whole kernel. For each slice of BN = 64 hidden units
// (Hs / 64 slices), the block accumulates the 64 x 64 pre-activation over K = D
// in BK = 64 steps: A (u rows) and B (W1x rows) tiles go through shared memory,
// each warp runs 4 k-steps x 8 n-tiles of mma.m16n8k16 (f16 in, f32 acc). The
// slice's epilogue adds c_b, applies GELU, multiplies by w2 and folds the
// result into two per-thread row partial sums (rows g and g+8 of the warp's
// m-tile), so the hidden layer never leaves registers. At the end the four
// threads sharing a row (lanes 4g..4g+3) sum their partials with shuffles.
//
// Shared tiles are [64][64] f16 stored as 8 chunks of 16 bytes per row, chunk
// c of row r at position c ^ (r & 7) (XOR swizzle): a fragment load reads 8
// rows x 4 words of one logical chunk, and the swizzle spreads the 8 rows over
// 8 distinct chunk positions = 32 distinct banks.

#define SR_BM 64
#define SR_BN 64
#define SR_BK 64
#define SR_THREADS 128

struct ScoreRowsShape {
    int rows;        // host upper bound on the packed rows (grid size)
    int batch;
    int d;           // multiple of 64
    int hs;          // multiple of 64
    float b2;
    float tau;       // threshold on sigmoid(s)
    int keep_first;  // force the first row of each sequence
    int splits;      // gridDim.y: blocks sharing a row tile, each over hs / splits
                     // hidden units; > 1 writes partial sums for score_finalize
};

static __device__ __forceinline__ int swz(int r, int k) {
    // Element (r, k) of a swizzled [64][64] tile.
    return r * SR_BK + ((((k >> 3) ^ (r & 7))) << 3) + (k & 7);
}

static __device__ __forceinline__ uint32_t lds32(const __half* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// Largest b in [0, batch) with cu[b] <= r: the sequence owning packed row r
// (empty sequences share their start with the next one and are skipped).
static __device__ __forceinline__ int seq_of_row(const int* __restrict__ cu, int batch, int r) {
    int lo = 0, hi = batch - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (cu[mid] <= r) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// Global loads of one k-tile of A (u rows row0.., zeros past total) and B
// (W1x rows nb..nb+63) into registers: 512 chunks of 16 bytes per tile, 4 per
// thread; chunk idx = tid + 128 q covers tile row idx / 8, columns
// kb + (idx % 8) * 8 .. +8. The caller stores chunk ch of row r at the
// swizzled position ch ^ (r & 7).
static __device__ __forceinline__ void load_tiles(const __half* __restrict__ u,
                                                  const __half* __restrict__ w1x, int row0,
                                                  int total, int d, int nb, int kb, uint4 ra[4],
                                                  uint4 rb[4]) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int idx = threadIdx.x + q * SR_THREADS;
        const int r = idx >> 3;
        const int ch = idx & 7;
        const int grow = row0 + r;
        ra[q] = make_uint4(0u, 0u, 0u, 0u);
        if (grow < total) {
            ra[q] = *reinterpret_cast<const uint4*>(u + static_cast<size_t>(grow) * d + kb + ch * 8);
        }
        rb[q] = *reinterpret_cast<const uint4*>(w1x + static_cast<size_t>(nb + r) * d + kb + ch * 8);
    }
}

// Grid (ceil(rows / 64), splits), block 128. With splits == 1 writes
// scores[r] (f32) and, when flags is not null, flags[r] = sigmoid(s) > tau (or
// 1 for a sequence's first row under keep_first) for every row
// r < cu_seqlens[batch]. With splits > 1 (more blocks for small batches) each
// block covers hs / splits hidden units and writes its partial row sums to
// partial [splits, rows]; score_finalize then adds them up. The partials are
// per-row sums over 64+ hidden units, not the hidden layer.
extern "C" __global__ void __launch_bounds__(SR_THREADS)
    score_rows_f16(const __half* __restrict__ u, const int* __restrict__ cu_seqlens,
                   const __half* __restrict__ w1x, const __half* __restrict__ w2,
                   const float* __restrict__ c, float* __restrict__ scores,
                   uint8_t* __restrict__ flags, float* __restrict__ partial,
                   ScoreRowsShape shape) {
    __shared__ __align__(16) __half As[SR_BM * SR_BK];
    __shared__ __align__(16) __half Bs[SR_BN * SR_BK];

    // Device row count, clamped to the host bound (the buffers' rows), so
    // inconsistent cu_seqlens cannot make it read or write out of bounds.
    const int total = min(cu_seqlens[shape.batch], shape.rows);
    const int row0 = blockIdx.x * SR_BM;
    if (row0 >= total) return;  // whole block past the true end

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;  // fragment row group
    const int t = lane & 3;   // thread in group
    const int d = shape.d;
    const int hs = shape.hs;

    // The two rows this thread's accumulators belong to.
    const int r_lo = row0 + warp * 16 + g;
    const int r_hi = r_lo + 8;
    const int b_lo = seq_of_row(cu_seqlens, shape.batch, min(r_lo, total - 1));
    const int b_hi = seq_of_row(cu_seqlens, shape.batch, min(r_hi, total - 1));
    const float* c_lo = c + static_cast<size_t>(b_lo) * hs;
    const float* c_hi = c + static_cast<size_t>(b_hi) * hs;

    float part_lo = 0.f, part_hi = 0.f;

    // This block's share of the hidden units: slice blockIdx.y of `splits`
    // equal slices (hs / splits is a multiple of 64, checked by the wrapper).
    const int hs_per = hs / shape.splits;
    const int nb_begin = blockIdx.y * hs_per;
    for (int nb = nb_begin; nb < nb_begin + hs_per; nb += SR_BN) {
        float acc[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[nt][q] = 0.f;
        }
        // Register double buffering: the next k-tile's global loads are in
        // flight while the tensor cores work on the current one.
        uint4 ra[4], rb[4];
        load_tiles(u, w1x, row0, total, d, nb, 0, ra, rb);
        for (int kb = 0; kb < d; kb += SR_BK) {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int idx = tid + q * SR_THREADS;
                const int r = idx >> 3;
                const int ch = idx & 7;
                *reinterpret_cast<uint4*>(&As[r * SR_BK + ((ch ^ (r & 7)) << 3)]) = ra[q];
                *reinterpret_cast<uint4*>(&Bs[r * SR_BK + ((ch ^ (r & 7)) << 3)]) = rb[q];
            }
            if (kb + SR_BK < d) load_tiles(u, w1x, row0, total, d, nb, kb + SR_BK, ra, rb);
            __syncthreads();
#pragma unroll
            for (int ks = 0; ks < SR_BK; ks += 16) {
                uint32_t a[4];
                const int ar = warp * 16 + g;
                a[0] = lds32(&As[swz(ar, ks + 2 * t)]);
                a[1] = lds32(&As[swz(ar + 8, ks + 2 * t)]);
                a[2] = lds32(&As[swz(ar, ks + 8 + 2 * t)]);
                a[3] = lds32(&As[swz(ar + 8, ks + 8 + 2 * t)]);
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    // B fragment: column n = nt * 8 + g of the slice (a W1x
                    // row), k = 2t, 2t+1 and 2t+8, 2t+9.
                    const int br = nt * 8 + g;
                    const uint32_t b0 = lds32(&Bs[swz(br, ks + 2 * t)]);
                    const uint32_t b1 = lds32(&Bs[swz(br, ks + 8 + 2 * t)]);
                    mma16816(acc[nt], a, b0, b1);
                }
            }
            __syncthreads();
        }
        // Epilogue of this slice: acc[nt][0..1] are row g, hidden columns
        // nb + nt*8 + 2t + {0, 1}; acc[nt][2..3] the same columns of row g+8.
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const int j = nb + nt * 8 + 2 * t;
            const float w0 = __half2float(w2[j]);
            const float w1 = __half2float(w2[j + 1]);
            part_lo += gelu_erf(acc[nt][0] + c_lo[j]) * w0 + gelu_erf(acc[nt][1] + c_lo[j + 1]) * w1;
            part_hi += gelu_erf(acc[nt][2] + c_hi[j]) * w0 + gelu_erf(acc[nt][3] + c_hi[j + 1]) * w1;
        }
    }
    // Lanes 4g .. 4g+3 hold the partials of the same two rows.
    part_lo += __shfl_xor_sync(0xffffffffu, part_lo, 1);
    part_lo += __shfl_xor_sync(0xffffffffu, part_lo, 2);
    part_hi += __shfl_xor_sync(0xffffffffu, part_hi, 1);
    part_hi += __shfl_xor_sync(0xffffffffu, part_hi, 2);
    if (shape.splits > 1) {
        // Partial sums over this block's hidden slice: partial[y][r], with
        // y = blockIdx.y and the host row bound as the row stride.
        if (t == 0) {
            float* pr = partial + static_cast<size_t>(blockIdx.y) * shape.rows;
            if (r_lo < total) pr[r_lo] = part_lo;
            if (r_hi < total) pr[r_hi] = part_hi;
        }
        return;
    }
    if (t == 0) {
        const bool kf = shape.keep_first != 0;
        if (r_lo < total) {
            const float s = part_lo + shape.b2;
            scores[r_lo] = s;
            if (flags != nullptr)
                flags[r_lo] = (sigmoidf(s) > shape.tau || (kf && r_lo == cu_seqlens[b_lo])) ? 1 : 0;
        }
        if (r_hi < total) {
            const float s = part_hi + shape.b2;
            scores[r_hi] = s;
            if (flags != nullptr)
                flags[r_hi] = (sigmoidf(s) > shape.tau || (kf && r_hi == cu_seqlens[b_hi])) ? 1 : 0;
        }
    }
}

// One thread per row r < cu_seqlens[batch]: s = sum of the `splits` partials
// + b2, then scores and flags exactly as score_rows_f16 writes them.
// Floor: splits * rows * 4 bytes read, 5 bytes per row written.
extern "C" __global__ void score_finalize(const float* __restrict__ partial,
                                          const int* __restrict__ cu_seqlens,
                                          float* __restrict__ scores, uint8_t* __restrict__ flags,
                                          ScoreRowsShape shape) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int total = min(cu_seqlens[shape.batch], shape.rows);  // as score_rows_f16
    if (r >= total) return;
    float s = shape.b2;
    for (int y = 0; y < shape.splits; ++y) s += partial[static_cast<size_t>(y) * shape.rows + r];
    scores[r] = s;
    if (flags != nullptr) {
        const int b = seq_of_row(cu_seqlens, shape.batch, r);
        flags[r] = (sigmoidf(s) > shape.tau || (shape.keep_first != 0 && r == cu_seqlens[b])) ? 1 : 0;
    }
}

// ---------------------------------------------------------------------------
// Head pruner: logits, mask and the compacted active (sequence, head) list.

#define HEAD_WARPS 8
#define HEAD_MAX_IN 4096     // D + Dc
#define HEAD_MAX_HIDDEN 4096 // hh
#define HEAD_MAX_HEADS 64

struct HeadShape {
    int batch;
    int d;          // multiple of 8
    int dc;         // multiple of 8, 0 when single stream
    int hh;         // multiple of 8
    int heads;      // <= 64
    float tau;      // threshold on sigmoid(a)
    int min_heads;  // top-up target
};

// Grid batch, block 32 * HEAD_WARPS. z_b = [g_x[b]; g_y[b]] (already the
// means of the LN'd rows, f32), hidden = GELU(W1h z + b1h) in shared memory,
// logits a = W2h hidden + b2h, then the mask with the min_heads top-up.
extern "C" __global__ void __launch_bounds__(32 * HEAD_WARPS)
    head_logits_f16(const float* __restrict__ g_x, const float* __restrict__ g_y,
                    const __half* __restrict__ w1, const __half* __restrict__ b1,
                    const __half* __restrict__ w2, const __half* __restrict__ b2,
                    float* __restrict__ logits, uint8_t* __restrict__ mask,
                    int* __restrict__ head_counts, HeadShape shape) {
    __shared__ __align__(16) float z[HEAD_MAX_IN];
    __shared__ __align__(16) float hid[HEAD_MAX_HIDDEN];
    __shared__ float a[HEAD_MAX_HEADS];
    const int b = blockIdx.x;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int dc = g_y != nullptr ? shape.dc : 0;
    const int k_in = shape.d + shape.dc;  // W1h row length (zeros stand in for a missing g_y)
    for (int i = threadIdx.x; i < k_in; i += blockDim.x) {
        float v = 0.f;
        // A null g_x: the scored stream has no rows at all (the mean of no
        // rows is zeros, as in the CPU reference).
        if (i < shape.d) v = g_x != nullptr ? g_x[static_cast<size_t>(b) * shape.d + i] : 0.f;
        else if (dc > 0) v = g_y[static_cast<size_t>(b) * dc + (i - shape.d)];
        z[i] = v;
    }
    __syncthreads();
    for (int j = warp; j < shape.hh; j += HEAD_WARPS) {
        const float s = warp_dot_h_f(w1 + static_cast<size_t>(j) * k_in, z, k_in);
        if (lane == 0) hid[j] = gelu_erf(s + __half2float(b1[j]));
    }
    __syncthreads();
    for (int h = warp; h < shape.heads; h += HEAD_WARPS) {
        const float s = warp_dot_h_f(w2 + static_cast<size_t>(h) * shape.hh, hid, shape.hh);
        if (lane == 0) {
            const float v = s + __half2float(b2[h]);
            a[h] = v;
            logits[static_cast<size_t>(b) * shape.heads + h] = v;
        }
    }
    __syncthreads();
    // The mask: one thread per head for the threshold, then thread 0 tops up
    // (H <= 64, so the O(H^2) top-up is a few thousand operations).
    __shared__ int on[HEAD_MAX_HEADS];
    for (int h = threadIdx.x; h < shape.heads; h += blockDim.x)
        on[h] = (1.f / (1.f + expf(-a[h])) > shape.tau) ? 1 : 0;
    __syncthreads();
    if (threadIdx.x == 0) {
        const int H = shape.heads;
        int count = 0;
        for (int h = 0; h < H; ++h) count += on[h];
        const int target = min(shape.min_heads, H);
        while (count < target) {
            // Highest logit among the inactive; strict > keeps the lowest
            // index on ties.
            int best = -1;
            float best_a = 0.f;
            for (int h = 0; h < H; ++h) {
                // NaN logits rank lowest (as -inf), as in the CPU reference.
                const float ah = isnan(a[h]) ? -INFINITY : a[h];
                if (on[h] == 0 && (best < 0 || ah > best_a)) {
                    best = h;
                    best_a = ah;
                }
            }
            on[best] = 1;
            ++count;
        }
        if (head_counts != nullptr) head_counts[b] = count;
    }
    __syncthreads();
    for (int h = threadIdx.x; h < shape.heads; h += blockDim.x)
        mask[static_cast<size_t>(b) * shape.heads + h] = static_cast<uint8_t>(on[h]);
}

#define PAIRS_THREADS 1024

// One block: walks mask[B * H] in (sequence, head) order and writes the active
// pairs, in that order, as pairs[2p] = sequence, pairs[2p + 1] = head, and
// their number to *count. Order comes from a block scan per chunk plus a
// running carry.
extern "C" __global__ void __launch_bounds__(PAIRS_THREADS)
    head_pairs(const uint8_t* __restrict__ mask, int* __restrict__ pairs,
               int* __restrict__ count, int batch, int heads) {
    __shared__ int warp_counts[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const int n = batch * heads;
    int carry = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int i = base + threadIdx.x;
        const bool on = i < n && mask[i] != 0;
        const unsigned ballot = __ballot_sync(0xffffffffu, on);
        const int in_warp = __popc(ballot & ((1u << lane) - 1u));
        if (lane == 0) warp_counts[warp] = __popc(ballot);
        __syncthreads();
        if (warp == 0) {
            int v = lane < nwarps ? warp_counts[lane] : 0;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int tt = __shfl_up_sync(0xffffffffu, v, o);
                if (lane >= o) v += tt;
            }
            if (lane < nwarps) warp_counts[lane] = v;
        }
        __syncthreads();
        if (on) {
            const int p = carry + (warp == 0 ? 0 : warp_counts[warp - 1]) + in_warp;
            pairs[2 * p] = i / heads;
            pairs[2 * p + 1] = i % heads;
        }
        carry += warp_counts[nwarps - 1];
        __syncthreads();
    }
    if (threadIdx.x == 0) *count = carry;
}

// ---------------------------------------------------------------------------
// score_dot_f16: the tail of the *unfused* scorer (baseline for benches, and
// usable after any GEMM that wrote h = GELU(...) as [rows, hs] f16):
// s_r = w2 . h_r + b2, flags as in score_rows_f16 but without keep_first
// (the caller has no sequence structure here). One warp per row, 16-byte
// loads. Floor: rows * hs * 2 bytes read.
struct ScoreDotShape {
    int rows;
    int hs;  // multiple of 8
    float b2;
    float tau;
};

extern "C" __global__ void score_dot_f16(const __half* __restrict__ h, const __half* __restrict__ w2,
                                         float* __restrict__ scores, uint8_t* __restrict__ flags,
                                         ScoreDotShape shape) {
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= shape.rows) return;
    const __half* hr = h + static_cast<size_t>(r) * shape.hs;
    float acc = 0.f;
    for (int v = lane; v < (shape.hs >> 3); v += 32) {
        float a[8], w[8];
        half8_to_float(load_half8(hr + v * 8), a);
        half8_to_float(load_half8(w2 + v * 8), w);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc += a[i] * w[i];
    }
    acc = warp_sum(acc);
    if (lane == 0) {
        const float s = acc + shape.b2;
        scores[r] = s;
        if (flags != nullptr) flags[r] = sigmoidf(s) > shape.tau ? 1 : 0;
    }
}
