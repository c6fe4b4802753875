/* attn.h — the attention engines' common contract.
 *
 * Shapes (letters used everywhere in fa_long):
 *   B batch, Nq query rows, Nk keys, H query heads, Hkv key/value heads (H % Hkv == 0,
 *   query head h reads kv head h / (H / Hkv)), D head dim.
 *   q: [B, Nq, H, D]   k, v: [B, Nk, Hkv, D]   o: [B, Nq, H, D]   lse: [B, H, Nq]
 *
 * Masks (kernels/mask.h): full, bottom-right causal (query i sees key j iff j <= i + Nk - Nq),
 * windows, packed documents, and the score modifiers softcap and ALiBi.
 * A query row that sees no key has o = 0 and lse = -inf.
 *
 * A *partial* result over a subset of the keys is, per (query row, head), the record
 *   { m, l, o[0..D) }      (attn_rec_len(D) = D + 2 floats, fp32)
 * with m = max_j s_j over the keys seen (s_j = scale * q.k_j), l = sum_j exp(s_j - m) and
 * o = sum_j exp(s_j - m) v_j (unnormalized). No key seen: m = -inf, l = 0, o = 0.
 * Records are laid out [row][head] for a chunk of query rows. Two partials over disjoint key sets
 * merge exactly (attn_rec_merge); the final output is o / l and lse = m + log(l).
 */
#pragma once
#include <stdint.h>
#include <math.h>
#include "kernels/mask.h"

static inline int64_t attn_rec_len(int d) { return (int64_t)d + 2; }

/* Element types of the rows an engine is handed (io/h5io.h's fa_dtype values: 0 float32, 1
 * float16, 2 bfloat16). The CPU engines take float32 only; the CUDA engine also takes the file's
 * 16-bit type as it is, converting on the device (the run plan's in_type). */
enum { ATTN_F32 = 0, ATTN_F16 = 1, ATTN_BF16 = 2 };

/* Which of the rank's keys one compute call folds into a chunk's state (streamed keys: the
 * pipeline hands the keys over in blocks as they are read, and the first chunk of a batch element
 * computes on the blocks already there). ATTN_KEYS_ALL: every key, in one call (the keys are all
 * there); FIRST: a fresh state over the keys ready so far; MORE: the keys made ready since the
 * last call of the chunk; LAST: the rest (every key is ready), completing the chunk. */
enum { ATTN_KEYS_ALL = 0, ATTN_KEYS_FIRST = 1, ATTN_KEYS_MORE = 2, ATTN_KEYS_LAST = 3 };

/* A chunk of query rows of one batch element. */
typedef struct {
    const void *q;      /* [nq, H, D], row stride H*D, elements of q_type */
    int64_t nq;         /* rows in this chunk */
    int64_t q_pos0;     /* global index (0..Nq-1) of the chunk's first row */
    int h, hkv, d;
    float scale;        /* softmax scale applied to q.k */
    int causal;         /* plain bottom-right causal (what the GPU and Taylor engines take) */
    int64_t diag;       /* Nk - Nq (causal only) */
    const attn_mask *mask;   /* the mask; NULL: the plain one that causal/diag describe. When set
                              * it is the truth (causal and diag then agree with it) */
    int64_t b;          /* batch element of the chunk (documents may differ between them) */
    int q_type;         /* ATTN_F32 (0) unless the engine takes 16-bit rows */
    int keys;           /* ATTN_KEYS_*: 0, every key in this one call */
} attn_queries;

/* The mask of a chunk: q->mask, or the plain one of causal/diag built in *local. */
static inline const attn_mask *attn_queries_mask(const attn_queries *q, attn_mask *local) {
    if (q->mask) return q->mask;
    const int64_t nk = (int64_t)1 << 60;            /* no key beyond: only the diagonal matters */
    *local = mask_plain(nk - (q->causal ? q->diag : 0), nk, q->causal);
    return local;
}

/* A contiguous run of keys held in memory (one rank's shard is a list of these). */
typedef struct {
    const void *k, *v;  /* [n, Hkv, D], row stride Hkv*D, elements of k_type, v_type */
    int64_t n;
    int64_t pos0;       /* global index (0..Nk-1) of the first key */
    int k_type, v_type; /* ATTN_F32 (0) unless the engine takes 16-bit rows */
} attn_kv_segment;

/* Tile sizes of the CPU engine (kernels/cpu/attn_cpu.c picks defaults when 0). */
typedef struct {
    int br;             /* query rows per tile */
    int bc;             /* keys per tile */
    int threads;        /* OpenMP threads; 0 = all available */
    int blas;           /* tile products through OpenBLAS (builds with it), else the built-in ones */
} cpu_tiling;

/* Start a partial state: every record m=-inf, l=0, o=0. rec: [nq*H] records of D+2 floats. */
void attn_state_init(float *rec, int64_t nq, int h, int d);

/* Fold the keys of segs[0..nsegs) into the running state rec ([nq][H] records), exactly as if
 * they had been seen together with the keys already folded in. Tiles that the mask hides
 * entirely are skipped; the mask is applied only on tiles that some row sees in part.
 * Thread-parallel (OpenMP) inside. `progress`, when not NULL, is called now and then from the
 * calling thread (the runner uses it to drive MPI progress of earlier chunks' merges). */
void cpu_attn_partial(const attn_queries *q, const attn_kv_segment *segs, int nsegs,
                      float *rec, const cpu_tiling *tiling, void (*progress)(void *), void *arg);

/* Merge record b into record a (both D+2 floats). Never makes NaN from m = -inf. */
static inline void attn_rec_merge(float *a, const float *b, int d) {
    float ma = a[0], mb = b[0];
    if (mb == -INFINITY) return;                     /* b saw no key */
    if (ma == -INFINITY) {                           /* a saw no key */
        for (int i = 0; i < d + 2; i++) a[i] = b[i];
        return;
    }
    float m = ma > mb ? ma : mb;
    float sa = expf(ma - m), sb = expf(mb - m);
    a[0] = m;
    a[1] = a[1] * sa + b[1] * sb;
    for (int i = 0; i < d; i++) a[2 + i] = a[2 + i] * sa + b[2 + i] * sb;
}

/* Final output of one record: o = o/l (0 if l == 0), returns lse = m + log(l) (-inf if l == 0). */
static inline float attn_rec_finalize(const float *r, int d, float *o) {
    float l = r[1];
    if (!(l > 0.0f)) {
        for (int i = 0; i < d; i++) o[i] = 0.0f;
        return -INFINITY;
    }
    float inv = 1.0f / l;
    for (int i = 0; i < d; i++) o[i] = r[2 + i] * inv;
    return r[0] + logf(l);
}

/* ---- fp64 reference (kernels/cpu/ref.c): the slow, obviously right twin ---------------------
 * Exact attention for query rows [row0, row0+nrows) of one batch element, all heads, in double.
 * q: [nrows, H, D] holds just those rows; k, v: [Nk, Hkv, D] of that batch element; nq is the
 * whole Nq (for the causal diagonal).
 * o: [nrows, H, D] normalized output (double); lse: [nrows, H] (double, -inf when no key seen). */
void attn_reference_f64(const float *q, const float *k, const float *v,
                        int64_t nq, int64_t nk, int h, int hkv, int d,
                        double scale, int causal, int64_t row0, int64_t nrows,
                        double *o, double *lse);
/* The same under mask m (m->nq, m->nk are the job's), batch element b. */
void attn_reference_f64_mask(const float *q, const float *k, const float *v, int h, int hkv,
                             int d, double scale, const attn_mask *m, int64_t b, int64_t row0,
                             int64_t nrows, double *o, double *lse);
/* The same sums, blocked, for many rows (`fa_long check`): folds keys [j0, j0+n) of a batch
 * element (k, v: [n, Hkv, D]) into the fp64 softmax states of ns query rows (q: [ns, H, D]),
 * each row under its mask run runs[si] (mask_row; the keys it sees, absolute): acc [ns, H, D]
 * (unnormalized o), mx and l [ns, H] (running max, -inf to start, and sum of exp), and kappa
 * [ns, H] (the largest |score| met; NULL: not kept). o = acc / l, lse = mx + log l once every
 * key block is folded. Threads over (row, head) pairs; results do not depend on their count. */
void attn_reference_f64_fold(const float *q, int64_t ns, const mask_run *runs, int h, int hkv,
                             int d, double scale, const attn_mask *m, const float *k,
                             const float *v, int64_t j0, int64_t n, double *acc, double *mx,
                             double *l, double *kappa);
