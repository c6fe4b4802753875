/* cli.c — run options (getopt_long), --help and --version, and the "did you mean" of every
 * command's unknown options. */
#include <getopt.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "runner/cli.h"
#include "base/common.h"
#include "kernels/gpu.h"

void cli_print_version(void) {
    if (fa_rank) return;
    printf("fa_long %s\n", FA_VERSION);
#ifdef FA_HAVE_CUDA
    printf("  CUDA: yes (%d device%s visible)\n", gpu_count(), gpu_count() == 1 ? "" : "s");
#else
    printf("  CUDA: no (built without nvcc)\n");
#endif
#ifdef FA_HAVE_NCCL
    printf("  NCCL: yes\n");
#else
    printf("  NCCL: no\n");
#endif
    printf("  HDF5: %s\n", h5io_parallel() ? "parallel (MPI-IO, collective hyperslabs)"
                                            : "serial (rank 0 writes the output)");
#ifdef FA_HAVE_CBLAS
    printf("  CPU tile products: OpenBLAS\n");
#else
    printf("  CPU tile products: built-in\n");
#endif
}

int cli_unknown_option(const char *who, const char *arg, const struct option *opts,
                       const char *help) {
    const char *names[128], *hit = NULL;
    int n = 0;
    for (; opts[n].name && n < 128; n++) names[n] = opts[n].name;
    if (!strncmp(arg, "--", 2) && arg[2]) {
        const char *w = arg + 2, *eq = strchr(w, '=');
        hit = fa_closest(w, eq ? (size_t)(eq - w) : strlen(w), names, n);
    }
    if (hit) return fa_seterr("%sunknown option '%s' (did you mean --%s? see %s)", who, arg, hit, help);
    return fa_seterr("%sunknown option '%s' (see %s)", who, arg, help);
}

/* --help: the commands and the run options; `fa_long run --help`: the run options alone. */
static void usage(int run_command) {
    if (fa_rank) return;
    if (run_command)
        printf("usage: fa_long run --input IN.h5 --output OUT.h5 [options]\n"
               "       (the same as fa_long --input IN.h5 --output OUT.h5 [options])\n");
    else
        printf("usage: fa_long [run] --input IN.h5 --output OUT.h5 [options]\n"
               "       fa_long gen --output IN.h5 [shape options]     (fa_long gen --help)\n"
               "       fa_long check --input IN.h5 --output OUT.h5     (fa_long check --help)\n"
               "       fa_long tune [job shape]                        (fa_long tune --help)\n");
    printf(
        "\n"
        "Exact attention o = softmax(q k^T * scale) v from HDF5 datasets q [B,Nq,H,D] and\n"
        "k, v [B,Nk,Hkv,D] to o [B,Nq,H,D] (and lse [B,H,Nq]), across the ranks of mpirun.\n"
        "\n"
        "  -i, --input FILE        input HDF5 file with datasets q, k, v\n"
        "  -o, --output FILE       output HDF5 file (written under a temporary name, renamed at the end)\n"
        "      --q PATH, --k PATH, --v PATH\n"
        "                          HDF5 paths of q, k, v in the input (default q, k, v; e.g.\n"
        "                          /layer3/q or layer3/q; links are followed)\n"
        "      --out-group G       write o and lse in group G of the output (created with its\n"
        "                          parents, e.g. layers/3; default: the root)\n"
        "      --layout L          q, k, v in the file: bnhd [B,N,H,D] or bhnd [B,H,N,D], torch's\n"
        "                          (default: their attribute 'layout', else the root's, else bnhd)\n"
        "      --out-layout L      o in the output: bnhd or bhnd (default: q's layout; lse is\n"
        "                          [B,H,Nq] either way)\n"
        "  -c, --causal            causal mask, aligned bottom-right: query i sees key j <= i + Nk - Nq\n"
        "      --window-size L,R   sliding window (flash-attn's): query i, at key position\n"
        "                          p = i + Nk - Nq, sees keys p-L <= j <= p+R; -1 unbounded;\n"
        "                          --causal is -1,0 (with --causal, R must be 0)\n"
        "      --softcap C         scores s become C*tanh(s/C) before the softmax (Gemma 2)\n"
        "      --alibi             ALiBi: -slope_h*|p - j| added to the scores; slopes from the\n"
        "                          input's alibi_slopes [H], else the standard ones\n"
        "                          (packed documents: datasets cu_seqlens_q/_k or cu_seqlens in\n"
        "                          the input, see README: Masks)\n"
        "      --no-documents      leave the input's cu_seqlens tables out: one sequence a row\n"
        "      --scale S           softmax scale (default 1/sqrt(D))\n"
        "      --lse               also write lse [B,H,Nq] (float32, natural log)\n"
        "      --chunk ROWS        query rows per pipeline chunk (K/M suffixes; default: the tune cache's\n"
        "                          or the cost model's choice, --verbose says which; with --resume,\n"
        "                          the chunk of the run being resumed)\n"
        "      --merges-in-flight N  chunks whose cross-rank merge may be in flight (default: the\n"
        "                          tune cache's or the cost model's choice; 3 with --mode taylor)\n"
        "      --backend B         cpu, cuda or auto (default auto: cuda when every rank has a GPU)\n"
        "      --compute T         GPU compute type: bf16 (default) or fp16\n"
        "      --device-mem SIZE   GPU memory this rank may use (e.g. 10G); keys and values past it\n"
        "                          stay in pinned host memory and stream in blocks (paging)\n"
        "      --kernel-tflops X   paging model: the kernel's rate (default 500, the H100 kernel's)\n"
        "      --link-gbps X       paging model: host link bandwidth (default: measured at start)\n"
        "      --no-nccl           merge across GPUs through MPI even where NCCL could\n"
        "      --threads N         OpenMP threads per rank (CPU engine, host side of the GPU engine);\n"
        "                          default OMP_NUM_THREADS, else the rank's share of its node's CPUs\n"
        "      --tile BRxBC        CPU engine tile (query rows x keys), e.g. 64x256 (default: the tune\n"
        "                          cache's or the cost model's choice; --mode taylor uses BR, default 64)\n"
        "      --tune              when the tune cache has no entry for this job, measure its best\n"
        "                          tiles/chunk first (as fa_long tune does) and cache them\n"
        "      --tune-cache FILE   tune cache (default $FA_TUNE_CACHE or ~/.cache/fa_long/tune.txt);\n"
        "                          without an entry the cost model chooses (see README: Tuning)\n"
        "      --out-dtype T       element type of o: float32, float16, bfloat16 (default: q's;\n"
        "                          float32 for float64 q)\n"
        "      --shard L           key layout across ranks: contiguous, zigzag, striped\n"
        "                          (default: contiguous; causal: striped on CPUs, zigzag on GPUs)\n"
        "      --stripe N          keys per stripe for --shard striped (default: automatic)\n"
        "      --allow-nonfinite   accept NaN/Inf in the inputs (refused by default)\n"
        "      --mode M            exact (default) or taylor: first-order Taylor linear attention with\n"
        "                          keys centred on their mean (ViTALiTy), O(N D^2), approximate\n"
        "      --compare           also run the other mode; record the relative error per head\n"
        "      --report FILE       write a JSON summary (config, phase times, TFLOP/s, bytes, balance)\n"
        "      --check ROWS        after the run, recompute ROWS sampled rows (or 'all') in fp64\n"
        "      --resume            continue from the partial output an interrupted run left\n"
        "                          (.OUT.partial); a fresh start when there is none; nothing\n"
        "                          to do when OUT is already complete\n"
        "  -f, --force             replace an existing output file\n"
        "  -q, --quiet             no progress line and no summary\n"
        "  -v, --verbose           also the plan (each setting and where it came from), the\n"
        "                          threads a rank, and every rank's read, compute, merge wait and\n"
        "                          write seconds as one '#'-headed table (one row per rank)\n"
        "  -h, --help              this help\n"
        "  -V, --version           version and build features\n");
}

enum { OPT_OLD_WINDOW = 255, OPT_SCALE = 256, OPT_LSE, OPT_CHUNK, OPT_WINDOW, OPT_BACKEND, OPT_COMPUTE, OPT_THREADS,
       OPT_TILE, OPT_OUT_DTYPE, OPT_SHARD, OPT_STRIPE, OPT_NONFINITE, OPT_MODE, OPT_COMPARE, OPT_REPORT, OPT_CHECK, OPT_RESUME, OPT_DEVMEM, OPT_NONCCL, OPT_KTFLOPS,
       OPT_LINK, OPT_TUNE, OPT_TUNE_CACHE, OPT_DQ, OPT_DK, OPT_DV, OPT_OUT_GROUP, OPT_WINDOW_SIZE,
       OPT_SOFTCAP, OPT_ALIBI, OPT_NO_DOCS };

/* --window-size L,R: two integers >= -1 */
static int parse_window(const char *s, fa_job *job) {
    char *end;
    long long l = strtoll(s, &end, 10), r = 0;
    int ok = end != s && *end == ',';
    if (ok) {
        const char *b = end + 1;
        r = strtoll(b, &end, 10);
        ok = end != b && !*end;
    }
    if (!ok) return fa_seterr("option --window-size: '%s' is not LEFT,RIGHT (two integers, -1 "
                              "for unbounded, e.g. 4096,0)", s);
    if (l < -1 || r < -1)
        return fa_seterr("option --window-size: '%s': a side is %lld; expected >= 0, or -1 for "
                         "unbounded", s, l < -1 ? l : r);
    job->win_left = l;
    job->win_right = r;
    job->window_size_set = 1;
    return 0;
}

enum { OPT_LAYOUT = 400, OPT_OUT_LAYOUT };          /* --layout, --out-layout (issue 19) */

int cli_parse_layout(const char *who, const char *opt, const char *s, fa_layout *out) {
    if (fa_layout_parse(s, out) == 0) return 0;
    return fa_seterr("%soption %s: '%s' is not bnhd ([B, N, heads, D]) or bhnd ([B, heads, N, D], "
                     "torch's)", who, opt, s);
}

static int parse_int(const char *opt, const char *s, int64_t lo, int64_t *out) {
    int64_t v = fa_parse_size(s);
    if (v < lo) return fa_seterr("option %s: '%s' is not a size >= %lld", opt, s, (long long)lo);
    *out = v;
    return 0;
}

int cli_parse_run(int argc, char **argv, fa_job *job) {
    static const struct option opts[] = {
        {"input", required_argument, 0, 'i'},   {"output", required_argument, 0, 'o'},
        {"causal", no_argument, 0, 'c'},        {"scale", required_argument, 0, OPT_SCALE},
        {"lse", no_argument, 0, OPT_LSE},       {"chunk", required_argument, 0, OPT_CHUNK},
        {"merges-in-flight", required_argument, 0, OPT_WINDOW},
        {"window", required_argument, 0, OPT_OLD_WINDOW},
        {"backend", required_argument, 0, OPT_BACKEND},
        {"compute", required_argument, 0, OPT_COMPUTE},
        {"threads", required_argument, 0, OPT_THREADS},
        {"tile", required_argument, 0, OPT_TILE},
        {"out-dtype", required_argument, 0, OPT_OUT_DTYPE},
        {"shard", required_argument, 0, OPT_SHARD},
        {"stripe", required_argument, 0, OPT_STRIPE},
        {"allow-nonfinite", no_argument, 0, OPT_NONFINITE},
        {"mode", required_argument, 0, OPT_MODE},
        {"compare", no_argument, 0, OPT_COMPARE},
        {"report", required_argument, 0, OPT_REPORT},
        {"check", required_argument, 0, OPT_CHECK},
        {"resume", no_argument, 0, OPT_RESUME},
        {"device-mem", required_argument, 0, OPT_DEVMEM},
        {"no-nccl", no_argument, 0, OPT_NONCCL},
        {"kernel-tflops", required_argument, 0, OPT_KTFLOPS},
        {"link-gbps", required_argument, 0, OPT_LINK},
        {"tune", no_argument, 0, OPT_TUNE},
        {"tune-cache", required_argument, 0, OPT_TUNE_CACHE},
        {"q", required_argument, 0, OPT_DQ},    {"k", required_argument, 0, OPT_DK},
        {"v", required_argument, 0, OPT_DV},
        {"out-group", required_argument, 0, OPT_OUT_GROUP},
        {"window-size", required_argument, 0, OPT_WINDOW_SIZE},
        {"softcap", required_argument, 0, OPT_SOFTCAP},
        {"alibi", no_argument, 0, OPT_ALIBI},
        {"no-documents", no_argument, 0, OPT_NO_DOCS},
        {"layout", required_argument, 0, OPT_LAYOUT},
        {"out-layout", required_argument, 0, OPT_OUT_LAYOUT},
        {"force", no_argument, 0, 'f'},         {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},       {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},       {0, 0, 0, 0}};
    /* `fa_long run ...`: main passes the words from "run" on (argv[0] is "run", not the
     * program's path) */
    const int run_command = argc > 0 && !strcmp(argv[0], "run");
    memset(job, 0, sizeof *job);
    job->merges_in_flight = 3;
    opterr = 0;
    optind = 1;
    int c;
    int64_t v = 0;
    while ((c = getopt_long(argc, argv, ":i:o:cfqvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'i': job->input = optarg; break;
        case 'o': job->output = optarg; break;
        case 'c': job->causal = 1; break;
        case 'f': job->force = 1; break;
        case 'q': job->quiet = 1; break;
        case 'v': job->verbose = 1; break;
        case 'h': usage(run_command); return 1;
        case 'V': cli_print_version(); return 1;
        case OPT_SCALE: {
            char *end;
            job->scale = strtod(optarg, &end);
            if (*end || !(job->scale > 0) || !isfinite(job->scale))
                return fa_seterr("option --scale: '%s' is not a positive number", optarg);
            break;
        }
        case OPT_LSE: job->lse = 1; break;
        case OPT_CHUNK: if (parse_int("--chunk", optarg, 1, &job->chunk)) return -1; break;
        case OPT_OLD_WINDOW:   /* not the mask: refused, so no job runs with the wrong meaning */
            return fa_seterr("option --window was renamed --merges-in-flight (chunks whose merge "
                             "may be in flight); a sliding-window mask will be --window-size");
        case OPT_WINDOW:
            if (parse_int("--merges-in-flight", optarg, 1, &v)) return -1;
            job->merges_in_flight = (int)(v > 64 ? 64 : v);
            job->merges_in_flight_set = 1;
            break;
        case OPT_BACKEND:
            if (!strcasecmp(optarg, "cpu")) job->backend = BACKEND_CPU;
            else if (!strcasecmp(optarg, "cuda") || !strcasecmp(optarg, "gpu")) job->backend = BACKEND_CUDA;
            else if (!strcasecmp(optarg, "auto")) job->backend = BACKEND_AUTO;
            else return fa_seterr("option --backend: '%s' is not cpu, cuda or auto", optarg);
            break;
        case OPT_COMPUTE:
            job->compute_set = 1;
            if (!strcasecmp(optarg, "bf16") || !strcasecmp(optarg, "bfloat16")) job->compute = FA_COMPUTE_BF16;
            else if (!strcasecmp(optarg, "fp16") || !strcasecmp(optarg, "float16") || !strcasecmp(optarg, "f16"))
                job->compute = FA_COMPUTE_FP16;
            else return fa_seterr("option --compute: '%s' is not bf16 or fp16", optarg);
            break;
        case OPT_THREADS:
            if (parse_int("--threads", optarg, 1, &v)) return -1;
            job->threads = (int)v;
            break;
        case OPT_TILE: {
            int br, bc;
            char x;
            if (sscanf(optarg, "%d%c%d", &br, &x, &bc) != 3 || (x != 'x' && x != 'X') || br < 1 || bc < 1)
                return fa_seterr("option --tile: '%s' is not ROWSxKEYS (e.g. 64x256)", optarg);
            job->br = br;
            job->bc = bc;
            break;
        }
        case OPT_OUT_DTYPE:
            if (fa_dtype_parse(optarg, &job->out_dtype) || job->out_dtype == FA_F64)
                return fa_seterr("option --out-dtype: '%s' is not float32, float16 or bfloat16", optarg);
            job->out_dtype_set = 1;
            break;
        case OPT_SHARD:
            if (shard_layout_parse(optarg, &job->shard))
                return fa_seterr("option --shard: '%s' is not contiguous, zigzag or striped", optarg);
            job->shard_set = 1;
            break;
        case OPT_STRIPE: if (parse_int("--stripe", optarg, 1, &job->stripe)) return -1; break;
        case OPT_NONFINITE: job->allow_nonfinite = 1; break;
        case OPT_MODE:
            if (!strcasecmp(optarg, "exact")) job->mode = MODE_EXACT;
            else if (!strcasecmp(optarg, "taylor")) job->mode = MODE_TAYLOR;
            else return fa_seterr("option --mode: '%s' is not exact or taylor", optarg);
            break;
        case OPT_COMPARE: job->compare = 1; break;
        case OPT_REPORT: job->report = optarg; break;
        case OPT_RESUME: job->resume = 1; break;
        case OPT_DEVMEM: if (parse_int("--device-mem", optarg, 1, &job->device_mem)) return -1; break;
        case OPT_NONCCL: job->no_nccl = 1; break;
        case OPT_TUNE: job->tune = 1; break;
        case OPT_TUNE_CACHE: job->tune_cache = optarg; break;
        case OPT_DQ: case OPT_DK: case OPT_DV:
            if (!*optarg || !strcmp(optarg, "/"))
                return fa_seterr("option --%s: '%s' is not a dataset path (e.g. /layer3/%s)",
                                 c == OPT_DQ ? "q" : c == OPT_DK ? "k" : "v", optarg,
                                 c == OPT_DQ ? "q" : c == OPT_DK ? "k" : "v");
            job->dset[c - OPT_DQ] = optarg;
            break;
        case OPT_OUT_GROUP: job->out_group = optarg; break;
        case OPT_WINDOW_SIZE: if (parse_window(optarg, job)) return -1; break;
        case OPT_SOFTCAP: {
            char *end;
            double x = strtod(optarg, &end);
            if (end == optarg || *end || !(x > 0) || !isfinite(x))
                return fa_seterr("option --softcap: '%s' is not a number > 0", optarg);
            job->softcap = x;
            break;
        }
        case OPT_ALIBI: job->alibi = 1; break;
        case OPT_NO_DOCS: job->no_documents = 1; break;
        case OPT_LAYOUT: if (cli_parse_layout("", "--layout", optarg, &job->layout)) return -1; break;
        case OPT_OUT_LAYOUT:
            if (cli_parse_layout("", "--out-layout", optarg, &job->out_layout)) return -1;
            break;
        case OPT_KTFLOPS:
        case OPT_LINK: {
            char *end;
            double x = strtod(optarg, &end);
            if (*end || !(x > 0))
                return fa_seterr("option %s: '%s' is not a positive number",
                                 c == OPT_LINK ? "--link-gbps" : "--kernel-tflops", optarg);
            if (c == OPT_LINK) job->link_gbps = x;
            else job->kernel_tflops = x;
            break;
        }
        case OPT_CHECK:
            if (!strcmp(optarg, "all")) job->check_rows = -1;
            else if (parse_int("--check", optarg, 1, &job->check_rows)) return -1;
            break;
        case ':': return fa_seterr("option %s needs a value (see --help)", argv[optind - 1]);
        default: return cli_unknown_option("", argv[optind - 1], opts, "--help");
        }
    }
    if (optind < argc) return fa_seterr("unexpected argument '%s' (see --help)", argv[optind]);
    if (!job->input) return fa_seterr("no input file: give --input FILE (see --help)");
    if (!job->output) return fa_seterr("no output file: give --output FILE (see --help)");
    if (h5out_path_ok(job->output)) return -1;      /* "", "dir/", a folder: before any work */
    if (job->causal && job->window_size_set && job->win_right != 0)
        return fa_seterr("--causal with --window-size %lld,%lld: causal means RIGHT = 0; give "
                         "--window-size %lld,0, or drop --causal", (long long)job->win_left,
                         (long long)job->win_right, (long long)job->win_left);
    return 0;
}
