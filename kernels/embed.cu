// Embeddings on the device: BERT/RoBERTa word + position + token-type rows
// with the embedding LayerNorm, and the two halves of the ViT patch embedding
// around its GEMM (pixels -> patch rows; GEMM output -> CLS + patches +
// position rows). Semantics mirror reference::model::embed exactly.
//
// Floors (all three are bandwidth-bound; there is no arithmetic to speak of):
//
// - bert_embed_f16: per row, the gathered word row (2 D bytes, a random row
//   of a large table: DRAM), the position and type rows (2 D bytes each, but
//   from small tables that stay in L2 after the first sequences), ids and
//   type ids (8 bytes), the output row (2 D bytes) and orig_index (4 bytes).
//   Floor ~ total * (4 D + 12) bytes from DRAM, plus the position table once.
//   MiniLM (D = 384) on 32 x 40 tokens: ~2 MB, under a microsecond at
//   4.8 TB/s, so in practice the launch itself is the cost.
// - vit_patchify_f16: every pixel is read once as f32 and written once as
//   f16: 6 bytes per pixel. ViT-B/16 at 384 px, batch 32: 14.2 M pixels,
//   85 MB, ~18 us at 4.8 TB/s.
// - vit_assemble_f16: reads the GEMM output (2 bytes per element), writes
//   the rows (2 bytes per element) and orig_index (4 bytes per row); the CLS
//   row and the position table ((P + 1) * D * 2 bytes) are read once per
//   image but come from L2 after the first. ~4 bytes per output element.
//
// The patch GEMM between the two ViT kernels goes to cuBLASLt (ops::Blas).
#include "common.cuh"

// ---------------------------------------------------------------------------
// BERT / RoBERTa

struct BertEmbedShape {
    int batch;            // sequences; cu_seqlens holds batch + 1 entries
    int total_rows;       // host upper bound on the packed rows
    int d;                // hidden size; a multiple of 8
    int position_offset;  // position id of a sequence's first token (RoBERTa: 2)
    float eps;            // LayerNorm epsilon
};

// The sequence owning packed row `row`: the largest b in [0, batch) with
// cu[b] <= row. Empty sequences (cu[b] == cu[b + 1]) are skipped naturally:
// the next sequence starts at the same offset, and the largest such b is the
// one whose range [cu[b], cu[b + 1]) actually contains the row. The caller
// guarantees row < cu[batch]. Every lane of a warp searches the same row, so
// the loads are broadcasts of a small array that stays in L1.
ST_DEVICE int sequence_of(const int* __restrict__ cu, int batch, int row) {
    int lo = 0, hi = batch - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;  // upper middle: lo = mid always progresses
        if (__ldg(cu + mid) <= row) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

// The three embedding rows of one token, summed in f32, for the 8 columns of
// 16-byte vector v (the reference's word + position + type order).
ST_DEVICE void bert_sum8(const __half* __restrict__ wr, const __half* __restrict__ pr,
                         const __half* __restrict__ tr, int v, float a[8]) {
    float p[8], t[8];
    half8_to_float(load_half8(wr + v * 8), a);
    half8_to_float(load_half8(pr + v * 8), p);
    half8_to_float(load_half8(tr + v * 8), t);
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = a[i] + p[i] + t[i];
}

// One warp per packed row. Warp-per-row (rather than a block per sequence)
// keeps every warp's work identical however ragged the batch is; the price
// is a binary search over cu_seqlens per row (log2(batch) cached loads,
// nothing next to the three gathered table rows).
//
// Row r of sequence b sits at position r - cu[b] within its sequence: that is
// its orig_index (DESIGN.md: positions before any pruning), and the position
// embedding row is that plus position_offset (RoBERTa's padding_idx + 1).
// The LayerNorm is two-pass like layernorm_f16 (mean, then centred
// variance); the second and third reads of the three table rows come from
// L1, so DRAM sees each row once.
//
// Contract (checked on the host by ops::embed::check_bert_ids before the ids
// are uploaded; the kernel clamps nothing): ids < vocab, type ids < type
// vocab, every sequence's length + position_offset <= max_positions, and
// cu_seqlens non-decreasing from 0. Rows at or past min(total_rows,
// cu[batch]) are not touched.
extern "C" __global__ void bert_embed_f16(const uint32_t* __restrict__ ids,
                                          const uint32_t* __restrict__ type_ids,
                                          const int* __restrict__ cu_seqlens,
                                          const __half* __restrict__ word,
                                          const __half* __restrict__ position,
                                          const __half* __restrict__ token_type,
                                          const __half* __restrict__ gamma,
                                          const __half* __restrict__ beta,
                                          __half* __restrict__ out,
                                          int* __restrict__ orig_index, BertEmbedShape shape) {
    const int lane = threadIdx.x & 31;
    const int warps_per_block = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const int rows = min(shape.total_rows, __ldg(cu_seqlens + shape.batch));
    if (row >= rows) return;

    const int b = sequence_of(cu_seqlens, shape.batch, row);
    const int pos_in_seq = row - __ldg(cu_seqlens + b);
    const int d = shape.d;
    const int vecs = d >> 3;  // 16-byte vectors per row
    // 64-bit table offsets: vocab * d passes 2^31 for large vocabularies.
    const __half* wr = word + static_cast<size_t>(__ldg(ids + row)) * d;
    const __half* pr = position + static_cast<size_t>(pos_in_seq + shape.position_offset) * d;
    const uint32_t ty = type_ids != nullptr ? __ldg(type_ids + row) : 0u;
    const __half* tr = token_type + static_cast<size_t>(ty) * d;

    float sum = 0.f;
    for (int v = lane; v < vecs; v += 32) {
        float a[8];
        bert_sum8(wr, pr, tr, v, a);
#pragma unroll
        for (int i = 0; i < 8; ++i) sum += a[i];
    }
    const float mean = warp_sum(sum) / d;

    float sq = 0.f;
    for (int v = lane; v < vecs; v += 32) {
        float a[8];
        bert_sum8(wr, pr, tr, v, a);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float c = a[i] - mean;
            sq += c * c;
        }
    }
    const float rstd = rsqrtf(warp_sum(sq) / d + shape.eps);

    __half* orow = out + static_cast<size_t>(row) * d;
    for (int v = lane; v < vecs; v += 32) {
        float a[8], g[8], bb[8];
        bert_sum8(wr, pr, tr, v, a);
        half8_to_float(load_half8(gamma + v * 8), g);
        half8_to_float(load_half8(beta + v * 8), bb);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = (a[i] - mean) * rstd * g[i] + bb[i];
        store_half8(orow + v * 8, float_to_half8(a));
    }
    if (lane == 0) orig_index[row] = pos_in_seq;
}

// ---------------------------------------------------------------------------
// ViT

struct PatchifyShape {
    int batch;     // images
    int channels;  // C
    int image;     // H = W, pixels
    int patch;     // p; divides image, and C * p * p is a multiple of 8
};

// pixels: f32 [B, C, H, W] (NCHW, the reference's input). patches: f16
// [B * P, C * p * p] with P = (H / p)^2 patches per image in row-major grid
// order (patch (py, px) is row py * (H / p) + px of its image) and columns in
// the PyTorch conv-weight order (c, ky, kx): column c * p * p + ky * p + kx
// holds pixel (c, py * p + ky, px * p + kx). A GEMM with the [D, C * p * p]
// patch weight then gives each patch's embedding.
//
// One thread per 16-byte output vector (8 consecutive columns of one patch
// row), grid-stride. Writes are fully coalesced. When p is a multiple of 8,
// the 8 columns are 8 consecutive kx of one (c, ky), i.e. 8 consecutive
// pixels of one image row, 32-byte aligned (H is then a multiple of 8 too):
// two float4 loads. Otherwise each column's pixel is located on its own.
extern "C" __global__ void vit_patchify_f16(const float* __restrict__ pixels,
                                            __half* __restrict__ patches, PatchifyShape shape) {
    const int p = shape.patch;
    const int pp = p * p;
    const int is = shape.image;
    const int g = is / p;   // patches per side
    const int np = g * g;   // patches per image
    const int k = shape.channels * pp;  // patch row width
    const int vpr = k >> 3;             // 16-byte vectors per patch row
    const size_t total = static_cast<size_t>(shape.batch) * np * vpr;
    for (size_t v = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
         v += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const size_t r = v / vpr;  // patch row: image b, patch pi
        const int col0 = static_cast<int>(v - r * vpr) * 8;
        const int b = static_cast<int>(r / np);
        const int pi = static_cast<int>(r - static_cast<size_t>(b) * np);
        const int py = pi / g;
        const int px = pi - py * g;
        // Offset of pixel (b, c, y, x) is ((b * C + c) * H + y) * W + x.
        const size_t img = static_cast<size_t>(b) * shape.channels;
        float a[8];
        if ((p & 7) == 0) {
            const int c = col0 / pp;
            const int rem = col0 - c * pp;
            const int ky = rem / p;
            const int kx = rem - ky * p;  // a multiple of 8: the vector stays in one image row
            const float* src = pixels + ((img + c) * is + py * p + ky) * is + px * p + kx;
            const float4 lo = __ldg(reinterpret_cast<const float4*>(src));
            const float4 hi = __ldg(reinterpret_cast<const float4*>(src) + 1);
            a[0] = lo.x; a[1] = lo.y; a[2] = lo.z; a[3] = lo.w;
            a[4] = hi.x; a[5] = hi.y; a[6] = hi.z; a[7] = hi.w;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int col = col0 + i;
                const int c = col / pp;
                const int rem = col - c * pp;
                const int ky = rem / p;
                const int kx = rem - ky * p;
                a[i] = __ldg(pixels + ((img + c) * is + py * p + ky) * is + px * p + kx);
            }
        }
        store_half8(patches + v * 8, float_to_half8(a));
    }
}

struct AssembleShape {
    int batch;    // images
    int patches;  // P per image; each image becomes P + 1 rows
    int d;        // hidden size; a multiple of 8
};

// rows: f16 [B * (P + 1), D]. Row b * (P + 1) is image b's CLS row, cls +
// position[0]; row b * (P + 1) + 1 + i is patch i's embedding (the GEMM
// output row b * P + i, bias included) + position[1 + i]. The sum is taken
// in f32 and rounded once. orig_index[row] = row's place in its image
// (0 = CLS), cu_seqlens[b] = b * (P + 1): every image has the same length.
// No LayerNorm here: the reference (and ViT) normalise inside the layers.
//
// One thread per 16-byte output vector, grid-stride; the first batch + 1
// threads also write cu_seqlens.
extern "C" __global__ void vit_assemble_f16(const __half* __restrict__ patch_out,
                                            const __half* __restrict__ cls,
                                            const __half* __restrict__ position,
                                            __half* __restrict__ rows,
                                            int* __restrict__ orig_index,
                                            int* __restrict__ cu_seqlens, AssembleShape shape) {
    const int n = shape.patches + 1;  // rows per image
    const int d = shape.d;
    const int vpr = d >> 3;
    const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t b = tid; b <= static_cast<size_t>(shape.batch); b += stride) {
        cu_seqlens[b] = static_cast<int>(b) * n;
    }
    const size_t total = static_cast<size_t>(shape.batch) * n * vpr;
    for (size_t v = tid; v < total; v += stride) {
        const size_t r = v / vpr;  // output row: image b, place i
        const int col = static_cast<int>(v - r * vpr) * 8;
        const int b = static_cast<int>(r / n);
        const int i = static_cast<int>(r - static_cast<size_t>(b) * n);
        // Place i >= 1 is patch i - 1 of image b: GEMM row b * P + i - 1.
        const __half* src =
            i == 0 ? cls : patch_out + (static_cast<size_t>(b) * shape.patches + i - 1) * d;
        float a[8], pe[8];
        half8_to_float(load_half8(src + col), a);
        half8_to_float(load_half8(position + static_cast<size_t>(i) * d + col), pe);
#pragma unroll
        for (int k = 0; k < 8; ++k) a[k] += pe[k];
        store_half8(rows + v * 8, float_to_half8(a));
        if (col == 0) orig_index[r] = i;
    }
}
