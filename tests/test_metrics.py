import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from sklearn.metrics import roc_auc_score

from ebmhelpers import metrics, runtime, sampling
from ebmhelpers.models import MNISTClassifier, count_parameters


def test_inception_score_extremes():
    confident = torch.eye(10).repeat(20, 1) * 50.0  # every class equally often, one-hot confident
    assert metrics.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert metrics.inception_score(torch.eye(10)[[3] * 50] * 50.0) == pytest.approx(1.0, rel=1e-6)
    assert metrics.inception_score(torch.zeros(50, 10)) == pytest.approx(1.0)  # uniform p(y|x)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 1.0
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_fid_real_halves_small_noise_large(mnist_test):
    torch.manual_seed(0)
    clf = MNISTClassifier().eval()  # untrained features already separate digits from noise
    x, _ = mnist_test
    half1, half2 = metrics.feature_stats(clf.features(x[:256])), metrics.feature_stats(clf.features(x[256:]))
    noise = metrics.feature_stats(clf.features(torch.rand(256, 1, 28, 28) * 2 - 1))
    fid_real = metrics.frechet_distance(*half1, *half2)
    fid_noise = metrics.frechet_distance(*half1, *noise)
    assert fid_real < 0.1 * fid_noise


def test_auroc_agrees_with_sklearn_including_ties():
    g = torch.Generator().manual_seed(0)
    s_in = torch.randint(0, 20, (300,), generator=g).float()
    s_out = torch.randint(0, 15, (200,), generator=g).float()
    y = np.r_[np.ones(300), np.zeros(200)]
    assert metrics.auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, torch.cat([s_in, s_out]).numpy()))
    assert metrics.auroc(torch.ones(5), torch.zeros(5)) == 1.0
    assert metrics.auroc(torch.zeros(5), torch.ones(5)) == 0.0


def test_auroc_standard_error_matches_the_spread_of_repeated_draws():
    g = torch.Generator().manual_seed(0)
    for shift, n_in, n_out in ((1.19, 200, 200), (0.3, 150, 400)):
        draws = [
            metrics.auroc(torch.randn(n_in, generator=g) + shift, torch.randn(n_out, generator=g)) for _ in range(400)
        ]
        se = metrics.auroc_se(float(np.mean(draws)), n_in, n_out)
        assert se == pytest.approx(float(np.std(draws)), rel=0.15)


def test_ood_row_errors_pair_transformed_digits():
    g = torch.Generator().manual_seed(0)
    e_in = torch.randn(200, generator=g) * 3  # digits vary a lot
    e_out = e_in + 0.5 + 0.1 * torch.randn(200, generator=g)  # their transforms: each shifted alike
    paired, unpaired = metrics.ood_row("t", "4", e_in, e_out, True), metrics.ood_row("t", "4", e_in, e_out, False)
    assert list(paired) == list(metrics.OOD_COLUMNS)
    assert paired["gap"] == pytest.approx(-float(e_out.mean() - e_in.mean()))
    assert paired["gap_se"] == pytest.approx(float((e_in - e_out).std()) / 200**0.5)
    assert paired["gap_se"] < 0.2 * unpaired["gap_se"]  # pairing removes the digits' own spread
    assert paired["auroc_se"] == pytest.approx(metrics.auroc_se(paired["auroc"], 200, 200))


def _ood(values: dict[tuple[str, str], tuple[float, float]], model: str = "m") -> pd.DataFrame:
    return pd.DataFrame(
        [{"model": model, "ood_set": s, "digits": d, "auroc": a, "auroc_se": se} for (s, d), (a, se) in values.items()]
    )


def test_digits_differ_only_beyond_twice_their_standard_error():
    ood = _ood(
        {
            ("flip", "4"): (0.88, 0.02),
            ("flip", "5"): (0.78, 0.03),
            ("flip", "9"): (0.85, 0.02),
            ("flip", "all"): (0.72, 0.01),
            ("fashion", "all"): (0.99, 0.01),
        }
    )
    c = metrics.digit_contrasts(ood)
    assert list(c.columns) == list(metrics.CONTRAST_COLUMNS) and len(c) == 3  # no "all", no fashion
    c = c.set_index(["first", "second"])
    assert c.loc[("4", "5"), "differs"]  # 0.10 > 2 x 0.036
    assert not c.loc[("4", "9"), "differs"]  # 0.03 < 2 x 0.028
    assert c.loc[("4", "5"), "difference"] == pytest.approx(0.10)
    assert c.loc[("4", "5"), "se"] == pytest.approx((0.02**2 + 0.03**2) ** 0.5)


def test_model_contrasts_against_a_reference():
    ood = pd.concat(
        [
            _ood({("flip", "4"): (0.88, 0.02), ("flip", "all"): (0.72, 0.01)}, "fp32"),
            _ood({("flip", "4"): (0.86, 0.02), ("flip", "all"): (0.62, 0.01)}, "int8"),
        ]
    )
    c = metrics.model_contrasts(ood, "fp32").set_index("digits")
    assert list(c.model.unique()) == ["int8"]
    assert not c.loc["4", "differs"] and c.loc["all", "differs"]
    assert c.loc["all", "difference"] == pytest.approx(-0.10)


def test_ood_transforms_keep_shape_and_range(mnist_test):
    x = mnist_test[0][:16]
    for name, t in metrics.OOD_TRANSFORMS.items():
        y = t(x)
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1, name
        assert (y - x).abs().mean() > 0.05, name
    assert list(metrics.PAPER_OOD_SETS) == list(metrics.OOD_SETS[:3])


def test_flip_is_two_quarter_turns(mnist_test):
    x = mnist_test[0][:16]
    twice = torch.rot90(torch.rot90(x, 1, dims=(-2, -1)), 1, dims=(-2, -1))
    assert torch.equal(metrics.flip_upside_down(x), twice)
    assert not torch.equal(metrics.flip_upside_down(x), x.flip(-2))  # not a mirror image
    # the antialiased rotate agrees with the exact flip up to interpolation
    assert (metrics.rotate(x, 180.0) - twice).abs().max() < 1e-4


def test_reduced_digit_sits_in_the_bottom_right_corner(mnist_test):
    x = mnist_test[0][:16]
    y = metrics.reduce_to_corner(x)
    assert torch.equal(y[..., 14:, 14:], x[..., ::2, ::2])  # every second pixel, bottom-right quarter
    outside = torch.ones(28, 28, dtype=torch.bool)
    outside[14:, 14:] = False
    assert (y[..., outside] == -1).all()  # the rest is background
    centred = metrics.shrink_centred(x)  # the extra row: centred, border blank
    assert (centred[..., :7, :] == -1).all() and (centred[..., :, -7:] == -1).all()


def test_noise_is_tutorial8_strength_and_seeded(mnist_test):
    x = torch.zeros(64, 1, 28, 28)
    y = metrics.add_noise(x)
    assert y.std().item() == pytest.approx(metrics.NOISE_STD, rel=0.05)
    assert torch.equal(metrics.add_noise(mnist_test[0][:4]), metrics.add_noise(mnist_test[0][:4]))


def test_size_and_latency(tiny_energy):
    size = metrics.serialized_size_bytes(tiny_energy)
    assert 4 * count_parameters(tiny_energy) <= size < 4 * count_parameters(tiny_energy) + 20_000
    ms = metrics.latency_ms(tiny_energy, batch=4, device=torch.device("cpu"), repeats=3, warmup=1)
    assert 0 < ms < 1000


def _evaluator(**changes) -> metrics.Evaluator:
    prof = runtime.get_profile("smoke").replace(**{"n_gen": 8, "gen_steps": 2, "n_ood": 64, **changes})
    ctx = runtime.Context(prof, torch.device("cpu"))
    torch.manual_seed(0)
    return metrics.Evaluator(ctx, MNISTClassifier())


def test_evaluator_scores_a_model(tiny_energy):
    ev = _evaluator()
    row, ood, samples = ev.score(tiny_energy, "tiny")
    assert samples.shape == (8, 1, 28, 28)
    assert row["params"] == count_parameters(tiny_energy) and 1.0 <= row["IS"] <= 10.0 and row["FID"] > 0
    assert list(ood.drop_duplicates("ood_set").ood_set) == list(metrics.OOD_SETS)
    assert list(ood.columns) == ["model", *metrics.OOD_COLUMNS] and (ood.auroc_se >= 0).all() and (ood.gap_se > 0).all()
    assert list(row) == list(metrics.score_columns("cpu"))  # the declaration of every scored table's first columns
    assert ood.auroc.between(0, 1).all() and (ood.n > 0).all()
    assert (ood.inverted == (ood.auroc < 0.5)).all()
    # the paper's gap is mean(-E(T(x))) - mean(-E(x)) on the same images
    e_in, e_out = ev.energies(tiny_energy, ev.ood_x), ev.energies(tiny_energy, ev.ood_sets["noise"])
    gap = ood[(ood.ood_set == "noise") & (ood.digits == "all")].gap.item()
    assert gap == pytest.approx(float((-e_out).mean() - (-e_in).mean()), rel=1e-5)
    # one column per set, never an average; the worst case names its set
    assert "ood_auroc" not in row
    paper = {s: row[f"auroc_{s}"] for s in metrics.PAPER_OOD_SETS}
    assert row["auroc_worst"] == min(paper.values()) and paper[row["worst_set"]] == row["auroc_worst"]
    assert np.isnan(row["IS_std"]) and row["n_seeds"] == 1  # smoke: one seed, no spread claimed


def test_same_seed_same_scores_and_seeds_give_spread(tiny_energy, one_thread):
    ev = _evaluator(score_seeds=3)
    first, s1 = ev.quality(tiny_energy)
    torch.manual_seed(123)  # whatever ran before, the seeds decide
    second, s2 = ev.quality(tiny_energy)
    assert torch.equal(s1, s2)
    assert first == second
    assert first["n_seeds"] == 3 and first["FID_std"] > 0  # different seeds, different samples
    assert not torch.equal(ev.generate(tiny_energy, ev.seeds[0]), ev.generate(tiny_energy, ev.seeds[1]))
    # a second evaluator of the same profile scores the same (seeds come from the profile)
    assert _evaluator(score_seeds=3).quality(tiny_energy)[0] == first


def test_one_sampler_per_model_makes_the_digits_and_times_them(tiny_energy, one_thread, monkeypatch):
    ev = _evaluator()
    runner = ev.sampler(tiny_energy)
    assert ev.sampler(tiny_energy) is runner and runner.amp_dtype is None  # fp32, made once per model
    used = []
    call = type(runner).__call__
    monkeypatch.setattr(type(runner), "__call__", lambda self, x, cfg: used.append(self) or call(self, x, cfg))
    metrics.measure_cost(tiny_energy, ev)
    samples = ev.generate(tiny_energy, ev.seeds[0])
    assert used and all(r is runner for r in used)  # the throughput's sampler made the digits
    # on the CPU the runner's chains are plain fp32 sgld's, bit for bit (same RNG draws)
    p = ev.ctx.profile
    starts = torch.rand(p.n_gen, 1, 28, 28, generator=torch.Generator().manual_seed(ev.seeds[0])).mul_(2).sub_(1)
    torch.manual_seed(ev.seeds[0])
    assert torch.equal(
        samples,
        sampling.generate(tiny_energy, p.n_gen, p.gen_sgld_config(), p.gen_batch_size, init=starts, progress=False),
    )
    other = MNISTClassifier()  # another model gets its own runner
    assert ev.sampler(other) is not runner and ev.sampler(other).model is other


def test_interleaved_timing_alternates_and_judges_by_the_spread():
    import time as _time

    order = []

    def job(name, s):
        def f():
            order.append(name)
            _time.sleep(s)

        return f

    times = metrics.interleaved_times({"a": job("a", 0.002), "b": job("b", 0.0)}, "cpu", repeats=3, warmup=1)
    assert times.n.tolist() == [5, 5]  # never fewer than MIN_INTERLEAVED_REPEATS
    assert order[:2] == ["a", "b"] and order[2:4] == ["a", "b"] and order[4:6] == ["b", "a"]  # warm-up, then rotated
    out = metrics.speedups_vs(times, "a").set_index("model")
    assert out.loc["b", "ratio"] > 1 and out.loc["b", "verdict"] == "faster"
    assert out.loc["a", "verdict"] == "no difference"  # itself: the spread includes 1


def test_compare_latency_of_two_models(tiny_energy):
    table = metrics.compare_latency({"x": tiny_energy, "y": tiny_energy}, batch=2, device="cpu", repeats=5, warmup=1)
    assert set(table.columns) >= {"latency_ms", "ratio", "ratio_lo", "ratio_hi", "verdict"}
    assert (table.ratio_lo <= table.ratio_hi).all()


def test_tables_are_saved_and_read_by_their_declaration(monkeypatch, tmp_path):
    from ebmhelpers import results

    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    ctx = runtime.Context(runtime.get_profile("smoke"), torch.device("cpu"))
    cols = ("model", *metrics.OOD_COLUMNS)
    table = pd.DataFrame([dict(zip(cols, ("m", "flip", "4", 200, -0.1, 0.01, 0.9, 0.02, False)))])
    results.save_table(ctx, "baseline_ood", table[list(reversed(cols))], columns=cols)
    read = results.load_table(ctx, "baseline_ood", columns=cols)
    assert list(read.columns) == ["profile", *cols]  # written in the declared order
    with pytest.raises(ValueError, match="declaration"):
        results.save_table(ctx, "baseline_ood", table.drop(columns="gap_se"), columns=cols)
    table.drop(columns="auroc_se").to_csv(ctx.results / "baseline_ood.csv", index=False)  # another version's file
    with pytest.raises(results.MissingResultsError, match="auroc_se.*02_evaluation"):
        results.load_table(ctx, "baseline_ood", columns=cols)


def test_committed_baseline_table_is_one_score_row(committed_cpu_table):
    table = committed_cpu_table("baseline", metrics.score_columns(), metrics.score_columns("cpu"))
    assert table.model.tolist() == ["baseline"] and "latency_ms_cpu" in table


def test_auroc_error_at_the_ceiling_is_small_but_not_zero():
    # every pair ordered on 200 + 200 images: not proof of a perfect detector
    at_one, at_zero = metrics.auroc_se(1.0, 200, 200), metrics.auroc_se(0.0, 200, 200)
    assert 0 < at_one < metrics.auroc_se(0.95, 200, 200) and at_zero == pytest.approx(at_one)
    assert metrics.auroc_se(1.0, 20000, 20000) < at_one  # more images, a tighter bound
    assert metrics.auroc_se(0.8, 200, 200) == pytest.approx(0.0217, abs=0.002)  # inside the edges: Hanley-McNeil
