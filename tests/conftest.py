"""Shared fixtures: small real MNIST slices and tiny energy models."""

import pytest
import torch

from ebmhelpers import data
from ebmhelpers.models import ResNetEnergy


@pytest.fixture(scope="session")
def mnist_test():
    """512 real test digits in [-1, 1] with labels (CPU)."""
    return data.load_dataset("mnist", train=False, subset=512, seed=0)


@pytest.fixture
def tiny_energy():
    torch.manual_seed(0)
    return ResNetEnergy(blocks=(1, 1), widths=(8, 16))
