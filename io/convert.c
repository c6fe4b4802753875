/* convert.c — dtype names and element conversion to and from fp32. The loops are the scalar
 * references of convert.h; where the compiler targets F16C the float16 loops use its
 * instructions (vcvtph2ps / vcvtps2ph, round to nearest even), checked against the references
 * in tests/test_h5io.c. */
#include "io/h5io.h"
#include "io/convert.h"
#include "base/common.h"
#include <string.h>
#include <strings.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

const char *fa_dtype_name(fa_dtype t) {
    switch (t) {
    case FA_F32: return "float32";
    case FA_F16: return "float16";
    case FA_BF16: return "bfloat16";
    case FA_F64: return "float64";
    }
    return "unknown";
}

int fa_dtype_parse(const char *s, fa_dtype *out) {
    static const struct { const char *name; fa_dtype t; } names[] = {
        {"float32", FA_F32}, {"f32", FA_F32}, {"fp32", FA_F32}, {"float", FA_F32},
        {"float16", FA_F16}, {"f16", FA_F16}, {"fp16", FA_F16}, {"half", FA_F16},
        {"bfloat16", FA_BF16}, {"bf16", FA_BF16},
        {"float64", FA_F64}, {"f64", FA_F64}, {"fp64", FA_F64}, {"double", FA_F64},
    };
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) { *out = names[i].t; return 0; }
    return fa_seterr("unknown element type '%s' (expected float32, float16, bfloat16 or float64)",
                     s ? s : "(null)");
}

const char *fa_layout_name(fa_layout l) {
    return l == FA_BHND ? "bhnd" : l == FA_BNHD ? "bnhd" : "auto";
}

int fa_layout_parse(const char *s, fa_layout *out) {
    static const struct { const char *name; fa_layout l; } names[] = {
        {"bnhd", FA_BNHD}, {"bshd", FA_BNHD},      /* flash-attn's (batch, seqlen, nheads, d) */
        {"bhnd", FA_BHND}, {"bhsd", FA_BHND},      /* torch's scaled_dot_product_attention */
    };
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) { *out = names[i].l; return 0; }
    return -1;
}

int fa_dtype_size(fa_dtype t) {
    switch (t) {
    case FA_F32: return 4;
    case FA_F16: case FA_BF16: return 2;
    case FA_F64: return 8;
    }
    return 0;
}

static void f16_to_f32(const uint16_t *s, float *d, int64_t n) {
    int64_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
#endif
    for (; i < n; i++) d[i] = fa_f16_to_f32_ref(s[i]);
}

static void f32_to_f16(const float *s, uint16_t *d, int64_t n) {
    int64_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) d[i] = fa_f32_to_f16_ref(s[i]);
}

/* One thread's share of a conversion to fp32: elements [a, b). */
static void to_f32_range(fa_dtype t, const void *src, float *dst, int64_t a, int64_t b) {
    switch (t) {
    case FA_F32: memmove(dst + a, (const float *)src + a, (size_t)(b - a) * 4); break;
    case FA_F16: f16_to_f32((const uint16_t *)src + a, dst + a, b - a); break;
    case FA_BF16: {
        const uint16_t *s = src;
        for (int64_t i = a; i < b; i++) dst[i] = fa_bf16_to_f32_ref(s[i]);
        break;
    }
    case FA_F64: {
        const double *s = src;
        for (int64_t i = a; i < b; i++) dst[i] = (float)s[i];
        break;
    }
    }
}

/* Below this many elements one thread converts (a thread team costs more than it saves). */
#define PAR_MIN 65536

static void to_f32_par(fa_dtype t, const void *src, float *dst, int64_t a, int64_t b) {
    if (b - a < PAR_MIN) { to_f32_range(t, src, dst, a, b); return; }
    const int64_t step = 16384;              /* elements per task: 64 KiB of fp32 */
#pragma omp parallel for schedule(static)
    for (int64_t x = a; x < b; x += step) to_f32_range(t, src, dst, x, x + step < b ? x + step : b);
}

/* float32 to float32 with src == dst does nothing; otherwise src and dst of float32 and
 * float64 do not overlap. src may also lie in the tail of dst (the last n * size bytes of dst[0..n)): h5in widens in
 * place. Element i's fp32 lands on bytes [4i, 4i+4); the source of element j starts at byte
 * T + e·j (T = n·(4-e), e = element size). Once [0, a) is converted, the elements [a, b) can be
 * converted together in any order when their destinations end before the first source byte
 * still unread: 4b <= T + e·a. So the work goes in rounds, each converting (in parallel) all it
 * safely can: for 16-bit types half of what is left, then the next half, and so on; the last
 * few elements go one thread, front to back (each element is read before it is written over). */
void fa_to_f32(fa_dtype t, const void *src, float *dst, int64_t n) {
    const int e = fa_dtype_size(t);
    const char *s0 = src, *d0 = (const char *)dst;
    if (t == FA_F32 && s0 == d0) return;
    int in_place = e < 4 && s0 >= d0 && s0 < d0 + (size_t)n * 4;
    if (!in_place) { to_f32_par(t, src, dst, 0, n); return; }
    const int64_t T = (int64_t)(s0 - d0);
    int64_t a = 0;
    while (n - a >= PAR_MIN) {
        int64_t b = (T + (int64_t)e * a) / 4;   /* 4b <= T + e·a */
        if (b > n) b = n;
        if (b - a < PAR_MIN) break;
        to_f32_par(t, src, dst, a, b);
        a = b;
    }
    to_f32_range(t, src, dst, a, n);
}

static void from_f32_range(fa_dtype t, const float *src, void *dst, int64_t a, int64_t b) {
    switch (t) {
    case FA_F32: memmove((float *)dst + a, src + a, (size_t)(b - a) * 4); break;
    case FA_F16: f32_to_f16(src + a, (uint16_t *)dst + a, b - a); break;
    case FA_BF16: {
        uint16_t *d = dst;
        for (int64_t i = a; i < b; i++) d[i] = fa_f32_to_bf16_ref(src[i]);
        break;
    }
    case FA_F64: {
        double *d = dst;
        for (int64_t i = a; i < b; i++) d[i] = (double)src[i];
        break;
    }
    }
}

/* src and dst do not overlap (callers convert into a separate staging buffer). */
void fa_from_f32(fa_dtype t, const float *src, void *dst, int64_t n) {
    if (n < PAR_MIN) { from_f32_range(t, src, dst, 0, n); return; }
    const int64_t step = 16384;
#pragma omp parallel for schedule(static)
    for (int64_t x = 0; x < n; x += step) from_f32_range(t, src, dst, x, x + step < n ? x + step : n);
}

void fa_to_f32_swap(fa_dtype t, const void *src, float *dst, int64_t a, int64_t b, int64_t d) {
    const int64_t e = fa_dtype_size(t);
#pragma omp parallel for schedule(static) if (a * b * d >= PAR_MIN)
    for (int64_t j = 0; j < b; j++)
        for (int64_t i = 0; i < a; i++)
            to_f32_range(t, (const char *)src + (i * b + j) * d * e, dst + (j * a + i) * d, 0, d);
}

void fa_from_f32_swap(fa_dtype t, const float *src, void *dst, int64_t a, int64_t b, int64_t d) {
    const int64_t e = fa_dtype_size(t);
#pragma omp parallel for schedule(static) if (a * b * d >= PAR_MIN)
    for (int64_t j = 0; j < b; j++)
        for (int64_t i = 0; i < a; i++)
            from_f32_range(t, src + (i * b + j) * d, (char *)dst + (j * a + i) * d * e, 0, d);
}

void fa_copy_swap(int size, const void *src, void *dst, int64_t a, int64_t b, int64_t d) {
    const size_t run = (size_t)(d * size);
#pragma omp parallel for schedule(static) if (a * b * d >= PAR_MIN)
    for (int64_t j = 0; j < b; j++)
        for (int64_t i = 0; i < a; i++)
            memcpy((char *)dst + (j * a + i) * run, (const char *)src + (i * b + j) * run, run);
}

void fa_byteswap(void *buf, int size, int64_t n) {
    unsigned char *p = buf;
    for (int64_t i = 0; i < n; i++, p += size)
        for (int a = 0, b = size - 1; a < b; a++, b--) {
            unsigned char c = p[a];
            p[a] = p[b];
            p[b] = c;
        }
}
