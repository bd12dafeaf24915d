"""Energy networks and the MNIST classifier used by the metrics.

Every energy model of the series (baseline, pruned, quantized, students) is an
:class:`EnergyModel`: ``model(x)`` returns one energy per image, low for digits, and
``model.logits(x)`` the 10 logits whose mean that energy is (the paper's eq. 4).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Swish(nn.Module):
    """x * sigmoid(x): smooth, so SGLD's input gradients are smooth too (unlike ReLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class Add(nn.Module):
    """Residual addition as a module, so quantization can swap in a quantized adder."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class EnergyModel(nn.Module, abc.ABC):
    """Interface: subclasses implement :meth:`logits`; the energy is the mean of the logits."""

    num_logits: int = 10

    @abc.abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The ``num_logits`` outputs of the network, shape (N, num_logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energy E(x) of shape (N,): mean of the logits (eq. 4)."""
        return self.logits(x).mean(dim=1)


class BasicBlock(nn.Module):
    """ResNet basic block with biases and Swish instead of BatchNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.act1 = Swish()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut: nn.Module = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.add = Add()
        self.act2 = Swish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act1(self.conv1(x)))
        return self.act2(self.add(out, self.shortcut(x)))


class ResNetEnergy(EnergyModel):
    """ResNet adapted to 1x28x28 digits: 3x3 stem, no max-pool, no normalization layers.

    The paper (§3.1) uses "an adjusted version of the ResNet18 architecture" with Swish and
    without BatchNorm but does not describe the adjustment; the 3x3 stride-1 stem without
    max-pool (so 28x28 digits are not shrunk to 7x7 before the first block) is this project's.

    The defaults give the paper's baseline, ResNet18 (BasicBlock [2, 2, 2, 2], widths
    64/128/256/512, about 11.17 M parameters). Smaller ``blocks``/``widths`` give students.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 1,
        num_logits: int = 10,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise ValueError("blocks and widths must be non-empty and of equal length")
        self.num_logits = num_logits
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1)
        self.stem_act = Swish()
        layers, c_in = [], widths[0]
        for i, (n, c_out) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_logits)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem_act(self.stem(x)))
        return self.fc(torch.flatten(self.pool(h), 1))


def resnet18_energy() -> ResNetEnergy:
    """The paper's baseline energy network."""
    return ResNetEnergy()


class ConvEnergy(EnergyModel):
    """Plain CNN energy in the layout of Lippe's tutorial-8 EBM (the paper's reference [14]):
    a 5x5 stride-2 convolution (padding 4), 3x3 stride-2 convolutions, flatten, an optional
    hidden linear layer, then 10 logits. Swish everywhere, no normalization, no residuals."""

    def __init__(self, channels: Sequence[int], hidden: int | None = None, num_logits: int = 10) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must be non-empty")
        self.num_logits = num_logits
        layers: list[nn.Module] = []
        c_in, size = 1, 28
        for i, c_out in enumerate(channels):
            k, pad = (5, 4) if i == 0 else (3, 1)
            layers += [nn.Conv2d(c_in, c_out, k, 2, pad), Swish()]
            c_in, size = c_out, (size + 2 * pad - k) // 2 + 1
        layers.append(nn.Flatten())
        features = c_in * size * size
        if hidden:
            layers += [nn.Linear(features, hidden), Swish()]
            features = hidden
        layers.append(nn.Linear(features, num_logits))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tutorial8_cnn_energy() -> ConvEnergy:
    """Tutorial 8's CNN energy (16/32/64/64 channels, linear 256-64, 77,578 parameters with
    10 logits): the baseline of the ``cpu`` profile, about 350x cheaper per SGLD step than
    ResNet18. Tutorial 8's network outputs one number; here it gives 10 logits whose mean is
    the energy, as the paper's ResNet18 does."""
    return ConvEnergy((16, 32, 64, 64), hidden=64)


# Baseline architectures a profile can name (``Profile.baseline``).
BASELINES = {"resnet18": resnet18_energy, "cnn_tutorial8": tutorial8_cnn_energy}
BASELINE_LABELS = {"resnet18": "ResNet18 (the paper's)", "cnn_tutorial8": "tutorial 8's CNN (not the paper's ResNet18)"}


def build_baseline(name: str) -> EnergyModel:
    """A freshly initialized baseline energy network of the architecture ``name``."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline architecture {name!r}; choose one of {list(BASELINES)}")
    return BASELINES[name]()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (pruning masks count the dense tensor, as the paper does)."""
    return sum(p.numel() for p in model.parameters())


class MNISTClassifier(nn.Module):
    """A small CNN (about 99.3% test accuracy) whose logits give the Inception Score and
    whose 128-d penultimate features give the FID; it plays Inception-v3's role for digits."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 7 * 7, self.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(self.feature_dim, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, 128), used for FID."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
