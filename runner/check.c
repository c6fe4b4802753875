/* check.c — `fa_long check`: recompute sampled output rows in fp64 from the input file and compare
 * with what the output file holds.
 *
 * The job's settings (causal, scale, compute type) come from the output's attributes. Keys and
 * values stream through in blocks, each folded into a running fp64 softmax state per sampled
 * (row, head), so any Nk fits. Error measures, over every compared element:
 *   abs = max |o - ref|,  rel = abs / max |ref|;  lse: max |lse - ref| / max(1, |ref|).
 * Exit 0 when rel and the lse error are within the tolerance, 1 when not, 2 on bad usage/input. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "io/h5io.h"
#include "runner/cli.h"
#include "runner/common.h"

typedef struct { int64_t b, i; } sample;

static int cmp_sample(const void *a, const void *b) {
    const sample *x = a, *y = b;
    if (x->b != y->b) return x->b < y->b ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Default tolerance from the output's element type and the engine's compute type. */
static double default_tol(fa_dtype ot, const char *compute) {
    double t = 1e-4;                                   /* fp32 engine, fp32 output */
    if (ot == FA_F16) t = 2e-3;
    if (ot == FA_BF16) t = 1.6e-2;
    if (!strcmp(compute, "float16") && t < 4e-3) t = 4e-3;
    if (!strcmp(compute, "bfloat16") && t < 2e-2) t = 2e-2;
    return t;
}

static void check_usage(void) {
    printf("usage: fa_long check --input IN.h5 --output OUT.h5 [--rows K|all] [--tol T] [--seed S]\n"
           "Recomputes K sampled output rows (default 64; 'all' for every row) in fp64 and prints\n"
           "the max absolute and relative error of o (and of lse when present). Exits 1 above\n"
           "the tolerance (default from the output and compute types: 1e-4 for float32).\n");
}

/* Streams keys [0, Nk) of batch element b and folds them into fp64 softmax states for the ns
 * sampled rows `rows` (query rows q: [ns, H, D]). acc [ns, H, D], m and l [ns, H]. */
static int reference_rows(const char *in, const fa_shape *s, int64_t b, const int64_t *rows,
                          const float *q, int ns, int causal, double scale, double *acc,
                          double *m, double *l) {
    int64_t H = s->H, Hkv = s->Hkv, D = s->D, G = H / Hkv, diag = s->Nk - s->Nq;
    int64_t blk = (int64_t)(32 << 20) / (Hkv * D * 4) + 1;  /* ~32 MB of keys per block */
    if (blk > s->Nk) blk = s->Nk;
    float *k = fa_malloc((size_t)(blk * Hkv * D) * sizeof(float), "check keys");
    float *v = fa_malloc((size_t)(blk * Hkv * D) * sizeof(float), "check values");
    int rc = 0;
    for (int64_t j0 = 0; j0 < s->Nk && !rc; j0 += blk) {
        int64_t n = s->Nk - j0 < blk ? s->Nk - j0 : blk;
        int64_t st[4] = {b, j0, 0, 0}, ct[4] = {1, n, Hkv, D};
        if (h5_read_block(in, "k", 4, st, ct, k) || h5_read_block(in, "v", 4, st, ct, v)) {
            rc = -1;
            break;
        }
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int si = 0; si < ns; si++) {
            for (int64_t h = 0; h < H; h++) {
                int64_t last = causal ? rows[si] + diag : s->Nk - 1;   /* last visible key */
                int64_t jend = last - j0 + 1 < n ? last - j0 + 1 : n;
                const float *qv = q + ((int64_t)si * H + h) * D;
                double *a = acc + ((int64_t)si * H + h) * D;
                double *mm = m + (int64_t)si * H + h, *ll = l + (int64_t)si * H + h;
                for (int64_t j = 0; j < jend; j++) {
                    const float *kr = k + (j * Hkv + h / G) * D, *vr = v + (j * Hkv + h / G) * D;
                    double dot = 0;
                    for (int64_t e = 0; e < D; e++) dot += (double)qv[e] * (double)kr[e];
                    double sc = dot * scale;
                    if (sc > *mm) {                         /* rescale the running state */
                        double f = *mm == -INFINITY ? 0.0 : exp(*mm - sc);
                        *ll *= f;
                        for (int64_t e = 0; e < D; e++) a[e] *= f;
                        *mm = sc;
                    }
                    double p = exp(sc - *mm);
                    *ll += p;
                    for (int64_t e = 0; e < D; e++) a[e] += p * (double)vr[e];
                }
            }
        }
    }
    free(k);
    free(v);
    return rc;
}

/* Reads shapes of both files and checks that they belong together. */
static int read_shapes(const char *in, const char *out, fa_shape *s, fa_dtype *ot, int *has_lse) {
    int nd;
    int64_t dq[8], dk[8], dout[8];
    fa_dtype t;
    if (h5_dataset_info(in, "q", &nd, dq, &s->q_type) || h5_dataset_info(in, "k", &nd, dk, &t))
        return -1;
    if (h5_dataset_info(out, "o", &nd, dout, ot)) return -1;
    s->B = dq[0]; s->Nq = dq[1]; s->H = dq[2]; s->D = dq[3];
    s->Nk = dk[1]; s->Hkv = dk[2];
    for (int i = 0; i < 4; i++)
        if (dout[i] != dq[i])
            return fa_seterr("%s: dataset 'o' has shape [%lld, %lld, %lld, %lld], expected q's shape "
                             "[%lld, %lld, %lld, %lld] from %s", out, (long long)dout[0],
                             (long long)dout[1], (long long)dout[2], (long long)dout[3],
                             (long long)dq[0], (long long)dq[1], (long long)dq[2], (long long)dq[3], in);
    int64_t dl[8];
    fa_dtype lt;
    *has_lse = h5_dataset_info(out, "lse", &nd, dl, &lt) == 0;
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

/* Compares the output's rows of the samples [s0, s1) (all of batch b) with their reference. */
static int compare_rows(const char *out, const fa_shape *s, const sample *sm, int ns, int has_lse,
                        const double *acc, const double *m, const double *l, errs *e) {
    int64_t H = s->H, D = s->D;
    float *o = fa_malloc((size_t)(H * D) * sizeof(float), "check row");
    float *lse = fa_malloc((size_t)H * sizeof(float), "check lse");
    for (int si = 0; si < ns; si++) {
        int64_t st[4] = {sm[si].b, sm[si].i, 0, 0}, ct[4] = {1, 1, H, D};
        if (h5_read_block(out, "o", 4, st, ct, o)) goto fail;
        if (has_lse) {
            int64_t s3[3] = {sm[si].b, 0, sm[si].i}, c3[3] = {1, H, 1};
            if (h5_read_block(out, "lse", 3, s3, c3, lse)) goto fail;
        }
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
    free(o);
    free(lse);
    return 0;
fail:
    free(o);
    free(lse);
    return -1;
}

/* Recomputes sampled rows and fills *r. Returns 0, or -1 with fa_seterr on bad input. */
int check_sampled(const char *in, const char *out, int64_t nrows, double tol, uint64_t seed,
                  check_result *r) {
    fa_shape s;
    fa_dtype ot;
    int has_lse = 0;
    memset(r, 0, sizeof *r);
    if (read_shapes(in, out, &s, &ot, &has_lse)) return -1;
    double scale, causal_d;
    snprintf(r->compute, sizeof r->compute, "float32");
    if (h5_attr_double(out, "scale", &scale) || h5_attr_double(out, "causal", &causal_d))
        return fa_seterr("%s: attributes 'scale' and 'causal' missing: not an output of fa_long", out);
    h5_attr_str(out, "compute", r->compute, sizeof r->compute);
    r->tol = tol > 0 ? tol : default_tol(ot, r->compute);
    r->causal = causal_d != 0;
    r->scale = scale;
    r->heads = (int)s.H;
    r->has_lse = has_lse;
    if (nrows <= 0 || nrows > s.B * s.Nq) nrows = s.B * s.Nq;
    sample *sm = fa_malloc((size_t)nrows * sizeof *sm, "check samples");
    int ns = pick_rows(&s, nrows, seed, sm);
    errs e = {0};
    int64_t H = s.H, D = s.D;
    int rc = 0;
    for (int a = 0; a < ns && !rc;) {                   /* one batch element at a time */
        int z = a;
        while (z < ns && sm[z].b == sm[a].b && z - a < 4096) z++;
        int n = z - a;
        float *q = fa_malloc((size_t)(n * H * D) * sizeof(float), "check queries");
        double *acc = fa_calloc((size_t)(n * H * D), sizeof(double), "check state");
        double *m = fa_malloc((size_t)(n * H) * sizeof(double), "check state");
        double *l = fa_calloc((size_t)(n * H), sizeof(double), "check state");
        int64_t *rows = fa_malloc((size_t)n * sizeof(int64_t), "check rows");
        for (int64_t x = 0; x < n * H; x++) m[x] = -INFINITY;
        for (int x = 0; x < n && !rc; x++) {
            int64_t st[4] = {sm[a + x].b, sm[a + x].i, 0, 0}, ct[4] = {1, 1, H, D};
            rows[x] = sm[a + x].i;
            rc = h5_read_block(in, "q", 4, st, ct, q + (int64_t)x * H * D);
        }
        if (!rc) rc = reference_rows(in, &s, sm[a].b, rows, q, n, r->causal, scale, acc, m, l);
        if (!rc) rc = compare_rows(out, &s, sm + a, n, has_lse, acc, m, l, &e);
        free(q); free(acc); free(m); free(l); free(rows);
        a = z;
    }
    free(sm);
    if (rc) return -1;
    r->rows = ns;
    r->abs_err = e.abs;
    r->ref_max = e.ref_max;
    r->rel_err = e.ref_max > 0 ? e.abs / e.ref_max : e.abs;
    r->lse_err = e.lse_err;
    r->nonfinite = e.nonfinite;
    r->pass = r->rel_err <= r->tol && e.lse_err <= r->tol && e.nonfinite == 0;
    return 0;
}

void check_print(const check_result *r, const char *out) {
    printf("check: %d row%s x %d heads of %s against fp64 (%s, scale %.6g, compute %s)\n", r->rows,
           r->rows == 1 ? "" : "s", r->heads, out, r->causal ? "causal" : "non-causal", r->scale,
           r->compute);
    printf("check: o   max abs err %.3e, max rel err %.3e (max |ref| %.3e)%s\n", r->abs_err,
           r->rel_err, r->ref_max, r->nonfinite ? ", NON-FINITE VALUES" : "");
    if (r->has_lse) printf("check: lse max rel err %.3e\n", r->lse_err);
    printf("check: %s (tolerance %.1e)\n", r->pass ? "PASS" : "FAIL", r->tol);
    fflush(stdout);
}

static int check_main(const char *in, const char *out, int64_t nrows, double tol, uint64_t seed) {
    check_result r;
    if (check_sampled(in, out, nrows, tol, seed, &r)) return fa_report_error();
    check_print(&r, out);
    return r.pass ? 0 : 1;
}

int cmd_check(int argc, char **argv) {
    static const struct option opts[] = {
        {"input", required_argument, 0, 'i'}, {"output", required_argument, 0, 'o'},
        {"rows", required_argument, 0, 'r'},  {"tol", required_argument, 0, 't'},
        {"seed", required_argument, 0, 's'},  {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},     {0, 0, 0, 0}};
    const char *in = NULL, *out = NULL;
    int64_t rows = 64;
    double tol = 0;
    uint64_t seed = 1;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":i:o:r:t:s:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'r':
            rows = !strcmp(optarg, "all") ? -1 : fa_parse_size(optarg);
            if (rows == 0 || (rows < 0 && strcmp(optarg, "all"))) {
                fa_seterr("check: --rows '%s' is not a count or 'all'", optarg);
                return fa_report_error();
            }
            break;
        case 't': tol = strtod(optarg, NULL); break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        case 'h': if (fa_rank == 0) check_usage(); return 0;
        case 'V': cli_print_version(); return 0;
        default:
            fa_seterr("check: bad option '%s' (see fa_long check --help)", argv[optind - 1]);
            return fa_report_error();
        }
    }
    if (!in || !out) {
        fa_seterr("check: give --input IN.h5 and --output OUT.h5");
        return fa_report_error();
    }
    int rc = 0;
    if (fa_rank == 0) rc = check_main(in, out, rows, tol, seed);
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return rc;
}
