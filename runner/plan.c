/* plan.c — the planner (see plan.h and dist/plan.h): every setting of a run decided in one place,
 * each with where it came from. Order of precedence for each value: the command line, then (for
 * the test-and-tuning variables) the environment, then the tune cache or a tuning run, then the
 * cost model, then the documented default. */
#include "runner/plan.h"
#include "dist/pipe_io.h"
#include "dist/pipeline.h"       /* engine_copies_keys */
#include "base/agree.h"
#include "base/common.h"
#include "kernels/gpu_job.h"
#include "kernels/cuda/flash.h"
#include "kernels/paging.h"
#include "tune/cache.h"
#include "tune/choose.h"
#include "tune/tuner.h"
#include <omp.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IO_CAP_DEFAULT (1LL << 30)       /* bytes per rank per HDF5 transfer */
#define CHECKPOINT_DEFAULT_S 60.0
#define PROGRESS_DEFAULT_S 10.0
#define MERGES_IN_FLIGHT_DEFAULT 3
#define KEY_RING_DEFAULT 3               /* blocks in the ring of streamed keys (FA_KEY_RING) */
#define KEY_RING_MAX 64

const char *fa_backend_name(fa_backend b) {
    return b == BACKEND_CPU ? "cpu" : b == BACKEND_CUDA ? "cuda" : "auto";
}
const char *fa_mode_name(fa_mode m) { return m == MODE_TAYLOR ? "taylor" : "exact"; }
const char *q_read_name(q_read_mode m) {
    return m == Q_READ_RANK ? "rank" : m == Q_READ_SHARED ? "shared" : "node";
}
const char *merge_path_name(merge_path m) {
    return m == MERGE_NCCL ? "nccl" : m == MERGE_NONE ? "none" : "mpi";
}
const char *plan_source_name(plan_source s) {
    static const char *const n[] = {"default", "option", "environment", "tune cache", "model",
                                    "tuned", "partial output", "input", "measured"};
    return s <= SRC_MEASURED ? n[s] : "?";
}

/* ---- the environment --------------------------------------------------------------------------- */
static int env_number(const char *name, double lo, double *out, int *set) {
    const char *v = getenv(name);
    *set = 0;
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (*end || errno || !(x >= lo) || !isfinite(x))
        return fa_seterr("%s='%s': expected a number >= %g", name, v, lo);
    *out = x;
    *set = 1;
    return 0;
}

static int env_size(const char *name, int64_t lo, int64_t *out, int *set) {
    const char *v = getenv(name);
    *set = 0;
    if (!v || !*v) return 0;
    int64_t x = fa_parse_size(v);
    if (x < lo) return fa_seterr("%s='%s': expected a size >= %lld (K/M/G suffixes allowed)", name,
                                 v, (long long)lo);
    *out = x;
    *set = 1;
    return 0;
}

/* A 0|1 variable: *v and *set; -1 with one line naming both values otherwise. */
static int env_flag(const char *name, const char *one, const char *zero, int *v, int *set) {
    const char *x = getenv(name);
    *set = 0;
    if (!x || !*x) return 0;
    if (strcmp(x, "0") && strcmp(x, "1"))
        return fa_seterr("%s=%s: expected 1 (%s) or 0 (%s)", name, x, one, zero);
    *v = x[0] == '1';
    *set = 1;
    return 0;
}

int plan_env_read(plan_env *e) {
    memset(e, 0, sizeof *e);
    e->q_read = Q_READ_NODE;
    e->checkpoint_s = CHECKPOINT_DEFAULT_S;
    e->progress_s = PROGRESS_DEFAULT_S;
    e->io_cap_bytes = IO_CAP_DEFAULT;
    e->page_max_resident = -1;
    const char *qr = getenv("FA_Q_READ");
    if (qr && *qr) {
        if (!strcmp(qr, "node")) e->q_read = Q_READ_NODE;
        else if (!strcmp(qr, "rank")) e->q_read = Q_READ_RANK;
        else if (!strcmp(qr, "shared")) e->q_read = Q_READ_SHARED;
        else return fa_seterr("FA_Q_READ=%s: expected node (the default), rank or shared", qr);
        e->q_read_set = 1;
    }
    if (env_number("FA_CHECKPOINT_SECONDS", 0, &e->checkpoint_s, &e->checkpoint_set) ||
        env_number("FA_PROGRESS_INTERVAL", 1e-9, &e->progress_s, &e->progress_set) ||
        env_size("FA_IO_CAP_BYTES", 1, &e->io_cap_bytes, &e->io_cap_set))
        return -1;
    if (e->io_cap_bytes > INT_MAX - 4095) e->io_cap_bytes = INT_MAX - 4095;   /* one MPI count */
    const char *dr = getenv("FA_DIRECT_READ");
    e->direct_read = 1;
    if (dr && *dr) {
        if (strcmp(dr, "0") && strcmp(dr, "1"))
            return fa_seterr("FA_DIRECT_READ=%s: expected 1 (contiguous datasets read straight "
                             "from the file, the default) or 0 (every read through HDF5)", dr);
        e->direct_read = dr[0] == '1';
        e->direct_read_set = 1;
    }
    e->fused_read = 1;
    if (env_flag("FA_FUSED_READ", "each run of a direct read hashed and scanned as it lands, the "
                 "default", "the digests and the finite scan in passes of their own, as before",
                 &e->fused_read, &e->fused_read_set) ||
        env_flag("FA_TYPED_TRANSFERS", "q, k, v and o cross between the file and the GPU in "
                 "the file's 16-bit types, the default", "float32 on the host, as before",
                 &e->typed, &e->typed_set) ||
        env_flag("FA_STREAM_KEYS", "keys handed to the engine in blocks as they are read, the "
                 "default on GPUs", "each batch element's keys read whole before any compute, the "
                 "default on CPUs", &e->stream_keys, &e->stream_keys_set))
        return -1;
    {
        int set;
        int64_t x;
        if (env_size("FA_KEY_READ_ROWS", 1, &x, &set)) return -1;
        if (set) e->key_read_rows = x;
        const char *kr = getenv("FA_KEY_RING");
        if (kr && *kr) {
            char *end;
            errno = 0;
            const long n = strtol(kr, &end, 10);
            if (*end || errno || (n != 0 && (n < 3 || n > KEY_RING_MAX)))
                return fa_seterr("FA_KEY_RING=%s: expected 0 (a GPU's streamed keys read into a "
                                 "shard of every key) or the blocks of the ring they are read "
                                 "into, 3 to %d (default %d)", kr, KEY_RING_MAX, KEY_RING_DEFAULT);
            e->key_ring = (int)n;
            e->key_ring_set = 1;
        }
    }
    {   /* read before MPI_Init where they act (runner/main.c, plan_mpi_env, base/crc32.c):
         * checked here, so a bad value is an error as any other */
        int v, set;
        if (env_flag("FA_MPI_ENV", "Open MPI's transport and hwloc set up for one node, the "
                     "default", "nothing set before MPI_Init", &v, &set))
            return -1;
        static const struct { const char *name, *a, *b, *what; } words[] = {
            {"FA_GPU_WARMUP", "early", "late", "the CUDA context made from the process's start "
             "(early, the default) or after MPI_Init (late)"},
            {"FA_CRC32", "auto", "zlib", "the digests' CRC-32 through libdeflate where the machine "
             "has it (auto, the default) or zlib's always (zlib)"}};
        for (int i = 0; i < 2; i++) {
            const char *w = getenv(words[i].name);
            if (w && *w && strcmp(w, words[i].a) && strcmp(w, words[i].b))
                return fa_seterr("%s=%s: expected %s or %s: %s", words[i].name, w, words[i].a,
                                 words[i].b, words[i].what);
        }
    }
    const char *it = getenv("FA_IO_THREAD");
    e->io_thread = 1;
    if (it && *it) {
        if (strcmp(it, "0") && strcmp(it, "1"))
            return fa_seterr("FA_IO_THREAD=%s: expected 1 (reads and writes on an I/O thread "
                             "beside compute, the default on GPUs) or 0 (in series, the default "
                             "on CPUs)", it);
        e->io_thread = it[0] == '1';
        e->io_thread_set = 1;
    }
    int set;
    int64_t x;
    if (env_size("FA_PAGE_BLOCK_ROWS", 1, &x, &set)) return -1;
    if (set) e->page_block_rows = x;
    if (env_size("FA_PAGE_RING", 1, &x, &set)) return -1;
    if (set) e->page_ring = (int)(x > 64 ? 64 : x);
    if (env_size("FA_PAGE_MAX_RESIDENT", 0, &x, &set)) return -1;
    if (set) e->page_max_resident = x;
    const char *cp = getenv("FA_CPU_PRODUCTS");
    if (cp && *cp) {
        if (!strcmp(cp, "blas")) e->cpu_blas = 1;
        else if (strcmp(cp, "builtin")) return fa_seterr("FA_CPU_PRODUCTS=%s: expected blas or builtin", cp);
        e->cpu_blas_set = 1;
    }
    e->stop_file = getenv("FA_STOP_FILE");
    e->tune_cache = getenv("FA_TUNE_CACHE");
    e->home = getenv("HOME");
    return 0;
}

/* how/value into b->how, with what JSON and a terminal would mangle made plain */
static void binding_how(fa_binding *b, const char *how, const char *value) {
    snprintf(b->how, sizeof b->how, "%s%s", how, value ? value : "");
    for (char *c = b->how; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = '?';
}

const char *plan_mpi_env(void) {
    const char *off = getenv("FA_MPI_ENV");          /* 0: Open MPI's and hwloc's own choices */
    if (off && !strcmp(off, "0")) return "Open MPI's own choice (FA_MPI_ENV=0)";
    /* hwloc's topology, which MPI_Init loads, without its GPU and display plugins: OpenCL, CUDA
     * and NVML each start the GPU driver (a few hundred ms on a GPU node) for objects that
     * neither Open MPI's shared-memory transports nor fa_long use */
    setenv("HWLOC_COMPONENTS", "-opencl,-cuda,-nvml,-rsmi,-levelzero,-gl", 0);
    const char *nodes = getenv("OMPI_MCA_orte_num_nodes"), *snodes = getenv("SLURM_STEP_NUM_NODES");
    const int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
    const int alone = !launched && !nodes;
    const int one_node = alone || (nodes && atoi(nodes) == 1) || (!nodes && snodes && atoi(snodes) == 1);
    const char *pml = getenv("OMPI_MCA_pml");
    if (pml && *pml) return "pml as OMPI_MCA_pml gives it";
    if (!one_node) return "Open MPI's own choice (several nodes)";
    setenv("OMPI_MCA_pml", "ob1", 1);                 /* unset or empty: ours */
    if (alone) setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
    return alone ? "pml ob1, no singleton daemon (started alone)" : "pml ob1 (one node)";
}

void plan_binding_read(fa_binding *b) {
    /* Open MPI 4 (orted) tells its ranks: bound_at_launch=1 whenever it bound them; the policy
     * only when one was given (--bind-to, --mca or the environment); a mapping with PE=N, a CPU
     * set or a rank file bind as asked too */
    const char *policy = getenv("OMPI_MCA_hwloc_base_binding_policy");
    const char *map = getenv("OMPI_MCA_rmaps_base_mapping_policy");
    const char *cpuset = getenv("OMPI_MCA_hwloc_base_cpu_set");
    const char *rankfile = getenv("OMPI_MCA_orte_rankfile");
    const char *bound = getenv("OMPI_MCA_orte_bound_at_launch");
    const char *slurm = getenv("SLURM_CPU_BIND_TYPE");   /* srun --cpu-bind (or its default) */
    memset(b, 0, sizeof *b);
    b->launcher = FA_LAUNCHER_OMPI;
    b->kind = FA_BIND_EXPLICIT;
    if (!cpuset) cpuset = getenv("OMPI_MCA_hwloc_base_cpu_list");
    if (!rankfile) rankfile = getenv("OMPI_MCA_rmaps_rank_file_path");
    if (policy && *policy) {
        binding_how(b, "mpirun --bind-to ", policy);
        if (!strncasecmp(policy, "none", 4)) b->kind = FA_BIND_NONE;
    } else if (map && strstr(map, "PE=")) binding_how(b, "mpirun --map-by ", map);
    else if (cpuset && *cpuset) binding_how(b, "mpirun --cpu-set ", cpuset);
    else if (rankfile && *rankfile) binding_how(b, "mpirun --rankfile ", rankfile);
    else if (bound && !strcmp(bound, "1")) {
        b->kind = FA_BIND_DEFAULT;
        binding_how(b, "mpirun's default binding", NULL);
    } else if (slurm && *slurm && !strstr(slurm, "none")) {
        b->launcher = FA_LAUNCHER_SLURM;
        const char *all = getenv("SLURM_CPU_BIND");
        binding_how(b, "srun --cpu-bind=", all && *all ? all : slurm);
    } else {
        b->launcher = FA_LAUNCHER_OTHER;
        b->kind = FA_BIND_NONE;
        binding_how(b, "none", NULL);
    }
}

const char *plan_tune_cache_path(const char *opt, const plan_env *env, char *buf, int len) {
    return cm_cache_path(opt, env->tune_cache, env->home, buf, len);
}

/* ---- the backend ------------------------------------------------------------------------------- */
int plan_backend(const fa_job *job, fa_backend *out) {
    int ngpu = gpu_count(), min_gpu;
    MPI_Allreduce(&ngpu, &min_gpu, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    *out = job->backend == BACKEND_CPU ? BACKEND_CPU : min_gpu > 0 ? BACKEND_CUDA : BACKEND_CPU;
    if (job->backend != BACKEND_CUDA || min_gpu > 0) return 0;
#ifdef FA_HAVE_CUDA
    return fa_seterr("--backend cuda: no CUDA device is visible on %s", ngpu ? "some rank" : "this node");
#else
    return fa_seterr("--backend cuda: this fa_long was built without CUDA (nvcc not found at build time)");
#endif
}

/* ---- the mask ---------------------------------------------------------------------------------- */
int plan_mask_make(const fa_job *job, const fa_shape *s, plan_mask *pm) {
    memset(pm, 0, sizeof *pm);
    int rc = 0;
    if (fa_rank == 0)
        rc = h5_read_mask_tables(job->input, job->dset[0] && *job->dset[0] ? job->dset[0] : "q", s,
                                 job->alibi, !job->no_documents, &pm->t);
    if (fa_rank == 0 && !rc && pm->t.docs_unread)
        fa_log(1, "fa_long: --no-documents: the input's cu_seqlens tables are not used (one "
                  "sequence a batch row; the output records documents = 0)");
    if (fa_agree(MPI_COMM_WORLD, rc, -1)) {
        h5_mask_tables_free(&pm->t);
        return -1;
    }
    int64_t hdr[3] = {pm->t.ndocs, pm->t.doc_rows, pm->t.alibi != NULL};
    MPI_Bcast(hdr, 3, MPI_INT64_T, 0, MPI_COMM_WORLD);
    const int64_t n = hdr[0] ? hdr[1] * (hdr[0] + 1) : 0;
    if (fa_rank != 0) {
        pm->t.ndocs = hdr[0];
        pm->t.doc_rows = hdr[1];
        if (n) {
            pm->t.cu_q = fa_malloc(sizeof(int64_t) * (size_t)n, "document offsets");
            pm->t.cu_k = fa_malloc(sizeof(int64_t) * (size_t)n, "document offsets");
        }
        if (hdr[2]) pm->t.alibi = fa_malloc(sizeof(float) * (size_t)s->H, "alibi slopes");
    }
    if (n) {
        MPI_Bcast(pm->t.cu_q, (int)n, MPI_INT64_T, 0, MPI_COMM_WORLD);
        MPI_Bcast(pm->t.cu_k, (int)n, MPI_INT64_T, 0, MPI_COMM_WORLD);
    }
    if (hdr[2]) MPI_Bcast(pm->t.alibi, (int)s->H, MPI_FLOAT, 0, MPI_COMM_WORLD);

    attn_mask *m = &pm->mask;
    *m = mask_plain(s->Nq, s->Nk, job->causal);
    if (job->window_size_set) {
        m->left = job->win_left;
        m->right = job->win_right;
    }
    m->softcap = job->softcap;
    m->ndocs = pm->t.ndocs;
    m->doc_rows = pm->t.ndocs ? pm->t.doc_rows : 1;
    m->cu_q = pm->t.cu_q;
    m->cu_k = pm->t.cu_k;
    if (job->alibi && pm->t.alibi) {
        m->alibi = pm->t.alibi;
    } else if (job->alibi) {
        pm->slopes = fa_malloc(sizeof(float) * (size_t)s->H, "alibi slopes");
        mask_alibi_standard((int)s->H, pm->slopes);
        m->alibi = pm->slopes;
        m->alibi_standard = 1;
    }
    return 0;
}

void plan_mask_free(plan_mask *pm) {
    h5_mask_tables_free(&pm->t);
    free(pm->slopes);
    memset(pm, 0, sizeof *pm);
}

/* The parts of a mask that are more than full or causal attention, for messages. */
static const char *mask_extras(const attn_mask *m, char *buf, int len) {
    int n = 0;
    buf[0] = 0;
    if (m->left >= 0 || m->right > 0)
        n += snprintf(buf + n, (size_t)(len - n), "%s--window-size", n ? ", " : "");
    if (m->ndocs > 0) n += snprintf(buf + n, (size_t)(len - n), "%spacked documents (cu_seqlens)", n ? ", " : "");
    if (m->softcap > 0) n += snprintf(buf + n, (size_t)(len - n), "%s--softcap", n ? ", " : "");
    if (m->alibi) n += snprintf(buf + n, (size_t)(len - n), "%s--alibi", n ? ", " : "");
    return buf;
}

int plan_backend_job(const fa_job *job, const fa_shape *s, const attn_mask *m, fa_backend *be) {
    if (!mask_is_plain(m)) {
        char what[200];
        mask_extras(m, what, sizeof what);
        if (job->mode == MODE_TAYLOR)
            return fa_seterr("--mode taylor computes full or causal attention only; this job has %s: "
                             "run it with --mode exact", what);
        if (job->compare)
            return fa_seterr("--compare runs --mode taylor beside the job, which computes full or "
                             "causal attention only; this job has %s: drop --compare", what);
    }
    /* the exact CUDA engine's head dims (kernels/cuda/flash.h: multiples of 8 up to 256); the
     * Taylor one takes any */
    if (*be != BACKEND_CUDA || job->mode != MODE_EXACT || (s->D <= INT_MAX && flash_head_dim_supported((int)s->D)))
        return 0;
    if (job->backend == BACKEND_CUDA)
        return fa_seterr("--backend cuda: the CUDA engine computes head dims that are multiples of 8 up to %d, "
                         "not %lld; run it with --backend cpu (or the default --backend auto)",
                         FLASH_HEAD_DIM_MAX, (long long)s->D);
    fa_log(1, "fa_long: the CUDA engine computes head dims that are multiples of 8 up to %d, not %lld: "
              "running this job on the CPU engine", FLASH_HEAD_DIM_MAX, (long long)s->D);
    *be = BACKEND_CPU;
    return 0;
}

/* ---- the plan ---------------------------------------------------------------------------------- */
/* Rows per chunk when nothing else says: large enough to amortize per-chunk costs, small enough
 * that a few chunks' records stay far below the rank's key shard in memory. */
static int64_t default_chunk(const fa_shape *s, int gpu) {
    int64_t c = gpu ? 8192 : 1024;
    return c < s->Nq ? c : s->Nq;
}

/* The job as the cost model sees it (one rank's share: keys / nranks). */
static void model_job(const fa_job *job, const fa_shape *s, int gpu, const attn_mask *mask,
                      cm_job *j) {
    memset(j, 0, sizeof *j);
    j->nq = s->Nq;
    j->nk = s->Nk;
    j->h = (int)s->H;
    j->hkv = (int)s->Hkv;
    j->d = (int)s->D;
    j->causal = mask ? mask_is_causal(mask) : job->causal;
    j->mask = mask;
    j->gpu = gpu;
    j->elem = gpu ? 2 : 4;
    j->nranks = fa_nranks;
    j->budget = job->device_mem;
    j->dtype = gpu ? (int)job->compute : -1;
    j->threads = job->threads;
}

/* --tune: when the cache has no entry for the job, tune it and store the winner (the choice
 * that follows then reads it from the cache, as every later run does). Rank 0 alone. */
static void tune_first(const cm_job *j, const char *path, int verbose) {
    cm_machine m;
    char key[512];
    cm_job_machine_key(j, &m, key, sizeof key);
    /* as the tune subcommand: figures the cache measured, else measure them (not the defaults) */
    int have = !j->gpu && cm_cache_machine(path, m.device, &m) && m.cpu_gflops > 0;
    cm_machine_defaults(&m, j->gpu);
    if (!have) m.cpu_gflops = 0;
    cm_choice entry;
    if (cm_cache_lookup(path, key, m.device, &entry, 0)) return;
    fa_log(1, "fa_long: --tune: no entry for [%s] in %s: tuning first", key, path);
    cm_choice best;
    if (cm_tune_job(j, &m, 8, 3, verbose, &best) == 0 && !cm_cache_store(path, key, &best, &m))
        fa_log(1, "fa_long: --tune: stored in %s", path);
    else
        fa_warn("--tune: tuning failed (%s); the model's choice", fa_errmsg());
}

/* COLLECTIVE. Rank 0 takes the tune cache's entry, else the model's choice (tune/choose.c);
 * every rank gets its answer. The strings come back as names[] copies. */
static void agreed_choice(const fa_job *job, const plan_env *env, const fa_shape *s, int gpu,
                          const attn_mask *mask, cm_choice *c, char names[3][96]) {
    memset(c, 0, sizeof *c);
    memset(names, 0, 3 * 96);
    if (fa_rank == 0) {
        cm_job j;
        model_job(job, s, gpu, mask, &j);
        char path[4096];
        plan_tune_cache_path(job->tune_cache, env, path, sizeof path);
        cm_choose(&j, path, 1, c);
        snprintf(names[0], 96, "%s", c->critical ? c->critical : "");
        snprintf(names[1], 96, "%s", c->source ? c->source : "");
        snprintf(names[2], 96, "%s", c->why ? c->why : "");
    }
    MPI_Bcast(c, (int)sizeof *c, MPI_BYTE, 0, MPI_COMM_WORLD);
    MPI_Bcast(names, 3 * 96, MPI_CHAR, 0, MPI_COMM_WORLD);
    c->critical = names[0];
    c->source = names[1];
    c->why = names[2];
}

int plan_tune(const fa_job *job, const plan_env *env, const fa_shape *s, fa_backend backend) {
    if (job->tune && job->mode == MODE_EXACT && fa_rank == 0) {
        cm_job j;
        model_job(job, s, backend == BACKEND_CUDA, NULL, &j);   /* the tuner's jobs are plain */
        char path[4096];
        plan_tune_cache_path(job->tune_cache, env, path, sizeof path);
        tune_first(&j, path, job->verbose);
    }
    MPI_Barrier(MPI_COMM_WORLD);          /* the others wait while rank 0 tunes */
    return 0;
}

static plan_source choice_source(const cm_choice *c) {
    if (!c->source) return SRC_MODEL;
    if (!strcmp(c->source, "cache")) return SRC_CACHE;
    if (!strcmp(c->source, "measured")) return SRC_TUNED;
    if (!strcmp(c->source, "defaults")) return SRC_DEFAULT;
    return SRC_MODEL;
}

/* COLLECTIVE. GPU jobs without --chunk whose keys will not all fit the device budget: the chunk
 * grows until its compute hides the copies of the keys streamed for it (kernels/paging.h).
 * Rank 0 measures the link and decides; every rank gets its answer. */
static int64_t paged_chunk(const fa_job *job, const fa_shape *s, const gpu_comm *gc, int merges_in_flight,
                           int64_t c, run_plan *p) {
    if (fa_rank == 0) {
        kv_plan pl = {.kv_rows = (s->Nk + fa_nranks - 1) / fa_nranks, .h = (int)s->H,
                      .hkv = (int)s->Hkv, .d = (int)s->D, .elem = 2, .chunk_rows = c,
                      .slots = merges_in_flight, .budget = job->device_mem,
                      .device_free = gpu_free_bytes(gc ? gc->device : 0), .max_resident = -1};
        if (kv_plan_make(&pl) == 0 && pl.paged_rows > 0) {
            double link = job->link_gbps > 0 ? job->link_gbps : gpu_link_gbps(gc ? gc->device : 0);
            /* the kernel's rate when --kernel-tflops does not say: the flash kernel's bf16 rate in
             * the 256K job, rounded down (bench/results: 640-680 on the H100 and H200) */
            double tf = job->kernel_tflops > 0 ? job->kernel_tflops : 500.0;
            int64_t need = kv_plan_min_rows((int)s->H, (int)s->Hkv, 2, tf, link, 1.5);
            fa_log(2, "fa_long: paging model: link %.1f GB/s (%s), kernel %.0f TFLOP/s (%s): a chunk "
                      "hides its key copies from %lld rows (x1.5 margin); chunk %lld rows",
                   link, job->link_gbps > 0 ? "--link-gbps" : "measured", tf,
                   job->kernel_tflops > 0 ? "--kernel-tflops" : "default",
                   (long long)need, (long long)(need > c ? need : c));
            p->link_gbps = link;
            p->kernel_tflops = tf;
            if (need > c) {
                c = need;
                p->src[PS_CHUNK] = SRC_MODEL;
            }
        }
    }
    int64_t v[2] = {c, p->src[PS_CHUNK]};
    MPI_Bcast(v, 2, MPI_INT64_T, 0, MPI_COMM_WORLD);
    double f[2] = {p->link_gbps, p->kernel_tflops};
    MPI_Bcast(f, 2, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    p->src[PS_CHUNK] = (plan_source)v[1];
    p->link_gbps = f[0];
    p->kernel_tflops = f[1];
    return v[0];
}

/* ---- the merge ---------------------------------------------------------------------------------- */
int plan_nccl_wanted(const fa_job *job) { return !job->no_nccl; }

void plan_merge(fa_backend backend, fa_mode mode, int nranks, int no_nccl, const gpu_comm *gc,
                run_plan *p) {
    merge_path m = MERGE_MPI;
    plan_source src = SRC_DEFAULT;
    const char *why = "default", *more = "";
    if (backend != BACKEND_CUDA) why = "cpu backend";
    else if (mode != MODE_EXACT) why = "taylor mode";       /* the Taylor engine merges on the host */
    else if (nranks < 2) m = MERGE_NONE, why = "one rank";
    else if (no_nccl) src = SRC_OPTION, why = "--no-nccl";
    else if (gc && gc->nccl) m = MERGE_NCCL;
    else src = SRC_MEASURED, why = "NCCL could not start: ", more = gc && gc->why ? gc->why : "no GPUs bound";
    p->merge = m;
    p->src[PS_MERGE] = src;
    snprintf(p->merge_why, sizeof p->merge_why, "%s%s", why, more);
}

const char *plan_merge_describe(const run_plan *p, char *buf, int len) {
    snprintf(buf, (size_t)len, "%s (%s)", merge_path_name(p->merge), p->merge_why);
    return buf;
}

void plan_free(run_plan *p) { plan_rows_free(p); }

int plan_make(const fa_job *job, const plan_env *env, const fa_shape *s, fa_backend backend,
              const gpu_comm *gc, int64_t resume_chunk, const attn_mask *mask, run_plan *p) {
    memset(p, 0, sizeof *p);
    const int gpu = backend == BACKEND_CUDA, exact = job->mode == MODE_EXACT;
    p->s = *s;
    p->input = job->input;
    p->output = job->output;
    p->mode = job->mode;
    p->backend = backend;
    p->src[PS_BACKEND] = job->backend == BACKEND_AUTO ? SRC_DEFAULT : SRC_OPTION;
    p->compute = job->compute;
    p->src[PS_COMPUTE] = job->compute_set ? SRC_OPTION : SRC_DEFAULT;
    p->compute_name = !exact || !gpu ? "float32"
                    : job->compute == FA_COMPUTE_FP16 ? "float16" : "bfloat16";
    p->mask = *mask;
    p->causal = mask_is_causal(mask);
    p->lse = job->lse;
    p->allow_nonfinite = job->allow_nonfinite;
    p->scale = job->scale > 0 ? job->scale : 1.0 / sqrt((double)s->D);
    p->o_type = job->out_dtype_set ? job->out_dtype : s->q_type == FA_F64 ? FA_F32 : s->q_type;
    p->src[PS_SCALE] = job->scale > 0 ? SRC_OPTION : SRC_DEFAULT;
    p->nranks = fa_nranks;

    /* the key layout across ranks: --shard, else contiguous for full attention, or for every
     * other mask (causal, windows, documents) striped on CPUs (every rank the same share of
     * visible keys in every chunk) and zigzag on GPUs (two key runs per rank: two kernel launches
     * per chunk, and paged blocks stay whole) */
    const int full = mask->left < 0 && mask->right < 0 && mask->ndocs == 0;
    p->layout = job->shard_set ? job->shard : full ? SHARD_CONTIGUOUS
              : gpu ? SHARD_ZIGZAG : SHARD_STRIPED;
    p->src[PS_LAYOUT] = job->shard_set ? SRC_OPTION : SRC_DEFAULT;
    p->stripe = job->stripe;
    /* who writes each chunk (the HDF5 output's writer) and this rank's keys, once */
    plan_rows_make(p, fa_rank, pipe_h5_writer());

    /* the tune cache's or the model's choice (or a tuning run's, with --tune): only where the
     * exact engine needs a value the command line did not give */
    const int64_t given_chunk = job->chunk > 0 ? job->chunk : resume_chunk;
    const int need_choice = exact && (given_chunk <= 0 || !job->merges_in_flight_set || gpu ||
                                      (!job->br && !job->bc));
    cm_choice choice = {0};
    char names[3][96];
    if (need_choice) {
        agreed_choice(job, env, s, gpu, mask, &choice, names);
        p->predicted_s = choice.t_total;
        snprintf(p->critical, sizeof p->critical, "%.15s", choice.critical);
    }
    const plan_source csrc = choice_source(&choice);

    /* rows per chunk */
    int64_t c;
    if (given_chunk > 0) {
        c = given_chunk;
        p->src[PS_CHUNK] = job->chunk > 0 ? SRC_OPTION : SRC_PARTIAL;
    } else if (exact) {
        c = choice.chunk;
        p->src[PS_CHUNK] = csrc;
    } else {
        c = default_chunk(s, gpu);
        p->src[PS_CHUNK] = SRC_DEFAULT;
    }
    /* merges in flight */
    p->merges_in_flight = job->merges_in_flight > 0 ? job->merges_in_flight : MERGES_IN_FLIGHT_DEFAULT;
    p->src[PS_MERGES_IN_FLIGHT] = job->merges_in_flight_set ? SRC_OPTION : SRC_DEFAULT;
    if (!job->merges_in_flight_set && exact) {
        p->merges_in_flight = choice.merges_in_flight;
        p->src[PS_MERGES_IN_FLIGHT] = csrc;
    }
    if (given_chunk <= 0 && gpu) c = paged_chunk(job, s, gc, job->merges_in_flight, c, p);
    p->chunk = c < s->Nq ? c : s->Nq;

    /* the CPU engine: --tile, else the choice's; the threads the rank runs; the tile products */
    p->tiling = (cpu_tiling){.br = job->br, .bc = job->bc, .threads = job->threads};
    p->src[PS_TILE] = job->br || job->bc ? SRC_OPTION : SRC_DEFAULT;
    if (exact && !gpu && !job->br && !job->bc) {
        p->tiling.br = choice.br;
        p->tiling.bc = choice.bc;
        p->src[PS_TILE] = csrc;
    }
    p->src[PS_THREADS] = job->threads > 0 ? SRC_OPTION : SRC_DEFAULT;
    p->tiling.blas = env->cpu_blas;
    p->src[PS_PRODUCTS] = env->cpu_blas_set ? SRC_ENV : SRC_DEFAULT;
#ifndef FA_HAVE_CBLAS
    if (env->cpu_blas) fa_log(1, "fa_long: FA_CPU_PRODUCTS=blas: this build has no OpenBLAS; "
                                 "the built-in tile products run");
    p->tiling.blas = 0;
#endif

    /* the merge path, from the GPUs' outcome; said once where the exact engine falls back */
    plan_merge(backend, job->mode, fa_nranks, job->no_nccl, gc, p);
    if (gpu && exact && p->merge == MERGE_MPI)
        fa_log(1, "fa_long: merging through MPI from host memory: %s", p->merge_why);
    /* the GPU engine: kernel variant, key blocks, this rank's key plan */
    p->device_mem = job->device_mem;
    p->src[PS_BUDGET] = job->device_mem > 0 ? SRC_OPTION : SRC_DEFAULT;
    int st = 0;
    if (gpu && exact) {
        p->variant = choice.variant;
        p->src[PS_VARIANT] = csrc;
        p->kv = (kv_plan){.kv_rows = p->shard.total, .h = (int)s->H, .hkv = (int)s->Hkv, .d = (int)s->D,
                          .elem = 2, .chunk_rows = p->chunk, .slots = p->merges_in_flight,
                          .budget = job->device_mem,
                          .device_free = gpu_free_bytes(gc ? gc->device : 0),
                          .block_rows = choice.block_rows, .ring = choice.ring,
                          .max_resident = env->page_max_resident};
        p->src[PS_BLOCKS] = csrc;
        if (env->page_block_rows > 0) p->kv.block_rows = env->page_block_rows, p->src[PS_BLOCKS] = SRC_ENV;
        if (env->page_ring > 0) p->kv.ring = env->page_ring, p->src[PS_BLOCKS] = SRC_ENV;
        st = kv_plan_make(&p->kv);
        if (st == 0 && fa_rank == 0 && (p->kv.paged_rows > 0 || fa_verbosity > 1))
            fa_log(1, "fa_long: rank 0 keys: %lld resident on GPU, %lld paged from pinned host "
                      "memory in blocks of %lld keys (ring of %d, %.2f GiB) under a %.2f GiB budget",
                   (long long)p->kv.resident_rows, (long long)p->kv.paged_rows,
                   (long long)p->kv.block_rows, p->kv.ring, p->kv.ring_bytes / 1073741824.0,
                   (p->kv.budget > 0 ? p->kv.budget : p->kv.device_free) / 1073741824.0);
    }
    if (fa_agree(MPI_COMM_WORLD, st, -1)) return -1;

    /* how the ranks read, and the long-run periods */
    p->q_read = env->q_read;
    p->src[PS_Q_READ] = env->q_read_set ? SRC_ENV : SRC_DEFAULT;
    p->checkpoint_s = env->checkpoint_s;
    p->src[PS_CHECKPOINT] = env->checkpoint_set ? SRC_ENV : SRC_DEFAULT;
    p->progress_interval_s = env->progress_s;
    p->src[PS_PROGRESS] = env->progress_set ? SRC_ENV : SRC_DEFAULT;
    p->io_cap_bytes = env->io_cap_bytes;
    p->src[PS_IO_CAP] = env->io_cap_set ? SRC_ENV : SRC_DEFAULT;
    /* the I/O thread: its tasks call MPI (parallel HDF5, the node's barriers) beside the rank's
     * own merges, so it needs MPI_THREAD_MULTIPLE. On by default beside a GPU, whose host threads
     * otherwise wait; off beside the CPU engine, whose threads fill the cores: the reads' and
     * writes' copies and conversions then take the engine's cores, and the overlap gains little
     * (bench/NOTES_WHOLEJOB.md, 2 cores: 0.97x to 1.06x). Its conversion loops get the rank's
     * threads (they run alone while the engine waits for its keys). */
    const int io_default = p->backend == BACKEND_CUDA;
    const int io_want = env->io_thread_set ? env->io_thread : io_default;
    p->io_thread = io_want && fa_mpi_thread_multiple;
    p->src[PS_IO_THREAD] = env->io_thread_set ? SRC_ENV : SRC_DEFAULT;
    if (io_want && !fa_mpi_thread_multiple) {
        p->src[PS_IO_THREAD] = SRC_MEASURED;
        fa_log(1, "fa_long: this MPI library does not provide MPI_THREAD_MULTIPLE: reads and "
                  "writes run in series with compute");
    }
    p->io_omp_threads = p->tiling.threads > 0 ? p->tiling.threads : fa_threads.threads;
    p->direct_read = env->direct_read;
    p->src[PS_DIRECT] = env->direct_read_set ? SRC_ENV : SRC_DEFAULT;
    p->fused_read = env->fused_read;

    /* typed transfers: the exact CUDA engine takes float16/bfloat16 rows as the file holds them
     * and converts on the device, and gives o in its file type (host to device bytes = the
     * file's bytes); the CPU engines take float32 */
    const int typed_ok = gpu && exact;
    p->typed = typed_ok && (env->typed_set ? env->typed : 1);
    p->src[PS_TYPED] = env->typed_set ? SRC_ENV : SRC_DEFAULT;
    const fa_dtype t3[3] = {s->q_type, s->k_type, s->v_type};
    for (int i = 0; i < 3; i++) p->in_type[i] = p->typed && fa_dtype_size(t3[i]) == 2 ? t3[i] : FA_F32;
    p->o_xfer = p->typed && fa_dtype_size(p->o_type) == 2 ? p->o_type : FA_F32;
    /* streamed keys: on by default beside a GPU (exact mode), where the host would otherwise
     * read every key before the device starts; blocks of about 256 MiB of k and v as the file
     * holds them (a multiple of 256 rows): few enough kernel launches a chunk that the pieces
     * cost under 1% (bench/NOTES_WHOLEJOB.md), small enough that the first chunk starts after a
     * quarter of a 256K job's keys */
    p->stream_keys = exact && (env->stream_keys_set ? env->stream_keys : gpu);
    p->src[PS_STREAM] = env->stream_keys_set ? SRC_ENV : SRC_DEFAULT;
    const int64_t kv_row_bytes = s->Hkv * s->D * (int64_t)(fa_dtype_size(s->k_type) + fa_dtype_size(s->v_type));
    int64_t kb = env->key_read_rows > 0 ? env->key_read_rows : ((int64_t)256 << 20) / kv_row_bytes / 256 * 256;
    p->key_read_rows = kb < 256 && env->key_read_rows <= 0 ? 256 : kb;
    if (env->key_read_rows > 0) p->src[PS_STREAM] = SRC_ENV;
    /* keys through a ring: where the engine copies out the rows it is handed (the exact CUDA
     * engine), streamed keys are read into a ring of 3 blocks, allocated once, rather than a
     * shard of every key that is only their waypoint to the device: a 1M-key decode job's shard
     * is 4.3 GB allocated fresh, faulted in by the read at a third of the page cache's rate
     * (bench/NOTES_WHOLEJOB.md), then copied once more. 3: block j + 3 is read while the engine
     * takes j + 1 and j + 2 is read ahead. FA_KEY_RING=0 keeps the shard */
    p->key_ring = p->stream_keys && engine_copies_keys(p)
                ? (env->key_ring_set ? env->key_ring : KEY_RING_DEFAULT) : 0;
    p->src[PS_KEY_RING] = env->key_ring_set ? SRC_ENV : SRC_DEFAULT;
    return 0;
}

void plan_print(const run_plan *p) {
    if (fa_rank != 0 || fa_verbosity < 2) return;
#define SRC(i) plan_source_name(p->src[i])
    fa_log(2, "fa_long: plan: %s mode on %s (%s), compute %s (%s), scale %.6g (%s)",
           fa_mode_name(p->mode), fa_backend_name(p->backend), SRC(PS_BACKEND), p->compute_name,
           SRC(PS_COMPUTE), p->scale, SRC(PS_SCALE));
    char mdesc[256];
    fa_log(2, "fa_long: plan: mask %s (options and input)", mask_describe(&p->mask, mdesc, sizeof mdesc));
    char merge[192];
    fa_log(2, "fa_long: plan: chunk %lld rows (%s), %d merges in flight (%s), merge %s, shard %s "
              "(%s), queries read per %s (%s)", (long long)p->chunk, SRC(PS_CHUNK),
           p->merges_in_flight, SRC(PS_MERGES_IN_FLIGHT), plan_merge_describe(p, merge, sizeof merge),
           shard_layout_name(p->layout), SRC(PS_LAYOUT), q_read_name(p->q_read), SRC(PS_Q_READ));
    if (p->backend == BACKEND_CPU)
        fa_log(2, "fa_long: plan: CPU tile %dx%d (%s; 0 = the engine's own), %d threads a rank "
                  "(%s), %s tile products (%s)", p->tiling.br, p->tiling.bc, SRC(PS_TILE),
               p->tiling.threads > 0 ? p->tiling.threads : fa_threads.threads,
               p->tiling.threads > 0 ? SRC(PS_THREADS) : fa_threads.why,
               p->tiling.blas ? "OpenBLAS" : "built-in", SRC(PS_PRODUCTS));
    else
        fa_log(2, "fa_long: plan: flash variant %d (%s; 0 = auto), key blocks of %lld rows x %d "
                  "(%s), device budget %.2f GiB (%s)", p->variant, SRC(PS_VARIANT),
               (long long)p->kv.block_rows, p->kv.ring, SRC(PS_BLOCKS),
               (p->device_mem > 0 ? p->device_mem : p->kv.device_free) / 1073741824.0,
               SRC(PS_BUDGET));
    fa_log(2, "fa_long: plan: checkpoint every %g s (%s), progress every %g s (%s), HDF5 transfers "
              "of at most %lld bytes (%s), reads and writes %s (%s)%s%s", p->checkpoint_s,
           SRC(PS_CHECKPOINT), p->progress_interval_s, SRC(PS_PROGRESS),
           (long long)p->io_cap_bytes, SRC(PS_IO_CAP),
           p->io_thread ? "on an I/O thread beside compute" : "in series with compute",
           SRC(PS_IO_THREAD), p->critical[0] ? "; predicted critical resource: " : "", p->critical);
    fa_log(2, "fa_long: plan: contiguous datasets read %s (%s)%s",
           p->direct_read ? "straight from the file (pread, in parallel)" : "through HDF5",
           SRC(PS_DIRECT), !p->direct_read ? ""
           : p->fused_read ? ", each run hashed and scanned as it lands"
                           : ", hashed and scanned in passes of their own (FA_FUSED_READ=0)");
    fa_log(2, "fa_long: plan: q, k, v handed to the engine as %s, %s, %s and o taken as %s (%s); "
              "keys %s, blocks of %lld rows (%s)", fa_dtype_name(p->in_type[0]),
           fa_dtype_name(p->in_type[1]), fa_dtype_name(p->in_type[2]), fa_dtype_name(p->o_xfer),
           SRC(PS_TYPED), p->stream_keys ? "streamed to the engine as they are read"
                                         : "read whole before compute",
           (long long)p->key_read_rows, SRC(PS_STREAM));
    {   /* where the key reads land (rank 0's sizes) */
        const int64_t row = p->s.Hkv * p->s.D * (int64_t)(fa_dtype_size(p->in_type[1]) +
                                                          fa_dtype_size(p->in_type[2]));
        if (p->key_ring > 0)
            fa_log(2, "fa_long: plan: keys read into a ring of %d blocks (%s; %.1f MB, reused) "
                      "rather than a shard of every key (rank 0's %lld keys: %.1f MB), the engine "
                      "copying each block out as it is handed over", p->key_ring, SRC(PS_KEY_RING),
                   p->key_ring * p->key_read_rows * row / 1e6, (long long)p->shard.total,
                   p->shard.total * row / 1e6);
        else
            fa_log(2, "fa_long: plan: keys read into a shard of every key (rank 0's %lld keys: "
                      "%.1f MB)%s", (long long)p->shard.total, p->shard.total * row / 1e6,
                   !engine_copies_keys(p) ? ", where the engine reads them"
                   : !p->stream_keys ? ", read whole before compute" : " (FA_KEY_RING=0)");
    }
    /* rank 0's: the report has every rank's */
    fa_log(2, "fa_long: plan: %d threads a rank (%s) on %d CPUs (its share: %d of the %d CPUs "
              "the node allows (%s), over %d rank%s); binding: %s", p->io_omp_threads, fa_threads.why,
           fa_threads.cpus, fa_threads.share, fa_threads.allowed, fa_threads.allowed_from,
           fa_threads.node_ranks, fa_threads.node_ranks == 1 ? "" : "s", fa_threads.binding);
#undef SRC
}

void plan_json(const run_plan *p, char *buf, int len) {
    int k = 0;
#define PUT(...) do { if (k < len) k += snprintf(buf + k, (size_t)(len - k), __VA_ARGS__); } while (0)
#define NUM(name, fmt, v, i) PUT("%s\"%s\": {\"value\": " fmt ", \"from\": \"%s\"}", k > 1 ? ", " : "", \
                                 name, v, plan_source_name(p->src[i]))
#define STR(name, v, i) PUT("%s\"%s\": {\"value\": \"%s\", \"from\": \"%s\"}", k > 1 ? ", " : "", \
                            name, v, plan_source_name(p->src[i]))
    PUT("{");
    STR("backend", fa_backend_name(p->backend), PS_BACKEND);
    STR("compute", p->compute_name, PS_COMPUTE);
    NUM("scale", "%.17g", p->scale, PS_SCALE);
    NUM("chunk", "%lld", (long long)p->chunk, PS_CHUNK);
    NUM("merges_in_flight", "%d", p->merges_in_flight, PS_MERGES_IN_FLIGHT);
    PUT(", \"merge\": {\"value\": \"%s\", \"from\": \"%s\", \"why\": \"%s\"}",
        merge_path_name(p->merge), plan_source_name(p->src[PS_MERGE]), p->merge_why);
    STR("shard", shard_layout_name(p->layout), PS_LAYOUT);
    STR("q_read", q_read_name(p->q_read), PS_Q_READ);
    if (p->backend == BACKEND_CPU) {
        NUM("tile_rows", "%d", p->tiling.br, PS_TILE);
        NUM("tile_keys", "%d", p->tiling.bc, PS_TILE);
        STR("tile_products", p->tiling.blas ? "openblas" : "builtin", PS_PRODUCTS);
    } else {
        NUM("flash_variant", "%d", p->variant, PS_VARIANT);
        NUM("key_block_rows", "%lld", (long long)p->kv.block_rows, PS_BLOCKS);
        NUM("key_ring", "%d", p->kv.ring, PS_BLOCKS);
        NUM("keys_resident_rank0", "%lld", (long long)p->kv.resident_rows, PS_BUDGET);
        NUM("keys_paged_rank0", "%lld", (long long)p->kv.paged_rows, PS_BUDGET);
        NUM("device_mem", "%lld", (long long)p->device_mem, PS_BUDGET);
    }
    NUM("checkpoint_s", "%g", p->checkpoint_s, PS_CHECKPOINT);
    NUM("progress_interval_s", "%g", p->progress_interval_s, PS_PROGRESS);
    NUM("io_cap_bytes", "%lld", (long long)p->io_cap_bytes, PS_IO_CAP);
    NUM("io_thread", "%d", p->io_thread, PS_IO_THREAD);
    NUM("direct_read", "%d", p->direct_read, PS_DIRECT);
    NUM("typed_transfers", "%d", p->typed, PS_TYPED);
    STR("q_transfer", fa_dtype_name(p->in_type[0]), PS_TYPED);
    STR("kv_transfer", fa_dtype_name(p->in_type[1]), PS_TYPED);
    STR("o_transfer", fa_dtype_name(p->o_xfer), PS_TYPED);
    NUM("stream_keys", "%d", p->stream_keys, PS_STREAM);
    NUM("key_read_rows", "%lld", (long long)p->key_read_rows, PS_STREAM);
    NUM("key_read_ring", "%d", p->key_ring, PS_KEY_RING);
    PUT(", \"threads\": {\"value\": %d, \"from\": \"%s\", \"cpus\": %d, \"cpu_share\": %d, "
        "\"binding\": \"%s\"}", p->io_omp_threads,
        fa_threads.why, fa_threads.cpus, fa_threads.share, fa_threads.binding);
    PUT("}");
#undef STR
#undef NUM
#undef PUT
}
