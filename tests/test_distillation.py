import copy

import pytest
import torch
from torch import nn

from ebmhelpers import data
from ebmhelpers import distillation as d
from ebmhelpers.models import EnergyModel, ResNetEnergy, Swish, count_parameters
from ebmhelpers.profiles import get_profile


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
    assert counts[-1] < d.BASELINE_PARAMS == count_parameters(ResNetEnergy())
    table = d.student_table()
    assert list(table.student) == list(d.STUDENTS) and table.params.tolist() == [s.params for s in d.STUDENTS.values()]
    with pytest.raises(KeyError, match="unknown student"):
        d.build_student("resnet_huge")


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


def test_gradient_matching_loss_is_zero_when_student_is_teacher():
    teacher = _teacher()
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    _, g_t = d.input_gradient(teacher, x)
    assert float(d.gradient_matching_loss(copy.deepcopy(teacher), x, g_t).detach()) < 1e-12
    terms = d.distill_loss(copy.deepcopy(teacher), x, teacher(x).detach(), g_t, grad_weight=1.0)
    assert float(terms["loss"].detach()) < 1e-12
    torch.manual_seed(3)
    other = ResNetEnergy((1, 1), (8, 16))
    assert float(d.gradient_matching_loss(other, x, g_t).detach()) > 1e-3 * float(g_t.pow(2).mean())


def test_gradient_matching_term_trains_the_student_parameters():
    """Needs create_graph=True: without it the input gradient is a constant to the optimizer."""
    teacher, student = _teacher(), d.build_student("cnn_2k")
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    _, g_t = d.input_gradient(teacher, x)
    d.gradient_matching_loss(student, x, g_t, scale=float(g_t.pow(2).mean())).backward()
    grads = [p.grad for p in student.parameters() if p.dim() > 1]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="input gradients"):
        d.distill_loss(student, x, torch.zeros(8), None, grad_weight=1.0)


def test_distiller_resumes_to_the_same_state(tmp_path, one_thread):
    teacher = _teacher()
    targets = _targets(teacher, torch.rand(24, 1, 28, 28) * 2 - 1, 24, seed=0)

    def make(path):
        torch.manual_seed(5)
        return d.Distiller(d.build_student("cnn_2k"), targets, steps=6, batch_size=8, grad_weight=1.0,
                           ckpt_path=path, ckpt_every=2, meta={"student": "cnn_2k"})  # fmt: skip

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
    other = d.Distiller(d.build_student("cnn_2k"), targets, steps=7, batch_size=8, ckpt_path=tmp_path / "full.pt",
                        meta={"student": "cnn_2k"})  # fmt: skip
    with pytest.raises(ValueError, match="different distillation run"):
        other.load()


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
