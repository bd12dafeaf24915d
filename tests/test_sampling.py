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


def _old_sgld_loop(model, x, cfg):
    """The loop of ``sgld`` as it was before ``sgld_step`` was extracted (reference copy)."""
    x = x.detach().clone()
    lo, hi = cfg.clamp_range if cfg.clamp_range is not None else (None, None)
    noise = torch.empty_like(x)
    with frozen(model):
        for _ in range(cfg.steps):
            x.add_(noise.normal_(0.0, cfg.noise_std))
            if lo is not None:
                x.clamp_(lo, hi)
            _, grad = energy_grad(model, x)
            x.sub_(cfg.step_size * grad.clamp_(-cfg.grad_clamp, cfg.grad_clamp))
            if lo is not None:
                x.clamp_(lo, hi)
    return x


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
    assert torch.equal(out, run(lambda: _old_sgld_loop(tiny_energy, x0, cfg)))
    assert not torch.equal(out, run(lambda: sgld(tiny_energy, x0, SGLDConfig(5, 10.0, 0.006, 0.03, clamp_range))))


def test_sgld_step_moves_each_pixel_by_at_most_step_times_clamp():
    model = GaussianEnergy([5.0, -5.0], s=0.1)  # gradients far beyond the clamp
    cfg = SGLDConfig(steps=1, step_size=10.0, noise_std=0.0, grad_clamp=0.03, clamp_range=(-1.0, 1.0))
    x = torch.zeros(4, 2)
    sgld_step(model, x, cfg, torch.empty_like(x))
    assert torch.allclose(x, torch.tensor([0.3, -0.3]).expand(4, 2))  # downhill, clamped to step * grad_clamp


def test_temperature_of_the_paper_settings():
    assert SGLDConfig(60, step_size=10.0, noise_std=0.005, grad_clamp=0.03).temperature == pytest.approx(1.25e-6)
    assert SGLDConfig(1, step_size=0.0, noise_std=0.1, grad_clamp=1.0).temperature == float("inf")  # noise only
