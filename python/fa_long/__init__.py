"""fa_long from Python: exact attention for long sequences through the fa_long program.

    import fa_long
    fa_long.write_inputs("in.h5", q, k, v, layout="bhnd")        # numpy arrays or torch tensors
    res = fa_long.run("in.h5", "out.h5", ranks=4, causal=True, lse=True)
    o, lse = fa_long.read_output(res)                            # float32, o in the file's layout

    o = fa_long.attention(q, k, v, layout="bhnd", causal=True)   # all three through a temp dir

Needs numpy and h5py; torch only for torch tensors. The program is $FA_LONG, else the checkout's
./fa_long (beside python/), else fa_long on PATH; mpirun is Open MPI's.
"""
import contextlib
import pathlib
import tempfile

from ._format import (bf16_bits, bf16_type, bf16_values, output_layout, read_output,
                      write_inputs)
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


def attention(q, k, v, ranks=1, workdir=None, *, layout=None, dtype=None, lse=False,
              torch=None, cu_seqlens=None, cu_seqlens_q=None, cu_seqlens_k=None,
              alibi_slopes=None, **options):
    """Exact attention of q, k, v through fa_long: write_inputs, run, read_output.

    q, k, v as for write_inputs, in layout "bnhd" ([B, N, H, D]) or "bhnd" (torch's
    [B, H, N, D]); o comes back in the same layout, float32. layout None (the default) states
    nothing: fa_long reads bnhd and refuses shapes that look like torch's read wrong (FaLongError,
    exit status 2), and torch tensors whose shapes fit as [B, H, N, D] too raise ValueError
    before anything runs: give layout= for them. fa_long's warnings come as FaLongWarning. dtype: the element type in the file
    (default None: the inputs' own, so bfloat16 tensors run in bfloat16). lse=True returns
    (o, lse), lse [B, H, Nq]. torch: return torch tensors (default: when q is a torch tensor; on
    q's device). ranks, and every other option, go to run (causal=True, window_size=(L, R),
    chunk=..., backend="cpu", env=..., ...); the mask tables go to write_inputs.

    workdir: the folder for in.h5 and out.h5 (kept, replaced on the next call); default a
    temporary folder, removed afterwards. Raises FaLongError when fa_long fails.
    """
    if torch is None:
        torch = _is_torch(q)
    with _folder(workdir) as d:
        inp, out = d / "in.h5", d / "out.h5"
        write_inputs(inp, q, k, v, layout=layout, dtype=dtype, cu_seqlens=cu_seqlens,
                     cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                     alibi_slopes=alibi_slopes)
        options.setdefault("force", True)
        run(inp, out, ranks, lse=lse, **options)
        got = read_output(out, layout=layout, lse=lse, torch=torch)
    if torch and _is_torch(q):
        got = tuple(x.to(q.device) for x in got) if lse else got.to(q.device)
    return got
