import hashlib
import io
import json
import os
import tarfile

import pytest
import torch

from ebmhelpers import artifacts
from ebmhelpers.artifacts import ArtifactError, pack, unpack
from ebmhelpers.checkpoints import load_checkpoint
from ebmhelpers.models import ResNetEnergy, build_baseline
from ebmhelpers.profiles import get_profile
from ebmhelpers.training import PCDTrainer, pcd_loss

KIB = 1024


def _files(root):
    """A small tree of real files: text, an incompressible blob (so the archive needs several
    pieces at a small max_bytes) and a nested file."""
    (root / "results" / "gpu").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "results" / "gpu" / "table.csv").write_text("model,FID\nbaseline,784.1\n" * 50)
    (root / "results" / "gpu" / "blob.bin").write_bytes(os.urandom(200 * KIB))
    (root / "notebooks" / "02_evaluation.ipynb").write_text(json.dumps({"cells": [], "nbformat": 4}))
    return ["results/gpu", "notebooks/02_evaluation.ipynb"]


def _contents(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_is_byte_identical_in_pieces_under_the_limit(tmp_path):
    src = tmp_path / "src"
    paths = _files(src)
    manifest_file = pack(paths, tmp_path / "out", max_bytes=64 * KIB, name="outputs", root=src, meta={"stage": 1})
    manifest = json.loads(manifest_file.read_text())
    pieces = sorted((tmp_path / "out").glob("outputs.tar.gz.part*"))
    assert len(pieces) == len(manifest["pieces"]) >= 4  # 200 KiB of random bytes in 64 KiB pieces
    assert all(p.stat().st_size <= 64 * KIB for p in pieces)
    joined = b"".join(p.read_bytes() for p in pieces)
    assert hashlib.sha256(joined).hexdigest() == manifest["archive_sha256"] and manifest["meta"] == {"stage": 1}
    extracted = unpack(tmp_path / "out", tmp_path / "dest")
    assert _contents(tmp_path / "dest") == _contents(src)
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in extracted) == sorted(_contents(src))


def test_a_flipped_byte_is_refused_naming_its_piece_and_nothing_is_extracted(tmp_path):
    src = tmp_path / "src"
    pack(_files(src), tmp_path / "out", max_bytes=64 * KIB, name="outputs", root=src)
    bad = tmp_path / "out" / "outputs.tar.gz.part02"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="piece outputs.tar.gz.part02 .* is damaged"):
        unpack(tmp_path / "out", tmp_path / "dest")
    with pytest.raises(ArtifactError, match="part02"):
        artifacts.verify(tmp_path / "out", "outputs")
    assert not (tmp_path / "dest").exists()


def test_a_missing_piece_is_refused_and_nothing_is_extracted(tmp_path):
    src = tmp_path / "src"
    pack(_files(src), tmp_path / "out", max_bytes=64 * KIB, name="outputs", root=src)
    (tmp_path / "out" / "outputs.tar.gz.part01").unlink()
    with pytest.raises(ArtifactError, match="missing piece.*outputs.tar.gz.part01"):
        unpack(tmp_path / "out", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    (tmp_path / "out" / "outputs.manifest.json").unlink()  # no manifest: an incomplete set
    with pytest.raises(ArtifactError, match="expected one"):
        unpack(tmp_path / "out", tmp_path / "dest")


def test_max_files_counts_pieces_and_manifest_before_writing(tmp_path):
    src = tmp_path / "src"
    paths = _files(src)
    with pytest.raises(ArtifactError, match="more than max_files=3"):
        pack(paths, tmp_path / "out", max_bytes=64 * KIB, name="outputs", root=src, max_files=3)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    manifest = pack(paths, tmp_path / "out", max_bytes=1024 * KIB, name="outputs", root=src, max_files=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["outputs.manifest.json", "outputs.tar.gz.part00"]
    assert len(json.loads(manifest.read_text())["pieces"]) == 1


def test_repacking_removes_the_stale_pieces_of_a_larger_earlier_pack(tmp_path):
    src = tmp_path / "src"
    paths = _files(src)
    pack(paths, tmp_path / "out", max_bytes=64 * KIB, name="outputs", root=src)
    (src / "results" / "gpu" / "blob.bin").unlink()
    pack(["results/gpu"], tmp_path / "out", max_bytes=64 * KIB, name="outputs", root=src)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["outputs.manifest.json", "outputs.tar.gz.part00"]
    unpack(tmp_path / "out", tmp_path / "dest")
    assert _contents(tmp_path / "dest") == {"results/gpu/table.csv": (src / "results/gpu/table.csv").read_bytes()}


def _raw_artifact(out, members, name="evil"):
    """Write an artifact (manifest and one piece) around a hand-made tar.gz, as an attacker could."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    data = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.tar.gz.part00").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    manifest = {"format": artifacts.FORMAT, "name": name, "archive_bytes": len(data), "archive_sha256": sha,
                "pieces": [{"file": f"{name}.tar.gz.part00", "bytes": len(data), "sha256": sha}], "meta": {}}
    (out / f"{name}.manifest.json").write_text(json.dumps(manifest))


def _file(name, payload=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


@pytest.mark.parametrize("member", ["../escaped.txt", "ok/../../escaped.txt", "/tmp/escaped_abs.txt"])
def test_path_traversal_is_refused_and_nothing_is_written(tmp_path, member):
    _raw_artifact(tmp_path / "in", [_file("fine.txt"), _file(member)])
    with pytest.raises(ArtifactError, match="refusing to extract"):
        unpack(tmp_path / "in", tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "escaped.txt").exists()


def test_links_and_paths_outside_the_allowed_prefixes_are_refused(tmp_path):
    link = tarfile.TarInfo("results/gpu/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _raw_artifact(tmp_path / "a", [(link, None)])
    with pytest.raises(ArtifactError, match="not a plain file"):
        unpack(tmp_path / "a", tmp_path / "dest")
    _raw_artifact(tmp_path / "b", [_file("results/gpu/t.csv"), _file("ebmhelpers/__init__.py")])
    with pytest.raises(ArtifactError, match="outside"):
        unpack(tmp_path / "b", tmp_path / "dest", only=["results/gpu/", "notebooks/"])
    assert not (tmp_path / "dest").exists()
    assert unpack(tmp_path / "b", tmp_path / "dest", only=["results/", "ebmhelpers/"])  # both prefixes allowed


def test_pack_refuses_paths_outside_its_root_and_links(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside.txt").write_text("x")
    with pytest.raises(ArtifactError, match="outside the archive's root"):
        pack([tmp_path / "outside.txt"], tmp_path / "out", root=tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(ArtifactError, match="link"):
        pack(["link"], tmp_path / "out", root=tmp_path / "root")
    with pytest.raises(ArtifactError, match="nothing to pack"):
        pack(["missing"], tmp_path / "out", root=tmp_path / "root")


# ---- the compact baseline ----------------------------------------------------------------
def test_bf16_planes_round_to_bf16_exactly_and_keep_other_tensors():
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(8, 1, 3, 3), "steps": torch.tensor([3, 4]), "fc.bias": torch.randn(5).double()}
    restored = artifacts.from_bf16_planes(artifacts.bf16_planes(state))
    assert list(restored) == list(state)
    assert torch.equal(restored["conv.weight"], state["conv.weight"].bfloat16().float())
    assert restored["fc.bias"].dtype == torch.float64
    assert torch.equal(restored["fc.bias"], state["fc.bias"].bfloat16().double())
    assert torch.equal(restored["steps"], state["steps"])
    assert not torch.equal(restored["conv.weight"], state["conv.weight"])  # it did round


def test_images_quantize_to_uint8_within_half_a_level():
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    q = artifacts.quantize_images(x)
    assert q.dtype == torch.uint8
    assert (artifacts.dequantize_images(q) - x).abs().max() <= 1 / 255 + 1e-6
    grid = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(artifacts.quantize_images(artifacts.dequantize_images(grid)), grid)


def test_bf16_restored_energies_agree_with_fp32_on_real_digits(mnist_test):
    """Tolerance: bf16 keeps 8 significant bits (each weight rounded by at most 2^-9 = 0.2%
    relative); on energies of order 5 the errors largely cancel, so |E_bf16 - E_fp32| must stay
    within 1e-3 + 0.5% of |E| on real test digits and on noise, with real digits still below noise."""
    images = mnist_test[0]
    train, test = images[:256], images[256:]
    torch.manual_seed(0)
    model = build_baseline("cnn_tutorial8")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):  # a short contrastive fit, so the energies have a trained model's scale
        noise = torch.rand(64, 1, 28, 28) * 2 - 1
        energies = model(torch.cat([train[torch.randint(0, 256, (64,))], noise]))
        loss = pcd_loss(*energies.chunk(2), alpha=0.1)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    restored = build_baseline("cnn_tutorial8")
    restored.load_state_dict(artifacts.from_bf16_planes(artifacts.bf16_planes(model.state_dict())))
    noise = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        for x in (test, noise):
            e32, e16 = model.eval()(x), restored.eval()(x)
            torch.testing.assert_close(e16, e32, rtol=5e-3, atol=1e-3)
            assert (e16 - e32).abs().max() > 0  # the weights really were rounded
        assert model(test).mean() + 5 < model(noise).mean()  # a scale worth comparing at


TINY = get_profile("smoke").replace(buffer_size=32, batch_size=8, max_iters_per_epoch=None, epochs=1, ckpt_every=2,
                                    sgld_steps=2)  # fmt: skip


def _finished_trainer(path=None):
    torch.manual_seed(0)
    trainer = PCDTrainer(ResNetEnergy((1, 1), (4, 8)), TINY, torch.rand(16, 1, 28, 28) * 2 - 1, ckpt_path=path)
    trainer.fit(progress=False)
    assert trainer.done
    return trainer


def test_export_then_restore_gives_a_finished_checkpoint_the_trainer_loads(tmp_path):
    trainer = _finished_trainer(tmp_path / "full.pt")
    trainer.rollbacks.append({"failed_at_step": 1, "resumed_from_step": 0, "reason": "test", "new_lr": 5e-5, "new_seed": 1000})
    compact = artifacts.export_baseline(trainer.state_dict(), tmp_path / "compact.pt")
    artifacts.restore_baseline(compact, tmp_path / "r.pt")
    torch.manual_seed(5)  # another model and data: all that matters must come from the file
    again = PCDTrainer(ResNetEnergy((1, 1), (4, 8)), TINY, torch.rand(16, 1, 28, 28) * 2 - 1, ckpt_path=tmp_path / "r.pt")
    assert again.load() and again.done and again.step == trainer.step
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value.bfloat16().float())
    assert (again.buffer.samples - trainer.buffer.samples).abs().max() <= 1 / 255 + 1e-6
    assert again.history.equals(trainer.history) and again.rollbacks == trainer.rollbacks
    assert again.opt.state_dict()["state"] == {}  # fresh Adam moments ...
    assert again.opt.param_groups[0]["lr"] == trainer.opt.param_groups[0]["lr"]  # ... at the saved learning rate
    assert again.sched.state_dict() == trainer.sched.state_dict()
    assert load_checkpoint(tmp_path / "r.pt")["restored_from"]["weights"] == "bf16-rounded"


def test_resnet18_weights_pack_to_about_a_third_of_fp32(tmp_path):
    """ResNet18's 11.2 M weights: 44.7 MB in fp32, 22.3 MB in bf16 (0.5), which gzip brings to
    0.39 of fp32 with the bytes interleaved and to 0.34 as byte planes (sign and exponent apart):
    the 2 MiB that keep the next command's carry under its limit."""
    torch.manual_seed(0)
    state = build_baseline("resnet18").state_dict()
    torch.save(artifacts.bf16_planes(state), tmp_path / "w.pt")
    fp32 = sum(v.numel() * 4 for v in state.values())
    out = artifacts.pack(["w.pt"], tmp_path / "out", root=tmp_path, name="w", max_bytes=64 * 2**20)
    packed = json.loads(out.read_text())["archive_bytes"]
    assert packed < 0.36 * fp32  # interleaved bf16 bytes give 0.39
