"""The distillation-objectives study: which training objective gives a compressed EBM that still
draws digits, at equal training compute?

``python -m ebmhelpers distill-study`` trains students at about 1/4, 1/10 and 1/40 of the teacher's
parameters (:func:`student_for_ratio`, sized from the teacher's count) with each objective of
:data:`OBJECTIVES`, for a few training seeds, and scores each one on **validation digits**
(:class:`ValidationEvaluator`: the project's :class:`~ebmhelpers.metrics.Evaluator` with the
validation digits in place of the test digits as the FID reference and the OOD inputs). Every
scored cell is a row of ``results/<profile>/distillation_study.csv`` as soon as it finishes, with
the command that reproduces it; a rerun skips the rows already there, and an interrupted cell
resumes from its checkpoints (``checkpoints/<profile>/distill_study/``).

**Compute.** Every cell gets the same budget in FLOPs (:func:`budget_flops`: a fraction of the
teacher's own PCD training), counted with ``torch.utils.flop_counter`` on the very functions that
run (:func:`measure_costs`: forward, backward, double backward, SGLD steps), per image:

* the teacher's work an objective needs: its energies (a forward pass) or energies and input
  gradients on every distillation input, and the SGLD chains that produce the teacher-sample inputs
  (:data:`SGLD_RECORDS` states along each of ``len(buffer) / 8`` chains of the generation chain).
  Real digits, noise and the teacher's replay buffer (a by-product of its training) cost nothing;
* the student's distillation steps (one loss and backward pass on a batch), its PCD iterations
  (K SGLD steps and an update on data and samples) and the energy-scale fit.

:func:`plan_cell` turns the budget into step counts; what is left is below one step (one PCD
epoch's rounding for PCD runs: the run's epochs are cut so that it ends exactly where planned).
The Adam update itself (elementwise, a few FLOPs per parameter per step) is not counted.

**Selection and targets** are read from the table by :mod:`ebmhelpers.objective_study` (which notebook
05 reads too): ``summarize`` combines the training seeds of each (size, objective); ``choose_objective``
picks the objective with the best mean FID rank over the sizes (students that do not generate rank
last); ``targets`` states the goals as rules on a summary. ``--winners`` trains the chosen objective's
students for committing (:func:`train_winners`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .. import data as data_mod
from .. import distillation, objectives, pretrained
from ..metrics import OOD_TRANSFORMS, Evaluator, feature_stats
from ..models import count_parameters
from ..objective_study import (
    CONTROL,
    CSV_NAME,
    NOISE,
    REFERENCE_ROWS,
    TEACHER,
    choose_objective,
    command,
    of_budget,
    summarize,
)
from ..objective_study import targets as targets  # the command line prints them beside the summary
from ..profiles import Profile, get_profile
from ..runtime import Context, checkpoint_dir, get_device, seed_everything
from ..sampling import ReplayBuffer, frozen, sgld, sgld_step
from ..training import (
    DivergenceError,
    PCDTrainer,
    load_or_train_baseline,
    load_or_train_classifier,
    training_iterations,
)

RATIOS = (4, 10, 40)  # students at about 1/4, 1/10 and 1/40 of the teacher's parameters
BUDGET_FRACTION = 0.02  # each cell's budget: this fraction of the teacher's PCD training FLOPs
SEEDS = 2  # training seeds per (size, objective)
PCD_SHARE = 0.5  # distill-then-PCD: the share of the student's budget (after the teacher's work) spent on PCD
SGLD_RECORDS = 4  # states kept along each teacher chain (evenly spaced, the last one included)
SGLD_CHAIN_FRACTION = 8  # the teacher runs len(buffer) / this many chains to produce inputs
NAMED_SLACK = 1.25  # a named student within this factor below the target size is used as it is
GRID_CHANNELS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # widths of the 4-convolution CNN students
STUDY_KINDS = (*distillation.INPUT_KINDS, "sgld")  # the inputs: real, buffer, noise and the teacher's SGLD samples
FALLBACK_VAL_SIZE = 256  # validation digits held out for this study by a profile that holds out none (smoke)
# a cell's identity in the table: a rerun skips the cells whose key is there
KEY = ("teacher_arch", "ratio", "student", "objective", "seed", "budget_flops")


@dataclass(frozen=True)
class Objective:
    """One way to train a student: its distillation loss (None: no distillation), whether the
    teacher's input gradients are needed, the share of the budget spent on PCD, and whether the
    student's energy scale is fitted to the teacher's gradients at the end of distillation."""

    key: str
    label: str
    loss: str | None  # a key of LOSSES
    teacher_grads: bool = False
    pcd_share: float = 0.0
    scale_fit: bool = False
    pcd_from_teacher_buffer: bool = True  # PCD chains start from the teacher's buffer (False: from noise)


OBJECTIVES: dict[str, Objective] = {
    o.key: o
    for o in (
        Objective("eq6", "(a) eq. 6 on real, buffer, SGLD and noise inputs", "eq6"),
        Objective("score", "(b) input-gradient (score) matching", "score", teacher_grads=True),
        Objective("diff", "(c) pairwise energy differences", "diff"),
        Objective("rank", "(c) pairwise logistic ranking", "rank"),
        Objective("eq6+pcd", "(d) eq. 6, then PCD from the distilled student", "eq6", pcd_share=PCD_SHARE),
        Objective(
            "eq6+scale",
            "(e) eq. 6, then the energy scale fitted to the teacher's gradients",
            "eq6",
            teacher_grads=True,
            scale_fit=True,
        ),
        Objective(CONTROL, "(f) control: PCD from scratch", None, pcd_share=1.0, pcd_from_teacher_buffer=False),
    )
}


def make_loss(key: str, targets: distillation.DistillSet) -> objectives.Loss:
    """The loss function of ``key`` with its constants taken from the training ``targets``: the
    teacher's mean squared gradient (score) and the std of its energies (rank's temperature)."""
    if key == "eq6":
        return objectives.eq6_loss
    if key == "score":
        scale = float(targets.grad.double().pow(2).mean().clamp_min(torch.finfo(torch.float64).tiny))
        return functools.partial(objectives.score_loss, grad_scale=scale)
    if key == "diff":
        return objectives.difference_loss
    if key == "rank":
        return functools.partial(objectives.ranking_loss, tau=float(targets.energy.std().clamp_min(1e-6)))
    raise KeyError(f"unknown loss {key!r}")


# ---- students -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _grid() -> list[tuple[int, str]]:
    """(parameters, name) of every 4-convolution CNN of :data:`GRID_CHANNELS` (each layer at least
    as wide as the one before and at most twice), smallest first."""
    out = []
    for a in GRID_CHANNELS:
        for b in (c for c in GRID_CHANNELS if a <= c <= 2 * a):
            for c in (w for w in GRID_CHANNELS if b <= w <= 2 * b):
                for d in (w for w in GRID_CHANNELS if c <= w <= 2 * c):
                    name = f"cnn_{a}-{b}-{c}-{d}"
                    out.append((distillation.student_spec(name).params, name))
    return sorted(out)


def student_for_ratio(teacher_params: int, teacher_flops: int, ratio: float) -> str:
    """The student with at most 1/``ratio`` of the teacher's parameters and fewer FLOPs: the largest
    named student (:func:`distillation.students_for`) within :data:`NAMED_SLACK` of that size, else
    the largest 4-convolution CNN of the grid (:func:`_grid`) that fits."""
    target = teacher_params / ratio
    named = [
        n
        for n in distillation.students_for(teacher_params, teacher_flops)
        if target / NAMED_SLACK <= distillation.STUDENTS[n].params <= target
    ]
    if named:
        return max(named, key=lambda n: distillation.STUDENTS[n].params)
    for params, name in reversed(_grid()):
        if params <= target:
            with torch.device("meta"):
                if distillation.forward_flops(distillation.build_student(name)) < teacher_flops:
                    return name
    raise ValueError(f"no student has at most 1/{ratio:g} of {teacher_params:,} parameters")


# ---- compute accounting ---------------------------------------------------------------------
class FlopCount(TorchDispatchMode):
    """Sums the FLOPs of every operation dispatched while active, with ``torch.utils.flop_counter``'s
    formulas (convolutions and matrix products, forward and backward). ``FlopCounterMode`` itself
    tracks modules with hooks that refuse ``torch.autograd.grad`` on a leaf, which SGLD calls."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - the dispatch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = flop_registry.get(func._overloadpacket)
        if rule is not None:
            self.total += rule(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of running ``fn()`` once (:class:`FlopCount`)."""
    with FlopCount() as counter:
        fn()
    return counter.total


PROBE = 2  # images per counting probe; every count below is linear in the batch and divided by it


def _probe(n: int = PROBE) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


@dataclass(frozen=True)
class UnitCosts:
    """FLOPs per image of each unit of work (:func:`measure_costs`)."""

    teacher_forward: float
    teacher_energy_grad: float  # forward and input gradient (an SGLD step, or the targets with gradients)
    student_energy_grad: float
    student_update: float  # forward and backward to the parameters (one image of a PCD update)
    student_step: dict[str, float]  # one image of one distillation step, per loss


def measure_costs(teacher: nn.Module, student: nn.Module, losses: Sequence[str]) -> UnitCosts:
    """Count :class:`UnitCosts` by running each unit on :data:`PROBE` images (CPU copies of the
    models, so nothing the run trains is touched)."""
    import copy

    t, s = copy.deepcopy(teacher).cpu().float(), copy.deepcopy(student).cpu().float()
    x = _probe()
    cfg = dataclasses.replace(get_profile("smoke").sgld_config(1), noise_std=0.0)

    def sgld_once(model: nn.Module) -> float:
        with frozen(model):
            return count_flops(lambda: sgld_step(model, x.clone(), cfg, torch.empty_like(x))) / PROBE

    def update() -> None:
        s.zero_grad(set_to_none=True)
        s(x).sum().backward()

    def step(key: str) -> float:
        e, g = torch.zeros(PROBE), torch.zeros_like(x)
        fake = distillation.DistillSet(x, torch.zeros(PROBE, dtype=torch.long), e + torch.tensor([0.0, 1.0]), g + 1e-3)
        loss = make_loss(key, fake)

        def run() -> None:
            s.zero_grad(set_to_none=True)
            loss(s, x, fake.energy, fake.grad)["loss"].backward()

        return count_flops(run) / PROBE

    with torch.no_grad():
        t_fwd = count_flops(lambda: t(x)) / PROBE
    return UnitCosts(t_fwd, sgld_once(t), sgld_once(s), count_flops(update) / PROBE, {k: step(k) for k in losses})


def pcd_iteration_flops(costs: UnitCosts, profile: Profile) -> float:
    """One PCD iteration of the student: K SGLD steps on a batch and an update on data and samples."""
    return profile.batch_size * (profile.sgld_steps * costs.student_energy_grad + 2 * costs.student_update)


def budget_flops(teacher_costs: UnitCosts, profile: Profile, n_fit: int, fraction: float = BUDGET_FRACTION) -> float:
    """``fraction`` of the teacher's PCD training: its iterations x (K SGLD steps and an update)."""
    per_iter = profile.batch_size * (
        profile.sgld_steps * teacher_costs.teacher_energy_grad + 6 * teacher_costs.teacher_forward
    )
    return fraction * training_iterations(profile, n_fit) * per_iter


def pcd_schedule(max_iterations: int, iters_per_epoch: int) -> tuple[int, int]:
    """(epochs, iterations per epoch) of a PCD run of at most ``max_iterations``, as close below as
    whole epochs of equal length allow (short of it by less than one iteration per epoch)."""
    if max_iterations < 1:
        return 0, 0
    epochs = math.ceil(max_iterations / iters_per_epoch)
    return epochs, max_iterations // epochs


@dataclass(frozen=True)
class Plan:
    """What one cell may spend: FLOPs of the teacher's work, of its distillation steps, of its scale
    fit and of its PCD iterations, whose sum (:attr:`spent`) is at most :attr:`budget`."""

    objective: str
    budget: float
    teacher: float
    distill_steps: int
    step_flops: float  # one distillation step (a batch)
    pcd_epochs: int
    pcd_iters_per_epoch: int
    pcd_iteration_flops: float
    scale_fit: float

    @property
    def pcd_iterations(self) -> int:
        return self.pcd_epochs * self.pcd_iters_per_epoch

    @property
    def spent(self) -> float:
        return (
            self.teacher
            + self.distill_steps * self.step_flops
            + self.scale_fit
            + self.pcd_iterations * self.pcd_iteration_flops
        )

    @property
    def unit(self) -> float:
        """The largest indivisible piece of the budget: the most a plan may fall short of it."""
        return max(
            self.step_flops if self.distill_steps or self.scale_fit else 0.0,
            self.pcd_iteration_flops * max(self.pcd_epochs, 1) if self.pcd_iterations else 0.0,
        )


@dataclass(frozen=True)
class Workload:
    """The sizes that set a cell's costs: distillation inputs, teacher chains, PCD data."""

    n_inputs: int  # distillation inputs (all kinds)
    n_fit: int  # inputs the energy scale is fitted on (buffer and SGLD kinds)
    sgld_chains: int
    sgld_steps: int  # SGLD steps of each teacher chain
    distill_batch: int
    pcd_iters_per_epoch: int


def plan_cell(objective: Objective, costs: UnitCosts, budget: float, work: Workload, profile: Profile) -> Plan:
    """Split ``budget`` FLOPs among the parts of ``objective`` (module docstring); raises
    ``ValueError`` when the teacher's work alone exceeds it."""
    teacher = 0.0
    if objective.loss is not None:
        per_input = (
            costs.teacher_energy_grad if objective.teacher_grads and not objective.scale_fit else costs.teacher_forward
        )
        teacher = work.n_inputs * per_input + work.sgld_chains * work.sgld_steps * costs.teacher_energy_grad
        if objective.scale_fit:
            teacher += work.n_fit * (costs.teacher_energy_grad - costs.teacher_forward)
    left = budget - teacher
    if left <= 0:
        raise ValueError(f"{objective.key}: the teacher's work ({teacher:.3g} FLOPs) exceeds the budget ({budget:.3g})")
    scale_fit = work.n_fit * costs.student_energy_grad if objective.scale_fit else 0.0
    pcd_flops = pcd_iteration_flops(costs, profile)
    epochs, per_epoch = pcd_schedule(int(left * objective.pcd_share // pcd_flops), work.pcd_iters_per_epoch)
    step_flops = work.distill_batch * costs.student_step[objective.loss] if objective.loss else 0.0
    rest = left - scale_fit - epochs * per_epoch * pcd_flops
    steps = int(rest // step_flops) if objective.loss else 0
    if (objective.loss and steps < 1) or (objective.pcd_share > 0 and epochs * per_epoch < 1):
        raise ValueError(f"{objective.key}: a budget of {budget:.3g} FLOPs leaves no step to train")
    return Plan(objective.key, budget, teacher, steps, step_flops, epochs, per_epoch, pcd_flops, scale_fit)


# ---- inputs, validation scoring -------------------------------------------------------------
def teacher_sgld_inputs(teacher: nn.Module, profile: Profile, n_chains: int, device: torch.device) -> torch.Tensor:
    """:data:`SGLD_RECORDS` evenly spaced states of each of ``n_chains`` teacher chains from noise
    (the profile's generation chain, seeded), the last state included: the path a sampler walks."""
    cfg = profile.gen_sgld_config()
    every = max(1, cfg.steps // SGLD_RECORDS)
    seed_everything(profile.seed + 707)
    starts = torch.rand(n_chains, 1, 28, 28, device=device) * 2 - 1
    _, chain = sgld(teacher, starts, dataclasses.replace(cfg, steps=every * SGLD_RECORDS), record_every=every)
    return chain[1:].flatten(0, 1)


def study_inputs(
    teacher: nn.Module, profile: Profile, buffer: torch.Tensor, device: torch.device, progress: bool = True
) -> tuple[distillation.DistillSet, int]:
    """The distillation inputs (``distillation_inputs``' training part and the teacher's SGLD
    samples; kinds index :data:`STUDY_KINDS`) with the teacher's energies and input gradients, and
    the number of teacher chains that made the SGLD kind."""
    (x, kind), _ = distillation.distillation_inputs(profile, buffer, device)
    n_chains = max(1, len(buffer) // SGLD_CHAIN_FRACTION)
    sgld_x = teacher_sgld_inputs(teacher, profile, n_chains, device)
    x = torch.cat([x, sgld_x])
    kind = torch.cat([kind, torch.full((len(sgld_x),), STUDY_KINDS.index("sgld"), device=device)])
    return distillation.teacher_targets(teacher, x, kind, profile.eval_batch_size, progress), n_chains


class ValidationEvaluator(Evaluator):
    """The project's :class:`Evaluator` (the same classifier, seeds, generation chain and OOD
    transforms) with the validation digits in place of the test digits: the FID reference and
    the in-distribution digits of the OOD sets (transformed the same way). No test digit is scored."""

    def __init__(self, ctx: Context, classifier: nn.Module) -> None:
        super().__init__(ctx, classifier)
        p = ctx.profile
        val_x, val_y = data_mod.load_training_split("val", p.val_size, with_labels=True)
        self.real_mu, self.real_sigma = feature_stats(self._features(val_x[: p.n_fid_real]))
        n = min(len(val_x), p.n_ood or len(val_x))
        self.ood_x, self.ood_y = val_x[:n], val_y[:n]
        self.ood_sets = {name: t(self.ood_x) for name, t in OOD_TRANSFORMS.items()}
        self.ood_sets["fashion"] = data_mod.load_dataset("fashion", train=False, subset=n, seed=p.seed)[0]
        self.ood_sets["uniform"] = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(p.seed)) * 2 - 1


# ---- training one cell ----------------------------------------------------------------------
class ObjectiveDistiller(distillation.Distiller):
    """A :class:`~ebmhelpers.distillation.Distiller` (plain weights, same loop, checkpoints and
    history) whose batch loss is ``loss_fn`` (:mod:`ebmhelpers.objectives`)."""

    def __init__(self, *args: Any, loss_fn: objectives.Loss, **kwargs: Any) -> None:
        super().__init__(*args, balanced=False, **kwargs)
        self.loss_fn = loss_fn

    def _train_step(self, batch: torch.Tensor) -> torch.Tensor:
        t = self.targets
        terms = self.loss_fn(self.student, t.x[batch], t.energy[batch], t.grad[batch])
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        self.sched.step()
        return torch.stack([terms[k].detach() for k in distillation.LOSS_TERMS])


FIT_KINDS = ("buffer", "sgld")  # the energy scale is fitted where the sampler walks: the teacher's chains


def fit_mask(targets: distillation.DistillSet) -> torch.Tensor:
    """Which inputs the energy scale is fitted on (:data:`FIT_KINDS`)."""
    kinds = torch.tensor([STUDY_KINDS.index(k) for k in FIT_KINDS], device=targets.kind.device)
    return torch.isin(targets.kind, kinds)


@dataclass
class Setup:
    """What every cell of one run shares."""

    ctx: Context
    teacher: PCDTrainer
    targets: distillation.DistillSet
    images: torch.Tensor  # the PCD training digits
    work: Workload
    folder: Path  # the cells' checkpoints


def cell_name(student: str, objective: str, seed: int, budget: float) -> str:
    return f"{student}_{objective.replace('+', '-')}_s{seed}_b{budget:.3g}"


def train_cell(
    setup: Setup, student_name: str, objective: Objective, plan: Plan, seed: int, progress: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or resume) one student with ``objective`` as ``plan`` says; returns it (eval mode)
    and its columns: steps and iterations run, PCD rollbacks, fitted energy scale, outcome, training
    seconds, and, not columns, ``state``, the weights as :func:`pretrained.commit` stores them, and
    ``trained_here``, whether this call trained (False: the cell's checkpoints were complete)."""
    p, seconds = setup.ctx.profile, 0.0
    name = cell_name(student_name, objective.key, seed, plan.budget)
    seed_everything(p.seed + seed)
    student = distillation.build_student(student_name).to(setup.ctx.device)
    info: dict[str, Any] = {
        "distill_steps": 0,
        "pcd_iterations": 0,
        "pcd_rollbacks": 0,
        "energy_scale": 1.0,
        "outcome": "ok",
        "trained_here": False,
    }
    history: list[list[float]] = []  # the distillation's loss per step (what a committed student keeps)
    if objective.loss is not None:
        distiller = ObjectiveDistiller(
            student,
            setup.targets,
            plan.distill_steps,
            setup.work.distill_batch,
            seed=p.seed + seed,
            ckpt_path=setup.folder / f"{name}_distill.pt",
            ckpt_every=p.ckpt_every,
            meta={
                "loss": objective.loss,
                "student": student_name,
                "teacher": distillation.teacher_fingerprint(setup.teacher.model),
            },
            loss_fn=make_loss(objective.loss, setup.targets),
        )
        if not (distiller.load() and distiller.done):
            distiller.fit(progress=progress, desc=f"{student_name} {objective.key} (seed {seed})")
            info["trained_here"] = True
        student, info["distill_steps"] = distiller.student, distiller.step
        history = [list(r) for r in distiller.history.itertuples(index=False)]
        seconds += distiller.seconds
        if not math.isfinite(distiller.history.loss.iloc[-1]):
            info["outcome"] = "non-finite loss"
    if objective.scale_fit:
        t0, mask = time.perf_counter(), fit_mask(setup.targets)
        info["energy_scale"] = objectives.fit_energy_scale(
            student, setup.targets.x[mask], setup.targets.grad[mask], p.eval_batch_size
        )
        objectives.fold_energy_scale(student, info["energy_scale"])
        seconds += time.perf_counter() - t0
    if plan.pcd_iterations:
        pp = p.replace(
            seed=p.seed + seed,
            epochs=plan.pcd_epochs,
            max_iters_per_epoch=plan.pcd_iters_per_epoch,
            snapshot_epochs=(),
            ema_decays=(),
        )
        buffer = ReplayBuffer(
            pp.buffer_size, (1, 28, 28), pp.reinit_frac, setup.ctx.device, pp.buffer_max_age, pp.buffer_grows
        )
        if objective.pcd_from_teacher_buffer:
            buffer.samples = setup.teacher.buffer.samples.clone()
        trainer = PCDTrainer(
            student,
            pp,
            setup.images,
            ckpt_path=setup.folder / f"{name}_pcd.pt",
            device=setup.ctx.device,
            buffer=buffer,
            origin=f"study:{name}",
        )
        trainer.load()
        resumed_at = trainer.step
        try:
            trainer.fit(progress=progress)
        except DivergenceError as err:
            info["outcome"] = f"diverged: {err}"
            trainer.load()
        student = trainer.model
        info["trained_here"] |= trainer.step != resumed_at
        info["pcd_iterations"], info["pcd_rollbacks"] = trainer.step, len(trainer.rollbacks)
        seconds += trainer.seconds
    info["train_seconds"] = seconds  # over every call that trained this cell (kept in its checkpoints)
    info["state"] = {
        "model": pretrained.encode_masks(student.state_dict()),
        "step": info["distill_steps"] + info["pcd_iterations"],
        "history": pretrained.pack_history(history),
        "seconds": info["train_seconds"],
    }
    return student.eval(), info


# ---- the study ------------------------------------------------------------------------------
def study_context(profile: str | Profile | None = None, baseline: str | None = None) -> Context:
    """The profile the study runs (``profile``, default ``cpu``). A profile that holds out no
    validation digits gets :data:`FALLBACK_VAL_SIZE`, and ``baseline`` names another teacher
    architecture; either change gives the study a teacher (and classifier) of its own, trained in
    ``checkpoints/<profile>/distill_study/teacher_<arch>_val<n>``, never the profile's baseline."""
    base = profile if isinstance(profile, Profile) else get_profile(profile or "cpu")
    p = base
    if p.val_size <= 0:
        p = p.replace(val_size=FALLBACK_VAL_SIZE)
    if baseline:
        p = p.replace(baseline=baseline)
    if p == base:
        return Context(p, get_device())
    return Context(p, get_device(), checkpoint_dir(base) / "distill_study" / f"teacher_{p.baseline}_val{p.val_size}")


def reproduce_command(
    profile: str,
    objectives_: Sequence[str],
    ratios: Sequence[float],
    seeds: int,
    budget_fraction: float,
    baseline: str | None,
) -> str:
    """The command line that recomputes a run's rows."""
    cmd = [
        "python",
        "-m",
        "ebmhelpers",
        "distill-study",
        "--profile",
        profile,
        "--seeds",
        str(seeds),
        "--budget-fraction",
        f"{budget_fraction:g}",
    ]
    if list(objectives_) != list(OBJECTIVES):
        cmd += ["--objectives", *objectives_]
    if tuple(ratios) != RATIOS:
        cmd += ["--ratios", *(f"{r:g}" for r in ratios)]
    if baseline:
        cmd += ["--baseline", baseline]
    return shlex.join(cmd)


def _done(table: pd.DataFrame, key: dict[str, Any]) -> bool:
    """Whether ``table`` has the row of ``key`` (:data:`KEY`)."""
    if table.empty:
        return False
    same = pd.Series(True, index=table.index)
    for col, value in key.items():
        same &= (table[col] - value).abs() <= 1e-6 * value if col == "budget_flops" else table[col] == value
    return bool(same.any())


def cells_folder(ctx: Context) -> Path:
    """Where the cells' checkpoints go: ``checkpoints/<profile>/distill_study`` (or ``cells`` in the
    study's own teacher folder, :func:`study_context`)."""
    folder = ctx.checkpoints / ("distill_study" if ctx.checkpoint_folder is None else "cells")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prepare(ctx: Context, progress: bool = True) -> tuple[PCDTrainer, nn.Module, dict[float, str]]:
    """The teacher (trained or installed), the metric classifier, and the student of each ratio of :data:`RATIOS`."""
    teacher = load_or_train_baseline(ctx, progress=progress)
    classifier, _ = load_or_train_classifier(ctx, progress=progress)
    t_params, t_flops = count_parameters(teacher.model), distillation.forward_flops(teacher.model)
    return teacher, classifier, {float(r): student_for_ratio(t_params, t_flops, r) for r in RATIOS}


def run_study(
    profile: str | Profile | None = None,
    objective_keys: Sequence[str] | None = None,
    ratios: Sequence[float] = RATIOS,
    seeds: int = SEEDS,
    budget_fraction: float = BUDGET_FRACTION,
    baseline: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train and score every (ratio, objective, seed) cell that is not yet a row of the CSV, and
    the teacher once; each row is written as soon as its cell is scored. Returns the table."""
    keys = list(objective_keys or OBJECTIVES)
    unknown = [k for k in keys if k not in OBJECTIVES]
    if unknown:
        raise KeyError(f"unknown objective(s) {unknown}; choose from {list(OBJECTIVES)}")
    ctx = study_context(profile, baseline)
    p, device = ctx.profile, ctx.device
    command = reproduce_command(p.name, keys, ratios, seeds, budget_fraction, baseline)
    teacher, classifier, _ = prepare(ctx, progress)
    t_params, t_flops = count_parameters(teacher.model), distillation.forward_flops(teacher.model)
    students = {float(r): student_for_ratio(t_params, t_flops, r) for r in ratios}
    losses = sorted({o.loss for o in OBJECTIVES.values() if o.loss})
    costs = {s: measure_costs(teacher.model, distillation.build_student(s), losses) for s in set(students.values())}
    images = data_mod.load_training_split("fit", p.val_size, p.train_subset, p.seed, device)
    budget = budget_flops(next(iter(costs.values())), p, len(images), budget_fraction)
    out_csv = ctx.results / CSV_NAME
    table = pd.read_csv(out_csv) if out_csv.exists() else pd.DataFrame()
    common = {
        "profile": p.name,
        "teacher_arch": p.baseline,
        "budget_flops": float(budget),
        "budget_fraction": budget_fraction,
        "flop_unit": "FLOPs (torch.utils.flop_counter)",
    }
    ev: ValidationEvaluator | None = None

    def save(row: dict[str, Any]) -> None:
        nonlocal table
        table = pd.concat([table, pd.DataFrame([row | {"command": command}])], ignore_index=True)
        table.to_csv(out_csv, index=False)

    teacher_key = {"teacher_arch": p.baseline, "ratio": 1.0, "student": p.baseline, "objective": TEACHER, "seed": 0}
    if not _done(table, teacher_key):
        ev = ValidationEvaluator(ctx, classifier)
        row, _, _ = ev.score(teacher.model, TEACHER)
        save(common | teacher_key | {"target_params": t_params} | row)
    noise_key = teacher_key | {"student": NOISE, "objective": NOISE, "ratio": math.inf}
    if not _done(table, noise_key):
        ev = ev or ValidationEvaluator(ctx, classifier)
        noise = torch.rand(p.n_gen, 1, 28, 28, generator=torch.Generator().manual_seed(p.seed + 1)) * 2 - 1
        save(common | noise_key | {"params": 0} | ev.quality_of_samples(noise))
    todo = [
        (r, k, s)
        for r in students
        for k in keys
        for s in range(seeds)
        if not _done(
            table,
            {
                "teacher_arch": p.baseline,
                "ratio": r,
                "student": students[r],
                "objective": k,
                "seed": s,
                "budget_flops": float(budget),
            },
        )
    ]
    if todo:
        from ..progress import tqdm

        targets, n_chains = study_inputs(teacher.model, p, teacher.buffer.samples, device, progress)
        fit = int(fit_mask(targets).sum())
        work = Workload(
            len(targets),
            fit,
            n_chains,
            SGLD_RECORDS * max(1, p.gen_sgld_config().steps // SGLD_RECORDS),
            p.distill_batch_size,
            training_iterations(p.replace(epochs=1), len(images)),
        )
        setup = Setup(ctx, teacher, targets, images, work, cells_folder(ctx))
        ev = ev or ValidationEvaluator(ctx, classifier)
        for ratio, key, seed in tqdm(todo, desc="distillation study cells", disable=not progress):
            name = students[ratio]
            plan = plan_cell(OBJECTIVES[key], costs[name], budget, work, p)
            model, info = train_cell(setup, name, OBJECTIVES[key], plan, seed, progress)
            info.pop("state"), info.pop("trained_here")
            t0 = time.perf_counter()
            row, _, _ = ev.score(model, f"{name}/{key}/s{seed}")
            save(
                common
                | {
                    "teacher_arch": p.baseline,
                    "ratio": ratio,
                    "target_params": t_params / ratio,
                    "student": name,
                    "objective": key,
                    "seed": seed,
                    "label": OBJECTIVES[key].label,
                    "teacher_flops": plan.teacher,
                    "student_flops": plan.spent - plan.teacher,
                    "spent_flops": plan.spent,
                    "budget_used": plan.spent / budget,
                    "planned_distill_steps": plan.distill_steps,
                    "planned_pcd_iterations": plan.pcd_iterations,
                    **info,
                    "score_seconds": time.perf_counter() - t0,
                }
                | row
            )
    if len(table):
        from ..plotting import plot_distill_study

        plot_distill_study(
            summarize(of_budget(table)),
            title=f"distillation objectives at equal compute (validation digits)\n{ctx.label()}",
            save=ctx.figures / "distillation_study.png",
        )
    return table


# ---- winners --------------------------------------------------------------------------------
def winner_file(student: str, objective: str) -> str:
    """The committed name of a winning student: ``student_<name>_study_<objective>``."""
    return distillation.student_file(student, f"study_{objective.replace('+', '-')}")


def train_winners(
    profile: str | Profile | None = None,
    objective: str | None = None,
    baseline: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train (or take from the study's checkpoints) seed 0 of ``objective``'s students (default:
    :func:`choose_objective` on the study's table) at every ratio of the table, and commit each
    one through the manifest (kind ``student``, :func:`pretrained.commit`), with the hardware of the
    study's row where its cell's checkpoint is taken as it was; returns the entries."""
    ctx = study_context(profile, baseline)
    p = ctx.profile
    out_csv = ctx.results / CSV_NAME
    if not out_csv.exists():
        raise FileNotFoundError(f"no {out_csv}: run `{command(p.name)}` first")
    table = of_budget(pd.read_csv(out_csv))
    objective = objective or choose_objective(summarize(table))
    budget = float(table[~table.objective.isin(REFERENCE_ROWS)].budget_flops.iloc[-1])
    teacher, _, _ = prepare(ctx, progress)
    rows = table[(table.objective == objective) & (table.seed == 0)]
    if rows.empty:
        raise ValueError(f"the study table has no seed-0 row of objective {objective!r}")
    images = data_mod.load_training_split("fit", p.val_size, p.train_subset, p.seed, ctx.device)
    targets, n_chains = study_inputs(teacher.model, p, teacher.buffer.samples, ctx.device, progress)
    work = Workload(
        len(targets),
        int(fit_mask(targets).sum()),
        n_chains,
        SGLD_RECORDS * max(1, p.gen_sgld_config().steps // SGLD_RECORDS),
        p.distill_batch_size,
        training_iterations(p.replace(epochs=1), len(images)),
    )
    setup = Setup(ctx, teacher, targets, images, work, cells_folder(ctx))
    losses = sorted({o.loss for o in OBJECTIVES.values() if o.loss})
    entries = []
    for row in rows.itertuples():
        costs = measure_costs(teacher.model, distillation.build_student(row.student), losses)
        plan = plan_cell(OBJECTIVES[objective], costs, budget, work, p)
        _, info = train_cell(setup, row.student, OBJECTIVES[objective], plan, 0, progress)
        entries.append(
            pretrained.commit(
                p.name,
                winner_file(row.student, objective),
                "student",
                info["state"],
                architecture=row.student,
                iterations=info["state"]["step"],
                seconds=info["train_seconds"],
                command=f"{row.command} --winners",
                trained_on=None if info["trained_here"] else row.hardware,  # taken as its row was scored
                seed=0,
                parent=teacher.identity,
                variant=f"study_{objective}",
                budget_flops=budget,
            )
        )
    return entries
