/* attn_cpu.c — the CPU engine: exact attention partials by tiled online softmax (fp32 in, fp32
 * accumulation), OpenMP across work items, SIMD inside a tile.
 *
 * A work item is (kv head, tile of br query rows). The G = H/Hkv query heads that read the same kv
 * head are stacked into the tile, so its M = br*G stacked rows share every K/V tile loaded:
 *   stacked row s = r*G + gi  <->  query row r0 + r, query head kvh*G + gi.
 * Per key tile of bc keys:  S = Qs K^T (matrix stream), online-softmax update of (m, l) and the
 * rescale of O (softmax stream), O += P V (matrix stream). Qs holds the queries pre-multiplied by
 * the softmax scale, so S is already the score s_j of the contract (natural-log units).
 * Tile products go through OpenBLAS (single-threaded inside our threads) when FA_HAVE_CBLAS is
 * defined, else through the built-in products below (AVX-512 intrinsics or portable C).
 *
 * Sections: vector exp | tile products | softmax stream | one work item | driver. */
#include "kernels/attn.h"
#include "runner/common.h"
#include <omp.h>
#include <string.h>
#ifdef FA_HAVE_CBLAS
#include <cblas.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* ---- vector exp ------------------------------------------------------------------------------
 * exp(x) = 2^n * p(f), n = round(x/ln2), f = x - n ln2 (two-part ln2 keeps f exact enough),
 * p a degree-6 Taylor-like polynomial: relative error ~2e-7 on [-ln2/2, ln2/2].
 * x < -87.3 (including the -inf of masked scores) gives exactly 0, so masked keys add nothing. */
#define EXP_LO  (-87.3f)
#define LOG2E   1.44269504088896341f
#define LN2_HI  0.693359375f
#define LN2_LO  (-2.12194440e-4f)

static inline float exp_poly(float f) {
    float p = 1.0f / 720;
    p = p * f + 1.0f / 120;
    p = p * f + 1.0f / 24;
    p = p * f + 1.0f / 6;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    return p * f + 1.0f;
}

static inline float exp_scalar(float x) {
    if (!(x >= EXP_LO)) return 0.0f;
    if (x > 88.0f) x = 88.0f;             /* never reached by softmax (x <= 0); keeps bits sane */
    float n = __builtin_roundf(x * LOG2E);
    float f = x - n * LN2_HI;
    f = f - n * LN2_LO;
    float p = exp_poly(f);
    union { float f; int32_t i; } u = { p };
    u.i += (int32_t)((uint32_t)(int32_t)n << 23);   /* p * 2^n; n >= -126 here: no denormal wrap */
    return u.f;
}

#if defined(__AVX512F__)
static inline __m512 exp512(__m512 x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(EXP_LO));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    f = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), f);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}
#endif

/* ---- tile products ---------------------------------------------------------------------------
 * qk:  S[M, nc] (row stride lds) = Qs[M, D] . K[nc, D]^T, K rows lk floats apart.
 * pv:  O[M, D] += P[M, nc] . V[nc, D], V rows lk floats apart.
 * kt is scratch of D*bc floats for the built-in qk (K tile transposed so keys run along SIMD). */
#ifdef FA_HAVE_CBLAS
static void tile_qk(const float *qs, int m, int d, const float *k, int64_t lk, int nc,
                    float *kt, float *s, int lds) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nc, d, 1.0f, qs, d, k, (int)lk,
                0.0f, s, lds);
}
static void tile_pv(const float *p, int lds, int m, int d, const float *v, int64_t lk, int nc,
                    float *o) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, d, nc, 1.0f, p, lds, v, (int)lk,
                1.0f, o, d);
}
#else
static void tile_qk(const float *qs, int m, int d, const float *k, int64_t lk, int nc,
                    float *kt, float *s, int lds) {
    for (int j = 0; j < nc; j++)
        for (int c = 0; c < d; c++) kt[(int64_t)c * lds + j] = k[j * lk + c];
    for (int i = 0; i < m; i++) {
        float *srow = s + (int64_t)i * lds;
        for (int j = 0; j < nc; j++) srow[j] = 0.0f;
        for (int c = 0; c < d; c++) {
            float qv = qs[(int64_t)i * d + c];
            const float *kr = kt + (int64_t)c * lds;
            for (int j = 0; j < nc; j++) srow[j] += qv * kr[j];
        }
    }
}
static void tile_pv(const float *p, int lds, int m, int d, const float *v, int64_t lk, int nc,
                    float *o) {
    for (int i = 0; i < m; i++) {
        float *orow = o + (int64_t)i * d;
        const float *prow = p + (int64_t)i * lds;
        for (int j = 0; j < nc; j++) {
            float pj = prow[j];
            const float *vr = v + j * lk;
            for (int c = 0; c < d; c++) orow[c] += pj * vr[c];
        }
    }
}
#endif

/* ---- softmax stream --------------------------------------------------------------------------- */

/* Hide the keys of a tile crossing the diagonal: stacked row i may see local column j only if
 * j <= lim(i) = (its global query row) + diag - (global position of column 0). */
static void mask_tile(float *s, int lds, int m, int g, int nc, int64_t row_pos0, int64_t diag,
                      int64_t key_pos0) {
    for (int i = 0; i < m; i++) {
        int64_t lim = row_pos0 + i / g + diag - key_pos0;
        int64_t from = lim + 1 < 0 ? 0 : lim + 1;
        float *srow = s + (int64_t)i * lds;
        for (int64_t j = from; j < nc; j++) srow[j] = -INFINITY;
    }
}

static float row_max(const float *x, int n) {
    float mx = -INFINITY;
    int j = 0;
#if defined(__AVX512F__)
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (; j + 16 <= n; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + j));
    mx = _mm512_reduce_max_ps(vm);
#endif
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* x[j] = exp(x[j] - sub) in place; returns the sum. */
static float row_exp_sum(float *x, int n, float sub) {
    float sum = 0.0f;
    int j = 0;
#if defined(__AVX512F__)
    __m512 vs = _mm512_setzero_ps(), vsub = _mm512_set1_ps(sub);
    for (; j + 16 <= n; j += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vsub));
        _mm512_storeu_ps(x + j, e);
        vs = _mm512_add_ps(vs, e);
    }
    if (j < n) {
        __mmask16 k = (__mmask16)((1u << (n - j)) - 1);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vsub));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(x + j, k, e);
        vs = _mm512_add_ps(vs, e);
        j = n;
    }
    sum = _mm512_reduce_add_ps(vs);
#endif
    for (; j < n; j++) {
        x[j] = exp_scalar(x[j] - sub);
        sum += x[j];
    }
    return sum;
}

/* Online-softmax update of a tile's rows: turns scores S into probabilities P = exp(S - m_new),
 * folds the tile into (m, l) and rescales O by exp(m_old - m_new). A row whose max stays -inf has
 * seen no key yet: its P row is zeroed and m, l, O are left as they are (no -inf - -inf = NaN). */
static void softmax_update(float *s, int lds, int m, int nc, int d, float *mrow, float *lrow,
                           float *o) {
    for (int i = 0; i < m; i++) {
        float *srow = s + (int64_t)i * lds;
        float mx = row_max(srow, nc);
        float mnew = mx > mrow[i] ? mx : mrow[i];
        if (mnew == -INFINITY) {
            memset(srow, 0, sizeof(float) * (size_t)nc);
            continue;
        }
        float alpha = exp_scalar(mrow[i] - mnew);    /* 0 when m_old = -inf */
        float sum = row_exp_sum(srow, nc, mnew);
        lrow[i] = lrow[i] * alpha + sum;
        mrow[i] = mnew;
        if (alpha != 1.0f) {
            float *orow = o + (int64_t)i * d;
            for (int c = 0; c < d; c++) orow[c] *= alpha;
        }
    }
}

/* ---- one work item ------------------------------------------------------------------------- */

typedef struct {               /* what every work item of a call shares */
    const attn_queries *q;
    const attn_kv_segment *segs;
    int nsegs;
    float *rec;                /* [nq][H] records */
    int g, br, bc;
    int64_t lk;                /* floats between consecutive keys: Hkv*D */
    void (*progress)(void *);
    void *progress_arg;
} engine_call;

typedef struct {               /* one thread's scratch, sized for the largest tile */
    float *qs;                 /* [M, D] stacked queries times scale */
    float *s;                  /* [M, bc] scores, then probabilities */
    float *o;                  /* [M, D] unnormalized output */
    float *m, *l;              /* [M] running max and sum */
    float *kt;                 /* [D, bc] transposed key tile (built-in products) */
    double last_progress;      /* master thread only */
} scratch;

static void scratch_alloc(scratch *w, int m, int d, int bc) {
    w->qs = fa_aligned_alloc(sizeof(float) * (size_t)m * d, "cpu engine queries");
    w->s = fa_aligned_alloc(sizeof(float) * (size_t)m * bc, "cpu engine scores");
    w->o = fa_aligned_alloc(sizeof(float) * (size_t)m * d, "cpu engine output");
    w->m = fa_aligned_alloc(sizeof(float) * (size_t)m, "cpu engine max");
    w->l = fa_aligned_alloc(sizeof(float) * (size_t)m, "cpu engine sum");
    w->kt = fa_aligned_alloc(sizeof(float) * (size_t)d * bc, "cpu engine key tile");
    w->last_progress = omp_get_wtime();
}

static void scratch_free(scratch *w) {
    free(w->qs); free(w->s); free(w->o); free(w->m); free(w->l); free(w->kt);
}

/* The runner drives MPI from the calling thread, which is thread 0 of our parallel region:
 * call it about every millisecond of work, never from the other threads. */
static void maybe_progress(const engine_call *c, scratch *w) {
    if (!c->progress || omp_get_thread_num() != 0) return;
    double now = omp_get_wtime();
    if (now - w->last_progress < 1e-3) return;
    c->progress(c->progress_arg);
    w->last_progress = now;
}

/* Gather the item's stacked queries (times scale) and running records into the scratch. */
static void tile_load(const engine_call *c, scratch *w, int kvh, int64_t r0, int nr) {
    const attn_queries *q = c->q;
    int d = q->d, h = q->h;
    int64_t len = attn_rec_len(d);
    for (int r = 0; r < nr; r++)
        for (int gi = 0; gi < c->g; gi++) {
            int64_t s = (int64_t)r * c->g + gi, head = (int64_t)kvh * c->g + gi;
            const float *src = q->q + ((r0 + r) * h + head) * d;
            const float *rec = c->rec + ((r0 + r) * h + head) * len;
            for (int i = 0; i < d; i++) w->qs[s * d + i] = src[i] * q->scale;
            w->m[s] = rec[0];
            w->l[s] = rec[1];
            memcpy(w->o + s * d, rec + 2, sizeof(float) * (size_t)d);
        }
}

static void tile_store(const engine_call *c, const scratch *w, int kvh, int64_t r0, int nr) {
    int d = c->q->d, h = c->q->h;
    int64_t len = attn_rec_len(d);
    for (int r = 0; r < nr; r++)
        for (int gi = 0; gi < c->g; gi++) {
            int64_t s = (int64_t)r * c->g + gi, head = (int64_t)kvh * c->g + gi;
            float *rec = c->rec + ((r0 + r) * h + head) * len;
            rec[0] = w->m[s];
            rec[1] = w->l[s];
            memcpy(rec + 2, w->o + s * d, sizeof(float) * (size_t)d);
        }
}

/* Fold the keys of one segment into the loaded tile. Keys rise within a segment, so under the
 * causal mask the loop stops at the tile's last visible key, and the columns past it are cut. */
static void tile_segment(const engine_call *c, scratch *w, int kvh, int64_t r0, int nr,
                         const attn_kv_segment *seg) {
    const attn_queries *q = c->q;
    int d = q->d, m = nr * c->g;
    int64_t row_pos0 = q->q_pos0 + r0;                 /* global index of the tile's first row */
    int64_t last_key = q->causal ? row_pos0 + nr - 1 + q->diag : INT64_MAX;
    for (int64_t j0 = 0; j0 < seg->n; j0 += c->bc) {
        int64_t key_pos0 = seg->pos0 + j0;
        if (key_pos0 > last_key) break;                /* this and later tiles fully hidden */
        int64_t nc64 = seg->n - j0 < c->bc ? seg->n - j0 : c->bc;
        if (q->causal && nc64 > last_key - key_pos0 + 1) nc64 = last_key - key_pos0 + 1;
        int nc = (int)nc64;
        const float *k = seg->k + j0 * c->lk + (int64_t)kvh * d;
        const float *v = seg->v + j0 * c->lk + (int64_t)kvh * d;
        tile_qk(w->qs, m, d, k, c->lk, nc, w->kt, w->s, c->bc);
        int crosses = q->causal && key_pos0 + nc - 1 > row_pos0 + q->diag;
        if (crosses) mask_tile(w->s, c->bc, m, c->g, nc, row_pos0, q->diag, key_pos0);
        softmax_update(w->s, c->bc, m, nc, d, w->m, w->l, w->o);
        tile_pv(w->s, c->bc, m, d, v, c->lk, nc, w->o);
        maybe_progress(c, w);
    }
}

static void run_item(const engine_call *c, scratch *w, int kvh, int64_t r0, int nr) {
    tile_load(c, w, kvh, r0, nr);
    for (int i = 0; i < c->nsegs; i++) tile_segment(c, w, kvh, r0, nr, &c->segs[i]);
    tile_store(c, w, kvh, r0, nr);
    maybe_progress(c, w);
}

/* ---- driver --------------------------------------------------------------------------------- */

void attn_state_init(float *rec, int64_t nq, int h, int d) {
    int64_t len = attn_rec_len(d), n = nq * h;
    for (int64_t i = 0; i < n; i++) {
        float *r = rec + i * len;
        r[0] = -INFINITY;
        r[1] = 0.0f;
        memset(r + 2, 0, sizeof(float) * (size_t)d);
    }
}

/* Defaults: about 64 stacked rows per tile (br*G) keeps Qs, S and O of a tile in L1/L2 and
 * gives the products enough rows; bc keys per tile so that one K tile is ~32 KiB. */
static void pick_tiling(const attn_queries *q, const cpu_tiling *t, int g, int *br, int *bc,
                        int *threads) {
    *br = t && t->br > 0 ? t->br : (64 / g > 4 ? 64 / g : 4);
    *bc = t && t->bc > 0 ? t->bc : (q->d <= 64 ? 128 : 64);
    *threads = t && t->threads > 0 ? t->threads : omp_get_max_threads();
    if (*br > q->nq && q->nq > 0) *br = (int)q->nq;
}

void cpu_attn_partial(const attn_queries *q, const attn_kv_segment *segs, int nsegs,
                      float *rec, const cpu_tiling *tiling, void (*progress)(void *), void *arg) {
    if (q->nq <= 0 || nsegs <= 0) return;
    int g = q->h / q->hkv, br, bc, threads;
    pick_tiling(q, tiling, g, &br, &bc, &threads);
    engine_call c = { q, segs, nsegs, rec, g, br, bc, (int64_t)q->hkv * q->d, progress, arg };
    int64_t ntiles = (q->nq + br - 1) / br, nitems = ntiles * q->hkv;
#ifdef FA_HAVE_CBLAS
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);       /* our threads each run whole tiles; no nested pools */
#endif
    #pragma omp parallel num_threads(threads)
    {
        scratch w;
        scratch_alloc(&w, br * g, q->d, bc);
        /* Later query tiles see more keys under the causal mask: hand them out first. */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < nitems; it++) {
            int64_t tile = ntiles - 1 - it / q->hkv;
            int kvh = (int)(it % q->hkv);
            int64_t r0 = tile * br;
            int nr = (int)(q->nq - r0 < br ? q->nq - r0 : br);
            run_item(&c, &w, kvh, r0, nr);
        }
        scratch_free(&w);
    }
#ifdef FA_HAVE_CBLAS
    openblas_set_num_threads(blas_threads);
#endif
    if (progress) progress(arg);
}
