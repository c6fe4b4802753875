/* check.c — `fa_long check`: recompute sampled output rows in fp64 from the input file and compare
 * with what the output file holds.
 *
 * The job's settings (causal, scale, compute type) come from the output's attributes. Keys and
 * values stream through in blocks, each folded into a running fp64 softmax state per sampled
 * (row, head), so any Nk fits. Error measures, over every compared element:
 *   abs = max |o - ref|,  rel = abs / max |ref|;  lse: max |lse - ref| / max(1, |ref|).
 * Exit 0 when rel and the lse error are within the tolerance, 1 when not, 2 on bad usage/input.
 *
 * --mode taylor (the default for outputs whose 'mode' attribute is "taylor"): the sampled rows
 * are recomputed twice in fp64, with the Taylor formula (kernels/taylor.h, kernels/cpu/taylor_ref.c)
 * for the pass/fail at the fp32 tolerance, and with exact attention for the approximation error,
 * which is printed (not judged). Rows whose fp64 den/N_i is within 1e-3 of the denominator floor
 * are left out of the formula comparison (fp32 may take the other side of the policy there). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "io/h5io.h"
#include "kernels/taylor.h"
#include "runner/cli.h"
#include "runner/job.h"
#include "base/common.h"

typedef struct { int64_t b, i; } sample;

/* The datasets compared: q, k, v in the input and o, lse in the output. --q/--k/--v/--out-group
 * of `fa_long check` (opt), else the output's root attributes q_path, k_path, v_path, out_group
 * (written by the run), else q, k, v and the root (outputs made before these options). */
static const char *opt_path[4];
static char dpath[5][4200];     /* group + "/lse" fits */
#define P_Q dpath[0]
#define P_K dpath[1]
#define P_V dpath[2]
#define P_O dpath[3]
#define P_L dpath[4]
static int paths_from_attrs;     /* some path came from the output's attributes */

static void resolve_paths(const char *out) {
    static const char *const attr[4] = {"q_path", "k_path", "v_path", "out_group"};
    static const char *const dflt[4] = {"q", "k", "v", "/"};
    char got[4][4096 - 8];
    paths_from_attrs = 0;
    for (int i = 0; i < 4; i++) {
        if (opt_path[i]) snprintf(got[i], sizeof got[i], "%s", opt_path[i]);
        else if (h5_attr_str(out, attr[i], got[i], sizeof got[i]) == 0 && got[i][0])
            paths_from_attrs = 1;
        else snprintf(got[i], sizeof got[i], "%s", dflt[i]);
    }
    fa_clearerr();
    for (int i = 0; i < 3; i++) snprintf(dpath[i], sizeof dpath[i], "%.4000s", got[i]);
    fa_out_dset(got[3], "o", P_O, sizeof P_O);
    fa_out_dset(got[3], "lse", P_L, sizeof P_L);
}

/* The layouts of q, k, v and o (issue 19): --layout (q, k, v) and --out-layout (o) of `fa_long
 * check`, else what the output records (q_layout, k_layout, v_layout; o's attribute 'layout',
 * else its root's), else the input's own attributes, else bnhd. */
static fa_layout opt_layout, opt_out_layout;
static fa_layout dlay[4];
#define L_Q dlay[0]
#define L_K dlay[1]
#define L_V dlay[2]
#define L_O dlay[3]

static int resolve_layouts(const char *in, const char *out) {
    static const char *const attr[3] = {"q_layout", "k_layout", "v_layout"};
    char got[64];
    for (int i = 0; i < 3; i++) {
        dlay[i] = opt_layout;
        if (!dlay[i] && h5_attr_str(out, attr[i], got, sizeof got) == 0 &&
            fa_layout_parse(got, &dlay[i]))
            return fa_seterr("%s: attribute '%s' = \"%s\" is not bnhd or bhnd", out, attr[i], got);
        if (!dlay[i] && h5_layout(in, dpath[i], &dlay[i])) return -1;
        if (!dlay[i]) dlay[i] = FA_BNHD;
    }
    L_O = opt_out_layout;
    if (!L_O && h5_layout(out, P_O, &L_O)) return -1;
    if (!L_O) L_O = FA_BNHD;
    fa_clearerr();
    return 0;
}

/* dims [B, N, heads, D] of a 4-dimensional dataset whose file dims are d, in layout l */
static void bnhd_dims(int64_t d[8], fa_layout l) {
    if (l != FA_BHND) return;
    int64_t t = d[1];
    d[1] = d[2], d[2] = t;
}

static int cmp_sample(const void *a, const void *b) {
    const sample *x = a, *y = b;
    if (x->b != y->b) return x->b < y->b ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Unit roundoff of the type the engine computed the scores in ("float32", "bfloat16", ...). */
static double unit_roundoff(const char *compute) {
    if (!strcmp(compute, "bfloat16")) return 0x1p-8;
    if (!strcmp(compute, "float16")) return 0x1p-11;
    return 0x1p-24;
}

/* Default tolerance: the larger of the output type's and the compute type's floor, and of what
 * the rows' conditioning allows. A score s is computed with an absolute error of a few units of
 * roundoff of |s| (the dot product, then s - max inside exp), and exp turns that into a relative
 * error of the weights, hence of o: about c u kappa, kappa the largest |score| of the sampled
 * rows. Measured c (error / (u kappa), bench/NOTES_CHECK.md): float32 CPU engine at most 1.7 at
 * magnitudes 10-300 (D 16-128), hence 8; bf16 GPU about 0.1-0.25 (its error comes from rounding
 * q, k and p, which averages over D), hence 1, so the bf16 tolerance stays at its 2e-2 floor up to
 * |score| ~ 5. */
static double cond_factor(const char *compute) {
    return !strcmp(compute, "bfloat16") || !strcmp(compute, "float16") ? 1.0 : 8.0;
}
static double floor_tol(fa_dtype ot, const char *compute) {
    double t = 1e-4;                                   /* fp32 engine, fp32 output */
    if (ot == FA_F16) t = 2e-3;
    if (ot == FA_BF16) t = 1.6e-2;
    if (!strcmp(compute, "float16") && t < 4e-3) t = 4e-3;
    if (!strcmp(compute, "bfloat16") && t < 2e-2) t = 2e-2;
    return t;
}
static double default_tol(fa_dtype ot, const char *compute, double kappa) {
    double t = floor_tol(ot, compute), c = cond_factor(compute) * unit_roundoff(compute) * kappa;
    if (c > 1.0) c = 1.0;     /* o is a convex combination of v: past 1 nothing is promised */
    return c > t ? c : t;
}

static void check_usage(void) {
    printf("usage: fa_long check [--input IN.h5] --output OUT.h5 [--rows K|all] [--tol T] [--seed S]\n"
           "                     [--mode exact|taylor] [--q PATH] [--k PATH] [--v PATH] [--out-group G]\n"
           "                     [--layout bnhd|bhnd] [--out-layout bnhd|bhnd]\n"
           "--q/--k/--v/--out-group: the datasets' paths, as for the run (default: what OUT.h5\n"
           "records in its attributes q_path, k_path, v_path, out_group; else q, k, v, the root).\n"
           "Without --input, the input is the one OUT.h5 records (its attribute 'input').\n"
           "--layout L, --out-layout L: bnhd or bhnd, of q, k, v and of o (default: what OUT.h5\n"
           "records: q_layout, k_layout, v_layout, o's 'layout'; else the files' attributes, bnhd).\n"
           "Recomputes K sampled output rows (default 64; 'all' for every row) in fp64 and prints\n"
           "the max absolute and relative error of o (and of lse when present). Exits 1 above\n"
           "the tolerance (default from the output and compute types: 1e-4 for float32).\n"
           "--mode taylor (default when the output was made by --mode taylor): pass/fail against\n"
           "the fp64 Taylor formula, and the approximation error against exact attention.\n");
}

/* Streams the keys of batch element b that the sampled rows see and folds them into fp64 softmax
 * states for the ns sampled rows `rows` (query rows q: [ns, H, D]) under mask mk (the score
 * modifiers included), blocked and threaded (kernels/cpu/ref.c: attn_reference_f64_fold). acc [ns, H, D], m and l [ns, H]; kappa [ns, H]: the largest |score| of
 * the row (the conditioning of its weights; with ALiBi at most |max score| + 60, as scores
 * further below the maximum carry no weight). */
static int reference_rows(const char *in, const fa_shape *s, const attn_mask *mk, int64_t b,
                          const int64_t *rows, const float *q, int ns, double scale, double *acc,
                          double *m, double *l, double *kappa) {
    int64_t H = s->H, Hkv = s->Hkv, D = s->D;
    int64_t blk = (int64_t)(32 << 20) / (Hkv * D * 4) + 1;  /* ~32 MB of keys per block */
    if (blk > s->Nk) blk = s->Nk;
    mask_run *run = fa_malloc((size_t)ns * sizeof *run, "check rows");
    int64_t klo = s->Nk, khi = 0;                           /* keys some sampled row sees */
    for (int si = 0; si < ns; si++) {
        run[si] = mask_row(mk, b, rows[si]);
        if (run[si].hi > run[si].lo && run[si].lo < klo) klo = run[si].lo;
        if (run[si].hi > run[si].lo && run[si].hi > khi) khi = run[si].hi;
    }
    float *k = fa_malloc((size_t)(blk * Hkv * D) * sizeof(float), "check keys");
    float *v = fa_malloc((size_t)(blk * Hkv * D) * sizeof(float), "check values");
    int rc = 0;
    for (int64_t j0 = klo; j0 < khi && !rc; j0 += blk) {
        int64_t n = khi - j0 < blk ? khi - j0 : blk;
        int64_t st[4] = {b, j0, 0, 0}, ct[4] = {1, n, Hkv, D};
        if (h5_read_block_as(in, P_K, L_K, st, ct, k) || h5_read_block_as(in, P_V, L_V, st, ct, v)) {
            rc = -1;
            break;
        }
        attn_reference_f64_fold(q, ns, run, (int)H, (int)Hkv, (int)D, scale, mk, k, v, j0, n, acc,
                                m, l, kappa);
    }
    if (mk->alibi)
        for (int64_t x = 0; x < ns * H; x++)
            if (m[x] > -INFINITY && kappa[x] > fabs(m[x]) + 60) kappa[x] = fabs(m[x]) + 60;
    free(k);
    free(v);
    free(run);
    return rc;
}

/* Reads shapes of both files and checks that they belong together. */
static int read_shapes(const char *in, const char *out, fa_shape *s, fa_dtype *ot, int *has_lse) {
    int nd;
    int64_t dq[8], dk[8], dout[8];
    fa_dtype t;
    if (h5_dataset_info(in, P_Q, &nd, dq, &s->q_type) || h5_dataset_info(in, P_K, &nd, dk, &t))
        return -1;
    if (h5_dataset_info(out, P_O, &nd, dout, ot)) return -1;
    bnhd_dims(dq, L_Q), bnhd_dims(dk, L_K), bnhd_dims(dout, L_O);
    s->B = dq[0]; s->Nq = dq[1]; s->H = dq[2]; s->D = dq[3];
    s->Nk = dk[1]; s->Hkv = dk[2];
    for (int i = 0; i < 4; i++)
        if (dout[i] != dq[i])
            return fa_seterr("%s: dataset '%s' has shape [%lld, %lld, %lld, %lld], expected the shape "
                             "[%lld, %lld, %lld, %lld] of '%s' in %s", out, P_O, (long long)dout[0],
                             (long long)dout[1], (long long)dout[2], (long long)dout[3],
                             (long long)dq[0], (long long)dq[1], (long long)dq[2], (long long)dq[3], P_Q, in);
    int64_t dl[8];
    fa_dtype lt;
    *has_lse = h5_dataset_info(out, P_L, &nd, dl, &lt) == 0;
    fa_clearerr();
    return 0;
}

/* Picks k distinct (b, i) rows, always including the first and the last. */
static int pick_rows(const fa_shape *s, int64_t k, uint64_t seed, sample *out) {
    int64_t total = s->B * s->Nq;
    if (k >= total) {
        for (int64_t r = 0; r < total; r++) out[r] = (sample){r / s->Nq, r % s->Nq};
        return (int)total;
    }
    int n = 0;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    out[n++] = (sample){0, 0};
    if (k > 1) out[n++] = (sample){s->B - 1, s->Nq - 1};
    while (n < k) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int64_t r = (int64_t)(x % (uint64_t)total);
        sample c = {r / s->Nq, r % s->Nq};
        int dup = 0;
        for (int j = 0; j < n && !dup; j++) dup = out[j].b == c.b && out[j].i == c.i;
        if (!dup) out[n++] = c;
    }
    qsort(out, (size_t)n, sizeof *out, cmp_sample);
    return n;
}

typedef struct { double abs, ref_max, lse_err; int nonfinite; } errs;

/* The rows of dataset `name` (layout lay, [B, N, heads, D] as read) of the ns samples of one
 * batch element into dst [ns, heads, D]: one read per run of consecutive rows. With lse (a
 * dataset [B, heads, N]), its values of those rows into lse [ns, heads] as well. */
static int read_rows(const char *path, const char *name, fa_layout lay, const sample *sm, int ns,
                     int64_t heads, int64_t D, float *dst, const char *lse_name, float *lse) {
    for (int a = 0, z; a < ns; a = z) {
        for (z = a + 1; z < ns && sm[z].b == sm[a].b && sm[z].i == sm[z - 1].i + 1;) z++;
        int64_t st[4] = {sm[a].b, sm[a].i, 0, 0}, ct[4] = {1, z - a, heads, D};
        if (h5_read_block_as(path, name, lay, st, ct, dst + (int64_t)a * heads * D)) return -1;
        if (!lse) continue;
        float *t = fa_malloc((size_t)(heads * (z - a)) * sizeof(float), "check lse");
        int64_t s3[3] = {sm[a].b, 0, sm[a].i}, c3[3] = {1, heads, z - a};
        int rc = h5_read_block(path, lse_name, 3, s3, c3, t);
        for (int64_t h = 0; !rc && h < heads; h++)          /* [heads][rows] -> [rows][heads] */
            for (int x = a; x < z; x++) lse[(int64_t)x * heads + h] = t[h * (z - a) + (x - a)];
        free(t);
        if (rc) return -1;
    }
    return 0;
}

/* Compares the output's rows of the samples [s0, s1) (all of batch b) with their reference. */
static int compare_rows(const char *out, const fa_shape *s, const sample *sm, int ns, int has_lse,
                        const double *acc, const double *m, const double *l, errs *e) {
    int64_t H = s->H, D = s->D;
    float *oall = fa_malloc((size_t)(ns * H * D) * sizeof(float), "check rows");
    float *lall = fa_malloc((size_t)(ns * H) * sizeof(float), "check lse");
    if (read_rows(out, P_O, L_O, sm, ns, H, D, oall, P_L, has_lse ? lall : NULL)) goto fail;
    for (int si = 0; si < ns; si++) {
        const float *o = oall + (int64_t)si * H * D, *lse = lall + (int64_t)si * H;
        for (int64_t h = 0; h < H; h++) {
            double ll = l[(int64_t)si * H + h], mm = m[(int64_t)si * H + h];
            for (int64_t d = 0; d < D; d++) {
                double ref = ll > 0 ? acc[((int64_t)si * H + h) * D + d] / ll : 0.0;
                double got = o[h * D + d];
                if (!isfinite(got)) e->nonfinite++;
                double diff = fabs(got - ref);
                if (diff > e->abs || diff != diff) e->abs = diff != diff ? INFINITY : diff;
                if (fabs(ref) > e->ref_max) e->ref_max = fabs(ref);
            }
            if (has_lse) {
                double ref = ll > 0 ? mm + log(ll) : -INFINITY, got = lse[h];
                double err = (ref == -INFINITY && got == -INFINITY) ? 0.0
                           : fabs(got - ref) / fmax(1.0, fabs(ref));
                if (err != err) err = INFINITY;
                if (err > e->lse_err) e->lse_err = err;
            }
        }
    }
    free(oall);
    free(lall);
    return 0;
fail:
    free(oall);
    free(lall);
    return -1;
}



/* ---- --mode taylor --------------------------------------------------------------------------- */

/* What the Taylor check measures besides check_result (printed by check_main). */
static struct {
    double approx_abs, approx_ref_max;   /* o against exact attention */
    double formula_abs;                  /* fp64 formula against exact attention */
    int64_t fallback, skipped, pairs;
} tx;

/* The fp64 Taylor records (kernels/taylor.h layout) of the ns sampled rows of batch element b:
 * the key mean over all Nk keys, then the keys folded block by block. tacc [ns, H, 2D+2]. */
static int taylor_rows(const char *in, const fa_shape *s, int64_t b, const int64_t *rows,
                       const float *q, int ns, int causal, double scale, double *tacc) {
    int64_t Hkv = s->Hkv, D = s->D;
    int64_t blk = (int64_t)(32 << 20) / (Hkv * D * 4) + 1;
    if (blk > s->Nk) blk = s->Nk;
    float *k = fa_malloc((size_t)(blk * Hkv * D) * sizeof(float), "check keys");
    float *v = fa_malloc((size_t)(blk * Hkv * D) * sizeof(float), "check values");
    double *mu = fa_calloc((size_t)(Hkv * D), sizeof(double), "check key mean");
    double *bm = fa_malloc((size_t)(Hkv * D) * sizeof(double), "check key mean");
    int rc = 0;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (int64_t j0 = 0; j0 < s->Nk && !rc; j0 += blk) {
            int64_t n = s->Nk - j0 < blk ? s->Nk - j0 : blk;
            int64_t st[4] = {b, j0, 0, 0}, ct[4] = {1, n, Hkv, D};
            if (h5_read_block_as(in, P_K, L_K, st, ct, k) ||
                (pass && h5_read_block_as(in, P_V, L_V, st, ct, v))) {
                rc = -1;
                break;
            }
            if (pass == 0) {                 /* mean = sum over blocks of n * block mean / Nk */
                taylor_ref_key_mean(k, n, (int)Hkv, (int)D, bm);
                for (int64_t e = 0; e < Hkv * D; e++) mu[e] += bm[e] * (double)n / (double)s->Nk;
            } else {
                taylor_ref_fold(q, rows, ns, (int)s->H, (int)Hkv, (int)D, k, v, j0, n, mu, scale,
                                causal, s->Nk - s->Nq, tacc);
            }
        }
    }
    free(k); free(v); free(mu); free(bm);
    return rc;
}

/* Compares the output rows with the fp64 Taylor formula (into e) and with exact attention
 * (into tx). acc/m/l: exact fp64 states as reference_rows leaves them. */
static int taylor_compare_rows(const char *out, const fa_shape *s, const sample *sm, int ns,
                               int has_lse, const double *tacc, const double *acc, const double *m,
                               const double *l, errs *e) {
    int64_t H = s->H, D = s->D, R = taylor_rec_len((int)D);
    float *oall = fa_malloc((size_t)(ns * H * D) * sizeof(float), "check rows");
    float *lall = fa_malloc((size_t)(ns * H) * sizeof(float), "check lse");
    double *ot = fa_malloc((size_t)D * sizeof(double), "check row");
    int rc = read_rows(out, P_O, L_O, sm, ns, H, D, oall, P_L, has_lse ? lall : NULL);
    for (int si = 0; si < ns && !rc; si++) {
        const float *o = oall + (int64_t)si * H * D, *lse = lall + (int64_t)si * H;
        for (int64_t h = 0; h < H; h++) {
            int64_t x = (int64_t)si * H + h;
            double tl, ratio;
            int kind = taylor_ref_finalize(tacc + x * R, (int)D, ot, &tl, &ratio);
            tx.pairs++;
            if (kind == TAYLOR_ROW_FALLBACK) tx.fallback++;
            int skip = kind != TAYLOR_ROW_EMPTY && fabs(ratio - TAYLOR_DEN_FLOOR) < 1e-3;
            if (skip) tx.skipped++;
            double ll = l[x];
            (void)m;
            for (int64_t d = 0; d < D; d++) {
                double got = o[h * D + d], ex = ll > 0 ? acc[x * D + d] / ll : 0.0;
                if (!isfinite(got)) e->nonfinite++;
                double da = fabs(got - ex), df = fabs(ot[d] - ex);
                if (da > tx.approx_abs || da != da) tx.approx_abs = da != da ? INFINITY : da;
                if (df > tx.formula_abs) tx.formula_abs = df;
                if (fabs(ex) > tx.approx_ref_max) tx.approx_ref_max = fabs(ex);
                if (skip) continue;
                double diff = fabs(got - ot[d]);
                if (diff > e->abs || diff != diff) e->abs = diff != diff ? INFINITY : diff;
                if (fabs(ot[d]) > e->ref_max) e->ref_max = fabs(ot[d]);
            }
            if (has_lse && !skip) {
                double got = lse[h];
                double err = (tl == -INFINITY && got == -INFINITY) ? 0.0
                           : fabs(got - tl) / fmax(1.0, fabs(tl));
                if (err != err) err = INFINITY;
                if (err > e->lse_err) e->lse_err = err;
            }
        }
    }
    free(oall); free(lall); free(ot);
    return rc;
}

/* The mask the output was made with, from its attributes (window_left/right, softcap, alibi,
 * documents; an output without them: full or causal) and, for documents and the input's ALiBi
 * slopes, the input's tables. *t owns what mk points to (h5_mask_tables_free). */
static int output_mask(const char *in, const char *out, const fa_shape *s, int causal,
                       attn_mask *mk, h5_mask_tables *t) {
    memset(t, 0, sizeof *t);
    *mk = mask_plain(s->Nq, s->Nk, causal);
    double l, r, cap = 0, alibi = 0, docs = 0;
    if (h5_attr_double(out, "window_left", &l) == 0 && h5_attr_double(out, "window_right", &r) == 0) {
        mk->left = (int64_t)l;
        mk->right = (int64_t)r;
    }
    h5_attr_double(out, "softcap", &cap);
    h5_attr_double(out, "alibi", &alibi);
    h5_attr_double(out, "documents", &docs);
    fa_clearerr();
    mk->softcap = cap;
    if (docs > 0 || alibi == 2) {
        if (h5_read_mask_tables(in, P_Q, s, alibi == 2, docs > 0, t)) return -1;
        if (docs > 0 && t->ndocs != (int64_t)docs)
            return fa_seterr("%s: the output records %lld packed documents, the input '%s' has %lld",
                             out, (long long)docs, in, (long long)t->ndocs);
        if (alibi == 2 && !t->alibi)
            return fa_seterr("%s: the output was made with the input's alibi_slopes, which input "
                             "'%s' no longer has", out, in);
        mk->ndocs = docs > 0 ? t->ndocs : 0;
        mk->doc_rows = t->doc_rows > 0 ? t->doc_rows : 1;
        mk->cu_q = t->cu_q;
        mk->cu_k = t->cu_k;
    }
    if (alibi == 2) {
        mk->alibi = t->alibi;
    } else if (alibi == 1) {
        t->alibi = fa_malloc(sizeof(float) * (size_t)s->H, "alibi slopes");
        mask_alibi_standard((int)s->H, t->alibi);
        mk->alibi = t->alibi;
        mk->alibi_standard = 1;
    }
    return 0;
}

/* Recomputes sampled rows and fills *r: against exact fp64 attention, or (taylor) against the
 * fp64 Taylor formula with the approximation error against exact attention beside it (in tx).
 * Returns 0, or -1 with fa_seterr on bad input. */
static int sampled(const char *in, const char *out, int64_t nrows, double tol, uint64_t seed,
                   int taylor, check_result *r) {
    fa_shape s;
    fa_dtype ot;
    int has_lse = 0;
    memset(r, 0, sizeof *r);
    memset(&tx, 0, sizeof tx);
    resolve_paths(out);
    if (resolve_layouts(in, out) || read_shapes(in, out, &s, &ot, &has_lse)) return -1;
    double scale, causal_d;
    snprintf(r->compute, sizeof r->compute, "float32");
    if (h5_attr_double(out, "scale", &scale) || h5_attr_double(out, "causal", &causal_d))
        return fa_seterr("%s: attributes 'scale' and 'causal' missing: not an output of fa_long", out);
    h5_attr_str(out, "compute", r->compute, sizeof r->compute);
    r->causal = causal_d != 0;
    r->scale = scale;
    attn_mask mk;
    h5_mask_tables mt;
    if (output_mask(in, out, &s, r->causal, &mk, &mt)) return -1;
    if (mask_is_plain(&mk)) snprintf(r->mask, sizeof r->mask, "%s", r->causal ? "causal" : "non-causal");
    else mask_describe(&mk, r->mask, sizeof r->mask);
    r->heads = (int)s.H;
    r->has_lse = has_lse;
    r->otype = ot;
    if (nrows <= 0 || nrows > s.B * s.Nq) nrows = s.B * s.Nq;
    sample *sm = fa_malloc((size_t)nrows * sizeof *sm, "check samples");
    int ns = pick_rows(&s, nrows, seed, sm);
    errs e = {0};
    int64_t H = s.H, D = s.D, R = taylor ? taylor_rec_len((int)D) : 0;
    int rc = 0;
    for (int a = 0; a < ns && !rc;) {                   /* one batch element at a time */
        int z = a;
        while (z < ns && sm[z].b == sm[a].b && z - a < 4096) z++;
        int n = z - a;
        float *q = fa_malloc((size_t)(n * H * D) * sizeof(float), "check queries");
        double *acc = fa_calloc((size_t)(n * H * D), sizeof(double), "check state");
        double *m = fa_malloc((size_t)(n * H) * sizeof(double), "check state");
        double *l = fa_calloc((size_t)(n * H), sizeof(double), "check state");
        double *tacc = taylor ? fa_calloc((size_t)(n * H * R), sizeof(double), "check state") : NULL;
        double *kappa = fa_calloc((size_t)(n * H), sizeof(double), "check conditioning");
        int64_t *rows = fa_malloc((size_t)n * sizeof(int64_t), "check rows");
        for (int64_t x = 0; x < n * H; x++) m[x] = -INFINITY;
        for (int x = 0; x < n; x++) rows[x] = sm[a + x].i;
        rc = read_rows(in, P_Q, L_Q, sm + a, n, H, D, q, NULL, NULL);
        if (!rc) rc = reference_rows(in, &s, &mk, sm[a].b, rows, q, n, scale, acc, m, l, kappa);
        for (int64_t x = 0; !rc && x < n * H; x++)
            if (kappa[x] > r->kappa) r->kappa = kappa[x];
        if (!rc && taylor) rc = taylor_rows(in, &s, sm[a].b, rows, q, n, r->causal, scale, tacc);
        if (!rc) rc = taylor ? taylor_compare_rows(out, &s, sm + a, n, has_lse, tacc, acc, m, l, &e)
                             : compare_rows(out, &s, sm + a, n, has_lse, acc, m, l, &e);
        free(q); free(acc); free(m); free(l); free(tacc); free(rows); free(kappa);
        a = z;
    }
    free(sm);
    h5_mask_tables_free(&mt);
    if (rc) return -1;
    r->rows = ns;
    r->abs_err = e.abs;
    r->ref_max = e.ref_max;
    r->rel_err = e.ref_max > 0 ? e.abs / e.ref_max : e.abs;
    r->lse_err = e.lse_err;
    r->nonfinite = e.nonfinite;
    r->tol_floor = floor_tol(ot, r->compute);
    r->tol_given = tol > 0;
    /* the Taylor formula is computed in fp32 whatever the engine: its floor, no conditioning
     * term (its error does not grow with |score| the way exp's does) */
    r->tol = tol > 0 ? tol : taylor ? r->tol_floor : default_tol(ot, r->compute, r->kappa);
    r->pass = r->rel_err <= r->tol && e.lse_err <= r->tol && e.nonfinite == 0;
    return 0;
}

/* 1 when the output says it was made by --mode taylor. */
static int output_is_taylor(const char *out) {
    char mode[32] = "";
    int t = h5_attr_str(out, "mode", mode, sizeof mode) == 0 && !strcmp(mode, "taylor");
    fa_clearerr();
    return t;
}

/* The measurement of the output's mode (its 'mode' attribute; exact when absent). */
int check_sampled(const char *in, const char *out, int64_t nrows, double tol, uint64_t seed,
                  check_result *r) {
    if (output_is_taylor(out)) return sampled(in, out, nrows, tol, seed, 1, r);
    return sampled(in, out, nrows, tol, seed, 0, r);
}

static void taylor_print(const check_result *r, const char *out) {
    double arel = tx.approx_ref_max > 0 ? tx.approx_abs / tx.approx_ref_max : tx.approx_abs;
    double frel = tx.approx_ref_max > 0 ? tx.formula_abs / tx.approx_ref_max : tx.formula_abs;
    printf("check: %d row%s x %d heads of %s, taylor mode (%s, scale %.6g, compute %s)\n", r->rows,
           r->rows == 1 ? "" : "s", r->heads, out, r->mask, r->scale,
           r->compute);
    printf("check: approximation error against exact attention (fp64): max abs err %.3e, "
           "rel err %.3e (fp64 Taylor formula: %.3e)\n", tx.approx_abs, arel, frel);
    printf("check: %lld of %lld sampled (row, head) pairs took the denominator fallback\n",
           (long long)tx.fallback, (long long)tx.pairs);
    printf("check: o   against the fp64 Taylor formula: max abs err %.3e, max rel err %.3e "
           "(max |ref| %.3e; %lld pairs near the floor skipped)%s\n", r->abs_err, r->rel_err,
           r->ref_max, (long long)tx.skipped, r->nonfinite ? ", NON-FINITE VALUES" : "");
    if (r->has_lse) printf("check: lse (log of the Taylor denominator) max rel err %.3e\n", r->lse_err);
    /* the verdict is about the implementation; the approximation's error is a number beside it */
    printf("check: %s against the fp64 Taylor formula (to fp32 rounding, tolerance %.1e): %s; the "
           "approximation itself is %.3e (max rel err) from exact attention, which no tolerance "
           "judges\n", r->pass ? "PASS" : "FAIL", r->tol,
           r->pass ? "o is the Taylor formula's" : "o is NOT the Taylor formula's", arel);
    fflush(stdout);
}

void check_print(const check_result *r, const char *out) {
    printf("check: %d row%s x %d heads of %s against fp64 (%s, scale %.6g, compute %s)\n", r->rows,
           r->rows == 1 ? "" : "s", r->heads, out, r->mask, r->scale,
           r->compute);
    printf("check: o   max abs err %.3e, max rel err %.3e (max |ref| %.3e)%s\n", r->abs_err,
           r->rel_err, r->ref_max, r->nonfinite ? ", NON-FINITE VALUES" : "");
    if (r->has_lse) printf("check: lse max rel err %.3e\n", r->lse_err);
    if (r->tol_given)
        printf("check: tolerance %.1e (--tol); largest |score| of the sampled rows %.3e\n", r->tol,
               r->kappa);
    else
        printf("check: tolerance %.1e = max(%.1e for %s output and %s compute, %g x %s's unit "
               "roundoff %.2e x the largest |score| of the sampled rows %.3e, at most 1)\n", r->tol,
               r->tol_floor, fa_dtype_name(r->otype), r->compute, cond_factor(r->compute), r->compute,
               unit_roundoff(r->compute), r->kappa);
    if (!r->tol_given && r->tol >= 1.0)
        printf("check: warning: at this conditioning %s compute promises no digit of o; the "
               "check only catches gross errors (scale the inputs down to check more)\n",
               r->compute);
    printf("check: %s (tolerance %.1e)\n", r->pass ? "PASS" : "FAIL", r->tol);
    fflush(stdout);
}

/* The reading check doubts (issue 27): q, k, v read as bnhd with nothing stating it (not
 * check's --layout, not the run: the output's 'layout_stated', not the input's attributes) where
 * h5in_doubt_bnhd doubts it. The run's refusal or warning, repeated as a warning on stderr and
 * in the report (stdout); the check itself goes on in that reading. */
static void doubt_reading(const char *in, const char *out) {
    if (opt_layout || L_Q != FA_BNHD || L_K != FA_BNHD || L_V != FA_BNHD) return;
    double stated = 0;
    if (h5_attr_double(out, "layout_stated", &stated) == 0 && stated) return;
    int64_t d[3][8];
    for (int i = 0; i < 3; i++) {
        fa_layout a = FA_LAYOUT_AUTO;
        int nd = 0;
        if (h5_layout(in, dpath[i], &a) || a != FA_LAYOUT_AUTO ||
            h5_dataset_info(in, dpath[i], &nd, d[i], NULL) || nd != 4) {
            fa_clearerr();
            return;
        }
    }
    fa_clearerr();
    const fa_layout_doubt why = h5in_doubt_bnhd(d[0], d[1], d[2]);
    if (why == FA_DOUBT_NONE) return;
    const char *const nm[3] = {P_Q, P_K, P_V};
    char text[600];
    h5in_doubt_text(why, nm, d[0], d[1], text, sizeof text);
    static const char tail[] = "; the run and this check read them so, as nothing says "
                               "otherwise (a run now %s this reading): if they are torch's, the "
                               "output is wrong: rerun with --layout bhnd; --layout bnhd, given "
                               "to check, silences this";
    char t[300];
    snprintf(t, sizeof t, tail, why == FA_DOUBT_REFUSE ? "refuses" : "warns of");
    fa_warn("check: input '%s': %s%s", in, text, t);
    printf("check: warning: input '%s': %s%s\n", in, text, t);
}

/* mode: 0 from the output's attribute, 1 exact, 2 taylor */
static int check_main(const char *in, const char *out, int64_t nrows, double tol, uint64_t seed,
                      int mode) {
    check_result r;
    int taylor = mode == 2 || (mode == 0 && output_is_taylor(out));
    int rc = sampled(in, out, nrows, tol, seed, taylor, &r);
    if (rc) return fa_report_error();
    if (strcmp(P_Q, "q") || strcmp(P_K, "k") || strcmp(P_V, "v") || strcmp(P_O, "o"))
        printf("check: datasets %s, %s, %s of %s against %s%s of %s%s\n", P_Q, P_K, P_V, in, P_O,
               r.has_lse ? " and lse" : "", out,
               paths_from_attrs ? " (paths not given taken from the output's attributes)" : "");
    if (L_Q != FA_BNHD || L_K != FA_BNHD || L_V != FA_BNHD || L_O != FA_BNHD)
        printf("check: layouts q %s, k %s, v %s, o %s\n", fa_layout_name(L_Q), fa_layout_name(L_K),
               fa_layout_name(L_V), fa_layout_name(L_O));
    doubt_reading(in, out);
    if (taylor) taylor_print(&r, out);
    else check_print(&r, out);
    return r.pass ? 0 : 1;
}

/* --output without --input: the input the output records in its root attribute 'input' (the
 * path as the run was given it), said in the first line. */
static int check_recorded_input(const char *out, int64_t nrows, double tol, uint64_t seed,
                                int mode) {
    char in[4096] = "";
    if (access(out, R_OK) != 0) {
        fa_seterr("check: output %s: %s (and no --input given)", out, strerror(errno));
        return fa_report_error();
    }
    if (h5_attr_str(out, "input", in, sizeof in) || !*in) {
        fa_seterr("check: no --input given, and %s records no input (root attribute 'input', "
                  "written by fa_long); give --input IN.h5", out);
        return fa_report_error();
    }
    printf("check: input %s, from %s's attribute 'input' (no --input given)\n", in, out);
    fflush(stdout);
    return check_main(in, out, nrows, tol, seed, mode);
}

int cmd_check(int argc, char **argv) {
    static const struct option opts[] = {
        {"input", required_argument, 0, 'i'}, {"output", required_argument, 0, 'o'},
        {"rows", required_argument, 0, 'r'},  {"tol", required_argument, 0, 't'},
        {"seed", required_argument, 0, 's'},  {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},     {"mode", required_argument, 0, 'm'},
        {"q", required_argument, 0, 'Q'},     {"k", required_argument, 0, 'K'},
        {"v", required_argument, 0, 'W'},     {"out-group", required_argument, 0, 'G'},
        {"layout", required_argument, 0, 300}, {"out-layout", required_argument, 0, 301},
        {0, 0, 0, 0}};
    const char *in = NULL, *out = NULL;
    int mode = 0;
    int64_t rows = 64;
    double tol = 0;
    uint64_t seed = 1;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":i:o:r:t:s:m:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'Q': case 'K': case 'W':
            if (!*optarg || !strcmp(optarg, "/")) {
                fa_seterr("check: --%s '%s' is not a dataset path", c == 'Q' ? "q" : c == 'K' ? "k" : "v",
                          optarg);
                return fa_report_error();
            }
            opt_path[c == 'Q' ? 0 : c == 'K' ? 1 : 2] = optarg;
            break;
        case 'G': opt_path[3] = optarg; break;
        case 300: case 301:                  /* --layout, --out-layout */
            if (cli_parse_layout("check: ", c == 300 ? "--layout" : "--out-layout", optarg,
                                 c == 300 ? &opt_layout : &opt_out_layout))
                return fa_report_error();
            break;
        case 'r':
            rows = !strcmp(optarg, "all") ? -1 : fa_parse_size(optarg);
            if (rows == 0 || (rows < 0 && strcmp(optarg, "all"))) {
                fa_seterr("check: --rows '%s' is not a count or 'all'", optarg);
                return fa_report_error();
            }
            break;
        case 't': tol = strtod(optarg, NULL); break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        case 'm':
            if (!strcmp(optarg, "exact")) mode = 1;
            else if (!strcmp(optarg, "taylor")) mode = 2;
            else {
                fa_seterr("check: --mode '%s' is not exact or taylor", optarg);
                return fa_report_error();
            }
            break;
        case 'h': if (fa_rank == 0) check_usage(); return 0;
        case 'V': cli_print_version(); return 0;
        case ':':
            fa_seterr("check: option %s needs a value (see fa_long check --help)", argv[optind - 1]);
            return fa_report_error();
        default:
            cli_unknown_option("check: ", argv[optind - 1], opts, "fa_long check --help");
            return fa_report_error();
        }
    }
    if (!out) {
        fa_seterr("check: give --input IN.h5 and --output OUT.h5");
        return fa_report_error();
    }
    int rc = 0;
    if (fa_rank == 0) rc = in ? check_main(in, out, rows, tol, seed, mode)
                              : check_recorded_input(out, rows, tol, seed, mode);
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return rc;
}
