#!/usr/bin/env bash
# slurm-up.sh [STATE_DIR]  -- bring up a one-node Slurm (munged + slurmctld + slurmd) on this host.
# Idempotent; run as root. No systemd, no cgroups (proctrack/linuxproc, task/none).
# Everything Slurm writes lives under STATE_DIR (default /tmp/studylib-slurm):
#   STATE_DIR/slurm.conf, ctld/ (StateSaveLocation), spool/ (SlurmdSpoolDir), log/, run/ (pid files)
# /etc/slurm/slurm.conf is made a symlink to STATE_DIR/slurm.conf, so every client
# (sinfo, sbatch, submitit's subprocess calls, srun inside jobs) finds it without SLURM_CONF.
# Env knobs: SLURM_KILLWAIT (s between SIGTERM and SIGKILL, default 30 = Slurm's default),
#            SLURM_UP_TIMEOUT (s to wait for the node to be idle, default 60),
#            SLURM_NO_ETC=1 (do not touch /etc/slurm/slurm.conf; then export SLURM_CONF yourself),
#            SLURM_ACCOUNTING=1 (also run slurmdbd on the local MariaDB, 127.0.0.1:3306 root/no
#              password, database studylib_slurm_acct: makes `sacct` work, which submitit's job
#              state polling needs; off by default).
set -euo pipefail

STATE=${1:-/tmp/studylib-slurm}
KILLWAIT=${SLURM_KILLWAIT:-30}
UP_TIMEOUT=${SLURM_UP_TIMEOUT:-60}
CONF="$STATE/slurm.conf"
NODE=$(hostname -s)

[ "$(id -u)" = 0 ] || { echo "slurm-up.sh: must run as root" >&2; exit 1; }

# 0. packages (skip the apt round trip when already installed)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null \
   || { [ "${SLURM_ACCOUNTING:-0}" = 1 ] && ! command -v slurmdbd >/dev/null; }; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  PKGS="slurmctld slurmd slurm-client munge"
  [ "${SLURM_ACCOUNTING:-0}" = 1 ] && PKGS="$PKGS slurmdbd"
  apt-get install -y -q --no-install-recommends $PKGS
fi

mkdir -p "$STATE"/{ctld,spool,log,run}
export SLURM_CONF="$CONF"

# 1. munge: key + runtime dir + daemon (as the munge user, like the Debian unit does)
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || { echo "munged did not come up" >&2; exit 1; }
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 1b. optional accounting: slurmdbd -> MariaDB (sacct, submitit's job-state watcher)
ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
if [ "${SLURM_ACCOUNTING:-0}" = 1 ]; then
  [ -s "$STATE/dbpass" ] || (umask 077; head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/dbpass")
  DBPASS=$(cat "$STATE/dbpass")
  mysql -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS studylib_slurm_acct;
    CREATE USER IF NOT EXISTS 'studylib_slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    ALTER USER 'studylib_slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    CREATE USER IF NOT EXISTS 'studylib_slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
    ALTER USER 'studylib_slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON studylib_slurm_acct.* TO 'studylib_slurm'@'localhost';
    GRANT ALL ON studylib_slurm_acct.* TO 'studylib_slurm'@'127.0.0.1';"
  (umask 077; cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=studylib_slurm
StoragePass=$DBPASS
StorageLoc=studylib_slurm_acct
EOF
  )
  if ! alive "$STATE/run/slurmdbd.pid"; then slurmdbd; fi   # reads dirname(SLURM_CONF)/slurmdbd.conf
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
fi

# 2. slurm.conf from this machine's CPUs and memory (slurmd -C prints the node line)
NODELINE=$(slurmd -C | head -1)              # NodeName=vm CPUs=2 ... RealMemory=24105
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODELINE")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODELINE")
MEM=$(( MEM * 95 / 100 ))                    # a margin: RealMemory above the real one drains the node
cat >"$CONF.new" <<EOF
# written by slurm-up.sh
ClusterName=studylib
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT_LINES
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=$KILLWAIT
MinJobAge=300
MaxArraySize=1001
JobRequeue=1
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO DefMemPerCPU=$(( MEM / CPUS / 4 ))
EOF
CHANGED=0
if ! cmp -s "$CONF.new" "$CONF"; then mv "$CONF.new" "$CONF"; CHANGED=1; else rm -f "$CONF.new"; fi
if [ "${SLURM_NO_ETC:-0}" != 1 ]; then
  mkdir -p /etc/slurm
  ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

stop_pid() {  # stop_pid PIDFILE: SIGTERM, wait up to 10 s
  alive "$1" || return 0
  local pid; pid=$(cat "$1"); kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# 3. daemons (both fork into the background by themselves). A changed slurm.conf restarts
# them (some keys, e.g. AccountingStorageType, are not applied by `scontrol reconfigure`);
# running jobs survive: their slurmstepd processes are not children of slurmd.
if [ "$CHANGED" = 1 ]; then stop_pid "$STATE/run/slurmd.pid"; stop_pid "$STATE/run/slurmctld.pid"; fi
if ! alive "$STATE/run/slurmctld.pid"; then
  slurmctld -f "$CONF"
fi
for _ in $(seq 100); do [[ "$(scontrol ping 2>/dev/null)" == *UP* ]] && break; sleep 0.1; done
if ! alive "$STATE/run/slurmd.pid"; then
  slurmd -f "$CONF" -N "$NODE"
fi

# 4. wait for the node to be idle (or mixed/allocated: it already runs jobs)
deadline=$(( $(date +%s) + UP_TIMEOUT ))
while :; do
  st=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)
  case "$st" in
    idle|mixed|allocated|completing) break ;;
    *drain*|down*|*fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "slurm-up.sh: node $NODE not idle after ${UP_TIMEOUT}s (state: '$st')" >&2
    sinfo -N -l >&2 || true; tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    exit 1
  fi
  sleep 0.2
done
echo "slurm up: node=$NODE state=$st cpus=$CPUS mem=${MEM}M conf=$CONF"
