"""The mask figures of the explorer and the reports: a mask as a matrix (N:M blocks as adjacent
entries), heatmaps over epochs, the block view, and the detail / compare / evolution views with
their crop window (:func:`mask_window`). Arrays in, matplotlib Figure out; re-exported by
:mod:`maxq.plots`."""
from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from maxq.figure_base import _empty


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
