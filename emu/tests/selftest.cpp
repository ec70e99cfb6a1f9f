// The emulated device's own tests (emu/README.md, "Tests of the emulator"):
//
// 1. its ldmatrix, mma.sync and cp.async against the PTX ISA's definitions on
//    small independent cases (the fragment maps here are the ISA's tables
//    written as element -> (lane, register), the inverse of how the runtime
//    computes them);
// 2. its warp shuffles and ballot;
// 3. every misuse the runtime must turn into a launch error: a lane leaving
//    before a collective that needs it, lanes at different collectives, a
//    __syncthreads part of the block never reaches, barriers at different
//    sites, deadlock, ldmatrix / cp.async outside shared memory or
//    misaligned, a mask that excludes its caller.
//
// Kernels are compiled here against the same shim as kernels/*.cu and run
// through smarttrim_emu_run_test_kernel (no PTX, no stream). Exit status 0
// when every check passes.
#include <cuda_fp16.h>
#include <ptx.cuh>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <emu/register.h>

extern "C" int smarttrim_emu_run_test_kernel(const emu_module* m, int k, const unsigned grid[3],
                                             const unsigned block[3], void* const* args,
                                             char* msg, size_t len);

// ---------------------------------------------------------------- kernels --

// ldmatrix: `tile` holds 4 matrices of 8 x 8 b16 (row-major, 16 bytes a
// row); lane 8m + i points at row i of matrix m. out[lane * 4 + m] = r[m].
extern "C" void k_ldmatrix(const uint16_t* tile, uint32_t* out, int trans) {
    __shared__ __align__(16) uint16_t s[4 * 64];
    const int lane = threadIdx.x;
    for (int i = lane; i < 4 * 64; i += 32) s[i] = tile[i];
    __syncwarp();
    uint32_t r[4];
    const uint16_t* row = s + (lane / 8) * 64 + (lane % 8) * 8;
    if (trans) {
        ldmatrix_x4_trans(r, row);
    } else {
        ldmatrix_x4(r, row);
    }
    for (int m = 0; m < 4; ++m) out[lane * 4 + m] = r[m];
}

// mma: frag_a [32][4], frag_b [32][2], frag_c [32][4] (f32 bits) per lane ->
// out [32][4] f32.
extern "C" void k_mma(const uint32_t* frag_a, const uint32_t* frag_b, const float* frag_c,
                      float* out) {
    const int lane = threadIdx.x;
    uint32_t a[4];
    float c[4];
    for (int i = 0; i < 4; ++i) {
        a[i] = frag_a[lane * 4 + i];
        c[i] = frag_c[lane * 4 + i];
    }
    mma16816(c, a, frag_b[lane * 2], frag_b[lane * 2 + 1]);
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = c[i];
}

// cp.async: thread t copies src[t*8 .. t*8+8) (16 bytes of u16) into shared
// with src_bytes = bytes[t]; records what the destination holds before the
// wait (must be poison) and after it.
extern "C" void k_cp_async(const uint16_t* src, const int* bytes, uint16_t* before,
                           uint16_t* after) {
    __shared__ __align__(16) uint16_t s[32 * 8];
    const int t = threadIdx.x;
    cp_async16(s + t * 8, src + t * 8, bytes[t]);
    cp_async_commit();
    for (int i = 0; i < 8; ++i) before[t * 8 + i] = s[t * 8 + i];
    cp_async_wait<0>();
    for (int i = 0; i < 8; ++i) after[t * 8 + i] = s[t * 8 + i];
}

// Two commit groups; wait<1> retires only the older.
extern "C" void k_cp_async_groups(const uint16_t* src, uint16_t* mid, uint16_t* end) {
    __shared__ __align__(16) uint16_t s[2][8];
    if (threadIdx.x != 0) return;
    cp_async16(s[0], src, 16);
    cp_async_commit();
    cp_async16(s[1], src + 8, 16);
    cp_async_commit();
    cp_async_wait<1>();
    for (int i = 0; i < 8; ++i) {
        mid[i] = s[0][i];
        mid[8 + i] = s[1][i];
    }
    cp_async_wait<0>();
    for (int i = 0; i < 8; ++i) {
        end[i] = s[0][i];
        end[8 + i] = s[1][i];
    }
}

// Another thread's cp.async destination read after a barrier but without a
// wait by the issuing thread: poison (the bug a missing wait makes).
extern "C" void k_cp_async_no_wait(const uint16_t* src, uint16_t* seen) {
    __shared__ __align__(16) uint16_t s[8];
    if (threadIdx.x == 0) {
        cp_async16(s, src, 16);
        cp_async_commit();
    }
    __syncthreads();
    if (threadIdx.x == 1) {
        for (int i = 0; i < 8; ++i) seen[i] = s[i];
    }
    if (threadIdx.x == 0) cp_async_wait<0>();
}

// Shuffles and ballot: out[kind * 32 + lane].
extern "C" void k_shuffles(int* out) {
    const int lane = threadIdx.x;
    out[0 * 32 + lane] = __shfl_xor_sync(0xffffffffu, lane * 10, 5);
    out[1 * 32 + lane] = __shfl_up_sync(0xffffffffu, lane * 10, 3);
    out[2 * 32 + lane] = __shfl_up_sync(0xffffffffu, lane * 10, 2, 8);
    out[3 * 32 + lane] = __shfl_down_sync(0xffffffffu, lane * 10, 4);
    out[4 * 32 + lane] = __shfl_sync(0xffffffffu, lane * 10, 7);
    out[5 * 32 + lane] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
}

// Block-wide: a barrier between a write and a read by another warp.
extern "C" void k_barrier(int* out) {
    __shared__ int s[256];
    const int t = threadIdx.x;
    s[t] = t * 3;
    __syncthreads();
    out[t] = s[(t + 97) % 256];
}

// ---- misuses ----
extern "C" void k_lane_exits(int* out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

extern "C" void k_different_collectives(int* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
    } else {
        out[threadIdx.x] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
    }
}

extern "C" void k_different_sites(int* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
    } else {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 2, 1);
    }
}

extern "C" void k_partial_barrier(int* out) {
    if (threadIdx.x >= 64) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

extern "C" void k_divergent_barrier(int* out) {
    if (threadIdx.x < 64) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

extern "C" void k_deadlock(int* out) {
    // Lanes 1..31 of warp 0 wait for lane 0 at a shuffle while lane 0 waits
    // for them at the (one) barrier: nothing can run.
    if (threadIdx.x >= 1 && threadIdx.x < 32) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
    __syncthreads();
}

extern "C" void k_ldmatrix_global(const uint16_t* g, uint32_t* out) {
    uint32_t r[4];
    ldmatrix_x4(r, g + (threadIdx.x % 8) * 8);
    out[threadIdx.x] = r[0];
}

extern "C" void k_cp_async_misaligned(const uint16_t* g) {
    __shared__ __align__(16) uint16_t s[16];
    cp_async16(s + 1, g, 16);
    cp_async_wait<0>();
}

extern "C" void k_mask_excludes_caller(int* out) {
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1, 1);
}

// Reads one element past `n`: what the AddressSanitizer build must report
// (`emu_selftest oob`, emu/tests/sanitizer_check.sh).
extern "C" void k_out_of_bounds(const float* x, int n, float* out) {
    const int i = static_cast<int>(threadIdx.x);
    out[i] = x[i + (i == 0 ? n : 0)];
}

// A misaligned 16-byte vector load: what UBSan's alignment check must
// report (`emu_selftest misaligned`).
extern "C" void k_misaligned(const float* x, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(x + 1);
    out[threadIdx.x] = v.x;
}

EMU_MODULE("selftest", EMU_KERNEL(k_ldmatrix), EMU_KERNEL(k_mma), EMU_KERNEL(k_cp_async),
           EMU_KERNEL(k_cp_async_groups), EMU_KERNEL(k_cp_async_no_wait), EMU_KERNEL(k_shuffles),
           EMU_KERNEL(k_barrier), EMU_KERNEL(k_lane_exits), EMU_KERNEL(k_different_collectives),
           EMU_KERNEL(k_different_sites), EMU_KERNEL(k_partial_barrier),
           EMU_KERNEL(k_divergent_barrier), EMU_KERNEL(k_deadlock), EMU_KERNEL(k_ldmatrix_global),
           EMU_KERNEL(k_cp_async_misaligned), EMU_KERNEL(k_mask_excludes_caller),
           EMU_KERNEL(k_out_of_bounds), EMU_KERNEL(k_misaligned))

// ---------------------------------------------------------------- harness --

namespace {

int failures = 0;
int checks = 0;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        ++checks;                                          \
        if (!(cond)) {                                     \
            ++failures;                                    \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            std::printf(__VA_ARGS__);                      \
            std::printf("\n");                             \
        }                                                  \
    } while (0)

struct Run {
    int code;
    std::string message;
};

int index_of(const char* name) {
    const emu_module* m = smarttrim_emu_module();
    for (int i = 0; i < m->n_kernels; ++i) {
        if (std::strcmp(m->kernels[i].name, name) == 0) return i;
    }
    std::printf("no test kernel %s\n", name);
    std::exit(2);
}

template <class... P>
Run run(const char* name, unsigned threads, P... params) {
    void* args[sizeof...(P) + 1] = {static_cast<void*>(&params)...};
    const unsigned grid[3] = {1, 1, 1};
    const unsigned block[3] = {threads, 1, 1};
    char msg[1024] = {0};
    const int code =
        smarttrim_emu_run_test_kernel(smarttrim_emu_module(), index_of(name), grid, block, args,
                                      msg, sizeof msg);
    return Run{code, msg};
}

uint16_t h16(float f) {
    _Float16 h = static_cast<_Float16>(f);
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
}

float f16(uint16_t b) {
    _Float16 h;
    std::memcpy(&h, &b, 2);
    return static_cast<float>(h);
}

void test_ldmatrix() {
    std::vector<uint16_t> tile(4 * 64);
    for (int m = 0; m < 4; ++m)
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 8; ++c) tile[m * 64 + r * 8 + c] = static_cast<uint16_t>(m * 1000 + r * 10 + c);
    for (int trans = 0; trans < 2; ++trans) {
        std::vector<uint32_t> out(32 * 4, 0xDEADBEEF);
        const Run r = run("k_ldmatrix", 32, tile.data(), out.data(), trans);
        CHECK(r.code == 0, "ldmatrix trans=%d failed: %s", trans, r.message.c_str());
        // PTX ISA: element (row, col) of matrix m lands in lane 4 * row + col / 2,
        // register m, half col % 2 (row-major fragment); with .trans the
        // fragment holds the stored matrix's transpose.
        for (int m = 0; m < 4; ++m) {
            for (int fr = 0; fr < 8; ++fr) {
                for (int fc = 0; fc < 8; ++fc) {
                    const int lane = 4 * fr + fc / 2;
                    const uint32_t word = out[lane * 4 + m];
                    const uint16_t got = (fc % 2 == 0) ? static_cast<uint16_t>(word) : static_cast<uint16_t>(word >> 16);
                    const int sr = trans ? fc : fr;
                    const int sc = trans ? fr : fc;
                    const uint16_t want = tile[m * 64 + sr * 8 + sc];
                    CHECK(got == want, "ldmatrix trans=%d matrix %d fragment (%d,%d): got %u want %u",
                          trans, m, fr, fc, got, want);
                }
            }
        }
    }
}

void test_mma() {
    std::mt19937 rng(3);
    std::uniform_int_distribution<int> small(-8, 8);
    for (int rep = 0; rep < 3; ++rep) {
        // Small integers / 4: exact in f16 and in f32 sums, so the check is exact.
        float A[16][16], B[16][8], C[16][8];
        for (auto& row : A) for (float& v : row) v = small(rng) / 4.0f;
        for (auto& row : B) for (float& v : row) v = small(rng) / 4.0f;
        for (auto& row : C) for (float& v : row) v = small(rng) / 2.0f;
        std::vector<uint32_t> fa(32 * 4, 0), fb(32 * 2, 0);
        std::vector<float> fc(32 * 4, 0), out(32 * 4, NAN);
        auto put = [](uint32_t& word, int half, uint16_t v) {
            word |= static_cast<uint32_t>(v) << (16 * half);
        };
        // PTX ISA m16n8k16 .f16 A (row): element (r, c) -> lane (r % 8) * 4 + (c % 8) / 2,
        // register (r / 8) + 2 * (c / 8), half c % 2.
        for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c)
                put(fa[((r % 8) * 4 + (c % 8) / 2) * 4 + (r / 8) + 2 * (c / 8)], c % 2, h16(A[r][c]));
        // B (col): element (k, n) -> lane n * 4 + (k % 8) / 2, register k / 8, half k % 2.
        for (int k = 0; k < 16; ++k)
            for (int n = 0; n < 8; ++n)
                put(fb[(n * 4 + (k % 8) / 2) * 2 + k / 8], k % 2, h16(B[k][n]));
        // C/D (f32): element (r, n) -> lane (r % 8) * 4 + n / 2, register 2 * (r / 8) + n % 2.
        for (int r = 0; r < 16; ++r)
            for (int n = 0; n < 8; ++n) fc[((r % 8) * 4 + n / 2) * 4 + 2 * (r / 8) + n % 2] = C[r][n];
        const Run res = run("k_mma", 32, fa.data(), fb.data(), fc.data(), out.data());
        CHECK(res.code == 0, "mma failed: %s", res.message.c_str());
        for (int r = 0; r < 16; ++r) {
            for (int n = 0; n < 8; ++n) {
                float want = C[r][n];
                for (int k = 0; k < 16; ++k) want += A[r][k] * B[k][n];
                const float got = out[((r % 8) * 4 + n / 2) * 4 + 2 * (r / 8) + n % 2];
                CHECK(got == want, "mma D(%d,%d): got %g want %g", r, n, got, want);
            }
        }
    }
}

void test_cp_async() {
    std::vector<uint16_t> src(32 * 8);
    for (size_t i = 0; i < src.size(); ++i) src[i] = h16(static_cast<float>(i % 1000) + 0.5f);
    std::vector<int> bytes(32);
    for (int t = 0; t < 32; ++t) bytes[t] = t % 3 == 0 ? 16 : (t % 3 == 1 ? 0 : 6);
    std::vector<uint16_t> before(32 * 8, 0), after(32 * 8, 0);
    const Run r = run("k_cp_async", 32, src.data(), bytes.data(), before.data(), after.data());
    CHECK(r.code == 0, "cp.async failed: %s", r.message.c_str());
    for (int t = 0; t < 32; ++t) {
        for (int i = 0; i < 8; ++i) {
            CHECK(std::isnan(f16(before[t * 8 + i])),
                  "cp.async: thread %d element %d readable before its wait (%g)", t, i,
                  f16(before[t * 8 + i]));
            const uint16_t want = (i * 2 < bytes[t]) ? src[t * 8 + i] : 0;
            CHECK(after[t * 8 + i] == want, "cp.async: thread %d element %d after wait: %u want %u",
                  t, i, after[t * 8 + i], want);
        }
    }
    std::vector<uint16_t> mid(16, 0), end(16, 0);
    const Run g = run("k_cp_async_groups", 32, src.data(), mid.data(), end.data());
    CHECK(g.code == 0, "cp.async groups failed: %s", g.message.c_str());
    for (int i = 0; i < 8; ++i) {
        CHECK(mid[i] == src[i], "wait_group 1 did not retire the older group");
        CHECK(std::isnan(f16(mid[8 + i])), "wait_group 1 retired the newest group too");
        CHECK(end[8 + i] == src[8 + i], "wait_group 0 did not retire the newest group");
    }
    std::vector<uint16_t> seen(8, 0);
    const Run nw = run("k_cp_async_no_wait", 64, src.data(), seen.data());
    CHECK(nw.code == 0, "cp.async no-wait kernel failed: %s", nw.message.c_str());
    for (int i = 0; i < 8; ++i) {
        CHECK(std::isnan(f16(seen[i])), "a copy another thread never waited for was visible");
    }
}

void test_shuffles() {
    std::vector<int> out(6 * 32, -1);
    const Run r = run("k_shuffles", 32, out.data());
    CHECK(r.code == 0, "shuffles failed: %s", r.message.c_str());
    for (int l = 0; l < 32; ++l) {
        CHECK(out[l] == (l ^ 5) * 10, "xor lane %d: %d", l, out[l]);
        CHECK(out[32 + l] == (l >= 3 ? l - 3 : l) * 10, "up lane %d: %d", l, out[32 + l]);
        const int seg_up = (l % 8) >= 2 ? l - 2 : l;
        CHECK(out[64 + l] == seg_up * 10, "up width 8 lane %d: %d", l, out[64 + l]);
        CHECK(out[96 + l] == (l + 4 < 32 ? l + 4 : l) * 10, "down lane %d: %d", l, out[96 + l]);
        CHECK(out[128 + l] == 70, "idx lane %d: %d", l, out[128 + l]);
        uint32_t want = 0;
        for (int j = 0; j < 32; ++j) want |= (j % 3 == 0 ? 1u : 0u) << j;
        CHECK(static_cast<uint32_t>(out[160 + l]) == want, "ballot lane %d: %08x", l,
              static_cast<uint32_t>(out[160 + l]));
    }
    std::vector<int> b(256, -1);
    const Run rb = run("k_barrier", 256, b.data());
    CHECK(rb.code == 0, "barrier kernel failed: %s", rb.message.c_str());
    for (int t = 0; t < 256; ++t) CHECK(b[t] == ((t + 97) % 256) * 3, "barrier thread %d: %d", t, b[t]);
}

void expect_error(const char* name, unsigned threads, int code, const char* needle, Run r) {
    CHECK(r.code == code, "%s: launch code %d, want %d (%s)", name, r.code, code, r.message.c_str());
    CHECK(r.message.find(needle) != std::string::npos, "%s: message lacks \"%s\": %s", name, needle,
          r.message.c_str());
    if (r.code == code) std::printf("ok   %-26s -> %s\n", name, r.message.c_str());
    (void)threads;
}

void test_misuse() {
    std::vector<int> out(256, 0);
    std::vector<uint16_t> g(256, 0);
    std::vector<uint32_t> o32(64, 0);
    expect_error("lane exits early", 32, 719, "returned",
                 run("k_lane_exits", 32, out.data()));
    expect_error("different collectives", 32, 719, "different warp collectives",
                 run("k_different_collectives", 32, out.data()));
    expect_error("different sites", 32, 719, "different warp collectives",
                 run("k_different_sites", 32, out.data()));
    expect_error("partial __syncthreads", 128, 719, "never reached",
                 run("k_partial_barrier", 128, out.data()));
    expect_error("divergent __syncthreads", 128, 719, "different __syncthreads",
                 run("k_divergent_barrier", 128, out.data()));
    expect_error("deadlock", 64, 719, "deadlock", run("k_deadlock", 64, out.data()));
    expect_error("ldmatrix on global memory", 32, 700, "shared memory",
                 run("k_ldmatrix_global", 32, g.data(), o32.data()));
    expect_error("cp.async misaligned", 32, 716, "aligned",
                 run("k_cp_async_misaligned", 32, g.data()));
    expect_error("mask excludes its caller", 32, 719, "excludes",
                 run("k_mask_excludes_caller", 32, out.data()));
}

}  // namespace

int main(int argc, char** argv) {
    // Deliberate faults for emu/tests/sanitizer_check.sh: the sanitizers
    // must stop the process with a report naming the kernel's line.
    if (argc > 1 && std::strcmp(argv[1], "oob") == 0) {
        std::vector<float> x(32, 1.0f), out(32, 0.0f);
        float* heap = new float[32];
        std::memcpy(heap, x.data(), 32 * sizeof(float));
        run("k_out_of_bounds", 32, static_cast<const float*>(heap), 32, out.data());
        delete[] heap;
        std::printf("no fault reported\n");
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "misaligned") == 0) {
        alignas(16) float x[16] = {0};
        std::vector<float> out(32, 0.0f);
        run("k_misaligned", 32, static_cast<const float*>(x), out.data());
        std::printf("no fault reported\n");
        return 0;
    }
    test_ldmatrix();
    test_mma();
    test_cp_async();
    test_shuffles();
    test_misuse();
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
