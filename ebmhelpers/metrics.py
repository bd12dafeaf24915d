"""How every model of the series is scored, the same way for all of them.

* Sample quality: Inception Score from the MNIST classifier's logits and FID from its 128-d
  penultimate features against statistics of real test digits.
* Out-of-distribution detection, the paper's Table 2: test digits transformed by Gaussian noise,
  rotation and size reduction, per digit (4, 5, 9) and for all digits, reported as the paper's
  energy gap ``mean(-E(T(x))) - mean(-E(x))`` on the same images (negative = detected) and as
  AUROC with -E as the in-distribution score; plus Fashion-MNIST and uniform noise.
* Cost: parameter count, serialized size, latency and SGLD throughput on a named device.
"""

from __future__ import annotations

import io
import itertools
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from . import data as data_mod
from .models import MNISTClassifier, count_parameters
from .profiles import SGLDConfig
from .runtime import Context, device_name
from .sampling import SamplingNotSupportedError, generate, sgld

# The OOD transforms of Table 2, in the [-1, 1] pixel scale.
NOISE_STD = 0.5  # additive Gaussian noise, then clamped to [-1, 1]
ROTATION_DEG = 90.0  # rotation about the centre, background filled with -1
REDUCTION_SCALE = 0.5  # digit shrunk to half size, centred on a blank canvas
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


def add_noise(x: torch.Tensor, std: float = NOISE_STD, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g).to(x.device)).clamp(-1, 1)


def rotate(x: torch.Tensor, degrees: float = ROTATION_DEG) -> torch.Tensor:
    return TF.rotate(x, degrees, fill=-1.0)


def reduce_size(x: torch.Tensor, scale: float = REDUCTION_SCALE) -> torch.Tensor:
    size = x.shape[-1]
    small = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    pad = size - small.shape[-1]
    return F.pad(small, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)


OOD_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "noise": add_noise,
    "rotation": rotate,
    "reduction": reduce_size,
}


def model_device(model: nn.Module) -> torch.device:
    """Device of a model's first parameter or buffer; CPU for one without any (int8)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


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


def sgld_throughput(
    model: nn.Module, cfg: SGLDConfig, batch: int, device: torch.device, repeats: int = 3, warmup: int = 1,
    amp_dtype: str | None = None,
) -> float:
    """SGLD image-steps per second: ``batch * cfg.steps`` over the median time of a run."""
    x = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    t = median_time_s(lambda: sgld(model, x, cfg, amp_dtype=amp_dtype), device, repeats, warmup)
    return batch * cfg.steps / t


# ---- the evaluator ----------------------------------------------------------------------
class Evaluator:
    """Scores any energy model of one profile with the same data, classifier and settings."""

    def __init__(self, ctx: Context, classifier: MNISTClassifier) -> None:
        p = ctx.profile
        self.ctx, self.device = ctx, ctx.device
        self.classifier = classifier.to(self.device).eval()
        test_x, test_y = data_mod.load_dataset("mnist", train=False, device="cpu")
        g = torch.Generator().manual_seed(p.seed)
        fid_idx = torch.randperm(len(test_x), generator=g)[: p.n_fid_real]
        self.real_mu, self.real_sigma = feature_stats(self._features(test_x[fid_idx]))
        ood_idx = torch.randperm(len(test_x), generator=g)[: p.n_ood] if p.n_ood else torch.arange(len(test_x))
        self.ood_x, self.ood_y = test_x[ood_idx], test_y[ood_idx]
        self.ood_sets = {name: t(self.ood_x) for name, t in OOD_TRANSFORMS.items()}
        fashion, _ = data_mod.load_dataset("fashion", train=False, device="cpu")
        self.fashion = fashion[: len(self.ood_x)]
        self.uniform = torch.rand(len(self.ood_x), 1, 28, 28, generator=g) * 2 - 1

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return batched(self.classifier.features, x, self.ctx.profile.eval_batch_size, self.device)

    def sample_quality(self, samples: torch.Tensor) -> dict[str, float]:
        """IS and FID of generated digits (FID against ``n_fid_real`` real test digits)."""
        bs = self.ctx.profile.eval_batch_size
        logits = batched(self.classifier, samples, bs, self.device)
        mu, sigma = feature_stats(self._features(samples))
        return {"IS": inception_score(logits), "FID": frechet_distance(mu, sigma, self.real_mu, self.real_sigma)}

    def energies(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Energies (CPU float) of ``x`` under ``model``, batched, without gradients."""
        return batched(model, x, self.ctx.profile.eval_batch_size, model_device(model))

    def ood_table(self, model: nn.Module) -> pd.DataFrame:
        """Tidy OOD table: one row per (ood set, digits) with the energy gap and AUROC."""
        e_in = self.energies(model, self.ood_x)
        rows = []
        for name, x_t in self.ood_sets.items():
            e_out = self.energies(model, x_t)
            for digits in (*OOD_DIGITS, "all"):
                mask = torch.ones_like(self.ood_y, dtype=torch.bool) if digits == "all" else self.ood_y == digits
                if mask.sum() == 0:
                    continue
                rows.append(self._ood_row(name, str(digits), e_in[mask], e_out[mask]))
        for name, x_o in (("fashion", self.fashion), ("uniform", self.uniform)):
            rows.append(self._ood_row(name, "all", e_in, self.energies(model, x_o)))
        return pd.DataFrame(rows)

    @staticmethod
    def _ood_row(name: str, digits: str, e_in: torch.Tensor, e_out: torch.Tensor) -> dict:
        return {
            "ood_set": name,
            "digits": digits,
            "n": len(e_out),
            "gap": float((-e_out).mean() - (-e_in).mean()),
            "auroc": auroc(-e_in, -e_out),
        }

    def score(
        self, model: nn.Module, name: str, samples: torch.Tensor | None = None, generate_samples: bool = True,
        sgld_cfg: SGLDConfig | None = None, latency_device: torch.device | None = None,
    ) -> tuple[dict, pd.DataFrame, torch.Tensor | None]:
        """Score one model: a summary row (cost, IS, FID, mean OOD AUROC), its OOD table and
        the samples used for IS/FID (generated here by SGLD from noise unless given).

        A model without input gradients (int8), or scored without samples, gets NaN IS/FID and
        ``generative=False``; samples are drawn on the model's own device.
        """
        p = self.ctx.profile
        cfg = sgld_cfg or p.sgld(p.gen_steps)
        lat_dev = latency_device or self.device
        row = {
            "model": name,
            "params": count_parameters(model),
            "size_mb": serialized_size_bytes(model) / 1e6,
            f"latency_ms_{lat_dev.type}": latency_ms(model, p.latency_batch, lat_dev, p.latency_repeats, p.latency_warmup),
            "latency_batch": p.latency_batch,
            "hardware": device_name(lat_dev),
        }
        if samples is None and generate_samples:
            try:
                samples = generate(model, p.n_gen, cfg, p.gen_batch_size, device=model_device(model))
            except SamplingNotSupportedError as err:
                print(f"{name}: no samples - {err}")
        generative = samples is not None
        if samples is not None:
            row.update(self.sample_quality(samples))
            short = SGLDConfig(min(cfg.steps, 5), cfg.step_size, cfg.noise_std, cfg.grad_clamp, cfg.clamp_range)
            row["sgld_img_steps_per_s"] = sgld_throughput(model, short, p.latency_batch, self.device)
        else:
            row.update({"IS": float("nan"), "FID": float("nan"), "sgld_img_steps_per_s": float("nan")})
        ood = self.ood_table(model)
        ood.insert(0, "model", name)
        transformed = ood[ood.ood_set.isin(list(OOD_TRANSFORMS)) & (ood.digits == "all")]
        row["ood_auroc"] = float(transformed.auroc.mean())
        row["ood_gap"] = float(transformed.gap.mean())
        for other in ("fashion", "uniform"):
            row[f"auroc_{other}"] = float(ood[ood.ood_set == other].auroc.iloc[0])
        row["generative"] = generative
        return row, ood, samples
