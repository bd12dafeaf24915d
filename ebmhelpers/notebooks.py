"""Executing the numbered notebooks headless (the main job), the setup cell they share and the
package code they show (:func:`sync_source`)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import textwrap
import time
from pathlib import Path

from .profiles import ENV_VAR, Profile, get_profile
from .runtime import device_name, get_device, repo_root, results_dir

# The git URL the setup cell clones on Colab: the one place to set it (a fork puts its own here, or
# in line 2 of a notebook's first cell; the environment variable EBM_REPO_URL overrides both).
REPO_URL = "https://github.com/<owner>/ebm-compression.git"
DRIVE_HOME = "/content/drive/MyDrive/ebm-compression"  # EBM_HOME on Colab with USE_DRIVE

# The first code cell of every notebook (tests/test_colab.py keeps them equal to it; rewrite them
# with write_setup_cells). On Colab it mounts Drive as EBM_HOME, so the notebooks, each run in its
# own runtime, share checkpoints, results and figures, then clones and installs the repository
# (run-time requirements only: Colab's torch stays). Elsewhere, with the package installed, it only imports.
SETUP_CELL = f"""\
# Setup, the same in every notebook. On Colab: results on Drive, then installs the package.
REPO_URL = "{REPO_URL}"  # a fork: its git URL
USE_DRIVE = True  # on Colab: keep checkpoints, results and figures in MyDrive/ebm-compression
import importlib.util, os, subprocess, sys
if USE_DRIVE and ("google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ):
    from google.colab import drive
    drive.mount("/content/drive")
    os.environ.setdefault("EBM_HOME", "{DRIVE_HOME}")
if importlib.util.find_spec("ebmhelpers") is None:
    url, repo = os.environ.get("EBM_REPO_URL", REPO_URL), os.path.abspath("ebm-compression")
    if "<owner>" in url:
        raise RuntimeError("ebmhelpers is not installed: edit line 2 of this cell, REPO_URL = <git URL of this repository>")
    if not os.path.isdir(repo):
        subprocess.run(["git", "clone", "-q", url, repo], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", os.path.join(repo, "requirements.txt"),
                    "-e", repo], check=True)
    sys.path.insert(0, repo)
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
    from .progress import tqdm

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

    from .progress import PLAIN_ENV

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, startup_timeout=300, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": str(Path(path).parent)}})  # fmt: skip
    try:
        client.execute(env={**os.environ, PLAIN_ENV: "1"})  # the kernel's environment
    finally:
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, target)


def write_setup_cells(paths: list[Path] | None = None) -> list[str]:
    """Make the first code cell of every notebook (default: all numbered ones) :data:`SETUP_CELL`,
    with no outputs; no other cell is touched. Returns the names of the notebooks it rewrote."""
    import nbformat

    changed = []
    for path in paths or notebook_paths():
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        if cell.source != SETUP_CELL or cell.outputs:
            cell.source, cell.outputs, cell.execution_count = SETUP_CELL, [], None
            nbformat.write(nb, path)
            changed.append(Path(path).name)
    return changed


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


# ---- package code shown in notebooks (one source: the package; a test keeps the pages equal) ----
SOURCE_NOTE = "(the package's code, kept equal by tests/test_notebook_source.py)"
SOURCE_MARKER = re.compile(r"# ebmhelpers/(?P<module>\w+)\.py: (?P<name>[\w.]+) \(the package's code\b")


def package_source(module: str, name: str) -> str:
    """The dedented source of ``ebmhelpers.<module>.<name>`` (a function, a class or ``Class.method``)."""
    obj = importlib.import_module(f"ebmhelpers.{module}")
    for attr in name.split("."):
        obj = getattr(obj, attr)
    text = textwrap.dedent(inspect.getsource(obj)).rstrip("\n")
    if not re.match(rf"(@.*\n)*(async )?(def|class) {attr}\b", text):  # inspect reads lines by number
        raise RuntimeError(f"ebmhelpers/{module}.py changed after it was imported; run again in a fresh process")
    return text


def source_cell_text(module: str, name: str) -> str:
    """What a notebook cell showing ``ebmhelpers.<module>.<name>`` must contain: the marker line, then the source."""
    return f"# ebmhelpers/{module}.py: {name} {SOURCE_NOTE}\n{package_source(module, name)}"


def source_cells(nb) -> list[tuple[int, str, str]]:
    """(cell index, module, name) of every code cell whose first line is a :data:`SOURCE_MARKER`."""
    found = []
    for i, cell in enumerate(nb.cells):
        m = SOURCE_MARKER.match(cell.source) if cell.cell_type == "code" else None
        if m:
            found.append((i, m["module"], m["name"]))
    return found


def sync_source(paths: list[Path] | None = None) -> list[str]:
    """Rewrite every package-code cell of the notebooks (default: all numbered ones) from the
    package's current source, clearing its outputs; returns ``"notebook: name"`` per cell changed.
    Notebooks without a stale cell are not written."""
    import nbformat

    changed = []
    for path in paths or notebook_paths():
        nb = nbformat.read(path, as_version=4)
        stale = [(i, m, n) for i, m, n in source_cells(nb) if nb.cells[i].source != source_cell_text(m, n)]
        for i, module, name in stale:
            cell = nb.cells[i]
            cell.source, cell.outputs, cell.execution_count = source_cell_text(module, name), [], None
            changed.append(f"{Path(path).name}: ebmhelpers/{module}.py {name}")
        if stale:
            nbformat.write(nb, path)
    return changed
