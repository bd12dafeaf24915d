"""Knowledge distillation of the EBM into small students (the paper's Section 3.4, eq. 6).

A student is a small :class:`~ebmhelpers.models.EnergyModel` trained to reproduce the
teacher's energy on a fixed set of inputs: ``L = mean((E_s(x) - E_t(x))^2)``. Where the inputs
come from matters. Real digits alone only show the student the low-energy valley, while SGLD
starts from noise and walks through high-energy regions first; so the distillation set mixes
real digits, the teacher's replay buffer (its persistent SGLD chains) and uniform noise.

Sampling follows the input gradient ``dE/dx``, which the energy MSE does not constrain. The
optional gradient-matching term adds ``w * mean((dE_s/dx - dE_t/dx)^2) / mean((dE_t/dx)^2)``
(relative to the teacher's gradient scale, so ``w = 1`` weighs both terms alike).

Teacher energies and input gradients are computed once per input set (:func:`teacher_targets`),
so training a student never runs the teacher again. :class:`Distiller` is resumable: it writes
checkpoints atomically and a restarted run continues at the last one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as data_mod
from . import results
from .metrics import Evaluator, latency_ms, sgld_throughput
from .models import EnergyModel, ResNetEnergy, Swish
from .plotting import finish, image_grid
from .profiles import Profile, SGLDConfig
from .runtime import Context, atomic_save, device_name, load_checkpoint, seed_everything
from .sampling import batched_energy_grad, generate

BASELINE_PARAMS = 11_168_010  # ResNet18 teacher
PAPER_STUDENT_PARAMS = 77_004  # the paper's best student, about 145x smaller

INPUT_KINDS = ("real", "buffer", "noise")
# Which input kinds each variant distils on (the ablation of Section 4.5).
VARIANT_INPUTS = {"real": ("real",), "mixed": INPUT_KINDS}
HOLDOUT_FRACTION = 8  # 1/8 of the teacher's buffer is held out; as many test digits and noise join it
DISTILL_LR = 1e-3  # Adam, cosine-annealed to 0 over the run
GRAD_WEIGHT = 1.0  # weight of the (relative) gradient-matching term when it is on
# Chain lengths, as fractions of ``profile.gen_steps``, for sampling a student from the teacher's buffer.
BUFFER_CHAIN_FRACTIONS = (0.25, 1.0)


# ---- students ---------------------------------------------------------------------------
class ConvEnergy(EnergyModel):
    """Plain CNN energy in the layout of Lippe's tutorial-8 EBM (the paper's reference [14]):
    a 5x5 stride-2 convolution (padding 4), 3x3 stride-2 convolutions, flatten, an optional
    hidden linear layer, then 10 logits. Swish everywhere, no normalization, no residuals."""

    def __init__(self, channels: Sequence[int], hidden: int | None = None, num_logits: int = 10) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must be non-empty")
        self.num_logits = num_logits
        layers: list[nn.Module] = []
        c_in, size = 1, 28
        for i, c_out in enumerate(channels):
            k, pad = (5, 4) if i == 0 else (3, 1)
            layers += [nn.Conv2d(c_in, c_out, k, 2, pad), Swish()]
            c_in, size = c_out, (size + 2 * pad - k) // 2 + 1
        layers.append(nn.Flatten())
        features = c_in * size * size
        if hidden:
            layers += [nn.Linear(features, hidden), Swish()]
            features = hidden
        layers.append(nn.Linear(features, num_logits))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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
        StudentSpec("resnet_slim", "ResNet", "ResNet18 layout [2,2,2,2] at half width 32/64/128/256", 2_794_634,
                    lambda: ResNetEnergy((2, 2, 2, 2), (32, 64, 128, 256))),
        StudentSpec("resnet_small", "ResNet", "ResNet [1,1,1,1], widths 16/32/64/128", 307_818,
                    lambda: ResNetEnergy((1, 1, 1, 1), (16, 32, 64, 128))),
        StudentSpec("resnet_77k", "ResNet", "ResNet [1,1,1], widths 10/26/72 (the paper's 77,004)", 77_004,
                    lambda: ResNetEnergy((1, 1, 1), (10, 26, 72))),
        StudentSpec("cnn_20k", "CNN", "4 convs 8/16/32/32, linear 128-32-10", 19_722,
                    lambda: ConvEnergy((8, 16, 32, 32), hidden=32)),
        StudentSpec("cnn_7k", "CNN", "4 convs 8/16/16/16, linear 64-16-10", 7_226,
                    lambda: ConvEnergy((8, 16, 16, 16), hidden=16)),
        StudentSpec("cnn_2k", "CNN", "3 convs 4/8/8, linear 128-10", 2_274,
                    lambda: ConvEnergy((4, 8, 8))),
    )
}  # fmt: skip
PAPER_SIZED_STUDENT = "resnet_77k"
# Students trained a second time with the gradient-matching term (the "beyond the paper" part).
GRAD_MATCH_STUDENTS = (PAPER_SIZED_STUDENT, "cnn_20k")


def build_student(name: str) -> EnergyModel:
    """A freshly initialized student (seed the RNG first for reproducible weights)."""
    if name not in STUDENTS:
        raise KeyError(f"unknown student {name!r}; choose one of {list(STUDENTS)}")
    return STUDENTS[name].build()


def student_table() -> pd.DataFrame:
    """The students with their parameter counts and compression factors versus the teacher."""
    rows = [
        {"student": s.name, "family": s.family, "architecture": s.architecture, "params": s.params,
         "x fewer than baseline": BASELINE_PARAMS / s.params}
        for s in STUDENTS.values()
    ]  # fmt: skip
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

    @property
    def grad_scale(self) -> float:
        """Mean squared teacher gradient: the normalizer of the gradient-matching term."""
        return float(self.grad.pow(2).mean())

    def summary(self) -> pd.DataFrame:
        """Count and teacher-energy statistics per input kind."""
        rows = []
        for i, k in enumerate(INPUT_KINDS):
            e = self.energy[self.kind == i]
            if len(e):
                rows.append({"inputs": k, "n": len(e), "teacher E mean": float(e.mean()), "teacher E std": float(e.std())})
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
    real, _ = data_mod.load_dataset("mnist", train=True, subset=profile.train_subset, seed=profile.seed)
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
    energies, grads = batched_energy_grad(teacher, x, batch_size, progress=progress, desc="teacher energies and gradients")
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


def gradient_matching_loss(
    student: nn.Module, x: torch.Tensor, teacher_grad: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """``mean((dE_s/dx - dE_t/dx)^2) / scale``, differentiable in the student's parameters."""
    _, grad = input_gradient(student, x, create_graph=True)
    return (grad - teacher_grad).pow(2).mean() / scale


def distill_loss(
    student: nn.Module, x: torch.Tensor, teacher_energy: torch.Tensor, teacher_grad: torch.Tensor | None = None,
    grad_weight: float = 0.0, grad_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Energy MSE (eq. 6) plus, when ``grad_weight > 0``, the weighted gradient-matching term."""
    if grad_weight > 0:
        if teacher_grad is None:
            raise ValueError("gradient matching needs the teacher's input gradients")
        energy, grad = input_gradient(student, x, create_graph=True)
        grad_mse = (grad - teacher_grad).pow(2).mean() / grad_scale
    else:
        energy, grad_mse = student(x), torch.zeros((), device=x.device)
    energy_mse = F.mse_loss(energy, teacher_energy)
    return {"loss": energy_mse + grad_weight * grad_mse, "energy_mse": energy_mse, "grad_mse": grad_mse}


# ---- the resumable trainer --------------------------------------------------------------
def num_steps(profile: Profile, n_points: int) -> int:
    """Optimizer steps of one student: ``distill_epochs`` passes over ``n_points`` inputs."""
    return profile.distill_epochs * math.ceil(n_points / profile.distill_batch_size)


class Distiller:
    """Trains one student on precomputed teacher targets for ``steps`` Adam steps.

    Batches follow a per-epoch permutation seeded by ``seed`` and the epoch, so the run is a
    pure function of the step count: it checkpoints every ``ckpt_every`` steps (atomically) and
    a restarted run loads the checkpoint and continues exactly where it stopped. ``meta``
    describes the run; a checkpoint written with different ``meta`` is refused, not reused.
    """

    def __init__(
        self, student: nn.Module, targets: DistillSet, steps: int, batch_size: int, grad_weight: float = 0.0,
        lr: float = DISTILL_LR, seed: int = 0, ckpt_path: str | Path | None = None, ckpt_every: int = 200,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if steps < 1 or batch_size < 1 or len(targets) == 0:
            raise ValueError(f"need steps >= 1, batch_size >= 1 and targets (got {steps}, {batch_size}, {len(targets)})")
        self.device = targets.x.device
        self.student = student.to(self.device)
        self.targets, self.steps, self.batch_size = targets, steps, batch_size
        self.grad_weight, self.seed, self.ckpt_every = grad_weight, seed, ckpt_every
        self.grad_scale = targets.grad_scale if grad_weight > 0 else 1.0
        self.ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
        self.meta = {"steps": steps, "batch_size": batch_size, "grad_weight": grad_weight, "lr": lr, "seed": seed,
                     "n_targets": len(targets), **(meta or {})}  # fmt: skip
        self.opt = torch.optim.Adam(self.student.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=steps)
        self.step = 0
        self._history: list[list[float]] = []  # step, loss, energy_mse, grad_mse

    @property
    def iters_per_epoch(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    @property
    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self._history, columns=["step", "loss", "energy_mse", "grad_mse"])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.student.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": self.step,
                "history": [list(r) for r in self._history], "meta": dict(self.meta)}  # fmt: skip

    def save(self) -> None:
        if self.ckpt_path is not None:
            atomic_save(self.state_dict(), self.ckpt_path)

    def load(self) -> bool:
        """Resume from the checkpoint file if there is one (``weights_only=True``)."""
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return False
        state = load_checkpoint(self.ckpt_path, self.device)
        if state["meta"] != self.meta:
            diff = {k: (state["meta"].get(k), v) for k, v in self.meta.items() if state["meta"].get(k) != v}
            raise ValueError(
                f"{self.ckpt_path} belongs to a different distillation run (saved vs now: {diff}); "
                f"delete it to train this student again"
            )
        self.student.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self._history = [list(r) for r in state["history"]]
        return True

    def _batch_indices(self, step: int) -> torch.Tensor:
        epoch, it = divmod(step, self.iters_per_epoch)
        order = torch.randperm(len(self.targets), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return order[it * self.batch_size : (it + 1) * self.batch_size].to(self.device)

    def fit(self, progress: bool = True, desc: str = "distilling", max_steps: int | None = None) -> pd.DataFrame:
        """Train until ``steps`` are done (or, with ``max_steps``, stop at the first checkpoint
        at or after that many steps, so a later call resumes there); returns the history."""
        t = self.targets
        self.student.train()
        window: list[torch.Tensor] = []
        bar = tqdm(total=self.steps, initial=self.step, desc=desc, disable=not progress)
        while not self.done:
            idx = self._batch_indices(self.step)
            terms = distill_loss(self.student, t.x[idx], t.energy[idx], t.grad[idx], self.grad_weight, self.grad_scale)
            self.opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.opt.step()
            self.sched.step()
            self.step += 1
            window.append(torch.stack([terms[k].detach() for k in ("loss", "energy_mse", "grad_mse")]))
            bar.update(1)
            if len(window) >= self.ckpt_every or self.done:
                values = torch.stack(window).cpu()
                first = self.step - len(window) + 1
                self._history += [[first + i, *v.tolist()] for i, v in enumerate(values)]
                window = []
                if not math.isfinite(self._history[-1][1]):
                    raise FloatingPointError(f"distillation loss is not finite at step {self.step}")
                self.save()
                bar.set_postfix(loss=f"{self._history[-1][1]:.4g}")
                if max_steps is not None and self.step >= max_steps:
                    break
        bar.close()
        self.student.eval()
        return self.history


def teacher_fingerprint(teacher: nn.Module) -> float:
    """Sum of the teacher's parameters: ties a student checkpoint to the teacher it copied."""
    return round(float(sum(p.detach().double().sum() for p in teacher.parameters())), 6)


def load_or_distill(
    ctx: Context, name: str, variant: str, targets: DistillSet, steps: int, teacher: nn.Module,
    grad_weight: float = 0.0, progress: bool = True,
) -> tuple[EnergyModel, pd.DataFrame]:
    """The student ``name`` distilled on the ``variant`` inputs (see :data:`VARIANT_INPUTS`):
    loaded from ``ctx.checkpoints / 'student_<name>_<variant>[+grad].pt'`` when trained,
    else trained or resumed there. Returns the student (eval mode) and its loss history."""
    if variant not in VARIANT_INPUTS:
        raise KeyError(f"unknown variant {variant!r}; choose one of {list(VARIANT_INPUTS)}")
    p = ctx.profile
    run = run_name(variant, grad_weight)
    seed_everything(p.seed)
    student = build_student(name)
    distiller = Distiller(
        student, targets.select(VARIANT_INPUTS[variant]), steps, p.distill_batch_size, grad_weight=grad_weight,
        seed=p.seed, ckpt_path=ctx.checkpoints / f"student_{name}_{run}.pt", ckpt_every=p.ckpt_every,
        meta={"profile": p.name, "student": name, "variant": run, "teacher": teacher_fingerprint(teacher)},
    )
    if distiller.load() and distiller.done:
        print(f"loaded distilled {name} ({run}, {distiller.step} steps) from {distiller.ckpt_path}")
    else:
        distiller.fit(progress=progress, desc=f"distilling {name} ({run})")
    return distiller.student.eval(), distiller.history


def run_name(variant: str, grad_weight: float = 0.0) -> str:
    """``mixed``, ``real`` or ``mixed+grad``: the name of a distillation run in tables."""
    return f"{variant}+grad" if grad_weight > 0 else variant


def best_student(table: pd.DataFrame) -> pd.Series:
    """The row of the distillation table with the lowest FID (any student, any variant)."""
    if table.empty or table.FID.isna().all():
        raise ValueError("the distillation table has no scored student")
    return table.loc[table.FID.idxmin()]


def best_student_name(table: pd.DataFrame) -> str:
    """``<student>_<variant>``: how the best student's samples and checkpoint are named."""
    row = best_student(table)
    return f"{row.student}_{row.variant}"


def load_best_student(ctx: Context, table: pd.DataFrame) -> EnergyModel:
    """The best student's weights from its distillation checkpoint (nothing is trained)."""
    row = best_student(table)
    path = ctx.checkpoints / f"student_{row.student}_{row.variant}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: run notebooks/05_distillation.ipynb with profile {ctx.profile.name!r}")
    student = build_student(row.student).to(ctx.device)
    student.load_state_dict(load_checkpoint(path, ctx.device)["model"])
    return student.eval()


# ---- evaluation -------------------------------------------------------------------------
def heldout_errors(model: nn.Module, held: DistillSet, batch_size: int = 256) -> pd.DataFrame:
    """Per input kind: energy MSE against the teacher, and the mean cosine similarity of the
    input gradients (what SGLD follows) with the teacher's."""
    model.eval()
    e, g = batched_energy_grad(model, held.x, batch_size)
    cos = F.cosine_similarity(g.flatten(1), held.grad.flatten(1), dim=1, eps=1e-12)
    rows = []
    for i, k in enumerate(INPUT_KINDS):
        m = held.kind == i
        if m.any():
            rows.append({"inputs": k, "energy_mse": float((e[m] - held.energy[m]).pow(2).mean()),
                         "grad_cosine": float(cos[m].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def score_model(
    ev: Evaluator, model: nn.Module, student: str, variant: str, seed: int, held: DistillSet | None = None,
    **score_kwargs: Any,
) -> tuple[dict, pd.DataFrame, torch.Tensor | None]:
    """``Evaluator.score`` with a fixed seed, plus ``student``/``variant`` columns and, given
    held-out targets, the held-out energy MSE and gradient cosine per input kind."""
    seed_everything(seed)
    row, ood, samples = ev.score(model, f"{student}/{variant}", **score_kwargs)
    row = {"student": student, "variant": variant, **row}
    if held is not None:
        for r in heldout_errors(model, held).itertuples():
            row[f"heldout_mse_{r.inputs}"] = r.energy_mse
            row[f"grad_cosine_{r.inputs}"] = r.grad_cosine
    return row, ood, samples


THROUGHPUT_STEPS = 5  # SGLD steps per timed run, as in Evaluator.score


def measure_cost(model: nn.Module, ev: Evaluator) -> dict[str, Any]:
    """Latency and SGLD throughput of ``model`` measured exactly as ``Evaluator.score`` does,
    so a model scored elsewhere (the teacher, in notebook 02) can be timed again in the same
    process and on the same device as the students before speed-ups are taken."""
    p, device = ev.ctx.profile, ev.device
    cfg = p.sgld(p.gen_steps)
    short = SGLDConfig(min(cfg.steps, THROUGHPUT_STEPS), cfg.step_size, cfg.noise_std, cfg.grad_clamp, cfg.clamp_range)
    return {
        f"latency_ms_{device.type}": latency_ms(model, p.latency_batch, device, p.latency_repeats, p.latency_warmup),
        "sgld_img_steps_per_s": sgld_throughput(model, short, p.latency_batch, device),
        "hardware": device_name(device),
    }


def teacher_reference(teacher: nn.Module, ev: Evaluator) -> pd.Series:
    """The baseline row notebook 02 saved (IS, FID, OOD of the teacher, same Evaluator) with its
    latency and SGLD throughput replaced by :func:`measure_cost` timings taken now.

    Raises ``results.MissingResultsError`` naming notebook 02 when it has not run for this profile.
    """
    row = results.load_table(ev.ctx, "baseline").iloc[0].copy()
    for key, value in measure_cost(teacher, ev).items():
        row[key] = value
    return row


def sample_from(model: nn.Module, starts: torch.Tensor, ev: Evaluator, steps: int, seed: int) -> tuple[dict, torch.Tensor]:
    """SGLD from given chain starts (e.g. the teacher's buffer) and the IS/FID of the result."""
    p = ev.ctx.profile
    seed_everything(seed)
    samples = generate(model, len(starts), p.sgld(steps), p.gen_batch_size, device=ev.device, init=starts)
    return ev.sample_quality(samples), samples


def buffer_starts(buffer: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` chain starts drawn from the teacher's buffer (with replacement when n > size)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(buffer), (n,), generator=g) if n > len(buffer) else torch.randperm(len(buffer), generator=g)[:n]
    return buffer[idx.to(buffer.device)]


# ---- figures ----------------------------------------------------------------------------
FIGURE3_METRICS = (
    ("FID", "FID (lower is better)"),
    ("IS", "Inception Score (higher is better)"),
    ("ood_auroc", "mean OOD AUROC (transforms)"),
    ("sgld_img_steps_per_s", "SGLD image-steps / s"),
)


def plot_vs_size(
    df: pd.DataFrame, teacher: dict | pd.Series, metrics: Sequence[tuple[str, str]] = FIGURE3_METRICS,
    title: str | None = None, save: str | Path | None = None,
) -> plt.Figure:
    """Figure 3: each metric against the student's parameter count (log x), one line per
    variant, the teacher as a dashed reference line."""
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax, (col, label) in zip(axes.flat, metrics):
        for variant, part in df.sort_values("params").groupby("variant", sort=False):
            ax.plot(part["params"], part[col], "o-", label=f"students ({variant})")
            for r in part.itertuples():
                ax.annotate(r.student, (r.params, getattr(r, col)), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(teacher[col], color="k", ls="--", lw=1, label="baseline (teacher)")
        ax.axvline(PAPER_STUDENT_PARAMS, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        if col == "sgld_img_steps_per_s":
            ax.set_yscale("log")
        ax.set_xlabel("student parameters (dotted: the paper's 77,004)")
        ax.set_title(label, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    return finish(fig, title, save)


def sample_grids(
    samples: dict[str, torch.Tensor], n: int = 10, nrow: int = 10, title: str | None = None,
    save: str | Path | None = None,
) -> plt.Figure:
    """One image grid per model (its first ``n`` samples), stacked vertically."""
    rows = -(-n // nrow)
    fig, axes = plt.subplots(len(samples), 1, figsize=(nrow * 0.42, len(samples) * (rows * 0.42 + 0.32)), squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], samples.items()):
        image_grid(x[:n], nrow=nrow, ax=ax)
        ax.set_title(name, fontsize=8)
    return finish(fig, title, save)


def plot_heldout(
    df: pd.DataFrame, title: str | None = None, save: str | Path | None = None
) -> plt.Figure:
    """Bars of held-out energy MSE (log) and gradient cosine per input kind and run."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    sns.barplot(df, x="inputs", y="energy_mse", hue="run", ax=axes[0])
    axes[0].set_yscale("log")
    axes[0].set_title("held-out energy MSE vs teacher (lower is better)", fontsize=9)
    sns.barplot(df, x="inputs", y="grad_cosine", hue="run", ax=axes[1])
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_title("cosine(dE_student/dx, dE_teacher/dx) (1 = same direction)", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    return finish(fig, title, save)
