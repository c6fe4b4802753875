/* taylor_ref.c — the fp64 twin of the Taylor engines (kernels/taylor.h): the same formula, key by
 * key, in double, with no tiles and no prefix states. Used by the unit tests and `fa_long check
 * --mode taylor`. O(rows * Nk * D): for sampled rows and small problems only. */
#include "kernels/taylor.h"
#include "base/common.h"
#include <string.h>

void taylor_ref_key_mean(const float *k, int64_t nk, int hkv, int d, double *mu) {
    int64_t row = (int64_t)hkv * d;
    memset(mu, 0, sizeof(double) * (size_t)row);
    for (int64_t j = 0; j < nk; j++)
        for (int64_t e = 0; e < row; e++) mu[e] += (double)k[j * row + e];
    for (int64_t e = 0; e < row; e++) mu[e] = nk > 0 ? mu[e] / (double)nk : 0.0;
}

void taylor_ref_fold(const float *q, const int64_t *rows, int64_t nrows, int h, int hkv, int d,
                     const float *k, const float *v, int64_t j0, int64_t n, const double *mu,
                     double scale, int causal, int64_t diag, double *acc) {
    int64_t G = h / hkv, R = taylor_rec_len(d), krow = (int64_t)hkv * d;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int64_t r = 0; r < nrows; r++) {
        for (int64_t hh = 0; hh < h; hh++) {
            int64_t g = hh / G;
            int64_t last = causal ? rows[r] + diag : j0 + n - 1;   /* last visible key */
            int64_t jend = last - j0 + 1 < n ? last - j0 + 1 : n;
            const float *qv = q + (r * h + hh) * d;
            const double *m = mu + g * d;
            double *a = acc + (r * h + hh) * R;
            for (int64_t j = 0; j < jend; j++) {
                const float *kr = k + j * krow + g * d, *vr = v + j * krow + g * d;
                double x = 0;
                for (int64_t e = 0; e < d; e++) x += (double)qv[e] * ((double)kr[e] - m[e]);
                x *= scale;
                a[0] += 1.0;
                a[1] += x;
                for (int64_t e = 0; e < d; e++) {
                    a[2 + e] += (double)vr[e];
                    a[2 + d + e] += x * (double)vr[e];
                }
            }
        }
    }
}

int taylor_ref_finalize(const double *acc, int d, double *o, double *lse, double *ratio) {
    double cnt = acc[0], den = acc[0] + acc[1];
    const double *sv = acc + 2, *qs = acc + 2 + d;
    if (ratio) *ratio = cnt > 0 ? den / cnt : 0.0;
    if (!(cnt > 0)) {
        for (int i = 0; i < d; i++) o[i] = 0.0;
        *lse = -INFINITY;
        return TAYLOR_ROW_EMPTY;
    }
    if (den > (double)TAYLOR_DEN_FLOOR * cnt) {
        for (int i = 0; i < d; i++) o[i] = (sv[i] + qs[i]) / den;
        *lse = log(den);
        return TAYLOR_ROW_OK;
    }
    for (int i = 0; i < d; i++) o[i] = sv[i] / cnt;
    *lse = log(cnt);
    return TAYLOR_ROW_FALLBACK;
}

void taylor_reference_f64(const float *q, const float *k, const float *v, int64_t nq, int64_t nk,
                          int h, int hkv, int d, double scale, int causal, int64_t row0,
                          int64_t nrows, double *o, double *lse, double *ratio, int *kind) {
    int64_t R = taylor_rec_len(d);
    double *mu = fa_malloc(sizeof(double) * (size_t)(hkv * d), "taylor ref mean");
    double *acc = fa_calloc((size_t)(nrows * h * R), sizeof(double), "taylor ref state");
    int64_t *rows = fa_malloc(sizeof(int64_t) * (size_t)(nrows > 0 ? nrows : 1), "taylor ref rows");
    for (int64_t r = 0; r < nrows; r++) rows[r] = row0 + r;
    taylor_ref_key_mean(k, nk, hkv, d, mu);
    taylor_ref_fold(q, rows, nrows, h, hkv, d, k, v, 0, nk, mu, scale, causal, nk - nq, acc);
    for (int64_t r = 0; r < nrows * h; r++) {
        double l, rt;
        int kd = taylor_ref_finalize(acc + r * R, d, o + r * d, &l, &rt);
        if (lse) lse[r] = l;
        if (ratio) ratio[r] = rt;
        if (kind) kind[r] = kd;
    }
    free(mu);
    free(acc);
    free(rows);
}
