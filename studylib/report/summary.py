"""What a study found, in numbers and one sentence: the top of each study report.

Pure functions from the study's frames (`load_runs` rows, the claims of claims.py) to a
`StudySummary`; pages.py lays it out and figures.summary_differences draws it. Nothing here
computes a statistic of its own: the differences, intervals and verdicts are the per-arm claims
(test accuracy and test loss against the baseline, Holm-adjusted within their families), so the
summary and the claims table cannot disagree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from studylib.config import ARM_KNOBS, REGULARIZER_OFF, SEARCHABLE
from studylib.names import STRENGTHS_TAG, TUNING_SEED_TAG
from studylib.report.claims import (
    ACCURACY,
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_MEASURED,
    SUPPORTED,
    ClaimResult,
    Comparison,
    DesignPower,
    declared,
)
from studylib.report.stats import ALPHA

EDGE_SHARE = 0.05  # within 5% of a range's width (log width on a log scale) of an end is its edge
FEW_SEEDS = 5  # fewer evaluation seeds than this get a warning


@dataclass(frozen=True)
class StudySummary:
    """What one study's ablation (one design, one architecture) found.

    `rows`, one per arm other than the baseline (ARMS order), columns:
      arm; strength: the arm's regularizer strengths ("l2=0.0079 (tuned)"), from the ablation
      parent's `studylib.strengths` tag (given strengths marked "given"); lr: the learning rate
      its runs used; n: seeds paired with the baseline;
      acc_diff, acc_low, acc_high: test accuracy, arm minus baseline, mean and UNADJUSTED 95%
      t-interval; acc_d_z, acc_p_holm (Holm within the "test accuracy" family), acc_verdict;
      loss_diff, loss_low, loss_high, loss_d_z, loss_p_holm, loss_verdict: the same on test
      loss (its own family; lower is better, so "supported" means a lower loss).
    `warnings`: plain sentences, empty when nothing is off (best sweep trial at the edge of a
    search range or still improving at max_epochs, an arm still improving at max_epochs, a
    tuned strength at the edge of its range, a tuning seed that is also an evaluation seed or
    was not recorded, fewer than five seeds).
    `sentence`: the result in one plain-English sentence.
    """

    study: str
    arch: str
    design: str
    seeds: list[int]
    tuning_seed: int | None
    rows: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    sentence: str = ""
    power: DesignPower | None = None


def summarize(
    study: str,
    arch: str,
    arms: pd.DataFrame,
    claims: list[ClaimResult],
    parents: pd.DataFrame,
    trials: pd.DataFrame,
    power: DesignPower | None = None,
) -> StudySummary:
    """`arms`: the finished arm runs of one design; `claims`: evaluate_claims on them;
    `parents`: the study's ablation parent runs (role "ablation", any design); `trials`: its
    finished sweep trials (may be empty)."""
    design = str(arms["design"].iloc[0]) if "design" in arms and len(arms) else ""
    parent = _parent(parents, design)
    seeds = [
        int(s) for s in declared(arms, "ablation.seeds", sorted(set(arms["seed"].astype(int))))
    ]
    tuning_seed = _tuning_seed(parent)
    strengths = arm_strengths(arms, parent)
    rows = []
    for claim in claims:
        if claim.main.family != ACCURACY:
            continue
        mine = arms[arms["arm"] == claim.arm]
        rows.append(
            {
                "arm": claim.arm,
                "strength": strengths.get(claim.arm, ""),
                "lr": _value(mine, "train.lr"),
                "n": claim.main.test.n if claim.main.test is not None else 0,
                **_numbers(claim.main, "acc_"),
                **_numbers(claim.beside, "loss_"),
            }
        )
    table = pd.DataFrame(rows, columns=ROW_COLUMNS)
    warnings = [
        *sweep_warnings(trials),
        *arm_warnings(arms),
        *strength_warnings(parent),
        *seed_warnings(seeds, tuning_seed, power),
    ]
    return StudySummary(
        study,
        arch,
        design,
        seeds,
        tuning_seed,
        table,
        warnings,
        plain_sentence(table, len(seeds), power),
        power,
    )


ROW_COLUMNS = [
    "arm",
    "strength",
    "lr",
    "n",
    *(
        f"{m}_{c}"
        for m in ("acc", "loss")
        for c in ("diff", "low", "high", "d_z", "p_holm", "verdict")
    ),
]


def _numbers(c: Comparison | None, prefix: str) -> dict:
    t = None if c is None else c.test
    return {
        f"{prefix}diff": math.nan if t is None else t.mean,
        f"{prefix}low": math.nan if t is None else t.low,
        f"{prefix}high": math.nan if t is None else t.high,
        f"{prefix}d_z": math.nan if t is None else t.d_z,
        f"{prefix}p_holm": math.nan if c is None else c.p_holm,
        f"{prefix}verdict": NOT_MEASURED if c is None else c.verdict,
    }


def _value(runs: pd.DataFrame, column: str) -> float:
    values = pd.to_numeric(runs[column], errors="coerce").dropna() if column in runs else []
    return float(values.iloc[0]) if len(values) else math.nan


def _parent(parents: pd.DataFrame, design: str) -> pd.Series | None:
    """The design's ablation parent run (the latest, when the ablation was resumed)."""
    if parents is None or parents.empty:
        return None
    mine = parents[parents["design"] == design] if "design" in parents else parents
    if mine.empty:
        return None
    return mine.sort_values("start_time").iloc[-1] if "start_time" in mine else mine.iloc[-1]


def _tag(parent: pd.Series | None, name: str):
    if parent is None:
        return None
    value = parent.get(f"tag:{name}")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _tuning_seed(parent: pd.Series | None) -> int | None:
    value = _tag(parent, TUNING_SEED_TAG)
    return None if value in (None, "") else int(value)


def _given(parent: pd.Series | None, knob: str) -> bool:
    """Whether the experiment file gave this strength (`ablation.strength.<knob>`)."""
    if parent is None:
        return False
    value = parent.get(f"ablation.strength.{knob}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value) not in ("None", "")


def arm_strengths(arms: pd.DataFrame, parent: pd.Series | None) -> dict[str, str]:
    """Arm -> its knobs as "name=value (tuned|given)", from the parent's `studylib.strengths`
    tag; without one (a parent run lost), from the arm runs' own params."""
    strengths = tagged_strengths(parent)
    out = {}
    for arm in set(arms["arm"]):
        knobs = (
            # each knob once: both early-stopping arms turn patience
            list(dict.fromkeys(k for knobs in ARM_KNOBS.values() for k in knobs))
            if arm == "all"
            else ARM_KNOBS.get(arm, ())
        )
        parts = []
        for knob in knobs:
            value = strengths.get(arm, strengths.get(SHARED, {})).get(
                knob, _value(arms[arms["arm"] == arm], SEARCHABLE[knob])
            )
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if parent is None:  # which strengths were given is on the parent run only
                parts.append(f"{knob}={float(value):.3g}")
            else:
                how = "given" if _given(parent, knob) else "tuned"
                parts.append(f"{knob}={float(value):.3g} ({how})")
        out[arm] = ", ".join(parts)
    return out


def _edge(value: float, spec: dict) -> str | None:
    """ "bottom" or "top" when value sits within EDGE_SHARE of that end of its range."""
    low, high = float(spec["low"]), float(spec["high"])
    if spec.get("log"):
        if value <= 0:
            return None
        low, high, value = math.log10(low), math.log10(high), math.log10(value)
    share = (value - low) / (high - low)
    if share <= EDGE_SHARE:
        return "bottom"
    if share >= 1 - EDGE_SHARE:
        return "top"
    return None


def _search(runs: pd.DataFrame | pd.Series) -> dict:
    value = runs.get("sweep.search")
    if isinstance(value, pd.Series):
        value = value.dropna().iloc[0] if not value.dropna().empty else None
    return json.loads(value) if isinstance(value, str) else {}


def sweep_warnings(trials: pd.DataFrame) -> list[str]:
    """The best sweep trial (lowest validation loss) at the edge of a search range, or keeping
    its last epoch at max_epochs (its validation loss was still falling)."""
    if trials is None or trials.empty or "selected_val_loss" not in trials:
        return []
    best = trials.loc[trials["selected_val_loss"].idxmin()]
    out = []
    for name, spec in _search(trials).items():
        value = pd.to_numeric(pd.Series([best.get(SEARCHABLE.get(name, name))]), errors="coerce")[0]
        if pd.isna(value) or (name in REGULARIZER_OFF and value == REGULARIZER_OFF[name]):
            continue  # switched off by the search (allow_zero): not a point in the range
        if name == "patience" and str(best.get("train.early_stopping")) == "False":
            continue  # a patience nobody used
        end = _edge(float(value), spec)
        if end:
            out.append(
                f"The best sweep trial ({int(best['trial'])}) has {name} = {value:.3g}, at the "
                f"{end} of its search range [{spec['low']:g}, {spec['high']:g}]: the best value "
                "may lie outside the range."
            )
    max_epochs = best.get("train.max_epochs")
    at_end = max_epochs is not None and not pd.isna(max_epochs)
    if at_end and float(best.get("best_epoch", 0)) >= float(max_epochs):
        out.append(
            f"The best sweep trial ({int(best['trial'])}) had its lowest validation loss at its "
            f"last epoch, max_epochs = {int(max_epochs)}: it was still improving, and more "
            "epochs may change the result."
        )
    return out


def arm_warnings(arms: pd.DataFrame) -> list[str]:
    """Arms whose validation loss was lowest at max_epochs (still improving when training
    ended), in how many of their seeds."""
    if not {"best_epoch", "train.max_epochs"} <= set(arms.columns):
        return []
    out = []
    for arm, runs in arms.groupby("arm", sort=False):
        best = pd.to_numeric(runs["best_epoch"], errors="coerce")
        limit = pd.to_numeric(runs["train.max_epochs"], errors="coerce")
        at_end = int((best >= limit).sum())
        if at_end:
            out.append(
                f"The {arm} arm had its lowest validation loss at its last epoch (max_epochs = "
                f"{int(limit.max())}) in {at_end} of {len(runs)} seeds: it was still improving, "
                "and more epochs may change its result."
            )
    return out


SHARED = "*"  # the key of an older study's strengths, shared by every arm


def tagged_strengths(parent: pd.Series | None) -> dict[str, dict[str, float]]:
    """Arm -> knob -> strength from the ablation parent's `studylib.strengths` tag. Older
    studies tagged one flat {knob: strength} shared by every arm: read as such."""
    tagged = _tag(parent, STRENGTHS_TAG)
    if not tagged:
        return {}
    raw = json.loads(tagged)
    if all(isinstance(v, dict) for v in raw.values()):
        return raw
    return {SHARED: raw}


def strength_warnings(parent: pd.Series | None) -> list[str]:
    """A strength the ablation tuned that sits at the edge of its search range."""
    search = _search(parent) if parent is not None else {}
    out = []
    for arm, knobs in tagged_strengths(parent).items():
        for knob, value in knobs.items():
            if knob not in search or _given(parent, knob) or value is None:
                continue
            end = _edge(float(value), search[knob])
            if end:
                spec = search[knob]
                who = "The ablation's" if arm == SHARED else f"The {arm} arm's"
                out.append(
                    f"{who} tuned {knob} ({float(value):.3g}) sits at the {end} of "
                    f"its search range [{spec['low']:g}, {spec['high']:g}]: the range may cut "
                    "off the best value."
                )
    return out


def seed_warnings(
    seeds: list[int], tuning_seed: int | None, power: DesignPower | None
) -> list[str]:
    out = []
    if tuning_seed is None:
        first = f" (older studylib tuned on the first, {seeds[0]})" if seeds else ""
        out.append(
            "The tuning seed was not recorded" + first + ": a tuned arm's run on a seed it was "
            "tuned on repeats a best-of-N selection on validation loss."
        )
    elif tuning_seed in seeds:
        out.append(
            f"The arms were tuned on seed {tuning_seed}, which is also an evaluation seed: that "
            "seed's tuned arm runs repeat a best-of-N selection on validation loss."
        )
    if len(seeds) < FEW_SEEDS:
        detect = ""
        if power is not None and ACCURACY in power.detectable:
            detect = (
                f" (the test-accuracy claims find only d_z >= "
                f"{power.detectable[ACCURACY]:.3g} with 80% power)"
            )
        out.append(
            f"Only {len(seeds)} evaluation seeds{detect}: most true effects of a regularizer "
            "will come out inconclusive."
        )
    return out


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def plain_sentence(rows: pd.DataFrame, n: int, power: DesignPower | None = None) -> str:
    """One sentence: which arms raised test accuracy over the baseline, lowered it, or could not
    be told apart from it, and where test loss said otherwise."""
    if rows.empty:
        return "No regularized arm was compared with the baseline."
    by = {
        v: list(rows.loc[rows["acc_verdict"] == v, "arm"])
        for v in (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED)
    }
    parts = []
    if by[SUPPORTED]:
        parts.append(f"{_join(by[SUPPORTED])} raised test accuracy over the baseline")
    if by[CONTRADICTED]:
        parts.append(f"{_join(by[CONTRADICTED])} lowered test accuracy below the baseline")
    if by[INCONCLUSIVE]:
        detect = ""
        if power is not None and ACCURACY in power.detectable:
            detect = f" (the design finds d_z >= {power.detectable[ACCURACY]:.3g} with 80% power)"
        parts.append(f"{_join(by[INCONCLUSIVE])} could not be told apart from the baseline{detect}")
    if by[NOT_MEASURED]:
        parts.append(f"{_join(by[NOT_MEASURED])} had no runs paired with the baseline")
    loss_better = rows[(rows["loss_verdict"] == SUPPORTED) & (rows["acc_verdict"] != SUPPORTED)]
    loss_worse = rows[
        (rows["loss_verdict"] == CONTRADICTED) & (rows["acc_verdict"] != CONTRADICTED)
    ]
    if not loss_better.empty:
        parts.append(f"test loss nonetheless favoured {_join(list(loss_better['arm']))}")
    if not loss_worse.empty:
        parts.append(f"test loss was worse for {_join(list(loss_worse['arm']))}")
    return (
        f"Over {n} paired seeds (Holm-adjusted paired t-tests, alpha = {ALPHA:g}), "
        + "; ".join(parts)
        + "."
    )
