"""The shared verdict rule and the paper-side-by-side table, on small synthetic tables."""

import math

import pandas as pd
import pytest

from ebmhelpers import verdicts

NAN = math.nan


def _m(IS=4.8, IS_std=0.1, FID=600.0, FID_std=15.0, noise=1.0, flip=0.74, reduced=0.99, **extra):
    return pd.Series({"IS": IS, "IS_std": IS_std, "FID": FID, "FID_std": FID_std, "auroc_noise": noise,
                      "auroc_flip": flip, "auroc_reduced": reduced, **extra})  # fmt: skip


def test_inside_the_spread_keeps_quality():
    base = _m()
    assert verdicts.keeps_quality(_m(IS=4.7, FID=615.0), base)  # IS within sqrt(0.1^2+0.1^2), FID within 21
    assert not verdicts.keeps_quality(_m(IS=4.45, IS_std=0.1, FID=620.0), _m(IS=4.83, IS_std=0.12))  # the case
    assert not verdicts.keeps_quality(_m(FID=640.0), base)
    assert not verdicts.keeps_quality(_m(flip=0.70), base)  # one transform is enough


def test_below_the_is_floor_never_keeps_quality():
    noise_base = _m(IS=1.1, FID=5000.0)
    noise_model = _m(IS=1.05, FID=4990.0)
    assert not verdicts.generates(noise_model)
    assert not verdicts.keeps_quality(noise_model, noise_base)  # even against a reference that is noise too
    assert "does not generate" in verdicts.quality_failures(noise_model, _m())[0]
    assert not verdicts.keeps_quality(_m(IS=NAN, FID=NAN), _m())


def test_noise_against_noise_is_not_better():
    a, b = _m(IS=1.14, FID=1751.0, FID_std=7.0), _m(IS=1.0, FID=6479.0, FID_std=19.0)
    assert verdicts.compare_quality(a, b) == "neither generates"  # the lottery ticket was "much better"
    assert verdicts.compare_quality(_m(FID=500.0), _m(FID=600.0)) == "better"
    assert verdicts.compare_quality(_m(FID=610.0), _m(FID=600.0)) == "no difference"
    assert verdicts.compare_quality(_m(), _m(IS=1.0)) == "better"  # only one generates
    assert verdicts.compare_quality(_m(IS=1.0), _m()) == "worse"


def test_one_seed_has_no_allowance():
    assert not verdicts.keeps_quality(_m(FID=601.0, FID_std=NAN, IS_std=NAN), _m(FID_std=NAN, IS_std=NAN))
    assert verdicts.keeps_quality(_m(FID_std=NAN, IS_std=NAN), _m(FID_std=NAN, IS_std=NAN))


def test_ratio_verdict_uses_the_spread():
    assert verdicts.ratio_verdict(1.78, 0.9, 2.5) == "no difference"
    assert verdicts.ratio_verdict(1.5, 1.2, 1.8) == "faster"
    assert verdicts.ratio_verdict(1.1) == "no difference"  # no spread: within TIMING_NOISE
    assert verdicts.ratio_verdict(2.0) == "faster" and verdicts.ratio_verdict(0.5) == "slower"


def _ood(model, gaps_aucs, family=None):
    rows = []
    for ood_set, (gap, auc) in gaps_aucs.items():
        for d in ("4", "5", "9", "all"):
            rows.append({"model": model, "ood_set": ood_set, "digits": d, "n": 100, "gap": gap, "auroc": auc})
    return pd.DataFrame(rows)


def _write_results(folder, student_is=4.75, student_params=500):
    base = _m(model="baseline", params=77_578, size_mb=0.31, latency_ms_cpu=1.0, latency_batch=64,
              auroc_worst=0.74, hardware="cpu")  # fmt: skip
    pd.DataFrame([base]).to_csv(folder / "baseline.csv", index=False)
    pd.DataFrame([{"samples": "uniform noise", "IS": 1.0, "FID": 7600.0}]).to_csv(folder / "baseline_references.csv", index=False)
    ood = {"noise": (-0.19, 1.0), "flip": (-0.02, 0.74), "reduced": (-0.04, 0.99)}
    _ood("baseline", ood).to_csv(folder / "baseline_ood.csv", index=False)
    _ood("int8 static", ood).to_csv(folder / "quantization_ood.csv", index=False)
    pd.DataFrame([_m(model="int8 static", IS=NAN, FID=NAN, size_mb=0.1, latency_ms_cpu=0.98)]).to_csv(
        folder / "quantization.csv", index=False)
    prune = []
    for strat in ("unstructured_global", "structured_global", "unstructured_conv", "structured_conv"):
        for ratio, is_, fid in ((0.1, 4.8, 600.0), (0.3, 4.7, 610.0), (0.6, 3.0, 900.0), (0.9, 1.0, 6000.0)):
            for ft in ((False, True) if strat.endswith("conv") else (False,)):
                prune.append(_m(model=f"{strat} {ratio} {ft}", strategy=strat, ratio=ratio, finetuned=ft,
                                method="one-shot", IS=is_, FID=fid, auroc_worst=0.7, flip=0.7))  # fmt: skip
    pd.DataFrame(prune).to_csv(folder / "pruning.csv", index=False)
    st = [_m(model="tiny/eq6", student="tiny", variant="eq6", params=student_params, IS=student_is, FID=605.0),
          _m(model="big/eq6", student="big", variant="eq6", params=20_000, IS=1.0, FID=3000.0, flip=0.5)]
    pd.DataFrame(st).to_csv(folder / "distillation.csv", index=False)


def test_verdict_table_from_synthetic_results(tmp_path):
    _write_results(tmp_path)
    t = verdicts.verdict_table(tmp_path)
    assert set(t.verdict) <= set(verdicts.VERDICTS)
    by = t.set_index("claim")
    assert by.loc["baseline FID", "verdict"] == "not comparable"
    assert by.loc["Table 1: compression ratio of 11.9x", "verdict"] == "not comparable"
    assert by.loc["Table 1: 50% faster inference (int8)", "verdict"] == "not reproduced"  # 1.02x, no spread
    assert by.loc["int8 makes the model less adept at noise detection", "verdict"] == "not reproduced"
    marginal = by.loc["size reductions: nearly zero scores, only a marginal ability to recognize them"]
    assert marginal.verdict == "not reproduced" and "AUROC" in marginal["this project"]  # gap -0.04, AUROC 0.99
    head = by.loc["a 1/145th-sized student matches the baseline's image quality and anomaly detection"]
    assert head.verdict == "reproduced" and "tiny/eq6" in head["this project"]
    assert by.loc["students comparable or superior to the quantized model at OOD", "verdict"] == "not reproduced"
    assert by.loc["IS volatile, notable drops at 30% and 40%", "verdict"] == "not reproduced"  # needs a dip, not a slope
    assert "fine-tuned" in " ".join(t.claim)
    for verdict in t.verdict:  # every verdict is generated, from the numbers
        assert verdict in verdicts.VERDICTS


def test_headline_not_reproduced_below_floor_and_not_comparable_off_ratio(tmp_path):
    _write_results(tmp_path, student_is=1.5)
    head = verdicts.verdict_table(tmp_path).set_index("claim").iloc[-1]
    assert head.verdict == "not reproduced" and "does not generate" in head.why
    _write_results(tmp_path, student_params=5_000)  # 16x fewer: not the paper's ratio
    head = verdicts.verdict_table(tmp_path).set_index("claim").iloc[-1]
    assert head.verdict == "not comparable"


def test_missing_baseline_names_the_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_evaluation"):
        verdicts.verdict_table(tmp_path)


@pytest.mark.parametrize("profile", ["cpu", "smoke"])
def test_committed_results_give_a_table(profile):
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "results" / profile
    if not (folder / "baseline.csv").exists():
        pytest.skip(f"no committed results for {profile}")
    t = verdicts.verdict_table(folder)
    assert len(t) >= 20 and set(t.verdict) <= set(verdicts.VERDICTS)


def test_protocol_rows_say_where_the_run_keeps_the_papers_proportions(tmp_path):
    from ebmhelpers.profiles import get_profile

    _write_results(tmp_path)
    paper_like = get_profile("paper")
    t = verdicts.verdict_table(tmp_path, paper_like).set_index("claim")
    assert t.loc["protocol: fine-tuning length, a fraction of the baseline's training", "verdict"] == "reproduced"
    assert t.loc["protocol: students train half the baseline's epochs", "verdict"] == "reproduced"
    assert t.loc["protocol: distillation loss, eq. 6 (plain MSE of energies)", "verdict"] == "reproduced"
    assert t.loc["protocol: pruning ratios", "verdict"] == "not comparable"  # the synthetic run has 4 ratios
    small = get_profile("smoke").replace(epochs=12, distill_epochs=2, finetune_epochs=1, finetune_iters=5)
    t = verdicts.verdict_table(tmp_path, small).set_index("claim")
    assert t.loc["protocol: fine-tuning length, a fraction of the baseline's training", "verdict"] == "not comparable"
    assert t.loc["protocol: students train half the baseline's epochs", "verdict"] == "not comparable"


def test_table1_speed_uses_the_interleaved_timing_when_saved(tmp_path):
    _write_results(tmp_path)
    pd.DataFrame([{"model": "fp32", "speedup_cpu": 1.0, "speedup_lo": 0.9, "speedup_hi": 1.1},
                  {"model": "int8 static", "speedup_cpu": 1.9, "speedup_lo": 1.7, "speedup_hi": 2.1}]).to_csv(
        tmp_path / "quantization_speed.csv", index=False)  # fmt: skip
    row = verdicts.verdict_table(tmp_path).set_index("claim").loc["Table 1: 50% faster inference (int8)"]
    assert row.verdict == "reproduced" and "interleaved" in row["this project"]
    pd.DataFrame([{"model": "int8 static", "speedup_cpu": 1.5, "speedup_lo": 0.8, "speedup_hi": 2.1}]).to_csv(
        tmp_path / "quantization_speed.csv", index=False)
    row = verdicts.verdict_table(tmp_path).set_index("claim").loc["Table 1: 50% faster inference (int8)"]
    assert row.verdict == "not reproduced" and row.why.startswith("no difference")
