/* taylor_cpu.c — the CPU engine of the Taylor mode (kernels/taylor.h): fp32 tiles, fp64 running
 * state, OpenMP across work items, OpenBLAS sgemm for the tile products when built with it
 * (FA_HAVE_CBLAS; called single-threaded from our threads), plain loops otherwise.
 *
 * The rank's keys are numbered t = 0..n-1 in position order (segments are disjoint and increasing).
 * Row r of a chunk sees the first cnt[r] of them (all n when non-causal). Rows are cut in tiles of
 * T rows; tile tau starts at key K_tau = cnt[first row]. Per chunk block (up to BLOCK_TILES tiles):
 *   A. advance   running state (S, z, sv over keys [0, c_run), fp64) to K_0: work items of
 *                ADV_KEYS keys x kv head, per-thread fp64 accumulators, summed at the end;
 *   B. deltas    per (kv head, tile): dS = K^^T V, dz = sum k^, dsv = sum v over [K_tau, K_tau+1);
 *                the tiles' start states S_tau = S + sum_{tau' < tau} dS (fp64 sum, stored fp32);
 *   C. outputs   per (query head, tile): qs = (s Q) S_tau, lin = (s Q).z_tau, and the masked
 *                intra-tile part X = (s Q) K^^T [T x m] (m <= T keys), X[r][t] = 0 where key t is
 *                not visible to row r, qs += X V, lin += rowsum X, sv = sv_tau + prefix of V.
 * Non-causal blocks have K_0 = ... = n: phase A runs once per batch element, B and the intra part
 * vanish. Keys are centered (k - mu, fp64 then rounded) as they are gathered into a tile.
 *
 * Sections: products | key gathering and counting | engine | no-CUDA stubs. */
#include "kernels/taylor.h"
#include "base/common.h"
#include <omp.h>
#include <string.h>
#ifdef FA_HAVE_CBLAS
#include <cblas.h>
#endif

#define TILE_DEFAULT 64
#define BLOCK_TILES 32      /* tiles whose start states are held at once */
#define ADV_KEYS 256        /* keys per work item of the running-state advance */

/* ---- products ---------------------------------------------------------------------------------
 * C[M][N] = A B + beta C (row-major). ta: A is stored [K][M]; tb: B is stored [N][K]. beta 0 or 1.
 * tmp: room for K*M floats (the fallback's transposes). */
static void mm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
               int ldb, float beta, float *C, int ldc, float *tmp) {
    if (M <= 0 || N <= 0) return;
#ifdef FA_HAVE_CBLAS
    (void)tmp;
    if (K > 0) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    if (beta == 0.0f)
        for (int i = 0; i < M; i++) memset(C + (int64_t)i * ldc, 0, sizeof(float) * (size_t)N);
    if (K <= 0) return;
    if (tb) {               /* B^T into tmp as [K][N] then the plain case */
        for (int j = 0; j < N; j++)
            for (int k = 0; k < K; k++) tmp[(int64_t)k * N + j] = B[(int64_t)j * ldb + k];
        B = tmp;
        ldb = N;
    }
    if (ta) {               /* C += sum_k A[k][i] B[k][:] */
        for (int k = 0; k < K; k++)
            for (int i = 0; i < M; i++) {
                float a = A[(int64_t)k * lda + i];
                float *c = C + (int64_t)i * ldc;
                const float *b = B + (int64_t)k * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            }
    } else {
        for (int i = 0; i < M; i++) {
            float *c = C + (int64_t)i * ldc;
            for (int k = 0; k < K; k++) {
                float a = A[(int64_t)i * lda + k];
                const float *b = B + (int64_t)k * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            }
        }
    }
}

/* ---- key gathering and counting ---------------------------------------------------------------- */
void taylor_key_sums(const attn_kv_segment *segs, int nsegs, int hkv, int d, double *sum) {
    int64_t row = (int64_t)hkv * d;
    for (int s = 0; s < nsegs; s++)
        for (int64_t j = 0; j < segs[s].n; j++) {
            const float *k = (const float *)segs[s].k + j * row;
            for (int64_t e = 0; e < row; e++) sum[e] += (double)k[e];
        }
}

int64_t taylor_keys_upto(const attn_kv_segment *segs, int nsegs, int64_t last) {
    int64_t c = 0;
    for (int s = 0; s < nsegs && segs[s].pos0 <= last; s++) {
        int64_t take = last - segs[s].pos0 + 1;
        c += take < segs[s].n ? take : segs[s].n;
    }
    return c;
}

void taylor_row_counts(const attn_queries *q, const attn_kv_segment *segs, int nsegs, int64_t nkeys,
                       int64_t *cnt) {
    if (!q->causal) {
        for (int64_t r = 0; r < q->nq; r++) cnt[r] = nkeys;
        return;
    }
    int s = 0;
    int64_t before = 0;        /* keys of segments [0, s) */
    for (int64_t r = 0; r < q->nq; r++) {
        int64_t last = q->q_pos0 + r + q->diag;
        while (s < nsegs && segs[s].pos0 + segs[s].n - 1 <= last) before += segs[s++].n;
        int64_t c = before;
        if (s < nsegs && segs[s].pos0 <= last) c += last - segs[s].pos0 + 1;
        cnt[r] = c;
    }
}

/* ---- engine ------------------------------------------------------------------------------------ */
struct taylor_cpu {
    int h, hkv, d, threads, tile;
    const attn_kv_segment *segs;
    int nsegs;
    int64_t nkeys;
    int64_t *seg_off;            /* [nsegs + 1] key index of each segment's first key */
    int seg_cap;
    double *mu;                  /* [hkv][d] */
    double *S, *z, *sv;          /* running state over keys [0, c_run): [hkv][d*d], [hkv][d] x 2 */
    int64_t c_run;
    int global;                  /* set_state: the state stands for count_total keys (non-causal) */
    int64_t count_total;
    float *St, *zt, *svt;        /* tile start states [BLOCK_TILES][hkv][d*d | d | d] */
    float *dS, *dz, *dsv;        /* tile deltas, same shapes */
    int64_t *cnt;                /* [cnt_cap] visible keys per row of the current chunk */
    int64_t cnt_cap;
    float **scratch;             /* per thread */
    double **acc;                /* per thread: [hkv][d*d + 2d] */
};

static int64_t scratch_floats(int T, int d) {
    int64_t kk = ADV_KEYS > T ? ADV_KEYS : T;
    return 2 * kk * d                /* kh, vv */
         + 2 * (int64_t)T * d        /* Qs, out */
         + (int64_t)T * T            /* X */
         + (int64_t)d * d            /* tmp product */
         + (int64_t)d * (kk > T ? kk : T) + (int64_t)T * T + 64;   /* fallback transposes */
}

taylor_cpu *taylor_cpu_create(int h, int hkv, int d, int threads, int tile) {
    taylor_cpu *e = fa_try_calloc(1, sizeof *e, "taylor engine");
    if (!e) return NULL;
    e->h = h;
    e->hkv = hkv;
    e->d = d;
    e->threads = threads > 0 ? threads : omp_get_max_threads();
    e->tile = tile > 0 ? tile : TILE_DEFAULT;
    int64_t dd = (int64_t)d * d, nst = (int64_t)BLOCK_TILES * hkv;
    e->mu = fa_try_calloc((size_t)(hkv * d), sizeof(double), "taylor mean");
    e->S = fa_try_calloc((size_t)(hkv * dd), sizeof(double), "taylor state");
    e->z = fa_try_calloc((size_t)(hkv * d), sizeof(double), "taylor state");
    e->sv = fa_try_calloc((size_t)(hkv * d), sizeof(double), "taylor state");
    e->St = fa_try_aligned_alloc(sizeof(float) * (size_t)(nst * dd), "taylor tile states");
    e->dS = fa_try_aligned_alloc(sizeof(float) * (size_t)(nst * dd), "taylor tile deltas");
    e->zt = fa_try_aligned_alloc(sizeof(float) * (size_t)(nst * d), "taylor tile states");
    e->svt = fa_try_aligned_alloc(sizeof(float) * (size_t)(nst * d), "taylor tile states");
    e->dz = fa_try_aligned_alloc(sizeof(float) * (size_t)(nst * d), "taylor tile deltas");
    e->dsv = fa_try_aligned_alloc(sizeof(float) * (size_t)(nst * d), "taylor tile deltas");
    e->scratch = fa_try_calloc((size_t)e->threads, sizeof(float *), "taylor scratch");
    e->acc = fa_try_calloc((size_t)e->threads, sizeof(double *), "taylor scratch");
    int ok = e->mu && e->S && e->z && e->sv && e->St && e->dS && e->zt && e->svt && e->dz &&
             e->dsv && e->scratch && e->acc;
    for (int t = 0; ok && t < e->threads; t++) {
        e->scratch[t] = fa_try_aligned_alloc(sizeof(float) * (size_t)scratch_floats(e->tile, d),
                                             "taylor scratch");
        e->acc[t] = fa_try_malloc(sizeof(double) * (size_t)(hkv * (dd + 2 * d)), "taylor scratch");
        ok = e->scratch[t] && e->acc[t];
    }
    if (ok) return e;
    taylor_cpu_destroy(e);   /* a library call out of memory (fa_try_*): nothing stays */
    return NULL;
}

void taylor_cpu_destroy(taylor_cpu *e) {
    if (!e) return;
    for (int t = 0; e->scratch && e->acc && t < e->threads; t++) {
        free(e->scratch[t]);
        free(e->acc[t]);
    }
    free(e->scratch); free(e->acc);
    free(e->seg_off); free(e->mu); free(e->S); free(e->z); free(e->sv);
    free(e->St); free(e->dS); free(e->zt); free(e->svt); free(e->dz); free(e->dsv);
    free(e->cnt);
    free(e);
}

static void reset_state(taylor_cpu *e) {
    int64_t dd = (int64_t)e->d * e->d;
    memset(e->S, 0, sizeof(double) * (size_t)(e->hkv * dd));
    memset(e->z, 0, sizeof(double) * (size_t)(e->hkv * e->d));
    memset(e->sv, 0, sizeof(double) * (size_t)(e->hkv * e->d));
    e->c_run = 0;
}

void taylor_cpu_load_kv(taylor_cpu *e, const attn_kv_segment *segs, int nsegs, const double *mu) {
    e->segs = segs;
    e->nsegs = nsegs;
    if (nsegs + 1 > e->seg_cap) {
        free(e->seg_off);
        e->seg_cap = nsegs + 1;
        e->seg_off = fa_malloc(sizeof(int64_t) * (size_t)e->seg_cap, "taylor segments");
    }
    e->seg_off[0] = 0;
    for (int s = 0; s < nsegs; s++) e->seg_off[s + 1] = e->seg_off[s] + segs[s].n;
    e->nkeys = e->seg_off[nsegs];
    memcpy(e->mu, mu, sizeof(double) * (size_t)(e->hkv * e->d));
    reset_state(e);
    e->global = 0;
}

/* Keys [t0, t0+m) of kv head g: kh [m][d] = k - mu (centered), vv [m][d] = v. */
static void gather(const taylor_cpu *e, int g, int64_t t0, int64_t m, float *kh, float *vv) {
    int lo = 0, hi = e->nsegs - 1, d = e->d;
    while (lo < hi) {                      /* last segment starting at or before t0 */
        int mid = (lo + hi + 1) / 2;
        if (e->seg_off[mid] <= t0) lo = mid; else hi = mid - 1;
    }
    const double *mu = e->mu + (int64_t)g * d;
    int64_t row = (int64_t)e->hkv * d, t = t0;
    for (int s = lo; t < t0 + m && s < e->nsegs; s++) {
        int64_t off = t - e->seg_off[s], take = e->segs[s].n - off;
        if (take > t0 + m - t) take = t0 + m - t;
        for (int64_t i = 0; i < take; i++) {
            const float *k = (const float *)e->segs[s].k + (off + i) * row + (int64_t)g * d;
            const float *v = (const float *)e->segs[s].v + (off + i) * row + (int64_t)g * d;
            float *dk = kh + (t - t0 + i) * d;
            for (int x = 0; x < d; x++) dk[x] = (float)((double)k[x] - mu[x]);
            memcpy(vv + (t - t0 + i) * d, v, sizeof(float) * (size_t)d);
        }
        if (take > 0) t += take;
    }
}

/* Scratch layout of one thread. */
typedef struct { float *kh, *vv, *qs, *out, *x, *tmp, *tr; } scratch_t;
static scratch_t scratch_of(const taylor_cpu *e, int tid) {
    int64_t T = e->tile, d = e->d, kk = ADV_KEYS > T ? ADV_KEYS : T;
    float *p = e->scratch[tid];
    scratch_t s;
    s.kh = p;            p += kk * d;
    s.vv = p;            p += kk * d;
    s.qs = p;            p += T * d;
    s.out = p;           p += T * d;
    s.x = p;             p += T * T;
    s.tmp = p;           p += d * d;
    s.tr = p;
    return s;
}

/* Phase A: the running state from c_run up to key `target` (fp64). */
static void advance(taylor_cpu *e, int64_t target) {
    int64_t n = target - e->c_run;
    if (n <= 0) return;
    int d = e->d, hkv = e->hkv;
    int64_t dd = (int64_t)d * d, per = dd + 2 * d;
    int64_t nb = (n + ADV_KEYS - 1) / ADV_KEYS, items = nb * hkv, c0 = e->c_run;
    int nth = items < e->threads ? (int)items : e->threads;
#pragma omp parallel num_threads(nth)
    {
        int tid = omp_get_thread_num();
        scratch_t sc = scratch_of(e, tid);
        double *acc = e->acc[tid];
        memset(acc, 0, sizeof(double) * (size_t)(hkv * per));
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int g = (int)(it % hkv);
            int64_t t0 = c0 + (it / hkv) * ADV_KEYS, m = target - t0 < ADV_KEYS ? target - t0 : ADV_KEYS;
            gather(e, g, t0, m, sc.kh, sc.vv);
            mm(1, 0, d, d, (int)m, sc.kh, d, sc.vv, d, 0.0f, sc.tmp, d, sc.tr);
            double *a = acc + g * per;
            for (int64_t x = 0; x < dd; x++) a[x] += sc.tmp[x];
            for (int64_t t = 0; t < m; t++)
                for (int x = 0; x < d; x++) {
                    a[dd + x] += sc.kh[t * d + x];
                    a[dd + d + x] += sc.vv[t * d + x];
                }
        }
#pragma omp critical
        for (int g = 0; g < hkv; g++) {
            const double *a = acc + g * per;
            for (int64_t x = 0; x < dd; x++) e->S[g * dd + x] += a[x];
            for (int x = 0; x < d; x++) {
                e->z[g * d + x] += a[dd + x];
                e->sv[g * d + x] += a[dd + d + x];
            }
        }
    }
    e->c_run = target;
}

typedef struct {
    void (*fn)(void *);
    void *arg;
    double last;
} progress_t;

static void maybe_progress(progress_t *p) {
    if (!p->fn || omp_get_thread_num() != 0) return;
    double now = omp_get_wtime();
    if (now - p->last < 1e-3) return;
    p->last = now;
    p->fn(p->arg);
}

void taylor_cpu_get_state(taylor_cpu *e, double *st) {
    int64_t d = e->d, dd = d * d, P = dd + 2 * d;
    if (e->c_run > e->nkeys) reset_state(e);
    advance(e, e->nkeys);
    for (int g = 0; g < e->hkv; g++) {
        memcpy(st + g * P, e->S + g * dd, sizeof(double) * (size_t)dd);
        memcpy(st + g * P + dd, e->z + g * d, sizeof(double) * (size_t)d);
        memcpy(st + g * P + dd + d, e->sv + g * d, sizeof(double) * (size_t)d);
    }
}

void taylor_cpu_set_state(taylor_cpu *e, const double *st, int64_t nkeys_total) {
    int64_t d = e->d, dd = d * d, P = dd + 2 * d;
    for (int g = 0; g < e->hkv; g++) {
        memcpy(e->S + g * dd, st + g * P, sizeof(double) * (size_t)dd);
        memcpy(e->z + g * d, st + g * P + dd, sizeof(double) * (size_t)d);
        memcpy(e->sv + g * d, st + g * P + dd + d, sizeof(double) * (size_t)d);
    }
    e->global = 1;
    e->count_total = nkeys_total;
    e->c_run = nkeys_total;      /* every row's K_0: no advance, no restart */
}

void taylor_cpu_partial(taylor_cpu *e, const attn_queries *q, float *rec, void (*progress)(void *),
                        void *arg) {
    int64_t nk = e->global && !q->causal ? e->count_total : e->nkeys;
    if (e->global && q->causal) {             /* a causal chunk after set_state: start over */
        e->global = 0;
        reset_state(e);
    }
    if (nk == 0 || q->nq == 0) return;
    int d = e->d, hkv = e->hkv, H = e->h, T = e->tile;
    int64_t G = H / hkv, dd = (int64_t)d * d, R = taylor_rec_len(d), nq = q->nq;
    float scale = q->scale;
    if (nq > e->cnt_cap) {
        free(e->cnt);
        e->cnt_cap = nq;
        e->cnt = fa_malloc(sizeof(int64_t) * (size_t)nq, "taylor row counts");
    }
    int64_t *cnt = e->cnt;
    taylor_row_counts(q, e->segs, e->nsegs, nk, cnt);
    progress_t pr = {progress, arg, 0.0};
#ifdef FA_HAVE_CBLAS
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#endif
    int64_t K[BLOCK_TILES + 1];
    for (int64_t r0 = 0; r0 < nq; r0 += (int64_t)BLOCK_TILES * T) {
        int64_t nr = nq - r0 < (int64_t)BLOCK_TILES * T ? nq - r0 : (int64_t)BLOCK_TILES * T;
        int ntiles = (int)((nr + T - 1) / T);
        for (int t = 0; t < ntiles; t++) K[t] = cnt[r0 + (int64_t)t * T];
        K[ntiles] = cnt[r0 + nr - 1];
        if (K[0] < e->c_run) reset_state(e);          /* a chunk out of order: start over */
        advance(e, K[0]);
        int moving = K[ntiles] > K[0];
        if (moving) {
            /* B. tile deltas, then the tiles' start states */
#pragma omp parallel num_threads(e->threads)
            {
                scratch_t sc = scratch_of(e, omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
                for (int64_t it = 0; it < (int64_t)ntiles * hkv; it++) {
                    int g = (int)(it % hkv), t = (int)(it / hkv);
                    int64_t m = K[t + 1] - K[t], o = (int64_t)t * hkv + g;
                    float *ds = e->dS + o * dd, *dz = e->dz + o * d, *dsv = e->dsv + o * d;
                    memset(dz, 0, sizeof(float) * (size_t)d);
                    memset(dsv, 0, sizeof(float) * (size_t)d);
                    if (m == 0) {
                        memset(ds, 0, sizeof(float) * (size_t)dd);
                        continue;
                    }
                    gather(e, g, K[t], m, sc.kh, sc.vv);
                    mm(1, 0, d, d, (int)m, sc.kh, d, sc.vv, d, 0.0f, ds, d, sc.tr);
                    for (int64_t j = 0; j < m; j++)
                        for (int x = 0; x < d; x++) {
                            dz[x] += sc.kh[j * d + x];
                            dsv[x] += sc.vv[j * d + x];
                        }
                }
#pragma omp for schedule(static)
                for (int64_t x = 0; x < hkv * (dd + 2 * d); x++) {
                    int64_t g = x / (dd + 2 * d), y = x % (dd + 2 * d);
                    double *run;
                    float *st, *del;
                    int64_t stride, off;
                    if (y < dd) { run = e->S + g * dd + y; st = e->St; del = e->dS; stride = dd; off = g * dd + y; }
                    else if (y < dd + d) { run = e->z + g * d + (y - dd); st = e->zt; del = e->dz; stride = d; off = g * d + (y - dd); }
                    else { run = e->sv + g * d + (y - dd - d); st = e->svt; del = e->dsv; stride = d; off = g * d + (y - dd - d); }
                    double a = *run;
                    for (int t = 0; t < ntiles; t++) {
                        st[(int64_t)t * hkv * stride + off] = (float)a;
                        a += del[(int64_t)t * hkv * stride + off];
                    }
                    *run = a;
                }
            }
            e->c_run = K[ntiles];
        } else {
            for (int64_t x = 0; x < hkv * dd; x++) e->St[x] = (float)e->S[x];
            for (int64_t x = 0; x < hkv * d; x++) {
                e->zt[x] = (float)e->z[x];
                e->svt[x] = (float)e->sv[x];
            }
        }

        /* C. outputs per (query head, tile) */
#pragma omp parallel num_threads(e->threads)
        {
            scratch_t sc = scratch_of(e, omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < (int64_t)ntiles * H; it++) {
                int hh = (int)(it % H), t = (int)(it / H);
                int64_t g = hh / G, a = r0 + (int64_t)t * T;
                int n = (int)(r0 + nr - a < T ? r0 + nr - a : T);
                int64_t o = (moving ? (int64_t)t * hkv : 0) + g;
                const float *S = e->St + o * dd, *z = e->zt + o * d, *svs = e->svt + o * d;
                for (int r = 0; r < n; r++) {
                    const float *qr = (const float *)q->q + ((a + r) * H + hh) * d;
                    for (int x = 0; x < d; x++) sc.qs[r * d + x] = scale * qr[x];
                }
                mm(0, 0, n, d, d, sc.qs, d, S, d, 0.0f, sc.out, d, sc.tr);
                int64_t kt = cnt[a], m = cnt[a + n - 1] - kt;
                if (m > 0) {
                    gather(e, (int)g, kt, m, sc.kh, sc.vv);
                    mm(0, 1, n, (int)m, d, sc.qs, d, sc.kh, d, 0.0f, sc.x, (int)m, sc.tr);
                    for (int r = 0; r < n; r++) {
                        int64_t vis = cnt[a + r] - kt;
                        for (int64_t j = vis; j < m; j++) sc.x[r * m + j] = 0.0f;
                    }
                    mm(0, 0, n, d, (int)m, sc.x, (int)m, sc.vv, d, 1.0f, sc.out, d, sc.tr);
                }
                float *cum = sc.tmp;               /* prefix of V inside the tile */
                memset(cum, 0, sizeof(float) * (size_t)d);
                int64_t j = 0;
                for (int r = 0; r < n; r++) {
                    int64_t vis = cnt[a + r] - kt;
                    float lin = 0.0f;
                    for (int x = 0; x < d; x++) lin += sc.qs[r * d + x] * z[x];
                    for (int64_t y = 0; y < vis; y++) lin += sc.x[r * m + y];
                    for (; j < vis; j++)
                        for (int x = 0; x < d; x++) cum[x] += sc.vv[j * d + x];
                    float *rr = rec + ((a + r) * H + hh) * R;
                    rr[0] += (float)cnt[a + r];
                    rr[1] += lin;
                    for (int x = 0; x < d; x++) {
                        rr[2 + x] += svs[x] + cum[x];
                        rr[2 + d + x] += sc.out[r * d + x];
                    }
                }
                maybe_progress(&pr);
            }
        }
    }
#ifdef FA_HAVE_CBLAS
    openblas_set_num_threads(blas_threads);
#endif
}

/* ---- no-CUDA stubs: the CUDA Taylor engine in a build without nvcc ------------------------------ */
#ifndef FA_HAVE_CUDA
int taylor_gpu_create(int device, int64_t kv_rows, int64_t max_rows, int h, int hkv, int d,
                      taylor_gpu **out) {
    *out = NULL;
    return fa_seterr("this fa_long was built without CUDA (nvcc was not found at build time)");
}
int taylor_gpu_load_kv(taylor_gpu *e, const attn_kv_segment *segs, int nsegs, const double *mu) {
    return fa_seterr("no CUDA in this build");
}
int taylor_gpu_partial(taylor_gpu *e, const attn_queries *q, float *rec, int overwrite) {
    return fa_seterr("no CUDA in this build");
}
void taylor_gpu_destroy(taylor_gpu *e) {}
int taylor_gpu_get_state(taylor_gpu *e, double *st) { return fa_seterr("no CUDA in this build"); }
int taylor_gpu_set_state(taylor_gpu *e, const double *st, int64_t nkeys_total) {
    return fa_seterr("no CUDA in this build");
}
#endif
