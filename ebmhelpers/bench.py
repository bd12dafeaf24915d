"""``python -m ebmhelpers bench``: how fast the hot paths run on this device.

For each model: SGLD image-steps per second (the cost of sampling and of PCD training), the
FLOPs of one SGLD step counted by ``torch.utils.flop_counter``, the FLOP/s achieved and, where the
device's peak is known, the fraction of it; plus PCD training iterations per second for the
baseline and the peak memory. Every time is the median of repeated runs after a warm-up run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .distillation import build_student, forward_flops, students_for
from .metrics import median_time_s, throughput_config
from .models import build_baseline, count_parameters
from .profiles import Profile, SGLDConfig, get_profile
from .pruning import apply_pruning, physically_prune
from .quantization import weight_count, weight_only_quantize
from .runtime import device_name, get_device, resolve_amp_dtype
from .sampling import frozen, sgld
from .training import PCDTrainer

CPU_BATCH = 16  # images per SGLD batch when benchmarking on a CPU
# Dense peak FLOP/s by GPU name fragment and compute dtype (vendor data sheets, SXM parts).
PEAK_FLOPS = {
    "H100": {"fp32": 67e12, "bf16": 989e12},
    "H200": {"fp32": 67e12, "bf16": 989e12},
    "A100": {"fp32": 19.5e12, "bf16": 312e12},
    "T4": {"fp32": 8.1e12, "bf16": 65e12},  # T4 has no bf16 units; fp16 tensor-core peak
}


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (None when unknown, e.g. on a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks["bf16" if dtype in ("bf16", "fp16") else "fp32"]
    return None


def sgld_step_flops(model: nn.Module, batch: int, device: torch.device) -> int:
    """FLOPs of one SGLD step (forward + input gradient) on ``batch`` images."""
    x = torch.zeros(batch, 1, 28, 28, device=device, requires_grad=True)
    with frozen(model), FlopCounterMode(display=False) as counter:
        model(x).sum().backward()  # the counter cannot see autograd.grad on a leaf; same FLOPs
    return counter.get_total_flops()


PRUNE_RATIO = 0.6  # structured Conv2d pruning benchmarked with its channels removed


def bench_models(profile: Profile) -> dict[str, Callable[[], nn.Module]]:
    """The models measured, freshly initialized (speed does not depend on the weights): the
    profile's baseline (``profile.baseline``), its weight-only int8 copy, ``PRUNE_RATIO``
    structured Conv2d pruning with the channels removed, and every student smaller than it."""
    arch = profile.baseline
    models: dict[str, Callable[[], nn.Module]] = {
        f"baseline {arch}": lambda: build_baseline(arch),
        f"int8 weight-only {arch}": lambda: weight_only_quantize(build_baseline(arch), 8),
        f"structured Conv2d {PRUNE_RATIO:.0%} {arch}, channels removed": lambda: physically_prune(
            apply_pruning(build_baseline(arch), "structured_conv", PRUNE_RATIO)
        ),
    }
    teacher = build_baseline(arch)
    chosen = students_for(count_parameters(teacher), forward_flops(teacher))
    models |= {f"student {name}": (lambda name=name: build_student(name)) for name in chosen}
    return models


def _peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def measure_sgld(
    name: str, model: nn.Module, cfg: SGLDConfig, batch: int, device: torch.device, repeats: int,
    amp_dtype: str | None = None, freeze: bool = True,
) -> dict:
    """One row of the benchmark table for SGLD sampling with ``model``."""
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    t = median_time_s(lambda: sgld(model, x, cfg, amp_dtype=amp_dtype, freeze=freeze), device, repeats, warmup=1)
    flops = sgld_step_flops(model, batch, device) * cfg.steps
    peak = peak_flops(device, amp_dtype or "fp32")
    return {
        "model": name,
        "params": weight_count(model),
        "dtype": amp_dtype or "fp32",
        "params_frozen": freeze,
        "batch": batch,
        "sgld_steps": cfg.steps,
        "img_steps_per_s": batch * cfg.steps / t,
        "tflops_per_s": flops / t / 1e12,
        "frac_of_peak": flops / t / peak if peak else float("nan"),
        "peak_mem_mb": _peak_memory_mb(device),
    }


def measure_training(profile: Profile, batch: int, device: torch.device, repeats: int) -> dict:
    """PCD training iterations per second of the profile's baseline (SGLD + update), median of runs."""
    data = torch.rand(batch * 4, 1, 28, 28, device=device) * 2 - 1
    p = profile.replace(batch_size=batch, buffer_size=max(batch * 4, 64), max_iters_per_epoch=1)
    trainer = PCDTrainer(build_baseline(p.baseline), p, data, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = median_time_s(lambda: trainer.train_step(data[:batch]), device, repeats, warmup=1)
    return {
        "model": f"baseline {p.baseline} (PCD training step)",
        "params": count_parameters(trainer.model),
        "dtype": resolve_amp_dtype(p.amp_dtype, device) or "fp32",
        "batch": batch,
        "sgld_steps": p.sgld_steps,
        "train_iters_per_s": 1 / t,
        "img_steps_per_s": batch * p.sgld_steps / t,
        "peak_mem_mb": _peak_memory_mb(device),
    }


def run_bench(
    profile: str | None = None, batch: int | None = None, repeats: int = 5, models: list[str] | None = None,
    steps: int | None = None,
) -> pd.DataFrame:
    """The benchmark table for the current device (see the module docstring): on a GPU, chains
    of the profile's K training steps at its training batch; on a CPU, the short chain every
    throughput of the series is timed on (``metrics.throughput_config``) at ``CPU_BATCH``."""
    p = get_profile(profile)
    device = get_device()
    batch = batch or (p.batch_size if device.type == "cuda" else CPU_BATCH)
    cfg = p.sgld(steps) if steps else (p.sgld() if device.type == "cuda" else throughput_config(p.sgld()))
    torch.manual_seed(p.seed)
    rows = []
    t0 = time.monotonic()
    base_name = f"baseline {p.baseline}"
    for name, make in bench_models(p).items():
        if models and not any(m in name for m in models):
            continue
        rows.append(measure_sgld(name, make(), cfg, batch, device, repeats))
        if name == base_name:  # what freezing the parameters during sampling saves
            rows.append(measure_sgld(name, make(), cfg, batch, device, repeats, freeze=False))
        if device.type == "cuda" or (device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()):
            rows.append(measure_sgld(name, make(), cfg, batch, device, repeats, amp_dtype="bf16"))
    rows.append(measure_training(p.replace(sgld_steps=cfg.steps), batch, device, repeats))
    table = pd.DataFrame(rows)
    table.insert(0, "device", device_name(device))
    print(f"[bench] {time.monotonic() - t0:.0f} s on {device_name(device)}, median of {repeats} runs after 1 warm-up")
    return table
