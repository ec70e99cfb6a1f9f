// CPU emulation of kernels/embed.cu: compiles the kernel file itself with g++
// against scripts/host-shim/cuda_fp16.h (warps as 32 std::threads meeting in
// every shuffle) and runs bert_embed_f16, vit_patchify_f16 and
// vit_assemble_f16 with the launch shapes src/ops/embed.rs uses (and with
// tiny grids, to exercise the grid-stride loops), against direct
// implementations of reference::model::embed's formulas. Outputs are
// poisoned with NaN / sentinels first. No GPU needed; it checks index
// formulas and control flow, not the hardware (run tests/gpu on a GPU too).
//
//   g++ -std=c++20 -O1 -pthread -fno-strict-aliasing -I scripts/host-shim \
//       -I kernels -x c++ scripts/emulate_embed.cpp -o /tmp/emulate_embed && /tmp/emulate_embed
#include "../kernels/embed.cu"

#include <cstdio>
#include <cstdlib>
#include <random>

static std::mt19937_64 rng(12345);
static float normal(float s) { return std::normal_distribution<float>(0.f, s)(rng); }
static __half h(float x) { return {(_Float16)x}; }
static float f(__half x) { return (float)x.v; }
static int failures = 0;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (!(cond)) {                                  \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            std::printf(__VA_ARGS__);                   \
            std::printf("\n");                          \
            if (++failures > 20) std::exit(1);          \
        }                                               \
    } while (0)

static std::vector<__half> table(size_t n, float s, float shift = 0.f) {
    std::vector<__half> t(n);
    for (auto& x : t) x = h(normal(s) + shift);
    return t;
}

static void bert_case(int d, std::vector<int> lens, int offset, bool types, int extra_rows) {
    const int vocab = 97, maxpos = 48, ntypes = 3;
    const int batch = (int)lens.size();
    std::vector<int> cu{0};
    for (int l : lens) cu.push_back(cu.back() + l);
    const int total = cu.back();
    const int bound = total + extra_rows;  // host upper bound on rows
    std::vector<uint32_t> ids(bound), tids(bound);
    for (auto& x : ids) x = rng() % vocab;
    for (auto& x : tids) x = rng() % ntypes;
    auto word = table((size_t)vocab * d, 1.0f), pos = table((size_t)maxpos * d, 0.5f),
         typ = table((size_t)ntypes * d, 0.3f), gamma = table(d, 0.2f, 1.f), beta = table(d, 0.2f);
    std::vector<__half> out((size_t)bound * d, h(NAN));
    std::vector<int> orig(bound, -777);
    BertEmbedShape shape{batch, bound, d, offset, 1e-12f};
    emu_launch_warps((bound + 3) / 4, 128, [&] {
        bert_embed_f16(ids.data(), types ? tids.data() : nullptr, cu.data(), word.data(),
                       pos.data(), typ.data(), gamma.data(), beta.data(), out.data(), orig.data(),
                       shape);
    });
    double num = 0, den = 0;
    for (int b = 0; b < batch; ++b) {
        for (int r = cu[b]; r < cu[b + 1]; ++r) {
            const int p = r - cu[b];
            CHECK(orig[r] == p, "bert d=%d row %d: orig_index %d, want %d", d, r, orig[r], p);
            std::vector<float> x(d);
            for (int j = 0; j < d; ++j) {
                const int t = types ? (int)tids[r] : 0;
                x[j] = f(word[(size_t)ids[r] * d + j]) + f(pos[(size_t)(p + offset) * d + j]) +
                       f(typ[(size_t)t * d + j]);
            }
            double mean = 0, var = 0;
            for (float v : x) mean += v;
            mean /= d;
            for (float v : x) var += (v - mean) * (v - mean);
            var /= d;
            const double inv = 1.0 / std::sqrt(var + 1e-12);
            for (int j = 0; j < d; ++j) {
                const float want = (float)((x[j] - mean) * inv) * f(gamma[j]) + f(beta[j]);
                const float got = f(out[(size_t)r * d + j]);
                CHECK(std::isfinite(got), "bert d=%d row %d col %d unwritten", d, r, j);
                num += (got - want) * (got - want);
                den += want * want;
            }
        }
    }
    for (int r = total; r < bound; ++r) {
        CHECK(orig[r] == -777, "bert: orig_index past the device total written (row %d)", r);
        for (int j = 0; j < d; ++j)
            CHECK(std::isnan(f(out[(size_t)r * d + j])), "bert: row %d past the total written", r);
    }
    const double err = std::sqrt(num / std::max(den, 1e-30));
    CHECK(err < 2e-3, "bert d=%d: rel err %.2e", d, err);
    std::printf("bert_embed d=%d batch=%d total=%d (+%d bound) offset=%d types=%d: rel err %.2e\n",
                d, batch, total, extra_rows, offset, (int)types, err);
}

static unsigned stride_grid(size_t vecs) {
    return (unsigned)std::clamp<size_t>((vecs + 255) / 256, 1, 65535 * 8);
}

static void vit_case(int batch, int c, int is, int p, int d, bool tiny_grid) {
    const int g = is / p, np = g * g, k = c * p * p, n = np + 1;
    std::vector<float> pixels((size_t)batch * c * is * is);
    for (auto& x : pixels) x = normal(1.f);
    // patchify
    std::vector<__half> patches((size_t)batch * np * k, h(NAN));
    PatchifyShape ps{batch, c, is, p};
    const size_t pvecs = (size_t)batch * np * k / 8;
    emu_launch_serial(tiny_grid ? 3 : stride_grid(pvecs), 256,
                      [&] { vit_patchify_f16(pixels.data(), patches.data(), ps); });
    size_t bad = 0;
    for (int r = 0; r < batch * np; ++r) {
        const int b = r / np, pi = r % np, py = pi / g, px = pi % g;
        for (int ch = 0; ch < c; ++ch)
            for (int ky = 0; ky < p; ++ky)
                for (int kx = 0; kx < p; ++kx) {
                    const int y = py * p + ky, x = px * p + kx;
                    const float want =
                        f(h(pixels[(((size_t)b * c + ch) * is + y) * is + x]));
                    const float got = f(patches[(size_t)r * k + ch * p * p + ky * p + kx]);
                    if (!(got == want)) ++bad;
                }
    }
    CHECK(bad == 0, "patchify %dx%d/%d: %zu wrong elements", is, is, p, bad);
    // assemble
    auto patch_out = table((size_t)batch * np * d, 1.f);
    auto cls = table(d, 1.f), pos = table((size_t)n * d, 0.5f);
    std::vector<__half> rows((size_t)batch * n * d, h(NAN));
    std::vector<int> orig(batch * n, -777), cu(batch + 1, -777);
    AssembleShape as{batch, np, d};
    const size_t avecs = (size_t)batch * n * d / 8;
    emu_launch_serial(tiny_grid ? 1 : stride_grid(avecs), 256, [&] {
        vit_assemble_f16(patch_out.data(), cls.data(), pos.data(), rows.data(), orig.data(),
                         cu.data(), as);
    });
    size_t wrong = 0;
    for (int b = 0; b <= batch; ++b) CHECK(cu[b] == b * n, "cu[%d] = %d", b, cu[b]);
    for (int r = 0; r < batch * n; ++r) {
        const int b = r / n, i = r % n;
        CHECK(orig[r] == i, "orig_index[%d] = %d, want %d", r, orig[r], i);
        for (int j = 0; j < d; ++j) {
            const float src = i == 0 ? f(cls[j]) : f(patch_out[((size_t)b * np + i - 1) * d + j]);
            const float want = f(h(src + f(pos[(size_t)i * d + j])));
            if (!(f(rows[(size_t)r * d + j]) == want)) ++wrong;
        }
    }
    CHECK(wrong == 0, "assemble: %zu wrong elements", wrong);
    std::printf("vit B=%d C=%d %dpx/%dpx d=%d%s: patchify %zu wrong, assemble %zu wrong\n", batch,
                c, is, p, d, tiny_grid ? " (tiny grid)" : "", bad, wrong);
}

int main() {
    bert_case(64, {1}, 0, false, 0);
    bert_case(64, {2}, 2, true, 0);
    bert_case(384, {31}, 0, true, 0);
    bert_case(384, {40}, 2, false, 0);
    bert_case(384, {1, 2, 31, 40}, 0, true, 0);
    bert_case(128, {3, 0, 5, 0, 1}, 2, true, 6);  // empty sequences, bound past the total
    bert_case(1032, {2, 3}, 0, true, 0);          // 129 vectors: lane 0 takes 5
    vit_case(2, 3, 32, 8, 64, false);
    vit_case(2, 3, 32, 8, 64, true);
    vit_case(2, 3, 32, 4, 64, false);   // p % 8 != 0: per-column path
    vit_case(3, 1, 24, 4, 16, true);    // C * p * p = 16
    vit_case(1, 3, 384, 16, 768, false);
    if (failures) {
        std::printf("%d failure(s)\n", failures);
        return 1;
    }
    std::printf("all embed kernel emulations passed\n");
    return 0;
}
