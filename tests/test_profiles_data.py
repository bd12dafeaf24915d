import pytest
import torch

from ebmhelpers import data, profiles


def test_profiles_and_paper_recipe():
    p = profiles.get_profile("paper")
    assert (p.sgld_steps, p.sgld_step_size, p.sgld_noise_std, p.sgld_grad_clamp) == (60, 10.0, 0.005, 0.03)
    assert (p.buffer_size, p.reinit_frac, p.alpha, p.lr, p.betas) == (8192, 0.05, 0.1, 1e-4, (0.0, 0.999))
    assert (p.lr_gamma, p.grad_clip, p.batch_size, p.epochs, p.gen_steps) == (0.97, 0.1, 128, 60, 256)
    assert p.train_subset is None
    with pytest.raises(Exception):
        p.epochs = 1  # frozen


def test_generation_sampler_keeps_the_training_temperature():
    """gen_step_scale multiplies the step size and the noise by its square root, so T is training's."""
    p = profiles.get_profile("paper").replace(gen_step_scale=4.0)
    train, gen = p.sgld_config(), p.gen_sgld_config()
    assert gen.steps == p.gen_steps and p.gen_sgld_config(7).steps == 7
    assert gen.step_size == pytest.approx(4 * train.step_size)
    assert gen.noise_std == pytest.approx(2 * train.noise_std)
    assert gen.temperature == pytest.approx(train.temperature)
    assert gen.grad_clamp == train.grad_clamp
    assert profiles.get_profile("paper").gen_sgld_config() == p.sgld_config(
        p.gen_steps
    )  # default scale 1: training's sampler
    with pytest.raises(ValueError):
        train.scaled(0.0)


def test_bad_profile_name_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown profile 'nope'.*colab.*paper.*smoke"):
        profiles.get_profile("nope")
    monkeypatch.setenv(profiles.ENV_VAR, "tiny")
    with pytest.raises(ValueError, match="EBM_PROFILE"):
        profiles.get_profile()


def test_env_var_selects_profile(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "paper")
    assert profiles.get_profile().name == "paper"


def test_mnist_range_shape_and_subset(mnist_test):
    x, y = mnist_test
    assert x.shape == (512, 1, 28, 28) and y.shape == (512,)
    assert x.min() == -1.0 and x.max() == 1.0 and x.dtype == torch.float32
    assert set(y.tolist()) == set(range(10))
    x2, _ = data.load_dataset("mnist", train=False, subset=512, seed=0)
    assert torch.equal(x, x2)  # subsets are reproducible


def test_missing_data_offline_names_the_folder(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=str(tmp_path / "MNIST" / "raw")):
        data.load_dataset("mnist", root=tmp_path, download=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("cifar")


def test_to_unit_range_rejects_floats():
    with pytest.raises(TypeError):
        data.to_unit_range(torch.zeros(1, 28, 28))


def test_committed_profile_runs_the_papers_pruning_protocol():
    """§4.4: every ratio 10-90%, fine-tuning for 7 of the baseline's 60 epochs (11.7%) of its iterations."""
    from ebmhelpers import pruning, training

    p = profiles.get_profile(profiles.DEFAULT_PROFILE)
    n_fit = 60_000 - p.val_size
    assert p.prune_ratios == pytest.approx(tuple(r / 10 for r in range(1, 10)))
    share = training.training_iterations(pruning.finetune_profile(p), n_fit) / training.training_iterations(p, n_fit)
    assert share == pytest.approx(7 / 60, abs=0.002)
    assert p.training_seeds >= 3 and set(p.seeded_ratios) == {0.3, 0.6, 0.9}
