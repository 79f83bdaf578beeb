#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the gpu-marked tests and the benchmark, in one run.
# Results go to $OUT when it is set (else bench/out/): nvidia-smi.txt, gpu-tests.txt,
# bench.txt (every benchmark's table), bench.json (MLP and CNN: trial, sweeps, population,
# leaks), bench-rt.json (GRU and Transformer: trial, sweeps), bench-knobs.json (bf16 and
# torch.compile against fp32). Each step has its own timeout, and each benchmark rewrites its
# JSON after every section, so one run ends in about 10 minutes at most whatever happens and keeps
# what it measured; the most wanted numbers come first.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/out}
# A dry run of the plumbing on a CPU machine: DEVICE=cpu BENCH_ARGS="--epochs 2 --trials 2".
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
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
timeout 120 "$PYTHON" -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# shellcheck disable=SC2206  # BENCH_ARGS: words meant to split
bench=("$PYTHON" -m bench.bench --quick --device "$DEVICE" $BENCH_ARGS)
step 250 "MLP and CNN: trial, sweeps of 16 (workers 1,2,4; population 16), leaks" \
    "${bench[@]}" --families mlp,cnn --sections trial,sweep,leaks --trials 16 --workers 1,2,4 \
    --population 16 --out "$OUT/bench.json"
step 100 "GRU and Transformer: trial, sweeps of 8 (workers 1,2; population 8)" \
    "${bench[@]}" --families rnn,transformer --sections trial,sweep --workers 1,2 \
    --out "$OUT/bench-rt.json"
step 110 "speed knobs (bf16, torch.compile) for the MLP and CNN" \
    "${bench[@]}" --families mlp,cnn --sections knobs --repeats 2 --out "$OUT/bench-knobs.json"

exit $status
