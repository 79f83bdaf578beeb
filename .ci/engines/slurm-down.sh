#!/usr/bin/env bash
# slurm-down.sh [STATE_DIR] [--purge]  -- stop slurmd, slurmctld and munged started by slurm-up.sh.
# Cancels every job first. --purge also removes STATE_DIR, the /etc/slurm/slurm.conf symlink and,
# if SLURM_ACCOUNTING=1 was used, the database studylib_slurm_acct (job ids restart at 1 with a new
# StateSaveLocation: old rows with the same ids would confuse sacct and submitit).
set -uo pipefail
STATE=${1:-/tmp/studylib-slurm}
PURGE=${2:-}
export SLURM_CONF="$STATE/slurm.conf"

stop_pidfile() {  # stop_pidfile FILE NAME
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then echo "$2 ($pid) ignored SIGTERM for 10s: SIGKILL" >&2; kill -KILL "$pid"; fi
  rm -f "$f"
}

if [ -f "$SLURM_CONF" ] && scontrol ping >/dev/null 2>&1; then
  scancel --full --signal=KILL --state=RUNNING -u root 2>/dev/null || true   # --full: batch shell too
  scancel -u root 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop_pidfile "$STATE/run/slurmd.pid" slurmd
stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
stop_pidfile "$STATE/run/slurmdbd.pid" slurmdbd     # only with SLURM_ACCOUNTING=1
left=$(pgrep -x slurmstepd || true)
[ -n "$left" ] && echo "warning: slurmstepd still running: $left" >&2
if [ -s /run/munge/munged.pid ]; then stop_pidfile /run/munge/munged.pid munged; fi

if [ "$PURGE" = --purge ]; then
  [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$STATE/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
  if [ -f "$STATE/slurmdbd.conf" ]; then
    mysql -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS studylib_slurm_acct" || echo "warning: could not drop studylib_slurm_acct" >&2
  fi
  rm -rf "$STATE"
fi
echo "slurm down (state dir: $STATE${PURGE:+, purged})"
