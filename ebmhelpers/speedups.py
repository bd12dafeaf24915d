"""Faster SGLD: channels_last, ``torch.compile`` of the energy network, CUDA-graph replay.

SGLD is the series' hot loop (training spends most of its time in it). On 28x28 digits a ResNet18
step is many small kernels, so a GPU idles between launches unless the batch is large or the
launches are batched up. :class:`SGLDRunner` runs the same chain as :func:`sampling.sgld` (one
:func:`sampling.sgld_step` per step, parameters frozen) with any of three changes. A profile turns
each on by its field of the same name (:meth:`profiles.Profile.speedups`): ``channels_last`` on any
device, ``compile`` and ``cuda_graph`` on CUDA devices only, so those two serve the GPU profiles
(on a CPU the runner is plain :func:`sampling.sgld`). ``python -m ebmhelpers bench --speedups``
measures each on a GPU, with its agreement with eager SGLD:

* ``channels_last``: the network's weights (and so its activations) in NHWC, the layout the
  tensor-core convolutions of cuDNN prefer under bf16 (the cpu profile turns it on too:
  ``python -m ebmhelpers bench --interleaved`` measures it on a CPU);
* ``compile``: ``torch.compile`` of the energy network (``fullgraph=True``: a graph break is an
  error, never a silent partial compile); AOTAutograd compiles its forward and the backward that
  ``autograd.grad`` runs for dE/dx. The network is compiled, not the whole step: tracing
  ``autograd.grad`` needs ``torch._dynamo.config.trace_autograd_ops = True``, which torch 2.11
  rejects ("Unsupported Tensor.requires_grad_() call"), and what it would add, fusing the step's
  five elementwise operations, is small beside the network's kernels (``cuda_graph`` removes their
  launches anyway);
* ``cuda_graph``: one step captured as a CUDA graph per (batch shape, sampler settings) and
  replayed ``steps`` times: one launch per step instead of a few hundred. The graph reads the
  parameters where they live, so it stays valid while an optimizer updates them in place.

None of them changes what is computed; the chains differ from eager ones only by floating-point
rounding and by how the Gaussian noise is drawn (tests/test_speedups.py; on a GPU, the bench's
agreement columns). Nothing falls back: a change that cannot run raises.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .profiles import SGLDConfig, Speedups
from .runtime import model_device
from .sampling import frozen, sgld, sgld_step

GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN/cuBLAS pick their kernels)
RECOMPILE_LIMIT = 64  # compiled variants of a network (batch shapes, layouts, frozen or not) before an error


class SpeedupError(RuntimeError):
    """A requested speed-up cannot run here (no CUDA for graphs, a torch too old to compile the step)."""


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
        device = model_device(model)
        if speedups.cuda_graph and device.type != "cuda":
            raise SpeedupError(f"CUDA graphs need the model on a CUDA device, not {device}")
        if speedups.channels_last:
            model.to(memory_format=torch.channels_last)
        self.energy = compiled(model, compile_backend) if speedups.compile else model  # what the steps call
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if speedups.cuda_graph else None

    def __call__(self, x: torch.Tensor, cfg: SGLDConfig) -> torch.Tensor:
        if self.speedups.cuda_graph:
            return self._replay(x, cfg)
        return sgld(
            self.energy, x, cfg, amp_dtype=self.amp_dtype
        )  # a compiled network shares the parameters it freezes

    def _replay(self, x: torch.Tensor, cfg: SGLDConfig) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, dataclasses.replace(cfg, steps=0))  # what the graph bakes in
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, cfg)
        graph, static_x = self._graphs[key]
        static_x.copy_(x)
        for _ in range(cfg.steps):
            graph.replay()
        return static_x.clone()

    def _capture(self, x: torch.Tensor, cfg: SGLDConfig) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture one step on a static input. The warm-up steps draw noise like any other steps,
        so a seeded run stays reproducible: the same calls in the same order give the same chains."""
        static_x, noise = x.detach().clone(), torch.empty_like(x)
        graph = torch.cuda.CUDAGraph()
        with frozen(self.model):
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_STEPS):
                    sgld_step(self.energy, static_x, cfg, noise, self.amp_dtype)
            torch.cuda.current_stream(x.device).wait_stream(side)
            with torch.cuda.graph(graph, pool=self._pool):
                sgld_step(self.energy, static_x, cfg, noise, self.amp_dtype)
        return graph, static_x


def chain_agreement(
    model: nn.Module, x: torch.Tensor, cfg: SGLDConfig, speedups: Speedups, amp_dtype: str | None = None
) -> dict[str, float]:
    """How far a sped-up chain ends from the eager fp32 one started at the same images, with the
    noise switched off (noise draws are the one thing the speed-ups may legitimately change):
    the largest pixel difference, that difference relative to the largest pixel move of the eager
    chain (a freshly initialised network moves pixels very little, so the absolute difference
    alone would look small whatever the error), and the fraction of pixels more than 0.01 apart
    (the image range is 2)."""
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
