/* costmodel.c — see costmodel.h. Sections: machine figures | CPU model | GPU model | search |
 * tune cache | the run's choice.
 *
 * Where each figure comes from:
 *   cpu_gflops   measured: cm_measure_cpu_peak, independent FMA chains in registers on every
 *                thread (the loop bench/cpu_bench.c's `peak` reports). Default 100 GFLOP/s.
 *   cpu_eff      the engine's tile products' fraction of that peak. Default 0.65: the engine ran
 *                at 53-76% of measured peak on the 2-core EPYC (bench/NOTES_CPU.md); `fa_long
 *                tune` calibrates it on the tuned job (measured / predicted at efficiency 1).
 *   mem_gbps     measured: cm_measure_mem_gbps, vector reads of 128 MiB on every thread. Default 10.
 *   l2/l3_gbps   measured: cm_measure_cache_gbps, the same reads of a buffer of half of L2 (L3) per
 *                thread, repeated. Defaults 8x and 3x mem_gbps.
 *   l1/l2_bytes  sysconf(_SC_LEVEL1_DCACHE_SIZE / _SC_LEVEL2_CACHE_SIZE); default 32 KiB / 1 MiB.
 *   gpu_tflops   measured by `fa_long tune --backend cuda` (kernels/cuda/tune.cu times each flash
 *                variant). Default, for FLASH_AUTO only: bench/results/kernel_h100.csv, 460
 *                TFLOP/s at D = 64 and 620 at D = 128 (variant 4 on the H100); other variants
 *                are not ranked until measured.
 *   link_gbps    measured by gpu_link_gbps (a pinned 256 MB copy); default 52.7 GB/s, the H100
 *                paging run (bench/results/paging_h100.csv).
 *   hbm_gbps     default 3350 GB/s (H100 SXM data sheet); enters only the state read/write term.
 *   smem         cudaDevAttrMaxSharedMemoryPerBlockOptin; default 227 KiB (sm_90).
 *   net_gbps     CPU: 5 GB/s, assumed shared-memory MPI between ranks of one node (not measured
 *                here); GPU: 361 GB/s NCCL bus bandwidth, the 1 GiB all-reduce measured on
 *                nvidia-h100-x8 (/work/.library/device/KINDS.md).
 *   net_latency  CPU 20 us, GPU 30 us per merge (one reduce + one all-reduce): assumed.
 * Overheads (assumed, order of magnitude; the tune bench reports how far predictions land):
 *   CPU: 0.3 us per key tile of a work item, 2 us per work item, 30 us per chunk (parallel
 *   region, state init); exp and softmax bookkeeping 30 flop-equivalents per score.
 *   GPU: 6 us per kernel launch; wave quantization over 132 SMs with 128-row query tiles. */
#include "dist/costmodel.h"
#include "dist/paging.h"
#include "kernels/gpu.h"
#include "base/common.h"
#include <errno.h>
#include <mpi.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

int cm_flash_variant = 0;

#define CPU_LANES 16            /* the engine's query rows per SIMD vector (attn_cpu.c LANES) */
#define CPU_EXP_FLOPS 30.0      /* flop-equivalents per score: max, exp polynomial, sum */
#define CPU_TILE_S 0.3e-6
#define CPU_ITEM_S 2e-6
#define CPU_CHUNK_S 30e-6
#define GPU_LAUNCH_S 6e-6
#define GPU_SMS 132
#define GPU_BM 128

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t rup(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* ---- machine figures ------------------------------------------------------------------------ */
void cm_machine_defaults(cm_machine *m, int gpu) {
    m->gpu = gpu;
    if (m->threads <= 0) m->threads = omp_get_max_threads();
    if (!(m->cpu_gflops > 0)) m->cpu_gflops = 100.0;
    if (!(m->cpu_eff > 0)) m->cpu_eff = 0.65;
    if (!(m->mem_gbps > 0)) m->mem_gbps = 10.0;
    if (m->l1_bytes <= 0) {
        long v = sysconf(_SC_LEVEL1_DCACHE_SIZE);
        m->l1_bytes = v > 0 ? v : 32768;
    }
    if (m->l2_bytes <= 0) {
        long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
        m->l2_bytes = v > 0 ? v : 1 << 20;
    }
    if (m->l3_bytes <= 0) {            /* shared; some hypervisors report nonsense: cap 64 MiB */
        long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
        m->l3_bytes = v > 0 && v <= (64L << 20) ? v : 32L << 20;
    }
    if (!(m->l2_gbps > 0)) m->l2_gbps = 8 * m->mem_gbps;
    if (!(m->l3_gbps > 0)) m->l3_gbps = 3 * m->mem_gbps;
    if (!(m->hbm_gbps > 0)) m->hbm_gbps = 3350.0;
    if (!(m->link_gbps > 0)) m->link_gbps = 52.7;
    if (m->smem_per_block <= 0) m->smem_per_block = 227 * 1024;
    if (m->device_free <= 0) m->device_free = (int64_t)79 << 30;
    if (!(m->net_gbps > 0)) m->net_gbps = gpu ? 361.0 : 5.0;
    if (!(m->net_latency_s > 0)) m->net_latency_s = gpu ? 30e-6 : 20e-6;
    if (!m->device[0]) cm_device_name(gpu, m->threads, m->device, sizeof m->device);
}

void cm_device_name(int gpu, int threads, char *buf, int len) {
    if (gpu) {
        char d[128];
        gpu_describe(0, d, sizeof d);
        char *comma = strchr(d, ',');            /* "NVIDIA H100 80GB HBM3, sm_90, 132 SMs" */
        if (comma) *comma = 0;
        snprintf(buf, (size_t)len, "gpu %s", d);
        return;
    }
    char model[96] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *p = strchr(line, ':');
                if (p) {
                    p++;
                    while (*p == ' ') p++;
                    p[strcspn(p, "\n")] = 0;
                    snprintf(model, sizeof model, "%s", p);
                }
                break;
            }
        fclose(f);
    }
    for (char *p = model; *p; p++)               /* keep the key one token-safe line */
        if (*p == '[' || *p == ']' || *p == '|' || *p == '=') *p = ' ';
    snprintf(buf, (size_t)len, "cpu %s x%d", model, threads > 0 ? threads : omp_get_max_threads());
}

/* FMA peak: independent chains in registers (more than latency x pipes, so the pipes never
 * wait); the empty asm keeps them in registers. Moved here from bench/cpu_bench.c. */
#if defined(__AVX512F__)
typedef float cm_vecf __attribute__((vector_size(64)));
#define CM_CHAINS 16
#elif defined(__AVX__)
typedef float cm_vecf __attribute__((vector_size(32)));
#define CM_CHAINS 12
#else
typedef float cm_vecf __attribute__((vector_size(16)));
#define CM_CHAINS 12
#endif
#define FMA4(a, b, c, d) a = a * mul + add; b = b * mul + add; c = c * mul + add; d = d * mul + add
static double fma_loop(int64_t iters) {
    cm_vecf mul, add;
    for (int i = 0; i < (int)(sizeof(cm_vecf) / 4); i++) { mul[i] = 0.999999f; add[i] = 1e-7f; }
    cm_vecf a0 = mul, a1 = mul * 2, a2 = mul * 3, a3 = mul * 4, a4 = mul * 5, a5 = mul * 6,
            a6 = mul * 7, a7 = mul * 8, a8 = mul * 9, a9 = mul * 10, a10 = mul * 11, a11 = mul * 12;
#if CM_CHAINS == 16
    cm_vecf a12 = mul * 13, a13 = mul * 14, a14 = mul * 15, a15 = mul * 16;
#endif
    for (int64_t it = 0; it < iters; it++) {
        FMA4(a0, a1, a2, a3); FMA4(a4, a5, a6, a7); FMA4(a8, a9, a10, a11);
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                         "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
#if CM_CHAINS == 16
        FMA4(a12, a13, a14, a15);
        __asm__ volatile("" : "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
#endif
    }
    cm_vecf t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
#if CM_CHAINS == 16
    t += a12 + a13 + a14 + a15;
#endif
    return t[0];
}

double cm_measure_cpu_peak(int threads) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    int64_t iters = 20 * 1000 * 1000;
    double sink = 0, best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = fa_now();
        #pragma omp parallel num_threads(nt) reduction(+ : sink)
        sink += fma_loop(iters);
        double t = fa_now() - t0;
        double flops = 2.0 * CM_CHAINS * (sizeof(cm_vecf) / 4) * (double)iters * nt;
        if (flops / t > best) best = flops / t;
    }
    if (sink == 12345.678) fprintf(stderr, "%g\n", sink);     /* keeps the loop's result live */
    return best / 1e9;
}

/* Read bandwidth of a buffer of `bytes` per thread, every thread reading its own: vector loads
 * into 4 independent accumulators (so the adds never limit), best of reps passes. */
static double read_gbps(int nt, int64_t bytes, int reps) {
    const int64_t nv = bytes / (int64_t)sizeof(cm_vecf);
    double best = 0, sink = 0;
    #pragma omp parallel num_threads(nt) reduction(+ : sink)
    {
        cm_vecf *a = fa_aligned_alloc((size_t)nv * sizeof(cm_vecf), "bandwidth buffer");
        for (int64_t i = 0; i < nv; i++) a[i] = a[i] * 0 + (float)(i & 7);
        for (int r = 0; r < reps; r++) {
            #pragma omp barrier
            double t0 = fa_now();
            cm_vecf s0 = a[0] * 0, s1 = s0, s2 = s0, s3 = s0;
            for (int64_t i = 0; i + 3 < nv; i += 4) {
                s0 += a[i]; s1 += a[i + 1]; s2 += a[i + 2]; s3 += a[i + 3];
            }
            #pragma omp barrier
            double t = fa_now() - t0;
            s0 += s1 + s2 + s3;
            sink += s0[0];
            #pragma omp master
            if ((double)bytes * nt / t > best) best = (double)bytes * nt / t;
        }
        free(a);
    }
    if (sink == -1) fprintf(stderr, "%g\n", sink);
    return best / 1e9;
}

double cm_measure_mem_gbps(int threads) {
    return read_gbps(threads > 0 ? threads : omp_get_max_threads(), (int64_t)128 << 20, 3);
}

double cm_measure_cache_gbps(int threads, int64_t bytes) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    return read_gbps(nt, bytes, (int)(((int64_t)2 << 30) / (bytes * nt) + 1));
}

/* Compute and merges are two serial resources in a pipeline (chunk c merges while c+1
 * computes): the job takes max(compute + the last merge, the first chunk + all merges). The
 * window bounds how far compute runs ahead; it changes memory, not this throughput bound. */
static double merge_exposed(double compute, double first, double merges, double last) {
    if (merges <= 0) return 0;
    double t = compute + last > first + merges ? compute + last : first + merges;
    return t - compute;
}

/* ---- CPU model -------------------------------------------------------------------------------
 * A work item is (kv head, br query rows); its M = br*G stacked rows padded to Mp lanes
 * (kernels/cpu/attn_cpu.c). Per item over `keys` visible keys (whole bc tiles):
 *   products  4*Mp*D*keys / (thread peak * eff)
 *   softmax   CPU_EXP_FLOPS*Mp*keys / thread peak, plus the rescale of Ot: 2*D*Mp per key tile
 *   memory    K and V of those keys, 8*D*keys bytes, re-read per item from L2 when the head's
 *             keys fit half of it, from L3 when all threads' heads fit half of it, else from
 *             DRAM; each at its measured bandwidth / threads
 *   overhead  CPU_TILE_S per key tile, CPU_ITEM_S per item
 * An item costs max(compute, memory) + overhead; a chunk costs sum/threads plus half its largest
 * item (the dynamic queue's last wave) plus CPU_CHUNK_S. On-chip limit: St [bc][Mp], Qt and Ot
 * [D][Mp] and one K and V tile must fit in L2. */
static int cpu_valid(const cm_machine *m, const cm_job *j, const cm_choice *c) {
    int g = j->h / j->hkv;
    int64_t mp = rup((int64_t)c->br * g, CPU_LANES);
    int64_t ws = ((int64_t)c->bc * mp + 2LL * j->d * mp + 2LL * c->bc * j->d) * 4;
    return c->br >= 1 && c->bc >= 8 && c->threads >= 1 && c->chunk >= 1 && c->window >= 1 &&
           mp <= 4096 && ws <= m->l2_bytes;
}

static void cpu_predict(const cm_machine *m, const cm_job *j, cm_choice *c) {
    int g = j->h / j->hkv, T = c->threads;
    double peak_t = m->cpu_gflops * 1e9 / m->threads;      /* one thread's peak */
    double bw_t = m->mem_gbps * 1e9 / (T < m->threads ? T : m->threads);   /* one thread's share */
    if (T > m->threads) peak_t *= (double)m->threads / T;   /* oversubscribed */
    int64_t kv_local = ceil_div(j->nk, j->nranks);          /* this rank's share */
    /* K and V of one kv head: consecutive items of a thread re-read them from L2 when they fit
     * half of it, from L3 when every thread's head fits half of L3, else from memory */
    int64_t head_bytes = kv_local * j->d * 8;
    int nt = T < m->threads ? T : m->threads;
    double bw_item = head_bytes * 2 <= m->l2_bytes ? m->l2_gbps * 1e9 / nt
                   : head_bytes * nt * 2 <= m->l3_bytes ? m->l3_gbps * 1e9 / nt : bw_t;
    int64_t diag = j->nk - j->nq;
    double comp_sum = 0, mem_sum = 0, total = 0;
    int64_t nchunks = ceil_div(j->nq, c->chunk);
    double merge_sum = 0, merge_last = 0, first_chunk = 0;
    for (int64_t ci = 0; ci < nchunks; ci++) {
        int64_t r0 = ci * c->chunk, n = j->nq - r0 < c->chunk ? j->nq - r0 : c->chunk;
        int br = c->br < n ? c->br : (int)n;
        int64_t mp = rup((int64_t)br * g, CPU_LANES);
        double sum = 0, big = 0, csum = 0, msum = 0;
        for (int64_t t0 = 0; t0 < n; t0 += br) {
            int64_t nr = n - t0 < br ? n - t0 : br;
            int64_t keys = j->nk;
            if (j->causal) {
                int64_t last = r0 + t0 + nr - 1 + diag + 1;  /* keys the tile's last row sees */
                keys = last <= 0 ? 0 : rup(last, c->bc) < j->nk ? rup(last, c->bc) : j->nk;
            }
            keys = ceil_div(keys, j->nranks);               /* the rank's share (balanced shards) */
            double ktiles = ceil_div(keys, c->bc);
            double comp = (4.0 * mp * j->d * keys) / (peak_t * m->cpu_eff) +
                          (CPU_EXP_FLOPS * mp * keys + 2.0 * j->d * mp * ktiles) / peak_t;
            double mem = 8.0 * j->d * keys / bw_item;
            double item = (comp > mem ? comp : mem) + CPU_TILE_S * ktiles + CPU_ITEM_S;
            item *= j->hkv;                                 /* the same for every kv head */
            sum += item;
            csum += comp * j->hkv;
            msum += mem * j->hkv;
            if (item / j->hkv > big) big = item / j->hkv;
        }
        double tc = sum / T + (T > 1 ? 0.5 * big : 0) + CPU_CHUNK_S;
        total += tc;
        comp_sum += csum / T;
        mem_sum += msum / T;
        if (ci == 0) first_chunk = tc;
        if (j->nranks > 1) {
            double bytes = (double)n * j->h * (j->d + 2) * 4 + (double)n * j->h * 4;
            merge_last = bytes / (m->net_gbps * 1e9) + m->net_latency_s;
            merge_sum += merge_last;
        }
    }
    double exposed = merge_exposed(total, first_chunk, merge_sum, merge_last);
    c->t_compute = comp_sum;
    c->t_memory = mem_sum;
    c->t_page = 0;
    c->t_merge = exposed;
    c->t_merge_all = merge_sum;
    c->t_total = total + exposed;
    c->critical = merge_sum > total ? "merge" : mem_sum > comp_sum ? "memory" : "compute";
}

/* ---- GPU model -------------------------------------------------------------------------------
 * Per chunk of n rows on a rank: kernel flops / (rate of the variant x wave efficiency) + launch
 * overheads (one launch per key run: two for zigzag causal shards; one more per paged block);
 * paged keys cost 2*Hkv*D*e bytes each per chunk over the host link, overlapped with the
 * chunk's compute by the ring (ring >= 2): max(compute, copy). Merge as on CPUs with NCCL's
 * reduce at bus bandwidth and the all-reduce at 2(P-1)/P of it. On-chip limit: the variant's
 * shared memory (its tiles and stages) within smem_per_block. */
static int64_t variant_smem(int variant, int d) {
    if (variant == 1) return (int64_t)128 * d * 2 + 2LL * 2 * 64 * d * 2;        /* 128 x 64, 2 stages */
    int stages = variant == 2 ? 2 : 3;                                          /* 128 x 128 */
    return (int64_t)128 * d * 2 + (int64_t)stages * 2 * 128 * d * 2 + 8 * (1 + 3 * stages) + 1024;
}

static double variant_rate(const cm_machine *m, const cm_job *j, int v) {
    if (m->gpu_tflops[v] > 0) return m->gpu_tflops[v] * 1e12;
    if (v == 0) {                 /* the kernel's own pick: the best measured variant, if any */
        double best = 0;
        for (int u = 1; u <= 4; u++) if (m->gpu_tflops[u] > best) best = m->gpu_tflops[u];
        if (best > 0) return best * 1e12;
        return (j->d <= 64 ? 460.0 : 620.0) * 1e12;           /* kernel_h100.csv, variant 4 */
    }
    return 0;                                                   /* not measured: not ranked */
}

static int gpu_plan(const cm_machine *m, const cm_job *j, const cm_choice *c, kv_plan *pl) {
    memset(pl, 0, sizeof *pl);
    pl->kv_rows = ceil_div(j->nk, j->nranks);
    pl->h = j->h; pl->hkv = j->hkv; pl->d = j->d; pl->elem = j->elem;
    pl->chunk_rows = c->chunk;
    pl->slots = c->window;
    pl->budget = j->budget;
    pl->device_free = m->device_free;
    pl->block_rows = c->block_rows;
    pl->ring = c->ring;
    pl->max_resident = -1;
    fa_clearerr();
    int rc = kv_plan_make(pl);
    fa_clearerr();
    return rc;
}

static int gpu_valid(const cm_machine *m, const cm_job *j, const cm_choice *c) {
    if (c->variant < 0 || c->variant > 4 || c->chunk < 1 || c->window < 1) return 0;
    if (c->ring != 0 && c->ring < 2) return 0;
    if (!(variant_rate(m, j, c->variant) > 0)) return 0;
    if (variant_smem(c->variant ? c->variant : 4, j->d) > m->smem_per_block) return 0;
    kv_plan pl;
    return gpu_plan(m, j, c, &pl) == 0;
}

static void gpu_predict(const cm_machine *m, const cm_job *j, cm_choice *c) {
    kv_plan pl;
    if (gpu_plan(m, j, c, &pl)) { c->t_total = INFINITY; c->critical = "memory"; return; }
    double R = variant_rate(m, j, c->variant);
    int runs = j->causal && j->nranks > 1 ? 2 : 1;         /* zigzag: two key runs */
    int64_t nblocks = pl.paged_rows > 0 ? ceil_div(pl.paged_rows, pl.block_rows) : 0;
    int64_t diag = j->nk - j->nq, nchunks = ceil_div(j->nq, c->chunk);
    double total = 0, comp_sum = 0, page_sum = 0, merge_sum = 0, merge_last = 0, first = 0;
    for (int64_t ci = 0; ci < nchunks; ci++) {
        int64_t r0 = ci * c->chunk, n = j->nq - r0 < c->chunk ? j->nq - r0 : c->chunk;
        double pairs = j->causal ? 0 : (double)n * j->nk;
        if (j->causal)
            for (int64_t t = 0; t < n; t += GPU_BM) {          /* whole 128-row tiles */
                int64_t last = r0 + t + (n - t < GPU_BM ? n - t : GPU_BM) - 1 + diag + 1;
                pairs += (double)(n - t < GPU_BM ? n - t : GPU_BM) *
                         (double)(last < 0 ? 0 : last < j->nk ? last : j->nk);
            }
        double flops = 4.0 * j->d * j->h * pairs / j->nranks;
        int64_t blocks = ceil_div(n, GPU_BM) * j->h;
        double wave = (double)blocks / (double)(ceil_div(blocks, GPU_SMS) * GPU_SMS);
        double tc = flops / (R * wave) + GPU_LAUNCH_S * (runs + nblocks) +
                    (double)n * j->h * (j->d + 2) * 8 / (m->hbm_gbps * 1e9);   /* state in/out */
        /* paged keys copied for this chunk: causal chunks stop at their last visible key (the
         * engine skips later blocks); a rank's keys span the sequence in order (one rank) or
         * spread over it (zigzag / striped shards: the visible fraction of them) */
        int64_t paged = pl.paged_rows;
        if (j->causal) {
            const int64_t last = r0 + n - 1 + diag + 1;          /* visible keys: [0, last) */
            const double frac = last <= 0 ? 0 : last >= j->nk ? 1 : (double)last / j->nk;
            const int64_t need = j->nranks > 1 ? (int64_t)ceil(frac * pl.kv_rows)
                                               : (last < pl.kv_rows ? (last > 0 ? last : 0) : pl.kv_rows);
            paged = need > pl.resident_rows ? need - pl.resident_rows : 0;
            if (paged > pl.paged_rows) paged = pl.paged_rows;
        }
        double tp = (double)paged * 2 * j->hkv * j->d * j->elem / (m->link_gbps * 1e9);
        double tchunk = tc > tp ? tc : tp;
        total += tchunk;
        comp_sum += tc;
        page_sum += tp;
        if (ci == 0) first = tchunk;
        if (j->nranks > 1) {
            double P = j->nranks, bw = m->net_gbps * 1e9;
            merge_last = (double)n * j->h * (j->d + 2) * 4 / bw +
                         (double)n * j->h * 4 * 2 * (P - 1) / P / bw + m->net_latency_s;
            merge_sum += merge_last;
        }
    }
    double exposed = merge_exposed(total, first, merge_sum, merge_last);
    c->t_compute = comp_sum;
    c->t_memory = 0;
    c->t_page = page_sum;
    c->t_merge = exposed;
    c->t_merge_all = merge_sum;
    c->t_total = total + exposed;
    c->critical = merge_sum > total ? "merge" : page_sum > comp_sum ? "paging" : "compute";
}

int cm_predict(const cm_machine *m, const cm_job *j, cm_choice *c) {
    int ok = j->gpu ? gpu_valid(m, j, c) : cpu_valid(m, j, c);
    if (!ok) { c->t_total = INFINITY; c->critical = "invalid"; return 0; }
    if (j->gpu) gpu_predict(m, j, c);
    else cpu_predict(m, j, c);
    if (!c->source) c->source = "model";
    return isfinite(c->t_total);
}

/* ---- search ---------------------------------------------------------------------------------- */
static int by_time(const void *a, const void *b) {
    double x = ((const cm_choice *)a)->t_total, y = ((const cm_choice *)b)->t_total;
    return x < y ? -1 : x > y;
}

/* The window: 3 (the old default) unless the merge needs more to hide (up to 8). */
static int pick_window(const cm_machine *m, const cm_job *j, cm_choice *c) {
    c->window = 3;
    if (!cm_predict(m, j, c)) return 0;
    while (c->window < 8 && c->t_merge > 1.5 * (m->net_latency_s + 1e-9) && j->nranks > 1) {
        /* (with merge_exposed's bound a deeper window never predicts faster: 3 stays) */
        cm_choice w = *c;
        w.window++;
        if (!cm_predict(m, j, &w) || w.t_total >= c->t_total) break;
        *c = w;
    }
    return 1;
}

/* With several ranks a job keeps at least 2 chunks per rank, so that every rank owns rows to
 * merge and write and the pipeline has depth (not part of the time model). */
static int too_few_chunks(const cm_job *j, int64_t chunk, size_t k) {
    return k > 0 && j->nranks > 1 && ceil_div(j->nq, chunk) < 2LL * j->nranks;
}

int cm_candidates(const cm_machine *m, const cm_job *j, cm_choice *out, int max) {
    int n = 0;
    static const int64_t chunks_cpu[] = {256, 512, 1024, 2048, 4096};
    /* GPU chunks stop at 16K rows: host buffers (q, W record slots) grow with the chunk, 1.4 GB at
     * 16K rows x 32 heads x D 128, and the model gains only the wave tail beyond */
    static const int64_t chunks_gpu[] = {2048, 4096, 8192, 16384};
    if (!j->gpu) {
        static const int brs[] = {1, 2, 4, 8, 16, 32, 64, 128};
        static const int bcs[] = {32, 64, 128, 256, 512};
        for (size_t a = 0; a < sizeof brs / sizeof *brs; a++)
            for (size_t b = 0; b < sizeof bcs / sizeof *bcs; b++)
                for (size_t k = 0; k < sizeof chunks_cpu / sizeof *chunks_cpu; k++) {
                    if ((chunks_cpu[k] > rup(j->nq, 256) && k > 0) || too_few_chunks(j, chunks_cpu[k], k)) continue;
                    cm_choice c = {.br = brs[a], .bc = bcs[b], .threads = m->threads,
                                   .chunk = chunks_cpu[k] < j->nq ? chunks_cpu[k] : j->nq,
                                   .source = "model"};
                    if (c.br > c.chunk) continue;
                    if (n < max && pick_window(m, j, &c)) out[n++] = c;
                }
    } else {
        static const int64_t blocks[] = {0, 8192, 16384, 65536};
        static const int rings[] = {2, 3, 4};
        /* variant 0 (the kernel's own pick: v4 on sm_90, else v1) is a candidate only when no
         * variant's rate was measured; otherwise it would be a second name for a measured one */
        int measured = 0;
        for (int v = 1; v <= 4; v++) measured |= m->gpu_tflops[v] > 0;
        for (int v = measured ? 1 : 0; v <= 4; v++)
            for (size_t k = 0; k < sizeof chunks_gpu / sizeof *chunks_gpu; k++) {
                if ((chunks_gpu[k] > rup(j->nq, 2048) && k > 0) || too_few_chunks(j, chunks_gpu[k], k)) continue;
                cm_choice c = {.variant = v, .chunk = chunks_gpu[k] < j->nq ? chunks_gpu[k] : j->nq,
                               .source = "model"};
                if (!pick_window(m, j, &c)) continue;
                kv_plan pl;
                gpu_plan(m, j, &c, &pl);
                if (pl.paged_rows == 0) { if (n < max) out[n++] = c; continue; }
                for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++)
                    for (size_t r = 0; r < sizeof rings / sizeof *rings; r++) {
                        cm_choice p = c;
                        p.block_rows = blocks[b];
                        p.ring = rings[r];
                        p.source = "model";
                        if (n < max && cm_predict(m, j, &p)) out[n++] = p;
                    }
            }
    }
    qsort(out, (size_t)n, sizeof *out, by_time);
    return n;
}

void cm_fixed_defaults(const cm_job *j, int threads, cm_choice *c) {
    memset(c, 0, sizeof *c);
    c->threads = threads;
    c->window = 3;
    c->chunk = j->gpu ? 8192 : 1024;
    if (c->chunk > j->nq) c->chunk = j->nq;
    /* pick_tiling (kernels/cpu/attn_cpu.c): br = 64/G, halved while a chunk has fewer than
     * 4 work items per thread; bc = 128 */
    int g = j->h / j->hkv;
    c->bc = 128;
    c->br = 64 / g > 1 ? 64 / g : 1;
    while (c->br > 4 && ceil_div(c->chunk, c->br) * j->hkv < 4 * threads) c->br /= 2;
    if (c->br > c->chunk) c->br = (int)c->chunk;
    c->source = "defaults";
    /* GPU under a device budget: 8192-row chunks may leave no room for a ring of key blocks (the
     * run then stops and asks for a lower --chunk); the defaults are what that advice gives,
     * the chunk halved down to 2048 rows until the planner (block size and ring its own) fits */
    if (j->gpu && j->budget > 0) {
        const cm_machine none = {0};          /* with a budget the plan needs no device figure */
        kv_plan pl;
        while (c->chunk > 2048 && gpu_plan(&none, j, c, &pl) != 0) c->chunk /= 2;
    }
}

/* ---- tune cache ------------------------------------------------------------------------------ */
const char *cm_cache_path(const char *opt) {
    static char buf[4096];
    if (opt && *opt) return opt;
    const char *e = getenv("FA_TUNE_CACHE");
    if (e && *e) return e;
    const char *home = getenv("HOME");
    snprintf(buf, sizeof buf, "%s/.cache/fa_long/tune.txt", home && *home ? home : ".");
    return buf;
}

void cm_cache_key(const char *device, const cm_job *j, char *buf, int len) {
    snprintf(buf, (size_t)len, "%s | d=%d dtype=%s causal=%d gqa=%d", device, j->d,
             j->dtype < 0 ? "float32" : j->dtype == 1 ? "float16" : "bfloat16", j->causal ? 1 : 0,
             j->h / (j->hkv > 0 ? j->hkv : 1));
}

static void trim(char *s) {
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    char *b = s;
    while (*b == ' ' || *b == '\t') b++;
    if (b != s) memmove(s, b, strlen(b) + 1);
}

static int parse_ll(const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

/* One entry's key = value line into c; -1 on a bad value or unknown key. */
static int entry_field(cm_choice *c, const char *k, const char *v) {
    long long x;
    if (!strcmp(k, "measured_s") || !strcmp(k, "predicted_s")) {
        char *end;
        double d = strtod(v, &end);
        if (end == v || *end || !(d >= 0) || !isfinite(d)) return -1;
        if (k[0] == 'm') c->measured_s = d;
        else c->t_total = d;
        return 0;
    }
    if (!strcmp(k, "date") || !strcmp(k, "critical")) return 0;
#define FIELD(name, lo, hi) if (!strcmp(k, #name)) { if (parse_ll(v, lo, hi, &x)) return -1; c->name = x; return 0; }
    FIELD(br, 1, 4096) FIELD(bc, 8, 65536) FIELD(threads, 1, 4096) FIELD(chunk, 1, 1LL << 40)
    FIELD(window, 1, 64) FIELD(variant, 0, 4) FIELD(block_rows, 0, 1LL << 40) FIELD(ring, 0, 16)
#undef FIELD
    return -1;
}

static int machine_field(cm_machine *m, const char *k, const char *v) {
    if (!strcmp(k, "date")) return 0;
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end || !(d >= 0) || !isfinite(d)) return -1;
    if (!strcmp(k, "cpu_gflops")) m->cpu_gflops = d;
    else if (!strcmp(k, "cpu_eff")) m->cpu_eff = d;
    else if (!strcmp(k, "mem_gbps")) m->mem_gbps = d;
    else if (!strcmp(k, "l2_gbps")) m->l2_gbps = d;
    else if (!strcmp(k, "l3_gbps")) m->l3_gbps = d;
    else if (!strcmp(k, "link_gbps")) m->link_gbps = d;
    else if (!strncmp(k, "gpu_tflops_v", 12) && k[12] >= '0' && k[12] <= '4' && !k[13])
        m->gpu_tflops[k[12] - '0'] = d;
    else if (!strcmp(k, "net_gbps")) m->net_gbps = d;
    else if (!strcmp(k, "threads")) m->threads = (int)d;
    else if (!strcmp(k, "date")) return 0;
    else return -1;
    return 0;
}

/* Reads the file; for key (an entry) or "machine <device>" fills c or m. Returns 1 found,
 * 0 not found, -1 file ignored (warned). */
static int cache_machine(const char *path, const char *device, cm_machine *m);
static int cache_read(const char *path, const char *key, const char *device, cm_choice *c,
                      cm_machine *m, int warn) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1024], sect[1024] = "", mkey[256];
    snprintf(mkey, sizeof mkey, "machine %s", device);
    int version = -1, found = 0, in_target = 0, other_dev = 0, lineno = 0, bad = 0;
    const char *why = NULL;
    cm_choice tmp;
    memset(&tmp, 0, sizeof tmp);
    const char *tail = strchr(key ? key : "", '|');
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) { why = "line too long"; bad = 1; break; }
        trim(line);
        if (!line[0] || line[0] == '#') continue;
        if (line[0] == '[') {
            if (version != CM_CACHE_VERSION) { why = version < 0 ? "no version line" : "foreign version"; bad = 1; break; }
            char *e = strchr(line, ']');
            if (!e || e[1]) { why = "malformed section"; bad = 1; break; }
            *e = 0;
            snprintf(sect, sizeof sect, "%s", line + 1);
            trim(sect);
            in_target = (key && !strcmp(sect, key)) ? 1 : (m && !strcmp(sect, mkey)) ? 2 : 0;
            if (in_target == 1) { memset(&tmp, 0, sizeof tmp); found = 1; }
            const char *st = strchr(sect, '|');
            if (!in_target && tail && st && !strcmp(st, tail)) other_dev = 1;
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq) { why = "line without '='"; bad = 1; break; }
        *eq = 0;
        char *k = line, *v = eq + 1;
        trim(k);
        trim(v);
        if (!sect[0]) {
            if (!strcmp(k, "version")) {
                long long x;
                version = parse_ll(v, 0, 1000000, &x) ? -2 : (int)x;
                if (version != CM_CACHE_VERSION) { why = "foreign version"; bad = 1; break; }
            }
            continue;
        }
        if (in_target == 1 && entry_field(&tmp, k, v)) { why = "bad value in the entry"; bad = 1; break; }
        if (in_target == 2 && m && machine_field(m, k, v)) { why = "bad machine figure"; bad = 1; break; }
    }
    fclose(f);
    if (!bad && version != CM_CACHE_VERSION) { why = version == -1 ? "no version line (empty or truncated)" : "foreign version"; bad = 1; }
    if (!bad && found && (tmp.chunk <= 0 || tmp.window <= 0 || (!tmp.br != !tmp.bc))) {
        why = "incomplete entry (truncated?)";
        bad = 1;
    }
    if (bad) {
        if (warn) fa_warn("tune cache %s ignored: %s (line %d); using the model's choice", path, why, lineno);
        return -1;
    }
    if (found) {
        tmp.source = "cache";
        *c = tmp;
        return 1;
    }
    if (key && other_dev && warn)
        fa_warn("tune cache %s: entries for this job are for other devices, not '%s'; ignored", path, device);
    return 0;
}

int cm_cache_lookup(const char *path, const char *key, const char *device, cm_choice *c, int warn) {
    return cache_read(path, key, device, c, NULL, warn) == 1;
}

/* Reads the machine figures stored by tune (section [machine DEVICE]); returns 1 when found. */
int cm_cache_machine(const char *path, const char *device, cm_machine *m) {
    return cache_machine(path, device, m);
}

static int cache_machine(const char *path, const char *device, cm_machine *m) {
    cm_machine t = *m;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1024], want[256];
    snprintf(want, sizeof want, "[machine %s]", device);
    int hit = 0;
    while (fgets(line, sizeof line, f)) { trim(line); if (!strcmp(line, want)) { hit = 1; break; } }
    fclose(f);
    if (!hit) return 0;
    if (cache_read(path, NULL, device, NULL, &t, 0) < 0) return 0;
    *m = t;
    return 1;
}

static int mkdirs(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return 0;
}

/* Copies the file's sections except `skip1` and `skip2` (whole sections) to out. A file that does
 * not parse (wrong version) is not copied: the new file starts clean. */
static void copy_other_sections(const char *path, FILE *out, const char *skip1, const char *skip2) {
    if (cache_read(path, NULL, "", NULL, NULL, 0) < 0) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024], t[1024];
    int keep = 0;
    while (fgets(line, sizeof line, f)) {
        snprintf(t, sizeof t, "%s", line);
        trim(t);
        if (t[0] == '[') {
            char *e = strchr(t, ']');
            if (e) *e = 0;
            char *s = t + 1;
            trim(s);
            keep = strcmp(s, skip1) && strcmp(s, skip2);
        }
        if (keep) fputs(line, out);
    }
    fclose(f);
}

int cm_cache_store(const char *path, const char *key, const cm_choice *c, const cm_machine *m) {
    if (mkdirs(path)) return fa_seterr("tune cache %s: cannot create its folder", path);
    char tmp[4200], mkey[256], date[32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    snprintf(mkey, sizeof mkey, "machine %s", m->device);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    FILE *f = fopen(tmp, "w");
    if (!f) return fa_seterr("tune cache %s: cannot write %s", path, tmp);
    fprintf(f, "# fa_long tune cache: written by `fa_long tune`, read by every run (README: Tuning)\n");
    fprintf(f, "version = %d\n", CM_CACHE_VERSION);
    copy_other_sections(path, f, key, mkey);
    fprintf(f, "[%s]\n", mkey);
    fprintf(f, "date = %s\nthreads = %d\ncpu_gflops = %.2f\ncpu_eff = %.4f\nmem_gbps = %.2f\n", date,
            m->threads, m->cpu_gflops, m->cpu_eff, m->mem_gbps);
    fprintf(f, "l2_gbps = %.2f\nl3_gbps = %.2f\n", m->l2_gbps, m->l3_gbps);
    fprintf(f, "link_gbps = %.2f\nnet_gbps = %.2f\n", m->link_gbps, m->net_gbps);
    for (int v = 0; v <= 4; v++)
        if (m->gpu_tflops[v] > 0) fprintf(f, "gpu_tflops_v%d = %.2f\n", v, m->gpu_tflops[v]);
    fprintf(f, "[%s]\n", key);
    fprintf(f, "date = %s\n", date);
    if (c->br) fprintf(f, "br = %d\nbc = %d\nthreads = %d\n", c->br, c->bc, c->threads);
    fprintf(f, "chunk = %lld\nwindow = %d\n", (long long)c->chunk, c->window);
    if (m->gpu) fprintf(f, "variant = %d\nblock_rows = %lld\nring = %d\n", c->variant,
                        (long long)c->block_rows, c->ring);
    fprintf(f, "measured_s = %.6f\npredicted_s = %.6f\ncritical = %s\n", c->measured_s,
            isfinite(c->t_total) ? c->t_total : 0.0, c->critical ? c->critical : "compute");
    int bad = ferror(f);
    bad |= fclose(f);
    if (bad || rename(tmp, path)) {
        unlink(tmp);
        return fa_seterr("tune cache %s: write failed", path);
    }
    return 0;
}

/* ---- the run's choice ------------------------------------------------------------------------ */
static void job_of(const fa_job *job, const fa_shape *s, int nranks, int gpu, cm_job *j) {
    memset(j, 0, sizeof *j);
    j->nq = s->Nq; j->nk = s->Nk;
    j->h = (int)s->H; j->hkv = (int)s->Hkv; j->d = (int)s->D;
    j->causal = job->causal;
    j->gpu = gpu;
    j->elem = gpu ? 2 : 4;
    j->nranks = nranks > 0 ? nranks : 1;
    j->budget = job->device_mem;
    j->dtype = gpu ? (int)job->compute : -1;
}

static void decide(const fa_job *job, const fa_shape *s, int nranks, int gpu, cm_choice *out) {
    cm_choice chosen;
    memset(&chosen, 0, sizeof chosen);
    cm_job j;
    job_of(job, s, nranks, gpu, &j);
    cm_machine m;
    memset(&m, 0, sizeof m);
    m.threads = job->threads > 0 ? job->threads : omp_get_max_threads();
    cm_device_name(gpu, m.threads, m.device, sizeof m.device);
    const char *path = cm_cache_path(job->tune_cache);
    char key[512];
    cm_cache_key(m.device, &j, key, sizeof key);
    int have_machine = cache_machine(path, m.device, &m);
    cm_machine_defaults(&m, gpu);
    if (job->tune && !cm_cache_lookup(path, key, m.device, &chosen, 0)) {
        fa_log(1, "fa_long: --tune: no entry for [%s] in %s: tuning first", key, path);
        cm_choice best;
        if (cm_tune_job(&j, &m, 8, 3, job->verbose, &best) == 0 && !cm_cache_store(path, key, &best, &m))
            fa_log(1, "fa_long: --tune: stored in %s", path);
        else
            fa_warn("--tune: tuning failed (%s); the model's choice", fa_errmsg());
    }
    if (cm_cache_lookup(path, key, m.device, &chosen, fa_rank == 0)) {
        if (!chosen.threads) chosen.threads = m.threads;
        if (chosen.chunk > j.nq) chosen.chunk = j.nq;
        if (chosen.br > chosen.chunk) chosen.br = (int)chosen.chunk;
        double measured = chosen.measured_s;
        cm_choice check = chosen;
        int ok = cm_predict(&m, &j, &check);
        if (ok) { check.source = "cache"; check.measured_s = measured; chosen = check; }
        fa_log(2, "fa_long: tune: %s from %s [%s] (measured %.4f s by fa_long tune)%s", "choice",
               path, key, measured, ok ? "" : "; not valid for this job's budget, model instead");
        if (ok) goto print;
        memset(&chosen, 0, sizeof chosen);
    } else {
        fa_log(2, "fa_long: tune: no entry for [%s] in %s: the model's choice (machine figures: %s)",
               key, path, have_machine ? "measured by fa_long tune" : "defaults");
    }
    {
        cm_choice *cand = fa_malloc(sizeof(cm_choice) * 2048, "candidates");
        int n = cm_candidates(&m, &j, cand, 2048);
        if (n > 0) chosen = cand[0];
        else {                              /* nothing valid: the fixed defaults, say so */
            cm_fixed_defaults(&j, m.threads, &chosen);
            cm_predict(&m, &j, &chosen);
            chosen.source = "defaults";
        }
        free(cand);
    }
print:
    if (gpu)
        fa_log(2, "fa_long: tune: %s choice: variant %d, chunk %lld rows, window %d, key blocks %lld "
                  "rows x %d; predicted %.4f s (compute %.4f, paging %.4f, merge exposed %.4f): "
                  "critical resource %s",
               chosen.source, chosen.variant, (long long)chosen.chunk, chosen.window,
               (long long)chosen.block_rows, chosen.ring, chosen.t_total, chosen.t_compute,
               chosen.t_page, chosen.t_merge, chosen.critical);
    else
        fa_log(2, "fa_long: tune: %s choice: tile %dx%d, %d threads, chunk %lld rows, window %d; "
                  "predicted %.4f s (compute %.4f, memory %.4f, merge exposed %.4f): critical "
                  "resource %s",
               chosen.source, chosen.br, chosen.bc, chosen.threads, (long long)chosen.chunk,
               chosen.window, chosen.t_total, chosen.t_compute, chosen.t_memory, chosen.t_merge,
               chosen.critical);
    *out = chosen;
}

/* COLLECTIVE when MPI is up: rank 0 decides (cache, tuning, model), every rank gets its answer,
 * so chunk sizes agree across ranks. */
const cm_choice *cm_run_choice(const fa_job *job, const fa_shape *s, int nranks, int gpu) {
    static cm_choice chosen;
    static int done = 0;
    if (done) return &chosen;
    done = 1;
    int mpi_on = 0;
    MPI_Initialized(&mpi_on);
    if (!mpi_on || fa_rank == 0) decide(job, s, nranks, gpu, &chosen);
    if (mpi_on && fa_nranks > 1) {
        char names[2][16] = {{0}, {0}};
        if (fa_rank == 0) {
            snprintf(names[0], 16, "%s", chosen.critical ? chosen.critical : "");
            snprintf(names[1], 16, "%s", chosen.source ? chosen.source : "");
        }
        MPI_Bcast(&chosen, (int)sizeof chosen, MPI_BYTE, 0, MPI_COMM_WORLD);
        MPI_Bcast(names, (int)sizeof names, MPI_CHAR, 0, MPI_COMM_WORLD);
        static char keep[2][16];
        memcpy(keep, names, sizeof keep);
        chosen.critical = keep[0];
        chosen.source = keep[1];
    }
    return &chosen;
}
