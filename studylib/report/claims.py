"""Claims of the lecture notes, and the study's main question, checked against its own runs.

Every verdict comes from ablation runs of ONE design (`studylib.ablation_key`), arms paired by
seed (a seed fixes split, init, batch order and dropout masks, so two arms of one seed differ
only in the regularizer). Each claim is a two-sided paired t-test (stats.paired_test) whose
p-value is Holm-adjusted within its family; the families are declared here, before any result:

- "test accuracy": every arm against the baseline, test accuracy of the kept weights (the
  study's main question: does the regularizer improve generalization?);
- "test loss": the same comparisons on test loss, shown beside accuracy (they can disagree:
  a better-calibrated model can have lower loss and lower accuracy);
- "mechanism": what a regularizer does to the weights or the gap (L1's zeros against L2's,
  L2's and weight decay's norm, dropout's train-validation gap);
- "early stopping regret (accuracy)" and "(loss)": the kept epoch against the baseline's
  epoch of lowest validation loss on the same seed (needs per-epoch test curves);
- "depth": plain against residual nets of the same depth (vanishing gradients).

Verdicts (alpha = 0.05 family-wise):
- "supported": Holm-adjusted p < alpha and the mean difference lies on the claimed side;
- "contradicted": Holm-adjusted p < alpha on the other side;
- "inconclusive": adjusted p >= alpha, or fewer than two seeds pair up;
- "not measured": the runs or metrics a claim needs are not in the study.
Intervals are 95% t-intervals of the mean paired difference, NOT adjusted for multiplicity.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace

import pandas as pd

from studylib.config import ARMS, REGULARIZER_OFF, SEARCHABLE
from studylib.errors import ConfigError
from studylib.report.stats import (
    ALPHA,
    POWER,
    PairedTest,
    detectable_effect,
    holm,
    mean_ci,
    paired_test,
)

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED = (
    "supported",
    "contradicted",
    "inconclusive",
    "not measured",
)
FINISHED = ("completed", "early_stopped")

ACCURACY = "test accuracy"
LOSS = "test loss"
MECHANISM = "mechanism"
REGRET_ACC = "early stopping regret (accuracy)"
REGRET_LOSS = "early stopping regret (loss)"
DEPTH = "depth"
FAMILIES = {
    ACCURACY: "every arm against the baseline on test accuracy of the kept weights",
    LOSS: "the same comparisons on test loss, shown beside accuracy",
    MECHANISM: "L1's zeros against L2's; the weight norm under L2 and under weight decay; "
    "dropout's train-validation gap",
    REGRET_ACC: "test accuracy lost by the early-stopping arm against the baseline's epoch of "
    "lowest validation loss, same seed",
    REGRET_LOSS: "the same regret in test loss",
    DEPTH: "plain against residual MLPs of the same depth, across studies",
}
# Early stopping is "as good as the full run's validation minimum" when its regret is below
# these margins (declared here, before any result): one point of accuracy, 0.02 nats of loss.
REGRET_MARGIN = {"acc": 0.01, "loss": 0.02}
ARM_NAMES = {
    "dropout": "Dropout",
    "l1": "The L1 penalty",
    "l2": "The L2 penalty",
    "weight_decay": "Decoupled weight decay",
    "early_stopping": "Early stopping",
    "all": "All regularizers together",
}
TEST_CURVES = ("test/acc", "test/loss")


@dataclass(frozen=True)
class Comparison:
    """One declared paired test, a - b over seeds, and its outcome.

    `claimed_sign` +1: the claim says mean(a - b) > null; -1: below. `test` is None when the
    runs it needs are missing (`note` says which). `p_holm` is set by `adjust`, within the
    comparison's family.
    """

    family: str
    measured: str
    claimed_sign: int
    labels: tuple[str, str]
    means: tuple[float, float] = (math.nan, math.nan)
    test: PairedTest | None = None
    note: str = ""
    p_holm: float = math.nan

    @property
    def verdict(self) -> str:
        if self.test is None:
            return NOT_MEASURED
        if math.isnan(self.p_holm) or self.p_holm >= ALPHA:
            return INCONCLUSIVE
        side = 1 if self.test.mean > self.test.null else -1
        return SUPPORTED if side == self.claimed_sign else CONTRADICTED

    @property
    def runs(self) -> int:
        return 0 if self.test is None else 2 * self.test.n

    def evidence(self) -> str:
        """The numbers in words: both sides' means, the difference, its interval, d_z, p."""
        if self.test is None:
            return self.note
        t = self.test
        text = (
            f"{self.labels[0]} {self.means[0]:.4g} vs {self.labels[1]} {self.means[1]:.4g}; "
            f"difference {t.mean:+.4g}"
        )
        if t.n >= 2:
            text += f" [{t.low:.4g}, {t.high:.4g}]"
        if t.null:
            text += f" against margin {t.null:+.4g}"
        text += f"; n={t.n}, d_z={_num(t.d_z)}, p={_num(t.p)}, Holm p={_num(self.p_holm)}"
        return text + (f"; {self.note}" if self.note else "")


@dataclass(frozen=True)
class ClaimResult:
    """A claim: its main comparison decides the verdict; `beside` (test loss beside test
    accuracy) is reported next to it with a verdict of its own."""

    claim: str
    main: Comparison
    beside: Comparison | None = None
    arm: str = ""  # the arm a per-arm claim is about

    @property
    def verdict(self) -> str:
        return self.main.verdict

    @property
    def agree(self) -> bool | None:
        """Whether main and beside say the same (None when either was not measured)."""
        if self.beside is None or NOT_MEASURED in (self.verdict, self.beside.verdict):
            return None
        return self.verdict == self.beside.verdict


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}"


def compare(
    family: str,
    measured: str,
    claimed_sign: int,
    a: dict[int, float],
    b: dict[int, float],
    labels: tuple[str, str],
    null: float = 0.0,
    note: str = "",
) -> Comparison:
    """A paired test of a - b (each keyed by seed); not measured where either side is empty."""
    if not a or not b:
        missing = " and ".join(name for name, d in zip(labels, (a, b), strict=True) if not d)
        return Comparison(
            family, measured, claimed_sign, labels, note=f"no finished {missing} runs"
        )
    if not set(a) & set(b):
        return Comparison(
            family, measured, claimed_sign, labels, note=f"no seed has both {' and '.join(labels)}"
        )
    means = (sum(a.values()) / len(a), sum(b.values()) / len(b))
    return Comparison(
        family, measured, claimed_sign, labels, means, paired_test(a, b, null), note=note
    )


def adjust(results: list[ClaimResult]) -> list[ClaimResult]:
    """Holm's adjustment within each family, over every comparison that has a p-value."""
    comparisons = [c for r in results for c in (r.main, r.beside) if c is not None]
    adjusted: dict[int, float] = {}
    for family in dict.fromkeys(c.family for c in comparisons):
        members = [c for c in comparisons if c.family == family]
        pvalues = [c.test.p if c.test is not None else math.nan for c in members]
        adjusted.update({id(c): p for c, p in zip(members, holm(pvalues), strict=True)})

    def fix(c: Comparison | None) -> Comparison | None:
        return None if c is None else replace(c, p_holm=adjusted[id(c)])

    return [replace(r, main=fix(r.main), beside=fix(r.beside)) for r in results]


# ---------------------------------------------------------------------------------------------
# One design, one run per arm and seed


@dataclass(frozen=True)
class DesignChoice:
    """The ablation design a report uses (the newest) and the designs it leaves out."""

    key: str
    arms: pd.DataFrame  # the runs of `key` only
    left_out: pd.DataFrame = field(default_factory=pd.DataFrame)  # design, runs, first_run

    def note(self) -> str:
        """One line saying which design is used and what was left out ("" with one design)."""
        if self.left_out.empty:
            return ""
        older = "; ".join(
            f"{row.design or '(untagged)'} ({row.runs} runs, first run {row.first_run})"
            for row in self.left_out.itertuples()
        )
        return (
            f"This study holds {len(self.left_out) + 1} ablation designs (experiment file edited "
            f"and run again); shown: the newest, {self.key or '(untagged)'} (the design whose "
            f"first run started last). Left out: {older}."
        )


def design_of(arms: pd.DataFrame) -> pd.Series:
    """Each run's design key ("" for runs from before designs were tagged)."""
    if "design" in arms:
        return arms["design"].fillna("").astype(str)
    return pd.Series("", index=arms.index)


def newest_design(arms: pd.DataFrame) -> DesignChoice:
    """The design whose first run started last (runs need `start_time` with several designs)."""
    designs = design_of(arms)
    if designs.nunique() <= 1:
        return DesignChoice(designs.iloc[0] if len(designs) else "", arms)
    first = arms.groupby(designs)["start_time"].min().sort_values()
    newest = str(first.index[-1])
    left_out = pd.DataFrame(
        {
            "design": first.index[:-1],
            "runs": [int((designs == d).sum()) for d in first.index[:-1]],
            "first_run": [_when(t) for t in first.iloc[:-1]],
        }
    )
    return DesignChoice(newest, arms[designs == newest], left_out)


def _when(moment) -> str:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def check_one_run_per_cell(arms: pd.DataFrame) -> None:
    """A design holds one finished run per (arm, seed): two are an error naming both."""
    finished = arms[arms["status"].isin(FINISHED)] if "status" in arms else arms
    keys = design_of(finished)
    cells = finished.assign(_design=keys)
    twice = cells[cells.duplicated(["_design", "arm", "seed"], keep=False)]
    if twice.empty:
        return
    first = twice.sort_values(["_design", "arm", "seed"]).iloc[0]
    same = twice[
        (twice["_design"] == first["_design"])
        & (twice["arm"] == first["arm"])
        & (twice["seed"] == first["seed"])
    ]
    ids = " and ".join(str(i) for i in same["run_id"])
    where = f"experiment {first['experiment']}, " if "experiment" in first else ""
    raise ConfigError(
        f"{where}ablation design {first['_design'] or '(untagged)'}: arm {first['arm']!r} seed "
        f"{int(first['seed'])} has {len(same)} finished runs, {ids}; allowed: one run per arm "
        "and seed in a design (delete the extra run in MLflow)"
    )


def _by_seed(arms: pd.DataFrame, arm: str, column: str) -> dict[int, float]:
    if column not in arms:
        return {}
    rows = arms[(arms["arm"] == arm) & arms[column].notna()]
    if rows["seed"].duplicated().any():
        check_one_run_per_cell(rows)
    return {int(seed): float(value) for seed, value in zip(rows["seed"], rows[column], strict=True)}


def _present(arms: pd.DataFrame) -> list[str]:
    """Arms of the design in the canonical order, any others after them."""
    names = set(arms["arm"])
    return [a for a in ARMS if a in names] + sorted(names - set(ARMS))


def declared(arms: pd.DataFrame, key: str, default: list) -> list:
    """A design field (`ablation.seeds`, `ablation.arms`) as the runs logged it."""
    column = arms.get(key)
    if column is None or column.dropna().empty:
        return default
    value = column.dropna().iloc[0]
    return json.loads(value) if isinstance(value, str) else list(value)


# ---------------------------------------------------------------------------------------------
# The claims


def arm_claims(arms: pd.DataFrame) -> list[ClaimResult]:
    """For every arm against the baseline: test accuracy (family "test accuracy") with test loss
    beside it (family "test loss")."""
    results = []
    for arm in [a for a in _present(arms) if a != "baseline"]:
        labels = (arm, "baseline")
        acc = compare(
            ACCURACY,
            f"test accuracy of the kept weights, {arm} minus baseline, paired by seed",
            +1,
            _by_seed(arms, arm, "test_acc"),
            _by_seed(arms, "baseline", "test_acc"),
            labels,
        )
        loss = compare(
            LOSS,
            f"test loss of the kept weights, {arm} minus baseline, paired by seed",
            -1,
            _by_seed(arms, arm, "test_loss"),
            _by_seed(arms, "baseline", "test_loss"),
            labels,
        )
        name = ARM_NAMES.get(arm, f"The {arm} arm")
        verb = "improve" if arm == "all" else "improves"
        results.append(
            ClaimResult(f"{name} {verb} test accuracy over the baseline", acc, loss, arm)
        )
    return results


def _first_measured(arms: pd.DataFrame, arm: str, candidates) -> tuple[str, str]:
    """The first (column, words) the arm's runs logged: kept-weight statistics, then the
    last-epoch ones older runs have. Chosen by what was logged, never by the result."""
    for column, words in candidates:
        if _by_seed(arms, arm, column):
            return column, words
    return candidates[0]


ZEROS = (
    ("kept_exact_zeros", "share of the kept weights exactly 0"),
    (
        "final_sparsity",
        "share of weights with |w| < 1e-3 at the last epoch (no kept-weight statistics logged)",
    ),
)
NORM = (
    ("kept_l2_norm", "global L2 norm of the kept weights"),
    (
        "final_l2_norm",
        "global L2 norm of the weights at the last epoch (no kept-weight statistics logged)",
    ),
)


def sparsity_thresholds(arms: pd.DataFrame, prefix: str = "kept_sparsity/") -> list[str]:
    """Thresholds logged as `<prefix><t>`, largest first ("1e-2" ... "1e-6")."""
    found = [c.removeprefix(prefix) for c in arms.columns if c.startswith(prefix)]
    return sorted(found, key=float, reverse=True)


def mechanism_claims(arms: pd.DataFrame) -> list[ClaimResult]:
    present = set(arms["arm"])
    results = []
    if "l1" in present:
        column, words = _first_measured(arms, "l1", ZEROS)
        # The thresholds beside the exact count, so a reader sees a threshold effect for one.
        context = []
        for t in sparsity_thresholds(arms):
            l1, l2 = (
                _by_seed(arms, "l1", f"kept_sparsity/{t}"),
                _by_seed(arms, "l2", f"kept_sparsity/{t}"),
            )
            if l1 and l2:
                means = sum(l1.values()) / len(l1), sum(l2.values()) / len(l2)
                context.append(f"|w| < {t}: {means[0]:.3g} vs {means[1]:.3g}")
        main = compare(
            MECHANISM,
            f"{words}, l1 minus l2, paired by seed",
            +1,
            _by_seed(arms, "l1", column),
            _by_seed(arms, "l2", column),
            ("l1", "l2"),
            note=("shares " + "; ".join(context)) if context else "",
        )
        results.append(ClaimResult("L1 drives more weights to zero than L2", main))
    for arm, claim in (
        ("l2", "L2 penalty shrinks the weight norm"),
        ("weight_decay", "Decoupled weight decay shrinks the weight norm"),
    ):
        if arm in present:
            column, words = _first_measured(arms, arm, NORM)
            main = compare(
                MECHANISM,
                f"{words}, {arm} minus baseline, paired by seed",
                -1,
                _by_seed(arms, arm, column),
                _by_seed(arms, "baseline", column),
                (arm, "baseline"),
            )
            results.append(ClaimResult(claim, main))
    if "dropout" in present:
        main = compare(
            MECHANISM,
            "validation minus training loss of the kept weights, dropout minus baseline, "
            "paired by seed",
            -1,
            _by_seed(arms, "dropout", "gap_loss"),
            _by_seed(arms, "baseline", "gap_loss"),
            ("dropout", "baseline"),
        )
        results.append(ClaimResult("Dropout narrows the train-validation gap", main))
    return results


def _param(runs: pd.DataFrame, path: str):
    values = runs[path].dropna() if path in runs else pd.Series(dtype=object)
    return values.iloc[0] if not values.empty else None


def monitors_error(runs: pd.DataFrame) -> bool:
    """Whether the runs' early stopping watched validation error (1 - accuracy), not loss."""
    value = _param(runs, "train.monitor")
    return value is not None and "err" in str(value).lower()


def early_stopping_arms(arms: pd.DataFrame) -> list[str]:
    """Arms whose only regularizer is early stopping: the ones that train like the baseline
    until they stop, so the baseline's full curve shows what stopping left on the table."""
    found = []
    for arm in _present(arms):
        mine = arms[arms["arm"] == arm]
        if str(_param(mine, "train.early_stopping")) != "True":
            continue
        off = all(
            float(_param(mine, SEARCHABLE[name]) or 0.0) == value
            for name, value in REGULARIZER_OFF.items()
        )
        if off:
            found.append(arm)
    return found


def _curve(curves: pd.DataFrame, run_id: str, key: str) -> pd.Series:
    """One run's per-epoch values of `key`, indexed by epoch."""
    if curves.empty:
        return pd.Series(dtype=float)
    mine = curves[(curves["run_id"] == run_id) & (curves["key"] == key)]
    return pd.Series(mine["value"].to_numpy(), index=mine["epoch"].to_numpy()).sort_index()


def _kept_epoch(curves: pd.DataFrame, run_id: str, error: bool, last: int | None = None) -> int:
    """The epoch of lowest validation loss (or error), up to `last`: what restoring keeps."""
    monitor = _curve(curves, run_id, "val/acc" if error else "val/loss")
    if last is not None:
        monitor = monitor[monitor.index <= last]
    if monitor.empty:
        return -1
    return int(monitor.idxmax() if error else monitor.idxmin())


def regret_by_seed(arms: pd.DataFrame, curves: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per seed, the arm's kept epoch and test scores against the same seed's baseline curve:
    `ref_*` at the baseline's epoch of lowest validation loss (or error, when the arm watched
    error), `best_*` the best test figure anywhere on the curve (optimistic), `epochs` the
    number of test evaluations that best was taken over. Empty without test curves."""
    mine = arms[arms["arm"] == arm]
    error = monitors_error(mine)
    base = arms[arms["arm"] == "baseline"]
    base_ids = dict(zip(base["seed"].astype(int), base["run_id"], strict=True))
    rows = []
    for _, run in mine.iterrows():
        seed = int(run["seed"])
        if seed not in base_ids:
            continue
        test_acc = _curve(curves, base_ids[seed], "test/acc")
        test_loss = _curve(curves, base_ids[seed], "test/loss")
        ref = _kept_epoch(curves, base_ids[seed], error)
        if test_acc.empty or test_loss.empty or ref not in test_acc.index:
            continue
        rows.append(
            {
                "seed": seed,
                "kept_epoch": run.get("selected_epoch", math.nan),
                "kept_acc": run["test_acc"],
                "kept_loss": run["test_loss"],
                "ref_epoch": ref,
                "ref_acc": test_acc[ref],
                "ref_loss": test_loss.get(ref, math.nan),
                "best_acc": test_acc.max(),
                "best_loss": test_loss.min(),
                "epochs": len(test_acc),
            }
        )
    return pd.DataFrame(rows)


def regret_claims(arms: pd.DataFrame, curves: pd.DataFrame) -> list[ClaimResult]:
    """Early stopping keeps an epoch as good as the baseline's full-run validation minimum:
    supported when its regret is significantly below the declared margin, contradicted when
    significantly above it (a two-sided test of mean regret = margin)."""
    results = []
    for arm in early_stopping_arms(arms):
        table = regret_by_seed(arms, curves, arm)
        watched = (
            "validation error" if monitors_error(arms[arms["arm"] == arm]) else "validation loss"
        )
        claim = (
            f"{ARM_NAMES.get(arm, arm)} keeps an epoch as good as the full run's {watched} "
            f"minimum (within {REGRET_MARGIN['acc']:g} test accuracy)"
        )
        if arm != "early_stopping":
            claim = f"{claim} [{arm}]"
        labels = (f"baseline at its lowest {watched}", f"{arm} kept")
        if table.empty:
            why = (
                f"needs the baseline's per-epoch test curve ({', '.join(TEST_CURVES)}: per-epoch "
                "test figures for ablation arms, opt-in) and baseline runs of the same seeds"
            )
            results.append(
                ClaimResult(
                    claim,
                    Comparison(REGRET_ACC, "regret in test accuracy", -1, labels, note=why),
                    Comparison(REGRET_LOSS, "regret in test loss", -1, labels, note=why),
                    arm,
                )
            )
            continue
        seeds = table["seed"].tolist()
        acc = compare(
            REGRET_ACC,
            f"test accuracy at the baseline's epoch of lowest {watched} minus the {arm} arm's "
            "(kept epoch), same seed",
            -1,
            dict(zip(seeds, table["ref_acc"], strict=True)),
            dict(zip(seeds, table["kept_acc"], strict=True)),
            labels,
            null=REGRET_MARGIN["acc"],
        )
        loss = compare(
            REGRET_LOSS,
            f"test loss of the {arm} arm's kept epoch minus the baseline's at its lowest "
            f"{watched}, same seed",
            -1,
            dict(zip(seeds, table["kept_loss"], strict=True)),
            dict(zip(seeds, table["ref_loss"], strict=True)),
            (f"{arm} kept", f"baseline at its lowest {watched}"),
            null=REGRET_MARGIN["loss"],
        )
        results.append(ClaimResult(claim, acc, loss, arm))
    return results


def evaluate_claims(arms: pd.DataFrame, curves: pd.DataFrame) -> list[ClaimResult]:
    """Every declared claim on one design's ablation runs (a `load_runs` frame, role arm),
    Holm-adjusted within each family."""
    finished = arms[arms["status"].isin(FINISHED)]
    designs = design_of(finished).unique()
    if len(designs) > 1:
        raise ValueError(
            f"claims mix ablation designs {', '.join(sorted(designs))}: pick one (newest_design)"
        )
    check_one_run_per_cell(finished)
    return adjust(
        [*arm_claims(finished), *mechanism_claims(finished), *regret_claims(finished, curves)]
    )


def claims_frame(results: list[ClaimResult]) -> pd.DataFrame:
    """One row per claim: the main comparison's numbers, then the beside comparison's."""
    rows = []
    for r in results:
        row = {"claim": r.claim, "arm": r.arm, **_columns(r.main, "")}
        row.update(_columns(r.beside, "beside_") if r.beside is not None else {})
        row["agree"] = r.agree
        rows.append(row)
    return pd.DataFrame(rows)


def _columns(c: Comparison, prefix: str) -> dict:
    t = c.test
    return {
        f"{prefix}family": c.family,
        f"{prefix}measured": c.measured,
        f"{prefix}verdict": c.verdict,
        f"{prefix}n": 0 if t is None else t.n,
        f"{prefix}mean_a": c.means[0],
        f"{prefix}mean_b": c.means[1],
        f"{prefix}difference": math.nan if t is None else t.mean,
        f"{prefix}low": math.nan if t is None else t.low,
        f"{prefix}high": math.nan if t is None else t.high,
        f"{prefix}null": math.nan if t is None else t.null,
        f"{prefix}d_z": math.nan if t is None else t.d_z,
        f"{prefix}p": math.nan if t is None else t.p,
        f"{prefix}p_holm": c.p_holm,
        f"{prefix}evidence": c.evidence(),
        f"{prefix}runs": c.runs,
    }


def check_claims(arms: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """`claims_frame(evaluate_claims(arms, curves))`: one row per claim."""
    return claims_frame(evaluate_claims(arms, curves))


# ---------------------------------------------------------------------------------------------
# Power of the design, stated before any result


@dataclass(frozen=True)
class DesignPower:
    """n seeds, the tests each family declares, and the d_z found with 80% power at Holm's
    first step (alpha / m: the conservative choice, since later steps test at larger levels)."""

    n: int
    families: dict[str, int]  # family -> m, its declared tests
    detectable: dict[str, float]  # family -> d_z

    def sentence(self) -> str:
        parts = [
            f"{family} (m = {m}): d_z >= {_num(self.detectable[family])}"
            for family, m in self.families.items()
        ]
        return (
            f"Design: {self.n} evaluation seeds, arms paired by seed; a two-sided paired t-test "
            f"per claim, Holm-adjusted within each family at alpha = {ALPHA:g}. At Holm's first "
            f"step (alpha / m, the conservative choice) the effect each family finds with "
            f"{POWER:.0%} power is: " + "; ".join(parts) + ". d_z is the mean paired "
            "difference over the standard deviation of the differences."
        )


def design_power(arms: pd.DataFrame) -> DesignPower:
    """From the design as declared (`ablation.seeds`, `ablation.arms` of its runs), not from
    which runs finished: the statement stands before any result."""
    seeds = declared(arms, "ablation.seeds", sorted(set(arms["seed"].dropna().astype(int))))
    names = declared(arms, "ablation.arms", _present(arms))
    skeleton = pd.DataFrame({"arm": names, "seed": 0, "status": "completed"})
    families: dict[str, int] = {}
    rows = [*arm_claims(skeleton), *mechanism_claims(skeleton)]
    for result in rows:
        for c in (result.main, result.beside):
            if c is not None:
                families[c.family] = families.get(c.family, 0) + 1
    # Regret needs the arm's params; count the declared early-stopping-only arms.
    es = [a for a in early_stopping_arms(arms) if a in names]
    if es:
        families[REGRET_ACC] = families[REGRET_LOSS] = len(es)
    n = len(seeds)
    return DesignPower(
        n, families, {f: detectable_effect(n, ALPHA / m) for f, m in families.items()}
    )


# ---------------------------------------------------------------------------------------------
# Early stopping measured on the baseline's curves


def _rule_order(name: str) -> tuple[int, float, str]:
    family = re.match(r"[a-z_]+", name)
    rank = {"patience": 0, "gl": 1, "pq": 2, "up": 3}.get(family[0] if family else name, 4)
    number = re.search(r"[\d.]+$", name)
    return rank, float(number[0]) if number else 0.0, name


def stopping_rules(arms: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame | None:
    """When each stopping rule would have stopped the baseline (trained to the end, so every
    rule sees the whole curve), which epoch it would keep (lowest validation loss, or error,
    up to the stop) and that epoch's test accuracy and loss: mean and 95% t-interval over
    the seeds where it stopped ("stopped in k of n"). Two reference rows: the full run's
    validation minimum and the last epoch (no stopping). None without baseline runs or
    `stop_epoch/*` metrics."""
    base = arms[arms["arm"] == "baseline"]
    rules = sorted(
        (c.removeprefix("stop_epoch/") for c in arms.columns if c.startswith("stop_epoch/")),
        key=_rule_order,
    )
    if base.empty or not rules:
        return None
    error = monitors_error(base)
    n = len(base)
    rows = []

    def row(name: str, stops: list[float], kept: list[int], runs: list[str]) -> dict:
        acc = [
            _curve(curves, r, "test/acc").get(e, math.nan) for r, e in zip(runs, kept, strict=True)
        ]
        loss = [
            _curve(curves, r, "test/loss").get(e, math.nan) for r, e in zip(runs, kept, strict=True)
        ]
        return {
            "rule": name,
            "stopped": f"{len(kept)} of {n}",
            "stop epoch": str(mean_ci(stops)) if stops else "",
            "kept epoch": str(mean_ci(kept)) if kept else "",
            "test acc at kept epoch": str(mean_ci(acc)) if kept and _any(acc) else "",
            "test loss at kept epoch": str(mean_ci(loss)) if kept and _any(loss) else "",
        }

    for rule in rules:
        stops, kept, runs = [], [], []
        for _, run in base.iterrows():
            stop = run.get(f"stop_epoch/{rule}", math.nan)
            # Absent: the rule never stopped within the run (older runs logged 0 for that).
            if pd.isna(stop) or stop <= 0:
                continue
            stops.append(float(stop))
            kept.append(_kept_epoch(curves, run["run_id"], error, int(stop)))
            runs.append(run["run_id"])
        rows.append(row(rule, stops, kept, runs))
    full = [_kept_epoch(curves, r, error) for r in base["run_id"]]
    watched = "validation error" if error else "validation loss"
    rows.append(
        {**row(f"full run, lowest {watched}", [], full, list(base["run_id"])), "stopped": "-"}
    )
    rows.append(
        {
            "rule": "none (last epoch)",
            "stopped": "-",
            "stop epoch": "",
            "kept epoch": str(mean_ci(base["selected_epoch"])) if "selected_epoch" in base else "",
            "test acc at kept epoch": str(mean_ci(base["test_acc"])),
            "test loss at kept epoch": str(mean_ci(base["test_loss"]))
            if "test_loss" in base
            else "",
        }
    )
    return pd.DataFrame(rows)


def _any(values: list[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def regret_table(arms: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame | None:
    """Per early-stopping-only arm: kept epoch against the baseline's reference epoch, the
    honest regret (against the baseline's epoch of lowest validation loss) and the optimistic
    one (against the best test figure anywhere on the curve: a maximum over every epoch's noisy
    test evaluation, so it is >= the honest one and biased upwards), mean and 95% t-interval."""
    rows = []
    for arm in early_stopping_arms(arms):
        t = regret_by_seed(arms, curves, arm)
        if t.empty:
            continue
        rows.append(
            {
                "arm": arm,
                "seeds": len(t),
                "kept epoch": str(mean_ci(t["kept_epoch"])),
                "reference epoch": str(mean_ci(t["ref_epoch"])),
                "regret, test acc": str(mean_ci(t["ref_acc"] - t["kept_acc"])),
                "regret, test loss": str(mean_ci(t["kept_loss"] - t["ref_loss"])),
                "optimistic regret, test acc": str(mean_ci(t["best_acc"] - t["kept_acc"])),
                "optimistic regret, test loss": str(mean_ci(t["kept_loss"] - t["best_loss"])),
                "test evaluations per curve": int(t["epochs"].max()),
            }
        )
    return pd.DataFrame(rows) if rows else None


def pruning_table(arms: pd.DataFrame) -> pd.DataFrame | None:
    """Prune-and-evaluate for the l1, l2 and baseline arms: per threshold, the share of kept
    weights below it and the test accuracy after zeroing them, with the drop from the unpruned
    test accuracy of the same run (mean and 95% t-interval over seeds)."""
    thresholds = sparsity_thresholds(arms, "pruned_test_acc/")
    shown = [a for a in ("baseline", "l1", "l2") if a in set(arms["arm"])]
    if not thresholds or not shown:
        return None
    rows = []
    for arm in shown:
        mine = arms[arms["arm"] == arm]
        row = {"arm": arm, "seeds": len(mine), "test acc": str(mean_ci(mine["test_acc"]))}
        if "kept_exact_zeros" in mine:
            row["exactly 0"] = str(mean_ci(mine["kept_exact_zeros"]))
        for t in thresholds:
            if f"kept_sparsity/{t}" in mine:
                row[f"|w| < {t}"] = str(mean_ci(mine[f"kept_sparsity/{t}"]))
            pruned = mine[f"pruned_test_acc/{t}"]
            row[f"test acc pruned at {t}"] = str(mean_ci(pruned))
            row[f"drop at {t}"] = str(mean_ci(mine["test_acc"] - pruned))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Across studies: vanishing gradients


VANISHING = "Deeper plain nets suffer more from vanishing gradients than residual ones"


def vanishing_gradients(runs: pd.DataFrame, curves: pd.DataFrame) -> ClaimResult:
    """Plain against residual MLPs of the same depth, paired by seed: log10 of the first hidden
    layer's gradient norm over the last hidden layer's, averaged over the first epoch's batches.
    Vanishing gradients make it negative; the claim is that plain nets make it more so. Its
    family ("depth") holds this one claim."""
    measured = (
        "log10(grad norm of the first hidden layer / of the last), epoch 1, plain minus "
        "residual MLP of the same widths, paired by seed"
    )
    labels = ("plain", "residual")

    def missing(why: str) -> ClaimResult:
        return ClaimResult(VANISHING, Comparison(DEPTH, measured, -1, labels, note=why))

    needed = {"model.residual", "model.hidden"}
    if not needed <= set(runs.columns) or curves.empty:
        return missing("no runs with gradient norms")
    first_epoch = curves[(curves["epoch"] == 1) & curves["key"].str.startswith("grad_norm/")]
    by_run = first_epoch.pivot_table(index="run_id", columns="key", values="value")
    ratios: dict[tuple[str, bool], dict[int, float]] = {}
    for _, run in runs.iterrows():
        widths = json.loads(run["model.hidden"]) if isinstance(run["model.hidden"], str) else []
        first, last = "grad_norm/hidden.0", f"grad_norm/hidden.{len(widths) - 1}"
        if len(widths) < 2 or run["run_id"] not in by_run.index:
            continue
        norms = by_run.loc[run["run_id"]]
        if first not in norms or last not in norms or not norms[last] > 0 < norms[first]:
            continue
        key = (run["model.hidden"], str(run["model.residual"]) == "True")
        ratios.setdefault(key, {})[int(run["seed"])] = math.log10(norms[first] / norms[last])
    pairs = [
        (ratios[(h, False)], ratios[(h, True)]) for h, res in ratios if res and (h, False) in ratios
    ]
    if not pairs:
        return missing("no plain/residual MLP pair with gradient norms (experiments/depth.toml)")
    plain, residual = pairs[0]
    main = compare(DEPTH, measured, -1, plain, residual, labels, note="decades")
    return adjust([ClaimResult(VANISHING, main)])[0]
