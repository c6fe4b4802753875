/* gpu_tune.h — GPU timing for the tuner (tune/tuner.c): kernels/cuda/tune.cu, or
 * kernels/cpu/gpu_none.c in a build without CUDA (every call answers -1 or 0, no crash). */
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Times flash_forward `variant` on random bf16/fp16 data of one chunk (nq rows x nk keys), median
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
