"""fa_long from Python: exact attention for long sequences through the fa_long program.

    import fa_long
    fa_long.write_inputs("in.h5", q, k, v, layout="bhnd")        # numpy arrays or torch tensors
    res = fa_long.run("in.h5", "out.h5", ranks=4, causal=True, lse=True)
    o, lse = fa_long.read_output(res)                            # float32, o in the file's layout

    o = fa_long.attention(q, k, v, layout="bhnd", causal=True)   # in process (libfa_long.so)

Needs numpy and h5py; torch only for torch tensors. The program is $FA_LONG, else the checkout's
./fa_long (beside python/), else fa_long on PATH; mpirun is Open MPI's. The library attention()
calls in process is $FA_LONG_LIB, else the checkout's build/libfa_long.so, else libfa_long.so.
"""
import contextlib
import pathlib
import tempfile

import numpy as np

from . import _inproc
from ._format import (bf16_bits, bf16_type, bf16_values, output_layout, read_output,
                      write_inputs)
from ._tensors import to_torch
from ._launch import (FaLongError, FaLongWarning, Result, check, command_line, find_binary, run,
                      to_flags)

__version__ = "0.1.0"
__all__ = ["write_inputs", "read_output", "run", "check", "attention", "FaLongError",
           "FaLongWarning", "Result",
           "command_line", "to_flags", "find_binary", "output_layout", "bf16_bits", "bf16_values",
           "bf16_type"]


@contextlib.contextmanager
def _folder(workdir):
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fa_long_") as d:
            yield pathlib.Path(d)
    else:
        pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
        yield pathlib.Path(workdir)


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def _q_type(x):
    """q's element type as a name (float32, float16, float64, bfloat16), or None."""
    name = str(getattr(x, "dtype", "")).replace("torch.", "")
    return name if name in ("float32", "float16", "float64", "bfloat16") else None


def _returned(o, o_type, q, out_dtype, torch):
    """o (numpy, float32 values or, for bfloat16, its bits when o_type says so) in the type asked
    (out_dtype, else q's own) and kind (numpy, or a torch tensor on q's device)."""
    want = out_dtype or _q_type(q) or "float32"
    if o_type == "bfloat16" and not (torch and want == "bfloat16"):
        o = bf16_values(o)
    if torch:
        import torch as _t
        if want == "bfloat16":
            t = (_t.from_numpy(np.ascontiguousarray(o).view(np.int16)).view(_t.bfloat16)
                 if o_type == "bfloat16" else _t.from_numpy(np.ascontiguousarray(o)).to(_t.bfloat16))
        else:
            t = _t.from_numpy(np.ascontiguousarray(o, dtype=want))
        return t.to(q.device) if _is_torch(q) else t
    return np.asarray(o, dtype=np.float32 if want == "bfloat16" else want)


def attention(q, k, v, ranks=1, workdir=None, *, layout=None, dtype=None, lse=False,
              torch=None, cu_seqlens=None, cu_seqlens_q=None, cu_seqlens_k=None,
              alibi_slopes=None, **options):
    """Exact attention of q, k, v: in this process through the C library where it can, else
    through fa_long (write_inputs, run, read_output).

    q, k, v: numpy arrays or torch tensors (CPU or any device: copied to the host; any strides),
    in layout "bnhd" ([B, N, H, D]) or "bhnd" (torch's [B, H, N, D]); o comes back in the same
    layout and in q's element type (out_dtype= another: float32, float16, bfloat16; float64 q
    gives float64 o computed in float32; bfloat16 as bfloat16 tensors, or float32 values in
    numpy, which has no bfloat16). layout None (the default) states nothing: bnhd is read, shapes
    that look like torch's read wrong are refused (FaLongError, exit status 2) or warned of
    (FaLongWarning), and torch tensors whose shapes fit as [B, H, N, D] too raise ValueError:
    give layout= for them. dtype: the element type computed from (default None: the inputs'
    own, so bfloat16 tensors run in bfloat16). lse=True returns (o, lse), lse [B, H, Nq] float32.
    torch: return torch tensors (default: when q is a torch tensor; on q's device).

    Masks as flash-attn names them: causal=True (bottom-right), window_size=(L, R) (-1
    unbounded), softcap=C, alibi_slopes=[H] (or alibi=True: the standard slopes),
    cu_seqlens (or cu_seqlens_q and cu_seqlens_k) for packed documents; softmax_scale= (or
    scale=). chunk=, tile="BRxBC", threads=, mode="taylor", out_dtype= as the command's options.

    In process (no file, no subprocess): one process (ranks=1), no workdir, only the options
    above, backend "cpu" (or not given), and build/libfa_long.so (or $FA_LONG_LIB) found; the
    library's errors raise FaLongError with its line (exit status: its FA_E* code); out of memory
    (FA_ENOMEM), one that is also a MemoryError. Otherwise,
    through fa_long: ranks and every other option go to run (backend="cuda", env=, ...); workdir
    is the folder for in.h5 and out.h5 (kept, replaced on the next call), default a temporary
    folder, removed afterwards. Raises FaLongError when fa_long fails.
    """
    if torch is None:
        torch = _is_torch(q)
    if alibi_slopes is not None:
        options.setdefault("alibi", True)          # given slopes are used, as in flash-attn
    if _inproc.serves(ranks, workdir, options, q, k, v):
        o, o_type, ls = _inproc.attention(q, k, v, layout=layout, dtype=dtype, lse=lse,
                                          cu_seqlens=cu_seqlens, cu_seqlens_q=cu_seqlens_q,
                                          cu_seqlens_k=cu_seqlens_k, alibi_slopes=alibi_slopes,
                                          options=options)
    else:
        if "softmax_scale" in options:                 # flash-attn's name of --scale
            options.setdefault("scale", options.pop("softmax_scale"))
        with _folder(workdir) as d:
            inp, out = d / "in.h5", d / "out.h5"
            write_inputs(inp, q, k, v, layout=layout, dtype=dtype, cu_seqlens=cu_seqlens,
                         cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                         alibi_slopes=alibi_slopes)
            options.setdefault("force", True)
            run(inp, out, ranks, lse=lse, **options)
            got = read_output(out, layout=layout, lse=lse)
        o, ls = got if lse else (got, None)
        o_type = "float32"
    o = _returned(o, o_type, q, options.get("out_dtype"), torch)
    if not lse:
        return o
    if torch:
        ls = to_torch(ls)
        ls = ls.to(q.device) if _is_torch(q) else ls
    return o, ls
