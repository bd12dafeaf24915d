"""Reading the distillation-objectives study's table: one budget, seeds averaged, the chosen
objective, the targets and where each objective stops generating, on small synthetic tables."""

import math

import pandas as pd
import pytest
import torch

from ebmhelpers import distillation, pretrained
from ebmhelpers import objective_study as study
from ebmhelpers import verdicts
from ebmhelpers.tools import distill_study as dist_study

TEACHER_ROW = {
    "objective": study.TEACHER,
    "student": "t",
    "ratio": 1.0,
    "params": 80_000,
    "IS": 8.0,
    "FID": 100.0,
    "auroc_noise": 0.99,
    "auroc_flip": 0.9,
    "auroc_reduced": 0.95,
}
NOISE_ROW = {"objective": study.NOISE, "student": study.NOISE, "ratio": math.inf, "params": 0, "IS": 1.0, "FID": 1000.0}
# "generates" here: IS above sqrt(8 x 1) = 2.83 and FID below sqrt(100 x 1000) = 316


def _summary(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([TEACHER_ROW, NOISE_ROW, *rows])


def _student(objective: str, ratio: float, params: int, is_: float, fid: float, auroc: float = 0.95) -> dict:
    return {
        "objective": objective,
        "student": f"s{params}",
        "ratio": ratio,
        "params": params,
        "IS": is_,
        "FID": fid,
        "auroc_noise": 0.99,
        "auroc_flip": auroc,
        "auroc_reduced": 0.95,
    }


def _raw(row: dict, seed: int, budget: float = 1e9, is_std: float = 0.1, fid_std: float = 5.0) -> dict:
    """A row of the study's CSV: one training seed of one cell."""
    return {
        "profile": "cpu",
        "teacher_arch": "cnn",
        "budget_flops": budget,
        "seed": seed,
        "IS_std": is_std,
        "FID_std": fid_std,
        "auroc_worst": min(row.get("auroc_flip", math.nan), row.get("auroc_reduced", math.nan)),
        "label": None if row["objective"] in study.REFERENCE_ROWS else f"({row['objective']})",
        **row,
    }


def test_the_references_are_the_teacher_and_noise_rows_and_a_missing_one_is_an_error():
    refs = study.references(_summary([]))
    assert (refs.base_IS, refs.base_FID, refs.noise_IS, refs.noise_FID) == (8.0, 100.0, 1.0, 1000.0)
    assert refs.is_min == pytest.approx(math.sqrt(8)) and refs.fid_max == pytest.approx(math.sqrt(1e5))
    with pytest.raises(ValueError, match="no 'uniform noise' row"):
        study.references(pd.DataFrame([TEACHER_ROW]))


def test_of_budget_keeps_the_reference_rows_and_the_last_budget_written():
    rows = [
        _raw(TEACHER_ROW, 0),
        _raw(NOISE_ROW, 0),
        _raw(_student("eq6", 4, 19_000, 5.0, 150.0), 0, budget=1e9),
        _raw(_student("eq6", 4, 19_000, 6.0, 140.0), 0, budget=2e9),
        _raw(_student("rank", 4, 19_000, 6.0, 140.0), 0, budget=2e9 * (1 + 1e-9)),  # the same budget, rounded
    ]
    kept = study.of_budget(pd.DataFrame(rows))
    assert list(kept.objective) == [study.TEACHER, study.NOISE, "eq6", "rank"]
    assert (study.students(kept).budget_flops > 1.5e9).all()
    assert list(study.of_budget(pd.DataFrame(rows), budget=1e9).IS) == [8.0, 1.0, 5.0]


def test_summarize_averages_the_training_seeds_and_combines_both_spreads():
    seeds = [
        _raw(_student("eq6", 4, 19_000, 3.0, 200.0), 0, is_std=0.3),
        _raw(_student("eq6", 4, 19_000, 5.0, 100.0), 1, is_std=0.4),
    ]
    table = pd.DataFrame([_raw(TEACHER_ROW, 0), _raw(NOISE_ROW, 0, is_std=math.nan, fid_std=math.nan), *seeds])
    summary = study.summarize(table).set_index("objective")
    eq6 = summary.loc["eq6"]
    assert eq6.training_seeds == 2 and eq6.IS == 4.0 and eq6.FID == 150.0 and eq6.params == 19_000
    # the series' rule (pruning.combine_training_seeds): the mean within-seed variance (of 0.3^2 and
    # 0.4^2) plus the variance of the seeds' means
    assert eq6.IS_std == pytest.approx(math.sqrt((0.09 + 0.16) / 2 + 1.0))
    assert eq6.FID_std == pytest.approx(math.sqrt(25.0 + 2500.0))
    assert eq6.IS_train_std == pytest.approx(math.sqrt(2.0))  # the seeds' means alone
    assert eq6.auroc_flip == 0.95 and eq6.label == "(eq6)"
    teacher = summary.loc[study.TEACHER]
    assert teacher.training_seeds == 1 and teacher.IS_std == 0.1 and teacher.label == study.TEACHER
    assert math.isnan(summary.loc[study.NOISE].IS_std)  # one seed, no spread measured: none is made up
    assert len(summary) == 3


def test_targets_are_rules_on_the_teachers_row():
    ok = _student("rank", 4, 19_000, is_=7.3, fid=120.0)
    table = study.targets(_summary([ok, _student("eq6", 40, 1_900, 3.0, 300.0), _student("eq6", 80, 900, 2.5, 300.0)]))
    row = table.set_index("target")
    assert row.met["compressed"] and row.student["compressed"] == "s19000" and row.why["compressed"] == ""
    assert row.met["smallest generating"] and row.params["smallest generating"] == 1_900  # 900: IS 2.5 is noise's side
    for bad in (dict(IS=7.1), dict(FID=126.0), dict(auroc=0.87), dict(params=21_000)):
        r = ok | bad
        if "auroc" in bad:
            r["auroc_flip"] = bad["auroc"]
        missed = study.targets(_summary([r])).set_index("target")
        assert not missed.met["compressed"] and missed.why["compressed"], bad


def test_a_student_that_does_not_generate_misses_every_target():
    table = study.targets(_summary([_student("eq6", 4, 19_000, 2.0, 110.0)])).set_index("target")
    assert not table.met["compressed"] and "does not generate" in table.why["compressed"]
    assert not table.met["smallest generating"] and table.why["smallest generating"] == "no student generates"


def test_the_chosen_objective_has_the_best_mean_fid_rank_among_generating_students():
    rows = [
        _student("eq6", 4, 19_000, 5.0, 150.0),
        _student("rank", 4, 19_000, 5.0, 140.0),
        _student("eq6", 40, 1_900, 3.0, 200.0),
        _student("rank", 40, 1_900, 1.2, 90.0),
    ]  # rank's small one: noise
    # ranks: eq6 2 and 1, rank 1 and 2 (its small student does not generate): a tie, won by eq6's higher mean IS
    assert study.choose_objective(_summary(rows)) == "eq6"
    rows[2]["FID"] = 400.0
    rows[3]["IS"] = 3.0
    assert study.choose_objective(_summary(rows)) == "rank"


def test_a_student_that_does_not_generate_ranks_last_whatever_its_fid():
    rows = [
        _student("score", 4, 19_000, 2.0, 105.0),  # the lowest FID of its size, but IS on noise's side
        _student("eq6", 4, 19_000, 5.0, 250.0),
        _student("pcd", 4, 19_000, 6.0, 200.0),
        _student("score", 10, 8_000, 2.1, 110.0),
        _student("eq6", 10, 8_000, 4.0, 260.0),
        _student("pcd", 10, 8_000, 4.0, 300.0),
    ]
    assert study.choose_objective(_summary(rows)) == "pcd"  # mean ranks: pcd 1.5, eq6 1.5 (lower IS), score 3
    with pytest.raises(ValueError, match="no student row"):
        study.choose_objective(_summary([]))


def test_generation_by_size_says_where_each_objective_stops_generating():
    rows = [
        _student("eq6", 4, 19_000, 5.0, 150.0),
        _student("eq6", 40, 1_900, 2.0, 400.0),
        _student("pcd", 4, 19_000, 5.0, 150.0),
        _student("pcd", 10, 8_000, 4.0, 200.0),
    ]
    by_size = study.generation_by_size(_summary(rows))
    assert list(by_size.index) == ["eq6", "pcd"] and list(by_size.columns) == [4, 10, 40]
    assert by_size.loc["eq6"].tolist() == [True, None, False]
    assert by_size.loc["pcd"].tolist() == [True, True, None]
    for objective, row in by_size.iterrows():
        for ratio, gen in row.items():
            if gen is not None:
                r = next(x for x in rows if x["objective"] == objective and x["ratio"] == ratio)
                assert gen == verdicts.generates(r, study.references(_summary(rows)))


def test_the_command_names_the_profile():
    assert study.command("cpu") == "python -m ebmhelpers distill-study --profile cpu"
    assert study.command("smoke") in study.not_committed("smoke")


def test_versus_control_compares_each_size_by_the_series_rule():
    rows = [
        _student("eq6", 4, 19_000, 6.0, 120.0) | {"FID_std": 2.0, "training_seeds": 2},
        _student(study.CONTROL, 4, 19_000, 6.0, 250.0) | {"FID_std": 2.0, "training_seeds": 2},
        _student("eq6", 10, 8_000, 5.0, 200.0) | {"FID_std": 40.0, "training_seeds": 2},
        _student(study.CONTROL, 10, 8_000, 5.0, 210.0) | {"FID_std": 40.0, "training_seeds": 2},
        _student("eq6", 40, 1_900, 2.0, 200.0),  # IS on noise's side: does not generate
        _student(study.CONTROL, 40, 1_900, 4.0, 300.0),
        _student("eq6", 80, 900, 3.0, 100.0),  # no control at this size: no row
    ]
    table = study.versus_control(_summary(rows), "eq6").set_index("ratio")
    assert list(table.index) == [4, 10, 40]
    assert table.verdict.tolist() == ["better", "no difference", "worse"]  # worse: only the control generates
    assert table.generates.tolist() == [True, True, False] and table.control_generates.all()
    assert table.FID_control.tolist() == [250.0, 210.0, 300.0]


# ---- committed winners ------------------------------------------------------------------------
WINNER_PROFILE = "winners_test"


def _commit_student(name: str, architecture: str, variant: str, seed: int, kind: str = "student") -> torch.nn.Module:
    torch.manual_seed(seed)
    student = distillation.build_student(architecture)
    state = {"model": pretrained.encode_masks(student.state_dict()), "step": 3, "history": pretrained.pack_history([])}
    pretrained.commit(
        WINNER_PROFILE,
        name,
        kind,
        state,
        architecture=architecture,
        iterations=3,
        seconds=0.0,
        command="test",
        variant=variant,
    )
    return student.eval()


@pytest.fixture
def committed(tmp_path, monkeypatch):
    """A temporary committed folder: two study winners, an eq. 6 student and a pruned model whose variant
    also starts with study_ (not a student: not a winner)."""
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    arch_a, arch_b = "cnn_2-3-4-4", "cnn_3-3-3-3"
    winners = {
        dist_study.winner_file(arch_a, "eq6+pcd"): _commit_student(
            dist_study.winner_file(arch_a, "eq6+pcd"), arch_a, "study_eq6+pcd", 1
        ),
        dist_study.winner_file(arch_b, "eq6+pcd"): _commit_student(
            dist_study.winner_file(arch_b, "eq6+pcd"), arch_b, "study_eq6+pcd", 2
        ),
    }
    _commit_student(distillation.student_file(arch_a, "eq6"), arch_a, "eq6", 3)
    _commit_student("pruned_study_like", arch_a, "study_eq6", 4, kind="finetuned")
    return winners


def test_committed_winners_are_the_study_students_of_the_manifest(committed):
    entries = distillation.committed_winners(WINNER_PROFILE)
    assert sorted(e["name"] for e in entries) == sorted(committed)
    assert all(e["kind"] == "student" and e["variant"] == "study_eq6+pcd" for e in entries)
    assert distillation.committed_winners("no_such_profile") == []


def test_a_winners_table_variant_names_its_committed_file(committed):
    for entry in distillation.committed_winners(WINNER_PROFILE):
        variant = distillation.winner_variant(entry)
        assert variant == "study_eq6-pcd"
        assert distillation.student_file(entry["architecture"], variant) == entry["name"]


def test_a_loaded_winner_has_the_committed_energies(committed):
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    for entry in distillation.committed_winners(WINNER_PROFILE):
        loaded = distillation.load_winner(WINNER_PROFILE, entry, "cpu")
        assert not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), committed[entry["name"]](x))
    a, b = (distillation.load_winner(WINNER_PROFILE, e) for e in distillation.committed_winners(WINNER_PROFILE))
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))  # each entry loads its own weights


def test_a_tampered_winner_is_refused_naming_the_file_and_the_winners_command(committed):
    entry = distillation.committed_winners(WINNER_PROFILE)[0]
    path = pretrained.folder(WINNER_PROFILE) / entry["file"]
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(pretrained.WeightsError) as err:
        distillation.load_winner(WINNER_PROFILE, entry)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "sha256" in message
    assert distillation.winners_command(WINNER_PROFILE) in message
    assert (
        distillation.winners_command(WINNER_PROFILE)
        == f"python -m ebmhelpers distill-study --profile {WINNER_PROFILE} --winners"
    )


def test_a_winner_of_another_architecture_is_refused(committed):
    entry = distillation.committed_winners(WINNER_PROFILE)[0] | {"architecture": "cnn_3-3-3-3"}
    with pytest.raises(pretrained.WeightsError, match="cnn_3-3-3-3"):
        distillation.load_winner(WINNER_PROFILE, entry)
