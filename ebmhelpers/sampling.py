"""SGLD (the paper's Algorithm 1) and the replay buffer of persistent chains (Algorithm 2).

The step loop is written for accelerators: the network's parameters are frozen while sampling
so backward computes only the input gradient, every operation stays on the device, and nothing
in the loop reads a value back to the host (no ``.item()``, no Python branch on tensor data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from .progress import tqdm

from .profiles import SGLDConfig
from .runtime import resolve_amp_dtype

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_GRAD_SCALE = 2.0**10  # loss scale of fp16 input gradients, see energy_grad


class SamplingNotSupportedError(RuntimeError):
    """The energy model gives no input gradient (e.g. an int8 model), so SGLD cannot run."""


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def energy_grad(model: nn.Module, x: torch.Tensor, amp_dtype: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies E(x) and their input gradient dE/dx (parameters must already be frozen).

    ``amp_dtype`` is None (fp32), "bf16", "fp16" or "auto" (:func:`runtime.autocast_dtype`: per device).
    Under fp16 the backward pass runs in fp16, whose smallest normal number is 6e-5: per-pixel
    gradients far below it (about 3e-7 for a freshly initialised ResNet18) lose their digits or
    flush to zero, a 20-30% error. So the energy sum is scaled by :data:`FP16_GRAD_SCALE` before
    autograd and the gradient divided by it after (a power of two: both exact). The scaled output
    gradient, 1024 per image, leaves a factor 64 below fp16's largest number, 65504.
    """
    x = x.detach().requires_grad_(True)
    dtype = AMP_DTYPES[resolve_amp_dtype(amp_dtype, x.device)]
    with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        energy = model(x)
    if not energy.requires_grad:  # the graph from x to E was cut (e.g. int8 kernels)
        raise SamplingNotSupportedError(
            f"{type(model).__name__} gives no gradient with respect to its input, so SGLD "
            f"cannot follow -dE/dx. Quantized int8 kernels have no backward pass; use a "
            f"weight-only or fake-quantized model to sample."
        )
    scale = FP16_GRAD_SCALE if dtype is torch.float16 else 1.0
    (grad,) = torch.autograd.grad(energy.float().sum() * scale, x)
    return energy.detach().float(), grad / scale if scale != 1.0 else grad


def batched_energy_grad(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "energies and input gradients",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies and dE/dx of every image in ``x``, in batches computed on ``device`` (default:
    ``x``'s) with the parameters frozen; both results are returned on ``x``'s device."""
    device = device or x.device
    energies, grads = [], []
    with frozen(model):
        for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress):
            e, g = energy_grad(model, x[i : i + batch_size].to(device))
            energies.append(e.to(x.device))
            grads.append(g.to(x.device))
    return torch.cat(energies), torch.cat(grads)


def sgld_step(
    model: nn.Module, x: torch.Tensor, cfg: SGLDConfig, noise: torch.Tensor, amp_dtype: str | None = None
) -> torch.Tensor:
    """One SGLD update of ``x``, in place (the body of Algorithm 1's loop); returns ``x``.

    ``noise`` is a scratch tensor shaped like ``x``, overwritten with fresh N(0, noise_std) draws
    (reused across steps, so a chain allocates nothing per step). Freeze the parameters around a
    run of steps (:func:`frozen`, as :func:`sgld` does) so backward builds only dE/dx.
    """
    x.add_(noise.normal_(0.0, cfg.noise_std))  # exploration: Gaussian noise
    if cfg.clamp_range is not None:
        x.clamp_(*cfg.clamp_range)  # stay in the image range
    _, grad = energy_grad(model, x, amp_dtype)  # dE/dx at the noised point
    x.sub_(cfg.step_size * grad.clamp_(-cfg.grad_clamp, cfg.grad_clamp))  # downhill, each pixel moves <= step*clamp
    if cfg.clamp_range is not None:
        x.clamp_(*cfg.clamp_range)
    return x


def sgld(
    model: nn.Module,
    x: torch.Tensor,
    cfg: SGLDConfig,
    record_every: int | None = None,
    amp_dtype: str | None = None,
    progress: bool = False,
    freeze: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run ``cfg.steps`` SGLD updates from ``x`` downhill on the energy (Algorithm 1).

    Each step is one :func:`sgld_step`: N(0, noise_std) noise, then a move by
    ``-step_size * clamp(dE/dx)``, inside ``cfg.clamp_range``. With ``record_every=k`` it also
    returns the chain, a tensor (T, N, ...) of the state every k steps (step 0 included) for figures.
    ``freeze=False`` leaves the parameters trainable, so backward also builds their gradients'
    graph; it exists only so the benchmark can measure what freezing saves.
    """
    x = x.detach().clone()
    chain = [x.clone()] if record_every else None
    noise = torch.empty_like(x)
    with frozen(model) if freeze else contextlib.nullcontext():
        for step in tqdm(range(cfg.steps), desc="SGLD", leave=False, disable=not progress):
            sgld_step(model, x, cfg, noise, amp_dtype)
            if record_every and (step + 1) % record_every == 0:
                chain.append(x.clone())
    return (x, torch.stack(chain)) if record_every else x


def uniform_noise(n: int, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Fresh chains: U(-1, 1) images."""
    return torch.rand((n, *shape), device=device).mul_(2).sub_(1)


class ReplayBuffer:
    """Persistent chains for PCD: a fixed-size tensor of past samples on the device.

    :meth:`sample` draws a batch of chain starts, ``reinit_frac`` of them fresh U(-1, 1)
    noise and the rest random buffer entries; :meth:`update` writes the chains' end states
    back over the slots they came from. Fixed size and index writes keep it sync-free.

    **How it differs from the paper.** The paper's Algorithm 2 (§3.2, from its reference [14],
    tutorial 8) starts from an empty buffer (line 1, "Initialize empty buffer") and *adds* every
    batch's samples to it (line 12, ``B <- B ∪ x-``), drawing 95% of the starts from it (line 4).
    By default this buffer starts *full*, ``size`` (8,192) U(-1, 1) images, and writes each chain
    back over its slot: a fixed population of persistent chains that training refines.
    ``grow=True`` below is the paper's and tutorial 8's growing buffer.

    Two variants of the recipe (the recipe study, ``python -m ebmhelpers recipe-study``):

    * ``max_age=N``: a chain that has been updated N times is restarted from noise when it is
      drawn, so no chain runs longer than N x K SGLD steps and generation with N x K steps from
      noise samples what training saw;
    * ``grow=True``: tutorial 8's buffer, which starts with one batch of noise and grows: the end
      states are *added* (newest first, the oldest dropped beyond ``size``) instead of written
      back over the slots they came from.
    """

    def __init__(
        self,
        size: int,
        shape: tuple[int, ...] = (1, 28, 28),
        reinit_frac: float = 0.05,
        device: torch.device | str = "cpu",
        max_age: int | None = None,
        grow: bool = False,
    ) -> None:
        if size <= 0 or not 0.0 <= reinit_frac <= 1.0:
            raise ValueError(f"invalid buffer size {size} or reinit fraction {reinit_frac}")
        if max_age is not None and max_age < 1:
            raise ValueError(f"max_age must be at least 1 update, got {max_age}")
        self.shape = tuple(shape)
        self.size = size
        self.reinit_frac = reinit_frac
        self.max_age = max_age
        self.grow = grow
        self.samples = uniform_noise(size, self.shape, device)
        self.ages = torch.zeros(size, dtype=torch.long, device=device)  # updates each slot's chain has had
        self.count = 0 if grow else size  # filled slots (grow: written ring-wise from slot 0)
        self._write_pos = 0  # grow: the next slot to write
        self._last_idx: torch.Tensor | None = None
        self._last_ages: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chain starts (n, *shape) and a bool mask of which ones are fresh noise."""
        device = self.samples.device
        idx = torch.randint(max(self.count, 1), (n,), device=device)
        fresh = torch.rand(n, device=device) < self.reinit_frac
        if self.count == 0:
            fresh[:] = True  # an empty growing buffer: every chain starts from noise
        if self.max_age is not None:
            fresh |= self.ages[idx] >= self.max_age
        starts = torch.where(
            fresh.view(-1, *([1] * len(self.shape))), uniform_noise(n, self.shape, device), self.samples[idx]
        )
        self._last_idx = idx
        self._last_ages = torch.where(fresh, 0, self.ages[idx])
        return starts, fresh

    def update(self, x: torch.Tensor) -> None:
        """Store the end states of the chains drawn by the last :meth:`sample`."""
        if self._last_idx is None or len(x) != len(self._last_idx):
            raise RuntimeError("update() must follow sample() with the same batch size")
        if self.grow:  # tutorial 8: add the new states, overwriting the oldest once full
            slots = (self._write_pos + torch.arange(len(x), device=x.device)) % self.size
            self._write_pos = int((self._write_pos + len(x)) % self.size)
            self.count = min(self.size, self.count + len(x))
        else:
            slots = self._last_idx
        self.samples[slots] = x.detach()
        self.ages[slots] = self._last_ages + 1
        self._last_idx = self._last_ages = None

    @property
    def filled(self) -> torch.Tensor:
        """The slots that hold chain states (all of them unless a growing buffer is not yet full)."""
        return self.samples[: self.count] if self.count else self.samples[:0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "samples": self.samples,
            "ages": self.ages,
            "count": torch.tensor(self.count),
            "pos": torch.tensor(self._write_pos),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.samples = state["samples"].to(self.samples.device)
        self.ages = state.get("ages", torch.zeros(len(self.samples), dtype=torch.long)).to(self.samples.device)
        self.count = int(state.get("count", len(self.samples)))
        self._write_pos = int(state.get("pos", 0))


@torch.no_grad()
def _noise_batches(n: int, batch_size: int, shape, device) -> Iterator[torch.Tensor]:
    for start in range(0, n, batch_size):
        yield uniform_noise(min(batch_size, n - start), shape, device)


def generate(
    model: nn.Module,
    n: int,
    cfg: SGLDConfig,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    shape: tuple[int, ...] = (1, 28, 28),
    amp_dtype: str | None = None,
    init: torch.Tensor | None = None,
    progress: bool = True,
    sampler: Callable[[torch.Tensor, SGLDConfig], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate ``n`` samples by SGLD from uniform noise (or from ``init``), in batches.

    ``sampler(x, cfg)`` runs the chains when given (e.g. a :class:`~ebmhelpers.speedups.SGLDRunner`
    with the profile's speed-ups); by default :func:`sgld` with ``amp_dtype``."""
    sampler = sampler or (lambda x, c: sgld(model, x, c, amp_dtype=amp_dtype))
    device = device or next(model.parameters()).device
    starts = init.split(batch_size) if init is not None else _noise_batches(n, batch_size, shape, device)
    out = []
    total = -(-n // batch_size)
    for x0 in tqdm(starts, total=total, desc=f"generate {n} x {cfg.steps} SGLD steps", disable=not progress):
        out.append(sampler(x0.to(device), cfg))
    return torch.cat(out)[:n]
