"""The Python module python/fa_long (issue #19 item 3), imported from the checkout as with
PYTHONPATH=python: write_inputs' files bit for bit (float32, float16, float64, and bfloat16 against
a rounding written here), both layouts; runs through the module against the fp64 reference
(shapes that are not powers of two, GQA and MQA, causal with Nq != Nk, 1 and 2 ranks); read_output's
layouts, lse and groups; options as flags and the mpirun line; FaLongError with fa_long's own line
and exit status; torch-like tensors (a duck-typed stand-in, and torch itself where it is
installed); attention(); mask tables; a wheel built offline; issue 27: a layout attribute only
when given, torch tensors' layout given or refused, fa_long's warnings as Python warnings, no
unclosed pipes; issue 26: attention() in process through the C library (no command started), o in
q's type and bit for bit the command's, flash-attn's mask names, bf16 bits, the library's errors."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types

import h5py
import numpy as np
import pytest

from conftest import FA_LONG, ROOT
from reference import attention_f64, random_inputs, rel_err

sys.path.insert(0, str(ROOT / "python"))
import fa_long  # noqa: E402  (the checkout's package, as PYTHONPATH=python gives it)

FAST = {"backend": "cpu", "threads": 1, "chunk": 16}     # small chunks: several per rank
CASES = {   # B, Nq, Nk, H, Hkv, D, causal
    "gqa_causal": (2, 37, 53, 6, 2, 24, True),
    "mqa": (1, 45, 29, 5, 1, 20, False),
}


@pytest.fixture(autouse=True)
def checkout_binary(monkeypatch):
    """The module finds the checkout's ./fa_long itself (no FA_LONG from outside)."""
    assert FA_LONG.exists(), "build fa_long first (make)"
    monkeypatch.delenv("FA_LONG", raising=False)


def bhnd(x):
    """[B, N, heads, D] <-> [B, heads, N, D]."""
    return np.ascontiguousarray(np.swapaxes(np.asarray(x), 1, 2))


def inputs(case, layout, seed=0):
    """q, k, v of a case in layout, and the same as bnhd (for the reference)."""
    B, Nq, Nk, H, Hkv, D, causal = CASES[case]
    q, k, v = random_inputs(np.random.default_rng(seed), B, Nq, Nk, H, Hkv, D)
    given = tuple(bhnd(x) if layout == "bhnd" else x for x in (q, k, v))
    return given, (q, k, v), causal


# ---- bfloat16: a rounding of its own to check the module's against --------------------------------
def bf16_nearest_even(x):
    """float32 -> bfloat16 bits by comparing the two bfloat16 neighbours of each value in float64
    (the one nearer; a tie to the even mantissa; past the largest finite value, 2^128 stands for
    inf), not by the bit trick the module uses."""
    f = np.asarray(x, dtype=np.float32).ravel()
    lo = (f.view(np.uint32) >> 16).astype(np.uint32)          # truncated toward zero
    hi = lo + 1                                               # the next one away from zero

    def value(b):                                             # NaN patterns: cast, then unused
        with np.errstate(invalid="ignore"):
            mag = np.where((b & 0x7FFF) == 0x7F80, 2.0 ** 128,
                           np.abs((b << 16).astype(np.uint32).view(np.float32).astype(np.float64)))
        return np.where(b & 0x8000, -mag, mag)

    x64 = f.astype(np.float64)
    d_lo, d_hi = np.abs(x64 - value(lo)), np.abs(value(hi) - x64)
    pick = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo & 1, hi, lo)))
    special = ~np.isfinite(f)                                 # inf stays; NaN checked apart
    pick[special] = lo[special]
    return pick.astype(np.uint16).reshape(np.shape(x))


def bits_in_file(ds):
    """A bfloat16 dataset's stored bit patterns, read raw (memory type = the file's type)."""
    out = np.empty(ds.shape, dtype=np.uint16)
    ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, out, mtype=ds.id.get_type())
    return out


def awkward_values(rng):
    """Ties both ways, signed zeros, subnormals, the largest bfloat16 and past it, infinities,
    then 4000 random values over 60 decades (float32)."""
    specials = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -8 + 2 ** -20, 0.0, -0.0,
                1e-40, -3e-42, 1.4e-45, 3.3895e38, 3.3962e38, 3.4e38, -3.4e38, np.inf, -np.inf,
                65504.0, 2.0 ** -126, 1 / 3]
    scaled = rng.standard_normal(4000) * 10.0 ** rng.integers(-30, 30, 4000)
    return np.concatenate([specials, scaled]).astype(np.float32)


def test_bf16_bits_match_nearest_even():
    x = awkward_values(np.random.default_rng(0))
    got, want = fa_long.bf16_bits(x), bf16_nearest_even(x)
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:10]
    assert got[0] == 0x3F80 and got[1] == 0x3F82 and got[2] == 0xBF80   # the ties, to even
    assert got[12] == 0xFF80 and got[10] == 0x7F80                      # past the largest: inf
    nan = np.array([0x7FC00000, 0xFFC00000, 0x7F800001], dtype=np.uint32).view(np.float32)
    nb = fa_long.bf16_bits(nan)
    assert np.all(np.isnan(fa_long.bf16_values(nb))), nb               # never rounded to inf
    assert list(nb >> 15) == [0, 1, 0]
    assert np.array_equal(fa_long.bf16_values(got[3:9]).view(np.uint32) >> 16, got[3:9])


# ---- files as written ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")   # float16's inf
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_write_inputs_bit_for_bit(tmp_path, dtype, layout):
    (q, k, v), _, _ = inputs("gqa_causal", layout)
    q = q.copy()
    q.flat[:18] = awkward_values(np.random.default_rng(1))[:18]   # ties, subnormals, overflow
    path = fa_long.write_inputs(tmp_path / "in.h5", q, k, v, layout=layout, dtype=dtype)
    with h5py.File(path, "r") as f:
        for name, x in (("q", q), ("k", k), ("v", v)):
            ds = f[name]
            assert ds.shape == x.shape and ds.attrs["layout"] == layout
            if dtype == "bfloat16":
                t = ds.id.get_type()
                assert (t.get_size(), t.get_fields(), t.get_ebias()) == (2, (15, 7, 8, 0, 7), 127)
                assert ds.attrs["dtype"] == "bfloat16"
                assert np.array_equal(bits_in_file(ds), bf16_nearest_even(x))
            else:
                assert ds.dtype == np.dtype(dtype) and "dtype" not in ds.attrs
                assert np.array_equal(ds[()], x.astype(dtype))
        assert "layout" not in f.attrs        # on the datasets, so groups may differ


def test_dtype_none_keeps_each_arrays_type(tmp_path):
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    fa_long.write_inputs(tmp_path / "in.h5", q.astype(np.float16), k.astype(np.float64),
                         np.rint(v * 4).astype(np.int32), dtype=None)
    with h5py.File(tmp_path / "in.h5", "r") as f:
        assert [f[n].dtype for n in "qkv"] == [np.float16, np.float64, np.float32]
        assert np.array_equal(f["v"][()], np.rint(v * 4))


def test_write_inputs_refuses_what_cannot_fit(tmp_path):
    (q, k, v), _, _ = inputs("gqa_causal", "bnhd")
    path = tmp_path / "in.h5"
    with pytest.raises(ValueError, match="heads a multiple"):
        fa_long.write_inputs(path, q[:, :, :5], k, v)                       # 5 heads over 2
    with pytest.raises(ValueError, match="heads a multiple"):
        fa_long.write_inputs(path, q, k, v, layout="bhnd")                 # bnhd arrays told bhnd
    with pytest.raises(ValueError, match="expected 4 dimensions"):
        fa_long.write_inputs(path, q[0], k, v)
    with pytest.raises(ValueError, match="'BNHD'"):
        fa_long.write_inputs(path, q, k, v, layout="BNHD")
    with pytest.raises(ValueError, match="'int8'"):
        fa_long.write_inputs(path, q, k, v, dtype="int8")
    with pytest.raises(TypeError, match="numbers"):
        fa_long.write_inputs(path, q.astype(np.complex64), k, v)
    assert not path.exists()                   # refused before the file is opened


def test_mask_tables_beside_q(tmp_path):
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    fa_long.write_inputs(tmp_path / "in.h5", q, k, v, group="layer3",
                         cu_seqlens=[0, 10, 10, 45], cu_seqlens_k=np.array([[0.0, 29.0]]),
                         cu_seqlens_q=np.array([0, 2 ** 40]), alibi_slopes=[0.5, 0.25, 0.125, 1, 2])
    with h5py.File(tmp_path / "in.h5", "r") as f:
        g = f["layer3"]
        assert g["cu_seqlens"].dtype == np.int32 and list(g["cu_seqlens"][()]) == [0, 10, 10, 45]
        assert g["cu_seqlens_k"].dtype == np.int32 and g["cu_seqlens_k"].shape == (1, 2)
        assert g["cu_seqlens_q"].dtype == np.int64 and g["cu_seqlens_q"][1] == 2 ** 40
        assert g["alibi_slopes"].dtype == np.float32 and g["alibi_slopes"][4] == 2.0
        assert "layout" not in g["cu_seqlens"].attrs and "q" not in f
    with pytest.raises(ValueError, match="integer offsets"):
        fa_long.write_inputs(tmp_path / "x.h5", q, k, v, cu_seqlens=[0, 10.5, 45])
    with pytest.raises(ValueError, match=r"expected \[H\]"):
        fa_long.write_inputs(tmp_path / "x.h5", q, k, v, alibi_slopes=np.ones((5, 1)))


# ---- runs against fp64 -----------------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("case", list(CASES))
def test_run_float32_against_fp64(tmp_path, case, layout, ranks):
    given, (q, k, v), causal = inputs(case, layout)
    inp = fa_long.write_inputs(tmp_path / "in.h5", *given, layout=layout, dtype="float32")
    res = fa_long.run(inp, tmp_path / "out.h5", ranks=ranks, causal=causal, lse=True, **FAST)
    assert res.summary.startswith("fa_long: B=") and f"on {ranks} rank" in res.summary
    assert res.warnings == []                  # the layout attribute was read: no torch warning
    o, lse = fa_long.read_output(res)
    assert o.dtype == np.float32 and o.shape == given[0].shape     # the input's layout
    o_ref, lse_ref = attention_f64(q, k, v, causal=causal)
    assert rel_err(bhnd(o) if layout == "bhnd" else o, o_ref) <= 2e-6
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and rel_err(lse, lse_ref) <= 2e-6


@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_run_half_types_against_fp64(tmp_path, dtype, layout):
    """The values fa_long reads are the rounded ones: against fp64 on those, o asked as float32."""
    given, (q, k, v), causal = inputs("gqa_causal", layout, seed=2)
    inp = fa_long.write_inputs(tmp_path / "in.h5", *given, layout=layout, dtype=dtype)
    rounded = [fa_long.bf16_values(bf16_nearest_even(x)) if dtype == "bfloat16"
               else x.astype(np.float16).astype(np.float32) for x in (q, k, v)]
    fa_long.run(inp, tmp_path / "o32.h5", ranks=2, causal=True, out_dtype="float32", **FAST)
    o = fa_long.read_output(tmp_path / "o32.h5", layout="bnhd", lse=False)
    o_ref = attention_f64(*rounded, causal=True)[0]
    assert rel_err(o, o_ref) <= 2e-6
    fa_long.run(inp, tmp_path / "o16.h5", ranks=2, causal=True, **FAST)   # o in q's type
    o16 = fa_long.read_output(tmp_path / "o16.h5", layout="bnhd", lse=False)
    with h5py.File(tmp_path / "o16.h5", "r") as f:
        assert f["o"].attrs.get("dtype", f["o"].dtype.name) == dtype
    assert o16.dtype == np.float32 and 0 < rel_err(o16, o_ref) <= (1e-2 if dtype == "bfloat16" else 1e-3)


def test_read_output_layouts_and_groups(tmp_path):
    given, (q, k, v), causal = inputs("gqa_causal", "bhnd")
    inp = fa_long.write_inputs(tmp_path / "in.h5", *given, layout="bhnd", dtype="float32")
    out = tmp_path / "out.h5"
    fa_long.run(inp, out, causal=True, out_layout="bnhd", out_group="layers/3", **FAST)
    assert fa_long.output_layout(out) == "bnhd"
    o = fa_long.read_output(out, lse=False)                 # as stored: --out-layout's bnhd
    o_t = fa_long.read_output(out, layout="bhnd", lse=False)
    assert o.shape == q.shape and o_t.shape == given[0].shape
    assert np.array_equal(bhnd(o), o_t)
    assert rel_err(o, attention_f64(q, k, v, causal=True)[0]) <= 2e-6
    with h5py.File(out, "r") as f:                          # found through the out_group attribute
        assert "o" not in f and np.array_equal(f["layers/3/o"][()], o)
    with pytest.raises(KeyError, match="no dataset 'lse'.*lse=True"):
        fa_long.read_output(out)
    with pytest.raises(KeyError, match="no dataset 'o'"):
        fa_long.read_output(out, group="/", lse=False)
    with pytest.raises(ValueError, match="'BHND'"):
        fa_long.read_output(out, layout="BHND")


def test_group_and_append_then_paths(tmp_path):
    """Two layers in one file (mode "a"), the second run through q=/k=/v= paths."""
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    path = tmp_path / "in.h5"
    fa_long.write_inputs(path, q, k, v, group="layer0", dtype="float32")
    fa_long.write_inputs(path, 2 * q, k, v, group="layer1", mode="a", dtype="float32")
    out = tmp_path / "out.h5"
    fa_long.run(path, out, q="layer1/q", k="layer1/k", v="layer1/v", lse=True, **FAST)
    o, lse = fa_long.read_output(out)
    o_ref, lse_ref = attention_f64(2 * q, k, v)
    assert rel_err(o, o_ref) <= 2e-6 and rel_err(lse, lse_ref) <= 2e-6
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["layer0", "layer1"]


# ---- options, the command line, the program ---------------------------------------------------------
def test_to_flags():
    flags = fa_long.to_flags({"causal": True, "lse": False, "scale": None, "window_size": (255, 0),
                              "chunk": 1024, "out_dtype": "float32", "tile": (64, 256),
                              "report": ROOT / "r.json", "merges_in_flight": 0, "quiet": np.True_,
                              "force": np.False_, "check": "all", "magnitude": 0.5})
    assert flags == ["--causal", "--window-size", "255,0", "--chunk", "1024", "--out-dtype",
                     "float32", "--tile", "64x256", "--report", str(ROOT / "r.json"),
                     "--merges-in-flight", "0", "--quiet", "--check", "all", "--magnitude", "0.5"]


def test_command_line(tmp_path):
    cmd = fa_long.command_line("in.h5", tmp_path / "o.h5", 3, mpirun_args=["--mca", "btl", "self"],
                               causal=True, threads=2)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    assert cmd == (["mpirun", "-np", "3", "--oversubscribe", "--bind-to", "none"] + root +
                   ["--mca", "btl", "self", str(FA_LONG), "--input", "in.h5", "--output",
                    str(tmp_path / "o.h5"), "--causal", "--threads", "2"])
    alone = fa_long.command_line("a", "b", None, binary="/x/fa_long", lse=True)
    assert alone == ["/x/fa_long", "--input", "a", "--output", "b", "--lse"]


def test_find_binary(tmp_path, monkeypatch):
    assert fa_long.find_binary() == str(FA_LONG)             # the checkout's, beside python/
    prog = tmp_path / "my_fa_long"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    monkeypatch.setenv("FA_LONG", str(prog))
    assert fa_long.find_binary() == str(prog)
    monkeypatch.setenv("FA_LONG", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="FA_LONG="):
        fa_long.find_binary()


# ---- failures ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [1, 2])
def test_bad_input_raises_fa_longs_line(tmp_path, ranks):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:                          # q of rank 3: written past the module
        f["q"] = np.zeros((2, 3, 4), np.float32)
        f["k"] = f["v"] = np.zeros((1, 4, 2, 8), np.float32)
    out = tmp_path / "out.h5"
    with pytest.raises(fa_long.FaLongError) as e:
        fa_long.run(bad, out, ranks=ranks, **FAST)
    err = e.value
    assert err.returncode == 2
    assert err.message == (f"fa_long: input '{bad}': dataset 'q' has rank 3 [2, 3, 4]; expected "
                           "rank 4: q [B, Nq, H, D], k and v [B, Nk, Hkv, D]")
    assert str(err) == err.message + " (exit status 2)"
    assert "mpirun" in err.stderr and err.command[0] == "mpirun"   # the noise is kept, not the message
    assert not out.exists()


def test_bad_option_and_nonfinite(tmp_path):
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    q[0, 3, 1, 2] = np.nan
    inp = fa_long.write_inputs(tmp_path / "in.h5", q, k, v, dtype="float32")
    with pytest.raises(fa_long.FaLongError) as e:
        fa_long.run(inp, tmp_path / "o.h5", casual=True)
    assert e.value.returncode == 2 and "did you mean --causal?" in e.value.message
    with pytest.raises(fa_long.FaLongError) as e:
        fa_long.run(inp, tmp_path / "o.h5", ranks=2, **FAST)
    assert e.value.returncode == 2
    assert e.value.message.startswith(f"fa_long: input '{inp}': dataset 'q' has NaN at [0, 3, 1, 2]")


def test_error_message_takes_fa_longs_line():
    stderr = ("fa_long: warning: oversubscribed\nfa_long: chunk 1/4 (25.0%), ETA 0:02\n"
              "fa_long: rank 1: out of memory\n"
              "-----\nPrimary job  terminated normally, but 1 process returned\n"
              "fa_long: rank 1: out of memory\nmpirun detected that one or more processes exited\n")
    assert fa_long._launch.error_message(stderr, "", 1) == "fa_long: rank 1: out of memory"
    assert fa_long._launch.error_message("", "check: o ...\ncheck: FAIL (tolerance 1e-4)\n", 1) == \
        "check: FAIL (tolerance 1e-4)"
    assert fa_long._launch.error_message("fa_long: warning: w\n", "", 9) == "fa_long: warning: w"
    assert fa_long._launch.error_message("", "", 134) == "fa_long exited with status 134"


def test_run_gives_its_report(tmp_path):
    """run() reads the run's --report JSON (issue 26 item 2) instead of parsing stderr: the plan,
    the configuration and each rank's figures as a dict; the file it used beside the output is
    gone afterwards. report="..." keeps the file where asked, with the same content; a resumed
    output that is already complete writes none (report None)."""
    given, _, causal = inputs("gqa_causal", "bnhd")
    inp = fa_long.write_inputs(tmp_path / "in.h5", *given, layout="bnhd", dtype="float32")
    out = tmp_path / "out.h5"
    res = fa_long.run(inp, out, ranks=2, causal=causal, lse=True, **FAST)
    rep = res.report
    assert rep["output"] == str(out) and rep["input"] == str(inp)
    assert rep["config"]["ranks"] == 2 and len(rep["per_rank"]) == 2
    assert rep["config"]["causal"] is causal and rep["plan"]["chunk"] == {"value": 16, "from": "option"}
    assert rep["config"]["Nq"] == given[0].shape[1] and rep["elapsed_s"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "out.h5"]   # nothing left
    kept = tmp_path / "run.json"
    res = fa_long.run(inp, out, ranks=2, causal=causal, force=True, report=kept, **FAST)
    assert json.loads(kept.read_text()) == res.report and res.report["config"]["ranks"] == 2
    res = fa_long.run(inp, out, ranks=2, causal=causal, resume=True, **FAST)
    assert res.report is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "out.h5", "run.json"]


def test_check_passes_then_fails(tmp_path):
    given, _, causal = inputs("gqa_causal", "bhnd")
    inp = fa_long.write_inputs(tmp_path / "in.h5", *given, layout="bhnd", dtype="float32")
    res = fa_long.run(inp, tmp_path / "out.h5", ranks=2, causal=causal, lse=True, **FAST)
    assert "check: PASS" in fa_long.check(res, rows="all").stdout
    with h5py.File(res.output, "a") as f:
        f["o"][0, 1, 5, :] += 0.5
    with pytest.raises(fa_long.FaLongError) as e:
        fa_long.check(res.output, input=inp, rows="all")
    assert e.value.returncode == 1 and e.value.message.startswith("check: FAIL")


def test_timeout_stops_the_program(tmp_path):
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nsleep 60\n")
    slow.chmod(0o755)
    t = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        fa_long.run("in.h5", "out.h5", ranks=None, binary=str(slow), timeout=1)
    assert time.monotonic() - t < 20


def test_echo_passes_output_through(tmp_path, capfd):
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    inp = fa_long.write_inputs(tmp_path / "in.h5", q, k, v, dtype="float32")
    res = fa_long.run(inp, tmp_path / "o.h5", echo=True, **FAST)
    err = capfd.readouterr().err
    assert res.summary and res.summary in err


# ---- torch tensors ------------------------------------------------------------------------------------
class FakeDtype:
    def __init__(self, name):
        self.name = name

    def __str__(self):
        return "torch." + self.name


class FakeTensor:
    """A stand-in for a torch tensor with only what the module may use: detach, cpu, numpy, and
    view(torch.int16) for bfloat16 ones, whose numpy() fails as torch's does."""

    def __init__(self, a, dtype=None):
        self.a, self.dtype, self.calls = a, FakeDtype(dtype or a.dtype.name), []

    def detach(self):
        self.calls.append("detach")
        return self

    def cpu(self):
        self.calls.append("cpu")
        return self

    def numpy(self):
        if self.dtype.name == "bfloat16":
            raise TypeError("Got unsupported ScalarType BFloat16")
        return self.a

    def view(self, dtype):
        assert dtype is sys.modules["torch"].int16
        return FakeTensor(self.a.view(np.int16))


@pytest.fixture
def fake_torch(monkeypatch):
    mod = types.ModuleType("torch")
    mod.int16, mod.bfloat16 = object(), object()
    mod.from_numpy = lambda a: FakeTensor(a)
    monkeypatch.setitem(sys.modules, "torch", mod)
    return mod


def test_duck_typed_tensors(tmp_path):
    given, (q, k, v), causal = inputs("gqa_causal", "bhnd")
    tq, tk, tv = (FakeTensor(x) for x in given)
    fa_long.write_inputs(tmp_path / "in.h5", tq, tk, tv, layout="bhnd", dtype="float32")
    assert tq.calls[:2] == ["detach", "cpu"]
    with h5py.File(tmp_path / "in.h5", "r") as f:
        assert np.array_equal(f["q"][()], given[0]) and f["q"].attrs["layout"] == "bhnd"
    o = fa_long.attention(tq, tk, tv, layout="bhnd", causal=True, **FAST)
    assert isinstance(o, np.ndarray) and o.shape == given[0].shape   # not torch: numpy back
    assert rel_err(bhnd(o), attention_f64(q, k, v, causal=True)[0]) <= 2e-6


def test_bf16_tensors_bit_for_bit(tmp_path, fake_torch):
    """A bfloat16 tensor goes in as its bits (no rounding twice); read_output(torch=True) makes
    tensors with torch.from_numpy."""
    given, (q, k, v), _ = inputs("mqa", "bhnd", seed=4)
    bits = [bf16_nearest_even(x) for x in given]
    tensors = [FakeTensor(b, dtype="bfloat16") for b in bits]
    fa_long.write_inputs(tmp_path / "in.h5", *tensors, layout="bhnd")          # dtype bfloat16
    fa_long.write_inputs(tmp_path / "in32.h5", *tensors, layout="bhnd", dtype=None,
                         cu_seqlens=FakeTensor(np.array([0, 45], np.int64)))
    with h5py.File(tmp_path / "in.h5", "r") as f, h5py.File(tmp_path / "in32.h5", "r") as g:
        for name, b in zip("qkv", bits):
            assert np.array_equal(bits_in_file(f[name]), b)
            assert np.array_equal(bits_in_file(g[name]), b)                  # None: stays bf16
        assert list(g["cu_seqlens"][()]) == [0, 45]
    fa_long.run(tmp_path / "in.h5", tmp_path / "out.h5", lse=True, out_dtype="float32", **FAST)
    o, lse = fa_long.read_output(tmp_path / "out.h5", torch=True)
    assert isinstance(o, FakeTensor) and isinstance(lse, FakeTensor)
    o_ref = attention_f64(*(bhnd(fa_long.bf16_values(b)) for b in bits))[0]
    assert rel_err(bhnd(o.numpy()), o_ref) <= 2e-6


def test_attention_keeps_its_workdir(tmp_path):
    given, (q, k, v), causal = inputs("gqa_causal", "bnhd", seed=5)
    work = tmp_path / "work"
    for _ in range(2):                          # the second call replaces the first's files
        o, lse = fa_long.attention(*given, ranks=2, workdir=work, causal=True, lse=True, **FAST)
    o_ref, lse_ref = attention_f64(q, k, v, causal=True)
    assert rel_err(o, o_ref) <= 2e-6 and rel_err(lse, lse_ref) <= 2e-6
    assert sorted(p.name for p in work.iterdir()) == ["in.h5", "out.h5"]
    with h5py.File(work / "in.h5", "r") as f:
        assert f["q"].dtype == np.float32      # dtype None: the arrays' own


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_real_torch(tmp_path, device):
    """torch's own tensors, bfloat16, on the CPU or a GPU: bits as torch holds them, o back as a
    tensor on q's device, against fp64 and against torch's SDPA under the same mask (bottom-right
    causal, key/value heads repeated for GQA)."""
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU for torch")
    B, Nq, Nk, H, Hkv, D, _ = CASES["gqa_causal"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(torch.bfloat16).to(device)
               for h, n in ((H, Nq), (Hkv, Nk), (Hkv, Nk)))
    fa_long.write_inputs(tmp_path / "in.h5", q, k, v, layout="bhnd")
    with h5py.File(tmp_path / "in.h5", "r") as f:
        assert np.array_equal(bits_in_file(f["q"]),
                              q.cpu().view(torch.int16).numpy().view(np.uint16))
    o, lse = fa_long.attention(q, k, v, layout="bhnd", causal=True, out_dtype="float32", lse=True,
                               **FAST)
    assert isinstance(o, torch.Tensor) and o.device == q.device and o.dtype == torch.float32
    assert tuple(o.shape) == (B, H, Nq, D) and tuple(lse.shape) == (B, H, Nq)
    ref = attention_f64(*(bhnd(x.float().cpu().numpy()) for x in (q, k, v)), causal=True)[0]
    assert rel_err(bhnd(o.cpu().numpy()), ref) <= 2e-6
    seen = torch.arange(Nk, device=device)[None, :] <= torch.arange(Nq, device=device)[:, None] + Nk - Nq
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.float(), *(x.float().repeat_interleave(H // Hkv, dim=1) for x in (k, v)), attn_mask=seen)
    assert rel_err(o.cpu().numpy(), sdpa.cpu().numpy()) <= 1e-5


# ---- issue 27 item 2: no layout stated, warnings, pipes ---------------------------------------------------
def test_layout_attribute_only_when_given(tmp_path):
    """write_inputs stamps a layout only when given one; torch tensors (duck-typed) whose shapes
    fit as torch's [B, H, N, D] too must say which, or get a ValueError naming layout=; ones that
    fit only as [B, N, H, D] are written as they are; numpy arrays are left to fa_long."""
    (q, k, v), _, _ = inputs("gqa_causal", "bnhd")
    path = tmp_path / "in.h5"
    fa_long.write_inputs(path, q, k, v, dtype="float32")
    with h5py.File(path, "r") as f:
        assert not any("layout" in f[n].attrs for n in "qkv") and "layout" not in f.attrs
    fa_long.write_inputs(path, q, k, v, layout="bnhd", dtype="float32")
    with h5py.File(path, "r") as f:
        assert [f[n].attrs["layout"] for n in "qkv"] == ["bnhd"] * 3
    rng = np.random.default_rng(0)
    torch_like = [rng.standard_normal(s).astype(np.float32) for s in
                  ((1, 16, 60, 8), (1, 4, 60, 8), (1, 4, 60, 8))]      # fits both ways
    bad = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match=r"fit both .* pass layout='bhnd' \(torch's\) or layout='bnhd'"):
        fa_long.write_inputs(bad, *(FakeTensor(x) for x in torch_like))
    decode = [x[:, :, :1] if i == 0 else x for i, x in enumerate(torch_like)]   # only as bhnd
    with pytest.raises(ValueError, match=r"as torch's \[B, H, N, D\] they fit: pass layout='bhnd'"):
        fa_long.write_inputs(bad, *(FakeTensor(x) for x in decode))
    assert not bad.exists()
    fa_long.write_inputs(path, *(FakeTensor(x) for x in (q, k, v)))   # fits only as bnhd
    fa_long.write_inputs(path, *torch_like, layout="bhnd")
    with h5py.File(path, "r") as f:
        assert f["q"].attrs["layout"] == "bhnd"
    fa_long.write_inputs(path, *torch_like)                           # numpy: fa_long judges
    with h5py.File(path, "r") as f:
        assert "layout" not in f["q"].attrs


@pytest.mark.parametrize("ranks", [1, 3])
def test_torch_layout_arrays_without_layout(tmp_path, ranks):
    """The issue: attention(q, k, v, causal=True) on torch-layout arrays without layout= gave
    garbage without a word. Now fa_long refuses (FaLongError, exit status 2, its hint); with
    layout="bhnd" the result is right."""
    B, Nq, Nk, H, Hkv, D = 1, 60, 60, 16, 4, 16
    q, k, v = random_inputs(np.random.default_rng(27), B, Nq, Nk, H, Hkv, D)
    given = [bhnd(x) for x in (q, k, v)]
    with pytest.raises(fa_long.FaLongError) as e:
        fa_long.attention(*given, ranks=ranks, causal=True, **FAST)
    assert e.value.returncode == 2 and "--layout bhnd" in e.value.message \
        and "more heads (60) than rows (4)" in e.value.message, e.value.message
    o = fa_long.attention(*given, ranks=ranks, layout="bhnd", causal=True, **FAST)
    assert o.shape == given[0].shape
    assert rel_err(bhnd(o), attention_f64(q, k, v, causal=True)[0]) <= 2e-6


@pytest.mark.parametrize("ranks", [1, 3])
def test_warnings_become_python_warnings(tmp_path, ranks):
    """fa_long's warning lines come as FaLongWarning (and in Result.warnings): --layout
    overriding an attribute in run, a doubted reading in attention and in check."""
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    inp = fa_long.write_inputs(tmp_path / "in.h5", q, k, v, dtype="float32")
    with h5py.File(inp, "a") as f:
        f["q"].attrs["layout"] = "bhnd"
    with pytest.warns(fa_long.FaLongWarning, match="--layout bnhd overrides the attribute") as w:
        res = fa_long.run(inp, tmp_path / "o.h5", ranks=ranks, layout="bnhd", **FAST)
    assert [str(x.message) for x in w] == res.warnings and len(res.warnings) == 1
    assert w[0].filename == __file__                    # the caller's line, not the module's
    rng = np.random.default_rng(3)                      # q alone: more heads than rows
    qw, kw = rng.standard_normal((1, 4, 8, 8)), rng.standard_normal((1, 2, 2, 8))
    work = tmp_path / "work"
    with pytest.warns(fa_long.FaLongWarning, match=r"'q' \[1, 4, 8, 8\] .* --layout bhnd"):
        o = fa_long.attention(qw, kw, kw, ranks=ranks, workdir=work, dtype="float32", **FAST)
    assert rel_err(o, attention_f64(qw, kw, kw)[0]) <= 2e-6
    with pytest.warns(fa_long.FaLongWarning, match="check: input .* the run and this check"):
        res = fa_long.check(work / "out.h5", rows="all")
    assert "check: PASS" in res.stdout and len(res.warnings) == 1


@pytest.mark.parametrize("ranks", [1, 3])
def test_no_unclosed_pipes(tmp_path, ranks):
    """Each run closes the two pipes it reads fa_long's output through (a ResourceWarning per
    pipe before), on success and on failure."""
    import gc
    import warnings
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    inp = fa_long.write_inputs(tmp_path / "in.h5", q, k, v, dtype="float32")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fa_long.run(inp, tmp_path / "o.h5", ranks=ranks, **FAST)
        with pytest.raises(fa_long.FaLongError):
            fa_long.run(inp, tmp_path / "o.h5", ranks=ranks, **FAST)      # exists: refused
        gc.collect()
    leaks = [str(x.message) for x in w if issubclass(x.category, ResourceWarning)]
    assert not leaks, leaks


# ---- packaging ------------------------------------------------------------------------------------------
def test_wheel_builds_offline(tmp_path):
    """pip builds and installs the package with no network (setuptools from the system)."""
    for needed in ("pip", "setuptools"):           # looked for, not imported (distutils' hack)
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"no {needed}")
    src = tmp_path / "src"
    subprocess.run(["cp", "-r", str(ROOT / "python"), str(src)], check=True)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                        "--target", str(site), str(src)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-c", "import fa_long; print(fa_long.__file__); "
                        "print(fa_long.to_flags({'causal': True}))"], capture_output=True,
                       text=True, env=dict(env, PYTHONPATH=str(site)), cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [str(site / "fa_long" / "__init__.py"), "['--causal']"]


def test_masks_through_the_module(tmp_path):
    """Packed documents, a window, softcap and ALiBi through the module (write_inputs' mask tables,
    run's window_size/softcap/alibi options) in torch's layout, against the masks' fp64
    reference; the output records the mask."""
    from mask_reference import masked_f64, std_slopes
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 150, 150, 4, 2, 32)
    cu = np.array([0, 60, 61, 150])
    t = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))
    inp = fa_long.write_inputs(tmp_path / "in.h5", t(q), t(k), t(v), layout="bhnd", dtype="float32",
                               cu_seqlens=cu)
    res = fa_long.run(inp, tmp_path / "o.h5", ranks=2, window_size=(12, 0), softcap=9.0, alibi=True,
                      lse=True)
    o, lse = fa_long.read_output(res, layout="bnhd")
    ro, rlse, kappa = masked_f64(q, k, v, 12, 0, cu, cu, softcap=9.0, slopes=std_slopes(4))
    assert rel_err(o, ro) <= max(1e-5, 8 * 2.0 ** -24 * kappa)
    with h5py.File(tmp_path / "o.h5") as f:
        assert f.attrs["mask"] == "window 12,0, 3 documents, softcap 9, alibi"


# ---- issue 26 item 3: attention() in process, through the C library --------------------------------------
@pytest.fixture
def no_command(monkeypatch):
    """attention() must not start fa_long: run and write_inputs fail if called."""
    def refuse(*a, **k):
        raise AssertionError("attention() went through the command")
    monkeypatch.setattr(fa_long, "run", refuse)
    monkeypatch.setattr(fa_long, "write_inputs", refuse)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_attention_in_process_is_the_commands(tmp_path, no_command, dtype):
    """In process, o comes back in q's type and layout (bhnd here, strided views given), lse
    too; bit for bit what the command writes for the same arrays, chunk, tile and threads; and
    close to fp64."""
    B, Nq, Nk, H, Hkv, D = 2, 75, 101, 6, 2, 24
    q, k, v = random_inputs(np.random.default_rng(26), B, Nq, Nk, H, Hkv, D)
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    views = [np.swapaxes(x, 1, 2) for x in (q, k, v)]          # bhnd, not contiguous
    opts = dict(causal=True, chunk=16, tile="8x64", threads=2, backend="cpu")
    o, lse = fa_long.attention(*views, layout="bhnd", lse=True, **opts)
    assert o.dtype == np.dtype(dtype) and o.shape == (B, H, Nq, D) and lse.shape == (B, H, Nq)
    assert rel_err(bhnd(o), attention_f64(q, k, v, causal=True)[0]) <= (2e-3 if dtype == "float16" else 2e-6)
    from fa_long import _format, _launch
    inp = _format.write_inputs(tmp_path / "in.h5", *views, layout="bhnd", dtype=None)
    _launch.run(inp, tmp_path / "out.h5", lse=True, **opts)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        fo, flse = f["o"][()], f["lse"][()]
    assert fo.dtype == (np.float32 if dtype == "float64" else np.dtype(dtype))
    assert np.array_equal(o.astype(fo.dtype).view(np.uint8), fo.view(np.uint8))
    assert np.array_equal(lse.view(np.uint32), flse.view(np.uint32))


def test_attention_in_process_masks_and_tensors(no_command):
    """flash-attn's names: window_size, softcap, alibi_slopes, cu_seqlens; duck-typed tensors
    (detached, brought to the CPU); against the masks' fp64 reference."""
    from mask_reference import masked_f64, std_slopes
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 150, 170, 4, 2, 32)
    cu_q, cu_k = np.array([0, 60, 61, 150]), np.array([0, 70, 90, 170])
    slopes = np.asarray(std_slopes(4), dtype=np.float32)
    tq, tk, tv = (FakeTensor(x) for x in (q, k, v))
    o = fa_long.attention(tq, tk, tv, layout="bnhd", window_size=(12, 3), softcap=9.0,
                          alibi_slopes=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    assert tq.calls[:2] == ["detach", "cpu"] and isinstance(o, np.ndarray)
    ro, _, kappa = masked_f64(q, k, v, 12, 3, cu_q, cu_k, softcap=9.0, slopes=slopes.astype(np.float64))
    assert rel_err(o, ro) <= max(1e-5, 8 * 2.0 ** -24 * kappa)
    o2 = fa_long.attention(q, k, v, layout="bnhd", causal=True, alibi=True)   # standard slopes
    ro2, _, kappa = masked_f64(q, k, v, -1, 0, slopes=std_slopes(4))
    assert rel_err(o2, ro2) <= max(1e-5, 8 * 2.0 ** -24 * kappa)


def test_attention_in_process_bf16_bits(fake_torch, no_command):
    """bfloat16 tensors go in as their bits; o comes back as a bfloat16 tensor built from the
    library's bits (torch.from_numpy of int16, viewed as bfloat16), on q's device."""
    class Made(FakeTensor):                 # what the module makes of o
        device = "cpu"

        def view(self, dtype):
            assert dtype is fake_torch.bfloat16
            self.viewed = True
            return self

        def to(self, device):
            return self

    given, (q, k, v), _ = inputs("mqa", "bhnd", seed=7)
    bits = [bf16_nearest_even(x) for x in given]
    made = []
    fake_torch.from_numpy = lambda a: made.append(Made(a)) or made[-1]
    o = fa_long.attention(*(FakeTensor(b, dtype="bfloat16") for b in bits), layout="bhnd",
                          torch=True)
    assert o is made[0] and o.viewed and o.a.dtype == np.int16      # o's bits, not values
    ref = attention_f64(*(bhnd(fa_long.bf16_values(b)) for b in bits))[0]
    assert rel_err(bhnd(fa_long.bf16_values(o.a.view(np.uint16))), ref) <= 2 ** -8


def test_attention_in_process_errors(no_command):
    """The library's line as FaLongError (exit status 2), the process going on."""
    (q, k, v), _, _ = inputs("mqa", "bnhd")
    k = k.copy()
    k[0, 3, 0, 5] = np.nan
    with pytest.raises(fa_long.FaLongError) as e:
        fa_long.attention(q, k, v, layout="bnhd")
    assert e.value.returncode == 2 and e.value.message == (
        "fa_long: fa_attention: k has NaN at [0, 3, 0, 5] (its [B, N, heads, D] index); "
        "expected finite values")
    k[0, 3, 0, 5] = 0
    with pytest.raises(fa_long.FaLongError, match="FA_MODE_TAYLOR computes full or causal"):
        fa_long.attention(q, k, v, layout="bnhd", mode="taylor", window_size=(4, 0))
    o = fa_long.attention(q, k, v, layout="bnhd", mode="taylor", causal=True)
    assert o.shape == q.shape and np.isfinite(o).all()


def test_attention_in_process_leaves_the_environment(tmp_path):
    """A process whose first attention() started MPI keeps its environment: Open MPI's MPI_Init
    puts its variables into the C environment (OMPI_MCA_ess=singleton, PMIx's server address,
    ...), which every later child without an explicit env inherits; an mpirun started so then
    exits 1 without a word. In a fresh interpreter: the children's environment before and after
    attention() is the same, and a plain `mpirun -np 2 true` started after it succeeds."""
    script = tmp_path / "env_after.py"
    script.write_text(
        "import subprocess, sys\n"
        "import numpy as np\n"
        "import fa_long\n"
        "env = lambda: set(subprocess.run(['env'], capture_output=True, text=True).stdout.splitlines())\n"
        "before = env()\n"
        "q = np.random.default_rng().random((1, 9, 2, 16), dtype=np.float32)\n"
        "o = fa_long.attention(q, q, q, layout='bnhd', backend='cpu')\n"
        "assert o.shape == q.shape\n"
        "added = sorted(v.split('=')[0] for v in env() - before)\n"
        "cmd = ['mpirun', '-np', '2', '--oversubscribe', '--bind-to', 'none'] + (['--allow-run-as-root'] if __import__('os').geteuid() == 0 else []) + ['true']\n"
        "p = subprocess.run(cmd, capture_output=True, text=True)\n"
        "print('added', ' '.join(added))\n"
        "print('mpirun', p.returncode, p.stderr.strip()[-200:])\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    for var in [v for v in env if v.startswith(("OMPI_", "PMIX_"))]:
        env.pop(var)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = dict(line.split(" ", 1) for line in p.stdout.splitlines() if " " in line)
    assert lines.get("added", "").strip() == "", p.stdout
    assert lines.get("mpirun", "").startswith("0"), p.stdout


def test_attention_in_process_only_where_the_command_would_not_take_a_gpu(monkeypatch):
    """The library runs the CPU engine: with backend auto (the default) attention() stays in
    process only where the command would not take a GPU either (no NVIDIA device, or
    CUDA_VISIBLE_DEVICES hiding them; a tensor on a CUDA device always goes to the command);
    backend="cpu" is always served in process."""
    from fa_long import _inproc
    q = np.zeros((1, 4, 2, 8), np.float32)
    cuda_t = types.SimpleNamespace(dtype="torch.float32", device="cuda:0")
    monkeypatch.setattr(_inproc.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert not _inproc.serves(None, None, {}, q, q, q)
    assert _inproc.serves(None, None, {"backend": "cpu"}, q, q, q) == (_inproc.library() is not None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _inproc.serves(None, None, {}, q, q, q) == (_inproc.library() is not None)
    assert not _inproc.serves(None, None, {}, cuda_t, cuda_t, cuda_t)
    monkeypatch.setattr(_inproc.os.path, "exists", lambda p: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _inproc.serves(None, None, {"backend": "auto"}, q, q, q) == (_inproc.library() is not None)
    assert not _inproc.serves(None, None, {"backend": "cuda"}, q, q, q)


def test_attention_in_process_out_of_memory():
    """The library out of memory (an address-space limit in a process of its own,
    tests/lib/oom_child.py): attention() raises FaLongMemoryError, a FaLongError that is also a
    MemoryError, with the library's line and FA_ENOMEM (4); the interpreter goes on, and the next
    call's o is right against the fp64 reference."""
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "lib" / "oom_child.py"), "module"],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    raised = out["raised"]
    assert raised and (raised["type"], raised["falongerror"], raised["returncode"]) == \
        ("FaLongMemoryError", True, 4), out
    assert re.fullmatch(r"fa_long: fa_attention: out of memory allocating \d+ bytes for value shard",
                        raised["message"]), out
    assert out["err"] < 1e-5, out
