"""Report: read runs and their full histories back from MLflow, write reports/<study>/.

Everything here comes from what MLflow holds, never from a sweep's memory, so a report can be
rebuilt at any time on any machine that reaches the tracking store. Per study it writes
`index.html` (self-contained: figures embedded, opens offline), `report.md` and the PNGs.
Sections, per architecture of the study: the sweep (best trial against the baseline, loss
against each hyperparameter, dropout x L2 heatmap, fANOVA importance, stopping against
patience, every trial) and the ablation (arm curves over seeds, gap per arm with confidence
intervals, sparsity and norm for L1 against L2, stopping rules compared, the claims table);
on top, each study's summary (summary.py) and a leaderboard of test accuracy; for text
studies, the OOV rate against tokenizer. Arm runs are read one design per study (the newest).
The pages are drawn by render.py (HTML and its Markdown twin).
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient

import studylib.report.charts as charts  # submodules by name: the package's __init__
import studylib.report.figures as figures  # imports this module
import studylib.report.lecture as lecture
import studylib.report.links as links
from studylib.config import ARMS, SEARCHABLE, SearchRange
from studylib.errors import ConfigError
from studylib.locations import Location
from studylib.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, GROUP_TAG, ROLE_TAG
from studylib.redact import redact
from studylib.report.claims import (
    ACCURACY,
    FAMILIES,
    NOT_MEASURED,
    ClaimResult,
    check_one_run_per_cell,
    claims_frame,
    design_power,
    evaluate_claims,
    newest_design,
    pruning_table,
    regret_table,
    stopping_rules,
    vanishing_gradients,
)
from studylib.report.completeness import completeness, split_relogged
from studylib.report.contrasts import GROUP_CLAIMS, group_claims
from studylib.report.group_figures import clipping, depth_figure, member_table, state_grad_profile
from studylib.report.render import STYLE, Block, Section, render_html, render_markdown
from studylib.report.results import load_curves, load_runs
from studylib.report.stats import ALPHA, POWER, detectable_effect, mean_ci
from studylib.report.summary import StudySummary, summarize
from studylib.sweep.space import distributions

FINISHED = ("completed", "early_stopped")
PROBLEMS = ("diverged", "crashed", "killed")
SWEEP_KEYS = ("train/loss", "val/loss")
# test/* exist for ablation arms that opted into per-epoch test figures (early stopping's regret
# and the stopping-rule table read them; selection never does).
ARM_KEYS = (
    "train/loss",
    "val/loss",
    "train/acc",
    "val/acc",
    "weights/sparsity",
    "weights/l2_norm",
    "test/acc",
    "test/loss",
)


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
    attach: bool = True,
) -> list[Path]:
    """One report per study; one side-by-side report per study group (`group-<name>/`) and,
    with several studies and no group asked for, one comparing them all; `out/index.html`,
    the landing page, links them all (first in the returned list). With the Optuna `storage`,
    each lists the trials Optuna holds that have no MLflow run (completeness.py). `attach`:
    each study's report is also logged to its newest sweep and ablation parent runs."""
    out = Path(out)
    studies = study_names(tracking_uri)
    groups = study_groups(tracking_uri)
    home = "../index.html"
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
        pages = [(name, [name], True) for name in names]
        pages.append((f"group-{group}", members, False))
    else:
        names = list(experiments) if experiments else studies
        if not names:
            raise ConfigError(
                f"{redact(tracking_uri)}: no studylib runs found; run `make sweep` first"
            )
        pages = [(name, [name], True) for name in names]
        if not experiments:
            for name, members in groups.items():
                present = [s for s in members if s in studies]
                if present:
                    pages.append((f"group-{name}", present, False))
        if len(names) > 1:
            pages.append(("+".join(names) if experiments else "all-studies", names, False))
    written = [
        _write_report(
            tracking_uri, members, out / folder, detail, storage if detail else None, home
        )
        for folder, members, detail in pages
    ]
    landing = write_landing(out, written, tracking_uri)
    if attach:
        for (_, members, detail), page in zip(pages, written, strict=True):
            if detail:
                attach_report(tracking_uri, members[0], page.index.parent)
                attach_run_curves(tracking_uri, page.runs, page.curves)
    return [landing, *(page.index for page in written)]


CURVES_PNG = "curves.png"


def attach_run_curves(tracking_uri: str, runs: pd.DataFrame, curves: pd.DataFrame) -> int:
    """Give each run whose curves the report read (baselines, best trials, arm runs) a
    `curves.png` artifact: train beside validation on one figure, which MLflow's metrics tab
    draws as separate charts. Drawn here, at report time, never on the training path; a run
    that has one keeps it. Returns how many were drawn."""
    client = MlflowClient(tracking_uri)
    drawn = 0
    for run_id, mine in curves.groupby("run_id"):
        if any(a.path == CURVES_PNG for a in client.list_artifacts(run_id)):
            continue
        row = runs[runs["run_id"] == run_id]
        title = run_label(row.iloc[0]) if not row.empty else run_id
        if not row.empty and row["role"].iloc[0] == "arm":
            title = f"arm {row['arm'].iloc[0]}, seed {int(row['seed'].iloc[0])}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / CURVES_PNG
            figures.run_curves(mine, title, path)
            client.log_artifact(run_id, str(path))
        drawn += 1
    return drawn


def write_landing(out: Path, written: list[Written], tracking_uri: str) -> Path:
    """`out/index.html`: every report of this run with its first sentence, and the MLflow UI."""
    items = []
    for page in written:
        href = f"{page.index.parent.name}/index.html"
        items.append(
            f"<li><a href='{html.escape(href)}'><strong>{html.escape(page.title)}</strong></a>"
            f"<br><span>{html.escape(page.headline)}</span></li>"
        )
    ui = links.ui_base(tracking_uri)
    body = (
        "<h1>Regularization studies: reports</h1>"
        f"<p>Written from MLflow ({html.escape(redact(tracking_uri))}). Each study's page opens "
        "on what regularization did (paired differences against the baseline, with verdicts); "
        "group pages set studies side by side.</p>"
        f"<ul class='reports'>{''.join(items)}</ul>"
        f"<p class='links'><a href='{html.escape(links.home_url(ui))}'>MLflow UI</a> (for a "
        "local store, start "
        "it first: <code>make ui</code>)</p>"
    )
    path = Path(out) / "index.html"
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Regularization studies</title>"
        f"<style>{STYLE}ul.reports li{{margin-bottom:.8em}}</style></head><body>{body}"
        "</body></html>"
    )
    return path


def attach_report(tracking_uri: str, experiment: str, folder: Path) -> None:
    """Log a study's report folder as the artifact `report/` of its newest sweep and ablation
    parent runs, where the MLflow UI shows it beside the runs it was written from."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    if EXPERIMENT_KIND_TAG not in found.tags:  # a study tracked before sweeps set it
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    for role in ("sweep", "ablation"):
        parents = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = '{role}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if parents:
            client.log_artifacts(parents[0].info.run_id, str(folder), "report")


def write_report(
    tracking_uri: str,
    experiments: list[str],
    folder: Path,
    detail: bool = True,
    storage: Location | None = None,
    home: str | None = None,
) -> Path:
    """The report of one or several studies; `detail=False` keeps to the side-by-side view
    (leaderboard, claims, architectures compared), leaving each study's sections to its own.
    `home`: the landing page's URL relative to the page (write_reports writes one)."""
    return _write_report(tracking_uri, experiments, folder, detail, storage, home).index


@dataclass
class Written:
    index: Path
    title: str
    headline: str  # the page's first sentence: what regularization did, or what it holds
    runs: pd.DataFrame  # the finished runs it was written from
    curves: pd.DataFrame  # the curves it read (baseline, best trial, every arm run)


def _write_report(
    tracking_uri: str,
    experiments: list[str],
    folder: Path,
    detail: bool,
    storage: Location | None,
    home: str | None,
) -> Written:
    runs = load_runs(experiments, tracking_uri)
    finished = runs[runs["status"].isin(FINISHED)] if not runs.empty else runs
    # Runs re-logged from Optuna have no curves to draw: they are listed apart (completeness.py).
    finished, relogged = split_relogged(finished)
    if finished.empty and relogged.empty:
        raise ConfigError(
            f"experiment {', '.join(experiments)!s} in {redact(tracking_uri)} has no finished runs "
            f"({len(runs)} runs in all); run `make sweep` first"
        )
    finished, design_notes = one_design_per_study(finished)
    folder.mkdir(parents=True, exist_ok=True)
    groups = list(finished.groupby(["experiment", "arch"], sort=True))
    curves = load_curves(_needed_runs(finished), keys=ARM_KEYS, tracking_uri=tracking_uri)
    gradients = finished[
        finished.get("train.grad_norms", pd.Series("", index=finished.index)).astype(str) == "True"
    ]
    grad_curves = load_curves(
        gradients["run_id"], keys=(), tracking_uri=tracking_uri, prefixes=("grad_norm/",)
    )

    results: dict[tuple[str, str], list[ClaimResult]] = {}
    for key, group in groups:
        arms = group[group["role"] == "arm"]
        if not set(arms["arm"]) <= {"baseline"}:  # something to compare the baseline with
            results[key] = evaluate_claims(arms, curves)
    ui = links.ui_base(tracking_uri)
    chart_page = charts.Page() if charts.available() else None
    sections = []
    lead: list[Block] = []
    if detail:
        parents = load_runs(experiments, tracking_uri, roles=("ablation",))
        for key, group in groups:
            if key in results:
                summary = study_summary(key, group, results[key], parents)
                section = summary_section(summary, folder, design_notes.get(key[0], ""))
                # The answer leads the page: its sentence and figure, above the contents.
                lead += [b for b in section.blocks if b.lead]
                section.blocks = [b for b in section.blocks if not b.lead]
                sections.append(section)
        for key, group in groups:
            trials = group[group["role"] == "trial"]
            if key not in results and not trials.empty:
                lead.append(Block(text=sweep_headline(key, trials)))
        lead += mlflow_links(finished, ui)
    sections.append(leaderboard(groups))
    claims = claims_section(groups, results, gradients, grad_curves, curves, design_notes)
    if claims is not None:
        sections.append(claims)
    sections += lecture_sections(finished, tracking_uri, folder)
    sections += group_claims_sections(finished, grad_curves, folder)
    if len(groups) > 1:
        sections.append(families_section(groups, curves, folder))
    oov = oov_section(tracking_uri, experiments, folder)
    if oov is not None:
        sections.append(oov)
    for (experiment, arch), group in groups if detail else []:
        prefix = f"{experiment}-{arch}"
        sections += sweep_sections(group, curves, folder, prefix, ui, chart_page)
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
    (folder / "report.md").write_text(render_markdown(title, intro, sections, lead))
    index = folder / "index.html"
    index.write_text(render_html(title, intro, sections, folder, home=home, lead=lead))
    texts = [b.text for b in lead if b.text]
    return Written(index, title, texts[0] if texts else intro, finished, curves)


def sweep_headline(key: tuple[str, str], trials: pd.DataFrame) -> str:
    """A sweep-only study's first sentence: its best trial against its baseline."""
    experiment, arch = key
    best = trials.loc[trials["selected_val_loss"].idxmin()]
    base = trials[trials["baseline"]]
    against = (
        f" against the unregularized baseline's {base['test_acc'].iloc[0]:.4f}"
        if not base.empty
        else " (no baseline trial finished)"
    )
    return (
        f"{experiment} / {arch}: over {len(trials)} finished sweep trials, the one with the "
        f"lowest validation loss ({run_label(best)}) reached test accuracy "
        f"{best['test_acc']:.4f}{against}; one seed each, so no verdict: an ablation over seeds "
        "gives one."
    )


def run_label(run) -> str:
    """ "trial 27: dropout 0.10, l2 7.9e-3", from a `load_runs` row (the run's own name)."""
    name = run.get("tag:mlflow.runName") if hasattr(run, "get") else None
    return str(name) if isinstance(name, str) and name else f"trial {int(run['trial'])}"


def mlflow_links(finished: pd.DataFrame, ui: str) -> list[Block]:
    """Per study: its runs table in the MLflow UI and, for a sweep, the compare view of its
    baseline and best trials."""
    found = []
    for experiment, group in finished.groupby("experiment", sort=True):
        experiment_id = str(group["experiment_id"].iloc[0])
        trials = group[group["role"] == "trial"]
        role = "trial" if not trials.empty else "arm"
        pairs = [(f"{experiment}: runs in MLflow", links.experiment_url(ui, experiment_id, role))]
        if not trials.empty:
            best = trials.loc[trials["selected_val_loss"].idxmin()]
            ids = [*trials.loc[trials["baseline"], "run_id"], best["run_id"]]
            pairs.append(
                (
                    f"{experiment}: compare baseline and best trial",
                    links.compare_url(ui, [experiment_id], list(dict.fromkeys(ids))),
                )
            )
        arms = group[group["role"] == "arm"]
        if not arms.empty and (arms["arm"] == "baseline").any():
            pairs.append(
                (
                    f"{experiment}: compare ablation arms",
                    links.compare_url(ui, [experiment_id], list(arms["run_id"])),
                )
            )
        found.append(Block(links=pairs))
    return found


def one_design_per_study(finished: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Keep each study's newest ablation design (the one whose first run started last), after
    checking it holds one run per arm and seed; say per study what was left out."""
    arms = finished["role"] == "arm"
    if not arms.any():
        return finished, {}
    keep = ~arms
    notes = {}
    for experiment, runs in finished[arms].groupby("experiment"):
        choice = newest_design(runs)
        check_one_run_per_cell(choice.arms)
        keep |= finished.index.isin(choice.arms.index)
        if choice.note():
            notes[experiment] = choice.note()
    return finished[keep], notes


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
            if (
                regularized.empty
            ):  # a comparison of models (experiments/depth.toml), not of regularizers
                rows.append(
                    {
                        "study": experiment,
                        "arch": arch,
                        "source": "ablation",
                        **paper,
                        "baseline test acc": _spread(base["test_acc"]),
                        "best regularized": "none (baseline arm only)",
                        "best test acc": "",
                        "seeds": len(base),
                    }
                )
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
    if not rows:
        return Section(
            "Leaderboard: test accuracy",
            [Block(text="No leaderboard: no study here has a finished baseline run.")],
        )
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
    groups,
    results: dict[tuple[str, str], list[ClaimResult]],
    gradients: pd.DataFrame,
    grad_curves: pd.DataFrame,
    curves: pd.DataFrame,
    design_notes: dict[str, str],
) -> Section | None:
    """Per study and architecture: what the design can detect (stated before any result), the
    per-arm claims with test accuracy beside test loss, then the other families; early
    stopping's regret and L1's prune-and-evaluate figures beside their claims."""
    blocks = []
    for (experiment, arch), group in groups:
        if (experiment, arch) not in results:
            continue
        arms = group[group["role"] == "arm"]
        where = f"{experiment} / {arch}"
        if design_notes.get(experiment):
            blocks.append(Block(text=f"{where}: {design_notes[experiment]}"))
        blocks.append(Block(text=f"{where}: {design_power(arms).sentence()}"))
        frame = claims_frame(results[(experiment, arch)])
        per_arm = frame[frame["family"] == ACCURACY]
        if not per_arm.empty:
            blocks.append(
                Block(
                    caption=f"{where}: does each regularizer improve test accuracy over the "
                    "baseline? Test accuracy (family 'test accuracy') beside test loss (family "
                    "'test loss'): differences are arm minus baseline, paired by seed, with "
                    "unadjusted 95% t-intervals; p from a two-sided paired t-test, Holm-adjusted "
                    "within its family; the verdict reads the adjusted p. The last column says "
                    "whether accuracy and loss agree.",
                    table=_claims_table(per_arm, experiment, arch, "test acc", "test loss"),
                )
            )
        others = frame[frame["family"] != ACCURACY]
        if not others.empty:
            blocks.append(
                Block(
                    caption=f"{where}: claims on mechanisms and early stopping, each in its "
                    "family (column 'family'; Holm within each). 'tested against' is the null of "
                    "the paired t-test: 0, or for early stopping's regret the margin declared in "
                    "advance. Intervals unadjusted 95% t-intervals.",
                    table=_claims_table(others, experiment, arch, "measure", "loss", family=True),
                )
            )
        regret = regret_table(arms, curves)
        if regret is not None:
            blocks.append(
                Block(
                    caption=f"{where}: early stopping's regret, per seed against the baseline "
                    "of the same seed (trained to the end, with per-epoch test figures that "
                    "selection never sees). Regret: the baseline's test accuracy at its epoch of "
                    "lowest validation loss minus the early-stopping arm's at its kept epoch "
                    "(loss: the other way round), the honest reference. Optimistic regret: "
                    "against the best test figure anywhere on the baseline's curve, a maximum "
                    "over every epoch's noisy test evaluation, so it is biased upwards and never "
                    "below the honest one. Mean and 95% t-interval over seeds.",
                    table=regret,
                )
            )
        pruning = pruning_table(arms)
        if pruning is not None:
            blocks.append(
                Block(
                    caption=f"{where}: prune and evaluate. For the l1, l2 and baseline arms, "
                    "the share of kept weights exactly 0 and below each threshold, the test "
                    "accuracy after zeroing the weights below it, and the drop from the same "
                    "run's unpruned test accuracy; mean and 95% t-interval over seeds.",
                    table=pruning,
                )
            )
    depth = vanishing_gradients(gradients, grad_curves)
    if depth.verdict != NOT_MEASURED:  # a comparison across studies (experiments/depth.toml)
        study = "+".join(sorted(set(gradients["experiment"])))
        blocks.append(
            Block(
                caption="Plain against residual MLPs of the same depth (experiments/depth.toml), "
                "paired by seed; family 'depth' (this one claim).",
                table=_claims_table(claims_frame([depth]), study, "mlp", "measure", "", True),
            )
        )
    if not blocks:
        return None
    families = "; ".join(f"'{name}': {what}" for name, what in FAMILIES.items())
    intro = Block(
        text="How a verdict is computed: arms are paired by seed (a seed fixes split, init, "
        "batch order and dropout masks). Each claim is a two-sided paired t-test; its p-value is "
        f"Holm-adjusted within a family declared in advance ({families}), per study and "
        f"architecture, at a family-wise alpha of {ALPHA:g}. Supported: adjusted p < alpha with "
        "the difference on the claimed side; contradicted: adjusted p < alpha on the other "
        "side; inconclusive: otherwise; not measured: the runs are missing. Intervals are 95% "
        "t-intervals, NOT adjusted for multiplicity, so an interval can exclude 0 while the "
        "verdict stays inconclusive. d_z = mean paired difference / its standard deviation."
    )
    return Section("Claims of the lecture notes, checked", [intro, *blocks])


def lecture_sections(finished: pd.DataFrame, tracking_uri: str, folder: Path) -> list[Section]:
    """Memorization, L2 against decay under Adam, dropout as an ensemble (per study) and
    overfitting against data and noise (per study group), wherever the runs hold such a
    design (lecture.py recognises each by its params): the design's power, the claims in the
    verdicts form, and each experiment's own table and figure."""
    arms = finished[finished["role"] == "arm"] if not finished.empty else finished
    sections: list[Section] = []
    if arms.empty:
        return sections

    def claims_block(results, where: str, caption: str) -> list[Block]:
        table = _claims_table(claims_frame(results), where, "", "measure", "", family=True)
        n = max((r.main.test.n for r in results if r.main.test is not None), default=0)
        return [
            Block(text=f"{where}: {lecture.family_power(results, n)}"),
            Block(caption=caption, table=table.drop(columns=["arch"])),
        ]

    verdicts = (
        "Each row: a two-sided paired t-test by seed, Holm-adjusted within the family "
        "declared in studylib/report/lecture.py; the interval is the unadjusted 95% "
        "t-interval; 'tested against' is the t-test's null (0, or a margin declared in "
        "advance)."
    )
    for (experiment, arch), group in arms.groupby(["experiment", "arch"], sort=True):
        where = f"{experiment} / {arch}"
        results = lecture.memorization_claims(group)
        if results:
            ids = lecture.memorization_runs(group)["run_id"]
            curves = load_curves(ids, keys=("train/acc",), tracking_uri=tracking_uri)
            png = f"{experiment}-{arch}-memorization.png"
            blocks = claims_block(
                results,
                where,
                "Memorization (Zhang et al. 2017): uniformly random training labels; does each "
                "arm still fit them? " + verdicts,
            )
            blocks.append(
                Block(
                    caption="Per arm: epochs to fit (the first epoch with train accuracy "
                    f"{lecture.FIT_ACC} or more, over the seeds that reached it), final train "
                    "and test accuracy; mean and 95% t-interval over seeds.",
                    table=lecture.memorization_table(group, curves),
                )
            )
            blocks.append(Block(lecture.memorization_figure(group, curves, folder / png), png=png))
            sections.append(Section(f"{where}: memorization of random labels", blocks))
        results = lecture.l2_decay_claims(group)
        if results:
            sections.append(
                Section(
                    f"{where}: the L2 penalty against weight decay under Adam",
                    claims_block(
                        results,
                        where,
                        "Under plain SGD the two take identical steps at weight_decay = 2 l2 "
                        "(a unit test); under Adam (Loshchilov and Hutter) they should not. "
                        + verdicts,
                    ),
                )
            )
        results = lecture.ensemble_claims(group)
        if results:
            sections.append(
                Section(
                    f"{where}: dropout as an ensemble",
                    claims_block(
                        results,
                        where,
                        "MC dropout (the mean softmax of many stochastic passes of the kept "
                        "weights) against the single deterministic pass, the same run on both "
                        "sides, paired by seed. ECE: 15 equal-width confidence bins. " + verdicts,
                    ),
                )
            )
    group_column = f"tag:{GROUP_TAG}"
    if group_column in arms:
        for (name, arch), group in arms.groupby([group_column, "arch"], sort=True):
            results = lecture.data_noise_claims(group)
            if not results:
                continue
            where = f"group {name} / {arch}"
            png = f"{name}-{arch}-data-noise.png"
            blocks = claims_block(
                results,
                where,
                "Overfitting against data and noise: the claims, declared before the runs. "
                + verdicts,
            )
            blocks.append(
                Block(
                    caption="Per cell: the baseline's gap (train minus validation, kept "
                    "weights) and test accuracy, and per arm its benefit (test accuracy minus "
                    "the baseline's, same seed) and its strength tuned in that cell; mean and "
                    "95% t-interval over seeds.",
                    table=lecture.data_noise_table(group),
                )
            )
            blocks.append(Block(lecture.data_noise_figure(group, folder / png), png=png))
            sections.append(Section(f"{where}: overfitting against data and noise", blocks))
    return sections


def group_claims_sections(finished: pd.DataFrame, grad_curves: pd.DataFrame, folder: Path):
    """One section per group with declared claims across its members (contrasts.py): the
    design's power, the verdicts, the members' figures and a table of each member."""
    sections = []
    arms = finished[finished["role"] == "arm"] if "role" in finished else finished
    for group, results in group_claims(arms, grad_curves).items():
        frame = claims_frame(results)
        n = int(frame["n"].max()) if len(frame) else 0
        families = {c.family: 0 for c in GROUP_CLAIMS[group]}
        for c in GROUP_CLAIMS[group]:
            families[c.family] += 1
        power = "; ".join(
            f"{family} (m = {m}): d_z >= {_stat(detectable_effect(n, ALPHA / m))}"
            for family, m in families.items()
        )
        blocks = [
            Block(
                text=f"Group {group}: members compared paired by seed (a seed fixes the split "
                "and the batch order; the members differ in what the group varies). Each claim "
                "is a two-sided paired t-test, Holm-adjusted within its family at alpha = "
                f"{ALPHA:g}; a claim with a margin tests the difference against it ('tested "
                f"against'). With n = {n} seeds, the d_z found with {POWER:.0%} power at Holm's "
                f"first step: {power}."
                if n >= 2
                else f"Group {group}: fewer than two seeds."
            ),
            Block(
                caption=f"Claims of group {group}, each in its family (Holm within each); "
                "differences are the first side minus the second, paired by seed, with "
                "unadjusted 95% t-intervals.",
                table=_claims_table(frame, group, "", "measure", "", family=True),
            ),
        ]
        prefix = f"group-{group}"
        for name, draw, args in (
            ("state-grads", state_grad_profile, (arms, group)),
            ("clipping", clipping, (arms, grad_curves, group)),
            ("depth", depth_figure, (arms, grad_curves, group)),
        ):
            png = f"{prefix}-{name}.png"
            caption = draw(*args, folder / png)
            if caption is not None:
                blocks.append(Block(caption=caption, png=png))
        blocks.append(
            Block(
                caption=f"Members of group {group}: test accuracy (and, for text, tokens per "
                "validation word and the test OOV rate; the training wall time in seconds), "
                "mean and 95% t-interval over seeds.",
                table=member_table(arms, group),
            )
        )
        sections.append(Section(f"Group {group}: claims across its members", blocks))
    return sections


def _difference(row, prefix: str) -> str:
    n = row[f"{prefix}n"]
    if not n:
        return row[f"{prefix}evidence"]
    mean = row[f"{prefix}difference"]
    if n < 2:
        return f"{mean:+.4g} (n=1)"
    return f"{mean:+.4g} [{row[f'{prefix}low']:.4g}, {row[f'{prefix}high']:.4g}]"


def _stat(value: float, p: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if p and value == 0:
        return "0 (no spread)"
    if p and value < 1e-4:
        return f"{value:.1e}"
    return f"{value:.3g}"


def _claims_table(
    frame: pd.DataFrame, study: str, arch: str, main: str, beside: str, family: bool = False
) -> pd.DataFrame:
    """Display form of a `claims_frame`: the main comparison, then the one beside it."""
    rows = []
    for _, r in frame.iterrows():
        row = {"study": study, "arch": arch, "claim": r["claim"]}
        if family:
            row.update({"family": r["family"], "measured": r["measured"]})
        row.update(
            {
                "n": r["n"],
                f"{main}: means": _means(r, ""),
                f"{main}: difference [95% CI, unadjusted]": _difference(r, ""),
            }
        )
        if family:
            row["tested against"] = _stat(r["null"])
        row.update(
            {
                "d_z": _stat(r["d_z"]),
                "p": _stat(r["p"], p=True),
                "p Holm": _stat(r["p_holm"], p=True),
                "verdict": r["verdict"],
            }
        )
        has_beside = isinstance(r.get("beside_family"), str)
        if beside:
            row.update(
                {
                    f"{beside}: difference [95% CI, unadjusted]": (
                        _difference(r, "beside_") if has_beside else ""
                    ),
                    f"{beside} d_z": _stat(r["beside_d_z"]) if has_beside else "",
                    f"{beside} p Holm": _stat(r["beside_p_holm"], p=True) if has_beside else "",
                    f"{beside} verdict": r["beside_verdict"] if has_beside else "",
                    "agree": {True: "yes", False: "NO"}.get(r.get("agree"), ""),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _means(row, prefix: str) -> str:
    if not row[f"{prefix}n"]:
        return ""
    return f"{row[f'{prefix}mean_a']:.4g} vs {row[f'{prefix}mean_b']:.4g}"


def study_summary(
    key: tuple[str, str], group: pd.DataFrame, claims: list[ClaimResult], parents: pd.DataFrame
) -> StudySummary:
    experiment, arch = key
    arms = group[group["role"] == "arm"]
    trials = group[group["role"] == "trial"]
    mine = parents[parents["experiment"] == experiment] if not parents.empty else parents
    return summarize(experiment, arch, arms, claims, mine, trials, design_power(arms))


def summary_section(summary: StudySummary, folder: Path, design_note: str) -> Section:
    """The top of a study report: the sentence, the design, the figure, the table, warnings."""
    where = f"{summary.study} / {summary.arch}"
    tuning = (
        f"arms tuned on seed {summary.tuning_seed}"
        if summary.tuning_seed is not None
        else "tuning seed not recorded"
    )
    design = (
        f"Ablation design {summary.design or '(untagged)'}: evaluation seeds "
        f"{', '.join(str(s) for s in summary.seeds)}; {tuning}."
    )
    blocks = [Block(text=summary.sentence, lead=True)]
    if (summary.rows["n"] > 0).any():
        png = f"{summary.study}-{summary.arch}-summary.png"
        caption = figures.summary_differences(summary.rows, folder / png)
        blocks.append(Block(caption, png=png, lead=True))
    strengths = [
        f"{r['arm']}: {r['strength']}" for _, r in summary.rows.iterrows() if r["strength"]
    ]
    if strengths:
        blocks.append(Block(text="Strengths used: " + "; ".join(strengths) + ".", lead=True))
    blocks += [Block(text=f"Warning: {w}", lead=True) for w in summary.warnings]
    blocks.append(Block(text=design))
    if design_note:
        blocks.append(Block(text=design_note))
    if summary.power is not None:
        blocks.append(Block(text=summary.power.sentence()))
    table = pd.DataFrame(
        {
            "arm": summary.rows["arm"],
            "strength": summary.rows["strength"],
            "lr": summary.rows["lr"],
            "n": summary.rows["n"],
            "test acc: difference [95% CI, unadjusted]": [
                _interval(r, "acc_") for _, r in summary.rows.iterrows()
            ],
            "test acc p Holm": summary.rows["acc_p_holm"].map(lambda p: _stat(p, p=True)),
            "test acc verdict": summary.rows["acc_verdict"],
            "test loss: difference [95% CI, unadjusted]": [
                _interval(r, "loss_") for _, r in summary.rows.iterrows()
            ],
            "test loss p Holm": summary.rows["loss_p_holm"].map(lambda p: _stat(p, p=True)),
            "test loss verdict": summary.rows["loss_verdict"],
        }
    )
    blocks.append(
        Block(
            caption="Per arm against the baseline, paired by seed: its strengths (tuned or "
            "given), the learning rate its runs used, and the test-accuracy and test-loss "
            "claims (the same numbers as the claims table).",
            table=table,
        )
    )
    return Section(f"{where}: summary", blocks)


def _interval(row, prefix: str) -> str:
    if row["n"] == 0:
        return ""
    mean, low, high = row[f"{prefix}diff"], row[f"{prefix}low"], row[f"{prefix}high"]
    if math.isnan(low):
        return f"{mean:+.4g}"
    return f"{mean:+.4g} [{low:.4g}, {high:.4g}]"


def family_runs(groups) -> pd.DataFrame:
    """Per study and architecture, the runs its panel draws: a sweep's best trial and its
    baseline trial; without a sweep, the ablation's baseline arm and its best regularized arm
    (lowest mean validation loss over seeds), one seed each (the lowest seed number both ran)."""
    rows = []
    archs = [arch for (_, arch), _ in groups]
    for (experiment, arch), group in groups:
        # One panel per study: an arch in two studies (MNIST-1D and text) gets two panels.
        label = arch if archs.count(arch) == 1 else f"{arch} ({experiment})"
        trials = group[group["role"] == "trial"]
        arms = group[group["role"] == "arm"]
        if not trials.empty:
            best = trials.loc[trials["selected_val_loss"].idxmin()]
            rows.append({"arch": label, "which": "best", "run_id": best["run_id"]})
            for _, base in trials[trials["baseline"]].iterrows():
                rows.append({"arch": label, "which": "baseline", "run_id": base["run_id"]})
        elif not arms.empty and (arms["arm"] == "baseline").any():
            base = arms[arms["arm"] == "baseline"].sort_values("seed").iloc[0]
            rows.append({"arch": label, "which": "baseline", "run_id": base["run_id"]})
            regularized = arms[(arms["arm"] != "baseline") & (arms["seed"] == base["seed"])]
            if not regularized.empty:
                best_arm = (
                    arms[arms["arm"] != "baseline"]
                    .groupby("arm")["selected_val_loss"]
                    .mean()
                    .idxmin()
                )
                pick = regularized[regularized["arm"] == best_arm]
                if not pick.empty:
                    rows.append({"arch": label, "which": "best", "run_id": pick["run_id"].iloc[0]})
    return pd.DataFrame(rows, columns=["arch", "which", "run_id"])


def families_section(groups, curves: pd.DataFrame, folder: Path) -> Section:
    rows = family_runs(groups)
    section = Section("Architectures side by side")
    if rows["arch"].nunique() < 2:
        section.blocks.append(
            Block(
                text="Nothing to set side by side: fewer than two of these studies have a "
                "finished baseline run."
            )
        )
        return section
    png = "families.png"
    caption = figures.family_curves(rows, curves, folder / png)
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


def sweep_sections(
    group: pd.DataFrame,
    curves,
    folder: Path,
    prefix: str,
    ui: str = links.LOCAL_UI,
    chart_page: charts.Page | None = None,
) -> list[Section]:
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
        Block(
            caption="Baseline against the best trial ('MLflow': the run's page in the MLflow UI).",
            table=_baseline_vs_best(baseline, best, ui),
        )
    )
    png = f"{prefix}-hparams.png"
    caption = figures.loss_vs_hyperparameters(trials, search, folder / png)
    hparams = Block(caption, png=png)
    section.blocks.append(hparams)
    if chart_page is not None:
        hparams.chart = charts.sweep_scatter(trials, search, ui, chart_page, f"{prefix}-scatter")
        hparams.caption += " Interactive: hover a point for the trial, click to open its run."
        section.blocks.append(
            Block(
                caption="Every finished sweep trial as one line across its hyperparameters "
                "(log-scaled ranges on log10 axes, 'off' one decade below) and its validation "
                "loss, coloured by that loss. Drag along an axis to select a range.",
                chart=charts.parallel_coordinates(trials, search, chart_page, f"{prefix}-parallel"),
            )
        )
    png = f"{prefix}-heatmap.png"
    caption = figures.dropout_l2_heatmap(trials, search, folder / png)
    if caption:
        grid, _ = figures.heatmap_grid(trials, search)
        meta = {"rows": json.dumps([str(r) for r in grid.index])}
        section.blocks.append(Block(caption, png=png, meta=meta))
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
            "weights; 'MLflow' opens the trial's run.",
            table=trial_table(trials, search, ui),
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


def _baseline_vs_best(baseline, best, ui: str = links.LOCAL_UI) -> pd.DataFrame:
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
            "MLflow": links.run_url(ui, str(run["experiment_id"]), run["run_id"]),
        }
    return pd.DataFrame(rows).T.reset_index(names="run")


def trial_table(trials: pd.DataFrame, search: dict, ui: str = links.LOCAL_UI) -> pd.DataFrame:
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
    table["MLflow"] = [
        links.run_url(ui, str(e), r)
        for e, r in zip(trials["experiment_id"], trials["run_id"], strict=True)
    ]
    return table.sort_values("val loss").reset_index(drop=True)


def ablation_sections(group: pd.DataFrame, curves, folder: Path, prefix: str) -> list[Section]:
    arms = group[group["role"] == "arm"]
    if arms.empty:
        return []
    experiment, arch = group["experiment"].iloc[0], group["arch"].iloc[0]
    section = Section(f"{experiment} / {arch}: ablation over seeds")
    png = f"{prefix}-arms.png"
    caption, xlims = figures.arm_curves(arms, curves, folder / png)
    meta = {"xlims": json.dumps(xlims)}
    section.blocks.append(Block(caption, png=png, meta=meta))
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
    stops = stopping_rules(arms, curves)
    if stops is not None:
        section.blocks.append(
            Block(
                caption="Stopping rules replayed on the baseline arm (trained to the end, so every "
                "rule sees the whole curve): the epoch each rule stops at, the epoch it would keep "
                "(lowest validation loss up to the stop) and that epoch's test accuracy and loss "
                "(from the per-epoch test curve; blank without one), mean and 95% t-interval over "
                "the seeds where it stopped ('stopped': in k of n seeds). Reference rows: the full "
                "run's validation minimum, and no stopping (the last epoch).",
                table=stops,
            )
        )
    return [section]


# Kept-weight statistics (the restored weights) where the runs logged them, else the last
# epoch's, which older runs have: (label, kept column, last-epoch column).
WEIGHT_COLUMNS = (
    ("weight norm", "kept_l2_norm", "final_l2_norm"),
    ("exactly 0", "kept_exact_zeros", None),
    ("|w| < 1e-3", "kept_sparsity/1e-3", "final_sparsity"),
)


def arm_table(arms: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for arm in [a for a in ARMS if a in set(arms["arm"])] + sorted(set(arms["arm"]) - set(ARMS)):
        mine = arms[arms["arm"] == arm]
        row = {
            "arm": arm,
            "seeds": len(mine),
            "test acc": str(mean_ci(mine["test_acc"])),
            "test loss": str(mean_ci(mine["test_loss"])) if "test_loss" in mine else "",
            "val loss": str(mean_ci(mine["selected_val_loss"])),
            # the gap the dropout claim tests and the gap figure draws: at the kept epoch
            "gap at kept epoch": str(mean_ci(mine["gap_loss"])),
            "kept epoch": str(mean_ci(mine["selected_epoch"])),
        }
        for label, kept, last in WEIGHT_COLUMNS:
            if kept in mine and mine[kept].notna().any():
                row[f"{label} (kept weights)"] = str(mean_ci(mine[kept]))
            elif last is not None and last in mine:
                row[f"{label} (last epoch)"] = str(mean_ci(mine[last]))
        rows.append(row)
    return pd.DataFrame(rows)


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
