"""The main job: execute the numbered notebooks in order, headless (``python -m ebmhelpers run``).

The notebooks are this package's checkout's (``notebooks.notebook_paths``); what they write goes
where ``EBM_HOME`` and the other folder variables say (``runtime``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..notebooks import CHECKOUT, notebook_paths
from ..profiles import ENV_VAR, Profile, get_profile
from ..runtime import check_device, device_name, get_device, repo_root, results_dir


class NoSuchNotebook(ValueError):
    """``only`` named no notebook of the checkout; the message (one line) lists them."""


def run_notebooks(
    profile: str | None = None,
    out_dir: Path | None = None,
    inplace: bool = False,
    only: list[str] | None = None,
    timeout_s: int = 6 * 3600,
) -> list[tuple[str, float]]:
    """Execute the numbered notebooks in order under ``profile``; save executed copies to
    ``out_dir`` (default ``runs/<profile>/``) or over the originals with ``inplace``.

    Returns (notebook, seconds) per notebook. Stops at the first notebook that fails.
    """
    from ..progress import tqdm

    prof = get_profile(profile)
    check_device(prof, get_device())  # a profile sized for a GPU is refused on a CPU before any kernel starts
    every = notebook_paths()
    paths = [p for p in every if any(p.name.startswith(o) for o in only)] if only else every
    if not paths:
        names = ", ".join(p.stem for p in every) or f"none, in {CHECKOUT / 'notebooks'}"
        raise NoSuchNotebook(f"no notebook starts with {', '.join(only or [])}; the notebooks are: {names}")
    os.environ[ENV_VAR] = prof.name  # inherited by the kernels
    out_dir = Path(out_dir) if out_dir else repo_root() / "runs" / prof.name
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    bar = tqdm(paths, desc=f"notebooks ({prof.name})", unit="nb")
    for path in bar:
        bar.set_postfix_str(path.name)
        target = path if inplace else out_dir / path.name
        t0 = time.monotonic()
        execute_notebook(path, target, timeout_s)
        timings.append((path.name, time.monotonic() - t0))
        tqdm.write(f"{path.name}: {timings[-1][1]:.0f} s -> {target}")
        _record_time(prof, path.name, timings[-1][1])
    return timings


def execute_notebook(path: Path, target: Path, timeout_s: int = 6 * 3600) -> None:
    """Execute the notebook ``path`` in a fresh kernel (working directory: its folder) and save it to
    ``target``, also when a cell fails, so that it renders finished on GitHub: the kernel gets
    ``EBM_PLAIN_PROGRESS=1`` (text progress bars, not widgets that a saved page shows at "0%"),
    each cell's stream outputs are merged with carriage returns applied (one final line per bar),
    and the widget state is dropped from the notebook's metadata."""
    import nbformat
    from nbclient import NotebookClient

    from ..progress import PLAIN_ENV

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout_s,
        startup_timeout=300,
        kernel_name="python3",
        coalesce_streams=True,
        resources={"metadata": {"path": str(Path(path).parent)}},
    )
    try:
        client.execute(env={**os.environ, PLAIN_ENV: "1"})  # the kernel's environment
    finally:
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, target)


def _record_time(profile: Profile, notebook: str, seconds: float) -> None:
    """Append one notebook's wall time to ``results/<profile>/notebook_times.csv`` (the README's
    per-notebook times), with the hardware and thread count it ran on."""
    import pandas as pd
    import torch

    path = results_dir(profile) / "notebook_times.csv"
    row = pd.DataFrame(
        [
            {
                "notebook": notebook,
                "seconds": round(seconds, 1),
                "hardware": device_name(get_device()),
                "torch_threads": torch.get_num_threads(),
                "finished": time.strftime("%Y-%m-%d %H:%M"),
            }
        ]
    )
    old = pd.read_csv(path) if path.exists() else None
    if old is not None:
        old = old[old.notebook != notebook]
    pd.concat([old, row], ignore_index=True).sort_values("notebook").to_csv(path, index=False)
