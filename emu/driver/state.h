// The fake driver's objects: the device and its primary context, streams as
// ordered queues of operations, events, CUDA-graph capture, device memory,
// loaded modules; the configuration read from the environment; counters and
// fault injection. Every entry point takes the one driver lock (ApiScope),
// so the objects need no locks of their own.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <emu/api.h>

#include "../rt/exec.h"
#include "ptx.h"

namespace emu::drv {

// At most this many emulated devices (SMARTTRIM_EMU_DEVICES).
constexpr int kMaxDevices = 4;

// ---- configuration (environment, read once) ----
struct Config {
    bool deferred = true;      // SMARTTRIM_EMU_STREAMS=deferred|eager
    bool pools = true;         // SMARTTRIM_EMU_POOLS=1|0: cuMemAllocAsync supported
    int devices = 1;           // SMARTTRIM_EMU_DEVICES: 0 ("no device") .. kMaxDevices
    uint64_t memory = 16ull << 30;  // SMARTTRIM_EMU_MEMORY_MB
    bool poison = true;        // SMARTTRIM_EMU_POISON=0: new allocations not NaN-filled
    bool abort_on_fault = false;  // SMARTTRIM_EMU_ABORT=1
    bool trace = false;        // SMARTTRIM_EMU_TRACE=1: one stderr line per API call
    std::string kernels_dir;   // SMARTTRIM_EMU_KERNELS, else <libdir>/kernels
};
const Config& config();

// Prints "smarttrim-emu: ..." to stderr.
void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

struct Context;
struct Stream;
struct Capture;
struct Graph;

// One operation on a stream: runs when the stream is drained up to it, after
// its prerequisites (other streams drained up to a point).
struct Prereq {
    std::shared_ptr<Stream> stream;
    uint64_t seq = 0;
};

struct Op {
    uint64_t seq = 0;
    std::string what;
    std::function<void()> fn;
    std::vector<Prereq> prereqs;
};

// A recorded operation of a captured graph.
struct Node {
    std::string what;
    std::function<void()> fn;
};

struct Stream {
    Context* ctx = nullptr;
    unsigned flags = 0;
    bool legacy = false;  // the NULL stream
    bool destroyed = false;
    std::deque<Op> queue;
    uint64_t enq_seq = 0;
    uint64_t done_seq = 0;
    Capture* capture = nullptr;
    // While capturing into a capture it joined (not the origin): the index of
    // its last node not yet joined back into the origin stream, or -1.
    long unjoined_node = -1;
};

struct Capture {
    Stream* origin = nullptr;
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    std::thread::id thread;
    bool invalid = false;
    std::string why_invalid;
    std::vector<Node> nodes;
    std::set<Stream*> joined;
    // The graph the capture builds (cuStreamGetCaptureInfo hands it out, so
    // user objects can be retained on it); its nodes are filled at the end.
    Graph* graph = nullptr;
};

struct Event {
    Context* ctx = nullptr;
    unsigned flags = 0;
    // The latest record outside a capture: its stream and position.
    std::shared_ptr<Stream> rec_stream;
    uint64_t rec_seq = 0;
    uint64_t records = 0;    // records made
    uint64_t completed = 0;  // records executed
    double time_ms = 0;      // host time of the latest executed record
    // The latest record inside a capture (then the event is a capture edge).
    Capture* captured = nullptr;
    Stream* captured_stream = nullptr;
    size_t captured_pos = 0;  // nodes in the capture at record time
};

struct Alloc {
    size_t size = 0;
    bool async = false;      // from cuMemAllocAsync
    bool free_pending = false;  // a cuMemFreeAsync is enqueued
};

struct Module;

struct Function {
    Module* module = nullptr;
    const ptx::Entry* entry = nullptr;
    const emu_kernel* kernel = nullptr;
};

struct Module {
    Context* ctx = nullptr;
    ptx::Module ptx;
    const rt::KernelLib* lib = nullptr;
    std::map<std::string, std::unique_ptr<Function>> functions;
};

// A CUDA user object: a reference count and a destructor the driver calls
// when the count reaches zero (references held by graphs and the caller).
struct UserObject {
    void* ptr = nullptr;
    CUhostFn destroy = nullptr;
    unsigned refs = 0;
};

// Drops `n` references of `o` (at zero its destructor runs soon after, on
// another thread).
void release(UserObject* o, unsigned n);
// Whether the calling thread is running a user object's destructor.
bool& in_user_object_destructor();
std::set<UserObject*>& user_objects();

struct Graph {
    std::vector<Node> nodes;
    std::vector<UserObject*> objects;  // one entry per reference held
};

struct GraphExec {
    std::vector<Node> nodes;
    std::vector<UserObject*> objects;  // one entry per reference held
};

struct Context {
    int device = 0;    // the device ordinal it belongs to
    int refcount = 0;  // primary-context retains
    bool active = false;
    CUresult sticky = CUDA_SUCCESS;
    std::shared_ptr<Stream> null_stream;
    std::map<Stream*, std::shared_ptr<Stream>> streams;
    std::set<Event*> events;
    std::set<Module*> modules;
    std::map<uintptr_t, Alloc> allocs;
    uint64_t allocated = 0;
    std::set<uintptr_t> host_allocs;  // page-locked host memory (cuMemHostAlloc)
};

// ---- the driver lock and per-call bookkeeping ----
std::recursive_mutex& lock();
bool initialized();
void set_initialized();

// The primary context of device `dev` (0 .. kMaxDevices - 1).
Context& primary(int dev = 0);
// Every primary context that is active.
std::vector<Context*> active_contexts();
// The context whose stream work the calling thread is running (set while a
// queued operation runs), else the current one, else device 0's.
Context& executing_context();
// The calling thread's current context, or null.
Context* current();
void set_current(Context* c);

// Validates handles; null when not live.
Stream* stream_of(CUstream s, Context* ctx);  // 0 -> the context's NULL stream
Event* event_of(CUevent e);
Module* module_of(CUmodule m);
Function* function_of(CUfunction f);
Graph* graph_of(CUgraph g);
GraphExec* graph_exec_of(CUgraphExec g);
std::set<Graph*>& graphs();
std::set<GraphExec*>& graph_execs();
std::set<Function*>& functions();

// ---- streams ----
// Appends `op` to `s` (or records it into s's capture). Returns an error
// without enqueuing when the capture is invalidated or a legacy-stream
// dependency would cross a capture.
CUresult enqueue(Stream& s, std::string what, std::function<void()> fn,
                 std::vector<Prereq> prereqs = {});
// Runs s's queue through operation `upto` (all of it by default), after
// whatever it depends on.
void drain(Stream& s, uint64_t upto = UINT64_MAX);
void drain_all(Context& ctx);
std::shared_ptr<Stream> shared(Stream& s);

// Graph capture rules. A capture is "relevant" to the calling thread when it
// is the thread's own (global or thread-local mode) or another thread's in
// global mode. For a potentially unsafe call (a synchronize, a synchronous
// allocation, a module load, ...) made while any relevant capture is
// active: invalidates them and returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED.
CUresult forbid_in_capture(Context& ctx, const char* call);
// Marks `c` invalid (its stream then refuses work until cuStreamEndCapture).
void invalidate(Capture& c, const std::string& why);
std::set<Capture*>& captures();
// Per-thread capture mode (cuThreadExchangeStreamCaptureMode).
CUstreamCaptureMode& thread_capture_mode();

// Makes `code` the context's sticky error (a device fault).
void fault(Context& ctx, CUresult code, const std::string& message);

// ---- memory ----
// The live allocation containing [p, p + bytes) (bytes may be 0: p may be
// one past the end), or null.
Alloc* find_alloc(Context& ctx, uintptr_t p, size_t bytes, uintptr_t* base = nullptr);
bool is_pinned(Context& ctx, const void* p);

// ---- kernel libraries ----
const std::vector<std::unique_ptr<rt::KernelLib>>& kernel_libs();

// ---- counters and fault injection ----
enum class Inject : int { Driver = 0, Alloc, Launch, Blas, KernelFault, Count_ };
// Whether the calling thread's next call of `kind` is to fail (counts it).
bool inject(Inject kind, const char* what);

// Takes the driver lock for an API call, counts it for injection and the
// trace, and checks cuInit was called (unless `needs_init` is false).
class ApiScope {
  public:
    ApiScope(const char* name, bool needs_init = true);
    // CUDA_SUCCESS, or the error the call must return before doing anything.
    CUresult status() const { return status_; }

  private:
    std::lock_guard<std::recursive_mutex> guard_;
    CUresult status_ = CUDA_SUCCESS;
};

// The context a stream-taking call works in: the stream's, or the current
// one for the NULL stream. Sets *err when there is none or it has faulted.
Context* ctx_for_stream(CUstream s, CUresult* err);
// The current context, checked (no context: CUDA_ERROR_INVALID_CONTEXT;
// faulted: its sticky error).
Context* checked_current(CUresult* err);

double now_ms();

}  // namespace emu::drv

#define EMU_API(name)                               \
    ::emu::drv::ApiScope api_scope_(name);          \
    if (api_scope_.status() != CUDA_SUCCESS) return api_scope_.status()
