#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the gpu-marked tests and the benchmark, in one run.
# Results go to $OUT when it is set (else bench/out/): gpu-tests.txt, gpu-tests.xml, bench.json,
# bench.txt, nvidia-smi.txt. Budget: the tests about 2 minutes, the benchmark about 5; each step
# has its own timeout so that one run finishes well under 10 minutes whatever happens.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
status=0

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: torch sees no CUDA device (torch $("$PYTHON" -c 'import torch; print(torch.__version__)'))" | tee "$OUT/gpu-tests.txt"
    exit 1
fi

echo "== gpu tests" >&2
timeout 180 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" \
    2>&1 | tee "$OUT/gpu-tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmark (quick, cuda; knobs, worker counts 1,2,4, population 8)" >&2
timeout 330 "$PYTHON" -m studylib.bench --quick --device cuda --workers 1,2,4 \
    --sections trial,knobs,sweep,report,leaks --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

exit $status
