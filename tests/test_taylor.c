/* test_taylor.c — the Taylor CPU engine (kernels/cpu/taylor_cpu.c) against the fp64 formula
 * (kernels/cpu/taylor_ref.c), on fresh random inputs each run (seed printed; FA_TEST_SEED=N repeats
 * one). Ranks are simulated: each "rank" holds a shard of the keys (contiguous or striped ranges),
 * runs its own engine over every query chunk, and the records are merged by a plain sum, as the
 * pipeline's MPI_Ireduce does.
 *
 * Tolerances (fp32 engine, fp64 reference):
 *   o:    max|o - ref| / max|ref| <= 1e-5 over the rows compared; lse: |lse - ref| <= 1e-5 (1 + |ref|)
 *   rows whose fp64 den/N_i lies within 1e-3 of the floor (TAYLOR_DEN_FLOOR) are not compared
 *   (fp32 and fp64 may fall on different sides of the policy); every other row must take the
 *   same branch of the policy as the reference.
 *   threads 1 vs 2, in-order vs out-of-order chunks: <= 1e-6 relative.
 * One line per check, then "N passed, N failed"; exit 1 on any failure. */
#include "kernels/taylor.h"
#include "base/common.h"
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include "tests/testing.h"

#define TOL 1e-5
#define TOL_SAME 1e-6



typedef struct {
    int64_t nq, nk;
    int h, hkv, d, causal;
    float amp, koff;      /* q, k uniform in [-amp, amp); keys shifted by koff (a common offset) */
} shape;

typedef struct {
    int ranks, striped;   /* simulated ranks; striped (stripe keys) or contiguous shards */
    int64_t stripe, chunk;
    int tile, threads;
    int reverse;          /* run the chunks last to first (the engine restarts its prefix state) */
    int global;           /* non-causal: states summed over ranks (get/set_state), each rank a
                           * share of each chunk's rows, as dist/taylor_engine.c does */
} layout;

typedef struct { float *q, *k, *v; } inputs;

static inputs make_inputs(const shape *s) {
    inputs in;
    int64_t nq = s->nq * s->h * s->d, nk = s->nk * s->hkv * s->d;
    in.q = fa_malloc(sizeof(float) * (size_t)(nq + 1), "q");
    in.k = fa_malloc(sizeof(float) * (size_t)(nk + 1), "k");
    in.v = fa_malloc(sizeof(float) * (size_t)(nk + 1), "v");
    for (int64_t i = 0; i < nq; i++) in.q[i] = s->amp * frand();
    for (int64_t i = 0; i < nk; i++) in.k[i] = s->amp * frand() + s->koff;
    for (int64_t i = 0; i < nk; i++) in.v[i] = frand();
    return in;
}
static void free_inputs(inputs *in) { free(in->q); free(in->k); free(in->v); }

/* The shard of rank p: ranges of keys as segments into k, v. Returns the count. */
static int shard_segments(const shape *s, const layout *L, int p, const inputs *in,
                          attn_kv_segment *segs) {
    int n = 0;
    int64_t row = (int64_t)s->hkv * s->d;
    if (!L->striped) {
        int64_t a = s->nk * p / L->ranks, b = s->nk * (p + 1) / L->ranks;
        if (b > a) segs[n++] = (attn_kv_segment){.k = in->k + a * row, .v = in->v + a * row, .n = b - a, .pos0 = a};
        return n;
    }
    for (int64_t st = 0, i = 0; st < s->nk; st += L->stripe, i++) {
        if (i % L->ranks != p) continue;
        int64_t len = s->nk - st < L->stripe ? s->nk - st : L->stripe;
        segs[n++] = (attn_kv_segment){.k = in->k + st * row, .v = in->v + st * row, .n = len, .pos0 = st};
    }
    return n;
}

/* The engine over every simulated rank and chunk; the merged records finalized into o, lse, kind. */
static void run_engine(const shape *s, const layout *L, const inputs *in, float *o, float *lse,
                       int *kind) {
    int64_t R = taylor_rec_len(s->d), nrec = s->nq * s->h;
    float *rec = fa_calloc((size_t)(nrec * R), sizeof(float), "records");
    double *mu = fa_malloc(sizeof(double) * (size_t)(s->hkv * s->d), "mu");
    taylor_ref_key_mean(in->k, s->nk, s->hkv, s->d, mu);
    float scale = 1.0f / sqrtf((float)s->d);
    int64_t nchunks = (s->nq + L->chunk - 1) / L->chunk;
    int64_t P = (int64_t)s->hkv * ((int64_t)s->d * s->d + 2 * s->d);
    double *state = fa_calloc((size_t)P, sizeof(double), "state"), *part = fa_malloc(sizeof(double) * (size_t)P, "state");
    taylor_cpu **eng = fa_calloc((size_t)L->ranks, sizeof *eng, "engines");
    attn_kv_segment **rsegs = fa_calloc((size_t)L->ranks, sizeof *rsegs, "segments");
    for (int p = 0; p < L->ranks; p++) {
        rsegs[p] = fa_calloc((size_t)(s->nk + 2), sizeof **rsegs, "segments");
        int ns = shard_segments(s, L, p, in, rsegs[p]);
        eng[p] = taylor_cpu_create(s->h, s->hkv, s->d, L->threads, L->tile);
        taylor_cpu_load_kv(eng[p], rsegs[p], ns, mu);
        if (L->global) {                     /* the Allreduce of the ranks' states */
            taylor_cpu_get_state(eng[p], part);
            for (int64_t x = 0; x < P; x++) state[x] += part[x];
        }
    }
    for (int p = 0; p < L->ranks; p++) {
        taylor_cpu *e = eng[p];
        if (L->global) taylor_cpu_set_state(e, state, s->nk);
        for (int64_t ci = 0; ci < nchunks; ci++) {
            int64_t c = L->reverse ? nchunks - 1 - ci : ci;
            int64_t r0 = c * L->chunk, n = s->nq - r0 < L->chunk ? s->nq - r0 : L->chunk;
            if (L->global) {                 /* this rank's share of the chunk */
                int64_t a = n * p / L->ranks, b = n * (p + 1) / L->ranks;
                r0 += a;
                n = b - a;
            }
            attn_queries q = {.q = in->q + r0 * s->h * s->d, .nq = n, .q_pos0 = r0, .h = s->h,
                              .hkv = s->hkv, .d = s->d, .scale = scale, .causal = s->causal,
                              .diag = s->nk - s->nq};
            taylor_cpu_partial(e, &q, rec + r0 * s->h * R, NULL, NULL);
        }
        taylor_cpu_destroy(e);
        free(rsegs[p]);
    }
    free(eng); free(rsegs); free(state); free(part);
    for (int64_t r = 0; r < nrec; r++) lse[r] = taylor_rec_finalize(rec + r * R, s->d, o + r * s->d, kind + r);
    free(rec);
    free(mu);
}

typedef struct { double rel, lse_err; int64_t compared, skipped, branch_diff, nonfinite, fallback; } result;

static result compare(const shape *s, const float *o, const float *lse, const int *kind,
                      const double *ro, const double *rlse, const double *ratio, const int *rkind) {
    result res = {0};
    double dmax = 0, rmax = 0;
    for (int64_t r = 0; r < s->nq * s->h; r++) {
        for (int x = 0; x < s->d; x++) if (!isfinite(o[r * s->d + x])) res.nonfinite++;
        if (!isfinite(lse[r]) && rkind[r] != TAYLOR_ROW_EMPTY) res.nonfinite++;
        if (kind[r] == TAYLOR_ROW_FALLBACK) res.fallback++;
        if (rkind[r] != TAYLOR_ROW_EMPTY && fabs(ratio[r] - TAYLOR_DEN_FLOOR) < 1e-3) {
            res.skipped++;
            continue;
        }
        if (kind[r] != rkind[r]) res.branch_diff++;
        res.compared++;
        for (int x = 0; x < s->d; x++) {
            double df = fabs((double)o[r * s->d + x] - ro[r * s->d + x]);
            if (df > dmax || df != df) dmax = df != df ? INFINITY : df;
            if (fabs(ro[r * s->d + x]) > rmax) rmax = fabs(ro[r * s->d + x]);
        }
        double le = (rlse[r] == -INFINITY && lse[r] == -INFINITY) ? 0.0
                  : fabs(lse[r] - rlse[r]) / (1.0 + fabs(rlse[r]));
        if (le != le) le = INFINITY;
        if (le > res.lse_err) res.lse_err = le;
    }
    res.rel = rmax > 0 ? dmax / rmax : dmax;
    return res;
}

static void case_vs_ref(const char *name, shape s, layout L) {
    inputs in = make_inputs(&s);
    int64_t nrec = s.nq * s.h;
    float *o = fa_malloc(sizeof(float) * (size_t)(nrec * s.d), "o"), *lse = fa_malloc(sizeof(float) * (size_t)nrec, "lse");
    int *kind = fa_malloc(sizeof(int) * (size_t)nrec, "kind"), *rkind = fa_malloc(sizeof(int) * (size_t)nrec, "kind");
    double *ro = fa_malloc(sizeof(double) * (size_t)(nrec * s.d), "ref"), *rlse = fa_malloc(sizeof(double) * (size_t)nrec, "ref");
    double *ratio = fa_malloc(sizeof(double) * (size_t)nrec, "ratio");
    run_engine(&s, &L, &in, o, lse, kind);
    taylor_reference_f64(in.q, in.k, in.v, s.nq, s.nk, s.h, s.hkv, s.d, 1.0 / sqrt((double)s.d),
                         s.causal, 0, s.nq, ro, rlse, ratio, rkind);
    result r = compare(&s, o, lse, kind, ro, rlse, ratio, rkind);
    check(r.rel <= TOL && r.lse_err <= TOL && r.nonfinite == 0 && r.branch_diff == 0 && r.compared > 0,
          "%-26s Nq=%lld Nk=%lld H=%d Hkv=%d D=%d %s, %d rank%s %s, chunk %lld tile %d: rel %.2e lse %.2e "
          "(%lld rows, %lld near the floor skipped, %lld fallback, %lld branch differences)",
          name, (long long)s.nq, (long long)s.nk, s.h, s.hkv, s.d, s.causal ? "causal" : "non-causal",
          L.ranks, L.ranks == 1 ? "" : "s", L.striped ? "striped" : "contiguous", (long long)L.chunk,
          L.tile, r.rel, r.lse_err, (long long)r.compared, (long long)r.skipped, (long long)r.fallback,
          (long long)r.branch_diff);
    free(o); free(lse); free(kind); free(rkind); free(ro); free(rlse); free(ratio);
    free_inputs(&in);
}

/* Two layouts of the same problem give the same output (<= TOL_SAME). */
static void case_same(const char *name, shape s, layout a, layout b) {
    inputs in = make_inputs(&s);
    int64_t nrec = s.nq * s.h;
    float *o1 = fa_malloc(sizeof(float) * (size_t)(nrec * s.d), "o"), *o2 = fa_malloc(sizeof(float) * (size_t)(nrec * s.d), "o");
    float *l1 = fa_malloc(sizeof(float) * (size_t)nrec, "lse"), *l2 = fa_malloc(sizeof(float) * (size_t)nrec, "lse");
    int *k1 = fa_malloc(sizeof(int) * (size_t)nrec, "kind"), *k2 = fa_malloc(sizeof(int) * (size_t)nrec, "kind");
    run_engine(&s, &a, &in, o1, l1, k1);
    run_engine(&s, &b, &in, o2, l2, k2);
    double dmax = 0, rmax = 0;
    for (int64_t i = 0; i < nrec * s.d; i++) {
        double df = fabs((double)o1[i] - o2[i]);
        if (df > dmax || df != df) dmax = df != df ? INFINITY : df;
        if (fabs(o1[i]) > rmax) rmax = fabs(o1[i]);
    }
    double rel = rmax > 0 ? dmax / rmax : dmax;
    check(rel <= TOL_SAME, "%-26s two layouts agree: rel %.2e", name, rel);
    free(o1); free(o2); free(l1); free(l2); free(k1); free(k2);
    free_inputs(&in);
}

/* Denominator policy on a constructed row: causal, row 0 sees key 0 alone, q0 points against
 * k^_0 so den = 1 + s q0.k^_0 < 0: the row must fall back to v_0 exactly; a row that sees no key
 * (Nq > Nk) must be 0 with lse -inf; overflowing values must give zeros, never NaN or Inf. */
static void case_policy(void) {
    shape s = {.nq = 40, .nk = 24, .h = 2, .hkv = 1, .d = 16, .causal = 1, .amp = 1.0f};
    inputs in = make_inputs(&s);
    double mu[16];
    taylor_ref_key_mean(in.k, s.nk, s.hkv, s.d, mu);
    int64_t diag = s.nk - s.nq, row0 = -diag;      /* the first row that sees key 0 (16) */
    for (int x = 0; x < s.d; x++) {                /* q of (row0, head 0) = -8 k^_0 */
        in.q[(row0 * s.h + 0) * s.d + x] = -8.0f * (float)(in.k[x] - mu[x]);
    }
    int64_t nrec = s.nq * s.h;
    float *o = fa_malloc(sizeof(float) * (size_t)(nrec * s.d), "o"), *lse = fa_malloc(sizeof(float) * (size_t)nrec, "lse");
    int *kind = fa_malloc(sizeof(int) * (size_t)nrec, "kind");
    layout L = {.ranks = 2, .striped = 1, .stripe = 5, .chunk = 7, .tile = 4, .threads = 2};
    run_engine(&s, &L, &in, o, lse, kind);
    int64_t r = row0 * s.h + 0;
    double df = 0;
    for (int x = 0; x < s.d; x++) df = fmax(df, fabs(o[r * s.d + x] - in.v[x]));
    check(kind[r] == TAYLOR_ROW_FALLBACK && df <= 1e-6 && fabs(lse[r] - logf(1.0f)) <= 1e-6,
          "policy: den < 0 (row %lld sees one key) falls back to v_0 (kind %d, max diff %.1e)",
          (long long)row0, kind[r], df);
    int empty_ok = 1, finite = 1;
    for (int64_t i = 0; i < nrec; i++) {
        int64_t row = i / s.h;
        if (row < row0) empty_ok &= kind[i] == TAYLOR_ROW_EMPTY && lse[i] == -INFINITY;
        for (int x = 0; x < s.d; x++) {
            if (row < row0) empty_ok &= o[i * s.d + x] == 0.0f;
            finite &= isfinite(o[i * s.d + x]);
        }
    }
    check(empty_ok && finite, "policy: rows that see no key are 0 with lse -inf; no NaN/Inf");
    /* overflow: values near FLT_MAX summed over several keys overflow fp32 */
    for (int64_t i = 0; i < s.nk * s.hkv * s.d; i++) in.v[i] = 3e38f;
    run_engine(&s, &L, &in, o, lse, kind);
    int64_t zeroed = 0;
    finite = 1;
    for (int64_t i = 0; i < nrec; i++) {
        zeroed += kind[i] == TAYLOR_ROW_ZEROED;
        for (int x = 0; x < s.d; x++) finite &= isfinite(o[i * s.d + x]);
    }
    check(finite && zeroed > 0, "policy: overflowing values give zeroed rows (%lld), no NaN/Inf",
          (long long)zeroed);
    free(o); free(lse); free(kind);
    free_inputs(&in);
}

/* The non-causal denominator is N up to rounding: centering makes sum k^ vanish. */
static void case_noncausal_den(void) {
    shape s = {.nq = 64, .nk = 300, .h = 2, .hkv = 2, .d = 32, .causal = 0, .amp = 3.0f, .koff = 5.0f};
    inputs in = make_inputs(&s);
    int64_t R = taylor_rec_len(s.d);
    float *rec = fa_calloc((size_t)(s.nq * s.h * R), sizeof(float), "rec");
    double mu[64];
    taylor_ref_key_mean(in.k, s.nk, s.hkv, s.d, mu);
    attn_kv_segment seg = {.k = in.k, .v = in.v, .n = s.nk, .pos0 = 0};
    taylor_cpu *e = taylor_cpu_create(s.h, s.hkv, s.d, 2, 0);
    taylor_cpu_load_kv(e, &seg, 1, mu);
    attn_queries q = {.q = in.q, .nq = s.nq, .q_pos0 = 0, .h = s.h, .hkv = s.hkv, .d = s.d,
                      .scale = 1.0f / sqrtf((float)s.d), .causal = 0, .diag = 0};
    taylor_cpu_partial(e, &q, rec, NULL, NULL);
    double worst = 0;
    for (int64_t r = 0; r < s.nq * s.h; r++) worst = fmax(worst, fabs(rec[r * R] + rec[r * R + 1] - (double)s.nk) / s.nk);
    check(worst <= 1e-4, "non-causal den = N (keys offset by 5, |q| up to 3): max |den/N - 1| = %.1e", worst);
    taylor_cpu_destroy(e);
    free(rec);
    free_inputs(&in);
}

int main(void) {
    const char *env = getenv("FA_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
    rng = seed * 0x9E3779B97F4A7C15ull + 1;
    printf("test_taylor: seed %llu (FA_TEST_SEED=%llu repeats it)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    layout one = {.ranks = 1, .chunk = 64, .tile = 16, .threads = 2};
    /* non-causal and causal, GQA, MQA, odd D, Nq != Nk; 1-4 simulated ranks, striped shards */
    for (int causal = 0; causal <= 1; causal++)
        for (int p = 1; p <= 4; p++) {
            layout L = {.ranks = p, .striped = causal, .stripe = 13, .chunk = 50, .tile = 16, .threads = 2};
            char name[64];
            snprintf(name, sizeof name, "gqa %s ranks=%d", causal ? "causal" : "noncausal", p);
            case_vs_ref(name, (shape){.nq = 203, .nk = 203, .h = 6, .hkv = 2, .d = 64, .causal = causal, .amp = 1.0f}, L);
        }
    for (int p = 2; p <= 4; p++) {
        char name[64];
        snprintf(name, sizeof name, "global state ranks=%d", p);
        case_vs_ref(name, (shape){.nq = 203, .nk = 190, .h = 6, .hkv = 2, .d = 40, .causal = 0, .amp = 1.0f},
                    (layout){.ranks = p, .chunk = 50, .tile = 16, .threads = 2, .global = 1});
    }
    case_vs_ref("mqa odd D", (shape){.nq = 97, .nk = 131, .h = 4, .hkv = 1, .d = 33, .causal = 0, .amp = 1.0f}, one);
    case_vs_ref("mqa odd D causal", (shape){.nq = 97, .nk = 131, .h = 4, .hkv = 1, .d = 33, .causal = 1, .amp = 1.0f},
                (layout){.ranks = 3, .striped = 1, .stripe = 7, .chunk = 30, .tile = 8, .threads = 2});
    case_vs_ref("causal Nq < Nk", (shape){.nq = 77, .nk = 190, .h = 4, .hkv = 2, .d = 64, .causal = 1, .amp = 1.0f},
                (layout){.ranks = 2, .striped = 1, .stripe = 16, .chunk = 33, .tile = 16, .threads = 2});
    case_vs_ref("causal Nq > Nk (empty)", (shape){.nq = 120, .nk = 50, .h = 2, .hkv = 1, .d = 64, .causal = 1, .amp = 1.0f},
                (layout){.ranks = 2, .striped = 1, .stripe = 8, .chunk = 40, .tile = 16, .threads = 2});
    case_vs_ref("d128 contiguous causal", (shape){.nq = 150, .nk = 150, .h = 4, .hkv = 4, .d = 128, .causal = 1, .amp = 1.0f},
                (layout){.ranks = 3, .striped = 0, .chunk = 64, .tile = 64, .threads = 2});
    case_vs_ref("key offset 4, |q| 2", (shape){.nq = 130, .nk = 170, .h = 4, .hkv = 2, .d = 64, .causal = 1, .amp = 2.0f, .koff = 4.0f},
                (layout){.ranks = 2, .striped = 1, .stripe = 16, .chunk = 64, .tile = 32, .threads = 2});
    case_vs_ref("|q|, |k| 3: many fallbacks", (shape){.nq = 300, .nk = 300, .h = 4, .hkv = 2, .d = 16, .causal = 1, .amp = 3.0f},
                (layout){.ranks = 3, .striped = 1, .stripe = 11, .chunk = 64, .tile = 16, .threads = 2});
    case_vs_ref("long causal 1 rank", (shape){.nq = 2500, .nk = 2500, .h = 2, .hkv = 1, .d = 32, .causal = 1, .amp = 1.0f},
                (layout){.ranks = 1, .chunk = 2500, .tile = 64, .threads = 2});
    case_vs_ref("tile 1 (every row a tile)", (shape){.nq = 60, .nk = 60, .h = 2, .hkv = 2, .d = 8, .causal = 1, .amp = 1.0f},
                (layout){.ranks = 2, .striped = 1, .stripe = 3, .chunk = 17, .tile = 1, .threads = 2});
    shape sh = {.nq = 180, .nk = 180, .h = 4, .hkv = 2, .d = 32, .causal = 1, .amp = 1.0f};
    case_same("threads 1 vs 2", sh, (layout){.ranks = 1, .chunk = 64, .tile = 16, .threads = 1},
              (layout){.ranks = 1, .chunk = 64, .tile = 16, .threads = 2});
    case_same("chunks in reverse order", sh, (layout){.ranks = 2, .striped = 1, .stripe = 9, .chunk = 40, .tile = 16, .threads = 2},
              (layout){.ranks = 2, .striped = 1, .stripe = 9, .chunk = 40, .tile = 16, .threads = 2, .reverse = 1});
    case_policy();
    case_noncausal_den();
    return tests_done();
}
