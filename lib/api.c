/* api.c — the C library (lib/fa_long.h) over the command's own parts: the mask object
 * (kernels/mask.h), the CPU engine (kernels/cpu/attn_cpu.c), the record merge across ranks
 * (dist/merge.c) and the element conversions (io/convert.c). Query rows go in chunks of at most
 * CHUNK rows, so the working memory is a chunk's states, not Nq's. */
#include "lib/fa_long.h"
#include "base/agree.h"
#include "base/common.h"
#include "dist/merge.h"
#include "io/h5io.h"
#include "kernels/attn.h"
#include "kernels/mask.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 4096

_Static_assert((int)FA_ELEM_F32 == (int)FA_F32 && (int)FA_ELEM_F16 == (int)FA_F16 &&
               (int)FA_ELEM_BF16 == (int)FA_BF16 && (int)FA_ELEM_F64 == (int)FA_F64,
               "fa_elem follows fa_dtype");

void fa_attn_desc_init(fa_attn_desc *d) {
    memset(d, 0, sizeof *d);
    d->layout = FA_LAYOUT_BNHD;
    d->dtype = FA_ELEM_F32;
    d->window_left = d->window_right = -1;
    d->doc_rows = 1;
}

size_t fa_attn_desc_sizeof(void) { return sizeof(fa_attn_desc); }
const char *fa_long_error(void) { return fa_errmsg(); }
const char *fa_long_version(void) { return "fa_long " FA_VERSION; }

/* a bad argument: its line, and FA_EINVAL */
#define EINVAL(...) ((void)fa_seterr(__VA_ARGS__), FA_EINVAL)

/* The descriptor's checks; fills the mask. */
static int validate(const fa_attn_desc *d, attn_mask *m) {
    fa_clearerr();
    if (!d) return EINVAL("fa_long: the descriptor is NULL");
    if (d->batch < 1 || d->nq < 1 || d->nk < 1 || d->heads < 1 || d->kv_heads < 1 || d->head_dim < 1)
        return EINVAL("fa_long: fa_attn_desc: batch, nq, nk, heads, kv_heads and head_dim must be "
                      ">= 1 (got %lld, %lld, %lld, %lld, %lld, %lld)", (long long)d->batch,
                      (long long)d->nq, (long long)d->nk, (long long)d->heads,
                      (long long)d->kv_heads, (long long)d->head_dim);
    if (d->heads % d->kv_heads)
        return EINVAL("fa_long: fa_attn_desc: heads %lld is not a multiple of kv_heads %lld",
                      (long long)d->heads, (long long)d->kv_heads);
    if (d->head_dim > FA_MAX_HEAD_DIM)
        return EINVAL("fa_long: fa_attn_desc: head_dim %lld is above %d", (long long)d->head_dim,
                      FA_MAX_HEAD_DIM);
    if (d->layout != FA_LAYOUT_BNHD && d->layout != FA_LAYOUT_BHND)
        return EINVAL("fa_long: fa_attn_desc: layout %d is not FA_LAYOUT_BNHD or FA_LAYOUT_BHND",
                      (int)d->layout);
    if ((int)d->dtype < 0 || d->dtype > FA_ELEM_F64)
        return EINVAL("fa_long: fa_attn_desc: dtype %d is not an fa_elem", (int)d->dtype);
    if (d->window_left < -1 || d->window_right < -1)
        return EINVAL("fa_long: fa_attn_desc: window sides %lld,%lld; expected >= 0, or -1 for "
                      "unbounded", (long long)d->window_left, (long long)d->window_right);
    if (d->causal && d->window_right > 0)
        return EINVAL("fa_long: fa_attn_desc: causal with window_right %lld; causal means "
                      "window_right 0 (or -1)", (long long)d->window_right);
    if (d->softcap < 0 || !isfinite(d->softcap) || d->scale < 0 || !isfinite(d->scale))
        return EINVAL("fa_long: fa_attn_desc: softcap %g and scale %g must be finite and >= 0 "
                      "(0: none / 1/sqrt(head_dim))", d->softcap, d->scale);
    *m = mask_plain(d->nq, d->nk, d->causal);          /* causal: right side 0 */
    m->left = d->window_left;
    if (!d->causal) m->right = d->window_right;
    m->softcap = d->softcap;
    m->alibi = d->alibi_slopes;
    if (d->ndocs > 0) {
        if (!d->cu_seqlens_q || !d->cu_seqlens_k || (d->doc_rows != 1 && d->doc_rows != d->batch))
            return EINVAL("fa_long: fa_attn_desc: ndocs %lld needs cu_seqlens_q and cu_seqlens_k "
                          "with doc_rows 1 or batch (%lld)", (long long)d->ndocs, (long long)d->batch);
        if (h5_check_offsets(d->cu_seqlens_q, d->doc_rows, d->ndocs, d->nq, "fa_long: cu_seqlens_q") ||
            h5_check_offsets(d->cu_seqlens_k, d->doc_rows, d->ndocs, d->nk, "fa_long: cu_seqlens_k"))
            return FA_EINVAL;
        m->ndocs = d->ndocs;
        m->doc_rows = d->doc_rows;
        m->cu_q = d->cu_seqlens_q;
        m->cu_k = d->cu_seqlens_k;
    }
    return FA_OK;
}

/* Rows [r0, r0+n) of batch element b of a [B, N, heads, D] (bnhd) or [B, heads, N, D] (bhnd)
 * tensor of element type t, as fp32 [n, heads, D]. */
static void gather(const void *src, fa_dtype t, fa_long_layout lay, int64_t N, int64_t heads, int64_t D,
                   int64_t b, int64_t r0, int64_t n, float *dst, float *tmp) {
    const int es = fa_dtype_size(t);
    const char *base = src;
    if (lay == FA_LAYOUT_BNHD) {
        fa_to_f32(t, base + (size_t)(((b * N + r0) * heads) * D) * es, dst, n * heads * D);
        return;
    }
    for (int64_t h = 0; h < heads; h++) {
        fa_to_f32(t, base + (size_t)(((b * heads + h) * N + r0) * D) * es, tmp, n * D);
        for (int64_t i = 0; i < n; i++) memcpy(dst + (i * heads + h) * D, tmp + i * D, sizeof(float) * (size_t)D);
    }
}

/* Finalizes n*H records of rows [r0, r0+n) of batch b into o (layout) and lse [B,H,Nq]. */
static void finish(const fa_attn_desc *d, const float *rec, int64_t b, int64_t r0, int64_t n,
                   float *o, float *lse) {
    const int64_t H = d->heads, D = d->head_dim, R = D + 2;
#pragma omp parallel for schedule(static)
    for (int64_t x = 0; x < n * H; x++) {
        int64_t i = x / H, h = x % H;
        float *dst = d->layout == FA_LAYOUT_BNHD ? o + ((b * d->nq + r0 + i) * H + h) * D
                                                 : o + ((b * H + h) * d->nq + r0 + i) * D;
        float l = attn_rec_finalize(rec + x * R, (int)D, dst);
        if (lse) lse[(b * H + h) * d->nq + r0 + i] = l;
    }
}

/* The job: every chunk of every batch element against keys [k0, k0+kn), merged over comm when
 * comm != MPI_COMM_NULL (to root, or to every rank when root < 0). */
static int run(MPI_Comm comm, const fa_attn_desc *d, const attn_mask *m, const void *q, const void *k,
               const void *v, int64_t k0, int64_t kn, float *o, float *lse, int root, int me) {
    const int64_t H = d->heads, Hkv = d->kv_heads, D = d->head_dim, R = D + 2;
    const int64_t chunk = d->nq < CHUNK ? d->nq : CHUNK;
    const fa_dtype t = (fa_dtype)d->dtype;
    float *qf = fa_malloc(sizeof(float) * (size_t)(chunk * H * D), "library queries");
    float *kf = fa_malloc(sizeof(float) * (size_t)((kn > 0 ? kn : 1) * Hkv * D), "library keys");
    float *vf = fa_malloc(sizeof(float) * (size_t)((kn > 0 ? kn : 1) * Hkv * D), "library values");
    int64_t tn = chunk > kn ? chunk : kn;
    float *tmp = fa_malloc(sizeof(float) * (size_t)((tn > 0 ? tn : 1) * D), "library staging");
    float *rec = fa_malloc(sizeof(float) * (size_t)(chunk * H * R), "library states");
    rec_merge mg;
    if (comm != MPI_COMM_NULL) rec_merge_init(&mg, (int)D);
    cpu_tiling tiling = {0, 0, d->threads > 0 ? d->threads : 0, 0};
    int rc = FA_OK;
    for (int64_t b = 0; b < d->batch && rc == FA_OK; b++) {
        if (kn > 0) {
            gather(k, t, d->layout, kn, Hkv, D, b, 0, kn, kf, tmp);
            gather(v, t, d->layout, kn, Hkv, D, b, 0, kn, vf, tmp);
        }
        attn_kv_segment seg = {.k = kf, .v = vf, .n = kn, .pos0 = k0};
        for (int64_t r0 = 0; r0 < d->nq; r0 += chunk) {
            int64_t n = d->nq - r0 < chunk ? d->nq - r0 : chunk;
            gather(q, t, d->layout, d->nq, H, D, b, r0, n, qf, tmp);
            attn_queries aq = {.q = qf, .nq = n, .q_pos0 = r0, .h = (int)H, .hkv = (int)Hkv,
                               .d = (int)D,
                               .scale = (float)(d->scale > 0 ? d->scale : 1.0 / sqrt((double)D)),
                               .causal = mask_is_causal(m), .diag = d->nk - d->nq, .mask = m,
                               .b = b};
            attn_state_init(rec, n, (int)H, (int)D);
            if (kn > 0) cpu_attn_partial(&aq, &seg, 1, rec, &tiling, NULL, NULL);
            if (comm != MPI_COMM_NULL) {
                int e = root < 0 ? MPI_Allreduce(MPI_IN_PLACE, rec, (int)(n * H), mg.rec, mg.op, comm)
                                 : MPI_Reduce(me == root ? MPI_IN_PLACE : rec, rec, (int)(n * H), mg.rec,
                                              mg.op, root, comm);
                if (e != MPI_SUCCESS) {
                    fa_seterr("fa_long: fa_attention_mpi: the merge across ranks failed (MPI error %d)", e);
                    rc = FA_EMPI;
                    break;
                }
            }
            if (comm == MPI_COMM_NULL || root < 0 || me == root) finish(d, rec, b, r0, n, o, lse);
        }
    }
    if (comm != MPI_COMM_NULL) rec_merge_free(&mg);
    free(qf); free(kf); free(vf); free(tmp); free(rec);
    return rc;
}

int fa_attention(const fa_attn_desc *d, const void *q, const void *k, const void *v, float *o,
                 float *lse) {
    attn_mask m;
    int rc = validate(d, &m);
    if (rc) return rc;
    if (!q || !k || !v || !o)
        return EINVAL("fa_long: fa_attention: %s is NULL", !q ? "q" : !k ? "k" : !v ? "v" : "o");
    return run(MPI_COMM_NULL, d, &m, q, k, v, 0, d->nk, o, lse, -1, 0);
}

/* A fingerprint of what every rank must agree on (the descriptor's values, not its pointers). */
static uint64_t desc_print(const fa_attn_desc *d) {
    int64_t v[14] = {d->batch, d->nq, d->nk, d->heads, d->kv_heads, d->head_dim, d->layout, d->dtype,
                     d->causal, d->window_left, d->window_right, d->ndocs, d->doc_rows, d->alibi_slopes != NULL};
    double f[2] = {d->scale, d->softcap};
    return fa_fnv1a(fa_fnv1a(FA_FNV_START, v, sizeof v), f, sizeof f);
}

static int cmp_run(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

int fa_attention_mpi(MPI_Comm comm, const fa_attn_desc *d, const void *q, const void *k,
                     const void *v, int64_t k_start, int64_t k_rows, float *o, float *lse,
                     int root) {
    int init = 0, me = 0, np = 1;
    MPI_Initialized(&init);
    if (!init) {
        fa_seterr("fa_long: fa_attention_mpi: MPI is not initialized (MPI_Init first)");
        return FA_EMPI;
    }
    MPI_Comm_rank(comm, &me);
    MPI_Comm_size(comm, &np);
    attn_mask m;
    int rc = validate(d, &m);
    if (!rc && (!q || (k_rows > 0 && (!k || !v)) || ((root < 0 || me == root) && !o)))
        rc = EINVAL("fa_long: fa_attention_mpi: %s is NULL on rank %d",
                    !q ? "q" : (k_rows > 0 && !k) ? "k" : (k_rows > 0 && !v) ? "v" : "o", me);
    if (!rc && (k_start < 0 || k_rows < 0 || k_start + k_rows > d->nk))
        rc = EINVAL("fa_long: fa_attention_mpi: rank %d's keys [%lld, %lld) are outside [0, %lld)",
                    me, (long long)k_start, (long long)(k_start + k_rows), (long long)d->nk);
    if (!rc && root >= np)
        rc = EINVAL("fa_long: fa_attention_mpi: root %d is not a rank of the communicator (%d "
                    "ranks)", root, np);
    /* the same job on every rank, and shards that cover [0, Nk) once */
    uint64_t mine = d ? desc_print(d) : 0, lo = 0, hi = 0;
    MPI_Allreduce(&mine, &lo, 1, MPI_UINT64_T, MPI_MIN, comm);
    MPI_Allreduce(&mine, &hi, 1, MPI_UINT64_T, MPI_MAX, comm);
    if (!rc && lo != hi)
        rc = EINVAL("fa_long: fa_attention_mpi: the descriptors differ between the ranks "
                    "(rank %d's among them)", me);
    int64_t run_mine[2] = {k_start, k_rows}, *all = fa_malloc(sizeof(int64_t) * 2 * (size_t)np, "shards");
    MPI_Allgather(run_mine, 2, MPI_INT64_T, all, 2, MPI_INT64_T, comm);
    qsort(all, (size_t)np, 2 * sizeof(int64_t), cmp_run);
    int64_t at = 0;
    for (int r = 0; r < np && !rc; r++) {
        if (all[2 * r + 1] == 0) continue;
        if (all[2 * r] != at)
            rc = EINVAL("fa_long: fa_attention_mpi: the ranks' shards leave a gap or overlap at key "
                        "%lld (a shard starts at %lld)", (long long)at, (long long)all[2 * r]);
        at = all[2 * r] + all[2 * r + 1];
    }
    free(all);
    if (!rc && d && at != d->nk)
        rc = EINVAL("fa_long: fa_attention_mpi: the ranks' shards cover keys [0, %lld) of nk %lld",
                    (long long)at, (long long)d->nk);
    if (fa_agree(comm, rc, -1)) return rc ? rc : FA_EINVAL;
    return run(comm, d, &m, q, k, v, k_start, k_rows, o, lse, root, me);
}
