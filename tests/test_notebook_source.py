"""Each central algorithm is shown once, on the page that teaches it, by ``show(module.name)``: the
package's own source."""

import importlib
import inspect
import re
import textwrap

import nbformat
import pytest

from ebmhelpers import notebooks

MODULES = tuple(p.stem for p in (notebooks.CHECKOUT / "ebmhelpers").glob("*.py") if not p.stem.startswith("_"))

NOTEBOOK_01 = next(p for p in notebooks.notebook_paths() if p.name.startswith("01_"))
SHOWN_IN_01 = {
    ("sampling", "sgld_step"),
    ("sampling", "sgld"),
    ("training", "PCDTrainer.train_step"),
    ("sampling", "ReplayBuffer.sample"),
    ("sampling", "ReplayBuffer.update"),
    ("training", "pcd_loss"),
    ("training", "PCDTrainer._end_window"),
    ("training", "PCDTrainer._healthy"),
    ("training", "PCDTrainer._rollback"),
    ("sampling", "generate"),
}
# Notebook prefix -> the exact set of (module, definition) its `show` calls display, and per
# definition strings its source must contain (what the page's markdown explains).
SHOWN = {
    "00": {("toy", "metropolis_hastings"), ("toy", "mala"), ("toy", "nce_loss")},
    "01": SHOWN_IN_01,
    "02": {
        ("metrics", "inception_score"),
        ("metrics", "frechet_distance"),
        ("metrics", "ood_row"),
        ("metrics", "auroc"),
    },
    "03": {
        ("quantization", "quantize_static"),
        ("quantization", "quantize_weight"),
        ("quantization", "WeightOnlyLayer"),
        ("quantization", "WeightOnlyConv2d"),
    },
    "04": {
        ("pruning", "apply_pruning"),
        ("pruning", "global_channel_masks"),
        ("pruning", "finetune"),
        ("pruning", "physically_prune"),
        ("pruning", "dead_channels"),
        ("pruning", "lottery_ticket"),
    },
    "05": {
        ("distillation", "distillation_inputs"),
        ("distillation", "distill_loss"),
        ("distillation", "Distiller._train_step"),
        ("objective_study", "choose_objective"),
    },
    "06": {("verdicts", "generates"), ("verdicts", "quality_interval")},
}
CONTENT = {
    "metropolis_hastings": ["def metropolis_hastings(", "accept = torch.rand_like(e).log() < e - e_y"],
    "mala": ["def mala(", "def log_q(", "log_alpha = e - e_y + log_q(x, y, g_y) - log_q(y, x, g)"],
    "nce_loss": ["def nce_loss(", "softplus(-g_data)", "nu * nn.functional.softplus(g_noise)"],
    "sgld_step": ["def sgld_step(", "noise.normal_"],
    "sgld": [
        "def sgld(",
        "with frozen(model) if freeze else contextlib.nullcontext():",
        "noise = torch.empty_like(x)",
        "sgld_step(model, x, cfg, noise, amp_dtype)",
    ],
    "generate": [
        "def generate(",
        "_noise_batches(n, batch_size, shape, device)",
        "out.append(sampler(x0.to(device), cfg))",
    ],
    "PCDTrainer._end_window": [
        "def _end_window(self, window",
        "reason = self._healthy(window.values)",
        "self._rollback(reason)",
        "self.sched.step()",
    ],
    "PCDTrainer._healthy": [
        "def _healthy(self, window",
        "torch.isfinite(window).all()",
        "worst > self.profile.max_abs_energy",
        "gap > bound",
    ],
    "PCDTrainer._rollback": [
        "def _rollback(self, reason",
        'group["lr"] *= p.rollback_lr_factor',
        "raise DivergenceError(",
        "seed_everything(seed)",
    ],
    "PCDTrainer.train_step": ["def train_step(self, x_real", "pcd_loss(", "self.buffer.update(x_fake)"],
    "ReplayBuffer.sample": ["def sample(self, n", "< self.reinit_frac", "self.max_age"],
    "ReplayBuffer.update": ["def update(self, x", "if self.grow:", "self.ages[slots] = self._last_ages + 1"],
    "pcd_loss": [
        "def pcd_loss(",
        "e_real.mean() - e_fake.mean()",
        "alpha * (e_real.pow(2).mean() + e_fake.pow(2).mean())",
    ],
    "inception_score": ["def inception_score(", "log_softmax", "kl.exp()"],
    "frechet_distance": ["def frechet_distance(", "np.linalg.eigvals(s1 @ s2)", "np.sqrt(eig).sum()"],
    "quantize_weight": ["def quantize_weight(", "qmax = 2 ** (bits - 1) - 1", "torch.round(w / scale)"],
    "ood_row": ["def ood_row(", "gap_se = (e_in - e_out).std() / math.sqrt(len(e_in))", "auroc(-e_in, -e_out)"],
    "auroc": ["def auroc(", "ranks = (sums / counts)[inverse]", "u / (n_in * n_out)"],
    "quantize_static": ["def quantize_static(", "quantizable_copy(model)", "tq.prepare(qmodel", "tq.convert(qmodel"],
    "WeightOnlyLayer": [
        "class WeightOnlyLayer(",
        "quantize_weight(layer.weight, bits)",
        "pack_nibbles(q)",
        "self.scale.view(shape)",
    ],
    "WeightOnlyConv2d": ["class WeightOnlyConv2d(", "F.conv2d(x, self.dequantized_weight()"],
    "apply_pruning": ["def apply_pruning(", "prune.global_unstructured", "global_channel_masks(layers, ratio"],
    "global_channel_masks": ["def global_channel_masks(", "channel_scores(weights", "if left[layer] == 1:"],
    "finetune": [
        "def finetune(",
        "buffer=clone_buffer(buffer)",
        "trainer.fit(progress=progress)",
        "except DivergenceError",
    ],
    "physically_prune": [
        "def physically_prune(",
        "remove_masks(copy_model(model))",
        "dead_channels(graph, group)",
        "graph.get_pruning_group(root, handler, idxs).prune()",
    ],
    "dead_channels": ["def dead_channels(", "item.root_idxs", "dead &= mapped"],
    "lottery_ticket": [
        "def lottery_ticket(",
        "1.0 - (1.0 - target) ** (r / rounds)",
        "rewind(model, early)",
        "ctx, model, data, buffer, name, progress and commit",
    ],
    "distillation_inputs": [
        "def distillation_inputs(",
        "buf_hold, buf_train = buffer[perm[:n_hold]], buffer[perm[n_hold:]]",
        "train = pack([real, buf_train, noise(len(buf_train))])",
    ],
    "distill_loss": ["def distill_loss(", "create_graph=True", "weighted_mse(energy, teacher_energy, energy_w)"],
    "Distiller._train_step": ["def _train_step(self, batch", "distill_loss(", "self.opt.step()"],
    "choose_objective": [
        "def choose_objective(",
        "gen = generating(summary)",
        'order = pd.concat([size[alive].sort_values("FID"), size[~alive].sort_values("IS", ascending=False)])',
        "-mean_is.get(o, 0.0)",
    ],
    "generates": ["def generates(", "return is_ > r.is_min and fid < r.fid_max"],
    "quality_interval": ["def quality_interval(", "standard_error(row, metric)", "_t_interval(est,"],
}
MAX_SHOWN_LINES = 40  # a shown definition is short enough to read; split a longer one in the package
MIN_SHOWN = 22  # the series shows at least this many central algorithms


@pytest.mark.parametrize("path", notebooks.notebook_paths(), ids=lambda p: p.name)
def test_each_notebook_shows_its_algorithms(path):
    nb = nbformat.read(path, as_version=4)
    cells = notebooks.shown(nb)
    names = [(m, n) for _, m, n in cells]
    assert set(names) == SHOWN[path.name[:2]] and len(names) == len(set(names)), f"{path.name} shows {names}"
    for i, module, name in cells:
        obj = importlib.import_module(f"ebmhelpers.{module}")
        for attr in name.split("."):
            obj = getattr(obj, attr)
        where, text = notebooks.source_of(obj)
        assert where == f"ebmhelpers/{module}.py: {name}"
        for needle in CONTENT[name]:
            assert needle in text, f"{path.name}: the source shown for {name} lacks {needle!r}"
        assert len(text.splitlines()) <= MAX_SHOWN_LINES, f"{path.name}: {name} is too long to read on the page"
        after = (
            nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        )  # a sentence on what to notice, or the next definition
        assert after is not None and (after.cell_type == "markdown" or notebooks.SHOW_CALL.search(after.source)), (
            f"{path.name}: {name} is not followed by a sentence on what to notice"
        )
        if after.cell_type == "markdown":
            assert "notice" in after.source.lower(), f"{path.name}: the markdown after {name} says nothing to notice"


def test_every_notebook_is_listed_and_enough_is_shown():
    assert {p.name[:2] for p in notebooks.notebook_paths()} == set(SHOWN)
    assert set(CONTENT) == {n for shown in SHOWN.values() for _, n in shown}
    assert sum(len(s) for s in SHOWN.values()) >= MIN_SHOWN


def test_no_page_copies_package_code():
    """A page shows package code only through `show`: no cell redefines a function the package defines."""
    for path in notebooks.notebook_paths():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            for defined in re.findall(r"^(?:def|class) (\w+)", cell.source, re.M):
                assert not any(hasattr(importlib.import_module(f"ebmhelpers.{m}"), defined) for m in MODULES), (
                    f"{path.name} redefines {defined}, which the package defines: show it with show() instead"
                )


def test_show_displays_the_package_source_and_refuses_other_code():
    from ebmhelpers import sampling, training

    shown = notebooks.show(training.PCDTrainer.train_step)
    text = shown.data
    assert text.startswith("# ebmhelpers/training.py: PCDTrainer.train_step\ndef train_step(self")
    assert "<" in shown._repr_html_()  # highlighted
    assert notebooks.source_of(sampling.sgld_step)[1] == textwrap.dedent(inspect.getsource(sampling.sgld_step)).rstrip()
    with pytest.raises(ValueError, match="package's own code"):
        notebooks.show(textwrap.dedent)


def test_show_calls_are_found_in_code_cells_only():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("show(pruning.finetune)"),
            nbformat.v4.new_code_cell("x = 1\nshow(pruning.finetune)\nshow(toy.mala)"),
        ]
    )
    assert notebooks.shown(nb) == [(1, "pruning", "finetune"), (1, "toy", "mala")]
