/* test_crc32.c — base/crc32.c: fa_crc32 gives zlib's crc32 for every length, alignment and seed,
 * whichever implementation it runs (libdeflate's where the machine has it, else zlib's; the
 * digests --resume compares depend on it), and names the one it runs. */
#include "base/crc32.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

int main(void) {
    int bad = 0, n = 0;
    const size_t cap = (size_t)1 << 21;
    unsigned char *buf = malloc(cap + 64);
    unsigned s = 12345u + (unsigned)time(NULL);
    for (size_t i = 0; i < cap + 64; i++) buf[i] = (unsigned char)((s = s * 1103515245u + 12345u) >> 16);
    const size_t lens[] = {0, 1, 2, 3, 7, 8, 15, 16, 31, 63, 64, 65, 127, 255, 256, 1000, 2048,
                           4095, 4096, 8191, 65536, 100003, (size_t)1 << 20, cap};
    const uint32_t seeds[] = {0, 1, 0xffffffffu, 0x9e3779b9u};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
        for (int al = 0; al < 8; al += 3)
            for (int si = 0; si < 4; si++) {
                const uint32_t want = (uint32_t)crc32(seeds[si], buf + al, (uInt)lens[li]);
                const uint32_t got = fa_crc32(seeds[si], buf + al, lens[li]);
                n++;
                if (got != want) {
                    if (bad++ < 5)
                        fprintf(stderr, "len %zu align %d seed %08x: %08x, zlib %08x\n", lens[li],
                                al, seeds[si], got, want);
                }
            }
    const char *impl = fa_crc32_impl();
    if (strcmp(impl, "zlib") && strcmp(impl, "libdeflate")) {
        fprintf(stderr, "fa_crc32_impl: '%s'\n", impl);
        bad++;
    }
    /* FA_CRC32=zlib is read once, at the first call: here it must say what the test was run with */
    const char *e = getenv("FA_CRC32");
    if (e && !strcmp(e, "zlib") && strcmp(impl, "zlib")) {
        fprintf(stderr, "FA_CRC32=zlib but fa_crc32 runs %s\n", impl);
        bad++;
    }
    printf("test_crc32: %d of %d cases agree with zlib (implementation: %s)\n", n - bad, n, impl);
    free(buf);
    return bad != 0;
}
