"""How much compute the whole series needs under a profile, from counted FLOPs: an estimate
until measured.

The FLOPs of one image through each kind of step (an energy evaluation, an SGLD step = forward
plus input gradient, a training step = forward plus backward to the parameters, a
gradient-matching step) are counted by ``torch.utils.flop_counter`` on the profile's own
baseline (``models.build_baseline(profile.baseline)``), on each student and on the metric
classifier; they are then multiplied by how many images go through each step in notebooks
01-06, as the profile's settings imply: PCD training, every scored model (its SGLD generation
over ``score_seeds`` seeds, OOD energies, latency and throughput timing), fine-tuning, the
lottery ticket, the teacher's targets, distillation and the sampling-budget study. The 2-D toy
of notebook 00 and the few dozen digits drawn for figures are left out.

Hours follow from an assumed sustained FLOP/s (by default a stated guess for a Colab T4 in
fp32). Counted FLOPs ignore everything that is not arithmetic (kernel launches, memory traffic,
Python), so small models and small batches run far below any FLOP/s rate: the hours are a
lower bound more than a forecast, and a measurement (``python -m ebmhelpers bench`` on the
device) replaces the assumed rate.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import budget, distillation, metrics, pruning, quantization, training
from ..models import MNISTClassifier, build_baseline, count_parameters
from ..profiles import Profile, get_profile
from ..runtime import ASSUMED_EFFICIENCY, ASSUMED_T4_FLOPS_PER_S, PEAK_FLOPS, duration_text
from ..sampling import frozen

MNIST_TRAIN, MNIST_TEST = 60_000, 10_000  # digits in the MNIST splits (None subsets = all of them)
LABEL = "estimate until measured"
THROUGHPUT_RUNS = 4  # metrics.sgld_throughput: 3 timed runs after 1 warm-up
N_EVALUATORS = 5  # notebooks 02-06 each build an Evaluator (real-digit FID statistics)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per image of each kind of step through one network."""

    forward: float  # one energy evaluation
    sgld: float  # one SGLD step: forward and the input gradient (parameters frozen)
    train: float  # forward and backward to the parameters (a PCD or distillation update)
    grad_match: float  # forward, input gradient with its graph, backward of both to the parameters


def count_step_flops(model: nn.Module, batch: int = 1) -> StepFlops:
    """Count :class:`StepFlops` of ``model`` on ``batch`` zero images, per image. On a model
    built on the ``meta`` device nothing is computed, only counted (fast)."""
    model = model.eval()
    device = next(model.parameters()).device

    def zeros(requires_grad: bool = False) -> torch.Tensor:
        return torch.zeros(batch, 1, 28, 28, device=device, requires_grad=requires_grad)

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops() / batch

    def sgld_step() -> None:
        x = zeros(requires_grad=True)
        with frozen(model):
            model(x).sum().backward()

    def grad_match_step() -> None:
        x = zeros(requires_grad=True) * 1.0  # not a leaf: the counter needs that for grad()
        energy = model(x)
        (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
        (energy.pow(2).mean() + grad.pow(2).mean()).backward()

    with torch.no_grad():
        fwd = count(lambda: model(zeros()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StepFlops(fwd, count(sgld_step), count(lambda: model(zeros()).sum().backward()), count(grad_match_step))


@functools.lru_cache(maxsize=None)
def network_flops(kind: str, name: str) -> StepFlops:
    """:class:`StepFlops` of a baseline architecture (``kind='baseline'``), a student or the
    metric classifier (``kind='classifier'``), built on the ``meta`` device and counted once
    per process."""
    builders = {
        "baseline": build_baseline,
        "student": distillation.build_student,
        "classifier": lambda _: MNISTClassifier(),
    }
    if kind not in builders:
        raise ValueError(f"unknown network kind {kind!r}; choose one of {list(builders)}")
    with torch.device("meta"):
        return count_step_flops(builders[kind](name))


def _pcd_flops(p: Profile, iters: int, net: StepFlops) -> float:
    """``iters`` PCD iterations: K SGLD steps on a batch, then one update on real + sampled."""
    return iters * (p.batch_size * p.sgld_steps * net.sgld + 2 * p.batch_size * net.train)


def _score_flops(p: Profile, net: StepFlops, clf: StepFlops, generate: bool = True) -> float:
    """One ``Evaluator.score``: generation over the seeds and its IS/FID, the OOD energies,
    latency and (for a generating model) SGLD throughput timing."""
    n_ood = p.n_ood or MNIST_TEST
    flops = n_ood * (1 + len(metrics.OOD_SETS)) * net.forward
    flops += (p.latency_repeats + p.latency_warmup) * p.latency_batch * net.forward
    if generate:
        gen = p.score_seeds * p.n_gen
        flops += gen * p.gen_steps * net.sgld + 2 * gen * clf.forward  # logits and features
        flops += THROUGHPUT_RUNS * p.latency_batch * min(p.gen_steps, metrics.THROUGHPUT_STEPS) * net.sgld
    return flops


def _budget_flops(p: Profile, net: StepFlops, clf: StepFlops) -> float:
    """Notebook 06's budget study for one model: quality of every distinct configuration and
    the timed chains (per K: ``TIMING_REPEATS`` runs on ``latency_batch`` digits)."""
    ks = budget.budget_steps(p)
    configs = {cfg for _, _, cfg in budget.budget_configs(p, ks, p.gen_steps)}
    gen = p.score_seeds * p.n_gen
    flops = sum(gen * cfg.steps * net.sgld + 2 * gen * clf.forward for cfg in configs)
    return flops + sum(budget.TIMING_REPEATS * p.latency_batch * k * net.sgld for k in ks)


def series_flops(profile: Profile | str | None = None, device: str = "cuda") -> pd.DataFrame:
    """FLOPs of every costly stage of notebooks 01-06 under ``profile``: one row per
    (notebook, item) with the number of runs it stands for. ``device`` decides which autocast
    samplers notebook 03 compares (``quantization.sampling_precisions``)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    base, clf = network_flops("baseline", p.baseline), network_flops("classifier", "")
    n_train = p.train_subset or MNIST_TRAIN
    score = _score_flops(p, base, clf)
    rows = []

    def add(notebook: str, item: str, runs: int, flops: float) -> None:
        rows.append({"notebook": notebook, "item": item, "runs": runs, "flops": float(flops)})

    # 01: the baseline and the metric classifier
    add("01", "PCD training of the baseline", 1, _pcd_flops(p, training.training_iterations(p, n_train), base))
    clf_images = p.clf_epochs * (p.clf_train_subset or MNIST_TRAIN)
    add("01", "metric classifier training", 1, clf_images * clf.train)
    # 02: the baseline scored
    add("02", "score the baseline", 1, score)
    # 03: quantization
    add("03", "score static int8 (no generation)", 1, _score_flops(p, base, clf, generate=False))
    add("03", "score weight-only int8", 1, score)
    n_prec = p.precision_n_gen or p.n_gen
    samplers = 1 + len(quantization.sampling_precisions(torch.device(device))) + len(quantization.WEIGHT_ONLY_BITS)
    add("03", "sampler comparison (fp32, autocast, weight-only)", samplers, samplers * n_prec * p.gen_steps * base.sgld)
    variants = 1 + len(quantization.WEIGHT_ONLY_BITS)
    n_ood = p.n_ood or MNIST_TEST
    add(
        "03",
        "calibration and fidelity checks",
        variants,
        p.n_calib * base.forward + variants * (n_prec * base.sgld + n_ood * base.forward),
    )
    # 04: pruning
    strategies, ratios = list(pruning.STRATEGIES.values()), len(p.prune_ratios)
    tuned = sum(s.finetuned for s in strategies) * ratios
    ft_iters = training.training_iterations(pruning.finetune_profile(p), n_train)
    add("04", "score the baseline again", 1, score)
    add("04", "score each strategy x ratio", len(strategies) * ratios, len(strategies) * ratios * score)
    add("04", "fine-tune (Conv2d strategies x ratios)", tuned, tuned * _pcd_flops(p, ft_iters, base))
    add("04", "score the fine-tuned models", tuned, tuned * score)
    add(
        "04",
        "lottery ticket: rounds of rewound training",
        p.lottery_rounds,
        p.lottery_rounds * _pcd_flops(p, ft_iters, base),
    )
    add("04", "score the lottery ticket", 1, score)
    # 05: distillation
    with torch.device("meta"):
        teacher = build_baseline(p.baseline)
        students = distillation.students_with_paper_ratio(
            count_parameters(teacher), distillation.forward_flops(teacher)
        )
    n_hold = p.buffer_size // distillation.HOLDOUT_FRACTION
    n_points = n_train + 2 * (p.buffer_size - n_hold)
    add("05", "teacher energies and input gradients", 1, (n_points + 3 * n_hold) * base.sgld)
    steps = distillation.num_steps(p, n_points)
    extension = distillation.extension_students(students)  # notebook 05: eq. 6 for every student, then the extensions
    runs = [(s, distillation.REPRODUCTION) for s in students] + [(s, "mixed") for s in extension]
    runs += [(extension[0], "real")]
    runs += [(s, "mixed+grad") for s in distillation.GRAD_MATCH_STUDENTS if s in students]
    for name, variant in runs:
        net = network_flops("student", name)
        step = net.grad_match if variant.endswith("+grad") else net.train
        add("05", f"distil {name}/{variant}", 1, steps * p.distill_batch_size * step)
        add("05", f"score {name}/{variant}", 1, _score_flops(p, net, clf))
    assumed_best = distillation.PAPER_SIZED_STUDENT if distillation.PAPER_SIZED_STUDENT in students else students[0]
    chain_steps = sum(max(1, round(f * p.gen_steps)) for f in distillation.BUFFER_CHAIN_FRACTIONS)
    student_net = network_flops("student", assumed_best)
    add(
        "05",
        f"chains from the teacher's buffer ({assumed_best} as the best student)",
        1,
        chain_steps * p.n_gen * student_net.sgld,
    )
    # 06: the sampling-budget study (baseline and the best student)
    add("06", "sampling budget: baseline", 1, _budget_flops(p, base, clf))
    add("06", f"sampling budget: {assumed_best} as the best student", 1, _budget_flops(p, student_net, clf))
    add(
        "02-06", "Evaluator set-up (real-digit FID statistics)", N_EVALUATORS, N_EVALUATORS * p.n_fid_real * clf.forward
    )
    return pd.DataFrame(rows)


def estimate(
    profile: Profile | str | None = None, flops_per_s: float = ASSUMED_T4_FLOPS_PER_S, device: str = "cuda"
) -> tuple[pd.DataFrame, str]:
    """:func:`series_flops` with hours at ``flops_per_s`` per row, and a one-line summary
    labelled "estimate until measured" that states the rate it assumed."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    table = series_flops(p, device)
    table["hours"] = table.flops / flops_per_s / 3600
    total = table.flops.sum()
    by_nb = table.groupby("notebook", sort=False).hours.sum()
    assumed = (
        f"assumed {flops_per_s / 1e12:.2f} TFLOP/s sustained (ASSUMPTION: {ASSUMED_EFFICIENCY:.0%} of a T4's "
        f"{PEAK_FLOPS['T4']['fp32'] / 1e12:.1f} TFLOP/s fp32 peak)"
        if flops_per_s == ASSUMED_T4_FLOPS_PER_S
        else f"at {flops_per_s / 1e12:.3g} TFLOP/s"
    )
    summary = (
        f"profile {p.name} ({p.baseline}): {total:.3g} FLOPs counted, about {duration_text(total / flops_per_s)} "
        f"{assumed}; by notebook: "
        + ", ".join(f"{nb} {duration_text(h * 3600)}" for nb, h in by_nb.items())
        + f" [{LABEL}]"
    )
    return table, summary


def total_flops(profile: Profile | str | None = None, device: str = "cuda") -> float:
    """All FLOPs of :func:`series_flops`."""
    return float(series_flops(profile, device).flops.sum())


def t4_ratio(measured_on: str, dtype: str = "bf16") -> float:
    """How many times longer a Colab T4 is taken to need than the GPU ``measured_on`` (a name
    fragment of :data:`bench.PEAK_FLOPS`, e.g. "H100") for the same notebook: the ratio of their
    dense 16-bit tensor-core peaks (``dtype`` bf16/fp16; fp32 for fp32 work). An ASSUMPTION stated
    with every estimate it gives: small kernels leave both GPUs below peak, so it is a rough guide."""
    peaks = next((v for k, v in PEAK_FLOPS.items() if k in measured_on), None)
    if peaks is None:
        raise ValueError(f"no peak FLOP/s known for {measured_on!r}; known: {sorted(PEAK_FLOPS)}")
    key = "fp32" if dtype == "fp32" else "bf16"
    return peaks[key] / PEAK_FLOPS["T4"][key]


def t4_estimate(times: pd.DataFrame, measured_on: str, dtype: str = "bf16") -> pd.DataFrame:
    """Per-notebook T4 seconds from a ``notebook_times.csv`` measured on ``measured_on``: the
    seconds times :func:`t4_ratio` (the ratio is a column, so every estimate shows it)."""
    ratio = t4_ratio(measured_on, dtype)
    out = times[["notebook", "seconds"]].copy()
    out["t4_ratio"] = ratio
    out["t4_seconds_estimate"] = out.seconds * ratio
    return out
