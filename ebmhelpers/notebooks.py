"""Executing the numbered notebooks headless (the main job) and the setup cell they share."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .profiles import ENV_VAR, Profile, get_profile
from .runtime import device_name, get_device, repo_root, results_dir

# The first code cell of every notebook: on Colab (or any kernel without the package) it
# clones the repository and installs it; locally it does nothing but import.
SETUP_CELL = """\
# Setup: installs the package when it is missing (Colab); a local checkout needs nothing here.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("ebmhelpers") is None:
    url = os.environ.get("EBM_REPO_URL")  # on Colab: %env EBM_REPO_URL=<git URL of this repository>
    if not url:
        raise RuntimeError("ebmhelpers is not installed: set EBM_REPO_URL to this repository's git URL")
    subprocess.run(["git", "clone", "-q", url, "ebm-compression"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "ebm-compression/requirements.txt",
                    "-e", "ebm-compression"], check=True)
    sys.path.insert(0, os.path.abspath("ebm-compression"))
%matplotlib inline
from ebmhelpers import runtime
ctx = runtime.start()  # profile from EBM_PROFILE (smoke on CPU, colab on CUDA), device, seeds"""


def notebook_paths(root: Path | None = None) -> list[Path]:
    """The numbered notebooks ``notebooks/NN_*.ipynb`` in order."""
    folder = (root or repo_root()) / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


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
    import nbformat
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    prof = get_profile(profile)
    os.environ[ENV_VAR] = prof.name  # inherited by the kernels
    paths = notebook_paths()
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise FileNotFoundError("no notebooks matched")
    out_dir = Path(out_dir) if out_dir else repo_root() / "runs" / prof.name
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    bar = tqdm(paths, desc=f"notebooks ({prof.name})", unit="nb")
    for path in bar:
        bar.set_postfix_str(path.name)
        nb = nbformat.read(path, as_version=4)
        t0 = time.monotonic()
        client = NotebookClient(nb, timeout=timeout_s, startup_timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        finally:
            target = path if inplace else out_dir / path.name
            nbformat.write(nb, target)
        timings.append((path.name, time.monotonic() - t0))
        tqdm.write(f"{path.name}: {timings[-1][1]:.0f} s -> {target}")
        _record_time(prof, path.name, timings[-1][1])
    return timings


def _record_time(profile: Profile, notebook: str, seconds: float) -> None:
    """Append one notebook's wall time to ``results/<profile>/notebook_times.csv`` (the README's
    per-notebook times), with the hardware and thread count it ran on."""
    import pandas as pd
    import torch

    path = results_dir(profile) / "notebook_times.csv"
    row = pd.DataFrame([{"notebook": notebook, "seconds": round(seconds, 1), "hardware": device_name(get_device()),
                         "torch_threads": torch.get_num_threads(), "finished": time.strftime("%Y-%m-%d %H:%M")}])
    old = pd.read_csv(path) if path.exists() else None
    if old is not None:
        old = old[old.notebook != notebook]
    pd.concat([old, row], ignore_index=True).sort_values("notebook").to_csv(path, index=False)
