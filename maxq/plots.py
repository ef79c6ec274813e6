"""One function per figure: DataFrames (from :mod:`maxq.results`) in, matplotlib Figure out.

Nothing here reads or knows run directories; :func:`save_figure` writes PNG and SVG atomically.
Every function accepts empty input and then draws a figure saying so, so a report renders even
before any run has finished.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# the shared pieces and the mask figures live in their own modules; their public names (and the
# helpers other modules use) stay importable from here
from maxq.figure_base import (FALLBACK_COLORS, FORMATS, _color, _empty,  # noqa: F401
                              _fallback_colors, _grid, _label, method_color, palette, plt,
                              save_figure)
from maxq.mask_figures import (MASK_FONT, MASK_WIDTH, Window, block_view,  # noqa: F401
                               mask_compare, mask_detail, mask_evolution, mask_heatmaps,
                               mask_matrix, mask_window, nm_block_share, window_text)
from maxq import records  # noqa: I001 - after figure_base, which picks the backend
from maxq.methods import is_dense, is_maxq

#: the figures of a study report: file stem → what it shows
REPORT_FIGURES = {
    "accuracy_vs_paper": "best-epoch top-1/top-5 per row, ours (mean ± std) vs the paper",
    "training_curves": "validation top-1 per epoch, incremental window shaded",
    "nm_share_per_layer": "share of N:M blocks per layer vs epoch",
    "flipped_per_layer": "fraction of mask entries flipped since the previous epoch, per layer",
    "soft_histograms": "soft-mask value histograms over epochs",
    "mask_heatmaps": "soft masks of selected layers at snapshot epochs",
    "schedule_curves": "share of N:M blocks 1 − ρ(t) of every incremental schedule",
    "ablation_bars": "best top-1 per arm, mean with 95 % CI over seeds, verdict vs baseline",
    "accuracy_vs_flops": "top-1 (mean, 95 % CI) against GFLOPs per image, one line per method",
    "top1_bars": "best top-1 per row and method, mean with 95 % CI over seeds (axis from 0)",
    "paired_differences": "seed-paired MaxQ − SR-STE per row, mean with 95 % CI",
}


# ----------------------------------------------------------------------------- accuracy
def accuracy_vs_paper(runs: pd.DataFrame, *, title: str = "") -> Figure:
    """Best-epoch top-1 (and top-5) per table row: ours as mean ± std over seeds per method,
    the paper's number as a black star."""
    runs = runs[runs["finished"].astype(bool)] if len(runs) else runs
    if not len(runs):
        return _empty(title or "accuracy vs paper")
    rows = list(dict.fromkeys(runs["row"]))
    methods = list(dict.fromkeys(runs["method"]))
    metrics = [m for m in ("top1", "top5") if runs[f"best_{m}"].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6, 0.9 * len(rows) + 3) *
                                                       len(metrics) / 1.3, 4.2), squeeze=False)
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(methods))
    for ax, metric in zip(axes[0], metrics):
        for i, method in enumerate(methods):
            sub = runs[runs["method"] == method].groupby("row")[f"best_{metric}"]
            mean = sub.mean().reindex(rows)
            std = sub.std(ddof=1).reindex(rows).fillna(0.0)
            offset = (i - (len(methods) - 1) / 2) * width
            ax.errorbar(x + offset, mean.values, yerr=std.values, fmt="o", capsize=3,
                        color=_color(method, methods), label=f"ours: {_label(runs, method)}")
        paper = runs.groupby("row")[f"paper_{metric}"].first().reindex(rows)
        if paper.notna().any():
            ax.plot(x, paper.values, "k*", markersize=11, label="paper (ImageNet)")
        ax.set_xticks(x, rows, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"best {metric.replace('top', 'top-')} (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Accuracy: ours vs the paper")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- curves
def training_curves(epochs: pd.DataFrame, runs: pd.DataFrame | None = None, *,
                    metric: str = "val_top1", ncols: int = 4, title: str = "") -> Figure:
    """``metric`` vs epoch, one panel per table row, one line per run (colour = method); the
    incremental window (increase_start..increase_end, from ``runs``) shaded; the model-wide
    share of N:M blocks (``nm_share``) dashed on a second axis, so the dip and recovery while
    the share grows is visible."""
    if not len(epochs) or metric not in epochs.columns:
        return _empty(title or "training curves")
    rows = list(dict.fromkeys(epochs["row"]))
    methods = list(dict.fromkeys(epochs["method"]))
    fig, axes = _grid(len(rows), ncols)
    info = runs.set_index("run") if runs is not None and len(runs) else None
    for ax, row in zip(axes.flat, rows):
        sub = epochs[epochs["row"] == row]
        share_ax = None
        for run, curve in sub.groupby("run", sort=False):
            method = curve["method"].iloc[0]
            curve = curve.sort_values("epoch")
            ax.plot(curve["epoch"], curve[metric], marker=".", color=_color(method, methods),
                    label=f"{_label(runs if runs is not None else sub, method)} "
                          f"s{curve['seed'].iloc[0]}")
            if "nm_share" in curve.columns and curve["nm_share"].notna().any() \
                    and is_maxq(method):
                share_ax = share_ax or ax.twinx()
                share_ax.plot(curve["epoch"], curve["nm_share"], ls="--", lw=1,
                              color=_color(method, methods), alpha=0.6)
        if info is not None:
            window = _window(info, sub["run"].iloc[0])
            if window and window[1] > window[0]:
                ax.axvspan(window[0], window[1], color="grey", alpha=0.15,
                           label="incremental window")
        if share_ax is not None:
            share_ax.set_ylim(-0.05, 1.05)
            share_ax.set_ylabel("share of N:M blocks (dashed)", fontsize=7)
        ax.set_title(row, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric.replace("_", " ").replace("top", "top-") + " (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return fig


def _window(info: pd.DataFrame, run: str) -> tuple[float, float] | None:
    try:
        start, end = float(info.loc[run, "increase_start"]), float(info.loc[run, "increase_end"])
    except (KeyError, TypeError, ValueError):
        return None
    if math.isnan(start) or math.isnan(end):
        return None
    return start, end


# ----------------------------------------------------------------------------- per layer
def _runs_of(layers: pd.DataFrame, runs: Sequence[str] | None) -> list[str]:
    available = list(dict.fromkeys(layers["run"])) if len(layers) else []
    return [r for r in (runs if runs is not None else available) if r in available]


def nm_share_per_layer(layers: pd.DataFrame, runs: Sequence[str] | None = None, *,
                       ncols: int = 2, title: str = "") -> Figure:
    """Share of N:M blocks per layer vs epoch, one panel per run, one line per layer (colour =
    depth)."""
    picked = _runs_of(layers, runs)
    if not picked:
        return _empty(title or "share of N:M blocks per layer")
    fig, axes = _grid(len(picked), ncols, (5.5, 3.5), sharey=True)
    for ax, run in zip(axes.flat, picked):
        sub = layers[layers["run"] == run]
        names = list(dict.fromkeys(sub["layer"]))
        cmap = plt.get_cmap("viridis")
        for i, name in enumerate(names):
            curve = sub[sub["layer"] == name].sort_values("epoch")
            ax.plot(curve["epoch"], curve["nm_share"], color=cmap(i / max(1, len(names) - 1)),
                    lw=1, alpha=0.8)
        ax.set_title(run, fontsize=8)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("share of N:M blocks")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(1, len(names) - 1)))
        fig.colorbar(sm, ax=ax, label="layer index (depth)")
    fig.suptitle(title or "Share of N:M blocks per layer")
    fig.tight_layout()
    return fig


def flipped_per_layer(layers: pd.DataFrame, runs: Sequence[str] | None = None, *,
                      ncols: int = 2, title: str = "") -> Figure:
    """Fraction of mask entries flipped since the previous epoch: a layer × epoch heatmap per
    run (log colour scale)."""
    picked = _runs_of(layers, runs)
    if not picked:
        return _empty(title or "mask entries flipped per epoch")
    fig, axes = _grid(len(picked), ncols, (5.5, 4.0))
    from matplotlib.colors import LogNorm, Normalize

    for ax, run in zip(axes.flat, picked):
        sub = layers[layers["run"] == run]
        table = sub.pivot_table(index="layer", columns="epoch", values="flipped", sort=False)
        table = table.reindex(list(dict.fromkeys(sub["layer"])))
        values = table.to_numpy(dtype=float)
        positive = values[np.isfinite(values) & (values > 0)]
        if positive.size and positive.max() / positive.min() > 20:     # wide range: log scale
            vmin, vmax = max(1e-6, positive.min()), positive.max()
            norm = LogNorm(vmin=vmin, vmax=vmax)
            shown = np.clip(np.nan_to_num(values, nan=vmin), vmin, vmax)
        else:
            norm = Normalize(vmin=0.0, vmax=max(1e-6, positive.max() if positive.size else 1.0))
            shown = np.nan_to_num(values, nan=0.0)
        image = ax.imshow(np.ma.masked_invalid(np.where(np.isfinite(values), shown, np.nan)),
                          aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns], fontsize=7)
        step = max(1, len(table.index) // 12)
        ax.set_yticks(range(0, len(table.index), step), list(table.index)[::step], fontsize=6)
        ax.set_xlabel("epoch")
        ax.set_title(run, fontsize=8)
        fig.colorbar(image, ax=ax, label="fraction flipped")
    fig.suptitle(title or "Mask entries flipped since the previous epoch")
    fig.tight_layout()
    return fig


def soft_histograms(layers: pd.DataFrame, runs: Sequence[str] | None = None, *,
                    edges: Sequence[float] = records.HIST_EDGES, max_epochs: int = 6,
                    ncols: int = 2, title: str = "") -> Figure:
    """Soft-mask values over epochs: per run, the share of mask entries in each bin (all sparse
    layers pooled) for up to ``max_epochs`` epochs; bin [0, 0.5) holds the pruned entries."""
    picked = _runs_of(layers, runs)
    if not picked:
        return _empty(title or "soft-mask histograms")
    fig, axes = _grid(len(picked), ncols, (5.5, 3.5))
    edges = np.asarray(edges, dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    for ax, run in zip(axes.flat, picked):
        sub = layers[layers["run"] == run]
        epochs = sorted(sub["epoch"].unique())
        if len(epochs) > max_epochs:
            idx = np.linspace(0, len(epochs) - 1, max_epochs).round().astype(int)
            epochs = [epochs[i] for i in sorted(set(idx))]
        cmap = plt.get_cmap("plasma")
        for i, epoch in enumerate(epochs):
            counts = np.sum([np.asarray(c, dtype=float) for c in
                             sub.loc[sub["epoch"] == epoch, "hist_counts"]], axis=0)
            total = counts.sum()
            if total <= 0 or counts.shape != centers.shape:
                continue
            ax.stairs(counts / total, edges, color=cmap(i / max(1, len(epochs) - 1)),
                      label=f"epoch {epoch}", lw=1.5)
        ax.set_yscale("log")
        ax.set_xlabel("soft-mask value (0 = pruned, 1 = kept, up to 3 = boosted)")
        ax.set_ylabel("share of entries")
        ax.set_title(run, fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Soft-mask value histograms over epochs")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- schedules, ablation
def schedule_curves(frame: pd.DataFrame, *, chosen: str | None = None,
                    window: tuple[float, float] | None = None, title: str = "") -> Figure:
    """Share of N:M blocks ``1 − ρ(t)`` per schedule (columns epoch, schedule, nm_share, as from
    :func:`maxq.results.schedule_frame`); the study's schedule drawn thick."""
    if not len(frame):
        return _empty(title or "incremental schedules")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in frame.groupby("schedule", sort=False):
        ax.plot(curve["epoch"], curve["nm_share"], lw=3 if name == chosen else 1.5,
                label=name + (" (this study)" if name == chosen else ""))
    if window and window[1] > window[0]:
        ax.axvspan(*window, color="grey", alpha=0.12, label="incremental window")
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of N:M blocks 1 − ρ(t)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Incremental sparsity schedules")
    fig.tight_layout()
    return fig


def ablation_bars(table: pd.DataFrame, *, ylabel: str = "best top-1 (%)", ncols: int = 3,
                  title: str = "", run_methods: Mapping[str, str] | None = None) -> Figure:
    """Bars with 95 % CI error bars (Student t over seeds) per arm, one panel per group, the
    verdict against the group's baseline under each arm (columns as from
    :func:`maxq.results.ablation_table`). A bar has its method's colour
    (:func:`method_color`): the method of the arm's runs when ``run_methods`` (run → method)
    is given, else the arm's name read as a method or label."""
    if not len(table):
        return _empty(title or "ablation")
    groups = list(dict.fromkeys(table["group"]))
    fig, axes = _grid(len(groups), ncols, (max(3.5, 0.9 * table.groupby("group").size().max() + 1.5),
                                           3.8))
    for ax, group in zip(axes.flat, groups):
        sub = table[table["group"] == group]
        x = np.arange(len(sub))
        mean = sub["mean"].astype(float)
        low = (mean - sub["ci95_low"].astype(float)).fillna(0.0)
        high = (sub["ci95_high"].astype(float) - mean).fillna(0.0)
        ax.bar(x, mean, yerr=[low, high], capsize=4, alpha=0.85,
               color=[_arm_color(arm, runs, run_methods)
                      for arm, runs in zip(sub["arm"], sub.get("runs", [""] * len(sub)))])
        ax.set_xticks(x, [f"{arm}\n({verdict})"
                          for arm, verdict in zip(sub["arm"], sub["verdict"])],
                      rotation=30, ha="right", fontsize=7)
        finite = mean[np.isfinite(mean)]
        if len(finite):
            bottom_of = float((finite - low.loc[finite.index]).min())
            top_of = float((finite + high.loc[finite.index]).max())
            pad = max(1.0, 0.15 * (top_of - bottom_of))
            bottom = max(0.0, bottom_of - 2 * pad)
            ax.set_ylim(bottom, min(100.0, top_of + 2 * pad))
            if bottom > 0:                  # say so: bars of a cut axis exaggerate differences
                ax.text(0.0, 1.0, f"axis cut at {bottom:.0f}", transform=ax.transAxes,
                        fontsize=7, va="bottom", color="C3")
        for xi, (m, n) in enumerate(zip(mean, sub["n"])):   # inside the bar's foot, off the CI
            if np.isfinite(m):
                ax.text(xi, 0.03, f"n={n}", transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=7, color="white")
        ax.set_title(str(group), fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or "Ablation (mean with 95 % CI over seeds; verdict vs the group's "
                          "first arm)", fontsize=10)
    fig.tight_layout()
    return fig


def _arm_color(arm: str, runs: Any, run_methods: Mapping[str, str] | None) -> str:
    if run_methods is not None and isinstance(runs, str):
        found = {run_methods.get(r) for r in runs.split()} - {None}
        if len(found) == 1:
            return method_color(found.pop())
    return method_color(str(arm))


# ----------------------------------------------------------------------------- evidence
def accuracy_vs_flops(summary: pd.DataFrame, gflops: pd.DataFrame, *, title: str = "") -> Figure:
    """The table as a trade-off curve (as pruning benchmarks draw it): one panel per
    architecture, top-1 mean with its 95 % CI (error bars) against GFLOPs per image, one line
    per sparse method across the N:M ratios, dense as a single star. Columns of ``summary``
    from :func:`maxq.stats.summary`, of ``gflops`` from :func:`maxq.results.proxy_gflops`."""
    if not len(summary) or not len(gflops):
        return _empty(title or "accuracy vs FLOPs")
    frame = summary.merge(gflops, on=["row", "method"])
    unit = "GFLOPs"
    if frame["gflops"].max() < 0.1:                   # CPU proxies: MFLOPs read better
        frame = frame.assign(gflops=frame["gflops"] * 1e3)
        unit = "MFLOPs"
    archs = list(dict.fromkeys(frame["arch"]))
    methods = list(dict.fromkeys(frame["method"]))
    fig, axes = _grid(len(archs), 3, (5.0, 3.8))
    labelled: dict[str, str] = {}          # arch -> the method whose points carry the N:M labels
    for ax, arch in zip(axes.flat, archs):
        sub = frame[frame["arch"] == arch]
        for method in methods:
            part = sub[sub["method"] == method].sort_values("gflops")
            if not len(part):
                continue
            low = (part["top1_mean"] - part["top1_ci95_low"]).fillna(0.0)
            high = (part["top1_ci95_high"] - part["top1_mean"]).fillna(0.0)
            dense = is_dense(method)
            ax.errorbar(part["gflops"], part["top1_mean"], yerr=[low, high],
                        fmt="*" if dense else "o-", markersize=12 if dense else 5, capsize=3,
                        color=_color(method, methods), label=_label(part, method))
            if not dense and method == labelled.setdefault(arch, method):   # once per point
                # patterns of equal density (1:4 and 2:8) share an x: stack their labels
                stacked = part.groupby("gflops", sort=False).cumcount()
                for x, y, n, m, k in zip(part["gflops"], part["top1_mean"], part["N"], part["M"],
                                         stacked):
                    ax.annotate(f"{n}:{m}", (x, y), textcoords="offset points",
                                xytext=(4, -10 + 11 * int(k)), fontsize=7)
        ax.set_xlabel(f"{unit} per image (sparse layers × N/M)")
        ax.set_ylabel("best top-1 (%), mean, 95 % CI")
        ax.set_title(str(arch), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Accuracy against compute")
    fig.tight_layout()
    return fig


def top1_bars(runs: pd.DataFrame, *, metric: str = "best_top1", title: str = "") -> Figure:
    """Bars per row and method: mean over seeds with seaborn's 95 % CI (bootstrap over the
    seeds, resampled with a fixed seed so the same runs draw the same bars); the value axis
    starts at 0."""
    import seaborn as sns

    runs = runs[runs["finished"].astype(bool)] if len(runs) else runs
    if not len(runs):
        return _empty(title or "top-1 per row")
    rows = list(dict.fromkeys(runs["row"]))
    labels = list(dict.fromkeys(runs["method_label"]))
    palette = {_label(runs, m): _color(m, list(dict.fromkeys(runs["method"])))
               for m in dict.fromkeys(runs["method"])}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2.5), 4.0))
    sns.barplot(data=runs, x="row", y=metric, hue="method_label", order=rows, hue_order=labels,
                errorbar=("ci", 95), seed=0, capsize=0.1, palette=palette, ax=ax)
    ax.set_ylim(0, 100)
    ax.set_xlabel("")
    ax.set_ylabel(f"{metric.replace('_', ' ').replace('top1', 'top-1')} (%), axis from 0")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.legend(fontsize=8, title=None, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Top-1 per row (mean, 95 % CI over seeds)")
    fig.tight_layout()
    return fig


def paired_differences(pairs: pd.DataFrame, *, label: str = "MaxQ − SR-STE",
                       title: str = "") -> Figure:
    """Seed-paired differences per row (columns of :func:`maxq.stats.pairwise`): mean with its
    95 % CI, zero marked; the verdict beside each row."""
    if not len(pairs):
        return _empty(title or f"{label} per row")
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(pairs) + 1.6))
    y = np.arange(len(pairs))[::-1]
    low = (pairs["delta_mean"] - pairs["delta_ci95_low"]).fillna(0.0)
    high = (pairs["delta_ci95_high"] - pairs["delta_mean"]).fillna(0.0)
    ax.errorbar(pairs["delta_mean"], y, xerr=[low, high], fmt="o", capsize=3, color="C0")
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_yticks(y, [f"{r}  ({v}, n={n})" for r, v, n in zip(
        pairs["row"], pairs["verdict"], pairs["n_pairs"])], fontsize=8)
    ax.set_xlabel(f"{label}, best top-1 (points), mean and 95 % CI over paired seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"{label} per row")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- N:M benchmark
def accuracy_vs_density(board: pd.DataFrame, *, metric: str = "best_top1",
                        title: str = "") -> Figure:
    """Top-1 against the kept fraction N/M (log axis) per method, from
    :func:`maxq.stats.leaderboard`: mean over seeds as a seaborn line, its Student-t 95 % CI as a
    band; dense as the ceiling (a horizontal line with its band across the axis)."""
    import seaborn as sns

    sub = board[board["metric"] == metric] if len(board) else board
    if not len(sub):
        return _empty(title or "top-1 against density")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    shown = list(dict.fromkeys(sub["method"]))
    is_dense_row = sub["method"].map(is_dense).astype(bool)
    sparse_rows = sub[~is_dense_row]
    palette = {_label(sub, m): _color(m, shown) for m in shown}
    if len(sparse_rows):
        sns.lineplot(data=sparse_rows, x="density", y="mean", hue="method_label", marker="o",
                     palette=palette, errorbar=None, ax=ax)
        for method, part in sparse_rows.groupby("method", sort=False):
            part = part.sort_values("density")
            ax.fill_between(part["density"], part["ci95_low"], part["ci95_high"],
                            color=_color(method, shown), alpha=0.18, linewidth=0)
    dense = sub[is_dense_row]
    if len(dense):
        d = dense.iloc[0]
        ax.axhline(d["mean"], color=_color(d["method"], shown), linestyle="--",
                   label=f"dense ceiling ({d['mean']:.2f})")
        if np.isfinite(d["ci95_low"]) and np.isfinite(d["ci95_high"]):
            ax.axhspan(d["ci95_low"], d["ci95_high"], color=_color(d["method"], shown),
                       alpha=0.12, linewidth=0)
    ax.set_xscale("log", base=2)
    ticks = sorted(set(sparse_rows["density"])) if len(sparse_rows) else []
    ax.set_xticks(ticks, [f"{N}:{M}" for N, M in
                          sparse_rows.drop_duplicates("density").sort_values("density")[
                              ["N", "M"]].itertuples(index=False)] if ticks else [])
    ax.set_xlabel("N:M (kept fraction N/M, log scale)")
    ax.set_ylabel(f"{'best' if metric.startswith('best') else 'last'}-epoch top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=None)
    ax.set_title(title or "Top-1 against density (mean, 95 % CI over seeds)")
    fig.tight_layout()
    return fig


def training_cost_bars(cost_table: pd.DataFrame, *, title: str = "") -> Figure:
    """Step time ratio to dense per N:M row and method (:func:`maxq.results.training_cost`),
    mean over seed pairs with its 95 % CI; 1 (dense) marked."""
    sub = cost_table[~cost_table["method"].map(is_dense).astype(bool)] if len(cost_table) \
        else cost_table
    sub = sub[np.isfinite(pd.to_numeric(sub["ratio_to_dense"], errors="coerce"))] \
        if len(sub) else sub
    if not len(sub):
        return _empty(title or "training step time, ratio to dense")
    rows = list(dict.fromkeys(sub["row"]))
    shown = list(dict.fromkeys(sub["method"]))
    width = 0.8 / max(1, len(shown))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(rows) + 2.5), 4.0))
    for i, method in enumerate(shown):
        part = sub[sub["method"] == method].set_index("row").reindex(rows)
        x = np.arange(len(rows)) + (i - (len(shown) - 1) / 2) * width
        low = (part["ratio_to_dense"] - part["ratio_ci95_low"]).fillna(0.0).clip(lower=0)
        high = (part["ratio_ci95_high"] - part["ratio_to_dense"]).fillna(0.0).clip(lower=0)
        ax.bar(x, part["ratio_to_dense"], width, yerr=[low, high], capsize=2,
               color=_color(method, shown), label=_label(sub, method))
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(np.arange(len(rows)), rows)
    ax.set_ylabel("training step time / dense (same study)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Training cost: step time ratio to dense (mean, 95 % CI)")
    fig.tight_layout()
    return fig
