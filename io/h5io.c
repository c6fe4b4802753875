/* h5io.c — what the HDF5 code shares (type recognition, the checker's companions, status
 * agreement across ranks, the transfer cap) and the small serial helpers behind `fa_long check`
 * and the tests. Input is in h5in.c, output in h5out.c. */
#define _GNU_SOURCE
#include "io/h5priv.h"
#include "io/convert.h"
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

int h5io_last_collective = -1;
int64_t h5io_ntransfers = 0;

int h5io_parallel(void) {
#ifdef H5_HAVE_PARALLEL
    return 1;
#else
    return 0;
#endif
}

void h5io_init(void) {
    static int done = 0;
    if (done) return;
    H5open();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);   /* the user sees our one line, not HDF5's stack */
    done = 1;
}

/* ---- element types -------------------------------------------------------------------------- */
typedef struct { fa_dtype t; int size, spos, epos, esize, mpos, msize, ebias; } float_layout;
static const float_layout layouts[] = {
    {FA_F32, 4, 31, 23, 8, 0, 23, 127},
    {FA_F64, 8, 63, 52, 11, 0, 52, 1023},
    {FA_F16, 2, 15, 10, 5, 0, 10, 15},
    {FA_BF16, 2, 15, 7, 8, 0, 7, 127},   /* sign 15, 8 exponent bits at 7, 7 mantissa bits */
};

static const char *class_name(H5T_class_t c) {
    switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_TIME: return "time";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "variable-length";
    case H5T_ARRAY: return "array";
    default: return "unknown";
    }
}

static int host_big_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 0;
}

int h5io_classify(hid_t type, fa_dtype *t, int *swap, char *why, int len) {
    H5T_class_t c = H5Tget_class(type);
    int size = (int)H5Tget_size(type);
    if (c != H5T_FLOAT) {
        if (c == H5T_INTEGER) snprintf(why, len, "%d-bit integer", 8 * size);
        else snprintf(why, len, "%s", class_name(c));
        return -1;
    }
    size_t spos, epos, esize, mpos, msize;
    H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
    int ebias = (int)H5Tget_ebias(type);
    H5T_order_t order = H5Tget_order(type);
    int exact = H5Tget_precision(type) == (size_t)(8 * size) && H5Tget_offset(type) == 0 &&
                H5Tget_norm(type) == H5T_NORM_IMPLIED &&
                (order == H5T_ORDER_LE || order == H5T_ORDER_BE);
    for (size_t i = 0; exact && i < sizeof layouts / sizeof layouts[0]; i++) {
        const float_layout *l = &layouts[i];
        if (l->size == size && l->spos == (int)spos && l->epos == (int)epos &&
            l->esize == (int)esize && l->mpos == (int)mpos && l->msize == (int)msize &&
            l->ebias == ebias) {
            *t = l->t;
            *swap = size > 1 && ((order == H5T_ORDER_BE) != host_big_endian());
            return 0;
        }
    }
    snprintf(why, len, "%d-bit float (sign bit %d, %d exponent bits at %d with bias %d, "
             "%d mantissa bits at %d)", 8 * size, (int)spos, (int)esize, (int)epos, ebias,
             (int)msize, (int)mpos);
    return -1;
}

/* The ways that work, ending every refusal of an element type. */
#define TYPE_HINT "for bfloat16: a 16-bit HDF5 float type with sign bit 15, 8 exponent bits at 7, " \
    "bias 127 and 7 mantissa bits at 0, or its bit patterns in a uint16 or int16 dataset with " \
    "the attribute dtype = \"bfloat16\"; Python's fa_long.write_inputs writes every type"

int h5io_dataset_type(hid_t ds, hid_t type, const char *role, const char *path, const char *name,
                      fa_dtype *t, int *swap) {
    char why[256], attr[64] = "", said[96] = "";
    if (h5io_classify(type, t, swap, why, sizeof why) == 0) return 0;
    if (h5io_read_str_attr(ds, "dtype", attr, sizeof attr) == 0)
        snprintf(said, sizeof said, " (attribute dtype = \"%s\")", attr);
    const H5T_order_t order = H5Tget_order(type);
    if (H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 2 &&
        H5Tget_precision(type) == 16 && H5Tget_offset(type) == 0 &&
        (order == H5T_ORDER_LE || order == H5T_ORDER_BE) && !strcasecmp(attr, "bfloat16")) {
        *t = FA_BF16;                      /* bf16 bit patterns: read as they are, swapped */
        *swap = (order == H5T_ORDER_BE) != host_big_endian();
        return 0;
    }
    return fa_seterr("%s '%s': dataset '%s' holds %s elements%s; expected float32, float16, "
                     "bfloat16 or float64 (" TYPE_HINT ")", role, path, name, why, said);
}

hid_t h5io_fapl(MPI_Comm comm, int writing) {
#ifdef H5_HAVE_PARALLEL
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    HDF5_CHECK(fapl, "H5Pcreate(file access)");
    HDF5_CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL), "H5Pset_fapl_mpio");
    HDF5_CHECK(H5Pset_all_coll_metadata_ops(fapl, 1), "H5Pset_all_coll_metadata_ops");
    if (writing) HDF5_CHECK(H5Pset_coll_metadata_write(fapl, 1), "H5Pset_coll_metadata_write");
    return fapl;
#else
    (void)comm;
    (void)writing;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);            /* the default (sec2) driver */
    HDF5_CHECK(fapl, "H5Pcreate(file access)");
    return fapl;
#endif
}

hid_t h5io_file_type(fa_dtype t) {
    hid_t ft = -1;
    switch (t) {
    case FA_F32: return H5Tcopy(H5T_IEEE_F32LE);
    case FA_F64: return H5Tcopy(H5T_IEEE_F64LE);
    case FA_F16: case FA_BF16: {
        const float_layout *l = &layouts[t == FA_F16 ? 2 : 3];
        ft = H5Tcopy(H5T_IEEE_F32LE);      /* as h5py: fields first, then size, then bias */
        HDF5_CHECK(ft, "H5Tcopy");
        HDF5_CHECK(H5Tset_fields(ft, l->spos, l->epos, l->esize, l->mpos, l->msize),
                   "H5Tset_fields");
        HDF5_CHECK(H5Tset_size(ft, 2), "H5Tset_size");
        HDF5_CHECK(H5Tset_precision(ft, 16), "H5Tset_precision");
        HDF5_CHECK(H5Tset_ebias(ft, l->ebias), "H5Tset_ebias");
        return ft;
    }
    }
    return -1;
}

/* ---- opening ---------------------------------------------------------------------------------- */
hid_t h5io_open_serial(const char *path, const char *role) {
    h5io_init();
    struct stat st;
    if (stat(path, &st) != 0) {
        fa_seterr("%s '%s': %s", role, path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        fa_seterr("%s '%s' is a folder; expected an HDF5 file", role, path);
        return -1;
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fa_seterr("%s '%s': cannot read it: %s", role, path, strerror(errno));
        return -1;
    }
    fclose(fp);
    if (H5Fis_hdf5(path) <= 0) {
        fa_seterr("%s '%s' is not an HDF5 file", role, path);
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) fa_seterr("%s '%s': HDF5 cannot open it (damaged or locked file?)", role, path);
    return f;
}

int h5io_link_exists(hid_t loc, const char *name) {
    char buf[FA_PATH_MAX];
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof buf) return 0;
    memcpy(buf, name, n + 1);
    /* every prefix ending before a '/', then the whole path: H5Lexists fails (rather than saying
     * no) when a group on the way is missing, or is a dataset */
    for (size_t i = 1; i <= n; i++) {
        if (i < n && buf[i] != '/') continue;
        if (i < n && buf[i - 1] == '/') continue;        /* "//" or a leading "/" */
        char c = buf[i];
        buf[i] = 0;
        htri_t e = H5Lexists(loc, buf, H5P_DEFAULT);
        buf[i] = c;
        if (e <= 0) return 0;
    }
    return 1;
}

hid_t h5io_open_dataset(hid_t file, const char *path, const char *name, const char *expect) {
    const char *sep = expect ? "; expected " : "", *ex = expect ? expect : "";
    const char *role = expect ? "input" : "file";
    if (h5io_link_exists(file, name) <= 0) {
        fa_seterr("%s '%s': dataset '%s' not found%s%s", role, path, name, sep, ex);
        return -1;
    }
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0) fa_seterr("%s '%s': '%s' is not a dataset (a group?)%s%s", role, path, name, sep,
                         ex);
    return d;
}

/* Every dataset's path in the file ("/a/b"), soft links included, external ones left out. */
typedef struct { char **path; int n, cap; } path_list;

static herr_t collect_dataset(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    path_list *l = data;
    if (info->type != H5L_TYPE_HARD && info->type != H5L_TYPE_SOFT) return 0;
    hid_t o = H5Oopen(g, name, H5P_DEFAULT);           /* a dangling soft link: skipped */
    const int ds = o >= 0 && H5Iget_type(o) == H5I_DATASET;
    if (o >= 0) H5Oclose(o);
    if (!ds) return 0;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        char **p = realloc(l->path, (size_t)l->cap * sizeof *p);
        if (!p) return 1;                               /* stop: what was found is enough */
        l->path = p;
    }
    const size_t n = strlen(name) + 2;
    if (!(l->path[l->n] = malloc(n))) return 1;
    snprintf(l->path[l->n++], n, "/%s", name);
    return 0;
}

void h5io_suggest_dataset(hid_t file, const char *name, const char *opt, char *buf, int len) {
    path_list l = {0};
    buf[0] = 0;
    H5Lvisit(file, H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &l);
    H5Eclear2(H5E_DEFAULT);
    char want[FA_PATH_MAX];                             /* name as a path from the root */
    while (*name == '/') name++;
    snprintf(want, sizeof want, "/%s", name);
    const char *leaf = strrchr(want, '/') + 1;
    const char *hit = fa_closest(want, strlen(want), (const char *const *)l.path, l.n);
    int same = 0;
    for (int i = 0; i < l.n; i++) same += !strcmp(strrchr(l.path[i], '/') + 1, leaf);
    if (hit) {
        snprintf(buf, len, "; did you mean %s %s?", opt, hit);
    } else if (same) {                          /* "...: /a/q, /b/q; give one with --q ..." */
        const char *first = NULL;
        int k = same > 1 ? snprintf(buf, len, "; the file has %d datasets named %s:", same, leaf)
                         : snprintf(buf, len, "; the file has one dataset named %s:", leaf);
        for (int i = 0, shown = 0; i < l.n && k < len; i++) {
            if (strcmp(strrchr(l.path[i], '/') + 1, leaf)) continue;
            if (!first) first = l.path[i];
            if (shown++ == 4) { k += snprintf(buf + k, len - k, " ..."); break; }
            k += snprintf(buf + k, len - k, "%s %s", shown > 1 ? "," : "", l.path[i]);
        }
        if (k < len && same > 1)
            snprintf(buf + k, len - k, "; give one with %s (e.g. %s %s)", opt, opt, first);
        else if (k < len) snprintf(buf + k, len - k, "; give %s %s", opt, first);
    }
    for (int i = 0; i < l.n; i++) free(l.path[i]);
    free(l.path);
}

int h5io_read_str_attr(hid_t obj, const char *name, char *buf, int len) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = a < 0 ? -1 : H5Aget_type(a);
    int st = -1;
    if (t >= 0 && H5Tget_class(t) == H5T_STRING && len > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        if (H5Tis_variable_str(t) > 0) {
            char *s = NULL;
            H5Tset_size(mt, H5T_VARIABLE);
            H5Tset_cset(mt, H5Tget_cset(t));
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(buf, len, "%s", s);
                H5free_memory(s);
                st = 0;
            }
        } else {
            size_t n = H5Tget_size(t);
            char *s = fa_calloc(n + 1, 1, "string attribute");
            H5Tset_size(mt, n);
            if (H5Aread(a, mt, s) >= 0) {
                snprintf(buf, len, "%s", s);
                st = 0;
            }
            free(s);
        }
        H5Tclose(mt);
    }
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    return st;
}

int h5io_write_str_attr(hid_t obj, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR), a;
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    int st = (a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(a, t, &v) >= 0 ? 0 : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return st;
}

int h5io_layout_attr(hid_t obj, fa_layout *l, char *bad, int len) {
    char v[64];
    *l = FA_LAYOUT_AUTO;
    if (H5Aexists(obj, "layout") <= 0) return 0;
    if (h5io_read_str_attr(obj, "layout", v, sizeof v) < 0) {
        snprintf(bad, len, "is not a string");
        return -1;
    }
    if (fa_layout_parse(v, l) == 0) return 0;
    snprintf(bad, len, "holds \"%s\"", v);
    return -1;
}

/* ---- across ranks ------------------------------------------------------------------------------ */
int h5io_visible(MPI_Comm comm, const char *path, int mode, const char *role) {
    int rank, st = 0;
    MPI_Comm_rank(comm, &rank);
    if (access(path, mode) != 0) {
        char host[MPI_MAX_PROCESSOR_NAME] = "?";
        int len;
        MPI_Get_processor_name(host, &len);
        st = fa_seterr("%s '%s' cannot be %s on rank %d (host %s): %s; expected a file system "
                       "every rank sees", role, path, mode == R_OK ? "read" : "written", rank,
                       host, strerror(errno));
    }
    return fa_agree(comm, st, rank);
}

int64_t h5io_cap(int64_t cap_bytes) {
    int64_t cap = cap_bytes > 0 ? cap_bytes : FA_IO_CAP_DEFAULT;
    return cap > INT_MAX - 4095 ? INT_MAX - 4095 : cap;
}

void h5io_fmt_dims(char *buf, int len, int ndims, const int64_t *dims) {
    int k = snprintf(buf, len, "[");
    for (int i = 0; i < ndims && k < len; i++)
        k += snprintf(buf + k, len - k, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (k < len) snprintf(buf + k, len - k, "]");
}

/* ---- small serial helpers ---------------------------------------------------------------------- */
typedef struct { hid_t file, dset, space, type; int ndims; int64_t dims[8]; } h5_obj;

static void obj_close(h5_obj *o) {
    if (o->type >= 0) H5Tclose(o->type);
    if (o->space >= 0) H5Sclose(o->space);
    if (o->dset >= 0) H5Dclose(o->dset);
    if (o->file >= 0) H5Fclose(o->file);
}

static int obj_open(h5_obj *o, const char *path, const char *name) {
    *o = (h5_obj){-1, -1, -1, -1, 0, {0}};
    if ((o->file = h5io_open_serial(path, "file")) < 0) return -1;
    if ((o->dset = h5io_open_dataset(o->file, path, name, NULL)) < 0) return obj_close(o), -1;
    o->space = H5Dget_space(o->dset);
    o->type = H5Dget_type(o->dset);
    o->ndims = H5Sget_simple_extent_ndims(o->space);
    if (o->space < 0 || o->type < 0 || o->ndims < 0 || o->ndims > 8) {
        fa_seterr("file '%s': dataset '%s' has an unreadable shape (rank %d; at most 8)", path,
                  name, o->ndims);
        return obj_close(o), -1;
    }
    hsize_t d[8];
    H5Sget_simple_extent_dims(o->space, d, NULL);
    for (int i = 0; i < o->ndims; i++) o->dims[i] = (int64_t)d[i];
    return 0;
}

static int obj_type(h5_obj *o, const char *path, const char *name, fa_dtype *t, int *swap) {
    return h5io_dataset_type(o->dset, o->type, "file", path, name, t, swap);
}

int h5_dataset_info(const char *path, const char *name, int *ndims, int64_t dims[8],
                    fa_dtype *type) {
    h5_obj o;
    int swap;
    if (obj_open(&o, path, name) < 0) return -1;
    int st = type ? obj_type(&o, path, name, type, &swap) : 0;
    if (ndims) *ndims = o.ndims;
    if (dims) memcpy(dims, o.dims, sizeof o.dims);
    obj_close(&o);
    return st;
}

static int block_check(const h5_obj *o, const char *path, const char *name, int ndims,
                       const int64_t *start, const int64_t *count) {
    char have[200];
    h5io_fmt_dims(have, sizeof have, o->ndims, o->dims);
    if (ndims != o->ndims)
        return fa_seterr("file '%s': dataset '%s' has shape %s; expected rank %d", path, name,
                         have, ndims);
    for (int i = 0; i < ndims; i++)
        if (start[i] < 0 || count[i] < 0 || start[i] + count[i] > o->dims[i])
            return fa_seterr("file '%s': dataset '%s' %s: block start %lld count %lld in "
                             "dimension %d is out of range", path, name, have,
                             (long long)start[i], (long long)count[i], i);
    return 0;
}

int h5_read_block(const char *path, const char *name, int ndims, const int64_t *start,
                  const int64_t *count, float *dst) {
    h5_obj o;
    fa_dtype t;
    int swap, st = -1;
    if (obj_open(&o, path, name) < 0) return -1;
    if (obj_type(&o, path, name, &t, &swap) < 0 ||
        block_check(&o, path, name, ndims, start, count) < 0)
        return obj_close(&o), -1;
    int64_t n = 1;
    hsize_t s[8], c[8];
    for (int i = 0; i < ndims; i++) n *= count[i], s[i] = start[i], c[i] = count[i];
    if (n == 0) return obj_close(&o), 0;
    void *buf = fa_malloc((size_t)n * fa_dtype_size(t), "h5_read_block");
    hsize_t hn = (hsize_t)n;
    hid_t mem = H5Screate_simple(1, &hn, NULL);
    if (H5Sselect_hyperslab(o.space, H5S_SELECT_SET, s, NULL, c, NULL) >= 0 &&
        H5Dread(o.dset, o.type, mem, o.space, H5P_DEFAULT, buf) >= 0) {
        if (swap) fa_byteswap(buf, fa_dtype_size(t), n);
        fa_to_f32(t, buf, dst, n);
        st = 0;
    } else {
        fa_seterr("file '%s': reading dataset '%s' failed", path, name);
    }
    H5Sclose(mem);
    free(buf);
    obj_close(&o);
    return st;
}

int h5_read_block_as(const char *path, const char *name, fa_layout layout, const int64_t start[4],
                     const int64_t count[4], float *dst) {
    if (layout != FA_BHND) return h5_read_block(path, name, 4, start, count, dst);
    const int64_t st[4] = {start[0], start[2], start[1], start[3]};
    const int64_t ct[4] = {count[0], count[2], count[1], count[3]};
    const int64_t blk = count[1] * count[2] * count[3];       /* one batch element's block */
    float *t = fa_malloc((size_t)(blk > 0 ? blk : 1) * sizeof(float), "bhnd block");
    int st_rc = 0;
    for (int64_t b = 0; b < count[0] && st_rc == 0; b++) {   /* [heads][rows] -> [rows][heads] */
        int64_t s1[4] = {st[0] + b, st[1], st[2], st[3]}, c1[4] = {1, ct[1], ct[2], ct[3]};
        st_rc = h5_read_block(path, name, 4, s1, c1, t);
        if (st_rc == 0) fa_to_f32_swap(FA_F32, t, dst + b * blk, count[2], count[1], count[3]);
    }
    free(t);
    return st_rc;
}

static hid_t open_root(const char *path, hid_t *file) {
    if ((*file = h5io_open_serial(path, "file")) < 0) return -1;
    hid_t g = H5Gopen2(*file, "/", H5P_DEFAULT);
    if (g < 0) H5Fclose(*file), fa_seterr("file '%s': cannot open its root group", path);
    return g;
}

int h5_attr_double(const char *path, const char *name, double *v) {
    hid_t file, g = open_root(path, &file), a = -1, t = -1;
    if (g < 0) return -1;
    int st = -1;
    if (H5Aexists(g, name) <= 0) {
        fa_seterr("file '%s' has no attribute '%s'", path, name);
    } else if ((a = H5Aopen(g, name, H5P_DEFAULT)) >= 0 && (t = H5Aget_type(a)) >= 0 &&
               (H5Tget_class(t) == H5T_INTEGER || H5Tget_class(t) == H5T_FLOAT) &&
               H5Aread(a, H5T_NATIVE_DOUBLE, v) >= 0) {
        st = 0;
    } else {
        fa_seterr("file '%s': attribute '%s' is not a number", path, name);
    }
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    H5Gclose(g);
    H5Fclose(file);
    return st;
}

int h5_attr_str(const char *path, const char *name, char *buf, int len) {
    hid_t file, g = open_root(path, &file);
    if (g < 0) return -1;
    int st = h5io_read_str_attr(g, name, buf, len);
    if (st < 0) fa_seterr("file '%s' has no string attribute '%s'", path, name);
    H5Gclose(g);
    H5Fclose(file);
    return st;
}

int h5_layout(const char *path, const char *name, fa_layout *out) {
    hid_t file, g = open_root(path, &file), d = -1;
    if (g < 0) return -1;
    char bad[128];
    fa_layout root;
    int st = 0;
    if (h5io_layout_attr(g, &root, bad, sizeof bad) < 0)
        st = fa_seterr("file '%s': root attribute 'layout' %s; expected \"bnhd\" or \"bhnd\"",
                       path, bad);
    else if ((d = h5io_open_dataset(file, path, name, NULL)) < 0)
        st = -1;
    else if (h5io_layout_attr(d, out, bad, sizeof bad) < 0)
        st = fa_seterr("file '%s': dataset '%s': attribute 'layout' %s; expected \"bnhd\" or "
                       "\"bhnd\"", path, name, bad);
    else if (*out == FA_LAYOUT_AUTO)
        *out = root;
    if (d >= 0) H5Dclose(d);
    H5Gclose(g);
    H5Fclose(file);
    return st;
}
