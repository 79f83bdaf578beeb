#!/usr/bin/env bash
# ray-down.sh [STATE_DIR]  -- stop the head started by ray-up.sh (by its pid, not `ray stop`,
# which kills every Ray process of the machine by name).
set -uo pipefail
STATE=${1:-/tmp/studylib-ray}
PIDF="$STATE/ray.pid"
if [ -s "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; then
  pid=$(cat "$PIDF")
  kill -TERM "$pid"                       # `ray start --block` drains (<=30 s), then stops its children
  for _ in $(seq 450); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then echo "ray start ($pid) still alive after 45 s: SIGKILL" >&2; kill -KILL "$pid"; fi
fi
rm -f "$PIDF"
# a stale address file makes a later ray.init() / ray.init("auto") hang trying to reach a dead GCS
f=/tmp/ray/ray_current_cluster
if [ -f "$f" ] && [ -z "$(pgrep -x gcs_server)" ]; then rm -f "$f"; fi
echo "ray down"
