/* layout_read.c — reading torch's bhnd [B, H, N, D] against fa_long's bnhd [B, N, H, D]: every
 * row of q in query chunks (as the pipeline reads them) and of k and v in one shard read each (one
 * rank's keys), through h5in_read_rows, from two files holding the same values in the two layouts
 * (fa_long gen, and gen --layout bhnd, with the same seed). bench/layout_read.sh makes them.
 *
 *   build/bench/layout_read BNHD.h5 BHND.h5 [CHUNK_ROWS] [REPEATS]
 *
 * Validation first: every row of the bhnd file is read back bit-identical to the bnhd file's.
 * Then each layout's read is timed REPEATS times (best kept), alternating, so both see the same
 * page cache; '#'-headed table: layout, dataset, MB read (file type), best s, GB/s, and bhnd's
 * time over bnhd's (the baseline, same run). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/h5io.h"                 /* h5in_open, h5in_read_rows, h5in_layout */
#include "base/common.h"             /* fa_now, fa_malloc, fa_errmsg */

/* Reads every row of dataset i (0 q, 1 k, 2 v) of every batch element into buf, q in chunks of
 * `chunk` rows, k and v whole; seconds taken. */
static double read_all(h5in *in, const fa_shape *s, int i, int64_t chunk, float *buf) {
    const char *name = i == 0 ? "q" : i == 1 ? "k" : "v";
    const int64_t N = i ? s->Nk : s->Nq, step = i ? N : chunk;
    const int64_t row = (i ? s->Hkv : s->H) * s->D;
    double t0 = fa_now();
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t r = 0; r < N; r += step) {
            row_range rr = {r, N - r < step ? N - r : step};
            if (h5in_read_rows(in, name, b, &rr, 1, buf + (b * N + r) * row, 0))
                fa_fail("reading %s: %s", name, fa_errmsg());
        }
    return fa_now() - t0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc < 3) {
        fprintf(stderr, "usage: %s BNHD.h5 BHND.h5 [CHUNK_ROWS] [REPEATS]\n", argv[0]);
        return 2;
    }
    const int64_t chunk = argc > 3 ? atoll(argv[3]) : 1024;
    const int reps = argc > 4 ? atoi(argv[4]) : 5;
    h5in *in[2];
    fa_shape s[2];
    for (int l = 0; l < 2; l++)
        if (h5in_open(argv[1 + l], NULL, MPI_COMM_WORLD, 0, &in[l], &s[l]))
            fa_fail("%s", fa_errmsg());
    if (h5in_layout(in[0], 0) != FA_BNHD || h5in_layout(in[1], 0) != FA_BHND ||
        s[0].B != s[1].B || s[0].Nq != s[1].Nq || s[0].Nk != s[1].Nk || s[0].H != s[1].H ||
        s[0].Hkv != s[1].Hkv || s[0].D != s[1].D || s[0].q_type != s[1].q_type)
        fa_fail("expected %s in bnhd and %s in bhnd (gen --layout bhnd), of the same shape",
                argv[1], argv[2]);
    const int64_t nq = s[0].B * s[0].Nq * s[0].H * s[0].D, nk = s[0].B * s[0].Nk * s[0].Hkv * s[0].D;
    const int64_t n = nq > nk ? nq : nk;
    float *a = fa_malloc((size_t)n * sizeof(float), "bnhd rows");
    float *b = fa_malloc((size_t)n * sizeof(float), "bhnd rows");
    for (int i = 0; i < 3; i++) {                      /* validation before timing */
        read_all(in[0], &s[0], i, chunk, a);
        read_all(in[1], &s[1], i, chunk, b);
        if (memcmp(a, b, (size_t)(i ? nk : nq) * sizeof(float)))
            fa_fail("dataset %d: the bhnd file's rows differ from the bnhd file's", i);
    }
    double best[2][3];
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < 3; i++) best[l][i] = 1e30;
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < 3; i++)
            for (int l = 0; l < 2; l++) {
                double t = read_all(in[l], &s[l], i, chunk, l ? b : a);
                if (t < best[l][i]) best[l][i] = t;
            }
    const fa_shape *z = &s[0];
    printf("# B=%lld Nq=%lld Nk=%lld H=%lld Hkv=%lld D=%lld %s, q in chunks of %lld rows, best "
           "of %d, validated bit-identical\n", (long long)z->B, (long long)z->Nq, (long long)z->Nk,
           (long long)z->H, (long long)z->Hkv, (long long)z->D, fa_dtype_name(z->q_type),
           (long long)chunk, reps);
    printf("# layout  dataset       MB   best_s    GB/s  vs_bnhd\n");
    double tot[2] = {0, 0};
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < 3; i++) {
            double mb = (double)(i ? nk : nq) * fa_dtype_size(z->q_type) / 1e6;
            tot[l] += best[l][i];
            printf("%8s  %7s %8.1f %8.4f %7.2f %8.3f\n", l ? "bhnd" : "bnhd", i == 0 ? "q" : i == 1 ? "k" : "v",
                   mb, best[l][i], mb / 1e3 / best[l][i], best[l][i] / best[0][i]);
        }
    printf("%8s  %7s %8s %8.4f %7s %8.3f\n", "bhnd", "all", "", tot[1], "", tot[1] / tot[0]);
    h5in_close(in[0]);
    h5in_close(in[1]);
    free(a);
    free(b);
    MPI_Finalize();
    return 0;
}
