import math

import pandas as pd
import pytest
import torch

from ebmhelpers import toy
from ebmhelpers.profiles import get_profile
from ebmhelpers.training import PCDTrainer

MEAN, STD = (0.3, -0.2), (0.2, 0.15)


def gaussian() -> toy.GaussianEnergy:
    return toy.GaussianEnergy(MEAN, STD)


def test_quadrature_partition_function_matches_analytic():
    wide = toy.Grid(lim=2.0, n=200)
    for energy in (gaussian().double(), toy.eight_gaussians(), toy.RingEnergy()):
        assert toy.log_partition(energy, wide).item() == pytest.approx(energy.log_partition(), abs=1e-6)
    # unnormalized on purpose: Z of the Gaussian energy is 2 pi s1 s2, not 1
    assert gaussian().log_partition() == pytest.approx(math.log(2 * math.pi * STD[0] * STD[1]))
    density = toy.grid_density(toy.eight_gaussians(), toy.Grid())
    assert density.shape == (toy.GRID_SIZE, toy.GRID_SIZE)
    assert float(density.sum()) == pytest.approx(1.0)


def test_grid_orientation_and_mode_masses():
    grid, target = toy.Grid(), toy.eight_gaussians()
    # density[i, j] sits at (x = axis[j], y = axis[i]): the peak of N((0.3, -0.2), ...)
    i, j = divmod(int(toy.grid_density(gaussian(), grid).argmax()), grid.n)
    assert grid.axis[j] == pytest.approx(MEAN[0], abs=grid.h)
    assert grid.axis[i] == pytest.approx(MEAN[1], abs=grid.h)
    density = toy.grid_density(target, grid)
    masses = toy.mode_masses(density, grid, target.means)
    # region masses = weights up to the tails that cross into a neighbour's region
    assert torch.allclose(masses, target.log_w.exp().double(), atol=5e-3)
    assert masses.sum() == pytest.approx(1.0)


def test_total_variation_of_exact_and_wrong_samples():
    grid, target = toy.Grid(), toy.eight_gaussians()
    density = toy.grid_density(target, grid)
    torch.manual_seed(0)
    assert toy.total_variation(toy.sample_exact(density, grid, 50_000), density, grid) < 0.05
    assert toy.total_variation(target.sample(50_000), density, grid) < 0.05
    assert toy.total_variation(toy.uniform_box(50_000), density, grid) > 0.5
    # samples outside the box count as wrong mass
    assert toy.total_variation(torch.full((100, 2), 5.0), density, grid) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiple"):
        toy.bin_masses(density, grid, bins=7)


def test_tv_floor_shrinks_with_more_samples_and_verdicts_follow_their_rules():
    grid, target = toy.Grid(), toy.eight_gaussians()
    density = toy.grid_density(target, grid)
    small, large = toy.exact_tv_floor(density, grid, 500), toy.exact_tv_floor(density, grid, 8000)
    assert 0 < large[0] < small[0] and small[1] > 0  # sampling noise alone: falls with n
    floor = (0.2, 0.01)  # level 0.22, band width 0.02
    assert toy.floor_level(floor) == pytest.approx(0.22)
    steps = [0, 100, 200, 300, 400]
    curves = pd.concat(
        [
            pd.DataFrame({"sampler": name, "step": steps, "tv": tv})
            for name, tv in {
                "fast": [0.9, 0.5, 0.21, 0.23, 0.2],
                "slow": [0.9, 0.7, 0.5, 0.4, 0.3],
                "biased": [0.9, 0.4, 0.35, 0.34, 0.35],
            }.items()
        ]
    )
    table = toy.convergence_table(curves, floor).set_index("sampler")
    assert table.step_at_floor["fast"] == 200 and pd.isna(table.step_at_floor["slow"])
    assert table.verdict.to_dict() == {
        "fast": "reaches the floor",
        "slow": "still falling",
        "biased": "stuck above the floor",
    }
    assert table.tv_halfway["slow"] == 0.5 and table.tv_end["biased"] == 0.35


def test_toy_training_settings_do_not_depend_on_the_profile():
    from ebmhelpers.profiles import PROFILES

    fields = (
        "seed",
        "batch_size",
        "epochs",
        "max_iters_per_epoch",
        "buffer_size",
        "reinit_frac",
        "buffer_max_age",
        "buffer_grows",
        "data_noise_std",
        "sgld_steps",
        "sgld_step_size",
        "sgld_noise_std",
        "sgld_grad_clamp",
        "lr",
        "betas",
        "lr_gamma",
        "alpha",
        "grad_clip",
        "ckpt_every",
        "amp_dtype",
        "channels_last",
        "compile",
        "ema_decays",
        "snapshot_epochs",
        "max_abs_energy",
        "max_energy_gap",
        "rollback_lr_factor",
        "max_rollbacks",
    )
    settings = {tuple(getattr(toy.toy_profile(p), f) for f in fields) for p in PROFILES.values()}
    assert len(settings) == 1 and toy.toy_profile(PROFILES["cpu"]).reinit_frac == toy.TOY_REINIT_FRAC


def test_light_mode_share_counts_points_by_their_nearest_mode():
    target = toy.eight_gaussians()
    light = target.log_w < target.log_w.max()
    assert toy.light_mode_share(target.means[light], target) == 1.0
    assert toy.light_mode_share(target.means[~light], target) == 0.0
    torch.manual_seed(0)
    assert toy.light_mode_share(target.sample(20_000), target) == pytest.approx(
        0.25, abs=0.02
    )  # weights 1:3, plus tails


@pytest.mark.parametrize("sampler", ["mh", "mala", "ula"])
def test_samplers_reproduce_gaussian_mean_and_variance(sampler):
    torch.manual_seed(0)
    energy = gaussian()
    x0 = toy.uniform_box(2000)
    if sampler == "mh":
        run = toy.metropolis_hastings(energy, x0, 400, proposal_std=0.2)
        assert 0.1 < run.acceptance < 0.9
    elif sampler == "mala":
        run = toy.mala(energy, x0, 300, step_size=4e-3)
        assert 0.5 < run.acceptance < 1.0
    else:
        run = toy.langevin(energy, x0, 1000, step_size=2e-4)
        assert run.acceptance == 1.0
    x = run.samples
    assert run.chain.shape == (len(run.chain), 2000, 2) and torch.equal(run.chain[0], x0)
    assert torch.allclose(x.mean(0), torch.tensor(MEAN), atol=0.015)
    assert torch.allclose(x.var(0), torch.tensor(STD) ** 2, rtol=0.08)


def test_langevin_temperature_scales_the_variance():
    torch.manual_seed(0)
    cfg = toy.langevin_config(1000, 2e-4, temperature=0.25)
    assert cfg.temperature == pytest.approx(0.25)
    x = toy.sgld(gaussian(), toy.uniform_box(3000), cfg)
    assert torch.allclose(x.var(0), 0.25 * torch.tensor(STD) ** 2, rtol=0.1)


def test_ula_bias_grows_with_step_size_while_mala_stays_exact():
    torch.manual_seed(0)
    energy, x0, eps = gaussian(), toy.uniform_box(2000), 0.012  # eps / s^2 ~ 0.5 in the narrow axis
    ula = toy.langevin(energy, x0, 300, eps).samples.var(0)[1]
    exact = toy.mala(energy, x0, 300, eps).samples.var(0)[1]
    assert exact == pytest.approx(STD[1] ** 2, rel=0.1)
    assert ula < 0.8 * STD[1] ** 2  # the package's SGLD state after its gradient step is too narrow


def test_mle_gradient_matches_finite_differences():
    torch.manual_seed(0)
    grid = toy.Grid(n=60)
    data = toy.eight_gaussians().sample(256).double()
    energy = toy.MLPEnergy(hidden=(4,)).double()
    eq3 = toy.mle_gradient(energy, data, grid)
    fd = toy.finite_difference_gradient(energy, data, grid)
    assert eq3.shape == (sum(p.numel() for p in energy.parameters()),)
    assert torch.allclose(eq3, fd, rtol=1e-5, atol=1e-8)
    # and it is the autograd gradient of the exact negative log-likelihood (the paper's eq. 3)
    energy.zero_grad()
    (-toy.exact_log_likelihood(energy, data, grid)).backward()
    assert torch.allclose(eq3, torch.cat([p.grad.reshape(-1) for p in energy.parameters()]))


def test_mle_gradient_vanishes_at_the_gaussian_mle():
    torch.manual_seed(0)
    data = gaussian().sample(4096).double()
    fitted = toy.GaussianEnergy(data.mean(0).tolist(), data.std(0, unbiased=False).tolist()).double()
    unfit = toy.GaussianEnergy([0.0, 0.0], [0.3, 0.3]).double()
    grid = toy.Grid(lim=2.0, n=200)
    assert toy.mle_gradient(fitted, data, grid).abs().max() < 1e-6
    assert toy.mle_gradient(unfit, data, grid).abs().max() > 0.5
    # the sample estimate with exact model samples approaches the exact gradient
    x_neg = toy.sample_exact(toy.grid_density(unfit, grid), grid, 200_000).double()
    mc = toy.mle_gradient_mc(unfit, data, x_neg)
    exact = toy.mle_gradient(unfit, data, grid)
    assert (mc - exact).norm() < 0.05 * exact.norm()
    # eq. 3 is the loss's gradient: a small step against it raises the exact log-likelihood
    with torch.no_grad():
        before = toy.exact_log_likelihood(unfit, data, grid)
        offset = 0
        for param in unfit.parameters():
            param -= 1e-3 * exact[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
        assert toy.exact_log_likelihood(unfit, data, grid) > before


def test_nce_recovers_gaussian_and_its_normalizer():
    torch.manual_seed(0)
    data = gaussian().sample(8192)
    data = data[(data.abs() <= toy.BOX).all(1)]  # the noise lives in the box
    model = toy.NCEModel(toy.GaussianEnergy([0.0, 0.0], [0.5, 0.5]))
    history = toy.fit_nce(model, data, steps=800, progress=False)
    assert history.loss.tail(100).mean() < history.loss.head(100).mean() - 0.2
    energy = model.energy
    assert torch.allclose(energy.mean.detach(), torch.tensor(MEAN), atol=0.03)
    assert torch.allclose(energy.log_std.exp().detach(), torch.tensor(STD), rtol=0.1)
    assert model.log_z.item() == pytest.approx(energy.log_partition(), abs=0.1)
    with pytest.raises(ValueError, match="box"):
        toy.fit_nce(model, data * 10, steps=1, progress=False)


def test_cd_trainer_starts_chains_at_the_data_and_pcd_at_the_buffer():
    torch.manual_seed(0)
    data = toy.eight_gaussians().sample(256)
    profile = toy.toy_profile(get_profile("smoke"), sgld_steps=0).replace(data_noise_std=0.0)
    batch = data[: profile.batch_size]
    cd = toy.CDTrainer(toy.MLPEnergy(), profile, data)
    cd.train_step(batch)
    assert torch.equal(cd.buffer.samples, batch)  # zero SGLD steps: negatives = the data batch
    pcd = PCDTrainer(toy.MLPEnergy(), profile, data)
    pcd.train_step(batch)
    # PCD's negatives came from the buffer (uniform noise), not from the data
    assert not any(torch.equal(row, b) for row in pcd.buffer.samples for b in batch[:4])
    with pytest.raises(ValueError, match="buffer"):
        toy.CDTrainer(toy.MLPEnergy(), profile, data, buffer=pcd.buffer)
    with pytest.raises(RuntimeError, match="prime"):
        toy.DataStarts((2,)).sample(4)


def test_cd_training_short_run_is_finite():
    torch.manual_seed(0)
    data = toy.eight_gaussians().sample(512)
    profile = toy.toy_profile(get_profile("smoke"), sgld_steps=2).replace(epochs=2)
    trainer = toy.CDTrainer(toy.MLPEnergy(), profile, data)
    history = trainer.fit(progress=False)
    assert len(history) == 2 * math.ceil(512 / toy.TOY_BATCH)
    assert torch.isfinite(torch.tensor(history[["loss", "e_real", "e_fake"]].values)).all()
    assert trainer.buffer.samples.shape == (toy.TOY_BATCH, 2)
    with pytest.raises(ValueError, match="method"):
        toy.train_toy("mcmc", data, profile)


def test_mlp_energy_interface():
    model = toy.MLPEnergy(hidden=(8,))
    x = torch.randn(5, 2)
    assert model.logits(x).shape == (5, 1)
    assert torch.equal(model(x), model.logits(x).mean(1))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        model(torch.randn(5, 3))


def test_committed_density_fits_load_with_their_declaration(committed_cpu_table):
    table = committed_cpu_table("toy_density_fits", toy.DENSITY_FIT_COLUMNS)
    assert {"target", "exact MLE", "NCE"} <= set(table.method)
