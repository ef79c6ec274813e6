"""What every figure of the kit shares: the matplotlib backend (Agg outside a notebook kernel),
:func:`save_figure` (PNG and SVG, atomically), the placeholder figure of empty input, the grid of
axes, and each method's one colour (from the registry, :mod:`maxq.methods`). Used by
:mod:`maxq.plots` and :mod:`maxq.mask_figures`."""
from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

if not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from maxq import records  # noqa: E402
from maxq.methods import METHODS  # noqa: E402

FORMATS = ("png", "svg")


def save_figure(fig: Figure, path_stem: str | os.PathLike, *, dpi: int = 120,
                close: bool = False) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` atomically; returns the paths. The same figure
    gives the same bytes on every render (no date in the SVG, its element ids salted by the
    file name), so re-rendering a report from the same runs leaves its figures unchanged."""
    stem = Path(path_stem)
    paths = []
    for fmt in FORMATS:
        buffer = io.BytesIO()
        with plt.rc_context({"svg.hashsalt": stem.name}):
            fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight",
                        metadata={"Date": None} if fmt == "svg" else None)
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
