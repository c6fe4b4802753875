/* test_schedule.c — the chunk schedule (dist/schedule.h) against its definition, on random shapes:
 * every batch element's query rows covered once, in order, by its chunks; slots cycling over
 * merges_in_flight; the writer the plan's (one writer, or i mod P); write groups of 1 or P chunks
 * whose output sets alternate; a group's write after its last chunk and after the run's last;
 * next_same_b exactly where chunk i + 1 is in the same batch element. */
#include "dist/schedule.h"
#include "tests/testing.h"
#include <string.h>

static uint64_t urand(void) {      /* xorshift64* on testing.h's seeded state */
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return (rng * 2685821657736338717ull) >> 11;
}

static void one(int64_t B, int64_t nq, int64_t chunk, int P, int writer, int mif) {
    run_plan p;
    memset(&p, 0, sizeof p);
    p.s.B = B, p.s.Nq = nq, p.chunk = chunk, p.nranks = P, p.writer = writer, p.merges_in_flight = mif;
    chunk_schedule cs;
    schedule_make(&cs, &p, P);
    const int64_t G = writer >= 0 ? 1 : P;
    CHECK(cs.count == B * ((nq + chunk - 1) / chunk) && cs.group == G, "B %lld nq %lld chunk %lld P %d: count %lld group %lld",
          (long long)B, (long long)nq, (long long)chunk, P, (long long)cs.count, (long long)cs.group);
    int64_t row = 0, b_prev = 0, group_ends = 0;
    for (int64_t i = 0; i < cs.count; i++) {
        const chunk_place c = schedule_chunk(&cs, i);
        if (c.b != b_prev) {                      /* the previous element ended at nq */
            CHECK(row == nq && c.b == b_prev + 1, "chunk %lld: element %lld starts after row %lld", (long long)i, (long long)c.b, (long long)row);
            row = 0, b_prev = c.b;
        }
        CHECK(c.r0 == row && c.n > 0 && c.n <= chunk && c.r0 + c.n <= nq, "chunk %lld: rows [%lld, +%lld) after %lld",
              (long long)i, (long long)c.r0, (long long)c.n, (long long)row);
        row = c.r0 + c.n;
        CHECK(c.slot == i % mif, "chunk %lld: slot %d", (long long)i, c.slot);
        CHECK(c.writer == (writer >= 0 ? writer : (int)(i % P)), "chunk %lld: writer %d", (long long)i, c.writer);
        CHECK(c.set == (i / G) % 2, "chunk %lld: set %d", (long long)i, c.set);
        const int ends = (i + 1) % G == 0 || i == cs.count - 1;
        CHECK(c.ends_group == ends, "chunk %lld: ends_group %d", (long long)i, c.ends_group);
        group_ends += ends;
        if (ends) CHECK(schedule_set_before(&cs, i + 1) == c.set, "chunk %lld: the group's set", (long long)i);
        const int same = i + 1 < cs.count && schedule_chunk(&cs, i + 1).b == c.b;
        CHECK(c.next_same_b == same, "chunk %lld: next_same_b %d", (long long)i, c.next_same_b);
    }
    CHECK(row == nq && b_prev == B - 1, "the last element ends at nq");
    CHECK(group_ends == (cs.count + G - 1) / G, "%lld group writes for %lld chunks in groups of %lld",
          (long long)group_ends, (long long)cs.count, (long long)G);
}

int main(void) {
    printf("seed %llu\n", (unsigned long long)test_seed());
    one(1, 1000, 1000, 1, 0, 3);                  /* one chunk */
    one(2, 301, 16, 3, -1, 3);                    /* the e2e shapes: N not divisible */
    one(3, 257, 64, 4, 0, 2);                     /* serial writer */
    for (int t = 0; t < 200; t++) {
        const int64_t B = 1 + (int64_t)(urand() % 4), nq = 1 + (int64_t)(urand() % 3000);
        const int64_t chunk = 1 + (int64_t)(urand() % (uint64_t)(nq + 50));
        const int P = 1 + (int)(urand() % 7), mif = 1 + (int)(urand() % 5);
        const int writer = urand() % 3 == 0 ? (int)(urand() % (uint64_t)P) : -1;
        one(B, nq, chunk, P, writer, mif);
    }
    return tests_done();
}
