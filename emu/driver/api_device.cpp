// Driver entry points: initialisation, the device, the primary context,
// error strings.
#include <cstdio>
#include <cstring>

#include "state.h"

using namespace emu::drv;

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr const char* kName = "smarttrim emulated device (CPU)";

bool valid_device(CUdevice d) { return d >= 0 && d < config().devices; }

// Destroys everything device `dev`'s primary context owns (its last
// reference went).
void reset_primary(CUdevice dev) {
    Context& c = primary(dev);
    drain_all(c);
    for (Capture* cap : std::set<Capture*>(captures())) {
        if (cap->origin != nullptr && cap->origin->ctx == &c) {
            captures().erase(cap);
            delete cap;
        }
    }
    for (auto& [p, a] : c.allocs) std::free(reinterpret_cast<void*>(p));
    c.allocs.clear();
    c.allocated = 0;
    for (uintptr_t h : c.host_allocs) std::free(reinterpret_cast<void*>(h));
    c.host_allocs.clear();
    for (auto& [raw, s] : c.streams) s->destroyed = true;
    c.streams.clear();
    for (Event* e : c.events) delete e;
    c.events.clear();
    for (Module* m : c.modules) {
        for (auto& [n, f] : m->functions) functions().erase(f.get());
        delete m;
    }
    c.modules.clear();
    c.null_stream.reset();
    c.sticky = CUDA_SUCCESS;
    c.active = false;
}

struct AttrValue {
    CUdevice_attribute attr;
    int value;
};

int attribute(CUdevice_attribute a, bool* known) {
    static const AttrValue table[] = {
        {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1024},
        {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, 1024},
        {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, 1024},
        {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, 64},
        {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, 2147483647},
        {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, 65535},
        {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, 65535},
        {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, 49152},
        {CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, 65536},
        {CU_DEVICE_ATTRIBUTE_WARP_SIZE, 32},
        {CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, 65536},
        {CU_DEVICE_ATTRIBUTE_CLOCK_RATE, 1980000},
        {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 132},
        {CU_DEVICE_ATTRIBUTE_INTEGRATED, 0},
        {CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, 1},
        {CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, 0},
        {CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, 1},
        {CU_DEVICE_ATTRIBUTE_ECC_ENABLED, 1},
        {CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 0},
        {CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, 0},
        {CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, 0},
        {CU_DEVICE_ATTRIBUTE_TCC_DRIVER, 0},
        {CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, 2619000},
        {CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, 6144},
        {CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, 52428800},
        {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 2048},
        {CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, 3},
        {CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 1},
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 9},
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0},
        {CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED, 1},
        {CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED, 1},
        {CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED, 1},
        {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, 233472},
        {CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR, 65536},
        {CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, 1},
        {CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD, 0},
        {CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, 1},
        {CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, 1},
        {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 232448},
        {CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR, 32},
        {CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE, 0},
        {CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK, 1024},
    };
    *known = true;
    if (a == CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED) return config().pools ? 1 : 0;
    for (const AttrValue& e : table) {
        if (e.attr == a) return e.value;
    }
    *known = false;
    return 0;
}

}  // namespace

EMU_EXPORT CUresult cuInit(unsigned int flags) {
    ApiScope scope("cuInit", false);
    if (scope.status() != CUDA_SUCCESS) return scope.status();
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    set_initialized();
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDriverGetVersion(int* version) {
    ApiScope scope("cuDriverGetVersion", false);
    if (scope.status() != CUDA_SUCCESS) return scope.status();
    if (version == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *version = 13000;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGetCount(int* count) {
    EMU_API("cuDeviceGetCount");
    if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *count = config().devices;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    EMU_API("cuDeviceGet");
    if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    EMU_API("cuDeviceGetName");
    if (name == nullptr || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    std::snprintf(name, static_cast<size_t>(len), "%s", kName);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    EMU_API("cuDeviceTotalMem_v2");
    if (bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = config().memory;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attrib, CUdevice dev) {
    EMU_API("cuDeviceGetAttribute");
    if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    bool known = false;
    const int v = attribute(attrib, &known);
    if (!known) {
        say("cuDeviceGetAttribute: attribute %d is not modelled", static_cast<int>(attrib));
        emu::count(emu::Counter::Unimplemented);
        return CUDA_ERROR_INVALID_VALUE;
    }
    *value = v;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceComputeCapability(int* major, int* minor, CUdevice dev) {
    EMU_API("cuDeviceComputeCapability");
    if (major == nullptr || minor == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *major = 9;
    *minor = 0;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
    EMU_API("cuDevicePrimaryCtxRetain");
    if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    Context& c = primary(dev);
    if (c.refcount == 0) c.active = true;
    ++c.refcount;
    *pctx = reinterpret_cast<CUcontext>(&c);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    EMU_API("cuDevicePrimaryCtxRelease_v2");
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    Context& c = primary(dev);
    if (c.refcount == 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (--c.refcount == 0) reset_primary(dev);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
    EMU_API("cuDevicePrimaryCtxGetState");
    if (flags == nullptr || active == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *flags = 0;
    *active = primary(dev).active ? 1 : 0;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    EMU_API("cuDevicePrimaryCtxReset_v2");
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    Context& c = primary(dev);
    const int refs = c.refcount;
    reset_primary(dev);
    if (refs > 0) c.active = true;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxGetCurrent(CUcontext* pctx) {
    EMU_API("cuCtxGetCurrent");
    if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *pctx = reinterpret_cast<CUcontext>(current());
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    EMU_API("cuCtxSetCurrent");
    if (ctx != nullptr) {
        bool known = false;
        for (int d = 0; d < kMaxDevices; ++d) known = known || reinterpret_cast<Context*>(ctx) == &primary(d);
        if (!known) return CUDA_ERROR_INVALID_CONTEXT;
    }
    set_current(reinterpret_cast<Context*>(ctx));
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxGetDevice(CUdevice* device) {
    EMU_API("cuCtxGetDevice");
    if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr && err == CUDA_ERROR_INVALID_CONTEXT) return err;
    *device = c != nullptr ? c->device : current()->device;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxSynchronize(void) {
    EMU_API("cuCtxSynchronize");
    emu::count(emu::Counter::CtxSyncs);
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    if (CUresult r = forbid_in_capture(*c, "cuCtxSynchronize"); r != CUDA_SUCCESS) return r;
    drain_all(*c);
    return c->sticky;
}

EMU_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    EMU_API("cuMemGetInfo_v2");
    if (free_bytes == nullptr || total == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    *total = config().memory;
    *free_bytes = config().memory - c->allocated;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode* mode) {
    EMU_API("cuThreadExchangeStreamCaptureMode");
    if (mode == nullptr) return CUDA_ERROR_INVALID_VALUE;
    const CUstreamCaptureMode old = thread_capture_mode();
    thread_capture_mode() = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

namespace {
struct ErrorText {
    CUresult code;
    const char* name;
    const char* text;
};

const ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX",
     "a PTX JIT compilation failed"},
    {CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
     "the provided PTX was compiled with an unsupported toolchain"},
    {CUDA_ERROR_NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU",
     "no kernel image is available for execution on the device"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
     "too many resources requested for launch"},
    {CUDA_ERROR_MISALIGNED_ADDRESS, "CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "illegal state"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_STREAM_CAPTURE_MERGE, "CUDA_ERROR_STREAM_CAPTURE_MERGE",
     "operation would result in a merge of separate capture sequences"},
    {CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED",
     "capture was not ended in the same stream as it began"},
    {CUDA_ERROR_STREAM_CAPTURE_UNJOINED, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
     "capturing stream has unjoined work"},
    {CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
     "dependency created on uncaptured work in another stream"},
    {CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {CUDA_ERROR_CAPTURED_EVENT, "CUDA_ERROR_CAPTURED_EVENT",
     "operation not permitted on an event last recorded in a capturing stream"},
    {CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
     "attempt to terminate a thread-local capture sequence from another thread"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};
}  // namespace

EMU_EXPORT CUresult cuGetErrorString(CUresult error, const char** str) {
    if (str == nullptr) return CUDA_ERROR_INVALID_VALUE;
    for (const ErrorText& e : kErrors) {
        if (e.code == error) {
            *str = e.text;
            return CUDA_SUCCESS;
        }
    }
    *str = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

EMU_EXPORT CUresult cuGetErrorName(CUresult error, const char** str) {
    if (str == nullptr) return CUDA_ERROR_INVALID_VALUE;
    for (const ErrorText& e : kErrors) {
        if (e.code == error) {
            *str = e.name;
            return CUDA_SUCCESS;
        }
    }
    *str = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}
