/* pipeline.c — the chunked merge pipeline (see pipeline.h).
 *
 * Chunk i covers query rows [r0, r0+n) of batch element b; chunks run b-major. Its merged result
 * lands on owner(i) = i mod P (parallel HDF5: each rank writes its own rows) or on rank 0 (serial
 * HDF5: rank 0 writes everything). Writes are collective per group of G = P chunks (1 when serial),
 * so every rank makes the same sequence of collective calls. Up to `window` merges are in flight
 * while the next chunk computes; the master thread drives their progress from inside the engine. */
#include "dist/pipeline.h"
#include "dist/merge.h"
#include "dist/shard.h"
#include "dist/gpu_comm.h"
#include "kernels/gpu_job.h"
#include "kernels/attn.h"
#include "kernels/gpu.h"
#include "base/agree.h"
#include "base/common.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile sig_atomic_t fa_stop_requested = 0;

double pipeline_flops(const fa_shape *s, const attn_mask *m, int64_t b, int64_t r0, int64_t n) {
    int64_t pairs = b >= 0 ? mask_pairs(m, b, r0, r0 + n, 0, s->Nk)
                           : mask_pairs_batch(m, s->B, r0, r0 + n, 0, s->Nk);
    return 4.0 * (double)s->D * (double)s->H * (double)pairs;
}

typedef struct {
    MPI_Comm comm;
    int rank, nranks, serial_io;
    const fa_shape *s;
    int64_t chunk, nchunks_per_b, nchunks;
    int window;
    pipe_engine *eng;
    float **rec;           /* [window] chunk*H records each */
    MPI_Request *req;      /* [window] */
    float *o_out, *lse_out;/* finalized rows of the chunk this rank owns in the current group */
    int64_t pend_b, pend_r0, pend_n;
    h5out *out;
    pipeline_stats *st;
    progress *pg;
    const run_plan *plan;
    int stopping;              /* the ranks agreed to stop after the chunks in flight */
    int64_t written;           /* chunks [0, written) are in the file (the last group's write) */
    /* several ranks on a node (the default, unless FA_Q_READ=rank|shared): one query chunk per
     * node, read by the node's first rank into memory every rank of the node maps (MPI shared
     * window) */
    MPI_Comm node;
    int node_rank, node_size;
    MPI_Win qwin;
    float *qnode;
    double checkpoint_s, last_checkpoint;
    /* exact mode with finite inputs: a row that sees a key must come out finite, else its
     * scores (or its sum of weighted values) overflowed float32 (note_overflow) */
    int check_overflow;
    float *qmax_chunk;         /* [nchunks] largest |q| this rank read for each chunk */
    float *kmax_b;             /* [B] largest |k| of this rank's keys of each batch element */
    double vmax_all;           /* largest |v| of the current batch element, over every rank */
    int64_t ovf_chunk, ovf_b, ovf_row, ovf_head;   /* the first such row this rank owns (-1) */
    float ovf_lse;
} pipe_state;

static void chunk_rows(const pipe_state *p, int64_t i, int64_t *b, int64_t *r0, int64_t *n) {
    *b = i / p->nchunks_per_b;
    *r0 = (i % p->nchunks_per_b) * p->chunk;
    *n = p->s->Nq - *r0 < p->chunk ? p->s->Nq - *r0 : p->chunk;
}

static int owner(const pipe_state *p, int64_t i) {
    return p->serial_io ? 0 : (int)(i % p->nranks);
}

static int64_t group_size(const pipe_state *p) { return p->serial_io ? 1 : p->nranks; }

/* Called by the engine from the master thread: lets MPI move the merges in flight. */
static void drive_merges(void *arg) {
    pipe_state *p = arg;
    int flag;
    MPI_Testall(p->window, p->req, &flag, MPI_STATUSES_IGNORE);
}

/* The owner of chunk i, rows [r0, r0+n) of batch b finalized into o_out/lse_out: notes the first
 * (row, head) that sees a key and still has a non-finite lse (its scores overflowed float32) or,
 * where the values are large enough for it, a non-finite o. Finite inputs never give either
 * otherwise: a finite score maximum makes the softmax sum >= 1. */
static void note_overflow(pipe_state *p, int64_t i, int64_t b, int64_t r0, int64_t n) {
    if (!p->check_overflow || p->ovf_chunk >= 0) return;
    const int64_t H = p->s->H, D = p->s->D;
    /* o = sum p_j v_j / sum p_j stays within max |v|; its running sums within Nk max |v| */
    const int scan_o = p->vmax_all * (double)p->s->Nk > 1e38;
    const attn_mask *mask = &p->plan->mask;
    int64_t bad = INT64_MAX;
#pragma omp parallel for reduction(min : bad) schedule(static) if (n * H >= 4096)
    for (int64_t x = 0; x < n * H; x++) {
        mask_run run = mask_row(mask, b, r0 + x / H);
        if (run.hi <= run.lo) continue;                   /* sees no key: o = 0, lse = -inf */
        int ok = isfinite(p->lse_out[x]);
        for (int64_t d = 0; ok && scan_o && d < D; d++) ok = isfinite(p->o_out[x * D + d]);
        if (!ok && x < bad) bad = x;
    }
    if (bad == INT64_MAX) return;
    p->ovf_chunk = i;
    p->ovf_b = b;
    p->ovf_row = r0 + bad / H;
    p->ovf_head = bad % H;
    p->ovf_lse = p->lse_out[bad];
}

/* COLLECTIVE, once some rank noted an overflow: -1 on every rank, with one line from the rank
 * that owns the first such chunk, naming the row and how far the inputs reach past float32. */
static int overflow_error(pipe_state *p) {
    int64_t mine = p->ovf_chunk >= 0 ? p->ovf_chunk : INT64_MAX, first;
    MPI_Allreduce(&mine, &first, 1, MPI_INT64_T, MPI_MIN, p->comm);
    float m[3] = {p->qmax_chunk[first], p->kmax_b[first / p->nchunks_per_b], (float)p->vmax_all}, g[3];
    MPI_Allreduce(m, g, 3, MPI_FLOAT, MPI_MAX, p->comm);
    const int here = mine == first;
    if (here) {
        const double sc = p->plan->scale;
        const double reach = sc * (double)p->s->D * (double)g[0] * (double)g[1];
        if (!isfinite(p->ovf_lse) || reach > 3.0e38)
            fa_seterr("input '%s': the scores of query row %lld (batch %lld, head %lld) overflow "
                      "float32 (lse %g): |q| reaches %.3g and |k| %.3g, so |scale q.k| can reach "
                      "%.3g (scale %.3g, D %lld), past float32's 3.4e+38; scale q or k down or "
                      "pass a smaller --scale", p->plan->input, (long long)p->ovf_row,
                      (long long)p->ovf_b, (long long)p->ovf_head, p->ovf_lse, g[0], g[1], reach,
                      sc, (long long)p->s->D);
        else
            fa_seterr("input '%s': o of query row %lld (batch %lld, head %lld) overflows float32: "
                      "|v| reaches %.3g over %lld keys, past float32's 3.4e+38 in the weighted "
                      "sums; scale v down", p->plan->input, (long long)p->ovf_row,
                      (long long)p->ovf_b, (long long)p->ovf_head, g[2], (long long)p->s->Nk);
    }
    return fa_agree(p->comm, here ? -1 : 0, -1);
}

/* COLLECTIVE. Every rank writes the chunk it owns in the current group (or nothing); chunks
 * [0, done) are then complete. Then the ranks agree whether to stop early (a signal reached any
 * rank) and whether a checkpoint is due (rank 0's clock), and make a checkpoint durable. */
static int write_group(pipe_state *p, int64_t done) {
    double t0 = fa_now(), s0 = fa_sync_s;
    const int64_t rows = p->pend_n;
    int rc = h5out_write_rows(p->out, p->pend_n ? p->pend_b : 0, p->pend_n ? p->pend_r0 : 0,
                              p->pend_n, p->o_out, p->lse_out);
    p->pend_n = 0;
    if (rc) return -1;
    {   /* o in its element type, lse in float32 */
        const int64_t wb = rows * p->s->H *
                           (p->s->D * (int64_t)fa_dtype_size(p->plan->o_type) + (p->plan->lse ? 4 : 0));
        const double tw = fa_now() - t0 - (fa_sync_s - s0);
        p->st->bytes_written += wb;
        if (wb > 0 && tw > 0 && wb / tw > p->st->write_best_bps) p->st->write_best_bps = wb / tw;
    }
    p->written = done;
    int flags = fa_stop_requested ? 1 : 0, all;
    if (p->rank == 0 && p->checkpoint_s > 0 && fa_now() - p->last_checkpoint >= p->checkpoint_s)
        flags |= 2;
    if (p->ovf_chunk >= 0) flags |= 4;
    const double ta = MPI_Wtime();
    MPI_Allreduce(&flags, &all, 1, MPI_INT, MPI_BOR, p->comm);
    fa_sync_s += MPI_Wtime() - ta;
    if (all & 4) return overflow_error(p);
    if ((all & 1) && !p->stopping) {  /* durable at once: the chunks in flight may take long */
        p->stopping = 1;
        if (done < p->nchunks) rc = h5out_checkpoint(p->out, done);
    } else if ((all & 2) && done < p->nchunks && !p->stopping) {
        rc = h5out_checkpoint(p->out, done);
        p->last_checkpoint = fa_now();
    }
    const double ds = fa_sync_s - s0;
    p->st->t_write += fa_now() - t0 - ds;
    p->st->t_sync += ds;
    return rc;
}

/* COLLECTIVE, between the groups' writes: a stop is taken at the next chunk rather than at the
 * next group of P chunks (with many ranks and long chunks a group can outlast Slurm's KillWait). */
static int stop_agreed(pipe_state *p, int *rc) {
    int mine = fa_stop_requested ? 1 : 0, all;
    const double ta = MPI_Wtime();
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_BOR, p->comm);
    p->st->t_sync += MPI_Wtime() - ta;
    if (all) {                   /* what is written is durable at once, as in write_group */
        p->stopping = 1;
        if (p->written > 0) *rc = h5out_checkpoint(p->out, p->written);
    }
    return all;
}

/* Waits for chunk i's merge; the owner finalizes it; at the end of a group every rank writes. */
static int finish_chunk(pipe_state *p, int64_t i) {
    int slot = (int)(i % p->window);
    int64_t b, r0, n;
    chunk_rows(p, i, &b, &r0, &n);
    double t0 = fa_now();
    int64_t H = p->s->H, D = p->s->D, R = p->eng->rec_len;
    if (p->eng->device_merge) {                    /* merged on the device: the owner fetches */
        if (p->eng->merge_wait(p->eng->ctx, slot)) fa_fail("%s", fa_errmsg());
        p->st->t_wait += fa_now() - t0;
        t0 = fa_now();
        if (owner(p, i) == p->rank) {
            if (p->eng->fetch(p->eng->ctx, slot, n, p->o_out, p->lse_out)) fa_fail("%s", fa_errmsg());
            p->pend_b = b;
            p->pend_r0 = r0;
            p->pend_n = n;
        }
    } else {
        MPI_Wait(&p->req[slot], MPI_STATUS_IGNORE);
        p->st->t_wait += fa_now() - t0;
        t0 = fa_now();
    }
    if (!p->eng->device_merge && owner(p, i) == p->rank) {
        const float *rec = p->rec[slot];
        const pipe_engine *e = p->eng;       /* engines' finalize functions are thread-safe */
#pragma omp parallel for schedule(static) if (n * H >= 4096)
        for (int64_t r = 0; r < n * H; r++)
            p->lse_out[r] = e->finalize(e->ctx, rec + r * R, p->o_out + r * D);
        p->pend_b = b;
        p->pend_r0 = r0;
        p->pend_n = n;
    }
    if (owner(p, i) == p->rank) note_overflow(p, i, b, r0, n);
    p->st->t_final += fa_now() - t0;
    progress_chunk(p->pg, pipeline_flops(p->s, &p->plan->mask, b, r0, n));
    int64_t G = group_size(p);
    if (i % G == G - 1 || i == p->nchunks - 1) return write_group(p, i + 1);
    return 0;
}

/* COLLECTIVE. Every rank needs the whole chunk of queries [r0, r0+n); the plan's q_read says how.
 * node (the default), where a node holds several ranks: the node's first rank reads the chunk
 * into a shared-memory window the node's ranks all read from (no copies), so the file is read
 * once per node (measured against `rank`: bench/NOTES_SCALING.md). rank: each rank reads the
 * chunk itself (one collective read of the same rows), as on a node of one rank. shared: each
 * rank reads one slice and the slices are shared (MPI_Allgatherv).
 * *qout: where the chunk is (q, or the node's window). */
static int read_queries(pipe_state *p, h5in *in, int64_t b, int64_t r0, int64_t n, float *q,
                        const float **qout, int check_finite) {
    const int P = p->nranks;
    const int64_t row = p->s->H * p->s->D;
    *qout = q;
    if (p->qnode) {
        /* every rank of the node is done with the last chunk (its engine copied or used it
         * before returning), so the reader may overwrite it */
        double tb = MPI_Wtime();              /* barriers are waits: the report's sync phase */
        MPI_Barrier(p->node);
        fa_sync_s += MPI_Wtime() - tb;
        row_range qr = {r0, n};
        int rc = h5in_read_rows(in, "q", b, &qr, p->node_rank == 0 ? 1 : 0, p->qnode, check_finite);
        if (rc == 0) {            /* the same status on every rank (h5in_read_rows agrees) */
            MPI_Win_sync(p->qwin);
            tb = MPI_Wtime();
            MPI_Barrier(p->node);
            fa_sync_s += MPI_Wtime() - tb;
            MPI_Win_sync(p->qwin);
            *qout = p->qnode;
        }
        return rc;
    }
    if (P == 1 || n * row > INT32_MAX || p->plan->q_read != Q_READ_SHARED) {
        row_range qr = {r0, n};
        return h5in_read_rows(in, "q", b, &qr, 1, q, check_finite);
    }
    int *counts = fa_malloc(sizeof(int) * 2 * (size_t)P, "query slices"), *displs = counts + P;
    for (int r = 0; r < P; r++) {
        int64_t a = n * r / P, e = n * (r + 1) / P;
        counts[r] = (int)((e - a) * row);
        displs[r] = (int)(a * row);
    }
    int64_t a = n * p->rank / P, e = n * (p->rank + 1) / P;
    row_range mine = {r0 + a, e - a};
    int rc = h5in_read_rows(in, "q", b, &mine, e > a ? 1 : 0, q + a * row, check_finite);
    if (rc == 0)   /* same status on every rank (h5in_read_rows agrees), so all or none gather */
        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, q, counts, displs, MPI_FLOAT, p->comm);
    free(counts);
    return rc;
}

/* Reads this rank's keys and values of batch element b into kbuf/vbuf; fills segs. */
static int load_kv(const run_plan *plan, h5in *in, const fa_shape *s, const kv_shard *sh, int64_t b,
                   float *kbuf, float *vbuf, attn_kv_segment *segs) {
    int fin = !plan->allow_nonfinite;
    if (h5in_read_rows(in, "k", b, sh->r, sh->n, kbuf, fin)) return -1;
    if (h5in_read_rows(in, "v", b, sh->r, sh->n, vbuf, fin)) return -1;
    int64_t off = 0, row = s->Hkv * s->D;
    for (int i = 0; i < sh->n; i++) {
        segs[i].k = kbuf + off * row;
        segs[i].v = vbuf + off * row;
        segs[i].n = sh->r[i].n;
        segs[i].pos0 = sh->r[i].start;
        off += sh->r[i].n;
    }
    return 0;
}

/* COLLECTIVE, after load_kv of batch element b: the digests of all ranks' k and v rows of b
 * (the same on every rank, whatever the rank count). On --resume, b's digests recorded in the
 * partial must match before anything is computed or written; else -1 on every rank. */
static int note_kv_digest(const run_plan *plan, h5in *in, h5out *out, MPI_Comm comm, int64_t b) {
    uint64_t d[3], rk, rv;
    h5in_take_digests(in, d);
    uint64_t kv[2] = {d[1], d[2]};
    MPI_Allreduce(MPI_IN_PLACE, kv, 2, MPI_UINT64_T, MPI_SUM, comm);
    if (h5out_recorded_kv(out, b, &rk, &rv) && (rk != kv[0] || rv != kv[1])) {
        char partial[4096];
        h5out_partial_path(plan->output, partial, sizeof partial);
        const char *which = rk != kv[0] && rv != kv[1] ? "'k' and 'v'" : rk != kv[0] ? "'k'" : "'v'";
        return fa_seterr("--resume: input '%s' changed since partial output '%s' was written: "
                         "the data of dataset %s of batch element %lld differ (checksum "
                         "%016llx, recorded %016llx); expected the same input: restore it, or "
                         "remove the partial to start over", plan->input, partial, which,
                         (long long)b, (unsigned long long)(rk != kv[0] ? kv[0] : kv[1]),
                         (unsigned long long)(rk != kv[0] ? rk : rv));
    }
    h5out_note_kv(out, b, kv[0], kv[1]);
    return 0;
}

int pipeline_run(const run_plan *plan, MPI_Comm comm, h5in *in, h5out *out,
                 const gpu_comm *gcp, int64_t first_chunk, progress *pg,
                 pipeline_stats *st) {
    pipe_state p = {0};
    int rc_engine;
    p.pg = pg;
    p.plan = plan;
    const fa_shape *s = &plan->s;
    memset(st, 0, sizeof *st);
    double t_start = fa_now();
    p.comm = comm;
    MPI_Comm_rank(comm, &p.rank);
    MPI_Comm_size(comm, &p.nranks);
    p.serial_io = !h5io_parallel();
    p.s = s;
    p.out = out;
    p.st = st;
    int gpu = plan->backend == BACKEND_CUDA;
    p.chunk = plan->chunk;
    p.nchunks_per_b = (s->Nq + p.chunk - 1) / p.chunk;
    p.nchunks = p.nchunks_per_b * s->B;
    p.window = plan->window;
    st->window = p.window;
    int64_t H = s->H, D = s->D, Hkv = s->Hkv;

    /* the sharding plan */
    kv_shard sh;
    st->layout = plan->layout;
    shard_plan(s->Nk, p.nranks, p.rank, plan->layout, plan->stripe, &sh);

    /* the engine: on GPUs, bound to this rank's device (the runner's gpu_comm), merging through
     * NCCL when it can */
    const gpu_comm none = {0}, *gc = gcp ? gcp : &none;
    pipe_engine eng;
    rc_engine = engine_create(plan, gc->device, sh.total, gc->nccl ? gc->comm : NULL, &eng);
    if (fa_agree(comm, rc_engine, -1)) {
        shard_free(&sh);
        return -1;
    }
    st->nccl = gc->nccl;
    snprintf(st->compute, sizeof st->compute, "%s", eng.compute ? eng.compute : "float32");
    p.eng = &eng;
    st->used_gpu = gpu;
    int64_t R = eng.rec_len;

    /* buffers: this rank's K/V of one batch element, one Q chunk, `window` record sets, one
     * chunk of finalized output */
    float *kbuf = fa_aligned_alloc((size_t)(sh.total * Hkv * D) * sizeof(float), "key shard");
    float *vbuf = fa_aligned_alloc((size_t)(sh.total * Hkv * D) * sizeof(float), "value shard");
    attn_kv_segment *segs = fa_calloc((size_t)sh.n + 1, sizeof *segs, "key segments");
    float *qbuf = fa_aligned_alloc((size_t)(p.chunk * H * D) * sizeof(float), "query chunk");
    p.node = MPI_COMM_NULL;
    if (p.nranks > 1 && plan->q_read == Q_READ_NODE) {
        MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, p.rank, MPI_INFO_NULL, &p.node);
        MPI_Comm_rank(p.node, &p.node_rank);
        MPI_Comm_size(p.node, &p.node_size);
        if (p.node_size == 1) MPI_Comm_free(&p.node);   /* alone on its node: it reads itself */
    }
    if (p.node != MPI_COMM_NULL) {
        float *mine = NULL;
        MPI_Aint bytes = p.node_rank == 0 ? (MPI_Aint)(p.chunk * H * D) * (MPI_Aint)sizeof(float) : 0;
        if (MPI_Win_allocate_shared(bytes, sizeof(float), MPI_INFO_NULL, p.node, &mine, &p.qwin) != MPI_SUCCESS)
            fa_fail("cannot allocate the node's shared query buffer (%lld bytes)", (long long)bytes);
        MPI_Aint size;
        int disp;
        MPI_Win_shared_query(p.qwin, 0, &size, &disp, &p.qnode);
        MPI_Win_lock_all(MPI_MODE_NOCHECK, p.qwin);
        fa_log(2, "fa_long: queries read once per node: %d ranks share rank %d's reads (FA_Q_READ=rank: each its own)",
               p.node_size, p.rank - p.node_rank);
    }
    p.rec = fa_calloc((size_t)p.window, sizeof(float *), "record slots");
    p.req = fa_calloc((size_t)p.window, sizeof(MPI_Request), "merge requests");
    for (int w = 0; w < p.window; w++) {
        p.rec[w] = fa_aligned_alloc((size_t)(p.chunk * H * R) * sizeof(float), "partials");
        p.req[w] = MPI_REQUEST_NULL;
    }
    p.o_out = fa_aligned_alloc((size_t)(p.chunk * H * D) * sizeof(float), "output chunk");
    p.lse_out = fa_aligned_alloc((size_t)(p.chunk * H) * sizeof(float), "lse chunk");
    int rc = 0;
    float scale = (float)plan->scale;
    p.check_overflow = plan->mode == MODE_EXACT && !plan->allow_nonfinite;
    p.qmax_chunk = fa_calloc((size_t)p.nchunks, sizeof(float), "query magnitudes");
    p.kmax_b = fa_calloc((size_t)s->B, sizeof(float), "key magnitudes");
    p.ovf_chunk = -1;

    st->t_setup = fa_now() - t_start;
    p.checkpoint_s = plan->checkpoint_s;
    p.last_checkpoint = fa_now() - p.checkpoint_s;   /* the first group's write: a checkpoint,
                                                       so a killed job leaves a usable partial */
    int64_t first = first_chunk > 0 ? first_chunk : 0;
    {   /* what a checkpoint records of the input, for --resume */
        int64_t isz, imt;
        uint64_t d[3];
        h5in_identity(in, &isz, &imt);
        h5out_note_input(out, isz, imt);
        h5in_take_digests(in, d);
    }
    p.written = first;
    int64_t cur_b = -1, next_finish = first;  /* the oldest chunk whose merge is not finished */
    for (int64_t i = first; i < p.nchunks && rc == 0 && !p.stopping; i++) {
        int wrote = 0;                       /* a group's write (and its stop check) just ran */
        if (i - first >= p.window) {
            rc = finish_chunk(&p, next_finish++);
            if (rc || p.stopping) break;     /* chunk i is not posted */
            wrote = next_finish % group_size(&p) == 0;
        }
        if (group_size(&p) > 1 && i > first && !wrote && stop_agreed(&p, &rc)) break;
        int64_t b, r0, n;
        chunk_rows(&p, i, &b, &r0, &n);
        double t0 = fa_now(), s0 = fa_sync_s;
        if (b != cur_b) {
            rc = load_kv(plan, in, s, &sh, b, kbuf, vbuf, segs);
            if (rc == 0) rc = note_kv_digest(plan, in, out, comm, b);
            if (rc) break;
            if (eng.load_kv(eng.ctx, segs, sh.n)) fa_fail("%s", fa_errmsg());
            cur_b = b;
            if (p.check_overflow) {             /* same point on every rank: collective */
                p.kmax_b[b] = h5in_last_absmax(in, "k");
                double vm = h5in_last_absmax(in, "v");
                MPI_Allreduce(&vm, &p.vmax_all, 1, MPI_DOUBLE, MPI_MAX, comm);
            }
            const double tkv = fa_now() - t0 - (fa_sync_s - s0);
            const int64_t kvb = sh.total * Hkv * D *
                                (int64_t)(fa_dtype_size(s->k_type) + fa_dtype_size(s->v_type));
            st->t_kv += tkv;
            st->bytes_kv_read += kvb;
            st->bytes_read += kvb;
            if (tkv > 0 && kvb / tkv > st->read_best_bps) st->read_best_bps = kvb / tkv;
        }
        const float *qchunk = qbuf;
        const double tq0 = fa_now(), sq0 = fa_sync_s;
        rc = read_queries(&p, in, b, r0, n, qbuf, &qchunk, !plan->allow_nonfinite);
        if (rc) break;
        p.qmax_chunk[i] = h5in_last_absmax(in, "q");
        double t1 = fa_now();
        st->t_read += t1 - t0 - (fa_sync_s - s0);
        {   /* this chunk's queries (the keys' part of the read is counted above) */
            const int64_t qb = n * H * D * (int64_t)fa_dtype_size(s->q_type);
            const double tq = t1 - tq0 - (fa_sync_s - sq0);
            st->bytes_read += qb;
            if (tq > 0 && qb / tq > st->read_best_bps) st->read_best_bps = qb / tq;
        }
        st->t_sync += fa_sync_s - s0;

        int slot = (int)(i % p.window);
        attn_queries q = {.q = qchunk, .nq = n, .q_pos0 = r0, .h = (int)H, .hkv = (int)Hkv,
                          .d = (int)D, .scale = scale, .causal = plan->causal,
                          .diag = s->Nk - s->Nq, .mask = &plan->mask, .b = b};
        int root = owner(&p, i);
        st->work_pairs += shard_work(&sh, &plan->mask, b, r0, r0 + n) * (double)H;
        if (eng.partial_slot) {                    /* device state: asynchronous compute */
            if (eng.partial_slot(eng.ctx, slot, &q)) fa_fail("%s", fa_errmsg());
            if (eng.device_merge) {
                if (eng.merge_start(eng.ctx, slot, n, root)) fa_fail("%s", fa_errmsg());
                if (root != p.rank) st->bytes_reduced += n * H * R * (int64_t)sizeof(float);
                st->t_compute += fa_now() - t1;
                st->chunks++;
                continue;
            }
            if (eng.to_host(eng.ctx, slot, n, p.rec[slot])) fa_fail("%s", fa_errmsg());
        } else {
            eng.init(eng.ctx, p.rec[slot], n);
            if (eng.partial(eng.ctx, &q, p.rec[slot], drive_merges, &p)) fa_fail("%s", fa_errmsg());
        }
        st->t_compute += fa_now() - t1;
        void *sendbuf = root == p.rank ? MPI_IN_PLACE : p.rec[slot];
        MPI_Ireduce(sendbuf, p.rec[slot], (int)(n * H), eng.rec_type, eng.op, root, comm,
                    &p.req[slot]);
        if (root != p.rank) st->bytes_reduced += n * H * R * (int64_t)sizeof(float);
        st->chunks++;
    }
    /* Drain: chunks [first, posted) were posted; finish them in order. When stopping, the last
     * group is cut short: every rank writes what it holds once more so all finished rows are in
     * the file. After an error only complete the merges in flight (every rank posted the same
     * ones, so the waits return). */
    int64_t posted = first + st->chunks;
    while (rc == 0 && next_finish < posted) rc = finish_chunk(&p, next_finish++);
    if (rc == 0 && posted < p.nchunks) {
        int64_t G = group_size(&p);
        if (posted % G != 0) rc = write_group(&p, posted);
    }
    st->chunks_done = rc == 0 ? posted : first;
    st->stopped = rc == 0 && posted < p.nchunks;
    if (rc) MPI_Waitall(p.window, p.req, MPI_STATUSES_IGNORE);

    if (eng.stats) eng.stats(eng.ctx, st);
    engine_free(&eng);
    for (int w = 0; w < p.window; w++) free(p.rec[w]);
    free(p.rec);
    free(p.req);
    free(p.o_out);
    free(p.lse_out);
    free(p.qmax_chunk);
    free(p.kmax_b);
    free(qbuf);
    if (p.qnode) {
        MPI_Win_unlock_all(p.qwin);
        MPI_Win_free(&p.qwin);
    }
    if (p.node != MPI_COMM_NULL) MPI_Comm_free(&p.node);
    free(segs);
    free(kbuf);
    free(vbuf);
    shard_free(&sh);
    st->t_total = fa_now() - t_start;
    return rc;
}
