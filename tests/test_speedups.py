"""The SGLD speed-ups change how a chain is computed, never what: each is compared with eager SGLD.

The GPU tests run only where CUDA is (on a GPU, run this file there)."""

import dataclasses

import pytest
import torch

from ebmhelpers.models import build_baseline
from ebmhelpers.profiles import Speedups, get_profile
from ebmhelpers.sampling import sgld
from ebmhelpers.speedups import SGLDRunner, chain_agreement, enable_compile

CFG = get_profile("cpu").sgld_config(4)  # the paper's sampler settings, 4 steps
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(device="cpu", seed=0):
    torch.manual_seed(seed)
    return build_baseline("cnn_tutorial8").to(device).eval()


def _starts(n=6, device="cpu"):
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1).to(device)


def _seeded(fn, seed=11):
    torch.manual_seed(seed)
    return fn()


def test_eager_runner_is_sgld_bit_for_bit():
    model, x = _model(), _starts()
    ref = _seeded(lambda: sgld(model, x, CFG))
    out = _seeded(lambda: SGLDRunner(model)(x, CFG))
    assert torch.equal(out, ref) and not torch.equal(out, x)  # the chain moved, identically
    assert all(p.requires_grad for p in model.parameters())  # parameters thawed afterwards


def test_channels_last_changes_the_layout_not_the_chain():
    model, x = _model(), _starts()
    ref = _seeded(lambda: sgld(model, x, CFG))
    runner = SGLDRunner(model, Speedups(channels_last=True))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    torch.testing.assert_close(_seeded(lambda: runner(x, CFG)), ref, atol=1e-5, rtol=0)


def test_compiled_network_matches_eager():
    """aot_eager: Dynamo and AOTAutograd trace the network and its input-gradient backward
    (fullgraph: a break would raise), kernels stay eager, so the chain must match closely."""
    model, x = _model(), _starts()
    ref = _seeded(lambda: sgld(model, x, CFG))
    runner = SGLDRunner(model, Speedups(compile=True), compile_backend="aot_eager")
    out = _seeded(lambda: runner(x, CFG))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert runner.energy is not model and all(a is b for a, b in zip(runner.energy.parameters(), model.parameters()))


def test_inductor_compiled_network_matches_eager():
    """The real backend (generated C++ on a CPU, Triton on a GPU)."""
    model, x = _model(), _starts()
    ref = _seeded(lambda: sgld(model, x, CFG))
    out = _seeded(lambda: SGLDRunner(model, Speedups(compile=True))(x, CFG))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_compiled_runner_follows_new_settings_and_weights():
    model, x = _model(), _starts()
    runner = SGLDRunner(model, Speedups(compile=True), compile_backend="aot_eager")
    _seeded(lambda: runner(x, CFG))
    wider = dataclasses.replace(CFG, step_size=CFG.step_size * 4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # what an optimizer step does: in place
    torch.testing.assert_close(
        _seeded(lambda: runner(x, wider)), _seeded(lambda: sgld(model, x, wider)), atol=1e-5, rtol=0
    )


def test_compile_setup_refuses_to_fall_back_silently():
    enable_compile()
    cfg = torch._dynamo.config
    assert cfg.recompile_limit >= 64 and cfg.fail_on_recompile_limit_hit


def test_speedups_label_names_what_is_on():
    assert Speedups().label == "eager"
    assert Speedups(channels_last=True).label == "channels_last"
    assert Speedups(channels_last=True, compile=True).label == "channels_last + compile"


def test_chain_agreement_is_zero_for_eager_and_small_for_a_compiled_step():
    model, x = _model(), _starts()
    assert chain_agreement(model, x, CFG, Speedups()) == {"max_abs_diff": 0.0, "rel_diff": 0.0, "frac_pixels_off": 0.0}
    moved = (sgld(model, x, dataclasses.replace(CFG, noise_std=0.0)) - x).abs().max().item()
    agree = chain_agreement(model, x, CFG, Speedups(channels_last=True))
    assert agree["rel_diff"] == pytest.approx(agree["max_abs_diff"] / moved) and agree["rel_diff"] < 1e-3
    assert agree["frac_pixels_off"] == 0.0
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous()  # the model is handed back in its usual layout


# ---- on a GPU (run by the device preflight) -------------------------------------------------
@cuda
@pytest.mark.parametrize("speedups", [Speedups(compile=True), Speedups(True, True)], ids=lambda s: s.label)
def test_compiled_steps_agree_with_eager_on_the_gpu(speedups):
    model, x = _model("cuda"), _starts(device="cuda")
    agree = chain_agreement(model, x, CFG, speedups)  # fp32 both: only rounding (TF32 convolutions) differs
    assert agree["rel_diff"] < 0.05 and agree["frac_pixels_off"] < 0.01, agree
