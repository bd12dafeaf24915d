import math

import pandas as pd
import pytest
import torch

from ebmhelpers import comparison, results, runtime, verdicts
from ebmhelpers.models import ResNetEnergy
from ebmhelpers.profiles import SGLDConfig, get_profile

NAN = float("nan")


def _row(fid, fid_std=NAN, noise=0.9, flip=0.9, reduced=0.9, IS=4.0, IS_std=NAN, **extra):
    return pd.Series({"FID": fid, "FID_std": fid_std, "auroc_noise": noise, "auroc_flip": flip,
                      "auroc_reduced": reduced, "IS": IS, "IS_std": IS_std, **extra})  # fmt: skip


def test_pareto_front_drops_dominated_rows():
    df = pd.DataFrame({"model": list("abcde"), "size": [1, 2, 3, 2, 5], "FID": [9.0, 5.0, 6.0, 4.0, 1.0]})
    front = verdicts.pareto_front(df, "size", "FID")
    assert front.model.tolist() == ["a", "d", "e"]  # b is beaten by d (same size, lower FID), c by d
    front_auroc = verdicts.pareto_front(df.assign(auroc=[0.5, 0.9, 0.8, 0.7, 0.6]), "size", "auroc", False)
    assert front_auroc.model.tolist() == ["a", "b"]


def test_rescaled_step_keeps_temperature_and_total_time_in_both_directions():
    base = SGLDConfig(steps=256, step_size=10.0, noise_std=0.005, grad_clamp=0.03)
    t_ref = base.temperature
    assert t_ref == pytest.approx(0.005**2 / 20)  # notebook 00: 1.25e-6 at the paper's settings
    for k in (16, 64, 256, 512, 1024):
        cfg = comparison.rescaled_step_size(base, k, ref_steps=256)
        assert cfg.steps == k and cfg.grad_clamp == 0.03 and cfg.clamp_range == base.clamp_range
        assert cfg.temperature == pytest.approx(t_ref, rel=1e-12)
        assert k * cfg.step_size == pytest.approx(256 * 10.0)  # same total "time" K * step
    fewer, more = comparison.rescaled_step_size(base, 64, 256), comparison.rescaled_step_size(base, 512, 256)
    assert fewer.step_size == pytest.approx(40.0) and fewer.noise_std == pytest.approx(0.01)
    assert more.step_size == pytest.approx(5.0) and more.noise_std == pytest.approx(0.005 / math.sqrt(2))
    assert comparison.rescaled_step_size(base, 256, 256) == base


def test_budget_study_holds_temperature_fixed_on_both_sides_of_the_reference():
    p = get_profile("smoke")
    ks = comparison.budget_steps(p)
    assert min(ks) < p.gen_steps < max(ks) and p.gen_steps in ks
    configs = comparison.budget_configs(p, ks, p.gen_steps)
    assert len(configs) == len(ks) * len(comparison.BUDGET_RULES)
    t = p.sgld_config().temperature
    assert all(cfg.temperature == pytest.approx(t, rel=1e-12) for _, _, cfg in configs)
    fixed = [(k, c) for k, r, c in configs if r == comparison.FIXED_STEP]
    rescaled = [(k, c) for k, r, c in configs if r == comparison.FIXED_TIME]
    assert all(c.step_size == p.sgld_step_size and c.steps == k for k, c in fixed)
    assert len({round(k * c.step_size, 9) for k, c in rescaled}) == 1
    assert dict(fixed)[p.gen_steps] == dict(rescaled)[p.gen_steps]  # the rules meet at the reference


class _FakeEvaluator:
    """Counts quality calls; FID falls with the step size so rows can be told apart."""

    def __init__(self):
        self.calls = []

    def quality(self, model, cfg, progress=True):
        self.calls.append(cfg)
        return {"IS": 1.0, "IS_std": NAN, "FID": 100.0 / cfg.steps, "FID_std": NAN, "n_seeds": 1}, None


def test_sampling_budget_rows_and_shared_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    p = get_profile("smoke").replace(latency_batch=2, gen_steps=4, budget_steps=(2, 4))
    ctx = runtime.Context(p, torch.device("cpu"))
    torch.manual_seed(0)
    ev = _FakeEvaluator()
    steps = comparison.budget_steps(p)
    assert steps == (2, 4, 8)
    table = comparison.sampling_budget(ctx, ev, {"tiny": ResNetEnergy((1,), (4,))}, steps, ref_steps=4, repeats=1)
    assert len(table) == 6 and len(ev.calls) == 5  # K=4 is scored once for both rules
    assert table.temperature.nunique() == 1 or table.temperature.std() < 1e-15
    assert (table.seconds > 0).all()
    assert table.groupby("K").seconds.nunique().eq(1).all()  # one timing per K, shared by both rules
    rescaled = table[table.rule == comparison.FIXED_TIME]
    assert rescaled.total_time.round(9).nunique() == 1


def test_keeps_quality_uses_the_spread_and_every_transform():
    base = _row(10.0, 1.0)
    assert comparison.keeps_quality(_row(10.9, NAN), base)
    assert comparison.keeps_quality(_row(11.4, 1.0), base)  # 11.4 <= 10 + sqrt(2)
    assert not comparison.keeps_quality(_row(11.5, 1.0), base)
    assert not comparison.keeps_quality(_row(10.1), _row(10.0))  # one seed each: no allowance
    # IS: within the combined spread, and above the floor: a noise generator never keeps quality
    assert not comparison.keeps_quality(_row(10.0, 1.0, IS=3.6, IS_std=0.1), _row(10.0, 1.0, IS=4.0, IS_std=0.1))
    assert not comparison.keeps_quality(_row(10.0, IS=1.1), _row(10.0, IS=1.1))
    assert "does not generate" in comparison.quality_failures(_row(10.0, IS=1.1), base)[0]
    # one transform dropping is enough, however much the others improve (no averaging)
    assert not comparison.keeps_quality(_row(10.0, flip=0.5, noise=1.0, reduced=1.0), _row(10.0))
    assert comparison.keeps_quality(_row(10.0, flip=0.885), _row(10.0))
    assert not comparison.keeps_quality(_row(NAN), base)
    assert "flip" in comparison.quality_failures(_row(10.0, flip=0.5), _row(10.0))[0]


def test_best_pruning_ratio_is_largest_that_keeps_quality():
    base = _row(10.0)
    rows = [("l1", False, r, fid, au) for r, fid, au in [(0.2, 10.0, 0.9), (0.4, 10.0, 0.89), (0.6, 30.0, 0.9)]]
    rows += [("ln", False, r, fid, 0.5) for r, fid in [(0.2, 12.0), (0.4, 11.5)]]  # none keeps quality
    df = pd.DataFrame(rows, columns=["strategy", "finetuned", "ratio", "FID", "auroc_flip"])
    df = df.assign(auroc_noise=0.9, auroc_reduced=0.9, FID_std=NAN, IS=4.0, IS_std=NAN)
    best = comparison.best_pruning_rows(df, base)
    assert best.set_index("strategy").ratio.to_dict() == {"l1": 0.4, "ln": 0.4}


def test_inverted_sets_marks_auroc_below_half():
    assert comparison.inverted_sets(_row(1.0, flip=0.3, auroc_fashion=0.49, auroc_uniform=0.5)) == "flip, fashion"
    assert comparison.inverted_sets(_row(1.0)) == ""


def _score_row(model, size, fid, flip=0.9, **extra):
    return {"model": model, "params": 100, "size_mb": size, "latency_ms_cpu": 1.0, "latency_batch": 16, "IS": 2.0,
            "IS_std": 0.1, "FID": fid, "FID_std": 1.0, "n_seeds": 3, "auroc_noise": 0.9, "auroc_flip": flip,
            "auroc_reduced": 0.8, "auroc_worst": min(0.8, flip), "worst_set": "flip" if flip < 0.8 else "reduced",
            "auroc_fashion": 0.7, "auroc_uniform": 1.0, "generative": True, "hardware": "cpu", **extra}  # fmt: skip


def test_comparison_table_from_saved_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    ctx = runtime.Context(get_profile("smoke"), torch.device("cpu"))
    results.save_table(ctx, "baseline", pd.DataFrame([_score_row("baseline", 40.0, 10.0)]))
    results.save_table(ctx, "quantization", pd.DataFrame([_score_row("int8 static", 10.0, NAN, generative=False)]))
    prune = [_score_row(f"p{r}{ft}", 40.0, fid, strategy="s", ratio=r, finetuned=ft, rollbacks=rb, diverged=dv,
                        method="one-shot") for r, ft, fid, rb, dv in
             [(0.2, False, 10.5, 0, False), (0.6, False, 50.0, 0, False), (0.6, True, 10.2, 2, True)]]  # fmt: skip
    results.save_table(ctx, "pruning", pd.DataFrame(prune))
    results.save_table(ctx, "distillation", pd.DataFrame([_score_row("resnet_77k/mixed", 0.3, 30.0, flip=0.3)]))
    table = comparison.comparison_table(ctx)
    assert "ood_auroc" not in table and {"auroc_noise", "auroc_flip", "auroc_reduced", "auroc_worst"} <= set(table)
    by = table.set_index("model")
    assert by.loc["p0.2False", "rollbacks"] == 0 and by.loc["p0.6True", "rollbacks"] == 2 and by.loc["p0.6True", "diverged"]
    assert "p0.6False" not in by.index  # 0.2 is the largest one-shot ratio that keeps quality
    assert by.loc["resnet_77k/mixed", "inverted_sets"] == "flip" and not by.loc["resnet_77k/mixed", "keeps_quality"]
    assert by.loc["p0.6True", "keeps_quality"] and by.loc["int8 static", "compression_x"] == pytest.approx(4.0)
    text = comparison.conclusions(table)
    assert any("Inverted detectors" in line and "resnet_77k/mixed: flip" in line for line in text)
    assert any("2 rollback(s), gave up" in line for line in text)
    paper = comparison.paper_table(table).set_index("quantity")
    assert paper.loc["Table 1: fp32 size (MB)", "this project"] == 40.0
    assert paper.loc["student parameters", "this project"] == 100
    # a table saved before the per-transform columns existed: NaN and a note, not a crash
    results.save_table(ctx, "baseline", pd.DataFrame([{"model": "baseline", "size_mb": 40.0, "FID": 10.0, "ood_auroc": 0.9}]))
    old = comparison.comparison_table(ctx)
    assert "baseline.csv has no auroc_noise" in capsys.readouterr().out and math.isnan(old.auroc_noise.iloc[0])


def test_paper_table_ratios_are_computed():
    table = pd.DataFrame([_score_row("baseline", 44.686821, 400.0, family="baseline"),
                          _score_row("int8 static", 11.315163, NAN, family="quantization")])  # fmt: skip
    paper = comparison.paper_table(table).set_index("quantity")
    assert paper.loc["Table 1: compression (x)", "paper"] == pytest.approx(134.1 / 11.3)
    assert paper.loc["Table 1: compression (x)", "this project"] == pytest.approx(44.686821 / 11.315163)
    assert "3.00x the 44.7 MB" in paper.loc["Table 1: fp32 size (MB)", "what differs and why"]
    assert paper.loc["baseline FID", "paper"] == 5275 and paper.loc["baseline IS", "paper"] == 1.13
    assert paper.loc["Table 1: int8 speed-up (x)", "paper"] == pytest.approx(0.0263 / 0.0132)
    assert len(comparison.PAPER_TABLE2) == 9 and comparison.PAPER_TABLE2[("noise", 4)] == -0.45  # §4.3, Table 2
    assert paper.loc["Table 2: flip, digit 9 (gap)", "paper"] == 0.0
    assert paper.filter(like="Table 2", axis=0).paper.notna().all()


def test_missing_results_name_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    ctx = runtime.Context(get_profile("smoke"), torch.device("cpu"))
    with pytest.raises(results.MissingResultsError, match="02_evaluation"):
        comparison.comparison_table(ctx)
    with pytest.raises(results.MissingResultsError, match="05_distillation"):
        results.load_samples(ctx, "student_x")
    x = torch.rand(50, 1, 28, 28) * 2 - 1
    results.save_samples(ctx, "baseline", x)
    back = results.load_samples(ctx, "baseline")
    assert back.shape == (40, 1, 28, 28) and (back - x[:40]).abs().max() <= 1 / 127.5 + 1e-6


def test_conclusions_follow_the_numbers():
    table = pd.DataFrame(
        {"model": ["baseline", "int8", "student"], "family": ["baseline", "quantization", "distillation"],
         "size_mb": [40.0, 10.0, 0.4], "FID": [10.0, NAN, 10.5], "FID_std": [NAN, NAN, NAN], "n_seeds": [1, 0, 1],
         "auroc_noise": [0.8, 0.8, 0.8], "auroc_flip": [0.8, 0.8, 0.45], "auroc_reduced": [0.8, 0.8, 0.9],
         "auroc_worst": [0.8, 0.8, 0.45], "worst_set": ["noise", "noise", "flip"], "inverted_sets": ["", "", "flip"]}
    )  # fmt: skip
    table["compression_x"] = 40.0 / table.size_mb
    budget = pd.DataFrame({"model": "baseline", "rule": "fixed step", "K": [16, 64, 256, 512], "ref_K": 256,
                           "FID": [30.0, 10.5, 10.0, 5.0], "FID_std": NAN, "seconds": [1.0, 4.0, 16.0, 32.0]})
    text = comparison.conclusions(table, budget)
    assert "int8 (quantization): 4.0x smaller" in text[0] and "no samples" in text[0] and "does not keep" in text[0]
    assert "does not keep" in text[1] and "auroc_flip 0.450 < 0.800" in text[1] and "inverted detector on flip" in text[1]
    assert text[2].startswith("No compressed model keeps")
    assert any(line.startswith("Inverted detectors") and "student: flip" in line for line in text)
    assert any("K=64 steps keep FID" in line and "25% of the time" in line for line in text)
    assert any("K=512 (2.0x the time)" in line and "lower than" in line and "no spread" in line for line in text)
    budget["FID_std"] = 1.0  # with a spread: 5 +- 1 is better than 10 +- 1
    assert any("K=512" in line and "better than" in line for line in comparison.conclusions(table, budget))
