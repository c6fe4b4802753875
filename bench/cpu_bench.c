/* cpu_bench.c — the CPU engine's speed against the machine's own FMA peak and against plain
 * GEMM-softmax-GEMM attention through multi-threaded OpenBLAS. bench/cpu.sh runs each method in
 * its own process (so ru_maxrss is that method's peak memory) and tabulates the lines printed here.
 *
 *   cpu_bench peak                                  measured fp32 FMA rate, all cores
 *   cpu_bench engine|blas N D H HKV CAUSAL [REPS] [CHUNK] [BR] [BC]
 *
 * Prints one line: "result method=... n=... d=... h=... hkv=... causal=... seconds=... gflops=...
 * maxrss_mib=... err=..." where err is the max |o - ref| / max |ref| over sampled rows against the
 * fp64 reference (validated before timing; exit 1 above 1e-5). FLOPs are 4*B*H*Nq*Nk*D, halved
 * for causal, for both methods (the baseline computes the masked half anyway). B = 1. */
#include "kernels/attn.h"
#include "tune/measure.h"     /* cm_measure_cpu_peak */
#include "base/common.h"
#include <omp.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#ifdef FA_HAVE_CBLAS
#include <cblas.h>
#endif

/* glibc's libmvec has SIMD expf; declaring it lets the baseline's softmax vectorize like ours. */
#pragma omp declare simd notinbranch
float expf(float);

#define VALIDATE_ROWS 6
#define TOL 1e-5

/* ---- peak: independent FMA chains in registers on every core -------------------------------
 * The loop lives in tune/measure.c (cm_measure_cpu_peak), shared with `fa_long tune`. */
static int run_peak(void) {
    double gflops = cm_measure_cpu_peak(0);
#if defined(__AVX512F__)
    int bits = 512;
#elif defined(__AVX__)
    int bits = 256;
#else
    int bits = 128;
#endif
    printf("result method=peak threads=%d vector_bits=%d gflops=%.1f sink=0\n",
           omp_get_max_threads(), bits, gflops);
    return 0;
}

/* ---- problem ----------------------------------------------------------------------------- */
typedef struct {
    int64_t n;               /* Nq = Nk */
    int d, h, hkv, causal, reps;
    int64_t chunk;           /* query rows per engine call, as the runner does */
    cpu_tiling tiling;
    float *q, *k, *v;        /* q [N,H,D]  k, v [N,Hkv,D] */
    float *o;                /* [N,H,D] */
} problem;

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return (float)((double)((rng * 2685821657736338717ull) >> 40) / (double)(1ull << 23) - 1.0);
}
/* Inputs on transparent huge pages when FA_BENCH_THP=1 (machines with THP in madvise mode):
 * the engine walks keys Hkv*D floats apart, a TLB miss per key with 4 KiB pages. */
static float *input_alloc(int64_t n) {
    size_t bytes = sizeof(float) * (size_t)n;
    const char *e = getenv("FA_BENCH_THP");
    if (!(e && atoi(e))) return fa_aligned_alloc(bytes, "bench input");
    size_t huge = 2u << 20;
    bytes = (bytes + huge - 1) / huge * huge;
    void *p = NULL;
    if (posix_memalign(&p, huge, bytes) != 0) fa_fail("out of memory for bench input");
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

static float *rand_buf(int64_t n) {
    float *p = input_alloc(n);
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

static float scale_of(const problem *p) { return 1.0f / sqrtf((float)p->d); }

static double flops_of(const problem *p) {
    double f = 4.0 * p->h * (double)p->n * (double)p->n * p->d;
    return p->causal ? f / 2 : f;
}

/* ---- the engine: chunk after chunk of query rows against the whole key range -------------- */
static void run_engine(problem *p) {
    int64_t len = attn_rec_len(p->d);
    float *rec = fa_aligned_alloc(sizeof(float) * (size_t)(p->chunk * p->h * len), "records");
    attn_kv_segment seg = { .k = p->k, .v = p->v, .n = p->n, .pos0 = 0 };
    for (int64_t r0 = 0; r0 < p->n; r0 += p->chunk) {
        int64_t nr = p->n - r0 < p->chunk ? p->n - r0 : p->chunk;
        attn_queries q = { .q = p->q + r0 * p->h * p->d, .nq = nr, .q_pos0 = r0, .h = p->h,
                           .hkv = p->hkv, .d = p->d, .scale = scale_of(p), .causal = p->causal };
        attn_state_init(rec, nr, p->h, p->d);
        cpu_attn_partial(&q, &seg, 1, rec, &p->tiling, NULL, NULL);
        for (int64_t i = 0; i < nr * p->h; i++)
            attn_rec_finalize(rec + i * len, p->d, p->o + (r0 * p->h + i) * p->d);
    }
    free(rec);
}

/* ---- the baseline: S = Q K^T (N x N per head), softmax, O = P V ------------------------------ */
#ifdef FA_HAVE_CBLAS
static void softmax_rows(float *s, int64_t n, int causal) {
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float *row = s + i * n;
        int64_t vis = causal ? i + 1 : n;          /* Nq = Nk: diag 0 */
        float mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < vis; j++) mx = row[j] > mx ? row[j] : mx;
        #pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < vis; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j < vis; j++) row[j] *= inv;
        for (int64_t j = vis; j < n; j++) row[j] = 0.0f;
    }
}

static void run_blas(problem *p) {
    int64_t n = p->n, ldq = (int64_t)p->h * p->d, ldk = (int64_t)p->hkv * p->d;
    float *s = fa_aligned_alloc(sizeof(float) * (size_t)(n * n), "baseline scores");   /* [N, N] */
    for (int hh = 0; hh < p->h; hh++) {
        const float *kh = p->k + (int64_t)(hh / (p->h / p->hkv)) * p->d;
        const float *vh = p->v + (int64_t)(hh / (p->h / p->hkv)) * p->d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, p->d, scale_of(p),
                    p->q + (int64_t)hh * p->d, (int)ldq, kh, (int)ldk, 0.0f, s, (int)n);
        softmax_rows(s, n, p->causal);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, p->d, (int)n, 1.0f, s,
                    (int)n, vh, (int)ldk, 0.0f, p->o + (int64_t)hh * p->d, (int)ldq);
    }
    free(s);
}
#else
static void run_blas(problem *p) { fa_fail("cpu_bench: built without OpenBLAS, no baseline"); }
#endif

/* ---- validation: sampled rows against the fp64 reference ------------------------------------ */
static double validate(const problem *p) {
    int64_t hd = (int64_t)p->h * p->d;
    double *ro = fa_malloc(sizeof(double) * (size_t)hd, "ref o"), *rl = fa_malloc(sizeof(double) * (size_t)p->h, "ref lse");
    double maxref = 0, maxdiff = 0;
    for (int i = 0; i < VALIDATE_ROWS; i++) {
        int64_t row = i == 0 ? 0 : (p->n - 1) * i / (VALIDATE_ROWS - 1);
        attn_reference_f64(p->q + row * hd, p->k, p->v, p->n, p->n, p->h, p->hkv, p->d,
                           scale_of(p), p->causal, row, 1, ro, rl);
        for (int64_t x = 0; x < hd; x++) {
            double e = fabs(p->o[row * hd + x] - ro[x]);
            maxdiff = e > maxdiff || isnan(e) ? e : maxdiff;
            maxref = fabs(ro[x]) > maxref ? fabs(ro[x]) : maxref;
        }
    }
    free(ro); free(rl);
    return maxdiff / maxref;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static int run_method(const char *method, problem *p) {
    void (*fn)(problem *) = strcmp(method, "engine") == 0 ? run_engine : run_blas;
    fn(p);                                   /* warm-up run, also the one validated */
    double err = validate(p);
    if (!(err <= TOL)) {
        fprintf(stderr, "cpu_bench: %s wrong: max err %.3e > %.0e\n", method, err, TOL);
        return 1;
    }
    /* Wall time is what counts; CPU time per thread is also kept because on a shared machine a
     * neighbour's process steals whole time slices from the wall clock but not from our CPU time. */
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < p->reps; r++) {
        double t0 = fa_now(), c0 = cpu_seconds();
        fn(p);
        double t = fa_now() - t0, c = (cpu_seconds() - c0) / omp_get_max_threads();
        best = t < best ? t : best;
        best_cpu = c < best_cpu ? c : best_cpu;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("result method=%s n=%lld d=%d h=%d hkv=%d causal=%d threads=%d seconds=%.4f "
           "gflops=%.2f cpu_gflops=%.2f maxrss_mib=%.1f err=%.2e\n", method, (long long)p->n,
           p->d, p->h, p->hkv, p->causal, omp_get_max_threads(), best, flops_of(p) / best / 1e9,
           flops_of(p) / best_cpu / 1e9, ru.ru_maxrss / 1024.0, err);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "peak") == 0) return run_peak();
    if (argc < 7) {
        fprintf(stderr, "usage: cpu_bench peak | cpu_bench engine|blas N D H HKV CAUSAL [REPS] "
                        "[CHUNK] [BR] [BC]\n");
        return 2;
    }
    problem p = { 0 };
    p.n = fa_parse_size(argv[2]);
    p.d = atoi(argv[3]);
    p.h = atoi(argv[4]);
    p.hkv = atoi(argv[5]);
    p.causal = atoi(argv[6]);
    p.reps = argc > 7 ? atoi(argv[7]) : 1;
    p.chunk = argc > 8 ? fa_parse_size(argv[8]) : 4096;
    p.tiling.br = argc > 9 ? atoi(argv[9]) : 0;
    p.tiling.bc = argc > 10 ? atoi(argv[10]) : 0;
    p.q = rand_buf(p.n * p.h * p.d);
    p.k = rand_buf(p.n * p.hkv * p.d);
    p.v = rand_buf(p.n * p.hkv * p.d);
    p.o = fa_aligned_alloc(sizeof(float) * (size_t)(p.n * p.h * p.d), "output");
    int rc = run_method(argv[1], &p);
    free(p.q); free(p.k); free(p.v); free(p.o);
    return rc;
}
