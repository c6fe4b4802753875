"""--resume after the things that happen to long jobs (issue #14): a partial left by a job killed
before its first checkpoint (set aside, fresh start), another job's partial or finished output
(refused, naming the settings that differ: issue #27 item 5), an input changed between the stop
and the resume (refused, the partial untouched), another rank count with the default chunk
(resumes), and virtual-dataset (VDS) inputs."""
import hashlib
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import FA_LONG, mpirun_cmd, run_fa
from reference import (assert_reordered, attention_f64, order_bound, random_inputs, rel_err,
                       write_inputs)

STOP_ENV = {"OMP_NUM_THREADS": "1", "FA_PROGRESS_INTERVAL": "0.000001"}


def make_input(path, B=1, Nq=300, Nk=None, H=4, Hkv=2, D=32, seed=None):
    rng = np.random.default_rng(seed)
    q, k, v = random_inputs(rng, B, Nq, Nk or Nq, H, Hkv, D)
    write_inputs(path, q, k, v)
    return q, k, v


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fa_lines(err):
    """fa_long's lines on stderr but progress lines and the "resuming" notice."""
    return [l for l in err.splitlines() if l.startswith("fa_long:")
            and not l.startswith(("fa_long: chunk ", "fa_long: resuming "))]


def start(args, nranks, env=None, new_session=False):
    e = dict(os.environ, **STOP_ENV)
    e.update(env or {})
    cmd = mpirun_cmd(nranks) + [str(FA_LONG)] + [str(a) for a in args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=e, start_new_session=new_session)


def wait_first_chunk(proc):
    """Reads stderr until the first progress line; returns what was read."""
    err = ""
    for line in proc.stderr:
        err += line
        if line.startswith("fa_long: chunk"):
            return err
    return err


def stop_with_usr1(args, nranks, env=None):
    """Starts the job, sends SIGUSR1 to mpirun after the first chunk; it must stop (exit 75)
    with chunks kept in the partial. Returns the partial's chunks_done."""
    proc = start(args, nranks, env)
    err = wait_first_chunk(proc)
    proc.send_signal(signal.SIGUSR1)
    err += proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 75, f"the job must be stopped by SIGUSR1, not finish:\n{err}"
    assert "stopped on a signal" in err, err
    out = args[args.index("-o") + 1]
    partial = out.parent / f".{out.name}.partial"
    with h5py.File(partial, "r") as f:
        done = int(f.attrs["chunks_done"])
    assert done > 0
    return partial, done


# ---- item 4: a partial with nothing to resume is set aside; another job's is refused ----------
@pytest.mark.parametrize("content,why", [(b"", "empty"), (b"not an HDF5 file at all\n" * 50,
                                                           "no HDF5 signature")],
                         ids=["empty", "not-hdf5"])
def test_unusable_partial_is_set_aside(tmp_path, content, why):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = make_input(inp)
    partial = tmp_path / ".out.h5.partial"
    partial.write_bytes(content)
    earlier = tmp_path / ".out.h5.partial.damaged"          # an earlier one is not overwritten
    earlier.write_bytes(b"earlier")
    p = run_fa(["-i", inp, "-o", out, "--causal", "--resume", "--chunk", "64"], nranks=2)
    assert p.returncode == 0, p.stderr
    warn = [l for l in p.stderr.splitlines() if "warning" in l]
    aside = tmp_path / ".out.h5.partial.damaged.2"
    assert len(warn) == 1 and why in warn[0] and str(aside) in warn[0], p.stderr
    assert "starting afresh" in warn[0] and "resuming" not in p.stderr
    assert aside.read_bytes() == content and earlier.read_bytes() == b"earlier"
    assert not partial.exists()
    with h5py.File(out, "r") as f:
        assert rel_err(f["o"][...], attention_f64(q, k, v, True)[0]) <= 1e-5


def fp64_rows(q, k, v, rows, D):
    """fp64 causal attention of the given query rows (Nq = Nk, causal row i sees keys [0, i])."""
    G = q.shape[2] // k.shape[2]
    s = np.einsum("bnhd,bmhd->bhnm", q[:, rows].astype(np.float64),
                  np.repeat(k, G, axis=2).astype(np.float64)) / np.sqrt(D)
    s = np.where(np.arange(k.shape[1])[None, None, None, :] <= rows[None, None, :, None], s, -np.inf)
    pr = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhnm,bmhd->bnhd", pr / pr.sum(-1, keepdims=True),
                     np.repeat(v, G, axis=2).astype(np.float64))


def test_resume_after_kill_before_first_checkpoint(tmp_path):
    """kill -9 of a 1-rank job (mpirun and fa_long) before its first checkpoint (here: inside its
    first, only, chunk, once the partial file exists): --resume starts afresh instead of
    refusing forever, and keeps the dead job's partial aside."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    N = 24000
    q, k, v = make_input(inp, Nq=N, H=2, Hkv=1, D=32)
    args = ["-i", inp, "-o", out, "--causal", "--chunk", str(N), "--resume"]
    partial = tmp_path / ".out.h5.partial"
    proc = start(args, 1, {"FA_CHECKPOINT_SECONDS": "100000", "OMP_NUM_THREADS": "1"},
                 new_session=True)
    t0 = time.time()
    while not partial.exists() and proc.poll() is None and time.time() - t0 < 60:
        time.sleep(0.01)
    time.sleep(0.2)                     # created and reserved; the one chunk computes (seconds)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)       # mpirun (and its group)
    subprocess.run(["pkill", "-9", "-f", str(out)])   # the rank: Open MPI gives it its own group
    proc.wait(timeout=60)
    t0 = time.time()
    while subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode == 0:
        assert time.time() - t0 < 30, "the killed rank is still running"
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGKILL and partial.exists() and not out.exists()
    left = partial.read_bytes()
    p = run_fa(args, nranks=1)
    assert p.returncode == 0, p.stderr
    warn = [l for l in p.stderr.splitlines() if "warning" in l]
    aside = tmp_path / ".out.h5.partial.damaged"
    assert len(warn) == 1 and str(aside) in warn[0] and "starting afresh" in warn[0], p.stderr
    assert "resuming" not in p.stderr, p.stderr
    assert aside.read_bytes() == left and not partial.exists()
    with h5py.File(out, "r") as f:
        o = f["o"][...]
    rows = np.r_[0:50, 11950:12000, N - 50:N]
    assert rel_err(o[:, rows], fp64_rows(q, k, v, rows, 32)) <= 1e-5


def test_resume_after_kill_after_first_chunk(tmp_path):
    """kill -9 after the first chunk was written: that first write was a checkpoint, so --resume
    continues from it (no restart) and the result matches fp64."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = make_input(inp, Nq=6000, H=2, Hkv=1, D=32)
    args = ["-i", inp, "-o", out, "--causal", "--chunk", "50", "--resume"]
    proc = start(args, 1, {"FA_CHECKPOINT_SECONDS": "100000"}, new_session=True)
    err = wait_first_chunk(proc)
    assert "fa_long: chunk" in err, err
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    partial = tmp_path / ".out.h5.partial"
    assert proc.returncode == -signal.SIGKILL and partial.exists() and not out.exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["chunks_done"] >= 1
    p = run_fa(args, nranks=1)
    assert p.returncode == 0 and "resuming" in p.stderr and "warning" not in p.stderr, p.stderr
    assert not partial.exists() and not (tmp_path / ".out.h5.partial.damaged").exists()
    with h5py.File(out, "r") as f:
        o = f["o"][...]
    rows = np.r_[0:50, 2950:3000, 5950:6000]
    assert rel_err(o[:, rows], fp64_rows(q, k, v, rows, 32)) <= 1e-5


def test_other_jobs_partial_is_refused(tmp_path):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    make_input(inp)
    other = tmp_path / "other.h5"
    assert run_fa(["-i", inp, "-o", other, "--chunk", "40", "-q"]).returncode == 0
    partial = tmp_path / ".out.h5.partial"
    os.rename(other, partial)
    before = sha(partial)
    p = run_fa(["-i", inp, "-o", out, "--causal", "--chunk", "64", "--resume"], nranks=2)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and "another job" in lines[0] and str(partial) in lines[0], p.stderr
    assert "another job: causal=0 (this run: 1); chunk=40 (this run: 64); remove" in lines[0], \
        lines[0]
    assert sha(partial) == before and not out.exists()
    assert not [x for x in os.listdir(tmp_path) if "damaged" in x]


@pytest.mark.parametrize("nranks", [1, 3])
def test_resume_onto_other_jobs_output(tmp_path, nranks):
    """--resume onto a finished output of another job (what a Slurm script does when its options
    change) is refused in one line that names each setting that differs, the output untouched;
    the same job finds it complete; --force replaces it."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = make_input(inp, Nq=120, D=32)
    assert run_fa(["-i", inp, "-o", out, "--chunk", "40", "-q"], nranks=nranks).returncode == 0
    before = sha(out)
    other = ["--causal", "--chunk", "64", "--scale", "0.5", "--lse", "--out-dtype", "float16"]
    p = run_fa(["-i", inp, "-o", out, "--resume"] + other, nranks=nranks)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    assert f"--resume: output '{out}' exists, made by another job: causal=0 (this run: 1); " \
        in lines[0], lines[0]
    for d in ("; chunk=40 (this run: 64)", "(this run: 0.5)", "; o=float32 (this run: float16)",
              "; lse=0 (this run: 1); expected"):
        assert d in lines[0], (d, lines[0])
    assert "input=" not in lines[0] and "B=" not in lines[0], lines[0]   # the same: not named
    assert "--force" in lines[0], lines[0]
    assert sha(out) == before and sorted(os.listdir(tmp_path)) == ["in.h5", "out.h5"]
    # a moved input is another job too
    moved = tmp_path / "moved.h5"
    os.rename(inp, moved)
    p = run_fa(["-i", moved, "-o", out, "--resume", "--chunk", "40"], nranks=nranks)
    assert p.returncode == 2 and f"input={inp} (this run: {moved})" in p.stderr, p.stderr
    os.rename(moved, inp)
    p = run_fa(["-i", inp, "-o", out, "--resume", "--chunk", "40"], nranks=nranks)
    assert p.returncode == 0 and "complete; nothing to resume" in p.stderr, p.stderr
    assert sha(out) == before
    p = run_fa(["-i", inp, "-o", out, "--resume", "--force", "-q"] + other, nranks=nranks)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["causal"] == 1 and f["o"].dtype == np.float16 and "lse" in f


# ---- item 5: a changed input is refused, the partial untouched -----------------------------------
def change_k(inp, keep_mtime):
    st = os.stat(inp)
    with h5py.File(inp, "r+") as f:
        x = f["k"][0, 7, 0, 3]
        f["k"][0, 7, 0, 3] = x + 1.0
    if keep_mtime:
        os.utime(inp, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(inp).st_size == st.st_size
    return st, float(x)


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_changed_input_is_refused(tmp_path, keep_mtime):
    """Stopped with SIGUSR1, one element of k changed in place (same shape and size): --resume
    refuses with one line (exit 2) naming the input and what changed, and leaves the partial as
    it was. With the mtime put back, the check of the keys' data catches it. Putting the value
    back too, the resume (with another rank count) goes on and gives the uninterrupted result."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = make_input(inp, Nq=6000, H=2, Hkv=1, D=32)
    args = ["-i", inp, "-o", out, "--chunk", "50", "--lse"]
    partial, done = stop_with_usr1(args + ["--resume"], 2)
    before = sha(partial)
    st, x = change_k(inp, keep_mtime)
    p = run_fa(args + ["--resume"], nranks=2)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    assert str(inp) in lines[0] and "changed" in lines[0] and str(partial) in lines[0]
    if keep_mtime:   # found when the keys are read, before anything is computed or written
        assert "dataset 'k' of batch element 0" in lines[0], lines[0]
    else:            # found at once
        assert "modification time" in lines[0] and "same size" in lines[0], lines[0]
        assert "resuming" not in p.stderr
    assert sha(partial) == before and not out.exists()
    # the original data and mtime back: the same digests whatever the rank count
    with h5py.File(inp, "r+") as f:
        f["k"][0, 7, 0, 3] = x
    os.utime(inp, ns=(st.st_atime_ns, st.st_mtime_ns))
    p = run_fa(args + ["--resume"], nranks=3)
    assert p.returncode == 0 and f"resuming {out} from chunk {done}" in p.stderr, p.stderr
    ref = tmp_path / "ref.h5"
    assert run_fa(args + ["-o", ref, "-q"], nranks=3).returncode == 0
    # the partial's rows were made by 2 ranks, the rest by 3: the same sums in another order
    ob, lb = order_bound(q, k, v)
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert_reordered(a["o"][...], b["o"][...], ob, "o")
        assert_reordered(a["lse"][...], b["lse"][...], lb, "lse")


# ---- item 6: another rank count with the default chunk -------------------------------------------
def test_resume_with_another_rank_count_default_chunk(tmp_path):
    """Stopped at 1 rank with no --chunk, resumed at 3 ranks with no --chunk: the default chunk
    differs between the two rank counts, yet the resume takes the partial's and goes on."""
    inp = tmp_path / "in.h5"
    # 3 ranks want at least 6 chunks of a batch element (tune/model.c), 1 rank does not
    B, Nq, Nk, D = 2, 20480, 1024, 32
    q, k, v = make_input(inp, B=B, Nq=Nq, Nk=Nk, H=2, Hkv=1, D=D)
    plain1, plain3 = tmp_path / "p1.h5", tmp_path / "p3.h5"
    # one thread, as the stopped run below (STOP_ENV): the CPU tile the planner picks may depend
    # on the thread count (tune/model.c), and with it the order of the sums
    assert run_fa(["-i", inp, "-o", plain1, "-q"], nranks=1, env=STOP_ENV).returncode == 0
    assert run_fa(["-i", inp, "-o", plain3, "-q"], nranks=3).returncode == 0
    with h5py.File(plain1, "r") as a, h5py.File(plain3, "r") as b:
        c1, c3 = int(a.attrs["chunk"]), int(b.attrs["chunk"])
        o1 = a["o"][...]
    assert c1 != c3, "the test needs default chunks that differ between 1 and 3 ranks"
    out = tmp_path / "out.h5"
    partial, done = stop_with_usr1(["-i", inp, "-o", out, "--resume"], 1)
    per_b = -(-Nq // c1)
    assert done < B * per_b
    p = run_fa(["-i", inp, "-o", out, "--resume"], nranks=3)
    assert p.returncode == 0 and f"resuming {out} from chunk {done}" in p.stderr, p.stderr
    assert not partial.exists()
    with h5py.File(out, "r") as f:
        o = f["o"][...]
        assert int(f.attrs["chunk"]) == c1 and int(f.attrs["ranks"]) == 3
    # the partial's rows are the uninterrupted 1-rank run's, bit for bit; the resumed rows were
    # merged from 3 ranks: the same sums in another order
    for t in range(done):
        b, r = divmod(t, per_b)
        rr = slice(r * c1, min((r + 1) * c1, Nq))
        assert np.array_equal(o[b, rr], o1[b, rr]), f"chunk {t} of the partial changed"
    ob, _ = order_bound(q, k, v)
    assert_reordered(o, o1, ob, "o")
    # done: --resume at 3 ranks finds it complete (its job key has the 1-rank chunk)
    p = run_fa(["-i", inp, "-o", out, "--resume"], nranks=3)
    assert p.returncode == 0 and "nothing to resume" in p.stderr, p.stderr
    at = (done % per_b) * c1                 # the first row the resumed run computed
    rows = np.unique(np.r_[0:64, max(at - 32, 0):min(at + 32, Nq), Nq - 64:Nq])
    ref = attention_f64(q[:, rows], k, v)[0]
    assert rel_err(o[:, rows], ref) <= 1e-5


# ---- issue 22 item 6: the fused read hashes the keys as the separate pass did -------------------
@pytest.mark.parametrize("stop,resume", [({"FA_FUSED_READ": "0"}, {"FA_FUSED_READ": "1"}),
                                         ({"FA_FUSED_READ": "1"}, {"FA_FUSED_READ": "0"}),
                                         ({"FA_CRC32": "zlib"}, {}), ({}, {"FA_CRC32": "zlib"})],
                         ids=["unfused-to-fused", "fused-to-unfused", "zlib-to-default", "default-to-zlib"])
def test_resume_across_fused_and_unfused_reads(tmp_path, stop, resume):
    """Stopped with the keys' digests summed by one read path (FA_FUSED_READ) or one crc32
    (FA_CRC32=zlib against the default, libdeflate's where the machine has it), resumed with the
    other: the same digests (each batch element's k and v span several fused runs), so the resume
    goes on, and the output is the uninterrupted run's bit for bit."""
    inp, out, plain = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "plain.h5"
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 400, 9000, 2, 2, 32)   # k rows of 128 bytes: 3 runs of 512 KiB
    write_inputs(inp, q, k, v, dtype="bfloat16")
    args = ["-i", inp, "-o", out, "--chunk", "50", "--resume"]
    assert run_fa(["-i", inp, "-o", plain, "--chunk", "50", "-q"], env=STOP_ENV).returncode == 0
    partial, done = stop_with_usr1(args, 1, stop)
    assert done < 16
    p = run_fa(args, env={**STOP_ENV, **resume})
    assert p.returncode == 0 and f"resuming {out} from chunk {done}" in p.stderr, p.stderr
    assert not partial.exists()
    with h5py.File(out, "r") as a, h5py.File(plain, "r") as b:
        assert np.array_equal(a["o"][...], b["o"][...])


# ---- item 9: virtual datasets --------------------------------------------------------------------
def write_vds(path, tensors, src_dir):
    """q, k, v as virtual datasets, each over two source files holding a third and two thirds of
    the rows; k's sources are named relative to the VDS file's folder, the others absolute."""
    with h5py.File(path, "w") as f:
        for name, x in tensors.items():
            n = x.shape[1]
            lay = h5py.VirtualLayout(shape=x.shape, dtype=x.dtype)
            for part, (a, b) in enumerate(((0, n // 3), (n // 3, n))):
                src = src_dir / f"{name}{part}.h5"
                with h5py.File(src, "w") as s:
                    s.create_dataset(name, data=x[:, a:b])
                lay[:, a:b] = h5py.VirtualSource(src.name if name == "k" else str(src), name, shape=(x.shape[0], b - a) + x.shape[2:])
            f.create_virtual_dataset(name, lay)


@pytest.mark.parametrize("nranks", [1, 3])
def test_virtual_dataset_input(tmp_path, nranks):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 700, 900, 4, 2, 32)
    plain, vds = tmp_path / "plain.h5", tmp_path / "vds.h5"
    write_inputs(plain, q, k, v)
    write_vds(vds, {"q": q, "k": k, "v": v}, tmp_path)
    with h5py.File(vds, "r") as f:
        assert f["k"].is_virtual and np.array_equal(f["k"][...], k)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    args = ["--causal", "--lse", "--chunk", "128"]
    p = run_fa(["-i", plain, "-o", a] + args, nranks=nranks)
    assert p.returncode == 0, p.stderr
    p = run_fa(["-i", vds, "-o", b] + args, nranks=nranks)
    assert p.returncode == 0, p.stderr
    ref_o, ref_lse = attention_f64(q, k, v, True)
    with h5py.File(a, "r") as fa_, h5py.File(b, "r") as fb:
        assert rel_err(fb["o"][...], fa_["o"][...]) <= 1e-6
        assert rel_err(fb["lse"][...], fa_["lse"][...]) <= 1e-6
        assert rel_err(fb["o"][...], ref_o) <= 1e-5
        assert rel_err(fb["lse"][...], ref_lse) <= 1e-5


def test_read_failure_names_file_dataset_rows(tmp_path):
    """A read HDF5 cannot serve (here: k compressed with h5py's own lzf filter, which libhdf5
    does not have) names the file, the dataset and the rows instead of a bare HDF5 failure."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 200, 300, 4, 2, 32)
    inp = tmp_path / "lzf.h5"
    with h5py.File(inp, "w") as f:
        f["q"], f["v"] = q, v
        f.create_dataset("k", data=k, chunks=(1, 50, 2, 32), compression="lzf")
    out = tmp_path / "out.h5"
    p = run_fa(["-i", inp, "-o", out], nranks=1)
    assert p.returncode != 0 and not out.exists(), p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert len(lines) == 1, p.stderr
    assert f"input '{inp}'" in lines[0] and "dataset 'k'" in lines[0], lines[0]
    assert "rows [0, 300) of batch 0" in lines[0], lines[0]
    assert not [x for x in os.listdir(tmp_path) if x.startswith(".out.h5")]


def test_virtual_dataset_missing_source_is_refused(tmp_path):
    """A VDS whose source file is gone reads as fill values in HDF5 (silently): refused with one
    line naming the file, the dataset and the missing source (exit 2), no output."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 100, 120, 2, 1, 16)
    vds = tmp_path / "vds.h5"
    write_vds(vds, {"q": q, "k": k, "v": v}, tmp_path)
    (tmp_path / "v1.h5").unlink()
    out = tmp_path / "out.h5"
    p = run_fa(["-i", vds, "-o", out], nranks=2)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert len(lines) == 1, p.stderr
    assert f"input '{vds}'" in lines[0] and "virtual dataset 'v'" in lines[0], lines[0]
    assert str(tmp_path / "v1.h5") in lines[0], lines[0]
    assert not out.exists() and not [x for x in os.listdir(tmp_path) if x.startswith(".out")]
