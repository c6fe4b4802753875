/* convert.h — scalar reference conversions between fp32 and the 16-bit float formats, the
 * obviously right twins of the loops in convert.c (which may use F16C). Tests compare the two.
 *   float16 : sign 15, exponent 10..14 (bias 15), mantissa 0..9
 *   bfloat16: sign 15, exponent  7..14 (bias 127), mantissa 0..6  (the top half of a float32)
 * f32 -> 16-bit rounds to nearest, ties to even; overflow gives inf; NaN stays NaN (quieted,
 * sign and top payload bits kept); subnormals both ways. */
#pragma once
#include <stdint.h>
#include <string.h>

static inline uint32_t fa_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float fa_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float fa_f16_to_f32_ref(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {                               /* zero or subnormal: m * 2^-24, exact in fp32 */
        float v = (float)m * 0x1p-24f;
        return fa_bits_f32(fa_f32_bits(v) | sign);
    }
    if (e == 31) return fa_bits_f32(sign | 0x7f800000 | (m << 13));   /* inf, NaN (payload) */
    return fa_bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

static inline uint16_t fa_f32_to_f16_ref(float f) {
    uint32_t x = fa_f32_bits(f), sign = (x >> 16) & 0x8000;
    x &= 0x7fffffff;
    if (x > 0x7f800000) return (uint16_t)(sign | 0x7e00 | ((x >> 13) & 0x3ff));   /* NaN */
    if (x >= 0x477ff000) return (uint16_t)(sign | 0x7c00);   /* >= 65520 (and inf): inf */
    if (x < 0x38800000) {                        /* below 2^-14: subnormal half or zero */
        /* adding 0.5 (ulp 2^-24) lets the FPU round |f| to a multiple of 2^-24, ties to even */
        float t = fa_bits_f32(x) + 0.5f;
        return (uint16_t)(sign | (fa_f32_bits(t) - 0x3f000000u));
    }
    uint32_t odd = (x >> 13) & 1;                /* rebias 127 -> 15, add half-ulp minus 1 + odd */
    x += 0xc8000fffu + odd;
    return (uint16_t)(sign | (x >> 13));
}

static inline float fa_bf16_to_f32_ref(uint16_t b) { return fa_bits_f32((uint32_t)b << 16); }

static inline uint16_t fa_f32_to_bf16_ref(float f) {
    uint32_t x = fa_f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);       /* NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);   /* ties to even; to inf */
}

/* Byte-swaps n elements of `size` bytes in place (big-endian files). */
void fa_byteswap(void *buf, int size, int64_t n);
