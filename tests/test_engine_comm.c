/* test_engine_comm.c — what the engines tell the pipeline, and over which ranks they talk
 * (dist/pipeline.h: pipe_engine), with no channel beside the engine table:
 *   - the Taylor engine's collectives (the global key mean, the non-causal state) run on the
 *     communicator it is given: every rank gives it a communicator of its own (MPI_Comm_split,
 *     one rank each), so each must come out as the Taylor kernel over that rank's keys alone,
 *     whatever the world's size;
 *   - its finalized rows by kind reach the caller through the engine's stats
 *     (pipeline_stats.taylor), counted per engine;
 *   - the overflow policy is a property of the engine (pipe_engine.overflow_is_error): exact
 *     engines 1, Taylor 0.
 * Run alone (tests/test_unit.py) and under mpirun with 2 ranks (tests/test_taylor.py), where a
 * collective on MPI_COMM_WORLD would mix the other rank's keys in. Fresh random inputs each run
 * (seed printed; FA_TEST_SEED=N repeats one). */
#include <math.h>
#include <mpi.h>
#include <string.h>
#include "dist/pipeline.h"
#include "kernels/taylor.h"
#include "base/common.h"
#include "tests/testing.h"

typedef struct { int64_t nq, nk; int h, hkv, d, causal; float amp; } shape;

static run_plan make_plan(const shape *s, fa_mode mode, int64_t chunk) {
    run_plan pl;
    memset(&pl, 0, sizeof pl);
    pl.s = (fa_shape){.B = 1, .Nq = s->nq, .Nk = s->nk, .H = s->h, .Hkv = s->hkv, .D = s->d};
    pl.mode = mode;
    pl.backend = BACKEND_CPU;
    pl.causal = s->causal;
    pl.chunk = chunk;
    pl.merges_in_flight = 2;
    pl.nranks = 1;
    pl.tiling = (cpu_tiling){.br = 16, .threads = 2};
    pl.o_xfer = FA_F32;
    return pl;
}

/* The Taylor kernel over these keys alone, chunk by chunk: o, lse and the rows of each kind. */
static void taylor_alone(const shape *s, int64_t chunk, const float *q, const attn_kv_segment *seg,
                         float *o, float *lse, int64_t kinds[4]) {
    const int64_t hd = (int64_t)s->hkv * s->d, R = taylor_rec_len(s->d);
    double *mu = fa_calloc((size_t)hd, sizeof(double), "mu");
    taylor_key_sums(seg, 1, s->hkv, s->d, mu);
    for (int64_t e = 0; e < hd; e++) mu[e] /= (double)seg->n;
    taylor_cpu *t = taylor_cpu_create(s->h, s->hkv, s->d, 2, 16);
    taylor_cpu_load_kv(t, seg, 1, mu);
    float *rec = fa_malloc(sizeof(float) * (size_t)(chunk * s->h * R), "records");
    for (int64_t r0 = 0; r0 < s->nq; r0 += chunk) {
        const int64_t n = s->nq - r0 < chunk ? s->nq - r0 : chunk;
        attn_queries qq = {.q = q + r0 * s->h * s->d, .nq = n, .q_pos0 = r0, .h = s->h,
                           .hkv = s->hkv, .d = s->d, .scale = 1.0f / sqrtf((float)s->d),
                           .causal = s->causal, .diag = s->nk - s->nq};
        memset(rec, 0, sizeof(float) * (size_t)(n * s->h * R));
        taylor_cpu_partial(t, &qq, rec, NULL, NULL);
        for (int64_t x = 0; x < n * s->h; x++) {
            int kind;
            lse[r0 * s->h + x] = taylor_rec_finalize(rec + x * R, s->d, o + (r0 * s->h + x) * s->d, &kind);
            kinds[kind]++;
        }
    }
    free(rec);
    taylor_cpu_destroy(t);
    free(mu);
}

/* The engine of `mode` on comm over the same chunks, through the slot calls as the pipeline
 * makes them; its stats into *st. Returns 0, or -1 when it cannot start. */
static int run_engine(const shape *s, fa_mode mode, int64_t chunk, MPI_Comm comm, const float *q,
                      const attn_kv_segment *seg, float *o, float *lse, pipe_engine *seen,
                      pipeline_stats *st) {
    run_plan pl = make_plan(s, mode, chunk);
    pipe_engine e;
    if (engine_create(&pl, comm, 0, seg->n, NULL, &e)) return -1;
    *seen = e;
    int rc = e.load_kv(e.ctx, seg, 1);
    for (int64_t i = 0, r0 = 0; r0 < s->nq && !rc; i++, r0 += chunk) {
        const int64_t n = s->nq - r0 < chunk ? s->nq - r0 : chunk;
        const int slot = (int)(i % pl.merges_in_flight);
        attn_queries qq = {.q = q + r0 * s->h * s->d, .nq = n, .q_pos0 = r0, .h = s->h,
                           .hkv = s->hkv, .d = s->d, .scale = 1.0f / sqrtf((float)s->d),
                           .causal = s->causal, .diag = s->nk - s->nq, .keys = ATTN_KEYS_ALL};
        rc = e.compute_chunk(e.ctx, slot, &qq) || e.merge_start(e.ctx, slot, n, 0) ||
             e.merge_wait(e.ctx, slot) ||
             e.fetch(e.ctx, slot, n, o + r0 * s->h * s->d, lse + r0 * s->h);
    }
    memset(st, 0, sizeof *st);
    if (e.stats) e.stats(e.ctx, st);
    engine_free(&e);
    return rc;
}

static void case_taylor(const char *name, const shape *s, int64_t chunk, MPI_Comm comm, int rank) {
    const int64_t nqe = s->nq * s->h * s->d, nke = s->nk * s->hkv * s->d;
    float *q = fa_malloc(sizeof(float) * (size_t)nqe, "q"), *k = fa_malloc(sizeof(float) * (size_t)nke, "k"),
          *v = fa_malloc(sizeof(float) * (size_t)nke, "v");
    for (int64_t i = 0; i < nqe; i++) q[i] = s->amp * frand();
    for (int64_t i = 0; i < nke; i++) k[i] = s->amp * frand() + 0.5f * (float)rank;   /* the ranks' keys differ */
    for (int64_t i = 0; i < nke; i++) v[i] = frand();
    attn_kv_segment seg = {.k = k, .v = v, .n = s->nk, .pos0 = 0};
    const int64_t nrec = s->nq * s->h;
    float *o = fa_calloc((size_t)nqe, sizeof(float), "o"), *lse = fa_calloc((size_t)nrec, sizeof(float), "lse");
    float *ro = fa_calloc((size_t)nqe, sizeof(float), "o"), *rlse = fa_calloc((size_t)nrec, sizeof(float), "lse");
    int64_t kinds[4] = {0};
    taylor_alone(s, chunk, q, &seg, ro, rlse, kinds);
    for (int pass = 0; pass < 2; pass++) {    /* a second engine counts its own rows only */
        pipe_engine e = {0};
        pipeline_stats st;
        int rc = run_engine(s, MODE_TAYLOR, chunk, comm, q, &seg, o, lse, &e, &st);
        check(rc == 0, "%s (pass %d): the Taylor engine ran on its own communicator", name, pass);
        double worst = 0;
        for (int64_t x = 0; x < nqe; x++) worst = fmax(worst, fabs((double)o[x] - ro[x]) / (1 + fabs((double)ro[x])));
        for (int64_t x = 0; x < nrec; x++)
            if (isfinite(rlse[x]) || isfinite(lse[x])) worst = fmax(worst, fabs((double)lse[x] - rlse[x]) / (1 + fabs((double)rlse[x])));
        check(worst <= 1e-6, "%s (pass %d): o, lse as the kernel over this rank's keys alone: max rel "
              "diff %.1e (<= 1e-6)", name, pass, worst);
        check(st.taylor.rows == nrec && st.taylor.fallback == kinds[TAYLOR_ROW_FALLBACK] &&
                  st.taylor.zeroed == kinds[TAYLOR_ROW_ZEROED] && st.taylor.empty == kinds[TAYLOR_ROW_EMPTY],
              "%s (pass %d): stats count rows %lld fallback %lld zeroed %lld empty %lld (expected %lld "
              "%lld %lld %lld)", name, pass, (long long)st.taylor.rows, (long long)st.taylor.fallback,
              (long long)st.taylor.zeroed, (long long)st.taylor.empty, (long long)nrec,
              (long long)kinds[TAYLOR_ROW_FALLBACK], (long long)kinds[TAYLOR_ROW_ZEROED],
              (long long)kinds[TAYLOR_ROW_EMPTY]);
        check(e.overflow_is_error == 0, "%s: the Taylor engine finalizes non-finite rows by its own "
              "policy (overflow_is_error 0)", name);
    }
    free(q); free(k); free(v); free(o); free(lse); free(ro); free(rlse);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    uint64_t seed = test_seed();
    MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    rng = (seed + (uint64_t)rank) * 0x9E3779B97F4A7C15ull + 1;
    if (rank == 0)
        printf("test_engine_comm: %d rank(s), seed %llu (FA_TEST_SEED=%llu repeats it)\n", size,
               (unsigned long long)seed, (unsigned long long)seed);
    MPI_Comm alone;                  /* the pipeline's communicator: this rank alone */
    MPI_Comm_split(MPI_COMM_WORLD, rank, 0, &alone);
    case_taylor("non-causal", &(shape){.nq = 100, .nk = 150, .h = 4, .hkv = 2, .d = 32, .amp = 1.0f}, 40, alone, rank);
    case_taylor("causal, |q|, |k| 3 (fallbacks)",
                &(shape){.nq = 120, .nk = 120, .h = 4, .hkv = 2, .d = 16, .causal = 1, .amp = 3.0f}, 50, alone, rank);
    case_taylor("causal Nq > Nk (empty rows)",
                &(shape){.nq = 90, .nk = 40, .h = 2, .hkv = 1, .d = 32, .causal = 1, .amp = 1.0f}, 32, alone, rank);
    {   /* the exact CPU engine: a non-finite row from finite inputs is an overflow */
        shape s = {.nq = 8, .nk = 8, .h = 2, .hkv = 1, .d = 16};
        run_plan pl = make_plan(&s, MODE_EXACT, 8);
        pipe_engine e;
        int rc = engine_create(&pl, alone, 0, s.nk, NULL, &e);
        check(rc == 0 && e.overflow_is_error == 1, "the exact CPU engine: overflow_is_error 1");
        if (rc == 0) engine_free(&e);
    }
    MPI_Comm_free(&alone);
    int bad = tests_done(), any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}
