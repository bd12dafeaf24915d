"""The distillation-objectives study: compute accounting, the new losses, student sizes,
resumability and a smoke run of a tiny grid (the table's reading: tests/test_objective_study.py)."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from ebmhelpers import distillation, objectives, pretrained
from ebmhelpers.models import ConvEnergy, build_baseline, count_parameters
from ebmhelpers.profiles import get_profile
from ebmhelpers.tools import distill_study as ds

LOSSES = ("eq6", "score", "diff", "rank")


class Shifted(nn.Module):
    """``model``'s energy plus a constant."""

    def __init__(self, model: nn.Module, shift: float) -> None:
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shift


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    return ConvEnergy((4, 8, 8)), ConvEnergy((4, 4, 8)), torch.rand(12, 1, 28, 28) * 2 - 1


def _targets(teacher: nn.Module, x: torch.Tensor) -> distillation.DistillSet:
    return distillation.teacher_targets(teacher, x, torch.zeros(len(x), dtype=torch.long), 64, progress=False)


# ---- the losses ---------------------------------------------------------------------------
def test_difference_loss_ignores_a_constant_offset_and_eq6_does_not():
    teacher, student, x = _pair()
    t = _targets(teacher, x)
    base = objectives.difference_loss(student, x, t.energy, t.grad)["loss"]
    shifted = objectives.difference_loss(Shifted(student, 3.0), x, t.energy, t.grad)["loss"]
    assert torch.allclose(base, shifted, rtol=1e-5)
    eq6 = objectives.eq6_loss(student, x, t.energy, t.grad)["loss"]
    assert objectives.eq6_loss(Shifted(student, 3.0), x, t.energy, t.grad)["loss"] > eq6 + 1.0
    # a student that is the teacher plus a constant has no difference error, but an eq. 6 error of constant^2
    assert objectives.difference_loss(Shifted(teacher, 3.0), x, t.energy, t.grad)["loss"] < 1e-8
    assert torch.isclose(objectives.eq6_loss(Shifted(teacher, 3.0), x, t.energy, t.grad)["loss"], torch.tensor(9.0))


def test_difference_loss_is_the_mean_over_pairs_of_squared_difference_errors():
    teacher, student, x = _pair(1)
    t = _targets(teacher, x)
    with torch.no_grad():
        e = student(x)
    pairs = ((e[:, None] - e[None, :]) - (t.energy[:, None] - t.energy[None, :])).pow(2).mean()
    assert torch.isclose(objectives.difference_loss(student, x, t.energy, t.grad)["loss"], pairs, rtol=1e-5)


def test_ranking_loss_ignores_a_constant_is_minimal_at_the_teacher_and_punishes_reversed_orders():
    teacher, student, x = _pair(2)
    t = _targets(teacher, x)
    tau = float(t.energy.std())
    loss = objectives.ranking_loss(student, x, t.energy, t.grad, tau)["loss"]
    shifted = objectives.ranking_loss(Shifted(student, -5.0), x, t.energy, t.grad, tau)["loss"]
    assert torch.allclose(loss, shifted, rtol=1e-3)  # float32 rounding of energies shifted by many tau
    # as a function of the student's energies: zero gradient at the teacher's (shifted) energies
    e = (t.energy.double() + 3 * tau).requires_grad_(True)
    objectives.pairwise_logistic(e, t.energy.double(), tau).backward()
    assert e.grad.abs().max() < 1e-9
    at_teacher = objectives.pairwise_logistic(t.energy, t.energy, tau)
    assert objectives.pairwise_logistic(-t.energy, t.energy, tau) > at_teacher + 0.05  # every order reversed
    assert objectives.pairwise_logistic(t.energy + 0.3 * torch.randn(len(x)), t.energy, tau) > at_teacher


def test_score_loss_is_zero_for_the_teacher_shifted_and_positive_otherwise():
    teacher, student, x = _pair(3)
    t = _targets(teacher, x)
    scale = float(t.grad.pow(2).mean())
    assert objectives.score_loss(Shifted(teacher, 7.0), x, t.energy, t.grad, scale)["loss"] < 1e-10
    terms = objectives.score_loss(student, x, t.energy, t.grad, scale)
    assert terms["loss"] > 0.1  # relative error: a random network's gradients are far from the teacher's
    terms["loss"].backward()  # and it trains the parameters (double backward)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_energy_scale_fit_recovers_a_known_temperature_and_folding_scales_the_energy():
    teacher, _, x = _pair(4)
    t = _targets(teacher, x)
    half = ConvEnergy((4, 8, 8))
    half.load_state_dict(teacher.state_dict())
    objectives.fold_energy_scale(half, 0.5)
    with torch.no_grad():
        assert torch.allclose(half(x), 0.5 * teacher(x), atol=1e-5)
    assert math.isclose(objectives.fit_energy_scale(half, x, t.grad, 64), 2.0, rel_tol=1e-4)
    assert count_parameters(half) == count_parameters(teacher)


# ---- students and compute ------------------------------------------------------------------
def test_students_are_sized_from_the_teachers_count_and_no_larger():
    teacher = build_baseline("cnn_tutorial8")
    tp, tf = count_parameters(teacher), distillation.forward_flops(teacher)
    names = [ds.student_for_ratio(tp, tf, r) for r in ds.RATIOS]
    sizes = [distillation.student_spec(n).params for n in names]
    assert sizes == sorted(sizes, reverse=True) and len(set(names)) == len(names)
    for r, n in zip(ds.RATIOS, sizes):
        assert tp / r / 2 <= n <= tp / r  # at most 1/ratio of the teacher, and not far below it
    # a teacher twice as large gets larger students (computed, not a fixed list)
    assert distillation.student_spec(ds.student_for_ratio(2 * tp, 10 * tf, 40)).params > sizes[-1]


@pytest.fixture(scope="module")
def costs():
    torch.manual_seed(0)
    return ds.measure_costs(build_baseline("cnn_tutorial8"), distillation.build_student("cnn_7k"), LOSSES)


def test_flop_counts_are_those_of_the_passes(costs):
    teacher = build_baseline("cnn_tutorial8")
    fwd = distillation.forward_flops(teacher)
    assert costs.teacher_forward == fwd
    assert 1.5 * fwd <= costs.teacher_energy_grad <= 3 * fwd  # forward and the input-gradient backward
    assert costs.student_step["score"] > 2 * costs.student_step["eq6"]  # double backward costs more
    assert costs.student_step["diff"] == costs.student_step["rank"] == costs.student_step["eq6"]


def test_every_objective_spends_the_same_budget(costs):
    p = get_profile("cpu")
    work = ds.Workload(
        n_inputs=20_000, n_fit=4_000, sgld_chains=256, sgld_steps=64, distill_batch=128, pcd_iters_per_epoch=430
    )
    budget = ds.budget_flops(costs, p, 55_000, 0.02)
    plans = {k: ds.plan_cell(o, costs, budget, work, p) for k, o in ds.OBJECTIVES.items()}
    for key, plan in plans.items():
        parts = (
            plan.teacher
            + plan.distill_steps * plan.step_flops
            + plan.scale_fit
            + plan.pcd_iterations * plan.pcd_iteration_flops
        )
        assert plan.spent == pytest.approx(parts)
        assert budget - plan.unit < plan.spent <= budget, key
    # the teacher's SGLD counts where it makes inputs; the control uses no teacher
    assert plans["pcd"].teacher == 0 and plans["eq6"].teacher >= 256 * 64 * costs.teacher_energy_grad
    assert plans["score"].teacher > plans["eq6"].teacher  # it needs the teacher's input gradients
    assert plans["eq6"].distill_steps > plans["eq6+pcd"].distill_steps > 0 < plans["eq6+pcd"].pcd_iterations
    assert plans["score"].distill_steps < plans["eq6"].distill_steps
    doubled = ds.plan_cell(ds.OBJECTIVES["pcd"], costs, 2 * budget, work, p)
    assert doubled.pcd_iterations >= 2 * plans["pcd"].pcd_iterations - 2
    with pytest.raises(ValueError, match="exceeds the budget"):
        ds.plan_cell(ds.OBJECTIVES["eq6"], costs, plans["eq6"].teacher / 2, work, p)


def test_a_distillation_run_spends_what_its_plan_counts(costs, one_thread):
    """Counting the FLOPs of the training that actually runs gives the planned student FLOPs."""
    teacher, _, _ = _pair(5)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1
    t = _targets(teacher, x)
    for key in ("eq6", "score"):
        torch.manual_seed(0)
        student = distillation.build_student("cnn_7k")
        steps = 3
        run = ds.ObjectiveDistiller(student, t, steps, 16, loss_fn=ds.make_loss(key, t))
        counted = ds.count_flops(lambda: run.fit(progress=False))
        assert counted == pytest.approx(steps * 16 * costs.student_step[key], rel=1e-6), key


def test_pcd_schedule_ends_where_planned_and_within_one_iteration_per_epoch():
    for n, per_epoch in ((7, 430), (430, 430), (431, 430), (1712, 430), (999, 100)):
        epochs, length = ds.pcd_schedule(n, per_epoch)
        assert length <= per_epoch and n - epochs < epochs * length <= n
    assert ds.pcd_schedule(0, 430) == (0, 0)


# ---- a smoke run: resumable, checkpointed, committed ----------------------------------------
def test_smoke_grid_resumes_without_recomputing_and_commits_winners(tmp_path, monkeypatch, one_thread):
    for var, sub in (
        ("EBM_HOME", ""),
        ("EBM_CHECKPOINT_DIR", "checkpoints"),
        ("EBM_RESULTS_DIR", "results"),
        ("EBM_FIGURES_DIR", "figures"),
    ):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    profile = get_profile("smoke").replace(
        n_gen=16,
        n_fid_real=128,
        n_ood=64,
        latency_repeats=2,
        epochs=1,
        max_iters_per_epoch=8,
        clf_train_subset=1024,
        train_subset=256,
        buffer_size=64,
        distill_batch_size=16,
    )
    grid = dict(
        objective_keys=["eq6", "eq6+pcd", "eq6+scale", "pcd"],
        ratios=(40,),
        seeds=1,
        budget_fraction=0.4,
        baseline="cnn_tutorial8",
        progress=False,
    )
    trained = []
    real_train_cell = ds.train_cell

    def killed_after_one(*args, **kwargs):
        if trained:
            raise KeyboardInterrupt
        trained.append(args[2].key)
        return real_train_cell(*args, **kwargs)

    monkeypatch.setattr(ds, "train_cell", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        ds.run_study(profile, **grid)
    ctx = ds.study_context(profile, "cnn_tutorial8")
    first = pd.read_csv(ctx.results / ds.CSV_NAME)
    assert list(first.objective) == [ds.TEACHER, ds.NOISE, "eq6"]

    def counting(*args, **kwargs):
        trained.append(args[2].key)
        return real_train_cell(*args, **kwargs)

    monkeypatch.setattr(ds, "train_cell", counting)
    table = ds.run_study(profile, **grid)
    assert trained == ["eq6", "eq6+pcd", "eq6+scale", "pcd"]  # eq6 once, before the kill
    pd.testing.assert_frame_equal(table.iloc[:3].reset_index(drop=True), first, check_dtype=False)
    students = table[~table.objective.isin(ds.REFERENCE_ROWS)].set_index("objective")
    assert (students.distill_steps == students.planned_distill_steps).all()
    assert (students.pcd_iterations == students.planned_pcd_iterations).all()
    assert (students.budget_used <= 1).all() and students.budget_flops.nunique() == 1
    assert students.pcd_iterations["pcd"] > 0 and students.distill_steps["pcd"] == 0
    assert students.energy_scale["eq6+scale"] != 1.0
    assert table.command.str.contains("distill-study --profile smoke").all()
    assert (ctx.figures / "distillation_study.png").exists()
    trained.clear()
    ds.run_study(profile, **grid)
    assert trained == []  # every row done: nothing retrained
    monkeypatch.setattr(pretrained, "hardware", lambda: "the committing process")
    entries = ds.train_winners(profile, "eq6+scale", "cnn_tutorial8", progress=False)
    assert [e["kind"] for e in entries] == ["student"]
    assert entries[0]["hardware"] == students.hardware["eq6+scale"]  # the cell's trainer, not the committer
    state = pretrained.load(profile.name, entries[0]["name"], architecture=entries[0]["architecture"])
    assert state["step"] == students.distill_steps["eq6+scale"]


def test_cli_refuses_an_unknown_objective(capsys):
    from ebmhelpers.tools.cli import main

    assert main(["distill-study", "--profile", "smoke", "--objectives", "nonsense"]) == 2
    assert "unknown objective" in capsys.readouterr().err
