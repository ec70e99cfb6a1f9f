// Shared by the emulated cuBLAS and cuBLASLt (see blas_common.h).
#include "blas_common.h"

namespace emu_blas {

const char* cuda_type_name(int t) {
    switch (t) {
        case CUDA_R_16F: return "CUDA_R_16F";
        case CUDA_C_16F: return "CUDA_C_16F";
        case CUDA_R_16BF: return "CUDA_R_16BF";
        case CUDA_C_16BF: return "CUDA_C_16BF";
        case CUDA_R_32F: return "CUDA_R_32F";
        case CUDA_C_32F: return "CUDA_C_32F";
        case CUDA_R_64F: return "CUDA_R_64F";
        case CUDA_C_64F: return "CUDA_C_64F";
        case CUDA_R_4I: return "CUDA_R_4I";
        case CUDA_C_4I: return "CUDA_C_4I";
        case CUDA_R_4U: return "CUDA_R_4U";
        case CUDA_C_4U: return "CUDA_C_4U";
        case CUDA_R_8I: return "CUDA_R_8I";
        case CUDA_C_8I: return "CUDA_C_8I";
        case CUDA_R_8U: return "CUDA_R_8U";
        case CUDA_C_8U: return "CUDA_C_8U";
        case CUDA_R_16I: return "CUDA_R_16I";
        case CUDA_C_16I: return "CUDA_C_16I";
        case CUDA_R_16U: return "CUDA_R_16U";
        case CUDA_C_16U: return "CUDA_C_16U";
        case CUDA_R_32I: return "CUDA_R_32I";
        case CUDA_C_32I: return "CUDA_C_32I";
        case CUDA_R_32U: return "CUDA_R_32U";
        case CUDA_C_32U: return "CUDA_C_32U";
        case CUDA_R_64I: return "CUDA_R_64I";
        case CUDA_C_64I: return "CUDA_C_64I";
        case CUDA_R_64U: return "CUDA_R_64U";
        case CUDA_C_64U: return "CUDA_C_64U";
        case CUDA_R_8F_E4M3: return "CUDA_R_8F_E4M3";
        case CUDA_R_8F_E5M2: return "CUDA_R_8F_E5M2";
        case CUDA_R_8F_UE8M0: return "CUDA_R_8F_UE8M0";
        case CUDA_R_6F_E2M3: return "CUDA_R_6F_E2M3";
        case CUDA_R_6F_E3M2: return "CUDA_R_6F_E3M2";
        case CUDA_R_4F_E2M1: return "CUDA_R_4F_E2M1";
    }
    return nullptr;
}

const char* compute_type_name(int c) {
    switch (c) {
        case CUBLAS_COMPUTE_16F: return "CUBLAS_COMPUTE_16F";
        case CUBLAS_COMPUTE_16F_PEDANTIC: return "CUBLAS_COMPUTE_16F_PEDANTIC";
        case CUBLAS_COMPUTE_32F: return "CUBLAS_COMPUTE_32F";
        case CUBLAS_COMPUTE_32F_PEDANTIC: return "CUBLAS_COMPUTE_32F_PEDANTIC";
        case CUBLAS_COMPUTE_32F_FAST_16F: return "CUBLAS_COMPUTE_32F_FAST_16F";
        case CUBLAS_COMPUTE_32F_FAST_16BF: return "CUBLAS_COMPUTE_32F_FAST_16BF";
        case CUBLAS_COMPUTE_32F_FAST_TF32: return "CUBLAS_COMPUTE_32F_FAST_TF32";
        case CUBLAS_COMPUTE_32F_EMULATED_16BFX9: return "CUBLAS_COMPUTE_32F_EMULATED_16BFX9";
        case CUBLAS_COMPUTE_64F: return "CUBLAS_COMPUTE_64F";
        case CUBLAS_COMPUTE_64F_PEDANTIC: return "CUBLAS_COMPUTE_64F_PEDANTIC";
        case CUBLAS_COMPUTE_64F_EMULATED_FIXEDPOINT: return "CUBLAS_COMPUTE_64F_EMULATED_FIXEDPOINT";
        case CUBLAS_COMPUTE_32I: return "CUBLAS_COMPUTE_32I";
        case CUBLAS_COMPUTE_32I_PEDANTIC: return "CUBLAS_COMPUTE_32I_PEDANTIC";
    }
    return nullptr;
}

const char* op_name(int op) {
    switch (op) {
        case CUBLAS_OP_N: return "CUBLAS_OP_N";
        case CUBLAS_OP_T: return "CUBLAS_OP_T";
        case CUBLAS_OP_C: return "CUBLAS_OP_C";
        case CUBLAS_OP_CONJG: return "CUBLAS_OP_CONJG";
    }
    return "an unknown cublasOperation_t";
}

bool to_dtype(int t, DType* out) {
    switch (t) {
        case CUDA_R_16F: *out = DType::F16; return true;
        case CUDA_R_16BF: *out = DType::BF16; return true;
        case CUDA_R_32F: *out = DType::F32; return true;
    }
    return false;
}

namespace {
std::string tname(int t) {
    const char* n = cuda_type_name(t);
    return n ? n : fmt("cudaDataType %d (unknown)", t);
}
}  // namespace

cublasStatus_t check_types(int compute, int scale, int ta, int tb, int tc, int td, std::string* why) {
    const char* cn = compute_type_name(compute);
    if (!cn) {
        *why = fmt("computeType %d is not a cublasComputeType_t", compute);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    const bool f32_family = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC;
    const bool f32_fast = compute == CUBLAS_COMPUTE_32F_FAST_16F || compute == CUBLAS_COMPUTE_32F_FAST_16BF ||
                          compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    if (!f32_family && !f32_fast) {
        *why = fmt("%s is not modelled by the emulator (it models CUBLAS_COMPUTE_32F, _PEDANTIC and _FAST_16F/_16BF/_TF32)",
                   cn);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (scale != CUDA_R_32F) {
        *why = fmt("scale type %s with %s: cuBLAS supports only CUDA_R_32F scalars for it", tname(scale).c_str(), cn);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    const std::string combo = fmt("A %s, B %s, C %s, D %s with %s", tname(ta).c_str(), tname(tb).c_str(),
                                  tname(tc).c_str(), tname(td).c_str(), cn);
    if (ta != tb || tc != td) {
        *why = combo + ": A and B, and C and D, must have the same type";
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    bool ok;
    if (f32_fast) {
        ok = ta == CUDA_R_32F && tc == CUDA_R_32F;
    } else {
        ok = (ta == CUDA_R_16F || ta == CUDA_R_16BF || ta == CUDA_R_32F) && (tc == ta || tc == CUDA_R_32F);
    }
    if (!ok) {
        *why = combo +
               ": not a combination the emulator models (A/B 16F, 16BF or 32F with C/D of the same type or 32F; "
               "the _FAST_ compute types only with 32F everywhere)";
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t fail(const char* api, cublasStatus_t st, const std::string& why) {
    say(api, why + " -> " + status_name(st));
    return st;
}

}  // namespace emu_blas
