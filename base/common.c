/* common.c — error reporting, allocation and timing shared by every part. */
#define _GNU_SOURCE
#include "common.h"
#include <mpi.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <ctype.h>
#include <omp.h>
#include <sched.h>
#include <stdlib.h>

int fa_rank = 0, fa_nranks = 1;
int fa_mpi_thread_multiple = 0;
fa_threads_info fa_threads = {1, 1, 1, "node share"};
int fa_verbosity = 1;

static _Thread_local char errbuf[1024];   /* each thread its own: the I/O thread's tasks */
static char cleanup_path[4096];

int fa_seterr(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return -1;
}
const char *fa_errmsg(void) { return errbuf; }
void fa_clearerr(void) { errbuf[0] = 0; }

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

void *fa_malloc(size_t bytes, const char *what) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) fa_fail("out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}
void *fa_calloc(size_t n, size_t size, const char *what) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) fa_fail("out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

void *fa_aligned_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
        fa_fail("out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void fa_copy_floats(float *dst, const float *src, int64_t n, int add) {
    const int64_t step = (int64_t)1 << 18;
#pragma omp parallel for schedule(static) if (n > step)
    for (int64_t x = 0; x < n; x += step) {
        const int64_t y = n - x < step ? n : x + step;
        if (!add) memcpy(dst + x, src + x, sizeof(float) * (size_t)(y - x));
        else for (int64_t i = x; i < y; i++) dst[i] += src[i];
    }
}

/* One rank's fair share of the CPUs it may run on: each CPU in its affinity mask counts 1/k, k
 * the node's ranks whose masks hold it. Unbound ranks (mpirun --bind-to none) split the node
 * evenly; ranks bound to their own cores keep them. */
int fa_threads_setup(int requested, const char *omp_env) {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, fa_rank, MPI_INFO_NULL, &node);
    int nr, me;
    MPI_Comm_size(node, &nr);
    MPI_Comm_rank(node, &me);
    cpu_set_t mine;
    CPU_ZERO(&mine);
    if (sched_getaffinity(0, sizeof mine, &mine) != 0)
        for (int c = 0; c < CPU_SETSIZE && c < sysconf(_SC_NPROCESSORS_ONLN); c++) CPU_SET(c, &mine);
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
    const char *why = requested > 0 ? "--threads" : env && *env ? "OMP_NUM_THREADS" : "node share";
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
                why, cpus / nr > 0 ? cpus / nr : 1);
    }
    fa_threads = (fa_threads_info){t, nr, cpus, why};
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
