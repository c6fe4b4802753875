#!/bin/sh
# bench/scaling.sh — strong scaling across ranks (issue 6).
#
#   bench/scaling.sh             CPU matrix: 1/2/4/8 ranks (oversubscribed on a small machine:
#                                the code paths and the merge bytes, not speed), causal (default
#                                striped shards) and not -> bench/results/scaling_cpu_<machine>.csv
#   bench/scaling.sh --predict   the cost model's figures for the 8-GPU run (tune/model.c via
#                                `fa_long tune --predict`) -> bench/results/scaling_prediction.csv
#   bench/scaling.sh --gpu       the real run on a multi-GPU node: the NCCL baseline (one chunk's
#                                merge bytes, build/bench/nccl_baseline), then N = 256K, H = 32,
#                                Hkv = 8, D = 128, bf16, causal (zigzag) and not, on 1/2/4/8 GPUs
#                                (up to the node's) one rank each, then 1M causal on every GPU
#                                with a sampled fp64 check (SKIP_1M=1: not)
#                                -> bench/results/scaling_gpu_<card>.csv (+ the JSON reports)
# Every run writes a --report JSON; the tables take per-rank compute, merge wait, bytes merged
# and load balance (max/mean of per-rank compute) from it.
set -eu
cd "$(dirname "$0")/.."
FA=${FA_LONG:-$PWD/fa_long}
MODE=cpu
[ "${1:-}" = "--gpu" ] && MODE=gpu
[ "${1:-}" = "--predict" ] && MODE=predict
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REV=${FA_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
SUFFIX=${SUFFIX:-}                # appended to the table's and reports' names (e.g. _ph5)
WORK=${WORK:-/tmp/fa_scaling_$$}
mkdir -p "$WORK" bench/results
MPI="mpirun --oversubscribe --bind-to none"
[ -n "${OMP_NUM_THREADS:-}" ] && MPI="$MPI -x OMP_NUM_THREADS"
[ "$(id -u)" = 0 ] && MPI="$MPI --allow-run-as-root"
export NCCL_NVLS_ENABLE=0        # NVLink multicast off in every run (KINDS.md)

# ---- the cost model's prediction of the 8-GPU figures -----------------------------------------
if [ $MODE = predict ]; then
    # Figures and their sources (NOTES_SCALING.md), all from the one-GPU job kept in
    # bench/results/paging_h100_res_c0.json (256K, H 32, Hkv 8, D 128, bf16 file, one rank):
    #  kernel rate: that job's compute-phase TFLOP/s (causal: the same rate, as kernel_h100.csv
    #    has it at 256K)
    #  HDF5 and host: its phases (setup, read of the queries, read of the keys, finalize, write)
    #    and the rest of its elapsed time
    #  NCCL bus bandwidth: the 1 GiB all-reduce of an 8-GPU H100 node (NOTES_SCALING.md)
    JOB1=${JOB1:-bench/results/paging_h100_res_c0.json}
    R=${KERNEL_TFLOPS:-$(python3 -c "import json; print(round(json.load(open('$JOB1'))['compute_tflops']))")}
    NET=${NET_GBPS:-361}
    OUT=bench/results/scaling_prediction.csv
    echo "date,model_rev,gpus,causal,n,h,hkv,d,chunk,kernel_tflops,net_busbw_gbps,t_compute_s,t_merge_all_s,t_merge_exposed_s,t_compute_merge_s,hidden_fraction,eff_compute_merge,t_read_s,t_write_s,t_other_s,t_job_s,eff_job,merge_bytes_per_rank,critical,t_job_q_shared_s,eff_job_q_shared,t_job_node_rate_s,eff_job_node_rate,t_job_q_node_s,eff_job_q_node" > "$OUT"
    for C in 0 1; do
        for P in 1 2 4 8; do
            CA=""; [ $C = 1 ] && CA="--causal"
            # shellcheck disable=SC2086
            $FA tune --backend cuda --predict -n 256K --heads 32 --kv-heads 8 -d 128 --ranks $P \
                --chunk 8192 --kernel-tflops "$R" --net-gbps "$NET" $CA | grep '^result' > "$WORK/p_${C}_$P.txt"
        done
    done
    python3 - "$WORK" "$OUT" "$DATE" "$REV" "$R" "$NET" "$JOB1" <<'EOF'
import json, sys
work, out, date, rev, R, NET, job1 = sys.argv[1:8]
N, H, HKV, D, CH = 262144, 32, 8, 128, 8192
j1 = json.load(open(job1))
ph = j1["phases_s"]
q_read, kv_read = ph["read"] - ph["read_kv"], ph["read_kv"]
# On a GPU the compute phase is device time and runs beside the host's per-chunk work (query
# reads, finalize, writes): the one-GPU job took setup + keys + max(compute, host chunk work)
# + a rest (the first chunk's wait, the last chunks' writes, file handling), taken from it.
host1 = q_read + ph["finalize"] + ph["write"]
rest = j1["elapsed_s"] - (ph["setup"] + kv_read + max(ph["compute"], host1))
def res(c, p):
    l = open(f"{work}/p_{c}_{p}.txt").read().split()[1:]
    return dict(kv.split("=", 1) for kv in l)
rows = []
for c in (0, 1):
    t1 = None
    for p in (1, 2, 4, 8):
        r = res(c, p)
        tc, tma, tme = float(r["t_compute"]), float(r["t_merge_all"]), float(r["t_merge"])
        tcm = float(r["predicted_s"])
        # every rank reads every query chunk and 1/P of the keys; finalizes and writes the rows it
        # owns (parallel HDF5); set-up and the rest stay as they are. With FA_Q_READ=shared each
        # rank reads 1/P of every chunk's queries (q_shared: the same with that)
        t_read = q_read + kv_read / p
        t_write = (ph["write"] + ph["finalize"]) / p
        other = ph["setup"] + rest
        t_job = ph["setup"] + kv_read / p + max(tcm, q_read + t_write) + rest
        t_job_qs = ph["setup"] + kv_read / p + max(tcm, q_read / p + t_write) + rest
        # the same when the node reads at one fixed rate however many ranks read (what the 2-GPU
        # runs showed: bench/NOTES_SCALING.md): the keys cost their one-rank time, every rank
        # reading every query chunk costs P times the bytes (node_rate), and FA_Q_READ=node reads
        # them once (q_node)
        t_job_nr = ph["setup"] + kv_read + max(tcm, p * q_read + t_write) + rest
        t_job_qn = ph["setup"] + kv_read + max(tcm, q_read + t_write) + rest
        if p == 1:
            t1, t1job, t1nr = tcm, t_job, t_job_nr
        hidden = 1 - tme / tma if tma > 0 else 1.0
        # sent per rank: its records of the (P-1)/P of the chunks it does not own, and its row
        # maxima for every chunk's all-reduce (NCCL path)
        mbytes = int((p - 1) / p * N * H * (D + 2) * 4 + N * H * 4) if p > 1 else 0
        rows.append([date, rev, p, c, N, H, HKV, D, CH, R, NET, f"{tc:.4f}", f"{tma:.4f}", f"{tme:.4f}",
                     f"{tcm:.4f}", f"{hidden:.3f}", f"{t1 / (p * tcm):.3f}", f"{t_read:.3f}",
                     f"{t_write:.3f}", f"{other:.3f}", f"{t_job:.3f}", f"{t1job / (p * t_job):.3f}",
                     mbytes, r["critical"], f"{t_job_qs:.3f}", f"{t1job / (p * t_job_qs):.3f}",
                     f"{t_job_nr:.3f}", f"{t1nr / (p * t_job_nr):.3f}", f"{t_job_qn:.3f}", f"{t1nr / (p * t_job_qn):.3f}"])
with open(out, "a") as f:
    for r in rows:
        f.write(",".join(str(x) for x in r) + "\n")
print("# gpus causal | compute+merge s  eff  hidden | job s  eff | job s, q shared  eff | fixed node read rate: job s  eff | q node  eff")
for r in rows:
    print(f"  {r[2]:4} {r[3]:6} | {r[14]:>14} {r[16]:>5} {r[15]:>6} | {r[20]:>6} {r[21]:>5} | {r[24]:>15} {r[25]:>5} |"
          f" {r[26]:>27} {r[27]:>5} | {r[28]:>6} {r[29]:>5}")
EOF
    echo "# table: $OUT"
    exit 0
fi

# ---- measured runs ----------------------------------------------------------------------------
if [ $MODE = gpu ]; then
    N=${N:-262144}; H=32; HKV=8; D=128; DT=bfloat16
    DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    NG=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
    TAG=$(echo "$DEV" | tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_' | sed 's/nvidia_//')_x$NG
    # one rank per GPU: 1, 2, 4, 8 up to the GPUs there are
    RANKS=${RANKS:-$(for p in 1 2 4 8; do [ $p -gt "$NG" ] || printf '%s ' $p; done)}
    EXTRA="--backend cuda --chunk 8192"
    # the NCCL baseline of the same bytes as one chunk's merge, in the same run
    if [ "$NG" -ge 2 ] && [ -x build/bench/nccl_baseline ]; then
        build/bench/nccl_baseline 8192 32 128 20 | tee "bench/results/nccl_baseline_${TAG}$SUFFIX.csv"
    fi
    # OMP_NUM_THREADS stays unset unless given: fa_long splits the node's CPUs among its ranks
    # (2 ranks each running every core's worth of threads was the 2-GPU runs' slow host phases)
else
    N=${N:-8192}; H=8; HKV=2; D=64; DT=float32
    DEV="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    NG=$(nproc)
    TAG=$(echo "$DEV" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-' | cut -c1-16)_${NG}c
    RANKS=${RANKS:-"1 2 4 8"}
    # fixed tile and chunk: the rank count is the only thing that changes between rows
    EXTRA="--backend cpu --tile 16x128 --chunk 512"
    export OMP_NUM_THREADS=1
fi
OUT=bench/results/scaling_${MODE}_${TAG}$SUFFIX.csv
H5MODE=$($FA --version 2>/dev/null | grep -q "HDF5: parallel" && echo parallel || echo serial)
IN=$WORK/in_$N.h5
$FA gen --output "$IN" -n "$N" --heads $H --kv-heads $HKV -d $D --dtype $DT --force > /dev/null
echo "date,device,rev,ranks,causal,shard,n,h,hkv,d,dtype,chunk,threads_per_rank,load1,elapsed_s,read_s,compute_max_s,compute_mean_s,compute_min_s,merge_wait_max_s,write_s,imbalance_max_over_mean,merge_bytes,merge_bytes_model,merge_comm_s,hidden_fraction,check_rel_err,check_pass,eff_compute_merge,eff_job,q_read,merge_exposed_s,compute_idle_s,merge_fastest_chunk_s,merge_busbw_gbps,finalize_s,hdf5" > "$OUT"
# GPU: the largest rank count once more with FA_Q_READ=shared (each rank reads 1/P of every
# query chunk, then an all-gather) and FA_Q_READ=rank (every rank reads every chunk), against the
# default, FA_Q_READ=node (read once per node into a shared-memory window)
PMAX=$(echo $RANKS | awk '{print $NF}')
RUNS=""
for C in 0 1; do for P in $RANKS; do RUNS="$RUNS $C:$P:default"; done; done
[ $MODE = gpu ] && [ "$PMAX" -gt 1 ] && RUNS="$RUNS 0:$PMAX:shared 1:$PMAX:shared 0:$PMAX:rank 1:$PMAX:rank"
for RUN in $RUNS; do
        C=${RUN%%:*}; P=$(echo "$RUN" | cut -d: -f2); QR=${RUN##*:}
        # default: FA_Q_READ empty, fa_long's own choice (once per node)
        if [ "$QR" = default ]; then export FA_Q_READ=; else export FA_Q_READ=$QR; fi
        CA=""; [ $C = 1 ] && CA="--causal"
        R=$WORK/r_${C}_${P}_$QR.json
        LOAD=$(cut -d' ' -f1 /proc/loadavg)
        # shellcheck disable=SC2086
        $MPI -np "$P" -x NCCL_NVLS_ENABLE -x FA_Q_READ "$FA" -i "$IN" -o "$WORK/out.h5" --force -q \
            $EXTRA $CA --report "$R" --check 8 --tune-cache "$WORK/none.txt"
        SUF=""; [ "$QR" = shared ] && SUF=_qshared; [ "$QR" = node ] && SUF=_qnode; [ "$QR" = rank ] && SUF=_qrank
        cp "$R" "bench/results/scaling_${MODE}_${TAG}${SUFFIX}_c${C}_p$P$SUF.json"
        python3 - "$R" "$OUT" "$DATE" "$DEV" "$REV" "$LOAD" "$C" "${OMP_NUM_THREADS:-}" "$QR" "$H5MODE" <<'EOF'
import json, sys, csv
r = json.load(open(sys.argv[1]))
out, date, dev, rev, load, causal, thr, qread, h5mode = sys.argv[2:11]
cfg, ph, pr = r["config"], r["phases_s"], r["per_rank"]
comp = [x["compute_s"] for x in pr]
P, n, H, D = cfg["ranks"], cfg["Nq"], cfg["H"], cfg["D"]
# pipeline merge traffic (MPI path): for every chunk each rank but the chunk's owner sends its
# records, n x H x (D+2) floats; the report counts bytes sent, so (P-1) x Nq x H x (D+2) x 4
model = (P - 1) * n * H * (D + 2) * 4
rows = list(csv.reader(open(out)))
base = [x for x in rows[1:] if x[3] == "1" and x[4] == causal]
cm = ph["compute"] + ph["merge_wait"]
eff = eff_job = ""
if base:
    b_cm = float(base[0][16]) + float(base[0][19])
    eff = f"{b_cm / (P * cm):.3f}"
    eff_job = f"{float(base[0][14]) / (P * r['elapsed_s']):.3f}"
elif P == 1:
    eff, eff_job = "1.000", "1.000"
chk = r.get("check", {})
line = [date, dev, rev, P, causal, cfg["shard"], n, H, cfg["Hkv"], D, cfg["input_dtype"], cfg["chunk"],
        cfg.get("threads_per_rank", thr), load, f"{r['elapsed_s']:.4f}", f"{ph['read']:.4f}", f"{max(comp):.4f}",
        f"{sum(comp) / len(comp):.4f}", f"{min(comp):.4f}", f"{ph['merge_wait']:.4f}",
        f"{ph['write']:.4f}", f"{r['imbalance_compute_max_over_mean']:.3f}",
        int(r["bytes"]["merge_network"]), model, f"{r['merge']['comm_s']:.4f}",
        f"{r['merge']['hidden_fraction']:.3f}", f"{chk.get('rel_err', float('nan')):.2e}",
        chk.get("pass", ""), eff, eff_job, qread, f"{r['merge'].get('exposed_s', 0):.4f}",
        f"{r['merge']['compute_idle_s']:.4f}", f"{r['merge'].get('fastest_chunk_s', 0):.6f}",
        f"{r['merge'].get('fastest_chunk_busbw_gbps', 0):.1f}", f"{ph['finalize']:.4f}", h5mode]
with open(out, "a") as f:
    f.write(",".join(str(x) for x in line) + "\n")
print(f"  ranks {P} causal {causal} {cfg['shard']:10} compute max/mean {max(comp):.3f}/{sum(comp)/len(comp):.3f} s "
      f"(imbalance {r['imbalance_compute_max_over_mean']:.3f}), merge wait {ph['merge_wait']:.3f} s, "
      f"merged {int(r['bytes']['merge_network'])} B (model {model}), merge {r['merge']['comm_s']:.3f} s "
      f"exposed {r['merge'].get('exposed_s', 0):.4f} s, busbw {r['merge'].get('fastest_chunk_busbw_gbps', 0):.0f} GB/s, "
      f"elapsed {r['elapsed_s']:.2f} s, check {chk.get('pass')}")
EOF
done
unset FA_Q_READ
if [ $MODE = gpu ] && [ "${SKIP_1M:-0}" != 1 ]; then
    # 1M tokens, causal, on every GPU (8 on an 8-GPU node), sampled rows checked in fp64
    IN1M=$WORK/in_1m.h5
    $FA gen --output "$IN1M" -n 1M --heads 32 --kv-heads 8 -d 128 --dtype bfloat16 --force > /dev/null
    $MPI -np "$NG" -x NCCL_NVLS_ENABLE "$FA" -i "$IN1M" -o "$WORK/out1m.h5" --force \
        --backend cuda --causal --report "bench/results/scaling_gpu_${TAG}${SUFFIX}_1m_c1_p$NG.json" --check 64
fi
echo "# table: $OUT"
rm -rf "$WORK"
