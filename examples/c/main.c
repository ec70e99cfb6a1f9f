/*
 * The smarttrim C API end to end: load a model (config JSON + safetensors
 * weights), run one pruned forward pass ordered after work on a CUDA stream
 * of our own, print the per-instance statistics, clean up.
 *
 *   make -C examples/c run
 *
 * On a machine without a GPU, smarttrim_model_create fails: the example
 * prints the status and the library's message and exits with status 1.
 *
 * The stream is created through the CUDA driver API, opened with dlopen so
 * that the example links (and reports the library's error) on machines
 * without libcuda.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "smarttrim.h"

static const char *status_name(int st) {
    switch (st) {
    case SMARTTRIM_STATUS_OK: return "SMARTTRIM_STATUS_OK";
    case SMARTTRIM_STATUS_NULL_POINTER: return "SMARTTRIM_STATUS_NULL_POINTER";
    case SMARTTRIM_STATUS_INVALID_ARGUMENT: return "SMARTTRIM_STATUS_INVALID_ARGUMENT";
    case SMARTTRIM_STATUS_NO_DRIVER: return "SMARTTRIM_STATUS_NO_DRIVER";
    case SMARTTRIM_STATUS_NO_DEVICE: return "SMARTTRIM_STATUS_NO_DEVICE";
    case SMARTTRIM_STATUS_KERNELS_NOT_BUILT: return "SMARTTRIM_STATUS_KERNELS_NOT_BUILT";
    case SMARTTRIM_STATUS_CUDA_ERROR: return "SMARTTRIM_STATUS_CUDA_ERROR";
    case SMARTTRIM_STATUS_IO_ERROR: return "SMARTTRIM_STATUS_IO_ERROR";
    case SMARTTRIM_STATUS_CONFIG_ERROR: return "SMARTTRIM_STATUS_CONFIG_ERROR";
    case SMARTTRIM_STATUS_WEIGHTS_ERROR: return "SMARTTRIM_STATUS_WEIGHTS_ERROR";
    case SMARTTRIM_STATUS_UNSUPPORTED: return "SMARTTRIM_STATUS_UNSUPPORTED";
    case SMARTTRIM_STATUS_PANIC: return "SMARTTRIM_STATUS_PANIC";
    case SMARTTRIM_STATUS_BAD_HANDLE: return "SMARTTRIM_STATUS_BAD_HANDLE";
    default: return "unknown status";
    }
}

/* Prints a failed call's status and the library's message; returns 1. */
static int report(const char *what, int st) {
    char msg[2048];
    if (smarttrim_last_error_message(msg, sizeof msg) != SMARTTRIM_STATUS_OK) {
        msg[0] = '\0';
    }
    fprintf(stderr, "%s failed: %s (%d): %s\n", what, status_name(st), st, msg);
    return 1;
}

/* The few CUDA driver calls we need, resolved at run time. */
typedef int (*cu_init_fn)(unsigned);
typedef int (*cu_device_get_fn)(int *, int);
typedef int (*cu_primary_retain_fn)(void **, int);
typedef int (*cu_primary_release_fn)(int);
typedef int (*cu_ctx_set_current_fn)(void *);
typedef int (*cu_stream_create_fn)(void **, unsigned);
typedef int (*cu_stream_destroy_fn)(void *);

struct cuda {
    void *lib;
    int device;
    void *ctx;
    void *stream;
    cu_primary_release_fn primary_release;
    cu_stream_destroy_fn stream_destroy;
};

/* Our own stream on device 0's primary context (the one smarttrim uses). */
static int cuda_open(struct cuda *c) {
    c->lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!c->lib) {
        fprintf(stderr, "dlopen(libcuda.so.1): %s\n", dlerror());
        return 1;
    }
    cu_init_fn init = (cu_init_fn)dlsym(c->lib, "cuInit");
    cu_device_get_fn device_get = (cu_device_get_fn)dlsym(c->lib, "cuDeviceGet");
    cu_primary_retain_fn retain = (cu_primary_retain_fn)dlsym(c->lib, "cuDevicePrimaryCtxRetain");
    cu_ctx_set_current_fn set_current = (cu_ctx_set_current_fn)dlsym(c->lib, "cuCtxSetCurrent");
    cu_stream_create_fn stream_create = (cu_stream_create_fn)dlsym(c->lib, "cuStreamCreate");
    c->primary_release = (cu_primary_release_fn)dlsym(c->lib, "cuDevicePrimaryCtxRelease_v2");
    c->stream_destroy = (cu_stream_destroy_fn)dlsym(c->lib, "cuStreamDestroy_v2");
    if (!init || !device_get || !retain || !set_current || !stream_create ||
        !c->primary_release || !c->stream_destroy) {
        fprintf(stderr, "libcuda lacks a driver API entry point\n");
        return 1;
    }
    int r = init(0);
    if (!r) r = device_get(&c->device, 0);
    if (!r) r = retain(&c->ctx, c->device);
    if (!r) r = set_current(c->ctx);
    if (!r) r = stream_create(&c->stream, 1 /* CU_STREAM_NON_BLOCKING */);
    if (r) {
        fprintf(stderr, "CUDA driver call failed: CUresult %d\n", r);
        return 1;
    }
    return 0;
}

static void cuda_close(struct cuda *c) {
    if (c->stream) c->stream_destroy(c->stream);
    if (c->ctx) c->primary_release(c->device);
    if (c->lib) dlclose(c->lib);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CONFIG.json WEIGHTS.safetensors\n", argv[0]);
        return 2;
    }
    smarttrim_model *model = NULL;
    int st = smarttrim_model_create(argv[1], argv[2], 0, &model);
    if (st != SMARTTRIM_STATUS_OK) {
        return report("smarttrim_model_create", st);
    }

    /* Two streams (text, image) of hidden 64; a batch of 2 ragged sequences. */
    enum { D = 64, BATCH = 2 };
    static const int32_t cu_text[BATCH + 1] = {0, 9, 16};
    static const int32_t cu_image[BATCH + 1] = {0, 17, 34};
    static float text[16 * D], image[34 * D];
    for (int i = 0; i < 16 * D; i++) text[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    for (int i = 0; i < 34 * D; i++) image[i] = (float)((i * 53) % 97) / 48.0f - 1.0f;
    const smarttrim_packed_input inputs[2] = {{text, cu_text}, {image, cu_image}};

    const int max_seqlen[2] = {9, 17};
    size_t ws_bytes = 0;
    st = smarttrim_model_workspace_bytes(model, BATCH, max_seqlen, &ws_bytes);
    int rc = 0;
    struct cuda cuda = {0};
    int32_t *kept = NULL, *self_heads = NULL, *cross_heads = NULL;
    if (st != SMARTTRIM_STATUS_OK) {
        rc = report("smarttrim_model_workspace_bytes", st);
        goto done;
    }
    printf("workspace: %zu bytes\n", ws_bytes);
    if (cuda_open(&cuda)) {
        rc = 1;
        goto done;
    }
    st = smarttrim_forward(model, cuda.stream, inputs, 2, NULL, BATCH, 0);
    if (st != SMARTTRIM_STATUS_OK) {
        rc = report("smarttrim_forward", st);
        goto done;
    }
    size_t layers = 0, streams = 0, batch = 0;
    st = smarttrim_stats(model, &layers, &streams, &batch, NULL, NULL, NULL, 0);
    if (st != SMARTTRIM_STATUS_OK) {
        rc = report("smarttrim_stats", st);
        goto done;
    }
    size_t n = layers * streams * batch;
    kept = calloc(n, sizeof *kept);
    self_heads = calloc(n, sizeof *self_heads);
    cross_heads = calloc(n, sizeof *cross_heads);
    if (!kept || !self_heads || !cross_heads) {
        fprintf(stderr, "out of memory\n");
        rc = 1;
        goto done;
    }
    st = smarttrim_stats(model, NULL, NULL, NULL, kept, self_heads, cross_heads, n);
    if (st != SMARTTRIM_STATUS_OK) {
        rc = report("smarttrim_stats", st);
        goto done;
    }
    static const char *names[2] = {"text", "image"};
    for (size_t l = 0; l < layers; l++) {
        for (size_t s = 0; s < streams; s++) {
            printf("layer %zu %-5s:", l, s < 2 ? names[s] : "?");
            for (size_t i = 0; i < batch; i++) {
                size_t k = (l * streams + s) * batch + i;
                printf("  [%zu] kept %3d, heads %d self / %d cross", i, kept[k], self_heads[k],
                       cross_heads[k]);
            }
            printf("\n");
        }
    }

done:
    free(kept);
    free(self_heads);
    free(cross_heads);
    st = smarttrim_model_destroy(model);
    if (st != SMARTTRIM_STATUS_OK && rc == 0) rc = report("smarttrim_model_destroy", st);
    cuda_close(&cuda);
    return rc;
}
