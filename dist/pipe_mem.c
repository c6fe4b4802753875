/* pipe_mem.c — the pipeline's source and sink over buffers in host memory (pipe_io.h), the
 * library's: q, k, v in bnhd or bhnd and any of the four element types; o and lse into the
 * caller's buffers. Rows are converted with io/convert.c's loops, as the file path converts
 * them, so the engine gets the same bits from a buffer as from a file holding the same values. */
#include "dist/pipe_io.h"
#include "base/agree.h"
#include "base/common.h"
#include "io/convert.h"
#include <stdio.h>
#include <string.h>

static const char *const NAME[3] = {"q", "k", "v"};

/* Rows [lr, lr+n) (the tensor's own) of batch element b into dst [n, heads, D] in `as` (its own
 * type: copied; FA_F32: widened or rounded). */
static void mem_rows(const pipe_mem_tensor *t, int64_t b, int64_t lr, int64_t n, char *dst,
                     fa_dtype as) {
    const int64_t H = t->heads, D = t->D, es = fa_dtype_size(t->type), os = fa_dtype_size(as);
    const char *x = t->x;
    if (!t->bhnd) {
        const char *src = x + ((b * t->N + lr) * H * D) * es;
        if (as == t->type) memcpy(dst, src, (size_t)(n * H * D * es));
        else fa_to_f32(t->type, src, (float *)dst, n * H * D);
        return;
    }
#pragma omp parallel for schedule(static) if (n * H * D >= 65536)
    for (int64_t i = 0; i < n; i++)          /* [heads][N][D] -> [n][heads][D], a head's row at a time */
        for (int64_t h = 0; h < H; h++) {
            const char *src = x + (((b * H + h) * t->N + lr + i) * D) * es;
            char *o = dst + ((i * H + h) * D) * os;
            if (as == t->type) memcpy(o, src, (size_t)(D * es));
            else fa_to_f32(t->type, src, (float *)o, D);
        }
}

/* The first non-finite element of x (len elements of type t) or len, and the largest finite
 * |x| as float32 bits (ordered like |x|) into *amax. */
static int64_t scan_finite(const void *x, fa_dtype t, int64_t len, uint32_t *amax) {
    int64_t first = len;
    uint32_t m = 0;
#pragma omp parallel for reduction(min : first) reduction(max : m) schedule(static) if (len > 65536)
    for (int64_t e = 0; e < len; e++) {
        const float f = t == FA_F32 ? ((const float *)x)[e]
                      : t == FA_F16 ? fa_f16_to_f32_ref(((const uint16_t *)x)[e])
                                    : fa_bf16_to_f32_ref(((const uint16_t *)x)[e]);
        const uint32_t a = fa_f32_bits(f) & 0x7fffffffu;
        if (a >= 0x7f800000u) first = e < first ? e : first;
        else m = a > m ? a : m;
    }
    *amax = m > *amax ? m : *amax;
    return first;
}

static int mem_read(void *ctx, int which, int64_t b, const row_range *r, int nr, void *dst,
                    fa_dtype as, int check_finite) {
    pipe_mem_source *m = ctx;
    const pipe_mem_tensor *t = &m->t[which];
    const int64_t row_el = t->heads * t->D, os = fa_dtype_size(as);
    int st = 0;
    if (as != FA_F32 && as != t->type)
        st = fa_seterr("fa_long: %s: %s holds %s; it cannot be handed over as %s", m->who,
                       NAME[which], fa_dtype_name(t->type), fa_dtype_name(as));
    for (int i = 0; i < nr && st == 0; i++)
        if (b < 0 || b >= t->B || r[i].start < t->row0 || r[i].n < 0 ||
            r[i].start + r[i].n > t->row0 + t->N)
            st = fa_seterr("fa_long: %s: rows [%lld, %lld) of %s are not in this rank's rows "
                           "[%lld, %lld)", m->who, (long long)r[i].start,
                           (long long)(r[i].start + r[i].n), NAME[which], (long long)t->row0,
                           (long long)(t->row0 + t->N));
    if (fa_agree(m->comm, st, 0) < 0) return -1;
    int64_t at = 0, bad = -1;                 /* bad: the first non-finite's position index */
    const char *what = "";
    uint32_t amax = 0;
    for (int i = 0; i < nr; at += r[i].n, i++) {
        char *o = (char *)dst + at * row_el * os;
        mem_rows(t, b, r[i].start - t->row0, r[i].n, o, as);
        if (!check_finite) continue;
        const int64_t len = r[i].n * row_el, e = scan_finite(o, as, len, &amax);
        if (e == len) continue;
        /* [b, position, head, d] as one number, for the ranks' ranking */
        const int64_t g = (b * t->positions + r[i].start) * row_el + e;
        if (bad < 0 || g < bad) {
            float f;
            fa_to_f32(as, o + e * os, &f, 1);
            bad = g;
            what = f != f ? "NaN" : f > 0 ? "+Inf" : "-Inf";
            /* the caller's index of it: [b, row, head, d] (bnhd), [b, head, row, d] (bhnd) of
             * its buffer (a rank's shard of keys: with the key's position) */
            const long long row = r[i].start - t->row0 + e / row_el, h = e % row_el / t->D,
                            d = e % t->D;
            const int shard = t->row0 != 0 || t->N != t->positions;
            int rank, np;
            MPI_Comm_rank(m->comm, &rank);
            MPI_Comm_size(m->comm, &np);
            char whose[32] = "", pos[48] = "";
            if (np > 1) snprintf(whose, sizeof whose, "rank %d's ", rank);
            if (shard) snprintf(pos, sizeof pos, "; key position %lld", (long long)(r[i].start + e / row_el));
            fa_seterr("fa_long: %s: %s%s has %s%s at [%lld, %lld, %lld, %lld] (its %s index%s); "
                      "expected finite values", m->who, whose, NAME[which], what,
                      t->type == FA_F64 && what[0] != 'N' ? " (in float32)" : "", (long long)b,
                      t->bhnd ? h : row, t->bhnd ? row : h, d,
                      t->bhnd ? "[B, heads, N, D]" : "[B, N, heads, D]", pos);
        }
    }
    if (check_finite) m->absmax[which] = fa_bits_f32(amax);
    return check_finite ? fa_agree(m->comm, bad >= 0, bad) : 0;
}

static float mem_absmax(void *ctx, int which) { return ((pipe_mem_source *)ctx)->absmax[which]; }
static void mem_identity(void *ctx, int64_t *size, int64_t *mtime) { *size = *mtime = 0; }
static void mem_digests(void *ctx, uint64_t d[3]) { d[0] = d[1] = d[2] = 0; }

void pipe_source_mem(pipe_source *src, pipe_mem_source *m, const pipe_mem_tensor t[3],
                     MPI_Comm comm, const char *who) {
    memset(m, 0, sizeof *m);
    memcpy(m->t, t, sizeof m->t);
    m->who = who;
    MPI_Comm_dup(comm, &m->comm);
    *src = (pipe_source){.ctx = m, .read_rows = mem_read, .last_absmax = mem_absmax,
                         .identity = mem_identity, .take_digests = mem_digests};
}

void pipe_source_mem_free(pipe_mem_source *m) {
    if (m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
}

static int mem_write(void *ctx, int64_t b, int64_t r0, int64_t n, const void *o, fa_dtype as,
                     const float *lse) {
    pipe_mem_sink *m = ctx;
    const int64_t H = m->H, D = m->D, es = fa_dtype_size(m->o_type), is = fa_dtype_size(as);
    char *dst = m->o;
#pragma omp parallel for schedule(static) if (n * H * D >= 65536)
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < H; h++) {
            const char *src = (const char *)o + ((i * H + h) * D) * is;
            char *to = dst + (m->bhnd ? ((b * H + h) * m->Nq + r0 + i) * D
                                      : ((b * m->Nq + r0 + i) * H + h) * D) * es;
            if (as == m->o_type) memcpy(to, src, (size_t)(D * es));
            else fa_from_f32(m->o_type, (const float *)src, to, D);
            if (m->lse) m->lse[(b * H + h) * m->Nq + r0 + i] = lse[i * H + h];
        }
    return 0;
}

static void mem_flush(void *ctx) {}
static int mem_checkpoint(void *ctx, int64_t done) { return 0; }
static void mem_note_input(void *ctx, int64_t size, int64_t mtime) {}
static void mem_note_kv(void *ctx, int64_t b, uint64_t k, uint64_t v) {}
static int mem_recorded_kv(void *ctx, int64_t b, uint64_t *k, uint64_t *v) { return 0; }

void pipe_sink_mem(pipe_sink *snk, pipe_mem_sink *m, int writer) {
    *snk = (pipe_sink){.ctx = m, .writer = writer, .write_rows = mem_write,
                       .flush_behind = mem_flush, .checkpoint = mem_checkpoint,
                       .note_input = mem_note_input, .note_kv = mem_note_kv,
                       .recorded_kv = mem_recorded_kv};
}
