/* flash_sm80.cu — the variant dispatch of kernels/cuda/flash.h (flash_check, flash_forward, the
 * variants' names and availability) and variant 1's launch over the instantiated head dims and
 * element types: the kernel is the template of kernels/cuda/flash_sm80.cuh, each (D, type)
 * instantiated in a small generated file of kernels/cuda/inst/ (kernels/cuda/gen_instances.py).
 */
#include "kernels/cuda/flash_inst.h"
#include <stdio.h>

#define FA_STR_(x) #x
#define FA_STR(x) FA_STR_(x)

/* ---- variant dispatch (flash.h) ------------------------------------------------------------ */

extern "C" int flash_sm90_launch(const flash_params *p, int variant, void *stream, char *buf, int len);
extern "C" int flash_sm90_compiled(void);

extern "C" size_t flash_params_sizeof(void) { return sizeof(flash_params); }

extern "C" int flash_check(const flash_params *p, char *buf, int len) {
    const char *why = NULL;
    if (!flash_head_dim_instance(p->d)) why = "head dim must be a multiple of 8 from 8 to " FA_STR(FLASH_HEAD_DIM_MAX);
    else if (p->dtype != FLASH_BF16 && p->dtype != FLASH_FP16) why = "compute dtype must be bf16 or fp16";
    else if (p->h <= 0 || p->hkv <= 0 || p->h % p->hkv) why = "H must be a positive multiple of Hkv";
    else if (p->nq < 0 || p->nk < 0) why = "negative length";
    else if (p->nq >= ((int64_t)1 << 31) || p->nk >= ((int64_t)1 << 31))
        why = "a call takes fewer than 2^31 query rows and keys (TMA coordinates are 32-bit)";
    else if (p->h > 65535) why = "too many heads";
    else if (!p->q || !p->k || !p->vt) why = "null input";
    else if (((uintptr_t)p->q | (uintptr_t)p->k | (uintptr_t)p->vt) & 15) why = "inputs must be 16-byte aligned";
    else if ((p->q_row_stride | p->q_head_stride | p->k_row_stride | p->k_head_stride | p->vt_row_stride |
              p->vt_head_stride) & 7)
        why = "input strides must be multiples of 8 elements";
    else if (p->vt_row_stride < p->nk) why = "vt_row_stride < nk";
    else if (p->out_mode == FLASH_OUT_STATE && !p->rec_out) why = "state mode needs rec_out";
    else if (p->out_mode == FLASH_OUT_FINAL && !p->o) why = "final mode needs o";
    else if (p->out_mode == FLASH_OUT_FINAL && ((p->o_row_stride | p->o_head_stride) & 1))
        why = "output strides must be even";
    else if (!(p->scale > 0.f)) why = "scale must be positive";
    if (why && buf) snprintf(buf, (size_t)len, "flash: %s", why);
    return why ? -1 : 0;
}

static int device_cc(void) {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    return major * 10 + minor;
}

extern "C" int flash_variant_available(int variant) {
    int cc = device_cc();
    if (variant == FLASH_SM80_MMA) return cc >= 80;
    if (variant >= FLASH_SM90_WGMMA && variant <= FLASH_SM90_PINGPONG) return cc == 90 && flash_sm90_compiled();
    if (variant == FLASH_AUTO) return cc >= 80;
    return 0;
}

extern "C" const char *flash_variant_name(int variant) {
    switch (variant) {
    case FLASH_AUTO: return "auto";
    case FLASH_SM80_MMA: return "v1_sm80_mma";
    case FLASH_SM90_WGMMA: return "v2_sm90_wgmma";
    case FLASH_SM90_PIPE: return "v3_sm90_wgmma_pipe";
    case FLASH_SM90_PINGPONG: return "v4_sm90_pingpong";
    }
    return "unknown";
}

extern "C" int flash_forward(const flash_params *p, int variant, void *stream, char *buf, int len) {
    if (flash_check(p, buf, len)) return -1;
    if (variant == FLASH_AUTO)
        /* the winner on the H100 (bench/NOTES_GPU.md): v4 on every measured row */
        variant = flash_variant_available(FLASH_SM90_PINGPONG) ? FLASH_SM90_PINGPONG : FLASH_SM80_MMA;
    if (!flash_variant_available(variant)) {
        if (buf) snprintf(buf, (size_t)len, "flash: variant %s not available on this device", flash_variant_name(variant));
        return -1;
    }
    if (p->nq == 0) return 0;
    if (variant >= FLASH_SM90_WGMMA && variant <= FLASH_SM90_PINGPONG) return flash_sm90_launch(p, variant, stream, buf, len);
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t e;
    const int bf = p->dtype == FLASH_BF16;
    e = cudaErrorInvalidValue;           /* flash_check let only head dims with an instance through */
#define FA_SM80_CASE(D) \
    case D: e = bf ? flash_sm80_run<D, __nv_bfloat16>(p, s) : flash_sm80_run<D, __half>(p, s); break;
    switch (flash_head_dim_instance(p->d)) {
        FLASH_HEAD_DIMS(FA_SM80_CASE)
    }
#undef FA_SM80_CASE
    if (e != cudaSuccess) {
        if (buf) snprintf(buf, (size_t)len, "flash: launch failed: %s", cudaGetErrorString(e));
        return -1;
    }
    return 0;
}
