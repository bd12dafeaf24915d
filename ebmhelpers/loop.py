"""The resumable training loop shared by :class:`~ebmhelpers.training.PCDTrainer` and
:class:`~ebmhelpers.distillation.Distiller`, and :class:`LoopTrainer`, their common base.

A run is a pure function of its position: the batch of every iteration is cut from a permutation
of the training set seeded by the run's seed and the epoch (:func:`batch_order`), so the loop only
has to remember the total step; the epoch and the iteration inside it follow from it.

Iterations are grouped into *windows*, which end every ``ckpt_every`` iterations since the last
checkpoint, at every epoch end and at the end of the run. At a window's end the loop reads the
metrics of its iterations back from the device (the one host sync of a window) and hands them to
its owner's checkpoint callback, which either keeps the window (records it and saves a
checkpoint) or rejects it after restoring an earlier position (a divergence rollback); the loop
then carries on from wherever the position is. A call stops only after a kept window: when the
run is done, ``max_steps`` total iterations are reached or its time budget is spent. A stopped
run therefore always sits on a checkpoint, and a later call (in this process or, after loading
the checkpoint, in another) resumes there and takes the same batches as an uninterrupted run.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import torch

from .checkpoints import atomic_save, load_checkpoint
from .progress import tqdm

EPOCH_SEED_STRIDE = 100_003  # epoch e of a run seeded s shuffles with seed s * stride + e


def iters_per_epoch(n_items: int, batch_size: int, cap: int | None = None) -> int:
    """Batches in one pass over ``n_items`` (the last one may be short), at most ``cap`` when set."""
    n = math.ceil(n_items / batch_size)
    return min(n, cap) if cap else n


def batch_order(n_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(n_items)`` that epoch ``epoch`` cuts its batches from; drawn
    from a generator of its own, so it leaves the global RNG (and the training it drives) alone."""
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch))


@dataclass(frozen=True)
class Window:
    """The iterations since the last checkpoint, as the checkpoint callback sees them."""

    first_step: int  # total steps done before the window's first iteration
    values: torch.Tensor  # (iterations, metrics) on the host: what each iteration's step returned
    end_of_epoch: bool  # whether the window's last iteration ended an epoch

    @property
    def steps(self) -> range:
        """The total steps done before each of the window's iterations (0-based step numbers)."""
        return range(self.first_step, self.first_step + len(self.values))


@dataclass
class Limits:
    """When one call of :meth:`ResumableLoop.run` stops before the run is done (checked at kept
    checkpoints only): at ``max_steps`` total iterations, or once ``time_budget_s`` seconds of
    ``clock`` have passed since these limits were made (None = no limit)."""

    max_steps: int | None = None
    time_budget_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def reached(self, step: int) -> bool:
        """Whether a run at total step ``step`` stops here."""
        out_of_steps = self.max_steps is not None and step >= self.max_steps
        out_of_time = self.time_budget_s is not None and self.clock() - self.started > self.time_budget_s
        return out_of_steps or out_of_time


class Progress:
    """The loop's progress bar over total steps; unlike a bare ``tqdm`` it can also move back
    (to the position a rollback restored). A context manager that closes the bar."""

    def __init__(self, total: int, position: int, desc: str, enabled: bool = True) -> None:
        self._bar = tqdm(total=total, initial=position, desc=desc, disable=not enabled)
        self.position = position

    def advance(self) -> None:
        """One more iteration done."""
        self.move_to(self.position + 1)

    def move_to(self, position: int) -> None:
        """Show ``position`` iterations done (forwards or backwards)."""
        self._bar.update(position - self.position)  # tqdm takes negative increments
        if position < self.position:
            self._bar.refresh()  # tqdm redraws only on progress; show a step back at once
        self.position = position

    def show(self, values: dict[str, str]) -> None:
        """Show ``values`` after the bar (the latest metrics)."""
        self._bar.set_postfix(values)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.close()


class ResumableLoop:
    """Position, batch order, checkpoint windows, stop conditions and progress bar of one run
    of ``total_steps`` iterations over ``n_items`` training items (module docstring).

    ``step`` is the position: iterations done in total. Its owner sets it through
    :meth:`resume_at` when it loads a checkpoint or rolls back, and saves it with its checkpoints.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        total_steps: int,
        seed: int,
        ckpt_every: int,
        device: torch.device | str = "cpu",
        max_iters_per_epoch: int | None = None,
    ) -> None:
        if n_items < 1 or batch_size < 1 or ckpt_every < 1:
            raise ValueError(
                f"need n_items, batch_size and ckpt_every >= 1 (got {n_items}, {batch_size}, {ckpt_every})"
            )
        self.n_items, self.batch_size, self.total_steps = n_items, batch_size, total_steps
        self.seed, self.ckpt_every, self.device = seed, ckpt_every, torch.device(device)
        self.iters_per_epoch = iters_per_epoch(n_items, batch_size, max_iters_per_epoch)
        self.step = 0
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its batch_order on the device)

    # ---- the position -----------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.step // self.iters_per_epoch

    @property
    def it(self) -> int:
        """Iterations done inside the current epoch."""
        return self.step % self.iters_per_epoch

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def resume_at(self, step: int, epoch: int | None = None, it: int | None = None) -> None:
        """Continue from total step ``step``; a checkpoint's ``epoch`` and ``it``, when given,
        must agree with it (else the run's batch size or epoch length changed since it was saved)."""
        expected = divmod(step, self.iters_per_epoch)
        if (epoch, it) != (None, None) and (epoch, it) != expected:
            raise ValueError(
                f"a checkpoint at step {step} says epoch {epoch}, iteration {it}, but with "
                f"{self.iters_per_epoch} iterations per epoch that step is epoch {expected[0]}, "
                f"iteration {expected[1]}: it belongs to a run with other settings"
            )
        self.step = step

    def batch(self) -> torch.Tensor:
        """Indices (on the device) of the batch of the iteration at the current position."""
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, batch_order(self.n_items, self.seed, self.epoch).to(self.device))
        start = self.it * self.batch_size
        return self._order[1][start : start + self.batch_size]

    # ---- the loop ---------------------------------------------------------------------
    def run(
        self,
        train_step: Callable[[torch.Tensor], torch.Tensor],
        on_checkpoint: Callable[[Window], bool],
        *,
        after_step: Callable[[], None] | None = None,
        postfix: Callable[[Window], dict[str, str]] | None = None,
        limits: Limits | None = None,
        progress: bool = True,
        desc: str = "training",
    ) -> None:
        """Iterate until the run is done or ``limits`` are reached at a kept checkpoint.

        ``train_step(batch)`` updates the model on the batch's indices and returns its metrics as
        a 1-D device tensor (no host sync). ``after_step()``, when given, runs after each
        iteration, once the position counts it. ``on_checkpoint(window)`` runs at each window's
        end and returns True when it kept the window (checkpoint saved), False when it rejected it
        after restoring an earlier position with :meth:`resume_at`. ``postfix(window)`` gives what
        the progress bar shows after a kept window.
        """
        limits = limits or Limits()
        window: list[torch.Tensor] = []
        with Progress(self.total_steps, self.step, desc, progress) as bar:
            stop = self.done
            while not stop:
                window.append(train_step(self.batch()))
                self.step += 1
                bar.advance()
                if after_step is not None:
                    after_step()
                if self._window_ends(len(window)):
                    stop = self._end_window(window, on_checkpoint, bar, postfix, limits)
                    window = []

    def _window_ends(self, length: int) -> bool:
        """Whether a window of ``length`` iterations ends at the current position."""
        return length >= self.ckpt_every or self.it == 0 or self.done

    def _end_window(
        self,
        window: list[torch.Tensor],
        on_checkpoint: Callable[[Window], bool],
        bar: Progress,
        postfix: Callable[[Window], dict[str, str]] | None,
        limits: Limits,
    ) -> bool:
        """Hand the window to ``on_checkpoint`` and follow its verdict; returns whether to stop."""
        closed = Window(self.step - len(window), torch.stack(window).cpu(), self.it == 0)
        if not on_checkpoint(closed):
            bar.move_to(self.step)  # rejected: carry on from the position the owner restored
            return False
        if postfix is not None:
            bar.show(postfix(closed))
        return self.done or limits.reached(self.step)


def clone_state(value: Any) -> Any:
    """Deep copy of a checkpoint tree (tensors cloned), for the in-memory copy of the last good checkpoint."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: clone_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(clone_state(v) for v in value)
    return value


class LoopTrainer(abc.ABC):
    """What a trainer around a :class:`ResumableLoop` (``self.loop``) shares: the position read
    from the loop, the per-iteration history, and checkpoints written atomically to
    ``self.ckpt_path`` (None = none written) and loaded on ``self.device``.

    A subclass sets ``loop``, ``device``, ``ckpt_path`` and ``_history`` (rows of
    :attr:`HISTORY_COLUMNS`), and defines :meth:`state_dict`, :meth:`load_state_dict` and
    :meth:`check_checkpoint` (which refuses a checkpoint of another run). With
    :attr:`KEEP_LAST_GOOD` it also keeps an in-memory copy of the last saved state (``_good``),
    e.g. to roll back to.
    """

    HISTORY_COLUMNS: tuple[str, ...] = ()
    KEEP_LAST_GOOD = False
    loop: ResumableLoop
    device: torch.device
    ckpt_path: Path | None
    _history: list[list[float]]
    _good: dict[str, Any] | None = None  # in-memory copy of the last good checkpoint (KEEP_LAST_GOOD)
    seconds: float = 0.0  # wall time spent training, over every call and resumed process (kept in checkpoints)
    _clock: float | None = None  # time.monotonic() when ``seconds`` was last brought up to date (during a fit)

    # ---- the position -----------------------------------------------------------------
    @property
    def iters_per_epoch(self) -> int:
        return self.loop.iters_per_epoch

    @property
    def step(self) -> int:
        """Iterations done in total (rolled-back ones excluded)."""
        return self.loop.step

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.loop.epoch

    @property
    def it(self) -> int:
        """Iterations done inside the current epoch."""
        return self.loop.it

    @property
    def done(self) -> bool:
        """Whether all the run's iterations are done."""
        return self.loop.done

    @property
    def history(self) -> pd.DataFrame:
        """One row per iteration, with the columns :attr:`HISTORY_COLUMNS`."""
        return pd.DataFrame(self._history, columns=list(self.HISTORY_COLUMNS))

    # ---- checkpoints ------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The run's whole state, as a checkpoint holds it."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @abc.abstractmethod
    def check_checkpoint(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` when ``state`` (read from ``ckpt_path``) belongs to another run."""

    @property
    @abc.abstractmethod
    def trained_model(self) -> torch.nn.Module:
        """The network this run trains."""

    def weights_state(self) -> dict[str, Any]:
        """What a committed weight file keeps of the run (:mod:`ebmhelpers.pretrained`): the weights
        (pruning masks as booleans), the position, the history and the training seconds."""
        from .pretrained import encode_masks, pack_history

        return {
            "model": encode_masks(self.trained_model.state_dict()),
            "step": self.step,
            "history": pack_history(self._history),
            "seconds": self._elapsed(),
        }

    def install(self, state: dict[str, Any]) -> None:
        """Take over a committed run (:meth:`weights_state`) in memory: weights, position, history and
        seconds. Nothing trains on from it and no checkpoint is written."""
        from .pretrained import decode_masks, unpack_history

        self.trained_model.load_state_dict(decode_masks(state["model"]))
        self.loop.resume_at(int(state["step"]))
        self._history = unpack_history(state["history"])
        self.seconds = float(state["seconds"])

    def _elapsed(self) -> float:
        """:attr:`seconds`, brought up to date while a fit runs."""
        if self._clock is not None:
            now = time.monotonic()
            self.seconds += now - self._clock
            self._clock = now
        return self.seconds

    def save(self) -> None:
        """Remember this state as the last good one (with :attr:`KEEP_LAST_GOOD`) and, with a
        path, write it atomically (with the training seconds so far)."""
        state = self.state_dict() | {"seconds": self._elapsed()}
        if self.KEEP_LAST_GOOD:
            self._good = {k: clone_state(v) for k, v in state.items()}
        if self.ckpt_path is not None:
            atomic_save(state, self.ckpt_path)

    def load(self) -> bool:
        """Resume from the checkpoint file if there is one (``weights_only=True``); returns whether it did."""
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return False
        state = load_checkpoint(self.ckpt_path, self.device)
        self.check_checkpoint(state)
        self.load_state_dict(state)
        self.seconds = float(state.get("seconds", 0.0))
        if self.KEEP_LAST_GOOD:
            self._good = {k: clone_state(v) for k, v in state.items()}
        return True

    # ---- the loop ---------------------------------------------------------------------
    def _fit(
        self,
        train_step: Callable[[torch.Tensor], torch.Tensor],
        on_checkpoint: Callable[[Window], bool],
        postfix: Callable[[Window], dict[str, str]],
        max_steps: int | None,
        time_budget_s: float | None,
        progress: bool,
        desc: str,
        after_step: Callable[[], None] | None = None,
    ) -> pd.DataFrame:
        """Run ``self.loop`` (:meth:`ResumableLoop.run`) until the run is done, or stop at the first
        kept checkpoint at or after ``max_steps`` total iterations or once ``time_budget_s`` seconds
        are spent, so that a later call resumes there; returns the history. With
        :attr:`KEEP_LAST_GOOD`, the state before the first iteration counts as good when no
        checkpoint was saved or loaded yet."""
        limits = Limits(max_steps, time_budget_s)
        self._clock = time.monotonic()
        try:
            if self.KEEP_LAST_GOOD and self._good is None:
                self.save()
            self.loop.run(
                train_step,
                on_checkpoint,
                after_step=after_step,
                postfix=postfix,
                limits=limits,
                progress=progress,
                desc=desc,
            )
        finally:
            self._clock = None  # the time counted is the time up to the last checkpoint, as a resumed run sees it
        return self.history
