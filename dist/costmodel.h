/* costmodel.h — the one place where fa_long chooses tile sizes, chunk rows, key-block rows and
 * buffers in flight: a roofline-style cost model over measured machine figures, the tune cache
 * that remembers what `fa_long tune` measured, and the choice a run uses (cache, else model).
 *
 * Terms (dist/costmodel.c documents each figure and where it comes from):
 *   compute  flops / (rate x efficiency of the tile) + exp work + per-tile and per-launch overheads
 *            + the load imbalance of the last wave of work items
 *   memory   K/V bytes re-read per query tile / cache or memory bandwidth (CPU), overlapped with
 *            compute: max(compute, memory)
 *   paging   keys streamed from pinned host memory per chunk / host link (GPU; kv_plan_make says
 *            how many), overlapped with compute per chunk: max(compute, copy)
 *   merge    chunk records (rows x H x (D+2) floats reduced, rows x H floats all-reduced) / network
 *            bandwidth + latency per chunk; merges and compute are two serial pipeline resources:
 *            only the exposed part counts (costmodel.c: merge_exposed)
 * The critical resource is the largest of compute, memory, paging, merge. */
#pragma once
#include <stdint.h>
#include "io/h5io.h"
#include "runner/job.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CM_CACHE_VERSION 1

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

/* One job as the model sees it (one rank's share: keys / nranks). */
typedef struct {
    int64_t nq, nk;
    int h, hkv, d;
    int causal;
    int elem;                 /* bytes per element of the compute type (4 CPU, 2 GPU) */
    int nranks;
    int64_t budget;           /* device bytes per rank (GPU; 0 = free memory) */
    int gpu;
    int dtype;                /* fa_compute for GPU (0 bf16, 1 fp16); -1 for the CPU's fp32 */
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
    int window;               /* merges in flight */
    /* predictions, seconds */
    double t_compute, t_memory, t_page, t_merge, t_total;   /* t_merge: exposed merge time */
    double t_merge_all;       /* all merges' time (hidden or not) */
    const char *critical;     /* "compute", "memory", "paging", "merge" */
    const char *source;       /* "model", "cache", "defaults", "measured" */
    double measured_s;        /* from the cache (tune's timing), 0 when none */
} cm_choice;

/* Documented defaults for figures not measured (see costmodel.c). */
void cm_machine_defaults(cm_machine *m, int gpu);
/* This machine's device string for the cache key: CPU model name and thread count, or GPU name. */
void cm_device_name(int gpu, int threads, char *buf, int len);

/* Measuring (CPU): FMA peak of `threads` threads (0 = all), GFLOP/s, best of 3; DRAM read
 * bandwidth, GB/s. Each takes about a tenth of a second. */
double cm_measure_cpu_peak(int threads);
double cm_measure_mem_gbps(int threads);
/* Read bandwidth of a buffer of `bytes` per thread that stays in cache (L2 or L3), GB/s. */
double cm_measure_cache_gbps(int threads, int64_t bytes);

/* Fills c's predictions (t_*, critical). Returns 1 when c is valid for the job and machine
 * (on-chip limits, device-memory budget through kv_plan_make), 0 otherwise. */
int cm_predict(const cm_machine *m, const cm_job *j, cm_choice *c);
/* All valid candidates of the model's search space, best predicted first; returns the count
 * (at most max). */
int cm_candidates(const cm_machine *m, const cm_job *j, cm_choice *out, int max);
/* The fixed choice fa_long made before the model (pick_tiling, 1K/8K chunks, window 3); on a GPU
 * under a device budget, the chunk halved (to 2048 at least) until the key plan fits. */
void cm_fixed_defaults(const cm_job *j, int threads, cm_choice *c);

/* ---- tune cache: a text file of sections, one per (device, D, dtype, causal, GQA ratio) ----
 *   # fa_long tune cache
 *   version = 1
 *   [cpu AMD EPYC 7R13 x2 | d=128 dtype=float32 causal=1 gqa=4]
 *   br = 16
 *   ...
 * Path: --tune-cache, else $FA_TUNE_CACHE, else ~/.cache/fa_long/tune.txt. */
const char *cm_cache_path(const char *opt);
void cm_cache_key(const char *device, const cm_job *j, char *buf, int len);
/* Returns 1 and fills c (source "cache") when the file holds a valid entry for key, 0 otherwise.
 * A missing file is silent; a corrupt, truncated or foreign-version file, a bad entry, or entries
 * only for other devices give one warning line (to stderr, when warn) and are ignored. */
int cm_cache_lookup(const char *path, const char *key, const char *device, cm_choice *c, int warn);
/* The machine figures `fa_long tune` stored for device ([machine DEVICE]); 1 when found. */
int cm_cache_machine(const char *path, const char *device, cm_machine *m);
/* Adds or replaces key's entry (written to a temporary file, then renamed). Returns 0 or -1. */
int cm_cache_store(const char *path, const char *key, const cm_choice *c, const cm_machine *m);

/* ---- what a run uses ------------------------------------------------------------------------
 * The cache entry for this job's key, else the model's best candidate (machine figures: the
 * cache's [machine] section when present, else defaults). Computed once per process; --verbose
 * prints the choice and why on rank 0. Never fails. */
const cm_choice *cm_run_choice(const fa_job *job, const fa_shape *s, int nranks, int gpu);

/* The tuner (runner/tune.c): measures the machine figures into m (CPU peak and memory, or the
 * flash variants' rates and the host link), calibrates the CPU efficiency, times the `top` best
 * candidates of the model (and the fixed defaults) on the real engine, best of `reps`, and
 * returns the fastest in best (source "measured", measured_s set). Returns 0 or -1 (fa_seterr). */
int cm_tune_job(const cm_job *j, cm_machine *m, int top, int reps, int verbose, cm_choice *best);
/* Times one configuration on the real engine: the whole job (one rank's share: keys / nranks)
 * in chunks as the pipeline calls it, on random inputs; best of reps (noise on a shared
 * machine only slows runs down), seconds. CPU only;
 * GPU configurations go through cm_gpu_time_variant, paged ones through cm_gpu_time_paged. */
double cm_time_cpu(const cm_job *j, const cm_choice *c, int reps);

/* The flash kernel variant the GPU engine launches (kernels/cuda/gpu_job.cu); 0 = FLASH_AUTO. */
extern int cm_flash_variant;

/* ---- GPU timing (kernels/cuda/tune.cu; kernels/cpu/gpu_none.c without CUDA) ----------------
 * Times flash_forward `variant` on random bf16/fp16 data of one chunk (nq rows x nk keys), median
 * of reps after a warm-up, in seconds. Returns -1 (no crash) when there is no GPU or the
 * variant is not available. */
double cm_gpu_time_variant(int variant, int64_t nq, int64_t nk, int h, int hkv, int d,
                           int causal, int dtype, int reps);
/* A paged configuration on the real job engine (kernels/cuda/gpu_job.cu): the keys planned under
 * `budget` with this chunk, window, block rows and ring, reps x window chunks run as the pipeline
 * issues them; the mean device compute time of one chunk including its waits for paged blocks,
 * seconds, or -1 (no GPU, plan does not fit). */
double cm_gpu_time_paged(int variant, int64_t chunk, int window, int64_t nq, int64_t kv_rows,
                         int64_t nk_total, int h, int hkv, int d, int causal, int dtype,
                         int64_t budget, int64_t block_rows, int ring, int reps);
/* Shared memory per block the device allows (opt-in), 0 without a GPU. */
int64_t cm_gpu_smem_per_block(void);

#ifdef __cplusplus
}
#endif
