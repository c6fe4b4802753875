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

/* One (row, head): w is scratch of nk doubles. Keys 0..last are visible (last < 0: none). */
static void ref_row(const float *qv, const float *k, const float *v, int64_t last, int hkv,
                    int kvh, int d, double scale, double *w, double *out, double *lse) {
    for (int i = 0; i < d; i++) out[i] = 0.0;
    if (last < 0) {
        *lse = -INFINITY;
        return;
    }
    double mx = -INFINITY;
    for (int64_t j = 0; j <= last; j++) {
        w[j] = scale * dot_f64(qv, k + (j * hkv + kvh) * d, d);
        if (w[j] > mx) mx = w[j];
    }
    double sum = 0.0;
    for (int64_t j = 0; j <= last; j++) {
        double e = exp(w[j] - mx);
        sum += e;
        const float *vr = v + (j * hkv + kvh) * d;
        for (int i = 0; i < d; i++) out[i] += e * (double)vr[i];
    }
    for (int i = 0; i < d; i++) out[i] /= sum;
    *lse = mx + log(sum);
}

void attn_reference_f64(const float *q, const float *k, const float *v,
                        int64_t nq, int64_t nk, int h, int hkv, int d,
                        double scale, int causal, int64_t row0, int64_t nrows,
                        double *o, double *lse) {
    int g = h / hkv;
    /* Rows are independent: threads only make the tests wait less. */
    #pragma omp parallel
    {
        double *w = fa_malloc(sizeof(double) * (size_t)(nk > 0 ? nk : 1), "reference scores");
        #pragma omp for schedule(dynamic, 4)
        for (int64_t r = 0; r < nrows; r++) {
            int64_t i = row0 + r;                   /* global query row */
            int64_t last = nk - 1;                  /* bottom-right causal: j <= i + Nk - Nq */
            if (causal && i + nk - nq < last) last = i + nk - nq;
            for (int hh = 0; hh < h; hh++)
                ref_row(q + (r * h + hh) * d, k, v, last, hkv, hh / g, d, scale, w,
                        o + (r * h + hh) * d, lse + r * h + hh);
        }
        free(w);
    }
}
