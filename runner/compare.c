/* compare.c — the run's mode bookkeeping (runner/compare.h): the 'mode' attribute, the Taylor
 * denominator-fallback count, and --compare (both modes in one job, relative error per head).
 *
 * --compare runs the pipeline a second time in the other mode into a temporary file next to the
 * output (OUTPUT.compare.h5, float32, no lse), committed, then every rank reads a share of the rows
 * of both files and the per-head maxima are reduced:
 *   compare_rel_err[h] = max |o_taylor - o_exact| / max |o_exact|  over every (b, row, d) of head h,
 * written onto the output (attribute [H] float64, with 'compare_mode' naming the other mode) and
 * printed in the summary; the temporary file is removed. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "dist/pipeline.h"
#include "io/h5gen.h"
#include "kernels/taylor.h"
#include "base/agree.h"
#include "base/common.h"
#include "runner/compare.h"
#include "base/progress.h"

static const char *mode_name(fa_mode m) { return m == MODE_TAYLOR ? "taylor" : "exact"; }

int mode_attrs(h5out *out, const fa_job *job, const pipeline_stats *st) {
    int rc = h5out_attr_str(out, "mode", mode_name(job->mode));
    if (job->mode != MODE_TAYLOR) return rc;
    int64_t mine[4] = {st->taylor.rows, st->taylor.fallback, st->taylor.zeroed, st->taylor.empty},
            all[4];
    MPI_Allreduce(mine, all, 4, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    rc |= h5out_attr_int(out, "taylor_fallback_rows", all[1]);
    rc |= h5out_attr_int(out, "taylor_zeroed_rows", all[2]);
    rc |= h5out_attr_double(out, "taylor_den_floor", TAYLOR_DEN_FLOOR);
    if (fa_rank == 0 && (!job->quiet || all[1] || all[2]))
        fprintf(stderr,
                "fa_long: taylor: %lld (row, head) pairs of %lld had a denominator <= %.2g N_i "
                "(near zero or negative) and took the fallback o = mean of the visible v; %lld "
                "zeroed (not finite); %lld saw no key\n",
                (long long)all[1], (long long)all[0], (double)TAYLOR_DEN_FLOOR, (long long)all[2],
                (long long)all[3]);
    return rc ? -1 : 0;
}

/* Rank 0 alone, on the finished output: compare_rel_err [H] (float64) and compare_mode. */
static int write_compare_attrs(const char *path, const double *rel, int64_t h, const char *other) {
    if (h5_set_attr_doubles(path, "compare_rel_err", rel, h)) return -1;
    return h5_set_attr_str(path, "compare_mode", other);
}

/* Per-head max |a - b| and max |ref| over this rank's share of rows; ref is file `ref`. The
 * output's o (oa in pa) in the layout it records; pb's, bnhd. */
static int head_errors(const char *pa, const char *oa, const char *pb, int b_is_ref, const fa_shape *s,
                       double *dmax, double *rmax) {
    fa_layout la;
    if (h5_layout(pa, oa, &la)) return -1;
    int64_t H = s->H, D = s->D, total = s->B * s->Nq;
    int64_t lo = total * fa_rank / fa_nranks, hi = total * (fa_rank + 1) / fa_nranks;
    int64_t blk = (int64_t)(8 << 20) / (H * D * 4) + 1;
    float *a = fa_malloc(sizeof(float) * (size_t)(blk * H * D), "compare rows");
    float *b = fa_malloc(sizeof(float) * (size_t)(blk * H * D), "compare rows");
    int rc = 0;
    for (int64_t r = lo; r < hi && !rc;) {
        int64_t bb = r / s->Nq, i = r % s->Nq, n = s->Nq - i;
        if (n > blk) n = blk;
        if (n > hi - r) n = hi - r;
        int64_t st[4] = {bb, i, 0, 0}, ct[4] = {1, n, H, D};
        if (h5_read_block_as(pa, oa, la, st, ct, a) || h5_read_block(pb, "o", 4, st, ct, b)) {
            rc = -1;
            break;
        }
        for (int64_t x = 0; x < n * H * D; x++) {
            int64_t h = (x / D) % H;
            double df = fabs((double)a[x] - b[x]), ref = fabs(b_is_ref ? b[x] : a[x]);
            if (df > dmax[h] || df != df) dmax[h] = df != df ? INFINITY : df;
            if (ref > rmax[h]) rmax[h] = ref;
        }
        r += n;
    }
    free(a);
    free(b);
    return rc;
}

static int agree_rc(int rc) { return fa_agree(MPI_COMM_WORLD, rc, -1); }

int compare_run(const fa_job *job, const plan_env *env, fa_backend be, const gpu_comm *gc,
                double **rel_out) {
    *rel_out = NULL;
    fa_job other = *job;
    other.mode = job->mode == MODE_TAYLOR ? MODE_EXACT : MODE_TAYLOR;
    other.compare = 0;
    other.lse = 0;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.compare.h5", job->output);
    other.output = tmp;
    double t0 = fa_now();
    h5in *in = NULL;
    fa_shape s;
    if (agree_rc(h5in_open_layout(job->input, job->dset, job->layout, MPI_COMM_WORLD,
                                  env->io_cap_bytes, &in, &s)))
        return -1;
    run_plan pl;                         /* the other mode's own plan (a plain mask: --compare
                                          * takes no other, plan_backend_job) */
    attn_mask plain = mask_plain(s.Nq, s.Nk, job->causal);
    if (plan_make(&other, env, &s, be, gc, 0, &plain, &pl)) {
        plan_free(&pl);
        h5in_close(in);
        return -1;
    }
    h5out *out = NULL;
    if (agree_rc(h5out_create(tmp, NULL, 1, MPI_COMM_WORLD, &s, FA_F32, 0, pl.io_cap_bytes, &out))) {
        plan_free(&pl);
        h5in_close(in);
        return -1;
    }
    progress pg;
    progress_init(&pg, 0, 1, 1.0, pl.progress_interval_s);
    pipeline_stats st;
    pipe_source src;
    pipe_sink snk;
    pipe_source_h5(&src, in, pl.direct_read, pl.fused_read);
    pipe_sink_h5(&snk, out);
    int rc = pipeline_run(&pl, MPI_COMM_WORLD, &src, &snk, gc, 0, &pg, &st);
    plan_free(&pl);
    if (agree_rc(rc)) {
        h5out_abort(out);
        h5in_close(in);
        return -1;
    }
    h5in_close(in);
    if (agree_rc(h5out_commit(out))) return -1;
    int64_t H = s.H;
    double *dmax = fa_calloc((size_t)H, sizeof(double), "compare"), *rmax = fa_calloc((size_t)H, sizeof(double), "compare");
    double *rel = fa_calloc((size_t)H, sizeof(double), "compare");
    /* the exact mode's output is the reference */
    char oa[1100];
    rc = head_errors(job->output, fa_out_dset(job->out_group, "o", oa, sizeof oa), tmp,
                     other.mode == MODE_EXACT, &s, dmax, rmax);
    if (agree_rc(rc)) goto done;
    MPI_Allreduce(MPI_IN_PLACE, dmax, (int)H, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, rmax, (int)H, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    double worst = 0;
    for (int64_t h = 0; h < H; h++) {
        rel[h] = rmax[h] > 0 ? dmax[h] / rmax[h] : dmax[h];
        if (rel[h] > worst || rel[h] != rel[h]) worst = rel[h];
    }
    rc = 0;
    if (fa_rank == 0) {
        rc = write_compare_attrs(job->output, rel, H, mode_name(other.mode));
        fprintf(stderr, "fa_long: compare %s vs %s (%s backend, %.3f s more): relative error "
                        "max|o_taylor - o_exact| / max|o_exact| per head:",
                mode_name(job->mode), mode_name(other.mode), fa_backend_name(be), fa_now() - t0);
        for (int64_t h = 0; h < H && h < 64; h++) fprintf(stderr, " %.3e", rel[h]);
        fprintf(stderr, "%s; max %.3e\n", H > 64 ? " ..." : "", worst);
    }
    rc = agree_rc(rc);
done:
    if (fa_rank == 0) unlink(tmp);
    free(dmax);
    free(rmax);
    if (rc == 0) *rel_out = rel;
    else free(rel);
    return rc;
}
