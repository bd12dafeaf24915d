"""The notebooks' package-code cells are the package's code (one source; ``sync-source`` rewrites them)."""

import shutil

import nbformat
import pytest

from ebmhelpers import notebooks

NOTEBOOK_01 = next(p for p in notebooks.notebook_paths() if p.name.startswith("01_"))
SHOWN_IN_01 = {("sampling", "sgld_step"), ("training", "PCDTrainer.train_step"), ("sampling", "ReplayBuffer.sample"),
               ("sampling", "ReplayBuffer.update"), ("training", "pcd_loss")}  # fmt: skip
# Each central algorithm is shown once, on the page that teaches it: notebook
# prefix -> the exact set of (module, definition) its package-code cells show, and per definition
# strings its shown source must contain (what the page's markdown explains).
SHOWN = {
    "00": {("toy", "metropolis_hastings"), ("toy", "mala"), ("toy", "nce_loss")},
    "01": SHOWN_IN_01,
    "02": {("metrics", "inception_score"), ("metrics", "frechet_distance")},
    "03": {("quantization", "quantize_weight")},
    "04": {("pruning", "apply_pruning"), ("pruning", "global_channel_masks")},
    "05": {("distillation", "distill_loss"), ("distillation", "Distiller._train_step")},
    "06": set(),
}
CONTENT = {
    "metropolis_hastings": ["def metropolis_hastings(", "accept = torch.rand_like(e).log() < e - e_y"],
    "mala": ["def mala(", "def log_q(", "log_alpha = e - e_y + log_q(x, y, g_y) - log_q(y, x, g)"],
    "nce_loss": ["def nce_loss(", "softplus(-g_data)", "nu * nn.functional.softplus(g_noise)"],
    "sgld_step": ["def sgld_step(", "noise.normal_"],
    "PCDTrainer.train_step": ["def train_step(self, x_real", "pcd_loss(", "self.buffer.update(x_fake)"],
    "ReplayBuffer.sample": ["def sample(self, n", "< self.reinit_frac", "self.max_age"],
    "ReplayBuffer.update": ["def update(self, x", "if self.grow:", "self.ages[slots] = self._last_ages + 1"],
    "pcd_loss": ["def pcd_loss(", "e_real.mean() - e_fake.mean()", "alpha * (e_real.pow(2).mean() + e_fake.pow(2).mean())"],
    "inception_score": ["def inception_score(", "log_softmax", "kl.exp()"],
    "frechet_distance": ["def frechet_distance(", "np.linalg.eigvals(s1 @ s2)", "np.sqrt(eig).sum()"],
    "quantize_weight": ["def quantize_weight(", "qmax = 2 ** (bits - 1) - 1", "torch.round(w / scale)"],
    "apply_pruning": ["def apply_pruning(", "prune.global_unstructured", "global_channel_masks(layers, ratio"],
    "global_channel_masks": ["def global_channel_masks(", "channel_scores(weights", "if left[layer] == 1:"],
    "distill_loss": ["def distill_loss(", "create_graph=True", "weighted_mse(energy, teacher_energy, energy_w)"],
    "Distiller._train_step": ["def _train_step(self, batch", "distill_loss(", "self.opt.step()"],
}
MAX_SHOWN_LINES = 40  # a shown definition is short enough to read; split a longer one in the package
HOW_TO_UPDATE = "run `python -m ebmhelpers sync-source` to rewrite the cell from the package (never edit it by hand)"


@pytest.mark.parametrize("path", notebooks.notebook_paths(), ids=lambda p: p.name)
def test_package_code_cells_equal_the_package(path):
    nb = nbformat.read(path, as_version=4)
    for i, module, name in notebooks.source_cells(nb):
        expected = notebooks.source_cell_text(module, name)
        assert nb.cells[i].source == expected, (
            f"{path.name}, cell {i}: the code shown differs from ebmhelpers/{module}.py {name}; {HOW_TO_UPDATE}")


def test_every_notebook_is_listed():
    assert {p.name[:2] for p in notebooks.notebook_paths()} == set(SHOWN)
    assert set(CONTENT) == {n for shown in SHOWN.values() for _, n in shown}


@pytest.mark.parametrize("path", notebooks.notebook_paths(), ids=lambda p: p.name)
def test_each_notebook_shows_its_algorithms(path):
    nb = nbformat.read(path, as_version=4)
    cells = notebooks.source_cells(nb)
    names = [(m, n) for _, m, n in cells]
    assert set(names) == SHOWN[path.name[:2]] and len(names) == len(set(names)), f"{path.name} shows {names}"
    for i, _, name in cells:
        text = nb.cells[i].source
        for needle in CONTENT[name]:
            assert needle in text, f"{path.name}: the cell showing {name} lacks {needle!r}"
        assert len(text.splitlines()) <= MAX_SHOWN_LINES + 1, f"{path.name}: {name} is too long to read on the page"
        after = nb.cells[i + 1] if i + 1 < len(nb.cells) else None  # a sentence on what to notice, or the next definition
        assert after is not None and (after.cell_type == "markdown" or notebooks.SOURCE_MARKER.match(after.source)), (
            f"{path.name}: {name} is not followed by a sentence on what to notice")
        if after.cell_type == "markdown":
            assert "notice" in after.source.lower(), f"{path.name}: the markdown after {name} says nothing to notice"


def test_sync_source_leaves_every_notebook_unchanged(tmp_path):
    copies = []
    for path in notebooks.notebook_paths():
        copies.append(tmp_path / path.name)
        shutil.copy(path, copies[-1])
    assert notebooks.sync_source(copies) == []
    for path, copy in zip(notebooks.notebook_paths(), copies):
        assert copy.read_bytes() == path.read_bytes()


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
