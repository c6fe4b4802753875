/* tune.c — `fa_long tune`: measure the machine figures, rank the cost model's candidates
 * (tune/model.h), time the best few on the real engine (tune/tuner.h), and remember the winner in
 * the tune cache (tune/cache.h) for every later run of the same (device, D, dtype, causal, GQA
 * ratio). This file parses the options and prints; the measuring and timing live in tune/.
 *
 *   fa_long tune [-n N] [--heads H] [--kv-heads H] [-d D] [--causal] [--backend cpu|cuda]
 *                [--threads T] [--top K] [--reps R] [--tune-cache FILE] [--no-store] [--verbose]
 *   fa_long tune ... --sweep        also time every configuration of the sweep grid (bench/tune.sh):
 *                                   br {2..64} x bc {64,128,256} x chunk {512,1K,2K}, or with
 *                                   --small-grid br {4..32} x bc {64,128,256} x chunk 1K
 *   fa_long tune ... --predict      the model's ranking only, nothing timed or stored
 *
 * Output: `#`-headed lines, then a table: a `# kind br bc threads ...` header (cm_print_header)
 * and one row per timed configuration (kind default|tuned|sweep|cand|...), as nccl-tests prints.
 * Without a GPU, --backend cuda says so and exits 2 (nothing is stored). */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "tune/cache.h"
#include "tune/model.h"
#include "tune/tuner.h"
#include "kernels/attn.h"
#include "kernels/gpu.h"
#include "runner/cli.h"
#include "runner/plan.h"
#include "base/common.h"

/* the GPU sweep's order: one plan's configurations in a row */
static int by_plan(const void *a, const void *b) {
    const cm_choice *x = a, *y = b;
    int64_t k[2][5] = {{x->chunk, x->block_rows, x->ring, x->merges_in_flight, x->variant},
                       {y->chunk, y->block_rows, y->ring, y->merges_in_flight, y->variant}};
    for (int i = 0; i < 5; i++)
        if (k[0][i] != k[1][i]) return (k[0][i] > k[1][i]) - (k[0][i] < k[1][i]);
    return 0;
}

/* ---- the subcommand -------------------------------------------------------------------------- */
static void usage(void) {
    printf("usage: fa_long tune [-n N] [--nq N --nk N] [--heads H] [--kv-heads H] [-d D] [--causal]\n"
           "                    [--backend cpu|cuda] [--dtype T] [--compute bf16|fp16] [--threads T]\n"
           "                    [--ranks P]\n"
           "                    [--device-mem SIZE] [--top K] [--reps R] [--tune-cache FILE]\n"
           "                    [--no-store] [--sweep [--small-grid]] [--predict] [--remeasure] [--verbose]\n"
           "                    [--ranks-per-node N]\n"
           "Measures the machine, times the cost model's best K configurations (default 8) and the\n"
           "fixed defaults on the real engine, and stores the fastest in the tune cache (default\n"
           "$FA_TUNE_CACHE or ~/.cache/fa_long/tune.txt) for this device, D, dtype, causal, GQA.\n"
           "--sweep also times every configuration of the sweep grid (bench/tune.sh).\n"
           "--dtype T: the type the engine computes in, the cache key's dtype: float32 on the CPU\n"
           "(its only one: float16 and bfloat16 inputs are converted to float32 as they are read,\n"
           "so its entry serves them all), bfloat16 (default) or float16 on a GPU (as --compute).\n"
           "A run without an entry for its dtype uses another dtype's entry and says so.\n"
           "--ranks-per-node N: tune for the share of this node's CPUs a rank gets when a later\n"
           "mpirun runs N ranks a node (its threads; the run finds the entry). A run without an\n"
           "entry for its share uses the entry of the nearest share and says so.\n"
           "Output: '#' lines, then one row per timed configuration under a '# kind br bc ...'\n"
           "header (as nccl-tests prints), the choice last.\n");
}

int cmd_tune(int argc, char **argv) {
    static const struct option opts[] = {
        {"n", required_argument, 0, 'n'}, {"nq", required_argument, 0, 'Q'},
        {"nk", required_argument, 0, 'K'}, {"heads", required_argument, 0, 'H'},
        {"kv-heads", required_argument, 0, 'G'}, {"d", required_argument, 0, 'd'},
        {"causal", no_argument, 0, 'c'}, {"backend", required_argument, 0, 'b'},
        {"compute", required_argument, 0, 'C'}, {"threads", required_argument, 0, 't'},
        {"ranks", required_argument, 0, 'P'}, {"device-mem", required_argument, 0, 'M'},
        {"top", required_argument, 0, 'k'}, {"reps", required_argument, 0, 'r'},
        {"tune-cache", required_argument, 0, 'f'}, {"no-store", no_argument, 0, 'x'},
        {"sweep", no_argument, 0, 's'}, {"predict", no_argument, 0, 'p'},
        {"small-grid", no_argument, 0, 'g'}, {"remeasure", no_argument, 0, 'R'},
        {"chunk", required_argument, 0, 'u'}, {"variant", required_argument, 0, 'V'},
        {"kernel-tflops", required_argument, 0, 'T'}, {"link-gbps", required_argument, 0, 'L'},
        {"net-gbps", required_argument, 0, 'N'}, {"net-latency-us", required_argument, 0, 'Y'},
        {"ranks-per-node", required_argument, 0, 'z'}, {"dtype", required_argument, 0, 'D'},
        {"verbose", no_argument, 0, 'v'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    cm_job j = {.nq = 4096, .nk = 4096, .h = 8, .hkv = 8, .d = 128, .elem = 4, .nranks = 1,
                .dtype = -1};
    int gpu = 0, threads = 0, top = 8, reps = 3, store = 1, sweep = 0, predict = 0, verbose = 0;
    int small_grid = 0, remeasure = 0, per_node = 0, ranks_set = 0;
    fa_dtype dtype = FA_F32;
    int dtype_set = 0;
    int64_t given_chunk = 0;
    int given_variant = 0;
    double kernel_tflops = 0, link_gbps = 0, net_gbps = 0, net_lat_us = 0;
    const char *cache = NULL;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":n:d:cvh", opts, NULL)) != -1) {
        int64_t v = 0;
        if (optarg && strchr("nQKHGdtPMkruz", c)) {
            v = fa_parse_size(optarg);
            if (v < 1) { fa_seterr("tune: option '%s' needs a positive size", argv[optind - 1]); return fa_report_error(); }
        }
        switch (c) {
        case 'n': j.nq = j.nk = v; break;
        case 'Q': j.nq = v; break;
        case 'K': j.nk = v; break;
        case 'H': j.h = (int)v; break;
        case 'G': j.hkv = (int)v; break;
        case 'd': j.d = (int)v; break;
        case 'c': j.causal = 1; break;
        case 'b':
            if (!strcasecmp(optarg, "cuda") || !strcasecmp(optarg, "gpu")) gpu = 1;
            else if (!strcasecmp(optarg, "cpu")) gpu = 0;
            else { fa_seterr("tune: --backend '%s' is not cpu or cuda", optarg); return fa_report_error(); }
            break;
        case 'C': j.dtype = !strcasecmp(optarg, "fp16") || !strcasecmp(optarg, "float16"); break;
        case 'D':
            if (fa_dtype_parse(optarg, &dtype) || dtype == FA_F64) {
                fa_seterr("tune: --dtype '%s' is not float32, float16 or bfloat16", optarg);
                return fa_report_error();
            }
            dtype_set = 1;
            break;
        case 't': threads = (int)v; break;
        case 'P': j.nranks = (int)v; ranks_set = 1; break;
        case 'z': per_node = (int)v; break;
        case 'M': j.budget = v; break;
        case 'k': top = (int)v; break;
        case 'r': reps = (int)v; break;
        case 'f': cache = optarg; break;
        case 'x': store = 0; break;
        case 's': sweep = 1; break;
        case 'g': small_grid = 1; break;
        case 'R': remeasure = 1; break;
        case 'u': given_chunk = v; break;
        case 'V': given_variant = atoi(optarg); break;
        case 'T': kernel_tflops = atof(optarg); break;
        case 'L': link_gbps = atof(optarg); break;
        case 'N': net_gbps = atof(optarg); break;
        case 'Y': net_lat_us = atof(optarg); break;
        case 'p': predict = 1; store = 0; break;
        case 'v': verbose = 1; break;
        case 'h': usage(); return 0;
        case ':': fa_seterr("tune: option %s needs a value", argv[optind - 1]); return fa_report_error();
        default:
            cli_unknown_option("tune: ", argv[optind - 1], opts, "fa_long tune --help");
            return fa_report_error();
        }
    }
    if (j.h % j.hkv) { fa_seterr("tune: --heads must be a multiple of --kv-heads"); return fa_report_error(); }
    if (j.d > FA_MAX_HEAD_DIM) { fa_seterr("tune: -d above %d", FA_MAX_HEAD_DIM); return fa_report_error(); }
    if (per_node > 0 && threads <= 0 && !gpu) {
        /* the share a run's rank gets when N ranks share this node (base/common.c's rule: the
         * node's CPUs split evenly, OMP_NUM_THREADS unset) */
        threads = fa_node_cpus() / per_node;
        if (threads < 1) threads = 1;
        omp_set_num_threads(threads);
    }
    if (per_node > 0 && !ranks_set) j.nranks = per_node;
    j.gpu = gpu;
    j.threads = threads;
    fa_verbosity = verbose ? 2 : 1;
    /* the key's dtype: the compute type (--dtype; on a GPU also --compute) */
    if (gpu && dtype_set && dtype == FA_F32) {
        fa_seterr("tune --backend cuda: --dtype float32: the CUDA engine computes in bfloat16 or "
                  "float16 (--dtype bfloat16|float16)");
        return fa_report_error();
    }
    if (gpu) { j.elem = 2; if (dtype_set) j.dtype = dtype == FA_F16; else if (j.dtype < 0) j.dtype = 0; }
    else j.dtype = -1;
    if (!gpu && dtype_set && dtype != FA_F32 && fa_rank == 0)
        printf("# --dtype %s: the CPU engine computes in float32 whatever the inputs' type (they "
               "are converted as they are read): tuning its dtype=float32 entry, which runs of %s "
               "inputs use\n", fa_dtype_name(dtype), fa_dtype_name(dtype));
    if (fa_rank != 0) return 0;                       /* one process measures */
    if (predict) {                  /* the model alone, default or given figures; no device */
        cm_machine m;
        memset(&m, 0, sizeof m);
        m.threads = threads > 0 ? threads : omp_get_max_threads();
        snprintf(m.device, sizeof m.device, "%s", gpu ? "gpu (model)" : "");
        if (kernel_tflops > 0) m.gpu_tflops[given_variant] = kernel_tflops;
        m.link_gbps = link_gbps;
        m.net_gbps = net_gbps;
        m.net_latency_s = net_lat_us * 1e-6;
        if (!gpu) cm_device_name(0, m.threads, m.device, sizeof m.device);
        cm_machine_defaults(&m, gpu);
        char key[512];
        cm_cache_key(m.device, &j, key, sizeof key);
        printf("# fa_long tune: %s\n# job: nq=%lld nk=%lld H=%d Hkv=%d D=%d causal=%d ranks=%d "
               "(model only: kernel %.1f TFLOP/s (0: the model's default), link %.1f GB/s, "
               "network %.1f GB/s)\n", key,
               (long long)j.nq, (long long)j.nk, j.h, j.hkv, j.d, j.causal, j.nranks,
               gpu ? m.gpu_tflops[given_variant] : m.cpu_gflops / 1e3,
               m.link_gbps, m.net_gbps);
        cm_print_header();
        if (given_chunk > 0) {
            cm_choice c = {.br = gpu ? 0 : 16, .bc = gpu ? 0 : 128, .threads = m.threads,
                           .variant = given_variant, .chunk = given_chunk < j.nq ? given_chunk : j.nq,
                           .merges_in_flight = 3};
            int ok = cm_predict(&m, &j, &c);
            cm_print_result(ok ? "given" : "invalid", &c);
            return 0;
        }
        cm_choice *cand = fa_malloc(sizeof(cm_choice) * 2048, "candidates");
        int n = cm_candidates(&m, &j, cand, 2048);
        for (int i = 0; i < n && i < top; i++) cm_print_result("model", &cand[i]);
        free(cand);
        return 0;
    }
    if (gpu && gpu_count() == 0) {
        fa_seterr("tune --backend cuda: no CUDA device visible%s",
#ifdef FA_HAVE_CUDA
                  ""
#else
                  " (built without CUDA)"
#endif
        );
        return fa_report_error();
    }
    cm_machine m;
    memset(&m, 0, sizeof m);
    m.threads = threads > 0 ? threads : omp_get_max_threads();
    cm_device_name(gpu, m.threads, m.device, sizeof m.device);
    char path[4096];
    plan_env env;                       /* the environment, read where the planner reads it */
    if (plan_env_read(&env)) return fa_report_error();
    plan_tune_cache_path(cache, &env, path, sizeof path);
    /* the machine figures are measured once and kept in the cache ([machine DEVICE]);
     * --remeasure measures them again */
    int have = !remeasure && !gpu && cm_cache_machine(path, m.device, &m) && m.cpu_gflops > 0;
    cm_machine_defaults(&m, gpu);
    if (!have) m.cpu_gflops = 0;                      /* measure, not the default */
    else printf("# machine figures from %s (measured by an earlier fa_long tune; --remeasure)\n", path);
    char key[512];
    cm_cache_key(m.device, &j, key, sizeof key);
    printf("# fa_long tune: %s\n# job: nq=%lld nk=%lld H=%d Hkv=%d D=%d causal=%d ranks=%d\n", key,
           (long long)j.nq, (long long)j.nk, j.h, j.hkv, j.d, j.causal, j.nranks);
    cm_choice best;
    cm_print_header();
    if (cm_tune_job(&j, &m, top, reps, 1, &best)) return fa_report_error();
    cm_print_result("tuned", &best);
    if (sweep && !gpu) {
        cm_choice swept[64];
        int nsweep = 0;
        /* full grid: 6 x 3 x 3 = 54 configurations; small (long jobs): 4 x 3 x 1 */
        static const int brs[] = {2, 4, 8, 16, 32, 64}, brs_small[] = {4, 8, 16, 32};
        static const int bcs[] = {64, 128, 256};
        static const int64_t chunks[] = {512, 1024, 2048}, chunks_small[] = {1024};
        const int *br_l = small_grid ? brs_small : brs;
        const int64_t *ch_l = small_grid ? chunks_small : chunks;
        int nbr = small_grid ? 4 : 6, nch = small_grid ? 1 : 3;
        for (int a = 0; a < nbr; a++)
            for (size_t b = 0; b < sizeof bcs / sizeof *bcs; b++)
                for (int k = 0; k < nch; k++) {
                    cm_choice s = {.br = br_l[a], .bc = bcs[b], .threads = m.threads,
                                   .chunk = ch_l[k] < j.nq ? ch_l[k] : j.nq, .merges_in_flight = 3};
                    if (!cm_predict(&m, &j, &s)) continue;
                    s.measured_s = cm_time_cpu(&j, &s, reps);
                    cm_print_result("sweep", &s);
                    if (nsweep < 64) swept[nsweep++] = s;
                }
        /* the tuned configuration, the sweep's best and the defaults once more, interleaved
         * (A B C A B C ...) so that a slow spell of a shared machine hits all three alike */
        cm_choice fin[3];
        fin[0] = best;
        fin[1] = best;
        cm_fixed_defaults(&j, m.threads, &fin[2]);
        cm_predict(&m, &j, &fin[2]);
        for (int i = 0; i < nsweep; i++)
            if (swept[i].measured_s < fin[1].measured_s) fin[1] = swept[i];
        double t[3] = {INFINITY, INFINITY, INFINITY};
        for (int r = 0; r < 2 * reps; r++)
            for (int x = 0; x < 3; x++) {
                double v = cm_time_cpu(&j, &fin[x], 1);
                if (v < t[x]) t[x] = v;
            }
        const char *names[3] = {"tuned_again", "best_again", "default_again"};
        for (int x = 0; x < 3; x++) {
            fin[x].measured_s = t[x];
            cm_print_result(names[x], &fin[x]);
        }
    }
    if (sweep && gpu) {             /* every candidate of the model's GPU space */
        cm_choice *cand = fa_malloc(sizeof(cm_choice) * 2048, "candidates");
        int n = cm_candidates(&m, &j, cand, 2048);
        /* one plan's configurations in a row (cm_gpu_time_paged keeps a paged plan's engine, keys
         * loaded, for the next call of the same plan and variant) */
        qsort(cand, (size_t)n, sizeof *cand, by_plan);
        cm_choice fin[3];
        fin[0] = best;
        fin[1] = best;
        for (int i = 0; i < n; i++) {
            cand[i].measured_s = cm_time_gpu(&j, &m, &cand[i], reps, 1);
            if (cand[i].measured_s > 0) cm_print_result("sweep", &cand[i]);
            if (cand[i].measured_s > 0 && cand[i].measured_s < fin[1].measured_s) fin[1] = cand[i];
        }
        free(cand);
        /* the tuned configuration, the sweep's best and the defaults timed again, interleaved, each
         * 4x as long as a sweep timing: the comparison the table reports */
        cm_fixed_defaults(&j, m.threads, &fin[2]);
        cm_predict(&m, &j, &fin[2]);
        double t[3] = {INFINITY, INFINITY, INFINITY};
        for (int r = 0; r < 2; r++)
            for (int x = 0; x < 3; x++) {
                double v = cm_time_gpu(&j, &m, &fin[x], reps * 2, 0);
                if (v > 0 && v < t[x]) t[x] = v;
            }
        const char *names[3] = {"tuned_again", "best_again", "default_again"};
        for (int x = 0; x < 3; x++) {
            fin[x].measured_s = t[x];
            cm_print_result(names[x], &fin[x]);
        }
    }
    printf("# choice: %s -> tile %dx%d, chunk %lld, %d merges in flight, variant %d: measured %.4f s, "
           "predicted %.4f s, critical %s\n", key, best.br, best.bc, (long long)best.chunk,
           best.merges_in_flight, best.variant, best.measured_s, best.t_total, best.critical);
    if (store) {
        if (cm_cache_store(path, key, &best, &m)) return fa_report_error();
        printf("# stored in %s\n", path);
    }
    return 0;
}
