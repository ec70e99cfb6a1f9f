// Sparse-head ragged attention (DESIGN.md "sparse-head attention"): fused,
// flash-style (online softmax, f32 accumulation, mma.sync tensor cores) over
// packed ragged sequences, spending work only on the active (sequence, head)
// pairs of a compacted list that lives on the device.
//
// Floor, per active (sequence b, head h) with n = len_q(b), m = len_k(b):
//   FLOPs  4 * n * m * dh   (QK^T and PV, 2 FLOPs per multiply-add) over the
//          dense f16 tensor-core rate (H100/H200 SXM ~990 TFLOP/s dense; A100
//          312), e.g. BLIP text->image cross-attention n=40, m=577, dh=64,
//          12 heads, batch 32: 2.27 GFLOP -> ~2.3 us at peak;
//   bytes  2 * (n * dh [q] + 2 * m * dh [k, v] + n * dh [out]) per active head
//          (each of q, k, v read once, out written once), e.g. the same shape:
//          2 * (40 + 1154 + 40) * 64 * 384 heads = 60.7 MB -> ~13 us at 4.8 TB/s.
//   Short queries (text, 40 rows) are bandwidth bound (K/V dominate); image
//   self-attention (577 x 577) is compute bound. Pruned heads cost nothing
//   but one early-returning block per query tile (grid sized by B*H).
//
// Entry points (f16; bf16 is not provided):
//   attention_fwd_d64_f16 / _d32_f16 / _d16_f16     fused kernel, template on dh
//   attention_active_list                           [B,H] u8 mask -> compacted
//                                                   (seq, head) list + count
//   attention_zero_inactive_f16                     zero the output slices of
//                                                   heads whose mask is 0
//   attention_pad_f16, attention_softmax_f16,       pieces of the unfused dense
//   attention_unpad_f16                             baseline (cuBLAS GEMMs in
//                                                   src/ops/attention.rs)
//
// Inactive heads: the fused kernel never touches them, so their output slice
// must be zeroed separately: attention_zero_inactive_f16 runs over the
// [B, H] mask (the wrapper launches it when a mask is given). Without a mask
// the caller promises every head is in the active list.
#include "common.cuh"

// Parameters of the fused kernel. Pointers carry the column offset of the
// operand already (self-attention: q = qkv, k = qkv + D, v = qkv + 2D, all
// with row stride 3D; cross-attention: q with stride D, k = kv, v = kv + D
// with stride 2D); head h then sits at columns h*dh of each row.
struct AttnParams {
    const __half* q;
    const __half* k;
    const __half* v;
    __half* out;
    const int* cu_q;       // [batch + 1]
    const int* cu_k;       // [batch + 1]
    const int2* active;    // [batch * heads] (sequence, head), first *n_active valid
    const int* n_active;   // [1]
    int q_stride;          // row strides in elements (multiples of 8)
    int k_stride;
    int v_stride;
    int out_stride;
    int batch;
    int heads;
    int rows_q;            // rows in the q / out buffers (clamp for bad cu_q)
    int rows_k;            // rows in the k / v buffers
    int max_seqlen_q;      // host upper bounds; lengths are clamped to them
    int max_seqlen_k;
    float scale_log2;      // log2(e) / sqrt(dh): exp(x*s) == exp2(x*s*log2 e)
    int pad_;
};

namespace {

constexpr int BLOCK_M = 64;   // query rows per block (4 warps x 16 rows)
constexpr int BLOCK_N = 64;   // keys per K/V tile
constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;

ST_DEVICE uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);  // .x (low 16 bits) = lo
    return *reinterpret_cast<uint32_t*>(&h);
}

// Copies `BLOCK_N` rows x DH of one head from global into a padded smem tile
// (row pitch LDS). Rows at or past `valid` are zero-filled: V's padding rows
// must be finite zeros because P (exactly 0 there) multiplies them, and
// 0 * NaN garbage would poison the accumulator.
template <int DH, int LDS, int ROWS>
ST_DEVICE void load_tile(__half* s, const __half* g, int stride, int valid, int tid) {
    constexpr int CHUNKS = DH / 8;  // 16-byte chunks per row
#pragma unroll
    for (int i = tid; i < ROWS * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS;
        const int c = i % CHUNKS;
        const bool ok = r < valid;
        // A valid address even for zero-fill (row 0 of the tile always exists
        // when the tile is loaded at all: valid >= 1).
        const __half* src = g + static_cast<size_t>(ok ? r : 0) * stride + c * 8;
        cp_async16(s + r * LDS + c * 8, src, ok ? 16 : 0);
    }
}

}  // namespace

// One block = BLOCK_M query rows of one active (sequence, head); 4 warps own
// 16 rows each and loop over BLOCK_N-key tiles (double-buffered cp.async).
// Grid: (ceil(max_seqlen_q / BLOCK_M), batch * heads). Block (128).
template <int DH>
__device__ __forceinline__ void attention_fwd(const AttnParams& p) {
    // Row pitch DH + 8 halves: consecutive rows shift by 16 bytes (4 banks),
    // so the 8 row addresses of one ldmatrix hit 8 distinct 16-byte bank
    // groups (conflict free) while keeping 16-byte alignment for cp.async.
    constexpr int LDS = DH + 8;
    constexpr int KSTEPS = DH / 16;     // k-steps of QK^T over the head dim
    constexpr int NT_S = BLOCK_N / 8;   // n8 tiles of S per warp
    constexpr int NT_O = DH / 8;        // n8 tiles of O per warp
    __shared__ __align__(16) __half sQ[BLOCK_M * LDS];
    __shared__ __align__(16) __half sK[2][BLOCK_N * LDS];
    __shared__ __align__(16) __half sV[2][BLOCK_N * LDS];

    // --- which work item (uniform over the block: early returns are safe
    // before any barrier) ---
    const int item = blockIdx.y;
    if (item >= *p.n_active) return;
    const int2 sh = p.active[item];
    const int b = sh.x;
    const int head = sh.y;
    if (b < 0 || b >= p.batch || head < 0 || head >= p.heads) return;

    // Lengths from the device, clamped to the host bounds and the buffers so
    // inconsistent cu_seqlens can never make the kernel read out of bounds.
    const int q_start = p.cu_q[b];
    const int k_start = p.cu_k[b];
    const int len_q = max(0, min(min(p.cu_q[b + 1], p.rows_q) - q_start, p.max_seqlen_q));
    const int len_k = max(0, min(min(p.cu_k[b + 1], p.rows_k) - k_start, p.max_seqlen_k));
    const int m0 = blockIdx.x * BLOCK_M;
    if (q_start < 0 || k_start < 0 || m0 >= len_q) return;

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;  // accumulator row within the 8-row half
    const int t = lane & 3;   // accumulator column pair

    const __half* qg = p.q + static_cast<size_t>(q_start + m0) * p.q_stride + head * DH;
    const __half* kg = p.k + static_cast<size_t>(k_start) * p.k_stride + head * DH;
    const __half* vg = p.v + static_cast<size_t>(k_start) * p.v_stride + head * DH;
    const int n_tiles = (len_k + BLOCK_N - 1) / BLOCK_N;
    // This warp's 16 rows hold at least one real query row.
    const bool warp_busy = m0 + warp * 16 < len_q;

    // Group 0: the Q tile and K/V tile 0.
    load_tile<DH, LDS, BLOCK_M>(sQ, qg, p.q_stride, len_q - m0, tid);
    if (n_tiles > 0) {
        load_tile<DH, LDS, BLOCK_N>(sK[0], kg, p.k_stride, len_k, tid);
        load_tile<DH, LDS, BLOCK_N>(sV[0], vg, p.v_stride, len_k, tid);
    }
    cp_async_commit();

    uint32_t qf[KSTEPS][4];
    float o[NT_O][4];
#pragma unroll
    for (int j = 0; j < NT_O; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    // Running max (log2 domain, scaled) and partial row sums for rows g, g+8.
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.f, 0.f};

    for (int it = 0; it < n_tiles; ++it) {
        const int stage = it & 1;
        const int n0 = it * BLOCK_N;
        if (it + 1 < n_tiles) {
            const int nn = n0 + BLOCK_N;
            load_tile<DH, LDS, BLOCK_N>(sK[stage ^ 1], kg + static_cast<size_t>(nn) * p.k_stride,
                                        p.k_stride, len_k - nn, tid);
            load_tile<DH, LDS, BLOCK_N>(sV[stage ^ 1], vg + static_cast<size_t>(nn) * p.v_stride,
                                        p.v_stride, len_k - nn, tid);
        }
        // Always commit (possibly empty) so "all but the newest group" is
        // exactly "everything up to tile `it`".
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        if (warp_busy) {
            if (it == 0) {
                // A fragments of Q (16 x 16 per k-step): lanes 0-15 address
                // rows 0-15 at column 0 of the k-step, lanes 16-31 the same rows
                // at column 8 -> registers a0a1, a2a3, a4a5, a6a7.
#pragma unroll
                for (int ks = 0; ks < KSTEPS; ++ks) {
                    const __half* a = sQ + (warp * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8;
                    ldmatrix_x4(qf[ks], a);
                }
            }
            const __half* k_s = sK[stage];
            const __half* v_s = sV[stage];

            // S = Q K^T (16 x BLOCK_N per warp). K's smem tile is [key][dh],
            // which is B (k = dh, n = key) in "col" layout, so plain ldmatrix:
            // matrices (keys +0..7, dh +0), (keys +0..7, dh +8),
            // (keys +8..15, dh +0), (keys +8..15, dh +8) -> b0b1/b2b3 of the
            // n-tiles 2np and 2np+1.
            float s[NT_S][4];
#pragma unroll
            for (int j = 0; j < NT_S; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
                for (int np = 0; np < NT_S / 2; ++np) {
                    uint32_t bf[4];
                    const int key = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                    const int col = ks * 16 + ((lane >> 3) & 1) * 8;
                    ldmatrix_x4(bf, k_s + key * LDS + col);
                    mma16816(s[2 * np], qf[ks], bf[0], bf[1]);
                    mma16816(s[2 * np + 1], qf[ks], bf[2], bf[3]);
                }
            }

            // Keys past the sequence's end (last tile only) get -inf: s[j][c]
            // is key n0 + 8j + 2t + (c & 1).
            if (n0 + BLOCK_N > len_k) {
#pragma unroll
                for (int j = 0; j < NT_S; ++j) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        if (n0 + j * 8 + 2 * t + (c & 1) >= len_k) s[j][c] = -INFINITY;
                    }
                }
            }

            // Online softmax. Rows g (c = 0, 1) and g + 8 (c = 2, 3); a row's
            // 64 scores are spread over the 4 lanes of a quad (xor 1, 2).
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < NT_S; ++j) {
                mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
                mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
            }
            float alpha[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                // Key n0 < len_k is always real, so mx is finite and m_new too.
                const float m_new = fmaxf(m_run[r], mx[r] * p.scale_log2);
                alpha[r] = exp2f(m_run[r] - m_new);  // 0 on the first tile
                m_run[r] = m_new;
            }
            float rs[2] = {0.f, 0.f};
#pragma unroll
            for (int j = 0; j < NT_S; ++j) {
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int r = c >> 1;
                    s[j][c] = exp2f(fmaf(s[j][c], p.scale_log2, -m_run[r]));  // -inf -> 0
                    rs[r] += s[j][c];
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) l_run[r] = l_run[r] * alpha[r] + rs[r];
#pragma unroll
            for (int j = 0; j < NT_O; ++j) {
                o[j][0] *= alpha[0];
                o[j][1] *= alpha[0];
                o[j][2] *= alpha[1];
                o[j][3] *= alpha[1];
            }

            // O += P V. P's A fragment for keys 16kk..16kk+15 is S n-tiles 2kk
            // (a0a1 = row g, a2a3 = row g+8) and 2kk+1 (a4a5, a6a7): the
            // accumulator and A layouts coincide, no shuffles needed. V's smem
            // tile is [key][dh] = B (k = key, n = dh) row-major, so ldmatrix
            // .trans: matrices (keys +0..7, dh +0), (keys +8..15, dh +0),
            // (keys +0..7, dh +8), (keys +8..15, dh +8) -> b0b1/b2b3 of the
            // dh n-tiles 2dp and 2dp+1.
#pragma unroll
            for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
                uint32_t pa[4];
                pa[0] = pack_half2(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_half2(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < DH / 16; ++dp) {
                    uint32_t bf[4];
                    const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                    const int col = dp * 16 + (lane >> 4) * 8;
                    ldmatrix_x4_trans(bf, v_s + key * LDS + col);
                    mma16816(o[2 * dp], pa, bf[0], bf[1]);
                    mma16816(o[2 * dp + 1], pa, bf[2], bf[3]);
                }
            }
        }
        // The next iteration overwrites the other stage's buffers; this one's
        // are overwritten the iteration after, so every warp must be done.
        __syncthreads();
    }

    // No K/V tile at all (len_k == 0): the Q copy may still be in flight.
    cp_async_wait<0>();
    __syncthreads();
    if (!warp_busy) return;

    // Finish the row sums across the quad, normalise. An empty key set
    // (len_k == 0) writes zeros rather than 0/0.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    // Stage the warp's 16 x DH result in its own rows of sQ (no other warp
    // reads them; its Q fragments are already in registers), then write
    // whole 16-byte row chunks.
    __half* so = sQ + warp * 16 * LDS;
#pragma unroll
    for (int j = 0; j < NT_O; ++j) {
        *reinterpret_cast<uint32_t*>(so + g * LDS + j * 8 + 2 * t) =
            pack_half2(o[j][0] * inv[0], o[j][1] * inv[0]);
        *reinterpret_cast<uint32_t*>(so + (g + 8) * LDS + j * 8 + 2 * t) =
            pack_half2(o[j][2] * inv[1], o[j][3] * inv[1]);
    }
    __syncwarp();
    constexpr int CHUNKS = DH / 8;
    const int row0 = m0 + warp * 16;  // first query row (within the sequence)
#pragma unroll
    for (int i = lane; i < 16 * CHUNKS; i += 32) {
        const int r = i / CHUNKS;
        const int c = i % CHUNKS;
        if (row0 + r < len_q) {
            __half* dst = p.out + static_cast<size_t>(q_start + row0 + r) * p.out_stride +
                          head * DH + c * 8;
            *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(so + r * LDS + c * 8);
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd_d64_f16(AttnParams p) {
    attention_fwd<64>(p);
}

extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd_d32_f16(AttnParams p) {
    attention_fwd<32>(p);
}

// Head size 16 (small models, e.g. tiny test checkpoints): one k-step of
// QK^T, two n8 tiles of O.
extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd_d16_f16(AttnParams p) {
    attention_fwd<16>(p);
}

// Builds the compacted list of active (sequence, head) pairs from a [B, H]
// u8 mask (nonzero = active), in row-major (sequence-major) order, and its
// count. One block of 256 threads loops over the mask in chunks: a ballot
// gives each active entry its rank within the warp, a shared-memory scan of
// the 8 warp counts its rank within the chunk. Launch: grid (1), block (256).
extern "C" __global__ void __launch_bounds__(256)
attention_active_list(const unsigned char* __restrict__ mask, int batch, int heads,
                      int2* __restrict__ active, int* __restrict__ n_active) {
    __shared__ int warp_counts[8];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n = batch * heads;
    int base = 0;  // entries written by earlier chunks (uniform)
    for (int start = 0; start < n; start += 256) {
        const int i = start + threadIdx.x;
        const bool on = i < n && mask[i] != 0;
        const unsigned ballot = __ballot_sync(0xffffffffu, on);
        if (lane == 0) warp_counts[warp] = __popc(ballot);
        __syncthreads();
        int before = 0;
        int total = 0;
#pragma unroll
        for (int w = 0; w < 8; ++w) {
            before += w < warp ? warp_counts[w] : 0;
            total += warp_counts[w];
        }
        if (on) {
            const int rank = base + before + __popc(ballot & ((1u << lane) - 1u));
            active[rank] = make_int2(i / heads, i % heads);
        }
        base += total;
        __syncthreads();  // warp_counts is rewritten by the next chunk
    }
    if (threadIdx.x == 0) *n_active = base;
}

struct ZeroParams {
    __half* out;
    const int* cu_q;
    const unsigned char* mask;  // [batch, heads]
    int out_stride;
    int batch;
    int heads;
    int head_dim;
    int rows_q;
    int max_seqlen_q;
};

// Writes zeros into the output slices of inactive heads (mask 0): the fused
// kernel never visits them. Grid (ceil(max_seqlen_q / 16), batch), block
// (128): each block covers 16 rows of one sequence, 16-byte stores.
extern "C" __global__ void __launch_bounds__(128) attention_zero_inactive_f16(ZeroParams p) {
    const int b = blockIdx.y;
    const int q_start = p.cu_q[b];
    const int len_q = max(0, min(min(p.cu_q[b + 1], p.rows_q) - q_start, p.max_seqlen_q));
    const int r0 = blockIdx.x * 16;
    if (q_start < 0 || r0 >= len_q) return;
    const int chunks = (p.heads * p.head_dim) >> 3;  // 16-byte chunks per row
    const int per_head = p.head_dim >> 3;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    for (int i = threadIdx.x; i < 16 * chunks; i += blockDim.x) {
        const int r = r0 + i / chunks;
        const int c = i % chunks;
        if (r < len_q && p.mask[b * p.heads + c / per_head] == 0) {
            *reinterpret_cast<uint4*>(p.out + static_cast<size_t>(q_start + r) * p.out_stride +
                                      c * 8) = zero;
        }
    }
}

// ---------------------------------------------------------------------------
// Unfused dense baseline (benches only): pad -> cuBLAS S = Q K^T (scale folded
// into alpha) -> softmax -> cuBLAS O = P V -> unpad.

// Packed rows (one operand at column offset 0 of `src`, row stride
// `src_stride`) -> padded [batch, heads, max_len, dh], zero rows past each
// sequence's length. Grid (max_len, batch), block (128).
extern "C" __global__ void __launch_bounds__(128)
attention_pad_f16(const __half* __restrict__ src, int src_stride, const int* __restrict__ cu,
                  int heads, int head_dim, int max_len, __half* __restrict__ dst) {
    const int b = blockIdx.y;
    const int r = blockIdx.x;
    const int start = cu[b];
    const int len = min(cu[b + 1] - start, max_len);
    const int per_head = head_dim >> 3;
    for (int i = threadIdx.x; i < heads * per_head; i += blockDim.x) {
        const int h = i / per_head;
        const int c = i % per_head;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < len) {
            v = *reinterpret_cast<const uint4*>(src + static_cast<size_t>(start + r) * src_stride +
                                                h * head_dim + c * 8);
        }
        const size_t o = ((static_cast<size_t>(b) * heads + h) * max_len + r) * head_dim + c * 8;
        *reinterpret_cast<uint4*>(dst + o) = v;
    }
}

// Row softmax of S [batch * heads * len_q_pad, len_k_pad] in place, f32 math;
// keys past sequence b's true length get probability 0. One warp per row.
// Grid (ceil(rows / 4)), block (128).
extern "C" __global__ void __launch_bounds__(128)
attention_softmax_f16(__half* __restrict__ s, const int* __restrict__ cu_k, int heads,
                      int len_q_pad, int len_k_pad, int rows) {
    const int row = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int b = row / (heads * len_q_pad);
    const int len_k = min(cu_k[b + 1] - cu_k[b], len_k_pad);
    __half* sr = s + static_cast<size_t>(row) * len_k_pad;
    float mx = -INFINITY;
    for (int j = lane; j < len_k; j += 32) mx = fmaxf(mx, __half2float(sr[j]));
    mx = warp_max(mx);
    float sum = 0.f;
    for (int j = lane; j < len_k; j += 32) sum += __expf(__half2float(sr[j]) - mx);
    const float inv = 1.f / warp_sum(sum);
    for (int j = lane; j < len_k_pad; j += 32) {
        const float pj = j < len_k ? __expf(__half2float(sr[j]) - mx) * inv : 0.f;
        sr[j] = __float2half_rn(pj);
    }
}

// Padded O [batch, heads, max_len, dh] -> packed out [Nq, heads*dh] (row
// stride out_stride), rows past each length skipped. Grid (max_len, batch),
// block (128).
extern "C" __global__ void __launch_bounds__(128)
attention_unpad_f16(const __half* __restrict__ src, const int* __restrict__ cu, int heads,
                    int head_dim, int max_len, __half* __restrict__ out, int out_stride) {
    const int b = blockIdx.y;
    const int r = blockIdx.x;
    const int start = cu[b];
    const int len = min(cu[b + 1] - start, max_len);
    if (r >= len) return;
    const int per_head = head_dim >> 3;
    for (int i = threadIdx.x; i < heads * per_head; i += blockDim.x) {
        const int h = i / per_head;
        const int c = i % per_head;
        const size_t o = ((static_cast<size_t>(b) * heads + h) * max_len + r) * head_dim + c * 8;
        *reinterpret_cast<uint4*>(out + static_cast<size_t>(start + r) * out_stride +
                                  h * head_dim + c * 8) = *reinterpret_cast<const uint4*>(src + o);
    }
}
