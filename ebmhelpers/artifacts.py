"""Artifacts that fit the device machine's transfer limits: checksummed, split archives, and the
trained baseline in a compact form.

A lent GPU runs each command on a fresh machine: what a later command needs must come back
from the earlier one (at most 8 files of at most 16 MiB) and travel to the next as a carried
folder (the working tree and carried paths together at most 64 MiB). Two tools meet that:

* :func:`pack` writes files and folders as one gzipped tar, cut into numbered pieces of at most
  ``max_bytes``, plus a small JSON manifest with the sha256 of the whole archive and of each
  piece; it refuses to write more than ``max_files`` files. :func:`unpack` joins the pieces,
  checks every checksum before anything is extracted (a damaged or missing piece is refused by
  name) and extracts only plain files and folders inside the destination.
* :func:`export_baseline` keeps what later notebooks need of a *finished* PCD run in about a
  sixth of its checkpoint: the weights rounded to bf16 (stored as two byte planes, which gzip
  compresses better than interleaved bytes), the replay buffer quantised to uint8, and the
  history, rollbacks, scheduler, RNG states and position as they are. :func:`restore_baseline`
  writes it back as an ordinary checkpoint that ``PCDTrainer.load`` reads and finds done. Adam's
  moment estimates are not kept (they are twice the weights): the restored optimizer starts
  fresh, which matters only to a run that trains on from it, and nothing does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from .checkpoints import atomic_save, load_checkpoint

MiB = 2**20
DEFAULT_MAX_BYTES = 16 * MiB  # the largest file a device command returns
DEFAULT_MAX_FILES = 8  # the most files a device command returns
FORMAT = "ebmhelpers-artifact/1"
MANIFEST_SUFFIX = ".manifest.json"
PIECE_INFIX = ".tar.gz.part"
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device returns: letters, digits, '.', '_', '-'
_CHUNK = MiB


class ArtifactError(RuntimeError):
    """An archive that cannot be written within its limits, or a piece set that is damaged,
    incomplete or unsafe to extract; nothing is extracted from it."""


def _check_name(name: str) -> None:
    if not SAFE_NAME.match(name):
        raise ArtifactError(f"artifact name {name!r} may hold only letters, digits, '.', '_' and '-'")


def manifest_path(out_dir: str | os.PathLike, name: str) -> Path:
    """Where :func:`pack` writes the manifest of artifact ``name``."""
    return Path(out_dir) / f"{name}{MANIFEST_SUFFIX}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Plain files and folders only, without the packer's user names (links are refused)."""
    if not (info.isfile() or info.isdir()):
        raise ArtifactError(f"{info.name} is not a plain file or folder (links and devices are not packed)")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str = "artifact",
    max_files: int = DEFAULT_MAX_FILES,
    root: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
    compresslevel: int = 6,
) -> Path:
    """Pack ``paths`` (files or folders inside ``root``, default the working directory; stored
    relative to it) into ``out_dir`` as ``<name>.tar.gz.partNN`` pieces of at most ``max_bytes``
    and ``<name>.manifest.json``; returns the manifest's path.

    Raises :class:`ArtifactError` before anything is written to ``out_dir`` when the pieces plus
    the manifest would be more than ``max_files`` files, or a path is missing, outside ``root``
    or a link. Pieces of an earlier artifact of the same name in ``out_dir`` are removed; the
    manifest is written last, so a manifest means a complete set. ``meta`` (plain JSON) is stored
    in the manifest.
    """
    _check_name(name)
    if max_bytes < 1 or max_files < 2:
        raise ArtifactError(f"need max_bytes >= 1 and max_files >= 2 (a piece and the manifest), "
                            f"got {max_bytes}, {max_files}")
    root = Path(root if root is not None else os.getcwd()).resolve()
    members: list[tuple[Path, str]] = []
    for p in paths:
        path = Path(p) if Path(p).is_absolute() else root / p
        if not path.exists():
            raise ArtifactError(f"nothing to pack at {path}")
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            raise ArtifactError(f"{path} is outside the archive's root {root}") from None
        if path.is_symlink():
            raise ArtifactError(f"{path} is a link; links are not packed")
        members.append((path, rel.as_posix()))
    if not members:
        raise ArtifactError(f"artifact {name!r}: no paths to pack")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="ebm-pack-") as tmp:
        archive = Path(tmp) / f"{name}.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=compresslevel) as tar:
            for path, rel in members:
                tar.add(path, arcname=rel, recursive=True, filter=_tar_filter)
        size = archive.stat().st_size
        n_pieces = max(1, math.ceil(size / max_bytes))
        if n_pieces + 1 > max_files:
            raise ArtifactError(
                f"artifact {name!r} is {size / MiB:.1f} MiB compressed: {n_pieces} pieces of at most "
                f"{max_bytes / MiB:.1f} MiB plus the manifest make {n_pieces + 1} files, more than max_files={max_files} "
                f"(a device command returns at most {DEFAULT_MAX_FILES} files); pack less"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [manifest_path(out_dir, name), *out_dir.glob(f"{name}{PIECE_INFIX}*")]:
            stale.unlink(missing_ok=True)
        pieces, whole = [], hashlib.sha256()
        with open(archive, "rb") as src:
            for i in range(n_pieces):
                piece = out_dir / f"{name}{PIECE_INFIX}{i:02d}"
                digest, written = hashlib.sha256(), 0
                with open(piece, "wb") as dst:
                    while written < max_bytes and (chunk := src.read(min(_CHUNK, max_bytes - written))):
                        dst.write(chunk)
                        digest.update(chunk)
                        whole.update(chunk)
                        written += len(chunk)
                pieces.append({"file": piece.name, "bytes": written, "sha256": digest.hexdigest()})
    manifest = {"format": FORMAT, "name": name, "archive_bytes": size, "archive_sha256": whole.hexdigest(),
                "pieces": pieces, "paths": [rel for _, rel in members], "meta": meta or {},
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    target = manifest_path(out_dir, name)
    tmp_manifest = target.with_name(target.name + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp_manifest, target)
    return target


def read_manifest(src_dir: str | os.PathLike, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The manifest of artifact ``name`` in ``src_dir`` (or of the only artifact there) and its content."""
    src_dir = Path(src_dir)
    if name is not None:
        _check_name(name)
        path = manifest_path(src_dir, name)
        if not path.exists():
            raise ArtifactError(f"no manifest {path.name} in {src_dir}: the artifact {name!r} is missing or incomplete")
    else:
        found = sorted(src_dir.glob(f"*{MANIFEST_SUFFIX}"))
        if len(found) != 1:
            raise ArtifactError(f"expected one *{MANIFEST_SUFFIX} in {src_dir}, found {[p.name for p in found]}; "
                                "name the artifact")
        path = found[0]
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"manifest {path} cannot be read: {err}") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an {FORMAT} manifest (format {manifest.get('format')!r})")
    for piece in manifest["pieces"]:
        _check_name(piece["file"])  # a manifest cannot point outside its folder
    return path, manifest


def _join(src_dir: Path, manifest: dict[str, Any], target: Path | None) -> None:
    """Check every piece (presence, size, sha256) and the whole archive's sha256, writing the
    joined archive to ``target`` when given; raises :class:`ArtifactError` naming the first bad piece."""
    missing = [p["file"] for p in manifest["pieces"] if not (src_dir / p["file"]).is_file()]
    if missing:
        raise ArtifactError(f"artifact {manifest['name']!r} in {src_dir} is incomplete: "
                            f"missing piece(s) {', '.join(missing)}")
    whole = hashlib.sha256()
    out = open(target, "wb") if target is not None else None
    try:
        for piece in manifest["pieces"]:
            path = src_dir / piece["file"]
            digest, size = hashlib.sha256(), 0
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    whole.update(chunk)
                    size += len(chunk)
                    if out is not None:
                        out.write(chunk)
            if size != piece["bytes"] or digest.hexdigest() != piece["sha256"]:
                raise ArtifactError(f"piece {piece['file']} of artifact {manifest['name']!r} in {src_dir} is damaged: "
                                    f"{size} bytes, sha256 {digest.hexdigest()[:12]}..., expected {piece['bytes']} bytes, "
                                    f"sha256 {piece['sha256'][:12]}...")  # fmt: skip
    finally:
        if out is not None:
            out.close()
    if whole.hexdigest() != manifest["archive_sha256"]:
        raise ArtifactError(f"artifact {manifest['name']!r} in {src_dir}: the joined pieces do not match "
                            "the archive's sha256")


def verify(src_dir: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """Check an artifact's pieces against its manifest without extracting; returns the manifest."""
    _, manifest = read_manifest(src_dir, name)
    _join(Path(src_dir), manifest, None)
    return manifest


def _safe_members(tar: tarfile.TarFile, only: Sequence[str] | None) -> list[tarfile.TarInfo]:
    """The archive's members, refused as a whole if any is not a plain file or folder, has an
    absolute path or a ``..`` part, or lies outside the ``only`` prefixes."""
    members = tar.getmembers()
    for m in members:
        path = PurePosixPath(m.name)
        if m.name.startswith(("/", "\\")) or path.is_absolute() or re.match(r"^[A-Za-z]:", m.name):
            raise ArtifactError(f"archive member {m.name!r} has an absolute path; refusing to extract")
        if ".." in path.parts or "\\" in m.name:
            raise ArtifactError(f"archive member {m.name!r} leaves the destination ('..'); refusing to extract")
        if not (m.isfile() or m.isdir()):
            raise ArtifactError(f"archive member {m.name!r} is not a plain file or folder; refusing to extract")
        if only is not None and not any(m.name == p.rstrip("/") or m.name.startswith(p.rstrip("/") + "/") for p in only):
            raise ArtifactError(f"archive member {m.name!r} lies outside {list(only)}; refusing to extract")
    return members


def unpack(
    src_dir: str | os.PathLike, dest: str | os.PathLike, name: str | None = None, only: Sequence[str] | None = None
) -> list[Path]:
    """Join, verify and extract artifact ``name`` (default: the only one) from ``src_dir`` into
    ``dest``; returns the files extracted.

    Every piece's size and sha256 and the whole archive's sha256 are checked first, and every
    member is checked (plain files and folders, relative paths without ``..``, inside the ``only``
    path prefixes when given) before the first file is written: a damaged, incomplete or unsafe
    set raises :class:`ArtifactError` and extracts nothing.
    """
    src_dir, dest = Path(src_dir), Path(dest)
    _, manifest = read_manifest(src_dir, name)
    with tempfile.TemporaryDirectory(prefix="ebm-unpack-") as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        _join(src_dir, manifest, archive)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = _safe_members(tar, only)
                dest.mkdir(parents=True, exist_ok=True)
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                for m in members:
                    tar.extract(m, dest, **extra)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ArtifactError(f"artifact {manifest['name']!r} in {src_dir} cannot be extracted: {err}") from None
    return [dest / m.name for m in members if m.isfile()]


def copy_artifact(src_dir: str | os.PathLike, dest_dir: str | os.PathLike, name: str | None = None) -> Path:
    """Verify artifact ``name`` in ``src_dir`` and copy its manifest and pieces into ``dest_dir``
    (to pass it on unopened, e.g. into the folder the next device command carries)."""
    path, manifest = read_manifest(src_dir, name)
    _join(Path(src_dir), manifest, None)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for piece in manifest["pieces"]:
        shutil.copyfile(Path(src_dir) / piece["file"], dest_dir / piece["file"])
    shutil.copyfile(path, dest_dir / path.name)
    return dest_dir / path.name


# ---- the trained baseline in a compact form ---------------------------------------------
COMPACT_FORMAT = "ebmhelpers-compact-pcd/1"
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def bf16_planes(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A state dict with every floating tensor rounded to bf16 and stored as two byte planes
    (all low bytes, then all high bytes: the high bytes hold sign and exponent and compress well
    apart from the noisy low bytes). Other tensors are kept as they are."""
    keys, shapes, dtypes, flat, other = [], [], [], [], {}
    for key, value in state_dict.items():
        if value.is_floating_point():
            keys.append(key)
            shapes.append(list(value.shape))
            dtypes.append(str(value.dtype))
            flat.append(value.detach().to("cpu", torch.bfloat16).reshape(-1))
        else:
            other[key] = value.detach().cpu()
    values = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.bfloat16)
    planes = values.view(torch.uint8).reshape(-1, 2).t().contiguous()
    return {"keys": keys, "shapes": shapes, "dtypes": dtypes, "planes": planes, "other": other, "order": list(state_dict)}


def from_bf16_planes(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict :func:`bf16_planes` stored: floating tensors in their original dtype with
    bf16-rounded values, the others unchanged, in the original key order."""
    values = packed["planes"].t().contiguous().view(torch.bfloat16).reshape(-1)
    out, start = {}, 0
    for key, shape, dtype in zip(packed["keys"], packed["shapes"], packed["dtypes"]):
        n = math.prod(shape)
        out[key] = values[start : start + n].reshape(shape).to(_DTYPES[dtype])
        start += n
    if start != len(values):
        raise ValueError(f"byte planes hold {len(values)} values, the layout {start}")
    out.update(packed["other"])
    return {k: out[k] for k in packed["order"]}


def quantize_images(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as uint8 (256 levels; error at most 1/255)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def dequantize_images(q: torch.Tensor) -> torch.Tensor:
    """The float images in [-1, 1] that :func:`quantize_images` stored."""
    return q.float() / 127.5 - 1


def export_baseline(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the compact form (module docstring) of a *finished* PCD checkpoint ``state`` (what
    ``PCDTrainer.state_dict()`` returns or ``load_checkpoint`` reads) to ``path``, atomically."""
    compact = {k: state[k] for k in ("scheduler", "rng", "epoch", "it", "step", "rollbacks", "history", "profile")}
    compact.update(
        format=COMPACT_FORMAT,
        model=bf16_planes(state["model"]),
        optimizer_param_groups=state["optimizer"]["param_groups"],
        buffer_uint8=quantize_images(state["buffer"]["samples"]),
    )
    atomic_save(compact, path, keep_previous=False)
    return Path(path)


def restore_baseline(compact_path: str | os.PathLike, ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """Write the checkpoint that :func:`export_baseline` compacted back to ``ckpt_path`` in the
    trainer's format (bf16-rounded weights, dequantised buffer, a fresh Adam state with the
    saved learning rate and betas) and return it. ``PCDTrainer.load`` reads it as done."""
    compact = load_checkpoint(compact_path)
    if compact.get("format") != COMPACT_FORMAT:
        raise ValueError(f"{compact_path} is not a compact PCD export (format {compact.get('format')!r})")
    state = {k: compact[k] for k in ("scheduler", "rng", "epoch", "it", "step", "rollbacks", "history", "profile")}
    state.update(
        model=from_bf16_planes(compact["model"]),
        optimizer={"state": {}, "param_groups": compact["optimizer_param_groups"]},
        buffer={"samples": dequantize_images(compact["buffer_uint8"])},
        restored_from={"file": Path(compact_path).name, "weights": "bf16-rounded", "buffer": "uint8 (256 levels)",
                       "optimizer": "fresh Adam moments"},  # fmt: skip
    )
    atomic_save(state, ckpt_path)
    return state
