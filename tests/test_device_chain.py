"""The device chain's plumbing on tiny fake outputs: no notebook runs here (the lead rehearses the
real chain with ``python -m ebmhelpers device-chain rehearse --profile smoke``)."""

import json
import lzma
import os
import shutil
from pathlib import Path

import pytest
import torch

from ebmhelpers import artifacts, data, device_chain
from ebmhelpers.artifacts import ArtifactError, MiB
from ebmhelpers.checkpoints import atomic_save
from ebmhelpers.device_chain import INBOX, Stage, check_return, copy_tree, receive, run_stage
from ebmhelpers.models import ResNetEnergy
from ebmhelpers.profiles import get_profile
from ebmhelpers.training import PCDTrainer

TINY = get_profile("smoke").replace(buffer_size=32, batch_size=8, max_iters_per_epoch=None, epochs=1, ckpt_every=2,
                                    sgld_steps=2)  # fmt: skip
STAGES = (Stage(1, ("02",), True, "trains"), Stage(2, ("03",), False, "reads stage 1"))
FLOPS = {device_chain.TRAIN: 1e9, "02": 1e9, "03": 1e9}


def _checkout(root):
    """A stand-in checkout: two notebooks, nothing else."""
    (root / "notebooks").mkdir(parents=True)
    for name in ("02_evaluation", "03_quantization"):
        (root / "notebooks" / f"{name}.ipynb").write_text(json.dumps({"cells": [], "executed": False}))
    return root


def _trainer(ckpt_path=None):
    torch.manual_seed(0)
    return PCDTrainer(ResNetEnergy((1, 1), (4, 8)), TINY, torch.rand(16, 1, 28, 28) * 2 - 1, ckpt_path=ckpt_path)


def fake_train(root, p):
    """Stage 1's training with a tiny real PCD run: export, and restore the checkpoint from the export."""
    ckpt = root / "checkpoints" / p.name
    trainer = _trainer(ckpt / "baseline.pt")
    trainer.fit(progress=False)
    atomic_save({"model": {"w": torch.arange(10.0)}}, ckpt / "classifier.pt")
    artifacts.export_baseline(trainer.state_dict(), ckpt / "baseline_compact.pt")
    artifacts.restore_baseline(ckpt / "baseline_compact.pt", ckpt / "baseline.pt")
    return {"train baseline": 0.5, "train classifier": 0.1}


def fake_notebook(root, p, nb):
    """A notebook's effects: it reads the baseline (done), writes a table, a figure and itself."""
    loaded = _trainer(root / "checkpoints" / p.name / "baseline.pt")
    assert loaded.load() and loaded.done, f"notebook {nb}: no finished baseline in {root}"
    results, figures = root / "results" / p.name, root / "figures" / p.name
    if nb == "03":  # a later stage reads what an earlier one wrote, through the tree
        assert (results / "table_02.csv").read_text() == "from stage 1\n"
    results.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    (results / f"table_{nb}.csv").write_text(f"from stage {1 if nb == '02' else 2}\n")
    (figures / f"fig_{nb}.png").write_bytes(os.urandom(300_000))
    path = device_chain.notebook_path(root, nb)
    path.write_text(json.dumps({"cells": [], "executed": True, "in": str(root)}))
    return 0


def _stage(number, root, out, **kw):
    return run_stage(number, TINY, out=out, root=root, deadline_s=0, stages=STAGES, train=fake_train,
                     run_notebook=fake_notebook, flops=FLOPS, **kw)  # fmt: skip


def test_two_stages_hand_off_through_pack_receive_and_a_fresh_tree(tmp_path):
    lead = _checkout(tmp_path / "lead")
    copy_tree(lead, tmp_path / "device1")  # the device's view: nothing carried yet
    report = _stage(1, tmp_path / "device1", tmp_path / "out1")
    assert report.ran == ["02"] and report.exit_code == 0
    assert check_return(tmp_path / "out1") == []
    manifests = sorted(p.relative_to(tmp_path / "out1").as_posix() for p in (tmp_path / "out1").rglob("*.manifest.json"))
    assert manifests == ["outputs/outputs.manifest.json", "state/state.manifest.json"]
    receive(tmp_path / "out1", lead)
    assert (lead / "results/smoke/table_02.csv").read_text() == "from stage 1\n"
    assert json.loads((lead / "notebooks/02_evaluation.ipynb").read_text())["executed"]
    assert artifacts.verify(lead / INBOX, "state")["meta"] == {"profile": "smoke", "stage": 1}
    assert not (lead / "checkpoints").exists()  # the state stays packed until a stage opens it

    copy_tree(lead, tmp_path / "device2", [INBOX])  # a fresh machine: tree + carried state only
    assert not (tmp_path / "device2" / "checkpoints").exists()
    report = _stage(2, tmp_path / "device2", tmp_path / "out2")
    assert report.ran == ["03"] and report.exit_code == 0
    assert not (tmp_path / "out2" / "state").exists()  # the last stage passes no state on
    receive(tmp_path / "out2", lead)
    assert (lead / "results/smoke/table_03.csv").read_text() == "from stage 2\n"
    assert json.loads((lead / "notebooks/03_quantization.ipynb").read_text())["in"] == str(tmp_path / "device2")
    times = (lead / "results/smoke/device_chain.csv").read_text()
    assert "train baseline" in times and "restore state" in times and "notebook 03" in times


def test_a_damaged_state_piece_is_refused_before_anything_is_received(tmp_path):
    lead = _checkout(tmp_path / "lead")
    copy_tree(lead, tmp_path / "device1")
    _stage(1, tmp_path / "device1", tmp_path / "out1")
    piece = tmp_path / "out1" / "state" / "state.tar.gz.part00"
    data_ = bytearray(piece.read_bytes())
    data_[100] ^= 0xFF
    piece.write_bytes(bytes(data_))
    with pytest.raises(ArtifactError, match="state.tar.gz.part00"):
        receive(tmp_path / "out1", lead)
    assert not (lead / "results").exists() and not (lead / INBOX).exists()


def test_stage_two_without_the_state_says_what_to_carry(tmp_path):
    root = _checkout(tmp_path / "device2")
    with pytest.raises(FileNotFoundError, match="device-chain receive"):
        _stage(2, root, tmp_path / "out2")


def test_a_notebook_predicted_past_the_deadline_is_skipped_and_the_rest_still_returns(tmp_path):
    root = _checkout(tmp_path / "device1")
    report = run_stage(1, TINY, out=tmp_path / "out1", root=root, deadline_s=60, stages=STAGES, train=fake_train,
                       run_notebook=fake_notebook, flops={device_chain.TRAIN: 1e9, "02": 1e18})  # fmt: skip
    assert report.skipped == ["02"] and report.exit_code == 3
    assert artifacts.verify(tmp_path / "out1" / "state", "state")  # the trained state came back anyway
    assert artifacts.verify(tmp_path / "out1" / "outputs", "outputs")["paths"] == ["results/smoke"]


def test_check_return_flags_what_the_device_would_not_return(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b" / "c").mkdir(parents=True)
    assert check_return(out) == []
    (out / "a" / "b" / "ok.log").write_text("x")
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    (out / "bad name.txt").write_text("x")
    with open(out / "big.bin", "wb") as f:
        f.truncate(16 * MiB + 1)
    for i in range(5):
        (out / f"f{i}").write_text("x")
    problems = " | ".join(check_return(out))
    assert "9 files, more than 8" in problems and "big.bin is 16.0 MiB" in problems
    assert "deep.txt is more than 2 folders down" in problems and "bad name.txt has characters" in problems
    assert "ok.log" not in problems


def test_install_data_ships_fashion_test_only_and_torchvision_accepts_it(tmp_path, monkeypatch):
    """The device gets Fashion-MNIST's test split; zero-image files stand in for the training split."""
    data.load_dataset("fashion", train=False)  # the real files, from the data root (downloaded if needed)
    src = data.data_root() / "FashionMNIST" / "raw"
    raw = tmp_path / device_chain.DATA_DIR / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in device_chain.DEVICE_DATA["FashionMNIST"]:
        (raw / f"{name}.xz").write_bytes(lzma.compress((src / name).read_bytes(), preset=0))
    monkeypatch.setenv("EBM_DATA_ROOT", "/nonexistent")
    root = device_chain.install_data(tmp_path)
    assert root == tmp_path / "data" and os.environ["EBM_DATA_ROOT"] == str(root)
    images, labels = data.load_dataset("fashion", train=False, root=root, download=False)
    assert images.shape == (10_000, 1, 28, 28) and labels.max() == 9
    assert (root / "FashionMNIST/raw/train-images-idx3-ubyte").stat().st_size == 16  # a header of zero images


def test_run_arguments_carry_the_state_only_after_stage_one():
    first, second = (device_chain.run_args(s, "gpu") for s in device_chain.STAGES)
    assert INBOX not in first["carry"] and INBOX in second["carry"]
    for number, args in ((1, first), (2, second)):
        assert len(args["command"]) <= 2000 and args["timeout_s"] <= device_chain.COMMAND_S
        assert f"device-chain stage {number} --profile gpu" in args["command"]
        assert f"tee $OUT/stage{number}.log" in args["command"]
        assert set(args["carry"]) >= {device_chain.WHEEL_DIR, device_chain.DATA_DIR}


def test_first_call_runs_the_gpu_speedup_tests_and_the_speedup_bench():
    args = device_chain.preflight_args("gpu")
    assert len(args["command"]) <= 2000 and args["timeout_s"] <= device_chain.COMMAND_S
    assert (Path(__file__).resolve().parents[1] / device_chain.SPEEDUP_TESTS).is_file()
    assert f"pytest {device_chain.SPEEDUP_TESTS}" in args["command"]
    assert "-o addopts=''" in args["command"]  # the device image has no nbval: the project's addopts would fail
    assert f"bench --speedups --profile gpu --out $OUT/{device_chain.BENCH_CSV}" in args["command"]
    assert INBOX not in args["carry"]


def test_every_notebook_runs_in_exactly_one_stage_after_what_it_reads():
    order = [nb for s in device_chain.STAGES for nb in s.notebooks]
    assert sorted(order) == ["00", "01", "02", "03", "04", "05", "06"]
    first = device_chain.STAGES[0]
    assert first.trains and {"02", "04"} <= set(first.notebooks)  # the snapshots' readers train alongside
    assert order.index("03") > order.index("02") and order.index("06") > max(order.index("04"), order.index("05"))


def test_gpu_profile_fits_each_command_and_the_session_at_the_assumed_rate():
    rows = device_chain.plan("gpu")
    assert all(r["minutes"] <= 8.0 for r in rows)  # margin under the 10-minute command
    assert sum(r["minutes"] for r in rows) <= 15.0  # plus a machine start per stage: about 20 device-minutes
    p = get_profile("gpu")
    assert p.baseline == "resnet18" and p.score_seeds >= 3 and len(p.prune_ratios) >= 4 and p.n_gen >= 1000
    assert (p.sgld_steps, p.sgld_step_size, p.sgld_noise_std, p.buffer_size) == (60, 10.0, 0.005, 8192)


def test_ensure_excluded_adds_the_inbox_once(tmp_path):
    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("# git ls-files --others --exclude-from=.git/info/exclude")
    assert device_chain.ensure_excluded(tmp_path) and not device_chain.ensure_excluded(tmp_path)
    lines = (tmp_path / ".git" / "info" / "exclude").read_text().splitlines()
    assert lines.count(f"/{INBOX}/") == 1 and lines[0].startswith("#")
    shutil.rmtree(tmp_path / ".git")
    assert not device_chain.ensure_excluded(tmp_path)  # not a checkout: nothing to do


def test_the_real_train_step_exports_and_restores_inside_the_stage_tree(tmp_path, monkeypatch):
    """device_chain._train with the package's load_or_train_* stood in by a tiny run: the
    checkpoints land in the stage's tree (EBM_HOME), and baseline.pt is the restored export."""
    from ebmhelpers import training
    from ebmhelpers.checkpoints import load_checkpoint

    monkeypatch.setenv("EBM_HOME", str(tmp_path))
    for name in device_chain.ENV_FOLDERS:
        monkeypatch.delenv(name, raising=False)

    def tiny_baseline(ctx, progress=True):
        trainer = _trainer(ctx.checkpoints / "baseline.pt")
        trainer.fit(progress=False)
        return trainer

    monkeypatch.setattr(training, "load_or_train_baseline", tiny_baseline)
    monkeypatch.setattr(training, "load_or_train_classifier", lambda ctx, progress=True: (None, 0.99))
    steps = device_chain._train(tmp_path, TINY)
    assert set(steps) == {"train baseline", "train classifier", "export and restore"}
    ckpt = tmp_path / "checkpoints" / "smoke"
    assert load_checkpoint(ckpt / "baseline.pt")["restored_from"]["file"] == "baseline_compact.pt"
    assert load_checkpoint(ckpt / "baseline_compact.pt")["format"] == artifacts.COMPACT_FORMAT
    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(RuntimeError, match="not into the stage's tree"):
        device_chain._train(tmp_path, TINY)


def test_time_notebooks_returns_the_times_after_each_and_stops_at_a_failure(tmp_path, monkeypatch):
    """The command's limit may cut any notebook: the times of those before it must already be in $OUT."""
    root, out = tmp_path / "tree", tmp_path / "out"
    times = root / "results" / "colab" / device_chain.TIMES_CSV

    def fake_run(root_, profile, nb):
        times.parent.mkdir(parents=True, exist_ok=True)
        with open(times, "a") as f:
            f.write(f"{nb},1.0\n")
        return 1 if nb == "02" else 0

    monkeypatch.setattr(device_chain, "_run_notebook", fake_run)
    monkeypatch.setattr(device_chain, "install_data", lambda root_: None)
    done = device_chain.time_notebooks(get_profile("colab"), out, root)
    assert done == ["00", "01"]
    assert (out / f"colab_{device_chain.TIMES_CSV}").read_text() == "00,1.0\n01,1.0\n"  # 02 failed: not copied
    args = device_chain.time_args()
    assert "device-chain time --profile colab --out $OUT" in args["command"] and len(args["command"]) <= 2000
