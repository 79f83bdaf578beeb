#!/usr/bin/env bash
# ray-up.sh [STATE_DIR]  -- start a local one-node Ray head whose every listener binds 127.0.0.1.
# Needs `ray` on PATH or RAY_BIN=/path/to/venv/bin/ray. Idempotent (a live head is left as it is).
# STATE_DIR (default /tmp/studylib-ray): ray.pid (the `ray start --block` process that owns the
# cluster: SIGTERM to it tears everything down), ray.log, auth_token (600), env (source it in
# every client shell / give it to every driver: without it clients cannot connect).
# Knobs: RAY_NUM_CPUS (default: nproc), RAY_GCS_PORT (default 6390: 6379 is Redis's port here),
#        RAY_DASHBOARD=1 to start the dashboard on 127.0.0.1:8265 (default off), RAY_UP_TIMEOUT (90 s).
set -euo pipefail
STATE=${1:-/tmp/studylib-ray}
RAY=${RAY_BIN:-ray}
NUM_CPUS=${RAY_NUM_CPUS:-$(nproc)}
GCS_PORT=${RAY_GCS_PORT:-6390}
DASH=${RAY_DASHBOARD:-0}
UP_TIMEOUT=${RAY_UP_TIMEOUT:-90}
mkdir -p "$STATE"

# Without this, Ray on Linux rewrites 127.0.0.1 to the host's routable IP (resolve_ip_for_localhost)
# and its gRPC servers bind 0.0.0.0. Every client (driver, `ray status`) needs it too.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# fixed-port Prometheus endpoints of the dashboard and of the autoscaler monitor (bind the node IP)
export DASHBOARD_METRIC_PORT=${DASHBOARD_METRIC_PORT:-44227}
export AUTOSCALER_METRIC_PORT=${AUTOSCALER_METRIC_PORT:-44217}
export RAY_USAGE_STATS_ENABLED=0
# Token auth, pinned: Ray 2.60 turns it on by itself whenever ~/.ray/auth_token exists (a local
# ray.init() writes that file), and then a client without RAY_AUTH_MODE=token is refused.
# Our token lives in STATE_DIR (mode 600), not in ~/.ray.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH")
fi
export RAY_ADDRESS=127.0.0.1:$GCS_PORT
cat >"$STATE/env" <<EOF
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH
export RAY_ADDRESS=127.0.0.1:$GCS_PORT
EOF

# (not `ray status | grep -q`: with pipefail, grep -q closing the pipe early fails the check at random)
ready() { local out; out=$(timeout 20 "$RAY" status 2>/dev/null) || return 1; grep -q "CPU" <<<"$out"; }

if [ -s "$STATE/ray.pid" ] && kill -0 "$(cat "$STATE/ray.pid")" 2>/dev/null; then
  # the head we started before is alive: never start a second one, just wait for it
  for _ in $(seq "$UP_TIMEOUT"); do ready && break; sleep 1; done
  ready || { echo "ray-up.sh: pid $(cat "$STATE/ray.pid") alive but cluster not answering" >&2; exit 1; }
  echo "ray already up: pid $(cat "$STATE/ray.pid") address $RAY_ADDRESS"; exit 0
fi

DASH_ARGS=(--include-dashboard=false)
[ "$DASH" = 1 ] && DASH_ARGS=(--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=8265)

t0=$(date +%s.%N)
# set -m: a non-interactive shell starts `cmd &` with SIGINT and SIGQUIT ignored, and raylet and
# every worker inherit that: ray.cancel(ref) (force=False) then does nothing. Job control keeps
# the default dispositions.
set -m   # (no setsid: with -m the job is a group leader and setsid would fork, losing $!)
"$RAY" start --head --block \
  --node-ip-address=127.0.0.1 --port="$GCS_PORT" --num-cpus="$NUM_CPUS" --num-gpus=0 \
  "${DASH_ARGS[@]}" --ray-client-server-port=10001 \
  --disable-usage-stats >"$STATE/ray.log" 2>&1 </dev/null &
echo $! >"$STATE/ray.pid"
set +m

deadline=$(( $(date +%s) + UP_TIMEOUT ))
until ready; do
  if ! kill -0 "$(cat "$STATE/ray.pid")" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
    echo "ray-up.sh: head did not come up" >&2; tail -30 "$STATE/ray.log" >&2
    kill -TERM "$(cat "$STATE/ray.pid")" 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
echo "ray up: pid $(cat "$STATE/ray.pid") address $RAY_ADDRESS in $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")s (source $STATE/env)"
