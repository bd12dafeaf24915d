"""The series' rules (ebmhelpers.verdicts) on small synthetic rows, and the paper report's verdict
counts for the committed results/cpu tables (ebmhelpers.paper_report)."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from scipy import stats

from ebmhelpers import metrics, paper_report, verdicts
from ebmhelpers.profiles import get_profile
from ebmhelpers.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, REPRODUCED, References

NAN = float("nan")
CPU = Path(__file__).resolve().parents[1] / "results" / "cpu"
REFS = References(
    base_IS=7.0,
    base_FID=300.0,
    noise_IS=1.0,
    noise_FID=4000.0,
    ood_n={(s, "all"): (2000, 2000) for s in ("noise", "flip", "reduced")},
)


def _row(IS=7.0, FID=300.0, IS_std=0.1, FID_std=2.0, n_seeds=3, auroc=0.9, **extra):
    return pd.Series(
        {
            "IS": IS,
            "IS_std": IS_std,
            "FID": FID,
            "FID_std": FID_std,
            "n_seeds": n_seeds,
            "auroc_noise": auroc,
            "auroc_flip": auroc,
            "auroc_reduced": auroc,
            **extra,
        }
    )


# ---- margins ----------------------------------------------------------------------------------
def test_margins_are_the_stated_constants_on_the_interval_scales():
    assert verdicts.margin("FID") == pytest.approx(math.log(1 + verdicts.FID_MARGIN))
    assert verdicts.margin("IS") == pytest.approx(-math.log(1 - verdicts.IS_MARGIN))
    assert verdicts.margin("auroc_flip") == verdicts.AUROC_MARGIN
    with pytest.raises(KeyError):
        verdicts.margin("latency")


def test_fid_within_the_margin_is_kept_beyond_it_is_not_and_a_wide_interval_decides_nothing():
    ref = _row()
    m = verdicts.margin("FID")
    assert verdicts.non_inferior(verdicts.quality_interval(_row(FID=315.0), ref, "FID"), m) == REPRODUCED  # +5%
    assert verdicts.non_inferior(verdicts.quality_interval(_row(FID=270.0), ref, "FID"), m) == REPRODUCED  # better
    assert verdicts.non_inferior(verdicts.quality_interval(_row(FID=360.0), ref, "FID"), m) == CONTRADICTED  # +20%
    wide = _row(FID=320.0, FID_std=60.0)  # +7% but a spread of 20%: the interval crosses +10%
    assert verdicts.non_inferior(verdicts.quality_interval(wide, ref, "FID"), m) == INCONCLUSIVE
    one_seed = _row(FID=301.0, FID_std=NAN, n_seeds=1)  # no spread measured: nothing can be concluded
    assert verdicts.non_inferior(verdicts.quality_interval(one_seed, ref, "FID"), m) == INCONCLUSIVE


def test_is_is_a_ratio_with_its_own_margin():
    ref = _row(IS=6.0, IS_std=0.02)
    m = verdicts.margin("IS")
    assert (
        verdicts.non_inferior(verdicts.quality_interval(_row(IS=5.8, IS_std=0.02), ref, "IS"), m) == REPRODUCED
    )  # -3%
    assert verdicts.non_inferior(verdicts.quality_interval(_row(IS=5.4, IS_std=0.02), ref, "IS"), m) == CONTRADICTED
    assert verdicts.non_inferior(verdicts.quality_interval(_row(IS=5.8), ref, "IS"), m) == INCONCLUSIVE  # std 0.1


# ---- intervals --------------------------------------------------------------------------------
def test_quality_interval_is_a_welch_t_interval_of_the_log_ratio():
    a, b = _row(IS=6.0, IS_std=0.3), _row(IS=6.0, IS_std=0.3)
    iv = verdicts.quality_interval(a, b, "IS")
    se = 0.3 / math.sqrt(3) / 6.0  # delta method: se(log x) = se(x) / x
    half = stats.t.ppf(0.975, 4) * math.sqrt(2) * se  # equal variances, 2 + 2 dof: Welch gives 4
    assert iv.estimate == 0 and iv.lo == pytest.approx(-half) and iv.hi == pytest.approx(half)
    fid = verdicts.quality_interval(_row(FID=330.0), _row(FID=300.0), "FID")
    assert fid.estimate == pytest.approx(math.log(300 / 330))  # oriented: positive = better, so worse FID is negative
    assert "FID ratio 1.1 " in fid.text()


def test_training_seeds_set_the_number_of_draws():
    one = verdicts.standard_error(_row(FID_std=6.0, n_seeds=3), "FID")
    trained = verdicts.standard_error(_row(FID_std=6.0, n_seeds=3, training_seeds=4), "FID")
    assert one == (pytest.approx(6.0 / math.sqrt(3)), 2) and trained == (pytest.approx(3.0), 3)
    assert verdicts.standard_error(_row(FID_std=NAN), "FID") == (math.inf, 0)


def test_auroc_interval_narrows_with_more_digits():
    from ebmhelpers.metrics import auroc_se

    few = verdicts.auroc_interval(0.88, 0.90, (200, 200))
    many = verdicts.auroc_interval(0.88, 0.90, (20000, 20000))
    assert few.estimate == pytest.approx(-0.02) and few.hi - few.lo > many.hi - many.lo
    assert few.hi - few.lo == pytest.approx(
        2 * 1.959964 * math.hypot(auroc_se(0.88, 200, 200), auroc_se(0.9, 200, 200))
    )
    assert verdicts.non_inferior(verdicts.auroc_interval(0.89, 0.90, (20000, 20000)), 0.02) == REPRODUCED
    assert verdicts.non_inferior(verdicts.auroc_interval(0.80, 0.90, (20000, 20000)), 0.02) == CONTRADICTED
    assert verdicts.non_inferior(few, 0.02) == INCONCLUSIVE
    unknown = verdicts.auroc_interval(0.5, 0.9, None)
    assert math.isinf(unknown.lo) and verdicts.non_inferior(unknown, 0.02) == INCONCLUSIVE


def test_directional_claims_and_their_combination():
    iv = verdicts.Interval
    assert verdicts.superior(iv(0.05, 0.01, 0.09), 0.02) == REPRODUCED
    assert verdicts.superior(iv(0.0, -0.01, 0.01), 0.02) == CONTRADICTED  # any advantage below the margin
    assert verdicts.superior(iv(0.02, -0.01, 0.05), 0.02) == INCONCLUSIVE
    assert verdicts.inferior(iv(-0.05, -0.09, -0.01), 0.02) == REPRODUCED
    assert (
        verdicts.below(iv(0.6, 0.55, 0.65), 0.7) == REPRODUCED
        and verdicts.below(iv(0.9, 0.8, 1.0), 0.7) == CONTRADICTED
    )
    assert verdicts.combine([REPRODUCED, NOT_TESTABLE]) == INCONCLUSIVE
    assert verdicts.combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert verdicts.combine([REPRODUCED, CONTRADICTED, INCONCLUSIVE]) == CONTRADICTED
    assert verdicts.combine([NOT_TESTABLE]) == NOT_TESTABLE
    assert verdicts.majority([REPRODUCED, REPRODUCED, CONTRADICTED, NOT_TESTABLE]) == REPRODUCED
    assert verdicts.majority([REPRODUCED, CONTRADICTED]) == INCONCLUSIVE


# ---- generates ----------------------------------------------------------------------------------
def test_generates_needs_fid_nearer_the_baseline_and_is_above_the_geometric_mean():
    assert REFS.is_min == pytest.approx(math.sqrt(7.0)) and REFS.fid_max == pytest.approx(math.sqrt(300 * 4000))
    assert verdicts.generates(_row(IS=2.7, FID=1000.0), REFS)
    assert not verdicts.generates(_row(IS=2.6, FID=500.0), REFS)  # IS nearer noise's (log scale)
    assert not verdicts.generates(_row(IS=5.0, FID=1200.0), REFS)  # FID nearer noise's (log scale)
    assert not verdicts.generates(_row(IS=NAN, FID=NAN), REFS)  # no samples (int8 static)
    assert verdicts.generates(_row(IS=7.0, FID=300.0), REFS) and not verdicts.generates(_row(IS=1.0, FID=4000.0), REFS)


def test_references_come_from_the_baseline_and_noise_rows():
    refs = References.from_folder(CPU)
    base = pd.read_csv(CPU / "baseline.csv").iloc[0]
    noise = pd.read_csv(CPU / "baseline_references.csv").set_index("samples").loc["uniform noise"]
    assert refs.is_min == pytest.approx(math.sqrt(base.IS * noise.IS))
    assert refs.fid_max == pytest.approx(math.sqrt(base.FID * noise.FID))
    assert refs.n("flip", "5") == (178, 178)  # the OOD table's per-digit set size


def test_keeps_quality_asks_every_part_and_never_averages_transforms():
    base = _row()
    assert verdicts.keeps_quality(_row(FID=310.0), base, REFS)
    assert not verdicts.keeps_quality(_row(IS=1.2, FID=3000.0), base, REFS)  # does not generate
    drop = _row(auroc_flip=0.7)  # one transform drops, the others are as good
    assert not verdicts.keeps_quality(drop, base, REFS)
    assert any(f.startswith("auroc_flip (contradicted)") for f in verdicts.quality_failures(drop, base, REFS))
    assert verdicts.keeps_quality(drop, base, REFS, check_ood=False)


def test_compare_quality_judges_fid_only_among_models_that_generate():
    good, better, noise = _row(FID=400.0), _row(FID=320.0), _row(IS=1.1, FID=3500.0)
    assert verdicts.compare_quality(better, good, REFS) == "better"
    assert verdicts.compare_quality(good, better, REFS) == "worse"
    assert verdicts.compare_quality(_row(FID=401.0), good, REFS) == "no difference"
    assert verdicts.compare_quality(noise, good, REFS) == "worse"
    assert verdicts.compare_quality(noise, _row(IS=1.0, FID=3900.0), REFS) == "neither generates"


def test_inverted_is_one_rule():
    assert verdicts.inverted(0.49) and not verdicts.inverted(0.5) and not verdicts.inverted(NAN)
    row = pd.Series({"auroc_noise": 0.9, "auroc_flip": 0.3, "auroc_worst": 0.3, "auroc_fashion": 0.49})
    assert verdicts.inverted_sets(row) == "flip, fashion"
    # a training-seed spread or an extra transform is not a detector of the default sets
    seeded = pd.concat([row, pd.Series({"auroc_flip_train_std": 0.01, "auroc_rot90": 0.2, "auroc_uniform": 1.0})])
    assert verdicts.inverted_sets(seeded) == "flip, fashion"
    assert verdicts.inverted_sets(seeded, ("rot90", "uniform")) == "rot90"
    assert verdicts.inverted_sets(row, ("noise", "flip")) == "flip"


def test_ratio_verdict_needs_the_spread_to_exclude_one():
    assert verdicts.ratio_verdict(1.5, 1.2, 1.8) == "faster"
    assert verdicts.ratio_verdict(1.5, 0.9, 1.8) == "no difference"
    assert verdicts.ratio_verdict(0.8, 0.7, 0.9) == "slower"
    assert verdicts.ratio_verdict(1.1) == "no difference" and verdicts.ratio_verdict(NAN) == "not measured"


def test_pareto_front_drops_dominated_rows():
    df = pd.DataFrame({"model": list("abcde"), "size": [1, 2, 3, 2, 5], "FID": [9.0, 5.0, 6.0, 4.0, 1.0]})
    assert verdicts.pareto_front(df, "size", "FID").model.tolist() == ["a", "d", "e"]
    front = verdicts.pareto_front(df.assign(auroc=[0.5, 0.9, 0.8, 0.7, 0.6]), "size", "auroc", False)
    assert front.model.tolist() == ["a", "b"]


# ---- the paper report on the committed tables ---------------------------------------------------
def test_verdict_counts_of_the_committed_cpu_results():
    table = paper_report.verdict_table(CPU)
    counts = paper_report.verdict_counts(table).to_dict()
    assert counts == {REPRODUCED: 5, CONTRADICTED: 5, INCONCLUSIVE: 1, NOT_TESTABLE: 10}, counts
    assert list(table.columns) == paper_report.COLUMNS and table.verdict.isin(verdicts.VERDICTS).all()
    assert not table.claim.str.startswith("protocol").any()  # choices are in the protocol table, not here


def test_untestable_claims_say_what_would_test_them():
    table = paper_report.verdict_table(CPU).set_index("claim")
    headline = table.loc["a 1/145th-sized student matches the baseline's image quality and anomaly detection"]
    assert headline.verdict == NOT_TESTABLE and "profile(s) paper" in headline.reason
    assert f"{paper_report.resnet18_params():,}" in headline.reason
    fid, is_ = table.loc["baseline FID 5,275"], table.loc["baseline IS 1.13"]
    assert fid.verdict == is_.verdict == NOT_TESTABLE  # both on the scale of the paper's unpublished classifier
    drops = table.loc["IS volatile, notable drops at 30% and 40%"]  # cpu prunes at 10%, 20%, ..., 90%: judged
    assert drops.verdict != NOT_TESTABLE and drops.interval.count("[") == 16  # 4 strategies x (30%, 40%) x 2 neighbours
    both = table[table.index.str.startswith("size reductions")]
    assert len(both) == 2 and set(both.verdict) == {REPRODUCED, CONTRADICTED}  # corner subsample and centred shrink


def test_rows_with_intervals_carry_them():
    table = paper_report.verdict_table(CPU)
    judged = table[table.verdict.isin([REPRODUCED, CONTRADICTED, INCONCLUSIVE])]
    assert judged.interval.str.contains(r"\[").all()
    # untestable rows show what was measured too
    bare = table[~table.interval.str.contains(r"\[|exact")]
    assert bare.empty, bare.claim.tolist()  # cpu runs every setting a claim reads (all nine pruning ratios)


def test_every_claim_about_the_papers_students_follows_one_capacity_rule():
    table = paper_report.verdict_table(CPU)
    students = table[table.section.str.contains("Figure 3") | table.claim.str.contains("student")]
    assert len(students) == 4 and (students.verdict == NOT_TESTABLE).all()
    assert students.reason.str.contains("this whole teacher").all()  # the same capacity reason on every row
    assert students.interval.str.contains(r"\[").all()  # measured all the same


def test_protocol_table_holds_choices_only():
    table = paper_report.protocol_table(CPU, get_profile("cpu"))
    assert table.status.isin(paper_report.PROTOCOL_STATUS).all()
    by = table.set_index("choice")
    assert by.loc["network", "status"] == "scaled" and by.loc["pruning norm", "status"] == "followed"
    assert by.loc["fine-tuning length", "how"].startswith("1.00x")  # the cpu profile keeps the paper's 7/60


def test_hanley_mcneil_error_agrees_with_a_bootstrap_over_the_digits():
    # the digit-sampling part of an AUROC's error is the analytic form of resampling the digits
    g = torch.Generator().manual_seed(0)
    s_in, s_out = torch.randn(400, generator=g) + 1.2, torch.randn(300, generator=g)
    a = metrics.auroc(s_in, s_out)
    boot = [
        metrics.auroc(
            s_in[torch.randint(0, 400, (400,), generator=g)], s_out[torch.randint(0, 300, (300,), generator=g)]
        )
        for _ in range(400)
    ]
    assert metrics.auroc_se(a, 400, 300) == pytest.approx(float(torch.tensor(boot).std()), rel=0.15)


def test_auroc_interval_of_seeded_rows_widens_with_training_variance():
    n = (20000, 20000)
    base = _row(auroc=0.90)
    steady = _row(auroc=0.88, training_seeds=3, auroc_noise_train_std=0.001)
    shaky = _row(auroc=0.88, training_seeds=3, auroc_noise_train_std=0.05)
    iv_steady = verdicts.model_auroc_interval(steady, base, "auroc_noise", n)
    iv_shaky = verdicts.model_auroc_interval(shaky, base, "auroc_noise", n)
    assert iv_steady.estimate == pytest.approx(-0.02) == iv_shaky.estimate
    assert iv_shaky.hi - iv_shaky.lo > 3 * (iv_steady.hi - iv_steady.lo)
    assert verdicts.non_inferior(iv_steady, verdicts.AUROC_MARGIN) == REPRODUCED
    assert verdicts.non_inferior(iv_shaky, verdicts.AUROC_MARGIN) == INCONCLUSIVE
    # one training seed, or none recorded: digit sampling alone, the same as the two-number interval
    single = verdicts.model_auroc_interval(_row(auroc=0.88), base, "auroc_noise", n)
    plain = verdicts.auroc_interval(0.88, 0.90, n)
    assert (single.lo, single.hi) == pytest.approx((plain.lo, plain.hi))
    assert math.isinf(verdicts.model_auroc_interval(steady, base, "auroc_noise", None).hi)
