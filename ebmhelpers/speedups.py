"""Faster SGLD: channels_last and ``torch.compile`` of the energy network.

SGLD is the series' hot loop (training spends most of its time in it). On 28x28 digits a ResNet18
step is many small kernels, so a GPU idles between launches unless the batch is large.
:class:`SGLDRunner` runs the same chain as :func:`sampling.sgld` (one :func:`sampling.sgld_step`
per step, parameters frozen) with either of two changes. A profile turns each on by its field of
the same name (:meth:`profiles.Profile.speedups`): ``channels_last`` on any device, ``compile`` on
CUDA devices only, so it serves the GPU profiles.
``python -m ebmhelpers bench --speedups`` measures each on a GPU, with its agreement with eager SGLD:

* ``channels_last``: the network's weights (and so its activations) in NHWC, the layout the
  tensor-core convolutions of cuDNN prefer under bf16 (the cpu profile turns it on too:
  ``python -m ebmhelpers bench --interleaved`` measures it on a CPU);
* ``compile``: ``torch.compile`` of the energy network (``fullgraph=True``: a graph break is an
  error, never a silent partial compile); AOTAutograd compiles its forward and the backward that
  ``autograd.grad`` runs for dE/dx. The network is compiled, not the whole step: tracing
  ``autograd.grad`` needs ``torch._dynamo.config.trace_autograd_ops = True``, which torch 2.11
  rejects ("Unsupported Tensor.requires_grad_() call"), and what it would add, fusing the step's
  five elementwise operations, is small beside the network's kernels.

Neither changes what is computed; the chains differ from eager ones only by floating-point
rounding (tests/test_speedups.py; on a GPU, the bench's agreement columns). Nothing falls back:
a change that cannot run raises.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .profiles import SGLDConfig, Speedups
from .sampling import sgld

RECOMPILE_LIMIT = 64  # compiled variants of a network (batch shapes, layouts, frozen or not) before an error


class SpeedupError(RuntimeError):
    """A requested speed-up cannot run here (a torch too old to compile the network)."""


def enable_compile() -> None:
    """Allow :data:`RECOMPILE_LIMIT` compiled variants (networks x batch shapes x layouts) and turn
    a hit limit into an error: by default Dynamo would quietly run the network eagerly from then on."""
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
    if not hasattr(cfg, "fail_on_recompile_limit_hit"):
        raise SpeedupError(
            f"torch {torch.__version__} cannot make a hit recompile limit an error "
            f"(no torch._dynamo.config.fail_on_recompile_limit_hit)"
        )
    cfg.fail_on_recompile_limit_hit = True


def compiled(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``model`` under ``torch.compile`` (whole graph, static shapes); it shares the parameters."""
    enable_compile()
    return torch.compile(model, backend=backend, fullgraph=True, dynamic=False)


class SGLDRunner:
    """SGLD chains of one model with the chosen :class:`Speedups`: ``runner(x, cfg)`` returns what
    ``sampling.sgld(model, x, cfg, amp_dtype=amp_dtype)`` returns, the end states.

    ``channels_last`` converts the model's parameters in place when the runner is built.
    ``compile_backend`` is for tests (``"aot_eager"`` traces the same graph without code generation).
    """

    def __init__(
        self,
        model: nn.Module,
        speedups: Speedups = Speedups(),
        amp_dtype: str | None = None,
        compile_backend: str = "inductor",
    ) -> None:
        self.model, self.speedups, self.amp_dtype = model, speedups, amp_dtype
        if speedups.channels_last:
            model.to(memory_format=torch.channels_last)
        self.energy = compiled(model, compile_backend) if speedups.compile else model  # what the steps call

    def __call__(self, x: torch.Tensor, cfg: SGLDConfig) -> torch.Tensor:
        # a compiled network shares the parameters that sgld freezes
        return sgld(self.energy, x, cfg, amp_dtype=self.amp_dtype)


def chain_agreement(
    model: nn.Module, x: torch.Tensor, cfg: SGLDConfig, speedups: Speedups, amp_dtype: str | None = None
) -> dict[str, float]:
    """How far a sped-up chain ends from the eager fp32 one started at the same images, with the
    noise switched off, so that only the computation separates them: the largest pixel difference,
    that difference relative to the largest pixel move of the eager chain (a freshly initialised
    network moves pixels very little, so the absolute difference alone would look small whatever
    the error), and the fraction of pixels more than 0.01 apart (the image range is 2)."""
    quiet = dataclasses.replace(cfg, noise_std=0.0)
    reference = SGLDRunner(model, Speedups())(x, quiet)
    fast = SGLDRunner(model, speedups, amp_dtype)(x, quiet)
    if speedups.channels_last:
        model.to(memory_format=torch.contiguous_format)
    diff = (fast.float() - reference).abs()
    moved = (reference - x).abs().max().item()
    return {
        "max_abs_diff": diff.max().item(),
        "rel_diff": diff.max().item() / moved if moved > 0 else float("nan"),
        "frac_pixels_off": (diff > 0.01).float().mean().item(),
    }
