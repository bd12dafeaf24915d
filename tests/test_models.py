import torch
from torch import nn

from ebmhelpers.models import EnergyModel, MNISTClassifier, ResNetEnergy, Swish, count_parameters, resnet18_energy


def test_energy_is_mean_of_logits():
    torch.manual_seed(0)
    model = resnet18_energy()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.allclose(model(x), model.logits(x).mean(dim=1), atol=1e-6)
    assert model.logits(x).shape == (3, 10)


def test_baseline_is_resnet18_without_batchnorm_or_relu():
    model = resnet18_energy()
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._NormBase) for k in kinds)
    assert not any(issubclass(k, nn.modules.normalization.GroupNorm | nn.LayerNorm) for k in kinds)
    assert nn.ReLU not in kinds and nn.MaxPool2d not in kinds
    assert sum(isinstance(m, Swish) for m in model.modules()) == 1 + 2 * 8  # stem + 2 per block
    assert model.stem.kernel_size == (3, 3) and model.stem.stride == (1, 1)
    # 11.17 M parameters: ResNet18 widths 64/128/256/512, biases instead of BatchNorm
    assert count_parameters(model) == 11_168_010


def test_smaller_resnet_and_interface():
    m = ResNetEnergy(blocks=(1, 1), widths=(8, 16))
    assert isinstance(m, EnergyModel)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2,)
    assert count_parameters(m) < 10_000


def test_classifier_shapes():
    clf = MNISTClassifier().eval()
    x = torch.zeros(4, 1, 28, 28)
    assert clf(x).shape == (4, 10) and clf.features(x).shape == (4, MNISTClassifier.feature_dim)
