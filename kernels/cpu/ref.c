/* ref.c — the fp64 reference: exact attention, one query row and head at a time, in double.
 * Slow and obviously right; every engine is checked against it (see kernels/attn.h).
 * Beside it, attn_reference_f64_fold: the same sums in fp64 over blocks of keys, for `fa_long
 * check`'s recomputation of whole outputs (tests/test_cpu_engine.c holds it to the reference). */
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

/* ---- the blocked fold (fa_long check) ---------------------------------------------------------
 * Keys go through in blocks of FOLD_KEYS, converted once to fp64 (K transposed, [Hkv][D][keys],
 * so that a row's scores are a sum of scaled key rows over D; V as [Hkv][keys][D]); the (row,
 * head) pairs share each block across the threads. A pair takes the block's scores, its maximum,
 * one rescale of its running state, then the weighted values: the sums of ref_row, in blocks. */
#define FOLD_KEYS 256

/* One (row, head) over keys [ja, jz) of the block at key jb: kt [D][FOLD_KEYS], vd [FOLD_KEYS][D]
 * of its kv head; s is scratch of FOLD_KEYS doubles. */
static void fold_pair(const float *qv, const double *kt, const double *vd, int d, double scale,
                      const attn_mask *m, const mask_run *r, int hh, int64_t jb, int64_t ja,
                      int64_t jz, double *s, double *acc, double *mx, double *l, double *kappa) {
    for (int64_t j = ja; j < jz; j++) s[j] = 0.0;
    int e = 0;
    for (; e + 4 <= d; e += 4) {            /* four dims a pass: s is loaded once for four */
        const double q0 = qv[e], q1 = qv[e + 1], q2 = qv[e + 2], q3 = qv[e + 3];
        const double *k0 = kt + (int64_t)e * FOLD_KEYS, *k1 = k0 + FOLD_KEYS, *k2 = k1 + FOLD_KEYS,
                     *k3 = k2 + FOLD_KEYS;
        for (int64_t j = ja; j < jz; j++) s[j] += q0 * k0[j] + q1 * k1[j] + q2 * k2[j] + q3 * k3[j];
    }
    for (; e < d; e++) {
        const double q0 = qv[e], *k0 = kt + (int64_t)e * FOLD_KEYS;
        for (int64_t j = ja; j < jz; j++) s[j] += q0 * k0[j];
    }
    double bmax = -INFINITY, kap = kappa ? *kappa : 0.0;
    for (int64_t j = ja; j < jz; j++) {
        s[j] = mask_score_f64(m, scale * s[j], hh, r, jb + j);
        if (s[j] > bmax) bmax = s[j];
        if (fabs(s[j]) > kap) kap = fabs(s[j]);
    }
    if (kappa) *kappa = kap;
    if (bmax > *mx) {                       /* rescale the running state once a block */
        const double f = *mx == -INFINITY ? 0.0 : exp(*mx - bmax);
        *l *= f;
        for (int i = 0; i < d; i++) acc[i] *= f;
        *mx = bmax;
    }
    double sum = 0.0;
    for (int64_t j = ja; j < jz; j++) {
        s[j] = exp(s[j] - *mx);
        sum += s[j];
    }
    int64_t j = ja;
    for (; j + 4 <= jz; j += 4) {           /* four keys a pass: acc is loaded once for four */
        const double p0 = s[j], p1 = s[j + 1], p2 = s[j + 2], p3 = s[j + 3];
        const double *v0 = vd + j * d, *v1 = v0 + d, *v2 = v1 + d, *v3 = v2 + d;
        for (int i = 0; i < d; i++) acc[i] += p0 * v0[i] + p1 * v1[i] + p2 * v2[i] + p3 * v3[i];
    }
    for (; j < jz; j++) {
        const double p = s[j], *vr = vd + j * d;
        for (int i = 0; i < d; i++) acc[i] += p * vr[i];
    }
    *l += sum;
}

void attn_reference_f64_fold(const float *q, int64_t ns, const mask_run *runs, int h, int hkv,
                             int d, double scale, const attn_mask *m, const float *k,
                             const float *v, int64_t j0, int64_t n, double *acc, double *mx,
                             double *l, double *kappa) {
    const int g = h / hkv;
    double *kt = fa_malloc(sizeof(double) * (size_t)hkv * (size_t)d * FOLD_KEYS, "fold keys");
    double *vd = fa_malloc(sizeof(double) * (size_t)hkv * (size_t)d * FOLD_KEYS, "fold values");
    for (int64_t b0 = 0; b0 < n; b0 += FOLD_KEYS) {
        const int64_t nb = n - b0 < FOLD_KEYS ? n - b0 : FOLD_KEYS, jb = j0 + b0;
        int seen = 0;                       /* does any row see a key of the block? */
        for (int64_t si = 0; si < ns && !seen; si++)
            seen = runs[si].lo < jb + nb && runs[si].hi > jb && runs[si].hi > runs[si].lo;
        if (!seen) continue;
        #pragma omp parallel for collapse(2) schedule(static)
        for (int kvh = 0; kvh < hkv; kvh++)
            for (int64_t j = 0; j < nb; j++) {
                const float *kr = k + ((b0 + j) * hkv + kvh) * d, *vr = v + ((b0 + j) * hkv + kvh) * d;
                double *ktk = kt + (int64_t)kvh * d * FOLD_KEYS, *vdk = vd + (int64_t)kvh * d * FOLD_KEYS;
                for (int e = 0; e < d; e++) {
                    ktk[(int64_t)e * FOLD_KEYS + j] = kr[e];
                    vdk[j * d + e] = vr[e];
                }
            }
        /* pairs in kv-head order, so that a thread's pairs share a block of K and V */
        #pragma omp parallel
        {
            double s[FOLD_KEYS];
            #pragma omp for schedule(dynamic, 8)
            for (int64_t x = 0; x < ns * h; x++) {
                const int kvh = (int)(x / (ns * g));
                const int64_t y = x % (ns * g), si = y / g;
                const int hh = kvh * g + (int)(y % g);
                const mask_run *r = &runs[si];
                const int64_t ja = r->lo > jb ? r->lo - jb : 0, jz = r->hi - jb < nb ? r->hi - jb : nb;
                if (ja >= jz) continue;
                const int64_t ph = si * h + hh;
                fold_pair(q + ph * d, kt + (int64_t)kvh * d * FOLD_KEYS, vd + (int64_t)kvh * d * FOLD_KEYS,
                          d, scale, m, r, hh, jb, ja, jz, s, acc + ph * d, mx + ph, l + ph,
                          kappa ? kappa + ph : NULL);
            }
        }
    }
    free(kt);
    free(vd);
}
