"""Atomic, verified checkpoints: a checkpoint is written whole or not at all, is checked for damage
before it is unpickled, and the previous good one is kept beside it.

``torch.save`` writes a zip archive whose members each carry a CRC32, but ``torch.load`` does not
check them: a file with bytes flipped inside a tensor loads without error and with wrong weights.
:func:`load_checkpoint` therefore reads the archive once with :mod:`zipfile` (every CRC checked)
before ``torch.load(..., weights_only=True)`` unpickles it, and refuses a damaged or foreign file with
:class:`CheckpointError`. :func:`atomic_save` keeps the file it replaces as ``<name>.prev<suffix>``
(``baseline.pt`` -> ``baseline.prev.pt``); nothing falls back to it on its own, the user resumes from
it explicitly with :func:`restore_previous`.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import struct
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import torch

PREVIOUS_TAG = ".prev"  # baseline.pt -> baseline.prev.pt

# what zipfile raises on a damaged archive (BadZipFile for most damage, the others on odd headers)
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    ValueError,
    NotImplementedError,
    zlib.error,
    struct.error,
    OverflowError,
)


class CheckpointError(RuntimeError):
    """A checkpoint file that is damaged or is not a tensors-only torch checkpoint; it is never loaded."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"checkpoint {self.path} cannot be used: {problem}. {_advice(self.path)}")


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_save` keeps the checkpoint it replaced: ``baseline.pt`` -> ``baseline.prev.pt``."""
    path = Path(path)
    return path.with_name(path.stem + PREVIOUS_TAG + path.suffix)


def is_previous(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a kept previous checkpoint (for code that lists checkpoint folders)."""
    return Path(path).stem.endswith(PREVIOUS_TAG)


def _advice(path: Path) -> str:
    """What the user can do about an unusable ``path``; never suggests loading it unsafely."""
    if is_previous(path):
        return f"Delete {path}: it is a kept previous checkpoint, only used when restored."
    prev = previous_path(path)
    delete = f"Delete {path} and run again to retrain it"
    if not prev.exists():
        return f"{delete} (no previous checkpoint {prev.name} was kept)."
    try:
        verify(prev)
    except (CheckpointError, OSError):
        return f"{delete}; the previous checkpoint {prev} is damaged as well."
    return (
        f"{delete}, or resume from the previous good checkpoint {prev}, which is kept: "
        f"`ebmhelpers.checkpoints.restore_previous({str(path)!r})` puts it back in place."
    )


def _check_archive(f: IO[bytes], path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``f`` is a complete torch zip archive with every CRC intact."""
    if f.seek(0, os.SEEK_END) == 0:
        raise CheckpointError(path, "the file is empty")
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as archive:
            names = archive.namelist()
            if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
                raise CheckpointError(path, "it is a zip archive but not a torch checkpoint (no <name>/data.pkl)")
            bad = archive.testzip()  # reads every member once and checks its CRC32
    except _ZIP_ERRORS as err:
        problem = f"it is not a complete zip archive: truncated, or not written by torch.save ({err})"
        raise CheckpointError(path, problem) from None
    if bad is not None:
        raise CheckpointError(path, f"its member {bad} fails the CRC32 check: the file is damaged")


def verify(path: str | os.PathLike) -> None:
    """Check ``path`` without unpickling it: a complete, undamaged torch zip archive, or
    :class:`CheckpointError`. Costs one read of the file (CRC32 of every member)."""
    path = Path(path)
    with open(path, "rb") as f:  # a missing file raises FileNotFoundError
        _check_archive(f, path)


def _load_problem(err: Exception) -> str:
    """A short reason from a ``torch.load`` error, without torch's advice to load unsafely."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)", text)
    if found:
        return f"it holds objects other than tensors and plain containers ({found.group(1).strip()})"
    return f"torch.load refused it ({text.splitlines()[0] if text else type(err).__name__})"


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Any:
    """Load a checkpoint written by :func:`atomic_save`: verified first (see :func:`verify`), then
    ``torch.load(..., weights_only=True)`` of the same open file.

    Raises :class:`CheckpointError` (naming the file and the previous good checkpoint, if kept) when
    the file is damaged, truncated, not a torch archive or holds more than tensors;
    ``FileNotFoundError`` when it is missing.
    """
    path = Path(path)
    with open(path, "rb") as f:
        _check_archive(f, path)
        f.seek(0)
        try:
            return torch.load(f, map_location=device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as err:
            raise CheckpointError(path, _load_problem(err)) from None


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every OS/filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _keep_previous(path: Path) -> None:
    """Make ``previous_path(path)`` a copy of ``path`` (a hard link, else a copied file), atomically.

    ``path`` stays in place throughout. A damaged ``path`` is not kept, so it never replaces a good
    previous file."""
    try:
        verify(path)
    except CheckpointError as err:
        warnings.warn(
            f"overwriting a damaged checkpoint; {previous_path(path).name} is left as it was: {err}", stacklevel=3
        )
        return
    prev = previous_path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prev.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(path, tmp)  # free: the old file's data stays where it is
        except OSError:  # e.g. a filesystem without hard links (Google Drive on Colab)
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
        os.replace(tmp, prev)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike, keep_previous: bool = True) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``.

    A run killed mid-write leaves the existing checkpoint intact, never a truncated one. With
    ``keep_previous`` the file being replaced is first kept as :func:`previous_path` (when it
    verifies), so one damaged newest file never loses the earlier good one: at every moment
    ``path`` exists, and after the first save a complete good file always does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary file
        if keep_previous and path.exists():
            _keep_previous(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def restore_previous(path: str | os.PathLike) -> Path:
    """Resume from the kept previous checkpoint: verify ``previous_path(path)`` and move it over
    ``path`` (atomically; the damaged newer file is discarded). Only ever called by the user,
    e.g. after :func:`load_checkpoint` raised :class:`CheckpointError`; returns ``path``.
    """
    path = Path(path)
    prev = previous_path(path)
    if not prev.exists():
        raise FileNotFoundError(f"no previous checkpoint {prev} to restore: delete {path} and run again to retrain")
    verify(prev)
    os.replace(prev, path)
    _fsync_dir(path.parent)
    return path
