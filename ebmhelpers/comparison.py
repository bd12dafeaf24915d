"""The final comparison: one table of every model from the saved results, its Pareto front,
the paper's numbers beside this project's, and the sampling-budget study (fewer SGLD steps
as the cheapest compression of all)."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import torch
from torch import nn
from .progress import tqdm

from . import paper, results, verdicts
from .distillation import PAPER_SIZED_STUDENT, PAPER_STUDENT_PARAMS
from .metrics import PAPER_OOD_SETS, Evaluator, median_time_s
from .models import count_parameters, resnet18_energy
from .profiles import Profile, SGLDConfig
from .runtime import Context, model_device
from .sampling import sgld

# ---- when a variant "keeps quality" -------------------------------------------------------
# One rule for the whole series, verdicts.quality_failures: the variant generates (IS at least
# verdicts.IS_FLOOR), its IS and FID lie within the combined seed spread of the baseline's,
# sqrt(std_variant^2 + std_base^2) (0 when only one seed was scored, as in smoke), and on each of
# the paper's three transforms separately its AUROC is at most AUROC_TOLERANCE below the
# baseline's (AUROCs are never averaged over transforms). FID_TOLERANCE is only the sampling
# budget's allowance (fewer SGLD steps of the same model), not a compressed model's.
FID_TOLERANCE = 1.10
AUROC_TOLERANCE = verdicts.AUROC_TOLERANCE
IS_FLOOR = verdicts.IS_FLOOR

PAPER_AUROCS = [f"auroc_{s}" for s in PAPER_OOD_SETS]
EXTRA_AUROCS = ["auroc_fashion", "auroc_uniform"]
COLUMNS = [
    "model", "family", "params", "size_mb", "latency_ms_cpu", "latency_ms_cuda", "latency_batch", "sgld_img_steps_per_s",
    "IS", "IS_std", "FID", "FID_std", "n_seeds", *PAPER_AUROCS, "auroc_worst", "worst_set", *EXTRA_AUROCS,
    "inverted_sets", "rollbacks", "diverged", "generative", "hardware",
]  # fmt: skip


def _spread(*stds: float) -> float:
    """The standard deviations combined in quadrature; an unmeasured (NaN) spread counts as 0."""
    return math.sqrt(sum(0.0 if (s is None or math.isnan(s)) else float(s) ** 2 for s in stds))


def _get(row: pd.Series, key: str) -> float:
    value = row.get(key, float("nan"))
    return float("nan") if value is None or pd.isna(value) else float(value)


def fid_within(fid: float, fid_std: float, ref_fid: float, ref_std: float, tolerance: float = FID_TOLERANCE) -> bool:
    """``fid <= tolerance * ref_fid + sqrt(fid_std^2 + ref_std^2)`` (NaN FID: False)."""
    if math.isnan(fid) or math.isnan(ref_fid):
        return False
    return fid <= tolerance * ref_fid + _spread(fid_std, ref_std)


def quality_failures(row: pd.Series, base: pd.Series) -> list[str]:
    """Why a variant does not keep the baseline's quality (empty list: it keeps it), by the
    series' one rule, :func:`verdicts.quality_failures` (top of this module)."""
    return verdicts.quality_failures(row, base, PAPER_AUROCS)


def keeps_quality(row: pd.Series, base: pd.Series) -> bool:
    """Whether a variant keeps the baseline's quality: it generates (IS >= ``IS_FLOOR``), IS and
    FID within the combined seed spread, every paper-transform AUROC within ``AUROC_TOLERANCE``."""
    return not quality_failures(row, base)


def inverted_sets(row: pd.Series) -> str:
    """The OOD sets on which a model is an inverted detector (AUROC < 0.5: it gives the OOD
    images *lower* energy than real digits), comma-separated; empty when there is none."""
    cols = [c for c in (*PAPER_AUROCS, *EXTRA_AUROCS) if c in row.index]
    return ", ".join(c.removeprefix("auroc_") for c in cols if _get(row, c) < 0.5)


def best_pruning_rows(pruning: pd.DataFrame, base: pd.Series) -> pd.DataFrame:
    """Per (strategy, fine-tuned): the largest ratio that keeps quality, else the lowest FID among
    the ratios that generate (FID is not compared between noise generators), else the highest IS.
    One-shot pruning only (the lottery-ticket rows are a separate experiment)."""
    if "method" in pruning.columns:
        pruning = pruning[pruning.method == "one-shot"]
    picked = []
    for _, group in pruning.groupby(["strategy", "finetuned"], sort=False):
        ok = group[group.apply(keeps_quality, axis=1, base=base)]
        gen = group[group.apply(verdicts.generates, axis=1)]
        picked.append(ok.loc[ok.ratio.idxmax()] if len(ok) else gen.loc[gen.FID.idxmin()] if len(gen)
                      else group.loc[group.IS.fillna(0).idxmax()] if "IS" in group else group.iloc[0])
    return pd.DataFrame(picked)


def comparison_table(ctx: Context) -> pd.DataFrame:
    """Every model of the series in one table, read from ``results/<profile>/`` (no training):
    cost, IS/FID with their spread over seeds, AUROC per paper transform and the worst of them,
    the sets where the detector is inverted, and the divergence guard's record for pruning rows.

    Raises :class:`results.MissingResultsError` naming the notebook to run when a table is
    missing; a table saved before a column existed gets NaN there and a printed note.
    """
    base = results.load_table(ctx, "baseline").assign(family="baseline")
    quant = results.load_table(ctx, "quantization").assign(family="quantization")
    pruning = results.load_table(ctx, "pruning")
    students = results.load_table(ctx, "distillation").assign(family="distillation")
    for name, df in (("baseline", base), ("quantization", quant), ("pruning", pruning), ("distillation", students)):
        missing = [c for c in (*PAPER_AUROCS, "auroc_worst", "FID_std") if c not in df.columns]
        if missing:
            print(f"note: results/{ctx.profile.name}/{name}.csv has no {', '.join(missing)} (saved before they "
                  f"existed): run notebooks/{results.PRODUCERS[name]}.ipynb again; shown as NaN here")
    pruned = best_pruning_rows(pruning, base.iloc[0]).assign(family="pruning")
    table = pd.concat([base, quant, pruned, students], ignore_index=True)
    for col in COLUMNS:
        if col not in table.columns:
            table[col] = float("nan")
    table["inverted_sets"] = table.apply(inverted_sets, axis=1)
    table["keeps_quality"] = table.apply(keeps_quality, axis=1, base=table.iloc[0])
    table.loc[0, "keeps_quality"] = True  # the baseline is the reference
    table["compression_x"] = base.size_mb.iloc[0] / table.size_mb
    return table[COLUMNS + ["keeps_quality", "compression_x"]]


# ---- the paper side by side ---------------------------------------------------------------
# The paper's numbers, from ebmhelpers.paper (transcribed from its text, with their sections).
PAPER_BASELINE_FID = paper.BASELINE_FID.value  # §4.2, printed "5,275"
PAPER_BASELINE_IS = paper.BASELINE_IS.value  # §4.2
PAPER_TABLE1 = {"fp32": {"size_mb": paper.TABLE1["Baseline"][0], "latency_s": paper.TABLE1["Baseline"][1]},
                "int8": {"size_mb": paper.TABLE1["Static Quantized"][0], "latency_s": paper.TABLE1["Static Quantized"][1]}}
# §4.3, Table 2: the baseline's nine OOD scores, keyed by (this project's OOD set, digit). The paper
# does not define its score; this project's is the mean energy gap over many digits, so the values
# compare by sign and order, not size (verdicts.verdict_table judges the paper's sentences about them).
PAPER_TABLE2_NOTE = ("§4.3, Table 2; the paper does not define its OOD score: this project's value is the energy gap "
                     "mean(-E(T(x))) - mean(-E(x)) on this model's scale (negative = detected), compare signs, not sizes")
PAPER_TABLE2: dict[tuple[str, int], float] = {
    (paper.TABLE2_OOD_SET[t], d): v for (t, d), v in paper.TABLE2["Baseline"].items()
}
FP32_BYTES_PER_PARAM = 4


def paper_table(table: pd.DataFrame, baseline_ood: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's reported numbers next to this project's (``table`` from
    :func:`comparison_table`; ``baseline_ood`` is notebook 02's OOD table, for Table 2), with a
    column saying what differs and why. Ratios are computed here, not copied."""
    by_model = table.set_index("model")
    base = table[table.family == "baseline"].iloc[0]
    int8 = by_model.loc["int8 static"] if "int8 static" in by_model.index else pd.Series(dtype=float)
    lat = "latency_ms_cpu"  # Table 1 is a CPU comparison; static int8 runs on the CPU only
    resnet18_params = count_parameters(resnet18_energy())  # the paper's network, whatever this profile's baseline
    fp32_weights_mb = resnet18_params * FP32_BYTES_PER_PARAM / 1e6
    p_fp32, p_int8 = PAPER_TABLE1["fp32"], PAPER_TABLE1["int8"]
    ckpt_over_weights = p_fp32["size_mb"] / fp32_weights_mb
    paper_ratio = p_fp32["size_mb"] / p_int8["size_mb"]
    like_for_like = fp32_weights_mb / p_int8["size_mb"]
    student = table[table.model.astype(str).str.startswith(f"{PAPER_SIZED_STUDENT}/")]
    other = "" if _get(base, "params") == resnet18_params else (
        f"this profile's baseline is not ResNet18 ({_get(base, 'params'):,.0f} parameters), so its sizes and times "
        "are not the paper's network's; ")  # fmt: skip
    feature_note = ("FID's scale depends on the feature network and the number of samples: this project uses its "
                    "MNIST classifier's 128-d features; compare how models rank, not the values")  # fmt: skip
    rows = [
        ("baseline FID", PAPER_BASELINE_FID, base.FID, feature_note + f" (here {_get(base, 'n_seeds'):.0f} seed(s))"),
        ("baseline IS", PAPER_BASELINE_IS, base.IS,
         "IS ranges over [1, 10] with 10 classes and depends on the classifier; near 1, its predictions on the samples "
         "barely differ from their average (one class for all, or no confident class)"),
        ("Table 1: fp32 size (MB)", p_fp32["size_mb"], base.size_mb,
         other + f"134.1 MB is {ckpt_over_weights:.2f}x the {fp32_weights_mb:.1f} MB of fp32 ResNet18 weights, as a "
         "checkpoint with Adam's two moment buffers (weights + 2 copies) would be; here: the weights' state_dict only"),
        ("Table 1: int8 size (MB)", p_int8["size_mb"], _get(int8, "size_mb"), other + "both int8 weights (static quantization)"),
        ("Table 1: compression (x)", paper_ratio, base.size_mb / _get(int8, "size_mb"),
         f"the paper's {paper_ratio:.1f}x compares a checkpoint with optimizer state against int8 weights; "
         f"weights against weights it is {like_for_like:.2f}x, as here"),
        ("Table 1: fp32 latency (s)", p_fp32["latency_s"], _get(base, lat) / 1e3,
         other + f"another CPU (here {base.hardware}, batch {_get(base, 'latency_batch'):.0f}, median of repeated runs); "
         "NaN when the baseline was timed on a GPU (notebook 03's Table 1 times both on the CPU)"),
        ("Table 1: int8 latency (s)", p_int8["latency_s"], _get(int8, lat) / 1e3, "as above"),
        ("Table 1: int8 speed-up (x)", p_fp32["latency_s"] / p_int8["latency_s"], _get(base, lat) / _get(int8, lat),
         "the int8 kernels' advantage depends on the CPU's vector units and the batch"),
    ]  # fmt: skip
    ood = baseline_ood.set_index(["ood_set", "digits"]) if baseline_ood is not None else None
    for (transform, digit), value in PAPER_TABLE2.items():
        ours = float("nan")
        if ood is not None and (transform, str(digit)) in ood.index:
            ours = float(ood.loc[(transform, str(digit)), "gap"])
        why = PAPER_TABLE2_NOTE
        rows.append((f"Table 2: {transform}, digit {digit} (gap)", value, ours, why))
    rows.append(("student parameters", PAPER_STUDENT_PARAMS,
                 float(student.params.iloc[0]) if len(student) else float("nan"),
                 f"same count by construction (ResNet [1,1,1], widths 10/26/72: {resnet18_params / PAPER_STUDENT_PARAMS:.0f}x "
                 "fewer than ResNet18); the paper's layout for its 77,004 parameters may differ"))  # fmt: skip
    out = pd.DataFrame(rows, columns=["quantity", "paper", "this project", "what differs and why"])
    out["paper"] = pd.to_numeric(out["paper"], errors="coerce")
    out["this project"] = pd.to_numeric(out["this project"], errors="coerce")
    return out


# ---- the sampling budget ------------------------------------------------------------------
FIXED_STEP = "fixed step"
FIXED_TIME = "step ∝ 1/K (K·step fixed)"
BUDGET_RULES = (FIXED_STEP, FIXED_TIME)
TIMING_REPEATS = 3  # timed runs per (model, K); the median is reported
ABOVE_REF_FACTOR = 2  # when the profile's budget_steps stop at gen_steps, also study this many times more steps


def rescaled_step_size(base: SGLDConfig, steps: int, ref_steps: int) -> SGLDConfig:
    """SGLD settings for ``steps`` steps at the temperature and total "time" of ``base`` run for
    ``ref_steps`` steps: step size ``s * ref_steps / steps`` (so ``K * step`` stays constant) and
    noise ``sigma * sqrt(ref_steps / steps)`` (so ``T = noise^2 / (2 step)`` stays constant).

    The gradient clamp is in gradient units and stays as it is, so the largest drift per step,
    ``step * grad_clamp``, scales with the step size like the drift itself.
    """
    if steps < 1 or ref_steps < 1:
        raise ValueError(f"steps and ref_steps must be positive, got {steps}, {ref_steps}")
    return dataclasses.replace(base, steps=steps).scaled(ref_steps / steps)


def budget_steps(profile: Profile) -> tuple[int, ...]:
    """The K of the budget study: ``profile.budget_steps`` and ``gen_steps`` (the reference,
    where both rules use the generation sampler's step size), plus ``ABOVE_REF_FACTOR * gen_steps`` when
    no K of the profile lies above the reference, so both directions are studied."""
    ks = set(profile.budget_steps) | {profile.gen_steps}
    if max(ks) <= profile.gen_steps:
        ks.add(ABOVE_REF_FACTOR * profile.gen_steps)
    return tuple(sorted(ks))


def budget_configs(profile: Profile, steps: tuple[int, ...], ref_steps: int) -> list[tuple[int, str, SGLDConfig]]:
    """(K, rule, SGLD settings) of every point of the study. Both rules keep the temperature of
    the profile's sampler: ``fixed step`` runs K steps of the generation step size and noise (its
    total time ``K * step`` grows with K); the other rescales step and noise with
    :func:`rescaled_step_size` (same total time at every K). At ``K = ref_steps`` they coincide."""
    base = profile.gen_sgld_config(ref_steps)
    return [(k, rule, profile.gen_sgld_config(k) if rule == FIXED_STEP else rescaled_step_size(base, k, ref_steps))
            for k in steps for rule in BUDGET_RULES]  # fmt: skip


def sampling_budget(
    ctx: Context, evaluator: Evaluator, models: dict[str, nn.Module], steps: tuple[int, ...], ref_steps: int,
    repeats: int = TIMING_REPEATS,
) -> pd.DataFrame:
    """For each model and point of :func:`budget_configs`: IS and FID (mean and std over the
    evaluator's seeds, ``Evaluator.quality``) and the median time of one K-step SGLD chain on
    ``latency_batch`` digits (over ``repeats`` runs after a warm-up; the time depends on K, not on
    the rule, so it is measured once per model and K)."""
    p = ctx.profile
    configs = budget_configs(p, steps, ref_steps)
    rows = []
    for name, model in models.items():
        device = model_device(model)
        x = torch.rand(p.latency_batch, 1, 28, 28, device=device) * 2 - 1
        sgld(model, x, p.sgld_config(1))  # warm-up (allocator, kernels) so the first timing is not inflated
        seconds, quality = {}, {}
        for k, rule, cfg in tqdm(configs, desc=f"sampling budget: {name}"):
            if k not in seconds:
                seconds[k] = median_time_s(lambda cfg=cfg: sgld(model, x, cfg), device, repeats, warmup=0)
            if cfg not in quality:  # the two rules coincide at K = ref_steps: score once
                quality[cfg], _ = evaluator.quality(model, cfg, progress=False)
            rows.append({"model": name, "K": k, "ref_K": ref_steps, "rule": rule, "step_size": cfg.step_size,
                         "noise_std": cfg.noise_std, "temperature": cfg.temperature, "total_time": k * cfg.step_size,
                         "seconds": seconds[k], "timing_batch": p.latency_batch, **quality[cfg]})  # fmt: skip
    return pd.DataFrame(rows)


# ---- conclusions --------------------------------------------------------------------------
def _fid_text(r: pd.Series) -> str:
    fid, std = _get(r, "FID"), _get(r, "FID_std")
    if math.isnan(fid):
        return "no samples (no input gradient)"
    return f"FID {fid:.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")


def _budget_lines(budget: pd.DataFrame) -> list[str]:
    lines = []
    for (model, rule), g in budget.groupby(["model", "rule"], sort=False):
        g = g.sort_values("K")
        ref_k = int(g.ref_K.iloc[0]) if "ref_K" in g else int(g.K.max())
        ref = g[g.K == ref_k].iloc[0]
        below = g[(g.K < ref_k) & g.apply(lambda r: fid_within(r.FID, _get(r, "FID_std"), ref.FID, _get(ref, "FID_std")), axis=1)]
        if len(below):
            k = below.iloc[0]
            lines.append(f"Sampling budget, {model}, {rule}: K={int(k.K)} steps keep FID within {FID_TOLERANCE:.2f}x "
                         f"(+ spread) of K={ref_k}'s ({_fid_text(k)} vs {_fid_text(ref)}) in {k.seconds / ref.seconds:.0%} of the time.")  # fmt: skip
        else:
            lines.append(f"Sampling budget, {model}, {rule}: no K below {ref_k} keeps FID within {FID_TOLERANCE:.2f}x "
                         f"(+ spread) of K={ref_k}'s {_fid_text(ref)}.")  # fmt: skip
        for _, r in g[g.K > ref_k].iterrows():
            spread = _spread(_get(r, "FID_std"), _get(ref, "FID_std"))
            if spread == 0:  # one seed: a difference cannot be told from seed-to-seed noise
                verdict = ("lower than" if r.FID < ref.FID else "higher than") + " (one seed, no spread to judge by)"
            else:
                verdict = ("better than" if r.FID + spread < ref.FID else "worse than" if r.FID - spread > ref.FID
                           else "within the spread of")  # fmt: skip
            lines.append(f"  more steps: K={int(r.K)} ({r.seconds / ref.seconds:.1f}x the time) gives {_fid_text(r)}, "
                         f"{verdict} K={ref_k}'s {_fid_text(ref)}.")  # fmt: skip
    return lines


def conclusions(table: pd.DataFrame, budget: pd.DataFrame | None = None) -> list[str]:
    """Plain-language findings computed from the comparison table (and the budget study), so
    the written conclusion always matches the numbers of the profile that produced them."""
    base = table[table.family == "baseline"].iloc[0]
    one_seed = table.n_seeds.fillna(1).max() <= 1 if "n_seeds" in table else True
    lines = []
    for _, r in table[table.family != "baseline"].iterrows():
        fails = quality_failures(r, base)
        verdict = "keeps the baseline's quality" if not fails else "does not keep the baseline's quality (" + "; ".join(fails) + ")"
        worst = (f"worst AUROC {_get(r, 'auroc_worst'):.3f} ({r.worst_set}) vs {_get(base, 'auroc_worst'):.3f}"
                 if pd.notna(r.get("auroc_worst")) else "no per-transform AUROC")  # fmt: skip
        inv = f"; inverted detector on {r.inverted_sets}" if isinstance(r.get("inverted_sets"), str) and r.inverted_sets else ""
        guard = ""
        if pd.notna(r.get("rollbacks")) and r.family == "pruning":
            guard = f"; divergence guard: {int(r.rollbacks)} rollback(s){', gave up' if bool(r.diverged) else ''}"
        lines.append(f"{r.model} ({r.family}): {r.compression_x:.1f}x smaller on disk, {_fid_text(r)} vs "
                     f"{_fid_text(base)}, {worst}{inv}{guard}: {verdict}.")  # fmt: skip
    keepers = table[(table.family != "baseline") & table.apply(keeps_quality, axis=1, base=base)]
    if len(keepers):
        best = keepers.loc[keepers.size_mb.idxmin()]
        lines.append(f"Smallest model that keeps quality: {best.model}, {best.compression_x:.1f}x smaller than the baseline.")
    else:
        lines.append("No compressed model keeps the baseline's quality under this profile's tolerances.")
    inverted = table[table.inverted_sets.fillna("").astype(str) != ""] if "inverted_sets" in table else table.iloc[:0]
    if len(inverted):
        who = "; ".join(f"{r.model}: {r.inverted_sets}" for _, r in inverted.iterrows())
        lines.append(f"Inverted detectors (AUROC < 0.5: the OOD images get lower energy than real digits): {who}.")
    if one_seed:
        lines.append("IS/FID come from one seed of generation here: no spread was measured, so the FID rule has no allowance.")
    if budget is not None and len(budget):
        lines += _budget_lines(budget)
    return lines
