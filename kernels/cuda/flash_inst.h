/* flash_inst.h — the flash kernels' instances, declared to the dispatch: one explicit
 * instantiation per (head dim, element type) and architecture path, each in a small generated file
 * of kernels/cuda/inst/ (kernels/cuda/gen_instances.py writes them and inst/flash_instances.h,
 * the list of head dims). The templates are defined in flash_sm80.cuh and flash_sm90.cuh; the
 * dispatch (flash_sm80.cu, flash_sm90.cu) sees only these declarations, so it compiles no kernel
 * and the instances compile in parallel. */
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "kernels/cuda/flash.h"

/* variant 1 (mma.sync, sm_80 and later) */
template <int D, typename T> cudaError_t flash_sm80_run(const flash_params *p, cudaStream_t s);
/* variants 2, 3, 4 (wgmma + TMA, sm_90a); flash_sm90_ready: its sm_90a code is what this device runs */
template <int D, typename T> int flash_sm90_run(const flash_params *p, int variant, cudaStream_t s, char *buf, int len);
template <int D, typename T> int flash_sm90_ready(void);
