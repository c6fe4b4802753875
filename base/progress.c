/* progress.c — see progress.h. */
#include "base/progress.h"
#include "base/common.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 1 when fd `fd` of process `pid` is a terminal (Linux: /proc/PID/fd/FD names /dev/pts/N or
 * /dev/ttyN). */
static int proc_fd_is_tty(long pid, int fd) {
    char path[64], target[256];
    snprintf(path, sizeof path, "/proc/%ld/fd/%d", pid, fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return !strncmp(target, "/dev/pts/", 9) || !strncmp(target, "/dev/tty", 8) ||
           !strcmp(target, "/dev/console");
}

/* Whether progress lines reach a terminal: stderr is one, or (under mpirun, which gives a rank a
 * pipe for stderr and a pseudo-terminal for stdout whatever its own are) the launcher's stderr,
 * the parent's, is one: then what the rank writes to stderr is copied to that terminal. */
static int progress_to_tty(void) {
    if (isatty(2)) return 1;
    return proc_fd_is_tty((long)getppid(), 2);
}

#define FIRST_LINE_S 2.0            /* a batch log's first line: once the run is this old */

void progress_init(progress *p, int enabled, int64_t chunks_total, double flops_total,
                   double interval) {
    *p = (progress){0};
    p->enabled = enabled && fa_rank == 0;
    p->tty = progress_to_tty();
    p->interval = interval > 0 ? interval : 10.0;
    p->t0 = p->last = p->last_chunk = fa_now();
    p->chunks_total = chunks_total;
    p->flops_total = flops_total;
}

static void hms(char *buf, int len, double s) {
    if (!(s >= 0) || s > 1e8) { snprintf(buf, (size_t)len, "--:--"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, (size_t)len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, (size_t)len, "%ld:%02ld", t / 60, t % 60);
}

double progress_eta(const progress *p) {
    const double n = (double)p->nfit;
    if (n < 1) return -1;
    const int64_t left_chunks = p->chunks_total - p->chunks_done;
    const double left_flops = p->flops_total - p->flops_done;
    if (left_chunks <= 0) return 0;
    /* least squares t = a + b f; with too little spread in f (full attention: every chunk the
     * same but the last) the mean cost of a chunk, scaled by the flops left */
    const double mf = p->sf / n, mt = p->st / n, var = p->sff / n - mf * mf;
    double a, b;
    if (n >= 2 && var > 1e-6 * mf * mf) {
        b = (p->sft / n - mf * mt) / var;
        a = mt - b * mf;
        if (b < 0) { b = 0; a = mt; }
        if (a < 0) { a = 0; b = p->sf > 0 ? p->st / p->sf : 0; }
    } else {
        a = 0;
        b = p->sf > 0 ? p->st / p->sf : 0;
        if (p->sf <= 0) a = mt;
    }
    double eta = a * (double)left_chunks + b * (left_flops > 0 ? left_flops : 0);
    return eta >= 0 && isfinite(eta) ? eta : -1;
}

static void print_line(progress *p, double now, int final) {
    double el = now - p->t0;
    double rate = el > 0 ? p->flops_done / el : 0;
    char e[32], eta[32];
    hms(e, sizeof e, el);
    hms(eta, sizeof eta, final ? 0 : progress_eta(p));
    double pct = p->chunks_total ? 100.0 * (double)p->chunks_done / (double)p->chunks_total : 100;
    fprintf(stderr, "%sfa_long: chunk %lld/%lld (%.1f%%), %.3f TFLOP/s, elapsed %s, ETA %s%s",
            p->tty ? "\r" : "", (long long)p->chunks_done, (long long)p->chunks_total, pct,
            rate * 1e-12, e, eta, p->tty && !final ? "   " : "\n");
    if (final && p->tty) fputc('\n', stderr);
    fflush(stderr);
    p->printed_live = p->tty && !final;
    p->printed = 1;
}

void progress_chunk_at(progress *p, double flops, double now) {
    if (!p || !p->enabled) return;
    double t = now - p->last_chunk;
    p->last_chunk = now;
    p->chunks_done++;
    p->chunks_run++;
    p->flops_done += flops;
    if (p->chunks_run > 1) {      /* the first chunk's time holds the start-up (keys, set-up) */
        p->nfit++;
        p->sf += flops;
        p->st += t;
        p->sff += flops * flops;
        p->sft += flops * t;
    }
    /* live: the first chunk at once (the screen is never blank for long), then at most 5 lines
     * a second; a batch log: a first line once the run is 2 s old (a job that ends, or fails,
     * sooner writes none: its error stays its one line), then one every interval */
    const int due = p->tty ? !p->printed || now - p->last >= 0.2
                           : (!p->printed && now - p->t0 >= FIRST_LINE_S) || now - p->last >= p->interval;
    if (due) {
        p->last = now;
        print_line(p, now, 0);
    }
}

void progress_chunk(progress *p, double flops) { progress_chunk_at(p, flops, fa_now()); }

void progress_skip(progress *p, int64_t chunks, double flops) {
    if (!p) return;
    p->chunks_done += chunks;
    p->flops_total -= flops;      /* the rate and ETA are about this run's work */
}

void progress_end(progress *p) {
    if (!p || !p->enabled) return;
    if (p->printed_live || fa_now() - p->t0 >= p->interval) print_line(p, fa_now(), 1);
}
