#include "state.h"

#include <dirent.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace emu::drv {

// ---- configuration ----

namespace {
bool env_flag(const char* name, bool dflt) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == 0) return dflt;
    return !(std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0 ||
             std::strcmp(v, "off") == 0);
}

std::string own_dir() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&config), &info) == 0 || info.dli_fname == nullptr) {
        return ".";
    }
    std::string p = info.dli_fname;
    const size_t slash = p.rfind('/');
    return slash == std::string::npos ? "." : p.substr(0, slash);
}
}  // namespace

const Config& config() {
    static const Config c = [] {
        Config c;
        if (const char* m = std::getenv("SMARTTRIM_EMU_STREAMS")) {
            if (std::strcmp(m, "eager") == 0) {
                c.deferred = false;
            } else if (std::strcmp(m, "deferred") != 0) {
                std::fprintf(stderr,
                             "smarttrim-emu: SMARTTRIM_EMU_STREAMS=%s is not deferred or eager; "
                             "using deferred\n",
                             m);
            }
        }
        c.pools = env_flag("SMARTTRIM_EMU_POOLS", true);
        c.poison = env_flag("SMARTTRIM_EMU_POISON", true);
        c.abort_on_fault = env_flag("SMARTTRIM_EMU_ABORT", false);
        c.trace = env_flag("SMARTTRIM_EMU_TRACE", false);
        if (const char* d = std::getenv("SMARTTRIM_EMU_DEVICES")) {
            c.devices = std::min(std::max(std::atoi(d), 0), kMaxDevices);
        }
        if (const char* m = std::getenv("SMARTTRIM_EMU_MEMORY_MB")) {
            const unsigned long long mb = std::strtoull(m, nullptr, 10);
            if (mb > 0) c.memory = mb << 20;
        }
        const char* k = std::getenv("SMARTTRIM_EMU_KERNELS");
        c.kernels_dir = k != nullptr && *k != 0 ? k : own_dir() + "/kernels";
        return c;
    }();
    return c;
}

void say(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "smarttrim-emu: %s\n", buf);
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// ---- the lock, contexts, handles ----

std::recursive_mutex& lock() {
    static auto* m = new std::recursive_mutex();
    return *m;
}

namespace {
std::atomic<bool> g_initialized{false};
thread_local Context* t_current = nullptr;
}  // namespace

bool initialized() { return g_initialized.load(); }
void set_initialized() { g_initialized.store(true); }

Context& primary(int dev) {
    static auto* c = [] {
        auto* a = new std::array<Context, kMaxDevices>();
        for (int i = 0; i < kMaxDevices; ++i) (*a)[i].device = i;
        return a;
    }();
    return (*c)[static_cast<size_t>(std::min(std::max(dev, 0), kMaxDevices - 1))];
}

std::vector<Context*> active_contexts() {
    std::vector<Context*> out;
    for (int i = 0; i < kMaxDevices; ++i) {
        if (primary(i).active) out.push_back(&primary(i));
    }
    return out;
}

namespace {
thread_local Context* t_executing = nullptr;
}

Context& executing_context() {
    if (t_executing != nullptr) return *t_executing;
    if (current() != nullptr) return *current();
    return primary(0);
}

Context* current() { return t_current; }
void set_current(Context* c) { t_current = c; }

std::shared_ptr<Stream> shared(Stream& s) {
    if (s.legacy) return s.ctx->null_stream;
    auto it = s.ctx->streams.find(&s);
    if (it != s.ctx->streams.end()) return it->second;
    return {};
}

Stream* stream_of(CUstream s, Context* ctx) {
    if (s == nullptr || s == CU_STREAM_LEGACY) {
        if (ctx == nullptr || !ctx->active) return nullptr;
        if (!ctx->null_stream) {
            ctx->null_stream = std::make_shared<Stream>();
            ctx->null_stream->ctx = ctx;
            ctx->null_stream->legacy = true;
        }
        return ctx->null_stream.get();
    }
    for (Context* p : active_contexts()) {
        auto it = p->streams.find(reinterpret_cast<Stream*>(s));
        if (it != p->streams.end()) return it->second.get();
    }
    return nullptr;
}

Event* event_of(CUevent e) {
    auto* ev = reinterpret_cast<Event*>(e);
    for (Context* p : active_contexts()) {
        if (p->events.count(ev) != 0) return ev;
    }
    return nullptr;
}

Module* module_of(CUmodule m) {
    auto* mod = reinterpret_cast<Module*>(m);
    for (Context* p : active_contexts()) {
        if (p->modules.count(mod) != 0) return mod;
    }
    return nullptr;
}

std::set<Function*>& functions() {
    static auto* s = new std::set<Function*>();
    return *s;
}
std::set<Graph*>& graphs() {
    static auto* s = new std::set<Graph*>();
    return *s;
}
std::set<GraphExec*>& graph_execs() {
    static auto* s = new std::set<GraphExec*>();
    return *s;
}

Function* function_of(CUfunction f) {
    auto* fn = reinterpret_cast<Function*>(f);
    return functions().count(fn) != 0 ? fn : nullptr;
}
Graph* graph_of(CUgraph g) {
    auto* gr = reinterpret_cast<Graph*>(g);
    return graphs().count(gr) != 0 ? gr : nullptr;
}
GraphExec* graph_exec_of(CUgraphExec g) {
    auto* ge = reinterpret_cast<GraphExec*>(g);
    return graph_execs().count(ge) != 0 ? ge : nullptr;
}

// ---- user objects ----

bool& in_user_object_destructor() {
    static thread_local bool in = false;
    return in;
}

std::set<UserObject*>& user_objects() {
    static auto* s = new std::set<UserObject*>();
    return *s;
}

void release(UserObject* o, unsigned n) {
    if (o == nullptr || user_objects().count(o) == 0) return;
    o->refs = n >= o->refs ? 0 : o->refs - n;
    if (o->refs == 0) {
        user_objects().erase(o);
        // As the driver does: the destructor runs later, on an internal
        // thread, not inside the releasing call (code that expects it to have
        // run when the graph destroy returns is wrong on a GPU too), and it
        // may not call CUDA (such a call fails, see ApiScope).
        CUhostFn destroy = o->destroy;
        void* ptr = o->ptr;
        delete o;
        if (destroy != nullptr) {
            std::thread([destroy, ptr] {
                std::this_thread::sleep_for(std::chrono::milliseconds(2));
                in_user_object_destructor() = true;
                destroy(ptr);
            }).detach();
        }
    }
}

// ---- faults ----

void fault(Context& ctx, CUresult code, const std::string& message) {
    say("device fault (%d): %s", static_cast<int>(code), message.c_str());
    if (config().abort_on_fault) std::abort();
    if (ctx.sticky == CUDA_SUCCESS) ctx.sticky = code;
}

// ---- streams ----

std::set<Capture*>& captures() {
    static auto* s = new std::set<Capture*>();
    return *s;
}

CUstreamCaptureMode& thread_capture_mode() {
    thread_local CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_GLOBAL;
    return m;
}

void invalidate(Capture& c, const std::string& why) {
    if (!c.invalid) {
        c.invalid = true;
        c.why_invalid = why;
        say("stream capture invalidated: %s", why.c_str());
    }
}

CUresult forbid_in_capture(Context&, const char* call) {
    if (thread_capture_mode() == CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_SUCCESS;
    const std::thread::id me = std::this_thread::get_id();
    bool hit = false;
    for (Capture* c : captures()) {
        const bool mine = c->thread == me && c->mode != CU_STREAM_CAPTURE_MODE_RELAXED;
        const bool global = c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
        if (mine || global) {
            invalidate(*c, std::string(call) + " was called during the capture (a potentially "
                                               "unsafe call under its capture mode)");
            hit = true;
        }
    }
    return hit ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

CUresult enqueue(Stream& s, std::string what, std::function<void()> fn,
                 std::vector<Prereq> prereqs) {
    Context& ctx = *s.ctx;
    if (s.capture != nullptr) {
        Capture& c = *s.capture;
        if (c.invalid) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        c.nodes.push_back(Node{std::move(what), std::move(fn)});
        if (&s != c.origin) s.unjoined_node = static_cast<long>(c.nodes.size()) - 1;
        return CUDA_SUCCESS;
    }
    // Legacy NULL-stream semantics: it waits for every blocking stream, and
    // blocking streams wait for it.
    if (s.legacy) {
        for (auto& [raw, t] : ctx.streams) {
            if ((t->flags & CU_STREAM_NON_BLOCKING) != 0) continue;
            if (t->capture != nullptr) {
                invalidate(*t->capture, "work on the legacy NULL stream would synchronize with "
                                        "a capturing stream");
                return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
            }
            if (t->enq_seq > t->done_seq) prereqs.push_back(Prereq{t, t->enq_seq});
        }
    } else if ((s.flags & CU_STREAM_NON_BLOCKING) == 0 && ctx.null_stream &&
               ctx.null_stream->enq_seq > ctx.null_stream->done_seq) {
        prereqs.push_back(Prereq{ctx.null_stream, ctx.null_stream->enq_seq});
    }
    Op op;
    op.seq = ++s.enq_seq;
    op.what = std::move(what);
    op.fn = std::move(fn);
    op.prereqs = std::move(prereqs);
    s.queue.push_back(std::move(op));
    if (!config().deferred) drain(s);
    return CUDA_SUCCESS;
}

void drain(Stream& s, uint64_t upto) {
    // Holds the stream while its queue runs (an op may destroy handles).
    std::shared_ptr<Stream> keep = shared(s);
    while (s.done_seq < upto && !s.queue.empty()) {
        Op op = std::move(s.queue.front());
        s.queue.pop_front();
        for (const Prereq& p : op.prereqs) {
            if (p.stream) drain(*p.stream, p.seq);
        }
        if (s.ctx->sticky == CUDA_SUCCESS && op.fn) {
            Context* outer = t_executing;
            t_executing = s.ctx;
            op.fn();
            t_executing = outer;
        }
        s.done_seq = op.seq;
    }
}

void drain_all(Context& ctx) {
    bool more = true;
    while (more) {
        more = false;
        if (ctx.null_stream && !ctx.null_stream->queue.empty()) {
            drain(*ctx.null_stream);
            more = true;
        }
        std::vector<std::shared_ptr<Stream>> all;
        for (auto& [raw, t] : ctx.streams) all.push_back(t);
        for (auto& t : all) {
            if (!t->queue.empty()) {
                drain(*t);
                more = true;
            }
        }
    }
}

// ---- memory ----

Alloc* find_alloc(Context& ctx, uintptr_t p, size_t bytes, uintptr_t* base) {
    auto it = ctx.allocs.upper_bound(p);
    if (it == ctx.allocs.begin()) return nullptr;
    --it;
    const uintptr_t lo = it->first;
    const size_t size = it->second.size;
    if (p < lo || p > lo + size || bytes > lo + size - p) return nullptr;
    if (base != nullptr) *base = lo;
    return &it->second;
}

bool is_pinned(Context& ctx, const void* p) {
    return ctx.host_allocs.count(reinterpret_cast<uintptr_t>(p)) != 0;
}

// ---- kernel libraries ----

const std::vector<std::unique_ptr<rt::KernelLib>>& kernel_libs() {
    static auto* libs = [] {
        auto* v = new std::vector<std::unique_ptr<rt::KernelLib>>();
        const std::string dir = config().kernels_dir;
        DIR* d = opendir(dir.c_str());
        if (d == nullptr) {
            say("no host-compiled kernels: cannot open %s (build them with emu/build.sh)",
                dir.c_str());
            return v;
        }
        std::vector<std::string> names;
        while (dirent* e = readdir(d)) {
            const std::string n = e->d_name;
            if (n.rfind("libemu_", 0) == 0 && n.size() > 3 && n.substr(n.size() - 3) == ".so") {
                names.push_back(n);
            }
        }
        closedir(d);
        std::sort(names.begin(), names.end());
        for (const std::string& n : names) {
            auto lib = std::make_unique<rt::KernelLib>();
            lib->path = dir + "/" + n;
            lib->handle = dlopen(lib->path.c_str(), RTLD_NOW | RTLD_LOCAL);
            if (lib->handle == nullptr) {
                say("cannot load kernel library %s: %s", lib->path.c_str(), dlerror());
                continue;
            }
            using Fn = const emu_module* (*)();
            auto fn = reinterpret_cast<Fn>(dlsym(lib->handle, "smarttrim_emu_module"));
            if (fn == nullptr) {
                say("%s has no smarttrim_emu_module table", lib->path.c_str());
                continue;
            }
            lib->module = fn();
            v->push_back(std::move(lib));
        }
        return v;
    }();
    return *libs;
}

// ---- counters and fault injection ----

namespace {
constexpr int kCounters = static_cast<int>(Counter::Count_);
constexpr int kInjects = static_cast<int>(Inject::Count_);
std::array<std::atomic<uint64_t>, kCounters> g_counts{};
thread_local std::array<uint64_t, kCounters> t_counts{};
thread_local std::array<uint64_t, kInjects> t_fail_at{};  // 0 = disarmed
thread_local std::array<uint64_t, kInjects> t_calls{};
thread_local uint64_t t_injected = 0;

const char* const kCounterNames[kCounters] = {
    "kernel_launches", "graph_launches", "blas_matmuls", "blas_heuristics", "copies_htod",
    "bytes_htod",      "copies_dtoh",    "bytes_dtoh",   "copies_dtod",     "bytes_dtod",
    "memsets",         "allocs",         "frees",        "stream_syncs",    "event_syncs",
    "ctx_syncs",       "module_loads",   "unimplemented"};

const char* const kInjectNames[kInjects] = {"driver", "alloc", "launch", "blas", "kernel_fault"};
}  // namespace

bool inject(Inject kind, const char* what) {
    const int k = static_cast<int>(kind);
    ++t_calls[k];
    if (t_fail_at[k] != 0 && t_calls[k] == t_fail_at[k]) {
        t_fail_at[k] = 0;
        ++t_injected;
        say("injected failure: %s call #%llu (%s)", kInjectNames[k],
            static_cast<unsigned long long>(t_calls[k]), what);
        return true;
    }
    return false;
}

// ---- the per-call scope ----

ApiScope::ApiScope(const char* name, bool needs_init) : guard_(lock()) {
    if (config().trace) say("%s", name);
    if (in_user_object_destructor()) {
        say("%s called from a user object's destructor (CUDA forbids it)", name);
        status_ = CUDA_ERROR_NOT_PERMITTED;
        return;
    }
    if (needs_init && !initialized()) {
        status_ = CUDA_ERROR_NOT_INITIALIZED;
        return;
    }
    if (inject(Inject::Driver, name)) status_ = CUDA_ERROR_UNKNOWN;
}

Context* checked_current(CUresult* err) {
    Context* c = current();
    if (c == nullptr || !c->active) {
        *err = CUDA_ERROR_INVALID_CONTEXT;
        return nullptr;
    }
    if (c->sticky != CUDA_SUCCESS) {
        *err = c->sticky;
        return nullptr;
    }
    *err = CUDA_SUCCESS;
    return c;
}

Context* ctx_for_stream(CUstream s, CUresult* err) {
    if (s == nullptr || s == CU_STREAM_LEGACY) return checked_current(err);
    Stream* st = stream_of(s, nullptr);
    if (st == nullptr) {
        *err = CUDA_ERROR_INVALID_HANDLE;
        return nullptr;
    }
    if (st->ctx->sticky != CUDA_SUCCESS) {
        *err = st->ctx->sticky;
        return nullptr;
    }
    *err = CUDA_SUCCESS;
    return st->ctx;
}

}  // namespace emu::drv

// ---- the internal interface for the fake libraries (emu/include/emu/api.h) ----

namespace emu {

void count(Counter c, uint64_t n) {
    const int i = static_cast<int>(c);
    drv::g_counts[i].fetch_add(n, std::memory_order_relaxed);
    drv::t_counts[i] += n;
}

CUresult enqueue_host_op(CUstream stream, const char* what, std::function<void()> fn) {
    std::lock_guard<std::recursive_mutex> g(drv::lock());
    CUresult err = CUDA_SUCCESS;
    drv::Context* ctx = drv::ctx_for_stream(stream, &err);
    if (ctx == nullptr) return err;
    drv::Stream* s = drv::stream_of(stream, ctx);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    return drv::enqueue(*s, what, std::move(fn));
}

bool device_range_ok(const void* p, size_t bytes) {
    std::lock_guard<std::recursive_mutex> g(drv::lock());
    drv::Context& ctx = drv::executing_context();
    return ctx.active && drv::find_alloc(ctx, reinterpret_cast<uintptr_t>(p), bytes) != nullptr;
}

void device_fault(const char* what, const std::string& message) {
    std::lock_guard<std::recursive_mutex> g(drv::lock());
    drv::fault(drv::executing_context(), CUDA_ERROR_ILLEGAL_ADDRESS, std::string(what) + ": " + message);
}

CUresult context_status() {
    std::lock_guard<std::recursive_mutex> g(drv::lock());
    if (!drv::initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    CUresult err = CUDA_SUCCESS;
    drv::checked_current(&err);
    return err;
}

bool inject_failure(const char* what) { return drv::inject(drv::Inject::Blas, what); }

}  // namespace emu

// ---- the emulator's own exports, for tests (dlsym on libcuda.so) ----

extern "C" {

__attribute__((visibility("default"))) int smarttrim_emu_counter_count(void) {
    return emu::drv::kCounters;
}

__attribute__((visibility("default"))) const char* smarttrim_emu_counter_name(int i) {
    return i >= 0 && i < emu::drv::kCounters ? emu::drv::kCounterNames[i] : nullptr;
}

// Copies up to n counters into out: scope 0 the calling thread's, 1 the
// process's. Returns how many there are.
__attribute__((visibility("default"))) int smarttrim_emu_counters(uint64_t* out, int n,
                                                                   int scope) {
    for (int i = 0; i < n && i < emu::drv::kCounters; ++i) {
        out[i] = scope == 0 ? emu::drv::t_counts[i] : emu::drv::g_counts[i].load();
    }
    return emu::drv::kCounters;
}

// Makes the calling thread's n-th next call of `kind` fail (n = 0 disarms):
// "driver" (any driver entry point: CUDA_ERROR_UNKNOWN), "alloc"
// (CUDA_ERROR_OUT_OF_MEMORY), "launch" (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES),
// "blas" (the cuBLAS(Lt) call fails), "kernel_fault" (the kernel faults
// when it runs: sticky CUDA_ERROR_ILLEGAL_ADDRESS). Returns 0, or -1 for an
// unknown kind.
__attribute__((visibility("default"))) int smarttrim_emu_fail_after(const char* kind,
                                                                     uint64_t n) {
    for (int k = 0; k < emu::drv::kInjects; ++k) {
        if (std::strcmp(kind, emu::drv::kInjectNames[k]) == 0) {
            emu::drv::t_calls[k] = 0;
            emu::drv::t_fail_at[k] = n;
            return 0;
        }
    }
    return -1;
}

// Calls of `kind` the calling thread made since its last
// smarttrim_emu_fail_after(kind, ...) (what an injection sweep iterates over);
// -1 for an unknown kind.
__attribute__((visibility("default"))) int64_t smarttrim_emu_calls(const char* kind) {
    for (int k = 0; k < emu::drv::kInjects; ++k) {
        if (std::strcmp(kind, emu::drv::kInjectNames[k]) == 0) {
            return static_cast<int64_t>(emu::drv::t_calls[k]);
        }
    }
    return -1;
}

// Failures injected on the calling thread so far.
__attribute__((visibility("default"))) uint64_t smarttrim_emu_injected(void) {
    return emu::drv::t_injected;
}

// A one-line description of the emulator's configuration.
__attribute__((visibility("default"))) const char* smarttrim_emu_describe(void) {
    static std::string s;
    const emu::drv::Config& c = emu::drv::config();
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "smarttrim emulated device (CPU): streams %s, memory pools %s, %d worker "
                  "thread(s), %s build, kernels from %s",
                  c.deferred ? "deferred" : "eager", c.pools ? "on" : "off",
                  emu::rt::worker_count(),
#if defined(__SANITIZE_ADDRESS__)
                  "AddressSanitizer",
#else
                  "plain",
#endif
                  c.kernels_dir.c_str());
    s = buf;
    return s.c_str();
}

}  // extern "C"

// Called by the generated stubs (emu/gen_stubs.py).
extern "C" __attribute__((visibility("default"))) int smarttrim_emu_unimplemented(
    const char* name) {
    emu::drv::say("%s is not modelled by the emulated device (CUDA_ERROR_NOT_SUPPORTED)", name);
    emu::count(emu::Counter::Unimplemented);
    return CUDA_ERROR_NOT_SUPPORTED;
}
