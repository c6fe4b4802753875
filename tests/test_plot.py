"""bench/plot.sh --report (issue #19 item 10): a user's own reports plotted with gnuplot (which
deps.sh installs for the tests and `make plot`): one PNG per report (each rank's phases), a
comparison when there are several, a clear refusal of a file that is not a report."""
import json
import struct
import subprocess

from conftest import ROOT, run_fa
from reference import random_inputs, write_inputs


def png_size(path):
    b = path.read_bytes()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", b[16:24])


def test_plot_reports(tmp_path):
    import numpy as np
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 700, 700, 4, 2, 32)
    write_inputs(tmp_path / "in.h5", q, k, v)
    reps = []
    for n in (1, 3):
        rep = tmp_path / f"run{n}.json"
        p = run_fa(["-i", tmp_path / "in.h5", "-o", tmp_path / f"o{n}.h5", "--causal", "--chunk", "100",
                    "--report", rep], nranks=n)
        assert p.returncode == 0, p.stderr
        assert len(json.loads(rep.read_text())["per_rank"]) == n
        reps.append(rep)
    out = tmp_path / "plots"
    p = subprocess.run(["sh", str(ROOT / "bench" / "plot.sh"), "--report"] + [str(r) for r in reps]
                       + ["--out", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("run1.png", "run3.png", "reports.png"):
        assert png_size(out / name) == (900, 420), name
    assert "run3.json: 3 rank(s) cpu" in p.stdout
    # one report alone: its PNG beside it, no comparison
    p = subprocess.run(["sh", str(ROOT / "bench" / "plot.sh"), "--report", str(reps[0])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and (tmp_path / "run1.png").exists() and "reports.png" not in p.stdout


def test_plot_refuses_a_non_report(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    p = subprocess.run(["sh", str(ROOT / "bench" / "plot.sh"), "--report", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "x.json: not a fa_long report" in p.stderr, p.stderr
    p = subprocess.run(["sh", str(ROOT / "bench" / "plot.sh"), "--report"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "give one or more report files" in p.stderr
