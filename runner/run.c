/* run.c — one attention job from HDF5 to HDF5: check the input, create the output under a
 * temporary name, run the pipeline, record the job in attributes, commit, summarize. */
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "dist/pipeline.h"
#include "kernels/gpu.h"
#include "runner/cli.h"
#include "base/agree.h"
#include "base/clock.h"
#include "base/common.h"
#include "runner/compare.h"
#include "runner/plan.h"
#include "base/progress.h"
#include "runner/report.h"
#include "io/h5gen.h"

static int agree(int rc) { return fa_agree(MPI_COMM_WORLD, rc, -1); }

/* The mask as `fa_long check` reads it back: window sides, softcap, alibi (and whether its
 * slopes were the standard ones), the document count, and the one-line description. */
static int mask_attrs(h5out *out, const attn_mask *m) {
    char d[256];
    int rc = 0;
    rc |= h5out_attr_int(out, "window_left", m->left);
    rc |= h5out_attr_int(out, "window_right", m->right);
    rc |= h5out_attr_double(out, "softcap", m->softcap);
    rc |= h5out_attr_int(out, "alibi", m->alibi ? (m->alibi_standard ? 1 : 2) : 0);
    rc |= h5out_attr_int(out, "documents", m->ndocs);
    rc |= h5out_attr_str(out, "mask", mask_describe(m, d, sizeof d));
    return rc;
}

static int write_attrs(h5out *out, const fa_job *job, const run_plan *pl, double elapsed,
                       const pipeline_stats *st) {
    int rc = 0;
    char planj[4096];
    plan_json(pl, planj, sizeof planj);
    rc |= h5out_attr_int(out, "causal", pl->causal);
    rc |= mask_attrs(out, &pl->mask);
    rc |= h5out_attr_double(out, "scale", pl->scale);
    rc |= h5out_attr_int(out, "ranks", fa_nranks);
    rc |= h5out_attr_int(out, "chunk", pl->chunk);
    rc |= h5out_attr_str(out, "backend", fa_backend_name(pl->backend));
    rc |= h5out_attr_str(out, "compute", st->compute);   /* the engine's own word */
    rc |= h5out_attr_str(out, "shard", shard_layout_name((shard_layout)st->layout));
    rc |= h5out_attr_str(out, "plan", planj);           /* every setting and its source */
    rc |= h5out_attr_str(out, "version", "fa_long " FA_VERSION);
    rc |= h5out_attr_str(out, "input", job->input);
    rc |= h5out_attr_str(out, "q_path", job->dset[0] ? job->dset[0] : "q");
    rc |= h5out_attr_str(out, "k_path", job->dset[1] ? job->dset[1] : "k");
    rc |= h5out_attr_str(out, "v_path", job->dset[2] ? job->dset[2] : "v");
    rc |= h5out_attr_str(out, "out_group", job->out_group && *job->out_group ? job->out_group : "/");
    rc |= h5out_attr_double(out, "elapsed_seconds", elapsed);
    return rc ? -1 : 0;
}

/* The layouts (issue 19): root attributes 'layout' (o's; o has it as a dataset attribute too)
 * and 'q_layout', 'k_layout', 'v_layout' (the input's, as read), which check defaults to, and
 * 'layout_stated' (1: --layout or an attribute said so; check doubts only unstated readings). */
static int layout_attrs(h5out *out, const h5in *in, fa_layout o_layout) {
    int rc = h5out_attr_str(out, "layout", fa_layout_name(o_layout));
    rc |= h5out_attr_str(out, "q_layout", fa_layout_name(h5in_layout(in, 0)));
    rc |= h5out_attr_str(out, "k_layout", fa_layout_name(h5in_layout(in, 1)));
    rc |= h5out_attr_str(out, "v_layout", fa_layout_name(h5in_layout(in, 2)));
    rc |= h5out_attr_int(out, "layout_stated", h5in_layout_stated(in));
    return rc ? -1 : 0;
}

/* The layouts' part of the job key: " layout=Q,K,V->O" when one is not bnhd (so bnhd keys stay
 * what they were before --layout), appended to key[len]. */
static void key_layouts(const h5in *in, fa_layout o_layout, char *key, int len) {
    fa_layout l[4] = {h5in_layout(in, 0), h5in_layout(in, 1), h5in_layout(in, 2), o_layout};
    if (l[0] == FA_BNHD && l[1] == FA_BNHD && l[2] == FA_BNHD && l[3] == FA_BNHD) return;
    size_t n = strlen(key);
    snprintf(key + n, (size_t)len - n, " layout=%s,%s,%s->%s", fa_layout_name(l[0]),
             fa_layout_name(l[1]), fa_layout_name(l[2]), fa_layout_name(l[3]));
}

/* Rank 0 prints where the time went: the whole job (from the earliest rank's process start to the
 * committed output) and its commit; per-rank compute shows the balance, and --verbose every
 * rank's times, one row each. */
static void summarize(const fa_job *job, const run_plan *pl, const pipeline_stats *st,
                      fa_backend be, const job_clock *c) {
    const fa_shape *s = &pl->s;
    char mdesc[256];
    const char *mname = mask_is_plain(&pl->mask) && pl->mask.right < 0 ? "non-causal"
                      : mask_describe(&pl->mask, mdesc, sizeof mdesc);
    double mine[4] = {st->t_compute, st->t_wait, st->work_pairs, (double)st->bytes_reduced};
    double mx[4], sum[4];
    job_floor fl;
    report_floor(st, c, &fl);
    double elapsed, fb[2] = {(double)c->flush.bytes_flushed_behind, (double)c->flush.bytes_written},
           fsum[2];
    MPI_Reduce(&c->whole_s, &elapsed, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(fb, fsum, 2, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(mine, mx, 4, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(mine, sum, 4, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    int table = job->verbose && !job->quiet;         /* the same on every rank: same arguments */
    double times[4] = {st->t_read, st->t_compute, st->t_wait, st->t_write}, *all = NULL;
    if (table) {
        if (fa_rank == 0) all = fa_malloc((size_t)fa_nranks * sizeof times, "per-rank times");
        MPI_Gather(times, 4, MPI_DOUBLE, all, 4, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    }
    if (fa_rank != 0 || job->quiet) return;
    double flops = 4.0 * sum[2] * (double)s->D;     /* 2 products x 2 flops per visible pair */
    const h5out_flush_stats *fs = &c->flush;
    fprintf(stderr,
            "fa_long: B=%lld Nq=%lld Nk=%lld H=%lld Hkv=%lld D=%lld %s on %d rank%s (%s): %.3f s "
            "whole, from the process's start to the committed output (commit %.3f s), "
            "%.2f GFLOP/s%s\n",
            (long long)s->B, (long long)s->Nq, (long long)s->Nk, (long long)s->H,
            (long long)s->Hkv, (long long)s->D, mname, fa_nranks,
            fa_nranks == 1 ? "" : "s", fa_backend_name(be), elapsed, c->t[TL_COMMIT],
            flops / elapsed * 1e-9,
            job->mode == MODE_TAYLOR ? " (exact attention's FLOPs, for comparison)" : "");
    fprintf(stderr,
            "fa_long: rank 0 times: start-up %.3f s (process %.3f s, MPI %.3f s, GPU %.3f s), "
            "prepare %.3f s, setup %.3f s, read %.3f s (keys %.3f s), compute %.3f s, merge "
            "wait %.3f s, finalize %.3f s, write %.3f s (%s: %.3f s of them exposed); compute "
            "max/mean %.3f; merged %.1f MB\n",
            c->t[TL_PROCESS] + c->t[TL_MPI_INIT] + c->t[TL_GPU_INIT], c->t[TL_PROCESS],
            c->t[TL_MPI_INIT], c->t[TL_GPU_INIT],
            c->t[TL_START] + c->t[TL_OPEN] + c->t[TL_PLAN] + c->t[TL_CREATE],
            st->t_setup, st->t_read, st->t_kv, st->t_compute, st->t_wait, st->t_final, st->t_write,
            st->io_thread ? "on the I/O thread beside compute" : "in series",
            st->t_io_exposed, sum[0] > 0 ? mx[0] / (sum[0] / fa_nranks) : 1.0, sum[3] / 1e6);
    fprintf(stderr,
            "fa_long: commit %.3f s (the flush in progress %.3f s, close %.3f s, fsync %.3f s, "
            "check %.3f s, rename %.3f s); %.1f of %.1f MB written were on the disk before it "
            "(%s)\n", c->t[TL_COMMIT], fs->drain_s, fs->close_s, fs->fsync_s, fs->verify_s,
            fs->rename_s, fsum[0] / 1e6, fsum[1] / 1e6,
            fs->write_behind ? "write-behind beside compute" : "no write-behind on this file system");
    char flush[64] = "";
    if (fl.flush_gbps > 0) snprintf(flush, sizeof flush, ", flushed at %.2f GB/s", fl.flush_gbps);
    fprintf(stderr,
            "fa_long: floor %.3f s (%s: compute %.3f s, read %.3f s at %.2f GB/s, write %.3f s at "
            "%.2f GB/s%s, the fastest rates this run's own reads, writes and flushes reached): "
            "%.0f%% of the floor's pace\n", fl.floor_s, fl.critical, fl.compute_s, fl.read_s,
            fl.read_gbps, fl.write_s, fl.write_gbps, flush,
            elapsed > 0 ? 100.0 * fl.floor_s / elapsed : 0.0);
    if (!table) return;
    if (st->key_ring)            /* where rank 0's key reads landed */
        fprintf(stderr, "fa_long: rank 0 keys: %lld blocks (%.1f MB) read through a ring of %d "
                        "blocks of %lld rows (%.1f MB) instead of a shard of every key (%.1f MB): "
                        "%.1f MB less host memory\n", (long long)st->key_ring_reads,
                st->key_ring_bytes_read / 1e6, st->key_ring, (long long)st->key_ring_rows,
                st->key_ring_bytes / 1e6, st->key_shard_bytes / 1e6,
                (st->key_shard_bytes - st->key_ring_bytes) / 1e6);
    else
        fprintf(stderr, "fa_long: rank 0 keys: read into a shard of every key (%.1f MB)\n",
                st->key_shard_bytes / 1e6);
    fprintf(stderr, "# rank   read_s  compute_s  merge_wait_s  write_s\n");
    for (int r = 0; r < fa_nranks; r++)
        fprintf(stderr, "%6d %8.3f %10.3f %13.3f %8.3f\n", r, all[4 * r], all[4 * r + 1],
                all[4 * r + 2], all[4 * r + 3]);
    free(all);
}

/* Rank 0, after a run: a warning when k or v is stored in chunks small enough to slow the read
 * (under 256 KiB, and at least 16 of them: HDF5 then reads, and decompresses, many small pieces
 * for every transfer), with the rate the keys were read at and how to rechunk. */
#define SMALL_CHUNK_BYTES (256 << 10)
static void chunk_warning(const fa_job *job, const fa_shape *s, const pipeline_stats *st) {
    if (fa_rank != 0 || job->quiet) return;
    const char *names[2] = {job->dset[1] && *job->dset[1] ? job->dset[1] : "k",
                            job->dset[2] && *job->dset[2] ? job->dset[2] : "v"};
    const fa_dtype types[2] = {s->k_type, s->v_type};
    for (int i = 0; i < 2; i++) {
        int chunked = 0, nd = 0;
        int64_t c[8];
        char filters[128];
        if (h5_dataset_storage(job->input, names[i], &chunked, &nd, c, filters, sizeof filters)) {
            fa_clearerr();
            continue;
        }
        if (!chunked || nd != 4) continue;
        int64_t bytes = c[0] * c[1] * c[2] * c[3] * fa_dtype_size(types[i]);
        const int64_t dims[4] = {s->B, s->Nk, s->Hkv, s->D};
        int64_t nchunks = 1;
        for (int x = 0; x < 4; x++) nchunks *= (dims[x] + c[x] - 1) / (c[x] > 0 ? c[x] : 1);
        if (bytes >= SMALL_CHUNK_BYTES || nchunks < 16) continue;
        double rate = st->t_kv > 0 ? (double)st->bytes_kv_read / st->t_kv / 1e6 : 0;
        fa_warn("input '%s': dataset '%s' is stored in chunks of [%lld, %lld, %lld, %lld] (%lld "
                "bytes%s%s): rank 0 read its keys and values at %.0f MB/s; chunks of whole rows "
                "read faster, e.g. h5repack -l %s:CHUNK=1x%lldx%lldx%lld %s OUT.h5",
                job->input, names[i], (long long)c[0], (long long)c[1], (long long)c[2],
                (long long)c[3], (long long)bytes, filters[0] ? ", " : "", filters, rate, names[i],
                (long long)(s->Nk < 1024 ? s->Nk : 1024), (long long)s->Hkv, (long long)s->D,
                job->input);
    }
}

/* Flops of chunks [0, first) (rows of the batch elements they cover). */
static double done_flops(const attn_mask *m, const fa_shape *s, int64_t chunk, int64_t first) {
    int64_t per_b = (s->Nq + chunk - 1) / chunk, full_b = first / per_b;
    double f = 0;
    for (int64_t b = 0; b < full_b; b++) f += pipeline_flops(s, m, b, 0, s->Nq);
    int64_t rows = (first % per_b) * chunk;
    return f + (full_b < s->B ? pipeline_flops(s, m, full_b, 0, rows < s->Nq ? rows : s->Nq) : 0);
}

/* After the output is in place: the optional fp64 check of sampled rows, and the report file.
 * A check result goes into the report and the output's attributes too. */
static int finish(const fa_job *job, const run_plan *pl, const pipeline_stats *st,
                  const char *compute, const job_clock *c, const double *compare_rel) {
    check_result cr;
    int rc = 0, checked = job->check_rows != 0;
    if (checked && fa_rank == 0) {
        rc = check_sampled(job->input, job->output, job->check_rows, 0, 1, &cr);
        if (!rc) check_print(&cr, job->output);
    }
    if (agree(rc)) return fa_report_error();
    if (!checked && !job->report && !compare_rel) return 0;
    report rep;
    report_build(&rep, job, pl, st, compute, c, checked ? &cr : NULL, compare_rel);
    if (fa_rank == 0 && (checked || compare_rel)) {
        rc = h5_set_attr_str(job->output, "report", rep.json);
        if (!rc && checked) rc = h5_set_attr_double(job->output, "check_rel_err", cr.rel_err);
    }
    if (!rc && job->report) rc = report_write(&rep, job->report);
    report_free(&rep);
    if (agree(rc)) return fa_report_error();
    int pass = checked && fa_rank == 0 ? cr.pass : 1;
    MPI_Bcast(&pass, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return pass ? 0 : 1;
}

/* Exit status of a run stopped early on SIGUSR1/SIGTERM/SIGINT with its progress kept
 * (EX_TEMPFAIL). */
#define FA_EXIT_STOPPED 75

static void on_stop_signal(int sig) { fa_stop_requested = 1; }

/* SIGUSR1 (Slurm's warning, forwarded by mpirun), SIGTERM (scancel, a time limit, mpirun's abort,
 * kill) and SIGINT (Ctrl-C) all ask for the same thing: stop at the next chunk, keep what is done,
 * exit 75. A second signal changes nothing (Slurm and mpirun may each send TERM). */
static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* FA_STOP_FILE=PATH: after a stop, rank 0 writes "stopped DONE TOTAL PARTIAL" there (whole, by a
 * rename) once every rank has closed the partial file: jobs/run_fa_long.sh reads the outcome from
 * it when mpirun's own exit status cannot say 75 (mpirun aborts the job on TERM/INT). */
static void write_stop_file(const char *path, int64_t done, int64_t total, const char *partial) {
    if (fa_rank != 0 || !path || !*path) return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "stopped %lld %lld %s\n", (long long)done, (long long)total, partial) < 0 ||
        fclose(f) != 0 || rename(tmp, path) != 0)
        fprintf(stderr, "fa_long: warning: cannot write FA_STOP_FILE=%s\n", path);
}

/* A dataset or group path as the job key spells it: leading and trailing '/' dropped. */
static const char *key_path(const char *p, const char *dflt, char *buf, int len) {
    if (!p || !*p) p = dflt;
    while (*p == '/') p++;
    int n = (int)strlen(p);
    while (n > 0 && p[n - 1] == '/') n--;
    snprintf(buf, (size_t)len, "/%.*s", n, p);
    return buf;
}

/* What must match for rows of an earlier run to be reused by --resume. */
static void job_key(const fa_job *job, const fa_shape *s, const attn_mask *m, fa_dtype ot,
                    int64_t chunk, double scale, char *buf, int len) {
    char in[4096], pq[1024], pk[1024], pv[1024], pg[1024], paths[4200] = "", mk[512] = "";
    if (!realpath(job->input, in)) snprintf(in, sizeof in, "%s", job->input);
    key_path(job->dset[0], "q", pq, sizeof pq), key_path(job->dset[1], "k", pk, sizeof pk);
    key_path(job->dset[2], "v", pv, sizeof pv), key_path(job->out_group, "", pg, sizeof pg);
    /* the default paths leave the key as it was before --q/--k/--v/--out-group existed */
    if (strcmp(pq, "/q") || strcmp(pk, "/k") || strcmp(pv, "/v") || strcmp(pg, "/"))
        snprintf(paths, sizeof paths, " q=%s k=%s v=%s out_group=%s", pq, pk, pv, pg);
    /* a mask beyond full and causal: its parameters and a digest of its tables (the plain ones
     * leave the key as it was before masks existed) */
    if (!mask_is_plain(m)) {
        uint64_t h = FA_FNV_START;
        int64_t rows = m->ndocs ? m->doc_rows * (m->ndocs + 1) : 0;
        if (rows) h = fa_fnv1a(fa_fnv1a(h, m->cu_q, sizeof(int64_t) * (size_t)rows), m->cu_k,
                            sizeof(int64_t) * (size_t)rows);
        if (m->alibi) h = fa_fnv1a(h, m->alibi, sizeof(float) * (size_t)s->H);
        snprintf(mk, sizeof mk, " window=%lld,%lld softcap=%.17g alibi=%d documents=%lld "
                 "tables=%016llx", (long long)m->left, (long long)m->right, m->softcap,
                 m->alibi != NULL, (long long)m->ndocs, (unsigned long long)h);
    }
    snprintf(buf, (size_t)len,
             "input=%s%s B=%lld Nq=%lld Nk=%lld H=%lld Hkv=%lld D=%lld causal=%d%s scale=%.17g "
             "chunk=%lld mode=%s o=%s lse=%d", in, paths, (long long)s->B, (long long)s->Nq,
             (long long)s->Nk, (long long)s->H, (long long)s->Hkv, (long long)s->D,
             mask_is_causal(m), mk, scale, (long long)chunk,
             job->mode == MODE_TAYLOR ? "taylor" : "exact", fa_dtype_name(ot), job->lse);
}

enum { RESUME_FRESH = 0, RESUME_PARTIAL = 1, RESUME_COMPLETE = 2 };

/* Rank 0: the last " chunk=N" of a job key, or 0. */
static int64_t key_chunk(const char *key) {
    const char *at = NULL;
    for (const char *x = strstr(key, " chunk="); x; x = strstr(x + 1, " chunk=")) at = x;
    return at ? (int64_t)atoll(at + 7) : 0;
}

/* --resume without --chunk: the chunk the partial output (or, without one, the finished output)
 * was made with, since the default chunk depends on the rank count; 0 when there is nothing to
 * resume from (a partial that resume_plan will set aside counts as nothing). The same on every
 * rank. */
static int64_t resume_chunk(const fa_job *job) {
    int64_t c = 0;
    if (fa_rank == 0 && job->resume && job->chunk <= 0) {
        char partial[4096], got[8192];
        double done;
        struct stat sb;
        h5out_partial_path(job->output, partial, sizeof partial);
        if (stat(partial, &sb) == 0) {
            if (sb.st_size > 0 && h5_attr_str(partial, "resume_key", got, sizeof got) == 0 &&
                h5_attr_double(partial, "chunks_done", &done) == 0)
                c = key_chunk(got);
        } else if (stat(job->output, &sb) == 0 &&
                   h5_attr_str(job->output, "resume_key", got, sizeof got) == 0) {
            c = key_chunk(got);
        }
        if (c > 0) fa_log(2, "fa_long: --resume: chunk %lld, as the earlier run's", (long long)c);
    }
    MPI_Bcast(&c, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    return c;
}

/* Rank 0: a partial output that holds nothing resumable (empty, not HDF5, damaged, no job key,
 * or never checkpointed: a job killed before its first checkpoint) is moved aside to
 * ".OUT.partial.damaged" (or .damaged.2, ... when that is taken), with one warning, and the
 * job starts afresh. -1 with fa_seterr when it cannot be moved. */
static int set_aside(const char *partial, const struct stat *sb, int has_key) {
    static const char sig[8] = {'\211', 'H', 'D', 'F', '\r', '\n', '\032', '\n'};
    char head[8] = {0}, dst[4200];
    FILE *fp = fopen(partial, "rb");
    size_t n = fp ? fread(head, 1, sizeof head, fp) : 0;
    if (fp) fclose(fp);
    const char *why = sb->st_size == 0 ? "it is empty"
                    : n < sizeof head || memcmp(head, sig, sizeof sig)
                        ? "it has no HDF5 signature: not HDF5, damaged, or its job was killed "
                          "before its first checkpoint"
                    : !has_key ? "it has no job key: damaged, or its job was killed before "
                                 "its first checkpoint"
                               : "it records no finished chunks: its job was killed before its "
                                 "first checkpoint";
    for (int i = 1; i <= 1000; i++) {
        snprintf(dst, sizeof dst, i == 1 ? "%s.damaged" : "%s.damaged.%d", partial, i);
        if (access(dst, F_OK) != 0) break;
    }
    if (rename(partial, dst) != 0)
        return fa_seterr("--resume: partial output '%s' cannot be resumed (%s) and cannot be "
                         "moved aside to '%s': %s", partial, why, dst, strerror(errno));
    fa_warn("--resume: partial output '%s' cannot be resumed (%s); moved it to '%s' and "
            "starting afresh", partial, why, dst);
    return 0;
}

static void fmt_mtime(char *buf, size_t len, long long ns) {
    time_t t = (time_t)(ns / 1000000000);
    struct tm tm;
    char day[64];
    gmtime_r(&t, &tm);
    strftime(day, sizeof day, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(buf, len, "%s.%09lld UTC", day, ns % 1000000000);
}

/* Rank 0: the input must be the one the partial was made from (size and modification time as
 * recorded by its checkpoints; the data of each batch element are compared when loaded, in the
 * pipeline). -1 with fa_seterr naming what changed. */
static int check_input_identity(const fa_job *job, const char *partial) {
    char id[128], what[400];
    long long rs, rm;
    struct stat sb;
    if (h5_attr_str(partial, "input_identity", id, sizeof id) != 0 ||
        sscanf(id, "size=%lld mtime_ns=%lld", &rs, &rm) != 2) {
        fa_warn("--resume: partial output '%s' records no input identity (an older fa_long "
                "made it): input '%s' is not checked against it", partial, job->input);
        return 0;
    }
    if (stat(job->input, &sb) != 0)
        return fa_seterr("--resume: input '%s': %s", job->input, strerror(errno));
    long long cs = (long long)sb.st_size,
              cm = (long long)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    if (cs == rs && cm == rm) return 0;
    char a[80], b[80];
    fmt_mtime(a, sizeof a, rm);
    fmt_mtime(b, sizeof b, cm);
    if (cs != rs && cm != rm)
        snprintf(what, sizeof what, "size %lld -> %lld bytes, modification time %s -> %s", rs,
                 cs, a, b);
    else if (cs != rs)
        snprintf(what, sizeof what, "size %lld -> %lld bytes", rs, cs);
    else
        snprintf(what, sizeof what, "modification time %s -> %s, same size", a, b);
    return fa_seterr("--resume: input '%s' changed since partial output '%s' was written (%s); "
                     "expected the same input: restore it, or remove the partial to start over",
                     job->input, partial, what);
}

/* The settings of a job key (job_key, key_layouts): "input=PATH q=... B=... causal=... ...", each
 * a name of letters and '_' after a space, '=', and a value running to the next such name. */
typedef struct { const char *name, *val; int nlen, vlen; } key_item;

static const char *name_end(const char *p) {
    while (*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) p++;
    return p;
}

static int key_items(const char *key, key_item *it, int max) {
    int n = 0;
    for (const char *p = key; *p && n < max;) {
        const char *eq = name_end(p), *end = eq + 1;
        if (*eq != '=' || eq == p) break;
        while (*end && !(*end == ' ' && *name_end(end + 1) == '=' && name_end(end + 1) > end + 1))
            end++;                                   /* the next " name=" ends the value */
        it[n++] = (key_item){p, eq + 1, (int)(eq - p), (int)(end - eq - 1)};
        p = *end ? end + 1 : end;
    }
    return n;
}

static int key_find(const key_item *it, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if ((int)strlen(name) == it[i].nlen && !strncmp(it[i].name, name, (size_t)it[i].nlen))
            return i;
    return -1;
}

/* A setting's value in items it[0..n), or what a key leaves out for it: the keys leave out the
 * default paths, a plain mask's parameters and the all-bnhd layouts (job_key, key_layouts). */
static const char *key_value(const key_item *it, int n, const char *name, int *len) {
    static const char *const dflt[][2] = {
        {"q", "/q"}, {"k", "/k"}, {"v", "/v"}, {"out_group", "/"}, {"window", "none"},
        {"softcap", "0"}, {"alibi", "0"}, {"documents", "0"}, {"tables", "none"},
        {"layout", "bnhd,bnhd,bnhd->bnhd"}};
    const int i = key_find(it, n, name);
    if (i >= 0) return *len = it[i].vlen, it[i].val;
    for (size_t j = 0; j < sizeof dflt / sizeof dflt[0]; j++)
        if (!strcmp(dflt[j][0], name)) return *len = (int)strlen(dflt[j][1]), dflt[j][1];
    return *len = 10, "unrecorded";
}

/* Rank 0: the settings in which `was` (an earlier run's job key) and `now` differ, as the key
 * spells them, "causal=1 (this run: 0); chunk=64 (this run: 128)", into buf[len]. */
static void key_diff(const char *was, const char *now, char *buf, int len) {
    key_item a[64], b[64];
    const int na = key_items(was, a, 64), nb = key_items(now, b, 64);
    int k = 0;
    buf[0] = 0;
    for (int i = 0; i < nb + na && k < len; i++) {   /* now's settings, then those only in was */
        const key_item *x = i < nb ? &b[i] : &a[i - nb];
        char name[64];
        int la, lb;
        snprintf(name, sizeof name, "%.*s", x->nlen, x->name);
        if (i >= nb && key_find(b, nb, name) >= 0) continue;
        const char *va = key_value(a, na, name, &la), *vb = key_value(b, nb, name, &lb);
        if (la == lb && !strncmp(va, vb, (size_t)la)) continue;
        k += snprintf(buf + k, (size_t)(len - k), "%s%s=%.*s (this run: %.*s)", k ? "; " : "",
                      name, la, va, lb, vb);
    }
    if (!k && strcmp(was, now)) snprintf(buf, (size_t)len, "%s (this run: %s)", was, now);
}

/* Rank 0 decides how a --resume run starts; the others follow. *first: chunks already done. */
static int resume_plan(const fa_job *job, const char *key, int64_t *first) {
    struct { int st, plan; int64_t first; } v = {0, RESUME_FRESH, 0};
    if (fa_rank == 0 && job->resume) {
        char partial[4096], got[8192] = "";
        double done = 0;
        struct stat sb;
        h5out_partial_path(job->output, partial, sizeof partial);
        if (stat(partial, &sb) == 0) {
            int has_key = sb.st_size > 0 &&
                          h5_attr_str(partial, "resume_key", got, sizeof got) == 0;
            int has_done = has_key && h5_attr_double(partial, "chunks_done", &done) == 0;
            if (!has_done) {            /* nothing resumable in it: keep it aside, start afresh */
                v.st = set_aside(partial, &sb, has_key);
            } else if (strcmp(got, key)) {
                char diff[700];
                key_diff(got, key, diff, sizeof diff);
                v.st = fa_seterr("--resume: partial output '%s' was made by another job: %s; "
                                 "remove it or run without --resume", partial, diff);
            } else {
                v.plan = RESUME_PARTIAL;
                v.first = (int64_t)done;
                v.st = check_input_identity(job, partial);
            }
        }
        if (v.plan == RESUME_FRESH && !v.st && stat(job->output, &sb) == 0 &&
            h5_attr_str(job->output, "resume_key", got, sizeof got) == 0) {
            char diff[700];
            if (!strcmp(got, key)) {
                v.plan = RESUME_COMPLETE;
            } else if (!job->force) {          /* another job's finished output: what differs */
                key_diff(got, key, diff, sizeof diff);
                v.st = fa_seterr("--resume: output '%s' exists, made by another job: %s; "
                                 "expected the same settings to resume: remove it, give another "
                                 "--output, or add --force to replace it", job->output, diff);
            }
        }
    }
    MPI_Bcast(&v, sizeof v, MPI_BYTE, 0, MPI_COMM_WORLD);
    *first = v.first;
    return agree(v.st) ? -1 : v.plan;
}

/* Rank 0: -1 when the output names the input file itself (same device and inode). */
static int output_not_input(const char *in, const char *out) {
    struct stat a, b;
    if (stat(in, &a) != 0 || stat(out, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        return 0;
    return fa_seterr("output '%s' is the input file '%s'%s; expected another path (even with "
                     "--force)", out, in, strcmp(in, out) ? " (through a link)" : "");
}

/* Seconds since *mark, which moves to now: the run's phases, one after another (job_clock). */
static double lap(double *mark) {
    const double now = fa_now(), d = now - *mark;
    *mark = now;
    return d;
}

/* What a run has opened, held in one place so that every way out of cmd_run releases it the
 * same way (run_close): the input, the mask's tables, the GPUs and NCCL, the output until it is
 * committed, suspended or aborted, the report's text and the --compare errors. */
typedef struct {
    h5in *in;
    plan_mask pm;                   /* the mask: options and the input's tables */
    gpu_comm gc;                    /* each rank's GPU and the NCCL communicator (GPU runs) */
    run_plan pl;                    /* the plan (its rows: this rank's keys) */
    h5out *out;                     /* NULL once committed or suspended (both free it) */
    report rep;
    double *compare_rel;            /* --compare: the relative error per head */
} run_ctx;

/* The one cleanup path, in reverse of opening; what was not opened (NULL, zero) is skipped. An
 * output still held is aborted (its temporary file removed). Every rank comes here at the same
 * point (each failure is agreed first), so the collective closes match. */
static void run_close(run_ctx *r) {
    free(r->compare_rel);
    report_free(&r->rep);
    if (r->out) h5out_abort(r->out);
    gpu_comm_free(&r->gc);
    plan_free(&r->pl);
    plan_mask_free(&r->pm);
    h5in_close(r->in);
    memset(r, 0, sizeof *r);
}

/* cmd_run's status after a failure whose message is set: reported (fa_report_error) once
 * run_close has released everything, as each failure did before. */
#define RUN_FAILED (-1)

int cmd_run(int argc, char **argv) {
    if (fa_start.main == 0) fa_start_clock_init();     /* not started by main(): from here */
    fa_job job;
    int rc = cli_parse_run(argc, argv, &job);
    if (rc == 1) return 0;
    if (rc) return fa_report_error();
    run_ctx r;
    memset(&r, 0, sizeof r);
    fa_verbosity = job.quiet ? 0 : job.verbose ? 2 : 1;
    double t0 = fa_now();
    job_clock clk;                  /* the whole job's time line, phase after phase */
    memset(&clk, 0, sizeof clk);
    clk.t[TL_PROCESS] = fa_start.main - fa_start.process;
    clk.t[TL_MPI_INIT] = fa_start.mpi_init_s;
    double mark = fa_start.main + fa_start.mpi_init_s;
    if (job.threads > 0) {   /* main() saw "--threads N"; this catches getopt's abbreviations */
        omp_set_num_threads(job.threads);
        fa_threads.threads = job.threads;
        fa_threads.why = "--threads";
    }
    plan_env env;                   /* every FA_* variable, read and checked once */
    if (agree(plan_env_read(&env))) goto failed;
    fa_log(2, "fa_long: %d OpenMP threads a rank (%s; rank 0's node: %d ranks, %d CPUs)",
           fa_threads.threads, fa_threads.why, fa_threads.node_ranks, fa_threads.node_cpus);
    /* the output: never the input (through links too), and no other job's: its lock is held
     * from here to exit, before --resume looks at the partial file */
    if (agree(fa_rank == 0 ? output_not_input(job.input, job.output) : 0) ||
        h5out_lock(job.output, MPI_COMM_WORLD))
        goto failed;

    clk.t[TL_START] += lap(&mark);
    fa_backend be;
    if (plan_backend(&job, &be)) goto failed;
    clk.t[TL_GPU_INIT] += lap(&mark);               /* the CUDA driver's start, where there is one */

    fa_shape s;
    if (agree(h5in_open_layout(job.input, job.dset, job.layout, MPI_COMM_WORLD, env.io_cap_bytes,
                               &r.in, &s)))
        goto failed;
    if (plan_mask_make(&job, &s, &r.pm) || plan_backend_job(&job, &s, &r.pm.mask, &be)) goto failed;
    /* o in the input's layout (q's) unless --out-layout says otherwise */
    const fa_layout o_layout = job.out_layout ? job.out_layout : h5in_layout(r.in, 0);
    fa_log(2, "fa_long: layout: q %s, k %s, v %s (%s), o %s (%s)",
           fa_layout_name(h5in_layout(r.in, 0)), fa_layout_name(h5in_layout(r.in, 1)),
           fa_layout_name(h5in_layout(r.in, 2)), job.layout ? "--layout" : "attributes, else bnhd",
           fa_layout_name(o_layout), job.out_layout ? "--out-layout" : "q's");
    /* GPUs: each rank bound to its device, NCCL up where it can serve the merge (the planner
     * sizes the keys against what the device has left) */
    const gpu_comm *gcp = be == BACKEND_CUDA ? &r.gc : NULL;
    clk.t[TL_OPEN] += lap(&mark);
    if (gcp && gpu_comm_init(MPI_COMM_WORLD, plan_nccl_wanted(&job), &r.gc)) goto failed;
    clk.t[TL_GPU_INIT] += lap(&mark);
    if (job.tune) plan_tune(&job, &env, &s, be);   /* --tune: tune and cache first, explicitly */
    int64_t resumed_chunk = resume_chunk(&job);   /* --resume, no --chunk: the earlier run's */
    if (plan_make(&job, &env, &s, be, gcp, resumed_chunk, &r.pm.mask, &r.pl)) goto failed;
    plan_print(&r.pl);
    const int64_t chunk = r.pl.chunk;
    const double scale = r.pl.scale;
    const fa_dtype ot = r.pl.o_type;
    char key[8192];
    job_key(&job, &s, &r.pm.mask, ot, chunk, scale, key, sizeof key);
    key_layouts(r.in, o_layout, key, sizeof key);
    int64_t first = 0;
    int plan = resume_plan(&job, key, &first);
    if (plan < 0) goto failed;
    if (plan == RESUME_COMPLETE) {
        fa_log(1, "fa_long: %s is complete; nothing to resume", job.output);
        rc = 0;
        goto out;
    }
    clk.t[TL_PLAN] += lap(&mark);
    rc = plan == RESUME_PARTIAL ? h5out_reopen_layout(job.output, job.out_group, MPI_COMM_WORLD, &s, ot,
                                                      o_layout, job.lse, r.pl.io_cap_bytes, &r.out)
                                : h5out_create_layout(job.output, job.out_group, job.force, MPI_COMM_WORLD,
                                                      &s, ot, o_layout, job.lse, r.pl.io_cap_bytes, &r.out);
    if (agree(rc) || (plan == RESUME_FRESH && agree(h5out_attr_str(r.out, "resume_key", key))))
        goto failed;
    if (plan == RESUME_PARTIAL)
        fa_log(1, "fa_long: resuming %s from chunk %lld", job.output, (long long)first);
    install_stop_handlers();
    char mdesc[256];
    fa_log(2, "fa_long: %s backend, %s mask, keys across %d ranks", fa_backend_name(be),
           mask_describe(&r.pl.mask, mdesc, sizeof mdesc), fa_nranks);

    int64_t nchunks = s.B * ((s.Nq + chunk - 1) / chunk);
    progress pg;
    progress_init(&pg, !job.quiet, nchunks, pipeline_flops(&s, &r.pl.mask, -1, 0, s.Nq),
                  r.pl.progress_interval_s);
    progress_skip(&pg, first, done_flops(&r.pl.mask, &s, chunk, first));
    pipeline_stats st;
    clk.t[TL_CREATE] += lap(&mark);
    pipe_source src;               /* the pipeline reads the input and writes the output */
    pipe_sink snk;
    pipe_source_h5(&src, r.in, r.pl.direct_read, r.pl.fused_read);
    pipe_sink_h5(&snk, r.out);
    rc = pipeline_run(&r.pl, MPI_COMM_WORLD, &src, &snk, gcp, first, &pg, &st);
    progress_end(&pg);
    lap(&mark);                    /* its phases come from st (job_clock_close) */
    if (rc == 0 && st.stopped) {
        gpu_comm_free(&r.gc);
        rc = h5out_suspend(r.out, st.chunks_done);
        r.out = NULL;              /* suspend frees it */
        if (agree(rc)) goto failed;
        char partial[4096];
        h5out_partial_path(job.output, partial, sizeof partial);
        fa_log(1, "fa_long: stopped on a signal after %lld of %lld chunks; they are kept in %s; "
                  "run the same command with --resume to continue", (long long)st.chunks_done,
               (long long)nchunks, partial);
        write_stop_file(env.stop_file, st.chunks_done, nchunks, partial);
        rc = FA_EXIT_STOPPED;
        goto out;
    }
    if (agree(rc)) goto failed;
    clk.run_s = fa_now() - t0;      /* what elapsed_s was before the whole job was counted */
    MPI_Bcast(&clk.run_s, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    const double elapsed = clk.run_s;   /* the output's elapsed_seconds attribute, as before */
    const char *compute = st.compute;
    /* the report kept in the output: written before the commit, so it stops there */
    h5out_get_flush_stats(r.out, &clk.flush);
    clk.t[TL_ATTRS] += lap(&mark);
    job_clock_close(&clk, &st);
    report_build(&r.rep, &job, &r.pl, &st, compute, &clk, NULL, NULL);
    /* attributes are collective with the same value everywhere: rank 0's report travels */
    int64_t len = r.rep.json ? (int64_t)strlen(r.rep.json) + 1 : 0;
    MPI_Bcast(&len, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    if (fa_rank != 0) r.rep.json = fa_calloc((size_t)len, 1, "report");
    MPI_Bcast(r.rep.json, (int)len, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (agree(write_attrs(r.out, &job, &r.pl, elapsed, &st)) ||
        agree(mode_attrs(r.out, &job, &st)) ||
        agree(layout_attrs(r.out, r.in, o_layout)) ||
        agree(h5out_attr_int(r.out, "chunks_done", nchunks)) ||
        agree(h5out_attr_str(r.out, "report", r.rep.json)))
        goto failed;
    clk.t[TL_ATTRS] += lap(&mark);
    rc = h5out_commit_measured(r.out, &clk.flush);
    r.out = NULL;                   /* commit frees out, whatever happens */
    clk.t[TL_COMMIT] += lap(&mark);
    clk.committed = 1;
    job_clock_close(&clk, &st);    /* the whole job: its process's start to the committed output */
    if (agree(rc)) goto failed;
    h5in_close(r.in);               /* before --compare opens the input again */
    r.in = NULL;
    report_free(&r.rep);
    summarize(&job, &r.pl, &st, be, &clk);
    chunk_warning(&job, &s, &st);
    rc = job.compare ? compare_run(&job, &env, be, gcp, &r.compare_rel) : 0;
    gpu_comm_free(&r.gc);
    if (rc) goto failed;
    rc = finish(&job, &r.pl, &st, compute, &clk, r.compare_rel);
    goto out;
failed:
    rc = RUN_FAILED;
out:
    run_close(&r);
    return rc == RUN_FAILED ? fa_report_error() : rc;
}
