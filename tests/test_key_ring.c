/* test_key_ring.c — streamed keys read into a ring of blocks (dist/pipeline.c, plan.key_ring),
 * driven through pipeline_run_engine on a real HDF5 file by a mock engine that copies the rows
 * it is handed (pipe_engine.copies_keys, as the GPU job engine does) and records them:
 *   - every key and value row it is handed equals the file's, in the rank's order, each exactly
 *     once, for every batch element the run loads (B > 1 reads each element's keys again;
 *     --resume's first chunk in a later element reads from there), for shapes that are not
 *     multiples of the block, contiguous, zigzag and striped shards, float32 and bfloat16 rows,
 *     with and without the I/O thread;
 *   - a block is never overwritten while kv_ready holds it: the mock reads its rows on entry and
 *     again after a pause on the way out (the I/O thread reads on meanwhile); the ring's slots
 *     are reused (as many distinct addresses as slots, more blocks than slots);
 *   - the digests (--resume's) are the shard's; a ring that would hold every block is a shard;
 *     an engine that does not copy keys reads them from the shard, and refuses a plan's ring;
 *   - a read failing after the ring wrapped, and an engine failing in kv_ready, end the run
 *     with the line, no hang (an alarm fails the program if one does).
 * Run alone (tests/test_unit.py: one process is the ranks' shards one at a time) and under
 * mpirun with 3 ranks (tests/test_stream_keys.py: the real shards, the reads' agreements). */
#include <math.h>
#include <mpi.h>
#include <string.h>
#include <unistd.h>
#include "dist/pipeline.h"
#include "dist/pipe_io.h"
#include "io/h5gen.h"
#include "io/h5io.h"
#include "base/common.h"
#include "tests/testing.h"

/* The files' values: small integers (exact in bfloat16), a row's position in elements 0 and 1
 * so that no two rows of a batch element and kind agree. */
static float value(int which, int64_t b, int64_t pos, int64_t h, int64_t d) {
    if (d == 0) return (float)(pos % 241 - 120);
    if (d == 1) return (float)((pos / 241 + b * 50 + which * 7) % 241 - 120);
    return (float)((b * 37 + pos * 11 + h * 5 + d * 3 + which * 17) % 241 - 120);
}

static void fill(void *arg, const char *name, int64_t b, int64_t r0, int64_t n, int64_t heads,
                 int64_t d, float *dst) {
    const int which = name[0] == 'q' ? 0 : name[0] == 'k' ? 1 : 2;
    for (int64_t r = 0; r < n; r++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t x = 0; x < d; x++) dst[(r * heads + h) * d + x] = value(which, b, r0 + r, h, x);
}

/* ---- the mock engine ---------------------------------------------------------------------- */
typedef struct {
    int copies;                  /* its copies_keys */
    int hkv, d, h;
    fa_dtype kt, vt;
    double pause_s;              /* how long kv_ready holds each block before its second look */
    int fail_call;               /* the kv_ready call that fails (0: none) */
    /* what it saw */
    int64_t b0, element;         /* the first batch element loaded, and kv_begin calls */
    const attn_kv_segment *segs;
    int nsegs;
    int64_t total, next;         /* the segments' rows; rows handed so far */
    int64_t *pos;                /* [total] the file position of each of the rank's rows */
    int64_t rows, wrong_rows, changed_rows, out_of_order, incomplete, calls, empty_calls;
    int64_t not_shard;           /* rows handed away from the shard's own place (copies == 0) */
    const void *addr[64];        /* distinct addresses of the blocks handed */
    int naddr;
} mock;

/* Rows [0, n) at k and v are rows row0.. of the shard, batch element b: 0 or the first bad row + 1. */
static int64_t rows_bad(const mock *m, int64_t b, int64_t row0, int64_t n, const void *k, const void *v) {
    const int64_t row = (int64_t)m->hkv * m->d;
    const size_t kes = (size_t)fa_dtype_size(m->kt), ves = (size_t)fa_dtype_size(m->vt);
    for (int64_t r = 0; r < n; r++)
        for (int64_t e = 0; e < row; e++) {
            float x, y;
            fa_to_f32(m->kt, (const char *)k + (size_t)(r * row + e) * kes, &x, 1);
            fa_to_f32(m->vt, (const char *)v + (size_t)(r * row + e) * ves, &y, 1);
            const int64_t p = m->pos[row0 + r], h = e / m->d, d = e % m->d;
            if (x != value(1, b, p, h, d) || y != value(2, b, p, h, d)) return r + 1;
        }
    return 0;
}

static int m_kv_begin(void *ctx, const attn_kv_segment *segs, int nsegs) {
    mock *m = ctx;
    if (m->element > 0 && m->next != m->total) m->incomplete++;
    m->element++;
    m->segs = segs;
    m->nsegs = nsegs;
    m->total = m->next = 0;
    for (int i = 0; i < nsegs; i++) m->total += segs[i].n;
    free(m->pos);
    m->pos = fa_malloc(sizeof(int64_t) * (size_t)(m->total + 1), "positions");
    for (int i = 0, x = 0; i < nsegs; i++)
        for (int64_t j = 0; j < segs[i].n; j++) m->pos[x++] = segs[i].pos0 + j;
    return 0;
}

static int m_kv_ready(void *ctx, int64_t row0, int64_t n, const void *k, const void *v) {
    mock *m = ctx;
    const int64_t b = m->b0 + m->element - 1;
    if (++m->calls == m->fail_call) return fa_seterr("mock engine: kv_ready call %d fails", m->fail_call);
    if (row0 != m->next || n < 0 || row0 + n > m->total) {
        m->out_of_order++;
        return 0;
    }
    if (n == 0) {
        m->empty_calls++;
        return 0;
    }
    int seen = 0;
    for (int i = 0; i < m->naddr; i++) seen |= m->addr[i] == k;
    if (!seen && m->naddr < 64) m->addr[m->naddr++] = k;
    if (m->nsegs > 0 && m->segs[0].k) {   /* a shard (through a ring, the segments have no rows) */
        const int64_t row = (int64_t)m->hkv * m->d;
        if ((const char *)k != (const char *)m->segs[0].k + row0 * row * fa_dtype_size(m->kt)) m->not_shard += n;
    }
    const int64_t bad = rows_bad(m, b, row0, n, k, v);
    if (bad) {
        m->wrong_rows++;
        printf("  row %lld of batch element %lld (position %lld) is not the file's\n",
               (long long)(row0 + bad - 1), (long long)b, (long long)m->pos[row0 + bad - 1]);
    }
    if (m->pause_s > 0) usleep((useconds_t)(m->pause_s * 1e6));
    if (!bad && rows_bad(m, b, row0, n, k, v)) m->changed_rows++;   /* overwritten while held */
    m->rows += n;
    m->next = row0 + n;
    return 0;
}

static int m_load_kv(void *ctx, const attn_kv_segment *segs, int nsegs) {
    if (m_kv_begin(ctx, segs, nsegs)) return -1;
    for (int i = 0, row0 = 0; i < nsegs; row0 += (int)segs[i].n, i++)
        if (m_kv_ready(ctx, row0, segs[i].n, segs[i].k, segs[i].v)) return -1;
    return 0;
}

static int m_compute(void *ctx, int slot, const attn_queries *q) {
    mock *m = ctx;
    if ((q->keys == ATTN_KEYS_LAST || q->keys == ATTN_KEYS_ALL) && m->next != m->total) m->incomplete++;
    return 0;
}
static int m_merge_start(void *ctx, int slot, int64_t n, int root) { return 0; }
static int m_merge_wait(void *ctx, int slot) { return 0; }
static int m_fetch(void *ctx, int slot, int64_t n, void *o, float *lse) {
    mock *m = ctx;
    memset(o, 0, sizeof(float) * (size_t)(n * m->h * m->d));
    memset(lse, 0, sizeof(float) * (size_t)(n * m->h));
    return 0;
}

static mock *the_mock;           /* what make_mock hands the pipeline */

static int make_mock(const run_plan *pl, MPI_Comm comm, int device, int64_t kv_rows, void *nccl,
                     pipe_engine *e) {
    memset(e, 0, sizeof *e);
    *e = (pipe_engine){.compute = "float32", .rec_len = (int)pl->s.D + 2, .overflow_is_error = 1,
                       .copies_keys = the_mock->copies, .ctx = the_mock, .load_kv = m_load_kv,
                       .kv_begin = m_kv_begin, .kv_ready = m_kv_ready, .compute_chunk = m_compute,
                       .merge_start = m_merge_start, .merge_wait = m_merge_wait, .fetch = m_fetch};
    return 0;
}

/* ---- a source that fails its n-th read of k, and a sink that keeps the digests -------------- */
typedef struct {
    pipe_source in;
    int fail_k, k_reads;
} failing_source;

static int f_read(void *ctx, int which, int64_t b, const row_range *r, int nr, void *dst,
                  fa_dtype as, int check_finite) {
    failing_source *f = ctx;
    if (which == PIPE_K && ++f->k_reads == f->fail_k)   /* every rank at the same read */
        return fa_seterr("input 'keys.h5': injected failure of read %d of 'k'", f->fail_k);
    return f->in.read_rows(f->in.ctx, which, b, r, nr, dst, as, check_finite);
}
static float f_absmax(void *ctx, int which) {
    failing_source *f = ctx;
    return f->in.last_absmax(f->in.ctx, which);
}
static void f_identity(void *ctx, int64_t *size, int64_t *mt) {
    failing_source *f = ctx;
    f->in.identity(f->in.ctx, size, mt);
}
static void f_digests(void *ctx, uint64_t d[3]) {
    failing_source *f = ctx;
    f->in.take_digests(f->in.ctx, d);
}

static uint64_t noted[8][2];     /* the digests the sink was given, by batch element */
static void note_kv(void *ctx, int64_t b, uint64_t k, uint64_t v) {
    if (b >= 0 && b < 8) noted[b][0] = k, noted[b][1] = v;
}

/* ---- one run ---------------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    int typed;                   /* the file's bfloat16 rows handed as they are (the GPU's) */
    int P, r;                    /* one process: rank r's shard of P ranks; several: their own */
    shard_layout layout;
    int64_t block, chunk;        /* key_read_rows, query rows a chunk */
    int ring;                    /* the plan's key_ring (0: a shard) */
    int io_thread, copies;
    int64_t first_b;             /* the first batch element computed (--resume) */
    int fail_k, fail_call;       /* a read of k, a kv_ready call that fails (0: none) */
} run_cfg;

typedef struct {
    int rc;
    char msg[512];
    pipeline_stats st;
    mock m;
    uint64_t digests[8][2];
} run_out;

static void run(const char *path, const fa_shape *fs, const run_cfg *c, run_out *out, int nprocs) {
    memset(out, 0, sizeof *out);
    memset(noted, 0, sizeof noted);
    const char *dsets[3] = {"q", "k", "v"};
    h5in *in;
    fa_shape s;
    if (h5in_open(path, dsets, MPI_COMM_WORLD, 0, &in, &s)) {
        out->rc = -2;
        snprintf(out->msg, sizeof out->msg, "%s", fa_errmsg());
        return;
    }
    failing_source fsrc = {.fail_k = c->fail_k};
    pipe_source_h5(&fsrc.in, in, 1, 1);
    pipe_source src = {.ctx = &fsrc, .read_rows = f_read, .last_absmax = f_absmax,
                       .identity = f_identity, .take_digests = f_digests};
    float *o = fa_calloc((size_t)(s.B * s.Nq * s.H * s.D), sizeof(float), "o");
    float *lse = fa_calloc((size_t)(s.B * s.Nq * s.H), sizeof(float), "lse");
    pipe_mem_sink ms = {.o = o, .o_type = FA_F32, .B = s.B, .Nq = s.Nq, .H = s.H, .D = s.D, .lse = lse};
    pipe_sink snk;
    pipe_sink_mem(&snk, &ms, 0);
    snk.note_kv = note_kv;

    run_plan pl;
    memset(&pl, 0, sizeof pl);
    pl.s = s;
    pl.input = path;
    pl.output = "o";
    pl.mode = MODE_EXACT;
    pl.backend = BACKEND_CPU;
    pl.compute_name = "float32";
    pl.mask = mask_plain(s.Nq, s.Nk, 0);
    pl.scale = 1.0;
    pl.o_type = FA_F32;
    pl.nranks = nprocs;
    pl.chunk = c->chunk;
    pl.merges_in_flight = 2;
    pl.layout = c->layout;
    pl.q_read = Q_READ_RANK;
    pl.io_cap_bytes = (int64_t)1 << 30;
    pl.io_thread = c->io_thread && fa_mpi_thread_multiple;
    pl.io_omp_threads = 2;
    pl.direct_read = pl.fused_read = 1;
    pl.in_type[0] = pl.in_type[1] = pl.in_type[2] = FA_F32;
    if (c->typed) pl.in_type[1] = s.k_type, pl.in_type[2] = s.v_type;
    pl.o_xfer = FA_F32;
    pl.stream_keys = 1;
    pl.key_read_rows = c->block;
    pl.key_ring = c->ring;
    pl.tiling = (cpu_tiling){.threads = 2};
    if (nprocs > 1)
        plan_rows_make(&pl, fa_rank, snk.writer);
    else {                       /* rank r's shard of P ranks, in this one process */
        pl.writer = snk.writer;
        shard_plan(s.Nk, c->P, c->r, c->layout, 0, &pl.shard);
        pl.rows_planned = 1;
    }
    mock *m = &out->m;
    *m = (mock){.copies = c->copies, .hkv = (int)s.Hkv, .d = (int)s.D, .h = (int)s.H,
                .kt = pl.in_type[1], .vt = pl.in_type[2], .pause_s = pl.io_thread ? 0.002 : 0,
                .fail_call = c->fail_call, .b0 = c->first_b};
    the_mock = m;
    progress pg;
    progress_init(&pg, 0, 1, 1.0, 0);
    const int64_t per_b = (s.Nq + c->chunk - 1) / c->chunk;
    out->rc = pipeline_run_engine(&pl, MPI_COMM_WORLD, &src, &snk, NULL, c->first_b * per_b, &pg,
                                  &out->st, make_mock);
    snprintf(out->msg, sizeof out->msg, "%s", out->rc ? fa_errmsg() : "");
    if (m->element > 0 && m->next != m->total && out->rc == 0) m->incomplete++;
    memcpy(out->digests, noted, sizeof noted);
    free(m->pos);
    m->pos = NULL;
    plan_rows_free(&pl);
    h5in_close(in);
    free(o);
    free(lse);
    (void)fs;
}

/* The checks of a run that should succeed. */
static void expect_rows(const run_cfg *c, const run_out *o, int64_t B, int64_t shard_rows) {
    const mock *m = &o->m;
    const int64_t elements = B - c->first_b;
    CHECK(o->rc == 0, "%s: the run succeeds (%s)", c->name, o->msg);
    CHECK(m->element == elements, "%s: %lld batch elements loaded, expected %lld", c->name,
          (long long)m->element, (long long)elements);
    CHECK(m->rows == elements * shard_rows, "%s: %lld rows handed, expected %lld (each once)",
          c->name, (long long)m->rows, (long long)(elements * shard_rows));
    CHECK(m->wrong_rows == 0 && m->out_of_order == 0 && m->incomplete == 0,
          "%s: %lld blocks not the file's rows, %lld out of order, %lld elements incomplete",
          c->name, (long long)m->wrong_rows, (long long)m->out_of_order, (long long)m->incomplete);
    CHECK(m->changed_rows == 0, "%s: %lld blocks overwritten while kv_ready held them", c->name,
          (long long)m->changed_rows);
}

static void case_ring(const char *path, const fa_shape *s, run_cfg c, int nprocs) {
    run_out *o = fa_calloc(1, sizeof *o, "run");
    run(path, s, &c, o, nprocs);
    const int64_t R = o->st.key_ring_rows, total = o->st.key_shard_bytes /
                      (s->Hkv * s->D * (int64_t)(fa_dtype_size(o->m.kt) + fa_dtype_size(o->m.vt)));
    expect_rows(&c, o, s->B, total);
    int64_t blocks = (total + c.block - 1) / c.block, all = blocks;
    if (nprocs > 1) MPI_Allreduce(&blocks, &all, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    const int ring = all > c.ring ? c.ring : 0;
    const int64_t elements = s->B - c.first_b;
    CHECK(o->st.key_ring == ring, "%s: %d blocks in the ring, expected %d (%lld blocks)", c.name,
          o->st.key_ring, ring, (long long)all);
    printf("%s  %s: %lld rows a rank in %lld blocks of %lld, ring %d: %lld rows handed in %lld "
           "calls at %d addresses\n", o->m.wrong_rows || o->m.changed_rows ? "FAIL" : "PASS",
           c.name, (long long)total, (long long)all, (long long)c.block, ring,
           (long long)o->m.rows, (long long)o->m.calls, o->m.naddr);
    if (ring) {
        const int64_t full = (total + c.block - 1) / c.block;   /* this rank's non-empty blocks */
        const int64_t rows = ring * c.block < total ? ring * c.block : total;   /* no more than the keys */
        CHECK(R == c.block && o->st.key_ring_bytes == rows * s->Hkv * s->D *
              (int64_t)(fa_dtype_size(o->m.kt) + fa_dtype_size(o->m.vt)),
              "%s: the ring holds %d blocks of %lld rows (%lld bytes)", c.name, ring,
              (long long)R, (long long)o->st.key_ring_bytes);
        CHECK(o->st.key_ring_reads == elements * all, "%s: %lld blocks read through the ring, "
              "expected %lld", c.name, (long long)o->st.key_ring_reads, (long long)(elements * all));
        CHECK(o->m.naddr == (full < ring ? full : ring), "%s: blocks handed from %d addresses, "
              "expected the ring's %d slots", c.name, o->m.naddr, ring);
        CHECK(o->st.key_ring_bytes_read == elements * o->st.key_shard_bytes,
              "%s: every key's bytes went through the ring", c.name);
    } else
        CHECK(o->m.not_shard == 0, "%s: rows handed at their place in the shard", c.name);
    free(o);
}

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &fa_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &fa_nranks);
    fa_mpi_thread_multiple = provided >= MPI_THREAD_MULTIPLE;
    fa_verbosity = 0;
    alarm(300);                  /* a hang fails the program */
    const int P = fa_nranks;
    char dir[] = "/tmp/fa_key_ring_XXXXXX", f32[64], bf16[64];
    if (fa_rank == 0 && !mkdtemp(dir)) fa_fail("cannot make a temporary folder");
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    snprintf(f32, sizeof f32, "%s/f32.h5", dir);
    snprintf(bf16, sizeof bf16, "%s/bf16.h5", dir);
    /* 3 batch elements, 1013 keys (prime: no block size divides a shard), GQA */
    const fa_shape s = {.B = 3, .Nq = 45, .Nk = 1013, .H = 4, .Hkv = 2, .D = 24};
    if (fa_rank == 0 && (h5_write_inputs(f32, 1, &s, FA_F32, FA_LAYOUT_AUTO, fill, NULL) ||
                         h5_write_inputs(bf16, 1, &s, FA_BF16, FA_LAYOUT_AUTO, fill, NULL)))
        fa_fail("%s", fa_errmsg());
    MPI_Barrier(MPI_COMM_WORLD);
    if (fa_rank == 0)
        printf("test_key_ring: %d rank(s), MPI_THREAD_MULTIPLE %s\n", P, fa_mpi_thread_multiple ? "yes" : "no");

    /* the ring, one process being each rank of several in turn (or the ranks themselves) */
    const run_cfg rings[] = {
        {.name = "one rank, float32, ring 3 of blocks of 64, I/O thread", .P = 1,
         .layout = SHARD_CONTIGUOUS, .block = 64, .chunk = 20, .ring = 3, .io_thread = 1, .copies = 1},
        {.name = "rank 1 of 3 zigzag, bfloat16, ring 3 of 37, in series", .typed = 1, .P = 3, .r = 1,
         .layout = SHARD_ZIGZAG, .block = 37, .chunk = 16, .ring = 3, .copies = 1},
        {.name = "rank 2 of 3 striped, float32, ring 4 of 50, I/O thread", .P = 3, .r = 2,
         .layout = SHARD_STRIPED, .block = 50, .chunk = 45, .ring = 4, .io_thread = 1, .copies = 1},
        {.name = "rank 0 of 2 contiguous, bfloat16, ring 5 of 23, I/O thread", .typed = 1, .P = 2,
         .layout = SHARD_CONTIGUOUS, .block = 23, .chunk = 7, .ring = 5, .io_thread = 1, .copies = 1},
        {.name = "--resume from batch element 2, ring 3 of 40, I/O thread", .typed = 1, .P = 2, .r = 1,
         .layout = SHARD_ZIGZAG, .block = 40, .chunk = 9, .ring = 3, .io_thread = 1, .copies = 1,
         .first_b = 2},
        /* 3 ranks: 337, 338 and 338 keys in blocks of 337, so 1 or 2 blocks a rank; a ring of
         * one block where the first rank's keys fit whole */
        {.name = "zigzag over 3 ranks, a ring of 1 block of 337", .typed = 1, .P = 3,
         .layout = SHARD_ZIGZAG, .block = 337, .chunk = 45, .ring = 1, .io_thread = 1, .copies = 1},
        {.name = "a ring of 3 over 3 blocks: a shard", .P = 1,
         .layout = SHARD_CONTIGUOUS, .block = 400, .chunk = 45, .ring = 3, .io_thread = 1, .copies = 1},
        {.name = "an engine that does not copy keys: the shard", .typed = 1, .P = 3,
         .layout = SHARD_ZIGZAG, .block = 37, .chunk = 16, .ring = 0, .io_thread = 1, .copies = 0},
    };
    for (size_t i = 0; i < sizeof rings / sizeof rings[0]; i++) {
        run_cfg c = rings[i];
        if (P > 1 && c.P > 1) c.r = fa_rank, c.P = P;   /* several ranks: each its own shard */
        case_ring(c.typed ? bf16 : f32, &s, c, P);
    }

    {   /* the digests (--resume's) are the same through a ring as through the shard */
        run_cfg a = {.name = "digests, ring", .typed = 1, .P = 1,
            .layout = SHARD_CONTIGUOUS, .block = 50, .chunk = 45, .ring = 3, .io_thread = 1, .copies = 1};
        run_cfg b = {.name = "digests, shard", .typed = 1, .P = 1,
            .layout = SHARD_CONTIGUOUS, .block = 50, .chunk = 45, .ring = 0, .io_thread = 1, .copies = 0};
        run_out *oa = fa_calloc(1, sizeof *oa, "run"), *ob = fa_calloc(1, sizeof *ob, "run");
        run(bf16, &s, &a, oa, P);
        run(bf16, &s, &b, ob, P);
        int same = oa->rc == 0 && ob->rc == 0 && oa->st.key_ring == 3 && ob->st.key_ring == 0;
        for (int64_t x = 0; x < s.B; x++)
            same = same && oa->digests[x][0] == ob->digests[x][0] &&
                   oa->digests[x][1] == ob->digests[x][1] && oa->digests[x][0] && oa->digests[x][1] &&
                   (x == 0 || oa->digests[x][0] != oa->digests[0][0]);
        check(same, "the k and v digests of every batch element: through the ring as through the shard");
        free(oa);
        free(ob);
    }
    {   /* a plan's ring with an engine that reads keys from the shard: refused, no hang */
        run_cfg c = {.name = "ring for a non-copying engine", .P = 1,
            .layout = SHARD_CONTIGUOUS, .block = 64, .chunk = 20, .ring = 3, .io_thread = 1, .copies = 0};
        run_out *o = fa_calloc(1, sizeof *o, "run");
        run(f32, &s, &c, o, P);
        check(o->rc == -1 && strstr(o->msg, "does not copy") && o->m.calls == 0,
              "a ring planned for an engine that does not copy keys: refused before any chunk (%s)", o->msg);
        free(o);
    }
    /* a read failing after the ring wrapped (read 6 of k, block 5, queued once the engine took
     * block 2; it took blocks 0-4 before waiting for it): the read's line, at once, with and
     * without the I/O thread */
    for (int thread = 0; thread < 2; thread++) {
        run_cfg c = {.name = "a failing read", .P = 1,
            .layout = SHARD_CONTIGUOUS, .block = 64, .chunk = 20, .ring = 3, .io_thread = thread,
            .copies = 1, .fail_k = 6};
        run_out *o = fa_calloc(1, sizeof *o, "run");
        const double t0 = fa_now();
        run(f32, &s, &c, o, P);
        check(o->rc == -1 && strstr(o->msg, "injected failure of read 6") && o->m.rows > 0,
              "read 6 of k fails (%s): the run ends with its line after %lld rows, in %.2f s (%s)",
              thread ? "I/O thread" : "in series", (long long)o->m.rows, fa_now() - t0, o->msg);
        check(o->m.wrong_rows == 0 && o->m.changed_rows == 0, "  the rows handed before it were the file's");
        free(o);
    }
    if (P == 1) {   /* the engine failing in kv_ready mid-ring (a library call returns it) */
        fa_library_call = 1;
        run_cfg c = {.name = "a failing engine", .P = 1,
            .layout = SHARD_CONTIGUOUS, .block = 64, .chunk = 20, .ring = 3, .io_thread = 1,
            .copies = 1, .fail_call = 5};
        run_out *o = fa_calloc(1, sizeof *o, "run");
        run(f32, &s, &c, o, P);
        fa_library_call = 0;
        check(o->rc == -1 && strstr(o->msg, "kv_ready call 5 fails"),
              "kv_ready fails at its 5th call: the run ends with the engine's line (%s)", o->msg);
        free(o);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (fa_rank == 0) {
        unlink(f32);
        unlink(bf16);
        rmdir(dir);
    }
    int bad = tests_done(), any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}
