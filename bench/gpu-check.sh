#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the gpu-marked tests and the GPU figures of issue 17, in
# under 8 minutes. Results go to $OUT when it is set (else bench/out/): nvidia-smi.txt,
# gpu-tests.txt, bench.txt (every table), moonshot.json (1,000 trials end to end on the GPU,
# populations, each trial its own MLflow run with full curves; its breakdown: sampler, writer,
# start-up), bench.json (MLP and CNN: 20-epoch trials against the floor, sweeps of 16 as users
# run them at 1 and 4 workers, population of 16 against sequential). Each step has its own
# timeout and each benchmark rewrites its JSON after every section, so a run cut short keeps
# what it measured; the most wanted numbers come first.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/out}
# A dry run of the plumbing on a CPU machine: DEVICE=cpu BENCH_ARGS="--epochs 2 --trials 2".
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:-}
MOONSHOT_POPULATION=${MOONSHOT_POPULATION:-32}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
status=0

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PYTHON" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda)
sys.exit(0 if torch.cuda.is_available() else 1)" | tee -a "$OUT/nvidia-smi.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ] && [ "$DEVICE" = cuda ]; then
    echo "gpu-check: torch sees no CUDA device" | tee "$OUT/gpu-tests.txt"
    exit 1
fi

step() {  # step SECONDS LABEL COMMAND...: run with a timeout, append to bench.txt
    local seconds=$1 label=$2
    shift 2
    echo "== $label (at most $seconds s)" | tee -a "$OUT/bench.txt" >&2
    timeout "$seconds" "$@" 2>&1 | tee -a "$OUT/bench.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== $label: exit ${PIPESTATUS[0]}" >> "$OUT/bench.txt"; status=1; }
}

echo "== gpu tests" >&2
timeout 90 "$PYTHON" -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# shellcheck disable=SC2206  # BENCH_ARGS: words meant to split
bench=("$PYTHON" -m bench.bench --quick --device "$DEVICE" $BENCH_ARGS)
step 170 "moonshot: 1,000 trials on the GPU, populations of $MOONSHOT_POPULATION (target < 120 s)" \
    "${bench[@]}" --families mlp --sections moonshot_gpu --moonshot-trials 1000 \
    --population "$MOONSHOT_POPULATION" --out "$OUT/moonshot.json"
step 200 "MLP and CNN: 20-epoch trials, sweeps of 16 (workers 1,4; population 16)" \
    "${bench[@]}" --families mlp,cnn --sections trial,sweep --trial-epochs 20 --repeats 3 \
    --trials 16 --workers 1,4 --population 16 --sweep-repeats 1 --tutorial-repeats 1 \
    --out "$OUT/bench.json"

exit $status
