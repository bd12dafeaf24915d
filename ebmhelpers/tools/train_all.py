"""Train once: every model the notebooks of a profile use, trained and committed with its manifest entry.

``python -m ebmhelpers train --profile cpu --all`` trains, in order, the baseline (with the metric
classifier), each fine-tuned pruned model (Conv2d-only strategies at every ratio), the lottery
ticket's rounds, the distilled students (eq. 6 and the extensions), and then the extra training seeds
(``training_seeds`` of the fine-tunings at the seeded ratios and of the eq. 6 students), and commits
each one as it finishes
(:mod:`ebmhelpers.pretrained`). It is resumable at two levels: a committed model whose entry derives
from the committed baseline is skipped, and an interrupted one resumes from its checkpoint.
``--model NAME`` (re)trains one model; ``--list`` shows every model and whether it is committed.

The notebooks reach the same weights through the same functions (``training.load_or_train_baseline``,
``pruning.finetune``, ``pruning.lottery_ticket``, ``distillation.load_or_distill``), which install
committed weights instead of training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from .. import data as data_mod
from .. import distillation, pretrained, pruning
from ..checkpoints import load_checkpoint
from ..pretrained import commit_baseline, is_fresh, read_manifest, retrain_command
from ..runtime import Context, start
from ..models import build_baseline, count_parameters
from ..training import load_or_train_baseline, load_or_train_classifier, training_iterations

LOTTERY = "lottery"  # the job name of the lottery ticket's rounds


@dataclass(frozen=True)
class Job:
    """One model to train: its manifest ``name`` (the lottery job names its rounds), ``kind`` and
    the call that trains and commits it."""

    name: str
    kind: str
    run: Callable[[Context, bool], None]  # (context, force: retrain what is committed)
    members: tuple[str, ...] = ()  # the committed names a job writes, when they differ from its name


def finetune_jobs(profile) -> list[tuple[str, pruning.Strategy, float, int]]:
    """(name, strategy, ratio, seed) of every fine-tuned pruned model: the Conv2d-only strategies at
    every ratio of the sweep, with ``training_seeds`` seeds at ``seeded_ratios`` and one elsewhere."""
    out = []
    for strategy, ratio in pruning.sweep_jobs(profile):
        if not strategy.finetuned:
            continue
        for seed in range(pruning.training_seeds(profile, ratio)):
            out.append((pruning.finetuned_name(strategy, ratio, seed), strategy, ratio, seed))
    return out


def lottery_names(profile) -> tuple[str, ...]:
    strategy = pruning.STRATEGIES[pruning.LOTTERY_STRATEGY]
    target = max(profile.prune_ratios)
    return tuple(
        pruning.checkpoint_name(strategy, target, f"lottery_r{r}") for r in range(1, profile.lottery_rounds + 1)
    )


def _baseline(ctx: Context):
    """The committed baseline, installed: what every derived model starts from."""
    trainer = load_or_train_baseline(ctx)
    if trainer.installed_from is None:
        raise pretrained.WeightsError(
            f"the baseline in {trainer.ckpt_path} is not the committed one; commit it first "
            f"(`{retrain_command(ctx.profile.name, 'baseline')}`)"
        )
    return trainer


def _start_over(
    path,
    force: bool,
    total: int,
    stale: Callable[[dict], bool] | None = None,
    why: str = "trained from another baseline",
) -> None:
    """Remove the checkpoint at ``path`` when its run must start over: ``force`` (a retrain was asked)
    and the run is installed or finished (an unfinished run of ``total`` iterations resumes instead),
    or ``stale(state)`` says it started from something else (``why``)."""
    if not path.exists():
        return
    state = load_checkpoint(path)
    old = stale is not None and stale(state)
    finished = bool(state.get("installed_from")) or int(state["step"]) >= total
    if old or (force and finished):
        print(f"starting {path.name} over ({why if old else 'retrain asked'})")
        path.unlink()


def _other_parent(parent: str) -> Callable[[dict], bool]:
    """Whether a PCD checkpoint was trained from another baseline than ``parent``."""
    return lambda state: state.get("origin", "") != parent


def _fit_digits(ctx: Context):
    p = ctx.profile
    return data_mod.load_training_split("fit", p.val_size, p.train_subset, p.seed, ctx.device)


def _train_baseline(ctx: Context, force: bool) -> None:
    p = ctx.profile
    _start_over(ctx.checkpoints / "baseline.pt", force, training_iterations(p, len(_fit_digits(ctx))))
    trainer = load_or_train_baseline(ctx, train=True)
    load_or_train_classifier(ctx)
    entry = commit_baseline(p, ctx.checkpoints, seconds=trainer.seconds, command=retrain_command(p.name, "baseline"))
    trainer.installed_from = entry["sha256"]  # this checkpoint is the committed baseline: no install over it
    trainer.save()


def _finetune_iterations(ctx: Context, images) -> int:
    return training_iterations(pruning.finetune_profile(ctx.profile), len(images))


def _train_finetuned(name: str, strategy: pruning.Strategy, ratio: float, seed: int) -> Callable[[Context, bool], None]:
    def run(ctx: Context, force: bool) -> None:
        baseline = _baseline(ctx)
        images = _fit_digits(ctx)
        _start_over(
            ctx.checkpoints / f"{name}.pt", force, _finetune_iterations(ctx, images), _other_parent(baseline.identity)
        )
        masked = pruning.apply_pruning(pruning.copy_model(baseline.model), strategy, ratio)
        pruning.finetune(
            ctx,
            masked,
            images,
            baseline.buffer,
            name,
            train=True,
            parent=baseline.identity,
            commit={"kind": "finetuned", "strategy": strategy.key, "ratio": ratio},
            seed=seed,
        )

    return run


def _train_lottery(ctx: Context, force: bool) -> None:
    p = ctx.profile
    baseline = _baseline(ctx)
    images = _fit_digits(ctx)
    early, _ = pruning.early_weights(ctx)
    names = lottery_names(p)
    fresh = all(is_fresh(p.name, name) for name in names if name in read_manifest(p.name))
    retrain = force or not fresh
    for name in names:
        _start_over(
            ctx.checkpoints / f"{name}.pt", retrain, _finetune_iterations(ctx, images), _other_parent(baseline.identity)
        )
    pruning.lottery_ticket(
        ctx,
        baseline,
        early,
        pruning.LOTTERY_STRATEGY,
        max(p.prune_ratios),
        images,
        train=True if retrain else None,
        commit=True,
    )


def student_jobs(profile) -> list[tuple[str, str, str, float, int]]:
    """(file name, student, variant, gradient weight, seed) of every student notebook 05 distils: each
    student with the paper's loss (eq. 6) with ``training_seeds`` seeds, and the extensions once (the
    balanced loss, the real-only ablation, gradient matching)."""
    teacher = build_baseline(profile.baseline)
    students = distillation.students_with_paper_ratio(count_parameters(teacher), distillation.forward_flops(teacher))
    seeds = distillation.training_seeds(profile, distillation.REPRODUCTION)
    runs = [(name, distillation.REPRODUCTION, 0.0, seed) for seed in range(seeds) for name in students]
    extension = distillation.extension_students(students)
    runs += [(name, "mixed", 0.0, 0) for name in extension]
    runs += [(extension[0], "real", 0.0, 0)] if extension else []
    runs += [
        (name, "mixed", distillation.GRAD_WEIGHT, 0) for name in distillation.GRAD_MATCH_STUDENTS if name in students
    ]
    return [
        (distillation.student_file(name, distillation.run_name(v, g), seed), name, v, g, seed)
        for name, v, g, seed in runs
    ]


_TARGETS: dict = {}  # the teacher's distillation targets, computed once per process and baseline


def _distillation_targets(ctx: Context, baseline):
    """The teacher's energies (and input gradients) on the distillation inputs, as notebook 05 makes them."""
    key = (ctx.profile.name, baseline.identity)
    if key not in _TARGETS:
        p = ctx.profile
        (train_x, train_kind), _ = distillation.distillation_inputs(p, baseline.buffer.samples, ctx.device)
        targets = distillation.teacher_targets(baseline.model, train_x, train_kind, p.eval_batch_size)
        _TARGETS.clear()
        _TARGETS[key] = (targets, distillation.num_steps(p, len(targets)))
    return _TARGETS[key]


def _train_student(
    file: str, name: str, variant: str, grad_weight: float, seed: int
) -> Callable[[Context, bool], None]:
    def run(ctx: Context, force: bool) -> None:
        baseline = _baseline(ctx)
        targets, steps = _distillation_targets(ctx, baseline)
        teacher = distillation.teacher_fingerprint(baseline.model)
        _start_over(
            ctx.checkpoints / f"{file}.pt",
            force,
            steps,
            lambda state: state["meta"].get("teacher") != teacher,
            "distilled from another teacher",
        )
        distillation.load_or_distill(
            ctx,
            name,
            variant,
            targets,
            steps,
            baseline.model,
            grad_weight=grad_weight,
            seed=seed,
            train=True,
            commit=True,
            parent=baseline.identity,
        )

    return run


def jobs(profile) -> list[Job]:
    """Every model of ``profile`` in training order: the baseline, then every model a notebook needs
    once (first-seed fine-tunings, lottery rounds, first-seed students), then the extra training
    seeds (fine-tunings, then students), so that a partial job already serves every notebook."""
    tuned = [
        (seed, Job(name, "finetuned", _train_finetuned(name, s, r, seed)))
        for name, s, r, seed in finetune_jobs(profile)
    ]
    students = [
        (seed, Job(file, "student", _train_student(file, *rest, seed))) for file, *rest, seed in student_jobs(profile)
    ]
    first = [job for seed, job in tuned if seed == 0]
    first += [Job(LOTTERY, "lottery", _train_lottery, lottery_names(profile))]
    first += [job for seed, job in students if seed == 0]
    extra = [job for seed, job in tuned if seed > 0] + [job for seed, job in students if seed > 0]
    return [Job("baseline", "baseline", _train_baseline)] + first + extra


def status(profile_name: str | None = None) -> pd.DataFrame:
    """One row per model of the profile: kind, whether committed and fresh, iterations, seconds."""
    ctx = start(profile_name, verbose=False)
    manifest = read_manifest(ctx.profile.name)
    rows = []
    for job in jobs(ctx.profile):
        for name in job.members or (job.name,):
            entry = manifest.get(name, {})
            rows.append(
                {
                    "name": name,
                    "kind": job.kind,
                    "committed": bool(entry),
                    "fresh": is_fresh(ctx.profile.name, name),
                    "iterations": entry.get("iterations"),
                    "seconds": entry.get("seconds"),
                }
            )
    return pd.DataFrame(rows)


def train(profile_name: str | None = None, names: list[str] | None = None, everything: bool = False) -> list[str]:
    """Train and commit the models ``names`` (always), or with ``everything`` each model that is not
    committed fresh; returns the names of the jobs that ran. An unknown name is a ``KeyError``."""
    ctx = start(profile_name)
    pretrained.git_commit()  # the code this process runs, before anything else changes the checkout
    by_name = {job.name: job for job in jobs(ctx.profile)}
    by_name |= {member: job for job in by_name.values() for member in job.members}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise KeyError(
            f"unknown model(s) {', '.join(unknown)} of profile {ctx.profile.name!r}; "
            f"`python -m ebmhelpers train --list` shows them"
        )
    if everything:
        todo = [
            job
            for job in jobs(ctx.profile)
            if not all(is_fresh(ctx.profile.name, n) for n in job.members or (job.name,))
        ]
    else:
        todo = list(dict.fromkeys(by_name[n] for n in names or []))
    done = []
    for i, job in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] training {job.name} ({job.kind})", flush=True)
        job.run(ctx, not everything)
        done.append(job.name)
    total = sum(e["seconds"] for e in read_manifest(ctx.profile.name).values())
    print(
        f"{len(done)} job(s) trained; the manifest lists {len(read_manifest(ctx.profile.name))} models, "
        f"{total / 3600:.1f} h of training in all ({pretrained.folder(ctx.profile.name)})"
    )
    return done
