"""The whole series on a lent GPU as a chain of device commands (issue 12).

A lent machine runs one command of at most 10 minutes on a fresh copy of the working tree plus
carried folders (at most 64 MiB), returns at most 8 files of at most 16 MiB (64 MiB together)
from ``$OUT``, and keeps nothing between commands. The chain therefore has stages, one command
each (:data:`STAGES`):

1. trains the baseline and the metric classifier, then runs notebooks 02 and 04. They read
   weights that never leave this command: the epoch snapshots (02's training-length study)
   and the lottery ticket's rewind point (04). Each is about 15 MiB even as compressed bf16, and
   the next command's carry has no room for them beside the tree (about 17 MiB), the data
   (13 MiB), the wheels and the state (about 20 MiB).
2. runs notebooks 00, 01, 03, 05 and 06 on what stage 1 returned. They need only the trained
   baseline, its replay buffer and the classifier.

What travels between stages is the *state*, a compact export of the finished baseline: weights
rounded to bf16, buffer as uint8 (:func:`artifacts.export_baseline`), and the classifier as it is.
Stage 1 restores its own checkpoint from that export before its notebooks run, so every notebook
of both stages sees the same bf16-rounded weights and quantised buffer. The *outputs* (the
executed notebooks, ``results/<profile>/`` and ``figures/<profile>/``) come back too. Both are
split archives (:func:`artifacts.pack`), rewritten after every notebook, so a command stopped
at its limit still returns what was finished.

Between commands the lead runs ``receive``: it extracts the outputs into the checkout and puts
the state into ``device_in/`` (git-ignored through ``.git/info/exclude``), which the next
command carries. ``plan`` prints the time per stage from counted FLOPs and the exact arguments
of each ``run`` call. ``rehearse`` runs the chain end to end on the CPU (``--profile smoke``):
every stage in a fresh copy of the tree that holds only what would travel, with local folders
standing in for ``$OUT`` and ``device_in/``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import artifacts
from .artifacts import MiB
from .profiles import Profile, get_profile

# ---- the device machine's limits (/work/.library/device/README.md) --------------------------
COMMAND_S = 600  # one command's run
RETURN_FILES = 8  # files back from $OUT ...
RETURN_FILE_BYTES = 16 * MiB  # ... each at most this
RETURN_TOTAL_BYTES = 64 * MiB  # ... together at most this
RETURN_DEPTH = 3  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
CARRY_BYTES = 64 * MiB  # the working tree and carried paths together

INBOX = "device_in"  # the folder that carries the previous stage's state (listed in .git/info/exclude)
DATA_DIR = ".devdata"  # the datasets for the device, xz-compressed (git-ignored)
WHEEL_DIR = ".whl"  # Python wheels the device image lacks (git-ignored)
STATE, OUTPUTS = "state", "outputs"  # the two artifacts of a stage, each in its folder under $OUT
LOG_FILES = 1  # $OUT/stage<N>.log, written by `tee` in the device command
DEFAULT_PROFILE = "gpu"

# ASSUMPTIONS for planning, not measurements: they are replaced by the device's numbers once timed.
# 60 TFLOP/s sustained is 6% of the H100's 989 TFLOP/s dense bf16 peak and a third of issue 12's
# target (180 TFLOP/s): ResNet18 on 28x28 digits under bf16 autocast, eager, before any speed work.
ASSUMED_H100_FLOPS_PER_S = 60e12
NOTEBOOK_OVERHEAD_S = 30.0  # kernel start, imports, CUDA context, data, plots, checkpoint writes
STAGE_OVERHEAD_S = 45.0  # wheel install, data and state unpacking, packing the returns
DEFAULT_DEADLINE_S = 570.0  # a stage starts no notebook predicted to end after this (0: no check)

# Wheels the device image lacks (its package list: /work/.library/device/KINDS.md), pinned to the
# versions that execute these notebooks in this project's environment, except IPython: 8.18.1, released
# after Python 3.12 (the device's), in place of the older 8.12.3 used here (which also needs backcall
# and pickleshare). Left out on purpose, checked by running nbclient here with them
# blocked: debugpy (ipykernel runs without it), jedi and parso (IPython's completer only),
# widgetsnbextension and jupyterlab_widgets (browser assets). torch, numpy, pandas, matplotlib,
# seaborn, scipy, scikit-learn, tqdm, pygments, attrs, packaging, psutil, python-dateutil and
# typing-extensions are in the image. `device-chain preflight` checks the result on the device.
DEVICE_WHEELS = (
    "nbclient==0.11.0", "nbformat==5.11.1", "fastjsonschema==2.22.3", "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==0.30.0", "jupyter_client==8.10.0",
    "jupyter_core==5.9.1", "platformdirs==4.14.8", "traitlets==5.15.0", "pyzmq==27.3.0", "tornado==6.6.1",
    "ipykernel==7.4.0", "comm==0.2.3", "nest-asyncio2==1.7.4", "ipython==8.18.1", "decorator==5.2.1",
    "matplotlib-inline==0.2.2", "pexpect==4.8.0", "ptyprocess==0.7.0",
    "prompt_toolkit==3.0.52", "wcwidth==0.7.0", "stack_data==0.6.3", "executing==2.2.1", "asttokens==3.0.1",
    "pure_eval==0.2.3", "ipywidgets==8.1.9", "torch-pruning==1.6.1",
)  # fmt: skip
# pip matches platform tags exactly; the device's glibc (Python 3.12.3's Ubuntu) runs any of these
PIP_PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
                 "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip

# The datasets a device command needs: all of MNIST, and Fashion-MNIST's test split (the OOD set).
# Fashion-MNIST's training split (26 MB compressed) is not shipped: nothing reads it, and torchvision
# only checks that its files exist, so the device gets IDX files of zero images in their place.
DEVICE_DATA = {
    "MNIST": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "FashionMNIST": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EMPTY_IDX = {"FashionMNIST": {"train-images-idx3-ubyte": b"\x00\x00\x08\x03" + struct.pack(">III", 0, 28, 28),
                              "train-labels-idx1-ubyte": b"\x00\x00\x08\x01" + struct.pack(">I", 0)}}  # fmt: skip
SOURCE_SUBDIRS = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist"}  # install_offline_copy's layout (*.gz)
ENV_FOLDERS = ("EBM_CHECKPOINT_DIR", "EBM_RESULTS_DIR", "EBM_FIGURES_DIR")  # a stage keeps everything in its tree


@dataclass(frozen=True)
class Stage:
    """One device command: optionally train the baseline first, then run ``notebooks``."""

    number: int
    notebooks: tuple[str, ...]
    trains: bool
    why: str


STAGES: tuple[Stage, ...] = (
    Stage(1, ("02", "04"), True, "trains; 02 and 04 read the epoch snapshots and the lottery rewind point, "
                                 "which do not fit the next command's carry"),
    Stage(2, ("00", "01", "03", "05", "06"), False, "need only the trained baseline, its buffer and the classifier"),
)  # fmt: skip


def get_stage(number: int, stages: Sequence[Stage] = STAGES) -> Stage:
    for stage in stages:
        if stage.number == number:
            return stage
    raise ValueError(f"no stage {number}; the chain has stages {[s.number for s in stages]}")


def _is_last(stage: Stage, stages: Sequence[Stage]) -> bool:
    return stage.number == max(s.number for s in stages)


# ---- planning ---------------------------------------------------------------------------
def study_flops(p: Profile) -> float:
    """Notebook 02's training-length x SGLD-steps study (``metrics.steps_study``), which
    ``estimate.series_flops`` does not count: every kept snapshot and the final model, each step
    size factor, each chain length, ``study_n`` digits x the seeds."""
    from .estimate import network_flops

    base, clf = network_flops("baseline", p.baseline), network_flops("classifier", "")
    models = len([e for e in p.snapshot_epochs if e < p.epochs]) + 1
    scales = len({1.0, p.gen_step_scale})
    gen = p.score_seeds * p.study_n
    return models * scales * sum(gen * k * base.sgld + 2 * gen * clf.forward for k in p.study_steps)


TRAIN = "train"  # the key of the baseline's and the classifier's training in notebook_flops


def notebook_flops(p: Profile) -> dict[str, float]:
    """Counted FLOPs per notebook, from ``estimate.series_flops`` plus notebook 02's study (the
    FID set-up is spread over 02-06). The training that ``estimate`` books to notebook 01 is
    under :data:`TRAIN`: stage 1 trains before any notebook, and notebook 01 then loads (0 here,
    like notebook 00's 2-D toy)."""
    from .estimate import series_flops

    by_nb = series_flops(p).groupby("notebook").flops.sum().to_dict()
    shared = by_nb.pop("02-06", 0.0)
    for nb in ("02", "03", "04", "05", "06"):
        by_nb[nb] = by_nb.get(nb, 0.0) + shared / 5
    by_nb["02"] += study_flops(p)
    by_nb[TRAIN] = by_nb.pop("01", 0.0)
    by_nb["00"] = by_nb["01"] = 0.0
    return by_nb


def predicted_seconds(flops: float, flops_per_s: float) -> float:
    """Seconds of one notebook: its counted FLOPs at ``flops_per_s`` plus the fixed overhead."""
    return flops / flops_per_s + NOTEBOOK_OVERHEAD_S


def plan(profile: Profile | str = DEFAULT_PROFILE, flops_per_s: float = ASSUMED_H100_FLOPS_PER_S,
         stages: Sequence[Stage] = STAGES) -> list[dict]:  # fmt: skip
    """Minutes per stage: counted FLOPs at ``flops_per_s`` plus the assumed overheads."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    flops = notebook_flops(p)
    rows = []
    for s in stages:
        train = flops.get(TRAIN, 0.0) if s.trains else 0.0
        nb_flops = sum(flops.get(nb, 0.0) for nb in s.notebooks)
        seconds = (train + nb_flops) / flops_per_s + len(s.notebooks) * NOTEBOOK_OVERHEAD_S + STAGE_OVERHEAD_S
        rows.append({"stage": s.number, "work": ("train + " if s.trains else "") + " ".join(s.notebooks),
                     "flops": train + nb_flops, "minutes": seconds / 60})  # fmt: skip
    return rows


def run_args(stage: Stage, profile: str = DEFAULT_PROFILE, stages: Sequence[Stage] = STAGES) -> dict:
    """The arguments of the device tool's ``run`` call for ``stage``."""
    carry = [WHEEL_DIR, DATA_DIR] + ([INBOX] if not stage.trains else [])
    command = (
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
        f"{WHEEL_DIR}/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; "
        f"PYTHONUNBUFFERED=1 python3 -m ebmhelpers device-chain stage {stage.number} --profile {profile} --out $OUT "
        f"2>&1 | tee $OUT/stage{stage.number}.log"
    )
    return {"command": command, "carry": carry, "timeout_s": COMMAND_S}


SPEEDUP_TESTS = "tests/test_speedups.py"  # its CUDA-graph tests run only where CUDA is
BENCH_CSV = "bench_speedups.csv"


def preflight_args(profile: str = DEFAULT_PROFILE) -> dict:
    """``run`` arguments of the first device call: check the image (wheels, data, a kernel, CUDA),
    run the speed-up tests on the GPU, then ``bench --speedups`` (its table to ``$OUT``). Its
    numbers decide which speed-ups the profile turns on before stage 1."""
    command = (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
               f"{WHEEL_DIR}/*.whl && export PYTHONPATH=/tmp/site EBM_PLAIN_PROGRESS=1 PYTHONUNBUFFERED=1 || exit; "
               f"python3 -m ebmhelpers device-chain preflight; "
               f"python3 -m pytest {SPEEDUP_TESTS} -q -o addopts='' -p no:cacheprovider 2>&1 | tail -n 25; "
               f"python3 -m ebmhelpers bench --speedups --profile {profile} --out $OUT/{BENCH_CSV} 2>&1 | tee $OUT/bench.log")  # fmt: skip
    return {"command": command, "carry": [WHEEL_DIR, DATA_DIR], "timeout_s": COMMAND_S}


def pip_download_command(dest: str = WHEEL_DIR) -> list[str]:
    """The ``pip download`` of :data:`DEVICE_WHEELS` for the device's Python 3.12 on x86-64."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp"]  # fmt: skip
    for plat in PIP_PLATFORMS:
        cmd += ["--platform", plat]
    return cmd + ["-d", dest, *DEVICE_WHEELS]


# ---- sizes --------------------------------------------------------------------------------
def dir_bytes(path: Path) -> int:
    """Bytes of the plain files under ``path`` (0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) if path.is_dir() else 0


def tree_bytes(root: Path) -> int | None:
    """Bytes of what travels without being carried: tracked and untracked-not-ignored files
    (``git ls-files -co --exclude-standard``); None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
                             capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    files = [root / name for name in out.decode().split("\0") if name]
    return sum(f.stat().st_size for f in files if f.is_file())


def carry_report(root: Path, carried: Sequence[str]) -> str:
    """The size of a command's carry (tree and carried paths) against the 64 MiB limit."""
    tree = tree_bytes(root)
    parts = {name: dir_bytes(root / name) for name in carried}
    total = (tree or 0) + sum(parts.values())
    items = ", ".join(f"{k} {v / MiB:.1f}" for k, v in parts.items())
    verdict = "fits" if total <= CARRY_BYTES else "OVER THE LIMIT"
    return (f"carry: tree {'?' if tree is None else f'{tree / MiB:.1f}'} MiB, {items} MiB: "
            f"{total / MiB:.1f} of {CARRY_BYTES / MiB:.0f} MiB ({verdict})")  # fmt: skip


def check_return(out: Path) -> list[str]:
    """What would not come back from ``out`` as ``$OUT`` (empty when everything fits)."""
    files = sorted(f for f in out.rglob("*") if f.is_file())
    problems = []
    if len(files) > RETURN_FILES:
        problems.append(f"{len(files)} files, more than {RETURN_FILES}")
    total = sum(f.stat().st_size for f in files)
    if total > RETURN_TOTAL_BYTES:
        problems.append(f"{total / MiB:.1f} MiB together, more than {RETURN_TOTAL_BYTES / MiB:.0f}")
    for f in files:
        rel = f.relative_to(out)
        if f.stat().st_size > RETURN_FILE_BYTES:
            problems.append(f"{rel} is {f.stat().st_size / MiB:.1f} MiB, more than {RETURN_FILE_BYTES / MiB:.0f}")
        if len(rel.parts) > RETURN_DEPTH:
            problems.append(f"{rel} is more than {RETURN_DEPTH - 1} folders down")
        if not all(artifacts.SAFE_NAME.match(part) for part in rel.parts):
            problems.append(f"{rel} has characters other than letters, digits, '.', '_' and '-'")
    return problems


# ---- preparing the carry (on the lead's machine) ----------------------------------------------
def ensure_excluded(root: Path, name: str = INBOX) -> bool:
    """List ``/<name>/`` in ``.git/info/exclude`` of the checkout ``root`` (a local file, never
    committed); returns whether it had to be added. Does nothing outside a git checkout."""
    git_dir = root / ".git"
    if not git_dir.is_dir():
        return False
    exclude = git_dir / "info" / "exclude"
    line = f"/{name}/"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if line in lines:
        return False
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude, "a") as f:
        f.write(("" if not lines or exclude.read_text().endswith("\n") else "\n") + line + "\n")
    return True


def prepare_data(dest: Path, source: Path | None = None) -> Path:
    """Write :data:`DEVICE_DATA` to ``dest`` as xz files (``<dataset>/raw/<file>.xz``), from
    the data root's uncompressed IDX files or, with ``source``, a folder of ``mnist/`` and
    ``fashion-mnist/`` ``*.gz`` files (``../shared/data``). Existing files are kept."""
    import gzip

    from .runtime import data_root

    for dataset, names in DEVICE_DATA.items():
        (dest / dataset / "raw").mkdir(parents=True, exist_ok=True)
        for name in names:
            target = dest / dataset / "raw" / f"{name}.xz"
            if target.exists():
                continue
            if source is not None:
                with gzip.open(Path(source) / SOURCE_SUBDIRS[dataset] / f"{name}.gz", "rb") as f:
                    raw = f.read()
            else:
                raw = (data_root() / dataset / "raw" / name).read_bytes()
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(lzma.compress(raw, preset=6))
            os.replace(tmp, target)
    return dest


def install_data(root: Path) -> Path | None:
    """On the device: decompress ``<root>/.devdata`` into ``<root>/data`` (with zero-image
    files for Fashion-MNIST's unshipped training split) and point ``EBM_DATA_ROOT`` there.
    Without ``.devdata`` nothing changes (a local run uses its own data root); returns the root used."""
    src = root / DATA_DIR
    if not src.is_dir():
        return None
    dest = root / "data"
    for xz in sorted(src.glob("*/raw/*.xz")):
        target = dest / xz.relative_to(src).with_suffix("")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(lzma.decompress(xz.read_bytes()))
    for dataset, files in EMPTY_IDX.items():
        for name, header in files.items():
            target = dest / dataset / "raw" / name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(header)
    os.environ["EBM_DATA_ROOT"] = str(dest)
    return dest


# ---- one stage (on the device) ----------------------------------------------------------------
@dataclass
class StageReport:
    """What one stage did: seconds per step, the notebooks run, skipped and failed."""

    stage: int
    profile: str
    rows: list[dict] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 3 if self.skipped else 0


def stage_env(root: Path, profile: Profile) -> dict[str, str]:
    """The environment of a stage and the kernels it starts: everything in the tree ``root``."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_FOLDERS}
    env.update(EBM_HOME=str(root), EBM_PROFILE=profile.name, EBM_PLAIN_PROGRESS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))  # fmt: skip
    return env


def notebook_path(root: Path, nb: str) -> Path:
    found = sorted((root / "notebooks").glob(f"{nb}_*.ipynb"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one notebook {nb}_*.ipynb in {root / 'notebooks'}, found {found}")
    return found[0]


def _run_notebook(root: Path, profile: Profile, nb: str) -> int:
    """Execute notebook ``nb`` in place as the main job does (``python -m ebmhelpers run``)."""
    cmd = [sys.executable, "-m", "ebmhelpers", "run", "--profile", profile.name, "--only", nb, "--inplace"]
    return subprocess.run(cmd, cwd=root, env=stage_env(root, profile)).returncode


def _train(root: Path, profile: Profile) -> dict[str, float]:
    """Train (or load) the baseline and the classifier in this process with the package's own
    ``load_or_train_*``, export the compact state and restore the checkpoint from it; returns
    seconds per step."""
    import torch

    from . import runtime, training

    ctx = runtime.start(profile.name)
    if ctx.checkpoints != (root / "checkpoints" / profile.name).resolve():
        raise RuntimeError(f"checkpoints would go to {ctx.checkpoints}, not into the stage's tree {root}")
    seconds = {}
    t0 = time.monotonic()
    trainer = training.load_or_train_baseline(ctx)
    seconds["train baseline"] = time.monotonic() - t0
    t0 = time.monotonic()
    _, acc = training.load_or_train_classifier(ctx)
    seconds["train classifier"] = time.monotonic() - t0
    print(f"baseline: {trainer.step} iterations in {seconds['train baseline']:.0f} s; classifier accuracy {acc:.4f}")
    t0 = time.monotonic()
    artifacts.export_baseline(trainer.state_dict(), ctx.checkpoints / "baseline_compact.pt")
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    artifacts.restore_baseline(ctx.checkpoints / "baseline_compact.pt", ctx.checkpoints / "baseline.pt")
    seconds["export and restore"] = time.monotonic() - t0
    return seconds


def state_paths(profile: Profile) -> list[str]:
    """What the state artifact holds, relative to the tree."""
    return [f"checkpoints/{profile.name}/baseline_compact.pt", f"checkpoints/{profile.name}/classifier.pt"]


def run_stage(
    number: int,
    profile: Profile | str = DEFAULT_PROFILE,
    out: str | os.PathLike | None = None,
    inbox: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    flops_per_s: float = ASSUMED_H100_FLOPS_PER_S,
    stages: Sequence[Stage] = STAGES,
    train: Callable[[Path, Profile], dict[str, float]] = _train,
    run_notebook: Callable[[Path, Profile, str], int] = _run_notebook,
    allow_existing: bool = False,
    flops: dict[str, float] | None = None,
) -> StageReport:
    """Run stage ``number`` in the tree ``root`` (default: the package's checkout): install the
    carried data, train (stage 1) or restore the state from ``inbox`` (default ``<root>/device_in``),
    pack the state into ``<out>/state`` for the next stage, then run the stage's notebooks in
    place, packing ``<out>/outputs`` after each one. ``out`` defaults to ``$OUT``.

    A notebook predicted (counted FLOPs at the rate measured so far, else ``flops_per_s``, plus
    :data:`NOTEBOOK_OVERHEAD_S`) to end after ``deadline_s`` seconds of the stage is skipped with
    the rest (0: never). A failed notebook stops the stage; it is packed for inspection.
    ``train`` and ``run_notebook`` are the real steps unless a test passes stand-ins; ``flops``
    (counted FLOPs per notebook, default :func:`notebook_flops`) drives the predictions.
    """
    from .runtime import repo_root

    start = time.monotonic()
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    stage = get_stage(number, stages)
    root = Path(root).resolve() if root is not None else repo_root()
    if out is None:
        if "OUT" not in os.environ:
            raise ValueError("no --out folder and no $OUT (set on the device machine)")
        out = os.environ["OUT"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inbox = Path(inbox) if inbox is not None else root / INBOX
    ckpt = root / "checkpoints" / p.name
    if not allow_existing and stage.trains and (ckpt / "baseline.pt").exists():
        raise FileExistsError(f"{ckpt / 'baseline.pt'} exists: stage 1 would load it instead of training. Run the "
                              f"chain in a fresh tree (the device, or `device-chain rehearse`), or pass --allow-existing")  # fmt: skip
    report = StageReport(stage.number, p.name)
    flops = notebook_flops(p) if flops is None else flops
    done_flops, busy_s = 0.0, 0.0  # counted work finished and the seconds it took (overheads removed)

    def note(step: str, seconds: float) -> None:
        report.rows.append({"stage": stage.number, "step": step, "seconds": round(seconds, 1)})
        print(f"[stage {stage.number}] {step}: {seconds:.0f} s (stage at {time.monotonic() - start:.0f} s)", flush=True)

    t0 = time.monotonic()
    install_data(root)
    if stage.trains:
        steps = train(root, p)
        for step, seconds in steps.items():
            note(step, seconds)
        done_flops, busy_s = flops.get(TRAIN, 0.0), steps.get("train baseline", 0.0)
    else:
        if not artifacts.manifest_path(inbox, STATE).exists():
            raise FileNotFoundError(f"stage {stage.number} needs the state that stage {stage.number - 1} returned in "
                                    f"{inbox} (`device-chain receive`, then carry {INBOX})")  # fmt: skip
        artifacts.unpack(inbox, root, STATE, only=[f"checkpoints/{p.name}/"])
        artifacts.restore_baseline(ckpt / "baseline_compact.pt", ckpt / "baseline.pt")
        note("restore state", time.monotonic() - t0)
    state_files = 0
    if not _is_last(stage, stages):
        t0 = time.monotonic()
        manifest = artifacts.pack(state_paths(p), out / STATE, name=STATE, root=root,
                                  max_files=RETURN_FILES - LOG_FILES - 2,  # leave the outputs two files at least
                                  meta={"profile": p.name, "stage": stage.number})
        state_files = len(json.loads(manifest.read_text())["pieces"]) + 1
        note("pack state", time.monotonic() - t0)
    outputs_files = RETURN_FILES - LOG_FILES - state_files

    def pack_outputs() -> None:
        _write_times(root, p, report)
        paths = [notebook_path(root, nb).relative_to(root) for nb in report.ran + ([report.failed] if report.failed else [])]
        paths += [Path(d) / p.name for d in ("results", "figures") if (root / d / p.name).is_dir()]
        if paths:
            artifacts.pack(paths, out / OUTPUTS, name=OUTPUTS, root=root, max_files=outputs_files,
                           meta={"profile": p.name, "stage": stage.number, "notebooks": report.ran})  # fmt: skip

    for i, nb in enumerate(stage.notebooks):
        rate = done_flops / busy_s if busy_s > 0 and done_flops > 0 else flops_per_s
        expected = predicted_seconds(flops.get(nb, 0.0), rate)
        elapsed = time.monotonic() - start
        if deadline_s and elapsed + expected > deadline_s:
            report.skipped = list(stage.notebooks[i:])
            print(f"[stage {stage.number}] SKIPPING {' '.join(report.skipped)}: notebook {nb} is predicted to take "
                  f"{expected:.0f} s at {rate / 1e12:.0f} TFLOP/s and the stage is at {elapsed:.0f} of {deadline_s:.0f} s",
                  flush=True)  # fmt: skip
            break
        t0 = time.monotonic()
        code = run_notebook(root, p, nb)
        seconds = time.monotonic() - t0
        note(f"notebook {nb}" + ("" if code == 0 else f" FAILED (exit {code})"), seconds)
        if code != 0:
            report.failed = nb
            pack_outputs()
            break
        report.ran.append(nb)
        done_flops += flops.get(nb, 0.0)
        busy_s += max(seconds - NOTEBOOK_OVERHEAD_S, 1.0)
        t0 = time.monotonic()
        pack_outputs()
        note("pack outputs", time.monotonic() - t0)
    if not report.ran and not report.failed:  # nothing ran: still return the stage's times
        pack_outputs()
    problems = check_return(out)
    for f in sorted(f for f in out.rglob("*") if f.is_file()):
        print(f"  returns {f.relative_to(out)}: {f.stat().st_size / MiB:.2f} MiB")
    if problems:
        print(f"[stage {stage.number}] WARNING, not everything comes back: {'; '.join(problems)}")
    print(f"[stage {stage.number}] done in {time.monotonic() - start:.0f} s: ran {report.ran or 'none'}, "
          f"skipped {report.skipped or 'none'}, failed {report.failed or 'none'}", flush=True)  # fmt: skip
    return report


def _write_times(root: Path, p: Profile, report: StageReport) -> None:
    """Record the stage's steps in ``results/<profile>/device_chain.csv`` (one row per step;
    a stage run again replaces its rows), beside the per-notebook ``notebook_times.csv``."""
    from .runtime import device_name, get_device

    path = root / "results" / p.name / "device_chain.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if str(r["stage"]) != str(report.stage)]
    hardware = device_name(get_device())
    rows += [{**r, "hardware": hardware, "finished": time.strftime("%Y-%m-%d %H:%M")} for r in report.rows]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stage", "step", "seconds", "hardware", "finished"])
        writer.writeheader()
        writer.writerows(rows)


TIMED_PROFILE = "colab"  # whose notebooks `time` runs on the device, for the T4 estimate
TIMES_CSV = "notebook_times.csv"


def time_notebooks(profile: Profile, out: Path, root: Path, deadline_s: float = DEFAULT_DEADLINE_S,
                   notebooks: Sequence[str] = ("00", "01", "02", "03", "04", "05", "06")) -> list[str]:  # fmt: skip
    """Execute ``profile``'s notebooks in order, as a reader would (notebook 01 trains), copying
    ``results/<profile>/notebook_times.csv`` to ``out`` after each, until ``deadline_s`` has passed:
    the per-notebook times of a profile on this machine (the command's 10-minute limit may cut the
    last one; the rows before it still come back). Returns the notebooks that finished."""
    install_data(root)
    out.mkdir(parents=True, exist_ok=True)
    t0, done = time.monotonic(), []
    for nb in notebooks:
        if deadline_s and time.monotonic() - t0 > deadline_s:
            print(f"[time] {deadline_s:.0f} s passed: notebooks from {nb} on not timed")
            break
        if _run_notebook(root, profile, nb) != 0:
            print(f"[time] notebook {nb} failed; stopping")
            break
        done.append(nb)
        shutil.copy(root / "results" / profile.name / TIMES_CSV, out / f"{profile.name}_{TIMES_CSV}")
    return done


def time_args(profile: str = TIMED_PROFILE) -> dict:
    """``run`` arguments of :func:`time_notebooks` on the device (after the gpu chain, if minutes remain)."""
    command = (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
               f"{WHEEL_DIR}/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; PYTHONUNBUFFERED=1 "
               f"python3 -m ebmhelpers device-chain time --profile {profile} --out $OUT 2>&1 | tail -n 200 > $OUT/time.log")  # fmt: skip
    return {"command": command, "carry": [WHEEL_DIR, DATA_DIR], "timeout_s": COMMAND_S}


# ---- between commands (on the lead's machine) ----------------------------------------------
def _artifact_dir(src: Path, name: str) -> Path | None:
    for folder in (src / name, src):
        if artifacts.manifest_path(folder, name).exists():
            return folder
    return None


def receive(src: str | os.PathLike, into: str | os.PathLike | None = None) -> dict:
    """Take what a stage returned (``src``: the folder its ``$OUT`` files came back to): verify
    and extract the outputs into the checkout ``into`` (only its notebooks and the profile's
    results and figures), and verify the state and put it, unopened, into ``<into>/device_in``
    (replacing what was there) for the next command to carry. Nothing is extracted or replaced
    from a damaged or incomplete set."""
    from .runtime import repo_root

    src, into = Path(src), Path(into) if into is not None else repo_root()
    out_dir, state_dir = _artifact_dir(src, OUTPUTS), _artifact_dir(src, STATE)
    if out_dir is None and state_dir is None:
        raise FileNotFoundError(f"no {OUTPUTS} or {STATE} artifact in {src}")
    summary: dict = {"outputs": [], "state": None}
    state_manifest = artifacts.verify(state_dir, STATE) if state_dir is not None else None
    if out_dir is not None:
        _, manifest = artifacts.read_manifest(out_dir, OUTPUTS)
        name = manifest["meta"].get("profile")
        if not name or not artifacts.SAFE_NAME.match(name):
            raise artifacts.ArtifactError(f"the outputs' manifest names no usable profile ({name!r})")
        only = ["notebooks/", f"results/{name}/", f"figures/{name}/"]
        summary["outputs"] = artifacts.unpack(out_dir, into, OUTPUTS, only=only)
        summary["stage"] = manifest["meta"].get("stage")
    if state_manifest is not None:
        inbox = into / INBOX
        shutil.rmtree(inbox, ignore_errors=True)
        summary["state"] = artifacts.copy_artifact(state_dir, inbox, STATE)
        summary["stage"] = state_manifest["meta"].get("stage")
        ensure_excluded(into, INBOX)
    return summary


# ---- the whole chain on the CPU -------------------------------------------------------------
TREE_IGNORED = {"checkpoints", "runs", "data", INBOX, DATA_DIR, WHEEL_DIR, "__pycache__", ".pytest_cache",
                ".ipynb_checkpoints", ".git"}  # fmt: skip


def copy_tree(src: Path, dest: Path, carried: Sequence[str] = ()) -> None:
    """A device's view of ``src``: its files without the git-ignored folders, plus ``carried``."""
    shutil.copytree(src, dest, ignore=lambda _d, names: [n for n in names if n in TREE_IGNORED or n.endswith(".egg-info")])
    for name in carried:
        if (src / name).exists():
            shutil.copytree(src / name, dest / name)


def checkout_copy(src: Path, dest: Path) -> None:
    """The files of the checkout ``src`` that git lists (tracked, and untracked but not ignored)."""
    out = subprocess.run(["git", "-C", str(src), "ls-files", "-co", "--exclude-standard", "-z"],
                         capture_output=True, check=True).stdout  # fmt: skip
    for name in filter(None, out.decode().split("\0")):
        if (src / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dest / name)


def rehearse(workdir: str | os.PathLike, profile: str = "smoke", stages: Sequence[int] | None = None,
             data_source: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """Run the chain end to end on this machine: ``<workdir>/lead`` is a copy of the checkout
    (the lead's side), each stage runs in a fresh ``<workdir>/device<N>`` holding only what would
    travel (tree, ``.devdata``, ``device_in``), with ``<workdir>/out<N>`` as ``$OUT``, and its
    returns are received into the lead copy. ``stages`` (default all) resumes at a stage, reusing
    the lead copy. Returns the lead copy, which ends with every notebook executed."""
    from .runtime import repo_root

    src, workdir = repo_root(), Path(workdir).resolve()
    lead = workdir / "lead"
    numbers = list(stages or [s.number for s in STAGES])
    if numbers[0] == STAGES[0].number:
        shutil.rmtree(lead, ignore_errors=True)
        lead.mkdir(parents=True)
        checkout_copy(src, lead)
        if (src / DATA_DIR).is_dir():
            shutil.copytree(src / DATA_DIR, lead / DATA_DIR)
        else:
            prepare_data(lead / DATA_DIR, Path(data_source) if data_source else None)
    elif not lead.is_dir():
        raise FileNotFoundError(f"no {lead} to resume from: rehearse from stage {STAGES[0].number} first")
    wheels = dir_bytes(src / WHEEL_DIR)
    received: set[str] = set()
    for number in numbers:
        stage = get_stage(number)
        device, out = workdir / f"device{number}", workdir / f"out{number}"
        shutil.rmtree(device, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        copy_tree(lead, device, run_args(stage, profile)["carry"])
        carry = dir_bytes(device) + wheels
        print(f"=== stage {number} in {device}: carries {carry / MiB:.1f} MiB ({wheels / MiB:.1f} of them wheels from "
              f"{src / WHEEL_DIR}), limit {CARRY_BYTES / MiB:.0f}", flush=True)  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("EBM_")}
        env.update(EBM_HOME=str(device), OUT=str(out), PYTHONPATH=str(device), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "ebmhelpers", "device-chain", "stage", str(number), "--profile", profile,
               "--out", str(out), "--deadline-s", "0"]  # fmt: skip
        with open(out / f"stage{number}.log", "w") as log:  # what `tee $OUT/stage<N>.log` keeps on the device
            proc = subprocess.Popen(cmd, cwd=device, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            code = proc.wait()
        problems = check_return(out)
        if carry > CARRY_BYTES:
            problems.append(f"the carry is {carry / MiB:.1f} MiB, over {CARRY_BYTES / MiB:.0f}")
        if code != 0 or problems:
            raise RuntimeError(f"stage {number} failed (exit {code}; {'; '.join(problems) or 'returns fit'}); "
                               f"log: {out}/stage{number}.log")
        summary = receive(out, lead)
        received |= {f.name[:2] for f in summary["outputs"] if f.parent.name == "notebooks"}
        print(f"=== stage {number} received: {len(summary['outputs'])} output files into {lead}, state "
              f"{summary['state'] or 'none (last stage)'}", flush=True)  # fmt: skip
        shutil.rmtree(device)  # its checkpoints are GBs; nothing on the device survives either
    expected = {nb for n in numbers for nb in get_stage(n).notebooks}
    missing = sorted(expected - received) + [nb for nb in sorted(received) if not _executed(notebook_path(lead, nb))]
    if missing:
        raise RuntimeError(f"notebooks not returned executed by the rehearsal: {missing}")
    print(f"=== rehearsal done: notebooks {' '.join(sorted(received))} executed under {profile!r} and received into {lead}")
    return lead


def _executed(path: Path) -> bool:
    """Whether every code cell of a notebook ran and none raised."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    return all(c.get("execution_count") for c in cells) and not any(
        o.get("output_type") == "error" for c in cells for o in c.get("outputs", [])
    )


# ---- a check of the device image ---------------------------------------------------------------
PREFLIGHT_CELL = """\
import torch, torchvision, ipywidgets, torch_pruning, nbclient, ebmhelpers
from ebmhelpers import data, runtime
x, _ = data.load_dataset("fashion", train=False)
print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
print("autocast:", runtime.autocast_dtype(runtime.get_device()), "fashion test digits:", len(x))"""


def preflight(root: Path | None = None) -> None:
    """Install the carried data and execute a one-cell notebook in a kernel (wheels, data, CUDA)."""
    import nbformat
    from nbclient import NotebookClient

    from .runtime import repo_root

    root = root or repo_root()
    os.environ.update(stage_env(root, get_profile(DEFAULT_PROFILE)))
    print(f"data root: {install_data(root)}")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PREFLIGHT_CELL)])
    NotebookClient(nb, timeout=300, kernel_name="python3").execute(env=dict(os.environ))
    for output in nb.cells[0].outputs:
        print(output.get("text", output))


# ---- command line --------------------------------------------------------------------------------
def _print_plan(profile: str, flops_per_s: float) -> None:
    from .runtime import repo_root

    root = repo_root()
    print(f"profile {profile}: minutes per stage at {flops_per_s / 1e12:.0f} TFLOP/s sustained "
          f"({'ASSUMED' if flops_per_s == ASSUMED_H100_FLOPS_PER_S else 'given'}), plus {NOTEBOOK_OVERHEAD_S:.0f} s per "
          f"notebook and {STAGE_OVERHEAD_S:.0f} s per stage: an estimate until timed")  # fmt: skip
    total = 0.0
    for row in plan(profile, flops_per_s):
        total += row["minutes"]
        print(f"  stage {row['stage']}: {row['work']:28s} {row['flops']:.3g} FLOPs  about {row['minutes']:.1f} min "
              f"(limit {COMMAND_S / 60:.0f})")  # fmt: skip
    print(f"  all stages: about {total:.1f} min, plus a machine start (a minute or more) per stage")
    print("\nrun calls (one per stage; after each, `python -m ebmhelpers device-chain receive <files_at>`):")
    for stage in STAGES:
        args = run_args(stage, profile)
        print(f"  stage {stage.number} ({stage.why}):\n    {json.dumps(args)}\n    {carry_report(root, args['carry'])}")
    print(f"  last, if device minutes remain: the {TIMED_PROFILE} profile's notebooks timed as a reader runs them "
          f"(for the T4 estimate):\n    {json.dumps(time_args())}")
    print(f"  first call, before stage 1: check the image, run {SPEEDUP_TESTS} on the GPU and `bench --speedups` "
          f"(set the profile's speed-ups from its table, then commit):\n    {json.dumps(preflight_args(profile))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebmhelpers device-chain", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plan", help="minutes per stage and the exact `run` arguments of each")
    pl.add_argument("--profile", default=DEFAULT_PROFILE)
    pl.add_argument("--tflops", type=float,
                    help=f"sustained TFLOP/s (default: the assumed {ASSUMED_H100_FLOPS_PER_S / 1e12:.0f})")
    pr = sub.add_parser("prepare", help=f"write {DATA_DIR}/, list {INBOX}/ in .git/info/exclude, fetch or print the wheels")
    pr.add_argument("--data-source", help="folder with mnist/ and fashion-mnist/ *.gz (default: the data root's IDX files)")
    pr.add_argument("--wheels", action="store_true", help=f"download {WHEEL_DIR}/ with pip (else print the command)")
    st = sub.add_parser("stage", help="run one stage (on the device machine)")
    st.add_argument("number", type=int)
    st.add_argument("--profile", default=DEFAULT_PROFILE)
    st.add_argument("--out", help="stands in for $OUT (default: $OUT)")
    st.add_argument("--inbox", help=f"the previous stage's state (default: {INBOX}/)")
    st.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S,
                    help="skip notebooks predicted to end later (0: never)")
    st.add_argument("--tflops", type=float, help="rate for predictions before any work is timed")
    st.add_argument("--allow-existing", action="store_true", help="let stage 1 load an existing baseline checkpoint")
    rc = sub.add_parser("receive", help="take a stage's returns: outputs into the checkout, state into device_in/")
    rc.add_argument("src", help="the folder the $OUT files came back to (files_at)")
    rc.add_argument("--into", help="the checkout (default: this one)")
    rc.add_argument("--profile", default=DEFAULT_PROFILE, help="for the next stage's printed run arguments")
    rh = sub.add_parser("rehearse", help="the whole chain on this machine (CPU), each stage in a fresh tree")
    rh.add_argument("--workdir", required=True)
    rh.add_argument("--profile", default="smoke")
    rh.add_argument("--stages", type=int, nargs="*", help="resume at these stages (default: all)")
    rh.add_argument("--data-source", help="as for prepare")
    sub.add_parser("preflight", help="check the device image: wheels, data, a kernel, CUDA")
    tm = sub.add_parser("time", help="time a profile's notebooks on this machine, as a reader runs them (on the device)")
    tm.add_argument("--profile", default=TIMED_PROFILE)
    tm.add_argument("--out", help="stands in for $OUT (default: $OUT)")
    tm.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S, help="start no notebook after this")
    args = parser.parse_args(argv)

    from .runtime import repo_root

    if args.command == "plan":
        _print_plan(args.profile, args.tflops * 1e12 if args.tflops else ASSUMED_H100_FLOPS_PER_S)
    elif args.command == "prepare":
        root = repo_root()
        if ensure_excluded(root, INBOX):
            print(f"listed /{INBOX}/ in {root / '.git/info/exclude'}")
        print(f"data: {prepare_data(root / DATA_DIR, Path(args.data_source) if args.data_source else None)} "
              f"({dir_bytes(root / DATA_DIR) / MiB:.1f} MiB)")  # fmt: skip
        cmd = pip_download_command(str(root / WHEEL_DIR))
        if args.wheels:
            subprocess.run(cmd, check=True)
            print(f"wheels: {root / WHEEL_DIR} ({dir_bytes(root / WHEEL_DIR) / MiB:.1f} MiB)")
        else:
            print("wheels (run once, or pass --wheels):\n  " + " ".join(cmd))
    elif args.command == "stage":
        root = repo_root()
        profile = get_profile(args.profile)
        os.environ.update(stage_env(root, profile))
        for name in ENV_FOLDERS:
            os.environ.pop(name, None)
        report = run_stage(args.number, profile, out=args.out, inbox=args.inbox, root=root, deadline_s=args.deadline_s,
                           flops_per_s=args.tflops * 1e12 if args.tflops else ASSUMED_H100_FLOPS_PER_S,
                           allow_existing=args.allow_existing)  # fmt: skip
        return report.exit_code
    elif args.command == "receive":
        summary = receive(args.src, args.into)
        into = Path(args.into) if args.into else repo_root()
        print(f"outputs: {len(summary['outputs'])} files into {into}; state: {summary['state'] or 'none (last stage)'}")
        following = [s for s in STAGES if s.number > (summary.get("stage") or 0)]
        if following:
            args_next = run_args(following[0], args.profile)
            print(f"next, stage {following[0].number}: {json.dumps(args_next)}\n{carry_report(into, args_next['carry'])}")
    elif args.command == "rehearse":
        rehearse(args.workdir, args.profile, args.stages, args.data_source)
    elif args.command == "preflight":
        preflight()
    elif args.command == "time":
        root = repo_root()
        profile = get_profile(args.profile)
        os.environ.update(stage_env(root, profile))
        done = time_notebooks(profile, Path(args.out or os.environ["OUT"]), root, args.deadline_s)
        print(f"[time] timed notebooks {' '.join(done) or 'none'} of profile {profile.name}")
        return 0 if done else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
