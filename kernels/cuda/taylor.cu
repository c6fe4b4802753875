/* taylor.cu — the CUDA engine of the Taylor mode (kernels/taylor.h), fp32 on the device, plain CUDA
 * kernels (no cuBLAS). The same algorithm as the CPU engine (kernels/cpu/taylor_cpu.c), with tiles
 * of T = 32 query rows:
 *   center_kernel   upload: k^ = k - mu, v, host [n][Hkv][D] -> device [Hkv][cap][D]
 *   outer_kernel    sum over a key range of k^ (x) v (D x D, 32x32 output tiles per block) and of
 *                   k^, v: the running-state advance (fp64 atomics into the running state) and the
 *                   per-tile deltas (fp32)
 *   prefix_kernel   tile start states S_tau = S_run + sum_{tau' < tau} dS (fp64 sum, fp32 out)
 *   out_kernel      one block per (query head, tile): qs = (sQ) S_tau + masked (sQ K^^T) V, lin,
 *                   sv, cnt: the tile's records, written to a device record buffer
 * Records are copied back into the host records (added to them unless the caller says they hold
 * the empty state: the pipeline's case, one partial per chunk right after init).
 * Every entry point returns -1 with fa_seterr on a CUDA error (no device, out of memory), so a
 * build with CUDA on a machine without a GPU fails cleanly.
 *
 * Device buffers:
 *   kh, v   [Hkv][cap][D] fp32        the rank's keys, centered, in position order
 *   stage   [STAGE_ROWS][Hkv][D] fp32  upload staging
 *   q       [max_rows][H][D] fp32      the chunk's queries (host layout)
 *   cnt     [max_rows] int64           visible keys per row;  bounds [nblocks][BLOCK_TILES+1] int64
 *   run     [Hkv][P] fp64              running state {S (D*D), z (D), sv (D)}, P = D*D + 2D
 *   st, ds  [BLOCK_TILES][Hkv][P] fp32 tile start states, tile deltas
 *   rec     [max_rows][H][2D+2] fp32   the chunk's records */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>
#include <vector>
extern "C" {
#include "kernels/taylor.h"
#include "base/common.h"
}

#define TT 32                 /* query rows per tile */
#define BLOCK_TILES 64        /* tiles whose start states are held at once */
#define ADV_PIECE 2048        /* keys per block of the running-state advance */
#define STAGE_ROWS 16384      /* keys per upload */
#define THREADS 256

#define tcheck(call)                                                                             \
    do {                                                                                         \
        cudaError_t err_ = (call);                                                               \
        if (err_ != cudaSuccess)                                                                 \
            return fa_seterr("CUDA error at %s:%d: %s (%s)", __FILE__, __LINE__,                 \
                             cudaGetErrorString(err_), #call);                                  \
    } while (0)

struct taylor_gpu {
    int dev, h, hkv, d;
    int64_t cap, max_rows, P, nblocks_max;
    float *kh, *v, *stage, *q, *st, *ds, *rec;
    double *run, *mu;
    int64_t *cnt, *bounds;
    int64_t c_run, nkeys;
    int global;                 /* set_state: the state stands for count_total keys (non-causal) */
    int64_t count_total;
    const attn_kv_segment *segs;
    int nsegs;
    float *host_rec;          /* pinned copy of the chunk's records */
    float *host_q;            /* pinned copy of the chunk's queries */
    int64_t *host_cnt;
    cudaStream_t stream;
};

/* ---- kernels ------------------------------------------------------------------------------------ */

/* src [n][hkv][d] -> dst [hkv][cap][d] at rows off.., minus mu [hkv][d] when given. */
__global__ void center_kernel(const float *__restrict__ src, float *__restrict__ dst, int64_t n,
                              int hkv, int d, int64_t cap, int64_t off, const double *__restrict__ mu) {
    int64_t total = n * hkv * d;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int x = (int)(i % d);
        int64_t rg = i / d;
        int g = (int)(rg % hkv);
        int64_t r = rg / hkv;
        float val = src[i];
        if (mu) val = (float)((double)val - mu[g * d + x]);
        dst[((int64_t)g * cap + off + r) * d + x] = val;
    }
}

/* Sums over a key range of kv head g: out[i*d + j] = sum k^[i] v[j]; out[d*d + i] = sum k^[i];
 * out[d*d + d + j] = sum v[j]. Block (job, 32x32 output tile), 256 threads (32 x 8, 4 rows each).
 * ATOMIC: job = piece * hkv + g, keys [c0 + piece*ADV_PIECE, ...) up to target, added in fp64 to
 * dst_d[g]. Otherwise job = tau * hkv + g, keys [bounds[tau], bounds[tau+1]), written to dst_f[job]. */
template <bool ATOMIC>
__global__ void outer_kernel(const float *__restrict__ kh, const float *__restrict__ v, int64_t cap,
                             int d, int hkv, const int64_t *__restrict__ bounds, int64_t c0,
                             int64_t target, float *__restrict__ dst_f, double *__restrict__ dst_d) {
    __shared__ float ks[32][33], vs[32][33];
    int job = blockIdx.x, g = job % hkv;
    int64_t jj = job / hkv, t0, t1;
    if (ATOMIC) {
        t0 = c0 + jj * ADV_PIECE;
        t1 = t0 + ADV_PIECE < target ? t0 + ADV_PIECE : target;
    } else {
        t0 = bounds[jj];
        t1 = bounds[jj + 1];
    }
    int64_t P = (int64_t)d * d + 2 * d;
    int ncol = (d + 31) / 32, i0 = (blockIdx.y / ncol) * 32, j0 = (blockIdx.y % ncol) * 32;
    int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const float *kg = kh + (int64_t)g * cap * d, *vg = v + (int64_t)g * cap * d;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t t = t0; t < t1; t += 32) {
        for (int u = ty; u < 32; u += 8) {
            int64_t tt = t + u;
            ks[u][tx] = (tt < t1 && i0 + tx < d) ? kg[tt * d + i0 + tx] : 0.f;
            vs[u][tx] = (tt < t1 && j0 + tx < d) ? vg[tt * d + j0 + tx] : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int u = 0; u < 32; u++) {
            float b = vs[u][tx];
#pragma unroll
            for (int w = 0; w < 4; w++) acc[w] += ks[u][ty + 8 * w] * b;
        }
        __syncthreads();
    }
    for (int w = 0; w < 4; w++) {
        int i = i0 + ty + 8 * w, j = j0 + tx;
        if (i >= d || j >= d) continue;
        if (ATOMIC) atomicAdd(&dst_d[g * P + (int64_t)i * d + j], (double)acc[w]);
        else dst_f[job * P + (int64_t)i * d + j] = acc[w];
    }
    if (blockIdx.y == 0) {
        for (int x = threadIdx.x; x < d; x += blockDim.x) {
            float sk = 0.f, sv = 0.f;
            for (int64_t t = t0; t < t1; t++) {
                sk += kg[t * d + x];
                sv += vg[t * d + x];
            }
            if (ATOMIC) {
                atomicAdd(&dst_d[g * P + (int64_t)d * d + x], (double)sk);
                atomicAdd(&dst_d[g * P + (int64_t)d * d + d + x], (double)sv);
            } else {
                dst_f[job * P + (int64_t)d * d + x] = sk;
                dst_f[job * P + (int64_t)d * d + d + x] = sv;
            }
        }
    }
}

/* st[tau][g][e] = run[g][e] + sum_{tau' < tau} ds[tau'][g][e]; run advances past every tile.
 * Not moving: st[0] = run. */
__global__ void prefix_kernel(double *__restrict__ run, const float *__restrict__ ds,
                              float *__restrict__ st, int64_t n, int ntiles, int moving) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        double a = run[i];
        if (!moving) {
            st[i] = (float)a;
            continue;
        }
        for (int t = 0; t < ntiles; t++) {
            st[(int64_t)t * n + i] = (float)a;
            a += ds[(int64_t)t * n + i];
        }
        run[i] = a;
    }
}

/* One block per (query head hh = blockIdx.x, tile = blockIdx.y) of rows [r0 + tile*TT, ...).
 * Dynamic shared memory: qs [TT][d+1] (scaled queries), x [TT][TT+1], kt [TT][d+1], vt [TT][d].
 * The +1 pads keep the loops where a warp's threads walk rows (x = q k^T, lin) on 32 different
 * banks: unpadded, a row stride of d (a multiple of 32) puts all 32 threads on one bank, a 32-way
 * conflict that dominates the kernel's time (the padding row of bench/NOTES_TAYLOR.md's GPU table). */
__global__ void out_kernel(const float *__restrict__ q, const float *__restrict__ kh,
                           const float *__restrict__ v, const float *__restrict__ st,
                           const int64_t *__restrict__ cnt, float *__restrict__ rec, int64_t cap,
                           int h, int hkv, int d, float scale, int64_t r0, int64_t nr, int moving) {
    extern __shared__ float sm[];
    const int dp = d + 1, xp = TT + 1;                 /* padded row strides */
    float *qs = sm, *x = qs + TT * dp, *kt = x + TT * xp, *vt = kt + TT * dp;
    int hh = blockIdx.x, tile = blockIdx.y, g = hh / (h / hkv);
    int64_t a = r0 + (int64_t)tile * TT;
    int n = (int)(r0 + nr - a < TT ? r0 + nr - a : TT);
    int64_t P = (int64_t)d * d + 2 * d, R = 2 * (int64_t)d + 2;
    const float *S = st + ((moving ? (int64_t)tile * hkv : 0) + g) * P;
    const float *z = S + (int64_t)d * d, *svs = z + d;
    int64_t k0 = cnt[a];
    int m = (int)(cnt[a + n - 1] - k0);
    for (int i = threadIdx.x; i < TT * d; i += blockDim.x) {
        int r = i / d, c = i % d;
        qs[r * dp + c] = r < n ? scale * q[((a + r) * h + hh) * d + c] : 0.f;
        kt[r * dp + c] = r < m ? kh[((int64_t)g * cap + k0 + r) * d + c] : 0.f;
        vt[i] = r < m ? v[((int64_t)g * cap + k0 + r) * d + c] : 0.f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < TT * TT; i += blockDim.x) {
        int r = i / TT, t = i % TT;
        float s = 0.f;
        if (r < n && t < m && k0 + t < cnt[a + r])
            for (int c = 0; c < d; c++) s += qs[r * dp + c] * kt[t * dp + c];
        x[r * xp + t] = s;
    }
    __syncthreads();
    /* column c = tid % d, rows rg, rg + RG, ...: one load of S[i][c] serves every row */
    int RG = blockDim.x / d > 0 ? blockDim.x / d : 1;
    int c = threadIdx.x % d, rg = threadIdx.x / d;
    if (rg < RG && threadIdx.x < RG * d) {
        float acc[TT];
#pragma unroll
        for (int u = 0; u < TT; u++) acc[u] = 0.f;
        for (int i = 0; i < d; i++) {
            float s = S[(int64_t)i * d + c];
#pragma unroll
            for (int u = 0; u < TT; u++)
                if (rg + u * RG < n) acc[u] += qs[(rg + u * RG) * dp + i] * s;
        }
#pragma unroll
        for (int u = 0; u < TT; u++) {
            int r = rg + u * RG;
            if (r >= n) continue;
            float o = acc[u], sv = svs[c];
            int vis = (int)(cnt[a + r] - k0);
            for (int t = 0; t < m; t++) o += x[r * xp + t] * vt[t * d + c];
            for (int t = 0; t < vis; t++) sv += vt[t * d + c];
            float *rr = rec + ((a + r) * h + hh) * R;
            rr[2 + c] = sv;
            rr[2 + d + c] = o;
        }
    }
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
        float lin = 0.f;
        for (int i = 0; i < d; i++) lin += qs[r * dp + i] * z[i];
        for (int t = 0; t < TT; t++) lin += x[r * xp + t];
        float *rr = rec + ((a + r) * h + hh) * R;
        rr[0] = (float)cnt[a + r];
        rr[1] = lin;
    }
}

/* ---- host side ---------------------------------------------------------------------------------- */

static int out_smem(int d) { return (int)sizeof(float) * (TT * (d + 1) * 2 + TT * d + TT * (TT + 1)); }

extern "C" int taylor_gpu_create(int device, int64_t kv_rows, int64_t max_rows, int h, int hkv,
                                 int d, taylor_gpu **out) {
    *out = NULL;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        cudaGetLastError();
        return fa_seterr("--mode taylor --backend cuda: no CUDA device is visible");
    }
    if (d > FA_MAX_HEAD_DIM) return fa_seterr("taylor CUDA engine: head dim %d > %d", d, FA_MAX_HEAD_DIM);
    taylor_gpu *e = (taylor_gpu *)fa_calloc(1, sizeof *e, "taylor gpu engine");
    *out = e;
    e->dev = device;
    e->h = h;
    e->hkv = hkv;
    e->d = d;
    e->cap = kv_rows > 0 ? kv_rows : 1;
    e->max_rows = max_rows > 0 ? max_rows : 1;
    e->P = (int64_t)d * d + 2 * d;
    e->nblocks_max = (e->max_rows + (int64_t)BLOCK_TILES * TT - 1) / ((int64_t)BLOCK_TILES * TT);
    int64_t R = taylor_rec_len(d);
    tcheck(cudaSetDevice(device));
    tcheck(cudaStreamCreate(&e->stream));
    tcheck(cudaMalloc(&e->kh, sizeof(float) * (size_t)(hkv * e->cap * d)));
    tcheck(cudaMalloc(&e->v, sizeof(float) * (size_t)(hkv * e->cap * d)));
    tcheck(cudaMalloc(&e->stage, sizeof(float) * (size_t)((int64_t)STAGE_ROWS * hkv * d)));
    tcheck(cudaMalloc(&e->q, sizeof(float) * (size_t)(e->max_rows * h * d)));
    tcheck(cudaMalloc(&e->rec, sizeof(float) * (size_t)(e->max_rows * h * R)));
    tcheck(cudaMalloc(&e->cnt, sizeof(int64_t) * (size_t)e->max_rows));
    tcheck(cudaMalloc(&e->bounds, sizeof(int64_t) * (size_t)(e->nblocks_max * (BLOCK_TILES + 1))));
    tcheck(cudaMalloc(&e->run, sizeof(double) * (size_t)(hkv * e->P)));
    tcheck(cudaMalloc(&e->mu, sizeof(double) * (size_t)(hkv * d)));
    tcheck(cudaMalloc(&e->st, sizeof(float) * (size_t)(BLOCK_TILES * hkv * e->P)));
    tcheck(cudaMalloc(&e->ds, sizeof(float) * (size_t)(BLOCK_TILES * hkv * e->P)));
    tcheck(cudaMallocHost(&e->host_rec, sizeof(float) * (size_t)(e->max_rows * h * R)));
    tcheck(cudaMallocHost(&e->host_q, sizeof(float) * (size_t)(e->max_rows * h * d)));
    tcheck(cudaMallocHost(&e->host_cnt, sizeof(int64_t) * (size_t)(e->max_rows + e->nblocks_max * (BLOCK_TILES + 1))));
    tcheck(cudaFuncSetAttribute(out_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, out_smem(d)));
    return 0;
}

extern "C" int taylor_gpu_load_kv(taylor_gpu *e, const attn_kv_segment *segs, int nsegs,
                                  const double *mu) {
    tcheck(cudaSetDevice(e->dev));
    e->segs = segs;
    e->nsegs = nsegs;
    int64_t row = (int64_t)e->hkv * e->d, off = 0;
    for (int s = 0; s < nsegs; s++) off += segs[s].n;
    if (off > e->cap) return fa_seterr("taylor CUDA engine: %lld keys > room for %lld",
                                       (long long)off, (long long)e->cap);
    e->nkeys = off;
    tcheck(cudaMemcpyAsync(e->mu, mu, sizeof(double) * (size_t)row, cudaMemcpyHostToDevice, e->stream));
    off = 0;
    for (int s = 0; s < nsegs; s++) {
        for (int64_t j = 0; j < segs[s].n; j += STAGE_ROWS) {
            int64_t n = segs[s].n - j < STAGE_ROWS ? segs[s].n - j : STAGE_ROWS;
            int blocks = (int)((n * row + THREADS - 1) / THREADS);
            if (blocks > 4096) blocks = 4096;
            tcheck(cudaMemcpyAsync(e->stage, (const float *)segs[s].k + j * row, sizeof(float) * (size_t)(n * row),
                                   cudaMemcpyHostToDevice, e->stream));
            center_kernel<<<blocks, THREADS, 0, e->stream>>>(e->stage, e->kh, n, e->hkv, e->d, e->cap, off + j, e->mu);
            tcheck(cudaGetLastError());
            tcheck(cudaMemcpyAsync(e->stage, (const float *)segs[s].v + j * row, sizeof(float) * (size_t)(n * row),
                                   cudaMemcpyHostToDevice, e->stream));
            center_kernel<<<blocks, THREADS, 0, e->stream>>>(e->stage, e->v, n, e->hkv, e->d, e->cap, off + j, NULL);
            tcheck(cudaGetLastError());
        }
        off += segs[s].n;
    }
    tcheck(cudaMemsetAsync(e->run, 0, sizeof(double) * (size_t)(e->hkv * e->P), e->stream));
    e->c_run = 0;
    e->global = 0;
    tcheck(cudaStreamSynchronize(e->stream));
    return 0;
}

/* The running state advanced over keys [c_run, target) (fp64 atomics). */
static int advance(taylor_gpu *e, int64_t target) {
    if (target <= e->c_run) return 0;
    int ntc = ((e->d + 31) / 32) * ((e->d + 31) / 32);
    int64_t pieces = (target - e->c_run + ADV_PIECE - 1) / ADV_PIECE;
    dim3 grid((unsigned)(pieces * e->hkv), (unsigned)ntc);
    outer_kernel<true><<<grid, THREADS, 0, e->stream>>>(e->kh, e->v, e->cap, e->d, e->hkv, NULL,
                                                         e->c_run, target, NULL, e->run);
    tcheck(cudaGetLastError());
    e->c_run = target;
    return 0;
}

extern "C" int taylor_gpu_get_state(taylor_gpu *e, double *st) {
    tcheck(cudaSetDevice(e->dev));
    int64_t n = (int64_t)e->hkv * e->P;
    if (e->c_run > e->nkeys) {
        tcheck(cudaMemsetAsync(e->run, 0, sizeof(double) * (size_t)n, e->stream));
        e->c_run = 0;
    }
    if (advance(e, e->nkeys)) return -1;
    tcheck(cudaMemcpyAsync(st, e->run, sizeof(double) * (size_t)n, cudaMemcpyDeviceToHost, e->stream));
    tcheck(cudaStreamSynchronize(e->stream));
    return 0;
}

extern "C" int taylor_gpu_set_state(taylor_gpu *e, const double *st, int64_t nkeys_total) {
    tcheck(cudaSetDevice(e->dev));
    int64_t n = (int64_t)e->hkv * e->P;
    tcheck(cudaMemcpyAsync(e->run, st, sizeof(double) * (size_t)n, cudaMemcpyHostToDevice, e->stream));
    tcheck(cudaStreamSynchronize(e->stream));
    e->global = 1;
    e->count_total = nkeys_total;
    e->c_run = nkeys_total;      /* every row's K_0: no advance, no restart */
    return 0;
}

extern "C" int taylor_gpu_partial(taylor_gpu *e, const attn_queries *q, float *rec, int overwrite) {
    int64_t nk = e->global && !q->causal ? e->count_total : e->nkeys;
    if (e->global && q->causal) {                     /* a causal chunk after set_state */
        tcheck(cudaMemsetAsync(e->run, 0, sizeof(double) * (size_t)(e->hkv * e->P), e->stream));
        e->global = 0;
        e->c_run = 0;
    }
    if (nk == 0 || q->nq == 0) return 0;              /* rec keeps the empty state it holds */
    if (q->nq > e->max_rows) return fa_seterr("taylor CUDA engine: chunk of %lld rows > %lld",
                                              (long long)q->nq, (long long)e->max_rows);
    tcheck(cudaSetDevice(e->dev));
    int d = e->d, hkv = e->hkv, h = e->h;
    int64_t nq = q->nq, R = taylor_rec_len(d), P = e->P, bt = (int64_t)BLOCK_TILES * TT;
    int64_t *cnt = e->host_cnt, *bounds = e->host_cnt + e->max_rows;
    taylor_row_counts(q, e->segs, e->nsegs, nk, cnt);
    int64_t nblocks = (nq + bt - 1) / bt;
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t r0 = b * bt, nr = nq - r0 < bt ? nq - r0 : bt;
        int ntiles = (int)((nr + TT - 1) / TT);
        int64_t *K = bounds + b * (BLOCK_TILES + 1);
        for (int t = 0; t < ntiles; t++) K[t] = cnt[r0 + (int64_t)t * TT];
        K[ntiles] = cnt[r0 + nr - 1];
    }
    tcheck(cudaMemcpyAsync(e->cnt, cnt, sizeof(int64_t) * (size_t)nq, cudaMemcpyHostToDevice, e->stream));
    tcheck(cudaMemcpyAsync(e->bounds, bounds, sizeof(int64_t) * (size_t)(nblocks * (BLOCK_TILES + 1)),
                           cudaMemcpyHostToDevice, e->stream));
    fa_copy_floats(e->host_q, (const float *)q->q, nq * h * d, 0);        /* the queries through pinned memory */
    tcheck(cudaMemcpyAsync(e->q, e->host_q, sizeof(float) * (size_t)(nq * h * d), cudaMemcpyHostToDevice, e->stream));
    int ntc = ((d + 31) / 32) * ((d + 31) / 32);
    int64_t nstate = (int64_t)hkv * P;
    int pblocks = (int)((nstate + THREADS - 1) / THREADS);
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t r0 = b * bt, nr = nq - r0 < bt ? nq - r0 : bt;
        int ntiles = (int)((nr + TT - 1) / TT);
        const int64_t *K = bounds + b * (BLOCK_TILES + 1);
        if (K[0] < e->c_run) {                             /* out of order: start over */
            tcheck(cudaMemsetAsync(e->run, 0, sizeof(double) * (size_t)nstate, e->stream));
            e->c_run = 0;
        }
        if (advance(e, K[0])) return -1;                   /* the running state up to K_0 */
        int moving = K[ntiles] > K[0];
        if (moving) {
            dim3 grid((unsigned)(ntiles * hkv), (unsigned)ntc);
            outer_kernel<false><<<grid, THREADS, 0, e->stream>>>(e->kh, e->v, e->cap, d, hkv,
                                                                  e->bounds + b * (BLOCK_TILES + 1),
                                                                  0, 0, e->ds, NULL);
            tcheck(cudaGetLastError());
            e->c_run = K[ntiles];
        }
        prefix_kernel<<<pblocks, THREADS, 0, e->stream>>>(e->run, e->ds, e->st, nstate, ntiles, moving);
        tcheck(cudaGetLastError());
        dim3 grid((unsigned)h, (unsigned)ntiles);
        out_kernel<<<grid, THREADS, out_smem(d), e->stream>>>(e->q, e->kh, e->v, e->st, e->cnt, e->rec,
                                                              e->cap, h, hkv, d, q->scale, r0, nr, moving);
        tcheck(cudaGetLastError());
    }
    /* through pinned memory (a copy into the caller's pageable records ran at a few GB/s), then
     * copied or added on the host in parallel */
    const int64_t nf = nq * h * R;
    tcheck(cudaMemcpyAsync(e->host_rec, e->rec, sizeof(float) * (size_t)nf, cudaMemcpyDeviceToHost, e->stream));
    tcheck(cudaStreamSynchronize(e->stream));
    fa_copy_floats(rec, e->host_rec, nf, !overwrite);
    return 0;
}

extern "C" void taylor_gpu_destroy(taylor_gpu *e) {
    if (!e) return;
    cudaSetDevice(e->dev);
    cudaFree(e->kh); cudaFree(e->v); cudaFree(e->stage); cudaFree(e->q); cudaFree(e->rec);
    cudaFree(e->cnt); cudaFree(e->bounds); cudaFree(e->run); cudaFree(e->mu);
    cudaFree(e->st); cudaFree(e->ds);
    cudaFreeHost(e->host_rec); cudaFreeHost(e->host_q); cudaFreeHost(e->host_cnt);
    if (e->stream) cudaStreamDestroy(e->stream);
    free(e);
}
