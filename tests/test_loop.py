"""The shared resumable loop, driven by a toy step whose state depends on every batch in order."""

import pytest
import torch

from ebmhelpers.loop import Limits, Progress, ResumableLoop, Window, batch_order

N, BATCH, TOTAL, EVERY = 10, 3, 10, 3  # 4 iterations per epoch (the last one short), 2.5 epochs
PRIME = 1_000_003


class Toy:
    """A "model" whose state hashes the batches it saw, in order, and a checkpoint callback that
    saves (state, step) - the toy counterpart of a trainer."""

    def __init__(self, loop: ResumableLoop, reject_once_at: int | None = None, restore_to: int = 0) -> None:
        self.loop, self.state, self.batches, self.windows, self.saved = loop, 0, [], [], []
        self.reject_once_at, self.restore_to = reject_once_at, restore_to

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.tolist())
        self.state = (self.state * 31 + sum((i + 1) * b for i, b in enumerate(batch.tolist()))) % PRIME
        return torch.tensor([float(self.state), float(len(batch))])

    def checkpoint(self, window: Window) -> bool:
        self.windows.append(window)
        if self.loop.step == self.reject_once_at:
            self.reject_once_at = None
            saved = [s for s in self.saved if s[1] == self.restore_to][-1]
            self.state = saved[0]
            self.loop.resume_at(self.restore_to)  # a rollback: back to an earlier checkpoint
            return False
        self.saved.append((self.state, self.loop.step))
        return True

    def run(self, **kwargs) -> None:
        self.loop.run(self.step, self.checkpoint, progress=False, **kwargs)


def _loop() -> ResumableLoop:
    return ResumableLoop(N, BATCH, TOTAL, seed=7, ckpt_every=EVERY)


def _uninterrupted() -> Toy:
    toy = Toy(_loop())
    toy.run()
    return toy


def test_windows_end_every_ckpt_every_at_epoch_ends_and_at_the_end():
    toy = _uninterrupted()
    assert toy.loop.iters_per_epoch == 4 and toy.loop.done and toy.loop.step == TOTAL
    assert [w.first_step + len(w.values) for w in toy.windows] == [3, 4, 7, 8, 10]
    assert [w.end_of_epoch for w in toy.windows] == [False, True, False, True, False]
    assert [s for w in toy.windows for s in w.steps] == list(range(TOTAL))  # every iteration in one window
    # the window carries what each step returned, read back in order
    assert [int(v) for w in toy.windows for v in w.values[:, 1]] == [3, 3, 3, 1] * 2 + [3, 3]
    # each epoch's batches are its seeded permutation cut in order: every item once per epoch
    epochs = [sum(toy.batches[e * 4 : (e + 1) * 4], []) for e in range(2)]
    assert epochs[0] == batch_order(N, 7, 0).tolist() and sorted(epochs[1]) == list(range(N))
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert sum(toy.batches[8:], []) == batch_order(N, 7, 2)[:6].tolist()


@pytest.mark.parametrize("max_steps,stops_at", [(1, 3), (4, 4), (5, 7), (8, 8)])
def test_resume_after_max_steps_equals_uninterrupted(max_steps, stops_at):
    full = _uninterrupted()
    first = Toy(_loop())
    first.run(limits=Limits(max_steps=max_steps))  # stops at the first checkpoint at or after max_steps
    assert first.loop.step == stops_at and first.saved[-1][1] == stops_at and not first.loop.done
    state, step = first.saved[-1]
    resumed = Toy(_loop())  # "a fresh process": a new loop and model, restored from the checkpoint
    resumed.state = state
    resumed.loop.resume_at(step)
    resumed.run()
    assert resumed.state == full.state
    assert first.batches + resumed.batches == full.batches
    assert [s for _, s in first.saved + resumed.saved] == [s for _, s in full.saved]


def test_time_budget_stops_on_a_checkpoint():
    clock = [0.0]
    toy = Toy(_loop())
    step = toy.step

    def timed_step(batch):  # every iteration takes one second of the fake clock
        clock[0] += 1.0
        return step(batch)

    toy.step = timed_step
    toy.run(limits=Limits(time_budget_s=4.5, clock=lambda: clock[0]))
    # over budget after iteration 5, but the next checkpoint is at 7: it stops there, saved
    assert toy.loop.step == 7 and toy.saved[-1] == (toy.state, 7) and not toy.loop.done
    toy.run()  # a later call resumes at that checkpoint
    full = _uninterrupted()
    assert toy.loop.done and toy.state == full.state and toy.batches == full.batches


def test_rejected_window_continues_from_the_restored_position():
    full = _uninterrupted()
    toy = Toy(_loop(), reject_once_at=7, restore_to=4)
    toy.run()
    assert [w.first_step for w in toy.windows] == [0, 3, 4, 4, 7, 8]  # 4..7 ran twice
    assert toy.batches[4:7] == toy.batches[7:10] == full.batches[4:7]  # same batches after the rollback
    assert toy.loop.done and toy.state == full.state


def test_progress_bar_moves_back():
    with Progress(total=10, position=3, desc="test") as bar:
        bar.advance()
        bar.advance()
        assert bar.position == bar._bar.n == 5
        bar.move_to(2)
        assert bar.position == bar._bar.n == 2


def test_resume_at_refuses_a_position_of_other_settings():
    loop = _loop()
    loop.resume_at(6, epoch=1, it=2)
    assert (loop.step, loop.epoch, loop.it) == (6, 1, 2)
    with pytest.raises(ValueError, match="other settings"):
        loop.resume_at(6, epoch=0, it=6)  # written with 8 iterations per epoch
