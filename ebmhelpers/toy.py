"""A 2-D toy world where everything about an EBM is exact (notebook 00).

In two dimensions the partition function ``Z = \\int exp(-E(x)) dx`` is a sum over a grid, so
the Boltzmann density, the exact log-likelihood and its gradient (the paper's eq. 3) can be
computed to many digits and every approximation of the series - MCMC samplers, contrastive
divergence, persistent chains, MCMC-free estimators - can be compared against the truth.

The toy data live in the box [-1, 1]^2, the package's SGLD clamp range and the support of the
replay buffer's fresh noise, so the package's own :func:`~ebmhelpers.sampling.sgld`,
:class:`~ebmhelpers.sampling.ReplayBuffer` and :class:`~ebmhelpers.training.PCDTrainer` run on
it unchanged. The toy sizes are tiny and the same for every profile (named constants below).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn
from .progress import tqdm

from .models import EnergyModel, Swish
from .profiles import Profile, SGLDConfig
from .sampling import energy_grad, frozen, sgld
from .training import PCDTrainer

# ---- the toy world ------------------------------------------------------------------------
BOX = 1.0  # data, samples and quadrature live in [-BOX, BOX]^2
GRID_SIZE = 200  # quadrature points per axis (a 200 x 200 midpoint rule)
HIST_BINS = 20  # bins per axis when comparing a sample histogram with the exact density
MIX_MODES, MIX_RADIUS, MIX_STD = 8, 0.6, 0.1  # the target: 8 Gaussians on a circle,
MIX_WEIGHTS = (3.0, 1.0) * (MIX_MODES // 2)  # alternately heavy and light (normalized to sum 1)
RING_RADIUS, RING_STD = 0.6, 0.1
NO_GRAD_CLAMP = 1e6  # a gradient clamp that never binds: plain Langevin dynamics
NUM_THREADS = 1  # tensors here are tiny: extra intra-op threads only add synchronization
# (on a CPU shared with other jobs a second thread slows toy training down several times)
ENERGY_PLOT_RANGE = 20.0  # energy plots show min(E) .. min(E) + this (nats)

# ---- sampler comparison -------------------------------------------------------------------
N_CHAINS = 1000
SAMPLER_STEPS = 1000
RECORD_EVERY = 25
MH_PROPOSAL_STD = 0.15
LANGEVIN_STEP = 1e-3  # step size of ULA and MALA; the Langevin noise std is sqrt(2 * step)
LANGEVIN_BIG_STEP = 5e-3  # a larger step: MALA stays exact, ULA shows its discretization bias
FLOOR_REPEATS = 20  # draws of N_CHAINS exact samples that measure the TV floor (exact_tv_floor)
FLOOR_BAND = 2.0  # a sampler "reaches the floor" at a TV within this many stds of the floor's mean

# ---- training a small MLP energy (identical for every profile: the toy is tiny) ------------
N_DATA = 8192
N_TEST = 4096
MLP_HIDDEN = (64, 64)
TOY_BATCH = 128
TOY_EPOCHS = 12  # 12 x 64 = 768 parameter updates for every training method
TOY_BUFFER = 2048
TOY_REINIT_FRAC = 0.05  # PCD chains restarted from uniform noise per update: the paper's 5%
TOY_DATA_NOISE_STD = 0.005  # noise on the data points during training, as in every MNIST profile
TOY_SGLD_STEPS = (2, 10)  # K of the CD-K / PCD-K comparison
TOY_SGLD_STEP = 1e-3  # Langevin step; noise std sqrt(2 * step) makes SGLD sample exp(-E)
TOY_LR = 1e-2
TOY_BETAS = (0.0, 0.999)  # as the paper's recipe
TOY_ALPHA = 0.01  # weaker than the paper's 0.1: the toy's energies span ~20 nats
MLE_GRID_SIZE = 50  # quadrature points per axis for exact-likelihood training
NCE_NOISE_RATIO = 4  # uniform-noise samples per data sample
GRAD_CHECK_HIDDEN = (8,)  # the small parametric energy of the eq. 3 check (33 parameters)
MC_SAMPLE_SIZES = (256, 1024, 4096, 16384)  # negatives per estimate of eq. 3
MC_REPEATS = 3

# ---- SGLD step size / noise exploration ---------------------------------------------------
EXPLORE_STEPS = 200
EXPLORE_CHAINS = 1000
EXPLORE_STEP_SIZES = (1e-4, 1e-3, 1e-2)
EXPLORE_NOISE_STDS = (0.005, 0.045, 0.2)


# ==== energies ==============================================================================
class GaussianEnergy(nn.Module):
    """E(x) = sum_i (x_i - mean_i)^2 / (2 std_i^2): exp(-E) is an unnormalized diagonal Gaussian.

    Mean and log-std are parameters, so estimators (NCE, MLE) can be checked on recovering them.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 2 or len(std) != 2 or min(std) <= 0:
            raise ValueError(f"need a 2-D mean and two positive stds, got {mean}, {std}")
        self.mean = nn.Parameter(torch.tensor(mean, dtype=torch.float32))
        self.log_std = nn.Parameter(torch.tensor(std, dtype=torch.float32).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (((x - self.mean) / self.log_std.exp()) ** 2).sum(1) / 2

    def log_partition(self) -> float:
        """Analytic log Z = log(2 pi) + sum_i log std_i."""
        return float(math.log(2 * math.pi) + self.log_std.detach().sum())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(n, 2, generator=generator, dtype=self.mean.dtype)
        return self.mean + eps * self.log_std.exp()


class GaussianMixtureEnergy(nn.Module):
    """E(x) = -log sum_k w_k exp(-||x - mu_k||^2 / (2 s^2)), so Z = 2 pi s^2 exactly."""

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if means.ndim != 2 or means.shape[1] != 2 or std <= 0:
            raise ValueError("means must be (K, 2) and std positive")
        weights = torch.full((len(means),), 1.0 / len(means)) if weights is None else weights
        if weights.shape != (len(means),) or (weights <= 0).any():
            raise ValueError("weights must be K positive numbers")
        self.register_buffer("means", means.float())
        self.register_buffer("log_w", (weights / weights.sum()).float().log())
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d2 = (x[:, None, :] - self.means.to(x.dtype)).pow(2).sum(-1)
        return -torch.logsumexp(self.log_w.to(x.dtype) - d2 / (2 * self.std**2), dim=1)

    def log_partition(self) -> float:
        return math.log(2 * math.pi * self.std**2)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, 2, generator=generator)


class RingEnergy(nn.Module):
    """E(x) = (||x|| - R)^2 / (2 s^2): a ring of radius R, a density with no Gaussian bumps."""

    def __init__(self, radius: float = RING_RADIUS, std: float = RING_STD) -> None:
        super().__init__()
        self.radius, self.std = radius, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.norm(dim=1) - self.radius).pow(2) / (2 * self.std**2)

    def log_partition(self) -> float:
        """Z = 2 pi [s^2 exp(-R^2 / 2s^2) + R s sqrt(2 pi) Phi(R / s)] (polar coordinates)."""
        r, s = self.radius, self.std
        phi = 0.5 * (1 + math.erf(r / s / math.sqrt(2)))
        return math.log(2 * math.pi * (s**2 * math.exp(-(r**2) / (2 * s**2)) + r * s * math.sqrt(2 * math.pi) * phi))


def eight_gaussians() -> GaussianMixtureEnergy:
    """The toy target: ``MIX_MODES`` Gaussians (std ``MIX_STD``) on a circle in the box,
    weighted ``MIX_WEIGHTS``: unequal weights test whether a method learns the modes' masses."""
    angles = torch.arange(MIX_MODES) * (2 * math.pi / MIX_MODES)
    means = MIX_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixtureEnergy(means, MIX_STD, torch.tensor(MIX_WEIGHTS))


class MLPEnergy(EnergyModel):
    """A small Swish MLP energy on 2-D points: one logit, so the energy (the mean of the
    logits, as for every :class:`EnergyModel`) is that logit."""

    num_logits = 1

    def __init__(self, hidden: Sequence[int] = MLP_HIDDEN) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 2
        for h in hidden:
            layers += [nn.Linear(width, h), Swish()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"MLPEnergy takes (N, 2) points, got {tuple(x.shape)}")
        return self.net(x)


# ==== quadrature ============================================================================
@dataclass(frozen=True)
class Grid:
    """Midpoint rule on [-lim, lim]^2 with ``n`` cells per axis. ``points`` are ordered so that
    ``values.reshape(n, n)[i, j]`` sits at (x = axis[j], y = axis[i]) (``imshow(origin='lower')``)."""

    lim: float = BOX
    n: int = GRID_SIZE
    dtype: torch.dtype = torch.float64

    @property
    def h(self) -> float:
        return 2 * self.lim / self.n

    @property
    def cell_area(self) -> float:
        return self.h**2

    @property
    def axis(self) -> torch.Tensor:
        return -self.lim + self.h * (torch.arange(self.n, dtype=self.dtype) + 0.5)

    @property
    def points(self) -> torch.Tensor:
        xx, yy = torch.meshgrid(self.axis, self.axis, indexing="xy")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (-self.lim, self.lim, -self.lim, self.lim)


def _energies_on(energy: nn.Module, grid: Grid) -> torch.Tensor:
    param = next(iter(energy.parameters()), None)
    dtype = param.dtype if param is not None else grid.dtype
    return energy(grid.points.to(dtype))


@torch.no_grad()
def grid_energy(energy: nn.Module, grid: Grid) -> torch.Tensor:
    """E(x_g) on the grid as an (n, n) tensor (for plots)."""
    return _energies_on(energy, grid).reshape(grid.n, grid.n)


def log_partition(energy: nn.Module, grid: Grid) -> torch.Tensor:
    """log Z = log sum_g exp(-E(x_g)) dA by the midpoint rule; differentiable in the parameters."""
    return torch.logsumexp(-_energies_on(energy, grid), dim=0) + math.log(grid.cell_area)


@torch.no_grad()
def grid_density(energy: nn.Module, grid: Grid) -> torch.Tensor:
    """Probability mass of each grid cell, p(x_g) dA, as an (n, n) float64 tensor summing to 1."""
    return torch.softmax(-_energies_on(energy, grid).double(), dim=0).reshape(grid.n, grid.n)


def exact_log_likelihood(energy: nn.Module, x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Mean log p(x) = -mean E(x) - log Z with Z by quadrature (differentiable)."""
    return -energy(x).mean() - log_partition(energy, grid)


def _flat_grad(scalar: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params)])


def mle_gradient(energy: nn.Module, x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The paper's eq. 3, the gradient of the negative log-likelihood of ``x``,
    -d/dtheta log p = dE/dtheta(x+) - E_{x- ~ p}[dE/dtheta(x-)], with the expectation taken exactly
    over the grid density; flattened over ``energy.parameters()``."""
    params = [p for p in energy.parameters() if p.requires_grad]
    with torch.no_grad():
        weights = grid_density(energy, grid).reshape(-1).to(x.dtype)
    surrogate = energy(x).mean() - (weights * _energies_on(energy, grid)).sum()
    return _flat_grad(surrogate, params)


def mle_gradient_mc(energy: nn.Module, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    """Eq. 3 with the expectation replaced by an average over samples ``x_neg`` of the model:
    the estimate that (persistent) contrastive divergence follows (the gradient of
    :func:`~ebmhelpers.training.pcd_loss` without its regularizer)."""
    params = [p for p in energy.parameters() if p.requires_grad]
    return _flat_grad(energy(x_pos).mean() - energy(x_neg).mean(), params)


@torch.no_grad()
def finite_difference_gradient(energy: nn.Module, x: torch.Tensor, grid: Grid, h: float = 1e-5) -> torch.Tensor:
    """Central differences of the negative :func:`exact_log_likelihood` (the loss whose gradient
    is eq. 3) in every parameter (use float64)."""
    out = []
    for p in energy.parameters():
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            up = exact_log_likelihood(energy, x, grid)
            flat[i] = old - h
            down = exact_log_likelihood(energy, x, grid)
            flat[i] = old
            out.append((down - up) / (2 * h))  # of -log p
    return torch.stack(out)


def mc_gradient_errors(
    energy: nn.Module,
    data: torch.Tensor,
    grid: Grid,
    sizes: Sequence[int] = MC_SAMPLE_SIZES,
    cd_steps: Sequence[int] = TOY_SGLD_STEPS,
    repeats: int = MC_REPEATS,
    seed: int = 0,
) -> pd.DataFrame:
    """Relative error ||g_hat - g|| / ||g|| of sample estimates of eq. 3's negative phase
    against the exact gradient g (positive phase on all of ``data`` in both): n negatives that
    are exact samples of the model, or CD-K negatives (K Langevin steps from n data points).
    One row per (n, negatives, repeat)."""
    g_exact = mle_gradient(energy, data, grid)
    density = grid_density(energy, grid)
    rows = []
    for n, rep in itertools.product(sizes, range(repeats)):
        torch.manual_seed(seed + 1000 * rep + n)
        starts = data[torch.randint(len(data), (n,))]
        negatives = {"exact samples of p": sample_exact(density, grid, n).to(data.dtype)}
        for k in cd_steps:
            cfg = langevin_config(k, TOY_SGLD_STEP, clamp_range=(-grid.lim, grid.lim))
            negatives[f"CD-{k} (Langevin from data)"] = sgld(energy, starts, cfg)
        for name, x_neg in negatives.items():
            err = (mle_gradient_mc(energy, data, x_neg) - g_exact).norm() / g_exact.norm()
            rows.append({"n": n, "negatives": name, "repeat": rep, "relative_error": float(err)})
    return pd.DataFrame(rows)


def sample_exact(density: torch.Tensor, grid: Grid, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` i.i.d. samples of a grid density: a cell by its mass, then uniform inside the cell."""
    idx = torch.multinomial(density.reshape(-1), n, replacement=True, generator=generator)
    centres = grid.points[idx].float()
    return centres + grid.h * (torch.rand(n, 2, generator=generator) - 0.5)


# ==== comparing samples with the exact density ==============================================
def bin_masses(density: torch.Tensor, grid: Grid, bins: int = HIST_BINS) -> torch.Tensor:
    """Exact probability of each of ``bins`` x ``bins`` coarse bins (summing fine grid cells)."""
    if grid.n % bins:
        raise ValueError(f"grid size {grid.n} must be a multiple of the bin count {bins}")
    k = grid.n // bins
    return density.reshape(bins, k, bins, k).sum((1, 3))


def histogram(x: torch.Tensor, grid: Grid, bins: int = HIST_BINS) -> torch.Tensor:
    """Fraction of the samples in each coarse bin (row = y, column = x); samples outside the
    box count in no bin, so the fractions then sum to less than one."""
    col = torch.floor((x[:, 0].double() + grid.lim) / (2 * grid.lim) * bins).long()
    row = torch.floor((x[:, 1].double() + grid.lim) / (2 * grid.lim) * bins).long()
    inside = (col >= 0) & (col < bins) & (row >= 0) & (row < bins)
    counts = torch.bincount(row[inside] * bins + col[inside], minlength=bins * bins)
    return (counts.double() / len(x)).reshape(bins, bins)


def total_variation(x: torch.Tensor, density: torch.Tensor, grid: Grid, bins: int = HIST_BINS) -> float:
    """TV distance between the histogram of samples ``x`` and the exact density on coarse bins,
    0.5 sum |p_hat - p| (mass outside the box counts fully). Zero only for infinite samples:
    even exact i.i.d. samples leave a floor, see :func:`sample_exact`."""
    p_hat = histogram(x, grid, bins)
    outside = 1.0 - p_hat.sum()
    return float(0.5 * ((p_hat - bin_masses(density, grid, bins)).abs().sum() + outside))


def exact_tv_floor(
    density: torch.Tensor, grid: Grid, n: int, repeats: int = FLOOR_REPEATS, seed: int = 0
) -> tuple[float, float]:
    """Mean and std of :func:`total_variation` for ``n`` exact i.i.d. samples of ``density``, over
    ``repeats`` draws: the TV that a perfect sampler with ``n`` chains still shows (the floor)."""
    gen = torch.Generator().manual_seed(seed)
    tvs = torch.tensor([total_variation(sample_exact(density, grid, n, gen), density, grid) for _ in range(repeats)])
    return float(tvs.mean()), float(tvs.std())


def floor_level(floor: tuple[float, float], band: float = FLOOR_BAND) -> float:
    """The TV at or below which samples count as indistinguishable from exact ones: the floor's
    mean plus ``band`` of its stds (:func:`exact_tv_floor`)."""
    mean, std = floor
    return mean + band * std


def steps_to_level(curve: pd.DataFrame, level: float) -> int | None:
    """The first recorded step at which a TV curve (:meth:`SamplerRun.tv_curve`) is at or below
    ``level``, or None if it never is."""
    hit = curve[curve.tv <= level]
    return int(hit.step.iloc[0]) if len(hit) else None


def convergence_table(curves: pd.DataFrame, floor: tuple[float, float], band: float = FLOOR_BAND) -> pd.DataFrame:
    """Per sampler of ``curves`` (concatenated :meth:`SamplerRun.tv_curve` frames): the TV halfway
    and at the end, the first step at the floor (:func:`steps_to_level` at :func:`floor_level`)
    and a verdict by rule: ``"reaches the floor"``; else ``"still falling"`` when its TV fell over
    the second half of the run by more than the floor's band (``band`` stds); else ``"stuck above
    the floor"``, a chain that has stopped changing at a density other than the exact one."""
    level, width = floor_level(floor, band), band * floor[1]
    rows = []
    for name, curve in curves.groupby("sampler", sort=False):
        steps, tv = curve.step.to_numpy(), curve.tv.to_numpy()
        mid = float(tv[np.searchsorted(steps, steps[-1] / 2)])
        reached = steps_to_level(curve, level)
        verdict = (
            "reaches the floor"
            if reached is not None
            else "still falling"
            if mid - tv[-1] > width
            else "stuck above the floor"
        )
        rows.append(
            {"sampler": name, "tv_halfway": mid, "tv_end": float(tv[-1]), "step_at_floor": reached, "verdict": verdict}
        )
    return pd.DataFrame(rows).astype({"step_at_floor": "Int64"})


def density_tv(p: torch.Tensor, q: torch.Tensor) -> float:
    """TV distance between two densities on the same grid."""
    return float(0.5 * (p - q).abs().sum())


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) between two grid densities (in nats)."""
    mask = p > 0
    return float((p[mask] * (p[mask].log() - q[mask].clamp_min(1e-300).log())).sum())


# ==== samplers ==============================================================================
@dataclass
class SamplerRun:
    """Result of a batch of MCMC chains: final states, recorded states (T, N, 2) every
    ``record_every`` steps (step 0 included) and the mean acceptance rate (1 without MH test)."""

    samples: torch.Tensor
    chain: torch.Tensor
    record_every: int
    acceptance: float = 1.0
    seconds: float = float("nan")

    def tv_curve(self, density: torch.Tensor, grid: Grid, name: str) -> pd.DataFrame:
        """TV distance to the exact density after each recorded number of steps."""
        rows = [
            {"sampler": name, "step": t * self.record_every, "tv": total_variation(x, density, grid)}
            for t, x in enumerate(self.chain)
        ]
        return pd.DataFrame(rows)


def metropolis_hastings(
    energy: nn.Module,
    x0: torch.Tensor,
    steps: int,
    proposal_std: float,
    record_every: int = RECORD_EVERY,
    progress: bool = False,
) -> SamplerRun:
    """Random-walk Metropolis-Hastings: propose x' = x + N(0, s^2), accept with min(1, e^{E(x) - E(x')})."""
    x = x0.detach().clone()
    chain, accepted = [x.clone()], torch.zeros(())
    with torch.no_grad():
        e = energy(x)
        for step in tqdm(range(steps), desc="MH", leave=False, disable=not progress):
            y = x + proposal_std * torch.randn_like(x)
            e_y = energy(y)
            accept = torch.rand_like(e).log() < e - e_y
            x = torch.where(accept[:, None], y, x)
            e = torch.where(accept, e_y, e)
            accepted += accept.float().mean()
            if (step + 1) % record_every == 0:
                chain.append(x.clone())
    return SamplerRun(x, torch.stack(chain), record_every, float(accepted) / max(steps, 1))


def mala(
    energy: nn.Module,
    x0: torch.Tensor,
    steps: int,
    step_size: float,
    record_every: int = RECORD_EVERY,
    progress: bool = False,
) -> SamplerRun:
    """Metropolis-adjusted Langevin: the Langevin proposal x' = x - eps dE/dx + sqrt(2 eps) xi,
    accepted by the MH test with the asymmetric proposal density, so the chain is exact."""
    x = x0.detach().clone()
    chain, accepted = [x.clone()], torch.zeros(())

    def log_q(to: torch.Tensor, frm: torch.Tensor, g_frm: torch.Tensor) -> torch.Tensor:
        return -(to - frm + step_size * g_frm).pow(2).sum(1) / (4 * step_size)

    with frozen(energy):
        e, g = energy_grad(energy, x)
        for step in tqdm(range(steps), desc="MALA", leave=False, disable=not progress):
            y = x - step_size * g + math.sqrt(2 * step_size) * torch.randn_like(x)
            e_y, g_y = energy_grad(energy, y)
            log_alpha = e - e_y + log_q(x, y, g_y) - log_q(y, x, g)
            accept = torch.rand_like(e).log() < log_alpha
            x = torch.where(accept[:, None], y, x)
            e = torch.where(accept, e_y, e)
            g = torch.where(accept[:, None], g_y, g)
            accepted += accept.float().mean()
            if (step + 1) % record_every == 0:
                chain.append(x.clone())
    return SamplerRun(x.detach(), torch.stack(chain).detach(), record_every, float(accepted) / max(steps, 1))


def langevin_config(
    steps: int, step_size: float, temperature: float = 1.0, clamp_range: tuple[float, float] | None = None
) -> SGLDConfig:
    """An :class:`SGLDConfig` for which the package's SGLD is the unadjusted Langevin algorithm
    at ``temperature``: noise std sqrt(2 eps T) and a gradient clamp that never binds.

    For small eps the chain samples exp(-E / T) with T = noise_std^2 / (2 step_size); the paper's
    recipe (eps = 10, noise 0.005, i.e. T ~ 1e-6) is therefore a near-zero-temperature sampler.
    """
    return SGLDConfig(steps, step_size, math.sqrt(2 * step_size * temperature), NO_GRAD_CLAMP, clamp_range)


def langevin(
    energy: nn.Module,
    x0: torch.Tensor,
    steps: int,
    step_size: float,
    record_every: int = RECORD_EVERY,
    clamp_range: tuple[float, float] | None = None,
) -> SamplerRun:
    """Unadjusted Langevin (ULA) run by the package's :func:`~ebmhelpers.sampling.sgld`; no MH
    test, so its samples carry an O(eps) discretization bias."""
    x, chain = sgld(energy, x0, langevin_config(steps, step_size, clamp_range=clamp_range), record_every=record_every)
    return SamplerRun(x, chain, record_every)


def sampler_suite(energy: nn.Module, x0: torch.Tensor, steps: int = SAMPLER_STEPS) -> dict[str, SamplerRun]:
    """The samplers compared in notebook 00, all from the same starts ``x0``: random-walk MH,
    ULA (the package's SGLD) and MALA at ``LANGEVIN_STEP``, and ULA and MALA at the larger
    ``LANGEVIN_BIG_STEP``. Each run is timed (wall clock, in ``seconds``)."""
    suite = {
        f"MH (proposal std {MH_PROPOSAL_STD:g})": lambda: metropolis_hastings(energy, x0, steps, MH_PROPOSAL_STD),
        f"ULA / SGLD (eps {LANGEVIN_STEP:g})": lambda: langevin(energy, x0, steps, LANGEVIN_STEP),
        f"MALA (eps {LANGEVIN_STEP:g})": lambda: mala(energy, x0, steps, LANGEVIN_STEP),
        f"ULA / SGLD (eps {LANGEVIN_BIG_STEP:g})": lambda: langevin(energy, x0, steps, LANGEVIN_BIG_STEP),
        f"MALA (eps {LANGEVIN_BIG_STEP:g})": lambda: mala(energy, x0, steps, LANGEVIN_BIG_STEP),
    }
    runs = {}
    for name, run in tqdm(suite.items(), desc="samplers", leave=False):
        start = time.perf_counter()
        runs[name] = run()
        runs[name].seconds = time.perf_counter() - start
    return runs


def uniform_box(n: int, lim: float = BOX) -> torch.Tensor:
    """``n`` chain starts uniform in the box, the replay buffer's noise."""
    return (torch.rand(n, 2) * 2 - 1) * lim


# ==== training: persistent vs plain contrastive divergence ==================================
def toy_updates() -> int:
    """Parameter updates of every toy training run (the PCD trainer's epochs x batches)."""
    return TOY_EPOCHS * math.ceil(N_DATA / TOY_BATCH)


def toy_profile(base: Profile, sgld_steps: int = TOY_SGLD_STEPS[-1]) -> Profile:
    """``base`` with the toy's training settings: ``sgld_steps`` Langevin steps per update (noise
    sqrt(2 eps), no gradient clamp), a small buffer of the paper's kind (written back in place,
    ``TOY_REINIT_FRAC`` fresh chains) and a small batch, Adam without decay, no speed-ups or weight
    averages. Every setting the toy's training reads is set here, so it is the same whatever
    ``base`` is; the name and seed stay those of ``base``."""
    return base.replace(
        batch_size=TOY_BATCH,
        epochs=TOY_EPOCHS,
        max_iters_per_epoch=None,
        buffer_size=TOY_BUFFER,
        reinit_frac=TOY_REINIT_FRAC,
        buffer_max_age=None,
        buffer_grows=False,
        data_noise_std=TOY_DATA_NOISE_STD,
        sgld_steps=sgld_steps,
        sgld_step_size=TOY_SGLD_STEP,
        sgld_noise_std=math.sqrt(2 * TOY_SGLD_STEP),
        sgld_grad_clamp=NO_GRAD_CLAMP,
        lr=TOY_LR,
        betas=TOY_BETAS,
        lr_gamma=1.0,
        alpha=TOY_ALPHA,
        grad_clip=1.0,
        ckpt_every=math.ceil(N_DATA / TOY_BATCH),
        amp_dtype=None,
        channels_last=False,
        compile=False,
        ema_decays=(),
        snapshot_epochs=(),
    )


class DataStarts:
    """A stand-in for the replay buffer that makes the trainer run CD-K: every negative chain
    starts at the current batch of data (primed by :class:`CDTrainer`) and nothing persists.
    ``samples`` holds the last negatives, for plots."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        self.samples = torch.zeros((0, *shape), device=device)
        self._starts: torch.Tensor | None = None

    def prime(self, x: torch.Tensor) -> None:
        self._starts = x.detach().clone()

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._starts is None or len(self._starts) != n:
            raise RuntimeError("DataStarts.sample() needs prime() with a batch of the same size first")
        starts, self._starts = self._starts, None
        return starts, torch.zeros(n, dtype=torch.bool, device=starts.device)

    def update(self, x: torch.Tensor) -> None:
        self.samples = x.detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"samples": self.samples}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.samples = state["samples"].to(self.samples.device)


class CDTrainer(PCDTrainer):
    """Contrastive divergence CD-K (Hinton, 2002) with the package's trainer: the K SGLD steps
    start at the (clean) data batch itself instead of the replay buffer. Everything else (loss,
    optimizer, checkpoints, divergence guard) is :class:`~ebmhelpers.training.PCDTrainer`'s."""

    def __init__(self, model: nn.Module, profile: Profile, data: torch.Tensor, **kwargs) -> None:
        if "buffer" in kwargs:
            raise ValueError("CD-K has no replay buffer: its chains start at the data")
        device = kwargs.get("device") or data.device
        super().__init__(model, profile, data, buffer=DataStarts(tuple(data.shape[1:]), device), **kwargs)

    def train_step(self, x_real: torch.Tensor) -> torch.Tensor:
        self.buffer.prime(x_real)
        return super().train_step(x_real)


def train_toy(
    method: str, data: torch.Tensor, profile: Profile, sgld_steps: int = TOY_SGLD_STEPS[-1], progress: bool = True
) -> PCDTrainer:
    """Train a fresh :class:`MLPEnergy` (seeded by ``profile.seed``) on 2-D ``data`` with
    ``"pcd"`` (replay buffer) or ``"cd"`` (chains from the data), in memory (no checkpoint file)."""
    if method not in ("pcd", "cd"):
        raise ValueError(f"method must be 'pcd' or 'cd', got {method!r}")
    torch.manual_seed(profile.seed)
    trainer_cls = PCDTrainer if method == "pcd" else CDTrainer
    trainer = trainer_cls(MLPEnergy(), toy_profile(profile, sgld_steps), data)
    trainer.fit(progress=progress)
    trainer.model.eval()
    return trainer


def _fit(
    params: list[nn.Parameter],
    loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    data: torch.Tensor,
    steps: int,
    seed: int,
    desc: str,
    progress: bool,
) -> pd.DataFrame:
    """Adam (the toy's lr and betas) on ``loss_fn(batch, generator)`` for ``steps`` random batches."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=TOY_LR, betas=TOY_BETAS)
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        loss = loss_fn(data[torch.randint(len(data), (TOY_BATCH,), generator=gen)], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return pd.DataFrame({"step": range(steps), "loss": torch.stack(losses).tolist()})


def fit_exact_mle(
    model: nn.Module, data: torch.Tensor, steps: int, grid: Grid | None = None, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Maximum likelihood with the exact gradient (eq. 3, expectation by quadrature on ``grid``):
    the reference that CD and PCD approximate with samples. Returns the NLL per step."""
    grid = grid or Grid(n=MLE_GRID_SIZE)

    def nll(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        return -exact_log_likelihood(model, x, grid)

    return _fit(list(model.parameters()), nll, data, steps, seed, "exact MLE", progress)


# ==== an MCMC-free alternative: noise-contrastive estimation =================================
class NCEModel(nn.Module):
    """An energy plus a learned log-normalizer c: log p(x) = -E(x) - c. NCE fits c too, so at
    the optimum c is the model's log Z (checkable here by quadrature)."""

    def __init__(self, energy: nn.Module) -> None:
        super().__init__()
        self.energy = energy
        self.log_z = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)


def nce_loss(model: NCEModel, x_data: torch.Tensor, x_noise: torch.Tensor, lim: float = BOX) -> torch.Tensor:
    """Logistic loss of telling data from ``nu = len(x_noise) / len(x_data)`` times as many
    uniform-box noise samples, logit G(x) = log p(x) - log(nu q(x)) (Gutmann & Hyvarinen, 2010).
    Its minimizer is the data density, normalizer included; no sampling from the model."""
    nu = len(x_noise) / len(x_data)
    log_nu_q = math.log(nu) - 2 * math.log(2 * lim)
    g_data = -model.energy(x_data) - model.log_z - log_nu_q
    g_noise = -model.energy(x_noise) - model.log_z - log_nu_q
    return nn.functional.softplus(-g_data).mean() + nu * nn.functional.softplus(g_noise).mean()


def fit_nce(
    model: NCEModel,
    data: torch.Tensor,
    steps: int,
    noise_ratio: int = NCE_NOISE_RATIO,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Fit ``model`` by NCE against uniform noise on the box; returns the loss per step."""
    if data.ndim != 2 or data.shape[1] != 2 or data.abs().max() > BOX:
        raise ValueError("NCE here needs (N, 2) data inside the box [-BOX, BOX]^2 (the noise support)")

    def loss(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = (torch.rand(len(x) * noise_ratio, 2, generator=gen, dtype=x.dtype) * 2 - 1) * BOX
        return nce_loss(model, x, noise)

    return _fit(list(model.parameters()), loss, data, steps, seed, "NCE", progress)


# ==== scoring a learned energy against the target ===========================================
def light_mode_share(x: torch.Tensor, target: GaussianMixtureEnergy) -> float:
    """Fraction of the points ``x`` nearest to one of the target's light (lower-weight) modes."""
    nearest = torch.cdist(x.to(target.means.dtype), target.means).argmin(1)
    light = target.log_w < target.log_w.max()
    return float(light[nearest].float().mean())


def mode_masses(density: torch.Tensor, grid: Grid, means: torch.Tensor) -> torch.Tensor:
    """Probability mass of each mode's region (the grid cells nearest to that mode's mean)."""
    nearest = torch.cdist(grid.points, means.to(grid.points.dtype)).argmin(1)
    return torch.bincount(nearest, weights=density.reshape(-1), minlength=len(means))


# notebook 00's table of density fits (saved as toy_density_fits): density_report's scores of each method, with
# the divergence guard's rollbacks of its training and its wall seconds
DENSITY_FIT_COLUMNS = ("method", "rollbacks", "tv", "kl", "test_nll", "light_mode_mass", "seconds")


@torch.no_grad()
def density_report(
    name: str, energy: nn.Module, target: GaussianMixtureEnergy, grid: Grid, test: torch.Tensor
) -> dict[str, float | str]:
    """Exact scores of a learned energy: TV and KL(target || model) on the grid, test NLL with
    the quadrature log Z, and the mass the model gives the target's light modes."""
    dtype = next(iter(energy.parameters()), torch.empty((), dtype=torch.float64)).dtype
    p_target, p_model = grid_density(target, grid), grid_density(energy, grid)
    light = target.log_w < target.log_w.max()
    return {
        "method": name,
        "tv": density_tv(p_target, p_model),
        "kl": kl_divergence(p_target, p_model),
        "test_nll": float(-exact_log_likelihood(energy, test.to(dtype), grid)),
        "light_mode_mass": float(mode_masses(p_model, grid, target.means)[light].sum()),
    }


# ==== plots =================================================================================
def plot_density(ax: plt.Axes, density: torch.Tensor, grid: Grid, title: str | None = None) -> None:
    """The grid density as an image, linear colours (log colours would hide the modes' masses)."""
    ax.imshow(density.cpu().numpy(), origin="lower", extent=grid.extent, cmap="viridis", interpolation="nearest")
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)


def plot_energy(ax: plt.Axes, energy: nn.Module, grid: Grid, title: str | None = None) -> None:
    """E(x) on the grid, shifted to start at 0 and cut at ``ENERGY_PLOT_RANGE`` nats."""
    e = grid_energy(energy, grid).double()
    e = (e - e.min()).clamp(max=ENERGY_PLOT_RANGE)
    im = ax.imshow(e.cpu().numpy(), origin="lower", extent=grid.extent, cmap="magma_r", interpolation="nearest")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)


def plot_samples(
    ax: plt.Axes,
    x: torch.Tensor,
    grid: Grid,
    title: str | None = None,
    n_max: int = 1000,
    density: torch.Tensor | None = None,
) -> None:
    """A scatter of (at most ``n_max``) samples, over the exact density's contours if given."""
    if density is not None:
        levels = np.quantile(density.cpu().numpy(), [0.9, 0.97, 0.995])
        axis = grid.axis.numpy()
        ax.contour(axis, axis, density.cpu().numpy(), levels=np.unique(levels), colors="0.6", linewidths=0.6)
    pts = x[:n_max].detach().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color="C3")
    ax.set(xlim=(-grid.lim, grid.lim), ylim=(-grid.lim, grid.lim), xticks=[], yticks=[], aspect="equal")
    ax.set_title(title, fontsize=9)


def sgld_panel(
    ax: plt.Axes,
    energy: nn.Module,
    density: torch.Tensor,
    grid: Grid,
    step_size: float,
    noise_std: float,
    steps: int = EXPLORE_STEPS,
    n: int = EXPLORE_CHAINS,
    seed: int = 0,
) -> tuple[float, torch.Tensor]:
    """Run the package's SGLD (no gradient clamp, samples clamped to the box) from uniform noise
    with the given step size and noise, draw the samples and return their TV to the exact density
    and the samples."""
    torch.manual_seed(seed)
    cfg = SGLDConfig(steps, step_size, noise_std, NO_GRAD_CLAMP, (-grid.lim, grid.lim))
    x = sgld(energy, uniform_box(n, grid.lim), cfg)
    tv = total_variation(x, density, grid)
    plot_samples(ax, x, grid, density=density, n_max=n)
    ax.set_title(f"eps={step_size:g}, noise={noise_std:g}\nT={cfg.temperature:.3g}, TV={tv:.2f}", fontsize=8)
    return tv, x


def sgld_grid_figure(
    energy: nn.Module,
    density: torch.Tensor,
    grid: Grid,
    step_sizes: Sequence[float] = EXPLORE_STEP_SIZES,
    noise_stds: Sequence[float] = EXPLORE_NOISE_STDS,
    title: str | None = None,
) -> tuple[plt.Figure, pd.DataFrame]:
    """:func:`sgld_panel` for every (step size, noise) pair: rows = step size, columns = noise.
    Returns the figure and a table of temperature, TV and (for a mixture ``energy``) the share of
    samples in the light modes' regions, per pair."""
    size = (2.4 * len(noise_stds), 2.6 * len(step_sizes))
    fig, axes = plt.subplots(len(step_sizes), len(noise_stds), figsize=size, squeeze=False)
    rows = []
    for i, eps in enumerate(step_sizes):
        for j, sigma in enumerate(noise_stds):
            tv, x = sgld_panel(axes[i, j], energy, density, grid, eps, sigma)
            rows.append(
                {
                    "step_size": eps,
                    "noise_std": sigma,
                    "temperature": SGLDConfig(1, eps, sigma, NO_GRAD_CLAMP).temperature,
                    "tv": tv,
                    "light_share": light_mode_share(x, energy)
                    if isinstance(energy, GaussianMixtureEnergy)
                    else math.nan,
                }
            )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig, pd.DataFrame(rows)
