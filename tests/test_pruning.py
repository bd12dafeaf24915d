"""Pruning: achieved sparsity, which layers each strategy touches, whole-channel zeros, and
physical removal that keeps the energies while dropping parameters."""

import pytest
import torch
from torch import nn

from ebmhelpers import pruning
from ebmhelpers.models import ResNetEnergy, count_parameters
from ebmhelpers.profiles import get_profile
from ebmhelpers.runtime import Context


def small_resnet() -> ResNetEnergy:
    """Three stages (identity and 1x1 shortcuts), 77k weights: big enough that one channel is
    well under a percentage point of all weights."""
    torch.manual_seed(0)
    return ResNetEnergy(blocks=(1, 1, 1), widths=(16, 32, 64))


def conv_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("key", sorted(pruning.STRATEGIES))
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_achieved_sparsity_matches_ratio(key, ratio):
    model = pruning.apply_pruning(small_resnet(), key, ratio)
    assert abs(pruning.sparsity(model) - ratio) < 0.01


def test_global_unstructured_ranks_layers_together():
    """Global pruning takes more from layers with small weights than from others."""
    model = small_resnet()
    with torch.no_grad():
        model.layers[1].conv2.weight.mul_(0.01)  # 12% of the weights, all tiny
    pruning.apply_pruning(model, "unstructured_global", 0.3)
    table = pruning.layer_table(model).set_index("layer")
    assert table.loc["block1.conv2", "sparsity"] == 1.0
    assert table.drop("block1.conv2").sparsity.max() < 0.3


@pytest.mark.parametrize("key", ["unstructured_conv", "structured_conv"])
def test_conv_only_leaves_linear_dense_and_prunes_every_conv(key):
    model = pruning.apply_pruning(small_resnet(), key, 0.6)
    assert not hasattr(model.fc, "weight_mask")
    assert (model.fc.weight != 0).all()
    for conv in conv_layers(model):
        assert abs(float((pruning.effective_weight(conv) == 0).float().mean()) - 0.6) < 0.07


@pytest.mark.parametrize("key", ["structured_global", "structured_conv"])
def test_structured_pruning_zeros_whole_output_channels(key):
    model = pruning.apply_pruning(small_resnet(), key, 0.5)
    n_zero_channels = 0
    for conv in conv_layers(model):
        w = pruning.effective_weight(conv).flatten(1)
        zeros_per_channel = (w == 0).sum(1)
        assert set(zeros_per_channel.tolist()) <= {0, w.shape[1]}  # a channel goes whole or not at all
        dead = zeros_per_channel == w.shape[1]
        assert (pruning.effective_weight(conv, "bias")[dead] == 0).all()
        assert dead.sum() < len(dead)  # no layer loses every channel
        n_zero_channels += int(dead.sum())
    assert n_zero_channels > 0


def test_masks_act_in_the_forward_pass(mnist_test):
    x = mnist_test[0][:32]
    dense = small_resnet()
    masked = pruning.apply_pruning(pruning.copy_model(dense), "structured_conv", 0.5)
    baked = pruning.remove_masks(pruning.copy_model(masked))
    with torch.no_grad():
        assert not torch.allclose(dense(x), masked(x))
        torch.testing.assert_close(masked(x), baked(x))
    assert not pruning.is_masked(baked) and pruning.sparsity(baked) == pruning.sparsity(masked)


@pytest.mark.parametrize("key", ["structured_global", "structured_conv"])
def test_physically_pruned_model_has_same_energies_and_fewer_parameters(key, mnist_test):
    x = mnist_test[0][:64]
    masked = pruning.apply_pruning(small_resnet(), key, 0.5)
    phys = pruning.physically_prune(masked)
    assert not pruning.is_masked(phys)
    assert count_parameters(phys) < 0.7 * count_parameters(masked)
    with torch.no_grad():
        e_masked, e_phys = masked(x), phys(x)
    torch.testing.assert_close(e_phys, e_masked, atol=1e-5, rtol=1e-5)
    assert pruning.is_masked(masked)  # the original is left as it was


def test_physical_removal_cuts_a_residual_channel_only_when_all_producers_are_zero(mnist_test):
    model = small_resnet()
    with torch.no_grad():  # stage-0 stream channel 3 is produced by the stem and block0.conv2
        for conv in (model.stem, model.layers[0].conv2):
            conv.weight[3] = 0
            conv.bias[3] = 0
        model.layers[1].conv2.weight[5] = 0  # stage-1 channel 5 also comes from the shortcut
        model.layers[1].conv2.bias[5] = 0
    phys = pruning.physically_prune(model)
    assert phys.stem.out_channels == 15 and phys.layers[1].conv1.in_channels == 15
    assert phys.layers[1].conv2.out_channels == 32
    with torch.no_grad():
        torch.testing.assert_close(phys(mnist_test[0][:32]), model(mnist_test[0][:32]), atol=1e-5, rtol=1e-5)


def test_rewind_loads_early_weights_under_the_masks():
    model = pruning.apply_pruning(small_resnet(), "unstructured_conv", 0.5)
    torch.manual_seed(1)
    early = ResNetEnergy(blocks=(1, 1, 1), widths=(16, 32, 64)).state_dict()
    pruning.rewind(model, early)
    conv = model.layers[1].conv1
    torch.testing.assert_close(conv.weight_orig, early["layers.1.conv1.weight"])
    torch.testing.assert_close(pruning.effective_weight(conv), early["layers.1.conv1.weight"] * conv.weight_mask)
    torch.testing.assert_close(model.fc.weight, early["fc.weight"])


def test_finetuning_keeps_masks_and_resumes_from_checkpoint(tmp_path, monkeypatch, mnist_test):
    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path))
    profile = get_profile("smoke").replace(
        batch_size=8, sgld_steps=2, buffer_size=32, finetune_epochs=1, finetune_iters=3, ckpt_every=2
    )
    ctx = Context(profile, torch.device("cpu"))
    torch.manual_seed(0)
    model = pruning.apply_pruning(ResNetEnergy(blocks=(1, 1), widths=(8, 16)), "structured_conv", 0.5)
    before = pruning.sparsity(model)
    weights_before = model.layers[1].conv2.weight_orig.detach().clone()
    buffer = pruning.ReplayBuffer(32, (1, 28, 28), 0.05)
    data = mnist_test[0][:64]
    trainer, diverged = pruning.finetune(ctx, model, data, buffer, "ft_test", progress=False)
    assert not diverged and trainer.step == 3 and trainer.done
    assert not torch.equal(model.layers[1].conv2.weight_orig, weights_before)  # it trained
    assert pruning.sparsity(model) == before  # ... through the masks
    again, _ = pruning.finetune(ctx, pruning.apply_pruning(ResNetEnergy((1, 1), (8, 16)), "structured_conv", 0.5),
                                data, buffer, "ft_test", progress=False)  # fmt: skip
    torch.testing.assert_close(again.model.layers[1].conv2.weight_orig, model.layers[1].conv2.weight_orig)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        pruning.apply_pruning(small_resnet(), "random", 0.5)
    with pytest.raises(ValueError, match="ratio"):
        pruning.apply_pruning(small_resnet(), "structured_conv", 1.0)
    masked = pruning.apply_pruning(small_resnet(), "structured_conv", 0.5)
    with pytest.raises(ValueError, match="already"):
        pruning.apply_pruning(masked, "structured_conv", 0.5)


def test_finetune_profile_and_rewind_step():
    paper = get_profile("paper")
    ft = pruning.finetune_profile(paper)
    assert ft.epochs == paper.finetune_epochs and ft.max_iters_per_epoch is None
    assert pruning.rewind_step(paper, 60_000) == round(pruning.REWIND_FRACTION * 60 * 469)
    smoke = get_profile("smoke")
    assert pruning.finetune_profile(smoke).max_iters_per_epoch == smoke.finetune_iters
    assert pruning.rewind_step(smoke, 512) >= 1
