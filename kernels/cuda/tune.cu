/* tune.cu — timing helper for the autotuner (kernels/gpu_tune.h, tune/tuner.c): one flash kernel
 * variant on random inputs of one chunk, so `fa_long tune --backend cuda` can rank variants and
 * chunk sizes by measurement. Graceful without a GPU: every call returns -1 (or 0), no abort.
 *
 * Validation before timing: the variant's state is compared with FLASH_AUTO's on the same inputs
 * (a variant that disagrees by more than 2e-2 of max |o| is refused, -1). Timing: CUDA events
 * around each launch after WARM_S of untimed launches (the clock a long job settles at), median
 * of reps. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <algorithm>
#include <cuda_fp16.h>
#include "kernels/cuda/flash.h"
#include "kernels/gpu_tune.h"

/* random 16-bit values in [-1, 1): bf16 or fp16 bit patterns from a hash */
__global__ void tune_fill(uint16_t *x, int64_t n, uint32_t seed, int fp16) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t u = (uint32_t)i * 2654435761u ^ seed;
        u ^= u >> 15; u *= 2246822519u; u ^= u >> 13;
        float f = (float)(u & 0xFFFFFF) / 8388608.0f - 1.0f;
        if (fp16) {
            __half hv = __float2half(f);
            x[i] = *(uint16_t *)&hv;
        } else {
            uint32_t b = __float_as_uint(f);
            x[i] = (uint16_t)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
        }
    }
}

/* seconds of untimed work before each timing */
#define WARM_S 0.1
extern "C" double fa_now(void);   /* base/common.h: monotonic seconds */

#define TRY(call) do { if ((call) != cudaSuccess) { cudaGetLastError(); goto out; } } while (0)

extern "C" int64_t cm_gpu_smem_per_block(void) {
    int n = 0, dev = 0, v = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) { cudaGetLastError(); return 0; }
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
    return v;
}

extern "C" double cm_gpu_time_variant(int variant, int64_t nq, int64_t nk, int h, int hkv, int d,
                                      int causal, int dtype, int reps) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) { cudaGetLastError(); return -1; }
    if (!flash_variant_available(variant)) return -1;
    double result = -1;
    uint16_t *q = NULL, *k = NULL, *vt = NULL;
    float *rec = NULL, *ref = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    const int64_t nkp = (nk + 255) / 256 * 256;        /* vt rows padded (zero-filled) */
    const int64_t nrec = nq * h * (int64_t)(d + 2);
    std::vector<float> a, b;
    std::vector<float> ms;
    char msg[256];
    flash_params p;
    memset(&p, 0, sizeof p);
    TRY(cudaMalloc(&q, (size_t)h * nq * d * 2));
    TRY(cudaMalloc(&k, (size_t)hkv * nkp * d * 2));
    TRY(cudaMalloc(&vt, (size_t)hkv * d * nkp * 2));
    TRY(cudaMalloc(&rec, (size_t)nrec * 4));
    TRY(cudaMalloc(&ref, (size_t)nrec * 4));
    TRY(cudaMemset(k, 0, (size_t)hkv * nkp * d * 2));
    TRY(cudaMemset(vt, 0, (size_t)hkv * d * nkp * 2));
    tune_fill<<<256, 256>>>(q, (int64_t)h * nq * d, 1u, dtype == 1);
    tune_fill<<<256, 256>>>(k, (int64_t)hkv * nk * d, 2u, dtype == 1);
    tune_fill<<<256, 256>>>(vt, (int64_t)hkv * d * nkp, 3u, dtype == 1);
    TRY(cudaGetLastError());
    p.q = q; p.k = k; p.vt = vt;
    p.q_head_stride = nq * d; p.q_row_stride = d;
    p.k_head_stride = nkp * d; p.k_row_stride = d;
    p.vt_head_stride = (int64_t)d * nkp; p.vt_row_stride = nkp;
    p.nq = nq; p.nk = nk; p.h = h; p.hkv = hkv; p.d = d;
    p.dtype = dtype == 1 ? FLASH_FP16 : FLASH_BF16;
    p.scale = 1.0f / sqrtf((float)d);
    p.causal = causal;
    p.q_pos0 = 0; p.k_pos0 = 0; p.diag = nk - nq;
    p.out_mode = FLASH_OUT_STATE;
    /* validate against FLASH_AUTO on the same inputs */
    p.rec_out = ref;
    if (flash_forward(&p, FLASH_AUTO, NULL, msg, sizeof msg)) goto out;
    p.rec_out = rec;
    if (flash_forward(&p, variant, NULL, msg, sizeof msg)) goto out;
    TRY(cudaDeviceSynchronize());
    a.resize((size_t)nrec); b.resize((size_t)nrec);
    TRY(cudaMemcpy(a.data(), ref, (size_t)nrec * 4, cudaMemcpyDeviceToHost));
    TRY(cudaMemcpy(b.data(), rec, (size_t)nrec * 4, cudaMemcpyDeviceToHost));
    {
        double maxref = 0, maxdiff = 0;
        for (int64_t r = 0; r < nq * h; r++)
            for (int i = 2; i < d + 2; i++) {
                int64_t x = r * (d + 2) + i;
                double oa = a[x] / (a[r * (d + 2) + 1] > 0 ? a[r * (d + 2) + 1] : 1);
                double ob = b[x] / (b[r * (d + 2) + 1] > 0 ? b[r * (d + 2) + 1] : 1);
                maxref = fmax(maxref, fabs(oa));
                maxdiff = fmax(maxdiff, fabs(oa - ob));
            }
        if (!(maxdiff <= 2e-2 * (maxref > 0 ? maxref : 1))) goto out;
    }
    TRY(cudaEventCreate(&e0));
    TRY(cudaEventCreate(&e1));
    /* timed at the sustained clock a long job runs at: launches back to back for WARM_S first
     * (a few launches after an idle gap run faster than a long job's: bench/NOTES_TUNE.md) */
    {
        const double t0 = fa_now();
        int w = 0;
        do {
            if (flash_forward(&p, variant, NULL, msg, sizeof msg)) goto out;
            if (++w % 4 == 0) TRY(cudaDeviceSynchronize());
        } while (fa_now() - t0 < WARM_S && w < 100000);
        TRY(cudaDeviceSynchronize());
    }
    for (int r = 0; r < (reps > 0 ? reps : 1); r++) {
        TRY(cudaEventRecord(e0));
        if (flash_forward(&p, variant, NULL, msg, sizeof msg)) goto out;
        TRY(cudaEventRecord(e1));
        TRY(cudaEventSynchronize(e1));
        float t = 0;
        TRY(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    result = ms[ms.size() / 2] * 1e-3;
out:
    cudaGetLastError();
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(q); cudaFree(k); cudaFree(vt); cudaFree(rec); cudaFree(ref);
    return result;
}

/* ---- a paged configuration on the real engine ------------------------------------------------ */
extern "C" {
#include "kernels/gpu_job.h"
}

/* uniform [-1, 1) from a hash of the index: the same values every call */
static void host_fill(float *x, int64_t n, uint32_t seed) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)i * 2654435761u ^ seed;
        u ^= u >> 15; u *= 2246822519u; u ^= u >> 13;
        x[i] = (float)(u & 0xFFFFFF) / 8388608.0f - 1.0f;
    }
}

/* The paging part of a GPU configuration, measured instead of modelled: the job engine
 * (kernels/cuda/gpu_job.cu) planned under `budget` with this chunk, window, block size and ring,
 * kv_rows random keys loaded (resident head, the rest in pinned blocks), then reps x window chunks
 * of random queries run back to back as the pipeline issues them (a slot is reused once its last
 * chunk is done). Causal: the chunk sits in the middle of the nq queries, the average one.
 * Returns the mean device time of one chunk (the compute stream's span over the timed chunks:
 * compute, and every wait for a paged block's copy or the host), seconds; -1 without a GPU or
 * when the plan does not fit. */
extern "C" double cm_gpu_time_paged(int variant, int64_t chunk, int window, int64_t nq, int64_t kv_rows,
                                    int64_t nk_total, int h, int hkv, int d, int causal, int dtype,
                                    int64_t budget, int64_t block_rows, int ring, int reps) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) { cudaGetLastError(); return -1; }
    if (chunk < 1 || kv_rows < 1 || window < 1) return -1;
    if (variant > 0 && !flash_variant_available(variant)) return -1;
    gpu_job_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.device = 0;
    cfg.h = h; cfg.hkv = hkv; cfg.d = d;
    cfg.ct = dtype == 1 ? FA_COMPUTE_FP16 : FA_COMPUTE_BF16;
    cfg.slots = window;
    cfg.max_rows = chunk;
    cfg.nccl_size = 1;
    cfg.variant = variant;
    kv_plan *pl = &cfg.plan;
    pl->kv_rows = kv_rows; pl->h = h; pl->hkv = hkv; pl->d = d; pl->elem = 2;
    pl->chunk_rows = chunk; pl->slots = window; pl->budget = budget;
    pl->device_free = gpu_free_bytes(0);
    pl->block_rows = block_rows; pl->ring = ring; pl->max_resident = -1;
    if (kv_plan_make(pl)) return -1;
    /* host inputs, kept for the next call of the same size or smaller */
    static float *k = NULL, *v = NULL, *q = NULL;
    static int64_t kv_cap = 0, q_cap = 0;
    const int64_t nkv = kv_rows * hkv * d, nqe = chunk * h * d;
    if (nkv > kv_cap) {
        free(k); free(v);
        k = (float *)malloc(sizeof(float) * (size_t)nkv);
        v = (float *)malloc(sizeof(float) * (size_t)nkv);
        kv_cap = k && v ? nkv : 0;
        if (!kv_cap) return -1;
        host_fill(k, nkv, 11u);
        host_fill(v, nkv, 12u);
    }
    if (nqe > q_cap) {
        free(q);
        q = (float *)malloc(sizeof(float) * (size_t)nqe);
        q_cap = q ? nqe : 0;
        if (!q_cap) return -1;
        host_fill(q, nqe, 13u);
    }
    /* the engine with its keys loaded is kept for the next call of the same plan and variant
     * (the variant is the engine's, gpu_job_cfg.variant): loading is most of a call's time */
    static gpu_job *g = NULL;
    static int64_t key[13];
    const int64_t want[13] = {chunk, window, kv_rows, h, hkv, d, dtype, budget, pl->block_rows, pl->ring,
                              pl->resident_rows, nk_total, variant};
    int reuse = g && !memcmp(key, want, sizeof key);
    if (!reuse) {
        if (g) gpu_job_destroy(g);
        g = NULL;
        if (gpu_job_create(&cfg, &g)) { g = NULL; return -1; }
        memcpy(key, want, sizeof key);
    }
    attn_kv_segment seg = {k, v, kv_rows, 0};
    double result = -1;
    attn_queries aq;
    memset(&aq, 0, sizeof aq);
    aq.q = q; aq.nq = chunk < nq ? chunk : nq; aq.h = h; aq.hkv = hkv; aq.d = d;
    aq.scale = 1.0f / sqrtf((float)d);
    aq.causal = causal;
    aq.diag = causal ? nk_total - nq : 0;
    aq.q_pos0 = causal ? (nq - aq.nq) / 2 : 0;
    if ((reuse || gpu_job_load_kv(g, &seg, 1) == 0) && gpu_job_partial(g, 0, &aq) == 0 &&
        gpu_job_merge_wait(g, 0) == 0) {
        /* warm-up chunks for WARM_S (at least one): the sustained clock, as above */
        int ok = 1;
        const double t0 = fa_now();
        for (int i = 1; ok && fa_now() - t0 < WARM_S && i < 100000; i++) {
            const int slot = i % window;
            ok = gpu_job_merge_wait(g, slot) == 0 && gpu_job_partial(g, slot, &aq) == 0;
        }
        for (int slot = 0; ok && slot < window; slot++) ok = gpu_job_merge_wait(g, slot) == 0;
        gpu_job_stats s0, s1;
        gpu_job_get_stats(g, &s0);
        const int n = (reps > 0 ? reps : 1) * window;
        for (int i = 0; i < n && ok; i++) {
            const int slot = i % window;
            if (i >= window) ok = gpu_job_merge_wait(g, slot) == 0;
            ok = ok && gpu_job_partial(g, slot, &aq) == 0;
        }
        if (ok) {
            /* waits for every chunk. Device time from the end of the warm-up to the end of the
             * last chunk (compute + idle = the span): the chunks' compute events alone miss the
             * waits that fall before a chunk starts (its query upload queued behind key copies
             * on the link: bench/NOTES_TUNE.md) */
            gpu_job_get_stats(g, &s1);
            result = ((s1.compute_ms + s1.idle_ms) - (s0.compute_ms + s0.idle_ms)) * 1e-3 / n;
        }
    }
    if (result < 0) {
        gpu_job_destroy(g);
        g = NULL;
    }
    return result;
}
