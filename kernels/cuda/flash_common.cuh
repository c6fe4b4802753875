/* flash_common.cuh — device code shared by the flash kernels (kernels/cuda/flash_sm80.cuh,
 * flash_sm90.cuh): the per-row online-softmax state, the causal/tail tile bounds, and the
 * epilogues that read and write the running state or the final output.
 *
 * Fragment convention (both mma.sync m16n8 and wgmma m64nN accumulators): a warp owns 16 query
 * rows; lane = 4*g + t owns rows g and g+8 of them, and for each 8-column block j the columns
 * 8j+2t, 8j+2t+1. A flat float array acc[4*j + 0..1] holds row g, acc[4*j + 2..3] row g+8.
 * Softmax runs in base 2: m2 = log2(e) * scale * max(q.k); records keep m in natural units.
 */
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "kernels/cuda/flash.h"
#include "kernels/mask.h"

#define FLASH_LOG2E 1.4426950408889634f
#define FLASH_LN2 0.6931471805599453f

template <typename T> struct flash_type;
template <> struct flash_type<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float a, float b) {
        __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
        return *reinterpret_cast<uint32_t *>(&v);
    }
};
template <> struct flash_type<__half> {
    static __device__ __forceinline__ uint32_t pack(float a, float b) {
        __half2 v = __floats2half2_rn(a, b);
        return *reinterpret_cast<uint32_t *>(&v);
    }
};

/* 2^x on the MUFU with denormal results flushed to zero (a p under 2^-126 is 0 at bf16/fp16
 * precision anyway): one MUFU.EX2, where exp2f's non-ftz form adds range fix-ups around it. */
static __device__ __forceinline__ float flash_exp2(float x) {
#ifdef FLASH_PRECISE_EXP2 /* exp2f, the form before variant 4b (bench/NOTES_GPU.md), for A/B timing */
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

/* The mask of a use_mask launch, as kernels/mask.h's functions take it. */
static __device__ __forceinline__ attn_mask flash_mask(const flash_params &p) {
    attn_mask m = mask_plain(p.mask_nq, p.mask_nk, 0);
    m.left = p.win_left;
    m.right = p.win_right;
    m.ndocs = p.ndocs;
    m.doc_rows = p.doc_rows;
    m.cu_q = (const int64_t *)p.cu_q;
    m.cu_k = (const int64_t *)p.cu_k;
    m.softcap = p.softcap;
    m.alibi = (const float *)p.alibi;
    return m;
}

/* Key tiles [begin, n_tiles) a block of query rows [r0, r0+rows) must visit; tiles in
 * [full_begin, full_end) are visible to every row, the others need the mask (causal diagonal,
 * window edges, documents, key tail). 64-bit throughout. */
struct flash_tiles {
    int64_t begin, n_tiles, full_begin, full_end;
    __device__ __forceinline__ bool masked(int64_t j) const { return j < full_begin || j >= full_end; }
};
static __device__ __forceinline__ flash_tiles flash_tile_range(const flash_params &p, int64_t r0,
                                                               int64_t rows, int bn) {
    int64_t kbeg = 0, kend = p.nk;                /* keys [kbeg, kend) may be visible */
    int64_t fbeg = 0, kfull = p.nk;               /* keys [fbeg, kfull) visible to every row */
    if (p.use_mask) {
        /* runs only grow with the row (mask.h): the first row starts the union and bounds the
         * common part above, the last row ends the union and bounds it below */
        attn_mask m = flash_mask(p);
        mask_run a = mask_row(&m, p.b, p.q_pos0 + r0), e = mask_row(&m, p.b, p.q_pos0 + r0 + rows - 1);
        kbeg = max(kbeg, a.lo - p.k_pos0);
        kend = min(kend, e.hi - p.k_pos0);
        fbeg = e.lo - p.k_pos0;
        kfull = min(kfull, a.hi - p.k_pos0);
    } else if (p.causal) {
        int64_t last = p.q_pos0 + r0 + rows - 1 + p.diag - p.k_pos0; /* last visible local key */
        int64_t first = p.q_pos0 + r0 + p.diag - p.k_pos0;           /* row r0's last visible */
        kend = min(kend, last + 1);
        kfull = min(kfull, first + 1);
    }
    flash_tiles t;
    t.begin = kbeg >= kend ? 0 : kbeg / bn;
    t.n_tiles = kend <= kbeg ? 0 : (kend + bn - 1) / bn;
    t.full_begin = fbeg <= 0 ? 0 : (fbeg + bn - 1) / bn;   /* tiles from here start past every lo */
    t.full_end = kfull <= 0 ? 0 : kfull / bn;               /* tiles before this end before every hi */
    return t;
}

/* Online softmax state of the two rows a lane owns. l is this lane's partial sum over its
 * columns (summed across the 4 lanes of a row in the epilogue). */
struct flash_row_state {
    float m2[2];   /* running max, log2 units (scale folded in); -inf before any key */
    float l[2];
};

/* Load a running state (records) into the accumulators, or start fresh. `row` is the local
 * index of row g (row g+8 is row+8); rows >= nq start fresh (never written back).
 * D is the instance's head dim, p.d the job's (a multiple of 8, at most D): records hold p.d
 * columns, and the accumulator's columns past p.d stay zero (the kernels' loads fill them so). */
template <int D>
static __device__ __forceinline__ void flash_state_load(const flash_params &p, int64_t row, int h,
                                                        int lane, float *acc, flash_row_state &st) {
    const int t = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        st.m2[i] = -INFINITY;
        st.l[i] = 0.f;
        int64_t r = row + 8 * i;
        if (p.rec_in && r < p.nq) {
            const float *rec = p.rec_in + (r * p.h + h) * (int64_t)(p.d + 2);
            float m = rec[0];
            st.m2[i] = p.rec_log2 ? m : m * FLASH_LOG2E;
            st.l[i] = t == 0 ? rec[1] : 0.f;
#pragma unroll
            for (int j = 0; j < D / 8; j++) {
                float2 v = make_float2(0.f, 0.f);
                if (8 * j < p.d) v = *reinterpret_cast<const float2 *>(rec + 2 + 8 * j + 2 * t);
                acc[4 * j + 2 * i] = v.x;
                acc[4 * j + 2 * i + 1] = v.y;
            }
        } else {
#pragma unroll
            for (int j = 0; j < D / 8; j++) acc[4 * j + 2 * i] = acc[4 * j + 2 * i + 1] = 0.f;
        }
    }
}

/* Fold one tile of raw scores s (acc layout, NB column blocks of 8) into the row state: mask
 * (when `masked`), new max, p = exp2(s*sl2 - m2) in place, row sums. Returns in alpha[] the factor
 * the output accumulator must be multiplied by (flash_rescale), so that a caller may apply it
 * later (variant 3 does, once its in-flight P V product has landed).
 * Masking: column c (local key) hidden if c >= nk or (causal and k_pos0 + c > q_pos0 + r + diag);
 * with MASK (the kernels' instances for use_mask launches), hidden outside the row's run of mask.h, and the score modifiers (softcap,
 * ALiBi) applied to every score first: s becomes mask_score(scale s) / scale, so the base-2
 * step below stays as it is. */
template <int NB, bool MASK = false>
static __device__ __forceinline__ void flash_softmax_scores(const flash_params &p, float *s, flash_row_state &st,
                                                            float sl2, bool masked, int64_t row, int64_t col0,
                                                            int lane, float *alpha) {
    const int t = lane & 3;
    if constexpr (MASK) {           /* use_mask launches: their own kernel instances */
        const attn_mask m = flash_mask(p);
        const bool mods = mask_has_modifiers(&m);
        if (mods || masked) {       /* a tile every row sees whole, without modifiers: nothing */
            const int h = blockIdx.y;
            const float inv_scale = 1.f / p.scale;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const mask_run r = mask_row(&m, p.b, p.q_pos0 + row + 8 * i);
                /* the row's run in this tile's columns, as small ints: [lo, hi) of 0..8*NB */
                const int lo = (int)max((int64_t)-1, min((int64_t)(8 * NB + 1), r.lo - p.k_pos0 - col0));
                const int hi = (int)max((int64_t)-1, min((int64_t)(8 * NB + 1), min(r.hi - p.k_pos0, p.nk) - col0));
#pragma unroll
                for (int j = 0; j < NB; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int c = 8 * j + 2 * t + e;
                        float &x = s[4 * j + 2 * i + e];
                        if (mods) x = mask_score(&m, x * p.scale, h, &r, p.k_pos0 + col0 + c) * inv_scale;
                        if (masked && (c < lo || c >= hi)) x = -INFINITY;
                    }
            }
        }
    } else if (masked) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int64_t lim = p.nk; /* first hidden local key for this row */
            if (p.causal) {
                int64_t c = p.q_pos0 + row + 8 * i + p.diag - p.k_pos0 + 1;
                lim = min(lim, c);
            }
#pragma unroll
            for (int j = 0; j < NB; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int64_t c = col0 + 8 * j + 2 * t + e;
                    if (c >= lim) s[4 * j + 2 * i + e] = -INFINITY;
                }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < NB; j++) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * i], s[4 * j + 2 * i + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mnew = fmaxf(st.m2[i], mx * sl2);
        /* a row that has seen no key yet keeps m = -inf; subtract 0 instead so no NaN appears */
        float muse = mnew == -INFINITY ? 0.f : mnew;
        alpha[i] = flash_exp2(st.m2[i] - muse);
        st.m2[i] = mnew;
        float sum[2] = {0.f, 0.f}; /* two chains of adds, not one */
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float v = flash_exp2(fmaf(s[4 * j + 2 * i + e], sl2, -muse));
                s[4 * j + 2 * i + e] = v;
                sum[e] += v;
            }
        st.l[i] = st.l[i] * alpha[i] + (sum[0] + sum[1]);
    }
}

template <int D> static __device__ __forceinline__ void flash_rescale(float *acc_o, const float *alpha) {
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
        acc_o[4 * j + 0] *= alpha[0];
        acc_o[4 * j + 1] *= alpha[0];
        acc_o[4 * j + 2] *= alpha[1];
        acc_o[4 * j + 3] *= alpha[1];
    }
}

/* Both at once: the softmax step of variants 1 and 2. */
template <int NB, int D, bool MASK = false>
static __device__ __forceinline__ void flash_softmax_tile(const flash_params &p, float *s, float *acc_o,
                                                          flash_row_state &st, float sl2, bool masked,
                                                          int64_t row, int64_t col0, int lane) {
    float alpha[2];
    flash_softmax_scores<NB, MASK>(p, s, st, sl2, masked, row, col0, lane, alpha);
    flash_rescale<D>(acc_o, alpha);
}

template <typename TO> static __device__ __forceinline__ void flash_store2(TO *dst, float a, float b);
template <> __device__ __forceinline__ void flash_store2<float>(float *dst, float a, float b) {
    *reinterpret_cast<float2 *>(dst) = make_float2(a, b);
}
template <> __device__ __forceinline__ void flash_store2<__nv_bfloat16>(__nv_bfloat16 *dst, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(dst) = __floats2bfloat162_rn(a, b);
}
template <> __device__ __forceinline__ void flash_store2<__half>(__half *dst, float a, float b) {
    *reinterpret_cast<__half2 *>(dst) = __floats2half2_rn(a, b);
}

template <int D, typename TO>
static __device__ __forceinline__ void flash_store_final(const flash_params &p, int64_t row, int h,
                                                         int t, const float *acc, const float *inv) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int64_t r = row + 8 * i;
        if (r >= p.nq) continue;
        TO *dst = reinterpret_cast<TO *>(p.o) + h * p.o_head_stride + r * p.o_row_stride + 2 * t;
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            if (8 * j < p.d) flash_store2<TO>(dst + 8 * j, acc[4 * j + 2 * i] * inv[i], acc[4 * j + 2 * i + 1] * inv[i]);
    }
}

/* Write the state (records) or the final output for the lane's two rows. */
template <int D>
static __device__ __forceinline__ void flash_epilogue(const flash_params &p, int64_t row, int h,
                                                      int lane, const float *acc, flash_row_state &st) {
    const int t = lane & 3;
    float l[2], inv[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] = st.l[i];
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        inv[i] = l[i] > 0.f ? 1.f / l[i] : 0.f;
    }
    if (p.out_mode == FLASH_OUT_STATE) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int64_t r = row + 8 * i;
            if (r >= p.nq) continue;
            float *rec = p.rec_out + (r * p.h + h) * (int64_t)(p.d + 2);
            if (t == 0) {
                rec[0] = st.m2[i] == -INFINITY ? -INFINITY : p.rec_log2 ? st.m2[i] : st.m2[i] * FLASH_LN2;
                rec[1] = l[i];
            }
#pragma unroll
            for (int j = 0; j < D / 8; j++)
                if (8 * j < p.d)
                    *reinterpret_cast<float2 *>(rec + 2 + 8 * j + 2 * t) =
                        make_float2(acc[4 * j + 2 * i], acc[4 * j + 2 * i + 1]);
        }
        return;
    }
    if (p.o_dtype == FLASH_BF16) flash_store_final<D, __nv_bfloat16>(p, row, h, t, acc, inv);
    else if (p.o_dtype == FLASH_FP16) flash_store_final<D, __half>(p, row, h, t, acc, inv);
    else flash_store_final<D, float>(p, row, h, t, acc, inv);
    if (p.lse && t == 0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int64_t r = row + 8 * i;
            if (r >= p.nq) continue;
            p.lse[h * p.lse_head_stride + r * p.lse_row_stride] =
                l[i] > 0.f ? st.m2[i] * FLASH_LN2 + logf(l[i]) : -INFINITY;
        }
    }
}
