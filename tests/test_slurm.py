"""A real single-node Slurm (munged, slurmctld, slurmd from Debian's packages, started and
stopped by these tests): the jobs/ CPU script submitted with sbatch, under mpirun and srun, on
its defaults (the whole node) and with two ranks; fa_long's options after the script's name and
in FA_ARGS (commas and spaces), and no input; from a data folder with nothing set (through a relative path, a link, --chdir; a copy of the
script needs FA_HOME and says so), its log where Slurm's --output puts it; a
job stopped with SIGUSR1, requeued by its script, resumed, and equal to an uninterrupted run; and
the same after a plain scancel and after the job's time limit (SIGTERM to every process of the
job, SIGKILL KillWait later: 10 s here, 30 s by Slurm's default). `make test-slurm` runs these
alone."""
import json
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


def submit(env, tmp, inp, out, log, args, extra_env="", script=None, sbatch_opts=()):
    exports = (f"ALL,INPUT={inp},OUTPUT={out},FA_HOME={ROOT},FA_LONG={FA_LONG},"
               f"FA_ARGS={args}{extra_env}")
    p = sh(["sbatch", "--parsable", f"--export={exports}", "-o", str(log), "-D", str(tmp),
            *sbatch_opts, str(script or ROOT / "jobs" / "fa_long_cpu.sbatch")], env)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def node_cpus(env):
    """The CPUs of the test cluster's node (tests/slurm/cluster.sh: CPUs=$(nproc))."""
    out = sh(["scontrol", "show", "node"], env).stdout
    return int(re.search(r"CPUTot=(\d+)", out).group(1))


@pytest.mark.parametrize("launcher,ntasks", [("mpirun", None), ("srun", 2)])
def test_sbatch_cpu_job(slurm, tmp_path, launcher, ntasks):
    """The CPU script's defaults use the node: one rank with all its CPUs as threads; with
    sbatch --ntasks-per-node=2, two ranks of half the CPUs each (srun is given them too)."""
    inp, out, log = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "job.log"
    p = run_fa(["gen", "--output", inp, "-n", "1500", "--heads", "6", "--kv-heads", "2",
                "-d", "64", "--seed", "3"])
    assert p.returncode == 0, p.stderr
    report = tmp_path / "run.json"
    opts = [f"--ntasks-per-node={ntasks}"] if ntasks else []
    env = {k: v for k, v in slurm.items() if k != "OMP_NUM_THREADS"}
    jid = submit(env, tmp_path, inp, out, log, f"--causal --lse --report {report}",
                 f",LAUNCHER={launcher}", sbatch_opts=opts)
    st, info = wait_state(slurm, jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    text = log.read_text()
    assert st == "COMPLETED", text + info
    assert "check: PASS" in text and launcher in text
    ranks = ntasks or 1
    threads = max(1, node_cpus(slurm) // ranks)
    assert f": {ranks} rank{'s' if ranks > 1 else ''} x {threads} threads: " in text, text
    if launcher == "srun":
        assert f"--cpus-per-task={threads}" in text, text
    p = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"])
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == ranks and f.attrs["causal"] == 1
    assert json.loads(report.read_text())["config"]["threads_per_rank"] == threads


def wait_done(env, jid, log):
    st, info = wait_state(env, jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    text = log.read_text() if log.exists() else ""
    assert st == "COMPLETED", text + info
    return text


def test_arguments_with_commas_and_spaces(slurm, tmp_path):
    """fa_long's options after the script's name reach it as they are (a folder with a space, a
    file name with a comma, --window-size L,R, a group name with a space); FA_ARGS, from the
    environment or quoted inside sbatch --export, is split into words as the shell splits them,
    and the arguments after the script's name come last. The window, group and chunk are the
    output's, and it passes fa_long check."""
    data = tmp_path / "my data"
    data.mkdir()
    inp = data / "in put.h5"
    p = run_fa(["gen", "--output", inp, "-n", "700", "--heads", "4", "--kv-heads", "2", "-d", "32",
                "--seed", "4"])
    assert p.returncode == 0, p.stderr
    script = str(ROOT / "jobs" / "fa_long_cpu.sbatch")
    env = dict(slurm, FA_HOME=str(ROOT), FA_LONG=str(FA_LONG))
    cases = [
        # (output, how: arguments after the script (and FA_ARGS in the environment), or FA_ARGS
        # quoted in --export; the window, the group, the chunk the output must have)
        ("out, 1.h5", "args", (7, 0), "my group", 100),
        ("out2.h5", "export", (5, 0), "g 2", 64),
    ]
    for name, how, (left, right), group, chunk in cases:
        out, log = data / name, data / f"{how}.log"
        if how == "args":
            e = dict(env, FA_ARGS=f"--out-group '{group}' --chunk 300")   # the argument wins: 100
            cmd = ["sbatch", "--parsable", "-o", str(log), "-D", str(data), script,
                   "--input", str(inp), "--output", str(out), "--lse",
                   "--window-size", f"{left},{right}", "--chunk", str(chunk)]
        else:
            e = env
            cmd = ["sbatch", "--parsable", "-o", str(log), "-D", str(data),
                   f"--export=ALL,INPUT={inp},OUTPUT={out},CHECK_ROWS=8,"
                   f"FA_ARGS=--lse --window-size '{left},{right}' --out-group \"{group}\" --chunk {chunk}",
                   script]
        p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=60)
        assert p.returncode == 0, p.stderr
        text = wait_done(slurm, p.stdout.strip().split(";")[0], log)
        assert "check: PASS" in text, text
        with h5py.File(out, "r") as f:
            assert (f.attrs["window_left"], f.attrs["window_right"]) == (left, right), how
            assert f.attrs["out_group"] == group and f.attrs["chunk"] == chunk, how
            assert f"{group}/o" in f and f"{group}/lse" in f, how
        p = run_fa(["check", "--output", out, "--rows", "all"])
        assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr


def test_no_input_says_how(slurm, tmp_path):
    """Neither INPUT nor --input: the job ends at once (exit 2) with one line saying both ways."""
    log = tmp_path / "job.log"
    p = sh(["sbatch", "--parsable", "-o", str(log), "-D", str(tmp_path),
            f"--export=ALL,FA_HOME={ROOT}", str(ROOT / "jobs" / "fa_long_cpu.sbatch"),
            "--output", str(tmp_path / "o.h5")], slurm)
    assert p.returncode == 0, p.stderr
    st, info = wait_state(slurm, p.stdout.strip().split(";")[0], {"COMPLETED", "FAILED", "CANCELLED"})
    text = log.read_text()
    assert st == "FAILED" and "ExitCode=2:0" in info, text + info
    lines = [l for l in text.splitlines() if l.startswith("fa_long job:")]
    assert len(lines) == 1 and "no input file: give --input IN.h5" in lines[0], text
    assert "INPUT and OUTPUT" in lines[0], text


def bare_env(env):
    """The environment of a user who set nothing: no FA_HOME, no FA_LONG."""
    return {k: v for k, v in env.items() if k not in ("FA_HOME", "FA_LONG")}


def checkout_logs():
    return set(ROOT.rglob("fa_long-*.log")) | set(ROOT.rglob("slurm-*.out"))


@pytest.mark.parametrize("how", ["relative", "link", "chdir"])
def test_submit_from_a_data_folder(slurm, tmp_path, how):
    """sbatch run in a data folder, not the checkout, with neither FA_HOME nor FA_LONG: the
    script finds the checkout from the path it was submitted as (Slurm runs a copy of it), and
    its log lands where --output puts it (the job's folder), not in the checkout."""
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir(), elsewhere.mkdir()
    inp, out = data / "in.h5", data / "out.h5"
    p = run_fa(["gen", "--output", inp, "-n", "300", "--heads", "4", "--kv-heads", "2", "-d", "16"])
    assert p.returncode == 0, p.stderr
    script = ROOT / "jobs" / "fa_long_cpu.sbatch"
    if how == "link":
        (data / "fa.sbatch").symlink_to(script)
        script = "fa.sbatch"
    elif how == "relative":
        script = os.path.relpath(script, data)
        assert script.startswith("..")
    extra = ["--chdir", str(elsewhere)] if how == "chdir" else []
    before = checkout_logs()
    env = bare_env(slurm)
    p = subprocess.run(["sbatch", "--parsable", f"--export=ALL,INPUT={inp},OUTPUT={out},"
                        "FA_ARGS=--causal --lse", *extra, str(script)], capture_output=True,
                       text=True, env=env, cwd=data, timeout=60)
    assert p.returncode == 0, p.stderr
    jid = p.stdout.strip().split(";")[0]
    st, info = wait_state(env, jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = (elsewhere if how == "chdir" else data) / f"fa_long-{jid}.log"
    assert log.exists(), (list(data.iterdir()), list(elsewhere.iterdir()), info)
    text = log.read_text()
    assert st == "COMPLETED", text + info
    assert "check: PASS" in text and out.exists(), text
    assert checkout_logs() == before, "a log landed in the checkout"


def test_copied_script_needs_fa_home(slurm, tmp_path):
    """A copy of a script kept in the data folder cannot know the checkout: the job ends at once
    with one line saying to set FA_HOME; with FA_HOME it runs."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    p = run_fa(["gen", "--output", inp, "-n", "200", "--heads", "2", "-d", "16"])
    assert p.returncode == 0, p.stderr
    (tmp_path / "mine.sbatch").write_text((ROOT / "jobs" / "fa_long_cpu.sbatch").read_text())
    env = bare_env(slurm)
    for home in ("", f",FA_HOME={ROOT}"):
        p = subprocess.run(["sbatch", "--parsable", f"--export=ALL,INPUT={inp},OUTPUT={out}{home}",
                            "mine.sbatch"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=60)
        assert p.returncode == 0, p.stderr
        jid = p.stdout.strip().split(";")[0]
        st, info = wait_state(env, jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
        text = (tmp_path / f"fa_long-{jid}.log").read_text()
        if not home:
            assert st == "FAILED" and "ExitCode=2:0" in info, text + info
            assert f"no jobs/run_fa_long.sh in FA_HOME={tmp_path.parent}: set FA_HOME" in text, text
            assert not out.exists()
        else:
            assert st == "COMPLETED" and "check: PASS" in text, text + info


def test_preempt_requeue_resume(slurm, tmp_path):
    """fa_long's options given after the script's name (the files in a folder with a space), 2
    ranks: the requeued run gets the same arguments."""
    data = tmp_path / "a b"
    data.mkdir()
    inp, out, log = data / "in.h5", data / "out.h5", tmp_path / "job.log"
    p = run_fa(["gen", "--output", inp, "-n", "24K", "--heads", "4", "--kv-heads", "2",
                "-d", "64", "--seed", "5"])
    assert p.returncode == 0, p.stderr
    args = "--causal --lse --chunk 192"
    p = sh(["sbatch", "--parsable", "--ntasks-per-node=2", "-o", str(log), "-D", str(tmp_path),
            f"--export=ALL,FA_HOME={ROOT},FA_LONG={FA_LONG},FA_PROGRESS_INTERVAL=0.3,"
            "FA_CHECKPOINT_SECONDS=0.5", str(ROOT / "jobs" / "fa_long_cpu.sbatch"),
            "--input", str(inp), "--output", str(out)] + args.split(), slurm)
    assert p.returncode == 0, p.stderr
    jid = p.stdout.strip().split(";")[0]
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
    partial = data / ".out.h5.partial"
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


def wait_log(log, text, timeout, what):
    t0 = time.time()
    while text not in (log.read_text() if log.exists() else ""):
        assert time.time() - t0 < timeout, f"{what}:\n" + (log.read_text() if log.exists() else "")
        time.sleep(0.2)
    return time.time()


def assert_stopped_on_term(log, out, t_signal=None):
    """The script's account of a stop on SIGTERM: it asked fa_long to stop, fa_long kept N > 0
    chunks in the partial file (and says so in its attribute), no OUT, a requeue."""
    text = log.read_text()
    assert "fa_long job: SIGTERM: asking fa_long to stop after the chunks in flight" in text, text
    m = re.search(r"fa_long job: fa_long stopped after (\d+) of (\d+) chunks, kept in (\S+) ", text)
    assert m and 0 < int(m.group(1)) < int(m.group(2)), text
    partial = out.parent / f".{out.name}.partial"
    assert m.group(3) == str(partial), text
    assert "fa_long job: stopped early with its progress kept" in text, text
    assert "requeueing" in text, text
    assert not out.exists(), text
    with h5py.File(partial, "r") as f:
        assert int(f.attrs["chunks_done"]) == int(m.group(1))
    assert not list(out.parent.glob(f".{out.name}.stopped*"))
    return int(m.group(1))


def assert_resumed(slurm, jid, log, inp, out, ref, done):
    # the requeue is done when Slurm counts a restart; then the second run's end
    t0 = time.time()
    while "Restarts=1" not in job_state(slurm, jid)[1]:
        assert time.time() - t0 < 60, job_state(slurm, jid)[1]
        time.sleep(0.2)
    st, info = wait_state(slurm, jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"},
                          timeout=300, release=True)
    text = log.read_text()
    assert st == "COMPLETED", text + info
    assert f"resuming {out} from chunk {done}" in text, text
    assert "check: PASS" in text
    assert not (out.parent / f".{out.name}.partial").exists()
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert np.array_equal(a["o"][...], b["o"][...])
        assert np.array_equal(a["lse"][...], b["lse"][...])


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_scancel_stops_keeps_requeues(slurm, tmp_path, launcher):
    """A plain scancel (SIGTERM to the script, the launcher and the ranks at once; mpirun then
    aborts the job, srun passes the ranks' 75 on): the chunks done are kept within KillWait, the
    script requeues the job (Slurm allows it while the job is being cancelled) and the requeued
    run (--resume) completes into the same bytes as an uninterrupted run."""
    inp, out, log = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "job.log"
    p = run_fa(["gen", "--output", inp, "-n", "24K", "--heads", "4", "--kv-heads", "2",
                "-d", "64", "--seed", "9"])
    assert p.returncode == 0, p.stderr
    args = "--causal --lse --chunk 192"
    jid = submit(slurm, tmp_path, inp, out, log, args,
                 f",FA_PROGRESS_INTERVAL=0.3,FA_CHECKPOINT_SECONDS=1000,LAUNCHER={launcher}",
                 sbatch_opts=["--ntasks-per-node=2"])
    wait_log(log, "fa_long: chunk", 120, "the job never reported progress")
    assert launcher in log.read_text()
    t_cancel = time.time()
    p = sh(["scancel", jid], slurm)
    assert p.returncode == 0, p.stderr
    t_kept = wait_log(log, "fa_long job: fa_long stopped after", 60, "no stop reported")
    assert t_kept - t_cancel < 10, (t_kept - t_cancel, log.read_text())   # KillWait=10
    wait_log(log, "requeueing", 30, "no requeue")
    done = assert_stopped_on_term(log, out)
    ref = tmp_path / "ref.h5"
    p = run_fa(["--input", inp, "--output", ref, "-q"] + args.split(), nranks=2)
    assert p.returncode == 0, p.stderr
    assert_resumed(slurm, jid, log, inp, out, ref, done)


TIME_LIMIT_JOB = """#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=1
#SBATCH --requeue
#SBATCH --open-mode=append
# no --signal: the time limit's SIGTERM is the only warning. The first run idles most of its
# minute so that fa_long is mid-job when Slurm ends it (time limits are enforced every 30 s)
[ "${SLURM_RESTART_COUNT:-0}" = 0 ] && sleep 50
source "$FA_HOME/jobs/run_fa_long.sh"
"""


def test_time_limit_stops_keeps_requeues(slurm, tmp_path):
    """A job that reaches its time limit (SIGTERM to all its processes, then KillWait): the
    chunks done are kept, the job is requeued, and the requeued run completes bit-identically."""
    inp, out, log = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "job.log"
    # ~53 s of compute on 2 cores after the script's 50 s idle: past the limit's latest
    # enforcement (60 s + 30 s); 96K (~30 s) finished first on a quiet machine
    p = run_fa(["gen", "--output", inp, "-n", "128K", "--heads", "2", "--kv-heads", "1",
                "-d", "64", "--seed", "11"])
    assert p.returncode == 0, p.stderr
    script = tmp_path / "limit.sbatch"
    script.write_text(TIME_LIMIT_JOB)
    args = "--lse --chunk 192"
    jid = submit(slurm, tmp_path, inp, out, log, args,
                 ",FA_PROGRESS_INTERVAL=1,FA_CHECKPOINT_SECONDS=1000", script=script)
    ref = tmp_path / "ref.h5"                # while the job idles
    p = run_fa(["--input", inp, "--output", ref, "-q"] + args.split(), nranks=2)
    assert p.returncode == 0, p.stderr
    wait_log(log, "fa_long job: SIGTERM", 200, "the time limit never came")
    text = log.read_text()
    assert "fa_long: chunk" in text and "DUE TO TIME LIMIT" in text, text
    wait_log(log, "requeueing", 30, "no requeue")
    done = assert_stopped_on_term(log, out)
    # the requeued run gets the time it needs
    t0 = time.time()
    while "Restarts=1" not in job_state(slurm, jid)[1]:
        assert time.time() - t0 < 60, job_state(slurm, jid)[1]
        time.sleep(0.2)
    p = sh(["scontrol", "update", f"JobId={jid}", "TimeLimit=10"], slurm)
    assert p.returncode == 0, p.stderr
    assert_resumed(slurm, jid, log, inp, out, ref, done)
