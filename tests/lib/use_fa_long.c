/* use_fa_long.c — a user's MPI program on the installed library (tests/test_library.py builds it
 * with `mpicc $(pkg-config --cflags --libs fa_long)` against `make install PREFIX=...`): each rank
 * holds an uneven contiguous shard of the keys, fa_attention_mpi merges them, and rank 0 checks
 * o and lse against its own fp64 attention (written here) and against fa_attention in one
 * process; then a bad descriptor must fail with FA_EINVAL and a message on every rank.
 * Prints "use_fa_long: ok ..." and exits 0 when everything holds. */
#include <fa_long.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 2, NQ = 77, NK = 131, H = 6, HKV = 2, D = 40, LEFT = 29 };

static float frand(unsigned *s) { *s = *s * 1664525u + 1013904223u; return (float)((*s >> 8) * (1.0 / 16777216.0) * 2 - 1); }

/* fp64 attention of row i, head h, batch b, bhnd tensors, causal with a left window LEFT */
static void ref_row(const float *q, const float *k, const float *v, int b, int i, int h, double *o,
                    double *lse) {
    const int g = h / (H / HKV), p = i + NK - NQ;
    double m = -INFINITY, l = 0, s[NK];
    for (int j = 0; j < NK; j++) {
        s[j] = -INFINITY;
        if (j > p || j < p - LEFT) continue;
        double dot = 0;
        for (int d = 0; d < D; d++)
            dot += (double)q[(((size_t)b * H + h) * NQ + i) * D + d] * k[(((size_t)b * HKV + g) * NK + j) * D + d];
        s[j] = dot / sqrt((double)D);
        if (s[j] > m) m = s[j];
    }
    for (int d = 0; d < D; d++) o[d] = 0;
    for (int j = 0; j < NK; j++) {
        if (s[j] == -INFINITY) continue;
        double e = exp(s[j] - m);
        l += e;
        for (int d = 0; d < D; d++) o[d] += e * v[(((size_t)b * HKV + g) * NK + j) * D + d];
    }
    for (int d = 0; d < D; d++) o[d] = l > 0 ? o[d] / l : 0;
    *lse = l > 0 ? m + log(l) : -INFINITY;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int me, np;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &np);
    unsigned seed = 12345;
    size_t nq = (size_t)B * H * NQ * D, nk = (size_t)B * HKV * NK * D;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
    for (size_t x = 0; x < nq; x++) q[x] = frand(&seed);
    for (size_t x = 0; x < nk; x++) k[x] = frand(&seed);
    for (size_t x = 0; x < nk; x++) v[x] = frand(&seed);
    /* this rank's keys: an uneven split, [lo, hi) of every batch element, [B, HKV, n, D] */
    int lo = (int)((long)NK * me * me / ((long)np * np)), hi = (int)((long)NK * (me + 1) * (me + 1) / ((long)np * np));
    int n = hi - lo;
    float *ks = malloc((size_t)B * HKV * (n ? n : 1) * D * 4), *vs = malloc((size_t)B * HKV * (n ? n : 1) * D * 4);
    for (int b = 0; b < B; b++)
        for (int g = 0; g < HKV; g++)
            for (int j = 0; j < n; j++) {
                memcpy(ks + (((size_t)b * HKV + g) * n + j) * D, k + (((size_t)b * HKV + g) * NK + lo + j) * D, D * 4);
                memcpy(vs + (((size_t)b * HKV + g) * n + j) * D, v + (((size_t)b * HKV + g) * NK + lo + j) * D, D * 4);
            }
    fa_attn_desc d;
    fa_attn_desc_init(&d);
    d.batch = B; d.nq = NQ; d.nk = NK; d.heads = H; d.kv_heads = HKV; d.head_dim = D;
    d.layout = FA_LAYOUT_BHND;
    d.causal = 1;
    d.window_left = LEFT;
    float *o = malloc(nq * 4), *lse = malloc((size_t)B * H * NQ * 4);
    int rc = fa_attention_mpi(MPI_COMM_WORLD, &d, q, ks, vs, lo, n, o, lse, -1);
    if (rc) { fprintf(stderr, "rank %d: %s\n", me, fa_long_error()); MPI_Abort(MPI_COMM_WORLD, 1); }
    int bad = 0;
    double worst = 0, scale = 0;
    if (me == 0) {
        double ro[D], rl;
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < NQ; i++) {
                    ref_row(q, k, v, b, i, h, ro, &rl);
                    const float *g = o + (((size_t)b * H + h) * NQ + i) * D;
                    for (int x = 0; x < D; x++) {
                        if (fabs(g[x] - ro[x]) > worst) worst = fabs(g[x] - ro[x]);
                        if (fabs(ro[x]) > scale) scale = fabs(ro[x]);
                    }
                    float gl = lse[((size_t)b * H + h) * NQ + i];
                    if (isinf(rl) ? gl != rl : fabs(gl - rl) > 1e-5 * fmax(1, fabs(rl))) bad++;
                }
        float *o1 = malloc(nq * 4);
        if (fa_attention(&d, q, k, v, o1, NULL)) { fprintf(stderr, "%s\n", fa_long_error()); bad++; }
        double diff = 0;
        for (size_t x = 0; x < nq; x++) diff = fmax(diff, fabs(o1[x] - o[x]));
        if (diff > 1e-6 * scale) bad++;
        if (worst > 1e-5 * scale) bad++;
        printf("use_fa_long: %d ranks, %s: max rel err %.2e against fp64, one process vs ranks %.2e, "
               "%d bad lse\n", np, fa_long_version(), worst / scale, diff / scale, bad);
        free(o1);
    }
    d.kv_heads = 4;                     /* 6 heads over 4 kv heads: refused on every rank */
    rc = fa_attention_mpi(MPI_COMM_WORLD, &d, q, ks, vs, lo, n, o, lse, 0);
    if (rc != FA_EINVAL || !strstr(fa_long_error(), "not a multiple of kv_heads")) {
        fprintf(stderr, "rank %d: bad descriptor gave %d: %s\n", me, rc, fa_long_error());
        bad++;
    }
    MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (me == 0 && !bad) printf("use_fa_long: ok\n");
    MPI_Finalize();
    return bad ? 1 : 0;
}
