/* engines.c — the exact-attention engines as the pipeline sees them (pipe_engine, pipeline.h):
 * thin adapters over kernels/cpu (cpu_attn_partial) and kernels/cuda (gpu_job_*: keys resident
 * or paged, device state per pipeline slot), all of them on the same slot calls: the merge
 * through NCCL on the device, or through the host (dist/merge.h: host_merge). */
#include "dist/merge.h"
#include "dist/pipeline.h"
#include "dist/taylor_engine.h"
#include "kernels/gpu.h"
#include "kernels/gpu_job.h"
#include "base/common.h"
#include <stdlib.h>
#include <string.h>

/* attn.h's element types are io's fa_dtype values (the plan's transfer types pass as they are) */
_Static_assert(ATTN_F32 == (int)FA_F32 && ATTN_F16 == (int)FA_F16 && ATTN_BF16 == (int)FA_BF16,
               "kernels/attn.h ATTN_* must equal io/h5io.h fa_dtype");

typedef struct {
    host_merge hm;           /* first: the MPI merge (CPU; CUDA without NCCL), whose slot calls
                                take the context as theirs (dist/merge.h) */
    int h, d;
    cpu_tiling tiling;
    const attn_kv_segment *segs;
    int nsegs;
    int64_t kv_total, kv_ready;   /* the segments' rows, and those in memory (streamed keys) */
    int64_t *kv_done;             /* [slots] rows folded into each slot's chunk so far */
    attn_kv_segment *sub;         /* [nsegs] the part of the segments one call folds in */
    gpu_job *job;
    rec_merge merge;
    fa_dtype o_xfer;              /* the o type the pipeline takes (plan.o_xfer) */
    float *o32;                   /* a chunk of float32 rows: the host merge's, before o_xfer */
} exact_ctx;

static float exact_finalize(void *ctx, const float *rec, float *o) {
    return attn_rec_finalize(rec, ((exact_ctx *)ctx)->d, o);
}

static int cpu_kv_begin(void *ctx, const attn_kv_segment *segs, int nsegs) {
    exact_ctx *c = ctx;
    c->segs = segs;
    c->nsegs = nsegs;
    c->kv_total = c->kv_ready = 0;
    for (int i = 0; i < nsegs; i++) c->kv_total += segs[i].n;
    free(c->sub);
    c->sub = fa_try_calloc((size_t)nsegs + 1, sizeof *c->sub, "key parts");
    return c->sub ? 0 : -1;
}
/* the rows are in the segments already (the shard): only their count is taken */
static int cpu_kv_ready(void *ctx, int64_t row0, int64_t n, const void *k, const void *v) {
    ((exact_ctx *)ctx)->kv_ready = row0 + n;
    return 0;
}
static int cpu_load_kv(void *ctx, const attn_kv_segment *segs, int nsegs) {
    if (cpu_kv_begin(ctx, segs, nsegs)) return -1;
    return cpu_kv_ready(ctx, 0, ((exact_ctx *)ctx)->kv_total, NULL, NULL);
}

/* The chunk into the slot's records, driving the merges in flight between work items: every
 * key (ATTN_KEYS_ALL: the segments as they are), or the rows made ready since the chunk's last
 * call (streamed keys, pipeline.h), continuing its state. */
static int cpu_compute(void *ctx, int slot, const attn_queries *q) {
    exact_ctx *c = ctx;
    float *rec = c->hm.rec[slot];
    if (q->keys == ATTN_KEYS_ALL || q->keys == ATTN_KEYS_FIRST) {
        attn_state_init(rec, q->nq, c->h, c->d);
        c->kv_done[slot] = 0;
    }
    if (q->keys == ATTN_KEYS_ALL) {
        if (c->nsegs > 0) cpu_attn_partial(q, c->segs, c->nsegs, rec, &c->tiling, host_merge_progress, &c->hm);
        return 0;
    }
    const int64_t a = c->kv_done[slot], e = q->keys == ATTN_KEYS_LAST ? c->kv_total : c->kv_ready;
    const int64_t row = (int64_t)q->hkv * q->d;
    int n = 0;
    int64_t off = 0;
    for (int i = 0; i < c->nsegs; off += c->segs[i].n, i++) {
        const int64_t lo = a > off ? a : off, hi = e < off + c->segs[i].n ? e : off + c->segs[i].n;
        if (hi <= lo) continue;
        c->sub[n] = c->segs[i];
        c->sub[n].k = (const float *)c->segs[i].k + (lo - off) * row;
        c->sub[n].v = (const float *)c->segs[i].v + (lo - off) * row;
        c->sub[n].n = hi - lo;
        c->sub[n].pos0 = c->segs[i].pos0 + (lo - off);
        n++;
    }
    if (n > 0) cpu_attn_partial(q, c->sub, n, rec, &c->tiling, host_merge_progress, &c->hm);
    c->kv_done[slot] = e;
    return 0;
}

static void exact_destroy(void *ctx) {
    exact_ctx *c = ctx;
    host_merge_free(&c->hm);
    free(c->kv_done);
    free(c->sub);
    free(c->o32);
    if (c->job) gpu_job_destroy(c->job);
    rec_merge_free(&c->merge);
    free(c);
}

/* 0, or -1 with the line (a library call out of memory, or MPI's type): exact_destroy frees
 * what was made */
static int exact_common(const run_plan *pl, exact_ctx *c, pipe_engine *e) {
    const fa_shape *s = &pl->s;
    c->h = (int)s->H;
    c->d = (int)s->D;
    memset(e, 0, sizeof *e);
    if (rec_merge_init(&c->merge, c->d)) return -1;
    c->kv_done = fa_try_calloc((size_t)pl->merges_in_flight, sizeof *c->kv_done, "key parts");
    if (!c->kv_done) return -1;
    e->rec_len = c->d + 2;
    e->overflow_is_error = 1;     /* exact attention: a visible row is finite, or overflowed */
    e->ctx = c;
    e->destroy = exact_destroy;
    return 0;
}

/* The records of `slots` chunks on the host, merged over comm with the record operator. */
static int exact_host_merge(const run_plan *pl, MPI_Comm comm, exact_ctx *c, pipe_engine *e) {
    if (host_merge_init(&c->hm, comm, pl->merges_in_flight, pl->chunk, c->h, c->d, c->d + 2,
                        c->merge.rec, c->merge.op, exact_finalize, c))
        return -1;
    e->merge_start = host_merge_slot_start;
    e->merge_wait = host_merge_slot_wait;
    e->fetch = host_merge_slot_fetch;
    return 0;
}

/* An engine that could not start (a library call: out of memory, MPI): freed, e cleared. */
static int exact_failed(exact_ctx *c, pipe_engine *e) {
    exact_destroy(c);
    memset(e, 0, sizeof *e);
    return -1;
}

static int engine_exact_cpu(const run_plan *pl, MPI_Comm comm, pipe_engine *e) {
    exact_ctx *c = fa_try_calloc(1, sizeof *c, "engine");
    if (!c) return -1;
    c->tiling = pl->tiling;                 /* the planner's tile, threads and tile products */
    if (exact_common(pl, c, e) || exact_host_merge(pl, comm, c, e)) return exact_failed(c, e);
    e->compute = "float32";
    e->load_kv = cpu_load_kv;
    e->kv_begin = cpu_kv_begin;
    e->kv_ready = cpu_kv_ready;
    e->compute_chunk = cpu_compute;
    return 0;
}

/* ---- CUDA: kernels/cuda/gpu_job.cu, keys resident or paged, device state per slot ---------- */
static int job_load_kv(void *ctx, const attn_kv_segment *segs, int nsegs) {
    return gpu_job_load_kv(((exact_ctx *)ctx)->job, segs, nsegs);
}
static int job_kv_begin(void *ctx, const attn_kv_segment *segs, int nsegs) {
    return gpu_job_kv_begin(((exact_ctx *)ctx)->job, segs, nsegs);
}
static int job_kv_ready(void *ctx, int64_t row0, int64_t n, const void *k, const void *v) {
    return gpu_job_kv_ready(((exact_ctx *)ctx)->job, row0, n, k, v);
}
static int job_compute(void *ctx, int slot, const attn_queries *q) {
    return gpu_job_partial(((exact_ctx *)ctx)->job, slot, q);
}
/* without NCCL: the slot's device state to the host records (waits for its compute), then the
 * MPI merge */
static int job_host_merge_start(void *ctx, int slot, int64_t n, int root) {
    exact_ctx *c = ctx;
    if (gpu_job_state_to_host(c->job, slot, n, c->hm.rec[slot])) return -1;
    host_merge_start(&c->hm, slot, n, root);
    return 0;
}
/* without NCCL, the finalized float32 rows of the host merge in the pipeline's o type (the GPU
 * gives o in its file type where it merges on the device: typed transfers) */
static int job_host_fetch(void *ctx, int slot, int64_t n, void *o, float *lse) {
    exact_ctx *c = ctx;
    if (c->o_xfer == FA_F32) return host_merge_slot_fetch(ctx, slot, n, o, lse);
    host_merge_fetch(&c->hm, slot, n, c->o32, lse);
    fa_from_f32(c->o_xfer, c->o32, o, n * c->h * c->d);
    return 0;
}
static int job_merge_start(void *ctx, int slot, int64_t n, int root) {
    return gpu_job_merge_start(((exact_ctx *)ctx)->job, slot, n, root);
}
static int job_merge_wait(void *ctx, int slot) {
    return gpu_job_merge_wait(((exact_ctx *)ctx)->job, slot);
}
static int job_fetch(void *ctx, int slot, int64_t n, void *o, float *lse) {
    return gpu_job_final_to_host(((exact_ctx *)ctx)->job, slot, n, o, lse);
}
static void job_stats(void *ctx, pipeline_stats *st) {
    gpu_job_stats g;
    gpu_job_get_stats(((exact_ctx *)ctx)->job, &g);
    st->t_compute = g.compute_ms * 1e-3;        /* device time, not the host's enqueue time */
    st->t_comm = g.comm_ms * 1e-3;
    st->t_copy = g.copy_ms * 1e-3;
    st->t_exposed = g.exposed_ms * 1e-3;
    st->t_idle = g.idle_ms * 1e-3;
    st->t_comm_min = g.comm_min_ms * 1e-3;
    st->bytes_comm_min = g.comm_min_bytes;
    st->bytes_h2d = g.bytes_h2d;
    st->bytes_d2h = g.bytes_d2h;
    st->bytes_paged = g.bytes_paged;
}

/* The merge as the plan says (pl->merge): NCCL on the device (nccl: its communicator), none
 * (one rank: finalized on the device), or the records to the host and MPI. */
static int engine_exact_cuda(const run_plan *pl, MPI_Comm comm, int device, void *nccl,
                             pipe_engine *e) {
    const fa_shape *s = &pl->s;
    const int by_nccl = pl->merge == MERGE_NCCL;
    if (by_nccl && !nccl) return fa_seterr("the plan merges through NCCL, which is not up");
    gpu_job_cfg cfg = {.device = device, .h = (int)s->H, .hkv = (int)s->Hkv, .d = (int)s->D,
                       .ct = pl->compute, .slots = pl->merges_in_flight, .max_rows = pl->chunk,
                       .nccl_comm = by_nccl ? nccl : NULL, .nccl_size = by_nccl ? pl->nranks : 1,
                       .plan = pl->kv,        /* the planner's key plan for this rank */
                       .variant = pl->variant,
                       .mask = &pl->mask,     /* windows, documents, softcap, ALiBi */
                       .q_type = (int)pl->in_type[0],   /* q as the host hands it */
                       .o_type = (int)pl->o_xfer,   /* o as the host takes it */
                       .piece_rows = pl->key_read_rows};
    exact_ctx *c = fa_calloc(1, sizeof *c, "engine");
    if (gpu_job_create(&cfg, &c->job)) {
        free(c);
        return -1;
    }
    if (exact_common(pl, c, e)) return exact_failed(c, e);
    e->compute = pl->compute == FA_COMPUTE_FP16 ? "float16" : "bfloat16";
    e->load_kv = job_load_kv;
    e->kv_begin = job_kv_begin;
    e->kv_ready = job_kv_ready;
    e->copies_keys = engine_copies_keys(pl);   /* kv_ready uploads or lays out what it is handed */
    e->compute_chunk = job_compute;
    if (pl->merge != MERGE_MPI) {              /* merged on the device (alone: nothing to merge) */
        e->merge_start = job_merge_start;
        e->merge_wait = job_merge_wait;
        e->fetch = job_fetch;
    } else {                                  /* states to the host, MPI merge */
        if (exact_host_merge(pl, comm, c, e)) return exact_failed(c, e);
        e->merge_start = job_host_merge_start;
        c->o_xfer = pl->o_xfer;
        if (c->o_xfer != FA_F32) {
            c->o32 = fa_aligned_alloc((size_t)(pl->chunk * s->H * s->D) * sizeof(float), "merged rows");
            e->fetch = job_host_fetch;
        }
    }
    e->stats = job_stats;
    return 0;
}

int engine_create(const run_plan *pl, MPI_Comm comm, int device, int64_t kv_rows, void *nccl_comm,
                  pipe_engine *e) {
    const int exact_cuda = pl->mode == MODE_EXACT && pl->backend == BACKEND_CUDA;
    if (!exact_cuda && pl->merge != MERGE_MPI)   /* the CPU and Taylor engines merge on the host */
        return fa_seterr("the %s engine on %s merges through MPI, not as the plan says (%s)",
                         fa_mode_name(pl->mode), fa_backend_name(pl->backend), merge_path_name(pl->merge));
    if (pl->mode == MODE_TAYLOR)   /* first-order Taylor linear attention: dist/taylor_engine.c */
        return taylor_engine_create(pl, comm, device, kv_rows, e);
    if (pl->backend == BACKEND_CUDA) return engine_exact_cuda(pl, comm, device, nccl_comm, e);
    return engine_exact_cpu(pl, comm, e);
}

/* The exact CUDA engine: gpu_job_kv_ready copies every row it is handed (through pinned staging
 * to the device, or into its pinned blocks) before it returns. The CPU engines compute on the
 * segments' rows where they are; the Taylor engines take their keys whole (load_kv). */
int engine_copies_keys(const run_plan *pl) {
    return pl->mode == MODE_EXACT && pl->backend == BACKEND_CUDA;
}

void engine_free(pipe_engine *e) {
    if (e->destroy) e->destroy(e->ctx);
    memset(e, 0, sizeof *e);
}
