"""Test runs leave the checkout as they found it.

Every output folder of the series (results, figures, checkpoints) moves to one temporary folder for
the whole session, so that the unit tests and nbval's notebook runs (``notebooks/*.ipynb`` items,
whose kernels inherit this environment) write there and share it: notebook 06 reads what 01-05 wrote.
The datasets stay where they are (``EBM_DATA_ROOT``, else the checkout's ``data/``), and the
notebooks run under ``smoke`` unless ``EBM_PROFILE`` says otherwise. At the end of the session the
run fails if a file of the checkout that git sees changed, appeared or vanished during it.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUTPUT_VARS = {"EBM_RESULTS_DIR": "results", "EBM_FIGURES_DIR": "figures", "EBM_CHECKPOINT_DIR": "checkpoints"}
_state: dict = {}


def checkout_state() -> dict[str, str] | None:
    """Every path ``git status`` reports (tracked files changed, untracked files not ignored) with a
    hash of its content, so that a file changed again during the run counts too; None outside a git
    checkout."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return None
    state = {}
    for entry in filter(None, out.split("\0")):
        path = ROOT / entry[3:]
        digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "-"
        state[entry[3:]] = f"{entry[:2]} {digest}"
    return state


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller set the folders up
        return
    os.environ.setdefault("EBM_PROFILE", "smoke")
    os.environ.setdefault("EBM_DATA_ROOT", str(ROOT / "data"))  # before the outputs move: the real data
    tmp = Path(tempfile.mkdtemp(prefix="ebm-tests-"))
    _state["tmp"] = tmp
    for var, name in OUTPUT_VARS.items():
        os.environ[var] = str(tmp / name)
    _state["before"] = checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before, tmp = _state.pop("before", None), _state.pop("tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if before is None:
        return
    after = checkout_state()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the test run changed the checkout: {shown}"
        if reporter:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        else:
            print(message)
        session.exitstatus = 1
