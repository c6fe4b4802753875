/* gpu_none.c — the GPU engine in a build without CUDA: no devices, every call refuses. */
#ifndef FA_HAVE_CUDA
#include "kernels/gpu.h"
#include "runner/common.h"
#include <stdio.h>

int gpu_count(void) { return 0; }
void gpu_describe(int dev, char *buf, int len) { snprintf(buf, (size_t)len, "none"); }
int gpu_engine_create(int device, int64_t kv_rows, int64_t max_rows, int h, int hkv, int d,
                      fa_compute ct, gpu_engine **out) {
    *out = NULL;
    return fa_seterr("this fa_long was built without CUDA (nvcc was not found at build time)");
}
int gpu_engine_load_kv(gpu_engine *e, const attn_kv_segment *segs, int nsegs) { return -1; }
int gpu_engine_partial(gpu_engine *e, const attn_queries *q, float *rec) { return -1; }
void gpu_engine_destroy(gpu_engine *e) {}
#endif
