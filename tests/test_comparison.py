import math

import pandas as pd
import pytest
import torch

from ebmhelpers import comparison, distillation, metrics, pruning, results, runtime
from ebmhelpers.profiles import get_profile
from ebmhelpers.verdicts import References

NAN = float("nan")
REFS = References(
    base_IS=7.0,
    base_FID=300.0,
    noise_IS=1.0,
    noise_FID=4000.0,
    ood_n={(s, "all"): (2000, 2000) for s in ("noise", "flip", "reduced")},
)


def _score_row(model, size, fid, flip=0.9, IS=7.0, **extra):
    """A row with every column of a scored table (metrics.score_columns), AUROC 0.9 unless given."""
    return {
        **{c: 0.9 if c.startswith("auroc_") else 0.0 for c in metrics.score_columns("cpu")},
        "model": model,
        "params": 100,
        "size_mb": size,
        "latency_ms_cpu": 1.0,
        "latency_batch": 16,
        "IS": IS,
        "IS_std": 0.02,
        "FID": fid,
        "FID_std": 1.0,
        "n_seeds": 3,
        "auroc_noise": 0.9,
        "auroc_flip": flip,
        "auroc_reduced": 0.8,
        "auroc_worst": min(0.8, flip),
        "worst_set": "flip" if flip < 0.8 else "reduced",
        "auroc_fashion": 0.7,
        "auroc_uniform": 1.0,
        "generative": True,
        "hardware": "cpu",
        **extra,
    }


def _save_references(ctx):
    results.save_table(
        ctx,
        "baseline_references",
        pd.DataFrame(
            [
                {"samples": "real training digits", "IS": 9.7, "FID": 36.0},
                {"samples": "uniform noise", "IS": 1.0, "FID": 4000.0},
            ]
        ),
    )
    results.save_table(
        ctx,
        "baseline_ood",
        pd.DataFrame(
            [
                {
                    "model": "baseline",
                    "ood_set": s,
                    "digits": "all",
                    "n": 2000,
                    "gap": -0.1,
                    "auroc": 0.9,
                    "inverted": False,
                }
                for s in ("noise", "flip", "reduced")
            ]
        ),
    )


def test_best_pruning_ratio_is_largest_that_keeps_quality():
    base = pd.Series(_score_row("baseline", 1.0, 300.0))
    rows = [("l1", False, r, fid, au) for r, fid, au in [(0.2, 305.0, 0.9), (0.4, 310.0, 0.895), (0.6, 900.0, 0.9)]]
    rows += [("ln", False, r, fid, 0.5) for r, fid in [(0.2, 320.0), (0.4, 310.0)]]  # none keeps quality (flip)
    rows += [("noise", False, r, 3900.0, 0.9) for r in (0.2, 0.4)]  # none generates: the highest IS
    df = pd.DataFrame(rows, columns=["strategy", "finetuned", "ratio", "FID", "auroc_flip"])
    df = df.assign(auroc_noise=0.9, auroc_reduced=0.8, FID_std=1.0, IS=7.0, IS_std=0.02, n_seeds=3)
    df.loc[df.strategy == "noise", "IS"] = [1.1, 1.2]
    best = comparison.best_pruning_rows(df, base, REFS).set_index("strategy").ratio.to_dict()
    assert best == {"l1": 0.4, "ln": 0.4, "noise": 0.4}  # ln: lowest FID among those that generate


def test_comparison_table_from_saved_results(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    ctx = runtime.Context(get_profile("smoke"), torch.device("cpu"))
    _save_references(ctx)
    results.save_table(
        ctx, "baseline", pd.DataFrame([_score_row("baseline", 40.0, 300.0)]), columns=metrics.score_columns("cpu")
    )
    results.save_table(
        ctx, "quantization", pd.DataFrame([_score_row("int8 static", 10.0, NAN, IS=NAN, generative=False)])
    )
    prune = [
        _score_row(
            f"p{r}{ft}",
            40.0,
            fid,
            strategy="s",
            ratio=r,
            sparsity=r,
            finetuned=ft,
            rollbacks=rb,
            diverged=dv,
            method="one-shot",
            samples=f"pruning_s_{r}",
        )
        for r, ft, fid, rb, dv in [
            (0.2, False, 302.0, 0, False),
            (0.6, False, 900.0, 0, False),
            (0.6, True, 301.0, 2, True),
        ]
    ]
    results.save_table(ctx, "pruning", pd.DataFrame(prune), columns=pruning.sweep_columns("cpu"))  # one seed each
    student = _score_row(
        "resnet_77k/mixed",
        0.4,
        2500.0,
        flip=0.3,
        IS=2.0,
        student="resnet_77k",
        variant="mixed",
        sgld_speedup=3.0,
        distill_steps=100,
        **dict.fromkeys(distillation.HELDOUT_COLUMNS, 0.1),
    )
    results.save_table(ctx, "distillation", pd.DataFrame([student]), columns=distillation.table_columns("cpu"))
    table = comparison.comparison_table(ctx)
    assert list(table.columns) == list(comparison.TABLE_COLUMNS)
    by = table.set_index("model")
    assert "p0.6False" not in by.index  # 0.2 is the largest one-shot ratio that keeps quality
    assert (
        by.loc["p0.6True", "rollbacks"] == 2 and by.loc["p0.6True", "diverged"] and by.loc["p0.6True", "keeps_quality"]
    )
    assert by.loc["resnet_77k/mixed", "inverted_sets"] == "flip" and not by.loc["resnet_77k/mixed", "generates"]
    assert not by.loc["int8 static", "generates"] and by.loc["int8 static", "compression_x"] == pytest.approx(4.0)
    speed = pd.DataFrame(
        {
            "strategy": ["s"],
            "ratio": [0.2],
            "variant": ["physical"],
            "speedup_interleaved": [2.0],
            "speedup_lo": [1.5],
            "speedup_hi": [2.5],
        }
    )
    timed = comparison.relative_latency(table, None, speed).set_index("model")  # pruning rows keep strategy and ratio
    assert timed.loc["p0.2False", comparison.LATENCY] == pytest.approx(0.5)
    found = comparison.findings(table, comparison.references(ctx)).set_index("model")
    assert "generates (contradicted)" in found.loc["resnet_77k/mixed", "not shown"]
    assert found.loc["p0.2False", "keeps_quality"] and found.loc["p0.2False", "not shown"] == ""
    # a table without the per-transform columns: one error naming the notebook that writes it
    results.save_table(ctx, "baseline", pd.DataFrame([{"model": "baseline", "size_mb": 40.0, "IS": 7.0, "FID": 300.0}]))
    with pytest.raises(results.MissingResultsError, match="baseline.csv has no column.*auroc_noise.*02_evaluation"):
        comparison.comparison_table(ctx)


def test_relative_latency_comes_from_the_interleaved_timings():
    table = pd.DataFrame(
        [
            {"model": "baseline", "family": "baseline", "strategy": NAN, "ratio": NAN},
            {"model": "int8 static", "family": "quantization", "strategy": NAN, "ratio": NAN},
            {"model": "L1 structured, Conv2d 50%", "family": "pruning", "strategy": "structured_conv", "ratio": 0.5},
            {
                "model": "L1 unstructured, Conv2d 50%",
                "family": "pruning",
                "strategy": "unstructured_conv",
                "ratio": 0.5,
            },
            {"model": "cnn_7k/eq6", "family": "distillation", "strategy": NAN, "ratio": NAN},
        ]
    )
    quant = pd.DataFrame(
        {
            "model": ["fp32", "int8 static"],
            "speedup_cpu": [1.0, 0.8],
            "speedup_lo": [0.9, 0.7],
            "speedup_hi": [1.1, 0.9],
        }
    )
    prune = pd.DataFrame(
        {
            "strategy": ["structured_conv"] * 2,
            "ratio": [0.5, 0.5],
            "variant": ["masked", "physical"],
            "speedup_interleaved": [NAN, 2.0],
            "speedup_lo": [NAN, 1.6],
            "speedup_hi": [NAN, 2.5],
        }
    )
    students = pd.DataFrame(
        {"model": ["baseline", "cnn_7k"], "ratio": [1.0, 4.0], "ratio_lo": [0.9, 3.0], "ratio_hi": [1.1, 5.0]}
    )
    out = comparison.relative_latency(table, quant, prune, students).set_index("model")
    lat = comparison.LATENCY
    assert out.loc["int8 static", lat] == pytest.approx(1.25)
    assert (out.loc["int8 static", f"{lat}_lo"], out.loc["int8 static", f"{lat}_hi"]) == (
        pytest.approx(1 / 0.9),
        pytest.approx(1 / 0.7),
    )
    assert out.loc["L1 structured, Conv2d 50%", lat] == pytest.approx(0.5)
    assert math.isnan(out.loc["L1 unstructured, Conv2d 50%", lat])  # masked: dense kernels, no interleaved timing
    assert out.loc["cnn_7k/eq6", lat] == pytest.approx(0.25) and out.loc["baseline", lat] == pytest.approx(1.0)
    old = comparison.relative_latency(table, None, prune[["strategy", "ratio", "variant"]])  # no interleaved columns
    assert old[lat].isna().all()


def test_student_speed_times_each_architecture_against_the_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    p = get_profile("smoke").replace(latency_batch=2, latency_repeats=5, latency_warmup=1)
    ctx = runtime.Context(p, torch.device("cpu"))
    from ebmhelpers.models import ResNetEnergy

    t = comparison.student_speed(ctx, ResNetEnergy((1,), (4,)), pd.DataFrame({"student": ["cnn_2k", "cnn_2k"]}))
    assert t.model.tolist() == ["baseline", "cnn_2k"] and t.ratio.iloc[0] == 1.0 and (t.n >= 5).all()


def test_missing_results_name_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    ctx = runtime.Context(get_profile("smoke"), torch.device("cpu"))
    with pytest.raises(results.MissingResultsError, match="02_evaluation"):
        comparison.comparison_table(ctx)


def test_committed_comparison_has_no_undeclared_column(committed_cpu_table):
    table = committed_cpu_table("comparison", (), comparison.TABLE_COLUMNS)  # no reader requires its columns
    assert table.model.iloc[0] == "baseline" and (table.family == "baseline").sum() == 1
