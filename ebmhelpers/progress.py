"""Progress bars that render well both interactively and in saved notebooks.

Interactively ``tqdm`` is ``tqdm.auto.tqdm`` (a widget in Jupyter). Widgets saved by a headless run
show their first frame ("0%") on GitHub, so when ``EBM_PLAIN_PROGRESS=1`` (set by
``python -m ebmhelpers run`` for the kernels it starts) ``tqdm`` is the plain text bar writing to
stdout, refreshed at most every few seconds so that saved outputs stay short.
"""

from __future__ import annotations

import os
import sys

PLAIN_ENV = "EBM_PLAIN_PROGRESS"
PLAIN_MININTERVAL_S = 10.0  # seconds between refreshes of a plain bar: keeps saved outputs short


def plain_progress() -> bool:
    """Whether progress bars are plain text (``EBM_PLAIN_PROGRESS=1``)."""
    return os.environ.get(PLAIN_ENV, "") == "1"


if plain_progress():
    from tqdm.std import tqdm as _std_tqdm

    class tqdm(_std_tqdm):  # noqa: N801 - same name as the class it stands in for
        """``tqdm.std.tqdm`` on stdout with a long ``mininterval`` (see module docstring)."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("file", sys.stdout)
            kwargs.setdefault("mininterval", PLAIN_MININTERVAL_S)
            super().__init__(*args, **kwargs)
else:
    from tqdm.auto import tqdm  # noqa: F401

__all__ = ["tqdm", "plain_progress", "PLAIN_ENV"]
