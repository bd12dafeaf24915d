"""Where things run and where they are stored: device, seeding, folders, and what a profile is
expected to cost on the device (the banner of :func:`start`).

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

from .profiles import ALLOW_SLOW_VAR, COUNTED_FLOPS, ENV_VAR, Profile, ProfileError, get_profile


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


# Dense peak FLOP/s by GPU name fragment and compute dtype (vendor data sheets, SXM parts).
PEAK_FLOPS = {
    "H100": {"fp32": 67e12, "bf16": 989e12},
    "H200": {"fp32": 67e12, "bf16": 989e12},
    "A100": {"fp32": 19.5e12, "bf16": 312e12},
    "T4": {"fp32": 8.1e12, "bf16": 65e12},  # T4 has no bf16 units; fp16 tensor-core peak
}
# ASSUMPTION, not a measurement: a GPU sustains 40% of its fp32 peak on these networks.
ASSUMED_EFFICIENCY = 0.4
ASSUMED_T4_FLOPS_PER_S = ASSUMED_EFFICIENCY * PEAK_FLOPS["T4"]["fp32"]
# Measured once, not per machine: ResNet18 fp32 SGLD ran 110 image-steps/s of 1.82e9 FLOPs on 2 threads
# of an AMD EPYC (`bench --speedups`, README), about 1e11 FLOP/s per thread.
CPU_FLOPS_PER_THREAD = 1.0e11


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (None when unknown, e.g. on a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks["bf16" if dtype in ("bf16", "fp16") else "fp32"]
    return None


def assumed_flops_per_s(device: torch.device) -> tuple[float, str]:
    """A sustained FLOP/s for ``device`` and how it was come by: on a GPU :data:`ASSUMED_EFFICIENCY`
    of its fp32 peak (a T4's when the GPU is not in :data:`PEAK_FLOPS`), on a CPU
    :data:`CPU_FLOPS_PER_THREAD` times PyTorch's threads. Both are assumptions until timed."""
    if device.type == "cuda":
        peak = peak_flops(device, "fp32")
        basis = "of its fp32 peak" if peak else "of a T4's fp32 peak (this GPU's is not known)"
        rate = ASSUMED_EFFICIENCY * (peak or PEAK_FLOPS["T4"]["fp32"])
        return rate, f"assumed {rate / 1e12:.3g} TFLOP/s, {ASSUMED_EFFICIENCY:.0%} {basis}"
    threads = torch.get_num_threads()
    rate = CPU_FLOPS_PER_THREAD * threads
    return rate, f"assumed {rate / 1e12:.2g} TFLOP/s on {threads} CPU thread(s) (ResNet18 SGLD, measured once)"


def duration_text(seconds: float) -> str:
    """Seconds as a short duration: "40 s", "12 min", "5.1 h", "3.5 days"."""
    if seconds < 60:
        return f"{seconds:.2g} s"
    if seconds < 3600:
        return f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.3g} h" if seconds < 48 * 3600 else f"{seconds / 86400:.3g} days"


def expected_cost(profile: Profile, device: torch.device) -> str | None:
    """One line: the profile's counted FLOPs (:data:`profiles.COUNTED_FLOPS`) and the time they mean on
    ``device``, labelled an estimate; None for a profile without a recorded count."""
    flops = COUNTED_FLOPS.get(profile.name)
    if flops is None:
        return None
    rate, basis = assumed_flops_per_s(device)
    return (
        f"{flops:.2g} FLOPs counted for the whole series, about {duration_text(flops / rate)} on this device "
        f"({basis}): an estimate until timed"
    )


def check_device(profile: Profile, device: torch.device) -> None:
    """Refuse a profile sized for a GPU (``needs_gpu``) on a CPU, with the estimated time and how to
    go on anyway (``EBM_ALLOW_SLOW=1``). One line, so the command line prints it as it is."""
    if not profile.needs_gpu or device.type == "cuda" or os.environ.get(ALLOW_SLOW_VAR) == "1":
        return
    cost = expected_cost(profile, device) or "no FLOP count recorded"
    raise ProfileError(
        f"profile {profile.name!r} (ResNet18) is sized for a GPU and this is a CPU: {cost}. "
        f"Choose the profile 'cpu' (--profile cpu or {ENV_VAR}=cpu), or set {ALLOW_SLOW_VAR}=1 "
        f"to run it here anyway"
    )


@dataclass(frozen=True)
class Context:
    """What a notebook runs with: the profile, the device and the folders for its outputs."""

    profile: Profile
    device: torch.device
    checkpoint_folder: Path | None = None  # a run kept apart from the profile's own (the recipe study's long runs)

    @property
    def checkpoints(self) -> Path:
        if self.checkpoint_folder is not None:
            self.checkpoint_folder.mkdir(parents=True, exist_ok=True)
            return self.checkpoint_folder
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
    """Open a notebook: pick profile and device, seed everything, print what runs where (and, for a
    profile sized for a GPU, what it is expected to cost here). Raises :class:`profiles.ProfileError`
    for an unknown profile, or for one sized for a GPU on a CPU (:func:`check_device`)."""
    ctx = Context(get_profile(profile), get_device(device))
    check_device(ctx.profile, ctx.device)
    seed_everything(ctx.profile.seed)
    if verbose:
        import torchvision

        print(f"profile : {ctx.profile.name} - {ctx.profile.description}")
        print(f"device  : {ctx.device} ({ctx.hardware})")
        cost = expected_cost(ctx.profile, ctx.device)
        if cost:
            print(f"expected: {cost}")
        print(
            f"versions: python {sys.version.split()[0]}, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, numpy {np.__version__}"
        )
    return ctx
