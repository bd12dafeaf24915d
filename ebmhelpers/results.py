"""Tidy result tables shared between notebooks: each notebook saves its tables under
``results/<profile>/``, and the final comparison reads them without retraining anything."""

from __future__ import annotations

import pandas as pd

from .runtime import Context

# Which notebook writes which table, so a missing table names the notebook to run.
PRODUCERS = {
    "baseline": "02_evaluation",
    "baseline_ood": "02_evaluation",
    "quantization": "03_quantization",
    "quantization_ood": "03_quantization",
    "pruning": "04_pruning",
    "pruning_speed": "04_pruning",
    "distillation": "05_distillation",
}


class MissingResultsError(FileNotFoundError):
    """A table the final comparison needs has not been produced for this profile."""


def save_table(ctx: Context, name: str, df: pd.DataFrame) -> None:
    """Write ``df`` to ``results/<profile>/<name>.csv`` (with the profile in a column)."""
    df = df.copy()
    if "profile" not in df.columns:
        df.insert(0, "profile", ctx.profile.name)
    df.to_csv(ctx.results / f"{name}.csv", index=False)


def load_table(ctx: Context, name: str) -> pd.DataFrame:
    """Read a saved table; raises :class:`MissingResultsError` naming the notebook to run."""
    path = ctx.results / f"{name}.csv"
    if not path.exists():
        producer = PRODUCERS.get(name, "the notebook that writes it")
        raise MissingResultsError(
            f"no results table {path} for profile {ctx.profile.name!r}: "
            f"run notebooks/{producer}.ipynb with this profile first"
        )
    return pd.read_csv(path)
