"""fa_long's file format: input datasets q, k, v (and mask tables) written, o and lse read.

Element types as the program reads them: float32, float64 and float16 as numpy writes them;
bfloat16 as a 16-bit HDF5 float type with bfloat16's bit fields (sign bit 15, 8 exponent bits at
7 with bias 127, 7 mantissa bits at 0) and a dataset attribute dtype = "bfloat16". Layouts: bnhd
is [B, N, heads, D], bhnd torch's [B, heads, N, D]; when the caller gives one, each of q, k, v
carries an attribute layout = "bnhd" | "bhnd", which fa_long honours without --layout; without
one, nothing is written and fa_long reads bnhd, refusing shapes it doubts (README "Layout").
"""
import os

import h5py
import numpy as np

from ._tensors import as_numpy, is_tensor, to_torch

DTYPES = ("bfloat16", "float16", "float32", "float64")
LAYOUTS = ("bnhd", "bhnd")
INT_TABLES = ("cu_seqlens", "cu_seqlens_q", "cu_seqlens_k")   # offsets, [ndocs+1] or [B, ndocs+1]


def bf16_type():
    """The HDF5 type of fa_long's bfloat16: an IEEE float with bfloat16's bit fields."""
    t = h5py.h5t.IEEE_F32LE.copy()
    t.set_fields(15, 7, 8, 0, 7)     # sign at 15; exponent at 7, 8 bits; mantissa at 0, 7 bits
    t.set_offset(0)
    t.set_precision(16)
    t.set_size(2)
    t.set_ebias(127)
    return t


def bf16_bits(x):
    """Values -> bfloat16 bit patterns (uint16), through float32, rounding to nearest, ties to
    even (as torch's .to(torch.bfloat16)); overflow gives ±inf, NaN a quiet NaN of the same sign."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32)
    bits = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    bits[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return bits


def bf16_values(bits):
    """bfloat16 bit patterns (uint16) -> float32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def check_layout(layout, what="layout"):
    if layout not in LAYOUTS:
        raise ValueError(f"{what} {layout!r}: expected 'bnhd' ([B, N, H, D]) or 'bhnd' "
                         "(torch's [B, H, N, D])")
    return layout


def swap_nh(a):
    """[B, N, H, D] <-> [B, H, N, D] (its own inverse), contiguous."""
    return np.ascontiguousarray(np.swapaxes(a, 1, 2))


def _fits(shapes, layout):
    """Whether q, k, v of these shapes, read in layout, fit: k and v alike, the same B and D,
    q's heads a multiple of k's."""
    (B, Nq, H, D), (Bk, Nk, Hkv, Dk) = ((s[0], s[2], s[1], s[3]) if layout == "bhnd" else s
                                        for s in (shapes["q"], shapes["k"]))
    return shapes["k"] == shapes["v"] and B == Bk and D == Dk and Hkv > 0 and H % Hkv == 0


def _check_shapes(shapes, layout, tensors=False):
    """q [B, Nq, H, D], k and v [B, Nk, Hkv, D] (given in layout), H a multiple of Hkv. layout
    None (nothing stated: fa_long reads bnhd) checks bnhd, and refuses torch tensors whose shapes
    fit as torch's [B, H, N, D] too: their layout must be given."""
    for name, s in shapes.items():
        if len(s) != 4:
            raise ValueError(f"{name} has shape {list(s)}; expected 4 dimensions "
                             f"({'[B, heads, N, D]' if layout == 'bhnd' else '[B, N, heads, D]'})")
    dims = f"q {list(shapes['q'])}, k {list(shapes['k'])}, v {list(shapes['v'])}"
    as_bhnd = layout is None and _fits(shapes, "bhnd")
    if not _fits(shapes, layout or "bnhd"):
        raise ValueError(f"{dims} ({layout or 'bnhd, no layout= given'}) do not fit: expected k "
                         "and v alike, the same B and D as q, and q's heads a multiple of k's" +
                         ("; as torch's [B, H, N, D] they fit: pass layout='bhnd'" if as_bhnd else ""))
    if tensors and as_bhnd:
        raise ValueError(f"torch tensors {dims} fit both as [B, N, H, D] and as torch's "
                         "[B, H, N, D]: pass layout='bhnd' (torch's) or layout='bnhd'")


def _own_dtype(a, bf16):
    if bf16:
        return "bfloat16"
    return a.dtype.name if a.dtype.name in ("float16", "float64") else "float32"


def _write_tensor(g, name, a, bf16, dtype, layout):
    """Dataset g/name holding a (values, or bfloat16 bits when bf16) as element type dtype."""
    if name in g:
        del g[name]
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(a if bf16 else bf16_bits(a))
        sid = h5py.h5s.create_simple(bits.shape)
        h5py.h5d.create(g.id, name.encode(), bf16_type(), sid).write(
            h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=bf16_type())
        ds = g[name]
        ds.attrs["dtype"] = "bfloat16"
    else:
        ds = g.create_dataset(name, data=np.asarray(bf16_values(a) if bf16 else a, dtype=dtype))
    if layout is not None:
        ds.attrs["layout"] = layout


def _table(name, x):
    """A mask table as written: integer offsets (int32, int64 when they need it) or float32 slopes."""
    a, bf16 = as_numpy(x, name)
    a = bf16_values(a) if bf16 else a
    if name not in INT_TABLES:
        if a.ndim != 1:
            raise ValueError(f"{name} has shape {list(a.shape)}; expected [H]")
        return a.astype(np.float32)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} has shape {list(a.shape)}; expected [ndocs+1] or [B, ndocs+1]")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a) & (a == np.round(a))):
            raise ValueError(f"{name}: expected integer offsets, got values that are not integers")
        a = a.astype(np.int64)
    small = a.size == 0 or (a.min() >= np.iinfo(np.int32).min and a.max() <= np.iinfo(np.int32).max)
    return a.astype(np.int32 if small else np.int64)


def write_inputs(path, q, k, v, layout=None, dtype="bfloat16", *, group=None, mode="w",
                 cu_seqlens=None, cu_seqlens_q=None, cu_seqlens_k=None, alibi_slopes=None):
    """Write q, k, v as an fa_long input file; returns path.

    q: [B, Nq, H, D], k and v: [B, Nk, Hkv, D] in layout "bnhd", or [B, H, Nq, D] and
    [B, Hkv, Nk, D] in layout "bhnd" (torch's); H a multiple of Hkv. Each may be a numpy array, a
    torch tensor (any device; bfloat16 tensors are written bit for bit) or anything numpy takes.
    The arrays are written as given (no transposition). With a layout, each dataset gets the
    attribute layout = LAYOUT, so that fa_long reads them right without --layout, and writes o
    in the same layout. layout None (the default) writes no attribute: fa_long reads them as
    bnhd, refusing shapes that look like torch's read wrong (README "Layout"); torch tensors whose
    shapes fit as torch's [B, H, N, D] too raise ValueError here (give layout=).

    dtype: the element type in the file, "bfloat16" (default), "float16", "float32" or
    "float64"; None keeps each array's own (bfloat16 tensors stay bfloat16, integers become
    float32). Values are rounded to nearest even (bfloat16 through float32, as torch does).

    group: write the datasets into this group (created with its parents), e.g. "layer3"; then
    run with q="layer3/q", k="layer3/k", v="layer3/v". mode: h5py's file mode, "w" (default)
    replaces the file, "a" adds to it (replacing datasets of the same name).

    Mask tables (fa_long's masks, see the README), written beside q when given:
    cu_seqlens, cu_seqlens_q, cu_seqlens_k: integer document offsets from 0 to N, shape
    [ndocs+1] or [B, ndocs+1]; alibi_slopes: float slopes [H] (float32).
    """
    if layout is not None:
        check_layout(layout)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)} or None")
    arrays = {name: as_numpy(x, name) for name, x in (("q", q), ("k", k), ("v", v))}
    _check_shapes({n: tuple(a.shape) for n, (a, _) in arrays.items()}, layout,
                  tensors=any(is_tensor(x) for x in (q, k, v)))
    tables = {n: _table(n, x) for n, x in (("cu_seqlens", cu_seqlens), ("cu_seqlens_q", cu_seqlens_q),
                                           ("cu_seqlens_k", cu_seqlens_k),
                                           ("alibi_slopes", alibi_slopes)) if x is not None}
    with h5py.File(path, mode) as f:
        g = f.require_group(group) if group else f
        for name, (a, bf16) in arrays.items():
            _write_tensor(g, name, a, bf16, dtype or _own_dtype(a, bf16), layout)
        for name, a in tables.items():
            if name in g:
                del g[name]
            g.create_dataset(name, data=a)
    return path


def _str_attr(obj, name):
    x = obj.attrs.get(name)
    return x.decode() if isinstance(x, bytes) else x


def output_layout(path, group=None):
    """The layout o is stored in: its attribute 'layout', else the root's, else bnhd."""
    with h5py.File(path, "r") as f:
        return _stored_layout(f, _out_group(f, group))


def _out_group(f, group):
    return f[group if group is not None else (_str_attr(f, "out_group") or "/")]


def _stored_layout(f, g):
    return _str_attr(g["o"], "layout") or _str_attr(f, "layout") or "bnhd"


def read_output(path, layout=None, lse=True, torch=False, group=None):
    """Read fa_long's output: o, or (o, lse) when lse is True (the default), as float32.

    o is [B, Nq, H, D] in layout "bnhd" or [B, H, Nq, D] in "bhnd"; layout None returns it as the
    file stores it (the input's layout unless the run was given --out-layout), another value
    transposes when the file's differs. lse is [B, H, Nq] whatever the layout (the run needs
    lse=True / --lse to write it). torch=True returns torch tensors (on the CPU) instead of numpy
    arrays. group: the group holding o and lse (default: the one the run recorded, attribute
    out_group, else the root). path may also be the result of run().
    """
    path = os.fspath(path)
    if layout is not None:
        check_layout(layout)
    with h5py.File(path, "r") as f:
        g = _out_group(f, group)
        if "o" not in g:
            raise KeyError(f"{path}: no dataset 'o' in group '{g.name}'")
        stored = _stored_layout(f, g)
        o = g["o"].astype(np.float32)[()]
        if lse and "lse" not in g:
            raise KeyError(f"{path}: no dataset 'lse' in group '{g.name}'; run with lse=True "
                           "(--lse), or read with lse=False")
        l = g["lse"].astype(np.float32)[()] if lse else None
    if layout is not None and layout != stored:
        o = swap_nh(o)
    if torch:
        o, l = to_torch(o), (to_torch(l) if lse else None)
    return (o, l) if lse else o
