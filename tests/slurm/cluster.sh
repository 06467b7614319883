#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py and by hand.
#
#   tests/slurm/cluster.sh install   apt-get install slurm-wlm, slurmdbd, munge, mariadb (once)
#   tests/slurm/cluster.sh start     install if needed, write the configs, start munged,
#                                    mariadbd, slurmdbd, slurmctld, slurmd; wait until idle
#   tests/slurm/cluster.sh stop      stop what `start` started (by the pids it recorded)
#                                    and remove the configs it wrote
#   tests/slurm/cluster.sh status    sinfo and the daemons' pids
#
# The configs go to /etc/slurm (slurm.conf, gres.conf, slurmdbd.conf), where every
# SLURM command looks, also inside jobs: the Snakemake jobstep plugin drops SLURM_*
# variables, SLURM_CONF included, before its nested srun. An existing slurm.conf that
# this script did not write is never touched. Logs, state and pids live under
# $CONFAGG_SLURM_DIR (default /tmp/confagg-slurm). Must run as root (it installs
# packages and runs the daemons as root).
#
# The node is this machine with its real CPUs and memory (slurmd -C), in partitions
# `cpu` (default) and `gpu`, as profiles/slurm names them, plus 4 GPUs as generic
# resources: gres.conf points them at 4 plain files, so SLURM schedules, counts and
# accounts them (and sets CUDA_VISIBLE_DEVICES) although no GPU exists. No cgroups:
# process tracking by /proc (proctrack/linuxproc), no task binding (task/none).
# Accounting (what `sacct` and the Snakemake SLURM executor read) goes to slurmdbd
# with MariaDB, and finished jobs also stay in slurmctld for an hour (MinJobAge), so
# `scontrol show job` sees them too.
set -euo pipefail

DIR=${CONFAGG_SLURM_DIR:-/tmp/confagg-slurm}
ETC=${CONFAGG_SLURM_ETC:-/etc/slurm}
MARK="# Written by tests/slurm/cluster.sh"
LOG=$DIR/log
RUN=$DIR/run
CLUSTER=confagg
ACCOUNT=confagg          # an account the tests submit to (slurm_account)
DB=confagg_slurm_acct
export SLURM_CONF=$ETC/slurm.conf
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

have_all() {
    local cmd
    for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
        command -v "$cmd" >/dev/null || return 1
    done
    compgen -G "/usr/lib/*/slurm-wlm/accounting_storage_mysql.so" >/dev/null
}

install() {
    if have_all; then
        log "packages present"
        return
    fi
    [ "$(id -u)" = 0 ] || die "installing ${PACKAGES[*]} needs root"
    command -v apt-get >/dev/null || die "no apt-get: install ${PACKAGES[*]} by hand"
    log "apt-get install ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d in containers stops the packages' services from starting; we start
    # our own daemons below either way.
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"${TMPDIR:-/tmp}/confagg-slurm-apt.log" 2>&1 ||
        { tail -20 "${TMPDIR:-/tmp}/confagg-slurm-apt.log" >&2; die "apt-get install failed"; }
    have_all || die "packages installed but a daemon or plugin is missing"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 t=0
    shift 2
    until "$@" >/dev/null 2>&1; do
        t=$((t + 1))
        [ "$t" -le $((limit * 5)) ] || { log "timed out waiting for $what"; return 1; }
        sleep 0.2
    done
}

write_configs() {
    local host cpus mem real
    host=$(hostname -s)
    # The hardware line as slurmd sees it: CPUs, sockets/cores/threads, RealMemory.
    real=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$real")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$real")
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs/RealMemory from: $real"
    if [ -s "$ETC/slurm.conf" ] && ! grep -q "^$MARK" "$ETC/slurm.conf"; then
        die "$ETC/slurm.conf exists and is not ours: not overwriting it"
    fi
    mkdir -p "$ETC" "$LOG" "$RUN/ctld" "$RUN/slurmd" "$DIR/gpus"
    # SLURM wants character devices: four links to /dev/null stand in for GPUs.
    for i in 0 1 2 3; do ln -sfn /dev/null "$DIR/gpus/gpu$i"; done
    cat >"$ETC/slurm.conf" <<EOF
$MARK: one node ($host), 4 fake GPUs.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=$RUN/ctld
SlurmdSpoolDir=$RUN/slurmd
SlurmctldPort=6817
SlurmdPort=6818
SchedulerType=sched/backfill
SelectType=select/cons_tres
# CPUs, not cores, are the unit: a 1-CPU job gets 1 CPU also where cores have 2 threads.
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
# Finished jobs stay visible to scontrol/squeue for an hour.
MinJobAge=3600
InactiveLimit=0
KillWait=10
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
# Keep the job comment (the Snakemake plugin writes rule_<rule>_wildcards_...) in sacct.
AccountingStoreFlags=job_comment
NodeName=$host NodeAddr=127.0.0.1 $(cut -d' ' -f2- <<<"$real" | sed 's/ *$//') Gres=gpu:4 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/gres.conf" <<EOF
$MARK
AutoDetect=off
NodeName=$host Name=gpu File=$DIR/gpus/gpu[0-3]
EOF
    cat >"$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=$DB
EOF
    chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    [ -s /etc/munge/munge.key ] || {
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$RUN/munged.pid"
    wait_for 10 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
    if mariadb-admin --silent ping >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/mysqld "$RUN/mysql" && chown mysql:mysql /run/mysqld "$RUN/mysql"
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >"$LOG/mariadb-install.log" 2>&1
    # Socket only (/run/mysqld/mysqld.sock, where slurmdbd's client library looks).
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=64M \
        --pid-file="$RUN/mysql/mariadbd.pid" --log-error="$RUN/mysql/mariadb.log" \
        </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb-admin --silent ping || { tail -20 "$RUN/mysql/mariadb.log" >&2; return 1; }
}

start_slurmdbd() {
    pid_alive "$RUN/slurmdbd.pid" && return
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    # Register the cluster, an account and root's association with it (idempotent).
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" \
        description="Conf-AggLLM tests" organization=confagg >/dev/null 2>&1 || true
    sacctmgr -i -Q add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
}

node_idle() { sinfo -h -N -o '%T' | grep -qx idle; }

start() {
    [ "$(id -u)" = 0 ] || die "the test cluster runs its daemons as root"
    install
    if [ -e "$ETC/slurm.conf" ] && pid_alive "$RUN/slurmctld.pid" && pid_alive "$RUN/slurmd.pid" &&
        pid_alive "$RUN/slurmdbd.pid"; then
        log "already running"
        return
    fi
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    pid_alive "$RUN/slurmctld.pid" || slurmctld -i
    wait_for 60 slurmctld scontrol ping
    pid_alive "$RUN/slurmd.pid" || slurmd
    if ! wait_for 60 "node idle" node_idle; then
        sinfo -N -l >&2 || true
        tail -20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2 || true
        die "node did not become idle"
    fi
    log "cluster $CLUSTER up: SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # stop_pid NAME PIDFILE
    local f=$2 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        log "stopped $1 ($pid)"
    fi
    rm -f "$f"
}

stop() {
    if [ -e "$ETC/slurm.conf" ] && pid_alive "$RUN/slurmctld.pid"; then
        scancel --full --user=root >/dev/null 2>&1 || true
    fi
    stop_pid slurmd "$RUN/slurmd.pid"
    stop_pid slurmctld "$RUN/slurmctld.pid"
    stop_pid slurmdbd "$RUN/slurmdbd.pid"
    stop_pid mariadbd "$RUN/mysql/mariadbd.pid"
    stop_pid munged "$RUN/munged.pid"
    # A slurm.conf naming a stopped controller makes every SLURM client wait ~10 s for it,
    # Snakemake's SLURM plugin too (it runs `scontrol show config` whenever Snakemake
    # starts, local runs included): leave none of our configs behind.
    local f
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if [ -f "$ETC/$f" ] && head -1 "$ETC/$f" | grep -q "^$MARK"; then rm -f "$ETC/$f"; fi
    done
}

status() {
    local name f
    for name in munged mysql/mariadbd slurmdbd slurmctld slurmd; do
        f=$RUN/$name.pid
        if pid_alive "$f"; then echo "${name#*/}: running ($(cat "$f"))"; else echo "${name#*/}: stopped"; fi
    done
    [ -e "$ETC/slurm.conf" ] && sinfo -N -o '%N %P %T %c %m %G' 2>/dev/null || true
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) status ;;
*) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
