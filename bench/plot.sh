#!/bin/sh
# plot.sh — PNG plots of the benchmark results kept in bench/results (gnuplot, Debian's
# gnuplot-nox: apt-get install gnuplot-nox):
#   kernel_<card>.png     TFLOP/s against sequence length: fa_long's kernel, torch flash, cuDNN
#   cpu_ranks_<cpu>.png   wall time of the CPU job against the number of ranks
# Run after bench/gpu.sh or bench/cpu.sh; the README shows the kernel plot.
set -e
cd "$(dirname "$0")/results"
command -v gnuplot >/dev/null || { echo "plot.sh: needs gnuplot (apt-get install gnuplot-nox)" >&2; exit 1; }

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
