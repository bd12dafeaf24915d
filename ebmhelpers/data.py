"""MNIST and Fashion-MNIST as single tensors in [-1, 1].

No DataLoader: the whole training set is one uint8 tensor of 47 MB, converted once and kept on
the training device (on CUDA it lives in GPU memory and batches are indexed there, so no host
round trips). torchvision does the download and the parsing of the IDX files; offline, point
``EBM_DATA_ROOT`` at a folder holding ``MNIST/raw/*-ubyte`` (see ``data/README.md``).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
import torchvision

from .runtime import data_root

DATASETS = {"mnist": torchvision.datasets.MNIST, "fashion": torchvision.datasets.FashionMNIST}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is neither on disk nor downloadable; the message names the folder."""


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] of shape (N, 28, 28) -> float (N, 1, 28, 28) in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.unsqueeze(1).float().div_(127.5).sub_(1.0)


def _raw_folder(name: str, root: Path) -> Path:
    return root / DATASETS[name].__name__ / "raw"


def load_dataset(
    name: str = "mnist",
    train: bool = True,
    root: str | Path | None = None,
    download: bool = True,
    subset: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] of shape (N, 1, 28, 28) and int64 labels, on ``device``.

    ``subset`` keeps a fixed random subset (the same for a given ``seed``) for small profiles.
    Raises :class:`DatasetNotFoundError` naming the expected folder when the files are missing
    and cannot be downloaded.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    root = Path(root) if root is not None else data_root()
    raw = _raw_folder(name, root)
    try:
        ds = DATASETS[name](str(root), train=train, download=download)
    except Exception as err:  # torchvision raises RuntimeError or URLError offline
        raise DatasetNotFoundError(
            f"{name} not found in {raw} and it could not be downloaded ({err}). "
            f"Put the four IDX files ({', '.join(RAW_FILES)}) there, uncompressed, or set "
            f"EBM_DATA_ROOT to a folder that holds {DATASETS[name].__name__}/raw/."
        ) from err
    images, labels = ds.data, ds.targets.long()
    if subset is not None and subset < len(images):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:subset]
        images, labels = images[idx], labels[idx]
    return to_unit_range(images).to(device), labels.to(device)


VAL_SEED = 12345  # the permutation that holds out validation digits (fixed for every profile)


def load_training_split(
    part: str,
    val_size: int,
    subset: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    with_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """MNIST training digits split into ``"fit"`` (what models train on) and ``"val"`` (the
    ``val_size`` digits held out to choose settings on; a fixed random subset, the same for
    every profile). ``subset`` then keeps a fixed random subset of the fit part."""
    if part not in ("fit", "val"):
        raise ValueError(f"part must be 'fit' or 'val', got {part!r}")
    images, labels = load_dataset("mnist", train=True)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(VAL_SEED))
    idx = order[:val_size] if part == "val" else order[val_size:].sort().values
    if part == "fit" and subset is not None and subset < len(idx):
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:subset]]
    images, labels = images[idx].to(device), labels[idx].to(device)
    return (images, labels) if with_labels else images


def install_offline_copy(source: str | Path, root: str | Path | None = None) -> Path:
    """Gunzip a folder of ``*-ubyte.gz`` files (``mnist/`` and ``fashion-mnist/``) into ``root``.

    This is the offline path used by CI: ``source`` is ``../shared/data``. Existing files are
    kept. Returns the data root.
    """
    source = Path(source)
    root = Path(root) if root is not None else data_root()
    for sub, name in (("mnist", "mnist"), ("fashion-mnist", "fashion")):
        src = source / sub
        if not src.is_dir():
            raise DatasetNotFoundError(f"no folder {src} with the gzipped {name} IDX files")
        raw = _raw_folder(name, root)
        raw.mkdir(parents=True, exist_ok=True)
        for fname in RAW_FILES:
            target = raw / fname
            if target.exists():
                continue
            with gzip.open(src / f"{fname}.gz", "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    return root


def batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Yield index tensors covering ``range(n)`` in a shuffled (or fixed) order."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
