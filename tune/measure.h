/* measure.h — the CPU's machine figures for the cost model (tune/model.h), measured: FMA peak of
 * `threads` threads (0 = all), GFLOP/s, best of 3; read bandwidth from DRAM and from a buffer
 * that stays in cache, GB/s. Each takes about a tenth of a second. The GPU's figures come from
 * kernels/ (gpu_link_gbps, kernels/gpu_tune.h). */
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

double cm_measure_cpu_peak(int threads);
double cm_measure_mem_gbps(int threads);
/* Read bandwidth of a buffer of `bytes` per thread that stays in cache (L2 or L3), GB/s. */
double cm_measure_cache_gbps(int threads, int64_t bytes);

#ifdef __cplusplus
}
#endif
