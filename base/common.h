/* common.h — what every part of fa_long shares: version, error reporting across ranks, timing,
 * checked allocation. One checker per library lives next to the code that uses it (HDF5 in io/,
 * CUDA/NCCL in kernels/cuda and dist/); they all end in fa_fail() or return an error set here. */
#pragma once
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FA_VERSION "0.1.0"
#define FA_MAX_HEAD_DIM 256

/* Set once MPI is up (runner/main.c). Outside MPI (unit tests) they stay 0 and 1. */
extern int fa_rank, fa_nranks;
/* Whether MPI granted MPI_THREAD_MULTIPLE (runner/main.c asks for it): the pipeline's I/O thread
 * needs it. 0 outside MPI and where the library offers less. */
extern int fa_mpi_thread_multiple;

/* ---- two kinds of failure ------------------------------------------------------------------
 * 1. User errors found collectively (bad input, output exists): a function records one line with
 *    fa_seterr() and returns -1; the caller passes it up; the runner agrees on the status across
 *    ranks, rank 0 prints the line, every rank exits non-zero. No MPI_Abort, no partial output.
 * 2. Failures one rank meets alone (I/O error mid-run, out of memory, CUDA error): fa_fail()
 *    prints "fa_long: rank R: message", removes the temporary output file if one is registered,
 *    and brings every rank down with MPI_Abort, so no rank hangs in a collective.
 * 3. In a library call (lib/api.c sets fa_library_call for its duration) the caller's process
 *    must not end: the fa_try_* allocations below and the pipeline's engine calls return -1 with
 *    their line instead of calling fa_fail(), and the line's kind (fa_errkind) says which FA_E*
 *    code the call returns. Outside a library call (the command) they fa_fail() as before. */
int fa_seterr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *fa_errmsg(void);           /* last message set by fa_seterr ("" if none) */
void fa_clearerr(void);
/* What the last message is: fa_seterr and fa_clearerr make it FA_ERR_INPUT; fa_set_errkind,
 * called after fa_seterr, changes it (returns -1). fa_agree carries it to every rank. */
enum { FA_ERR_INPUT = 0, FA_ERR_NOMEM = 1, FA_ERR_MPI = 2 };
int fa_set_errkind(int kind);
int fa_errkind(void);
extern int fa_library_call;            /* 1 while lib/api.c runs a call (3. above) */
void fa_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Rank 0 prints the message set by fa_seterr as "fa_long: <message>"; returns exit status 2. */
int fa_report_error(void);
void fa_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The temporary output path that fa_fail() unlinks before aborting (NULL to clear). */
void fa_set_cleanup_path(const char *path);
/* fn runs in fa_fail() before the abort (at most 8; registered once by their owners): what
 * MPI_Abort would otherwise leave behind, such as an output's lock file. */
void fa_on_fail(void (*fn)(void));

/* Verbosity: 0 quiet, 1 normal, 2 verbose. fa_log prints on rank 0 only, to stderr. */
extern int fa_verbosity;
void fa_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void *fa_malloc(size_t bytes, const char *what);  /* fa_fail()s when out of memory */
void *fa_calloc(size_t n, size_t size, const char *what);
void *fa_aligned_alloc(size_t bytes, const char *what); /* 64-byte aligned; free() it */
/* The same, for the allocations a library call makes (the pipeline's buffers, the engines'
 * states): in a library call, NULL with the line "out of memory allocating ..." (FA_ERR_NOMEM)
 * for the caller to pass up; otherwise they fa_fail() as the ones above. */
void *fa_try_malloc(size_t bytes, const char *what);
void *fa_try_calloc(size_t n, size_t size, const char *what);
void *fa_try_aligned_alloc(size_t bytes, const char *what);
/* dst[i] = src[i] (add = 0) or dst[i] += src[i] (add = 1) for n floats, in 1 MiB pieces over the
 * OpenMP threads: host copies of whole chunks (staging, pinned buffers) at memory speed */
void fa_copy_floats(float *dst, const float *src, int64_t n, int add);

double fa_now(void);   /* monotonic seconds */

/* How the process's CPU affinity was set at launch, as the launcher's environment tells. */
typedef enum {
    FA_BIND_NONE = 0,      /* no launcher binding known (mpirun --bind-to none, no launcher) */
    FA_BIND_DEFAULT,       /* the launcher's own default (Open MPI binds 1-2 ranks to a core) */
    FA_BIND_EXPLICIT       /* asked for: mpirun --bind-to/--map-by ...:PE=/--cpu-set/--rankfile,
                            * hwloc_base_binding_policy, srun --cpu-bind */
} fa_bind_kind;
typedef enum { FA_LAUNCHER_OTHER = 0, FA_LAUNCHER_OMPI, FA_LAUNCHER_SLURM } fa_launcher;
typedef struct fa_binding {
    fa_bind_kind kind;
    fa_launcher launcher;
    char how[160];         /* for messages and the report: "mpirun --bind-to core", "none", ... */
} fa_binding;

/* OpenMP threads for this rank, set with omp_set_num_threads: `requested` (--threads) if > 0,
 * else OMP_NUM_THREADS if set (main passes its value), else this rank's share of its node's CPUs.
 * Before that, a rank that the launcher's default binding (`launch`, from the launcher's
 * environment: runner/plan.c) confined to fewer CPUs than its share (the CPUs the node allows it,
 * affinity.h, over its ranks there) is widened to its own slice of them; an explicit binding is
 * kept, and rank 0 says in one line what it costs. Collective over MPI_COMM_WORLD; call it before
 * any OpenMP region (threads take the mask they are created with); fills fa_threads. Node rank 0
 * warns when several threads a rank oversubscribe the node. */
typedef struct {
    int threads, node_ranks, node_cpus;
    const char *why;   /* one of fa_threads_whys[]: "--threads", "OMP_NUM_THREADS", "node share", ... */
    int cpus;          /* CPUs in this rank's affinity mask (after any widening) */
    int share;         /* its share of the node: CPUs the node allows / its ranks there (>= 1) */
    int allowed;       /* CPUs the node allows the process (cgroup cpuset, else online) */
    const char *allowed_from;   /* "cgroup cpuset" or "online CPUs" */
    int confined;      /* 1: kept on fewer CPUs than its share (a binding asked for) */
    const char *binding;        /* how its affinity was set: "none", "mpirun --bind-to core", ... */
} fa_threads_info;
extern const char *const fa_threads_whys[5];
int fa_threads_setup(int requested, const char *omp_num_threads, const fa_binding *launch);
/* "Did you mean": the name among names[0..n) closest to word[0..len) by edit distance (optimal
 * string alignment: insertions, deletions, substitutions, adjacent transpositions), or NULL when
 * none is within max(1, len/3) edits (at most 2), or two are equally close. Options and commands
 * (runner/cli.c, main.c), dataset paths (io/h5io.c). */
const char *fa_closest(const char *word, size_t len, const char *const *names, int n);
/* COLLECTIVE over MPI_COMM_WORLD: every rank's thread facts, on rank 0 (fa_nranks entries, to
 * free; NULL on the other ranks), for the report. */
typedef struct { int threads, cpus, share, confined; const char *why; } fa_rank_threads;
fa_rank_threads *fa_threads_gather(void);
/* FNV-1a of n bytes continuing from h (start: FA_FNV_START): fingerprints, not security. */
#define FA_FNV_START 1469598103934665603ull
uint64_t fa_fnv1a(uint64_t h, const void *p, size_t n);
/* CPUs this process may run on (its affinity mask; the online CPUs where it has none). Local. */
int fa_node_cpus(void);
extern fa_threads_info fa_threads;

/* "4K" -> 4096, "1.5M" -> 1572864, "2G" -> 2^31. Returns -1 on a malformed size. */
int64_t fa_parse_size(const char *s);

#ifdef __cplusplus
}
#endif
