/* h5mask.c — the input's mask tables (see h5io.h, "mask tables"): packed-document offsets and
 * ALiBi slopes, small datasets read whole by one process. */
#include "io/h5priv.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The group part of q's path, with its trailing '/': "layer3/q" -> "layer3/", "q" -> "". */
static void group_of(const char *qpath, char *buf, int len) {
    const char *slash = qpath ? strrchr(qpath, '/') : NULL;
    int n = slash ? (int)(slash - qpath) + 1 : 0;
    snprintf(buf, (size_t)len, "%.*s", n, qpath ? qpath : "");
}

int h5_check_offsets(const int64_t *cu, int64_t rows, int64_t ndocs, int64_t n, const char *what) {
    for (int64_t r = 0; r < rows; r++) {
        const int64_t *c = cu + r * (ndocs + 1);
        const char *row = rows > 1 ? " of batch element " : "";
        char rb[32] = "";
        if (rows > 1) snprintf(rb, sizeof rb, "%lld", (long long)r);
        if (c[0] != 0)
            return fa_seterr("%s%s%s starts at %lld, expected 0", what, row, rb, (long long)c[0]);
        for (int64_t d = 0; d < ndocs; d++)
            if (c[d + 1] < c[d])
                return fa_seterr("%s%s%s decreases at index %lld (%lld after %lld): offsets must "
                                 "not decrease", what, row, rb, (long long)(d + 1),
                                 (long long)c[d + 1], (long long)c[d]);
        if (c[ndocs] != n)
            return fa_seterr("%s%s%s ends at %lld, expected %lld (the sequence length)", what, row,
                             rb, (long long)c[ndocs], (long long)n);
    }
    return 0;
}

/* Reads integer dataset `name` ([ndocs+1] or [B, ndocs+1]) whole as int64. */
static int read_offsets(hid_t f, const char *path, const char *name, const fa_shape *s,
                        int64_t *ndocs, int64_t *rows, int64_t **out) {
    hid_t d = h5io_open_dataset(f, path, name, "integer offsets, shape [ndocs+1] or [B, ndocs+1]");
    if (d < 0) return -1;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[8] = {0};
    if (nd >= 1 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
    int st = 0;
    char have[200];
    int64_t dd[8];
    for (int i = 0; i < nd && i < 8; i++) dd[i] = (int64_t)dims[i];
    h5io_fmt_dims(have, sizeof have, nd, dd);
    if (H5Tget_class(t) != H5T_INTEGER)
        st = fa_seterr("input '%s': dataset '%s' is not of an integer type; expected integer "
                       "offsets (int32 or int64)", path, name);
    else if (!(nd == 1 || (nd == 2 && (int64_t)dims[0] == s->B)) || dims[nd - 1] < 2)
        st = fa_seterr("input '%s': dataset '%s' has shape %s; expected [ndocs+1] or [%lld, "
                       "ndocs+1] with ndocs >= 1", path, name, have, (long long)s->B);
    if (!st) {
        *rows = nd == 2 ? (int64_t)dims[0] : 1;
        *ndocs = (int64_t)dims[nd - 1] - 1;
        *out = fa_malloc(sizeof(int64_t) * (size_t)(*rows * (*ndocs + 1)), "document offsets");
        if (H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0) {
            st = fa_seterr("input '%s': dataset '%s': cannot read it as int64 (values out of "
                           "range?)", path, name);
            free(*out);
            *out = NULL;
        }
    }
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return st;
}

static int read_slopes(hid_t f, const char *path, const char *name, const fa_shape *s, float **out) {
    hid_t d = h5io_open_dataset(f, path, name, "float slopes [H]");
    if (d < 0) return -1;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(sp), st = 0;
    hsize_t dims[8] = {0};
    if (nd >= 1 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
    if (H5Tget_class(t) != H5T_FLOAT)
        st = fa_seterr("input '%s': dataset '%s' is not of a floating type; expected float "
                       "slopes [%lld]", path, name, (long long)s->H);
    else if (nd != 1 || (int64_t)dims[0] != s->H)
        st = fa_seterr("input '%s': dataset '%s' has %lld value%s; expected one slope per query "
                       "head: [%lld]", path, name, nd == 1 ? (long long)dims[0] : -1LL,
                       nd == 1 && dims[0] == 1 ? "" : "s", (long long)s->H);
    if (!st) {
        *out = fa_malloc(sizeof(float) * (size_t)s->H, "alibi slopes");
        if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
            st = fa_seterr("input '%s': dataset '%s': cannot read it", path, name);
        for (int64_t h = 0; !st && h < s->H; h++)
            if (!isfinite((*out)[h]))
                st = fa_seterr("input '%s': dataset '%s': slope %lld is %g; expected finite "
                               "slopes", path, name, (long long)h, (*out)[h]);
        if (st) {
            free(*out);
            *out = NULL;
        }
    }
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return st;
}

int h5_read_mask_tables(const char *path, const char *qpath, const fa_shape *s, int alibi,
                        int documents, h5_mask_tables *t) {
    memset(t, 0, sizeof *t);
    hid_t f = h5io_open_serial(path, "input");
    if (f < 0) return -1;
    char g[FA_PATH_MAX], nq[FA_PATH_MAX + 32], nk[FA_PATH_MAX + 32], nb[FA_PATH_MAX + 32],
        ns[FA_PATH_MAX + 32];
    group_of(qpath, g, sizeof g);
    snprintf(nq, sizeof nq, "%scu_seqlens_q", g);
    snprintf(nk, sizeof nk, "%scu_seqlens_k", g);
    snprintf(nb, sizeof nb, "%scu_seqlens", g);
    snprintf(ns, sizeof ns, "%salibi_slopes", g);
    int hq = h5io_link_exists(f, nq), hk = h5io_link_exists(f, nk), hb = h5io_link_exists(f, nb);
    int st = 0;
    if (!documents) {
        t->docs_unread = hb || hq || hk;
        hb = hq = hk = 0;
    }
    if (hb && (hq || hk))
        st = fa_seterr("input '%s': has both '%s' and '%s'; expected cu_seqlens alone (for "
                       "queries and keys) or cu_seqlens_q with cu_seqlens_k", path, nb, hq ? nq : nk);
    else if (hq != hk)
        st = fa_seterr("input '%s': has '%s' but no '%s'; expected both (or cu_seqlens for both)",
                       path, hq ? nq : nk, hq ? nk : nq);
    else if (hb || hq) {
        int64_t dq = 0, rq = 0, dk = 0, rk = 0;
        const char *a = hb ? nb : nq, *b = hb ? nb : nk;
        st = read_offsets(f, path, a, s, &dq, &rq, &t->cu_q);
        if (!st) st = read_offsets(f, path, b, s, &dk, &rk, &t->cu_k);
        if (!st && (dq != dk || rq != rk))
            st = fa_seterr("input '%s': '%s' holds %lld document%s a row and '%s' %lld; expected "
                           "the same documents for queries and keys", path, a, (long long)dq,
                           dq == 1 ? "" : "s", b, (long long)dk);
        char what[2 * FA_PATH_MAX];
        snprintf(what, sizeof what, "input '%s': dataset '%s'", path, a);
        if (!st) st = h5_check_offsets(t->cu_q, rq, dq, s->Nq, what);
        snprintf(what, sizeof what, "input '%s': dataset '%s' (as key offsets)", path, b);
        if (!st && hb && s->Nq != s->Nk)
            st = fa_seterr("input '%s': dataset '%s' serves queries and keys, but Nq = %lld and "
                           "Nk = %lld; expected cu_seqlens_q and cu_seqlens_k", path, nb,
                           (long long)s->Nq, (long long)s->Nk);
        if (!st) st = h5_check_offsets(t->cu_k, rk, dk, s->Nk, what);
        t->ndocs = dq;
        t->doc_rows = rq;
    }
    if (!st && h5io_link_exists(f, ns)) {
        if (alibi) st = read_slopes(f, path, ns, s, &t->alibi);
        else fa_warn("input '%s' has '%s', which is used only with --alibi: computing without "
                     "ALiBi", path, ns);
    }
    H5Fclose(f);
    if (st) h5_mask_tables_free(t);
    return st;
}

void h5_mask_tables_free(h5_mask_tables *t) {
    free(t->cu_q);
    free(t->cu_k);
    free(t->alibi);
    memset(t, 0, sizeof *t);
}
