/* gen.c — `fa_long gen`: random inputs in fa_long's format, any shape and element type, seeded.
 *
 * Values are a function of (seed, dataset, element index) only — a counter-based generator
 * (splitmix64 + Box-Muller) — so a file is the same whatever the slab size or rank count. */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "io/h5gen.h"
#include "runner/cli.h"
#include "base/common.h"

typedef struct {
    uint64_t seed;
    double magnitude;      /* standard deviation of the values */
    fa_shape s;
} gen_cfg;

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Standard normal for element `idx` of stream `stream`. */
static double normal_at(uint64_t seed, uint64_t stream, uint64_t idx) {
    uint64_t h1 = splitmix64(seed ^ splitmix64(stream * 0x100000001B3ull + 2 * idx));
    uint64_t h2 = splitmix64(seed ^ splitmix64(stream * 0x100000001B3ull + 2 * idx + 1));
    double u1 = ((double)(h1 >> 11) + 0.5) * 0x1.0p-53;
    double u2 = (double)(h2 >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static void fill(void *arg, const char *name, int64_t b, int64_t r0, int64_t n, int64_t heads,
                 int64_t d, float *dst) {
    const gen_cfg *g = arg;
    uint64_t stream = (uint64_t)name[0];
    int64_t rows = name[0] == 'q' ? g->s.Nq : g->s.Nk;
    int64_t base = ((b * rows) + r0) * heads * d;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n * heads * d; i++)
        dst[i] = (float)(g->magnitude * normal_at(g->seed, stream, (uint64_t)(base + i)));
}

static void gen_usage(void) {
    if (fa_rank) return;
    printf("usage: fa_long gen --output FILE [options]\n"
           "Random normal q [B,Nq,H,D], k and v [B,Nk,Hkv,D] in fa_long's input format.\n"
           "  -o, --output FILE   file to write\n"
           "  -b, --batch B       batch size (default 1)\n"
           "  -n, --n N           Nq = Nk = N (K/M suffixes; default 1K)\n"
           "      --nq N          query rows\n"
           "      --nk N          keys\n"
           "      --heads H       query heads (default 4)\n"
           "      --kv-heads H    key/value heads (default: heads)\n"
           "  -d, --dim D         head dim (default 64)\n"
           "  -t, --dtype T       float32 (default), float16, bfloat16\n"
           "      --seed S        seed (default 1)\n"
           "      --magnitude X   standard deviation of the values (default 1)\n"
           "      --layout L      bnhd (q [B,Nq,H,D], the default) or bhnd (q [B,H,Nq,D], torch's),\n"
           "                      recorded in each dataset's attribute 'layout' (the same values)\n"
           "  -f, --force         replace an existing file\n");
}

/* A size option (K/M/G suffixes) within [lo, hi] (hi 0: no upper bound); the message names the option and the range. */
static int gen_size(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    int64_t v = fa_parse_size(s);
    if (hi > 0 && (v < lo || v > hi))
        return fa_seterr("gen: option %s: '%s' is not an integer in [%lld, %lld] (see fa_long gen "
                         "--help)", opt, s, (long long)lo, (long long)hi);
    if (v < lo)
        return fa_seterr("gen: option %s: '%s' is not a count >= %lld (K/M/G suffixes allowed; "
                         "see fa_long gen --help)", opt, s, (long long)lo);
    *out = v;
    return 0;
}

int cmd_gen(int argc, char **argv) {
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"batch", required_argument, 0, 'b'},
        {"n", required_argument, 0, 'n'},      {"nq", required_argument, 0, 'Q'},
        {"nk", required_argument, 0, 'K'},     {"heads", required_argument, 0, 'H'},
        {"kv-heads", required_argument, 0, 'G'}, {"dim", required_argument, 0, 'd'},
        {"dtype", required_argument, 0, 't'},  {"seed", required_argument, 0, 'S'},
        {"magnitude", required_argument, 0, 'M'}, {"force", no_argument, 0, 'f'},
        {"help", no_argument, 0, 'h'},         {"version", no_argument, 0, 'V'},
        {"layout", required_argument, 0, 'L'},
        {0, 0, 0, 0}};
    fa_layout layout = FA_LAYOUT_AUTO;
    gen_cfg g = {.seed = 1, .magnitude = 1.0, .s = {.B = 1, .Nq = 1024, .Nk = 1024, .H = 4, .Hkv = 0, .D = 64}};
    const char *out = NULL;
    fa_dtype t = FA_F32;
    int force = 0, c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":o:b:n:d:t:fhV", opts, NULL)) != -1) {
        int64_t v = 0;
        switch (c) {
        case 'o': out = optarg; break;
        case 'b': if (gen_size("-b/--batch", optarg, 1, INT32_MAX, &v)) return fa_report_error();
                  g.s.B = v; break;
        case 'n': if (gen_size("-n/--n", optarg, 1, 0, &v)) return fa_report_error();
                  g.s.Nq = g.s.Nk = v; break;
        case 'Q': if (gen_size("--nq", optarg, 1, 0, &v)) return fa_report_error();
                  g.s.Nq = v; break;
        case 'K': if (gen_size("--nk", optarg, 1, 0, &v)) return fa_report_error();
                  g.s.Nk = v; break;
        case 'H': if (gen_size("--heads", optarg, 1, 65536, &v)) return fa_report_error();
                  g.s.H = v; break;
        case 'G': if (gen_size("--kv-heads", optarg, 1, 65536, &v)) return fa_report_error();
                  g.s.Hkv = v; break;
        case 'd': if (gen_size("-d/--dim", optarg, 1, FA_MAX_HEAD_DIM, &v)) return fa_report_error();
                  g.s.D = v; break;
        case 't':
            if (fa_dtype_parse(optarg, &t) != 0 || t == FA_F64) {
                fa_seterr("gen: option --dtype: '%s' is not float32, float16 or bfloat16", optarg);
                return fa_report_error();
            }
            break;
        case 'S': {
            char *end;
            errno = 0;
            g.seed = (uint64_t)strtoull(optarg, &end, 0);
            if (!*optarg || *end || errno || optarg[0] == '-') {
                fa_seterr("gen: option --seed: '%s' is not an integer in [0, 2^64)", optarg);
                return fa_report_error();
            }
            break;
        }
        case 'M': {
            char *end;
            g.magnitude = strtod(optarg, &end);
            if (*end || !(g.magnitude > 0) || !isfinite(g.magnitude) || g.magnitude > 1e300) {
                fa_seterr("gen: option --magnitude: '%s' is not a finite number > 0", optarg);
                return fa_report_error();
            }
            break;
        }
        case 'f': force = 1; break;
        case 'L':
            if (cli_parse_layout("gen: ", "--layout", optarg, &layout)) return fa_report_error();
            break;
        case 'h': gen_usage(); return 0;
        case 'V': cli_print_version(); return 0;
        case ':':
            fa_seterr("gen: option %s needs a value (see fa_long gen --help)", argv[optind - 1]);
            return fa_report_error();
        default:
            cli_unknown_option("gen: ", argv[optind - 1], opts, "fa_long gen --help");
            return fa_report_error();
        }
    }
    if (optind < argc) {
        fa_seterr("gen: unexpected argument '%s' (see fa_long gen --help)", argv[optind]);
        return fa_report_error();
    }
    int err = 0;
    if (g.s.Hkv == 0) g.s.Hkv = g.s.H;
    if (!err && !out) err = 1, fa_seterr("gen: no output file: give --output FILE");
    if (!err && g.s.H % g.s.Hkv) err = 1, fa_seterr("gen: heads (%lld) must be a multiple of kv-heads (%lld)", (long long)g.s.H, (long long)g.s.Hkv);
    if (err) return fa_report_error();
    int rc = 0;
    if (fa_rank == 0) rc = h5_write_inputs(out, force, &g.s, t, layout, fill, &g);
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rc) return fa_report_error();
    const int x = layout == FA_BHND;           /* the dims as written: [B, H, N, D] in bhnd */
    const long long qd[2] = {g.s.Nq, g.s.H}, kd[2] = {g.s.Nk, g.s.Hkv};
    if (fa_rank == 0 && fa_verbosity > 0)
        fprintf(stderr, "fa_long: wrote %s: q [%lld,%lld,%lld,%lld], k/v [%lld,%lld,%lld,%lld] %s, seed %llu%s\n",
                out, (long long)g.s.B, qd[x], qd[!x], (long long)g.s.D, (long long)g.s.B, kd[x],
                kd[!x], (long long)g.s.D, fa_dtype_name(t), (unsigned long long)g.seed,
                x ? ", layout bhnd" : "");
    return 0;
}
