"""Command line: `studylib sweep | train | report | ui | dashboard` (also `python -m studylib`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from studylib.config import (
    MAX_TRIALS,
    Experiment,
    RayConfig,
    Settings,
    SlurmConfig,
    Speed,
    SweepConfig,
    field_refuses,
    load_experiments,
    load_launcher,
    parse_assignment,
)
from studylib.errors import ConfigError, Incomplete, disk_full
from studylib.locations import parse_storage, parse_tracking_uri
from studylib.names import EXPERIMENT_KIND_TAG, UI_PORT
from studylib.redact import install_log_filter, redact, remember

if TYPE_CHECKING:
    from studylib.sweep.launchers import Launch

EXIT_FAILED = 1  # an unexpected error (traceback), or a sweep that ended short of its study
EXIT_BAD_INPUT = 2  # also: a study resumed with other settings, a full disk
EXIT_TRACKING_DOWN = 3  # MLflow unreachable past the retry budget; the Optuna study is consistent
DEFAULTS = Settings()
MAX_WAIT_SECONDS = 86_400.0  # --heartbeat, --tracking-timeout: past a day, nothing is noticed


class Parser(argparse.ArgumentParser):
    """Bad flags as one line (`studylib: error: ...`) and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_BAD_INPUT, f"studylib: error: {one_line(redact(message))} ({self.prog} -h)\n"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad flag already said in one line (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    # Before anything can print or log a URL: its password is masked everywhere from here on.
    remember(getattr(args, "storage", ""), args.tracking_uri)
    install_log_filter()
    # Imported here, not at the top: `studylib --help` and a bad argument answer in about 3 s
    # instead of the 7 s that importing the sweep and report stages takes (measured here).
    from studylib.tracking import TrackingUnavailable  # start-up cost: see the comment above

    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"studylib: error: {one_line(redact(str(exc)))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrackingUnavailable as exc:
        print(f"studylib: error: {one_line(redact(str(exc)))}", file=sys.stderr)
        return EXIT_TRACKING_DOWN
    except Incomplete as exc:
        print(f"studylib: error: {one_line(redact(str(exc)))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        closed = (
            "the current trial was closed (FAIL in Optuna, KILLED in MLflow) and runs again "
            "on resume"
            if args.command == "sweep"
            else "the run was closed as KILLED"
        )
        print(f"studylib: stopped by {signal.Signals(signum).name}; {closed}", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        full = disk_full(exc)
        if full is not None:  # the disk, not studylib: say which write, and how to go on
            print(
                f"studylib: error: a write found no space ({one_line(redact(str(full)))[:300]}); "
                "free some space and run the command again: the study continues from its "
                "last whole record",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        # A bug or an unreachable database: the traceback helps, the password must not leak.
        print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)
        return EXIT_FAILED


def one_line(text: str) -> str:
    """Control characters from a file (a key named "\x1e", say) escaped: one line stays one."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="studylib",
        description="How dropout, L1, L2 / weight decay and early stopping change overfitting.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sweep = commands.add_parser("sweep", help="run (or resume) an Optuna sweep of an experiment")
    sweep.add_argument(
        "experiment",
        type=Path,
        help="experiment file (experiments/default.toml) or group file (experiments/all.toml)",
    )
    sweep.add_argument(
        "--trials",
        type=_trials,
        help=f"total trials of the study (resumes count; at most {MAX_TRIALS:,})",
    )
    _add_backend_args(sweep)
    sweep.add_argument(
        "--storage",
        default=DEFAULTS.storage,
        help=f"Optuna storage: a journal file path or a database URL (default {DEFAULTS.storage})",
    )
    sweep.add_argument("--device", choices=["auto", "cpu", "cuda"], default=DEFAULTS.device)
    sweep.add_argument(
        "--seed", type=_seed, help="override the experiment's seed (a study of its own)"
    )
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument(
        "--new-study",
        action="store_true",
        help="if the study exists with other settings, start <name>-v2 (or -v3, ...) beside it",
    )
    sweep.add_argument(
        "--heartbeat",
        type=_seconds_int,
        default=DEFAULTS.heartbeat_seconds,
        metavar="SECONDS",
        help="database storage: heartbeat interval; a trial silent 2x this long is retried "
        f"(default {DEFAULTS.heartbeat_seconds})",
    )
    sweep.add_argument(
        "--tracking-timeout",
        type=_seconds,
        default=DEFAULTS.tracking_retry_seconds,
        metavar="SECONDS",
        help="retry MLflow this long before stopping with an error "
        f"(default {DEFAULTS.tracking_retry_seconds:.0f})",
    )
    _add_speed_args(sweep)
    _add_launcher_args(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    train = commands.add_parser("train", help="one run with fixed values, logged like a trial")
    train.add_argument("experiment", type=Path)
    train.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set train.lr=0.01 --set model.hidden=[64]",
    )
    _add_backend_args(train)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default=DEFAULTS.device)
    _add_speed_args(train, workers=False)
    train.set_defaults(handler=cmd_train)

    report = commands.add_parser(
        "report",
        help="write the comparison report from MLflow",
        description="Write reports/index.html (the landing page: open it first) and one page "
        "per study (reports/<study>/index.html, self-contained, with report.md beside it): what "
        "regularization did, paired differences against the baseline with verdicts, then the "
        "sweep and ablation figures, with links into the MLflow UI. Everything is read back "
        "from the tracking store; each study's report is also attached to its newest sweep run.",
    )
    report.add_argument(
        "--experiment",
        action="append",
        help="MLflow experiment (study) name, repeatable (default: every study in the store)",
    )
    report.add_argument(
        "--group", help="only this study group's side-by-side report (and its members')"
    )
    report.add_argument(
        "--out", type=Path, default=Path("reports"), help="output folder (default reports)"
    )
    report.add_argument(
        "--storage",
        default=DEFAULTS.storage,
        help="the Optuna storage the sweeps used: the report lists every trial it holds, "
        f"those without an MLflow run too (skipped if absent; default {DEFAULTS.storage})",
    )
    report.add_argument(
        "--no-attach",
        dest="attach",
        action="store_false",
        help="write nothing back to MLflow (no report artifact, no per-run curves.png)",
    )
    _add_backend_args(report)
    report.set_defaults(handler=cmd_report)

    ui = commands.add_parser("ui", help="the MLflow UI over the same backend, on 127.0.0.1")
    _add_backend_args(ui)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=_port, default=UI_PORT, help=f"(default {UI_PORT})")
    ui.set_defaults(handler=cmd_ui)

    dashboard = commands.add_parser(
        "dashboard",
        help="optuna-dashboard over the Optuna storage, on 127.0.0.1 (the dashboard extra)",
    )
    dashboard.add_argument(
        "--storage",
        default=DEFAULTS.storage,
        help=f"Optuna storage: a journal file path or a database URL (default {DEFAULTS.storage})",
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    dashboard.add_argument("--port", type=_port, default=8080, help="(default 8080)")
    dashboard.set_defaults(handler=cmd_dashboard, tracking_uri="")
    return parser


def _add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=DEFAULTS.tracking_uri,
        help=f"MLflow tracking URI (default {DEFAULTS.tracking_uri})",
    )


def _add_speed_args(parser: argparse.ArgumentParser, workers: bool = True) -> None:
    speed = parser.add_argument_group("speed (make bench measures each)")
    if workers:
        speed.add_argument(
            "--workers",
            type=_positive_int,
            default=1,
            help="worker processes on this machine sharing the study and the [ablation]'s "
            "units (default 1)",
        )
        speed.add_argument(
            "--population",
            type=_population,
            default=1,
            help="train this many trials at once as one batched model, in each worker (default "
            "1); an [ablation]'s units run one at a time",
        )
    speed.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=DEFAULTS.speed.precision,
        help="bf16: forward passes under torch.autocast (default fp32)",
    )
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")


# Flags that set a field of [launcher.slurm] / [launcher.ray]: (flag, dotted field, type).
SLURM_FLAGS = (
    ("--partition", "slurm.partition", str),
    ("--time", "slurm.time", int),
    ("--cpus-per-task", "slurm.cpus_per_task", int),
    ("--gpus-per-task", "slurm.gpus_per_task", int),
    ("--mem", "slurm.mem_gb", float),
    ("--slurm-logs", "slurm.logs", str),
)
RAY_FLAGS = (
    ("--ray-address", "ray.address", str),
    ("--ray-cpus", "ray.num_cpus", float),
    ("--ray-gpus", "ray.num_gpus", float),
)


def _add_launcher_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "launchers (README: Many machines); each Slurm or Ray value may also come from the "
        "experiment file's [launcher.slurm] or [launcher.ray]"
    )
    group.add_argument(
        "--launcher",
        choices=["local", "slurm", "ray"],
        default="local",
        help="where the workers run: processes here (local, the default), a Slurm job "
        "array, or Ray tasks",
    )
    group.add_argument(
        "--jobs",
        type=_positive_int,
        help="workers to launch (local: the same as --workers)",
    )
    group.add_argument(
        "--detach", action="store_true", help="submit, print how to watch, and return"
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be submitted (Slurm: the sbatch script), submit nothing",
    )
    group.add_argument(
        "--one-machine",
        action="store_true",
        help="the cluster is this machine: allow a local file or 127.0.0.1 for the storage "
        "and tracking",
    )
    group.add_argument(
        "--shared-folder",
        action="store_true",
        help="the storage / tracking files and the Slurm logs lie on a folder every node mounts",
    )
    metavars = {int: "N", float: "N", str: "TEXT"}
    models = {"slurm": SlurmConfig, "ray": RayConfig}
    for flag, field, kind in SLURM_FLAGS + RAY_FLAGS:
        engine, name = field.split(".")
        described = models[engine].model_fields[name].description
        group.add_argument(
            flag, type=kind, metavar=metavars[kind], help=f"{described} ([launcher.{field}])"
        )
    group.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another sbatch option, e.g. --sbatch account=proj --sbatch qos=high "
        "([launcher.slurm] sbatch)",
    )
    group.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a shell line run before each Slurm worker, e.g. 'module load cuda' "
        "([launcher.slurm] setup); never a password",
    )


def _launch(args: argparse.Namespace) -> Launch:
    """The launcher flags over the experiment file's [launcher] table, validated together."""
    from studylib.sweep.launchers import Launch  # start-up cost: see main

    flags: dict = {}
    for flag, field, _ in SLURM_FLAGS + RAY_FLAGS:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            engine = field.split(".")[0]
            if engine != args.launcher:
                raise ConfigError(f"{flag} is a --launcher {engine} option, not {args.launcher}")
            flags[field] = value
    if args.sbatch or args.setup:
        if args.launcher != "slurm":
            flag = "--sbatch" if args.sbatch else "--setup"
            raise ConfigError(f"{flag} is a --launcher slurm option, not {args.launcher}")
        if args.sbatch:
            flags["slurm.sbatch"] = dict(parse_assignment(text) for text in args.sbatch)
        if args.setup:
            flags["slurm.setup"] = list(args.setup)
    if args.launcher == "local" and (args.detach or args.dry_run):
        flag = "--detach" if args.detach else "--dry-run"
        raise ConfigError(
            f"{flag} needs --launcher slurm or ray; on this machine run the sweep under nohup "
            "or tmux"
        )
    if args.jobs is not None and args.workers != 1 and args.jobs != args.workers:
        raise ConfigError(f"--jobs = {args.jobs} and --workers = {args.workers}: give one")
    return Launch(
        kind=args.launcher,
        jobs=args.jobs if args.jobs is not None else args.workers,
        config=load_launcher(args.experiment, flags),
        detach=args.detach,
        dry_run=args.dry_run,
        one_machine=args.one_machine,
        shared_folder=args.shared_folder,
    )


def _speed(args: argparse.Namespace) -> Speed:
    return Speed(precision=args.precision, compile=args.compile)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None


def _positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _bounded_int(text: str, most: int, why: str) -> int:
    value = _positive_int(text)
    if value > most:
        raise argparse.ArgumentTypeError(f"{value}: at most {most:,} ({why})")
    return value


def _trials(text: str) -> int:
    _positive_int(text)  # the file may say 0 (no search); the flag asks for trials
    return _field_value(text, SweepConfig, "trials")


def _seed(text: str) -> int:
    return _field_value(text, Experiment, "seed")


def _field_value(text: str, owner: type, name: str) -> int:
    """A flag that sets a config field: the field's own bounds decide (config.field_refuses)."""
    value = _whole(text)
    problem = field_refuses(owner, name, value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{value}: {problem}")
    return value


def _population(text: str) -> int:
    return _bounded_int(text, MAX_TRIALS, "a population is trials trained at once")


def _port(text: str) -> int:
    return _bounded_int(text, 65535, "TCP ports end there")


def _seconds_int(text: str) -> int:
    return _bounded_int(text, int(MAX_WAIT_SECONDS), "a day")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not 0 < value <= MAX_WAIT_SECONDS:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text}: allowed (0, {MAX_WAIT_SECONDS:.0f}] seconds")
    return value


def cmd_sweep(args: argparse.Namespace) -> int:
    # start-up cost: see main
    from studylib.sweep import check_sweep, run_ablation, run_sweep

    experiments = load_experiments(args.experiment)  # a group file: every member, all validated
    if args.seed is not None:
        # Another seed is another split: its trials must not mix with the file's seed.
        experiments = [
            _with_flag(
                exp, "--seed", args.seed, {"seed": args.seed, "name": f"{exp.name}-seed{args.seed}"}
            )
            if args.seed != exp.seed
            else exp
            for exp in experiments
        ]
    settings = replace(
        DEFAULTS,
        tracking_uri=args.tracking_uri,
        storage=args.storage,
        device=args.device,
        progress=not args.no_progress,
        heartbeat_seconds=args.heartbeat,
        tracking_retry_seconds=args.tracking_timeout,
        speed=_speed(args),
    )
    launch = _launch(args)
    # Every member, every location, the device, data sizes, memory, --workers and
    # --population: all refused here, before any store is opened or file written.
    workers = launch.jobs if launch.kind == "local" else 1
    check_sweep(experiments, settings, workers, args.population, source=args.experiment)
    if launch.kind != "local":
        return launch_sweeps(experiments, settings, launch, args)
    for exp in experiments:
        if _has_sweep(exp):
            summary = run_sweep(
                exp,
                settings,
                trials=args.trials,
                new_study=args.new_study,
                workers=launch.jobs,
                population=args.population,
            )
            print_summary(summary)
        if exp.ablation is not None:
            ablation = run_ablation(exp, settings, workers=launch.jobs)
            print(
                f"ablation of {exp.name}: {ablation.runs_done} runs ({ablation.runs_skipped} "
                f"already done, {ablation.seconds:.1f} s); strengths {ablation.strengths}"
            )
    print(f"MLflow: {redact(settings.tracking_uri)} (make ui); report: make report")
    return 0


def _with_flag(exp: Experiment, flag: str, given: object, values: dict) -> Experiment:
    """`exp` with the values a flag sets, or one line naming the flag when they do not fit
    (`--seed` makes the name `<name>-seed<N>`, which has a length limit of its own)."""
    try:
        return exp.with_values(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "experiment"
        raise ConfigError(f"{flag} = {given}: {field}: {first['msg']}") from None


def print_summary(summary) -> None:
    print(
        f"study {summary.study_name}: {summary.trials_done} trials "
        f"({summary.trials_run} run now, {summary.seconds:.1f} s); "
        + (
            f"best trial {summary.best_trial}, val/loss {summary.best_value:.4f}"
            if summary.best_value is not None
            else "no trial completed"
        )
    )


def launch_sweeps(
    experiments: list, settings: Settings, launch: Launch, args: argparse.Namespace
) -> int:
    """`sweep --launcher slurm|ray`: each experiment's workers on the engine (launchers/)."""
    from studylib.sweep.launchers import (  # start-up cost: see main
        check_launch,
        dry_run,
        launch_ablation,
        launch_sweep,
        make_engine,
    )

    engines = []
    for exp in experiments:  # every bad setting is refused before anything runs
        check_launch(exp, settings, launch)
        engines.append(make_engine(launch, exp))
    for exp, engine in zip(experiments, engines, strict=True):
        sweep = _has_sweep(exp)
        if launch.dry_run:
            if sweep:
                print(dry_run(exp, settings, launch, engine, args.trials, args.population))
            if exp.ablation is not None:
                print(dry_run(exp, settings, launch, engine, None, 1, part="ablation"))
            continue
        if sweep:
            outcome = launch_sweep(
                exp,
                settings,
                launch,
                engine,
                args.trials,
                new_study=args.new_study,
                population=args.population,
            )
            if outcome.detached is not None:
                print(f"study {outcome.study_name}: submitted; watch: {outcome.detached}")
            else:
                print_summary(outcome)
        if exp.ablation is not None:
            done = launch_ablation(exp, settings, launch, engine)
            if done.detached is not None:
                print(f"ablation of {exp.name}: submitted; watch: {done.detached}")
            else:
                print(
                    f"ablation of {exp.name}: {done.trials_done} units done ({done.trials_run} "
                    f"run now, {done.seconds:.1f} s)"
                )
    if not launch.dry_run:
        print(f"MLflow: {redact(settings.tracking_uri)} (make ui); report: make report")
    return 0


def _has_sweep(exp: Experiment) -> bool:
    """Whether an experiment's file asks for a sweep (an [ablation] may come alone)."""
    return exp.sweep.trials > 0 and (bool(exp.sweep.search) or exp.ablation is None)


def cmd_train(args: argparse.Namespace) -> int:
    from studylib.sweep import check_train, run_single  # start-up cost: see main

    overrides = dict(parse_assignment(text) for text in args.assignments)
    experiments = load_experiments(args.experiment, overrides)
    settings = replace(
        DEFAULTS, tracking_uri=args.tracking_uri, device=args.device, speed=_speed(args)
    )
    check_train(experiments, settings, source=args.experiment)
    code = 0
    for exp in experiments:
        outcome = run_single(exp, settings)
        result = outcome.result
        if outcome.status == "diverged" or result is None:
            print(f"{exp.name} run {outcome.run_id}: diverged: {result.reason if result else ''}")
            code = 1
            continue
        final = result.final
        print(
            f"{exp.name} run {outcome.run_id}: {result.status} at epoch {result.stopped_epoch}, "
            f"kept epoch {result.selected_epoch}: val/acc {final['selected_val_acc']:.4f}, "
            f"test/acc {final['test_acc']:.4f}"
        )
    return code


def cmd_report(args: argparse.Namespace) -> int:
    from studylib.report import write_reports  # start-up cost: see main
    from studylib.sweep.preflight import check_folder, check_readable  # start-up cost: see main

    check_folder(args.out, "--out", str(args.out))
    check_readable(parse_tracking_uri(args.tracking_uri), "--tracking-uri")
    storage = parse_storage(args.storage)
    # The default journal may simply not exist (a study on PostgreSQL, say): then the report
    # lists what MLflow holds. A storage the user named must be there.
    if storage.path is not None and not storage.path.is_file():
        if args.storage != DEFAULTS.storage:
            raise ConfigError(f"--storage = {storage.redacted}: no such file")
        storage = None
    written = write_reports(
        args.tracking_uri,
        args.out,
        args.experiment,
        args.group,
        storage=storage,
        attach=args.attach,
    )
    # The page to open first, first; then every page written.
    print(f"open {written[0].resolve().as_uri()}", flush=True)
    for path in written[1:]:
        print(f"wrote {path}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    parse_tracking_uri(args.tracking_uri)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        args.tracking_uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    base = f"http://{_url_host(args.host)}:{args.port}"
    print(f"open {base} (the MLflow UI; Ctrl-C stops it)")
    # Typed by hand, that address opens MLflow 3's GenAI side; these open each study's runs.
    for name, url in _study_addresses(args.tracking_uri, base):
        print(f"  study {name}: {url}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"studylib: the MLflow UI will be reachable from other machines via {args.host}")
    sys.stdout.flush()
    os.execv(sys.executable, command)
    return 0  # not reached


def _study_addresses(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(study, its runs table in the UI at `base`) for every experiment holding studylib runs;
    none for a SQLite store not made yet (reading it would create it) or one that fails."""
    location = parse_tracking_uri(tracking_uri)
    if location.path is not None and not location.path.is_file():
        return []
    try:
        from mlflow import MlflowClient  # start-up cost: see main

        from studylib.report.links import experiment_url  # start-up cost: see main

        found = MlflowClient(tracking_uri).search_experiments()
    except Exception:  # the UI itself will say what is wrong with the store
        return []
    return [
        (exp.name, experiment_url(base, exp.experiment_id))
        for exp in found
        if EXPERIMENT_KIND_TAG in exp.tags
    ]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def cmd_dashboard(args: argparse.Namespace) -> int:
    from studylib.sweep.dashboard import name_objectives, serve  # start-up cost: see main
    from studylib.sweep.storage import make_storage  # start-up cost: see main

    location = parse_storage(args.storage)
    if location.path is not None and not location.path.is_file():
        raise ConfigError(f"--storage = {location.redacted}: no such file; run `make sweep` first")
    storage = make_storage(args.storage)
    name_objectives(storage)
    print(f"open http://{_url_host(args.host)}:{args.port} (optuna-dashboard; Ctrl-C stops it)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"studylib: the dashboard will be reachable from other machines via {args.host}")
    sys.stdout.flush()
    serve(storage, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
