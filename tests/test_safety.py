"""Nothing lost, nothing silent (issue #14): a full disk, a failed rename, two jobs on one output,
an output that is the input, and a `gen` that cannot fit. Each fails with one line naming the
output, a non-zero exit, nothing committed and an older output untouched.

The disk-full cases mount a 2 MB tmpfs (root only, as in CI); it is unmounted in the fixture's
teardown whatever happens."""
import hashlib
import os
import platform
import re
import resource
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import FA_LONG, mpirun_cmd, run_fa

NEEDS = re.compile(r"needs (\d+) bytes, (\d+) available")


def fa_lines(p):
    return [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]


def one_line(p, *words):
    """The one fa_long line of a failed run, holding every word."""
    lines = fa_lines(p)
    assert len(lines) == 1, f"expected one fa_long line, got:\n{p.stderr}"
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


def hidden(folder, name):
    """What a run on output NAME may leave beside it: its partial and lock files, temporaries."""
    return sorted(f for f in os.listdir(folder)
                  if f.startswith("." + name) and (f.endswith((".partial", ".lock")) or ".tmp." in f))


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def env1(extra=None):
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e.update(extra or {})
    return e


def run_limited(args, nranks=1, cwd=None, fsize=None, timeout=120):
    """fa_long ARGS under mpirun, in cwd, optionally with a file-size limit (RLIMIT_FSIZE) so that
    a regression can never fill the disk."""
    def limit():
        if fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    cmd = mpirun_cmd(nranks) + [str(FA_LONG)] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env1(), preexec_fn=limit)


def start(args, nranks=1):
    """A job in the background (mpirun, or with nranks=0 a singleton ./fa_long without mpirun)."""
    cmd = ([] if nranks == 0 else mpirun_cmd(nranks)) + [str(FA_LONG)] + [str(a) for a in args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env1())


def wait_for(path, proc, timeout=60):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, f"the job ended before {path} appeared:\n{proc.communicate()}"
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """16K x 4 heads x 64, float32 (o: 16 MiB): a few seconds of compute on one core."""
    p = tmp_path_factory.mktemp("safety") / "in16k.h5"
    r = run_fa(["gen", "--output", p, "-n", "16K", "--heads", 4, "-d", 64])
    assert r.returncode == 0, r.stderr
    return p


@pytest.fixture
def small_input(tmp_path):
    p = tmp_path / "small.h5"
    r = run_fa(["gen", "--output", p, "-n", 96, "--heads", 2, "-d", 16])
    assert r.returncode == 0, r.stderr
    return p


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


# ---- 1. a full disk --------------------------------------------------------------------------
@pytest.mark.parametrize("nranks", [1, 3])
def test_disk_full_refused_before_compute_old_output_intact(big_input, tmpfs, nranks):
    """A 16 MiB output into a 2 MB folder: one line with the bytes needed and available, exit 2,
    no Open MPI write errors, nothing left in the folder but the older output, byte-identical
    (with --force, which used to replace it by a corrupt file and exit 0)."""
    out = tmpfs / "out.h5"
    with h5py.File(out, "w") as f:                       # an older, good output
        f["o"] = np.arange(1000, dtype=np.float32)
    before = sha(out)
    t0 = time.time()
    p = run_fa(["--input", big_input, "--output", out, "--force", "-q"], nranks=nranks)
    elapsed = time.time() - t0
    assert p.returncode == 2, (p.returncode, p.stderr)
    line = one_line(p, str(out), "not enough space", str(tmpfs))
    need, avail = map(int, NEEDS.search(line).groups())
    assert need >= 16384 * 4 * 64 * 4 and avail < need <= 2 * 16384 * 4 * 64 * 4, line
    assert "No space left" not in p.stderr and "pwritev" not in p.stderr, p.stderr
    assert sha(out) == before, "the older output must be untouched"
    assert sorted(os.listdir(tmpfs)) == ["out.h5"], os.listdir(tmpfs)
    with h5py.File(out, "r") as f:
        assert f["o"][-1] == 999
    assert elapsed < 60, f"refused only after {elapsed:.1f} s"


def test_output_that_fits_the_tmpfs(small_input, tmpfs):
    """The reservation does not stop a job that fits: it commits, passes check, and leaves no
    partial or lock file (and the reserve past the end is given back)."""
    out = tmpfs / "fits.h5"
    p = run_fa(["--input", small_input, "--output", out, "--lse", "-q"], nranks=3)
    assert p.returncode == 0, p.stderr
    assert hidden(tmpfs, "fits.h5") == []
    assert os.stat(out).st_blocks * 512 < os.stat(out).st_size + (64 << 10)
    c = run_fa(["check", "--input", small_input, "--output", out, "--rows", "all"])
    assert c.returncode == 0, c.stdout + c.stderr


# ---- 2. a failed final rename, unusable output paths -----------------------------------------
@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("name,word", [("", "empty path"), ("sub/", "ends in '/'"),
                                       ("sub", "is a folder"), ("sub/..", "is a folder")])
def test_unusable_output_path_refused_up_front(big_input, tmp_path, nranks, name, word):
    (tmp_path / "sub").mkdir(exist_ok=True)
    t0 = time.time()
    p = run_limited(["--input", big_input, "--output", name, "-q"], nranks=nranks, cwd=tmp_path)
    assert p.returncode == 2, (p.returncode, p.stderr)
    one_line(p, f"output '{name}'", word)
    assert time.time() - t0 < 30, "refused only after the compute"
    left = [f for f in os.listdir(tmp_path) if f.endswith((".partial", ".lock")) or ".tmp." in f]
    left += os.listdir(tmp_path / "sub")
    assert left == [], left


def test_temporary_deleted_mid_run_clean_failure(big_input, tmp_path):
    """The partial file removed while 3 ranks compute: one 'cannot rename' line, exit 1 or 2 (it
    used to be a double free, 134), no output, nothing left behind."""
    out = tmp_path / "out.h5"
    job = start(["--input", big_input, "--output", out, "--chunk", 256, "-q"], nranks=3)
    partial = tmp_path / ".out.h5.partial"
    try:
        wait_for(partial, job)
        # mid-run: once every rank has opened it (MPI-IO's collective open itself does not
        # survive a file vanishing under it), seen as its space reserved, or after 3 s at most
        t0 = time.time()
        while os.stat(partial).st_blocks * 512 < 16384 * 4 * 64 * 4 and time.time() - t0 < 3:
            time.sleep(0.01)
        time.sleep(0.2)
        assert job.poll() is None, "the job ended before its partial file could be removed"
        os.unlink(partial)
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    p = subprocess.CompletedProcess(job.args, job.returncode, "", err)
    assert job.returncode in (1, 2), (job.returncode, err)
    one_line(p, str(out), "cannot rename", str(partial))
    assert "free" not in err and "MPI_ERR" not in err and "Signal" not in err, err
    assert not out.exists()
    assert hidden(tmp_path, "out.h5") == []
    assert not [f for f in os.listdir(tmp_path) if f.startswith("core")]


# ---- 3. two jobs on one output -----------------------------------------------------------------
def test_second_job_on_same_output_refused(big_input, tmp_path):
    """While one job writes out.h5, a second (fresh, and with --resume) exits 2 at once with
    'another job', leaving the first's partial file alone; the first finishes and passes check."""
    out = tmp_path / "out.h5"
    first = start(["--input", big_input, "--output", out, "--chunk", 256, "--tile", "16x16",
                   "-q"], nranks=1)                  # small tiles: slow enough to overlap
    partial = tmp_path / ".out.h5.partial"
    try:
        wait_for(partial, first)
        ino = os.stat(partial).st_ino
        assert (tmp_path / ".out.h5.lock").exists()
        for extra in ([], ["--resume"], ["--force"]):
            p = run_fa(["--input", big_input, "--output", out, "-q"] + extra, nranks=2)
            assert p.returncode == 2, (extra, p.returncode, p.stderr)
            one_line(p, str(out), "another job")
            assert first.poll() is None, "the second job must not wait for the first"
            assert os.stat(partial).st_ino == ino, "the first job's partial file was replaced"
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert hidden(tmp_path, "out.h5") == []
    c = run_fa(["check", "--input", big_input, "--output", out, "--rows", 16])
    assert c.returncode == 0, c.stdout + c.stderr


def test_lock_of_killed_job_is_free(small_input, big_input, tmp_path):
    """A job killed with SIGKILL leaves its lock file but no lock: the next job on the same
    output runs, commits and removes it."""
    out = tmp_path / "out.h5"
    job = start(["--input", big_input, "--output", out, "--chunk", 256, "-q"], nranks=0)
    lock = tmp_path / ".out.h5.lock"
    wait_for(tmp_path / ".out.h5.partial", job)
    assert lock.exists()
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    assert lock.exists(), "a killed job cannot remove its lock file"
    p = run_fa(["--input", small_input, "--output", out, "-q"], nranks=2)
    assert p.returncode == 0, p.stderr
    assert hidden(tmp_path, "out.h5") == []
    c = run_fa(["check", "--input", small_input, "--output", out, "--rows", "all"])
    assert c.returncode == 0, c.stdout + c.stderr


# ---- 7. the output is the input ------------------------------------------------------------------
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
def test_output_is_input_refused(small_input, tmp_path, kind, force):
    before = sha(small_input)
    out = {"same": small_input, "symlink": tmp_path / "link.h5",
           "hardlink": tmp_path / "hard.h5"}[kind]
    if kind == "symlink":
        os.symlink(small_input, out)
    elif kind == "hardlink":
        os.link(small_input, out)
    p = run_fa(["--input", small_input, "--output", out, "-q"] + (["--force"] if force else []),
               nranks=2)
    assert p.returncode == 2, (p.returncode, p.stderr)
    one_line(p, str(out), "is the input", str(small_input))
    assert sha(small_input) == before, "the input must be untouched"
    assert os.path.samefile(out, small_input)
    assert hidden(tmp_path, out.name) == []


# ---- 10. gen that cannot fit ----------------------------------------------------------------------
def test_gen_1T_refused_at_once(tmp_path):
    out = tmp_path / "huge.h5"
    t0 = time.time()
    p = run_limited(["gen", "--output", out, "-n", "1T"], fsize=64 << 20, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    line = one_line(p, str(out), "not enough space")
    need, avail = map(int, NEEDS.search(line).groups())
    assert need >= 3 * (1 << 40) * 4 * 64 * 4 > avail, line
    assert time.time() - t0 < 30
    assert os.listdir(tmp_path) == []


def test_gen_into_small_folder_refused(tmpfs):
    out = tmpfs / "g.h5"
    p = run_limited(["gen", "--output", out, "-n", "4K", "--heads", 4, "-d", 64],
                    fsize=64 << 20)
    assert p.returncode == 2, (p.returncode, p.stderr)
    line = one_line(p, str(out), "not enough space", str(tmpfs))
    need, avail = map(int, NEEDS.search(line).groups())
    assert need >= 3 * 4096 * 4 * 64 * 4 and avail <= 2 << 20 and need > avail, line
    assert os.listdir(tmpfs) == []
    ok = run_limited(["gen", "--output", out, "-n", 256, "--heads", 2, "-d", 16])
    assert ok.returncode == 0 and os.listdir(tmpfs) == ["g.h5"], ok.stderr


# ---- 11. killed during the commit (issue 22) -------------------------------------------------------
SYS_FSYNC = 74 if platform.machine() == "x86_64" else None      # /proc/PID/syscall's number


def in_syscall(pid):
    """The system call the process's main thread is blocked in (its number), or None."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            word = f.read().split()[0]
    except (OSError, IndexError):
        return None
    return int(word) if word.lstrip("-").isdigit() else None


def kill_in_tail(args, how):
    """Starts fa_long alone (SIGKILL reaches it, not a launcher) with progress lines, waits for
    its last chunk's line, then kills it: `how` is seconds after that line, or "fsync" (the
    moment its main thread is blocked in fsync: the commit's, the only one after the last chunk
    in series) or "after-fsync" (the moment it has left that fsync: the check and the rename).
    Returns where the kill landed: "tail" (alive, the partial file there), "fsync", "after-fsync"
    or "ended" (the job was done before)."""
    e = env1({"FA_PROGRESS_INTERVAL": "0.000001", "FA_IO_THREAD": "0"})
    job = subprocess.Popen([str(FA_LONG)] + [str(a) for a in args], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env=e)
    where = "ended"
    try:
        for line in job.stderr:
            if "(100.0%)" in line:
                break
        t0 = time.time()
        if how in ("fsync", "after-fsync"):
            seen = False
            while job.poll() is None and time.time() - t0 < 60:
                now = in_syscall(job.pid) == SYS_FSYNC
                if now and how == "fsync" or seen and not now and how == "after-fsync":
                    break
                seen = seen or now
            if job.poll() is None and seen | (how == "fsync"):
                job.send_signal(signal.SIGKILL)
                where = how
        else:
            time.sleep(how)
            if job.poll() is None:
                partial = args[args.index("--output") + 1]
                there = os.path.exists(os.path.join(os.path.dirname(partial),
                                                    "." + os.path.basename(partial) + ".partial"))
                job.send_signal(signal.SIGKILL)
                where = "tail" if there else "ended"
        job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    return where


def test_sigkill_in_the_commit_leaves_old_or_new(tmp_path):
    """SIGKILL at several points of a run's tail (after its last chunk: the last write and its
    write-behind, the attributes, the commit's fsync, after it: the check and the rename), with
    --force over an older output: the output is always either the older file, intact (h5py
    reads its values), or the new one, complete and equal to an uninterrupted run's; without an
    older output, none or the new one. Never a damaged file."""
    inp = tmp_path / "in.h5"
    r = run_fa(["gen", "--output", inp, "--nq", 32768, "--nk", 64, "--heads", 8,
                "--kv-heads", 1, "-d", 64])                 # o: 64 MiB in two chunks of 32 MiB
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref.h5"
    args = ["--input", inp, "--lse", "--chunk", 16384, "--force"]       # progress lines: no -q
    p = run_limited(args + ["--output", ref, "-q"], fsize=1 << 30)
    assert p.returncode == 0, p.stderr
    with h5py.File(ref, "r") as f:
        o_ref, lse_ref = f["o"][...], f["lse"][...]
    out = tmp_path / "out.h5"

    def older():
        with h5py.File(out, "w") as f:
            f["o"] = np.full((1, 8, 2, 4), 7.0, np.float32)
            f.attrs["made_by"] = "the older job"
        return sha(out)

    landed = []
    points = [0.0, 0.03, 0.1, 0.3] + (["fsync", "after-fsync", "fsync"] if SYS_FSYNC else [])
    for i, how in enumerate(points):
        old = older() if i < len(points) - 1 else None
        if old is None:
            out.unlink()                                    # the last one: no older output
        landed.append(kill_in_tail(args + ["--output", out], how))
        if not out.exists():
            assert old is None, f"killed at {how} ({landed[-1]}): the older output is gone"
            continue
        with h5py.File(out, "r") as f:
            if "made_by" in f.attrs:                        # the older one, intact
                assert old is not None and sha(out) == old
                assert f.attrs["made_by"] == "the older job" and np.all(f["o"][...] == 7.0)
            else:                                           # the new one, complete
                assert np.array_equal(f["o"][...], o_ref) and np.array_equal(f["lse"][...], lse_ref)
                assert f.attrs["chunks_done"] == 2
        for left in hidden(tmp_path, "out.h5"):             # a killed job's partial and lock
            os.unlink(tmp_path / left)
    print("kills landed:", landed)
    assert "tail" in landed, landed                        # killed after the last chunk, before the rename
    if SYS_FSYNC:
        assert "fsync" in landed, landed                   # and inside the commit's fsync
