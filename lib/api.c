/* api.c — the C library (lib/fa_long.h): the descriptor's checks, a run plan made from it
 * (lib_plan: what runner/plan.c decides for the command), and the command's pipeline
 * (dist/pipeline.c) from the caller's buffers to its o and lse (dist/pipe_mem.c). Query rows go
 * in chunks, so the working memory is a few chunks' states beside this rank's keys in float32. */
#define _GNU_SOURCE
#include "lib/fa_long.h"
#include "base/agree.h"
#include "base/common.h"
#include "base/progress.h"
#include "dist/pipe_io.h"
#include "dist/pipeline.h"
#include "dist/plan.h"
#include "io/h5io.h"
#include "kernels/attn.h"
#include "kernels/mask.h"
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)FA_ELEM_F32 == (int)FA_F32 && (int)FA_ELEM_F16 == (int)FA_F16 &&
               (int)FA_ELEM_BF16 == (int)FA_BF16 && (int)FA_ELEM_F64 == (int)FA_F64,
               "fa_elem follows fa_dtype");

void fa_attn_desc_init(fa_attn_desc *d) {
    memset(d, 0, sizeof *d);
    d->layout = FA_LAYOUT_BNHD;
    d->dtype = FA_ELEM_F32;
    d->window_left = d->window_right = -1;
    d->doc_rows = 1;
    d->mode = FA_MODE_EXACT;
    d->o_dtype = FA_ELEM_F32;
}

size_t fa_attn_desc_sizeof(void) { return sizeof(fa_attn_desc); }
const char *fa_long_error(void) { return fa_errmsg(); }
const char *fa_long_version(void) { return "fa_long " FA_VERSION; }

/* a bad argument: its line, and FA_EINVAL */
#define EINVAL(...) ((void)fa_seterr(__VA_ARGS__), FA_EINVAL)

/* The descriptor's checks; fills the mask. */
static int validate(const fa_attn_desc *d, attn_mask *m) {
    fa_clearerr();
    if (!d) return EINVAL("fa_long: the descriptor is NULL");
    if (d->batch < 1 || d->nq < 1 || d->nk < 1 || d->heads < 1 || d->kv_heads < 1 || d->head_dim < 1)
        return EINVAL("fa_long: fa_attn_desc: batch, nq, nk, heads, kv_heads and head_dim must be "
                      ">= 1 (got %lld, %lld, %lld, %lld, %lld, %lld)", (long long)d->batch,
                      (long long)d->nq, (long long)d->nk, (long long)d->heads,
                      (long long)d->kv_heads, (long long)d->head_dim);
    if (d->heads % d->kv_heads)
        return EINVAL("fa_long: fa_attn_desc: heads %lld is not a multiple of kv_heads %lld",
                      (long long)d->heads, (long long)d->kv_heads);
    if (d->head_dim > FA_MAX_HEAD_DIM)
        return EINVAL("fa_long: fa_attn_desc: head_dim %lld is above %d", (long long)d->head_dim,
                      FA_MAX_HEAD_DIM);
    if (d->layout != FA_LAYOUT_BNHD && d->layout != FA_LAYOUT_BHND)
        return EINVAL("fa_long: fa_attn_desc: layout %d is not FA_LAYOUT_BNHD or FA_LAYOUT_BHND",
                      (int)d->layout);
    if ((int)d->dtype < 0 || d->dtype > FA_ELEM_F64)
        return EINVAL("fa_long: fa_attn_desc: dtype %d is not an fa_elem", (int)d->dtype);
    if (d->window_left < -1 || d->window_right < -1)
        return EINVAL("fa_long: fa_attn_desc: window sides %lld,%lld; expected >= 0, or -1 for "
                      "unbounded", (long long)d->window_left, (long long)d->window_right);
    if (d->causal && d->window_right > 0)
        return EINVAL("fa_long: fa_attn_desc: causal with window_right %lld; causal means "
                      "window_right 0 (or -1)", (long long)d->window_right);
    if (d->softcap < 0 || !isfinite(d->softcap) || d->scale < 0 || !isfinite(d->scale))
        return EINVAL("fa_long: fa_attn_desc: softcap %g and scale %g must be finite and >= 0 "
                      "(0: none / 1/sqrt(head_dim))", d->softcap, d->scale);
    if ((int)d->mode < 0 || d->mode > FA_MODE_TAYLOR)
        return EINVAL("fa_long: fa_attn_desc: mode %d is not FA_MODE_EXACT or FA_MODE_TAYLOR",
                      (int)d->mode);
    if (d->o_dtype != FA_ELEM_F32 && d->o_dtype != FA_ELEM_F16 && d->o_dtype != FA_ELEM_BF16)
        return EINVAL("fa_long: fa_attn_desc: o_dtype %d is not FA_ELEM_F32, FA_ELEM_F16 or "
                      "FA_ELEM_BF16", (int)d->o_dtype);
    if (d->chunk < 0 || d->tile_rows < 0 || d->tile_keys < 0 || d->threads < 0)
        return EINVAL("fa_long: fa_attn_desc: chunk %lld, tile %dx%d and threads %d must be >= 0 "
                      "(0: the library's own)", (long long)d->chunk, d->tile_rows, d->tile_keys,
                      d->threads);
    *m = mask_plain(d->nq, d->nk, d->causal);          /* causal: right side 0 */
    m->left = d->window_left;
    if (!d->causal) m->right = d->window_right;
    m->softcap = d->softcap;
    m->alibi = d->alibi_slopes;
    if (d->ndocs > 0) {
        if (!d->cu_seqlens_q || !d->cu_seqlens_k || (d->doc_rows != 1 && d->doc_rows != d->batch))
            return EINVAL("fa_long: fa_attn_desc: ndocs %lld needs cu_seqlens_q and cu_seqlens_k "
                          "with doc_rows 1 or batch (%lld)", (long long)d->ndocs, (long long)d->batch);
        if (h5_check_offsets(d->cu_seqlens_q, d->doc_rows, d->ndocs, d->nq, "fa_long: cu_seqlens_q") ||
            h5_check_offsets(d->cu_seqlens_k, d->doc_rows, d->ndocs, d->nk, "fa_long: cu_seqlens_k"))
            return FA_EINVAL;
        m->ndocs = d->ndocs;
        m->doc_rows = d->doc_rows;
        m->cu_q = d->cu_seqlens_q;
        m->cu_k = d->cu_seqlens_k;
    }
    if (d->mode == FA_MODE_TAYLOR && !mask_is_plain(m))
        return EINVAL("fa_long: fa_attn_desc: FA_MODE_TAYLOR computes full or causal attention "
                      "only; this descriptor has a window, documents, softcap or ALiBi slopes");
    return FA_OK;
}

/* ---- the library's plan and run ------------------------------------------------------------ */
#define LIB_CHUNK 4096               /* query rows per chunk when the descriptor gives none */
#define LIB_MERGES_IN_FLIGHT 2       /* merges in flight beside the next chunk's compute */

/* The run plan of a library call: the fields plan_make fills for the command's CPU jobs, from
 * the descriptor alone (no environment, tune cache or cost model: the chunk and tile are the
 * descriptor's or the defaults). The caller's keys are each rank's shard (run sets own_keys). */
static void lib_plan(const fa_attn_desc *d, const attn_mask *m, int nranks, run_plan *p) {
    memset(p, 0, sizeof *p);
    const fa_dtype t = (fa_dtype)d->dtype;
    p->s = (fa_shape){d->batch, d->nq, d->nk, d->heads, d->kv_heads, d->head_dim, t, t, t};
    p->input = "q, k, v";            /* for the pipeline's messages */
    p->output = "o";
    p->mode = d->mode == FA_MODE_TAYLOR ? MODE_TAYLOR : MODE_EXACT;
    p->backend = BACKEND_CPU;
    p->compute_name = "float32";
    p->mask = *m;
    p->causal = mask_is_causal(m);
    p->lse = 1;
    p->scale = d->scale > 0 ? d->scale : 1.0 / sqrt((double)d->head_dim);
    p->o_type = (fa_dtype)d->o_dtype;
    p->nranks = nranks;
    const int64_t c = d->chunk > 0 ? d->chunk : LIB_CHUNK;
    p->chunk = c < d->nq ? c : d->nq;
    p->merges_in_flight = LIB_MERGES_IN_FLIGHT;
    p->layout = SHARD_CONTIGUOUS;    /* one run of keys a rank: the caller's */
    p->q_read = Q_READ_RANK;         /* every rank holds q: each copies its own chunks */
    p->io_thread = 0;                /* reads and writes are copies: in series */
    p->io_omp_threads = d->threads > 0 ? d->threads : omp_get_max_threads();
    p->tiling = (cpu_tiling){.br = d->tile_rows, .bc = d->tile_keys, .threads = d->threads};
    for (int i = 0; i < 3; i++) p->in_type[i] = FA_F32;
    p->o_xfer = FA_F32;
    p->key_read_rows = 256;          /* unused: keys are not streamed */
}

/* o's bytes and lse from rank 0 to every rank of comm, in pieces MPI's int counts can take. */
static void bcast_bytes(void *x, int64_t bytes, MPI_Comm comm) {
    for (int64_t at = 0; at < bytes; at += 1 << 30) {
        const int64_t n = bytes - at < (1 << 30) ? bytes - at : (1 << 30);
        MPI_Bcast((char *)x + at, (int)n, MPI_BYTE, 0, comm);
    }
}

/* The FA_E* code of the pipeline's failure, from its line's kind (base/common.h); a line that
 * is not about the input gets the call's name. */
static int failure_code(const char *who) {
    const int kind = fa_errkind();
    if (kind == FA_ERR_INPUT) return FA_EINVAL;
    char line[900];
    const char *m = fa_errmsg();
    snprintf(line, sizeof line, "%s", strncmp(m, "fa_long: ", 9) ? m : m + 9);
    fa_seterr("fa_long: %s: %s", who, line);
    fa_set_errkind(kind);
    return kind == FA_ERR_NOMEM ? FA_ENOMEM : FA_EMPI;
}

/* COLLECTIVE over comm. The pipeline from the buffers (this rank's keys [k0, k0+kn)) to o and
 * lse on rank `root`, or on every rank when root < 0 (merged on rank 0, then broadcast).
 *
 * Failures come back as returns, never as an exit of the caller's process: fa_library_call makes
 * the allocations of the pipeline and its engines (fa_try_*) and the engines' failures return -1
 * with their line, the pipeline agrees on them across ranks and frees what it holds, as after
 * bad input (dist/pipeline.c). Not a jump from fa_fail back to here (setjmp/longjmp): the
 * failure may meet an OpenMP worker or the pipeline's I/O thread, which cannot jump to this
 * thread; a jump would skip the frees of the key shard (the largest allocation, and the likely
 * one to fail), the duplicated communicators and the merges in flight; and a rank jumping out
 * alone would leave the others waiting in a collective. What is still not returned (base/common.h,
 * README "The C library"): a failure one rank meets alone mid-run when the call spans several
 * ranks, and the CPU engine's per-thread tile scratch, allocated inside its parallel region. */
static int run(MPI_Comm comm, const char *who, const fa_attn_desc *d, const attn_mask *m,
               const void *q, const void *k, const void *v, int64_t k0, int64_t kn, void *o,
               float *lse, int root) {
    const int outer = fa_library_call;
    fa_library_call = 1;
    MPI_Comm pc;
    MPI_Comm_dup(comm, &pc);
    int me, np;
    MPI_Comm_rank(pc, &me);
    MPI_Comm_size(pc, &np);
    run_plan plan;
    lib_plan(d, m, np, &plan);
    plan.own_keys = 1;
    plan.own_k_start = k0;
    plan.own_k_rows = kn;
    const fa_dtype t = (fa_dtype)d->dtype;
    const int bhnd = d->layout == FA_LAYOUT_BHND;
    const pipe_mem_tensor in[3] = {
        {q, t, bhnd, d->batch, d->nq, d->heads, d->head_dim, 0, d->nq},
        {k, t, bhnd, d->batch, kn, d->kv_heads, d->head_dim, k0, d->nk},
        {v, t, bhnd, d->batch, kn, d->kv_heads, d->head_dim, k0, d->nk}};
    pipe_mem_source ms;
    pipe_source src;
    pipe_source_mem(&src, &ms, in, pc, who);
    pipe_mem_sink mo = {o, (fa_dtype)d->o_dtype, bhnd, d->batch, d->nq, d->heads, d->head_dim, lse};
    pipe_sink snk;
    pipe_sink_mem(&snk, &mo, root >= 0 ? root : 0);
    progress pg;
    progress_init(&pg, 0, 1, 1.0, 0);
    pipeline_stats st;
    int rc = pipeline_run(&plan, pc, &src, &snk, NULL, 0, &pg, &st) ? failure_code(who) : FA_OK;
    if (rc == FA_OK && root < 0 && np > 1) {
        const int64_t rows = d->batch * d->nq * d->heads;
        bcast_bytes(o, rows * d->head_dim * fa_dtype_size(mo.o_type), pc);
        int with_lse = lse != NULL;
        MPI_Allreduce(MPI_IN_PLACE, &with_lse, 1, MPI_INT, MPI_MIN, pc);
        if (with_lse) bcast_bytes(lse, rows * (int64_t)sizeof(float), pc);
    }
    pipe_source_mem_free(&ms);
    MPI_Comm_free(&pc);
    fa_library_call = outer;
    return rc;
}

static void finalize_at_exit(void) {
    int down = 0;
    MPI_Finalized(&down);
    if (!down) MPI_Finalize();
}

/* The process's environment, copied (NULL-terminated "NAME=value" strings), and put back:
 * variables added since are removed, changed or removed ones set again as they were. */
extern char **environ;
static char *env_dup(const char *x) {
    const size_t n = strlen(x) + 1;
    return memcpy(fa_malloc(n, "environment copy"), x, n);
}

static char **env_save(void) {
    int n = 0;
    while (environ && environ[n]) n++;
    char **c = fa_calloc((size_t)n + 1, sizeof *c, "environment copy");
    for (int i = 0; i < n; i++) c[i] = env_dup(environ[i]);
    return c;
}

static int env_has(char **list, const char *entry) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], entry)) return 1;
    return 0;
}

static void env_restore(char **before) {
    int n = 0;
    while (environ && environ[n]) n++;
    char **now = fa_calloc((size_t)n + 1, sizeof *now, "environment copy");
    for (int i = 0; i < n; i++) now[i] = env_dup(environ[i]);
    for (int i = 0; now[i]; i++)               /* added or changed: away */
        if (!env_has(before, now[i])) {
            char *eq = strchr(now[i], '=');
            if (eq) *eq = 0;
            unsetenv(now[i]);
        }
    for (int i = 0; before[i]; i++) {          /* removed or changed: back */
        char *eq = strchr(before[i], '=');
        if (!eq || env_has(now, before[i])) continue;
        *eq = 0;
        setenv(before[i], eq + 1, 1);
        *eq = '=';
    }
    for (int i = 0; now[i]; i++) free(now[i]);
    for (int i = 0; before[i]; i++) free(before[i]);
    free(now);
    free(before);
}

/* MPI up for the pipeline's communicators: the caller's, or started here (and finalized at
 * exit) when the caller has none; FA_EMPI after the caller finalized it. */
static int mpi_ready(const char *who) {
    int up = 0, down = 0;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (down) {
        fa_seterr("fa_long: %s: MPI was finalized already; call it before MPI_Finalize", who);
        return FA_EMPI;
    }
    if (up) return FA_OK;
    /* started here: a process of its own (no singleton daemon, shared-memory transports), and
     * the caller's environment given back as it was. Open MPI's MPI_Init puts its own variables
     * into it (OMPI_MCA_ess=singleton, PMIx's, ...); a later mpirun started from this process
     * (Python's os.system, subprocess without env) would take them and exit 1 without a word. */
    char **before = env_save();
    setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
    setenv("OMPI_MCA_pml", "ob1", 0);
    int provided;
    const int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    env_restore(before);
    if (rc != MPI_SUCCESS) {
        fa_seterr("fa_long: %s: MPI could not be initialized (MPI_Init_thread)", who);
        return FA_EMPI;
    }
    atexit(finalize_at_exit);
    return FA_OK;
}

int fa_attention(const fa_attn_desc *d, const void *q, const void *k, const void *v, void *o,
                 float *lse) {
    attn_mask m;
    int rc = validate(d, &m);
    if (rc) return rc;
    if (!q || !k || !v || !o)
        return EINVAL("fa_long: fa_attention: %s is NULL", !q ? "q" : !k ? "k" : !v ? "v" : "o");
    if ((rc = mpi_ready("fa_attention"))) return rc;
    return run(MPI_COMM_SELF, "fa_attention", d, &m, q, k, v, 0, d->nk, o, lse, -1);
}

/* A fingerprint of what every rank must agree on (the descriptor's values, not its pointers). */
static uint64_t desc_print(const fa_attn_desc *d) {
    int64_t v[19] = {d->batch, d->nq, d->nk, d->heads, d->kv_heads, d->head_dim, d->layout, d->dtype,
                     d->causal, d->window_left, d->window_right, d->ndocs, d->doc_rows,
                     d->alibi_slopes != NULL, d->mode, d->o_dtype, d->chunk, d->tile_rows,
                     d->tile_keys};
    double f[2] = {d->scale, d->softcap};
    return fa_fnv1a(fa_fnv1a(FA_FNV_START, v, sizeof v), f, sizeof f);
}

static int cmp_run(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

int fa_attention_mpi(MPI_Comm comm, const fa_attn_desc *d, const void *q, const void *k,
                     const void *v, int64_t k_start, int64_t k_rows, void *o, float *lse,
                     int root) {
    int init = 0, me = 0, np = 1;
    MPI_Initialized(&init);
    if (!init) {
        fa_seterr("fa_long: fa_attention_mpi: MPI is not initialized (MPI_Init first)");
        return FA_EMPI;
    }
    MPI_Comm_rank(comm, &me);
    MPI_Comm_size(comm, &np);
    attn_mask m;
    int rc = validate(d, &m);
    if (!rc && (!q || (k_rows > 0 && (!k || !v)) || ((root < 0 || me == root) && !o)))
        rc = EINVAL("fa_long: fa_attention_mpi: %s is NULL on rank %d",
                    !q ? "q" : (k_rows > 0 && !k) ? "k" : (k_rows > 0 && !v) ? "v" : "o", me);
    if (!rc && (k_start < 0 || k_rows < 0 || k_start + k_rows > d->nk))
        rc = EINVAL("fa_long: fa_attention_mpi: rank %d's keys [%lld, %lld) are outside [0, %lld)",
                    me, (long long)k_start, (long long)(k_start + k_rows), (long long)d->nk);
    if (!rc && root >= np)
        rc = EINVAL("fa_long: fa_attention_mpi: root %d is not a rank of the communicator (%d "
                    "ranks)", root, np);
    /* the same job on every rank, and shards that cover [0, Nk) once */
    uint64_t mine = d ? desc_print(d) : 0, lo = 0, hi = 0;
    MPI_Allreduce(&mine, &lo, 1, MPI_UINT64_T, MPI_MIN, comm);
    MPI_Allreduce(&mine, &hi, 1, MPI_UINT64_T, MPI_MAX, comm);
    if (!rc && lo != hi)
        rc = EINVAL("fa_long: fa_attention_mpi: the descriptors differ between the ranks "
                    "(rank %d's among them)", me);
    int64_t run_mine[2] = {k_start, k_rows}, *all = fa_malloc(sizeof(int64_t) * 2 * (size_t)np, "shards");
    MPI_Allgather(run_mine, 2, MPI_INT64_T, all, 2, MPI_INT64_T, comm);
    qsort(all, (size_t)np, 2 * sizeof(int64_t), cmp_run);
    int64_t at = 0;
    for (int r = 0; r < np && !rc; r++) {
        if (all[2 * r + 1] == 0) continue;
        if (all[2 * r] != at)
            rc = EINVAL("fa_long: fa_attention_mpi: the ranks' shards leave a gap or overlap at key "
                        "%lld (a shard starts at %lld)", (long long)at, (long long)all[2 * r]);
        at = all[2 * r] + all[2 * r + 1];
    }
    free(all);
    if (!rc && d && at != d->nk)
        rc = EINVAL("fa_long: fa_attention_mpi: the ranks' shards cover keys [0, %lld) of nk %lld",
                    (long long)at, (long long)d->nk);
    if (fa_agree(comm, rc, -1)) return rc ? rc : FA_EINVAL;
    return run(comm, "fa_attention_mpi", d, &m, q, k, v, k_start, k_rows, o, lse, root);
}
