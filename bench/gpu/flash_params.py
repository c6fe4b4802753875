"""bench/gpu/flash_params.py — the ctypes twin of kernels/cuda/flash.h's flash_params, read from the
header itself so that it can never drift from it (bench/gpu/bench.py; tests/test_unit.py checks
every offset against the C compiler).

  from flash_params import load_flash_params
  FlashParams = load_flash_params("kernels/cuda/flash.h", lib)   # lib: ctypes.CDLL of the kernels

The struct body is parsed strictly: every declaration must be `[const] TYPE [*]NAME[, ...];` with a
TYPE below, or the import fails naming the declaration. With a library, its flash_params_sizeof()
must equal the ctypes struct's size. Fields are set with make(FlashParams, name=value, ...), which
refuses a name the struct does not have (ctypes would silently keep it as a Python attribute).
"""
import ctypes
import pathlib
import re

HEADER = pathlib.Path(__file__).resolve().parents[2] / "kernels" / "cuda" / "flash.h"

# C types a flash_params field may have (enums are int-sized in the C ABI used here)
SCALARS = {
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "size_t": ctypes.c_size_t,
    "flash_dtype": ctypes.c_int,
    "flash_out_mode": ctypes.c_int,
}
DECL = re.compile(r"^(?:const\s+)?(\w+)\s+(.+)$", re.S)
NAME = re.compile(r"^(\*?)\s*([A-Za-z_]\w*)$")


def parse_fields(text):
    """[(name, ctypes type)] of `typedef struct { ... } flash_params;` in header text."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    m = re.search(r"typedef\s+struct\s*\{([^{}]*)\}\s*flash_params\s*;", text)
    if not m:
        raise ValueError("flash.h: no `typedef struct { ... } flash_params;` found")
    fields = []
    for decl in m.group(1).split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        d = DECL.match(decl)
        if not d:
            raise ValueError(f"flash.h: flash_params declaration not understood: '{decl};'")
        base = d.group(1)
        for item in d.group(2).split(","):
            n = NAME.match(item.strip())
            if not n or not (base in SCALARS or (n.group(1) and base == "void")):
                raise ValueError(f"flash.h: flash_params declaration not understood: '{decl};' ({item.strip()})")
            fields.append((n.group(2), ctypes.c_void_p if n.group(1) else SCALARS[base]))
    if not fields:
        raise ValueError("flash.h: flash_params has no fields")
    return fields


def load_flash_params(header=HEADER, lib=None):
    """The ctypes Structure of flash_params; checked against lib.flash_params_sizeof() when given."""
    fields = parse_fields(pathlib.Path(header).read_text())
    cls = type("FlashParams", (ctypes.Structure,), {"_fields_": fields})
    if lib is not None:
        lib.flash_params_sizeof.restype = ctypes.c_size_t
        lib.flash_params_sizeof.argtypes = []
        n = lib.flash_params_sizeof()
        if n != ctypes.sizeof(cls):
            raise RuntimeError(f"flash_params: the library's struct has {n} bytes, {header} parsed gives "
                               f"{ctypes.sizeof(cls)}: the library is not built from this header")
    return cls


def make(cls, **values):
    """An instance of cls, zeroed as the C callers memset it, with the named fields set."""
    names = {f for f, _ in cls._fields_}
    bad = sorted(set(values) - names)
    if bad:
        raise AttributeError(f"flash_params has no field {', '.join(bad)} (kernels/cuda/flash.h)")
    p = cls()
    for k, v in values.items():
        setattr(p, k, v)
    return p
