#!/bin/sh
# cluster.sh — a throwaway single-node Slurm for the tests: munged, slurmctld and slurmd from
# Debian's packages, as root, without systemd, in a folder of its own, on ports of its own.
#
#   tests/slurm/cluster.sh start DIR   writes DIR/slurm.conf, starts the daemons, waits for the node
#   tests/slurm/cluster.sh stop DIR    stops them (by the pids recorded in DIR)
# Clients then need SLURM_CONF=DIR/slurm.conf.
set -e
cmd=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)

stop() {
    # end the jobs first, so no slurmstepd (and no fa_long under it) outlives the daemons
    if [ -f "$DIR/slurm.conf" ] && [ -f "$DIR/slurmctld.pid" ]; then
        jobs=$(SLURM_CONF="$DIR/slurm.conf" squeue -h -o %i 2>/dev/null)
        if [ -n "$jobs" ]; then
            SLURM_CONF="$DIR/slurm.conf" scancel $jobs 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                [ -z "$(SLURM_CONF="$DIR/slurm.conf" squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    for p in slurmd slurmctld munged; do
        if [ -f "$DIR/$p.pid" ]; then
            pid=$(cat "$DIR/$p.pid")
            kill "$pid" 2>/dev/null || true
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.3; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$DIR/$p.pid"
        fi
    done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2/1024*0.8)}' /proc/meminfo)
PORT=${FA_SLURM_PORT:-$((20000 + $$ % 20000))}
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"

# munge: its own key, socket and files
dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 2>/dev/null
chmod 600 "$DIR/munge.key"
/usr/sbin/munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge.sock" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge.seed"

cat > "$DIR/slurm.conf" <<CONF
ClusterName=fatest
SlurmctldHost=$HOST
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge.sock
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid.d
SlurmdPidFile=$DIR/slurmd.pid.d
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$DIR/slurm.conf"
/usr/sbin/slurmctld -D -i -f "$DIR/slurm.conf" >"$DIR/log/slurmctld.out" 2>&1 &
echo $! > "$DIR/slurmctld.pid"
/usr/sbin/slurmd -D -f "$DIR/slurm.conf" >"$DIR/log/slurmd.out" 2>&1 &
echo $! > "$DIR/slurmd.pid"
for _ in $(seq 1 60); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1)
    case "$state" in idle*|mixed*|alloc*) echo "slurm up: node $HOST $state (SLURM_CONF=$DIR/slurm.conf)"; exit 0;; esac
    sleep 0.5
done
echo "slurm did not come up; logs in $DIR/log" >&2
tail -5 "$DIR/log/"*.log "$DIR/log/"*.out >&2 || true
stop
exit 1
