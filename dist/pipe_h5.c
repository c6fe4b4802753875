/* pipe_h5.c — the pipeline's source and sink over an HDF5 input and output (pipe_io.h): each
 * call is the io/h5in.c or io/h5out.c call the pipeline made before it had a source and sink. */
#include "dist/pipe_io.h"

static const char *const DSET[3] = {"q", "k", "v"};

static int h5_read(void *ctx, int which, int64_t b, const row_range *r, int nr, void *dst,
                   fa_dtype as, int check_finite) {
    return h5in_read_rows_as(ctx, DSET[which], b, r, nr, dst, as, check_finite);
}
static float h5_absmax(void *ctx, int which) { return h5in_last_absmax(ctx, DSET[which]); }
static void h5_identity(void *ctx, int64_t *size, int64_t *mtime) { h5in_identity(ctx, size, mtime); }
static void h5_digests(void *ctx, uint64_t d[3]) { h5in_take_digests(ctx, d); }

void pipe_source_h5(pipe_source *src, h5in *in, int direct_read, int fused_read) {
    h5in_direct_reads(in, direct_read);
    h5in_fused_reads(in, fused_read);
    *src = (pipe_source){.ctx = in, .read_rows = h5_read, .last_absmax = h5_absmax,
                         .identity = h5_identity, .take_digests = h5_digests};
}

static int h5_write(void *ctx, int64_t b, int64_t r0, int64_t n, const void *o, fa_dtype as,
                    const float *lse) {
    return h5out_write_rows_as(ctx, b, r0, n, o, as, lse);
}
static void h5_flush(void *ctx) { h5out_flush_behind(ctx); }
static int h5_checkpoint(void *ctx, int64_t done) { return h5out_checkpoint(ctx, done); }
static void h5_note_input(void *ctx, int64_t size, int64_t mtime) { h5out_note_input(ctx, size, mtime); }
static void h5_note_kv(void *ctx, int64_t b, uint64_t k, uint64_t v) { h5out_note_kv(ctx, b, k, v); }
static int h5_recorded_kv(void *ctx, int64_t b, uint64_t *k, uint64_t *v) {
    return h5out_recorded_kv(ctx, b, k, v);
}

int pipe_h5_writer(void) { return h5io_parallel() ? -1 : 0; }

void pipe_sink_h5(pipe_sink *snk, h5out *out) {
    *snk = (pipe_sink){.ctx = out, .writer = pipe_h5_writer(), .write_rows = h5_write,
                       .flush_behind = h5_flush, .checkpoint = h5_checkpoint,
                       .note_input = h5_note_input, .note_kv = h5_note_kv,
                       .recorded_kv = h5_recorded_kv};
}
