/* flash.h — the tensor-core flash-attention forward kernel's own device API (C-callable).
 *
 * One call: the queries of one chunk (nq rows, H heads) against one contiguous run of keys
 * (nk keys, Hkv heads), all in device memory, in the compute type (bf16 or fp16). It can
 *   - start fresh or continue from a running fp32 state (rec_in), and
 *   - write the new state (FLASH_OUT_STATE) or the final output o = O/l and lse = m + log l
 *     (FLASH_OUT_FINAL). One call that sees all keys with FLASH_OUT_FINAL and no rec_in writes
 *     the final output directly, no extra pass.
 *
 * Layouts (element strides; the last dimension of each is contiguous):
 *   q  [H][nq][D]     q   + h*q_head_stride  + r*q_row_stride  + d
 *   k  [Hkv][nk][D]   k   + g*k_head_stride  + c*k_row_stride  + d
 *   vt [Hkv][D][nk]   vt  + g*vt_head_stride + d*vt_row_stride + c     (V transposed: keys contiguous)
 *   o  (FINAL)        o   + h*o_head_stride  + r*o_row_stride  + d     (dtype o_dtype)
 *   lse (FINAL, opt.) lse + h*lse_head_stride + r*lse_row_stride       (fp32, natural log)
 *   rec [nq][H] records {m, l, o[D]} fp32 (kernels/attn.h), rec + (r*H + h)*(D+2)
 * Query head h reads kv head h / (H/Hkv) (GQA/MQA). Strides are in elements and must keep rows
 * 16-byte aligned (multiples of 8 elements), pointers 16-byte aligned; vt_row_stride >= nk.
 * Elements of vt past nk in a row are never read unmasked but must not hold NaN/Inf if they are
 * inside the allocation (the sm80 path zero-fills loads past nk; the sm90 path's TMA does too).
 *
 * Masking uses global positions so that striped / zigzag shards work: local query row r is global
 * row q_pos0 + r, local key c is global key k_pos0 + c; with causal, key visible iff
 *   k_pos0 + c <= q_pos0 + r + diag     (diag = Nk - Nq of the whole job, kernels/attn.h).
 * Other masks (use_mask; kernels/mask.h, whose functions the kernels call): sliding windows,
 * packed documents, softcap and ALiBi, from the flat fields below; with use_mask the causal and
 * diag fields are not read.
 * Key tiles hidden entirely are skipped; the mask is evaluated only on tiles that some row sees
 * in part (and the score modifiers on every tile). All index arithmetic is 64-bit.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "kernels/cuda/inst/flash_instances.h" /* FLASH_HEAD_DIMS, FLASH_HEAD_DIM_MAX (generated) */

/* The instance that computes head dim d: the smallest of at least d (FLASH_HEAD_DIMS; its columns
 * past d are zero: the kernels fill them so and write none of them), or 0 where none can (d not a
 * positive multiple of 8, or over FLASH_HEAD_DIM_MAX). */
static inline int flash_head_dim_instance(int d) {
    if (d <= 0 || d % 8) return 0;
#define FA_HEAD_DIM_FIT(D) if (d <= D) return D;
    FLASH_HEAD_DIMS(FA_HEAD_DIM_FIT)
#undef FA_HEAD_DIM_FIT
    return 0;
}
/* Whether the kernels compute head dim d: a multiple of 8 from 8 to FLASH_HEAD_DIM_MAX (256). */
static inline int flash_head_dim_supported(int d) { return flash_head_dim_instance(d) != 0; }

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FLASH_BF16 = 0, FLASH_FP16 = 1, FLASH_FP32 = 2 } flash_dtype;
typedef enum { FLASH_OUT_STATE = 0, FLASH_OUT_FINAL = 1 } flash_out_mode;

typedef struct {
    /* inputs, compute type `dtype` (FLASH_BF16 or FLASH_FP16) */
    const void *q, *k, *vt;
    int64_t q_head_stride, q_row_stride;
    int64_t k_head_stride, k_row_stride;
    int64_t vt_head_stride, vt_row_stride;
    int64_t nq, nk;
    int h, hkv, d;                 /* d a multiple of 8 from 8 to 256 (flash_check) */
    flash_dtype dtype;
    float scale;                   /* softmax scale on q.k */
    int causal;
    int64_t q_pos0, k_pos0, diag;  /* global positions for the causal mask */
    /* running state: records [nq][H] {m, l, o[D]} fp32 (device memory) */
    const float *rec_in;           /* NULL: start fresh (m=-inf, l=0, o=0) */
    float *rec_out;                /* FLASH_OUT_STATE: where the new state goes (may == rec_in) */
    int rec_log2;                  /* records' m in base-2 units of the scaled score (m·log2 e), as the
                                    * kernel keeps it: a state that goes from launch to launch on the
                                    * device then round-trips exactly (gpu_job.cu); 0: natural units */
    flash_out_mode out_mode;
    /* FLASH_OUT_FINAL */
    void *o;
    flash_dtype o_dtype;
    int64_t o_head_stride, o_row_stride;
    float *lse;                    /* may be NULL */
    int64_t lse_head_stride, lse_row_stride;
    /* use_mask: the job's mask (attn_mask of kernels/mask.h, flattened): window sides (-1
     * unbounded), the job's whole Nq and Nk, packed documents (offset tables [doc_rows][ndocs+1]
     * int64 in device memory; ndocs 0: none) and the chunk's batch element b, softcap (0: none),
     * ALiBi slopes ([H] float in device memory, or NULL) */
    int use_mask;
    int64_t win_left, win_right, mask_nq, mask_nk, ndocs, doc_rows, b;
    const void *cu_q, *cu_k;
    double softcap;
    const void *alibi;
} flash_params;

/* Kernel variants (kernels/cuda/lab/README.md tells their history). */
enum {
    FLASH_AUTO = 0,      /* best available on the current device: 4 on sm_90, else 1 */
    FLASH_SM80_MMA = 1,  /* mma.sync m16n8k16, cp.async double buffer, 8 warps, 128 x 64 tiles */
    FLASH_SM90_WGMMA = 2, /* wgmma + TMA, producer warpgroup + 2 consumer warpgroups, 2-stage mbarrier ring */
    FLASH_SM90_PIPE = 3,  /* variant 2 + 3 stages, S_{j+1} and P_j V_j in flight during softmax_{j+1} */
    FLASH_SM90_PINGPONG = 4 /* variant 3 + the two consumer warpgroups take turns issuing (named barriers) */
};

/* sizeof(flash_params) as the library was built: callers that take the struct from this header
 * by other means check theirs against it (bench/gpu/flash_params.py parses it for ctypes). */
size_t flash_params_sizeof(void);
/* Checks the parameters; returns 0 or -1 with a message in buf (when buf != NULL). */
int flash_check(const flash_params *p, char *buf, int len);
/* Whether `variant` can run on the current device (compiled in and the right arch). */
int flash_variant_available(int variant);
const char *flash_variant_name(int variant);
/* Launches on `stream` (a cudaStream_t; NULL = default stream). Returns 0, or -1 with a message in
 * buf: bad parameters, variant not available, or a CUDA launch error. Asynchronous. */
int flash_forward(const flash_params *p, int variant, void *stream, char *buf, int len);

#ifdef __cplusplus
}
#endif
