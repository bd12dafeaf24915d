"""Named run profiles: every size, step count and learning rate of the series lives here.

The profiles share the same code paths and differ only in scale:

* ``smoke``  - CI on 2 CPU cores; every notebook executes in a few minutes. Results are
  *not* meaningful digits; they only prove the pipeline runs end to end.
* ``cpu``    - readers without a GPU: tutorial 8's small CNN as the baseline (not the paper's
  ResNet18), the paper profile's sampler, buffer and optimizer settings with 25% fresh chains; every
  model it trains is trained once (``python -m ebmhelpers train --all``, hours) and committed, and the
  series loads them (``EBM_TRAIN=1`` trains them instead) and aims at an hour on 2 cores.
* ``colab``  - a Colab T4 session; ``python -m ebmhelpers estimate --profile colab`` counts its FLOPs
  (an estimate until timed on a T4).
* ``gpu``    - one H100 for about 20 minutes, sized from counted FLOPs (an estimate until timed).
* ``paper``  - the paper's settings, completed with P. Lippe's tutorial-8 recipe where the
  paper is silent (the paper's reference [14]).

Select one with the ``EBM_PROFILE`` environment variable or an explicit argument to
:func:`get_profile`. Without either, the default is ``cpu``, the profile whose outputs are committed,
on any device. The ResNet18 profiles (``colab``, ``gpu``, ``paper``) are chosen by name only;
:func:`check_device` refuses one on a CPU unless ``EBM_ALLOW_SLOW=1``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
import torch

ENV_VAR = "EBM_PROFILE"
STUDENT_EPOCH_FRACTION = (
    0.5  # §4.5: "30 epochs, half the epochs used to train the baseline" (paper.DISTILL_EPOCH_FRACTION)
)
DEFAULT_PROFILE = "cpu"  # the profile whose outputs are committed and described in the README
ALLOW_SLOW_VAR = "EBM_ALLOW_SLOW"  # =1: run a profile sized for a GPU on a CPU anyway


class ProfileError(ValueError):
    """A profile name that does not exist, or a profile sized for a GPU started on a CPU. Its message
    is one line that says what to do; the command line prints it without a traceback."""


@dataclass(frozen=True)
class SGLDConfig:
    """Settings of one SGLD run (Algorithm 1): ``steps`` updates of size ``step_size``."""

    steps: int
    step_size: float
    noise_std: float
    grad_clamp: float
    clamp_range: tuple[float, float] | None = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.step_size < 0 or self.noise_std < 0 or self.grad_clamp <= 0:
            raise ValueError(f"invalid SGLD settings: {self}")

    @property
    def temperature(self) -> float:
        """T = noise_std^2 / (2 step_size): the (unclamped) chain is Langevin dynamics for exp(-E/T) (notebook 00)."""
        return self.noise_std**2 / (2 * self.step_size) if self.step_size > 0 else math.inf

    def scaled(self, factor: float) -> "SGLDConfig":
        """The same sampler with ``factor`` times the step size at the same temperature: the noise
        std grows by ``sqrt(factor)``. The gradient clamp is in gradient units and stays."""
        if factor <= 0:
            raise ValueError(f"step-size factor must be positive, got {factor}")
        return dataclasses.replace(
            self, step_size=self.step_size * factor, noise_std=self.noise_std * math.sqrt(factor)
        )


@dataclass(frozen=True)
class Speedups:
    """Which SGLD speed-ups a ``speedups.SGLDRunner`` applies (all off: plain eager SGLD)."""

    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        on = [name for name, value in dataclasses.asdict(self).items() if value]
        return " + ".join(on) if on else "eager"


@dataclass(frozen=True)
class Profile:
    """All knobs of one run of the series. Frozen, so a notebook cannot drift from it."""

    name: str
    description: str
    seed: int = 0

    needs_gpu: bool = False  # a ResNet18 job sized for a GPU: refused on a CPU (runtime.check_device)

    # ---- data -------------------------------------------------------------------------
    train_subset: int | None = None  # None = all 60,000 training digits
    test_subset: int | None = None  # None = all 10,000 test digits
    # Training digits held out (a fixed random subset) to choose settings on: training length,
    # generation chain, recipe. Never the test digits, which only report results.
    val_size: int = 0
    data_noise_std: float = 0.005  # N(0, s) added to real images during training

    # ---- baseline architecture -------------------------------------------------------
    baseline: str = "resnet18"  # a key of models.BASELINES: "resnet18" (the paper's) or "cnn_tutorial8"

    # ---- sampler (Algorithm 1) --------------------------------------------------------
    sgld_steps: int = 60
    sgld_step_size: float = 10.0
    sgld_noise_std: float = 0.005
    sgld_grad_clamp: float = 0.03
    gen_steps: int = 256  # SGLD steps when generating from noise for figures and metrics
    # Generation's step size as a multiple of training's; the noise is scaled by its square root so
    # the temperature noise^2 / (2 step) stays the training sampler's (notebook 02 measures the choice).
    gen_step_scale: float = 1.0
    # A second generation chain, (steps, step-size factor) at the training temperature (SGLDConfig.scaled): every
    # model whose IS and FID feed a claim is scored again with it (python -m ebmhelpers chain-check), so notebook 06
    # shows which verdicts depend on the chain. None: the profile declares none.
    second_chain: tuple[int, float] | None = None

    # ---- replay buffer and PCD training (Algorithm 2) ---------------------------------
    buffer_size: int = 8192
    reinit_frac: float = 0.05  # fraction of chains started from fresh U(-1, 1) noise per iteration (paper: 5%)
    buffer_max_age: int | None = None  # restart a chain from noise after this many updates (None: never)
    # the paper's (Algorithm 2, line 1) and tutorial 8's buffer: starts empty and grows (sampling.ReplayBuffer)
    buffer_grows: bool = False
    batch_size: int = 128
    epochs: int = 60
    max_iters_per_epoch: int | None = None  # None = one full pass over the training set
    alpha: float = 0.1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.999)
    lr_gamma: float = 0.97  # StepLR factor per epoch
    grad_clip: float = 0.1  # gradient-norm clip
    ckpt_every: int = 200  # iterations between checkpoints (and divergence checks)
    max_abs_energy: float = 1e3  # the divergence guard fires above this |E|
    max_energy_gap: float | None = None  # ... and above this window-mean E(x-) - E(x+) (None: 0.5 / alpha)
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 5
    snapshot_epochs: tuple[int, ...] = ()  # epochs after which the baseline's weights are also kept
    # Exponential moving averages of the weights kept beside them during training, one per decay
    # (training.WeightAverages); snapshots keep them too, so validation digits can choose between the
    # trained and the averaged weights
    ema_decays: tuple[float, ...] = ()
    amp_dtype: str | None = (
        None  # autocast of SGLD passes: None (fp32), "bf16", "fp16", "auto" (runtime.autocast_dtype)
    )
    # SGLD speed-ups (speedups.py). channels_last applies on any device (the cpu profile turns it on after
    # `python -m ebmhelpers bench --interleaved` measured it, results/cpu/bench_interleaved.csv). compile applies on
    # CUDA devices only and every profile keeps it off: its one measurement, on a CPU in the same file, gives it 1.33x
    # over eager (quartile range 1.05-1.48x), inside channels_last's spread (1.27x, 1.16-1.45x), so it does not tell
    # the two apart, and compilation adds start-up time for every batch shape (`python -m ebmhelpers bench
    # --speedups` measures it on a GPU)
    channels_last: bool = False  # NHWC weights and activations
    compile: bool = False  # torch.compile of the energy network (SGLD's forward and its input gradient)

    # ---- evaluation -------------------------------------------------------------------
    clf_epochs: int = 3
    clf_train_subset: int | None = None
    clf_batch_size: int = 128
    n_gen: int = 10_000  # generated digits for IS and FID, per seed
    score_seeds: int = 3  # IS/FID are the mean and std over this many seeds of generation
    gen_batch_size: int = 500
    n_fid_real: int = 10_000  # real test digits for FID reference statistics
    n_ood: int | None = None  # test digits per OOD table (None = whole test set)
    eval_batch_size: int = 1000
    latency_batch: int = 64
    latency_repeats: int = 30
    latency_warmup: int = 5

    # ---- digits from noise: training length x SGLD steps (notebook 02) --------------------
    study_steps: tuple[int, ...] = (60, 256, 1024)  # generation chain lengths compared
    study_n: int = 1_000  # digits per seed and setting

    # ---- quantization (notebook 03) ---------------------------------------------------
    n_calib: int = 1000  # held-out real digits to calibrate activation ranges
    precision_n_gen: int | None = None  # digits per reduced-precision/weight-only SGLD run (None = n_gen)

    # ---- pruning (notebook 04) --------------------------------------------------------
    prune_ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    finetune_epochs: int = 7
    finetune_iters: int | None = None  # iterations per fine-tuning epoch (None = a full pass)
    lottery_rounds: int = 5
    # Training seeds of the fine-tuned Conv2d-only models at these ratios (the rows that carry a
    # verdict), so their spread includes training variance; every other fine-tuned model has one
    training_seeds: int = 1
    seeded_ratios: tuple[float, ...] = (0.3, 0.6, 0.9)

    # ---- distillation (notebook 05) ---------------------------------------------------
    # Passes over the distillation set per student; None: half the baseline's epochs, as the paper's
    # students trained 30 of its 60 (§4.5; student_epochs()).
    distill_epochs: int | None = None
    distill_batch_size: int = 128

    # ---- final comparison (notebook 06) -----------------------------------------------
    budget_steps: tuple[int, ...] = (16, 32, 64, 128, 256)

    def sgld_config(self, steps: int | None = None) -> SGLDConfig:
        """The SGLD settings used for training (or ``steps`` steps, e.g. for generation)."""
        return SGLDConfig(
            steps=self.sgld_steps if steps is None else steps,
            step_size=self.sgld_step_size,
            noise_std=self.sgld_noise_std,
            grad_clamp=self.sgld_grad_clamp,
        )

    def gen_sgld_config(self, steps: int | None = None) -> SGLDConfig:
        """The SGLD settings for generating digits from noise: ``gen_steps`` (or ``steps``) steps of
        ``gen_step_scale`` times the training step size at the training temperature."""
        return self.sgld_config(self.gen_steps if steps is None else steps).scaled(self.gen_step_scale)

    def speedups(self, device: torch.device | str) -> Speedups:
        """The SGLD speed-ups this profile turns on for ``device``: ``channels_last`` on any device,
        ``compile`` on CUDA devices only (see the fields)."""
        if torch.device(device).type != "cuda":
            return Speedups(channels_last=self.channels_last)
        return Speedups(channels_last=self.channels_last, compile=self.compile)

    def student_epochs(self) -> int:
        """Epochs of each distilled student: ``distill_epochs`` when set, else half the baseline's
        ``epochs`` (the paper's 30 of 60, §4.5), at least 1."""
        if self.distill_epochs is not None:
            return self.distill_epochs
        return max(1, round(self.epochs * STUDENT_EPOCH_FRACTION))

    def replace(self, **changes) -> "Profile":
        """A copy with some fields changed (e.g. a shorter fine-tuning run)."""
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        description="The paper's settings (60 epochs, K=60); a GPU job (its FLOPs: COUNTED_FLOPS).",
        needs_gpu=True,
        amp_dtype="auto",  # bf16 SGLD on Ampere and later, fp16 on older GPUs
    ),
    "colab": Profile(
        name="colab",
        description="A Colab T4 session: 20k digits, K=30, 4 epochs (run time: `python -m ebmhelpers estimate "
        "--profile colab`, an estimate from counted FLOPs until timed on a T4).",
        needs_gpu=True,
        train_subset=20_000,
        sgld_steps=30,
        gen_steps=128,
        epochs=4,
        ckpt_every=100,
        clf_epochs=2,
        n_gen=2_000,
        n_fid_real=5_000,
        n_ood=2_000,
        n_calib=500,
        prune_ratios=(0.2, 0.4, 0.6, 0.8),
        finetune_epochs=1,
        finetune_iters=30,
        lottery_rounds=3,
        budget_steps=(16, 32, 64, 128),  # students: half the 4 epochs (Profile.student_epochs)
        amp_dtype="auto",  # fp16 SGLD on a T4, bf16 on Ampere and later
    ),
    "gpu": Profile(
        name="gpu",
        description="One H100 for about 20 minutes (a sizing from counted FLOPs, an estimate until timed): ResNet18 "
        "trained with the paper's sampler, buffer, loss and optimizer on 20,000 digits for 3 epochs; 3 seeds x "
        "1,000 digits of 64 SGLD steps of 4x the training step at the training temperature. Sized from counted "
        "FLOPs at an ASSUMED 60 TFLOP/s sustained (`python -m ebmhelpers estimate --profile gpu --tflops 60`): "
        "an estimate until timed on the H100.",
        needs_gpu=True,
        train_subset=20_000,
        epochs=3,  # 471 PCD iterations of batch 128, K=60: what fits beside notebooks 02 and 04 in one command
        snapshot_epochs=(1,),  # the training-length study compares epoch 1 with the final model
        # 64 steps of 4x the step at the training temperature: the same K x step (2,560) as the paper profile's 256
        # steps of size 10 at a quarter of the cost (notebook 02's study compares both step sizes)
        gen_steps=64,
        gen_step_scale=4.0,
        ckpt_every=100,
        clf_epochs=2,
        n_gen=1_000,  # x 3 seeds; notebook 02 keeps the first seed's 1,000 digits (results/gpu/samples_baseline.pt)
        gen_batch_size=1_000,
        n_fid_real=10_000,
        n_ood=2_000,
        study_steps=(16, 64, 256),
        study_n=200,
        n_calib=1_000,
        precision_n_gen=1_000,
        prune_ratios=(0.3, 0.5, 0.7, 0.9),
        finetune_epochs=1,
        finetune_iters=20,
        lottery_rounds=2,
        budget_steps=(16, 32, 64, 128),  # students: half the 3 epochs, rounded: 2 (Profile.student_epochs)
        amp_dtype="auto",  # bf16 SGLD on the H100 (runtime.autocast_dtype)
        # channels_last, compile: off until measured on the H100 (`python -m ebmhelpers bench --speedups`)
    ),
    "cpu": Profile(
        name="cpu",
        description="Readers without a GPU: tutorial 8's small CNN (77,578 parameters) as the baseline, NOT the "
        "paper's ResNet18; the paper profile's sampler, loss and optimizer with 25% fresh chains, 10 epochs, "
        "generation with 64 steps of 16x the training step (chosen on validation digits: "
        "python -m ebmhelpers recipe-study). Every model it trains is trained once and committed "
        "(ebmhelpers/pretrained/cpu/manifest.json, python -m ebmhelpers train --all); the series installs them "
        "unless EBM_TRAIN=1.",
        baseline="cnn_tutorial8",
        val_size=5_000,  # held-out training digits: the stopping epoch and the generation chain are chosen on them
        reinit_frac=0.25,  # 25% fresh chains: chosen by the recipe study (recipe_study.csv)
        # 10 epochs: the snapshot chosen on validation digits among the 9-epoch baseline, later epochs of its continued
        # run and their weight averages (recipe-study --select; results/cpu/baseline_selection.csv)
        epochs=10,
        snapshot_epochs=(2,),  # notebook 02 compares epoch 2 with the final model
        # 64 steps of 16x the training step at the training temperature: the lowest validation FID of the chains
        # of at most 64 steps (generation_chain_study.csv); 128 steps of 4x score better (FID 259 against 318 for
        # epoch 9) at 1.45x the time, more than the series' 60 minutes allow
        gen_steps=64,
        gen_step_scale=16.0,
        # the second chain: 128 steps of 4x, the lowest validation FID of the whole chain study for that snapshot
        # (generation_chain_study.csv), chosen there on validation digits like the first, never on test digits
        second_chain=(128, 4.0),
        channels_last=True,  # 1.27x on the training chain, quartile range 1.16-1.45x (bench --interleaved, 2 threads)
        ckpt_every=100,
        study_steps=(16, 64, 256),  # a quarter, 1x and 4x the generation chain
        study_n=250,
        clf_epochs=2,
        n_gen=1_000,  # x 3 seeds: 3,000 digits per model
        n_fid_real=10_000,
        n_ood=2_000,
        latency_repeats=20,
        n_calib=500,
        precision_n_gen=500,
        # the paper's protocol (§4.4): every ratio 10-90%; fine-tuning for 7/60 of the baseline's iterations,
        # 2 x 251 = 502 of 4,300 (tests/test_profiles_data.py keeps the proportion), 3 training seeds at 30/60/90%
        finetune_epochs=2,
        finetune_iters=251,
        lottery_rounds=3,
        training_seeds=3,
        budget_steps=(16, 32, 64, 128),
    ),
    "smoke": Profile(
        name="smoke",
        description="CI on 2 CPU cores: tiny subsets and few steps; proves the code runs, "
        "its numbers are not meaningful.",
        train_subset=512,
        test_subset=512,
        sgld_steps=10,
        gen_steps=10,
        second_chain=(20, 0.25),  # exercises chain-check: twice the steps of a quarter the size, as cpu's second chain
        buffer_size=256,
        batch_size=16,
        epochs=1,
        max_iters_per_epoch=24,
        ckpt_every=8,
        snapshot_epochs=(1,),
        study_steps=(10, 20),
        study_n=16,
        clf_epochs=1,
        clf_train_subset=4096,
        clf_batch_size=64,
        n_gen=16,
        score_seeds=1,
        gen_batch_size=32,
        n_fid_real=512,
        n_ood=128,
        eval_batch_size=128,
        latency_batch=16,
        latency_repeats=5,
        latency_warmup=2,
        n_calib=64,
        precision_n_gen=4,
        prune_ratios=(0.6,),  # one ratio: each pruned variant costs a full Evaluator.score
        finetune_epochs=1,
        finetune_iters=2,
        lottery_rounds=2,
        distill_batch_size=32,  # students: 1 epoch, half the baseline's 1 rounded up (Profile.student_epochs)
        budget_steps=(5, 20),  # with gen_steps: K = 5, 10, 20, one point on each side of the reference
    ),
}


# The whole series' FLOPs under each profile sized for a GPU, as `python -m ebmhelpers estimate` counts
# them (tests/test_estimate.py keeps them equal to the count): the banner prints them and the time they
# mean on the device, an estimate, without importing the whole package to count them.
COUNTED_FLOPS: dict[str, float] = {"colab": 6.00e16, "gpu": 2.36e16, "paper": 2.47e18}


def default_profile_name() -> str:
    """The profile whose outputs are committed and described in the README, on any device: ``cpu``.
    The profiles sized for a GPU are chosen by name; CI sets ``EBM_PROFILE=smoke``."""
    return DEFAULT_PROFILE


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, else the one ``EBM_PROFILE`` names, else the default.

    Raises :class:`ProfileError` (a ``ValueError``) listing the valid names for an unknown profile.
    """
    chosen = name or os.environ.get(ENV_VAR) or default_profile_name()
    try:
        return PROFILES[chosen]
    except KeyError:
        raise ProfileError(
            f"unknown profile {chosen!r}; choose one of {sorted(PROFILES)} "
            f"(argument or the {ENV_VAR} environment variable)"
        ) from None
