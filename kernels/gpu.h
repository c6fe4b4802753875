/* gpu.h — the GPU engine as the runner sees it. Implemented in kernels/cuda/ (built when nvcc is
 * found); kernels/cpu/gpu_none.c answers "no GPU" in builds without CUDA.
 *
 * Same contract as cpu_attn_partial (kernels/attn.h): the engine folds this rank's keys into a
 * running partial state of records {m, l, o[D]} laid out [row][head], fp32, in host memory, so the
 * runner's merge across ranks is the same for both engines. Inputs arrive as fp32 on the host and
 * are converted on the device to the compute type (bf16 by default). */
#pragma once
#include <stdint.h>
#include "kernels/attn.h"

typedef enum { FA_COMPUTE_BF16 = 0, FA_COMPUTE_FP16 = 1 } fa_compute;

/* Number of usable CUDA devices (0 without CUDA or without a GPU). Never fails. */
int gpu_count(void);
/* The CUDA context of device (local_rank mod devices) made by a thread of its own while the
 * process goes on with MPI, the input and the plan (a context takes a few hundred ms, and the
 * planner's first device query would wait for it); joined before MPI_Finalize. No-ops without
 * CUDA. */
void gpu_warmup_start(int local_rank);
void gpu_warmup_join(void);
/* One line naming device `dev` ("NVIDIA H100 80GB HBM3, sm_90, 132 SMs") into buf. */
void gpu_describe(int dev, char *buf, int len);

typedef struct gpu_engine gpu_engine;

/* Binds `device`, allocates room for up to kv_rows keys (all segments together) of Hkv heads of
 * head dim d, and for query chunks of up to max_rows rows of h heads. sub_rows: rows of the
 * copy/compute sub-chunks (0: enough for ~4 waves, at least 2048; -1: one sub-chunk, no overlap).
 * Returns -1 with fa_seterr on failure (unsupported d, out of device memory). */
int gpu_engine_create(int device, int64_t kv_rows, int64_t max_rows, int h, int hkv, int d,
                      fa_compute ct, int64_t sub_rows, gpu_engine **out);
/* Uploads (and converts) this rank's keys/values for one batch element; replaces earlier ones. */
int gpu_engine_load_kv(gpu_engine *e, const attn_kv_segment *segs, int nsegs);
/* Folds the loaded keys into rec for a chunk of queries (rec holds the running state on entry). */
int gpu_engine_partial(gpu_engine *e, const attn_queries *q, float *rec);
void gpu_engine_destroy(gpu_engine *e);
