"""The distillation-objectives study's table, read: which objective gives a compressed EBM that still
draws digits at equal training compute.

``python -m ebmhelpers distill-study`` (:mod:`ebmhelpers.tools.distill_study`) trains students at
about 1/4, 1/10 and 1/40 of the teacher's parameters with each objective, for a few training seeds,
and writes one row per scored student to ``results/<profile>/distillation_study.csv`` (:data:`CSV_NAME`),
beside a row of the teacher and one of uniform noise (:data:`REFERENCE_ROWS`), all scored on validation
digits. This module is what reads it, the tool and notebook 05 alike: :func:`of_budget` keeps one
budget's rows, :func:`summarize` combines the training seeds, :func:`references` gives the rule
"generates" its two ends, :func:`choose_objective` picks the objective, :func:`targets` states the
goals as rules on a summary, :func:`generation_by_size` says at which sizes each objective still
generates and :func:`versus_control` compares an objective with the control, PCD from scratch.

The winning objective's students, trained and committed by ``--winners`` (:func:`winners_command`),
are read here too: :func:`committed_winners` lists their manifest entries, :func:`load_winner` loads
one through :func:`pretrained.load` and :func:`winner_variant` names its row in notebook 05's table.
"""

from __future__ import annotations


import pandas as pd

from . import verdicts
from .pruning import combine_training_seeds

CSV_NAME = "distillation_study.csv"
TEACHER = "teacher"  # the objective column of the teacher's row
NOISE = "uniform noise"  # ... and of uniform noise's (the other end of "generates", verdicts.References)
REFERENCE_ROWS = (TEACHER, NOISE)
CONTROL = "pcd"  # the control's objective: the same student trained from scratch with PCD, no teacher
QUALITY = ("IS", "FID", *verdicts.PAPER_AUROCS, "auroc_worst")  # the columns a summary averages over seeds
GROUP = ("profile", "teacher_arch", "ratio", "student", "objective", "budget_flops")  # one summary row each


def command(profile: str) -> str:
    """The command line that runs the study for ``profile`` with its defaults."""
    return f"python -m ebmhelpers distill-study --profile {profile}"


def not_committed(profile: str) -> str:
    """The line a reader sees where ``profile`` has no study table."""
    return f"no distillation study is committed for profile {profile!r}: `{command(profile)}` produces it"


def of_budget(table: pd.DataFrame, budget: float | None = None) -> pd.DataFrame:
    """The reference rows and the rows of one budget (default: that of the last student row written),
    so runs with other budgets in the same CSV are not mixed."""
    students = table[~table.objective.isin(REFERENCE_ROWS)]
    if budget is None and len(students):
        budget = float(students.budget_flops.iloc[-1])
    same = (table.budget_flops - (budget or 0.0)).abs() <= 1e-6 * (budget or 0.0)
    return table[table.objective.isin(REFERENCE_ROWS) | same]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per :data:`GROUP` (teacher, ratio, student, objective, budget): its training seeds
    combined as the series combines them (:func:`pruning.combine_training_seeds`: means of
    :data:`QUALITY`, ``IS_std``/``FID_std`` over training and generation seeds by the law of total
    variance, ``IS_train_std``/``FID_train_std`` over the seeds' means alone, ``training_seeds``),
    the parameters, and the objective's ``label`` (its key where the table has none, as on the
    reference rows)."""
    spreads = ("IS_std", "FID_std", "IS_train_std", "FID_train_std")
    rows = []
    for key, part in table.groupby(list(GROUP), sort=False):
        seeds = combine_training_seeds(part)
        labels = part.label.dropna() if "label" in part else pd.Series(dtype=object)
        row = dict(zip(GROUP, key)) | {"params": int(part.params.iloc[0]), "training_seeds": len(part)}
        row["label"] = labels.iloc[0] if len(labels) else row["objective"]
        rows.append(row | {col: seeds.get(col, float("nan")) for col in (*QUALITY, *spreads)})
    return pd.DataFrame(rows)


def reference_row(summary: pd.DataFrame, objective: str) -> pd.Series:
    """The row of a reference (:data:`TEACHER` or :data:`NOISE`); raises ``ValueError`` where the table has none."""
    rows = summary[summary.objective == objective]
    if rows.empty:
        raise ValueError(f"the study table has no {objective!r} row")
    return rows.iloc[0]


def references(summary: pd.DataFrame) -> verdicts.References:
    """What "generates" is measured against here: the teacher's and uniform noise's validation scores."""
    teacher, noise = reference_row(summary, TEACHER), reference_row(summary, NOISE)
    return verdicts.References(base_IS=teacher.IS, base_FID=teacher.FID, noise_IS=noise.IS, noise_FID=noise.FID)


def students(summary: pd.DataFrame) -> pd.DataFrame:
    """The student rows of a table (all but :data:`REFERENCE_ROWS`)."""
    return summary[~summary.objective.isin(REFERENCE_ROWS)]


def generating(summary: pd.DataFrame) -> pd.Series:
    """Whether each student row generates (:func:`verdicts.generates` against :func:`references`),
    indexed like :func:`students`."""
    rows, refs = students(summary), references(summary)
    return pd.Series([verdicts.generates(r, refs) for _, r in rows.iterrows()], index=rows.index, dtype=bool)


def choose_objective(summary: pd.DataFrame) -> str:
    """The objective with the lowest mean rank over the student sizes, each size ranking its
    objectives by validation FID among the students that generate (:func:`verdicts.generates`;
    those that do not rank after them, by IS; :func:`references`); ties go to the higher mean IS."""
    rows = students(summary)
    if rows.empty:
        raise ValueError("the study table has no student row")
    gen = generating(summary)
    ranks: dict[str, list[float]] = {}
    for _, size in rows.groupby("ratio"):
        alive = gen[size.index]
        order = pd.concat([size[alive].sort_values("FID"), size[~alive].sort_values("IS", ascending=False)])
        for rank, objective in enumerate(order.objective, 1):
            ranks.setdefault(objective, []).append(rank)
    mean_is = rows.groupby("objective").IS.mean()
    return min(ranks, key=lambda o: (sum(ranks[o]) / len(ranks[o]), -mean_is.get(o, 0.0)))


TARGET_PARAM_FRACTION = 1 / 4  # the compressed student has at most this fraction of the teacher's parameters
TARGET_IS_FRACTION = 0.9  # ... an IS at least this fraction of the teacher's
TARGET_FID_FACTOR = 1.25  # ... a FID at most this multiple of the teacher's
TARGET_AUROC_TOLERANCE = 0.02  # ... and each of the paper's AUROCs at most this far below the teacher's


def keeps_targets(row: pd.Series, teacher: pd.Series, refs: verdicts.References) -> list[str]:
    """Why a student row misses the compressed-student target against ``teacher`` (empty: it meets
    it); a student that does not generate (:func:`verdicts.generates` against ``refs``) misses it too."""
    fails = [] if verdicts.generates(row, refs) else ["does not generate"]
    if row.params > TARGET_PARAM_FRACTION * teacher.params:
        fails.append(f"{row.params:,} parameters > {TARGET_PARAM_FRACTION:g} x {teacher.params:,}")
    if not row.IS >= TARGET_IS_FRACTION * teacher.IS:
        fails.append(f"IS {row.IS:.2f} < {TARGET_IS_FRACTION:g} x {teacher.IS:.2f}")
    if not row.FID <= TARGET_FID_FACTOR * teacher.FID:
        fails.append(f"FID {row.FID:.1f} > {TARGET_FID_FACTOR:g} x {teacher.FID:.1f}")
    for col in verdicts.PAPER_AUROCS:
        if not row[col] >= teacher[col] - TARGET_AUROC_TOLERANCE:
            fails.append(f"{col} {row[col]:.3f} < {teacher[col]:.3f} - {TARGET_AUROC_TOLERANCE:g}")
    return fails


def _target_row(target: str, best: pd.Series, why: list[str]) -> dict:
    return {
        "target": target,
        "student": best.student,
        "objective": best.objective,
        "params": int(best.params),
        "IS": best.IS,
        "FID": best.FID,
        "met": not why,
        "why": "; ".join(why),
    }


def targets(summary: pd.DataFrame) -> pd.DataFrame:
    """The study's goals as rules on a :func:`summarize` table (its teacher row is the reference):
    ``compressed`` - a student with at most 1/4 of the teacher's parameters, IS >= 90% and FID <=
    1.25x the teacher's and each paper AUROC within 0.02 (:func:`keeps_targets`; the best such
    student, else the lowest-FID candidate and why it misses); ``smallest generating`` - the
    smallest student that generates by :func:`verdicts.generates` against :func:`references`."""
    teacher = reference_row(summary, TEACHER)
    rows, refs = students(summary), references(summary)
    small = rows[rows.params <= TARGET_PARAM_FRACTION * teacher.params]
    meets = small[small.apply(lambda r: not keeps_targets(r, teacher, refs), axis=1)] if len(small) else small
    pick = meets if len(meets) else small
    out = []
    if len(pick):
        best = pick.loc[pick.FID.idxmin()]
        out.append(_target_row("compressed", best, keeps_targets(best, teacher, refs)))
    else:
        out.append({"target": "compressed", "met": False, "why": "no student with at most 1/4 of the parameters"})
    gen = rows[generating(summary)]
    if len(gen):
        out.append(_target_row("smallest generating", gen.sort_values(["params", "FID"]).iloc[0], []))
    else:
        out.append({"target": "smallest generating", "met": False, "why": "no student generates"})
    return pd.DataFrame(out)


def generation_by_size(summary: pd.DataFrame) -> pd.DataFrame:
    """Whether each objective's student generates (:func:`verdicts.generates` against
    :func:`references`) at each size: one row per objective, one column per ratio (largest student
    first), None where the table has no such student."""
    rows, gen = students(summary), generating(summary)
    cells = {(r.objective, r.ratio): bool(gen[i]) for i, r in rows.iterrows()}
    objectives, ratios = list(dict.fromkeys(rows.objective)), sorted(set(rows.ratio))
    return pd.DataFrame(
        [[cells.get((o, r)) for r in ratios] for o in objectives],
        index=pd.Index(objectives, name="objective"),
        columns=pd.Index(ratios, name="ratio"),
    )


def versus_control(summary: pd.DataFrame, objective: str) -> pd.DataFrame:
    """``objective``'s student against the :data:`CONTROL` at each size both have:
    :func:`verdicts.compare_quality` (``better``: by the FID interval among students that generate,
    or the only one of the two that generates) beside both FIDs and whether each generates."""
    rows, gen, refs = students(summary), generating(summary), references(summary)
    out = []
    for ratio, size in rows.groupby("ratio"):
        mine, control = size[size.objective == objective], size[size.objective == CONTROL]
        if len(mine) and len(control):
            a, b = mine.iloc[0], control.iloc[0]
            out.append(
                {
                    "ratio": ratio,
                    "student": a.student,
                    "params": int(a.params),
                    "FID": a.FID,
                    "FID_control": b.FID,
                    "generates": bool(gen[a.name]),
                    "control_generates": bool(gen[b.name]),
                    "verdict": verdicts.compare_quality(a, b, refs),
                }
            )
    return pd.DataFrame(
        out, columns=["ratio", "student", "params", "FID", "FID_control", "generates", "control_generates", "verdict"]
    )
