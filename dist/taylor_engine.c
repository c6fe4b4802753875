/* taylor_engine.c — the Taylor mode's engines as the pipeline sees them (pipe_engine, pipeline.h):
 * adapters over kernels/taylor.h (CPU and CUDA), the plain-sum merge of records, the global key
 * mean, and the count of rows whose denominator took the fallback (kernels/taylor.h: policy).
 *
 * Key centering: load_kv sums this rank's keys per kv head (fp64) and one MPI_Allreduce on
 * the engine's communicator (the pipeline's) gives every rank the sums and the key count of the whole batch element, hence
 * mu = mean of all Nk keys. load_kv is called at the same point on every rank, so the blocking
 * collective there is safe. Ranks then merge per-query records {cnt, lin, sv, qs} by a plain sum:
 * the sum over ranks of each rank's D x D state and key sums, applied to the row's query.
 * Non-causal jobs on several ranks go one step further, also in load_kv: a second MPI_Allreduce
 * sums the ranks' states (S, z, sv: Hkv (D^2 + 2D) doubles), every rank then holds the state of
 * all keys, and computes only its share of each chunk's rows (rows [nq r / P, nq (r+1) / P), r and
 * P its rank and size in the communicator);
 * the other rows stay empty (zero) and the plain-sum merge puts each row together from the one
 * rank that computed it. So the query-side work (q S per row) divides by P too. Causal jobs
 * cannot do that (each row needs a different prefix of every rank's keys): every rank applies
 * its own prefix states to every row. */
#include "dist/merge.h"
#include "dist/pipeline.h"
#include "dist/taylor_engine.h"
#include "kernels/taylor.h"
#include "base/common.h"
#include <string.h>

typedef struct {
    host_merge hm;           /* first: the plain-sum merge of the slots' records, whose slot calls
                                take the context as theirs (dist/merge.h) */
    int h, hkv, d, causal;
    MPI_Comm comm;           /* the pipeline's: the collectives below and the merges */
    int rank, nranks;        /* in comm */
    int64_t rows, fallback, zeroed, empty;   /* (row, head) records finalized, by kind
                                                (pipeline_stats.taylor) */
    taylor_cpu *cpu;
    taylor_gpu *gpu;
    double *sums;            /* [hkv*d + 1]: key sums, then the key count */
    double *mu;              /* [hkv*d] */
    double *state;           /* [hkv][d*d + 2d]: non-causal state summed over ranks */
    int nsegs;
    const float *fresh;      /* the records init zeroed last (until a partial folds into them) */
    MPI_Datatype rec;
    MPI_Op op;
} taylor_ctx;

/* Plain elementwise sum of records (a user op: predefined MPI_SUM does not take derived types). */
static void rec_sum_fn(void *in, void *inout, int *len, MPI_Datatype *dt) {
    int bytes = 0;
    MPI_Type_size(*dt, &bytes);
    int64_t n = (int64_t)*len * (bytes / (int)sizeof(float));
    const float *a = in;
    float *b = inout;
    for (int64_t i = 0; i < n; i++) b[i] += a[i];
}

static void t_init(void *ctx, float *rec, int64_t nrows) {
    taylor_ctx *c = ctx;
    memset(rec, 0, sizeof(float) * (size_t)(nrows * c->h * taylor_rec_len(c->d)));
    c->fresh = rec;
}

/* Called from several threads at once (the pipeline finalizes a chunk's rows in parallel). */
static float t_finalize(void *ctx, const float *rec, float *o) {
    taylor_ctx *c = ctx;
    int kind;
    float lse = taylor_rec_finalize(rec, c->d, o, &kind);
#pragma omp atomic
    c->rows++;
    if (kind == TAYLOR_ROW_FALLBACK) {
#pragma omp atomic
        c->fallback++;
    }
    if (kind == TAYLOR_ROW_ZEROED) {
#pragma omp atomic
        c->zeroed++;
    }
    if (kind == TAYLOR_ROW_EMPTY) {
#pragma omp atomic
        c->empty++;
    }
    return lse;
}

/* COLLECTIVE (the engine's comm): the global key mean of this batch element. */
static void global_mean(taylor_ctx *c, const attn_kv_segment *segs, int nsegs) {
    int64_t hd = (int64_t)c->hkv * c->d;
    memset(c->sums, 0, sizeof(double) * (size_t)(hd + 1));
    taylor_key_sums(segs, nsegs, c->hkv, c->d, c->sums);
    for (int s = 0; s < nsegs; s++) c->sums[hd] += (double)segs[s].n;
    MPI_Allreduce(MPI_IN_PLACE, c->sums, (int)(hd + 1), MPI_DOUBLE, MPI_SUM, c->comm);
    for (int64_t e = 0; e < hd; e++) c->mu[e] = c->sums[hd] > 0 ? c->sums[e] / c->sums[hd] : 0.0;
}

/* Several ranks, non-causal: each rank computes rows [lo, hi) of the chunk with the global state. */
static int split_rows(const taylor_ctx *c, const attn_queries *q, attn_queries *mine, int64_t *lo) {
    *mine = *q;
    *lo = 0;
    if (c->causal || c->nranks == 1) return 1;
    int64_t a = q->nq * c->rank / c->nranks, b = q->nq * (c->rank + 1) / c->nranks;
    mine->q = (const float *)q->q + a * c->h * c->d;
    mine->nq = b - a;
    mine->q_pos0 = q->q_pos0 + a;
    *lo = a;
    return b > a;
}

/* COLLECTIVE (the engine's comm): the non-causal state summed over ranks (engine getter and setter given). */
static int global_state(taylor_ctx *c) {
    int64_t n = (int64_t)c->hkv * ((int64_t)c->d * c->d + 2 * c->d);
    MPI_Allreduce(MPI_IN_PLACE, c->state, (int)n, MPI_DOUBLE, MPI_SUM, c->comm);
    return 0;
}

static int t_cpu_load_kv(void *ctx, const attn_kv_segment *segs, int nsegs) {
    taylor_ctx *c = ctx;
    global_mean(c, segs, nsegs);
    taylor_cpu_load_kv(c->cpu, segs, nsegs, c->mu);
    if (!c->causal && c->nranks > 1) {
        taylor_cpu_get_state(c->cpu, c->state);
        global_state(c);
        taylor_cpu_set_state(c->cpu, c->state, (int64_t)c->sums[(int64_t)c->hkv * c->d]);
    }
    return 0;
}

static int t_cpu_partial(void *ctx, const attn_queries *q, float *rec, void (*progress)(void *),
                         void *arg) {
    taylor_ctx *c = ctx;
    attn_queries mine;
    int64_t lo;
    if (split_rows(c, q, &mine, &lo))
        taylor_cpu_partial(c->cpu, &mine, rec + lo * c->h * taylor_rec_len(c->d), progress, arg);
    return 0;
}

static int t_gpu_load_kv(void *ctx, const attn_kv_segment *segs, int nsegs) {
    taylor_ctx *c = ctx;
    global_mean(c, segs, nsegs);
    c->nsegs = nsegs;
    int rc = taylor_gpu_load_kv(c->gpu, segs, nsegs, c->mu);
    if (!c->causal && c->nranks > 1) {           /* every rank reaches the Allreduce */
        if (!rc) rc = taylor_gpu_get_state(c->gpu, c->state);
        global_state(c);
        if (!rc) rc = taylor_gpu_set_state(c->gpu, c->state, (int64_t)c->sums[(int64_t)c->hkv * c->d]);
    }
    return rc;
}

static int t_gpu_partial(void *ctx, const attn_queries *q, float *rec, void (*progress)(void *),
                         void *arg) {
    taylor_ctx *c = ctx;
    int fresh = rec == c->fresh;          /* init just zeroed it: the engine may overwrite */
    c->fresh = NULL;
    attn_queries mine;
    int64_t lo;
    if (!split_rows(c, q, &mine, &lo)) return 0;
    return taylor_gpu_partial(c->gpu, &mine, rec + lo * c->h * taylor_rec_len(c->d), fresh);
}

/* The slot calls (pipeline.h): the chunk into the slot's zeroed records, then the host merge. */
static int t_cpu_compute(void *ctx, int slot, const attn_queries *q) {
    taylor_ctx *c = ctx;
    float *rec = c->hm.rec[slot];
    t_init(c, rec, q->nq);
    return t_cpu_partial(c, q, rec, host_merge_progress, &c->hm);
}
static int t_gpu_compute(void *ctx, int slot, const attn_queries *q) {
    taylor_ctx *c = ctx;
    float *rec = c->hm.rec[slot];
    t_init(c, rec, q->nq);
    return t_gpu_partial(c, q, rec, host_merge_progress, &c->hm);
}
static void t_stats(void *ctx, pipeline_stats *st) {
    const taylor_ctx *c = ctx;
    st->taylor.rows = c->rows;
    st->taylor.fallback = c->fallback;
    st->taylor.zeroed = c->zeroed;
    st->taylor.empty = c->empty;
}
static void t_destroy(void *ctx) {
    taylor_ctx *c = ctx;
    host_merge_free(&c->hm);
    taylor_cpu_destroy(c->cpu);
    if (c->gpu) taylor_gpu_destroy(c->gpu);
    if (c->op != MPI_OP_NULL) MPI_Op_free(&c->op);
    if (c->rec != MPI_DATATYPE_NULL) MPI_Type_free(&c->rec);
    free(c->sums);
    free(c->mu);
    free(c->state);
    free(c);
}

/* An engine that could not start (a library call: out of memory, MPI): freed, e cleared. */
static int t_failed(taylor_ctx *c, pipe_engine *e) {
    t_destroy(c);
    memset(e, 0, sizeof *e);
    return -1;
}

int taylor_engine_create(const run_plan *pl, MPI_Comm comm, int device, int64_t kv_rows,
                         pipe_engine *e) {
    const fa_shape *s = &pl->s;
    const int64_t max_rows = pl->chunk;
    taylor_ctx *c = fa_try_calloc(1, sizeof *c, "taylor engine");
    if (!c) return -1;
    c->op = MPI_OP_NULL;
    c->rec = MPI_DATATYPE_NULL;
    c->h = (int)s->H;
    c->hkv = (int)s->Hkv;
    c->d = (int)s->D;
    c->causal = pl->causal;
    c->comm = comm;
    MPI_Comm_rank(comm, &c->rank);
    MPI_Comm_size(comm, &c->nranks);
    memset(e, 0, sizeof *e);
    if (pl->backend == BACKEND_CUDA) {
        if (taylor_gpu_create(device, kv_rows, max_rows, c->h, c->hkv, c->d, &c->gpu)) {
            if (c->gpu) taylor_gpu_destroy(c->gpu);
            free(c);
            return -1;
        }
        e->load_kv = t_gpu_load_kv;
        e->compute_chunk = t_gpu_compute;
    } else {
        c->cpu = taylor_cpu_create(c->h, c->hkv, c->d, pl->tiling.threads, pl->tiling.br);
        if (!c->cpu) return t_failed(c, e);
        e->load_kv = t_cpu_load_kv;
        e->compute_chunk = t_cpu_compute;
    }
    c->sums = fa_try_calloc((size_t)(c->hkv * c->d + 1), sizeof(double), "taylor key sums");
    c->mu = fa_try_calloc((size_t)(c->hkv * c->d), sizeof(double), "taylor key mean");
    c->state = fa_try_calloc((size_t)(c->hkv * ((int64_t)c->d * c->d + 2 * c->d)), sizeof(double),
                             "taylor state");
    if (!c->sums || !c->mu || !c->state) return t_failed(c, e);
    int R = (int)taylor_rec_len(c->d);
    if (MPI_Type_contiguous(R, MPI_FLOAT, &c->rec) != MPI_SUCCESS ||
        MPI_Type_commit(&c->rec) != MPI_SUCCESS ||
        MPI_Op_create(rec_sum_fn, 1, &c->op) != MPI_SUCCESS) {
        const char *line = "cannot create the MPI record type and sum operator of the Taylor mode";
        if (!fa_library_call) fa_fail("%s", line);
        fa_seterr("fa_long: %s", line);
        fa_set_errkind(FA_ERR_MPI);
        return t_failed(c, e);
    }
    e->compute = "float32";
    if (host_merge_init(&c->hm, comm, pl->merges_in_flight, max_rows, c->h, c->d, R, c->rec, c->op,
                        t_finalize, c))
        return t_failed(c, e);
    e->rec_len = R;
    e->ctx = c;
    e->merge_start = host_merge_slot_start;
    e->merge_wait = host_merge_slot_wait;
    e->fetch = host_merge_slot_fetch;
    e->stats = t_stats;
    e->destroy = t_destroy;
    return 0;
}
