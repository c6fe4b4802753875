/* pipeline.c — the chunked merge pipeline (see pipeline.h).
 *
 * Chunk i covers query rows [r0, r0+n) of batch element b; chunks run b-major. Its merged result
 * lands on the rank the plan says writes it (plan_chunk_writer: i mod P with parallel HDF5, each
 * rank writing its own rows; rank 0 with serial HDF5, writing everything). Writes are collective
 * per group of G = P chunks (1 when serial), so every rank makes the same sequence of collective
 * calls. Up to `merges_in_flight` merges are in flight
 * while the next chunk computes, through the engine's slot calls (pipeline.h), the same for every
 * engine; the CPU engines drive the merges' progress between their work items.
 *
 * Rows come from a source and go to a sink (dist/pipe_io.h: an HDF5 file, or memory). Their
 * side runs on the rank's I/O thread (dist/io_worker.h), in tasks every rank submits
 * in the same order: chunk i+1's queries are read while chunk i computes (two query buffers),
 * a group's rows are written while the next groups compute (two output buffers), and the keys
 * of batch element b+1 are read once b's last chunk has computed. Only the tasks call the source
 * and the sink. */
#include "dist/pipeline.h"
#include "dist/merge.h"
#include "dist/shard.h"
#include "dist/gpu_comm.h"
#include "dist/io_worker.h"
#include "dist/schedule.h"
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

typedef struct pipe_state pipe_state;
typedef struct {             /* COLLECTIVE I/O task: output set `set`'s rows to the file */
    pipe_state *p;
    int set;
} write_task;

struct pipe_state {
    MPI_Comm comm;
    int rank, nranks;
    int writer;                /* the plan's: the rank that writes every chunk, or -1 (owner) */
    const fa_shape *s;
    chunk_schedule cs;         /* each chunk's rows, slot, writer, write group, output set */
    pipe_engine *eng;
    /* finalized rows of the chunk this rank owns in a group, two sets: group g's in set g % 2,
     * written by the I/O thread while groups g+1 and g+2 compute; o in the plan's o_xfer */
    void *o_set[2];
    float *lse_set[2];
    int64_t pend_b[2], pend_r0[2], pend_n[2];
    int64_t write_ticket[2];   /* the I/O task writing the set, or -1 */
    write_task wtask[2];
    pipe_sink *snk;
    pipe_source *src;
    io_worker *io;
    MPI_Comm io_comm;          /* the I/O tasks' own collectives (never the master's comm) */
    pipeline_stats io_st;      /* what the I/O tasks measured (only they write it until the
                                  last drain) */
    double t_io_exposed;       /* the master thread blocked on the I/O thread */
    double t_write_exposed;    /* of it, on writes and checkpoints */
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
    char *qnode[2];            /* the node's two query buffers (chunk i in qnode[i % 2]), in
                                  the plan's in_type[0] */
    int64_t kv_blocks;         /* key reads per batch element (every rank the same count) */
    int key_ring;              /* blocks in the ring the key reads land in (the plan's key_ring,
                                  where there are more blocks than that), or 0: a shard */
    row_range *kv_ranges;      /* [shard ranges + 1] a key read's file ranges (run_load_kv: the
                                  I/O tasks run one at a time), allocated with the buffers */
    double checkpoint_s, last_checkpoint;
    /* the engine's overflow policy (pipe_engine.overflow_is_error), finite inputs: a row that
     * sees a key must come out finite, else its scores (or its sum of weighted values)
     * overflowed float32 (note_overflow) */
    int check_overflow;
    float *qmax_chunk;         /* [cs.count] largest |q| this rank read for each chunk */
    float *kmax_b;             /* [B] largest |k| of this rank's keys of each batch element */
    double vmax_all;           /* largest |v| of the current batch element, over every rank */
    int64_t ovf_chunk, ovf_b, ovf_row, ovf_head;   /* the first such row this rank owns (-1) */
    float ovf_lse;
};

/* The owner of chunk i, rows [r0, r0+n) of batch b finalized into o_out/lse_out: notes the first
 * (row, head) that sees a key and still has a non-finite lse (its scores overflowed float32) or,
 * where the values are large enough for it, a non-finite o. Finite inputs never give either
 * otherwise: a finite score maximum makes the softmax sum >= 1. */
static void note_overflow(pipe_state *p, int64_t i, int64_t b, int64_t r0, int64_t n,
                          const void *o, const float *lse) {
    if (!p->check_overflow || p->ovf_chunk >= 0) return;
    const int64_t H = p->s->H, D = p->s->D;
    /* o = sum p_j v_j / sum p_j stays within max |v|; its running sums within Nk max |v| */
    const int scan_o = p->vmax_all * (double)p->s->Nk > 1e38;
    const attn_mask *mask = &p->plan->mask;
    const fa_dtype ot = p->plan->o_xfer;
    int64_t bad = INT64_MAX;
#pragma omp parallel for reduction(min : bad) schedule(static) if (n * H >= 4096)
    for (int64_t x = 0; x < n * H; x++) {
        mask_run run = mask_row(mask, b, r0 + x / H);
        if (run.hi <= run.lo) continue;                   /* sees no key: o = 0, lse = -inf */
        int ok = isfinite(lse[x]);
        for (int64_t d = 0; ok && scan_o && d < D; d++) {
            float y;
            fa_to_f32(ot, (const char *)o + (x * D + d) * fa_dtype_size(ot), &y, 1);
            ok = isfinite(y);
        }
        if (!ok && x < bad) bad = x;
    }
    if (bad == INT64_MAX) return;
    p->ovf_chunk = i;
    p->ovf_b = b;
    p->ovf_row = r0 + bad / H;
    p->ovf_head = bad % H;
    p->ovf_lse = lse[bad];
}

/* COLLECTIVE, once some rank noted an overflow: -1 on every rank, with one line from the rank
 * that owns the first such chunk, naming the row and how far the inputs reach past float32. */
static int overflow_error(pipe_state *p) {
    int64_t mine = p->ovf_chunk >= 0 ? p->ovf_chunk : INT64_MAX, first;
    MPI_Allreduce(&mine, &first, 1, MPI_INT64_T, MPI_MIN, p->comm);
    float m[3] = {p->qmax_chunk[first], p->kmax_b[first / p->cs.per_b], (float)p->vmax_all}, g[3];
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

/* ---- the I/O thread's tasks (every rank submits the same ones in the same order) ------------ */
static int run_write(void *arg);
static int run_checkpoint(void *arg);

static int64_t submit(pipe_state *p, io_task_fn fn, void *arg) {
    double t0 = fa_now();                  /* without a thread the task runs here: exposed */
    int64_t t = io_submit(p->io, fn, arg);
    const double dt = fa_now() - t0;
    p->t_io_exposed += dt;
    if (fn == run_write || fn == run_checkpoint) p->t_write_exposed += dt;
    return t;
}

static int wait_io(pipe_state *p, int64_t ticket) {
    return ticket < 0 ? 0 : io_wait(p->io, ticket, &p->t_io_exposed);
}

/* A transfer's time, rate and sync time into the I/O stats (the I/O thread's fa_sync_s). */
static void io_account(pipe_state *p, double t0, double s0, int64_t bytes, int write) {
    const double ds = fa_sync_s - s0, t = fa_now() - t0 - ds;
    pipeline_stats *st = &p->io_st;
    st->t_sync += ds;
    if (write) {
        st->t_write += t;
        st->bytes_written += bytes;
        if (bytes > 0 && t > 0 && bytes / t > st->write_best_bps) st->write_best_bps = bytes / t;
    } else {
        st->t_read += t;
        st->bytes_read += bytes;
        if (bytes > 0 && t > 0 && bytes / t > st->read_best_bps) st->read_best_bps = bytes / t;
    }
}

static int run_write(void *arg) {
    write_task *w = arg;
    pipe_state *p = w->p;
    const int k = w->set;
    const double t0 = fa_now(), s0 = fa_sync_s;
    const int64_t rows = p->pend_n[k];
    int rc = p->snk->write_rows(p->snk->ctx, rows ? p->pend_b[k] : 0, rows ? p->pend_r0[k] : 0,
                                rows, p->o_set[k], p->plan->o_xfer, p->lse_set[k]);
    const int64_t wb = rows * p->s->H *     /* o in its element type, lse in float32 */
                       (p->s->D * (int64_t)fa_dtype_size(p->plan->o_type) + (p->plan->lse ? 4 : 0));
    io_account(p, t0, s0, rc ? 0 : wb, 1);
    if (rc == 0) p->snk->flush_behind(p->snk->ctx);   /* on to the disk while later chunks compute */
    return rc;
}

typedef struct {             /* COLLECTIVE: chunks [0, done) made durable */
    pipe_state *p;
    int64_t done;
} checkpoint_task;

static int run_checkpoint(void *arg) {
    checkpoint_task *c = arg;
    pipe_state *p = c->p;
    const double t0 = fa_now(), s0 = fa_sync_s;
    int rc = p->snk->checkpoint(p->snk->ctx, c->done);
    io_account(p, t0, s0, 0, 1);
    free(c);                 /* nobody waits for it by its ticket: a failure stops the tasks
                                after it, and the next wait sees it */
    return rc;
}

static void submit_checkpoint(pipe_state *p, int64_t done) {
    checkpoint_task *c = fa_malloc(sizeof *c, "checkpoint task");
    c->p = p;
    c->done = done;
    submit(p, run_checkpoint, c);
}

/* COLLECTIVE. Every rank hands the I/O thread the chunk it owns in the group that ends at chunk
 * done - 1 (or nothing); chunks [0, done) are complete once that write has run. Then the ranks
 * agree whether to stop early (a signal reached any rank) and whether a checkpoint is due (rank
 * 0's clock), and queue the checkpoint after the write. A failed write or checkpoint is seen
 * at the next wait for the I/O thread (the same one on every rank). */
static int write_group(pipe_state *p, int64_t done) {
    const int k = schedule_set_before(&p->cs, done);   /* the group's output set */
    p->wtask[k] = (write_task){p, k};
    p->write_ticket[k] = submit(p, run_write, &p->wtask[k]);
    p->written = done;
    double s0 = fa_sync_s;
    int flags = fa_stop_requested ? 1 : 0, all;
    if (p->rank == 0 && p->checkpoint_s > 0 && fa_now() - p->last_checkpoint >= p->checkpoint_s)
        flags |= 2;
    if (p->ovf_chunk >= 0) flags |= 4;
    const double ta = MPI_Wtime();
    MPI_Allreduce(&flags, &all, 1, MPI_INT, MPI_BOR, p->comm);
    fa_sync_s += MPI_Wtime() - ta;
    p->st->t_sync += fa_sync_s - s0;
    p->st->t_sync_own += fa_sync_s - s0;
    if (all & 4) return overflow_error(p);
    if ((all & 1) && !p->stopping) {  /* durable at once: the chunks in flight may take long */
        p->stopping = 1;
        if (done < p->cs.count) submit_checkpoint(p, done);
    } else if ((all & 2) && done < p->cs.count && !p->stopping) {
        submit_checkpoint(p, done);
        p->last_checkpoint = fa_now();
    }
    return 0;
}

/* COLLECTIVE, between the groups' writes: a stop is taken at the next chunk rather than at the
 * next group of P chunks (with many ranks and long chunks a group can outlast Slurm's KillWait). */
static int stop_agreed(pipe_state *p) {
    int mine = fa_stop_requested ? 1 : 0, all;
    const double ta = MPI_Wtime();
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_BOR, p->comm);
    p->st->t_sync += MPI_Wtime() - ta;
    p->st->t_sync_own += MPI_Wtime() - ta;
    if (all) {                   /* what is written is durable at once, as in write_group */
        p->stopping = 1;
        if (p->written > 0) submit_checkpoint(p, p->written);
    }
    return all;
}

/* An engine call failed on this rank alone, mid-run. The command ends with its line (fa_fail:
 * the other ranks wait for this one in the merges), and so does a library call across ranks (a
 * rank leaving alone would leave the others hung); a library call on one rank (fa_attention)
 * gets -1 with the engine's line, and the pipeline tears down as after any error. */
static int engine_failed(const pipe_state *p) {
    const char *m = fa_errmsg();
    if (!fa_library_call || p->nranks > 1)
        fa_fail("%s", strncmp(m, "fa_long: ", 9) ? m : m + 9);
    return -1;
}

/* Waits for chunk i's merge; the owner finalizes it into its group's output set; at the end of a
 * group every rank hands its rows to the I/O thread. */
static int finish_chunk(pipe_state *p, int64_t i) {
    const chunk_place c = schedule_chunk(&p->cs, i);
    const int slot = c.slot, k = c.set;
    const int64_t b = c.b, r0 = c.r0, n = c.n;
    if (i % p->cs.group == 0 || i == p->written) {   /* a group's first chunk (every rank): its set's last
                                              write, two groups back, must be done */
        const double w0 = p->t_io_exposed;
        const int wrc = wait_io(p, p->write_ticket[k]);
        p->t_write_exposed += p->t_io_exposed - w0;
        if (wrc) return -1;
        p->write_ticket[k] = -1;
        p->pend_n[k] = 0;
    }
    void *o_out = p->o_set[k];
    float *lse_out = p->lse_set[k];
    double t0 = fa_now();
    const int mine = c.writer == p->rank;
    if (p->eng->merge_wait(p->eng->ctx, slot)) return engine_failed(p);
    p->st->t_wait += fa_now() - t0;
    t0 = fa_now();
    if (mine && p->eng->fetch(p->eng->ctx, slot, n, o_out, lse_out)) return engine_failed(p);
    if (mine) {
        p->pend_b[k] = b;
        p->pend_r0[k] = r0;
        p->pend_n[k] = n;
        note_overflow(p, i, b, r0, n, o_out, lse_out);
    }
    p->st->t_final += fa_now() - t0;
    progress_chunk(p->pg, pipeline_flops(p->s, &p->plan->mask, b, r0, n));
    if (c.ends_group) return write_group(p, i + 1);
    return 0;
}

/* COLLECTIVE (an I/O task). Every rank needs the whole chunk of queries [r0, r0+n); the plan's
 * q_read says how. node (the default), where a node holds several ranks: the node's first rank
 * reads the chunk into a shared-memory buffer the node's ranks all read from (no copies), so the
 * file is read once per node (measured against `rank`: bench/NOTES_SCALING.md). rank: each rank
 * reads the chunk itself (one collective read of the same rows), as on a node of one rank.
 * shared: each rank reads one slice and the slices are shared (MPI_Allgatherv).
 * t->q: where the chunk is (the rank's buffer, or the node's). */
typedef struct {
    pipe_state *p;
    int64_t i, b, r0, n;
    char *buf, *node_buf;    /* the rank's buffer of this chunk's parity; the node's, or NULL
                                (rows in the plan's in_type[0]) */
    const void *q;           /* out: where the chunk is */
    float absmax;            /* out: its largest |q| (the source's last_absmax) */
    int64_t ticket;          /* -1: none in flight */
} query_task;

static int run_read_queries(void *arg) {
    query_task *t = arg;
    pipe_state *p = t->p;
    const int64_t b = t->b, r0 = t->r0, n = t->n;
    const int P = p->nranks, check_finite = !p->plan->allow_nonfinite;
    const int64_t row = p->s->H * p->s->D;
    const fa_dtype qtype = p->plan->in_type[0];
    const int64_t qes = fa_dtype_size(qtype);
    const double t0 = fa_now(), s0 = fa_sync_s;
    char *q = t->buf;
    int rc;
    t->q = q;
    if (t->node_buf) {
        /* every rank of the node is done with the chunk this buffer held (two chunks back: each
         * rank submits this read after that chunk's compute returned), so the reader may
         * overwrite it */
        double tb = MPI_Wtime();              /* barriers are waits: the report's sync phase */
        MPI_Barrier(p->node);
        fa_sync_s += MPI_Wtime() - tb;
        row_range qr = {r0, n};
        rc = p->src->read_rows(p->src->ctx, PIPE_Q, b, &qr, p->node_rank == 0 ? 1 : 0, t->node_buf,
                               qtype, check_finite);
        if (rc == 0) {            /* the same status on every rank (the source agrees) */
            MPI_Win_sync(p->qwin);
            tb = MPI_Wtime();
            MPI_Barrier(p->node);
            fa_sync_s += MPI_Wtime() - tb;
            MPI_Win_sync(p->qwin);
            t->q = t->node_buf;
        }
    } else if (P == 1 || n * row * qes > INT32_MAX || p->plan->q_read != Q_READ_SHARED) {
        row_range qr = {r0, n};
        rc = p->src->read_rows(p->src->ctx, PIPE_Q, b, &qr, 1, q, qtype, check_finite);
    } else {
        int *counts = fa_malloc(sizeof(int) * 2 * (size_t)P, "query slices"), *displs = counts + P;
        for (int r = 0; r < P; r++) {
            int64_t a = n * r / P, e = n * (r + 1) / P;
            counts[r] = (int)((e - a) * row * qes);      /* bytes */
            displs[r] = (int)(a * row * qes);
        }
        int64_t a = n * p->rank / P, e = n * (p->rank + 1) / P;
        row_range mine = {r0 + a, e - a};
        rc = p->src->read_rows(p->src->ctx, PIPE_Q, b, &mine, e > a ? 1 : 0, q + a * row * qes,
                               qtype, check_finite);
        if (rc == 0)   /* same status on every rank (the source agrees): all or none gather */
            MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, q, counts, displs, MPI_BYTE,
                           p->io_comm);
        free(counts);
    }
    t->absmax = p->src->last_absmax(p->src->ctx, PIPE_Q);
    io_account(p, t0, s0, rc ? 0 : n * row * (int64_t)fa_dtype_size(p->s->q_type), 0);
    return rc;
}

/* Queues the read of chunk i's queries into the buffers of its parity. */
static void submit_queries(pipe_state *p, query_task *qt, char *const qbuf[2], int64_t i) {
    query_task *t = &qt[i % 2];
    *t = (query_task){.p = p, .i = i, .buf = qbuf[i % 2], .node_buf = p->qnode[i % 2]};
    const chunk_place c = schedule_chunk(&p->cs, i);
    t->b = c.b, t->r0 = c.r0, t->n = c.n;
    t->ticket = submit(p, run_read_queries, t);
}

/* COLLECTIVE (an I/O task). Block `blk` of this rank's keys and values of batch element b: its
 * local rows [blk R, (blk+1) R) (R the plan's key_read_rows when keys are streamed; one block of
 * every row otherwise), in the shard's order, into kbuf/vbuf (in the plan's in_type): at those
 * rows of the shard, or at the start of the block's slot of the ring (block_at), with their
 * largest magnitudes; the last block takes the digests of all of them. Every rank reads the
 * same number of blocks (p->kv_blocks), some of them empty. */
typedef struct {
    pipe_state *p;
    const kv_shard *sh;
    int64_t b;
    int blk;
    char *kbuf, *vbuf;
    uint64_t d[3];           /* out, last block: the digests of the rows read (the source's take_digests) */
    float kmax, vmax;        /* out: largest |k|, |v| of the block */
    double t_done;           /* out: when its read ended (fa_now) */
    int64_t ticket;
} kv_task;

/* The shard's local rows [a, e) as file row ranges (at most sh->n + 1 of them, into r). */
static int shard_rows(const kv_shard *sh, int64_t a, int64_t e, row_range *r) {
    int n = 0;
    int64_t off = 0;
    for (int i = 0; i < sh->n; off += sh->r[i].n, i++) {
        const int64_t lo = a > off ? a : off, hi = e < off + sh->r[i].n ? e : off + sh->r[i].n;
        if (hi > lo) r[n++] = (row_range){sh->r[i].start + (lo - off), hi - lo};
    }
    return n;
}

static int64_t block_rows(const pipe_state *p, const kv_shard *sh) {
    return p->kv_blocks > 1 ? p->plan->key_read_rows : (sh->total > 0 ? sh->total : 1);
}

/* Block blk's local rows [*a, *e) (empty past the shard's end). */
static void block_span(const pipe_state *p, const kv_shard *sh, int64_t blk, int64_t *a, int64_t *e) {
    const int64_t R = block_rows(p, sh);
    *a = blk * R < sh->total ? blk * R : sh->total;
    *e = *a + R < sh->total ? *a + R : sh->total;
}

/* Where block blk's rows are in kbuf/vbuf, in rows: their own rows a.. of the shard, or the start
 * of the block's slot of the ring (blocks j and j + key_ring share one). */
static int64_t block_at(const pipe_state *p, const kv_shard *sh, int64_t blk, int64_t a) {
    return p->key_ring ? blk % p->key_ring * block_rows(p, sh) : a;
}

static int run_load_kv(void *arg) {
    kv_task *t = arg;
    pipe_state *p = t->p;
    const kv_shard *sh = t->sh;
    const fa_shape *s = p->s;
    const double t0 = fa_now(), s0 = fa_sync_s;
    const int fin = !p->plan->allow_nonfinite;
    const fa_dtype kt = p->plan->in_type[1], vt = p->plan->in_type[2];
    const int64_t row = s->Hkv * s->D;
    int64_t a, e;
    block_span(p, sh, t->blk, &a, &e);
    const int64_t at = block_at(p, sh, t->blk, a);
    row_range *r = p->kv_ranges;
    const int nr = shard_rows(sh, a, e, r);
    const pipe_source *src = p->src;
    int rc = src->read_rows(src->ctx, PIPE_K, t->b, r, nr, t->kbuf + at * row * fa_dtype_size(kt), kt, fin);
    if (rc == 0)
        rc = src->read_rows(src->ctx, PIPE_V, t->b, r, nr, t->vbuf + at * row * fa_dtype_size(vt), vt, fin);
    if (t->blk == p->kv_blocks - 1) src->take_digests(src->ctx, t->d);
    t->kmax = src->last_absmax(src->ctx, PIPE_K);
    t->vmax = src->last_absmax(src->ctx, PIPE_V);
    const int64_t kvb = (e - a) * row * (int64_t)(fa_dtype_size(s->k_type) + fa_dtype_size(s->v_type));
    const double tk = fa_now() - t0 - (fa_sync_s - s0);
    io_account(p, t0, s0, rc ? 0 : kvb, 0);
    if (rc == 0) {
        p->io_st.t_kv += tk;
        p->io_st.bytes_kv_read += kvb;
    }
    t->t_done = fa_now();
    return rc;
}

/* Queues the read of block j of batch element b's keys. */
static void submit_block(pipe_state *p, kv_task *kt, int64_t b, int j) {
    kt[j].b = b;
    kt[j].ticket = submit(p, run_load_kv, &kt[j]);
}

/* Queues the reads of batch element b's keys (its blocks) and of chunk i's queries: the first
 * block, then the queries, then the other blocks, so that the first chunk can start on the
 * first block (streamed keys). Through a ring, only the blocks it holds: block j + key_ring is
 * queued by load_batch_keys once the engine has taken block j, whose slot it reuses. */
static void submit_keys(pipe_state *p, kv_task *kt, int64_t b, query_task *qt, char *const qbuf[2],
                        int64_t i) {
    const int64_t n = p->key_ring ? p->key_ring : p->kv_blocks;
    for (int j = 0; j < n; j++) {
        submit_block(p, kt, b, j);
        if (j == 0) submit_queries(p, qt, qbuf, i);
    }
}

/* The I/O task that records batch element b's digests in the output (checkpoints write them);
 * on --resume, b's digests recorded in the partial must match first, else -1 on every rank
 * (the digests are the same on every rank, and so is the table). */
typedef struct {
    pipe_state *p;
    int64_t b;
    uint64_t k, v;
} digest_task;

static int run_note_digest(void *arg) {
    digest_task *t = arg;
    pipe_state *p = t->p;
    uint64_t rk, rv;
    if (p->snk->recorded_kv(p->snk->ctx, t->b, &rk, &rv) && (rk != t->k || rv != t->v)) {
        char partial[4096];
        h5out_partial_path(p->plan->output, partial, sizeof partial);
        const char *which = rk != t->k && rv != t->v ? "'k' and 'v'" : rk != t->k ? "'k'" : "'v'";
        return fa_seterr("--resume: input '%s' changed since partial output '%s' was written: "
                         "the data of dataset %s of batch element %lld differ (checksum "
                         "%016llx, recorded %016llx); expected the same input: restore it, or "
                         "remove the partial to start over", p->plan->input, partial, which,
                         (long long)t->b, (unsigned long long)(rk != t->k ? t->k : t->v),
                         (unsigned long long)(rk != t->k ? rk : rv));
    }
    p->snk->note_kv(p->snk->ctx, t->b, t->k, t->v);
    return 0;
}

/* COLLECTIVE, once batch element b's keys are read (t: its last block's task): every rank's
 * digests summed (the same whatever the rank count) and checked against the partial's by the I/O
 * thread, before anything of b is written. */
static int note_kv_digest(pipe_state *p, const kv_task *t) {
    uint64_t kv[2] = {t->d[1], t->d[2]};
    MPI_Allreduce(MPI_IN_PLACE, kv, 2, MPI_UINT64_T, MPI_SUM, p->comm);
    digest_task dt = {p, t->b, kv[0], kv[1]};
    return wait_io(p, submit(p, run_note_digest, &dt));
}

/* What pipeline_run holds from its set-up to its teardown besides pipe_state: the plan with its
 * rows (the caller's, or made here for a plan built outside the planner), the buffers, the reads'
 * tasks and the engine. */
typedef struct {
    run_plan rows_plan;          /* the rows made here (plan == &rows_plan), else unused */
    const run_plan *plan;
    const kv_shard *sh;          /* this rank's keys: the plan's */
    char *kbuf, *vbuf;           /* this rank's keys and values of one batch element (the
                                    shard), or the ring's blocks of them (p->key_ring) */
    attn_kv_segment *segs;       /* [sh->n + 1] the shard's runs in kbuf/vbuf (through a ring:
                                    their positions and types, k and v NULL) */
    char *qbuf[2];               /* two chunks of queries */
    query_task qt[2];
    kv_task *kt;                 /* [kv_blocks] the key reads */
    pipe_engine eng;
    pipe_engine_maker make;      /* what makes it: engine_create, or a test's */
    int64_t first;               /* the first chunk this run computes (--resume: later than 0) */
    double t_start;
} pipe_run;

/* Set-up: the plan's rows, the buffers (fa_try_*: in a library call NULL when out of memory,
 * agreed on here; in the command fa_fail as ever), the node's shared query buffers, the I/O
 * thread, the first reads and the engine. Returns -1 (agreed by every rank) where no chunk may
 * run; what was made is released by pipe_teardown either way, after pipe_drain. */
static int pipe_setup(pipe_state *p, pipe_run *r, const run_plan *planned, MPI_Comm comm,
                      pipe_source *src, pipe_sink *snk, const gpu_comm *gcp, int64_t first_chunk,
                      progress *pg, pipeline_stats *st) {
    memset(st, 0, sizeof *st);
    r->t_start = fa_now();
    p->comm = comm;
    MPI_Comm_rank(comm, &p->rank);
    MPI_Comm_size(comm, &p->nranks);
    /* who writes each chunk and this rank's keys: the plan's. A plan made without the planner
     * (the library's lib_plan) has them made here, by the same call (dist/shard.c) */
    r->plan = planned;
    if (!planned->rows_planned) {
        r->rows_plan = *planned;
        plan_rows_make(&r->rows_plan, p->rank, snk->writer);
        r->plan = &r->rows_plan;
    }
    const run_plan *plan = r->plan;
    if (plan->writer != snk->writer || plan->nranks != p->nranks)
        fa_fail("the plan's writer (%d of %d ranks) is not the sink's (%d of %d)", plan->writer,
                plan->nranks, snk->writer, p->nranks);
    p->pg = pg;
    p->plan = plan;
    const fa_shape *s = &plan->s;
    p->writer = plan->writer;
    p->s = s;
    p->snk = snk;
    p->st = st;
    schedule_make(&p->cs, plan, p->nranks);
    st->merges_in_flight = p->cs.merges_in_flight;
    const int64_t H = s->H, D = s->D, Hkv = s->Hkv, chunk = p->cs.chunk;
    const kv_shard *sh = r->sh = &plan->shard;
    st->layout = plan->layout;

    /* buffers: this rank's K/V of one batch element, two Q chunks, `merges_in_flight` record
     * sets, two chunks of finalized output; q, k, v in the types the engine takes them in, o in
     * the one it gives (the plan's in_type, o_xfer) */
    const int64_t qes = fa_dtype_size(plan->in_type[0]), kes = fa_dtype_size(plan->in_type[1]),
                  ves = fa_dtype_size(plan->in_type[2]), oes = fa_dtype_size(plan->o_xfer);
    /* key reads per batch element: streamed, blocks of key_read_rows rows (every rank as many
     * as the rank with the most keys); else one */
    p->kv_blocks = 1;
    if (plan->stream_keys) {
        p->kv_blocks = (sh->total + plan->key_read_rows - 1) / plan->key_read_rows;
        MPI_Allreduce(MPI_IN_PLACE, &p->kv_blocks, 1, MPI_INT64_T, MPI_MAX, comm);
        if (p->kv_blocks < 1) p->kv_blocks = 1;
    }
    /* where they land: a ring of the plan's key_ring blocks (an engine that copies the rows it
     * is handed: pipe_engine.copies_keys, checked once it is made) where there are more blocks
     * than that, allocated once and reused for every batch element; else a shard of every key.
     * A rank whose own blocks fit in the ring needs no more than its keys: their slots are
     * their own rows (block_at) */
    p->key_ring = plan->stream_keys && plan->key_ring > 0 && p->kv_blocks > plan->key_ring ? plan->key_ring : 0;
    const int64_t ring_rows = p->key_ring * block_rows(p, sh);
    const int64_t kv_rows = p->key_ring && ring_rows < sh->total ? ring_rows : sh->total;
    st->key_shard_bytes = sh->total * Hkv * D * (kes + ves);
    if (p->key_ring) {
        st->key_ring = p->key_ring;
        st->key_ring_rows = block_rows(p, sh);
        st->key_ring_bytes = kv_rows * Hkv * D * (kes + ves);
    }
    r->kbuf = fa_try_aligned_alloc((size_t)(kv_rows * Hkv * D * kes), p->key_ring ? "key ring" : "key shard");
    r->vbuf = fa_try_aligned_alloc((size_t)(kv_rows * Hkv * D * ves), p->key_ring ? "value ring" : "value shard");
    r->segs = fa_try_calloc((size_t)sh->n + 1, sizeof *r->segs, "key segments");
    p->kv_ranges = fa_try_calloc((size_t)sh->n + 1, sizeof *p->kv_ranges, "key block ranges");
    for (int64_t i = 0, off = 0; r->segs && i < sh->n; off += sh->r[i].n, i++)
        r->segs[i] = (attn_kv_segment){.k = p->key_ring ? NULL : r->kbuf + off * Hkv * D * kes,
                                       .v = p->key_ring ? NULL : r->vbuf + off * Hkv * D * ves,
                                       .n = sh->r[i].n, .pos0 = sh->r[i].start,
                                       .k_type = plan->in_type[1], .v_type = plan->in_type[2]};
    for (int k = 0; k < 2; k++)
        r->qbuf[k] = fa_try_aligned_alloc((size_t)(chunk * H * D * qes), "query chunk");
    p->node = MPI_COMM_NULL;
    if (p->nranks > 1 && plan->q_read == Q_READ_NODE) {
        MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, p->rank, MPI_INFO_NULL, &p->node);
        MPI_Comm_rank(p->node, &p->node_rank);
        MPI_Comm_size(p->node, &p->node_size);
        if (p->node_size == 1) MPI_Comm_free(&p->node);   /* alone on its node: it reads itself */
    }
    if (p->node != MPI_COMM_NULL) {
        char *mine = NULL;
        const MPI_Aint one = (MPI_Aint)(chunk * H * D * qes);
        MPI_Aint bytes = p->node_rank == 0 ? 2 * one : 0;
        if (MPI_Win_allocate_shared(bytes, 1, MPI_INFO_NULL, p->node, &mine, &p->qwin) != MPI_SUCCESS)
            fa_fail("cannot allocate the node's shared query buffers (%lld bytes)", (long long)bytes);
        MPI_Aint size;
        int disp;
        MPI_Win_shared_query(p->qwin, 0, &size, &disp, &p->qnode[0]);
        p->qnode[1] = p->qnode[0] + one;
        MPI_Win_lock_all(MPI_MODE_NOCHECK, p->qwin);
        fa_log(2, "fa_long: queries read once per node: %d ranks share rank %d's reads (FA_Q_READ=rank: each its own)",
               p->node_size, p->rank - p->node_rank);
    }
    for (int k = 0; k < 2; k++) {
        p->o_set[k] = fa_try_aligned_alloc((size_t)(chunk * H * D * oes), "output chunk");
        p->lse_set[k] = fa_try_aligned_alloc((size_t)(chunk * H) * sizeof(float), "lse chunk");
        p->write_ticket[k] = -1;
    }
    int rc = 0;
    p->qmax_chunk = fa_try_calloc((size_t)p->cs.count, sizeof(float), "query magnitudes");
    p->kmax_b = fa_try_calloc((size_t)s->B, sizeof(float), "key magnitudes");
    p->ovf_chunk = -1;
    /* the I/O thread: its collectives on a communicator of their own */
    p->src = src;
    MPI_Comm_dup(comm, &p->io_comm);
    p->io = io_worker_start(plan->io_thread, plan->io_omp_threads);

    p->checkpoint_s = plan->checkpoint_s;
    p->last_checkpoint = fa_now() - p->checkpoint_s;   /* the first group's write: a checkpoint,
                                                          so a killed job leaves a usable partial */
    const int64_t first = r->first = first_chunk > 0 ? first_chunk : 0;
    {   /* what a checkpoint records of the input, for --resume */
        int64_t isz, imt;
        uint64_t d[3];
        src->identity(src->ctx, &isz, &imt);
        snk->note_input(snk->ctx, isz, imt);
        src->take_digests(src->ctx, d);
    }
    p->written = first;
    r->qt[0] = r->qt[1] = (query_task){.ticket = -1};
    r->kt = fa_try_calloc((size_t)p->kv_blocks, sizeof *r->kt, "key reads");
    for (int j = 0; r->kt && j < p->kv_blocks; j++)
        r->kt[j] = (kv_task){.p = p, .sh = sh, .b = -1, .blk = j, .kbuf = r->kbuf, .vbuf = r->vbuf, .ticket = -1};
    if (fa_library_call) {   /* out of memory on some rank: every rank returns it, no read or
                                chunk runs, and the teardown frees what was allocated */
        const int nomem = !sh->r || !r->kbuf || !r->vbuf || !r->segs || !p->kv_ranges || !r->qbuf[0] ||
                          !r->qbuf[1] || !p->o_set[0] || !p->o_set[1] || !p->lse_set[0] ||
                          !p->lse_set[1] || !p->qmax_chunk || !p->kmax_b || !r->kt;
        if (fa_agree(comm, nomem ? -1 : 0, -1)) rc = -1;
    }
    /* setup: buffers and the engine's start; in series the first reads run inside their
     * submission and count as reads, not setup */
    const double io_pre = p->t_io_exposed;
    if (rc == 0 && first < p->cs.count)   /* the first batch element's keys and first queries:
                                             read while the engine starts (device context, memory) */
        submit_keys(p, r->kt, first / p->cs.per_b, r->qt, r->qbuf, first);

    /* the engine: on GPUs, bound to this rank's device (the runner's gpu_comm), merging as the
     * plan says (through NCCL on gc's communicator, through MPI, or not at all) */
    const gpu_comm none = {0}, *gc = gcp ? gcp : &none;
    const int rc_engine = rc ? -1 : r->make(plan, comm, gc->device, sh->total, gc->comm, &r->eng);
    if (fa_agree(comm, rc_engine, -1)) {
        if (rc_engine == 0) engine_free(&r->eng);
        memset(&r->eng, 0, sizeof r->eng);
        rc = -1;                     /* no chunk runs; the reads queued above are drained */
    }
    if (rc == 0 && p->key_ring) {   /* the ring's blocks are reused once kv_ready returns */
        const pipe_engine *e = &r->eng;
        const int ok = e->copies_keys && e->kv_begin && e->kv_ready;
        if (!ok) fa_seterr("the plan reads keys into a ring of %d blocks, and this engine does not "
                           "copy out the rows it is handed (it reads them from a shard of every key)",
                           p->key_ring);
        if (fa_agree(comm, ok ? 0 : -1, -1)) rc = -1;   /* no chunk runs; the reads are drained */
    }
    st->nccl = plan->merge == MERGE_NCCL;
    snprintf(st->compute, sizeof st->compute, "%s", r->eng.compute ? r->eng.compute : "float32");
    p->eng = &r->eng;
    p->check_overflow = r->eng.overflow_is_error && !plan->allow_nonfinite;   /* the engine's policy */
    st->used_gpu = plan->backend == BACKEND_CUDA;
    st->t_setup = fa_now() - r->t_start - (p->t_io_exposed - io_pre);
    return rc;
}

/* Batch element b's keys, read by the tasks queued before, handed to the engine: block after
 * block as they arrive where keys stream (chunk i, its first chunk, then computes on each block
 * in turn: *computed), else all at once after the last block. */
static int load_batch_keys(pipe_state *p, pipe_run *r, int64_t i, int64_t b, int slot, attn_queries *q,
                           query_task *t, int *computed) {
    pipeline_stats *st = p->st;
    pipe_engine *eng = &r->eng;
    const kv_shard *sh = r->sh;
    kv_task *kt = r->kt;
    const int stream = r->plan->stream_keys && eng->kv_begin && eng->kv_ready;
    const int64_t row = p->s->Hkv * p->s->D, kes = fa_dtype_size(r->plan->in_type[1]),
                  ves = fa_dtype_size(r->plan->in_type[2]);
    float kmax = 0, vmax = 0;
    double t_first = 0;              /* when the chunk's first compute call went out */
    double t1 = fa_now();
    if (stream && eng->kv_begin(eng->ctx, r->segs, sh->n)) return engine_failed(p);
    st->t_load_kv += fa_now() - t1;
    int rc = 0;
    for (int j = 0; j < p->kv_blocks && rc == 0; j++) {
        rc = wait_io(p, kt[j].ticket);
        kt[j].ticket = -1;
        if (rc) break;
        kmax = kt[j].kmax > kmax ? kt[j].kmax : kmax;
        vmax = kt[j].vmax > vmax ? kt[j].vmax : vmax;
        if (!stream) continue;
        int64_t a, e;
        block_span(p, sh, j, &a, &e);
        const int64_t at = block_at(p, sh, j, a);
        t1 = fa_now();
        if (eng->kv_ready(eng->ctx, a, e - a, r->kbuf + at * row * kes, r->vbuf + at * row * ves))
            return engine_failed(p);
        st->t_load_kv += fa_now() - t1;
        if (p->key_ring) {           /* the engine took the block: its slot takes block j + ring */
            st->key_ring_reads++;
            st->key_ring_bytes_read += (e - a) * row * (kes + ves);
            if (j + p->key_ring < p->kv_blocks) submit_block(p, kt, b, j + p->key_ring);
        }
        if (j == 0) {                /* the chunk's queries, queued right after block 0 */
            rc = wait_io(p, t->ticket);
            t->ticket = -1;
            if (rc) break;
            p->qmax_chunk[i] = t->absmax;
            q->q = t->q;
        }
        q->keys = p->kv_blocks == 1 ? ATTN_KEYS_ALL : j == 0 ? ATTN_KEYS_FIRST
                : j == p->kv_blocks - 1 ? ATTN_KEYS_LAST : ATTN_KEYS_MORE;
        t1 = fa_now();
        if (j == 0) t_first = t1;
        if (eng->compute_chunk(eng->ctx, slot, q)) return engine_failed(p);
        st->t_compute += fa_now() - t1;
        *computed = 1;
    }
    if (rc) return rc;
    const double tk = fa_now(), ek = p->t_io_exposed;
    if (*computed && !st->keys_streamed) {    /* the first batch element loaded */
        st->keys_streamed = 1;
        st->key_blocks = p->kv_blocks;
        st->first_compute_lead_s = kt[p->kv_blocks - 1].t_done - t_first;
    }
    rc = note_kv_digest(p, &kt[p->kv_blocks - 1]);
    if (rc) return rc;
    if (!stream && eng->load_kv(eng->ctx, r->segs, sh->n)) return engine_failed(p);
    if (p->check_overflow) {             /* same point on every rank: collective */
        p->kmax_b[b] = kmax;
        double vm = vmax;
        MPI_Allreduce(&vm, &p->vmax_all, 1, MPI_DOUBLE, MPI_MAX, p->comm);
    }
    st->t_load_kv += fa_now() - tk - (p->t_io_exposed - ek);
    return 0;
}

/* The chunks, from the first: each posted into its slot (its keys first when it starts a batch
 * element), the oldest merge finished once merges_in_flight are in flight. *next_finish: the
 * oldest chunk whose merge is not finished. */
static int pipe_loop(pipe_state *p, pipe_run *r, int64_t *next_finish) {
    const run_plan *plan = r->plan;
    const fa_shape *s = p->s;
    pipeline_stats *st = p->st;
    pipe_engine *eng = &r->eng;
    const int64_t first = r->first, H = s->H, R = eng->rec_len;
    int64_t cur_b = -1;
    int rc = 0;
    for (int64_t i = first; i < p->cs.count && rc == 0 && !p->stopping; i++) {
        int wrote = 0;                       /* a group's write (and its stop check) just ran */
        if (i - first >= p->cs.merges_in_flight) {
            rc = finish_chunk(p, (*next_finish)++);
            if (rc || p->stopping) break;    /* chunk i is not posted */
            wrote = *next_finish % p->cs.group == 0;
        }
        if (p->cs.group > 1 && i > first && !wrote && stop_agreed(p)) break;
        const chunk_place c = schedule_chunk(&p->cs, i);
        query_task *t = &r->qt[i % 2];
        attn_queries q = {.nq = c.n, .q_pos0 = c.r0, .h = (int)H, .hkv = (int)s->Hkv, .d = (int)s->D,
                          .scale = (float)plan->scale, .causal = plan->causal, .diag = s->Nk - s->Nq,
                          .mask = &plan->mask, .b = c.b, .q_type = plan->in_type[0]};
        int computed = 0;                    /* the chunk computed beside its keys' reads */
        if (c.b != cur_b) {                  /* its keys: read by the tasks queued before */
            rc = load_batch_keys(p, r, i, c.b, c.slot, &q, t, &computed);
            if (rc) break;
            cur_b = c.b;
        }
        if (!computed) {
            rc = wait_io(p, t->ticket);
            t->ticket = -1;
            if (rc) break;
            p->qmax_chunk[i] = t->absmax;
            q.q = t->q;
        }
        /* the next chunk's queries are read while this one computes (the other buffer, free:
         * its chunk computed before this one); at a batch element's end, once its last chunk
         * has computed, the next element's keys first */
        if (c.next_same_b) submit_queries(p, r->qt, r->qbuf, i + 1);
        const double t1 = fa_now();
        st->work_pairs += shard_work(r->sh, &plan->mask, c.b, c.r0, c.r0 + c.n) * (double)H;
        /* one path for every engine: the chunk into its slot, then its merge onto the writer */
        if ((!computed && eng->compute_chunk(eng->ctx, c.slot, &q)) ||
            eng->merge_start(eng->ctx, c.slot, c.n, c.writer)) {
            rc = engine_failed(p);
            break;
        }
        st->t_compute += fa_now() - t1;
        if (c.writer != p->rank) st->bytes_reduced += c.n * H * R * (int64_t)sizeof(float);
        st->chunks++;
        if (i + 1 < p->cs.count && !c.next_same_b)    /* this element's keys are no longer read */
            submit_keys(p, r->kt, c.b + 1, r->qt, r->qbuf, i + 1);
    }
    return rc;
}

/* Drain: chunks [first, posted) were posted; finish them in order. When stopping, the last group
 * is cut short: every rank writes what it holds once more so all finished rows are in the file.
 * After an error only complete the merges in flight (every rank posted the same ones, so the
 * waits return). Then every queued I/O task runs (the same ones on every rank: reads queued
 * ahead are read and dropped), and a failed one fails the run. */
static int pipe_drain(pipe_state *p, pipe_run *r, int rc, int64_t next_finish) {
    pipeline_stats *st = p->st;
    const int64_t posted = r->first + st->chunks;
    while (rc == 0 && next_finish < posted) rc = finish_chunk(p, next_finish++);
    if (rc == 0 && posted < p->cs.count && posted % p->cs.group != 0) rc = write_group(p, posted);
    if (rc)   /* every rank started the same merges: finish them before the buffers go */
        for (int64_t j = next_finish; j < posted; j++)
            r->eng.merge_wait(r->eng.ctx, schedule_chunk(&p->cs, j).slot);
    {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", fa_errmsg());   /* the first error stays the run's */
        const int kind = fa_errkind();
        const double w0 = p->t_io_exposed;
        int io_rc = io_drain(p->io, &p->t_io_exposed);   /* the last writes, mostly */
        p->t_write_exposed += p->t_io_exposed - w0;
        if (rc) {
            fa_seterr("%s", msg);
            fa_set_errkind(kind);
        }
        else rc = io_rc;
    }
    return rc;
}

/* Teardown, after the drain (rc: the run's status): the I/O thread stops and its measurements
 * join the run's, then the engine (its stats first), every buffer, the node's window and the
 * rows made here go. */
static void pipe_teardown(pipe_state *p, pipe_run *r, int rc) {
    pipeline_stats *st = p->st;
    st->io_thread = io_worker_threaded(p->io) ? 1 : 0;
    io_worker_stop(p->io);
    MPI_Comm_free(&p->io_comm);
    st->chunks_done = rc == 0 ? r->first + st->chunks : r->first;
    st->stopped = rc == 0 && r->first + st->chunks < p->cs.count;
    /* the I/O thread's measurements (its tasks are done) */
    st->t_read = p->io_st.t_read;
    st->t_kv = p->io_st.t_kv;
    st->t_write = p->io_st.t_write;
    st->bytes_read = p->io_st.bytes_read;
    st->bytes_kv_read = p->io_st.bytes_kv_read;
    st->bytes_written = p->io_st.bytes_written;
    st->read_best_bps = p->io_st.read_best_bps;
    st->write_best_bps = p->io_st.write_best_bps;
    st->t_sync += p->io_st.t_sync;
    st->t_io_exposed = p->t_io_exposed;
    st->t_write_exposed = p->t_write_exposed;
    st->t_read_exposed = p->t_io_exposed - p->t_write_exposed;
    st->t_compute_host = st->t_compute;
    if (r->eng.stats) r->eng.stats(r->eng.ctx, p->st);
    engine_free(&r->eng);
    for (int k = 0; k < 2; k++) {
        free(p->o_set[k]);
        free(p->lse_set[k]);
        free(r->qbuf[k]);
    }
    free(p->qmax_chunk);
    free(p->kmax_b);
    if (p->qnode[0]) {
        MPI_Win_unlock_all(p->qwin);
        MPI_Win_free(&p->qwin);
    }
    if (p->node != MPI_COMM_NULL) MPI_Comm_free(&p->node);
    free(r->segs);
    free(p->kv_ranges);
    free(r->kt);
    free(r->kbuf);
    free(r->vbuf);
    if (r->plan == &r->rows_plan) plan_rows_free(&r->rows_plan);
}

int pipeline_run(const run_plan *planned, MPI_Comm comm, pipe_source *src, pipe_sink *snk,
                 const gpu_comm *gcp, int64_t first_chunk, progress *pg,
                 pipeline_stats *st) {
    return pipeline_run_engine(planned, comm, src, snk, gcp, first_chunk, pg, st, engine_create);
}

int pipeline_run_engine(const run_plan *planned, MPI_Comm comm, pipe_source *src, pipe_sink *snk,
                        const gpu_comm *gcp, int64_t first_chunk, progress *pg,
                        pipeline_stats *st, pipe_engine_maker make) {
    pipe_state p = {0};
    pipe_run r;
    memset(&r, 0, sizeof r);
    r.make = make;
    int rc = pipe_setup(&p, &r, planned, comm, src, snk, gcp, first_chunk, pg, st);
    int64_t next_finish = r.first;
    if (rc == 0) rc = pipe_loop(&p, &r, &next_finish);
    rc = pipe_drain(&p, &r, rc, next_finish);
    const double t_down = fa_now();
    pipe_teardown(&p, &r, rc);
    st->t_total = fa_now() - r.t_start;
    st->t_teardown = fa_now() - t_down;
    return rc;
}
