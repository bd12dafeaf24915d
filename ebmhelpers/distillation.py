"""Knowledge distillation of the EBM into small students (the paper's Section 3.4, eq. 6).

A student is a small :class:`~ebmhelpers.models.EnergyModel` trained to reproduce the
teacher's energy on a fixed set of inputs. **The reproduction** (variant :data:`REPRODUCTION`,
``eq6``) minimizes the paper's loss, eq. 6, the plain MSE of energies
``mean((E_t(x) - E_s(x))^2)``, for half the teacher's epochs (§4.5: 30 of 60;
:meth:`Profile.student_epochs`), on every student smaller than the teacher, among them one with
1/145 of the teacher's parameters (§5; :func:`paper_ratio_student`). The paper does not say on
which inputs; here they are the mixed set below. Two **named extensions** sit beside it: the
kind-balanced loss (variants ``mixed`` and ``real``) and gradient matching (``mixed+grad``).
Where the inputs come from matters. Real digits alone only show the student the low-energy valley, while
SGLD starts from noise and walks through high-energy regions first; so the distillation set
mixes three *kinds* of inputs: real digits, the teacher's replay buffer (its persistent SGLD
chains) and uniform noise. Only students with fewer parameters than the teacher are distilled
(:func:`students_for`), whatever the profile's baseline architecture.

**Balancing the kinds (extension).** One MSE over the mix is ruled by whichever kind has the largest
energies: buffer and noise energies are several times those of real digits, so a student can
leave the digits' energies flat and still have a small loss. Instead every kind ``k`` gets its
own *relative* squared error, its MSE divided by the mean square ``s_k`` of the teacher's
energies on that kind (over the training targets), and the kinds present are averaged with
equal weight::

    L_E = 1/K * sum_k  mean_{x in k} (E_s(x) - E_t(x))^2 / s_k

So every kind is asked for the same *fraction* of its own energy scale: a student whose error
is 10% of each kind's scale pays the same on each, and multiplying one kind's energies by 10
leaves its share of the loss unchanged. Energies have a natural zero here: the training loss's
``alpha (E(x+)^2 + E(x-)^2)`` term pulls both real and sampled energies towards 0, which is
what makes their magnitude a scale. The mean square is used rather than the variance within
each kind: the teacher's energy on noise is nearly constant, and dividing by its tiny variance
made that plateau dominate the loss and the wide buffer energies count least. A kind with energies all near 0
would still get a tiny ``s_k``, so ``s_k`` is floored at :data:`SCALE_FLOOR` times the mean
square over all training inputs. In a minibatch the same objective is an importance-weighted
MSE: input ``i`` of kind ``k`` weighs ``N / (K n_k s_k)`` (``n_k`` inputs of kind ``k`` among
``N``), which makes the minibatch loss an unbiased estimate of ``L_E`` whatever the batch's mix
(:meth:`DistillSet.loss_weights`). With one kind the loss is that kind's relative MSE.

**Gradient matching (extension).** Sampling follows the input gradient ``dE/dx``, which the energy MSE does
not constrain. The optional term ``w * L_G`` is built the same way, with ``g_k`` the mean
squared teacher gradient on kind ``k`` (floored likewise):
``L_G = 1/K * sum_k mean_{x in k} mean_pixels (dE_s/dx - dE_t/dx)^2 / g_k``. Both terms are
relative squared errors, so ``w = 1`` weighs them alike. The teacher's gradient is far smaller
on noise than on digits, so without the balance the directions where every SGLD chain starts
would hardly count.

Teacher energies and input gradients are computed once per input set (:func:`teacher_targets`),
so training a student never runs the teacher again. :class:`Distiller` is resumable: it writes
checkpoints atomically and a restarted run continues at the last one.
:func:`heldout_errors` reports, per kind of held-out input, the energy MSE, the relative error
``MSE / variance of the teacher's energies on that kind`` (comparable across kinds: 1 is what
predicting the kind's mean energy gives) and the cosine between the student's and the
teacher's input gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import data as data_mod
from . import metrics, paper, results, verdicts
from .loop import LoopTrainer, ResumableLoop, Window
from .metrics import Evaluator
from .models import ConvEnergy, EnergyModel, ResNetEnergy
from .plotting import finish, image_grid
from .profiles import Profile
from .pruning import combine_training_seeds
from .checkpoints import load_checkpoint
from .runtime import Context, seed_everything
from .sampling import batched_energy_grad, generate

PAPER_STUDENT_PARAMS = int(paper.STUDENT_PARAMS.value)  # §5: the paper's best student, 145x fewer parameters
PAPER_RATIO = paper.STUDENT_RATIO.value  # §5 "145x fewer parameters than the baseline"

INPUT_KINDS = ("real", "buffer", "noise")
REPRODUCTION = "eq6"  # the paper's loss, eq. 6 (plain MSE of energies), on the mixed inputs
# Which input kinds each variant distils on (notebook 05's ablation of the inputs), and whether its energy
# term is the kind-balanced extension (True) or eq. 6's plain MSE (False).
VARIANT_INPUTS = {REPRODUCTION: INPUT_KINDS, "real": ("real",), "mixed": INPUT_KINDS}
VARIANT_BALANCED = {REPRODUCTION: False, "real": True, "mixed": True}
HOLDOUT_FRACTION = 8  # 1/8 of the teacher's buffer is held out; as many test digits and noise join it
DISTILL_LR = 1e-3  # Adam, cosine-annealed to 0 over the run
GRAD_WEIGHT = 1.0  # weight of the (relative) gradient-matching term when it is on
# A kind's loss scale (and held-out variance) is at least this fraction of the same statistic over
# all inputs together: a kind whose RMS energy is below 1% of the whole set's is held to that 1%.
SCALE_FLOOR = 1e-4
LOSS_NAME = (
    "per-kind relative (mean square)"  # stored in checkpoints: students trained with another loss are not reused
)
EQ6_LOSS_NAME = "eq. 6 plain MSE"
# Chain lengths, as fractions of ``profile.gen_steps``, for sampling a student from the teacher's buffer.
BUFFER_CHAIN_FRACTIONS = (0.25, 1.0)


# ---- students ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentSpec:
    """One student architecture: how to build it and how many parameters it has."""

    name: str
    family: str
    architecture: str
    params: int  # the table; a test checks it against the built model
    build: Callable[[], EnergyModel]


STUDENTS: dict[str, StudentSpec] = {
    s.name: s
    for s in (
        StudentSpec(
            "resnet_slim",
            "ResNet",
            "ResNet18 layout [2,2,2,2] at half width 32/64/128/256",
            2_794_634,
            lambda: ResNetEnergy((2, 2, 2, 2), (32, 64, 128, 256)),
        ),
        StudentSpec(
            "resnet_small",
            "ResNet",
            "ResNet [1,1,1,1], widths 16/32/64/128",
            307_818,
            lambda: ResNetEnergy((1, 1, 1, 1), (16, 32, 64, 128)),
        ),
        StudentSpec(
            "resnet_77k",
            "ResNet",
            "ResNet [1,1,1], widths 10/26/72 (the paper's 77,004)",
            77_004,
            lambda: ResNetEnergy((1, 1, 1), (10, 26, 72)),
        ),
        StudentSpec(
            "cnn_20k",
            "CNN",
            "4 convs 8/16/32/32, linear 128-32-10",
            19_722,
            lambda: ConvEnergy((8, 16, 32, 32), hidden=32),
        ),
        StudentSpec(
            "cnn_7k",
            "CNN",
            "4 convs 8/16/16/16, linear 64-16-10",
            7_226,
            lambda: ConvEnergy((8, 16, 16, 16), hidden=16),
        ),
        StudentSpec("cnn_2k", "CNN", "3 convs 4/8/8, linear 128-10", 2_274, lambda: ConvEnergy((4, 8, 8))),
    )
}
PAPER_SIZED_STUDENT = "resnet_77k"
# Students trained a second time with the gradient-matching term (the "beyond the paper" part).
GRAD_MATCH_STUDENTS = (PAPER_SIZED_STUDENT, "cnn_20k")


def _tiny_cnn_spec(channels: tuple[int, ...]) -> StudentSpec:
    name = "cnn_" + "-".join(str(c) for c in channels)
    with torch.device("meta"):
        params = sum(p.numel() for p in ConvEnergy(channels).parameters())
    return StudentSpec(
        name,
        "CNN",
        f"{len(channels)} convs {'/'.join(map(str, channels))}, linear to 10 (sized to 1/145 of the teacher)",
        params,
        lambda: ConvEnergy(channels),
    )


def student_spec(name: str) -> StudentSpec:
    """The spec of a student of :data:`STUDENTS`, or of a tiny CNN named by its channels
    (``cnn_2-3-4-4``: four convolutions of 2, 3, 4, 4 channels; :func:`paper_ratio_student`)."""
    if name in STUDENTS:
        return STUDENTS[name]
    parts = name.removeprefix("cnn_").split("-")
    if name.startswith("cnn_") and len(parts) > 1 and all(p.isdigit() and int(p) > 0 for p in parts):
        return _tiny_cnn_spec(tuple(int(p) for p in parts))
    raise KeyError(f"unknown student {name!r}; choose one of {list(STUDENTS)} or cnn_<c1>-<c2>-...")


def build_student(name: str) -> EnergyModel:
    """A freshly initialized student (seed the RNG first for reproducible weights)."""
    return student_spec(name).build()


def paper_ratio_student(teacher_params: int, ratio: float = PAPER_RATIO) -> str:
    """The student with 1/``ratio`` of the teacher's parameters (§5: 145x fewer), or the nearest
    size the architectures allow: a student of :data:`STUDENTS` within 5% of the target (ResNet18's
    1/145 is ``resnet_77k``), else the tiny four-convolution CNN (no hidden layer; channels 2-8,
    each layer at least as wide as the one before and at most twice) whose count is nearest the
    target on a log scale."""
    target = teacher_params / ratio
    near = [s for s in STUDENTS.values() if abs(s.params / target - 1) <= 0.05]
    if near:
        return min(near, key=lambda s: abs(s.params - target)).name
    best, best_d = None, math.inf
    for a in range(2, 9):
        for b in range(a, min(2 * a, 8) + 1):
            for c in range(b, min(2 * b, 8) + 1):
                for d in range(c, min(2 * c, 8) + 1):
                    spec = _tiny_cnn_spec((a, b, c, d))
                    dist = abs(math.log(spec.params / target))
                    if dist < best_d - 1e-12:
                        best, best_d = spec.name, dist
    return best


def students_with_paper_ratio(teacher_params: int, teacher_flops: int | None = None) -> list[str]:
    """:func:`students_for`, plus the student at the paper's ratio (:func:`paper_ratio_student`)
    when it is not among them: the headline (a 1/145th-sized student) is tested whatever the teacher."""
    names = students_for(teacher_params, teacher_flops)
    ratio_student = paper_ratio_student(teacher_params)
    return names if ratio_student in names else [*names, ratio_student]


def extension_students(students: Sequence[str]) -> list[str]:
    """The students that also get the extensions (balanced loss, real-only inputs, gradient
    matching): the ablation student (:data:`PAPER_SIZED_STUDENT` when distilled, else the largest)
    and the :data:`GRAD_MATCH_STUDENTS` among ``students``."""
    abl = PAPER_SIZED_STUDENT if PAPER_SIZED_STUDENT in students else students[0]
    return list(dict.fromkeys([abl, *(s for s in GRAD_MATCH_STUDENTS if s in students)]))


def forward_flops(model: nn.Module) -> int:
    """FLOPs of one energy evaluation of one digit (``torch.utils.flop_counter``)."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28, device=device))
    return counter.get_total_flops()


def students_for(teacher_params: int, teacher_flops: int | None = None) -> list[str]:
    """The students (in :data:`STUDENTS` order) with fewer parameters than a teacher of
    ``teacher_params`` and, given ``teacher_flops``, fewer FLOPs per energy evaluation too:
    distilling into a network that is not smaller and cheaper compresses nothing. (Tutorial 8's
    CNN, the ``cpu`` baseline, has 77,578 parameters in strided convolutions; ``resnet_77k``
    has fewer parameters but runs them at full resolution, so it costs more per SGLD step.)"""
    out = []
    for spec in STUDENTS.values():
        if spec.params >= teacher_params:
            continue
        if teacher_flops is not None:
            with torch.device("meta"):
                student = spec.build()
            if forward_flops(student) >= teacher_flops:
                continue
        out.append(spec.name)
    return out


def student_table(teacher_params: int, teacher_flops: int | None = None) -> pd.DataFrame:
    """Every student with its parameter count, its compression factor versus a teacher of
    ``teacher_params`` parameters and whether it is distilled (see :func:`students_for`)."""
    used = set(students_for(teacher_params, teacher_flops))
    rows = [
        {
            "student": s.name,
            "family": s.family,
            "architecture": s.architecture,
            "params": s.params,
            "x fewer than teacher": teacher_params / s.params,
            "distilled": s.name in used,
        }
        for s in STUDENTS.values()
    ]
    return pd.DataFrame(rows)


# ---- distillation inputs and teacher targets --------------------------------------------
@dataclass
class DistillSet:
    """Inputs with the teacher's energy and input gradient on each, and the input kind."""

    x: torch.Tensor  # (N, 1, 28, 28)
    kind: torch.Tensor  # (N,) index into INPUT_KINDS
    energy: torch.Tensor  # (N,) teacher energies
    grad: torch.Tensor  # (N, 1, 28, 28) teacher dE/dx

    def __len__(self) -> int:
        return len(self.x)

    def select(self, kinds: Sequence[str]) -> "DistillSet":
        """The subset of the given input kinds."""
        unknown = set(kinds) - set(INPUT_KINDS)
        if unknown:
            raise ValueError(f"unknown input kinds {sorted(unknown)}; choose from {INPUT_KINDS}")
        mask = torch.isin(self.kind, torch.tensor([INPUT_KINDS.index(k) for k in kinds], device=self.kind.device))
        return DistillSet(self.x[mask], self.kind[mask], self.energy[mask], self.grad[mask])

    def counts(self) -> torch.Tensor:
        """Number of inputs of each kind (index = position in :data:`INPUT_KINDS`)."""
        return torch.bincount(self.kind, minlength=len(INPUT_KINDS)).cpu()

    def kind_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scales of the balanced loss per kind (NaN where absent): ``s_k`` the mean square
        of the teacher's energies and ``g_k`` the mean squared teacher gradient, each floored at
        :data:`SCALE_FLOOR` times the same statistic over all inputs (module docstring)."""
        e2 = self.energy.detach().double().pow(2)
        g2 = self.grad.detach().double().flatten(1).pow(2).mean(1)
        return self._per_kind(e2, torch.mean), self._per_kind(g2, torch.mean)

    def energy_variances(self) -> torch.Tensor:
        """Variance of the teacher's energies per kind (NaN where absent), floored at
        :data:`SCALE_FLOOR` times their variance over all inputs: the normalizer of the held-out
        relative error (:func:`heldout_errors`)."""
        return self._per_kind(self.energy.detach().double(), lambda v: v.var(correction=0))

    def _per_kind(self, values: torch.Tensor, stat: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``stat`` of the per-input ``values`` of each kind, floored at SCALE_FLOOR x ``stat`` of all."""
        values, kind = values.cpu(), self.kind.cpu()
        out = torch.full((len(INPUT_KINDS),), float("nan"), dtype=torch.float64)
        floor = max(SCALE_FLOOR * float(stat(values)), torch.finfo(torch.float64).tiny)
        for i in range(len(INPUT_KINDS)):
            if (kind == i).any():
                out[i] = max(float(stat(values[kind == i])), floor)
        return out

    def loss_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-input weights (energy term, gradient term) that make the plain weighted mean
        squared error over this set the kind-balanced loss: ``N / (K n_k s_k)`` for an input of
        kind ``k``, with ``g_k`` in place of ``s_k`` for the gradient term."""
        counts = self.counts().double()
        per_kind = len(self) / (int((counts > 0).sum()) * counts.clamp_min(1))
        e_scale, g_scale = self.kind_scales()
        kind = self.kind.cpu()
        w_e, w_g = (per_kind / e_scale)[kind], (per_kind / g_scale)[kind]
        return w_e.float().to(self.kind.device), w_g.float().to(self.kind.device)

    def summary(self) -> pd.DataFrame:
        """Count, teacher-energy statistics and the loss scales ``s_k`` and ``g_k`` per input kind."""
        e_scale, g_scale = self.kind_scales()
        rows = []
        for i, k in enumerate(INPUT_KINDS):
            e = self.energy[self.kind == i]
            if len(e):
                rows.append(
                    {
                        "inputs": k,
                        "n": len(e),
                        "teacher E mean": float(e.mean()),
                        "teacher E std": float(e.std(correction=0)),
                        "loss scale s_k (mean E^2)": float(e_scale[i]),
                        "gradient scale g_k": float(g_scale[i]),
                    }
                )
        return pd.DataFrame(rows)


def distillation_inputs(
    profile: Profile, buffer: torch.Tensor, device: torch.device | str = "cpu"
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The training and held-out inputs as (images, kind) pairs, fixed by ``profile.seed``.

    Training: the profile's real training digits, 7/8 of the teacher's replay buffer and as
    many U(-1, 1) noise images. Held-out: the other 1/8 of the buffer, and as many real *test*
    digits and fresh noise images.
    """
    n_hold = len(buffer) // HOLDOUT_FRACTION
    if n_hold < 1:
        raise ValueError(f"the teacher's buffer ({len(buffer)} samples) is too small to hold out 1/{HOLDOUT_FRACTION}")
    g = torch.Generator().manual_seed(profile.seed + 505)
    perm = torch.randperm(len(buffer), generator=g).to(buffer.device)
    buf_hold, buf_train = buffer[perm[:n_hold]], buffer[perm[n_hold:]]
    real = data_mod.load_training_split("fit", profile.val_size, profile.train_subset, profile.seed)
    test, _ = data_mod.load_dataset("mnist", train=False, subset=n_hold, seed=profile.seed + 1)

    def noise(n: int) -> torch.Tensor:
        return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1

    def pack(parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([p.to(device) for p in parts])
        kind = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(parts)]).to(device)
        return x, kind

    train = pack([real, buf_train, noise(len(buf_train))])
    held = pack([test, buf_hold, noise(n_hold)])
    return train, held


def teacher_targets(
    teacher: nn.Module, x: torch.Tensor, kind: torch.Tensor, batch_size: int, progress: bool = True
) -> DistillSet:
    """Run the teacher once over ``x``: energies and input gradients, kept on ``x``'s device."""
    teacher.eval()
    energies, grads = batched_energy_grad(
        teacher, x, batch_size, progress=progress, desc="teacher energies and gradients"
    )
    return DistillSet(x, kind, energies, grads)


# ---- losses -----------------------------------------------------------------------------
def input_gradient(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies and ``dE/dx``; with ``create_graph`` the gradient is itself differentiable
    with respect to the parameters (what training the gradient-matching term needs)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = model(x)
        (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
    return energy, grad


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i w_i * mean((pred_i - target_i)^2)``, the squared error of each input averaged
    over its non-batch dimensions; ``weight=None`` is the plain MSE. Both loss terms use it."""
    err = (pred - target).pow(2).flatten(1).mean(1) if pred.dim() > 1 else (pred - target).pow(2)
    return err.mean() if weight is None else (weight * err).mean()


def gradient_matching_loss(
    student_grad: torch.Tensor, teacher_grad: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The gradient-matching term: weighted MSE between the student's input gradient (from
    :func:`input_gradient` with ``create_graph=True``, so it trains the parameters) and the
    teacher's; with :meth:`DistillSet.loss_weights` it is the kind-balanced ``L_G``."""
    return weighted_mse(student_grad, teacher_grad, weight)


def distill_loss(
    student: nn.Module,
    x: torch.Tensor,
    teacher_energy: torch.Tensor,
    teacher_grad: torch.Tensor | None = None,
    grad_weight: float = 0.0,
    energy_w: torch.Tensor | None = None,
    grad_w: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``L_E + grad_weight * L_G`` on one batch (module docstring), with per-input weights
    ``energy_w`` and ``grad_w`` (from :meth:`DistillSet.loss_weights`; None = plain MSE).

    Returns the total ``loss``, the two terms ``energy`` and ``grad`` (zero when gradient
    matching is off) and the unweighted ``energy_mse`` of the batch, for monitoring."""
    if grad_weight > 0:
        if teacher_grad is None:
            raise ValueError("gradient matching needs the teacher's input gradients")
        energy, grad = input_gradient(student, x, create_graph=True)
        grad_term = gradient_matching_loss(grad, teacher_grad, grad_w)
    else:
        energy, grad_term = student(x), torch.zeros((), device=x.device)
    energy_term = weighted_mse(energy, teacher_energy, energy_w)
    return {
        "loss": energy_term + grad_weight * grad_term,
        "energy": energy_term,
        "grad": grad_term,
        "energy_mse": F.mse_loss(energy.detach(), teacher_energy),
    }


# ---- the resumable trainer --------------------------------------------------------------
def num_steps(profile: Profile, n_points: int) -> int:
    """Optimizer steps of one student: :meth:`Profile.student_epochs` passes over ``n_points``
    inputs (half the teacher's epochs, §4.5, unless the profile sets ``distill_epochs``)."""
    return profile.student_epochs() * math.ceil(n_points / profile.distill_batch_size)


LOSS_TERMS = ("loss", "energy", "grad", "energy_mse")  # what distill_loss returns, logged per step


class Distiller(LoopTrainer):
    """Trains one student on precomputed teacher targets for ``steps`` Adam steps, minimizing
    the kind-balanced loss (module docstring) with the weights of ``targets``.

    The run is :class:`~ebmhelpers.loop.ResumableLoop`'s (``self.loop``): batches follow a
    per-epoch permutation seeded by ``seed`` and the epoch, so the run is a pure function of the
    step count; it checkpoints (atomically) every ``ckpt_every`` steps, at epoch ends and at the
    end, and a restarted run loads the checkpoint and continues exactly where it stopped. ``meta``
    describes the run; a checkpoint written with different ``meta`` is refused, not reused.
    Position, checkpoint files and :attr:`history` (per step: the total loss, its terms ``energy``
    (L_E) and ``grad`` (L_G) and the batch's unweighted ``energy_mse``) are
    :class:`~ebmhelpers.loop.LoopTrainer`'s.
    """

    HISTORY_COLUMNS = ("step", *LOSS_TERMS)

    def __init__(
        self,
        student: nn.Module,
        targets: DistillSet,
        steps: int,
        batch_size: int,
        grad_weight: float = 0.0,
        lr: float = DISTILL_LR,
        seed: int = 0,
        ckpt_path: str | Path | None = None,
        ckpt_every: int = 200,
        meta: dict[str, Any] | None = None,
        balanced: bool = True,
    ) -> None:
        if steps < 1 or batch_size < 1 or len(targets) == 0:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1 and targets (got {steps}, {batch_size}, {len(targets)})"
            )
        self.device = targets.x.device
        self.student = student.to(self.device)
        self.targets, self.steps, self.batch_size = targets, steps, batch_size
        self.grad_weight, self.seed, self.ckpt_every = grad_weight, seed, ckpt_every
        self.loop = ResumableLoop(len(targets), batch_size, steps, seed, ckpt_every, self.device)
        if balanced:
            self.energy_w, self.grad_w = targets.loss_weights()
        else:  # eq. 6: every input weighs 1, the plain mean of squared errors
            self.energy_w = self.grad_w = torch.ones(len(targets), device=self.device)
        self.ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
        self.meta = {
            "steps": steps,
            "batch_size": batch_size,
            "grad_weight": grad_weight,
            "lr": lr,
            "seed": seed,
            "n_targets": len(targets),
            "loss": LOSS_NAME if balanced else EQ6_LOSS_NAME,
            "scale_floor": SCALE_FLOOR,
            **(meta or {}),
        }
        self.opt = torch.optim.Adam(self.student.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=steps)
        self._history: list[list[float]] = []  # one row of HISTORY_COLUMNS per step

    @property
    def trained_model(self) -> nn.Module:
        return self.student

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.student.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "history": [list(r) for r in self._history],
            "meta": dict(self.meta),
        }

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of a run with other ``meta``."""
        if state["meta"] != self.meta:
            diff = {k: (state["meta"].get(k), v) for k, v in self.meta.items() if state["meta"].get(k) != v}
            raise ValueError(
                f"{self.ckpt_path} belongs to a different distillation run (saved vs now: {diff}); "
                f"delete it to train this student again"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.loop.resume_at(state["step"])
        self._history = [list(r) for r in state["history"]]

    def fit(
        self,
        progress: bool = True,
        desc: str = "distilling",
        max_steps: int | None = None,
        time_budget_s: float | None = None,
    ) -> pd.DataFrame:
        """Train until ``steps`` are done, or stop at the first checkpoint at or after
        ``max_steps`` steps or once ``time_budget_s`` seconds are spent, so that a later call
        resumes there; returns the history."""
        self.student.train()
        history = self._fit(self._train_step, self._end_window, _postfix, max_steps, time_budget_s, progress, desc)
        self.student.eval()
        return history

    def _train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One Adam and scheduler step on the targets ``batch``; returns :data:`LOSS_TERMS` as a
        device tensor (no host sync)."""
        t = self.targets
        terms = distill_loss(
            self.student,
            t.x[batch],
            t.energy[batch],
            t.grad[batch],
            self.grad_weight,
            self.energy_w[batch],
            self.grad_w[batch],
        )
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        self.sched.step()
        return torch.stack([terms[k].detach() for k in LOSS_TERMS])

    def _end_window(self, window: Window) -> bool:
        """Record the window's losses (numbered by the step count after each update) and save a
        checkpoint; a non-finite loss raises ``FloatingPointError``. Always keeps the window."""
        self._history += [[s + 1, *v] for s, v in zip(window.steps, window.values.tolist())]
        if not math.isfinite(self._history[-1][1]):
            raise FloatingPointError(f"distillation loss is not finite at step {self.step}")
        self.save()
        return True


def _postfix(window: Window) -> dict[str, str]:
    """The progress bar's postfix: the loss of the window's last step."""
    return {"loss": f"{window.values[-1, 0].item():.4g}"}


def teacher_fingerprint(teacher: nn.Module) -> float:
    """Sum of the teacher's parameters: ties a student checkpoint to the teacher it copied."""
    return round(float(sum(p.detach().double().sum() for p in teacher.parameters())), 6)


def student_file(name: str, run: str, seed: int = 0) -> str:
    """The name (checkpoint and committed file) of a distilled student; seeds after the first carry ``_s<seed>``."""
    return f"student_{name}_{run}" + (f"_s{seed}" if seed else "")


def load_or_distill(
    ctx: Context,
    name: str,
    variant: str,
    targets: DistillSet,
    steps: int,
    teacher: nn.Module,
    grad_weight: float = 0.0,
    progress: bool = True,
    seed: int = 0,
    train: bool | None = None,
    commit: bool = False,
    parent: str = "",
) -> tuple[EnergyModel, pd.DataFrame]:
    """The student ``name`` distilled on the ``variant`` inputs (see :data:`VARIANT_INPUTS`) with
    its loss (:data:`VARIANT_BALANCED`: eq. 6's plain MSE for :data:`REPRODUCTION`, else the
    balanced extension), initialised and shuffled with training seed ``profile.seed + seed``.

    ``parent`` names the teacher (:attr:`PCDTrainer.identity <ebmhelpers.training.PCDTrainer>`). The
    profile's committed student (:mod:`ebmhelpers.pretrained`, :func:`student_file`) is installed when
    it exists, unless ``train`` (default: ``EBM_TRAIN=1``) asks to train; it must derive from ``parent``.
    Otherwise the student is loaded from its checkpoint in ``ctx.checkpoints`` when trained, else
    trained or resumed there, and with ``commit`` committed when done. Returns the student (eval mode)
    and its loss history."""
    from . import pretrained

    if variant not in VARIANT_INPUTS:
        raise KeyError(f"unknown variant {variant!r}; choose one of {list(VARIANT_INPUTS)}")
    p = ctx.profile
    run = run_name(variant, grad_weight)
    file = student_file(name, run, seed)
    seed_everything(p.seed + seed)
    student = build_student(name)
    distiller = Distiller(
        student,
        targets.select(VARIANT_INPUTS[variant]),
        steps,
        p.distill_batch_size,
        grad_weight=grad_weight,
        seed=p.seed + seed,
        ckpt_path=ctx.checkpoints / f"{file}.pt",
        ckpt_every=p.ckpt_every,
        meta={"profile": p.name, "student": name, "variant": run, "teacher": teacher_fingerprint(teacher)},
        balanced=VARIANT_BALANCED[variant],
    )
    if not pretrained.wants_training(train):
        state = pretrained.load(p.name, file, architecture=name, model=student, parent=parent or None)
        if state is not None:
            distiller.install(state)
            return distiller.student.eval(), distiller.history
    if distiller.load() and distiller.done:
        print(f"loaded distilled {name} ({run}, {distiller.step} steps) from {distiller.ckpt_path}")
    else:
        distiller.fit(progress=progress, desc=f"distilling {name} ({run})")
    if commit:
        pretrained.commit(
            p.name,
            file,
            "student",
            distiller.weights_state(),
            architecture=name,
            iterations=distiller.step,
            seconds=distiller.seconds,
            command=pretrained.retrain_command(p.name, file),
            seed=seed,
            parent=parent,
            variant=run,
        )
    return distiller.student.eval(), distiller.history


def training_seeds(profile: Profile, variant: str) -> int:
    """How many training seeds a student of ``variant`` has: ``profile.training_seeds`` for the
    reproduction (:data:`REPRODUCTION`, the runs that carry a verdict), one for the extensions."""
    return profile.training_seeds if variant == REPRODUCTION else 1


def run_name(variant: str, grad_weight: float = 0.0) -> str:
    """``eq6``, ``mixed``, ``real`` or ``mixed+grad``: the name of a distillation run in tables."""
    return f"{variant}+grad" if grad_weight > 0 else variant


def best_student(table: pd.DataFrame, refs=None) -> pd.Series:
    """The row of the distillation table with the lowest FID among the students that generate
    (:func:`verdicts.generates` against ``refs``, by default the profile's: FID is not compared
    between noise generators), else the highest IS (any student, any variant)."""
    from .verdicts import generates

    if table.empty or table.FID.isna().all():
        raise ValueError("the distillation table has no scored student")
    gen = table[table.apply(lambda row: generates(row, refs), axis=1)]
    return gen.loc[gen.FID.idxmin()] if len(gen) else table.loc[table.IS.fillna(0).idxmax()]


def quality_text(row, refs=None) -> str:
    """``IS m ± s, FID m ± s`` of a scored row (a table row or a dict), with a note when it does not
    generate (:func:`verdicts.generates` against ``refs``: its FID is then not compared)."""
    from .verdicts import generates

    return f"IS {row['IS']:.2f} ± {row['IS_std']:.2f}, FID {row['FID']:.0f} ± {row['FID_std']:.0f}" + (
        "" if generates(row, refs) else " (does not generate)"
    )


def best_student_name(table: pd.DataFrame) -> str:
    """``<student>_<variant>``: how the best student's samples and checkpoint are named."""
    row = best_student(table)
    return f"{row.student}_{row.variant}"


def load_best_student(ctx: Context, table: pd.DataFrame) -> EnergyModel:
    """The best student's weights (nothing is trained): its committed file when the profile has one
    (:mod:`ebmhelpers.pretrained`, unless ``EBM_TRAIN=1``), else its distillation checkpoint."""
    from . import pretrained

    row = best_student(table)
    file = student_file(row.student, row.variant)
    student = build_student(row.student).to(ctx.device)
    committed = None if pretrained.wants_training() else pretrained.load(ctx.profile.name, file, row.student, student)
    if committed is not None:
        student.load_state_dict(pretrained.decode_masks(committed["model"]))
        return student.eval()
    path = ctx.checkpoints / f"{file}.pt"
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint {path}: run notebooks/05_distillation.ipynb with profile {ctx.profile.name!r}"
        )
    student.load_state_dict(load_checkpoint(path, ctx.device)["model"])
    return student.eval()


# ---- evaluation -------------------------------------------------------------------------
def heldout_errors(model: nn.Module, held: DistillSet, batch_size: int = 256) -> pd.DataFrame:
    """Per input kind of ``held``: the energy MSE against the teacher; the relative error
    ``energy_rel``, that MSE over the variance of the teacher's energies on the kind (comparable
    across kinds: 1 = no better than predicting the kind's mean energy; floored as in
    :meth:`DistillSet.energy_variances`); ``grad_rel``, the gradient term of the loss on this kind
    (squared gradient error over the teacher's mean squared gradient); and ``grad_cosine``, the
    mean cosine between the student's and the teacher's input gradients (the direction SGLD
    follows)."""
    model.eval()
    e, g = batched_energy_grad(model, held.x, batch_size)
    cos = F.cosine_similarity(g.flatten(1), held.grad.flatten(1), dim=1, eps=1e-12)
    g_err = (g - held.grad).pow(2).flatten(1).mean(1)
    e_var, (_, g_scale) = held.energy_variances(), held.kind_scales()
    rows = []
    for i, k in enumerate(INPUT_KINDS):
        m = held.kind == i
        if m.any():
            mse = float((e[m] - held.energy[m]).pow(2).mean())
            rows.append(
                {
                    "inputs": k,
                    "energy_mse": mse,
                    "energy_rel": mse / float(e_var[i]),
                    "grad_rel": float(g_err[m].mean()) / float(g_scale[i]),
                    "grad_cosine": float(cos[m].mean()),
                }
            )
    return pd.DataFrame(rows)


# score_model's columns from held-out targets, per input kind
HELDOUT_COLUMNS = tuple(f"{m}_{k}" for k in INPUT_KINDS for m in ("heldout_mse", "heldout_rel", "grad_cosine"))


def table_columns(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The columns of the distillation table (notebook 05, saved as ``distillation``), latency
    timed on ``device`` (:func:`metrics.latency_columns`): ``student`` and ``variant``, the score
    row's, :data:`HELDOUT_COLUMNS`, ``sgld_speedup`` over the teacher and ``distill_steps``.
    Notebook 05 writes :data:`pruning.TRAINING_SEED_COLUMNS` after them; a reader requires only
    these (the committed cpu table has no training-seed columns)."""
    return ("student", "variant", *metrics.score_columns(device), *HELDOUT_COLUMNS, "sgld_speedup", "distill_steps")


def score_model(
    ev: Evaluator, model: nn.Module, student: str, variant: str, held: DistillSet | None = None, **score_kwargs: Any
) -> tuple[dict, pd.DataFrame, torch.Tensor | None]:
    """``Evaluator.score`` (which seeds its own generation, so every model starts its chains from
    the same noise) plus ``student``/``variant`` columns and, given held-out targets, per input
    kind ``heldout_mse_<kind>``, ``heldout_rel_<kind>`` and ``grad_cosine_<kind>``."""
    row, ood, samples = ev.score(model, f"{student}/{variant}", **score_kwargs)
    row = {"student": student, "variant": variant, **row}
    if held is not None:
        for r in heldout_errors(model, held).itertuples():
            row[f"heldout_mse_{r.inputs}"] = r.energy_mse
            row[f"heldout_rel_{r.inputs}"] = r.energy_rel
            row[f"grad_cosine_{r.inputs}"] = r.grad_cosine
    return row, ood, samples


def score_seeds(
    ev: Evaluator, trained: Sequence[nn.Module], student: str, variant: str, held: DistillSet | None = None
) -> tuple[dict, torch.Tensor | None]:
    """One table row for a student distilled with several training seeds (``trained``, seed 0
    first): each seed's model scored by :func:`score_model`, the rows combined as notebook 04
    combines its fine-tunings (:func:`~ebmhelpers.pruning.combine_training_seeds`: means, and
    ``IS_std``/``FID_std`` over training and generation seeds by the law of total variance), with
    ``training_seeds``; integer columns equal in every seed's row (``params``) stay integers.
    Returns the row and the first seed's samples."""
    rows, first = [], None
    for seed, model in enumerate(trained):
        row, _, samples = score_model(ev, model, student, variant, held)
        rows.append(row | {"training_seed": seed})
        first = samples if seed == 0 else first
    out = combine_training_seeds(pd.DataFrame(rows))
    for key, value in rows[0].items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and all(r[key] == value for r in rows):
            out[key] = value
    out.pop("training_seed", None)
    return out, first


def teacher_reference(teacher: nn.Module, ev: Evaluator) -> pd.Series:
    """The baseline row notebook 02 saved (IS, FID, OOD of the teacher, same Evaluator) with its
    latency and SGLD throughput replaced by :func:`metrics.measure_cost` timings taken now, so
    speed-ups compare models timed in the same process on the same device.

    Raises ``results.MissingResultsError`` naming notebook 02 when it has not run for this profile.
    """
    row = results.load_table(ev.ctx, "baseline", metrics.score_columns()).iloc[0].copy()
    for key, value in metrics.measure_cost(teacher, ev).items():
        row[key] = value
    return row


def sample_from(model: nn.Module, starts: torch.Tensor, ev: Evaluator, steps: int) -> tuple[dict, torch.Tensor]:
    """SGLD of ``steps`` steps from given chain starts (e.g. the teacher's buffer), once per seed
    of ``ev.seeds`` (the SGLD noise, as in :meth:`Evaluator.generate`), and IS/FID as mean and std
    over them (``IS``, ``IS_std``, ``FID``, ``FID_std``, ``n_seeds``); returns the first seed's samples."""
    p = ev.ctx.profile
    scores, first = [], None
    for seed in ev.seeds:
        seed_everything(seed)
        samples = generate(
            model,
            len(starts),
            p.gen_sgld_config(steps),
            p.gen_batch_size,
            device=ev.device,
            init=starts,
            sampler=ev.sampler(model),
        )
        scores.append(ev.sample_quality(samples))
        first = samples if first is None else first
    out: dict[str, float] = {"n_seeds": len(scores)}
    for key in ("IS", "FID"):
        out[key], out[f"{key}_std"] = metrics.mean_std([q[key] for q in scores])
    return out, first


def buffer_starts(buffer: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` chain starts drawn from the teacher's buffer (with replacement when n > size)."""
    g = torch.Generator().manual_seed(seed)
    idx = (
        torch.randint(len(buffer), (n,), generator=g)
        if n > len(buffer)
        else torch.randperm(len(buffer), generator=g)[:n]
    )
    return buffer[idx.to(buffer.device)]


# ---- figures ----------------------------------------------------------------------------
FIGURE3_METRICS = (
    ("FID", "FID (lower is better)"),
    ("IS", "Inception Score (higher is better)"),
    ("auroc_worst", "worst-case OOD AUROC over the paper's transforms (noise, upside-down, reduced)"),
    ("sgld_img_steps_per_s", "SGLD image-steps / s"),
)
AUROC_CHANCE = (
    verdicts.CHANCE_AUROC
)  # below it a detector is inverted (it scores the transformed digits as more typical)


def _std(df: pd.DataFrame | pd.Series, col: str) -> Any:
    """The ``<col>_std`` column (IS/FID over seeds) where present and finite, else None."""
    std = df.get(f"{col}_std")
    if std is None:
        return None
    values = np.asarray(std, dtype=float)
    return None if not np.isfinite(values).any() else np.nan_to_num(values)


def plot_vs_size(
    df: pd.DataFrame,
    teacher: dict | pd.Series,
    metrics: Sequence[tuple[str, str]] = FIGURE3_METRICS,
    title: str | None = None,
    save: str | Path | None = None,
    highlight: pd.Series | None = None,
) -> plt.Figure:
    """Figure 3: each metric against the student's parameter count (log x), one line per
    variant, the teacher as a dashed reference line (with its seed-to-seed std as a band).
    IS and FID carry error bars of one std over the seeds when the table has them; AUROC panels
    mark chance (0.5), below which a detector is inverted. ``highlight`` (a row of ``df``, e.g.
    :func:`best_student`'s) is ringed on every panel."""
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, (col, label) in zip(axes.flat, metrics):
        for variant, part in df.sort_values("params").groupby("variant", sort=False):
            ax.errorbar(
                part["params"], part[col], yerr=_std(part, col), fmt="o-", capsize=3, label=f"students ({variant})"
            )
        for r in df.sort_values("params").drop_duplicates("student").itertuples():  # each name once, not per variant
            ax.annotate(r.student, (r.params, getattr(r, col)), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if highlight is not None:
            ax.scatter(
                [highlight["params"]],
                [highlight[col]],
                s=160,
                facecolors="none",
                edgecolors="r",
                zorder=5,
                label=f"best: {highlight['student']} ({highlight['variant']})",
            )
        ax.axhline(teacher[col], color="k", ls="--", lw=1, label="baseline (teacher)")
        t_std = _std(teacher, col)
        if t_std is not None:
            ax.axhspan(teacher[col] - float(t_std), teacher[col] + float(t_std), color="k", alpha=0.08, lw=0)
        if col.startswith("auroc"):
            ax.axhline(AUROC_CHANCE, color="r", ls=":", lw=1, label="chance (below: inverted)")
        ax.axvline(PAPER_STUDENT_PARAMS, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        if col == "sgld_img_steps_per_s":
            ax.set_yscale("log")
        ax.set_xlabel("student parameters (dotted: the paper's 77,004)")
        ax.set_title(label, fontsize=9)
    # one legend for every panel, at the right, so no panel's lines are covered (chance: from an AUROC panel)
    entries = {n: h for ax in axes.flat[: len(metrics)] for h, n in zip(*ax.get_legend_handles_labels())}
    fig.legend(entries.values(), entries.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return finish(fig, title, save)


def sample_grids(
    samples: dict[str, torch.Tensor],
    n: int = 10,
    nrow: int = 10,
    title: str | None = None,
    save: str | Path | None = None,
) -> plt.Figure:
    """One image grid per model (its first ``n`` samples), stacked vertically."""
    rows = -(-n // nrow)
    # 0.8 inch a digit (about 90 pixels at the saved 110 dpi) and room for each title
    fig, axes = plt.subplots(len(samples), 1, figsize=(nrow * 0.8, len(samples) * (rows * 0.8 + 0.45)), squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], samples.items()):
        image_grid(x[:n], nrow=nrow, ax=ax)
        ax.set_title(name, fontsize=10)
    return finish(fig, title, save)


def plot_heldout(df: pd.DataFrame, title: str | None = None, save: str | Path | None = None) -> plt.Figure:
    """Bars per input kind and run (a :func:`heldout_errors` table with a ``run`` column): the
    held-out relative energy error (log; comparable across kinds) and the gradient cosine."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    sns.barplot(df, x="inputs", y="energy_rel", hue="run", ax=axes[0])
    axes[0].set_yscale("log")
    axes[0].axhline(1, color="k", ls=":", lw=0.8)
    axes[0].set_title(
        "held-out energy MSE / variance of teacher energies\n(lower is better; 1 = the kind's mean)", fontsize=9
    )
    sns.barplot(df, x="inputs", y="grad_cosine", hue="run", ax=axes[1])
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_title("cosine(dE_student/dx, dE_teacher/dx) (1 = same direction)", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    return finish(fig, title, save)


# ---- the distillation study's committed winners (python -m ebmhelpers distill-study --winners) ----------
WINNER_PREFIX = "study_"  # a committed winner's manifest variant: study_<objective>


def winners_command(profile: str) -> str:
    """The command line that trains and commits the chosen objective's students for ``profile``."""
    return f"python -m ebmhelpers distill-study --profile {profile} --winners"


def no_winners(profile: str) -> str:
    """The line a reader sees where ``profile`` has no committed winner."""
    return (
        f"no winner of the distillation study is committed for profile {profile!r}: "
        f"`{winners_command(profile)}` commits them"
    )


def committed_winners(profile_name: str) -> list[dict[str, Any]]:
    """The manifest entries of the study's committed winners of a profile (kind ``student``, a
    ``variant`` starting with :data:`WINNER_PREFIX`), in manifest order; [] when none is committed."""
    from . import pretrained

    return [
        entry
        for entry in pretrained.read_manifest(profile_name).values()
        if entry["kind"] == "student" and str(entry.get("variant", "")).startswith(WINNER_PREFIX)
    ]


def winner_variant(entry: dict[str, Any]) -> str:
    """A winner's ``variant`` in notebook 05's distillation table: the run part of its committed
    name (``study_<objective>``, ``+`` written ``-``), so that :func:`student_file` of its
    architecture and this variant is its committed file, as for every student of that table."""
    prefix = student_file(entry["architecture"], "")
    if not entry["name"].startswith(prefix):
        raise ValueError(f"committed winner {entry['name']!r} is not named student_{entry['architecture']}_<run>")
    return entry["name"].removeprefix(prefix)


def load_winner(profile_name: str, entry: dict[str, Any], device: torch.device | str = "cpu") -> EnergyModel:
    """The committed winner of manifest ``entry`` on ``device``, in eval mode: a
    :func:`build_student` of its ``architecture`` holding its committed weights, read by
    :func:`pretrained.load` (sha256, architecture and weight shapes verified; a one-line
    :class:`pretrained.WeightsError` naming the file and :func:`winners_command` otherwise)."""
    from . import pretrained

    student = build_student(entry["architecture"])
    state = pretrained.load(
        profile_name, entry["name"], entry["architecture"], student, command=winners_command(profile_name)
    )
    if state is None:
        raise pretrained.WeightsError(
            f"no {entry['name']!r} in the manifest of profile {profile_name!r}; commit it with "
            f"`{winners_command(profile_name)}`"
        )
    student.load_state_dict(pretrained.decode_masks(state["model"]))
    return student.to(device).eval()
