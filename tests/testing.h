/* testing.h — what the C unit tests share: one check() that prints PASS/FAIL lines and counts
 * them, the closing "N passed, N failed" line, and a seeded generator for fresh random inputs
 * (the seed is printed; FA_TEST_SEED=N repeats a run). Header-only: each test file is a program. */
#pragma once
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int npass, nfail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3), unused));
static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s  ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok) npass++; else nfail++;
}

/* CHECK(cond, fmt, ...): counted like check(); silent when it holds, a FAIL line with the file and
 * line when not (for tests that make many checks in loops). */
static void check_at(int ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), unused));
static void check_at(int ok, const char *file, int line, const char *fmt, ...) {
    if (ok) { npass++; return; }
    nfail++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s:%d: ", file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}
#define CHECK(cond, ...) check_at((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)

/* Prints the closing line; the program's exit status. */
static __attribute__((unused)) int tests_done(void) {
    printf("%d passed, %d failed\n", npass, nfail);
    return nfail ? 1 : 0;
}

static uint64_t rng;

/* Seeds rng from FA_TEST_SEED or the clock and pid; returns the seed to print. */
static __attribute__((unused)) uint64_t test_seed(void) {
    const char *env = getenv("FA_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    rng = seed * 0x9E3779B97F4A7C15ull + 1;
    return seed;
}

static __attribute__((unused)) float frand(void) {   /* uniform in [-1, 1) from xorshift64* */
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    uint64_t x = rng * 2685821657736338717ull;
    return (float)((double)(x >> 40) / (double)(1ull << 23) - 1.0);
}
