import math

import pandas as pd
import pytest
import torch

from ebmhelpers import comparison, results, runtime
from ebmhelpers.profiles import SGLDConfig, get_profile


def test_pareto_front_drops_dominated_rows():
    df = pd.DataFrame({"model": list("abcde"), "size": [1, 2, 3, 2, 5], "FID": [9.0, 5.0, 6.0, 4.0, 1.0]})
    front = comparison.pareto_front(df, "size", "FID")
    assert front.model.tolist() == ["a", "d", "e"]  # b is beaten by d (same size, lower FID), c by d
    front_auroc = comparison.pareto_front(df.assign(auroc=[0.5, 0.9, 0.8, 0.7, 0.6]), "size", "auroc", False)
    assert front_auroc.model.tolist() == ["a", "b"]


def test_step_size_rescaling_rule():
    base = SGLDConfig(steps=256, step_size=10.0, noise_std=0.005, grad_clamp=0.03)
    cfg = comparison.rescaled_step_size(base, 64, ref_steps=256)
    assert cfg.steps == 64 and cfg.step_size == pytest.approx(20.0) and cfg.grad_clamp == 0.03
    assert comparison.rescaled_step_size(base, 256, 256).step_size == 10.0


def test_best_pruning_ratio_is_largest_that_keeps_quality():
    base = pd.Series({"FID": 10.0, "ood_auroc": 0.9})
    rows = [("l1", False, r, fid, au) for r, fid, au in [(0.2, 10.0, 0.9), (0.4, 10.9, 0.89), (0.6, 30.0, 0.9)]]
    rows += [("ln", False, r, fid, 0.5) for r, fid in [(0.2, 12.0), (0.4, 11.5)]]  # none keeps quality
    df = pd.DataFrame(rows, columns=["strategy", "finetuned", "ratio", "FID", "ood_auroc"])
    best = comparison.best_pruning_rows(df, base)
    assert best.set_index("strategy").ratio.to_dict() == {"l1": 0.4, "ln": 0.4}
    assert not comparison.keeps_quality(pd.Series({"FID": math.nan, "ood_auroc": 1.0}), base)


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
         "size_mb": [40.0, 10.0, 0.4], "FID": [10.0, math.nan, 10.5], "ood_auroc": [0.8, 0.8, 0.5]}
    )
    table["compression_x"] = 40.0 / table.size_mb
    budget = pd.DataFrame({"model": "baseline", "rule": "fixed step", "K": [16, 64, 256],
                           "FID": [30.0, 10.5, 10.0], "seconds": [1.0, 4.0, 16.0]})
    text = comparison.conclusions(table, budget)
    assert "int8 (quantization): 4.0x smaller" in text[0] and "no samples" in text[0] and "does not keep" in text[0]
    assert "does not keep" in text[1]  # FID fine, AUROC 0.5 vs 0.8
    assert text[2].startswith("No compressed model keeps")
    assert "K=64 steps reach FID 10.5" in text[3] and "25% of the time" in text[3]
