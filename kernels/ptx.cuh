// Every inline-PTX helper of the kernels, and nothing else: the
// shared-address conversion, cp.async (16-byte copy, commit, wait),
// ldmatrix (.x4 and .x4.trans) and mma.sync m16n8k16 (f16 in, f32
// accumulators).
//
// Kept in one header so that the CPU-emulated device (emu/) can supply C++
// versions of exactly these helpers and compile the kernel files unchanged.
// common.cuh includes it as <ptx.cuh> (angle brackets): a quoted include
// would always find this file next to the kernels, while the angle form
// searches only the -I paths, so nvcc (-I kernels) gets this file and the
// emulator (-I emu/shim, no -I kernels) gets its own.
#pragma once

#include <stdint.h>

// A generic pointer to shared memory as the 32-bit shared-window address the
// cp.async and ldmatrix instructions take.
static __device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async global->shared copy; src_bytes = 0 zero-fills the 16 bytes
// (rows past a sequence's end) without reading global memory. The copy lands
// only at the cp_async_wait that covers its commit group.
static __device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(src_bytes));
}

// Closes the group of this thread's cp.async copies issued since the last commit.
static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices from shared memory: lane 8m + i gives the address of
// row i of matrix m; r[m] of lane l holds row l / 4, columns 2 (l % 4) and
// 2 (l % 4) + 1 of matrix m.
static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// As ldmatrix_x4, each matrix transposed: r[m] of lane l holds rows
// 2 (l % 4) and 2 (l % 4) + 1 of column l / 4.
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// D = A * B + D, m16n8k16, A row-major f16, B column-major f16, f32
// accumulators (the PTX ISA's fragment layouts: with g = lane / 4 and
// t = lane % 4, a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] =
// A[g][2t+8..], a[3] = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 =
// B[2t+8..2t+9][g]; c[0..1] = D[g][2t..2t+1], c[2..3] = D[g+8][2t..2t+1]).
static __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
