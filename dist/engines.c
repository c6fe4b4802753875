/* engines.c — the exact-attention engines as the pipeline sees them (pipe_engine, pipeline.h):
 * thin adapters over kernels/cpu (cpu_attn_partial) and kernels/cuda (gpu_engine_*). */
#include "dist/merge.h"
#include "dist/pipeline.h"
#include "dist/taylor_engine.h"
#include "kernels/gpu.h"
#include "runner/common.h"
#include <string.h>

typedef struct {
    int h, d;
    cpu_tiling tiling;
    const attn_kv_segment *segs;
    int nsegs;
    gpu_engine *gpu;
    rec_merge merge;
} exact_ctx;

static void exact_init(void *ctx, float *rec, int64_t nrows) {
    exact_ctx *c = ctx;
    attn_state_init(rec, nrows, c->h, c->d);
}

static float exact_finalize(void *ctx, const float *rec, float *o) {
    return attn_rec_finalize(rec, ((exact_ctx *)ctx)->d, o);
}

static int cpu_load_kv(void *ctx, const attn_kv_segment *segs, int nsegs) {
    exact_ctx *c = ctx;
    c->segs = segs;
    c->nsegs = nsegs;
    return 0;
}

static int cpu_partial(void *ctx, const attn_queries *q, float *rec, void (*progress)(void *),
                       void *arg) {
    exact_ctx *c = ctx;
    if (c->nsegs > 0) cpu_attn_partial(q, c->segs, c->nsegs, rec, &c->tiling, progress, arg);
    return 0;
}

static int gpu_load_kv(void *ctx, const attn_kv_segment *segs, int nsegs) {
    exact_ctx *c = ctx;
    c->nsegs = nsegs;
    return nsegs > 0 ? gpu_engine_load_kv(c->gpu, segs, nsegs) : 0;
}

static int gpu_partial(void *ctx, const attn_queries *q, float *rec, void (*progress)(void *),
                       void *arg) {
    exact_ctx *c = ctx;
    return c->nsegs > 0 ? gpu_engine_partial(c->gpu, q, rec) : 0;
}

static void exact_destroy(void *ctx) {
    exact_ctx *c = ctx;
    if (c->gpu) gpu_engine_destroy(c->gpu);
    rec_merge_free(&c->merge);
    free(c);
}

static void exact_common(const fa_shape *s, exact_ctx *c, pipe_engine *e) {
    c->h = (int)s->H;
    c->d = (int)s->D;
    rec_merge_init(&c->merge, c->d);
    memset(e, 0, sizeof *e);
    e->rec_len = c->d + 2;
    e->rec_type = c->merge.rec;
    e->op = c->merge.op;
    e->ctx = c;
    e->init = exact_init;
    e->finalize = exact_finalize;
    e->destroy = exact_destroy;
}

static int engine_exact_cpu(const fa_job *job, const fa_shape *s, pipe_engine *e) {
    exact_ctx *c = fa_calloc(1, sizeof *c, "engine");
    c->tiling = (cpu_tiling){.br = job->br, .bc = job->bc, .threads = job->threads};
    exact_common(s, c, e);
    e->name = "cpu";
    e->compute = "float32";
    e->load_kv = cpu_load_kv;
    e->partial = cpu_partial;
    return 0;
}

static int engine_exact_cuda(const fa_job *job, const fa_shape *s, int device, int64_t kv_rows,
                      int64_t max_rows, pipe_engine *e) {
    exact_ctx *c = fa_calloc(1, sizeof *c, "engine");
    if (gpu_engine_create(device, kv_rows, max_rows, (int)s->H, (int)s->Hkv, (int)s->D,
                          job->compute, &c->gpu)) {
        free(c);
        return -1;
    }
    exact_common(s, c, e);
    e->name = "cuda";
    e->compute = job->compute == FA_COMPUTE_FP16 ? "float16" : "bfloat16";
    e->load_kv = gpu_load_kv;
    e->partial = gpu_partial;
    return 0;
}

int engine_create(const fa_job *job, const fa_shape *s, fa_backend backend, int device,
                  int64_t kv_rows, int64_t max_rows, pipe_engine *e) {
    if (job->mode == MODE_TAYLOR)   /* first-order Taylor linear attention: dist/taylor_engine.c */
        return taylor_engine_create(job, s, backend, device, kv_rows, max_rows, e);
    if (backend == BACKEND_CUDA) return engine_exact_cuda(job, s, device, kv_rows, max_rows, e);
    return engine_exact_cpu(job, s, e);
}

void engine_free(pipe_engine *e) {
    if (e->destroy) e->destroy(e->ctx);
    memset(e, 0, sizeof *e);
}
