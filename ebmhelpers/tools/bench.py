"""``python -m ebmhelpers bench``: how fast the hot paths run on this device.

``python -m ebmhelpers bench --speedups`` measures the SGLD speed-ups instead (:func:`run_speedup_bench`):
the baseline under each rung of :func:`ladder` with its agreement with eager fp32 chains, and
the speed targets (:data:`TARGET_GEN`, :data:`TARGET_TRAIN_MIN`). Its GPU rung (compile) is not measured on a
GPU, so every profile keeps it off; this is the command that measures it.

For each model: SGLD image-steps per second (the cost of sampling and of PCD training), the
FLOPs of one SGLD step counted by ``torch.utils.flop_counter``, the FLOP/s achieved and, where the
device's peak is known, the fraction of it; plus PCD training iterations per second for the
baseline and the peak memory. Every time is the median of repeated runs after a warm-up run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..distillation import build_student, forward_flops, students_for
from ..metrics import median_time_s, synchronize, throughput_config
from ..models import build_baseline, count_parameters
from ..profiles import Profile, SGLDConfig, Speedups, get_profile
from ..pruning import apply_pruning, physically_prune
from ..quantization import weight_count, weight_only_quantize
from ..runtime import device_name, get_device, peak_flops, resolve_amp_dtype
from ..progress import tqdm
from ..sampling import frozen, generate, sgld
from ..speedups import SGLDRunner, chain_agreement
from ..training import PCDTrainer, training_iterations

MNIST_TRAIN = 60_000  # digits the paper trains on
CPU_BATCH = 16  # images per SGLD batch when benchmarking on a CPU


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
    name: str,
    model: nn.Module,
    cfg: SGLDConfig,
    batch: int,
    device: torch.device,
    repeats: int,
    amp_dtype: str | None = None,
    freeze: bool = True,
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
    profile: str | None = None,
    batch: int | None = None,
    repeats: int = 5,
    models: list[str] | None = None,
    steps: int | None = None,
) -> pd.DataFrame:
    """The benchmark table for the current device (see the module docstring): on a GPU, chains
    of the profile's K training steps at its training batch; on a CPU, the short chain every
    throughput of the series is timed on (``metrics.throughput_config``) at ``CPU_BATCH``."""
    p = get_profile(profile)
    device = get_device()
    batch = batch or (p.batch_size if device.type == "cuda" else CPU_BATCH)
    cfg = (
        p.sgld_config(steps)
        if steps
        else (p.sgld_config() if device.type == "cuda" else throughput_config(p.sgld_config()))
    )
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


# ---- the speed-up ladder (``python -m ebmhelpers bench --speedups``) -------------------------------
LADDER_STEPS = 16  # SGLD steps per timed chain: long enough to amortise a launch, short enough to repeat
AGREEMENT_BATCH = 16  # chains compared with eager fp32 (noise off) per rung
BIG_BATCH = 4096  # a batch that fills an H100 with 28x28 digits
TARGET_GEN = (10_000, 256)  # 10,000 digits of 256 SGLD steps ...
TARGET_GEN_S = 30.0  # ... in under 30 seconds
TARGET_TRAIN_MIN = 30.0  # the paper profile's training projected at most this many minutes
LADDER_BUDGET_S = 420.0  # stop adding rows after this long (a device command has 600 s)


def ladder(device: torch.device) -> list[tuple[str | None, Speedups]]:
    """The rungs, each adding one change: fp32, bf16 autocast, channels_last, compile, and on a GPU
    both speed-ups in fp32 (what scoring uses). On a CPU bf16 only with native bf16 units."""
    cuda = device.type == "cuda"
    bf16 = "bf16" if cuda or torch.cpu._is_avx512_bf16_supported() else None
    rungs = [
        (None, Speedups()),
        (bf16, Speedups()),
        (bf16, Speedups(channels_last=True)),
        (bf16, Speedups(channels_last=True, compile=True)),
    ]
    if cuda:
        rungs.append((None, Speedups(channels_last=True, compile=True)))
    return list(dict.fromkeys(rungs))  # without bf16 units the bf16 rungs collapse onto the fp32 ones


def measure_rung(
    make: Callable[[], nn.Module],
    amp: str | None,
    speedups: Speedups,
    cfg: SGLDConfig,
    batch: int,
    device: torch.device,
    repeats: int,
) -> dict:
    """Speed of one rung: the first call (compilation included) and the median of later calls."""
    model = make().to(device).eval()
    runner = SGLDRunner(model, speedups, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    t0 = time.perf_counter()
    runner(x, cfg)
    synchronize(device)
    first = time.perf_counter() - t0
    t = median_time_s(lambda: runner(x, cfg), device, repeats, warmup=0)
    flops = sgld_step_flops(model, batch, device) * cfg.steps
    peak = peak_flops(device, amp or "fp32")
    return {
        "dtype": amp or "fp32",
        "speedups": speedups.label,
        "batch": batch,
        "sgld_steps": cfg.steps,
        "img_steps_per_s": batch * cfg.steps / t,
        "tflops_per_s": flops / t / 1e12,
        "frac_of_peak": flops / t / peak if peak else float("nan"),
        "first_call_s": first,
        "peak_mem_mb": _peak_memory_mb(device),
    }


def run_speedup_bench(
    profile: str | None = None,
    repeats: int = 3,
    budget_s: float = LADDER_BUDGET_S,
    target: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """The profile baseline's SGLD under each rung of :func:`ladder` at the training batch, with its
    agreement with eager fp32 chains; on a GPU the fastest rung again at the generation batch and at
    :data:`BIG_BATCH`; then the two speed targets with the fastest rung: ``target`` = (digits,
    steps) generated and timed (default :data:`TARGET_GEN` on a GPU, skipped on a CPU, where it
    would take hours), and the paper profile's training time projected from a measured iteration."""
    p = get_profile(profile)
    device = get_device()
    cfg = p.sgld_config(LADDER_STEPS)
    make = lambda: build_baseline(p.baseline)  # noqa: E731 (speed does not depend on the weights)
    torch.manual_seed(p.seed)
    t0, rows = time.monotonic(), []
    x_agree = torch.rand(AGREEMENT_BATCH, 1, 28, 28, device=device) * 2 - 1

    def over_budget(what: str) -> bool:
        if time.monotonic() - t0 > budget_s:
            print(f"[bench] {budget_s:.0f} s budget spent: {what} not measured")
            return True
        return False

    for amp, sp in tqdm(ladder(device), desc="speed-up ladder"):
        if over_budget(f"{amp or 'fp32'} {sp.label}"):
            break
        try:
            row = measure_rung(make, amp, sp, cfg, p.batch_size, device, repeats)
            row |= chain_agreement(make().to(device).eval(), x_agree, cfg, sp, amp)
        except Exception as exc:  # a rung that cannot run here is a finding for the table, not the end of the bench
            error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            print(f"[bench] {amp or 'fp32'} {sp.label} FAILED: {error}")
            row = {"dtype": amp or "fp32", "speedups": sp.label, "batch": p.batch_size, "error": error}
        rows.append(row)
    best = max((r for r in rows if "error" not in r), key=lambda r: r["img_steps_per_s"])
    amp, sp = best["dtype"] if best["dtype"] != "fp32" else None, _speedups_of(best["speedups"])
    for batch in dict.fromkeys((p.gen_batch_size, BIG_BATCH)):
        if device.type == "cuda" and batch != p.batch_size and not over_budget(f"batch {batch}"):
            rows.append(measure_rung(make, amp, sp, cfg, batch, device, repeats))
    table = pd.DataFrame(rows)
    table.insert(0, "model", f"baseline {p.baseline}")
    table.insert(0, "device", device_name(device))
    best_batch = int(table.loc[table.img_steps_per_s.idxmax(), "batch"])
    print(f"[bench] fastest: {amp or 'fp32'} {sp.label} at batch {best_batch}")
    target = target or (TARGET_GEN if device.type == "cuda" else None)
    if target and not over_budget("the targets"):
        print(target_lines(p, make, amp, sp, best_batch, device, target))
    print(f"[bench] {time.monotonic() - t0:.0f} s on {device_name(device)}, median of {repeats} runs after the first")
    return table


def _speedups_of(label: str) -> Speedups:
    on = set(label.split(" + ")) - {"eager"}
    return Speedups(**{name: True for name in on})


def target_lines(
    p: Profile,
    make: Callable[[], nn.Module],
    amp: str | None,
    sp: Speedups,
    batch: int,
    device: torch.device,
    target: tuple[int, int] = TARGET_GEN,
) -> str:
    """The speed targets, measured with one rung: generation of ``target`` = (digits, steps) from
    noise with the paper's sampler (timed whole) and the paper profile's training time (PCD
    iteration time x its iterations)."""
    n, steps = target
    model = make().to(device).eval()
    runner = SGLDRunner(model, sp, amp)
    gen_cfg = get_profile("paper").sgld_config(steps)
    runner(torch.rand(min(batch, n), 1, 28, 28, device=device) * 2 - 1, dataclasses.replace(gen_cfg, steps=1))  # warm
    synchronize(device)
    t0 = time.perf_counter()
    generate(model, n, gen_cfg, batch_size=min(batch, n), device=device, progress=False, sampler=runner)
    synchronize(device)
    gen_s = time.perf_counter() - t0
    paper = get_profile("paper").replace(
        baseline=p.baseline, amp_dtype=amp, channels_last=sp.channels_last, compile=sp.compile
    )
    train = measure_training(paper, paper.batch_size, device, repeats=5)
    iters = training_iterations(paper, MNIST_TRAIN)
    train_min = iters / train["train_iters_per_s"] / 60
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    return (
        f"[bench] target: {n:,} digits x {steps} SGLD steps (batch {min(batch, n)}): {gen_s:.1f} s "
        f"(target < {TARGET_GEN_S:.0f} s: {verdict(gen_s < TARGET_GEN_S)})\n"
        f"[bench] target: paper profile training, {iters:,} PCD iterations x "
        f"{1e3 / train['train_iters_per_s']:.1f} ms = {train_min:.1f} min projected "
        f"(target <= {TARGET_TRAIN_MIN:.0f} min: {verdict(train_min <= TARGET_TRAIN_MIN)})"
    )


def run_interleaved_speedups(profile: str | None = None, repeats: int = 7, out: str | None = None) -> pd.DataFrame:
    """The profile's training chain (batch, K steps) on the profile's baseline, eager fp32 against
    ``channels_last`` and ``torch.compile`` (inductor), timed interleaved (:func:`metrics.interleaved_times`:
    warm-up, then rounds that run each once in rotating order), so a slow stretch of a shared machine
    falls on all alike. Rows: median seconds per chain with quartiles and extremes, and the speed-up
    over eager with the range it takes between the quartiles. A variant that fails is a row with its error."""
    from ..metrics import interleaved_times

    p = get_profile(profile)
    device = get_device()
    cfg = p.sgld_config()
    x = torch.rand(p.batch_size, 1, 28, 28, device=device) * 2 - 1
    reference = build_baseline(p.baseline).to(device).eval()
    fns, failed = {}, {}
    for label, speedups in (
        ("eager", Speedups()),
        ("channels_last", Speedups(channels_last=True)),
        ("compile", Speedups(compile=True)),
    ):
        model = build_baseline(p.baseline).to(device).eval()
        model.load_state_dict(reference.state_dict())
        try:
            runner = SGLDRunner(model, speedups)
            runner(x, cfg)  # first call: compilation happens here, outside the timings
            fns[label] = (lambda r: lambda: r(x, cfg))(runner)
        except Exception as err:  # a variant this machine cannot run is reported, not fatal
            failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    table = interleaved_times(fns, device, repeats=repeats)
    eager = table.set_index("model").loc["eager"]
    table["speedup"] = eager.median_s / table.median_s
    table["speedup_lo"], table["speedup_hi"] = eager.q1_s / table.q3_s, eager.q3_s / table.q1_s
    table = pd.concat([table, pd.DataFrame([{"model": k, "error": v} for k, v in failed.items()])], ignore_index=True)
    table.insert(
        1, "chain", f"batch {p.batch_size} x {cfg.steps} SGLD steps, {p.baseline}, {torch.get_num_threads()} threads"
    )
    if out:
        table.to_csv(out, index=False)
    return table
