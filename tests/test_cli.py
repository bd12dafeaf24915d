"""The defaults a reader meets first, the command line's one-line errors, and the package's shape:
no import circle, and tools that the notebooks never import."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ebmhelpers
from ebmhelpers import notebooks, profiles, runtime
from ebmhelpers.tools import runner

PACKAGE = Path(ebmhelpers.__file__).parent
ROOT = PACKAGE.parent


def test_default_profile_is_the_committed_one_on_any_device(monkeypatch):
    monkeypatch.delenv(profiles.ENV_VAR, raising=False)
    assert profiles.get_profile().name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.default_profile_name() == "cpu" and profiles.get_profile().name == "cpu"


@pytest.mark.parametrize("name", ["colab", "gpu", "paper"])
def test_resnet18_profile_on_a_cpu_is_refused_with_the_estimate_and_the_way_on(monkeypatch, name):
    monkeypatch.delenv(profiles.ALLOW_SLOW_VAR, raising=False)
    with pytest.raises(profiles.ProfileError, match=rf"'{name}'.*FLOPs counted.*estimate.*EBM_ALLOW_SLOW=1") as err:
        runtime.start(name, device="cpu", verbose=False)
    assert "\n" not in str(err.value)


def test_allow_slow_starts_it_and_the_banner_prints_the_estimate(monkeypatch, capsys):
    monkeypatch.setenv(profiles.ALLOW_SLOW_VAR, "1")
    ctx = runtime.start("colab", device="cpu")
    assert ctx.profile.name == "colab"
    assert "expected: 6e+16 FLOPs counted" in capsys.readouterr().out


def test_small_profiles_start_on_a_cpu_without_an_estimate_line(capsys):
    for name in ("cpu", "smoke"):
        assert not profiles.get_profile(name).needs_gpu
        runtime.start(name, device="cpu")
        assert "expected:" not in capsys.readouterr().out


def test_runner_finds_the_checkouts_notebooks_wherever_ebm_home_points(monkeypatch, tmp_path):
    monkeypatch.setenv("EBM_HOME", str(tmp_path))
    paths = notebooks.notebook_paths()
    assert paths and all(p.parent == ROOT / "notebooks" for p in paths)
    with pytest.raises(
        runner.NoSuchNotebook, match="no notebook starts with 09; the notebooks are: 00_ebm_theory, 01_"
    ):
        runner.run_notebooks("smoke", only=["09"])


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (profiles.ENV_VAR, profiles.ALLOW_SLOW_VAR)}
    return subprocess.run(
        [sys.executable, "-m", "ebmhelpers", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, "EBM_DEVICE": "cpu", **env},
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "--profile", "nonsense"], "unknown profile 'nonsense'; choose one of"),
        (["run", "--only", "09"], "the notebooks are: 00_ebm_theory, 01_train_baseline"),
        (["run", "--profile", "paper"], "EBM_ALLOW_SLOW=1"),
        (["recipe-study", "--long", "2"], "--long needs --recipe NAME"),
        (["recipe-study", "--recipe", "25% fresh"], "--recipe goes with --long, --training-length or --chain"),
        (
            ["recipe-study", "--training-length", "--recipe", "nonsense"],
            "unknown recipe 'nonsense'; the recipes are: paper",
        ),
    ],
)
def test_command_line_mistakes_are_one_line_and_exit_status_2(args, expected):
    done = _cli(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"python -m ebmhelpers {args[0]}: error: ")


def _imports(path: Path) -> set[str]:
    """The ebmhelpers modules that ``path`` imports anywhere in it (also inside functions)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found |= {n for n in names if _is_module(n)} or {target}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m.removesuffix(".__init__") for m in found if m.startswith("ebmhelpers")}


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel.with_suffix(".py")).exists() or (ROOT / rel / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
    }
    return {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}


def test_the_package_has_no_import_circle():
    graph, state, cycle = _graph(), {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle.extend(trail[trail.index(nxt) :] + [node, nxt] if nxt in trail else [node, nxt])
                return
            if nxt not in state:
                visit(nxt, trail + [node])
                if cycle:
                    return
        state[node] = "done"

    for node in sorted(graph):
        if node not in state and not cycle:
            visit(node, [])
    assert not cycle, " -> ".join(cycle)


def test_only_the_tools_import_the_tools():
    for module, targets in _graph().items():
        if not module.startswith("ebmhelpers.tools") and module != "ebmhelpers.__main__":
            assert not {t for t in targets if t.startswith("ebmhelpers.tools")}, module
    for path in notebooks.notebook_paths():
        assert "ebmhelpers.tools" not in path.read_text() and "from ebmhelpers import tools" not in path.read_text()


def test_the_package_docstring_lists_every_module():
    doc = ebmhelpers.__doc__
    for path in PACKAGE.glob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            assert f"``{path.stem}``" in doc, path.stem
    assert "``tools``" in doc
