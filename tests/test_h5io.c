/* test_h5io.c — io/: dtype conversion, HDF5 input and output, every user-facing error.
 *
 *   build/tests/test_h5io                 unit checks, one rank (tests/test_unit.py runs this)
 *   mpirun -np 3 build/tests/test_h5io mpi DIR
 *                                         uneven shards, transfers capped small, errors agreed
 *                                         across ranks (tests/test_io_h5py.py runs this)
 *   build/tests/test_h5io echo IN OUT OTYPE NAME
 *                                         reads dataset NAME (q, k or v) of IN through h5in_* in
 *                                         uneven per-rank shards and writes it as o (OTYPE) of OUT,
 *                                         with lse[b, h, n] = x[b, n, h, 0] (for h5py checks)
 *   build/tests/test_h5io open IN         prints "OK ..." or "ERR <message>" (exit 0 / 3)
 *
 * One line per check, then "N passed, N failed"; exit 1 on any failure. Input files here are
 * written through the HDF5 C API with HDF5's own conversion from native floats (values on a grid
 * exact in every type), so reading them checks our byte order and conversion independently. */
#define _GNU_SOURCE
#include "io/h5io.h"
#include "io/convert.h"
#include "io/h5priv.h"
#include "base/common.h"
#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* bytes per HDF5 transfer, as the run plan passes it (0: the 1 GiB default); the echo and open
 * modes take FA_IO_CAP_BYTES, as fa_long's planner does */
static int64_t test_cap = 0;

static int npass, nfail, me, np_;

static int check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (np_ > 1) printf("[rank %d] ", me);
    printf("%s  ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok) npass++; else nfail++;
    return ok;
}

/* An error check: status -1 and every word in the message (NULL-terminated list). */
static void check_err(int st, const char *what, ...) {
    va_list ap;
    va_start(ap, what);
    int ok = st == -1;
    for (const char *w; (w = va_arg(ap, const char *));) ok = ok && strstr(fa_errmsg(), w);
    va_end(ap);
    check(ok, "%s -> \"%s\"", what, fa_errmsg());
    fa_clearerr();
}

static int exists(const char *p) { struct stat st; return stat(p, &st) == 0; }

/* Counts left-over temporaries in dir: ".tmp." probes and ".partial" outputs. */
static int tmp_files(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c -e '\\.tmp\\.' -e '\\.partial$'", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p && fscanf(p, "%d", &n) != 1) n = -1;
    if (p) pclose(p);
    return n;
}

/* ============================ conversion ================================================= */
static double f16_value(uint16_t h) {       /* independent decoding, in double */
    int e = (h >> 10) & 31, m = h & 0x3ff;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return h & 0x8000 ? -v : v;
}

static double bf16_value(uint16_t b) {
    int e = (b >> 7) & 255, m = b & 0x7f;
    double v = e ? ldexp(128 + m, e - 134) : ldexp(m, -133);
    return b & 0x8000 ? -v : v;
}

/* Is h the nearest 16-bit value to x, ties to the even one? (finite x, finite or inf h) */
static int nearest_even(double x, uint16_t h, double (*val)(uint16_t), int expbits, int mbits) {
    uint16_t inf = (uint16_t)(((1u << expbits) - 1) << mbits), mag = h & 0x7fff;
    double maxf = val(inf - 1), ulp_max = maxf - val(inf - 2);
    if (mag == inf) return fabs(x) >= maxf + ulp_max / 2 && (h >> 15) == (x < 0);
    double got = val(h), err = fabs(x - got);
    for (int dlt = -1; dlt <= 1; dlt += 2) {
        int nb = mag + dlt;
        if (nb < 0 || nb >= inf) continue;
        double other = val((uint16_t)((h & 0x8000) | nb)), e2 = fabs(x - other);
        if (e2 < err || (e2 == err && (h & 1))) return 0;
    }
    return x == 0 || (h >> 15) == (x < 0);
}

static void test_dtype_helpers(void) {
    fa_dtype t = FA_F32;
    check(!strcmp(fa_dtype_name(FA_BF16), "bfloat16") && !strcmp(fa_dtype_name(FA_F16), "float16")
          && !strcmp(fa_dtype_name(FA_F32), "float32") && !strcmp(fa_dtype_name(FA_F64), "float64"),
          "fa_dtype_name of each type");
    int ok = 1;
    const char *names[] = {"float32", "f32", "fp32", "float16", "f16", "fp16", "half", "bfloat16",
                           "bf16", "BF16", "float64", "f64", "double"};
    const fa_dtype want[] = {FA_F32, FA_F32, FA_F32, FA_F16, FA_F16, FA_F16, FA_F16, FA_BF16,
                             FA_BF16, FA_BF16, FA_F64, FA_F64, FA_F64};
    for (int i = 0; i < 13; i++) ok &= fa_dtype_parse(names[i], &t) == 0 && t == want[i];
    check(ok, "fa_dtype_parse accepts the names and short forms");
    check_err(fa_dtype_parse("int8", &t), "fa_dtype_parse(\"int8\") refused", "int8", NULL);
    check(fa_dtype_size(FA_F32) == 4 && fa_dtype_size(FA_F16) == 2 && fa_dtype_size(FA_BF16) == 2
          && fa_dtype_size(FA_F64) == 8, "fa_dtype_size 4/2/2/8");
}

typedef struct { uint32_t f; uint16_t h; const char *what; } bits_case;

static void test_f16_known(void) {
    static const bits_case c[] = {
        {0x3f800000, 0x3c00, "1.0"}, {0xc0000000, 0xc000, "-2.0"}, {0x00000000, 0x0000, "+0"},
        {0x80000000, 0x8000, "-0"}, {0x477fe000, 0x7bff, "65504 (max)"},
        {0x477fefff, 0x7bff, "just below 65520 rounds down"}, {0x477ff000, 0x7c00, "65520 -> inf"},
        {0x7f800000, 0x7c00, "+inf"}, {0xff800000, 0xfc00, "-inf"},
        {0x33800000, 0x0001, "2^-24 (smallest subnormal)"}, {0x33000000, 0x0000, "2^-25 tie -> 0"},
        {0x33c00000, 0x0002, "3*2^-25 tie -> even 2"}, {0x33000001, 0x0001, "just above 2^-25"},
        {0x38800000, 0x0400, "2^-14 (smallest normal)"}, {0x387fc000, 0x03ff, "largest subnormal"},
        {0x3f801000, 0x3c00, "1+2^-11 tie -> even"}, {0x3f803000, 0x3c02, "1+3*2^-11 tie -> even"},
        {0x3f801001, 0x3c01, "just above the tie"}, {0x3dcccccd, 0x2e66, "0.1"},
        {0xc2f6e979, 0xd7b7, "-123.456"}, {0x7fc00000, 0x7e00, "qNaN"},
        {0xffc00000, 0xfe00, "-qNaN"}, {0x7f802000, 0x7e01, "sNaN payload kept, quieted"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        float f = fa_bits_f32(c[i].f);
        uint16_t ref = fa_f32_to_f16_ref(f), fast[9];
        float v8[9];
        for (int j = 0; j < 9; j++) v8[j] = f;           /* 8 through F16C + 1 scalar tail */
        fa_from_f32(FA_F16, v8, fast, 9);
        check(ref == c[i].h && fast[0] == c[i].h && fast[8] == c[i].h,
              "f32 %08x -> f16 %04x (%s): ref %04x, fa_from_f32 %04x/%04x", c[i].f, c[i].h,
              c[i].what, ref, fast[0], fast[8]);
    }
}

static void test_bf16_known(void) {
    static const bits_case c[] = {
        {0x3f800000, 0x3f80, "1.0"}, {0x3f808000, 0x3f80, "1+2^-8 tie -> even (down)"},
        {0x3f818000, 0x3f82, "tie from odd -> even (up)"}, {0x3f808001, 0x3f81, "above the tie"},
        {0x3f807fff, 0x3f80, "below the tie"}, {0x7f7fffff, 0x7f80, "FLT_MAX -> inf"},
        {0x7f7f7fff, 0x7f7f, "largest rounding to max finite"}, {0x7f800000, 0x7f80, "+inf"},
        {0xff800000, 0xff80, "-inf"}, {0x80000000, 0x8000, "-0"},
        {0x00010000, 0x0001, "smallest bf16 subnormal"}, {0x00008000, 0x0000, "tie -> 0"},
        {0x00018000, 0x0002, "subnormal tie -> even"}, {0x00000001, 0x0000, "f32 min subnormal"},
        {0x3dcccccd, 0x3dcd, "0.1"}, {0x7fc00000, 0x7fc0, "qNaN"},
        {0x7f800001, 0x7fc0, "sNaN with low payload quieted, stays NaN"},
        {0xffa00000, 0xffe0, "-sNaN quieted"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        float f = fa_bits_f32(c[i].f);
        uint16_t got;
        fa_from_f32(FA_BF16, &f, &got, 1);
        check(got == c[i].h, "f32 %08x -> bf16 %04x (%s): got %04x", c[i].f, c[i].h, c[i].what,
              got);
    }
}

/* Every 16-bit pattern decodes to the value the format defines and encodes back to itself. */
static void test_16bit_exhaustive(fa_dtype t) {
    uint16_t *h = fa_malloc(65536 * 2, "patterns"), *back = fa_malloc(65536 * 2, "back");
    float *f = fa_malloc(65536 * 4, "values");
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    fa_to_f32(t, h, f, 65536);
    fa_from_f32(t, f, back, 65536);
    int bad_val = 0, bad_rt = 0, bad_ref = 0, inf = t == FA_F16 ? 0x7c00 : 0x7f80;
    for (int i = 0; i < 65536; i++) {
        int mag = i & 0x7fff, nan = mag > inf;
        double v = t == FA_F16 ? f16_value(h[i]) : bf16_value(h[i]);
        float r = t == FA_F16 ? fa_f16_to_f32_ref(h[i]) : fa_bf16_to_f32_ref(h[i]);
        if (nan) {
            bad_val += f[i] == f[i] || (fa_f32_bits(f[i]) >> 31) != (unsigned)(i >> 15);
            bad_rt += (back[i] & 0x7fff) <= inf || (back[i] >> 15) != (i >> 15);
        } else {
            bad_val += mag == inf ? !isinf(f[i]) || (f[i] < 0) != (i >> 15) : (double)f[i] != v;
            bad_rt += back[i] != h[i];
            bad_val += fa_f32_bits(f[i]) != fa_f32_bits(r);
        }
        bad_ref += !nan && (t == FA_F16 ? fa_f32_to_f16_ref(f[i]) : fa_f32_to_bf16_ref(f[i])) != h[i];
    }
    check(!bad_val && !bad_rt && !bad_ref,
          "%s: all 65536 patterns decode exactly (%d bad), round-trip (%d bad), ref encoder (%d bad)",
          fa_dtype_name(t), bad_val, bad_rt, bad_ref);
    free(h), free(back), free(f);
}

/* A sweep of fp32 patterns (every 251st, all signs and exponents): the fast loop equals the
 * scalar reference bit for bit, and the result is the nearest value, ties to even (checked in
 * double against the neighbours). */
static void test_f32_sweep(fa_dtype t) {
    const int64_t n = 1 << 20;
    float *x = fa_malloc(n * 4, "sweep");
    uint16_t *fast = fa_malloc(n * 2, "sweep out");
    int64_t bad_fast = 0, bad_near = 0, total = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += (uint64_t)n * 251) {
        int64_t m = 0;
        for (uint64_t u = base; m < n && u < (1ull << 32); u += 251) x[m++] = fa_bits_f32((uint32_t)u);
        fa_from_f32(t, x, fast, m);
        for (int64_t i = 0; i < m; i++) {
            uint16_t ref = t == FA_F16 ? fa_f32_to_f16_ref(x[i]) : fa_f32_to_bf16_ref(x[i]);
            int nan = x[i] != x[i];
            bad_fast += nan ? (fast[i] & 0x7fff) <= (t == FA_F16 ? 0x7c00 : 0x7f80) : fast[i] != ref;
            if (!nan && !isinf(x[i]))
                bad_near += t == FA_F16 ? !nearest_even(x[i], ref, f16_value, 5, 10)
                                        : !nearest_even(x[i], ref, bf16_value, 8, 7);
        }
        total += m;
    }
    check(!bad_fast && !bad_near, "%s: %lld fp32 patterns: fast == ref (%lld bad), nearest-even "
          "in double (%lld bad)", fa_dtype_name(t), (long long)total, (long long)bad_fast,
          (long long)bad_near);
    free(x), free(fast);
}

/* Widening in place (the 16-bit values in the tail of the fp32 buffer, as h5in reads them) at
 * sizes where the conversion runs in parallel rounds, and the parallel narrowing: both equal the
 * scalar reference element by element. Sizes are odd so the rounds and tasks end unevenly. */
static void test_in_place_widening(fa_dtype t) {
    uint64_t x = (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)t;
    printf("# in-place widening of random %s patterns, seed %llu\n", fa_dtype_name(t), (unsigned long long)x);
    x |= 1;
    const int64_t sizes[3] = {65537, 1000003, 3 * 1048576 + 17};
    for (int k = 0; k < 3; k++) {
        const int64_t n = sizes[k];
        float *buf = fa_malloc((size_t)n * 4, "widen");
        uint16_t *h = fa_malloc((size_t)n * 2, "patterns"), *back = fa_malloc((size_t)n * 2, "back");
        for (int64_t i = 0; i < n; i++) x ^= x >> 12, x ^= x << 25, x ^= x >> 27, h[i] = (uint16_t)((x * 2685821657736338717ull) >> 48);
        uint16_t *tail = (uint16_t *)((char *)buf + n * 2);
        memcpy(tail, h, (size_t)n * 2);
        fa_to_f32(t, tail, buf, n);
        int64_t bad = 0, bad_back = 0;
        for (int64_t i = 0; i < n; i++) {
            float r = t == FA_F16 ? fa_f16_to_f32_ref(h[i]) : fa_bf16_to_f32_ref(h[i]);
            bad += r != r ? buf[i] == buf[i] : fa_f32_bits(buf[i]) != fa_f32_bits(r);   /* F16C quiets NaNs */
        }
        fa_from_f32(t, buf, back, n);
        for (int64_t i = 0; i < n; i++) {
            int nan = buf[i] != buf[i];
            bad_back += nan ? (back[i] & 0x7fff) <= (t == FA_F16 ? 0x7c00 : 0x7f80) : back[i] != h[i];
        }
        check(!bad && !bad_back, "%s: %lld values widened in place (%lld differ from the reference), "
              "narrowed back (%lld differ)", fa_dtype_name(t), (long long)n, (long long)bad,
              (long long)bad_back);
        free(buf), free(h), free(back);
    }
}

/* fa_copy_floats (base/common.c), the parallel host copy of whole chunks: copy and add, a size
 * that ends inside a piece, equal to the serial loop element by element. */
static void test_copy_floats(void) {
    const int64_t n = 3 * 262144 + 12345;
    float *a = fa_malloc((size_t)n * 4, "copy a"), *b = fa_malloc((size_t)n * 4, "copy b");
    for (int64_t i = 0; i < n; i++) a[i] = (float)(i % 1021) * 0.5f, b[i] = -1.0f;
    fa_copy_floats(b, a, n, 0);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += b[i] != a[i];
    fa_copy_floats(b, a, n, 1);
    for (int64_t i = 0; i < n; i++) bad += b[i] != 2.0f * a[i];
    check(!bad, "fa_copy_floats: %lld floats copied, then added (%lld differ)", (long long)n, (long long)bad);
    free(a), free(b);
}

static void test_f64_and_swap(void) {
    double d[6] = {0.1, 1e300, -1e300, 1e-50, 3.0, NAN};
    float f[6];
    fa_to_f32(FA_F64, d, f, 6);
    check(f[0] == 0.1f && isinf(f[1]) && f[1] > 0 && isinf(f[2]) && f[2] < 0 && f[3] == 0 &&
          f[4] == 3.0f && isnan(f[5]), "float64 -> float32: rounding, overflow to inf, underflow, NaN");
    double back[2];
    fa_from_f32(FA_F64, f, back, 2);
    check(back[0] == (double)0.1f && isinf(back[1]), "float32 -> float64 exact");
    uint32_t w[2] = {0x11223344, 0xa1b2c3d4};
    uint16_t h[3] = {0x0102, 0x0304, 0xff00};
    fa_byteswap(w, 4, 2);
    fa_byteswap(h, 2, 3);
    check(w[0] == 0x44332211 && w[1] == 0xd4c3b2a1 && h[0] == 0x0201 && h[2] == 0x00ff,
          "fa_byteswap 4- and 2-byte elements");
}

/* ============================ files for the input tests ================================== */
/* Grid values exact in bf16, f16, f32, f64: multiples of 1/8 in [-2, 2]. */
static float grid(int64_t b, int64_t n, int64_t h, int64_t d) {
    return (float)((b * 7 + n * 3 + h * 5 + d * 11) % 33 - 16) / 8.0f;
}

/* T_UINT16_BF16, T_INT16_BF16: bf16 bit patterns in 16-bit integers with the attribute dtype =
 * "bfloat16" (numpy's uint16, torch's .view(torch.int16)); T_UINT16: the same without it;
 * T_INT16_F16: int16 with dtype = "float16" */
typedef enum { T_F32, T_F16, T_BF16, T_F64, T_INT32, T_STR, T_COMPOUND, T_UINT16_BF16,
               T_F24, T_INT16_BF16, T_UINT16, T_INT16_F16 } kind;
#define INT16_KIND(k) ((k) == T_UINT16_BF16 || (k) == T_INT16_BF16 || (k) == T_UINT16 || \
                       (k) == T_INT16_F16)

static hid_t make_type(kind k, int big) {
    hid_t t;
    switch (k) {
    case T_F32: t = h5io_file_type(FA_F32); break;
    case T_F16: t = h5io_file_type(FA_F16); break;
    case T_BF16: t = h5io_file_type(FA_BF16); break;
    case T_F64: t = h5io_file_type(FA_F64); break;
    case T_INT32: return H5Tcopy(H5T_STD_I32LE);
    case T_UINT16_BF16: case T_UINT16: t = H5Tcopy(H5T_STD_U16LE); break;
    case T_INT16_BF16: case T_INT16_F16: t = H5Tcopy(H5T_STD_I16LE); break;
    case T_STR: t = H5Tcopy(H5T_C_S1); H5Tset_size(t, 8); return t;
    case T_COMPOUND:
        t = H5Tcreate(H5T_COMPOUND, 8);
        H5Tinsert(t, "re", 0, H5T_NATIVE_FLOAT);
        H5Tinsert(t, "im", 4, H5T_NATIVE_FLOAT);
        return t;
    case T_F24:                                     /* a 24-bit float: a float, but not ours */
        t = H5Tcopy(H5T_IEEE_F32LE);
        H5Tset_fields(t, 23, 16, 7, 0, 16);
        H5Tset_size(t, 3);
        H5Tset_precision(t, 24);
        H5Tset_ebias(t, 63);
        break;
    default: return -1;
    }
    if (big) H5Tset_order(t, H5T_ORDER_BE);
    return t;
}

typedef struct { const char *name; int ndims; int64_t dims[5]; kind k; int big; } ds_spec;

/* Writes one dataset; float kinds get grid values through HDF5's conversion from native float;
 * nonfinite (if not NULL) puts a NaN at linear index nonfinite[0] and +Inf at nonfinite[1]. */
static void write_ds(hid_t file, const ds_spec *s, const int64_t *nonfinite) {
    hsize_t d[5];
    int64_t n = 1;
    for (int i = 0; i < s->ndims; i++) d[i] = s->dims[i], n *= s->dims[i];
    hid_t sp = H5Screate_simple(s->ndims, d, NULL), t = make_type(s->k, s->big);
    hid_t ds = H5Dcreate2(file, s->name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds < 0) fa_fail("test: creating dataset %s", s->name);
    if (n > 0 && (s->k <= T_F64 || s->k == T_F24)) {
        float *x = fa_malloc(n * 4, "grid");
        int64_t D = s->dims[s->ndims - 1], Hh = s->ndims > 2 ? s->dims[s->ndims - 2] : 1,
                N = s->ndims > 3 ? s->dims[s->ndims - 3] : 1;
        for (int64_t i = 0; i < n; i++)
            x[i] = grid(i / (N * Hh * D), i / (Hh * D) % N, i / D % Hh, i % D);
        if (nonfinite) x[nonfinite[0]] = NAN, x[nonfinite[1]] = INFINITY;
        if (H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) < 0)
            fa_fail("test: writing dataset %s", s->name);
        free(x);
    }
    if (n > 0 && INT16_KIND(s->k)) {       /* the grid's bf16 bits, swapped by HDF5 as integers */
        float *x = fa_malloc(n * 4, "grid");
        uint16_t *bits = fa_malloc(n * 2, "bits");
        int64_t D = s->dims[s->ndims - 1], Hh = s->dims[s->ndims - 2], N = s->dims[s->ndims - 3];
        for (int64_t i = 0; i < n; i++)
            x[i] = grid(i / (N * Hh * D), i / (Hh * D) % N, i / D % Hh, i % D);
        fa_from_f32(FA_BF16, x, bits, n);
        hid_t mt = H5Tcopy(t);
        H5Tset_order(mt, H5T_ORDER_LE);
        if (H5Dwrite(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, bits) < 0)
            fa_fail("test: writing dataset %s", s->name);
        H5Tclose(mt), free(x), free(bits);
    }
    if (s->k == T_UINT16_BF16 || s->k == T_INT16_BF16 || s->k == T_INT16_F16) {
        const char *v = s->k == T_INT16_F16 ? "float16" : s->k == T_INT16_BF16 ? "BFloat16"
                                                                               : "bfloat16";
        hid_t st = H5Tcopy(H5T_C_S1), as = H5Screate(H5S_SCALAR);
        H5Tset_size(st, H5T_VARIABLE);
        hid_t a = H5Acreate2(ds, "dtype", st, as, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, st, &v);
        H5Aclose(a), H5Sclose(as), H5Tclose(st);
    }
    H5Dclose(ds), H5Tclose(t), H5Sclose(sp);
}

/* q, k, v with the given specs (NULL name: dataset left out); serial, default driver. */
static void make_file(const char *path, const ds_spec *q, const ds_spec *k, const ds_spec *v,
                      const int64_t *nonfinite_k) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) fa_fail("test: creating %s", path);
    if (q && q->name) write_ds(f, q, NULL);
    if (k && k->name) write_ds(f, k, nonfinite_k);
    if (v && v->name) write_ds(f, v, NULL);
    H5Fclose(f);
}

#define QKV(B, Nq, Nk, H, Hkv, D, kq, kk, kv, big)                                          \
    (ds_spec){"q", 4, {B, Nq, H, D}, kq, big}, (ds_spec){"k", 4, {B, Nk, Hkv, D}, kk, big}, \
    (ds_spec){"v", 4, {B, Nk, Hkv, D}, kv, big}

/* Reads `name` through h5in in the given ranges of batch b and compares with the grid. */
static int64_t read_and_compare(h5in *in, const char *name, int64_t b, const row_range *r,
                                int nr, int64_t heads, int64_t D, int *st) {
    int64_t rows = 0, bad = 0;
    for (int i = 0; i < nr; i++) rows += r[i].n;
    float *x = fa_malloc((rows ? rows : 1) * heads * D * 4, "read");
    *st = h5in_read_rows(in, name, b, r, nr, x, 1);
    for (int i = 0, at = 0; *st == 0 && i < nr; i++)
        for (int64_t n = r[i].start; n < r[i].start + r[i].n; n++, at++)
            for (int64_t h = 0; h < heads; h++)
                for (int64_t d = 0; d < D; d++)
                    bad += x[(at * heads + h) * D + d] != grid(b, n, h, d);
    free(x);
    return bad;
}

static void test_read_types(const char *dir) {
    const kind kinds[] = {T_F32, T_F16, T_BF16, T_F64};
    const fa_dtype want[] = {FA_F32, FA_F16, FA_BF16, FA_F64};
    char path[512];
    for (int big = 0; big < 2; big++)
        for (int i = 0; i < 4; i++) {
            snprintf(path, sizeof path, "%s/in_%s_%s.h5", dir, fa_dtype_name(want[i]),
                     big ? "be" : "le");
            ds_spec s[3] = {QKV(2, 19, 23, 4, 2, 6, kinds[i], kinds[i], kinds[(i + 1) % 4], big)};
            make_file(path, &s[0], &s[1], &s[2], NULL);
            h5in *in;
            fa_shape sh;
            int st = h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh), rst = -1;
            if (!check(st == 0, "open %s", path)) { printf("   %s\n", fa_errmsg()); continue; }
            check(sh.B == 2 && sh.Nq == 19 && sh.Nk == 23 && sh.H == 4 && sh.Hkv == 2 && sh.D == 6
                  && sh.q_type == want[i] && sh.k_type == want[i] && sh.v_type == want[(i + 1) % 4],
                  "shape and element types of %s %s-endian", fa_dtype_name(want[i]),
                  big ? "big" : "little");
            row_range r[3] = {{3, 5}, {0, 2}, {15, 4}};       /* not ascending on purpose */
            int64_t bad = read_and_compare(in, "q", 1, r, 3, 4, 6, &rst);
            int64_t badk = 0, badv = 0;
            row_range all = {0, 23};
            int st2 = -1, st3 = -1;
            badk = read_and_compare(in, "k", 0, &all, 1, 2, 6, &st2);
            badv = read_and_compare(in, "v", 1, &all, 1, 2, 6, &st3);
            check(rst == 0 && st2 == 0 && st3 == 0 && !bad && !badk && !badv,
                  "read q/k/v %s %s-endian exactly (%lld/%lld/%lld wrong)", fa_dtype_name(want[i]),
                  big ? "big" : "little", (long long)bad, (long long)badk, (long long)badv);
            h5in_close(in);
            int nd;
            int64_t dims[8];
            fa_dtype t;
            float blk[12];
            int64_t start[4] = {1, 2, 1, 0}, count[4] = {1, 2, 1, 6};
            int ok = h5_dataset_info(path, "q", &nd, dims, &t) == 0 && nd == 4 && dims[1] == 19 &&
                     t == want[i] && h5_read_block(path, "q", 4, start, count, blk) == 0;
            for (int j = 0; ok && j < 12; j++) ok = blk[j] == grid(1, 2 + j / 6, 1, j % 6);
            check(ok, "h5_dataset_info and h5_read_block on %s", path);
        }
}

/* bf16 bit patterns in uint16 and int16 datasets with the attribute dtype = "bfloat16", either
 * byte order: read as bfloat16 by h5in (direct reads and HDF5's), h5_dataset_info and
 * h5_read_block; k's digest the same as that of the same bits in the bf16 float type. */
static void test_read_bf16_integers(const char *dir) {
    static const struct { kind k; int big; const char *what; } cases[] = {
        {T_UINT16_BF16, 0, "uint16"}, {T_UINT16_BF16, 1, "uint16 big-endian"},
        {T_INT16_BF16, 0, "int16"}, {T_INT16_BF16, 1, "int16 big-endian"}};
    char path[512], ref[512];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const kind k = cases[c].k;
        snprintf(path, sizeof path, "%s/in_bf16_int_%zu.h5", dir, c);
        snprintf(ref, sizeof ref, "%s/in_bf16_float_%zu.h5", dir, c);
        ds_spec s[3] = {QKV(2, 19, 23, 4, 2, 6, k, k, k, cases[c].big)};
        ds_spec r[3] = {QKV(2, 19, 23, 4, 2, 6, T_BF16, T_BF16, T_BF16, cases[c].big)};
        make_file(path, &s[0], &s[1], &s[2], NULL);
        make_file(ref, &r[0], &r[1], &r[2], NULL);
        h5in *in, *rin;
        fa_shape sh, rsh;
        if (!check(h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh) == 0, "open %s (%s)",
                   cases[c].what, fa_errmsg())) continue;
        check(sh.q_type == FA_BF16 && sh.k_type == FA_BF16 && sh.v_type == FA_BF16 && sh.Nq == 19,
              "%s with dtype = bfloat16: element type bfloat16", cases[c].what);
        row_range q[2] = {{3, 5}, {0, 2}}, all = {0, 23};
        int st[4] = {-1, -1, -1, -1};
        int64_t bad = read_and_compare(in, "q", 1, q, 2, 4, 6, &st[0]);
        bad += read_and_compare(in, "k", 0, &all, 1, 2, 6, &st[1]);
        h5in_direct_reads(in, 0);
        bad += read_and_compare(in, "v", 1, &all, 1, 2, 6, &st[2]);
        bad += read_and_compare(in, "k", 1, &all, 1, 2, 6, &st[3]);
        h5in_direct_reads(in, 1);
        check(!st[0] && !st[1] && !st[2] && !st[3] && !bad,
              "%s: q, k, v read exactly, directly and through HDF5 (%lld wrong)", cases[c].what,
              (long long)bad);
        uint64_t d[3], rd[3];
        h5in_take_digests(in, d);
        h5in_close(in);
        if (check(h5in_open(ref, NULL, MPI_COMM_SELF, test_cap, &rin, &rsh) == 0, "open %s", ref)) {
            read_and_compare(rin, "k", 0, &all, 1, 2, 6, &st[0]);
            read_and_compare(rin, "v", 1, &all, 1, 2, 6, &st[1]);
            read_and_compare(rin, "k", 1, &all, 1, 2, 6, &st[2]);
            h5in_take_digests(rin, rd);
            h5in_close(rin);
            check(d[1] == rd[1] && d[2] == rd[2] && d[1] != 0,
                  "%s: the digests of k and v are those of the bf16 float type's", cases[c].what);
        }
        int nd;
        int64_t dims[8];
        fa_dtype t;
        float blk[12];
        int64_t start[4] = {1, 2, 1, 0}, count[4] = {1, 2, 1, 6};
        int ok = h5_dataset_info(path, "k", &nd, dims, &t) == 0 && t == FA_BF16 &&
                 h5_read_block(path, "k", 4, start, count, blk) == 0;
        for (int j = 0; ok && j < 12; j++) ok = blk[j] == grid(1, 2 + j / 6, 1, j % 6);
        check(ok, "%s: h5_dataset_info and h5_read_block (fa_long check's reads)", cases[c].what);
    }
}

/* Capped transfers: overlapping, unordered and empty ranges, with a cap below one row. */
static void test_read_capped(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/in_cap.h5", dir);
    ds_spec s[3] = {QKV(1, 40, 40, 2, 1, 8, T_BF16, T_F16, T_F32, 0)};
    make_file(path, &s[0], &s[1], &s[2], NULL);
    const char *caps[] = {"1", "100", "200", "1000000"};
    for (int c = 0; c < 4; c++) {
        test_cap = fa_parse_size(caps[c]);
        h5in *in;
        fa_shape sh;
        if (!check(h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh) == 0, "open %s", path)) continue;
        row_range r[5] = {{10, 13}, {5, 10}, {0, 0}, {30, 10}, {31, 2}};
        int st;
        int64_t bad = read_and_compare(in, "q", 0, r, 5, 2, 8, &st);
        check(st == 0 && !bad, "FA_IO_CAP_BYTES=%s: overlapping/unordered/empty ranges read "
              "right (%lld wrong)", caps[c], (long long)bad);
        h5in_close(in);
    }
    test_cap = 0;
}

/* ============================ input errors ================================================ */
static int open_err_on(const char *path, MPI_Comm comm) {
    h5in *in = NULL;
    fa_shape sh;
    int st = h5in_open(path, NULL, comm, test_cap, &in, &sh);
    if (st == 0) h5in_close(in);
    return st;
}

static int open_err(const char *path) { return open_err_on(path, MPI_COMM_SELF); }

static void bad_file(const char *dir, const char *tag, ds_spec q, ds_spec k, ds_spec v,
                     const char *w1, const char *w2, const char *w3) {
    char path[512], what[600];
    snprintf(path, sizeof path, "%s/bad_%s.h5", dir, tag);
    make_file(path, &q, &k, &v, NULL);
    snprintf(what, sizeof what, "input error: %s", tag);
    check_err(open_err(path), what, path, w1, w2, w3, NULL);
}

static void test_input_errors(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/nope.h5", dir);
    check_err(open_err(path), "missing input file", path, "No such file", NULL);
    snprintf(path, sizeof path, "%s/text.h5", dir);
    FILE *fp = fopen(path, "w");
    fputs("not hdf5\n", fp);
    fclose(fp);
    check_err(open_err(path), "text file as input", path, "not an HDF5 file", NULL);
    check_err(open_err(dir), "folder as input", "is a folder", NULL);
    ds_spec none = {NULL, 0, {0}, T_F32, 0};
    ds_spec g[3] = {QKV(1, 8, 8, 4, 2, 16, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "no_v", g[0], g[1], none, "'v'", "not found", "[B, Nk, Hkv, D]");
    bad_file(dir, "no_q", none, g[1], g[2], "'q'", "not found", NULL);
    ds_spec q3 = {"q", 3, {8, 4, 16}, T_F32, 0};
    bad_file(dir, "rank3", q3, g[1], g[2], "'q'", "rank 3", "[8, 4, 16]");
    ds_spec k5 = {"k", 5, {1, 8, 2, 16, 1}, T_F32, 0};
    bad_file(dir, "rank5", g[0], k5, g[2], "'k'", "rank 5", "expected rank 4");
    ds_spec b2[3] = {QKV(2, 8, 8, 4, 2, 16, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "batch", g[0], b2[1], b2[2], "'k'", "B=2", "'q'");
    ds_spec d8[3] = {QKV(1, 8, 8, 4, 2, 8, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "dim", g[0], g[1], d8[2], "'v'", "D=8", "head dim");
    ds_spec nk[3] = {QKV(1, 8, 10, 4, 2, 16, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "nk", g[0], g[1], nk[2], "'v'", "[1, 10, 2, 16]", "Nk or Hkv");
    ds_spec hk[3] = {QKV(1, 8, 8, 4, 4, 16, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "hkv", g[0], g[1], hk[2], "'v'", "Nk or Hkv", NULL);
    ds_spec h6[3] = {QKV(1, 8, 8, 6, 4, 16, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "heads", h6[0], h6[1], h6[2], "H=6", "Hkv=4", "multiple");
    ds_spec d300[3] = {QKV(1, 4, 4, 1, 1, 300, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "d300", d300[0], d300[1], d300[2], "D=300", "256", NULL);
    ds_spec e[3] = {QKV(1, 0, 8, 4, 2, 16, T_F32, T_F32, T_F32, 0)};
    bad_file(dir, "empty", e[0], g[1], g[2], "'q'", "empty", "[1, 0, 4, 16]");
    ds_spec ty[3] = {QKV(1, 8, 8, 4, 2, 16, T_INT32, T_STR, T_COMPOUND, 0)};
    bad_file(dir, "int", ty[0], g[1], g[2], "'q'", "32-bit integer", "expected float32");
    bad_file(dir, "int_hint", ty[0], g[1], g[2], "dtype = \"bfloat16\"", "16-bit HDF5 float",
             "fa_long.write_inputs");
    bad_file(dir, "str", g[0], ty[1], g[2], "'k'", "string", NULL);
    bad_file(dir, "compound", g[0], g[1], ty[2], "'v'", "compound", NULL);
    /* 16-bit integers are bf16 bit patterns only with the attribute dtype = "bfloat16" */
    ds_spec u[3] = {QKV(1, 8, 8, 4, 2, 16, T_UINT16, T_F24, T_INT16_F16, 0)};
    bad_file(dir, "uint16_no_dtype", u[0], g[1], g[2], "'q' holds 16-bit integer elements;",
             "uint16 or int16 dataset with the attribute dtype = \"bfloat16\"",
             "fa_long.write_inputs");
    bad_file(dir, "int16_float16", g[0], g[1], u[2], "'v' holds 16-bit integer elements "
             "(attribute dtype = \"float16\")", "7 mantissa bits", NULL);
    bad_file(dir, "float24", g[0], u[1], g[2], "'k'", "24-bit float", "16 mantissa bits");
    /* a group named q */
    snprintf(path, sizeof path, "%s/bad_group.h5", dir);
    make_file(path, NULL, &g[1], &g[2], NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "q", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(f);
    check_err(open_err(path), "group 'q' instead of a dataset", "'q'", "not a dataset", NULL);
}

static void test_read_errors(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/nonfinite.h5", dir);
    ds_spec g[3] = {QKV(2, 8, 12, 4, 2, 16, T_F32, T_BF16, T_F32, 0)};
    /* k [2, 12, 2, 16]: NaN at [1, 5, 1, 3], +Inf at [1, 9, 0, 0] */
    int64_t nf[2] = {((1 * 12 + 5) * 2 + 1) * 16 + 3, ((1 * 12 + 9) * 2 + 0) * 16 + 0};
    make_file(path, &g[0], &g[1], &g[2], nf);
    h5in *in;
    fa_shape sh;
    if (!check(h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh) == 0, "open %s", path)) return;
    float *x = fa_malloc(12 * 2 * 16 * 4, "k");
    row_range all = {0, 12}, late = {6, 6}, early = {0, 5};
    check_err(h5in_read_rows(in, "k", 1, &all, 1, x, 1), "NaN in k found with its index",
              "'k'", "NaN at [1, 5, 1, 3]", "--allow-nonfinite", NULL);
    check_err(h5in_read_rows(in, "k", 1, &late, 1, x, 1), "+Inf in k found with its index",
              "'k'", "+Inf at [1, 9, 0, 0]", NULL);
    check(h5in_read_rows(in, "k", 1, &early, 1, x, 1) == 0, "rows before the NaN read fine");
    check(h5in_read_rows(in, "k", 1, &all, 1, x, 0) == 0 && isnan(x[(5 * 2 + 1) * 16 + 3]) &&
          isinf(x[(9 * 2) * 16]), "check_finite 0: NaN and Inf passed through");
    row_range bad = {10, 3}, neg = {-1, 2};
    check_err(h5in_read_rows(in, "k", 0, &bad, 1, x, 1), "rows past Nk refused", "[10, 13)",
              "N=12", NULL);
    check_err(h5in_read_rows(in, "k", 0, &neg, 1, x, 1), "negative start refused", "[-1, 1)",
              NULL);
    check_err(h5in_read_rows(in, "k", 2, &all, 1, x, 1), "batch past B refused", "batch 2",
              "B=2", NULL);
    check_err(h5in_read_rows(in, "o", 0, &all, 1, x, 1), "unknown dataset name refused", "'o'",
              NULL);
    check(h5in_read_rows(in, "k", 0, NULL, 0, x, 1) == 0, "no ranges: nothing read, status 0");
    h5in_close(in);
    /* a float64 value beyond float32's range reads as Inf: refused, and the message says why */
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(file, "v", H5P_DEFAULT);
    hsize_t vd[4] = {2, 12, 2, 16};
    hid_t sp = H5Screate_simple(4, vd, NULL);
    hid_t ds = H5Dcreate2(file, "v", H5T_IEEE_F64BE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    double *big = fa_calloc(2 * 12 * 2 * 16, sizeof(double), "v");
    big[((0 * 12 + 2) * 2 + 0) * 16 + 1] = -1e300;
    H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, big);
    H5Dclose(ds), H5Sclose(sp), H5Fclose(file), free(big);
    check(h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh) == 0 && sh.v_type == FA_F64, "reopen with f64 v");
    check_err(h5in_read_rows(in, "v", 0, &all, 1, x, 1), "float64 overflow refused",
              "'v'", "-Inf (in float32) at [0, 2, 0, 1]", NULL);
    h5in_close(in);
    free(x);
}

/* The finite scan on the file's bits (h5in.c: scan_source) against brute force after the
 * conversion: for each element type, byte order and layout, random values with a few large ones,
 * NaN, +Inf and -Inf at random places, read in several ranges with transfers of a few rows: the
 * same first non-finite element (index and kind) and the same largest finite |x| (h5in's
 * last_absmax) as a scan of the fp32 rows. */
static void test_scan_source(const char *dir) {
    /* integer: 1 stores bf16 as int16 bit patterns, 2 as uint16 (attribute dtype = bfloat16) */
    static const struct { fa_dtype t; int big; fa_layout lay; const char *what; int integer; } cases[] = {
        {FA_F32, 0, FA_BNHD, "float32", 0}, {FA_F16, 0, FA_BNHD, "float16", 0},
        {FA_BF16, 0, FA_BNHD, "bfloat16", 0}, {FA_BF16, 1, FA_BNHD, "bfloat16 big-endian", 0},
        {FA_F16, 0, FA_BHND, "float16 bhnd", 0}, {FA_F64, 0, FA_BNHD, "float64", 0},
        {FA_BF16, 0, FA_BNHD, "bfloat16 as int16", 1},
        {FA_BF16, 1, FA_BNHD, "bfloat16 as uint16 big-endian", 2},
        {FA_BF16, 0, FA_BHND, "bfloat16 as int16 bhnd", 1},
    };
    const int64_t B = 2, N = 37, Hh = 3, D = 24, n = B * N * Hh * D;
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/scan.h5", dir);
    float *x = fa_malloc((size_t)n * 4, "scan values"), *got = fa_malloc((size_t)n * 4, "read");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int trial = 0; trial < 12; trial++) {
            for (int64_t i = 0; i < n; i++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                x[i] = ((float)(seed >> 40) / (float)(1 << 24) - 0.5f) * 4.0f;
            }
            seed = seed * 6364136223846793005ull + 1;
            x[(seed >> 33) % n] = 1000.0f;                   /* the largest, somewhere */
            int nbad = trial % 4;                            /* 0: all finite */
            for (int k = 0; k < nbad; k++) {
                seed = seed * 6364136223846793005ull + 1;
                x[(seed >> 33) % n] = k == 0 ? NAN : k == 1 ? INFINITY : -INFINITY;
            }
            /* the file: [B, N, H, D] or [B, H, N, D] */
            hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
            const int bh = cases[c].lay == FA_BHND;
            hsize_t dk[4] = {B, bh ? Hh : N, bh ? N : Hh, D}, dq[4] = {B, bh ? Hh : N, bh ? N : Hh, D};
            hid_t t = cases[c].integer ? H5Tcopy(cases[c].integer == 1 ? H5T_STD_I16LE : H5T_STD_U16LE)
                                       : h5io_file_type(cases[c].t);
            if (cases[c].big) H5Tset_order(t, H5T_ORDER_BE);
            float *fx = fa_malloc((size_t)n * 4, "file order");
            for (int64_t i = 0; i < n; i++) {   /* x is bnhd; the file's order */
                int64_t b = i / (N * Hh * D), r = i / (Hh * D) % N, h = i / D % Hh, d = i % D;
                fx[bh ? ((b * Hh + h) * N + r) * D + d : i] = x[i];
            }
            /* the file's bytes made here (fa_long's rounding, then the byte order), written
             * with the file's type as memory type: HDF5 converts nothing (its own float ->
             * float16 conversion rounds differently on contiguous and chunked writes) */
            const int es = fa_dtype_size(cases[c].t);
            unsigned char *raw = fa_malloc((size_t)n * es, "file bytes");
            fa_from_f32(cases[c].t, fx, raw, n);
            if (cases[c].big) fa_byteswap(raw, es, n);
            const char *names[3] = {"q", "k", "v"};
            /* odd trials store v in compressed chunks: no direct reads, HDF5's path */
            hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
            hsize_t ch[4] = {1, 2, 2, 8};
            H5Pset_chunk(dcpl, 4, ch);
            H5Pset_deflate(dcpl, 1);
            for (int ds = 0; ds < 3; ds++) {
                hid_t sp = H5Screate_simple(4, ds ? dk : dq, NULL);
                hid_t d = H5Dcreate2(f, names[ds], t, sp, H5P_DEFAULT,
                                     ds == 2 && trial % 2 ? dcpl : H5P_DEFAULT, H5P_DEFAULT);
                H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw);
                if (cases[c].integer) h5io_write_str_attr(d, "dtype", "bfloat16");
                if (bh) {
                    hid_t st = H5Tcopy(H5T_C_S1), as = H5Screate(H5S_SCALAR);
                    H5Tset_size(st, 4);
                    hid_t a = H5Acreate2(d, "layout", st, as, H5P_DEFAULT, H5P_DEFAULT);
                    H5Awrite(a, st, "bhnd");
                    H5Aclose(a), H5Sclose(as), H5Tclose(st);
                }
                H5Dclose(d), H5Sclose(sp);
            }
            H5Pclose(dcpl), H5Tclose(t), H5Fclose(f), free(fx), free(raw);
            h5in *in;
            fa_shape sh;
            int64_t cap = test_cap;
            test_cap = (int64_t)(3 + trial % 3) * Hh * D * fa_dtype_size(cases[c].t);  /* 3-5 rows */
            int ok = h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh) == 0;
            test_cap = cap;
            if (!check(ok, "scan: open %s (%s)", path, fa_errmsg())) continue;
            row_range r[3] = {{0, 5}, {9, 20}, {31, 6}};      /* three ranges, gaps between */
            for (int64_t b = 0; b < B; b++) {
                /* brute force over the same rows as read without the check (the file's values,
                 * as HDF5 rounded them on writing, converted) */
                if (!check(h5in_read_rows(in, "k", b, r, 3, got, 0) == 0, "scan: unchecked read"))
                    continue;
                int64_t first = -1, at = 0;
                float amax = 0, fv = 0;
                for (int i = 0; i < 3; i++)
                    for (int64_t e = 0; e < r[i].n * Hh * D; e++, at++) {
                        const int64_t g = (b * N + r[i].start) * Hh * D + e;
                        const float v = got[at];
                        if (!isfinite(v)) { if (first < 0) first = g, fv = v; }
                        else if (fabsf(v) > amax) amax = fabsf(v);
                    }
                int st = h5in_read_rows(in, "k", b, r, 3, got, 1);
                if (fa_dtype_size(cases[c].t) == 2) {
                    /* the same rows kept in the file's 16-bit type (the GPU's transfers): the
                     * same values (widened here), verdict, message and largest |x|, through
                     * pread and through H5Dread */
                    char msg[1024];
                    snprintf(msg, sizeof msg, "%s", st ? fa_errmsg() : "");
                    const float amax32 = h5in_last_absmax(in, "k");
                    const fa_dtype nt = h5in_native_type(in, 1);
                    const int64_t m = (5 + 20 + 6) * Hh * D;
                    uint16_t *raw16 = fa_malloc((size_t)m * 2, "raw rows");
                    float *wide = fa_malloc((size_t)m * 4, "widened"), *ref = fa_malloc((size_t)m * 4, "ref");
                    int same = nt == cases[c].t;
                    for (int direct = 1; direct >= 0; direct--) {
                        h5in_direct_reads(in, direct);
                        int s0 = h5in_read_rows(in, "k", b, r, 3, ref, 0);
                        int s1 = h5in_read_rows_as(in, "k", b, r, 3, raw16, nt, 0);
                        fa_to_f32(cases[c].t, raw16, wide, m);
                        same = same && s0 == 0 && s1 == 0 && memcmp(wide, ref, (size_t)m * 4) == 0;
                        int s2 = h5in_read_rows_as(in, "k", b, r, 3, raw16, nt, 1);
                        same = same && s2 == st &&
                               (st ? !strcmp(fa_errmsg(), msg) : h5in_last_absmax(in, "k") == amax32);
                    }
                    h5in_direct_reads(in, 1);
                    check(same, "scan %s trial %d batch %lld: rows kept as %s: the same values, "
                          "verdict and largest |x| (pread and H5Dread)", cases[c].what, trial,
                          (long long)b, fa_dtype_name(nt));
                    const fa_dtype other = cases[c].t == FA_F16 ? FA_BF16 : FA_F16;
                    fa_clearerr();
                    check(h5in_read_rows_as(in, "k", b, r, 3, raw16, other, 0) == -1 &&
                          strstr(fa_errmsg(), "cannot be handed over as") != NULL,
                          "scan %s: rows asked for as %s refused -> \"%s\"", cases[c].what,
                          fa_dtype_name(other), fa_errmsg());
                    free(raw16), free(wide), free(ref);
                    if (st) fa_seterr("%s", msg);
                }
                {   /* k straight from the file and through H5Dread, v (chunked on odd trials)
                     * against k (the same values): the same bits */
                    const int64_t m = (5 + 20 + 6) * Hh * D;
                    float *a = fa_malloc((size_t)m * 4, "direct"), *h = fa_malloc((size_t)m * 4, "h5");
                    int s1 = h5in_read_rows(in, "k", b, r, 3, a, 0);
                    h5in_direct_reads(in, 0);
                    int s2 = h5in_read_rows(in, "k", b, r, 3, h, 0);
                    h5in_direct_reads(in, 1);
                    int same = s1 == 0 && s2 == 0 && memcmp(a, h, (size_t)m * 4) == 0;
                    int s3 = h5in_read_rows(in, "v", b, r, 3, h, 0);
                    same = same && s3 == 0 && memcmp(a, h, (size_t)m * 4) == 0;
                    for (int64_t e = 0; !same && e < m; e++)
                        if (memcmp(a + e, h + e, 4)) {
                            printf("# first difference at %lld: %08x %08x\n", (long long)e,
                                   fa_f32_bits(a[e]), fa_f32_bits(h[e]));
                            break;
                        }
                    check(same, "scan %s trial %d batch %lld: direct, HDF5 and %s reads agree",
                          cases[c].what, trial, (long long)b, trial % 2 ? "chunked" : "contiguous");
                    free(a), free(h);
                }
                if (first < 0) {
                    check(st == 0 && h5in_last_absmax(in, "k") == amax,
                          "scan %s trial %d batch %lld: finite, largest |x| %g (got %g)",
                          cases[c].what, trial, (long long)b, amax, h5in_last_absmax(in, "k"));
                    continue;
                }
                char where[96];
                const float v = fv;
                long long i4[4] = {first / (N * Hh * D), first / (Hh * D) % N, first / D % Hh, first % D};
                if (bh) { long long t2 = i4[1]; i4[1] = i4[2], i4[2] = t2; }
                snprintf(where, sizeof where, "%s%s at [%lld, %lld, %lld, %lld]",
                         v != v ? "NaN" : v > 0 ? "+Inf" : "-Inf",
                         cases[c].t == FA_F64 && v == v ? " (in float32)" : "", i4[0], i4[1],
                         i4[2], i4[3]);
                check(st == -1 && strstr(fa_errmsg(), where) != NULL,
                      "scan %s trial %d batch %lld: \"%s\" in \"%s\"", cases[c].what, trial,
                      (long long)b, where, fa_errmsg());
            }
            h5in_close(in);
        }
    free(x);
    free(got);
}

/* The fused direct read (h5in.c: read_fused) against its separate passes (h5in_fused_reads 0),
 * for float32, float16 and bfloat16 in bnhd: k with no non-finite value, or one at its first
 * element, at the last element of a fused run and at the first of the next, in the middle, at
 * its last element, or two in different runs (the later run's first); read whole and in two
 * pieces that start mid-run, as float32 and in the file's type. Either way: the same values,
 * the same digest, the verdict brute force gives (the first non-finite element and its kind)
 * and the same largest |x|. */
static void test_fused_read(const char *dir) {
    static const fa_dtype types[3] = {FA_F32, FA_F16, FA_BF16};
    static const char *const kind[3] = {"NaN", "+Inf", "-Inf"};
    const int64_t B = 2, Hh = 4, D = 64, row_el = Hh * D;
    char path[512];
    snprintf(path, sizeof path, "%s/fused.h5", dir);
    for (int ti = 0; ti < 3; ti++) {
        const fa_dtype t = types[ti];
        const int es = fa_dtype_size(t);
        const int64_t run = H5IN_FUSED_RUN_BYTES / (row_el * es);      /* rows per fused run */
        const int64_t N = 3 * run + 37, per_b = N * row_el, n = B * per_b;
        check(run >= 2, "fused %s: runs of %lld rows", fa_dtype_name(t), (long long)run);
        /* where k's non-finite values are (element indices in batch 1; -1: none) */
        const int64_t place[][2] = {{-1, -1}, {0, -1}, {run * row_el - 1, -1}, {run * row_el, -1},
                                    {per_b / 2 + 5, -1}, {per_b - 1, -1},
                                    {2 * run * row_el + 3, run * row_el + 7 * D + 1}};
        const row_range whole[1] = {{0, N}}, parts[2] = {{3, run + 5}, {run + 20, N - run - 22}};
        float *x = fa_malloc((size_t)n * 4, "values"), *got[2], *ref = fa_malloc((size_t)n * 4, "ref");
        unsigned char *raw = fa_malloc((size_t)n * es, "file bytes"), *kept[2];
        for (int u = 0; u < 2; u++)
            got[u] = fa_malloc((size_t)n * 4, "read"), kept[u] = fa_malloc((size_t)n * es, "kept");
        for (size_t c = 0; c < sizeof place / sizeof place[0]; c++) {
            for (int64_t i = 0; i < n; i++)
                x[i] = (float)((int64_t)((uint64_t)(i + c) * 2654435761u % 2001) - 1000) / 250.0f;
            x[per_b + (int64_t)(c * 9973) % per_b] = 777.0f;     /* the largest, somewhere */
            x[5] = NAN;                                         /* batch 0's: never read */
            for (int j = 0; j < 2; j++)
                if (place[c][j] >= 0) x[per_b + place[c][j]] = j ? NAN : c % 2 ? INFINITY : -INFINITY;
            fa_from_f32(t, x, raw, n);
            fa_to_f32(t, raw, ref, n);                          /* the values as stored */
            hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
            hid_t ft = h5io_file_type(t);
            const char *names[3] = {"q", "k", "v"};
            for (int ds = 0; ds < 3; ds++) {
                hsize_t dk[4] = {B, ds ? N : 5, Hh, D};
                hid_t sp = H5Screate_simple(4, dk, NULL);
                hid_t d = H5Dcreate2(file, names[ds], ft, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                H5Dwrite(d, ft, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw);
                H5Dclose(d), H5Sclose(sp);
            }
            H5Tclose(ft), H5Fclose(file);
            h5in *in;
            fa_shape sh;
            fa_clearerr();
            if (!check(h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh) == 0,
                       "fused: open %s (%s)", path, fa_errmsg()))
                continue;
            for (int pr = 0; pr < 2; pr++)
                for (int native = 0; native < 2; native++) {
                    const row_range *r = pr ? parts : whole;
                    const int nr = pr ? 2 : 1;
                    /* brute force over the rows read: the first non-finite, the largest |x| */
                    int64_t first = -1, m = 0;
                    float amax = 0;
                    for (int i = 0; i < nr; i++)
                        for (int64_t e = r[i].start * row_el; e < (r[i].start + r[i].n) * row_el; e++, m++) {
                            const float v = ref[per_b + e];
                            if (!isfinite(v)) { if (first < 0) first = e; }
                            else if (fabsf(v) > amax) amax = fabsf(v);
                        }
                    int st[2];
                    float am[2];
                    uint64_t dg[2][3];
                    char msg[2][1024];
                    for (int fused = 1; fused >= 0; fused--) {
                        h5in_fused_reads(in, fused);
                        h5in_take_digests(in, dg[fused]);
                        st[fused] = native ? h5in_read_rows_as(in, "k", 1, r, nr, kept[fused], t, 1)
                                           : h5in_read_rows(in, "k", 1, r, nr, got[fused], 1);
                        snprintf(msg[fused], sizeof msg[fused], "%s", st[fused] ? fa_errmsg() : "");
                        fa_clearerr();
                        am[fused] = h5in_last_absmax(in, "k");
                        h5in_take_digests(in, dg[fused]);
                    }
                    char what[160];
                    snprintf(what, sizeof what, "fused %s, k's non-finite at %lld and %lld, %s, as %s",
                             fa_dtype_name(t), (long long)place[c][0], (long long)place[c][1],
                             pr ? "two pieces" : "whole", native ? fa_dtype_name(t) : "float32");
                    const size_t bytes = (size_t)m * (native ? es : 4);
                    check(st[1] == st[0] && !strcmp(msg[1], msg[0]) && dg[1][1] == dg[0][1] &&
                          dg[1][1] != 0 && (st[1] || am[1] == am[0]) &&
                          !memcmp(native ? (void *)kept[1] : got[1], native ? (void *)kept[0] : got[0], bytes),
                          "%s: the same values, digest, verdict and largest |x| as the separate "
                          "passes (\"%s\", %g)", what, msg[1], am[1]);
                    if (first < 0) {
                        check(st[1] == 0 && am[1] == amax, "%s: finite, largest |x| %g (got %g)",
                              what, amax, am[1]);
                        continue;
                    }
                    const float v = ref[per_b + first];
                    char where[128];
                    snprintf(where, sizeof where, "%s at [1, %lld, %lld, %lld]",
                             kind[v != v ? 0 : v > 0 ? 1 : 2], (long long)(first / row_el),
                             (long long)(first / D % Hh), (long long)(first % D));
                    check(st[1] == -1 && strstr(msg[1], where) != NULL, "%s: \"%s\" in \"%s\"",
                          what, where, msg[1]);
                }
            h5in_close(in);
        }
        free(x), free(ref), free(raw);
        for (int u = 0; u < 2; u++) free(got[u]), free(kept[u]);
    }
}

/* ============================ output ===================================================== */
static void fill_rows(float *o, float *lse, int64_t b, int64_t r0, int64_t n, int64_t H,
                      int64_t D) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < H; h++) {
            for (int64_t d = 0; d < D; d++)   /* not on a grid: exercises rounding */
                o[(i * H + h) * D + d] = sinf((float)(((b * 1000 + r0 + i) * H + h) * D + d)) * 3;
            lse[i * H + h] = (float)(b * 100000 + (r0 + i) * 10 + h) + 0.25f;
        }
}

/* Reads o and lse of path back and compares with fill_rows through the type's conversion. */
static int64_t verify_output(const char *path, const fa_shape *s, fa_dtype t, int with_lse) {
    const int64_t H = s->H, D = s->D, row = H * D, n = s->Nq;
    float *o = fa_malloc(n * row * 4, "o"), *want = fa_malloc(n * row * 4, "want");
    float *lse = fa_malloc(n * H * 4, "lse"), *l = fa_malloc(n * H * 4, "l");
    void *tmp = fa_malloc(n * row * 8, "conv");
    int64_t bad = 0;
    for (int64_t b = 0; b < s->B; b++) {
        int64_t st[4] = {b, 0, 0, 0}, ct[4] = {1, n, H, D}, st3[3] = {b, 0, 0}, ct3[3] = {1, H, n};
        if (h5_read_block(path, "o", 4, st, ct, o) ||
            (with_lse && h5_read_block(path, "lse", 3, st3, ct3, lse))) {
            printf("   %s\n", fa_errmsg());
            return -1;
        }
        fill_rows(want, l, b, 0, n, H, D);
        fa_from_f32(t, want, tmp, n * row);
        fa_to_f32(t, tmp, want, n * row);
        for (int64_t i = 0; i < n * row; i++) bad += fa_f32_bits(o[i]) != fa_f32_bits(want[i]);
        for (int64_t i = 0; with_lse && i < n; i++)
            for (int64_t h = 0; h < H; h++) bad += lse[h * n + i] != l[i * H + h];
    }
    free(o), free(want), free(lse), free(l), free(tmp);
    return bad;
}

/* Writes the whole output in pieces of `step` rows from this rank's share (one rank here). */
static int write_all(h5out *out, const fa_shape *s, int64_t step) {
    float *o = fa_malloc(step * s->H * s->D * 4, "o"), *l = fa_malloc(step * s->H * 4, "l");
    int st = 0;
    for (int64_t b = 0; b < s->B && !st; b++)
        for (int64_t r = 0; r < s->Nq && !st; r += step) {
            int64_t n = s->Nq - r < step ? s->Nq - r : step;
            fill_rows(o, l, b, r, n, s->H, s->D);
            st = h5out_write_rows(out, b, r, n, o, l);
        }
    free(o), free(l);
    return st;
}

static void test_output_types(const char *dir) {
    const fa_dtype types[] = {FA_F32, FA_F16, FA_BF16, FA_F64};
    fa_shape s = {2, 37, 37, 3, 1, 5, FA_F32, FA_F32, FA_F32};
    char path[512];
    test_cap = fa_parse_size("333");
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/out_%s.h5", dir, fa_dtype_name(types[i]));
        h5out *out;
        if (!check(h5out_create(path, NULL, 0, MPI_COMM_SELF, &s, types[i], 1, test_cap, &out) == 0,
                   "create %s", path)) { printf("   %s\n", fa_errmsg()); continue; }
        int st = write_all(out, &s, 10);
        st |= h5out_attr_int(out, "causal", 1) | h5out_attr_double(out, "scale", 0.125) |
              h5out_attr_str(out, "compute", "bfloat16");
        check(st == 0 && !exists(path) && tmp_files(dir) == 1,
              "%s: rows written, final path absent before commit, one temporary",
              fa_dtype_name(types[i]));
        check(h5out_commit(out) == 0 && exists(path) && tmp_files(dir) == 0,
              "%s: commit renames the temporary to %s", fa_dtype_name(types[i]), path);
        int64_t bad = verify_output(path, &s, types[i], 1);
        check(bad == 0, "%s: o and transposed lse read back bit-exact (%lld wrong)",
              fa_dtype_name(types[i]), (long long)bad);
        if (types[i] != FA_F32 && types[i] != FA_F64)
            for (int bh = 0; bh < 2; bh++) {
                /* rows handed over in the file's type already (as the GPU gives them), bnhd and
                 * bhnd: the same file */
                char p2[600];
                snprintf(p2, sizeof p2, "%s/out_%s_as_%s.h5", dir, fa_dtype_name(types[i]),
                         bh ? "bhnd" : "bnhd");
                h5out *o2;
                int ok = h5out_create_layout(p2, NULL, 0, MPI_COMM_SELF, &s, types[i],
                                             bh ? FA_BHND : FA_BNHD, 1, test_cap, &o2) == 0;
                const int64_t step = 10, row = s.H * s.D;
                float *o = fa_malloc(step * row * 4, "o"), *l = fa_malloc(step * s.H * 4, "l");
                uint16_t *o16 = fa_malloc(step * row * 2, "o16");
                for (int64_t b = 0; ok && b < s.B; b++)
                    for (int64_t r = 0; ok && r < s.Nq; r += step) {
                        int64_t n = s.Nq - r < step ? s.Nq - r : step;
                        fill_rows(o, l, b, r, n, s.H, s.D);
                        fa_from_f32(types[i], o, o16, n * row);
                        ok = h5out_write_rows_as(o2, b, r, n, o16, types[i], l) == 0;
                    }
                fa_clearerr();
                int refused = !ok || h5out_write_rows_as(o2, 0, 0, 1, o16,
                                                         types[i] == FA_F16 ? FA_BF16 : FA_F16, l) == -1;
                ok = ok && refused && strstr(fa_errmsg(), "rows given as") != NULL;
                free(o), free(l), free(o16);
                if (ok) ok = h5out_commit(o2) == 0;
                else h5out_abort(o2);
                int64_t bad2 = -1;
                if (ok && !bh) bad2 = verify_output(p2, &s, types[i], 1);
                if (ok && bh) {     /* read back as bhnd into bnhd order */
                    const int64_t n = s.Nq;
                    float *x = fa_malloc(n * row * 4, "x"), *y = fa_malloc(n * row * 4, "y");
                    bad2 = 0;
                    for (int64_t b = 0; b < s.B; b++) {
                        int64_t st4[4] = {b, 0, 0, 0}, ct4[4] = {1, n, s.H, s.D};
                        if (h5_read_block_as(p2, "o", FA_BHND, st4, ct4, x) ||
                            h5_read_block(path, "o", 4, st4, ct4, y)) { bad2 = -1; break; }
                        for (int64_t e = 0; e < n * row; e++) bad2 += fa_f32_bits(x[e]) != fa_f32_bits(y[e]);
                    }
                    free(x), free(y);
                }
                check(ok && bad2 == 0, "%s: rows handed over as %s, %s: the same o (%lld wrong); "
                      "another type refused", fa_dtype_name(types[i]), fa_dtype_name(types[i]),
                      bh ? "bhnd" : "bnhd", (long long)bad2);
            }
        fa_dtype t;
        int nd;
        int64_t dims[8];
        double v1 = 0, v2 = 0;
        char str[64] = "";
        check(h5_dataset_info(path, "o", &nd, dims, &t) == 0 && t == types[i] && nd == 4 &&
              dims[0] == 2 && dims[1] == 37 && dims[2] == 3 && dims[3] == 5 &&
              h5_dataset_info(path, "lse", &nd, dims, &t) == 0 && t == FA_F32 && nd == 3 &&
              dims[1] == 3 && dims[2] == 37, "%s: o [2, 37, 3, 5] and lse [2, 3, 37] float32",
              fa_dtype_name(types[i]));
        check(h5_attr_double(path, "causal", &v1) == 0 && v1 == 1 &&
              h5_attr_double(path, "scale", &v2) == 0 && v2 == 0.125 &&
              h5_attr_str(path, "compute", str, sizeof str) == 0 && !strcmp(str, "bfloat16"),
              "%s: root attributes read back", fa_dtype_name(types[i]));
    }
    check_err(h5_attr_double(path, "nope", &(double){0}), "absent attribute", "'nope'", NULL);
    test_cap = 0;
}

static void write_file(const char *p, const char *text) {
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

static int same_text(const char *p, const char *text) {
    char buf[64] = "";
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return !strcmp(buf, text);
}

static void test_output_errors(const char *dir) {
    fa_shape s = {1, 16, 16, 2, 1, 4, FA_F32, FA_F32, FA_F32};
    char path[512];
    h5out *out;
    snprintf(path, sizeof path, "%s/precious.h5", dir);
    write_file(path, "precious");
    check_err(h5out_create(path, NULL, 0, MPI_COMM_SELF, &s, FA_F32, 1, test_cap, &out),
              "existing output without force", path, "exists", "--force", NULL);
    check(same_text(path, "precious") && tmp_files(dir) == 0, "existing output untouched");
    /* with force: still untouched until commit; abort leaves it as it was */
    check(h5out_create(path, NULL, 1, MPI_COMM_SELF, &s, FA_BF16, 0, test_cap, &out) == 0 &&
          write_all(out, &s, 16) == 0 && same_text(path, "precious"),
          "--force: existing output untouched while writing");
    h5out_abort(out);
    check(same_text(path, "precious") && tmp_files(dir) == 0,
          "--force then abort: output untouched, temporary removed");
    check(h5out_create(path, NULL, 1, MPI_COMM_SELF, &s, FA_BF16, 0, test_cap, &out) == 0 &&
          write_all(out, &s, 7) == 0 && h5out_commit(out) == 0 &&
          verify_output(path, &s, FA_BF16, 0) == 0 && tmp_files(dir) == 0,
          "--force then commit: output replaced by the new file");
    check(h5_dataset_info(path, "lse", NULL, NULL, NULL) == -1, "without lse: no lse dataset");
    fa_clearerr();
    snprintf(path, sizeof path, "%s/no_such_dir/out.h5", dir);
    check_err(h5out_create(path, NULL, 0, MPI_COMM_SELF, &s, FA_F32, 1, test_cap, &out), "missing folder",
              path, "no_such_dir", "No such file or directory", NULL);
    check_err(h5out_create("/proc/fa_long_out.h5", NULL, 0, MPI_COMM_SELF, &s, FA_F32, 1, test_cap, &out),
              "unwritable folder (/proc, even for root)", "/proc/fa_long_out.h5", "cannot create",
              NULL);
    snprintf(path, sizeof path, "%s/text.h5/out.h5", dir);
    check_err(h5out_create(path, NULL, 0, MPI_COMM_SELF, &s, FA_F32, 1, test_cap, &out),
              "a file where the folder should be", "Not a directory", NULL);
    check_err(h5out_create(dir, NULL, 1, MPI_COMM_SELF, &s, FA_F32, 1, test_cap, &out), "folder as output",
              "is a folder", NULL);
    fa_shape e = s;
    e.Nq = 0;
    snprintf(path, sizeof path, "%s/empty_out.h5", dir);
    check_err(h5out_create(path, NULL, 0, MPI_COMM_SELF, &e, FA_F32, 1, test_cap, &out), "empty output shape",
              "Nq=0", NULL);
    check(h5out_create(path, NULL, 0, MPI_COMM_SELF, &s, FA_F32, 1, test_cap, &out) == 0, "create %s", path);
    float o[2 * 2 * 4] = {0}, l[4] = {0};
    check_err(h5out_write_rows(out, 0, 15, 2, o, l), "rows past Nq refused", "[15, 17)",
              "Nq=16", NULL);
    check_err(h5out_write_rows(out, 1, 0, 1, o, l), "batch past B refused", "batch 1", NULL);
    check_err(h5out_write_rows(out, 0, 0, 1, o, NULL), "missing lse rows refused", "lse", NULL);
    check(h5out_write_rows(out, 0, 0, 0, NULL, NULL) == 0, "n = 0 with NULL buffers accepted");
    h5out_abort(out);
    check(!exists(path) && tmp_files(dir) == 0, "abort: nothing left");
}

/* Checkpoint, abort or suspend, reopen (--resume) and finish: the partial file survives. */
static void test_resume(const char *dir) {
    fa_shape s = {2, 21, 21, 2, 1, 4, FA_F32, FA_F32, FA_F32};
    char path[512], part[600];
    snprintf(path, sizeof path, "%s/resume.h5", dir);
    h5out_partial_path(path, part, sizeof part);
    h5out *out;
    float o[21 * 8], l[21 * 2];
    check(h5out_create(path, NULL, 0, MPI_COMM_SELF, &s, FA_F16, 1, test_cap, &out) == 0, "create %s", path);
    fill_rows(o, l, 0, 0, 21, 2, 4);
    check(h5out_write_rows(out, 0, 0, 21, o, l) == 0 && h5out_checkpoint(out, 1) == 0,
          "batch 0 written, checkpoint");
    h5out_abort(out);
    check(exists(part) && !exists(path), "abort after a checkpoint keeps %s, no final file", part);
    fa_shape wrong = s;
    wrong.D = 8;
    check_err(h5out_reopen(path, NULL, MPI_COMM_SELF, &wrong, FA_F16, 1, test_cap, &out),
              "reopen with another shape refused", "does not fit", NULL);
    check_err(h5out_reopen(path, NULL, MPI_COMM_SELF, &s, FA_BF16, 1, test_cap, &out),
              "reopen with another type refused", "does not fit", NULL);
    check(h5out_reopen(path, NULL, MPI_COMM_SELF, &s, FA_F16, 1, test_cap, &out) == 0, "reopen the partial file");
    fill_rows(o, l, 1, 0, 10, 2, 4);
    check(h5out_write_rows(out, 1, 0, 10, o, l) == 0 && h5out_suspend(out, 1) == 0 &&
          exists(part), "suspend keeps the partial file");
    double done = 0;
    check(h5_attr_double(part, "chunks_done", &done) == 0 && done == 1, "chunks_done recorded");
    check(h5out_reopen(path, NULL, MPI_COMM_SELF, &s, FA_F16, 1, test_cap, &out) == 0, "reopen again");
    fill_rows(o, l, 1, 10, 11, 2, 4);
    check(h5out_write_rows(out, 1, 10, 11, o, l) == 0 && h5out_commit(out) == 0 && !exists(part)
          && verify_output(path, &s, FA_F16, 1) == 0, "resumed output complete and exact");
}

/* --q/--k/--v and --out-group: datasets under groups, in and out. */
static void test_paths(const char *dir) {
    char path[512], out_path[512];
    snprintf(path, sizeof path, "%s/in_groups.h5", dir);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "layer3", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    ds_spec s[3] = {QKV(2, 9, 13, 4, 2, 6, T_F32, T_F16, T_F64, 0)};
    s[0].name = "layer3/q", s[1].name = "layer3/k", s[2].name = "layer3/v";
    for (int i = 0; i < 3; i++) write_ds(f, &s[i], NULL);
    H5Fclose(f);
    h5in *in;
    fa_shape sh;
    const char *paths[3] = {"/layer3/q", "layer3/k", "/layer3/v"};
    if (check(h5in_open(path, paths, MPI_COMM_SELF, test_cap, &in, &sh) == 0 && sh.Nq == 9 &&
              sh.Nk == 13 && sh.H == 4 && sh.Hkv == 2 && sh.k_type == FA_F16 &&
              sh.v_type == FA_F64, "open q, k, v under /layer3 (absolute and relative paths)")) {
        float k[13 * 2 * 6];
        row_range r = {0, 13};
        int bad = h5in_read_rows(in, "k", 1, &r, 1, k, 1) != 0;
        for (int64_t i = 0; i < 13 * 2 * 6; i++)
            bad += k[i] != grid(1, i / 12, i / 6 % 2, i % 6);
        check(bad == 0, "read rows of 'k' (logical name) from layer3/k");
        h5in_close(in);
    }
    check_err(h5in_open(path, NULL, MPI_COMM_SELF, test_cap, &in, &sh), "root q absent",
              path, "dataset 'q' not found; expected",
              "; the file has one dataset named q: /layer3/q; give --q /layer3/q", NULL);
    const char *typo[3] = {"/layer3/q", "/layr3/k", "layer3/v"};
    check_err(h5in_open(path, typo, MPI_COMM_SELF, test_cap, &in, &sh), "a misspelt path",
              "dataset '/layr3/k' not found", "; did you mean --k /layer3/k?", NULL);
    const char *missing[3] = {"/layer3/q", "/nope/k", "layer3/v"};
    check_err(h5in_open(path, missing, MPI_COMM_SELF, test_cap, &in, &sh),
              "a missing group on the path", path, "dataset '/nope/k' not found", NULL);
    const char *through[3] = {"layer3/q/x", "layer3/k", "layer3/v"};
    check_err(h5in_open(path, through, MPI_COMM_SELF, test_cap, &in, &sh),
              "a dataset on the way of the path", "dataset 'layer3/q/x' not found", NULL);
    const char *group[3] = {"layer3", "layer3/k", "layer3/v"};
    check_err(h5in_open(path, group, MPI_COMM_SELF, test_cap, &in, &sh),
              "a group given as q", "'layer3' is not a dataset", NULL);

    fa_shape os = {2, 21, 21, 2, 1, 4, FA_F32, FA_F32, FA_F32};
    snprintf(out_path, sizeof out_path, "%s/out_group.h5", dir);
    h5out *out;
    int nd;
    int64_t dims[8];
    fa_dtype t;
    if (check(h5out_create(out_path, "/layers/3/", 0, MPI_COMM_SELF, &os, FA_F32, 1, test_cap,
                           &out) == 0, "create with group /layers/3/")) {
        int st = write_all(out, &os, 5) | h5out_attr_int(out, "causal", 0);
        check(st == 0 && h5out_commit(out) == 0, "rows written and committed");
        check(h5_dataset_info(out_path, "layers/3/o", &nd, dims, &t) == 0 && nd == 4 &&
              dims[1] == 21 && h5_dataset_info(out_path, "/layers/3/lse", &nd, dims, &t) == 0 &&
              nd == 3 && h5_dataset_info(out_path, "o", &nd, dims, &t) != 0,
              "o and lse at /layers/3, none at the root");
        fa_clearerr();
        double c = 1;
        check(h5_attr_double(out_path, "causal", &c) == 0 && c == 0, "attributes on the root");
    }
    snprintf(out_path, sizeof out_path, "%s/out_group_resume.h5", dir);
    float o[21 * 8], l[21 * 2];
    check(h5out_create(out_path, "g2", 0, MPI_COMM_SELF, &os, FA_F32, 1, test_cap, &out) == 0,
          "create with group g2");
    fill_rows(o, l, 0, 0, 21, 2, 4);
    check(h5out_write_rows(out, 0, 0, 21, o, l) == 0 && h5out_checkpoint(out, 1) == 0,
          "g2: batch 0 written, checkpoint");
    h5out_abort(out);
    check_err(h5out_reopen(out_path, NULL, MPI_COMM_SELF, &os, FA_F32, 1, test_cap, &out),
              "reopen at the root refused", "no dataset 'o'", NULL);
    check_err(h5out_reopen(out_path, "g3", MPI_COMM_SELF, &os, FA_F32, 1, test_cap, &out),
              "reopen in another group refused", "no dataset 'g3/o'", NULL);
    check(h5out_reopen(out_path, "/g2", MPI_COMM_SELF, &os, FA_F32, 1, test_cap, &out) == 0,
          "reopen in group /g2");
    fill_rows(o, l, 1, 0, 21, 2, 4);
    check(h5out_write_rows(out, 1, 0, 21, o, l) == 0 && h5out_commit(out) == 0 &&
          h5_dataset_info(out_path, "g2/lse", &nd, dims, &t) == 0, "resumed in g2, committed");
}

/* ============================ several ranks ============================================== */
/* Rank r's uneven shard of [0, N), a list of ranges: with 3 ranks, rank 0 gets
 * [0, N/5) + [N/2, N/2 + N/10), rank 1 nothing, rank 2 the rest; with 2 ranks, ranks 0 and 1
 * get the shares of 0 and 2; one rank gets it all; ranks from 3 on get nothing. */
static int shard(int r, int P, int64_t N, row_range *out) {
    if (P == 1) { out[0] = (row_range){0, N}; return 1; }
    int owner = P == 2 && r == 1 ? 2 : r;
    if (owner == 0) {
        out[0] = (row_range){0, N / 5};
        out[1] = (row_range){N / 2, N / 10};
        return 2;
    }
    if (owner != 2) return 0;
    out[0] = (row_range){N / 5, N / 2 - N / 5};
    out[1] = (row_range){N / 2 + N / 10, N - N / 2 - N / 10};
    return 2;
}

static int same_msg_everywhere(void) {
    char m[1024];
    snprintf(m, sizeof m, "%s", fa_errmsg());
    MPI_Bcast(m, sizeof m, MPI_CHAR, 0, MPI_COMM_WORLD);
    int same = !strcmp(m, fa_errmsg()), all;
    MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

static void mpi_reads(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/mpi_in.h5", dir);
    ds_spec g[3] = {QKV(2, 50, 61, 4, 2, 8, T_F16, T_BF16, T_F32, 1)};   /* big-endian */
    int64_t nf[2] = {((1 * 61 + 40) * 2 + 1) * 8 + 2, ((1 * 61 + 45) * 2) * 8};
    if (me == 0) make_file(path, &g[0], &g[1], &g[2], nf);
    MPI_Barrier(MPI_COMM_WORLD);
    test_cap = fa_parse_size("150");               /* ~2 rows of q per transfer */
    h5in *in;
    fa_shape sh;
    if (!check(h5in_open(path, NULL, MPI_COMM_WORLD, test_cap, &in, &sh) == 0, "open %s on %d ranks", path, np_))
        return;
    row_range r[4];
    int nr = shard(me, np_, 50, r), st;
    /* through H5Dread (MPI-IO, collective transfers), then straight from the file */
    h5in_direct_reads(in, 0);
    h5io_last_collective = -1;
    int64_t t0 = h5io_ntransfers;
    int64_t bad = read_and_compare(in, "q", 1, r, nr, 4, 8, &st);
    int64_t calls[2] = {h5io_ntransfers - t0, -(h5io_ntransfers - t0)};
    MPI_Allreduce(MPI_IN_PLACE, calls, 2, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    check(st == 0 && bad == 0, "uneven shard of q read right, capped (%lld wrong)", (long long)bad);
    /* rank 2 holds 35 of the 50 rows, 2 rows (128 B) per 150 B transfer: 18 calls everywhere */
    check(calls[0] == -calls[1] && calls[0] == (np_ == 3 ? 18 : calls[0]),
          "every rank made the same number of transfers (%lld to %lld)", (long long)-calls[1],
          (long long)calls[0]);
    if (h5io_parallel())
        check(h5io_last_collective == 1, "parallel HDF5: the transfers stayed collective");
    h5in_direct_reads(in, 1);
    h5io_last_collective = -1;
    t0 = h5io_ntransfers;
    bad = read_and_compare(in, "q", 1, r, nr, 4, 8, &st);
    calls[0] = h5io_ntransfers - t0, calls[1] = -(h5io_ntransfers - t0);
    MPI_Allreduce(MPI_IN_PLACE, calls, 2, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    check(st == 0 && bad == 0 && calls[0] == -calls[1] && calls[0] == (np_ == 3 ? 18 : calls[0]) &&
          h5io_last_collective == -1,
          "direct reads: the same rows, the same transfer count, no MPI-IO transfer (%lld wrong)",
          (long long)bad);
    nr = shard(me, np_, 61, r);
    bad = read_and_compare(in, "k", 0, r, nr, 2, 8, &st);
    check(st == 0 && bad == 0, "uneven shard of k (bf16 big-endian) read right (%lld wrong)",
          (long long)bad);
    /* batch 1 of k has NaN at row 40 (rank 2's shard) and Inf at row 45: everyone hears of it */
    float *x = fa_malloc(61 * 16 * 4, "k");
    nr = shard(me, np_, 61, r);
    fa_clearerr();
    int st2 = h5in_read_rows(in, "k", 1, r, nr, x, 1);
    int same = same_msg_everywhere();   /* collective: never behind a short-circuit */
    check(st2 == -1 && strstr(fa_errmsg(), "NaN at [1, 40, 1, 2]") && same,
          "NaN in another rank's shard: every rank fails with its index -> \"%s\"", fa_errmsg());
    row_range mine = {me == np_ - 1 ? 60 : 0, 2};
    st2 = h5in_read_rows(in, "k", 0, &mine, 1, x, 1);
    same = same_msg_everywhere();
    check(st2 == -1 && strstr(fa_errmsg(), "[60, 62)") && same,
          "one rank's bad range: every rank fails with its message -> \"%s\"", fa_errmsg());
    free(x);
    h5in_close(in);
    test_cap = 0;
    /* a file only some ranks see (here: the last rank is given another path) */
    snprintf(path, sizeof path, "%s/mpi_in.h5", dir);
    if (me == np_ - 1) snprintf(path, sizeof path, "%s/elsewhere/mpi_in.h5", dir);
    fa_clearerr();
    char want[64];
    snprintf(want, sizeof want, "rank %d (host ", np_ - 1);
    st2 = open_err_on(path, MPI_COMM_WORLD);
    same = same_msg_everywhere();
    check(st2 == -1 && same && strstr(fa_errmsg(), want) &&
          strstr(fa_errmsg(), "every rank sees"), "input not visible on one rank -> \"%s\"",
          fa_errmsg());
    snprintf(path, sizeof path, "%s/mpi_missing.h5", dir);
    fa_clearerr();
    st2 = open_err_on(path, MPI_COMM_WORLD);
    same = same_msg_everywhere();
    check(st2 == -1 && same && strstr(fa_errmsg(), "mpi_missing"),
          "missing input: every rank fails with one message");
}

static void mpi_writes(const char *dir, fa_dtype t) {
    char path[512];
    snprintf(path, sizeof path, "%s/mpi_out_%s.h5", dir, fa_dtype_name(t));
    fa_shape s = {2, 50, 50, 3, 1, 4, FA_F32, FA_F32, FA_F32};
    if (me == 0) unlink(path);                         /* from an earlier run in DIR */
    MPI_Barrier(MPI_COMM_WORLD);
    test_cap = fa_parse_size("70");                /* a few rows per collective transfer */
    h5out *out;
    if (!check(h5out_create(path, NULL, 0, MPI_COMM_WORLD, &s, t, 1, test_cap, &out) == 0, "create %s", path))
        return;
    /* each rank writes its shard of each batch in calls of different sizes; rank 1 writes
     * nothing but still calls */
    row_range r[4];
    int nr = shard(me, np_, 50, r), st = 0;
    float *o = fa_malloc(50 * 12 * 4, "o"), *l = fa_malloc(50 * 3 * 4, "l");
    h5io_last_collective = -1;
    for (int64_t b = 0; b < 2; b++)
        for (int i = 0; i < 2; i++) {
            int64_t n = i < nr ? r[i].n : 0, r0 = i < nr ? r[i].start : 0;
            fill_rows(o, l, b, r0, n, 3, 4);
            st |= h5out_write_rows(out, b, r0, n, o, l);
        }
    st |= h5out_attr_str(out, "shard", "uneven") | h5out_attr_int(out, "ranks", np_);
    check(st == 0, "%s: uneven rows written from %d ranks, capped", fa_dtype_name(t), np_);
    if (h5io_parallel())
        check(h5io_last_collective == 1, "parallel HDF5: the writes stayed collective");
    check(h5out_commit(out) == 0, "%s: commit", fa_dtype_name(t));
    int64_t bad = me == 0 ? verify_output(path, &s, t, 1) : 0;
    double ranks = 0;
    if (me == 0) check(bad == 0 && h5_attr_double(path, "ranks", &ranks) == 0 && ranks == np_ &&
                       tmp_files(dir) == 0, "%s: every rank's rows read back bit-exact "
                       "(%lld wrong), attributes, no temporary", fa_dtype_name(t), (long long)bad);
    free(o), free(l);
    fa_clearerr();
    st = h5out_create(path, NULL, 0, MPI_COMM_WORLD, &s, t, 1, test_cap, &out);
    int same = same_msg_everywhere();
    check(st == -1 && same &&
          strstr(fa_errmsg(), "--force"), "existing output: every rank refuses -> \"%s\"",
          fa_errmsg());
    check(h5out_create(path, NULL, 1, MPI_COMM_WORLD, &s, t, 0, test_cap, &out) == 0, "--force create");
    float z[4 * 12] = {0};
    fa_clearerr();
    st = h5out_write_rows(out, 0, me == np_ - 1 ? 48 : 0, 4, z, z);
    same = same_msg_everywhere();
    check(st == -1 && same && strstr(fa_errmsg(), "[48, 52)"),
          "one rank's bad rows: every rank fails -> \"%s\"", fa_errmsg());
    h5out_abort(out);
    MPI_Barrier(MPI_COMM_WORLD);
    if (me == 0) check(tmp_files(dir) == 0 && verify_output(path, &s, t, 1) == 0,
                       "abort on every rank: temporary gone, old output intact");
    test_cap = 0;
}

/* ============================ modes ====================================================== */
/* echo IN OUT OTYPE NAME [IN_LAYOUT OUT_LAYOUT]: dataset NAME of IN (read in IN_LAYOUT: auto,
 * bnhd, bhnd) written to OUT as o (in OUT_LAYOUT) and its first element of each (row, head) as
 * lse, each rank its uneven shard of rows. */
static int mode_echo(const char *in_path, const char *out_path, const char *otype,
                     const char *name, const char *in_layout, const char *out_layout) {
    h5in *in;
    h5out *out;
    fa_shape s;
    fa_dtype t;
    fa_layout il = FA_LAYOUT_AUTO, ol = FA_BNHD;
    if (in_layout && strcmp(in_layout, "auto") && fa_layout_parse(in_layout, &il)) goto fail;
    if (out_layout && fa_layout_parse(out_layout, &ol)) goto fail;
    if (fa_dtype_parse(otype, &t) ||
        h5in_open_layout(in_path, NULL, il, MPI_COMM_WORLD, test_cap, &in, &s)) goto fail;
    int kv = strcmp(name, "q") != 0;
    fa_shape o = {s.B, kv ? s.Nk : s.Nq, 0, kv ? s.Hkv : s.H, 0, s.D, t, t, t};
    if (h5out_create_layout(out_path, NULL, 1, MPI_COMM_WORLD, &o, t, ol, 1, test_cap, &out)) goto fail;
    row_range r[4];
    int nr = shard(me, np_, o.Nq, r);
    int64_t rows = 0, row = o.H * o.D;
    for (int i = 0; i < nr; i++) rows += r[i].n;
    float *x = fa_malloc((rows + 1) * row * 4, "echo"), *l = fa_malloc((rows + 1) * o.H * 4, "l");
    for (int64_t b = 0; b < s.B; b++) {
        if (h5in_read_rows(in, name, b, r, nr, x, 0)) goto fail;
        for (int64_t i = 0; i < rows * o.H; i++) l[i] = x[i * o.D];
        for (int i = 0, at = 0; i < 2; at += i < nr ? r[i].n : 0, i++)
            if (h5out_write_rows(out, b, i < nr ? r[i].start : 0, i < nr ? r[i].n : 0,
                                 x + at * row, l + at * o.H)) goto fail;
    }
    if (h5out_commit(out)) goto fail;
    h5in_close(in);
    free(x), free(l);
    return 0;
fail:
    if (me == 0) printf("ERR %s\n", fa_errmsg());
    return 3;
}

static int mode_open(const char *path) {
    h5in *in;
    fa_shape s;
    if (h5in_open(path, NULL, MPI_COMM_WORLD, test_cap, &in, &s)) {
        if (me == 0) printf("ERR %s\n", fa_errmsg());
        return 3;
    }
    if (me == 0) printf("OK B=%lld Nq=%lld Nk=%lld H=%lld Hkv=%lld D=%lld q=%s k=%s v=%s "
                        "layout=%s,%s,%s\n",
                        (long long)s.B, (long long)s.Nq, (long long)s.Nk, (long long)s.H,
                        (long long)s.Hkv, (long long)s.D, fa_dtype_name(s.q_type),
                        fa_dtype_name(s.k_type), fa_dtype_name(s.v_type),
                        fa_layout_name(h5in_layout(in, 0)), fa_layout_name(h5in_layout(in, 1)),
                        fa_layout_name(h5in_layout(in, 2)));
    h5in_close(in);
    return 0;
}

static int finish(void) {
    int c[2] = {npass, nfail};
    MPI_Allreduce(MPI_IN_PLACE, c, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (me == 0) printf("%d passed, %d failed\n", c[0], c[1]);
    return c[1] ? 1 : 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &np_);
    fa_rank = me, fa_nranks = np_;
    int rc;
    const char *cap_env = getenv("FA_IO_CAP_BYTES");
    if (cap_env && *cap_env) test_cap = fa_parse_size(cap_env);
    if ((argc == 6 || argc == 8) && !strcmp(argv[1], "echo")) {
        rc = mode_echo(argv[2], argv[3], argv[4], argv[5], argc == 8 ? argv[6] : NULL,
                       argc == 8 ? argv[7] : NULL);
    } else if (argc == 3 && !strcmp(argv[1], "open")) {
        rc = mode_open(argv[2]);
    } else {
        char dir[256];
        if (argc == 3 && !strcmp(argv[1], "mpi")) {
            snprintf(dir, sizeof dir, "%s", argv[2]);
        } else {
            snprintf(dir, sizeof dir, "/tmp/test_h5io.XXXXXX");
            if (!mkdtemp(dir)) fa_fail("mkdtemp");
        }
        if (me == 0) printf("# test_h5io: %s HDF5, %d rank(s), files in %s\n",
                            h5io_parallel() ? "parallel" : "serial", np_, dir);
        if (argc == 3) {
            mpi_reads(dir);
            for (int t = 0; t < 4; t++) mpi_writes(dir, (fa_dtype)t);
        } else {
            test_dtype_helpers();
            test_f16_known();
            test_bf16_known();
            test_16bit_exhaustive(FA_F16);
            test_16bit_exhaustive(FA_BF16);
            test_f32_sweep(FA_F16);
            test_f32_sweep(FA_BF16);
            test_in_place_widening(FA_F16);
            test_in_place_widening(FA_BF16);
            test_copy_floats();
            test_f64_and_swap();
            test_paths(dir);
            test_read_types(dir);
            test_read_bf16_integers(dir);
            test_read_capped(dir);
            test_input_errors(dir);
            test_read_errors(dir);
            test_scan_source(dir);
            test_fused_read(dir);
            test_output_types(dir);
            test_output_errors(dir);
            test_resume(dir);
        }
        rc = finish();
        if (argc != 3 && rc == 0) {
            char cmd[600];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
            if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
        }
    }
    MPI_Finalize();
    return rc;
}
