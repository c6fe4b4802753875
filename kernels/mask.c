/* mask.c — the mask's host-side counts, slopes, checks and description (see mask.h). */
#include "kernels/mask.h"
#include "base/common.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAR ((int64_t)1 << 60)     /* an offset that puts a clamp at its bound for every row */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* sum over rows i in [a, e) of max(0, clamp(i + ch, A2, B2) - clamp(i + cl, A1, B1)).
 * The term is piecewise linear in i with its kinks (and sign changes) only where one of the
 * clamps meets a bound: i = {A1, B1, A2, B2} - cl and - ch. Between two kinks it is linear and of
 * one sign, so each piece sums as an arithmetic series from its two ends. */
static int64_t run_sum(int64_t a, int64_t e, int64_t cl, int64_t A1, int64_t B1, int64_t ch,
                       int64_t A2, int64_t B2) {
    if (e <= a) return 0;
    int64_t cut[10] = {a, e, A1 - cl, B1 - cl, A2 - cl, B2 - cl, A1 - ch, B1 - ch, A2 - ch, B2 - ch};
    int n = 0;
    for (int x = 0; x < 10; x++)
        if (cut[x] >= a && cut[x] <= e) cut[n++] = cut[x];
    qsort(cut, (size_t)n, sizeof cut[0], cmp_i64);
    int64_t total = 0;
    for (int x = 0; x + 1 < n; x++) {
        int64_t p = cut[x], pe = cut[x + 1];
        if (pe <= p) continue;
        int64_t g0 = mask_clamp(p + ch, A2, B2) - mask_clamp(p + cl, A1, B1);
        int64_t g1 = mask_clamp(pe - 1 + ch, A2, B2) - mask_clamp(pe - 1 + cl, A1, B1);
        if (g0 < 0 || g1 < 0) continue;               /* one sign per piece: <= 0 throughout */
        total += (pe - p) * (g0 + g1) / 2;
    }
    return total;
}

int64_t mask_pairs(const attn_mask *m, int64_t b, int64_t q0, int64_t q1, int64_t k0, int64_t k1) {
    if (q0 < 0) q0 = 0;
    if (q1 > m->nq) q1 = m->nq;
    if (k0 < 0) k0 = 0;
    if (k1 > m->nk) k1 = m->nk;
    int64_t total = 0;
    for (int64_t i = q0; i < q1;) {
        int64_t dq0, dq1, dk0, dk1;
        mask_doc(m, b, i, &dq0, &dq1, &dk0, &dk1);
        int64_t e = dq1 < q1 ? dq1 : q1;
        /* row i sees [max(lo, k0), min(hi, k1)): lo = clamp(i + cl, dk0, dk1), hi likewise */
        int64_t cl = m->left < 0 ? -FAR : dk1 - dq1 - m->left;
        int64_t ch = m->right < 0 ? FAR : dk1 - dq1 + m->right + 1;
        if (k0 <= dk1 && k1 >= dk0)
            total += run_sum(i, e, cl, k0 > dk0 ? k0 : dk0, dk1, ch, dk0, k1 < dk1 ? k1 : dk1);
        i = e > i ? e : i + 1;
    }
    return total;
}

int64_t mask_pairs_batch(const attn_mask *m, int64_t nb, int64_t q0, int64_t q1, int64_t k0,
                         int64_t k1) {
    if (m->ndocs == 0 || m->doc_rows <= 1) return nb * mask_pairs(m, 0, q0, q1, k0, k1);
    int64_t t = 0;
    for (int64_t b = 0; b < nb; b++) t += mask_pairs(m, b, q0, q1, k0, k1);
    return t;
}

static void alibi_pow2(int n, float *out) {
    for (int h = 0; h < n; h++) out[h] = (float)pow(2.0, -8.0 * (h + 1) / n);
}

void mask_alibi_standard(int h, float *slopes) {
    int n = 1;
    while (n * 2 <= h) n *= 2;
    alibi_pow2(n, slopes);
    if (n == h) return;
    float *twice = fa_malloc(sizeof(float) * (size_t)(2 * n), "alibi slopes");
    alibi_pow2(2 * n, twice);
    for (int x = 0; x < h - n; x++) slopes[n + x] = twice[2 * x];
    free(twice);
}

const char *mask_describe(const attn_mask *m, char *buf, int len) {
    int n = 0;
    if (m->left < 0 && m->right < 0) n = snprintf(buf, (size_t)len, "full");
    else if (m->left < 0 && m->right == 0) n = snprintf(buf, (size_t)len, "causal");
    else n = snprintf(buf, (size_t)len, "window %lld,%lld", (long long)m->left, (long long)m->right);
    if (n < len && m->ndocs > 0)
        n += snprintf(buf + n, (size_t)(len - n), ", %lld document%s", (long long)m->ndocs,
                      m->ndocs == 1 ? "" : "s");
    if (n < len && m->softcap > 0)
        n += snprintf(buf + n, (size_t)(len - n), ", softcap %g", m->softcap);
    if (n < len && m->alibi)
        n += snprintf(buf + n, (size_t)(len - n), ", alibi%s", m->alibi_standard ? "" : " (slopes from the input)");
    return buf;
}
