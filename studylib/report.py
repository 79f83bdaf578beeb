"""Report: read runs and their full metric histories back from MLflow, write reports/<study>/.

Everything here comes from what MLflow holds, never from a sweep's memory, so a report can be
rebuilt at any time, on any machine that reaches the tracking store. Output per study:
`index.html` (self-contained: figures embedded, opens offline), `report.md` and the PNGs.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, and never pick an interactive backend in a worker

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import sqlalchemy  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from studylib.config import SEARCHABLE, ConfigError  # noqa: E402
from studylib.tracking import ROLE_TAG, STATUS_TAG  # noqa: E402

CURVE_KEYS = ("train/loss", "val/loss", "train/acc", "val/acc")
FINISHED = ("completed", "early_stopped")


# ---------------------------------------------------------------------------------------------
# Reading from MLflow


def load_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per trial run of a study: params, final metrics and tags, as MLflow holds them."""
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.`{ROLE_TAG}` = 'trial'"
    )
    if runs.empty:
        return runs
    runs = runs.rename(columns=lambda c: c.split(".", 1)[1] if c.startswith("tags.") else c)
    runs["trial"] = runs["optuna.trial_number"].astype(int)
    runs["baseline"] = runs.get("studylib.baseline", pd.Series(dtype=object)).eq("true")
    return runs.sort_values("trial").reset_index(drop=True)


def load_curves(tracking_uri: str, run_ids: list[str], keys=CURVE_KEYS) -> pd.DataFrame:
    """Per-epoch histories in long form: run_id, key, epoch, value.

    From a database-backed MLflow the points come in one query per chunk of runs: 1,000 runs x
    100 epochs x 4 curves took 40 s as 4,000 `get_metric_history` calls on SQLite, about 1 s
    this way. Other stores (a tracking server) are asked run by run.
    """
    ids = list(dict.fromkeys(run_ids))
    if ids and tracking_uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES:
        return _curves_from_database(tracking_uri, ids, list(keys))
    client = MlflowClient(tracking_uri)
    rows = []
    for run_id in ids:
        for key in keys:
            for metric in client.get_metric_history(run_id, key):
                rows.append((run_id, key, metric.step, metric.value))
    return pd.DataFrame(rows, columns=["run_id", "key", "epoch", "value"])


SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
RUNS_PER_QUERY = 500


def _curves_from_database(tracking_uri: str, ids: list[str], keys: list[str]) -> pd.DataFrame:
    # MLflow's SQL schema keeps every logged point in `metrics` (run_uuid, key, value,
    # timestamp, step, is_nan); a NaN is stored as value 0 with is_nan set.
    query = sqlalchemy.text(
        "SELECT run_uuid AS run_id, key, step AS epoch, value, is_nan, timestamp FROM metrics "
        "WHERE run_uuid IN :ids AND key IN :keys"
    ).bindparams(
        sqlalchemy.bindparam("ids", expanding=True), sqlalchemy.bindparam("keys", expanding=True)
    )
    engine = sqlalchemy.create_engine(tracking_uri)
    try:
        with engine.connect() as connection:
            parts = [
                pd.read_sql(
                    query, connection, params={"ids": ids[i : i + RUNS_PER_QUERY], "keys": keys}
                )
                for i in range(0, len(ids), RUNS_PER_QUERY)
            ]
    finally:
        engine.dispose()
    frame = pd.concat(parts, ignore_index=True)
    frame["value"] = frame["value"].where(~frame["is_nan"].astype(bool), float("nan"))
    # A point written twice (a retried write) counts once: the later one.
    frame = frame.sort_values(["run_id", "key", "epoch", "timestamp"])
    frame = frame.drop_duplicates(["run_id", "key", "epoch"], keep="last")
    return frame[["run_id", "key", "epoch", "value"]].reset_index(drop=True)


def study_names(tracking_uri: str) -> list[str]:
    """Experiments holding at least one studylib trial run."""
    client = MlflowClient(tracking_uri)
    names = []
    for exp in client.search_experiments():
        found = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'", max_results=1
        )
        if found:
            names.append(exp.name)
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# Building the report


@dataclass
class Figure:
    name: str  # file name of the PNG
    caption: str


def write_reports(tracking_uri: str, out: Path, experiment: str | None = None) -> list[Path]:
    names = [experiment] if experiment else study_names(tracking_uri)
    if not names:
        raise ConfigError(f"{tracking_uri}: no studylib runs found; run `make sweep` first")
    return [write_report(tracking_uri, name, Path(out) / name) for name in names]


def write_report(tracking_uri: str, experiment: str, folder: Path) -> Path:
    runs = load_runs(tracking_uri, experiment)
    finished = runs[runs[STATUS_TAG].isin(FINISHED)] if not runs.empty else runs
    if finished.empty:
        raise ConfigError(
            f"experiment {experiment!r} in {tracking_uri} has no finished trial runs "
            f"({len(runs)} runs in all); run `make sweep` first"
        )
    folder.mkdir(parents=True, exist_ok=True)
    swept = swept_names(finished)
    best = finished.loc[finished["metrics.selected_val_loss"].idxmin()]
    baseline_rows = finished[finished["baseline"]]
    baseline = baseline_rows.iloc[0] if not baseline_rows.empty else None
    shown = [run for run in (baseline, best) if run is not None]
    curves = load_curves(tracking_uri, [run["run_id"] for run in shown])

    figures = [
        plot_curves(curves, baseline, best, folder / "curves.png"),
        plot_hparams(finished, swept, folder / "hparams.png"),
    ]
    table = trial_table(runs, swept)
    summary = summary_table(baseline, best)
    context = {
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "counts": runs[STATUS_TAG].value_counts().to_dict(),
        "total": len(runs),
    }
    (folder / "report.md").write_text(render_markdown(context, summary, table, figures))
    index = folder / "index.html"
    index.write_text(render_html(context, summary, table, figures, folder))
    return index


def swept_names(runs: pd.DataFrame) -> list[str]:
    """Hyperparameters the sweep searched, read from the runs' own `sweep.search` param."""
    search = json.loads(runs["params.sweep.search"].dropna().iloc[0])
    return [name for name in SEARCHABLE if name in search]


def _param(name: str) -> str:
    return f"params.{SEARCHABLE[name]}"


def plot_curves(curves: pd.DataFrame, baseline, best, path: Path) -> Figure:
    sns.set_theme(style="whitegrid", context="notebook")
    panels = [
        (run, title)
        for run, title in (
            (baseline, "baseline (no regularization)"),
            (best, f"best trial {best['trial']}"),
        )
        if run is not None
    ]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 4), sharey=True, squeeze=False
    )
    for ax, (run, title) in zip(axes[0], panels, strict=True):
        mine = curves[curves["run_id"] == run["run_id"]]
        for key, color in (("train/loss", "tab:blue"), ("val/loss", "tab:orange")):
            series = mine[mine["key"] == key].sort_values("epoch")
            ax.plot(series["epoch"], series["value"], label=key, color=color)
        kept = int(run["metrics.selected_epoch"])
        ax.axvline(kept, color="black", linestyle="--", linewidth=1, label=f"kept epoch {kept}")
        stopped = int(run["metrics.stopped_epoch"])
        if run[STATUS_TAG] == "early_stopped":
            ax.axvline(
                stopped, color="grey", linestyle=":", linewidth=1, label=f"stopped {stopped}"
            )
        ax.set_title(
            f"{title}\ntest acc {run['metrics.test_acc']:.3f}, gap {run['metrics.gap_loss']:.3f}"
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Figure(
        path.name,
        "Train and validation loss per epoch (both in eval mode over the whole split) of the "
        "unregularized baseline and of the trial with the lowest validation loss; the dashed "
        "line marks the epoch whose weights were kept and scored on test. From 2 runs.",
    )


def plot_hparams(finished: pd.DataFrame, swept: list[str], path: Path) -> Figure:
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(
        1, max(1, len(swept)), figsize=(4 * max(1, len(swept)), 3.6), sharey=True, squeeze=False
    )
    search = json.loads(finished["params.sweep.search"].dropna().iloc[0])
    for ax, name in zip(axes[0], swept, strict=False):
        # The baseline is drawn apart: its values are the "off" settings, not samples.
        base = finished[finished["baseline"]]
        trials = finished[~finished["baseline"]]
        y = trials["metrics.selected_val_loss"]
        x = trials[_param(name)].astype(float)
        spec = search[name]
        if spec.get("log"):
            # Zeros ("off") cannot sit on a log axis: draw them one decade below the range.
            off_at = spec["low"] / 10
            ax.set_xscale("log")
            on = x > 0
            ax.scatter(x[on], y[on], s=22, alpha=0.8)
            if (~on).any():
                ax.scatter(
                    [off_at] * int((~on).sum()),
                    y[~on],
                    s=22,
                    marker="x",
                    color="tab:red",
                    label="off (0)",
                )
                ax.legend(fontsize=8)
        else:
            ax.scatter(x, y, s=22, alpha=0.8)
        if not base.empty:
            ax.axhline(
                base["metrics.selected_val_loss"].iloc[0],
                color="black",
                linestyle="--",
                linewidth=1,
                label="baseline",
            )
            ax.legend(fontsize=8)
        ax.set_xlabel(SEARCHABLE[name])
    axes[0][0].set_ylabel("val loss of kept weights (log)")
    axes[0][0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Figure(
        path.name,
        "Validation loss of the kept weights of each finished trial against each swept "
        "hyperparameter; the dashed line is the unregularized baseline, crosses mark a "
        f"regularizer switched off. From {len(finished)} finished runs (pruned and failed "
        "trials have no final value).",
    )


def trial_table(runs: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    columns = {"trial": "trial", STATUS_TAG: "status"}
    columns.update({_param(name): name for name in swept})
    columns.update(
        {
            "metrics.best_epoch": "best epoch",
            "metrics.stopped_epoch": "stopped",
            "metrics.selected_val_loss": "val loss",
            "metrics.selected_val_acc": "val acc",
            "metrics.gap_loss": "gap (loss)",
            "metrics.test_acc": "test acc",
        }
    )
    present = {k: v for k, v in columns.items() if k in runs.columns}
    table = runs[list(present)].rename(columns=present)
    table.loc[runs["baseline"].to_numpy(), "status"] += " (baseline)"
    for name in swept:
        table[name] = pd.to_numeric(table[name], errors="coerce")
    return table.sort_values("val loss", na_position="last").reset_index(drop=True)


def summary_table(baseline, best) -> pd.DataFrame:
    rows = {}
    for label, run in (("baseline", baseline), ("best trial", best)):
        if run is None:
            continue
        rows[label] = {
            "trial": int(run["trial"]),
            "kept epoch": int(run["metrics.selected_epoch"]),
            "train acc": run["metrics.selected_train_acc"],
            "val loss": run["metrics.selected_val_loss"],
            "val acc": run["metrics.selected_val_acc"],
            "gap (loss)": run["metrics.gap_loss"],
            "gap (acc)": run["metrics.gap_acc"],
            "test acc": run["metrics.test_acc"],
        }
    return pd.DataFrame(rows).T


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}"
    return str(value)


def _markdown_table(df: pd.DataFrame, index: bool = False) -> str:
    frame = df.reset_index() if index else df
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render_markdown(context, summary, table, figures) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(context["counts"].items()))
    parts = [
        f"# Regularization study: {context['experiment']}",
        f"{context['total']} trial runs read from MLflow ({context['tracking_uri']}): {counts}.",
        "## Baseline against the best trial",
        _markdown_table(summary, index=True),
    ]
    for fig in figures:
        parts += [f"![{fig.name}]({fig.name})", f"*{fig.caption}*"]
    parts += ["## All trials, by validation loss", _markdown_table(table)]
    return "\n\n".join(parts) + "\n"


def render_html(context, summary, table, figures, folder: Path) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(context["counts"].items()))
    images = []
    for fig in figures:
        data = base64.b64encode((folder / fig.name).read_bytes()).decode()
        images.append(
            f'<figure><img alt="{html.escape(fig.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
        "figcaption{font-size:13px;color:#555;margin-bottom:1.5em}"
    )
    fmt = {"float_format": lambda v: f"{v:.4g}", "na_rep": "", "border": 0}
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>studylib: {html.escape(context['experiment'])}</title>"
        f"<style>{style}</style></head>"
        f"<body><h1>Regularization study: {html.escape(context['experiment'])}</h1>"
        f"<p>{context['total']} trial runs read from MLflow "
        f"({html.escape(context['tracking_uri'])}): {html.escape(counts)}.</p>"
        "<h2>Baseline against the best trial</h2>"
        f"{summary.to_html(**fmt)}"
        + "".join(images)
        + "<h2>All trials, by validation loss</h2>"
        + table.to_html(index=False, **fmt)
        + "</body></html>"
    )
