"""The generation chain behind the verdicts: every model whose IS and FID feed a claim of the paper
(:func:`paper_report.quality_rows`: the baseline, every one-shot pruned model before and after
fine-tuning, every student) scored again under a second generation chain, so that notebook 06 can
judge every claim again with those scores (:func:`paper_report.chain_comparison`).

``python -m ebmhelpers chain-check [--profile P] [--steps N --step-scale S]`` scores them with ``N``
SGLD steps of ``S`` times the training step at the training temperature (default: the profile's
:attr:`Profile.second_chain`) and writes ``results/<profile>/second_chain.csv``
(:data:`paper_report.CHAIN_COLUMNS`). Only the chain differs from the tables' scores: the profile's
:class:`metrics.Evaluator` scores every model (the same seeds, ``n_gen`` digits per seed, ``score_seeds``
seeds, the same classifier and FID statistics). A model trained with several seeds is scored once per
seed and the rows are combined as notebooks 04 and 05 combine them
(:func:`pruning.combine_training_seeds`).

The models are loaded as the notebooks load them, and nothing is trained: the committed weights
(:mod:`ebmhelpers.pretrained`), else a finished run in the profile's checkpoints; a one-shot pruned
model is the baseline pruned again, as notebook 04 prunes it. A model that is neither committed nor
finished is reported in one line, with the command that trains it, and skipped.

Resumable: the table is written after every model, and a model already scored under the same chain,
with the same digits per seed, from the same baseline and the same number of training seeds is not
scored again; rows of that chain scored from another baseline, with other digits per seed or from
another number of training seeds than its table now records are dropped and scored again (they
describe other models or scores).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from torch import nn

from .. import data as data_mod
from .. import distillation, pretrained, pruning, results
from ..checkpoints import load_checkpoint
from ..metrics import Evaluator
from ..paper_report import (
    CHAIN_COLUMNS,
    CHAIN_FILE,
    CHAIN_SCORES,
    ROW_KEYS,
    Results,
    chain_label,
    of_chain,
    quality_rows,
)
from ..progress import tqdm
from ..runtime import Context, start
from ..training import PCDTrainer, load_or_train_baseline, metric_classifier, training_iterations


class Missing(Exception):
    """A model that is neither committed nor finished in the profile's checkpoints; one line."""


class ChainError(ValueError):
    """No chain to score: the profile declares no second chain and none was given; one line."""


def _finished(path: Path, steps: int) -> bool:
    """Whether a run's checkpoint at ``path`` exists and has done ``steps`` iterations."""
    return path.exists() and int(load_checkpoint(path)["step"]) >= steps


def _missing(ctx: Context, name: str) -> Missing:
    p = ctx.profile
    return Missing(
        f"{name}: no committed weights for profile {p.name!r} and no finished run in {ctx.checkpoints}; "
        f"`{pretrained.retrain_command(p.name, name)}` trains it"
    )


def _load_baseline(ctx: Context, images) -> PCDTrainer:
    """The profile's baseline and its metric classifier as the notebooks load them, refusing to train either."""
    p = ctx.profile
    committed = "baseline" in pretrained.read_manifest(p.name)
    if not (committed or _finished(ctx.checkpoints / "baseline.pt", training_iterations(p, len(images)))):
        raise _missing(ctx, "baseline")
    if not ((ctx.checkpoints / "classifier.pt").exists() or (committed and not pretrained.wants_training())):
        raise Missing(
            f"no metric classifier in {ctx.checkpoints} for profile {p.name!r}: "
            f"`{pretrained.retrain_command(p.name, 'baseline')}` trains it with the baseline"
        )
    return load_or_train_baseline(ctx, progress=False, train=False)


def _dense(model: nn.Module) -> nn.Module:
    """A pruned model with its masks made permanent on a copy, as :func:`pruning.score_variant` scores it."""
    return pruning.remove_masks(pruning.copy_model(model)).eval()


def _pruned(ctx: Context, row, baseline: PCDTrainer, images) -> list[nn.Module]:
    """The pruned model of a pruning row, one per training seed: the baseline pruned again and,
    when fine-tuned, each seed's committed or finished fine-tuning (:func:`pruning.finetune`)."""
    strategy, ratio = pruning.get_strategy(row.strategy), float(row.ratio)
    masked = pruning.apply_pruning(pruning.copy_model(baseline.model), strategy, ratio).eval()
    if not bool(row.finetuned):
        return [_dense(masked)]
    manifest, models = pretrained.read_manifest(ctx.profile.name), []
    total = training_iterations(pruning.finetune_profile(ctx.profile), len(images))
    for seed in range(int(row.training_seeds)):
        name = pruning.finetuned_name(strategy, ratio, seed)
        if name not in manifest and not _finished(ctx.checkpoints / f"{name}.pt", total):
            raise _missing(ctx, name)
        trainer, _ = pruning.finetune(
            ctx,
            pruning.copy_model(masked),
            images,
            baseline.buffer,
            name,
            progress=False,
            seed=seed,
            train=False,
            parent=baseline.identity,
        )
        models.append(_dense(trainer.model))
    return models


def _students(ctx: Context, row, baseline: PCDTrainer) -> list[nn.Module]:
    """The student of a distillation row, one per training seed: its committed weights (derived from
    the baseline), else its finished distillation of this teacher in the profile's checkpoints."""
    p, teacher = ctx.profile, distillation.teacher_fingerprint(baseline.model)
    models = []
    for seed in range(int(row.training_seeds)):
        file = distillation.student_file(row.student, row.variant, seed)
        model = distillation.build_student(row.student)
        state = pretrained.load(p.name, file, architecture=row.student, model=model, parent=baseline.identity)
        if state is not None:
            model.load_state_dict(pretrained.decode_masks(state["model"]))
        else:
            path = ctx.checkpoints / f"{file}.pt"
            saved = load_checkpoint(path) if path.exists() else None
            if saved is None or saved["meta"].get("teacher") != teacher or saved["step"] < saved["meta"]["steps"]:
                raise _missing(ctx, file)
            model.load_state_dict(saved["model"])
        models.append(model.to(ctx.device).eval())
    return models


def _models(ctx: Context, row, baseline: PCDTrainer, images) -> list[nn.Module]:
    """The trained models behind one row of :func:`paper_report.quality_rows`, one per training seed."""
    if row.table == "baseline":
        return [baseline.model]
    if row.table == "pruning":
        return _pruned(ctx, row, baseline, images)
    if row.table == "distillation":
        return _students(ctx, row, baseline)
    raise KeyError(f"chain-check has no loader for the models of {row.table}.csv")


def score(ev: Evaluator, models: list[nn.Module], cfg) -> dict:
    """:data:`paper_report.CHAIN_SCORES` of a model trained with ``len(models)`` seeds under the SGLD
    chain ``cfg``: :meth:`Evaluator.quality` of each, combined by :func:`pruning.combine_training_seeds`."""
    rows = [ev.quality(m, cfg, progress=len(models) == 1)[0] | {"training_seed": s} for s, m in enumerate(models)]
    out = pruning.combine_training_seeds(pd.DataFrame(rows))
    return {c: int(out[c]) if c in ("n_seeds", "training_seeds") else out[c] for c in CHAIN_SCORES}


def run(
    profile: str | None = None, steps: int | None = None, step_scale: float | None = None, progress: bool = True
) -> pd.DataFrame:
    """Score every model of :func:`paper_report.quality_rows` of the profile's tables under the chain
    of ``steps`` steps of ``step_scale`` times the training step (default: :attr:`Profile.second_chain`)
    and write them to ``results/<profile>/second_chain.csv`` (module doc); returns that chain's rows."""
    ctx = start(profile, verbose=False)
    p = ctx.profile
    if steps is None or step_scale is None:
        if p.second_chain is None:
            raise ChainError(
                f"profile {p.name!r} declares no second chain (Profile.second_chain): give --steps and --step-scale"
            )
        steps, step_scale = p.second_chain
    try:
        wanted = quality_rows(Results.read(ctx.results))
    except FileNotFoundError as err:
        raise results.MissingResultsError(str(err)) from None
    cfg = p.sgld_config(steps).scaled(step_scale)
    images = data_mod.load_training_split("fit", p.val_size, p.train_subset, p.seed, ctx.device)
    baseline = _load_baseline(ctx, images)
    out = ctx.results / CHAIN_FILE
    table = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=list(CHAIN_COLUMNS))
    chain = of_chain(table, steps, step_scale)
    seeds = dict(zip(zip(wanted.table, wanted.model.astype(str)), wanted.training_seeds))
    current = pd.Series(
        [seeds.get((t, str(m)), s) == s for t, m, s in zip(table.table, table.model, table.training_seeds)],
        index=table.index,
        dtype=bool,
    )
    ours = chain & (table.baseline_weights == baseline.identity) & (table.n_gen == p.n_gen) & current
    if (chain & ~ours).any():
        print(
            f"dropping {int((chain & ~ours).sum())} row(s) of this chain scored from other weights or digits, "
            "or from another number of training seeds"
        )
    done = set(zip(table[ours].table, table[ours].model.astype(str)))
    kept = table[~chain | ours].reindex(columns=list(CHAIN_COLUMNS)).to_dict("records")
    todo = wanted[[(t, m) not in done for t, m in zip(wanted.table, wanted.model)]]
    label, skipped = chain_label(p, steps, step_scale), []
    print(f"second chain: {label}; {len(wanted) - len(todo)} of {len(wanted)} models already scored in {out}")
    ev = Evaluator(ctx, metric_classifier(ctx, progress=False))
    for row in tqdm(list(todo.itertuples(index=False)), desc="models under the second chain", disable=not progress):
        try:
            models = _models(ctx, row, baseline, images)
        except (Missing, pretrained.WeightsError) as err:
            print(f"skipped {row.table} {row.model!r}: {err}")
            skipped.append(row.model)
            continue
        t0 = time.perf_counter()
        scores = score(ev, models, cfg)
        new = {
            "table": row.table,
            "model": row.model,
            **{k: getattr(row, k) for k in ROW_KEYS},
            "chain": label,
            "steps": steps,
            "step_scale": step_scale,
            "n_gen": p.n_gen,
            "baseline_weights": baseline.identity,
            **scores,
            "seconds": time.perf_counter() - t0,
        }
        kept.append(new)
        results.save_table(ctx, CHAIN_FILE.removesuffix(".csv"), pd.DataFrame(kept), columns=CHAIN_COLUMNS)
    if skipped:
        print(f"{len(skipped)} model(s) skipped (not trained); the verdicts need them all")
    table = pd.DataFrame(kept, columns=list(CHAIN_COLUMNS))
    return table[of_chain(table, steps, step_scale)].reset_index(drop=True)
