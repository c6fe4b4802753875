/* report.c — see report.h. The JSON is small and flat, written with a few helpers below (no JSON
 * library: the GPU nodes we run on have none installed and no network to fetch one). */
#define _GNU_SOURCE
#include "runner/report.h"
#include "runner/plan.h"
#include "base/clock.h"
#include "base/common.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct { char *buf; size_t len, cap; } sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < b->cap - b->len) { b->len += (size_t)n; return; }
        b->cap = b->cap * 2 + (size_t)(n > 0 ? n : 256);
        b->buf = realloc(b->buf, b->cap);
        if (!b->buf) fa_fail("out of memory building the report");
    }
}

static void put_str(sbuf *b, const char *s) {       /* a JSON string with escapes */
    put(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') put(b, "\\%c", c);
        else if (c < 0x20) put(b, "\\u%04x", c);
        else put(b, "%c", c);
    }
    put(b, "\"");
}

static void put_num(sbuf *b, double v) {            /* JSON has no inf/nan: null */
    if (isfinite(v)) put(b, "%.9g", v);
    else put(b, "null");
}

enum { S_READ, S_COMPUTE, S_WAIT, S_WRITE, S_PAIRS, S_BYTES, S_H2D, S_D2H, S_PAGED, S_COPY,
       S_COMM, S_EXPOSED, S_RSS, S_SETUP, S_KV, S_FINAL, S_IDLE, S_CMIN, S_CMINB, S_SYNC, S_BREAD,
       S_BWRITE, S_IOEXP, S_WHOLE, S_STARTUP, S_PREP, S_COMMIT, S_FLUSH, S_FLUSHED, S_WB,
       S_TL, S_N = S_TL + TL_N };

static const char *const tl_names[TL_N] = {
    "process", "mpi_init", "start", "gpu_init", "open", "plan", "create", "engine", "read",
    "load_kv", "compute", "merge_wait", "finalize", "write", "sync", "teardown", "attrs",
    "commit", "other"};

void job_clock_close(job_clock *c, const pipeline_stats *st) {
    c->t[TL_ENGINE] = st->t_setup;
    c->t[TL_READ] = st->t_read_exposed;
    c->t[TL_LOAD_KV] = st->t_load_kv;
    c->t[TL_COMPUTE] = st->t_compute_host;
    c->t[TL_MERGE_WAIT] = st->t_wait;
    c->t[TL_FINALIZE] = st->t_final;
    c->t[TL_WRITE] = st->t_write_exposed;
    c->t[TL_SYNC] = st->t_sync_own;
    c->t[TL_TEARDOWN] = st->t_teardown;
    c->whole_s = fa_now() - fa_start.process;
    double sum = 0;
    for (int k = 0; k < TL_OTHER; k++) sum += c->t[k];
    c->t[TL_OTHER] = c->whole_s - sum;
}

static double maxrss_mib(void) {      /* this process's peak resident memory */
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss / 1024.0 : 0.0;
}

void report_floor(const pipeline_stats *st, const job_clock *c, job_floor *f) {
    /* the written bytes reach the disk no faster than the slower of the two rates */
    const double flush = c ? c->flush.flush_best_bps : 0;
    const double wr = flush > 0 && flush < st->write_best_bps ? flush : st->write_best_bps;
    double t[3] = {st->t_compute,
                   st->read_best_bps > 0 ? (double)st->bytes_read / st->read_best_bps : 0,
                   wr > 0 ? (double)st->bytes_written / wr : 0}, m[3];
    MPI_Allreduce(t, m, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    double r[3] = {st->read_best_bps * 1e-9, st->write_best_bps * 1e-9, flush * 1e-9};
    MPI_Bcast(r, 3, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    f->compute_s = m[0];
    f->read_s = m[1];
    f->write_s = m[2];
    f->read_gbps = r[0];
    f->write_gbps = r[1];
    f->flush_gbps = r[2];
    int k = m[1] > m[0] ? 1 : 0;
    if (m[2] > m[k]) k = 2;
    f->floor_s = m[k];
    f->critical = k == 0 ? "compute" : k == 1 ? "read" : "write";
}

void report_build(report *r, const fa_job *job, const run_plan *plan, const pipeline_stats *st,
                  const char *compute, const job_clock *c, const check_result *check,
                  const double *compare_rel) {
    job_floor fl;
    report_floor(st, c, &fl);
    const fa_shape *s = &plan->s;
    const char *backend = fa_backend_name(plan->backend);
    const int64_t chunk = plan->chunk;
    double mine[S_N] = {st->t_read, st->t_compute, st->t_wait, st->t_write, st->work_pairs,
                        (double)st->bytes_reduced, (double)st->bytes_h2d, (double)st->bytes_d2h,
                        (double)st->bytes_paged, st->t_copy, st->t_comm, st->t_exposed,
                        maxrss_mib(), st->t_setup, st->t_kv, st->t_final, st->t_idle, st->t_comm_min,
                        (double)st->bytes_comm_min, st->t_sync, (double)st->bytes_read,
                        (double)st->bytes_written, st->t_io_exposed, c->whole_s,
                        c->t[TL_PROCESS] + c->t[TL_MPI_INIT] + c->t[TL_GPU_INIT],
                        c->t[TL_START] + c->t[TL_OPEN] + c->t[TL_PLAN] + c->t[TL_CREATE],
                        c->t[TL_COMMIT], c->flush.flush_busy_s,
                        (double)c->flush.bytes_flushed_behind, c->flush.write_behind};
    memcpy(mine + S_TL, c->t, sizeof c->t);
    double *all = fa_rank == 0 ? fa_malloc(sizeof(double) * S_N * (size_t)fa_nranks, "report") : NULL;
    MPI_Gather(mine, S_N, MPI_DOUBLE, all, S_N, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    fa_rank_threads *thr = fa_threads_gather();   /* each rank's threads, CPUs and why */
    r->json = NULL;
    if (fa_rank != 0) return;

    double mx[S_N] = {0}, sum[S_N] = {0};
    int longest = 0;                  /* the rank whose process started first: its time line */
    for (int k = 0; k < fa_nranks; k++) {
        for (int j = 0; j < S_N; j++) {
            double v = all[k * S_N + j];
            sum[j] += v;
            if (v > mx[j]) mx[j] = v;
        }
        if (all[k * S_N + S_WHOLE] > all[longest * S_N + S_WHOLE]) longest = k;
    }
    const double *tl = all + longest * S_N + S_TL;
    const double elapsed = all[longest * S_N + S_WHOLE];
    double flops = 4.0 * sum[S_PAIRS] * (double)s->D;
    double mean_c = sum[S_COMPUTE] / fa_nranks;
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));

    sbuf b = {fa_malloc(4096, "report"), 0, 4096};
    put(&b, "{\n  \"program\": \"fa_long %s\",\n  \"date\": \"%s\",\n  \"input\": ", FA_VERSION, date);
    put_str(&b, job->input);
    put(&b, ",\n  \"output\": ");
    put_str(&b, job->output);
    put(&b, ",\n  \"config\": {\"B\": %lld, \"Nq\": %lld, \"Nk\": %lld, \"H\": %lld, \"Hkv\": %lld, "
            "\"D\": %lld, \"causal\": %s, \"scale\": ", (long long)s->B, (long long)s->Nq,
        (long long)s->Nk, (long long)s->H, (long long)s->Hkv, (long long)s->D,
        job->causal ? "true" : "false");
    put_num(&b, plan->scale);
    put(&b, ", \"mode\": \"%s\", \"ranks\": %d, \"backend\": \"%s\", \"compute\": \"%s\", "
            "\"chunk\": %lld, \"merges_in_flight\": %d, \"shard\": \"%s\", \"input_dtype\": \"%s\", "
            "\"threads_per_rank\": %d, \"threads_from\": \"%s\", \"cpus_per_rank\": %d, "
            "\"cpu_share\": %d, \"binding\": \"%s\", \"node_ranks\": %d, \"node_cpus\": %d},\n",
        job->mode == MODE_TAYLOR ? "taylor" : "exact", fa_nranks, backend, compute,
        (long long)chunk, st->merges_in_flight, shard_layout_name((shard_layout)st->layout),
        fa_dtype_name(s->q_type), fa_threads.threads, fa_threads.why, fa_threads.cpus,
        fa_threads.share, fa_threads.binding, fa_threads.node_ranks, fa_threads.node_cpus);
    {   /* the run plan: every setting and where it came from (runner/plan.c) */
        char pj[4096];
        plan_json(plan, pj, sizeof pj);
        put(&b, "  \"plan\": %s,\n", pj);
    }
    /* elapsed_s: the process's start (the earliest rank's) to the committed output; the output's
     * own report attribute is written before the commit, and stops there (committed false) */
    put(&b, "  \"elapsed_s\": ");
    put_num(&b, elapsed);
    put(&b, ",\n  \"elapsed_run_s\": ");
    put_num(&b, c->run_s);
    put(&b, ",\n  \"whole\": {\"from\": \"%s\", \"committed\": %s, \"rank\": %d, \"mpi_transport\": \"%s\", "
            "\"timeline_s\": {", fa_start.from, c->committed ? "true" : "false", longest,
        fa_start.mpi_transport ? fa_start.mpi_transport : "not set");
    for (int k = 0; k < TL_N; k++) {
        put(&b, "%s\"%s\": ", k ? ", " : "", tl_names[k]);
        put_num(&b, tl[k]);
    }
    /* the commit's parts are rank 0's (it flushes, checks and renames); write-behind summed */
    const h5out_flush_stats *fs = &c->flush;
    const struct { const char *name; double s; } parts[] = {
        {"s", fs->commit_s}, {"drain_s", fs->drain_s}, {"close_s", fs->close_s},
        {"fsync_s", fs->fsync_s}, {"verify_s", fs->verify_s}, {"rename_s", fs->rename_s}};
    put(&b, "},\n    \"commit\": {");
    for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
        put(&b, "%s\"%s\": ", k ? ", " : "", parts[k].name);
        put_num(&b, parts[k].s);
    }
    put(&b, ", \"left_bytes\": %lld}", (long long)fs->commit_left_bytes);
    put(&b, ",\n    \"write_behind\": {\"on\": %s, \"bytes_written\": %.0f, "
            "\"bytes_flushed_behind\": %.0f, \"flush_s\": ", mx[S_WB] > 0 ? "true" : "false",
        sum[S_BWRITE], sum[S_FLUSHED]);
    put_num(&b, mx[S_FLUSH]);
    put(&b, "}}");
    /* the slowest rank's time in each phase; read_kv is the part of read spent on this rank's
     * keys and values; finalize brings merged rows to the host (o/l, lse) */
    put(&b, ",\n  \"phases_s\": {\"setup\": ");
    put_num(&b, mx[S_SETUP]);
    put(&b, ", \"read\": ");
    put_num(&b, mx[S_READ]);
    put(&b, ", \"read_kv\": ");
    put_num(&b, mx[S_KV]);
    put(&b, ", \"compute\": ");
    put_num(&b, mx[S_COMPUTE]);
    put(&b, ", \"merge_wait\": ");
    put_num(&b, mx[S_WAIT]);
    put(&b, ", \"finalize\": ");
    put_num(&b, mx[S_FINAL]);
    put(&b, ", \"write\": ");
    put_num(&b, mx[S_WRITE]);
    put(&b, ", \"sync\": ");
    put_num(&b, mx[S_SYNC]);
    /* read and write ran on each rank's I/O thread beside compute (io_thread), or in series;
     * io_exposed: the longest any rank's own thread waited for them */
    put(&b, ", \"io_exposed\": ");
    put_num(&b, mx[S_IOEXP]);
    /* the whole job's other parts: start-up (the process, MPI, CUDA and NCCL), preparing the
     * run (options, input, plan, output), the I/O thread's write-behind, and the commit */
    put(&b, ", \"startup\": ");
    put_num(&b, mx[S_STARTUP]);
    put(&b, ", \"prepare\": ");
    put_num(&b, mx[S_PREP]);
    put(&b, ", \"flush\": ");
    put_num(&b, mx[S_FLUSH]);
    put(&b, ", \"commit\": ");
    put_num(&b, mx[S_COMMIT]);
    put(&b, "},\n  \"io_thread\": %s", st->io_thread ? "true" : "false");
    /* streamed keys (rank 0's first batch element): the blocks its keys came in, and by how long
     * its first chunk's compute started before the last block was read (> 0: beside the reads) */
    put(&b, ",\n  \"keys\": {\"streamed\": %s, \"blocks\": %lld, \"first_compute_lead_s\": ",
        st->keys_streamed ? "true" : "false", (long long)st->key_blocks);
    put_num(&b, st->first_compute_lead_s);
    /* where rank 0's key reads landed: a ring of blocks reused (plan.key_ring: its blocks, rows
     * a block, bytes; the blocks read into it over every batch element, and their bytes), or a
     * shard of every key; the host memory the ring saved against that shard */
    put(&b, ", \"into\": \"%s\", \"ring_blocks\": %d, \"ring_block_rows\": %lld, "
            "\"ring_bytes\": %lld, \"ring_reads\": %lld, \"ring_bytes_read\": %lld, "
            "\"shard_bytes\": %lld, \"host_bytes_saved\": %lld}", st->key_ring ? "ring" : "shard",
        st->key_ring, (long long)st->key_ring_rows, (long long)st->key_ring_bytes,
        (long long)st->key_ring_reads, (long long)st->key_ring_bytes_read,
        (long long)st->key_shard_bytes,
        (long long)(st->key_ring ? st->key_shard_bytes - st->key_ring_bytes : 0));
    put(&b, ",\n  \"flops\": ");
    put_num(&b, flops);
    put(&b, ",\n  \"tflops\": ");
    put_num(&b, elapsed > 0 ? flops / elapsed * 1e-12 : 0);
    put(&b, ",\n  \"compute_tflops\": ");
    put_num(&b, mx[S_COMPUTE] > 0 ? flops / mx[S_COMPUTE] * 1e-12 : 0);
    /* the floor: what the job would take if it ran at its slowest part's best measured pace */
    put(&b, ",\n  \"floor\": {\"s\": ");
    put_num(&b, fl.floor_s);
    put(&b, ", \"critical\": \"%s\", \"compute_s\": ", fl.critical);
    put_num(&b, fl.compute_s);
    put(&b, ", \"read_s\": ");
    put_num(&b, fl.read_s);
    put(&b, ", \"write_s\": ");
    put_num(&b, fl.write_s);
    put(&b, ", \"read_gbps\": ");
    put_num(&b, fl.read_gbps);
    put(&b, ", \"write_gbps\": ");
    put_num(&b, fl.write_gbps);
    put(&b, ", \"flush_gbps\": ");
    put_num(&b, fl.flush_gbps > 0 ? fl.flush_gbps : NAN);
    put(&b, ", \"bytes_read\": %.0f, \"bytes_written\": %.0f, \"achieved\": ", sum[S_BREAD], sum[S_BWRITE]);
    put_num(&b, elapsed > 0 ? fl.floor_s / elapsed : 0);
    put(&b, "}");
    put(&b, ",\n  \"bytes\": {\"merge_network\": %.0f, \"host_to_device\": %.0f, "
            "\"device_to_host\": %.0f, \"paged\": %.0f},\n", sum[S_BYTES], sum[S_H2D], sum[S_D2H],
        sum[S_PAGED]);
    put(&b, "  \"paging\": {\"copy_s\": ");
    put_num(&b, mx[S_COPY]);
    put(&b, ", \"link_gbps\": ");
    put_num(&b, mx[S_COPY] > 0 ? sum[S_PAGED] / fa_nranks / mx[S_COPY] * 1e-9 : 0);
    /* the plan's merge, as its plan_json entry says it */
    put(&b, "},\n  \"merge\": {\"path\": \"%s\", \"why\": \"%s\", \"nccl\": %s, \"comm_s\": ",
        merge_path_name(plan->merge), plan->merge_why, plan->merge == MERGE_NCCL ? "true" : "false");
    put_num(&b, mx[S_COMM]);
    /* exposed: the host blocked on a merge whose chunk's compute was done (the slowest rank);
     * hidden: the rest of the merge time. The fastest chunk's merge gives the bus bandwidth the
     * merge reached (the slowest rank's fastest chunk); comm_s also counts waits for peers */
    put(&b, ", \"exposed_s\": ");
    put_num(&b, mx[S_EXPOSED]);
    put(&b, ", \"hidden_fraction\": ");
    put_num(&b, mx[S_COMM] > 0 ? 1.0 - fmin(mx[S_EXPOSED], mx[S_COMM]) / mx[S_COMM] : 1.0);
    put(&b, ", \"compute_idle_s\": ");
    put_num(&b, mx[S_IDLE]);
    put(&b, ", \"fastest_chunk_s\": ");
    put_num(&b, mx[S_CMIN]);
    put(&b, ", \"fastest_chunk_bytes\": %.0f, \"fastest_chunk_busbw_gbps\": ", mx[S_CMINB]);
    put_num(&b, mx[S_CMIN] > 0 ? mx[S_CMINB] / mx[S_CMIN] * 1e-9 : 0);
    put(&b, "},\n");
    put(&b, "  \"maxrss_mib_max_rank\": ");
    put_num(&b, mx[S_RSS]);
    put(&b, ",\n  \"imbalance_compute_max_over_mean\": ");
    put_num(&b, mean_c > 0 ? mx[S_COMPUTE] / mean_c : 1.0);
    put(&b, ",\n  \"per_rank\": [");
    for (int k = 0; k < fa_nranks; k++) {
        const double *v = all + k * S_N;
        put(&b, "%s\n    {\"rank\": %d, \"read_s\": %.6f, \"compute_s\": %.6f, \"merge_wait_s\": "
                "%.6f, \"write_s\": %.6f, \"work_pairs\": %.0f, \"merge_bytes\": %.0f, "
                "\"comm_s\": %.6f, \"exposed_s\": %.6f, \"compute_idle_s\": %.6f, \"comm_fastest_chunk_s\": %.6f, "
                "\"paged_bytes\": %.0f, \"maxrss_mib\": %.1f, \"setup_s\": %.6f, \"read_kv_s\": %.6f, "
                "\"finalize_s\": %.6f, \"sync_s\": %.6f, \"io_exposed_s\": %.6f, "
                "\"whole_s\": %.6f, \"startup_s\": %.6f, \"prepare_s\": %.6f, \"flush_s\": %.6f, "
                "\"commit_s\": %.6f, \"bytes_flushed_behind\": %.0f, \"threads\": %d, "
                "\"cpus\": %d, \"cpu_share\": %d, \"threads_from\": \"%s\"}",
            k ? "," : "", k, v[S_READ], v[S_COMPUTE], v[S_WAIT], v[S_WRITE], v[S_PAIRS], v[S_BYTES],
            v[S_COMM], v[S_EXPOSED], v[S_IDLE], v[S_CMIN], v[S_PAGED], v[S_RSS], v[S_SETUP], v[S_KV],
            v[S_FINAL], v[S_SYNC], v[S_IOEXP], v[S_WHOLE], v[S_STARTUP], v[S_PREP], v[S_FLUSH],
            v[S_COMMIT], v[S_FLUSHED], thr[k].threads, thr[k].cpus, thr[k].share, thr[k].why);
    }
    put(&b, "\n  ]");
    if (check) {
        put(&b, ",\n  \"check\": {\"rows\": %d, \"abs_err\": ", check->rows);
        put_num(&b, check->abs_err);
        put(&b, ", \"rel_err\": ");
        put_num(&b, check->rel_err);
        put(&b, ", \"lse_rel_err\": ");
        put_num(&b, check->has_lse ? check->lse_err : NAN);
        put(&b, ", \"tolerance\": ");
        put_num(&b, check->tol);
        put(&b, ", \"largest_abs_score\": ");
        put_num(&b, check->kappa);
        put(&b, ", \"pass\": %s}", check->pass ? "true" : "false");
    }
    if (compare_rel) {
        put(&b, ",\n  \"compare\": {\"other_mode\": \"%s\", \"rel_err_per_head\": [",
            job->mode == MODE_TAYLOR ? "exact" : "taylor");
        for (int64_t h = 0; h < s->H; h++) {
            if (h) put(&b, ", ");
            put_num(&b, compare_rel[h]);
        }
        put(&b, "]}");
    }
    put(&b, "\n}\n");
    free(all);
    free(thr);
    r->json = b.buf;
}

int report_write(const report *r, const char *path) {
    if (fa_rank != 0 || !r->json) return 0;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return fa_seterr("report '%s': cannot create file: %s", path, strerror(errno));
    int ok = fputs(r->json, f) >= 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return fa_seterr("report '%s': cannot write file: %s", path, strerror(errno));
    }
    return 0;
}

void report_free(report *r) {
    free(r->json);
    r->json = NULL;
}
