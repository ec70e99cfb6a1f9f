// The emulated device's internal interface between its fake driver
// (libcuda.so.1, emu/driver/) and the fake libraries built on it
// (libcublasLt, libcublas: emu/blas/). Test equipment only: nothing here is
// part of smarttrim.
//
// Everything a library enqueues goes through the driver's streams, so it is
// ordered, deferred and captured into CUDA graphs exactly like a kernel
// launch.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#define EMU_API_PUBLIC __attribute__((visibility("default")))

namespace emu {

// Host-involvement counters (per calling host thread and process-wide). The
// driver counts its own calls; libraries bump the ones that are theirs.
enum class Counter : int {
    KernelLaunches = 0,   // cuLaunchKernel calls (eager or captured)
    GraphLaunches,        // cuGraphLaunch calls
    BlasMatmuls,          // cublasLtMatmul / cublasGemm* calls
    BlasHeuristics,       // cublasLtMatmulAlgoGetHeuristic calls
    CopiesHtoD,
    BytesHtoD,
    CopiesDtoH,
    BytesDtoH,
    CopiesDtoD,
    BytesDtoD,
    Memsets,
    Allocs,               // cuMemAlloc_v2 + cuMemAllocAsync
    Frees,                // cuMemFree_v2 + cuMemFreeAsync
    StreamSyncs,          // cuStreamSynchronize
    EventSyncs,           // cuEventSynchronize
    CtxSyncs,             // cuCtxSynchronize
    ModuleLoads,          // cuModuleLoadData
    Unimplemented,        // calls into driver entry points the emulator does not model
    Count_                // number of counters
};

// Adds `n` to counter `c` for the calling thread (and the process total).
EMU_API_PUBLIC void count(Counter c, uint64_t n = 1);

// Enqueues host work `fn` on `stream` (0 is the legacy default stream): it
// runs in stream order, before the call returns in eager mode or when the
// stream is next drained in deferred mode, and is recorded (not run) while
// the stream is being captured into a graph, then run at every replay. `fn`
// must capture by value everything it reads (descriptors, pointers, scalars):
// the caller's memory may be gone by the time it runs. `what` names the work
// in messages. Returns CUDA_SUCCESS, or the error a kernel launch on that
// stream would get (invalid handle, invalidated capture, sticky context
// error).
EMU_API_PUBLIC CUresult enqueue_host_op(CUstream stream, const char* what, std::function<void()> fn);

// Whether [p, p + bytes) lies inside one live device allocation of the
// emulated device.
EMU_API_PUBLIC bool device_range_ok(const void* p, size_t bytes);

// For work running on a stream (inside an enqueued `fn`): reports a fault the
// way a GPU would (the message goes to stderr; the context's error becomes
// sticky, CUDA_ERROR_ILLEGAL_ADDRESS, and every later call on it fails).
EMU_API_PUBLIC void device_fault(const char* what, const std::string& message);

// Fault injection for tests (smarttrim_emu_fail_after("blas", n)): whether
// this library call, the calling thread's n-th, is to fail. Call it once at
// the start of every entry point that can fail, and fail that call with the
// library's own error status when it returns true.
EMU_API_PUBLIC bool inject_failure(const char* what);

// Whether the calling host thread's current context exists and is usable
// (cuInit done, a context current, no sticky error); the driver error
// otherwise.
EMU_API_PUBLIC CUresult context_status();

}  // namespace emu
