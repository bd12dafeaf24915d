"""The sampling budget: the cheapest compression of all touches no weight and runs fewer SGLD
steps when generating, at a fixed sampling temperature. Two rules for the step size as the
number of steps K changes, the study that scores both, and its summary by the series' rules
(:mod:`ebmhelpers.verdicts`)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch
from torch import nn

from . import verdicts
from .metrics import QUALITY_COLUMNS, Evaluator, median_time_s
from .profiles import Profile, SGLDConfig
from .progress import tqdm
from .runtime import Context, model_device
from .sampling import sgld

FIXED_STEP = "fixed step"
FIXED_TIME = "step ∝ 1/K (K·step fixed)"
BUDGET_RULES = (FIXED_STEP, FIXED_TIME)
TIMING_REPEATS = 3  # timed runs per (model, K); the median is reported
ABOVE_REF_FACTOR = 2  # when the profile's budget_steps stop at gen_steps, also study this many times more steps
# sampling_budget's table (saved as sampling_budget): the chain, its time, then its sample quality
BUDGET_COLUMNS = (
    "model",
    "K",
    "ref_K",
    "rule",
    "step_size",
    "noise_std",
    "temperature",
    "total_time",
    "seconds",
    "timing_batch",
    *QUALITY_COLUMNS,
)


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
    return [
        (k, rule, profile.gen_sgld_config(k) if rule == FIXED_STEP else rescaled_step_size(base, k, ref_steps))
        for k in steps
        for rule in BUDGET_RULES
    ]


def sampling_budget(
    ctx: Context,
    evaluator: Evaluator,
    models: dict[str, nn.Module],
    steps: tuple[int, ...],
    ref_steps: int,
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
            rows.append(
                {
                    "model": name,
                    "K": k,
                    "ref_K": ref_steps,
                    "rule": rule,
                    "step_size": cfg.step_size,
                    "noise_std": cfg.noise_std,
                    "temperature": cfg.temperature,
                    "total_time": k * cfg.step_size,
                    "seconds": seconds[k],
                    "timing_batch": p.latency_batch,
                    **quality[cfg],
                }
            )
    return pd.DataFrame(rows, columns=list(BUDGET_COLUMNS))


def budget_summary(budget: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, rule, K other than the reference): the time against the reference K's
    chain, the IS and FID intervals against the reference's (:func:`verdicts.quality_interval`)
    and whether the chain keeps the reference's quality (``keeps``: IS and FID both shown
    :func:`verdicts.non_inferior` within their margins; ``inconclusive`` when an interval straddles
    a margin). The same model at another K: no OOD part, no "generates" part."""
    rows = []
    for (model, rule), g in budget.groupby(["model", "rule"], sort=False):
        ref_k = int(g.ref_K.iloc[0]) if "ref_K" in g else int(g.K.max())
        ref = g[g.K == ref_k].iloc[0]
        for _, r in g[g.K != ref_k].sort_values("K").iterrows():
            ivs = {m: verdicts.quality_interval(r, ref, m) for m in ("IS", "FID")}
            keeps = verdicts.combine([verdicts.non_inferior(iv, verdicts.margin(m)) for m, iv in ivs.items()])
            rows.append(
                {
                    "model": model,
                    "rule": rule,
                    "K": int(r.K),
                    "ref_K": ref_k,
                    "time_vs_ref": r.seconds / ref.seconds,
                    "IS": ivs["IS"].text(),
                    "FID": ivs["FID"].text(),
                    "keeps": keeps,
                }
            )
    return pd.DataFrame(rows, columns=["model", "rule", "K", "ref_K", "time_vs_ref", "IS", "FID", "keeps"])
