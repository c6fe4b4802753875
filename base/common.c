/* common.c — error reporting, allocation and timing shared by every part. */
#define _GNU_SOURCE
#include "common.h"
#include "affinity.h"
#include <mpi.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <ctype.h>
#include <omp.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>

int fa_rank = 0, fa_nranks = 1;
int fa_mpi_thread_multiple = 0;
fa_threads_info fa_threads = {1, 1, 1, "node share", 1, 1, 1, "online CPUs", 0, "none"};
int fa_verbosity = 1;

static _Thread_local char errbuf[1024];   /* each thread its own: the I/O thread's tasks */
static _Thread_local int errkind;          /* FA_ERR_* of errbuf's line */
int fa_library_call = 0;
static char cleanup_path[4096];

int fa_seterr(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    errkind = FA_ERR_INPUT;
    return -1;
}
const char *fa_errmsg(void) { return errbuf; }
void fa_clearerr(void) { errbuf[0] = 0; errkind = FA_ERR_INPUT; }
int fa_set_errkind(int kind) { errkind = kind; return -1; }
int fa_errkind(void) { return errkind; }

static void (*fail_hooks[8])(void);
static int nfail_hooks;
void fa_on_fail(void (*fn)(void)) {
    if (nfail_hooks < 8) fail_hooks[nfail_hooks++] = fn;
}

void fa_set_cleanup_path(const char *path) {
    if (path) snprintf(cleanup_path, sizeof cleanup_path, "%s", path);
    else cleanup_path[0] = 0;
}

void fa_fail(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fa_long: rank %d: %s\n", fa_rank, msg);
    fflush(stderr);
    if (cleanup_path[0]) unlink(cleanup_path);
    for (int i = 0; i < nfail_hooks; i++) fail_hooks[i]();   /* e.g. the output's lock file */
    int up = 0, down = 0;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (up && !down) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

int fa_report_error(void) {
    if (fa_rank == 0) {
        fprintf(stderr, "fa_long: %s\n", errbuf);
        fflush(stderr);
    }
    return 2;
}

void fa_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fa_long: warning: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

void fa_log(int level, const char *fmt, ...) {
    if (fa_rank != 0 || level > fa_verbosity) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* A failed allocation: the command ends (fa_fail); a library call's fa_try_* gets NULL and the
 * line, its kind FA_ERR_NOMEM (soft: the caller passes it up). The first such line stays until
 * the error is cleared (a set-up that tries its buffers one after another names the first). */
static void *out_of_memory(int soft, const char *line) {
    if (!soft || !fa_library_call) fa_fail("%s", line);
    if (fa_errkind() != FA_ERR_NOMEM) {
        fa_seterr("fa_long: %s", line);
        fa_set_errkind(FA_ERR_NOMEM);
    }
    return NULL;
}

static void *alloc_plain(size_t bytes, const char *what, int soft) {
    void *p = malloc(bytes ? bytes : 1);
    if (p) return p;
    char line[256];
    snprintf(line, sizeof line, "out of memory allocating %zu bytes for %s", bytes, what);
    return out_of_memory(soft, line);
}
static void *alloc_zeroed(size_t n, size_t size, const char *what, int soft) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p) return p;
    char line[256];
    snprintf(line, sizeof line, "out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return out_of_memory(soft, line);
}

/* Buffers of 64 MiB and more (keys, query chunks, output sets) start on a 2 MiB boundary and ask
 * for transparent huge pages: their first touch (a read landing in a fresh key buffer) then
 * faults 512 times less often. Where the kernel has none, the advice is ignored. */
static void *alloc_aligned(size_t bytes, const char *what, int soft) {
    void *p = NULL;
    const size_t huge = (size_t)2 << 20;
    const int big = bytes >= ((size_t)64 << 20);
    if (posix_memalign(&p, big ? huge : 64, bytes ? bytes : 64) != 0) {
        char line[256];
        snprintf(line, sizeof line, "out of memory allocating %zu bytes for %s", bytes, what);
        return out_of_memory(soft, line);
    }
#ifdef MADV_HUGEPAGE
    if (big) (void)madvise(p, (bytes + 4095) / 4096 * 4096, MADV_HUGEPAGE);
#endif
    return p;
}

void *fa_malloc(size_t bytes, const char *what) { return alloc_plain(bytes, what, 0); }
void *fa_calloc(size_t n, size_t size, const char *what) { return alloc_zeroed(n, size, what, 0); }
void *fa_aligned_alloc(size_t bytes, const char *what) { return alloc_aligned(bytes, what, 0); }
void *fa_try_malloc(size_t bytes, const char *what) { return alloc_plain(bytes, what, 1); }
void *fa_try_calloc(size_t n, size_t size, const char *what) { return alloc_zeroed(n, size, what, 1); }
void *fa_try_aligned_alloc(size_t bytes, const char *what) { return alloc_aligned(bytes, what, 1); }

void fa_copy_floats(float *dst, const float *src, int64_t n, int add) {
    const int64_t step = (int64_t)1 << 18;
#pragma omp parallel for schedule(static) if (n > step)
    for (int64_t x = 0; x < n; x += step) {
        const int64_t y = n - x < step ? n : x + step;
        if (!add) memcpy(dst + x, src + x, sizeof(float) * (size_t)(y - x));
        else for (int64_t i = x; i < y; i++) dst[i] += src[i];
    }
}

const char *const fa_threads_whys[5] = {
    "--threads", "OMP_NUM_THREADS", "node share", "node share (launcher's default binding widened)",
    "explicit binding"};
enum { WHY_OPTION, WHY_ENV, WHY_SHARE, WHY_WIDENED, WHY_EXPLICIT };

/* What a binding that confines ranks costs, and the way out, in one line (rank 0). how: what set
 * it; r: a confined rank's facts; n of fa_nranks ranks are confined. */
static void say_confined(const fa_binding *b, const char *how, const fa_rank_threads *r, int n) {
    char who[64], fix[160];
    if (n == fa_nranks) snprintf(who, sizeof who, "%s", n == 1 ? "the rank" : "each rank");
    else snprintf(who, sizeof who, "%d of %d ranks", n, fa_nranks);
    if (b->launcher == FA_LAUNCHER_OMPI)
        snprintf(fix, sizeof fix, "pass --bind-to none (or --map-by slot:PE=%d)", r->share);
    else if (b->launcher == FA_LAUNCHER_SLURM)
        snprintf(fix, sizeof fix, "pass srun --cpu-bind=none (or --cpus-per-task=%d)", r->share);
    else
        snprintf(fix, sizeof fix, "start it with an affinity of %d CPUs a rank (or none)", r->share);
    fa_warn("%s confines %s to %d CPU%s of the %d %s share of the node would give; host "
            "conversions and reads run on %d CPU%s a rank: %s for full speed", how, who,
            r->cpus, r->cpus == 1 ? "" : "s", r->share, n == 1 ? "its" : "their", r->cpus,
            r->cpus == 1 ? "" : "s", fix);
}

/* One rank's fair share of the CPUs it may run on: each CPU in its affinity mask counts 1/k, k
 * the node's ranks whose masks hold it. Unbound ranks (mpirun --bind-to none) split the node
 * evenly; ranks bound to their own cores keep them. Before the count, a rank that the launcher's
 * default binding left on fewer CPUs than its share of what the node allows gets its own slice:
 * Open MPI binds 1 or 2 ranks to a core each unless told --bind-to none, which would leave a
 * 16-core node's host work (conversions, reads) on one thread. */
int fa_threads_setup(int requested, const char *omp_env, const fa_binding *launch) {
    static const fa_binding unbound = {FA_BIND_NONE, FA_LAUNCHER_OTHER, "none"};
    const fa_binding *b = launch ? launch : &unbound;
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, fa_rank, MPI_INFO_NULL, &node);
    int nr, me;
    MPI_Comm_size(node, &nr);
    MPI_Comm_rank(node, &me);
    cpu_set_t mine, allowed;
    CPU_ZERO(&mine);
    const char *allowed_from;
    int navail = fa_cpus_allowed(&allowed, &allowed_from);
    if (sched_getaffinity(0, sizeof mine, &mine) != 0) mine = allowed;
    const int share_cpus = navail / nr > 0 ? navail / nr : 1;
    int confined = CPU_COUNT(&mine) < share_cpus, widened = 0;
    static char how[sizeof b->how];
    snprintf(how, sizeof how, "%s", b->how);
    const char *binding = how;
    if (confined && b->kind == FA_BIND_DEFAULT) {
        cpu_set_t slice;
        fa_cpus_slice(&allowed, me, nr, &slice);
        if (sched_setaffinity(0, sizeof slice, &slice) == 0 &&
            sched_getaffinity(0, sizeof mine, &mine) == 0) {
            widened = 1;
            confined = CPU_COUNT(&mine) < share_cpus;
            snprintf(how, sizeof how, "%.100s, widened to the rank's share", b->how);
        }
    } else if (b->kind == FA_BIND_NONE) {
        cpu_set_t common;
        CPU_AND(&common, &mine, &allowed);
        if (!CPU_EQUAL(&common, &allowed))   /* narrowed before we started: taskset, numactl */
            binding = "the affinity it was started with (taskset, numactl or its launcher)";
    }
    cpu_set_t *all = fa_malloc(sizeof(cpu_set_t) * (size_t)nr, "affinity masks");
    MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all, sizeof mine, MPI_BYTE, node);
    double share = 0;
    int cpus = 0;   /* CPUs any rank of the node may use */
    for (int c = 0; c < CPU_SETSIZE; c++) {
        int k = 0;
        for (int r = 0; r < nr; r++) k += CPU_ISSET(c, &all[r]) != 0;
        cpus += k > 0;
        if (CPU_ISSET(c, &mine)) share += 1.0 / k;
    }
    free(all);
    const char *env = omp_env;
    const int why = requested > 0 ? WHY_OPTION : env && *env ? WHY_ENV : widened ? WHY_WIDENED
                  : confined && b->kind != FA_BIND_DEFAULT ? WHY_EXPLICIT : WHY_SHARE;
    int t = requested > 0 ? requested : env && *env ? omp_get_max_threads() : (int)(share + 1e-9);
    if (t < 1) t = 1;
    omp_set_num_threads(t);
    int sum = 0, most = 0;
    MPI_Allreduce(&t, &sum, 1, MPI_INT, MPI_SUM, node);
    MPI_Allreduce(&t, &most, 1, MPI_INT, MPI_MAX, node);
    MPI_Comm_free(&node);
    /* one thread a rank on too few CPUs is the rank count's choice; several threads a rank on
     * shared CPUs make every OpenMP barrier wait on a descheduled thread */
    if (me == 0 && most > 1 && sum > cpus) {
        char host[256] = "";
        gethostname(host, sizeof host - 1);
        fa_warn("%d ranks on %s run %d OpenMP threads on %d CPUs (%s): oversubscribed, host work "
                "slows; unset OMP_NUM_THREADS to share the CPUs (%d a rank)", nr, host, sum, cpus,
                fa_threads_whys[why], cpus / nr > 0 ? cpus / nr : 1);
    }
    fa_threads = (fa_threads_info){t, nr, cpus, fa_threads_whys[why], CPU_COUNT(&mine),
                                   share_cpus, navail, allowed_from, confined, binding};
    /* a binding that was asked for stays; rank 0 says once what it costs */
    fa_rank_threads *every = fa_threads_gather();
    int n = 0, first = -1;
    for (int r = 0; every && r < fa_nranks; r++)
        if (every[r].confined) n++, first = first < 0 ? r : first;
    if (n) say_confined(b, binding, &every[first], n);
    free(every);
    return t;
}

/* Optimal string alignment distance of a[0..n) and b[0..m) (both cut at 63 characters). */
static int osa_distance(const char *a, size_t n, const char *b, size_t m) {
    enum { L = 64 };
    int d[L][L];
    if (n >= L) n = L - 1;
    if (m >= L) m = L - 1;
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int cost = a[i - 1] != b[j - 1], v = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1 < v) v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[n][m];
}

const char *fa_closest(const char *word, size_t len, const char *const *names, int n) {
    int limit = (int)(len / 3) < 1 ? 1 : (int)(len / 3) > 2 ? 2 : (int)(len / 3);
    int best = limit + 1, ties = 0;
    const char *pick = NULL;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        int d = osa_distance(word, len, names[i], nl);
        if (d >= (int)nl) continue;              /* "--x" is not a typo of "-n" */
        if (d < best) best = d, pick = names[i], ties = 0;
        else if (d == best) ties++;
    }
    return ties ? NULL : pick;
}

fa_rank_threads *fa_threads_gather(void) {
    int why = WHY_SHARE;
    for (int i = 0; i < 5; i++)
        if (!strcmp(fa_threads.why, fa_threads_whys[i])) why = i;
    int mine[5] = {fa_threads.threads, fa_threads.cpus, fa_threads.share, fa_threads.confined, why};
    int *all = fa_rank == 0 ? fa_malloc(sizeof(int) * 5 * (size_t)fa_nranks, "thread facts") : NULL;
    MPI_Gather(mine, 5, MPI_INT, all, 5, MPI_INT, 0, MPI_COMM_WORLD);
    if (fa_rank != 0) return NULL;
    fa_rank_threads *r = fa_malloc(sizeof *r * (size_t)fa_nranks, "thread facts");
    for (int k = 0; k < fa_nranks; k++)
        r[k] = (fa_rank_threads){all[5 * k], all[5 * k + 1], all[5 * k + 2], all[5 * k + 3],
                                 fa_threads_whys[all[5 * k + 4]]};
    free(all);
    return r;
}

uint64_t fa_fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

int fa_node_cpus(void) {
    cpu_set_t mine;
    CPU_ZERO(&mine);
    if (sched_getaffinity(0, sizeof mine, &mine) != 0) return (int)sysconf(_SC_NPROCESSORS_ONLN);
    int n = CPU_COUNT(&mine);
    return n > 0 ? n : 1;
}

double fa_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int64_t fa_parse_size(const char *s) {
    if (!s || !*s) return -1;
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: return -1;
    }
    if (*end == 'i' || *end == 'I') end++;       /* accept KiB-style "Ki" */
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    double r = v * mul;
    if (r > 9.0e18 || r != (double)(int64_t)r) return r > 9.0e18 ? -1 : (int64_t)r;
    return (int64_t)r;
}
