"""fa_long.attention in process: the C library (libfa_long.so, lib/fa_long.h) through ctypes, on
the arrays themselves (no file, no subprocess). The library runs the command's pipeline on the CPU
engine, so o is the command's, bit for bit, given the same chunk, tile and threads.

The library is $FA_LONG_LIB, else the checkout's build/libfa_long.so (beside python/), else
libfa_long.so where the loader finds it; one whose descriptor is not this module's (another API
version) is not used.
"""
import ctypes
import ctypes.util
import os
import pathlib
import warnings

import numpy as np

from ._format import DTYPES, _check_shapes, _own_dtype, _table, bf16_bits, bf16_values
from ._launch import FaLongError, FaLongWarning
from ._tensors import as_numpy, is_tensor

API_VERSION = 2
FA_ENOMEM = 4    # lib/fa_long.h: the library could not get the memory (nothing of the call kept)
ELEM = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3}
# the options the library takes (the rest, e.g. env=, report=, backend="cuda", go to the command)
OPTIONS = {"causal", "window_size", "softcap", "scale", "softmax_scale", "alibi", "chunk",
           "threads", "tile", "mode", "out_dtype", "backend", "force"}


class FaLongMemoryError(FaLongError, MemoryError):
    """The library ran out of memory (FA_ENOMEM): a FaLongError with its line and code that is
    also a MemoryError; the interpreter goes on, and a smaller call may succeed."""


class Desc(ctypes.Structure):
    """fa_attn_desc (lib/fa_long.h, API version 2)."""
    _fields_ = [("batch", ctypes.c_int64), ("nq", ctypes.c_int64), ("nk", ctypes.c_int64),
                ("heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64),
                ("layout", ctypes.c_int), ("dtype", ctypes.c_int), ("scale", ctypes.c_double),
                ("causal", ctypes.c_int), ("window_left", ctypes.c_int64), ("window_right", ctypes.c_int64),
                ("softcap", ctypes.c_double), ("alibi_slopes", ctypes.c_void_p), ("ndocs", ctypes.c_int64),
                ("doc_rows", ctypes.c_int64), ("cu_seqlens_q", ctypes.c_void_p),
                ("cu_seqlens_k", ctypes.c_void_p), ("threads", ctypes.c_int),
                ("mode", ctypes.c_int), ("o_dtype", ctypes.c_int), ("chunk", ctypes.c_int64),
                ("tile_rows", ctypes.c_int), ("tile_keys", ctypes.c_int)]


_lib = []          # [the loaded library, or None]: looked for once


def library():
    """The loaded libfa_long.so of this API version, or None."""
    if _lib:
        return _lib[0]
    found = None
    here = pathlib.Path(__file__).resolve().parent.parent.parent / "build" / "libfa_long.so"
    for path in (os.environ.get("FA_LONG_LIB"), here if here.exists() else None,
                 ctypes.util.find_library("fa_long")):
        if not path:
            continue
        try:
            lib = ctypes.CDLL(str(path))
            lib.fa_attn_desc_sizeof.restype = ctypes.c_size_t
            if lib.fa_attn_desc_sizeof() != ctypes.sizeof(Desc):
                continue
        except (OSError, AttributeError):
            continue
        lib.fa_long_error.restype = ctypes.c_char_p
        lib.fa_attn_desc_init.argtypes = [ctypes.POINTER(Desc)]
        lib.fa_attention.argtypes = [ctypes.POINTER(Desc)] + [ctypes.c_void_p] * 5
        lib.h5in_doubt_bnhd.argtypes = [ctypes.POINTER(ctypes.c_int64)] * 3
        lib.h5in_doubt_text.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                        ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64),
                                        ctypes.c_char_p, ctypes.c_int]
        lib.mask_alibi_standard.argtypes = [ctypes.c_int, ctypes.c_void_p]
        found = lib
        break
    _lib.append(found)
    return found


def gpu_here(*arrays):
    """Whether the command's backend auto would take a GPU here (the library runs the CPU engine
    only): a tensor on a CUDA device, or an NVIDIA driver with devices not hidden by
    CUDA_VISIBLE_DEVICES."""
    if any("cuda" in str(getattr(x, "device", "")) for x in arrays):
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl")


def serves(ranks, workdir, options, q, k, v):
    """Whether attention can run in process: one process, no folder asked for, options the
    library takes, the CPU engine (backend="cpu", or auto where no GPU would be taken), arrays of
    floating values (or bfloat16 bits), the library found."""
    if ranks not in (1, None) or workdir is not None or not set(options) <= OPTIONS:
        return False
    backend = options.get("backend")
    if backend not in (None, "cpu", "auto"):
        return False
    if backend != "cpu" and gpu_here(q, k, v):   # the command's auto takes the GPU: so do we
        return False
    for x in (q, k, v):
        dt = str(getattr(x, "dtype", ""))
        if not any(t in dt for t in ("float", "bfloat16")):
            return False
    return library() is not None


def _dims(a):
    return (ctypes.c_int64 * 4)(*a.shape)


def _doubt(lib, arrays):
    """The command's layout doubt (README "Layout") on arrays given without a layout: refused
    with its line (FaLongError, exit status 2 as the command's), or warned of."""
    d = [_dims(arrays[n][0]) for n in "qkv"]
    why = lib.h5in_doubt_bnhd(*d)
    if why == 0:
        return
    names = (ctypes.c_char_p * 3)(b"q", b"k", b"v")
    buf = ctypes.create_string_buffer(600)
    lib.h5in_doubt_text(why, names, d[0], d[1], buf, 600)
    text = buf.value.decode()
    if why == 2:
        raise FaLongError(f"fa_long: attention: {text}; expected arrays that say their layout: give "
                          "layout='bhnd' if they are torch's (the command's --layout bhnd), "
                          "layout='bnhd' if they are [B, N, heads, D]", 2)
    warnings.warn(FaLongWarning(f"fa_long: warning: attention: {text}; if they are torch's, give "
                                "layout='bhnd' (the command's --layout bhnd); layout='bnhd' "
                                "silences this"), stacklevel=4)


def _offsets(tables, B):
    """cu_seqlens tables -> (ndocs, doc_rows, cu_q, cu_k) as int64 [doc_rows, ndocs+1]."""
    cq = tables.get("cu_seqlens_q", tables.get("cu_seqlens"))
    ck = tables.get("cu_seqlens_k", tables.get("cu_seqlens"))
    if cq is None and ck is None:
        return 0, 1, None, None
    if cq is None or ck is None:
        raise ValueError("cu_seqlens_q and cu_seqlens_k go together (or cu_seqlens for both)")
    cq, ck = (np.atleast_2d(np.asarray(c, dtype=np.int64)) for c in (cq, ck))
    if cq.shape[1] != ck.shape[1]:
        raise ValueError(f"cu_seqlens_q has {cq.shape[1] - 1} documents and cu_seqlens_k "
                         f"{ck.shape[1] - 1}; expected the same count")
    if cq.shape[0] != ck.shape[0]:      # one shared by every batch row, the other per row
        cq, ck = (np.ascontiguousarray(np.broadcast_to(c, (B, c.shape[1]))) for c in (cq, ck))
    return cq.shape[1] - 1, cq.shape[0], np.ascontiguousarray(cq), np.ascontiguousarray(ck)


def _buffer(a, bf16, dtype):
    """The array as the library takes it: contiguous, in dtype (bfloat16 as its bits)."""
    if dtype == "bfloat16":
        return np.ascontiguousarray(a if bf16 else bf16_bits(a))
    return np.ascontiguousarray(bf16_values(a) if bf16 else a, dtype=dtype)


def attention(q, k, v, *, layout, dtype, lse, cu_seqlens, cu_seqlens_q, cu_seqlens_k,
              alibi_slopes, options):
    """(o, lse or None) as numpy: o in the layout given (bnhd when None) and in out_dtype, else
    q's own type (bfloat16 as its bits, uint16); the library's error as FaLongError."""
    lib = library()
    arrays = {name: as_numpy(x, name) for name, x in (("q", q), ("k", k), ("v", v))}
    _check_shapes({n: tuple(a.shape) for n, (a, _) in arrays.items()}, layout,
                  tensors=any(is_tensor(x) for x in (q, k, v)))
    if layout is None:
        _doubt(lib, arrays)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)} or None")
    own = {_own_dtype(a, bf) for a, bf in arrays.values()}
    t = dtype or (own.pop() if len(own) == 1 else "float32")
    qb, kb, vb = (_buffer(a, bf, t) for a, bf in arrays.values())
    bhnd = layout == "bhnd"
    B, Nq, H, D = (qb.shape[0], qb.shape[2], qb.shape[1], qb.shape[3]) if bhnd else qb.shape
    Nk, Hkv = (kb.shape[2], kb.shape[1]) if bhnd else (kb.shape[1], kb.shape[2])
    d = Desc()
    lib.fa_attn_desc_init(ctypes.byref(d))
    d.batch, d.nq, d.nk, d.heads, d.kv_heads, d.head_dim = B, Nq, Nk, H, Hkv, D
    d.layout, d.dtype = int(bhnd), ELEM[t]
    d.causal = int(bool(options.get("causal")))
    left, right = options.get("window_size") or (-1, -1)
    d.window_left = -1 if left is None or left < 0 else int(left)
    d.window_right = -1 if right is None or right < 0 else int(right)
    d.softcap = float(options.get("softcap") or 0.0)
    d.scale = float(options.get("softmax_scale") or options.get("scale") or 0.0)
    d.chunk = int(options.get("chunk") or 0)
    d.threads = int(options.get("threads") or 0)
    tile = options.get("tile")
    if tile:
        br, bc = (tile.lower().split("x") if isinstance(tile, str) else tile)
        d.tile_rows, d.tile_keys = int(br), int(bc)
    mode = options.get("mode") or "exact"
    if mode not in ("exact", "taylor"):
        raise ValueError(f"mode {mode!r}: expected 'exact' or 'taylor'")
    d.mode = int(mode == "taylor")
    out_t = options.get("out_dtype") or (t if t in ("float16", "bfloat16") else "float32")
    if out_t not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"out_dtype {out_t!r}: expected float32, float16 or bfloat16")
    d.o_dtype = ELEM[out_t]
    tables = {n: _table(n, x) for n, x in (("cu_seqlens", cu_seqlens), ("cu_seqlens_q", cu_seqlens_q),
                                           ("cu_seqlens_k", cu_seqlens_k),
                                           ("alibi_slopes", alibi_slopes)) if x is not None}
    ndocs, rows, cq, ck = _offsets(tables, B)
    if ndocs:
        d.ndocs, d.doc_rows = ndocs, rows
        d.cu_seqlens_q, d.cu_seqlens_k = cq.ctypes.data, ck.ctypes.data
    slopes = tables.get("alibi_slopes")
    if slopes is None and options.get("alibi"):
        slopes = np.empty(H, dtype=np.float32)          # the command's standard slopes
        lib.mask_alibi_standard(H, slopes.ctypes.data)
    if slopes is not None:
        slopes = np.ascontiguousarray(slopes, dtype=np.float32)
        if slopes.shape != (H,):
            raise ValueError(f"alibi_slopes has shape {list(slopes.shape)}; expected [{H}]")
        d.alibi_slopes = slopes.ctypes.data
    o = np.empty(qb.shape, dtype={"float32": np.float32, "float16": np.float16,
                                  "bfloat16": np.uint16}[out_t])
    ls = np.empty((B, H, Nq), dtype=np.float32) if lse else None
    rc = lib.fa_attention(ctypes.byref(d), qb.ctypes.data, kb.ctypes.data, vb.ctypes.data,
                          o.ctypes.data, ls.ctypes.data if lse else None)
    if rc:
        raise (FaLongMemoryError if rc == FA_ENOMEM else FaLongError)(lib.fa_long_error().decode(), rc)
    return o, out_t, ls
