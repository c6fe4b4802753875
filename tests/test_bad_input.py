"""Bad input: one clear line naming the file, the dataset and what was expected; a non-zero exit;
no hang; no output file (and no temporary left behind)."""
import os

import h5py
import numpy as np
import pytest

from conftest import run_fa
from reference import random_inputs, write_inputs


def good(rng, B=1, Nq=20, Nk=24, H=4, Hkv=2, D=16):
    q, k, v = random_inputs(rng, B, Nq, Nk, H, Hkv, D)
    return {"q": q, "k": k, "v": v}


def write(path, tensors):
    with h5py.File(path, "w") as f:
        for n, x in tensors.items():
            f.create_dataset(n, data=x)


def variants(rng):
    """name -> (tensors, words the message must contain)."""
    g = good(rng)
    out = {}
    t = dict(g); del t["v"]; out["missing_dataset"] = (t, ["'v'", "not found"])
    t = dict(g); t["q"] = g["q"][0]; out["wrong_rank"] = (t, ["'q'", "4"])
    t = dict(g); t["k"] = np.concatenate([g["k"], g["k"]]); t["v"] = np.concatenate([g["v"], g["v"]])
    out["mismatched_batch"] = (t, ["'k'", "B"])
    t = dict(g); t["v"] = g["v"][..., :8]; out["mismatched_dim"] = (t, ["'v'", "D"])
    t = dict(g); t["v"] = g["v"][:, :10]; out["kv_length_mismatch"] = (t, ["'v'"])
    t = good(rng, H=6, Hkv=4); out["heads_not_multiple"] = (t, ["multiple"])
    hint = ['dtype = "bfloat16"', "fa_long.write_inputs"]      # the ways that work
    t = dict(g); t["k"] = (g["k"] * 10).astype(np.int32)
    out["integer_type"] = (t, ["'k'", "32-bit integer"] + hint)
    # bf16 bit patterns as torch writes them (.view(torch.int16)), without dtype = "bfloat16"
    t = dict(g); t["v"] = (g["v"].view(np.uint32) >> 16).astype(np.uint16).view(np.int16)
    out["int16_without_dtype"] = (t, ["'v'", "16-bit integer"] + hint)
    t = dict(g); t["q"] = np.zeros((1, 0, 4, 16), np.float32); out["empty_dim"] = (t, ["'q'", "empty"])
    t = good(rng, D=300); out["head_dim_too_large"] = (t, ["300", "256"])
    t = dict(g); t["k"] = g["k"].copy(); t["k"][0, 5, 1, 3] = np.nan
    out["nan_input"] = (t, ["'k'", "[0, 5, 1, 3]", "--allow-nonfinite"])
    t = dict(g); t["q"] = g["q"].copy(); t["q"][0, 19, 3, 15] = np.inf
    out["inf_query"] = (t, ["'q'", "[0, 19, 3, 15]"])
    return out


def assert_clean_failure(p, out, words, path_word):
    assert p.returncode != 0, "must fail"
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert len(lines) == 1, f"expected one fa_long line, got:\n{p.stderr}"
    for w in [path_word] + words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert not out.exists(), "no output file may be left"
    leftovers = [f for f in os.listdir(out.parent) if ".tmp." in f or f.endswith(".partial")]
    assert not leftovers, f"temporary files left: {leftovers}"


@pytest.mark.parametrize("nranks", [1, 3])
def test_bad_inputs(tmp_path, nranks):
    rng = np.random.default_rng()
    for name, (tensors, words) in variants(rng).items():
        inp = tmp_path / f"{name}.h5"
        write(inp, tensors)
        out = tmp_path / f"{name}_out.h5"
        p = run_fa(["--input", inp, "--output", out, "--causal"], nranks=nranks, timeout=120)
        assert_clean_failure(p, out, words, inp.name)


def test_nonfinite_allowed_when_asked(tmp_path):
    rng = np.random.default_rng()
    t = good(rng)
    t["v"][0, 3, 1, 2] = np.nan
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write(inp, t)
    p = run_fa(["--input", inp, "--output", out, "--allow-nonfinite", "-q"])
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        o = f["o"][...]
    assert np.isnan(o[0, :, 2:4]).any() and np.isfinite(o[0, :, 0:2]).all()


def test_missing_and_not_hdf5(tmp_path):
    out = tmp_path / "out.h5"
    p = run_fa(["--input", tmp_path / "nope.h5", "--output", out], nranks=2)
    assert_clean_failure(p, out, [], "nope.h5")
    txt = tmp_path / "text.h5"
    txt.write_text("not hdf5\n")
    p = run_fa(["--input", txt, "--output", out], nranks=2)
    assert_clean_failure(p, out, ["HDF5"], "text.h5")


def test_output_exists_and_force(tmp_path):
    rng = np.random.default_rng()
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *good(rng).values())
    out.write_bytes(b"precious")
    p = run_fa(["--input", inp, "--output", out], nranks=2)
    assert p.returncode != 0 and "--force" in p.stderr and "out.h5" in p.stderr
    assert out.read_bytes() == b"precious", "an existing output must not be touched"
    p = run_fa(["--input", inp, "--output", out, "--force", "-q"], nranks=2)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert f["o"].shape == (1, 20, 4, 16)


def test_unwritable_output(tmp_path):
    rng = np.random.default_rng()
    inp = tmp_path / "in.h5"
    write_inputs(inp, *good(rng).values())
    out = tmp_path / "no_such_dir" / "out.h5"
    p = run_fa(["--input", inp, "--output", out], nranks=2)
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert len(lines) == 1 and "out.h5" in lines[0], p.stderr


@pytest.mark.parametrize("args,word", [
    (["--chunk", "0"], "--chunk"), (["--backend", "tpu"], "--backend"),
    (["--scale", "-1"], "--scale"), (["--bogus"], "--bogus"), (["--tile", "64"], "--tile"),
    (["--out-dtype", "int8"], "--out-dtype"), (["--shard", "random"], "--shard")])
def test_bad_options(tmp_path, args, word):
    p = run_fa(["--input", tmp_path / "x.h5", "--output", tmp_path / "y.h5"] + args, nranks=2)
    assert p.returncode == 2
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert len(lines) == 1 and word in lines[0], p.stderr


def test_old_window_option_is_refused(tmp_path):
    """--window (merges in flight) was renamed --merges-in-flight: refused with one line that says
    so, so that no job takes a sliding-window size for a merge count; the new name works."""
    rng = np.random.default_rng()
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *good(rng).values())
    p = run_fa(["--input", inp, "--output", out, "--window", "3"], nranks=2)
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "--merges-in-flight" in lines[0] and "--window-size" in lines[0], lines[0]
    assert not out.exists()
    p = run_fa(["--input", inp, "--output", out, "--merges-in-flight", "1", "-q"], nranks=2)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert f["o"].shape == (1, 20, 4, 16)
