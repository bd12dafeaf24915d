"""Figures of the series: image grids, SGLD chain strips, training curves, energy histograms.

Each function draws on a new (or given) matplotlib figure and, with ``save=path``, writes it as
a PNG so that ``figures/`` only holds what the committed code produces.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torchvision

from . import results, verdicts


def finish(fig: plt.Figure, title: str | None = None, save: str | Path | None = None) -> plt.Figure:
    """Give ``fig`` its title, tighten the layout and, with ``save``, write it as a PNG."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=110, bbox_inches="tight")
    return fig


def error_bars(ax, x, y, yerr=None, xerr=None, **kwargs) -> None:
    """``ax.errorbar`` with the series' conventions: an error column (a Series: a std over seeds, or
    an (2, n) array of lower and upper extents) that was never measured (all NaN) draws no bar, and
    single NaNs draw none for that point; defaults: round markers, small caps."""

    def clean(err):
        if err is None:
            return None
        arr = np.asarray(err, dtype=float)
        return None if np.isnan(arr).all() else np.nan_to_num(arr, nan=0.0)

    kwargs = {"marker": "o", "capsize": 2, **kwargs}
    ax.errorbar(x, y, yerr=clean(yerr), xerr=clean(xerr), **kwargs)


def image_grid(
    images: torch.Tensor, nrow: int = 10, title: str | None = None, save: str | Path | None = None, ax=None
) -> plt.Figure:
    """A grid of [-1, 1] images (N, 1, 28, 28)."""
    grid = torchvision.utils.make_grid(
        images.detach().float().cpu(), nrow=nrow, value_range=(-1, 1), normalize=True, pad_value=1
    )
    if ax is None:
        rows = -(-len(images) // nrow)
        fig, ax = plt.subplots(figsize=(nrow * 0.8, rows * 0.8 + 0.5))
    else:
        fig = ax.figure
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", interpolation="nearest")
    ax.axis("off")
    return finish(fig, title, save)


def chain_strip(
    chain: torch.Tensor,
    steps: list[int] | None = None,
    n_chains: int = 6,
    title: str | None = None,
    save: str | Path | None = None,
) -> plt.Figure:
    """Rows of SGLD chains (T, N, 1, 28, 28) from noise (left) to samples (right)."""
    T = chain.shape[0]
    n = min(n_chains, chain.shape[1])
    fig, axes = plt.subplots(n, T, figsize=(T * 0.7, n * 0.7 + 0.5), squeeze=False)
    for i in range(n):
        for t in range(T):
            ax = axes[i, t]
            ax.imshow(chain[t, i, 0].float().cpu().numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and steps is not None:
                ax.set_title(str(steps[t]), fontsize=7)
    return finish(fig, title, save)


def training_curves(
    history: pd.DataFrame, title: str | None = None, save: str | Path | None = None, smooth: int = 1
) -> plt.Figure:
    """Loss terms and mean energies of real and sampled images against the iteration."""
    h = history.set_index("step").rolling(max(1, smooth), min_periods=1).mean()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(h.index, h["loss"], label="loss")
    axes[0].plot(h.index, h["cd"], label="E(x+) - E(x-)")
    axes[0].plot(h.index, h["reg"], label="alpha (E+^2 + E-^2)")
    axes[0].set_title("loss terms")
    axes[1].plot(h.index, h["e_real"], label="E(real)")
    axes[1].plot(h.index, h["e_fake"], label="E(SGLD sample)")
    axes[1].set_title("mean energies")
    axes[2].plot(h.index, h["lr"])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("iteration")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return finish(fig, title, save)


def _overlapping(ranges: dict[str, tuple[float, float]], slack: float = 0.25) -> list[list[str]]:
    """Groups of names whose ranges overlap (each widened by ``slack`` of its width), in order of position."""
    groups: list[list[str]] = []
    hi = float("-inf")
    for name, (lo, up) in sorted(ranges.items(), key=lambda kv: kv[1][0]):
        pad = slack * max(up - lo, 1e-12)
        if groups and lo - pad <= hi:
            groups[-1].append(name)
        else:
            groups.append([name])
        hi = max(hi, up + pad) if len(groups[-1]) > 1 else up + pad
    return groups


def energy_histograms(
    energies: dict[str, torch.Tensor],
    title: str | None = None,
    save: str | Path | None = None,
    ax=None,
    bins_per_set: int = 40,
) -> plt.Figure:
    """Densities of -E (higher = more digit-like) for several image sets, each with
    ``bins_per_set`` bins over its own range (not shared bins, in which sets lying far apart fall
    into one bar each). Sets whose central ranges (5th to 95th percentile) overlap share a panel; sets
    far from the others (e.g. uniform noise) get their own panel, with its own x axis, so that every
    distribution is visible. With ``ax``, the sets that overlap the first one are drawn there and the
    others are named in the legend with their median, off the axis, so that a far set does not
    squeeze the rest into a spike."""
    values = {k: (-e).detach().float().cpu().numpy() for k, e in energies.items()}
    colours = {k: f"C{i}" for i, k in enumerate(values)}
    central = {k: (float(np.percentile(v, 5)), float(np.percentile(v, 95))) for k, v in values.items()}
    groups = _overlapping(central)
    off_axis: list[str] = []
    if ax is not None:
        first = next(iter(values))
        shown = next(g for g in groups if first in g)
        off_axis = [k for k in values if k not in shown]
        groups = [[k for k in values if k in shown]]
    if ax is None:
        widths = [1 + len(g) for g in groups]
        fig, axes = plt.subplots(
            1, len(groups), figsize=(3.2 * len(groups) + 2.5, 3.6), squeeze=False, gridspec_kw={"width_ratios": widths}
        )
        axes = list(axes[0])
    else:
        fig, axes = ax.figure, [ax]
    for a, group in zip(axes, groups):
        for name in group:
            v = values[name]
            span = float(v.max() - v.min())
            bins = max(5, min(bins_per_set, len(v) // 4))
            a.hist(
                v,
                bins=bins,
                range=None if span > 0 else (v[0] - 0.5, v[0] + 0.5),
                density=True,
                histtype="stepfilled",
                alpha=0.35,
                color=colours[name],
                edgecolor=colours[name],
                lw=1.2,
                label=f"{name} (n={len(v)}, median {float(pd.Series(v).median()):.3g})",
            )
        a.set_xlabel("-E(x)  (higher = more digit-like)")
        for name in off_axis:
            a.plot([], [], " ", label=f"{name}: off this axis, median {float(np.median(values[name])):.3g}")
        a.legend(fontsize=7)
    axes[0].set_ylabel("density (per set)")
    return finish(fig, title, save)


def quality_vs_steps(
    study: pd.DataFrame,
    references: dict[str, dict[str, float]] | None = None,
    title: str | None = None,
    save: str | Path | None = None,
) -> plt.Figure:
    """FID and IS (error bars: std over seeds) against SGLD steps, one line per model (colour) and
    step size (line style) in a :func:`~ebmhelpers.metrics.steps_study` table; ``references``
    (label -> {"IS", "FID"}) are drawn as horizontal lines (e.g. real digits, uniform noise, the replay buffer)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sizes = sorted(study.step_size.unique())
    colours = {name: f"C{i}" for i, name in enumerate(study.model.unique())}
    for ax, metric in zip(axes, ("FID", "IS")):
        for (name, size), part in study.groupby(["model", "step_size"], sort=False):
            label = name if len(sizes) == 1 else f"{name}, step size {size:g}"
            error_bars(
                ax,
                part.steps,
                part[metric],
                part[f"{metric}_std"],
                capsize=3,
                label=label,
                color=colours[name],
                ls=("-", "--", ":", "-.")[sizes.index(size) % 4],
            )
        for i, (label, ref) in enumerate((references or {}).items()):
            ax.axhline(ref[metric], ls=(0, (4, 2 + i)), lw=1, color=f"C{7 + i % 3}", label=label)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="SGLD steps from uniform noise", ylabel=metric)
        if metric == "FID":
            ax.set_yscale("log")
    axes[1].legend(fontsize=7, loc="best")
    axes[0].set_title("FID (lower is better)", fontsize=9)
    axes[1].set_title("Inception Score (higher is better)", fontsize=9)
    return finish(fig, title, save)


def training_length(study: pd.DataFrame, title: str | None = None, save: str | Path | None = None) -> plt.Figure:
    """Validation FID and IS against training compute (iterations x K, the SGLD steps of a training
    batch, so that recipes with different K compare at equal cost), one colour per recipe, solid for
    digits generated from noise and dashed for the replay buffer (a ``training_length_study.csv`` table);
    a run's weight averages (column ``weights``, e.g. ``ema0.9995``) from noise are dotted lines of their own."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    colours = {name: f"C{i}" for i, name in enumerate(study.recipe.unique())}
    study = study.assign(weights=study.get("weights", pd.Series(index=study.index, dtype=object)).fillna("trained"))
    styles = {"trained": "-"}
    for ax, metric in zip(axes, ("FID", "IS")):
        for (recipe, samples, weights), part in study.groupby(["recipe", "samples", "weights"], sort=False):
            part = part.sort_values("step")
            buffer = samples != "from noise"
            ls = "--" if buffer else styles.setdefault(weights, ":" if len(styles) == 1 else "-.")
            label = f"{recipe}: {samples}" + ("" if buffer or weights == "trained" else f", {weights}")
            ax.plot(
                part.step * part.K / 1000, part[metric], marker="o", ms=4, color=colours[recipe], ls=ls, label=label
            )
        ax.set(
            xlabel="training compute: iterations x K (thousand SGLD steps of a batch)",
            ylabel=f"{metric} (validation digits)",
        )
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7, loc="best")
    axes[0].set_title("FID (lower is better)", fontsize=9)
    axes[1].set_title("Inception Score (higher is better)", fontsize=9)
    return finish(fig, title, save)


def labelled_grids(
    grids: dict[str, torch.Tensor],
    nrow: int = 10,
    n: int = 30,
    title: str | None = None,
    save: str | Path | None = None,
    ncols: int = 3,
) -> plt.Figure:
    """Image grids, each with its label (e.g. its IS and FID) as a title, at most ``ncols`` side by
    side and the rest in further rows, so that many grids make a readable page, not a long strip."""
    rows = -(-min(n, max(len(g) for g in grids.values())) // nrow)
    cols = min(ncols, len(grids))
    lines = -(-len(grids) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(0.5 * nrow * cols + 0.5, (0.5 * rows + 0.6) * lines), squeeze=False)
    for ax in axes.flat[len(grids) :]:
        ax.axis("off")
    for ax, (label, images) in zip(axes.flat, grids.items()):
        image_grid(images[:n], nrow=nrow, ax=ax)
        ax.set_title(label, fontsize=8)
    return finish(fig, title, save)


def sampling_budget(
    budget: pd.DataFrame, gen_steps: int, title: str | None = None, save: str | Path | None = None
) -> plt.Figure:
    """FID (error bars: std over seeds) and the time of one chain against the SGLD steps K, for a
    :func:`budget.sampling_budget` table: one colour per model in both panels, one line style per
    step rule; a dotted line at the profile's ``gen_steps``."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    colours = {model: f"C{i}" for i, model in enumerate(budget.model.unique())}
    styles = {rule: ("-", "--", ":", "-.")[i % 4] for i, rule in enumerate(budget.rule.unique())}
    for (model, rule), g in budget.groupby(["model", "rule"], sort=False):
        g = g.sort_values("K")
        error_bars(axes[0], g.K, g.FID, g.FID_std, color=colours[model], ls=styles[rule], label=f"{model}, {rule}")
    for model, g in budget.drop_duplicates(["model", "K"]).groupby("model", sort=False):
        g = g.sort_values("K")
        axes[1].plot(g.K, g.seconds, marker="o", color=colours[model], label=model)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.axvline(gen_steps, color="gray", ls=":", lw=1)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[0].set(xlabel="SGLD steps K", ylabel="FID")
    axes[1].set(xlabel="SGLD steps K", ylabel="seconds per chain")
    return finish(fig, title, save)


def row_labelled_grid(
    rows: dict[str, torch.Tensor], n: int = 8, title: str | None = None, save: str | Path | None = None
) -> plt.Figure:
    """One row of ``n`` [-1, 1] images per entry of ``rows``, its label written to the left of it."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.8 * n + 2.2, 0.85 * len(rows) + 0.5), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        image_grid(images[:n], nrow=n, ax=ax)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    return finish(fig, title, save)


def masked_at_dense_size(table: pd.DataFrame, size: str = "size_mb") -> pd.Series:
    """Pruned rows (``family == "pruning"``) whose size is the baseline's: masked models (pruned
    weights kept as zeros in dense tensors), whose file is as large as the dense model's."""
    base = table.loc[table.family == "baseline", size]
    if base.empty:
        return pd.Series(False, index=table.index)
    return (table.family == "pruning") & (table[size] >= 0.999 * float(base.iloc[0]))


def _legible_log_x(ax, axis: str = "x") -> None:
    """Log x axis (``axis="y"``: y axis) with plain-number labels at 1, 2, 5 x 10^k only (no crowded minor labels)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    scale = getattr(ax, f"{axis}axis")
    scale.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    scale.set_major_formatter(FormatStrFormatter("%g"))
    scale.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="both", labelsize=8)


def pareto_plot(
    table: pd.DataFrame,
    panels: list[tuple[str, str, bool]],
    title: str | None = None,
    save: str | Path | None = None,
    labels: dict[str, str] | None = None,
) -> plt.Figure:
    """Quality against cost, one panel per ``(cost, quality, lower_is_better)``, colour and marker
    per family, error bars (``<quality>_std``; on the cost axis ``<cost>_lo``..``<cost>_hi`` where
    the table has them, e.g. the quartile spread of an interleaved timing) and the Pareto front
    (dashed) through the models that generate (column ``generates``, :func:`verdicts.generates`);
    the others are drawn hollow and never on the front. On a size axis (``cost`` ending in
    ``size_mb``) masked pruned models (:func:`masked_at_dense_size`) are left out, as the legend
    says: their file is the dense model's size, which says nothing of what pruning saved. Rows
    without the cost (e.g. no interleaved timing) are left out and counted in the legend.
    ``labels`` maps a column to its axis label (default: the column name)."""
    families = list(dict.fromkeys(table.family))
    markers = dict(zip(families, "oXsP^vD*"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5.5), squeeze=False)
    for ax, (cost, quality, lower_better) in zip(axes[0], panels):
        shown = table.dropna(subset=[cost, quality])
        untimed = len(table.dropna(subset=[quality])) - len(shown)
        left_out = masked_at_dense_size(shown) if cost.endswith("size_mb") else pd.Series(False, index=shown.index)
        shown = shown[~left_out]
        if shown.empty:
            ax.text(0.5, 0.5, f"no {quality} in the saved results", ha="center", transform=ax.transAxes)
            continue
        gen = shown.generates.astype(bool) if "generates" in shown else pd.Series(True, index=shown.index)
        for i, fam in enumerate(families):
            for alive in (True, False):
                d = shown[(shown.family == fam) & (gen == alive)]
                if not d.empty:
                    ax.scatter(
                        d[cost],
                        d[quality],
                        marker=markers[fam],
                        s=50,
                        zorder=3,
                        label=fam if alive else f"{fam}: does not generate",
                        color=f"C{i}" if alive else "none",
                        edgecolors=f"C{i}",
                    )
        xerr = None
        if f"{cost}_lo" in shown and f"{cost}_hi" in shown:
            xerr = np.clip([shown[cost] - shown[f"{cost}_lo"], shown[f"{cost}_hi"] - shown[cost]], 0, None)
        error_bars(
            ax,
            shown[cost],
            shown[quality],
            shown.get(f"{quality}_std"),
            xerr=xerr,
            fmt="none",
            ecolor="gray",
            lw=1,
            marker=None,
        )
        front = verdicts.pareto_front(shown[gen], cost, quality, lower_better)
        ax.step(front[cost], front[quality], "k--", where="post", lw=1, label="Pareto front (models that generate)")
        if left_out.any():
            ax.plot(
                [],
                [],
                ls="none",
                label=f"not shown: {int(left_out.sum())} masked pruned model(s)\n"
                "(zeros stored densely: file = dense size)",
            )
        if untimed:
            ax.plot([], [], ls="none", label=f"not shown: {untimed} model(s) without {(labels or {}).get(cost, cost)}")
        if quality.startswith("auroc"):
            ax.axhline(verdicts.CHANCE_AUROC, color="red", ls=":", lw=1, label="chance (below: inverted)")
            ax.set_ylim(-0.02, 1.02)
        _legible_log_x(ax)
        ax.set(xlabel=(labels or {}).get(cost, cost), ylabel=(labels or {}).get(quality, quality))
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: points stay visible
    return finish(fig, title, save)


# ---- pruning (notebook 04) ----------------------------------------------------------------
UNSTABLE_STYLE = {  # how fine-tuning runs the divergence guard had to act on are marked
    "rolled back": {"marker": "D", "s": 110, "facecolors": "none", "edgecolors": "k", "linewidths": 1.2},
    "diverged": {"marker": "o", "s": 190, "facecolors": "none", "edgecolors": "crimson", "linewidths": 1.8},
}
NO_GENERATION_STYLE = {"marker": "x", "s": 60, "color": "0.35", "linewidths": 1.2, "zorder": 4}
NO_GENERATION_LABEL = "does not generate: IS or FID beyond the dashed red line (crossed out on every panel)"


def strategy_palette() -> dict[str, tuple]:
    """One colour per pruning strategy from the colour-blind palette, skipping its second orange (vermillion)."""
    import seaborn as sns

    from .pruning import STRATEGIES

    colours = sns.color_palette("colorblind", 10)
    return dict(zip(STRATEGIES, [colours[i] for i in (0, 1, 2, 4)]))


def _mark_unstable(ax: plt.Axes, d: pd.DataFrame, x: str, y: str, seen: set[str]) -> None:
    """Overlay the :data:`UNSTABLE_STYLE` marker on rows of ``d`` whose fine-tuning rolled back
    or diverged (:func:`pruning.guard_status`); each kind gets one legend entry per axes."""
    from .pruning import guard_status

    status = d.apply(guard_status, axis=1) if len(d) else pd.Series(dtype=object)
    for kind, style in UNSTABLE_STYLE.items():
        hit = d[status == kind]
        if not hit.empty:
            note = " (scored at its last good checkpoint)" if kind == "diverged" else " (guard fired, recovered)"
            label = None if kind in seen else f"fine-tuning {kind}{note}"
            ax.scatter(hit[x], hit[y], zorder=4, label=label, **style)
            seen.add(kind)


def figure2_references(pruning: pd.DataFrame, refs: verdicts.References | None = None) -> verdicts.References:
    """``refs`` when given, else :meth:`verdicts.References.for_profile` of the rows' ``profile``
    column (``EBM_PROFILE`` when the table has none); rows of several profiles need explicit ``refs``."""
    if refs is not None:
        return refs
    profiles = pruning["profile"].dropna().unique().tolist() if "profile" in pruning else []
    if len(profiles) > 1:
        raise ValueError(f"rows of several profiles {profiles}: pass refs explicitly")
    return verdicts.References.for_profile(profiles[0] if profiles else None)


def plot_figure2(
    pruning: pd.DataFrame,
    baseline_row: dict,
    title: str | None = None,
    save=None,
    refs: verdicts.References | None = None,
) -> plt.Figure:
    """The paper's Figure 2: one panel per metric of :data:`pruning.QUALITY_METRICS` (FID, IS and the
    AUROC of each OOD transform) against the pruning ratio, one line per strategy (dashed with
    hollow markers after fine-tuning), lottery tickets as stars, the baseline as a dotted line.
    IS and FID carry error bars (std over the evaluator's seeds) when more than one seed was
    scored. Fine-tuning runs that rolled back or diverged are ringed (see :data:`UNSTABLE_STYLE`).
    Models that do not generate (:func:`verdicts.generates` against ``refs``, by default the
    references of the rows' ``profile``, :func:`figure2_references`) are crossed out on every panel
    (:data:`NO_GENERATION_STYLE`), and the IS and FID panels draw where generating starts (IS above
    :attr:`~verdicts.References.is_min`, FID below :attr:`~verdicts.References.fid_max`); AUROC
    panels draw chance (0.5): below it the detector is inverted."""
    from .pruning import CHANCE_AUROC, ERROR_BARS, QUALITY_METRICS, STRATEGIES

    refs = figure2_references(pruning, refs)
    colors = strategy_palette()
    n = len(QUALITY_METRICS)
    cols = 3
    fig, axes = plt.subplots(-(-(n + 1) // cols), cols, figsize=(4.2 * cols, 3.5 * -(-(n + 1) // cols)))
    axes = axes.flatten()
    one_shot = results.one_shot(pruning)
    lottery = pruning[pruning.method == "lottery"]
    drawn = pd.concat(
        [
            one_shot[one_shot.strategy.isin(STRATEGIES)],
            lottery[lottery.strategy.isin([f"lottery_{k}" for k in STRATEGIES])],
        ]
    )
    silent = drawn[~drawn.apply(verdicts.generates, axis=1, refs=refs).astype(bool)] if len(drawn) else drawn
    for ax, (metric, label) in zip(axes, QUALITY_METRICS.items()):
        seen: set[str] = set()
        for key, s in STRATEGIES.items():
            for tuned, style in ((False, "-"), (True, "--")):
                d = one_shot[(one_shot.strategy == key) & (one_shot.finetuned == tuned)].sort_values("ratio")
                if not d.empty:
                    error_bars(
                        ax,
                        d.ratio,
                        d[metric],
                        yerr=d.get(ERROR_BARS.get(metric)),
                        fmt=style,
                        ms=5,
                        color=colors[key],
                        mfc="none" if tuned else colors[key],
                        label=s.label + (" + fine-tuned" if tuned else ""),
                    )
            t = lottery[lottery.strategy == f"lottery_{key}"]
            if not t.empty:
                error_bars(ax, t.ratio, t[metric], yerr=t.get(ERROR_BARS.get(metric)), fmt="none", color=colors[key])
                ax.scatter(
                    t.ratio,
                    t[metric],
                    marker="*",
                    s=140,
                    color=colors[key],
                    edgecolors="k",
                    linewidths=0.5,
                    zorder=3,
                    label=f"{s.label}: lottery ticket",
                )
        _mark_unstable(ax, pruning[pruning.finetuned.astype(bool)], "ratio", metric, seen)
        crossed = silent.dropna(subset=[metric])
        if not crossed.empty:
            ax.scatter(crossed.ratio, crossed[metric], label=NO_GENERATION_LABEL, **NO_GENERATION_STYLE)
        base, spread = baseline_row[metric], baseline_row.get(ERROR_BARS.get(metric, ""), float("nan"))
        ax.axhline(base, color="0.3", ls=":", label="baseline")
        if pd.notna(spread):
            ax.axhspan(base - spread, base + spread, color="0.3", alpha=0.12, lw=0)
        floor = {"IS": "is_min", "FID": "fid_max"}.get(metric)
        if floor:
            ax.axhline(
                getattr(refs, floor),
                color="crimson",
                lw=0.8,
                ls="--",
                label="generates: IS above, FID below the dashed red line",
            )
        if metric.startswith("auroc_"):
            ax.axhline(CHANCE_AUROC, color="crimson", lw=0.8, ls="-.", label="chance (below: inverted)")
            ax.set_ylim(0, 1.02)
        if metric == "FID":  # FID spans orders of magnitude between the baseline and heavy pruning
            ax.set_yscale("log")
        ax.set(xlabel="pruning ratio", title=label + (" (log scale)" if metric == "FID" else ""), xlim=(0, 1))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    handles: dict[str, object] = {}
    for ax in axes[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    for ax in axes[n:]:
        ax.axis("off")
    axes[n].legend(handles.values(), handles.keys(), fontsize=7, loc="center")
    return finish(fig, title, save)


def _speed_points(speed: pd.DataFrame, quality: pd.DataFrame, metric: str, refs) -> pd.DataFrame:
    """The timed models of a :func:`pruning.speed_table` (masked and physical) with their one-shot
    score rows, before and after fine-tuning (``finetuned``), ``generates`` by :func:`verdicts.generates`."""
    q = results.one_shot(quality)
    keep = ["strategy", "ratio", "finetuned", "IS", "FID", metric, "rollbacks", "diverged"]
    d = speed[speed.variant.isin(["masked", "physical"])].merge(q[list(dict.fromkeys(keep))], on=["strategy", "ratio"])
    return d.assign(generates=d.apply(verdicts.generates, axis=1, refs=refs) if len(d) else pd.Series(dtype=bool))


def plot_speedup(
    speed: pd.DataFrame,
    quality: pd.DataFrame,
    baseline_row: dict,
    title: str | None = None,
    save=None,
    refs: verdicts.References | None = None,
) -> plt.Figure:
    """Quality (FID, worst OOD AUROC) against the latency speed-up over the dense baseline, timed
    interleaved with it (:func:`pruning.interleaved_speedup`): the median ratio, with horizontal
    error bars from the quartiles. Masked models (squares) run dense kernels; physically pruned ones
    (circles) have the same quality, hollow after fine-tuning (ringed when that fine-tuning rolled
    back or diverged). Models that do not generate (:func:`verdicts.generates` against ``refs``,
    by default the rows' profile's) are crossed out, without their ratio's label, and
    the Pareto front (dashed) is drawn through the baseline and the models that generate only.
    Models without an interleaved timing are left out, as the legend says."""
    from .pruning import CHANCE_AUROC, METRIC_LABELS, STRATEGIES

    colors = strategy_palette()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    x = "speedup_interleaved"
    for ax, metric in zip(axes, ("FID", "auroc_worst")):
        seen: set[str] = set()
        points = _speed_points(speed, quality, metric, refs)
        untimed = int(points[x].isna().sum()) if x in points else len(points)
        points = points.dropna(subset=[x]) if x in points else points.iloc[:0]
        for (variant, key, tuned), g in points.groupby(["variant", "strategy", "finetuned"]):
            label = f"{STRATEGIES[key].label}, {variant}" + (" + ft" if tuned else "")
            err = np.clip([g[x] - g.speedup_lo, g.speedup_hi - g[x]], 0, None)
            ax.errorbar(g[x], g[metric], xerr=err, fmt="none", ecolor=colors[key], lw=0.8, capsize=2)
            ax.scatter(
                g[x],
                g[metric],
                marker="s" if variant == "masked" else "o",
                s=36,
                label=label,
                color="none" if tuned else colors[key],
                edgecolors=colors[key],
                zorder=3,
            )
            for _, r in g[g.generates.astype(bool)].iterrows():  # ratios named where they still generate only
                ax.annotate(f"{r.ratio:.0%}", (r[x], r[metric]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        _mark_unstable(ax, points[points.finetuned.astype(bool)], x, metric, seen)
        silent = points[~points.generates.astype(bool)]
        if not silent.empty:
            ax.scatter(silent[x], silent[metric], label="does not generate: off the front", **NO_GENERATION_STYLE)
        base = pd.DataFrame([{x: 1.0, metric: baseline_row[metric], "slowdown": 1.0}])
        alive = points[points.generates.astype(bool)].assign(slowdown=lambda t: 1 / t[x])
        candidates = pd.concat([base, alive[[x, metric, "slowdown"]]], ignore_index=True)
        front = verdicts.pareto_front(candidates, "slowdown", metric, metric == "FID").sort_values(x)
        ax.step(front[x], front[metric], "k--", where="pre", lw=1, label="Pareto front (models that generate)")
        ax.scatter([1.0], [baseline_row[metric]], marker="*", s=120, color="k", label="baseline (1x)", zorder=3)
        if untimed:
            ax.plot([], [], ls="none", label=f"not shown: {untimed} model(s) without an interleaved timing")
        if metric.startswith("auroc_"):
            ax.axhline(CHANCE_AUROC, color="crimson", lw=0.8, ls="-.", label="chance (below: inverted)")
        if metric == "FID":
            ax.set_yscale("log")
        ax.set(
            xlabel="latency speed-up over the baseline (x), interleaved median; bars: quartiles",
            title=METRIC_LABELS[metric],
        )
        ax.xaxis.label.set_fontsize(8)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: points stay visible
    return finish(fig, title, save)


def plot_layer_sparsity(tables: dict[str, pd.DataFrame], title: str | None = None, save=None) -> plt.Figure:
    """Fraction of zero weights per layer for each pruning strategy (where each strategy puts its cuts)."""
    from .pruning import STRATEGIES

    colors = strategy_palette()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(tables)
    for i, (key, t) in enumerate(tables.items()):
        xs = [j + i * width for j in range(len(t))]
        ax.bar(xs, t.sparsity, width, color=colors[key], label=STRATEGIES[key].label)
    first = next(iter(tables.values()))
    names = [f"{r.layer}\n{r.kind}\n{r.weights:,} weights" for r in first.itertuples()]
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(first))], names, fontsize=8)
    ax.set_xlabel("prunable layer (module name, kind, number of weights)")
    ax.set(ylabel="fraction of zero weights", ylim=(0, 1))
    ax.legend(fontsize=7)
    return finish(fig, title, save)


DODGE = 1.04  # plot_distill_study: the factor between neighbouring objectives' x positions at one size (log axis)


def plot_distill_study(summary: pd.DataFrame, title: str | None = None, save: str | Path | None = None) -> plt.Figure:
    """The distillation-objectives study (an :func:`objective_study.summarize` table with its teacher
    and noise rows): FID (log axis) and IS against the student's parameters (log axis), one line per
    objective, the mean over training seeds with error bars (``FID_std``, ``IS_std``), the objectives
    side by side at each size (x shifted by factors of :data:`DODGE`); markers are hollow where the
    student does not generate. The teacher (also a star at its size) and uniform
    noise are horizontal lines, and where generating starts (:func:`verdicts.generates` against those
    two rows, :func:`objective_study.references`) a dotted line, the side that does not generate shaded."""
    from . import objective_study as study

    refs, gen = study.references(summary), study.generating(summary)
    rows = study.students(summary).sort_values("params")
    ends = {name: study.reference_row(summary, name) for name in study.REFERENCE_ROWS}
    # (column, axis label, where generating starts, whether generating lies below it, number format)
    panels = (
        ("FID", "FID (lower is better)", refs.fid_max, True, ",.0f"),
        ("IS", "IS (higher is better)", refs.is_min, False, ".2f"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (col, label, threshold, below, digits) in zip(axes[0], panels):
        groups = list(rows.groupby("objective", sort=False))
        for i, (_, part) in enumerate(groups):
            colour, alive = f"C{i % 10}", gen[part.index]
            x = part.params * DODGE ** (i - (len(groups) - 1) / 2)  # side by side at each size
            error_bars(ax, x, part[col], part[f"{col}_std"], color=colour, marker=None, label=part.label.iloc[0])
            ax.scatter(x[alive], part[col][alive], color=colour, s=30, zorder=3)
            ax.scatter(x[~alive], part[col][~alive], color="none", edgecolors=colour, s=30, zorder=3)
        for (name, row), (colour, ls) in zip(ends.items(), (("k", "--"), ("r", "-."))):
            ax.axhline(row[col], color=colour, ls=ls, lw=1, label=f"{name} ({row[col]:{digits}})")
        teacher = ends[study.TEACHER]
        ax.scatter([teacher.params], [teacher[col]], marker="*", s=120, color="k", zorder=3)
        sign = "<" if below else ">"
        ax.axhline(threshold, color="0.3", ls=":", lw=1.2, label=f"generates: {col} {sign} {threshold:{digits}}")
        if col == "FID":
            _legible_log_x(ax, "y")
        lo, hi = ax.get_ylim()
        ax.axhspan(*((threshold, hi) if below else (lo, threshold)), color="0.92", zorder=0)
        ax.set_ylim(lo, hi)
        if (~gen).any():
            ax.scatter([], [], color="none", edgecolors="0.3", label="hollow: does not generate")
        _legible_log_x(ax)
        ax.set(xlabel="parameters (star: the teacher)", ylabel=label)
        ax.grid(alpha=0.3, which="major")
        # below each panel: its own reference lines (their values differ per metric); the objectives once, at the right
        refs_here = [(h, n) for h, n in zip(*ax.get_legend_handles_labels()) if n not in set(rows.label)]
        ax.legend(*zip(*refs_here), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    objectives = [(h, n) for h, n in zip(*axes[0][0].get_legend_handles_labels()) if n in set(rows.label)]
    fig.legend(*zip(*objectives), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="objective")
    return finish(fig, title, save)
