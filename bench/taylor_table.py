"""taylor_table.py — the tables of bench/taylor.sh from its CSV files (plain python3, no numpy).

  python3 bench/taylor_table.py time  bench/results/taylor_time_<machine>.csv
  python3 bench/taylor_table.py error bench/results/taylor_error.csv
"""
import csv
import math
import sys


def fmt_n(n):
    n = int(n)
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}K"
    return str(n)


def slope(points):
    """Least-squares slope of log(t) against log(n)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else float("nan")


def crossover(rows):
    """The N above which Taylor stays faster: the last sign change of log(exact/taylor) from
    negative to non-negative, interpolated in log-log between the two measured sizes."""
    last_slow = None
    for i, (n, ex, ty) in enumerate(rows):
        if ex < ty:
            last_slow = i
    if last_slow is None:
        return f"<= {fmt_n(rows[0][0])}" if rows else "-"
    if last_slow == len(rows) - 1:
        return "beyond the largest N"
    (n0, e0, t0), (n1, e1, t1) = rows[last_slow], rows[last_slow + 1]
    r0, r1 = math.log(e0 / t0), math.log(e1 / t1)
    f = -r0 / (r1 - r0) if r1 != r0 else 0.0
    return f"~{math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))):.0f}"


def time_table(path):
    rows = list(csv.DictReader(open(path)))
    if not rows:
        print("# no rows")
        return
    r0 = rows[0]
    print(f"# Taylor (--mode taylor) vs exact engine: {r0['machine']}, {r0['backend']}, "
          f"{r0['date']}, rev {r0['rev']}; B=1 H=Hkv={r0['h']}, Nq=Nk=N; best of REPS; load avg at "
          f"start of each row in the CSV")
    print("# exact* = extrapolated from a block of rows around N/2 (measured=0 in the CSV)")
    groups = {}
    for r in rows:
        groups.setdefault((int(r["d"]), int(r["causal"])), {}).setdefault(int(r["n"]), {})[r["mode"]] = r
    summary = []
    for (d, c), by_n in sorted(groups.items()):
        print(f"#\n# D={d} {'causal' if c else 'non-causal'}")
        print(f"# {'N':>6} {'exact_s':>11} {'taylor_s':>10} {'speedup':>9} {'taylor ns/(row*head)':>21}")
        pts, both = [], []
        for n in sorted(by_n):
            m = by_n[n]
            if "taylor" not in m or "exact" not in m:
                continue
            ex, ty = float(m["exact"]["est_s"]), float(m["taylor"]["est_s"])
            star = " " if m["exact"]["measured"] == "1" else "*"
            per = ty / (n * int(m["taylor"]["h"])) * 1e9
            print(f"  {fmt_n(n):>6} {ex:>10.4f}{star} {ty:>10.4f} {ex / ty:>9.2f} {per:>21.1f}")
            both.append((n, ex, ty))
            if n >= 8192:
                pts.append((n, ty))
        s256 = [ex / ty for n, ex, ty in both if n == 262144]
        summary.append((d, c, crossover(both), s256[0] if s256 else float("nan"),
                        slope(pts) if len(pts) >= 2 else float("nan"),
                        slope([(n, ex) for n, ex, _ in both if n >= 8192]) if len(pts) >= 2 else float("nan")))
    print("#\n# summary: crossover = the N above which Taylor stays faster; slope = d log(time) / "
          "d log(N) over N >= 8K (1 = linear, 2 = quadratic)")
    print(f"# {'D':>4} {'mask':>10} {'crossover N':>14} {'speedup@256K':>13} {'taylor slope':>13} {'exact slope':>12}")
    for d, c, x, s, sl, se in summary:
        print(f"  {d:>4} {'causal' if c else 'non-causal':>10} {x:>14} {s:>13.1f} {sl:>13.3f} {se:>12.3f}")


def error_table(path):
    rows = list(csv.DictReader(open(path)))
    if not rows:
        print("# no rows")
        return
    r0 = rows[0]
    print(f"# Taylor approximation error against exact attention (fp64) on {r0['rows']} sampled rows; "
          f"{r0['machine']}, {r0['date']}, rev {r0['rev']}; H=Hkv={r0['h']}, Nq=Nk=N")
    print("# max_rel = max|o - o_exact| / max|o_exact| (the suite's measure); mean_row_rel = mean over "
          "(row, head) of |o - o_exact|_2 / |o_exact|_2;")
    print("# formula = engine (fp32) against the fp64 Taylor formula; fallback = share of sampled pairs "
          "with den <= 0.1 N_i")
    print("# inputs: random q,k,v ~ N(0,1) (logits ~ N(0,1)); small: q,k halved (logits ~ N(0,1/16)); "
          "lowrank: rank-8 q,k sharing a basis, + 0.05 noise")
    print(f"# {'kind':>8} {'D':>4} {'mask':>10} {'N':>6} {'max_rel':>10} {'mean_row_rel':>13} {'formula':>10} {'fallback':>9}")
    for r in rows:
        print(f"  {r['kind']:>8} {r['d']:>4} {'causal' if r['causal'] == '1' else 'non-causal':>10} "
              f"{fmt_n(r['n']):>6} {float(r['max_rel']):>10.3e} {float(r['mean_row_rel']):>13.3e} "
              f"{float(r['formula_rel']):>10.1e} {float(r['fallback_frac']):>9.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("time", "error"):
        sys.exit(__doc__)
    (time_table if sys.argv[1] == "time" else error_table)(sys.argv[2])
