"""Direct reads (io/h5in.c: FA_DIRECT_READ, issue 16 item 2): contiguous datasets are read with
pread by the rank's threads, chunked and compressed ones through HDF5. Either way the same bits
reach the engine: FA_DIRECT_READ=0 (every read through H5Dread, collective with parallel HDF5)
and the default give the same output at 1 and 3 ranks, for bnhd and bhnd files and for an input
whose k is chunked and compressed (a bad value: tests/test_io_thread.py)."""
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

