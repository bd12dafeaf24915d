"""Train once, read fast: the training job commits every model with a manifest entry, the notebooks'
functions install those weights instead of training, a killed job resumes, and a tampered or
mismatched file is refused by name."""

import json

import pytest
import torch

from ebmhelpers import data as data_mod
from ebmhelpers import pretrained, pruning, training
from ebmhelpers.profiles import PROFILES
from ebmhelpers.runtime import Context, get_device
from ebmhelpers.tools import train_all

TINY = "tiny-train-once"


@pytest.fixture
def tiny(tmp_path, monkeypatch, tiny_job_profile):
    """A profile small enough to train every model in seconds, with its committed weights, checkpoints
    and results in a temporary folder (the checkout's committed weights are never touched)."""
    p = tiny_job_profile(TINY, lottery_rounds=2, distill_batch_size=32)
    monkeypatch.setitem(PROFILES, TINY, p)
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.delenv(pretrained.TRAIN_ENV, raising=False)
    return p


def reader_context(p, tmp_path, monkeypatch, folder="reader"):
    """A reader's fresh checkout: no checkpoints of their own, the committed weights only."""
    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path / folder))
    return Context(p, get_device("cpu"))


def test_train_all_commits_every_model_with_its_manifest_entry(tiny):
    ran = train_all.train(TINY, everything=True)
    # what every notebook needs once (every ratio's first seed, Figure 4's unstructured 60% that the profile lacks,
    # the lottery, every student's first seed and the extensions), then the extra seeds: fine-tunings, students
    students = [job[0] for job in train_all.student_jobs(tiny)]
    assert ran == [
        "baseline",
        "prune_unstructured_conv_50",
        "prune_structured_conv_50_l1",
        "prune_unstructured_conv_60",
        train_all.LOTTERY,
        *[f for f in students if not f.endswith("_s1")],
        "prune_unstructured_conv_50_s1",
        "prune_structured_conv_50_l1_s1",
        *[f for f in students if f.endswith("_s1")],
    ]
    assert {"student_cnn_20k_eq6", "student_cnn_20k_eq6_s1", "student_cnn_20k_mixed+grad"} <= set(students)
    manifest = pretrained.read_manifest(TINY)
    expected = {
        "baseline",
        "prune_unstructured_conv_50",
        "prune_structured_conv_50_l1",
        "prune_unstructured_conv_60",
        "prune_unstructured_conv_50_s1",
        "prune_structured_conv_50_l1_s1",
        "lottery_r1_unstructured_conv_50",
        "lottery_r2_unstructured_conv_50",
        *students,
    }
    assert set(manifest) == expected
    assert {manifest[f]["kind"] for f in students} == {"student"}
    base = manifest["baseline"]
    for name, entry in manifest.items():
        for field in ("name", "kind", "hardware", "file", "sha256", "command", "commit"):
            assert entry[field] not in (None, ""), (name, field)
        assert entry["iterations"] > 0 and entry["seconds"] > 0, name
        assert entry["sha256"] == pretrained.sha256(pretrained.folder(TINY) / entry["file"])
        assert f"--model {name}" in entry["command"]
        if name != "baseline":
            assert entry["parent"] == base["sha256"]  # derived from the committed baseline
    ft_iters = training.training_iterations(pruning.finetune_profile(tiny), 64)
    assert manifest["prune_unstructured_conv_50_s1"]["iterations"] == ft_iters
    assert manifest["prune_unstructured_conv_50_s1"]["seed"] == 1
    assert base["iterations"] == tiny.epochs * tiny.max_iters_per_epoch
    # the manifest is plain JSON a person can read, and a second run has nothing left to do
    assert json.loads((pretrained.folder(TINY) / pretrained.MANIFEST).read_text())["profile"] == TINY
    assert train_all.train(TINY, everything=True) == []
    assert train_all.status(TINY).fresh.all()


def test_notebooks_install_committed_weights_instead_of_training(tiny, tmp_path, monkeypatch):
    train_all.train(TINY, everything=True)
    committed = pretrained.load(TINY, "prune_structured_conv_50_l1_s1")
    ctx = reader_context(tiny, tmp_path, monkeypatch)
    baseline = training.load_or_train_baseline(ctx, progress=False)
    assert baseline.installed_from == pretrained.read_manifest(TINY)["baseline"]["sha256"]
    images = data_mod.load_training_split("fit", tiny.val_size, tiny.train_subset, tiny.seed, ctx.device)
    masked = pruning.apply_pruning(pruning.copy_model(baseline.model), "structured_conv", 0.5)

    def no_training(*args, **kwargs):
        raise AssertionError("a committed model was trained again")

    monkeypatch.setattr(training.PCDTrainer, "fit", no_training)
    trainer, diverged = pruning.finetune(ctx, masked, images, baseline.buffer, "prune_structured_conv_50_l1_s1", seed=1)
    assert not diverged and trainer.done
    for key, value in pretrained.decode_masks(committed["model"]).items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
    assert not (ctx.checkpoints / "prune_structured_conv_50_l1_s1.pt").exists()  # read, not trained or copied
    # a student the same way, through notebook 05's function
    from ebmhelpers import distillation

    monkeypatch.setattr(distillation.Distiller, "fit", no_training)
    (train_x, train_kind), _ = distillation.distillation_inputs(tiny, baseline.buffer.samples, ctx.device)
    targets = distillation.teacher_targets(baseline.model, train_x, train_kind, tiny.eval_batch_size)
    student, history = distillation.load_or_distill(
        ctx,
        "cnn_20k",
        distillation.REPRODUCTION,
        targets,
        distillation.num_steps(tiny, len(targets)),
        baseline.model,
        seed=1,
        parent=baseline.identity,
    )
    committed_student = pretrained.load(TINY, "student_cnn_20k_eq6_s1")
    for key, value in committed_student["model"].items():
        assert torch.equal(student.state_dict()[key], value), key
    assert len(history) == committed_student["step"]


def test_a_tampered_or_mismatched_file_is_refused_by_name(tiny, tmp_path, monkeypatch):
    train_all.train(TINY, ["baseline", "prune_unstructured_conv_50"])
    ctx = reader_context(tiny, tmp_path, monkeypatch)
    baseline = training.load_or_train_baseline(ctx, progress=False)
    images = data_mod.load_training_split("fit", tiny.val_size, tiny.train_subset, tiny.seed, ctx.device)
    name = "prune_unstructured_conv_50"
    path = pretrained.path_for(TINY, name)

    def finetune(parent=None):
        masked = pruning.apply_pruning(pruning.copy_model(baseline.model), "unstructured_conv", 0.5)
        return pruning.finetune(ctx, masked, images, baseline.buffer, name, parent=parent or baseline.identity)

    finetune()  # intact: installs
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(pretrained.WeightsError, match=f"{path}.*sha256.*train --profile {TINY} --model {name}"):
        finetune()
    # the manifest says another architecture than the profile builds
    train_all.train(TINY, [name])  # regenerated: the file is whole again
    finetune()
    manifest_path = pretrained.folder(TINY) / pretrained.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["models"]:
        if entry["name"] == name:
            entry["architecture"] = "resnet18"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(pretrained.WeightsError, match=f"{path}.*'resnet18'.*--model {name}"):
        finetune()
    # a model trained from another baseline is refused, never used with the new one
    train_all.train(TINY, [name])
    finetune()
    with pytest.raises(pretrained.WeightsError, match="another baseline"):
        finetune(parent="local:" + "0" * 16)


def test_a_killed_training_job_resumes_where_it_stopped(tiny, monkeypatch):
    train_all.train(TINY, ["baseline"])
    calls = {"windows": 0}
    original = training.PCDTrainer._end_window

    def killed_after_first_checkpoint(self, window, on_window):
        kept = original(self, window, on_window)
        calls["windows"] += 1
        if calls["windows"] == 1:
            raise KeyboardInterrupt  # the process dies right after its first checkpoint
        return kept

    monkeypatch.setattr(training.PCDTrainer, "_end_window", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_all.train(TINY, everything=True)
    assert "prune_unstructured_conv_50" not in pretrained.read_manifest(TINY)
    ckpt = Context(tiny, get_device("cpu")).checkpoints / "prune_unstructured_conv_50.pt"
    stopped_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < stopped_at < training.training_iterations(pruning.finetune_profile(tiny), 64)

    starts = []
    original_fit = training.PCDTrainer.fit

    def recording_fit(self, *args, **kwargs):
        starts.append(self.step)
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(training.PCDTrainer, "fit", recording_fit)
    train_all.train(TINY, everything=True)
    assert starts[0] == stopped_at  # continued from its checkpoint, not from the start
    entry = pretrained.read_manifest(TINY)["prune_unstructured_conv_50"]
    assert entry["iterations"] == training.training_iterations(pruning.finetune_profile(tiny), 64)
    assert entry["diverged"] is False and entry["rollbacks"] == 0  # the guard's record, in the manifest
    assert train_all.status(TINY).fresh.all()


def test_unknown_model_is_a_one_line_error(tiny):
    with pytest.raises(KeyError, match="unknown model.*nonsense.*--list"):
        train_all.train(TINY, ["nonsense"])


def test_a_run_continued_from_the_committed_baseline_resumes_and_a_local_one_is_not_overwritten(
    tiny, tmp_path, monkeypatch
):
    train_all.train(TINY, ["baseline"])
    sha = pretrained.read_manifest(TINY)["baseline"]["sha256"]
    longer = Context(tiny.replace(epochs=3), get_device("cpu"), tmp_path / "continued")
    first = training.load_or_train_baseline(longer, progress=False)  # installs, then trains epoch 3
    assert first.done and first.continued_from == sha and first.installed_from is None
    assert first.seconds > 0 and torch.load(first.ckpt_path, weights_only=True)["seconds"] == pytest.approx(
        first.seconds
    )
    again = training.load_or_train_baseline(longer, progress=False)  # resumes (here: loads), no refusal
    assert again.step == first.step and again.seconds == pytest.approx(first.seconds)
    # a baseline trained here, not from the committed one, is never overwritten by an install
    local = reader_context(tiny, tmp_path, monkeypatch, "local")
    training.load_or_train_baseline(local, progress=False, train=True)
    with pytest.raises(pretrained.WeightsError, match="was trained here.*delete it"):
        training.load_or_train_baseline(local, progress=False)


def test_weight_averages_follow_the_ema_rule_and_survive_a_checkpoint(tiny, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    averages = training.WeightAverages(model, (0.9, 0.5))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    averages.update()
    assert torch.allclose(averages.averages["ema0.9"]["weight"], start["weight"] + 0.1)
    assert torch.allclose(averages.averages["ema0.5"]["weight"], start["weight"] + 0.5)
    assert torch.equal(averages.weights("ema0.5")["bias"], averages.averages["ema0.5"]["bias"])
    p = tiny.replace(ema_decays=(0.9,))
    images = data_mod.load_training_split("fit", p.val_size, p.train_subset, p.seed)
    trainer = training.PCDTrainer(training.build_baseline(p.baseline), p, images, ckpt_path=tmp_path / "ema.pt")
    trainer.fit(progress=False)
    kept = trainer.averages.state_dict()["ema0.9"]
    assert any(not torch.equal(kept[k], v) for k, v in trainer.model.state_dict().items())  # it averaged
    resumed = training.PCDTrainer(training.build_baseline(p.baseline), p, images, ckpt_path=tmp_path / "ema.pt")
    assert resumed.load()
    for k, v in kept.items():
        assert torch.equal(resumed.averages.averages["ema0.9"][k], v)
    with pytest.raises(ValueError, match="decays"):
        training.WeightAverages(model, (1.0,))


def test_committed_files_pack_masks_to_bits_and_history_to_float32():
    from ebmhelpers.models import tutorial8_cnn_energy

    torch.manual_seed(0)
    masked = pruning.apply_pruning(tutorial8_cnn_energy(), "unstructured_conv", 0.37)
    state = masked.state_dict()
    packed = pretrained.encode_masks(state)
    mask_keys = [k for k in state if k.endswith("_mask")]
    assert mask_keys and not any(k in packed for k in mask_keys)
    decoded = pretrained.decode_masks(packed)
    assert decoded.keys() == state.keys() and all(torch.equal(decoded[k], state[k]) for k in state)
    packed_bytes = sum(v.numel() * v.element_size() for v in packed.values())
    plain_bytes = sum(v.numel() * v.element_size() for v in state.values())
    assert packed_bytes < 0.6 * plain_bytes  # masks at one bit instead of 32
    old_format = {k: v.bool() if k.endswith("_mask") else v for k, v in state.items()}  # booleans, as first committed
    assert all(torch.equal(pretrained.decode_masks(old_format)[k], state[k]) for k in state)
    rows = [[0, 0, 1e-4, 0.5, -0.25, 0.1], [1, 0, 1e-4, 0.25, -0.5, 0.2]]
    unpacked = pretrained.unpack_history(pretrained.pack_history(rows))
    assert [x for r in unpacked for x in r] == pytest.approx([x for r in rows for x in r])
    assert pretrained.unpack_history(rows) == rows


COMMITTED_LIMIT_BYTES = 25_000_000  # weights committed for one profile, all files together


@pytest.mark.parametrize("profile_name", ["cpu"])
def test_committed_weights_are_small_and_every_file_is_in_the_manifest(profile_name):
    manifest = pretrained.read_manifest(profile_name)
    files = {p.name: p.stat().st_size for p in pretrained.folder(profile_name).glob("*.pt")}
    assert set(files) == {e["file"] for e in manifest.values()}  # no orphan file, no entry without its file
    assert all(files[e["file"]] == e["bytes"] for e in manifest.values())
    assert sum(files.values()) <= COMMITTED_LIMIT_BYTES, f"{sum(files.values()):,} bytes committed"
