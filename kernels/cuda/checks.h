/* checks.h — the one checker per GPU library (CUDA runtime, NCCL), usable from C and CUDA C++.
 * A failure is one a rank meets alone: fa_fail() names file, line and rank, removes the temporary
 * output and brings every rank down (base/common.h). */
#pragma once
#include <cuda_runtime.h>
#ifdef FA_HAVE_NCCL
#include <nccl.h>
#endif
#include "base/common.h"

#define cudaCheck(call)                                                                        \
    do {                                                                                       \
        cudaError_t err_ = (call);                                                             \
        if (err_ != cudaSuccess)                                                               \
            fa_fail("CUDA error at %s:%d: %s (%s)", __FILE__, __LINE__,                        \
                    cudaGetErrorString(err_), #call);                                          \
    } while (0)

#ifdef FA_HAVE_NCCL
#define ncclCheck(call)                                                                        \
    do {                                                                                       \
        ncclResult_t r_ = (call);                                                              \
        if (r_ != ncclSuccess)                                                                 \
            fa_fail("NCCL error at %s:%d: %s (%s)", __FILE__, __LINE__, ncclGetErrorString(r_), \
                    #call);                                                                    \
    } while (0)
#endif
