/* read_rate.c — fa_long's key reads from the page cache, fused (io/h5in.c: read_fused, each run
 * read, hashed, scanned and widened as it lands) against the separate passes (FA_FUSED_READ=0:
 * pread of the transfer, then the digests' pass, the finite scan's, the widening's). k and v of
 * every batch element are read as the pipeline reads keys, in blocks of ROWS rows (default: all)
 * with the finite check on, in two ways: kept in the file's type (the GPU's typed transfers) and
 * widened to float32 (the CPU engine's). bench/read_rate.sh makes the file and runs this beside
 * build/bench/page_cache_read.
 *
 *   build/bench/read_rate FILE [REPEATS] [ROWS]
 *
 * Validation first: both paths give the same rows, digests and largest |x|. Then each (way,
 * path) is timed REPEATS times (best kept), alternating, so both see the same page cache; the
 * destination is touched first, so no page faults are timed; one more row reads fused into a
 * destination allocated fresh each time (fa_aligned_alloc, as the pipeline allocates its key
 * shard), so its page faults are timed. Out: a '#'-headed table, one row
 * per (way, path): way, path, GB read (as stored), best s, GB/s; and zlib's crc32 rate on one
 * thread (the digests' hash, which the fused read cannot go faster than per thread). */
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/h5io.h"                 /* h5in_open, h5in_read_rows_as, h5in_fused_reads */
#include "base/common.h"             /* fa_now, fa_malloc, fa_fail */
#include <zlib.h>                    /* crc32: the digests' hash, timed alone */
#include "base/crc32.h"              /* fa_crc32: the one the digests run */

/* crc32 on one thread over a 512 KiB buffer in cache, in rows of row_bytes (as the digests call
 * it): zlib's own (fast = 0) or fa_crc32 (base/crc32.c: libdeflate's where the machine has it);
 * GB/s, best of 5. */
static double crc32_rate(int64_t row_bytes, int fast) {
    const int64_t n = (512 << 10) / row_bytes * row_bytes, loops = 200;
    unsigned char *x = fa_malloc((size_t)n, "crc32 buffer");
    for (int64_t i = 0; i < n; i++) x[i] = (unsigned char)(i * 2654435761u >> 13);
    double best = 1e30;
    uLong c = 0;
    for (int r = 0; r < 5; r++) {
        const double t0 = fa_now();
        for (int64_t k = 0; k < loops; k++)
            for (int64_t o = 0; o < n; o += row_bytes)
                c += fast ? fa_crc32((uint32_t)c, x + o, (size_t)row_bytes) : crc32(c, x + o, (uInt)row_bytes);
        const double t = fa_now() - t0;
        if (t < best) best = t;
    }
    free(x);
    return c == 1 ? 0 : (double)(n * loops) / best * 1e-9;    /* c used: the loop stays */
}

/* Every row of k and v of every batch element into buf ([B][N][Hkv*D] each, k then v) in
 * blocks of `rows`, as type `as`; seconds taken, and the digests into d. */
static double read_kv(h5in *in, const fa_shape *s, fa_dtype as, int64_t rows, char *buf,
                      uint64_t d[3]) {
    const int64_t row_bytes = s->Hkv * s->D * fa_dtype_size(as), per = s->B * s->Nk * row_bytes;
    h5in_take_digests(in, d);
    const double t0 = fa_now();
    for (int i = 1; i < 3; i++)
        for (int64_t b = 0; b < s->B; b++)
            for (int64_t r = 0; r < s->Nk; r += rows) {
                row_range rr = {r, s->Nk - r < rows ? s->Nk - r : rows};
                char *dst = buf + (i - 1) * per + (b * s->Nk + r) * row_bytes;
                if (h5in_read_rows_as(in, i == 1 ? "k" : "v", b, &rr, 1, dst, as, 1))
                    fa_fail("reading: %s", fa_errmsg());
            }
    const double t = fa_now() - t0;
    h5in_take_digests(in, d);
    return t;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [REPEATS] [ROWS]\n", argv[0]);
        return 2;
    }
    const int reps = argc > 2 ? atoi(argv[2]) : 5;
    h5in *in;
    fa_shape s;
    if (h5in_open(argv[1], NULL, MPI_COMM_WORLD, 0, &in, &s)) fa_fail("%s", fa_errmsg());
    const int64_t rows = argc > 3 ? atoll(argv[3]) : s.Nk;
    const fa_dtype ways[2] = {h5in_native_type(in, 1), FA_F32};
    const int64_t n = 2 * s.B * s.Nk * s.Hkv * s.D, stored = n * fa_dtype_size(s.k_type);
    char *buf[2] = {fa_malloc((size_t)n * 4, "fused rows"), fa_malloc((size_t)n * 4, "separate rows")};
    memset(buf[0], 1, (size_t)n * 4), memset(buf[1], 1, (size_t)n * 4);   /* faulted in */
    for (int w = 0; w < 2; w++) {                      /* validation before timing */
        uint64_t d[2][3];
        float m[2];
        for (int p = 0; p < 2; p++) {
            h5in_fused_reads(in, !p);
            read_kv(in, &s, ways[w], rows, buf[p], d[p]);
            m[p] = h5in_last_absmax(in, "v");
        }
        if (memcmp(buf[0], buf[1], (size_t)(n * fa_dtype_size(ways[w]))) || d[0][1] != d[1][1] ||
            d[0][2] != d[1][2] || m[0] != m[1])
            fa_fail("read as %s: the fused read's rows, digests or largest |x| differ from the "
                    "separate passes'", fa_dtype_name(ways[w]));
    }
    double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}};
    for (int r = 0; r < reps; r++)
        for (int w = 0; w < 2; w++)
            for (int p = 0; p < 2; p++) {
                uint64_t d[3];
                h5in_fused_reads(in, !p);
                const double t = read_kv(in, &s, ways[w], rows, buf[p], d);
                if (t < best[w][p]) best[w][p] = t;
            }
    double fresh = 1e30;            /* kept as stored, fused, into a buffer never touched */
    for (int r = 0; r < reps; r++) {
        uint64_t d[3];
        h5in_fused_reads(in, 1);
        char *f = fa_aligned_alloc((size_t)(n * fa_dtype_size(ways[0])), "fresh rows");
        const double t = read_kv(in, &s, ways[0], rows, f, d);
        free(f);
        if (t < fresh) fresh = t;
    }
    printf("# B=%lld Nk=%lld Hkv=%lld D=%lld %s: k and v in blocks of %lld rows, finite check "
           "on, %d threads, best of %d, validated (same rows, digests, largest |x|)\n",
           (long long)s.B, (long long)s.Nk, (long long)s.Hkv, (long long)s.D,
           fa_dtype_name(s.k_type), (long long)rows, omp_get_max_threads(), reps);
    printf("# zlib crc32 on one thread, rows of %lld bytes in cache: %.2f GB/s\n",
           (long long)(s.Hkv * s.D * fa_dtype_size(s.k_type)),
           crc32_rate(s.Hkv * s.D * fa_dtype_size(s.k_type), 0));
    printf("# fa_crc32 (%s) on one thread, rows of %lld bytes in cache: %.2f GB/s\n", fa_crc32_impl(),
           (long long)(s.Hkv * s.D * fa_dtype_size(s.k_type)),
           crc32_rate(s.Hkv * s.D * fa_dtype_size(s.k_type), 1));
    printf("# %-8s %-9s %8s %8s %8s\n", "as", "path", "GB", "best_s", "GB/s");
    for (int w = 0; w < 2; w++)
        for (int p = 0; p < 2; p++)
            printf("  %-8s %-9s %8.3f %8.4f %8.2f\n", fa_dtype_name(ways[w]), p ? "separate" : "fused",
                   stored * 1e-9, best[w][p], stored / best[w][p] * 1e-9);
    printf("  %-8s %-9s %8.3f %8.4f %8.2f\n", fa_dtype_name(ways[0]), "fresh", stored * 1e-9, fresh,
           stored / fresh * 1e-9);
    h5in_close(in);
    free(buf[0]), free(buf[1]);
    MPI_Finalize();
    return 0;
}
