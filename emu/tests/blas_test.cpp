// Tests of the emulated cuBLASLt / cuBLAS (emu/blas/) against a naive
// double-precision reference, on small independent cases, with the stub
// driver interface (blas_stub_api.cpp) standing in for emu/driver/.
//
// The libraries are opened the way cudarc opens them: dlopen("libcublasLt.so")
// and dlopen("libcublas.so"), every entry point resolved by its exact name.
// Run with the build folder on LD_LIBRARY_PATH (emu/tests/blas_test.sh does).
//
//   blas_test           all tests; exit status 0 iff every check passed
//   blas_test --bench   GFLOP/s of the f16 GEMMs the project's linear layers run
#include "../blas/cublas_types.h"
#include "../blas/gemm_core.h"
#include "blas_stub_api.h"

#include <emu/api.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using emu_blas::DType;

// ---- the libraries, by name ----------------------------------------------------

#define LT_FUNCS(X)                        \
    X(cublasLtCreate)                      \
    X(cublasLtDestroy)                     \
    X(cublasLtMatrixLayoutCreate)          \
    X(cublasLtMatrixLayoutDestroy)         \
    X(cublasLtMatrixLayoutSetAttribute)    \
    X(cublasLtMatmulDescCreate)            \
    X(cublasLtMatmulDescDestroy)           \
    X(cublasLtMatmulDescSetAttribute)      \
    X(cublasLtMatmulPreferenceCreate)      \
    X(cublasLtMatmulPreferenceDestroy)     \
    X(cublasLtMatmulPreferenceSetAttribute) \
    X(cublasLtMatmulAlgoGetHeuristic)      \
    X(cublasLtMatmul)
#define CB_FUNCS(X)              \
    X(cublasCreate_v2)           \
    X(cublasDestroy_v2)          \
    X(cublasSetStream_v2)        \
    X(cublasGetStream_v2)        \
    X(cublasSetWorkspace_v2)     \
    X(cublasSetPointerMode_v2)   \
    X(cublasGetPointerMode_v2)   \
    X(cublasSetMathMode)         \
    X(cublasGetMathMode)         \
    X(cublasGemmEx)              \
    X(cublasGemmStridedBatchedEx)

namespace api {
#define DECL(f) decltype(&::f) f = nullptr;
LT_FUNCS(DECL)
CB_FUNCS(DECL)
#undef DECL
}  // namespace api

static void load_libraries() {
    void* lt = dlopen("libcublasLt.so", RTLD_NOW | RTLD_LOCAL);
    void* cb = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
    if (!lt || !cb) {
        std::fprintf(stderr, "blas_test: cannot open the emulated libraries: %s\n", dlerror());
        std::exit(2);
    }
#define LOAD_LT(f)                                                              \
    api::f = reinterpret_cast<decltype(api::f)>(dlsym(lt, #f));                 \
    if (!api::f) {                                                              \
        std::fprintf(stderr, "blas_test: libcublasLt.so lacks %s\n", #f);       \
        std::exit(2);                                                           \
    }
#define LOAD_CB(f)                                                              \
    api::f = reinterpret_cast<decltype(api::f)>(dlsym(cb, #f));                 \
    if (!api::f) {                                                              \
        std::fprintf(stderr, "blas_test: libcublas.so lacks %s\n", #f);         \
        std::exit(2);                                                           \
    }
    LT_FUNCS(LOAD_LT)
    CB_FUNCS(LOAD_CB)
#undef LOAD_LT
#undef LOAD_CB
}

// ---- checks --------------------------------------------------------------------------

static int g_checks = 0, g_failed = 0;
static std::string g_case;  // what is being tested, for failure messages

static void check(bool ok, const char* file, int line, const char* cond, const char* f = nullptr, ...) {
    ++g_checks;
    if (ok) return;
    ++g_failed;
    std::fprintf(stderr, "FAIL %s:%d [%s]: %s", file, line, g_case.c_str(), cond);
    if (f) {
        std::fputs(": ", stderr);
        va_list ap;
        va_start(ap, f);
        std::vfprintf(stderr, f, ap);
        va_end(ap);
    }
    std::fputc('\n', stderr);
}
#define CHECK(cond, ...) check((cond), __FILE__, __LINE__, #cond __VA_OPT__(, ) __VA_ARGS__)

// Captures what the libraries print on stderr (fd 2) while alive.
struct StderrCapture {
    int saved = -1;
    FILE* tmp = nullptr;
    StderrCapture() {
        std::fflush(stderr);
        saved = dup(2);
        tmp = std::tmpfile();
        dup2(fileno(tmp), 2);
    }
    std::string finish() {
        std::fflush(stderr);
        dup2(saved, 2);
        close(saved);
        std::string s;
        std::rewind(tmp);
        char buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, tmp)) > 0) s.append(buf, n);
        std::fclose(tmp);
        return s;
    }
};

// ---- data --------------------------------------------------------------------------------

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
    double sym(double scale) { return (2.0 * uniform() - 1.0) * scale; }
};

// "Device" memory: host memory, 256-byte aligned like cuMemAlloc's.
struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
    explicit Buf(size_t n) : bytes(n ? n : 1) {
        p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
        std::memset(p, 0, bytes);
    }
    ~Buf() { std::free(p); }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    template <class T = void>
    T* at(size_t byte_offset = 0) const {
        return reinterpret_cast<T*>(static_cast<char*>(p) + byte_offset);
    }
};

static double get(const void* base, int64_t i, DType t) {
    switch (t) {
        case DType::F16: return emu_blas::half_to_float(static_cast<const uint16_t*>(base)[i]);
        case DType::BF16: return emu_blas::bf16_to_float(static_cast<const uint16_t*>(base)[i]);
        case DType::F32: return static_cast<const float*>(base)[i];
    }
    return 0;
}
static void put(void* base, int64_t i, DType t, double v) {
    switch (t) {
        case DType::F16: static_cast<uint16_t*>(base)[i] = emu_blas::float_to_half(float(v)); break;
        case DType::BF16: static_cast<uint16_t*>(base)[i] = emu_blas::float_to_bf16(float(v)); break;
        case DType::F32: static_cast<float*>(base)[i] = float(v); break;
    }
}
// A NaN with a payload no arithmetic produces: marks "never written".
static void put_sentinel(void* base, int64_t i, DType t) {
    if (t == DType::F32) {
        uint32_t bits = 0x7fc0beefu;
        std::memcpy(static_cast<float*>(base) + i, &bits, 4);
    } else {
        static_cast<uint16_t*>(base)[i] = t == DType::F16 ? 0x7e5a : 0x7fa5;
    }
}
static bool is_sentinel(const void* base, int64_t i, DType t) {
    if (t == DType::F32) {
        uint32_t bits;
        std::memcpy(&bits, static_cast<const float*>(base) + i, 4);
        return bits == 0x7fc0beefu;
    }
    return static_cast<const uint16_t*>(base)[i] == (t == DType::F16 ? 0x7e5a : 0x7fa5);
}

static cudaDataType cuda_type(DType t) {
    return t == DType::F16 ? CUDA_R_16F : t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
}
static double unit_roundoff(DType t) {
    return t == DType::F16 ? std::ldexp(1.0, -11) : t == DType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24);
}
static double min_quantum(DType t) {  // half the smallest subnormal step
    return t == DType::F16 ? std::ldexp(1.0, -25) : t == DType::BF16 ? std::ldexp(1.0, -134) : std::ldexp(1.0, -150);
}

static double gelu_tanh(double x) {
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
static double gelu_erf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

// ---- one GEMM case -------------------------------------------------------------------------

enum class Api { Lt, StridedBatchedEx, GemmEx };

struct Case {
    const char* name = "";
    Api api = Api::Lt;
    int64_t m = 1, n = 1, k = 1, batch = 1;
    bool ta = false, tb = false;
    int64_t pad_a = 0, pad_b = 0, pad_c = 0, pad_d = 0;  // leading dimension beyond the minimum
    int64_t gap = 0;             // elements between consecutive batch matrices
    bool broadcast_a = false;    // batch stride 0 for A
    float alpha = 1.0f, beta = 0.0f;
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    int64_t bias_gap = -1;       // batched bias: stride m + bias_gap; -1: stride 0 (shared)
    DType tab = DType::F16, tcd = DType::F16;
    int compute = CUBLAS_COMPUTE_32F;
    bool in_place = true;        // C == D (cuBLAS always)
    bool nan_c = false;          // fill C with NaN (only meaningful with beta == 0)
    bool device_scalars = false;
    double scale_a = 1.0, scale_b = 1.0;
};

static bool has_bias(uint32_t e) {
    return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU_BIAS || e == CUBLASLT_EPILOGUE_GELU_BIAS;
}
static int act_of(uint32_t e) {  // 0 none, 1 relu, 2 gelu
    if (e == CUBLASLT_EPILOGUE_RELU || e == CUBLASLT_EPILOGUE_RELU_BIAS) return 1;
    if (e == CUBLASLT_EPILOGUE_GELU || e == CUBLASLT_EPILOGUE_GELU_BIAS) return 2;
    return 0;
}

static void set_attr(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a, const void* v, size_t n) {
    cublasStatus_t st = api::cublasLtMatrixLayoutSetAttribute(l, a, v, n);
    CHECK(st == CUBLAS_STATUS_SUCCESS, "layout attribute %d -> %d", int(a), int(st));
}
static void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void* v, size_t n) {
    cublasStatus_t st = api::cublasLtMatmulDescSetAttribute(d, a, v, n);
    CHECK(st == CUBLAS_STATUS_SUCCESS, "desc attribute %d -> %d", int(a), int(st));
}

static const CUstream kStream = reinterpret_cast<CUstream>(uintptr_t(0x5eed0));
static const size_t kWorkspaceBytes = 33554432;  // what cudarc allocates on Hopper

// The call sequence of cudarc 0.19.10's Matmul::matmul (layouts, desc with
// TRANSA/B/C and epilogue, preference with the workspace size, heuristic,
// matmul, destroy), with separate C and D when asked.
static cublasStatus_t lt_gemm(cublasLtHandle_t h, const Case& c, const void* A, const void* B, const void* C, void* D,
                              const void* bias, const float* alpha, const float* beta, void* ws, int64_t lda,
                              int64_t ldb, int64_t ldc, int64_t ldd, int64_t sa, int64_t sb, int64_t sc, int64_t sd,
                              int64_t sbias) {
    cublasLtMatrixLayout_t la, lb, lc, ld;
    const cudaDataType tab = cuda_type(c.tab), tcd = cuda_type(c.tcd);
    CHECK(api::cublasLtMatrixLayoutCreate(&la, tab, c.ta ? c.k : c.m, c.ta ? c.m : c.k, lda) == 0);
    CHECK(api::cublasLtMatrixLayoutCreate(&lb, tab, c.tb ? c.n : c.k, c.tb ? c.k : c.n, ldb) == 0);
    CHECK(api::cublasLtMatrixLayoutCreate(&lc, tcd, c.m, c.n, ldc) == 0);
    CHECK(api::cublasLtMatrixLayoutCreate(&ld, tcd, c.m, c.n, ldd) == 0);
    if (c.batch > 1) {
        const int bc = int(c.batch);
        for (auto [l, s] : {std::pair{la, sa}, std::pair{lb, sb}, std::pair{lc, sc}, std::pair{ld, sd}}) {
            set_attr(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc);
            set_attr(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &s, sizeof s);
        }
    }
    cublasLtMatmulDesc_t desc;
    CHECK(api::cublasLtMatmulDescCreate(&desc, cublasComputeType_t(c.compute), CUDA_R_32F) == 0);
    const int32_t ta = c.ta, tb = c.tb, tc = 0;
    set_attr(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(uint32_t));
    set_attr(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(uint32_t));
    set_attr(desc, CUBLASLT_MATMUL_DESC_TRANSC, &tc, sizeof(uint32_t));
    if (bias) {
        set_attr(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (sbias) set_attr(desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &sbias, sizeof sbias);
    }
    const uint32_t epi = c.epilogue;
    set_attr(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(cublasLtMatmulDescAttributes_t));
    if (c.device_scalars) {
        const int32_t pm = CUBLASLT_POINTER_MODE_DEVICE;
        set_attr(desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm);
    }
    cublasLtMatmulPreference_t pref;
    CHECK(api::cublasLtMatmulPreferenceCreate(&pref) == 0);
    CHECK(api::cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspaceBytes,
                                                    sizeof kWorkspaceBytes) == 0);
    cublasLtMatmulHeuristicResult_t res;
    int count = 0;
    cublasStatus_t st = api::cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, ld, pref, 1, &res, &count);
    if (st == CUBLAS_STATUS_SUCCESS) {
        CHECK(count == 1 && res.state == CUBLAS_STATUS_SUCCESS && res.workspaceSize <= kWorkspaceBytes);
        st = api::cublasLtMatmul(h, desc, alpha, A, la, B, lb, beta, C, lc, D, ld, &res.algo, ws, kWorkspaceBytes,
                                 reinterpret_cast<cudaStream_t>(kStream));
    }
    CHECK(api::cublasLtMatmulPreferenceDestroy(pref) == 0);
    CHECK(api::cublasLtMatmulDescDestroy(desc) == 0);
    for (auto l : {la, lb, lc, ld}) CHECK(api::cublasLtMatrixLayoutDestroy(l) == 0);
    return st;
}

static cublasLtHandle_t g_lt = nullptr;
static cublasHandle_t g_cb = nullptr;

// Runs one case and compares every element of D with the double reference;
// checks that nothing outside D was written and that no D element was left
// unwritten. Returns the largest |error| / tolerance seen.
static double run_case(const Case& c, uint64_t seed) {
    g_case = c.name;
    Rng rng(seed);
    const int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
    const int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
    const int64_t lda = std::max<int64_t>(1, a_rows) + c.pad_a, ldb = std::max<int64_t>(1, b_rows) + c.pad_b;
    const int64_t ldc = std::max<int64_t>(1, c.m) + c.pad_c;
    const bool in_place = c.api != Api::Lt || c.in_place;
    const int64_t ldd = in_place ? ldc : std::max<int64_t>(1, c.m) + c.pad_d;
    const int64_t sa = c.broadcast_a ? 0 : lda * a_cols + c.gap, sb = ldb * b_cols + c.gap;
    const int64_t sc = ldc * c.n + c.gap, sd = in_place ? sc : ldd * c.n + c.gap;
    const int64_t nb = c.batch;
    const int64_t ea = c.broadcast_a ? lda * a_cols : sa * nb, eb = sb * nb, ec = sc * nb, ed = sd * nb;
    const size_t es_ab = emu_blas::dtype_size(c.tab), es_cd = emu_blas::dtype_size(c.tcd);
    Buf A(size_t(ea) * es_ab), B(size_t(eb) * es_ab), Cb(size_t(ec) * es_cd), Db(size_t(ed) * es_cd);
    const bool bias_on = has_bias(c.epilogue);
    const int64_t sbias = c.bias_gap < 0 ? 0 : c.m + c.bias_gap;
    const int64_t ebias = sbias ? sbias * nb : c.m;
    Buf bias(size_t(ebias) * es_cd);
    for (int64_t i = 0; i < ea; ++i) put(A.p, i, c.tab, rng.sym(c.scale_a));
    for (int64_t i = 0; i < eb; ++i) put(B.p, i, c.tab, rng.sym(c.scale_b));
    for (int64_t i = 0; i < ec; ++i) {
        if (c.nan_c) put(Cb.p, i, c.tcd, NAN);
        else put(Cb.p, i, c.tcd, rng.sym(1.0));
    }
    for (int64_t i = 0; i < ebias; ++i) put(bias.p, i, c.tcd, rng.sym(0.5));
    void* D = in_place ? Cb.p : Db.p;
    if (!in_place)
        for (int64_t i = 0; i < ed; ++i) put_sentinel(Db.p, i, c.tcd);
    // Elements of the output buffer inside D: filled with sentinels
    // (in place: after the copy of C has been taken).
    std::vector<uint8_t> c_copy(static_cast<uint8_t*>(Cb.p), static_cast<uint8_t*>(Cb.p) + Cb.bytes);
    std::vector<uint8_t> out_before;
    auto inside_d = [&](int64_t idx, int64_t* bb, int64_t* ii, int64_t* jj) {
        const int64_t stride = in_place ? sc : sd, ldo = in_place ? ldc : ldd;
        const int64_t b = idx / stride, r = idx % stride;
        if (b >= nb) return false;
        const int64_t j = r / ldo, i = r % ldo;
        if (j >= c.n || i >= c.m) return false;
        *bb = b;
        *ii = i;
        *jj = j;
        return true;
    };
    if (!in_place) out_before.assign(static_cast<uint8_t*>(Db.p), static_cast<uint8_t*>(Db.p) + Db.bytes);
    else if (c.beta == 0.0f) {
        // C is not read: poison D's elements so that an unwritten one shows.
        for (int64_t idx = 0; idx < ec; ++idx) {
            int64_t b, i, j;
            if (inside_d(idx, &b, &i, &j)) put_sentinel(Cb.p, idx, c.tcd);
        }
    }
    if (in_place) out_before.assign(static_cast<uint8_t*>(Cb.p), static_cast<uint8_t*>(Cb.p) + Cb.bytes);

    Buf scalars(8);
    scalars.at<float>()[0] = c.alpha;
    scalars.at<float>()[1] = c.beta;
    float alpha = c.alpha, beta = c.beta;
    const float* pa = c.device_scalars ? scalars.at<float>() : &alpha;
    const float* pb = c.device_scalars ? scalars.at<float>() + 1 : &beta;
    Buf ws(kWorkspaceBytes);
    cublasStatus_t st;
    if (c.api == Api::Lt) {
        st = lt_gemm(g_lt, c, A.p, B.p, Cb.p, D, bias_on ? bias.p : nullptr, pa, pb, ws.p, lda, ldb, ldc, ldd, sa, sb,
                     sc, sd, sbias);
    } else {
        CHECK(api::cublasSetPointerMode_v2(g_cb, c.device_scalars ? CUBLAS_POINTER_MODE_DEVICE
                                                                  : CUBLAS_POINTER_MODE_HOST) == 0);
        if (c.api == Api::GemmEx) {
            st = api::cublasGemmEx(g_cb, c.ta ? CUBLAS_OP_T : CUBLAS_OP_N, c.tb ? CUBLAS_OP_T : CUBLAS_OP_N, int(c.m),
                                   int(c.n), int(c.k), pa, A.p, cuda_type(c.tab), int(lda), B.p, cuda_type(c.tab),
                                   int(ldb), pb, Cb.p, cuda_type(c.tcd), int(ldc), cublasComputeType_t(c.compute),
                                   CUBLAS_GEMM_DEFAULT);
        } else {
            st = api::cublasGemmStridedBatchedEx(
                g_cb, c.ta ? CUBLAS_OP_T : CUBLAS_OP_N, c.tb ? CUBLAS_OP_T : CUBLAS_OP_N, int(c.m), int(c.n), int(c.k),
                pa, A.p, cuda_type(c.tab), int(lda), sa, B.p, cuda_type(c.tab), int(ldb), sb, pb, Cb.p,
                cuda_type(c.tcd), int(ldc), sc, int(c.batch), cublasComputeType_t(c.compute), CUBLAS_GEMM_DEFAULT);
        }
    }
    CHECK(st == CUBLAS_STATUS_SUCCESS, "status %d", int(st));
    if (st != CUBLAS_STATUS_SUCCESS) return 1e30;

    // Reference and comparison.
    const int act = act_of(c.epilogue);
    double worst = 0.0;
    int64_t bad = 0, unwritten = 0, nan_out = 0;
    const uint8_t* outp = static_cast<const uint8_t*>(D);
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t boff_a = c.broadcast_a ? 0 : b * sa;
        for (int64_t j = 0; j < c.n; ++j) {
            for (int64_t i = 0; i < c.m; ++i) {
                double s = 0.0, sabs = 0.0;
                for (int64_t p = 0; p < c.k; ++p) {
                    const double av = get(A.p, boff_a + (c.ta ? p + i * lda : i + p * lda), c.tab);
                    const double bv = get(B.p, b * sb + (c.tb ? j + p * ldb : p + j * ldb), c.tab);
                    s += av * bv;
                    sabs += std::fabs(av * bv);
                }
                double v = double(c.alpha) * s;
                double vabs = std::fabs(double(c.alpha)) * sabs;
                if (c.beta != 0.0f) {
                    const int64_t ci = b * sc + i + j * ldc;
                    double cv;
                    uint64_t dummy = 0;
                    (void)dummy;
                    // C as it was before the call (in place, D's buffer has been poisoned).
                    switch (c.tcd) {
                        case DType::F32: {
                            float f;
                            std::memcpy(&f, c_copy.data() + ci * 4, 4);
                            cv = f;
                            break;
                        }
                        default: {
                            uint16_t h;
                            std::memcpy(&h, c_copy.data() + ci * 2, 2);
                            cv = c.tcd == DType::F16 ? emu_blas::half_to_float(h) : emu_blas::bf16_to_float(h);
                        }
                    }
                    v += double(c.beta) * cv;
                    vabs += std::fabs(double(c.beta) * cv);
                }
                if (bias_on) {
                    const double bv = get(bias.p, b * sbias + i, c.tcd);
                    v += bv;
                    vabs += std::fabs(bv);
                }
                if (act == 1) v = v > 0 ? v : 0;
                if (act == 2) v = gelu_tanh(v);
                const int64_t oi = b * (in_place ? sc : sd) + i + j * (in_place ? ldc : ldd);
                if (is_sentinel(D, oi, c.tcd)) {
                    ++unwritten;
                    continue;
                }
                const double got = get(D, oi, c.tcd);
                if (std::isnan(got)) {
                    ++nan_out;
                    continue;
                }
                // f32 accumulation (<= (k + 4) units of 2^-24 of the absolute
                // sum, doubled for the f32 products and scaling) through the
                // activation (slope < 1.2), then one rounding.
                const double acc_err = double(c.k + 4) * std::ldexp(1.0, -23) * vabs * 1.2 + 1e-6 * std::fabs(v);
                const double tol = acc_err + unit_roundoff(c.tcd) * std::max(std::fabs(v), std::fabs(got)) * 1.0001 +
                                   min_quantum(c.tcd) + 1e-30;
                const double err = std::fabs(got - v);
                worst = std::max(worst, err / tol);
                if (err > tol && bad++ < 3) {
                    std::fprintf(stderr, "  [%s] batch %lld D(%lld,%lld) = %.9g, reference %.9g (tol %.3g)\n",
                                 c.name, (long long)b, (long long)i, (long long)j, got, v, tol);
                }
            }
        }
    }
    CHECK(bad == 0, "%lld elements outside tolerance (worst %.2f x tolerance)", (long long)bad, worst);
    CHECK(unwritten == 0, "%lld elements of D never written", (long long)unwritten);
    CHECK(nan_out == 0, "%lld elements of D are NaN", (long long)nan_out);
    // Nothing outside D changed.
    const size_t out_bytes = in_place ? Cb.bytes : Db.bytes;
    const size_t es = es_cd;
    int64_t outside = 0;
    for (size_t idx = 0; idx < out_bytes / es; ++idx) {
        int64_t bb, ii, jj;
        if (inside_d(int64_t(idx), &bb, &ii, &jj)) continue;
        if (std::memcmp(outp + idx * es, out_before.data() + idx * es, es) != 0) ++outside;
    }
    CHECK(outside == 0, "%lld elements outside D (padding, gaps) were written", (long long)outside);
    if (!in_place) CHECK(std::memcmp(Cb.p, c_copy.data(), Cb.bytes) == 0, "C was written");
    return worst;
}

// ---- the tests -------------------------------------------------------------------------------

static void test_conversions() {
    g_case = "f16/bf16 conversions";
    int64_t bad = 0;
    for (uint32_t h = 0; h < 65536; ++h) {
        _Float16 x;
        uint16_t hh = uint16_t(h);
        std::memcpy(&x, &hh, 2);
        const float want = float(x), got = emu_blas::half_to_float(hh);
        if (std::isnan(want) ? !std::isnan(got) : std::memcmp(&want, &got, 4) != 0) ++bad;
    }
    CHECK(bad == 0, "%lld f16 -> f32 conversions differ from _Float16's", (long long)bad);
    // f32 -> f16: a strided sweep of all bit patterns, plus every f16
    // midpoint and its neighbours (the round-to-nearest-even cases).
    bad = 0;
    auto one = [&](float f) {
        const _Float16 w = _Float16(f);
        uint16_t want;
        std::memcpy(&want, &w, 2);
        const uint16_t got = emu_blas::float_to_half(f);
        const bool nan_w = (want & 0x7c00) == 0x7c00 && (want & 0x3ff);
        const bool nan_g = (got & 0x7c00) == 0x7c00 && (got & 0x3ff);
        if (nan_w ? !nan_g : want != got) {
            if (bad++ < 3) std::fprintf(stderr, "  f32 %a -> f16 %04x, _Float16 %04x\n", double(f), got, want);
        }
    };
    for (uint64_t x = 0; x < (uint64_t(1) << 32); x += 65521) one(std::bit_cast<float>(uint32_t(x)));
    for (uint32_t h = 0; h < 0x7c00; ++h) {
        const double lo = emu_blas::half_to_float(uint16_t(h)), hi = emu_blas::half_to_float(uint16_t(h + 1));
        const float mid = float((lo + hi) / 2);  // exact in f32
        for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
            one(f);
            one(-f);
        }
    }
    for (float f : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65519.996f, 65520.0f, 1e-8f, 2.98e-8f, 2.99e-8f})
        one(f);
    CHECK(bad == 0, "%lld f32 -> f16 conversions differ from _Float16's", (long long)bad);
    // bf16: against a double-precision nearest-even reference.
    bad = 0;
    for (uint64_t x = 0; x < (uint64_t(1) << 32); x += 65519) {
        const float f = std::bit_cast<float>(uint32_t(x));
        const uint16_t got = emu_blas::float_to_bf16(f);
        if (std::isnan(f)) {
            if (!std::isnan(emu_blas::bf16_to_float(got))) ++bad;
            continue;
        }
        const uint32_t t = uint32_t(x) & 0xffff0000u;  // truncation, toward zero
        const double lo = std::bit_cast<float>(t), hi = std::bit_cast<float>(t + 0x10000u);
        const double dl = std::fabs(double(f) - lo), dh = std::fabs(hi - double(f));
        uint16_t want = uint16_t(t >> 16);
        if (dh < dl || (dh == dl && (want & 1))) want = uint16_t((t + 0x10000u) >> 16);
        if ((uint32_t(x) & 0x7fffffffu) >= 0x7f7f8000u && (uint32_t(x) & 0x7fffffffu) < 0x7f800000u)
            want = uint16_t(((uint32_t(x) >> 16) & 0x8000u) | 0x7f80u);  // rounds to inf
        if (got != want) ++bad;
    }
    CHECK(bad == 0, "%lld f32 -> bf16 conversions wrong", (long long)bad);
}

static void test_lt_cases() {
    const uint32_t epis[] = {CUBLASLT_EPILOGUE_DEFAULT, CUBLASLT_EPILOGUE_BIAS, CUBLASLT_EPILOGUE_GELU,
                             CUBLASLT_EPILOGUE_GELU_BIAS, CUBLASLT_EPILOGUE_RELU, CUBLASLT_EPILOGUE_RELU_BIAS};
    const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {8, 6, 263}, {130, 13, 40}, {3, 31, 1}};
    uint64_t seed = 1;
    char name[160];
    std::vector<std::string> names;
    for (auto& s : shapes) {
        for (int t = 0; t < 4; ++t) {
            Case c;
            std::snprintf(name, sizeof name, "Lt %lldx%lldx%lld trans %c%c", (long long)s[0], (long long)s[1],
                          (long long)s[2], t & 1 ? 'T' : 'N', t & 2 ? 'T' : 'N');
            c.name = name;
            c.m = s[0];
            c.n = s[1];
            c.k = s[2];
            c.ta = t & 1;
            c.tb = t & 2;
            run_case(c, seed++);
            // Padded leading dimensions, alpha/beta, out of place with its own ldd.
            std::snprintf(name + std::strlen(name), 40, " padded a/b");
            c.pad_a = 3;
            c.pad_b = 5;
            c.pad_c = 2;
            c.pad_d = 7;
            c.in_place = false;
            c.alpha = 0.75f;
            c.beta = -1.5f;
            run_case(c, seed++);
        }
    }
    for (uint32_t e : epis) {
        for (int variant = 0; variant < 3; ++variant) {
            Case c;
            std::snprintf(name, sizeof name, "Lt epilogue %u variant %d", e, variant);
            c.name = name;
            c.m = 37;
            c.n = 11;
            c.k = 48;
            c.ta = true;  // as the project's linear layers
            c.epilogue = e;
            c.scale_a = 0.6;
            if (variant == 1) {  // alpha, beta, in place
                c.alpha = 1.25f;
                c.beta = 0.5f;
            }
            if (variant == 2) {  // batched, bias per batch
                c.batch = 3;
                c.gap = 5;
                c.bias_gap = 3;
                c.in_place = false;
            }
            run_case(c, seed++);
        }
    }
    {
        // GELU is the tanh form: f32 output, and data for which the erf form
        // is measurably different.
        Case c;
        c.name = "Lt GELU_BIAS is the tanh approximation (f16 in, f32 out)";
        c.m = 64;
        c.n = 16;
        c.k = 32;
        c.tcd = DType::F32;
        c.epilogue = CUBLASLT_EPILOGUE_GELU_BIAS;
        c.scale_a = 0.8;
        c.scale_b = 0.8;
        const double worst = run_case(c, 991);
        CHECK(worst <= 1.0, "worst %.2f", worst);
        // The same data against the erf GELU must fail that tolerance
        // somewhere: otherwise the test above proves nothing.
        const double x = 2.2;
        CHECK(std::fabs(gelu_tanh(x) - gelu_erf(x)) > 1e-4, "tanh and erf GELU too close to be told apart");
    }
    {
        Case c;
        c.name = "Lt beta = 0 with NaN in C (out of place): no NaN";
        c.m = 19;
        c.n = 9;
        c.k = 14;
        c.in_place = false;
        c.nan_c = true;
        run_case(c, 7);
        c.name = "Lt beta = 0 with NaN in C == D: no NaN";
        c.in_place = true;
        run_case(c, 8);
    }
    {
        Case c;
        c.name = "Lt alpha = 0, beta = 2: D = 2C";
        c.m = 12;
        c.n = 5;
        c.k = 9;
        c.alpha = 0.0f;
        c.beta = 2.0f;
        run_case(c, 9);
    }
    {
        Case c;
        c.name = "Lt batched strided, broadcast A (stride 0), gaps, one bias for all batches";
        c.m = 9;
        c.n = 7;
        c.k = 13;
        c.batch = 4;
        c.gap = 11;
        c.broadcast_a = true;
        c.tb = true;
        c.beta = 1.0f;
        c.epilogue = CUBLASLT_EPILOGUE_RELU_BIAS;  // bias batch stride left at its default, 0
        run_case(c, 10);
    }
    {
        Case c;
        c.name = "Lt device pointer mode";
        c.m = 10;
        c.n = 6;
        c.k = 20;
        c.alpha = -0.5f;
        c.beta = 0.25f;
        c.device_scalars = true;
        run_case(c, 11);
    }
    for (int variant = 0; variant < 5; ++variant) {
        Case c;
        c.m = 23;
        c.n = 17;
        c.k = 29;
        c.ta = variant & 1;
        c.beta = 0.5f;
        switch (variant) {
            case 0: c.name = "Lt f32 data, COMPUTE_32F"; c.tab = c.tcd = DType::F32; break;
            case 1: c.name = "Lt f32 data, COMPUTE_32F_FAST_TF32 (cudarc's f32)"; c.tab = c.tcd = DType::F32;
                c.compute = CUBLAS_COMPUTE_32F_FAST_TF32; break;
            case 2: c.name = "Lt f16 A/B, f32 C/D"; c.tcd = DType::F32; break;
            case 3: c.name = "Lt bf16"; c.tab = c.tcd = DType::BF16; break;
            case 4: c.name = "Lt bf16 A/B, f32 C/D, PEDANTIC"; c.tab = DType::BF16; c.tcd = DType::F32;
                c.compute = CUBLAS_COMPUTE_32F_PEDANTIC; break;
        }
        run_case(c, 20 + variant);
    }
    {
        // Past every blocking size (KC 256, MC 128, NC 768) and big enough
        // for the two-thread column split; then many batches (batch split).
        Case c;
        c.name = "Lt 300x800x520 T,N (blocking edges, threads over columns)";
        c.m = 300;
        c.n = 800;
        c.k = 520;
        c.ta = true;
        c.epilogue = CUBLASLT_EPILOGUE_BIAS;
        c.scale_a = 0.2;
        run_case(c, 30);
        Case d;
        d.name = "Lt 6 batches of 70x60x90 (threads over batches)";
        d.m = 70;
        d.n = 60;
        d.k = 90;
        d.batch = 6;
        d.gap = 1;
        d.epilogue = CUBLASLT_EPILOGUE_GELU_BIAS;
        d.bias_gap = 0;
        run_case(d, 31);
    }
}

static void test_cublas_cases() {
    uint64_t seed = 100;
    char name[160];
    const int64_t shapes[][4] = {{1, 1, 1, 1}, {7, 5, 3, 2}, {33, 17, 65, 3}, {16, 16, 64, 5}, {130, 9, 31, 2}};
    for (auto& s : shapes) {
        for (int t = 0; t < 4; ++t) {
            Case c;
            std::snprintf(name, sizeof name, "StridedBatchedEx %lldx%lldx%lld x%lld trans %c%c", (long long)s[0],
                          (long long)s[1], (long long)s[2], (long long)s[3], t & 1 ? 'T' : 'N', t & 2 ? 'T' : 'N');
            c.name = name;
            c.api = Api::StridedBatchedEx;
            c.m = s[0];
            c.n = s[1];
            c.k = s[2];
            c.batch = s[3];
            c.ta = t & 1;
            c.tb = t & 2;
            run_case(c, seed++);
            std::snprintf(name + std::strlen(name), 60, " padded, gaps, alpha/beta");
            c.pad_a = 4;
            c.pad_b = 1;
            c.pad_c = 3;
            c.gap = 9;
            c.alpha = 0.125f;
            c.beta = 1.0f;
            run_case(c, seed++);
        }
    }
    Case c;
    c.api = Api::StridedBatchedEx;
    c.m = 21;
    c.n = 13;
    c.k = 8;
    c.batch = 3;
    c.name = "StridedBatchedEx beta = 0 with NaN in C";
    c.nan_c = true;
    run_case(c, seed++);
    c.nan_c = false;
    c.name = "StridedBatchedEx device pointer mode";
    c.device_scalars = true;
    c.alpha = 2.0f;
    c.beta = -1.0f;
    run_case(c, seed++);
    c.device_scalars = false;
    c.name = "StridedBatchedEx f16 A/B, f32 C";
    c.tcd = DType::F32;
    run_case(c, seed++);
    c.name = "StridedBatchedEx f32";
    c.tab = DType::F32;
    run_case(c, seed++);
    Case g;
    g.api = Api::GemmEx;
    g.name = "GemmEx 45x12x70 T,T alpha/beta";
    g.m = 45;
    g.n = 12;
    g.k = 70;
    g.ta = g.tb = true;
    g.alpha = 1.5f;
    g.beta = -0.5f;
    g.pad_a = 2;
    run_case(g, seed++);
    Case big;
    big.api = Api::StridedBatchedEx;
    big.name = "StridedBatchedEx 8 heads of 97x97x64 (threads over batches)";
    big.m = 97;
    big.n = 97;
    big.k = 64;
    big.batch = 8;
    big.ta = true;
    run_case(big, seed++);
}

// The project's own call shapes, checked against row-major math (what the
// wrappers claim the column-major calls compute).
static void test_project_wrappers() {
    {
        // src/ops/gemm.rs Blas::linear: y[rows, n] = x[rows, k] W[n, k]^T + b.
        g_case = "project linear (gemm.rs): y = x W^T + b, row-major";
        const int64_t rows = 9, k = 24, n = 16;
        Rng rng(4242);
        Buf x(rows * k * 2), w(n * k * 2), b(n * 2), y(rows * n * 2), ws(kWorkspaceBytes);
        for (int64_t i = 0; i < rows * k; ++i) put(x.p, i, DType::F16, rng.sym(1));
        for (int64_t i = 0; i < n * k; ++i) put(w.p, i, DType::F16, rng.sym(0.3));
        for (int64_t i = 0; i < n; ++i) put(b.p, i, DType::F16, rng.sym(0.5));
        for (int64_t i = 0; i < rows * n; ++i) put_sentinel(y.p, i, DType::F16);
        Case c;  // exactly gemm.rs's MatmulConfig
        c.ta = true;
        c.tb = false;
        c.m = n;
        c.n = rows;
        c.k = k;
        c.epilogue = CUBLASLT_EPILOGUE_BIAS;
        float alpha = 1.0f, beta = 0.0f;
        cublasStatus_t st = lt_gemm(g_lt, c, w.p, x.p, y.p, y.p, b.p, &alpha, &beta, ws.p, k, k, n, n, 0, 0, 0, 0, 0);
        CHECK(st == CUBLAS_STATUS_SUCCESS);
        int64_t bad = 0;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < n; ++j) {
                double want = get(b.p, j, DType::F16);
                for (int64_t i = 0; i < k; ++i) want += get(x.p, r * k + i, DType::F16) * get(w.p, j * k + i, DType::F16);
                const double got = get(y.p, r * n + j, DType::F16);
                if (!(std::fabs(got - want) <= 2e-3 * std::fabs(want) + 1e-4)) ++bad;
            }
        CHECK(bad == 0, "%lld of %lld outputs differ from x W^T + b", (long long)bad, (long long)(rows * n));
    }
    {
        // src/ops/attention.rs DenseAttentionBaseline: S = scale Q K^T and
        // O = P V per (batch, head), row-major [L, dh] operands.
        g_case = "project dense attention (attention.rs): S = Q K^T, O = P V, row-major";
        const int64_t bh = 3, lq = 7, lk = 7, dh = 16;
        Rng rng(777);
        Buf q(bh * lq * dh * 2), kk(bh * lk * dh * 2), v(bh * lk * dh * 2), s(bh * lq * lk * 2), o(bh * lq * dh * 2);
        for (int64_t i = 0; i < bh * lq * dh; ++i) put(q.p, i, DType::F16, rng.sym(1));
        for (int64_t i = 0; i < bh * lk * dh; ++i) put(kk.p, i, DType::F16, rng.sym(1));
        for (int64_t i = 0; i < bh * lk * dh; ++i) put(v.p, i, DType::F16, rng.sym(1));
        const float scale = emu_blas::half_to_float(emu_blas::float_to_half(1.0f / std::sqrt(float(dh))));
        const float zero = 0.0f, one = 1.0f;
        cublasStatus_t st = api::cublasGemmStridedBatchedEx(
            g_cb, CUBLAS_OP_T, CUBLAS_OP_N, int(lk), int(lq), int(dh), &scale, kk.p, CUDA_R_16F, int(dh), lk * dh, q.p,
            CUDA_R_16F, int(dh), lq * dh, &zero, s.p, CUDA_R_16F, int(lk), lq * lk, int(bh), CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT);
        CHECK(st == CUBLAS_STATUS_SUCCESS);
        int64_t bad = 0;
        for (int64_t b = 0; b < bh; ++b)
            for (int64_t i = 0; i < lq; ++i)
                for (int64_t j = 0; j < lk; ++j) {
                    double want = 0;
                    for (int64_t d = 0; d < dh; ++d)
                        want += get(q.p, (b * lq + i) * dh + d, DType::F16) * get(kk.p, (b * lk + j) * dh + d, DType::F16);
                    want *= scale;
                    const double got = get(s.p, (b * lq + i) * lk + j, DType::F16);  // row-major S[i, j]
                    if (!(std::fabs(got - want) <= 2e-3 * std::fabs(want) + 1e-4)) ++bad;
                }
        CHECK(bad == 0, "S: %lld elements differ from scale * Q K^T", (long long)bad);
        st = api::cublasGemmStridedBatchedEx(g_cb, CUBLAS_OP_N, CUBLAS_OP_N, int(dh), int(lq), int(lk), &one, v.p,
                                             CUDA_R_16F, int(dh), lk * dh, s.p, CUDA_R_16F, int(lk), lq * lk, &zero,
                                             o.p, CUDA_R_16F, int(dh), lq * dh, int(bh), CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT);
        CHECK(st == CUBLAS_STATUS_SUCCESS);
        bad = 0;
        for (int64_t b = 0; b < bh; ++b)
            for (int64_t i = 0; i < lq; ++i)
                for (int64_t d = 0; d < dh; ++d) {
                    double want = 0, wabs = 0;
                    for (int64_t j = 0; j < lk; ++j) {
                        const double t = get(s.p, (b * lq + i) * lk + j, DType::F16) * get(v.p, (b * lk + j) * dh + d, DType::F16);
                        want += t;
                        wabs += std::fabs(t);
                    }
                    const double got = get(o.p, (b * lq + i) * dh + d, DType::F16);  // row-major O[i, d]
                    if (!(std::fabs(got - want) <= 2e-3 * std::fabs(want) + 1e-5 * wabs + 1e-4)) ++bad;
                }
        CHECK(bad == 0, "O: %lld elements differ from P V", (long long)bad);
    }
}

// A small valid Lt problem with all its objects, for the rejection tests.
struct LtSetup {
    cublasLtMatrixLayout_t la{}, lb{}, lc{}, ld{};
    cublasLtMatmulDesc_t desc{};
    cublasLtMatmulPreference_t pref{};
    Buf A{64 * 64 * 4}, B{64 * 64 * 4}, C{64 * 64 * 4}, ws{kWorkspaceBytes}, bias{256};
    float alpha = 1.0f, beta = 0.0f;
    cublasLtMatmulHeuristicResult_t res{};
    // m x n = 8 x 6, k = 16; A stored k x m (transa T), lda 16; B k x n.
    LtSetup(cudaDataType t = CUDA_R_16F) {
        CHECK(api::cublasLtMatrixLayoutCreate(&la, t, 16, 8, 16) == 0);
        CHECK(api::cublasLtMatrixLayoutCreate(&lb, t, 16, 6, 16) == 0);
        CHECK(api::cublasLtMatrixLayoutCreate(&lc, t, 8, 6, 8) == 0);
        CHECK(api::cublasLtMatrixLayoutCreate(&ld, t, 8, 6, 8) == 0);
        CHECK(api::cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == 0);
        const int32_t T = CUBLAS_OP_T;
        set_attr(desc, CUBLASLT_MATMUL_DESC_TRANSA, &T, 4);
        CHECK(api::cublasLtMatmulPreferenceCreate(&pref) == 0);
        CHECK(api::cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &kWorkspaceBytes, 8) == 0);
    }
    ~LtSetup() {
        api::cublasLtMatmulPreferenceDestroy(pref);
        api::cublasLtMatmulDescDestroy(desc);
        for (auto l : {la, lb, lc, ld}) api::cublasLtMatrixLayoutDestroy(l);
    }
    cublasStatus_t heuristic() {
        int n = 0;
        return api::cublasLtMatmulAlgoGetHeuristic(g_lt, desc, la, lb, lc, ld, pref, 1, &res, &n);
    }
    cublasStatus_t matmul(const void* d_ptr = nullptr, const cublasLtMatmulAlgo_t* algo = nullptr, bool use_res = true,
                          size_t ws_size = kWorkspaceBytes) {
        return api::cublasLtMatmul(g_lt, desc, &alpha, A.p, la, B.p, lb, &beta, C.p, lc,
                                   const_cast<void*>(d_ptr ? d_ptr : C.p), ld,
                                   algo ? algo : (use_res ? &res.algo : nullptr), ws.p, ws_size,
                                   reinterpret_cast<cudaStream_t>(kStream));
    }
};

// Expects `st == want` and one "smarttrim-emu: " line on stderr that
// contains `word`.
static void expect_reject(const char* what, cublasStatus_t st, cublasStatus_t want, const std::string& err,
                          const char* word) {
    g_case = what;
    CHECK(st == want, "status %d, expected %d", int(st), int(want));
    CHECK(err.find("smarttrim-emu: ") != std::string::npos && err.find(word) != std::string::npos,
          "stderr was \"%s\" (expected a smarttrim-emu line mentioning \"%s\")", err.c_str(), word);
    CHECK(std::count(err.begin(), err.end(), '\n') == 1, "expected one line on stderr, got \"%s\"", err.c_str());
}

#define REJECT(what, expr, want, word)                        \
    do {                                                      \
        StderrCapture cap_;                                   \
        cublasStatus_t st_ = (expr);                          \
        expect_reject(what, st_, want, cap_.finish(), word);  \
    } while (0)

static void test_lt_rejections() {
    const auto IV = CUBLAS_STATUS_INVALID_VALUE, NS = CUBLAS_STATUS_NOT_SUPPORTED, NI = CUBLAS_STATUS_NOT_INITIALIZED;
    {
        LtSetup s;
        g_case = "Lt valid setup";
        CHECK(s.heuristic() == 0);
        CHECK(s.matmul() == 0);
    }
    {
        LtSetup s;
        int64_t bad_ld = 15;  // A is stored 16 x 8: ld 15 < 16 rows
        set_attr(s.la, CUBLASLT_MATRIX_LAYOUT_LD, &bad_ld, 8);
        REJECT("Lt heuristic: lda < rows", s.heuristic(), IV, "leading dimension");
        REJECT("Lt matmul: lda < rows", s.matmul(nullptr, nullptr, false), IV, "leading dimension");
        int64_t neg = -16;
        set_attr(s.la, CUBLASLT_MATRIX_LAYOUT_LD, &neg, 8);
        REJECT("Lt: negative ld", s.heuristic(), IV, "leading dimension");
    }
    {
        LtSetup s;
        uint64_t rows = 15;  // op(A) = A^T is 8 x 15, B is 16 x 6: k differs
        set_attr(s.la, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, 8);
        REJECT("Lt: inner dimensions differ", s.heuristic(), IV, "inner dimensions");
    }
    {
        LtSetup s;
        const int32_t N = CUBLAS_OP_N;  // op(A) = A is 16 x 8, D has 8 rows
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_TRANSA, &N, 4);
        REJECT("Lt: op(A) rows != D rows (transpose flag wrong)", s.heuristic(), IV, "rows");
    }
    {
        LtSetup s;
        uint64_t cols = 5;
        set_attr(s.lc, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, 8);
        REJECT("Lt: C and D shapes differ", s.heuristic(), IV, "Cdesc");
    }
    {
        LtSetup s;
        uint64_t rows = uint64_t(-8);
        set_attr(s.ld, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, 8);
        REJECT("Lt: negative rows", s.heuristic(), IV, "negative");
    }
    {
        LtSetup s;
        int32_t two = 2;
        set_attr(s.la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &two, 4);
        REJECT("Lt: batch counts differ", s.heuristic(), IV, "batch counts");
    }
    {
        LtSetup s;
        uint32_t f32 = CUDA_R_32F;
        set_attr(s.lb, CUBLASLT_MATRIX_LAYOUT_TYPE, &f32, 4);
        REJECT("Lt: A f16, B f32", s.heuristic(), NS, "same type");
        uint32_t i8 = CUDA_R_8I;
        set_attr(s.la, CUBLASLT_MATRIX_LAYOUT_TYPE, &i8, 4);
        set_attr(s.lb, CUBLASLT_MATRIX_LAYOUT_TYPE, &i8, 4);
        REJECT("Lt: int8 not modelled", s.heuristic(), NS, "CUDA_R_8I");
    }
    {
        LtSetup s;
        int32_t c16 = CUBLAS_COMPUTE_16F;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &c16, 4);
        REJECT("Lt: COMPUTE_16F not modelled", s.heuristic(), NS, "CUBLAS_COMPUTE_16F");
        int32_t junk = 12345;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &junk, 4);
        REJECT("Lt: unknown compute type", s.heuristic(), IV, "12345");
        int32_t c32 = CUBLAS_COMPUTE_32F, s16 = CUDA_R_16F;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &c32, 4);
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_SCALE_TYPE, &s16, 4);
        REJECT("Lt: f16 scale with COMPUTE_32F", s.heuristic(), NS, "scale type");
    }
    {
        LtSetup s;
        const int32_t T = CUBLAS_OP_T, bad = 7;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_TRANSC, &T, 4);
        REJECT("Lt: TRANSC = T", s.heuristic(), NS, "TRANSC");
        const int32_t N = 0;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_TRANSC, &N, 4);
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_TRANSB, &bad, 4);
        REJECT("Lt: TRANSB = 7", s.heuristic(), IV, "TRANSB");
    }
    {
        LtSetup s;
        int32_t row = CUBLASLT_ORDER_ROW;
        set_attr(s.lb, CUBLASLT_MATRIX_LAYOUT_ORDER, &row, 4);
        REJECT("Lt: row order not modelled", s.heuristic(), NS, "ORDER");
    }
    {
        LtSetup s;
        const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, 4);
        CHECK(s.heuristic() == 0);
        REJECT("Lt: BIAS epilogue without a bias pointer", s.matmul(), IV, "BIAS_POINTER");
        const uint32_t aux = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &aux, 4);
        REJECT("Lt: AUX epilogue not modelled", s.heuristic(), NS, "GELU_AUX_BIAS");
        const uint32_t junk = 77;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &junk, 4);
        REJECT("Lt: unknown epilogue", s.heuristic(), IV, "EPILOGUE");
        const uint32_t bias_only = CUBLASLT_EPILOGUE_BIAS;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &bias_only, 4);
        const int32_t f32 = CUDA_R_32F;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &f32, 4);
        REJECT("Lt: bias type differs from D's", s.heuristic(), NS, "BIAS_DATA_TYPE");
    }
    {
        LtSetup s;
        const void* scale = s.bias.p;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scale, 8);
        REJECT("Lt: FP8 scale pointer not modelled", s.heuristic(), NS, "A_SCALE_POINTER");
    }
    {
        LtSetup s;
        const int32_t v = 1;
        REJECT("Lt: attribute of the wrong size", api::cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &v, 4), IV, "sizeInBytes");
        REJECT("Lt: attribute from NULL", api::cublasLtMatrixLayoutSetAttribute(s.la, CUBLASLT_MATRIX_LAYOUT_LD, nullptr, 8), IV, "NULL");
        REJECT("Lt: unknown layout attribute", api::cublasLtMatrixLayoutSetAttribute(s.la, cublasLtMatrixLayoutAttribute_t(99), &v, 4), IV, "99");
        const uint64_t ws = 1;
        REJECT("Lt: preference attribute of the wrong size", api::cublasLtMatmulPreferenceSetAttribute(s.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ws, 8), IV, "sizeInBytes");
    }
    {
        LtSetup s;
        int n = 5;
        REJECT("Lt: requestedAlgoCount 0",
               api::cublasLtMatmulAlgoGetHeuristic(g_lt, s.desc, s.la, s.lb, s.lc, s.ld, s.pref, 0, &s.res, &n), IV,
               "requestedAlgoCount");
        CHECK(n == 0, "returnAlgoCount %d after a rejected query", n);
        REJECT("Lt: NULL handle",
               api::cublasLtMatmulAlgoGetHeuristic(nullptr, s.desc, s.la, s.lb, s.lc, s.ld, s.pref, 1, &s.res, &n), NI,
               "lightHandle");
        REJECT("Lt: NULL layout",
               api::cublasLtMatmulAlgoGetHeuristic(g_lt, s.desc, nullptr, s.lb, s.lc, s.ld, s.pref, 1, &s.res, &n), IV,
               "Adesc");
        REJECT("Lt: NULL preference",
               api::cublasLtMatmulAlgoGetHeuristic(g_lt, s.desc, s.la, s.lb, s.lc, s.ld, nullptr, 1, &s.res, &n), IV,
               "preference");
    }
    {
        LtSetup s;
        CHECK(s.heuristic() == 0);
        CHECK(s.res.workspaceSize > 0);
        REJECT("Lt: workspace smaller than the algo's", s.matmul(nullptr, nullptr, true, s.res.workspaceSize - 1), IV,
               "workspaceSizeInBytes");
        cublasLtMatmulAlgo_t junk{};
        junk.data[0] = 42;
        REJECT("Lt: algo not from the heuristic", s.matmul(nullptr, &junk), IV, "algo");
        const float* null_alpha = nullptr;
        REJECT("Lt: alpha NULL",
               api::cublasLtMatmul(g_lt, s.desc, null_alpha, s.A.p, s.la, s.B.p, s.lb, &s.beta, s.C.p, s.lc, s.C.p,
                                   s.ld, &s.res.algo, s.ws.p, kWorkspaceBytes, nullptr),
               IV, "alpha");
        // An algo found for another epilogue.
        const uint32_t epi = CUBLASLT_EPILOGUE_RELU;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, 4);
        REJECT("Lt: algo from another configuration", s.matmul(), NS, "different");
    }
    {
        // Alignment: the heuristic assumed 256 bytes (default preference).
        LtSetup s;
        CHECK(s.heuristic() == 0);
        REJECT("Lt: D 2-byte aligned, default 256-byte preference", s.matmul(s.C.at(2)), NS, "aligned");
        REJECT("Lt: D 16-byte aligned, default 256-byte preference", s.matmul(s.C.at(16)), NS, "MIN_ALIGNMENT_D");
        const uint32_t two = 2;
        CHECK(api::cublasLtMatmulPreferenceSetAttribute(s.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &two, 4) == 0);
        CHECK(s.heuristic() == 0);
        g_case = "Lt: D 2-byte aligned with MIN_ALIGNMENT_D_BYTES = 2";
        CHECK(s.matmul(s.C.at(2)) == CUBLAS_STATUS_SUCCESS);
        const uint32_t one = 1;
        CHECK(api::cublasLtMatmulPreferenceSetAttribute(s.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &one, 4) == 0);
        CHECK(s.heuristic() == 0);
        REJECT("Lt: D 1-byte aligned (f16): misaligned even for the element", s.matmul(s.C.at(1)), NS, "aligned");
    }
    {
        // In place with different descriptors.
        LtSetup s;
        cublasLtMatrixLayout_t ld2;
        CHECK(api::cublasLtMatrixLayoutCreate(&ld2, CUDA_R_16F, 8, 6, 10) == 0);
        CHECK(s.heuristic() == 0);
        s.beta = 1.0f;
        REJECT("Lt: C == D with ldc != ldd",
               api::cublasLtMatmul(g_lt, s.desc, &s.alpha, s.A.p, s.la, s.B.p, s.lb, &s.beta, s.C.p, s.lc, s.C.p, ld2,
                                   nullptr, s.ws.p, kWorkspaceBytes, nullptr),
               IV, "in-place");
        api::cublasLtMatrixLayoutDestroy(ld2);
    }
    {
        // Destroyed objects.
        cublasLtMatrixLayout_t l;
        CHECK(api::cublasLtMatrixLayoutCreate(&l, CUDA_R_16F, 4, 4, 4) == 0);
        CHECK(api::cublasLtMatrixLayoutDestroy(l) == 0);
        REJECT("Lt: layout destroyed twice", api::cublasLtMatrixLayoutDestroy(l), IV, "matLayout");
        cublasLtHandle_t h;
        CHECK(api::cublasLtCreate(&h) == 0);
        CHECK(api::cublasLtDestroy(h) == 0);
        LtSetup s;
        int n;
        REJECT("Lt: destroyed handle",
               api::cublasLtMatmulAlgoGetHeuristic(h, s.desc, s.la, s.lb, s.lc, s.ld, s.pref, 1, &s.res, &n), NI,
               "lightHandle");
        REJECT("Lt: handle destroyed twice", api::cublasLtDestroy(h), NI, "lightHandle");
    }
    {
        // The enqueue fails (invalidated capture, sticky error, bad stream).
        LtSetup s;
        CHECK(s.heuristic() == 0);
        blas_stub_set_enqueue_error(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        REJECT("Lt: enqueue fails", s.matmul(), CUBLAS_STATUS_EXECUTION_FAILED, "CUresult");
        blas_stub_set_enqueue_error(0);
    }
}

static void test_cublas_rejections() {
    const auto IV = CUBLAS_STATUS_INVALID_VALUE, NS = CUBLAS_STATUS_NOT_SUPPORTED, NI = CUBLAS_STATUS_NOT_INITIALIZED;
    Buf A(4096), B(4096), C(4096);
    const float one = 1.0f, zero = 0.0f;
    auto call = [&](cublasHandle_t h, int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc, int batch,
                    cudaDataType at = CUDA_R_16F, cudaDataType ct = CUDA_R_16F, int compute = CUBLAS_COMPUTE_32F,
                    int algo = CUBLAS_GEMM_DEFAULT) {
        return api::cublasGemmStridedBatchedEx(h, cublasOperation_t(ta), cublasOperation_t(tb), m, n, k, &one, A.p, at,
                                               lda, 64, B.p, at, ldb, 64, &zero, C.p, ct, ldc, 64, batch,
                                               cublasComputeType_t(compute), cublasGemmAlgo_t(algo));
    };
    g_case = "cuBLAS valid call";
    CHECK(call(g_cb, 0, 0, 4, 4, 4, 4, 4, 4, 2) == 0);
    REJECT("cuBLAS: m < 0", call(g_cb, 0, 0, -1, 4, 4, 4, 4, 4, 1), IV, "negative");
    REJECT("cuBLAS: k < 0", call(g_cb, 0, 0, 4, 4, -3, 4, 4, 4, 1), IV, "negative");
    REJECT("cuBLAS: batchCount < 0", call(g_cb, 0, 0, 4, 4, 4, 4, 4, 4, -1), IV, "batchCount");
    REJECT("cuBLAS: lda < m (transa N)", call(g_cb, 0, 0, 8, 4, 4, 7, 4, 8, 1), IV, "lda");
    REJECT("cuBLAS: lda < k (transa T)", call(g_cb, 1, 0, 8, 4, 6, 5, 6, 8, 1), IV, "lda");
    REJECT("cuBLAS: ldb < k (transb N)", call(g_cb, 0, 0, 4, 4, 6, 4, 5, 4, 1), IV, "ldb");
    REJECT("cuBLAS: ldb < n (transb T)", call(g_cb, 0, 1, 4, 9, 2, 4, 8, 4, 1), IV, "ldb");
    REJECT("cuBLAS: ldc < m", call(g_cb, 0, 0, 4, 4, 4, 4, 4, 3, 1), IV, "ldc");
    REJECT("cuBLAS: ld 0 with m 0 (needs max(1, m))", call(g_cb, 0, 0, 0, 4, 4, 0, 4, 1, 1), IV, "lda");
    REJECT("cuBLAS: transa invalid", call(g_cb, 5, 0, 4, 4, 4, 4, 4, 4, 1), IV, "transa");
    REJECT("cuBLAS: A f16, C bf16", call(g_cb, 0, 0, 4, 4, 4, 4, 4, 4, 1, CUDA_R_16F, CUDA_R_16BF), NS, "CUDA_R_16BF");
    REJECT("cuBLAS: f16 with FAST_TF32", call(g_cb, 0, 0, 4, 4, 4, 4, 4, 4, 1, CUDA_R_16F, CUDA_R_16F, CUBLAS_COMPUTE_32F_FAST_TF32), NS, "FAST_TF32");
    REJECT("cuBLAS: COMPUTE_64F not modelled", call(g_cb, 0, 0, 4, 4, 4, 4, 4, 4, 1, CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F), NS, "COMPUTE_64F");
    REJECT("cuBLAS: unknown algo", call(g_cb, 0, 0, 4, 4, 4, 4, 4, 4, 1, CUDA_R_16F, CUDA_R_16F, CUBLAS_COMPUTE_32F, 50), NS, "algo");
    REJECT("cuBLAS: NULL handle", call(nullptr, 0, 0, 4, 4, 4, 4, 4, 4, 1), NI, "handle");
    cublasHandle_t h;
    CHECK(api::cublasCreate_v2(&h) == 0);
    CHECK(api::cublasDestroy_v2(h) == 0);
    REJECT("cuBLAS: destroyed handle", call(h, 0, 0, 4, 4, 4, 4, 4, 4, 1), NI, "handle");
    REJECT("cuBLAS: destroy twice", api::cublasDestroy_v2(h), NI, "handle");
    REJECT("cuBLAS: pointer mode 3", api::cublasSetPointerMode_v2(g_cb, cublasPointerMode_t(3)), IV, "mode");
    blas_stub_set_context_status(CUDA_ERROR_INVALID_CONTEXT);
    REJECT("cuBLAS: create without a usable context", api::cublasCreate_v2(&h), NI, "context");
    blas_stub_set_context_status(0);
    {
        g_case = "cuBLAS quick returns enqueue nothing";
        const uint64_t before = blas_stub_enqueued();
        CHECK(call(g_cb, 0, 0, 0, 4, 4, 1, 4, 1, 1) == 0);
        CHECK(call(g_cb, 0, 0, 4, 4, 4, 4, 4, 4, 0) == 0);
        CHECK(blas_stub_enqueued() == before);
    }
}

// Stream order, deferred execution, counters, execution-time faults.
static void test_driver_interface() {
    {
        g_case = "counters and stream";
        const uint64_t mm = blas_stub_counter(int(emu::Counter::BlasMatmuls));
        const uint64_t he = blas_stub_counter(int(emu::Counter::BlasHeuristics));
        LtSetup s;
        CHECK(s.heuristic() == 0);
        CHECK(s.matmul() == 0);
        CHECK(blas_stub_counter(int(emu::Counter::BlasMatmuls)) == mm + 1);
        CHECK(blas_stub_counter(int(emu::Counter::BlasHeuristics)) == he + 1);
        CHECK(blas_stub_last_stream() == kStream, "work went to stream %p", blas_stub_last_stream());
        CHECK(std::string(blas_stub_last_what()) == "cublasLtMatmul");
        cudaStream_t got = nullptr;
        CUstream other = reinterpret_cast<CUstream>(uintptr_t(0xabc0));
        CHECK(api::cublasSetStream_v2(g_cb, reinterpret_cast<cudaStream_t>(other)) == 0);
        CHECK(api::cublasGetStream_v2(g_cb, &got) == 0 && got == reinterpret_cast<cudaStream_t>(other));
        const float one = 1.0f, zero = 0.0f;
        CHECK(api::cublasGemmStridedBatchedEx(g_cb, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, s.A.p, CUDA_R_16F, 4, 16,
                                              s.B.p, CUDA_R_16F, 4, 16, &zero, s.C.p, CUDA_R_16F, 4, 16, 2,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == 0);
        CHECK(blas_stub_last_stream() == other);
        CHECK(blas_stub_counter(int(emu::Counter::BlasMatmuls)) == mm + 2);
        CHECK(api::cublasSetStream_v2(g_cb, nullptr) == 0);
    }
    {
        // Deferred: descriptors destroyed and host scalars changed before the
        // work runs; the work must use the values of the call.
        Case c;
        c.name = "deferred execution uses call-time values";
        c.m = 8;
        c.n = 6;
        c.k = 16;
        c.ta = true;
        c.epilogue = CUBLASLT_EPILOGUE_BIAS;
        g_case = c.name;
        Rng rng(5);
        Buf A(16 * 8 * 2), B(16 * 6 * 2), D(8 * 6 * 2), bias(8 * 2), ws(kWorkspaceBytes);
        for (int i = 0; i < 128; ++i) put(A.p, i, DType::F16, rng.sym(1));
        for (int i = 0; i < 96; ++i) put(B.p, i, DType::F16, rng.sym(1));
        for (int i = 0; i < 8; ++i) put(bias.p, i, DType::F16, rng.sym(1));
        for (int i = 0; i < 48; ++i) put_sentinel(D.p, i, DType::F16);
        float alpha = 0.5f, beta = 0.0f;
        blas_stub_set_deferred(1);
        cublasStatus_t st = lt_gemm(g_lt, c, A.p, B.p, D.p, D.p, bias.p, &alpha, &beta, ws.p, 16, 16, 8, 8, 0, 0, 0, 0, 0);
        alpha = 100.0f;  // the caller's memory changes after the call
        beta = 7.0f;
        CHECK(st == 0);
        CHECK(is_sentinel(D.p, 0, DType::F16), "the work ran before the stream was drained");
        blas_stub_set_deferred(0);
        CHECK(blas_stub_drain() == 1);
        int64_t bad = 0;
        for (int j = 0; j < 6; ++j)
            for (int i = 0; i < 8; ++i) {
                double want = get(bias.p, i, DType::F16);
                for (int p = 0; p < 16; ++p) want += 0.5 * get(A.p, p + i * 16, DType::F16) * get(B.p, p + j * 16, DType::F16);
                if (!(std::fabs(get(D.p, i + 8 * j, DType::F16) - want) <= 2e-3 * std::fabs(want) + 1e-4)) ++bad;
            }
        CHECK(bad == 0, "%lld elements differ from the call-time alpha/bias result", (long long)bad);
    }
    {
        // Execution-time range checks: the call succeeds (cuBLAS does not
        // check pointers), the work faults and writes nothing.
        g_case = "execution faults";
        LtSetup s;
        CHECK(s.heuristic() == 0);
        blas_stub_clear_ranges();
        blas_stub_add_range(s.A.p, s.A.bytes);
        blas_stub_add_range(s.B.p, s.B.bytes);
        blas_stub_add_range(s.ws.p, s.ws.bytes);
        blas_stub_check_ranges(1);
        Buf D(8 * 6 * 2);  // not a "device allocation"
        for (int i = 0; i < 48; ++i) put_sentinel(D.p, i, DType::F16);
        uint64_t f0 = blas_stub_faults();
        StderrCapture cap;
        cublasStatus_t st = s.matmul(D.p);
        std::string err = cap.finish();
        CHECK(st == CUBLAS_STATUS_SUCCESS, "status %d", int(st));
        CHECK(blas_stub_faults() == f0 + 1, "faults %llu -> %llu", (unsigned long long)f0,
              (unsigned long long)blas_stub_faults());
        CHECK(std::string(blas_stub_last_fault()).find("D of batch 0") != std::string::npos, "fault: %s",
              blas_stub_last_fault());
        CHECK(is_sentinel(D.p, 0, DType::F16) && is_sentinel(D.p, 47, DType::F16), "D written after the fault");
        // Whole ranges known: no fault.
        blas_stub_add_range(D.p, D.bytes);
        f0 = blas_stub_faults();
        CHECK(s.matmul(D.p) == 0);
        CHECK(blas_stub_faults() == f0, "unexpected fault: %s", blas_stub_last_fault());
        CHECK(!is_sentinel(D.p, 0, DType::F16));
        // B one element too short.
        blas_stub_clear_ranges();
        blas_stub_add_range(s.A.p, s.A.bytes);
        blas_stub_add_range(s.B.p, 16 * 6 * 2 - 2);
        blas_stub_add_range(s.ws.p, s.ws.bytes);
        blas_stub_add_range(D.p, D.bytes);
        f0 = blas_stub_faults();
        StderrCapture cap2;
        s.matmul(D.p);
        cap2.finish();
        CHECK(blas_stub_faults() == f0 + 1 &&
                  std::string(blas_stub_last_fault()).find("B of batch 0") != std::string::npos,
              "fault: %s", blas_stub_last_fault());
        // The workspace the algo uses outside any allocation.
        blas_stub_clear_ranges();
        blas_stub_add_range(s.A.p, s.A.bytes);
        blas_stub_add_range(s.B.p, s.B.bytes);
        blas_stub_add_range(D.p, D.bytes);
        blas_stub_add_range(s.ws.p, 4096);
        f0 = blas_stub_faults();
        StderrCapture cap3;
        s.matmul(D.p);
        cap3.finish();
        CHECK(blas_stub_faults() == f0 + 1 &&
                  std::string(blas_stub_last_fault()).find("workspace") != std::string::npos,
              "fault: %s", blas_stub_last_fault());
        // A misaligned bias (the epilogue may read it with 16-byte loads).
        blas_stub_check_ranges(0);
        const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, 4);
        const void* bp = s.bias.at(2);
        set_attr(s.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, 8);
        CHECK(s.heuristic() == 0);
        f0 = blas_stub_faults();
        StderrCapture cap4;
        s.matmul(D.p);
        cap4.finish();
        CHECK(blas_stub_faults() == f0 + 1 && std::string(blas_stub_last_fault()).find("bias") != std::string::npos,
              "fault: %s", blas_stub_last_fault());
        blas_stub_clear_ranges();
    }
    {
        // The workspace is really used: data kept in it does not survive.
        g_case = "the workspace is clobbered";
        LtSetup s;
        CHECK(s.heuristic() == 0);
        std::memset(s.ws.p, 0x11, 64);
        CHECK(s.matmul() == 0);
        CHECK(s.ws.at<uint8_t>()[0] != 0x11, "workspace left untouched");
    }
}

// The libraries' micro-kernel dispatches on the CPU (AVX2 build or the
// x86-64 baseline); this binary's own copy of the engine is the baseline
// only. Same bits either way.
static void test_isa_clones_agree() {
    g_case = "library GEMM (dispatching) == baseline-ISA GEMM, bit for bit";
    const int64_t m = 197, n = 53, k = 300;  // 6 MFLOP: the threaded path in both
    Rng rng(31337);
    Buf A(k * m * 2), B(k * n * 2), D1(m * n * 2), D2(m * n * 2), bias(m * 2), ws(kWorkspaceBytes);
    for (int64_t i = 0; i < k * m; ++i) put(A.p, i, DType::F16, rng.sym(1));
    for (int64_t i = 0; i < k * n; ++i) put(B.p, i, DType::F16, rng.sym(1));
    for (int64_t i = 0; i < m; ++i) put(bias.p, i, DType::F16, rng.sym(1));
    Case c;
    c.ta = true;
    c.m = m;
    c.n = n;
    c.k = k;
    c.epilogue = CUBLASLT_EPILOGUE_GELU_BIAS;
    float alpha = 0.75f, beta = 0.0f;
    CHECK(lt_gemm(g_lt, c, A.p, B.p, D1.p, D1.p, bias.p, &alpha, &beta, ws.p, k, k, m, m, 0, 0, 0, 0, 0) == 0);
    emu_blas::Problem p;
    p.api = "baseline";
    p.m = m;
    p.n = n;
    p.k = k;
    p.trans_a = true;
    p.a = A.p;
    p.lda = k;
    p.b = B.p;
    p.ldb = k;
    p.c = D2.p;
    p.ldc = m;
    p.d = D2.p;
    p.ldd = m;
    p.alpha = alpha;
    p.act = emu_blas::Act::Gelu;
    p.bias = bias.p;
    emu_blas::execute(p);
    CHECK(std::memcmp(D1.p, D2.p, D1.bytes) == 0, "the library's result differs from the baseline build's");
    std::printf("(this CPU %s AVX2: the libraries ran the %s micro-kernel)\n",
                __builtin_cpu_supports("avx2") ? "has" : "lacks", __builtin_cpu_supports("avx2") ? "AVX2" : "baseline");
}

static void bench() {
    // The linear layers of a ViT-B/16-like model at batch 3 (577 rows) and
    // a 617-row variant: y[rows, n] = x[rows, k] W[n, k]^T, as gemm.rs calls it.
    const int64_t shapes[][3] = {{577, 768, 2304}, {617, 768, 2304}, {577, 3072, 768}};
    for (auto& s : shapes) {
        const int64_t rows = s[0], k = s[1], n = s[2];
        Rng rng(1);
        Buf x(rows * k * 2), w(n * k * 2), y(rows * n * 2), b(n * 2), ws(kWorkspaceBytes);
        for (int64_t i = 0; i < rows * k; ++i) put(x.p, i, DType::F16, rng.sym(1));
        for (int64_t i = 0; i < n * k; ++i) put(w.p, i, DType::F16, rng.sym(0.05));
        Case c;
        c.ta = true;
        c.m = n;
        c.n = rows;
        c.k = k;
        c.epilogue = CUBLASLT_EPILOGUE_BIAS;
        float alpha = 1.0f, beta = 0.0f;
        double best = 1e30;
        for (int rep = 0; rep < 5; ++rep) {
            auto t0 = std::chrono::steady_clock::now();
            lt_gemm(g_lt, c, w.p, x.p, y.p, y.p, b.p, &alpha, &beta, ws.p, k, k, n, n, 0, 0, 0, 0, 0);
            double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            best = std::min(best, dt);
        }
        std::printf("bench: f16 linear rows=%lld k=%lld n=%lld (GEMM %lldx%lldx%lld, T,N, bias): %.1f ms, %.2f GFLOP/s "
                    "(%d threads)\n",
                    (long long)rows, (long long)k, (long long)n, (long long)n, (long long)rows, (long long)k,
                    best * 1e3, 2.0 * rows * k * n / best * 1e-9, emu_blas::worker_threads());
    }
}

int main(int argc, char** argv) {
    load_libraries();
    CHECK(api::cublasLtCreate(&g_lt) == 0);
    CHECK(api::cublasCreate_v2(&g_cb) == 0);
    if (argc > 1 && std::string(argv[1]) == "--bench") {
        bench();
        return 0;
    }
    struct {
        const char* name;
        void (*fn)();
    } tests[] = {{"conversions", test_conversions},
                 {"cuBLASLt results", test_lt_cases},
                 {"cuBLAS results", test_cublas_cases},
                 {"the project's call shapes", test_project_wrappers},
                 {"cuBLASLt rejections", test_lt_rejections},
                 {"cuBLAS rejections", test_cublas_rejections},
                 {"driver interface", test_driver_interface},
                 {"ISA builds agree", test_isa_clones_agree}};
    for (auto& t : tests) {
        const int c0 = g_checks, f0 = g_failed;
        auto t0 = std::chrono::steady_clock::now();
        t.fn();
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%-28s %5d checks, %d failed (%.2f s)\n", t.name, g_checks - c0, g_failed - f0, dt);
    }
    CHECK(api::cublasDestroy_v2(g_cb) == 0);
    CHECK(api::cublasLtDestroy(g_lt) == 0);
    std::printf("blas_test: %d checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
