#!/usr/bin/env python3
"""cubin_same.py — whether two sets of cubins hold the same device code, kernel by kernel: the
proof for a change that moves kernels between files (kernels/cuda/gen_instances.py) and must not
change them. For every kernel, its .text (the SASS bytes), .nv.shared, .nv.constant0 and .nv.info
sections must match; in .nv.info the symbol-table index of EIATTR_PARAM_CBANK is ignored (it
numbers the file's own symbols, which differ when the kernels are spread over several files).
Reads ELF section headers directly (this machine has no cuobjdump).

    nvcc -cubin -arch=sm_90a -O3 -std=c++17 --expt-relaxed-constexpr -I. -DFA_HAVE_CUDA FILE.cu -o X.cubin
    python3 kernels/cuda/lab/cubin_same.py OLD.cubin[,OLD2.cubin...] NEW.cubin[,NEW2.cubin...]

Exit 0 when every kernel matches and both sides have the same kernels."""
import re
import struct
import sys

KINDS = (".text.", ".nv.info.", ".nv.shared.", ".nv.constant0.")


def sections(path):
    b = open(path, "rb").read()
    if b[:4] != b"\x7fELF" or b[4] != 2:
        sys.exit(f"{path}: not a 64-bit ELF file (a cubin)")
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3A)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    names = hdrs[shstrndx][4]
    for h in hdrs:
        name = b[names + h[0]: b.index(b"\0", names + h[0])].decode()
        yield name, (b"" if h[1] == 8 else b[h[4]: h[4] + h[5]])     # 8: SHT_NOBITS


def kernel_sections(paths):
    out = {}
    for p in paths:
        for name, data in sections(p):
            if name.startswith(KINDS):
                if name in out and out[name] != data:
                    sys.exit(f"{name} differs between two files of one side")
                out[name] = data
    return out


def masked(name, data):
    if name.startswith(".nv.info."):   # EIATTR_PARAM_CBANK: format 4, attribute 0x0a, 8 bytes
        data = re.sub(rb"\x04\x0a\x08\x00....", b"\x04\x0a\x08\x00\0\0\0\0", data, flags=re.S)
    return data


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    old, new = (kernel_sections(a.split(",")) for a in sys.argv[1:3])
    kernels = sorted(n[len(".text."):] for n in old if n.startswith(".text."))
    only = sorted(set(old) ^ set(new))
    bad = [n for n in old if n in new and masked(n, old[n]) != masked(n, new[n])]
    same_text = sum(1 for k in kernels if old[".text." + k] == new.get(".text." + k))
    print(f"{len(kernels)} kernels; .text identical for {same_text}; sections on one side only: "
          f"{len(only)}; sections differing (beyond the CBANK symbol index): {len(bad)}")
    for n in only[:10] + bad[:10]:
        print("  ", n)
    return 0 if not only and not bad and same_text == len(kernels) else 1


if __name__ == "__main__":
    sys.exit(main())
