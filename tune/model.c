/* model.c — see model.h. Sections: machine figures | CPU model | GPU model | search.
 *
 * Where each figure comes from:
 *   cpu_gflops   measured: cm_measure_cpu_peak (tune/measure.c), independent FMA chains in
 *                registers on every thread (the loop bench/cpu_bench.c's `peak` reports).
 *                Default 100 GFLOP/s.
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
 *                here); GPU: 361 GB/s NCCL bus bandwidth, a 1 GiB all-reduce on 8 H100s
 *                (bench/NOTES_SCALING.md).
 *   net_latency  CPU 20 us, GPU 30 us per merge (one reduce + one all-reduce): assumed.
 * Overheads (assumed, order of magnitude; the tune bench reports how far predictions land):
 *   CPU: 0.3 us per key tile of a work item, 2 us per work item, 30 us per chunk (parallel
 *   region, state init); exp and softmax bookkeeping 30 flop-equivalents per score.
 *   GPU: 6 us per kernel launch; wave quantization over 132 SMs with 128-row query tiles. */
#include "tune/model.h"
#include "kernels/cuda/flash.h" /* flash_head_dim_instance: the kernels' instances */
#include "kernels/paging.h"
#include "kernels/gpu.h"
#include "base/common.h"
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Compute and merges are two serial resources in a pipeline (chunk c merges while c+1
 * computes): the job takes max(compute + the last merge, the first chunk + all merges). The
 * count of merges in flight bounds how far compute runs ahead; it changes memory, not this
 * throughput bound. */
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
    return c->br >= 1 && c->bc >= 8 && c->threads >= 1 && c->chunk >= 1 && c->merges_in_flight >= 1 &&
           mp <= 4096 && ws <= m->l2_bytes;
}

/* Keys that query rows [r0, r0+nr) span under the job's mask (batch element 0), whole tiles of
 * bc keys, at most Nk: from the first row's first visible key to the last row's last. */
static int64_t tile_keys(const cm_job *j, int64_t r0, int64_t nr, int64_t bc) {
    attn_mask plain = mask_plain(j->nq, j->nk, j->causal);
    const attn_mask *m = j->mask ? j->mask : &plain;
    mask_run a = mask_row(m, 0, r0), e = mask_row(m, 0, r0 + nr - 1);
    int64_t span = e.hi - a.lo;
    if (span <= 0) return 0;
    span = rup(span, bc);
    return span < j->nk ? span : j->nk;
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
            int64_t keys = tile_keys(j, r0 + t0, nr, c->bc);
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
/* The shared memory of a variant's block for head dim d, as the kernels lay it out
 * (kernels/cuda/flash_sm80.cuh and flash_sm90.cuh, shape<D> and layout<D, STAGES>): d runs in the
 * smallest instance D of at least d; Q and K rows are padded to 64 columns (the swizzle's width). */
static int64_t variant_smem(int variant, int d) {
    const int64_t D = flash_head_dim_instance(d) ? flash_head_dim_instance(d) : d;
    const int64_t rl = (D + 63) / 64 * 64;
    if (variant == 1) {                                      /* BM x 64 tiles, 2 stages */
        const int64_t bm = D > 192 ? 64 : 128;
        return bm * rl * 2 + 2 * 64 * rl * 2 + 2 * D * 64 * 2;
    }
    const int64_t bn = D > 128 ? 64 : 128;                   /* 128 x bn tiles */
    const int64_t q = 128 * rl * 2, kv = bn * rl * 2 + D * bn * 2;
    int64_t stages = variant == 2 ? 2 : 3;
    if (stages == 3 && q + 3 * kv + 8 * 10 + 1024 > 227 * 1024) stages = 2;   /* the kernel's pipe_stages */
    return q + stages * kv + 8 * (1 + 3 * stages) + 1024;
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
    pl->slots = c->merges_in_flight;
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
    if (c->variant < 0 || c->variant > 4 || c->chunk < 1 || c->merges_in_flight < 1) return 0;
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
        double pairs = 0;
        for (int64_t t = 0; t < n; t += GPU_BM) {              /* whole 128-row tiles */
            int64_t nr = n - t < GPU_BM ? n - t : GPU_BM;
            pairs += (double)nr * (double)tile_keys(j, r0 + t, nr, 1);
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

/* Merges in flight: 3 (the old default) unless the merge needs more to hide (up to 8). */
static int pick_merges_in_flight(const cm_machine *m, const cm_job *j, cm_choice *c) {
    c->merges_in_flight = 3;
    if (!cm_predict(m, j, c)) return 0;
    while (c->merges_in_flight < 8 && c->t_merge > 1.5 * (m->net_latency_s + 1e-9) && j->nranks > 1) {
        /* (with merge_exposed's bound more merges in flight never predict faster: 3 stays) */
        cm_choice w = *c;
        w.merges_in_flight++;
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
                    if (n < max && pick_merges_in_flight(m, j, &c)) out[n++] = c;
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
                if (!pick_merges_in_flight(m, j, &c)) continue;
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
    c->merges_in_flight = 3;
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
