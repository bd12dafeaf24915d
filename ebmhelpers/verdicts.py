"""The series' rules for judging a number against another: when a model *generates*, when it
*keeps the quality* of a reference, when one model is *better*, when a detector is *inverted*,
and how a verdict follows from an interval and a margin. The tables that apply these rules to
the paper's claims are :mod:`ebmhelpers.paper_report`'s.

**Generates.** A model generates when it draws like the baseline rather than like uniform
noise: its FID is nearer the baseline's than noise's on a log scale (below their geometric
mean) *and* its IS is above the geometric mean of noise's IS and the baseline's
(:class:`References`, read from ``baseline.csv`` and ``baseline_references.csv``). Log scales,
because both scores move by factors: across the reference rows FID spans orders of magnitude
from real digits to noise, and IS runs from 1 (one class for every image, which is what the
classifier makes of noise) towards the number of classes. Both conditions, because a smeared
blob can be assigned confident classes (IS above noise's) while its features stay far from any
digit's (FID near noise's), and the reverse. The baseline is the reference, not real digits,
because a compressed model is asked to draw what its teacher draws. FID is compared only
between models that generate: between two noise generators its differences say nothing about
digits.

**Margins** (module constants, equivalence margins stated before any comparison):
:data:`FID_MARGIN` (FID at most 10% above the reference's), :data:`IS_MARGIN` (IS at most 5%
below) and :data:`AUROC_MARGIN` (each OOD AUROC at most 0.03 below). FID and IS compare as
ratios, because they move by factors and the feature scale of this project's classifier is
arbitrary. FID estimated from a few thousand digits is biased and noisy by a few percent (it
depends on the number of samples), so 10% asks for a change beyond what the estimator alone
produces; IS is bounded by the 10 classes and its range between noise and a good generator is
narrower than FID's, hence half the margin. The AUROC margin must exceed the half-width of
the interval of a null difference, or no model could ever be shown to keep detection: two
AUROCs near 0.7 on a few thousand images per set, treated as independent (below), give a
half-width of about 0.02, so 0.03 is the smallest round margin above it. On a Table 2 cell (a few
hundred digits of one class, :func:`metrics.auroc_se`) intervals are about three times wider, and
such comparisons are often inconclusive: the sets cannot resolve them.

**Intervals.** Every comparison is an :class:`Interval` of the oriented difference (positive:
the model is better): log-ratios for FID and IS, differences for AUROC. For IS and FID the
standard error of a row's mean comes from its ``_std`` column over ``n`` independent draws,
``n`` = ``training_seeds`` when the row was trained with several seeds (its ``_std`` then
combines training and generation variance, :func:`pruning.combine_training_seeds`) else
``n_seeds`` (generation seeds only: a single training run's variance is not in the table; each
generation seed draws fresh digits from the model, the resampling a bootstrap over one set of
digits imitates); the interval is Student's t with the Welch-Satterthwaite degrees of freedom. A row without a measured
spread (one seed) gives an unbounded interval: nothing can be concluded from it. An AUROC's error
has two parts (:func:`auroc_errors`): the digits drawn, by the Hanley-McNeil standard error from
the set sizes (the analytic form of a bootstrap over the digits; tests/test_verdicts.py checks the
two agree), and, for a row trained with several seeds, the spread of its per-seed AUROCs; the
interval of a difference is then Student's t as above. Two models scored on the same digits are
treated as independent, which makes the interval wider than a paired one.

**Verdicts** (:data:`VERDICTS`): ``reproduced`` when the interval lies on the claimed side of
the margin, ``contradicted`` when it lies on the other side, ``inconclusive`` when it straddles
the margin (the interval is wider than what the claim needs), and ``not testable here`` when
this setting cannot measure what the claim is about (the paper's report says why and what
would). A claim of several parts is contradicted when any part is, reproduced when every part is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from scipy import stats

from .metrics import (  # noqa: F401 (CHANCE_AUROC, TIMING_NOISE and ratio_verdict are part of the rules)
    CHANCE_AUROC,
    PAPER_OOD_SETS,
    TIMING_NOISE,
    auroc_se,
    inverted,
    ratio_verdict,
)

# ---- the margins and the interval ---------------------------------------------------------------
FID_MARGIN = 0.10  # a model keeps FID when its FID is at most 10% above the reference's
IS_MARGIN = 0.05  # ... and IS when its IS is at most 5% below
AUROC_MARGIN = 0.03  # ... and an OOD AUROC when it is at most 0.03 below (each transform on its own)
CONFIDENCE = 0.95  # two-sided coverage of every interval
MARGINAL_AUROC = 0.7  # "only a marginal ability" to detect: AUROC below the conventional "acceptable" 0.7
PAPER_AUROCS = ("auroc_noise", "auroc_flip", "auroc_reduced")  # metrics.PAPER_OOD_SETS
REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = "reproduced", "contradicted", "inconclusive", "not testable here"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)


def margin(metric: str) -> float:
    """The margin of ``metric`` on the scale its :class:`Interval` uses (log-ratio or AUROC)."""
    if metric == "FID":
        return math.log(1 + FID_MARGIN)
    if metric == "IS":
        return -math.log(1 - IS_MARGIN)
    if metric.startswith("auroc"):
        return AUROC_MARGIN
    raise KeyError(f"no margin for {metric!r}")


def _get(row, key: str) -> float:
    try:
        value = row.get(key, float("nan")) if hasattr(row, "get") else row[key]
    except (KeyError, IndexError):
        return float("nan")
    return float("nan") if value is None or pd.isna(value) else float(value)


def spread(*stds: float) -> float:
    """Standard deviations combined in quadrature, ``sqrt(sum std^2)``; an unmeasured (NaN) one counts as 0."""
    return math.sqrt(sum(0.0 if (s is None or math.isnan(s)) else float(s) ** 2 for s in stds))


@dataclass(frozen=True)
class Interval:
    """An estimate of an oriented difference (positive: the model is better) and its interval.
    ``kind`` is ``log-ratio`` (FID, IS) or ``difference`` (AUROC); :meth:`text` shows
    log-ratios as ratios of the model's score to the reference's."""

    estimate: float
    lo: float
    hi: float
    kind: str = "difference"
    metric: str = ""
    label: str = ""  # what is compared, for the text (default: the metric)

    def text(self, digits: int = 3) -> str:
        name = self.label or self.metric
        if any(math.isnan(v) for v in (self.estimate, self.lo, self.hi)):
            return f"{name}: not measured"
        if self.kind == "log-ratio":  # back to the score's own ratio, model / reference
            sign = -1 if self.metric == "FID" else 1  # FID is oriented reference / model
            a, b, c = (math.exp(sign * v) for v in (self.estimate, self.lo, self.hi))
            lo, hi = sorted((b, c))
            return f"{name} ratio {a:.{digits}g} [{_g(lo, digits)}, {_g(hi, digits)}]"
        return f"{name} {self.estimate:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def _g(v: float, digits: int) -> str:
    return "inf" if math.isinf(v) else f"{v:.{digits}g}"


def standard_error(row, metric: str) -> tuple[float, int]:
    """(standard error of the row's mean ``metric``, degrees of freedom): ``<metric>_std / sqrt(n)``
    with ``n`` the training seeds when there are several, else the generation seeds (module doc).
    An unmeasured spread gives (inf, 0)."""
    std = _get(row, f"{metric}_std")
    train = _get(row, "training_seeds")
    n = (
        int(train)
        if not math.isnan(train) and train > 1
        else int(_get(row, "n_seeds") if not math.isnan(_get(row, "n_seeds")) else 1)
    )
    if math.isnan(std) or n < 2:
        return math.inf, 0
    return std / math.sqrt(n), n - 1


def _t_interval(estimate: float, parts: list[tuple[float, float]]) -> tuple[float, float]:
    """Welch-Satterthwaite t interval around ``estimate`` from (standard error, dof) parts; a part
    with ``math.inf`` dof is a normal error (normal interval when every part is)."""
    if any(math.isinf(se) for se, _ in parts):
        return -math.inf, math.inf
    var = sum(se**2 for se, _ in parts)
    if var == 0:
        return estimate, estimate
    denominator = sum(se**4 / d for se, d in parts if se > 0)  # a part of infinite dof adds nothing
    q = 0.5 + CONFIDENCE / 2
    half = (stats.norm.ppf(q) if denominator == 0 else stats.t.ppf(q, var**2 / denominator)) * math.sqrt(var)
    return estimate - half, estimate + half


def quality_interval(row, ref, metric: str, label: str = "") -> Interval:
    """The oriented log-ratio of ``row``'s IS or FID against ``ref``'s (positive: ``row`` better,
    i.e. higher IS or lower FID), with its t interval (module doc). NaN scores give a NaN interval."""
    a, b = _get(row, metric), _get(ref, metric)
    if math.isnan(a) or math.isnan(b) or a <= 0 or b <= 0:
        return Interval(math.nan, math.nan, math.nan, "log-ratio", metric, label)
    sign = 1 if metric == "IS" else -1
    est = sign * (math.log(a) - math.log(b))
    (se_a, df_a), (se_b, df_b) = standard_error(row, metric), standard_error(ref, metric)
    lo, hi = _t_interval(est, [(se_a / a, df_a), (se_b / b, df_b)])  # delta method: se(log x) = se(x) / x
    return Interval(est, lo, hi, "log-ratio", metric, label)


def auroc_interval(
    a: float, b: float, n: tuple[int, int] | None, n_b: tuple[int, int] | None = None, label: str = "auroc"
) -> Interval:
    """``a - b`` with a normal interval from both AUROCs' Hanley-McNeil errors; ``n`` (and ``n_b``,
    default ``n``) the (in, out) set sizes. Unknown sizes give an unbounded interval."""
    if math.isnan(a) or math.isnan(b):
        return Interval(math.nan, math.nan, math.nan, "difference", "auroc", label)
    n_b = n_b or n
    if not n or not n_b:
        return Interval(a - b, -math.inf, math.inf, "difference", "auroc", label)
    se = math.hypot(auroc_se(a, *n), auroc_se(b, *n_b))
    half = stats.norm.ppf(0.5 + CONFIDENCE / 2) * se
    return Interval(a - b, a - b - half, a - b + half, "difference", "auroc", label)


def auroc_errors(row, col: str, n: tuple[int, int]) -> list[tuple[float, float]]:
    """The (standard error, dof) parts of a row's AUROC ``col`` measured on ``n`` (in, out) images:
    the digits drawn (Hanley-McNeil, a normal error) and, for a row trained with several seeds, the
    spread of its per-seed AUROCs (``<col>_train_std / sqrt(training_seeds)``, ``training_seeds - 1``
    dof). Every seed is scored on the same digits, so the two parts are distinct sources."""
    parts = [(auroc_se(_get(row, col), *n), math.inf)]
    seeds, train_std = _get(row, "training_seeds"), _get(row, f"{col}_train_std")
    if not math.isnan(seeds) and seeds > 1 and not math.isnan(train_std):
        parts.append((train_std / math.sqrt(seeds), int(seeds) - 1))
    return parts


def model_auroc_interval(row, ref, col: str, n: tuple[int, int] | None, label: str = "") -> Interval:
    """``row``'s AUROC ``col`` minus ``ref``'s with a t interval from both rows' :func:`auroc_errors`:
    digit sampling and, for rows trained with several seeds, training variance. Unknown set sizes
    give an unbounded interval."""
    a, b = _get(row, col), _get(ref, col)
    label = label or col
    if math.isnan(a) or math.isnan(b):
        return Interval(math.nan, math.nan, math.nan, "difference", "auroc", label)
    if not n:
        return Interval(a - b, -math.inf, math.inf, "difference", "auroc", label)
    lo, hi = _t_interval(a - b, auroc_errors(row, col, n) + auroc_errors(ref, col, n))
    return Interval(a - b, lo, hi, "difference", "auroc", label)


def auroc_value_interval(a: float, n: tuple[int, int] | None, label: str = "auroc") -> Interval:
    """An AUROC itself with its normal Hanley-McNeil interval (unbounded when the set sizes are unknown)."""
    if math.isnan(a):
        return Interval(math.nan, math.nan, math.nan, "difference", "auroc", label)
    half = stats.norm.ppf(0.5 + CONFIDENCE / 2) * auroc_se(a, *n) if n else math.inf
    return Interval(a, a - half, a + half, "difference", "auroc", label)


# ---- from an interval and a margin to a verdict -------------------------------------------------
def non_inferior(iv: Interval, m: float) -> str:
    """Claim "no worse than the reference by more than ``m``": reproduced when the whole interval
    lies above ``-m``, contradicted when it lies below, else inconclusive."""
    if math.isnan(iv.estimate):
        return NOT_TESTABLE
    return REPRODUCED if iv.lo >= -m else CONTRADICTED if iv.hi < -m else INCONCLUSIVE


def superior(iv: Interval, m: float) -> str:
    """Claim "better": reproduced when the whole interval lies above 0, contradicted when it lies
    below ``m`` (any advantage smaller than the margin), else inconclusive."""
    if math.isnan(iv.estimate):
        return NOT_TESTABLE
    return REPRODUCED if iv.lo > 0 else CONTRADICTED if iv.hi < m else INCONCLUSIVE


def inferior(iv: Interval, m: float) -> str:
    """Claim "worse": the mirror of :func:`superior`."""
    flipped = Interval(-iv.estimate, -iv.hi, -iv.lo, iv.kind, iv.metric, iv.label)
    return superior(flipped, m)


def below(iv: Interval, threshold: float) -> str:
    """Claim "the value is below ``threshold``" (``iv`` holds the value itself)."""
    if math.isnan(iv.estimate):
        return NOT_TESTABLE
    return REPRODUCED if iv.hi < threshold else CONTRADICTED if iv.lo >= threshold else INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """One verdict for a claim of several parts: contradicted when any part is, reproduced when
    every part is, not testable when no part is testable, else inconclusive."""
    testable = [v for v in verdicts if v != NOT_TESTABLE]
    if not testable:
        return NOT_TESTABLE
    if CONTRADICTED in testable:
        return CONTRADICTED
    return REPRODUCED if all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


def majority(verdicts: list[str]) -> str:
    """One verdict for a claim that holds "generally" over several settings: reproduced or
    contradicted when more than half the testable settings are, else inconclusive."""
    testable = [v for v in verdicts if v != NOT_TESTABLE]
    if not testable:
        return NOT_TESTABLE
    for v in (REPRODUCED, CONTRADICTED):
        if sum(t == v for t in testable) * 2 > len(testable):
            return v
    return INCONCLUSIVE


# ---- generates, keeps quality, better --------------------------------------------------------
@dataclass(frozen=True)
class References:
    """The rows "generates" is measured against: the baseline's and uniform noise's IS and FID, and
    the OOD set sizes (``ood_n``: (set, digits) -> (in, out) images) for AUROC intervals."""

    base_IS: float
    base_FID: float
    noise_IS: float
    noise_FID: float
    ood_n: dict = field(default_factory=dict, compare=False)

    @property
    def is_min(self) -> float:
        """IS a model must exceed: the geometric mean of noise's and the baseline's."""
        return math.sqrt(self.noise_IS * self.base_IS)

    @property
    def fid_max(self) -> float:
        """FID a model must stay below: the geometric mean of the baseline's and noise's."""
        return math.sqrt(self.base_FID * self.noise_FID)

    def n(self, ood_set: str, digits: str = "all") -> tuple[int, int] | None:
        return self.ood_n.get((ood_set, str(digits)))

    @classmethod
    def from_tables(cls, baseline, references: pd.DataFrame, baseline_ood: pd.DataFrame | None = None) -> "References":
        noise = references[references.samples == "uniform noise"]
        if noise.empty:
            raise ValueError("the references table has no 'uniform noise' row")
        ood_n = {}
        if baseline_ood is not None:
            for r in baseline_ood.itertuples():
                ood_n[(r.ood_set, str(r.digits))] = (int(r.n), int(r.n))  # transformed copies of the same digits
        return cls(
            _get(baseline, "IS"), _get(baseline, "FID"), _get(noise.iloc[0], "IS"), _get(noise.iloc[0], "FID"), ood_n
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> "References":
        """From ``baseline.csv``, ``baseline_references.csv`` (and ``baseline_ood.csv``) in ``folder``."""
        folder = Path(folder)
        paths = {name: folder / f"{name}.csv" for name in ("baseline", "baseline_references", "baseline_ood")}
        for name in ("baseline", "baseline_references"):
            if not paths[name].exists():
                raise FileNotFoundError(f"no {paths[name]}: run notebooks/02_evaluation.ipynb for this profile")
        ood = pd.read_csv(paths["baseline_ood"]) if paths["baseline_ood"].exists() else None
        return cls.from_tables(pd.read_csv(paths["baseline"]).iloc[0], pd.read_csv(paths["baseline_references"]), ood)

    @classmethod
    def for_profile(cls, name: str | None = None) -> "References":
        """The references of profile ``name`` (default ``EBM_PROFILE``, else ``cpu``): this run's
        results folder when it holds them, else the checkout's committed ``results/<name>/``."""
        from .profiles import get_profile
        from .results import COMMITTED_RESULTS
        from .runtime import results_dir

        name = name or os.environ.get("EBM_PROFILE") or "cpu"
        for folder in (results_dir(get_profile(name)), COMMITTED_RESULTS / name):
            if (folder / "baseline_references.csv").exists() and (folder / "baseline.csv").exists():
                return cls.from_folder(folder)
        raise FileNotFoundError(f"no baseline references for profile {name!r}: run notebooks/02_evaluation.ipynb")


def _refs(row, refs: References | None) -> References:
    if refs is not None:
        return refs
    profile = row.get("profile") if hasattr(row, "get") else None
    return References.for_profile(profile if isinstance(profile, str) else None)


def generates(row, refs: References | None = None) -> bool:
    """FID below :attr:`References.fid_max` and IS above :attr:`References.is_min` (module doc).
    Without ``refs``, those of the row's ``profile`` column (:meth:`References.for_profile`)."""
    is_, fid = _get(row, "IS"), _get(row, "FID")
    if math.isnan(is_) or math.isnan(fid):
        return False
    r = _refs(row, refs)
    return is_ > r.is_min and fid < r.fid_max


def quality_parts(
    row, ref, refs: References | None = None, aurocs=PAPER_AUROCS, check_ood: bool = True
) -> pd.DataFrame:
    """One row per part of "keeps ``ref``'s quality": ``generates``, then IS, FID and each AUROC
    with its :class:`Interval` and :func:`non_inferior` verdict against its margin."""
    r = _refs(row, refs)
    gen = generates(row, r)
    parts = [
        {
            "part": "generates",
            "interval": f"IS {_get(row, 'IS'):.3g} (needs > {r.is_min:.3g}), FID "
            f"{_get(row, 'FID'):.4g} (needs < {r.fid_max:.4g})",
            "verdict": REPRODUCED if gen else CONTRADICTED,
        }
    ]
    for metric in ("IS", "FID"):
        iv = quality_interval(row, ref, metric)
        parts.append(
            {
                "part": metric,
                "interval": iv.text(),
                "verdict": non_inferior(iv, margin(metric)) if gen else NOT_TESTABLE,
            }
        )
    if check_ood:
        for col in aurocs:
            iv = model_auroc_interval(row, ref, col, r.n(col.removeprefix("auroc_")))
            parts.append({"part": col, "interval": iv.text(), "verdict": non_inferior(iv, AUROC_MARGIN)})
    return pd.DataFrame(parts)


def keeps_quality(row, ref, refs: References | None = None, check_ood: bool = True) -> bool:
    """Generates, and IS, FID and every paper AUROC shown no worse than ``ref``'s beyond the margins."""
    return bool((quality_parts(row, ref, refs, check_ood=check_ood).verdict == REPRODUCED).all())


def quality_failures(row, ref, refs: References | None = None, check_ood: bool = True) -> list[str]:
    """The parts of :func:`quality_parts` not shown to hold, as ``part (verdict): interval``."""
    parts = quality_parts(row, ref, refs, check_ood=check_ood)
    return [f"{p.part} ({p.verdict}): {p.interval}" for p in parts.itertuples() if p.verdict != REPRODUCED]


def compare_quality(a, b, refs: References | None = None) -> str:
    """``better``, ``worse`` or ``no difference`` (``a`` against ``b`` by the FID interval, among
    models that generate: the interval excludes equality or not), ``better``/``worse`` when only
    one generates, ``neither generates`` when neither does."""
    r = _refs(a, refs)
    ga, gb = generates(a, r), generates(b, r)
    if not ga and not gb:
        return "neither generates"
    if ga != gb:
        return "better" if ga else "worse"
    iv = quality_interval(a, b, "FID")
    return "better" if iv.lo > 0 else "worse" if iv.hi < 0 else "no difference"


INVERSION_SETS = (*PAPER_OOD_SETS, "fashion", "uniform")  # the paper's transforms and the two sets of non-digits


def inverted_sets(row, sets=INVERSION_SETS) -> str:
    """The OOD sets among ``sets`` (read from the row's ``auroc_<set>`` columns; a set the row lacks
    is skipped) on which the model is an :func:`inverted` detector, comma-separated; empty when
    there is none."""
    return ", ".join(s for s in sets if f"auroc_{s}" in row.index and inverted(_get(row, f"auroc_{s}")))


def pareto_front(df: pd.DataFrame, cost: str, quality: str, lower_quality_is_better: bool = True) -> pd.DataFrame:
    """Rows not dominated by another row that is at most as costly and at least as good."""
    d = df.dropna(subset=[cost, quality])
    q = d[quality] if lower_quality_is_better else -d[quality]
    keep = []
    for i in d.index:
        dominated = ((d[cost] <= d.at[i, cost]) & (q <= q[i]) & ((d[cost] < d.at[i, cost]) | (q < q[i]))).any()
        if not dominated:
            keep.append(i)
    return d.loc[keep].sort_values(cost)
