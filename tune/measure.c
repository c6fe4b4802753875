/* measure.c — see measure.h. */
#include "tune/measure.h"
#include "base/common.h"
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

/* FMA peak: independent chains in registers (more than latency x pipes, so the pipes never
 * wait); the empty asm keeps them in registers. Moved here from bench/cpu_bench.c. */
#if defined(__AVX512F__)
typedef float cm_vecf __attribute__((vector_size(64)));
#define CM_CHAINS 16
#elif defined(__AVX__)
typedef float cm_vecf __attribute__((vector_size(32)));
#define CM_CHAINS 12
#else
typedef float cm_vecf __attribute__((vector_size(16)));
#define CM_CHAINS 12
#endif
#define FMA4(a, b, c, d) a = a * mul + add; b = b * mul + add; c = c * mul + add; d = d * mul + add
static double fma_loop(int64_t iters) {
    cm_vecf mul, add;
    for (int i = 0; i < (int)(sizeof(cm_vecf) / 4); i++) { mul[i] = 0.999999f; add[i] = 1e-7f; }
    cm_vecf a0 = mul, a1 = mul * 2, a2 = mul * 3, a3 = mul * 4, a4 = mul * 5, a5 = mul * 6,
            a6 = mul * 7, a7 = mul * 8, a8 = mul * 9, a9 = mul * 10, a10 = mul * 11, a11 = mul * 12;
#if CM_CHAINS == 16
    cm_vecf a12 = mul * 13, a13 = mul * 14, a14 = mul * 15, a15 = mul * 16;
#endif
    for (int64_t it = 0; it < iters; it++) {
        FMA4(a0, a1, a2, a3); FMA4(a4, a5, a6, a7); FMA4(a8, a9, a10, a11);
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                         "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
#if CM_CHAINS == 16
        FMA4(a12, a13, a14, a15);
        __asm__ volatile("" : "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
#endif
    }
    cm_vecf t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
#if CM_CHAINS == 16
    t += a12 + a13 + a14 + a15;
#endif
    return t[0];
}

double cm_measure_cpu_peak(int threads) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    int64_t iters = 20 * 1000 * 1000;
    double sink = 0, best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = fa_now();
        #pragma omp parallel num_threads(nt) reduction(+ : sink)
        sink += fma_loop(iters);
        double t = fa_now() - t0;
        double flops = 2.0 * CM_CHAINS * (sizeof(cm_vecf) / 4) * (double)iters * nt;
        if (flops / t > best) best = flops / t;
    }
    if (sink == 12345.678) fprintf(stderr, "%g\n", sink);     /* keeps the loop's result live */
    return best / 1e9;
}

/* Read bandwidth of a buffer of `bytes` per thread, every thread reading its own: vector loads
 * into 4 independent accumulators (so the adds never limit), best of reps passes. */
static double read_gbps(int nt, int64_t bytes, int reps) {
    const int64_t nv = bytes / (int64_t)sizeof(cm_vecf);
    double best = 0, sink = 0;
    #pragma omp parallel num_threads(nt) reduction(+ : sink)
    {
        cm_vecf *a = fa_aligned_alloc((size_t)nv * sizeof(cm_vecf), "bandwidth buffer");
        for (int64_t i = 0; i < nv; i++) a[i] = a[i] * 0 + (float)(i & 7);
        for (int r = 0; r < reps; r++) {
            #pragma omp barrier
            double t0 = fa_now();
            cm_vecf s0 = a[0] * 0, s1 = s0, s2 = s0, s3 = s0;
            for (int64_t i = 0; i + 3 < nv; i += 4) {
                s0 += a[i]; s1 += a[i + 1]; s2 += a[i + 2]; s3 += a[i + 3];
            }
            #pragma omp barrier
            double t = fa_now() - t0;
            s0 += s1 + s2 + s3;
            sink += s0[0];
            #pragma omp master
            if ((double)bytes * nt / t > best) best = (double)bytes * nt / t;
        }
        free(a);
    }
    if (sink == -1) fprintf(stderr, "%g\n", sink);
    return best / 1e9;
}

double cm_measure_mem_gbps(int threads) {
    return read_gbps(threads > 0 ? threads : omp_get_max_threads(), (int64_t)128 << 20, 3);
}

double cm_measure_cache_gbps(int threads, int64_t bytes) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    return read_gbps(nt, bytes, (int)(((int64_t)2 << 30) / (bytes * nt) + 1));
}
