import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from ebmhelpers import plotting

NAN = float("nan")


def test_energy_histograms_give_each_set_its_own_bins_and_far_sets_their_own_panel():
    g = torch.Generator().manual_seed(0)
    e = {
        "real": 0.02 * torch.randn(200, generator=g),
        "sampled": 0.01 + 0.02 * torch.randn(200, generator=g),
        "noise": 2.4 + 0.05 * torch.randn(200, generator=g),
    }
    fig = plotting.energy_histograms(e, bins_per_set=20)
    assert len(fig.axes) == 2  # real and sampled overlap; noise lies far away
    near = [a for a in fig.axes if len(a.patches) == 2][0]
    assert all(len(p.get_path().vertices) > 20 for p in near.patches)  # many bars each, not one


def test_energy_histograms_on_one_axis_name_far_sets_instead_of_squeezing_the_rest():
    """Uniform noise far below the digits (and a tail that reaches them) must not flatten the digits'
    histograms into a spike: on a given axis it is named in the legend, off the axis."""
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(0)
    noise = torch.cat([10.0 + 0.1 * torch.randn(198, generator=g), torch.tensor([0.0, 0.05])])  # -E far below
    e = {
        "test digits": 0.02 * torch.randn(200, generator=g),
        "flip": 0.03 + 0.02 * torch.randn(200, generator=g),
        "uniform noise": noise,
    }
    fig, ax = plt.subplots()
    plotting.energy_histograms(e, ax=ax)
    assert len(ax.patches) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lab.startswith("uniform noise: off this axis, median -10") for lab in labels)
    assert ax.get_xlim()[0] > -1  # the axis spans the digits, not the noise


def test_row_labelled_grid_labels_every_row():
    rows = {"test digits": torch.zeros(8, 1, 28, 28), "uniform noise": torch.rand(8, 1, 28, 28) * 2 - 1}
    fig = plotting.row_labelled_grid(rows)
    assert [a.get_ylabel() for a in fig.axes] == list(rows)


def test_pareto_plot_leaves_masked_pruned_models_off_the_size_axis_and_labels_ticks_plainly():
    t = pd.DataFrame(
        {
            "family": ["baseline", "quantization", "pruning", "pruning", "distillation"],
            "size_mb": [0.31, 0.09, 0.31, 0.31, 0.02],
            "latency_ms_cpu": [1.2, 1.1, 1.0, 1.5, 0.6],
            "FID": [600.0, 610, 620, 900, 2500],
            "FID_std": [10.0] * 5,
            "auroc_worst": [0.74, 0.73, 0.8, 0.66, 0.6],
        }
    )
    assert plotting.masked_at_dense_size(t).tolist() == [False, False, True, True, False]
    fig = plotting.pareto_plot(t, [("size_mb", "FID", True), ("latency_ms_cpu", "FID", True)])
    size_ax, lat_ax = fig.axes
    assert "pruning" not in size_ax.get_legend_handles_labels()[1]
    assert any(lab.startswith("not shown: 2 masked") for lab in size_ax.get_legend_handles_labels()[1])
    assert "pruning" in lat_ax.get_legend_handles_labels()[1]
    assert [x.get_text() for x in size_ax.get_xticklabels() if x.get_text()] and not [
        x.get_text() for x in size_ax.get_xticklabels(minor=True) if x.get_text()
    ]


def test_pareto_front_passes_only_through_models_that_generate_and_costs_carry_their_spread():
    t = pd.DataFrame(
        {
            "family": ["baseline", "distillation", "distillation"],
            "model": ["b", "s1", "s2"],
            "size_mb": [0.3, 0.01, 0.1],
            "FID": [300.0, 1500.0, 700.0],
            "FID_std": [2.0, 9.0, 8.0],
            "generates": [True, False, True],
            "latency_rel": [1.0, 0.2, NAN],
            "latency_rel_lo": [0.9, 0.15, NAN],
            "latency_rel_hi": [1.1, 0.3, NAN],
        }
    )
    fig = plotting.pareto_plot(t, [("size_mb", "FID", True), ("latency_rel", "FID", True)])
    size_ax, lat_ax = fig.axes
    front = [line for line in size_ax.get_lines() if line.get_label().startswith("Pareto")][0]
    assert sorted(front.get_xdata()) == [0.1, 0.3]  # s1 is smallest but draws noise: off the front
    assert "distillation: does not generate" in size_ax.get_legend_handles_labels()[1]
    assert any(
        lab.startswith("not shown: 1 model(s) without latency_rel") for lab in lat_ax.get_legend_handles_labels()[1]
    )
    assert any(c.has_xerr for c in lat_ax.containers)


def test_error_bars_skip_spreads_never_measured():
    fig, ax = plt.subplots()
    plotting.error_bars(ax, [1, 2], [3.0, 4.0], pd.Series([NAN, NAN]), label="none measured")
    plotting.error_bars(ax, [1, 2], [3.0, 4.0], pd.Series([0.5, NAN]), label="one measured")
    none, one = ax.containers
    assert not none.has_yerr and one.has_yerr


def test_training_length_draws_one_line_per_recipe_and_sample_source_in_step_order():
    rows = [
        {"recipe": r, "K": k, "samples": s, "step": step, "FID": fid, "IS": 10 - fid / 100}
        for r, k in (("a", 60), ("b", 30))
        for s in ("from noise", "replay buffer")
        for step, fid in ((1000, 500.0), (500, 900.0))
    ]
    fig = plotting.training_length(pd.DataFrame(rows))
    fid_ax = fig.axes[0]
    assert len(fid_ax.lines) == 4
    xs = [list(line.get_xdata()) for line in fid_ax.lines]
    assert xs == [[30, 60]] * 2 + [[15, 30]] * 2  # sorted by step, scaled by K: thousands of SGLD steps
    assert {line.get_color() for line in fid_ax.lines[:2]} != {line.get_color() for line in fid_ax.lines[2:]}
    assert [line.get_linestyle() for line in fid_ax.lines[:2]] == ["-", "--"]


def test_training_length_draws_weight_averages_as_lines_of_their_own():
    """A run scored with its weight averages: one line per averaged weights from noise, one buffer line."""
    rows = [
        {"recipe": "continued", "K": 60, "samples": "from noise", "weights": w, "step": step, "FID": fid, "IS": 7.0}
        for w in ("trained", "ema0.998", "ema0.9995")
        for step, fid in ((4300, 300.0), (4730, 400.0))
    ]
    rows += [
        {"recipe": "continued", "K": 60, "samples": "replay buffer", "step": step, "FID": 350.0, "IS": 6.0}
        for step in (4300, 4730)
    ]  # the buffer has no weights column value
    fig = plotting.training_length(pd.DataFrame(rows))
    fid_ax = fig.axes[0]
    assert len(fid_ax.lines) == 4
    assert sorted(line.get_linestyle() for line in fid_ax.lines) == sorted(["-", ":", "-.", "--"])
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "continued: from noise, ema0.9995" in labels and "continued: replay buffer" in labels


def test_many_labelled_grids_wrap_into_rows_instead_of_a_strip():
    grids = {f"recipe {i}": torch.zeros(20, 1, 28, 28) for i in range(7)}
    fig = plotting.labelled_grids(grids, ncols=3)
    width, height = fig.get_size_inches()
    assert len([a for a in fig.axes if a.get_title()]) == 7 and width / height < 4  # 3 x 3 panels, 2 left empty


def test_sampling_budget_gives_a_model_one_colour_in_both_panels():
    budget = pd.DataFrame(
        [
            {"model": m, "rule": r, "K": k, "FID": 300.0 + k, "FID_std": 5.0, "seconds": 0.01 * k}
            for m in ("baseline", "student")
            for r in ("fixed T", "fixed step")
            for k in (16, 64)
        ]
    )
    fig = plotting.sampling_budget(budget, gen_steps=64)
    fid_ax, time_ax = fig.axes[:2]
    colour_of = {
        line.get_label(): line.get_color() for line in time_ax.get_lines() if not line.get_label().startswith("_")
    }
    fid_lines = {c.get_label(): c.lines[0].get_color() for c in fid_ax.containers}
    for label, colour in fid_lines.items():
        assert colour == colour_of[label.split(",")[0]], label
    styles = {c.get_label(): c.lines[0].get_linestyle() for c in fid_ax.containers}
    assert styles["baseline, fixed T"] != styles["baseline, fixed step"]


def test_distill_study_draws_one_line_per_objective_and_both_references_and_thresholds():
    from matplotlib.collections import PathCollection

    from ebmhelpers import objective_study as study

    refs = [
        {"objective": study.TEACHER, "student": "t", "ratio": 1.0, "params": 80_000, "IS": 8.0, "FID": 100.0},
        {"objective": study.NOISE, "student": study.NOISE, "ratio": float("inf"), "params": 0, "IS": 1.0, "FID": 1e3},
    ]
    cells = [
        {"objective": o, "student": f"s{n}", "ratio": r, "params": n, "IS": is_, "FID": fid, "label": f"({o})"}
        for o, is_, fid in (("eq6", 5.0, 200.0), ("score", 2.0, 900.0), ("pcd", 4.0, 250.0))
        for r, n in ((4, 20_000), (40, 2_000))
        for seed in (0, 1)
    ]
    table = pd.DataFrame(refs + cells).assign(
        profile="cpu", teacher_arch="t", budget_flops=1e9, IS_std=0.1, FID_std=5.0
    )
    summary = study.summarize(table)
    fig = plotting.plot_distill_study(summary)
    fid_ax, is_ax = fig.axes
    assert fid_ax.get_yscale() == "log" and fid_ax.get_xscale() == "log" and is_ax.get_yscale() == "linear"
    r = study.references(summary)  # generates: IS above sqrt(8) and FID below sqrt(1e5)
    for ax, col, threshold in ((fid_ax, "FID", r.fid_max), (is_ax, "IS", r.is_min)):
        lines = [c for c in ax.containers if c.has_yerr]
        assert sorted(c.get_label() for c in lines) == ["(eq6)", "(pcd)", "(score)"]  # one line per objective
        assert all(len(c.lines[0].get_xdata()) == 2 for c in lines)  # the seeds averaged: one point per size
        flat = {
            line.get_label(): line.get_ydata()[0]
            for line in ax.get_lines()
            if line.get_label().startswith((study.TEACHER, study.NOISE, "generates"))
        }
        assert len(flat) == 3  # teacher, uniform noise and where generating starts
        assert sorted(flat.values()) == pytest.approx(sorted([summary[col].iloc[0], summary[col].iloc[1], threshold]))
        points = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
        hollow = [c for c in points if not c.get_facecolors().any()]
        assert sum(len(c.get_offsets()) for c in hollow) == 2  # score's two students do not generate
