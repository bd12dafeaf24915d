"""The paper against this project's results: the protocol the run followed, and one verdict per
claim of the paper, each computed from the result tables under ``results/<profile>/`` by the
rules of :mod:`ebmhelpers.verdicts` (margins, intervals, "generates").

Two tables, kept apart because they answer different questions:

* :func:`protocol_table`: each choice of the paper's protocol (network, epochs, pruning ratios
  and norm, fine-tuning length, students' loss and epochs, the OOD digits) and whether this run
  ``followed`` it, ``scaled`` it (same proportion or a subset, to fit the profile's budget) or
  did ``not follow`` it, and how, computed from the profile and the tables. A protocol row is a
  choice, never a result.
* :func:`verdict_table`: the paper's claims only, each with the rule that judges it, the
  interval of the compared difference, and one of :data:`verdicts.VERDICTS`. A claim this
  setting cannot measure is ``not testable here``, and its reason says, computed, what would
  test it (a profile with the paper's network, the paper's classifier, a ratio the run lacks).

Every IS and FID those claims read comes from one generation chain, the profile's
(:meth:`Profile.gen_sgld_config`). :func:`chain_comparison` judges every claim again with the
scores of a second chain (:attr:`Profile.second_chain`, ``python -m ebmhelpers chain-check``), to
show which verdicts depend on the chain.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import stats

from . import paper, results
from .metrics import QUALITY_COLUMNS
from .verdicts import (
    CONFIDENCE,
    AUROC_MARGIN,
    CHANCE_AUROC,
    CONTRADICTED,
    FID_MARGIN,
    INCONCLUSIVE,
    MARGINAL_AUROC,
    NOT_TESTABLE,
    PAPER_AUROCS,
    REPRODUCED,
    VERDICTS,
    Interval,
    References,
    _get,
    auroc_interval,
    auroc_value_interval,
    model_auroc_interval,
    below,
    combine,
    generates,
    inferior,
    majority,
    margin,
    keeps_quality,
    non_inferior,
    quality_failures,
    quality_interval,
    quality_parts,
    standard_error,
    ratio_verdict,
    superior,
)

COLUMNS = ["claim", "section", "paper", "this project", "rule", "interval", "verdict", "reason"]
PROTOCOL_COLUMNS = ["choice", "section", "paper", "this run", "status", "how"]
PROTOCOL_STATUS = ("followed", "scaled", "not followed")
FP32_BYTES, INT8_BYTES = 4, 1  # bytes per weight: an int8 copy of fp32 weights is at most 4x smaller
SCALE_TOLERANCE = 2.0  # a network "at the paper's scale": parameter count within this factor of ResNet18's
RATIO_TOLERANCE = 0.25  # a compression ratio "at the paper's": within 25% of it (log scale)


# ---- the tables a report reads -----------------------------------------------------------------
@dataclass
class Results:
    """The result tables of one run (``None`` where a notebook has not written one)."""

    base: pd.Series
    refs: References
    quant: pd.DataFrame | None
    base_ood: pd.DataFrame | None
    quant_ood: pd.DataFrame | None
    qspeed: pd.DataFrame | None
    pruning: pd.DataFrame | None
    students: pd.DataFrame | None

    @classmethod
    def read(cls, folder: str | Path) -> "Results":
        folder = Path(folder)

        def read(name: str) -> pd.DataFrame | None:
            return pd.read_csv(folder / f"{name}.csv") if (folder / f"{name}.csv").exists() else None

        base = read("baseline")
        if base is None:
            raise FileNotFoundError(f"no {folder / 'baseline.csv'}: run notebooks/02_evaluation.ipynb for this profile")
        pruning = read("pruning")
        if pruning is not None:
            pruning = results.one_shot(pruning)
        return cls(
            base.iloc[0],
            References.from_folder(folder),
            read("quantization"),
            read("baseline_ood"),
            read("quantization_ood"),
            read("quantization_speed"),
            pruning,
            read("distillation"),
        )


def resnet18_params() -> int:
    """Parameters of the paper's network (this project's ResNet18 energy), counted without weights."""
    import torch

    from .models import count_parameters, resnet18_energy

    with torch.device("meta"):
        return count_parameters(resnet18_energy())


def _paper_profiles() -> list[str]:
    from .profiles import PROFILES

    return [
        name for name, p in PROFILES.items() if p.baseline == paper.NETWORK and p.epochs == paper.BASELINE_EPOCHS.value
    ]


def _row(
    claim: str, section: str, paper_says: str, ours: str, rule: str, interval: str, verdict: str, reason: str
) -> dict:
    assert verdict in VERDICTS, verdict
    return dict(zip(COLUMNS, (claim, section, paper_says, ours, rule, interval, verdict, reason)))


def _score(r) -> str:
    s_is, s_fid = _get(r, "IS_std"), _get(r, "FID_std")
    if math.isnan(_get(r, "IS")):
        return "no samples"
    return (
        f"IS {_get(r, 'IS'):.2f}"
        + ("" if math.isnan(s_is) else f" ± {s_is:.2f}")
        + f", FID {_get(r, 'FID'):.0f}"
        + ("" if math.isnan(s_fid) else f" ± {s_fid:.0f}")
    )


def _scale(res: Results) -> tuple[bool, str]:
    """Whether this run's teacher is at the paper's scale, and the computed reason either way."""
    teacher, r18 = _get(res.base, "params"), resnet18_params()
    at_scale = abs(math.log(teacher / r18)) <= math.log(SCALE_TOLERANCE)
    what = (
        f"this teacher has {teacher:,.0f} parameters, the paper's ResNet18 {r18:,} ({r18 / teacher:.0f}x more)"
        if not at_scale
        else f"this teacher has {teacher:,.0f} parameters, ResNet18 {r18:,}"
    )
    return at_scale, what


def _needs_paper_network(res: Results) -> str:
    _, what = _scale(res)
    return (
        f"{what}; testable with profile(s) {', '.join(_paper_profiles())} (ResNet18), which the paper trained for "
        f"{paper.BASELINE_DAYS.value:g} days on an {paper.BASELINE_GPU}"
    )


# ---- the protocol ---------------------------------------------------------------------------
def protocol_table(folder: str | Path, profile) -> pd.DataFrame:
    """Each choice of the paper's protocol against this run's (``profile`` and the tables in
    ``folder``): ``followed``, ``scaled`` (a proportion kept or a subset run, to fit the budget) or
    ``not followed``, and how."""
    from .loop import iters_per_epoch

    res = Results.read(folder)
    p = profile
    rows = []

    def add(choice, section, paper_says, ours, status, how):
        assert status in PROTOCOL_STATUS, status
        rows.append(dict(zip(PROTOCOL_COLUMNS, (choice, section, paper_says, ours, status, how))))

    teacher, r18 = _get(res.base, "params"), resnet18_params()
    add(
        "network",
        "§3.1",
        f"ResNet18 ({r18:,} parameters here)",
        f"{p.baseline} ({teacher:,.0f} parameters)",
        "followed" if p.baseline == paper.NETWORK else "scaled",
        f"{r18 / teacher:.3g}x the parameters of this run's",
    )
    add(
        "baseline epochs",
        paper.BASELINE_EPOCHS.section,
        f"{paper.BASELINE_EPOCHS.value:g}",
        f"{p.epochs}",
        "followed" if p.epochs == paper.BASELINE_EPOCHS.value else "scaled",
        f"{p.epochs / paper.BASELINE_EPOCHS.value:.2g}x the paper's epochs",
    )
    if res.base_ood is not None:
        digits = sorted({int(d) for d in res.base_ood.digits.astype(str) if d.isdigit()})
        add(
            "Table 2 digits",
            paper.TABLE2_SECTION,
            " ".join(map(str, paper.TABLE2_DIGITS)),
            " ".join(map(str, digits)),
            "followed" if set(paper.TABLE2_DIGITS) <= set(digits) else "not followed",
            "per-digit rows of the OOD tables",
        )
    if res.pruning is not None:
        ratios = sorted(res.pruning.ratio.round(2).unique())
        missing = sorted(set(paper.PRUNE_RATIOS) - set(ratios))
        add(
            "pruning ratios",
            paper.PRUNE_RATIOS_SECTION,
            ", ".join(f"{r:.0%}" for r in paper.PRUNE_RATIOS),
            ", ".join(f"{r:.0%}" for r in ratios),
            "scaled" if missing else "followed",
            f"missing {', '.join(f'{r:.0%}' for r in missing)} (profile prune_ratios: "
            f"{', '.join(f'{r:.0%}' for r in p.prune_ratios)})"
            if missing
            else "every ratio",
        )
        names = res.pruning.model.astype(str)
        l1 = names.str.startswith("L1").mean()
        add(
            "pruning norm",
            paper.PRUNE_NORM_SECTION,
            paper.PRUNE_NORM,
            f"{l1:.0%} of pruned models named L1",
            "followed" if l1 == 1 else "not followed",
            "torch.nn.utils.prune, n=1 (model names)",
        )
        tuned = sorted(res.pruning[res.pruning.finetuned.astype(bool)].strategy.unique())
        add(
            "fine-tuned strategies",
            paper.FINETUNE_EPOCHS.section,
            "the locally (Conv2d-only) pruned models",
            ", ".join(tuned),
            "followed" if tuned and all(s.endswith("conv") for s in tuned) else "not followed",
            "strategies with fine-tuned rows in pruning.csv",
        )
    n_train = (p.train_subset or 60_000) - p.val_size
    per_epoch = iters_per_epoch(n_train, p.batch_size, p.max_iters_per_epoch)
    ft, total = p.finetune_epochs * (p.finetune_iters or per_epoch), p.epochs * per_epoch
    frac = ft / total
    same = abs(math.log(frac / paper.FINETUNE_FRACTION)) <= math.log(1 + RATIO_TOLERANCE)
    add(
        "fine-tuning length",
        paper.FINETUNE_EPOCHS.section,
        f"{paper.FINETUNE_EPOCHS.value:g} of {paper.BASELINE_EPOCHS.value:g} epochs ({paper.FINETUNE_FRACTION:.1%})",
        f"{ft:,} of {total:,} iterations ({frac:.1%})",
        "followed" if same and p.epochs == paper.BASELINE_EPOCHS.value else "scaled" if same else "not followed",
        f"{frac / paper.FINETUNE_FRACTION:.2f}x the paper's proportion",
    )
    s_frac = p.student_epochs() / p.epochs
    add(
        "students' epochs",
        paper.DISTILL_EPOCHS.section,
        f"{paper.DISTILL_EPOCHS.value:g} of {paper.BASELINE_EPOCHS.value:g} epochs",
        f"{p.student_epochs()} of {p.epochs} epochs",
        "followed"
        if p.student_epochs() == paper.DISTILL_EPOCHS.value
        else "scaled"
        if abs(s_frac - paper.DISTILL_EPOCH_FRACTION) <= 0.5 / max(p.epochs, 1) + 1e-9
        else "not followed",
        f"{s_frac:.0%} of the baseline's epochs (rounded to whole epochs)",
    )
    if res.students is not None:
        st = res.students
        eq6 = st[st.variant == "eq6"] if "variant" in st else st.iloc[:0]
        add(
            "distillation loss",
            paper.DISTILL_LOSS_SECTION,
            paper.DISTILL_LOSS,
            f"{len(eq6)} of {len(st)} runs",
            "followed" if len(eq6) else "not followed",
            "the other runs are this project's extensions",
        )
        n = st.student.nunique() if "student" in st else len(st)
        add(
            "number of students",
            paper.N_STUDENTS.section,
            f"{paper.N_STUDENTS.value:g}",
            f"{n}",
            "followed" if n == paper.N_STUDENTS.value else "scaled",
            f"smallest {int(st.params.min()):,} parameters, "
            f"largest {int(st.params.max()):,} ({teacher / st.params.min():.0f}x and {teacher / st.params.max():.1f}x "
            "fewer than this teacher)",
        )
    return pd.DataFrame(rows, columns=PROTOCOL_COLUMNS)


# ---- the claims -----------------------------------------------------------------------------
def verdict_table(source: str | Path | Results) -> pd.DataFrame:
    """One row per claim of the paper (:data:`paper.CLAIMS` and the reported numbers), with this
    run's numbers, the rule, the interval it is judged by, the verdict and its reason; claims
    whose tables the run lacks are left out. ``source``: a results folder, or its tables already read."""
    res = source if isinstance(source, Results) else Results.read(source)
    rows = _score_rows(res)
    if res.quant is not None:
        rows += _table1_rows(res)
    if res.base_ood is not None and res.quant_ood is not None:
        rows += _table2_rows(res)
    if res.pruning is not None:
        rows += _pruning_rows(res)
    if res.students is not None:
        rows += _student_rows(res)
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_counts(table: pd.DataFrame) -> pd.Series:
    """Claims per verdict, every verdict of :data:`verdicts.VERDICTS` listed (0 where none)."""
    return table.verdict.value_counts().reindex(list(VERDICTS), fill_value=0)


def _mean_interval(row, metric: str) -> str:
    """``row``'s mean ``metric`` with its t interval over the draws it was averaged from
    (:func:`verdicts.standard_error`), on this project's classifier's scale."""
    value, (se, dof) = _get(row, metric), standard_error(row, metric)
    if math.isnan(value):
        return f"{metric}: not measured"
    if math.isinf(se):
        return f"{metric} {value:.4g} [-inf, inf] (one draw)"
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se
    return f"{metric} {value:.4g} [{value - half:.4g}, {value + half:.4g}] (this classifier)"


def _score_rows(res: Results) -> list[dict]:
    """§4.2's FID and IS: on the scale of the paper's classifier, which it does not publish."""
    r = res.refs
    rows = []
    for rep, metric, ref_noise in ((paper.BASELINE_FID, "FID", r.noise_FID), (paper.BASELINE_IS, "IS", r.noise_IS)):
        base = _get(res.base, metric)
        place = (math.log(rep.value / ref_noise) / math.log(base / ref_noise)) if base != ref_noise else math.nan
        rows.append(
            _row(
                f"baseline {metric} {rep.text.split()[-1]}",
                rep.section,
                f"{rep.value:g}",
                _score(res.base),
                "testable only on the paper's classifier's scale (paper.CLASSIFIER_PUBLISHED)",
                _mean_interval(res.base, metric),
                NOT_TESTABLE,
                f"{paper.CLAIMS['classifier'][0]}: '{paper.CLAIMS['classifier'][1]}', no architecture or weights; "
                f"on this classifier's scale uniform noise scores {metric} {ref_noise:.4g} and this baseline "
                f"{base:.4g}, so the paper's "
                f"{rep.value:g} would sit at {place:.2f} on a log scale where noise is 0 and this baseline 1 (below 0: "
                "beyond noise); testable with the paper's classifier, or its scores of real digits and noise",
            )
        )
    return rows


def _table1_rows(res: Results) -> list[dict]:
    q = res.quant.set_index("model")
    if "int8 static" not in q.index:
        return []
    int8 = q.loc["int8 static"]
    (p_mb, p_s), (q_mb, q_s) = paper.TABLE1["Baseline"], paper.TABLE1["Static Quantized"]
    at_scale, _ = _scale(res)
    ours = _get(res.base, "size_mb") / _get(int8, "size_mb")
    bound = FP32_BYTES / INT8_BYTES
    r18_mb = resnet18_params() * FP32_BYTES / 1e6
    size_reason = (
        f"the paper's {p_mb / q_mb:.1f}x exceeds the {bound:g}x that int8 weights can save over fp32 ones: its "
        f"{p_mb} MB is {p_mb / r18_mb:.2f}x ResNet18's {r18_mb:.1f} MB of fp32 weights, a file holding more than "
        "the weights (e.g. optimizer state); "
        if p_mb / q_mb > bound
        else ""
    ) + _needs_paper_network(res)
    rows = [
        _row(
            "Table 1: compression ratio of 11.9x",
            paper.TABLE1_SECTION,
            f"{p_mb} MB / {q_mb} MB = {p_mb / q_mb:.1f}x",
            f"{_get(res.base, 'size_mb'):.3f} MB / {_get(int8, 'size_mb'):.3f} MB = {ours:.2f}x (weights / weights)",
            f"needs the paper's network and a ratio int8 weights can reach (at most {bound:g}x)",
            f"size ratio {ours:.3g} (exact: serialized weights, no sampling error)",
            NOT_TESTABLE
            if not at_scale or p_mb / q_mb > bound
            else REPRODUCED
            if abs(math.log(ours / (p_mb / q_mb))) <= math.log(1 + RATIO_TOLERANCE)
            else CONTRADICTED,
            size_reason,
        )
    ]
    lo = hi = math.nan
    how = "separate timings"
    if res.qspeed is not None and (res.qspeed.model == "int8 static").any():
        s = res.qspeed[res.qspeed.model == "int8 static"].iloc[0]
        ratio, lo, hi = _get(s, "speedup_cpu"), _get(s, "speedup_lo"), _get(s, "speedup_hi")
        how = "interleaved medians, quartile spread"
    else:
        ratio = _get(res.base, "latency_ms_cpu") / _get(int8, "latency_ms_cpu")
    measured = ratio_verdict(ratio, lo, hi) if not math.isnan(lo) else ratio_verdict(ratio)
    rows.append(
        _row(
            "Table 1: 50% faster inference (int8)",
            paper.TABLE1_SECTION,
            f"{p_s} s / {q_s} s = {p_s / q_s:.2f}x",
            f"{ratio:.2f}x ({how}): {measured}",
            "needs the paper's network (int8's gain depends on the layers)",
            f"speed-up {ratio:.2f} [{lo:.2f}, {hi:.2f}]" if not math.isnan(lo) else "-",
            (REPRODUCED if measured == "faster" else CONTRADICTED) if at_scale else NOT_TESTABLE,
            _needs_paper_network(res) + f"; measured here on {res.base.get('hardware', 'this CPU')}",
        )
    )
    return rows


def _ood(res: Results, model: str, ood_set: str, digits: str = "all") -> tuple[float, tuple[int, int] | None]:
    """(AUROC, (n_in, n_out)) of ``model`` on ``ood_set`` for ``digits`` from the OOD tables."""
    table = res.base_ood if model == "baseline" else res.quant_ood
    d = table[(table.model == model) & (table.ood_set == ood_set) & (table.digits.astype(str) == str(digits))]
    if d.empty:
        return math.nan, None
    return float(d.auroc.iloc[0]), (int(d.n.iloc[0]), int(d.n.iloc[0]))


MODELS2 = {"Baseline": "baseline", "Static Quantization": "int8 static"}


def _table2_rows(res: Results) -> list[dict]:
    rows = []
    digits = [str(d) for d in paper.TABLE2_DIGITS]
    # §4.3: quantized models less adept at noise detection
    parts = []
    for d in digits:
        (b, nb), (q, nq) = _ood(res, "baseline", "noise", d), _ood(res, "int8 static", "noise", d)
        iv = auroc_interval(q, b, nq, nb, label=f"digit {d}")
        parts.append((iv, inferior(iv, AUROC_MARGIN)))
    rows.append(
        _claim_row(
            "int8 less adept at noise detection than the baseline",
            paper.CLAIMS["table2_noise"][0],
            "noise scores "
            + " / ".join(f"{paper.table2_value('Baseline', 'noise', int(d)):.2f}" for d in digits)
            + " (baseline) vs "
            + " / ".join(f"{paper.table2_value('Static Quantization', 'noise', int(d)):.2f}" for d in digits),
            "int8 AUROC minus baseline AUROC on noisy 4 / 5 / 9",
            parts,
            f"'less adept': int8's AUROC lower on every digit (interval below 0); contradicted when it is not lower by "
            f"more than {AUROC_MARGIN} on some digit",
        )
    )
    # §4.3: both struggle with rotated digits
    parts = []
    for name, model in MODELS2.items():
        flip, n = _ood(res, model, "flip")
        others = {s: _ood(res, model, s) for s in ("noise", "reduced")}
        other = min(others, key=lambda s: others[s][0])
        iv = auroc_interval(flip, others[other][0], n, others[other][1], label=f"{name}: flip - {other}")
        parts.append((iv, inferior(iv, AUROC_MARGIN)))
    rows.append(
        _claim_row(
            "both models struggle with rotated digits",
            paper.CLAIMS["table2_rotation"][0],
            "rotation scores "
            f"{paper.table2_range('Baseline', 'rotation')[0]:.2f}..{paper.table2_range('Baseline', 'rotation')[1]:.2f}",
            "AUROC on upside-down digits minus the lowest other paper transform's, per model",
            parts,
            "'struggle': the upside-down digits are each model's worst-separated transform",
        )
    )
    # §4.3: particularly 5 and 9
    parts = []
    for name, model in MODELS2.items():
        a4, n4 = _ood(res, model, "flip", "4")
        for d in ("5", "9"):
            a, n = _ood(res, model, "flip", d)
            iv = auroc_interval(a, a4, n, n4, label=f"{name}: {d} - 4")
            parts.append((iv, inferior(iv, AUROC_MARGIN)))
    rows.append(
        _claim_row(
            "... particularly with 5 and 9",
            paper.CLAIMS["table2_rotation"][0],
            "5 and 9 (visual ambiguity when inverted)",
            "upside-down AUROC of 5 and of 9 minus that of 4, per model (about 200 digits each)",
            parts,
            "5 and 9 separated worse than 4 for both models",
        )
    )
    # §4.3: size reductions, only a marginal ability; every size-reduction variant the OOD tables hold
    from .metrics import OOD_LABELS

    for ood_set in ("reduced", "shrink_centre"):
        if not (res.base_ood.ood_set == ood_set).any():
            continue
        parts = []
        for name, model in MODELS2.items():
            a, n = _ood(res, model, ood_set)
            iv = auroc_value_interval(a, n, f"{name} AUROC")
            parts.append((iv, below(iv, MARGINAL_AUROC)))
        rows.append(
            _claim_row(
                f"size reductions: only a marginal ability to detect them ({OOD_LABELS[ood_set]})",
                paper.CLAIMS["table2_reduction"][0],
                "reduction scores {:.2f}..{:.2f}".format(*paper.table2_range("Baseline", "reduction")),
                "AUROC of each model (all digits), normal interval",
                parts,
                f"'marginal': AUROC below {MARGINAL_AUROC} for both models (an inverted detector, below "
                f"{CHANCE_AUROC}, detects nothing either)",
            )
        )
    return rows


def _worst_auroc(row, ref, refs, label: str) -> Interval:
    """The interval of ``row``'s AUROC minus ``ref``'s on the paper transform where ``row`` is most behind."""
    ivs = [model_auroc_interval(row, ref, c, refs.n(c.removeprefix("auroc_")), f"{label} {c}") for c in PAPER_AUROCS]
    return min(ivs, key=lambda i: i.estimate)


def _claim_row(
    claim: str, section: str, paper_says: str, what: str, parts: list[tuple[Interval, str]], rule: str, combiner=combine
) -> dict:
    """A claim judged by several (interval, verdict) parts, combined by ``combiner``."""
    verdict = combiner([v for _, v in parts])
    ours = "; ".join(f"{iv.label or iv.metric}: {v}" for iv, v in parts)
    return _row(
        claim,
        section,
        paper_says,
        f"{what}: {ours}",
        rule,
        "; ".join(iv.text() for iv, _ in parts),
        verdict,
        f"{sum(v == REPRODUCED for _, v in parts)} of {len(parts)} parts reproduced, "
        f"{sum(v == CONTRADICTED for _, v in parts)} contradicted, {sum(v == INCONCLUSIVE for _, v in parts)} "
        f"inconclusive (interval across the margin), {sum(v == NOT_TESTABLE for _, v in parts)} not testable",
    )


# ---- pruning --------------------------------------------------------------------------------
def _pick(pr: pd.DataFrame, strategy: str, ratio: float, finetuned: bool = False) -> pd.Series | None:
    d = pr[(pr.strategy == strategy) & ((pr.ratio - ratio).abs() < 1e-9) & (pr.finetuned.astype(bool) == finetuned)]
    return d.iloc[0] if len(d) else None


def _better_fid(a, b, refs: References, label: str) -> tuple[Interval, str]:
    """``a`` better than ``b`` in image quality: by the FID interval when both generate, decided
    when only one does, not testable when neither does."""
    iv = quality_interval(a, b, "FID", f"{label} FID")
    ga, gb = generates(a, refs), generates(b, refs)
    if ga and gb:
        return iv, superior(iv, margin("FID"))
    return iv, REPRODUCED if ga else CONTRADICTED if gb else NOT_TESTABLE


def _pruning_rows(res: Results) -> list[dict]:
    pr, base, refs = res.pruning, res.base, res.refs
    pre = pr[~pr.finetuned.astype(bool)]
    ratios = sorted(pre.ratio.round(2).unique())
    pct = ", ".join(f"{r:.0%}" for r in ratios)
    rows = []
    # increased global ratio significantly affects all three scores
    hi = max(ratios)
    parts = []
    for strat in ("unstructured_global", "structured_global"):
        r = _pick(pr, strat, hi)
        if r is None:
            continue
        for metric in ("FID", "IS"):
            iv = quality_interval(r, base, metric, f"{strat} {hi:.0%} {metric}")
            parts.append((iv, inferior(iv, margin(metric))))
        worst = _worst_auroc(r, base, refs, f"{strat} {hi:.0%}")
        parts.append((worst, inferior(worst, AUROC_MARGIN)))
    rows.append(
        _claim_row(
            "increased global pruning significantly affects all three scores",
            *paper.CLAIMS["fig2_global"],
            f"highest ratio run ({hi:.0%}) against the baseline",
            parts,
            "FID, IS and the most-affected paper AUROC each worse than the baseline's at the highest ratio",
        )
    )
    # pairwise strategy comparisons over the ratios run
    for claim, a_s, b_s, what in (
        ("fig2_fid", "unstructured_global", "structured_global", "quality"),
        ("fig2_ood", "unstructured_global", "structured_global", "ood"),
        ("fig2_conv", "unstructured_conv", "unstructured_global", "quality"),
        ("fig2_conv", "structured_conv", "structured_global", "quality"),
    ):
        parts = []
        for ratio in ratios:
            a, b = _pick(pr, a_s, ratio), _pick(pr, b_s, ratio)
            if a is None or b is None:
                continue
            if what == "quality":
                parts.append(_better_fid(a, b, refs, f"{ratio:.0%}"))
            else:
                iv = model_auroc_interval(a, b, "auroc_worst", refs.n("flip"), f"{ratio:.0%} worst AUROC")
                parts.append((iv, superior(iv, AUROC_MARGIN)))
        label = {
            "fig2_fid": "unstructured better image quality than structured (global)",
            "fig2_ood": "unstructured generally better OOD than structured (global)",
        }.get(claim, f"Conv2d-only superior to global ({a_s.split('_')[0]})")
        rows.append(
            _claim_row(
                label,
                *paper.CLAIMS[claim],
                f"{a_s} vs {b_s} per ratio ({pct})",
                parts,
                (
                    "FID among models that generate (one generating: it wins; neither: not testable)"
                    if what == "quality"
                    else "worst paper AUROC"
                )
                + "; majority of the testable ratios",
                combiner=majority,
            )
        )
    # IS drops at 30% and 40%: needs each of them with both neighbours
    needed = {0.2, 0.3, 0.4, 0.5}
    missing = sorted(needed - set(ratios))
    if missing:
        rows.append(
            _row(
                "IS volatile, notable drops at 30% and 40%",
                *paper.CLAIMS["fig2_is"],
                f"ratios run: {pct}",
                "IS at 30% and at 40% below both neighbouring ratios'",
                "-",
                NOT_TESTABLE,
                f"needs ratios {', '.join(f'{r:.0%}' for r in missing)}: a profile whose prune_ratios hold "
                "10% to 90% in steps of 10% (the paper's)",
            )
        )
    else:
        parts = []
        for strat in pre.strategy.unique():
            for r in (0.3, 0.4):
                cur = _pick(pr, strat, r)
                for nb in (round(r - 0.1, 1), round(r + 0.1, 1)):
                    other = _pick(pr, strat, nb)
                    iv = quality_interval(cur, other, "IS", f"{strat} {r:.0%} vs {nb:.0%} IS")
                    parts.append((iv, inferior(iv, margin("IS"))))
        rows.append(
            _claim_row(
                "IS volatile, notable drops at 30% and 40%",
                *paper.CLAIMS["fig2_is"],
                "IS against the neighbouring ratios",
                parts,
                "IS at 30% and 40% below both neighbours, every strategy",
            )
        )
    # fine-tuned 80-90%: better than before, close-to-perfect OOD
    parts = []
    high = [r for r in (0.8, 0.9) if r in ratios]
    for strat in sorted(pr[pr.finetuned.astype(bool)].strategy.unique()):
        for r in high:
            ft, os_ = _pick(pr, strat, r, True), _pick(pr, strat, r)
            if ft is None or os_ is None:
                continue
            parts.append(_better_fid(ft, os_, refs, f"{strat} {r:.0%} fine-tuned vs one-shot"))
            for c in PAPER_AUROCS:
                iv = model_auroc_interval(
                    ft, base, c, refs.n(c.removeprefix("auroc_")), f"{strat} {r:.0%} ft {c} - baseline"
                )
                parts.append((iv, non_inferior(iv, AUROC_MARGIN)))
    absent = [f"{r:.0%}" for r in (0.8, 0.9) if r not in ratios]
    row = _claim_row(
        "fine-tuned pruned models improve at 80-90%, keeping close-to-perfect OOD",
        *paper.CLAIMS["fig2_finetuned"],
        "fine-tuned against one-shot (FID) and against the baseline (each paper AUROC)",
        parts,
        f"better than before fine-tuning and every paper AUROC within {AUROC_MARGIN} of the baseline's",
    )
    if absent:
        row["reason"] += f"; not run here: {', '.join(absent)} (needs a profile with the paper's ratios)"
    rows.append(row)
    # Figure 4: the one-shot (pre-training) 60% unstructured Conv2d model has clearer digits than the fine-tuned one
    strat, ratio = "unstructured_conv", paper.FIGURE4_PRUNING[2]
    one, tuned = _pick(pr, strat, ratio), _pick(pr, strat, ratio, True)
    if one is None or tuned is None:
        rows.append(
            _row(
                "Figure 4: the pre-training pruned model has clearer digits",
                paper.FIGURE4_SECTION,
                paper.CLAIMS["fig4_pruned"][1],
                f"no {strat} at {ratio:.0%} in pruning.csv",
                "-",
                "-",
                NOT_TESTABLE,
                f"needs {strat} at {ratio:.0%}, one-shot and fine-tuned (notebook 04)",
            )
        )
    else:
        rows.append(
            _claim_row(
                "Figure 4: the pre-training pruned model has clearer digits",
                paper.FIGURE4_SECTION,
                paper.CLAIMS["fig4_pruned"][1],
                f"one-shot {_score(one)}; fine-tuned {_score(tuned)}",
                [_better_fid(one, tuned, refs, f"{ratio:.0%} one-shot vs fine-tuned")],
                "a visual claim, judged by its measurable part: generates, then FID (the digits are in "
                "notebook 06's Figure 4)",
            )
        )
    return rows


# ---- distillation ---------------------------------------------------------------------------
def _student_rows(res: Results) -> list[dict]:
    st, base, refs = res.students, res.base, res.refs
    rows = []
    at_scale, _ = _scale(res)
    teacher = _get(base, "params")
    smallest = st[st.params == st.params.min()]
    ratio = teacher / float(smallest.params.iloc[0])
    # Every claim about the paper's students needs students of the paper's capacity: its smallest one is
    # about as large as this whole teacher, so below the paper's scale they are measured but not judged
    capacity = (
        f"the paper's smallest student ({paper.STUDENT_PARAMS.value:,.0f} parameters) is "
        f"{paper.STUDENT_PARAMS.value / teacher:.2f}x this whole teacher, its students here "
        f"{_get(smallest.iloc[0], 'params'):,.0f} to {st.params.max():,.0f}; " + _needs_paper_network(res)
    )
    keeps = [r.model for _, r in st.iterrows() if keeps_quality(r, base, refs)]
    near = st.loc[
        (st.params.astype(float) / (teacher / paper.STUDENT_RATIO.value)).map(lambda v: abs(math.log(v))).idxmin()
    ]
    fails = quality_failures(near, base, refs)
    for key, claim, ours in (
        (
            "fig3_medium",
            "medium-sized students preserve performance across all metrics",
            f"{len(keeps)} of {len(st)} students keep the baseline's quality"
            + (f": {', '.join(keeps)}" if keeps else ""),
        ),
        (
            "abstract_headline",
            "a 1/145th-sized student matches the baseline's image quality and anomaly detection",
            f"{near.model} ({teacher / _get(near, 'params'):.0f}x fewer parameters): "
            + ("keeps quality" if not fails else "does not keep quality: " + "; ".join(fails)),
        ),
    ):
        verdict = (
            NOT_TESTABLE
            if not at_scale
            else REPRODUCED
            if (keeps if key == "fig3_medium" else not fails)
            else CONTRADICTED
        )
        measured = [near] if key == "abstract_headline" else [r for _, r in st.iterrows()]
        rows.append(
            _row(
                claim,
                *paper.CLAIMS[key],
                ours,
                "keeps quality (verdicts.keeps_quality) at the paper's student sizes, distilled from its ResNet18",
                "; ".join(
                    f"{r.model} {part.interval}"
                    for r in measured
                    for part in quality_parts(r, base, refs).itertuples()
                    if part.part != "generates"
                ),
                verdict,
                capacity,
            )
        )
    # the smallest students against most pruned models (same teacher)
    parts = []
    for _, s in smallest.iterrows():
        for _, p in res.pruning.iterrows() if res.pruning is not None else []:
            iv = quality_interval(s, p, "FID", f"{s.model} vs {p.model}")
            gs, gp = generates(s, refs), generates(p, refs)
            v = (
                non_inferior(iv, margin("FID"))
                if gs and gp
                else REPRODUCED
                if gs
                else CONTRADICTED
                if gp
                else NOT_TESTABLE
            )
            parts.append((iv, v))
    same_ratio = abs(math.log(ratio / paper.STUDENT_RATIO.value)) <= math.log(1 + RATIO_TOLERANCE)
    row = _claim_row(
        "even the smallest students are competitive with most pruned models",
        *paper.CLAIMS["fig3_smallest"],
        f"smallest student(s) ({ratio:.0f}x fewer parameters than this teacher) against each one-shot pruned model",
        parts,
        f"FID at most {FID_MARGIN:.0%} above the pruned model's among models that generate "
        "(one generating: it wins; neither: not testable); majority of the testable pairs",
        combiner=majority,
    )
    if not same_ratio:
        row["verdict"] = NOT_TESTABLE
        row["reason"] = (
            f"the smallest student here is {ratio:.0f}x smaller than its teacher, the paper's "
            f"{paper.STUDENT_RATIO.value:g}x: needs students at the paper's ratio"
        )
    elif not at_scale:
        row["verdict"], row["reason"] = NOT_TESTABLE, f"{row['reason']}; not judged: {capacity}"
    rows.append(row)
    # students comparable or superior to int8 at OOD
    if res.quant is not None and (res.quant.model == "int8 static").any():
        int8 = res.quant[res.quant.model == "int8 static"].iloc[0]
        parts = []
        for _, s in st.iterrows():
            worst = _worst_auroc(s, int8, refs, s.model)
            parts.append((worst, non_inferior(worst, AUROC_MARGIN)))
        row = _claim_row(
            "students comparable or superior to the quantized model at OOD",
            *paper.CLAIMS["fig3_vs_quantized"],
            "each student's most-behind paper AUROC minus int8 static's",
            parts,
            f"every student within {AUROC_MARGIN} of int8 static (or above) on every paper transform",
        )
        if not at_scale:
            row["verdict"], row["reason"] = NOT_TESTABLE, f"{row['reason']}; not judged: {capacity}"
        rows.append(row)
    return rows


# ---- the claims under a second generation chain -----------------------------------------------
# The tables whose IS and FID the claims read (their names under results/<profile>/ -> the Results field that
# holds each). Every row of each feeds some claim: the one-shot rows of pruning.csv (as Results reads it), fine-tuned
# or not, and every student (the smallest students are set against every pruned model). The quantization tables
# feed none: static int8 draws nothing (no input gradient) and no claim reads the weight-only model's scores.
QUALITY_TABLES = {"baseline": "base", "pruning": "pruning", "distillation": "students"}
ROW_KEYS = ("strategy", "ratio", "finetuned", "student", "variant")  # what a row is, beside its `model`
CHAIN_SCORES = (*QUALITY_COLUMNS, "training_seeds")  # what a second chain replaces in a row
# second_chain.csv: one row per model of QUALITY_TABLES and chain. `model` is unique within its table and is the
# key; the chain is `steps` steps of `step_scale` times the training step; `n_gen` digits per generation seed;
# `baseline_weights` identifies the baseline every scored model derives from; `seconds` the scoring's wall time.
CHAIN_COLUMNS = (
    "table",
    "model",
    *ROW_KEYS,
    "chain",
    "steps",
    "step_scale",
    "n_gen",
    "baseline_weights",
    *CHAIN_SCORES,
    "seconds",
)
CHAIN_FILE = "second_chain.csv"
CHAIN_COMPARISON_COLUMNS = [
    "claim",
    "section",
    "verdict",
    "interval",
    "second chain verdict",
    "second chain interval",
    "changed",
]


def chain_label(profile, steps: int, step_scale: float) -> str:
    """A generation chain in words: ``steps`` SGLD steps of ``step_scale`` times ``profile``'s training
    step at its temperature (:meth:`SGLDConfig.scaled`), with the step size, noise and clamp that makes."""
    cfg = profile.sgld_config(steps).scaled(step_scale)
    return (
        f"{steps} steps of {step_scale:g}x the training step (step size {cfg.step_size:g}, noise std "
        f"{cfg.noise_std:.3g}, gradient clamp {cfg.grad_clamp:g})"
    )


def chain_check_command(profile: str, steps: int | None = None, step_scale: float | None = None) -> str:
    """The command that writes ``second_chain.csv`` for ``profile`` (with ``steps`` and ``step_scale``:
    that chain, else the profile's :attr:`Profile.second_chain`)."""
    chain = f" --steps {steps} --step-scale {step_scale:g}" if steps is not None else ""
    return f"python -m ebmhelpers chain-check --profile {profile}{chain}"


def of_chain(chain: pd.DataFrame, steps: int, step_scale: float) -> pd.Series:
    """Which rows of ``chain`` (rows of :data:`CHAIN_COLUMNS`) were scored under ``steps`` steps of ``step_scale``."""
    return (chain.steps == steps) & ((chain.step_scale.astype(float) - step_scale).abs() < 1e-9)


def quality_rows(res: Results) -> pd.DataFrame:
    """One row per model whose IS and FID a claim reads (:data:`QUALITY_TABLES`): its ``table``,
    ``model``, :data:`ROW_KEYS` and ``training_seeds`` (1 where the table records none: one training
    run, as :func:`verdicts.standard_error` reads it)."""
    rows = []
    for table, field in QUALITY_TABLES.items():
        frame = getattr(res, field)
        if frame is None:
            continue
        for _, r in (frame.to_frame().T if isinstance(frame, pd.Series) else frame).iterrows():
            seeds = _get(r, "training_seeds")
            rows.append(
                {
                    "table": table,
                    "model": str(r["model"]),
                    **{k: r.get(k, math.nan) for k in ROW_KEYS},
                    "training_seeds": 1 if math.isnan(seeds) else int(seeds),
                }
            )
    out = pd.DataFrame(rows, columns=["table", "model", *ROW_KEYS, "training_seeds"])
    twice = out[out.duplicated(["table", "model"])]
    if len(twice):
        raise ValueError(f"{twice.table.iloc[0]}.csv names model {twice.model.iloc[0]!r} twice: a model is one row")
    return out


def with_second_chain(res: Results, chain: pd.DataFrame, steps: int, step_scale: float) -> Results:
    """``res`` with :data:`CHAIN_SCORES` of every row of :data:`QUALITY_TABLES` replaced by that
    model's under the chain of ``steps`` steps of ``step_scale`` times the training step, read from
    ``chain`` (rows of :data:`CHAIN_COLUMNS`, e.g. ``second_chain.csv``; rows of other chains are
    ignored), and the baseline's scores under that chain as the references' baseline: a model
    generates when it draws like the baseline does under the same chain. Raises
    :class:`results.MissingResultsError` naming the command that scores them when a model is missing."""
    this = chain[of_chain(chain, steps, step_scale)]
    this = this.assign(model=this.model.astype(str)).set_index(["table", "model"])
    if this.index.duplicated().any():
        table, model = this.index[this.index.duplicated()][0]
        raise ValueError(f"the second chain scores {table} model {model!r} twice")
    wanted = quality_rows(res)
    missing = [f"{t} model {m!r}" for t, m in zip(wanted.table, wanted.model) if (t, m) not in this.index]
    if missing:
        profile = res.base.get("profile", "<profile>")
        raise results.MissingResultsError(
            f"the second chain ({steps} steps of {step_scale:g}x) has no scores for {missing[0]}"
            + (f" and {len(missing) - 1} more model(s)" if len(missing) > 1 else "")
            + f": run `{chain_check_command(profile, steps, step_scale)}`"
        )
    changes = {}
    for table, field in QUALITY_TABLES.items():
        frame = getattr(res, field)
        if frame is None:
            continue
        if isinstance(frame, pd.Series):
            changes[field] = frame.copy()
            for c in CHAIN_SCORES:
                changes[field][c] = this.at[(table, str(frame["model"])), c]
            continue
        scores = this.loc[table].loc[frame.model.astype(str), list(CHAIN_SCORES)]
        changes[field] = frame.assign(**{c: scores[c].to_numpy() for c in CHAIN_SCORES})
    base = changes["base"]
    refs = dataclasses.replace(res.refs, base_IS=_get(base, "IS"), base_FID=_get(base, "FID"))
    return dataclasses.replace(res, refs=refs, **changes)


def chain_comparison(res: Results, chain: pd.DataFrame, steps: int, step_scale: float) -> pd.DataFrame:
    """Every claim of :func:`verdict_table` judged with the profile's chain and again with the
    scores of the chain of ``steps`` steps of ``step_scale`` (:func:`with_second_chain`): its verdict
    and interval under each, and whether the verdict ``changed`` (:data:`CHAIN_COMPARISON_COLUMNS`)."""
    first = verdict_table(res)
    second = verdict_table(with_second_chain(res, chain, steps, step_scale))
    if list(first.claim) != list(second.claim):  # which claims are judged depends on the tables, not on scores
        raise RuntimeError("the claims judged under the second chain are not those judged under the profile's")
    out = first[["claim", "section", "verdict", "interval"]].assign(
        **{"second chain verdict": second.verdict.to_numpy(), "second chain interval": second.interval.to_numpy()}
    )
    out["changed"] = out.verdict != out["second chain verdict"]
    return out[CHAIN_COMPARISON_COLUMNS]
