// Emulated cuBLASLt (libcublasLt.so.13) for the smarttrim emulated device.
// Test equipment only: see emu/blas/README.md for what is modelled, what is
// rejected and what can never be checked here.
//
// Semantics are cuBLASLt's documented ones (column-major):
//   D = epilogue(alpha * op(A) op(B) + beta * C [+ bias])
// op(A) is m x k, op(B) k x n, C and D m x n, where m and n are D's rows and
// columns; each layout describes the matrix as stored (before op). The work
// is enqueued on the stream through the emulated driver (emu/include/emu/
// api.h), with every descriptor value copied when cublasLtMatmul is called.
#include "blas_common.h"

#include <emu/api.h>

#include <cstring>

using namespace emu_blas;

struct cublasLtContext {
    int unused = 0;
};

struct cublasLtMatrixLayoutOpaque_t {
    uint32_t type = CUDA_R_32F;
    int32_t order = CUBLASLT_ORDER_COL;
    uint64_t rows = 0, cols = 0;
    int64_t ld = 0;
    int32_t batch = 1;
    int64_t stride = 0;
    int64_t plane_offset = 0;
    int32_t batch_mode = CUBLASLT_BATCH_MODE_STRIDED;
};

struct cublasLtMatmulDescOpaque_t {
    int32_t compute = CUBLAS_COMPUTE_32F;
    int32_t scale = CUDA_R_32F;
    int32_t pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N, transc = CUBLAS_OP_N;
    int32_t fill = CUBLAS_FILL_MODE_FULL;
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void* bias = nullptr;
    int64_t bias_stride = 0;
    int32_t bias_type = -1;  // -1: D's type
    // Accepted, not modelled: must keep their defaults for a matmul.
    const void* scale_pointers[5] = {};  // A, B, C, D, D_OUT
    const void* amax_d = nullptr;
    const void* aux_pointer = nullptr;
    const void* aux_scale = nullptr;
    const void* aux_amax = nullptr;
    int32_t scale_modes[6] = {};  // A, B, C, D, AUX, D_OUT
    const void* emulation = nullptr;
};

struct cublasLtMatmulPreferenceOpaque_t {
    uint32_t search_mode = 0;
    uint64_t max_workspace = 0;
    uint32_t reduction_mask = 7;   // CUBLASLT_REDUCTION_SCHEME_MASK
    uint32_t min_align[4] = {256, 256, 256, 256};  // A, B, C, D (documented default)
    float max_waves = 0.0f;
    uint64_t impl_mask = ~0ull;
};

namespace {

Live<cublasLtContext>& live_handles() {
    static Live<cublasLtContext> l;
    return l;
}
Live<cublasLtMatrixLayoutOpaque_t>& live_layouts() {
    static Live<cublasLtMatrixLayoutOpaque_t> l;
    return l;
}
Live<cublasLtMatmulDescOpaque_t>& live_descs() {
    static Live<cublasLtMatmulDescOpaque_t> l;
    return l;
}
Live<cublasLtMatmulPreferenceOpaque_t>& live_prefs() {
    static Live<cublasLtMatmulPreferenceOpaque_t> l;
    return l;
}

constexpr uint64_t kAlgoMagic = 0x474c41554d4554ull;   // "TEMUALG"
constexpr size_t kWorkspaceModel = size_t(1) << 20;     // bytes an emulated algo uses, at most

// Reads an attribute value of exactly sizeof(T) bytes.
template <class T>
bool get_value(const void* buf, size_t size, T* out) {
    if (!buf || size != sizeof(T)) return false;
    std::memcpy(out, buf, sizeof(T));
    return true;
}

cublasStatus_t bad_size(const char* api, const char* attr, size_t want, const void* buf, size_t got) {
    if (!buf) return fail(api, CUBLAS_STATUS_INVALID_VALUE, fmt("%s: buf is NULL", attr));
    return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                fmt("%s: sizeInBytes is %zu, the attribute is %zu bytes", attr, got, want));
}

const char* epilogue_name(uint32_t e) {
    switch (e) {
        case CUBLASLT_EPILOGUE_DEFAULT: return "CUBLASLT_EPILOGUE_DEFAULT";
        case CUBLASLT_EPILOGUE_RELU: return "CUBLASLT_EPILOGUE_RELU";
        case CUBLASLT_EPILOGUE_RELU_AUX: return "CUBLASLT_EPILOGUE_RELU_AUX";
        case CUBLASLT_EPILOGUE_BIAS: return "CUBLASLT_EPILOGUE_BIAS";
        case CUBLASLT_EPILOGUE_RELU_BIAS: return "CUBLASLT_EPILOGUE_RELU_BIAS";
        case CUBLASLT_EPILOGUE_RELU_AUX_BIAS: return "CUBLASLT_EPILOGUE_RELU_AUX_BIAS";
        case CUBLASLT_EPILOGUE_DRELU: return "CUBLASLT_EPILOGUE_DRELU";
        case CUBLASLT_EPILOGUE_DRELU_BGRAD: return "CUBLASLT_EPILOGUE_DRELU_BGRAD";
        case CUBLASLT_EPILOGUE_GELU: return "CUBLASLT_EPILOGUE_GELU";
        case CUBLASLT_EPILOGUE_GELU_AUX: return "CUBLASLT_EPILOGUE_GELU_AUX";
        case CUBLASLT_EPILOGUE_GELU_BIAS: return "CUBLASLT_EPILOGUE_GELU_BIAS";
        case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: return "CUBLASLT_EPILOGUE_GELU_AUX_BIAS";
        case CUBLASLT_EPILOGUE_DGELU: return "CUBLASLT_EPILOGUE_DGELU";
        case CUBLASLT_EPILOGUE_DGELU_BGRAD: return "CUBLASLT_EPILOGUE_DGELU_BGRAD";
        case CUBLASLT_EPILOGUE_BGRADA: return "CUBLASLT_EPILOGUE_BGRADA";
        case CUBLASLT_EPILOGUE_BGRADB: return "CUBLASLT_EPILOGUE_BGRADB";
    }
    return nullptr;
}

// Everything a heuristic query or a matmul needs, copied from the
// descriptors and checked.
struct Config {
    cublasLtMatmulDescOpaque_t desc;
    cublasLtMatrixLayoutOpaque_t lA, lB, lC, lD;  // copies of Adesc .. Ddesc
    int64_t m = 0, n = 0, k = 0, batch = 1;
    DType tab = DType::F16, tcd = DType::F16;
    Act act = Act::None;
    bool has_bias = false;
    uint64_t fingerprint = 0;
};

// Layout checks that need no other matrix.
cublasStatus_t check_layout(const char* api, const char* name, const cublasLtMatrixLayoutOpaque_t& l) {
    if (l.order != CUBLASLT_ORDER_COL) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt("%sdesc: CUBLASLT_MATRIX_LAYOUT_ORDER %d: only CUBLASLT_ORDER_COL is modelled", name, l.order));
    }
    for (auto [what, v] : {std::pair{"rows", l.rows}, std::pair{"cols", l.cols}}) {
        if (v >= (uint64_t(1) << 63)) {
            return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                        fmt("%sdesc: %s = %lld is negative", name, what, (long long)int64_t(v)));
        }
        if (v > uint64_t(INT32_MAX)) {
            return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                        fmt("%sdesc: %s = %llu does not fit in int32 (cuBLASLt supports only such sizes)", name, what,
                            (unsigned long long)v));
        }
    }
    const int64_t min_ld = l.rows > 1 ? int64_t(l.rows) : 1;
    if (l.ld < min_ld) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("%sdesc: leading dimension %lld < max(1, rows = %llu): the columns would overlap", name,
                        (long long)l.ld, (unsigned long long)l.rows));
    }
    if (l.batch < 1) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("%sdesc: CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = %d, must be at least 1", name, l.batch));
    }
    if (l.batch_mode != CUBLASLT_BATCH_MODE_STRIDED) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt("%sdesc: CUBLASLT_MATRIX_LAYOUT_BATCH_MODE %d: only strided batches are modelled", name,
                        l.batch_mode));
    }
    if (l.plane_offset != 0) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt("%sdesc: CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET (planar complex) is not modelled", name));
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t check_op(const char* api, const char* attr, int32_t op) {
    if (op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C) return CUBLAS_STATUS_SUCCESS;
    return fail(api, CUBLAS_STATUS_INVALID_VALUE, fmt("%s = %d is not CUBLAS_OP_N, _T or _C", attr, op));
}

cublasStatus_t make_config(const char* api, cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                           cublasLtMatrixLayout_t A, cublasLtMatrixLayout_t B, cublasLtMatrixLayout_t C,
                           cublasLtMatrixLayout_t D, Config* cfg) {
    if (!live_handles().has(handle)) {
        return fail(api, CUBLAS_STATUS_NOT_INITIALIZED,
                    fmt("lightHandle %p is not a live cuBLASLt handle (NULL, destroyed or never created)",
                        static_cast<void*>(handle)));
    }
    if (!live_descs().copy(desc, &cfg->desc)) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("computeDesc %p is not a live matmul descriptor", static_cast<void*>(desc)));
    }
    const struct {
        const char* name;
        cublasLtMatrixLayout_t l;
        cublasLtMatrixLayoutOpaque_t* out;
    } layouts[] = {{"A", A, &cfg->lA}, {"B", B, &cfg->lB}, {"C", C, &cfg->lC}, {"D", D, &cfg->lD}};
    for (const auto& x : layouts) {
        if (!live_layouts().copy(x.l, x.out)) {
            return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                        fmt("%sdesc %p is not a live matrix layout", x.name, static_cast<void*>(x.l)));
        }
    }
    const auto& d = cfg->desc;
    std::string why;
    cublasStatus_t st = check_types(d.compute, d.scale, int(cfg->lA.type), int(cfg->lB.type), int(cfg->lC.type),
                                    int(cfg->lD.type), &why);
    if (st != CUBLAS_STATUS_SUCCESS) return fail(api, st, why);
    to_dtype(int(cfg->lA.type), &cfg->tab);
    to_dtype(int(cfg->lD.type), &cfg->tcd);

    if ((st = check_op(api, "CUBLASLT_MATMUL_DESC_TRANSA", d.transa)) != CUBLAS_STATUS_SUCCESS) return st;
    if ((st = check_op(api, "CUBLASLT_MATMUL_DESC_TRANSB", d.transb)) != CUBLAS_STATUS_SUCCESS) return st;
    if (d.transc != CUBLAS_OP_N) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt("CUBLASLT_MATMUL_DESC_TRANSC = %s: cuBLASLt supports only CUBLAS_OP_N", op_name(d.transc)));
    }
    if (d.fill != CUBLAS_FILL_MODE_FULL) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt("CUBLASLT_MATMUL_DESC_FILL_MODE = %d: only CUBLAS_FILL_MODE_FULL is modelled", d.fill));
    }
    if (d.pointer_mode != CUBLASLT_POINTER_MODE_HOST && d.pointer_mode != CUBLASLT_POINTER_MODE_DEVICE) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt("CUBLASLT_MATMUL_DESC_POINTER_MODE = %d: only HOST and DEVICE are modelled", d.pointer_mode));
    }
    const char* unmodelled = nullptr;
    static const char* scale_ptr_names[5] = {"A_SCALE_POINTER", "B_SCALE_POINTER", "C_SCALE_POINTER",
                                             "D_SCALE_POINTER", "D_OUT_SCALE_POINTER"};
    static const char* scale_mode_names[6] = {"A_SCALE_MODE", "B_SCALE_MODE", "C_SCALE_MODE",
                                              "D_SCALE_MODE", "EPILOGUE_AUX_SCALE_MODE", "D_OUT_SCALE_MODE"};
    for (int i = 0; i < 5; ++i)
        if (d.scale_pointers[i]) unmodelled = scale_ptr_names[i];
    for (int i = 0; i < 6; ++i)
        if (d.scale_modes[i]) unmodelled = scale_mode_names[i];
    if (d.amax_d) unmodelled = "AMAX_D_POINTER";
    if (d.aux_scale) unmodelled = "EPILOGUE_AUX_SCALE_POINTER";
    if (d.aux_amax) unmodelled = "EPILOGUE_AUX_AMAX_POINTER";
    if (d.emulation) unmodelled = "EMULATION_DESCRIPTOR";
    if (unmodelled) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt("CUBLASLT_MATMUL_DESC_%s is set: FP8 / block scaling / emulation are not modelled",
                        unmodelled));
    }

    const char* en = epilogue_name(d.epilogue);
    if (!en) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE, fmt("CUBLASLT_MATMUL_DESC_EPILOGUE = %u is not a cublasLtEpilogue_t",
                                                          d.epilogue));
    }
    switch (d.epilogue) {
        case CUBLASLT_EPILOGUE_DEFAULT: cfg->act = Act::None; cfg->has_bias = false; break;
        case CUBLASLT_EPILOGUE_RELU: cfg->act = Act::Relu; cfg->has_bias = false; break;
        case CUBLASLT_EPILOGUE_GELU: cfg->act = Act::Gelu; cfg->has_bias = false; break;
        case CUBLASLT_EPILOGUE_BIAS: cfg->act = Act::None; cfg->has_bias = true; break;
        case CUBLASLT_EPILOGUE_RELU_BIAS: cfg->act = Act::Relu; cfg->has_bias = true; break;
        case CUBLASLT_EPILOGUE_GELU_BIAS: cfg->act = Act::Gelu; cfg->has_bias = true; break;
        default:
            return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                        fmt("%s is not modelled (DEFAULT, RELU, GELU, BIAS, RELU_BIAS and GELU_BIAS are)", en));
    }
    if (cfg->has_bias) {
        if (d.bias_type != -1 && d.bias_type != int32_t(cfg->lD.type)) {
            const char* bn = cuda_type_name(d.bias_type);
            return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                        fmt("CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE %s with D %s: the emulator models a bias of D's "
                            "type only",
                            bn ? bn : "(unknown)", cuda_type_name(int(cfg->lD.type))));
        }
    }

    // Each matrix on its own, then their agreement.
    for (const auto& x : layouts)
        if ((st = check_layout(api, x.name, *x.out)) != CUBLAS_STATUS_SUCCESS) return st;
    const bool ta = d.transa != CUBLAS_OP_N, tb = d.transb != CUBLAS_OP_N;
    const auto &la = cfg->lA, &lb = cfg->lB, &lc = cfg->lC, &ldd = cfg->lD;
    const int64_t a_rows = int64_t(ta ? la.cols : la.rows), a_cols = int64_t(ta ? la.rows : la.cols);
    const int64_t b_rows = int64_t(tb ? lb.cols : lb.rows), b_cols = int64_t(tb ? lb.rows : lb.cols);
    cfg->m = int64_t(ldd.rows);
    cfg->n = int64_t(ldd.cols);
    cfg->k = a_cols;
    if (a_rows != cfg->m) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("op(A) is %lld x %lld (Adesc %llu x %llu, %s) but D has %lld rows", (long long)a_rows,
                        (long long)a_cols, (unsigned long long)la.rows, (unsigned long long)la.cols,
                        op_name(d.transa), (long long)cfg->m));
    }
    if (b_rows != a_cols) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("op(A) is %lld x %lld but op(B) is %lld x %lld (Bdesc %llu x %llu, %s): inner dimensions "
                        "differ",
                        (long long)a_rows, (long long)a_cols, (long long)b_rows, (long long)b_cols,
                        (unsigned long long)lb.rows, (unsigned long long)lb.cols, op_name(d.transb)));
    }
    if (b_cols != cfg->n) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("op(B) is %lld x %lld but D has %lld columns", (long long)b_rows, (long long)b_cols,
                        (long long)cfg->n));
    }
    if (lc.rows != ldd.rows || lc.cols != ldd.cols) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("Cdesc is %llu x %llu but Ddesc is %llu x %llu", (unsigned long long)lc.rows,
                        (unsigned long long)lc.cols, (unsigned long long)ldd.rows, (unsigned long long)ldd.cols));
    }
    if (la.batch != ldd.batch || lb.batch != ldd.batch || lc.batch != ldd.batch) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("batch counts differ: A %d, B %d, C %d, D %d", la.batch, lb.batch, lc.batch, ldd.batch));
    }
    cfg->batch = ldd.batch;
    cfg->fingerprint = uint64_t(uint32_t(d.compute)) | uint64_t(uint32_t(d.scale) & 0xff) << 8 |
                       uint64_t(la.type & 0xff) << 16 | uint64_t(ldd.type & 0xff) << 24 | uint64_t(d.epilogue) << 32 |
                       uint64_t(uint32_t(d.pointer_mode) & 0xff) << 48;
    return CUBLAS_STATUS_SUCCESS;
}

// The emulated algorithm, as stored in cublasLtMatmulAlgo_t.
struct Algo {
    uint64_t fingerprint;
    uint32_t align[4];  // bytes the algo may assume for A, B, C, D
    uint64_t workspace;  // bytes it uses
};

void encode(const Algo& a, cublasLtMatmulAlgo_t* out) {
    std::memset(out, 0, sizeof *out);
    out->data[0] = kAlgoMagic;
    out->data[1] = a.fingerprint;
    out->data[2] = uint64_t(a.align[0]) | uint64_t(a.align[1]) << 32;
    out->data[3] = uint64_t(a.align[2]) | uint64_t(a.align[3]) << 32;
    out->data[4] = a.workspace;
}

bool decode(const cublasLtMatmulAlgo_t* in, Algo* a) {
    if (in->data[0] != kAlgoMagic) return false;
    a->fingerprint = in->data[1];
    a->align[0] = uint32_t(in->data[2]);
    a->align[1] = uint32_t(in->data[2] >> 32);
    a->align[2] = uint32_t(in->data[3]);
    a->align[3] = uint32_t(in->data[3] >> 32);
    a->workspace = in->data[4];
    return true;
}

Algo algo_for(const Config& cfg, const cublasLtMatmulPreferenceOpaque_t& pref) {
    Algo a{};
    a.fingerprint = cfg.fingerprint;
    const uint32_t es_ab = uint32_t(dtype_size(cfg.tab)), es_cd = uint32_t(dtype_size(cfg.tcd));
    const uint32_t es[4] = {es_ab, es_ab, es_cd, es_cd};
    for (int i = 0; i < 4; ++i) a.align[i] = pref.min_align[i] > es[i] ? pref.min_align[i] : es[i];
    a.workspace = pref.max_workspace < kWorkspaceModel ? pref.max_workspace : kWorkspaceModel;
    return a;
}

}  // namespace

// ---- handle ------------------------------------------------------------------

EMU_BLAS_API cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle) {
    if (!lightHandle) return fail("cublasLtCreate", CUBLAS_STATUS_INVALID_VALUE, "lightHandle is NULL");
    if (emu::inject_failure("cublasLtCreate")) return CUBLAS_STATUS_ALLOC_FAILED;
    auto* h = new (std::nothrow) cublasLtContext;
    if (!h) return fail("cublasLtCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
    live_handles().add(h);
    *lightHandle = h;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
    if (!live_handles().remove(lightHandle)) {
        return fail("cublasLtDestroy", CUBLAS_STATUS_NOT_INITIALIZED,
                    fmt("lightHandle %p is not a live cuBLASLt handle (NULL, destroyed twice or never created)",
                        static_cast<void*>(lightHandle)));
    }
    delete lightHandle;
    return CUBLAS_STATUS_SUCCESS;
}

// ---- matrix layouts ------------------------------------------------------------

EMU_BLAS_API cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type,
                                                       uint64_t rows, uint64_t cols, int64_t ld) {
    if (!matLayout) return fail("cublasLtMatrixLayoutCreate", CUBLAS_STATUS_INVALID_VALUE, "matLayout is NULL");
    auto* l = new (std::nothrow) cublasLtMatrixLayoutOpaque_t;
    if (!l) return fail("cublasLtMatrixLayoutCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
    l->type = uint32_t(type);
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    live_layouts().add(l);
    *matLayout = l;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    if (!live_layouts().remove(matLayout)) {
        return fail("cublasLtMatrixLayoutDestroy", CUBLAS_STATUS_INVALID_VALUE,
                    fmt("matLayout %p is not a live matrix layout (destroyed twice or never created)",
                        static_cast<void*>(matLayout)));
    }
    delete matLayout;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
                                                             cublasLtMatrixLayoutAttribute_t attr, const void* buf,
                                                             size_t sizeInBytes) {
    const char* api = "cublasLtMatrixLayoutSetAttribute";
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    bool live = live_layouts().with(matLayout, [&](cublasLtMatrixLayoutOpaque_t& l) {
        auto set = [&](const char* name, auto* field) {
            if (!get_value(buf, sizeInBytes, field)) st = bad_size(api, name, sizeof *field, buf, sizeInBytes);
        };
        switch (attr) {
            case CUBLASLT_MATRIX_LAYOUT_TYPE: set("CUBLASLT_MATRIX_LAYOUT_TYPE", &l.type); break;
            case CUBLASLT_MATRIX_LAYOUT_ORDER: set("CUBLASLT_MATRIX_LAYOUT_ORDER", &l.order); break;
            case CUBLASLT_MATRIX_LAYOUT_ROWS: set("CUBLASLT_MATRIX_LAYOUT_ROWS", &l.rows); break;
            case CUBLASLT_MATRIX_LAYOUT_COLS: set("CUBLASLT_MATRIX_LAYOUT_COLS", &l.cols); break;
            case CUBLASLT_MATRIX_LAYOUT_LD: set("CUBLASLT_MATRIX_LAYOUT_LD", &l.ld); break;
            case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: set("CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT", &l.batch); break;
            case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET:
                set("CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET", &l.stride);
                break;
            case CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET: set("CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET", &l.plane_offset); break;
            case CUBLASLT_MATRIX_LAYOUT_BATCH_MODE: set("CUBLASLT_MATRIX_LAYOUT_BATCH_MODE", &l.batch_mode); break;
            default:
                st = fail(api, CUBLAS_STATUS_INVALID_VALUE,
                          fmt("attribute %d is not a cublasLtMatrixLayoutAttribute_t", int(attr)));
        }
    });
    if (!live) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("matLayout %p is not a live matrix layout", static_cast<void*>(matLayout)));
    }
    return st;
}

// ---- matmul descriptors ----------------------------------------------------------

EMU_BLAS_API cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc, cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType) {
    if (!matmulDesc) return fail("cublasLtMatmulDescCreate", CUBLAS_STATUS_INVALID_VALUE, "matmulDesc is NULL");
    auto* d = new (std::nothrow) cublasLtMatmulDescOpaque_t;
    if (!d) return fail("cublasLtMatmulDescCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
    d->compute = int32_t(computeType);
    d->scale = int32_t(scaleType);
    live_descs().add(d);
    *matmulDesc = d;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    if (!live_descs().remove(matmulDesc)) {
        return fail("cublasLtMatmulDescDestroy", CUBLAS_STATUS_INVALID_VALUE,
                    fmt("matmulDesc %p is not a live matmul descriptor (destroyed twice or never created)",
                        static_cast<void*>(matmulDesc)));
    }
    delete matmulDesc;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr, const void* buf,
                                                           size_t sizeInBytes) {
    const char* api = "cublasLtMatmulDescSetAttribute";
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    bool live = live_descs().with(matmulDesc, [&](cublasLtMatmulDescOpaque_t& d) {
        auto set = [&](const char* name, auto* field) {
            if (!get_value(buf, sizeInBytes, field)) st = bad_size(api, name, sizeof *field, buf, sizeInBytes);
        };
        // Accepted and ignored (they only matter for what is rejected
        // elsewhere, or only for speed); sizes still checked.
        int64_t i64;
        int32_t i32;
        int8_t i8;
        const void* ptr = nullptr;
        switch (attr) {
            case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: set("CUBLASLT_MATMUL_DESC_COMPUTE_TYPE", &d.compute); break;
            case CUBLASLT_MATMUL_DESC_SCALE_TYPE: set("CUBLASLT_MATMUL_DESC_SCALE_TYPE", &d.scale); break;
            case CUBLASLT_MATMUL_DESC_POINTER_MODE: set("CUBLASLT_MATMUL_DESC_POINTER_MODE", &d.pointer_mode); break;
            case CUBLASLT_MATMUL_DESC_TRANSA: set("CUBLASLT_MATMUL_DESC_TRANSA", &d.transa); break;
            case CUBLASLT_MATMUL_DESC_TRANSB: set("CUBLASLT_MATMUL_DESC_TRANSB", &d.transb); break;
            case CUBLASLT_MATMUL_DESC_TRANSC: set("CUBLASLT_MATMUL_DESC_TRANSC", &d.transc); break;
            case CUBLASLT_MATMUL_DESC_FILL_MODE: set("CUBLASLT_MATMUL_DESC_FILL_MODE", &d.fill); break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE: set("CUBLASLT_MATMUL_DESC_EPILOGUE", &d.epilogue); break;
            case CUBLASLT_MATMUL_DESC_BIAS_POINTER: set("CUBLASLT_MATMUL_DESC_BIAS_POINTER", &d.bias); break;
            case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE:
                set("CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE", &d.bias_stride);
                break;
            case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: set("CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE", &d.bias_type); break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
                set("CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER", &d.aux_pointer);
                break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: set("CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD", &i64); break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE:
                set("CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE", &i64);
                break;
            case CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE:
                set("CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE", &i64);
                break;
            case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: set("CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET", &i32); break;
            case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER:
                set("CUBLASLT_MATMUL_DESC_A_SCALE_POINTER", &d.scale_pointers[0]);
                break;
            case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER:
                set("CUBLASLT_MATMUL_DESC_B_SCALE_POINTER", &d.scale_pointers[1]);
                break;
            case CUBLASLT_MATMUL_DESC_C_SCALE_POINTER:
                set("CUBLASLT_MATMUL_DESC_C_SCALE_POINTER", &d.scale_pointers[2]);
                break;
            case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER:
                set("CUBLASLT_MATMUL_DESC_D_SCALE_POINTER", &d.scale_pointers[3]);
                break;
            case CUBLASLT_MATMUL_DESC_D_OUT_SCALE_POINTER:
                set("CUBLASLT_MATMUL_DESC_D_OUT_SCALE_POINTER", &d.scale_pointers[4]);
                break;
            case CUBLASLT_MATMUL_DESC_AMAX_D_POINTER: set("CUBLASLT_MATMUL_DESC_AMAX_D_POINTER", &d.amax_d); break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE:
                set("CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE", &i32);
                break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER:
                set("CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER", &d.aux_scale);
                break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER:
                set("CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER", &d.aux_amax);
                break;
            case CUBLASLT_MATMUL_DESC_FAST_ACCUM: set("CUBLASLT_MATMUL_DESC_FAST_ACCUM", &i8); break;
            case CUBLASLT_MATMUL_DESC_A_SCALE_MODE: set("CUBLASLT_MATMUL_DESC_A_SCALE_MODE", &d.scale_modes[0]); break;
            case CUBLASLT_MATMUL_DESC_B_SCALE_MODE: set("CUBLASLT_MATMUL_DESC_B_SCALE_MODE", &d.scale_modes[1]); break;
            case CUBLASLT_MATMUL_DESC_C_SCALE_MODE: set("CUBLASLT_MATMUL_DESC_C_SCALE_MODE", &d.scale_modes[2]); break;
            case CUBLASLT_MATMUL_DESC_D_SCALE_MODE: set("CUBLASLT_MATMUL_DESC_D_SCALE_MODE", &d.scale_modes[3]); break;
            case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_MODE:
                set("CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_MODE", &d.scale_modes[4]);
                break;
            case CUBLASLT_MATMUL_DESC_D_OUT_SCALE_MODE:
                set("CUBLASLT_MATMUL_DESC_D_OUT_SCALE_MODE", &d.scale_modes[5]);
                break;
            case CUBLASLT_MATMUL_DESC_EMULATION_DESCRIPTOR:
                set("CUBLASLT_MATMUL_DESC_EMULATION_DESCRIPTOR", &ptr);
                if (st == CUBLAS_STATUS_SUCCESS) d.emulation = ptr;
                break;
            default:
                st = fail(api, CUBLAS_STATUS_INVALID_VALUE,
                          fmt("attribute %d is not a cublasLtMatmulDescAttributes_t", int(attr)));
        }
    });
    if (!live) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("matmulDesc %p is not a live matmul descriptor", static_cast<void*>(matmulDesc)));
    }
    return st;
}

// ---- preferences --------------------------------------------------------------------

EMU_BLAS_API cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
    if (!pref) return fail("cublasLtMatmulPreferenceCreate", CUBLAS_STATUS_INVALID_VALUE, "pref is NULL");
    auto* p = new (std::nothrow) cublasLtMatmulPreferenceOpaque_t;
    if (!p) return fail("cublasLtMatmulPreferenceCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
    live_prefs().add(p);
    *pref = p;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    if (!live_prefs().remove(pref)) {
        return fail("cublasLtMatmulPreferenceDestroy", CUBLAS_STATUS_INVALID_VALUE,
                    fmt("pref %p is not a live preference descriptor (destroyed twice or never created)",
                        static_cast<void*>(pref)));
    }
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr,
                                                                 const void* buf, size_t sizeInBytes) {
    const char* api = "cublasLtMatmulPreferenceSetAttribute";
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    bool live = live_prefs().with(pref, [&](cublasLtMatmulPreferenceOpaque_t& p) {
        auto set = [&](const char* name, auto* field) {
            if (!get_value(buf, sizeInBytes, field)) st = bad_size(api, name, sizeof *field, buf, sizeInBytes);
        };
        switch (attr) {
            case CUBLASLT_MATMUL_PREF_SEARCH_MODE: set("CUBLASLT_MATMUL_PREF_SEARCH_MODE", &p.search_mode); break;
            case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
                set("CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES", &p.max_workspace);
                break;
            case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK:
                set("CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK", &p.reduction_mask);
                break;
            case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
                set("CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES", &p.min_align[0]);
                break;
            case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
                set("CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES", &p.min_align[1]);
                break;
            case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
                set("CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES", &p.min_align[2]);
                break;
            case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
                set("CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES", &p.min_align[3]);
                break;
            case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT: set("CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT", &p.max_waves); break;
            case CUBLASLT_MATMUL_PREF_IMPL_MASK: set("CUBLASLT_MATMUL_PREF_IMPL_MASK", &p.impl_mask); break;
            default:
                st = fail(api, CUBLAS_STATUS_INVALID_VALUE,
                          fmt("attribute %d is not a cublasLtMatmulPreferenceAttributes_t", int(attr)));
        }
    });
    if (!live) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("pref %p is not a live preference descriptor", static_cast<void*>(pref)));
    }
    return st;
}

// ---- heuristics ---------------------------------------------------------------------

EMU_BLAS_API cublasStatus_t cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requestedAlgoCount, cublasLtMatmulHeuristicResult_t* heuristicResultsArray,
    int* returnAlgoCount) {
    const char* api = "cublasLtMatmulAlgoGetHeuristic";
    emu::count(emu::Counter::BlasHeuristics);
    if (returnAlgoCount) *returnAlgoCount = 0;
    if (emu::inject_failure(api)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!live_handles().has(lightHandle)) {
        return fail(api, CUBLAS_STATUS_NOT_INITIALIZED,
                    fmt("lightHandle %p is not a live cuBLASLt handle", static_cast<void*>(lightHandle)));
    }
    if (requestedAlgoCount <= 0) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE, fmt("requestedAlgoCount = %d, must be positive", requestedAlgoCount));
    }
    if (!heuristicResultsArray || !returnAlgoCount) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE, "heuristicResultsArray or returnAlgoCount is NULL");
    }
    cublasLtMatmulPreferenceOpaque_t pref;
    if (!live_prefs().copy(preference, &pref)) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("preference %p is not a live preference descriptor", static_cast<void*>(preference)));
    }
    Config cfg;
    cublasStatus_t st = make_config(api, lightHandle, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &cfg);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    cublasLtMatmulHeuristicResult_t r;
    std::memset(&r, 0, sizeof r);
    const Algo a = algo_for(cfg, pref);
    encode(a, &r.algo);
    r.workspaceSize = size_t(a.workspace);
    r.state = CUBLAS_STATUS_SUCCESS;
    r.wavesCount = 1.0f;
    heuristicResultsArray[0] = r;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

// ---- the matmul ------------------------------------------------------------------------

EMU_BLAS_API cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                                           const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc,
                                           const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                                           const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                                           cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo,
                                           void* workspace, size_t workspaceSizeInBytes, cudaStream_t stream) {
    const char* api = "cublasLtMatmul";
    emu::count(emu::Counter::BlasMatmuls);
    if (emu::inject_failure(api)) return CUBLAS_STATUS_EXECUTION_FAILED;
    Config cfg;
    cublasStatus_t st = make_config(api, lightHandle, computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &cfg);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    const auto& d = cfg.desc;
    if (!alpha || !beta) return fail(api, CUBLAS_STATUS_INVALID_VALUE, "alpha or beta is NULL");
    const bool dev_scalars = d.pointer_mode == CUBLASLT_POINTER_MODE_DEVICE;
    float alpha_v = 1.0f, beta_v = 0.0f;
    if (!dev_scalars) {
        std::memcpy(&alpha_v, alpha, sizeof alpha_v);  // host scalars: read now
        std::memcpy(&beta_v, beta, sizeof beta_v);
    }
    const bool empty = cfg.m == 0 || cfg.n == 0;
    const bool reads_ab = !empty && cfg.k > 0 && (dev_scalars || alpha_v != 0.0f);
    const bool reads_c = !empty && (dev_scalars || beta_v != 0.0f);
    if (!empty && !D) return fail(api, CUBLAS_STATUS_INVALID_VALUE, "D is NULL");
    if (reads_ab && (!A || !B)) return fail(api, CUBLAS_STATUS_INVALID_VALUE, "A or B is NULL");
    if (reads_c && !C) return fail(api, CUBLAS_STATUS_INVALID_VALUE, "C is NULL and beta is not known to be zero");
    if (C && C == D && (cfg.lC.ld != cfg.lD.ld || (cfg.batch > 1 && cfg.lC.stride != cfg.lD.stride))) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("in-place matmul (C == D) with Cdesc != Ddesc: ld %lld vs %lld, batch stride %lld vs %lld",
                        (long long)cfg.lC.ld, (long long)cfg.lD.ld, (long long)cfg.lC.stride,
                        (long long)cfg.lD.stride));
    }
    if (cfg.has_bias && !d.bias) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("%s needs CUBLASLT_MATMUL_DESC_BIAS_POINTER, which is NULL", epilogue_name(d.epilogue)));
    }

    // The algorithm: the one given (from our heuristic), or, for NULL, what
    // an implicit query with default preferences returns.
    Algo a;
    if (algo) {
        if (!decode(algo, &a)) {
            return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                        "algo was not returned by this library's cublasLtMatmulAlgoGetHeuristic "
                        "(cublasLtMatmulAlgoInit and hand-built algos are not modelled)");
        }
        if (a.fingerprint != cfg.fingerprint) {
            return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                        "algo was found for a different compute/scale/matrix type, epilogue or pointer mode");
        }
    } else {
        a = algo_for(cfg, cublasLtMatmulPreferenceOpaque_t{});
    }
    if (workspaceSizeInBytes < a.workspace) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("workspaceSizeInBytes = %zu is less than the %llu bytes the algo needs", workspaceSizeInBytes,
                        (unsigned long long)a.workspace));
    }
    if (a.workspace > 0 && !workspace) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                    fmt("workspace is NULL but the algo needs %llu bytes", (unsigned long long)a.workspace));
    }
    // The heuristic never saw the pointers: it may have picked an algo that
    // assumes the alignment of the preference (default 256 bytes). cuBLASLt
    // then refuses the call.
    const struct {
        const char* name;
        const void* p;
        bool used;
    } ptrs[] = {{"A", A, reads_ab}, {"B", B, reads_ab}, {"C", C, reads_c}, {"D", D, !empty}};
    for (int i = 0; i < 4; ++i) {
        if (!ptrs[i].used) continue;
        const uintptr_t addr = reinterpret_cast<uintptr_t>(ptrs[i].p);
        if (addr % a.align[i] != 0) {
            return fail(api, CUBLAS_STATUS_NOT_SUPPORTED,
                        fmt("%s = %p is not %u-byte aligned, which the algo may assume "
                            "(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_%s_BYTES = %u when it was chosen)",
                            ptrs[i].name, ptrs[i].p, a.align[i], ptrs[i].name, a.align[i]));
        }
    }
    if (empty) return CUBLAS_STATUS_SUCCESS;

    Problem p;
    p.api = api;
    p.m = cfg.m;
    p.n = cfg.n;
    p.k = cfg.k;
    p.batch = cfg.batch;
    p.trans_a = d.transa != CUBLAS_OP_N;
    p.trans_b = d.transb != CUBLAS_OP_N;
    p.type_ab = cfg.tab;
    p.type_cd = cfg.tcd;
    p.a = A;
    p.lda = cfg.lA.ld;
    p.stride_a = cfg.lA.stride;
    p.b = B;
    p.ldb = cfg.lB.ld;
    p.stride_b = cfg.lB.stride;
    p.c = C;
    p.ldc = cfg.lC.ld;
    p.stride_c = cfg.lC.stride;
    p.d = D;
    p.ldd = cfg.lD.ld;
    p.stride_d = cfg.lD.stride;
    p.scalars_on_device = dev_scalars;
    p.alpha = alpha_v;
    p.beta = beta_v;
    p.alpha_dev = static_cast<const float*>(alpha);
    p.beta_dev = static_cast<const float*>(beta);
    p.act = cfg.act;
    p.bias = cfg.has_bias ? d.bias : nullptr;
    p.bias_stride = d.bias_stride;
    p.bias_align_required = cfg.has_bias ? 16 : 0;
    p.workspace = workspace;
    p.workspace_used = size_t(a.workspace);
    const CUresult r = emu::enqueue_host_op(reinterpret_cast<CUstream>(stream), "cublasLtMatmul",
                                            [p] { execute(p); });
    if (r != CUDA_SUCCESS) {
        return fail(api, CUBLAS_STATUS_EXECUTION_FAILED,
                    fmt("enqueueing the matmul on stream %p failed with CUresult %d", static_cast<void*>(stream),
                        int(r)));
    }
    return CUBLAS_STATUS_SUCCESS;
}
