import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from ebmhelpers import checkpoints, runtime
from ebmhelpers.checkpoints import CheckpointError, atomic_save, load_checkpoint, previous_path, restore_previous

UNPICKLED: list[str] = []  # filled if a refused payload were ever unpickled


def _record(tag):
    UNPICKLED.append(tag)
    return tag


class Payload:
    """Not on torch's weights_only allowlist; records it if it is ever unpickled."""

    def __reduce__(self):
        return _record, ("torch zip payload",)


class PlainPickle:
    def __reduce__(self):
        return _record, ("plain pickle payload",)


def _state(seed: int) -> dict:
    """A small real checkpoint like the trainer's: model, Adam state, scalars, history, meta."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 28, 28)).square().mean().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": seed,
        "profile": "smoke",
        "history": [[0, 1.5, -0.25], [1, 1.0, 0.5]],
        "meta": {"student": "cnn", "grad": True},
    }


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _differs(a, b) -> bool:
    try:
        _assert_same(a, b)
    except AssertionError:
        return True
    return False


def _conv_weight_offset(path) -> tuple[int, int]:
    """Byte offset and length of the largest stored tensor's data inside the torch zip."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    return start, info.file_size


def flip_tensor_bytes(path):
    size, before = path.stat().st_size, torch.load(path, weights_only=True)
    start, length = _conv_weight_offset(path)
    data = bytearray(path.read_bytes())
    mid = start + length // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size
    # the silent case: torch itself does not check the CRCs and loads wrong weights
    assert _differs(torch.load(path, weights_only=True), before)


def truncate_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncate_tail(path):
    path.write_bytes(path.read_bytes()[:-10])


def empty(path):
    path.write_bytes(b"")


def random_bytes(path):
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes()
    )


def plain_pickle(path):
    with open(path, "wb") as f:
        pickle.dump({"model": PlainPickle()}, f)


def torch_zip_payload(path):
    torch.save({"model": Payload()}, path)
    assert zipfile.ZipFile(path).testzip() is None  # an intact archive: only the unpickler can refuse it


def zip_not_torch(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")


DAMAGE = [
    flip_tensor_bytes,
    truncate_half,
    truncate_tail,
    empty,
    random_bytes,
    plain_pickle,
    torch_zip_payload,
    zip_not_torch,
]


@pytest.fixture
def saved_twice(tmp_path):
    """``ckpt.pt`` holds state 2 and ``ckpt.prev.pt`` state 1."""
    path = tmp_path / "ckpt.pt"
    atomic_save(_state(1), path)
    atomic_save(_state(2), path)
    return path


def test_round_trip_equals(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save(_state(1), path)
    loaded = load_checkpoint(path)
    _assert_same(_state(1), loaded)
    assert not _differs(loaded, _state(1)) and _differs(loaded, _state(2))  # the comparison can fail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # first save: nothing to keep


def test_saving_keeps_exactly_one_previous_file(tmp_path):
    path = tmp_path / "baseline.pt"
    for seed in (1, 2, 3):
        atomic_save(_state(seed), path)
    assert previous_path(path) == tmp_path / "baseline.prev.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.prev.pt", "baseline.pt"]  # no temp files
    _assert_same(load_checkpoint(path), _state(3))
    _assert_same(load_checkpoint(previous_path(path)), _state(2))
    assert checkpoints.is_previous(previous_path(path)) and not checkpoints.is_previous(path)


def test_keep_previous_false_writes_no_previous_file(tmp_path):
    path = tmp_path / "samples.pt"
    atomic_save({"x": torch.ones(3)}, path, keep_previous=False)
    atomic_save({"x": torch.zeros(3)}, path, keep_previous=False)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.pt"]


def test_previous_file_is_kept_without_hard_links(saved_twice, monkeypatch):
    """Filesystems without hard links (Google Drive on Colab): the previous file is copied."""

    def no_link(*args, **kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(checkpoints.os, "link", no_link)
    atomic_save(_state(3), saved_twice)
    _assert_same(load_checkpoint(previous_path(saved_twice)), _state(2))
    _assert_same(load_checkpoint(saved_twice), _state(3))
    assert len(list(saved_twice.parent.iterdir())) == 2


def test_failed_final_rename_leaves_a_good_checkpoint(saved_twice, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if str(dst) == str(saved_twice):
            raise OSError("killed before the new file was put in place")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(OSError):
        atomic_save(_state(3), saved_twice)
    _assert_same(load_checkpoint(saved_twice), _state(2))
    _assert_same(load_checkpoint(previous_path(saved_twice)), _state(2))
    assert len(list(saved_twice.parent.iterdir())) == 2  # the temporary file is gone


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_checkpoint_is_refused_clearly(saved_twice, damage):
    UNPICKLED.clear()
    damage(saved_twice)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved_twice)
    err = info.value
    msg = str(err)
    assert isinstance(err, RuntimeError) and err.path == saved_twice
    assert str(saved_twice) in msg and "Delete" in msg and "retrain" in msg
    assert str(previous_path(saved_twice)) in msg and "restore_previous" in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no torch advice shown
    assert UNPICKLED == []  # the payload never ran
    # the previous good checkpoint is still there and loads
    _assert_same(load_checkpoint(previous_path(saved_twice)), _state(1))


@pytest.mark.parametrize("damage", [flip_tensor_bytes, torch_zip_payload], ids=lambda f: f.__name__)
def test_restore_previous_after_damage(saved_twice, damage):
    damage(saved_twice)
    assert restore_previous(saved_twice) == saved_twice
    _assert_same(load_checkpoint(saved_twice), _state(1))
    assert not previous_path(saved_twice).exists()


def test_damaged_file_never_replaces_the_good_previous_one(saved_twice):
    flip_tensor_bytes(saved_twice)
    with pytest.warns(UserWarning, match="damaged"):
        atomic_save(_state(3), saved_twice)  # the trainer saves again from its good in-memory state
    _assert_same(load_checkpoint(saved_twice), _state(3))
    _assert_same(load_checkpoint(previous_path(saved_twice)), _state(1))


def test_damage_without_previous_file_says_so(tmp_path):
    path = tmp_path / "classifier.pt"
    atomic_save(_state(1), path)
    data = bytearray(path.read_bytes())
    data[_conv_weight_offset(path)[0] + 100] ^= 0x01  # a single bit of a weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC32") as info:
        load_checkpoint(path)
    assert "no previous checkpoint" in str(info.value) and "restore_previous" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        restore_previous(path)


def test_restore_refuses_a_damaged_previous_file(saved_twice):
    flip_tensor_bytes(previous_path(saved_twice))
    with pytest.raises(CheckpointError) as info:
        restore_previous(saved_twice)
    assert str(previous_path(saved_twice)) in str(info.value)
    _assert_same(load_checkpoint(saved_twice), _state(2))  # the newer file was not touched
    truncate_half(saved_twice)
    with pytest.raises(CheckpointError, match="damaged as well"):
        load_checkpoint(saved_twice)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


def test_runtime_does_not_reexport_the_checkpoint_functions():
    assert not hasattr(runtime, "atomic_save") and not hasattr(runtime, "load_checkpoint")
