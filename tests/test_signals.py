"""SIGTERM and SIGINT stop fa_long as SIGUSR1 does (next chunk, progress kept in .OUT.partial,
exit 75), without Slurm: to one rank under mpirun, to a singleton ./fa_long (Ctrl-C), to
jobs/run_fa_long.sh (Ctrl-C to its process group, TERM to the script), and to a plain mpirun
(which aborts the job and exits non-zero: the chunks are still kept when the ranks are given the
time, README "Preemption"). Every stop is followed by a --resume run that must give the same bytes
as an uninterrupted run."""
import os
import re
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import FA_LONG, ROOT, mpirun_cmd, run_fa

ARGS = ["--causal", "--lse", "--chunk", "50"]
N = 24000                          # 480 chunks: seconds of work, signalled within the first ones
ENV = dict(os.environ, OMP_NUM_THREADS="1", FA_PROGRESS_INTERVAL="0.05",
           FA_CHECKPOINT_SECONDS="1000")        # nothing made durable but by the stop itself


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The input and the uninterrupted outputs with 1 and 2 ranks."""
    d = tmp_path_factory.mktemp("signals")
    inp = d / "in.h5"
    p = run_fa(["gen", "--output", inp, "-n", str(N), "--heads", "4", "--kv-heads", "2",
                "-d", "64", "--seed", "7"])
    assert p.returncode == 0, p.stderr
    refs = {}
    for n in (1, 2):
        refs[n] = d / f"ref{n}.h5"
        p = run_fa(["-i", inp, "-o", refs[n], "-q"] + ARGS, nranks=n)
        assert p.returncode == 0, p.stderr
    return inp, refs


def start(cmd, log, env=ENV):
    f = open(log, "w")
    p = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    f.close()
    return p


def wait_progress(p, log, timeout=60):
    t0 = time.time()
    while "fa_long: chunk" not in log.read_text():
        assert p.poll() is None, f"ended ({p.returncode}) before any progress:\n{log.read_text()}"
        assert time.time() - t0 < timeout, "no progress line:\n" + log.read_text()
        time.sleep(0.02)


def finish(p, timeout=60):
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        raise AssertionError("did not end in time")


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, timeout=10).stdout
    return [int(x) for x in out.split()]


def assert_kept(out, text, want_msg=True):
    """No OUT, a partial with 0 < chunks_done < all, and (from fa_long) the stop line agreeing."""
    partial = out.parent / f".{out.name}.partial"
    assert not out.exists(), text
    assert partial.exists(), text
    with h5py.File(partial, "r") as f:
        done = int(f.attrs["chunks_done"])
    assert 0 < done < N // 50, (done, text)
    if want_msg:
        m = re.search(r"stopped on a signal after (\d+) of (\d+) chunks; they are kept in (\S+);",
                      text)
        assert m, text
        assert (int(m.group(1)), int(m.group(2))) == (done, N // 50), text
        assert m.group(3) == str(partial), text
    return done


def resume_and_compare(inp, out, ref, done, nranks, singleton=False, args=ARGS):
    cmd = ["-i", inp, "-o", out, "--resume"] + args
    if singleton:
        p = subprocess.run([str(FA_LONG)] + [str(c) for c in cmd], capture_output=True,
                           text=True, timeout=300, env=ENV)
    else:
        p = run_fa(cmd, nranks=nranks, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    assert f"resuming {out} from chunk {done}" in p.stderr, p.stderr
    assert not (out.parent / f".{out.name}.partial").exists()
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert np.array_equal(a["o"][...], b["o"][...])
        assert np.array_equal(a["lse"][...], b["lse"][...])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_to_one_rank(job, tmp_path, sig):
    """The signal reaches rank 1 only: the ranks agree to stop, mpirun exits 75."""
    inp, refs = job
    out, log = tmp_path / "out.h5", tmp_path / "log"
    p = start(mpirun_cmd(2) + [FA_LONG, "-i", inp, "-o", out] + ARGS, log)
    wait_progress(p, log)
    ranks = children(p.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], sig)
    rc = finish(p)
    text = log.read_text()
    assert rc == 75, text
    done = assert_kept(out, text)
    resume_and_compare(inp, out, refs[2], done, 2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "TERM"])
def test_singleton(job, tmp_path, sig):
    """./fa_long without mpirun: Ctrl-C (SIGINT to its process group) or kill -TERM: exit 75."""
    inp, refs = job
    out, log = tmp_path / "out.h5", tmp_path / "log"
    p = start([FA_LONG, "-i", inp, "-o", out] + ARGS, log)
    wait_progress(p, log)
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)
    else:
        os.kill(p.pid, sig)
    rc = finish(p)
    text = log.read_text()
    assert rc == 75, text
    done = assert_kept(out, text)
    resume_and_compare(inp, out, refs[1], done, 1, singleton=True)


@pytest.mark.parametrize("how", ["ctrl-c", "TERM"])
def test_wrapper_outside_slurm(job, tmp_path, how):
    """jobs/run_fa_long.sh run by hand: Ctrl-C (SIGINT to the script and mpirun, which then
    aborts) or kill -TERM to the script alone: the script exits 75, says what was kept, leaves no
    status file; run again (it passes --resume) it completes into the same bytes."""
    inp, refs = job
    out, log = tmp_path / "out.h5", tmp_path / "log"
    env = dict(ENV, INPUT=str(inp), OUTPUT=str(out), FA_HOME=str(ROOT), FA_LONG=str(FA_LONG),
               FA_ARGS=" ".join(ARGS), CHECK_ROWS="0", SLURM_NTASKS="2")
    env.pop("SLURM_JOB_ID", None)
    script = ROOT / "jobs" / "run_fa_long.sh"
    p = start(["bash", script], log, env)
    wait_progress(p, log)
    t0 = time.time()
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)
    else:
        os.kill(p.pid, signal.SIGTERM)
    rc = finish(p)
    took = time.time() - t0
    text = log.read_text()
    assert rc == 75, text
    sig = "INT" if how == "ctrl-c" else "TERM"
    assert f"fa_long job: SIG{sig}: asking fa_long to stop" in text, text
    m = re.search(r"fa_long job: fa_long stopped after (\d+) of (\d+) chunks, kept in (\S+) ", text)
    assert m, text
    # mpirun, when it got INT itself, would keep the ranks 15 s (its kill timeout) before it even
    # passed TERM on: the script stops them at once
    assert took < 10, (took, text)
    done = assert_kept(out, text, want_msg=False)
    assert (int(m.group(1)), int(m.group(2)), m.group(3)) == (done, N // 50,
                                                            str(tmp_path / ".out.h5.partial"))
    assert "fa_long job: stopped early with its progress kept" in text
    assert not list(tmp_path.glob(".out.h5.stopped*")), list(tmp_path.iterdir())
    # nothing of the launch is left running (the script ends mpirun once the partial is closed)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
    assert not [l for l in ps.splitlines() if str(out) in l], ps
    p = start(["bash", script], log, env)
    rc = finish(p, timeout=300)
    text = log.read_text()
    assert rc == 0, text
    assert f"resuming {out} from chunk {done}" in text, text
    with h5py.File(out, "r") as a, h5py.File(refs[2], "r") as b:
        assert np.array_equal(a["o"][...], b["o"][...])
        assert np.array_equal(a["lse"][...], b["lse"][...])


@pytest.mark.parametrize("nranks,kill_timeout", [(1, None), (2, "2")])
def test_plain_mpirun_term(job, tmp_path, nranks, kill_timeout):
    """SIGTERM to a plain mpirun: it aborts the job (SIGCONT, odls_base_sigkill_timeout seconds,
    TERM to the ranks, as long again, KILL) and exits 1 whatever the ranks return (README
    "Preemption"). The ranks still stop at the next chunk and keep what is done: with 1 rank at
    mpirun's default 1 s, with more given OMPI_MCA_odls_base_sigkill_timeout."""
    inp, refs = job
    out, log = tmp_path / "out.h5", tmp_path / "log"
    env = dict(ENV)
    if kill_timeout:
        env["OMPI_MCA_odls_base_sigkill_timeout"] = kill_timeout
    p = start(mpirun_cmd(nranks) + [FA_LONG, "-i", inp, "-o", out] + ARGS, log, env)
    wait_progress(p, log)
    p.send_signal(signal.SIGTERM)
    rc = finish(p)
    text = log.read_text()
    assert rc == 1, text                       # mpirun's own status: not the ranks'
    done = assert_kept(out, text)
    resume_and_compare(inp, out, refs[nranks], done, nranks)


def test_killed_mid_chunk_leaves_usable_partial(tmp_path):
    """1 rank under a plain mpirun, chunks of seconds: mpirun's SIGKILL (1 s after its TERM)
    comes in the middle of a chunk, before the stop can finish. The partial must still be usable:
    the first group's write is a checkpoint, so --resume continues from it into the same bytes."""
    inp, out, ref, log = (tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "ref.h5",
                          tmp_path / "log")
    p = run_fa(["gen", "--output", inp, "-n", "32000", "--heads", "4", "--kv-heads", "2",
                "-d", "64", "--seed", "13"])
    assert p.returncode == 0, p.stderr
    args = ["--causal", "--lse", "--chunk", "8000"]        # 4 chunks, each longer than the last
    p = run_fa(["-i", inp, "-o", ref, "-q"] + args, nranks=1, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    p = start(mpirun_cmd(1) + [FA_LONG, "-i", inp, "-o", out] + args, log)
    wait_progress(p, log)                                 # chunk 1 is written
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    rc = finish(p)
    text = log.read_text()
    assert rc == 1 and time.time() - t0 < 10, text
    assert "stopped on a signal" not in text, text          # killed in chunk 2, as meant
    partial = tmp_path / ".out.h5.partial"
    assert partial.exists() and not out.exists(), text
    with h5py.File(partial, "r") as f:
        done = int(f.attrs["chunks_done"])
    assert done == 1, text
    resume_and_compare(inp, out, ref, done, 1, args=args)


def test_wrapper_arguments_outside_slurm(tmp_path):
    """jobs/run_fa_long.sh passes the words after its name to fa_long as they are (a folder with a
    space, a comma in a file name and in --window-size) after FA_ARGS, which it splits as the shell
    does ('my group' is one word); an unclosed quote in FA_ARGS, or no input, ends it at once
    (exit 2) with one line saying what to give."""
    data = tmp_path / "my data"
    data.mkdir()
    inp, out = data / "in.h5", data / "o, 1.h5"
    p = run_fa(["gen", "--output", inp, "-n", "300", "--heads", "2", "-d", "16"])
    assert p.returncode == 0, p.stderr
    script = ROOT / "jobs" / "run_fa_long.sh"
    env = {k: v for k, v in ENV.items() if not k.startswith(("SLURM_", "INPUT", "OUTPUT"))}
    env.update(FA_HOME=str(ROOT), FA_LONG=str(FA_LONG), CHECK_ROWS="4",
               FA_ARGS="--out-group 'my group' --chunk 64")
    p = subprocess.run(["bash", str(script), "--input", str(inp), f"--output={out}",
                        "--window-size", "9,0", "--chunk", "50"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "check: PASS" in p.stdout
    with h5py.File(out, "r") as f:
        assert (f.attrs["window_left"], f.attrs["window_right"], f.attrs["chunk"]) == (9, 0, 50)
        assert f.attrs["out_group"] == "my group" and "my group/o" in f
    for fa_args, args, msg in [("--q 'unclosed", ["-i", inp, "-o", out], "a quote is not closed"),
                               ("", ["-o", out], "no input file: give --input IN.h5")]:
        p = subprocess.run(["bash", str(script)] + [str(a) for a in args], capture_output=True,
                           text=True, env=dict(env, FA_ARGS=fa_args), timeout=60)
        lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long job:")]
        assert p.returncode == 2 and len(lines) == 1 and msg in lines[0], p.stdout + p.stderr
