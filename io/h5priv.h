/* h5priv.h — what io/h5io.c, io/h5in.c and io/h5out.c share: the HDF5 checker, element-type
 * recognition, the cross-rank status agreement and the per-transfer cap. Not for other folders. */
#pragma once
#include "io/h5io.h"
#include "base/agree.h"
#include "base/common.h"
#include <hdf5.h>
#include <mpi.h>

/* IOR-style checker for failures one rank meets alone mid-transfer (I/O errors): fa_fail() with
 * file, line and rank, which removes the temporary output and brings every rank down. Errors a
 * user can cause (bad input, output exists) are reported with fa_seterr() instead. */
#define HDF5_CHECK(ret, what)                                                             \
    do {                                                                                  \
        if ((ret) < 0) fa_fail("%s:%d: HDF5 %s failed", __FILE__, __LINE__, (what));      \
    } while (0)

#define FA_PATH_MAX 4096
#define FA_IO_CAP_DEFAULT (1LL << 30)   /* bytes per rank per transfer (the plan's: FA_IO_CAP_BYTES) */
/* A bhnd dataset's transfers are at most this many bytes: each is read into (or written from) a
 * staging buffer in the file's order and transposed, so the buffer stays small; its runs, rows x D
 * per head, stay long (64 MiB over 32 heads: 2 MiB each). */
#define FA_BHND_STAGE_BYTES (64LL << 20)

void h5io_init(void);

/* File-access property list for every rank of comm: MPI-IO with collective metadata (reads, and
 * writes when `writing`) in a parallel build, the default driver otherwise. H5Pclose it. */
hid_t h5io_fapl(MPI_Comm comm, int writing);                   /* silences HDF5's own error stack printing, once */

/* Recognizes a file element type: fills *t and *swap (bytes to swap for this host) and returns
 * 0, or returns -1 and writes what the type is instead into why[len]. */
int h5io_classify(hid_t type, fa_dtype *t, int *swap, char *why, int len);
/* The element type of dataset ds, whose file type is `type`: h5io_classify's, and bfloat16 for
 * 16-bit integers (uint16 or int16, either byte order) when ds has the string attribute dtype =
 * "bfloat16" (any case): bf16 bit patterns, as numpy (uint16) and torch (.view(torch.int16))
 * users store them, read as they are. Otherwise -1 with fa_seterr "<role> '<path>': dataset
 * '<name>' holds ... elements; expected ..." naming the ways that work. */
int h5io_dataset_type(hid_t ds, hid_t type, const char *role, const char *path, const char *name,
                      fa_dtype *t, int *swap);
hid_t h5io_file_type(fa_dtype t);       /* little-endian file type of t; H5Tclose it */

/* Opens `path` read-only through the default (serial) driver, with the user-facing messages for
 * a missing file or one that is not HDF5; `role` ("input", "file") starts them. */
hid_t h5io_open_serial(const char *path, const char *role);
/* 1 when the link path `name` ("a/b/c", "/a/b/c") exists under loc, every group on the way
 * included (0 otherwise, no HDF5 error). */
int h5io_link_exists(hid_t loc, const char *name);
/* Opens dataset `name` of `file` with a message naming both (and `expect`, may be NULL) when it
 * is absent or not a dataset. */
hid_t h5io_open_dataset(hid_t file, const char *path, const char *name, const char *expect);
/* For "dataset NAME not found" (the option that names it: opt, "--q"): where datasets of that
 * name are, found by walking the file's links (H5Lvisit), into buf[len]: "; did you mean --q
 * /layer7/q?" when one dataset's path is within a couple of edits of NAME (fa_closest), else
 * "; the file has 2 datasets named q: /layer7/q, /layer8/q; give one with --q (e.g. --q
 * /layer7/q)" (up to 4 listed), else "". */
void h5io_suggest_dataset(hid_t file, const char *name, const char *opt, char *buf, int len);
/* Reads string attribute `name` of object `obj` (fixed or variable length) into buf[len];
 * -1 when absent or not a string (no message). */
int h5io_read_str_attr(hid_t obj, const char *name, char *buf, int len);
/* Writes (creates or replaces) string attribute `name` of object obj as h5py writes a str:
 * variable length, UTF-8. -1 on failure (no message). */
int h5io_write_str_attr(hid_t obj, const char *name, const char *v);
/* Reads the attribute 'layout' of object obj: 0 when absent (*l = FA_LAYOUT_AUTO), 0 with *l set
 * when it names a layout, -1 when it is there but does not, with bad[len] saying so after
 * "attribute 'layout' ": 'holds "torch"', 'is not a string'. */
int h5io_layout_attr(hid_t obj, fa_layout *l, char *bad, int len);


/* COLLECTIVE. Checks that `path` can be read (mode R_OK) or written (W_OK) on every rank: a
 * file on one node's local disk fails here with a message naming the rank and host, instead of
 * hanging or failing deep inside MPI-IO. */
int h5io_visible(MPI_Comm comm, const char *path, int mode, const char *role);

int64_t h5io_cap(int64_t cap_bytes);    /* cap_bytes (0: 1 GiB), within [1, 2^31 - 4096] */
void h5io_fmt_dims(char *buf, int len, int ndims, const int64_t *dims);   /* "[2, 64, 8, 128]" */

/* For tests: whether the last parallel transfer ran collectively (1), independently (0), or
 * -1 in a serial build or before any transfer. */
extern int h5io_last_collective;
/* For tests: H5Dread/H5Dwrite calls made by h5in_read_rows and h5out_write_rows so far. */
extern int64_t h5io_ntransfers;
