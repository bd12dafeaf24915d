"""``python -m ebmhelpers report``: the README's results section, generated from a run's tables.

Every number of the section comes from ``results/<profile>/`` (the tables the notebooks wrote) and
``ebmhelpers/pretrained/<profile>/manifest.json`` (the models trained once), so a new run of the
series updates the README with one command instead of hand edits. In order: the train-once job (how many
of the models ``train --list`` names are committed, their iterations, training time and hardware per kind,
the names still missing), the notebooks' wall times, the baseline and its targets, the scored quantization,
pruning and distillation tables, and the verdicts on the paper's claims. The section sits between
:data:`START` and :data:`END` in ``README.md``; ``--write`` replaces it there and ``--check`` fails
(exit status 1) when it differs from what the tables say (``tests/test_report.py`` runs the check on
the committed results).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import pretrained
from ..profiles import ProfileError, get_profile
from ..results import COMMITTED_RESULTS

START, END = "<!-- results:start -->", "<!-- results:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def _num(value, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (at least the integer part), thousands separated."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if value != 0 and abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - (math.floor(math.log10(abs(value))) if value else 0))
    return f"{value:,.{decimals}f}"


def _pm(row: pd.Series, metric: str) -> str:
    """``mean +- std`` of a metric and its spread column, or the mean alone."""
    std = row.get(f"{metric}_std")
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return _num(row.get(metric))
    return f"{_num(row[metric])} ± {_num(std, 2)}"


def markdown(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (cells as they are: format them first)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def _missing(name: str) -> str:
    return f"*`{name}.csv` not produced by this run.*"


def _span(values) -> str:
    """``a`` or ``a-b``: the range of ``values``, each formatted by :func:`_num`."""
    lo, hi = min(values), max(values)
    return _num(lo) if lo == hi else f"{_num(lo)}-{_num(hi)}"


def _dates(dates: list[str]) -> str:
    """``d`` or ``first to last`` of ISO dates; ``-`` for none."""
    dates = sorted(set(dates))
    return "-" if not dates else dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def _models(profile: str) -> pd.DataFrame:
    """Every model of ``profile`` from ``train --list`` (:func:`train_all.status`): name, kind, committed,
    fresh. Where the profile cannot start here (a profile sized for a GPU, on a CPU), the manifest's
    entries alone."""
    from . import train_all

    try:
        return train_all.status(profile)[["name", "kind", "committed", "fresh"]]
    except ProfileError:
        entries = pretrained.read_manifest(profile).values()
        return pd.DataFrame(
            [
                {
                    "name": e["name"],
                    "kind": e["kind"],
                    "committed": True,
                    "fresh": pretrained.is_fresh(profile, e["name"]),
                }
                for e in entries
            ],
            columns=["name", "kind", "committed", "fresh"],
        )


def trained_once(models: pd.DataFrame, manifest: dict[str, dict]) -> str:
    """The training job's part of the section: how many of the ``models`` (``train --list``'s rows)
    are committed, and per kind their iterations, the sum of their training ``seconds`` and the
    hardware, from the ``manifest`` entries (name -> entry); the models still to train by name."""
    names = list(dict.fromkeys([*models.name, *manifest]))
    kind = dict(zip(models.name, models.kind)) | {n: e["kind"] for n, e in manifest.items()}
    if not manifest:
        return f"**Trained once**: none of the {len(names)} models of this profile committed yet."
    rows = []
    for k in dict.fromkeys(kind[n] for n in names):
        entries = [manifest[n] for n in names if kind[n] == k and n in manifest]
        total = sum(1 for n in names if kind[n] == k)
        rows.append(
            {
                "kind": k,
                "committed": f"{len(entries)} of {total}",
                "iterations per model": _span([e["iterations"] for e in entries]) if entries else "-",
                "hours": _num(sum(e["seconds"] for e in entries) / 3600) if entries else "-",
                "hardware": "; ".join(dict.fromkeys(e.get("hardware", "?") for e in entries)) or "-",
                "trained on": _dates([e.get("date", "?") for e in entries]),
            }
        )
    seconds = sum(e["seconds"] for e in manifest.values())
    stale = [n for n, done, fresh in zip(models.name, models.committed, models.fresh) if done and not fresh]
    todo = [n for n in names if n not in manifest]
    out = (
        f"**Trained once** (`manifest.json`; `train --list` names the models): {len(manifest)} of {len(names)} "
        f"models committed, {_num(seconds / 3600)} h of training in all (the sum of their `seconds`).\n\n"
        + markdown(pd.DataFrame(rows))
    )
    notes = [f"`{n}`: {e['seconds_note']}." for n, e in manifest.items() if e.get("seconds_note")]
    if notes:
        out += "\n\nHow the seconds were measured: " + " ".join(notes)
    if stale:
        out += (
            f"\n\n{len(stale)} committed model(s) not fresh (altered, or trained from another baseline): "
            + ", ".join(f"`{n}`" for n in stale)
            + "."
        )
    if todo:
        out += (
            f"\n\nNot committed yet ({len(todo)}; until they are, the notebook that needs one trains it): "
            + ", ".join(f"`{n}`" for n in todo)
            + "."
        )
    return out


def _times(folder: Path, manifest: dict[str, dict]) -> str:
    """The notebooks' wall times, and which of them last ran before the newest committed model's date
    (``manifest``: name -> entry), so that their tables cannot hold it."""
    t = _read(folder, "notebook_times")
    if t is None:
        return _missing("notebook_times")
    cols = [c for c in ("notebook", "seconds", "hardware", "finished") if c in t]
    rows = t.assign(seconds=t.seconds.map(lambda s: _num(s, 4)))[cols]
    out = (
        f"**Series time**: {_num(t.seconds.sum() / 60)} minutes in all (`notebook_times.csv`: each notebook's "
        f"wall time in its latest run).\n\n{markdown(rows)}"
    )
    newest = max((e["date"] for e in manifest.values() if e.get("date")), default=None)
    if newest and "finished" in t:
        older = [nb for nb, done in zip(t.notebook, t.finished) if str(done)[:10] < newest]
        if older:
            out += (
                f"\n\n{len(older)} of {len(t)} notebooks last ran before {newest}, the date of the newest "
                f"committed model: their tables come from the models as they were then, not from those committed since."
            )
    return out


def _performance(folder: Path, profile: str) -> str:
    """The SGLD speed-ups measured on this hardware (``bench_interleaved.csv``: interleaved medians,
    quartile spread) and which of them the profile turns on."""
    t = _read(folder, "bench_interleaved")
    if t is None:
        return _missing("bench_interleaved")
    p = get_profile(profile)
    used = {"eager": not (p.channels_last or p.compile), "channels_last": p.channels_last, "compile": p.compile}
    rows = pd.DataFrame(
        {
            "variant": t.model,
            "median s": t.median_s.map(_num),
            "speed-up [quartiles]": [
                f"{_num(r.speedup)} [{_num(r.speedup_lo)}, {_num(r.speedup_hi)}]" for r in t.itertuples()
            ],
            "runs": t.n,
            f"on in `{profile}`": [("yes" if used.get(m, False) else "no") for m in t.model],
        }
    )
    return (
        f"**Performance** (`python -m ebmhelpers bench --interleaved`, `bench_interleaved.csv`: "
        f"{t.chain.iloc[0]}, the variants timed in turn, median of each with its quartiles). A variant is on "
        f"only when its quartile range clears the others'; compile applies on CUDA devices only.\n\n{markdown(rows)}"
    )


def _baseline(folder: Path) -> str:
    b = _read(folder, "baseline")
    if b is None:
        return _missing("baseline")
    r = b.iloc[0]
    cols = {
        "parameters": _num(r.params),
        "IS": _pm(r, "IS"),
        "FID": _pm(r, "FID"),
        "confident": _num(r.confident),
        "class entropy (bits)": _num(r.entropy_bits),
        "seeds": int(r.n_seeds),
        **{
            f"AUROC {s}": _num(r[f"auroc_{s}"])
            for s in ("noise", "flip", "reduced", "shrink_centre", "fashion", "uniform")
            if f"auroc_{s}" in r
        },
    }
    out = f"**Baseline** (`baseline.csv`, test digits):\n\n{markdown(pd.DataFrame([cols]))}"
    t = _read(folder, "baseline_targets")
    if t is not None:
        rows = t.assign(
            value=[f"{_num(v)}" + (f" ± {_num(s, 2)}" if pd.notna(s) else "") for v, s in zip(t.value, t["std"])],
            met=t.met.map({True: "met", False: "missed"}),
        )[["target", "rule", "value", "met"]]
        which = (
            f"the baseline of {_num(t.baseline_iterations.iloc[0])} iterations, sha256 {t.baseline.iloc[0][:12]}"
            if "baseline" in t
            else "the committed baseline"
        )
        out += (
            f"\n\n**Baseline targets** (`baseline_targets.csv`: {which}; {int(t.n_seeds.iloc[0])} seeds x "
            f"{_num(t.digits_per_seed.iloc[0])} test digits, chain {t.chain.iloc[0]}):\n\n{markdown(rows)}"
        )
    return out


def _scored(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Key columns, then IS and FID with their spread and the worst AUROC of the paper's transforms."""
    return pd.DataFrame(
        {
            **{k: df[k] for k in keys},
            "IS": [_pm(r, "IS") for _, r in df.iterrows()],
            "FID": [_pm(r, "FID") for _, r in df.iterrows()],
            "worst AUROC": [f"{_num(r.auroc_worst)} ({r.worst_set})" for _, r in df.iterrows()],
        }
    )


def _scored_section(folder: Path, name: str, title: str, keys: list[str], formats: dict) -> str:
    """A section of scored models from ``<name>.csv``: ``keys`` (formatted by ``formats``, column -> function),
    then IS, FID and the worst AUROC (:func:`_scored`)."""
    df = _read(folder, name)
    if df is None:
        return _missing(name)
    df = df.assign(**{col: df[col].map(fmt) for col, fmt in formats.items()})
    keys = [k for k in keys if k in df]
    return f"**{title}** (`{name}.csv`):\n\n{markdown(_scored(df, keys))}"


def _quantization(folder: Path) -> str:
    return _scored_section(folder, "quantization", "Quantization", ["model", "size_mb"], {"size_mb": _num})


def _pruning(folder: Path) -> str:
    return _scored_section(
        folder,
        "pruning",
        "Pruning",
        ["method", "strategy", "ratio", "finetuned", "training_seeds"],
        {"ratio": lambda r: f"{r:.0%}", "finetuned": {True: "yes", False: "no"}.get},
    )


def _distillation(folder: Path) -> str:
    return _scored_section(folder, "distillation", "Distillation", ["student", "variant", "params"], {"params": _num})


def _verdicts(folder: Path) -> str:
    from ..paper_report import verdict_table  # here: the rest of the report does not depend on it

    try:
        v = verdict_table(folder)
    except FileNotFoundError as err:
        return f"*No verdicts: {err}*"
    counts = ", ".join(f"{n} {verdict}" for verdict, n in v.verdict.value_counts().items())
    return f"**The paper's claims** (`paper_report.verdict_table`): {counts}.\n\n" + markdown(
        v[["claim", "section", "verdict"]]
    )


def render(profile: str = "cpu", folder: str | Path | None = None) -> str:
    """The results section of ``profile`` (markers included) from its tables in ``folder``
    (default: the checkout's ``results/<profile>/``)."""
    folder = Path(folder) if folder is not None else COMMITTED_RESULTS / profile
    manifest = pretrained.read_manifest(profile)
    parts = [
        f"*Generated by `python -m ebmhelpers report --profile {profile} --write` from `results/{profile}/` and "
        f"`ebmhelpers/pretrained/{profile}/manifest.json`: a new run updates it, nothing here is typed.*",
        trained_once(_models(profile), manifest),
        _times(folder, manifest),
        _performance(folder, profile),
        _baseline(folder),
        _quantization(folder),
        _pruning(folder),
        _distillation(folder),
        _verdicts(folder),
    ]
    return "\n\n".join([START, *parts, END])


def handwritten(readme: Path = README) -> str:
    """The README without its generated section: the part people write."""
    text, section = readme.read_text(), current_section(readme)
    return text.replace(section, "")


def current_section(readme: Path = README) -> str:
    """The README's section between the markers (markers included); ValueError when they are missing."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} section")
    return text[text.index(START) : text.index(END) + len(END)]


def write(profile: str = "cpu", readme: Path = README) -> bool:
    """Replace the README's section with :func:`render`; returns whether it changed."""
    old, new = current_section(readme), render(profile)
    if old != new:
        readme.write_text(readme.read_text().replace(old, new))
    return old != new
