/* shard.c — the sharding plan (see shard.h), and the run plan's rows (dist/plan.h). */
#include "dist/shard.h"
#include "dist/plan.h"
#include "base/common.h"
#include <string.h>
#include <strings.h>

const char *shard_layout_name(shard_layout l) {
    switch (l) {
    case SHARD_CONTIGUOUS: return "contiguous";
    case SHARD_ZIGZAG: return "zigzag";
    case SHARD_STRIPED: return "striped";
    }
    return "?";
}

int shard_layout_parse(const char *s, shard_layout *out) {
    if (!strcasecmp(s, "contiguous")) *out = SHARD_CONTIGUOUS;
    else if (!strcasecmp(s, "zigzag")) *out = SHARD_ZIGZAG;
    else if (!strcasecmp(s, "striped")) *out = SHARD_STRIPED;
    else return -1;
    return 0;
}

int64_t shard_default_stripe(int64_t nk, int nranks) {
    int64_t w = nk / (16 * (int64_t)nranks);
    if (w >= 128) return w > 256 ? 256 : (w / 128) * 128;   /* whole 128-key engine tiles */
    if (w >= 64) return 64;
    return w >= 1 ? w : 1;
}

/* Boundary of part i of `parts` equal parts of n keys. */
static int64_t split(int64_t n, int64_t parts, int64_t i) { return (n * i) / parts; }

static void add_range(kv_shard *s, int cap, int64_t start, int64_t n) {
    if (n <= 0) return;
    if (s->n > 0 && s->r[s->n - 1].start + s->r[s->n - 1].n == start) {
        s->r[s->n - 1].n += n;           /* adjacent: extend */
    } else {
        if (s->n >= cap) fa_fail("shard plan: range table overflow");
        s->r[s->n].start = start;
        s->r[s->n].n = n;
        s->n++;
    }
    s->total += n;
}

void shard_plan(int64_t nk, int nranks, int rank, shard_layout layout, int64_t stripe,
                kv_shard *out) {
    memset(out, 0, sizeof *out);
    int64_t P = nranks;
    if (layout == SHARD_CONTIGUOUS) {
        out->r = fa_calloc(1, sizeof(row_range), "shard plan");
        add_range(out, 1, split(nk, P, rank), split(nk, P, rank + 1) - split(nk, P, rank));
    } else if (layout == SHARD_ZIGZAG) {
        out->r = fa_calloc(2, sizeof(row_range), "shard plan");
        int64_t a = rank, b = 2 * P - 1 - rank;
        add_range(out, 2, split(nk, 2 * P, a), split(nk, 2 * P, a + 1) - split(nk, 2 * P, a));
        add_range(out, 2, split(nk, 2 * P, b), split(nk, 2 * P, b + 1) - split(nk, 2 * P, b));
    } else {
        if (stripe <= 0) stripe = shard_default_stripe(nk, nranks);
        int64_t nstripes = (nk + stripe - 1) / stripe;
        int64_t mine = nstripes / P + 2;
        out->r = fa_calloc((size_t)mine, sizeof(row_range), "shard plan");
        /* dealt in snake order (0..P-1, P-1..0, ...): within every 2P stripes rank r holds
         * stripes r and 2P-1-r, a zigzag at stripe scale, so the earlier (costlier under the
         * causal mask) stripe of each pair does not always go to the same rank */
        for (int64_t s = 0; s < nstripes; s++) {
            int64_t pos = s % (2 * P);
            int64_t owner = pos < P ? pos : 2 * P - 1 - pos;
            if (owner != rank) continue;
            int64_t start = s * stripe, end = start + stripe < nk ? start + stripe : nk;
            add_range(out, (int)mine, start, end - start);
        }
    }
}

void shard_free(kv_shard *s) {
    free(s->r);
    memset(s, 0, sizeof *s);
}

void plan_rows_make(run_plan *p, int rank, int writer) {
    p->writer = writer;
    if (p->own_keys) {            /* the caller's run of keys (the library's) */
        p->shard = (kv_shard){.r = fa_calloc(1, sizeof(row_range), "shard plan"), .total = p->own_k_rows};
        if (p->own_k_rows > 0) p->shard.r[p->shard.n++] = (row_range){p->own_k_start, p->own_k_rows};
    } else
        shard_plan(p->s.Nk, p->nranks, rank, p->layout, p->stripe, &p->shard);
    p->rows_planned = 1;
}

void plan_rows_free(run_plan *p) {
    shard_free(&p->shard);
    p->rows_planned = 0;
}

double shard_work(const kv_shard *s, const attn_mask *m, int64_t b, int64_t q0, int64_t q1) {
    double w = 0;
    for (int i = 0; i < s->n; i++)
        w += (double)mask_pairs(m, b, q0, q1, s->r[i].start, s->r[i].start + s->r[i].n);
    return w;
}
