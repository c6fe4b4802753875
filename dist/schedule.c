/* schedule.c — the chunk schedule (schedule.h). */
#include "dist/schedule.h"

void schedule_make(chunk_schedule *cs, const run_plan *plan, int nranks) {
    cs->plan = plan;
    cs->nq = plan->s.Nq;
    cs->chunk = plan->chunk;
    cs->per_b = (plan->s.Nq + plan->chunk - 1) / plan->chunk;
    cs->count = cs->per_b * plan->s.B;
    cs->merges_in_flight = plan->merges_in_flight;
    cs->group = plan->writer >= 0 ? 1 : nranks;
}

chunk_place schedule_chunk(const chunk_schedule *cs, int64_t i) {
    chunk_place c;
    c.b = i / cs->per_b;
    c.r0 = (i % cs->per_b) * cs->chunk;
    c.n = cs->nq - c.r0 < cs->chunk ? cs->nq - c.r0 : cs->chunk;
    c.slot = (int)(i % cs->merges_in_flight);
    c.writer = plan_chunk_writer(cs->plan, i);
    c.set = (int)((i / cs->group) % 2);
    c.ends_group = i % cs->group == cs->group - 1 || i == cs->count - 1;
    c.next_same_b = i + 1 < cs->count && (i + 1) / cs->per_b == c.b;
    return c;
}
