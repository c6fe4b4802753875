/* test_progress.c — the progress line's ETA (base/progress.h): chunks whose cost grows with their
 * rows (causal) are priced by the fitted t = a + b * flops, not by the run's mean rate; the first
 * chunk (start-up inside) is left out; chunks all alike give the plain rate. */
#include "base/progress.h"
#include "base/common.h"
#include "tests/testing.h"
#include <math.h>

/* n chunks of a causal job: chunk i costs a + b * flops_i, flops_i ~ (i + 1/2) */
static void causal_eta(int n, double a, double b, int seen) {
    progress p;
    double total = 0, f[256];
    for (int i = 0; i < n; i++) total += f[i] = 1e12 * (i + 0.5);
    progress_init(&p, 1, n, total, 1e9);
    p.tty = 0;
    double now = p.t0 + 5.0;                    /* start-up: 5 s before the first chunk ends */
    for (int i = 0; i < seen; i++) {
        if (i > 0) now += a + b * f[i];
        progress_chunk_at(&p, f[i], now);
    }
    double want = 0;
    for (int i = seen; i < n; i++) want += a + b * f[i];
    double got = progress_eta(&p);
    check(fabs(got - want) <= 1e-6 * want, "causal %d chunks, %d seen: ETA %.3f s, remaining %.3f s", n, seen, got, want);
    /* the mean-rate estimate the line used to give, for the record */
    double el = now - p.t0, rate = p.flops_done / el;
    printf("INFO  mean-rate ETA would say %.1f s\n", (total - p.flops_done) / rate);
}

int main(void) {
    causal_eta(64, 0.02, 1e-12, 8);
    causal_eta(64, 0.5, 3e-13, 3);
    causal_eta(200, 0.0, 2e-12, 20);
    /* chunks all alike (full attention): the rate, even with only two chunks */
    progress p;
    progress_init(&p, 1, 10, 10e12, 1e9);
    p.tty = 0;
    progress_chunk_at(&p, 1e12, p.t0 + 3.0);
    check(progress_eta(&p) < 0, "after the first chunk alone: no ETA (start-up inside)");
    progress_chunk_at(&p, 1e12, p.t0 + 3.5);
    check(fabs(progress_eta(&p) - 8 * 0.5) < 1e-9, "equal chunks: 8 left x 0.5 s = %.3f", progress_eta(&p));
    return tests_done();
}
