"""The pages themselves: where the numbered notebooks are, the setup cell they share
(:func:`write_setup_cells`) and the package code they show (:func:`sync_source`). The headless
runner that executes them is ``ebmhelpers.tools.runner``."""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from pathlib import Path

# The checkout this package belongs to: its notebooks are here wherever EBM_HOME puts the outputs.
CHECKOUT = Path(__file__).resolve().parents[1]

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
ctx = runtime.start()  # profile: EBM_PROFILE, else cpu (the committed one) on any device; device, seeds"""


def notebook_paths(root: Path | None = None) -> list[Path]:
    """The numbered notebooks ``notebooks/NN_*.ipynb`` of ``root`` (default: this package's
    checkout, whatever ``EBM_HOME`` says) in order."""
    folder = (root or CHECKOUT) / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


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
