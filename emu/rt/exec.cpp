// Block execution: one fiber per GPU thread, switching at every barrier and
// warp collective; see exec.h and emu/README.md.
#include "exec.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fiber.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

namespace emu::rt {
namespace {

constexpr int kWarp = 32;

struct Copy {
    uint8_t* dst;
    uint8_t data[16];
};

enum class St : uint8_t { Runnable, Barrier, Warp, Done };

struct Fiber {
    emu_dims dims{};
    void* sp = nullptr;
    char* stack_lo = nullptr;
    St st = St::Runnable;
    unsigned tid = 0;
    unsigned warp = 0;
    unsigned lane = 0;
    const char* wait_file = nullptr;
    int wait_line = 0;
    std::vector<Copy> pending;              // cp.async issued since the last commit
    std::vector<std::vector<Copy>> groups;  // committed groups, oldest first
#if EMU_ASAN
    void* fake_stack = nullptr;
#endif
};

struct Warp {
    uint32_t present = 0;  // lanes that exist (a partial last warp has fewer)
    uint32_t exited = 0;
    uint32_t arrived = 0;  // lanes waiting at the pending collective
    int kind = 0;
    uint32_t mask = 0;
    int width = 32;
    const char* file = nullptr;
    int line = 0;
    int arg[kWarp]{};
    uint32_t in[kWarp][EMU_LANE_WORDS]{};
    uint32_t out[kWarp][EMU_LANE_WORDS]{};
};

struct SharedWindow {
    uint8_t* lo = nullptr;
    size_t size = 0;
};

[[noreturn]] void fail_code(int code, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

struct Worker;
thread_local Worker* tw = nullptr;

// The order fibers start in and are woken in (barriers, collectives).
enum class Order { Forward, Reverse, Random };

struct ScheduleCfg {
    Order order = Order::Forward;
    uint64_t seed = 1;
};

const ScheduleCfg& schedule_cfg() {
    static const ScheduleCfg cfg = [] {
        ScheduleCfg c;
        const char* s = std::getenv("SMARTTRIM_EMU_SCHEDULE");
        if (s == nullptr || std::strcmp(s, "forward") == 0) return c;
        if (std::strcmp(s, "reverse") == 0) {
            c.order = Order::Reverse;
        } else if (std::strncmp(s, "random", 6) == 0) {
            c.order = Order::Random;
            if (s[6] == ':') c.seed = std::strtoull(s + 7, nullptr, 10);
        } else {
            std::fprintf(stderr,
                         "smarttrim-emu: SMARTTRIM_EMU_SCHEDULE=%s is not forward, reverse or "
                         "random[:SEED]; using forward\n",
                         s);
        }
        return c;
    }();
    return cfg;
}

struct Worker {
    StackPool stacks{default_stack_size()};
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<unsigned> order;
    std::vector<unsigned> scratch;
    std::mt19937_64 rng{schedule_cfg().seed};
    std::unordered_map<const KernelLib*, SharedWindow> windows;
    void* sched_sp = nullptr;
    Fiber* cur = nullptr;
#if EMU_ASAN
    void* sched_fake = nullptr;
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
    // The block being run.
    const emu_kernel* kernel = nullptr;
    void* const* args = nullptr;
    SharedWindow win;
    unsigned n = 0;
    int bar_arrived = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    int exited = 0;
    bool failed = false;
    int fail_code = 0;
    std::string fail_msg;

    // Runnable fibers: those without cp.async copies in flight first (see
    // next_ready), each queue in wake-up order.
    std::vector<unsigned> ready[2];
    size_t ready_head[2] = {0, 0};

    SharedWindow window(const KernelLib& lib);
    bool run_block(const emu_kernel& k, void* const* a, Dim3 grid, Dim3 block, Dim3 idx,
                   SharedWindow w);
    // Marks fibers runnable, in the schedule's order.
    void wake(Fiber& f);
    void wake_all(const std::vector<unsigned>& tids);
    Fiber* next_ready();
    // Switches from `from` (null: the scheduler) to `to` (null: the
    // scheduler); `dying`: `from` never runs again.
    void transfer(Fiber* from, Fiber* to, bool dying);
    // The calling fiber waits (its state already set): runs the next ready
    // fiber, or returns to the scheduler when none is.
    void block(Fiber& f);
    [[noreturn]] void finish(Fiber& f);
};

Worker& worker() {
    if (tw == nullptr) tw = new Worker();  // lives as long as its OS thread
    return *tw;
}

Fiber& self() {
    Worker* w = tw;
    if (w == nullptr || w->cur == nullptr) {
        std::fprintf(stderr, "smarttrim-emu: a GPU built-in was called outside a kernel\n");
        std::abort();
    }
    return *w->cur;
}

struct PhdrQuery {
    const void* addr;
    SharedWindow win;
    bool found_module = false;
};

int phdr_cb(dl_phdr_info* info, size_t size, void* data) {
    auto* q = static_cast<PhdrQuery*>(data);
    bool mine = false;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
        const auto a = reinterpret_cast<uintptr_t>(q->addr);
        if (a >= lo && a < lo + ph.p_memsz) mine = true;
    }
    if (!mine) return 0;
    q->found_module = true;
    if (size < offsetof(dl_phdr_info, dlpi_tls_data) + sizeof(void*)) return 1;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type == PT_TLS) {
            q->win.lo = static_cast<uint8_t*>(info->dlpi_tls_data);
            q->win.size = ph.p_memsz;
        }
    }
    return 1;
}

SharedWindow Worker::window(const KernelLib& lib) {
    auto it = windows.find(&lib);
    if (it != windows.end()) return it->second;
    // Touch the library's TLS so this thread's block of it exists, then ask
    // the dynamic linker where it is.
    uint8_t* anchor = static_cast<uint8_t*>(lib.module->tls_anchor());
    PhdrQuery q{lib.module, {}, false};
    dl_iterate_phdr(phdr_cb, &q);
    if (q.win.lo == nullptr || anchor < q.win.lo || anchor >= q.win.lo + q.win.size) {
        std::fprintf(stderr,
                     "smarttrim-emu: cannot locate the shared-memory (TLS) block of %s on this "
                     "thread (found module: %d)\n",
                     lib.path.c_str(), q.found_module ? 1 : 0);
        std::abort();
    }
    windows.emplace(&lib, q.win);
    return q.win;
}

void fiber_main(void* p) {
    Worker& w = *tw;
    Fiber& f = *static_cast<Fiber*>(p);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    w.kernel->invoke(w.args);
    // The thread returned from the kernel: it leaves the block.
    Warp& wp = w.warps[f.warp];
    const uint32_t bit = 1u << f.lane;
    wp.exited |= bit;
    f.st = St::Done;
    ++w.exited;
    if (wp.arrived != 0 && (wp.mask & bit) != 0) {
        fail_code(719, wp.file, wp.line,
                  "lane %u of warp %u returned while lanes 0x%08x wait at this warp collective, "
                  "whose mask 0x%08x needs it",
                  f.lane, f.warp, wp.arrived, wp.mask);
    }
    if (w.bar_arrived > 0 && w.bar_arrived + w.exited == static_cast<int>(w.n)) {
        fail_code(719, w.bar_file, w.bar_line,
                  "__syncthreads is never reached by %d thread(s) of the block that returned "
                  "(the last: thread %u) while %d wait there",
                  w.exited, f.tid, w.bar_arrived);
    }
    w.finish(f);
}

void Worker::wake(Fiber& f) {
    f.st = St::Runnable;
    // Threads with cp.async copies in flight run only when no other thread
    // can: a thread that reads another's copy without the issuer's wait and
    // a barrier between them then reads it before the copy lands (the
    // hardware promises nothing earlier), whatever the order otherwise.
    const bool in_flight = !f.pending.empty() || !f.groups.empty();
    ready[in_flight ? 1 : 0].push_back(f.tid);
}

void Worker::wake_all(const std::vector<unsigned>& tids) {
    const ScheduleCfg& cfg = schedule_cfg();
    if (cfg.order == Order::Forward) {
        for (unsigned t : tids) wake(fibers[t]);
        return;
    }
    order = tids;
    if (cfg.order == Order::Reverse) {
        std::reverse(order.begin(), order.end());
    } else {
        std::shuffle(order.begin(), order.end(), rng);
    }
    for (unsigned t : order) wake(fibers[t]);
}

Fiber* Worker::next_ready() {
    for (int q = 0; q < 2; ++q) {
        if (ready_head[q] < ready[q].size()) {
            Fiber* f = &fibers[ready[q][ready_head[q]++]];
            if (ready_head[q] == ready[q].size()) {
                ready[q].clear();
                ready_head[q] = 0;
            } else if (ready_head[q] > 4096 && 2 * ready_head[q] > ready[q].size()) {
                ready[q].erase(ready[q].begin(),
                               ready[q].begin() + static_cast<std::ptrdiff_t>(ready_head[q]));
                ready_head[q] = 0;
            }
            return f;
        }
    }
    return nullptr;
}

void Worker::transfer(Fiber* from, Fiber* to, bool dying) {
    void** save = from != nullptr ? &from->sp : &sched_sp;
    void* target = to != nullptr ? to->sp : sched_sp;
#if EMU_ASAN
    void** fake = dying ? nullptr : (from != nullptr ? &from->fake_stack : &sched_fake);
    if (to != nullptr) {
        __sanitizer_start_switch_fiber(fake, to->stack_lo, stacks.stack_size());
    } else {
        __sanitizer_start_switch_fiber(fake, sched_bottom, sched_size);
    }
#else
    (void)dying;
#endif
    cur = to;
    emu_ctx_switch(save, target);
    // Resumed: whoever switched here set `cur` to us.
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(from != nullptr ? from->fake_stack : sched_fake, nullptr,
                                    nullptr);
#endif
}

void Worker::block(Fiber& f) {
    Fiber* next = next_ready();
    if (next == &f) return;  // woken again before it switched away
    transfer(&f, next, false);
}

void Worker::finish(Fiber& f) {
    transfer(&f, next_ready(), true);
    __builtin_trap();  // never resumed
}

bool Worker::run_block(const emu_kernel& k, void* const* a, Dim3 grid, Dim3 block, Dim3 idx,
                       SharedWindow w) {
    kernel = &k;
    args = a;
    win = w;
    n = static_cast<unsigned>(block.count());
    bar_arrived = 0;
    bar_file = nullptr;
    bar_line = 0;
    exited = 0;
    failed = false;
    fail_code = 0;
    fail_msg.clear();
    // Shared memory is undefined at block start: NaN bytes in every array.
    std::memset(win.lo, 0xFF, win.size);
#if EMU_ASAN
    if (sched_bottom == nullptr) {
        // The scheduler runs on this OS thread's own stack.
        pthread_attr_t attr;
        void* addr = nullptr;
        size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &addr, &size);
            pthread_attr_destroy(&attr);
        }
        sched_bottom = addr;
        sched_size = size;
    }
#endif

    if (fibers.size() < n) fibers.resize(n);
    const unsigned nwarps = (n + kWarp - 1) / kWarp;
    if (warps.size() < nwarps) warps.resize(nwarps);
    for (unsigned wi = 0; wi < nwarps; ++wi) {
        Warp& wp = warps[wi];
        const unsigned lanes = std::min<unsigned>(kWarp, n - wi * kWarp);
        wp.present = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
        // Lanes that do not exist behave as lanes that have exited.
        wp.exited = ~wp.present;
        wp.arrived = 0;
        wp.kind = 0;
    }
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = fibers[t];
        f.tid = t;
        f.warp = t / kWarp;
        f.lane = t % kWarp;
        f.st = St::Runnable;
        f.wait_file = nullptr;
        f.wait_line = 0;
        f.pending.clear();
        f.groups.clear();
        f.dims.thread_idx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        f.dims.block_idx = {idx.x, idx.y, idx.z};
        f.dims.block_dim = {block.x, block.y, block.z};
        f.dims.grid_dim = {grid.x, grid.y, grid.z};
        f.stack_lo = stacks.stack(t);
#if EMU_ASAN
        // Frames abandoned by an earlier failed block (or never unwound) may
        // have left redzones poisoned.
        ASAN_UNPOISON_MEMORY_REGION(f.stack_lo, stacks.stack_size());
        f.fake_stack = nullptr;
#endif
        f.sp = fiber_prepare(f.stack_lo, stacks.stack_size(), &fiber_main, &f);
    }
    ready[0].clear();
    ready[1].clear();
    ready_head[0] = ready_head[1] = 0;
    order.resize(n);
    for (unsigned t = 0; t < n; ++t) order[t] = t;
    const ScheduleCfg& cfg = schedule_cfg();
    if (cfg.order == Order::Reverse) {
        std::reverse(order.begin(), order.end());
    } else if (cfg.order == Order::Random) {
        std::shuffle(order.begin(), order.end(), rng);
    }
    for (unsigned t : order) ready[0].push_back(t);
    // Fibers switch to each other directly; control comes back here when no
    // fiber is ready: every thread is done, one failed, or none can run.
    Fiber* first = next_ready();
    if (first != nullptr) transfer(nullptr, first, false);
    if (failed) return false;
    unsigned done = 0;
    for (unsigned t = 0; t < n; ++t) done += fibers[t].st == St::Done ? 1 : 0;
    if (done < n) {
        std::string m = "deadlock: no thread can run;";
        int shown = 0;
        for (unsigned t = 0; t < n && shown < 6; ++t) {
            const Fiber& f = fibers[t];
            if (f.st == St::Done) continue;
            char buf[256];
            std::snprintf(buf, sizeof buf, " thread %u waits at %s %s:%d;", t,
                          f.st == St::Barrier ? "__syncthreads" : "a warp collective",
                          f.wait_file ? f.wait_file : "?", f.wait_line);
            m += buf;
            ++shown;
        }
        failed = true;
        fail_code = 719;
        fail_msg = m;
        return false;
    }
    return true;
}

void fail_code(int code, const char* file, int line, const char* fmt, ...) {
    Worker& w = *tw;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    Fiber* f = w.cur;
    char where[256];
    if (f != nullptr) {
        std::snprintf(where, sizeof where,
                      "block (%u,%u,%u) thread (%u,%u,%u) (warp %u lane %u), at %s:%d: ",
                      f->dims.block_idx.x, f->dims.block_idx.y, f->dims.block_idx.z,
                      f->dims.thread_idx.x, f->dims.thread_idx.y, f->dims.thread_idx.z, f->warp,
                      f->lane, file ? file : "?", line);
    } else {
        std::snprintf(where, sizeof where, "at %s:%d: ", file ? file : "?", line);
    }
    w.failed = true;
    w.fail_code = code;
    w.fail_msg = std::string(where) + buf;
    if (f == nullptr) std::abort();
    f->st = St::Done;
    // Back to the scheduler, which abandons the block.
    w.transfer(f, nullptr, true);
    __builtin_trap();
}

bool in_window(const SharedWindow& win, const void* p, size_t bytes) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    const auto lo = reinterpret_cast<uintptr_t>(win.lo);
    return a >= lo && a + bytes <= lo + win.size;
}

uint16_t load_b16(const uint8_t* row, int col) {
    uint16_t v;
    std::memcpy(&v, row + 2 * col, 2);
    return v;
}

float half_bits_to_float(uint16_t bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
}

// The result of a completed collective, from every participating lane's
// inputs (PTX ISA semantics).
void complete(Worker& w, Warp& wp) {
    const uint32_t mask = wp.mask;
    auto participates = [&](int l) { return (mask >> l) & 1u; };
    switch (wp.kind) {
        case EMU_COLL_SYNCWARP:
            return;
        case EMU_COLL_BALLOT: {
            uint32_t bits = 0;
            for (int l = 0; l < kWarp; ++l) {
                if (participates(l) && wp.in[l][0] != 0) bits |= 1u << l;
            }
            for (int l = 0; l < kWarp; ++l) wp.out[l][0] = bits;
            return;
        }
        case EMU_COLL_SHFL_XOR:
        case EMU_COLL_SHFL_UP:
        case EMU_COLL_SHFL_DOWN:
        case EMU_COLL_SHFL_IDX: {
            const int width = wp.width;
            for (int l = 0; l < kWarp; ++l) {
                if (!participates(l)) continue;
                const int seg = l / width * width;
                const int a = wp.arg[l];
                int src = l;
                switch (wp.kind) {
                    case EMU_COLL_SHFL_XOR:
                        src = l ^ a;
                        if (src / width > l / width) src = l;  // later segment: own value
                        break;
                    case EMU_COLL_SHFL_UP:
                        src = (l - seg) >= a ? l - a : l;
                        break;
                    case EMU_COLL_SHFL_DOWN:
                        src = (l - seg) + a < width ? l + a : l;
                        break;
                    default:
                        src = seg + ((a % width) + width) % width;
                        break;
                }
                if (src < 0 || src >= kWarp || !participates(src)) {
                    fail_code(719, wp.file, wp.line,
                              "lane %d reads lane %d in a shuffle, which is not in the mask "
                              "0x%08x (undefined on a GPU)",
                              l, src, mask);
                }
                wp.out[l][0] = wp.in[src][0];
                wp.out[l][1] = wp.in[src][1];
            }
            return;
        }
        case EMU_COLL_LDMATRIX_X4:
        case EMU_COLL_LDMATRIX_X4_TRANS: {
            // Lane 8m + i addresses row i of matrix m (16 bytes, 8 b16).
            uint16_t mat[4][8][8];
            for (int l = 0; l < kWarp; ++l) {
                const uint64_t a = wp.in[l][0] | (static_cast<uint64_t>(wp.in[l][1]) << 32);
                const auto* row = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(a));
                if (!in_window(w.win, row, 16)) {
                    fail_code(700, wp.file, wp.line,
                              "ldmatrix: lane %d's row address %p is not in the block's shared "
                              "memory",
                              l, static_cast<const void*>(row));
                }
                if (a % 16 != 0) {
                    fail_code(716, wp.file, wp.line,
                              "ldmatrix: lane %d's row address %p is not 16-byte aligned", l,
                              static_cast<const void*>(row));
                }
                for (int c = 0; c < 8; ++c) mat[l / 8][l % 8][c] = load_b16(row, c);
            }
            const bool trans = wp.kind == EMU_COLL_LDMATRIX_X4_TRANS;
            for (int l = 0; l < kWarp; ++l) {
                const int r = l / 4;
                const int c = 2 * (l % 4);
                for (int m = 0; m < 4; ++m) {
                    const uint16_t lo = trans ? mat[m][c][r] : mat[m][r][c];
                    const uint16_t hi = trans ? mat[m][c + 1][r] : mat[m][r][c + 1];
                    wp.out[l][m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
                }
            }
            return;
        }
        case EMU_COLL_MMA_M16N8K16_F32_F16: {
            float A[16][16], B[16][8], C[16][8];
            for (int l = 0; l < kWarp; ++l) {
                const int g = l / 4;
                const int t = l % 4;
                const uint32_t* in = wp.in[l];
                auto lo = [](uint32_t v) { return half_bits_to_float(static_cast<uint16_t>(v)); };
                auto hi = [](uint32_t v) {
                    return half_bits_to_float(static_cast<uint16_t>(v >> 16));
                };
                A[g][2 * t] = lo(in[0]);
                A[g][2 * t + 1] = hi(in[0]);
                A[g + 8][2 * t] = lo(in[1]);
                A[g + 8][2 * t + 1] = hi(in[1]);
                A[g][2 * t + 8] = lo(in[2]);
                A[g][2 * t + 9] = hi(in[2]);
                A[g + 8][2 * t + 8] = lo(in[3]);
                A[g + 8][2 * t + 9] = hi(in[3]);
                B[2 * t][g] = lo(in[4]);
                B[2 * t + 1][g] = hi(in[4]);
                B[2 * t + 8][g] = lo(in[5]);
                B[2 * t + 9][g] = hi(in[5]);
                float c[4];
                std::memcpy(c, in + 6, sizeof c);
                C[g][2 * t] = c[0];
                C[g][2 * t + 1] = c[1];
                C[g + 8][2 * t] = c[2];
                C[g + 8][2 * t + 1] = c[3];
            }
            float D[16][8];
            for (int i = 0; i < 16; ++i) {
                // f16 products are exact in double; one rounding at the end.
                double acc[8];
                for (int j = 0; j < 8; ++j) acc[j] = C[i][j];
                for (int k = 0; k < 16; ++k) {
                    const double a = A[i][k];
                    for (int j = 0; j < 8; ++j) acc[j] += a * B[k][j];
                }
                for (int j = 0; j < 8; ++j) D[i][j] = static_cast<float>(acc[j]);
            }
            for (int l = 0; l < kWarp; ++l) {
                const int g = l / 4;
                const int t = l % 4;
                const float d[4] = {D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t],
                                    D[g + 8][2 * t + 1]};
                std::memcpy(wp.out[l], d, sizeof d);
            }
            return;
        }
        default:
            fail_code(719, wp.file, wp.line, "unknown warp collective %d", wp.kind);
    }
}

const char* coll_name(int kind) {
    switch (kind) {
        case EMU_COLL_SYNCWARP: return "__syncwarp";
        case EMU_COLL_SHFL_XOR: return "__shfl_xor_sync";
        case EMU_COLL_SHFL_UP: return "__shfl_up_sync";
        case EMU_COLL_SHFL_DOWN: return "__shfl_down_sync";
        case EMU_COLL_SHFL_IDX: return "__shfl_sync";
        case EMU_COLL_BALLOT: return "__ballot_sync";
        case EMU_COLL_LDMATRIX_X4: return "ldmatrix.x4";
        case EMU_COLL_LDMATRIX_X4_TRANS: return "ldmatrix.x4.trans";
        case EMU_COLL_MMA_M16N8K16_F32_F16: return "mma.sync.m16n8k16";
        default: return "?";
    }
}

bool same_site(const char* fa, int la, const char* fb, int lb) {
    return la == lb && (fa == fb || (fa != nullptr && fb != nullptr && std::strcmp(fa, fb) == 0));
}

size_t in_words(int kind) {
    switch (kind) {
        case EMU_COLL_SYNCWARP: return 0;
        case EMU_COLL_BALLOT: return 1;
        case EMU_COLL_LDMATRIX_X4:
        case EMU_COLL_LDMATRIX_X4_TRANS: return 2;
        case EMU_COLL_MMA_M16N8K16_F32_F16: return 10;
        default: return 2;
    }
}

size_t out_words(int kind) {
    switch (kind) {
        case EMU_COLL_SYNCWARP: return 0;
        case EMU_COLL_BALLOT: return 1;
        case EMU_COLL_LDMATRIX_X4:
        case EMU_COLL_LDMATRIX_X4_TRANS:
        case EMU_COLL_MMA_M16N8K16_F32_F16: return 4;
        default: return 2;
    }
}

// ---- the worker pool ----

class Pool {
  public:
    // Runs fn on `threads` of the pool's worker threads and waits. The
    // caller (a host thread inside a driver call) runs no block itself: only
    // the pool's threads ever hold fiber stacks and kernel shared memory, so
    // their number stays bounded however many host threads call the driver.
    void run(int threads, const std::function<void()>& fn) {
        std::lock_guard<std::mutex> serial(run_mutex_);
        {
            std::unique_lock<std::mutex> lk(m_);
            while (static_cast<int>(started_) < threads) {
                std::thread([this] { loop(); }).detach();
                ++started_;
            }
            job_ = &fn;
            want_ = threads;
            taken_ = 0;
            remaining_ = threads;
            ++gen_;
        }
        cv_.notify_all();
        std::unique_lock<std::mutex> lk(m_);
        done_cv_.wait(lk, [this] { return remaining_ == 0; });
        job_ = nullptr;
    }

  private:
    void loop() {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lk(m_);
        for (;;) {
            cv_.wait(lk, [&] { return gen_ != seen && taken_ < want_; });
            seen = gen_;
            ++taken_;
            const std::function<void()>* job = job_;
            lk.unlock();
            (*job)();
            lk.lock();
            if (--remaining_ == 0) done_cv_.notify_all();
        }
    }

    std::mutex run_mutex_;
    std::mutex m_;
    std::condition_variable cv_;
    std::condition_variable done_cv_;
    const std::function<void()>* job_ = nullptr;
    uint64_t gen_ = 0;
    int want_ = 0;
    int taken_ = 0;
    int remaining_ = 0;
    unsigned started_ = 0;
};

Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: its threads outlive main
    return *p;
}

}  // namespace

int worker_count() {
    static const int n = [] {
        if (const char* s = std::getenv("SMARTTRIM_EMU_WORKERS")) {
            const long v = std::strtol(s, nullptr, 10);
            if (v >= 1 && v <= 64) return static_cast<int>(v);
        }
        const unsigned hw = std::thread::hardware_concurrency();
        return static_cast<int>(std::clamp<unsigned>(hw == 0 ? 1 : hw, 1, 8));
    }();
    return n;
}

LaunchResult run_kernel(const KernelLib& lib, const emu_kernel& kernel, Dim3 grid, Dim3 block,
                        void* const* args) {
    const uint64_t total = grid.count();
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex m;
    LaunchResult result;
    const std::function<void()> job = [&] {
        Worker& w = worker();
        const SharedWindow win = w.window(lib);
        for (;;) {
            if (failed.load(std::memory_order_relaxed)) return;
            const uint64_t i = next.fetch_add(1);
            if (i >= total) return;
            const Dim3 idx{static_cast<unsigned>(i % grid.x),
                           static_cast<unsigned>(i / grid.x % grid.y),
                           static_cast<unsigned>(i / (static_cast<uint64_t>(grid.x) * grid.y))};
            if (!w.run_block(kernel, args, grid, block, idx, win)) {
                std::lock_guard<std::mutex> lk(m);
                if (!failed.exchange(true)) {
                    result.code = w.fail_code;
                    result.message = w.fail_msg;
                }
                return;
            }
        }
    };
    const int threads = static_cast<int>(std::min<uint64_t>(worker_count(), total));
    pool().run(std::max(threads, 1), job);
    return result;
}

}  // namespace emu::rt

// ---- the entry points the kernel shim calls ----

using emu::rt::Fiber;
using emu::rt::St;
using emu::rt::Warp;

extern "C" const emu_dims* emu_dims_self(void) { return &emu::rt::self().dims; }

extern "C" void emu_syncthreads(const char* file, int line) {
    using namespace emu::rt;
    Worker& w = *tw;
    Fiber& f = self();
    if (w.bar_arrived == 0) {
        w.bar_file = file;
        w.bar_line = line;
    } else if (!same_site(w.bar_file, w.bar_line, file, line)) {
        fail_code(719, file, line,
                  "threads of one block at different __syncthreads: this one here, %d other(s) "
                  "at %s:%d (a barrier in divergent code)",
                  w.bar_arrived, w.bar_file ? w.bar_file : "?", w.bar_line);
    }
    ++w.bar_arrived;
    if (w.bar_arrived + w.exited == static_cast<int>(w.n)) {
        if (w.exited > 0) {
            fail_code(719, file, line,
                      "__syncthreads is never reached by %d thread(s) of the block that returned",
                      w.exited);
        }
        w.bar_arrived = 0;
        std::vector<unsigned>& waiting = w.scratch;
        waiting.clear();
        for (unsigned t = 0; t < w.n; ++t) {
            if (w.fibers[t].st == St::Barrier) waiting.push_back(t);
        }
        w.wake_all(waiting);
        return;  // the last to arrive goes on
    }
    f.st = St::Barrier;
    f.wait_file = file;
    f.wait_line = line;
    w.block(f);
}

extern "C" void emu_warp_collective(int kind, uint32_t mask, const char* file, int line, int arg,
                                    int width, const uint32_t* in, uint32_t* out) {
    using namespace emu::rt;
    Worker& w = *tw;
    Fiber& f = self();
    Warp& wp = w.warps[f.warp];
    const uint32_t bit = 1u << f.lane;
#define name coll_name(kind)
    if ((mask & bit) == 0) {
        fail_code(719, file, line, "%s with mask 0x%08x called by lane %u, which it excludes",
                  name, mask, f.lane);
    }
    if ((mask & ~wp.present) != 0) {
        fail_code(719, file, line,
                  "%s: mask 0x%08x names lanes that do not exist (the block has %u threads)",
                  name, mask, w.n);
    }
    if ((mask & wp.exited) != 0) {
        fail_code(719, file, line, "%s: mask 0x%08x needs lanes 0x%08x, which have returned", name,
                  mask, mask & wp.exited);
    }
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        fail_code(719, file, line, "%s: width %d is not a power of two in 1..32", name, width);
    }
    if (wp.arrived == 0) {
        wp.kind = kind;
        wp.mask = mask;
        wp.width = width;
        wp.file = file;
        wp.line = line;
    } else if (wp.kind != kind || wp.mask != mask || wp.width != width ||
               !same_site(wp.file, wp.line, file, line)) {
        fail_code(719, file, line,
                  "lanes of warp %u at different warp collectives: lane %u at %s (mask 0x%08x) "
                  "here, lanes 0x%08x at %s (mask 0x%08x) at %s:%d",
                  f.warp, f.lane, name, mask, wp.arrived, coll_name(wp.kind), wp.mask,
                  wp.file ? wp.file : "?", wp.line);
    }
#undef name
    wp.arg[f.lane] = arg;
    const size_t nin = in_words(kind);
    if (nin > 0) std::memcpy(wp.in[f.lane], in, nin * sizeof(uint32_t));
    wp.arrived |= bit;
    if (wp.arrived == mask) {
        complete(w, wp);
        wp.arrived = 0;
        std::vector<unsigned>& waiting = w.scratch;
        waiting.clear();
        for (int l = 0; l < 32; ++l) {
            if (((mask >> l) & 1u) == 0) continue;
            const unsigned t = f.warp * 32 + static_cast<unsigned>(l);
            if (w.fibers[t].st == St::Warp) waiting.push_back(t);
        }
        w.wake_all(waiting);
    } else {
        f.st = St::Warp;
        f.wait_file = file;
        f.wait_line = line;
        w.block(f);
    }
    const size_t nout = out_words(kind);
    if (nout > 0) std::memcpy(out, wp.out[f.lane], nout * sizeof(uint32_t));
}

extern "C" void emu_cp_async16(void* dst, const void* src, int src_bytes, const char* file,
                               int line) {
    using namespace emu::rt;
    Worker& w = *tw;
    Fiber& f = self();
    if (!in_window(w.win, dst, 16)) {
        fail_code(700, file, line, "cp.async: destination %p is not in the block's shared memory",
                  dst);
    }
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) {
        fail_code(716, file, line, "cp.async 16: source %p or destination %p is not 16-byte aligned",
                  src, dst);
    }
    if (src_bytes < 0 || src_bytes > 16) {
        fail_code(719, file, line, "cp.async 16: src-size %d is outside 0..16", src_bytes);
    }
    Copy c;
    c.dst = static_cast<uint8_t*>(dst);
    std::memset(c.data, 0, sizeof c.data);
    if (src_bytes > 0) std::memcpy(c.data, src, static_cast<size_t>(src_bytes));
    // Undefined until the wait that retires this copy's group.
    std::memset(dst, 0xFF, 16);
    f.pending.push_back(c);
}

extern "C" void emu_cp_async_commit(void) {
    Fiber& f = emu::rt::self();
    f.groups.push_back(std::move(f.pending));
    f.pending.clear();
}

extern "C" void emu_cp_async_wait(int n, const char*, int) {
    Fiber& f = emu::rt::self();
    const size_t keep = n < 0 ? 0 : static_cast<size_t>(n);
    if (f.groups.size() <= keep) return;
    const size_t retire = f.groups.size() - keep;
    for (size_t g = 0; g < retire; ++g) {
        for (const emu::rt::Copy& c : f.groups[g]) std::memcpy(c.dst, c.data, 16);
    }
    f.groups.erase(f.groups.begin(), f.groups.begin() + static_cast<std::ptrdiff_t>(retire));
}

extern "C" uint32_t emu_smem_offset(const void* p, const char* file, int line) {
    using namespace emu::rt;
    Worker& w = *tw;
    if (!in_window(w.win, p, 1)) {
        fail_code(700, file, line, "%p is not an address in the block's shared memory", p);
    }
    return static_cast<uint32_t>(static_cast<const uint8_t*>(p) - w.win.lo);
}

extern "C" void emu_fail(const char* file, int line, const char* message) {
    emu::rt::fail_code(719, file, line, "%s", message);
}

// Runs one kernel of a module table directly, without PTX or a stream: the
// emulator's own tests use it for small kernels of their own
// (emu/tests/selftest.cpp). Returns the launch result's code (0 = ok) and
// copies its message into msg.
extern "C" EMU_PUBLIC int smarttrim_emu_run_test_kernel(const emu_module* m, int k,
                                                        const unsigned grid[3],
                                                        const unsigned block[3],
                                                        void* const* args, char* msg,
                                                        size_t len) {
    static std::mutex mu;
    static std::unordered_map<const emu_module*, std::unique_ptr<emu::rt::KernelLib>> libs;
    emu::rt::KernelLib* lib = nullptr;
    {
        std::lock_guard<std::mutex> g(mu);
        auto& slot = libs[m];
        if (!slot) {
            slot = std::make_unique<emu::rt::KernelLib>();
            slot->path = "(test kernels)";
            slot->module = m;
        }
        lib = slot.get();
    }
    const emu::rt::LaunchResult r =
        emu::rt::run_kernel(*lib, m->kernels[k], {grid[0], grid[1], grid[2]},
                            {block[0], block[1], block[2]}, args);
    if (msg != nullptr && len > 0) std::snprintf(msg, len, "%s", r.message.c_str());
    return r.code;
}
