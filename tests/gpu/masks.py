"""tests/gpu/masks.py — the masks (issue #18) on the CUDA engine, through ./fa_long --backend cuda,
on a machine with an NVIDIA GPU (GPU nodes have python3 with numpy and h5py, no pytest).

Every case: bf16 inputs (exact in bf16, so the fp64 reference sees the same numbers), o written in
float32, against the fp64 reference of tests/mask_reference.py at 2e-2 of max |o| (the bf16
engine's floor in runner/check.c; its scores are fp32 sums of exact bf16 products, so only the
rounding of p to bf16 is left, and the conditioning term is fp32's 8 u kappa), against the CPU
engine's output on the same file at the same tolerance, and rows that see no key exactly 0 / -inf. Cases: windows (0,0 / 1,0 / 16,-1 /
-1,5 / 7,9 / wider than N), documents (shared, q/k per batch element with Nq != Nk, empty and
length-1 ones), softcap on large inputs, ALiBi (standard and the input's slopes), everything at
once, 2 ranks sharing the GPU, and paged keys (--device-mem small). D 64 and 128, GQA and MQA.
Then compute-sanitizer memcheck on one small masked job.

  python3 tests/gpu/masks.py [--quick]        exit status 1 when any case failed
  FA_GPU_MASKS_BACKEND=cpu python3 ...        a dry run of the script on the CPU engine
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from mask_reference import masked_f64, std_slopes, write_masked  # noqa: E402
from reference import from_bf16_bits, to_bf16_bits  # noqa: E402

FA = ROOT / "fa_long"


def mpirun(n):
    cmd = ["mpirun", "-np", str(n), "--oversubscribe", "--bind-to", "none"]
    return cmd + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def run(inp, out, args, nranks=1, backend=os.environ.get("FA_GPU_MASKS_BACKEND", "cuda"), expect=None):
    cmd = mpirun(nranks) + [str(FA), "--input", str(inp), "--output", str(out), "--lse", "--force",
                            "--out-dtype", "float32", "--backend", backend] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode:
        msg = [x for x in p.stderr.splitlines() if x.startswith("fa_long:")]
        raise RuntimeError(f"fa_long failed ({p.returncode}): {msg[-1] if msg else p.stderr.strip()[-600:]}")
    if expect and backend == "cuda" and expect not in p.stderr:
        raise RuntimeError(f"'{expect}' not in fa_long's messages: {p.stderr.strip()[-600:]}")
    with h5py.File(out, "r") as f:
        return f["o"][...].astype(np.float64), f["lse"][...].astype(np.float64)


def bf16(x):
    return from_bf16_bits(to_bf16_bits(x))


def case(tmp, name, B, Nq, Nk, H, Hkv, D, args, nranks=1, mag=1.0, tables=None, ref=None, expect=None):
    rng = np.random.default_rng()
    q = bf16(rng.standard_normal((B, Nq, H, D)).astype(np.float32) * mag)
    k = bf16(rng.standard_normal((B, Nk, Hkv, D)).astype(np.float32) * mag)
    v = bf16(rng.standard_normal((B, Nk, Hkv, D)).astype(np.float32))
    inp = tmp / "in.h5"
    write_masked(inp, q, k, v, dtype="bfloat16", **(tables or {}))
    ro, rlse, kappa = masked_f64(q, k, v, **(ref or {}))
    tol = max(2e-2, 8 * 2.0 ** -24 * kappa)
    try:
        o, lse = run(inp, tmp / "gpu.h5", args, nranks, expect=expect)
        oc, _ = run(inp, tmp / "cpu.h5", args, 1, backend="cpu")
    except RuntimeError as e:
        print(f"FAIL  {name}: {e}")
        return False
    scale = max(np.abs(ro).max(), 1e-30)
    err = np.abs(o - ro).max() / scale
    err_cpu = np.abs(o - oc).max() / scale
    seen = np.isfinite(rlse)
    lerr = np.max(np.abs(lse[seen] - rlse[seen]) / np.maximum(1, np.abs(rlse[seen]))) if seen.any() else 0.0
    none = ~seen.transpose(0, 2, 1)
    empty_ok = bool((o[none] == 0).all() and np.array_equal(np.isfinite(lse), seen))
    ok = err <= tol and err_cpu <= tol and lerr <= tol and empty_ok and np.isfinite(o).all()
    print(f"{'PASS' if ok else 'FAIL'}  {name}: rel err {err:.2e} (vs CPU engine {err_cpu:.2e}), "
          f"lse {lerr:.2e}, tol {tol:.1e}, empty rows {'ok' if empty_ok else 'WRONG'}")
    return ok


def main():
    quick = "--quick" in sys.argv
    tmp = pathlib.Path(tempfile.mkdtemp())
    ok = True
    W = [(0, 0), (1, 0), (16, -1), (-1, 5), (7, 9), (100000, 0), (300, 0)]
    for d in (64, 128):
        for (l, r) in (W[:3] if quick else W):
            ok &= case(tmp, f"window {l},{r} D={d}", 2, 300, 417, 8, 2, d, ["--window-size", f"{l},{r}"],
                       ref=dict(left=l, right=r))
    cu = np.array([0, 0, 1, 200, 200, 611, 612, 700], dtype=np.int32)
    ok &= case(tmp, "documents shared, causal", 2, 700, 700, 8, 2, 128, ["--causal"],
               tables={"cu_seqlens": cu}, ref=dict(left=-1, right=0, cu_q=cu, cu_k=cu))
    cq = np.array([[0, 130, 130, 400, 520], [0, 5, 260, 261, 520]], dtype=np.int64)
    ck = np.array([[0, 10, 250, 650, 770], [0, 370, 370, 371, 770]], dtype=np.int64)
    ok &= case(tmp, "documents q/k per batch, Nq != Nk, causal, MQA", 2, 520, 770, 4, 1, 64, ["--causal"],
               tables={"cu_seqlens_q": cq, "cu_seqlens_k": ck}, ref=dict(left=-1, right=0, cu_q=cq, cu_k=ck))
    ok &= case(tmp, "documents + window 40,0", 2, 700, 700, 8, 2, 128, ["--window-size", "40,0"],
               tables={"cu_seqlens": cu}, ref=dict(left=40, right=0, cu_q=cu, cu_k=cu))
    ok &= case(tmp, "softcap 30, inputs x6, causal", 1, 500, 640, 8, 2, 128, ["--causal", "--softcap", "30"],
               mag=6.0, ref=dict(left=-1, right=0, softcap=30.0))
    ok &= case(tmp, "alibi standard (H 12), causal", 1, 400, 400, 12, 4, 64, ["--causal", "--alibi"],
               ref=dict(left=-1, right=0, slopes=std_slopes(12)))
    sl = np.array([0.3, 0.05, 0.0, 1.5, 0.01, 0.2, 0.7, 0.1], dtype=np.float32)
    ok &= case(tmp, "alibi slopes from the input, full", 1, 333, 500, 8, 8, 128, ["--alibi"],
               tables={"alibi_slopes": sl}, ref=dict(slopes=sl.astype(np.float64)))
    cu2 = np.array([0, 300, 301, 900, 1000], dtype=np.int32)
    every = ["--window-size", "64,0", "--softcap", "20", "--alibi"]
    eref = dict(left=64, right=0, cu_q=cu2, cu_k=cu2, softcap=20.0, slopes=std_slopes(8))
    ok &= case(tmp, "everything at once", 1, 1000, 1000, 8, 2, 128, every, tables={"cu_seqlens": cu2}, ref=eref)
    ok &= case(tmp, "everything at once, 2 ranks sharing the GPU", 1, 1000, 1000, 8, 2, 128, every + ["--chunk", "300"],
               nranks=2, tables={"cu_seqlens": cu2}, ref=eref)
    ok &= case(tmp, "window 200,0, keys paged (--device-mem 101M, job_paging.sh's shape and chunk)", 1, 3001, 5003,
               8, 2, 128, ["--window-size", "200,0", "--device-mem", "101M", "--chunk", "1000"], ref=dict(left=200, right=0),
               expect="paged from pinned")

    cs = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if os.path.exists(cs):
        rng = np.random.default_rng()
        q, k, v = (bf16(rng.standard_normal(s).astype(np.float32)) for s in ((1, 150, 4, 64), (1, 190, 2, 64), (1, 190, 2, 64)))
        write_masked(tmp / "s.h5", q, k, v, dtype="bfloat16", cu_seqlens_q=np.array([0, 70, 150]),
                     cu_seqlens_k=np.array([0, 100, 190]))
        p = subprocess.run([cs, "--tool", "memcheck", "--error-exitcode", "3", str(FA), "--input", str(tmp / "s.h5"),
                            "--output", str(tmp / "s_o.h5"), "--backend", "cuda", "--window-size", "9,3", "--softcap",
                            "5", "--alibi", "--chunk", "64", "--force", "--quiet"], capture_output=True, text=True, timeout=600)
        print(("PASS  memcheck clean" if p.returncode == 0 else f"FAIL  memcheck (rc {p.returncode}): {p.stdout[-1500:]}"))
        ok &= p.returncode == 0
    else:
        print("FAIL  compute-sanitizer not found")
        ok = False
    shutil.rmtree(tmp, ignore_errors=True)
    print("tests/gpu/masks.py: all passed" if ok else "tests/gpu/masks.py: FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
