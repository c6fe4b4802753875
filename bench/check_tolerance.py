#!/usr/bin/python3
"""bench/check_tolerance.py [--backend cpu|cuda] — how far fa_long's output is from fp64 against
the rows' conditioning: for magnitudes 1..300 of q and k (v unit), D 16/64/128, causal and not,
runs the job and `fa_long check --rows all` and prints a '#'-headed table of the error, the
largest |score| kappa, and error / (u kappa) with u the compute type's unit roundoff, which is
what check's default tolerance (runner/check.c, cond_factor) must cover. Rows are appended to
bench/results/check_tolerance_<backend>.csv with the date and revision."""
import datetime, os, re, subprocess, sys, tempfile
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from reference import random_inputs, write_inputs

backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "cpu"
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
fa = os.path.join(root, "fa_long")
rev = os.environ.get("FA_REV") or subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                                  capture_output=True, text=True).stdout.strip()
date = datetime.date.today().isoformat()
rng = np.random.default_rng(5)
tmp = tempfile.mkdtemp()
inp, out = os.path.join(tmp, "in.h5"), os.path.join(tmp, "out.h5")
rows = []
print(f"# check tolerance vs conditioning, backend {backend}, {date}, rev {rev}, N 300, H 2, Hkv 1")
print(f"# {'D':>4} {'mag':>5} {'causal':>6} {'compute':>9} {'rel_err':>10} {'kappa':>10} {'err/(u*kappa)':>14} {'tol':>9} {'verdict':>7}")
for D in ((16, 64, 128) if backend == "cpu" else (64, 128)):   # the GPU engine's head dims
    for mag in (1, 3, 8, 12, 30, 100, 300):
        for causal in (0, 1):
            q, k, v = random_inputs(rng, 1, 300, 300, 2, 1, D, magnitude=mag)
            write_inputs(inp, q, k, v)
            subprocess.run([fa, "-i", inp, "-o", out, "-f", "-q", "--backend", backend]
                           + (["--causal"] if causal else []), check=True)
            c = subprocess.run([fa, "check", "-i", inp, "-o", out, "--rows", "all"],
                               capture_output=True, text=True).stdout
            rel = float(re.search(r"max rel err ([0-9.e+-]+)", c).group(1))
            kappa = float(re.search(r"largest \|score\| of the sampled rows ([0-9.e+-]+)", c).group(1))
            comp = re.search(r"compute (\w+)\)", c).group(1)
            tol = float(re.search(r"\(tolerance ([0-9.e+-]+)\)", c).group(1))
            u = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}[comp]
            ratio = rel / (u * kappa)
            verdict = "PASS" if "check: PASS" in c else "FAIL"
            print(f"  {D:>4} {mag:>5} {causal:>6} {comp:>9} {rel:>10.3e} {kappa:>10.3e} {ratio:>14.3f} {tol:>9.1e} {verdict:>7}")
            rows.append(f"{date},{rev},{backend},{D},{mag},{causal},{comp},{rel:.4e},{kappa:.4e},{ratio:.4f},{tol:.2e},{verdict}")
res = os.path.join(root, "bench", "results", f"check_tolerance_{backend}.csv")
new = not os.path.exists(res)
with open(res, "a") as f:
    if new:
        f.write("date,rev,backend,d,magnitude,causal,compute,rel_err,kappa,err_over_u_kappa,tol,verdict\n")
    f.write("\n".join(rows) + "\n")
print(f"# max err/(u*kappa) at magnitude >= 10: {max(float(r.split(',')[9]) for r in rows if int(r.split(',')[4]) >= 10):.3f}")
