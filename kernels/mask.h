/* mask.h — the attention mask, one object for every part of fa_long that needs to know which
 * (query, key) pairs are visible and what is added to their scores: the engines' tile skipping
 * and masking, `fa_long check`'s fp64 recomputation, the shard work counts, the cost model and
 * the progress/flop counts. Nothing else derives causal, window or document logic.
 *
 * Visibility (flash-attn's conventions). Without documents the whole [Nq] x [Nk] block is one
 * document. Query row i of document d (rows [q0, q1), keys [k0, k1) of the batch element) sits at
 * the bottom-right aligned key position
 *   p(i) = i + k1 - q1                    (= i + Nk - Nq without documents)
 * and sees the keys j of its own document with
 *   p(i) - left <= j <= p(i) + right      (left or right -1: unbounded on that side).
 * --causal is right = 0. A row that sees no key gets o = 0, lse = -inf. So every row sees one
 * contiguous run of keys [lo(i), hi(i)), and lo and hi never decrease with i.
 *
 * Score modifiers, applied in this order to s = scale * q.k of a visible pair:
 *   softcap C > 0:  s = C tanh(s / C)                      (Gemma 2)
 *   alibi:          s = s - slope[h] * |p(i) - j|          (BLOOM, MPT; positions inside the
 *                                                           document; flash-attn's sign)
 *
 * The struct holds pointers to the job's document offsets and slopes; it is filled by the
 * planner (runner/plan.c) and read by everyone else. The inline functions compile for the host
 * and, in .cu files, for the device too. */
#pragma once
#include <stdint.h>
#include <math.h>

#ifdef __CUDACC__
#define MASK_FN static __host__ __device__ __forceinline__
#else
#define MASK_FN static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t nq, nk;            /* the job's whole Nq and Nk */
    int64_t left, right;       /* window; -1 unbounded (both -1: full attention; right 0: causal) */
    int64_t ndocs;             /* packed documents per batch element; 0: none */
    int64_t doc_rows;          /* rows of the offset tables: 1 (shared by every batch element) or B */
    const int64_t *cu_q;       /* [doc_rows][ndocs+1]: document d's rows are [cu_q[d], cu_q[d+1]) */
    const int64_t *cu_k;       /* [doc_rows][ndocs+1]: its keys */
    double softcap;            /* > 0: cap scores at +-softcap by tanh; 0: none */
    const float *alibi;        /* [H] slopes, or NULL */
    int alibi_standard;        /* the slopes are the standard ones (for the attributes) */
} attn_mask;

/* Visible run of keys of a row: keys [lo, hi), and p(i) (the row's key-aligned position). */
typedef struct {
    int64_t lo, hi, pos;
} mask_run;

/* The plain masks: full (causal 0) or bottom-right causal (1), no documents, no modifiers. */
MASK_FN attn_mask mask_plain(int64_t nq, int64_t nk, int causal) {
    attn_mask m;
    m.nq = nq; m.nk = nk; m.left = -1; m.right = causal ? 0 : -1;
    m.ndocs = 0; m.doc_rows = 1; m.cu_q = 0; m.cu_k = 0;
    m.softcap = 0; m.alibi = 0; m.alibi_standard = 0;
    return m;
}

MASK_FN int mask_is_causal(const attn_mask *m) { return m->right == 0; }
/* Scores are changed (softcap or alibi): the engines take their slower per-score path. */
MASK_FN int mask_has_modifiers(const attn_mask *m) { return m->softcap > 0 || m->alibi != 0; }
/* Nothing but full or bottom-right causal attention: what the GPU kernels take today. */
MASK_FN int mask_is_plain(const attn_mask *m) {
    return m->left < 0 && (m->right < 0 || m->right == 0) && m->ndocs == 0 && !mask_has_modifiers(m);
}

MASK_FN int64_t mask_clamp(int64_t x, int64_t a, int64_t b) { return x < a ? a : x > b ? b : x; }

/* Document of row i of batch element b: rows [*q0, *q1), keys [*k0, *k1). */
MASK_FN void mask_doc(const attn_mask *m, int64_t b, int64_t i, int64_t *q0, int64_t *q1,
                      int64_t *k0, int64_t *k1) {
    if (m->ndocs == 0) {
        *q0 = 0; *q1 = m->nq; *k0 = 0; *k1 = m->nk;
        return;
    }
    const int64_t off = (m->doc_rows > 1 ? b : 0) * (m->ndocs + 1);
    const int64_t *cq = m->cu_q + off, *ck = m->cu_k + off;
    int64_t lo = 0, hi = m->ndocs;         /* the last d with cq[d] <= i: cq[d+1] > i then */
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (cq[mid] <= i) lo = mid; else hi = mid;
    }
    *q0 = cq[lo]; *q1 = cq[lo + 1]; *k0 = ck[lo]; *k1 = ck[lo + 1];
}

/* The keys row i (global, 0..Nq-1) of batch element b sees. */
MASK_FN mask_run mask_row(const attn_mask *m, int64_t b, int64_t i) {
    int64_t q0, q1, k0, k1;
    mask_doc(m, b, i, &q0, &q1, &k0, &k1);
    mask_run r;
    r.pos = i + k1 - q1;
    r.lo = m->left < 0 ? k0 : mask_clamp(r.pos - m->left, k0, k1);
    r.hi = m->right < 0 ? k1 : mask_clamp(r.pos + m->right + 1, k0, k1);
    if (r.hi < r.lo) r.hi = r.lo;
    return r;
}

/* The modified score of a visible pair: s = scale*q.k of row run r, query head h, key j. */
MASK_FN float mask_score(const attn_mask *m, float s, int h, const mask_run *r, int64_t j) {
    if (m->softcap > 0) s = (float)m->softcap * tanhf(s / (float)m->softcap);
    if (m->alibi) s -= m->alibi[h] * (float)(r->pos > j ? r->pos - j : j - r->pos);
    return s;
}
MASK_FN double mask_score_f64(const attn_mask *m, double s, int h, const mask_run *r, int64_t j) {
    if (m->softcap > 0) s = m->softcap * tanh(s / m->softcap);
    if (m->alibi) s -= (double)m->alibi[h] * (double)(r->pos > j ? r->pos - j : j - r->pos);
    return s;
}

/* ---- host only (kernels/mask.c) ----------------------------------------------------------- */

/* Visible pairs between rows [q0, q1) and keys [k0, k1) of batch element b, exact, in
 * O(documents crossed) (closed form per document). */
int64_t mask_pairs(const attn_mask *m, int64_t b, int64_t q0, int64_t q1, int64_t k0, int64_t k1);
/* The same summed over the batch elements [0, nb). */
int64_t mask_pairs_batch(const attn_mask *m, int64_t nb, int64_t q0, int64_t q1, int64_t k0,
                         int64_t k1);

/* The standard ALiBi slopes of H heads (Press et al.; the BLOOM/MPT recipe): 2^(-8(h+1)/H) for H a
 * power of two, else those of the power of two n below H followed by every other slope of 2n. */
void mask_alibi_standard(int h, float *slopes);

/* One line describing the mask ("full", "causal", "window 128,0, 3 documents, softcap 30, alibi"). */
const char *mask_describe(const attn_mask *m, char *buf, int len);

#ifdef __cplusplus
}
#endif
