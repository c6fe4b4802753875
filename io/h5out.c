/* h5out.c — writing o [B, Nq, H, D] (o_type; [B, H, Nq, D] in layout bhnd, transposed here from
 * the caller's rows) and lse [B, H, Nq] (float32).
 * The file is created under a temporary name in the output's folder (".<name>.partial"),
 * registered with fa_set_cleanup_path() so that fa_fail() removes it, and renamed over the
 * final path only by h5out_commit(), after every rank's writes: a failed run leaves no output and
 * never damages an existing one (--force replaces it only at commit). Once a checkpoint has made
 * some chunks durable (h5out_checkpoint), the partial file is kept for --resume instead.
 * Parallel HDF5: every rank writes its own rows through MPI-IO in capped collective transfers,
 * the same number on every rank. Serial HDF5: rank 0 alone holds the file; the other ranks send
 * it their rows, transfer by transfer, and it writes them.
 * Write-behind: rows written while later chunks compute are made durable as they go (a thread
 * of each writing rank, h5out_flush_behind), so that the commit's fsync finds little left. */
#define _GNU_SOURCE
#include "io/h5priv.h"
#include "io/convert.h"
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Write-behind (h5out_flush_behind): a thread of the rank's own flushes the rows the rank wrote,
 * while the writer goes on. Under mu: everything but fd and the thread. */
typedef struct {
    int fd;                     /* the partial file, this rank's own descriptor (-1: none) */
    int inited, running, quit;  /* mu and cv made; the flusher thread started; asked to end */
    int on, err;                /* fdatasync works here; the first I/O error it met (errno) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t posted;             /* bytes written when the writer last asked for a flush */
    int64_t done;               /* bytes known on the disk (this node's page cache flushed: a
                                   rank's rows that another node's aggregator wrote are flushed
                                   by that node's ranks) */
    double busy_s, best_bps;    /* the flusher's time in its flushes; the fastest of them */
} write_behind;

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
    int locked;                 /* rank 0: this h5out holds one hold of the output's lock */
    int64_t min_bytes;          /* the file's size can be no less (o and lse data) */
    int64_t reserved;           /* rank 0: bytes reserved with fallocate (0: none) */
    void *ostage;               /* conversion staging of o and lse, kept between writes (a fresh */
    float *lstage;              /* 64 MB buffer per chunk cost its page faults every time) */
    size_t ostage_bytes, lstage_bytes;
    fa_layout layout;           /* o's: FA_BHND [B, H, Nq, D], else [B, Nq, H, D] */
    void *tstage;               /* bhnd: a transfer's o rows transposed, [H][rows][D] */
    size_t tstage_bytes;
    uint64_t *kvd;              /* --resume: [B][3] {known, k digest, v digest}, the partial's */
    char ident[96];             /* and the input's "size=... mtime_ns=...", both kept on write */
    char oname[FA_PATH_MAX], lname[FA_PATH_MAX];   /* o's and lse's paths: "o" or "G/o" */
    int64_t wb_written;         /* bytes of rows this rank wrote into the file */
    write_behind wb;            /* sending them on to the disk */
};

/* o's and lse's paths in group g (NULL, "", "/": the root; leading and trailing '/' dropped) */
static void set_names(h5out *f, const char *g) {
    while (g && *g == '/') g++;
    int n = g ? (int)strlen(g) : 0;
    while (n > 0 && g[n - 1] == '/') n--;
    if (n == 0) {
        snprintf(f->oname, sizeof f->oname, "o");
        snprintf(f->lname, sizeof f->lname, "lse");
    } else {
        snprintf(f->oname, sizeof f->oname, "%.*s/o", n, g);
        snprintf(f->lname, sizeof f->lname, "%.*s/lse", n, g);
    }
}

/* *buf grown to at least `need` bytes (its contents not kept) */
static void grow(void **buf, size_t *have, size_t need, const char *what) {
    if (need <= *have) return;
    free(*buf);
    *buf = fa_aligned_alloc(need, what);
    *have = need;
}

/* f's staging buffers, grown to at least the sizes asked for */
static void stage_reserve(h5out *f, size_t obytes, size_t lbytes, size_t tbytes) {
    grow(&f->ostage, &f->ostage_bytes, obytes, "o staging");
    grow((void **)&f->lstage, &f->lstage_bytes, lbytes, "lse staging");
    grow(&f->tstage, &f->tstage_bytes, tbytes, "bhnd o staging");
}

/* o's dims in the file: [B, Nq, H, D], or [B, H, Nq, D] in layout bhnd */
static void o_dims(const h5out *f, int64_t od[4]) {
    const fa_shape *s = &f->shape;
    const int t = f->layout == FA_BHND;
    od[0] = s->B, od[1 + t] = s->Nq, od[2 - t] = s->H, od[3] = s->D;
}

/* ---- the output's lock ---------------------------------------------------------------------------
 * One POSIX record lock per output, on "<folder>/.<name>.lock", held by rank 0. POSIX locks belong
 * to the process and are dropped when it closes ANY descriptor of the file, so the file is opened
 * once per process and nested holds are counted here (matched by path, and by device and inode
 * so that another spelling of the same file never opens it twice). */
#define FA_MAX_LOCKS 8
static struct { char path[FA_PATH_MAX]; int fd, holds; dev_t dev; ino_t ino; } locks[FA_MAX_LOCKS];
static int nlocks_registered;

static void lock_release_all(void) {          /* at exit: what commit/abort did not release */
    for (int i = 0; i < FA_MAX_LOCKS; i++)
        if (locks[i].holds > 0) {
            unlink(locks[i].path);            /* while holding it: see lock_take */
            close(locks[i].fd);
            locks[i].holds = 0;
        }
}

/* Called when MPI_Finalize deletes MPI_COMM_SELF's attributes, which it does first, before the
 * ranks' final synchronization: the lock file is gone before any rank of a failed job exits and
 * mpirun tears the others down (atexit alone could come too late for rank 0). */
static int lock_release_cb(MPI_Comm c, int key, void *v, void *extra) {
    lock_release_all();
    return MPI_SUCCESS;
}

static void lock_release_at_end(void) {
    atexit(lock_release_all);
    fa_on_fail(lock_release_all);             /* MPI_Abort runs no atexit handler */
    int up = 0, down = 0, key;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (up && !down &&
        MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, lock_release_cb, &key, NULL) == MPI_SUCCESS)
        MPI_Comm_set_attr(MPI_COMM_SELF, key, NULL);
}

void h5out_lock_path(const char *path, char *buf, int len) {
    char d[FA_PATH_MAX], b[FA_PATH_MAX];
    snprintf(d, sizeof d, "%s", path);
    snprintf(b, sizeof b, "%s", path);
    snprintf(buf, (size_t)len, "%s/.%s.lock", dirname(d), basename(b));
}

/* This process takes one hold of path's lock, or fails (another job holds it, or the folder
 * cannot hold the lock file). */
static int lock_take(const char *path) {
    char lp[FA_PATH_MAX], d[FA_PATH_MAX];
    h5out_lock_path(path, lp, sizeof lp);
    snprintf(d, sizeof d, "%s", path);
    struct stat ps;
    int have = stat(lp, &ps) == 0;
    for (int i = 0; i < FA_MAX_LOCKS; i++)
        if (locks[i].holds > 0 && (!strcmp(locks[i].path, lp) ||
                                   (have && locks[i].dev == ps.st_dev && locks[i].ino == ps.st_ino))) {
            locks[i].holds++;
            return 0;
        }
    int slot = -1;
    for (int i = 0; i < FA_MAX_LOCKS && slot < 0; i++)
        if (locks[i].holds == 0) slot = i;
    if (slot < 0) return fa_seterr("output '%s': more than %d outputs locked at once", path,
                                   FA_MAX_LOCKS);
    /* A holder unlinks the lock file while it still holds the lock, so a job that locked a file
     * which is no longer at lp (unlinked, or replaced by a newer one) must try again: only the
     * file at lp counts. */
    for (int tries = 0; tries < 100; tries++) {
        int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return fa_seterr("output '%s': cannot create a file in folder '%s': %s", path,
                             dirname(d), strerror(errno));
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;                         /* l_start = l_len = 0: the whole file */
        if (fcntl(fd, F_SETLK, &fl) != 0) {
            int e = errno;
            struct flock who;
            memset(&who, 0, sizeof who);
            who.l_type = F_WRLCK;
            who.l_whence = SEEK_SET;
            char by[64] = "";
            if ((e == EACCES || e == EAGAIN) && fcntl(fd, F_GETLK, &who) == 0 &&
                who.l_type != F_UNLCK && who.l_pid > 0)
                snprintf(by, sizeof by, " (process %d)", (int)who.l_pid);
            close(fd);
            if (e == EACCES || e == EAGAIN)
                return fa_seterr("output '%s': another job%s is writing it (it holds the lock "
                                 "'%s'); wait for it to end or choose another output", path, by,
                                 lp);
            return fa_seterr("output '%s': cannot lock '%s': %s", path, lp, strerror(e));
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(lp, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino) {
            char who[64];
            int n = snprintf(who, sizeof who, "%d\n", (int)getpid());   /* for people only */
            if (ftruncate(fd, 0) == 0 && write(fd, who, (size_t)n) < 0) { /* not needed */ }
            snprintf(locks[slot].path, sizeof locks[slot].path, "%s", lp);
            locks[slot].fd = fd, locks[slot].holds = 1;
            locks[slot].dev = a.st_dev, locks[slot].ino = a.st_ino;
            if (!nlocks_registered) lock_release_at_end(), nlocks_registered = 1;
            return 0;
        }
        close(fd);                                      /* releases the stale lock; retry */
    }
    return fa_seterr("output '%s': cannot lock '%s': it keeps being replaced", path, lp);
}

void h5out_unlock(const char *path) {
    char lp[FA_PATH_MAX];
    h5out_lock_path(path, lp, sizeof lp);
    for (int i = 0; i < FA_MAX_LOCKS; i++)
        if (locks[i].holds > 0 && !strcmp(locks[i].path, lp)) {
            if (--locks[i].holds == 0) {
                unlink(lp);                             /* before the lock goes */
                close(locks[i].fd);
            }
            return;
        }
}

int h5out_lock(const char *path, MPI_Comm comm) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    int st = 0;
    if (rank == 0) st = h5out_path_ok(path) ? -1 : lock_take(path);
    st = fa_agree(comm, st, 0);
    return st;
}

int h5out_path_ok(const char *path) {
    size_t n = path ? strlen(path) : 0;
    if (n == 0) return fa_seterr("output '': empty path; expected a file path");
    if (path[n - 1] == '/') return fa_seterr("output '%s' ends in '/'; expected a file path, not "
                                             "a folder", path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strcmp(base, ".") || !strcmp(base, ".."))
        return fa_seterr("output '%s' is a folder; expected a file path", path);
    if (n >= FA_PATH_MAX - 32) return fa_seterr("output '%s': path too long", path);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return fa_seterr("output '%s' is a folder; expected a file path", path);
    return 0;
}

/* ---- space: reserved before any row is computed ----------------------------------------------- */
static int64_t avail_bytes(const char *dir) {
    struct statvfs v;
    if (statvfs(dir, &v) != 0) return -1;
    return (int64_t)v.f_bavail * (int64_t)v.f_frsize;
}

/* Rank 0: reserves `bytes` for the file at `file` (blocks only, its size unchanged), so that no
 * write of the job can meet a full disk. Where the file system has no fallocate, the free space
 * is checked instead. */
static int reserve_space(const char *out, const char *file, int64_t bytes, int64_t *done) {
    char d[FA_PATH_MAX];
    snprintf(d, sizeof d, "%s", file);
    const char *dir = dirname(d);
    int fd = open(file, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return fa_seterr("output '%s': cannot open '%s' to reserve its space: %s", out,
                                 file, strerror(errno));
    int e = fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes) == 0 ? 0 : errno;
    struct stat sb;
    int64_t held = fstat(fd, &sb) == 0 ? (int64_t)sb.st_blocks * 512 : 0;
    close(fd);
    if (e == 0) return *done = bytes, 0;
    int64_t avail = avail_bytes(dir);
    if (e == EOPNOTSUPP || e == ENOSYS || e == EINVAL) {    /* no fallocate here: statvfs */
        if (avail < 0 || avail + held >= bytes) return 0;
        e = ENOSPC;
    }
    if (e == ENOSPC || e == EDQUOT || e == EFBIG)
        return fa_seterr("output '%s': not enough space in folder '%s': needs %lld bytes, %lld "
                         "available%s", out, dir, (long long)bytes,
                         (long long)(avail < 0 ? 0 : avail + held),
                         e == EDQUOT ? " (disk quota)" : e == EFBIG ? " (file size limit)" : "");
    return fa_seterr("output '%s': reserving %lld bytes for '%s' failed: %s", out,
                     (long long)bytes, file, strerror(e));
}

/* Bytes of o and lse in the file. */
static int64_t data_bytes(const fa_shape *s, fa_dtype t, int with_lse) {
    int64_t o = s->B * s->Nq * s->H * s->D * fa_dtype_size(t);
    return o + (with_lse ? s->B * s->H * s->Nq * 4 : 0);
}

/* Rank 0, after the datasets are created: the whole file's size, with room for the root
 * attributes written later (a job report of a few KB, a resume key). */
static int reserve_file(h5out *f) {
    hsize_t size = 0;
    if (H5Fget_filesize(f->file, &size) < 0) size = 0;
    int64_t bytes = (int64_t)size > f->min_bytes ? (int64_t)size : f->min_bytes;
    return reserve_space(f->path, f->tmp, bytes + (256 << 10), &f->reserved);
}

/* ---- write-behind: rows to the disk while later chunks compute ---------------------------------
 * Each rank that writes the file opens a descriptor of its own on it (MPI-IO gives none). After
 * each group of rows the writer (the I/O thread) only says how far it has written; a flusher
 * thread then makes everything written so far durable (fdatasync: the whole file, since with
 * collective buffering another rank of the node may have written this rank's rows), again and
 * again while there is more. Neither the writer nor compute waits for the disk, which works
 * beside them; each flush is timed from its start to its end, so its rate is the disk's for
 * these rows. The commit's fsync is left with what was written since the last flush and the
 * last metadata. fdatasync, not sync_file_range: that one only hands the pages to the device,
 * whose cache the commit's fsync must still flush, and that was the slow part (a 1 GiB file on
 * this project's test VM: 1.4 s of fsync after sync_file_range, 0.03 s after fdatasyncs). A
 * file that cannot be synced gets no write-behind; an I/O error a flush reports is kept and
 * fails the commit (the commit's own fsync would not see it again). */
static void wb_open(h5out *f) {
    write_behind *w = &f->wb;
    w->fd = f->holder ? open(f->tmp, O_RDONLY | O_CLOEXEC) : -1;
    w->on = w->fd >= 0;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->inited = 1;
}

static void *flusher(void *arg) {
    write_behind *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->quit && w->posted == w->done) pthread_cond_wait(&w->cv, &w->mu);
        if (w->quit) break;              /* the commit's fsync does the rest */
        const int64_t target = w->posted;
        pthread_mutex_unlock(&w->mu);
        const double t0 = fa_now();
        int rc;
        do rc = fdatasync(w->fd);
        while (rc != 0 && errno == EINTR);
        const int e = rc ? errno : 0;
        const double dt = fa_now() - t0;
        pthread_mutex_lock(&w->mu);
        if (rc) {
            if (e != EINVAL && e != EROFS) w->err = e;       /* else: it cannot be synced */
            w->on = 0;
            break;
        }
        if (dt > 0 && (target - w->done) / dt > w->best_bps) w->best_bps = (target - w->done) / dt;
        w->done = target;
        w->busy_s += dt;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

void h5out_flush_behind(h5out *f) {
    write_behind *w = &f->wb;
    if (!w->inited) return;
    pthread_mutex_lock(&w->mu);
    if (w->on && !w->running && !w->quit)
        w->running = pthread_create(&w->thread, NULL, flusher, w) == 0;
    w->posted = f->wb_written;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Ends the flusher (after the flush in progress) and returns how long that took. */
static double wb_stop(h5out *f) {
    write_behind *w = &f->wb;
    if (!w->inited) return 0;
    const double t0 = fa_now();
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_cond_signal(&w->cv);
    const int running = w->running;
    w->running = 0;
    pthread_mutex_unlock(&w->mu);
    if (running) pthread_join(w->thread, NULL);
    return fa_now() - t0;
}

/* The flusher ended, its descriptor closed (after the file's handles: closing a descriptor drops
 * the process's fcntl locks on the file, MPI-IO's). */
static void wb_close(h5out *f) {
    write_behind *w = &f->wb;
    wb_stop(f);
    if (w->fd >= 0) close(w->fd);
    w->fd = -1;
    if (w->inited) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        w->inited = 0;
    }
}

void h5out_get_flush_stats(const h5out *f, h5out_flush_stats *s) {
    write_behind *w = (write_behind *)&f->wb;
    memset(s, 0, sizeof *s);
    s->bytes_written = f->wb_written;
    if (!w->inited) return;
    pthread_mutex_lock(&w->mu);
    s->write_behind = w->fd >= 0 && w->err == 0 && (w->on || w->done > 0);
    s->bytes_flushed_behind = w->done;
    s->flush_busy_s = w->busy_s;
    s->flush_best_bps = w->best_bps;
    pthread_mutex_unlock(&w->mu);
}

/* ---- rank 0's checks: final path, folder, temporary name ---------------------------------------- */
static int check_output(const char *path, int force, char *tmp, int len) {
    if (h5out_path_ok(path)) return -1;
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

/* Contiguous, allocated at creation, never filled: every element is written by some rank. */
static hid_t create_dataset(hid_t file, const char *name, hid_t type, int nd, const int64_t *d) {
    hsize_t dims[4];
    for (int i = 0; i < nd; i++) dims[i] = (hsize_t)d[i];
    hid_t sp = H5Screate_simple(nd, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_layout(dcpl, H5D_CONTIGUOUS);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);      /* the group and its parents, as needed */
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t ds = H5Dcreate2(file, name, type, sp, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(lcpl);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return ds;
}

static int create_contents(h5out *f) {
    const fa_shape *s = &f->shape;
    if ((f->file = create_file(f)) < 0)
        return fa_seterr("output '%s': HDF5 cannot create '%s'", f->path, f->tmp);
    int64_t od[4], ld[3] = {s->B, s->H, s->Nq};
    o_dims(f, od);
    HDF5_CHECK(f->ftype = h5io_file_type(f->otype), "creating the output element type");
    if ((f->o = create_dataset(f->file, f->oname, f->ftype, 4, od)) < 0 ||
        (f->otype == FA_BF16 && h5io_write_str_attr(f->o, "dtype", "bfloat16") < 0) ||
        h5io_write_str_attr(f->o, "layout", fa_layout_name(f->layout)) < 0 ||
        (f->with_lse && (f->lse = create_dataset(f->file, f->lname, H5T_IEEE_F32LE, 3, ld)) < 0))
        return fa_seterr("output '%s': creating datasets '%s'%s%s in '%s' failed (%lld bytes)",
                         f->path, f->oname, f->with_lse ? " and " : "",
                         f->with_lse ? f->lname : "", f->tmp,
                         (long long)(od[0] * od[1] * od[2] * od[3] * fa_dtype_size(f->otype)));
    return 0;
}

/* Closes what is open (collective in a parallel build: every rank calls it); -1 with a message
 * when a close fails: the last writes, flushed there, did not land. */
static int close_contents(h5out *f) {
    const char *bad = NULL;
    if (f->lse >= 0 && H5Dclose(f->lse) < 0) bad = "closing dataset 'lse'";
    if (f->o >= 0 && H5Dclose(f->o) < 0) bad = "closing dataset 'o'";
    if (f->ftype >= 0) H5Tclose(f->ftype);
    if (f->file >= 0 && H5Fclose(f->file) < 0) bad = "closing the file";
    f->file = f->o = f->lse = f->ftype = -1;
    if (bad) return fa_seterr("output '%s': %s '%s' failed (disk full or I/O error?); nothing "
                              "was committed", f->path, bad, f->tmp);
    return 0;
}

static void out_free(h5out *f) {
    wb_close(f);
    if (f->locked) h5out_unlock(f->path);
    free(f->kvd);
    MPI_Comm_free(&f->comm);
    free(f->ostage);
    free(f->lstage);
    free(f->tstage);
    free(f);
}

int h5out_create(const char *path, const char *group, int force, MPI_Comm comm, const fa_shape *shape,
                 fa_dtype o_type, int with_lse, int64_t cap_bytes, h5out **out) {
    return h5out_create_layout(path, group, force, comm, shape, o_type, FA_BNHD, with_lse,
                               cap_bytes, out);
}

int h5out_create_layout(const char *path, const char *group, int force, MPI_Comm comm,
                        const fa_shape *shape, fa_dtype o_type, fa_layout layout, int with_lse,
                        int64_t cap_bytes, h5out **out) {
    h5io_init();
    *out = NULL;
    h5out *f = fa_calloc(1, sizeof *f, "h5out");
    f->wb.fd = -1;
    f->layout = layout == FA_BHND ? FA_BHND : FA_BNHD;
    MPI_Comm_dup(comm, &f->comm);
    MPI_Comm_rank(f->comm, &f->rank);
    MPI_Comm_size(f->comm, &f->nranks);
    set_names(f, group);
    struct { int st; int64_t cap; char tmp[FA_PATH_MAX]; } v = {0, 0, ""};
    snprintf(f->path, sizeof f->path, "%s", path);
    if (f->rank == 0) {
        v.st = check_shape(path, shape, o_type);
        if (v.st == 0) v.st = check_output(path, force, v.tmp, sizeof v.tmp);
        if (v.st == 0) v.st = lock_take(path);       /* before the partial file is touched */
        f->locked = v.st == 0;
        v.cap = h5io_cap(cap_bytes);
    }
    MPI_Bcast(&v, sizeof v, MPI_BYTE, 0, f->comm);
    if (fa_agree(f->comm, v.st, 0) < 0) return out_free(f), -1;
    snprintf(f->tmp, sizeof f->tmp, "%s", v.tmp);
    f->shape = *shape, f->otype = o_type, f->with_lse = with_lse, f->cap_bytes = v.cap;
    f->min_bytes = data_bytes(shape, o_type, with_lse);
    f->file = f->o = f->lse = f->ftype = -1;
    f->holder = h5io_parallel() || f->rank == 0;
    char d[FA_PATH_MAX];
    snprintf(d, sizeof d, "%s", f->tmp);
    if (h5io_parallel() && h5io_visible(f->comm, dirname(d), W_OK, "output folder") < 0)
        return out_free(f), -1;
    fa_set_cleanup_path(f->tmp);
    int st = f->holder ? create_contents(f) : 0;
    st = fa_agree(f->comm, st, f->rank);
    if (st == 0) st = fa_agree(f->comm, f->rank == 0 ? reserve_file(f) : 0, 0);
    if (st < 0) {
        if (f->holder) close_contents(f);
        if (f->rank == 0) unlink(f->tmp);
        fa_set_cleanup_path(NULL);
        return out_free(f), -1;
    }
    wb_open(f);
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

/* A failed H5Dwrite. With several ranks in one collective MPI-IO transfer a rank may meet it
 * alone, and the others may still wait inside that transfer: then fa_fail (every rank brought
 * down, the temporary removed, nothing committed). Where this rank writes alone (one rank, or
 * rank 0 of a serial build), the error is recorded and agreed at the end of the call. */
static int write_failed(h5out *f, const char *name, int64_t b, int64_t r, int64_t rows) {
    fa_seterr("output '%s': writing dataset '%s' failed (rows [%lld, %lld) of batch %lld, into "
              "'%s'; disk full or I/O error?); nothing was committed", f->path, name,
              (long long)r, (long long)(r + rows), (long long)b, f->tmp);
    if (h5io_parallel() && f->nranks > 1) fa_fail("%s", fa_errmsg());
    return -1;
}

/* Writes (or, rows 0, takes part with an empty selection in) one transfer: rows [r, r+rows) of
 * batch b, o_buf [rows, H, D] in the file type, lse_buf [H, rows]. -1 with a message when a
 * write failed (the transfer is still complete on every rank). */
static int write_block(h5out *f, hid_t dxpl, int64_t b, int64_t r, int64_t rows,
                       const void *o_buf, const float *lse_buf) {
    int st = 0;
    const int64_t H = f->shape.H, D = f->shape.D;
    for (int k = 0; k < (f->with_lse ? 2 : 1); k++) {
        hid_t ds = k ? f->lse : f->o, fsp = H5Dget_space(ds);
        HDF5_CHECK(fsp, "H5Dget_space");
        hsize_t start[4] = {b, r, 0, 0}, count[4] = {1, rows, H, D};
        if (k || f->layout == FA_BHND)   /* [B, H, Nq] and bhnd's [B, H, Nq, D]: o_buf [H][rows][D] */
            start[1] = 0, start[2] = r, count[1] = H, count[2] = rows;
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
        if (H5Dwrite(ds, k ? H5T_IEEE_F32LE : f->ftype, mem, fsp, dxpl, buf) < 0) {
            if (st == 0) st = write_failed(f, k ? f->lname : f->oname, b, r, rows);
        } else if (rows) {
            f->wb_written += (int64_t)n * (k ? 4 : (int64_t)H5Tget_size(f->ftype));
        }
        h5io_ntransfers++;
#ifdef H5_HAVE_PARALLEL
        H5D_mpio_actual_io_mode_t mode;
        if (H5Pget_mpio_actual_io_mode(dxpl, &mode) >= 0)
            h5io_last_collective = mode != H5D_MPIO_NO_COLLECTIVE;
#endif
        H5Sclose(mem);
        H5Sclose(fsp);
    }
    return st;
}

/* Serial HDF5: rank 0 writes its own block, then each other rank's, received in rank order
 * (all of them, even after a failed write, so that every send is matched). */
static int gather_block(h5out *f, hid_t dxpl, int64_t b, int64_t r, int64_t rows,
                        void *o_buf, float *lse_buf) {
    const int64_t row_el = f->shape.H * f->shape.D, obytes = row_el * fa_dtype_size(f->otype);
    int64_t mine[3] = {b, r, rows}, *all = NULL;
    if (f->rank == 0) all = fa_malloc(sizeof(int64_t) * 3 * f->nranks, "row gather");
    MPI_Gather(mine, 3, MPI_INT64_T, all, 3, MPI_INT64_T, 0, f->comm);
    if (f->rank != 0) {
        if (rows) MPI_Send(o_buf, (int)(rows * obytes), MPI_BYTE, 0, 1, f->comm);
        if (rows && f->with_lse) MPI_Send(lse_buf, (int)(rows * f->shape.H), MPI_FLOAT, 0, 2,
                                          f->comm);
        return 0;
    }
    int st = rows ? write_block(f, dxpl, b, r, rows, o_buf, lse_buf) : 0;
    for (int k = 1; k < f->nranks; k++) {
        int64_t *a = all + 3 * k;
        if (a[2] == 0) continue;
        MPI_Recv(o_buf, (int)(a[2] * obytes), MPI_BYTE, k, 1, f->comm, MPI_STATUS_IGNORE);
        if (f->with_lse) MPI_Recv(lse_buf, (int)(a[2] * f->shape.H), MPI_FLOAT, k, 2, f->comm,
                                  MPI_STATUS_IGNORE);
        if (st == 0) st = write_block(f, dxpl, a[0], a[1], a[2], o_buf, lse_buf);
    }
    free(all);
    return st;
}

static int check_rows(h5out *f, int64_t b, int64_t r0, int64_t n, const void *o,
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
    return h5out_write_rows_as(f, b, r0, n, o, FA_F32, lse);
}

int h5out_write_rows_as(h5out *f, int64_t b, int64_t r0, int64_t n, const void *o_, fa_dtype as,
                        const float *lse) {
    int bad = check_rows(f, b, r0, n, o_, lse);
    if (!bad && as != FA_F32 && as != f->otype)
        bad = fa_seterr("output '%s': rows given as %s for o of %s", f->path, fa_dtype_name(as),
                        fa_dtype_name(f->otype));
    if (fa_agree(f->comm, bad, f->rank) < 0) return -1;
    /* raw: the rows are in the file's type already (as == otype, float32 included) */
    const int raw = as == f->otype;
    const char *o = o_;
    const int64_t H = f->shape.H, row_el = H * f->shape.D;
    const int esize = fa_dtype_size(f->otype);
    int64_t cap_rows = f->cap_bytes / (row_el * esize);
    if (f->layout == FA_BHND && cap_rows > FA_BHND_STAGE_BYTES / (row_el * esize))
        cap_rows = FA_BHND_STAGE_BYTES / (row_el * esize);
    if (cap_rows < 1) cap_rows = 1;
    int64_t nb = (n + cap_rows - 1) / cap_rows;
    MPI_Allreduce(MPI_IN_PLACE, &nb, 1, MPI_INT64_T, MPI_MAX, f->comm);
    /* rank 0 of a serial build receives up to cap_rows rows from the others; float32 rows go
     * out of the caller's buffer as they are (parallel build, bnhd); bhnd rows are converted
     * and transposed in one pass, at most FA_BHND_STAGE_BYTES a transfer */
    const int bhnd = f->layout == FA_BHND;
    const int direct = raw && h5io_parallel() && !bhnd;
    const int64_t isize = fa_dtype_size(as);   /* bytes of an element of the caller's rows */
    int64_t stage_rows = !f->holder || h5io_parallel() ? (n < cap_rows ? n : cap_rows) : cap_rows;
    stage_reserve(f, direct || bhnd ? 0 : (size_t)(stage_rows * row_el * esize),
                  (size_t)((stage_rows > 0 ? stage_rows : 1) * H) * sizeof(float),  /* never NULL */
                  bhnd ? (size_t)(stage_rows * row_el * esize) : 0);
    void *ostage = direct ? NULL : bhnd ? f->tstage : f->ostage;   /* what a transfer writes */
    float *lstage = f->lstage;
    hid_t dxpl = transfer_plist();
    int st = 0;
    for (int64_t it = 0; it < nb; it++) {
        static const float none;             /* a buffer for ranks with nothing to write */
        int64_t r = it * cap_rows, rows = n - r < 0 ? 0 : n - r < cap_rows ? n - r : cap_rows;
        const char *src = o + r * row_el * isize;
        const void *obuf = !rows ? (const void *)&none : direct ? src : ostage;
        if (rows && !direct && !bhnd) {
            if (raw) memcpy(ostage, src, (size_t)(rows * row_el * esize));
            else fa_from_f32(f->otype, (const float *)src, ostage, rows * row_el);
        }
        if (rows && bhnd) {                  /* [rows][H][D] -> [H][rows][D], in the file's type */
            if (raw) fa_copy_swap(esize, src, ostage, rows, H, f->shape.D);
            else fa_from_f32_swap(f->otype, (const float *)src, ostage, rows, H, f->shape.D);
        }
        for (int64_t i = 0; f->with_lse && i < rows; i++)       /* [rows, H] -> [H, rows] */
            for (int64_t h = 0; h < H; h++) lstage[h * rows + i] = lse[(r + i) * H + h];
        int w = h5io_parallel() ? write_block(f, dxpl, b, r0 + r, rows, obuf, lstage)
                                : gather_block(f, dxpl, b, r0 + r, rows, ostage, lstage);
        if (st == 0) st = w;
    }
    H5Pclose(dxpl);
    return fa_agree(f->comm, st, f->rank);
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
    return fa_agree(f->comm, st, f->rank);
}

int h5out_attr_int(h5out *f, const char *name, int64_t v) {
    return write_root_attr(f, name, H5T_NATIVE_INT64, &v);
}

int h5out_attr_double(h5out *f, const char *name, double v) {
    return write_root_attr(f, name, H5T_NATIVE_DOUBLE, &v);
}

int h5out_attr_str(h5out *f, const char *name, const char *v) {
    int st = 0;
    if (f->holder && h5io_write_str_attr(f->file, name, v) < 0)
        st = fa_seterr("output '%s': writing attribute '%s' failed", f->path, name);
    return fa_agree(f->comm, st, f->rank);
}

/* Rank 0, every rank's handle closed: proves the temporary file complete before it may replace
 * anything. Durable on disk (fsync), no shorter than its data, and readable by a fresh serial
 * open: o (and lse) open with their shapes and their last elements read back. *fsync_s: the
 * fsync's time. */
static int verify_file(h5out *f, double *fsync_s) {
    int fd = open(f->tmp, O_RDWR | O_CLOEXEC);
    if (fd < 0) return fa_seterr("output '%s': cannot rename '%s' to it: %s", f->path, f->tmp,
                                 strerror(errno));
    struct stat sb;
    int e = fstat(fd, &sb) != 0 ? errno : 0;
    if (!e && sb.st_size < f->reserved &&        /* the unused reserve past the end, given back */
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, sb.st_size,
                  (off_t)(f->reserved - sb.st_size)) != 0) { /* only space: nothing lost */ }
    const double t0 = fa_now();
    if (!e && fsync(fd) != 0 && errno != EINVAL) e = errno;
    *fsync_s = fa_now() - t0;
    close(fd);
    if (e) return fa_seterr("output '%s': flushing '%s' to disk failed: %s; nothing was "
                            "committed", f->path, f->tmp, strerror(e));
    if ((int64_t)sb.st_size < f->min_bytes)
        return fa_seterr("output '%s': '%s' holds %lld bytes, expected at least %lld (writes "
                         "were lost: disk full?); nothing was committed", f->path, f->tmp,
                         (long long)sb.st_size, (long long)f->min_bytes);
    hid_t file = H5Fopen(f->tmp, H5F_ACC_RDONLY, H5P_DEFAULT);
    int ok = file >= 0;
    const fa_shape *s = &f->shape;
    for (int k = 0; ok && k < (f->with_lse ? 2 : 1); k++) {
        hid_t ds = H5Dopen2(file, k ? f->lname : f->oname, H5P_DEFAULT);
        hid_t sp = ds < 0 ? -1 : H5Dget_space(ds), ty = ds < 0 ? -1 : H5Dget_type(ds), mem = -1;
        hsize_t dims[4] = {0}, want[4] = {s->B, s->Nq, s->H, s->D}, one = 1;
        if (k || f->layout == FA_BHND) want[1] = s->H, want[2] = s->Nq;
        int nd = k ? 3 : 4;
        ok = sp >= 0 && ty >= 0 && H5Tget_size(ty) <= 8 && H5Sget_simple_extent_ndims(sp) == nd &&
             H5Sget_simple_extent_dims(sp, dims, NULL) == nd;
        for (int i = 0; ok && i < nd; i++) ok = dims[i] == want[i];
        if (ok) {
            hsize_t last[4], cnt[4] = {1, 1, 1, 1};
            for (int i = 0; i < nd; i++) last[i] = want[i] - 1;
            unsigned char buf[8];
            mem = H5Screate_simple(1, &one, NULL);
            ok = H5Sselect_hyperslab(sp, H5S_SELECT_SET, last, NULL, cnt, NULL) >= 0 &&
                 H5Dread(ds, ty, mem, sp, H5P_DEFAULT, buf) >= 0;     /* the file's bytes */
        }
        if (mem >= 0) H5Sclose(mem);
        if (ty >= 0) H5Tclose(ty);
        if (sp >= 0) H5Sclose(sp);
        if (ds >= 0) H5Dclose(ds);
    }
    if (file >= 0 && H5Fclose(file) < 0) ok = 0;
    if (!ok) return fa_seterr("output '%s': the written file '%s' cannot be read back (HDF5 "
                              "cannot open it or its datasets); nothing was committed", f->path,
                              f->tmp);
    return 0;
}

/* An output replaced by the commit (--force) loses its last name in the rename, and the file
 * system then frees its blocks inside the rename (0.7 s for 1 GiB on ext4 with discard). Held
 * open across the rename, it is freed only when closed: here, on a thread of its own once the
 * new output is in place, beside the program's end (or by the kernel at exit, if killed: never
 * a file left behind). */
static void *close_replaced(void *fd) {
    close((int)(intptr_t)fd);
    return NULL;
}

static void release_replaced(int fd) {
    pthread_t t;
    pthread_attr_t a;
    if (fd < 0) return;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, close_replaced, (void *)(intptr_t)fd) != 0) close(fd);
    pthread_attr_destroy(&a);
}

/* Frees f whatever happens: after commit the file is either in place or gone. */
int h5out_commit(h5out *f) { return h5out_commit_measured(f, NULL); }

int h5out_commit_measured(h5out *f, h5out_flush_stats *ms) {
    h5out_flush_stats m;
    const double t0 = fa_now();
    const double drain = wb_stop(f);              /* the flush in progress, to its end */
    h5out_get_flush_stats(f, &m);
    m.drain_s = drain;
    int st = f->holder ? close_contents(f) : 0;   /* collective close: every write has landed */
    if (st == 0 && f->wb.err)
        st = fa_seterr("output '%s': writing '%s' to disk failed: %s; nothing was committed",
                       f->path, f->tmp, strerror(f->wb.err));
    st = fa_agree(f->comm, st, f->rank);
    const double t1 = fa_now();
    /* what the fsync has left: every rank's rows not known on the disk (and the metadata), and
     * what write-behind flushed */
    int64_t wb[2] = {f->wb_written - m.bytes_flushed_behind, m.bytes_flushed_behind};
    MPI_Allreduce(MPI_IN_PLACE, wb, 2, MPI_INT64_T, MPI_SUM, f->comm);
    const int64_t left = wb[0];
    double t2 = t1, t3 = t1;
    if (st == 0 && f->rank == 0) {
        st = verify_file(f, &m.fsync_s);
        t2 = fa_now();
        int replaced = st == 0 ? open(f->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) : -1;
        if (st == 0 && rename(f->tmp, f->path) != 0)
            st = fa_seterr("output '%s': cannot rename '%s' to it: %s", f->path, f->tmp,
                           strerror(errno));
        if (st == 0) {                            /* the rename itself, durable (best effort) */
            char d[FA_PATH_MAX];
            snprintf(d, sizeof d, "%s", f->path);
            int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) fsync(dfd), close(dfd);
        }
        t3 = fa_now();
        release_replaced(replaced);
        /* without write-behind the fsync flushed every row: the rate it reached (after
         * write-behind it only flushed the last group: its time is mostly the disk's latency) */
        if (wb[1] == 0 && left > 0 && m.fsync_s > 0 && left / m.fsync_s > m.flush_best_bps)
            m.flush_best_bps = left / m.fsync_s;
    }
    st = fa_agree(f->comm, st, 0);
    if (st && f->rank == 0) unlink(f->tmp);      /* a file that failed here is never resumed */
    fa_set_cleanup_path(NULL);
    m.close_s = t1 - t0 - drain;
    m.verify_s = t2 - t1 - m.fsync_s;
    m.rename_s = t3 - t2;
    m.commit_s = fa_now() - t0;
    m.commit_left_bytes = left;
    if (ms) *ms = m;
    out_free(f);
    return st;
}

/* Alone or collective: closing an MPI-IO file is collective, so with several ranks of a parallel
 * build the handles are left to HDF5's own close at MPI_Finalize (or to MPI_Abort); every
 * rank removes the temporary file, which is what matters (unless a checkpoint made it durable:
 * then it stays for --resume). */
void h5out_abort(h5out *f) {
    if (!f) return;
    wb_stop(f);
    if (f->holder && (!h5io_parallel() || f->nranks == 1)) close_contents(f), wb_close(f);
    if (!f->durable) unlink(f->tmp);
    fa_set_cleanup_path(NULL);
    /* handles left open to MPI_Finalize may still write: the lock then stays until exit */
    if (f->locked && (!h5io_parallel() || f->nranks == 1)) h5out_unlock(f->path);
    if (!h5io_parallel() || f->nranks == 1) MPI_Comm_free(&f->comm);
    free(f->ostage);
    free(f->lstage);
    free(f->tstage);
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
    return fa_agree(f->comm, st, f->rank);
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
    if (fa_agree(f->comm, st, f->rank)) return -1;
    fa_set_cleanup_path(NULL);          /* durable progress: keep the partial file from now on */
    f->durable = 1;
    return 0;
}

int h5out_suspend(h5out *f, int64_t done) {
    wb_stop(f);
    int st = write_identity(f);
    if (st == 0) st = h5out_attr_int(f, "chunks_done", done);
    int cl = f->holder ? close_contents(f) : 0;   /* collective close: every write has landed */
    cl = fa_agree(f->comm, cl, f->rank);
    if (st == 0) st = cl;
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
    int64_t od[4], ld[3] = {s->B, s->H, s->Nq};
    o_dims(f, od);
    HDF5_CHECK(f->ftype = h5io_file_type(f->otype), "creating the output element type");
    if ((f->o = reopen_dataset(f, f->oname, f->otype, 4, od)) < 0) return -1;
    if (f->with_lse && (f->lse = reopen_dataset(f, f->lname, FA_F32, 3, ld)) < 0) return -1;
    return 0;
}

int h5out_reopen(const char *path, const char *group, MPI_Comm comm, const fa_shape *shape, fa_dtype o_type,
                 int with_lse, int64_t cap_bytes, h5out **out) {
    return h5out_reopen_layout(path, group, comm, shape, o_type, FA_BNHD, with_lse, cap_bytes, out);
}

int h5out_reopen_layout(const char *path, const char *group, MPI_Comm comm, const fa_shape *shape,
                        fa_dtype o_type, fa_layout layout, int with_lse, int64_t cap_bytes,
                        h5out **out) {
    h5io_init();
    *out = NULL;
    h5out *f = fa_calloc(1, sizeof *f, "h5out");
    f->wb.fd = -1;
    f->layout = layout == FA_BHND ? FA_BHND : FA_BNHD;
    MPI_Comm_dup(comm, &f->comm);
    MPI_Comm_rank(f->comm, &f->rank);
    MPI_Comm_size(f->comm, &f->nranks);
    set_names(f, group);
    int64_t cap = h5io_cap(cap_bytes);
    MPI_Bcast(&cap, 1, MPI_INT64_T, 0, f->comm);
    snprintf(f->path, sizeof f->path, "%s", path);
    h5out_partial_path(path, f->tmp, sizeof f->tmp);
    f->shape = *shape, f->otype = o_type, f->with_lse = with_lse, f->cap_bytes = cap;
    f->min_bytes = data_bytes(shape, o_type, with_lse);
    f->file = f->o = f->lse = f->ftype = -1;
    f->holder = h5io_parallel() || f->rank == 0;
    f->durable = 1;                                   /* the partial file is not a cleanup path */
    int st = f->rank == 0 ? lock_take(path) : 0;      /* before the partial file is opened */
    f->locked = f->rank == 0 && st == 0;
    if (fa_agree(f->comm, st, 0) < 0) return out_free(f), -1;
    st = f->holder ? reopen_contents(f) : 0;
    st = fa_agree(f->comm, st, f->rank);
    if (st == 0) st = fa_agree(f->comm, f->rank == 0 ? reserve_file(f) : 0, 0);
    if (st < 0) {
        if (f->holder) close_contents(f);
        return out_free(f), -1;
    }
    read_identity(f);
    wb_open(f);
    *out = f;
    return 0;
}
