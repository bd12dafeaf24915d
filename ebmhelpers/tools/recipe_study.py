"""The recipe study behind the ``cpu`` profile's baseline: tutorial 8's CNN trained
under several PCD recipes for the same compute budget, each scored on held-out validation digits.

``python -m ebmhelpers recipe-study`` (resumable: every recipe's run is checkpointed, every
scored recipe is a row of ``results/<profile>/recipe_study.csv``). The budget is counted in SGLD
steps of a training batch (iterations x K), which is what an iteration's time is made of (SGLD is
about 95% of it), so a recipe with half the steps per iteration gets twice the iterations; the
measured wall time is a column too. Scores are on the validation digits (``profile.val_size``
training digits held out), never on the test digits.

Every recipe generates from uniform noise with *its own* sampler: the persistent recipes with one
fixed chain, :data:`STUDY_CHAIN` (one chain for every persistent recipe, so that each is scored
like the others; the chain study compares chains separately), the short-run recipe with exactly its
training chain (K steps), the capped recipe with N x K steps (no chain in training ran longer). Each is
also run 4x and 16x longer, to see whether quality holds or drifts into saturated minima.

Then training length and the generation chain, on the same validation digits: ``--long EPOCHS
--recipe NAME`` trains one recipe for longer with a snapshot per epoch, in its own checkpoint folder
(the profile's baseline is never replaced); ``--training-length`` scores every epoch snapshot of a
run (the profile's, or ``--recipe``'s long run) and ``--chain epochN`` one snapshot under several
generation chains. Rows are labelled with their recipe, so runs of several recipes share one table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from .. import data as data_mod
from ..metrics import feature_stats, nearest_distance, quality_scores, saturation
from ..models import build_baseline
from ..profiles import Profile, SGLDConfig, get_profile
from ..runtime import Context, checkpoint_dir, get_device, seed_everything
from ..sampling import generate
from ..training import DivergenceError, PCDTrainer, load_or_train_baseline, load_or_train_classifier

# name -> (profile changes, generation: "profile" (STUDY_CHAIN) or a multiple of the training chain K
# at the training step size)
RECIPES: dict[str, tuple[dict, str | int]] = {
    "paper: 5% fresh": ({"reinit_frac": 0.05}, "profile"),
    "25% fresh": ({"reinit_frac": 0.25}, "profile"),
    "short-run: 100% fresh": ({"reinit_frac": 1.0}, 1),
    "25% fresh, K=30 of 2x step": (
        {"reinit_frac": 0.25, "sgld_steps": 30, "sgld_step_size": 20.0, "sgld_noise_std": 0.005 * math.sqrt(2)},
        "profile",
    ),
    "5% fresh, reset after 8 updates": ({"reinit_frac": 0.05, "buffer_max_age": 8}, 8),
    "25% fresh, data noise 0.03": ({"reinit_frac": 0.25, "data_noise_std": 0.03}, "profile"),
    "tutorial 8 buffer: grows, 5% fresh": ({"reinit_frac": 0.05, "buffer_grows": True}, "profile"),
}
STUDY_CHAIN = (
    256,
    4.0,
)  # the persistent recipes' generation chain: 256 steps of 4x the training step, same temperature
BUDGET_SGLD_STEPS = 250 * 60  # per recipe: 250 iterations of K=60 (about 8 min on one 2026 EPYC thread)
N_DIGITS = {1: 1_000, 4: 200, 16: 64}  # digits generated per chain-length multiple
N_NEAREST_REF = 10_000  # training digits searched for each sample's nearest neighbour


def recipe_profile(base: Profile, name: str) -> Profile:
    """``base`` with the recipe's changes, stopped by the study's budget."""
    changes, _ = RECIPES[name]
    return base.replace(**changes)


def generation_config(base: Profile, name: str, multiple: int = 1) -> SGLDConfig:
    """The chain a recipe generates with from noise, ``multiple`` times longer."""
    p = recipe_profile(base, name)
    _, gen = RECIPES[name]
    steps, scale = STUDY_CHAIN
    cfg = base.sgld_config(steps).scaled(scale) if gen == "profile" else p.sgld_config(p.sgld_steps * int(gen))
    return dataclasses.replace(cfg, steps=cfg.steps * multiple)


class ValidationScorer:
    """IS, FID (against the validation digits), class entropy, confident fraction, saturation and
    nearest-training-digit distance of generated digits."""

    def __init__(self, ctx: Context, classifier: torch.nn.Module) -> None:
        p = ctx.profile
        self.classifier = classifier.eval()
        self.val = data_mod.load_training_split("val", p.val_size)
        fit = data_mod.load_training_split("fit", p.val_size, N_NEAREST_REF, p.seed + 11)
        self.fit_ref = fit
        self.real_mu, self.real_sigma = feature_stats(self._features(self.val))
        self.val_nearest = float(nearest_distance(self.val[:1000], fit).median())
        self.val_saturation = saturation(self.val)

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classifier.features(b) for b in x.split(1000)])

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        logits = torch.cat([self.classifier(b) for b in samples.split(1000)])
        return {
            **quality_scores(logits, self._features(samples), samples, self.real_mu, self.real_sigma),
            "nearest_train": float(nearest_distance(samples, self.fit_ref).median()),
        }


def train_recipe(
    ctx: Context, name: str, images: torch.Tensor, budget: int = BUDGET_SGLD_STEPS, progress: bool = True
) -> tuple[PCDTrainer, float, str]:
    """Train (or resume) one recipe for ``budget`` SGLD steps; returns the trainer, the wall
    seconds of its training over every call (kept beside its checkpoint) and the outcome ("ok" or
    the divergence message)."""
    p = recipe_profile(ctx.profile, name).replace(ckpt_every=50)
    seed_everything(p.seed)
    path = ctx.checkpoints / "recipe_study" / f"{slug(name)}.pt"
    trainer = PCDTrainer(build_baseline(p.baseline), p, images, ckpt_path=path, device=ctx.device)
    seconds_path = path.with_suffix(".seconds.json")
    spent = json.loads(seconds_path.read_text())["train_seconds"] if trainer.load() and seconds_path.exists() else 0.0
    t0 = time.perf_counter()
    outcome = "ok"
    try:
        trainer.fit(max_steps=budget // p.sgld_steps, progress=progress)
    except DivergenceError as err:
        outcome = f"diverged: {err}"
    spent += time.perf_counter() - t0
    seconds_path.write_text(json.dumps({"train_seconds": spent}))
    return trainer, spent, outcome


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def run_study(profile: str | None = None, names: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Train and score every recipe (skipping the rows already in the CSV); returns the table."""
    ctx = Context(get_profile(profile or "cpu"), get_device())
    p = ctx.profile
    if p.val_size <= 0:
        raise ValueError(f"profile {p.name!r} holds out no validation digits (val_size=0)")
    out_csv = ctx.results / "recipe_study.csv"
    samples_path = ctx.results / "recipe_study_samples.pt"
    table = pd.read_csv(out_csv) if out_csv.exists() else pd.DataFrame()
    samples: dict[str, torch.Tensor] = torch.load(samples_path, weights_only=True) if samples_path.exists() else {}
    classifier, _ = load_or_train_classifier(ctx, progress=progress)
    scorer = ValidationScorer(ctx, classifier)
    images = data_mod.load_training_split("fit", p.val_size, p.train_subset, p.seed, ctx.device)
    for name in names or list(RECIPES):
        if len(table) and name in set(table["recipe"]):
            continue
        trainer, seconds, outcome = train_recipe(ctx, name, images, progress=progress)
        rp = trainer.profile
        rows = []
        buffer = trainer.buffer.filled
        for multiple, n in N_DIGITS.items():
            cfg = generation_config(p, name, multiple)
            seed_everything(p.seed + 1009)
            t0 = time.perf_counter()
            x = generate(
                trainer.model.eval(), n, cfg, batch_size=min(n, 500), device=ctx.device, progress=progress
            ).cpu()
            gen_s = time.perf_counter() - t0
            if multiple == 1:
                samples[name] = x[:64].clone()
                for m in sorted({k for k in N_DIGITS.values() if k < n}):  # the longer chains' n, to compare at equal n
                    rows.append(
                        {
                            "recipe": name,
                            "sampler": "noise, 1x chain",
                            "gen_steps": cfg.steps,
                            "gen_step_size": cfg.step_size,
                            "n": m,
                            **scorer(x[:m]),
                        }
                    )
            rows.append(
                {
                    "recipe": name,
                    "sampler": f"noise, {multiple}x chain",
                    "gen_steps": cfg.steps,
                    "gen_step_size": cfg.step_size,
                    "n": n,
                    **scorer(x),
                    "gen_seconds_per_1000": 1000 * gen_s / n,
                }
            )
        rows.append(
            {"recipe": name, "sampler": "replay buffer", "n": min(1000, len(buffer)), **scorer(buffer[:1000].cpu())}
        )
        for r in rows:
            r.update(
                {
                    "iterations": trainer.step,
                    "K": rp.sgld_steps,
                    "reinit_frac": rp.reinit_frac,
                    "data_noise_std": rp.data_noise_std,
                    "buffer_max_age": rp.buffer_max_age,
                    "buffer_grows": rp.buffer_grows,
                    "rollbacks": len(trainer.rollbacks),
                    "outcome": outcome,
                    "train_seconds": seconds,
                }
            )
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
        table.to_csv(out_csv, index=False)
        torch.save(samples, samples_path)
        print(
            pd.DataFrame(rows)[["recipe", "sampler", "IS", "FID", "confident", "entropy_bits", "saturation"]].to_string(
                index=False
            )
        )
    return table


# ---- training length and generation chain, on validation digits ---------------------------
LENGTH_N = 500  # digits per snapshot in the training-length study
CHAIN_STEPS = (32, 64, 128, 256)  # generation chains compared for the chosen snapshot ...
CHAIN_SCALES = (4.0, 16.0)  # ... at these multiples of the profile's training step (same temperature)
CHAIN_N = 1_000


def recipe_name(profile: Profile) -> str:
    """The study's name for the recipe ``profile`` trains with: the recipe whose changes the profile
    matches, the most specific one when several do (their changes nest), else ``"profile"``."""
    fits = [
        (len(ch), name) for name, (ch, _) in RECIPES.items() if all(getattr(profile, k) == v for k, v in ch.items())
    ]
    return max(fits)[1] if fits else "profile"


CONTINUED = "continued"  # the profile's committed baseline trained on, with weight averages (long_run_context)
CONTINUED_EMA_DECAYS = (0.998, 0.9995)  # averaging horizons of about 1 and 5 epochs of the cpu profile (430 iterations)


def long_run_context(profile: str | None, recipe: str | None = None, epochs: int | None = None) -> Context:
    """Where a long run lives: the profile's own baseline run (``recipe`` None); one recipe of
    :data:`RECIPES` trained for ``epochs`` epochs with a snapshot after each; or :data:`CONTINUED`,
    the profile's committed baseline trained on to ``epochs`` epochs with exponential weight averages
    (:data:`CONTINUED_EMA_DECAYS`) and NHWC weights, a snapshot after each new epoch. Long runs are
    kept in their own checkpoint folder so they never replace the profile's baseline."""
    base = get_profile(profile or "cpu")
    if recipe is None:
        return Context(base, get_device())
    if recipe == CONTINUED:
        p = base
        if epochs is not None:
            p = base.replace(
                epochs=epochs,
                snapshot_epochs=tuple(range(base.epochs + 1, epochs + 1)),
                ema_decays=CONTINUED_EMA_DECAYS,
                channels_last=True,
            )
        return Context(p, get_device(), checkpoint_dir(base) / "recipe_study" / "continued")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; the recipes are: {', '.join(RECIPES)}")
    p = recipe_profile(base, recipe)
    if epochs is not None:
        p = p.replace(epochs=epochs, snapshot_epochs=tuple(range(1, epochs + 1)))
    return Context(p, get_device(), checkpoint_dir(base) / "recipe_study" / f"{slug(recipe)}_long")


def long_run(recipe: str, epochs: int, profile: str | None = None, progress: bool = True) -> PCDTrainer:
    """Train (or resume) one recipe for ``epochs`` epochs of the profile's digits, keeping every
    epoch's snapshot for :func:`training_length_study`; the profile's own baseline is not touched.
    :data:`CONTINUED` starts from the profile's committed weights, every other recipe from scratch."""
    return load_or_train_baseline(
        long_run_context(profile, recipe, epochs), progress=progress, train=recipe != CONTINUED
    )


def _keep_other_rows(out: Path, table: pd.DataFrame, keys: dict[str, str]) -> pd.DataFrame:
    """``table`` written to ``out`` with the rows already there whose ``keys`` differ kept."""
    if out.exists():
        old = pd.read_csv(out)
        same = pd.Series(True, index=old.index)
        for col, value in keys.items():
            same &= old[col] == value
        table = pd.concat([old[~same], table], ignore_index=True)
    table.to_csv(out, index=False)
    return table


def _study_setup(
    profile: str | None, recipe: str | None, progress: bool
) -> tuple[Context, Context, str, ValidationScorer]:
    """The profile's context (classifier, results), the run's (its checkpoints), the run's recipe
    label and the validation scorer, for the training-length and chain studies."""
    ctx = Context(get_profile(profile or "cpu"), get_device())
    classifier, _ = load_or_train_classifier(ctx, progress=progress)
    return ctx, long_run_context(profile, recipe), recipe or recipe_name(ctx.profile), ValidationScorer(ctx, classifier)


def training_length_study(profile: str | None = None, recipe: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Every kept epoch snapshot of the profile's baseline run (or of ``recipe``'s long run, see
    :func:`long_run`), scored on validation digits from noise (the profile's generation chain, the
    same for every recipe) and from its replay buffer: where does quality from noise stop improving,
    and does the buffer keep improving? Writes ``training_length_study.csv``, keeping other recipes' rows."""
    from ..checkpoints import load_checkpoint
    from ..pretrained import decode_uint8

    ctx, runs, label, scorer = _study_setup(profile, recipe, progress)
    p = ctx.profile
    rows = []
    paths = [q for q in runs.checkpoints.glob("baseline_epoch*.pt") if q.stem.removeprefix("baseline_epoch").isdigit()]
    paths.sort(key=lambda q: int(q.stem.removeprefix("baseline_epoch")))
    if not paths:
        raise FileNotFoundError(f"no epoch snapshots in {runs.checkpoints}: train them first")
    for path in paths:
        first = len(rows)
        state = load_checkpoint(path)
        base = {
            "recipe": label,
            "snapshot": path.stem.removeprefix("baseline_"),
            "step": int(state["step"]),
            "K": runs.profile.sgld_steps,
        }  # iterations x K: the training compute, comparable across recipes
        weights = {"trained": state["model"]} | {
            tag: {**state["model"], **avg} for tag, avg in state.get("averages", {}).items()
        }
        for tag, weight in weights.items():
            model = build_baseline(p.baseline)
            model.load_state_dict(weight)
            seed_everything(p.seed + 1009)
            t0 = time.perf_counter()
            cfg = p.gen_sgld_config()
            x = generate(model.eval(), LENGTH_N, cfg, batch_size=LENGTH_N, progress=progress).cpu()
            rows.append(
                {
                    **base,
                    "weights": tag,
                    "samples": "from noise",
                    "gen_steps": cfg.steps,
                    "gen_step_size": cfg.step_size,
                    "n": LENGTH_N,
                    **scorer(x),
                    "gen_seconds_per_1000": 1000 * (time.perf_counter() - t0) / LENGTH_N,
                }
            )
        buffer = decode_uint8(state["buffer_uint8"])[:LENGTH_N]
        rows.append({**base, "samples": "replay buffer", "n": len(buffer), **scorer(buffer)})
        print(
            pd.DataFrame(rows[first:])[
                ["snapshot", "weights", "samples", "IS", "FID", "confident", "entropy_bits"]
            ].to_string(index=False)
        )
    return _keep_other_rows(ctx.results / "training_length_study.csv", pd.DataFrame(rows), {"recipe": label})


def snapshot_weights(runs: Context, snapshot: str) -> dict:
    """The weights of a kept snapshot of a run: ``epochN`` (as trained) or ``epochN@ema0.998`` (one
    of the run's weight averages at that snapshot)."""
    from ..checkpoints import load_checkpoint

    tag, _, weights = snapshot.partition("@")
    state = load_checkpoint(runs.checkpoints / f"baseline_{tag}.pt")
    if not weights:
        return state["model"]
    if weights not in state.get("averages", {}):
        raise ValueError(
            f"snapshot {tag} keeps no weight average {weights!r} (it keeps: {sorted(state.get('averages', {}))})"
        )
    return {**state["model"], **state["averages"][weights]}


def generation_chain_study(
    snapshot: str, profile: str | None = None, recipe: str | None = None, progress: bool = True
) -> pd.DataFrame:
    """One snapshot's digits from noise (of the profile's run, or of ``recipe``'s long run; ``epochN`` or
    ``epochN@ema<decay>``, see :func:`snapshot_weights`) under
    every chain of :data:`CHAIN_STEPS` x :data:`CHAIN_SCALES` (at the training temperature),
    scored on validation digits, with the seconds per 1,000 digits. Writes its rows to
    ``generation_chain_study.csv``, keeping those of other snapshots and recipes."""
    ctx, runs, label, scorer = _study_setup(profile, recipe, progress)
    p = ctx.profile
    model = build_baseline(p.baseline)
    model.load_state_dict(snapshot_weights(runs, snapshot))
    model.eval()
    rows = []
    for scale in CHAIN_SCALES:
        for steps in CHAIN_STEPS:
            cfg = p.sgld_config(steps).scaled(scale)
            seed_everything(p.seed + 1009)
            t0 = time.perf_counter()
            x = generate(model, CHAIN_N, cfg, batch_size=500, progress=False).cpu()
            rows.append(
                {
                    "recipe": label,
                    "snapshot": snapshot,
                    "steps": steps,
                    "step_scale": scale,
                    "step_size": cfg.step_size,
                    "noise_std": cfg.noise_std,
                    "n": CHAIN_N,
                    **scorer(x),
                    "gen_seconds_per_1000": 1000 * (time.perf_counter() - t0) / CHAIN_N,
                }
            )
            print(
                pd.DataFrame(rows[-1:])[["steps", "step_scale", "IS", "FID", "confident", "saturation"]].to_string(
                    index=False
                )
            )
    return _keep_other_rows(
        ctx.results / "generation_chain_study.csv", pd.DataFrame(rows), {"recipe": label, "snapshot": snapshot}
    )


SELECTION_N = 1_000  # validation digits per generation seed in the baseline selection
SELECTION_SEEDS = 3


def baseline_selection(
    candidates: list[str], profile: str | None = None, recipe: str | None = CONTINUED, progress: bool = True
) -> pd.DataFrame:
    """The committed baseline against ``candidates`` (snapshots of ``recipe``'s long run, ``epochN`` or
    ``epochN@ema<decay>``), each generating :data:`SELECTION_SEEDS` x :data:`SELECTION_N` digits from
    noise with the profile's chain, scored on validation digits (mean and std over the seeds).

    The rule, fixed before the scores: a candidate replaces the committed baseline only when its mean
    validation FID is lower by more than the two spreads together (``FID + FID_std`` of the candidate
    below ``FID - FID_std`` of the committed one); among such candidates the lowest mean FID wins.
    Writes ``baseline_selection.csv`` with a ``chosen`` column."""
    from .. import pretrained

    ctx, runs, label, scorer = _study_setup(profile, recipe, progress)
    p = ctx.profile
    committed = pretrained.load(p.name, "baseline", architecture=p.baseline)
    weights = {"committed": committed["model"]} | {c: snapshot_weights(runs, c) for c in candidates}
    rows = []
    for name, state in weights.items():
        model = build_baseline(p.baseline)
        model.load_state_dict(state)
        scores = []
        for k in range(SELECTION_SEEDS):
            seed_everything(p.seed + 1009 + k)
            scores.append(
                scorer(generate(model.eval(), SELECTION_N, p.gen_sgld_config(), batch_size=500, progress=False).cpu())
            )
        table = pd.DataFrame(scores)
        rows.append(
            {
                "candidate": name,
                "recipe": "committed" if name == "committed" else label,
                "n": SELECTION_N,
                "seeds": SELECTION_SEEDS,
                **table.mean().to_dict(),
                **{f"{k}_std": v for k, v in table.std().to_dict().items()},
            }
        )
        print(
            pd.DataFrame(rows[-1:])[["candidate", "IS", "FID", "FID_std", "confident", "nearest_train"]].to_string(
                index=False
            )
        )
    out = pd.DataFrame(rows)
    base = out.iloc[0]
    better = out[(out.FID + out.FID_std < base.FID - base.FID_std) & (out.candidate != "committed")]
    winner = better.loc[better.FID.idxmin(), "candidate"] if len(better) else "committed"
    out["chosen"] = out.candidate == winner
    out.to_csv(ctx.results / "baseline_selection.csv", index=False)
    return out


# The baseline's targets on test digits (3 seeds x n_gen, the profile's chain): IS, FID, confident fraction
TARGETS = {"IS": (">=", 8.0), "FID": ("<=", 170.0), "confident": (">=", 0.8)}


def baseline_targets(profile: str | None = None, progress: bool = True) -> pd.DataFrame:
    """The committed baseline scored as every model is (``metrics.Evaluator``: the profile's seeds,
    digits and chain, FID against the test digits) against :data:`TARGETS`, plus memorisation: the
    median distance of generated digits to their nearest training digit, which must be no lower than
    real test digits' (a copy of a training digit would sit near 0). Writes ``baseline_targets.csv``."""
    from ..metrics import Evaluator

    ctx = Context(get_profile(profile or "cpu"), get_device())
    p = ctx.profile
    classifier, _ = load_or_train_classifier(ctx, progress=progress)
    baseline = load_or_train_baseline(ctx, progress=progress)
    quality, samples = Evaluator(ctx, classifier).quality(baseline.model)
    fit = data_mod.load_training_split("fit", p.val_size, N_NEAREST_REF, p.seed + 11)
    test_x, _ = data_mod.load_dataset("mnist", train=False, subset=len(samples), seed=p.seed)
    measured = {
        **quality,
        "nearest_train": float(nearest_distance(samples.cpu(), fit).median()),
        "nearest_train_real_test": float(nearest_distance(test_x, fit).median()),
    }
    rows = [
        {
            "target": k,
            "rule": f"{op} {v:g}",
            "value": measured[k],
            "std": measured.get(f"{k}_std"),
            "met": measured[k] >= v if op == ">=" else measured[k] <= v,
        }
        for k, (op, v) in TARGETS.items()
    ]
    rows.append(
        {
            "target": "nearest_train",
            "rule": f">= real test digits' {measured['nearest_train_real_test']:.2f}",
            "value": measured["nearest_train"],
            "std": None,
            "met": measured["nearest_train"] >= measured["nearest_train_real_test"],
        }
    )
    table = pd.DataFrame(rows).assign(
        n_seeds=quality["n_seeds"],
        digits_per_seed=p.n_gen,
        chain=f"{p.gen_sgld_config().steps} x {p.gen_sgld_config().step_size:g}",
        baseline_iterations=baseline.step,
        baseline=baseline.identity,
    )
    table.to_csv(ctx.results / "baseline_targets.csv", index=False)
    return table
