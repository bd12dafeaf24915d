import copy
import inspect

import matplotlib
import pandas as pd
import pytest
import torch
from torch import nn

from ebmhelpers import data
from ebmhelpers import distillation as d
from ebmhelpers.pruning import TRAINING_SEED_COLUMNS
from ebmhelpers.models import EnergyModel, ResNetEnergy, Swish, build_baseline, count_parameters
from ebmhelpers.profiles import get_profile

matplotlib.use("Agg")


def _teacher() -> ResNetEnergy:
    """A tiny random ResNet teacher with a wide, centred energy range (random init alone gives
    energies that barely vary, which a student would match by learning a constant)."""
    torch.manual_seed(0)
    teacher = ResNetEnergy((1, 1), (8, 16))
    with torch.no_grad():
        teacher.fc.weight.mul_(300)
        teacher.fc.bias.sub_(teacher(torch.rand(64, 1, 28, 28) * 2 - 1).mean())
    return teacher.eval()


def _targets(teacher, real: torch.Tensor, n_noise: int, seed: int) -> d.DistillSet:
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n_noise, 1, 28, 28, generator=g) * 2 - 1
    kind = torch.cat([torch.zeros(len(real), dtype=torch.long), torch.full((n_noise,), 2)])
    return d.teacher_targets(teacher, torch.cat([real, noise]), kind, batch_size=256, progress=False)


@pytest.mark.parametrize("name", list(d.STUDENTS))
def test_student_parameter_count_is_the_table(name):
    student = d.build_student(name)
    assert isinstance(student, EnergyModel)
    assert count_parameters(student) == d.STUDENTS[name].params
    assert any(isinstance(m, Swish) for m in student.modules())
    norms = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not any(isinstance(m, norms) for m in student.modules())
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert student.logits(x).shape == (3, 10)
    assert torch.allclose(student(x), student.logits(x).mean(1))


def test_students_span_the_range_and_include_the_papers_size():
    counts = sorted(s.params for s in d.STUDENTS.values())
    assert len(counts) == 6 and len(set(counts)) == 6
    assert d.STUDENTS[d.PAPER_SIZED_STUDENT].params == d.PAPER_STUDENT_PARAMS == 77_004
    with pytest.raises(KeyError, match="unknown student"):
        d.build_student("resnet_huge")


def test_students_are_smaller_than_their_teacher():
    resnet18 = count_parameters(build_baseline("resnet18"))
    assert d.students_for(resnet18) == list(d.STUDENTS)  # all six are smaller than ResNet18
    cnn = count_parameters(build_baseline("cnn_tutorial8"))
    assert cnn == 77_578
    assert d.students_for(cnn) == ["resnet_77k", "cnn_20k", "cnn_7k", "cnn_2k"]
    assert d.students_for(d.STUDENTS["cnn_7k"].params) == ["cnn_2k"]  # strictly smaller
    assert set(d.GRAD_MATCH_STUDENTS) <= set(d.students_for(cnn))
    table = d.student_table(cnn)
    assert list(table.student) == list(d.STUDENTS) and table.params.tolist() == [s.params for s in d.STUDENTS.values()]
    assert table.set_index("student").distilled.to_dict() == {n: n in d.students_for(cnn) for n in d.STUDENTS}
    assert (table["x fewer than teacher"] == cnn / table.params).all()


# ---- the kind-balanced loss -------------------------------------------------------------
class Lookup(nn.Module):
    """A "student" whose energy for input i (its index, stored in the image) is ``table[i]``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.flatten(1)[:, 0].long()]


def _standardized(n: int, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, generator=g, dtype=torch.float64)
    return ((z - z.mean()) / z.std(correction=0)).float()


def _kinds_set(noise_scale: float = 1.0, frac: float = 0.3) -> tuple[d.DistillSet, torch.Tensor]:
    """Three kinds of different sizes and energy scales (real near 0, buffer wide, noise high),
    and a student energy whose error on each kind is ``frac`` of that kind's RMS energy. The
    noise energies (and so the student's noise error) are multiplied by ``noise_scale``."""
    g = torch.Generator().manual_seed(0)
    sizes, means, stds = (40, 30, 20), (-1.0, 2.0, 8.0), (0.05, 2.0, 0.5)
    kind = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    energy = torch.cat([m + s * _standardized(n, g) for n, m, s in zip(sizes, means, stds)])
    rms = torch.tensor([(m**2 + s**2) ** 0.5 for m, s in zip(means, stds)])
    error = torch.cat([frac * r * _standardized(n, g) for n, r in zip(sizes, rms)])
    scale = torch.where(kind == 2, noise_scale, 1.0)
    energy, error = energy * scale, error * scale
    x = torch.arange(len(kind), dtype=torch.float32).view(-1, 1, 1, 1)
    grad = torch.zeros(len(kind), 1, 1, 1)
    return d.DistillSet(x, kind, energy, grad), energy + error


def _shares(targets: d.DistillSet, student_energy: torch.Tensor) -> tuple[list[float], list[float]]:
    """Each kind's contribution to the balanced energy loss and to the plain MSE."""
    w_e, _ = targets.loss_weights()
    err = (student_energy - targets.energy).pow(2)
    balanced = [float((w_e * err)[targets.kind == i].sum() / len(targets)) for i in range(3)]
    plain = [float(err[targets.kind == i].sum() / len(targets)) for i in range(3)]
    return balanced, plain


def test_balanced_loss_gives_each_kind_the_same_share():
    frac = 0.3
    targets, student_e = _kinds_set(frac=frac)
    balanced, plain = _shares(targets, student_e)
    # the same fraction of each kind's energy scale -> the same contribution, frac^2 / K each
    assert balanced == pytest.approx([frac**2 / 3] * 3, rel=1e-4)
    assert plain[2] / sum(plain) > 0.8 and plain[0] / sum(plain) < 0.05  # the plain MSE is mostly noise
    # the loss the trainer minimizes is exactly the sum of those contributions
    w_e, _ = targets.loss_weights()
    terms = d.distill_loss(Lookup(student_e), targets.x, targets.energy, energy_w=w_e)
    assert float(terms["energy"].detach()) == pytest.approx(frac**2, rel=1e-4)
    assert float(terms["energy_mse"]) == pytest.approx(float((student_e - targets.energy).pow(2).mean()), rel=1e-5)
    # and it trains the student: the gradient reaches every kind's entries
    student = Lookup(student_e)
    d.distill_loss(student, targets.x, targets.energy, energy_w=w_e)["loss"].backward()
    assert (student.table.grad != 0).all()


def test_scaling_one_kind_does_not_let_it_dominate():
    targets, student_e = _kinds_set(noise_scale=10.0)
    balanced, plain = _shares(targets, student_e)
    assert balanced == pytest.approx(_shares(*_kinds_set())[0], rel=1e-4)  # unchanged by the scale
    assert plain[2] / sum(plain) > 0.99  # while noise rules the plain MSE even more
    # the kinds' scales are their own mean squared energies, whatever the counts
    e_scale, _ = targets.kind_scales()
    assert e_scale.tolist() == pytest.approx([1.0**2 + 0.05**2, 2.0**2 + 2.0**2, 100 * (8.0**2 + 0.5**2)], rel=1e-4)


def test_loss_scales_are_floored_and_absent_kinds_ignored():
    g = torch.Generator().manual_seed(1)
    kind = torch.tensor([0] * 10 + [2] * 10)
    energy = torch.cat([1e-5 * torch.randn(10, generator=g), torch.full((10,), 7.0)])  # real ~ 0; noise: a plateau
    grad = torch.cat([torch.randn(10, 1, 4, 4, generator=g), torch.zeros(10, 1, 4, 4)])
    targets = d.DistillSet(torch.zeros(20, 1, 4, 4), kind, energy, grad)
    e_scale, g_scale = targets.kind_scales()
    assert torch.isnan(e_scale[1]) and torch.isnan(g_scale[1])  # no buffer inputs
    assert float(e_scale[0]) == pytest.approx(d.SCALE_FLOOR * float(energy.double().pow(2).mean()), rel=1e-5)
    assert float(e_scale[2]) == pytest.approx(49.0, rel=1e-5)
    assert float(g_scale[2]) == pytest.approx(d.SCALE_FLOOR * float(grad.double().pow(2).mean()), rel=1e-5)
    variances = targets.energy_variances()  # the held-out normalizer: the plateau's variance is floored
    assert float(variances[2]) == pytest.approx(d.SCALE_FLOOR * float(energy.double().var(correction=0)), rel=1e-5)
    w_e, w_g = targets.loss_weights()
    assert torch.isfinite(w_e).all() and torch.isfinite(w_g).all()
    # two kinds present: each kind's weights sum to N / K over the kind's scale
    assert float(w_e[:10].sum()) == pytest.approx(20 / 2 / float(e_scale[0]), rel=1e-5)
    assert float(w_e[10:].sum()) == pytest.approx(20 / 2 / 49.0, rel=1e-5)
    # one kind: the loss is the MSE relative to that kind's mean squared energy
    noise = targets.select(["noise"])
    w_e, _ = noise.loss_weights()
    assert torch.allclose(w_e, torch.full((10,), 1 / 49.0))


def test_distillation_reduces_heldout_energy_mse(one_thread):
    teacher = _teacher()
    real, _ = data.load_dataset("mnist", train=True, subset=256, seed=0)
    test, _ = data.load_dataset("mnist", train=False, subset=64, seed=0)
    train, held = _targets(teacher, real, 256, seed=1), _targets(teacher, test, 64, seed=2)

    def heldout_mse(model) -> float:
        with torch.no_grad():
            return float((model(held.x) - held.energy).pow(2).mean())

    torch.manual_seed(1)
    student = d.build_student("cnn_7k")
    before = heldout_mse(student)
    d.Distiller(student, train, steps=160, batch_size=32).fit(progress=False)
    after = heldout_mse(student)
    # far below the untrained student, and it learned the variation, not just the mean energy
    assert after < 0.1 * before, (before, after)
    assert after < 0.25 * float(held.energy.var()), (after, float(held.energy.var()))
    errors = d.heldout_errors(student, held).set_index("inputs")
    assert set(errors.index) == {"real", "noise"} and errors.energy_mse.max() < before
    for i, kind in enumerate(d.INPUT_KINDS):
        if kind in errors.index:
            e = held.energy[held.kind == i].double()
            assert errors.energy_rel[kind] == pytest.approx(
                errors.energy_mse[kind] / float(e.var(correction=0)), rel=1e-4
            )
    assert (errors.energy_rel < 1).all(), errors  # better than each kind's mean energy


def test_gradient_matching_loss_is_zero_when_student_is_teacher():
    teacher = _teacher()
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    _, g_t = d.input_gradient(teacher, x)
    _, g_s = d.input_gradient(copy.deepcopy(teacher), x, create_graph=True)
    assert float(d.gradient_matching_loss(g_s, g_t).detach()) < 1e-12
    terms = d.distill_loss(copy.deepcopy(teacher), x, teacher(x).detach(), g_t, grad_weight=1.0)
    assert float(terms["loss"].detach()) < 1e-12
    torch.manual_seed(3)
    _, g_o = d.input_gradient(ResNetEnergy((1, 1), (8, 16)), x, create_graph=True)
    assert float(d.gradient_matching_loss(g_o, g_t).detach()) > 1e-3 * float(g_t.pow(2).mean())


def test_gradient_matching_term_trains_the_student_parameters():
    """Needs create_graph=True: without it the input gradient is a constant to the optimizer."""
    teacher, student = _teacher(), d.build_student("cnn_2k")
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    _, g_t = d.input_gradient(teacher, x)
    terms = d.distill_loss(student, x, teacher(x).detach(), g_t, grad_weight=1.0)
    assert float(terms["grad"].detach()) > 0
    student.zero_grad()
    terms["grad"].backward()
    grads = [p.grad for p in student.parameters() if p.dim() > 1]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="input gradients"):
        d.distill_loss(student, x, torch.zeros(8), None, grad_weight=1.0)


def test_gradient_matching_reduces_the_gradient_error(one_thread):
    """Same student, inputs, steps and initialization, with and without the term: the held-out
    input gradients end closer to the teacher's on every kind with it."""
    teacher = _teacher()
    real, _ = data.load_dataset("mnist", train=True, subset=128, seed=0)
    test, _ = data.load_dataset("mnist", train=False, subset=64, seed=0)
    train, held = _targets(teacher, real, 128, seed=1), _targets(teacher, test, 64, seed=2)
    errors, first_grad_terms = {}, {}
    for w in (0.0, 10.0):
        torch.manual_seed(1)
        student = d.build_student("cnn_2k")
        history = d.Distiller(student, train, steps=120, batch_size=32, grad_weight=w).fit(progress=False)
        errors[w] = d.heldout_errors(student, held).set_index("inputs")
        first_grad_terms[w] = history.grad
    assert (first_grad_terms[0.0] == 0).all()
    assert first_grad_terms[10.0].iloc[-20:].mean() < first_grad_terms[10.0].iloc[:5].mean()
    assert (errors[10.0].grad_rel < errors[0.0].grad_rel).all(), errors
    assert (errors[10.0].grad_cosine > errors[0.0].grad_cosine + 0.03).all(), errors


def test_distiller_resumes_to_the_same_state(tmp_path, one_thread):
    teacher = _teacher()
    targets = _targets(teacher, torch.rand(24, 1, 28, 28) * 2 - 1, 24, seed=0)

    def make(path):
        torch.manual_seed(5)
        return d.Distiller(
            d.build_student("cnn_2k"),
            targets,
            steps=6,
            batch_size=8,
            grad_weight=1.0,
            ckpt_path=path,
            ckpt_every=2,
            meta={"student": "cnn_2k"},
        )

    full = make(tmp_path / "full.pt")
    full.fit(progress=False)
    first = make(tmp_path / "cut.pt")
    first.fit(progress=False, max_steps=3)  # stops at the checkpoint after step 4
    assert first.step == 4 and not first.done
    resumed = make(tmp_path / "cut.pt")
    assert resumed.load() and resumed.step == 4
    resumed.fit(progress=False)
    for k, v in full.student.state_dict().items():
        assert torch.equal(v, resumed.student.state_dict()[k]), k
    assert full.history.equals(resumed.history) and len(full.history) == 6
    other = d.Distiller(
        d.build_student("cnn_2k"),
        targets,
        steps=7,
        batch_size=8,
        ckpt_path=tmp_path / "full.pt",
        meta={"student": "cnn_2k"},
    )
    with pytest.raises(ValueError, match="different distillation run"):
        other.load()


def test_distiller_killed_in_its_second_epoch_resumes_to_the_same_weights(tmp_path, one_thread):
    """A run over 2.5 epochs (each reshuffled), stopped mid-epoch and resumed in a fresh object,
    ends with the weights and history of an uninterrupted run."""
    targets = _targets(_teacher(), torch.rand(24, 1, 28, 28) * 2 - 1, 24, seed=0)  # 48 inputs: 6 batches/epoch

    def make(path):
        torch.manual_seed(5)
        return d.Distiller(d.build_student("cnn_2k"), targets, steps=15, batch_size=8, ckpt_path=path, ckpt_every=4)

    full = make(tmp_path / "full.pt")
    full.fit(progress=False)
    killed = make(tmp_path / "cut.pt")
    killed.fit(progress=False, max_steps=7)  # checkpoints at 4, 6 (epoch end), 10, 12 (epoch end), 15
    assert killed.step == 10 and torch.load(tmp_path / "cut.pt", weights_only=True)["step"] == 10
    resumed = make(tmp_path / "cut.pt")
    assert resumed.load() and resumed.step == 10
    resumed.fit(progress=False)
    for k, v in full.student.state_dict().items():
        assert torch.equal(v, resumed.student.state_dict()[k]), k
    assert full.history.equals(resumed.history) and full.history.step.tolist() == list(range(1, 16))


def test_distillation_inputs_split_buffer_and_mix_kinds():
    profile = get_profile("smoke").replace(train_subset=40)
    buffer = torch.arange(64.0).view(64, 1, 1, 1).expand(64, 1, 28, 28).contiguous()
    (x, kind), (hx, hkind) = d.distillation_inputs(profile, buffer)
    n_hold = 64 // d.HOLDOUT_FRACTION
    assert torch.bincount(kind, minlength=3).tolist() == [40, 64 - n_hold, 64 - n_hold]
    assert torch.bincount(hkind, minlength=3).tolist() == [n_hold, n_hold, n_hold]
    train_ids, held_ids = set(x[kind == 1, 0, 0, 0].tolist()), set(hx[hkind == 1, 0, 0, 0].tolist())
    assert not train_ids & held_ids and len(train_ids | held_ids) == 64
    assert x[kind == 2].abs().max() <= 1 and x[kind == 0].min() >= -1
    assert torch.equal(d.distillation_inputs(profile, buffer)[0][0], x)  # fixed by the seed


class FakeEvaluator:
    """Stands in for ``metrics.Evaluator``: ``score`` returns a row and draws from the global RNG
    (as generation does), so a reseed between two calls would show as equal draws."""

    def score(self, model, name, **kwargs):
        return {"model": name, "params": count_parameters(model), "draw": float(torch.rand(()))}, pd.DataFrame(), None


def test_score_rows_carry_heldout_columns_per_kind_and_do_not_reseed():
    assert "seed" not in inspect.signature(d.score_model).parameters
    teacher = _teacher()
    x = torch.rand(12, 1, 28, 28) * 2 - 1
    held = d.teacher_targets(teacher, x, torch.tensor([0, 1, 2] * 4), batch_size=8, progress=False)
    torch.manual_seed(0)
    student = d.build_student("cnn_2k")
    rows = [d.score_model(FakeEvaluator(), student, "cnn_2k", "mixed", held)[0] for _ in range(2)]
    assert rows[0]["draw"] != rows[1]["draw"]  # the Evaluator seeds itself; score_model does not
    errors = d.heldout_errors(student, held).set_index("inputs")
    for kind in d.INPUT_KINDS:
        assert rows[0][f"heldout_mse_{kind}"] == pytest.approx(errors.energy_mse[kind])
        assert rows[0][f"heldout_rel_{kind}"] == pytest.approx(errors.energy_rel[kind])
        assert f"grad_cosine_{kind}" in rows[0]
    assert rows[0]["student"] == "cnn_2k" and rows[0]["variant"] == "mixed" and rows[0]["model"] == "cnn_2k/mixed"
    assert [c for c in rows[0] if c.startswith(("heldout_", "grad_cosine_"))] == list(d.HELDOUT_COLUMNS)


def test_figure3_uses_worst_case_auroc_and_seed_error_bars():
    assert "ood_auroc" not in dict(d.FIGURE3_METRICS) and "auroc_worst" in dict(d.FIGURE3_METRICS)
    df = pd.DataFrame(
        {
            "student": ["a", "b", "a"],
            "variant": ["mixed", "mixed", "real"],
            "params": [100, 1000, 100],
            "FID": [50.0, 40.0, 60.0],
            "FID_std": [2.0, 3.0, 4.0],
            "IS": [2.0, 3.0, 1.5],
            "IS_std": [float("nan")] * 3,
            "auroc_worst": [0.4, 0.7, 0.6],
            "sgld_img_steps_per_s": [1e4, 1e3, 1e4],
        }
    )
    teacher = pd.Series({"FID": 30.0, "FID_std": 1.0, "IS": 4.0, "auroc_worst": 0.9, "sgld_img_steps_per_s": 100.0})
    fig = d.plot_vs_size(df, teacher)
    fid_ax, is_ax, auroc_ax = fig.axes[:3]
    assert any(c.has_yerr for c in fid_ax.containers)  # FID_std -> error bars
    assert not any(c.has_yerr for c in is_ax.containers)  # IS_std all NaN (one seed) -> none
    assert any(tuple(line.get_ydata()) == (d.AUROC_CHANCE, d.AUROC_CHANCE) for line in auroc_ax.lines)
    matplotlib.pyplot.close(fig)


def test_reproduction_loss_is_eq6_plain_mse_and_extensions_are_named(one_thread):
    """§3.4, eq. 6: the reproduction's energy term is the plain MSE; the balanced loss and gradient
    matching are extensions beside it."""
    assert d.REPRODUCTION == "eq6" and not d.VARIANT_BALANCED[d.REPRODUCTION]
    assert d.VARIANT_BALANCED["mixed"] and d.VARIANT_INPUTS[d.REPRODUCTION] == d.INPUT_KINDS
    teacher = _teacher()
    targets = _targets(teacher, torch.rand(24, 1, 28, 28) * 2 - 1, 24, seed=0)
    torch.manual_seed(1)
    eq6 = d.Distiller(d.build_student("cnn_2k"), targets, steps=1, batch_size=48, balanced=False)
    assert torch.equal(eq6.energy_w, torch.ones(len(targets))) and eq6.meta["loss"] == d.EQ6_LOSS_NAME
    batch = torch.arange(len(targets))
    terms = d.distill_loss(eq6.student, targets.x, targets.energy, None, 0.0, eq6.energy_w[batch])
    plain = ((eq6.student(targets.x) - targets.energy) ** 2).mean()
    assert torch.allclose(terms["energy"], plain)
    balanced = d.Distiller(d.build_student("cnn_2k"), targets, steps=1, batch_size=48)
    assert balanced.meta["loss"] == d.LOSS_NAME and not torch.equal(balanced.energy_w, eq6.energy_w)


def test_a_student_at_the_papers_ratio_for_any_teacher():
    assert d.paper_ratio_student(count_parameters(build_baseline("resnet18"))) == "resnet_77k"
    cnn = count_parameters(build_baseline("cnn_tutorial8"))
    name = d.paper_ratio_student(cnn)
    student = d.build_student(name)
    n = count_parameters(student)
    assert n == d.student_spec(name).params and 120 <= cnn / n <= 175  # 1/145 of 77,578 is 535
    assert torch.allclose(student(torch.zeros(2, 1, 28, 28)), student.logits(torch.zeros(2, 1, 28, 28)).mean(1))
    assert d.students_with_paper_ratio(cnn)[-1] == name and name not in d.students_for(cnn)
    assert d.students_with_paper_ratio(count_parameters(build_baseline("resnet18"))) == list(d.STUDENTS)
    assert d.extension_students(["cnn_20k", "cnn_7k", name]) == ["cnn_20k"]
    with pytest.raises(KeyError, match="unknown student"):
        d.build_student("cnn_x-2")


def test_students_train_half_the_teachers_epochs():
    assert get_profile("paper").student_epochs() == 30  # §4.5: 30 of 60
    assert get_profile("smoke").replace(epochs=12).student_epochs() == 6
    assert get_profile("smoke").replace(epochs=12, distill_epochs=4).student_epochs() == 4  # an explicit override
    p = get_profile("smoke").replace(epochs=4, distill_batch_size=10)
    assert d.num_steps(p, 95) == 2 * 10


def test_best_student_is_compared_by_fid_only_among_students_that_generate():
    from ebmhelpers.verdicts import References

    refs = References(base_IS=7.0, base_FID=300.0, noise_IS=1.0, noise_FID=2000.0)  # IS > 2.65, FID < 775 generate
    table = pd.DataFrame(
        {"student": ["a", "b", "c"], "variant": "eq6", "IS": [1.1, 3.0, 2.9], "FID": [500.0, 700.0, 600.0]}
    )
    assert d.best_student(table, refs).student == "c"  # a has the lowest FID but draws noise
    assert d.best_student(table.assign(IS=[1.1, 1.5, 1.2]), refs).student == "b"  # none generates: highest IS


def test_training_seeds_of_a_student_combine_by_the_law_of_total_variance(monkeypatch):
    """Two seeds with known per-seed means and generation stds: the row's std is the square root of
    the mean generation variance plus the variance of the seed means; params stays an integer."""
    per_seed = {
        0: {"IS": 4.0, "IS_std": 0.3, "FID": 100.0, "FID_std": 3.0, "heldout_rel_noise": 1.0},
        1: {"IS": 6.0, "IS_std": 0.4, "FID": 110.0, "FID_std": 4.0, "heldout_rel_noise": 3.0},
    }
    trained = [nn.Linear(1, 1), nn.Linear(1, 1)]

    def fake_score(ev, model, student, variant, held=None):
        seed = trained.index(model)
        row = {"student": student, "variant": variant, "model": f"{student}/{variant}", "params": 539, **per_seed[seed]}
        return row, pd.DataFrame(), torch.full((2, 1, 28, 28), float(seed))

    monkeypatch.setattr(d, "score_model", fake_score)
    row, samples = d.score_seeds(None, trained, "cnn_2-3-4-4", d.REPRODUCTION)
    assert row["IS"] == pytest.approx(5.0) and row["FID"] == pytest.approx(105.0)
    assert row["IS_std"] == pytest.approx(((0.3**2 + 0.4**2) / 2 + 1.0) ** 0.5)
    assert row["FID_std"] == pytest.approx(((3.0**2 + 4.0**2) / 2 + 25.0) ** 0.5)
    assert row["IS_train_std"] == pytest.approx(2**0.5) and row["heldout_rel_noise"] == pytest.approx(2.0)
    assert row["training_seeds"] == 2 and "training_seed" not in row and "rollbacks" not in row
    assert row["params"] == 539 and isinstance(row["params"], int) and row["student"] == "cnn_2-3-4-4"
    assert torch.equal(samples, torch.zeros(2, 1, 28, 28))  # the first seed's samples
    one, _ = d.score_seeds(None, trained[1:], "cnn_2-3-4-4", "mixed")
    assert one["IS_std"] == pytest.approx(0.4) and one["training_seeds"] == 1  # one seed: its own spread


def test_eq6_students_have_the_profiles_training_seeds_and_extensions_one():
    p = get_profile("cpu")
    assert d.training_seeds(p, d.REPRODUCTION) == p.training_seeds >= 2
    assert d.training_seeds(p, "mixed") == d.training_seeds(p, "real") == 1
    files = [d.student_file("cnn_7k", d.REPRODUCTION, s) for s in range(3)]
    assert files == ["student_cnn_7k_eq6", "student_cnn_7k_eq6_s1", "student_cnn_7k_eq6_s2"]


def test_figure3_rings_the_highlighted_student():
    df = pd.DataFrame(
        {
            "student": ["a", "b"],
            "variant": "eq6",
            "params": [100, 1000],
            "FID": [50.0, 40.0],
            "IS": [2.0, 3.0],
            "auroc_worst": [0.4, 0.7],
            "sgld_img_steps_per_s": [1e4, 1e3],
        }
    )
    teacher = pd.Series({"FID": 30.0, "IS": 4.0, "auroc_worst": 0.9, "sgld_img_steps_per_s": 100.0})
    fig = d.plot_vs_size(df, teacher, highlight=df.iloc[1])
    for ax, (col, _) in zip(fig.axes, d.FIGURE3_METRICS):
        rings = [c for c in ax.collections if c.get_label() == "best: b (eq6)"]
        assert len(rings) == 1 and tuple(rings[0].get_offsets()[0]) == (1000, df[col].iloc[1])
    matplotlib.pyplot.close(fig)


def test_quality_text_says_when_a_student_does_not_generate():
    from ebmhelpers.verdicts import References

    refs = References(base_IS=7.0, base_FID=300.0, noise_IS=1.0, noise_FID=2000.0)
    row = {"IS": 1.5, "IS_std": 0.01, "FID": 712.4, "FID_std": 7.6}
    assert d.quality_text(row, refs) == "IS 1.50 ± 0.01, FID 712 ± 8 (does not generate)"
    assert d.quality_text(pd.Series(row | {"IS": 3.5}), refs) == "IS 3.50 ± 0.01, FID 712 ± 8"


def test_committed_distillation_table_loads_with_its_declaration(committed_cpu_table):
    written = (*d.table_columns("cpu"), *TRAINING_SEED_COLUMNS)
    table = committed_cpu_table("distillation", d.table_columns(), written)
    assert (table.model == table.student + "/" + table.variant).all()
