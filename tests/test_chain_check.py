"""The verdicts under a second generation chain: paper_report's replacement of the scores and its
comparison on tiny synthetic tables and on the committed cpu tables, and the chain-check tool end to
end on a profile small enough to train its models in seconds (in a temporary folder)."""

import math
from pathlib import Path

import pandas as pd
import pytest

from ebmhelpers import metrics, paper_report, pretrained, results, training
from ebmhelpers.metrics import QUALITY_COLUMNS
from ebmhelpers.profiles import PROFILES, get_profile
from ebmhelpers.runtime import Context, get_device
from ebmhelpers.tools import chain_check, cli, train_all
from ebmhelpers.verdicts import CONTRADICTED, REPRODUCED, References

CPU = Path(__file__).resolve().parents[1] / "results" / "cpu"
STEPS, SCALE = 128, 4.0
FIG3 = "medium-sized students preserve performance across all metrics"
FIG4 = "Figure 4: the pre-training pruned model has clearer digits"


# ---- tiny synthetic tables --------------------------------------------------------------------
def _scores(IS=7.0, FID=300.0, IS_std=0.1, FID_std=2.0, n_seeds=3):
    return {"IS": IS, "IS_std": IS_std, "FID": FID, "FID_std": FID_std, "n_seeds": n_seeds}


def _model(model, params, auroc=0.9, **scores):
    aurocs = {c: auroc for c in ("auroc_noise", "auroc_flip", "auroc_reduced", "auroc_worst")}
    return {"model": model, "params": params, **aurocs, **_scores(**scores)}


def _tiny_results() -> paper_report.Results:
    """A baseline of the paper's network's size, one student at the paper's ratio that keeps its
    quality, and Figure 4's pruned model, whose one-shot version draws noise and fine-tuned version digits."""
    r18 = paper_report.resnet18_params()
    base = pd.Series({**_model("baseline", r18), "profile": "tiny"})
    refs = References(7.0, 300.0, 1.0, 4000.0, {(s, "all"): (2000, 2000) for s in ("noise", "flip", "reduced")})
    prune = dict(strategy="unstructured_conv", ratio=0.6, training_seeds=1)
    pruning = pd.DataFrame(
        [
            {**_model("conv 60%", r18, IS=1.3, FID=1600.0), **prune, "finetuned": False},
            {**_model("conv 60% + fine-tuned", r18), **prune, "finetuned": True},
        ]
    )
    students = pd.DataFrame(
        [{**_model("s/eq6", round(r18 / 145)), "student": "s", "variant": "eq6", "training_seeds": 3}]
    )
    return paper_report.Results(base, refs, None, None, None, None, pruning, students)


def _chain_of(res: paper_report.Results, steps=STEPS, scale=SCALE, **changes) -> pd.DataFrame:
    """Second-chain rows that repeat every scored model's scores, except ``changes`` (model -> scores)."""
    rows = []
    for q in paper_report.quality_rows(res).itertuples():
        frame = getattr(res, paper_report.QUALITY_TABLES[q.table])
        row = frame if isinstance(frame, pd.Series) else frame.set_index("model").loc[q.model]
        scores = {c: row.get(c, math.nan) for c in QUALITY_COLUMNS} | changes.get(q.model, {})
        rows.append({"table": q.table, "model": q.model, "steps": steps, "step_scale": scale, **scores})
        rows[-1]["training_seeds"] = q.training_seeds
    return pd.DataFrame(rows)


def _verdicts(compared: pd.DataFrame) -> dict[str, tuple[str, str]]:
    return {r["claim"]: (r["verdict"], r["second chain verdict"]) for _, r in compared.iterrows()}


def test_the_same_scores_under_the_second_chain_change_no_verdict():
    res = _tiny_results()
    compared = paper_report.chain_comparison(res, _chain_of(res), STEPS, SCALE)
    assert list(compared.columns) == paper_report.CHAIN_COMPARISON_COLUMNS
    assert not compared.changed.any()
    assert (compared.interval == compared["second chain interval"]).all()
    assert compared.claim.tolist() == paper_report.verdict_table(res).claim.tolist()


def test_a_student_whose_digits_collapse_under_the_second_chain_no_longer_keeps_quality():
    res = _tiny_results()
    collapsed = _chain_of(res, **{"s/eq6": _scores(IS=1.0, FID=4000.0)})
    verdicts = _verdicts(paper_report.chain_comparison(res, collapsed, STEPS, SCALE))
    assert verdicts[FIG3] == (REPRODUCED, CONTRADICTED)
    changed = {claim for claim, (a, b) in verdicts.items() if a != b}
    assert FIG3 in changed and FIG4 not in changed  # only the claims that read the student


def test_figure_4_turns_when_the_second_chain_reverses_which_pruned_model_draws_digits():
    res = _tiny_results()
    swapped = _chain_of(res, **{"conv 60%": _scores(), "conv 60% + fine-tuned": _scores(IS=1.2, FID=2000.0)})
    assert _verdicts(paper_report.chain_comparison(res, swapped, STEPS, SCALE))[FIG4] == (CONTRADICTED, REPRODUCED)


def test_generates_is_measured_against_the_baseline_under_the_same_chain():
    res = _tiny_results()
    second = paper_report.with_second_chain(res, _chain_of(res, baseline=_scores(IS=5.0, FID=450.0)), STEPS, SCALE)
    assert (second.refs.base_IS, second.refs.base_FID) == (5.0, 450.0)
    assert (second.refs.noise_IS, second.refs.noise_FID) == (res.refs.noise_IS, res.refs.noise_FID)
    assert second.base.IS == 5.0 and res.base.IS == 7.0  # the tables read are not changed


def test_only_the_asked_chain_is_read():
    res = _tiny_results()
    other = _chain_of(res, steps=64, scale=16.0, **{"s/eq6": _scores(IS=1.0, FID=4000.0)})
    both = pd.concat([_chain_of(res), other], ignore_index=True)
    assert not paper_report.chain_comparison(res, both, STEPS, SCALE).changed.any()
    assert paper_report.chain_comparison(res, both, 64, 16.0).changed.any()


def test_a_model_missing_from_the_second_chain_is_one_line_naming_the_command():
    res = _tiny_results()
    chain = _chain_of(res)
    with pytest.raises(results.MissingResultsError) as err:
        paper_report.chain_comparison(res, chain[chain.model != "s/eq6"], STEPS, SCALE)
    message = str(err.value)
    assert "\n" not in message and "distillation model 's/eq6'" in message
    assert "`python -m ebmhelpers chain-check --profile tiny --steps 128 --step-scale 4`" in message


# ---- the committed cpu tables ---------------------------------------------------------------
def test_quality_rows_are_every_row_whose_scores_the_claims_read():
    res = paper_report.Results.read(CPU)
    rows = paper_report.quality_rows(res)
    assert rows.table.value_counts().to_dict() == {"baseline": 1, "pruning": len(res.pruning), "distillation": 10}
    assert rows.model.str.endswith("/study_score").sum() == 3  # the study's committed winners, one per size
    assert "lottery" not in " ".join(rows.model)  # Results reads the one-shot rows of pruning.csv
    assert (rows.training_seeds >= 1).all() and not rows.duplicated(["table", "model"]).any()


def _scrambled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(IS=1.0, FID=5000.0, IS_std=0.01, FID_std=1.0, n_seeds=3)


def test_the_claims_read_quality_only_from_the_quality_tables():
    res = paper_report.Results.read(CPU)
    table = paper_report.verdict_table(res)
    quant = paper_report.Results(**{**vars(res), "quant": _scrambled(res.quant)})
    assert paper_report.verdict_table(quant).equals(table)  # int8's scores are read by no claim
    pruned = paper_report.Results(**{**vars(res), "pruning": _scrambled(res.pruning)})
    assert not paper_report.verdict_table(pruned).verdict.equals(table.verdict)  # the pruned models' are


def test_the_committed_scores_as_second_chain_reproduce_the_committed_verdicts():
    res = paper_report.Results.read(CPU)
    compared = paper_report.chain_comparison(res, _chain_of(res), STEPS, SCALE)
    assert len(compared) == len(paper_report.verdict_table(CPU)) and not compared.changed.any()


# ---- the command line -----------------------------------------------------------------------
def test_chain_check_mistakes_are_one_line(monkeypatch, capsys):
    assert cli.main(["chain-check", "--profile", "smoke", "--steps", "20"]) == 2
    assert "--steps and --step-scale go together" in capsys.readouterr().err
    monkeypatch.setenv("EBM_ALLOW_SLOW", "1")
    assert cli.main(["chain-check", "--profile", "paper"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "declares no second chain" in err


def test_the_cpu_second_chain_is_the_validation_study_s_best():
    study = pd.read_csv(CPU / "generation_chain_study.csv")
    p = get_profile("cpu")
    snapshot = study[(study.recipe == "25% fresh") & (study.snapshot == "epoch9")]
    best = snapshot.loc[snapshot.FID.idxmin()]
    assert (int(best.steps), float(best.step_scale)) == p.second_chain != (p.gen_steps, p.gen_step_scale)


# ---- the tool, end to end -------------------------------------------------------------------
TINY = "tiny-chain-check"
TRAINED = ["baseline", "prune_unstructured_conv_50", "prune_unstructured_conv_50_s1"]
TRAINED += ["student_cnn_7k_eq6", "student_cnn_7k_eq6_s1"]


@pytest.fixture
def tiny(tmp_path, monkeypatch, tiny_job_profile):
    """A profile whose models train in seconds, committed to a temporary folder, with result tables
    that name a baseline, a one-shot and a fine-tuned (two seeds) pruned model, a lottery ticket, a
    student distilled with two seeds and a student never trained."""
    p = tiny_job_profile(TINY, distill_batch_size=32, n_gen=8, score_seeds=2, gen_steps=2, second_chain=(3, 2.0))
    monkeypatch.setitem(PROFILES, TINY, p)
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.setenv("EBM_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv(pretrained.TRAIN_ENV, raising=False)
    train_all.train(TINY, TRAINED)
    ctx = Context(p, get_device("cpu"))
    results.save_table(ctx, "baseline", pd.DataFrame([{"model": "baseline", "IS": 2.0, "FID": 500.0}]))
    refs = pd.DataFrame([{"samples": "uniform noise", "IS": 1.0, "FID": 4000.0}])
    results.save_table(ctx, "baseline_references", refs)
    one_shot = {"method": "one-shot", "strategy": "unstructured_conv", "ratio": 0.5}
    pruning = [
        {"model": "conv 50%", **one_shot, "finetuned": False, "training_seeds": 1},
        {"model": "conv 50% + fine-tuned", **one_shot, "finetuned": True, "training_seeds": 2},
        {"model": "ticket", **one_shot, "method": "lottery", "finetuned": True, "training_seeds": 1},
    ]
    results.save_table(ctx, "pruning", pd.DataFrame(pruning))
    students = [
        {"model": "cnn_7k/eq6", "student": "cnn_7k", "variant": "eq6", "training_seeds": 2},
        {"model": "cnn_20k/real", "student": "cnn_20k", "variant": "real", "training_seeds": 1},
    ]
    results.save_table(ctx, "distillation", pd.DataFrame(students))
    return ctx


def test_chain_check_scores_every_model_the_claims_read_under_the_second_chain(tiny, one_thread, capsys, monkeypatch):
    p = tiny.profile
    rows = chain_check.run(TINY, progress=False)
    out = capsys.readouterr().out
    assert "skipped distillation 'cnn_20k/real'" in out
    assert "`python -m ebmhelpers train --profile tiny-chain-check --model student_cnn_20k_real` trains it" in out
    written = pd.read_csv(tiny.results / paper_report.CHAIN_FILE)
    assert list(written.columns) == ["profile", *paper_report.CHAIN_COLUMNS]
    assert (
        rows.model.tolist() == written.model.tolist() == ["baseline", "conv 50%", "conv 50% + fine-tuned", "cnn_7k/eq6"]
    )
    assert rows.training_seeds.tolist() == [1, 1, 2, 2] and (rows.n_seeds == p.score_seeds).all()
    assert (rows.steps == 3).all() and (rows.step_scale == 2.0).all() and (rows.n_gen == p.n_gen).all()
    assert (rows.chain == paper_report.chain_label(p, 3, 2.0)).all()

    # the profile's Evaluator, only the chain changed: the baseline's scores are reproduced exactly
    baseline = training.load_or_train_baseline(tiny, progress=False, train=False).model
    ev = metrics.Evaluator(tiny, training.metric_classifier(tiny, progress=False))
    expected, _ = ev.quality(baseline, p.sgld_config(3).scaled(2.0), progress=False)
    got = rows.set_index("model").loc["baseline"]
    for c in ("IS", "IS_std", "FID", "FID_std"):
        assert got[c] == pytest.approx(expected[c], rel=1e-9), c
    profile_chain, _ = ev.quality(baseline, p.gen_sgld_config(), progress=False)
    assert profile_chain["FID"] != pytest.approx(got.FID)  # the second chain is another chain

    # resumable: a second run scores nothing again
    def refuse(*args, **kwargs):
        raise AssertionError("a scored model was scored again")

    quality = metrics.Evaluator.quality
    monkeypatch.setattr(metrics.Evaluator, "quality", refuse)
    again = chain_check.run(TINY, progress=False)
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), rows.drop(columns="seconds"), check_dtype=False)

    # a table that now records another number of training seeds has that model scored again, and only it
    calls = []

    def counted(self, model, *args, **kwargs):
        calls.append(model)
        return quality(self, model, *args, **kwargs)

    monkeypatch.setattr(metrics.Evaluator, "quality", counted)
    tuned = pd.read_csv(tiny.results / "pruning.csv")
    tuned.loc[tuned.model == "conv 50% + fine-tuned", "training_seeds"] = 1
    results.save_table(tiny, "pruning", tuned)
    rescored = chain_check.run(TINY, progress=False).set_index("model")
    assert len(calls) == 1 and rescored.training_seeds.to_dict()["conv 50% + fine-tuned"] == 1
    assert len(rescored) == len(rows)
    assert rescored.loc["baseline", "FID"] == rows.set_index("model").loc["baseline", "FID"]
    tuned.loc[tuned.model == "conv 50% + fine-tuned", "training_seeds"] = 2
    results.save_table(tiny, "pruning", tuned)

    # the model it could not score keeps the comparison from being made, by name
    with pytest.raises(results.MissingResultsError, match="cnn_20k/real.*chain-check --profile tiny-chain-check"):
        paper_report.with_second_chain(paper_report.Results.read(tiny.results), written, 3, 2.0)
