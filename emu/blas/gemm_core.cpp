// The GEMM engine shared by the emulated cuBLAS and cuBLASLt (see
// gemm_core.h). Test equipment only.
//
// Blocking (Goto style): for each NC-column block of D, for each KC slice of
// k, op(B) is packed to f32 in NR-column slivers and, per MC-row block,
// op(A) to f32 in MR-row slivers; an MR x NR register-tile micro-kernel
// (GCC vector extensions: SSE2 at the x86-64 baseline, or AVX2 where the CPU
// has it; never FMA) accumulates into an f32 buffer of the D block.
// Each element of D is then the sequential f32 sum over k (in k order) of
// the f32 products, scaled by alpha, plus beta * C, plus the bias, through
// the activation, rounded once to the output type.
#include "gemm_core.h"

#include <emu/api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <thread>
#include <vector>

namespace emu_blas {

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F16: return "CUDA_R_16F";
        case DType::BF16: return "CUDA_R_16BF";
        case DType::F32: return "CUDA_R_32F";
    }
    return "?";
}

void say(const char* api, const std::string& message) {
    std::fprintf(stderr, "smarttrim-emu: %s: %s\n", api, message.c_str());
}

std::string fmt(const char* f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

const char* status_name(int status) {
    switch (status) {
        case 0: return "CUBLAS_STATUS_SUCCESS";
        case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
        case 7: return "CUBLAS_STATUS_INVALID_VALUE";
        case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
        case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_?";
}

int worker_threads() {
    static const int n = [] {
        if (const char* s = std::getenv("SMARTTRIM_EMU_BLAS_THREADS")) {
            int v = std::atoi(s);
            if (v >= 1 && v <= 64) return v;
        }
        unsigned hw = std::thread::hardware_concurrency();
        return hw >= 2 ? 2 : 1;
    }();
    return n;
}

// ---- conversions -----------------------------------------------------------

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u);  // inf; NaN quieted
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        // Subnormal: man * 2^-24, exact in f32.
        bits = sign | std::bit_cast<uint32_t>(float(man) * 5.9604644775390625e-8f);
    }
    return std::bit_cast<float>(bits);
}

uint16_t float_to_half(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {  // inf, NaN (quiet, top payload bits kept)
        return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? (0x200u | ((ax >> 13) & 0x3ffu)) : 0u));
    }
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520: rounds to inf
    if (ax < 0x38800000u) {
        // Below the smallest normal half: let an f32 addition do the
        // round-to-nearest-even at the half subnormal quantum (2^-24).
        const float magic = 0.5f;  // exponent 126: its ulp is 2^-24
        float r = std::bit_cast<float>(ax) + magic;
        return uint16_t(sign | uint16_t(std::bit_cast<uint32_t>(r) - std::bit_cast<uint32_t>(magic)));
    }
    const uint32_t odd = (ax >> 13) & 1u;
    ax += (uint32_t(15 - 127) << 23) + 0xfffu + odd;
    return uint16_t(sign | uint16_t(ax >> 13));
}

float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

uint16_t float_to_bf16(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1u);
    return uint16_t(x >> 16);
}

namespace {

template <DType T> struct St;
template <> struct St<DType::F16> {
    using type = uint16_t;
    static float get(uint16_t v) { return half_to_float(v); }
    static uint16_t put(float f) { return float_to_half(f); }
};
template <> struct St<DType::BF16> {
    using type = uint16_t;
    static float get(uint16_t v) { return bf16_to_float(v); }
    static uint16_t put(float f) { return float_to_bf16(f); }
};
template <> struct St<DType::F32> {
    using type = float;
    static float get(float v) { return v; }
    static float put(float f) { return f; }
};

// ---- the micro-kernel --------------------------------------------------------

// The micro-kernel: c[0:MR, 0:NR] (column-major, ldc) = (acc ? c : 0) +
// sum over p of a[p*MR + i] * b[p*NR + j], in p order. Two builds of the
// same arithmetic: SSE (the x86-64 baseline, two 4-float registers per tile
// column) and AVX2 (one 8-float register), picked once by the CPU. Both do
// the same f32 multiplication and addition per element in the same order
// (no FMA: AVX2 does not imply it, and -ffp-contract=off), so their results
// are bit-identical; the test checks that. -DEMU_BLAS_NO_AVX2: SSE only.
constexpr int64_t MR = 8, NR = 6;
constexpr int64_t KC = 256, MC = 128, NC = 768;  // MC % MR == 0, NC % NR == 0

inline int64_t round_up(int64_t x, int64_t q) { return (x + q - 1) / q * q; }

typedef float v4 __attribute__((vector_size(16)));
typedef float v8 __attribute__((vector_size(32)));
#define EMU_LDV(v, p) std::memcpy(&(v), (p), sizeof(v))
#define EMU_STV(p, v) std::memcpy((p), &(v), sizeof(v))

void micro_sse(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t ldc,
               bool acc) {
    v4 c0[NR], c1[NR];
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) {
        if (acc) {
            EMU_LDV(c0[j], c + j * ldc);
            EMU_LDV(c1[j], c + j * ldc + 4);
        } else {
            c0[j] = v4{0, 0, 0, 0};
            c1[j] = v4{0, 0, 0, 0};
        }
    }
    for (int64_t p = 0; p < kc; ++p) {
        v4 a0, a1;
        EMU_LDV(a0, a + p * MR);
        EMU_LDV(a1, a + p * MR + 4);
        const float* bp = b + p * NR;
#pragma GCC unroll 6
        for (int j = 0; j < NR; ++j) {
            const float s = bp[j];
            const v4 bv = {s, s, s, s};
            c0[j] += a0 * bv;
            c1[j] += a1 * bv;
        }
    }
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) {
        EMU_STV(c + j * ldc, c0[j]);
        EMU_STV(c + j * ldc + 4, c1[j]);
    }
}

#ifndef EMU_BLAS_NO_AVX2
__attribute__((target("avx2"))) void micro_avx2(int64_t kc, const float* __restrict a, const float* __restrict b,
                                                float* __restrict c, int64_t ldc, bool acc) {
    v8 cj[NR];
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) {
        if (acc) EMU_LDV(cj[j], c + j * ldc);
        else cj[j] = v8{0, 0, 0, 0, 0, 0, 0, 0};
    }
    for (int64_t p = 0; p < kc; ++p) {
        v8 av;
        EMU_LDV(av, a + p * MR);
        const float* bp = b + p * NR;
#pragma GCC unroll 6
        for (int j = 0; j < NR; ++j) {
            const float s = bp[j];
            const v8 bv = {s, s, s, s, s, s, s, s};
            cj[j] += av * bv;
        }
    }
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) EMU_STV(c + j * ldc, cj[j]);
}
#endif

using MicroFn = void (*)(int64_t, const float*, const float*, float*, int64_t, bool);

MicroFn pick_micro() {
#ifndef EMU_BLAS_NO_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return micro_avx2;
#endif
    return micro_sse;
}

template <class T>
inline const T* at(const void* base, int64_t elems) {
    return reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(base) + uintptr_t(elems * int64_t(sizeof(T))));
}
template <class T>
inline T* at_mut(void* base, int64_t elems) {
    return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(base) + uintptr_t(elems * int64_t(sizeof(T))));
}

struct Scratch {
    std::vector<float> ap, bp, acc;
};

// op(A)[i0 : i0+mc, p0 : p0+kc] -> MR-row slivers, zero-padded: dst[s][p][r].
template <DType T>
void pack_a(const Problem& P, const typename St<T>::type* A, int64_t i0, int64_t mc, int64_t p0,
            int64_t kc, float* dst) {
    using S = St<T>;
    const int64_t ns = (mc + MR - 1) / MR;
    for (int64_t s = 0; s < ns; ++s) {
        float* d = dst + s * kc * MR;
        const int64_t rows = std::min(MR, mc - s * MR);
        if (!P.trans_a) {  // op(A)(i, p) = A[i + p*lda]
            for (int64_t p = 0; p < kc; ++p) {
                const auto* col = A + (p0 + p) * P.lda + i0 + s * MR;
                float* dp = d + p * MR;
                for (int64_t r = 0; r < rows; ++r) dp[r] = S::get(col[r]);
                for (int64_t r = rows; r < MR; ++r) dp[r] = 0.0f;
            }
        } else {  // op(A)(i, p) = A[p + i*lda]
            for (int64_t r = 0; r < MR; ++r) {
                if (r < rows) {
                    const auto* row = A + (i0 + s * MR + r) * P.lda + p0;
                    for (int64_t p = 0; p < kc; ++p) d[p * MR + r] = S::get(row[p]);
                } else {
                    for (int64_t p = 0; p < kc; ++p) d[p * MR + r] = 0.0f;
                }
            }
        }
    }
}

// op(B)[p0 : p0+kc, j0 : j0+nc] -> NR-column slivers, zero-padded: dst[s][p][c].
template <DType T>
void pack_b(const Problem& P, const typename St<T>::type* B, int64_t p0, int64_t kc, int64_t j0,
            int64_t nc, float* dst) {
    using S = St<T>;
    const int64_t ns = (nc + NR - 1) / NR;
    for (int64_t s = 0; s < ns; ++s) {
        float* d = dst + s * kc * NR;
        const int64_t cols = std::min(NR, nc - s * NR);
        if (!P.trans_b) {  // op(B)(p, j) = B[p + j*ldb]
            for (int64_t c = 0; c < NR; ++c) {
                if (c < cols) {
                    const auto* col = B + (j0 + s * NR + c) * P.ldb + p0;
                    for (int64_t p = 0; p < kc; ++p) d[p * NR + c] = S::get(col[p]);
                } else {
                    for (int64_t p = 0; p < kc; ++p) d[p * NR + c] = 0.0f;
                }
            }
        } else {  // op(B)(p, j) = B[j + p*ldb]
            for (int64_t p = 0; p < kc; ++p) {
                const auto* row = B + (p0 + p) * P.ldb + j0 + s * NR;
                float* dp = d + p * NR;
                for (int64_t c = 0; c < cols; ++c) dp[c] = S::get(row[c]);
                for (int64_t c = cols; c < NR; ++c) dp[c] = 0.0f;
            }
        }
    }
}

inline float activate(Act act, float v) {
    switch (act) {
        case Act::None: return v;
        case Act::Relu: return v > 0.0f ? v : 0.0f;  // NaN -> 0, as max(0, x)
        case Act::Gelu: {
            // cuBLASLt's GELU: the tanh approximation.
            const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
            const float k1 = 0.044715f;
            return 0.5f * v * (1.0f + std::tanh(k0 * (v + k1 * v * v * v)));
        }
    }
    return v;
}

// Columns [j0, j1) of D for one batch.
template <DType TAB, DType TCD>
void run_block(const Problem& P, int64_t batch, int64_t j0, int64_t j1, float alpha, float beta,
               Scratch& s) {
    using SA = St<TAB>;
    using SC = St<TCD>;
    using TA = typename SA::type;
    using TC = typename SC::type;
    const int64_t m = P.m, k = P.k;
    const bool product = alpha != 0.0f && k > 0;
    const TA* A = product ? at<TA>(P.a, batch * P.stride_a) : nullptr;
    const TA* B = product ? at<TA>(P.b, batch * P.stride_b) : nullptr;
    const TC* C = beta != 0.0f ? at<TC>(P.c, batch * P.stride_c) : nullptr;
    TC* D = at_mut<TC>(P.d, batch * P.stride_d);
    const TC* bias = P.bias ? at<TC>(P.bias, batch * P.bias_stride) : nullptr;
    const int64_t mp = round_up(m, MR);

    for (int64_t jc = j0; jc < j1; jc += NC) {
        const int64_t nc = std::min(NC, j1 - jc);
        const int64_t ncp = round_up(nc, NR);
        if (product) {
            s.acc.resize(size_t(mp * ncp));
            for (int64_t pc = 0; pc < k; pc += KC) {
                const int64_t kc = std::min(KC, k - pc);
                s.bp.resize(size_t(kc * ncp));
                pack_b<TAB>(P, B, pc, kc, jc, nc, s.bp.data());
                for (int64_t ic = 0; ic < m; ic += MC) {
                    const int64_t mc = std::min(MC, m - ic);
                    const int64_t nsa = (mc + MR - 1) / MR;
                    s.ap.resize(size_t(nsa * MR * kc));
                    pack_a<TAB>(P, A, ic, mc, pc, kc, s.ap.data());
                    static const MicroFn micro = pick_micro();
                    for (int64_t js = 0; js < ncp / NR; ++js) {
                        const float* bs = s.bp.data() + js * kc * NR;
                        float* cs = s.acc.data() + ic + js * NR * mp;
                        for (int64_t is = 0; is < nsa; ++is) {
                            micro(kc, s.ap.data() + is * kc * MR, bs, cs + is * MR, mp, pc > 0);
                        }
                    }
                }
            }
        }
        for (int64_t j = 0; j < nc; ++j) {
            const int64_t col = jc + j;
            const float* acc = product ? s.acc.data() + j * mp : nullptr;
            const TC* ccol = C ? C + col * P.ldc : nullptr;
            TC* dcol = D + col * P.ldd;
            for (int64_t i = 0; i < m; ++i) {
                float v = acc ? alpha * acc[i] : 0.0f;
                if (ccol) v += beta * SC::get(ccol[i]);
                if (bias) v += SC::get(bias[i]);
                dcol[i] = SC::put(activate(P.act, v));
            }
        }
    }
}

template <DType TAB, DType TCD>
void compute_typed(const Problem& P, float alpha, float beta) {
    const int threads = worker_threads();
    const double flops = 2.0 * double(P.m) * double(P.n) * double(std::max<int64_t>(P.k, 1)) * double(P.batch);
    auto serial = [&] {
        Scratch s;
        for (int64_t b = 0; b < P.batch; ++b) run_block<TAB, TCD>(P, b, 0, P.n, alpha, beta, s);
    };
    if (threads <= 1 || flops < 4e6) {
        serial();
        return;
    }
    // Work split: whole batches when there are enough of them, else
    // column ranges (multiples of NR) of every batch. Disjoint writes.
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> failures(static_cast<size_t>(threads));
    auto work = [&](int t) {
        try {
            Scratch s;
            if (P.batch >= threads) {
                for (int64_t b = t; b < P.batch; b += threads) run_block<TAB, TCD>(P, b, 0, P.n, alpha, beta, s);
            } else {
                const int64_t chunk = round_up((P.n + threads - 1) / threads, NR);
                const int64_t lo = std::min(P.n, chunk * t), hi = std::min(P.n, chunk * (t + 1));
                for (int64_t b = 0; b < P.batch && lo < hi; ++b) run_block<TAB, TCD>(P, b, lo, hi, alpha, beta, s);
            }
        } catch (...) {
            failures[size_t(t)] = std::current_exception();
        }
    };
    int started = 0;
    try {
        for (int t = 1; t < threads; ++t) {
            pool.emplace_back(work, t);
            ++started;
        }
    } catch (...) {
        // Could not start a thread: do its share here.
    }
    work(0);
    for (int t = started + 1; t < threads; ++t) work(t);
    for (auto& th : pool) th.join();
    for (auto& f : failures)
        if (f) std::rethrow_exception(f);
}

void compute(const Problem& P, float alpha, float beta) {
    using D = DType;
    const D ab = P.type_ab, cd = P.type_cd;
    if (ab == D::F16 && cd == D::F16) return compute_typed<D::F16, D::F16>(P, alpha, beta);
    if (ab == D::F16 && cd == D::F32) return compute_typed<D::F16, D::F32>(P, alpha, beta);
    if (ab == D::BF16 && cd == D::BF16) return compute_typed<D::BF16, D::BF16>(P, alpha, beta);
    if (ab == D::BF16 && cd == D::F32) return compute_typed<D::BF16, D::F32>(P, alpha, beta);
    if (ab == D::F32 && cd == D::F32) return compute_typed<D::F32, D::F32>(P, alpha, beta);
    // The callers only build the combinations above.
    emu::device_fault(P.api, std::string("internal error: no GEMM for A/B ") + dtype_name(ab) + ", C/D " + dtype_name(cd));
}

// Checks one operand of every batch: element alignment, then each batch's
// range inside one live allocation.
bool operand_ok(const Problem& P, const char* name, const void* base, int64_t rows, int64_t cols,
                int64_t ld, int64_t stride, DType t, size_t align) {
    const uint64_t span = matrix_span_bytes(rows, cols, ld, t);
    if (span == 0) return true;
    const size_t es = dtype_size(t);
    if (align < es) align = es;
    if (reinterpret_cast<uintptr_t>(base) % align != 0) {
        emu::device_fault(P.api, fmt("misaligned address: %s = %p is not %zu-byte aligned (%s)", name, base, align,
                                     dtype_name(t)));
        return false;
    }
    for (int64_t b = 0; b < P.batch; ++b) {
        const uintptr_t start = reinterpret_cast<uintptr_t>(base) + uintptr_t(b * stride * int64_t(es));
        if (!emu::device_range_ok(reinterpret_cast<const void*>(start), span)) {
            emu::device_fault(
                P.api, fmt("illegal address: %s of batch %lld: %llu bytes at %p (%lld x %lld, ld %lld, batch stride "
                           "%lld elements) are not inside one live device allocation",
                           name, (long long)b, (unsigned long long)span, reinterpret_cast<const void*>(start),
                           (long long)rows, (long long)cols, (long long)ld, (long long)stride));
            return false;
        }
    }
    return true;
}

}  // namespace

void execute(const Problem& P) {
    try {
        if (P.m <= 0 || P.n <= 0 || P.batch <= 0) return;
        float alpha = P.alpha, beta = P.beta;
        if (P.scalars_on_device) {
            for (const float* s : {P.alpha_dev, P.beta_dev}) {
                if (reinterpret_cast<uintptr_t>(s) % alignof(float) != 0 || !emu::device_range_ok(s, sizeof(float))) {
                    emu::device_fault(P.api, fmt("illegal address: device-mode %s pointer %p is not an aligned float "
                                                 "in a live device allocation",
                                                 s == P.alpha_dev ? "alpha" : "beta", static_cast<const void*>(s)));
                    return;
                }
            }
            alpha = *P.alpha_dev;
            beta = *P.beta_dev;
        }
        const bool product = alpha != 0.0f && P.k > 0;
        if (product) {
            if (!operand_ok(P, "A", P.a, P.trans_a ? P.k : P.m, P.trans_a ? P.m : P.k, P.lda, P.stride_a, P.type_ab, 0))
                return;
            if (!operand_ok(P, "B", P.b, P.trans_b ? P.n : P.k, P.trans_b ? P.k : P.n, P.ldb, P.stride_b, P.type_ab, 0))
                return;
        }
        if (beta != 0.0f && !operand_ok(P, "C", P.c, P.m, P.n, P.ldc, P.stride_c, P.type_cd, 0)) return;
        if (!operand_ok(P, "D", P.d, P.m, P.n, P.ldd, P.stride_d, P.type_cd, 0)) return;
        if (P.bias && !operand_ok(P, "bias", P.bias, P.m, 1, P.m, P.bias_stride, P.type_cd, P.bias_align_required))
            return;
        if (P.workspace_used > 0) {
            if (!emu::device_range_ok(P.workspace, P.workspace_used)) {
                emu::device_fault(P.api, fmt("illegal address: workspace %p: the %zu bytes the algorithm uses are not "
                                             "inside one live device allocation",
                                             P.workspace, P.workspace_used));
                return;
            }
            std::memset(P.workspace, 0xff, P.workspace_used);
        }
        compute(P, alpha, beta);
    } catch (const std::bad_alloc&) {
        emu::device_fault(P.api, "the emulator ran out of host memory for its GEMM buffers");
    } catch (const std::exception& e) {
        emu::device_fault(P.api, fmt("internal error in the emulated GEMM: %s", e.what()));
    } catch (...) {
        emu::device_fault(P.api, "internal error in the emulated GEMM");
    }
}

}  // namespace emu_blas
