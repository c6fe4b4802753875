"""Runs each C unit-test program built from tests/*.c (build/tests/NAME); each exits non-zero
when any of its checks fails and prints which."""
import os
import subprocess

import pytest

from conftest import BUILD, ROOT

PROGS = sorted(p.stem for p in (ROOT / "tests").glob("*.c"))


@pytest.mark.parametrize("prog", PROGS)
def test_c_program(prog):
    exe = BUILD / "tests" / prog
    assert exe.exists(), f"{exe} not built (make)"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=env)
    print(p.stdout[-4000:])
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
