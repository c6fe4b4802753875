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


def test_bench_flash_params_layout(tmp_path):
    """bench/gpu/bench.py calls the flash kernel through ctypes with a flash_params struct that
    bench/gpu/flash_params.py reads from kernels/cuda/flash.h: every field at the C compiler's
    offset and size, and the C struct's size (no GPU needed)."""
    import ctypes
    import sys
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import flash_params
    cls = flash_params.load_flash_params()
    names = [f for f, _ in cls._fields_]
    prints = "".join(f'printf("%zu %zu\\n", offsetof(flash_params, {n}), sizeof(((flash_params *)0)->{n}));'
                     for n in names)
    (tmp_path / "layout.c").write_text('#include <stdio.h>\n#include <stddef.h>\n#include "kernels/cuda/flash.h"\n'
                                       f'int main(void) {{ printf("%zu\\n", sizeof(flash_params)); {prints} return 0; }}\n')
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-I", str(ROOT), "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")], check=True)
    out = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout.split("\n")
    assert int(out[0]) == ctypes.sizeof(cls)
    for n, line in zip(names, out[1:]):
        assert tuple(map(int, line.split())) == (getattr(cls, n).offset, getattr(cls, n).size), n
