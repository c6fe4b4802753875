/* progress.h — rank 0's progress on long runs: chunks done of total, TFLOP/s, elapsed, ETA.
 * On a terminal a live line rewritten in place (at most 5 times a second); in a batch log (stderr
 * not a terminal) a plain line every `interval` seconds (the run plan's: FA_PROGRESS_INTERVAL, default
 * 10). */
#pragma once
#include <stdint.h>

typedef struct {
    int enabled, tty, printed_live;
    double t0, last, interval;
    int64_t chunks_total, chunks_done;
    double flops_total, flops_done;
} progress;

/* interval: seconds between plain lines in a batch log (the plan's; <= 0: 10). */
void progress_init(progress *p, int enabled, int64_t chunks_total, double flops_total,
                   double interval);
/* A chunk finished (its merged result written or about to be): adds its flops. */
void progress_chunk(progress *p, double flops);
/* Chunks already done before this run started (--resume): counted as done, not in the rate. */
void progress_skip(progress *p, int64_t chunks, double flops);
void progress_end(progress *p);
