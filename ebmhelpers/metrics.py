"""How every model of the series is scored, the same way for all of them.

* Sample quality: Inception Score from the MNIST classifier's logits and FID from its 128-d
  penultimate features against statistics of real test digits.
  IS and FID are the mean and standard deviation over ``profile.score_seeds`` seeded generations,
  the same seeds (noise starts and SGLD noise) for every model.
* Out-of-distribution detection, the paper's Table 2: test digits with Gaussian noise (std 0.3, as
  tutorial 8), upside-down (rotated 180 degrees) and reduced (tutorial 8: subsampled by 2 into a
  corner), plus extra rows (stronger noise, a 90-degree rotation, a centred shrink), Fashion-MNIST
  and uniform noise. Per set and per digit (4, 5, 9, all): the paper's energy gap
  ``mean(-E(T(x))) - mean(-E(x))`` on the same images (negative = detected) and AUROC with -E as
  the in-distribution score (below 0.5 = an inverted detector). AUROCs are never averaged across
  sets; summaries name the set, or the worst case over the paper's three transforms.
* Cost: parameter count, serialized size, latency and SGLD throughput on a named device.

A model's SGLD has one owner here, :meth:`Evaluator.sampler`: the runner that generates the
digits a table scores also times the throughput it reports.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from .progress import tqdm

from . import data as data_mod
from .models import MNISTClassifier, count_parameters
from .profiles import SGLDConfig
from .runtime import Context, device_name, model_device, seed_everything
from .sampling import SamplingNotSupportedError, generate, sgld
from .speedups import SGLDRunner

# The OOD sets, in the [-1, 1] pixel scale. The paper's Table 2 rows are noise, upside-down digits
# ("an upside-down 5 resembles a 2") and size reduction; tutorial 8 defines the noise (std 0.3) and
# the reduced digit (subsampled by 2, in a corner). The others are extra rows, named as such.
NOISE_STD = 0.3  # tutorial 8's additive Gaussian noise, then clamped to [-1, 1]
STRONG_NOISE_STD = 0.5  # extra row: stronger noise
ROTATION_DEG = 90.0  # extra row: a quarter turn about the centre, background filled with -1
SHRINK_SCALE = 0.5  # extra row: digit shrunk to half size, centred on a blank canvas
OOD_DIGITS = (4, 5, 9)


# ---- sample quality ---------------------------------------------------------------------
def inception_score(logits: torch.Tensor) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))), from classifier logits (N, C). Ranges over [1, C]."""
    logp = F.log_softmax(logits.double(), dim=1)
    p = logp.exp()
    log_marginal = torch.log(p.mean(0).clamp_min(1e-30))
    kl = (p * (logp - log_marginal)).sum(1).mean()
    return float(kl.exp())


def feature_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of a feature matrix (N, D)."""
    f = features.detach().double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    Tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2, which are real
    and non-negative for covariance matrices; this avoids the complex parts of ``sqrtm``.
    """
    eig = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum())


# The sample-quality columns of every scored row and study table, in this order: IS and FID are
# the mean and standard deviation over ``n_seeds`` generations, the rest means over them.
QUALITY_COLUMNS = ("n_seeds", "IS", "IS_std", "FID", "FID_std", "entropy_bits", "confident", "saturation")
CONFIDENT_PROB = 0.9  # a digit the classifier names with at least this probability counts as recognisable
SATURATED_PIXEL = 0.99  # a pixel with |x| at or above this sits at the clamp (+-1)


def class_entropy_bits(logits: torch.Tensor) -> float:
    """Entropy (bits) of the histogram of predicted classes: log2(10) = 3.32 when all ten digits
    are drawn equally often, 0 when every sample is the same digit (diversity)."""
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).double()
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def confident_fraction(logits: torch.Tensor, threshold: float = CONFIDENT_PROB) -> float:
    """Fraction of samples whose most likely class has probability above ``threshold``."""
    return float((F.softmax(logits.double(), dim=1).max(1).values > threshold).double().mean())


def saturation(images: torch.Tensor, threshold: float = SATURATED_PIXEL) -> float:
    """Fraction of pixels at the clamp (|x| >= ``threshold``); MNIST's own is about 0.8, mostly background."""
    return float((images.abs() >= threshold).double().mean())


def quality_scores(
    logits: torch.Tensor, features: torch.Tensor, samples: torch.Tensor, real_mu: np.ndarray, real_sigma: np.ndarray
) -> dict[str, float]:
    """The sample-quality scores of one set of generated digits from the metric classifier's
    ``logits`` and ``features`` of them: IS, FID against real digits' feature statistics
    (``real_mu``, ``real_sigma``), class entropy, confident fraction and pixel saturation."""
    mu, sigma = feature_stats(features)
    return {
        "IS": inception_score(logits),
        "FID": frechet_distance(mu, sigma, real_mu, real_sigma),
        "entropy_bits": class_entropy_bits(logits),
        "confident": confident_fraction(logits),
        "saturation": saturation(samples),
    }


@torch.no_grad()
def nearest_distance(samples: torch.Tensor, reference: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Euclidean distance from each sample to its nearest reference image (e.g. training digits):
    near 0 means a copy (memorisation); real held-out digits give the scale of a new digit."""
    ref = reference.flatten(1).float()
    ref_sq = ref.pow(2).sum(1)
    out = []
    for i in range(0, len(samples), batch_size):
        x = samples[i : i + batch_size].flatten(1).float().to(ref.device)
        d2 = x.pow(2).sum(1, keepdim=True) - 2 * x @ ref.T + ref_sq
        out.append(d2.min(1).values.clamp_min(0).sqrt().cpu())
    return torch.cat(out)


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, device=None) -> torch.Tensor:
    """Apply ``fn`` to ``x`` in batches (on ``device``) and concatenate on the CPU."""
    device = device or x.device
    return torch.cat([fn(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


# ---- OOD detection ----------------------------------------------------------------------
def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """Area under the ROC curve for telling in- from out-of-distribution by ``score``
    (higher = more in-distribution): P(s_in > s_out) + 0.5 P(s_in = s_out), via ranks."""
    s = torch.cat([scores_in, scores_out]).double()
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=s.dtype)
    # average ranks over ties
    uniq, inverse = torch.unique(s, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=s.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=s.dtype).index_add_(0, inverse, torch.ones_like(s))
    ranks = (sums / counts)[inverse]
    n_in, n_out = len(scores_in), len(scores_out)
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2
    return float(u / (n_in * n_out))


def auroc_se(a: float, n_in: int, n_out: int) -> float:
    """Standard error of an AUROC ``a`` measured on ``n_in`` and ``n_out`` images (Hanley and
    McNeil, 1982): the sampling error of the images drawn (about 0.02 for an AUROC of 0.8 on 200 and 200).
    An AUROC measured at 0 or 1 (every pair ordered) gets the error of one half-pair per image of the
    smaller set short of it, a continuity correction: a finite set cannot show that a detector is
    perfect, and the formula's zero there would make any comparison at the ceiling look exact."""
    edge = 0.5 / min(n_in, n_out)
    a = min(max(a, edge), 1 - edge)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_in - 1) * (q1 - a * a) + (n_out - 1) * (q2 - a * a)) / (n_in * n_out)
    return math.sqrt(max(var, 0.0))


def add_noise(x: torch.Tensor, std: float = NOISE_STD, seed: int = 0) -> torch.Tensor:
    """x + N(0, std^2) noise (seeded, so every model sees the same noisy digits), clamped to [-1, 1]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g).to(x.device)).clamp(-1, 1)


def flip_upside_down(x: torch.Tensor) -> torch.Tensor:
    """The paper's upside-down digit: a 180-degree rotation, i.e. both spatial axes flipped."""
    return x.flip(dims=(-2, -1))


def reduce_to_corner(x: torch.Tensor) -> torch.Tensor:
    """Tutorial 8's reduced digit: every second pixel (half size) in the bottom-right quarter,
    the rest background (-1)."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, -1.0)
    small = x[..., ::2, ::2]
    out[..., h - small.shape[-2] :, w - small.shape[-1] :] = small
    return out


def rotate(x: torch.Tensor, degrees: float = ROTATION_DEG) -> torch.Tensor:
    """Extra row: rotation about the centre by ``degrees``, background filled with -1."""
    return TF.rotate(x, degrees, fill=-1.0)


def shrink_centred(x: torch.Tensor, scale: float = SHRINK_SCALE) -> torch.Tensor:
    """Extra row: the digit resized (antialiased) by ``scale`` and centred on a blank canvas."""
    size = x.shape[-1]
    small = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    pad = size - small.shape[-1]
    return F.pad(small, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)


# Transforms of test digits: the paper's three rows first, then the extra ones.
OOD_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "noise": add_noise,
    "flip": flip_upside_down,
    "reduced": reduce_to_corner,
    "noise_strong": lambda x: add_noise(x, STRONG_NOISE_STD),
    "rot90": rotate,
    "shrink_centre": shrink_centred,
}
PAPER_OOD_SETS = ("noise", "flip", "reduced")  # the rows of the paper's Table 2
OOD_SETS = (*OOD_TRANSFORMS, "fashion", "uniform")  # every set of the OOD table, in order
OOD_LABELS = {
    "noise": f"Gaussian noise, std {NOISE_STD} (tutorial 8)",
    "flip": "upside-down (180-degree rotation)",
    "reduced": "reduced to a corner (tutorial 8)",
    "noise_strong": f"Gaussian noise, std {STRONG_NOISE_STD} (extra)",
    "rot90": "rotated 90 degrees (extra)",
    "shrink_centre": "shrunk to half size, centred (extra)",
    "fashion": "Fashion-MNIST",
    "uniform": "uniform noise",
}


# ---- cost -------------------------------------------------------------------------------
def serialized_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of the model weighs."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time_s(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def latency_ms(model: nn.Module, batch: int, device: torch.device, repeats: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of one no-grad energy evaluation of ``batch`` digits."""
    x = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    with torch.no_grad():
        return 1e3 * median_time_s(lambda: model(x), device, repeats, warmup)


MIN_INTERLEAVED_REPEATS = 5  # a speed-up is never judged on fewer timed runs per model


def interleaved_times(
    fns: dict[str, Callable[[], object]], device: torch.device | str, repeats: int = 7, warmup: int = 2
) -> pd.DataFrame:
    """Times the compared callables alternately: after ``warmup`` untimed runs of each, ``repeats``
    rounds (at least :data:`MIN_INTERLEAVED_REPEATS`) that run every one of them once, the order
    rotating by one each round (A B C, B C A, ...), so a slow stretch of the machine (another job,
    thermal throttling, a cold cache for whoever runs first) falls on all of them alike. Per name:
    the median seconds, the quartiles ``q1_s``/``q3_s``, ``min_s``/``max_s`` and ``n``."""
    device = torch.device(device)
    repeats = max(repeats, MIN_INTERLEAVED_REPEATS)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, ts in times.items():
        q1, _, q3 = np.percentile(ts, [25, 50, 75])
        rows.append(
            {
                "model": name,
                "median_s": statistics.median(ts),
                "q1_s": float(q1),
                "q3_s": float(q3),
                "min_s": min(ts),
                "max_s": max(ts),
                "n": len(ts),
            }
        )
    return pd.DataFrame(rows)


TIMING_NOISE = 0.25  # without an interleaved timing, a latency ratio within 25% of 1 is no difference


def ratio_verdict(ratio: float, lo: float | None = None, hi: float | None = None) -> str:
    """'faster' / 'slower' / 'no difference' for a time ratio (reference / model): given its spread
    (``lo``..``hi``) the ratio differs from 1 only when the spread excludes 1; without one, only
    when it is more than :data:`TIMING_NOISE` away from 1."""
    if math.isnan(ratio):
        return "not measured"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        return "faster" if lo > 1 else "slower" if hi < 1 else "no difference"
    return "faster" if ratio > 1 + TIMING_NOISE else "slower" if ratio < 1 / (1 + TIMING_NOISE) else "no difference"


def speedups_vs(times: pd.DataFrame, reference: str) -> pd.DataFrame:
    """``times`` (from :func:`interleaved_times`) with each model's speed-up over ``reference``:
    ``ratio`` = the reference's median / the model's, ``ratio_lo``..``ratio_hi`` its spread from
    the quartiles (reference q1 / model q3 .. reference q3 / model q1), and ``verdict`` 'faster',
    'slower' or 'no difference' (the spread includes 1), by :func:`ratio_verdict`."""
    ref = times.set_index("model").loc[reference]
    out = times.copy()
    out["ratio"] = ref.median_s / out.median_s
    out["ratio_lo"] = ref.q1_s / out.q3_s
    out["ratio_hi"] = ref.q3_s / out.q1_s
    out["verdict"] = [ratio_verdict(r, lo, hi) for r, lo, hi in zip(out.ratio, out.ratio_lo, out.ratio_hi)]
    return out


def compare_latency(
    models: dict[str, nn.Module],
    batch: int,
    device: torch.device | str,
    reference: str | None = None,
    repeats: int = 7,
    warmup: int = 2,
    x: torch.Tensor | None = None,
) -> pd.DataFrame:
    """No-grad energy evaluations of ``batch`` digits, timed interleaved (:func:`interleaved_times`),
    with the speed-up of each model over ``reference`` (default: the first) and its verdict.
    The models must accept the same input (give ``x`` on their device; default U(-1, 1) digits)."""
    device = torch.device(device)
    x = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1 if x is None else x

    def run(model: nn.Module) -> Callable[[], object]:
        def f() -> object:
            with torch.no_grad():
                return model(x)

        return f

    times = interleaved_times({name: run(m) for name, m in models.items()}, device, repeats, warmup)
    times["latency_ms"] = 1e3 * times.median_s
    return speedups_vs(times, reference or next(iter(models)))


THROUGHPUT_STEPS = 5  # SGLD steps per timed run: short, so timing every model stays cheap


def throughput_config(cfg: SGLDConfig) -> SGLDConfig:
    """``cfg`` cut to at most :data:`THROUGHPUT_STEPS` steps: the chain every throughput is timed on."""
    return dataclasses.replace(cfg, steps=min(cfg.steps, THROUGHPUT_STEPS))


def sgld_throughput(
    model: nn.Module,
    cfg: SGLDConfig,
    batch: int,
    device: torch.device,
    repeats: int = 3,
    warmup: int = 1,
    amp_dtype: str | None = None,
    sampler: Callable[[torch.Tensor, SGLDConfig], torch.Tensor] | None = None,
) -> float:
    """SGLD image-steps per second: ``batch * cfg.steps`` over the median time of a run.
    ``sampler(x, cfg)`` runs the chains when given (a model's :meth:`Evaluator.sampler`, so the
    throughput is that of the sampler that makes its digits); by default :func:`sgld` with ``amp_dtype``."""
    sampler = sampler or (lambda x0, c: sgld(model, x0, c, amp_dtype=amp_dtype))
    x = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    t = median_time_s(lambda: sampler(x, cfg), device, repeats, warmup)
    return batch * cfg.steps / t


def latency_column(device: torch.device | str) -> str:
    """The latency column of a row timed on ``device``: ``latency_ms_cpu`` or ``latency_ms_cuda``."""
    return f"latency_ms_{torch.device(device).type}"


def latency_columns(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The latency column of a table timed on ``device``, as a tuple to splice into a table's
    declaration; empty without a device: a reader requires the columns of a table timed anywhere."""
    return () if device is None else (latency_column(device),)


def measure_cost(model: nn.Module, ev: "Evaluator", device: torch.device | None = None) -> dict[str, Any]:
    """Latency and SGLD throughput of ``model`` on ``device`` (default: the evaluator's), measured
    the way :meth:`Evaluator.score` measures every model, so rows timed in one process compare.
    The throughput is timed on ``ev.sampler(model)``, the runner that generates the model's scored digits."""
    p, device = ev.ctx.profile, device or ev.device
    latency = latency_ms(model, p.latency_batch, device, p.latency_repeats, p.latency_warmup)
    return {
        latency_column(device): latency,
        "latency_batch": p.latency_batch,
        "sgld_img_steps_per_s": sgld_throughput(
            model, throughput_config(p.gen_sgld_config()), p.latency_batch, device, sampler=ev.sampler(model)
        ),
        "hardware": device_name(device),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value: no spread was measured)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


# ---- the evaluator ----------------------------------------------------------------------
class Evaluator:
    """Scores any energy model of one profile with the same data, classifier, settings and seeds.

    The seed policy: generation ``i`` of every model starts from the same uniform-noise images and
    draws the same SGLD noise (``seeds[i]``), so differences between models come from the models;
    IS and FID are the mean and standard deviation over ``profile.score_seeds`` such generations.
    """

    def __init__(self, ctx: Context, classifier: MNISTClassifier) -> None:
        p = ctx.profile
        self.ctx, self.device = ctx, ctx.device
        self.classifier = classifier.to(self.device).eval()
        self.seeds = [p.seed + 1009 * (i + 1) for i in range(p.score_seeds)]
        test_x, test_y = data_mod.load_dataset("mnist", train=False, device="cpu")
        g = torch.Generator().manual_seed(p.seed)
        fid_idx = torch.randperm(len(test_x), generator=g)[: p.n_fid_real]
        self.real_mu, self.real_sigma = feature_stats(self._features(test_x[fid_idx]))
        ood_idx = torch.randperm(len(test_x), generator=g)[: p.n_ood] if p.n_ood else torch.arange(len(test_x))
        self.ood_x, self.ood_y = test_x[ood_idx], test_y[ood_idx]
        self.ood_sets = {name: t(self.ood_x) for name, t in OOD_TRANSFORMS.items()}
        fashion, _ = data_mod.load_dataset("fashion", train=False, device="cpu")
        self.ood_sets["fashion"] = fashion[: len(self.ood_x)]
        self.ood_sets["uniform"] = torch.rand(len(self.ood_x), 1, 28, 28, generator=g) * 2 - 1
        self._sampler: SGLDRunner | None = None  # the runner of the model scored last (see sampler)

    # ---- SGLD -----------------------------------------------------------------------------
    def sampler(self, model: nn.Module, amp_dtype: str | None = None) -> SGLDRunner:
        """The one SGLD runner that scores ``model``: fp32 chains (``amp_dtype`` None; a sampler
        comparison may ask for another) with the profile's speed-ups for the model's device
        (:meth:`Profile.speedups`: none on a CPU). It generates every seed's digits
        (:meth:`generate`) and times the throughput reported beside them (:func:`measure_cost`),
        so a table's throughput is the sampler that made its digits. Made once per model and
        kept while the same model is scored (only the latest model's runner is kept, so scored
        models are not held in memory). A trainer's chains are its own runner
        (:attr:`PCDTrainer.sampler <ebmhelpers.training.PCDTrainer>`, under the profile's ``amp_dtype``)."""
        speedups = self.ctx.profile.speedups(model_device(model))
        r = self._sampler
        if r is None or r.model is not model or r.speedups != speedups or r.amp_dtype != amp_dtype:
            self._sampler = SGLDRunner(model, speedups, amp_dtype)
        return self._sampler

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return batched(self.classifier.features, x, self.ctx.profile.eval_batch_size, self.device)

    # ---- sample quality -----------------------------------------------------------------
    def sample_quality(self, samples: torch.Tensor) -> dict[str, float]:
        """IS and FID of one set of generated digits (FID against ``n_fid_real`` real test digits)."""
        logits = batched(self.classifier, samples, self.ctx.profile.eval_batch_size, self.device)
        return quality_scores(logits, self._features(samples), samples, self.real_mu, self.real_sigma)

    def generate(
        self, model: nn.Module, seed: int, cfg: SGLDConfig | None = None, n: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """``n`` (default ``n_gen``) digits by SGLD (:meth:`sampler`) from uniform noise on the model's
        device; the starts and the SGLD noise depend only on ``seed``, so every model gets the same ones."""
        p = self.ctx.profile
        cfg, n = cfg or p.gen_sgld_config(), n or p.n_gen
        device = model_device(model)
        starts = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).mul_(2).sub_(1)
        seed_everything(seed)
        return generate(
            model, n, cfg, p.gen_batch_size, device=device, init=starts, progress=progress, sampler=self.sampler(model)
        ).cpu()

    def quality(
        self, model: nn.Module, cfg: SGLDConfig | None = None, n: int | None = None, progress: bool = True
    ) -> tuple[dict[str, float], torch.Tensor]:
        """IS and FID over every seed of :attr:`seeds`: ``IS``, ``FID`` (means), ``IS_std``,
        ``FID_std`` and ``n_seeds``; also returns the samples of every seed, in seed order. Raises
        :class:`~ebmhelpers.sampling.SamplingNotSupportedError` for a model without input gradients."""
        scores, samples = [], []
        for seed in tqdm(self.seeds, desc="seeds", disable=not progress or len(self.seeds) == 1, leave=False):
            samples.append(self.generate(model, seed, cfg, n))
            scores.append(self.sample_quality(samples[-1]))
        out: dict[str, float] = {"n_seeds": len(scores)}
        for key in ("IS", "FID"):
            out[key], out[f"{key}_std"] = mean_std([s[key] for s in scores])
        for key in ("entropy_bits", "confident", "saturation"):
            out[key] = float(np.mean([s[key] for s in scores]))
        return {k: out[k] for k in QUALITY_COLUMNS}, torch.cat(samples)

    def quality_of_samples(self, samples: torch.Tensor) -> dict[str, float]:
        """Given samples (one set, e.g. a replay buffer): IS and FID with no spread (``n_seeds=1``)."""
        q = {**self.sample_quality(samples), "IS_std": float("nan"), "FID_std": float("nan"), "n_seeds": 1}
        return {k: q[k] for k in QUALITY_COLUMNS}

    # ---- OOD detection ------------------------------------------------------------------
    def energies(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Energies (CPU float) of ``x`` under ``model``, batched, without gradients."""
        return batched(model, x, self.ctx.profile.eval_batch_size, model_device(model))

    def ood_table(self, model: nn.Module) -> pd.DataFrame:
        """Tidy OOD table: one row per (OOD set, digits) with the energy gap and AUROC; the
        transforms of test digits per digit (4, 5, 9) and for all, the other sets for all.
        ``inverted`` marks an AUROC below 0.5: the model prefers the OOD images to real digits."""
        e_in = self.energies(model, self.ood_x)
        rows = []
        for name in OOD_SETS:
            e_out = self.energies(model, self.ood_sets[name])
            paired = name in OOD_TRANSFORMS  # transformed copies of the same digits
            for digits in (*OOD_DIGITS, "all") if paired else ("all",):
                mask = torch.ones_like(self.ood_y, dtype=torch.bool) if digits == "all" else self.ood_y == digits
                if mask.sum() == 0:
                    continue
                rows.append(ood_row(name, str(digits), e_in[mask], e_out[mask] if paired else e_out, paired))
        return pd.DataFrame(rows, columns=list(OOD_COLUMNS))

    # ---- everything -------------------------------------------------------------------------
    def score(
        self,
        model: nn.Module,
        name: str,
        samples: torch.Tensor | None = None,
        generate_samples: bool = True,
        sgld_cfg: SGLDConfig | None = None,
        latency_device: torch.device | None = None,
        columns: dict[str, Any] | None = None,
    ) -> tuple[dict, pd.DataFrame, torch.Tensor | None]:
        """Score one model: a summary row (:func:`score_columns` of ``latency_device``: cost; IS and
        FID with their spread over the seeds; AUROC and gap per OOD set and the worst AUROC over the
        paper's three transforms), its OOD table, and the samples of every seed in seed order (or the
        ``samples`` given, scored as one set).

        A model without input gradients (int8), or scored with ``generate_samples=False``, gets
        NaN IS/FID and ``generative=False``. ``columns`` are added to the row last (a compression
        method's own columns, e.g. its ratio; they may override ``params``).
        """
        p = self.ctx.profile
        lat_dev = latency_device or self.device
        row: dict[str, Any] = {
            "model": name,
            "params": count_parameters(model),
            "size_mb": serialized_size_bytes(model) / 1e6,
        }
        cost = measure_cost(model, self, lat_dev) if samples is not None or generate_samples else None
        lat = latency_column(lat_dev)
        row[lat] = (
            cost[lat] if cost else latency_ms(model, p.latency_batch, lat_dev, p.latency_repeats, p.latency_warmup)
        )
        row.update(latency_batch=p.latency_batch, hardware=device_name(lat_dev))
        nan_quality = {**dict.fromkeys(QUALITY_COLUMNS, float("nan")), "n_seeds": 0}
        if samples is not None:
            row.update(self.quality_of_samples(samples))
        elif generate_samples:
            try:
                quality, samples = self.quality(model, sgld_cfg)
                row.update(quality)
            except SamplingNotSupportedError as err:
                print(f"{name}: no samples - {err}")
                row.update(nan_quality)
        else:
            row.update(nan_quality)
        generative = samples is not None
        row["sgld_img_steps_per_s"] = cost["sgld_img_steps_per_s"] if (generative and cost) else float("nan")
        ood = self.ood_table(model)
        ood.insert(0, "model", name)
        row.update(ood_summary(ood))
        row["generative"] = generative
        row.update(columns or {})
        return row, ood, samples


# The columns of an OOD table (Evaluator.ood_table; saved as baseline_ood and quantization_ood).
CHANCE_AUROC = 0.5  # below it a detector is inverted: it gives the OOD images lower energy than digits


def inverted(auroc: float) -> bool:
    """The one rule for an inverted detector: AUROC below :data:`CHANCE_AUROC` (the OOD images get
    lower energy than real digits)."""
    return not math.isnan(auroc) and auroc < CHANCE_AUROC


OOD_COLUMNS = ("ood_set", "digits", "n", "gap", "gap_se", "auroc", "auroc_se", "inverted")


def ood_row(name: str, digits: str, e_in: torch.Tensor, e_out: torch.Tensor, paired: bool) -> dict[str, Any]:
    """One OOD table row (:data:`OOD_COLUMNS`): the paper's gap ``mean(-E(out)) - mean(-E(in))``
    (negative = the OOD images get lower likelihood, i.e. detected) and AUROC with -E as the
    in-distribution score, each with its standard error over the images drawn. ``paired``: the
    OOD images are transforms of the same digits, so the gap's error is that of the paired differences."""
    gap = (-e_out).mean() - (-e_in).mean()
    if paired:
        gap_se = (e_in - e_out).std() / math.sqrt(len(e_in))
    else:
        gap_se = (e_in.var() / len(e_in) + e_out.var() / len(e_out)).sqrt()
    a = auroc(-e_in, -e_out)
    return {
        "ood_set": name,
        "digits": digits,
        "n": len(e_out),
        "gap": float(gap),
        "gap_se": float(gap_se),
        "auroc": a,
        "auroc_se": auroc_se(a, len(e_in), len(e_out)),
        "inverted": inverted(a),
    }


SIGNIFICANCE_Z = 2.0  # a difference counts when it exceeds twice its standard error (about 95% confidence)


def differs(a: float, se_a: float, b: float, se_b: float, z: float = SIGNIFICANCE_Z) -> bool:
    """Whether ``a`` and ``b`` differ by more than ``z`` times the standard error of their
    difference, ``sqrt(se_a^2 + se_b^2)`` (errors taken as independent)."""
    return abs(a - b) > z * math.hypot(se_a, se_b)


CONTRAST_COLUMNS = ("ood_set", "first", "second", "column", "difference", "se", "differs")


def digit_contrasts(ood: pd.DataFrame, column: str = "auroc") -> pd.DataFrame:
    """Every pair of digits of each OOD set with per-digit rows (:data:`CONTRAST_COLUMNS`): the
    difference of ``column`` (``auroc`` or ``gap``), its standard error and whether it counts
    (:func:`differs`). About 200 test digits per class give each per-digit value its error."""
    rows = []
    per_digit = ood[ood.digits.astype(str) != "all"].assign(digits=lambda t: t.digits.astype(str))
    for name, group in per_digit.groupby("ood_set", sort=False):
        g = group.set_index("digits")
        for d1, d2 in itertools.combinations(g.index, 2):
            a, b, se_a, se_b = g.at[d1, column], g.at[d2, column], g.at[d1, f"{column}_se"], g.at[d2, f"{column}_se"]
            rows.append(
                {
                    "ood_set": name,
                    "first": d1,
                    "second": d2,
                    "column": column,
                    "difference": a - b,
                    "se": math.hypot(se_a, se_b),
                    "differs": differs(a, se_a, b, se_b),
                }
            )
    return pd.DataFrame(rows, columns=list(CONTRAST_COLUMNS))


def model_contrasts(ood: pd.DataFrame, reference: str, column: str = "auroc") -> pd.DataFrame:
    """Per (OOD set, digits): ``column`` of every model of an OOD table with a ``model`` column
    against ``reference``'s, the difference, its standard error and whether it counts
    (:func:`differs`). The models score the same images, so their errors are correlated and the
    rule is conservative: it may miss a real change, it does not invent one."""
    keys = ["ood_set", "digits"]
    ref = ood[ood.model == reference].set_index(keys)
    rows = []
    for (model, name, digits), r in ood[ood.model != reference].set_index(["model", *keys]).iterrows():
        b = ref.loc[(name, digits)]
        rows.append(
            {
                "model": model,
                "ood_set": name,
                "digits": digits,
                "reference": b[column],
                "value": r[column],
                "difference": r[column] - b[column],
                "se": math.hypot(r[f"{column}_se"], b[f"{column}_se"]),
                "differs": differs(r[column], r[f"{column}_se"], b[column], b[f"{column}_se"]),
            }
        )
    return pd.DataFrame(rows)


# ood_summary's columns: AUROC and gap over all digits per OOD set, then the worst of the paper's transforms
OOD_SUMMARY_COLUMNS = (*(f"{m}_{name}" for name in OOD_SETS for m in ("auroc", "gap")), "worst_set", "auroc_worst")


def score_columns(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The columns of an :meth:`Evaluator.score` row, in order, its latency timed on ``device``
    (:func:`latency_columns`; without a device, the columns a reader requires): the baseline table
    (notebook 02) is one such row, and every scored table starts with them."""
    return (
        "model",
        "params",
        "size_mb",
        *latency_columns(device),
        "latency_batch",
        "hardware",
        *QUALITY_COLUMNS,
        "sgld_img_steps_per_s",
        *OOD_SUMMARY_COLUMNS,
        "generative",
    )


def ood_summary(ood: pd.DataFrame) -> dict[str, Any]:
    """Summary columns of an OOD table: ``auroc_<set>`` and ``gap_<set>`` (all digits) per set,
    ``auroc_worst``, the lowest AUROC over the paper's transforms, and ``worst_set``, which one.
    AUROCs of different sets are never averaged: each measures a different failure."""
    overall = ood[ood.digits == "all"].set_index("ood_set")
    out: dict[str, Any] = {}
    for name in overall.index:
        out[f"auroc_{name}"] = float(overall.auroc[name])
        out[f"gap_{name}"] = float(overall.gap[name])
    paper = overall.loc[[s for s in PAPER_OOD_SETS if s in overall.index], "auroc"]
    out["worst_set"] = str(paper.idxmin())
    out["auroc_worst"] = float(paper.min())
    return out


# ---- how sample quality depends on the sampler and the model --------------------------
REFERENCE_COLUMNS = ("samples", *QUALITY_COLUMNS)  # baseline_references: reference_quality, one row per set of samples
STEPS_STUDY_COLUMNS = ("model", "steps", "step_size", "noise_std", *QUALITY_COLUMNS, "seconds_per_seed", "n")


def reference_quality(ev: Evaluator, n: int) -> pd.DataFrame:
    """IS and FID of ``n`` real training digits (what a perfect generator scores; the FID
    reference uses test digits) and of ``n`` uniform-noise images (what no generator scores)."""
    train_x, _ = data_mod.load_dataset("mnist", train=True, subset=n, seed=ev.ctx.profile.seed + 7)
    noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(ev.ctx.profile.seed + 7)) * 2 - 1
    return pd.DataFrame(
        [
            {"samples": "real training digits", **ev.quality_of_samples(train_x)},
            {"samples": "uniform noise", **ev.quality_of_samples(noise)},
        ],
        columns=list(REFERENCE_COLUMNS),
    )


def steps_study(
    ev: Evaluator,
    models: dict[str, nn.Module],
    steps: tuple[int, ...],
    n: int,
    step_scales: tuple[float, ...] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """IS and FID (mean and std over the evaluator's seeds) of ``n`` digits generated from noise
    by each model with each number of SGLD steps and each step-size factor (at the training
    temperature, :meth:`SGLDConfig.scaled`; default: training's and generation's), and the
    seconds one such generation took."""
    p = ev.ctx.profile
    scales = step_scales or tuple(sorted({1.0, p.gen_step_scale}))
    rows = []
    jobs = [(name, k, scale) for name in models for scale in scales for k in steps]
    for name, k, scale in tqdm(jobs, desc="models x SGLD settings", disable=not progress):
        cfg = p.sgld_config(k).scaled(scale)
        t0 = time.perf_counter()
        quality, _ = ev.quality(models[name], cfg, n, progress=False)
        seconds = (time.perf_counter() - t0) / max(1, quality["n_seeds"])
        rows.append(
            {
                "model": name,
                "steps": k,
                "step_size": cfg.step_size,
                "noise_std": cfg.noise_std,
                **quality,
                "seconds_per_seed": seconds,
                "n": n,
            }
        )
    return pd.DataFrame(rows, columns=list(STEPS_STUDY_COLUMNS))
