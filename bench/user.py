"""The floor and the tutorial sweep as users run them: each in a process of its own.

    python -m bench.user floor|tutorial --epochs E --trials N [--threads T] --out JSON

`make bench` (bench.py) starts this module once per measure, so that the tutorial sweep pays
what a user's script pays (the interpreter, its imports, torch's default threads) and shares
nothing with the benchmark's own process. `--threads 0` leaves torch's default (one thread a
core); `--threads 1` is the second line, one thread a process, as each of studylib's workers
has on a machine with as many workers as cores. The JSON says what the process spent where:
interpreter start and imports, the data, each trial; the parent adds the whole wall time.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: their cost is start-up

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401  # the first optimizer imports it: start-up, not a trial

from bench.bench import FAMILIES, family_experiment, floor_trial, tutorial_sweep  # noqa: E402
from studylib.data import load_splits  # noqa: E402
from studylib.train import resolve_device  # noqa: E402

IMPORTED = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.user", description=__doc__)
    parser.add_argument("kind", choices=["floor", "tutorial"])
    parser.add_argument("--family", default="mlp", choices=list(FAMILIES))
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="for the tutorial's MLflow")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    exp = family_experiment(FAMILIES[args.family], args.epochs)
    assert exp is not None, args.family
    splits = load_splits(exp.data, exp.seed, args.cache_dir).to(device)
    loaded = time.perf_counter()
    out = {
        "kind": args.kind,
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "trials": args.trials,
        "import_seconds": IMPORTED - STARTED,
        "data_seconds": loaded - IMPORTED,
    }
    if args.kind == "floor":
        # A one-epoch warm-up (the first optimizer imports torch._dynamo): start-up, as the
        # first trial's is in any process; the trials after it are the steady state.
        floor_trial(exp.with_values({"train.max_epochs": 1}), splits)
        out["warmup_seconds"] = time.perf_counter() - loaded
        out["trial_seconds"] = [floor_trial(exp, splits)[0] for _ in range(args.trials)]
        out["work_seconds"] = sum(out["trial_seconds"])
    else:
        args.folder.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{args.folder / 'tutorial.db'}"
        seconds, how = tutorial_sweep(exp, splits, device, uri, args.trials, "tutorial")
        out.update(work_seconds=seconds, how=how)
    args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
