"""The transcription in ebmhelpers.paper against the paper's own text (../shared/paper/).

The values are read back from the text here, not copied: Table 1 and Table 2 from their
tab-separated lines, every quoted claim found verbatim. Readers' clones have no ../shared/paper/:
the tests skip there, CI has the file."""

import re
from pathlib import Path

import pytest

from ebmhelpers import paper

REPO = Path(__file__).resolve().parents[1]
TEXT_PATH = REPO / paper.PAPER_TEXT

pytestmark = pytest.mark.skipif(
    not TEXT_PATH.exists(),
    reason=f"the paper's text is not at {TEXT_PATH} (only CI and the project's machines have it)",
)


@pytest.fixture(scope="module")
def text() -> str:
    return TEXT_PATH.read_text(encoding="utf-8")


def _flat(s: str) -> str:
    """Whitespace collapsed, so a sentence broken across the PDF's lines still matches."""
    return re.sub(r"\s+", " ", s)


def _row(text: str, label: str, after: str = "") -> list[float]:
    """The numbers of the first tab-separated table line that starts with ``label`` (after the
    text ``after``, e.g. a table's caption: both tables have a Baseline row)."""
    for line in text[text.index(after) :].splitlines():
        cells = line.split("\t")
        if cells[0].strip() == label and len(cells) > 1:
            return [float(c) for c in cells[1:] if c.strip()]
    raise AssertionError(f"no table line starting with {label!r}")


def _section(text: str, heading: str) -> str:
    """The text from a heading to the next heading of any level."""
    start = text.index(heading)
    nxt = re.search(r"^#+ ", text[start + len(heading) :], flags=re.M)
    return text[start : start + len(heading) + (nxt.start() if nxt else len(text))]


def test_title(text):
    assert paper.PAPER_TITLE in text


def test_table1(text):
    assert "Table 1: Baseline vs Quantized Stats" in text
    for model, values in paper.TABLE1.items():
        assert tuple(_row(text, model, "Table 1:")) == values
    size_b, size_q = paper.TABLE1["Baseline"][0], paper.TABLE1["Static Quantized"][0]
    assert round(size_b / size_q, 1) == paper.TABLE1_COMPRESSION.value  # 11.9x follows from the table
    assert f"compression ratio of {paper.TABLE1_COMPRESSION.value}x and 50% faster" in text


def test_table2(text):
    assert "Table 2: OOD Detection Results" in text
    header = next(l for l in text.splitlines() if l.startswith("Model\tNoise"))
    assert [c for c in header.split("\t")[1:] if c] == ["Noise", "Rotation", "Reduction"]
    digits = next(l for l in text.splitlines() if l.startswith("\t4\t5\t9"))
    assert [int(c) for c in digits.split("\t") if c] == [4, 5, 9] * 3
    for model, scores in paper.TABLE2.items():
        read = _row(text, model, "Table 2:")
        assert len(read) == 9
        expected = [scores[(t, d)] for t in paper.TABLE2_TRANSFORMS for d in paper.TABLE2_DIGITS]
        assert read == expected, model
    assert paper.table2_range("Baseline", "noise") == (-0.45, -0.21)
    assert paper.table2_value("Static Quantization", "noise", 4) == -0.02


def test_reported_numbers_are_in_their_sections(text):
    sections = {
        "§4.2": _section(text, "### 4.2 Baselines"),
        "§4.3": _section(text, "### 4.3 Quantization"),
        "§4.4": _section(text, "#### 4.4 Pruning"),
        "§4.5": _section(text, "#### 4.5 Knowledge Distillation"),
        "§3.4": _section(text, "### 3.4 Knowledge Distillation"),
        "§5": _section(text, "## 5 Conclusion"),
    }
    reported = [v for v in vars(paper).values() if isinstance(v, paper.Reported)]
    assert len(reported) >= 12
    for r in reported:
        assert _flat(r.text) in _flat(sections[r.section]), (r.section, r.text)
    assert "5,275" in sections["§4.2"] and "1.13" in sections["§4.2"]
    assert "60 epochs over 2 days on an NVIDIA A100" in sections["§4.2"]
    assert "from 10% to 90%" in sections["§4.4"] and "7 further epochs" in sections["§4.4"]
    assert [round(r * 100) for r in paper.PRUNE_RATIOS] == list(range(10, 100, 10))
    assert "half the epochs used to train the baseline" in _flat(sections["§4.5"])
    assert paper.DISTILL_EPOCH_FRACTION == 0.5
    assert "six student models" in sections["§3.4"] and paper.N_STUDENTS.value == 6
    assert "(E_{\\text{teacher}}(x_i) - E_{\\text{student}}(x_i))^2" in sections["§3.4"]  # eq. 6: plain MSE
    assert "unstructured 60% pruning of Conv2d layers" in sections["§5"]
    assert paper.FIGURE4_PRUNING == ("unstructured", "Conv2d", 0.6)
    assert "$l_1$  norm" in _section(text, "### 3.3.2 Pruning") and paper.PRUNE_NORM == "l1"
    # 77,004 parameters and 145x: the paper's ResNet18 then has about 11.2 M parameters
    assert 10e6 < paper.STUDENT_PARAMS.value * paper.STUDENT_RATIO.value < 12e6


def test_claims_are_verbatim(text):
    flat = _flat(text)
    for key, (section, sentence) in paper.CLAIMS.items():
        assert _flat(sentence) in flat, key
        assert section.startswith("§") or section == "Abstract"
    assert "1/145th-sized student" in _section(text, "## Abstract")
    assert paper.CLAIMS["fig2_finetuned"][0] == "§4.4"
    assert "maintaining close-to-perfect OOD scores" in paper.CLAIMS["fig2_finetuned"][1]


def test_algorithm2_lines_cited(text):
    """The attributions cite Algorithm 2's empty buffer and its loss lines."""
    assert "1: Initialize empty buffer" in text
    assert re.search(r"9:\s+Contrastive divergence", text) and re.search(r"10:\s+Regularization loss", text)
    assert "\\nabla_\\theta E_\\theta(\\mathbf{x}) = \\frac{1}{10}" in text  # eq. 5 is a gradient of the energy
    assert "lines 9-11" in paper.ATTRIBUTIONS["loss"] and "line 1" in paper.ATTRIBUTIONS["buffer"]
