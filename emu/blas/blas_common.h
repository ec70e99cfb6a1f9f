// What the emulated cuBLAS and cuBLASLt share besides the GEMM engine: type
// names, the supported type combinations, the rejection message. Test
// equipment only.
#pragma once

#include "cublas_types.h"
#include "gemm_core.h"

#include <mutex>
#include <string>
#include <unordered_set>

// Every entry point is exported; everything else is hidden
// (-fvisibility=hidden).
#define EMU_BLAS_API extern "C" __attribute__((visibility("default")))

namespace emu_blas {

const char* cuda_type_name(int t);
const char* compute_type_name(int c);
const char* op_name(int op);

// The modelled storage type for a cudaDataType; false if not modelled.
bool to_dtype(int cuda_type, DType* out);

// Checks the (compute type, scale type, A, B, C, D type) combination against
// what cuBLAS supports and the emulator models. SUCCESS, or the status
// (INVALID_VALUE for a value that is not a compute type, NOT_SUPPORTED for a
// combination) with the reason in *why.
cublasStatus_t check_types(int compute, int scale, int ta, int tb, int tc, int td, std::string* why);

// Live objects, so that a destroyed or foreign handle or descriptor is
// reported instead of read.
template <class T>
struct Live {
    std::mutex mu;
    std::unordered_set<const void*> set;
    void add(const T* p) {
        std::lock_guard<std::mutex> g(mu);
        set.insert(p);
    }
    bool remove(const T* p) {
        std::lock_guard<std::mutex> g(mu);
        return set.erase(p) == 1;
    }
    // Copies *p out under the lock (descriptors are copied at call time).
    bool copy(const T* p, T* out) {
        std::lock_guard<std::mutex> g(mu);
        if (!p || !set.count(p)) return false;
        *out = *p;
        return true;
    }
    bool has(const T* p) {
        std::lock_guard<std::mutex> g(mu);
        return p && set.count(p);
    }
    // Runs f(*p) under the lock.
    template <class F>
    bool with(T* p, F f) {
        std::lock_guard<std::mutex> g(mu);
        if (!p || !set.count(p)) return false;
        f(*p);
        return true;
    }
};

// Prints "smarttrim-emu: <api>: <why> -> <status>" and returns `st`.
cublasStatus_t fail(const char* api, cublasStatus_t st, const std::string& why);

}  // namespace emu_blas
