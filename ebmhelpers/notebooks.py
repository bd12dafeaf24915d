"""The pages themselves: where the numbered notebooks are, the setup cell they share
(:func:`write_setup_cells`) and :func:`show`, which displays the package's own source on a page. The headless
runner that executes them is ``ebmhelpers.tools.runner``."""

from __future__ import annotations

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


# ---- package code shown on the pages -------------------------------------------------------
SHOW_CALL = re.compile(r"^show\((?P<module>\w+)\.(?P<name>[\w.]+)\)$", re.M)


def source_of(obj) -> tuple[str, str]:
    """(``ebmhelpers/<module>.py: <qualified name>``, dedented source) of a package function, class or method."""
    obj = inspect.unwrap(obj)
    module = inspect.getmodule(obj)
    if module is None or not module.__name__.startswith("ebmhelpers."):
        raise ValueError(f"show() displays the package's own code; {obj!r} is not from ebmhelpers")
    text = textwrap.dedent(inspect.getsource(obj)).rstrip("\n")
    name = obj.__qualname__
    if not re.match(rf"(@.*\n)*(async )?(def|class) {name.split('.')[-1]}\b", text):  # inspect reads lines by number
        raise RuntimeError(f"{module.__file__} changed after it was imported; restart the kernel and run again")
    return f"{module.__name__.replace('.', '/')}.py: {name}", text


def show(obj):
    """Display the package's own source of ``obj`` (the code that runs), highlighted, under a line
    naming its file and definition: ``show(sampling.sgld_step)``. Plain text where no HTML renders."""
    from IPython.display import Code

    where, text = source_of(obj)
    return Code(f"# {where}\n{text}", language="python")


def shown(nb) -> list[tuple[int, str, str]]:
    """(cell index, module, name) of every ``show(module.name)`` line in the code cells of ``nb``."""
    return [
        (i, m["module"], m["name"])
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for m in SHOW_CALL.finditer(cell.source)
    ]
