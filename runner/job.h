/* job.h — one job's options, as the command line sets them (runner/cli.c); the planner
 * (runner/plan.c) turns them into the run plan (dist/plan.h). */
#pragma once
#include <stdint.h>
#include <string.h>
#include "io/h5io.h"
#include "dist/plan.h"          /* fa_backend, fa_mode */
#include "dist/shard.h"
#include "kernels/gpu.h"

typedef struct {
    const char *input, *output;
    const char *dset[3];     /* --q/--k/--v: dataset paths of q, k, v in the input (NULL: "q", "k", "v") */
    const char *out_group;   /* --out-group: group of o and lse in the output (NULL: the root) */
    fa_layout layout;        /* --layout: q, k, v's in the file (AUTO: their attributes, else bnhd) */
    fa_layout out_layout;    /* --out-layout: o's (AUTO: q's, as read) */
    int causal;
    int window_size_set;     /* --window-size LEFT,RIGHT given */
    int64_t win_left, win_right;   /* its sides (-1 unbounded) */
    double softcap;          /* --softcap C (0: none) */
    int alibi;               /* --alibi */
    int no_documents;        /* --no-documents: the input's cu_seqlens tables are not used */
    double scale;            /* 0: 1/sqrt(D) */
    int lse;                 /* write lse */
    int64_t chunk;           /* query rows per pipeline chunk (0: default) */
    int merges_in_flight;    /* chunks whose merge may be in flight at once */
    fa_backend backend;
    fa_compute compute;      /* GPU compute type */
    int compute_set;         /* --compute given */
    int threads;             /* CPU engine threads (0: OMP default) */
    int br, bc;              /* CPU engine tile sizes (0: engine default) */
    int force;
    int out_dtype_set;
    fa_dtype out_dtype;
    int shard_set;
    shard_layout shard;
    int64_t stripe;
    int allow_nonfinite;
    fa_mode mode;
    int compare;             /* --compare: also run the other mode, record the error per head */
    const char *report;      /* --report FILE.json */
    int64_t device_mem;      /* --device-mem: this rank's device-memory budget, bytes (0: all) */
    int no_nccl;             /* --no-nccl: merge through MPI even where NCCL could */
    double kernel_tflops;    /* --kernel-tflops: the paging model's kernel rate (0: 500, the H100 kernel's) */
    double link_gbps;        /* --link-gbps: the paging model's host link (0: measured) */
    int resume;              /* --resume: continue from the partial output of an earlier run */
    int64_t check_rows;      /* --check ROWS: fp64 check of sampled rows after the run (-1: all) */
    int merges_in_flight_set;   /* --merges-in-flight given (else the tune cache's or the model's) */
    int tune;                /* --tune: measure and cache this job's configuration first */
    const char *tune_cache;  /* --tune-cache FILE (else $FA_TUNE_CACHE, ~/.cache/fa_long/tune.txt) */
    int quiet, verbose;
} fa_job;


#include <stdio.h>
/* The path of dataset `name` ("o", "lse") in output group `group` (NULL, "", "/": the root):
 * "o" or "layers/3/o", leading and trailing '/' of the group dropped. */
static inline const char *fa_out_dset(const char *group, const char *name, char *buf, int len) {
    while (group && *group == '/') group++;
    int n = group ? (int)strlen(group) : 0;
    while (n > 0 && group[n - 1] == '/') n--;
    if (n) snprintf(buf, (size_t)len, "%.*s/%s", n, group, name);
    else snprintf(buf, (size_t)len, "%s", name);
    return buf;
}
