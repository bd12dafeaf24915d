"""The notebooks' markdown says what to look for and why; the numbers a run produces come from code cells."""

import re

import nbformat
import pytest

from ebmhelpers import notebooks

DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+")  # 0.5, 334.6 (in LaTeX too); a version's tail is not counted again
MAX_DECIMALS = 40  # all notebooks' markdown together: quotes of the paper and theory constants
HISTORY = re.compile(r"\bissue \d+\b|\b(previously|the earlier run|was trained before)\b", re.I)


def markdown(path):
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def decimals(texts):
    return [m.group() for text in texts for m in DECIMAL.finditer(text)]


def test_decimal_counter():
    assert decimals(["IS 6.97 +- 0.16 at 30% ($\\sigma_{0.5}$, torch 2.14.1)", "eq. 6, 1/145"]) == [
        "6.97",
        "0.16",
        "0.5",
        "2.14",
    ]


def test_markdown_holds_few_typed_numbers():
    found = {path.name: decimals(markdown(path)) for path in notebooks.notebook_paths()}
    total = sum(len(v) for v in found.values())
    assert total <= MAX_DECIMALS, (
        f"{total} decimal numbers in the notebooks' markdown (at most {MAX_DECIMALS}): "
        + "; ".join(f"{k}: {len(v)}" for k, v in found.items())
    )


@pytest.mark.parametrize("path", notebooks.notebook_paths(), ids=lambda p: p.name)
def test_markdown_tells_no_history(path):
    hits = [m.group() for text in markdown(path) for m in HISTORY.finditer(text)]
    assert not hits, f"{path.name}: {hits}"


ISSUE = re.compile(r"\bissue \d+\b", re.I)  # a tracker's number tells a reader nothing about the code


def test_no_issue_numbers_in_the_readme_the_package_the_tests_or_the_notebooks():
    root = notebooks.notebook_paths()[0].parents[1]
    files = [root / "README.md", *root.glob("ebmhelpers/**/*.py"), *root.glob("tests/**/*.py")]
    texts = {f.relative_to(root): f.read_text(encoding="utf-8") for f in files}
    texts |= {p.relative_to(root): p.read_text(encoding="utf-8") for p in notebooks.notebook_paths()}
    hits = {str(name): ISSUE.findall(text) for name, text in texts.items() if ISSUE.search(text)}
    assert len(files) > 30 and not hits, hits
