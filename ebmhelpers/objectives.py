"""Distillation objectives beside eq. 6, for the distillation-objectives study
(``python -m ebmhelpers distill-study``, :mod:`ebmhelpers.tools.distill_study`).

Every loss takes ``(student, x, teacher_energy, teacher_grad)`` for one batch and returns the
terms a :class:`~ebmhelpers.distillation.Distiller` logs (:data:`~ebmhelpers.distillation.LOSS_TERMS`):
``loss`` (what is minimised), ``energy`` (its energy term), ``grad`` (its input-gradient term)
and ``energy_mse`` (eq. 6 on the batch, detached, for monitoring every objective on one scale).

* :func:`eq6_loss`: the paper's eq. 6, ``mean((E_s - E_t)^2)``.
* :func:`score_loss`: input-gradient (score) matching, ``mean ||dE_s/dx - dE_t/dx||^2`` over the
  teacher's mean squared gradient: only the slope SGLD follows, so a constant offset is free.
* :func:`difference_loss`: energy *differences* within the batch, ``mean_ij ((E_s,i - E_s,j) -
  (E_t,i - E_t,j))^2``, which equals twice the variance of the residual ``E_s - E_t``.
* :func:`ranking_loss`: a pairwise logistic (Bradley-Terry) loss: the teacher's probability that
  input ``i`` has the lower energy, ``sigmoid((E_t,j - E_t,i) / tau)``, as a soft label for the
  student's; minimal (its KL part zero) exactly when every difference matches.

The last two ignore a constant added to every student energy, which neither SGLD (it follows
the gradient) nor AUROC (it ranks) can see. :func:`fit_energy_scale` and
:func:`fold_energy_scale` are the temperature match: a scalar ``s`` with ``s * dE_s/dx`` closest
to the teacher's gradient (least squares), folded into the student's last layer so that its SGLD
at the profile's temperature moves as the teacher's does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .distillation import distill_loss, input_gradient, weighted_mse
from .sampling import batched_energy_grad

Terms = dict[str, torch.Tensor]
Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], Terms]
SCALE_RANGE = (1 / 16, 16.0)  # a fitted energy scale is clamped to this range (a negative fit would flip the landscape)


def _terms(loss: torch.Tensor, energy: torch.Tensor, grad: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> Terms:
    return {"loss": loss, "energy": energy, "grad": grad, "energy_mse": F.mse_loss(e_s.detach(), e_t)}


def eq6_loss(student: nn.Module, x: torch.Tensor, teacher_energy: torch.Tensor, teacher_grad: torch.Tensor) -> Terms:
    """The paper's eq. 6, the plain MSE of energies (:func:`distillation.distill_loss` without weights)."""
    return distill_loss(student, x, teacher_energy)


def score_loss(
    student: nn.Module,
    x: torch.Tensor,
    teacher_energy: torch.Tensor,
    teacher_grad: torch.Tensor,
    grad_scale: float = 1.0,
) -> Terms:
    """Score matching: the per-pixel MSE of input gradients divided by ``grad_scale`` (the teacher's
    mean squared gradient over the training inputs, so 1 is the error of predicting a zero gradient)."""
    energy, grad = input_gradient(student, x, create_graph=True)
    term = weighted_mse(grad, teacher_grad) / grad_scale
    return _terms(term, torch.zeros((), device=x.device), term, energy, teacher_energy)


def difference_loss(
    student: nn.Module, x: torch.Tensor, teacher_energy: torch.Tensor, teacher_grad: torch.Tensor
) -> Terms:
    """Mean over all ordered pairs of the batch of the squared error of energy differences,
    computed as ``2 * var(E_s - E_t)`` (the same number, linear in the batch size)."""
    energy = student(x)
    term = 2 * (energy - teacher_energy).var(correction=0)
    return _terms(term, term, torch.zeros((), device=x.device), energy, teacher_energy)


def pairwise_logistic(student_energy: torch.Tensor, teacher_energy: torch.Tensor, tau: float) -> torch.Tensor:
    """Binary cross-entropy over every ordered pair ``i != j`` between the student's and the teacher's
    probability that ``i`` has the lower energy, ``sigmoid((E_j - E_i) / tau)``."""
    logits = (student_energy[None, :] - student_energy[:, None]) / tau  # [i, j] = (E_j - E_i) / tau
    target = torch.sigmoid((teacher_energy[None, :] - teacher_energy[:, None]) / tau)
    off = ~torch.eye(len(student_energy), dtype=torch.bool, device=student_energy.device)
    return F.binary_cross_entropy_with_logits(logits[off], target[off])


def ranking_loss(
    student: nn.Module, x: torch.Tensor, teacher_energy: torch.Tensor, teacher_grad: torch.Tensor, tau: float = 1.0
) -> Terms:
    """:func:`pairwise_logistic` at temperature ``tau`` (the spread of the teacher's energies, so
    the labels are soft for typical pairs and only far-apart pairs are near-certain)."""
    energy = student(x)
    term = pairwise_logistic(energy, teacher_energy, tau)
    return _terms(term, term, torch.zeros((), device=x.device), energy, teacher_energy)


def fit_energy_scale(student: nn.Module, x: torch.Tensor, teacher_grad: torch.Tensor, batch_size: int) -> float:
    """The scalar ``s`` minimising ``sum ||s dE_s/dx - dE_t/dx||^2`` over ``x``:
    ``<g_s, g_t> / <g_s, g_s>``, clamped to :data:`SCALE_RANGE`. SGLD on ``s * E_s`` at a fixed
    temperature is SGLD on ``E_s`` at temperature ``T / s``."""
    _, g = batched_energy_grad(student, x, batch_size)
    g, t = g.double().flatten(), teacher_grad.double().flatten()
    s = float((g @ t) / (g @ g).clamp_min(torch.finfo(torch.float64).tiny))
    return min(max(s, SCALE_RANGE[0]), SCALE_RANGE[1])


@torch.no_grad()
def fold_energy_scale(model: nn.Module, scale: float) -> nn.Module:
    """Multiply the energy of ``model`` by ``scale`` in place, through its last linear layer (the
    energy is the mean of its logits), so the architecture and parameter count stay the same."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    last.weight.mul_(scale)
    if last.bias is not None:
        last.bias.mul_(scale)
    return model
