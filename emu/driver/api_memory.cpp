// Driver entry points: device and page-locked host memory, copies, memsets.
// Device memory is host memory (256-byte aligned, exact-size allocations so
// AddressSanitizer sees their bounds, NaN-filled when new). Copies follow
// the driver's pageable-memory rules: a host source is read when the call is
// made, a device-to-host copy into pageable memory is complete when the call
// returns; page-locked memory is read and written in stream order instead.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "state.h"

using namespace emu::drv;

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

CUresult allocate(Context& c, size_t bytes, bool async, CUdeviceptr* out) {
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    if (inject(Inject::Alloc, async ? "cuMemAllocAsync" : "cuMemAlloc_v2")) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (bytes > config().memory - c.allocated) return CUDA_ERROR_OUT_OF_MEMORY;
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes) != 0 || p == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
    if (config().poison) std::memset(p, 0xFF, bytes);
    c.allocs[reinterpret_cast<uintptr_t>(p)] = Alloc{bytes, async, false};
    c.allocated += bytes;
    *out = reinterpret_cast<CUdeviceptr>(p);
    emu::count(emu::Counter::Allocs);
    return CUDA_SUCCESS;
}

void release(Context& c, uintptr_t p) {
    auto it = c.allocs.find(p);
    if (it == c.allocs.end()) return;
    c.allocated -= it->second.size;
    c.allocs.erase(it);
    std::free(reinterpret_cast<void*>(p));
}

// The stream a copy goes to and its context, checked.
Stream* stream_for(CUstream hs, Context** ctx, CUresult* err) {
    *ctx = ctx_for_stream(hs, err);
    if (*ctx == nullptr) return nullptr;
    Stream* s = stream_of(hs, *ctx);
    if (s == nullptr) *err = CUDA_ERROR_INVALID_HANDLE;
    return s;
}

bool device_range(Context& c, CUdeviceptr p, size_t n) {
    return find_alloc(c, static_cast<uintptr_t>(p), n) != nullptr;
}

CUresult bad_range(const char* call, const char* which, CUdeviceptr p, size_t n) {
    say("%s: the %s range [%#llx, +%zu) is not inside a live device allocation", call, which,
        static_cast<unsigned long long>(p), n);
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult htod(const char* call, CUdeviceptr dst, const void* src, size_t n, CUstream hs) {
    Context* c = nullptr;
    CUresult err = CUDA_SUCCESS;
    Stream* s = stream_for(hs, &c, &err);
    if (s == nullptr) return err;
    if (n == 0) return CUDA_SUCCESS;
    if (src == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!device_range(*c, dst, n)) return bad_range(call, "destination", dst, n);
    emu::count(emu::Counter::CopiesHtoD);
    emu::count(emu::Counter::BytesHtoD, n);
    auto* d = reinterpret_cast<void*>(dst);
    if (is_pinned(*c, src)) {
        return enqueue(*s, call, [d, src, n] { std::memcpy(d, src, n); });
    }
    if (s->capture != nullptr) {
        invalidate(*s->capture, std::string(call) + " from pageable host memory");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    // Pageable: the source is read now; the caller may reuse it at once.
    auto data = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(src),
                                                       static_cast<const uint8_t*>(src) + n);
    return enqueue(*s, call, [d, data] { std::memcpy(d, data->data(), data->size()); });
}

CUresult dtoh(const char* call, void* dst, CUdeviceptr src, size_t n, CUstream hs) {
    Context* c = nullptr;
    CUresult err = CUDA_SUCCESS;
    Stream* s = stream_for(hs, &c, &err);
    if (s == nullptr) return err;
    if (n == 0) return CUDA_SUCCESS;
    if (dst == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!device_range(*c, src, n)) return bad_range(call, "source", src, n);
    emu::count(emu::Counter::CopiesDtoH);
    emu::count(emu::Counter::BytesDtoH, n);
    const auto* sp = reinterpret_cast<const void*>(src);
    if (is_pinned(*c, dst)) {
        return enqueue(*s, call, [dst, sp, n] { std::memcpy(dst, sp, n); });
    }
    if (s->capture != nullptr) {
        invalidate(*s->capture, std::string(call) + " into pageable host memory");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    // Pageable: complete when the call returns, after the work before it.
    CUresult r = enqueue(*s, call, [dst, sp, n] { std::memcpy(dst, sp, n); });
    if (r != CUDA_SUCCESS) return r;
    drain(*s);
    return c->sticky;
}

}  // namespace

EMU_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
    EMU_API("cuMemAlloc_v2");
    if (dptr == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    if (CUresult r = forbid_in_capture(*c, "cuMemAlloc_v2"); r != CUDA_SUCCESS) return r;
    return allocate(*c, bytes, false, dptr);
}

EMU_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    EMU_API("cuMemFree_v2");
    if (dptr == 0) return CUDA_SUCCESS;
    // The context that owns the allocation (unified addressing).
    Context* owner = current() != nullptr ? current() : &primary(0);
    for (Context* x : active_contexts()) {
        if (x->allocs.count(static_cast<uintptr_t>(dptr)) != 0) owner = x;
    }
    Context& c = *owner;
    if (!c.active) return CUDA_ERROR_INVALID_CONTEXT;
    if (CUresult r = forbid_in_capture(c, "cuMemFree_v2"); r != CUDA_SUCCESS) return r;
    auto it = c.allocs.find(static_cast<uintptr_t>(dptr));
    if (it == c.allocs.end() || it->second.free_pending) {
        say("cuMemFree_v2: %#llx is not a live allocation", static_cast<unsigned long long>(dptr));
        return CUDA_ERROR_INVALID_VALUE;
    }
    emu::count(emu::Counter::Frees);
    // cuMemFree synchronizes: work using the memory finishes first.
    drain_all(c);
    release(c, static_cast<uintptr_t>(dptr));
    return c.sticky;
}

EMU_EXPORT CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream hs) {
    EMU_API("cuMemAllocAsync");
    if (dptr == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!config().pools) return CUDA_ERROR_NOT_SUPPORTED;
    Context* c = nullptr;
    CUresult err = CUDA_SUCCESS;
    Stream* s = stream_for(hs, &c, &err);
    if (s == nullptr) return err;
    if (s->capture != nullptr) {
        // Real drivers record an allocation node; smarttrim's design has no
        // allocation inside a pass, so the emulator does not model one.
        say("cuMemAllocAsync during a stream capture: allocation nodes are not modelled (and "
            "smarttrim allocates nothing inside a pass)");
        invalidate(*s->capture, "cuMemAllocAsync during the capture");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return allocate(*c, bytes, true, dptr);
}

EMU_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hs) {
    EMU_API("cuMemFreeAsync");
    if (!config().pools) return CUDA_ERROR_NOT_SUPPORTED;
    Context* c = nullptr;
    CUresult err = CUDA_SUCCESS;
    Stream* s = stream_for(hs, &c, &err);
    if (s == nullptr) return err;
    if (dptr == 0) return CUDA_SUCCESS;
    auto it = c->allocs.find(static_cast<uintptr_t>(dptr));
    if (it == c->allocs.end() || it->second.free_pending) {
        say("cuMemFreeAsync: %#llx is not a live allocation",
            static_cast<unsigned long long>(dptr));
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (s->capture != nullptr) {
        say("cuMemFreeAsync during a stream capture: free nodes are not modelled");
        invalidate(*s->capture, "cuMemFreeAsync during the capture");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    emu::count(emu::Counter::Frees);
    it->second.free_pending = true;
    const auto p = static_cast<uintptr_t>(dptr);
    Context* ctx = c;
    // Freed in stream order: work enqueued before it (on this stream, or
    // ordered before it by events) still sees the memory; nothing else does.
    return enqueue(*s, "cuMemFreeAsync", [ctx, p] { release(*ctx, p); });
}

EMU_EXPORT CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned int) {
    EMU_API("cuMemHostAlloc");
    if (pp == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    if (CUresult r = forbid_in_capture(*c, "cuMemHostAlloc"); r != CUDA_SUCCESS) return r;
    if (inject(Inject::Alloc, "cuMemHostAlloc")) return CUDA_ERROR_OUT_OF_MEMORY;
    void* p = nullptr;
    if (posix_memalign(&p, 4096, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    c->host_allocs.insert(reinterpret_cast<uintptr_t>(p));
    *pp = p;
    emu::count(emu::Counter::Allocs);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuMemAllocHost_v2(void** pp, size_t bytes) {
    return cuMemHostAlloc(pp, bytes, 0);
}

EMU_EXPORT CUresult cuMemFreeHost(void* p) {
    EMU_API("cuMemFreeHost");
    Context* owner = nullptr;
    for (Context* x : active_contexts()) {
        if (x->host_allocs.count(reinterpret_cast<uintptr_t>(p)) != 0) owner = x;
    }
    if (owner == nullptr) return CUDA_ERROR_INVALID_VALUE;
    Context& c = *owner;
    c.host_allocs.erase(reinterpret_cast<uintptr_t>(p));
    drain_all(c);
    std::free(p);
    emu::count(emu::Counter::Frees);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n,
                                         CUstream hs) {
    EMU_API("cuMemcpyHtoDAsync_v2");
    return htod("cuMemcpyHtoDAsync_v2", dst, src, n, hs);
}

EMU_EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream hs) {
    EMU_API("cuMemcpyDtoHAsync_v2");
    return dtoh("cuMemcpyDtoHAsync_v2", dst, src, n, hs);
}

EMU_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    EMU_API("cuMemcpyHtoD_v2");
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    if (CUresult r = forbid_in_capture(*c, "cuMemcpyHtoD_v2"); r != CUDA_SUCCESS) return r;
    CUresult r = htod("cuMemcpyHtoD_v2", dst, src, n, nullptr);
    if (r != CUDA_SUCCESS) return r;
    drain_all(*c);
    return c->sticky;
}

EMU_EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    EMU_API("cuMemcpyDtoH_v2");
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    if (CUresult r = forbid_in_capture(*c, "cuMemcpyDtoH_v2"); r != CUDA_SUCCESS) return r;
    return dtoh("cuMemcpyDtoH_v2", dst, src, n, nullptr);
}

EMU_EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n,
                                         CUstream hs) {
    EMU_API("cuMemcpyDtoDAsync_v2");
    Context* c = nullptr;
    CUresult err = CUDA_SUCCESS;
    Stream* s = stream_for(hs, &c, &err);
    if (s == nullptr) return err;
    if (n == 0) return CUDA_SUCCESS;
    if (!device_range(*c, src, n)) return bad_range("cuMemcpyDtoDAsync_v2", "source", src, n);
    if (!device_range(*c, dst, n)) {
        return bad_range("cuMemcpyDtoDAsync_v2", "destination", dst, n);
    }
    emu::count(emu::Counter::CopiesDtoD);
    emu::count(emu::Counter::BytesDtoD, n);
    auto* d = reinterpret_cast<void*>(dst);
    const auto* sp = reinterpret_cast<const void*>(src);
    return enqueue(*s, "cuMemcpyDtoDAsync_v2", [d, sp, n] { std::memmove(d, sp, n); });
}

EMU_EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    CUresult r = cuMemcpyDtoDAsync_v2(dst, src, n, nullptr);
    if (r != CUDA_SUCCESS) return r;
    std::lock_guard<std::recursive_mutex> g(lock());
    Context& c = current() != nullptr ? *current() : primary(0);
    drain_all(c);
    return c.sticky;
}

namespace {
CUresult memset_async(const char* call, CUdeviceptr dst, unsigned value, size_t width, size_t n,
                      CUstream hs) {
    Context* c = nullptr;
    CUresult err = CUDA_SUCCESS;
    Stream* s = stream_for(hs, &c, &err);
    if (s == nullptr) return err;
    if (n == 0) return CUDA_SUCCESS;
    const size_t bytes = n * width;
    if (dst % width != 0) return CUDA_ERROR_INVALID_VALUE;
    if (!device_range(*c, dst, bytes)) return bad_range(call, "destination", dst, bytes);
    emu::count(emu::Counter::Memsets);
    auto* d = reinterpret_cast<uint8_t*>(dst);
    return enqueue(*s, call, [d, value, width, n] {
        for (size_t i = 0; i < n; ++i) std::memcpy(d + i * width, &value, width);
    });
}
}  // namespace

EMU_EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream hs) {
    EMU_API("cuMemsetD8Async");
    return memset_async("cuMemsetD8Async", dst, v, 1, n, hs);
}

EMU_EXPORT CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short v, size_t n, CUstream hs) {
    EMU_API("cuMemsetD16Async");
    return memset_async("cuMemsetD16Async", dst, v, 2, n, hs);
}

EMU_EXPORT CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream hs) {
    EMU_API("cuMemsetD32Async");
    return memset_async("cuMemsetD32Async", dst, v, 4, n, hs);
}

EMU_EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    CUresult r = cuMemsetD8Async(dst, v, n, nullptr);
    if (r != CUDA_SUCCESS) return r;
    std::lock_guard<std::recursive_mutex> g(lock());
    Context& c = current() != nullptr ? *current() : primary(0);
    drain_all(c);
    return c.sticky;
}
