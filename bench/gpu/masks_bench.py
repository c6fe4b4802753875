#!/usr/bin/env python3
"""bench/gpu/masks_bench.py — fa_long's flash kernel under the masks of issue #18 against torch's
FlexAttention on the same tensors in the same process (and fa_long's own causal figure of the same
run, the issue's reference): window 4096,0; 16 causal documents of unequal lengths; causal with
softcap 30; at 64K and 256K tokens, H 32, Hkv 8, D 128, bf16. Prints a '#'-headed table and writes
bench/results/masks_<card>.csv (and the raw timings as JSON beside it).

  python3 bench/gpu/masks_bench.py --lib build/tests/gpu/libflash.so [--csv FILE] [--quick]

TFLOP/s are counted on the visible pairs: 4 * H * D * pairs / t (pairs in closed form below,
checked against kernels/mask.h's rules by tests/test_mask.c). Our kernel is called through ctypes
(kernels/cuda/flash.h, use_mask fields) on torch's buffers: q [H][N][D], k [Hkv][N][D], V
transposed [Hkv][D][N] once outside the timing, final mode, bf16 o and lse. Before timing, our
output is compared with FlexAttention's (max abs difference over max |ref| <= 2e-2) and a wrong
row is not counted (exit status 1). Timing: CUDA events, median of the reps, two rounds with
every implementation in turn, each one's better round kept.
"""
import argparse, ctypes, json, math, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flash_params import load_flash_params, make
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from bench import median_ms

H, HKV, D = 32, 8, 128


def doc_lengths(n, ndocs=16):
    """Unequal documents: one of 40% of the tokens, the rest growing quadratically."""
    big = int(n * 0.4)
    w = [(i + 1) ** 2 for i in range(ndocs - 1)]
    rest = [int((n - big) * x / sum(w)) for x in w]
    rest[-1] += n - big - sum(rest)
    return [big] + rest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--quick", action="store_true", help="64K only")
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    FP = load_flash_params(lib=lib)
    lib.flash_forward.argtypes = [ctypes.POINTER(FP), ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    dev = torch.cuda.get_device_properties(0)
    card = dev.name
    tag = "h200" if "H200" in card else "h100" if "H100" in card else card.split()[-1].lower()
    csv = args.csv or os.path.join(os.path.dirname(__file__), "..", "results", f"masks_{tag}.csv")
    date = time.strftime("%Y-%m-%d", time.gmtime())
    rev = os.popen("git log -1 --format=%h 2>/dev/null").read().strip() or os.environ.get("FA_REV", "?")
    print(f"# card: {card}; torch {torch.__version__}; date {date}; rev {rev}")
    flex = torch.compile(flex_attention, dynamic=False)
    msg = ctypes.create_string_buffer(256)
    stream = torch.cuda.current_stream().cuda_stream
    rows, raw, wrong = [], [], 0
    for n in ([65536] if args.quick else [65536, 262144]):
        torch.manual_seed(n)
        q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16)
        vt = v.transpose(-1, -2).contiguous()
        o = torch.empty_like(q)
        lse = torch.empty(H, n, device="cuda", dtype=torch.float32)
        lens = doc_lengths(n)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int64, device="cuda")
        doc_id = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))
        W = 4096
        cases = {
            "causal": (dict(win_left=-1, win_right=0), lambda b, h, i, j: i >= j, None,
                       n * (n + 1) // 2),
            "window": (dict(win_left=W, win_right=0), lambda b, h, i, j: (i >= j) & (i - j <= W), None,
                       sum(min(i + 1, W + 1) for i in range(n))),
            "documents": (dict(win_left=-1, win_right=0, ndocs=len(lens), doc_rows=1, cu_q=cu.data_ptr(),
                               cu_k=cu.data_ptr()),
                          lambda b, h, i, j: (doc_id[i] == doc_id[j]) & (i >= j), None,
                          sum(x * (x + 1) // 2 for x in lens)),
            "causal+softcap30": (dict(win_left=-1, win_right=0, softcap=30.0), lambda b, h, i, j: i >= j,
                                 lambda s, b, h, i, j: 30.0 * torch.tanh(s / 30.0), n * (n + 1) // 2),
        }
        for name, (mfields, mask_mod, score_mod, pairs) in cases.items():
            flops = 4.0 * H * D * pairs
            p = make(FP, q=q.data_ptr(), k=k.data_ptr(), vt=vt.data_ptr(), q_head_stride=n * D, q_row_stride=D,
                     k_head_stride=n * D, k_row_stride=D, vt_head_stride=D * n, vt_row_stride=n, nq=n, nk=n,
                     h=H, hkv=HKV, d=D, dtype=0, scale=1.0 / math.sqrt(D), out_mode=1, o=o.data_ptr(), o_dtype=0,
                     o_head_stride=n * D, o_row_stride=D, lse=lse.data_ptr(), lse_head_stride=n, lse_row_stride=1,
                     use_mask=1, mask_nq=n, mask_nk=n, **mfields)

            def ours(p=p):
                if lib.flash_forward(ctypes.byref(p), 0, ctypes.c_void_p(stream), msg, 256):
                    raise RuntimeError(msg.value.decode())
            bm = create_block_mask(mask_mod, None, None, n, n, device="cuda", _compile=True)

            def theirs(bm=bm, score_mod=score_mod):
                return flex(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=True)
            ref = theirs()
            o.fill_(float("nan"))
            ours()
            torch.cuda.synchronize()
            err = ((o.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            ok = err <= 2e-2 and not torch.isnan(o).any().item()
            reps = max(3, min(10, int(0.5 / max(flops / 400e12, 1e-4))))
            res = {"n": n, "mask": name, "pairs": pairs, "err_vs_flex": err}
            impls = [("flex", theirs)] + ([("ours", ours)] if ok else [])
            if not ok:
                wrong += 1
                print(f"# {name} n={n}: ours WRONG (max err {err:.3g} of scale vs FlexAttention); not counted", flush=True)
            for rnd in range(2):
                for nm, fn in impls:
                    ms, ts = median_ms(fn, reps)
                    res.setdefault(nm + "_ms", []).append(ts)
                    res[nm + "_tflops"] = max(res.get(nm + "_tflops", 0.0), flops / ms / 1e9)
            res.setdefault("ours_tflops", 0.0)
            raw.append(res)
            rows.append(res)
            print(f"  n={n:6d} {name:17s} ours {res['ours_tflops']:6.1f}  flex {res['flex_tflops']:6.1f} TFLOP/s "
                  f"(err {err:.1e})", flush=True)
            del bm, ref
            torch.cuda.empty_cache()
        del q, k, v, vt, o, lse
        torch.cuda.empty_cache()
    causal = {r["n"]: r["ours_tflops"] for r in rows if r["mask"] == "causal"}
    os.makedirs(os.path.dirname(os.path.abspath(csv)), exist_ok=True)
    new = not os.path.exists(csv)
    with open(csv, "a") as f:
        if new:
            f.write("card,date,rev,n,heads,kv_heads,d,mask,pairs,ours_tflops,flex_tflops,x_flex,ours_causal_tflops,x_own_causal\n")
        for r in rows:
            c = causal.get(r["n"], 0.0)
            f.write(f"{card},{date},{rev},{r['n']},{H},{HKV},{D},{r['mask']},{r['pairs']},{r['ours_tflops']:.1f},"
                    f"{r['flex_tflops']:.1f},{r['ours_tflops'] / r['flex_tflops']:.2f},{c:.1f},"
                    f"{r['ours_tflops'] / c if c else 0:.2f}\n")
    with open(os.path.splitext(csv)[0] + ".json", "a") as f:
        f.write(json.dumps({"card": card, "date": date, "rev": rev, "rows": raw}) + "\n")
    print()
    print(f"# {card}, {date}, rev {rev}, bf16, B=1, H={H}, Hkv={HKV}, D={D}; TFLOP/s on visible pairs")
    print(f"# {'n':>6} {'mask':>17} {'ours':>7} {'flex':>7} {'x flex':>7} {'x own causal':>12}")
    for r in rows:
        c = causal.get(r["n"], 0.0)
        print(f"  {r['n']:6d} {r['mask']:>17} {r['ours_tflops']:7.1f} {r['flex_tflops']:7.1f} "
              f"{r['ours_tflops'] / r['flex_tflops']:7.2f} {r['ours_tflops'] / c if c else 0:12.2f}")
    print("# targets: each mask >= 0.90x our causal of the same run and >= 1.4x FlexAttention")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
