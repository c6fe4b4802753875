#!/usr/bin/env python3
"""bench/gpu/bench.py — times fa_long's flash kernel against PyTorch's scaled_dot_product_attention
(flash backend and cuDNN backend) on the same tensors in the same process, and the card's bf16
GEMM rate as the ceiling. Called by bench/gpu.sh; prints a '#'-headed table last.

  python3 bench/gpu/bench.py --lib build/bench/gpu/libflash.so --csv bench/results/kernel_h100.csv [--quick]

Our kernel is loaded with ctypes (kernels/cuda/flash.h, built as a shared library by gpu.sh; its
flash_params struct is read from that header, bench/gpu/flash_params.py, and checked against the
library's size of it) and called on torch's own buffers: q, k [H][N][D] are the tensors SDPA gets
([1,H,N,D] contiguous); V is given to our kernel transposed ([H][D][N], keys contiguous: the
layout our engine keeps, made once at load time, outside the timing). Output bf16 [H][N][D] and
lse, final mode.
TFLOP/s = 4*B*H*Nq*Nk*D / t, halved for causal. Before timing, each of our variants' output is
compared with the cuDNN output on the same inputs (max abs difference over max |ref|).
Timing: CUDA events, median of `reps` runs after a warm-up; two rounds with every implementation
in turn, the better round's median kept for each (the card's clock drifts between runs).
Exit status 1 when any of our variants gave a wrong result on any row.

  python3 bench/gpu/bench.py --lib build/tests/gpu/libflash.so --csv build/tests/gpu/bench_smoke.csv --smoke
      two small shapes per (d, causal), a few seconds: what `make test-gpu` runs (tests/gpu/run.sh)
"""
import argparse, ctypes, json, math, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flash_params import load_flash_params, make  # flash_params as kernels/cuda/flash.h has it
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend


def median_ms(fn, reps, warm=1):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], ts


def gemm_tflops(n):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms, _ = median_ms(lambda: a @ b, 30, warm=5)
    return 2 * n ** 3 / ms / 1e9


def ratio(a, b):
    return f"{a / b:.2f}" if b > 0 else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--raw", default=None, help="JSON file with every timing")
    ap.add_argument("--quick", action="store_true", help="8K and 32K only")
    ap.add_argument("--smoke", action="store_true", help="1K and 4K, 4 heads, 3 reps: a few seconds (make test-gpu)")
    ap.add_argument("--variants", default="1,2,3,4")
    ap.add_argument("--dims", default="64,128", help="head dims, comma-separated (multiples of 8 up to 256)")
    ap.add_argument("--ab", default=None, help="second build of the library (lab A/B): its variants are timed too, as NAME_b")
    args = ap.parse_args()

    lib = ctypes.CDLL(args.lib)
    FlashParams = load_flash_params(lib=lib)
    lib.flash_forward.argtypes = [ctypes.POINTER(FlashParams), ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.flash_variant_available.argtypes = [ctypes.c_int]
    lib.flash_variant_name.restype = ctypes.c_char_p
    torch.cuda.init()
    variants = [v for v in map(int, args.variants.split(",")) if lib.flash_variant_available(v)]
    libs = [(lib, "")]
    if args.ab:
        lib_b = ctypes.CDLL(args.ab)
        load_flash_params(lib=lib_b)
        lib_b.flash_forward.argtypes = lib.flash_forward.argtypes
        libs.append((lib_b, "_b"))
    dev = torch.cuda.get_device_properties(0)
    card = dev.name
    print(f"# card: {card}, {dev.multi_processor_count} SMs; torch {torch.__version__}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# our variants here: {[lib.flash_variant_name(v).decode() for v in variants]}")
    gemm = gemm_tflops(4096 if args.smoke else 8192)
    print(f"# bf16 GEMM {4096 if args.smoke else 8192}^3 (torch.matmul): {gemm:.0f} TFLOP/s  (the ceiling)", flush=True)

    ns = [1024, 4096] if args.smoke else [8192, 32768] if args.quick else [8192, 32768, 131072, 262144]
    heads_for = {1024: 4, 4096: 4, 8192: 32, 32768: 16, 131072: 4, 262144: 2}
    wrong = 0
    rows, raw = [], {"card": card, "date": time.strftime("%Y-%m-%d", time.gmtime()), "gemm_tflops": gemm, "rows": []}
    msg = ctypes.create_string_buffer(256)
    for d in map(int, args.dims.split(",")):
        for causal in (0, 1):
            for n in ns:
                h = heads_for[n]
                torch.manual_seed(n + d + causal)
                q = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
                k = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
                v = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
                vt = v.transpose(-1, -2).contiguous()
                o = torch.empty_like(q)
                lse = torch.empty(h, n, device="cuda", dtype=torch.float32)
                flops = 4.0 * h * n * n * d / (2 if causal else 1)
                est = flops / 300e12
                reps = 3 if args.smoke else max(3, min(20, int(1.0 / max(est, 1e-4))))

                def sdpa(backend):
                    def f():
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
                    return f

                res = {"n": n, "heads": h, "d": d, "causal": causal}
                # a backend that refuses the shape (a head dim it lacks) is timed as 0 and said so;
                # the reference is cuDNN's output, else flash's, else the math backend's
                impls, ref = [], None
                for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                    try:
                        out = sdpa(backend)()
                        torch.cuda.synchronize()
                    except RuntimeError as e:
                        print(f"# torch {name} n={n} d={d} causal={causal}: not available ({str(e).splitlines()[0][:80]})", flush=True)
                        res[name + "_tflops"] = 0.0
                        continue
                    impls.append((name, sdpa(backend)))
                    if name == "cudnn" or ref is None:
                        ref = out
                if ref is None:
                    ref = sdpa(SDPBackend.MATH)()
                refmax = ref.abs().max().item()
                stream = torch.cuda.current_stream().cuda_stream
                for var, (lb, sfx) in [(v_, l_) for v_ in variants for l_ in libs]:
                    p = make(FlashParams, q=q.data_ptr(), k=k.data_ptr(), vt=vt.data_ptr(),
                             q_head_stride=n * d, q_row_stride=d, k_head_stride=n * d, k_row_stride=d,
                             vt_head_stride=d * n, vt_row_stride=n, nq=n, nk=n, h=h, hkv=h, d=d,
                             dtype=0, scale=1.0 / math.sqrt(d), causal=causal,  # FLASH_BF16
                             out_mode=1, o=o.data_ptr(), o_dtype=0,            # FLASH_OUT_FINAL, bf16
                             o_head_stride=n * d, o_row_stride=d,
                             lse=lse.data_ptr(), lse_head_stride=n, lse_row_stride=1)

                    def ours(p=p, var=var, lb=lb):
                        if lb.flash_forward(ctypes.byref(p), var, ctypes.c_void_p(stream), msg, 256):
                            raise RuntimeError(msg.value.decode())
                    o.fill_(float("nan"))
                    ours()
                    torch.cuda.synchronize()
                    err = ((o.float() - ref.float()).abs().max() / refmax).item()
                    ok = err <= 2e-2 and not torch.isnan(o).any().item()
                    vn = lib.flash_variant_name(var).decode() + sfx
                    res[vn + "_err_vs_cudnn"] = err
                    if not ok:
                        print(f"# {vn} n={n} d={d} causal={causal}: WRONG (max err {err:.3g} of scale vs cuDNN); not counted", flush=True)
                        res[vn + "_tflops"] = 0.0
                        wrong += 1
                    else:
                        impls.append((vn, ours))
                # two rounds, every implementation in turn within a round (clock drift hits all
                # alike); each implementation's figure is its better round's median
                for rnd in range(2):
                    for name, fn in impls:
                        ms, ts = median_ms(fn, reps)
                        res.setdefault(name + "_ms", []).append(ts)
                        res[name + "_tflops"] = max(res.get(name + "_tflops", 0.0), flops / ms / 1e9)
                best = variants[-1]  # what FLASH_AUTO (the program) runs: the newest variant this card has
                res["ours"] = lib.flash_variant_name(best).decode()
                res["ours_tflops"] = res[res["ours"] + "_tflops"]
                raw["rows"].append(res)
                rows.append(res)
                print(f"  n={n:6d} h={h:2d} d={d:3d} causal={causal}: ours {res['ours_tflops']:6.1f} ({res['ours']})"
                      f"  flash {res['flash_tflops']:6.1f}  cudnn {res['cudnn_tflops']:6.1f}  "
                      + " ".join(f"{nm}={res[nm + '_tflops']:.1f}(err {res[nm + '_err_vs_cudnn']:.1e})"
                                 for nm in (lib.flash_variant_name(vv).decode() + sf for vv in variants for _, sf in libs)),
                      flush=True)
                del q, k, v, vt, o, lse, ref
                torch.cuda.empty_cache()

    os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
    with open(args.csv, "w") as f:
        f.write("n,heads,d,causal,ours_tflops,flash_tflops,cudnn_tflops\n")
        for r in rows:
            f.write(f"{r['n']},{r['heads']},{r['d']},{r['causal']},{r['ours_tflops']:.1f},{r['flash_tflops']:.1f},{r['cudnn_tflops']:.1f}\n")
    if args.raw:
        with open(args.raw, "w") as f:
            json.dump(raw, f, indent=1)
    print()
    print(f"# {card}, {raw['date']}, bf16, B=1; TFLOP/s = 4*H*N^2*D/t (causal halved); GEMM ceiling {gemm:.0f} TFLOP/s")
    print(f"# {'n':>6} {'heads':>5} {'d':>4} {'causal':>6} {'ours':>7} {'flash':>7} {'cudnn':>7} {'x flash':>8} {'x cudnn':>8}  variant")
    for r in rows:
        print(f"  {r['n']:6d} {r['heads']:5d} {r['d']:4d} {r['causal']:6d} {r['ours_tflops']:7.1f} {r['flash_tflops']:7.1f}"
              f" {r['cudnn_tflops']:7.1f} {ratio(r['ours_tflops'], r['flash_tflops']):>8} {ratio(r['ours_tflops'], r['cudnn_tflops']):>8}  {r['ours']}")
    d128 = [r for r in rows if r["d"] == 128]
    must = all(r["ours_tflops"] >= r["flash_tflops"] for r in d128)
    target = all(r["ours_tflops"] >= 0.9 * r["cudnn_tflops"] for r in d128)
    print(f"# D=128: >= 1.0x flash on every row: {'yes' if must else 'NO'};  >= 0.9x cuDNN on every row: {'yes' if target else 'no'}")
    if wrong:
        print(f"# FAIL: {wrong} (variant, row) results of ours were wrong against cuDNN (see above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
