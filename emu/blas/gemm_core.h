// The shared GEMM engine of the emulated cuBLAS and cuBLASLt: column-major
// D = act(alpha * op(A) op(B) + beta * C + bias), strided-batched, f16 / bf16
// / f32 storage, f32 accumulation, one rounding to the output type at the
// end. Test equipment only (emu/blas/README.md).
//
// The two libraries validate their own arguments (each with its own API's
// rules and statuses), fill a Problem, copy it into the closure they enqueue
// on the stream, and call execute() from there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace emu_blas {

enum class DType : int { F16, BF16, F32 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
const char* dtype_name(DType t);

enum class Act : int { None, Relu, Gelu };

// One strided-batched GEMM, everything by value (no pointer into the
// caller's descriptors). Matrices are column-major; `ld*` and `stride*` are
// in elements. op(A) is m x k, op(B) k x n, C and D m x n.
struct Problem {
    const char* api = "";  // "cublasLtMatmul", "cublasGemmStridedBatchedEx", ...
    int64_t m = 0, n = 0, k = 0, batch = 1;
    bool trans_a = false, trans_b = false;
    DType type_ab = DType::F16;  // A and B share a type (checked by the callers)
    DType type_cd = DType::F16;  // C and D share a type (checked by the callers)
    const void* a = nullptr;
    int64_t lda = 0, stride_a = 0;
    const void* b = nullptr;
    int64_t ldb = 0, stride_b = 0;
    const void* c = nullptr;
    int64_t ldc = 0, stride_c = 0;
    void* d = nullptr;
    int64_t ldd = 0, stride_d = 0;
    // Scalars (f32: the scale type of every modelled compute type). Host
    // mode: the values, read when the call was made. Device mode: pointers
    // read when the work runs.
    bool scalars_on_device = false;
    float alpha = 1.0f, beta = 0.0f;
    const float* alpha_dev = nullptr;
    const float* beta_dev = nullptr;
    // Epilogue (cuBLASLt): bias of type_cd, m elements per batch.
    Act act = Act::None;
    const void* bias = nullptr;  // null: no bias
    int64_t bias_stride = 0;
    size_t bias_align_required = 0;  // bytes; 0: only element alignment
    // cuBLASLt workspace: the bytes the emulated algorithm "uses" (they are
    // overwritten with 0xFF while the work runs).
    void* workspace = nullptr;
    size_t workspace_used = 0;
};

// Runs the work (inside the closure enqueued on the stream): checks that
// every range it touches lies in one live device allocation and that every
// pointer is aligned for its element type (otherwise emu::device_fault, no
// write), then computes. Never throws.
void execute(const Problem& p);

// Bytes spanned by a column-major rows x cols matrix with leading dimension
// ld (0 if empty).
inline uint64_t matrix_span_bytes(int64_t rows, int64_t cols, int64_t ld, DType t) {
    if (rows <= 0 || cols <= 0) return 0;
    return (uint64_t(cols - 1) * uint64_t(ld) + uint64_t(rows)) * dtype_size(t);
}

// f16 / bf16 <-> f32, round to nearest even, NaN kept NaN (exposed for the
// tests).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t h);
uint16_t float_to_bf16(float f);

// Number of host threads one execute() may use (SMARTTRIM_EMU_BLAS_THREADS,
// default min(2, hardware threads)).
int worker_threads();

// One line on stderr: "smarttrim-emu: <api>: <message>".
void say(const char* api, const std::string& message);

// printf into a std::string.
std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));

// "CUBLAS_STATUS_INVALID_VALUE" for 7, ...
const char* status_name(int status);

}  // namespace emu_blas
