/* taylor.h — the approximate mode (--mode taylor): first-order Taylor linear attention with
 * key centering (ViTALiTy). Shapes and masking as in kernels/attn.h.
 *
 * With mu = mean of ALL Nk keys of the batch element (per kv head, every rank's keys) and
 * k^_j = k_j - mu, exp(s q.k^_j) ~ 1 + s q.k^_j, so for query row i (visible key set V_i, N_i = |V_i|):
 *
 *   o_i = ( sum_{j in V_i} v_j  +  s q_i^T S_i ) / ( N_i + s q_i . z_i ),
 *   S_i = sum_{j in V_i} k^_j v_j^T  (D x D),   z_i = sum_{j in V_i} k^_j  (D).
 *
 * Non-causal: S and z are one state per kv head (z ~ 0 by the centering, so the denominator is
 * ~N). Causal: prefix states over the keys in position order, advanced tile by tile; inside a tile
 * the masked part is computed exactly (X = s Q K^^T masked, then X V). Cost O(N D^2 + N T D).
 *
 * A partial result over a subset of the keys is, per (query row, head), the record
 *   { cnt, lin, sv[0..D), qs[0..D) }        (taylor_rec_len(D) = 2D + 2 floats, fp32)
 * cnt = keys seen, lin = s q.z, sv = sum v, qs = s q^T S over those keys. Partials over disjoint
 * key sets merge by a plain sum (that is the ranks' merge of their D x D states and key sums,
 * projected on each query row). Records are laid out [row][head] like the exact engine's.
 *
 * Denominator policy (the expansion is not a softmax: den = cnt + lin can come near 0 or turn
 * negative, in causal rows that see few keys):
 *   cnt == 0                        o = 0, lse = -inf                      (as exact mode)
 *   den > TAYLOR_DEN_FLOOR * cnt    o = (sv + qs) / den, lse = log(den)    (the formula)
 *   otherwise (or a non-finite den)  o = sv / cnt, lse = log(cnt)           (FALLBACK: the
 *                                   zeroth-order term, uniform attention over the visible keys)
 *   if o is still not finite (only with --allow-nonfinite inputs or fp32 overflow): o = 0 (ZEROED).
 * Fallback and zeroed rows are counted and reported; the output never holds NaN or Inf.
 * 'lse' in taylor mode is the log of the denominator actually used: not comparable with exact lse.
 */
#pragma once
#include <stdint.h>
#include <math.h>
#include "kernels/attn.h"

#define TAYLOR_DEN_FLOOR 0.1f   /* den <= 0.1 * N_i counts as "near zero or negative" */

enum { TAYLOR_ROW_OK = 0, TAYLOR_ROW_FALLBACK = 1, TAYLOR_ROW_ZEROED = 2, TAYLOR_ROW_EMPTY = 3 };

static inline int64_t taylor_rec_len(int d) { return 2 * (int64_t)d + 2; }

/* Final output of one record (policy above). Returns the lse value; *kind one of TAYLOR_ROW_*. */
static inline float taylor_rec_finalize(const float *r, int d, float *o, int *kind) {
    float cnt = r[0], den = r[0] + r[1];
    const float *sv = r + 2, *qs = r + 2 + d;
    if (!(cnt > 0.0f)) {
        for (int i = 0; i < d; i++) o[i] = 0.0f;
        *kind = TAYLOR_ROW_EMPTY;
        return -INFINITY;
    }
    int ok = 1;
    if (den > TAYLOR_DEN_FLOOR * cnt && isfinite(den)) {
        float inv = 1.0f / den;
        for (int i = 0; i < d; i++) {
            o[i] = (sv[i] + qs[i]) * inv;
            ok &= isfinite(o[i]);
        }
        if (ok) {
            *kind = TAYLOR_ROW_OK;
            return logf(den);
        }
    }
    float inv = 1.0f / cnt;
    ok = 1;
    for (int i = 0; i < d; i++) {
        o[i] = sv[i] * inv;
        ok &= isfinite(o[i]);
    }
    if (ok) {
        *kind = TAYLOR_ROW_FALLBACK;
        return logf(cnt);
    }
    for (int i = 0; i < d; i++) o[i] = 0.0f;
    *kind = TAYLOR_ROW_ZEROED;
    return logf(cnt);
}

/* ---- shared host helpers (kernels/cpu/taylor_cpu.c) ------------------------------------------ */
/* sum[hkv*d] += sum over every key of the segments (double). */
void taylor_key_sums(const attn_kv_segment *segs, int nsegs, int hkv, int d, double *sum);
/* Keys of the segments (increasing pos0, disjoint) whose global position is <= last. */
int64_t taylor_keys_upto(const attn_kv_segment *segs, int nsegs, int64_t last);
/* Visible key count of each row of a chunk: cnt[r] for r in [0, q->nq). nkeys = all keys held. */
void taylor_row_counts(const attn_queries *q, const attn_kv_segment *segs, int nsegs, int64_t nkeys,
                       int64_t *cnt);

/* ---- CPU engine (kernels/cpu/taylor_cpu.c) ---------------------------------------------------- */
typedef struct taylor_cpu taylor_cpu;
/* threads: OpenMP threads (0 = all); tile: query rows per tile (0 = default 64). NULL out of
 * memory in a library call (base/common.h's fa_try_*), nothing left allocated. */
taylor_cpu *taylor_cpu_create(int h, int hkv, int d, int threads, int tile);
/* New batch element: the rank's keys (segments stay valid until the next call) and the global
 * key mean mu [hkv*d] (double). Resets the running state. */
void taylor_cpu_load_kv(taylor_cpu *e, const attn_kv_segment *segs, int nsegs, const double *mu);
/* Adds this rank's part of every record of the chunk into rec ([nq][H] records of 2D+2).
 * Chunks of one batch element are cheapest in increasing row order (the causal prefix state runs
 * forward; going back restarts it). progress(arg) is called now and then from the calling thread. */
void taylor_cpu_partial(taylor_cpu *e, const attn_queries *q, float *rec, void (*progress)(void *),
                        void *arg);
void taylor_cpu_destroy(taylor_cpu *e);
/* Non-causal jobs across ranks: the state over all the loaded keys, st [hkv][d*d + 2d] (S, z, sv;
 * fp64), then the same summed over ranks set back, standing for nkeys_total keys; from then on
 * (until the next load_kv) non-causal partials use it as is and count nkeys_total keys per row,
 * so each rank can compute a share of the rows alone. */
void taylor_cpu_get_state(taylor_cpu *e, double *st);
void taylor_cpu_set_state(taylor_cpu *e, const double *st, int64_t nkeys_total);

/* ---- CUDA engine (kernels/cuda/taylor.cu; without CUDA every call refuses) ---------------------
 * Same contract as the CPU engine, fp32 on the device, records copied back and added into rec. */
typedef struct taylor_gpu taylor_gpu;
int taylor_gpu_create(int device, int64_t kv_rows, int64_t max_rows, int h, int hkv, int d,
                      taylor_gpu **out);
int taylor_gpu_load_kv(taylor_gpu *e, const attn_kv_segment *segs, int nsegs, const double *mu);
/* overwrite: rec holds the empty state (zeros) on entry, so the records are copied straight into
 * it instead of being added (saves a host pass over 2D+2 floats per record). */
int taylor_gpu_partial(taylor_gpu *e, const attn_queries *q, float *rec, int overwrite);
void taylor_gpu_destroy(taylor_gpu *e);
int taylor_gpu_get_state(taylor_gpu *e, double *st);       /* as taylor_cpu_get_state */
int taylor_gpu_set_state(taylor_gpu *e, const double *st, int64_t nkeys_total);

/* ---- fp64 reference of the same formula (kernels/cpu/taylor_ref.c) ---------------------------- */
/* mu [hkv*d] = mean over the nk keys k [nk, hkv, d] */
void taylor_ref_key_mean(const float *k, int64_t nk, int hkv, int d, double *mu);
/* Folds keys [j0, j0+n) (k, v point at key j0, [n, hkv, d]) into fp64 records acc [nrows][h][2d+2]
 * (same layout as the engine's) of the query rows rows[0..nrows) (global indices; q [nrows, h, d]).
 * diag = Nk - Nq. */
void taylor_ref_fold(const float *q, const int64_t *rows, int64_t nrows, int h, int hkv, int d,
                     const float *k, const float *v, int64_t j0, int64_t n, const double *mu,
                     double scale, int causal, int64_t diag, double *acc);
/* The policy above in double: o[d], *lse; returns TAYLOR_ROW_*. *ratio = den / cnt (for callers
 * that skip rows too close to the floor to compare fp32 with fp64). */
int taylor_ref_finalize(const double *acc, int d, double *o, double *lse, double *ratio);
/* Whole rows [row0, row0+nrows) of one batch element: q [nrows, h, d] holds those rows, k, v all
 * Nk keys. o [nrows, h, d], lse and ratio [nrows, h] (may be NULL), kind [nrows, h] (may be NULL). */
void taylor_reference_f64(const float *q, const float *k, const float *v, int64_t nq, int64_t nk,
                          int h, int hkv, int d, double scale, int causal, int64_t row0,
                          int64_t nrows, double *o, double *lse, double *ratio, int *kind);
