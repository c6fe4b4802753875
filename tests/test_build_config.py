"""The build's configuration (Makefile, $(BUILD)/.config): objects compiled under one set of flags
are rebuilt when the flags change (USE_CUDA=0 after a CUDA build, DEBUG=1), so a build never links
objects of another configuration, and stay up to date while the flags do not change. `make -q`
says whether a target is up to date (0) or must be remade (1); one object in a build directory of
its own."""
import os
import subprocess

from conftest import ROOT

OBJ = "base/common.o"


def make(build, *args, q=False):
    cmd = ["make", "--no-print-directory"] + (["-q"] if q else []) + [f"BUILD={build}", "USE_BLAS=0",
                                                                     *args, f"{build}/{OBJ}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_objects_follow_the_configuration(tmp_path):
    build = tmp_path / "b"
    r = make(build, "USE_CUDA=0")
    assert r.returncode == 0, r.stdout + r.stderr
    stamp = (build / ".config").read_text()
    assert "USE_CUDA=0" in stamp and "-DFA_HAVE_CUDA" not in stamp
    assert make(build, "USE_CUDA=0", q=True).returncode == 0        # same flags: up to date
    assert (build / ".config").read_text() == stamp                  # and the stamp untouched
    m0 = os.stat(build / OBJ).st_mtime_ns
    # other flags: the stamp changes and the object must be remade
    assert make(build, "USE_CUDA=1", q=True).returncode == 1
    assert "USE_CUDA=1" in (build / ".config").read_text()
    # back to the first flags: remade once more (it was compiled before the stamp changed), then
    # up to date again
    r = make(build, "USE_CUDA=0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Compiling base/common.c" in r.stdout
    assert os.stat(build / OBJ).st_mtime_ns > m0
    assert make(build, "USE_CUDA=0", q=True).returncode == 0
    assert make(build, "USE_CUDA=0", "DEBUG=1", q=True).returncode == 1


def test_kernel_instances_are_generated_and_fresh():
    """kernels/cuda/inst/ is what kernels/cuda/gen_instances.py writes (the committed instances
    match its lists), and the dispatch's head-dim list names every instance file's head dim."""
    import re
    import sys
    r = subprocess.run([sys.executable, "kernels/cuda/gen_instances.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    inst = ROOT / "kernels/cuda/inst"
    dims = {int(m) for m in re.findall(r"X\((\d+)\)", (inst / "flash_instances.h").read_text())}
    files = {int(re.match(r"flash_sm[89]0_d(\d+)_", p.name).group(1)) for p in inst.glob("flash_sm*.cu")}
    assert dims and dims == files
    for d in dims:
        for arch in ("sm80", "sm90"):
            for t in ("bf16", "fp16"):
                assert (inst / f"flash_{arch}_d{d}_{t}.cu").exists()
