/* flash_sm90.cuh — variants 2, 3, 4: flash-attention forward for Hopper (sm_90a): wgmma
 * tensor-core instructions fed by TMA bulk tensor copies, a producer warpgroup and two consumer
 * warpgroups synchronized by mbarriers. One kernel template <D, T, STAGES, PIPE, PINGPONG>:
 *   variant 2 FLASH_SM90_WGMMA    <2 stages, in turn>   S_j, softmax_j, P_j V_j one after another
 *   variant 3 FLASH_SM90_PIPE     <3 stages, PIPE>      S_{j+1} and P_j V_j in flight during softmax
 *   variant 4 FLASH_SM90_PINGPONG <3, PIPE, PINGPONG>   + the consumer warpgroups take turns issuing
 *                                                       (the winner: FLASH_AUTO on sm_90)
 * bench/NOTES_GPU.md has each one's prediction and outcome.
 *
 * Built by the top-level Makefile (the sm_90a pass of NVCC_GENCODE carries the kernel; the sm_80
 * pass compiles an empty body and flash_variant_available() reports the variant missing there):
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. -c kernels/cuda/flash_sm90.cu
 *
 * Block: 384 threads = 3 warpgroups, 128 query rows of one head, key tiles of BN (128; 64 for head
 * dims over 128, whose accumulators and tiles leave room for no more). Q and K tiles are kept as
 * 64-column panels (128 bytes a row, the swizzle's width): D/64 of them, rounded up; columns past the
 * job's head dim are zero (the tensor maps end at d, and TMA fills what lies outside with zeros), so
 * one instance serves every d of its size class (flash_head_dim_instance) and S = Q K^T runs over
 * D/16 k-steps whatever d is.
 *   warpgroup 0, producer (setmaxnreg 24): one thread issues TMA copies: the Q tile once, then
 *     for each key tile K [BN x D] and V^T [D x BN] into a ring of STAGES; full barriers carry the
 *     byte count (expect_tx: whole boxes, zero fill included), empty barriers are released by the
 *     consumers.
 *   warpgroups 1, 2, consumers (setmaxnreg 240): 64 query rows each. S = Q K^T by wgmma
 *     m64nBNk16 from shared memory (both operands K-major, 128-byte swizzle as TMA wrote them),
 *     online softmax in registers (flash_common.cuh, the same code as variant 1), P converted in
 *     registers into the A operand of O += P V by wgmma m64nDk16 (A from registers, B = V^T tile).
 *   The two consumer warpgroups run out of step, so one's softmax overlaps the other's wgmma.
 * Layout facts used (PTX ISA, "wgmma" matrix descriptors and register fragments; CUDA driver API,
 * cuTensorMapEncodeTiled): a 128B-swizzled K-major tile is rows of 128 bytes, 8-row groups 1024
 * bytes apart (stride byte offset 1024), the k-slice of 16 elements starts 32 bytes further in;
 * tiles sit on 1024-byte boundaries. The accumulator fragment of a warp is the mma.sync m16n8 one
 * repeated over the N/8 column blocks, which is what flash_common.cuh expects.
 */
#pragma once
#include "kernels/cuda/flash_common.cuh"
#include "kernels/cuda/flash_inst.h"
#include "kernels/cuda/wgmma_ops.cuh"
#include <cuda.h> /* CUtensorMap and the cuTensorMapEncodeTiled types (no libcuda link: entry point) */
#include <stdio.h>

namespace sm90 {

constexpr int BM = 128, NTHREADS = 384, SMEM_MAX = 227 * 1024;

/* The tile shape of head dim D: key tile width and the 64-column panels of Q and K. */
template <int D> struct shape {
    static_assert(D % 16 == 0 && D <= 256, "instances are multiples of 16 up to 256");
    static constexpr int BN = D > 128 ? 64 : 128;
    static constexpr int PANELS = (D + 63) / 64;
};
template <int D, int STAGES> struct layout {
    static constexpr int BN = shape<D>::BN, PANELS = shape<D>::PANELS;
    static constexpr int Q = BM * PANELS * 128;  /* [PANELS][BM][64] */
    static constexpr int K = BN * PANELS * 128;  /* per stage [PANELS][BN][64] */
    static constexpr int V = D * BN * 2;         /* per stage [BN/64][D][64] */
    static constexpr int off_k = Q, off_v = Q + STAGES * K, off_bar = Q + STAGES * (K + V);
    static constexpr int bytes = off_bar + 8 * (1 + 3 * STAGES) + 1024; /* + alignment slack */
};
/* The overlapped variants' ring: 3 stages where they fit in shared memory, else 2 (D 256). */
template <int D> constexpr int pipe_stages() { return layout<D, 3>::bytes <= SMEM_MAX ? 3 : 2; }

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
static __device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
static __device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
    asm volatile("{\n.reg .pred P1;\nLAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
static __device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap *map, uint32_t bar, int c0, int c1,
                                                   int c2) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
                 "l"((uint64_t)map), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
                 : "memory");
}
/* named barriers 1 and 2 (0 is __syncthreads): the two consumer warpgroups' turns to issue */
static __device__ __forceinline__ void bar_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
static __device__ __forceinline__ void bar_arrive(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }
static __device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* keep the compiler from moving accumulator reads/writes across the asynchronous wgmma */
template <int N> static __device__ __forceinline__ void fence_regs(float *r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
/* K-major, 128-byte swizzle: start >> 4, leading byte offset 1 (unused), stride 1024 B >> 4 */
static __device__ __forceinline__ uint64_t desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)64 << 32) | ((uint64_t)1 << 62);
}

#endif

template <int D, typename T, int STAGES, bool PIPE, bool PINGPONG, bool MASK>
__global__ void __launch_bounds__(NTHREADS, 1)
    flash_fwd_sm90(const __grid_constant__ flash_params p, const __grid_constant__ CUtensorMap tq,
                   const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using L = layout<D, STAGES>;
    constexpr int BN = L::BN, PANELS = L::PANELS;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const uint32_t sQ = base, sK = base + L::off_k, sV = base + L::off_v, bars = base + L::off_bar;
    const uint32_t fullQ = bars;
#define FULLK(s) (bars + 8u * (1 + (s)))
#define FULLV(s) (bars + 8u * (1 + STAGES + (s)))
#define EMPTY(s) (bars + 8u * (1 + 2 * STAGES + (s)))

    const int tid = threadIdx.x, wg = tid >> 7;
    const int64_t m_block = (int64_t)gridDim.x - 1 - blockIdx.x; /* heaviest (causal) first */
    const int h = blockIdx.y, g = h / (p.h / p.hkv);
    const int64_t r0 = m_block * BM;
    const int64_t rows = min((int64_t)BM, p.nq - r0);
    const flash_tiles tiles = flash_tile_range(p, r0, rows, BN);

    if (tid == 0) {
        mbar_init(fullQ, 1);
        for (int s = 0; s < STAGES; s++) {
            mbar_init(FULLK(s), 1);
            mbar_init(FULLV(s), 1);
            mbar_init(EMPTY(s), 8); /* one arrival per consumer warp */
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) { /* ---- producer ---- */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
        if (tid == 0) {
            mbar_expect_tx(fullQ, L::Q);
#pragma unroll
            for (int i = 0; i < PANELS; i++) tma_load_3d(sQ + i * BM * 128, &tq, fullQ, i * 64, (int)r0, h);
            /* j counts the block's tiles (stages and phases follow it); tile begin + j is loaded */
            for (int64_t j = 0; j < tiles.n_tiles - tiles.begin; j++) {
                const int s = (int)(j % STAGES);
                if (j >= STAGES) mbar_wait(EMPTY(s), (int)(((j / STAGES) & 1) ^ 1));
                const int c0 = (int)((tiles.begin + j) * BN);
                mbar_expect_tx(FULLK(s), L::K);
#pragma unroll
                for (int i = 0; i < PANELS; i++) tma_load_3d(sK + s * L::K + i * BN * 128, &tk, FULLK(s), i * 64, c0, g);
                mbar_expect_tx(FULLV(s), L::V);
#pragma unroll
                for (int i = 0; i < BN / 64; i++) tma_load_3d(sV + s * L::V + i * D * 128, &tv, FULLV(s), c0 + i * 64, 0, g);
            }
        }
    } else { /* ---- consumers ---- */
        asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
        const int w = wg - 1, lane = tid & 31, warp = (tid >> 5) & 3;
        const int64_t row_g = r0 + 64 * w + 16 * warp + (lane >> 2);
        float acc_o[D / 2];
        float s[BN / 2];
        uint32_t pa[BN / 4];
        flash_row_state st;
        flash_state_load<D>(p, row_g, h, lane, acc_o, st);
        const float sl2 = p.scale * FLASH_LOG2E;
        const uint32_t q_w = sQ + w * 64 * 128;
        mbar_wait(fullQ, 0);
        auto issue_qk = [&](int64_t j) {
            const int stg = (int)(j % STAGES);
            mbar_wait(FULLK(stg), (int)((j / STAGES) & 1));
            fence_regs<BN / 2>(s);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                wgmma_op<BN, T>::ss(s, desc(q_w + (kk >> 2) * BM * 128 + (kk & 3) * 32),
                              desc(sK + stg * L::K + (kk >> 2) * BN * 128 + (kk & 3) * 32), kk > 0);
            wgmma_commit();
        };
        auto issue_pv = [&](int64_t j) {
            const int stg = (int)(j % STAGES);
            mbar_wait(FULLV(stg), (int)((j / STAGES) & 1));
            fence_regs<D / 2>(acc_o);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
                wgmma_op<D, T>::rs(acc_o, &pa[4 * kk], desc(sV + stg * L::V + (kk >> 2) * D * 128 + (kk & 3) * 32), 1);
            wgmma_commit();
        };
        auto pack_p = [&]() {
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                pa[4 * kk + 0] = flash_type<T>::pack(s[8 * kk + 0], s[8 * kk + 1]);
                pa[4 * kk + 1] = flash_type<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
                pa[4 * kk + 2] = flash_type<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
                pa[4 * kk + 3] = flash_type<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
            }
        };
        if constexpr (!PIPE) {
            /* variant 2: S_j, softmax_j, P_j V_j in turn */
            for (int64_t j = 0; j < tiles.n_tiles - tiles.begin; j++) {
                issue_qk(j);
                wgmma_wait<0>();
                fence_regs<BN / 2>(s);
                const int64_t tile = tiles.begin + j;
                flash_softmax_tile<BN / 8, D, MASK>(p, s, acc_o, st, sl2, tiles.masked(tile), row_g, tile * BN, lane);
                pack_p();
                issue_pv(j);
                wgmma_wait<0>();
                fence_regs<D / 2>(acc_o);
                if (lane == 0) mbar_arrive(EMPTY((int)(j % STAGES)));
            }
        } else if (tiles.n_tiles > tiles.begin) {
            /* variant 3: S_{j+1} = Q K_{j+1} and O += P_j V_j in flight while softmax runs on
             * S_{j+1}; O is rescaled once P_j V_j has landed.
             * variant 4 (PINGPONG) also takes turns between the two consumer warpgroups: each
             * issue step (S_0; S_j with P_{j-1} V_{j-1}; P_{n-1} V_{n-1}) waits on its own named
             * barrier and then opens the other's, so one warpgroup's softmax runs while the
             * other's products run. Warpgroup 2 opens warpgroup 1's first turn and skips opening
             * after its last step, so arrivals and waits match (n+1 each way). */
            const int64_t n = tiles.n_tiles - tiles.begin, t0 = tiles.begin;
            int64_t step = 0;
            auto turn_begin = [&]() {
                if constexpr (PINGPONG) bar_sync(1 + w);
            };
            auto turn_end = [&]() {
                if constexpr (PINGPONG)
                    if (!(w == 1 && step == n)) bar_arrive(2 - w);
                step++;
            };
            if constexpr (PINGPONG)
                if (w == 1) bar_arrive(1);
            float alpha[2];
            turn_begin();
            issue_qk(0);
            turn_end();
            wgmma_wait<0>();
            fence_regs<BN / 2>(s);
            flash_softmax_scores<BN / 8, MASK>(p, s, st, sl2, tiles.masked(t0), row_g, t0 * BN, lane, alpha);
            flash_rescale<D>(acc_o, alpha);
            pack_p();
            for (int64_t j = 1; j < n; j++) {
                turn_begin();
                issue_qk(j);
                issue_pv(j - 1);
                turn_end();
                wgmma_wait<1>(); /* S_j is in */
                fence_regs<BN / 2>(s);
                flash_softmax_scores<BN / 8, MASK>(p, s, st, sl2, tiles.masked(t0 + j), row_g, (t0 + j) * BN, lane, alpha);
                wgmma_wait<0>(); /* P_{j-1} V_{j-1} is in */
                fence_regs<D / 2>(acc_o);
                if (lane == 0) mbar_arrive(EMPTY((int)((j - 1) % STAGES)));
                flash_rescale<D>(acc_o, alpha);
                pack_p();
            }
            turn_begin();
            issue_pv(n - 1);
            turn_end();
            wgmma_wait<0>();
            fence_regs<D / 2>(acc_o);
            if (lane == 0) mbar_arrive(EMPTY((int)((n - 1) % STAGES)));
        }
        flash_epilogue<D>(p, row_g, h, lane, acc_o, st);
    }
#undef FULLK
#undef FULLV
#undef EMPTY
#endif
}

/* ---- host: tensor maps and launch -------------------------------------------------------------- */
typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                              const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static encode_fn get_encode(void) {
    static encode_fn fn = NULL;
    if (!fn) {
        void *f = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (encode_fn)f;
        else
            cudaGetLastError();
    }
    return fn;
}

/* A 3-D map over 2-byte elements: dims {d0 (contiguous), d1, d2}, strides of d1, d2 in elements;
 * boxes of {64, b1, 1} with the 128-byte swizzle; out-of-bounds elements read as zero. */
static int make_map(CUtensorMap *m, const void *ptr, CUtensorMapDataType dt, uint64_t d0, uint64_t d1, uint64_t d2,
                    int64_t s1, int64_t s2, uint32_t b1) {
    encode_fn enc = get_encode();
    if (!enc) return -1;
    cuuint64_t dims[3] = {d0, d1 ? d1 : 1, d2};
    cuuint64_t strides[2] = {(cuuint64_t)s1 * 2, (cuuint64_t)(s2 ? s2 : s1 * (int64_t)d1) * 2};
    cuuint32_t box[3] = {64, b1, 1}, estr[3] = {1, 1, 1};
    return enc(m, dt, 3, (void *)ptr, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS
               ? 0
               : -1;
}

template <int D, typename T, int STAGES, bool PIPE, bool PINGPONG>
static int launch(const flash_params &p, cudaStream_t stream, char *buf, int len) {
    const CUtensorMapDataType dt = p.dtype == FLASH_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    CUtensorMap tq, tk, tv;
    int64_t nk = p.nk > 0 ? p.nk : 1;
    /* the maps end at the job's head dim p.d (<= D): the columns of Q and K and the rows of V^T
     * past it are filled with zeros, so they add nothing to S and make O's extra columns zero */
    const uint64_t d = (uint64_t)p.d;
    if (make_map(&tq, p.q, dt, d, (uint64_t)p.nq, (uint64_t)p.h, p.q_row_stride, p.q_head_stride, BM) ||
        make_map(&tk, p.k, dt, d, (uint64_t)nk, (uint64_t)p.hkv, p.k_row_stride, p.k_head_stride, shape<D>::BN) ||
        make_map(&tv, p.vt, dt, (uint64_t)nk, d, (uint64_t)p.hkv, p.vt_row_stride, p.vt_head_stride, D)) {
        if (buf) snprintf(buf, (size_t)len, "flash: cuTensorMapEncodeTiled failed (strides or alignment)");
        return -1;
    }
    auto kern = p.use_mask ? flash_fwd_sm90<D, T, STAGES, PIPE, PINGPONG, true>
                           : flash_fwd_sm90<D, T, STAGES, PIPE, PINGPONG, false>;
    const int smem = layout<D, STAGES>::bytes;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e == cudaSuccess) {
        dim3 grid((unsigned)((p.nq + BM - 1) / BM), (unsigned)p.h);
        kern<<<grid, NTHREADS, smem, stream>>>(p, tq, tk, tv);
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) {
        if (buf) snprintf(buf, (size_t)len, "flash: sm90 launch failed: %s", cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

} // namespace sm90

/* The entry points of one (head dim, element type), explicitly instantiated by the generated
 * kernels/cuda/inst/flash_sm90_d<D>_<type>.cu (one object each, compiled in parallel) and declared
 * to the dispatch (kernels/cuda/flash_sm90.cu) by kernels/cuda/flash_inst.h.
 * variant: FLASH_SM90_WGMMA (2 stages, in turn), FLASH_SM90_PIPE (3 stages, overlapped),
 * FLASH_SM90_PINGPONG (overlapped, consumer warpgroups taking turns); the overlapped ones keep 3
 * stages where shared memory holds them (every D but 256: 2) */
template <int D, typename T> int flash_sm90_run(const flash_params *p, int variant, cudaStream_t s, char *buf, int len) {
    constexpr int stages = sm90::pipe_stages<D>();
    if (variant == FLASH_SM90_PIPE) return sm90::launch<D, T, stages, true, false>(*p, s, buf, len);
    if (variant == FLASH_SM90_PINGPONG) return sm90::launch<D, T, stages, true, true>(*p, s, buf, len);
    return sm90::launch<D, T, 2, false, false>(*p, s, buf, len);
}

/* Whether the sm_90a code of this instance's kernel is what this device would run. */
template <int D, typename T> int flash_sm90_ready(void) {
    cudaFuncAttributes a;
    if (cudaFuncGetAttributes(&a, sm90::flash_fwd_sm90<D, T, 2, false, false, false>) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return a.binaryVersion == 90 && sm90::get_encode() != NULL;
}
