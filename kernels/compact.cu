// Masked token compaction over packed ragged sequences.
//
// Floor: the kept rows are read once and written once (2 * kept * D * 2
// bytes), plus 4-byte orig_index per kept row in and out, plus one read of the
// keep flags (1 byte/row) or scores (4 bytes/row). No FLOPs to speak of.
//
// Structure (three launches, no host round trip):
//   1. compact_plan_{flags,budget}: one block per sequence. Decides each row's
//      keep flag (the flag itself, or the budget rule), then a block-wide
//      exclusive scan over the sequence's rows in order gives each kept row its
//      destination *within* the sequence; dropped rows get -1. Writes the
//      per-row destination into a scratch `dst_local [total] i32` and the
//      sequence's kept count into the caller's statistics slot `counts [B]`.
//   2. compact_scan: a single block turns `counts` into the new cu_seqlens by
//      an exclusive scan over sequences (and the new total row count).
//   3. compact_gather_f16: one warp per source row; a kept row copies itself
//      with 16-byte vectors to new_cu[b] + dst_local and writes its orig_index.
// Kernels 2 and 3 read what 1 and 2 wrote: stream order is the only
// synchronisation, so the whole step is graph-capturable.
//
// Budget top-k: rank-by-counting in shared memory (each candidate counts the
// candidates that beat it: higher score, or equal score and lower orig_index
// (then lower row; NaN scores count as -inf, as in the CPU reference);
// it is kept iff fewer than k' beat it). O(n^2 / threads) per sequence, fine
// for n <= COMPACT_BUDGET_MAX_ROWS (4096); the total order makes ranks
// distinct, so exactly k' rows are kept even with ties.
#include "common.cuh"

#define COMPACT_PLAN_THREADS 1024
#define COMPACT_SCAN_THREADS 1024
#define COMPACT_GATHER_WARPS 4
#define COMPACT_BUDGET_MAX_ROWS 4096

struct CompactPlanShape {
    int batch;
    int keep_first;  // 1: a sequence's first row is always kept
    float rho;       // budget rule only: k = max(1, ceil(rho * n))
    int rows;        // host bound on the rows (cu_seqlens[batch]; the buffers' length)
    int max_seqlen;  // host bound on any sequence's length
};

struct CompactGatherShape {
    int batch;
    int max_seqlen;  // host upper bound on any sequence's length
    int d;           // row width, a multiple of 8
    int rows;        // host bound on the rows (the buffers' length)
};

// Sequence b's rows as [*begin, *begin + return value), from the device
// cu_seqlens clamped to the host bounds: rows within [0, rows), at most
// max_seqlen of them. With consistent cu_seqlens this is exactly the
// sequence; with inconsistent ones (a caller's bug) no kernel of this file
// can read or write outside its buffers.
static __device__ __forceinline__ int seq_span(const int* __restrict__ cu, int b, int rows,
                                               int max_seqlen, int* begin) {
    const int lo = min(max(cu[b], 0), rows);
    const int hi = min(max(cu[b + 1], lo), rows);
    *begin = lo;
    return min(hi - lo, max_seqlen);
}

// Exclusive block scan of 0/1 flags (one per thread) in thread order; returns
// this thread's exclusive prefix and writes the block total to *total.
// Requires blockDim.x a multiple of 32 and `warp_counts` of 32 ints.
static __device__ __forceinline__ int block_exclusive_scan_flag(bool flag, int* warp_counts,
                                                                int* total) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    // Flags of lower lanes in this warp.
    const int in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    if (warp == 0) {
        int c = lane < nwarps ? warp_counts[lane] : 0;
        // Inclusive warp scan, then shift to exclusive.
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int t = __shfl_up_sync(0xffffffffu, c, o);
            if (lane >= o) c += t;
        }
        if (lane < nwarps) warp_counts[lane] = c;  // inclusive prefix per warp
    }
    __syncthreads();
    const int before = warp == 0 ? 0 : warp_counts[warp - 1];
    *total = warp_counts[nwarps - 1];
    __syncthreads();  // warp_counts is reused by the next call
    return before + in_warp;
}

// Walks the sequence's rows in chunks of blockDim.x, in order, so the scan
// gives order-preserving destinations. `keep_of(i)` is the row's flag.
template <typename KeepOf>
static __device__ __forceinline__ void plan_rows(int begin, int n, KeepOf keep_of,
                                                 int* __restrict__ dst_local,
                                                 uint8_t* __restrict__ keep_out,
                                                 int* __restrict__ counts, int b,
                                                 int* warp_counts) {
    int carry = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int i = base + threadIdx.x;  // row within the sequence
        const bool keep = i < n && keep_of(i);
        int chunk_total;
        const int pos = block_exclusive_scan_flag(keep, warp_counts, &chunk_total);
        if (i < n) {
            dst_local[begin + i] = keep ? carry + pos : -1;
            if (keep_out != nullptr) keep_out[begin + i] = keep ? 1 : 0;
        }
        carry += chunk_total;
    }
    if (threadIdx.x == 0) counts[b] = carry;
}

// Threshold rule: keep flags were computed upstream (the scorer). Row 0 of a
// sequence is forced when keep_first.
extern "C" __global__ void __launch_bounds__(COMPACT_PLAN_THREADS)
    compact_plan_flags(const int* __restrict__ cu_seqlens, const uint8_t* __restrict__ keep,
                       int* __restrict__ dst_local, uint8_t* __restrict__ keep_out,
                       int* __restrict__ counts, CompactPlanShape shape) {
    __shared__ int warp_counts[32];
    const int b = blockIdx.x;
    if (b >= shape.batch) return;
    int begin;
    const int n = seq_span(cu_seqlens, b, shape.rows, shape.max_seqlen, &begin);
    const bool keep_first = shape.keep_first != 0;
    plan_rows(
        begin, n, [&](int i) { return keep[begin + i] != 0 || (keep_first && i == 0); },
        dst_local, keep_out, counts, b, warp_counts);
}

// Budget rule: k = max(1, ceil(rho * n)) rows; with keep_first, row 0 plus
// the k - 1 best of the others, else the k best. "Better" = higher score, ties
// to the lower orig_index. The wrapper guarantees n <= COMPACT_BUDGET_MAX_ROWS.
extern "C" __global__ void __launch_bounds__(COMPACT_PLAN_THREADS)
    compact_plan_budget(const int* __restrict__ cu_seqlens, const float* __restrict__ scores,
                        const int* __restrict__ orig_index, int* __restrict__ dst_local,
                        uint8_t* __restrict__ keep_out, int* __restrict__ counts,
                        CompactPlanShape shape) {
    __shared__ int warp_counts[32];
    // 32 KiB static: scores and orig_index of up to COMPACT_BUDGET_MAX_ROWS rows.
    __shared__ float s[COMPACT_BUDGET_MAX_ROWS];
    __shared__ int oi[COMPACT_BUDGET_MAX_ROWS];
    const int b = blockIdx.x;
    if (b >= shape.batch) return;
    int begin;
    const int n = min(seq_span(cu_seqlens, b, shape.rows, shape.max_seqlen, &begin),
                      COMPACT_BUDGET_MAX_ROWS);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        // NaN ranks lowest, as in the reference (never beats a number).
        const float v = scores[begin + i];
        s[i] = isnan(v) ? -INFINITY : v;
        oi[i] = orig_index[begin + i];
    }
    __syncthreads();
    const bool keep_first = shape.keep_first != 0;
    // Same f32 arithmetic as the CPU reference: ceil of the f32 product.
    int k = static_cast<int>(ceilf(shape.rho * static_cast<float>(n)));
    k = max(1, min(k, n));
    // Candidates: every row, or every row but the first under keep_first.
    const int first_cand = keep_first ? 1 : 0;
    const int k_others = keep_first ? k - 1 : k;
    plan_rows(
        begin, n,
        [&](int i) {
            if (keep_first && i == 0) return true;
            const float si = s[i];
            const int oii = oi[i];
            int beaten_by = 0;
            for (int j = first_cand; j < n && beaten_by < k_others; ++j) {
                const float sj = s[j];
                // Total order: score, then lower orig_index, then lower row.
                beaten_by += (sj > si || (sj == si && (oi[j] < oii || (oi[j] == oii && j < i))))
                                 ? 1
                                 : 0;
            }
            return beaten_by < k_others;
        },
        dst_local, keep_out, counts, b, warp_counts);
}

// new_cu[0] = 0, new_cu[b + 1] = sum of counts[0..=b]; *new_total = new_cu[B].
// One block; chunks of blockDim.x sequences with a running carry.
extern "C" __global__ void __launch_bounds__(COMPACT_SCAN_THREADS)
    compact_scan(const int* __restrict__ counts, int* __restrict__ new_cu,
                 int* __restrict__ new_total, int batch) {
    __shared__ int warp_sums[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    int carry = 0;
    if (threadIdx.x == 0) new_cu[0] = 0;
    for (int base = 0; base < batch; base += blockDim.x) {
        const int b = base + threadIdx.x;
        int c = b < batch ? counts[b] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int t = __shfl_up_sync(0xffffffffu, c, o);
            if (lane >= o) c += t;
        }
        if (lane == 31) warp_sums[warp] = c;
        __syncthreads();
        if (warp == 0) {
            int w = lane < nwarps ? warp_sums[lane] : 0;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int t = __shfl_up_sync(0xffffffffu, w, o);
                if (lane >= o) w += t;
            }
            if (lane < nwarps) warp_sums[lane] = w;
        }
        __syncthreads();
        // c is this thread's inclusive prefix within its warp.
        const int inclusive = carry + (warp == 0 ? 0 : warp_sums[warp - 1]) + c;
        if (b < batch) new_cu[b + 1] = inclusive;
        carry += warp_sums[nwarps - 1];
        __syncthreads();
    }
    if (threadIdx.x == 0 && new_total != nullptr) *new_total = carry;
}

// Grid (ceil(max_seqlen / WARPS), batch): blockIdx.y is the sequence, each warp
// one source row of it; rows past the sequence's device length return.
extern "C" __global__ void __launch_bounds__(32 * COMPACT_GATHER_WARPS)
    compact_gather_f16(const __half* __restrict__ x, const int* __restrict__ cu_seqlens,
                       const int* __restrict__ orig_index, const int* __restrict__ dst_local,
                       const int* __restrict__ new_cu, __half* __restrict__ out,
                       int* __restrict__ new_orig_index, CompactGatherShape shape) {
    const int b = blockIdx.y;
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x * COMPACT_GATHER_WARPS + (threadIdx.x >> 5);
    int begin;
    const int n = seq_span(cu_seqlens, b, shape.rows, shape.max_seqlen, &begin);
    if (i >= n) return;
    const int src = begin + i;
    const int dl = dst_local[src];
    if (dl < 0) return;
    // new_cu is the scan of the plan's (clamped) counts, so dst < rows; the
    // clamp only guards against a caller's inconsistent dst_local.
    const int dst = new_cu[b] + dl;
    if (dl >= n || dst >= shape.rows) return;
    const int d = shape.d;
    const __half* xr = x + static_cast<size_t>(src) * d;
    __half* orow = out + static_cast<size_t>(dst) * d;
    for (int v = lane; v < (d >> 3); v += 32) store_half8(orow + v * 8, load_half8(xr + v * 8));
    if (lane == 0) new_orig_index[dst] = orig_index[src];
}

// orig_index of rows entering a pass: each row's position within its
// sequence. Grid (ceil(max_seqlen / 256), batch), one thread per row of
// sequence blockIdx.y; threads past the sequence's device length return, so
// max_seqlen is only a host upper bound. Lets a pass start from packed rows
// already on the device without a host-built index (nor a host copy, which a
// CUDA-graph capture could not record).
//
// `rows` and `max_seqlen` are the host bounds (the orig_index buffer's length
// and the longest sequence): cu_seqlens is clamped to them, so inconsistent
// values cannot make it write out of bounds.
extern "C" __global__ void __launch_bounds__(256)
    seq_positions_i32(const int* __restrict__ cu_seqlens, int* __restrict__ orig_index, int rows,
                      int max_seqlen) {
    const int b = blockIdx.y;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    int begin;
    const int n = seq_span(cu_seqlens, b, rows, max_seqlen, &begin);
    if (i < n) orig_index[begin + i] = i;
}
