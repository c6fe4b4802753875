/* crc32.c — CRC-32 as zlib computes it (base/crc32.h), through Debian's libdeflate where the
 * system has its shared library (libdeflate_crc32: ~11 GB/s a thread on this project's 2-core VM,
 * against ~3 GB/s for zlib 1.2.13's crc32, bench/NOTES_WHOLEJOB.md), else zlib's own. The two
 * give the same values (libdeflate documents its crc32 as zlib's; checked once here on a fixed
 * buffer before it is used), so digests recorded by one build are compared by any other. The
 * library is opened at run time, so a build needs no more than zlib's headers and a machine
 * without libdeflate keeps working; FA_CRC32=zlib keeps zlib's. */
#define _GNU_SOURCE
#include "base/crc32.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

typedef uint32_t (*crc_fn)(uint32_t crc, const void *buf, size_t len);
static crc_fn fast;
static const char *impl = "zlib";
static pthread_once_t once = PTHREAD_ONCE_INIT;

static uint32_t crc_zlib(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
    uLong c = crc;
    while (len > 0) {                /* zlib takes uInt lengths */
        const uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
        c = crc32(c, p, n);
        p += n, len -= n;
    }
    return (uint32_t)c;
}

static void pick(void) {
    const char *e = getenv("FA_CRC32");
    if (e && !strcmp(e, "zlib")) return;
    void *h = dlopen("libdeflate.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    crc_fn f = (crc_fn)dlsym(h, "libdeflate_crc32");
    unsigned char t[1031];
    for (int i = 0; i < (int)sizeof t; i++) t[i] = (unsigned char)(i * 131 + 7);
    if (f && f(0, t, sizeof t) == crc_zlib(0, t, sizeof t) &&
        f(0x12345678u, t + 3, 517) == crc_zlib(0x12345678u, t + 3, 517)) {
        fast = f;
        impl = "libdeflate";
    } else dlclose(h);
}

uint32_t fa_crc32(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&once, pick);
    return fast ? fast(crc, buf, len) : crc_zlib(crc, buf, len);
}

const char *fa_crc32_impl(void) {
    pthread_once(&once, pick);
    return impl;
}
