"""Pruning the EBM (notebook 04): masks, fine-tuning, real channel removal and lottery tickets.

* **Masks** (the paper's Section 3.3.2): ``torch.nn.utils.prune`` zeros weights through a mask
  that a forward pre-hook applies, so the pruned model keeps its dense shape. Four strategies:
  unstructured (l1 magnitude of single weights) or structured (l1 norm of whole output
  channels; §3.3.2 names the l1 norm for both), each either *global* (Conv2d and Linear layers
  ranked together) or *Conv2d-only* (every Conv2d layer pruned by the same ratio on its own, as in
  PyTorch's pruning tutorial; the Linear head stays dense).
* **Figure 4's variant**: the paper shows unstructured Conv2d pruning at 60% before and after
  fine-tuning (§5); :func:`prune_sweep` adds it (:data:`FIGURE4`) when 0.6 is not among the
  profile's ratios.
* **Fine-tuning** with the same PCD trainer; the masks stay in place because the pre-hook
  re-applies them on every forward pass, and the trainer's divergence guard counts rollbacks
  (``rollbacks``/``diverged`` columns, marked in the figures).
* **Physical removal** with Torch-Pruning: channels that are zero in every layer coupled to them
  (across residual additions, if the architecture has any) are cut out, so the smaller model
  computes the same energies. Works for either baseline (``profile.baseline``).
* **Lottery tickets**: iterative magnitude pruning with rewinding to the snapshot the baseline's
  own run kept at :func:`training.rewind_step`; every round, the last included, trains with the
  fine-tuning schedule of :func:`finetune_profile`, so the ticket and the one-shot pruned,
  fine-tuned model it is compared with get the same training after pruning.

Its figures (Figure 2, quality against speed-up, zeros per layer) are in :mod:`ebmhelpers.plotting`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pandas as pd
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune
from .progress import tqdm

from . import metrics as metrics_mod
from . import paper, pretrained, results, verdicts
from .metrics import OOD_LABELS, PAPER_OOD_SETS, Evaluator, measure_cost, score_columns, serialized_size_bytes
from .models import count_parameters
from .profiles import Profile
from .runtime import Context, seed_everything
from .sampling import ReplayBuffer
from .training import DivergenceError, PCDTrainer, load_snapshot

PRUNABLE = (nn.Conv2d, nn.Linear)
STRUCTURED_NORM = 1  # Ln norm of an output channel: l1, as §3.3.2 names it
# §5, Figure 4: (strategy key, ratio) that prune_sweep always includes, before and after fine-tuning.
FIGURE4 = ("unstructured_conv", paper.FIGURE4_PRUNING[2])
# Figure 2's panels: IS and FID, then the AUROC of each of the paper's OOD transforms (never averaged).
QUALITY_METRICS = {
    "FID": "FID (lower is better)",
    "IS": "IS (higher is better)",
    **{f"auroc_{s}": f"OOD AUROC: {OOD_LABELS[s]}" for s in PAPER_OOD_SETS},
}
METRIC_LABELS = {**QUALITY_METRICS, "auroc_worst": "worst OOD AUROC of " + "/".join(PAPER_OOD_SETS)}
ERROR_BARS = {"FID": "FID_std", "IS": "IS_std"}  # spread over the evaluator's seeds (NaN with one seed)
CHANCE_AUROC = verdicts.CHANCE_AUROC  # below it the detector is inverted: OOD images get lower energy than digits
TABLE_COLUMNS = [
    "sparsity",
    "FID",
    "FID_std",
    "IS",
    "IS_std",
    *(f"auroc_{s}" for s in PAPER_OOD_SETS),
    "auroc_worst",
    "worst_set",
    "inverted",
    "rollbacks",
    "diverged",
]
# score_variant's columns, after the score row's (metrics.score_columns)
VARIANT_COLUMNS = ("strategy", "ratio", "sparsity", "finetuned", "rollbacks", "diverged", "method", "samples")
# what combine_training_seeds adds to a scored row: the spread of the seeds' means of IS, FID and each AUROC, and
# the number of seeds
TRAINING_SEED_COLUMNS = (
    "IS_train_std",
    "FID_train_std",
    *(f"{c}_train_std" for c in score_columns() if c.startswith("auroc_")),
    "training_seeds",
)


def sweep_columns(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The columns of the pruning table (notebook 04: :func:`prune_sweep`'s rows and the lottery
    ticket's, saved as ``pruning``), latency timed on ``device`` (:func:`metrics.latency_columns`):
    the score row's, then :data:`VARIANT_COLUMNS`. Notebook 04 writes :data:`TRAINING_SEED_COLUMNS`
    after them; a reader requires only these (the committed cpu table has no training-seed columns)."""
    return (*score_columns(device), *VARIANT_COLUMNS)


@dataclass(frozen=True)
class Strategy:
    """One way of choosing what to prune."""

    key: str
    label: str
    structured: bool  # whole output channels instead of single weights (l1 magnitude)
    scope: str  # "global": Conv2d + Linear ranked together; "conv": each Conv2d on its own

    @property
    def finetuned(self) -> bool:
        """The paper fine-tunes the Conv2d-only strategies."""
        return self.scope == "conv"


STRATEGIES: dict[str, Strategy] = {
    s.key: s
    for s in (
        Strategy("unstructured_global", "L1 unstructured, global", False, "global"),
        Strategy("unstructured_conv", "L1 unstructured, Conv2d", False, "conv"),
        Strategy("structured_global", "L1 structured, global", True, "global"),
        Strategy("structured_conv", "L1 structured, Conv2d", True, "conv"),
    )
}


def get_strategy(strategy: str | Strategy) -> Strategy:
    """A :class:`Strategy` from its key; ``ValueError`` listing the keys for an unknown one."""
    if isinstance(strategy, Strategy):
        return strategy
    try:
        return STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown pruning strategy {strategy!r}; choose one of {sorted(STRATEGIES)}") from None


# ---- masks ------------------------------------------------------------------------------
def prunable_layers(model: nn.Module, scope: str = "global") -> list[nn.Module]:
    """The layers a strategy may prune: Conv2d and Linear (``global``) or Conv2d only (``conv``)."""
    if scope not in ("global", "conv"):
        raise ValueError(f"unknown scope {scope!r}; choose 'global' or 'conv'")
    kinds = PRUNABLE if scope == "global" else (nn.Conv2d,)
    return [m for m in model.modules() if isinstance(m, kinds)]


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor a forward pass uses: ``<name>_orig * <name>_mask`` under a mask, else the
    parameter itself (``module.weight`` is only refreshed by the next forward pass)."""
    if hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


def is_masked(model: nn.Module) -> bool:
    """Whether any layer of ``model`` carries a ``torch.nn.utils.prune`` mask."""
    return any(hasattr(m, "weight_mask") or hasattr(m, "bias_mask") for m in model.modules())


def channel_scores(weights: list[torch.Tensor]) -> tuple[torch.Tensor, list[int], list[int], list[int]]:
    """Every output channel of ``weights``, layer after layer: its score (its l1 norm over
    the mean of its layer's channels' norms; zeros for a layer whose channels are all zero), its
    number of weights, its layer's index and its index within the layer."""
    scores, sizes, owners, local = [], [], [], []
    for i, w in enumerate(weights):
        norms = w.flatten(1).norm(p=STRUCTURED_NORM, dim=1).float().cpu()
        mean = norms.mean()
        scores.append(norms / mean if mean > 0 else torch.zeros_like(norms))
        sizes += [w[0].numel()] * len(norms)
        owners += [i] * len(norms)
        local += list(range(len(norms)))
    return torch.cat(scores), sizes, owners, local


def global_channel_masks(layers: list[nn.Module], ratio: float) -> list[torch.Tensor]:
    """Keep-masks (bool per output channel) that remove ``ratio`` of all the layers' weights
    by pruning the least important output channels across layers.

    Raw channel norms are not comparable across layers (their scale drifts with fan-in and
    training), so a channel's score is its l1 norm divided by the mean norm of its layer's
    channels (:func:`channel_scores`): a channel goes when it is weak *relative to its peers*.
    Channels are removed in increasing score until the removed weights are closest to ``ratio``
    of all weights (so the achieved sparsity matches the ratio to within half a channel), and no
    layer loses its last channel.
    """
    weights = [m.weight.detach() for m in layers]
    scores, sizes, owners, local = channel_scores(weights)
    keep = [torch.ones(w.shape[0], dtype=torch.bool) for w in weights]
    left = [w.shape[0] for w in weights]
    removed, target = 0, ratio * sum(w.numel() for w in weights)
    for idx in torch.argsort(scores, stable=True).tolist():
        if removed + sizes[idx] / 2 > target:
            break
        layer = owners[idx]
        if left[layer] == 1:
            continue
        keep[layer][local[idx]] = False
        left[layer] -= 1
        removed += sizes[idx]
    return [k.to(w.device) for k, w in zip(keep, weights)]


def _mask_bias(module: nn.Module) -> None:
    """A structurally pruned channel loses its bias too, so it outputs exactly zero (and can
    be removed physically without changing the energy)."""
    if module.bias is not None:
        prune.custom_from_mask(module, "bias", module.weight_mask.flatten(1).amax(1))


def layers_to_prune(model: nn.Module, s: Strategy, ratio: float) -> list[nn.Module]:
    """The layers :func:`apply_pruning` masks under strategy ``s``, after checking that ``ratio``
    lies in [0, 1), that ``model`` carries no masks yet and that it has such layers."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if is_masked(model):
        raise ValueError("model already carries pruning masks; call remove_masks() first")
    layers = prunable_layers(model, s.scope)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer that strategy {s.key!r} can prune")
    return layers


def apply_pruning(model: nn.Module, strategy: str | Strategy, ratio: float) -> nn.Module:
    """Mask ``ratio`` of ``model``'s prunable weights in place with ``torch.nn.utils.prune``.

    Unstructured: l1 magnitude of single weights. Structured: the l1 norm (§3.3.2)
    over output channels (``dim=0``), bias included. Global strategies rank Conv2d and Linear weights together
    (see :func:`global_channel_masks` for channels); Conv2d-only ones prune each Conv2d layer
    by ``ratio`` on its own and leave the Linear head dense. Returns ``model``, its weights in the
    contiguous layout (``torch.nn.utils.prune`` flattens them with ``view``, which NHWC weights refuse).
    """
    s = get_strategy(strategy)
    model.to(memory_format=torch.contiguous_format)
    layers = layers_to_prune(model, s, ratio)
    if not s.structured and s.scope == "global":
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=ratio)
    elif not s.structured:
        for m in layers:
            prune.l1_unstructured(m, "weight", amount=ratio)
    elif s.scope == "global":
        for m, keep in zip(layers, global_channel_masks(layers, ratio)):
            shape = (-1,) + (1,) * (m.weight.dim() - 1)
            prune.custom_from_mask(m, "weight", keep.view(shape).expand_as(m.weight))
            _mask_bias(m)
    else:
        for m in layers:
            prune.ln_structured(m, "weight", amount=ratio, n=STRUCTURED_NORM, dim=0)
            _mask_bias(m)
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy that also works under masks: the masked ``weight`` attribute is a computed
    tensor that ``deepcopy`` refuses, so it is detached first (the pre-hook recomputes it)."""
    for m in model.modules():
        for name in ("weight", "bias"):
            if hasattr(m, name + "_mask"):
                setattr(m, name, getattr(m, name).detach())
    return copy.deepcopy(model)


def remove_masks(model: nn.Module) -> nn.Module:
    """Make pruning permanent in place: zeros written into dense tensors, hooks removed."""
    for m in model.modules():
        for name in ("weight", "bias"):
            if hasattr(m, name + "_mask"):
                prune.remove(m, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Real sparsity: zero entries over all Conv2d and Linear weights (biases excluded)."""
    weights = [effective_weight(m) for m in prunable_layers(model, "global")]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def layer_table(model: nn.Module) -> pd.DataFrame:
    """Per prunable layer: kind, weights, fraction of zero weights and of all-zero channels."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            w = effective_weight(m)
            rows.append(
                {
                    "layer": name.replace("layers.", "block"),
                    "kind": type(m).__name__,
                    "weights": w.numel(),
                    "sparsity": float((w == 0).float().mean()),
                    "zero_channels": float((w.flatten(1) == 0).all(1).float().mean()),
                }
            )
    return pd.DataFrame(rows)


# ---- fine-tuning ------------------------------------------------------------------------
def finetune_profile(profile: Profile) -> Profile:
    """The profile of a fine-tuning run: ``finetune_epochs`` epochs of ``finetune_iters``
    iterations (a full pass when that is None), otherwise the training settings, with the divergence
    guard on numbers only (energies beyond ``max_abs_energy``). The protocol fixes a fine-tuning's
    length (the paper's 7 of 60 epochs), and a pruned model whose samples collapse to noise is an
    outcome its scores report, not a run to cut short: rolling back cannot rescue it (the collapse
    comes back at any learning rate), so the energy-gap collapse check is off."""
    return profile.replace(
        epochs=profile.finetune_epochs,
        max_iters_per_epoch=profile.finetune_iters or profile.max_iters_per_epoch,
        max_energy_gap=math.inf,
    )


def clone_buffer(buffer: ReplayBuffer) -> ReplayBuffer:
    """An independent copy of a replay buffer (fine-tuning starts from the baseline's chains)."""
    out = ReplayBuffer(len(buffer), buffer.shape, buffer.reinit_frac, buffer.samples.device)
    out.load_state_dict({"samples": buffer.samples.clone()})
    return out


def finetune(
    ctx: Context,
    model: nn.Module,
    data: torch.Tensor,
    buffer: ReplayBuffer,
    name: str,
    progress: bool = True,
    seed: int = 0,
    train: bool | None = None,
    commit: dict | None = None,
    parent: str = "",
) -> tuple[PCDTrainer, bool]:
    """Fine-tune a (masked) model in place with the PCD trainer (training seed ``profile.seed + seed``):
    install the committed weights of ``name`` (pruned from the baseline ``parent``) unless ``train`` (default
    ``EBM_TRAIN=1``) asks to train; else train, resumable from ``<checkpoints>/<name>.pt``, and commit the run when
    ``commit`` gives its manifest fields. Returns the trainer and whether the divergence guard gave up."""
    p = finetune_profile(ctx.profile).replace(seed=ctx.profile.seed + seed)
    seed_everything(p.seed)
    path = ctx.checkpoints / f"{name}.pt"
    trainer = PCDTrainer(model, p, data, ckpt_path=path, device=ctx.device, buffer=clone_buffer(buffer), origin=parent)
    if not pretrained.wants_training(train):
        state = pretrained.load(
            ctx.profile.name, name, architecture=ctx.profile.baseline, model=model, parent=parent or None
        )
        if state is not None:
            trainer.install(state)
            trainer.model.eval()
            return trainer, bool(state["diverged"])
    diverged = False
    if not (trainer.load() and trainer.done):
        try:
            trainer.fit(progress=progress)
        except DivergenceError as err:
            print(f"{name}: {err}; keeping its last good checkpoint")
            trainer.load()
            diverged = True
    trainer.model.eval()
    if commit is not None:
        commit_run(ctx, name, trainer, diverged, commit, seed, parent)
    return trainer, diverged


def commit_run(
    ctx: Context, name: str, trainer: PCDTrainer, diverged: bool, commit: dict, seed: int, parent: str
) -> None:
    """Commit a finished fine-tuning run's weights as ``name`` (:func:`pretrained.commit`): the
    manifest's ``kind`` and extra fields from ``commit``, its iterations, seconds, seed, parent,
    whether the guard gave up (``diverged``) and how many rollbacks it made."""
    pretrained.commit(
        ctx.profile.name,
        name,
        commit["kind"],
        trainer.weights_state() | {"diverged": diverged},
        architecture=ctx.profile.baseline,
        iterations=trainer.step,
        seconds=trainer.seconds,
        command=pretrained.retrain_command(ctx.profile.name, name),
        seed=seed,
        parent=parent,
        diverged=diverged,
        rollbacks=len(trainer.rollbacks),
        **{k: v for k, v in commit.items() if k != "kind"},
    )


# ---- physical removal -------------------------------------------------------------------
def _zero_out_channels(module: nn.Module) -> torch.Tensor:
    """Bool per output channel: weights and bias all zero, so the channel outputs zero."""
    dead = (module.weight.detach().flatten(1) == 0).all(1)
    if module.bias is not None:
        dead &= module.bias.detach() == 0
    return dead


def physically_prune(model: nn.Module, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """A smaller copy of ``model`` without the channels its masks zeroed, computing the same
    energies (up to float rounding).

    Torch-Pruning's dependency graph groups channels that must go together (a residual sum
    couples the stem, every block's second conv and the shortcut convs of a stage). A group's
    channel is removed only where *every* layer producing it is zero (weights and bias); Swish,
    pooling, flattening and addition map zero to zero, so the consumers lose only zero inputs.
    A plain CNN (tutorial 8's) has no such coupling: each conv's and the hidden Linear layer's
    zero channels go on their own, and a conv channel cut before ``Flatten`` takes its block of
    the next Linear layer's inputs with it. The last Linear layer, the head, is never cut: its
    outputs are the logits whose mean is the energy.
    """
    phys = remove_masks(copy_model(model)).eval()
    device = next(phys.parameters()).device
    example = example_inputs if example_inputs is not None else torch.zeros(1, 1, 28, 28, device=device)
    graph = tp.DependencyGraph().build_dependency(phys, example_inputs=example)
    heads = [m for m in phys.modules() if isinstance(m, nn.Linear)][-1:]
    plans = []
    for group in graph.get_all_groups(ignored_layers=heads, root_module_types=PRUNABLE):
        root, handler = group[0].dep.target.module, group[0].dep.handler
        idxs = dead_channels(graph, group)
        if idxs:
            plans.append((root, handler, idxs))
    for root, handler, idxs in plans:
        graph.get_pruning_group(root, handler, idxs).prune()
    return phys


def dead_channels(graph: tp.DependencyGraph, group) -> list[int]:
    """The channels of a Torch-Pruning ``group`` (indexed as its root layer's output channels) that
    are zero in *every* layer producing them, weights and bias; all but one when that is all of them,
    so the layers stay well-formed."""
    n = graph.get_out_channels(group[0].dep.target.module)
    dead = torch.ones(n, dtype=torch.bool)
    for item in group:
        if graph.is_out_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, PRUNABLE):
            zero = _zero_out_channels(item.dep.target.module).cpu()
            mapped = torch.zeros(n, dtype=torch.bool)
            mapped[torch.as_tensor(item.root_idxs)] = zero[torch.as_tensor(item.idxs)]
            dead &= mapped
    idxs = dead.nonzero().flatten().tolist()
    return idxs[1:] if len(idxs) == n else idxs  # keep one (zero) channel


def cost_row(ev: Evaluator, model: nn.Module) -> dict:
    """Parameters, serialized size, latency and SGLD throughput, measured by
    :func:`metrics.measure_cost` as :meth:`Evaluator.score` measures every model."""
    return {"params": count_parameters(model), "size_mb": serialized_size_bytes(model) / 1e6, **measure_cost(model, ev)}


def interleaved_speedup(ev: Evaluator, dense: nn.Module, smaller: nn.Module) -> dict:
    """Latency speed-up of ``smaller`` over ``dense``, both timed interleaved in this process
    (:func:`metrics.compare_latency`, at least 5 rounds after the profile's warm-up):
    ``speedup_interleaved`` (median ratio), its spread ``speedup_lo``..``speedup_hi`` and
    ``speed_verdict`` ('no difference' when the spread includes 1)."""
    p = ev.ctx.profile
    t = metrics_mod.compare_latency(
        {"dense": dense.eval(), "smaller": smaller.eval()},
        p.latency_batch,
        ev.device,
        reference="dense",
        repeats=p.latency_repeats,
        warmup=p.latency_warmup,
    )
    r = t.set_index("model").loc["smaller"]
    return {
        "speedup_interleaved": r.ratio,
        "speedup_lo": r.ratio_lo,
        "speedup_hi": r.ratio_hi,
        "speed_verdict": r.verdict,
    }


def max_energy_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest |E_a(x) - E_b(x)| over a batch: the check that surgery kept the function."""
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


# ---- the sweep behind Figure 2 ----------------------------------------------------------
def checkpoint_name(strategy: Strategy, ratio: float, prefix: str = "prune") -> str:
    """``<prefix>_<strategy>_<percent>``; structured runs carry their channel norm, ``_l1``, so a
    checkpoint fine-tuned under masks of another norm is never loaded as theirs."""
    norm = "_l1" if strategy.structured else ""
    return f"{prefix}_{strategy.key}_{round(100 * ratio)}{norm}"


def finetuned_name(strategy: Strategy, ratio: float, seed: int = 0) -> str:
    """The name (checkpoint and committed file) of a fine-tuned pruned model; seeds after the first
    carry ``_s<seed>``."""
    return checkpoint_name(strategy, ratio) + (f"_s{seed}" if seed else "")


LOTTERY_STRATEGY = (
    "unstructured_conv"  # iterative magnitude pruning of the Conv2d weights, as Frankle and Carbin's tickets
)


def sweep_jobs(profile: Profile) -> list[tuple[Strategy, float]]:
    """(strategy, ratio) of the sweep: every strategy at every ``profile.prune_ratios``, plus
    Figure 4's unstructured Conv2d 60% (:data:`FIGURE4`) when the profile lacks that ratio."""
    jobs = [(s, r) for s in STRATEGIES.values() for r in profile.prune_ratios]
    key, ratio = FIGURE4
    if not any(s.key == key and abs(r - ratio) < 1e-9 for s, r in jobs):
        jobs.append((STRATEGIES[key], ratio))
    return jobs


METHODS = ("one-shot", "lottery")


def score_variant(
    ev: Evaluator,
    model: nn.Module,
    strategy: Strategy,
    ratio: float,
    finetuned: bool,
    rollbacks: int = 0,
    diverged: bool = False,
    method: str = "one-shot",
    keep_samples: bool = True,
) -> dict:
    """``Evaluator.score`` of a pruned model (masks made permanent on a copy, so size and
    latency are those of the dense model with zeros) plus the pruning columns, among them the
    divergence guard's record of its fine-tuning (``rollbacks``, ``diverged``); its first
    samples are kept with :func:`results.save_samples` under the name in column ``samples`` (unless
    ``keep_samples`` is False: a second training seed of the same model).
    A thin wrapper: the seeds and settings are the evaluator's, as for every other model.

    Lottery tickets get the strategy key ``lottery_<strategy>``, so a table grouped by strategy
    and fine-tuning keeps them apart from one-shot pruning.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    lottery = method == "lottery"
    key = f"lottery_{strategy.key}" if lottery else strategy.key
    name = f"{strategy.label} {ratio:.0%}" + (" lottery ticket" if lottery else " + fine-tuned" if finetuned else "")
    sample_name = f"pruning_{key}_{round(100 * ratio)}" + ("_ft" if finetuned and not lottery else "")
    dense = remove_masks(copy_model(model)).eval()
    columns = {
        "strategy": key,
        "ratio": ratio,
        "sparsity": sparsity(dense),
        "finetuned": finetuned,
        "rollbacks": rollbacks,
        "diverged": diverged,
        "method": method,
        "samples": sample_name,
    }
    row, _, samples = ev.score(dense, name, columns=columns)
    if samples is not None and keep_samples:
        results.save_samples(ev.ctx, sample_name, samples)
    return row


def prune_sweep(
    ctx: Context, ev: Evaluator, baseline: PCDTrainer, data: torch.Tensor, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every strategy at every ``profile.prune_ratios``: score before fine-tuning, fine-tune
    and score again (Conv2d-only strategies), and for structured strategies remove the zeroed
    channels physically and measure the cost of the smaller model.

    Returns the tidy quality table (one row per strategy, ratio and fine-tuned flag) and the
    timing table of the structured models: the masked model's latency timed interleaved with the
    dense baseline (``variant='masked'``, :func:`interleaved_speedup`) and the physically pruned
    model's cost and interleaved timing (``variant='physical'``).
    """
    p = ctx.profile
    check_x = ev.ood_x[: p.latency_batch].to(ctx.device)  # real digits for the energy check
    rows, speed = [], []
    jobs = sweep_jobs(p)
    for strategy, ratio in tqdm(jobs, desc="pruning sweep", disable=not progress):
        masked = apply_pruning(copy_model(baseline.model), strategy, ratio).eval()
        rows.append(score_variant(ev, masked, strategy, ratio, finetuned=False))
        phys = physically_prune(masked) if strategy.structured else None
        if phys is not None:
            speed.append(
                {
                    "strategy": strategy.key,
                    "ratio": ratio,
                    "variant": "masked",
                    **interleaved_speedup(ev, baseline.model, remove_masks(copy_model(masked))),
                }
            )
            speed.append(
                {
                    "strategy": strategy.key,
                    "ratio": ratio,
                    "variant": "physical",
                    **cost_row(ev, phys),
                    "max_abs_energy_diff": max_energy_difference(masked, phys, check_x),
                    **interleaved_speedup(ev, baseline.model, phys),
                }
            )
        if strategy.finetuned:
            seeded = []
            for seed in range(training_seeds(p, ratio)):
                trainer, diverged = finetune(
                    ctx,
                    copy_model(masked),
                    data,
                    baseline.buffer,
                    finetuned_name(strategy, ratio, seed),
                    progress=False,
                    seed=seed,
                    parent=baseline.identity,
                )
                seeded.append(
                    score_variant(
                        ev,
                        trainer.model,
                        strategy,
                        ratio,
                        True,
                        len(trainer.rollbacks),
                        diverged,
                        keep_samples=seed == 0,
                    )
                    | {"training_seed": seed}
                )
            rows.append(combine_training_seeds(pd.DataFrame(seeded)))
            if phys is not None:  # same masks, so the same architecture: check the function again
                tuned = physically_prune(trainer.model)
                speed[-1]["max_abs_energy_diff_finetuned"] = max_energy_difference(trainer.model, tuned, check_x)
    return pd.DataFrame(rows).assign(training_seeds=lambda t: t.training_seeds.fillna(1).astype(int)), pd.DataFrame(
        speed
    )


def training_seeds(profile: Profile, ratio: float) -> int:
    """How many training seeds the fine-tuned models at ``ratio`` have: ``profile.training_seeds`` at
    the ``seeded_ratios`` (the rows that carry a verdict), else one."""
    return profile.training_seeds if any(abs(ratio - r) < 1e-9 for r in profile.seeded_ratios) else 1


def combine_training_seeds(rows: pd.DataFrame) -> dict:
    """One row for the same model trained with several training seeds (a pruned model fine-tuned, a
    student distilled; one scored row each): numeric columns averaged, ``IS_std``/``FID_std`` the
    spread over training *and* generation seeds (law of total variance: the mean generation variance
    plus the variance of the per-seed means), ``IS_train_std``/``FID_train_std`` the spread of the
    per-seed means alone and ``auroc_<set>_train_std`` that of each AUROC (every seed is scored on the
    same digits, so it is training variance), ``auroc_worst``/``worst_set`` the lowest of the averaged
    paper AUROCs (not the mean of each seed's worst), where the rows have them the guard's rollbacks summed
    and ``diverged`` when any run gave up; ``training_seeds`` counts the seeds (:data:`TRAINING_SEED_COLUMNS`)."""
    out = rows.iloc[0].to_dict()
    for col in rows.select_dtypes("number").columns:
        out[col] = float(rows[col].mean())
    for metric in ("IS", "FID"):
        between = float(rows[metric].var(ddof=0)) if len(rows) > 1 else 0.0
        out[f"{metric}_std"] = float((rows[f"{metric}_std"].pow(2).mean() + between) ** 0.5)
        out[f"{metric}_train_std"] = float(rows[metric].std(ddof=1)) if len(rows) > 1 else float("nan")
    for col in (c for c in rows.columns if c.startswith("auroc_") and pd.api.types.is_numeric_dtype(rows[c])):
        out[f"{col}_train_std"] = float(rows[col].std(ddof=1)) if len(rows) > 1 else float("nan")
    paper_sets = {s: out[f"auroc_{s}"] for s in PAPER_OOD_SETS if f"auroc_{s}" in out}
    if "auroc_worst" in out and paper_sets:  # the worst of the combined means, as metrics.ood_summary defines it
        out["worst_set"] = min(paper_sets, key=paper_sets.get)
        out["auroc_worst"] = paper_sets[out["worst_set"]]
    if "rollbacks" in rows:
        out["rollbacks"] = int(rows.rollbacks.sum())
        out["diverged"] = bool(rows.diverged.any())
    out["training_seeds"] = len(rows)
    out.pop("training_seed", None)
    return out


TIMED = ["speedup_interleaved", "speedup_lo", "speedup_hi", "speed_verdict"]  # interleaved_speedup's columns


def speed_columns(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The columns of :func:`speed_table` (saved as ``pruning_speed``), latency timed on ``device``
    (:func:`metrics.latency_columns`; without a device, the columns a reader requires)."""
    return (
        "strategy",
        "ratio",
        "variant",
        "params",
        "size_mb",
        *metrics_mod.latency_columns(device),
        "sgld_img_steps_per_s",
        "latency_batch",
        "hardware",
        "max_abs_energy_diff",
        *TIMED,
        "max_abs_energy_diff_finetuned",
        "param_fraction",
        "speedup_latency",
        "speedup_sgld",
    )


def speed_table(baseline_row: dict, pruning: pd.DataFrame, timings: pd.DataFrame) -> pd.DataFrame:
    """Tidy cost table: the dense baseline, each structured model as masked (dense tensors with
    zeros: the cost of its score row) and physically pruned (``timings``, from :func:`prune_sweep`).

    Speed-ups over the baseline: ``speedup_interleaved`` is the median latency ratio of the model
    timed interleaved with the dense baseline, ``speedup_lo``..``speedup_hi`` its spread from the
    quartiles and ``speed_verdict`` its verdict (the baseline, the reference, is 1x exactly);
    ``speedup_latency`` and ``speedup_sgld`` compare one-off timings of :meth:`Evaluator.score`,
    which carry no verdict."""
    lat = next(k for k in baseline_row if k.startswith("latency_ms_"))
    cols = ["params", "size_mb", lat, "sgld_img_steps_per_s"]
    base = {
        "strategy": "baseline",
        "ratio": 0.0,
        "variant": "dense",
        **{c: baseline_row[c] for c in cols},
        "speedup_interleaved": 1.0,
        "speedup_lo": 1.0,
        "speedup_hi": 1.0,
        "speed_verdict": "reference",
    }
    variant = timings.get("variant", pd.Series(index=timings.index, dtype=object))
    physical = timings[variant == "physical"]
    one_shot = results.one_shot(pruning)
    one_shot = one_shot[~one_shot.finetuned]
    masked = one_shot[one_shot.strategy.isin(physical.strategy.unique())][["strategy", "ratio", *cols]]
    timed = timings[variant == "masked"].reindex(columns=["strategy", "ratio", *TIMED])
    masked = masked.merge(timed, on=["strategy", "ratio"], how="left").assign(variant="masked")
    out = pd.concat([pd.DataFrame([base]), masked, physical], ignore_index=True)
    out["param_fraction"] = out.params / base["params"]
    out["speedup_latency"] = base[lat] / out[lat]
    out["speedup_sgld"] = out.sgld_img_steps_per_s / base["sgld_img_steps_per_s"]
    return out.reindex(columns=list(speed_columns(lat.removeprefix("latency_ms_"))))


def quality_table(rows: pd.DataFrame, keys: tuple[str, ...] = ("strategy", "ratio", "finetuned")) -> pd.DataFrame:
    """The pruning table as the notebook shows it: ``keys``, then :data:`TABLE_COLUMNS` - IS and
    FID with their spread over seeds (training seeds included where ``training_seeds`` > 1), the
    AUROC of each of the paper's OOD transforms and the worst of them, ``inverted`` naming the
    transforms whose AUROC is below chance, and the divergence guard's record (``rollbacks``,
    ``diverged``), then ``training_seeds`` when the rows have it."""
    out = rows.copy()
    aurocs = [f"auroc_{s}" for s in PAPER_OOD_SETS]
    out["inverted"] = [
        ", ".join(s for s, a in zip(PAPER_OOD_SETS, r) if verdicts.inverted(a))
        for r in out[aurocs].itertuples(index=False)
    ]
    for col in ("rollbacks", "diverged"):
        if col not in out:
            out[col] = 0 if col == "rollbacks" else False
    seeds = ["training_seeds"] if "training_seeds" in out else []
    return out[[*keys, *TABLE_COLUMNS, *seeds]].reset_index(drop=True)


# ---- lottery tickets --------------------------------------------------------------------
def early_weights(ctx: Context) -> tuple[dict[str, torch.Tensor], int]:
    """Weights of the baseline run at its rewind point (:func:`training.rewind_step`) and that
    step, from the snapshot the baseline's own training run saved there (not a replay)."""
    model, step = load_snapshot(ctx, "rewind")
    return {name: t.detach().clone() for name, t in model.state_dict().items()}, step


def rewind(model: nn.Module, early: dict[str, torch.Tensor]) -> nn.Module:
    """Load early weights into a (masked) model in place; masks stay, so pruned weights stay 0."""
    state = model.state_dict()
    with torch.no_grad():
        for key, value in early.items():
            path, _, leaf = key.rpartition(".")
            target = f"{path}.{leaf}_orig" if f"{path}.{leaf}_orig" in state else key
            if target not in state:
                raise KeyError(f"early checkpoint entry {key!r} has no counterpart in the model")
            state[target].copy_(value)
    return model


def lottery_ticket(
    ctx: Context,
    baseline: PCDTrainer,
    early: dict[str, torch.Tensor],
    strategy: str | Strategy,
    target: float,
    data: torch.Tensor,
    progress: bool = True,
    train: bool | None = None,
    commit: bool = False,
) -> tuple[nn.Module, pd.DataFrame]:
    """Iterative magnitude pruning with rewinding (Frankle et al.) to sparsity ``target``.

    ``profile.lottery_rounds`` rounds, each removing the same fraction of the weights still alive
    (cumulative ratio ``1 - (1 - target)^(r/R)``) by ranking the *trained* weights, then rewinding the
    survivors to ``early`` (:func:`early_weights`) and training them with :func:`finetune` (committed
    weights installed unless ``train``; with ``commit`` each trained round is committed, kind ``lottery``).
    The last round trains the ticket exactly as one-shot pruning plus fine-tuning trains the model it is
    compared with; the earlier rounds only choose the mask. Returns the final (masked) model and one
    row per round (:func:`_round_row`)."""
    s = get_strategy(strategy)
    rounds = ctx.profile.lottery_rounds
    if rounds < 1:
        raise ValueError(f"lottery_rounds must be at least 1, got {rounds}")
    model, log = copy_model(baseline.model), []
    buffer, parent = baseline.buffer, baseline.identity  # every round starts from the baseline's chains
    for r in tqdm(range(1, rounds + 1), desc="lottery rounds", disable=not progress):
        ratio = 1.0 - (1.0 - target) ** (r / rounds)
        apply_pruning(remove_masks(model), s, ratio)  # pruned weights are 0, so they are ranked first
        rewind(model, early)
        name = checkpoint_name(s, target, f"lottery_r{r}")
        record = dict(kind="lottery", strategy=s.key, ratio=ratio, round=r, target=target) if commit else None
        trainer, diverged = finetune(
            ctx, model, data, buffer, name, progress and commit, train=train, commit=record, parent=parent
        )
        model = trainer.model
        log.append(_round_row(r, ratio, trainer, diverged))
    return model, pd.DataFrame(log)


def _round_row(r: int, ratio: float, trainer: PCDTrainer, diverged: bool) -> dict:
    """One row of the lottery log: the round, its ratio and real sparsity, the iterations trained and the
    divergence guard's record."""
    return {
        "round": r,
        "ratio": ratio,
        "sparsity": sparsity(trainer.model),
        "iterations": trainer.step,
        "rollbacks": len(trainer.rollbacks),
        "diverged": diverged,
        "final_loss": float(trainer.history.loss.iloc[-1]),
    }


# ---- the divergence guard's record ------------------------------------------------------
def guard_status(row: pd.Series | dict) -> str | None:
    """``'diverged'`` (gave up; scored at its last good checkpoint), ``'rolled back'`` (the guard
    fired and training recovered) or None for a run the guard never touched."""
    if bool(row.get("diverged", False)):
        return "diverged"
    return "rolled back" if int(row.get("rollbacks", 0) or 0) > 0 else None
