"""The final comparison: one table of every model from the saved results, its Pareto front,
and the sampling-budget study (fewer SGLD steps as the cheapest compression of all)."""

from __future__ import annotations

import math
import time

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import results
from .metrics import Evaluator, synchronize
from .profiles import SGLDConfig
from .runtime import Context
from .sampling import generate

# A compressed variant "keeps quality" when its FID is at most this factor of the baseline's and
# its mean OOD AUROC drops by at most this much; the best pruning ratio is the largest that does.
FID_TOLERANCE = 1.10
AUROC_TOLERANCE = 0.02

COLUMNS = [
    "model", "family", "params", "size_mb", "latency_ms_cpu", "latency_ms_cuda", "sgld_img_steps_per_s",
    "IS", "FID", "ood_auroc", "auroc_fashion", "auroc_uniform", "generative", "hardware",
]  # fmt: skip


def keeps_quality(row: pd.Series, base: pd.Series) -> bool:
    """Whether a variant stays within the tolerances of the baseline's FID and OOD AUROC."""
    fid_ok = not math.isnan(row["FID"]) and row["FID"] <= FID_TOLERANCE * base["FID"]
    return fid_ok and row["ood_auroc"] >= base["ood_auroc"] - AUROC_TOLERANCE


def best_pruning_rows(pruning: pd.DataFrame, base: pd.Series) -> pd.DataFrame:
    """Per (strategy, fine-tuned): the largest ratio that keeps quality, else the lowest FID.
    One-shot pruning only (the lottery-ticket rows are a separate experiment)."""
    if "method" in pruning.columns:
        pruning = pruning[pruning.method == "one-shot"]
    picked = []
    for _, group in pruning.groupby(["strategy", "finetuned"], sort=False):
        ok = group[group.apply(keeps_quality, axis=1, base=base)]
        picked.append(ok.loc[ok.ratio.idxmax()] if len(ok) else group.loc[group.FID.idxmin()])
    return pd.DataFrame(picked)


def comparison_table(ctx: Context) -> pd.DataFrame:
    """Every model of the series in one table, read from ``results/<profile>/`` (no training).

    Raises :class:`results.MissingResultsError` naming the notebook to run when a table is missing.
    """
    base = results.load_table(ctx, "baseline").assign(family="baseline")
    quant = results.load_table(ctx, "quantization").assign(family="quantization")
    pruning = results.load_table(ctx, "pruning")
    pruned = best_pruning_rows(pruning, base.iloc[0]).assign(family="pruning")
    students = results.load_table(ctx, "distillation").assign(family="distillation")
    table = pd.concat([base, quant, pruned, students], ignore_index=True)
    for col in COLUMNS:
        if col not in table.columns:
            table[col] = float("nan")
    table["compression_x"] = base.size_mb.iloc[0] / table.size_mb
    return table[COLUMNS + ["compression_x"]]


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


def rescaled_step_size(base: SGLDConfig, steps: int, ref_steps: int) -> SGLDConfig:
    """SGLD settings for ``steps`` steps with step size ∝ 1/sqrt(K), anchored at ``ref_steps``.

    (The rule tested by cooperative diffusion recovery likelihood; fewer, larger steps.)
    """
    scale = math.sqrt(ref_steps / steps)
    return SGLDConfig(steps, base.step_size * scale, base.noise_std, base.grad_clamp, base.clamp_range)


def sampling_budget(
    ctx: Context, evaluator: Evaluator, models: dict[str, nn.Module], steps: tuple[int, ...], ref_steps: int
) -> pd.DataFrame:
    """FID, IS and wall time of generating ``profile.n_gen`` digits with K SGLD steps, for each
    model and K, with the step size fixed and rescaled ∝ 1/sqrt(K)."""
    p = ctx.profile
    base = p.sgld(ref_steps)
    rows = []
    for model in models.values():  # warm-up (allocator, kernels) so the first timing is not inflated
        generate(model, p.gen_batch_size, p.sgld(1), p.gen_batch_size, device=ctx.device, progress=False)
    jobs = [(m, k, rule) for m in models for k in steps for rule in ("fixed step", "step ∝ 1/sqrt(K)")]
    for name, k, rule in tqdm(jobs, desc="sampling budget"):
        cfg = p.sgld(k) if rule == "fixed step" else rescaled_step_size(base, k, ref_steps)
        torch.manual_seed(p.seed)
        synchronize(ctx.device)
        t0 = time.perf_counter()
        samples = generate(models[name], p.n_gen, cfg, p.gen_batch_size, device=ctx.device, progress=False)
        synchronize(ctx.device)
        seconds = time.perf_counter() - t0
        rows.append({"model": name, "K": k, "rule": rule, "step_size": cfg.step_size, "seconds": seconds,
                     **evaluator.sample_quality(samples)})  # fmt: skip
    return pd.DataFrame(rows)


def conclusions(table: pd.DataFrame, budget: pd.DataFrame | None = None) -> list[str]:
    """Plain-language findings computed from the comparison table (and the budget study), so
    the written conclusion always matches the numbers of the profile that produced them."""
    base = table[table.family == "baseline"].iloc[0]
    lines = []
    for _, r in table[table.family != "baseline"].iterrows():
        verdict = "keeps" if keeps_quality(r, base) else "does not keep"
        fid = "no samples (no input gradient)" if math.isnan(r.FID) else f"FID {r.FID:.1f} vs {base.FID:.1f}"
        lines.append(
            f"{r.model} ({r.family}): {r.compression_x:.1f}x smaller on disk, {fid}, "
            f"OOD AUROC {r.ood_auroc:.3f} vs {base.ood_auroc:.3f}: {verdict} the baseline's quality "
            f"(FID within {FID_TOLERANCE:.2f}x and AUROC within {AUROC_TOLERANCE})."
        )
    keepers = table[(table.family != "baseline") & table.apply(keeps_quality, axis=1, base=base)]
    if len(keepers):
        best = keepers.loc[keepers.size_mb.idxmin()]
        lines.append(f"Smallest model that keeps quality: {best.model}, {best.compression_x:.1f}x smaller than the baseline.")
    else:
        lines.append("No compressed model keeps the baseline's quality under this profile's tolerances.")
    if budget is not None and len(budget):
        for (model, rule), g in budget.groupby(["model", "rule"], sort=False):
            g = g.sort_values("K")
            ref = g.iloc[-1]
            ok = g[g.FID <= FID_TOLERANCE * ref.FID]
            k = ok.iloc[0] if len(ok) else ref
            lines.append(
                f"Sampling budget, {model}, {rule}: K={int(k.K)} steps reach FID {k.FID:.1f} "
                f"(K={int(ref.K)}: {ref.FID:.1f}) in {k.seconds / ref.seconds:.0%} of the time."
            )
    return lines
