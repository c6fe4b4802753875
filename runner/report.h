/* report.h — the job's summary as JSON: configuration, per-phase times (read, compute, merge,
 * write), TFLOP/s, bytes moved, per-rank imbalance, and the check's errors when one ran. Written
 * to --report FILE.json by rank 0 and kept in the output file's `report` attribute. */
#pragma once
#include "dist/pipeline.h"
#include "runner/cli.h"
#include "runner/job.h"

typedef struct {
    char *json;        /* rank 0: the JSON text (malloc'd); other ranks: NULL */
} report;

/* The whole job on one rank's own thread, from the process's start (base/clock.h) to the
 * committed output, phase after phase (none overlaps another; TL_OTHER is what none holds). */
enum {
    TL_PROCESS,      /* the process's start to main(): loading the program and its libraries */
    TL_MPI_INIT,     /* MPI_Init */
    TL_START,        /* main after MPI_Init to the run: threads, options, environment, the lock */
    TL_GPU_INIT,     /* the CUDA driver (device count) and gpu_comm_init: context, NCCL */
    TL_OPEN,         /* the input opened and checked, the mask's tables */
    TL_PLAN,         /* --tune, the plan, the --resume decision */
    TL_CREATE,       /* the output created (or reopened) and its space reserved */
    TL_ENGINE,       /* the pipeline's setup: the engine and the buffers (phases_s.setup) */
    TL_READ,         /* waiting for reads (in series: the reads) */
    TL_LOAD_KV,      /* each batch element's keys handed to the engine */
    TL_COMPUTE,      /* compute_chunk and merge_start (on a GPU: launching them) */
    TL_MERGE_WAIT,
    TL_FINALIZE,
    TL_WRITE,        /* waiting for writes and checkpoints (in series: them) */
    TL_SYNC,         /* the ranks' agreements on this thread (stop, overflow, checkpoints) */
    TL_TEARDOWN,     /* the I/O thread stopped, the engine and buffers freed */
    TL_ATTRS,        /* the report and the output's attributes */
    TL_COMMIT,       /* h5out_commit: close, fsync, check, rename */
    TL_OTHER,        /* what no phase above holds */
    TL_N
};
typedef struct {
    double t[TL_N];        /* seconds in each phase, this rank */
    double whole_s;        /* this rank: the process's start to the committed output (or, while
                              !committed, to now) */
    double run_s;          /* the start of the run (options parsed) to the pipeline's end: what
                              elapsed_s was before the whole job was counted (rank 0's) */
    int committed;         /* 0: the output's report attribute, written before the commit */
    h5out_flush_stats flush;   /* the write-behind and, once committed, the commit's parts */
} job_clock;
/* c->whole_s from the process's start to now, and c->t[TL_OTHER] the part of it no phase holds;
 * the pipeline's phases taken from st. */
void job_clock_close(job_clock *c, const pipeline_stats *st);

/* The job's floor: the slowest rank's largest of its compute phase, its bytes read over the
 * fastest rate its own reads reached, and its bytes written over the slower of its fastest write
 * and its fastest flush to the disk (the bytes must be written and reach the disk; write-behind
 * overlaps the two) (fa_long's measurements of this machine: no figure from elsewhere). */
typedef struct {
    double floor_s, compute_s, read_s, write_s;   /* the floor, and each term (slowest rank) */
    double read_gbps, write_gbps, flush_gbps;     /* the rates they used (rank 0's; flush 0: none
                                                     measured, the write term is the write's) */
    const char *critical;                         /* "compute", "read" or "write" */
} job_floor;
/* COLLECTIVE: every rank's terms, the maxima on every rank. c: the flushes (NULL: none). */
void report_floor(const pipeline_stats *st, const job_clock *c, job_floor *f);

/* COLLECTIVE: gathers every rank's stats and clocks and builds the JSON on rank 0. `check` may
 * be NULL; compare_rel (H values, may be NULL): --compare's per-head relative error against the
 * other mode. */
void report_build(report *r, const fa_job *job, const run_plan *plan, const pipeline_stats *st,
                  const char *compute, const job_clock *c, const check_result *check,
                  const double *compare_rel);
/* Rank 0: writes the JSON to path (via a temporary file, renamed). -1 with fa_seterr on error. */
int report_write(const report *r, const char *path);
void report_free(report *r);
