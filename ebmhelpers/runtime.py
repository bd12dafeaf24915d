"""Where things run and where they are stored: device, seeding, folders, atomic checkpoints.

Folders default to the repository checkout and can each be moved by an environment variable,
e.g. ``EBM_CHECKPOINT_DIR=/content/drive/MyDrive/ebm`` on Colab so that checkpoints survive a
disconnect.
"""

from __future__ import annotations

import itertools
import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .profiles import Profile, get_profile


def repo_root() -> Path:
    """The checkout this series runs in: ``EBM_HOME``, else the parent of the package."""
    if "EBM_HOME" in os.environ:
        return Path(os.environ["EBM_HOME"]).resolve()
    return Path(__file__).resolve().parents[1]


def _dir(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root() -> Path:
    """Dataset root holding ``MNIST/raw`` and ``FashionMNIST/raw`` (``EBM_DATA_ROOT``)."""
    return _dir("EBM_DATA_ROOT", repo_root() / "data")


def checkpoint_dir(profile: Profile) -> Path:
    """Checkpoints of one profile (``EBM_CHECKPOINT_DIR``/<profile>)."""
    return _dir("EBM_CHECKPOINT_DIR", repo_root() / "checkpoints") / profile.name


def _profile_subdir(root: Path, profile: Profile) -> Path:
    path = root / profile.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(profile: Profile) -> Path:
    """Tidy result tables of one profile, read by the final comparison (``EBM_RESULTS_DIR``)."""
    return _profile_subdir(_dir("EBM_RESULTS_DIR", repo_root() / "results"), profile)


def figures_dir(profile: Profile) -> Path:
    """Figures written by the notebooks of one profile (``EBM_FIGURES_DIR``)."""
    return _profile_subdir(_dir("EBM_FIGURES_DIR", repo_root() / "figures"), profile)


def get_device(name: str | None = None) -> torch.device:
    """CUDA when present, else CPU; ``EBM_DEVICE`` or ``name`` overrides."""
    name = name or os.environ.get("EBM_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of a model's first parameter or buffer; CPU for one without any (int8)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """A human-readable name of the hardware behind ``device``, for labelling numbers."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({torch.get_num_threads()} threads)"


AUTO_AMP = "auto"  # a profile's amp_dtype that autocast_dtype resolves on the device in use
BF16_MIN_CAPABILITY = 8  # CUDA compute capability (major) with bf16 tensor cores: Ampere and later


def autocast_dtype(device: torch.device | str) -> str | None:
    """The autocast dtype SGLD uses on ``device`` when a profile says ``"auto"``.

    None (fp32) on the CPU; ``"bf16"`` on CUDA GPUs of compute capability 8 or more (A100, L4,
    H100); ``"fp16"`` on older ones (a Colab T4 is 7.5). The capability decides, not
    ``torch.cuda.is_bf16_supported()``, which reports True on a T4 where bf16 is emulated and slow.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return "bf16" if major >= BF16_MIN_CAPABILITY else "fp16"


def resolve_amp_dtype(amp_dtype: str | None, device: torch.device | str) -> str | None:
    """``amp_dtype`` itself, unless it is ``"auto"``: then :func:`autocast_dtype` of ``device``."""
    return autocast_dtype(device) if amp_dtype == AUTO_AMP else amp_dtype


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a resumed run needs, as tensors/lists so ``weights_only`` loads it."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["numpy"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))


# Checkpoints (atomic writes, verified loads, the kept previous file) live in .checkpoints;
# re-exported here so that ``from ebmhelpers.runtime import atomic_save, load_checkpoint`` keeps working.
from .checkpoints import atomic_save, load_checkpoint  # noqa: E402,F401


@dataclass(frozen=True)
class Context:
    """What a notebook runs with: the profile, the device and the folders for its outputs."""

    profile: Profile
    device: torch.device

    @property
    def checkpoints(self) -> Path:
        return checkpoint_dir(self.profile)

    @property
    def results(self) -> Path:
        return results_dir(self.profile)

    @property
    def figures(self) -> Path:
        return figures_dir(self.profile)

    @property
    def hardware(self) -> str:
        return device_name(self.device)

    def label(self) -> str:
        """``profile=..., hardware`` string for figure titles and table captions."""
        return f"profile={self.profile.name}, {self.hardware}"


def start(profile: str | None = None, device: str | None = None, verbose: bool = True) -> Context:
    """Open a notebook: pick profile and device, seed everything, print what runs where."""
    ctx = Context(get_profile(profile), get_device(device))
    seed_everything(ctx.profile.seed)
    if verbose:
        import torchvision

        print(f"profile : {ctx.profile.name} - {ctx.profile.description}")
        print(f"device  : {ctx.device} ({ctx.hardware})")
        print(
            f"versions: python {sys.version.split()[0]}, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, numpy {np.__version__}"
        )
    return ctx
