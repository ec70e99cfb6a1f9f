// Emulated cuBLAS (libcublas.so.13, the v2 API) for the smarttrim emulated
// device: the handle, its stream and modes, and the mixed-precision GEMMs
// (cublasGemmEx, cublasGemmStridedBatchedEx). Test equipment only: see
// emu/blas/README.md.
//
// Documented semantics (column-major), for each batch i:
//   C_i = alpha * op(A_i) op(B_i) + beta * C_i,
// A_i = A + i*strideA (elements), op(A) m x k, op(B) k x n, C m x n.
// The work is enqueued on the handle's stream through the emulated driver.
#include "blas_common.h"

#include <emu/api.h>

#include <cstring>

using namespace emu_blas;

struct cublasContext {
    CUstream stream = nullptr;  // 0: the legacy default stream
    int32_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
    int32_t math_mode = CUBLAS_DEFAULT_MATH;
    void* workspace = nullptr;
    size_t workspace_size = 0;
};

namespace {

Live<cublasContext>& live_handles() {
    static Live<cublasContext> l;
    return l;
}

cublasStatus_t no_handle(const char* api, const void* h) {
    return fail(api, CUBLAS_STATUS_NOT_INITIALIZED,
                fmt("handle %p is not a live cuBLAS handle (NULL, destroyed or never created)", h));
}

bool known_gemm_algo(int algo) {
    return algo == CUBLAS_GEMM_DEFAULT || (algo >= CUBLAS_GEMM_ALGO0 && algo <= CUBLAS_GEMM_ALGO23) ||
           (algo >= CUBLAS_GEMM_DEFAULT_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP);
}

cublasStatus_t gemm(const char* api, cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                    int n, int k, const void* alpha, const void* A, cudaDataType Atype, int lda, long long strideA,
                    const void* B, cudaDataType Btype, int ldb, long long strideB, const void* beta, void* C,
                    cudaDataType Ctype, int ldc, long long strideC, int batchCount, cublasComputeType_t computeType,
                    cublasGemmAlgo_t algo) {
    emu::count(emu::Counter::BlasMatmuls);
    if (emu::inject_failure(api)) return CUBLAS_STATUS_EXECUTION_FAILED;
    cublasContext h;
    if (!live_handles().copy(handle, &h)) return no_handle(api, handle);
    for (auto [name, op] : {std::pair{"transa", int(transa)}, std::pair{"transb", int(transb)}}) {
        if (op != CUBLAS_OP_N && op != CUBLAS_OP_T && op != CUBLAS_OP_C) {
            return fail(api, CUBLAS_STATUS_INVALID_VALUE, fmt("%s = %d is not CUBLAS_OP_N, _T or _C", name, op));
        }
    }
    if (m < 0 || n < 0 || k < 0) {
        return fail(api, CUBLAS_STATUS_INVALID_VALUE, fmt("m = %d, n = %d, k = %d: negative size", m, n, k));
    }
    if (batchCount < 0) return fail(api, CUBLAS_STATUS_INVALID_VALUE, fmt("batchCount = %d is negative", batchCount));
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    const int a_rows = ta ? k : m, b_rows = tb ? n : k;
    const struct {
        const char* name;
        int ld, rows;
        const char* rows_name;
    } lds[] = {{"lda", lda, a_rows, ta ? "k (transa != N)" : "m (transa == N)"},
               {"ldb", ldb, b_rows, tb ? "n (transb != N)" : "k (transb == N)"},
               {"ldc", ldc, m, "m"}};
    for (const auto& x : lds) {
        const int need = x.rows > 1 ? x.rows : 1;
        if (x.ld < need) {
            return fail(api, CUBLAS_STATUS_INVALID_VALUE,
                        fmt("%s = %d < max(1, %s = %d)", x.name, x.ld, x.rows_name, x.rows));
        }
    }
    std::string why;
    cublasStatus_t st = check_types(computeType, CUDA_R_32F, Atype, Btype, Ctype, Ctype, &why);
    if (st != CUBLAS_STATUS_SUCCESS) return fail(api, st, why);
    if (!known_gemm_algo(algo)) {
        return fail(api, CUBLAS_STATUS_NOT_SUPPORTED, fmt("algo = %d is not a cublasGemmAlgo_t", int(algo)));
    }
    if (!alpha || !beta) return fail(api, CUBLAS_STATUS_INVALID_VALUE, "alpha or beta is NULL");
    if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;  // quick return

    Problem p;
    p.api = api;
    p.m = m;
    p.n = n;
    p.k = k;
    p.batch = batchCount;
    p.trans_a = ta;
    p.trans_b = tb;
    to_dtype(Atype, &p.type_ab);
    to_dtype(Ctype, &p.type_cd);
    p.a = A;
    p.lda = lda;
    p.stride_a = strideA;
    p.b = B;
    p.ldb = ldb;
    p.stride_b = strideB;
    p.c = C;  // C is input and output
    p.ldc = ldc;
    p.stride_c = strideC;
    p.d = C;
    p.ldd = ldc;
    p.stride_d = strideC;
    // CUBLAS_COMPUTE_32F*: the scalars are floats.
    p.scalars_on_device = h.pointer_mode == CUBLAS_POINTER_MODE_DEVICE;
    if (!p.scalars_on_device) {
        std::memcpy(&p.alpha, alpha, sizeof p.alpha);  // host scalars: read now
        std::memcpy(&p.beta, beta, sizeof p.beta);
    }
    p.alpha_dev = static_cast<const float*>(alpha);
    p.beta_dev = static_cast<const float*>(beta);
    const CUresult r = emu::enqueue_host_op(h.stream, api, [p] { execute(p); });
    if (r != CUDA_SUCCESS) {
        return fail(api, CUBLAS_STATUS_EXECUTION_FAILED,
                    fmt("enqueueing the GEMM on stream %p failed with CUresult %d", static_cast<void*>(h.stream),
                        int(r)));
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

EMU_BLAS_API cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
    const char* api = "cublasCreate_v2";
    if (!handle) return fail(api, CUBLAS_STATUS_INVALID_VALUE, "handle is NULL");
    if (emu::inject_failure(api)) return CUBLAS_STATUS_ALLOC_FAILED;
    const CUresult ctx = emu::context_status();
    if (ctx != CUDA_SUCCESS) {
        return fail(api, CUBLAS_STATUS_NOT_INITIALIZED,
                    fmt("no usable CUDA context on this thread (CUresult %d)", int(ctx)));
    }
    auto* h = new (std::nothrow) cublasContext;
    if (!h) return fail(api, CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
    live_handles().add(h);
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    if (!live_handles().remove(handle)) return no_handle("cublasDestroy_v2", handle);
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
    // Also resets the workspace to the library's default, as cuBLAS does.
    if (!live_handles().with(handle, [&](cublasContext& h) {
            h.stream = reinterpret_cast<CUstream>(streamId);
            h.workspace = nullptr;
            h.workspace_size = 0;
        }))
        return no_handle("cublasSetStream_v2", handle);
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* streamId) {
    if (!streamId) return fail("cublasGetStream_v2", CUBLAS_STATUS_INVALID_VALUE, "streamId is NULL");
    if (!live_handles().with(handle, [&](cublasContext& h) { *streamId = reinterpret_cast<cudaStream_t>(h.stream); }))
        return no_handle("cublasGetStream_v2", handle);
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t workspaceSizeInBytes) {
    // Recorded only: the emulated GEMMs use no workspace.
    if (!live_handles().with(handle, [&](cublasContext& h) {
            h.workspace = workspace;
            h.workspace_size = workspaceSizeInBytes;
        }))
        return no_handle("cublasSetWorkspace_v2", handle);
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) {
        return fail("cublasSetPointerMode_v2", CUBLAS_STATUS_INVALID_VALUE,
                    fmt("mode = %d is not a cublasPointerMode_t", int(mode)));
    }
    if (!live_handles().with(handle, [&](cublasContext& h) { h.pointer_mode = mode; }))
        return no_handle("cublasSetPointerMode_v2", handle);
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t* mode) {
    if (!mode) return fail("cublasGetPointerMode_v2", CUBLAS_STATUS_INVALID_VALUE, "mode is NULL");
    if (!live_handles().with(handle, [&](cublasContext& h) { *mode = cublasPointerMode_t(h.pointer_mode); }))
        return no_handle("cublasGetPointerMode_v2", handle);
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    // Recorded only: the explicit-compute-type GEMMs modelled here ignore it.
    if (!live_handles().with(handle, [&](cublasContext& h) { h.math_mode = mode; }))
        return no_handle("cublasSetMathMode", handle);
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
    if (!mode) return fail("cublasGetMathMode", CUBLAS_STATUS_INVALID_VALUE, "mode is NULL");
    if (!live_handles().with(handle, [&](cublasContext& h) { *mode = cublasMath_t(h.math_mode); }))
        return no_handle("cublasGetMathMode", handle);
    return CUBLAS_STATUS_SUCCESS;
}

EMU_BLAS_API cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                         int lda, const void* B, cudaDataType Btype, int ldb, const void* beta,
                                         void* C, cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                         cublasGemmAlgo_t algo) {
    return gemm("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C,
                Ctype, ldc, 0, 1, computeType, algo);
}

EMU_BLAS_API cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                                       cublasOperation_t transb, int m, int n, int k,
                                                       const void* alpha, const void* A, cudaDataType Atype, int lda,
                                                       long long strideA, const void* B, cudaDataType Btype, int ldb,
                                                       long long strideB, const void* beta, void* C,
                                                       cudaDataType Ctype, int ldc, long long strideC, int batchCount,
                                                       cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return gemm("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype,
                ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType, algo);
}
