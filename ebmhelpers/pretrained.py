"""Committed, pretrained baselines: "load if trained, else train", as tutorial 8 does.

A profile whose baseline takes longer to train than its notebooks should (the ``cpu`` profile's
CNN: about 75 minutes on one CPU thread) ships the trained result in ``ebmhelpers/pretrained/``:
the weights, the replay buffer rounded to 8 bits (the data's own resolution), the training history
and rollbacks, the kept snapshots' weights, and the metric classifier. :func:`install` turns them
into the ordinary checkpoints that :func:`~ebmhelpers.training.load_or_train_baseline` loads
(with fresh Adam moments: nothing trains on from them), unless the reader asks to train
(``EBM_TRAIN=1`` or ``train=True``). ``python -m ebmhelpers export-pretrained`` writes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .checkpoints import atomic_save, load_checkpoint

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
TRAIN_ENV = "EBM_TRAIN"  # "1": train the baseline even when pretrained weights are committed


def path_for(profile_name: str) -> Path:
    """The committed pretrained file of a profile (it may not exist)."""
    return PRETRAINED_DIR / f"{profile_name}.pt"


def wants_training(train: bool | None = None) -> bool:
    """Whether to train instead of installing the pretrained baseline: ``train`` if given, else ``EBM_TRAIN``."""
    return train if train is not None else os.environ.get(TRAIN_ENV, "") == "1"


def encode_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as uint8 (256 levels, the data's own resolution)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def decode_uint8(images: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`encode_uint8` (to within half a level)."""
    return images.float() / 127.5 - 1.0


def export(checkpoints: Path, profile_name: str, snapshot: str | None, note: dict[str, Any],
           out: Path | None = None) -> Path:
    """Write the pretrained file of ``profile_name`` from its checkpoint folder: the final
    ``baseline.pt``, or the kept snapshot ``baseline_<snapshot>.pt`` (e.g. ``epoch7``, chosen on
    validation digits), whose history is cut at its step. ``note`` records how it was trained."""
    full = load_checkpoint(checkpoints / "baseline.pt")
    snaps = {p.stem.removeprefix("baseline_"): p for p in checkpoints.glob("baseline_*.pt") if ".prev" not in p.name}
    if snapshot is not None:
        chosen = load_checkpoint(snaps[snapshot])
        step, model, buffer = int(chosen["step"]), chosen["model"], chosen["buffer_uint8"]
    else:
        step, model, buffer = int(full["step"]), full["model"], encode_uint8(full["buffer"]["samples"])
    kept = {}
    for tag, path in snaps.items():
        state = load_checkpoint(path)
        if int(state["step"]) <= step:
            kept[tag] = {"model": state["model"], "step": int(state["step"])}
    history = [row for row in full["history"] if row[0] < step]
    per_epoch = len([r for r in full["history"] if r[1] == 0]) or 1
    state = {"profile": profile_name, "model": model, "buffer_uint8": buffer, "step": step,
             "epoch": step // per_epoch, "it": step % per_epoch, "history": history,
             "rollbacks": [r for r in full["rollbacks"] if r["resumed_from_step"] < step],
             "snapshots": kept, "note": {k: str(v) for k, v in note.items()}}  # fmt: skip
    classifier = checkpoints / "classifier.pt"
    if classifier.exists():
        state["classifier"] = load_checkpoint(classifier)["model"]
    out = out or path_for(profile_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(state, out, keep_previous=False)
    return out


def load(profile_name: str) -> dict[str, Any] | None:
    """The pretrained state of a profile, or None when none is committed."""
    path = path_for(profile_name)
    return load_checkpoint(path) if path.exists() else None
