// A stub of the emulated driver's internal interface (emu/include/emu/api.h),
// built as a libcuda.so.1 for testing the emulated cuBLAS / cuBLASLt alone:
// work runs at enqueue (or, when deferred, at blas_stub_drain), counters are
// a global array, every range is a live allocation unless the test turns
// range checking on. Test equipment only.
#include "blas_stub_api.h"

#include <emu/api.h>

#include <atomic>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#define STUB_API __attribute__((visibility("default")))

namespace {
std::atomic<uint64_t> g_counts[int(emu::Counter::Count_)];
std::mutex g_mu;
bool g_deferred = false;
std::deque<std::function<void()>> g_queue;
uint64_t g_enqueued = 0;
void* g_last_stream = nullptr;
std::string g_last_what;
int g_enqueue_error = 0;
int g_context_status = 0;
bool g_check_ranges = false;
std::vector<std::pair<uintptr_t, size_t>> g_ranges;
uint64_t g_faults = 0;
std::string g_last_fault;
}  // namespace

namespace emu {

STUB_API void count(Counter c, uint64_t n) {
    const int i = int(c);
    if (i >= 0 && i < int(Counter::Count_)) g_counts[i] += n;
}

STUB_API CUresult enqueue_host_op(CUstream stream, const char* what, std::function<void()> fn) {
    {
        std::lock_guard<std::mutex> g(g_mu);
        if (g_enqueue_error) return CUresult(g_enqueue_error);
        ++g_enqueued;
        g_last_stream = stream;
        g_last_what = what ? what : "";
        if (g_deferred) {
            g_queue.push_back(std::move(fn));
            return CUDA_SUCCESS;
        }
    }
    fn();
    return CUDA_SUCCESS;
}

STUB_API bool device_range_ok(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_check_ranges) return true;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (auto [base, size] : g_ranges)
        if (a >= base && bytes <= size && a - base <= size - bytes) return true;
    return false;
}

STUB_API void device_fault(const char* what, const std::string& message) {
    std::fprintf(stderr, "smarttrim-emu (stub driver): device fault in %s: %s\n", what, message.c_str());
    std::lock_guard<std::mutex> g(g_mu);
    ++g_faults;
    g_last_fault = message;
}

STUB_API CUresult context_status() { return CUresult(g_context_status); }

// No fault injection in the stub (the real driver's is exercised by the GPU tests).
STUB_API bool inject_failure(const char*) { return false; }

}  // namespace emu

extern "C" {
STUB_API uint64_t blas_stub_counter(int c) { return c >= 0 && c < int(emu::Counter::Count_) ? g_counts[c].load() : 0; }
STUB_API uint64_t blas_stub_enqueued() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_enqueued;
}
STUB_API void* blas_stub_last_stream() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_last_stream;
}
STUB_API const char* blas_stub_last_what() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_last_what.c_str();
}
STUB_API void blas_stub_set_deferred(int on) {
    std::lock_guard<std::mutex> g(g_mu);
    g_deferred = on != 0;
}
STUB_API int blas_stub_drain() {
    std::deque<std::function<void()>> q;
    {
        std::lock_guard<std::mutex> g(g_mu);
        q.swap(g_queue);
    }
    for (auto& f : q) f();
    return int(q.size());
}
STUB_API void blas_stub_set_enqueue_error(int r) {
    std::lock_guard<std::mutex> g(g_mu);
    g_enqueue_error = r;
}
STUB_API void blas_stub_set_context_status(int r) { g_context_status = r; }
STUB_API void blas_stub_check_ranges(int on) {
    std::lock_guard<std::mutex> g(g_mu);
    g_check_ranges = on != 0;
}
STUB_API void blas_stub_add_range(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(g_mu);
    g_ranges.emplace_back(reinterpret_cast<uintptr_t>(p), bytes);
}
STUB_API void blas_stub_clear_ranges() {
    std::lock_guard<std::mutex> g(g_mu);
    g_ranges.clear();
}
STUB_API uint64_t blas_stub_faults() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_faults;
}
STUB_API const char* blas_stub_last_fault() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_last_fault.c_str();
}
}
