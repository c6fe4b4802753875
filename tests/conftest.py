"""Shared fixtures for the fa_long test suite (run with /usr/bin/python3 -m pytest tests)."""
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FA_LONG = ROOT / "fa_long"
BUILD = ROOT / "build"


def mpirun_cmd(nranks):
    """mpirun prefix that works as root and with more ranks than cores."""
    cmd = ["mpirun", "-np", str(nranks), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + ["--mca", "btl", "self,vader,tcp", "--mca", "btl_vader_single_copy_mechanism", "none"]


def run_c_test(prog, nranks):
    """build/tests/PROG under mpirun with nranks ranks (one OpenMP thread each): asserts it exits 0
    with no FAIL line and every rank's "N passed, 0 failed" tally; returns its stdout."""
    exe = BUILD / "tests" / prog
    assert exe.exists(), f"{exe} not built (make)"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(mpirun_cmd(nranks) + [str(exe)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and "FAIL" not in p.stdout, p.stdout[-4000:] + p.stderr[-4000:]
    tally = re.findall(r"(\d+) passed, (\d+) failed", p.stdout)
    assert len(tally) == nranks and all(int(a) > 0 and b == "0" for a, b in tally), p.stdout[-4000:]
    return p.stdout


def run_fa(args, nranks=1, timeout=300, check=False, env=None):
    """Run ./fa_long ARGS under mpirun with nranks ranks; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1" if nranks > 1 else "2")
    if env:
        e.update(env)
    cmd = mpirun_cmd(nranks) + [str(FA_LONG)] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def fa_lines(err):
    """fa_long's own stderr lines (messages, warnings), less progress and resume notes."""
    return [l for l in err.splitlines() if l.startswith("fa_long:")
            and not l.startswith(("fa_long: chunk ", "fa_long: resuming "))]


def leftovers(folder, out):
    """What a run left in folder of output `out` (the file, its .partial, .lock, ...)."""
    return [x for x in os.listdir(folder) if x.startswith("." + out.name) or x == out.name]


@pytest.fixture
def fa():
    assert FA_LONG.exists(), "build fa_long first (make)"
    return run_fa
