/* ref.c — the fp64 reference: exact attention, one query row and head at a time, in double.
 * Slow and obviously right; every engine is checked against it (see kernels/attn.h). */
#include "kernels/attn.h"
#include "base/common.h"
#include <math.h>

static double dot_f64(const float *a, const float *b, int d) {
    double s = 0.0;
    for (int i = 0; i < d; i++) s += (double)a[i] * (double)b[i];
    return s;
}

/* One (row, head): w is scratch of nk doubles. Keys [r->lo, r->hi) are visible. */
static void ref_row(const float *qv, const float *k, const float *v, const attn_mask *m,
                    const mask_run *r, int hh, int hkv, int kvh, int d, double scale, double *w,
                    double *out, double *lse) {
    for (int i = 0; i < d; i++) out[i] = 0.0;
    if (r->hi <= r->lo) {
        *lse = -INFINITY;
        return;
    }
    double mx = -INFINITY;
    for (int64_t j = r->lo; j < r->hi; j++) {
        w[j] = mask_score_f64(m, scale * dot_f64(qv, k + (j * hkv + kvh) * d, d), hh, r, j);
        if (w[j] > mx) mx = w[j];
    }
    double sum = 0.0;
    for (int64_t j = r->lo; j < r->hi; j++) {
        double e = exp(w[j] - mx);
        sum += e;
        const float *vr = v + (j * hkv + kvh) * d;
        for (int i = 0; i < d; i++) out[i] += e * (double)vr[i];
    }
    for (int i = 0; i < d; i++) out[i] /= sum;
    *lse = mx + log(sum);
}

void attn_reference_f64_mask(const float *q, const float *k, const float *v, int h, int hkv,
                             int d, double scale, const attn_mask *m, int64_t b, int64_t row0,
                             int64_t nrows, double *o, double *lse) {
    int g = h / hkv;
    int64_t nk = m->nk;
    /* Rows are independent: threads only make the tests wait less. */
    #pragma omp parallel
    {
        double *w = fa_malloc(sizeof(double) * (size_t)(nk > 0 ? nk : 1), "reference scores");
        #pragma omp for schedule(dynamic, 4)
        for (int64_t r = 0; r < nrows; r++) {
            mask_run run = mask_row(m, b, row0 + r);
            for (int hh = 0; hh < h; hh++)
                ref_row(q + (r * h + hh) * d, k, v, m, &run, hh, hkv, hh / g, d, scale, w,
                        o + (r * h + hh) * d, lse + r * h + hh);
        }
        free(w);
    }
}

void attn_reference_f64(const float *q, const float *k, const float *v,
                        int64_t nq, int64_t nk, int h, int hkv, int d,
                        double scale, int causal, int64_t row0, int64_t nrows,
                        double *o, double *lse) {
    attn_mask m = mask_plain(nq, nk, causal);
    attn_reference_f64_mask(q, k, v, h, hkv, d, scale, &m, 0, row0, nrows, o, lse);
}
