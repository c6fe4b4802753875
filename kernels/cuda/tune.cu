/* tune.cu — timing helper for the autotuner (dist/costmodel.h, runner/tune.c): one flash kernel
 * variant on random inputs of one chunk, so `fa_long tune --backend cuda` can rank variants and
 * chunk sizes by measurement. Graceful without a GPU: every call returns -1 (or 0), no abort.
 *
 * Validation before timing: the variant's state is compared with FLASH_AUTO's on the same inputs
 * (a variant that disagrees by more than 2e-2 of max |o| is refused, -1). Timing: CUDA events
 * around each launch after one warm-up, median of reps. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <algorithm>
#include <cuda_fp16.h>
#include "kernels/cuda/flash.h"

extern "C" {
double cm_gpu_time_variant(int variant, int64_t nq, int64_t nk, int h, int hkv, int d, int causal,
                           int dtype, int reps);
int64_t cm_gpu_smem_per_block(void);
}

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
