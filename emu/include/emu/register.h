// Builds a kernel library's module table (emu/include/emu/kernel_abi.h) from
// the kernels' C++ signatures: each parameter's size and alignment, and an
// invoker that calls the kernel with args[i] as parameter i. Used by the
// generated translation unit of each kernels/*.cu (emu/gen_module.py).
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

#include <emu/kernel_abi.h>

namespace emu_reg {

template <class Sig>
struct Params;

template <class... A>
struct Params<void (*)(A...)> {
    static constexpr int count = static_cast<int>(sizeof...(A));
    // One extra entry so a kernel without parameters still has an array.
    static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(A)..., 0};
    static constexpr size_t aligns[sizeof...(A) + 1] = {alignof(A)..., 0};

    template <void (*F)(A...), size_t... I>
    static void call(void* const* args, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
    }
};

template <auto F>
void invoke(void* const* args) {
    using P = Params<decltype(F)>;
    P::template call<F>(args, std::make_index_sequence<static_cast<size_t>(P::count)>{});
}

template <auto F>
constexpr emu_kernel entry(const char* name) {
    using P = Params<decltype(F)>;
    return emu_kernel{name, P::count, P::sizes, P::aligns, &invoke<F>};
}

}  // namespace emu_reg

#define EMU_KERNEL(name) emu_reg::entry<&name>(#name)

// Defines the library's module table and its TLS anchor.
#define EMU_MODULE(stem, ...)                                                          \
    static thread_local char emu_tls_anchor_byte;                                      \
    static void* emu_tls_anchor() { return &emu_tls_anchor_byte; }                     \
    static const emu_kernel emu_kernels[] = {__VA_ARGS__};                             \
    static const emu_module emu_module_table = {                                       \
        stem, static_cast<int>(sizeof(emu_kernels) / sizeof(emu_kernels[0])),          \
        emu_kernels, &emu_tls_anchor};                                                 \
    extern "C" __attribute__((visibility("default"))) const emu_module*                \
    smarttrim_emu_module(void) {                                                       \
        return &emu_module_table;                                                      \
    }
