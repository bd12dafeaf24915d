import math

import pytest
import torch
from torch import nn

from ebmhelpers.profiles import SGLDConfig
from ebmhelpers.sampling import (
    ReplayBuffer,
    SamplingNotSupportedError,
    batched_energy_grad,
    energy_grad,
    frozen,
    generate,
    sgld,
    sgld_step,
)


class GaussianEnergy(nn.Module):
    """E(x) = ||x - mu||^2 / (2 s^2): exp(-E) is N(mu, s^2 I)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu))
        self.s = s

    def forward(self, x):
        return ((x - self.mu) ** 2).sum(1) / (2 * self.s**2)


def test_sgld_reproduces_gaussian_mean_and_variance():
    torch.manual_seed(0)
    model = GaussianEnergy([0.5, -1.0], s=0.7)
    eta = 0.005  # Langevin: noise variance = 2 * step size
    cfg = SGLDConfig(steps=800, step_size=eta, noise_std=(2 * eta) ** 0.5, grad_clamp=1e9, clamp_range=None)
    assert cfg.temperature == pytest.approx(1.0)  # T = 1: samples exp(-E) itself
    x = sgld(model, torch.randn(4000, 2) * 3, cfg)
    assert torch.allclose(x.mean(0), torch.tensor([0.5, -1.0]), atol=0.05)
    assert torch.allclose(x.var(0), torch.full((2,), 0.49), rtol=0.08)
    # and the parameters come back trainable
    assert model.mu.requires_grad


def test_sgld_gradient_clamp_and_range():
    model = GaussianEnergy([5.0, 5.0], s=0.1)  # huge gradients towards (5, 5)
    cfg = SGLDConfig(steps=1, step_size=10.0, noise_std=0.0, grad_clamp=0.03, clamp_range=(-1.0, 1.0))
    x0 = torch.zeros(8, 2)
    x1 = sgld(model, x0, cfg)
    assert torch.allclose(x1, torch.full_like(x0, 0.3))  # moved by step_size * clamp = 0.3
    x10 = sgld(model, x0, SGLDConfig(10, 10.0, 0.0, 0.03, (-1.0, 1.0)))
    assert x10.max() <= 1.0


def test_sgld_records_chain_and_freezes_params():
    model = GaussianEnergy([0.0, 0.0], s=1.0)
    cfg = SGLDConfig(steps=6, step_size=0.01, noise_std=0.1, grad_clamp=1.0, clamp_range=None)
    x, chain = sgld(model, torch.zeros(3, 2), cfg, record_every=2)
    assert chain.shape == (4, 3, 2) and torch.equal(chain[-1], x)
    with frozen(model):
        assert not model.mu.requires_grad
        energy, grad = energy_grad(model, torch.ones(2, 2))
    assert torch.allclose(grad, torch.ones(2, 2)) and model.mu.grad is None


def test_no_input_gradient_is_a_clear_error():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return (x.detach() * self.w).sum(1)

    cfg = SGLDConfig(steps=1, step_size=1.0, noise_std=0.0, grad_clamp=1.0)
    with pytest.raises(SamplingNotSupportedError, match="no gradient with respect to its input"):
        sgld(Detached(), torch.zeros(2, 3), cfg)


def test_buffer_reinit_fraction_and_update():
    torch.manual_seed(0)
    buf = ReplayBuffer(size=500, shape=(1, 4, 4), reinit_frac=0.05)
    buf.samples.fill_(5.0)  # outside U(-1, 1): tells buffer entries from fresh noise
    starts, fresh = buf.sample(20_000)
    assert abs(fresh.float().mean().item() - 0.05) < 0.006
    assert (starts[~fresh] == 5.0).all()
    assert (starts[fresh].abs() <= 1.0).all()
    buf.update(torch.zeros_like(starts))
    assert (buf.samples == 0).float().mean() > 0.99  # 20k draws hit (almost) every slot
    with pytest.raises(RuntimeError):
        buf.update(torch.zeros_like(starts))


def test_generate_batches(tiny_energy):
    cfg = SGLDConfig(steps=2, step_size=10.0, noise_std=0.005, grad_clamp=0.03)
    out = generate(tiny_energy, 7, cfg, batch_size=3, device="cpu", progress=False)
    assert out.shape == (7, 1, 28, 28) and out.abs().max() <= 1.0


def test_batched_energy_grad_matches_one_batch(tiny_energy):
    x = torch.rand(7, 1, 28, 28) * 2 - 1
    with frozen(tiny_energy):
        e_ref, g_ref = energy_grad(tiny_energy, x)
    e, g = batched_energy_grad(tiny_energy, x, batch_size=3)
    assert torch.allclose(e, e_ref, atol=1e-6) and torch.allclose(g, g_ref, atol=1e-6)
    assert tiny_energy.stem.weight.requires_grad  # parameters trainable again afterwards


@pytest.mark.parametrize("clamp_range", [(-1.0, 1.0), None])
def test_sgld_is_a_loop_of_sgld_step_bit_for_bit(tiny_energy, one_thread, clamp_range):
    # the profile's settings: the gradient clamp binds and the range clamp is active
    cfg = SGLDConfig(steps=5, step_size=10.0, noise_std=0.005, grad_clamp=0.03, clamp_range=clamp_range)
    x0 = torch.rand(6, 1, 28, 28) * 2 - 1

    def run(fn):
        torch.manual_seed(1)
        return fn()

    def hand_loop():
        x, noise = x0.clone(), torch.empty_like(x0)
        with frozen(tiny_energy):
            for _ in range(cfg.steps):
                assert sgld_step(tiny_energy, x, cfg, noise) is x  # in place
        return x

    start = x0.clone()
    out = run(lambda: sgld(tiny_energy, x0, cfg))
    assert not torch.equal(out, start) and torch.equal(x0, start)  # moved, and sgld left its input alone
    assert torch.equal(out, run(hand_loop))
    assert not torch.equal(out, run(lambda: sgld(tiny_energy, x0, SGLDConfig(5, 10.0, 0.006, 0.03, clamp_range))))


@pytest.mark.parametrize("clamp_range", [(-1.0, 1.0), None])
def test_sgld_matches_a_hand_computed_chain_on_a_quadratic_energy(clamp_range):
    """On E(x) = ||x - mu||^2 / (2 s^2), dE/dx = (x - mu) / s^2 in closed form. With the noise
    draws replayed from the same seed, each step must be: add the noise, clamp to the range, move
    by -step_size * clamp((y - mu) / s^2, +-grad_clamp) at the *noised* point, clamp again."""
    mu, s = [0.8, -0.9, 0.1], 0.5
    model = GaussianEnergy(mu, s).double()
    # step 0.1, clamp 2: coordinates far from mu (|x - mu| > 0.5) hit the gradient clamp, the others
    # do not; starts near +-1 leave the range after the noise, so the range clamp acts too
    cfg = SGLDConfig(steps=3, step_size=0.1, noise_std=0.2, grad_clamp=2.0, clamp_range=clamp_range)
    x0 = torch.tensor([[0.95, -0.95, 0.0], [-0.95, 0.95, 0.6], [0.3, 0.2, -0.99]], dtype=torch.float64)
    lo, hi = clamp_range or (-math.inf, math.inf)

    torch.manual_seed(7)
    out = sgld(model, x0, cfg)
    torch.manual_seed(7)
    x, mu_t = x0.clone(), model.mu.detach()
    hit_grad_clamp = hit_range = False
    for _ in range(cfg.steps):
        noised = x + torch.empty_like(x).normal_(0.0, cfg.noise_std)
        y = noised.clamp(lo, hi)
        grad = (y - mu_t) / s**2
        hit_grad_clamp |= bool((grad.abs() > cfg.grad_clamp).any())
        hit_range |= bool((noised.abs() > 1).any())
        x = (y - cfg.step_size * grad.clamp(-cfg.grad_clamp, cfg.grad_clamp)).clamp(lo, hi)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    assert hit_grad_clamp and not torch.equal(out, x0)
    if clamp_range is not None:
        assert hit_range and out.abs().max() <= 1.0


def test_sgld_step_moves_each_pixel_by_at_most_step_times_clamp():
    model = GaussianEnergy([5.0, -5.0], s=0.1)  # gradients far beyond the clamp
    cfg = SGLDConfig(steps=1, step_size=10.0, noise_std=0.0, grad_clamp=0.03, clamp_range=(-1.0, 1.0))
    x = torch.zeros(4, 2)
    sgld_step(model, x, cfg, torch.empty_like(x))
    assert torch.allclose(x, torch.tensor([0.3, -0.3]).expand(4, 2))  # downhill, clamped to step * grad_clamp


def test_temperature_of_the_paper_settings():
    assert SGLDConfig(60, step_size=10.0, noise_std=0.005, grad_clamp=0.03).temperature == pytest.approx(1.25e-6)
    assert SGLDConfig(1, step_size=0.0, noise_std=0.1, grad_clamp=1.0).temperature == float("inf")  # noise only
