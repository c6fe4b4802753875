/* test_mask.c — the mask object (kernels/mask.h) against a brute-force visibility written here
 * from the definition (document by linear scan, then the window relation on positions inside
 * the document): every row's key run, the closed-form pair counts over random rectangles, the
 * standard ALiBi slopes, and the offset checks. Random masks: documents of length 0 and 1,
 * Nq != Nk inside documents, windows of -1, 0, 1 and wider than N. And the blocked fp64 fold of
 * `fa_long check` (attn_reference_f64_fold) against the row-by-row fp64 reference under them. */
#include "kernels/mask.h"
#include "kernels/attn.h"
#include "io/h5io.h"
#include "base/common.h"
#include "tests/testing.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t irand(int64_t n) { return n <= 0 ? 0 : (int64_t)((frand() + 1.0f) * 0.5f * (float)n) % n; }

/* visible(i, j) straight from the definition */
static int brute_visible(const attn_mask *m, int64_t b, int64_t i, int64_t j) {
    int64_t q0 = 0, q1 = m->nq, k0 = 0, k1 = m->nk;
    if (m->ndocs) {
        const int64_t *cq = m->cu_q + (m->doc_rows > 1 ? b : 0) * (m->ndocs + 1);
        const int64_t *ck = m->cu_k + (m->doc_rows > 1 ? b : 0) * (m->ndocs + 1);
        for (int64_t d = 0; d < m->ndocs; d++)
            if (cq[d] <= i && i < cq[d + 1]) { q0 = cq[d]; q1 = cq[d + 1]; k0 = ck[d]; k1 = ck[d + 1]; }
    }
    (void)q0;
    if (j < k0 || j >= k1) return 0;
    int64_t ip = (i - q0) + (k1 - k0) - (q1 - q0), jp = j - k0;   /* positions in the document */
    if (m->left >= 0 && jp < ip - m->left) return 0;
    if (m->right >= 0 && jp > ip + m->right) return 0;
    return 1;
}

static void random_offsets(int64_t *cu, int64_t ndocs, int64_t n) {
    cu[0] = 0;
    for (int64_t d = 1; d < ndocs; d++) cu[d] = irand(n + 1);
    cu[ndocs] = n;
    for (int64_t a = 1; a < ndocs; a++)                 /* sort the inner cuts */
        for (int64_t x = a; x > 0 && cu[x] < cu[x - 1]; x--) { int64_t t = cu[x]; cu[x] = cu[x - 1]; cu[x - 1] = t; }
}

static int64_t pick_side(int64_t n) {
    switch (irand(6)) {
    case 0: return -1;
    case 1: return 0;
    case 2: return 1;
    case 3: return n + 5;
    default: return irand(n / 2 + 2);
    }
}

static void test_random(int trials) {
    int bad_rows = 0, bad_pairs = 0, bad_mono = 0;
    for (int t = 0; t < trials; t++) {
        int64_t nq = 1 + irand(120), nk = 1 + irand(120), B = 1 + irand(3);
        int64_t ndocs = irand(3) == 0 ? 0 : 1 + irand(6);
        int64_t rows = ndocs && irand(2) ? B : 1;
        int64_t *cq = calloc((size_t)(rows * (ndocs + 1) + 1), sizeof(int64_t));
        int64_t *ck = calloc((size_t)(rows * (ndocs + 1) + 1), sizeof(int64_t));
        for (int64_t r = 0; ndocs && r < rows; r++) {
            random_offsets(cq + r * (ndocs + 1), ndocs, nq);
            random_offsets(ck + r * (ndocs + 1), ndocs, nk);
        }
        attn_mask m = mask_plain(nq, nk, 0);
        m.left = pick_side(nk);
        m.right = pick_side(nk);
        m.ndocs = ndocs; m.doc_rows = rows; m.cu_q = ndocs ? cq : NULL; m.cu_k = ndocs ? ck : NULL;
        for (int64_t b = 0; b < B; b++) {
            int64_t plo = -1, phi = -1;
            for (int64_t i = 0; i < nq; i++) {
                mask_run r = mask_row(&m, b, i);
                for (int64_t j = 0; j < nk; j++)
                    if (brute_visible(&m, b, i, j) != (j >= r.lo && j < r.hi)) { bad_rows++; break; }
                if (r.lo < plo || r.hi < phi) bad_mono++;
                plo = r.lo; phi = r.hi;
            }
            for (int x = 0; x < 20; x++) {
                int64_t q0 = irand(nq + 1), q1 = irand(nq + 1), k0 = irand(nk + 1), k1 = irand(nk + 1);
                if (q1 < q0) { int64_t s = q0; q0 = q1; q1 = s; }
                if (k1 < k0) { int64_t s = k0; k0 = k1; k1 = s; }
                if (x == 0) { q0 = 0; q1 = nq; k0 = 0; k1 = nk; }
                int64_t want = 0;
                for (int64_t i = q0; i < q1; i++)
                    for (int64_t j = k0; j < k1; j++) want += brute_visible(&m, b, i, j);
                int64_t got = mask_pairs(&m, b, q0, q1, k0, k1);
                if (got != want) {
                    if (bad_pairs < 5)
                        printf("  pairs: nq=%lld nk=%lld docs=%lld window %lld,%lld rows [%lld,%lld) keys "
                               "[%lld,%lld): got %lld, want %lld\n", (long long)nq, (long long)nk,
                               (long long)ndocs, (long long)m.left, (long long)m.right, (long long)q0,
                               (long long)q1, (long long)k0, (long long)k1, (long long)got, (long long)want);
                    bad_pairs++;
                }
            }
        }
        free(cq);
        free(ck);
    }
    CHECK(bad_rows == 0, "%d rows whose key run differs from brute force", bad_rows);
    CHECK(bad_pairs == 0, "%d rectangles whose pair count differs from brute force", bad_pairs);
    CHECK(bad_mono == 0, "%d rows whose run starts or ends before the previous row's", bad_mono);
    check(bad_rows + bad_pairs + bad_mono == 0, "%d random masks: runs, pair counts, monotone runs", trials);
}

static void test_big_counts(void) {
    /* 1M x 1M causal and a 4096 window, in closed form against the formulas */
    int64_t n = 1 << 20;
    attn_mask m = mask_plain(n, n, 1);
    check(mask_pairs(&m, 0, 0, n, 0, n) == n * (n + 1) / 2, "causal 1M: n(n+1)/2 pairs");
    m.left = 4095;
    int64_t w = 4096, want = (n - w + 1) * w + (w - 1) * w / 2;
    check(mask_pairs(&m, 0, 0, n, 0, n) == want, "window 4095,0 at 1M: %lld pairs", (long long)want);
    attn_mask f = mask_plain(n, 3 * n, 0);
    check(mask_pairs_batch(&f, 2, 0, n, 0, 3 * n) == 6 * n * n, "full, 2 batch elements");
}

static void test_alibi(void) {
    float s8[8], s12[12];
    mask_alibi_standard(8, s8);
    int ok = 1;
    for (int h = 0; h < 8; h++) ok &= fabsf(s8[h] - powf(2.0f, -(float)(h + 1))) < 1e-7f;
    check(ok, "alibi H=8: 1/2, 1/4, ..., 1/256");
    mask_alibi_standard(12, s12);
    /* first the 8 of H=8, then slopes 0, 2, 4, 6 of H=16: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 */
    ok = 1;
    for (int h = 0; h < 8; h++) ok &= s12[h] == s8[h];
    for (int x = 0; x < 4; x++) ok &= fabsf(s12[8 + x] - powf(2.0f, -0.5f - (float)x)) < 1e-7f;
    check(ok, "alibi H=12: the 8 of H=8 then every other slope of H=16");
}

static void test_offsets(void) {
    int64_t good[5] = {0, 3, 3, 7, 10}, down[5] = {0, 4, 3, 7, 10}, start[5] = {1, 3, 3, 7, 10},
            end[5] = {0, 3, 3, 7, 9};
    check(h5_check_offsets(good, 1, 4, 10, "in.h5: cu_seqlens") == 0, "good offsets pass");
    check(h5_check_offsets(down, 1, 4, 10, "in.h5: cu_seqlens") != 0 &&
          strstr(fa_errmsg(), "decreases at index 2"), "decreasing offsets: %s", fa_errmsg());
    check(h5_check_offsets(start, 1, 4, 10, "in.h5: cu_seqlens") != 0 &&
          strstr(fa_errmsg(), "expected 0"), "offsets not from 0: %s", fa_errmsg());
    check(h5_check_offsets(end, 1, 4, 10, "in.h5: cu_seqlens") != 0 &&
          strstr(fa_errmsg(), "expected 10"), "offsets not ending at N: %s", fa_errmsg());
}

/* attn_reference_f64_fold (fa_long check) against attn_reference_f64_mask: random masks with
 * softcap and ALiBi, head dims that are and are not multiples of 4, a sample of rows (or all),
 * the keys folded in uneven pieces as check reads them; o, lse and the largest |score| agree to
 * fp64 rounding. */
static void test_fold(int trials) {
    double worst = 0;
    int bad_kappa = 0;
    for (int t = 0; t < trials; t++) {
        const int64_t nq = 1 + irand(600), nk = 1 + irand(600), B = 2;
        const int hkv = 1 + (int)irand(2), h = hkv * (1 + (int)irand(3)), d = t % 2 ? 64 : 37;
        const int64_t ndocs = irand(2) ? 0 : 1 + irand(5);
        int64_t cq[8] = {0}, ck[8] = {0};
        if (ndocs) random_offsets(cq, ndocs, nq), random_offsets(ck, ndocs, nk);
        float slopes[8];
        mask_alibi_standard(h, slopes);
        attn_mask m = mask_plain(nq, nk, (int)irand(2));
        if (irand(2)) m.left = irand(nk + 2) - 1;
        m.ndocs = ndocs; m.cu_q = ndocs ? cq : NULL; m.cu_k = ndocs ? ck : NULL;
        m.softcap = irand(2) ? 2.0 + irand(20) : 0.0;
        m.alibi = irand(2) ? slopes : NULL;
        float *q = malloc(sizeof(float) * (size_t)(nq * h * d));
        float *k = malloc(sizeof(float) * (size_t)(nk * hkv * d));
        float *v = malloc(sizeof(float) * (size_t)(nk * hkv * d));
        for (int64_t i = 0; i < nq * h * d; i++) q[i] = 2.0f * frand();
        for (int64_t i = 0; i < nk * hkv * d; i++) k[i] = 2.0f * frand(), v[i] = frand();
        const double scale = 1.0 / sqrt((double)d);
        const int64_t b = B - 1;
        /* the rows: every one, or a sorted sample */
        int64_t ns = irand(2) ? nq : 1 + irand(nq);
        int64_t *rows = malloc(sizeof(int64_t) * (size_t)ns);
        for (int64_t x = 0, i = 0; x < ns; i++)
            if (ns == nq || irand(nq) < ns) rows[x++] = i % nq;
        float *qs = malloc(sizeof(float) * (size_t)(ns * h * d));
        mask_run *runs = malloc(sizeof(mask_run) * (size_t)ns);
        for (int64_t x = 0; x < ns; x++) {
            memcpy(qs + x * h * d, q + rows[x] * h * d, sizeof(float) * (size_t)(h * d));
            runs[x] = mask_row(&m, b, rows[x]);
        }
        double *acc = calloc((size_t)(ns * h * d), sizeof(double));
        double *mx = malloc(sizeof(double) * (size_t)(ns * h)), *l = calloc((size_t)(ns * h), sizeof(double));
        double *kap = calloc((size_t)(ns * h), sizeof(double));
        for (int64_t x = 0; x < ns * h; x++) mx[x] = -INFINITY;
        for (int64_t j0 = 0, piece; j0 < nk; j0 += piece) {       /* uneven pieces of keys */
            piece = 1 + irand(nk - j0 < 300 ? nk - j0 : 300);
            attn_reference_f64_fold(qs, ns, runs, h, hkv, d, scale, &m, k + j0 * hkv * d,
                                    v + j0 * hkv * d, j0, piece, acc, mx, l, kap);
        }
        double *ro = malloc(sizeof(double) * (size_t)(h * d)), rl[8];
        for (int64_t x = 0; x < ns; x++) {
            attn_reference_f64_mask(qs + x * h * d, k, v, h, hkv, d, scale, &m, b, rows[x], 1, ro, rl);
            for (int hh = 0; hh < h; hh++) {
                const int64_t p = x * h + hh;
                const double lse = l[p] > 0 ? mx[p] + log(l[p]) : -INFINITY;
                double err = isinf(rl[hh]) || isinf(lse) ? (rl[hh] == lse ? 0 : INFINITY)
                                                         : fabs(lse - rl[hh]) / fmax(1, fabs(rl[hh]));
                for (int e = 0; e < d; e++) {
                    const double o = l[p] > 0 ? acc[p * d + e] / l[p] : 0.0;
                    err = fmax(err, fabs(o - ro[hh * d + e]));
                }
                if (err > worst) worst = err;
                double kmax = 0;                  /* the largest |score| by brute force */
                for (int64_t j = runs[x].lo; j < runs[x].hi; j++) {
                    double dot = 0;
                    for (int e = 0; e < d; e++)
                        dot += (double)q[(rows[x] * h + hh) * d + e] * k[(j * hkv + hh / (h / hkv)) * d + e];
                    kmax = fmax(kmax, fabs(mask_score_f64(&m, scale * dot, hh, &runs[x], j)));
                }
                if (fabs(kap[p] - kmax) > 1e-12 * fmax(1, kmax)) bad_kappa++;
            }
        }
        free(q); free(k); free(v); free(rows); free(qs); free(runs); free(acc); free(mx); free(l);
        free(kap); free(ro);
    }
    check(worst <= 1e-12, "%d random masks: the blocked fp64 fold against the row-by-row reference, "
          "max error of o and lse %.2e", trials, worst);
    check(bad_kappa == 0, "%d (row, head) pairs whose largest |score| differs", bad_kappa);
}

int main(void) {
    printf("seed %llu\n", (unsigned long long)test_seed());
    test_random(400);
    test_fold(40);
    test_big_counts();
    test_alibi();
    test_offsets();
    return tests_done();
}
