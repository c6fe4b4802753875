"""A real single-node Slurm (munged, slurmctld, slurmd from Debian's packages, started and
stopped by these tests): the jobs/ CPU script submitted with sbatch, under mpirun and srun; and a
job stopped with SIGUSR1, requeued by its script, resumed, and equal to an uninterrupted run.
`make test-slurm` runs these alone."""
import os
import pathlib
import re
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import FA_LONG, ROOT, run_fa

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    script = ROOT / "tests" / "slurm" / "cluster.sh"
    p = subprocess.run(["sh", str(script), "start", str(d)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    yield env
    subprocess.run(["sh", str(script), "stop", str(d)], timeout=60)


def sh(cmd, env, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, **kw)


def job_state(env, jid):
    out = sh(["scontrol", "show", "job", jid], env).stdout
    m = re.search(r"JobState=(\w+)", out)
    return m.group(1) if m else "UNKNOWN", out


def wait_state(env, jid, want, timeout=180, release=False):
    """Polls until the job reaches a state in `want`; with release, a requeued job held by
    Slurm's requeue delay (Reason=BeginTime) is made eligible at once."""
    t0, held = time.time(), None
    while time.time() - t0 < timeout:
        st, out = job_state(env, jid)
        if st in want:
            return st, out
        if release and st == "PENDING" and "BeginTime" in out:
            # not at once: slurmd refuses to start the job while the last run's credential is
            # still being revoked ("Job credential revoked")
            held = held or time.time()
            if time.time() - held > 5:
                sh(["scontrol", "update", f"JobId={jid}", "StartTime=now"], env)
        time.sleep(0.5)
    raise AssertionError(f"job {jid} did not reach {want}: {job_state(env, jid)[1]}")


def submit(env, tmp, inp, out, log, args, extra_env=""):
    exports = (f"ALL,INPUT={inp},OUTPUT={out},FA_HOME={ROOT},FA_LONG={FA_LONG},"
               f"FA_ARGS={args}{extra_env}")
    p = sh(["sbatch", "--parsable", f"--export={exports}", "-o", str(log), "-D", str(tmp),
            str(ROOT / "jobs" / "fa_long_cpu.sbatch")], env)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_sbatch_cpu_job(slurm, tmp_path, launcher):
    inp, out, log = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "job.log"
    p = run_fa(["gen", "--output", inp, "-n", "1500", "--heads", "6", "--kv-heads", "2",
                "-d", "64", "--seed", "3"])
    assert p.returncode == 0, p.stderr
    jid = submit(slurm, tmp_path, inp, out, log, "--causal --lse", f",LAUNCHER={launcher}")
    st, info = wait_state(slurm, jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    text = log.read_text()
    assert st == "COMPLETED", text + info
    assert "check: PASS" in text and launcher in text
    p = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"])
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == 2 and f.attrs["causal"] == 1


def test_preempt_requeue_resume(slurm, tmp_path):
    inp, out, log = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "job.log"
    p = run_fa(["gen", "--output", inp, "-n", "24K", "--heads", "4", "--kv-heads", "2",
                "-d", "64", "--seed", "5"])
    assert p.returncode == 0, p.stderr
    args = "--causal --lse --chunk 192"
    jid = submit(slurm, tmp_path, inp, out, log, args,
                 ",FA_PROGRESS_INTERVAL=0.3,FA_CHECKPOINT_SECONDS=0.5")
    # signal once the first chunks are done
    t0 = time.time()
    while "fa_long: chunk" not in (log.read_text() if log.exists() else ""):
        assert time.time() - t0 < 120, "the job never reported progress"
        time.sleep(0.2)
    p = sh(["scancel", "--signal=USR1", "--batch", jid], slurm)
    assert p.returncode == 0, p.stderr
    # the script forwards it, fa_long stops with its progress kept, the script requeues the job
    t0 = time.time()
    while "requeueing" not in log.read_text():
        assert time.time() - t0 < 120, log.read_text()
        time.sleep(0.2)
    partial = tmp_path / ".out.h5.partial"
    text = log.read_text()
    m = re.search(r"stopped on a signal after (\d+) of (\d+) chunks", text)
    assert m and 0 < int(m.group(1)) < int(m.group(2)), text
    assert not out.exists()
    # the requeue is done when Slurm counts a restart (the first run's end may flash by as
    # FAILED, its script killed by the requeue); then wait for the second run's end
    t0 = time.time()
    while "Restarts=1" not in job_state(slurm, jid)[1]:
        assert time.time() - t0 < 60, job_state(slurm, jid)[1]
        time.sleep(0.2)
    st, info = wait_state(slurm, jid, {"COMPLETED", "FAILED", "CANCELLED"}, release=True)
    text = log.read_text()
    assert st == "COMPLETED", text + info
    assert "Restarts=1" in info
    assert f"resuming {out} from chunk {m.group(1)}" in text, text
    assert "check: PASS" in text
    assert not partial.exists()
    # the same job without interruption, same ranks: identical datasets
    ref = tmp_path / "ref.h5"
    p = run_fa(["--input", inp, "--output", ref, "-q"] + args.split(), nranks=2)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert np.array_equal(a["o"][...], b["o"][...])
        assert np.array_equal(a["lse"][...], b["lse"][...])
