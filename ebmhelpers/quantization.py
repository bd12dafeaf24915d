"""Quantization of energy models: int8 for detection, and quantized models that can still sample.

* **Post-training static int8** (the paper's Section 3.3.1): eager-mode ``torch.ao.quantization``
  on the x86/fbgemm CPU backend. A quantizable copy of the ResNet (or of the ``cpu`` profile's
  plain CNN, which has no residual additions) puts ``QuantStub``/``DeQuantStub``
  at its boundaries, makes the residual additions quantization-aware (``FloatFunctional``) and,
  because Swish has no quantized kernel (so nothing can be fused), runs every Swish in float
  between a dequantize and a quantize. Activation ranges are calibrated on held-out real digits.
  Quantized kernels have no backward pass, so SGLD cannot run through this model.
* **Weight-only int8 / int4** (beyond the paper): weights stored as per-output-channel symmetric
  integers and dequantized on the fly, compute in float. Input gradients exist, so the model
  samples. (``torchao``'s weight-only configs cover ``nn.Linear`` only, not the convolutions
  that hold 99.9% of this network's weights, hence the hand-written modules.)
* Helpers that measure what quantization changes: energy and input-gradient agreement with the
  float model, CPU cost (size, latency), and SGLD under reduced-precision autocast.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.ao.nn.quantized import FloatFunctional

from . import data as data_mod
from . import metrics as metrics_mod
from .metrics import Evaluator, serialized_size_bytes
from .models import BasicBlock, ConvEnergy, EnergyModel, ResNetEnergy, Swish
from .profiles import Profile, SGLDConfig
from .runtime import model_device, seed_everything
from .sampling import SamplingNotSupportedError, batched_energy_grad, generate, sgld, uniform_noise

DEFAULT_BACKEND = "x86"  # PyTorch's x86 backend: fbgemm kernels (onednn where faster)
WEIGHT_ONLY_BITS = (8, 4)  # weight widths the notebook compares
FAMILY = "quantization"  # value of the ``family`` column of this notebook's tables


# ---- post-training static int8 (eager mode) ---------------------------------------------
class QuantizableBasicBlock(nn.Module):
    """A :class:`~ebmhelpers.models.BasicBlock` copy for eager-mode static quantization.

    Input and output are quantized tensors. Convolutions and the residual addition run in int8;
    each Swish runs in float between a ``DeQuantStub`` and a ``QuantStub`` of its own, whose
    observer calibrates the range of the Swish output.
    """

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1, self.conv2 = copy.deepcopy(block.conv1), copy.deepcopy(block.conv2)
        self.shortcut = copy.deepcopy(block.shortcut)
        self.dequant1, self.act1, self.quant1 = tq.DeQuantStub(), Swish(), tq.QuantStub()
        self.add = FloatFunctional()  # becomes a quantized add with its own output scale
        self.dequant2, self.act2, self.quant2 = tq.DeQuantStub(), Swish(), tq.QuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.quant1(self.act1(self.dequant1(self.conv1(x)))))
        return self.quant2(self.act2(self.dequant2(self.add.add(out, self.shortcut(x)))))


class QuantizableResNetEnergy(EnergyModel):
    """Quantizable copy of a :class:`~ebmhelpers.models.ResNetEnergy` (the original is untouched).

    ``logits`` quantizes the float input, runs the network with float Swish islands and
    dequantizes the logits, so after conversion ``model(x)`` still returns float energies.
    """

    def __init__(self, model: ResNetEnergy) -> None:
        super().__init__()
        if not isinstance(model, ResNetEnergy) or not all(isinstance(b, BasicBlock) for b in model.layers):
            raise TypeError(f"expected a ResNetEnergy built from BasicBlocks, got {type(model).__name__}")
        self.num_logits = model.num_logits
        self.quant = tq.QuantStub()
        self.stem = copy.deepcopy(model.stem)
        self.stem_dequant, self.stem_act, self.stem_quant = tq.DeQuantStub(), Swish(), tq.QuantStub()
        self.layers = nn.Sequential(*(QuantizableBasicBlock(b) for b in model.layers))
        self.pool = copy.deepcopy(model.pool)
        self.fc = copy.deepcopy(model.fc)
        self.dequant = tq.DeQuantStub()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_quant(self.stem_act(self.stem_dequant(self.stem(self.quant(x)))))
        h = self.pool(self.layers(h))
        return self.dequant(self.fc(torch.flatten(h, 1)))


class QuantizedSwish(nn.Module):
    """Swish as a float island in an int8 network: dequantize, Swish, quantize (its own observer)."""

    def __init__(self) -> None:
        super().__init__()
        self.dequant, self.act, self.quant = tq.DeQuantStub(), Swish(), tq.QuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(self.act(self.dequant(x)))


class QuantizableConvEnergy(EnergyModel):
    """Quantizable copy of a plain :class:`~ebmhelpers.models.ConvEnergy` (tutorial 8's CNN):
    int8 convolutions and linear layers, every Swish a float island; no residual additions."""

    def __init__(self, model: ConvEnergy) -> None:
        super().__init__()
        if not isinstance(model, ConvEnergy):
            raise TypeError(f"expected a ConvEnergy, got {type(model).__name__}")
        self.num_logits = model.num_logits
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.net = nn.Sequential(*(QuantizedSwish() if isinstance(m, Swish) else copy.deepcopy(m) for m in model.net))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.net(self.quant(x)))


def quantizable_copy(model: EnergyModel) -> EnergyModel:
    """The quantizable copy of a baseline architecture (ResNet or plain CNN energy)."""
    if isinstance(model, ResNetEnergy):
        return QuantizableResNetEnergy(model)
    if isinstance(model, ConvEnergy):
        return QuantizableConvEnergy(model)
    raise TypeError(f"static int8 is implemented for ResNetEnergy and ConvEnergy, not {type(model).__name__}")


def check_backend(backend: str) -> None:
    """Raise a clear error when this PyTorch build has no quantized ``backend`` engine."""
    engines = torch.backends.quantized.supported_engines
    if backend not in engines:
        raise RuntimeError(f"quantized engine {backend!r} is not available in this PyTorch build (have: {engines})")


@torch.no_grad()
def quantize_static(
    model: EnergyModel, calib_images: torch.Tensor, backend: str = DEFAULT_BACKEND, batch_size: int = 256
) -> EnergyModel:
    """Post-training static int8 quantization of ``model`` on the CPU (a new model is returned).

    Observers of the backend's default qconfig (histogram observers for activations,
    per-channel min/max for weights) see ``calib_images`` in batches; ``convert`` then swaps in
    int8 kernels. Sets ``torch.backends.quantized.engine = backend`` (a process-wide setting
    that the int8 kernels read at run time).
    """
    check_backend(backend)
    if calib_images.ndim != 4 or len(calib_images) == 0:
        raise ValueError(f"calibration images must be a non-empty (N, C, H, W) batch, got {tuple(calib_images.shape)}")
    torch.backends.quantized.engine = backend
    qmodel = quantizable_copy(model).cpu().eval()
    qmodel.qconfig = tq.get_default_qconfig(backend)
    tq.prepare(qmodel, inplace=True)
    for i in range(0, len(calib_images), batch_size):
        qmodel(calib_images[i : i + batch_size].cpu())
    return tq.convert(qmodel, inplace=True)


def output_range(qmodel: EnergyModel) -> tuple[float, float]:
    """(lowest, highest) value the last int8 layer of a :func:`quantize_static` model can output:
    its quint8 codes 0..255 minus its zero point, times its scale. The energy is the mean of these
    logits, so no input, however far from the digits, gets an energy outside this range."""
    last = [m for m in qmodel.modules() if callable(getattr(m, "weight", None)) and hasattr(m, "zero_point")][-1]
    scale, zero = float(last.scale), int(last.zero_point)
    return (0 - zero) * scale, (255 - zero) * scale


def calibration_images(profile: Profile, n: int | None = None) -> tuple[torch.Tensor, str]:
    """``n`` (default ``profile.n_calib``) real training-split digits for calibration, and a
    sentence saying where they come from.

    When the profile trains on a subset, they are digits outside the baseline's training subset
    (the same permutation :func:`ebmhelpers.data.load_dataset` draws it from). When it trains on
    the whole split they are training digits; either way none is a test digit used by the
    evaluation.
    """
    n = profile.n_calib if n is None else n
    images, _ = data_mod.load_dataset("mnist", train=True, device="cpu")
    total = len(images)
    subset = profile.train_subset
    if subset is not None and subset < total:
        held_out = torch.randperm(total, generator=torch.Generator().manual_seed(profile.seed))[subset:]
        if n > len(held_out):
            raise ValueError(f"only {len(held_out)} training digits are held out from training, {n} requested")
        note = f"{n} training-split digits the baseline never trained on (outside its {subset}-digit subset)"
        return images[held_out[:n]], note
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(profile.seed + 1))[:n]
    note = (
        f"{n} training-split digits (the baseline trained on the whole split); no test digit used "
        f"by the evaluation is among them"
    )
    return images[idx], note


# ---- weight-only quantization (float compute, input gradients intact) --------------------
def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric quantization: integers in [-(2^(b-1)-1), 2^(b-1)-1] (int8
    tensor) and the float scale of each output channel, ``weight ~ q * scale``."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / qmax
    q = torch.round(w / scale).clamp_(-qmax, qmax).to(torch.int8)
    return q, scale.flatten()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit integers in [-8, 7] per byte (flattened, zero-padded to even length)."""
    flat = (q.flatten().to(torch.int16) + 8).to(torch.uint8)
    if len(flat) % 2:
        flat = torch.cat([flat, flat.new_full((1,), 8)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: the first ``numel`` integers as int8."""
    low, high = packed & 0x0F, packed >> 4
    return (torch.stack([low, high], dim=1).flatten()[:numel].to(torch.int16) - 8).to(torch.int8)


class WeightOnlyLayer(nn.Module):
    """Stores one layer's weight as integers plus per-channel scales (buffers, so they land
    in the state dict) and rebuilds the float weight at every forward. Bias stays float."""

    def _store(self, layer: nn.Conv2d | nn.Linear, bits: int) -> None:
        q, scale = quantize_weight(layer.weight, bits)
        self.bits, self.weight_shape, self.numel = bits, tuple(layer.weight.shape), layer.weight.numel()
        self.register_buffer("qweight", pack_nibbles(q) if bits <= 4 else q)
        self.register_buffer("scale", scale)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def dequantized_weight(self) -> torch.Tensor:
        q = unpack_nibbles(self.qweight, self.numel) if self.bits <= 4 else self.qweight
        shape = (-1,) + (1,) * (len(self.weight_shape) - 1)
        return q.reshape(self.weight_shape).float() * self.scale.view(shape)

    def extra_repr(self) -> str:
        return f"weight={self.weight_shape}, bits={self.bits}, per-channel symmetric"


class WeightOnlyConv2d(WeightOnlyLayer):
    """``nn.Conv2d`` with integer weights dequantized on the fly."""

    def __init__(self, conv: nn.Conv2d, bits: int = 8) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError("only zero padding is supported")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self._store(conv, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class WeightOnlyLinear(WeightOnlyLayer):
    """``nn.Linear`` with integer weights dequantized on the fly."""

    def __init__(self, linear: nn.Linear, bits: int = 8) -> None:
        super().__init__()
        self._store(linear, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)


def weight_only_quantize(model: nn.Module, bits: int = 8) -> nn.Module:
    """A copy of ``model`` whose ``Conv2d``/``Linear`` layers keep ``bits``-bit weights.

    Everything else (Swish, pooling, the energy head) is unchanged, so the copy is still an
    :class:`~ebmhelpers.models.EnergyModel` with input gradients and can be sampled by SGLD.
    """
    qmodel = copy.deepcopy(model)

    def swap(module: nn.Module) -> int:
        count = 0
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, name, WeightOnlyConv2d(child, bits))
            elif isinstance(child, nn.Linear):
                setattr(module, name, WeightOnlyLinear(child, bits))
            else:
                count += swap(child)
                continue
            count += 1
        return count

    if swap(qmodel) == 0:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    return qmodel.to(model_device(model)).train(model.training)


# ---- what quantization changes ------------------------------------------------------------
def weight_count(model: nn.Module) -> int:
    """Number of weights a model stores, whatever their dtype: float parameters plus the
    integer weights of static-int8 and weight-only layers (which are not ``Parameter``s)."""
    total = 0
    for module in model.modules():
        if isinstance(module, WeightOnlyLayer):
            total += module.numel
        elif callable(getattr(module, "weight", None)):  # converted static-int8 Conv2d/Linear
            total += module.weight().numel()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += 0 if bias is None else bias.numel()
        total += sum(p.numel() for p in module.parameters(recurse=False))
    return total


def input_grads(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """dE/dx for real images ``x`` (CPU float result); raises
    :class:`~ebmhelpers.sampling.SamplingNotSupportedError` for a model without them."""
    return batched_energy_grad(model, x.cpu(), batch_size, device=model_device(model))[1]


FIDELITY_COLUMNS = (
    "model",
    "n_digits",
    "n_grad_digits",
    "size_mb",
    "energy_pearson",
    "energy_spearman",
    "energy_mae",
    "energy_mae_rel_std",
    "grad_cosine",
)  # fidelity_table


def fidelity_table(
    ev: Evaluator, reference: nn.Module, variants: Mapping[str, nn.Module], n_grad: int | None = None
) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """How far each variant's energies and input gradients are from ``reference`` on the real
    test digits of the OOD evaluation: Pearson/Spearman correlation and mean absolute error of
    the energies (also relative to the reference energies' standard deviation) and the mean
    per-image cosine similarity of dE/dx on the first ``n_grad`` of those digits (all by default;
    NaN for a model without input gradients). Also returns the energies, the reference's under
    the key ``"reference"``."""
    x, bs = ev.ood_x, ev.ctx.profile.eval_batch_size
    x_grad = x[:n_grad] if n_grad is not None else x
    e_ref, g_ref = ev.energies(reference, x), input_grads(reference, x_grad, bs).flatten(1)
    rows, energies = [], {"reference": e_ref}
    for name, model in variants.items():
        e = energies[name] = ev.energies(model, x)
        try:
            cos = float(F.cosine_similarity(input_grads(model, x_grad, bs).flatten(1), g_ref, dim=1).mean())
        except SamplingNotSupportedError:
            cos = float("nan")
        mae = float((e - e_ref).abs().mean())
        rows.append(
            {
                "model": name,
                "n_digits": len(x),
                "n_grad_digits": len(x_grad),
                "size_mb": serialized_size_bytes(model) / 1e6,
                "energy_pearson": float(stats.pearsonr(e_ref.numpy(), e.numpy())[0]),
                "energy_spearman": float(stats.spearmanr(e_ref.numpy(), e.numpy())[0]),
                "energy_mae": mae,
                "energy_mae_rel_std": mae / float(e_ref.std()),
                "grad_cosine": cos,
            }
        )
    return pd.DataFrame(rows, columns=list(FIDELITY_COLUMNS)), energies


def try_sgld(model: nn.Module, cfg: SGLDConfig, n: int = 2) -> str | None:
    """Run a real SGLD attempt from noise through ``model``; ``None`` if it ran, else the
    :class:`~ebmhelpers.sampling.SamplingNotSupportedError` message."""
    try:
        sgld(model, uniform_noise(n, (1, 28, 28), model_device(model)), cfg)
    except SamplingNotSupportedError as err:
        return str(err)
    return None


VARIANT_COLUMNS = ("family", "weights", "compute")  # what a quantized variant adds to its score row


def table_columns(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The columns of the quantization table (notebook 03, saved as ``quantization``): the score
    row's (:func:`metrics.score_columns`, latency timed on ``device``), then :data:`VARIANT_COLUMNS`."""
    return (*metrics_mod.score_columns(device), *VARIANT_COLUMNS)


def variant_columns(model: nn.Module, weights: str, compute: str) -> dict[str, Any]:
    """This notebook's columns for :meth:`Evaluator.score` (:data:`VARIANT_COLUMNS`) and the number
    of stored weights as ``params`` (int8 weights are not ``Parameter``s)."""
    return {"params": weight_count(model), **dict(zip(VARIANT_COLUMNS, (FAMILY, weights, compute)))}


# The paper's Table 1 (cost_table; saved as quantization_speed).
COST_COLUMNS = (
    "model",
    "size_mb",
    "compression",
    "latency_ms_cpu",
    "latency_q1_ms",
    "latency_q3_ms",
    "latency_batch",
    "speedup_cpu",
    "speedup_lo",
    "speedup_hi",
    "speed_verdict",
)


def cost_table(models: Mapping[str, nn.Module], profile: Profile, reference: str) -> pd.DataFrame:
    """The paper's Table 1: serialized size (MB) and CPU latency of each model, with the
    compression ratio and speed-up relative to ``reference``. The latencies are timed
    *interleaved* (:func:`metrics.compare_latency`: after ``profile.latency_warmup`` runs of each,
    ``profile.latency_repeats`` rounds, at least 5, that evaluate every model once on the same
    ``profile.latency_batch`` digits): ``latency_ms_cpu`` is the median, ``latency_q1_ms``/
    ``latency_q3_ms`` the quartiles, ``speedup_lo``..``speedup_hi`` the speed-up's spread and
    ``speed_verdict`` 'faster', 'slower' or 'no difference' (the spread includes 1). Models on
    another device are measured on a CPU copy."""
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of {list(models)}")
    cpu = torch.device("cpu")
    cpu_models = {name: m if model_device(m).type == "cpu" else copy.deepcopy(m).cpu() for name, m in models.items()}
    timed = metrics_mod.compare_latency(
        cpu_models,
        profile.latency_batch,
        cpu,
        reference=reference,
        repeats=profile.latency_repeats,
        warmup=profile.latency_warmup,
    ).set_index("model")
    rows = []
    for name, model in models.items():
        t = timed.loc[name]
        rows.append(
            {
                "model": name,
                "size_mb": serialized_size_bytes(model) / 1e6,
                "latency_ms_cpu": 1e3 * t.median_s,
                "latency_q1_ms": 1e3 * t.q1_s,
                "latency_q3_ms": 1e3 * t.q3_s,
                "latency_batch": profile.latency_batch,
                "speedup_cpu": t.ratio,
                "speedup_lo": t.ratio_lo,
                "speedup_hi": t.ratio_hi,
                "speed_verdict": t.verdict,
            }
        )
    df = pd.DataFrame(rows)
    df["compression"] = df.set_index("model").size_mb[reference] / df.size_mb
    return df[list(COST_COLUMNS)]


# ---- reduced-precision and weight-only sampling --------------------------------------------
SPEED_STEPS = 20  # SGLD steps of each interleaved timing run (compare_samplers)
SPEED_BATCH = 64  # digits per timing run

# compare_samplers' table (saved as quantization_sampling, with the family first).
SAMPLING_COLUMNS = (
    "sampler",
    "autocast",
    "device",
    "n",
    "steps",
    "size_mb",
    "IS",
    "FID",
    "entropy_bits",
    "confident",
    "saturation",
    "pixel_mae_vs_ref",
    "img_steps_per_s",
    "speedup",
    "speedup_lo",
    "speedup_hi",
    "speed_verdict",
)


def sampling_precisions(device: torch.device) -> tuple[str, ...]:
    """Autocast dtypes to compare with fp32 SGLD on ``device``: bf16 on the CPU, bf16 and fp16
    on CUDA (fp16 autocast is a GPU feature here)."""
    return ("bf16", "fp16") if device.type == "cuda" else ("bf16",)


def compare_samplers(
    ev: Evaluator,
    samplers: Mapping[str, tuple[nn.Module, str | None]],
    n: int,
    cfg: SGLDConfig,
    batch_size: int,
    seed: int,
    reference: str,
) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Generate ``n`` digits with each sampler ``name -> (model, autocast dtype or None)`` from the
    same uniform-noise starts and the same SGLD noise (the RNG is reseeded per run), and report
    IS, FID, the mean absolute pixel difference to the ``reference`` sampler's digits and SGLD
    image-steps per second. The speed is timed apart from the generation, interleaved
    (:func:`metrics.interleaved_times`: a chain of :data:`SPEED_STEPS` steps on
    :data:`SPEED_BATCH` digits per sampler, every sampler once per round, at least 5 rounds after
    a warm-up): ``img_steps_per_s`` from the median, ``speedup`` over the reference with its
    spread ``speedup_lo``..``speedup_hi`` and ``speed_verdict`` ('no difference' when the spread
    includes 1)."""
    if reference not in samplers:
        raise ValueError(f"reference {reference!r} is not one of the samplers {list(samplers)}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.rand(n, 1, 28, 28, generator=g).mul_(2).sub_(1)
    rows, samples, runners = [], {}, {}
    warm = SGLDConfig(1, cfg.step_size, cfg.noise_std, cfg.grad_clamp, cfg.clamp_range)
    for name in [reference, *(k for k in samplers if k != reference)]:
        model, amp = samplers[name]
        device = model_device(model)
        runners[name] = runner = ev.sampler(model, amp)  # the one runner that makes this row's digits and times it
        runner(starts[:2].to(device), warm)
        seed_everything(seed)
        x = generate(model, n, cfg, batch_size, device=device, init=starts, progress=False, sampler=runner)
        samples[name] = x.cpu()
        rows.append(
            {
                "sampler": name,
                "autocast": amp or "none",
                "device": device.type,
                "n": n,
                "steps": cfg.steps,
                "size_mb": serialized_size_bytes(model) / 1e6,
                **ev.sample_quality(x),
                "pixel_mae_vs_ref": float((samples[name] - samples[reference]).abs().mean()),
            }
        )
    df = pd.DataFrame(rows)
    speed_cfg = SGLDConfig(min(cfg.steps, SPEED_STEPS), cfg.step_size, cfg.noise_std, cfg.grad_clamp, cfg.clamp_range)
    chain = starts[:SPEED_BATCH]

    def run(name: str):
        x0 = chain.to(model_device(samplers[name][0]))
        return lambda: runners[name](x0, speed_cfg)

    fns = {name: run(name) for name in df.sampler}
    devices = {model_device(m) for m, _ in samplers.values()}
    times = metrics_mod.interleaved_times(fns, devices.pop() if len(devices) == 1 else torch.device("cpu"))
    speed = metrics_mod.speedups_vs(times, reference).set_index("model")
    df["img_steps_per_s"] = [len(chain) * speed_cfg.steps / speed.loc[s, "median_s"] for s in df.sampler]
    for col, src in (
        ("speedup", "ratio"),
        ("speedup_lo", "ratio_lo"),
        ("speedup_hi", "ratio_hi"),
        ("speed_verdict", "verdict"),
    ):
        df[col] = [speed.loc[s, src] for s in df.sampler]
    return df[list(SAMPLING_COLUMNS)], samples
