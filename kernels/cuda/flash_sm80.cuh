/* flash_sm80.cuh — variant 1 (FLASH_SM80_MMA): flash-attention forward on tensor cores through
 * mma.sync.m16n8k16 (sm_80 and later, also the fallback on sm_90). Instantiated per (D, type) in
 * the generated kernels/cuda/inst/flash_sm80_d<D>_<type>.cu; the variant dispatch of
 * kernels/cuda/flash.h is kernels/cuda/flash_sm80.cu.
 *
 * Built by the top-level Makefile:
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80
 *        -I. -c kernels/cuda/flash_sm80.cu
 *
 * Block: 8 warps, 128 query rows (16 a warp) of one head (4 warps and 64 rows for head dims over
 * 192, so that shared memory fits an A100's 163 KB); key tiles of 64, K and V^T double buffered
 * in shared memory by cp.async (zero-filled past the key tail, and past the job's head dim p.d,
 * which may be less than the instance's D: flash_head_dim_instance). Rows of Q and K tiles are
 * laid out 64 elements wide or a multiple (the swizzle's period), the columns past D unused. Each warp: S = Q K^T
 * (ldmatrix from a 16-byte-chunk XOR-swizzled smem, conflict-free), online softmax in registers
 * (base 2), P converted to bf16/fp16 in registers as the A operand of O += P V. Blocks are
 * launched heaviest-first (causal). Same math as the fp64 reference in tests/gpu/.
 */
#pragma once
#include "kernels/cuda/flash_common.cuh"
#include "kernels/cuda/flash_inst.h"
#include <stdio.h>

namespace sm80 {

constexpr int BN = 64;

/* The block shape of head dim D: query rows, warps, the smem row length of Q and K tiles, blocks
 * an SM should hold (2 where the accumulators leave registers for it). */
template <int D> struct shape {
    static_assert(D % 16 == 0 && D <= 256, "instances are multiples of 16 up to 256");
    static constexpr int BM = D > 192 ? 64 : 128, NWARPS = BM / 16, NTHREADS = NWARPS * 32;
    static constexpr int RL = (D + 63) / 64 * 64;
    static constexpr int MIN_BLOCKS = D > 128 ? 1 : 2;
    static constexpr int SMEM = BM * RL * 2 + 2 * BN * RL * 2 + 2 * D * BN * 2;
};

static __device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* 16-byte async copy; bytes past `src_bytes` (0..16) are zero-filled. */
static __device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
static __device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                                   uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
template <typename T> struct mma;
template <> struct mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct mma<__half> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

/* Byte offset of 16-byte chunk `ch` of row `row` in a tile of rows of `RL` elements (2 bytes),
 * chunks XOR-swizzled by row so that ldmatrix of 8 rows hits 8 different bank groups. */
template <int RL> static __device__ __forceinline__ uint32_t swz(int row, int ch) {
    return (uint32_t)(row * RL * 2 + ((ch ^ (row & 7)) << 4));
}

template <int D, typename T, bool MASK>
__global__ void __launch_bounds__(shape<D>::NTHREADS, shape<D>::MIN_BLOCKS) flash_fwd_sm80(const flash_params p) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int BM = shape<D>::BM, NTHREADS = shape<D>::NTHREADS, RL = shape<D>::RL;
    constexpr int QB = BM * RL * 2, KB = BN * RL * 2, VB = D * BN * 2;
    const int dch = p.d / 8; /* the job's 16-byte chunks of a row; those past it are zero-filled */
    unsigned char *sQ = smem, *sK = smem + QB, *sV = smem + QB + 2 * KB; /* K, V: 2 stages each */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int64_t m_block = (int64_t)gridDim.x - 1 - blockIdx.x; /* heaviest (causal) first */
    const int h = blockIdx.y, g = h / (p.h / p.hkv);
    const int64_t r0 = m_block * BM;
    const int64_t rows = min((int64_t)BM, p.nq - r0);
    const flash_tiles tiles = flash_tile_range(p, r0, rows, BN);

    const T *q = reinterpret_cast<const T *>(p.q) + h * p.q_head_stride;
    const T *k = reinterpret_cast<const T *>(p.k) + g * p.k_head_stride;
    const T *vt = reinterpret_cast<const T *>(p.vt) + g * p.vt_head_stride;

    /* Q: BM rows x D/8 chunks; rows past nq zero-filled */
    for (int i = tid; i < BM * D / 8; i += NTHREADS) {
        int row = i / (D / 8), ch = i % (D / 8);
        bool ok = row < rows && ch < dch;
        const T *src = q + (ok ? (r0 + row) * p.q_row_stride + ch * 8 : 0);
        cp_async16(smem_u32(sQ) + swz<RL>(row, ch), src, ok ? 16 : 0);
    }
    auto load_kv = [&](int64_t n, int stage) {
        const int64_t c0 = n * BN;
        const uint32_t dk = smem_u32(sK + stage * KB), dv = smem_u32(sV + stage * VB);
        for (int i = tid; i < BN * D / 8; i += NTHREADS) { /* K: BN rows of D */
            int row = i / (D / 8), ch = i % (D / 8);
            bool ok = c0 + row < p.nk && ch < dch;
            const T *src = k + (ok ? (c0 + row) * p.k_row_stride + ch * 8 : 0);
            cp_async16(dk + swz<RL>(row, ch), src, ok ? 16 : 0);
        }
        for (int i = tid; i < D * BN / 8; i += NTHREADS) { /* V^T: D rows of BN keys */
            int row = i / (BN / 8), ch = i % (BN / 8);
            int64_t c = c0 + ch * 8;
            int64_t left = p.nk - c;
            int bytes = row >= p.d ? 0 : left >= 8 ? 16 : left > 0 ? (int)left * 2 : 0;
            const T *src = vt + (bytes ? row * p.vt_row_stride + c : 0);
            cp_async16(dv + swz<BN>(row, ch), src, bytes);
        }
    };
    if (tiles.n_tiles > tiles.begin) load_kv(tiles.begin, (int)(tiles.begin & 1));
    cp_async_commit();

    float acc_o[D / 2];
    flash_row_state st;
    const int64_t row_g = r0 + warp * 16 + (lane >> 2);
    flash_state_load<D>(p, row_g, h, lane, acc_o, st);
    const float sl2 = p.scale * FLASH_LOG2E;

    const uint32_t q_base = smem_u32(sQ);
    for (int64_t n = tiles.begin; n < tiles.n_tiles; n++) {
        const int stage = (int)(n & 1);
        if (n + 1 < tiles.n_tiles) load_kv(n + 1, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        const uint32_t k_base = smem_u32(sK + stage * KB), v_base = smem_u32(sV + stage * VB);
        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t a[4];
            ldmatrix_x4(q_base + swz<RL>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), a[0], a[1], a[2], a[3]);
#pragma unroll
            for (int jb = 0; jb < BN / 16; jb++) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(k_base + swz<RL>(jb * 16 + ((lane >> 4) << 3) + (lane & 7), kk * 2 + ((lane >> 3) & 1)),
                            b0, b1, b2, b3);
                mma<T>::run(&s[8 * jb], a, b0, b1);
                mma<T>::run(&s[8 * jb + 4], a, b2, b3);
            }
        }
        flash_softmax_tile<BN / 8, D, MASK>(p, s, acc_o, st, sl2, tiles.masked(n), row_g, n * BN, lane);
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a[4];
            a[0] = flash_type<T>::pack(s[8 * kk + 0], s[8 * kk + 1]);
            a[1] = flash_type<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
            a[2] = flash_type<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
            a[3] = flash_type<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
#pragma unroll
            for (int jb = 0; jb < D / 16; jb++) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(v_base + swz<BN>(jb * 16 + ((lane >> 4) << 3) + (lane & 7), kk * 2 + ((lane >> 3) & 1)),
                            b0, b1, b2, b3);
                mma<T>::run(&acc_o[8 * jb], a, b0, b1);
                mma<T>::run(&acc_o[8 * jb + 4], a, b2, b3);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    flash_epilogue<D>(p, row_g, h, lane, acc_o, st);
}

template <int D, typename T, bool MASK> static cudaError_t launch_mask(const flash_params &p, cudaStream_t stream) {
    using S = shape<D>;
    auto kern = flash_fwd_sm80<D, T, MASK>;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM);
    if (e != cudaSuccess) return e;
    dim3 grid((unsigned)((p.nq + S::BM - 1) / S::BM), (unsigned)p.h);
    kern<<<grid, S::NTHREADS, S::SMEM, stream>>>(p);
    return cudaGetLastError();
}
template <int D, typename T> static cudaError_t launch(const flash_params &p, cudaStream_t stream) {
    return p.use_mask ? launch_mask<D, T, true>(p, stream) : launch_mask<D, T, false>(p, stream);
}

} // namespace sm80

/* The entry point of one (head dim, element type) (kernels/cuda/flash_inst.h). */
template <int D, typename T> cudaError_t flash_sm80_run(const flash_params *p, cudaStream_t s) {
    return sm80::launch<D, T>(*p, s);
}
