"""Report: read runs and their full histories back from MLflow, write reports/<study>/.

Everything here comes from what MLflow holds, never from a sweep's memory, so a report can be
rebuilt at any time on any machine that reaches the tracking store. Per study it writes
`index.html` (self-contained: figures embedded, opens offline), `report.md` and the PNGs.
Sections, per architecture of the study: the sweep (best trial against the baseline, loss
against each hyperparameter, dropout x L2 heatmap, fANOVA importance, stopping against
patience, every trial) and the ablation (arm curves over seeds, gap per arm with confidence
intervals, sparsity and norm for L1 against L2, stopping rules compared, the claims table);
on top, a leaderboard of test accuracy; for text studies, the OOV rate against tokenizer.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient

from studylib.config import ARMS, SEARCHABLE, SearchRange
from studylib.errors import ConfigError
from studylib.locations import Location
from studylib.names import GROUP_TAG, ROLE_TAG
from studylib.redact import redact
from studylib.report import figures
from studylib.report.claims import check_claims, vanishing_gradients
from studylib.report.completeness import completeness, split_relogged
from studylib.report.results import load_curves, load_runs
from studylib.report.stats import mean_ci
from studylib.sweep.space import distributions

FINISHED = ("completed", "early_stopped")
PROBLEMS = ("diverged", "crashed", "killed")
SWEEP_KEYS = ("train/loss", "val/loss")
ARM_KEYS = ("train/loss", "val/loss", "weights/sparsity", "weights/l2_norm")


@dataclass
class Block:
    """A figure (png file name), a table, or a paragraph, with its caption."""

    caption: str = ""
    png: str | None = None
    table: pd.DataFrame | None = None
    text: str | None = None


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def study_names(tracking_uri: str) -> list[str]:
    """Experiments holding at least one studylib trial or ablation run."""
    client = MlflowClient(tracking_uri)
    names = []
    for exp in client.search_experiments():
        for role in ("trial", "arm"):
            if client.search_runs(
                [exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{role}'", max_results=1
            ):
                names.append(exp.name)
                break
    return sorted(names)


def study_groups(tracking_uri: str) -> dict[str, list[str]]:
    """Group name -> its member studies (MLflow experiments tagged by a group file)."""
    groups: dict[str, list[str]] = {}
    for exp in MlflowClient(tracking_uri).search_experiments():
        if GROUP_TAG in exp.tags:
            groups.setdefault(exp.tags[GROUP_TAG], []).append(exp.name)
    return {name: sorted(members) for name, members in sorted(groups.items())}


def write_reports(
    tracking_uri: str,
    out: Path,
    experiments: list[str] | None = None,
    group: str | None = None,
    storage: Location | None = None,
) -> list[Path]:
    """One report per study; one side-by-side report per study group (`group-<name>/`) and,
    with several studies and no group asked for, one comparing them all. With the Optuna
    `storage`, each lists the trials Optuna holds that have no MLflow run (completeness.py)."""
    out = Path(out)
    studies = study_names(tracking_uri)
    groups = study_groups(tracking_uri)
    if group is not None:
        if group not in groups:
            known = ", ".join(groups) or "none"
            raise ConfigError(
                f"--group {group}: no such study group in {redact(tracking_uri)}; known: {known}"
            )
        members = [s for s in groups[group] if s in studies]
        if not members:
            raise ConfigError(f"--group {group}: no member has finished runs; run its sweep first")
        names = list(experiments) if experiments else members
        written = [
            write_report(tracking_uri, [name], out / name, storage=storage) for name in names
        ]
        written.append(write_report(tracking_uri, members, out / f"group-{group}", detail=False))
        return written
    names = list(experiments) if experiments else studies
    if not names:
        raise ConfigError(f"{redact(tracking_uri)}: no studylib runs found; run `make sweep` first")
    written = [write_report(tracking_uri, [name], out / name, storage=storage) for name in names]
    if not experiments:
        for name, members in groups.items():
            present = [s for s in members if s in studies]
            if present:
                written.append(
                    write_report(tracking_uri, present, out / f"group-{name}", detail=False)
                )
    if len(names) > 1:
        combined = "+".join(names) if experiments else "all-studies"
        written.append(write_report(tracking_uri, names, out / combined, detail=False))
    return written


def write_report(
    tracking_uri: str,
    experiments: list[str],
    folder: Path,
    detail: bool = True,
    storage: Location | None = None,
) -> Path:
    """The report of one or several studies; `detail=False` keeps to the side-by-side view
    (leaderboard, claims, architectures compared), leaving each study's sections to its own."""
    runs = load_runs(experiments, tracking_uri)
    finished = runs[runs["status"].isin(FINISHED)] if not runs.empty else runs
    # Runs re-logged from Optuna have no curves to draw: they are listed apart (completeness.py).
    finished, relogged = split_relogged(finished)
    if finished.empty and relogged.empty:
        raise ConfigError(
            f"experiment {', '.join(experiments)!s} in {redact(tracking_uri)} has no finished runs "
            f"({len(runs)} runs in all); run `make sweep` first"
        )
    folder.mkdir(parents=True, exist_ok=True)
    groups = list(finished.groupby(["experiment", "arch"], sort=True))
    curves = load_curves(_needed_runs(finished), keys=ARM_KEYS, tracking_uri=tracking_uri)
    gradients = finished[
        finished.get("train.grad_norms", pd.Series(dtype=object)).astype(str) == "True"
    ]
    grad_curves = load_curves(
        gradients["run_id"], keys=(), tracking_uri=tracking_uri, prefixes=("grad_norm/",)
    )

    sections = [leaderboard(groups)]
    claims = claims_section(groups, curves, gradients, grad_curves)
    if claims is not None:
        sections.append(claims)
    if len(groups) > 1:
        sections.append(families_section(groups, curves, folder))
    oov = oov_section(tracking_uri, experiments, folder)
    if oov is not None:
        sections.append(oov)
    for (experiment, arch), group in groups if detail else []:
        prefix = f"{experiment}-{arch}"
        sections += sweep_sections(group, curves, folder, prefix)
        sections += ablation_sections(group, curves, folder, prefix)
    problems = runs[runs["status"].isin(PROBLEMS) | (runs["mlflow_status"] == "RUNNING")]
    if not problems.empty:
        sections.append(problems_section(problems))

    title = f"Regularization study: {', '.join(experiments)}"
    labels = {"trial": "sweep trials", "arm": "ablation runs"}
    states = runs["status"].where(runs["status"] != "", runs["mlflow_status"].str.lower())
    parts = []
    for role, group in states.groupby(runs["role"]):
        counts = ", ".join(f"{n} {state}" for state, n in group.value_counts().sort_index().items())
        parts.append(f"{len(group)} {labels.get(role, role)} ({counts})")
    intro = f"Read from MLflow ({redact(tracking_uri)}): {'; '.join(parts)}."
    complete = completeness(runs, relogged, experiments, storage)
    intro += complete.note
    sections += [Section(title, [Block(caption, table=t)]) for title, caption, t in complete.tables]
    (folder / "report.md").write_text(render_markdown(title, intro, sections))
    index = folder / "index.html"
    index.write_text(render_html(title, intro, sections, folder))
    return index


def _needed_runs(finished: pd.DataFrame) -> list[str]:
    ids = list(finished.loc[finished["role"] == "arm", "run_id"])
    for _, group in finished[finished["role"] == "trial"].groupby(["experiment", "arch"]):
        ids += list(group.loc[group["baseline"], "run_id"])
        ids.append(group.loc[group["selected_val_loss"].idxmin(), "run_id"])
    return ids


# ---------------------------------------------------------------------------------------------
# Sections


def leaderboard(groups) -> Section:
    rows = []
    for (experiment, arch), group in groups:
        # A published number this study reproduces (an experiment's [reference]) sits beside ours.
        reference = group.get("reference.test_acc", pd.Series(dtype=float)).dropna()
        paper = {"published test acc": f"{reference.iloc[0]:.4f}"} if not reference.empty else {}
        arms = group[group["role"] == "arm"]
        if not arms.empty:
            base = arms[arms["arm"] == "baseline"]
            regularized = arms[arms["arm"] != "baseline"]
            if regularized.empty:
                continue
            # The winning arm is chosen on validation loss; test accuracy is only reported.
            best_arm = regularized.groupby("arm")["selected_val_loss"].mean().idxmin()
            best = regularized[regularized["arm"] == best_arm]
            rows.append(
                {
                    "study": experiment,
                    "arch": arch,
                    "source": "ablation",
                    **paper,
                    "baseline test acc": _spread(base["test_acc"]),
                    "best regularized": best_arm,
                    "best test acc": _spread(best["test_acc"]),
                    "seeds": len(best),
                }
            )
        trials = group[group["role"] == "trial"]
        if not trials.empty:
            base = trials[trials["baseline"]]
            best = trials.loc[trials["selected_val_loss"].idxmin()]
            rows.append(
                {
                    "study": experiment,
                    "arch": arch,
                    "source": "sweep",
                    **paper,
                    "baseline test acc": _spread(base["test_acc"]),
                    "best regularized": f"trial {best['trial']}",
                    "best test acc": f"{best['test_acc']:.4f}",
                    "seeds": 1,
                }
            )
    n = sum(len(g) for _, g in groups)
    return Section(
        "Leaderboard: test accuracy",
        [
            Block(
                caption=(
                    "Test accuracy of the unregularized baseline and of the best regularized setting per "
                    "architecture. The best is chosen on validation loss (ablation: the arm with the "
                    "lowest mean validation loss over seeds; sweep: the trial with the lowest validation "
                    "loss); test accuracy is shown as mean +/- standard deviation over seeds. From "
                    f"{n} finished runs."
                ),
                table=pd.DataFrame(rows),
            )
        ],
    )


def _spread(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.4f}"
    return f"{values.mean():.4f} +/- {values.std(ddof=1):.4f} (n={len(values)})"


def claims_section(
    groups, curves: pd.DataFrame, gradients: pd.DataFrame, grad_curves: pd.DataFrame
) -> Section | None:
    tables = []
    depth = vanishing_gradients(gradients, grad_curves)
    if depth.verdict != "not measured":  # a comparison across studies (experiments/depth.toml)
        tables.append(
            pd.DataFrame(
                [
                    {
                        "study": "+".join(sorted(set(gradients["experiment"]))),
                        "arch": "mlp",
                        **depth.__dict__,
                    }
                ]
            )
        )
    for (experiment, arch), group in groups:
        arms = group[group["role"] == "arm"]
        if set(arms["arm"]) <= {"baseline"}:  # nothing to compare the baseline with
            continue
        table = check_claims(arms, curves)
        table.insert(0, "arch", arch)
        table.insert(0, "study", experiment)
        tables.append(table)
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    return Section(
        "Claims of the lecture notes, checked",
        [
            Block(
                caption=(
                    "Each claim against this study's ablation runs. Arms are paired by seed (a seed fixes "
                    "split, init, batch order and dropout masks); a verdict is computed from the 95% "
                    "t-interval of the paired difference: supported when it lies wholly on the claimed "
                    "side, contradicted when wholly on the other, inconclusive otherwise. The claim on "
                    "vanishing gradients needs plain and residual nets of the same depth with "
                    "per-layer gradient norms (experiments/depth.toml); it appears when the report "
                    "holds both."
                ),
                table=table,
            )
        ],
    )


def families_section(groups, curves: pd.DataFrame, folder: Path) -> Section:
    rows = []
    archs = [arch for (_, arch), _ in groups]
    for (experiment, arch), group in groups:
        trials = group[group["role"] == "trial"]
        if trials.empty:
            continue
        # One panel per study: an arch in two studies (MNIST-1D and text) gets two panels.
        label = arch if archs.count(arch) == 1 else f"{arch} ({experiment})"
        best = trials.loc[trials["selected_val_loss"].idxmin()]
        rows.append({"arch": label, "which": "best", "run_id": best["run_id"]})
        for _, base in trials[trials["baseline"]].iterrows():
            rows.append({"arch": label, "which": "baseline", "run_id": base["run_id"]})
    section = Section("Architectures side by side")
    if rows:
        png = "families.png"
        caption = figures.family_curves(pd.DataFrame(rows), curves, folder / png)
        section.blocks.append(Block(caption, png=png))
        png = "families-test.png"
        caption = figures.family_test_accuracy(groups, folder / png)
        section.blocks.append(Block(caption, png=png))
    return section


def oov_section(tracking_uri: str, experiments: list[str], folder: Path) -> Section | None:
    """OOV rate against tokenizer (text studies), from every finished run that logged one:
    sweep trials, ablation arms and single `studylib train` runs (`--set data.tokenizer=...`)."""
    runs = load_runs(experiments, tracking_uri, roles=("trial", "arm", "train"))
    if runs.empty or "oov_rate/val" not in runs:
        return None
    runs = runs[runs["status"].isin(FINISHED) & runs["oov_rate/val"].notna()]
    if runs.empty:
        return None
    png = "oov.png"
    caption, table = figures.oov_by_tokenizer(runs, folder / png)
    return Section(
        "Out-of-vocabulary rate against tokenizer",
        [
            Block(caption, png=png),
            Block(
                caption="Per tokenizer and model: finished runs, vocabulary size, mean OOV rate "
                "of validation and test, mean test accuracy.",
                table=table,
            ),
        ],
    )


def sweep_sections(group: pd.DataFrame, curves, folder: Path, prefix: str) -> list[Section]:
    trials = group[group["role"] == "trial"]
    if trials.empty:
        return []
    experiment, arch = group["experiment"].iloc[0], group["arch"].iloc[0]
    search = json.loads(trials["sweep.search"].dropna().iloc[0])
    section = Section(f"{experiment} / {arch}: sweep")
    baseline_rows = trials[trials["baseline"]]
    baseline = baseline_rows.iloc[0] if not baseline_rows.empty else None
    best = trials.loc[trials["selected_val_loss"].idxmin()]
    png = f"{prefix}-curves.png"
    section.blocks.append(
        Block(figures.best_vs_baseline(curves, baseline, best, folder / png), png=png)
    )
    section.blocks.append(
        Block(caption="Baseline against the best trial", table=_baseline_vs_best(baseline, best))
    )
    png = f"{prefix}-hparams.png"
    section.blocks.append(
        Block(figures.loss_vs_hyperparameters(trials, search, folder / png), png=png)
    )
    png = f"{prefix}-heatmap.png"
    caption = figures.dropout_l2_heatmap(trials, search, folder / png)
    if caption:
        section.blocks.append(Block(caption, png=png))
    importances = fanova(trials, search)
    if importances:
        png = f"{prefix}-importance.png"
        section.blocks.append(
            Block(figures.importance_bars(importances, len(trials), folder / png), png=png)
        )
    png = f"{prefix}-patience.png"
    caption = figures.stop_vs_patience(trials, folder / png)
    if caption:
        section.blocks.append(Block(caption, png=png))
    section.blocks.append(
        Block(
            caption=f"Every finished sweep trial ({len(trials)}), by validation loss of the kept "
            "weights.",
            table=trial_table(trials, search),
        )
    )
    return [section]


def fanova(trials: pd.DataFrame, search: dict) -> dict[str, float]:
    """fANOVA importance over the trials' Optuna parameters, rebuilt from MLflow params with
    the sweep's own search space (sweep/space.py)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = distributions({name: SearchRange.model_validate(spec) for name, spec in search.items()})
    columns = {name: f"optuna.{name}" for name in space}
    usable = trials.dropna(subset=[c for c in columns.values() if c in trials])
    if len(usable) < 3 or not all(c in trials for c in columns.values()):
        return {}
    study = optuna.create_study(direction="minimize")
    for _, row in usable.iterrows():
        params = {}
        for name, column in columns.items():
            value = row[column]
            if isinstance(space[name], optuna.distributions.CategoricalDistribution):
                value = str(value) == "True"
            elif isinstance(space[name], optuna.distributions.IntDistribution):
                value = int(value)
            else:
                value = float(value)
            params[name] = value
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=space, value=float(row["selected_val_loss"])
            )
        )
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (RuntimeError, ValueError):
        return {}


def _baseline_vs_best(baseline, best) -> pd.DataFrame:
    rows = {}
    for label, run in (("baseline", baseline), ("best trial", best)):
        if run is None:
            continue
        rows[label] = {
            "trial": int(run["trial"]),
            "kept epoch": int(run["selected_epoch"]),
            "train acc": run["selected_train_acc"],
            "val loss": run["selected_val_loss"],
            "val acc": run["selected_val_acc"],
            "gap (loss)": run["gap_loss"],
            "gap (acc)": run["gap_acc"],
            "test acc": run["test_acc"],
        }
    return pd.DataFrame(rows).T.reset_index(names="run")


def trial_table(trials: pd.DataFrame, search: dict) -> pd.DataFrame:
    columns = {"trial": "trial", "status": "status"}
    columns.update({SEARCHABLE[n]: n for n in SEARCHABLE if n in search})
    columns.update(
        {
            "best_epoch": "best epoch",
            "stopped_epoch": "stopped",
            "selected_val_loss": "val loss",
            "selected_val_acc": "val acc",
            "gap_loss": "gap (loss)",
            "test_acc": "test acc",
        }
    )
    table = trials[list(columns)].rename(columns=columns)
    table.loc[trials["baseline"].to_numpy(), "status"] += " (baseline)"
    return table.sort_values("val loss").reset_index(drop=True)


def ablation_sections(group: pd.DataFrame, curves, folder: Path, prefix: str) -> list[Section]:
    arms = group[group["role"] == "arm"]
    if arms.empty:
        return []
    experiment, arch = group["experiment"].iloc[0], group["arch"].iloc[0]
    section = Section(f"{experiment} / {arch}: ablation over seeds")
    png = f"{prefix}-arms.png"
    section.blocks.append(Block(figures.arm_curves(arms, curves, folder / png), png=png))
    png = f"{prefix}-gap.png"
    caption, _ = figures.gap_by_arm(arms, folder / png)
    section.blocks.append(Block(caption, png=png))
    png = f"{prefix}-weights.png"
    caption = figures.weights_over_epochs(arms, curves, folder / png)
    if caption:
        section.blocks.append(Block(caption, png=png))
    section.blocks.append(
        Block(caption="Per arm, mean and 95% t-interval over seeds.", table=arm_table(arms))
    )
    stops = stopping_table(arms)
    if stops is not None:
        section.blocks.append(
            Block(
                caption="When each stopping rule would have stopped the baseline arm (trained to the "
                "end, so every rule sees the full curve): mean epoch over seeds (0: never within the "
                "run), next to the epoch of the lowest validation loss.",
                table=stops,
            )
        )
    return [section]


def arm_table(arms: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for arm in [a for a in ARMS if a in set(arms["arm"])]:
        mine = arms[arms["arm"] == arm]
        rows.append(
            {
                "arm": arm,
                "seeds": len(mine),
                "test acc": str(mean_ci(mine["test_acc"])),
                "val loss": str(mean_ci(mine["selected_val_loss"])),
                "gap at best epoch": str(mean_ci(mine["best_gap_loss"])),
                "weight norm": str(mean_ci(mine["final_l2_norm"])),
                "sparsity": str(mean_ci(mine["final_sparsity"])),
                "kept epoch": str(mean_ci(mine["selected_epoch"])),
            }
        )
    return pd.DataFrame(rows)


def stopping_table(arms: pd.DataFrame) -> pd.DataFrame | None:
    base = arms[arms["arm"] == "baseline"]
    rules = [c for c in arms.columns if c.startswith("stop_epoch/")]
    if base.empty or not rules:
        return None
    row = {"best epoch": base["best_epoch"].mean()}
    # Each run scores patience at its own setting: keep the rules the baseline runs recorded.
    row.update(
        {
            c.removeprefix("stop_epoch/"): base[c].mean()
            for c in sorted(rules)
            if base[c].notna().any()
        }
    )
    return pd.DataFrame([row])


def problems_section(problems: pd.DataFrame) -> Section:
    reasons = problems.get("tag:studylib.reason", pd.Series("", index=problems.index))
    table = pd.DataFrame(
        {
            "trial": problems["trial"],
            "status": problems["status"].where(
                problems["status"] != "", problems["mlflow_status"].str.lower()
            ),
            "reason": reasons.fillna("").astype(str).map(redact),
            "study": problems["experiment"],
            "role": problems["role"],
            "arm": problems["arm"],
            "mlflow status": problems["mlflow_status"],
        }
    )
    return Section(
        "Trials without a result",
        [
            Block(
                caption=f"{len(problems)} runs diverged, crashed, were killed or are still RUNNING; "
                "they have no final metrics and are left out above.",
                table=table.reset_index(drop=True),
            )
        ],
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _markdown_table(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = [
        "| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def render_markdown(title: str, intro: str, sections: list[Section]) -> str:
    parts = [f"# {title}", intro]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if block.png:
                parts += [f"![{block.png}]({block.png})", f"*{block.caption}*"]
            elif block.table is not None:
                parts += [f"*{block.caption}*", _markdown_table(block.table)]
            elif block.text:
                parts.append(block.text)
    return "\n\n".join(parts) + "\n"


def render_html(title: str, intro: str, sections: list[Section], folder: Path) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;font-size:13px;margin-bottom:.5em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
        "img{max-width:100%}.caption{font-size:13px;color:#555;margin-bottom:1.5em}"
        ".table-wrap{overflow-x:auto}"
    )
    fmt = {"float_format": lambda v: f"{v:.4g}", "na_rep": "", "border": 0, "index": False}
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            caption = f"<div class='caption'>{html.escape(block.caption)}</div>"
            if block.png:
                data = base64.b64encode((folder / block.png).read_bytes()).decode()
                body.append(
                    f"<figure><img alt='{html.escape(block.png)}' "
                    f"src='data:image/png;base64,{data}'><figcaption class='caption'>"
                    f"{html.escape(block.caption)}</figcaption></figure>"
                )
            elif block.table is not None:
                body.append(f"<div class='table-wrap'>{block.table.to_html(**fmt)}</div>{caption}")
            elif block.text:
                body.append(f"<p>{html.escape(block.text)}</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )
