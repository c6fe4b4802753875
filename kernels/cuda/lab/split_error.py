#!/usr/bin/env python3
"""split_error.py — how accurate attention gets when fp32 inputs are computed on bf16 or tf32 tensor
cores as sums of split operands (issue 23 item 2), emulated in numpy before any kernel is written.

An fp32 x is split into x0 = round(x), x1 = round(x - x0), x2 = round(x - x0 - x1) in the tensor
core's input type (bf16: 8 significant bits, tf32: 11), and a product A B is taken as a sum of
some of the A_i B_j, each exact in fp32 and accumulated in fp32 (as the tensor cores do). S = Q K^T
and O = P V each get a scheme: "bf16x3" = A0B0 + A0B1 + A1B0, "bf16x6" adds A1B1 + A0B2 + A2B0,
"tf32x3" is bf16x3's terms in tf32. The softmax stays fp32. Errors are max |o - o64| / max |o64|
against fp64 on fresh normal inputs of magnitude `amp` (q, k scaled; v unit), beside plain fp32
(what the CPU engine computes) and plain bf16 (today's GPU path for fp32 inputs).

    /usr/bin/python3 kernels/cuda/lab/split_error.py [--n 2048] [--d 128] [--rows 256] [--seed 1]
"""
import argparse
import numpy as np


def round_bits(x, keep):
    """x (fp32) rounded to `keep` explicit mantissa bits, to nearest even (no overflow handling:
    the inputs here are far from the top of the range)."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    drop = 23 - keep
    b = ((b + (1 << (drop - 1)) - 1 + ((b >> drop) & 1)) >> drop) << drop
    return b.astype(np.uint32).view(np.float32)


TYPES = {"bf16": 7, "tf32": 10}
TERMS = {3: [(0, 0), (0, 1), (1, 0)], 6: [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0)]}


def split(x, keep):
    parts, r = [], x.astype(np.float32)
    for _ in range(3):
        h = round_bits(r, keep)
        parts.append(h)
        r = (r - h).astype(np.float32)
    return parts


def product(a, b, scheme):
    if scheme == "fp32":
        return a.astype(np.float32) @ b.astype(np.float32)
    if scheme == "bf16":
        return round_bits(a, 7) @ round_bits(b, 7)
    t, n = scheme.split("x")
    A, B = split(a, TYPES[t]), split(b, TYPES[t])
    out = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for i, j in TERMS[int(n)]:
        out += A[i] @ B[j]
    return out


def attention(q, k, v, scale, s_scheme, o_scheme):
    s = product(q, k.T, s_scheme) * np.float32(scale)
    p = np.exp(s - s.max(1, keepdims=True)).astype(np.float32)
    return product(p, v, o_scheme) / p.sum(1, keepdims=True, dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    schemes = [("fp32", "fp32"), ("bf16", "bf16"), ("bf16x3", "bf16x3"), ("tf32x3", "tf32x3"),
               ("bf16x6", "bf16x3"), ("bf16x6", "tf32x3"), ("bf16x6", "bf16x6")]
    print(f"# max |o - o64| / max |o64|; N {a.n} keys, D {a.d}, {a.rows} rows, seed {a.seed}; columns: S scheme / O scheme")
    print("# amp " + " ".join(f"{s + '/' + o:>14}" for s, o in schemes))
    for amp in (1, 4, 8, 12):
        q = (rng.standard_normal((a.rows, a.d)) * amp).astype(np.float32)
        k = (rng.standard_normal((a.n, a.d)) * amp).astype(np.float32)
        v = rng.standard_normal((a.n, a.d)).astype(np.float32)
        sc = 1 / np.sqrt(a.d)
        s64 = (q.astype(np.float64) @ k.T.astype(np.float64)) * sc
        p64 = np.exp(s64 - s64.max(1, keepdims=True))
        o64 = (p64 @ v.astype(np.float64)) / p64.sum(1, keepdims=True)
        errs = [np.abs(attention(q, k, v, sc, s, o) - o64).max() / np.abs(o64).max() for s, o in schemes]
        print(f"  {amp:3d} " + " ".join(f"{e:14.2e}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
