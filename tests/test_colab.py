"""The reader's Colab path: requirements split, the shared setup cell, mixed precision per device,
and notebooks that render finished (text progress bars, no widget state)."""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from ebmhelpers import notebooks, progress, runtime, sampling
from ebmhelpers.tools import runner
from ebmhelpers.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = {"jupyterlab", "nbval", "pytest", "ipykernel"}
COLAB_OWNED = {"torch", "torchvision", "ipywidgets", "ipykernel"}  # never pinned: Colab ships its own
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _requirements(name: str) -> tuple[list[str], dict[str, Requirement]]:
    """(-r includes, requirements by name) of one requirements file."""
    includes, reqs = [], {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            includes.append(line[2:].strip())
        elif line:
            req = Requirement(line)
            reqs[req.name.lower()] = req
    return includes, reqs


# ---- requirements -------------------------------------------------------------------------
def test_runtime_requirements_hold_no_development_tools_and_pin_nothing_colab_ships():
    includes, reqs = _requirements("requirements.txt")
    assert not includes
    assert not DEV_ONLY & set(reqs), "development tools belong in requirements-dev.txt"
    for name in COLAB_OWNED & set(reqs):
        assert not any(s.operator in ("==", "===") for s in reqs[name].specifier), f"{name} is pinned"
    # the torch installed here and the ipywidgets 7.7 a Colab image ships both satisfy the ranges
    assert reqs["torch"].specifier.contains(Version(torch.__version__).base_version)
    assert reqs["ipywidgets"].specifier.contains("7.7.1")


def test_dev_requirements_extend_runtime_ones_with_tests_and_runner():
    includes, reqs = _requirements("requirements-dev.txt")
    assert includes == ["requirements.txt"]
    assert DEV_ONLY | {"nbclient", "nbformat"} <= set(reqs)
    assert "-r requirements-dev.txt" in (ROOT / ".ci" / "run").read_text()


# ---- the setup cell -----------------------------------------------------------------------
def test_every_notebook_starts_with_the_setup_cell():
    for path in notebooks.notebook_paths(ROOT):
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert first.source == notebooks.SETUP_CELL, (
            f"{path.name}: first code cell differs from notebooks.SETUP_CELL; run "
            "`python -c 'from ebmhelpers.notebooks import write_setup_cells; write_setup_cells()'`"
        )


def test_setup_cell_names_its_repository_url_line():
    lines = notebooks.SETUP_CELL.splitlines()
    assert lines[1].startswith(f'REPO_URL = "{notebooks.REPO_URL}"')  # "line 2" in the error message
    assert "line 2 of this cell" in notebooks.SETUP_CELL


def _run_setup(monkeypatch, tmp_path, *, installed: bool, colab: bool, use_drive: bool = True):
    """Execute the setup cell's Python (up to its IPython magic) with the package present or
    missing, inside or outside Colab; return the subprocess commands and the Drive mounts it made."""
    code = notebooks.SETUP_CELL.split("%matplotlib")[0]
    code = code.replace("USE_DRIVE = True", f"USE_DRIVE = {use_drive}")
    calls, mounts = [], []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for var in ("EBM_HOME", "COLAB_RELEASE_TAG"):  # set first, so monkeypatch restores them even if absent
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ebmhelpers" and not installed else real_find_spec(name, *a),
    )
    if colab:
        colab_mod = types.ModuleType("google.colab")
        colab_mod.drive = types.SimpleNamespace(mount=mounts.append)
        monkeypatch.setitem(sys.modules, "google.colab", colab_mod)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(code, "setup_cell", "exec"), {})
    return calls, mounts


def test_setup_cell_does_nothing_in_a_local_checkout(monkeypatch, tmp_path):
    calls, mounts = _run_setup(monkeypatch, tmp_path, installed=True, colab=False)
    assert calls == [] and mounts == []
    assert "EBM_HOME" not in os.environ


def test_setup_cell_stops_with_the_line_to_edit_while_the_url_is_a_placeholder(monkeypatch, tmp_path):
    monkeypatch.delenv("EBM_REPO_URL", raising=False)
    if "<owner>" not in notebooks.REPO_URL:
        pytest.skip("REPO_URL is set")
    with pytest.raises(RuntimeError, match="line 2 of this cell"):
        _run_setup(monkeypatch, tmp_path, installed=False, colab=False)


def test_setup_cell_on_colab_mounts_drive_and_installs_runtime_requirements_only(monkeypatch, tmp_path):
    monkeypatch.setenv("EBM_REPO_URL", "https://example.org/fork/ebm-compression.git")
    calls, mounts = _run_setup(monkeypatch, tmp_path, installed=False, colab=True)
    assert mounts == ["/content/drive"]
    assert os.environ["EBM_HOME"] == notebooks.DRIVE_HOME
    repo = str(tmp_path / "ebm-compression")
    clone, install = calls
    assert clone == ["git", "clone", "-q", "https://example.org/fork/ebm-compression.git", repo]
    assert install[1:] == ["-m", "pip", "install", "-q", "-r", os.path.join(repo, "requirements.txt"), "-e", repo]
    assert not any("torch" in arg or "dev" in arg or arg in ("-U", "--upgrade") for arg in install)
    assert sys.path[0] == repo


def test_setup_cell_without_drive_leaves_ebm_home_alone(monkeypatch, tmp_path):
    calls, mounts = _run_setup(monkeypatch, tmp_path, installed=True, colab=True, use_drive=False)
    assert calls == [] and mounts == []
    assert "EBM_HOME" not in os.environ


def test_every_output_folder_follows_ebm_home(monkeypatch, tmp_path):
    for var in ("EBM_DATA_ROOT", "EBM_CHECKPOINT_DIR", "EBM_RESULTS_DIR", "EBM_FIGURES_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EBM_HOME", str(tmp_path))
    prof = get_profile("smoke")
    assert runtime.repo_root() == tmp_path.resolve()
    for folder in (
        runtime.data_root(),
        runtime.checkpoint_dir(prof),
        runtime.results_dir(prof),
        runtime.figures_dir(prof),
    ):
        assert folder.is_relative_to(tmp_path.resolve())


# ---- mixed precision per device -----------------------------------------------------------
@pytest.mark.parametrize(
    "capability, expected", [((7, 5), "fp16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((9, 0), "bf16")]
)
def test_autocast_dtype_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a T4 says so too
    assert runtime.autocast_dtype(torch.device("cuda")) == expected
    assert runtime.resolve_amp_dtype("auto", "cuda:0") == expected


def test_autocast_dtype_is_fp32_on_the_cpu():
    assert runtime.autocast_dtype(torch.device("cpu")) is None
    assert runtime.resolve_amp_dtype("auto", "cpu") is None


def test_an_explicit_amp_dtype_overrides_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    colab = get_profile("colab")
    assert runtime.resolve_amp_dtype(colab.amp_dtype, "cuda") == "fp16"
    for explicit in ("bf16", "fp16", None):
        assert runtime.resolve_amp_dtype(colab.replace(amp_dtype=explicit).amp_dtype, "cuda") == explicit


def test_gpu_profiles_choose_precision_per_device_cpu_ones_stay_fp32():
    assert get_profile("colab").amp_dtype == get_profile("paper").amp_dtype == "auto"
    assert get_profile("cpu").amp_dtype is None and get_profile("smoke").amp_dtype is None


def test_energy_grad_auto_on_cpu_is_fp32(tiny_energy):
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with sampling.frozen(tiny_energy):
        e32, g32 = sampling.energy_grad(tiny_energy, x, None)
        e, g = sampling.energy_grad(tiny_energy, x, "auto")
    assert torch.equal(e, e32) and torch.equal(g, g32)


def test_fp16_input_gradients_are_scaled_past_underflow(tiny_energy, monkeypatch):
    """Input gradients around 3e-8, far below fp16's normal range: with the loss scale fp16 matches
    fp32 closely; without it (scale 1) most of the gradient is lost."""
    with torch.no_grad():
        tiny_energy.fc.weight.mul_(1e-3)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def rel_err() -> float:
        with sampling.frozen(tiny_energy):
            _, g32 = sampling.energy_grad(tiny_energy, x, None)
            _, g16 = sampling.energy_grad(tiny_energy, x, "fp16")
        return ((g16 - g32).norm() / g32.norm()).item()

    assert rel_err() < 0.01
    monkeypatch.setattr(sampling, "FP16_GRAD_SCALE", 1.0)
    assert rel_err() > 0.3


# ---- progress bars and saved notebooks ----------------------------------------------------
def test_plain_progress_is_a_text_bar_on_stdout(monkeypatch, capsys):
    import tqdm.notebook
    import tqdm.std

    try:
        monkeypatch.setenv(progress.PLAIN_ENV, "1")
        plain = importlib.reload(progress).tqdm
        assert issubclass(plain, tqdm.std.tqdm) and not issubclass(plain, tqdm.notebook.tqdm)
        for _ in plain(range(3), desc="loop"):
            pass
        out = capsys.readouterr().out
        assert "loop: 100%" in out and "3/3" in out
        monkeypatch.delenv(progress.PLAIN_ENV)
        import tqdm.auto

        assert importlib.reload(progress).tqdm is tqdm.auto.tqdm
    finally:
        importlib.reload(progress)


def test_runner_saves_text_progress_and_no_widget_state(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from ebmhelpers.progress import tqdm\nfor _ in tqdm(range(50), desc='loop'):\n    pass"
        )
    ]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    runner.execute_notebook(src, out, timeout_s=120)
    saved = nbformat.read(out, as_version=4)
    assert "widgets" not in saved.metadata
    (output,) = saved.cells[0].outputs
    assert output.output_type == "stream" and output.name == "stdout"
    assert "\r" not in output.text and re.match(r"loop: 100%\|\S+\| 50/50 ", output.text)


def _progress_widgets(path: Path) -> list[str]:
    """The first line of every widget output of a notebook that is a progress bar (tqdm's
    ``0%|`` text or an ``HBox(`` container), not an interactive control."""
    bars = []
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(data.get("text/plain", ""))
            if WIDGET_MIME in data and (re.search(r"\d+%\|", text) or text.startswith("HBox(")):
                bars.append(text.splitlines()[0] if text else "")
    return bars


@pytest.mark.parametrize("path", notebooks.notebook_paths(ROOT), ids=lambda p: p.name[:2])
def test_committed_notebooks_hold_no_progress_bar_widgets(path):
    """A saved tqdm widget renders as a bar at "0%" on GitHub; headless runs write text bars.
    (Notebook 00's ipywidgets.interact_manual control is a widget on purpose and allowed.)"""
    assert _progress_widgets(path) == [], f"{path.name}: re-run it with `python -m ebmhelpers run --inplace`"


def test_committed_study_tables_are_found_when_outputs_go_elsewhere(monkeypatch, tmp_path):
    """On Colab with Drive, EBM_HOME moves every output; the studies committed in the checkout are still
    read (notebook 01's recipe, training-length and chain tables), and a reader's own copy wins."""
    from ebmhelpers import results
    from ebmhelpers.runtime import Context

    monkeypatch.delenv("EBM_RESULTS_DIR", raising=False)
    monkeypatch.setenv("EBM_HOME", str(tmp_path / "drive"))
    ctx = Context(get_profile("cpu"), torch.device("cpu"))
    assert ctx.results == (tmp_path / "drive" / "results" / "cpu").resolve()
    committed = results.find(ctx, "recipe_study.csv")
    assert committed == results.COMMITTED_RESULTS / "cpu" / "recipe_study.csv" and committed.exists()
    (ctx.results / "recipe_study.csv").write_text("recipe\nmine\n")
    assert results.find(ctx, "recipe_study.csv") == ctx.results / "recipe_study.csv"
    assert results.find(ctx, "no_such_table.csv") is None
