"""End-to-end: HDF5 in -> fa_long under mpirun -> HDF5 out, against the fp64 reference.

Tolerance: fp32 inputs, max |o - ref| / max |ref| <= 1e-5 (fp32 arithmetic, fp32 accumulation);
lse within 1e-5 relative. Outputs of different rank counts agree within the reordering bound
(reference.order_bound)."""
import os

import h5py
import numpy as np
import pytest

from conftest import run_fa
from reference import assert_reordered, attention_f64, order_bound, random_inputs, rel_err, write_inputs

TOL = 1e-5


def run_job(tmp_path, q, k, v, nranks, causal, extra=(), dtype="float32", name="out", env=None):
    inp = tmp_path / "in.h5"
    if not inp.exists():
        write_inputs(inp, q, k, v, dtype)
    out = tmp_path / f"{name}_{nranks}.h5"
    args = ["--input", inp, "--output", out, "--lse", "--quiet"] + (["--causal"] if causal else [])
    p = run_fa(args + list(extra), nranks=nranks, env=env)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        return f["o"][...], f["lse"][...], dict(f.attrs)


CASES = {
    # name: (B, Nq, Nk, H, Hkv, D, causal, magnitude)
    "gqa_causal_odd": (2, 203, 203, 6, 2, 64, True, 1.0),
    "mha_d128": (1, 150, 150, 4, 4, 128, False, 1.0),
    "mqa_odd_d": (1, 97, 131, 4, 1, 33, False, 1.0),
    "causal_nq_lt_nk": (2, 77, 190, 6, 2, 64, True, 1.0),
    "causal_nq_gt_nk": (1, 120, 50, 2, 1, 64, True, 1.0),
    "large_magnitude": (1, 130, 170, 4, 2, 64, True, 6.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("nranks", [1, 3])
def test_against_reference(tmp_path, case, nranks):
    B, Nq, Nk, H, Hkv, D, causal, mag = CASES[case]
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, B, Nq, Nk, H, Hkv, D, mag)
    o, lse, attrs = run_job(tmp_path, q, k, v, nranks, causal, ["--chunk", "40"])
    ro, rlse = attention_f64(q, k, v, causal)
    assert np.isfinite(o).all()
    err = rel_err(o, ro)
    # large magnitudes make the logits large; fp32 rounding of q.k grows with them
    tol = TOL * max(1.0, mag * mag)
    assert err <= tol, f"o rel err {err:.3e} > {tol:.1e}"
    seen = np.isfinite(rlse)
    assert (np.isneginf(lse) == ~seen).all(), "rows that see no key must have lse = -inf"
    assert np.max(np.abs(lse[seen] - rlse[seen]) / np.maximum(1, np.abs(rlse[seen]))) <= tol
    assert (o[np.broadcast_to(~seen.transpose(0, 2, 1)[..., None], o.shape)] == 0).all()
    assert attrs["causal"] == int(causal) and attrs["ranks"] == nranks


def test_rank_counts_agree(tmp_path):
    """1, 2, 3, 4 and 7 ranks: the same output to the reordering bound, each within 1e-5 of fp64."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 211, 211, 6, 2, 64)
    ro, _ = attention_f64(q, k, v, True)
    outs = {}
    for p in (1, 2, 3, 4, 7):
        o, _, _ = run_job(tmp_path, q, k, v, p, True, ["--chunk", "50"])
        assert rel_err(o, ro) <= TOL
        outs[p] = o
    ob, _ = order_bound(q, k, v, True)
    for p in (2, 3, 4, 7):
        assert_reordered(outs[p], outs[1], ob, f"{p} ranks vs 1")


@pytest.mark.parametrize("shard", ["contiguous", "zigzag", "striped"])
def test_shard_layouts(tmp_path, shard):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 100, 157, 4, 2, 64)
    ro, _ = attention_f64(q, k, v, True)
    o, _, attrs = run_job(tmp_path, q, k, v, 4, True, ["--shard", shard, "--chunk", "33"])
    assert rel_err(o, ro) <= TOL
    assert attrs["shard"] == shard


@pytest.mark.parametrize("extra", [["--merges-in-flight", "1"], ["--chunk", "1"], ["--chunk", "1000"],
                                   ["--tile", "7x13"], ["--threads", "2"]])
def test_pipeline_settings(tmp_path, extra):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 61, 83, 2, 2, 64)
    ro, _ = attention_f64(q, k, v, False)
    o, _, _ = run_job(tmp_path, q, k, v, 2, False, extra)
    assert rel_err(o, ro) <= TOL


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_h5py_element_types(tmp_path, dtype):
    """Files written by h5py in each type are read right; o comes back in q's type."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 90, 90, 4, 2, 64)
    o, lse, attrs = run_job(tmp_path, q, k, v, 2, True, dtype=dtype)
    # the reference sees the values as stored in the file
    with h5py.File(tmp_path / "in.h5", "r") as f:
        qs, ks, vs = (f[n][...].astype(np.float64) for n in ("q", "k", "v"))
    ro, _ = attention_f64(qs, ks, vs, True)
    tol = {"float32": TOL, "float64": TOL, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    assert rel_err(o.astype(np.float64), ro) <= tol
    with h5py.File(tmp_path / "out_2.h5", "r") as f:
        expect = {"float32": "float32", "float64": "float32", "float16": "float16",
                  "bfloat16": "float32"}[dtype]   # h5py shows the bf16 type as float32
        assert f["o"].dtype == np.dtype(expect)
        if dtype == "bfloat16":
            assert f["o"].attrs["dtype"] in ("bfloat16", b"bfloat16")
            assert f["o"].id.get_type().get_size() == 2
        assert f["lse"].dtype == np.float32 and f["lse"].shape == (1, 4, 90)


def test_out_dtype_option(tmp_path):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 64, 64, 2, 2, 64)
    o, _, _ = run_job(tmp_path, q, k, v, 1, False, ["--out-dtype", "float16"])
    assert o.dtype == np.float16
    assert rel_err(o.astype(np.float64), attention_f64(q, k, v)[0]) <= 2e-3


def test_gen_and_check(tmp_path, fa):
    """gen writes a deterministic file; check passes a right output and fails a damaged one."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for f in (a, b):
        p = fa(["gen", "--output", f, "-b", "2", "--nq", "100", "--nk", "130", "--heads", "6",
                "--kv-heads", "2", "-d", "40", "--seed", "7"])
        assert p.returncode == 0, p.stderr
    with h5py.File(a, "r") as fa_, h5py.File(b, "r") as fb:
        assert fa_["q"].shape == (2, 100, 6, 40) and fa_["k"].shape == (2, 130, 2, 40)
        assert np.array_equal(fa_["k"][...], fb["k"][...])
        assert 0.9 < np.std(fa_["q"][...]) < 1.1
    out = tmp_path / "o.h5"
    assert fa(["--input", a, "--output", out, "--causal", "--lse", "-q"], nranks=3).returncode == 0
    p = fa(["check", "--input", a, "--output", out, "--rows", "all"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout
    with h5py.File(out, "r+") as f:
        f["o"][1, 17, 3, 5] += 0.01
    p = fa(["check", "--input", a, "--output", out, "--rows", "all"])
    assert p.returncode == 1 and "FAIL" in p.stdout


def test_help_and_version(fa):
    for args in (["--help"], ["--version"], ["gen", "--help"], ["check", "--help"]):
        p = fa(args)
        assert p.returncode == 0 and p.stdout.strip(), args
    assert "HDF5" in fa(["--version"]).stdout


@pytest.mark.parametrize("nranks,mode", [(2, "shared"), (3, "shared"), (2, "node"), (4, "node"),
                                         (3, "")])
def test_shared_query_reads(tmp_path, nranks, mode):
    """FA_Q_READ=shared (each rank reads a slice of the chunk, MPI_Allgatherv shares them),
    FA_Q_READ=node and the default (the node's first rank reads the chunk into a shared-memory
    window the others map) give the same bytes as every rank reading the whole chunk
    (FA_Q_READ=rank), and stay exact against fp64.
    The 4-rank node case has a chunk size that does not divide Nq and two batch elements, so the
    window is rewritten while other ranks of the node have just used it."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 101, 131, 6, 2, 40)
    a, _, _ = run_job(tmp_path, q, k, v, nranks, True, ["--chunk", "30"], name="all",
                      env={"FA_Q_READ": "rank"})
    inp, out = tmp_path / "in.h5", tmp_path / f"{mode or 'default'}.h5"
    p = run_fa(["--input", inp, "--output", out, "--causal", "--chunk", "30", "--verbose"],
               nranks=nranks, env={"FA_Q_READ": mode})
    assert p.returncode == 0, p.stderr
    assert ("read once per node" in p.stderr) == (mode != "shared"), p.stderr
    with h5py.File(out, "r") as f:
        b = f["o"][...]
    assert np.array_equal(a, b)
    assert rel_err(b, attention_f64(q, k, v, True)[0]) <= TOL


def test_query_read_mode_unknown(tmp_path):
    """An FA_Q_READ value that is none of node, rank, shared: one line naming it, exit 2, no output."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 40, 40, 2, 1, 16)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    p = run_fa(["--input", inp, "--output", out, "-q"], nranks=2, env={"FA_Q_READ": "nodes"})
    assert p.returncode == 2
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long")]
    assert len(lines) == 1 and "FA_Q_READ=nodes" in lines[0], p.stderr
    assert not out.exists()


def test_node_query_reads_bad_input(tmp_path):
    """FA_Q_READ=node: a non-finite query row read by the node's reader fails every rank with the
    one-line error (no rank left waiting at the node's barrier), and leaves no output."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 90, 70, 4, 2, 16)
    q[0, 75, 1, 3] = np.nan
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    p = run_fa(["--input", inp, "--output", out, "--chunk", "25", "-q"], nranks=3,
               env={"FA_Q_READ": "node"}, timeout=60)
    assert p.returncode != 0
    assert "q" in p.stderr and "finite" in p.stderr.lower(), p.stderr
    assert not out.exists()
