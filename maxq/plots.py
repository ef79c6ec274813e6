"""One function per figure: DataFrames (from :mod:`maxq.results`) in, matplotlib Figure out.

Nothing here reads or knows run directories; :func:`save_figure` writes PNG and SVG atomically.
Every function accepts empty input and then draws a figure saying so, so a report renders even
before any run has finished.
"""
from __future__ import annotations

import io
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

if not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from maxq import records  # noqa: E402
from maxq.methods import METHODS, is_maxq  # noqa: E402

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
FORMATS = ("png", "svg")


def save_figure(fig: Figure, path_stem: str | os.PathLike, *, dpi: int = 120,
                close: bool = False) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` atomically; returns the paths."""
    stem = Path(path_stem)
    paths = []
    for fmt in FORMATS:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
        path = stem.with_name(stem.name + f".{fmt}")
        records.atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    if close:
        plt.close(fig)
    return paths


def _empty(title: str, message: str = "no data yet") -> Figure:
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


#: colours of the methods without one in the registry, handed out in registry order (so a
#: method keeps its colour in every figure, whatever else the figure shows); none of them is
#: a registry colour (those are skipped: see :func:`_fallback_colors`)
FALLBACK_COLORS = ("C2", "C3", "C4", "C5", "C6", "C8", "C9", "navy", "darkgoldenrod", "olive",
                   "teal", "crimson", "indigo", "saddlebrown", "slategray")


def _fallback_colors() -> tuple[str, ...]:
    """:data:`FALLBACK_COLORS` without the colours the registry gives its methods."""
    taken = {s.color for s in METHODS.values() if s.color is not None}
    return tuple(c for c in FALLBACK_COLORS if c not in taken)


def method_color(method: str) -> str:
    """The one colour of a method in every figure: the registry's
    (:attr:`maxq.methods.MethodSpec.color`), else a fixed one by the method's place among the
    registry's methods without a colour; ``method`` may also be a registry label ("MaxQ");
    anything else gets a colour fixed by its name (a CRC, not Python's salted ``hash``)."""
    spec = METHODS.get(method) or next((s for s in METHODS.values() if s.label == method), None)
    if spec is not None and spec.color is not None:
        return spec.color
    uncoloured = [s.name for s in METHODS.values() if s.color is None]
    free = _fallback_colors()
    if spec is not None:
        return free[uncoloured.index(spec.name) % len(free)]
    import zlib

    return free[zlib.crc32(str(method).encode()) % len(free)]


def palette(methods: Iterable[str] | None = None) -> dict[str, str]:
    """``{method: colour}`` of ``methods`` (default: every registered method)."""
    return {m: method_color(m) for m in (METHODS if methods is None else methods)}


def _color(method: str, shown: Sequence[str] = ()) -> str:
    """The method's fixed colour (:func:`method_color`); ``shown`` is ignored (kept for callers)."""
    return method_color(method)


def _grid(n: int, ncols: int = 4, size: tuple[float, float] = (4.0, 3.0),
          sharey: bool = False) -> tuple[Figure, np.ndarray]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def _label(frame: pd.DataFrame, method: str) -> str:
    if "method_label" in frame.columns:
        hit = frame.loc[frame["method"] == method, "method_label"]
        if len(hit):
            return str(hit.iloc[0])
    return str(method)


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


# ----------------------------------------------------------------------------- masks
def mask_matrix(mask: np.ndarray, max_rows: int | None = 64,
                max_cols: int | None = 96) -> np.ndarray:
    """A 2-D view of a conv/linear mask: (out, kh·kw·in) with the input channel innermost, so
    an N:M block (M consecutive input channels) is M adjacent entries; cropped to the first
    ``max_rows`` × ``max_cols`` (``None``: all)."""
    mask = np.asarray(mask)
    if mask.ndim == 4:
        co, ci, kh, kw = mask.shape
        mask = mask.transpose(0, 2, 3, 1).reshape(co, kh * kw * ci)
    elif mask.ndim != 2:
        mask = mask.reshape(mask.shape[0], -1)
    return mask[:max_rows, :max_cols]


def mask_heatmaps(snapshots: Mapping[int, Mapping[str, Mapping[str, np.ndarray]]],
                  layers: Sequence[str] | None = None, *, max_rows: int = 48,
                  max_cols: int = 64, title: str = "") -> Figure:
    """Soft masks (0 pruned … 3 boosted) of selected layers (rows) at snapshot epochs (columns);
    ``snapshots`` as returned by :func:`maxq.results.load_masks`."""
    epochs = sorted(snapshots)
    if not epochs:
        return _empty(title or "mask heatmaps", "no mask snapshots")
    names = list(layers) if layers is not None else list(snapshots[epochs[0]])
    names = [n for n in names if n in snapshots[epochs[0]]]
    if not names:
        return _empty(title or "mask heatmaps", "no sparse layers in the snapshots")
    fig, axes = plt.subplots(len(names), len(epochs), figsize=(2.8 * len(epochs) + 1,
                                                               2.4 * len(names)), squeeze=False)
    image = None
    for i, name in enumerate(names):
        for j, epoch in enumerate(epochs):
            ax = axes[i, j]
            layer = snapshots[epoch].get(name)
            if layer is None:
                ax.set_axis_off()
                continue
            image = ax.imshow(mask_matrix(layer["soft"], max_rows, max_cols), cmap="viridis",
                              vmin=0, vmax=3, aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"epoch {epoch}", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, label="soft mask value", shrink=0.8)
    fig.suptitle(title or "Soft masks of selected layers (rows: output channels; columns: "
                          "kh·kw·input channels, blocks = M adjacent entries)", fontsize=9)
    return fig


def block_view(hard: np.ndarray, M: int) -> np.ndarray:
    """Kept entries per N:M block (blocks of M consecutive input channels): (out, kh·kw·ci/M)."""
    hard = np.asarray(hard, dtype=float)
    if hard.ndim == 4:
        co, ci, kh, kw = hard.shape
        if ci % M:
            return hard.reshape(co, -1)
        return hard.transpose(0, 2, 3, 1).reshape(co, kh * kw, ci // M, M).sum(-1).reshape(co, -1)
    co, ci = hard.shape[0], int(np.prod(hard.shape[1:]))
    if ci % M:
        return hard.reshape(co, -1)
    return hard.reshape(co, ci // M, M).sum(-1)


def nm_block_share(hard: np.ndarray, M: int) -> float:
    """Share of the layer's blocks of M that are N:M (fewer than M entries kept)."""
    blocks = block_view(hard, M)
    return float((blocks < M).mean()) if blocks.size else float("nan")


#: font size (points) of the mask figures' tick and axis labels; with their widths (at most
#: MASK_WIDTH inches, so a notebook or HTML page shows them at about full size) the tick
#: labels stay 10 px or more on screen
MASK_FONT = 10
MASK_WIDTH = 13.0
#: the crop of a mask matrix: first row, rows, first column, columns
Window = tuple[int, int, int, int]


def mask_window(shape: Sequence[int], row0: int = 0, rows: int | None = 64, col0: int = 0,
                cols: int | None = 96, M: int = 1) -> Window:
    """The crop of a mask of ``shape`` (conv (co, ci, kh, kw) or linear) that fits it: ``rows``
    rows from ``row0`` and ``cols`` columns from ``col0`` of :func:`mask_matrix`'s layout
    (``None``: all); columns start and end on block boundaries (multiples of ``M``)."""
    total_rows = int(shape[0])
    total_cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    M = max(1, int(M))
    rows = total_rows if rows is None else max(1, min(int(rows), total_rows))
    cols = total_cols if cols is None else max(1, min(int(cols), total_cols))
    if total_cols % M == 0 and cols >= M:
        cols -= cols % M
    row0 = max(0, min(int(row0), total_rows - rows))
    col0 = max(0, min(int(col0), total_cols - cols))
    if total_cols % M == 0:
        col0 -= col0 % M
    return row0, rows, col0, cols


def window_text(shape: Sequence[int], window: Window) -> str:
    """``"rows 0–63 of 256 · columns 0–95 of 576"`` (1-based counts, 0-based indices)."""
    row0, rows, col0, cols = window
    total_cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (f"rows {row0}–{row0 + rows - 1} of {int(shape[0])} · "
            f"columns {col0}–{col0 + cols - 1} of {total_cols}")


def _mask_axes(ax, shape: Sequence[int], window: Window, M: int, *, xlabel: bool = True) -> None:
    """Axis labels, integer ticks, kernel-position and (zoomed in) block boundaries."""
    row0, rows, col0, cols = window
    ci = int(shape[1]) if len(shape) > 1 else 1
    positions = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    ax.set_ylabel("output channel", fontsize=MASK_FONT)
    if xlabel:
        what = (f"column = kernel position × {ci} + input channel"
                if positions > 1 else "input channel")
        ax.set_xlabel(f"{what}\n(N:M blocks: {M} adjacent columns)", fontsize=MASK_FONT - 1)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.tick_params(labelsize=MASK_FONT)
    lo, hi = col0 - 0.5, col0 + cols - 0.5
    if cols // max(1, M) <= 48 and M > 1:                 # zoomed in: every block boundary
        for x in range(col0 - col0 % M + M, col0 + cols, M):
            ax.axvline(x - 0.5, color="tab:orange", lw=0.6, alpha=0.8)
    if positions > 1:                                      # kernel-position boundaries
        for x in range(ci, ci * positions, ci):
            if lo < x - 0.5 < hi:
                ax.axvline(x - 0.5, color="tab:red", lw=1.2)


def _extent(window: Window) -> tuple[float, float, float, float]:
    row0, rows, col0, cols = window
    return (col0 - 0.5, col0 + cols - 0.5, row0 + rows - 0.5, row0 - 0.5)


def _crop(matrix: np.ndarray, window: Window) -> np.ndarray:
    row0, rows, col0, cols = window
    return matrix[row0:row0 + rows, col0:col0 + cols]


def _block_crop(hard: np.ndarray, M: int, window: Window) -> np.ndarray:
    """The block view of the columns of ``window`` (one value per block of M)."""
    row0, rows, col0, cols = window
    blocks = block_view(hard, M)
    if blocks.shape[1] * M != mask_matrix(hard, None, None).shape[1]:   # ci not a multiple of M
        return _crop(blocks, window)
    return np.repeat(blocks[row0:row0 + rows, col0 // M:(col0 + cols) // M], M, axis=1)


def _block_image(fig, ax, hard: np.ndarray, M: int, window: Window, shape) -> Any:
    from matplotlib.colors import BoundaryNorm

    cmap = plt.get_cmap("cividis", M + 1)
    norm = BoundaryNorm(np.arange(-0.5, M + 1), cmap.N)
    image = ax.imshow(_block_crop(hard, M, window), cmap=cmap, norm=norm, aspect="auto",
                      interpolation="nearest", extent=_extent(window))
    bar = fig.colorbar(image, ax=ax, ticks=range(M + 1))
    bar.set_label(f"kept entries per block of {M}\n(N = N:M block, {M} = dense)",
                  fontsize=MASK_FONT - 1)
    bar.ax.tick_params(labelsize=MASK_FONT)
    _mask_axes(ax, shape, window, M)
    return image


def mask_detail(hard: np.ndarray, soft: np.ndarray, M: int, *, title: str = "",
                max_rows: int = 64, max_cols: int = 96, window: Window | None = None) -> Figure:
    """One layer at one epoch: hard mask, soft mask, block view (kept entries per block: N for
    an N:M block, M for a dense block; same columns as the mask panels) and the histogram of
    the kept soft values. ``window`` (see :func:`mask_window`) is the crop; it is stated on the
    figure."""
    shape = np.shape(hard)
    window = window or mask_window(shape, 0, max_rows, 0, max_cols, M)
    fig, grid = plt.subplots(2, 2, figsize=(MASK_WIDTH, 8.6), layout="constrained")
    axes = grid.ravel()
    image = axes[0].imshow(_crop(mask_matrix(hard, None, None), window), cmap="gray_r", vmin=0,
                           vmax=1, aspect="auto", interpolation="nearest", extent=_extent(window))
    bar = fig.colorbar(image, ax=axes[0], ticks=[0, 1])
    bar.ax.set_yticklabels(["0 pruned", "1 kept"], fontsize=MASK_FONT)
    bar.set_label("hard mask entry", fontsize=MASK_FONT - 1)
    axes[0].set_title("hard mask (black = kept)", fontsize=MASK_FONT + 1)
    image = axes[1].imshow(_crop(mask_matrix(soft, None, None), window), cmap="viridis", vmin=0,
                           vmax=3, aspect="auto", interpolation="nearest", extent=_extent(window))
    bar = fig.colorbar(image, ax=axes[1])
    bar.set_label("soft mask value (weight multiplier;\n0 pruned, 1 kept, up to 3 boosted)",
                  fontsize=MASK_FONT - 1)
    bar.ax.tick_params(labelsize=MASK_FONT)
    axes[1].set_title("soft mask", fontsize=MASK_FONT + 1)
    _block_image(fig, axes[2], hard, M, window, shape)
    axes[2].set_title(f"block view: kept per block of {M}", fontsize=MASK_FONT + 1)
    for ax in axes[:2]:
        _mask_axes(ax, shape, window, M)
    kept = np.asarray(soft, dtype=float)[np.asarray(hard, dtype=bool)]
    axes[3].hist(kept, bins=np.linspace(1, 3, 41), color="C0")
    axes[3].set_title(f"kept soft values, whole layer (n={kept.size})", fontsize=MASK_FONT + 1)
    axes[3].set_xlabel("soft mask value (weight multiplier)", fontsize=MASK_FONT)
    axes[3].set_ylabel("entries", fontsize=MASK_FONT)
    axes[3].tick_params(labelsize=MASK_FONT)
    share = nm_block_share(hard, M)
    fig.suptitle(f"{title}\n{window_text(shape, window)} · N:M blocks: {share:.0%} of the layer",
                 fontsize=MASK_FONT + 2)
    return fig


def mask_compare(hard_a: np.ndarray, hard_b: np.ndarray, M: int, *, labels: Sequence[str] = ("A", "B"),
                 window: Window | None = None, title: str = "") -> Figure:
    """Two hard masks of one layer side by side (same crop) and where they differ; the title
    gives the share of the layer's hard-mask entries on which they differ."""
    a, b = np.asarray(hard_a, dtype=bool), np.asarray(hard_b, dtype=bool)
    if a.shape != b.shape:
        return _empty(title or "compare", f"shapes differ: {a.shape} vs {b.shape}")
    shape = a.shape
    window = window or mask_window(shape, 0, 64, 0, 96, M)
    fig, axes = plt.subplots(1, 3, figsize=(MASK_WIDTH, 5.0), layout="constrained")
    for ax, mask, label in zip(axes, (a, b), labels):
        image = ax.imshow(_crop(mask_matrix(mask, None, None), window), cmap="gray_r", vmin=0,
                          vmax=1, aspect="auto", interpolation="nearest", extent=_extent(window))
        ax.set_title(f"{textwrap.fill(label, 40)}\nhard mask (black = kept); N:M blocks "
                     f"{nm_block_share(mask, M):.0%}", fontsize=MASK_FONT - 1)
        _mask_axes(ax, shape, window, M)
    bar = fig.colorbar(image, ax=axes[1], ticks=[0, 1])
    bar.ax.set_yticklabels(["0 pruned", "1 kept"], fontsize=MASK_FONT - 1)
    from matplotlib.colors import ListedColormap

    diff = mask_matrix(a, None, None).astype(int) - mask_matrix(b, None, None).astype(int)
    image = axes[2].imshow(_crop(diff, window), cmap=ListedColormap(["tab:blue", "white",
                                                                     "tab:red"]),
                           vmin=-1.5, vmax=1.5, aspect="auto", interpolation="nearest",
                           extent=_extent(window))
    bar = fig.colorbar(image, ax=axes[2], ticks=[-1, 0, 1])
    bar.ax.set_yticklabels(["kept only\nin B", "same", "kept only\nin A"],
                           fontsize=MASK_FONT - 1)
    _mask_axes(axes[2], shape, window, M)
    share = float((a != b).mean())
    crop_share = float((_crop(diff, window) != 0).mean())
    axes[2].set_title(f"difference: {crop_share:.1%} of the shown entries",
                      fontsize=MASK_FONT - 1)
    fig.suptitle(f"{title}\nthe hard masks differ on {share:.1%} of the layer's entries · "
                 f"{window_text(shape, window)}", fontsize=MASK_FONT + 2)
    return fig


def mask_evolution(hards: Mapping[int, np.ndarray], M: int, *, window: Window | None = None,
                   title: str = "", ncols: int = 3) -> Figure:
    """One layer across snapshot epochs: the block view (dense blocks keep M, N:M blocks N) of
    each epoch on the same crop, and the layer's share of N:M blocks per epoch."""
    epochs = sorted(hards)
    if not epochs:
        return _empty(title or "mask evolution", "no mask snapshots")
    shape = np.shape(hards[epochs[0]])
    window = window or mask_window(shape, 0, 64, 0, 96, M)
    n = len(epochs) + 1
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(MASK_WIDTH / 3 * ncols, 3.6 * nrows + 0.6),
                             squeeze=False, layout="constrained")
    from matplotlib.colors import BoundaryNorm

    cmap = plt.get_cmap("cividis", M + 1)
    norm = BoundaryNorm(np.arange(-0.5, M + 1), cmap.N)
    shares = []
    image = None
    for i, (ax, epoch) in enumerate(zip(axes.flat, epochs)):
        hard = hards[epoch]
        shares.append(nm_block_share(hard, M))
        image = ax.imshow(_block_crop(hard, M, window), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest", extent=_extent(window))
        _mask_axes(ax, shape, window, M, xlabel=i >= n - ncols - 1)
        ax.set_title(f"epoch {epoch}: N:M blocks {shares[-1]:.0%}", fontsize=MASK_FONT)
    last = axes.flat[len(epochs)]
    last.plot(epochs, shares, marker="o")
    last.set_ylim(-0.05, 1.05)
    last.set_xlabel("epoch", fontsize=MASK_FONT)
    last.set_ylabel("share of N:M blocks (whole layer)", fontsize=MASK_FONT)
    last.xaxis.set_major_locator(MaxNLocator(integer=True))
    last.tick_params(labelsize=MASK_FONT)
    last.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    bar = fig.colorbar(image, ax=axes[:, :], ticks=range(M + 1), shrink=0.8)
    bar.set_label(f"kept entries per block of {M} (N = N:M, {M} = dense)", fontsize=MASK_FONT - 1)
    bar.ax.tick_params(labelsize=MASK_FONT)
    fig.suptitle(f"{title}\n{window_text(shape, window)}", fontsize=MASK_FONT + 2)
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
            dense = method == "DenseConv2dBN"
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
    seeds); the value axis starts at 0."""
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
                errorbar=("ci", 95), capsize=0.1, palette=palette, ax=ax)
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
    sparse_rows = sub[sub["method"] != "DenseConv2dBN"]
    palette = {_label(sub, m): _color(m, shown) for m in shown}
    if len(sparse_rows):
        sns.lineplot(data=sparse_rows, x="density", y="mean", hue="method_label", marker="o",
                     palette=palette, errorbar=None, ax=ax)
        for method, part in sparse_rows.groupby("method", sort=False):
            part = part.sort_values("density")
            ax.fill_between(part["density"], part["ci95_low"], part["ci95_high"],
                            color=_color(method, shown), alpha=0.18, linewidth=0)
    dense = sub[sub["method"] == "DenseConv2dBN"]
    if len(dense):
        d = dense.iloc[0]
        ax.axhline(d["mean"], color=_color("DenseConv2dBN", shown), linestyle="--",
                   label=f"dense ceiling ({d['mean']:.2f})")
        if np.isfinite(d["ci95_low"]) and np.isfinite(d["ci95_high"]):
            ax.axhspan(d["ci95_low"], d["ci95_high"], color=_color("DenseConv2dBN", shown),
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
    sub = cost_table[cost_table["method"] != "DenseConv2dBN"] if len(cost_table) else cost_table
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
