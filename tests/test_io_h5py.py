"""io/ against files h5py writes and reads: every element type and byte order read right by
h5in_* (through build/tests/test_h5io's `echo` mode, 1 and 3 ranks, transfers capped small),
bfloat16 stored as uint16/int16 bit patterns with dtype = "bfloat16" too (and whole runs on it
bit-identical to the bf16 float type's, issue #27 item 3),
o written in every type read back right by h5py (bf16 bit patterns checked against numpy,
round to nearest even), torch's bhnd layout read and written (from an attribute, both output
layouts), errors on h5py-made files, and the multi-rank C checks (`mpi` mode).

Every test runs for the default build (parallel HDF5 here) and, when the serial HDF5 headers are
installed (Debian: libhdf5-dev), for a serial-HDF5 build of test_h5io made here, so the rank-0
writer path of the serial build is exercised too."""
import os
import warnings
import pathlib
import subprocess

import h5py
import numpy as np
import pytest

from conftest import BUILD, ROOT, mpirun_cmd, run_fa
from reference import attention_f64, rel_err

SERIAL_INC = pathlib.Path("/usr/include/hdf5/serial")
SERIAL_LIB = pathlib.Path("/usr/lib/x86_64-linux-gnu/hdf5/serial")
IO_SRCS = ["io/convert.c", "io/h5io.c", "io/h5in.c", "io/h5out.c", "base/common.c", "base/agree.c",
           "base/affinity.c", "base/crc32.c"]


def bf16_type(big_endian=False):
    """bfloat16 as fa_long stores it: an HDF5 float of 16 bits, sign 15, 8 exponent bits at 7
    (bias 127), 7 mantissa bits at 0. h5py reads it back as float32."""
    t = h5py.h5t.IEEE_F32LE.copy()
    t.set_fields(15, 7, 8, 0, 7)
    t.set_size(2)
    t.set_ebias(127)
    if big_endian:
        t.set_order(h5py.h5t.ORDER_BE)
    return t


def to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even; NaN stays NaN (quieted)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def write_bf16(f, name, x, big_endian=False):
    bits = to_bf16_bits(x)
    sid = h5py.h5s.create_simple(x.shape)
    ds = h5py.h5d.create(f.id, name.encode(), bf16_type(big_endian), sid)
    mem = bf16_type(False)             # our uint16 array is little-endian: HDF5 swaps if needed
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=mem)
    f[name].attrs["dtype"] = "bfloat16"
    return bits


def special_values(rng, shape):
    """float32 values with subnormals (in f16 and bf16), zeros of both signs, large, inf, NaN."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    specials = [0.0, -0.0, 1e-6, -3e-7, 6e-8, 1e-40, 65504.0, 70000.0, -1e30, np.inf, -np.inf,
                np.nan, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8]
    flat[: len(specials)] = np.array(specials, np.float32)
    return x


def build_variants():
    v = [pytest.param(BUILD / "tests" / "test_h5io", id="default")]
    v.append(pytest.param("serial", id="serial-hdf5",
                          marks=pytest.mark.skipif(not (SERIAL_INC / "hdf5.h").exists(),
                                                   reason="no serial HDF5 headers (libhdf5-dev)")))
    return v


@pytest.fixture(scope="session")
def serial_exe(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "test_h5io"
    cmd = ["mpicc", "-O2", "-std=gnu11", "-march=native", "-fopenmp", "-I.", f"-I{SERIAL_INC}",
           "tests/test_h5io.c", *IO_SRCS, "-o", str(out), f"-L{SERIAL_LIB}", "-lhdf5", "-lz", "-lm"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(params=build_variants())
def exe(request):
    if request.param == "serial":
        return request.getfixturevalue("serial_exe")
    assert request.param.exists(), f"{request.param} not built (make)"
    return request.param


def run(exe, args, nranks=1, cap=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if cap:
        env["FA_IO_CAP_BYTES"] = str(cap)
    cmd = ([] if nranks == 1 else mpirun_cmd(nranks)) + [str(exe)] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# ---- inputs of every type and byte order ------------------------------------------------------
INPUT_TYPES = {"f32": "<f4", "f32be": ">f4", "f16": "<f2", "f16be": ">f2", "f64": "<f8",
               "f64be": ">f8", "bf16": "bf16", "bf16be": "bf16be",
               "f16gzip": "<f2",   # chunked and gzip-compressed, as h5py users often write
               # bf16 bit patterns in 16-bit integers with the attribute dtype = "bfloat16"
               # (numpy's uint16, torch's .view(torch.int16)), either byte order, or compressed
               "bf16u16": "<u2", "bf16i16be": ">i2", "bf16i16gzip": "<i2"}


def write_bf16_ints(f, name, x, dt, **extra):
    """bf16 as numpy and torch users store it: the bit patterns in a 16-bit integer dataset of
    numpy type dt with the attribute dtype = "bfloat16" (here in another case)."""
    bits = to_bf16_bits(x)
    f.create_dataset(name, data=bits.view(np.int16).astype(dt) if dt.kind == "i" else
                     bits.astype(dt), **extra)
    f[name].attrs["dtype"] = "BFloat16"
    return bits


def write_inputs(path, kind, rng, B=2, Nq=23, Nk=31, H=4, Hkv=2, D=8, layout="bnhd"):
    """q, k, v of the given kind; returns the float32 values fa_long must read, [B, N, heads, D].
    layout "bhnd" stores them as torch's [B, heads, N, D], with a root attribute layout = bhnd."""
    want = {}
    bhnd = layout == "bhnd"
    with h5py.File(path, "w") as f:
        if bhnd:
            f.attrs["layout"] = "bhnd"
        for name, n, h in (("q", Nq, H), ("k", Nk, Hkv), ("v", Nk, Hkv)):
            x = special_values(rng, (B, n, h, D))
            if bhnd:                   # what is stored; want gets it back as [B, N, heads, D]
                x = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
            extra = dict(chunks=(1, h, 5, D) if bhnd else (1, 5, h, D), compression="gzip",
                         shuffle=True) if kind.endswith("gzip") else {}
            if kind in ("bf16", "bf16be"):
                bits = write_bf16(f, name, x, big_endian=kind.endswith("be"))
                want[name] = (bits.astype(np.uint32) << 16).view(np.float32)
            elif kind.startswith("bf16"):
                bits = write_bf16_ints(f, name, x, np.dtype(INPUT_TYPES[kind]), **extra)
                want[name] = (bits.astype(np.uint32) << 16).view(np.float32)
            else:
                dt = np.dtype(INPUT_TYPES[kind])
                with np.errstate(over="ignore"):   # special values past float16's range: inf
                    stored = (x.astype(np.float64) * (1 + 2**-30) if dt.itemsize == 8 else x).astype(dt)
                f.create_dataset(name, data=stored, **extra)
                want[name] = stored.astype(np.float32)
            if bhnd:
                want[name] = np.ascontiguousarray(want[name].transpose(0, 2, 1, 3))
    return want


def same_bits(a, b):
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | both_nan))


@pytest.mark.parametrize("kind", list(INPUT_TYPES))
@pytest.mark.parametrize("nranks", [1, 3])
def test_h5py_inputs_read_right(exe, tmp_path, kind, nranks):
    rng = np.random.default_rng(7)
    inp = tmp_path / "in.h5"
    want = write_inputs(inp, kind, rng)
    p = run(exe, ["open", inp])
    assert p.returncode == 0 and p.stdout.startswith("OK B=2 Nq=23 Nk=31 H=4 Hkv=2 D=8"), p.stdout
    for name in ("q", "k", "v"):
        out = tmp_path / f"o_{name}.h5"
        p = run(exe, ["echo", inp, out, "float32", name], nranks=nranks, cap=100)
        assert p.returncode == 0, p.stdout + p.stderr
        with h5py.File(out, "r") as f:
            o, lse = f["o"][...], f["lse"][...]
        assert o.dtype == np.float32 and o.shape == want[name].shape
        assert same_bits(o, want[name]), f"{name}: values differ from h5py's"
        assert same_bits(lse, want[name][..., 0].transpose(0, 2, 1)), "lse not [B, H, N]"


@pytest.mark.parametrize("kind", ["f32", "f16be", "bf16", "f64", "f16gzip", "bf16i16be",
                                  "bf16i16gzip"])
@pytest.mark.parametrize("nranks", [1, 3])
def test_bhnd_read_and_written(exe, tmp_path, kind, nranks):
    """torch's [B, heads, N, D] (the root attribute says so): every rank's uneven shard of rows,
    transfers capped at 100 bytes, read into the same values as h5py's; o written in bhnd
    (q, k) and bnhd (v); lse [B, H, N] either way."""
    rng = np.random.default_rng(7)
    inp = tmp_path / "in.h5"
    want = write_inputs(inp, kind, rng, layout="bhnd")
    p = run(exe, ["open", inp])
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("OK B=2 Nq=23 Nk=31 H=4 Hkv=2 D=8"), p.stdout
    assert "layout=bhnd,bhnd,bhnd" in p.stdout, p.stdout
    for name, olay in (("q", "bhnd"), ("k", "bhnd"), ("v", "bnhd")):
        out = tmp_path / f"o_{name}.h5"
        p = run(exe, ["echo", inp, out, "float32", name, "auto", olay], nranks=nranks, cap=100)
        assert p.returncode == 0, p.stdout + p.stderr
        with h5py.File(out, "r") as f:
            o, lse = f["o"][...], f["lse"][...]
            assert f["o"].attrs["layout"] == olay
        if olay == "bhnd":
            assert o.shape == want[name].transpose(0, 2, 1, 3).shape
            o = o.transpose(0, 2, 1, 3)
        assert o.shape == want[name].shape
        assert same_bits(o, want[name]), f"{name}: values differ from h5py's"
        assert same_bits(lse, want[name][..., 0].transpose(0, 2, 1)), "lse not [B, H, N]"
    # the same file read as bnhd (--layout bnhd overrides the attribute, with a warning): q
    # [2, 4, 23, 8] then has 23 heads against k's 31, which the shape check refuses
    p = run(exe, ["echo", inp, tmp_path / "o.h5", "float32", "k", "bnhd", "bnhd"], nranks=nranks)
    assert p.returncode == 3 and "H=23 heads" in p.stdout and "Hkv=31" in p.stdout, p.stdout
    assert 'overrides the attribute layout = "bhnd" of the file\'s root' in p.stderr, p.stderr


# ---- o in every type, read back by h5py ---------------------------------------------------------
@pytest.mark.parametrize("otype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("nranks", [1, 3])
def test_output_types_read_by_h5py(exe, tmp_path, otype, nranks):
    rng = np.random.default_rng(11)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    want = write_inputs(inp, "f32", rng, B=2, Nq=41, H=3, Hkv=1, D=16)["q"]
    p = run(exe, ["echo", inp, out, otype, "q"], nranks=nranks, cap=200)
    warnings.filterwarnings("ignore", "overflow encountered in cast")
    assert p.returncode == 0, p.stdout + p.stderr
    with h5py.File(out, "r") as f:
        o = f["o"][...]
        attr = f["o"].attrs.get("dtype")
        tid = f["o"].id.get_type()
    finite = np.isfinite(want)
    if otype == "float32":
        assert o.dtype == np.float32 and same_bits(o, want)
    elif otype == "float64":
        assert o.dtype == np.float64 and same_bits(o.astype(np.float32), want)
    elif otype == "float16":
        ref = want.astype(np.float16)              # numpy: round to nearest even
        assert o.dtype == np.float16
        assert np.array_equal(o.view(np.uint16)[finite], ref.view(np.uint16)[finite])
        assert np.array_equal(np.isnan(o), np.isnan(want))
        assert np.array_equal(np.isinf(o), np.isinf(ref))   # 70000 overflows to inf
    else:
        assert attr in ("bfloat16", b"bfloat16"), attr
        assert tid.get_size() == 2 and tid.get_fields() == (15, 7, 8, 0, 7) and tid.get_ebias() == 127
        assert o.dtype == np.float32                # h5py reads the custom type as float32
        got = (o.view(np.uint32) >> 16).astype(np.uint16)
        assert np.all((o.view(np.uint32)[finite] & 0xFFFF) == 0), "bf16 read back exactly"
        ref = to_bf16_bits(want)
        assert np.array_equal(got[finite], ref[finite])
        assert np.array_equal(np.isnan(o), np.isnan(want))
        # the nearest-even property, checked in float64 against both neighbours
        x = want[finite].astype(np.float64).reshape(-1)
        g = got[finite].astype(np.int64).reshape(-1)
        val = lambda b: (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        ok_inf = np.isinf(val(g.astype(np.uint16)))
        e0 = np.abs(x - val(g.astype(np.uint16)))
        for d in (-1, 1):
            nb = ((g & 0x7FFF) + d).clip(0, 0x7F7F) | (g & 0x8000)
            e1 = np.abs(x - val(nb.astype(np.uint16)))
            assert np.all(ok_inf | (e0 < e1) | ((e0 == e1) & ((g & 1) == 0)) | (nb == g))


# ---- errors on files h5py writes ----------------------------------------------------------------
def h5py_bad_files(tmp_path):
    rng = np.random.default_rng(3)
    good = {n: rng.standard_normal(s).astype(np.float32)
            for n, s in (("q", (1, 8, 4, 16)), ("k", (1, 8, 2, 16)), ("v", (1, 8, 2, 16)))}
    cases = {}

    def case(tag, words, mutate):
        path = tmp_path / f"{tag}.h5"
        with h5py.File(path, "w") as f:
            d = dict(good)
            mutate(f, d)
            for n, x in d.items():
                if x is not None and n not in f:
                    f.create_dataset(n, data=x)
        cases[tag] = (path, words)

    case("string", ["'q'", "string"],
         lambda f, d: f.create_dataset("q", data=np.array([b"abc"] * 4).reshape(1, 1, 4, 1)))
    case("compound", ["'v'", "compound"], lambda f, d: d.update(
        v=np.zeros((1, 8, 2, 16), dtype=[("re", "<f4"), ("im", "<f4")])))
    case("complex", ["'v'", "compound"], lambda f, d: d.update(v=d["v"].astype(np.complex64)))
    hint = ['dtype = "bfloat16"', "16-bit HDF5 float type", "fa_long.write_inputs"]
    case("int", ["'k'", "integer"] + hint, lambda f, d: d.update(k=(d["k"] * 9).astype(np.int16)))
    # bf16 bit patterns without the attribute that says so stay refused, with the way that works
    case("uint16_no_dtype", ["'q'", "16-bit integer"] + hint, lambda f, d: f.create_dataset(
        "q", data=(d["q"].view(np.uint32) >> 16).astype(np.uint16)))
    case("int16_float16", ["'v'", "16-bit integer", '(attribute dtype = "float16")'] + hint,
         lambda f, d: (f.create_dataset("v", data=d["v"].astype(np.float16).view(np.int16)),
                       f["v"].attrs.__setitem__("dtype", "float16")))
    case("missing", ["'v'", "not found"], lambda f, d: d.update(v=None))
    case("rank5", ["'k'", "rank 5"], lambda f, d: d.update(k=d["k"][..., None]))
    case("scalar", ["'q'", "rank 0"], lambda f, d: f.create_dataset("q", data=1.0))
    case("group", ["'k'", "not a dataset"], lambda f, d: f.create_group("k"))
    case("empty", ["'k'", "empty"], lambda f, d: d.update(k=d["k"][:, :0], v=d["v"][:, :0]))
    case("layout_attr", ["'k'", "'layout' holds \"nhd\"", "bhnd"], lambda f, d: (
        f.create_dataset("k", data=d["k"]), f["k"].attrs.__setitem__("layout", "nhd")))
    case("layout_root", ["root attribute 'layout'", "not a string", "bnhd"],
         lambda f, d: f.attrs.__setitem__("layout", 2))
    return cases


def test_errors_on_h5py_files(exe, tmp_path):
    for tag, (path, words) in h5py_bad_files(tmp_path).items():
        p = run(exe, ["open", path])
        line = p.stdout.strip()
        assert p.returncode == 3 and line.startswith("ERR "), (tag, p.stdout, p.stderr)
        for w in [path.name] + words:
            assert w in line, f"{tag}: {w!r} not in {line!r}"
        assert "HDF5-DIAG" not in p.stdout + p.stderr, "HDF5's own error stack must be silenced"


@pytest.mark.parametrize("nranks", [2, 3])
def test_errors_agree_across_ranks(exe, tmp_path, nranks):
    cases = h5py_bad_files(tmp_path)
    path, words = cases["uint16_no_dtype"]
    p = run(exe, ["open", path], nranks=nranks)
    assert p.returncode != 0 and p.stdout.count("ERR ") == 1, p.stdout
    assert all(w in p.stdout for w in words), p.stdout


# ---- the C program's own multi-rank checks ------------------------------------------------------
@pytest.mark.parametrize("nranks", [2, 3])
def test_c_checks_multirank(exe, tmp_path, nranks):
    p = run(exe, ["mpi", tmp_path], nranks=nranks)
    tail = p.stdout[-3000:] + p.stderr[-2000:]
    assert p.returncode == 0 and " 0 failed" in p.stdout, tail
    assert "FAIL" not in p.stdout, tail


def test_c_unit_checks(exe):
    p = run(exe, [])
    assert p.returncode == 0 and " 0 failed" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]


# ---- bf16 stored as 16-bit integers, through the whole program ----------------------------------
def write_bf16_file(path, tensors, storage, layout):
    """q, k, v (float32 [B, N, heads, D], bf16 values) as bf16: storage "float" in the bf16 HDF5
    float type, else as bit patterns in the integer type INPUT_TYPES["bf16" + storage]."""
    with h5py.File(path, "w") as f:
        if layout == "bhnd":
            f.attrs["layout"] = "bhnd"
        for name, x in tensors.items():
            if layout == "bhnd":
                x = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
            if storage == "float":
                write_bf16(f, name, x)
                continue
            extra = dict(chunks=(1,) + x.shape[1:3] + (4,), compression="gzip",
                         shuffle=True) if storage.endswith("gzip") else {}
            write_bf16_ints(f, name, x, np.dtype(INPUT_TYPES["bf16" + storage]), **extra)


@pytest.mark.parametrize("storage,layout", [("u16", "bnhd"), ("i16be", "bhnd"),
                                            ("i16gzip", "bnhd")])
@pytest.mark.parametrize("nranks", [1, 3])
def test_bf16_integers_run(tmp_path, storage, layout, nranks):
    """A run on bf16 stored as 16-bit integers (with dtype = "bfloat16") gives, bit for bit, the
    output of the same values stored in the bf16 float type: o in that float type with its dtype
    attribute, lse; both against fp64; `fa_long check` passes on it."""
    rng = np.random.default_rng(5)
    t = {n: (to_bf16_bits(rng.standard_normal((2, n_, h, 16)).astype(np.float32))
             .astype(np.uint32) << 16).view(np.float32)
         for n, n_, h in (("q", 40, 4), ("k", 56, 2), ("v", 56, 2))}
    outs = {}
    for kind in ("float", storage):
        inp, out = tmp_path / f"in_{kind}.h5", tmp_path / f"out_{kind}.h5"
        write_bf16_file(inp, t, kind, layout)
        p = run_fa(["-i", inp, "-o", out, "--causal", "--lse", "--chunk", "16", "-q"], nranks=nranks)
        assert p.returncode == 0, p.stderr
        with h5py.File(out, "r") as f:
            tid = f["o"].id.get_type()
            assert tid.get_class() == h5py.h5t.FLOAT and tid.get_size() == 2
            assert tid.get_fields() == (15, 7, 8, 0, 7) and tid.get_ebias() == 127
            assert f["o"].attrs["dtype"] in ("bfloat16", b"bfloat16")
            outs[kind] = (f["o"][...], f["lse"][...])
    o, lse = outs[storage]
    assert np.array_equal(o.view(np.uint32), outs["float"][0].view(np.uint32)), "o differs"
    assert np.array_equal(lse.view(np.uint32), outs["float"][1].view(np.uint32)), "lse differs"
    o_ref, lse_ref = attention_f64(t["q"], t["k"], t["v"], causal=True)
    if layout == "bhnd":
        o = o.transpose(0, 2, 1, 3)
    assert rel_err(o, o_ref) <= 1.6e-2 and rel_err(lse, lse_ref) <= 1e-5
    c = run_fa(["check", "--input", tmp_path / f"in_{storage}.h5", "--output",
                tmp_path / f"out_{storage}.h5", "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
