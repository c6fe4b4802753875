/* shard.h — which keys each rank holds (the sharding plan) and how much work that is.
 *
 * A rank's shard is a list of key ranges [start, start+n) of the Nk keys (the same for every batch
 * element). Layouts:
 *   contiguous  rank r holds [r*Nk/P, (r+1)*Nk/P)                       (non-causal default)
 *   zigzag      2P equal stripes; rank r holds stripes r and 2P-1-r      (balanced in total)
 *   striped     stripes of `stripe` keys dealt in snake order (0..P-1, P-1..0) (causal default: balanced
 *               in total AND within every query chunk, so the chunked merge never waits on one rank)
 * Work is counted in visible (query, key) pairs under the job's mask (kernels/mask.h). */
#pragma once
#include <stdint.h>
#include "io/h5io.h"   /* row_range */
#include "kernels/mask.h"

typedef enum { SHARD_CONTIGUOUS = 0, SHARD_ZIGZAG = 1, SHARD_STRIPED = 2 } shard_layout;

typedef struct {
    int n;              /* number of ranges */
    row_range *r;       /* ranges in increasing key order */
    int64_t total;      /* keys held */
} kv_shard;

const char *shard_layout_name(shard_layout l);
int shard_layout_parse(const char *s, shard_layout *out);   /* 0 ok, -1 unknown */

/* The stripe width used by `striped` when the caller passes 0: enough stripes per rank (>= 16)
 * for balance, 128 or 256 keys when Nk allows so the CPU engine's 128-key tiles stay whole. */
int64_t shard_default_stripe(int64_t nk, int nranks);

/* Fills *out with rank's ranges (allocated; shard_free releases). Every key belongs to exactly one
 * rank; ranks may hold no key when Nk < P. */
void shard_plan(int64_t nk, int nranks, int rank, shard_layout layout, int64_t stripe,
                kv_shard *out);
void shard_free(kv_shard *s);

/* Visible (query, key) pairs between query rows [q0, q1) of batch element b and the keys of `s`
 * under mask m. */
double shard_work(const kv_shard *s, const attn_mask *m, int64_t b, int64_t q0, int64_t q1);
