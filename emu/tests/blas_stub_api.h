// Test hooks of the stub emulated-driver interface (blas_stub_api.cpp), for
// emu/tests/blas_test.cpp only. The stub stands in for the real driver
// (emu/driver/) so that the emulated cuBLAS / cuBLASLt can be tested alone.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {
uint64_t blas_stub_counter(int counter);       // emu::count totals
uint64_t blas_stub_enqueued();                 // enqueue_host_op calls that returned CUDA_SUCCESS
void* blas_stub_last_stream();                 // stream of the last enqueue
const char* blas_stub_last_what();             // `what` of the last enqueue
void blas_stub_set_deferred(int on);           // queue work instead of running it
int blas_stub_drain();                         // run the queue (returns how many ran)
void blas_stub_set_enqueue_error(int cuda_result);   // make enqueue_host_op fail
void blas_stub_set_context_status(int cuda_result);  // what context_status() returns
void blas_stub_check_ranges(int on);           // device_range_ok: registered ranges only
void blas_stub_add_range(const void* p, size_t bytes);
void blas_stub_clear_ranges();
uint64_t blas_stub_faults();                   // device_fault calls
const char* blas_stub_last_fault();
}
