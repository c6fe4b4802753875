/* engine.cu — the GPU engine of kernels/gpu.h on one CUDA device, on top of the flash kernel
 * (kernels/cuda/flash.h).
 *
 * Built by the top-level Makefile (nvcc ... -c kernels/cuda/engine.cu).
 *
 * Device buffers (T = compute type, bf16 or fp16):
 *   k     [Hkv][kv_cap][D]  T   the rank's key segments one after another, each starting at a
 *   vt    [Hkv][D][kv_cap]  T   multiple of 64 rows (so every segment's base stays 16-byte aligned)
 *   q     [H][max_rows][D]  T   the current chunk of queries
 *   rec   [max_rows][H][D+2] fp32 running state, the host record layout, copied in and out as is
 *   stage fp32 staging for uploads (host fp32 -> device fp32 -> convert kernel -> T)
 * gpu_engine_partial: in sub-chunks of rows, pipelined (copy in i+1 and copy out i-1 while i
 * computes): upload q and the state (unless it is fresh), one kernel launch per key segment in
 * state mode (each continues from the state the last left, masks by global positions), download
 * the state. FA_GPU_SYNC=1 runs it as one sub-chunk (no overlap), FA_GPU_SUB_ROWS=N sets the size.
 */
#include "kernels/cuda/flash.h"
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdio.h>
#include <string.h>
#include <math.h>
extern "C" {
#include "kernels/gpu.h"
#include "base/common.h"
}
#include "kernels/cuda/checks.h"

#define ENGINE_ALIGN 64



struct kv_seg {
    int64_t off, n, pos0;
};

struct gpu_engine {
    int dev, h, hkv, d;
    fa_compute ct;
    int64_t kv_cap, max_rows;
    void *k, *vt, *q;
    float *rec, *stage;
    int64_t stage_floats;
    kv_seg *segs;
    int nsegs;
    int64_t sub_rows;          /* rows of a sub-chunk of gpu_engine_partial's pipeline */
    cudaStream_t stream;       /* conversion and kernels */
    cudaStream_t copy;         /* host <-> device copies of the pipeline */
    cudaEvent_t up[2], conv[2], done[2];
};

/* ---- conversion kernels: fp32 host layout -> compute type, device layout --------------------- */

#include "kernels/cuda/convert.cuh"

/* ---- gpu.h ------------------------------------------------------------------------------------ */

/* ---- the device's context, made beside the start (gpu.h) ----------------------------------------- */
static pthread_t warm_thread;
static int warm_running;

static void *warm(void *arg) {
    const int r = (int)(intptr_t)arg;
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0 && cudaSetDevice(r % n) == cudaSuccess)
        cudaFree(0);                  /* makes the device's primary context, which every thread shares */
    cudaGetLastError();
    return NULL;
}

extern "C" void gpu_warmup_start(int local_rank) {
    if (!warm_running) warm_running = pthread_create(&warm_thread, NULL, warm, (void *)(intptr_t)local_rank) == 0;
}

extern "C" void gpu_warmup_join(void) {
    if (warm_running) pthread_join(warm_thread, NULL);
    warm_running = 0;
}

extern "C" int gpu_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear: no driver or no device */
        return 0;
    }
    return n;
}

/* The device's name, UUID and memory through the driver's own calls (found through the runtime,
 * so the binary needs no libcuda at link time and starts where there is no driver), the rest
 * through cudaDeviceGetAttribute: cudaGetDeviceProperties fills every field, some of them slow to
 * query, and took a visible part of a job's start (bench/NOTES_WHOLEJOB.md). Runtime and driver
 * number the devices alike (both after CUDA_VISIBLE_DEVICES). */
typedef int (*drv_get_fn)(int *, int);
typedef int (*drv_name_fn)(char *, int, int);
typedef int (*drv_mem_fn)(size_t *, int);
typedef int (*drv_uuid_fn)(unsigned char *, int);

static void *drv_entry(const char *sym) {
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion(sym, &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        fn = NULL;
    cudaGetLastError();
    return fn;
}

/* the driver's device handle for a runtime ordinal; -1 where the driver cannot give it */
static int drv_device(int dev, int *cu) {
    drv_get_fn get = (drv_get_fn)drv_entry("cuDeviceGet");
    return get && get(cu, dev) == 0 ? 0 : -1;
}

extern "C" int gpu_uuid(int device, unsigned char uuid[16]) {
    int cu;
    drv_uuid_fn f = (drv_uuid_fn)drv_entry("cuDeviceGetUuid");
    if (f && drv_device(device, &cu) == 0 && f(uuid, cu) == 0) return 0;
    cudaDeviceProp pr;                 /* a driver without the entry point: the slow way */
    if (cudaGetDeviceProperties(&pr, device) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    memcpy(uuid, pr.uuid.bytes, 16);
    return 0;
}

extern "C" void gpu_describe(int dev, char *buf, int len) {
    int major = 0, minor = 0, sms = 0, cu;
    char name[256] = "";
    size_t mem = 0;
    drv_name_fn fname = (drv_name_fn)drv_entry("cuDeviceGetName");
    drv_mem_fn fmem = (drv_mem_fn)drv_entry("cuDeviceTotalMem");
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        !fname || !fmem || drv_device(dev, &cu) || fname(name, (int)sizeof name, cu) || fmem(&mem, cu)) {
        cudaGetLastError();
        cudaDeviceProp pr;             /* no driver entry points: the slow way */
        if (cudaGetDeviceProperties(&pr, dev) != cudaSuccess) {
            cudaGetLastError();
            snprintf(buf, (size_t)len, "device %d: unavailable", dev);
            return;
        }
        snprintf(name, sizeof name, "%s", pr.name);
        major = pr.major, minor = pr.minor, sms = pr.multiProcessorCount, mem = pr.totalGlobalMem;
    }
    snprintf(buf, (size_t)len, "%s, sm_%d%d, %d SMs, %.0f GiB", name, major, minor, sms, mem / 1073741824.0);
}

static int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

static size_t elem_bytes(const gpu_engine *e) { return 2; }

static int alloc_kv(gpu_engine *e, int64_t cap) {
    if (e->k) cudaFree(e->k);
    if (e->vt) cudaFree(e->vt);
    e->k = e->vt = NULL;
    size_t bytes = (size_t)e->hkv * (size_t)cap * (size_t)e->d * elem_bytes(e);
    if (cudaMalloc(&e->k, bytes) != cudaSuccess || cudaMalloc(&e->vt, bytes) != cudaSuccess) {
        cudaGetLastError();
        return fa_seterr("GPU %d: out of device memory for %lld keys x %d heads x %d (2 x %.2f GiB)", e->dev,
                         (long long)cap, e->hkv, e->d, bytes / 1073741824.0);
    }
    /* gaps between segments are read (then masked) by the kernels: keep them finite */
    cudaCheck(cudaMemset(e->vt, 0, bytes));
    cudaCheck(cudaMemset(e->k, 0, bytes));
    e->kv_cap = cap;
    return 0;
}

extern "C" int gpu_engine_create(int device, int64_t kv_rows, int64_t max_rows, int h, int hkv, int d,
                                 fa_compute ct, int64_t sub_rows, gpu_engine **out) {
    *out = NULL;
    if (!flash_head_dim_supported(d))
        return fa_seterr("the CUDA engine computes head dims that are multiples of 8 up to %d, not %d", FLASH_HEAD_DIM_MAX, d);
    if (h <= 0 || hkv <= 0 || h % hkv) return fa_seterr("CUDA engine: H=%d is not a multiple of Hkv=%d", h, hkv);
    if (ct != FA_COMPUTE_BF16 && ct != FA_COMPUTE_FP16) return fa_seterr("CUDA engine: unknown compute type");
    int n = gpu_count();
    if (device < 0 || device >= n) return fa_seterr("no CUDA device %d (%d found)", device, n);
    if (cudaSetDevice(device) != cudaSuccess) {
        cudaGetLastError();
        return fa_seterr("cannot use CUDA device %d", device);
    }
    if (!flash_variant_available(FLASH_AUTO)) return fa_seterr("CUDA device %d is older than sm_80", device);
    gpu_engine *e = (gpu_engine *)fa_calloc(1, sizeof *e, "gpu engine");
    e->dev = device;
    e->h = h;
    e->hkv = hkv;
    e->d = d;
    e->ct = ct;
    e->max_rows = max_rows < 1 ? 1 : max_rows;
    if (alloc_kv(e, round_up(kv_rows < 1 ? 1 : kv_rows, ENGINE_ALIGN))) {
        gpu_engine_destroy(e);
        return -1;
    }
    /* Sub-chunks: enough 128-row blocks x heads for ~4 waves on a 132-SM card, at least 2048
     * rows; the caller's sub_rows overrides (the tests use small ones; -1 turns the pipeline
     * off: one sub-chunk, the lab's A/B). */
    e->sub_rows = (4 * 132 * 128 / h + 127) / 128 * 128;
    if (e->sub_rows < 2048) e->sub_rows = 2048;
    if (sub_rows > 0) e->sub_rows = sub_rows;
    if (sub_rows < 0) e->sub_rows = e->max_rows;
    if (e->sub_rows > e->max_rows) e->sub_rows = e->max_rows;
    /* two halves, each one sub-chunk of fp32 queries; the K/V uploads use the whole buffer */
    e->stage_floats = 2 * e->sub_rows * h * (int64_t)d;
    if (e->stage_floats < ((int64_t)1 << 24)) e->stage_floats = (int64_t)1 << 24;
    size_t qb = (size_t)h * e->max_rows * d * 2, rb = (size_t)e->max_rows * h * (d + 2) * sizeof(float);
    if (cudaMalloc(&e->q, qb) != cudaSuccess || cudaMalloc((void **)&e->rec, rb) != cudaSuccess ||
        cudaMalloc((void **)&e->stage, (size_t)e->stage_floats * sizeof(float)) != cudaSuccess) {
        cudaGetLastError();
        gpu_engine_destroy(e);
        return fa_seterr("GPU %d: out of device memory for query chunks of %lld rows", device, (long long)max_rows);
    }
    cudaCheck(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreateWithFlags(&e->copy, cudaStreamNonBlocking));
    for (int i = 0; i < 2; i++) {
        cudaCheck(cudaEventCreateWithFlags(&e->up[i], cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&e->conv[i], cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&e->done[i], cudaEventDisableTiming));
    }
    *out = e;
    return 0;
}

/* Upload fp32 rows [n][heads][D] from the host in pieces through the staging buffer and convert. */
static void upload_convert(gpu_engine *e, const float *src, int64_t n, int heads, void *dst, int64_t ld, int64_t off,
                           int transpose) {
    const int64_t row = (int64_t)heads * e->d;
    const int64_t per = e->stage_floats / row;
    for (int64_t r = 0; r < n; r += per) {
        int64_t m = n - r < per ? n - r : per;
        cudaCheck(cudaMemcpyAsync(e->stage, src + r * row, (size_t)(m * row) * sizeof(float), cudaMemcpyHostToDevice,
                                  e->stream));
        if (transpose) {
            dim3 grid((unsigned)((e->d + 31) / 32), (unsigned)((m + 31) / 32), (unsigned)heads), block(32, 8);
            if (e->ct == FA_COMPUTE_BF16)
                convert_transpose<<<grid, block, 0, e->stream>>>(e->stage, (__nv_bfloat16 *)dst, m, heads, e->d, ld, off + r);
            else
                convert_transpose<<<grid, block, 0, e->stream>>>(e->stage, (__half *)dst, m, heads, e->d, ld, off + r);
        } else {
            int64_t blocks = (m * row / 4 + 255) / 256;
            unsigned gb = (unsigned)(blocks > 65535 * 8 ? 65535 * 8 : blocks);
            if (e->ct == FA_COMPUTE_BF16)
                convert_rows<<<gb, 256, 0, e->stream>>>(e->stage, (__nv_bfloat16 *)dst, m, heads, e->d, ld, off + r);
            else
                convert_rows<<<gb, 256, 0, e->stream>>>(e->stage, (__half *)dst, m, heads, e->d, ld, off + r);
        }
        cudaCheck(cudaGetLastError());
        /* the staging buffer is reused by the next piece */
        cudaCheck(cudaStreamSynchronize(e->stream));
    }
}

extern "C" int gpu_engine_load_kv(gpu_engine *e, const attn_kv_segment *segs, int nsegs) {
    cudaCheck(cudaSetDevice(e->dev));
    int64_t need = 0;
    for (int i = 0; i < nsegs; i++) need += round_up(segs[i].n, ENGINE_ALIGN);
    if (need > e->kv_cap && alloc_kv(e, need)) return -1;
    free(e->segs);
    e->segs = (kv_seg *)fa_calloc((size_t)(nsegs > 0 ? nsegs : 1), sizeof(kv_seg), "kv segments");
    e->nsegs = 0;
    int64_t off = 0;
    for (int i = 0; i < nsegs; i++) {
        if (segs[i].n <= 0) continue;
        upload_convert(e, (const float *)segs[i].k, segs[i].n, e->hkv, e->k, e->kv_cap, off, 0);
        upload_convert(e, (const float *)segs[i].v, segs[i].n, e->hkv, e->vt, e->kv_cap, off, 1);
        e->segs[e->nsegs].off = off;
        e->segs[e->nsegs].n = segs[i].n;
        e->segs[e->nsegs].pos0 = segs[i].pos0;
        e->nsegs++;
        off += round_up(segs[i].n, ENGINE_ALIGN);
    }
    return 0;
}

extern "C" int gpu_engine_partial(gpu_engine *e, const attn_queries *q, float *rec) {
    if (q->h != e->h || q->hkv != e->hkv || q->d != e->d)
        return fa_seterr("CUDA engine: query shape (H=%d, Hkv=%d, D=%d) differs from the engine's (%d, %d, %d)", q->h,
                         q->hkv, q->d, e->h, e->hkv, e->d);
    if (q->nq > e->max_rows)
        return fa_seterr("CUDA engine: chunk of %lld rows exceeds max_rows %lld", (long long)q->nq, (long long)e->max_rows);
    if (q->nq <= 0 || e->nsegs == 0) return 0; /* no keys here: the state stays as it is */
    cudaCheck(cudaSetDevice(e->dev));
    const int64_t D = e->d, H = e->h, R = D + 2;
    /* A fresh state (every record m = -inf: nothing seen yet) need not travel: the first launch
     * starts fresh (rec_in = NULL) and writes the whole state. */
    int fresh = 1;
    for (int64_t i = 0; i < q->nq * H && fresh; i++) fresh = rec[i * R] == -INFINITY;
    /* Pipeline over sub-chunks of rows, two in flight: while sub-chunk i computes (stream), the
     * host copies sub-chunk i+1 in and sub-chunk i-1's state out (copy stream; pageable copies
     * block the host, the GPU keeps computing). Rows of a sub-chunk have their own ranges of the
     * device q and rec buffers; the staging halves alternate, guarded by events. */
    const int64_t sub = e->sub_rows, nsub = (q->nq + sub - 1) / sub;
    const size_t es = elem_bytes(e);
    for (int64_t i = 0; i <= nsub; i++) {
        const int b = (int)(i & 1);
        if (i < nsub) {
            const int64_t r0 = i * sub, n = q->nq - r0 < sub ? q->nq - r0 : sub;
            float *stage = e->stage + b * sub * H * D;
            /* up: the staging half is free once sub-chunk i-2's conversion has run */
            cudaCheck(cudaStreamWaitEvent(e->copy, e->conv[b], 0));
            cudaCheck(cudaMemcpyAsync(stage, (const float *)q->q + r0 * H * D, (size_t)(n * H * D) * sizeof(float),
                                      cudaMemcpyHostToDevice, e->copy));
            if (!fresh)
                cudaCheck(cudaMemcpyAsync(e->rec + r0 * H * R, rec + r0 * H * R, (size_t)(n * H * R) * sizeof(float),
                                          cudaMemcpyHostToDevice, e->copy));
            cudaCheck(cudaEventRecord(e->up[b], e->copy));
            /* compute: convert to [H][max_rows][D] at rows r0.., then one launch per segment */
            cudaCheck(cudaStreamWaitEvent(e->stream, e->up[b], 0));
            int64_t blocks = (n * H * D / 4 + 255) / 256;
            unsigned gb = (unsigned)(blocks > 65535 * 8 ? 65535 * 8 : blocks);
            if (e->ct == FA_COMPUTE_BF16)
                convert_rows<<<gb, 256, 0, e->stream>>>(stage, (__nv_bfloat16 *)e->q, n, (int)H, (int)D, e->max_rows, r0);
            else
                convert_rows<<<gb, 256, 0, e->stream>>>(stage, (__half *)e->q, n, (int)H, (int)D, e->max_rows, r0);
            cudaCheck(cudaGetLastError());
            cudaCheck(cudaEventRecord(e->conv[b], e->stream));
            for (int sg = 0; sg < e->nsegs; sg++) {
                const kv_seg *s = &e->segs[sg];
                flash_params p;
                memset(&p, 0, sizeof p);
                p.q = (const char *)e->q + (size_t)(r0 * D) * es;
                p.q_head_stride = e->max_rows * D;
                p.q_row_stride = D;
                p.k = (const char *)e->k + (size_t)(s->off * D) * es;
                p.k_head_stride = e->kv_cap * D;
                p.k_row_stride = D;
                p.vt = (const char *)e->vt + (size_t)s->off * es;
                p.vt_head_stride = D * e->kv_cap;
                p.vt_row_stride = e->kv_cap;
                p.nq = n;
                p.nk = s->n;
                p.h = e->h;
                p.hkv = e->hkv;
                p.d = e->d;
                p.dtype = e->ct == FA_COMPUTE_BF16 ? FLASH_BF16 : FLASH_FP16;
                p.scale = q->scale;
                p.causal = q->causal;
                p.q_pos0 = q->q_pos0 + r0;
                p.k_pos0 = s->pos0;
                p.diag = q->causal ? q->diag : 0;
                p.rec_in = (fresh && sg == 0) ? NULL : e->rec + r0 * H * R;
                p.rec_out = e->rec + r0 * H * R;
                p.out_mode = FLASH_OUT_STATE;
                char msg[256];
                if (flash_forward(&p, FLASH_AUTO, e->stream, msg, sizeof msg)) fa_fail("GPU %d: %s", e->dev, msg);
            }
            cudaCheck(cudaEventRecord(e->done[b], e->stream));
        }
        if (i >= 1) { /* down: sub-chunk i-1's state, once its kernels are done */
            const int64_t r0 = (i - 1) * sub, n = q->nq - r0 < sub ? q->nq - r0 : sub;
            cudaCheck(cudaStreamWaitEvent(e->copy, e->done[b ^ 1], 0));
            cudaCheck(cudaMemcpyAsync(rec + r0 * H * R, e->rec + r0 * H * R, (size_t)(n * H * R) * sizeof(float),
                                      cudaMemcpyDeviceToHost, e->copy));
        }
    }
    cudaCheck(cudaStreamSynchronize(e->copy));
    cudaCheck(cudaStreamSynchronize(e->stream));
    return 0;
}

extern "C" void gpu_engine_destroy(gpu_engine *e) {
    if (!e) return;
    cudaSetDevice(e->dev);
    if (e->stream) cudaStreamDestroy(e->stream);
    if (e->copy) cudaStreamDestroy(e->copy);
    for (int i = 0; i < 2; i++) {
        if (e->up[i]) cudaEventDestroy(e->up[i]);
        if (e->conv[i]) cudaEventDestroy(e->conv[i]);
        if (e->done[i]) cudaEventDestroy(e->done[i]);
    }
    cudaFree(e->k);
    cudaFree(e->vt);
    cudaFree(e->q);
    cudaFree(e->rec);
    cudaFree(e->stage);
    free(e->segs);
    free(e);
}
