"""Verdicts a reader can check: one shared rule for "keeps quality" and "better", and the paper
side by side, one row per claim, with a verdict generated from the committed result tables.

**The rule.** A model *generates* when its Inception Score is at least :data:`IS_FLOOR` (and it
has an FID at all): uniform noise scores IS 1.00 with this project's classifier, and below 2 the
classifier's predictions on the samples barely differ from their average, which is what noise or
one smeared blob gives. FID is compared only among models that generate: between two noise
generators its differences say nothing about digits. A model **keeps the quality** of a reference
when it generates, its IS is at least the reference's minus the combined seed spread and its FID
at most the reference's plus that spread (the spread of a difference of two independent scores,
``SPREAD_MULTIPLE * sqrt(std_a^2 + std_b^2)``; with one seed there is no spread and no allowance),
and on each of the paper's three OOD transforms its AUROC is at most :data:`AUROC_TOLERANCE`
below the reference's. One model is **better** than another only when both generate and its FID
is lower by more than the spread (or only it generates); otherwise there is no difference to
report.

**Verdicts.** ``reproduced``: this project's number supports the paper's sentence under the rule
stated in the row. ``not reproduced``: it contradicts it. ``not comparable``: the two numbers
measure different things (another feature network, an undefined score, a checkpoint against bare
weights) or this run lacks what the claim needs; the row says which.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import paper

IS_FLOOR = 2.0  # below it a model draws noise (uniform noise: IS 1.00); it never "keeps quality"
SPREAD_MULTIPLE = 1.0  # allowance = this multiple of sqrt(std_a^2 + std_b^2) over the scoring seeds
AUROC_TOLERANCE = 0.02  # per transform, never averaged
NEAR_PERFECT_AUROC = 0.95  # "close-to-perfect OOD": every paper transform at or above it
MARGINAL_AUROC = 0.75  # "only a marginal ability": AUROC below it
TIMING_NOISE = 0.25  # without an interleaved timing, a latency ratio within 25% of 1 is no difference
RATIO_TOLERANCE = 0.25  # two size ratios "agree" within 25% of each other
PAPER_AUROCS = ("auroc_noise", "auroc_flip", "auroc_reduced")  # metrics.PAPER_OOD_SETS
VERDICTS = ("reproduced", "not reproduced", "not comparable")


# ---- the shared rule ---------------------------------------------------------------------------
def _get(row, key: str) -> float:
    try:
        value = row.get(key, float("nan")) if hasattr(row, "get") else row[key]
    except (KeyError, IndexError):
        return float("nan")
    return float("nan") if value is None or pd.isna(value) else float(value)


def spread(*stds: float) -> float:
    """``SPREAD_MULTIPLE * sqrt(sum std^2)``; an unmeasured (NaN) std counts as 0."""
    return SPREAD_MULTIPLE * math.sqrt(sum(0.0 if (s is None or math.isnan(s)) else float(s) ** 2 for s in stds))


def generates(row) -> bool:
    """IS at least :data:`IS_FLOOR` and a finite FID: the model draws something other than noise."""
    is_, fid = _get(row, "IS"), _get(row, "FID")
    return not math.isnan(is_) and is_ >= IS_FLOOR and not math.isnan(fid)


def quality_failures(row, ref, aurocs=PAPER_AUROCS, check_ood: bool = True) -> list[str]:
    """Why ``row`` does not keep ``ref``'s quality under the module's rule (empty: it keeps it)."""
    fails = []
    if not generates(row):
        fails.append(f"does not generate (IS {_get(row, 'IS'):.2f} < floor {IS_FLOOR:g})"
                     if not math.isnan(_get(row, "IS")) else "no samples scored")
    else:
        s_is = spread(_get(row, "IS_std"), _get(ref, "IS_std"))
        s_fid = spread(_get(row, "FID_std"), _get(ref, "FID_std"))
        if _get(row, "IS") < _get(ref, "IS") - s_is:
            fails.append(f"IS {_get(row, 'IS'):.2f} < {_get(ref, 'IS'):.2f} - spread {s_is:.2f}")
        if _get(row, "FID") > _get(ref, "FID") + s_fid:
            fails.append(f"FID {_get(row, 'FID'):.1f} > {_get(ref, 'FID'):.1f} + spread {s_fid:.1f}")
    if check_ood:
        for col in aurocs:
            a, b = _get(row, col), _get(ref, col)
            if math.isnan(a) or math.isnan(b):
                fails.append(f"{col} missing")
            elif a < b - AUROC_TOLERANCE:
                fails.append(f"{col} {a:.3f} < {b:.3f} - {AUROC_TOLERANCE}")
    return fails


def keeps_quality(row, ref, check_ood: bool = True) -> bool:
    """Generates, IS and FID within the combined spread of ``ref``'s, OOD AUROCs within tolerance."""
    return not quality_failures(row, ref, check_ood=check_ood)


def compare_quality(a, b) -> str:
    """``better``, ``worse`` or ``no difference`` (a against b, by FID beyond the combined spread),
    ``neither generates``, or ``better``/``worse`` when only one of them generates."""
    ga, gb = generates(a), generates(b)
    if not ga and not gb:
        return "neither generates"
    if ga != gb:
        return "better" if ga else "worse"
    s = spread(_get(a, "FID_std"), _get(b, "FID_std"))
    d = _get(a, "FID") - _get(b, "FID")
    return "better" if d < -s else "worse" if d > s else "no difference"


def ood_at_least(row, ref, aurocs=PAPER_AUROCS) -> bool:
    """Every paper-transform AUROC of ``row`` at least ``ref``'s minus :data:`AUROC_TOLERANCE`."""
    return all(_get(row, c) >= _get(ref, c) - AUROC_TOLERANCE for c in aurocs)


def ratio_verdict(ratio: float, lo: float | None = None, hi: float | None = None) -> str:
    """'faster' / 'slower' / 'no difference' for a time ratio (reference / model): given its spread
    (``lo``..``hi``) the ratio differs from 1 only when the spread excludes 1; without one, only
    when it is more than :data:`TIMING_NOISE` away from 1."""
    if math.isnan(ratio):
        return "not measured"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        return "faster" if lo > 1 else "slower" if hi < 1 else "no difference"
    return "faster" if ratio > 1 + TIMING_NOISE else "slower" if ratio < 1 / (1 + TIMING_NOISE) else "no difference"


# ---- reading the committed results --------------------------------------------------------------
def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _score(r) -> str:
    s_is, s_fid = _get(r, "IS_std"), _get(r, "FID_std")
    is_ = _fmt(_get(r, "IS")) + ("" if math.isnan(s_is) else f" ± {s_is:.2f}")
    fid = _fmt(_get(r, "FID"), 0) + ("" if math.isnan(s_fid) else f" ± {s_fid:.0f}")
    return f"IS {is_}, FID {fid}"


def _aurocs(r) -> str:
    return ", ".join(f"{c.removeprefix('auroc_')} {_fmt(_get(r, c), 3)}" for c in PAPER_AUROCS)


def _ood_cell(ood: pd.DataFrame | None, model: str, ood_set: str) -> tuple[list[float], list[float]]:
    """Per digit 4, 5, 9: (gaps, AUROCs) of ``model`` on ``ood_set`` from an OOD table."""
    if ood is None:
        return [float("nan")] * 3, [float("nan")] * 3
    d = ood[(ood.model == model) & (ood.ood_set == ood_set)].assign(digits=lambda t: t.digits.astype(str))
    d = d.set_index("digits")
    gaps = [float(d.gap.get(str(k), float("nan"))) for k in paper.TABLE2_DIGITS]
    aucs = [float(d.auroc.get(str(k), float("nan"))) for k in paper.TABLE2_DIGITS]
    return gaps, aucs


def _row(claim: str, section: str, paper_says: str, ours: str, verdict: str, why: str) -> dict:
    assert verdict in VERDICTS, verdict
    return {"claim": claim, "section": section, "paper": paper_says, "this project": ours, "verdict": verdict, "why": why}


def _resnet18_params() -> int:
    from .models import count_parameters, resnet18_energy

    import torch

    with torch.device("meta"):
        return count_parameters(resnet18_energy())


# ---- the table ----------------------------------------------------------------------------------
def verdict_table(folder: str | Path, profile=None) -> pd.DataFrame:
    """One row per claim of the paper (:mod:`ebmhelpers.paper`), this project's number from the
    result CSVs in ``folder`` (``results/<profile>/``) and a verdict generated from them by the
    rule of this module. Claims whose tables are missing are left out. Given the run's
    :class:`~ebmhelpers.profiles.Profile`, the table starts with the protocol: where the run keeps
    the paper's proportions (``reproduced``) and where a budget scaled them (``not comparable``)."""
    folder = Path(folder)
    base_t, base_ood = _read(folder, "baseline"), _read(folder, "baseline_ood")
    quant, quant_ood = _read(folder, "quantization"), _read(folder, "quantization_ood")
    pruning, students = _read(folder, "pruning"), _read(folder, "distillation")
    refs, qspeed = _read(folder, "baseline_references"), _read(folder, "quantization_speed")
    if base_t is None:
        raise FileNotFoundError(f"no {folder / 'baseline.csv'}: run notebooks/02_evaluation.ipynb for this profile")
    base = base_t.iloc[0]
    rows: list[dict] = []
    if profile is not None:
        rows += _protocol_rows(profile, pruning, students)
    rows += _baseline_rows(base, refs)
    if quant is not None:
        rows += _table1_rows(base, quant, qspeed)
        rows += _table2_rows(base_ood, quant_ood)
    if pruning is not None:
        rows += _pruning_rows(base, pruning)
    if students is not None:
        rows += _student_rows(base, students, quant, pruning)
    return pd.DataFrame(rows, columns=["claim", "section", "paper", "this project", "verdict", "why"])


def _protocol_rows(profile, pruning, students) -> list[dict]:
    """The paper's protocol against this run's: pruning ratios, norm and fine-tuning length, and
    the students' loss, epochs and the one at 1/145 (``reproduced``: the paper's proportion is kept)."""
    from .loop import iters_per_epoch

    rows = []
    p = profile
    if pruning is not None:
        pr = _one_shot(pruning)
        ratios = sorted(pr.ratio.round(2).unique())
        kept = set(paper.PRUNE_RATIOS) <= set(ratios)
        rows.append(_row("protocol: pruning ratios", paper.PRUNE_RATIOS_SECTION, "10% to 90% in steps of 10%",
                         ", ".join(f"{r:.0%}" for r in ratios), "reproduced" if kept else "not comparable",
                         "all nine ratios" if kept else "a subset, to fit the profile's budget: trends between the "
                         "ratios run are not measured"))
        structured = pr[pr.strategy.astype(str).str.startswith("structured")].model.astype(str)
        l2 = structured.str.startswith("L2").any()
        rows.append(_row("protocol: the l1 norm for unstructured and structured pruning", paper.PRUNE_NORM_SECTION,
                         "l1 norm", "structured: " + ("L2 norm" if l2 else "l1 norm"),
                         "not reproduced" if l2 else "reproduced",
                         "the results were saved before the structured strategies switched to l1: run notebook 04 "
                         "again" if l2 else "torch.nn.utils.prune with n=1"))
    n_train = (p.train_subset or 60_000) - p.val_size
    per_epoch = iters_per_epoch(n_train, p.batch_size, p.max_iters_per_epoch)
    ft = p.finetune_epochs * (p.finetune_iters or per_epoch)
    frac = ft / (p.epochs * per_epoch)
    close = abs(frac / paper.FINETUNE_FRACTION - 1) <= RATIO_TOLERANCE
    rows.append(_row("protocol: fine-tuning length, a fraction of the baseline's training", paper.FINETUNE_EPOCHS.section,
                     f"7 of 60 epochs ({paper.FINETUNE_FRACTION:.1%})",
                     f"{ft:,} of {p.epochs * per_epoch:,} iterations ({frac:.1%})", "reproduced" if close else "not comparable",
                     "the paper's proportion" if close else
                     f"{frac / paper.FINETUNE_FRACTION:.2g}x the paper's proportion, to fit the profile's budget"))
    s_frac = p.student_epochs() / p.epochs
    rows.append(_row("protocol: students train half the baseline's epochs", paper.DISTILL_EPOCHS.section,
                     "30 of 60 epochs", f"{p.student_epochs()} of {p.epochs} epochs",
                     "reproduced" if abs(s_frac - paper.DISTILL_EPOCH_FRACTION) <= 0.5 / max(p.epochs, 1) + 1e-9
                     else "not comparable", f"{s_frac:.0%} of the baseline's epochs"))
    if students is not None:
        eq6 = students[students.variant == "eq6"] if "variant" in students else students.iloc[:0]
        rows.append(_row("protocol: distillation loss, eq. 6 (plain MSE of energies)", paper.DISTILL_LOSS_SECTION,
                         "MSE of energies", f"{len(eq6)} of {len(students)} student runs with eq. 6",
                         "reproduced" if len(eq6) else "not reproduced",
                         "the other runs are this project's extensions (balanced loss, real-only inputs, gradient "
                         "matching)" if len(eq6) else "the results were saved before eq. 6 became the reproduction's "
                         "loss (balanced loss only): run notebook 05 again"))
    return rows


def _baseline_rows(base, refs) -> list[dict]:
    noise = refs[refs.samples == "uniform noise"].iloc[0] if refs is not None and (refs.samples == "uniform noise").any() else None
    noise_txt = f" (uniform noise scores IS {_get(noise, 'IS'):.2f}, FID {_get(noise, 'FID'):.0f} here)" if noise is not None else ""
    paper_generates = paper.BASELINE_IS.value >= IS_FLOOR
    rows = [_row(
        "baseline FID", paper.BASELINE_FID.section, "5,275", _score(base), "not comparable",
        "FID's scale depends on the feature network (the paper's classifier is not described; here this project's "
        "MNIST classifier's features) and the number of samples" + noise_txt)]
    ours_gen = generates(base)
    rows.append(_row(
        "baseline IS", paper.BASELINE_IS.section, f"{paper.BASELINE_IS.value:.2f}", _score(base),
        "reproduced" if ours_gen == paper_generates and abs(_get(base, "IS") - paper.BASELINE_IS.value)
        <= max(spread(_get(base, "IS_std")), 0.1) else "not reproduced",
        f"IS lies in [1, 10] for 10 classes; the paper's {paper.BASELINE_IS.value} is "
        f"{'below' if not paper_generates else 'above'} the floor of {IS_FLOOR:g} where samples are noise to the "
        f"classifier{noise_txt}, this baseline's {_get(base, 'IS'):.2f} is {'above' if ours_gen else 'below'} it"))
    return rows


def _table1_rows(base, quant, qspeed) -> list[dict]:
    rows = []
    q = quant.set_index("model")
    if "int8 static" not in q.index:
        return rows
    int8 = q.loc["int8 static"]
    (p_mb, p_s), (q_mb, q_s) = paper.TABLE1["Baseline"], paper.TABLE1["Static Quantized"]
    r18 = _resnet18_params()
    weights_mb = r18 * 4 / 1e6
    student_kb = paper.STUDENT_PARAMS.value * 4 / 1e3
    ours = _get(base, "size_mb") / _get(int8, "size_mb")
    rows.append(_row(
        "Table 1: compression ratio of 11.9x", paper.TABLE1_SECTION, f"{p_mb} MB / {q_mb} MB = {p_mb / q_mb:.1f}x",
        f"{_get(base, 'size_mb'):.3f} MB / {_get(int8, 'size_mb'):.3f} MB = {ours:.2f}x (fp32 weights / int8 weights)",
        "not comparable",
        f"134.1 MB is {p_mb / weights_mb:.2f}x the {weights_mb:.1f} MB of ResNet18's fp32 weights ({r18:,} parameters): "
        f"a checkpoint with Adam's two moment buffers, compared against int8 weights. The paper's own §5 student "
        f"shows the same pattern: 77,004 parameters are {student_kb:.0f} KB of fp32 weights, and it reports 943 KB "
        f"({paper.STUDENT_SIZE_KB.value / student_kb:.2f}x)"))
    like = (p_mb / 3) / q_mb
    agree = abs(ours / like - 1) <= RATIO_TOLERANCE
    rows.append(_row(
        "Table 1 read as weights against weights", paper.TABLE1_SECTION,
        f"(134.1 / 3) MB / 11.3 MB = {like:.2f}x", f"{ours:.2f}x",
        "reproduced" if agree else "not reproduced",
        f"int8 stores 1 byte per weight against fp32's 4, plus scales and zero points: the ratios agree within "
        f"{RATIO_TOLERANCE:.0%} {'(they do)' if agree else '(they do not)'}"))
    ratio, lo, hi, how = float("nan"), None, None, "separate timings in the score tables (no interleaved spread)"
    if qspeed is not None and {"model", "speedup_cpu", "speedup_lo", "speedup_hi"} <= set(qspeed.columns) and (qspeed.model == "int8 static").any():
        s = qspeed[qspeed.model == "int8 static"].iloc[0]  # notebook 03's Table 1 (quantization.cost_table)
        ratio, lo, hi = _get(s, "speedup_cpu"), _get(s, "speedup_lo"), _get(s, "speedup_hi")
        how = f"interleaved timing, spread {lo:.2f}-{hi:.2f}x"
    else:
        ratio = _get(base, "latency_ms_cpu") / _get(int8, "latency_ms_cpu")
    v = ratio_verdict(ratio, lo, hi)
    rows.append(_row(
        "Table 1: 50% faster inference (int8)", paper.TABLE1_SECTION, f"{p_s} s / {q_s} s = {p_s / q_s:.2f}x",
        f"{ratio:.2f}x ({how})", "not comparable" if v == "not measured" else
        "reproduced" if v == "faster" else "not reproduced",
        f"{v}; " + ("without an interleaved timing a ratio within "
                    f"{TIMING_NOISE:.0%} of 1 counts as none; " if lo is None else "")
        + "the int8 kernels' advantage depends on the CPU's vector units, the batch and the network "
          f"(here {base.get('hardware', 'this CPU')}, batch {_get(base, 'latency_batch'):.0f})"))
    return rows


def _table2_rows(base_ood, quant_ood) -> list[dict]:
    if base_ood is None or quant_ood is None:
        return []
    rows = []
    stats = {}
    for model, ours_model, ood in (("Baseline", "baseline", base_ood), ("Static Quantization", "int8 static", quant_ood)):
        for transform in paper.TABLE2_TRANSFORMS:
            ood_set = paper.TABLE2_OOD_SET[transform]
            gaps, aucs = _ood_cell(ood, ours_model, ood_set)
            stats[model, transform] = (gaps, aucs)
            pv = [paper.table2_value(model, transform, d) for d in paper.TABLE2_DIGITS]
            same_sign = all((p < 0) == (g < 0) for p, g in zip(pv, gaps) if p != 0)
            rows.append(_row(
                f"Table 2: {model}, {transform} (digits 4 / 5 / 9)", paper.TABLE2_SECTION,
                " / ".join(f"{v:.2f}" for v in pv),
                "gap " + " / ".join(_fmt(g) for g in gaps) + "; AUROC " + " / ".join(_fmt(a) for a in aucs),
                "not comparable",
                "the paper does not define its OOD score; here the gap mean(-E(T(x))) - mean(-E(x)) on this model's "
                f"energy scale (negative: the transformed digits get higher energy); signs "
                f"{'agree' if same_sign else 'differ'}. The AUROC says how well the energies separate the two sets"))
    # §4.3: quantized models are less adept at noise detection
    (bg, ba), (qg, qa) = stats["Baseline", "noise"], stats["Static Quantization", "noise"]
    b_gap, q_gap = sum(bg) / 3, sum(qg) / 3
    less = (min(qa) < min(ba) - AUROC_TOLERANCE) or abs(q_gap) < abs(b_gap) / 2
    rows.append(_row(
        "int8 makes the model less adept at noise detection", paper.CLAIMS["table2_noise"][0],
        f"noise gap {paper.table2_range('Baseline', 'noise')[0]:.2f}..{paper.table2_range('Baseline', 'noise')[1]:.2f} "
        "(baseline) vs -0.02 (int8)",
        f"gap {b_gap:.3f} vs {q_gap:.3f}; AUROC {min(ba):.3f} vs {min(qa):.3f} (worst digit)",
        "reproduced" if less else "not reproduced",
        f"'less adept': int8's noise gap under half the baseline's, or its AUROC lower by more than {AUROC_TOLERANCE}"))
    # §4.3: both struggle with rotated digits, particularly 5 and 9
    worst = []
    for model in ("Baseline", "Static Quantization"):
        per_t = {t: min(stats[model, t][1]) for t in paper.TABLE2_TRANSFORMS}
        worst.append(min(per_t, key=per_t.get))
    rows.append(_row(
        "both models struggle with rotated digits", paper.CLAIMS["table2_rotation"][0], "rotation scores -0.01..0.00",
        "worst transform by AUROC: " + ", ".join(worst),
        "reproduced" if all(w == "rotation" for w in worst) else "not reproduced",
        "'struggle': the upside-down digits are the transform each model separates worst (lowest AUROC)"))
    _, ba = stats["Baseline", "rotation"]
    order = sorted(zip(ba, paper.TABLE2_DIGITS))
    worst_two = {d for _, d in order[:2]}
    rows.append(_row(
        "... particularly with 5 and 9", paper.CLAIMS["table2_rotation"][0], "5 and 9 (visual ambiguity when inverted)",
        "baseline AUROC on upside-down 4 / 5 / 9: " + " / ".join(_fmt(a, 3) for a in ba),
        "reproduced" if worst_two == {5, 9} else "not reproduced",
        f"the two digits with the lowest AUROC here: {sorted(worst_two)}"))
    (bg, ba), (qg, qa) = stats["Baseline", "reduction"], stats["Static Quantization", "reduction"]
    marginal = max(max(ba), max(qa)) < MARGINAL_AUROC
    rows.append(_row(
        "size reductions: nearly zero scores, only a marginal ability to recognize them",
        paper.CLAIMS["table2_reduction"][0], "reduction scores -0.05..-0.02",
        f"gap {sum(bg) / 3:.3f} (baseline), {sum(qg) / 3:.3f} (int8); AUROC {min(ba):.3f}-{max(ba):.3f}, "
        f"{min(qa):.3f}-{max(qa):.3f}",
        "reproduced" if marginal else "not reproduced",
        "a small gap is a small difference of *mean* energies on this model's scale; it says nothing about how well "
        f"the two sets separate: 'marginal' would need AUROC < {MARGINAL_AUROC}, and here the reduced digits are "
        f"{'not ' if marginal else ''}separated almost perfectly"))
    return rows


def _one_shot(pruning: pd.DataFrame) -> pd.DataFrame:
    return pruning[pruning.method == "one-shot"] if "method" in pruning.columns else pruning


def _pruning_rows(base, pruning: pd.DataFrame) -> list[dict]:
    rows = []
    p = _one_shot(pruning)
    pre = p[~p.finetuned.astype(bool)]
    by = {(r.strategy, round(float(r.ratio), 2), bool(r.finetuned)): r for r in p.itertuples()}
    ratios = sorted(pre.ratio.round(2).unique())
    pct = ", ".join(f"{r:.0%}" for r in ratios)

    def r_(strategy, ratio, ft=False):
        return by.get((strategy, round(ratio, 2), ft))

    def s(r):
        return pd.Series(r._asdict()) if r is not None else None

    # increased global ratio significantly affects all three scores
    hi = max(ratios)
    hit = []
    for strat in ("unstructured_global", "structured_global"):
        r = s(r_(strat, hi))
        if r is not None:
            hit.append((strat, compare_quality(r, base) in ("worse", "neither generates")
                        and not ood_at_least(r, base)))
    rows.append(_row(
        "increased global pruning significantly affects all three scores", paper.CLAIMS["fig2_global"][0],
        paper.CLAIMS["fig2_global"][1],
        "; ".join(f"{k} {hi:.0%}: {_score(s(r_(k, hi)))}, worst AUROC {_get(s(r_(k, hi)), 'auroc_worst'):.3f}"
                  for k, _ in hit),
        "reproduced" if hit and all(v for _, v in hit) else "not reproduced",
        f"at the highest ratio ({hi:.0%}) every global strategy is worse than the baseline on FID/IS (beyond the "
        f"spread, or no longer generating) and on at least one OOD transform; ratios here: {pct}"))

    def tally(a_strat, b_strat, key):
        wins = losses = ties = 0
        for ratio in ratios:
            a, b = s(r_(a_strat, ratio)), s(r_(b_strat, ratio))
            if a is None or b is None:
                continue
            if key == "quality":
                c = compare_quality(a, b)
                wins, losses, ties = wins + (c == "better"), losses + (c == "worse"), ties + (c not in ("better", "worse"))
            else:
                da, db = _get(a, "auroc_worst"), _get(b, "auroc_worst")
                wins, losses = wins + (da > db + AUROC_TOLERANCE), losses + (da < db - AUROC_TOLERANCE)
                ties += abs(da - db) <= AUROC_TOLERANCE
        return wins, losses, ties

    for claim, key, a_s, b_s, label in (
        ("fig2_fid", "quality", "unstructured_global", "structured_global", "unstructured better image quality than structured (global)"),
        ("fig2_ood", "ood", "unstructured_global", "structured_global", "unstructured generally better OOD than structured (global)"),
        ("fig2_conv", "quality", "unstructured_conv", "unstructured_global", "Conv2d-only slightly superior to global (unstructured)"),
        ("fig2_conv", "quality", "structured_conv", "structured_global", "Conv2d-only slightly superior to global (structured)"),
    ):  # fmt: skip
        w, l, t = tally(a_s, b_s, key)
        if w + l + t == 0:
            continue
        rows.append(_row(
            label, paper.CLAIMS[claim][0], paper.CLAIMS[claim][1],
            f"over {pct}: better at {w}, worse at {l}, no difference at {t}",
            "reproduced" if w > l else "not reproduced",
            ("by FID beyond the combined spread, among models that generate (IS >= "
             f"{IS_FLOOR:g}); two noise generators count as no difference") if key == "quality" else
            f"by the worst AUROC over the paper's transforms, a difference above {AUROC_TOLERANCE}"))

    # IS drops at 30% and 40%
    drops, checked = [], []
    for strat in pre.strategy.unique():
        g = pre[pre.strategy == strat].sort_values("ratio")
        for i in range(1, len(g) - 1):
            ratio = round(float(g.ratio.iloc[i]), 2)
            if ratio not in (0.3, 0.4):
                continue
            checked.append(f"{strat} {ratio:.0%}")
            prev, cur, nxt = g.iloc[i - 1], g.iloc[i], g.iloc[i + 1]
            dip = lambda a, b: _get(a, "IS") < _get(b, "IS") - spread(_get(a, "IS_std"), _get(b, "IS_std"))  # noqa: E731
            if dip(cur, prev) and dip(cur, nxt):
                drops.append(f"{strat} {ratio:.0%}")
    rows.append(_row(
        "IS volatile, notable drops at 30% and 40%", paper.CLAIMS["fig2_is"][0], paper.CLAIMS["fig2_is"][1],
        f"IS dips (below both neighbouring ratios by more than the spread) at: {', '.join(drops) or 'none'}",
        "not comparable" if not checked else "reproduced" if drops else "not reproduced",
        "needs 30% or 40% with a ratio on either side" + (f"; ratios here: {pct}" if not checked else "")))

    # fine-tuned 80-90% keep close-to-perfect OOD
    ft = p[p.finetuned.astype(bool) & (p.ratio >= 0.8 - 1e-9)]
    if len(ft):
        ok = [r for _, r in ft.iterrows() if ood_at_least(r, base)]
        better = [r for _, r in ft.iterrows()
                  if (o := s(r_(r.strategy, float(r.ratio)))) is not None and compare_quality(r, o) == "better"]
        rows.append(_row(
            "fine-tuned pruned models improve at 80-90%, keeping close-to-perfect OOD", paper.CLAIMS["fig2_finetuned"][0],
            paper.CLAIMS["fig2_finetuned"][1],
            "; ".join(f"{r.model}: {_score(r)}, {_aurocs(r)}" for _, r in ft.iterrows()),
            "reproduced" if len(ok) == len(ft) and len(better) == len(ft) else "not reproduced",
            f"{len(better)} of {len(ft)} fine-tuned models better than before fine-tuning (FID beyond the spread, "
            f"among generating models); {len(ok)} of {len(ft)} keep every paper-transform AUROC within "
            f"{AUROC_TOLERANCE} of the baseline's"))
    else:
        rows.append(_row(
            "fine-tuned pruned models improve at 80-90%, keeping close-to-perfect OOD", paper.CLAIMS["fig2_finetuned"][0],
            paper.CLAIMS["fig2_finetuned"][1], "no fine-tuned model at 80% or more", "not comparable",
            f"this profile's ratios: {pct}"))

    # Figure 4: unstructured Conv2d 60%, before and after fine-tuning
    pre60, post60 = s(r_("unstructured_conv", 0.6)), s(r_("unstructured_conv", 0.6, True))
    rows.append(_row(
        "Figure 4: the pre-training pruned model (unstructured Conv2d 60%) has clearer digits", paper.CLAIMS["fig4_pruned"][0],
        paper.CLAIMS["fig4_pruned"][1],
        "not in this run" if pre60 is None or post60 is None else f"before: {_score(pre60)}; after: {_score(post60)}",
        "not comparable",
        "a visual judgement: see the grids of notebook 06's Figure 4" + (
            " (this profile's prune_ratios lack 60%: notebook 04 adds it as an extra variant)" if pre60 is None or post60 is None
            else f"; by the scores, fine-tuned against one-shot: {compare_quality(post60, pre60)}")))
    return rows


def _student_rows(base, students: pd.DataFrame, quant, pruning) -> list[dict]:
    rows = []
    st = students.copy()
    keeps = [r for _, r in st.iterrows() if keeps_quality(r, base)]
    rows.append(_row(
        "medium-sized students preserve performance across all metrics", paper.CLAIMS["fig3_medium"][0],
        paper.CLAIMS["fig3_medium"][1],
        f"{len(keeps)} of {len(st)} students keep the baseline's quality"
        + (": " + ", ".join(r.model for r in keeps) if keeps else ""),
        "reproduced" if keeps else "not reproduced",
        f"'keeps quality': generates (IS >= {IS_FLOOR:g}), IS and FID within the combined seed spread, every paper "
        f"transform's AUROC within {AUROC_TOLERANCE} (best student here: "
        + (lambda b: f"{b.model}, {_score(b)}")(st.loc[st.IS.fillna(0).idxmax()]) + ")"))
    if pruning is not None:
        small = st[st.params == st.params.min()]
        pr = _one_shot(pruning)
        pr = pr[pr.apply(generates, axis=1)]
        res = [compare_quality(srow, prow) for _, srow in small.iterrows() for _, prow in pr.iterrows()]
        ok = sum(c in ("better", "no difference") for c in res)
        rows.append(_row(
            "even the smallest students are competitive with most pruned models", paper.CLAIMS["fig3_smallest"][0],
            paper.CLAIMS["fig3_smallest"][1],
            f"{small.model.iloc[0]} ({int(small.params.iloc[0]):,} parameters): no worse than {ok} of {len(res)} "
            "(student variant x generating pruned model) pairs",
            "reproduced" if res and ok > len(res) / 2 else "not reproduced",
            "by FID beyond the combined spread among models that generate; a student that does not generate "
            "loses to every pruned model that does"))
    if quant is not None and (quant.model == "int8 static").any():
        int8 = quant[quant.model == "int8 static"].iloc[0]
        ok = [r.model for _, r in st.iterrows() if ood_at_least(r, int8)]
        rows.append(_row(
            "students comparable or superior to the quantized model at OOD", paper.CLAIMS["fig3_vs_quantized"][0],
            paper.CLAIMS["fig3_vs_quantized"][1], f"{len(ok)} of {len(st)} students (int8 static: {_aurocs(int8)})",
            "reproduced" if len(ok) == len(st) else "not reproduced",
            f"every paper-transform AUROC at least int8's minus {AUROC_TOLERANCE}"
            + (f"; not: {', '.join(r for r in st.model if r not in ok)}" if len(ok) < len(st) else "")))
    # the headline: a 1/145 student matches image quality and anomaly detection
    target = _get(base, "params") / paper.STUDENT_RATIO.value
    st["_dist"] = (st.params.astype(float) / target).map(lambda v: abs(math.log(v)))
    nearest = st.loc[st._dist.idxmin()]
    ratio = _get(base, "params") / _get(nearest, "params")
    at_ratio = nearest._dist <= math.log(2)
    cand = st[st.params == nearest.params]
    best = cand.loc[cand.FID.fillna(math.inf).idxmin()] if cand.FID.notna().any() else cand.iloc[0]
    kept = keeps_quality(best, base)
    rows.append(_row(
        "a 1/145th-sized student matches the baseline's image quality and anomaly detection",
        paper.CLAIMS["abstract_headline"][0] + ", " + paper.CLAIMS["conclusion_student"][0],
        paper.CLAIMS["abstract_headline"][1],
        f"{best.model}: {ratio:.0f}x fewer parameters than the baseline ({int(_get(best, 'params')):,} of "
        f"{int(_get(base, 'params')):,}); {_score(best)} vs {_score(base)}; {_aurocs(best)}",
        ("reproduced" if kept else "not reproduced") if at_ratio else "not comparable",
        ("; ".join(quality_failures(best, base)) or "keeps quality by the rule") if at_ratio else
        f"no student within 2x of 1/145 of the baseline's parameters ({target:,.0f}) in this run"))
    return rows


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
