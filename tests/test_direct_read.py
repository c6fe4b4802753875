"""Direct reads (io/h5in.c: FA_DIRECT_READ, issue 16 item 2): contiguous datasets are read with
pread by the rank's threads, chunked and compressed ones through HDF5. Either way the same bits
reach the engine: FA_DIRECT_READ=0 (every read through H5Dread, collective with parallel HDF5)
and the default give the same output at 1 and 3 ranks, for bnhd and bhnd files and for an input
whose k is chunked and compressed (a bad value: tests/test_io_thread.py). The fused read (issue 22
item 6: each run hashed, scanned and widened as it lands) against FA_FUSED_READ=0: the same output
and verdicts; --verbose says which ran (tests/test_h5io.c compares digests and scans in detail)."""
import json

import h5py
import numpy as np
import pytest

from conftest import run_fa
from reference import attention_f64, random_inputs, rel_err, write_inputs


def run(tmp_path, inp, name, nranks, env, extra=()):
    out, rep = tmp_path / f"{name}.h5", tmp_path / f"{name}.json"
    p = run_fa(["-i", inp, "-o", out, "--lse", "--chunk", "50", "--report", rep, "-q", *extra],
               nranks=nranks, env=env)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        return f["o"][...], f["lse"][...], json.loads(rep.read_text())


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("kind", ["bnhd-bf16", "bhnd-f32", "chunked-k"])
def test_direct_and_hdf5_reads_agree(tmp_path, nranks, kind):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 203, 171, 4, 2, 24)
    inp = tmp_path / "in.h5"
    extra = ()
    if kind == "bnhd-bf16":
        write_inputs(inp, q, k, v, dtype="bfloat16")
    elif kind == "bhnd-f32":
        with h5py.File(inp, "w") as f:
            for n, x in (("q", q), ("k", k), ("v", v)):
                f[n] = x.transpose(0, 2, 1, 3)
        extra = ("--layout", "bhnd")
    else:
        with h5py.File(inp, "w") as f:
            f["q"], f["v"] = q, v
            f.create_dataset("k", data=k, chunks=(1, 16, 2, 24), compression="gzip")
    o1, l1, r1 = run(tmp_path, inp, "direct", nranks, {"FA_DIRECT_READ": ""}, extra)
    o0, l0, r0 = run(tmp_path, inp, "hdf5", nranks, {"FA_DIRECT_READ": "0"}, extra)
    assert r1["plan"]["direct_read"] == {"value": 1, "from": "default"}
    assert r0["plan"]["direct_read"] == {"value": 0, "from": "environment"}
    assert np.array_equal(o1, o0) and np.array_equal(l1, l0)
    if kind != "bnhd-bf16":                  # fp32 inputs: against fp64 too
        ro, rl = attention_f64(q, k, v)
        if kind == "bhnd-f32":                # o follows the input's layout
            o1 = o1.transpose(0, 2, 1, 3)
        assert rel_err(o1, ro) <= 1e-5 and rel_err(l1, rl) <= 1e-5



@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_fused_and_separate_passes_agree(tmp_path, dtype):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 64, 3000, 4, 2, 64)     # k and v: several runs of 512 KiB
    inp = tmp_path / "in.h5"
    write_inputs(inp, q, k, v, dtype=dtype)
    res = {}
    for fused in ("", "0"):
        out = tmp_path / f"o{fused}.h5"
        p = run_fa(["-i", inp, "-o", out, "--lse", "--verbose"], env={"FA_FUSED_READ": fused})
        assert p.returncode == 0, p.stderr
        with h5py.File(out, "r") as f:
            res[fused] = f["o"][...], f["lse"][...], p.stderr
    assert np.array_equal(res[""][0], res["0"][0]) and np.array_equal(res[""][1], res["0"][1])
    assert "each run hashed and scanned as it lands" in res[""][2], res[""][2]
    assert "in fused passes" in res[""][2] and "in fused passes" not in res["0"][2], res["0"][2]
    assert "passes of their own (FA_FUSED_READ=0)" in res["0"][2], res["0"][2]
    # a NaN in the last key of the last run: the same one-line refusal either way
    k[1, 2999, 1, 63] = np.nan
    write_inputs(inp, q, k, v, dtype=dtype)
    errs = []
    for fused in ("", "0"):
        p = run_fa(["-i", inp, "-o", tmp_path / "bad.h5"], env={"FA_FUSED_READ": fused})
        lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        errs.append(lines[0])
    assert errs[0] == errs[1] and "NaN at [1, 2999, 1, 63]" in errs[0], errs
