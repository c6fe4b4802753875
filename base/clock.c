/* clock.c — the process's start (see clock.h).
 *
 * The kernel records when a process began (/proc/self/stat, field 22: clock ticks after boot, on
 * the boot clock, in 1/100 s on Linux), before the program and its libraries (MPI, HDF5, CUDA)
 * are loaded: the earliest honest start a rank can know of itself. Compared with CLOCK_BOOTTIME
 * now, it says how long ago that was, which places it on fa_now()'s monotonic clock. That start
 * is the fork's: a process that exec'd fa_long after running something else (a wrapper script
 * ending in `exec ./fa_long`) started when the wrapper did, so a start more than MAX_BEFORE_MAIN
 * seconds before main() is not taken, and main() is the start instead. Under mpirun, or from a
 * shell, fork and exec follow each other at once. */
#define _GNU_SOURCE
#include "base/clock.h"
#include "base/common.h"
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BEFORE_MAIN 10.0

fa_start_clock fa_start = {.from = "main"};

/* Seconds since the process started (boot clock), or -1 when /proc says nothing usable. */
static double since_start(void) {
    char buf[4096];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');          /* the command name may hold spaces and ')' */
    if (!p) return -1;
    unsigned long long ticks = 0;
    int field = 2;                              /* p ends field 2 */
    for (p++; *p && field < 22; p++)
        if (*p == ' ') field++;
    if (field != 22 || sscanf(p, "%llu", &ticks) != 1) return -1;
    long hz = sysconf(_SC_CLK_TCK);
    struct timespec now;
    if (hz <= 0 || clock_gettime(CLOCK_BOOTTIME, &now) != 0) return -1;
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec - (double)ticks / (double)hz;
}

void fa_start_clock_init(void) {
    fa_start.main = fa_now();
    double before = since_start();
    if (before >= 0 && before <= MAX_BEFORE_MAIN) {
        fa_start.process = fa_start.main - before;
        fa_start.from = "process";
    } else {
        fa_start.process = fa_start.main;
        fa_start.from = "main";
    }
}
