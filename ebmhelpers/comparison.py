"""The final comparison: every model of the series in one table read from the saved results
(no training), each pruning strategy at its best ratio, and the findings per model computed from
that table by the series' rules (:mod:`ebmhelpers.verdicts`)."""

from __future__ import annotations

import pandas as pd

from . import results, verdicts
from .distillation import table_columns
from .metrics import PAPER_OOD_SETS, score_columns
from .pruning import sweep_columns
from .runtime import Context
from .verdicts import References, inverted_sets

PAPER_AUROCS = [f"auroc_{s}" for s in PAPER_OOD_SETS]
EXTRA_AUROCS = ["auroc_fashion", "auroc_uniform"]
COLUMNS = [
    "model",
    "family",
    "params",
    "size_mb",
    "latency_ms_cpu",
    "latency_ms_cuda",
    "latency_batch",
    "sgld_img_steps_per_s",
    "IS",
    "IS_std",
    "FID",
    "FID_std",
    "n_seeds",
    "training_seeds",
    *PAPER_AUROCS,
    "auroc_worst",
    "worst_set",
    *EXTRA_AUROCS,
    "inverted_sets",
    "rollbacks",
    "diverged",
    "generative",
    "hardware",
    "strategy",
    "ratio",
    "finetuned",
]
# comparison_table's columns (saved as comparison): COLUMNS, then the verdicts and the compression
TABLE_COLUMNS = (*COLUMNS, "generates", "keeps_quality", "compression_x")
__all__ = [
    "COLUMNS",
    "LATENCY",
    "TABLE_COLUMNS",
    "best_pruning_rows",
    "comparison_table",
    "findings",
    "inverted_sets",
    "references",
    "relative_latency",
    "student_speed",
]


def references(ctx: Context) -> References:
    """The references "generates" is measured against, from notebook 02's tables of this run."""
    ood = results.load_table(ctx, "baseline_ood")
    return References.from_tables(
        results.load_table(ctx, "baseline", score_columns()).iloc[0],
        results.load_table(ctx, "baseline_references"),
        ood,
    )


def best_pruning_rows(pruning: pd.DataFrame, base: pd.Series, refs: References) -> pd.DataFrame:
    """Per (strategy, fine-tuned): the largest ratio that keeps quality, else the lowest FID among
    the ratios that generate (FID is not compared between noise generators), else the highest IS.
    One-shot pruning only (the lottery-ticket rows are a separate experiment)."""
    pruning = results.one_shot(pruning)
    picked = []
    for _, group in pruning.groupby(["strategy", "finetuned"], sort=False):
        ok = group[group.apply(verdicts.keeps_quality, axis=1, ref=base, refs=refs)]
        gen = group[group.apply(verdicts.generates, axis=1, refs=refs)]
        picked.append(
            ok.loc[ok.ratio.idxmax()]
            if len(ok)
            else gen.loc[gen.FID.idxmin()]
            if len(gen)
            else group.loc[group.IS.fillna(0).idxmax()]
            if "IS" in group
            else group.iloc[0]
        )
    return pd.DataFrame(picked)


def comparison_table(ctx: Context) -> pd.DataFrame:
    """Every model of the series in one table, read from ``results/<profile>/`` (no training):
    cost, IS/FID with their spread over seeds, AUROC per paper transform and the worst of them,
    the sets where the detector is inverted (:func:`verdicts.inverted_sets`), the divergence
    guard's record for pruning rows, and ``generates`` and ``keeps_quality`` by the series' rules.

    Raises :class:`results.MissingResultsError` naming the notebook to run when a table, or a
    column this table needs, is missing.
    """
    base = results.load_table(ctx, "baseline", score_columns()).assign(family="baseline")
    quality = (*PAPER_AUROCS, "auroc_worst", "FID_std")  # what this table needs of the quantization table
    quant = results.load_table(ctx, "quantization", quality).assign(family="quantization")
    pruning = results.load_table(ctx, "pruning", sweep_columns())
    students = results.load_table(ctx, "distillation", table_columns()).assign(family="distillation")
    refs = references(ctx)
    pruned = best_pruning_rows(pruning, base.iloc[0], refs).assign(family="pruning")
    table = pd.concat([base, quant, pruned, students], ignore_index=True)
    for col in COLUMNS:
        if col not in table.columns:
            table[col] = float("nan")
    table["inverted_sets"] = table.apply(inverted_sets, axis=1)  # verdicts.INVERSION_SETS
    table["generates"] = table.apply(verdicts.generates, axis=1, refs=refs)
    table["keeps_quality"] = table.apply(verdicts.keeps_quality, axis=1, ref=table.iloc[0], refs=refs)
    table["compression_x"] = base.size_mb.iloc[0] / table.size_mb
    return table[list(TABLE_COLUMNS)]


def findings(table: pd.DataFrame, refs: References) -> pd.DataFrame:
    """Per compressed model of :func:`comparison_table`: its compression, whether it generates and
    keeps the baseline's quality, and each part of that rule not shown to hold, with its interval
    (:func:`verdicts.quality_failures`), and the sets on which it is an inverted detector."""
    base = table[table.family == "baseline"].iloc[0]
    rows = []
    for _, r in table[table.family != "baseline"].iterrows():
        rows.append(
            {
                "model": r.model,
                "family": r.family,
                "compression_x": r.compression_x,
                "generates": verdicts.generates(r, refs),
                "keeps_quality": verdicts.keeps_quality(r, base, refs),
                "not shown": "; ".join(verdicts.quality_failures(r, base, refs)),
                "inverted on": r.get("inverted_sets", ""),
            }
        )
    return pd.DataFrame(rows)


# ---- latency from interleaved timings ---------------------------------------------------------
LATENCY = "latency_rel"  # a model's median latency over the baseline's, timed interleaved with it


def student_speed(ctx: Context, baseline, students: pd.DataFrame) -> pd.DataFrame:
    """Each student architecture of ``students`` timed interleaved with ``baseline``
    (:func:`metrics.compare_latency`: the profile's latency batch, warm-up and repeats) on freshly
    built weights: a dense network's latency depends on its architecture, not on its weights'
    values. Columns of :func:`metrics.speedups_vs`, ``model`` the student's name."""
    from .distillation import build_student
    from .metrics import compare_latency

    p = ctx.profile
    models = {"baseline": baseline.eval()}
    models |= {name: build_student(name).to(ctx.device).eval() for name in students.student.unique()}
    return compare_latency(
        models, p.latency_batch, ctx.device, "baseline", repeats=p.latency_repeats, warmup=p.latency_warmup
    )


def relative_latency(
    table: pd.DataFrame,
    quant_speed: pd.DataFrame | None,
    pruning_speed: pd.DataFrame | None,
    students: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``table`` (:func:`comparison_table`) with :data:`LATENCY` and its spread ``_lo``/``_hi``:
    the inverse of each model's interleaved speed-up over the baseline and of its quartile spread,
    from notebook 03's ``quantization_speed`` (fp32 and int8), notebook 04's ``pruning_speed``
    (physically pruned structured models; a fine-tuned model has its one-shot model's architecture)
    and :func:`student_speed` (``students``). Models without an interleaved timing (masked
    unstructured pruning runs the dense model's kernels; a speed table without interleaved
    columns) get NaN."""
    out = table.copy()
    for col in (LATENCY, f"{LATENCY}_lo", f"{LATENCY}_hi"):
        out[col] = float("nan")

    def put(mask, ratio, lo, hi):
        out.loc[mask, [LATENCY, f"{LATENCY}_lo", f"{LATENCY}_hi"]] = [1 / ratio, 1 / hi, 1 / lo]

    if quant_speed is not None and {"speedup_cpu", "speedup_lo", "speedup_hi"} <= set(quant_speed.columns):
        for r in quant_speed.itertuples():
            name = "baseline" if r.model == "fp32" else r.model
            put(out.model == name, r.speedup_cpu, r.speedup_lo, r.speedup_hi)
    if (
        pruning_speed is not None
        and "strategy" in out
        and {"speedup_interleaved", "speedup_lo"} <= set(pruning_speed.columns)
    ):
        phys = pruning_speed[pruning_speed.variant == "physical"]
        for r in phys.itertuples():
            mask = (out.family == "pruning") & (out.strategy == r.strategy) & ((out.ratio - r.ratio).abs() < 1e-9)
            put(mask, r.speedup_interleaved, r.speedup_lo, r.speedup_hi)
    if students is not None:
        for r in students[students.model != "baseline"].itertuples():
            put(
                (out.family == "distillation") & out.model.astype(str).str.startswith(f"{r.model}/"),
                r.ratio,
                r.ratio_lo,
                r.ratio_hi,
            )
    return out
