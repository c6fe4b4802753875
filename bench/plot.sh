#!/bin/sh
# plot.sh — PNG plots with gnuplot (Debian's gnuplot-nox; `make plot` or `sh deps.sh plot`
# installs it):
#   sh bench/plot.sh                      the benchmark results kept in bench/results:
#     kernel_<card>.png     TFLOP/s against sequence length: fa_long's kernel, torch flash, cuDNN
#     cpu_ranks_<cpu>.png   wall time of the CPU job against the number of ranks
#   sh bench/plot.sh --report A.json [B.json ...] [--out DIR]
#                                         a user's own reports (fa_long --report FILE): per
#     report, REPORT.png (in DIR, default beside it): each rank's seconds by phase (read, compute,
#     merge wait, write, the rest of the run) as stacked bars, and the job's TFLOP/s (whole run
#     and compute phase); with several reports, reports.png in DIR compares them side by side.
# Run after bench/gpu.sh or bench/cpu.sh; the README shows the kernel plot.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
command -v gnuplot >/dev/null || { echo "plot.sh: needs gnuplot: make plot (or sh deps.sh plot; apt-get install gnuplot-nox)" >&2; exit 1; }

if [ "${1:-}" = "--report" ]; then
    shift
    OUTDIR=""
    REPORTS=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --out) OUTDIR=$2; shift 2 ;;
        *) REPORTS="$REPORTS $1"; shift ;;
        esac
    done
    [ -n "$REPORTS" ] || { echo "plot.sh --report: give one or more report files (fa_long --report FILE)" >&2; exit 2; }
    [ -z "$OUTDIR" ] || mkdir -p "$OUTDIR"
    T=$(mktemp -d)
    trap 'rm -rf "$T"' EXIT
    i=0
    for r in $REPORTS; do
        i=$((i + 1))
        # per rank: rank read compute merge_wait write other; and the job's line for the summary
        python3 - "$r" "$T/r$i.dat" "$T/sum.dat" "$i" <<'PY' || exit 2
import json, os, sys
path, dat, summ, idx = sys.argv[1:5]
try:
    rep = json.load(open(path))
    ranks = rep["per_rank"]
    el = float(rep["elapsed_s"])
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit(f"plot.sh --report: {path}: not a fa_long report ({e.__class__.__name__}: {e})")
with open(dat, "w") as f:
    f.write("# rank read_s compute_s merge_wait_s write_s other_s\n")
    for r in ranks:
        parts = [float(r.get(k, 0)) for k in ("read_s", "compute_s", "merge_wait_s", "write_s")]
        f.write(f"{r['rank']} " + " ".join(f"{x:.6f}" for x in parts) + f" {max(0.0, el - sum(parts)):.6f}\n")
c = rep.get("config", {})
label = f"{os.path.basename(path)}: {c.get('ranks', '?')} rank(s) {c.get('backend', '?')}"
with open(summ, "a") as f:
    f.write(f"{idx} {float(rep.get('tflops', 0)):.6f} {float(rep.get('compute_tflops', 0)):.6f} \"{label}\"\n")
print(label)
PY
        base=$(basename "$r" .json)
        png=${OUTDIR:-$(dirname "$r")}/$base.png
        title=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); c=r["config"]; print("%s: B=%s Nq=%s Nk=%s H=%s Hkv=%s D=%s %s, %s rank(s), %s, %.3f s, %.2f TFLOP/s" % (sys.argv[1].rsplit("/",1)[-1], c["B"], c["Nq"], c["Nk"], c["H"], c["Hkv"], c["D"], "causal" if c.get("causal") else "non-causal", c["ranks"], c["backend"], r["elapsed_s"], r["tflops"]))' "$r")
        gnuplot <<GP
set terminal pngcairo size 900,420 font ",10" noenhanced
set output "$png"
set title "$title"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.7
set xlabel "rank"
set ylabel "seconds"
set key outside right
set grid y
set yrange [0:*]
plot "$T/r$i.dat" u 2:xtic(1) t "read", "" u 3 t "compute", "" u 4 t "merge wait", "" u 5 t "write", "" u 6 t "rest of the run"
GP
        echo "plot.sh: wrote $png"
    done
    if [ "$i" -gt 1 ]; then
        png=${OUTDIR:-.}/reports.png
        gnuplot <<GP
set terminal pngcairo size 900,420 font ",10" noenhanced
set output "$png"
set title "fa_long reports: TFLOP/s (whole run and compute phase)"
set style data histograms
set style histogram clustered
set style fill solid 0.8 border -1
set ylabel "TFLOP/s"
set key top left
set grid y
set yrange [0:*]
set xtics rotate by -20
plot "$T/sum.dat" u 2:xtic(4) t "whole run", "" u 3 t "compute phase"
GP
        echo "plot.sh: wrote $png"
    fi
    exit 0
fi

cd "$HERE/results"

for csv in kernel_*.csv; do
    [ -f "$csv" ] || continue
    card=${csv#kernel_}; card=${card%.csv}
    # columns: n,heads,d,causal,ours_tflops,flash_tflops,cudnn_tflops
    for d in 64 128; do for c in 0 1; do
        awk -F, -v d=$d -v c=$c 'NR > 1 && $3 == d && $4 == c {print $1, $5, $6, $7}' "$csv" \
            > "/tmp/fa_plot_${d}_${c}.dat"
    done; done
    gnuplot <<GP
set terminal pngcairo size 1100,420 font ",10" noenhanced
set output "kernel_${card}.png"
set multiplot layout 1,2 title "fa_long flash-attention forward on ${card} (bf16, TFLOP/s; baselines measured in the same run)"
set logscale x 2
set xlabel "sequence length N (Nq = Nk)"
set ylabel "TFLOP/s"
set key bottom right
set grid
set yrange [0:*]
set format x "%.0f"
set xtics ("8K" 8192, "32K" 32768, "128K" 131072, "256K" 262144)
set title "D = 128"
plot "/tmp/fa_plot_128_0.dat" u 1:2 w lp lw 2 pt 7 t "fa_long", \
     "/tmp/fa_plot_128_0.dat" u 1:3 w lp lw 2 pt 5 t "torch flash", \
     "/tmp/fa_plot_128_0.dat" u 1:4 w lp lw 2 pt 9 t "torch cuDNN", \
     "/tmp/fa_plot_128_1.dat" u 1:2 w lp lw 1 dt 2 pt 7 lc 1 t "fa_long causal", \
     "/tmp/fa_plot_128_1.dat" u 1:3 w lp lw 1 dt 2 pt 5 lc 2 t "flash causal", \
     "/tmp/fa_plot_128_1.dat" u 1:4 w lp lw 1 dt 2 pt 9 lc 3 t "cuDNN causal"
set title "D = 64"
plot "/tmp/fa_plot_64_0.dat" u 1:2 w lp lw 2 pt 7 t "fa_long", \
     "/tmp/fa_plot_64_0.dat" u 1:3 w lp lw 2 pt 5 t "torch flash", \
     "/tmp/fa_plot_64_0.dat" u 1:4 w lp lw 2 pt 9 t "torch cuDNN", \
     "/tmp/fa_plot_64_1.dat" u 1:2 w lp lw 1 dt 2 pt 7 lc 1 t "fa_long causal", \
     "/tmp/fa_plot_64_1.dat" u 1:3 w lp lw 1 dt 2 pt 5 lc 2 t "flash causal", \
     "/tmp/fa_plot_64_1.dat" u 1:4 w lp lw 1 dt 2 pt 9 lc 3 t "cuDNN causal"
unset multiplot
GP
    echo "plot.sh: wrote bench/results/kernel_${card}.png"
done

for csv in cpu_*_job.csv; do
    [ -f "$csv" ] || continue
    name=${csv%_job.csv}
    # columns: date,cpu,cores,engine_rev,ranks,threads_per_rank,n,h,d,causal,elapsed_s,...
    awk -F, 'NR > 1 && $10 == 0 {print $5, $11}' "$csv" > /tmp/fa_plot_r0.dat
    awk -F, 'NR > 1 && $10 == 1 {print $5, $11}' "$csv" > /tmp/fa_plot_r1.dat
    cores=$(awk -F, 'NR == 2 {print $3}' "$csv")
    gnuplot <<GP
set terminal pngcairo size 640,420 font ",10" noenhanced
set output "${name}_ranks.png"
set title "fa_long CPU job, time against ranks (${cores} cores; more ranks than cores oversubscribe)"
set xlabel "MPI ranks"
set ylabel "wall time (s)"
set grid
set yrange [0:*]
set xtics 1
plot "/tmp/fa_plot_r0.dat" w lp lw 2 pt 7 t "non-causal", "/tmp/fa_plot_r1.dat" w lp lw 2 pt 5 t "causal"
GP
    echo "plot.sh: wrote bench/results/${name}_ranks.png"
done
rm -f /tmp/fa_plot_*.dat
