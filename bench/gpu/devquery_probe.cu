// devquery_probe.cu — what the device queries of a job's start cost (issue 22): the context
// (cudaFree(0)), cudaGetDeviceProperties (every field), the attributes one by one, the driver's
// name/UUID/memory calls through cudaGetDriverEntryPointByVersion, and cudaMemGetInfo. Each call
// timed REPS times in one process after the context exists; prints a '#'-headed table (ms).
//   nvcc -O2 -o /tmp/devquery_probe bench/gpu/devquery_probe.cu && /tmp/devquery_probe [reps]
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

typedef int (*get_fn)(int *, int);
typedef int (*name_fn)(char *, int, int);
typedef int (*uuid_fn)(unsigned char *, int);
typedef int (*mem_fn)(size_t *, int);

static void *entry(const char *s) {
    void *f = NULL;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion(s, &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        return NULL;
    return f;
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 3;
    double t = now();
    cudaFree(0);
    printf("# call                                   first_ms   later_ms(best)\n");
    printf("  %-38s %9.2f\n", "cudaFree(0) (the context)", 1e3 * (now() - t));
#define TIMED(label, stmt)                                                               \
    do {                                                                                 \
        double first = 0, best = 1e30;                                                   \
        for (int r = 0; r < reps; r++) {                                                 \
            double a = now();                                                            \
            stmt;                                                                        \
            double d = now() - a;                                                        \
            if (r == 0) first = d; else if (d < best) best = d;                          \
        }                                                                                \
        printf("  %-38s %9.3f %9.3f\n", label, 1e3 * first, reps > 1 ? 1e3 * best : 0); \
    } while (0)
    cudaDeviceProp pr;
    TIMED("cudaGetDeviceProperties", cudaGetDeviceProperties(&pr, 0));
    int v;
    TIMED("cudaDeviceGetAttribute x3", {
        cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0);
        cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMinor, 0);
        cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0);
    });
    char name[256];
    unsigned char uu[16];
    size_t mem, fr, tot;
    TIMED("entry points + cuDeviceGetName/Uuid/Mem", {
        get_fn g = (get_fn)entry("cuDeviceGet");
        name_fn n = (name_fn)entry("cuDeviceGetName");
        uuid_fn u = (uuid_fn)entry("cuDeviceGetUuid");
        mem_fn m = (mem_fn)entry("cuDeviceTotalMem");
        int cu = 0;
        if (g && n && u && m) {
            g(&cu, 0);
            n(name, sizeof name, cu);
            u(uu, cu);
            m(&mem, cu);
        }
    });
    TIMED("cudaMemGetInfo", cudaMemGetInfo(&fr, &tot));
    printf("# %s (props) = %s (driver), %zu = %zu bytes, uuid match %d\n", pr.name, name,
           (size_t)pr.totalGlobalMem, mem, !memcmp(uu, pr.uuid.bytes, 16));
    return 0;
}
