// Driver entry points: modules (the real embedded PTX, checked against the
// host-compiled kernel libraries) and kernel launches (the driver's launch
// limits, the arguments copied at the call, the kernel run in stream order).
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>

#include "state.h"

using namespace emu::drv;
namespace rt = emu::rt;
namespace ptx = emu::ptx;

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

const emu_kernel* find_kernel(const rt::KernelLib& lib, const std::string& name) {
    for (int i = 0; i < lib.module->n_kernels; ++i) {
        if (name == lib.module->kernels[i].name) return &lib.module->kernels[i];
    }
    return nullptr;
}

// The library that provides every entry of the PTX, or null (with why).
const rt::KernelLib* provider(const ptx::Module& m, std::string* why) {
    const auto& libs = kernel_libs();
    if (libs.empty()) {
        *why = "no host-compiled kernel library was found in " + config().kernels_dir;
        return nullptr;
    }
    for (const auto& lib : libs) {
        bool all = true;
        for (const ptx::Entry& e : m.entries) {
            if (find_kernel(*lib, e.name) == nullptr) all = false;
        }
        if (all) return lib.get();
    }
    std::ostringstream o;
    o << "no host-compiled kernel library has all of this PTX's entries (";
    for (size_t i = 0; i < m.entries.size(); ++i) o << (i ? ", " : "") << m.entries[i].name;
    o << "); missing ones, by library:";
    for (const auto& lib : libs) {
        o << " " << lib->module->name << ": [";
        bool first = true;
        for (const ptx::Entry& e : m.entries) {
            if (find_kernel(*lib, e.name) == nullptr) {
                o << (first ? "" : ", ") << e.name;
                first = false;
            }
        }
        o << "]";
    }
    *why = o.str();
    return nullptr;
}

// The PTX parameters of `e` against the C++ signature of its host version.
bool same_params(const ptx::Entry& e, const emu_kernel& k, std::string* why) {
    std::ostringstream o;
    if (static_cast<int>(e.params.size()) != k.n_params) {
        o << e.name << ": the PTX has " << e.params.size() << " parameters, the host-compiled "
          << "kernel " << k.n_params;
        *why = o.str();
        return false;
    }
    for (int i = 0; i < k.n_params; ++i) {
        const ptx::Param& p = e.params[static_cast<size_t>(i)];
        if (p.size != k.param_sizes[i] || p.align != k.param_aligns[i]) {
            o << e.name << " parameter " << i << ": the PTX says " << p.size << " bytes aligned "
              << p.align << ", the host-compiled kernel " << k.param_sizes[i]
              << " bytes aligned " << k.param_aligns[i];
            *why = o.str();
            return false;
        }
    }
    return true;
}

struct LaunchData {
    const rt::KernelLib* lib = nullptr;
    const emu_kernel* kernel = nullptr;
    std::string name;
    rt::Dim3 grid, block;
    std::vector<uint8_t> bytes;
    std::vector<void*> args;
    bool inject_fault = false;
};

}  // namespace

EMU_EXPORT CUresult cuModuleLoadData(CUmodule* out, const void* image) {
    EMU_API("cuModuleLoadData");
    if (out == nullptr || image == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    if (CUresult r = forbid_in_capture(*c, "cuModuleLoadData"); r != CUDA_SUCCESS) return r;
    emu::count(emu::Counter::ModuleLoads);
    const auto* bytes = static_cast<const unsigned char*>(image);
    const unsigned char fatbin[4] = {0x50, 0xED, 0x55, 0xBA};
    if (std::memcmp(bytes, "\x7f" "ELF", 4) == 0 || std::memcmp(bytes, fatbin, 4) == 0) {
        say("cuModuleLoadData: cubin and fatbin images are not modelled; pass PTX text");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    auto m = std::make_unique<Module>();
    std::string why;
    if (!ptx::parse(static_cast<const char*>(image), &m->ptx, &why)) {
        say("cuModuleLoadData: cannot read the PTX: %s", why.c_str());
        return CUDA_ERROR_INVALID_PTX;
    }
    // The real driver (13.0) JIT-compiles PTX ISA up to 9.0.
    if (m->ptx.version_major > 9 || (m->ptx.version_major == 9 && m->ptx.version_minor > 0)) {
        say("cuModuleLoadData: PTX ISA %d.%d is newer than this driver (13.0) supports (9.0)",
            m->ptx.version_major, m->ptx.version_minor);
        return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    const std::string& t = m->ptx.target;
    if (t.rfind("sm_", 0) != 0) {
        say("cuModuleLoadData: unknown .target %s", t.c_str());
        return CUDA_ERROR_INVALID_PTX;
    }
    const int arch = std::atoi(t.c_str() + 3);
    const bool specific = !t.empty() && t.back() == 'a';
    if (arch > 90 || (specific && arch != 90)) {
        say("cuModuleLoadData: PTX for %s cannot run on compute capability 9.0", t.c_str());
        return CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    const rt::KernelLib* lib = provider(m->ptx, &why);
    if (lib == nullptr) {
        say("cuModuleLoadData: %s", why.c_str());
        return CUDA_ERROR_NOT_FOUND;
    }
    m->ctx = c;
    m->lib = lib;
    for (const ptx::Entry& e : m->ptx.entries) {
        const emu_kernel* k = find_kernel(*lib, e.name);
        if (!same_params(e, *k, &why)) {
            say("cuModuleLoadData: parameters differ between the PTX and the host-compiled "
                "kernel: %s",
                why.c_str());
            return CUDA_ERROR_INVALID_IMAGE;
        }
        auto f = std::make_unique<Function>();
        f->module = m.get();
        f->entry = &e;
        f->kernel = k;
        functions().insert(f.get());
        m->functions.emplace(e.name, std::move(f));
    }
    Module* raw = m.release();
    c->modules.insert(raw);
    *out = reinterpret_cast<CUmodule>(raw);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuModuleLoadDataEx(CUmodule* out, const void* image, unsigned int, CUjit_option*,
                                       void**) {
    return cuModuleLoadData(out, image);
}

EMU_EXPORT CUresult cuModuleUnload(CUmodule hm) {
    EMU_API("cuModuleUnload");
    Module* m = module_of(hm);
    if (m == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    for (auto& [n, f] : m->functions) functions().erase(f.get());
    m->ctx->modules.erase(m);
    delete m;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuModuleGetFunction(CUfunction* out, CUmodule hm, const char* name) {
    EMU_API("cuModuleGetFunction");
    if (out == nullptr || name == nullptr) return CUDA_ERROR_INVALID_VALUE;
    Module* m = module_of(hm);
    if (m == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    auto it = m->functions.find(name);
    if (it == m->functions.end()) return CUDA_ERROR_NOT_FOUND;
    *out = reinterpret_cast<CUfunction>(it->second.get());
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuFuncGetAttribute(int* value, CUfunction_attribute attrib, CUfunction hf) {
    EMU_API("cuFuncGetAttribute");
    if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
    Function* f = function_of(hf);
    if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK:
            *value = f->entry->maxntid != 0 ? static_cast<int>(f->entry->maxntid) : 1024;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES:
            *value = static_cast<int>(f->entry->static_shared);
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES:
        case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES:
            *value = 0;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_PTX_VERSION:
            *value = f->module->ptx.version_major * 10 + f->module->ptx.version_minor;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_BINARY_VERSION:
            *value = 90;
            return CUDA_SUCCESS;
        default:
            say("cuFuncGetAttribute: attribute %d is not modelled", static_cast<int>(attrib));
            emu::count(emu::Counter::Unimplemented);
            return CUDA_ERROR_INVALID_VALUE;
    }
}

EMU_EXPORT CUresult cuLaunchKernel(CUfunction hf, unsigned int gx, unsigned int gy,
                                   unsigned int gz, unsigned int bx, unsigned int by,
                                   unsigned int bz, unsigned int shared_bytes, CUstream hs,
                                   void** params, void** extra) {
    EMU_API("cuLaunchKernel");
    Function* f = function_of(hf);
    if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err = CUDA_SUCCESS;
    Context* c = ctx_for_stream(hs, &err);
    if (c == nullptr) return err;
    Stream* s = stream_of(hs, c);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    const char* name = f->kernel->name;
    if (inject(Inject::Launch, name)) return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    auto reject = [&](CUresult code, const std::string& why) {
        say("cuLaunchKernel %s grid (%u,%u,%u) block (%u,%u,%u): %s", name, gx, gy, gz, bx, by,
            bz, why.c_str());
        return code;
    };
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) {
        return reject(CUDA_ERROR_INVALID_VALUE, "a grid or block dimension is 0");
    }
    if (gx > 2147483647u || gy > 65535u || gz > 65535u) {
        return reject(CUDA_ERROR_INVALID_VALUE,
                      "grid dimensions exceed the limits (2^31-1, 65535, 65535)");
    }
    if (bx > 1024u || by > 1024u || bz > 64u) {
        return reject(CUDA_ERROR_INVALID_VALUE,
                      "block dimensions exceed the limits (1024, 1024, 64)");
    }
    const uint64_t threads = static_cast<uint64_t>(bx) * by * bz;
    if (threads > 1024) {
        return reject(CUDA_ERROR_INVALID_VALUE, "more than 1024 threads per block");
    }
    if (f->entry->maxntid != 0 && threads > f->entry->maxntid) {
        return reject(CUDA_ERROR_INVALID_VALUE,
                      "more threads per block than the kernel's __launch_bounds__ (.maxntid " +
                          std::to_string(f->entry->maxntid) + ")");
    }
    if (f->entry->static_shared + shared_bytes > 49152) {
        return reject(CUDA_ERROR_INVALID_VALUE,
                      "static + dynamic shared memory exceeds 48 KiB (" +
                          std::to_string(f->entry->static_shared) + " + " +
                          std::to_string(shared_bytes) + " bytes)");
    }
    if (shared_bytes != 0) {
        return reject(CUDA_ERROR_NOT_SUPPORTED,
                      "dynamic shared memory is not modelled (no kernel of smarttrim uses it)");
    }
    if (extra != nullptr) {
        return reject(CUDA_ERROR_NOT_SUPPORTED, "the `extra` argument form is not modelled");
    }
    const int n = f->kernel->n_params;
    if (n > 0 && params == nullptr) {
        return reject(CUDA_ERROR_INVALID_VALUE, "kernelParams is null");
    }
    emu::count(emu::Counter::KernelLaunches);
    // The argument bytes are copied now: the caller's array dies with the call.
    auto d = std::make_shared<LaunchData>();
    d->lib = f->module->lib;
    d->kernel = f->kernel;
    d->name = name;
    d->grid = {gx, gy, gz};
    d->block = {bx, by, bz};
    std::vector<size_t> offsets(static_cast<size_t>(n));
    size_t total = 0;
    for (int i = 0; i < n; ++i) {
        const size_t a = f->kernel->param_aligns[i];
        total = (total + a - 1) / a * a;
        offsets[static_cast<size_t>(i)] = total;
        total += f->kernel->param_sizes[i];
    }
    d->bytes.resize(total + 16);
    // Offsets assume a 16-byte aligned base.
    const size_t shift =
        (16 - reinterpret_cast<uintptr_t>(d->bytes.data()) % 16) % 16;
    for (int i = 0; i < n; ++i) {
        if (params[i] == nullptr) {
            return reject(CUDA_ERROR_INVALID_VALUE,
                          "kernelParams[" + std::to_string(i) + "] is null");
        }
        std::memcpy(d->bytes.data() + shift + offsets[static_cast<size_t>(i)], params[i],
                    f->kernel->param_sizes[i]);
    }
    for (int i = 0; i < n; ++i) {
        d->args.push_back(d->bytes.data() + shift + offsets[static_cast<size_t>(i)]);
    }
    d->inject_fault = inject(Inject::KernelFault, name);
    return enqueue(*s, name, [c, d] {
        if (d->inject_fault) {
            fault(*c, CUDA_ERROR_ILLEGAL_ADDRESS,
                  "kernel " + d->name + ": injected fault (smarttrim_emu_fail_after)");
            return;
        }
        const rt::LaunchResult r =
            rt::run_kernel(*d->lib, *d->kernel, d->grid, d->block, d->args.data());
        if (r.code != 0) {
            fault(*c, static_cast<CUresult>(r.code),
                  "kernel " + d->name + " grid (" + std::to_string(d->grid.x) + "," +
                      std::to_string(d->grid.y) + "," + std::to_string(d->grid.z) +
                      ") block (" + std::to_string(d->block.x) + "," +
                      std::to_string(d->block.y) + "," + std::to_string(d->block.z) +
                      "): " + r.message);
        }
    });
}
