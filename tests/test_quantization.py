"""Quantization: static int8 (size, energy agreement, no SGLD), weight-only int8/int4 (gradients)."""

import pytest
import torch
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn

from ebmhelpers import data, quantization
from ebmhelpers.metrics import serialized_size_bytes
from ebmhelpers.models import ResNetEnergy, Swish, count_parameters, resnet18_energy, tutorial8_cnn_energy
from ebmhelpers.profiles import SGLDConfig, get_profile
from ebmhelpers.sampling import SamplingNotSupportedError, energy_grad, frozen

# Thresholds the tests assert (stated here so the notebook and the README can quote them).
MIN_INT8_COMPRESSION = 3.5  # fp32 / int8 serialized size, the requirement
MIN_ENERGY_PEARSON = 0.98  # static int8 vs float energies on real digits (trained tiny model)
MIN_GRAD_COSINE_W8 = 0.999  # weight-only int8 vs float input gradients, mean per-digit cosine


@pytest.fixture(scope="module")
def resnet18_and_int8(mnist_test):
    """The baseline architecture (random init) and its static int8 copy calibrated on 8 digits."""
    torch.manual_seed(0)
    model = resnet18_energy().eval()
    return model, quantization.quantize_static(model, mnist_test[0][:8])


def _fit_to_ink(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Regress the energy onto each digit's standardized amount of ink for about a second, so
    that energies vary across real digits."""
    ink = x.mean((1, 2, 3))
    target = (ink - ink.mean()) / ink.std()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(60):
        idx = torch.arange(64) + 64 * (step % 4)
        loss = F.mse_loss(model(x[idx]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_tiny(mnist_test):
    """A tiny ResNet EBM trained for about a second so that its energies vary across real digits
    (it regresses the energy onto each digit's standardized amount of ink). Random-init energies
    differ between digits by less than one int8 step of the output, which would make a
    correlation test meaningless."""
    torch.manual_seed(0)
    return _fit_to_ink(ResNetEnergy(blocks=(1, 1), widths=(8, 16)), mnist_test[0][:256])


def test_int8_is_at_least_3_5x_smaller(resnet18_and_int8):
    model, int8 = resnet18_and_int8
    ratio = serialized_size_bytes(model) / serialized_size_bytes(int8)
    assert ratio >= MIN_INT8_COMPRESSION, ratio
    # the int8 copy still stores every weight, only in fewer bytes
    assert quantization.weight_count(int8) == count_parameters(model)


def test_int8_keeps_energy_model_contract(resnet18_and_int8, mnist_test):
    _, int8 = resnet18_and_int8
    with torch.no_grad():
        e = int8(mnist_test[0][:5])
    assert e.shape == (5,) and e.dtype == torch.float32 and torch.isfinite(e).all()
    # the original float model was not modified into a quantized one
    assert isinstance(resnet18_and_int8[0].stem, torch.nn.Conv2d)
    kinds = {type(m) for m in int8.modules()}
    assert {nnq.Conv2d, nnq.Linear, nnq.QFunctional, nnq.Quantize, nnq.DeQuantize, Swish} <= kinds
    assert torch.nn.Conv2d not in kinds and torch.nn.Linear not in kinds


def test_int8_energies_correlate_with_float(trained_tiny, mnist_test):
    x = mnist_test[0]
    int8 = quantization.quantize_static(trained_tiny, x[256:320])  # calibration disjoint from evaluation
    with torch.no_grad():
        e_float, e_int8 = trained_tiny(x[320:]), int8(x[320:])
    assert e_float.std() > 0.5  # the energies really vary across digits
    r = torch.corrcoef(torch.stack([e_float, e_int8]))[0, 1]
    assert r >= MIN_ENERGY_PEARSON, float(r)


def test_int8_of_the_cpu_profiles_cnn_baseline(mnist_test):
    """The ``cpu`` profile's baseline (tutorial 8's CNN, no residual adds) quantizes too: int8
    convolutions and linears, float Swish islands, energies that track the float model."""
    torch.manual_seed(0)
    model = _fit_to_ink(tutorial8_cnn_energy(), mnist_test[0][:256])
    x = mnist_test[0]
    int8 = quantization.quantize_static(model, x[256:320])
    kinds = {type(m) for m in int8.modules()}
    assert {nnq.Conv2d, nnq.Linear, Swish} <= kinds and torch.nn.Conv2d not in kinds
    with torch.no_grad():
        e_float, e_int8 = model(x[320:]), int8(x[320:])
    assert e_float.std() > 0.5
    assert torch.corrcoef(torch.stack([e_float, e_int8]))[0, 1] >= MIN_ENERGY_PEARSON
    assert serialized_size_bytes(model) / serialized_size_bytes(int8) > 2.5  # small model: headers weigh more
    with pytest.raises(TypeError, match="ResNetEnergy and ConvEnergy"):
        quantization.quantize_static(torch.nn.Linear(2, 2), x[:4])


def test_no_input_reaches_an_energy_outside_the_int8_output_range(trained_tiny, mnist_test):
    """The last int8 layer's codes bound the logits, hence the energy (their mean), for any input:
    a far-off input is clipped at the range calibrated on real digits."""
    x = mnist_test[0]
    int8 = quantization.quantize_static(trained_tiny, x[256:320])
    lo, hi = quantization.output_range(int8)
    assert lo < 0 < hi
    far = torch.cat([torch.rand(64, 1, 28, 28) * 2 - 1, torch.full((4, 1, 28, 28), 1.0), -torch.ones(4, 1, 28, 28)])
    with torch.no_grad():
        logits = int8.logits(torch.cat([x[320:], far, 40 * far]))
    assert logits.min() >= lo - 1e-5 and logits.max() <= hi + 1e-5
    assert logits.max() == pytest.approx(hi, abs=1e-5) or logits.min() == pytest.approx(
        lo, abs=1e-5
    )  # the clip is reached


def test_fidelity_table_is_its_declaration(tiny_energy):
    from ebmhelpers.metrics import Evaluator
    from ebmhelpers.models import MNISTClassifier
    from ebmhelpers.runtime import Context

    ev = Evaluator(
        Context(get_profile("smoke").replace(n_fid_real=64, n_ood=16), torch.device("cpu")), MNISTClassifier()
    )
    table, energies = quantization.fidelity_table(ev, tiny_energy, {"same": tiny_energy}, n_grad=4)
    assert list(table.columns) == list(quantization.FIDELITY_COLUMNS)
    row = table.iloc[0]
    assert row.energy_pearson == pytest.approx(1.0) and row.energy_mae == 0.0 and row.grad_cosine == pytest.approx(1.0)
    assert torch.equal(energies["same"], energies["reference"])


def test_sgld_through_int8_raises_clear_error(resnet18_and_int8):
    _, int8 = resnet18_and_int8
    cfg = SGLDConfig(steps=1, step_size=1.0, noise_std=0.0, grad_clamp=0.03)
    with pytest.raises(SamplingNotSupportedError, match="no gradient"):
        with frozen(int8):
            energy_grad(int8, torch.zeros(2, 1, 28, 28))
    message = quantization.try_sgld(int8, cfg)
    assert message is not None and "weight-only" in message


def test_quantize_static_rejects_bad_input(tiny_energy):
    with pytest.raises(RuntimeError, match="not available"):
        quantization.quantize_static(tiny_energy, torch.zeros(2, 1, 28, 28), backend="no-such-engine")
    with pytest.raises(ValueError, match="non-empty"):
        quantization.quantize_static(tiny_energy, torch.zeros(0, 1, 28, 28))
    with pytest.raises(TypeError):
        quantization.QuantizableResNetEnergy(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_quantize_weight_error_is_half_a_step(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).view(-1, 1, 1, 1)  # channels of different scale
    q, scale = quantization.quantize_weight(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and q.abs().max() == qmax
    assert ((q.float() * scale.view(-1, 1, 1, 1) - w).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-7).all()


def test_nibble_packing_round_trip():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3)[:-1]  # odd length
    packed = quantization.pack_nibbles(q)
    assert packed.dtype == torch.uint8 and len(packed) == (len(q) + 1) // 2
    assert torch.equal(quantization.unpack_nibbles(packed, len(q)), q)


def test_weight_only_gradients_match_float(tiny_energy, mnist_test):
    x = mnist_test[0][:64]
    tiny_energy.eval()
    w8 = quantization.weight_only_quantize(tiny_energy, bits=8)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in w8.modules())  # every conv was swapped
    g_float = quantization.input_grads(tiny_energy, x, batch_size=32)
    g_w8 = quantization.input_grads(w8, x, batch_size=32)
    assert g_w8.abs().sum() > 0 and torch.isfinite(g_w8).all()
    cos = F.cosine_similarity(g_w8.flatten(1), g_float.flatten(1), dim=1)
    assert cos.mean() >= MIN_GRAD_COSINE_W8, float(cos.mean())
    # and the input gradient is not just the float model's: the weights really changed
    assert not torch.equal(g_w8, g_float)
    # the float model is untouched
    assert isinstance(tiny_energy.stem, torch.nn.Conv2d)


def test_weight_only_sizes(resnet18_and_int8):
    model, _ = resnet18_and_int8
    fp32 = serialized_size_bytes(model)
    w8, w4 = (quantization.weight_only_quantize(model, bits) for bits in (8, 4))
    assert fp32 / serialized_size_bytes(w8) >= MIN_INT8_COMPRESSION
    assert fp32 / serialized_size_bytes(w4) >= 2 * MIN_INT8_COMPRESSION
    assert quantization.weight_count(w4) == count_parameters(model)


def test_weight_only_state_dict_round_trip(tiny_energy):
    w4 = quantization.weight_only_quantize(tiny_energy, 4)
    torch.manual_seed(1)
    other = quantization.weight_only_quantize(ResNetEnergy(blocks=(1, 1), widths=(8, 16)), 4)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert not torch.equal(w4(x), other(x))
        other.load_state_dict(w4.state_dict())
        assert torch.equal(w4(x), other(x))


def test_calibration_digits_are_held_out_from_training():
    profile = get_profile("smoke")
    calib, note = quantization.calibration_images(profile)
    train, _ = data.load_dataset("mnist", train=True, subset=profile.train_subset, seed=profile.seed)
    assert calib.shape == (profile.n_calib, 1, 28, 28) and "never trained on" in note
    flat_c, flat_t = calib.flatten(1), train.flatten(1)
    assert not (flat_c[:, None] == flat_t[None]).all(-1).any()  # no calibration digit is a training digit
    with pytest.raises(ValueError, match="held out"):
        quantization.calibration_images(profile.replace(train_subset=60_000 - 10), n=11)


def test_compare_samplers_uses_same_starts_and_noise(tiny_energy):
    from ebmhelpers.metrics import Evaluator
    from ebmhelpers.models import MNISTClassifier
    from ebmhelpers.runtime import Context

    profile = get_profile("smoke").replace(n_fid_real=64, n_ood=16)
    ev = Evaluator(Context(profile, torch.device("cpu")), MNISTClassifier())
    tiny_energy.eval()
    w4 = quantization.weight_only_quantize(tiny_energy, 4)
    samplers = {"fp32": (tiny_energy, None), "fp32 again": (tiny_energy, None), "w4": (w4, None)}
    cfg = SGLDConfig(steps=3, step_size=10.0, noise_std=0.005, grad_clamp=0.03)
    table, samples = quantization.compare_samplers(ev, samplers, n=4, cfg=cfg, batch_size=4, seed=0, reference="fp32")
    by = table.set_index("sampler")
    assert by.loc["fp32 again", "pixel_mae_vs_ref"] == 0.0  # same starts, same SGLD noise
    assert by.loc["w4", "pixel_mae_vs_ref"] > 0.0
    assert samples["w4"].shape == (4, 1, 28, 28) and (table.img_steps_per_s > 0).all()
    cost = quantization.cost_table({"fp32": tiny_energy, "w4": w4}, profile, reference="fp32")
    assert cost.set_index("model").loc["w4", "compression"] > 1.5
    # speeds are timed interleaved, with a spread and a verdict ('no difference' when it includes 1)
    assert list(table.columns) == list(quantization.SAMPLING_COLUMNS)  # the tables are their declarations
    assert list(cost.columns) == list(quantization.COST_COLUMNS)
    assert cost.set_index("model").loc["fp32", "speed_verdict"] == "no difference"


def test_a_channels_last_baseline_compresses_like_a_contiguous_one():
    """The cpu profile trains with NHWC weights (channels_last): every compression of notebooks 03-04
    takes such a model and gives the energies it gives for the default layout."""
    import copy
    import warnings

    from ebmhelpers import models, pruning

    torch.manual_seed(0)
    m = models.build_baseline("cnn_tutorial8").eval()
    nhwc = copy.deepcopy(m).to(memory_format=torch.channels_last)
    x = torch.rand(32, 1, 28, 28) * 2 - 1
    for bits in (8, 4):
        a = quantization.weight_only_quantize(copy.deepcopy(m), bits)
        b = quantization.weight_only_quantize(copy.deepcopy(nhwc), bits)
        assert torch.allclose(a(x), b(x), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(quantization.quantize_static(m, x)(x), quantization.quantize_static(nhwc, x)(x))
    masked = pruning.apply_pruning(pruning.copy_model(nhwc), "structured_conv", 0.5).eval()
    masked.to(memory_format=torch.channels_last)  # as a fine-tuned model leaves training
    assert torch.allclose(pruning.physically_prune(masked)(x), masked(x), atol=1e-5)


def test_committed_quantization_table_loads_with_its_declaration(committed_cpu_table):
    table = committed_cpu_table("quantization", quantization.table_columns(), quantization.table_columns("cpu"))
    assert set(table.family) == {quantization.FAMILY} and len(table) == 2
    row = quantization.variant_columns(nn.Linear(3, 2), weights="int8", compute="fp32")
    assert set(row) == {"params", *quantization.VARIANT_COLUMNS} and row["params"] == 8
