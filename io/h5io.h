/* h5io.h — reading q/k/v from HDF5 and writing o/lse, in parallel (MPI-IO, a hyperslab per
 * rank, collective transfers) where the HDF5 library is parallel (H5_HAVE_PARALLEL), serially
 * where it is not. File format: see README.md ("File format").
 *
 * Every function returning int gives 0 on success and -1 on a user-facing error, with one line
 * set through fa_seterr() that names the file, the dataset and what was expected. Functions
 * marked COLLECTIVE must be called by every rank of the communicator, the same number of times,
 * with the same sizes where noted; they return the same status on every rank. */
#pragma once
#include <stdint.h>
#include <mpi.h>

typedef enum { FA_F32 = 0, FA_F16 = 1, FA_BF16 = 2, FA_F64 = 3 } fa_dtype;
const char *fa_dtype_name(fa_dtype t);            /* "float32", "float16", "bfloat16", "float64" */
int fa_dtype_parse(const char *s, fa_dtype *out); /* accepts those names and f32/f16/bf16/fp16... */
int fa_dtype_size(fa_dtype t);

/* The order of a q/k/v/o dataset's dimensions in the file (--layout, the attribute 'layout'):
 * bnhd [B, N, heads, D], fa_long's own and the default; bhnd [B, heads, N, D], torch's. Whatever
 * the file holds, the I/O layer hands over and takes rows as [N, heads, D] (bnhd). AUTO: not
 * given (an option left out, no attribute). */
typedef enum { FA_LAYOUT_AUTO = 0, FA_BNHD = 1, FA_BHND = 2 } fa_layout;
const char *fa_layout_name(fa_layout l);            /* "bnhd", "bhnd" ("auto" for AUTO) */
int fa_layout_parse(const char *s, fa_layout *out); /* bnhd, bhnd (any case; also bshd, bhsd);
                                                     * -1, no message, for anything else */

/* Element conversion (io/convert.c); n elements, vectorizable loops. */
void fa_to_f32(fa_dtype t, const void *src, float *dst, int64_t n);
void fa_from_f32(fa_dtype t, const float *src, void *dst, int64_t n);  /* round to nearest even */
/* The same, swapping the two outer axes on the way: src [a][b][d] -> dst [b][a][d], the bnhd <->
 * bhnd copy of a block of rows ([heads][rows][D] <-> [rows][heads][D]) in one pass. */
void fa_to_f32_swap(fa_dtype t, const void *src, float *dst, int64_t a, int64_t b, int64_t d);
void fa_from_f32_swap(fa_dtype t, const float *src, void *dst, int64_t a, int64_t b, int64_t d);
/* The same swap of elements of `size` bytes, copied as they are (no conversion). */
void fa_copy_swap(int size, const void *src, void *dst, int64_t a, int64_t b, int64_t d);

typedef struct {
    int64_t B, Nq, Nk, H, Hkv, D;
    fa_dtype q_type, k_type, v_type;
} fa_shape;

/* Whether this build's HDF5 is parallel (for the build line and --version). */
int h5io_parallel(void);


/* A row range of a [B, N, heads, D] dataset: rows [start, start+n) of batch b. */
typedef struct { int64_t start, n; } row_range;

/* ---- input ---------------------------------------------------------------------------------- */
typedef struct h5in h5in;

/* COLLECTIVE. Opens `path` read-only and checks q, k, v (the datasets at paths dsets[0..3), e.g.
 * "/layer3/q" or "layer3/q"; NULL, or a NULL/empty entry: "q", "k", "v"; HDF5 links are followed;
 * every message names the path): each rank-4, floating type (float32,
 * float16, bfloat16 as described in the README, float64; or bfloat16 bit patterns in 16-bit
 * integers with the attribute dtype = "bfloat16"), non-empty, same B and D, same Nk and Hkv
 * for k and v, H a multiple of Hkv, D <= FA_MAX_HEAD_DIM. cap_bytes: bytes per rank per HDF5
 * transfer (the run plan's; 0: 1 GiB). */
int h5in_open(const char *path, const char *const dsets[3], MPI_Comm comm, int64_t cap_bytes,
              h5in **out, fa_shape *shape);

/* COLLECTIVE. Reads the rows of `ranges` (in order, concatenated) of batch element b of dataset
 * `name` ("q", "k" or "v": the logical names, whatever paths h5in_open was given) into dst as fp32 [sum n, heads, D]. Ranks may pass different ranges
 * (their own shard) or none (nranges 0). Each transfer is capped (cap_bytes per rank) and
 * looped, every rank making the same number of collective calls. When check_finite is set, a
 * NaN/Inf is reported with its index [b, row, head, d] as an error (same status on all ranks). */
int h5in_read_rows(h5in *f, const char *name, int64_t b, const row_range *ranges, int nranges,
                   float *dst, int check_finite);

/* COLLECTIVE. h5in_read_rows into dst in element type `as`: FA_F32 (widened, what
 * h5in_read_rows gives), or h5in_native_type(f, i) of a 16-bit dataset: its rows as the file
 * holds them (bnhd, native byte order, no widening), for engines that take the file's type
 * (the GPU's transfers). The finite scan, the digests and the largest |x| are the same. */
int h5in_read_rows_as(h5in *f, const char *name, int64_t b, const row_range *ranges, int nranges,
                      void *dst, fa_dtype as, int check_finite);
/* The type dataset i (0 q, 1 k, 2 v) can be handed over in without conversion: float16 and
 * bfloat16 as they are, everything else FA_F32. */
fa_dtype h5in_native_type(const h5in *f, int i);

/* The input's identity for --resume: its size in bytes and modification time in ns (rank 0's
 * stat at open, the same on every rank). */
void h5in_identity(const h5in *f, int64_t *size, int64_t *mtime_ns);
/* This rank's digests of the rows it read of k and v (d[1], d[2]; d[0], q, is not hashed: 0)
 * since the last call, then reset:
 * sums mod 2^64 of a per-row hash of the raw bytes keyed by the row's position (io/h5in.c), so
 * the ranks' sums (MPI_UINT64_T, MPI_SUM) are the digest of all their rows however they were
 * split. */
void h5in_take_digests(h5in *f, uint64_t d[3]);

/* COLLECTIVE. h5in_open with the datasets' layout: FA_BNHD or FA_BHND (--layout) for all three,
 * overriding any attribute (a warning when one says otherwise); FA_LAYOUT_AUTO (what h5in_open
 * passes): each dataset's attribute 'layout', else the root's, else bnhd. A file without any
 * attribute, read as bnhd, is refused or warned of when h5in_doubt_bnhd doubts the reading. A
 * bad attribute value is refused. The shape is the logical one. */
int h5in_open_layout(const char *path, const char *const dsets[3], fa_layout layout,
                     MPI_Comm comm, int64_t cap_bytes, h5in **out, fa_shape *shape);
/* The layout h5in_open settled for dataset i (0 q, 1 k, 2 v); never AUTO. */
fa_layout h5in_layout(const h5in *f, int i);
/* 1 when the layouts were stated (--layout, or an attribute of q, k, v or the root), 0 when
 * they are the default bnhd. */
int h5in_layout_stated(const h5in *f);

/* The layout doubt (README "Layout"): whether q, k, v of file dims q, k, v, read as bnhd because
 * nothing says otherwise, look like torch's [B, heads, N, D] read wrong. Only when read as
 * bhnd they fit too (same B and D, k and v alike, q's heads a multiple of k's; else bnhd is the
 * only reading): REFUSE when as bnhd k has more heads than rows (as bhnd it then has fewer);
 * WARN when q has more heads than rows while as bhnd k has no more heads than rows; NONE else.
 * Local; no message. */
typedef enum { FA_DOUBT_NONE = 0, FA_DOUBT_WARN, FA_DOUBT_REFUSE } fa_layout_doubt;
fa_layout_doubt h5in_doubt_bnhd(const int64_t q[4], const int64_t k[4], const int64_t v[4]);
/* The doubt in words, for the messages: "'k' [1, 4, 6000, 64] read as [B, N, heads, D] has more
 * heads (6000) than rows (4), while read as torch's [B, heads, N, D] q, k, v fit" (q for WARN);
 * nm: the datasets' names as the messages give them. */
void h5in_doubt_text(fa_layout_doubt why, const char *const nm[3], const int64_t q[4],
                     const int64_t k[4], char *buf, int len);

void h5in_close(h5in *f);   /* COLLECTIVE */

/* Whether rows of datasets stored contiguously (no chunks, filters or external files; most
 * files h5py and fa_long gen write) may be read straight from the file with pread, by the
 * OpenMP threads, instead of through H5Dread (default 1; checked at open, dataset by dataset,
 * on every rank: the first elements read both ways must agree). The same value on every rank:
 * it decides whether reads make collective calls. */
void h5in_direct_reads(h5in *f, int on);

/* Whether a direct read of a bnhd dataset in native byte order (float32, float16, bfloat16)
 * hashes and scans each run of rows right after its pread, while the bytes are in cache,
 * instead of in passes of their own over the transfer (default 1; FA_FUSED_READ=0 turns it off
 * for tests and benchmarks). The same digests, verdicts and largest |x| either way. */
void h5in_fused_reads(h5in *f, int on);

/* A fused run's bytes, rounded down to whole rows (at least one): small enough that a run
 * stays in the core's L2 between its pread and its scan (bench/read_rate.sh). */
#ifndef H5IN_FUSED_RUN_BYTES
#define H5IN_FUSED_RUN_BYTES (512 << 10)
#endif

/* The largest |x| this rank read in its last h5in_read_rows of dataset `name` with check_finite
 * set (its finite values; 0 before any). */
float h5in_last_absmax(const h5in *f, const char *name);

/* ---- output --------------------------------------------------------------------------------- */
typedef struct h5out h5out;

/* Whether `path` can name an output file: -1 with fa_seterr for an empty path, one ending in '/'
 * or naming "." or "..", or an existing folder. Local (no MPI). */
int h5out_path_ok(const char *path);

/* COLLECTIVE. Takes the lock that keeps every other job off the output `path`: rank 0 of comm
 * holds a POSIX record lock (fcntl F_SETLK, also on NFS) on "<folder>/.<name>.lock", which the
 * kernel releases whenever the process ends, kill -9 included. -1 on every rank with "output
 * 'X': another job is writing it ..." when another process holds it. Nests within a process:
 * h5out_create and h5out_reopen take it too, and release their hold when they end (commit,
 * suspend, abort). The last release unlinks the lock file; holds left at exit are released then. */
int h5out_lock(const char *path, MPI_Comm comm);
void h5out_unlock(const char *path);                 /* one hold; a no-op where none is held */
void h5out_lock_path(const char *path, char *buf, int len);   /* "<folder>/.<name>.lock" */

/* COLLECTIVE. Creates the output under a temporary name next to `path` (renamed on commit).
 * Fails cleanly if `path` exists and !force, if the folder is not writable, if another job holds
 * the output's lock, or if the folder lacks the space for the whole file (rank 0 reserves it with
 * fallocate before any row is computed; a statvfs check where fallocate is not supported).
 * Datasets: "o" [B, Nq, H, D] of o_type; with with_lse, "lse" [B, H, Nq] float32; both in group
 * `group` ("layers/3", "/layers/3", created with its parents; NULL, "" or "/": the root).
 * Attributes stay on the root. */
int h5out_create(const char *path, const char *group, int force, MPI_Comm comm, const fa_shape *shape,
                 fa_dtype o_type, int with_lse, int64_t cap_bytes, h5out **out);

/* COLLECTIVE. h5out_create and h5out_reopen with o in `layout` (FA_BHND: [B, H, Nq, D]; BNHD
 * or AUTO: [B, Nq, H, D], what the plain calls make); o gets a dataset attribute 'layout'
 * (reopen checks o's shape in that layout). lse is [B, H, Nq] whatever the layout. */
int h5out_create_layout(const char *path, const char *group, int force, MPI_Comm comm,
                        const fa_shape *shape, fa_dtype o_type, fa_layout layout, int with_lse,
                        int64_t cap_bytes, h5out **out);
int h5out_reopen_layout(const char *path, const char *group, MPI_Comm comm, const fa_shape *shape,
                        fa_dtype o_type, fa_layout layout, int with_lse, int64_t cap_bytes,
                        h5out **out);

/* COLLECTIVE (every rank calls it the same number of times; a rank with nothing to write passes
 * n = 0). Writes rows [r0, r0+n) of batch b: o from fp32 [n, H, D]; lse from fp32 [n, H]
 * (row-major by row, transposed here into [B, H, Nq]) when the file has lse. */
int h5out_write_rows(h5out *f, int64_t b, int64_t r0, int64_t n, const float *o, const float *lse);
/* The same with o in element type `as`: FA_F32, or the file's o type (rows already in it, as a
 * GPU engine's device conversion gives them: written as they are). */
int h5out_write_rows_as(h5out *f, int64_t b, int64_t r0, int64_t n, const void *o, fa_dtype as,
                        const float *lse);

/* COLLECTIVE, same values on every rank. Root attributes recording the job. */
int h5out_attr_int(h5out *f, const char *name, int64_t v);
int h5out_attr_double(h5out *f, const char *name, double v);
int h5out_attr_str(h5out *f, const char *name, const char *v);

/* Write-behind, called by the thread that writes after each group of rows (local, not
 * collective, never blocks on the disk): a thread of the rank's own makes what it has written
 * durable (fdatasync), flush after flush, while the writer and compute go on. Never fails: an
 * I/O error is kept and fails the commit; where the file cannot be synced, nothing happens and
 * the commit's fsync flushes everything. */
void h5out_flush_behind(h5out *f);

/* This rank's write-behind so far, and the commit's parts (h5out_commit_measured). */
typedef struct {
    int write_behind;               /* 1: rows went on to the disk as they were written */
    int64_t bytes_written;          /* bytes of rows this rank wrote into the file */
    int64_t bytes_flushed_behind;   /* of them, on the disk before the commit */
    double flush_busy_s;            /* the write-behind's time flushing (beside the run) */
    double flush_best_bps;          /* the fastest flush (bytes/s; 0: none): a write-behind
                                       flush, its bytes over its time, or, where nothing was
                                       flushed behind, the commit's fsync (rank 0) */
    double commit_s;                /* h5out_commit's whole time on this rank, of which: */
    double drain_s;                 /* the write-behind's flush in progress, to its end */
    double close_s;                 /* closing the file on every rank (HDF5's last writes) */
    double fsync_s, verify_s, rename_s;   /* rank 0: the fsync; the size check and the serial
                                       reopen that reads o and lse back; the rename and the
                                       folder's fsync (other ranks: 0, they wait) */
    int64_t commit_left_bytes;      /* every rank's rows the fsync still had to flush */
} h5out_flush_stats;
void h5out_get_flush_stats(const h5out *f, h5out_flush_stats *s);

/* COLLECTIVE. Closes the file on every rank; rank 0 fsyncs it, checks its size and reopens it
 * serially (o and lse readable), then renames it to its final name. Any failure (a write-behind's
 * I/O error included): -1 on every rank, the temporary file removed, an existing output
 * untouched. Frees f whatever happens (do not h5out_abort it afterwards). h5out_commit_measured
 * also fills *s (may be NULL) with the write-behind's figures and the commit's parts. */
int h5out_commit(h5out *f);
int h5out_commit_measured(h5out *f, h5out_flush_stats *s);
/* COLLECTIVE or alone (after an error): closes and removes the temporary file. */
void h5out_abort(h5out *f);

/* ---- mask tables (io/h5mask.c): serial, one process ------------------------------------------
 * Packed documents: integer datasets cu_seqlens_q and cu_seqlens_k (or cu_seqlens for both), in
 * the group of q's dataset, shape [ndocs+1] (every batch element) or [B, ndocs+1], offsets from 0
 * to Nq (Nk), never decreasing. ALiBi: float dataset alibi_slopes [H] there, read when `alibi`
 * (else a warning that it is not used). Absent datasets: ndocs 0, alibi NULL. Every message
 * names the file and the dataset. */
typedef struct {
    int64_t ndocs, doc_rows;   /* documents per row of the tables; rows: 1 or B */
    int64_t *cu_q, *cu_k;      /* [doc_rows][ndocs+1], or NULL */
    float *alibi;              /* [H], or NULL */
    int docs_unread;           /* the input has offsets that `documents` = 0 left unread */
} h5_mask_tables;
/* documents = 0 (--no-documents): the offsets are neither read nor checked (ndocs 0). */
int h5_read_mask_tables(const char *path, const char *qpath, const fa_shape *s, int alibi,
                        int documents, h5_mask_tables *t);
void h5_mask_tables_free(h5_mask_tables *t);
/* Checks one table of offsets ([rows][ndocs+1]): starts at 0, never decreases, ends at n. 0 when
 * good; else -1 with fa_seterr starting with `what` (file and dataset). */
int h5_check_offsets(const int64_t *cu, int64_t rows, int64_t ndocs, int64_t n, const char *what);

/* How dataset `name` of `path` is stored: *chunked and its chunk shape (ndims, chunk[]), and its
 * filters' names ("deflate, shuffle") into filters[flen]. Serial, one process; -1 with fa_seterr
 * when the file or dataset cannot be opened. */
int h5_dataset_storage(const char *path, const char *name, int *chunked, int *ndims,
                       int64_t chunk[8], char *filters, int flen);

/* ---- small independent reads (fa_long check, tests) ----------------------------------------- */
/* Serial (one process, no MPI-IO): reads a hyperslab start/count (rank-ndims) of dataset `name`
 * in `path` as fp32 into dst; returns -1 with fa_seterr on error. dims/ndims/type out optional. */
int h5_read_block(const char *path, const char *name, int ndims, const int64_t *start,
                  const int64_t *count, float *dst);
int h5_dataset_info(const char *path, const char *name, int *ndims, int64_t dims[8],
                    fa_dtype *type);
/* h5_read_block of a 4-dimensional dataset stored in `layout`, start and count given as for
 * bnhd ([B, N, heads, D]) and dst filled as bnhd: a bhnd dataset is read as its [B, heads, N, D]
 * block and transposed. */
int h5_read_block_as(const char *path, const char *name, fa_layout layout, const int64_t start[4],
                     const int64_t count[4], float *dst);
/* The layout that dataset `name` of `path` records: its attribute 'layout', else the root's, else
 * FA_LAYOUT_AUTO (none). -1 with fa_seterr naming the file and the object for a value that is
 * not a layout. */
int h5_layout(const char *path, const char *name, fa_layout *out);
/* Reads a root attribute; returns -1 when absent. */
int h5_attr_double(const char *path, const char *name, double *v);
int h5_attr_str(const char *path, const char *name, char *buf, int len);

/* ---- durable progress and --resume (io/h5out.c) ------------------------------------------------
 * The output is built in "<folder>/.<name>.partial" and renamed over <name> at commit. */
/* Writes the partial file's name for an output path into buf[len]. */
void h5out_partial_path(const char *path, char *buf, int len);
/* COLLECTIVE. Records that chunks [0, done) are complete (root attribute "chunks_done") and
 * flushes the file, so the partial file can be resumed even if the job is killed later; from
 * then on a failure no longer removes the partial file. */
int h5out_checkpoint(h5out *f, int64_t done);
/* COLLECTIVE. Records chunks [0, done) as complete, closes the partial file and leaves it in
 * place for --resume (the final path is not touched). Frees f. */
int h5out_suspend(h5out *f, int64_t done);
/* What the partial records of the input (written by every checkpoint and by suspend, as root
 * attributes "input_identity" = "size=BYTES mtime_ns=NS" and "input_kv_digest" uint64 [n, 3]
 * = {b, k digest, v digest} for the last n <= 1024 batch elements loaded): the input's size and
 * mtime, and batch element b's digests (the same on every rank). h5out_recorded_kv gives b's digests recorded by
 * the partial h5out_reopen opened (or noted since), returning 1 when known, 0 when not. */
void h5out_note_input(h5out *f, int64_t size, int64_t mtime_ns);
void h5out_note_kv(h5out *f, int64_t b, uint64_t k, uint64_t v);
int h5out_recorded_kv(h5out *f, int64_t b, uint64_t *k, uint64_t *v);
/* COLLECTIVE. Opens the partial file of `path` left by an earlier run for writing, checking its
 * datasets against shape/o_type/with_lse; -1 with fa_seterr when it does not fit. */
int h5out_reopen(const char *path, const char *group, MPI_Comm comm, const fa_shape *shape, fa_dtype o_type,
                 int with_lse, int64_t cap_bytes, h5out **out);
