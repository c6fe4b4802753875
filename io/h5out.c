/* h5out.c — writing o [B, Nq, H, D] (o_type) and lse [B, H, Nq] (float32).
 * The file is created under a temporary name in the output's folder (".<name>.partial"),
 * registered with fa_set_cleanup_path() so that fa_fail() removes it, and renamed over the
 * final path only by h5out_commit(), after every rank's writes: a failed run leaves no output and
 * never damages an existing one (--force replaces it only at commit). Once a checkpoint has made
 * some chunks durable (h5out_checkpoint), the partial file is kept for --resume instead.
 * Parallel HDF5: every rank writes its own rows through MPI-IO in capped collective transfers,
 * the same number on every rank. Serial HDF5: rank 0 alone holds the file; the other ranks send
 * it their rows, transfer by transfer, and it writes them. */
#define _GNU_SOURCE
#include "io/h5priv.h"
#include "io/convert.h"
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct h5out {
    char path[FA_PATH_MAX], tmp[FA_PATH_MAX];
    MPI_Comm comm;
    int rank, nranks;
    int holder;                 /* this rank has the file open (parallel: all; serial: rank 0) */
    fa_shape shape;
    fa_dtype otype;
    int with_lse;
    hid_t file, o, lse, ftype;  /* ftype: o's file element type, also the memory type */
    int64_t cap_bytes;          /* rank 0's, broadcast */
    int durable;                /* a checkpoint made progress durable: abort keeps the file */
    void *ostage;               /* conversion staging of o and lse, kept between writes (a fresh */
    float *lstage;              /* 64 MB buffer per chunk cost its page faults every time) */
    size_t ostage_bytes, lstage_bytes;
    uint64_t *kvd;              /* --resume: [B][3] {known, k digest, v digest}, the partial's */
    char ident[96];             /* and the input's "size=... mtime_ns=...", both kept on write */
};

/* f's staging buffers, grown to at least the sizes asked for */
static void stage_reserve(h5out *f, size_t obytes, size_t lbytes) {
    if (obytes > f->ostage_bytes) {
        free(f->ostage);
        f->ostage = fa_aligned_alloc(obytes, "o staging");
        f->ostage_bytes = obytes;
    }
    if (lbytes > f->lstage_bytes) {
        free(f->lstage);
        f->lstage = fa_aligned_alloc(lbytes, "lse staging");
        f->lstage_bytes = lbytes;
    }
}

/* ---- rank 0's checks: final path, folder, temporary name ---------------------------------------- */
static int check_output(const char *path, int force, char *tmp, int len) {
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return fa_seterr("output '%s' is a folder; expected a file path",
                                                  path);
        if (!force) return fa_seterr("output '%s' exists; expected a new path (or --force to "
                                     "replace it)", path);
    }
    char d[FA_PATH_MAX], b[FA_PATH_MAX];
    snprintf(d, sizeof d, "%s", path);
    snprintf(b, sizeof b, "%s", path);
    const char *dir = dirname(d), *base = basename(b);
    char probe[FA_PATH_MAX];
    if (snprintf(probe, sizeof probe, "%s/.%s.tmp.%d", dir, base, (int)getpid()) >= len)
        return fa_seterr("output '%s': path too long", path);
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0644);  /* can we create files there? */
    if (fd < 0) return fa_seterr("output '%s': cannot create a file in folder '%s': %s", path,
                                 dir, strerror(errno));
    close(fd);
    unlink(probe);
    h5out_partial_path(path, tmp, len);
    return 0;
}

static int check_shape(const char *path, const fa_shape *s, fa_dtype t) {
    if (s->B < 1 || s->Nq < 1 || s->H < 1 || s->D < 1)
        return fa_seterr("output '%s': empty shape B=%lld Nq=%lld H=%lld D=%lld", path,
                         (long long)s->B, (long long)s->Nq, (long long)s->H, (long long)s->D);
    if (fa_dtype_size(t) == 0) return fa_seterr("output '%s': unknown element type %d", path, t);
    return 0;
}

/* ---- creating the file and its datasets ---------------------------------------------------------- */
static hid_t create_file(h5out *f) {
    hid_t fapl = h5io_fapl(f->comm, 1);
    hid_t file = H5Fcreate(f->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    return file;
}

static int write_str_attr(hid_t obj, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR), a;
    H5Tset_size(t, H5T_VARIABLE);                  /* as h5py writes a str: variable, UTF-8 */
    H5Tset_cset(t, H5T_CSET_UTF8);
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    int st = (a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(a, t, &v) >= 0 ? 0 : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return st;
}

/* Contiguous, allocated at creation, never filled: every element is written by some rank. */
static hid_t create_dataset(hid_t file, const char *name, hid_t type, int nd, const int64_t *d) {
    hsize_t dims[4];
    for (int i = 0; i < nd; i++) dims[i] = (hsize_t)d[i];
    hid_t sp = H5Screate_simple(nd, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_layout(dcpl, H5D_CONTIGUOUS);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t ds = H5Dcreate2(file, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return ds;
}

static int create_contents(h5out *f) {
    const fa_shape *s = &f->shape;
    if ((f->file = create_file(f)) < 0)
        return fa_seterr("output '%s': HDF5 cannot create '%s'", f->path, f->tmp);
    int64_t od[4] = {s->B, s->Nq, s->H, s->D}, ld[3] = {s->B, s->H, s->Nq};
    HDF5_CHECK(f->ftype = h5io_file_type(f->otype), "creating the output element type");
    if ((f->o = create_dataset(f->file, "o", f->ftype, 4, od)) < 0 ||
        (f->otype == FA_BF16 && write_str_attr(f->o, "dtype", "bfloat16") < 0) ||
        (f->with_lse && (f->lse = create_dataset(f->file, "lse", H5T_IEEE_F32LE, 3, ld)) < 0))
        return fa_seterr("output '%s': creating datasets o%s in '%s' failed (%lld bytes)",
                         f->path, f->with_lse ? " and lse" : "", f->tmp,
                         (long long)(od[0] * od[1] * od[2] * od[3] * fa_dtype_size(f->otype)));
    return 0;
}

static void close_contents(h5out *f) {
    if (f->lse >= 0) HDF5_CHECK(H5Dclose(f->lse), "H5Dclose(lse)");
    if (f->o >= 0) HDF5_CHECK(H5Dclose(f->o), "H5Dclose(o)");
    if (f->ftype >= 0) H5Tclose(f->ftype);
    if (f->file >= 0) HDF5_CHECK(H5Fclose(f->file), "H5Fclose(output)");
    f->file = f->o = f->lse = f->ftype = -1;
}

static void out_free(h5out *f) {
    free(f->kvd);
    MPI_Comm_free(&f->comm);
    free(f->ostage);
    free(f->lstage);
    free(f);
}

int h5out_create(const char *path, int force, MPI_Comm comm, const fa_shape *shape,
                 fa_dtype o_type, int with_lse, h5out **out) {
    h5io_init();
    *out = NULL;
    h5out *f = fa_calloc(1, sizeof *f, "h5out");
    MPI_Comm_dup(comm, &f->comm);
    MPI_Comm_rank(f->comm, &f->rank);
    MPI_Comm_size(f->comm, &f->nranks);
    struct { int st; int64_t cap; char tmp[FA_PATH_MAX]; } v = {0, 0, ""};
    if (f->rank == 0) {
        v.st = check_shape(path, shape, o_type);
        if (v.st == 0) v.st = check_output(path, force, v.tmp, sizeof v.tmp);
        v.cap = h5io_cap_bytes();
    }
    MPI_Bcast(&v, sizeof v, MPI_BYTE, 0, f->comm);
    if (h5io_agree(f->comm, v.st, 0) < 0) return out_free(f), -1;
    snprintf(f->path, sizeof f->path, "%s", path);
    snprintf(f->tmp, sizeof f->tmp, "%s", v.tmp);
    f->shape = *shape, f->otype = o_type, f->with_lse = with_lse, f->cap_bytes = v.cap;
    f->file = f->o = f->lse = f->ftype = -1;
    f->holder = h5io_parallel() || f->rank == 0;
    char d[FA_PATH_MAX];
    snprintf(d, sizeof d, "%s", f->tmp);
    if (h5io_parallel() && h5io_visible(f->comm, dirname(d), W_OK, "output folder") < 0)
        return out_free(f), -1;
    fa_set_cleanup_path(f->tmp);
    int st = f->holder ? create_contents(f) : 0;
    if (h5io_agree(f->comm, st, f->rank) < 0) {
        if (f->holder) close_contents(f);
        if (f->rank == 0) unlink(f->tmp);
        fa_set_cleanup_path(NULL);
        return out_free(f), -1;
    }
    *out = f;
    return 0;
}

/* ---- writing rows ---------------------------------------------------------------------------- */
static hid_t transfer_plist(void) {
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    HDF5_CHECK(dxpl, "H5Pcreate(transfer)");
#ifdef H5_HAVE_PARALLEL
    HDF5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE), "H5Pset_dxpl_mpio");
#endif
    return dxpl;
}

/* Writes (or, rows 0, takes part with an empty selection in) one transfer: rows [r, r+rows) of
 * batch b, o_buf [rows, H, D] in the file type, lse_buf [H, rows]. */
static void write_block(h5out *f, hid_t dxpl, int64_t b, int64_t r, int64_t rows,
                        const void *o_buf, const float *lse_buf) {
    const int64_t H = f->shape.H, D = f->shape.D;
    for (int k = 0; k < (f->with_lse ? 2 : 1); k++) {
        hid_t ds = k ? f->lse : f->o, fsp = H5Dget_space(ds);
        HDF5_CHECK(fsp, "H5Dget_space");
        hsize_t start[4] = {b, r, 0, 0}, count[4] = {1, rows, H, D};
        if (k) start[1] = 0, start[2] = r, count[1] = H, count[2] = rows;   /* [B, H, Nq] */
        hsize_t n = rows ? (hsize_t)(rows * H * (k ? 1 : D)) : 1;
        hid_t mem = H5Screate_simple(1, &n, NULL);
        HDF5_CHECK(mem, "H5Screate_simple");
        if (rows) {
            HDF5_CHECK(H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, NULL, count, NULL),
                       "H5Sselect_hyperslab");
        } else {
            HDF5_CHECK(H5Sselect_none(fsp), "H5Sselect_none");
            HDF5_CHECK(H5Sselect_none(mem), "H5Sselect_none");
        }
        const void *buf = k ? (const void *)lse_buf : o_buf;
        HDF5_CHECK(H5Dwrite(ds, k ? H5T_IEEE_F32LE : f->ftype, mem, fsp, dxpl, buf),
                   k ? "H5Dwrite(lse)" : "H5Dwrite(o)");
        h5io_ntransfers++;
#ifdef H5_HAVE_PARALLEL
        H5D_mpio_actual_io_mode_t mode;
        if (H5Pget_mpio_actual_io_mode(dxpl, &mode) >= 0)
            h5io_last_collective = mode != H5D_MPIO_NO_COLLECTIVE;
#endif
        H5Sclose(mem);
        H5Sclose(fsp);
    }
}

/* Serial HDF5: rank 0 writes its own block, then each other rank's, received in rank order. */
static void gather_block(h5out *f, hid_t dxpl, int64_t b, int64_t r, int64_t rows,
                         void *o_buf, float *lse_buf) {
    const int64_t row_el = f->shape.H * f->shape.D, obytes = row_el * fa_dtype_size(f->otype);
    int64_t mine[3] = {b, r, rows}, *all = NULL;
    if (f->rank == 0) all = fa_malloc(sizeof(int64_t) * 3 * f->nranks, "row gather");
    MPI_Gather(mine, 3, MPI_INT64_T, all, 3, MPI_INT64_T, 0, f->comm);
    if (f->rank != 0) {
        if (rows) MPI_Send(o_buf, (int)(rows * obytes), MPI_BYTE, 0, 1, f->comm);
        if (rows && f->with_lse) MPI_Send(lse_buf, (int)(rows * f->shape.H), MPI_FLOAT, 0, 2,
                                          f->comm);
        return;
    }
    if (rows) write_block(f, dxpl, b, r, rows, o_buf, lse_buf);
    for (int k = 1; k < f->nranks; k++) {
        int64_t *a = all + 3 * k;
        if (a[2] == 0) continue;
        MPI_Recv(o_buf, (int)(a[2] * obytes), MPI_BYTE, k, 1, f->comm, MPI_STATUS_IGNORE);
        if (f->with_lse) MPI_Recv(lse_buf, (int)(a[2] * f->shape.H), MPI_FLOAT, k, 2, f->comm,
                                  MPI_STATUS_IGNORE);
        write_block(f, dxpl, a[0], a[1], a[2], o_buf, lse_buf);
    }
    free(all);
}

static int check_rows(h5out *f, int64_t b, int64_t r0, int64_t n, const float *o,
                      const float *lse) {
    if (b < 0 || b >= f->shape.B || r0 < 0 || n < 0 || r0 + n > f->shape.Nq)
        return fa_seterr("output '%s': rows [%lld, %lld) of batch %lld out of range (B=%lld, "
                         "Nq=%lld)", f->path, (long long)r0, (long long)(r0 + n), (long long)b,
                         (long long)f->shape.B, (long long)f->shape.Nq);
    if (n > 0 && (!o || (f->with_lse && !lse)))
        return fa_seterr("output '%s': no %s rows given to write", f->path, o ? "lse" : "o");
    return 0;
}

int h5out_write_rows(h5out *f, int64_t b, int64_t r0, int64_t n, const float *o,
                     const float *lse) {
    if (h5io_agree(f->comm, check_rows(f, b, r0, n, o, lse), f->rank) < 0) return -1;
    const int64_t H = f->shape.H, row_el = H * f->shape.D;
    const int esize = fa_dtype_size(f->otype);
    int64_t cap_rows = f->cap_bytes / (row_el * esize);
    if (cap_rows < 1) cap_rows = 1;
    int64_t nb = (n + cap_rows - 1) / cap_rows;
    MPI_Allreduce(MPI_IN_PLACE, &nb, 1, MPI_INT64_T, MPI_MAX, f->comm);
    /* rank 0 of a serial build receives up to cap_rows rows from the others; float32 rows go
     * out of the caller's buffer as they are (parallel build) */
    const int direct = f->otype == FA_F32 && h5io_parallel();
    int64_t stage_rows = !f->holder || h5io_parallel() ? (n < cap_rows ? n : cap_rows) : cap_rows;
    stage_reserve(f, direct ? 0 : (size_t)(stage_rows * row_el * esize),
                  (size_t)((stage_rows > 0 ? stage_rows : 1) * H) * sizeof(float));   /* never NULL */
    void *ostage = direct ? NULL : f->ostage;
    float *lstage = f->lstage;
    hid_t dxpl = transfer_plist();
    for (int64_t it = 0; it < nb; it++) {
        static const float none;             /* a buffer for ranks with nothing to write */
        int64_t r = it * cap_rows, rows = n - r < 0 ? 0 : n - r < cap_rows ? n - r : cap_rows;
        const void *obuf = !rows ? (const void *)&none : direct ? o + r * row_el : ostage;
        if (rows && !direct) fa_from_f32(f->otype, o + r * row_el, ostage, rows * row_el);
        for (int64_t i = 0; f->with_lse && i < rows; i++)       /* [rows, H] -> [H, rows] */
            for (int64_t h = 0; h < H; h++) lstage[h * rows + i] = lse[(r + i) * H + h];
        if (h5io_parallel()) write_block(f, dxpl, b, r0 + r, rows, obuf, lstage);
        else gather_block(f, dxpl, b, r0 + r, rows, ostage, lstage);
    }
    H5Pclose(dxpl);
    return 0;
}

/* ---- attributes, commit, abort ----------------------------------------------------------------- */
static int write_root_attr(h5out *f, const char *name, hid_t type, const void *v) {
    int st = 0;
    if (f->holder) {
        hid_t sp = H5Screate(H5S_SCALAR), a;
        if (H5Aexists(f->file, name) > 0) H5Adelete(f->file, name);
        st = (a = H5Acreate2(f->file, name, type, sp, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(a, type, v) >= 0 ? 0 : -1;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp);
        if (st) fa_seterr("output '%s': writing attribute '%s' failed", f->path, name);
    }
    return h5io_agree(f->comm, st, f->rank);
}

int h5out_attr_int(h5out *f, const char *name, int64_t v) {
    return write_root_attr(f, name, H5T_NATIVE_INT64, &v);
}

int h5out_attr_double(h5out *f, const char *name, double v) {
    return write_root_attr(f, name, H5T_NATIVE_DOUBLE, &v);
}

int h5out_attr_str(h5out *f, const char *name, const char *v) {
    int st = 0;
    if (f->holder && write_str_attr(f->file, name, v) < 0)
        st = fa_seterr("output '%s': writing attribute '%s' failed", f->path, name);
    return h5io_agree(f->comm, st, f->rank);
}

/* Frees f whatever happens: after commit the file is either in place or gone. */
int h5out_commit(h5out *f) {
    if (f->holder) close_contents(f);          /* collective close: every write has landed */
    MPI_Barrier(f->comm);
    int st = 0;
    if (f->rank == 0 && rename(f->tmp, f->path) != 0) {
        st = fa_seterr("output '%s': cannot rename '%s' to it: %s", f->path, f->tmp,
                       strerror(errno));
        unlink(f->tmp);
    }
    st = h5io_agree(f->comm, st, f->rank);
    fa_set_cleanup_path(NULL);
    out_free(f);
    return st;
}

/* Alone or collective: closing an MPI-IO file is collective, so with several ranks of a parallel
 * build the handles are left to HDF5's own close at MPI_Finalize (or to MPI_Abort); every
 * rank removes the temporary file, which is what matters (unless a checkpoint made it durable:
 * then it stays for --resume). */
void h5out_abort(h5out *f) {
    if (!f) return;
    if (f->holder && (!h5io_parallel() || f->nranks == 1)) close_contents(f);
    if (!f->durable) unlink(f->tmp);
    fa_set_cleanup_path(NULL);
    if (!h5io_parallel() || f->nranks == 1) MPI_Comm_free(&f->comm);
    free(f->ostage);
    free(f->lstage);
    free(f->kvd);
    free(f);
}

/* ---- durable progress and --resume ------------------------------------------------------------ */
void h5out_partial_path(const char *path, char *buf, int len) {
    char d[FA_PATH_MAX], b[FA_PATH_MAX];
    snprintf(d, sizeof d, "%s", path);
    snprintf(b, sizeof b, "%s", path);
    snprintf(buf, (size_t)len, "%s/.%s.partial", dirname(d), basename(b));
}

static uint64_t *kv_table(h5out *f) {
    if (!f->kvd) f->kvd = fa_calloc((size_t)f->shape.B * 3, sizeof(uint64_t), "input digests");
    return f->kvd;
}

void h5out_note_input(h5out *f, int64_t size, int64_t mtime_ns) {
    snprintf(f->ident, sizeof f->ident, "size=%lld mtime_ns=%lld", (long long)size,
             (long long)mtime_ns);
}

void h5out_note_kv(h5out *f, int64_t b, uint64_t k, uint64_t v) {
    uint64_t *t = kv_table(f) + 3 * b;
    t[0] = 1, t[1] = k, t[2] = v;
}

int h5out_recorded_kv(h5out *f, int64_t b, uint64_t *k, uint64_t *v) {
    const uint64_t *t = kv_table(f) + 3 * b;
    *k = t[1], *v = t[2];
    return t[0] != 0;
}

/* Rows {b, k digest, v digest} of at most this many batch elements (the last loaded, the one in
 * progress among them) are kept: an attribute stays below HDF5's 64 KiB in the object header. */
#define KV_ROWS_MAX 1024

/* COLLECTIVE. The input's identity and the digests of the batch elements loaded so far, as
 * root attributes "input_identity" and "input_kv_digest" (uint64 [n, 3]: b, k, v). */
static int write_identity(h5out *f) {
    if (f->ident[0] && h5out_attr_str(f, "input_identity", f->ident)) return -1;
    int st = 0;
    if (f->holder) {
        const uint64_t *t = kv_table(f);
        uint64_t *rows = fa_malloc(sizeof(uint64_t) * 3 * KV_ROWS_MAX, "input digests");
        int64_t n = 0;
        for (int64_t b = f->shape.B - 1; b >= 0 && n < KV_ROWS_MAX; b--)
            if (t[3 * b]) rows[3 * n] = (uint64_t)b, rows[3 * n + 1] = t[3 * b + 1],
                          rows[3 * n + 2] = t[3 * b + 2], n++;
        hsize_t d[2] = {(hsize_t)n, 3};
        hid_t sp = n ? H5Screate_simple(2, d, NULL) : H5Screate(H5S_NULL), a;
        if (H5Aexists(f->file, "input_kv_digest") > 0) H5Adelete(f->file, "input_kv_digest");
        st = (a = H5Acreate2(f->file, "input_kv_digest", H5T_STD_U64LE, sp, H5P_DEFAULT,
                             H5P_DEFAULT)) >= 0 && (!n || H5Awrite(a, H5T_NATIVE_UINT64, rows) >= 0)
                 ? 0 : -1;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp);
        free(rows);
        if (st) fa_seterr("output '%s': writing attribute 'input_kv_digest' failed", f->path);
    }
    return h5io_agree(f->comm, st, f->rank);
}

/* COLLECTIVE. Reads the partial's digests (absent: none known) where the file is open (every
 * rank of a parallel build: metadata reads are collective), rank 0's for every rank. */
static void read_identity(h5out *f) {
    uint64_t *t = kv_table(f);
    if (f->holder) {
        hid_t a = H5Aexists(f->file, "input_kv_digest") > 0
                      ? H5Aopen(f->file, "input_kv_digest", H5P_DEFAULT) : -1;
        hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
        hsize_t d[2] = {0, 0};
        if (sp >= 0 && H5Sget_simple_extent_ndims(sp) == 2 &&
            H5Sget_simple_extent_dims(sp, d, NULL) == 2 && d[1] == 3 && d[0] <= KV_ROWS_MAX) {
            uint64_t *rows = fa_malloc(sizeof(uint64_t) * 3 * (d[0] + 1), "input digests");
            if (H5Aread(a, H5T_NATIVE_UINT64, rows) >= 0)
                for (hsize_t i = 0; i < d[0]; i++)
                    if (rows[3 * i] < (uint64_t)f->shape.B) {
                        uint64_t *e = t + 3 * rows[3 * i];
                        e[0] = 1, e[1] = rows[3 * i + 1], e[2] = rows[3 * i + 2];
                    }
            free(rows);
        }
        if (sp >= 0) H5Sclose(sp);
        if (a >= 0) H5Aclose(a);
    }
    MPI_Bcast(t, (int)(f->shape.B * 3), MPI_UINT64_T, 0, f->comm);
}

int h5out_checkpoint(h5out *f, int64_t done) {
    if (write_identity(f) || h5out_attr_int(f, "chunks_done", done)) return -1;
    int st = 0;
    if (f->holder && H5Fflush(f->file, H5F_SCOPE_GLOBAL) < 0)
        st = fa_seterr("output '%s': flushing '%s' failed", f->path, f->tmp);
    if (h5io_agree(f->comm, st, f->rank)) return -1;
    fa_set_cleanup_path(NULL);          /* durable progress: keep the partial file from now on */
    f->durable = 1;
    return 0;
}

int h5out_suspend(h5out *f, int64_t done) {
    int st = write_identity(f);
    if (st == 0) st = h5out_attr_int(f, "chunks_done", done);
    if (f->holder) close_contents(f);   /* collective close: every write has landed */
    MPI_Barrier(f->comm);
    fa_set_cleanup_path(NULL);
    out_free(f);
    return st;
}

static hid_t open_partial(h5out *f) {
    hid_t fapl = h5io_fapl(f->comm, 1);
    hid_t file = H5Fopen(f->tmp, H5F_ACC_RDWR, fapl);
    H5Pclose(fapl);
    return file;
}

/* Opens dataset `name` and checks it has dims d[0..nd) and the element type t. */
static hid_t reopen_dataset(h5out *f, const char *name, fa_dtype t, int nd, const int64_t *d) {
    hid_t ds = H5Dopen2(f->file, name, H5P_DEFAULT);
    if (ds < 0) {
        fa_seterr("--resume: partial output '%s' has no dataset '%s'", f->tmp, name);
        return -1;
    }
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    hsize_t dims[8];
    int ok = H5Sget_simple_extent_ndims(sp) == nd && H5Sget_simple_extent_dims(sp, dims, NULL) == nd;
    for (int i = 0; ok && i < nd; i++) ok = (int64_t)dims[i] == d[i];
    fa_dtype got;
    int swap;
    char why[128];
    ok = ok && h5io_classify(ty, &got, &swap, why, sizeof why) == 0 && got == t && !swap;
    H5Sclose(sp);
    H5Tclose(ty);
    if (!ok) {
        H5Dclose(ds);
        fa_seterr("--resume: dataset '%s' of partial output '%s' does not fit this job (shape or "
                  "element type differ)", name, f->tmp);
        return -1;
    }
    return ds;
}

static int reopen_contents(h5out *f) {
    const fa_shape *s = &f->shape;
    if ((f->file = open_partial(f)) < 0)
        return fa_seterr("--resume: cannot open partial output '%s' for writing", f->tmp);
    int64_t od[4] = {s->B, s->Nq, s->H, s->D}, ld[3] = {s->B, s->H, s->Nq};
    HDF5_CHECK(f->ftype = h5io_file_type(f->otype), "creating the output element type");
    if ((f->o = reopen_dataset(f, "o", f->otype, 4, od)) < 0) return -1;
    if (f->with_lse && (f->lse = reopen_dataset(f, "lse", FA_F32, 3, ld)) < 0) return -1;
    return 0;
}

int h5out_reopen(const char *path, MPI_Comm comm, const fa_shape *shape, fa_dtype o_type,
                 int with_lse, h5out **out) {
    h5io_init();
    *out = NULL;
    h5out *f = fa_calloc(1, sizeof *f, "h5out");
    MPI_Comm_dup(comm, &f->comm);
    MPI_Comm_rank(f->comm, &f->rank);
    MPI_Comm_size(f->comm, &f->nranks);
    int64_t cap = h5io_cap_bytes();
    MPI_Bcast(&cap, 1, MPI_INT64_T, 0, f->comm);
    snprintf(f->path, sizeof f->path, "%s", path);
    h5out_partial_path(path, f->tmp, sizeof f->tmp);
    f->shape = *shape, f->otype = o_type, f->with_lse = with_lse, f->cap_bytes = cap;
    f->file = f->o = f->lse = f->ftype = -1;
    f->holder = h5io_parallel() || f->rank == 0;
    f->durable = 1;                                   /* the partial file is not a cleanup path */
    int st = f->holder ? reopen_contents(f) : 0;
    if (h5io_agree(f->comm, st, f->rank) < 0) {
        if (f->holder) close_contents(f);
        return out_free(f), -1;
    }
    read_identity(f);
    *out = f;
    return 0;
}
