/* gpu_none.c — the GPU engine in a build without CUDA: no devices, every call refuses. */
#ifndef FA_HAVE_CUDA
#include "kernels/gpu.h"
#include "base/common.h"
#include <stdio.h>

int gpu_count(void) { return 0; }
void gpu_warmup_start(int local_rank) {}
void gpu_warmup_join(void) {}
void gpu_describe(int dev, char *buf, int len) { snprintf(buf, (size_t)len, "none"); }
int gpu_engine_create(int device, int64_t kv_rows, int64_t max_rows, int h, int hkv, int d,
                      fa_compute ct, int64_t sub_rows, gpu_engine **out) {
    *out = NULL;
    return fa_seterr("this fa_long was built without CUDA (nvcc was not found at build time)");
}
int gpu_engine_load_kv(gpu_engine *e, const attn_kv_segment *segs, int nsegs) { return -1; }
int gpu_engine_partial(gpu_engine *e, const attn_queries *q, float *rec) { return -1; }
void gpu_engine_destroy(gpu_engine *e) {}
#endif

#ifndef FA_HAVE_CUDA
#include "kernels/gpu_job.h"
int gpu_job_create(const gpu_job_cfg *cfg, gpu_job **out) {
    *out = NULL;
    return fa_seterr("this fa_long was built without CUDA (nvcc was not found at build time)");
}
int gpu_job_load_kv(gpu_job *g, const attn_kv_segment *segs, int nsegs) { return -1; }
int gpu_job_kv_begin(gpu_job *g, const attn_kv_segment *segs, int nsegs) { return -1; }
int gpu_job_kv_ready(gpu_job *g, int64_t row0, int64_t n, const void *k, const void *v) { return -1; }
int gpu_job_partial(gpu_job *g, int slot, const attn_queries *q) { return -1; }
int gpu_job_state_to_host(gpu_job *g, int slot, int64_t n, float *rec) { return -1; }
int gpu_job_merge_start(gpu_job *g, int slot, int64_t n, int root) { return -1; }
int gpu_job_merge_wait(gpu_job *g, int slot) { return -1; }
int gpu_job_final_to_host(gpu_job *g, int slot, int64_t n, void *o, float *lse) { return -1; }
void gpu_job_get_stats(gpu_job *g, gpu_job_stats *s) {}
void gpu_job_destroy(gpu_job *g) {}
double gpu_link_gbps(int device) { return 0; }
int64_t gpu_free_bytes(int device) { return 0; }
int gpu_uuid(int device, unsigned char uuid[16]) { return -1; }
#endif

#ifndef FA_HAVE_CUDA
#include "kernels/gpu_tune.h"
/* the tuner's GPU timing (kernels/cuda/tune.cu): no GPU in this build */
double cm_gpu_time_variant(int variant, int64_t nq, int64_t nk, int h, int hkv, int d,
                           int causal, int dtype, int reps) { return -1; }
double cm_gpu_time_paged(int variant, int64_t chunk, int window, int64_t nq, int64_t kv_rows,
                         int64_t nk_total, int h, int hkv, int d, int causal, int dtype,
                         int64_t budget, int64_t block_rows, int ring, int reps) { return -1; }
int64_t cm_gpu_smem_per_block(void) { return 0; }
#endif
