"""The notebooks' package-code cells are the package's code (one source; ``sync-source`` rewrites them)."""

import shutil

import nbformat
import pytest

from ebmhelpers import notebooks
from ebmhelpers.runtime import repo_root

NOTEBOOK_01 = repo_root() / "notebooks" / "01_train_baseline.ipynb"
SHOWN_IN_01 = {("sampling", "sgld_step"), ("training", "PCDTrainer.train_step")}
HOW_TO_UPDATE = "run `python -m ebmhelpers sync-source` to rewrite the cell from the package (never edit it by hand)"


@pytest.mark.parametrize("path", notebooks.notebook_paths(), ids=lambda p: p.name)
def test_package_code_cells_equal_the_package(path):
    nb = nbformat.read(path, as_version=4)
    for i, module, name in notebooks.source_cells(nb):
        expected = notebooks.source_cell_text(module, name)
        assert nb.cells[i].source == expected, (
            f"{path.name}, cell {i}: the code shown differs from ebmhelpers/{module}.py {name}; {HOW_TO_UPDATE}")


def test_notebook_01_shows_the_sgld_and_pcd_steps():
    nb = nbformat.read(NOTEBOOK_01, as_version=4)
    cells = notebooks.source_cells(nb)
    assert {(m, n) for _, m, n in cells} == SHOWN_IN_01
    by_name = {n: nb.cells[i].source for i, _, n in cells}
    assert "def sgld_step(" in by_name["sgld_step"] and "noise.normal_" in by_name["sgld_step"]
    assert "def train_step(self, x_real" in by_name["PCDTrainer.train_step"]
    assert "pcd_loss(" in by_name["PCDTrainer.train_step"]


def test_package_source_of_a_method_is_dedented():
    text = notebooks.package_source("training", "PCDTrainer.train_step")
    assert text.startswith("def train_step(self") and not text.endswith("\n")
    with pytest.raises(AttributeError):
        notebooks.package_source("sampling", "no_such_function")


def test_sync_source_rewrites_only_stale_cells(tmp_path):
    path = tmp_path / NOTEBOOK_01.name
    shutil.copy(NOTEBOOK_01, path)
    original = nbformat.read(path, as_version=4)
    (i, module, name), *_ = notebooks.source_cells(original)
    stale = nbformat.read(path, as_version=4)
    stale.cells[i].source += "\n    x.mul_(2)  # an edit by hand"
    stale.cells[i].outputs = [nbformat.v4.new_output("stream", name="stdout", text="old\n")]
    stale.cells[i].execution_count = 3
    nbformat.write(stale, path)

    with pytest.raises(AssertionError, match="sync-source"):
        test_package_code_cells_equal_the_package(path)
    assert notebooks.sync_source([path]) == [f"{path.name}: ebmhelpers/{module}.py {name}"]

    synced = nbformat.read(path, as_version=4)
    assert synced.cells[i].source == notebooks.source_cell_text(module, name) == original.cells[i].source
    assert synced.cells[i].outputs == [] and synced.cells[i].execution_count is None
    others = lambda nb: [c.source for j, c in enumerate(nb.cells) if j != i]  # noqa: E731
    assert others(synced) == others(original)
    assert notebooks.sync_source([path]) == []  # nothing stale left: not rewritten
