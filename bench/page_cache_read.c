/* page_cache_read.c — what the host can read a file at from the page cache, the yardstick of
 * fa_long's reads (issue 22 item 6): a plain multi-threaded memcpy out of a mapping of the file,
 * and pread by the same threads in runs of 4 MiB (what fa_long's direct reads do, without its
 * digests and scan). The file is read once first so that it is in the page cache; the
 * destination is touched first so that no page faults are timed. Best of 3 each.
 *
 *   build/bench/page_cache_read FILE [THREADS]      (THREADS: default OMP_NUM_THREADS / all)
 *   prints: # bytes threads memcpy_gbps pread_gbps   and one row of figures */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "base/common.h"

#define RUN ((size_t)4 << 20)

static int pread_all(int fd, unsigned char *dst, size_t bytes) {
    const int64_t nruns = (int64_t)((bytes + RUN - 1) / RUN);
    int err = 0;
#pragma omp parallel for schedule(dynamic) reduction(max : err)
    for (int64_t i = 0; i < nruns; i++) {
        const size_t off = (size_t)i * RUN, len = bytes - off < RUN ? bytes - off : RUN;
        size_t done = 0;
        while (done < len) {
            ssize_t got = pread(fd, dst + off + done, len - done, (off_t)(off + done));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) { err = 1; break; }
            done += (size_t)got;
        }
    }
    return err;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [THREADS]\n", argv[0]);
        return 2;
    }
    if (argc > 2) omp_set_num_threads(atoi(argv[2]));
    int fd = open(argv[1], O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || sb.st_size <= 0) {
        fprintf(stderr, "page_cache_read: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    const size_t bytes = (size_t)sb.st_size;
    unsigned char *dst = fa_aligned_alloc(bytes, "destination");
    memset(dst, 1, bytes);                           /* faulted in before any timing */
    if (pread_all(fd, dst, bytes)) {                 /* the file into the page cache */
        fprintf(stderr, "page_cache_read: reading %s failed\n", argv[1]);
        return 2;
    }
    unsigned char *map = mmap(NULL, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED) {
        fprintf(stderr, "page_cache_read: mmap %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    double best_copy = 1e30, best_pread = 1e30;
    const int64_t nruns = (int64_t)((bytes + RUN - 1) / RUN);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = fa_now();
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nruns; i++) {
            const size_t off = (size_t)i * RUN, len = bytes - off < RUN ? bytes - off : RUN;
            memcpy(dst + off, map + off, len);
        }
        double t = fa_now() - t0;
        if (t < best_copy) best_copy = t;
        t0 = fa_now();
        if (pread_all(fd, dst, bytes)) return 2;
        t = fa_now() - t0;
        if (t < best_pread) best_pread = t;
    }
    printf("# bytes threads memcpy_gbps pread_gbps\n%zu %d %.3f %.3f\n", bytes, omp_get_max_threads(),
           bytes / best_copy * 1e-9, bytes / best_pread * 1e-9);
    munmap(map, bytes);
    close(fd);
    free(dst);
    return 0;
}
