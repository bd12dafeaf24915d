import pytest
import torch

from ebmhelpers.tools import bench, estimate
from ebmhelpers.models import build_baseline
from ebmhelpers.profiles import PROFILES, get_profile


def _row(table, item):
    return table.set_index("item").flops[item]


def test_step_counts_match_a_real_run_and_each_other():
    net = estimate.network_flops("baseline", "resnet18")  # counted on the meta device
    real = bench.sgld_step_flops(build_baseline("resnet18"), 1, torch.device("cpu"))  # counted on real tensors
    assert net.sgld == real
    assert net.sgld == 2 * net.forward  # forward + input gradient of the same convolutions
    assert 2 * net.forward < net.train < 3 * net.forward  # no input gradient for the first layer
    assert net.grad_match > net.train
    small = estimate.network_flops("baseline", "cnn_tutorial8")
    assert small.sgld < net.sgld / 100


def test_training_count_is_linear_in_epochs_and_matches_the_formula():
    p = get_profile("smoke").replace(distill_epochs=1)  # students' epochs fixed: by default they follow the baseline's
    one, three = estimate.series_flops(p.replace(epochs=1)), estimate.series_flops(p.replace(epochs=3))
    train = "PCD training of the baseline"
    assert _row(three, train) == pytest.approx(3 * _row(one, train))
    assert three.flops.sum() - one.flops.sum() == pytest.approx(2 * _row(one, train))  # nothing else depends on epochs
    net = estimate.network_flops("baseline", p.baseline)
    iters = p.max_iters_per_epoch  # 512 digits / batch 16 = 32 > the cap of 24
    per_iter = p.batch_size * p.sgld_steps * net.sgld + 2 * p.batch_size * net.train
    assert _row(one, train) == pytest.approx(iters * per_iter)


def test_scoring_scales_with_seeds_and_models():
    p = get_profile("smoke")
    one, three = estimate.series_flops(p), estimate.series_flops(p.replace(score_seeds=3))
    net, clf = estimate.network_flops("baseline", p.baseline), estimate.network_flops("classifier", "")
    extra = 2 * p.n_gen * (p.gen_steps * net.sgld + 2 * clf.forward)
    assert _row(three, "score the baseline") - _row(one, "score the baseline") == pytest.approx(extra)
    two_ratios = estimate.series_flops(p.replace(prune_ratios=(0.3, 0.6)))
    assert _row(two_ratios, "score each strategy x ratio") == pytest.approx(
        2 * _row(one, "score each strategy x ratio")
    )
    assert _row(one, "score each strategy x ratio") == pytest.approx(4 * _row(one, "score the baseline"))


def test_estimate_hours_and_label():
    table, summary = estimate.estimate("smoke", flops_per_s=1e12, device="cpu")
    assert table.hours.sum() * 3600 * 1e12 == pytest.approx(table.flops.sum())
    assert "estimate until measured" in summary and "profile smoke" in summary
    _, assumed = estimate.estimate("smoke", device="cpu")
    assert "ASSUMPTION" in assumed
    # the cpu profile's small CNN teacher is not distilled into larger students
    cpu = estimate.series_flops("cpu", device="cpu")
    assert not cpu.item.str.contains("resnet_slim").any()


def test_t4_estimate_scales_measured_times_by_the_peak_ratio():
    import pandas as pd

    from ebmhelpers.tools.estimate import t4_estimate, t4_ratio

    assert t4_ratio("NVIDIA H100 80GB HBM3") == pytest.approx(989 / 65)
    assert t4_ratio("NVIDIA H100 80GB HBM3", "fp32") == pytest.approx(67 / 8.1)
    est = t4_estimate(pd.DataFrame({"notebook": ["01", "02"], "seconds": [10.0, 20.0]}), "H100")
    assert list(est.t4_seconds_estimate) == pytest.approx([10 * 989 / 65, 20 * 989 / 65])
    with pytest.raises(ValueError, match="no peak"):
        t4_ratio("Some GPU")


@pytest.mark.parametrize("name", ["colab", "gpu", "paper"])
def test_the_banners_flops_are_the_count(name):
    """profiles.COUNTED_FLOPS (printed by runtime.start before a long run) equals what estimate counts."""
    from ebmhelpers.profiles import COUNTED_FLOPS

    assert get_profile(name).needs_gpu
    assert set(COUNTED_FLOPS) == {n for n in PROFILES if PROFILES[n].needs_gpu}
    counted = estimate.total_flops(name)
    assert COUNTED_FLOPS[name] == pytest.approx(counted, rel=0.01), f"set COUNTED_FLOPS[{name!r}] = {counted:.3g}"
