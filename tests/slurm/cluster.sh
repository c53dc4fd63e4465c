#!/bin/bash
# A real single-node Slurm cluster for tests/slurm.rs: munged, slurmctld and slurmd under
# $1 (a directory of its own), configured for quick scheduling and more CPUs than the
# machine has. `cluster.sh up DIR` starts it (or finds it already answering) and prints the
# path of its slurm.conf; `cluster.sh down DIR` cancels its jobs and stops its daemons.
# Slurm's ports (6817, 6818) are fixed: one such cluster per machine.
set -euo pipefail
action=$1
base=$2
conf=$base/etc/slurm.conf
export SLURM_CONF=$conf

answers() {
    [ -f "$conf" ] && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

up() {
    if answers; then
        echo "$conf"
        return
    fi
    for tool in munged slurmctld slurmd sbatch; do
        command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install -y slurmctld slurmd slurm-client munge)" >&2; exit 2; }
    done
    down 2>/dev/null || true
    mkdir -p "$base"/{etc,run,state,spool,log}
    chmod 755 "$base" "$base/run"
    local host mem
    host=$(hostname -s)
    mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 512 ))
    if [ ! -f "$base/etc/munge.key" ]; then
        head -c 1024 /dev/urandom > "$base/etc/munge.key"
        chmod 600 "$base/etc/munge.key"
    fi
    setsid munged -F --socket="$base/run/munge.sock" --key-file="$base/etc/munge.key" \
        --log-file="$base/log/munged.log" --pid-file="$base/run/munged.pid" \
        --seed-file="$base/state/munged.seed" </dev/null >/dev/null 2>&1 &
    echo $! > "$base/run/munged.bgpid"
    for _ in $(seq 100); do [ -S "$base/run/munge.sock" ] && break; sleep 0.1; done
    # MinJobAge keeps ended jobs in the controller so `scontrol show job` can tell their
    # exit code; the scheduler parameters start jobs at once instead of every few seconds.
    cat > "$conf" <<EOC
ClusterName=dispatchertest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$base/run/munge.sock
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool
SlurmctldPidFile=$base/run/slurmctld.pid
SlurmdPidFile=$base/run/slurmd.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
MailProg=/bin/true
InactiveLimit=0
KillWait=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=16 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOC
    setsid slurmctld -D -i </dev/null >"$base/log/slurmctld.out" 2>&1 &
    echo $! > "$base/run/slurmctld.bgpid"
    setsid slurmd -D </dev/null >"$base/log/slurmd.out" 2>&1 &
    echo $! > "$base/run/slurmd.bgpid"
    for _ in $(seq 300); do answers && break; sleep 0.1; done
    if ! answers; then
        echo "the Slurm cluster under $base did not become idle:" >&2
        tail -n 20 "$base"/log/*.out "$base"/log/*.log >&2 || true
        exit 1
    fi
    echo "$conf"
}

down() {
    # Jobs first: with proctrack/linuxproc their processes outlive slurmd.
    if [ -f "$base/run/slurmctld.bgpid" ] && kill -0 "$(cat "$base/run/slurmctld.bgpid")" 2>/dev/null; then
        timeout 5 scancel --full -u "$(id -un)" 2>/dev/null || true
        for _ in $(seq 100); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
    fi
    for daemon in slurmd slurmctld munged; do
        f=$base/run/$daemon.bgpid
        [ -f "$f" ] || continue
        p=$(cat "$f")
        # A pid file can outlive its process: only signal the daemon it names.
        if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$daemon" ] && kill -TERM "$p" 2>/dev/null; then
            for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

case $action in
    up) up ;;
    down) down ;;
    *) echo "usage: cluster.sh up|down DIR" >&2; exit 2 ;;
esac
