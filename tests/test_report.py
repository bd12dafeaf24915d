"""The README's results section is generated from the run's tables and kept equal to them; the
hand-written rest stays short and holds no number a run produced."""

import re

import pandas as pd
import pytest

from ebmhelpers.results import COMMITTED_RESULTS
from ebmhelpers.tools import report


def test_the_readme_results_section_is_what_the_committed_tables_say():
    assert report.current_section() == report.render("cpu"), "run: python -m ebmhelpers report --profile cpu --write"


def test_numbers_are_formatted_to_three_significant_digits():
    assert [report._num(v) for v in (334.5611, 6.9717, 0.72224, 3564.2, 0.0, float("nan"))] == [
        "335",
        "6.97",
        "0.722",
        "3,564",
        "0.00",
        "-",
    ]
    assert report._pm(pd.Series({"FID": 334.56, "FID_std": 1.99}), "FID") == "335 ± 2.0"
    assert report._pm(pd.Series({"FID": 334.56, "FID_std": float("nan")}), "FID") == "335"


def test_a_run_without_a_table_says_so_and_the_section_keeps_its_markers(tmp_path):
    pd.DataFrame(
        [
            {"notebook": "00_ebm_theory.ipynb", "seconds": 60.0, "hardware": "CPU"},
            {"notebook": "01_train_baseline.ipynb", "seconds": 120.0, "hardware": "CPU"},
        ]
    ).to_csv(tmp_path / "notebook_times.csv", index=False)
    text = report.render("cpu", tmp_path)
    assert text.startswith(report.START) and text.endswith(report.END)
    assert "**Series time**: 3.00 minutes in all (" in text
    assert "| 01_train_baseline.ipynb | 120.0 | CPU |" in text
    for name in ("baseline", "quantization", "pruning", "distillation"):
        assert f"*`{name}.csv` not produced by this run.*" in text
    assert "*No verdicts:" in text


def test_write_replaces_only_the_section(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nhand-written\n\n{report.START}\nold numbers\n{report.END}\n\nmore prose\n")
    monkeypatch.setattr(report, "render", lambda profile="cpu": f"{report.START}\nnew\n{report.END}")
    assert report.write("cpu", readme)
    assert readme.read_text() == f"# Title\n\nhand-written\n\n{report.START}\nnew\n{report.END}\n\nmore prose\n"
    assert not report.write("cpu", readme)  # already up to date
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="results:start"):
        report.current_section(readme)


MAX_HANDWRITTEN_LINES = 300
SECTION_REF = re.compile(r"§\d+(\.\d+)*(-\d+(\.\d+)*)?")  # the paper's sections: §3.3-3.4
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+")


def typed_decimals(text: str) -> list[str]:
    """Decimal numbers of ``text`` outside code and the paper's section numbers."""
    return DECIMAL.findall(SECTION_REF.sub("", CODE.sub("", text)))


def test_the_handwritten_readme_is_short():
    lines = len(report.handwritten().splitlines())
    assert lines <= MAX_HANDWRITTEN_LINES, (
        f"the README outside the generated section has {lines} lines "
        f"(at most {MAX_HANDWRITTEN_LINES}): cut repetition, or let report.py generate it"
    )


def test_the_handwritten_readme_types_no_measured_decimals():
    assert typed_decimals("IS 6.97 (§4.3, §3.3-3.4), `torch>=2.3` and\n```\nx = 0.5\n```") == ["6.97"]
    found = typed_decimals(report.handwritten())
    assert not found, f"decimal numbers typed into the README's prose: {found}; results belong in the generated section"


def test_handwritten_excludes_exactly_the_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nprose\n{report.START}\n| 1.5 |\n{report.END}\nend\n")
    assert report.handwritten(readme) == "# T\n\nprose\n\nend\n"


def _entry(name, kind, iterations, seconds, hardware="CPU: test (2 threads)", date="2026-12-01", **more):
    return {
        "name": name,
        "kind": kind,
        "iterations": iterations,
        "seconds": seconds,
        "hardware": hardware,
        "date": date,
        **more,
    }


def test_the_training_job_is_summed_per_kind_from_the_manifest():
    models = pd.DataFrame(
        {
            "name": ["baseline", "prune_a", "prune_b", "student_x"],
            "kind": ["baseline", "finetuned", "finetuned", "student"],
            "committed": [True, True, True, False],
            "fresh": [True, True, False, False],
        }
    )
    manifest = {
        "baseline": _entry("baseline", "baseline", 4300, 5400.0, seconds_note="epochs 1-3 estimated"),
        "prune_a": _entry("prune_a", "finetuned", 500, 1800.0, date="2026-12-02"),
        "prune_b": _entry("prune_b", "finetuned", 350, 1800.0, hardware="GPU: test", date="2026-12-03"),
    }
    text = report.trained_once(models, manifest)
    assert "3 of 4 models committed, 2.50 h of training in all" in text  # (5400 + 1800 + 1800) s
    assert "| baseline | 1 of 1 | 4,300 | 1.50 | CPU: test (2 threads) | 2026-12-01 |" in text
    assert (
        "| finetuned | 2 of 2 | 350-500 | 1.00 | CPU: test (2 threads); GPU: test | 2026-12-02 to 2026-12-03 |" in text
    )
    assert "| student | 0 of 1 | - | - | - | - |" in text
    assert "`baseline`: epochs 1-3 estimated." in text
    assert "1 committed model(s) not fresh" in text and "`prune_b`" in text.split("not fresh")[1]
    assert "Not committed yet (1;" in text and "`student_x`." in text


def test_nothing_committed_is_said_from_the_model_list():
    models = pd.DataFrame(
        {
            "name": ["baseline", "s"],
            "kind": ["baseline", "student"],
            "committed": [False, False],
            "fresh": [False, False],
        }
    )
    assert report.trained_once(models, {}) == "**Trained once**: none of the 2 models of this profile committed yet."


def test_notebooks_older_than_the_newest_model_are_named_by_count(tmp_path):
    pd.DataFrame(
        [
            {"notebook": "00_a.ipynb", "seconds": 6.0, "hardware": "CPU", "finished": "2026-12-01 10:00"},
            {"notebook": "01_b.ipynb", "seconds": 6.0, "hardware": "CPU", "finished": "2026-12-03 10:00"},
        ]
    ).to_csv(tmp_path / "notebook_times.csv", index=False)
    text = report._times(tmp_path, {"m": _entry("m", "finetuned", 1, 1.0, date="2026-12-03")})
    assert "| 00_a.ipynb | 6.000 | CPU | 2026-12-01 10:00 |" in text
    assert "1 of 2 notebooks last ran before 2026-12-03" in text
    assert "last ran before" not in report._times(tmp_path, {"m": _entry("m", "finetuned", 1, 1.0, date="2026-12-01")})


def test_performance_lists_each_measured_variant_and_what_the_profile_turns_on():
    text = report._performance(COMMITTED_RESULTS / "cpu", "cpu")
    lines = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line
    }
    assert {"eager", "channels_last", "compile"} <= set(lines)
    assert lines["channels_last"].rstrip(" |").endswith("yes") and lines["compile"].rstrip(" |").endswith("no")
    assert lines["eager"].rstrip(" |").endswith("no")  # channels_last replaces it in the cpu profile
    assert "runs" in text and "quartiles" in text
