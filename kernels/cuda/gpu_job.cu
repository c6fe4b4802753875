/* gpu_job.cu — one rank's GPU side of a multi-rank job (kernels/gpu_job.h).
 *
 * Built by the top-level Makefile (nvcc ... -c kernels/cuda/gpu_job.cu).
 *
 * Keys and values (T = bf16 or fp16; the rank's key segments in local order, positions rising):
 *   resident  k_res [Hkv][res_cap][D], vt_res [Hkv][D][res_cap]: the first plan.resident_rows keys,
 *             each segment starting at a multiple of 64 rows
 *   paged     pinned host blocks of block_rows keys, each K [Hkv][B][D] then V^T [Hkv][D][B];
 *             a ring of `ring` device block buffers filled on the copy stream
 * A chunk's keys are a list of pieces (resident runs and paged blocks). Its compute is one
 * kernel launch per visible piece on the compute stream, each continuing from the state the last
 * left in the slot's records; a paged piece waits for its block's copy (event ring_ready) and
 * frees the ring buffer when done (event ring_free), so up to `ring` copies run ahead of compute.
 * Pieces past the last query's causal horizon are skipped, and their blocks never copied.
 *
 * Merge through NCCL (no custom reductions there): on the communication stream, after the
 * chunk's compute event: row maxima m -> AllReduce(max); rescale every record by exp(m_i - m)
 * (0 when m_i = -inf, so fully masked rows never make NaN) -> Reduce(sum) of the records to the
 * root, which finalizes o = o/l, lse = m + log l on the device. */
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "kernels/cuda/flash.h"
extern "C" {
#include "kernels/gpu_job.h"
#include "io/convert.h"
#include "base/common.h"
}
#include "kernels/cuda/checks.h"

#define RING_MAX 8

struct piece {
    int paged;          /* 0: resident run at row `off` of the resident region; 1: paged block */
    int64_t off;        /* resident: row offset; paged: block index */
    int64_t n, pos0;    /* keys, global position of the first */
};

struct gpu_job {
    gpu_job_cfg c;
    int use_mask;                     /* the job's mask is more than full or causal */
    attn_mask dmask;                  /* it, with its tables in device memory */
    void *d_cu, *d_alibi;             /* those tables */
    int64_t D;
    size_t es;                        /* bytes per element of T */
    cudaStream_t compute, copy, comm;
    cudaStream_t d2h;                 /* results to the host: waits for its own chunk's merge only */
    int nccl_rank;
    void *k_res, *vt_res;
    int64_t res_cap;
    unsigned char *host_blocks;       /* pinned */
    int64_t nblocks, blocks_cap;
    void *ring[RING_MAX];
    cudaEvent_t ring_ready[RING_MAX], ring_free[RING_MAX], copy0[RING_MAX], copy1[RING_MAX];
    int ring_used[RING_MAX], copy_pending[RING_MAX];
    int64_t ring_seq;
    piece *pieces;
    int npieces;
    /* per slot */
    void **q;
    float **rec, **mbuf, **o_fin, **lse_fin;
    cudaEvent_t *c0, *c1, *m0, *m1;   /* compute and merge, timed */
    cudaEvent_t *f1;                  /* the slot's merge and finalize done: its buffers free */
    int *computed, *merging, *finalized;
    int64_t *merge_bytes;
    /* staging */
    float *h_stage, *d_stage, *h_out;
    int64_t stage_floats;
    cudaEvent_t stage_free;
    cudaEvent_t first_c0;             /* start of the first chunk's compute */
    int started, last_slot;
    gpu_job_stats st;
};

/* ---- small kernels ------------------------------------------------------------------------------ */
#include "kernels/cuda/convert.cuh"

/* records [n] {m, l, o[D]}: fresh state */
__global__ void rec_init(float *rec, int64_t n, int d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * (d + 2); i += (int64_t)gridDim.x * blockDim.x)
        rec[i] = (i % (d + 2)) == 0 ? -INFINITY : 0.0f;
}

__global__ void rec_max(const float *rec, float *m, int64_t n, int d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        m[i] = rec[i * (d + 2)];
}

/* scale each record to the global max m: l, o *= 2^(m_i - m) (0 for a shard that saw nothing);
 * device states hold m in base-2 units (flash_params.rec_log2) */
__global__ void rec_rescale(float *rec, const float *m, int64_t n, int d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.y + threadIdx.y; i < n; i += (int64_t)gridDim.x * blockDim.y) {
        float *r = rec + i * (d + 2);
        float mi = r[0], mg = m[i];
        float f = (mi == -INFINITY || mg == -INFINITY) ? 0.0f : exp2f(mi - mg);
        for (int e = threadIdx.x; e < d + 1; e += blockDim.x) r[1 + e] *= f;
        __syncwarp();                          /* a row is one warp: all have read r[0] */
        if (threadIdx.x == 0) r[0] = 0.0f;     /* summed by the Reduce; the max is in m */
    }
}

/* o [n][D] = o/l (0 when l = 0), lse [n] = m·ln 2 + log l (-inf when l = 0); m (base 2) from
 * mglob or the record */
__global__ void rec_final(const float *rec, const float *mglob, float *o, float *lse, int64_t n, int d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.y + threadIdx.y; i < n; i += (int64_t)gridDim.x * blockDim.y) {
        const float *r = rec + i * (d + 2);
        float l = r[1], m = mglob ? mglob[i] : r[0];
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int e = threadIdx.x; e < d; e += blockDim.x) o[i * d + e] = r[2 + e] * inv;
        if (threadIdx.x == 0) lse[i] = l > 0.0f ? m * 0.6931471805599453f + logf(l) : -INFINITY;
    }
}

static unsigned grid_for(int64_t n, int per) {
    int64_t b = (n + per - 1) / per;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 4 ? 65535 * 4 : b);
}

/* ---- helpers ------------------------------------------------------------------------------------ */
extern "C" double gpu_link_gbps(int device) {
    if (cudaSetDevice(device) != cudaSuccess) { cudaGetLastError(); return 0; }
    const size_t bytes = (size_t)256 << 20;
    void *h = NULL, *d = NULL;
    if (cudaMallocHost(&h, bytes) != cudaSuccess || cudaMalloc(&d, bytes) != cudaSuccess) {
        cudaGetLastError();
        if (h) cudaFreeHost(h);
        return 0;
    }
    memset(h, 1, bytes);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    float best = 1e30f;
    for (int i = 0; i < 3; i++) {
        cudaEventRecord(a);
        cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice);
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (ms < best) best = ms;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(d);
    cudaFreeHost(h);
    return bytes / (best * 1e-3) / 1e9;
}

extern "C" int64_t gpu_free_bytes(int device) {
    size_t fr = 0, tot = 0;
    if (cudaSetDevice(device) != cudaSuccess || cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return (int64_t)fr;
}

extern "C" int gpu_uuid(int device, unsigned char uuid[16]) {
    cudaDeviceProp pr;
    if (cudaGetDeviceProperties(&pr, device) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    memcpy(uuid, pr.uuid.bytes, 16);
    return 0;
}

static void *dalloc(size_t bytes, const char *what, int dev) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) {
        cudaGetLastError();
        fa_seterr("GPU %d: out of device memory for %s (%.2f GiB)", dev, what, bytes / 1073741824.0);
        return NULL;
    }
    return p;
}

/* ---- create / destroy --------------------------------------------------------------------------- */
extern "C" int gpu_job_create(const gpu_job_cfg *cfg, gpu_job **out) {
    *out = NULL;
    if (cfg->d != 64 && cfg->d != 128) return fa_seterr("the CUDA engine supports head dims 64 and 128, not %d", cfg->d);
    if (cudaSetDevice(cfg->device) != cudaSuccess) {
        cudaGetLastError();
        return fa_seterr("cannot use CUDA device %d", cfg->device);
    }
    if (!flash_variant_available(FLASH_AUTO)) return fa_seterr("CUDA device %d is older than sm_80", cfg->device);
#ifndef FA_HAVE_NCCL
    if (cfg->nccl_size > 1) return fa_seterr("this fa_long was built without NCCL");
#endif
    gpu_job *g = (gpu_job *)fa_calloc(1, sizeof *g, "gpu job");
    g->c = *cfg;
    g->c.mask = NULL;                 /* the host's mask is the caller's: only dmask is kept */
    g->D = cfg->d;
    g->es = 2;
    const kv_plan *pl = &g->c.plan;
    const int S = cfg->slots, H = cfg->h, Hkv = cfg->hkv;
    const int64_t R = cfg->max_rows, D = g->D;
    int ok = 1;
    cudaCheck(cudaStreamCreateWithFlags(&g->compute, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreateWithFlags(&g->copy, cudaStreamNonBlocking));
    /* merges and finalize kernels at the highest priority: their blocks take the first SMs the
     * next chunk's flash blocks free, instead of waiting for that whole kernel */
    int prio_least = 0, prio_greatest = 0;
    cudaCheck(cudaDeviceGetStreamPriorityRange(&prio_least, &prio_greatest));
    cudaCheck(cudaStreamCreateWithPriority(&g->comm, cudaStreamNonBlocking, prio_greatest));
    /* the owner's copy of a merged chunk must not queue behind the later chunks' merges on the
     * comm stream (each waits for its chunk's compute): the host would wait for two more chunks'
     * compute before reading the next queries, and the GPU would then idle while it reads */
    cudaCheck(cudaStreamCreateWithFlags(&g->d2h, cudaStreamNonBlocking));
#ifdef FA_HAVE_NCCL
    if (cfg->nccl_size > 1) ncclCheck(ncclCommUserRank((ncclComm_t)cfg->nccl_comm, &g->nccl_rank));
#endif
    /* room for each segment to start at a multiple of 64 rows */
    g->res_cap = pl->resident_rows > 0 ? (pl->resident_rows + 63) / 64 * 64 + 64 * 64 : 64;
    size_t resb = (size_t)Hkv * g->res_cap * D * g->es;
    ok = ok && (g->k_res = dalloc(resb, "resident keys", cfg->device)) && (g->vt_res = dalloc(resb, "resident values", cfg->device));
    if (ok) {
        cudaCheck(cudaMemset(g->k_res, 0, resb));        /* gaps between segments stay finite */
        cudaCheck(cudaMemset(g->vt_res, 0, resb));
    }
    if (ok && pl->paged_rows > 0) {
        int ring = pl->ring < RING_MAX ? pl->ring : RING_MAX;
        for (int r = 0; r < ring && ok; r++) ok = (g->ring[r] = dalloc((size_t)pl->block_bytes, "paging ring", cfg->device)) != NULL;
        for (int r = 0; r < ring; r++) {
            cudaCheck(cudaEventCreateWithFlags(&g->ring_ready[r], cudaEventDisableTiming));
            cudaCheck(cudaEventCreateWithFlags(&g->ring_free[r], cudaEventDisableTiming));
            cudaCheck(cudaEventCreate(&g->copy0[r]));
            cudaCheck(cudaEventCreate(&g->copy1[r]));
        }
        /* the pinned host blocks are sized in gpu_job_load_kv, from the segments */
    }
    g->q = (void **)fa_calloc(S, sizeof(void *), "slots");
    g->rec = (float **)fa_calloc(S, sizeof(float *), "slots");
    g->mbuf = (float **)fa_calloc(S, sizeof(float *), "slots");
    g->o_fin = (float **)fa_calloc(S, sizeof(float *), "slots");
    g->lse_fin = (float **)fa_calloc(S, sizeof(float *), "slots");
    g->c0 = (cudaEvent_t *)fa_calloc(S, sizeof(cudaEvent_t), "slots");
    g->c1 = (cudaEvent_t *)fa_calloc(S, sizeof(cudaEvent_t), "slots");
    g->m0 = (cudaEvent_t *)fa_calloc(S, sizeof(cudaEvent_t), "slots");
    g->m1 = (cudaEvent_t *)fa_calloc(S, sizeof(cudaEvent_t), "slots");
    g->f1 = (cudaEvent_t *)fa_calloc(S, sizeof(cudaEvent_t), "slots");
    g->computed = (int *)fa_calloc(S, sizeof(int), "slots");
    g->merging = (int *)fa_calloc(S, sizeof(int), "slots");
    g->finalized = (int *)fa_calloc(S, sizeof(int), "slots");
    g->merge_bytes = (int64_t *)fa_calloc(S, sizeof(int64_t), "slots");
    for (int s = 0; s < S && ok; s++) {
        ok = (g->q[s] = dalloc((size_t)H * R * D * g->es, "query chunk", cfg->device)) &&
             (g->rec[s] = (float *)dalloc((size_t)R * H * (D + 2) * 4, "chunk state", cfg->device)) &&
             (g->mbuf[s] = (float *)dalloc((size_t)R * H * 4, "row maxima", cfg->device)) &&
             (g->o_fin[s] = (float *)dalloc((size_t)R * H * D * 4, "final rows", cfg->device)) &&
             (g->lse_fin[s] = (float *)dalloc((size_t)R * H * 4, "final lse", cfg->device));
        cudaCheck(cudaEventCreate(&g->c0[s]));
        cudaCheck(cudaEventCreate(&g->c1[s]));
        cudaCheck(cudaEventCreate(&g->m0[s]));
        cudaCheck(cudaEventCreate(&g->m1[s]));
        cudaCheck(cudaEventCreateWithFlags(&g->f1[s], cudaEventDisableTiming));
    }
    g->stage_floats = R * H * D;
    if (g->stage_floats < ((int64_t)1 << 22)) g->stage_floats = (int64_t)1 << 22;
    if (ok && (cudaMallocHost((void **)&g->h_stage, (size_t)g->stage_floats * 4) != cudaSuccess ||
               cudaMallocHost((void **)&g->h_out, (size_t)R * H * (D + 1) * 4) != cudaSuccess)) {
        cudaGetLastError();
        ok = 0;
        fa_seterr("cannot pin host staging memory");
    }
    ok = ok && (g->d_stage = (float *)dalloc((size_t)g->stage_floats * 4, "staging", cfg->device));
    cudaCheck(cudaEventCreateWithFlags(&g->stage_free, cudaEventDisableTiming));
    cudaCheck(cudaEventCreate(&g->first_c0));
    cudaCheck(cudaEventRecord(g->stage_free, g->compute));
    /* a mask beyond full and causal: its document offsets and ALiBi slopes on the device */
    if (ok && cfg->mask && !mask_is_plain(cfg->mask)) {
        const attn_mask *m = cfg->mask;
        g->use_mask = 1;
        g->dmask = *m;
        const int64_t n = m->ndocs ? m->doc_rows * (m->ndocs + 1) : 0;
        if (n) {
            ok = (g->d_cu = dalloc((size_t)(2 * n) * sizeof(int64_t), "document offsets", cfg->device)) != NULL;
            if (ok) {
                cudaCheck(cudaMemcpy(g->d_cu, m->cu_q, (size_t)n * sizeof(int64_t), cudaMemcpyHostToDevice));
                cudaCheck(cudaMemcpy((int64_t *)g->d_cu + n, m->cu_k, (size_t)n * sizeof(int64_t), cudaMemcpyHostToDevice));
                g->dmask.cu_q = (const int64_t *)g->d_cu;
                g->dmask.cu_k = (const int64_t *)g->d_cu + n;
            }
        }
        if (ok && m->alibi) {
            ok = (g->d_alibi = dalloc((size_t)H * sizeof(float), "alibi slopes", cfg->device)) != NULL;
            if (ok) cudaCheck(cudaMemcpy(g->d_alibi, m->alibi, (size_t)H * sizeof(float), cudaMemcpyHostToDevice));
            g->dmask.alibi = (const float *)g->d_alibi;
        }
    }
    if (!ok) {
        gpu_job_destroy(g);
        return -1;
    }
    *out = g;
    return 0;
}

extern "C" void gpu_job_destroy(gpu_job *g) {
    if (!g) return;
    cudaSetDevice(g->c.device);
    cudaDeviceSynchronize();
    for (int s = 0; s < g->c.slots; s++) {
        if (g->q) cudaFree(g->q[s]);
        if (g->rec) cudaFree(g->rec[s]);
        if (g->mbuf) cudaFree(g->mbuf[s]);
        if (g->o_fin) cudaFree(g->o_fin[s]);
        if (g->lse_fin) cudaFree(g->lse_fin[s]);
        if (g->c0 && g->c0[s]) cudaEventDestroy(g->c0[s]);
        if (g->c1 && g->c1[s]) cudaEventDestroy(g->c1[s]);
        if (g->m0 && g->m0[s]) cudaEventDestroy(g->m0[s]);
        if (g->m1 && g->m1[s]) cudaEventDestroy(g->m1[s]);
        if (g->f1 && g->f1[s]) cudaEventDestroy(g->f1[s]);
    }
    for (int r = 0; r < RING_MAX; r++) {
        cudaFree(g->ring[r]);
        if (g->ring_ready[r]) cudaEventDestroy(g->ring_ready[r]);
        if (g->ring_free[r]) cudaEventDestroy(g->ring_free[r]);
        if (g->copy0[r]) cudaEventDestroy(g->copy0[r]);
        if (g->copy1[r]) cudaEventDestroy(g->copy1[r]);
    }
    cudaFree(g->d_cu);
    cudaFree(g->d_alibi);
    free(g->q); free(g->rec); free(g->mbuf); free(g->o_fin); free(g->lse_fin);
    free(g->c0); free(g->c1); free(g->m0); free(g->m1); free(g->f1); free(g->computed); free(g->merging); free(g->finalized);
    free(g->merge_bytes);
    cudaFree(g->k_res);
    cudaFree(g->vt_res);
    cudaFree(g->d_stage);
    if (g->host_blocks) cudaFreeHost(g->host_blocks);
    if (g->h_stage) cudaFreeHost(g->h_stage);
    if (g->h_out) cudaFreeHost(g->h_out);
    if (g->stage_free) cudaEventDestroy(g->stage_free);
    if (g->first_c0) cudaEventDestroy(g->first_c0);
    if (g->compute) cudaStreamDestroy(g->compute);
    if (g->copy) cudaStreamDestroy(g->copy);
    if (g->comm) cudaStreamDestroy(g->comm);
    if (g->d2h) cudaStreamDestroy(g->d2h);
    free(g->pieces);
    free(g);
}

/* ---- keys and values ---------------------------------------------------------------------------- */
/* fp32 rows [n][heads][D] from the host -> T in the device layout at `dst` (rows or columns). */
static void upload(gpu_job *g, const float *src, int64_t n, int heads, void *dst, int64_t ld, int64_t off, int cols) {
    const int64_t row = (int64_t)heads * g->D, per = g->stage_floats / row;
    for (int64_t r = 0; r < n; r += per) {
        int64_t m = n - r < per ? n - r : per;
        cudaCheck(cudaEventSynchronize(g->stage_free));         /* the staging buffer is free */
        fa_copy_floats(g->h_stage, src + r * row, m * row, 0);
        cudaCheck(cudaMemcpyAsync(g->d_stage, g->h_stage, (size_t)(m * row) * 4, cudaMemcpyHostToDevice, g->compute));
        g->st.bytes_h2d += m * row * 4;
        const int d = (int)g->D;
        if (cols) {
            dim3 grid((unsigned)((d + 31) / 32), (unsigned)((m + 31) / 32), (unsigned)heads), block(32, 8);
            if (g->c.ct == FA_COMPUTE_BF16) convert_transpose<<<grid, block, 0, g->compute>>>(g->d_stage, (__nv_bfloat16 *)dst, m, heads, d, ld, off + r);
            else convert_transpose<<<grid, block, 0, g->compute>>>(g->d_stage, (__half *)dst, m, heads, d, ld, off + r);
        } else {
            unsigned gb = grid_for(m * row / 4, 256);
            if (g->c.ct == FA_COMPUTE_BF16) convert_rows<<<gb, 256, 0, g->compute>>>(g->d_stage, (__nv_bfloat16 *)dst, m, heads, d, ld, off + r);
            else convert_rows<<<gb, 256, 0, g->compute>>>(g->d_stage, (__half *)dst, m, heads, d, ld, off + r);
        }
        cudaCheck(cudaGetLastError());
        cudaCheck(cudaEventRecord(g->stage_free, g->compute));
    }
}

/* One paged block from fp32 host rows: K [Hkv][B][D] and V^T [Hkv][D][B] in T, zero past n.
 * K rows convert in place order; V goes through 64-key x 64-dim tiles so both sides stay in cache. */
static void fill_block(gpu_job *g, unsigned char *blk, const float *k, const float *v, int64_t n) {
    const int64_t B = g->c.plan.block_rows, D = g->D, Hkv = g->c.hkv;
    const int bf = g->c.ct == FA_COMPUTE_BF16;
    uint16_t *kb = (uint16_t *)blk, *vb = kb + Hkv * B * D;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < B; r++)
        for (int64_t hh = 0; hh < Hkv; hh++) {
            uint16_t *dst = kb + (hh * B + r) * D;
            const float *src = k + (r * Hkv + hh) * D;
            for (int64_t dd = 0; dd < D; dd++)
                dst[dd] = r >= n ? 0 : bf ? fa_f32_to_bf16_ref(src[dd]) : fa_f32_to_f16_ref(src[dd]);
        }
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t hh = 0; hh < Hkv; hh++)
        for (int64_t r0 = 0; r0 < B; r0 += 64)
            for (int64_t d0 = 0; d0 < D; d0 += 64)
                for (int64_t dd = d0; dd < d0 + 64 && dd < D; dd++)
                    for (int64_t r = r0; r < r0 + 64 && r < B; r++) {
                        float x = r < n ? v[(r * Hkv + hh) * D + dd] : 0.0f;
                        vb[(hh * D + dd) * B + r] = bf ? fa_f32_to_bf16_ref(x) : fa_f32_to_f16_ref(x);
                    }
}

extern "C" int gpu_job_load_kv(gpu_job *g, const attn_kv_segment *segs, int nsegs) {
    cudaCheck(cudaSetDevice(g->c.device));
    cudaCheck(cudaDeviceSynchronize());                  /* nothing may still read the old keys */
    const kv_plan *pl = &g->c.plan;
    int cap = 16;
    for (int i = 0; i < nsegs; i++) cap += (int)(segs[i].n / (pl->block_rows > 0 ? pl->block_rows : 1)) + 2;
    free(g->pieces);
    g->pieces = (piece *)fa_calloc((size_t)cap, sizeof(piece), "key pieces");
    g->npieces = 0;
    g->nblocks = 0;
    /* pinned host memory for exactly the blocks these segments page (a segment's last block may
     * be partial); kept for the next batch element when it is large enough */
    int64_t need = 0, res_left = pl->resident_rows, off = 0;
    for (int i = 0; i < nsegs; i++) {
        int64_t n = segs[i].n, take = res_left < n ? res_left : n;
        if (n <= 0) continue;
        if (take > 0 && off + take <= g->res_cap) res_left -= take, off += (take + 63) / 64 * 64;
        else take = 0;
        if (pl->block_rows > 0) need += (n - take + pl->block_rows - 1) / pl->block_rows;
    }
    if (need > g->blocks_cap) {
        if (g->host_blocks) cudaCheck(cudaFreeHost(g->host_blocks));
        g->host_blocks = NULL;
        g->blocks_cap = 0;
        if (cudaMallocHost((void **)&g->host_blocks, (size_t)need * pl->block_bytes) != cudaSuccess) {
            cudaGetLastError();
            return fa_seterr("GPU %d: cannot pin %.2f GiB of host memory for %lld paged key blocks", g->c.device,
                             need * (double)pl->block_bytes / 1073741824.0, (long long)need);
        }
        g->blocks_cap = need;
    }
    res_left = pl->resident_rows, off = 0;
    for (int i = 0; i < nsegs; i++) {
        int64_t n = segs[i].n, done = 0;
        if (n <= 0) continue;
        int64_t take = res_left < n ? res_left : n;
        if (take > 0 && off + take <= g->res_cap) {      /* resident head of the segment */
            upload(g, segs[i].k, take, g->c.hkv, g->k_res, g->res_cap, off, 0);
            upload(g, segs[i].v, take, g->c.hkv, g->vt_res, g->res_cap, off, 1);
            g->pieces[g->npieces++] = piece{0, off, take, segs[i].pos0};
            off += (take + 63) / 64 * 64;
            res_left -= take;
            done = take;
        }
        for (; done < n; done += pl->block_rows) {      /* the rest, block by block, to pinned host memory */
            int64_t m = n - done < pl->block_rows ? n - done : pl->block_rows;
            if (g->nblocks >= g->blocks_cap) return fa_seterr("GPU %d: paged key blocks exceed the plan", g->c.device);
            const int64_t row = (int64_t)g->c.hkv * g->D;
            fill_block(g, g->host_blocks + (size_t)g->nblocks * pl->block_bytes, segs[i].k + done * row, segs[i].v + done * row, m);
            g->pieces[g->npieces++] = piece{1, g->nblocks, m, segs[i].pos0 + done};
            g->nblocks++;
        }
    }
    cudaCheck(cudaStreamSynchronize(g->compute));
    return 0;
}

/* ---- compute ------------------------------------------------------------------------------------ */
static void launch(gpu_job *g, int slot, const attn_queries *q, const void *k, int64_t k_hs, const void *vt, int64_t vt_hs,
                   int64_t vt_ld, int64_t n, int64_t pos0, int fresh) {
    flash_params p;
    memset(&p, 0, sizeof p);
    const int64_t D = g->D;
    p.q = g->q[slot];
    p.q_head_stride = g->c.max_rows * D;
    p.q_row_stride = D;
    p.k = k;
    p.k_head_stride = k_hs;
    p.k_row_stride = D;
    p.vt = vt;
    p.vt_head_stride = vt_hs;
    p.vt_row_stride = vt_ld;
    p.nq = q->nq;
    p.nk = n;
    p.h = g->c.h;
    p.hkv = g->c.hkv;
    p.d = (int)D;
    p.dtype = g->c.ct == FA_COMPUTE_BF16 ? FLASH_BF16 : FLASH_FP16;
    p.scale = q->scale;
    p.causal = q->causal;
    p.q_pos0 = q->q_pos0;
    p.k_pos0 = pos0;
    p.diag = q->causal ? q->diag : 0;
    if (g->use_mask) {                /* window, documents, softcap, ALiBi: the kernel's mask.h */
        const attn_mask *m = &g->dmask;
        p.use_mask = 1;
        p.win_left = m->left;
        p.win_right = m->right;
        p.mask_nq = m->nq;
        p.mask_nk = m->nk;
        p.ndocs = m->ndocs;
        p.doc_rows = m->doc_rows;
        p.b = q->b;
        p.cu_q = m->cu_q;
        p.cu_k = m->cu_k;
        p.softcap = m->softcap;
        p.alibi = m->alibi;
    }
    p.rec_in = fresh ? NULL : g->rec[slot];
    p.rec_out = g->rec[slot];
    p.rec_log2 = 1;                   /* device states keep the kernel's base-2 max: exact hand-over */
    p.out_mode = FLASH_OUT_STATE;
    char msg[256];
    /* the configured variant (gpu_job_cfg.variant), when this device runs it; else the best */
    const int variant = g->c.variant > 0 && flash_variant_available(g->c.variant) ? g->c.variant : FLASH_AUTO;
    if (flash_forward(&p, variant, g->compute, msg, sizeof msg)) fa_fail("GPU %d: %s", g->c.device, msg);
}

/* Adds the copy time of ring buffer r's last copy, once it has finished. */
static void account_copy(gpu_job *g, int r) {
    if (!g->copy_pending[r]) return;
    g->copy_pending[r] = 0;
    cudaCheck(cudaEventSynchronize(g->copy1[r]));
    float ms = 0;
    cudaCheck(cudaEventElapsedTime(&ms, g->copy0[r], g->copy1[r]));
    g->st.copy_ms += ms;
}

extern "C" int gpu_job_partial(gpu_job *g, int slot, const attn_queries *q) {
    cudaCheck(cudaSetDevice(g->c.device));
    if (q->nq > g->c.max_rows) return fa_seterr("GPU engine: chunk of %lld rows exceeds %lld", (long long)q->nq, (long long)g->c.max_rows);
    /* the slot's buffers are free once its last merge is done */
    if (g->merging[slot]) cudaCheck(cudaStreamWaitEvent(g->compute, g->f1[slot], 0));
    upload(g, q->q, q->nq, g->c.h, g->q[slot], g->c.max_rows, 0, 0);
    cudaCheck(cudaEventRecord(g->c0[slot], g->compute));
    if (!g->started) cudaCheck(cudaEventRecord(g->first_c0, g->compute));
    g->started = 1;
    g->last_slot = slot;
    const int64_t D = g->D;
    /* the keys the chunk's rows see: [klo, khi) (mask.h: runs grow with the row); pieces
     * (resident runs, paged blocks) outside it are neither launched nor copied */
    attn_mask local;
    const attn_mask *mk = attn_queries_mask(q, &local);
    const mask_run ra = mask_row(mk, q->b, q->q_pos0), rz = mask_row(mk, q->b, q->q_pos0 + q->nq - 1);
    const int64_t klo = ra.lo, khi = rz.hi;
    const kv_plan *pl = &g->c.plan;
    int fresh = 1;
    const int ring = pl->ring < RING_MAX ? pl->ring : RING_MAX;
    for (int i = 0; i < g->npieces; i++) {
        const piece *pc = &g->pieces[i];
        if (pc->pos0 >= khi) break;                       /* positions rise: nothing later is visible */
        if (pc->pos0 + pc->n <= klo) continue;            /* before every row's first visible key */
        if (!pc->paged) {
            launch(g, slot, q, (const char *)g->k_res + (size_t)(pc->off * D) * g->es, g->res_cap * D,
                   (const char *)g->vt_res + (size_t)pc->off * g->es, D * g->res_cap, g->res_cap, pc->n, pc->pos0, fresh);
        } else {
            int r = (int)(g->ring_seq++ % ring);
            account_copy(g, r);
            if (g->ring_used[r]) cudaCheck(cudaStreamWaitEvent(g->copy, g->ring_free[r], 0));
            cudaCheck(cudaEventRecord(g->copy0[r], g->copy));
            cudaCheck(cudaMemcpyAsync(g->ring[r], g->host_blocks + (size_t)pc->off * pl->block_bytes, (size_t)pl->block_bytes,
                                      cudaMemcpyHostToDevice, g->copy));
            cudaCheck(cudaEventRecord(g->copy1[r], g->copy));
            cudaCheck(cudaEventRecord(g->ring_ready[r], g->copy));
            g->ring_used[r] = 1;
            g->copy_pending[r] = 1;
            g->st.bytes_paged += pl->block_bytes;
            g->st.bytes_h2d += pl->block_bytes;
            cudaCheck(cudaStreamWaitEvent(g->compute, g->ring_ready[r], 0));
            const int64_t B = pl->block_rows;
            const char *kb = (const char *)g->ring[r], *vb = kb + (size_t)g->c.hkv * B * D * g->es;
            launch(g, slot, q, kb, B * D, vb, D * B, B, pc->n, pc->pos0, fresh);
            cudaCheck(cudaEventRecord(g->ring_free[r], g->compute));
        }
        fresh = 0;
    }
    if (fresh) rec_init<<<grid_for(q->nq * g->c.h * (D + 2), 256), 256, 0, g->compute>>>(g->rec[slot], q->nq * g->c.h, (int)D);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaEventRecord(g->c1[slot], g->compute));
    g->computed[slot] = 1;
    g->merging[slot] = 0;
    g->finalized[slot] = 0;
    return 0;
}

static void account_compute(gpu_job *g, int slot) {
    if (!g->computed[slot]) return;
    cudaCheck(cudaEventSynchronize(g->c1[slot]));
    float ms = 0;
    cudaCheck(cudaEventElapsedTime(&ms, g->c0[slot], g->c1[slot]));
    g->st.compute_ms += ms;
    g->computed[slot] = 0;
}

extern "C" int gpu_job_state_to_host(gpu_job *g, int slot, int64_t n, float *rec) {
    cudaCheck(cudaSetDevice(g->c.device));
    account_compute(g, slot);
    const size_t bytes = (size_t)n * g->c.h * (g->D + 2) * 4;
    cudaCheck(cudaMemcpy(rec, g->rec[slot], bytes, cudaMemcpyDeviceToHost));
    g->st.bytes_d2h += (int64_t)bytes;
    for (int64_t i = 0; i < n * g->c.h; i++) {          /* base-2 max -> natural units (attn.h) */
        float *m = rec + i * (g->D + 2);
        if (*m != -INFINITY) *m *= 0.6931471805599453f;
    }
    return 0;
}

extern "C" int gpu_job_merge_start(gpu_job *g, int slot, int64_t n, int root) {
    cudaCheck(cudaSetDevice(g->c.device));
    if (g->c.nccl_size <= 1) {
        /* one rank: nothing to merge; finalize on the compute stream right behind the chunk, so
         * the result is ready when the host asks (a kernel on another stream would wait for the
         * next chunk's kernels to leave it room on the SMs) */
        const int64_t rows = n * g->c.h;
        cudaCheck(cudaEventRecord(g->m0[slot], g->compute));
        rec_final<<<grid_for(rows, 8), dim3(32, 8), 0, g->compute>>>(g->rec[slot], NULL, g->o_fin[slot], g->lse_fin[slot], rows, (int)g->D);
        cudaCheck(cudaGetLastError());
        cudaCheck(cudaEventRecord(g->m1[slot], g->compute));
        cudaCheck(cudaEventRecord(g->f1[slot], g->compute));
        g->merging[slot] = 1;
        g->finalized[slot] = 1;
        return 0;
    }
    g->finalized[slot] = 0;
    cudaCheck(cudaStreamWaitEvent(g->comm, g->c1[slot], 0));
    cudaCheck(cudaEventRecord(g->m0[slot], g->comm));
    const int64_t rows = n * g->c.h;
    const int d = (int)g->D;
    rec_max<<<grid_for(rows, 256), 256, 0, g->comm>>>(g->rec[slot], g->mbuf[slot], rows, d);
    cudaCheck(cudaGetLastError());
#ifdef FA_HAVE_NCCL   /* nccl_size > 1 only in NCCL builds: gpu_job_create refuses it otherwise */
    ncclComm_t comm = (ncclComm_t)g->c.nccl_comm;
    ncclCheck(ncclAllReduce(g->mbuf[slot], g->mbuf[slot], (size_t)rows, ncclFloat, ncclMax, comm, g->comm));
    dim3 blk(32, 8);
    rec_rescale<<<grid_for(rows, 8), blk, 0, g->comm>>>(g->rec[slot], g->mbuf[slot], rows, d);
    cudaCheck(cudaGetLastError());
    ncclCheck(ncclReduce(g->rec[slot], g->rec[slot], (size_t)(rows * (d + 2)), ncclFloat, ncclSum, root, comm, g->comm));
    g->st.bytes_nccl += rows * 4 + rows * (d + 2) * 4;
    g->merge_bytes[slot] = rows * 4 + rows * (d + 2) * 4;
#endif
    cudaCheck(cudaEventRecord(g->m1[slot], g->comm));
    if (root == g->nccl_rank) {                          /* the owner finalizes right behind it */
        rec_final<<<grid_for(rows, 8), dim3(32, 8), 0, g->comm>>>(g->rec[slot], g->mbuf[slot], g->o_fin[slot], g->lse_fin[slot], rows, d);
        cudaCheck(cudaGetLastError());
        g->finalized[slot] = 1;
    }
    cudaCheck(cudaEventRecord(g->f1[slot], g->comm));
    g->merging[slot] = 1;
    return 0;
}

extern "C" int gpu_job_merge_wait(gpu_job *g, int slot) {
    cudaCheck(cudaSetDevice(g->c.device));
    account_compute(g, slot);                 /* waits for the chunk's compute: not communication */
    if (g->merging[slot]) {
        const double t0 = fa_now();
        cudaCheck(cudaEventSynchronize(g->m1[slot]));
        if (g->c.nccl_size > 1) g->st.exposed_ms += (fa_now() - t0) * 1e3;
        float ms = 0;
        cudaCheck(cudaEventElapsedTime(&ms, g->m0[slot], g->m1[slot]));
        g->st.comm_ms += ms;
        if (g->c.nccl_size > 1 && g->merge_bytes[slot] > 0 && (g->st.comm_min_ms <= 0 || ms < g->st.comm_min_ms)) {
            g->st.comm_min_ms = ms;
            g->st.comm_min_bytes = g->merge_bytes[slot];
        }
    }
    return 0;
}

extern "C" int gpu_job_final_to_host(gpu_job *g, int slot, int64_t n, float *o, float *lse) {
    cudaCheck(cudaSetDevice(g->c.device));
    const int64_t rows = n * g->c.h, D = g->D;
    dim3 blk(32, 8);
    /* after a merge the global maxima are in mbuf (the records' m fields were zeroed) */
    const float *mg = g->merging[slot] && g->c.nccl_size > 1 ? g->mbuf[slot] : NULL;
    if (g->merging[slot]) cudaCheck(cudaStreamWaitEvent(g->d2h, g->f1[slot], 0));
    else cudaCheck(cudaStreamWaitEvent(g->d2h, g->c1[slot], 0));
    if (!g->finalized[slot]) {
        rec_final<<<grid_for(rows, 8), blk, 0, g->d2h>>>(g->rec[slot], mg, g->o_fin[slot], g->lse_fin[slot], rows, (int)D);
        cudaCheck(cudaGetLastError());
    }
    g->finalized[slot] = 0;
    cudaCheck(cudaMemcpyAsync(g->h_out, g->o_fin[slot], (size_t)(rows * D) * 4, cudaMemcpyDeviceToHost, g->d2h));
    cudaCheck(cudaMemcpyAsync(g->h_out + rows * D, g->lse_fin[slot], (size_t)rows * 4, cudaMemcpyDeviceToHost, g->d2h));
    cudaCheck(cudaStreamSynchronize(g->d2h));
    fa_copy_floats(o, g->h_out, rows * D, 0);
    memcpy(lse, g->h_out + rows * D, (size_t)rows * 4);
    g->st.bytes_d2h += rows * (D + 1) * 4;
    g->merging[slot] = 0;
    return 0;
}

/* At the end: compute-stream idle time from the first chunk's start to the last one's end (host
 * late, copies, merges: any cause). */
extern "C" void gpu_job_get_stats(gpu_job *g, gpu_job_stats *s) {
    cudaSetDevice(g->c.device);
    for (int slot = 0; slot < g->c.slots; slot++) account_compute(g, slot);
    if (g->started) {
        cudaCheck(cudaEventSynchronize(g->c1[g->last_slot]));
        float span = 0;
        cudaCheck(cudaEventElapsedTime(&span, g->first_c0, g->c1[g->last_slot]));
        g->st.idle_ms = span > g->st.compute_ms ? span - g->st.compute_ms : 0;
    }
    for (int r = 0; r < RING_MAX; r++) account_copy(g, r);
    *s = g->st;
}
