"""Shared fixtures: small real MNIST slices, tiny energy models and profiles, the committed tables."""

import pytest
import torch

from ebmhelpers import data, results
from ebmhelpers.models import ResNetEnergy
from ebmhelpers.profiles import get_profile
from ebmhelpers.runtime import Context


@pytest.fixture(scope="session")
def mnist_test():
    """512 real test digits in [-1, 1] with labels (CPU)."""
    return data.load_dataset("mnist", train=False, subset=512, seed=0)


@pytest.fixture
def tiny_energy():
    torch.manual_seed(0)
    return ResNetEnergy(blocks=(1, 1), widths=(8, 16))


@pytest.fixture
def tiny_baseline():
    """The smoke profile with a baseline that trains in a second: tutorial 8's CNN on 64 digits in
    batches of 8 (8 iterations an epoch, one epoch), 2 SGLD steps, 32 chains, a checkpoint every 4
    iterations."""
    return get_profile("smoke").replace(
        baseline="cnn_tutorial8",
        train_subset=64,
        batch_size=8,
        buffer_size=32,
        sgld_steps=2,
        epochs=1,
        max_iters_per_epoch=None,
        ckpt_every=4,
    )


@pytest.fixture
def committed_cpu_table(monkeypatch):
    """``load(name, columns, written)``: the committed ``results/cpu/<name>.csv`` read as the series
    reads it, by :func:`results.load_table` with the columns its readers require (``columns``), and
    checked to have no column its writer does not declare (``written``, the table's declaration on
    a CPU; default ``columns``)."""

    def load(name, columns, written=None):
        monkeypatch.setenv("EBM_RESULTS_DIR", str(results.COMMITTED_RESULTS))
        table = results.load_table(Context(get_profile("cpu"), torch.device("cpu")), name, columns)
        undeclared = set(table.columns) - {"profile", *(written or columns)}
        assert not undeclared, f"results/cpu/{name}.csv has undeclared columns {sorted(undeclared)}"
        return table

    return load


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


@pytest.fixture
def tiny_job_profile():
    """``make(name, **settings)``: the smoke profile shrunk so that ``train --all`` trains every
    model in seconds (tutorial 8's CNN on 96 digits, 2 epochs of 3 iterations, 2 SGLD steps, one
    pruning ratio with 2 training seeds, 3 fine-tuning iterations), named ``name``, with ``settings``."""

    def make(name: str, **settings):
        return get_profile("smoke").replace(
            name=name,
            baseline="cnn_tutorial8",
            train_subset=96,
            val_size=32,
            batch_size=16,
            sgld_steps=2,
            buffer_size=64,
            epochs=2,
            max_iters_per_epoch=3,
            ckpt_every=2,
            snapshot_epochs=(1,),
            clf_epochs=1,
            clf_train_subset=256,
            prune_ratios=(0.5,),
            seeded_ratios=(0.5,),
            training_seeds=2,
            finetune_epochs=1,
            finetune_iters=3,
            **settings,
        )

    return make
