"""Committed trained weights: train once, read fast, as tutorial 8 does.

Every model the notebooks of a profile train (the baseline, each fine-tuned pruned model, each
lottery-ticket round, each student) can be committed in ``ebmhelpers/pretrained/<profile>/`` with
a human-readable ``manifest.json``: one entry per model with its ``name``, ``kind``, ``file``,
``sha256``, ``architecture``, ``iterations``, training ``seconds``, ``hardware``, the ``command``
that trained it and the git ``commit`` of the code. ``python -m ebmhelpers train`` writes them
(:func:`commit`); the notebooks read them through the same functions that would otherwise train
(:func:`load`), so a reader's run scores and plots without training, unless ``EBM_TRAIN=1`` asks.

A file whose sha256 differs from its manifest entry, or whose architecture differs from the one
the profile builds, is refused with a one-line :class:`WeightsError` that names the file and the
command that regenerates it: never a silent retrain, never a silent mismatch.

The baseline's file holds the weights, the replay buffer rounded to 8 bits (the data's own
resolution), the training history and rollbacks, the snapshots the notebooks use and the metric
classifier; the others hold weights (pruning masks as booleans), the run's history and rollbacks.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import atomic_save, load_checkpoint
from .profiles import Profile

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MANIFEST = "manifest.json"
TRAIN_ENV = "EBM_TRAIN"  # "1": train every model even when committed weights exist
KINDS = ("baseline", "finetuned", "lottery", "student")


class WeightsError(RuntimeError):
    """A committed weight file that is missing, altered or built for another architecture. One line."""


def folder(profile_name: str) -> Path:
    """The folder of a profile's committed weights (it may not exist)."""
    return PRETRAINED_DIR / profile_name


def path_for(profile_name: str, name: str = "baseline") -> Path:
    """The committed file of model ``name`` of a profile (it may not exist)."""
    return folder(profile_name) / f"{name}.pt"


def retrain_command(profile_name: str, name: str) -> str:
    """The command that (re)trains and commits model ``name``."""
    return f"python -m ebmhelpers train --profile {profile_name} --model {name}"


def wants_training(train: bool | None = None) -> bool:
    """Whether to train instead of loading committed weights: ``train`` if given, else ``EBM_TRAIN``."""
    return train if train is not None else os.environ.get(TRAIN_ENV, "") == "1"


def read_manifest(profile_name: str) -> dict[str, dict[str, Any]]:
    """The manifest of a profile, ``name -> entry`` ({} when nothing is committed)."""
    path = folder(profile_name) / MANIFEST
    if not path.exists():
        return {}
    return {entry["name"]: entry for entry in json.loads(path.read_text())["models"]}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def architecture_of(state_dict: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Parameter names and shapes: what a committed file must share with the model it loads into."""
    return {k: list(v.shape) for k, v in state_dict.items()}


def parent_of(profile_name: str) -> str | None:
    """The sha256 of the profile's committed baseline, which every pruned model and student derives
    from (their entries record it as ``parent``); None when no baseline is committed."""
    entry = read_manifest(profile_name).get("baseline")
    return entry["sha256"] if entry else None


def is_fresh(profile_name: str, name: str, parent: str | None = None) -> bool:
    """Whether ``name`` is committed, its file matches its sha256, and (for a derived model) it was
    trained from ``parent`` (default: the committed baseline)."""
    entry = read_manifest(profile_name).get(name)
    path = folder(profile_name) / entry["file"] if entry else None
    if entry is None or not path.exists() or sha256(path) != entry["sha256"]:
        return False
    return entry["kind"] == "baseline" or entry.get("parent") == (parent or parent_of(profile_name))


def load(
    profile_name: str,
    name: str = "baseline",
    architecture: str | None = None,
    model: torch.nn.Module | None = None,
    parent: str | None = None,
    command: str | None = None,
) -> dict[str, Any] | None:
    """The committed state of model ``name`` of a profile, or None when the manifest has no entry.

    Verified first: the file exists, its sha256 is the manifest's, its manifest ``architecture``
    is ``architecture`` (when given), it derives from the baseline whose sha256 is ``parent`` (when
    given) and its weights have ``model``'s names and shapes (when given); otherwise :class:`WeightsError`,
    naming ``command`` (default: :func:`retrain_command`) as the one that regenerates the file."""
    entry = read_manifest(profile_name).get(name)
    if entry is None:
        return None
    path = folder(profile_name) / entry["file"]
    again = f"regenerate it with `{command or retrain_command(profile_name, name)}`"
    if not path.exists():
        raise WeightsError(f"{path} is listed in {MANIFEST} but missing; {again}")
    if sha256(path) != entry["sha256"]:
        raise WeightsError(f"{path} does not match its sha256 in {MANIFEST} (altered or damaged); {again}")
    if architecture is not None and entry.get("architecture") != architecture:
        raise WeightsError(
            f"{path} holds a {entry.get('architecture')!r} but profile {profile_name!r} builds "
            f"{architecture!r}; {again}"
        )
    if parent is not None and entry.get("parent") != parent:
        raise WeightsError(f"{path} was trained from another baseline than the committed one; {again}")
    state = load_checkpoint(path)
    if model is not None:
        expected = architecture_of({k: v for k, v in model.state_dict().items()})
        found = architecture_of(decode_masks(state["model"]))
        if expected != found:
            differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
            raise WeightsError(
                f"{path} has other weights than the model it loads into ({', '.join(differ[:3])}"
                f"{'...' if len(differ) > 3 else ''}); {again}"
            )
    return state


MASK_BITS = "::bits"  # a pruning mask packed 8 entries to a byte, with its shape under "<name>::shape"


def encode_masks(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with pruning masks (``*_mask``, 0/1 floats) packed to one bit per entry, a 32nd of the bytes."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("_mask"):
            out[k + MASK_BITS] = torch.from_numpy(np.packbits(v.detach().bool().cpu().numpy().ravel()))
            out[k + "::shape"] = torch.tensor(list(v.shape))
        else:
            out[k] = v.detach().cpu().contiguous()
    return out


def decode_masks(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`encode_masks` (boolean masks, an older way to store them, are read too)."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith(MASK_BITS):
            name = k.removesuffix(MASK_BITS)
            shape = state_dict[name + "::shape"].tolist()
            bits = np.unpackbits(v.numpy(), count=int(np.prod(shape)))
            out[name] = torch.from_numpy(bits.astype(np.float32)).reshape(shape)
        elif not k.endswith("::shape"):
            out[k] = v.float() if k.endswith("_mask") else v
    return out


def pack_history(rows: list[list[float]]) -> torch.Tensor:
    """A run's per-iteration history as one float32 tensor (a third of the bytes of pickled floats)."""
    return torch.tensor(rows, dtype=torch.float32) if rows else torch.zeros(0)


def unpack_history(history: torch.Tensor | list) -> list[list[float]]:
    """The inverse of :func:`pack_history` (a plain list of rows is read as it is)."""
    return history.tolist() if isinstance(history, torch.Tensor) else [list(r) for r in history]


def hardware() -> str:
    """The CPU or GPU this process trains on, for the manifest."""
    from .runtime import device_name, get_device

    return device_name(get_device())


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the package's checkout (with ``+changes`` when its code differs from it), or
    ``unknown``; read once per process, so that it names the code the process imported."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "ebmhelpers",
                ":(exclude)ebmhelpers/pretrained",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()  # the committed weights are this job's output, not code
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def commit(
    profile_name: str,
    name: str,
    kind: str,
    state: dict[str, Any],
    *,
    architecture: str,
    iterations: int,
    seconds: float,
    command: str,
    trained_on: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``state`` as the committed file of model ``name`` (replacing an older one) and its entry in
    the manifest (``extra`` adds fields, e.g. the seed or the pruning ratio); returns the entry.
    ``trained_on``: the hardware that trained it, where that was another process (default: this one's)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    path = path_for(profile_name, name)
    atomic_save(state, path, keep_previous=False)
    entry = {
        "name": name,
        "kind": kind,
        "file": path.name,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "architecture": architecture,
        "iterations": int(iterations),
        "seconds": round(float(seconds), 3),
        "hardware": trained_on or hardware(),
        "command": command,
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        **extra,
    }
    models = read_manifest(profile_name) | {name: entry}
    _write_json(
        folder(profile_name) / MANIFEST, {"profile": profile_name, "models": [models[k] for k in sorted(models)]}
    )
    return entry


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def encode_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as uint8 (256 levels, the data's own resolution)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def decode_uint8(images: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`encode_uint8` (to within half a level)."""
    return images.float() / 127.5 - 1.0


def baseline_state(
    checkpoints: Path,
    profile_name: str,
    snapshot: str | None,
    weights: str = "trained",
    keep: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The committed baseline's state from a training checkpoint folder: the final ``baseline.pt``,
    or the kept snapshot ``baseline_<snapshot>.pt`` (chosen on validation digits), with the trained
    weights or one of its weight averages (``weights``, e.g. ``ema0.998``); the history is cut at its
    step, and the snapshots taken before it are kept (those tagged in ``keep``, when given)."""
    full = load_checkpoint(checkpoints / "baseline.pt")
    snaps = {p.stem.removeprefix("baseline_"): p for p in checkpoints.glob("baseline_*.pt") if ".prev" not in p.name}
    if snapshot is not None:
        chosen = load_checkpoint(snaps[snapshot])
        step, buffer = int(chosen["step"]), chosen["buffer_uint8"]
    else:
        chosen = full
        step, buffer = int(full["step"]), encode_uint8(full["buffer"]["samples"])
    model = chosen["model"] if weights == "trained" else {**chosen["model"], **chosen["averages"][weights]}
    kept = {}
    committed = (load(profile_name, "baseline") or {}).get("snapshots", {})  # a continued run's earlier snapshots
    for tag in snaps if keep is None else keep:
        if tag in snaps:
            state = load_checkpoint(snaps[tag])
            if int(state["step"]) <= step:
                kept[tag] = {"model": state["model"], "step": int(state["step"])}
        elif tag in committed and int(committed[tag]["step"]) <= step:
            kept[tag] = committed[tag]
    history = [row for row in full["history"] if row[0] < step]
    per_epoch = len([r for r in full["history"] if r[1] == 0]) or 1
    state = {
        "profile": profile_name,
        "model": {k: v.contiguous() for k, v in model.items()},
        "buffer_uint8": buffer,
        "step": step,
        "epoch": step // per_epoch,
        "it": step % per_epoch,
        "history": history,
        "rollbacks": [r for r in full["rollbacks"] if r["resumed_from_step"] < step],
        "snapshots": kept,
        "weights": weights,
    }
    classifier = checkpoints / "classifier.pt"
    if classifier.exists():
        state["classifier"] = load_checkpoint(classifier)["model"]
    else:  # a run kept in its own folder (a long run) is scored by the profile's classifier
        committed = load(profile_name, "baseline")
        if committed is None or "classifier" not in committed:
            raise WeightsError(f"no metric classifier in {checkpoints} and none committed for profile {profile_name!r}")
        state["classifier"] = committed["classifier"]
    return state


def commit_baseline(
    profile: Profile,
    checkpoints: Path,
    *,
    seconds: float,
    command: str,
    snapshot: str | None = None,
    weights: str = "trained",
    keep: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Commit the baseline of the training checkpoint folder ``checkpoints`` as the profile's
    ``baseline``: :func:`baseline_state` (its final weights or the kept ``snapshot``, trained or a
    weight average, with the snapshots in ``keep``) at the step it holds, with the wall ``seconds``
    of its training and the ``command`` that trained it. Returns the manifest entry."""
    state = baseline_state(checkpoints, profile.name, snapshot, weights, keep) | {"seconds": seconds}
    return commit(
        profile.name,
        "baseline",
        "baseline",
        state,
        architecture=profile.baseline,
        iterations=state["step"],
        seconds=seconds,
        command=command,
        weights=weights,
    )
