"""The PCD recipe variants of the recipe study: short-run chains, capped chains, tutorial 8's
growing buffer, the validation split and the digit measures."""

import math

import pytest
import torch

from ebmhelpers import data, metrics
from ebmhelpers.profiles import get_profile
from ebmhelpers.tools.recipe_study import RECIPES, STUDY_CHAIN, generation_config, recipe_profile
from ebmhelpers.sampling import ReplayBuffer
from ebmhelpers.pretrained import decode_uint8, encode_uint8
from ebmhelpers.training import PCDTrainer


def _marked_update(buf: ReplayBuffer, n: int, value: float) -> torch.Tensor:
    starts, fresh = buf.sample(n)
    buf.update(torch.full_like(starts, value))
    return fresh


def test_short_run_keeps_no_chain_state():
    """reinit_frac=1: every chain starts from fresh noise, so nothing written survives into a start."""
    torch.manual_seed(0)
    buf = ReplayBuffer(64, (1, 4, 4), reinit_frac=1.0)
    buf.sample(64)
    buf.update(torch.full((64, 1, 4, 4), 7.0))  # a value uniform noise never takes
    for _ in range(5):
        starts, fresh = buf.sample(64)
        assert fresh.all() and starts.abs().max() <= 1.0
        buf.update(starts)


def test_capped_chain_is_reset_after_max_age_updates():
    torch.manual_seed(0)
    buf = ReplayBuffer(8, (1, 2, 2), reinit_frac=0.0, max_age=3)
    for i in range(3):  # three updates of every slot (batch = whole buffer, drawn with replacement)
        idx = torch.arange(8)
        buf.sample(8)
        buf._last_idx = idx  # every slot once, so each ages by exactly one per round
        buf._last_ages = buf.ages[idx]
        buf.update(torch.full((8, 1, 2, 2), float(i + 2)))
    assert buf.ages.tolist() == [3] * 8
    starts, fresh = buf.sample(8)
    assert fresh.all(), "a chain updated max_age times must restart from noise"
    assert starts.abs().max() <= 1.0  # noise, not the stored 4.0
    drawn = buf._last_idx
    buf.update(starts)
    assert torch.all(buf.ages[drawn] == 1)  # restarted chains count from zero


def test_uncapped_chains_age_and_persist():
    torch.manual_seed(0)
    buf = ReplayBuffer(4, (1, 2, 2), reinit_frac=0.0)
    for _ in range(10):
        fresh = _marked_update(buf, 4, 0.5)
        assert not fresh.any()
    written = buf.ages > 0
    assert buf.ages.max() >= 3 and torch.all(buf.samples[written] == 0.5)  # chains persist and grow older


def test_growing_buffer_starts_empty_and_keeps_the_newest():
    torch.manual_seed(0)
    buf = ReplayBuffer(6, (1, 2, 2), reinit_frac=0.0, grow=True)
    assert len(buf.filled) == 0
    starts, fresh = buf.sample(4)
    assert fresh.all()  # nothing to draw from yet
    buf.update(torch.full_like(starts, 0.1))
    assert len(buf.filled) == 4
    starts, fresh = buf.sample(4)
    assert not fresh.any() and torch.all(starts == 0.1)  # drawn only from filled slots
    buf.update(torch.full_like(starts, 0.2))
    assert len(buf.filled) == 6  # capped at size; the 0.2 batch overwrote two of the oldest
    assert (buf.samples == 0.2).flatten(1).all(1).sum() == 4 and (buf.samples == 0.1).flatten(1).all(1).sum() == 2


def test_buffer_state_round_trips():
    buf = ReplayBuffer(6, (1, 2, 2), reinit_frac=0.0, grow=True, max_age=2)
    _marked_update(buf, 4, 0.3)
    other = ReplayBuffer(6, (1, 2, 2), reinit_frac=0.0, grow=True, max_age=2)
    other.load_state_dict(buf.state_dict())
    assert other.count == 4 and other._write_pos == 4 and torch.equal(other.ages, buf.ages)


def test_trainer_builds_the_profiles_buffer():
    p = get_profile("smoke").replace(
        buffer_size=32, batch_size=8, buffer_max_age=4, buffer_grows=True, sgld_steps=2, max_iters_per_epoch=2
    )
    trainer = PCDTrainer(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 1), torch.nn.Flatten(0)),
        p,
        torch.rand(16, 1, 28, 28) * 2 - 1,
    )
    assert trainer.buffer.max_age == 4 and trainer.buffer.grow


def test_validation_split_is_disjoint_and_fixed():
    val = data.load_training_split("val", 500)
    fit = data.load_training_split("fit", 500)
    assert len(val) == 500 and len(fit) == 60_000 - 500
    fit_keys = {bytes(x.numpy()) for x in encode_uint8(fit)}
    overlap = sum(bytes(x.numpy()) in fit_keys for x in encode_uint8(val))
    assert overlap <= 5  # MNIST has a handful of exact duplicate images; disjoint indices otherwise
    assert torch.equal(val, data.load_training_split("val", 500))
    assert len(data.load_training_split("fit", 0)) == 60_000


def test_uint8_round_trip_is_within_half_a_level():
    x = torch.rand(10, 1, 28, 28) * 2 - 1
    assert (decode_uint8(encode_uint8(x)) - x).abs().max() <= 1 / 255 + 1e-6


def test_recipe_generation_matches_what_training_saw():
    base = get_profile("cpu")
    short = generation_config(base, "short-run: 100% fresh")
    assert (short.steps, short.step_size) == (base.sgld_steps, base.sgld_step_size)
    capped = generation_config(base, "5% fresh, reset after 8 updates")
    assert capped.steps == 8 * base.sgld_steps and capped.step_size == base.sgld_step_size
    persistent = generation_config(base, "paper: 5% fresh", 4)
    assert persistent.steps == 4 * STUDY_CHAIN[0] and persistent.step_size == base.sgld_step_size * STUDY_CHAIN[1]
    assert persistent.temperature == pytest.approx(base.sgld_config().temperature)
    for name in RECIPES:  # every recipe samples at the same temperature
        assert recipe_profile(base, name).sgld_config().temperature == pytest.approx(base.sgld_config().temperature)


def test_digit_measures():
    logits = torch.eye(10).repeat(10, 1) * 20  # every digit equally often, all confident
    assert metrics.class_entropy_bits(logits) == pytest.approx(math.log2(10))
    assert metrics.confident_fraction(logits) == 1.0
    assert metrics.class_entropy_bits(torch.zeros(50, 10).index_fill_(1, torch.tensor([3]), 5.0)) == 0.0
    assert metrics.confident_fraction(torch.zeros(4, 10)) == 0.0  # uniform: p = 0.1
    assert metrics.saturation(torch.tensor([1.0, -1.0, 0.0, 0.5])) == 0.5
    ref = torch.rand(20, 1, 4, 4)
    d = metrics.nearest_distance(torch.cat([ref[:3], ref[:1] + 0.1]), ref)
    assert torch.allclose(d[:3], torch.zeros(3), atol=1e-3) and d[3] == pytest.approx(0.4, abs=1e-3)


def test_validation_scorer_scores_quality_as_the_evaluator_does():
    """Given the same classifier and real-digit statistics, the recipe study's scorer and the
    Evaluator give the same scores to the same digits (one definition of the quality scores)."""
    from ebmhelpers.models import MNISTClassifier
    from ebmhelpers.runtime import Context
    from ebmhelpers.tools.recipe_study import ValidationScorer

    torch.manual_seed(0)
    ev = metrics.Evaluator(
        Context(get_profile("smoke").replace(n_fid_real=64, n_ood=16), torch.device("cpu")), MNISTClassifier()
    )
    scorer = ValidationScorer.__new__(ValidationScorer)  # the Evaluator's digits in place of the validation split
    scorer.classifier, scorer.fit_ref = ev.classifier, ev.ood_x
    scorer.real_mu, scorer.real_sigma = ev.real_mu, ev.real_sigma
    samples = torch.rand(32, 1, 28, 28) * 2 - 1
    scores = scorer(samples)
    assert scores.pop("nearest_train") > 0
    assert scores == pytest.approx(ev.sample_quality(samples))


def test_pretrained_export_and_install_round_trip(tmp_path, monkeypatch, tiny_baseline):
    """A trained baseline exported at a kept snapshot is installed as a finished checkpoint with the
    snapshot's weights, its buffer to within half a grey level and the history up to its step."""
    from ebmhelpers import pretrained, training
    from ebmhelpers.runtime import Context

    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.delenv(pretrained.TRAIN_ENV, raising=False)
    p = tiny_baseline.replace(epochs=2, snapshot_epochs=(1, 2), clf_train_subset=256)
    ctx = Context(p, torch.device("cpu"))
    trainer = training.load_or_train_baseline(ctx, progress=False, train=True)
    training.load_or_train_classifier(ctx, progress=False)  # the committed baseline carries the metric classifier
    assert trainer.done and trainer.step == 16
    entry = pretrained.commit_baseline(
        p, ctx.checkpoints, seconds=1.0, command="a test", snapshot="epoch1", keep=("rewind", "epoch1", "epoch2")
    )
    assert pretrained.folder(p.name) / entry["file"] == pretrained.path_for(p.name)
    assert entry["iterations"] == 8 and entry["architecture"] == p.baseline and entry["weights"] == "trained"
    assert pretrained.read_manifest(p.name)["baseline"] == entry
    snap = torch.load(ctx.checkpoints / "baseline_epoch1.pt", weights_only=True)

    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path / "fresh"))
    installed = training.load_or_train_baseline(ctx.__class__(p.replace(epochs=1), ctx.device), progress=False)
    assert installed.done and installed.step == 8 and len(installed.history) == 8
    for k, v in snap["model"].items():
        assert torch.equal(installed.model.state_dict()[k], v)
    assert (installed.buffer.samples - decode_uint8(snap["buffer_uint8"])).abs().max() == 0
    assert (tmp_path / "fresh" / p.name / "baseline_epoch1.pt").exists()
    assert not (tmp_path / "fresh" / p.name / "baseline_epoch2.pt").exists()  # after the exported step
    monkeypatch.setenv(pretrained.TRAIN_ENV, "1")
    assert pretrained.wants_training()


def test_recipe_training_seconds_add_up_over_resumed_calls(tmp_path, monkeypatch, tiny_baseline):
    """A recipe stopped and resumed reports the wall time of all its training, not of the last call."""
    from ebmhelpers.runtime import Context
    from ebmhelpers.tools import recipe_study

    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    ctx = Context(tiny_baseline.replace(epochs=2, ckpt_every=2), torch.device("cpu"))
    images = data.load_training_split("fit", 0, 64)
    # the study checkpoints every 50 iterations and at each epoch's end (8 iterations here): a call
    # stops at the first checkpoint at or after its budget
    first, s1, _ = recipe_study.train_recipe(ctx, "25% fresh", images, budget=1 * 2, progress=False)
    assert first.step == 8 and s1 > 0
    second, s2, outcome = recipe_study.train_recipe(ctx, "25% fresh", images, budget=16 * 2, progress=False)
    assert second.step == 16 and outcome == "ok"
    assert s2 > s1  # the first call's seconds are kept beside the checkpoint
    third, s3, _ = recipe_study.train_recipe(ctx, "25% fresh", images, budget=16 * 2, progress=False)
    assert third.step == 16 and s3 == pytest.approx(s2, abs=0.5)  # nothing left to train: nothing added


def test_long_run_keeps_every_epoch_apart_from_the_profile_baseline(tmp_path, monkeypatch, tiny_baseline):
    """``recipe-study --long``: a recipe trained with a snapshot per epoch in its own folder, resumable
    to more epochs, and the profile's own baseline checkpoint never written."""
    from ebmhelpers.tools import recipe_study

    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setattr(recipe_study, "get_profile", lambda name=None: tiny_baseline)
    trainer = recipe_study.long_run("paper: 5% fresh", 2, "smoke", progress=False)
    folder = tmp_path / "smoke" / "recipe_study" / "paper__5__fresh_long"
    assert trainer.ckpt_path.parent == folder and trainer.step == 16 and trainer.profile.reinit_frac == 0.05
    assert not (tmp_path / "smoke" / "baseline.pt").exists()
    assert [torch.load(folder / f"baseline_epoch{e}.pt", weights_only=True)["step"] for e in (1, 2)] == [8, 16]
    first = (folder / "baseline_epoch1.pt").read_bytes()
    longer = recipe_study.long_run("paper: 5% fresh", 3, "smoke", progress=False)  # resumes, does not restart
    assert longer.step == 24 and len(longer.history) == 24
    assert (folder / "baseline_epoch1.pt").read_bytes() == first and (folder / "baseline_epoch3.pt").exists()
    with pytest.raises(ValueError, match="unknown recipe 'nonsense'"):
        recipe_study.long_run_context("smoke", "nonsense", 2)


def test_recipe_name_is_the_most_specific_matching_recipe():
    from ebmhelpers.tools.recipe_study import recipe_name

    cpu = get_profile("cpu")
    assert recipe_name(recipe_profile(cpu, "25% fresh")) == "25% fresh"
    k30 = "25% fresh, K=30 of 2x step"
    assert recipe_name(recipe_profile(cpu, k30)) == k30  # also matches "25% fresh": the larger change set wins
    assert recipe_name(cpu.replace(reinit_frac=0.5)) == "profile"


def test_study_tables_keep_the_rows_of_other_runs(tmp_path):
    import pandas as pd

    from ebmhelpers.tools.recipe_study import _keep_other_rows

    out = tmp_path / "t.csv"
    _keep_other_rows(
        out, pd.DataFrame({"recipe": ["a", "a"], "snapshot": ["e1", "e2"], "FID": [1.0, 2.0]}), {"recipe": "a"}
    )
    _keep_other_rows(out, pd.DataFrame({"recipe": ["b"], "snapshot": ["e1"], "FID": [3.0]}), {"recipe": "b"})
    table = _keep_other_rows(
        out, pd.DataFrame({"recipe": ["a"], "snapshot": ["e2"], "FID": [4.0]}), {"recipe": "a", "snapshot": "e2"}
    )  # replaces a/e2 only
    assert sorted(zip(table.recipe, table.snapshot, table.FID)) == [
        ("a", "e1", 1.0),
        ("a", "e2", 4.0),
        ("b", "e1", 3.0),
    ]
    assert pd.read_csv(out).shape == (3, 3)
