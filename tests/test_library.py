"""The C library (issue #19 item 4, lib/fa_long.h): `make install PREFIX=...` puts the command,
libfa_long.{so,a}, fa_long.h and fa_long.pc in place; a user's MPI program built with pkg-config
(tests/lib/use_fa_long.c) checks itself against its own fp64 attention on 1 and 3 ranks with
uneven key shards; and Python's ctypes calls fa_attention on numpy buffers (torch's bhnd layout,
bf16 bits, GQA, causal with Nq != Nk, documents, softcap and ALiBi) against tests/mask_reference.py,
with its errors as a return code and one line; libfa_long.so needs no CUDA library to load, even
from a build with CUDA (issue 27). Issue 26: the library runs the command's pipeline on buffers
(tests/lib/lib_run.c drives it on 1 and 3 ranks): bit for bit the command's o and lse on the same
arrays, chunk, tile and threads; fp64 checks of fresh inputs; errors that return, never abort."""
import ctypes
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUILD, FA_LONG, ROOT, mpirun_cmd
from mask_reference import masked_f64, std_slopes
from reference import from_bf16_bits, random_inputs, to_bf16_bits


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    p = tmp_path_factory.mktemp("inst")
    r = subprocess.run(["make", "--no-print-directory", "install", f"PREFIX={p}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return p


def test_install_layout(prefix):
    for f in ("bin/fa_long", "lib/libfa_long.so", "lib/libfa_long.a", "include/fa_long.h",
              "lib/pkgconfig/fa_long.pc"):
        assert (prefix / f).exists(), f
    r = subprocess.run([str(prefix / "bin" / "fa_long"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("fa_long ")


@pytest.mark.parametrize("nranks", [1, 3])
def test_user_program_through_pkg_config(prefix, tmp_path, nranks):
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fa_long"], capture_output=True,
                           text=True, env=env, check=True).stdout.split()
    exe = tmp_path / "use_fa_long"
    r = subprocess.run(["mpicc", "-O2", str(ROOT / "tests" / "lib" / "use_fa_long.c"), "-o", str(exe)]
                       + flags + ["-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(mpirun_cmd(nranks) + [str(exe)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and "use_fa_long: ok" in r.stdout, r.stdout + r.stderr


def needed(path):
    """The shared libraries an ELF file names (DT_NEEDED)."""
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_shared_library_needs_no_cuda():
    """libfa_long.so computes on the CPU engine: built with CUDA or not, it names neither libcudart
    nor libnccl (nor libcuda) and loads in a process that has none of them; ./fa_long of a CUDA
    build keeps them for its GPU engine."""
    cuda = ("libcudart", "libnccl", "libcuda.")
    so = needed(BUILD / "libfa_long.so")
    assert so and not [n for n in so if n.startswith(cuda)], so
    version = subprocess.run([str(FA_LONG), "--version"], capture_output=True, text=True).stdout
    if "CUDA: yes" in version:
        assert [n for n in needed(FA_LONG) if n.startswith("libcudart")], needed(FA_LONG)
    code = ("import ctypes, sys; l = ctypes.CDLL(sys.argv[1]); l.fa_long_version.restype = "
            "ctypes.c_char_p; print(l.fa_long_version().decode()); "
            "print(open('/proc/self/maps').read())")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    r = subprocess.run([sys.executable, "-c", code, str(BUILD / "libfa_long.so")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("fa_long "), r.stdout + r.stderr
    assert not re.search(r"/(libcudart|libnccl|libcuda)\.so", r.stdout), r.stdout


sys.path.insert(0, str(ROOT / "python"))
from fa_long._inproc import Desc  # noqa: E402  (fa_attn_desc, laid out once for Python)


@pytest.fixture(scope="module")
def lib():
    so = ctypes.CDLL(str(BUILD / "libfa_long.so"))
    so.fa_attn_desc_sizeof.restype = ctypes.c_size_t
    assert so.fa_attn_desc_sizeof() == ctypes.sizeof(Desc)
    so.fa_long_error.restype = ctypes.c_char_p
    so.fa_attention.argtypes = [ctypes.POINTER(Desc)] + [ctypes.c_void_p] * 5
    return so


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def call(lib, desc, q, k, v, lse=True):
    B, H, Nq, D = desc.batch, desc.heads, desc.nq, desc.head_dim
    o = np.full((B, H, Nq, D) if desc.layout else (B, Nq, H, D), np.nan, dtype=np.float32)
    ls = np.full((B, H, Nq), np.nan, dtype=np.float32)
    rc = lib.fa_attention(ctypes.byref(desc), ptr(q), ptr(k), ptr(v), ptr(o), ptr(ls) if lse else None)
    return rc, o, ls


def test_ctypes_bhnd_bf16_masks(lib):
    rng = np.random.default_rng()
    B, Nq, Nk, H, Hkv, D = 2, 90, 143, 6, 2, 48
    q, k, v = (from_bf16_bits(to_bf16_bits(x)) for x in random_inputs(rng, B, Nq, Nk, H, Hkv, D, 2.0))
    cq = np.array([[0, 30, 30, 90], [0, 1, 50, 90]], dtype=np.int64)
    ck = np.array([[0, 60, 61, 143], [0, 40, 100, 143]], dtype=np.int64)
    slopes = np.asarray(std_slopes(H), dtype=np.float32)
    lib.fa_attn_desc_init.argtypes = [ctypes.POINTER(Desc)]
    d = Desc()
    lib.fa_attn_desc_init(ctypes.byref(d))
    assert d.window_left == -1 and d.doc_rows == 1
    d.batch, d.nq, d.nk, d.heads, d.kv_heads, d.head_dim = B, Nq, Nk, H, Hkv, D
    d.layout, d.dtype, d.causal, d.window_left, d.softcap = 1, 2, 1, 20, 7.5
    d.alibi_slopes, d.ndocs, d.doc_rows = slopes.ctypes.data, 3, 2
    d.cu_seqlens_q, d.cu_seqlens_k = cq.ctypes.data, ck.ctypes.data
    tb = lambda x: np.ascontiguousarray(to_bf16_bits(x.transpose(0, 2, 1, 3)))     # bhnd bf16 bits
    rc, o, lse = call(lib, d, tb(q), tb(k), tb(v))
    assert rc == 0, lib.fa_long_error()
    ro, rlse, kappa = masked_f64(q, k, v, 20, 0, cq, ck, softcap=7.5, slopes=slopes.astype(np.float64))
    got = o.transpose(0, 2, 1, 3)
    tol = max(1e-5, 8 * 2.0 ** -24 * kappa)
    assert np.abs(got - ro).max() / np.abs(ro).max() <= tol
    seen = np.isfinite(rlse)
    assert np.array_equal(np.isfinite(lse), seen)
    assert np.abs(lse[seen] - rlse[seen]).max() <= tol * max(1, np.abs(rlse[seen]).max())


def test_ctypes_bnhd_float32_plain_and_errors(lib):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 70, 50, 4, 1, 32)
    d = Desc()
    lib.fa_attn_desc_init(ctypes.byref(d))
    d.batch, d.nq, d.nk, d.heads, d.kv_heads, d.head_dim, d.causal = 1, 70, 50, 4, 1, 32, 1
    rc, o, lse = call(lib, d, q, k, v)
    assert rc == 0
    ro, rlse, _ = masked_f64(q, k, v, -1, 0)
    assert np.abs(o - ro).max() / np.abs(ro).max() <= 1e-5
    assert (o[0, :20] == 0).all() and np.isinf(lse[0, :, :20]).all()    # rows before the keys
    d.kv_heads = 3
    rc, _, _ = call(lib, d, q, k, v)
    assert rc == 2 and b"heads 4 is not a multiple of kv_heads 3" in lib.fa_long_error()
    d.kv_heads, d.window_left = 1, -2
    rc, _, _ = call(lib, d, q, k, v)
    assert rc == 2 and b"window sides -2,-1" in lib.fa_long_error()
    d.window_left = -1
    bad = np.array([0, 40, 30, 70], dtype=np.int64)           # a decreasing offset table
    good = np.array([0, 20, 30, 50], dtype=np.int64)
    d.ndocs, d.cu_seqlens_q, d.cu_seqlens_k = 3, bad.ctypes.data, good.ctypes.data
    rc, _, _ = call(lib, d, q, k, v)
    assert rc == 2 and b"cu_seqlens_q decreases at index 2" in lib.fa_long_error(), lib.fa_long_error()
    d.ndocs = 0
    rc = lib.fa_attention(ctypes.byref(d), None, ptr(k), ptr(v), ptr(o), None)
    assert rc == 2 and b"q is NULL" in lib.fa_long_error()


# ---- the library on the command's pipeline (issue 26, items 1 and 2) ---------------------------
# The library runs the command's pipeline with buffers as its source and sink: on the same inputs,
# chunk, tile and threads its o and lse are the command's bit for bit, on one rank and on three.
# tests/lib/lib_run.c runs it on arrays in files (fa_attention, or fa_attention_mpi under mpirun).
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3}


@pytest.fixture(scope="module")
def lib_run(tmp_path_factory):
    exe = tmp_path_factory.mktemp("librun") / "lib_run"
    r = subprocess.run(["mpicc", "-O2", "-I", str(ROOT / "lib"), str(ROOT / "tests" / "lib" / "lib_run.c"),
                        "-o", str(exe), "-L", str(BUILD), f"-Wl,-rpath,{BUILD}", "-lfa_long"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def as_raw(x, dtype, bhnd):
    """[B, N, heads, D] values -> the bytes of the tensor in the layout and element type."""
    x = np.ascontiguousarray(x.transpose(0, 2, 1, 3) if bhnd else x)
    if dtype == "bfloat16":
        return to_bf16_bits(x.astype(np.float32)).tobytes()
    return x.astype(dtype).tobytes()


def from_raw(buf, dtype, shape, bhnd):
    """o's bytes (float32, float16 or bfloat16 bits) -> float32 [B, Nq, H, D]."""
    B, N, H, D = shape
    if dtype == "bfloat16":
        x = from_bf16_bits(np.frombuffer(buf, dtype=np.uint16))
    else:
        x = np.frombuffer(buf, dtype=dtype).astype(np.float32)
    x = x.reshape((B, H, N, D) if bhnd else (B, N, H, D))
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3) if bhnd else x)


def library(exe, folder, q, k, v, nranks=1, dtype="float32", bhnd=False, o_dtype="float32",
            slopes=None, cu=None, root=-1, api="one", **desc):
    """Runs lib_run; returns (returncode, stderr, {rank: (o [B,Nq,H,D] float32, lse)})."""
    folder.mkdir(exist_ok=True)
    for f in folder.glob("*.bin"):
        f.unlink()
    for name, x in (("q", q), ("k", k), ("v", v)):
        (folder / f"{name}.bin").write_bytes(as_raw(x, dtype, bhnd))
    B, Nq, H, D = q.shape
    args = dict(batch=B, nq=Nq, nk=k.shape[1], heads=H, kv_heads=k.shape[2], head_dim=D,
                layout=int(bhnd), dtype=DTYPES[dtype], o_dtype=DTYPES[o_dtype], root=root)
    if slopes is not None:
        (folder / "slopes.bin").write_bytes(np.asarray(slopes, dtype=np.float32).tobytes())
        args["alibi"] = 1
    if cu is not None:
        cq, ck = (np.atleast_2d(np.asarray(c, dtype=np.int64)) for c in cu)
        (folder / "cu_q.bin").write_bytes(cq.tobytes())
        (folder / "cu_k.bin").write_bytes(ck.tobytes())
        args.update(ndocs=cq.shape[1] - 1, doc_rows=cq.shape[0])
    args.update(desc)
    cmd = mpirun_cmd(nranks) + [str(exe), str(folder)] + [f"{a}={b}" for a, b in args.items()] + [f"api={api}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1" if nranks > 1 else "2"))
    out = {}
    for f in folder.glob("o*.bin"):
        rank = int(f.stem[1:])
        lse = np.frombuffer((folder / f"lse{rank}.bin").read_bytes(), dtype=np.float32)
        out[rank] = (from_raw(f.read_bytes(), o_dtype, q.shape, bhnd), lse.reshape(B, H, Nq))
    return r.returncode, r.stderr, out


def command(tmp_path, q, k, v, nranks, dtype, args, slopes=None, cu=None):
    """The command on an HDF5 file of the same values (bnhd); returns o as float32 and lse."""
    import h5py
    from mask_reference import write_masked
    tables = {}
    if slopes is not None:
        tables["alibi_slopes"] = np.asarray(slopes, dtype=np.float32)
    if cu is not None:
        tables["cu_seqlens_q"], tables["cu_seqlens_k"] = (np.asarray(c, dtype=np.int64) for c in cu)
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_masked(inp, q, k, v, dtype=dtype, **tables)
    cmd = mpirun_cmd(nranks) + [str(FA_LONG), "--input", str(inp), "--output", str(out), "--lse",
                                "--force", "--backend", "cpu"] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1" if nranks > 1 else "2"))
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        return f["o"][...].astype(np.float32), f["lse"][...]


def same_bits(a, b):
    return a.shape == b.shape and np.array_equal(np.ascontiguousarray(a, dtype=np.float32).view(np.uint32),
                                                 np.ascontiguousarray(b, dtype=np.float32).view(np.uint32))


@pytest.mark.parametrize("case", ["masks_bf16_bhnd", "causal_f16_gqa", "mpi3_mqa", "taylor_causal"])
def test_library_bit_identical_to_command(tmp_path, lib_run, case):
    """The same arrays through the command (HDF5 file, mpirun) and through the library (buffers):
    o and lse equal bit for bit, with the same chunk, tile and threads."""
    rng = np.random.default_rng()
    slopes = cu = None
    lib_args, cmd_args, nranks, dtype, o_dtype, bhnd = {}, [], 1, "float32", "float32", False
    if case == "masks_bf16_bhnd":          # every mask at once, bf16 in and out, bhnd buffers
        B, Nq, Nk, H, Hkv, D = 2, 150, 211, 6, 2, 40
        dtype = o_dtype = "bfloat16"
        bhnd = True
        slopes = np.asarray(std_slopes(H), dtype=np.float32) * 0.5
        cu = ([[0, 50, 51, 150], [0, 10, 90, 150]], [[0, 70, 72, 211], [0, 100, 101, 211]])
        lib_args = dict(causal=1, window_left=30, softcap=8.0)
        cmd_args = ["--causal", "--window-size", "30,0", "--softcap", "8", "--alibi"]
    elif case == "causal_f16_gqa":         # float16 in, float32 out, causal with Nq > Nk
        B, Nq, Nk, H, Hkv, D = 1, 301, 173, 8, 2, 24
        dtype = "float16"
        lib_args = dict(causal=1)
        cmd_args = ["--causal", "--out-dtype", "float32"]
    elif case == "mpi3_mqa":               # 3 ranks, 211 keys, MQA, causal, the merges over ranks
        B, Nq, Nk, H, Hkv, D = 2, 190, 211, 4, 1, 32
        nranks = 3
        lib_args = dict(causal=1)
        cmd_args = ["--causal", "--shard", "contiguous"]
    else:                                  # the Taylor engine
        B, Nq, Nk, H, Hkv, D = 1, 130, 130, 4, 2, 32
        lib_args = dict(causal=1, mode=1)
        cmd_args = ["--causal", "--mode", "taylor"]
    q, k, v = random_inputs(rng, B, Nq, Nk, H, Hkv, D, 1.5)
    if dtype == "bfloat16":
        q, k, v = (from_bf16_bits(to_bf16_bits(x)) for x in (q, k, v))
    elif dtype == "float16":
        q, k, v = (x.astype(np.float16).astype(np.float32) for x in (q, k, v))
    threads = 1 if nranks > 1 else 2
    cmd_args += ["--chunk", "37", "--tile", "8x64", "--threads", threads]
    lib_args.update(chunk=37, tile_rows=8, tile_keys=64, threads=threads)
    co, clse = command(tmp_path, q, k, v, nranks, dtype, cmd_args, slopes, cu)
    rc, err, out = library(lib_run, tmp_path / "lib", q, k, v, nranks, dtype, bhnd, o_dtype, slopes,
                           cu, api="mpi" if nranks > 1 else "one", **lib_args)
    assert rc == 0, err
    assert sorted(out) == list(range(nranks))           # root -1: o and lse on every rank
    for rank, (o, lse) in out.items():
        assert same_bits(o, co), f"rank {rank}: o differs from the command's"
        assert same_bits(lse, clse), f"rank {rank}: lse differs from the command's"


U = 2.0 ** -24


def assert_fp64(o, lse, ref, extra=0.0, what=""):
    """o and lse against the fp64 reference (tests/mask_reference.py's tolerance, plus `extra`
    for o rounded to 16 bits); rows that see no key: o = 0, lse = -inf."""
    ro, rlse, kappa = ref
    tol = max(1e-5, 8 * U * kappa)
    assert np.abs(o - ro).max() / np.abs(ro).max() <= tol + extra, what
    seen = np.isfinite(rlse)
    assert np.array_equal(np.isfinite(lse), seen), what
    if seen.any():
        assert (np.abs(lse[seen] - rlse[seen]) / np.maximum(1, np.abs(rlse[seen]))).max() <= tol, what
    assert (o[~seen.transpose(0, 2, 1)] == 0).all(), what


FP64_CASES = {
    # name: (B, Nq, Nk, H, Hkv, D, dtype, bhnd, o_dtype, nranks, root, mask)
    "f16_mqa_window_nq_gt_nk": (1, 97, 61, 5, 1, 24, "float16", False, "float32", 1, -1,
                                dict(window=(7, 9))),
    "f64_bhnd_gqa_full": (2, 70, 150, 6, 3, 72, "float64", True, "float32", 1, -1, {}),
    "f32_docs_softcap_alibi": (2, 123, 123, 4, 2, 40, "float32", False, "float32", 1, -1,
                               dict(docs=True, softcap=5.0, alibi=True)),
    "bf16_bhnd_causal_window_o_bf16": (1, 45, 190, 6, 2, 56, "bfloat16", True, "bfloat16", 1, -1,
                                       dict(window=(50, 0))),
    "mpi3_gqa_causal_root1": (2, 88, 211, 6, 2, 32, "float32", True, "float32", 3, 1,
                              dict(window=(-1, 0))),
    "mpi3_docs_window_all": (1, 160, 211, 4, 4, 48, "bfloat16", False, "float32", 3, -1,
                             dict(docs=True, window=(25, 3))),
}


@pytest.mark.parametrize("name", list(FP64_CASES))
def test_library_against_fp64(tmp_path, lib_run, name):
    """Fresh random inputs of shapes that are not powers of two, through fa_attention (one
    process) or fa_attention_mpi on 3 ranks (211 keys: uneven shards), against fp64."""
    B, Nq, Nk, H, Hkv, D, dtype, bhnd, o_dtype, nranks, root, mask = FP64_CASES[name]
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, B, Nq, Nk, H, Hkv, D, 2.0)
    if dtype == "bfloat16":
        q, k, v = (from_bf16_bits(to_bf16_bits(x)) for x in (q, k, v))
    elif dtype == "float16":
        q, k, v = (x.astype(np.float16).astype(np.float32) for x in (q, k, v))
    left, right = mask.get("window", (-1, -1))
    desc = dict(window_left=left, window_right=right, softcap=mask.get("softcap", 0.0))
    cu = slopes = None
    if mask.get("docs"):
        cq = np.sort(rng.integers(0, Nq + 1, size=(B, 3)), axis=1)
        ck = np.sort(rng.integers(0, Nk + 1, size=(B, 3)), axis=1)
        cu = tuple(np.concatenate([np.zeros((B, 1), np.int64), c, np.full((B, 1), n, np.int64)], axis=1)
                   for c, n in ((cq, Nq), (ck, Nk)))
    if mask.get("alibi"):
        slopes = np.asarray(std_slopes(H), dtype=np.float32)
    rc, err, out = library(lib_run, tmp_path / "lib", q, k, v, nranks, dtype, bhnd, o_dtype, slopes,
                           cu, root=root, api="mpi" if nranks > 1 else "one", **desc)
    assert rc == 0, err
    assert sorted(out) == ([root] if root >= 0 else list(range(nranks)))
    ref = masked_f64(q, k, v, left, right, *(cu if cu is not None else (None, None)),
                     softcap=desc["softcap"],
                     slopes=None if slopes is None else slopes.astype(np.float64))
    for rank, (o, lse) in out.items():
        assert_fp64(o, lse, ref, 2.0 ** -8 if o_dtype != "float32" else 0.0, f"{name}, rank {rank}")


def test_library_errors_return(tmp_path, lib, lib_run):
    """Bad inputs and descriptors give FA_EINVAL and one line, and the caller goes on: a NaN in k
    (named by its index in the caller's layout), Taylor with a window, a float64 o; on 3 ranks
    every rank returns the same code and the line of the rank that holds the NaN."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 40, 50, 4, 2, 16)
    kb = np.ascontiguousarray(k.transpose(0, 2, 1, 3))          # bhnd: [B, Hkv, Nk, D]
    kb[0, 1, 33, 5] = np.nan
    vb = np.ascontiguousarray(v.transpose(0, 2, 1, 3))
    qb = np.ascontiguousarray(q.transpose(0, 2, 1, 3))
    d = Desc()
    lib.fa_attn_desc_init(ctypes.byref(d))
    d.batch, d.nq, d.nk, d.heads, d.kv_heads, d.head_dim, d.layout = 1, 40, 50, 4, 2, 16, 1
    rc, o, _ = call(lib, d, qb, kb, vb)
    assert rc == 2, lib.fa_long_error()
    assert lib.fa_long_error() == (b"fa_long: fa_attention: k has NaN at [0, 1, 33, 5] (its "
                                   b"[B, heads, N, D] index); expected finite values")
    kb[0, 1, 33, 5] = 1.0
    rc, o, _ = call(lib, d, qb, kb, vb)                         # the process goes on
    assert rc == 0 and np.isfinite(o).all()
    d.mode, d.window_left = 1, 10
    rc, _, _ = call(lib, d, qb, kb, vb)
    assert rc == 2 and b"FA_MODE_TAYLOR computes full or causal attention only" in lib.fa_long_error()
    d.mode, d.window_left, d.o_dtype = 0, -1, 3
    rc, _, _ = call(lib, d, qb, kb, vb)
    assert rc == 2 and b"o_dtype 3 is not" in lib.fa_long_error()
    # 3 ranks: keys [33, 50) on rank 2; the NaN at key 40, row 7 of that rank's shard
    k2 = k.copy()
    k2[0, 40, 1, 2] = np.inf
    rc, err, out = library(lib_run, tmp_path / "lib", q, k2, v, 3, api="mpi")
    assert rc == 2 and not out, err
    lines = [l for l in err.splitlines() if l.startswith("rank ")]
    assert len(lines) == 3, err
    for l in lines:
        assert l.endswith("rc 2: fa_long: fa_attention_mpi: rank 2's k has +Inf at [0, 7, 1, 2] "
                          "(its [B, N, heads, D] index; key position 40); expected finite values"), l


# ---- out of memory: a return code, never the end of the caller (issue 26, item 1) ------------------
# tests/lib/oom_child.py calls the library in a process of its own under an address-space limit
# (RLIMIT_AS, set after a first call), raised in steps until the job fits; glibc is told to map
# every buffer on its own, so the process's VmSize says what a failed call still holds.
OOM_LINE = re.compile(r"fa_long: fa_attention: out of memory allocating \d+( x \d+)? bytes for (.+)")


def oom_child(*args):
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "lib" / "oom_child.py"), *args],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stdout + r.stderr          # the process lived through every call
    return json.loads(r.stdout.splitlines()[-1])


def test_library_out_of_memory_returns():
    """Every call that cannot get its memory returns FA_ENOMEM (4) with the line naming the
    buffer, wherever the limit meets it: the pipeline's key and value shards, query and output
    chunks, the exact engine's merge records, the Taylor engine's states; the call keeps nothing
    (VmSize within 4 MiB of before: every one of those buffers is 16 MiB or more); the same job
    without a limit runs in the same process; and a later call's o is right against the fp64
    reference."""
    r = oom_child("ctypes", str(BUILD / "libfa_long.so"))
    assert r["first"] == 0 and r["warm"] == 0, r
    sites = {"exact": {"key shard", "value shard", "query chunk", "output chunk", "partials"},
             "taylor": {"taylor tile states", "taylor tile deltas"}}
    for job, want in sites.items():
        calls, ran = r[job]
        assert ran["rc"] == 0, (job, calls[-3:], ran)
        seen = set()
        for c in calls:
            m = OOM_LINE.fullmatch(c["line"])
            assert c["rc"] == 4 and m, (job, c)
            assert abs(c["grew"]) < 4 << 20, (job, c)
            seen.add(m.group(2))
        assert want <= seen, (job, seen)
    assert r["exact"][1]["zero"]       # zeros, each query seeing one key: o 0, lse 0
    assert r["last"] == 0 and r["err"] < 1e-5, r


def test_library_out_of_memory_on_one_rank(tmp_path, lib_run):
    """fa_attention_mpi on 3 ranks, rank 1's address space limited to 2 MiB past what it maps
    (tests/lib/lib_run.c oom_rank, oom_margin) while a query chunk takes 4 MiB: every rank
    returns FA_ENOMEM with rank 1's line; no rank is left waiting; the same ranks' next call,
    the limit lifted, is right against fp64 on every rank."""
    B, Nq, Nk, H, Hkv, D = 1, 2048, 96, 8, 2, 64        # a query chunk: Nq * H * D * 4 = 4 MiB
    q, k, v = random_inputs(np.random.default_rng(), B, Nq, Nk, H, Hkv, D)
    rc, err, out = library(lib_run, tmp_path / "lib", q, k, v, 3, api="mpi", oom_rank=1,
                           oom_margin=2 << 20)
    assert rc == 0, err
    first = sorted(l for l in err.splitlines() if " first call " in l)
    assert [l.split(":")[0] for l in first] == ["rank 0", "rank 1", "rank 2"], err
    for l in first:
        assert re.fullmatch(r"rank \d: first call rc 4: fa_long: fa_attention_mpi: out of memory "
                            rf"allocating {Nq * H * D * 4} bytes for query chunk", l), l
    assert sorted(out) == [0, 1, 2]
    ref = masked_f64(q, k, v, -1, -1, None, None)
    for rank, (o, lse) in out.items():
        assert_fp64(o, lse, ref, 0.0, f"rank {rank}")
