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
    """Per (strategy, fine-tuned): the largest ratio that keeps quality, else the lowest FID."""
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
