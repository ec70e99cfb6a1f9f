// Fibers for GPU threads: a hand-written x86-64 context switch (callee-saved
// registers, MXCSR and the x87 control word; no system call, unlike glibc's
// swapcontext) and a pool of mmap'd stacks with guard pages. Under
// AddressSanitizer every switch is announced to it
// (__sanitizer_{start,finish}_switch_fiber) so it tracks the right stack.
#pragma once

#include <cstddef>
#include <vector>

namespace emu::rt {

// Saves the current context into *save_sp and resumes the one at new_sp.
extern "C" void emu_ctx_switch(void** save_sp, void* new_sp);

// Prepares a stack so that switching to the returned stack pointer calls
// entry(arg) on it. entry must never return (it switches away for good).
void* fiber_prepare(char* stack_lo, size_t stack_size, void (*entry)(void*), void* arg);

// Stacks of one OS thread's fibers, reused from block to block.
class StackPool {
  public:
    explicit StackPool(size_t stack_size);
    ~StackPool();
    StackPool(const StackPool&) = delete;
    StackPool& operator=(const StackPool&) = delete;
    // The lowest usable address of stack i (allocated on first use).
    char* stack(size_t i);
    size_t stack_size() const { return size_; }

  private:
    size_t size_;
    std::vector<char*> maps_;  // each: guard page + stack
};

// Stack bytes per fiber: SMARTTRIM_EMU_STACK_KB, else 64 KiB (256 KiB under
// AddressSanitizer, whose redzones grow frames).
size_t default_stack_size();

}  // namespace emu::rt
