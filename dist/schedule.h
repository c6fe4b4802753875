/* schedule.h — the chunk schedule: for chunk i of a run (chunks b-major: batch element b's query
 * rows in chunks of `chunk`), the rows it covers, the merge slot it runs in, the rank that writes
 * it (the plan's writer: plan_chunk_writer), and the write group and output set its rows wait in.
 * The pipeline asks here; nothing else computes these.
 *
 * Writes are collective per group of G chunks (G = 1 when one rank writes every chunk, else the
 * ranks' count: each rank then owns one chunk of the group, i mod P); group g's rows wait in
 * output set g % 2 while groups g+1 and g+2 compute. */
#ifndef FA_DIST_SCHEDULE_H
#define FA_DIST_SCHEDULE_H

#include <stdint.h>
#include "dist/plan.h"

typedef struct {
    const run_plan *plan;        /* its writer (plan_chunk_writer) */
    int64_t nq, chunk;           /* query rows of a batch element, rows per chunk */
    int64_t per_b, count;        /* chunks per batch element, chunks in all */
    int merges_in_flight;        /* the slots: chunk i in slot i % merges_in_flight */
    int64_t group;               /* G: chunks per write group */
} chunk_schedule;

typedef struct {
    int64_t b, r0, n;            /* batch element, first query row, rows */
    int slot;                    /* its merge slot */
    int writer;                  /* the rank its merge lands on and that writes its rows */
    int set;                     /* the output set its rows wait in */
    int ends_group;              /* its group's write follows it (the group's last, or the run's) */
    int next_same_b;             /* chunk i + 1 exists and belongs to the same batch element */
} chunk_place;

/* The schedule of a plan with its rows made (plan_rows_make), over `nranks` ranks. */
void schedule_make(chunk_schedule *cs, const run_plan *plan, int nranks);
chunk_place schedule_chunk(const chunk_schedule *cs, int64_t i);
/* the output set of the group whose last chunk is done - 1 */
static inline int schedule_set_before(const chunk_schedule *cs, int64_t done) {
    return (int)(((done - 1) / cs->group) % 2);
}

#endif
