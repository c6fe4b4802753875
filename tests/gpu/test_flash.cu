/* test_flash.cu — GPU tests of the flash kernel variants (kernels/cuda/flash.h) and of the GPU
 * engine (kernels/gpu.h) against an fp64 reference on the CPU, on fresh random inputs.
 *
 * Built and run by tests/gpu/run.sh (`make test-gpu`):
 *   nvcc -O2 -std=c++17 $(NVCC_GENCODE) -I. -Xcompiler -fopenmp tests/gpu/test_flash.cu \
 *        build/kernels/cuda/*.cu.o -o build/tests/gpu/test_flash
 *   ./build/tests/gpu/test_flash [--small] [--seed N] [--variant V]
 *
 * Every case: inputs drawn on the device by a hash RNG seeded from the run's seed (fresh each run
 * unless --seed), rounded to the compute type; the reference is exact attention in double over
 * those rounded inputs. Outputs and fresh states are poisoned (all bits set = NaN) before each
 * launch, so an element the kernel forgot fails. Checks, per case:
 *   o:   max |o - ref| <= tol * max |ref|   (tol 1e-2 bf16, 5e-3 fp16), no NaN anywhere
 *   lse: |lse - ref| <= 1e-3 * (1 + |ref|), and -inf exactly where the row sees no key (o = 0)
 * Modes: FINAL in one call; three key segments in an odd order (fresh STATE, resumed STATE,
 * resumed FINAL) with a query chunk offset; and the engine API with striped key segments merged
 * by attn_rec_merge across two "ranks". --small runs one small case per variant (for
 * compute-sanitizer). Exit status 0 only when every check passed.
 */
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>
#include <algorithm>
#include <type_traits>
#include <omp.h>
#include "kernels/cuda/flash.h"
extern "C" {
#include "kernels/gpu.h"
#include "base/common.h"
}

#define cudaCheck(call)                                                                                    \
    do {                                                                                                   \
        cudaError_t err_ = (call);                                                                         \
        if (err_ != cudaSuccess) {                                                                         \
            fprintf(stderr, "CUDA error at %s:%d: %s (%s)\n", __FILE__, __LINE__, cudaGetErrorString(err_), #call); \
            exit(2);                                                                                       \
        }                                                                                                  \
    } while (0)

/* ---- the few base/common.h helpers engine.cu uses (the real ones need MPI) ----------------- */
int fa_rank = 0, fa_nranks = 1, fa_verbosity = 1;
static char errbuf[1024];
extern "C" int fa_seterr(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return -1;
}
extern "C" const char *fa_errmsg(void) { return errbuf; }
extern "C" void fa_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fa_fail: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}
extern "C" void *fa_calloc(size_t n, size_t size, const char *what) {
    void *p = calloc(n, size);
    if (!p) fa_fail("out of memory (%s)", what);
    return p;
}

/* ---- inputs: a hash RNG on the device, in the compute type ----------------------------------- */
static __host__ __device__ uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}
template <typename T> __global__ void fill_random(T *x, int64_t n, uint64_t seed, float amp) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t r = mix64(seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i);
        float u = (float)(r >> 40) * (1.0f / 16777216.0f) * 2.f - 1.f;          /* [-1, 1) */
        float u2 = (float)((r >> 16) & 0xffffff) * (1.0f / 16777216.0f) * 2.f - 1.f;
        float v = (u + u2) * amp;                                                 /* triangular */
        if constexpr (sizeof(T) == 2) {
            if constexpr (std::is_same<T, __nv_bfloat16>::value) x[i] = __float2bfloat16_rn(v);
            else x[i] = __float2half_rn(v);
        } else x[i] = v;
    }
}
static float to_f32(uint16_t bits, int bf16) {
    if (bf16) {
        uint32_t u = (uint32_t)bits << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
}

struct dev_inputs {
    int bf16, d, h, hkv;
    int64_t nq, nk, ldv;
    uint16_t *q, *k, *vt;           /* device: q [H][nq][D], k [Hkv][nk][D], vt [Hkv][D][ldv] */
    std::vector<float> hq, hk, hv;  /* host copies, fp32 of the rounded values: q [nq][H][D], k/v [nk][Hkv][D] */
};

static void make_inputs(dev_inputs &in, int bf16, int d, int h, int hkv, int64_t nq, int64_t nk, uint64_t seed,
                        float amp, int host_copy) {
    in.bf16 = bf16;
    in.d = d;
    in.h = h;
    in.hkv = hkv;
    in.nq = nq;
    in.nk = nk;
    in.ldv = (nk + 63) / 64 * 64 + 8; /* not a multiple of 64: the kernels must not assume one */
    size_t nqe = (size_t)h * nq * d, nke = (size_t)hkv * nk * d, nve = (size_t)hkv * d * in.ldv;
    cudaCheck(cudaMalloc(&in.q, nqe * 2));
    cudaCheck(cudaMalloc(&in.k, nke * 2));
    cudaCheck(cudaMalloc(&in.vt, nve * 2));
    if (bf16) {
        fill_random<<<1024, 256>>>((__nv_bfloat16 *)in.q, (int64_t)nqe, seed * 3 + 0, amp);
        fill_random<<<1024, 256>>>((__nv_bfloat16 *)in.k, (int64_t)nke, seed * 3 + 1, amp);
        fill_random<<<1024, 256>>>((__nv_bfloat16 *)in.vt, (int64_t)nve, seed * 3 + 2, 1.f);
    } else {
        fill_random<<<1024, 256>>>((__half *)in.q, (int64_t)nqe, seed * 3 + 0, amp);
        fill_random<<<1024, 256>>>((__half *)in.k, (int64_t)nke, seed * 3 + 1, amp);
        fill_random<<<1024, 256>>>((__half *)in.vt, (int64_t)nve, seed * 3 + 2, 1.f);
    }
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaDeviceSynchronize());
    if (!host_copy) return;
    std::vector<uint16_t> tq(nqe), tk(nke), tv(nve);
    cudaCheck(cudaMemcpy(tq.data(), in.q, nqe * 2, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(tk.data(), in.k, nke * 2, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(tv.data(), in.vt, nve * 2, cudaMemcpyDeviceToHost));
    in.hq.resize(nqe);
    in.hk.resize(nke);
    in.hv.resize(nke);
#pragma omp parallel for
    for (int64_t r = 0; r < nq; r++)
        for (int hh = 0; hh < h; hh++)
            for (int i = 0; i < d; i++) in.hq[((size_t)r * h + hh) * d + i] = to_f32(tq[((size_t)hh * nq + r) * d + i], bf16);
#pragma omp parallel for
    for (int64_t c = 0; c < nk; c++)
        for (int g = 0; g < hkv; g++)
            for (int i = 0; i < d; i++) {
                in.hk[((size_t)c * hkv + g) * d + i] = to_f32(tk[((size_t)g * nk + c) * d + i], bf16);
                in.hv[((size_t)c * hkv + g) * d + i] = to_f32(tv[((size_t)g * d + i) * in.ldv + c], bf16);
            }
}
static void free_inputs(dev_inputs &in) {
    cudaFree(in.q);
    cudaFree(in.k);
    cudaFree(in.vt);
}

/* ---- CPU code reference: exact attention in double ------------------------------------------- */
/* rows [nq] (global row = row index, global Nq = nq), every head; o [nq][H][D], lse [nq][H]. */
static void reference(const dev_inputs &in, double scale, int causal, std::vector<double> &o, std::vector<double> &lse) {
    const int d = in.d, h = in.h, hkv = in.hkv;
    const int64_t nq = in.nq, nk = in.nk, diag = nk - nq;
    o.assign((size_t)nq * h * d, 0.0);
    lse.assign((size_t)nq * h, -INFINITY);
#pragma omp parallel
    {
        std::vector<double> s(nk);
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int64_t r = 0; r < nq; r++)
            for (int hh = 0; hh < h; hh++) {
                const int g = hh / (h / hkv);
                const float *qr = &in.hq[((size_t)r * h + hh) * d];
                int64_t end = causal ? std::min(nk, r + diag + 1) : nk;
                if (end <= 0) continue;
                double mx = -INFINITY;
                for (int64_t c = 0; c < end; c++) {
                    const float *kr = &in.hk[((size_t)c * hkv + g) * d];
                    double acc = 0;
                    for (int i = 0; i < d; i++) acc += (double)qr[i] * kr[i];
                    s[c] = acc * scale;
                    mx = std::max(mx, s[c]);
                }
                double l = 0;
                double *orow = &o[((size_t)r * h + hh) * d];
                for (int64_t c = 0; c < end; c++) {
                    double p = exp(s[c] - mx);
                    l += p;
                    const float *vr = &in.hv[((size_t)c * hkv + g) * d];
                    for (int i = 0; i < d; i++) orow[i] += p * vr[i];
                }
                for (int i = 0; i < d; i++) orow[i] /= l;
                lse[(size_t)r * h + hh] = mx + log(l);
            }
    }
}

/* ---- checking ------------------------------------------------------------------------------- */
struct check {
    double max_err, scale, lse_err;
    int64_t bad, nonfinite;
};
/* got_o [nq][H][D] (float), got_lse [nq][H]; compare rows [0, nq) with the reference rows
 * [row0, row0+nq). */
static check compare(const float *got_o, const float *got_lse, const std::vector<double> &ro,
                     const std::vector<double> &rl, int64_t row0, int64_t nq, int h, int d, double tol) {
    check c = {0, 0, 0, 0, 0};
    for (int64_t i = row0 * h * d; i < (row0 + nq) * h * d; i++) c.scale = std::max(c.scale, fabs(ro[i]));
    if (c.scale == 0) c.scale = 1;
    for (int64_t r = 0; r < nq; r++)
        for (int hh = 0; hh < h; hh++) {
            size_t ri = (size_t)(row0 + r) * h + hh, gi = (size_t)r * h + hh;
            double rlse = rl[ri];
            if (got_lse) {
                double gl = got_lse[gi];
                if (isinf(rlse)) {
                    if (!(isinf(gl) && gl < 0)) c.bad++;
                } else if (!isfinite(gl)) c.nonfinite++;
                else {
                    double e = fabs(gl - rlse);
                    c.lse_err = std::max(c.lse_err, e);
                    if (e > 1e-3 * (1 + fabs(rlse))) c.bad++;
                }
            }
            for (int i = 0; i < d; i++) {
                double g = got_o[gi * d + i], rv = ro[ri * d + i];
                if (!isfinite(g)) {
                    c.nonfinite++;
                    continue;
                }
                double e = fabs(g - rv);
                c.max_err = std::max(c.max_err, e);
                if (e > tol * c.scale) c.bad++;
            }
        }
    return c;
}

static int n_fail = 0, n_pass = 0;
static void report(const char *what, const check &c, double tol) {
    int ok = c.bad == 0 && c.nonfinite == 0;
    printf("%-72s err %.2e (%.2e of scale) lse_err %.1e  %s\n", what, c.max_err, c.max_err / c.scale, c.lse_err,
           ok ? "ok" : "FAIL");
    if (!ok) printf("    %lld elements over tolerance %.0e, %lld non-finite\n", (long long)c.bad, tol, (long long)c.nonfinite);
    ok ? n_pass++ : n_fail++;
    fflush(stdout);
}

/* ---- kernel cases ---------------------------------------------------------------------------- */
static void base_params(flash_params &p, const dev_inputs &in, int causal) {
    memset(&p, 0, sizeof p);
    p.q = in.q;
    p.k = in.k;
    p.vt = in.vt;
    p.q_head_stride = in.nq * in.d;
    p.q_row_stride = in.d;
    p.k_head_stride = in.nk * in.d;
    p.k_row_stride = in.d;
    p.vt_head_stride = (int64_t)in.d * in.ldv;
    p.vt_row_stride = in.ldv;
    p.nq = in.nq;
    p.nk = in.nk;
    p.h = in.h;
    p.hkv = in.hkv;
    p.d = in.d;
    p.dtype = in.bf16 ? FLASH_BF16 : FLASH_FP16;
    p.scale = (float)(1.0 / sqrt((double)in.d));
    p.causal = causal;
    p.diag = causal ? in.nk - in.nq : 0;
}

static void run_or_die(const flash_params &p, int variant) {
    char msg[256];
    if (flash_forward(&p, variant, NULL, msg, sizeof msg)) {
        fprintf(stderr, "%s\n", msg);
        exit(2);
    }
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaDeviceSynchronize());
}

/* Mode A: one call, FINAL, fp32 output [nq][H][D] and lse [nq][H] (the runner's layouts). */
static void case_final(const dev_inputs &in, int causal, int variant, const std::vector<double> &ro,
                       const std::vector<double> &rl, const char *tag, double tol, int o_dtype) {
    flash_params p;
    base_params(p, in, causal);
    size_t no = (size_t)in.nq * in.h * in.d;
    void *o;
    float *lse;
    size_t ob = o_dtype == FLASH_FP32 ? 4 : 2;
    cudaCheck(cudaMalloc(&o, no * ob));
    cudaCheck(cudaMalloc(&lse, (size_t)in.nq * in.h * 4));
    cudaCheck(cudaMemset(o, 0xff, no * ob));
    cudaCheck(cudaMemset(lse, 0xff, (size_t)in.nq * in.h * 4));
    p.out_mode = FLASH_OUT_FINAL;
    p.o = o;
    p.o_dtype = (flash_dtype)o_dtype;
    p.o_head_stride = in.d;
    p.o_row_stride = (int64_t)in.h * in.d;
    p.lse = lse;
    p.lse_head_stride = 1;
    p.lse_row_stride = in.h;
    run_or_die(p, variant);
    std::vector<float> ho(no), hl((size_t)in.nq * in.h);
    if (o_dtype == FLASH_FP32) cudaCheck(cudaMemcpy(ho.data(), o, no * 4, cudaMemcpyDeviceToHost));
    else {
        std::vector<uint16_t> t(no);
        cudaCheck(cudaMemcpy(t.data(), o, no * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < no; i++) ho[i] = to_f32(t[i], o_dtype == FLASH_BF16);
    }
    cudaCheck(cudaMemcpy(hl.data(), lse, hl.size() * 4, cudaMemcpyDeviceToHost));
    char what[200];
    snprintf(what, sizeof what, "%s final o=%s", tag, o_dtype == FLASH_FP32 ? "f32" : o_dtype == FLASH_BF16 ? "bf16" : "f16");
    report(what, compare(ho.data(), hl.data(), ro, rl, 0, in.nq, in.h, in.d, tol), tol);
    cudaFree(o);
    cudaFree(lse);
}

/* Mode B: a query chunk [qa, qb) against three key segments [k1,nk), [0,k0), [k0,k1) in that
 * order: fresh STATE, resumed STATE, resumed FINAL (bf16 out). */
static void case_segments(const dev_inputs &in, int causal, int variant, const std::vector<double> &ro,
                          const std::vector<double> &rl, const char *tag, double tol) {
    const int64_t qa = in.nq / 3, qb = in.nq - in.nq / 5, nq = qb - qa;
    const int64_t k1 = std::min(in.nk, in.nk / 2 + 3), k0 = std::min(k1, in.nk / 4);
    if (nq <= 0) return;
    const int d = in.d, h = in.h;
    float *rec, *lse;
    uint16_t *o;
    size_t nrec = (size_t)nq * h * (d + 2), no = (size_t)nq * h * d;
    cudaCheck(cudaMalloc(&rec, nrec * 4));
    cudaCheck(cudaMalloc(&o, no * 2));
    cudaCheck(cudaMalloc(&lse, (size_t)nq * h * 4));
    cudaCheck(cudaMemset(rec, 0xff, nrec * 4));
    cudaCheck(cudaMemset(o, 0xff, no * 2));
    cudaCheck(cudaMemset(lse, 0xff, (size_t)nq * h * 4));
    const int64_t seg[3][2] = {{k1, in.nk}, {0, k0}, {k0, k1}};
    const size_t es = 2;
    for (int s = 0; s < 3; s++) {
        flash_params p;
        base_params(p, in, causal);
        p.q = (const char *)in.q + (size_t)qa * d * es;
        p.nq = nq;
        p.q_pos0 = qa;
        p.k = (const char *)in.k + (size_t)seg[s][0] * d * es;
        p.vt = (const char *)in.vt + (size_t)seg[s][0] * es; /* may be unaligned: then realign below */
        p.nk = seg[s][1] - seg[s][0];
        p.k_pos0 = seg[s][0];
        p.rec_in = s == 0 ? NULL : rec;
        p.rec_out = rec;
        p.out_mode = s == 2 ? FLASH_OUT_FINAL : FLASH_OUT_STATE;
        p.o = o;
        p.o_dtype = FLASH_BF16;
        p.o_head_stride = d;
        p.o_row_stride = (int64_t)h * d;
        p.lse = lse;
        p.lse_head_stride = 1;
        p.lse_row_stride = h;
        uint16_t *vcopy = NULL;
        if (p.nk == 0) p.vt = in.vt; /* nothing is read; keep the pointer aligned */
        if (seg[s][0] % 8 && p.nk > 0) { /* vt rows start mid-vector: give this segment its own aligned copy */
            int64_t ld = (p.nk + 7) / 8 * 8;
            cudaCheck(cudaMalloc(&vcopy, (size_t)in.hkv * d * ld * 2));
            cudaCheck(cudaMemset(vcopy, 0, (size_t)in.hkv * d * ld * 2));
            cudaCheck(cudaMemcpy2D(vcopy, ld * 2, (const char *)in.vt + seg[s][0] * 2, in.ldv * 2, p.nk * 2,
                                   (size_t)in.hkv * d, cudaMemcpyDeviceToDevice));
            p.vt = vcopy;
            p.vt_row_stride = ld;
            p.vt_head_stride = (int64_t)d * ld;
        }
        run_or_die(p, variant); /* empty segments too: they must still write the state */
        if (vcopy) cudaFree(vcopy);
    }
    std::vector<uint16_t> t(no);
    std::vector<float> ho(no), hl((size_t)nq * h);
    cudaCheck(cudaMemcpy(t.data(), o, no * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < no; i++) ho[i] = to_f32(t[i], 1);
    cudaCheck(cudaMemcpy(hl.data(), lse, hl.size() * 4, cudaMemcpyDeviceToHost));
    char what[400];
    snprintf(what, sizeof what, "%s 3 segments, rows %lld..%lld, state->final", tag, (long long)qa, (long long)qb);
    report(what, compare(ho.data(), hl.data(), ro, rl, qa, nq, h, d, std::max(tol, 1e-2)), std::max(tol, 1e-2));
    cudaFree(rec);
    cudaFree(o);
    cudaFree(lse);
}

/* ---- engine case: gpu.h with striped key segments over two "ranks", merged on the host ------- */
static void case_engine(const dev_inputs &in, int causal, const std::vector<double> &ro, const std::vector<double> &rl,
                        const char *tag, double tol) {
    const int d = in.d, h = in.h, hkv = in.hkv;
    const int64_t nq = in.nq, nk = in.nk, stripe = 96;
    /* rank r holds stripes r, r+2, ...: several disjoint segments each */
    /* rec[0], rec[1]: each rank's partial from a fresh state, merged on the host afterwards;
     * rec[2]: one state carried through both ranks' keys in turn (the second pass resumes from a
     * state that is not fresh, so it travels to the device) */
    std::vector<std::vector<float>> rec(3);
    rec[2].resize((size_t)nq * h * (d + 2));
    for (int64_t r = 0; r < nq * h; r++) {
        float *x = &rec[2][(size_t)r * (d + 2)];
        x[0] = -INFINITY;
        for (int i = 1; i < d + 2; i++) x[i] = 0.f;
    }
    const int64_t chunk = (nq + 1) / 2;
    for (int rank = 0; rank < 2; rank++) {
        std::vector<attn_kv_segment> segs;
        for (int64_t s0 = rank * stripe; s0 < nk; s0 += 2 * stripe) {
            attn_kv_segment sg;
            sg.k = &in.hk[(size_t)s0 * hkv * d];
            sg.v = &in.hv[(size_t)s0 * hkv * d];
            sg.n = std::min(stripe, nk - s0);
            sg.pos0 = s0;
            segs.push_back(sg);
        }
        gpu_engine *e;
        /* causal cases: sub-chunks of 96 rows, so the engine's copy/compute pipeline runs with
         * several sub-chunks, tails and row offsets; full cases: the default size (one here) */
        if (gpu_engine_create(0, nk, chunk, h, hkv, d, in.bf16 ? FA_COMPUTE_BF16 : FA_COMPUTE_FP16,
                              causal ? 96 : 0, &e)) {
            fprintf(stderr, "gpu_engine_create: %s\n", fa_errmsg());
            exit(2);
        }
        if (gpu_engine_load_kv(e, segs.data(), (int)segs.size())) {
            fprintf(stderr, "gpu_engine_load_kv: %s\n", fa_errmsg());
            exit(2);
        }
        rec[rank].resize((size_t)nq * h * (d + 2));
        for (int64_t r = 0; r < nq * h; r++) { /* fresh state */
            float *x = &rec[rank][(size_t)r * (d + 2)];
            x[0] = -INFINITY;
            for (int i = 1; i < d + 2; i++) x[i] = 0.f;
        }
        for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
            attn_queries aq;
            aq.q = &in.hq[(size_t)q0 * h * d];
            aq.nq = std::min(chunk, nq - q0);
            aq.q_pos0 = q0;
            aq.h = h;
            aq.hkv = hkv;
            aq.d = d;
            aq.scale = (float)(1.0 / sqrt((double)d));
            aq.causal = causal;
            aq.diag = nk - nq;
            for (int which : {rank, 2})
                if (gpu_engine_partial(e, &aq, &rec[which][(size_t)q0 * h * (d + 2)])) {
                    fprintf(stderr, "gpu_engine_partial: %s\n", fa_errmsg());
                    exit(2);
                }
        }
        gpu_engine_destroy(e);
    }
    std::vector<float> ho((size_t)nq * h * d), hl((size_t)nq * h);
    for (int64_t r = 0; r < nq * h; r++) {
        float *a = &rec[0][(size_t)r * (d + 2)];
        attn_rec_merge(a, &rec[1][(size_t)r * (d + 2)], d);
        hl[r] = attn_rec_finalize(a, d, &ho[(size_t)r * d]);
    }
    char what[400];
    snprintf(what, sizeof what, "%s engine: 2 ranks x stripes of %lld, merged", tag, (long long)stripe);
    report(what, compare(ho.data(), hl.data(), ro, rl, 0, nq, h, d, tol), tol);
    for (int64_t r = 0; r < nq * h; r++) hl[r] = attn_rec_finalize(&rec[2][(size_t)r * (d + 2)], d, &ho[(size_t)r * d]);
    snprintf(what, sizeof what, "%s engine: one state through both ranks' stripes", tag);
    report(what, compare(ho.data(), hl.data(), ro, rl, 0, nq, h, d, tol), tol);
}

/* ---- large case: keys past 2^31 elements, a few rows checked --------------------------------- */
static void case_large(int variant, uint64_t seed) {
    /* K, V^T of 64 heads x 256K keys x 128 = 2^31 elements each: every offset past head 63's
     * start overflows 32 bits. Queries: the last 128 rows of a 256K x 256K causal job. */
    const int d = 128, h = 64, hkv = 64;
    const int64_t nk = (int64_t)1 << 18, nq = 128, q_pos0 = nk - nq;
    dev_inputs in;
    make_inputs(in, 1, d, h, hkv, nq, nk, seed, 1.f, 0);
    float *o, *lse;
    cudaCheck(cudaMalloc(&o, (size_t)nq * h * d * 4));
    cudaCheck(cudaMalloc(&lse, (size_t)nq * h * 4));
    cudaCheck(cudaMemset(o, 0xff, (size_t)nq * h * d * 4));
    flash_params p;
    base_params(p, in, 1);
    p.q_pos0 = q_pos0;
    p.diag = 0; /* Nq = Nk = 256K */
    p.out_mode = FLASH_OUT_FINAL;
    p.o = o;
    p.o_dtype = FLASH_FP32;
    p.o_head_stride = d;
    p.o_row_stride = (int64_t)h * d;
    p.lse = lse;
    p.lse_head_stride = 1;
    p.lse_row_stride = h;
    run_or_die(p, variant);
    /* check heads 0 and 63, rows 0, 77, 127: reference from the rounded inputs of those heads */
    const int heads[2] = {0, 63};
    const int64_t rows[3] = {0, 77, 127};
    double worst = 0, lworst = 0, scale = 0;
    int64_t bad = 0;
    std::vector<uint16_t> kk((size_t)nk * d), vv((size_t)d * in.ldv), qq(d);
    std::vector<float> go(d);
    for (int hi = 0; hi < 2; hi++) {
        int hh = heads[hi];
        cudaCheck(cudaMemcpy(kk.data(), in.k + (size_t)hh * nk * d, kk.size() * 2, cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(vv.data(), in.vt + (size_t)hh * d * in.ldv, vv.size() * 2, cudaMemcpyDeviceToHost));
        for (int ri = 0; ri < 3; ri++) {
            int64_t r = rows[ri];
            cudaCheck(cudaMemcpy(qq.data(), in.q + ((size_t)hh * nq + r) * d, d * 2, cudaMemcpyDeviceToHost));
            int64_t end = q_pos0 + r + 1;
            std::vector<double> s(end), acc(d, 0.0);
            double mx = -INFINITY;
#pragma omp parallel for reduction(max : mx)
            for (int64_t c = 0; c < end; c++) {
                double a = 0;
                for (int i = 0; i < d; i++) a += (double)to_f32(qq[i], 1) * to_f32(kk[(size_t)c * d + i], 1);
                s[c] = a / sqrt((double)d);
                mx = std::max(mx, s[c]);
            }
            double l = 0;
            for (int64_t c = 0; c < end; c++) l += (s[c] = exp(s[c] - mx));
#pragma omp parallel for
            for (int i = 0; i < d; i++) {
                double a = 0;
                for (int64_t c = 0; c < end; c++) a += s[c] * to_f32(vv[(size_t)i * in.ldv + c], 1);
                acc[i] = a / l;
            }
            float gl;
            cudaCheck(cudaMemcpy(go.data(), o + ((size_t)r * h + hh) * d, d * 4, cudaMemcpyDeviceToHost));
            cudaCheck(cudaMemcpy(&gl, lse + (size_t)r * h + hh, 4, cudaMemcpyDeviceToHost));
            for (int i = 0; i < d; i++) scale = std::max(scale, fabs(acc[i]));
            for (int i = 0; i < d; i++) {
                double e = fabs(go[i] - acc[i]);
                if (!(e == e)) bad++;
                worst = std::max(worst, e);
            }
            double le = fabs(gl - (mx + log(l)));
            if (!(le <= 1e-3 * (1 + fabs(mx + log(l))))) bad++;
            lworst = std::max(lworst, le);
        }
    }
    check c = {worst, scale, lworst, (worst > 1e-2 * scale) ? bad + 1 : bad, 0};
    char what[200];
    snprintf(what, sizeof what, "v%d bf16 D128 causal 256K keys x 64 heads (2^31 elements), 6 rows", variant);
    report(what, c, 1e-2);
    cudaFree(o);
    cudaFree(lse);
    free_inputs(in);
}

/* ---- engine throughput: the pipelined partial() against one sub-chunk (sub_rows -1) ----------
 * 16K query rows x 128K keys x 16 heads x D=128, full attention, fresh state, host fp32 in and out
 * (what fa_long --backend cuda does per chunk). Both must give bit-identical states (same kernels,
 * same per-row arithmetic; only the copy schedule differs). */
static void case_engine_speed(uint64_t seed) {
    const int d = 128, h = 16, hkv = 16;
    const int64_t nq = 16384, nk = 131072;
    std::vector<float> hq((size_t)nq * h * d), hk((size_t)nk * hkv * d), hv((size_t)nk * hkv * d);
#pragma omp parallel for
    for (int64_t i = 0; i < (int64_t)hk.size(); i++) {
        hk[i] = (float)((int64_t)(mix64(seed * 7 + 1 + 3 * (uint64_t)i) >> 40) - (1 << 23)) / (1 << 23);
        hv[i] = (float)((int64_t)(mix64(seed * 7 + 2 + 3 * (uint64_t)i) >> 40) - (1 << 23)) / (1 << 23);
        if (i < (int64_t)hq.size()) hq[i] = (float)((int64_t)(mix64(seed * 7 + 3 * (uint64_t)i) >> 40) - (1 << 23)) / (1 << 23);
    }
    attn_kv_segment sg = {hk.data(), hv.data(), nk, 0};
    attn_queries aq = {hq.data(), nq, 0, h, hkv, d, (float)(1.0 / sqrt((double)d)), 0, 0};
    std::vector<float> rec[2];
    double best[2] = {1e30, 1e30};
    for (int mode = 0; mode < 2; mode++) {
        gpu_engine *e;   /* mode 1: one sub-chunk, no copy/compute overlap */
        if (gpu_engine_create(0, nk, nq, h, hkv, d, FA_COMPUTE_BF16, mode == 1 ? -1 : 0, &e) ||
            gpu_engine_load_kv(e, &sg, 1)) {
            fprintf(stderr, "engine: %s\n", fa_errmsg());
            exit(2);
        }
        rec[mode].resize((size_t)nq * h * (d + 2));
        for (int rep = 0; rep < 3; rep++) {
            for (int64_t r = 0; r < nq * h; r++) {
                float *x = &rec[mode][(size_t)r * (d + 2)];
                x[0] = -INFINITY;
                memset(x + 1, 0, (size_t)(d + 1) * sizeof(float));
            }
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (gpu_engine_partial(e, &aq, rec[mode].data())) exit(2);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            best[mode] = std::min(best[mode], (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
        }
        gpu_engine_destroy(e);
    }
    int64_t diff = 0;
    for (size_t i = 0; i < rec[0].size(); i++) diff += memcmp(&rec[0][i], &rec[1][i], 4) != 0;
    double fl = 4.0 * nq * nk * h * d;
    printf("engine partial() 16K rows x 128K keys x 16 heads D128, host fp32 in/out: pipelined %.1f ms (%.0f TFLOP/s), "
           "one sub-chunk %.1f ms (%.0f TFLOP/s); states differ in %lld floats  %s\n",
           best[0] * 1e3, fl / best[0] / 1e12, best[1] * 1e3, fl / best[1] / 1e12, (long long)diff, diff ? "FAIL" : "ok");
    diff ? n_fail++ : n_pass++;
}

struct shape {
    int64_t nq, nk;
    int h, hkv;
    float amp;
    const char *name;
};

int main(int argc, char **argv) {
    int small = 0, only = 0, large = 1;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small")) small = 1;
        else if (!strcmp(argv[i], "--no-large")) large = 0;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--variant") && i + 1 < argc) only = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--small] [--no-large] [--seed N] [--variant V]\n", argv[0]);
            return 2;
        }
    }
    int ndev = gpu_count();
    if (ndev == 0) {
        printf("no CUDA device: GPU tests cannot run here\n");
        return 2;
    }
    char desc[256];
    gpu_describe(0, desc, sizeof desc);
    printf("# device 0: %s; seed %llu\n", desc, (unsigned long long)seed);
    std::vector<int> variants;
    for (int v = FLASH_SM80_MMA; v <= FLASH_SM90_PINGPONG; v++)
        if ((!only || v == only) && flash_variant_available(v)) variants.push_back(v);
        else printf("# variant %s not available here%s\n", flash_variant_name(v), only && v != only ? " (not asked)" : "");

    std::vector<shape> shapes;
    if (small) shapes = {{77, 150, 2, 1, 1.f, "small GQA odd"}};
    else
        shapes = {{1, 1, 1, 1, 1.f, "1x1"},
                  {130, 257, 4, 2, 1.f, "GQA 2:1 odd lengths"},
                  {300, 77, 2, 2, 1.f, "Nq>Nk (causal: rows see no key)"},
                  {257, 1000, 3, 1, 1.f, "MQA Nq<Nk"},
                  {1024, 1024, 2, 2, 1.f, "square 1K"},
                  {333, 555, 2, 1, 12.f, "large magnitude (x12)"},
                  {2049, 3001, 2, 2, 1.f, "2K x 3K"}};
    /* head dims: 64 and 128 on every shape; every other instance (80, 96, 192, 256) and dims that
     * run padded in the next instance up (8, 40, 72, 104, 136, 200) on the shapes from the second
     * to the fourth and the large-magnitude one. --small (the sanitizers): D 64 as before, and D 72
     * (padded into 80) and 256 (64-row blocks on sm80), causal, variant 1, the final output only. */
    const int dtypes[2] = {1, 0};
    const int all_dims[] = {64, 128}, some_dims[] = {8, 40, 72, 80, 96, 104, 136, 192, 200, 256};
    struct dcase { int d; bool full; };
    for (size_t si = 0; si < shapes.size(); si++) {
        const shape &sh = shapes[si];
        std::vector<dcase> dcs;
        for (int d : all_dims) dcs.push_back({d, true});
        if (small) dcs = {{64, true}, {72, false}, {256, false}};
        else if ((si >= 1 && si <= 3) || sh.amp > 1.f)
            for (int d : some_dims) dcs.push_back({d, true});
        for (const dcase &dc : dcs)
            for (int ti = 0; ti < 2; ti++) {
                if (small && ti) continue; /* --small: bf16 only */
                int bf16 = dtypes[ti], d = dc.d;
                double tol = bf16 ? 1e-2 : 5e-3;
                dev_inputs in;
                make_inputs(in, bf16, d, sh.h, sh.hkv, sh.nq, sh.nk, ++seed, sh.amp, 1);
                for (int causal = 0; causal < 2; causal++) {
                    if (!dc.full && !causal) continue;
                    std::vector<double> ro, rl;
                    reference(in, 1.0 / sqrt((double)d), causal, ro, rl);
                    for (int v : variants) {
                        /* the sanitizers' extra dims: variant 1 only (racecheck spends minutes in
                         * the sm90 variants' barrier waits; the full run checks those dims) */
                        if (!dc.full && v != FLASH_SM80_MMA) continue;
                        char tag[160];
                        snprintf(tag, sizeof tag, "v%d %s D%d %s %s Nq%lld Nk%lld H%d/%d", v, bf16 ? "bf16" : "f16", d,
                                 causal ? "causal" : "full", sh.name, (long long)sh.nq, (long long)sh.nk, sh.h, sh.hkv);
                        case_final(in, causal, v, ro, rl, tag, tol, FLASH_FP32);
                        if (!dc.full) continue;
                        if (!small) case_final(in, causal, v, ro, rl, tag, tol, bf16 ? FLASH_BF16 : FLASH_FP16);
                        case_segments(in, causal, v, ro, rl, tag, tol);
                    }
                    if (dc.full && (!small || causal)) {
                        char tag[160];
                        snprintf(tag, sizeof tag, "auto %s D%d %s %s", bf16 ? "bf16" : "f16", d, causal ? "causal" : "full",
                                 sh.name);
                        case_engine(in, causal, ro, rl, tag, tol);
                    }
                }
                free_inputs(in);
            }
    }
    if (!small && large) {
        for (int v : variants) case_large(v, ++seed);
        case_engine_speed(++seed);
    }
    printf("# %d checks passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
