/* model.h — the cost model: how fa_long predicts the time of a configuration (tile sizes, chunk
 * rows, key-block rows, buffers in flight) from machine figures, and which configurations it
 * offers. A roofline-style model; it measures nothing (tune/measure.h does) and reads no file
 * (tune/cache.h does).
 *
 * Terms (tune/model.c documents each figure and where it comes from):
 *   compute  flops / (rate x efficiency of the tile) + exp work + per-tile and per-launch overheads
 *            + the load imbalance of the last wave of work items
 *   memory   K/V bytes re-read per query tile / cache or memory bandwidth (CPU), overlapped with
 *            compute: max(compute, memory)
 *   paging   keys streamed from pinned host memory per chunk / host link (GPU; kv_plan_make says
 *            how many), overlapped with compute per chunk: max(compute, copy)
 *   merge    chunk records (rows x H x (D+2) floats reduced, rows x H floats all-reduced) / network
 *            bandwidth + latency per chunk; merges and compute are two serial pipeline resources:
 *            only the exposed part counts (model.c: merge_exposed)
 * The critical resource is the largest of compute, memory, paging, merge.
 *
 * The tune folder, floor by floor: model.h (this file: the types and the predictions),
 * measure.h (machine figures of the CPU), cache.h (the tune cache file), tuner.h (timing on the
 * real engine; `fa_long tune`), choose.h (what a run uses: cache, else model, else defaults).
 * tune/ includes base/, kernels/ and io/ only. */
#pragma once
#include "kernels/mask.h"
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Machine figures. Zero means "not measured": cm_machine_defaults fills documented defaults. */
typedef struct {
    char device[96];          /* "cpu AMD EPYC 7R13 x2" or "gpu NVIDIA H100 80GB HBM3" */
    int gpu;                  /* figures of a GPU (1) or of the CPU engine (0) */
    /* CPU */
    int threads;              /* engine threads */
    double cpu_gflops;        /* fp32 FMA peak, all threads (cm_measure_cpu_peak) */
    double cpu_eff;           /* engine tile products' fraction of that peak (tune calibrates) */
    double mem_gbps;          /* DRAM read bandwidth, all threads (cm_measure_mem_gbps) */
    double l2_gbps, l3_gbps;  /* read bandwidth from L2 and L3, all threads (cm_measure_cache_gbps) */
    int64_t l1_bytes, l2_bytes; /* per core (sysconf) */
    int64_t l3_bytes;         /* shared (sysconf, capped at 64 MiB) */
    /* GPU */
    double gpu_tflops[5];     /* flash kernel rate per variant (index = FLASH_* variant) */
    double hbm_gbps;          /* device memory bandwidth */
    double link_gbps;         /* host -> device, pinned (gpu_link_gbps) */
    int64_t smem_per_block;   /* opt-in shared memory per block */
    int64_t device_free;      /* free device bytes */
    /* both */
    double net_gbps;          /* merge bandwidth between ranks (MPI or NCCL bus bandwidth) */
    double net_latency_s;     /* per merge (one reduce + one all-reduce) */
} cm_machine;

/* One job as the model sees it (one rank's share: keys / nranks). The run plan fills it from the
 * job; `fa_long tune` from its options. */
typedef struct {
    int64_t nq, nk;
    int h, hkv, d;
    int causal;
    const attn_mask *mask;    /* the job's mask (kernels/mask.h); NULL: full or causal as above */
    int elem;                 /* bytes per element of the compute type (4 CPU, 2 GPU) */
    int nranks;
    int64_t budget;           /* device bytes per rank (GPU; 0 = free memory) */
    int gpu;
    int dtype;                /* fa_compute for GPU (0 bf16, 1 fp16); -1 for the CPU's fp32 */
    int threads;              /* CPU engine threads of a rank (0 = omp_get_max_threads()) */
} cm_job;

/* A candidate configuration and what the model predicts for it. */
typedef struct {
    /* CPU engine */
    int br, bc, threads;
    /* GPU kernel */
    int variant;              /* FLASH_* (0 = auto) */
    int64_t block_rows;       /* keys per paged block (0 = kv_plan default) */
    int ring;                 /* paged block buffers (0 = kv_plan default) */
    /* both */
    int64_t chunk;            /* query rows per pipeline chunk */
    int merges_in_flight;     /* chunks whose merge may be in flight */
    /* predictions, seconds */
    double t_compute, t_memory, t_page, t_merge, t_total;   /* t_merge: exposed merge time */
    double t_merge_all;       /* all merges' time (hidden or not) */
    const char *critical;     /* "compute", "memory", "paging", "merge" (string literals) */
    const char *source;       /* "model", "cache", "defaults", "measured" (string literals) */
    const char *why;          /* cm_choose: a few words on why this source (literal), or NULL */
    double measured_s;        /* from the cache (tune's timing), 0 when none */
} cm_choice;

/* Documented defaults for figures not measured (see model.c). */
void cm_machine_defaults(cm_machine *m, int gpu);
/* This machine's device string for the cache key: CPU model name and thread count, or GPU name. */
void cm_device_name(int gpu, int threads, char *buf, int len);

/* Fills c's predictions (t_*, critical). Returns 1 when c is valid for the job and machine
 * (on-chip limits, device-memory budget through kv_plan_make), 0 otherwise. */
int cm_predict(const cm_machine *m, const cm_job *j, cm_choice *c);
/* All valid candidates of the model's search space, best predicted first; returns the count
 * (at most max). */
int cm_candidates(const cm_machine *m, const cm_job *j, cm_choice *out, int max);
/* The fixed choice fa_long made before the model (pick_tiling, 1K/8K chunks, 3 merges in flight); on a GPU
 * under a device budget, the chunk halved (to 2048 at least) until the key plan fits. */
void cm_fixed_defaults(const cm_job *j, int threads, cm_choice *c);

#ifdef __cplusplus
}
#endif
