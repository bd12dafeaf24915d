"""Command line: ``python -m ebmhelpers {run,train,report,recipe-study,export-pretrained,distill-study,bench,
estimate,prepare-data,chain-check}``.

A mistake of the caller (an unknown profile, a profile sized for a GPU on a CPU, a notebook that does
not exist) is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys


class CommandError(ValueError):
    """Arguments that cannot work together; printed as one line, without a traceback."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m ebmhelpers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the numbered notebooks in order, headless")
    run.add_argument("--profile", help="cpu | smoke | colab | gpu | paper (default: EBM_PROFILE, else cpu)")
    run.add_argument("--inplace", action="store_true", help="overwrite notebooks/ with the executed copies")
    run.add_argument("--out", help="folder for executed copies (default runs/<profile>/)")
    run.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 00 01")

    train = sub.add_parser(
        "train", help="train once: train (or resume) and commit the profile's models with their manifest"
    )
    train.add_argument("--profile", help="profile to train (default: EBM_PROFILE, else the committed one)")
    which = train.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every model not yet committed from the committed baseline")
    which.add_argument("--model", nargs="+", metavar="NAME", help="(re)train these models (names: --list)")
    which.add_argument("--list", action="store_true", help="every model of the profile and whether it is committed")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's)")

    study = sub.add_parser(
        "recipe-study",
        help="train the cpu baseline under several PCD recipes at equal budget, "
        "scored on validation digits (resumable)",
    )
    study.add_argument("--profile", default="cpu", help="profile whose baseline and validation split are used")
    study.add_argument("--recipes", nargs="*", help="subset of recipe names (default: all)")
    study.add_argument(
        "--training-length",
        action="store_true",
        help="instead: score every kept epoch snapshot of the profile's baseline on validation digits",
    )
    study.add_argument(
        "--chain",
        metavar="SNAPSHOT",
        help="instead: compare generation chains for one snapshot (e.g. epoch8) on validation digits",
    )
    study.add_argument(
        "--long",
        type=int,
        metavar="EPOCHS",
        help="instead: train --recipe for EPOCHS epochs with a snapshot after each (resumable, kept "
        "apart from the profile's baseline)",
    )
    study.add_argument(
        "--targets",
        action="store_true",
        help="the committed baseline on test digits against its targets (IS, FID, confident, memorisation)",
    )
    study.add_argument(
        "--select",
        nargs="+",
        metavar="SNAPSHOT",
        help="score these snapshots of --recipe's long run (epochN or epochN@ema<decay>) against the "
        "committed baseline on validation digits, and name the one the selection rule adopts",
    )
    study.add_argument(
        "--recipe",
        help="with --long, --training-length or --chain: that recipe's long run "
        "(default for the last two: the profile's baseline run)",
    )

    export = sub.add_parser(
        "export-pretrained",
        help="commit a trained baseline (or one of its snapshots) as the "
        "profile's baseline in ebmhelpers/pretrained/<profile>/ with its manifest entry",
    )
    export.add_argument("--profile", default="cpu")
    export.add_argument("--checkpoints", help="the run's checkpoint folder (default: the profile's)")
    export.add_argument("--snapshot", help="a kept snapshot to export instead of the final weights, e.g. epoch8")
    export.add_argument("--weights", default="trained", help="'trained', or a weight average of the run, e.g. ema0.998")
    export.add_argument("--trained", required=True, help="the command(s) that trained it")
    export.add_argument("--seconds", type=float, required=True, help="training wall time up to the exported step")
    study.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's)")

    dstudy = sub.add_parser(
        "distill-study",
        help="students trained by several distillation objectives at equal FLOPs, "
        "scored on validation digits (resumable; results/<profile>/distillation_study.csv)",
    )
    dstudy.add_argument("--profile", default="cpu")
    dstudy.add_argument("--objectives", nargs="+", help="subset of objectives (default: all)")
    dstudy.add_argument("--ratios", nargs="+", type=float, help="student sizes as teacher/student parameter ratios")
    dstudy.add_argument("--seeds", type=int, default=None, help="training seeds per cell")
    dstudy.add_argument(
        "--budget-fraction", type=float, default=None, help="FLOPs per cell, as a fraction of the teacher's training"
    )
    dstudy.add_argument("--baseline", help="another teacher architecture, trained in the study's own folder")
    dstudy.add_argument(
        "--winners", action="store_true", help="instead: train and commit the chosen objective's students"
    )
    dstudy.add_argument("--objective", help="with --winners: this objective instead of the chosen one")
    dstudy.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's)")

    bench = sub.add_parser("bench", help="SGLD and training throughput on this device")
    bench.add_argument("--profile", help="profile whose SGLD settings are measured")
    bench.add_argument("--batch", type=int, default=None, help="images per SGLD batch")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--models", nargs="*", help="subset of models to measure")
    bench.add_argument("--out", help="write the table as CSV here")
    bench.add_argument(
        "--interleaved",
        action="store_true",
        help="eager against channels_last and torch.compile on the profile's training chain, timed interleaved",
    )
    bench.add_argument(
        "--speedups",
        action="store_true",
        help="measure the SGLD speed-ups (bf16, channels_last, compile; compile's GPU rung is unmeasured and "
        "off in every profile) and the speed targets",
    )

    report = sub.add_parser(
        "report", help="the README's results section, generated from results/<profile>/ and the manifest"
    )
    report.add_argument("--profile", default="cpu")
    report.add_argument("--write", action="store_true", help="replace the section between the README's markers")
    report.add_argument("--check", action="store_true", help="exit 1 when the README's section differs")

    est = sub.add_parser(
        "estimate", help="FLOPs and hours of the whole series under a profile (estimate until measured)"
    )
    est.add_argument("--profile", help="cpu | smoke | colab | gpu | paper (default: EBM_PROFILE, else cpu)")
    est.add_argument("--tflops", type=float, default=None, help="sustained TFLOP/s (default: an assumed T4 fp32 rate)")
    est.add_argument("--device", default="cuda", help="device type the series would run on (cuda | cpu)")

    prep = sub.add_parser("prepare-data", help="gunzip an offline copy of MNIST/Fashion-MNIST into the data root")
    prep.add_argument("source", help="folder with mnist/ and fashion-mnist/ *.gz files (e.g. ../shared/data)")
    prep.add_argument("--root", help="data root (default: EBM_DATA_ROOT, else ./data)")

    chain = sub.add_parser(
        "chain-check",
        help="score every model behind the paper's verdicts again under a second generation chain "
        "(resumable; results/<profile>/second_chain.csv)",
    )
    chain.add_argument("--profile", help="profile whose models and tables are used (default: EBM_PROFILE, else cpu)")
    chain.add_argument("--steps", type=int, help="SGLD steps of the second chain (default: the profile's second_chain)")
    chain.add_argument("--step-scale", type=float, help="its step size as a multiple of the training step")
    chain.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's)")

    args = parser.parse_args(argv)
    from ..profiles import ProfileError
    from .runner import NoSuchNotebook

    try:
        return _run(args)
    except (ProfileError, NoSuchNotebook, CommandError) as err:
        print(f"{parser.prog} {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """Do what the parsed command line ``args`` asks."""
    if args.command == "run":
        from .runner import run_notebooks

        timings = run_notebooks(args.profile, out_dir=args.out, inplace=args.inplace, only=args.only)
        print("\n".join(f"{name:32s} {sec:8.0f} s" for name, sec in timings))
    elif args.command == "train":
        import torch

        from .train_all import status, train

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.list:
            print(status(args.profile).to_string(index=False))
        else:
            try:
                train(args.profile, args.model, everything=args.all)
            except KeyError as err:
                raise CommandError(err.args[0]) from None
    elif args.command == "recipe-study":
        import torch

        from .recipe_study import run_study

        if args.threads:
            torch.set_num_threads(args.threads)
        from .recipe_study import CONTINUED, RECIPES

        if args.recipe is not None and args.recipe not in RECIPES and args.recipe != CONTINUED:
            raise CommandError(f"unknown recipe {args.recipe!r}; the recipes are: {'; '.join(RECIPES)}")
        if args.long:
            from .recipe_study import long_run

            if not args.recipe:
                raise CommandError("--long needs --recipe NAME (the recipe to train)")
            trainer = long_run(args.recipe, args.long, args.profile)
            rollbacks = len(trainer.rollbacks)
            print(f"{args.recipe}: {trainer.step} iterations, {rollbacks} rollbacks, in {trainer.ckpt_path.parent}")
        elif args.training_length:
            from .recipe_study import training_length_study

            print(training_length_study(args.profile, args.recipe).to_string(index=False))
        elif args.targets:
            from .recipe_study import baseline_targets

            print(baseline_targets(args.profile).to_string(index=False))
        elif args.select:
            from .recipe_study import baseline_selection

            print(baseline_selection(args.select, args.profile, args.recipe or CONTINUED).to_string(index=False))
        elif args.chain:
            from .recipe_study import generation_chain_study

            print(generation_chain_study(args.chain, args.profile, args.recipe).to_string(index=False))
        else:
            if args.recipe:
                raise CommandError(
                    "--recipe goes with --long, --training-length or --chain; "
                    "the study's subset of recipes is --recipes"
                )
            print(run_study(args.profile, args.recipes).to_string(index=False))
    elif args.command == "distill-study":
        import torch

        from . import distill_study as ds

        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            if args.winners:
                for entry in ds.train_winners(args.profile, args.objective, args.baseline):
                    print(f"committed {entry['file']} ({entry['architecture']}, {entry['iterations']} steps)")
            else:
                table = ds.run_study(
                    args.profile,
                    args.objectives,
                    tuple(args.ratios or ds.RATIOS),
                    args.seeds or ds.SEEDS,
                    args.budget_fraction or ds.BUDGET_FRACTION,
                    args.baseline,
                )
                summary = ds.summarize(ds.of_budget(table))
                print(summary.to_string(index=False))
                print(f"chosen objective: {ds.choose_objective(summary)}")
                print(ds.targets(summary).to_string(index=False))
        except KeyError as err:
            raise CommandError(err.args[0]) from None
    elif args.command == "export-pretrained":
        from pathlib import Path

        from ..pretrained import commit_baseline
        from ..profiles import get_profile
        from ..runtime import checkpoint_dir

        p = get_profile(args.profile)
        folder = Path(args.checkpoints) if args.checkpoints else checkpoint_dir(p)
        entry = commit_baseline(
            p,
            folder,
            seconds=args.seconds,
            command=args.trained,
            snapshot=args.snapshot,
            weights=args.weights,
            keep=("rewind", *(f"epoch{e}" for e in p.snapshot_epochs)),
        )
        print(f"committed {entry['file']} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:12]})")
    elif args.command == "bench":
        from .bench import run_bench, run_speedup_bench

        if args.interleaved:
            from .bench import run_interleaved_speedups

            table = run_interleaved_speedups(args.profile, repeats=max(args.repeats, 7))
        elif args.speedups:
            table = run_speedup_bench(args.profile, repeats=args.repeats)
        else:
            table = run_bench(args.profile, batch=args.batch, repeats=args.repeats, models=args.models)
        print(table.to_string(index=False))
        if args.out:
            table.to_csv(args.out, index=False)
    elif args.command == "report":
        from .report import current_section, render, write

        if args.write:
            print("README results section " + ("rewritten" if write(args.profile) else "already up to date"))
        elif args.check:
            if current_section() != render(args.profile):
                print("README results section differs from the tables: python -m ebmhelpers report --write")
                return 1
            print("README results section agrees with the tables")
        else:
            print(render(args.profile))
    elif args.command == "estimate":
        from ..runtime import ASSUMED_T4_FLOPS_PER_S
        from .estimate import estimate

        rate = args.tflops * 1e12 if args.tflops else ASSUMED_T4_FLOPS_PER_S
        table, summary = estimate(args.profile, flops_per_s=rate, device=args.device)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print(summary)
    elif args.command == "chain-check":
        _chain_check(args)
    elif args.command == "prepare-data":
        from ..data import install_offline_copy

        print(f"data root: {install_offline_copy(args.source, args.root)}")
    return 0


def _chain_check(args: argparse.Namespace) -> None:
    """``chain-check``: score the models under the second chain, then print how many verdicts change."""
    import torch

    from .. import paper_report
    from ..pretrained import WeightsError
    from ..results import MissingResultsError
    from ..runtime import start
    from . import chain_check

    if (args.steps is None) != (args.step_scale is None):
        raise CommandError("--steps and --step-scale go together (the default: the profile's second_chain)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = chain_check.run(args.profile, args.steps, args.step_scale)
    except (chain_check.ChainError, chain_check.Missing, MissingResultsError, WeightsError) as err:
        raise CommandError(str(err)) from None
    if rows.empty:
        print("no model was scored under the second chain")
        return
    print(rows[["table", "model", "training_seeds", "IS", "IS_std", "FID", "FID_std"]].to_string(index=False))
    ctx = start(args.profile, verbose=False)
    steps, scale = rows.steps.iloc[0], rows.step_scale.iloc[0]
    try:
        compared = paper_report.chain_comparison(paper_report.Results.read(ctx.results), rows, steps, scale)
    except MissingResultsError as err:
        print(err)
        return
    changed = compared[compared.changed]
    print(f"{len(changed)} of {len(compared)} verdicts change under the second chain")
    for claim, first, second in zip(changed.claim, changed.verdict, changed["second chain verdict"]):
        print(f"  {claim}: {first} -> {second}")


if __name__ == "__main__":
    sys.exit(main())
