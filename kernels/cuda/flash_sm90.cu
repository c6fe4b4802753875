/* flash_sm90.cu — the dispatch of variants 2, 3, 4 (flash-attention forward for Hopper, sm_90a)
 * over the head dims and element types that have an instance: the kernel is the template of
 * kernels/cuda/flash_sm90.cuh, each (D, type) instantiated in a small generated file of
 * kernels/cuda/inst/ (kernels/cuda/gen_instances.py), so that the instances compile in parallel.
 */
#include "kernels/cuda/flash_inst.h"
#include <stdio.h>

/* Whether the sm_90a code of the kernel is what this device would run (the D 128 bf16 instance
 * stands for all: one NVCC_GENCODE builds every instance). */
extern "C" int flash_sm90_compiled(void) { return flash_sm90_ready<128, __nv_bfloat16>(); }

extern "C" int flash_sm90_launch(const flash_params *p, int variant, void *stream, char *buf, int len) {
    cudaStream_t s = (cudaStream_t)stream;
    const int bf = p->dtype == FLASH_BF16;
#define FA_SM90_CASE(D) \
    case D: return bf ? flash_sm90_run<D, __nv_bfloat16>(p, variant, s, buf, len) : flash_sm90_run<D, __half>(p, variant, s, buf, len);
    switch (flash_head_dim_instance(p->d)) {   /* d runs in the smallest instance of at least d */
        FLASH_HEAD_DIMS(FA_SM90_CASE)
    }
#undef FA_SM90_CASE
    if (buf) snprintf(buf, (size_t)len, "flash: no sm90 instance for head dim %d", p->d);
    return -1;
}
