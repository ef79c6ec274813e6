"""FLOPs and parameters of a study's rows: at the paper's scale (ImageNet model, 224 px) for the
summary table, and at the scale the runs actually trained (the proxy) for the accuracy-vs-FLOPs
figure; both counted by :func:`maxq.cost.cost` and cached per architecture and N:M."""
from __future__ import annotations

import functools
import math
from typing import Any

import pandas as pd

from maxq import cost, models
from maxq.methods import is_dense

#: the paper's input (ImageNet, 224 px) for the cost columns
PAPER_INPUT = (3, 224, 224)

@functools.lru_cache(maxsize=None)
def _paper_cost_cached(arch: str, N: int, M: int) -> tuple[tuple[str, float], ...]:
    model = models.build(arch, num_classes=1000)
    totals = cost.cost(model, PAPER_INPUT, N=N, M=M).totals()
    return (("dense_gflops", totals["dense_flops"] / 1e9),
            ("sparse_gflops", totals["sparse_flops"] / 1e9),
            ("dense_mparams", totals["dense_params"] / 1e6),
            ("sparse_mparams", totals["sparse_params"] / 1e6))


def paper_cost(arch: Any, N: Any, M: Any) -> dict[str, float]:
    """FLOPs (G) and params (M), dense and N:M sparse, of ``arch`` at the paper's scale
    (1000 classes, 224 px). NaN when the cost counter is unavailable or the row is invalid."""
    empty = {k: math.nan for k in ("dense_gflops", "sparse_gflops", "dense_mparams",
                                   "sparse_mparams")}
    try:
        return dict(_paper_cost_cached(str(arch), int(N), int(M)))
    except Exception:  # noqa: BLE001 - an unknown arch or missing module leaves the columns empty
        return empty

@functools.lru_cache(maxsize=None)
def _proxy_cost_cached(arch: str, N: int, M: int, dense: bool, width_mult: float,
                       small_input: bool, in_channels: int, image_size: int) -> float:
    model = models.build(arch, num_classes=10, in_channels=in_channels, small_input=small_input,
                         width_mult=width_mult)
    report = cost.cost(model, (in_channels, image_size, image_size),
                         *((None, None) if dense else (N, M)))
    return report.totals()["sparse_flops"] / 1e9


def proxy_gflops(runs: pd.DataFrame) -> pd.DataFrame:
    """GFLOPs per image of every (row, method) at the scale the runs actually trained (their
    arch, width, stem, input size; dense methods counted dense): the x axis of the
    accuracy-vs-FLOPs figure. Columns row, method, gflops."""
    done = runs[runs["finished"].astype(bool)] if len(runs) else runs
    out = []
    for (row, method), sub in done.groupby(["row", "method"], sort=False):
        first = sub.iloc[0]
        width = float(first["width_mult"]) if pd.notna(first["width_mult"]) else 1.0
        small = bool(first["small_input"]) if pd.notna(first["small_input"]) else False
        channels = int(first["in_channels"]) if pd.notna(first["in_channels"]) else 3
        size = int(first["image_size"]) if pd.notna(first["image_size"]) else 224
        dense = is_dense(method)
        out.append({"row": row, "method": method, "gflops": _proxy_cost_cached(
            str(first["arch"]), int(first["N"]), int(first["M"]), dense, width, small, channels,
            size)})
    return pd.DataFrame(out, columns=["row", "method", "gflops"])
