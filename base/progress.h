/* progress.h — rank 0's progress on long runs: chunks done of total, TFLOP/s, elapsed, ETA.
 * Live, one line rewritten in place (at most 5 times a second), when rank 0's stderr is a terminal
 * or, under mpirun (whose ranks get a pipe for stderr, copied to mpirun's own, and a
 * pseudo-terminal for stdout whatever mpirun's are), when the launcher's stderr is one; in a batch
 * log a plain line at the first chunk that ends 2 s or more into the run, then every `interval`
 * seconds (the run plan's: FA_PROGRESS_INTERVAL, default 10).
 * ETA: chunks differ in cost (a causal or windowed chunk's visible pairs grow or shrink with its
 * rows), so each finished chunk's seconds are fitted as t = a + b * flops over this run's chunks
 * (a: what a chunk costs whatever its size; b: seconds per flop), and the ETA is that model summed
 * over the chunks left: a * chunks_left + b * flops_left. The first chunk's seconds hold the
 * start-up (keys loaded, buffers set up) and are left out: its line shows ETA --:--. */
#pragma once
#include <stdint.h>

typedef struct {
    int enabled, tty, printed_live, printed;
    double t0, last, interval, last_chunk;
    int64_t chunks_total, chunks_done, chunks_run, nfit;
    double flops_total, flops_done;
    double sf, st, sff, sft;     /* sums over this run's chunks: flops, seconds, flops^2, flops*s */
} progress;

/* interval: seconds between plain lines in a batch log (the plan's; <= 0: 10). */
void progress_init(progress *p, int enabled, int64_t chunks_total, double flops_total,
                   double interval);
/* A chunk finished (its merged result written or about to be): adds its flops. */
void progress_chunk(progress *p, double flops);
/* The same at time `now` (fa_now()'s clock): for tests. */
void progress_chunk_at(progress *p, double flops, double now);
/* Seconds left by the chunk-cost model (-1 before two chunks of this run). */
double progress_eta(const progress *p);
/* Chunks already done before this run started (--resume): counted as done, not in the rate. */
void progress_skip(progress *p, int64_t chunks, double flops);
void progress_end(progress *p);
