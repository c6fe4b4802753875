/* paging.h — the GPU job engine's key plan (kernels/cuda/gpu_job.cu): how one rank's keys and
 * values live on its GPU: resident in device memory, or, past a device-memory budget, in pinned
 * host memory, streamed to the device block by block through a ring of block buffers on a copy
 * stream while the kernel works on the previous block. The cost model (tune/model.c) plans with
 * it too.
 *
 * The model behind the query-chunk size: streaming a key costs its K and V bytes over the host
 * link (2·Hkv·D·e bytes, e = 2 for bf16/fp16), computing with it costs 4·H·D flops per query row;
 * so copies hide behind compute when a chunk has at least
 *     rows >= margin · Hkv · e · R / (2 · H · BW)
 * query rows (R kernel flop/s, BW link bytes/s). The inputs are measured (BW: a pinned copy at
 * start) or given (--kernel-tflops, --link-gbps), and printed with --verbose. */
#pragma once
#include <stdint.h>

typedef struct {
    /* inputs */
    int64_t kv_rows;        /* keys this rank holds */
    int h, hkv, d, elem;    /* elem: bytes per element of the compute type */
    int64_t chunk_rows;     /* query rows per chunk */
    int slots;              /* chunks in flight (pipeline window) */
    int64_t budget;         /* device bytes this rank may use; 0 = what the device has free */
    int64_t device_free;    /* free device bytes (cudaMemGetInfo), used when budget == 0 */
    /* block_rows, ring, max_resident: the run plan sets these (tests set FA_PAGE_*) */
    int64_t block_rows;     /* keys per paged block; 0 = default (32K, fewer for small shards) */
    int ring;               /* block buffers in the ring; 0 = default 3 */
    int64_t max_resident;   /* cap on resident keys, -1 = none (tests) */
    /* outputs */
    int64_t fixed_bytes;    /* per-chunk buffers, staging */
    int64_t resident_rows;  /* keys kept on the device */
    int64_t paged_rows;     /* keys streamed from pinned host memory */
    int64_t block_bytes;    /* one block: K and V^T of block_rows keys */
    int64_t ring_bytes;
} kv_plan;

/* Fills the outputs. Returns 0, or -1 with fa_seterr when the budget cannot even hold the
 * per-chunk buffers and one ring of blocks. */
int kv_plan_make(kv_plan *p);

/* Smallest chunk (query rows, a multiple of 256) whose compute hides the copies of the keys it
 * streams, with `margin` (1.5 by default) over the model's break-even point. */
int64_t kv_plan_min_rows(int h, int hkv, int elem, double kernel_tflops, double link_gbps,
                         double margin);
