/* attn_cpu.c — the CPU engine: exact attention partials by tiled online softmax (fp32 in, fp32
 * accumulation), OpenMP across work items, SIMD inside a tile.
 *
 * A work item is (kv head, tile of br query rows). The G = H/Hkv query heads that read the same kv
 * head are stacked into the tile, so its M = br*G stacked rows share every K/V tile loaded:
 *   stacked row s = r*G + gi  <->  query row r0 + r, query head kvh*G + gi.
 * Everything in a tile is held *transposed*, query rows along the SIMD lanes (Mp = M rounded up
 * to 16 lanes):  Qt [D][Mp] (queries times scale), St [bc][Mp] (scores, then probabilities),
 * Ot [D][Mp] (unnormalized output), m, l [Mp]. Then
 *   St = K Qt          one FMA per key element broadcast against 16 query rows,
 *   softmax per lane   max / exp / sum run down the key axis, lanes independent: no shuffles,
 *   Ot = Ot*alpha + V^T Pt   again a broadcast of V against 16 query rows.
 * K and V are read in place (rows Hkv*D floats apart): nothing is packed per key tile; Qt and Ot
 * are transposed once per work item, over all its key tiles.
 * The matrix stream runs through the built-in products (AVX-512 register blocks, AVX2+FMA
 * register blocks, portable C otherwise) or, in a build with FA_HAVE_CBLAS and with
 * FA_CPU_PRODUCTS=blas set, OpenBLAS sgemm called single-threaded from our threads (slower or
 * equal here, kept to compare: see bench/NOTES_CPU.md).
 *
 * Sections: vector exp | tile products | softmax stream | one work item | driver. */
#include "kernels/attn.h"
#include "base/common.h"
#include <omp.h>
#include <sched.h>
#include <string.h>
#ifdef FA_HAVE_CBLAS
#include <cblas.h>
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define FA_AVX2 1                         /* 8-lane kernels for machines without AVX-512 */
#endif

#define LANES 16                          /* query rows per SIMD vector (fp32 x 512 bits) */

static int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

/* ---- vector exp ------------------------------------------------------------------------------
 * exp(x) = 2^n * p(f), n = round(x/ln2), f = x - n ln2 (two-part ln2 keeps f exact enough),
 * p the degree-6 Taylor polynomial: relative error 2.2e-7 over [-87, 0] (measured).
 * The -inf of masked scores gives exactly 0, so masked keys add nothing; so do x < -87.3 (scalar)
 * and x < -103 (AVX-512, which also returns fp32 denormals down to there). */
#define EXP_LO  (-87.3f)
#define LOG2E   1.44269504088896341f
#define LN2_HI  0.693359375f
#define LN2_LO  (-2.12194440e-4f)

static inline float exp_scalar(float x) {
    if (!(x >= EXP_LO)) return 0.0f;
    if (x > 88.0f) x = 88.0f;             /* never reached by softmax (x <= 0); keeps bits sane */
    float n = __builtin_roundf(x * LOG2E);
    float f = x - n * LN2_HI;
    f = f - n * LN2_LO;
    float p = 1.0f / 720;
    p = p * f + 1.0f / 120;
    p = p * f + 1.0f / 24;
    p = p * f + 1.0f / 6;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    union { float f; int32_t i; } u = { p };
    u.i += (int32_t)((uint32_t)(int32_t)n << 23);   /* p * 2^n; n >= -126 here: no denormal wrap */
    return u.f;
}

#if defined(__AVX512F__)
/* Clamped at -110 instead of tested against EXP_LO: scalef by 2^-159 rounds to exactly 0, so
 * -inf (masked) still gives 0 and two instructions per vector are saved. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-110.0f));
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
    return _mm512_scalef_ps(p, n);
}
#endif

#if defined(FA_AVX2)
static inline __m256 exp256(__m256 x) {
    __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_GE_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));     /* n >= -126: 2^n is a normal float */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    f = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), f);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    __m256 r = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    return _mm256_and_ps(r, live);                      /* -inf and x < EXP_LO: exactly 0 */
}
#endif

/* ---- tile products ---------------------------------------------------------------------------
 * qk:  St[nc][Mp] = K[nc][D] . Qt[D][Mp]            (K rows lk floats apart)
 * pv:  Ot[D][Mp]  = Ot .* alpha (per lane) + V[nc][D]^T . Pt[nc][Mp]   (V rows lk floats apart)
 * Mp is a multiple of 16. */
typedef struct {
    const float *qt;   /* [D][Mp] */
    float *st;         /* [bc][Mp] */
    float *ot;         /* [D][Mp] */
    const float *alpha;/* [Mp] rescale of Ot for this tile */
    int mp, d;
} tile_bufs;

#if defined(__AVX512F__)
/* Register block: KR keys x NV vectors of 16 query rows; KR*NV accumulators stay in zmm
 * registers across the whole D loop. always_inline + constant KR, NV: the compiler unrolls. */
#define QK_KR 6
#define MAX_NV 4
static inline __attribute__((always_inline))
void qk_block(const tile_bufs *t, const float *k, int64_t lk, int j, int kr, int lane0, int nv) {
    __m512 acc[QK_KR][MAX_NV];
    for (int a = 0; a < kr; a++)
        for (int v = 0; v < nv; v++) acc[a][v] = _mm512_setzero_ps();
    const float *krow = k + j * lk;
    for (int c = 0; c < t->d; c++) {
        __m512 qv[MAX_NV];
        for (int v = 0; v < nv; v++) qv[v] = _mm512_load_ps(t->qt + (int64_t)c * t->mp + lane0 + v * LANES);
        for (int a = 0; a < kr; a++) {
            __m512 b = _mm512_set1_ps(krow[a * lk + c]);
            for (int v = 0; v < nv; v++) acc[a][v] = _mm512_fmadd_ps(b, qv[v], acc[a][v]);
        }
    }
    for (int a = 0; a < kr; a++)
        for (int v = 0; v < nv; v++)
            _mm512_store_ps(t->st + (int64_t)(j + a) * t->mp + lane0 + v * LANES, acc[a][v]);
}

#define QK_CASE(KR, NV) case (KR) * 8 + (NV): qk_block(t, k, lk, j, KR, lane0, NV); break
static void qk_dispatch(const tile_bufs *t, const float *k, int64_t lk, int j, int kr, int lane0,
                        int nv) {
    switch (kr * 8 + nv) {
        QK_CASE(6, 4); QK_CASE(6, 3); QK_CASE(6, 2); QK_CASE(6, 1);
        QK_CASE(5, 4); QK_CASE(5, 3); QK_CASE(5, 2); QK_CASE(5, 1);
        QK_CASE(4, 4); QK_CASE(4, 3); QK_CASE(4, 2); QK_CASE(4, 1);
        QK_CASE(3, 4); QK_CASE(3, 3); QK_CASE(3, 2); QK_CASE(3, 1);
        QK_CASE(2, 4); QK_CASE(2, 3); QK_CASE(2, 2); QK_CASE(2, 1);
        QK_CASE(1, 4); QK_CASE(1, 3); QK_CASE(1, 2); QK_CASE(1, 1);
    }
}

static void qk_builtin(const tile_bufs *t, const float *k, int64_t lk, int nc) {
    for (int lane0 = 0; lane0 < t->mp; lane0 += MAX_NV * LANES) {
        int nv = (t->mp - lane0) / LANES < MAX_NV ? (t->mp - lane0) / LANES : MAX_NV;
        for (int j = 0; j < nc; j += QK_KR)
            qk_dispatch(t, k, lk, j, nc - j < QK_KR ? nc - j : QK_KR, lane0, nv);
    }
}

/* Block: CR output dims x NV vectors of query rows, accumulated over all nc keys. */
#define PV_CR 6
static inline __attribute__((always_inline))
void pv_block(const tile_bufs *t, const float *v, int64_t lk, int nc, int c0, int cr, int lane0,
              int nv) {
    __m512 acc[PV_CR][MAX_NV];
    for (int a = 0; a < cr; a++)
        for (int x = 0; x < nv; x++) acc[a][x] = _mm512_setzero_ps();
    for (int j = 0; j < nc; j++) {
        __m512 pv[MAX_NV];
        for (int x = 0; x < nv; x++) pv[x] = _mm512_load_ps(t->st + (int64_t)j * t->mp + lane0 + x * LANES);
        const float *vrow = v + j * lk + c0;
        for (int a = 0; a < cr; a++) {
            __m512 b = _mm512_set1_ps(vrow[a]);
            for (int x = 0; x < nv; x++) acc[a][x] = _mm512_fmadd_ps(b, pv[x], acc[a][x]);
        }
    }
    /* The tile's sum joins the running Ot only here: fp32 error grows with the tile length plus
     * the number of tiles, not with all the keys seen (which can be millions). */
    for (int x = 0; x < nv; x++) {
        __m512 al = _mm512_load_ps(t->alpha + lane0 + x * LANES);
        for (int a = 0; a < cr; a++) {
            float *o = t->ot + (int64_t)(c0 + a) * t->mp + lane0 + x * LANES;
            _mm512_store_ps(o, _mm512_fmadd_ps(al, _mm512_load_ps(o), acc[a][x]));
        }
    }
}

#define PV_CASE(CR, NV) case (CR) * 8 + (NV): pv_block(t, v, lk, nc, c0, CR, lane0, NV); break
static void pv_dispatch(const tile_bufs *t, const float *v, int64_t lk, int nc, int c0, int cr,
                        int lane0, int nv) {
    switch (cr * 8 + nv) {
        PV_CASE(6, 4); PV_CASE(6, 3); PV_CASE(6, 2); PV_CASE(6, 1);
        PV_CASE(5, 4); PV_CASE(5, 3); PV_CASE(5, 2); PV_CASE(5, 1);
        PV_CASE(4, 4); PV_CASE(4, 3); PV_CASE(4, 2); PV_CASE(4, 1);
        PV_CASE(3, 4); PV_CASE(3, 3); PV_CASE(3, 2); PV_CASE(3, 1);
        PV_CASE(2, 4); PV_CASE(2, 3); PV_CASE(2, 2); PV_CASE(2, 1);
        PV_CASE(1, 4); PV_CASE(1, 3); PV_CASE(1, 2); PV_CASE(1, 1);
    }
}

static void pv_builtin(const tile_bufs *t, const float *v, int64_t lk, int nc) {
    for (int lane0 = 0; lane0 < t->mp; lane0 += MAX_NV * LANES) {
        int nv = (t->mp - lane0) / LANES < MAX_NV ? (t->mp - lane0) / LANES : MAX_NV;
        for (int c0 = 0; c0 < t->d; c0 += PV_CR)
            pv_dispatch(t, v, lk, nc, c0, t->d - c0 < PV_CR ? t->d - c0 : PV_CR, lane0, nv);
    }
}
#elif defined(FA_AVX2)
/* The same register blocks with 8-lane vectors: 16 ymm registers hold 6 x 2 accumulators, the
 * 2 loaded vectors and the broadcast. A lane group is 16 query rows = 2 vectors. */
#define KB2 6
static inline __attribute__((always_inline))
void qk_block2(const tile_bufs *t, const float *k, int64_t lk, int j, int kr, int lane0) {
    __m256 acc[KB2][2];
    for (int a = 0; a < kr; a++) acc[a][0] = acc[a][1] = _mm256_setzero_ps();
    const float *krow = k + j * lk;
    for (int c = 0; c < t->d; c++) {
        const float *qrow = t->qt + (int64_t)c * t->mp + lane0;
        __m256 q0 = _mm256_load_ps(qrow), q1 = _mm256_load_ps(qrow + 8);
        for (int a = 0; a < kr; a++) {
            __m256 b = _mm256_broadcast_ss(krow + a * lk + c);
            acc[a][0] = _mm256_fmadd_ps(b, q0, acc[a][0]);
            acc[a][1] = _mm256_fmadd_ps(b, q1, acc[a][1]);
        }
    }
    for (int a = 0; a < kr; a++) {
        float *srow = t->st + (int64_t)(j + a) * t->mp + lane0;
        _mm256_store_ps(srow, acc[a][0]);
        _mm256_store_ps(srow + 8, acc[a][1]);
    }
}

static void qk_builtin(const tile_bufs *t, const float *k, int64_t lk, int nc) {
    for (int lane0 = 0; lane0 < t->mp; lane0 += LANES)
        for (int j = 0; j < nc; j += KB2) {
            switch (nc - j < KB2 ? nc - j : KB2) {
            case 6: qk_block2(t, k, lk, j, 6, lane0); break;
            case 5: qk_block2(t, k, lk, j, 5, lane0); break;
            case 4: qk_block2(t, k, lk, j, 4, lane0); break;
            case 3: qk_block2(t, k, lk, j, 3, lane0); break;
            case 2: qk_block2(t, k, lk, j, 2, lane0); break;
            default: qk_block2(t, k, lk, j, 1, lane0); break;
            }
        }
}

static inline __attribute__((always_inline))
void pv_block2(const tile_bufs *t, const float *v, int64_t lk, int nc, int c0, int cr, int lane0) {
    __m256 acc[KB2][2];
    for (int a = 0; a < cr; a++) acc[a][0] = acc[a][1] = _mm256_setzero_ps();
    for (int j = 0; j < nc; j++) {
        const float *prow = t->st + (int64_t)j * t->mp + lane0;
        __m256 p0 = _mm256_load_ps(prow), p1 = _mm256_load_ps(prow + 8);
        const float *vrow = v + j * lk + c0;
        for (int a = 0; a < cr; a++) {
            __m256 b = _mm256_broadcast_ss(vrow + a);
            acc[a][0] = _mm256_fmadd_ps(b, p0, acc[a][0]);
            acc[a][1] = _mm256_fmadd_ps(b, p1, acc[a][1]);
        }
    }
    /* one join per tile, as in the AVX-512 pv_block */
    __m256 al0 = _mm256_load_ps(t->alpha + lane0), al1 = _mm256_load_ps(t->alpha + lane0 + 8);
    for (int a = 0; a < cr; a++) {
        float *o = t->ot + (int64_t)(c0 + a) * t->mp + lane0;
        _mm256_store_ps(o, _mm256_fmadd_ps(al0, _mm256_load_ps(o), acc[a][0]));
        _mm256_store_ps(o + 8, _mm256_fmadd_ps(al1, _mm256_load_ps(o + 8), acc[a][1]));
    }
}

static void pv_builtin(const tile_bufs *t, const float *v, int64_t lk, int nc) {
    for (int lane0 = 0; lane0 < t->mp; lane0 += LANES)
        for (int c0 = 0; c0 < t->d; c0 += KB2) {
            switch (t->d - c0 < KB2 ? t->d - c0 : KB2) {
            case 6: pv_block2(t, v, lk, nc, c0, 6, lane0); break;
            case 5: pv_block2(t, v, lk, nc, c0, 5, lane0); break;
            case 4: pv_block2(t, v, lk, nc, c0, 4, lane0); break;
            case 3: pv_block2(t, v, lk, nc, c0, 3, lane0); break;
            case 2: pv_block2(t, v, lk, nc, c0, 2, lane0); break;
            default: pv_block2(t, v, lk, nc, c0, 1, lane0); break;
            }
        }
}
#else
/* Portable products: the inner loops run along the query lanes, contiguous, so the compiler
 * vectorizes them for whatever SIMD the machine has. */
static void qk_builtin(const tile_bufs *t, const float *k, int64_t lk, int nc) {
    for (int j = 0; j < nc; j++) {
        float *srow = t->st + (int64_t)j * t->mp;
        for (int i = 0; i < t->mp; i++) srow[i] = 0.0f;
        for (int c = 0; c < t->d; c++) {
            float kv = k[j * lk + c];
            const float *qrow = t->qt + (int64_t)c * t->mp;
            for (int i = 0; i < t->mp; i++) srow[i] += kv * qrow[i];
        }
    }
}

static void pv_builtin(const tile_bufs *t, const float *v, int64_t lk, int nc) {
    float tile[LANES * 16];                   /* this tile's sum for 16 lanes at a time */
    for (int c = 0; c < t->d; c++) {
        float *orow = t->ot + (int64_t)c * t->mp;
        for (int i0 = 0; i0 < t->mp; i0 += LANES * 16) {
            int n = t->mp - i0 < LANES * 16 ? t->mp - i0 : LANES * 16;
            for (int i = 0; i < n; i++) tile[i] = 0.0f;
            for (int j = 0; j < nc; j++) {
                float vv = v[j * lk + c];
                const float *prow = t->st + (int64_t)j * t->mp + i0;
                for (int i = 0; i < n; i++) tile[i] += vv * prow[i];
            }
            /* joined to the running Ot once per tile: see the AVX-512 pv_block */
            for (int i = 0; i < n; i++) orow[i0 + i] = orow[i0 + i] * t->alpha[i0 + i] + tile[i];
        }
    }
}
#endif

#ifdef FA_HAVE_CBLAS
static void qk_blas(const tile_bufs *t, const float *k, int64_t lk, int nc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nc, t->mp, t->d, 1.0f, k, (int)lk,
                t->qt, t->mp, 0.0f, t->st, t->mp);
}
static void pv_blas(const tile_bufs *t, const float *v, int64_t lk, int nc) {
    for (int c = 0; c < t->d; c++) {
        float *orow = t->ot + (int64_t)c * t->mp;
        for (int i = 0; i < t->mp; i++) orow[i] *= t->alpha[i];
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t->d, t->mp, nc, 1.0f, v, (int)lk,
                t->st, t->mp, 1.0f, t->ot, t->mp);
}
#endif

/* ---- softmax stream --------------------------------------------------------------------------- */

/* Hide the keys of a tile that lane i does not see: key_pos0 + j outside [lo[i], hi[i]). */
static void mask_tile(float *st, int mp, int nc, const int64_t *lo, const int64_t *hi,
                      int64_t key_pos0) {
    for (int i = 0; i < mp; i++) {
        int64_t a = lo[i] - key_pos0, e = hi[i] - key_pos0;
        for (int64_t j = 0; j < nc; j++)
            if (j < a || j >= e) st[j * mp + i] = -INFINITY;
    }
}

/* The score modifiers (softcap, ALiBi) of mask.h on a tile, lane by lane; masked keys are set
 * to -inf afterwards by mask_tile, so they need no care here. */
static void modify_tile(float *st, int mp, int nlive, int nc, const attn_mask *m, const int *head,
                        const mask_run *run, int64_t key_pos0) {
    for (int i = 0; i < nlive; i++)
        for (int64_t j = 0; j < nc; j++)
            st[j * mp + i] = mask_score(m, st[j * mp + i], head[i], &run[i], key_pos0 + j);
}

/* Online-softmax update, lane by lane: P = exp(S - m_new), l = l*alpha + sum P, m = m_new,
 * alpha = exp(m_old - m_new) for the Ot rescale in pv. A lane whose max is still -inf has seen no
 * key: it subtracts 0 instead of -inf (no -inf - -inf = NaN), so its P is 0 and it stays
 * m = -inf, l = 0, O = 0. */
#if defined(__AVX512F__)
static void softmax_update(float *st, int mp, int nc, float *m, float *l, float *alpha) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < mp; i += LANES) {
        __m512 mx = _mm512_load_ps(m + i);
        for (int j = 0; j < nc; j++) mx = _mm512_max_ps(mx, _mm512_load_ps(st + (int64_t)j * mp + i));
        __m512 sub = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mx, ninf, _CMP_EQ_OQ), mx,
                                          _mm512_setzero_ps());
        __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
        int j = 0;
        for (; j + 2 <= nc; j += 2) {        /* two exp chains in flight */
            float *p0 = st + (int64_t)j * mp + i, *p1 = p0 + mp;
            __m512 e0 = exp512(_mm512_sub_ps(_mm512_load_ps(p0), sub));
            __m512 e1 = exp512(_mm512_sub_ps(_mm512_load_ps(p1), sub));
            _mm512_store_ps(p0, e0);
            _mm512_store_ps(p1, e1);
            sum0 = _mm512_add_ps(sum0, e0);
            sum1 = _mm512_add_ps(sum1, e1);
        }
        if (j < nc) {
            float *p0 = st + (int64_t)j * mp + i;
            __m512 e0 = exp512(_mm512_sub_ps(_mm512_load_ps(p0), sub));
            _mm512_store_ps(p0, e0);
            sum0 = _mm512_add_ps(sum0, e0);
        }
        __m512 a = exp512(_mm512_sub_ps(_mm512_load_ps(m + i), sub));
        _mm512_store_ps(alpha + i, a);
        _mm512_store_ps(l + i, _mm512_fmadd_ps(_mm512_load_ps(l + i), a, _mm512_add_ps(sum0, sum1)));
        _mm512_store_ps(m + i, mx);
    }
}
#elif defined(FA_AVX2)
static void softmax_update(float *st, int mp, int nc, float *m, float *l, float *alpha) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int i = 0; i < mp; i += 8) {
        __m256 mx = _mm256_load_ps(m + i);
        for (int j = 0; j < nc; j++) mx = _mm256_max_ps(mx, _mm256_load_ps(st + (int64_t)j * mp + i));
        __m256 sub = _mm256_andnot_ps(_mm256_cmp_ps(mx, ninf, _CMP_EQ_OQ), mx);   /* -inf -> 0 */
        __m256 sum = _mm256_setzero_ps();
        for (int j = 0; j < nc; j++) {
            float *p = st + (int64_t)j * mp + i;
            __m256 e = exp256(_mm256_sub_ps(_mm256_load_ps(p), sub));
            _mm256_store_ps(p, e);
            sum = _mm256_add_ps(sum, e);
        }
        __m256 a = exp256(_mm256_sub_ps(_mm256_load_ps(m + i), sub));
        _mm256_store_ps(alpha + i, a);
        _mm256_store_ps(l + i, _mm256_fmadd_ps(_mm256_load_ps(l + i), a, sum));
        _mm256_store_ps(m + i, mx);
    }
}
#else
static void softmax_update(float *st, int mp, int nc, float *m, float *l, float *alpha) {
    for (int i = 0; i < mp; i++) {
        float mx = m[i];
        for (int j = 0; j < nc; j++) mx = st[(int64_t)j * mp + i] > mx ? st[(int64_t)j * mp + i] : mx;
        float sub = mx == -INFINITY ? 0.0f : mx, sum = 0.0f;
        for (int j = 0; j < nc; j++) {
            float e = exp_scalar(st[(int64_t)j * mp + i] - sub);
            st[(int64_t)j * mp + i] = e;
            sum += e;
        }
        alpha[i] = exp_scalar(m[i] - sub);
        l[i] = l[i] * alpha[i] + sum;
        m[i] = mx;
    }
}
#endif

/* ---- one work item ------------------------------------------------------------------------- */

typedef void (*product_fn)(const tile_bufs *t, const float *kv, int64_t lk, int nc);

typedef struct {               /* what every work item of a call shares */
    const attn_queries *q;
    const attn_mask *mask;     /* q's mask (kernels/mask.h) */
    const attn_kv_segment *segs;
    int nsegs;
    float *rec;                /* [nq][H] records */
    int g, br, bc;
    int64_t lk;                /* floats between consecutive keys: Hkv*D */
    product_fn qk, pv;
    void (*progress)(void *);
    void *progress_arg;
} engine_call;

typedef struct {               /* one thread's scratch, sized for the largest tile */
    tile_bufs t;
    float *m, *l, *alpha;      /* [Mp] */
    int64_t *lo, *hi;          /* [Mp] the keys [lo, hi) each lane sees (mask.h's row run) */
    mask_run *run;             /* [Mp] the same with the row's position (score modifiers) */
    int *head;                 /* [Mp] query head of each lane */
    int nlive;                 /* lanes of live stacked rows (the rest are pads) */
    int64_t klo, khi;          /* the union of the live lanes' runs: keys [klo, khi) */
    double last_progress;      /* master thread only */
} scratch;

static void scratch_alloc(scratch *w, int mp, int d, int bc) {
    w->t.qt = fa_aligned_alloc(sizeof(float) * (size_t)mp * d, "cpu engine queries");
    w->t.st = fa_aligned_alloc(sizeof(float) * (size_t)mp * bc, "cpu engine scores");
    w->t.ot = fa_aligned_alloc(sizeof(float) * (size_t)mp * d, "cpu engine output");
    w->m = fa_aligned_alloc(sizeof(float) * (size_t)mp, "cpu engine max");
    w->l = fa_aligned_alloc(sizeof(float) * (size_t)mp, "cpu engine sum");
    w->alpha = fa_aligned_alloc(sizeof(float) * (size_t)mp, "cpu engine rescale");
    w->lo = fa_aligned_alloc(sizeof(int64_t) * (size_t)mp, "cpu engine mask runs");
    w->hi = fa_aligned_alloc(sizeof(int64_t) * (size_t)mp, "cpu engine mask runs");
    w->run = fa_aligned_alloc(sizeof(mask_run) * (size_t)mp, "cpu engine mask runs");
    w->head = fa_aligned_alloc(sizeof(int) * (size_t)mp, "cpu engine lane heads");
    w->t.alpha = w->alpha;
    w->t.d = d;
    w->last_progress = omp_get_wtime();
}

static void scratch_free(scratch *w) {
    free((void *)w->t.qt); free(w->t.st); free(w->t.ot);
    free(w->m); free(w->l); free(w->alpha); free(w->lo); free(w->hi); free(w->run); free(w->head);
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

/* Gather the item's stacked queries (times scale, transposed) and running records. Pad lanes
 * (M..Mp) get zero queries and an empty record; they are computed and never stored. */
static void tile_load(const engine_call *c, scratch *w, int kvh, int64_t r0, int nr) {
    const attn_queries *q = c->q;
    int d = q->d, h = q->h, m = nr * c->g, mp = (int)round_up(m, LANES);
    int64_t len = attn_rec_len(d);
    float *qt = (float *)w->t.qt;
    w->t.mp = mp;
    w->nlive = m;
    w->klo = INT64_MAX;
    w->khi = INT64_MIN;
    for (int s = 0; s < mp; s++) {
        int live = s < m;
        int64_t row = r0 + s / c->g, head = (int64_t)kvh * c->g + s % c->g;
        const float *src = (const float *)q->q + (row * h + head) * d;
        const float *rec = c->rec + (row * h + head) * len;
        for (int x = 0; x < d; x++) {
            qt[(int64_t)x * mp + s] = live ? src[x] * q->scale : 0.0f;
            w->t.ot[(int64_t)x * mp + s] = live ? rec[2 + x] : 0.0f;
        }
        w->m[s] = live ? rec[0] : -INFINITY;
        w->l[s] = live ? rec[1] : 0.0f;
        w->head[s] = (int)head;
        if (live) {
            mask_run r = mask_row(c->mask, q->b, q->q_pos0 + row);
            w->run[s] = r;
            w->lo[s] = r.lo;
            w->hi[s] = r.hi;
            if (r.hi > r.lo && r.lo < w->klo) w->klo = r.lo;
            if (r.hi > r.lo && r.hi > w->khi) w->khi = r.hi;
        } else {                                  /* pads see all: never a lane of -inf only */
            w->lo[s] = INT64_MIN / 4;
            w->hi[s] = INT64_MAX / 4;
        }
    }
}

static void tile_store(const engine_call *c, const scratch *w, int kvh, int64_t r0, int nr) {
    int d = c->q->d, h = c->q->h, m = nr * c->g, mp = w->t.mp;
    int64_t len = attn_rec_len(d);
    for (int s = 0; s < m; s++) {
        int64_t row = r0 + s / c->g, head = (int64_t)kvh * c->g + s % c->g;
        float *rec = c->rec + (row * h + head) * len;
        rec[0] = w->m[s];
        rec[1] = w->l[s];
        for (int x = 0; x < d; x++) rec[2 + x] = w->t.ot[(int64_t)x * mp + s];
    }
}

/* How the live lanes see keys [k0, k1): 0 none, 1 some of them, 2 all of them every key. */
static int tile_view(const scratch *w, int64_t k0, int64_t k1) {
    int any = 0, all = 1;
    for (int s = 0; s < w->nlive; s++) {
        int64_t lo = w->lo[s], hi = w->hi[s];
        any |= lo < k1 && hi > k0 && lo < hi;
        all &= lo <= k0 && hi >= k1;
    }
    return all ? 2 : any;
}

/* Fold the keys of one segment into the loaded tile: only the keys inside the union of the
 * lanes' runs, tiles that no lane sees skipped, the mask applied where a lane sees a tile in
 * part, the score modifiers on every tile when the mask has them. */
static void tile_segment(const engine_call *c, scratch *w, int kvh, const attn_kv_segment *seg) {
    const attn_queries *q = c->q;
    int64_t j_begin = w->klo - seg->pos0, j_end = w->khi - seg->pos0;
    if (j_begin < 0) j_begin = 0;
    if (j_end > seg->n) j_end = seg->n;
    const int modify = mask_has_modifiers(c->mask);
    for (int64_t j0 = j_begin; j0 < j_end; j0 += c->bc) {
        int64_t key_pos0 = seg->pos0 + j0;
        int nc = (int)(j_end - j0 < c->bc ? j_end - j0 : c->bc);
        int view = tile_view(w, key_pos0, key_pos0 + nc);
        if (view == 0) continue;                        /* no lane sees this tile */
        const float *k = (const float *)seg->k + j0 * c->lk + (int64_t)kvh * q->d;
        const float *v = (const float *)seg->v + j0 * c->lk + (int64_t)kvh * q->d;
        c->qk(&w->t, k, c->lk, nc);
        if (modify) modify_tile(w->t.st, w->t.mp, w->nlive, nc, c->mask, w->head, w->run, key_pos0);
        if (view == 1) mask_tile(w->t.st, w->t.mp, nc, w->lo, w->hi, key_pos0);
        softmax_update(w->t.st, w->t.mp, nc, w->m, w->l, w->alpha);
        c->pv(&w->t, v, c->lk, nc);
        maybe_progress(c, w);
    }
}

static void run_item(const engine_call *c, scratch *w, int kvh, int64_t r0, int nr) {
    tile_load(c, w, kvh, r0, nr);
    for (int i = 0; i < c->nsegs; i++) tile_segment(c, w, kvh, &c->segs[i]);
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

/* Defaults: br*G ~ 64 stacked rows = 4 vectors, the width of the register blocks, and bc = 128
 * keys: St (128 x 64) and the Qt, Ot tiles (D x 64) stay in L1/L2, and the per-tile softmax
 * bookkeeping (alpha, the Ot rescale) is spread over 128 keys: the fastest of the sizes in
 * bench/NOTES_CPU.md's tile table. Fewer rows when the chunk is too small to give every thread a
 * few items. */
static void pick_tiling(const attn_queries *q, const cpu_tiling *t, int g, int *br, int *bc,
                        int *threads) {
    *threads = t && t->threads > 0 ? t->threads : omp_get_max_threads();
    *bc = t && t->bc > 0 ? t->bc : 128;
    if (t && t->br > 0) *br = t->br;
    else {
        *br = 64 / g > 1 ? 64 / g : 1;
        while (*br > 4 && ((q->nq + *br - 1) / *br) * q->hkv < 4 * *threads) *br /= 2;
    }
    if (*br > q->nq && q->nq > 0) *br = (int)q->nq;
}

/* Returns 1 when the OpenBLAS products were picked (the plan's tiling.blas: FA_CPU_PRODUCTS=blas). */
static int pick_products(engine_call *c, const cpu_tiling *t) {
    c->qk = qk_builtin;
    c->pv = pv_builtin;
#ifdef FA_HAVE_CBLAS
    if (t && t->blas) {
        c->qk = qk_blas;
        c->pv = pv_blas;
        return 1;
    }
#endif
    return 0;
}

static int64_t fetch_add(int64_t *x) {
    int64_t v;
    #pragma omp atomic capture
    v = (*x)++;
    return v;
}

static int read_busy(int *x) {
    int v;
    #pragma omp atomic read
    v = *x;
    return v;
}

typedef struct {
    int64_t next;              /* next work item to hand out */
    int busy;                  /* threads still working on items */
    int64_t ntiles, nitems;    /* query tiles; items = tiles x kv heads */
} work_queue;

/* One thread's share of a call: take items until none is left. */
static void run_thread(const engine_call *c, work_queue *wq, int mp) {
    scratch w;
    scratch_alloc(&w, mp, c->q->d, c->bc);
    #pragma omp atomic
    wq->busy++;
    #pragma omp barrier
    int64_t it;
    while ((it = fetch_add(&wq->next)) < wq->nitems) {
        /* Head by head, so consecutive items reuse the head's K/V from L2 (v4 in
         * bench/NOTES_CPU.md); within a head later query tiles first: under the causal mask
         * they see more keys, and the cheap ones fill the tail. */
        int kvh = (int)(it / wq->ntiles);
        int64_t r0 = (wq->ntiles - 1 - it % wq->ntiles) * c->br;
        int nr = (int)(c->q->nq - r0 < c->br ? c->q->nq - r0 : c->br);
        run_item(c, &w, kvh, r0, nr);
    }
    #pragma omp atomic
    wq->busy--;
    /* The calling thread keeps the runner's MPI moving while the last items finish, instead of
     * sleeping in the closing barrier for up to one item's time. */
    if (omp_get_thread_num() == 0 && c->progress)
        while (read_busy(&wq->busy) > 0) {
            maybe_progress(c, &w);
            sched_yield();
        }
    scratch_free(&w);
}

void cpu_attn_partial(const attn_queries *q, const attn_kv_segment *segs, int nsegs,
                      float *rec, const cpu_tiling *tiling, void (*progress)(void *), void *arg) {
    if (q->nq <= 0 || nsegs <= 0) return;
    int g = q->h / q->hkv, br, bc, threads;
    pick_tiling(q, tiling, g, &br, &bc, &threads);
    attn_mask local;
    engine_call c = { q, attn_queries_mask(q, &local), segs, nsegs, rec, g, br, bc,
                      (int64_t)q->hkv * q->d, NULL, NULL, progress, arg };
    int use_blas = pick_products(&c, tiling);
    int64_t ntiles = (q->nq + br - 1) / br, nitems = ntiles * q->hkv;
    int mp = (int)round_up((int64_t)br * g, LANES);
#ifdef FA_HAVE_CBLAS
    int blas_threads = openblas_get_num_threads();
    if (use_blas) openblas_set_num_threads(1);  /* our threads each run whole tiles: no nesting */
#else
    (void)use_blas;
#endif
    work_queue wq = { 0, 0, ntiles, nitems };
    #pragma omp parallel num_threads(threads)
    run_thread(&c, &wq, mp);
#ifdef FA_HAVE_CBLAS
    if (use_blas) openblas_set_num_threads(blas_threads);
#endif
    if (progress) progress(arg);
}
