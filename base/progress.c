/* progress.c — see progress.h. */
#include "base/progress.h"
#include "base/common.h"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void progress_init(progress *p, int enabled, int64_t chunks_total, double flops_total,
                   double interval) {
    *p = (progress){0};
    p->enabled = enabled && fa_rank == 0;
    p->tty = isatty(2);
    p->interval = interval > 0 ? interval : 10.0;
    p->t0 = p->last = fa_now();
    p->chunks_total = chunks_total;
    p->flops_total = flops_total;
}

static void hms(char *buf, int len, double s) {
    if (!(s >= 0) || s > 1e8) { snprintf(buf, (size_t)len, "--:--"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, (size_t)len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, (size_t)len, "%ld:%02ld", t / 60, t % 60);
}

static void print_line(progress *p, double now, int final) {
    double el = now - p->t0;
    double rate = el > 0 ? p->flops_done / el : 0;
    double left = p->flops_total - p->flops_done;
    char e[32], eta[32];
    hms(e, sizeof e, el);
    hms(eta, sizeof eta, rate > 0 ? left / rate : -1);
    double pct = p->chunks_total ? 100.0 * (double)p->chunks_done / (double)p->chunks_total : 100;
    fprintf(stderr, "%sfa_long: chunk %lld/%lld (%.1f%%), %.3f TFLOP/s, elapsed %s, ETA %s%s",
            p->tty ? "\r" : "", (long long)p->chunks_done, (long long)p->chunks_total, pct,
            rate * 1e-12, e, eta, p->tty && !final ? "   " : "\n");
    if (final && p->tty) fputc('\n', stderr);
    fflush(stderr);
    p->printed_live = p->tty && !final;
}

void progress_chunk(progress *p, double flops) {
    if (!p || !p->enabled) return;
    p->chunks_done++;
    p->flops_done += flops;
    double now = fa_now();
    if (now - p->last >= (p->tty ? 0.2 : p->interval)) {
        p->last = now;
        print_line(p, now, 0);
    }
}

void progress_skip(progress *p, int64_t chunks, double flops) {
    if (!p) return;
    p->chunks_done += chunks;
    p->flops_total -= flops;      /* the rate and ETA are about this run's work */
}

void progress_end(progress *p) {
    if (!p || !p->enabled) return;
    if (p->printed_live || fa_now() - p->t0 >= p->interval) print_line(p, fa_now(), 1);
}
