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

/* The job's floor: the slowest rank's largest of its compute phase, its bytes read over the
 * fastest rate its own reads reached, and its bytes written over its fastest write rate
 * (fa_long's measurements of this machine: no figure from elsewhere). */
typedef struct {
    double floor_s, compute_s, read_s, write_s;   /* the floor, and each term (slowest rank) */
    double read_gbps, write_gbps;                 /* the rates they used (rank 0's) */
    const char *critical;                         /* "compute", "read" or "write" */
} job_floor;
/* COLLECTIVE: every rank's terms, the maxima on every rank. */
void report_floor(const pipeline_stats *st, job_floor *f);

/* COLLECTIVE: gathers every rank's stats and builds the JSON on rank 0. `check` may be NULL;
 * compare_rel (H values, may be NULL): --compare's per-head relative error against the other mode. */
void report_build(report *r, const fa_job *job, const run_plan *plan, const pipeline_stats *st,
                  const char *compute, double elapsed, const check_result *check,
                  const double *compare_rel);
/* Rank 0: writes the JSON to path (via a temporary file, renamed). -1 with fa_seterr on error. */
int report_write(const report *r, const char *path);
void report_free(report *r);
