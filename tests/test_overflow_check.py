"""Never silently wrong at large magnitudes: finite inputs whose scores (or weighted sums of v)
overflow float32 are refused with one line saying how far past float32 they reach; and
`fa_long check` judges with a tolerance that follows the compute type the engine recorded and
the sampled rows' conditioning (the largest |score|), so fa_long's own correct output passes at
magnitude 100 and a slightly wrong one still fails."""
import os
import re
import subprocess

import h5py
import numpy as np
import pytest

from conftest import FA_LONG, run_fa
from reference import attention_f64, random_inputs, rel_err, write_inputs


def fa_lines(p):
    return [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]


def no_leftovers(folder, out):
    assert not out.exists()
    left = [f for f in os.listdir(folder) if ".tmp." in f or ".partial" in f]
    assert not left, left


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_score_overflow_refused(tmp_path, nranks, causal):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 45, 61, 4, 2, 16)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q * 1e20, k * 1e20, v)          # finite in fp32, scores ~1e40
    p = run_fa(["-i", inp, "-o", out] + (["--causal"] if causal else []), nranks=nranks)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p)
    assert len(lines) == 1, p.stderr
    assert "in.h5" in lines[0] and "overflow float32" in lines[0] and "3.4e+38" in lines[0]
    reach = float(re.search(r"can reach ([0-9.e+]+)", lines[0]).group(1))
    true_max = np.abs(np.einsum("nhd,mhd->hnm", q[0, :, :2].astype(np.float64) * 1e20,
                                k[0].astype(np.float64) * 1e20)).max() / 4
    assert reach >= true_max > 3.4e38          # an upper bound of the real scores, past fp32
    no_leftovers(tmp_path, out)


def test_value_overflow_refused(tmp_path):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 20, 3000, 2, 1, 16)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q * 0.01, k * 0.01, np.abs(v) * 2e37)  # the weighted sums pass 3.4e38
    p = run_fa(["-i", inp, "-o", out], nranks=2)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p)
    assert len(lines) == 1 and "overflows float32" in lines[0] and "|v| reaches" in lines[0], p.stderr
    no_leftovers(tmp_path, out)


def test_existing_output_kept_on_overflow(tmp_path):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 30, 30, 2, 2, 8)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q * 1e20, k * 1e20, v)
    out.write_bytes(b"older output")
    p = run_fa(["-i", inp, "-o", out, "--force"], nranks=2)
    assert p.returncode == 2 and out.read_bytes() == b"older output", p.stderr


def test_large_but_representable_is_exact(tmp_path):
    """Scores near 1e35 fit float32: computed, and equal to fp64 (one-hot softmax)."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 40, 50, 4, 2, 16)
    q, k = q * 1e17, k * 1e17
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out, "--causal", "--lse", "-q"], nranks=3)
    assert p.returncode == 0, p.stderr
    ref_o, ref_lse = attention_f64(q, k, v, causal=True)
    with h5py.File(out, "r") as f:
        assert rel_err(f["o"][...], ref_o) <= 1e-5
        assert np.allclose(f["lse"][...], ref_lse, rtol=1e-5)


def check(inp, out, *extra):
    return subprocess.run([str(FA_LONG), "check", "--input", str(inp), "--output", str(out),
                           "--rows", "all", *extra], capture_output=True, text=True, timeout=120)


def tolerance(stdout):
    return float(re.search(r"check: (?:PASS|FAIL) \(tolerance ([0-9.e+-]+)\)", stdout).group(1))


def perturb(out, rel, ref_max):
    """Adds rel * max|ref| to one element of o (the check's relative error grows by rel)."""
    with h5py.File(out, "r+") as f:
        o = f["o"][...]
        o[0, 3, 1, 2] += rel * ref_max
        f["o"][...] = o


def test_check_follows_conditioning(tmp_path):
    """Magnitude 100, non-causal: scores reach ~5e4, and float32 rounding of them moves o by up
    to ~2e-3 of its scale (seen: 1.9e-3, FAILed by the old fixed 1e-4); check passes the correct
    output with a tolerance from the conditioning, says so, and fails it once perturbed past it."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 300, 300, 2, 1, 64, magnitude=100.0)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out, "-q"])
    assert p.returncode == 0, p.stderr
    ref = attention_f64(q, k, v)[0]
    with h5py.File(out, "r") as f:
        err = rel_err(f["o"][...], ref)
        assert f.attrs["compute"] == "float32"
    c = check(inp, out)
    assert c.returncode == 0 and "check: PASS" in c.stdout, c.stdout
    tol = tolerance(c.stdout)
    assert err <= tol and 1e-4 < tol < 0.1 and "largest |score|" in c.stdout, c.stdout
    kappa = float(re.search(r"sampled rows ([0-9.e+-]+)", c.stdout).group(1))
    assert tol == pytest.approx(8 * 2.0 ** -24 * kappa, rel=0.05)   # printed with 2 digits
    ref_max = np.abs(ref).max()
    perturb(out, 3 * tol, ref_max)
    c = check(inp, out)
    assert c.returncode == 1 and "check: FAIL" in c.stdout, c.stdout


def test_check_floor_at_unit_magnitude(tmp_path):
    """Well-conditioned rows keep the type's floor (1e-4 for float32): 1e-3 off fails, 1e-5 passes."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 64, 80, 2, 2, 32)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    assert run_fa(["-i", inp, "-o", out, "-q", "--causal"]).returncode == 0
    ref_max = np.abs(attention_f64(q, k, v, causal=True)[0]).max()
    c = check(inp, out)
    assert c.returncode == 0 and tolerance(c.stdout) == pytest.approx(1e-4), c.stdout
    perturb(out, 1e-5, ref_max)
    assert check(inp, out).returncode == 0
    perturb(out, 1e-3, ref_max)
    c = check(inp, out)
    assert c.returncode == 1 and "FAIL" in c.stdout, c.stdout


def test_compute_attribute_is_the_engines(tmp_path):
    """The compute attribute (and the check's tolerance) come from the engine that ran: the CPU
    engine and the Taylor engine compute in float32."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 50, 50, 2, 1, 16)
    inp = tmp_path / "in.h5"
    write_inputs(inp, q, k, v, dtype="bfloat16")
    for mode in ("exact", "taylor"):
        out = tmp_path / f"{mode}.h5"
        assert run_fa(["-i", inp, "-o", out, "-q", "--mode", mode]).returncode == 0
        with h5py.File(out, "r") as f:
            assert f.attrs["compute"] == "float32" and f.attrs["backend"] == "cpu"
        c = check(inp, out)
        assert c.returncode == 0 and "compute float32" in c.stdout, c.stdout
