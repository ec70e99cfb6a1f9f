#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if !defined(__x86_64__)
#error "the emulated device's fibers are written for x86-64"
#endif

// emu_ctx_switch(void** save_sp /* rdi */, void* new_sp /* rsi */):
// pushes the callee-saved registers and the FP control state, stores the
// stack pointer, loads the other one and pops the same layout off it.
// Frame, from the saved stack pointer upwards: [mxcsr:4 fpucw:4] r15 r14 r13
// r12 rbx rbp return-address.
asm(R"(
    .text
    .globl emu_ctx_switch
    .hidden emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size emu_ctx_switch, .-emu_ctx_switch

    .globl emu_fiber_trampoline
    .hidden emu_fiber_trampoline
    .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r13, %rdi
    callq *%r12
    ud2
    .cfi_endproc
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
)");

extern "C" void emu_fiber_trampoline();

namespace emu::rt {

void* fiber_prepare(char* stack_lo, size_t stack_size, void (*entry)(void*), void* arg) {
    // The trampoline is entered by `ret` with rsp = new_sp + 64; it must be
    // 16-byte aligned there so that its `call` gives the entry function the
    // ABI's alignment (rsp + 8 aligned at the callee's first instruction).
    auto top = reinterpret_cast<uintptr_t>(stack_lo + stack_size) & ~uintptr_t{15};
    auto* sp = reinterpret_cast<uint64_t*>(top - 16 - 64);
    const uint32_t mxcsr = 0x1F80;  // defaults: all exceptions masked, round to nearest
    const uint16_t fpucw = 0x037F;
    uint64_t fp = mxcsr | (static_cast<uint64_t>(fpucw) << 32);
    sp[0] = fp;
    sp[1] = 0;                                        // r15
    sp[2] = 0;                                        // r14
    sp[3] = reinterpret_cast<uint64_t>(arg);          // r13 -> rdi
    sp[4] = reinterpret_cast<uint64_t>(entry);        // r12 -> call target
    sp[5] = 0;                                        // rbx
    sp[6] = 0;                                        // rbp: ends frame-pointer unwinds
    sp[7] = reinterpret_cast<uint64_t>(&emu_fiber_trampoline);
    return sp;
}

size_t default_stack_size() {
    if (const char* kb = std::getenv("SMARTTRIM_EMU_STACK_KB")) {
        const long v = std::strtol(kb, nullptr, 10);
        if (v >= 16) return static_cast<size_t>(v) * 1024;
    }
#if defined(__SANITIZE_ADDRESS__)
    return 256 * 1024;
#else
    return 64 * 1024;
#endif
}

StackPool::StackPool(size_t stack_size) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_ = (stack_size + page - 1) / page * page;
}

StackPool::~StackPool() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (char* m : maps_) munmap(m, size_ + page);
}

char* StackPool::stack(size_t i) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    while (maps_.size() <= i) {
        void* m = mmap(nullptr, size_ + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "smarttrim-emu: cannot map a %zu-byte fiber stack\n", size_);
            std::abort();
        }
        // The lowest page stays inaccessible: an overflowing fiber faults
        // instead of writing into its neighbour's stack.
        mprotect(m, page, PROT_NONE);
        maps_.push_back(static_cast<char*>(m));
    }
    return maps_[i] + page;
}

}  // namespace emu::rt
