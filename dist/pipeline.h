/* pipeline.h — the chunked merge pipeline: every rank computes, per query chunk, a partial result
 * over its own keys; chunk c's partials are merged (MPI_Ireduce with the record operator, landing
 * on the rank that writes those rows) while chunk c+1 computes. */
#pragma once
#include <stdint.h>
#include <mpi.h>
#include "io/h5io.h"
#include "runner/job.h"

typedef struct {
    double t_read, t_compute, t_wait, t_write, t_total;
    int64_t bytes_reduced;   /* record bytes this rank contributed to merges */
    int64_t chunks;          /* query chunks processed */
    double work_pairs;       /* visible (query, key) pairs computed by this rank */
    int used_gpu;
} pipeline_stats;

/* COLLECTIVE. Runs the whole job from `in` to `out` (both open). Returns 0, or -1 with fa_seterr
 * (the same on every rank) on a user-facing error found while reading (non-finite input). */
int pipeline_run(const fa_job *job, MPI_Comm comm, h5in *in, const fa_shape *s, h5out *out,
                 fa_backend backend, pipeline_stats *st);

/* Chunk size used when the job gives none: large enough to amortize per-chunk costs, small enough
 * that a few chunks' records stay far below the rank's key shard in memory. */
int64_t pipeline_default_chunk(const fa_shape *s, int nranks, int gpu);
