"""Tidy result tables shared between notebooks: each notebook saves its tables under
``results/<profile>/``, and the final comparison reads them without retraining anything.

A table's columns are declared once, as a constant beside the code that builds it (for example
``metrics.OOD_COLUMNS``); :func:`save_table` and :func:`load_table` take that declaration and
check the table against it, so a writer and its readers cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from .checkpoints import atomic_save, load_checkpoint
from .runtime import Context

# Which notebook writes which table, so a missing table names the notebook to run.
PRODUCERS = {
    "toy_density_fits": "00_ebm_theory",
    "baseline": "02_evaluation",
    "baseline_ood": "02_evaluation",
    "baseline_steps_study": "02_evaluation",
    "baseline_references": "02_evaluation",
    "quantization": "03_quantization",
    "quantization_ood": "03_quantization",
    "quantization_sampling": "03_quantization",
    "quantization_speed": "03_quantization",
    "pruning": "04_pruning",
    "pruning_speed": "04_pruning",
    "distillation": "05_distillation",
}
SAMPLE_PRODUCERS = {
    "baseline": "02_evaluation",
    "quantization": "03_quantization",
    "pruning": "04_pruning",
    "student": "05_distillation",
}


COMMITTED_RESULTS = Path(__file__).resolve().parents[1] / "results"  # the checkout's committed tables


def find(ctx: Context, filename: str) -> Path | None:
    """A results file of the profile: the reader's own (``ctx.results``, under ``EBM_HOME`` or
    ``EBM_RESULTS_DIR``) when there is one, else the checkout's committed copy (the studies behind
    a profile's settings, which a reader's run does not redo), else None."""
    for folder in (ctx.results, COMMITTED_RESULTS / ctx.profile.name):
        if (folder / filename).exists():
            return folder / filename
    return None


def one_shot(pruning: pd.DataFrame) -> pd.DataFrame:
    """The one-shot rows of a pruning table (``method`` "one-shot", fine-tuned or not): the lottery
    ticket's rows are a separate experiment. A table without ``method`` is all one-shot."""
    return pruning[pruning.method == "one-shot"] if "method" in pruning.columns else pruning


class MissingResultsError(FileNotFoundError):
    """A table the final comparison needs has not been produced for this profile."""


def save_table(ctx: Context, name: str, df: pd.DataFrame, columns: Sequence[str] | None = None) -> None:
    """Write ``df`` to ``results/<profile>/<name>.csv`` (with the profile in a column). Given the
    table's declared ``columns``, ``df`` must have exactly those (besides ``profile``), written in that order."""
    if columns is not None:
        have, want = [c for c in df.columns if c != "profile"], list(columns)
        if set(have) != set(want):
            raise ValueError(f"table {name!r} has columns {have}, its declaration {want}")
        df = df[want]
    df = df.copy()
    if "profile" not in df.columns:
        df.insert(0, "profile", ctx.profile.name)
    df.to_csv(ctx.results / f"{name}.csv", index=False)


def load_table(ctx: Context, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a saved table; raises :class:`MissingResultsError` naming the notebook to run when it
    is missing or, given its declared ``columns``, lacks one of them."""
    path = ctx.results / f"{name}.csv"
    producer = PRODUCERS.get(name, "the notebook that writes it")
    if not path.exists():
        raise MissingResultsError(
            f"no results table {path} for profile {ctx.profile.name!r}: "
            f"run notebooks/{producer}.ipynb with this profile first"
        )
    df = pd.read_csv(path)
    missing = [c for c in columns or () if c not in df.columns]
    if missing:
        raise MissingResultsError(f"{path} has no column {', '.join(missing)}: run notebooks/{producer}.ipynb again")
    return df


def save_samples(ctx: Context, name: str, samples: torch.Tensor, n: int = 40) -> None:
    """Keep the first ``n`` generated digits of a model (``results/<profile>/samples_<name>.pt``,
    as 8-bit pixels, about 31 kB) so the final comparison can show them without sampling again."""
    pixels = samples[:n].detach().cpu().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    atomic_save({"samples": pixels}, ctx.results / f"samples_{name}.pt", keep_previous=False)  # no .prev in results/


def load_samples(ctx: Context, name: str) -> torch.Tensor:
    """Samples saved by :func:`save_samples`; a missing file names the notebook to run."""
    path = ctx.results / f"samples_{name}.pt"
    if not path.exists():
        producer = next((nb for key, nb in SAMPLE_PRODUCERS.items() if name.startswith(key)), "an earlier notebook")
        raise MissingResultsError(
            f"no samples {path}: run notebooks/{producer}.ipynb with profile {ctx.profile.name!r}"
        )
    return load_checkpoint(path)["samples"].float().div(127.5).sub(1)
