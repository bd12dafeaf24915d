"""Training: the PCD trainer of Algorithm 2 (resumable, with a divergence guard) and the
MNIST classifier behind the metrics, each with a "load if trained, else train" entry point.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from .progress import tqdm

from . import data as data_mod
from .loop import LoopTrainer, ResumableLoop, Window, clone_state, iters_per_epoch
from .models import EnergyModel, MNISTClassifier, build_baseline
from .profiles import Profile, SGLDConfig
from .checkpoints import atomic_save, load_checkpoint
from .runtime import Context, rng_state, seed_everything, set_rng_state
from . import pretrained
from .pretrained import decode_uint8, encode_uint8
from .sampling import ReplayBuffer
from .speedups import SGLDRunner

METRICS = ("loss", "cd", "reg", "e_real", "e_fake")


def pcd_loss(e_real: torch.Tensor, e_fake: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    """``E(x+) - E(x-) + alpha (E(x+)^2 + E(x-)^2)``, averaged over the batch (the paper's Algorithm 2, lines 9-11)."""
    cd = e_real.mean() - e_fake.mean()
    reg = alpha * (e_real.pow(2).mean() + e_fake.pow(2).mean())
    return {"loss": cd + reg, "cd": cd, "reg": reg, "e_real": e_real.mean(), "e_fake": e_fake.mean()}


# With the loss above, data and samples that the network tells apart perfectly drive E(x+) to the
# regularizer's floor -1/(2 alpha) and E(x-) to +1/(2 alpha), so the gap E(x-) - E(x+) saturates
# at 1/alpha; a model whose samples resemble the data keeps it near 0 (|gap| < 1 on healthy runs).
# The guard fires at this fraction of the saturated gap: a gap of 1/(2 alpha) is reached when the
# data already sit at the floor while the samples are not pulled down at all.
COLLAPSE_GAP_FRACTION = 0.5


def weights_fingerprint(model: nn.Module) -> str:
    """A short sha256 of a model's weights (names, shapes and values)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def energy_gap_bound(profile: Profile) -> float:
    """The window-mean ``E(x-) - E(x+)`` above which training counts as collapsed:
    ``profile.max_energy_gap``, or :data:`COLLAPSE_GAP_FRACTION` / ``alpha`` when that is None."""
    if profile.max_energy_gap is not None:
        return profile.max_energy_gap
    return COLLAPSE_GAP_FRACTION / profile.alpha


class DivergenceError(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks."""


class WeightAverages:
    """Exponential moving averages of a model's floating-point weights, one per decay ``d``:
    ``avg <- d * avg + (1 - d) * w`` after every optimizer step. Tagged ``ema<d>`` (``ema0.999``);
    an average starts from the weights it is first given (the start of training or of a resumed run)."""

    def __init__(self, model: nn.Module, decays: tuple[float, ...]) -> None:
        if any(not 0.0 < d < 1.0 for d in decays):
            raise ValueError(f"EMA decays must lie in (0, 1), got {decays}")
        self.model, self.decays = model, tuple(decays)
        self.averages: dict[str, dict[str, torch.Tensor]] = {}
        self.reset()

    @staticmethod
    def tag(decay: float) -> str:
        return f"ema{decay:g}"

    def reset(self) -> None:
        """Start every average at the model's current weights."""
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items() if v.is_floating_point()}
        self.averages = {self.tag(d): {k: v.clone() for k, v in weights.items()} for d in self.decays}

    @torch.no_grad()
    def update(self) -> None:
        if not self.decays:
            return
        current = self.model.state_dict()
        for d in self.decays:
            for k, avg in self.averages[self.tag(d)].items():
                avg.lerp_(current[k], 1.0 - d)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {tag: {k: v.clone() for k, v in avg.items()} for tag, avg in self.averages.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]] | None) -> None:
        """Take saved averages; the decays a state lacks (none saved yet) start at the current weights."""
        self.reset()
        for tag, avg in (state or {}).items():
            if tag in self.averages:
                self.averages[tag] = {k: v.to(self.averages[tag][k].device).clone() for k, v in avg.items()}

    def weights(self, tag: str) -> dict[str, torch.Tensor]:
        """A full state dict of the model with the averaged weights of ``tag`` in place of the trained ones."""
        return {**self.model.state_dict(), **self.averages[tag]}


class PCDTrainer(LoopTrainer):
    """Persistent contrastive divergence with a replay buffer (the paper's Algorithm 2).

    Every ``profile.ckpt_every`` iterations the trainer reads its metrics back from the device
    once (the only host sync of an iteration window) and then either

    * writes a checkpoint atomically (model, optimizer, scheduler, buffer, RNG states, history),
      when the window is healthy (see :meth:`_healthy`): the loss is finite, no |energy| exceeds
      ``profile.max_abs_energy`` and the window-mean energy gap ``E(x-) - E(x+)`` stays below
      :func:`energy_gap_bound` (else the samples have collapsed to noise: see
      :data:`COLLAPSE_GAP_FRACTION`); or
    * rolls back to the last good checkpoint, multiplies the learning rate by
      ``profile.rollback_lr_factor``, reseeds the RNGs and records the rollback - what the paper
      did by hand when training diverged.

    The position, the per-epoch batch order, the windows, the stop conditions and the progress
    bar are :class:`~ebmhelpers.loop.ResumableLoop`'s (``self.loop``; position, checkpoint files
    and the in-memory last good copy: :class:`~ebmhelpers.loop.LoopTrainer`). A run killed at any point
    and started again with the same checkpoint path continues from the last checkpoint and
    reaches the same state as an uninterrupted run, bit for bit where the kernels are
    deterministic (on the CPU with one thread; multi-threaded reductions differ in the last bits).
    """

    HISTORY_COLUMNS = ("step", "epoch", "lr", *METRICS)  # one row per iteration
    KEEP_LAST_GOOD = True  # the checkpoint a rollback returns to

    def __init__(
        self,
        model: nn.Module,
        profile: Profile,
        data: torch.Tensor,
        ckpt_path: str | Path | None = None,
        device: torch.device | str | None = None,
        buffer: ReplayBuffer | None = None,
        sgld_cfg: SGLDConfig | None = None,
        snapshots: dict[int, Path] | None = None,
        origin: str = "",
    ) -> None:
        self.profile = p = profile
        self.origin = (
            origin  # what the run starts from (a fine-tuning: the committed baseline's sha256); checked on resume
        )
        self.snapshots = dict(snapshots or {})  # step -> file that keeps the weights after that step
        self.device = torch.device(device) if device is not None else data.device
        self.model = model.to(self.device)
        # The training chains' own runner (K SGLD steps per call), under the profile's amp_dtype; the
        # digits the model is scored on, and the throughput reported beside them, come from the fp32
        # runner of metrics.Evaluator.sampler.
        self.sampler = SGLDRunner(self.model, p.speedups(self.device), p.amp_dtype)
        self.data = data.to(self.device)
        self.sgld_cfg = sgld_cfg or p.sgld_config()
        self.buffer = (
            buffer
            if buffer is not None
            else ReplayBuffer(
                p.buffer_size, tuple(data.shape[1:]), p.reinit_frac, self.device, p.buffer_max_age, p.buffer_grows
            )
        )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=p.lr, betas=p.betas)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=1, gamma=p.lr_gamma)
        self.ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
        self.loop = ResumableLoop(
            len(self.data),
            p.batch_size,
            training_iterations(p, len(self.data)),
            p.seed,
            p.ckpt_every,
            self.device,
            p.max_iters_per_epoch,
        )
        self.averages = WeightAverages(self.model, p.ema_decays)
        self.installed_from: str | None = (
            None  # sha256 of the committed file this run was installed from, until it trains
        )
        self.continued_from: str | None = (
            None  # sha256 of the committed file this run started from (kept while it trains)
        )
        self.rollbacks: list[dict[str, Any]] = []
        self._history: list[list[float]] = []  # rows: step, epoch, lr, *METRICS
        self._good: dict[str, Any] | None = None  # in-memory copy of the last good checkpoint

    # ---- bookkeeping ------------------------------------------------------------------
    @property
    def trained_model(self) -> nn.Module:
        return self.model

    def weights_state(self) -> dict[str, Any]:
        """The committed file's content (:meth:`LoopTrainer.weights_state`) with the rollbacks."""
        return super().weights_state() | {"rollbacks": [dict(r) for r in self.rollbacks]}

    def install(self, state: dict[str, Any]) -> None:
        super().install(state)
        self.rollbacks = [dict(r) for r in state["rollbacks"]]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "buffer": self.buffer.state_dict(),
            "averages": self.averages.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "it": self.it,
            "step": self.step,
            "rollbacks": [dict(r) for r in self.rollbacks],
            "history": [list(r) for r in self._history],
            "profile": self.profile.name,
            "installed_from": self.installed_from or "",
            "continued_from": self.continued_from or "",
            "origin": self.origin,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.buffer.load_state_dict(state["buffer"])
        self.averages.load_state_dict(state.get("averages"))
        set_rng_state(state["rng"])
        self.loop.resume_at(state["step"], state["epoch"], state["it"])
        self.rollbacks = [dict(r) for r in state["rollbacks"]]
        self._history = [list(r) for r in state["history"]]
        self.installed_from = state.get("installed_from") or None
        self.continued_from = state.get("continued_from") or None

    @property
    def identity(self) -> str:
        """What the models derived from this run (fine-tunings, students) record as their parent: the
        sha256 of the committed file it was installed from, else ``local:`` and a hash of its weights."""
        if self.installed_from:
            return self.installed_from
        return "local:" + weights_fingerprint(self.model)

    def save_snapshot(self, path: Path) -> None:
        """Keep the model's weights at this step (e.g. a lottery-ticket rewind point), with the
        replay buffer rounded to 8 bits (a quarter of its fp32 size), so that a snapshot chosen
        on validation data can become the baseline with its chains."""
        atomic_save(
            {
                "model": self.model.state_dict(),
                "step": self.step,
                "epoch": self.epoch + self.it / self.iters_per_epoch,
                "profile": self.profile.name,
                "buffer_uint8": encode_uint8(self.buffer.samples),
                "averages": self.averages.state_dict(),
            },
            path,
        )

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint written by another profile, or by a run that started from something else."""
        if state.get("profile") != self.profile.name:
            raise ValueError(
                f"{self.ckpt_path} was written by profile {state.get('profile')!r}, not {self.profile.name!r}"
            )
        if state.get("origin", "") != self.origin:
            raise ValueError(
                f"{self.ckpt_path} belongs to a run that started from another baseline; delete it to train this one"
            )

    def install_pretrained(self, state: dict[str, Any], snapshot_paths: dict[str, Path], sha256: str) -> None:
        """Take over a committed baseline (:mod:`ebmhelpers.pretrained`, file hash ``sha256``): its
        weights, buffer, history, rollbacks, position and seconds, with fresh Adam moments, and write it
        (and its kept snapshots, to ``snapshot_paths[tag]``) as ordinary checkpoints."""
        self.model.load_state_dict(state["model"])
        self.averages.reset()
        self.buffer.samples = decode_uint8(state["buffer_uint8"]).to(self.device)
        with warnings.catch_warnings():  # stepping the schedule without optimizer steps is the point here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(int(state["epoch"])):
                self.sched.step()
        self.loop.resume_at(int(state["step"]), int(state["epoch"]), int(state["it"]))
        self.rollbacks = [dict(r) for r in state["rollbacks"]]
        self._history = [list(r) for r in state["history"]]
        self.seconds = float(state.get("seconds", 0.0))
        self.installed_from = self.continued_from = sha256
        for tag, snap in state["snapshots"].items():
            if tag in snapshot_paths:
                atomic_save(
                    {"model": snap["model"], "step": snap["step"], "profile": self.profile.name}, snapshot_paths[tag]
                )
        self.save()

    # ---- one iteration ----------------------------------------------------------------
    def train_step(self, x_real: torch.Tensor) -> torch.Tensor:
        """One PCD update; returns the metrics as a device tensor (no host sync)."""
        p = self.profile
        x_real = (x_real + p.data_noise_std * torch.randn_like(x_real)).clamp_(-1.0, 1.0)
        x0, _ = self.buffer.sample(len(x_real))
        x_fake = self.sampler(x0, self.sgld_cfg)
        self.buffer.update(x_fake)
        energies = self.model(torch.cat([x_real, x_fake]))
        terms = pcd_loss(*energies.float().chunk(2), alpha=p.alpha)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), p.grad_clip)
        self.opt.step()
        self.averages.update()
        return torch.stack([terms[k].detach() for k in METRICS])

    def _healthy(self, window: torch.Tensor) -> str | None:
        """Why a window of metrics (iterations x :data:`METRICS`, on the host) is unhealthy, or
        None when it is fine: a non-finite value, an energy beyond ``max_abs_energy`` (blow-up),
        or a window-mean gap ``E(x-) - E(x+)`` beyond :func:`energy_gap_bound` (collapse: the
        fakes are told apart from the data perfectly while every energy stays bounded)."""
        if not torch.isfinite(window).all():
            return "non-finite loss or energy"
        e_real, e_fake = window[:, METRICS.index("e_real")], window[:, METRICS.index("e_fake")]
        worst = torch.maximum(e_real.abs(), e_fake.abs()).max().item()
        if worst > self.profile.max_abs_energy:
            return f"|energy| reached {worst:.3g} > {self.profile.max_abs_energy:g}"
        gap, bound = (e_fake - e_real).mean().item(), energy_gap_bound(self.profile)
        if gap > bound:
            return (
                f"energy gap E(x-) - E(x+) = {gap:.3g} > {bound:.3g} (window mean): the samples are told "
                f"apart from the data, i.e. they collapsed to noise; {self._buffer_summary()}"
            )
        return None

    def _buffer_summary(self) -> str:
        """Pixel mean and std of the replay buffer next to the data's and uniform noise's
        (0 and 1/sqrt(3)): a diagnostic for the rollback record, computed only when the guard fires."""
        b, d = self.buffer.samples, self.data
        return (
            f"buffer pixel mean/std {b.mean().item():.2f}/{b.std().item():.2f}, data {d.mean().item():.2f}/"
            f"{d.std().item():.2f}, uniform noise 0.00/{1 / math.sqrt(3):.2f}"
        )

    def _rollback(self, reason: str) -> None:
        p = self.profile
        if len(self.rollbacks) >= p.max_rollbacks:
            raise DivergenceError(f"training diverged {len(self.rollbacks) + 1} times (last: {reason}); giving up")
        failed_at = self.step
        self.load_state_dict({k: clone_state(v) for k, v in self._good.items()})
        for group in self.opt.param_groups:
            group["lr"] *= p.rollback_lr_factor
        seed = p.seed + 1000 * (len(self.rollbacks) + 1)
        seed_everything(seed)
        self.rollbacks.append(
            {
                "failed_at_step": failed_at,
                "resumed_from_step": self.step,
                "reason": reason,
                "new_lr": self.opt.param_groups[0]["lr"],
                "new_seed": seed,
            }
        )
        self.save()

    # ---- the loop ---------------------------------------------------------------------
    def fit(
        self,
        max_steps: int | None = None,
        time_budget_s: float | None = None,
        progress: bool = True,
        on_window: Callable[["PCDTrainer"], None] | None = None,
    ) -> pd.DataFrame:
        """Train until ``profile.epochs`` are done, or stop at the first checkpoint at or after
        ``max_steps`` total iterations or once ``time_budget_s`` seconds are spent, so that a later
        call resumes there. ``on_window(self)`` runs after every kept checkpoint. Returns the history."""
        return self._fit(
            lambda batch: self.train_step(self.data[batch]),
            lambda window: self._end_window(window, on_window),
            _postfix,
            max_steps,
            time_budget_s,
            progress,
            f"PCD training ({self.profile.name})",
            after_step=self._keep_snapshot,
        )

    def _keep_snapshot(self) -> None:
        """Save the weights when this step is one of ``snapshots`` (even if later rolled back:
        the step is then trained again and its snapshot rewritten)."""
        if self.step in self.snapshots:
            self.save_snapshot(self.snapshots[self.step])

    def _end_window(self, window: Window, on_window: Callable[["PCDTrainer"], None] | None) -> bool:
        """Keep a healthy window (history, the scheduler's step at an epoch end, checkpoint,
        ``on_window``) or roll back to the last good checkpoint; returns whether it was kept."""
        reason = self._healthy(window.values)
        if reason is not None:
            self._rollback(reason)
            return False
        # One learning rate for the whole window: it changes only at epoch ends and rollbacks,
        # both of which come after the window's iterations.
        lr = self.opt.param_groups[0]["lr"]
        per_epoch = self.iters_per_epoch
        self.installed_from = None  # trained here from now on
        self._history += [[s, s // per_epoch, lr, *v] for s, v in zip(window.steps, window.values.tolist())]
        if window.end_of_epoch:
            self.sched.step()
        self.save()
        if on_window is not None:
            on_window(self)
        return True


def _postfix(window: Window) -> dict[str, str]:
    """The progress bar's postfix: the loss and mean energies of the window's last iteration."""
    last = dict(zip(METRICS, window.values[-1].tolist()))
    return {k: f"{last[k]:.3f}" for k in ("loss", "e_real", "e_fake")}


REWIND_FRACTION = 0.02  # lottery tickets rewind to this fraction of the baseline's iterations


def training_iterations(profile: Profile, n_train: int) -> int:
    """PCD iterations of a full run of ``profile`` on ``n_train`` digits."""
    return profile.epochs * iters_per_epoch(n_train, profile.batch_size, profile.max_iters_per_epoch)


def rewind_step(profile: Profile, n_train: int) -> int:
    """The iteration lottery tickets rewind to: ``REWIND_FRACTION`` of the baseline run."""
    return max(1, round(REWIND_FRACTION * training_iterations(profile, n_train)))


def snapshot_path(ctx: Context, tag: str) -> Path:
    """File of a kept baseline snapshot: ``rewind`` or ``epoch<N>``."""
    return ctx.checkpoints / f"baseline_{tag}.pt"


def baseline_snapshots(ctx: Context, n_train: int) -> dict[int, Path]:
    """Steps at which the baseline run keeps its weights: the lottery-ticket rewind point and
    the end of every epoch in ``profile.snapshot_epochs`` (for the training-length study)."""
    p = ctx.profile
    per_epoch = training_iterations(p.replace(epochs=1), n_train)
    steps = {rewind_step(p, n_train): snapshot_path(ctx, "rewind")}
    steps |= {e * per_epoch: snapshot_path(ctx, f"epoch{e}") for e in p.snapshot_epochs if e <= p.epochs}
    return steps


def load_snapshot(ctx: Context, tag: str) -> tuple[EnergyModel, int]:
    """A kept baseline snapshot (see :func:`baseline_snapshots`) and the step it was taken at."""
    path = snapshot_path(ctx, tag)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: it is written while the baseline trains; delete "
            f"{ctx.checkpoints / 'baseline.pt'} and run notebook 01 to train it again"
        )
    state = load_checkpoint(path, ctx.device)
    model = build_baseline(ctx.profile.baseline).to(ctx.device)
    model.load_state_dict(state["model"])
    return model.eval(), int(state["step"])


def load_or_train_baseline(ctx: Context, progress: bool = True, train: bool | None = None) -> PCDTrainer:
    """The baseline EBM of ``ctx.profile`` (architecture ``profile.baseline``): the committed weights
    (:mod:`ebmhelpers.pretrained`) when the profile has them, installed as ordinary checkpoints in
    ``ctx.checkpoints``; else (or when ``train``, default ``EBM_TRAIN=1``, asks) loaded if fully trained
    there, and trained or resumed otherwise.

    A checkpoint trained here is never overwritten by an install: with committed weights and without
    ``train`` it is a :class:`~ebmhelpers.pretrained.WeightsError` that says what to do."""
    p = ctx.profile
    images = data_mod.load_training_split("fit", p.val_size, p.train_subset, p.seed, ctx.device)
    seed_everything(p.seed)
    snapshots = baseline_snapshots(ctx, len(images))
    trainer = PCDTrainer(
        build_baseline(p.baseline),
        p,
        images,
        ckpt_path=ctx.checkpoints / "baseline.pt",
        device=ctx.device,
        snapshots=snapshots,
    )
    if not pretrained.wants_training(train):
        _install_committed(ctx, trainer, snapshots)
    if trainer.load() and trainer.done:
        source = f"installed from {pretrained.path_for(p.name)}" if trainer.installed_from else "trained here"
        print(f"loaded the baseline ({source}): {trainer.step} iterations, from {trainer.ckpt_path}")
    else:
        trainer.fit(progress=progress)
    trainer.model.eval()
    return trainer


def _install_committed(ctx: Context, trainer: PCDTrainer, snapshots: dict[int, Path]) -> None:
    """Install the profile's committed baseline into ``trainer``'s checkpoints unless they already hold it."""
    p = ctx.profile
    entry = pretrained.read_manifest(p.name).get("baseline")
    if entry is None:
        return
    if trainer.ckpt_path.exists():
        saved = load_checkpoint(trainer.ckpt_path)
        installed, continued = saved.get("installed_from", ""), saved.get("continued_from", "")
        if installed == entry["sha256"] or (not installed and continued == entry["sha256"]):
            return  # the committed baseline, installed, or trained on from it (a continued run resumes)
        if not installed:
            raise pretrained.WeightsError(
                f"{trainer.ckpt_path} was trained here, and profile {p.name!r} has committed weights: delete it "
                f"to use the committed weights, or set {pretrained.TRAIN_ENV}=1 to use (or resume) the local run"
            )
    state = pretrained.load(p.name, "baseline", architecture=p.baseline, model=trainer.model)
    tags = {path.stem.removeprefix("baseline_"): path for path in snapshots.values()}
    trainer.install_pretrained(state, tags, entry["sha256"])
    print(
        f"installed the committed baseline {pretrained.path_for(p.name)}: {entry['iterations']:,} iterations, "
        f"{entry['seconds'] / 3600:.1f} h on {entry['hardware']} ({entry['command']}); set "
        f"{pretrained.TRAIN_ENV}=1 to train it here instead"
    )


# ---- the classifier behind IS and FID ---------------------------------------------------
@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a classifier."""
    model.eval()
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, seed: int = 0, progress: bool = True
) -> MNISTClassifier:
    """Train :class:`MNISTClassifier` with Adam and a one-cycle schedule."""
    seed_everything(seed)
    model = MNISTClassifier().to(images.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="classifier", disable=not progress)
    model.train()
    for _ in range(epochs):
        for idx in data_mod.batches(len(images), batch_size, gen):
            idx = idx.to(images.device)
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return model.eval()


def load_or_train_classifier(ctx: Context, progress: bool = True) -> tuple[MNISTClassifier, float]:
    """The metric classifier of ``ctx.profile`` (:func:`metric_classifier`) and its test accuracy."""
    model = metric_classifier(ctx, progress)
    test_x, test_y = data_mod.load_dataset("mnist", train=False, device=ctx.device)
    return model, accuracy(model, test_x, test_y)


def metric_classifier(ctx: Context, progress: bool = True) -> MNISTClassifier:
    """The metric classifier of ``ctx.profile``: ``classifier.pt`` in its checkpoints, installed there
    from the committed baseline's file when it has one (unless ``EBM_TRAIN=1``), else trained there."""
    p = ctx.profile
    path = ctx.checkpoints / "classifier.pt"
    committed = None if path.exists() or pretrained.wants_training() else pretrained.load(p.name, "baseline")
    if committed is not None and "classifier" in committed:
        atomic_save({"model": committed["classifier"]}, path)
    if path.exists():
        model = MNISTClassifier().to(ctx.device)
        model.load_state_dict(load_checkpoint(path, ctx.device)["model"])
        model.eval()
    else:
        x, y = data_mod.load_training_split("fit", p.val_size, p.clf_train_subset, p.seed, ctx.device, with_labels=True)
        model = train_classifier(x, y, p.clf_epochs, p.clf_batch_size, seed=p.seed, progress=progress)
        atomic_save({"model": model.state_dict()}, path)
    return model
