"""The C library (issue #19 item 4, lib/fa_long.h): `make install PREFIX=...` puts the command,
libfa_long.{so,a}, fa_long.h and fa_long.pc in place; a user's MPI program built with pkg-config
(tests/lib/use_fa_long.c) checks itself against its own fp64 attention on 1 and 3 ranks with
uneven key shards; and Python's ctypes calls fa_attention on numpy buffers (torch's bhnd layout,
bf16 bits, GQA, causal with Nq != Nk, documents, softcap and ALiBi) against tests/mask_reference.py,
with its errors as a return code and one line; libfa_long.so needs no CUDA library to load, even
from a build with CUDA (issue 27)."""
import ctypes
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


class Desc(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("nq", ctypes.c_int64), ("nk", ctypes.c_int64),
                ("heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64),
                ("layout", ctypes.c_int), ("dtype", ctypes.c_int), ("scale", ctypes.c_double),
                ("causal", ctypes.c_int), ("window_left", ctypes.c_int64), ("window_right", ctypes.c_int64),
                ("softcap", ctypes.c_double), ("alibi_slopes", ctypes.c_void_p), ("ndocs", ctypes.c_int64),
                ("doc_rows", ctypes.c_int64), ("cu_seqlens_q", ctypes.c_void_p),
                ("cu_seqlens_k", ctypes.c_void_p), ("threads", ctypes.c_int)]


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
