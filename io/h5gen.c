/* h5gen.c — writing q/k/v input files (see h5gen.h). */
#define _GNU_SOURCE
#include "io/h5gen.h"
#include "io/h5priv.h"
#include "base/common.h"
#include <errno.h>
#include <hdf5.h>
#include <libgen.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Bytes of q, k and v of element type t (INT64_MAX when that overflows). */
static int64_t input_bytes(const fa_shape *s, fa_dtype t) {
    int64_t q, kv, all, e = fa_dtype_size(t);
    if (__builtin_mul_overflow(s->B, s->Nq, &q) || __builtin_mul_overflow(q, s->H, &q) ||
        __builtin_mul_overflow(q, s->D, &q) || __builtin_mul_overflow(q, e, &q) ||
        __builtin_mul_overflow(s->B, s->Nk, &kv) || __builtin_mul_overflow(kv, s->Hkv, &kv) ||
        __builtin_mul_overflow(kv, s->D, &kv) || __builtin_mul_overflow(kv, 2 * e, &kv) ||
        __builtin_add_overflow(q, kv, &all) || __builtin_add_overflow(all, 64 << 10, &all))
        return INT64_MAX;
    return all;                         /* with 64 KiB for HDF5's metadata */
}

/* Refuses a file that cannot fit the free space of `dir`; with fd >= 0 also reserves its blocks
 * (fallocate, the file's size unchanged), where the file system supports that. */
static int check_space(const char *path, const char *dir, int fd, int64_t need) {
    struct statvfs v;
    int64_t avail = statvfs(dir, &v) == 0 ? (int64_t)v.f_bavail * (int64_t)v.f_frsize : -1;
    int e = 0;
    if (avail >= 0 && need > avail) e = ENOSPC;
    else if (fd >= 0 && fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)need) != 0 &&
             (errno == ENOSPC || errno == EDQUOT || errno == EFBIG))
        e = errno;
    if (!e) return 0;
    if (need == INT64_MAX)
        return fa_seterr("output '%s': not enough space in folder '%s': needs more than %lld "
                         "bytes, %lld available", path, dir, (long long)INT64_MAX,
                         (long long)avail);
    return fa_seterr("output '%s': not enough space in folder '%s': needs %lld bytes, %lld "
                     "available%s", path, dir, (long long)need, (long long)(avail < 0 ? 0 : avail),
                     e == EDQUOT ? " (disk quota)" : e == EFBIG ? " (file size limit)" : "");
}

static int write_dataset(hid_t file, const char *path, const char *name, const fa_shape *s,
                         int64_t n, int64_t heads, fa_dtype t, fa_layout layout, fa_fill_fn fill,
                         void *arg) {
    const int bhnd = layout == FA_BHND;
    hsize_t dims[4] = {(hsize_t)s->B, (hsize_t)n, (hsize_t)heads, (hsize_t)s->D};
    if (bhnd) dims[1] = (hsize_t)heads, dims[2] = (hsize_t)n;
    hid_t space = H5Screate_simple(4, dims, NULL);
    hid_t ft = h5io_file_type(t);          /* the element types fa_long reads (io/h5io.c) */
    hid_t ds = H5Dcreate2(file, name, ft, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds < 0) {
        H5Tclose(ft);
        H5Sclose(space);
        return fa_seterr("%s: cannot create dataset '%s'", path, name);
    }
    if ((t == FA_BF16 && h5io_write_str_attr(ds, "dtype", "bfloat16") < 0) ||
        (layout != FA_LAYOUT_AUTO && h5io_write_str_attr(ds, "layout", fa_layout_name(layout)) < 0)) {
        H5Dclose(ds);
        H5Tclose(ft);
        H5Sclose(space);
        return fa_seterr("%s: cannot write the attributes of dataset '%s'", path, name);
    }
    int64_t row = heads * s->D;
    int64_t slab = (int64_t)(8 << 20) / (row * 4) + 1;       /* ~8 MB of fp32 per slab */
    float *buf = fa_malloc((size_t)(slab * row) * sizeof(float), "gen slab");
    void *raw = fa_malloc((size_t)(slab * row) * (size_t)fa_dtype_size(t), "gen slab");
    int rc = 0;
    for (int64_t b = 0; b < s->B && !rc; b++) {
        for (int64_t r0 = 0; r0 < n && !rc; r0 += slab) {
            int64_t m = n - r0 < slab ? n - r0 : slab;
            fill(arg, name, b, r0, m, heads, s->D, buf);
            hsize_t start[4] = {(hsize_t)b, (hsize_t)r0, 0, 0};
            hsize_t count[4] = {1, (hsize_t)m, (hsize_t)heads, (hsize_t)s->D};
            if (bhnd) {                        /* the slab's rows as [heads][m][D] */
                fa_from_f32_swap(t, buf, raw, m, heads, s->D);
                start[1] = 0, start[2] = (hsize_t)r0, count[1] = (hsize_t)heads,
                count[2] = (hsize_t)m;
            } else {
                fa_from_f32(t, buf, raw, m * row);
            }
            hid_t mem = H5Screate_simple(4, count, NULL);
            H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
            if (H5Dwrite(ds, ft, mem, space, H5P_DEFAULT, raw) < 0)
                rc = fa_seterr("%s: cannot write dataset '%s' (disk full?)", path, name);
            H5Sclose(mem);
        }
    }
    free(buf);
    free(raw);
    H5Dclose(ds);
    H5Tclose(ft);
    H5Sclose(space);
    return rc;
}

int h5_write_inputs(const char *path, int force, const fa_shape *s, fa_dtype t, fa_layout layout,
                    fa_fill_fn fill, void *arg) {
    struct stat sb;
    if (!force && stat(path, &sb) == 0)
        return fa_seterr("%s: output exists (use --force to replace it)", path);
    char tmp[4096], dir[4096], base[4096];
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(base, sizeof base, "%s", path);
    const char *folder = dirname(dir);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%d", folder, basename(base), (int)getpid());
    const int64_t need = input_bytes(s, t);
    if (check_space(path, folder, -1, need)) return -1;          /* before any file is made */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return fa_seterr("%s: cannot create file (%s)", path, strerror(errno ? errno : EACCES));
    fa_set_cleanup_path(tmp);
    int fd = open(tmp, O_WRONLY | O_CLOEXEC), rc = check_space(path, folder, fd, need);
    if (fd >= 0) close(fd);
    if (!rc) rc = write_dataset(f, path, "q", s, s->Nq, s->H, t, layout, fill, arg);
    if (!rc) rc = write_dataset(f, path, "k", s, s->Nk, s->Hkv, t, layout, fill, arg);
    if (!rc) rc = write_dataset(f, path, "v", s, s->Nk, s->Hkv, t, layout, fill, arg);
    if (H5Fclose(f) < 0 && !rc) rc = fa_seterr("%s: cannot close file", path);
    struct stat fs;
    if (!rc && (fd = open(tmp, O_WRONLY | O_CLOEXEC)) >= 0) {   /* the reserve past its end back */
        if (fstat(fd, &fs) == 0 && fs.st_size < need &&
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, fs.st_size,
                      (off_t)(need - fs.st_size)) != 0) { /* nothing was reserved there */ }
        if (fsync(fd) != 0 && errno != EINVAL)
            rc = fa_seterr("%s: writing the file to disk failed (%s)", path, strerror(errno));
        close(fd);
    }
    if (!rc && rename(tmp, path) != 0)
        rc = fa_seterr("%s: cannot rename the finished file into place (%s)", path, strerror(errno));
    if (rc) unlink(tmp);
    fa_set_cleanup_path(NULL);
    return rc;
}

static hid_t open_rw(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) fa_seterr("%s: cannot open for update", path);
    return f;
}

int h5_set_attr_str(const char *path, const char *name, const char *value) {
    hid_t f = open_rw(path);
    if (f < 0) return -1;
    int rc = h5io_write_str_attr(f, name, value) ? fa_seterr("%s: cannot write attribute '%s'", path, name) : 0;
    if (H5Fclose(f) < 0 && !rc) rc = fa_seterr("%s: cannot close after update", path);
    return rc;
}

int h5_set_attr_double(const char *path, const char *name, double value) {
    hid_t f = open_rw(path);
    if (f < 0) return -1;
    if (H5Aexists(f, name) > 0) H5Adelete(f, name);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a < 0 || H5Awrite(a, H5T_NATIVE_DOUBLE, &value) < 0) ? fa_seterr("%s: cannot write attribute '%s'", path, name) : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    if (H5Fclose(f) < 0 && !rc) rc = fa_seterr("%s: cannot close after update", path);
    return rc;
}

int h5_set_attr_doubles(const char *path, const char *name, const double *v, int64_t n) {
    hid_t f = open_rw(path);
    if (f < 0) return -1;
    if (H5Aexists(f, name) > 0) H5Adelete(f, name);
    hsize_t dim = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &dim, NULL);
    hid_t a = H5Acreate2(f, name, H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a < 0 || H5Awrite(a, H5T_NATIVE_DOUBLE, v) < 0) ? fa_seterr("%s: cannot write attribute '%s'", path, name) : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    if (H5Fclose(f) < 0 && !rc) rc = fa_seterr("%s: cannot close after update", path);
    return rc;
}
