/* gpu_job.cu — one rank's GPU side of a multi-rank job (kernels/gpu_job.h).
 *
 * Built by the top-level Makefile (nvcc ... -c kernels/cuda/gpu_job.cu).
 *
 * Keys and values (T = bf16 or fp16; the rank's key segments in local order, positions rising;
 * the host hands them over as float32 or as the file's float16/bfloat16, converted to T here):
 *   resident  k_res [Hkv][res_cap][D], vt_res [Hkv][D][res_cap]: the first plan.resident_rows keys,
 *             each segment starting at a multiple of 64 rows; uploaded on the copy stream, each
 *             piece recording its event (ready) that the compute stream waits for
 *   paged     pinned host blocks of block_rows keys, each K [Hkv][B][D] then V^T [Hkv][D][B];
 *             a ring of `ring` device block buffers filled on the copy stream
 * A chunk's keys are a list of pieces (resident runs, split every cfg.piece_rows rows from each
 * segment's start, rounded up to 256, and paged blocks). Its compute is one kernel launch per visible piece on the
 * compute stream, each continuing from the state the last left in the slot's records; a paged
 * piece waits for its block's copy (event ring_ready) and frees the ring buffer when done (event
 * ring_free), so up to `ring` copies run ahead of compute. Pieces past the last query's causal
 * horizon are skipped, and their blocks never copied. Streamed keys (kv_begin, kv_ready): the
 * rows handed in are copied out at once (uploaded, or laid out in their pinned block), so the
 * host may reuse their memory (the pipeline's ring of key blocks); a piece is ready once its
 * last row is, and a chunk computed meanwhile launches on the pieces ready so far, in order, and
 * on the others as they come: the same launches as when every key is there first, so the same
 * bits.
 *
 * The chunk's output leaves the device as the host wants it (cfg.o_type): float32, or the file's
 * 16-bit type, rounded here (to nearest even, as the host's conversion does).
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
    int64_t lrow;       /* the rank's row (segments in order) of its first key */
    int seg;            /* its segment */
    cudaEvent_t ready;  /* resident: its upload done (copy stream) */
};

/* A pinned host staging buffer and its device twin, for uploads on one stream. */
struct stage {
    unsigned char *h, *d;
    int64_t bytes;
    cudaEvent_t free_ev;  /* the last upload through it is done */
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
    int npieces, nready_ev;           /* pieces; events created in them */
    const attn_kv_segment *segs;      /* the batch element's (kv_begin) */
    int nsegs;
    int64_t kv_total;
    int64_t kv_next;                  /* rows [0, kv_next) handed in (kv_ready) */
    int prepared;                     /* pieces [0, prepared) uploaded or laid out */
    int *slot_next, *slot_fresh;      /* per slot: next piece to launch, no launch yet */
    /* per slot: the compute spans of a chunk computed in stages (pairs of timed events) */
    cudaEvent_t **sev;
    int *nsev, *capsev;
    /* per slot */
    void **q;
    float **rec, **mbuf, **o_fin, **lse_fin;
    cudaEvent_t *c0, *c1, *m0, *m1;   /* compute and merge, timed */
    cudaEvent_t *f1;                  /* the slot's merge and finalize done: its buffers free */
    int *computed, *merging, *finalized;
    int64_t *merge_bytes;
    /* staging: the queries' (compute stream), the keys' (copy stream, two halves: one fills
     * while the other's copy runs) */
    stage qst, kst[2];
    int kst_next;
    unsigned char *h_out;
    int oes;                          /* bytes per element of o to the host */
    cudaEvent_t first_c0;             /* start of the first chunk's compute */
    int started, last_slot;
    int done_slot;                    /* the slot of the last chunk enqueued whole (-1: none) */
    gpu_job_stats st;
};

/* ---- small kernels ------------------------------------------------------------------------------ */
#include "kernels/cuda/convert.cuh"    /* from_f32, to_f32, convert_rows, convert_transpose */

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

/* o [n][D] = o/l (0 when l = 0) in OT, lse [n] = m·ln 2 + log l (-inf when l = 0); m (base 2)
 * from mglob or the record */
template <typename OT>
__global__ void rec_final(const float *rec, const float *mglob, OT *o, float *lse, int64_t n, int d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.y + threadIdx.y; i < n; i += (int64_t)gridDim.x * blockDim.y) {
        const float *r = rec + i * (d + 2);
        float l = r[1], m = mglob ? mglob[i] : r[0];
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int e = threadIdx.x; e < d; e += blockDim.x) o[i * d + e] = from_f32<OT>(r[2 + e] * inv);
        if (threadIdx.x == 0) lse[i] = l > 0.0f ? m * 0.6931471805599453f + logf(l) : -INFINITY;
    }
}

static unsigned grid_for(int64_t n, int per) {
    int64_t b = (n + per - 1) / per;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 4 ? 65535 * 4 : b);
}

/* The slot's records finalized into o_fin (in the host's o type) and lse_fin, on stream st. */
static void launch_final(gpu_job *g, int slot, const float *mg, int64_t rows, cudaStream_t st) {
    const dim3 blk(32, 8);
    const unsigned gr = grid_for(rows, 8);
    const int d = (int)g->D;
    void *o = g->o_fin[slot];
    if (g->c.o_type == ATTN_BF16)
        rec_final<<<gr, blk, 0, st>>>(g->rec[slot], mg, (__nv_bfloat16 *)o, g->lse_fin[slot], rows, d);
    else if (g->c.o_type == ATTN_F16)
        rec_final<<<gr, blk, 0, st>>>(g->rec[slot], mg, (__half *)o, g->lse_fin[slot], rows, d);
    else
        rec_final<<<gr, blk, 0, st>>>(g->rec[slot], mg, (float *)o, g->lse_fin[slot], rows, d);
    cudaCheck(cudaGetLastError());
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

/* gpu_uuid: kernels/cuda/engine.cu, beside gpu_describe (the driver's calls) */

static int elem_size(int t) { return t == ATTN_F32 ? 4 : 2; }

static void *dalloc(size_t bytes, const char *what, int dev) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) {
        cudaGetLastError();
        fa_seterr("GPU %d: out of device memory for %s (%.2f GiB)", dev, what, bytes / 1073741824.0);
        return NULL;
    }
    return p;
}

static int stage_make(stage *st, int64_t bytes, int dev) {
    st->bytes = bytes;
    if (cudaMallocHost((void **)&st->h, (size_t)bytes) != cudaSuccess) {
        cudaGetLastError();
        st->h = NULL;
        return fa_seterr("GPU %d: cannot pin %.2f GiB of host staging memory", dev, bytes / 1073741824.0);
    }
    if (!(st->d = (unsigned char *)dalloc((size_t)bytes, "staging", dev))) return -1;
    cudaCheck(cudaEventCreateWithFlags(&st->free_ev, cudaEventDisableTiming));
    return 0;
}

static void stage_free(stage *st) {
    if (st->h) cudaFreeHost(st->h);
    cudaFree(st->d);
    if (st->free_ev) cudaEventDestroy(st->free_ev);
    memset(st, 0, sizeof *st);
}

/* ---- create / destroy --------------------------------------------------------------------------- */
extern "C" int gpu_job_create(const gpu_job_cfg *cfg, gpu_job **out) {
    *out = NULL;
    if (!flash_head_dim_supported(cfg->d))
        return fa_seterr("the CUDA engine computes head dims that are multiples of 8 up to %d, not %d", FLASH_HEAD_DIM_MAX, cfg->d);
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
    g->done_slot = -1;
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
    g->slot_next = (int *)fa_calloc(S, sizeof(int), "slots");
    g->slot_fresh = (int *)fa_calloc(S, sizeof(int), "slots");
    g->sev = (cudaEvent_t **)fa_calloc(S, sizeof(cudaEvent_t *), "slots");
    g->nsev = (int *)fa_calloc(S, sizeof(int), "slots");
    g->capsev = (int *)fa_calloc(S, sizeof(int), "slots");
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
    /* staging: the queries' holds a chunk in q's host type (at least 16 MiB), the keys' two
     * halves of 8 MiB (kernels/paging.c counts a chunk of float32 and 64 MiB besides); the
     * output's a chunk of o in its host type and its lse. Pinning costs ~0.3 s a GB at the
     * engine's start: sized by the transfer types, a bf16 job pins half of float32's. */
    int64_t qbytes = R * H * D * elem_size(cfg->q_type);
    if (qbytes < ((int64_t)16 << 20)) qbytes = (int64_t)16 << 20;
    ok = ok && stage_make(&g->qst, qbytes, cfg->device) == 0 && stage_make(&g->kst[0], (int64_t)8 << 20, cfg->device) == 0 &&
         stage_make(&g->kst[1], (int64_t)8 << 20, cfg->device) == 0;
    g->oes = cfg->o_type == ATTN_F32 ? 4 : 2;
    if (ok && cudaMallocHost((void **)&g->h_out, (size_t)(R * H * (D * g->oes + 4))) != cudaSuccess) {
        cudaGetLastError();
        g->h_out = NULL;
        ok = 0;
        fa_seterr("cannot pin host staging memory");
    }
    cudaCheck(cudaEventCreate(&g->first_c0));
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
    for (int s = 0; g->sev && s < g->c.slots; s++) {
        for (int k = 0; k < g->capsev[s]; k++) cudaEventDestroy(g->sev[s][k]);
        free(g->sev[s]);
    }
    free(g->sev); free(g->nsev); free(g->capsev); free(g->slot_next); free(g->slot_fresh);
    for (int i = 0; i < g->nready_ev; i++) cudaEventDestroy(g->pieces[i].ready);
    cudaFree(g->k_res);
    cudaFree(g->vt_res);
    stage_free(&g->qst);
    stage_free(&g->kst[0]);
    stage_free(&g->kst[1]);
    if (g->host_blocks) cudaFreeHost(g->host_blocks);
    if (g->h_out) cudaFreeHost(g->h_out);
    if (g->first_c0) cudaEventDestroy(g->first_c0);
    if (g->compute) cudaStreamDestroy(g->compute);
    if (g->copy) cudaStreamDestroy(g->copy);
    if (g->comm) cudaStreamDestroy(g->comm);
    if (g->d2h) cudaStreamDestroy(g->d2h);
    free(g->pieces);
    free(g);
}

/* ---- keys and values ---------------------------------------------------------------------------- */

/* memcpy by the rank's OpenMP threads (pinned staging <-> the pipeline's buffers) */
static void memcpy_par(unsigned char *dst, const unsigned char *src, size_t bytes) {
    const size_t step = (size_t)1 << 20;
    const int64_t n = (int64_t)((bytes + step - 1) / step);
#pragma omp parallel for schedule(static) if (bytes > 2 * step)
    for (int64_t i = 0; i < n; i++) {
        const size_t a = (size_t)i * step, len = bytes - a < step ? bytes - a : step;
        memcpy(dst + a, src + a, len);
    }
}

/* Rows [n][heads][D] of type src_type from the host -> T in the device layout at `dst` (rows or
 * columns), through staging buffer(s) on stream `st`: the host copies a part into pinned memory
 * while the previous part's copy and conversion run (two buffers), or waits for the one. */
static void upload(gpu_job *g, const void *src, int src_type, int64_t n, int heads, void *dst, int64_t ld,
                   int64_t off, int cols, cudaStream_t st, stage *bufs, int nbufs, int *next) {
    const int es = elem_size(src_type);
    const int64_t row = (int64_t)heads * g->D, per = bufs[0].bytes / (row * es);
    if (per < 1) fa_fail("GPU %d: a staging buffer of %lld bytes holds no row of %lld elements", g->c.device,
                         (long long)bufs[0].bytes, (long long)row);
    const int bf = g->c.ct == FA_COMPUTE_BF16;
    for (int64_t r = 0; r < n; r += per) {
        const int64_t m = n - r < per ? n - r : per;
        stage *sb = &bufs[*next];
        *next = (*next + 1) % nbufs;
        cudaCheck(cudaEventSynchronize(sb->free_ev));      /* its last copy is done */
        const size_t bytes = (size_t)(m * row * es);
        memcpy_par(sb->h, (const unsigned char *)src + (size_t)(r * row * es), bytes);
        cudaCheck(cudaMemcpyAsync(sb->d, sb->h, bytes, cudaMemcpyHostToDevice, st));
        g->st.bytes_h2d += (int64_t)bytes;
        const int d = (int)g->D;
        const dim3 tgrid((unsigned)((d + 31) / 32), (unsigned)((m + 31) / 32), (unsigned)heads), tblock(32, 8);
        const unsigned gb = grid_for(m * row / 4, 256);
#define FA_CONVERT(S, T)                                                                                   \
        do {                                                                                               \
            if (cols) convert_transpose<<<tgrid, tblock, 0, st>>>((const S *)sb->d, (T *)dst, m, heads, d, ld, off + r); \
            else convert_rows<<<gb, 256, 0, st>>>((const S *)sb->d, (T *)dst, m, heads, d, ld, off + r);   \
        } while (0)
        if (src_type == ATTN_BF16) {
            if (bf) FA_CONVERT(__nv_bfloat16, __nv_bfloat16); else FA_CONVERT(__nv_bfloat16, __half);
        } else if (src_type == ATTN_F16) {
            if (bf) FA_CONVERT(__half, __nv_bfloat16); else FA_CONVERT(__half, __half);
        } else {
            if (bf) FA_CONVERT(float, __nv_bfloat16); else FA_CONVERT(float, __half);
        }
#undef FA_CONVERT
        cudaCheck(cudaGetLastError());
        cudaCheck(cudaEventRecord(sb->free_ev, st));
    }
}

/* One element of type st at src[i] as the compute type's bits (bf: bfloat16, else float16):
 * copied when the types agree, else through float32, rounded to nearest even. */
static inline uint16_t elem_bits(int st, const void *src, int64_t i, int bf) {
    if (st == ATTN_F32) {
        const float x = ((const float *)src)[i];
        return bf ? fa_f32_to_bf16_ref(x) : fa_f32_to_f16_ref(x);
    }
    const uint16_t b = ((const uint16_t *)src)[i];
    if ((st == ATTN_BF16) == (bf != 0)) return b;
    const float x = st == ATTN_BF16 ? fa_bf16_to_f32_ref(b) : fa_f16_to_f32_ref(b);
    return bf ? fa_f32_to_bf16_ref(x) : fa_f32_to_f16_ref(x);
}

/* Rows [at, at + m) of a paged block of n keys from host rows (k, v: row `at`'s), into its
 * K [Hkv][B][D] and V^T [Hkv][D][B] in T; the block's last rows (at + m = n) also zero the rows
 * past n. K rows convert in place order; V goes through 64-key x 64-dim tiles so both sides stay
 * in cache. A block filled in parts holds the bits of one filled at once. */
static void fill_block(gpu_job *g, unsigned char *blk, const void *k, int kt, const void *v, int vt,
                       int64_t at, int64_t m, int64_t n) {
    const int64_t B = g->c.plan.block_rows, D = g->D, Hkv = g->c.hkv;
    const int bf = g->c.ct == FA_COMPUTE_BF16;
    const int64_t end = at + m >= n ? B : at + m, tiles = (end - at + 63) / 64;
    uint16_t *kb = (uint16_t *)blk, *vb = kb + Hkv * B * D;
#pragma omp parallel for schedule(static)
    for (int64_t r = at; r < end; r++)
        for (int64_t hh = 0; hh < Hkv; hh++) {
            uint16_t *dst = kb + (hh * B + r) * D;
            for (int64_t dd = 0; dd < D; dd++)
                dst[dd] = r >= n ? 0 : elem_bits(kt, k, ((r - at) * Hkv + hh) * D + dd, bf);
        }
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t hh = 0; hh < Hkv; hh++)
        for (int64_t t = 0; t < tiles; t++)
            for (int64_t d0 = 0; d0 < D; d0 += 64)
                for (int64_t dd = d0; dd < d0 + 64 && dd < D; dd++)
                    for (int64_t r = at + t * 64; r < at + t * 64 + 64 && r < end; r++)
                        vb[(hh * D + dd) * B + r] = r < n ? elem_bits(vt, v, ((r - at) * Hkv + hh) * D + dd, bf) : 0;
}

/* The segments' pieces: each segment's resident head (while the resident region lasts), split
 * every cfg.piece_rows rows (rounded up to 256) from its start, then its paged blocks; positions
 * rise, and so do the rank's rows they hold (lrow). */
extern "C" int gpu_job_kv_begin(gpu_job *g, const attn_kv_segment *segs, int nsegs) {
    cudaCheck(cudaSetDevice(g->c.device));
    cudaCheck(cudaDeviceSynchronize());                  /* nothing may still read the old keys */
    const kv_plan *pl = &g->c.plan;
    /* resident pieces start at multiples of 256 rows of the resident region (the kernel's key
     * tiles and the 16-byte alignment of V^T's columns): P rounded up to one */
    const int64_t P = g->c.piece_rows > 0 ? (g->c.piece_rows + 255) / 256 * 256 : 0;
    int64_t total = 0;
    for (int i = 0; i < nsegs; i++) total += segs[i].n > 0 ? segs[i].n : 0;
    int64_t cap = 16 + (P > 0 ? total / P + nsegs : 0);
    for (int i = 0; i < nsegs; i++) cap += (int)(segs[i].n / (pl->block_rows > 0 ? pl->block_rows : 1)) + 2;
    for (int i = 0; i < g->nready_ev; i++) cudaCheck(cudaEventDestroy(g->pieces[i].ready));
    g->nready_ev = 0;
    free(g->pieces);
    g->pieces = (piece *)fa_calloc((size_t)cap, sizeof(piece), "key pieces");
    g->npieces = 0;
    g->nblocks = 0;
    g->prepared = 0;
    g->segs = segs;
    g->nsegs = nsegs;
    g->kv_total = total;
    g->kv_next = 0;
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
    int64_t lrow = 0;                                    /* the rank's row of the segment's start */
    for (int i = 0; i < nsegs; lrow += segs[i].n > 0 ? segs[i].n : 0, i++) {
        int64_t n = segs[i].n, done = 0;
        if (n <= 0) continue;
        int64_t take = res_left < n ? res_left : n;
        if (take > 0 && off + take <= g->res_cap) {      /* resident head of the segment */
            for (int64_t a = 0; a < take;) {             /* pieces of P rows from its start */
                const int64_t e = P > 0 && a + P < take ? a + P : take;
                g->pieces[g->npieces++] = piece{0, off + a, e - a, segs[i].pos0 + a, lrow + a, i, NULL};
                a = e;
            }
            off += (take + 63) / 64 * 64;
            res_left -= take;
            done = take;
        }
        for (; done < n; done += pl->block_rows) {      /* the rest, block by block, to pinned host memory */
            int64_t m = n - done < pl->block_rows ? n - done : pl->block_rows;
            if (g->nblocks >= g->blocks_cap) return fa_seterr("GPU %d: paged key blocks exceed the plan", g->c.device);
            if (g->npieces >= cap) return fa_seterr("GPU %d: key pieces exceed their count", g->c.device);
            g->pieces[g->npieces++] = piece{1, g->nblocks, m, segs[i].pos0 + done, lrow + done, i, NULL};
            g->nblocks++;
        }
    }
    for (int i = 0; i < g->npieces; i++) cudaCheck(cudaEventCreateWithFlags(&g->pieces[i].ready, cudaEventDisableTiming));
    g->nready_ev = g->npieces;
    return 0;
}

/* Rows [row0, row0 + n) at k and v: each piece's part of them copied out now, resident rows
 * uploaded on the copy stream (through the pinned staging: the host's copy is done when upload
 * returns) and paged rows laid out in their pinned block; a piece whose last row this is becomes
 * ready (resident: its event recorded after its last upload). Pieces cover the rank's rows in
 * order, so the pieces not yet ready are the ones these rows reach. */
extern "C" int gpu_job_kv_ready(gpu_job *g, int64_t row0, int64_t n, const void *k, const void *v) {
    cudaCheck(cudaSetDevice(g->c.device));
    const int64_t row = (int64_t)g->c.hkv * g->D, e = row0 + n;
    if (row0 != g->kv_next || n < 0 || e > g->kv_total)
        return fa_seterr("GPU %d: key rows [%lld, %lld) handed where rows from %lld of %lld were due",
                         g->c.device, (long long)row0, (long long)e, (long long)g->kv_next,
                         (long long)g->kv_total);
    const kv_plan *pl = &g->c.plan;
    for (int i = g->prepared; i < g->npieces && g->pieces[i].lrow < e; i++) {
        piece *pc = &g->pieces[i];
        const int64_t lo = pc->lrow > row0 ? pc->lrow : row0, hi = pc->lrow + pc->n < e ? pc->lrow + pc->n : e;
        if (hi <= lo) continue;
        const attn_kv_segment *sg = &g->segs[pc->seg];
        const int64_t at = lo - pc->lrow;                /* the piece's rows [at, at + m) */
        const int64_t m = hi - lo;
        const void *kr = (const unsigned char *)k + (size_t)((lo - row0) * row * elem_size(sg->k_type));
        const void *vr = (const unsigned char *)v + (size_t)((lo - row0) * row * elem_size(sg->v_type));
        const int whole = hi == pc->lrow + pc->n;
        if (!pc->paged) {
            upload(g, kr, sg->k_type, m, g->c.hkv, g->k_res, g->res_cap, pc->off + at, 0, g->copy, g->kst, 2, &g->kst_next);
            upload(g, vr, sg->v_type, m, g->c.hkv, g->vt_res, g->res_cap, pc->off + at, 1, g->copy, g->kst, 2, &g->kst_next);
            if (whole) cudaCheck(cudaEventRecord(pc->ready, g->copy));
        } else {
            fill_block(g, g->host_blocks + (size_t)pc->off * pl->block_bytes, kr, sg->k_type, vr, sg->v_type, at, m, pc->n);
        }
        if (whole) g->prepared = i + 1;
    }
    g->kv_next = e;
    return 0;
}

/* Every row at once: each segment's rows where it holds them. */
extern "C" int gpu_job_load_kv(gpu_job *g, const attn_kv_segment *segs, int nsegs) {
    if (gpu_job_kv_begin(g, segs, nsegs)) return -1;
    int64_t lrow = 0;
    for (int i = 0; i < nsegs; i++) {
        if (segs[i].n <= 0) continue;
        if (gpu_job_kv_ready(g, lrow, segs[i].n, segs[i].k, segs[i].v)) return -1;
        lrow += segs[i].n;
    }
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

/* A timed event pair for the slot's compute span about to be enqueued (a chunk computed in
 * stages has one a stage): its start recorded on the compute stream; the end by stage_end. */
static void stage_begin(gpu_job *g, int slot) {
    if (g->nsev[slot] + 2 > g->capsev[slot]) {
        const int cap = g->capsev[slot] ? 2 * g->capsev[slot] : 4;
        g->sev[slot] = (cudaEvent_t *)realloc(g->sev[slot], sizeof(cudaEvent_t) * (size_t)cap);
        if (!g->sev[slot]) fa_fail("out of memory for GPU events");
        for (int k = g->capsev[slot]; k < cap; k++) cudaCheck(cudaEventCreate(&g->sev[slot][k]));
        g->capsev[slot] = cap;
    }
    cudaCheck(cudaEventRecord(g->sev[slot][g->nsev[slot]++], g->compute));
}
static void stage_end(gpu_job *g, int slot) {
    cudaCheck(cudaEventRecord(g->sev[slot][g->nsev[slot]++], g->compute));
}

extern "C" int gpu_job_partial(gpu_job *g, int slot, const attn_queries *q) {
    cudaCheck(cudaSetDevice(g->c.device));
    if (q->nq > g->c.max_rows) return fa_seterr("GPU engine: chunk of %lld rows exceeds %lld", (long long)q->nq, (long long)g->c.max_rows);
    const int start = q->keys == ATTN_KEYS_ALL || q->keys == ATTN_KEYS_FIRST;
    const int last = q->keys == ATTN_KEYS_ALL || q->keys == ATTN_KEYS_LAST;
    if (last && g->prepared < g->npieces)
        return fa_seterr("GPU %d: a chunk over every key with %d of its %d key pieces loaded", g->c.device,
                         g->prepared, g->npieces);
    if (start) {
        /* the slot's buffers are free once its last merge is done */
        if (g->merging[slot]) cudaCheck(cudaStreamWaitEvent(g->compute, g->f1[slot], 0));
        int one = 0;
        upload(g, q->q, q->q_type, q->nq, g->c.h, g->q[slot], g->c.max_rows, 0, 0, g->compute, &g->qst, 1, &one);
        if (!g->started) cudaCheck(cudaEventRecord(g->first_c0, g->compute));
        g->started = 1;
        g->slot_next[slot] = 0;
        g->slot_fresh[slot] = 1;
        g->nsev[slot] = 0;
        g->merging[slot] = 0;
        g->finalized[slot] = 0;
    }
    g->last_slot = slot;
    const int64_t D = g->D;
    /* the keys the chunk's rows see: [klo, khi) (mask.h: runs grow with the row); pieces
     * (resident runs, paged blocks) outside it are neither launched nor copied */
    attn_mask local;
    const attn_mask *mk = attn_queries_mask(q, &local);
    const mask_run ra = mask_row(mk, q->b, q->q_pos0), rz = mask_row(mk, q->b, q->q_pos0 + q->nq - 1);
    const int64_t klo = ra.lo, khi = rz.hi;
    const kv_plan *pl = &g->c.plan;
    int fresh = g->slot_fresh[slot];
    const int ring = pl->ring < RING_MAX ? pl->ring : RING_MAX;
    /* the pieces this call launches on: from where the chunk stopped to the last one loaded
     * (every piece, on the last call); their uploads waited for before the span starts */
    int i0 = g->slot_next[slot], i1 = i0;
    while (i1 < g->prepared && g->pieces[i1].pos0 < khi) i1++;
    for (int i = i0; i < i1; i++)
        if (!g->pieces[i].paged && g->pieces[i].pos0 + g->pieces[i].n > klo)
            cudaCheck(cudaStreamWaitEvent(g->compute, g->pieces[i].ready, 0));
    stage_begin(g, slot);
    for (int i = i0; i < i1; i++) {
        const piece *pc = &g->pieces[i];
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
    /* with every key loaded, pieces past the chunk's horizon are done with too */
    g->slot_next[slot] = last ? g->npieces : i1;
    g->slot_fresh[slot] = fresh;
    if (last && fresh) rec_init<<<grid_for(q->nq * g->c.h * (D + 2), 256), 256, 0, g->compute>>>(g->rec[slot], q->nq * g->c.h, (int)D);
    cudaCheck(cudaGetLastError());
    stage_end(g, slot);
    if (last) {
        cudaCheck(cudaEventRecord(g->c1[slot], g->compute));
        g->computed[slot] = 1;
        g->done_slot = slot;
    }
    return 0;
}

/* The chunk's compute spans (device events), once its last one is done. */
static void account_compute(gpu_job *g, int slot) {
    if (!g->computed[slot]) return;
    cudaCheck(cudaEventSynchronize(g->c1[slot]));
    for (int k = 0; k + 1 < g->nsev[slot]; k += 2) {
        float ms = 0;
        cudaCheck(cudaEventElapsedTime(&ms, g->sev[slot][k], g->sev[slot][k + 1]));
        g->st.compute_ms += ms;
    }
    g->nsev[slot] = 0;
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
        launch_final(g, slot, NULL, rows, g->compute);
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
        launch_final(g, slot, g->mbuf[slot], rows, g->comm);
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

extern "C" int gpu_job_final_to_host(gpu_job *g, int slot, int64_t n, void *o, float *lse) {
    cudaCheck(cudaSetDevice(g->c.device));
    const int64_t rows = n * g->c.h, D = g->D;
    /* after a merge the global maxima are in mbuf (the records' m fields were zeroed) */
    const float *mg = g->merging[slot] && g->c.nccl_size > 1 ? g->mbuf[slot] : NULL;
    if (g->merging[slot]) cudaCheck(cudaStreamWaitEvent(g->d2h, g->f1[slot], 0));
    else cudaCheck(cudaStreamWaitEvent(g->d2h, g->c1[slot], 0));
    if (!g->finalized[slot]) launch_final(g, slot, mg, rows, g->d2h);
    g->finalized[slot] = 0;
    const size_t obytes = (size_t)(rows * D) * g->oes;   /* o in the host's type, then lse */
    cudaCheck(cudaMemcpyAsync(g->h_out, g->o_fin[slot], obytes, cudaMemcpyDeviceToHost, g->d2h));
    cudaCheck(cudaMemcpyAsync(g->h_out + obytes, g->lse_fin[slot], (size_t)rows * 4, cudaMemcpyDeviceToHost, g->d2h));
    cudaCheck(cudaStreamSynchronize(g->d2h));
    memcpy_par((unsigned char *)o, g->h_out, obytes);
    memcpy(lse, g->h_out + obytes, (size_t)rows * 4);
    g->st.bytes_d2h += (int64_t)obytes + rows * 4;
    g->merging[slot] = 0;
    return 0;
}

/* At the end: compute-stream idle time from the first chunk's start to the last one's end (host
 * late, copies, merges: any cause). */
extern "C" void gpu_job_get_stats(gpu_job *g, gpu_job_stats *s) {
    cudaSetDevice(g->c.device);
    for (int slot = 0; slot < g->c.slots; slot++) account_compute(g, slot);
    if (g->started && g->done_slot >= 0) {
        g->last_slot = g->done_slot;
        cudaCheck(cudaEventSynchronize(g->c1[g->last_slot]));
        float span = 0;
        cudaCheck(cudaEventElapsedTime(&span, g->first_c0, g->c1[g->last_slot]));
        g->st.idle_ms = span > g->st.compute_ms ? span - g->st.compute_ms : 0;
    }
    for (int r = 0; r < RING_MAX; r++) account_copy(g, r);
    *s = g->st;
}
