/* convert.cuh — rows from the host (float32, or float16/bfloat16 as a file holds them) into the
 * kernels' layouts in the compute type T (bf16 or fp16), shared by the GPU engines (engine.cu,
 * gpu_job.cu). A 16-bit source of T's own type is copied bit for bit (widening and rounding back
 * are exact); any other pair goes through float32, rounded to nearest even. */
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ float from_f32(float x) { return x; }

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

/* four consecutive elements (16-byte loads of float32, 8-byte ones of 16-bit types) */
__device__ __forceinline__ float4 load4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
template <typename S> __device__ __forceinline__ float4 load4(const S *p) {
    uint2 u = *reinterpret_cast<const uint2 *>(p);
    S x[4];
    memcpy(x, &u, sizeof u);
    return make_float4(to_f32(x[0]), to_f32(x[1]), to_f32(x[2]), to_f32(x[3]));
}

/* src [n][heads][D] S -> dst [heads][ld][D] T at rows off.. (D a multiple of 4) */
template <typename S, typename T>
__global__ void convert_rows(const S *__restrict__ src, T *__restrict__ dst, int64_t n, int heads, int d,
                             int64_t ld, int64_t off) {
    const int64_t total4 = n * heads * d / 4;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total4; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t e = i * 4;
        int dd = (int)(e % d);
        int64_t rh = e / d;
        int hh = (int)(rh % heads);
        int64_t r = rh / heads;
        float4 v = load4(src + e);
        T *o = dst + ((int64_t)hh * ld + off + r) * d + dd;
        o[0] = from_f32<T>(v.x);
        o[1] = from_f32<T>(v.y);
        o[2] = from_f32<T>(v.z);
        o[3] = from_f32<T>(v.w);
    }
}

/* src [n][heads][D] S -> dst [heads][D][ld] T at columns off.. (a tiled transpose) */
template <typename S, typename T>
__global__ void convert_transpose(const S *__restrict__ src, T *__restrict__ dst, int64_t n, int heads, int d,
                                  int64_t ld, int64_t off) {
    __shared__ float tile[32][33];
    const int hh = blockIdx.z;
    const int64_t r0 = (int64_t)blockIdx.y * 32;
    const int d0 = blockIdx.x * 32;
    for (int i = threadIdx.y; i < 32; i += blockDim.y) { /* read rows r0+i, columns d0+tx */
        int64_t r = r0 + i;
        int dd = d0 + threadIdx.x;
        if (r < n && dd < d) tile[i][threadIdx.x] = to_f32(src[(r * heads + hh) * d + dd]);
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += blockDim.y) { /* write row d0+i, columns r0+tx */
        int dd = d0 + i;
        int64_t r = r0 + threadIdx.x;
        if (r < n && dd < d) dst[((int64_t)hh * d + dd) * ld + off + r] = from_f32<T>(tile[threadIdx.x][i]);
    }
}
