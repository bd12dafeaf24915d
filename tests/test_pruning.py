"""Pruning: achieved sparsity, which layers each strategy touches, whole-channel zeros, and
physical removal that keeps the energies while dropping parameters."""

import math

import matplotlib
import pandas as pd
import pytest
import torch
from torch import nn

from ebmhelpers import plotting, pruning, training, verdicts
from ebmhelpers.models import ResNetEnergy, count_parameters, tutorial8_cnn_energy
from ebmhelpers.profiles import get_profile
from ebmhelpers.runtime import Context

matplotlib.use("Agg")


def small_resnet() -> ResNetEnergy:
    """Three stages (identity and 1x1 shortcuts), 77k weights: big enough that one channel is
    well under a percentage point of all weights."""
    torch.manual_seed(0)
    return ResNetEnergy(blocks=(1, 1, 1), widths=(16, 32, 64))


def conv_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("key", sorted(pruning.STRATEGIES))
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_achieved_sparsity_matches_ratio(key, ratio):
    model = pruning.apply_pruning(small_resnet(), key, ratio)
    assert abs(pruning.sparsity(model) - ratio) < 0.01


def test_global_unstructured_ranks_layers_together():
    """Global pruning takes more from layers with small weights than from others."""
    model = small_resnet()
    with torch.no_grad():
        model.layers[1].conv2.weight.mul_(0.01)  # 12% of the weights, all tiny
    pruning.apply_pruning(model, "unstructured_global", 0.3)
    table = pruning.layer_table(model).set_index("layer")
    assert table.loc["block1.conv2", "sparsity"] == 1.0
    assert table.drop("block1.conv2").sparsity.max() < 0.3


@pytest.mark.parametrize("key", ["unstructured_conv", "structured_conv"])
def test_conv_only_leaves_linear_dense_and_prunes_every_conv(key):
    model = pruning.apply_pruning(small_resnet(), key, 0.6)
    assert not hasattr(model.fc, "weight_mask")
    assert (model.fc.weight != 0).all()
    for conv in conv_layers(model):
        assert abs(float((pruning.effective_weight(conv) == 0).float().mean()) - 0.6) < 0.07


@pytest.mark.parametrize("key", ["structured_global", "structured_conv"])
def test_structured_pruning_zeros_whole_output_channels(key):
    model = pruning.apply_pruning(small_resnet(), key, 0.5)
    n_zero_channels = 0
    for conv in conv_layers(model):
        w = pruning.effective_weight(conv).flatten(1)
        zeros_per_channel = (w == 0).sum(1)
        assert set(zeros_per_channel.tolist()) <= {0, w.shape[1]}  # a channel goes whole or not at all
        dead = zeros_per_channel == w.shape[1]
        assert (pruning.effective_weight(conv, "bias")[dead] == 0).all()
        assert dead.sum() < len(dead)  # no layer loses every channel
        n_zero_channels += int(dead.sum())
    assert n_zero_channels > 0


def test_masks_act_in_the_forward_pass(mnist_test):
    x = mnist_test[0][:32]
    dense = small_resnet()
    masked = pruning.apply_pruning(pruning.copy_model(dense), "structured_conv", 0.5)
    baked = pruning.remove_masks(pruning.copy_model(masked))
    with torch.no_grad():
        assert not torch.allclose(dense(x), masked(x))
        torch.testing.assert_close(masked(x), baked(x))
    assert not pruning.is_masked(baked) and pruning.sparsity(baked) == pruning.sparsity(masked)


@pytest.mark.parametrize("key", ["structured_global", "structured_conv"])
def test_physically_pruned_model_has_same_energies_and_fewer_parameters(key, mnist_test):
    x = mnist_test[0][:64]
    masked = pruning.apply_pruning(small_resnet(), key, 0.5)
    phys = pruning.physically_prune(masked)
    assert not pruning.is_masked(phys)
    assert count_parameters(phys) < 0.7 * count_parameters(masked)
    with torch.no_grad():
        e_masked, e_phys = masked(x), phys(x)
    torch.testing.assert_close(e_phys, e_masked, atol=1e-5, rtol=1e-5)
    assert pruning.is_masked(masked)  # the original is left as it was


def test_physical_removal_cuts_a_residual_channel_only_when_all_producers_are_zero(mnist_test):
    model = small_resnet()
    with torch.no_grad():  # stage-0 stream channel 3 is produced by the stem and block0.conv2
        for conv in (model.stem, model.layers[0].conv2):
            conv.weight[3] = 0
            conv.bias[3] = 0
        model.layers[1].conv2.weight[5] = 0  # stage-1 channel 5 also comes from the shortcut
        model.layers[1].conv2.bias[5] = 0
    phys = pruning.physically_prune(model)
    assert phys.stem.out_channels == 15 and phys.layers[1].conv1.in_channels == 15
    assert phys.layers[1].conv2.out_channels == 32
    with torch.no_grad():
        torch.testing.assert_close(phys(mnist_test[0][:32]), model(mnist_test[0][:32]), atol=1e-5, rtol=1e-5)


def test_rewind_loads_early_weights_under_the_masks():
    model = pruning.apply_pruning(small_resnet(), "unstructured_conv", 0.5)
    torch.manual_seed(1)
    early = ResNetEnergy(blocks=(1, 1, 1), widths=(16, 32, 64)).state_dict()
    pruning.rewind(model, early)
    conv = model.layers[1].conv1
    torch.testing.assert_close(conv.weight_orig, early["layers.1.conv1.weight"])
    torch.testing.assert_close(pruning.effective_weight(conv), early["layers.1.conv1.weight"] * conv.weight_mask)
    torch.testing.assert_close(model.fc.weight, early["fc.weight"])


def test_finetuning_keeps_masks_and_resumes_from_checkpoint(tmp_path, monkeypatch, mnist_test):
    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path))
    profile = get_profile("smoke").replace(
        batch_size=8, sgld_steps=2, buffer_size=32, finetune_epochs=1, finetune_iters=3, ckpt_every=2
    )
    ctx = Context(profile, torch.device("cpu"))
    torch.manual_seed(0)
    model = pruning.apply_pruning(ResNetEnergy(blocks=(1, 1), widths=(8, 16)), "structured_conv", 0.5)
    before = pruning.sparsity(model)
    weights_before = model.layers[1].conv2.weight_orig.detach().clone()
    buffer = pruning.ReplayBuffer(32, (1, 28, 28), 0.05)
    data = mnist_test[0][:64]
    trainer, diverged = pruning.finetune(ctx, model, data, buffer, "ft_test", progress=False)
    assert not diverged and trainer.step == 3 and trainer.done
    assert not torch.equal(model.layers[1].conv2.weight_orig, weights_before)  # it trained
    assert pruning.sparsity(model) == before  # ... through the masks
    again, _ = pruning.finetune(
        ctx,
        pruning.apply_pruning(ResNetEnergy((1, 1), (8, 16)), "structured_conv", 0.5),
        data,
        buffer,
        "ft_test",
        progress=False,
    )
    torch.testing.assert_close(again.model.layers[1].conv2.weight_orig, model.layers[1].conv2.weight_orig)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        pruning.apply_pruning(small_resnet(), "random", 0.5)
    with pytest.raises(ValueError, match="ratio"):
        pruning.apply_pruning(small_resnet(), "structured_conv", 1.0)
    masked = pruning.apply_pruning(small_resnet(), "structured_conv", 0.5)
    with pytest.raises(ValueError, match="already"):
        pruning.apply_pruning(masked, "structured_conv", 0.5)


def test_finetune_profile_and_rewind_step():
    paper = get_profile("paper")
    ft = pruning.finetune_profile(paper)
    assert ft.epochs == paper.finetune_epochs and ft.max_iters_per_epoch is None
    assert training.rewind_step(paper, 60_000) == round(training.REWIND_FRACTION * 60 * 469)
    smoke = get_profile("smoke")
    assert pruning.finetune_profile(smoke).max_iters_per_epoch == smoke.finetune_iters
    # the length is the protocol's: only a numerical blow-up stops a fine-tuning, not a collapse to noise
    assert training.energy_gap_bound(ft) == math.inf and ft.max_abs_energy == paper.max_abs_energy
    assert training.energy_gap_bound(paper) < math.inf
    assert training.rewind_step(smoke, 512) >= 1


@pytest.mark.parametrize("key", ["structured_global", "structured_conv"])
def test_physical_removal_of_the_plain_cnn_baseline(key, mnist_test):
    """Tutorial 8's CNN (no residual adds; Flatten into a hidden Linear layer): the channels go
    layer by layer, a conv channel cut before Flatten takes its inputs of the next Linear with it."""
    torch.manual_seed(0)
    masked = pruning.apply_pruning(tutorial8_cnn_energy(), key, 0.5)
    phys = pruning.physically_prune(masked)
    convs = [m for m in phys.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in phys.modules() if isinstance(m, nn.Linear)]
    assert all(a.out_channels == b.in_channels for a, b in zip(convs, convs[1:]))
    assert linears[0].in_features == convs[-1].out_channels * 2 * 2  # 2x2 feature maps are flattened
    assert linears[-1].out_features == 10  # the logits head is never cut
    assert count_parameters(phys) < 0.5 * count_parameters(masked)
    x = mnist_test[0][:64]
    with torch.no_grad():
        torch.testing.assert_close(phys(x), masked(x), atol=1e-5, rtol=1e-5)


def test_lottery_ticket_rewinds_to_the_runs_snapshot_and_trains_like_one_shot(
    tmp_path, monkeypatch, one_thread, tiny_baseline
):
    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path))
    ctx = Context(tiny_baseline.replace(finetune_iters=3, lottery_rounds=2), torch.device("cpu"))
    baseline = training.load_or_train_baseline(ctx, progress=False)  # keeps the rewind snapshot
    data = baseline.data
    early, k = pruning.early_weights(ctx)
    assert k == training.rewind_step(ctx.profile, len(data)) and 0 < k < baseline.step
    assert any(not torch.equal(early[n], t) for n, t in baseline.model.state_dict().items())  # not the final weights
    ticket, rounds = pruning.lottery_ticket(ctx, baseline, early, "unstructured_conv", 0.5, data, progress=False)
    pruned = pruning.apply_pruning(pruning.copy_model(baseline.model), "unstructured_conv", 0.5)
    one_shot, _ = pruning.finetune(ctx, pruned, data, baseline.buffer, "one_shot", progress=False)
    assert rounds.iterations.tolist() == [one_shot.step] * ctx.profile.lottery_rounds
    assert one_shot.step == training.training_iterations(pruning.finetune_profile(ctx.profile), len(data))
    assert rounds.sparsity.is_monotonic_increasing and not rounds.diverged.any()
    for conv in (m for m in ticket.modules() if isinstance(m, nn.Conv2d)):
        w = pruning.effective_weight(conv)
        assert abs(float((w == 0).float().mean()) - 0.5) < 0.02  # the target, reached in two rounds
    assert (ticket.net[-1].weight != 0).all()  # the Conv2d-only strategy leaves the head dense


class RecordingEvaluator:
    """Stands in for metrics.Evaluator: records what score() received."""

    def __init__(self, ctx):
        self.ctx, self.calls = ctx, []

    def score(self, model, name, **kwargs):
        self.calls.append((model, name, kwargs))
        row = {"model": name, "IS": 1.0, **kwargs.get("columns", {})}
        return row, pd.DataFrame(), torch.zeros(4, 1, 28, 28)


def test_score_variant_is_a_thin_wrapper_over_evaluator_score(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    ev = RecordingEvaluator(Context(get_profile("smoke"), torch.device("cpu")))
    masked = pruning.apply_pruning(small_resnet(), "structured_conv", 0.5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    row = pruning.score_variant(
        ev, masked, pruning.STRATEGIES["structured_conv"], 0.5, True, rollbacks=2, diverged=False
    )
    assert torch.equal(torch.get_rng_state(), before)  # no reseeding of its own
    ((model, name, kwargs),) = ev.calls
    assert not pruning.is_masked(model) and pruning.sparsity(model) == pruning.sparsity(masked)
    assert row["rollbacks"] == 2 and row["diverged"] is False and row["finetuned"] and row["method"] == "one-shot"
    assert (tmp_path / "smoke" / f"samples_{row['samples']}.pt").exists()


def _rows():
    base = {
        "IS": 2.0,
        "IS_std": 0.1,
        "FID": 50.0,
        "FID_std": 2.0,
        "auroc_noise": 0.9,
        "auroc_flip": 0.7,
        "auroc_reduced": 0.8,
        "auroc_worst": 0.7,
        "worst_set": "flip",
        "method": "one-shot",
    }
    rows = []
    for key in pruning.STRATEGIES:
        for tuned in (False, True) if pruning.STRATEGIES[key].finetuned else (False,):
            rows.append(
                {
                    **base,
                    "strategy": key,
                    "ratio": 0.6,
                    "finetuned": tuned,
                    "sparsity": 0.6,
                    "rollbacks": 0,
                    "diverged": False,
                }
            )
    rows[2].update(rollbacks=2, auroc_reduced=0.4, auroc_worst=0.4, worst_set="reduced")  # unstructured_conv + ft
    rows[-1].update(rollbacks=5, diverged=True)  # structured_conv + ft
    return base, pd.DataFrame(rows)


def test_figure2_marks_rolled_back_and_diverged_runs_and_draws_error_bars():
    base, df = _rows()
    refs = verdicts.References(base_IS=2.0, base_FID=50.0, noise_IS=1.0, noise_FID=5000.0)
    fig = plotting.plot_figure2(df, base, refs=refs)
    labels = fig.axes[len(pruning.QUALITY_METRICS)].get_legend_handles_labels()[1] + [
        t.get_text() for t in fig.axes[len(pruning.QUALITY_METRICS)].get_legend().get_texts()
    ]
    assert any(lab.startswith("fine-tuning rolled back") for lab in labels)
    assert any(lab.startswith("fine-tuning diverged") for lab in labels)
    titles = [ax.get_title() for ax in fig.axes]
    assert all(any(m in t for t in titles) for m in ("noise", "upside-down", "corner"))
    fid_ax = fig.axes[list(pruning.QUALITY_METRICS).index("FID")]
    assert fid_ax.containers and any(c.has_yerr for c in fid_ax.containers)
    assert fid_ax.get_yscale() == "log"  # FID spans orders of magnitude across the sweep
    for metric, level in (("IS", refs.is_min), ("FID", refs.fid_max)):  # where "generates" starts
        ax = fig.axes[list(pruning.QUALITY_METRICS).index(metric)]
        lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("generates")]
        assert len(lines) == 1 and list(lines[0].get_ydata()) == pytest.approx([level, level])
    plain = df.assign(IS_std=float("nan"), FID_std=float("nan"), rollbacks=0, diverged=False)
    fig2 = plotting.plot_figure2(plain, {**base, "IS_std": float("nan"), "FID_std": float("nan")}, refs=refs)
    texts = [t.get_text() for t in fig2.axes[len(pruning.QUALITY_METRICS)].get_legend().get_texts()]
    assert not any(t.startswith("fine-tuning rolled back") for t in texts)
    assert not any(c.has_yerr for c in fig2.axes[0].containers)


def _mixed_generation_sweep():
    """One-shot rows of every strategy at three ratios (fine-tuned too where the paper fine-tunes)
    and two lottery tickets, every row with its own scores, and which of them generate against
    references with IS above sqrt(2) and FID below 500."""
    refs = verdicts.References(base_IS=2.0, base_FID=50.0, noise_IS=1.0, noise_FID=5000.0)
    rows = []
    for key, s in pruning.STRATEGIES.items():
        for tuned in (False, True) if s.finetuned else (False,):
            for ratio in (0.3, 0.6, 0.9):
                rows.append({"strategy": key, "ratio": ratio, "finetuned": tuned, "method": "one-shot"})
    rows += [
        {"strategy": "lottery_unstructured_conv", "ratio": 0.9, "finetuned": True, "method": "lottery"},
        {"strategy": "lottery_structured_conv", "ratio": 0.9, "finetuned": True, "method": "lottery"},
    ]
    df = pd.DataFrame(rows).assign(rollbacks=0, diverged=False, IS_std=0.05, FID_std=3.0)
    i = pd.Series(range(len(df)), index=df.index)
    df = df.assign(
        IS=1.9 - 0.01 * i,
        FID=60.0 + i,
        auroc_noise=0.90 - 0.01 * i,
        auroc_flip=0.40 + 0.01 * i,
        auroc_reduced=0.75 - 0.005 * i,
    )
    unstructured_conv_90 = (df.strategy == "unstructured_conv") & (df.ratio == 0.9)
    df.loc[(df.ratio == 0.9) & (df.method == "one-shot") & ~df.finetuned, "FID"] = 2000.0  # FID fails only
    df.loc[unstructured_conv_90 & df.finetuned, "IS"] = 1.2  # IS fails only
    df.loc[df.strategy == "lottery_structured_conv", ["IS", "FID"]] = [1.1, 3000.0]  # both fail
    df.loc[(df.strategy == "structured_global") & (df.ratio == 0.9), "auroc_flip"] = float("nan")  # not scored
    return df, refs, ~df.apply(verdicts.generates, axis=1, refs=refs)


def test_figure2_crosses_out_exactly_the_models_that_do_not_generate_on_every_panel():
    df, refs, silent = _mixed_generation_sweep()
    assert 0 < silent.sum() < len(df) and silent[df.method == "lottery"].tolist() == [False, True]
    base = {"IS": 2.0, "IS_std": 0.1, "FID": 50.0, "FID_std": 2.0, "auroc_noise": 0.9, "auroc_flip": 0.7}
    fig = plotting.plot_figure2(df, base | {"auroc_reduced": 0.8}, refs=refs)
    style = plotting.NO_GENERATION_STYLE
    for ax, metric in zip(fig.axes, pruning.QUALITY_METRICS):
        crossed = [c for c in ax.collections if c.get_label() == plotting.NO_GENERATION_LABEL]
        assert len(crossed) == 1, metric
        expected = df[silent].dropna(subset=[metric])
        got = sorted((round(float(x), 6), round(float(y), 6)) for x, y in crossed[0].get_offsets())
        assert got == sorted((round(r, 6), round(v, 6)) for r, v in zip(expected.ratio, expected[metric])), metric
        assert list(crossed[0].get_sizes()) == [style["s"]]
        assert tuple(crossed[0].get_edgecolor()[0]) == pytest.approx(matplotlib.colors.to_rgba(style["color"]))
        drawn = {round(float(y), 6) for ln in ax.get_lines() for y in ln.get_ydata()}
        drawn |= {round(float(y), 6) for c in ax.collections if "lottery" in c.get_label() for _, y in c.get_offsets()}
        assert {y for _, y in got} <= drawn  # each cross sits on a point of its strategy's line or star
    for metric, level in (("IS", refs.is_min), ("FID", refs.fid_max)):  # the generation floor stays
        ax = fig.axes[list(pruning.QUALITY_METRICS).index(metric)]
        floors = [ln for ln in ax.get_lines() if ln.get_label().startswith("generates")]
        assert len(floors) == 1 and list(floors[0].get_ydata()) == pytest.approx([level, level])
    texts = [t.get_text() for t in fig.axes[len(pruning.QUALITY_METRICS)].get_legend().get_texts()]
    assert texts.count(plotting.NO_GENERATION_LABEL) == 1  # explained once for all panels
    everyone = df.assign(IS=1.9, FID=60.0)  # every model generates: nothing is crossed out
    clean = plotting.plot_figure2(everyone, base | {"auroc_reduced": 0.8}, refs=refs)
    assert not any(c.get_label() == plotting.NO_GENERATION_LABEL for ax in clean.axes for c in ax.collections)


def test_figure2_takes_the_references_of_the_rows_profile_by_default(monkeypatch):
    df, refs, _ = _mixed_generation_sweep()
    asked = []
    monkeypatch.setattr(
        verdicts.References, "for_profile", classmethod(lambda cls, name=None: asked.append(name) or refs)
    )
    assert plotting.figure2_references(df.assign(profile="cpu")) is refs and asked == ["cpu"]
    assert plotting.figure2_references(df) is refs and asked == ["cpu", None]  # no column: EBM_PROFILE's
    explicit = verdicts.References(base_IS=3.0, base_FID=10.0, noise_IS=1.0, noise_FID=1000.0)
    assert plotting.figure2_references(df.assign(profile="cpu"), explicit) is explicit and len(asked) == 2
    with pytest.raises(ValueError, match="several profiles"):
        plotting.figure2_references(df.assign(profile=["smoke"] + ["cpu"] * (len(df) - 1)))
    base = {"IS": 2.0, "FID": 50.0, "auroc_noise": 0.9, "auroc_flip": 0.7, "auroc_reduced": 0.8}
    fig = plotting.plot_figure2(df.assign(profile="smoke"), base)  # the figure asks for the same references
    assert asked[-1] == "smoke"
    assert any(c.get_label() == plotting.NO_GENERATION_LABEL for c in fig.axes[0].collections)


def test_quality_table_names_inverted_transforms_and_keeps_the_guard_record():
    _, df = _rows()
    table = pruning.quality_table(df)
    assert table.columns[-2:].tolist() == ["rollbacks", "diverged"]
    assert "ood_auroc" not in table and {"auroc_noise", "auroc_flip", "auroc_reduced", "auroc_worst"} <= set(table)
    assert table.inverted.tolist() == ["", "", "reduced", "", "", ""]


def test_l1_norm_for_unstructured_and_structured():
    """§3.3.2 names the l1 norm for unstructured and structured pruning alike: channels are ranked by
    their l1 norm (an L2 ranking would order the two channels below the other way round)."""
    assert pruning.STRUCTURED_NORM == 1
    assert all(s.label.startswith("L1") for s in pruning.STRATEGIES.values())
    w = torch.tensor([[3.0, 0.0], [2.0, 2.0]])  # l1: 3 < 4, L2: 3 > 2.83
    scores, *_ = pruning.channel_scores([w])
    assert scores[0] < scores[1]
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 3)
    l1 = conv.weight.detach().flatten(1).abs().sum(1)
    pruning.apply_pruning(nn.Sequential(conv), "structured_conv", 0.5)
    keep = conv.weight_mask.flatten(1).amax(1).bool()
    assert set(torch.nonzero(keep).flatten().tolist()) == set(l1.topk(4).indices.tolist())
    assert pruning.checkpoint_name(pruning.STRATEGIES["structured_conv"], 0.5) == "prune_structured_conv_50_l1"
    assert pruning.checkpoint_name(pruning.STRATEGIES["unstructured_conv"], 0.5) == "prune_unstructured_conv_50"


def test_sweep_always_has_figure4s_variant():
    from ebmhelpers.profiles import get_profile

    p = get_profile("smoke").replace(prune_ratios=(0.3, 0.9))
    jobs = [(s.key, r) for s, r in pruning.sweep_jobs(p)]
    assert ("unstructured_conv", 0.6) in jobs and len(jobs) == 4 * 2 + 1
    assert pruning.STRATEGIES["unstructured_conv"].finetuned  # so it is fine-tuned too
    p60 = p.replace(prune_ratios=(0.6,))
    assert len(pruning.sweep_jobs(p60)) == 4  # not twice


def test_interleaved_speedup_of_a_physically_pruned_model():
    from types import SimpleNamespace

    torch.manual_seed(0)
    dense = tutorial8_cnn_energy().eval()
    masked = pruning.apply_pruning(pruning.copy_model(dense), "structured_conv", 0.5)
    phys = pruning.physically_prune(masked)
    p = get_profile("smoke").replace(latency_batch=4, latency_repeats=5, latency_warmup=1)
    ev = SimpleNamespace(ctx=SimpleNamespace(profile=p), device=torch.device("cpu"))
    out = pruning.interleaved_speedup(ev, dense, phys)
    assert out["speedup_lo"] <= out["speedup_interleaved"] <= out["speedup_hi"]
    assert out["speed_verdict"] in ("faster", "slower", "no difference")


def test_layer_sparsity_names_layers_by_name_kind_and_size():
    t = pd.DataFrame(
        {
            "layer": ["net.0", "net.9"],
            "kind": ["Conv2d", "Linear"],
            "weights": [1600, 20000],
            "sparsity": [0.5, 0.9],
            "zero_channels": [0.0, 0.1],
        }
    )
    fig = plotting.plot_layer_sparsity({key: t for key in pruning.STRATEGIES})
    names = [x.get_text() for x in fig.axes[0].get_xticklabels()]
    assert names == ["net.0\nConv2d\n1,600 weights", "net.9\nLinear\n20,000 weights"]
    assert all(x.get_rotation() == 0 for x in fig.axes[0].get_xticklabels())


@pytest.mark.parametrize("key", sorted(pruning.STRATEGIES))
def test_pruning_takes_nhwc_weights(key):
    """A baseline trained with channels_last weights prunes like one in the default layout."""
    dense = small_resnet()
    nhwc = pruning.copy_model(dense).to(memory_format=torch.channels_last)
    a, b = pruning.apply_pruning(dense, key, 0.5), pruning.apply_pruning(nhwc, key, 0.5)
    for (name, x), (_, y) in zip(
        pruning.remove_masks(a).state_dict().items(), pruning.remove_masks(b).state_dict().items()
    ):
        assert torch.equal(x, y), name


def test_training_seeds_combine_by_the_law_of_total_variance():
    """Three fine-tunings of one pruned model: the row's mean is the mean of the seeds' means and its
    spread includes the spread between training seeds, not only the generation seeds'."""
    seeds = pd.DataFrame(
        {
            "strategy": ["unstructured_conv"] * 3,
            "ratio": [0.6] * 3,
            "finetuned": [True] * 3,
            "FID": [100.0, 110.0, 120.0],
            "FID_std": [2.0, 2.0, 2.0],
            "IS": [5.0, 5.0, 5.0],
            "IS_std": [0.1, 0.1, 0.1],
            "auroc_noise": [0.9, 0.8, 0.7],
            "rollbacks": [0, 1, 0],
            "diverged": [False, False, True],
            "training_seed": [0, 1, 2],
        }
    )
    row = pruning.combine_training_seeds(seeds)
    assert row["FID"] == pytest.approx(110.0) and row["auroc_noise"] == pytest.approx(0.8)
    assert row["FID_std"] == pytest.approx((4.0 + 200.0 / 3) ** 0.5)  # generation variance + between-seed variance
    assert row["FID_train_std"] == pytest.approx(10.0)
    assert row["IS_std"] == pytest.approx(0.1) and row["training_seeds"] == 3
    assert row["auroc_noise_train_std"] == pytest.approx(0.1)  # the per-seed AUROCs' spread (ddof 1)
    assert row["rollbacks"] == 1 and row["diverged"] and "training_seed" not in row
    one = pruning.combine_training_seeds(seeds.iloc[:1])
    assert one["FID_std"] == pytest.approx(2.0) and one["training_seeds"] == 1
    assert math.isnan(one["auroc_noise_train_std"])


def test_combined_worst_auroc_is_the_lowest_of_the_combined_means():
    """Each seed's worst transform differs: the combined row's worst is the lowest mean AUROC, which
    lies above the mean of the seeds' worst values."""
    seeds = pd.DataFrame(
        {
            "FID": [100.0, 100.0],
            "FID_std": [1.0, 1.0],
            "IS": [5.0, 5.0],
            "IS_std": [0.1, 0.1],
            "auroc_noise": [0.99, 0.99],
            "auroc_flip": [0.50, 0.74],
            "auroc_reduced": [0.70, 0.52],
            "worst_set": ["flip", "reduced"],
            "auroc_worst": [0.50, 0.52],
        }
    )
    row = pruning.combine_training_seeds(seeds)
    assert row["worst_set"] == "reduced" and row["auroc_worst"] == pytest.approx(0.61)  # not the mean 0.51


def test_only_the_seeded_ratios_get_several_training_seeds():
    p = get_profile("cpu")
    assert [pruning.training_seeds(p, r) for r in (0.1, 0.3, 0.6, 0.9)] == [1, 3, 3, 3]
    assert pruning.training_seeds(get_profile("smoke"), 0.6) == 1


def test_the_sweep_fine_tunes_every_training_seed_and_keeps_one_row_per_model(monkeypatch):
    """At a seeded ratio each Conv2d-only model is fine-tuned once per training seed, under its own
    committed name and seed, and the sweep's table holds one combined row for it."""
    from types import SimpleNamespace

    p = get_profile("smoke").replace(
        baseline="cnn_tutorial8", prune_ratios=(0.6,), seeded_ratios=(0.6,), training_seeds=2
    )
    calls = []

    def fake_finetune(ctx, model, data, buffer, name, progress=True, seed=0, train=None, commit=None, parent=""):
        calls.append((name, seed, parent))
        return SimpleNamespace(model=model, rollbacks=[]), False

    def fake_score(
        ev, model, strategy, ratio, finetuned, rollbacks=0, diverged=False, method="one-shot", keep_samples=True
    ):
        return {
            "strategy": strategy.key,
            "ratio": ratio,
            "finetuned": finetuned,
            "FID": 100.0 + len(calls),
            "FID_std": 1.0,
            "IS": 5.0,
            "IS_std": 0.1,
            "rollbacks": rollbacks,
            "diverged": diverged,
            "method": method,
            "kept_samples": keep_samples,
        }

    monkeypatch.setattr(pruning, "finetune", fake_finetune)
    monkeypatch.setattr(pruning, "score_variant", fake_score)
    monkeypatch.setattr(pruning, "cost_row", lambda ev, m: {})
    monkeypatch.setattr(pruning, "interleaved_speedup", lambda ev, a, b: {})
    torch.manual_seed(0)
    baseline = SimpleNamespace(model=tutorial8_cnn_energy(), buffer=None, identity="sha-of-baseline")
    ev = SimpleNamespace(ood_x=torch.rand(8, 1, 28, 28) * 2 - 1)
    rows, timings = pruning.prune_sweep(
        SimpleNamespace(profile=p, device=torch.device("cpu")), ev, baseline, None, progress=False
    )
    assert sorted(zip(timings.strategy, timings.variant)) == [  # every structured model timed masked and physical
        ("structured_conv", "masked"),
        ("structured_conv", "physical"),
        ("structured_global", "masked"),
        ("structured_global", "physical"),
    ]
    assert sorted(calls) == [
        ("prune_structured_conv_60_l1", 0, "sha-of-baseline"),
        ("prune_structured_conv_60_l1_s1", 1, "sha-of-baseline"),
        ("prune_unstructured_conv_60", 0, "sha-of-baseline"),
        ("prune_unstructured_conv_60_s1", 1, "sha-of-baseline"),
    ]
    tuned = rows[rows.finetuned]
    assert len(tuned) == 2 and tuned.training_seeds.tolist() == [2, 2]
    assert rows[~rows.finetuned].training_seeds.tolist() == [1, 1, 1, 1]
    assert (tuned.FID_std > 1.0).all()  # the two seeds scored differently: training variance counted


def test_strategy_colours_are_four_distinct_hues():
    """Figure 2's strategies: no two oranges (the colour-blind palette's orange and vermillion)."""
    import colorsys

    hues = sorted(colorsys.rgb_to_hsv(*c)[0] for c in plotting.strategy_palette().values())
    gaps = [b - a for a, b in zip(hues, hues[1:])] + [1 + hues[0] - hues[-1]]
    assert len(hues) == len(pruning.STRATEGIES) and min(gaps) > 0.08


def _speed_inputs():
    """A baseline row, a sweep with one structured strategy at two ratios (70% no longer generates)
    and its timings: masked at about 1x, physically pruned faster."""
    base = {
        "latency_ms_cpu": 10.0,
        "params": 1000,
        "size_mb": 4.0,
        "sgld_img_steps_per_s": 100.0,
        "IS": 6.0,
        "IS_std": 0.1,
        "FID": 100.0,
        "FID_std": 2.0,
        "auroc_worst": 0.95,
    }
    quality = pd.DataFrame(
        [
            {
                "strategy": "structured_global",
                "ratio": r,
                "finetuned": False,
                "method": "one-shot",
                "IS": is_,
                "FID": fid,
                "auroc_worst": 0.9,
                "rollbacks": 0,
                "diverged": False,
                "latency_ms_cpu": 10.5,
                "params": 1000,
                "size_mb": 4.0,
                "sgld_img_steps_per_s": 80.0,
            }
            for r, is_, fid in ((0.3, 5.0, 150.0), (0.7, 1.2, 900.0))
        ]
    )
    timings = pd.DataFrame(
        [
            {
                "strategy": "structured_global",
                "ratio": r,
                "variant": "masked",
                "speedup_interleaved": 1.02,
                "speedup_lo": 0.9,
                "speedup_hi": 1.1,
                "speed_verdict": "no difference",
            }
            for r in (0.3, 0.7)
        ]
        + [
            {
                "strategy": "structured_global",
                "ratio": r,
                "variant": "physical",
                "params": n,
                "size_mb": n / 250,
                "latency_ms_cpu": 10.0 / s,
                "sgld_img_steps_per_s": 100.0 * s,
                "speedup_interleaved": s,
                "speedup_lo": s - 0.2,
                "speedup_hi": s + 0.3,
                "speed_verdict": "faster",
            }
            for r, n, s in ((0.3, 500, 1.5), (0.7, 100, 3.0))
        ]
    )
    return base, quality, timings


def test_speed_table_carries_interleaved_timings_for_masked_and_physical_models():
    base, quality, timings = _speed_inputs()
    table = pruning.speed_table(base, quality, timings)
    assert list(table.columns) == list(pruning.speed_columns("cpu"))
    speed = table.set_index(["variant", "ratio"])
    assert speed.loc[("dense", 0.0), "speedup_interleaved"] == 1.0
    assert speed.loc[("masked", 0.3), "speedup_interleaved"] == 1.02  # from the timings, not the score row
    assert speed.loc[("masked", 0.3), "speedup_sgld"] == pytest.approx(0.8)  # one-off, kept apart
    assert speed.loc[("physical", 0.7), ["speedup_lo", "speedup_hi"]].tolist() == [2.8, 3.3]
    assert speed.loc[("physical", 0.7), "param_fraction"] == pytest.approx(0.1)
    bare = pruning.speed_table(base, quality, timings[timings.variant == "physical"])
    assert bare[bare.variant == "masked"].speedup_interleaved.isna().all()  # untimed, not invented


def test_speedup_figure_plots_interleaved_medians_with_quartile_bars_and_fronts_only_generating_models():
    base, quality, timings = _speed_inputs()
    speed = pruning.speed_table(base, quality, timings)
    refs = verdicts.References(base_IS=6.0, base_FID=100.0, noise_IS=1.0, noise_FID=2500.0)  # IS > 2.45, FID < 500
    fig = plotting.plot_speedup(speed, quality, base, refs=refs)
    fid_ax = fig.axes[0]
    xs = sorted(float(x) for c in fid_ax.collections if c.get_label().startswith("L1") for x, _ in c.get_offsets())
    assert xs == [1.02, 1.02, 1.5, 3.0]
    bars = [c for c in fid_ax.containers if c.has_xerr]
    assert bars, "no horizontal error bars"
    spans = sorted(tuple(round(v, 6) for v in seg[:, 0]) for c in bars for seg in c.lines[2][0].get_segments())
    assert (1.3, 1.8) in spans and (2.8, 3.3) in spans  # quartile spread of the physical models
    crossed = [c for c in fid_ax.collections if c.get_label().startswith("does not generate")]
    assert len(crossed) == 1 and sorted(float(x) for x, _ in crossed[0].get_offsets()) == [1.02, 3.0]
    front = next(ln for ln in fid_ax.get_lines() if ln.get_label().startswith("Pareto front"))
    assert 3.0 not in set(front.get_xdata()) and 900.0 not in set(front.get_ydata())
    assert set(front.get_xdata()) <= {1.0, 1.02, 1.5}


def test_a_row_combined_over_training_seeds_adds_the_declared_columns():
    row = dict.fromkeys(pruning.sweep_columns("cpu"), 0.5) | {"model": "m", "worst_set": "flip", "rollbacks": 0}
    rows = pd.DataFrame([row | {"IS": 5.0, "training_seed": 0}, row | {"IS": 6.0, "training_seed": 1}])
    combined = pruning.combine_training_seeds(rows)
    assert list(combined) == [*pruning.sweep_columns("cpu"), *pruning.TRAINING_SEED_COLUMNS]
    assert combined["IS_train_std"] == pytest.approx(0.5**0.5) and combined["auroc_flip_train_std"] == 0.0


def test_committed_pruning_tables_load_with_their_declarations(committed_cpu_table):
    written = (*pruning.sweep_columns("cpu"), *pruning.TRAINING_SEED_COLUMNS)
    sweep = committed_cpu_table("pruning", pruning.sweep_columns(), written)
    speed = committed_cpu_table("pruning_speed", pruning.speed_columns(), pruning.speed_columns("cpu"))
    assert set(sweep.method) == {"one-shot", "lottery"} and set(speed.variant) == {"dense", "masked", "physical"}
