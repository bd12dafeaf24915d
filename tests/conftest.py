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


@pytest.fixture
def one_thread():
    """Multi-threaded CPU reductions are not bit-reproducible run to run; one thread is."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LEAK_WATCHED = ("EBM_HOME", "EBM_PROFILE", "EBM_CHECKPOINT_DIR", "EBM_RESULTS_DIR", "EBM_FIGURES_DIR")


@pytest.fixture(autouse=True)
def no_leaked_folders():
    """A test that changes where outputs go must undo it (monkeypatch), or every later test writes
    there: the Colab setup-cell test once left EBM_HOME pointing at /content/drive/... ."""
    import os

    before = {k: os.environ.get(k) for k in LEAK_WATCHED}
    yield
    after = {k: os.environ.get(k) for k in LEAK_WATCHED}
    assert after == before, f"the test left the environment changed: {before} -> {after}"
