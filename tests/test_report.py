"""The README's results section is generated from the run's tables and kept equal to them."""

import pandas as pd
import pytest

from ebmhelpers.tools import report


def test_the_readme_results_section_is_what_the_committed_tables_say():
    assert report.current_section() == report.render("cpu"), "run: python -m ebmhelpers report --profile cpu --write"


def test_numbers_are_formatted_to_three_significant_digits():
    assert [report._num(v) for v in (334.5611, 6.9717, 0.72224, 3564.2, 0.0, float("nan"))] == \
        ["335", "6.97", "0.722", "3,564", "0.00", "-"]
    assert report._pm(pd.Series({"FID": 334.56, "FID_std": 1.99}), "FID") == "335 ± 2.0"
    assert report._pm(pd.Series({"FID": 334.56, "FID_std": float("nan")}), "FID") == "335"


def test_a_run_without_a_table_says_so_and_the_section_keeps_its_markers(tmp_path):
    pd.DataFrame([{"notebook": "00_ebm_theory.ipynb", "seconds": 60.0, "hardware": "CPU"},
                  {"notebook": "01_train_baseline.ipynb", "seconds": 120.0, "hardware": "CPU"}]).to_csv(
        tmp_path / "notebook_times.csv", index=False)
    text = report.render("cpu", tmp_path)
    assert text.startswith(report.START) and text.endswith(report.END)
    assert "**Series time**: 3.00 minutes in all." in text
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
