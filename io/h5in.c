/* h5in.c — reading q, k, v. Rank 0 first checks the file serially and broadcasts the verdict and
 * the shape, so every rank returns the same status and message; then every rank opens it: with
 * MPI-IO and collective metadata where HDF5 is parallel, read-only and independently where not.
 * Reads select a union of row ranges per rank and move at most a capped number of bytes per
 * call, with the file's own element type as the memory type (no conversion inside HDF5, which
 * would turn collective I/O independent); byte order and fp32 conversion are done here. A bhnd
 * dataset ([B, heads, N, D], torch's) is read the same way into a staging buffer in the file's
 * order and converted into bnhd rows in one pass: callers only ever see [rows, heads, D]. */
#define _GNU_SOURCE
#include "io/h5priv.h"
#include "io/convert.h"
#include "base/crc32.h"
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <omp.h>
#include <zlib.h>

/* the logical names callers pass to h5in_read_rows; f->name[i] is the dataset path in the file */
static const char *const NAMES[3] = {"q", "k", "v"};
#define EXPECT_QKV "q [B, Nq, H, D], k and v [B, Nk, Hkv, D]"

struct h5in {
    char path[FA_PATH_MAX];
    char name[3][FA_PATH_MAX];      /* the dataset paths of q, k, v in the file (--q/--k/--v) */
    MPI_Comm comm;
    hid_t file, dset[3], type[3];   /* type: the file's element type, used as memory type */
    fa_dtype dtype[3];
    int swap[3];
    int64_t dims[3][4];
    int64_t cap_bytes;              /* rank 0's, broadcast: the same loop counts everywhere */
    float absmax[3];                /* largest |x| of this rank's last checked read of q, k, v */
    /* a virtual dataset (VDS) is read through a second, serial open of the file (sfile), each
     * rank independently: MPI-IO's collective transfers cannot serve one */
    hid_t sfile, sdset[3];
    int virt[3];
    int64_t size, mtime_ns;         /* rank 0's stat at open, broadcast */
    uint64_t digest[3];             /* sums of the rows' hashes read since the last take */
    fa_layout layout[3];            /* rank 0's settling, broadcast: dims[] are bnhd whatever */
    int stated;                     /* the layouts came from --layout or attributes (not the default) */
    void *tstage;                   /* a bhnd transfer as the file holds it, [heads][rows][D] */
    size_t tstage_bytes;
    /* direct reads: a contiguous, allocated, unfiltered dataset with no external storage has
     * its bytes at one offset of the file; its rows are then read with pread, in parallel,
     * instead of through H5Dread (the same bytes: checked at open on every rank) */
    int fd;                         /* the file, read-only, for pread; -1 */
    int64_t offset[3];              /* the dataset's first byte in the file, or -1 */
    int direct;                     /* direct reads allowed (h5in_direct_reads; default 1) */
    int fused;                      /* direct bnhd reads hashed and scanned by runs (default 1) */
    /* where this rank's reads spent their time (--verbose prints rank 0's at close); t_fused:
     * the wall time of fused reads, shared out among the first four by their threads' time */
    double t_io, t_hash, t_scan, t_conv, t_fused;
    int64_t bytes_in;
};

/* ---- rank 0's check ----------------------------------------------------------------------------- */
/* attr: the dataset's own attribute 'layout'; layout: the one it is read in; told: that came
 * from the option or an attribute (not the default) */
typedef struct { int ndims; int64_t dims[8]; fa_dtype t; fa_layout attr, layout; int told; } ds_desc;

/* A virtual dataset reads its missing source files as fill values, silently: each mapping's
 * source must be found where HDF5 looks (HDF5_VDS_PREFIX, the VDS file's folder, the name as it
 * is). Names with printf-style patterns (%b) are left to HDF5. */
static int check_vds_sources(hid_t ds, const char *path, const char *name) {
    hid_t dcpl = H5Dget_create_plist(ds);
    size_t count = 0;
    int st = 0;
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_VIRTUAL && H5Pget_virtual_count(dcpl, &count) >= 0) {
        char dir[FA_PATH_MAX], src[FA_PATH_MAX], at[2 * FA_PATH_MAX + 2];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
        /* the prefix HDF5 itself uses: the access list's, which HDF5 fills from HDF5_VDS_PREFIX */
        char prefix[FA_PATH_MAX] = "";
        hid_t dapl = H5Dget_access_plist(ds);
        if (dapl >= 0) {
            if (H5Pget_virtual_prefix(dapl, prefix, sizeof prefix) < 0) prefix[0] = 0;
            H5Pclose(dapl);
        }
        for (size_t i = 0; i < count && st == 0; i++) {
            if (H5Pget_virtual_filename(dcpl, i, src, sizeof src) < 0) continue;
            if (!strcmp(src, ".") || strchr(src, '%')) continue;     /* this file; patterns */
            int found = access(src, R_OK) == 0 && src[0] == '/';
            if (!found && src[0] != '/') {
                if (prefix[0]) {
                    snprintf(at, sizeof at, "%s/%s", prefix, src);
                    found = access(at, R_OK) == 0;
                }
                snprintf(at, sizeof at, "%s/%s", dir, src);
                found = found || access(at, R_OK) == 0 || access(src, R_OK) == 0;
            }
            if (!found)
                st = fa_seterr("input '%s': virtual dataset '%s' maps rows to source file '%s', "
                               "which cannot be read (HDF5 would give fill values for them); "
                               "expected every source file of a virtual dataset in place", path,
                               name, src);
        }
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    return st;
}

static int describe(hid_t file, const char *path, const char *name, const char *opt, ds_desc *d) {
    if (!h5io_link_exists(file, name)) {      /* with where datasets of that name are */
        char hint[640];
        h5io_suggest_dataset(file, name, opt, hint, sizeof hint);
        return fa_seterr("input '%s': dataset '%s' not found; expected " EXPECT_QKV "%s", path,
                         name, hint);
    }
    hid_t ds = h5io_open_dataset(file, path, name, EXPECT_QKV);
    if (ds < 0) return -1;
    if (check_vds_sources(ds, path, name)) {
        H5Dclose(ds);
        return -1;
    }
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    d->ndims = H5Sget_simple_extent_ndims(sp);
    hsize_t hd[8] = {0};
    if (d->ndims >= 0 && d->ndims <= 8) H5Sget_simple_extent_dims(sp, hd, NULL);
    for (int i = 0; i < 8; i++) d->dims[i] = (int64_t)hd[i];
    char have[200], attr[64];
    int swap, st = 0;
    h5io_fmt_dims(have, sizeof have, d->ndims, d->dims);
    if (d->ndims != 4) {
        st = fa_seterr("input '%s': dataset '%s' has rank %d %s; expected rank 4: " EXPECT_QKV,
                       path, name, d->ndims, d->ndims >= 0 && d->ndims <= 8 ? have : "");
    } else if (h5io_dataset_type(ds, ty, "input", path, name, &d->t, &swap) < 0) {
        st = -1;
    } else if (d->dims[0] * d->dims[1] * d->dims[2] * d->dims[3] == 0) {
        st = fa_seterr("input '%s': dataset '%s' %s has an empty dimension; expected every "
                       "dimension > 0", path, name, have);
    } else if (h5io_layout_attr(ds, &d->attr, attr, sizeof attr) < 0) {
        st = fa_seterr("input '%s': dataset '%s': attribute 'layout' %s; expected \"bnhd\" "
                       "[B, N, heads, D] or \"bhnd\" [B, heads, N, D]", path, name, attr);
    }
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(ds);
    return st;
}

/* ld[i]: dataset i's dims as bnhd [B, N, heads, D] when read in layout l[i]. */
static void logical_dims(const ds_desc d[3], const fa_layout l[3], int64_t ld[3][4]) {
    for (int i = 0; i < 3; i++) {
        const int t = l[i] == FA_BHND;
        ld[i][0] = d[i].dims[0], ld[i][1] = d[i].dims[1 + t], ld[i][2] = d[i].dims[2 - t],
        ld[i][3] = d[i].dims[3];
    }
}

/* Whether q, k, v of bnhd dims ld fit together (the checks of check_shapes, no message). */
static int dims_fit(const int64_t ld[3][4]) {
    return ld[1][0] == ld[0][0] && ld[2][0] == ld[0][0] && ld[1][3] == ld[0][3] &&
           ld[2][3] == ld[0][3] && ld[1][1] == ld[2][1] && ld[1][2] == ld[2][2] &&
           ld[1][2] > 0 && ld[0][2] % ld[1][2] == 0;
}

/* Whether q, k, v read in layouts l fit together. */
static int shape_fits(const ds_desc d[3], const fa_layout l[3]) {
    int64_t ld[3][4];
    logical_dims(d, l, ld);
    return dims_fit(ld);
}

/* ---- the layout doubt (README "Layout") --------------------------------------------------------- */
fa_layout_doubt h5in_doubt_bnhd(const int64_t q[4], const int64_t k[4], const int64_t v[4]) {
    const int64_t *file[3] = {q, k, v};
    int64_t t[3][4];                           /* the dims read as torch's [B, heads, N, D] */
    for (int i = 0; i < 3; i++)
        t[i][0] = file[i][0], t[i][1] = file[i][2], t[i][2] = file[i][1], t[i][3] = file[i][3];
    if (!dims_fit(t)) return FA_DOUBT_NONE;    /* bnhd is the only reading: nothing to doubt */
    if (k[2] > k[1]) return FA_DOUBT_REFUSE;   /* as bnhd, k has more heads than rows */
    if (q[2] > q[1] && t[1][2] <= t[1][1]) return FA_DOUBT_WARN;
    return FA_DOUBT_NONE;
}

void h5in_doubt_text(fa_layout_doubt why, const char *const nm[3], const int64_t q[4],
                     const int64_t k[4], char *buf, int len) {
    const int i = why == FA_DOUBT_REFUSE;      /* k's heads, else q's */
    const int64_t *d = i ? k : q;
    char have[200];
    h5io_fmt_dims(have, sizeof have, 4, d);
    snprintf(buf, (size_t)len, "'%s' %s read as [B, N, heads, D] has more heads (%lld) than rows "
             "(%lld), while read as torch's [B, heads, N, D] q, k, v fit", nm[i], have,
             (long long)d[2], (long long)d[1]);
}

/* The messages print the dims as the file holds them (what h5py shows); the comparisons are of
 * the logical ones. */
static int check_shapes(const char *path, const char *const nm[3], const ds_desc d[3], fa_shape *s) {
    char q[200], kv[200];
    const fa_layout l[3] = {d[0].layout, d[1].layout, d[2].layout};
    int64_t ld[3][4];
    logical_dims(d, l, ld);
    h5io_fmt_dims(q, sizeof q, 4, d[0].dims);
    for (int i = 1; i < 3; i++) {               /* k and v against q: B (dim 0) and D (dim 3) */
        h5io_fmt_dims(kv, sizeof kv, 4, d[i].dims);
        for (int j = 0; j < 4; j += 3)
            if (ld[i][j] != ld[0][j])
                return fa_seterr("input '%s': dataset '%s' %s has %s=%lld but '%s' %s has "
                                 "%s=%lld; expected the same %s in q, k and v", path, nm[i],
                                 kv, j ? "D" : "B", (long long)ld[i][j], nm[0], q, j ? "D" : "B",
                                 (long long)ld[0][j], j ? "head dim D" : "batch B");
    }
    if (ld[1][1] != ld[2][1] || ld[1][2] != ld[2][2]) {
        char k[200];
        h5io_fmt_dims(k, sizeof k, 4, d[1].dims);
        return fa_seterr("input '%s': dataset '%s' %s differs from '%s' %s in Nk or Hkv; expected "
                         "the same Nk and Hkv", path, nm[2], kv, nm[1], k);
    }
    if (ld[0][2] % ld[1][2] != 0) {
        /* read as bnhd without being told: say so when torch's layout would fit */
        const fa_layout bhnd[3] = {FA_BHND, FA_BHND, FA_BHND};
        const int hint = !d[0].told && shape_fits(d, bhnd);
        return fa_seterr("input '%s': dataset '%s' has H=%lld heads, '%s' and '%s' Hkv=%lld; "
                         "expected H a multiple of Hkv%s", path, nm[0], (long long)ld[0][2], nm[1],
                         nm[2], (long long)ld[1][2],
                         hint ? " (read as [B, N, H, D]; for torch's [B, H, N, D] give --layout "
                                "bhnd)" : "");
    }
    if (ld[0][3] > FA_MAX_HEAD_DIM)
        return fa_seterr("input '%s': dataset '%s' has head dim D=%lld; expected at most %d", path, nm[0],
                         (long long)ld[0][3], FA_MAX_HEAD_DIM);
    *s = (fa_shape){ld[0][0], ld[0][1], ld[1][1], ld[0][2], ld[1][2], ld[0][3], d[0].t, d[1].t,
                    d[2].t};
    return 0;
}

/* Rank 0: each dataset's layout — the option (a warning where an attribute says otherwise),
 * else its attribute, else the root's, else bnhd. */
static int settle_layouts(hid_t file, const char *path, const char *const nm[3], fa_layout opt,
                          ds_desc d[3]) {
    char bad[128];
    fa_layout root;
    if (h5io_layout_attr(file, &root, bad, sizeof bad) < 0)
        return fa_seterr("input '%s': root attribute 'layout' %s; expected \"bnhd\" "
                         "[B, N, heads, D] or \"bhnd\" [B, heads, N, D]", path, bad);
    int over = -1;
    for (int i = 0; i < 3; i++) {
        const fa_layout attr = d[i].attr != FA_LAYOUT_AUTO ? d[i].attr : root;
        if (opt != FA_LAYOUT_AUTO && attr != FA_LAYOUT_AUTO && attr != opt && over < 0) over = i;
        d[i].layout = opt != FA_LAYOUT_AUTO ? opt : attr != FA_LAYOUT_AUTO ? attr : FA_BNHD;
        d[i].told = opt != FA_LAYOUT_AUTO || attr != FA_LAYOUT_AUTO;
    }
    if (over >= 0) {
        const int ds = d[over].attr != FA_LAYOUT_AUTO;
        fa_warn("input '%s': --layout %s overrides the attribute layout = \"%s\" of %s%s%s",
                path, fa_layout_name(opt), fa_layout_name(ds ? d[over].attr : root),
                ds ? "dataset '" : "the file's root", ds ? nm[over] : "", ds ? "'" : "");
    }
    return 0;
}

/* Rank 0, for a file that says nothing of its layout, read as bnhd: refused when the reading
 * is doubted enough (h5in_doubt_bnhd), a warning when less; nothing when told. */
static int doubt_bnhd(const char *path, const char *const nm[3], const ds_desc d[3]) {
    if (d[0].told || d[1].told || d[2].told) return 0;
    const fa_layout_doubt why = h5in_doubt_bnhd(d[0].dims, d[1].dims, d[2].dims);
    if (why == FA_DOUBT_NONE) return 0;
    char text[600];
    h5in_doubt_text(why, nm, d[0].dims, d[1].dims, text, sizeof text);
    if (why == FA_DOUBT_REFUSE)
        return fa_seterr("input '%s': %s; expected a file that says its layout: give --layout "
                         "bhnd if they are torch's (or an attribute layout = \"bhnd\"), --layout "
                         "bnhd if they are [B, N, heads, D]", path, text);
    fa_warn("input '%s': %s; if they are torch's, give --layout bhnd (or an attribute layout "
            "= \"bhnd\"); --layout bnhd silences this", path, text);
    return 0;
}

static int check_input(const char *path, const char *const nm[3], fa_layout opt, fa_shape *s,
                       fa_layout layout[3], int *stated) {
    hid_t file = h5io_open_serial(path, "input");
    if (file < 0) return -1;
    ds_desc d[3];
    int st = 0;
    static const char *const flag[3] = {"--q", "--k", "--v"};
    for (int i = 0; i < 3 && st == 0; i++) st = describe(file, path, nm[i], flag[i], &d[i]);
    if (st == 0) st = settle_layouts(file, path, nm, opt, d);
    if (st == 0) st = check_shapes(path, nm, d, s);
    if (st == 0) st = doubt_bnhd(path, nm, d);
    for (int i = 0; i < 3 && st == 0; i++) layout[i] = d[i].layout;
    *stated = st == 0 && (d[0].told || d[1].told || d[2].told);
    H5Fclose(file);
    return st;
}

/* ---- every rank's open --------------------------------------------------------------------------- */
static hid_t open_all(h5in *f) {
    hid_t fapl = h5io_fapl(f->comm, 0);
    hid_t file = H5Fopen(f->path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    return file;
}

static int open_datasets(h5in *f) {
    if ((f->file = open_all(f)) < 0)
        return fa_seterr("input '%s': HDF5 cannot open it on every rank", f->path);
    for (int i = 0; i < 3; i++) {
        hsize_t d[4];
        if ((f->dset[i] = H5Dopen2(f->file, f->name[i], H5P_DEFAULT)) < 0 ||
            (f->type[i] = H5Dget_type(f->dset[i])) < 0 ||
            h5io_dataset_type(f->dset[i], f->type[i], "input", f->path, f->name[i], &f->dtype[i],
                              &f->swap[i]) < 0)
            return fa_seterr("input '%s': dataset '%s' changed while opening", f->path, f->name[i]);
        hid_t sp = H5Dget_space(f->dset[i]), dcpl = H5Dget_create_plist(f->dset[i]);
        H5Sget_simple_extent_dims(sp, d, NULL);
        H5Sclose(sp);
        for (int j = 0; j < 4; j++) f->dims[i][j] = (int64_t)d[j];
        if (f->layout[i] == FA_BHND)                  /* bnhd from here on */
            f->dims[i][1] = (int64_t)d[2], f->dims[i][2] = (int64_t)d[1];
        f->virt[i] = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_VIRTUAL;
        if (dcpl >= 0) H5Pclose(dcpl);
        if (!f->virt[i] || !h5io_parallel()) continue;
        if (f->sfile < 0 && (f->sfile = H5Fopen(f->path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0)
            return fa_seterr("input '%s': dataset '%s' is a virtual dataset; HDF5 cannot open "
                             "the file through its serial driver to read it", f->path, f->name[i]);
        if ((f->sdset[i] = H5Dopen2(f->sfile, f->name[i], H5P_DEFAULT)) < 0)
            return fa_seterr("input '%s': virtual dataset '%s' cannot be opened through HDF5's "
                             "serial driver", f->path, f->name[i]);
    }
    return 0;
}

/* The dataset's first byte in the file when it is stored in one contiguous run that pread can
 * read (-1 otherwise), proven by reading its first elements both ways. Independent. */
static int64_t contiguous_offset(h5in *f, int i) {
    if (f->virt[i] || f->fd < 0) return -1;
    hid_t dcpl = H5Dget_create_plist(f->dset[i]);
    int ok = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CONTIGUOUS && H5Pget_external_count(dcpl) == 0 &&
             H5Pget_nfilters(dcpl) == 0;
    if (dcpl >= 0) H5Pclose(dcpl);
    haddr_t a = ok ? H5Dget_offset(f->dset[i]) : HADDR_UNDEF;
    if (!ok || a == HADDR_UNDEF) { H5Eclear2(H5E_DEFAULT); return -1; }
    /* the first (up to) 64 elements through HDF5 and through pread must agree */
    const int64_t *d = f->dims[i];
    const size_t es = H5Tget_size(f->type[i]);
    hsize_t n = (hsize_t)(d[0] * d[1] * d[2] * d[3]);
    if (n > 64) n = 64;
    if (n == 0) return -1;
    unsigned char via_h5[64 * 8], via_fd[64 * 8];
    hid_t fs = H5Dget_space(f->dset[i]), ms = H5Screate_simple(1, &n, NULL);
    hsize_t zero[4] = {0, 0, 0, 0}, cnt[4] = {1, 1, 1, n};
    if ((int64_t)n > d[3]) n = (hsize_t)d[3];          /* D: the last dim in either layout */
    cnt[3] = n;
    H5Sset_extent_simple(ms, 1, &n, NULL);
    int good = H5Sselect_hyperslab(fs, H5S_SELECT_SET, zero, NULL, cnt, NULL) >= 0 &&
               H5Dread(f->dset[i], f->type[i], ms, fs, H5P_DEFAULT, via_h5) >= 0 &&
               pread(f->fd, via_fd, n * es, (off_t)a) == (ssize_t)(n * es) &&
               memcmp(via_h5, via_fd, n * es) == 0;
    H5Sclose(ms), H5Sclose(fs);
    if (!good) H5Eclear2(H5E_DEFAULT);
    return good ? (int64_t)a : -1;
}

static void close_handles(h5in *f) {
    if (f->fd >= 0) close(f->fd);
    for (int i = 0; i < 3; i++) {
        if (f->type[i] >= 0) H5Tclose(f->type[i]);
        if (f->dset[i] >= 0) H5Dclose(f->dset[i]);
        if (f->sdset[i] >= 0) H5Dclose(f->sdset[i]);
    }
    if (f->sfile >= 0) H5Fclose(f->sfile);
    if (f->file >= 0) H5Fclose(f->file);
    free(f->tstage);
}

int h5in_open(const char *path, const char *const dsets[3], MPI_Comm comm, int64_t cap_bytes,
              h5in **out, fa_shape *shape) {
    return h5in_open_layout(path, dsets, FA_LAYOUT_AUTO, comm, cap_bytes, out, shape);
}

int h5in_open_layout(const char *path, const char *const dsets[3], fa_layout layout,
                     MPI_Comm comm, int64_t cap_bytes, h5in **out, fa_shape *shape) {
    h5io_init();
    *out = NULL;
    const char *nm[3];
    for (int i = 0; i < 3; i++) nm[i] = dsets && dsets[i] && *dsets[i] ? dsets[i] : NAMES[i];
    int rank;
    MPI_Comm_rank(comm, &rank);
    struct { int st; fa_shape s; int64_t cap, size, mtime_ns; fa_layout l[3]; int stated; } v = {0};
    if (rank == 0) {
        struct stat sb;
        v.st = check_input(path, nm, layout, &v.s, v.l, &v.stated);
        v.cap = h5io_cap(cap_bytes);
        if (v.st == 0 && stat(path, &sb) == 0)
            v.size = (int64_t)sb.st_size,
            v.mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    }
    MPI_Bcast(&v, sizeof v, MPI_BYTE, 0, comm);
    if (fa_agree(comm, v.st, 0) < 0 || h5io_visible(comm, path, R_OK, "input") < 0) return -1;
    h5in *f = fa_calloc(1, sizeof *f, "h5in");
    snprintf(f->path, sizeof f->path, "%s", path);
    for (int i = 0; i < 3; i++) snprintf(f->name[i], sizeof f->name[i], "%s", nm[i]);
    MPI_Comm_dup(comm, &f->comm);
    f->file = f->dset[0] = f->dset[1] = f->dset[2] = f->type[0] = f->type[1] = f->type[2] = -1;
    f->sfile = f->sdset[0] = f->sdset[1] = f->sdset[2] = -1;
    f->fd = -1;
    f->direct = 1;
    f->fused = 1;
    f->cap_bytes = v.cap, f->size = v.size, f->mtime_ns = v.mtime_ns;
    for (int i = 0; i < 3; i++) f->layout[i] = v.l[i];
    f->stated = v.stated;
    if (fa_agree(f->comm, open_datasets(f), rank) < 0) {
        close_handles(f);        /* collective: every rank gets here */
        MPI_Comm_free(&f->comm);
        free(f);
        return -1;
    }
    /* direct reads where every rank can make them (the same transfers everywhere) */
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    int can[3];
    for (int i = 0; i < 3; i++) {
        f->offset[i] = contiguous_offset(f, i);
        can[i] = f->offset[i] >= 0;
    }
    MPI_Allreduce(MPI_IN_PLACE, can, 3, MPI_INT, MPI_MIN, f->comm);
    for (int i = 0; i < 3; i++)
        if (!can[i]) f->offset[i] = -1;
    *shape = v.s;
    *out = f;
    return 0;
}

void h5in_direct_reads(h5in *f, int on) { f->direct = on; }

void h5in_fused_reads(h5in *f, int on) { f->fused = on; }

float h5in_last_absmax(const h5in *f, const char *name) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, NAMES[i])) return f->absmax[i];
    return 0;
}

fa_layout h5in_layout(const h5in *f, int i) { return f->layout[i]; }

int h5in_layout_stated(const h5in *f) { return f->stated; }

void h5in_identity(const h5in *f, int64_t *size, int64_t *mtime_ns) {
    *size = f->size;
    *mtime_ns = f->mtime_ns;
}

void h5in_take_digests(h5in *f, uint64_t d[3]) {
    for (int i = 0; i < 3; i++) d[i] = f->digest[i], f->digest[i] = 0;
}

void h5in_close(h5in *f) {
    if (!f) return;
    if (f->bytes_in > 0) {
        char fused[160] = "";
        if (f->t_fused > 0)
            snprintf(fused, sizeof fused, " (%.3f s of it in fused passes, each run read, "
                     "hashed, scanned and widened as it lands: shared out by its threads' time)",
                     f->t_fused);
        fa_log(2, "fa_long: rank %d read %.3f GB of '%s': file to memory %.3f s, digests %.3f s "
                  "(crc32: %s), finite scan %.3f s, byte order, layout and widening %.3f s%s",
               fa_rank, f->bytes_in * 1e-9, f->path, f->t_io, f->t_hash, fa_crc32_impl(),
               f->t_scan, f->t_conv, fused);
    }
    close_handles(f);
    MPI_Comm_free(&f->comm);
    free(f);
}

/* ---- reading rows ------------------------------------------------------------------------------ */
/* One transfer's worth: pieces of the caller's ranges, ascending and disjoint in the file (a
 * hyperslab union is transferred in file order), at most cap_rows rows in all. */
typedef struct { int64_t start, n, dst_row; } piece;
typedef struct { int i; int64_t off, dst_row; } cursor;

static int next_batch(const row_range *r, int nr, cursor *c, int64_t cap_rows, piece *p) {
    int np = 0;
    int64_t rows = 0, end = -1;
    while (c->i < nr && rows < cap_rows) {
        if (c->off >= r[c->i].n) { c->i++, c->off = 0; continue; }
        int64_t s = r[c->i].start + c->off;
        if (s < end) break;                          /* not ascending: next transfer */
        int64_t n = r[c->i].n - c->off;
        if (n > cap_rows - rows) n = cap_rows - rows;
        p[np++] = (piece){s, n, c->dst_row};
        c->off += n, c->dst_row += n, rows += n, end = s + n;
    }
    return np;
}

static int check_ranges(h5in *f, int idx, int64_t b, const row_range *r, int nr) {
    const int64_t B = f->dims[idx][0], N = f->dims[idx][1];
    if (b < 0 || b >= B)
        return fa_seterr("input '%s': batch %lld out of range for '%s' (B=%lld)", f->path,
                         (long long)b, f->name[idx], (long long)B);
    for (int i = 0; i < nr; i++)
        if (r[i].start < 0 || r[i].n < 0 || r[i].start + r[i].n > N)
            return fa_seterr("input '%s': rows [%lld, %lld) out of range for '%s' (N=%lld)",
                             f->path, (long long)r[i].start, (long long)(r[i].start + r[i].n),
                             f->name[idx], (long long)N);
    return 0;
}

static hid_t transfer_plist(void) {
#ifdef H5_HAVE_PARALLEL
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    HDF5_CHECK(dxpl, "H5Pcreate(transfer)");
    HDF5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE), "H5Pset_dxpl_mpio");
    return dxpl;
#else
    return H5Pcreate(H5P_DATASET_XFER);
#endif
}

/* Records whether the transfer just made through dxpl stayed collective (tests check it). */
static void note_io_mode(hid_t dxpl) {
#ifdef H5_HAVE_PARALLEL
    H5D_mpio_actual_io_mode_t mode;
    if (H5Pget_mpio_actual_io_mode(dxpl, &mode) >= 0)
        h5io_last_collective = mode != H5D_MPIO_NO_COLLECTIVE;
#else
    (void)dxpl;
#endif
}

/* Selects the pieces (or nothing) in the file space and a matching memory space. A bhnd
 * dataset's union is transferred as the file orders it: [heads][rows of the pieces][D]. */
static hid_t select_pieces(hid_t fspace, const int64_t dims[4], fa_layout layout, int64_t b,
                           const piece *p, int np) {
    int64_t rows = 0;
    HDF5_CHECK(H5Sselect_none(fspace), "H5Sselect_none");
    for (int i = 0; i < np; i++) {
        hsize_t start[4] = {b, p[i].start, 0, 0}, count[4] = {1, p[i].n, dims[2], dims[3]};
        if (layout == FA_BHND)
            start[1] = 0, start[2] = p[i].start, count[1] = dims[2], count[2] = p[i].n;
        HDF5_CHECK(H5Sselect_hyperslab(fspace, i ? H5S_SELECT_OR : H5S_SELECT_SET, start, NULL,
                                       count, NULL), "H5Sselect_hyperslab");
        rows += p[i].n;
    }
    hsize_t n = rows ? (hsize_t)(rows * dims[2] * dims[3]) : 1;
    hid_t mem = H5Screate_simple(1, &n, NULL);
    HDF5_CHECK(mem, "H5Screate_simple");
    if (rows == 0) HDF5_CHECK(H5Sselect_none(mem), "H5Sselect_none");
    return mem;
}

/* First non-finite value of dst ([rows, heads, D] in range order) as a global linear index of
 * the dataset, or -1; *what gets "NaN", "+Inf" or "-Inf"; *absmax the largest |x| of the finite
 * values (the same pass: the pipeline's overflow diagnosis uses it). */
static int64_t first_nonfinite(const h5in *f, int idx, int64_t b, const row_range *r, int nr,
                               const float *dst, const char **what, float *absmax) {
    const int64_t N = f->dims[idx][1], row_el = f->dims[idx][2] * f->dims[idx][3];
    int64_t best = -1, at = 0;
    uint32_t amax = 0;                       /* |x| as bits: ordered like |x| for finite x */
    for (int i = 0; i < nr; at += r[i].n * row_el, i++) {
        const float *x = dst + at;
        const int64_t len = r[i].n * row_el;
        int64_t first = len;                 /* the range's first non-finite element, in parallel */
#pragma omp parallel for reduction(min : first) reduction(max : amax) schedule(static) if (len > 65536)
        for (int64_t e0 = 0; e0 < len; e0 += 16384) {
            const int64_t e1 = e0 + 16384 < len ? e0 + 16384 : len;
            uint32_t m = 0, bad = 0;
            for (int64_t e = e0; e < e1; e++) {
                const uint32_t a = fa_f32_bits(x[e]) & 0x7fffffffu;
                bad |= a >= 0x7f800000u;
                m = a > m && a < 0x7f800000u ? a : m;
            }
            if (m > amax) amax = m;
            if (bad)
                for (int64_t e = e0; e < e1; e++)
                    if ((fa_f32_bits(x[e]) & 0x7f800000u) == 0x7f800000u) {
                        if (e < first) first = e;
                        break;
                    }
        }
        if (first < len) {
            const int64_t e = first, g = (b * N + r[i].start) * row_el + e;
            if (best < 0 || g < best) best = g, *what = x[e] != x[e] ? "NaN" : x[e] > 0 ? "+Inf" : "-Inf";
        }
    }
    *absmax = fa_bits_f32(amax);
    return best;
}

/* The finite scan of n elements x in the file's bits (wide: float32, else a 16-bit type; inf:
 * the type's +Inf bits): the index of the first non-finite element (n: none), and the largest
 * finite magnitude raised into *m. Two branch-free max loops the compiler vectorizes (16-bit
 * magnitudes as int16, which SSE2's pmaxsw takes); the index is looked for only when the block
 * holds a non-finite value. */
static int64_t scan_block(int wide, uint32_t inf, const void *x, int64_t n, uint32_t *m) {
    uint32_t all, fin;                       /* largest magnitude of all, of the finite */
    if (wide) {
        const int32_t *v = x, lim = (int32_t)inf;
        int32_t ma = 0, mf = 0;
#pragma omp simd reduction(max : ma, mf)
        for (int64_t e = 0; e < n; e++) {
            const int32_t a = v[e] & 0x7fffffff, fa = a < lim ? a : 0;
            ma = a > ma ? a : ma;
            mf = fa > mf ? fa : mf;
        }
        all = (uint32_t)ma, fin = (uint32_t)mf;
    } else {
        const int16_t *v = x, lim = (int16_t)inf;
        int16_t ma = 0, mf = 0;
#pragma omp simd reduction(max : ma, mf)
        for (int64_t e = 0; e < n; e++) {
            const int16_t a = (int16_t)(v[e] & 0x7fff), fa = a < lim ? a : 0;
            ma = a > ma ? a : ma;
            mf = fa > mf ? fa : mf;
        }
        all = (uint32_t)ma, fin = (uint32_t)mf;
    }
    if (fin > *m) *m = fin;
    if (all < inf) return n;
    const uint32_t mag = wide ? 0x7fffffffu : 0x7fffu;
    for (int64_t e = 0; e < n; e++)
        if (((wide ? ((const uint32_t *)x)[e] : ((const uint16_t *)x)[e]) & mag) >= inf) return e;
    return n;
}

/* The scan's constants for type t, and what a non-finite value v of it is. */
static uint32_t inf_bits(fa_dtype t) {
    return t == FA_F32 ? 0x7f800000u : t == FA_F16 ? 0x7c00u : 0x7f80u;
}
static const char *const KINDS[3] = {"NaN", "+Inf", "-Inf"};
static int nonfinite_kind(int wide, uint32_t inf, uint32_t v) {
    return (v & (wide ? 0x7fffffffu : 0x7fffu)) > inf ? 0 : (v >> (wide ? 31 : 15)) ? 2 : 1;
}

/* A largest finite magnitude in type t's bits as fp32 bits (widening is exact and keeps the
 * order of |x|). */
static uint32_t magnitude_f32_bits(fa_dtype t, uint32_t m) {
    return t == FA_F32 ? m : t == FA_BF16 ? m << 16 : fa_f32_bits(fa_f16_to_f32_ref((uint16_t)m));
}

/* The finite scan of one transfer's source, in the file's bits before any conversion, while the
 * hash's pass has them in cache (float32, float16 and bfloat16 in native byte order and bnhd;
 * the rest is scanned after conversion, by first_nonfinite): the same first non-finite element
 * (global linear index into *best, kind into *what) and the same largest finite |x| (as fp32
 * bits, into *amax) as the fp32 scan. */
static void scan_source(fa_dtype t, const void *buf, const piece *p, int np, int64_t row_el,
                        int64_t N, int64_t b, int64_t *best, const char **what, uint32_t *amax) {
    const int wide = t == FA_F32, es = wide ? 4 : 2;
    const uint32_t inf = inf_bits(t);
    uint32_t m = 0;                          /* largest finite magnitude, in the file's bits */
    for (int j = 0; j < np; j++) {
        const int64_t at = (p[j].dst_row - p[0].dst_row) * row_el, len = p[j].n * row_el;
        const char *x = (const char *)buf + at * es;
        int64_t first = len;
#pragma omp parallel for reduction(min : first) reduction(max : m) schedule(static) if (len > 65536)
        for (int64_t e0 = 0; e0 < len; e0 += 16384) {
            const int64_t n = e0 + 16384 < len ? 16384 : len - e0;
            const int64_t e = scan_block(wide, inf, x + e0 * es, n, &m);
            if (e < n && e0 + e < first) first = e0 + e;
        }
        if (first < len) {
            const int64_t g = (b * N + p[j].start) * row_el + first;
            if (*best < 0 || g < *best) {
                const uint32_t v = wide ? ((const uint32_t *)x)[first]
                                        : ((const uint16_t *)x)[first];
                *best = g;
                *what = KINDS[nonfinite_kind(wide, inf, v)];
            }
        }
    }
    const uint32_t mf = magnitude_f32_bits(t, m);
    if (mf > *amax) *amax = mf;
}

/* COLLECTIVE. The read's verdict: g, the first non-finite element's global linear index (-1:
 * none), named with its [b, row, head, d] as the file indexes it. */
static int report_nonfinite(h5in *f, int idx, int64_t g, const char *what) {
    if (g >= 0) {
        const int64_t *d = f->dims[idx];
        const char *as = f->dtype[idx] == FA_F64 && what[0] != 'N' ? " (in float32)" : "";
        long long at[4] = {g / (d[1] * d[2] * d[3]), g / (d[2] * d[3]) % d[1], g / d[3] % d[2],
                           g % d[3]};                  /* [b, row, head, d] */
        if (f->layout[idx] == FA_BHND) {               /* as the file indexes it */
            long long row = at[1];
            at[1] = at[2], at[2] = row;
        }
        fa_seterr("input '%s': dataset '%s' has %s%s at [%lld, %lld, %lld, %lld]; expected "
                  "finite values (--allow-nonfinite accepts them)", f->path, f->name[idx], what, as,
                  at[0], at[1], at[2], at[3]);
    }
    return fa_agree(f->comm, g >= 0, g);
}

static int check_finite_all(h5in *f, int idx, int64_t b, const row_range *r, int nr,
                            const float *dst) {
    const char *what = "";
    int64_t g = first_nonfinite(f, idx, b, r, nr, dst, &what, &f->absmax[idx]);
    return report_nonfinite(f, idx, g, what);
}

/* Adds the hashes of the rows of one transfer (buf: the pieces' rows as the file holds them,
 * before any byte swap or conversion) to f->digest[idx]. A row's hash is the crc32 of its
 * (zlib's CRC-32; base/crc32.c runs libdeflate's where the system has it: the same values)
 * bytes seeded with the crc32 of its position (dataset, batch, row), in the high half, and that
 * seed in the low half; the digest is their sum mod 2^64, so it does not depend on how rows are
 * split across transfers, reads or ranks, and a change within 32 bits of any one row always
 * shows. Threads hash disjoint runs of rows (crc32 is serial within a row). Only k and v are
 * hashed: --resume checks the keys and values of the batch element it resumes in, while the
 * queries of the chunks done are not read again (a q digest would cost as much as k's and v's,
 * re-read every chunk, and nothing could compare it). */
static uint64_t row_hash(int idx, int64_t b, int64_t row, const Bytef *x, int64_t row_bytes) {
    const int64_t pos[3] = {idx, b, row};
    const uint32_t seed = fa_crc32(0, pos, sizeof pos);
    const uint32_t c = fa_crc32(seed, x, (size_t)row_bytes);
    return ((uint64_t)c << 32) | (uint64_t)seed;
}

static void hash_rows(h5in *f, int idx, int64_t b, const piece *p, int np, const void *buf,
                      int64_t rows, int64_t heads, int64_t blk, int bhnd) {
    const int64_t row_bytes = heads * blk;      /* blk: one head's D elements */
    uint64_t sum = 0;
#pragma omp parallel reduction(+ : sum) if (rows * row_bytes >= (1 << 20))
    {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        int j = 0;
        int64_t base = 0;                        /* rows of the pieces before piece j */
        /* bhnd: buf is [heads][rows][D]; a row's blocks gathered first (one crc32 call a row
         * costs less than one a head), so its hash is the same as in bnhd */
        Bytef *row = bhnd ? fa_malloc((size_t)row_bytes, "row hash") : NULL;
        for (int64_t r = r0; r < r1; r++) {
            while (j < np && r - base >= p[j].n) base += p[j++].n;
            const Bytef *x = (const Bytef *)buf + r * row_bytes;
            for (int64_t h = 0; bhnd && h < heads; h++)
                memcpy(row + h * blk, (const Bytef *)buf + (h * rows + r) * blk, (size_t)blk);
            sum += row_hash(idx, b, p[j].start + (r - base), bhnd ? row : x, row_bytes);
        }
        free(row);
    }
    f->digest[idx] += sum;
}

/* One transfer of a contiguous dataset straight from the file (h5in.offset): the pieces' bytes,
 * as H5Dread would give them (bnhd: the rows one after another; bhnd: [heads][rows][D]), read
 * with pread by the OpenMP threads in runs of at most 4 MiB. 0, or the errno of a failed read
 * (a short read past the file's end: EIO). */
typedef struct { int64_t off, len; unsigned char *dst; } byte_run;
#define DIRECT_RUN (4 << 20)

/* len bytes at off of fd into dst: 0, or the errno (a short read past the file's end: EIO). */
static int pread_full(int fd, unsigned char *dst, int64_t len, int64_t off) {
    int64_t done = 0;
    while (done < len) {
        ssize_t got = pread(fd, dst + done, (size_t)(len - done), (off_t)(off + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return got < 0 ? errno : EIO;
        done += got;
    }
    return 0;
}

static int read_direct(const h5in *f, int idx, int64_t b, const piece *p, int np, void *buf,
                       int64_t rows, int bhnd) {
    const int64_t *d = f->dims[idx];           /* bnhd: [B, N, heads, D] */
    const int64_t es = fa_dtype_size(f->dtype[idx]), N = d[1], Hh = d[2], D = d[3];
    const int64_t runs_per = bhnd ? Hh : 1, row_bytes = (bhnd ? D : Hh * D) * es;
    int64_t nruns = 0;
    for (int j = 0; j < np; j++)
        nruns += runs_per * ((p[j].n * row_bytes + DIRECT_RUN - 1) / DIRECT_RUN);
    byte_run *r = fa_malloc((size_t)(nruns ? nruns : 1) * sizeof *r, "direct reads");
    int64_t k = 0;
    for (int j = 0; j < np; j++)
        for (int64_t h = 0; h < runs_per; h++) {
            const int64_t at = p[j].dst_row - p[0].dst_row;
            int64_t off = f->offset[idx] +
                          (bhnd ? ((b * Hh + h) * N + p[j].start) : (b * N + p[j].start)) * row_bytes;
            unsigned char *dst = (unsigned char *)buf + (bhnd ? h * rows + at : at) * row_bytes;
            for (int64_t left = p[j].n * row_bytes; left > 0; ) {
                const int64_t len = left < DIRECT_RUN ? left : DIRECT_RUN;
                r[k++] = (byte_run){off, len, dst};
                off += len, dst += len, left -= len;
            }
        }
    int err = 0;
#pragma omp parallel for schedule(dynamic) reduction(max : err) if (nruns > 1)
    for (int64_t i = 0; i < nruns; i++) {
        const int e = pread_full(f->fd, r[i].dst, r[i].len, r[i].off);
        if (e > err) err = e;
    }
    free(r);
    return err;
}

/* ---- the fused direct read ----------------------------------------------------------------------
 * A bnhd transfer in native byte order read as read_direct does, but each thread, right after
 * the pread of a run of whole rows, hashes those rows (row_hash, as hash_rows), scans them
 * (scan_block, as scan_source) and, where the caller wants float32 of a 16-bit type, widens
 * them into place, while the run is still in the core's cache: one pass over memory instead of
 * three or four. The hashes are summed and the scan's results are a minimum and a maximum, so
 * the digest, the verdict and the largest |x| are those of the separate passes. A run of
 * H5IN_FUSED_RUN_BYTES (h5io.h) stays in L2. */
typedef struct {
    uint64_t sum;            /* the rows' hashes (0 unless asked) */
    int64_t bad;             /* the first non-finite: global index * 4 + kind (KINDS); INT64_MAX none */
    uint32_t m;              /* the largest finite magnitude, in the file's bits */
    double s_io, s_hash, s_scan, s_conv;   /* the threads' seconds in each step */
} fused_out;

/* buf: where the rows land (bnhd, the transfer's first row first), unless wide is set: then
 * they are read into each thread's own buffer and widened into wide ([rows, heads, D] float32).
 * 0, or the errno of a failed read. */
static int read_fused(const h5in *f, int idx, int64_t b, const piece *p, int np, void *buf,
                      float *wide, int hash, int scan, fused_out *o) {
    const fa_dtype t = f->dtype[idx];
    const int64_t *d = f->dims[idx];           /* bnhd: [B, N, heads, D] */
    const int64_t es = fa_dtype_size(t), N = d[1], row_el = d[2] * d[3], row_bytes = row_el * es;
    const int64_t run_rows = row_bytes < H5IN_FUSED_RUN_BYTES ? H5IN_FUSED_RUN_BYTES / row_bytes : 1;
    int64_t nruns = 0;
    for (int j = 0; j < np; j++) nruns += (p[j].n + run_rows - 1) / run_rows;
    typedef struct { int64_t row, n, at; } row_run;   /* file row, rows, first row in buf */
    row_run *r = fa_malloc((size_t)(nruns ? nruns : 1) * sizeof *r, "fused reads");
    int64_t k = 0;
    for (int j = 0; j < np; j++)
        for (int64_t s = 0; s < p[j].n; s += run_rows)
            r[k++] = (row_run){p[j].start + s, p[j].n - s < run_rows ? p[j].n - s : run_rows,
                               p[j].dst_row - p[0].dst_row + s};
    const int w32 = t == FA_F32;
    const uint32_t inf = inf_bits(t);
    uint64_t sum = 0;
    int64_t bad = INT64_MAX;
    uint32_t m = 0;
    int err = 0;
    double s_io = 0, s_hash = 0, s_scan = 0, s_conv = 0;
#pragma omp parallel reduction(+ : sum, s_io, s_hash, s_scan, s_conv) reduction(min : bad) \
    reduction(max : m, err) if (nruns > 1)
    {
        unsigned char *own = wide ? fa_malloc((size_t)(run_rows * row_bytes), "fused run") : NULL;
#pragma omp for schedule(dynamic)
        for (int64_t i = 0; i < nruns; i++) {
            const int64_t n_el = r[i].n * row_el;
            unsigned char *x = own ? own : (unsigned char *)buf + r[i].at * row_bytes;
            const double t0 = fa_now();
            const int e = pread_full(f->fd, x, r[i].n * row_bytes,
                                     f->offset[idx] + (b * N + r[i].row) * row_bytes);
            const double t1 = fa_now();
            s_io += t1 - t0;
            if (e) {
                if (e > err) err = e;
                continue;
            }
            for (int64_t q = 0; hash && q < r[i].n; q++)
                sum += row_hash(idx, b, r[i].row + q, x + q * row_bytes, row_bytes);
            const double t2 = fa_now();
            const int64_t first = scan ? scan_block(w32, inf, x, n_el, &m) : n_el;
            if (first < n_el) {
                const uint32_t v = w32 ? ((const uint32_t *)x)[first] : ((const uint16_t *)x)[first];
                const int64_t g = (b * N + r[i].row) * row_el + first;
                const int64_t code = g * 4 + nonfinite_kind(w32, inf, v);
                if (code < bad) bad = code;
            }
            const double t3 = fa_now();
            if (own) fa_to_f32(t, own, wide + r[i].at * row_el, n_el);
            s_hash += t2 - t1, s_scan += t3 - t2, s_conv += fa_now() - t3;
        }
        free(own);
    }
    free(r);
    *o = (fused_out){sum, bad, m, s_io, s_hash, s_scan, s_conv};
    return err;
}

static __attribute__((noreturn)) void read_failed(const h5in *f, int idx, int64_t b, const piece *p,
                                                  int np, int err) {
    fa_fail("input '%s': reading dataset '%s', rows [%lld, %lld) of batch %lld, failed: %s",
            f->path, f->name[idx], (long long)p[0].start,
            (long long)(p[np - 1].start + p[np - 1].n), (long long)b, strerror(err));
}

static int name_index(const char *name) {
    for (int i = 0; i < 3; i++)
        if (name && !strcmp(name, NAMES[i])) return i;
    return -1;
}

int h5in_read_rows(h5in *f, const char *name, int64_t b, const row_range *ranges, int nranges,
                   float *dst, int check_finite) {
    return h5in_read_rows_as(f, name, b, ranges, nranges, dst, FA_F32, check_finite);
}

fa_dtype h5in_native_type(const h5in *f, int i) {
    return fa_dtype_size(f->dtype[i]) == 2 ? f->dtype[i] : FA_F32;
}

int h5in_read_rows_as(h5in *f, const char *name, int64_t b, const row_range *ranges, int nranges,
                      void *dst_, fa_dtype as, int check_finite) {
    int idx = name_index(name), st = 0;
    if (idx < 0) st = fa_seterr("input '%s': no dataset '%s' to read (q, k or v)", f->path,
                                name ? name : "(null)");
    if (st == 0 && as != FA_F32 && as != h5in_native_type(f, idx))
        st = fa_seterr("input '%s': dataset '%s' holds %s; it cannot be handed over as %s",
                       f->path, f->name[idx], fa_dtype_name(f->dtype[idx]), fa_dtype_name(as));
    if (st == 0) st = check_ranges(f, idx, b, ranges, nranges);
    if (fa_agree(f->comm, st, 0) < 0) return -1;
    /* raw: the rows stay in the file's 16-bit type (native byte order, bnhd), no widening */
    const int raw = as != FA_F32, osize = fa_dtype_size(as);
    char *dst = dst_;
    const int64_t *dims = f->dims[idx];
    const int esize = fa_dtype_size(f->dtype[idx]), row_el = (int)(dims[2] * dims[3]);
    const int bhnd = f->layout[idx] == FA_BHND;
    int64_t cap_rows = f->cap_bytes / ((int64_t)row_el * esize), total = 0;
    if (bhnd && cap_rows > FA_BHND_STAGE_BYTES / ((int64_t)row_el * esize))
        cap_rows = FA_BHND_STAGE_BYTES / ((int64_t)row_el * esize);   /* its staging, bounded */
    if (cap_rows < 1) cap_rows = 1;
    piece *p = fa_malloc((size_t)(nranges + 1) * sizeof *p, "read pieces");
    cursor c = {0, 0, 0};
    int64_t nb = 0;
    while (next_batch(ranges, nranges, &c, cap_rows, p) > 0) nb++;
    for (int i = 0; i < nranges; i++) total += ranges[i].n;
    const double t_sync = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, &nb, 1, MPI_INT64_T, MPI_MAX, f->comm);
    fa_sync_s += MPI_Wtime() - t_sync;
    /* float64 goes through a staging buffer; narrower types are read straight into the tail
     * of their fp32 destination and widened in place (front to back, never overtaking) */
    void *stage = esize > 4 && !bhnd ? fa_malloc((size_t)((total < cap_rows ? total : cap_rows) *
                                                         row_el * esize), "read staging") : NULL;
    if (bhnd) {                              /* kept: a fresh buffer a chunk costs page faults */
        size_t need = (size_t)((total < cap_rows ? total : cap_rows) * row_el * esize);
        if (need > f->tstage_bytes) {
            free(f->tstage);
            f->tstage = fa_malloc(need, "bhnd read staging");
            f->tstage_bytes = need;
        }
    }
    const int virt = f->sdset[idx] >= 0;    /* a VDS in a parallel build: serial handle */
    const int direct = f->direct && f->offset[idx] >= 0;   /* the same on every rank */
    /* the finite scan on the file's bits of each transfer (scan_source), or after conversion;
     * raw rows are scanned where they land (native order, bnhd) */
    const int scan_src = check_finite && (raw || (!bhnd && !f->swap[idx] && f->dtype[idx] != FA_F64));
    /* direct bnhd reads in native order: read, hashed, scanned and widened run by run */
    const int fuse = direct && f->fused && !bhnd && !f->swap[idx] && esize <= 4;
    int64_t bad_at = -1;
    const char *bad_what = "";
    uint32_t amax_bits = 0;
    hid_t fspace = H5Dget_space(f->dset[idx]), dxpl = transfer_plist();
    HDF5_CHECK(fspace, "H5Dget_space");
    c = (cursor){0, 0, 0};
    for (int64_t it = 0; it < nb; it++) {
        static char none;                    /* a buffer for ranks with nothing to read */
        int np = next_batch(ranges, nranges, &c, cap_rows, p);
        int64_t rows = 0;
        for (int i = 0; i < np; i++) rows += p[i].n;
        const int64_t n_el = rows * row_el;  /* pieces of a batch are consecutive in dst */
        char *out = np ? dst + p[0].dst_row * row_el * osize : NULL;
        void *buf = !np ? (void *)&none : bhnd ? f->tstage : stage ? stage
                                                           : out + n_el * (osize - esize);
        hid_t mem = select_pieces(fspace, dims, f->layout[idx], b, p, np);
        if (virt && !np) {                   /* independent reads: nothing to take part in */
            H5Sclose(mem);
            continue;
        }
        double tc = fa_now();
        if (fuse) {                          /* the same on every rank: no collective call */
            fused_out o;
            float *widen = raw || esize == 4 ? NULL : (float *)out;   /* 16-bit to float32 */
            int err = np ? read_fused(f, idx, b, p, np, buf, widen, idx > 0, scan_src, &o) : 0;
            if (err) read_failed(f, idx, b, p, np, err);
            h5io_ntransfers++;
            H5Sclose(mem);
            if (!np) continue;
            const double wall = fa_now() - tc, busy = o.s_io + o.s_hash + o.s_scan + o.s_conv;
            const double share = busy > 0 ? wall / busy : 0;
            f->t_fused += wall;
            f->t_io += o.s_io * share, f->t_hash += o.s_hash * share;
            f->t_scan += o.s_scan * share, f->t_conv += o.s_conv * share;
            f->bytes_in += n_el * esize;
            f->digest[idx] += o.sum;
            if (o.bad != INT64_MAX && (bad_at < 0 || o.bad / 4 < bad_at))
                bad_at = o.bad / 4, bad_what = KINDS[o.bad % 4];
            if (magnitude_f32_bits(f->dtype[idx], o.m) > amax_bits)
                amax_bits = magnitude_f32_bits(f->dtype[idx], o.m);
            continue;
        }
        if (direct) {                        /* the same on every rank: no collective call */
            int err = np ? read_direct(f, idx, b, p, np, buf, rows, bhnd) : 0;
            if (err) read_failed(f, idx, b, p, np, err);
        } else if (H5Dread(virt ? f->sdset[idx] : f->dset[idx], f->type[idx], mem, fspace,
                    virt ? H5P_DEFAULT : dxpl, buf) < 0) {
            if (np)
                fa_fail("input '%s': reading dataset '%s'%s, rows [%lld, %lld) of batch %lld, "
                        "failed in HDF5 (H5Dread)", f->path, f->name[idx],
                        f->virt[idx] ? " (a virtual dataset)" : "", (long long)p[0].start,
                        (long long)(p[np - 1].start + p[np - 1].n), (long long)b);
            fa_fail("input '%s': reading dataset '%s'%s (batch %lld, no rows on this rank) "
                    "failed in HDF5 (H5Dread)", f->path, f->name[idx],
                    f->virt[idx] ? " (a virtual dataset)" : "", (long long)b);
        }
        if (!virt && !direct) note_io_mode(dxpl);
        h5io_ntransfers++;
        H5Sclose(mem);
        f->t_io += fa_now() - tc;
        if (!np) continue;
        f->bytes_in += n_el * esize;
        tc = fa_now();
        if (idx > 0) hash_rows(f, idx, b, p, np, buf, rows, dims[2], dims[3] * esize, bhnd);
        f->t_hash += fa_now() - tc;
        tc = fa_now();
        if (scan_src && !raw)
            scan_source(f->dtype[idx], buf, p, np, row_el, dims[1], b, &bad_at, &bad_what, &amax_bits);
        f->t_scan += fa_now() - tc;
        tc = fa_now();
        if (f->swap[idx]) fa_byteswap(buf, esize, n_el);
        if (raw) {                           /* as bnhd, in the file's type */
            if (bhnd) fa_copy_swap(esize, buf, out, dims[2], rows, dims[3]);
            f->t_conv += fa_now() - tc;
            tc = fa_now();
            if (scan_src)
                scan_source(f->dtype[idx], out, p, np, row_el, dims[1], b, &bad_at, &bad_what, &amax_bits);
            f->t_scan += fa_now() - tc;
            continue;
        }
        if (bhnd) fa_to_f32_swap(f->dtype[idx], buf, (float *)out, dims[2], rows, dims[3]);
        else fa_to_f32(f->dtype[idx], buf, (float *)out, n_el);
        f->t_conv += fa_now() - tc;
    }
    H5Pclose(dxpl);
    H5Sclose(fspace);
    free(stage);
    free(p);
    if (!check_finite) return 0;
    if (!scan_src) return check_finite_all(f, idx, b, ranges, nranges, (const float *)dst);
    f->absmax[idx] = fa_bits_f32(amax_bits);
    return report_nonfinite(f, idx, bad_at, bad_what);
}
