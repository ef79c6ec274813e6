"""Schedules: the dense-block fraction ρ(t) of incremental sparsity (method.md §5) and the LR.

ρ(t) ∈ [0, 1] is the fraction of blocks kept dense at (possibly fractional) epoch t; the share of
N:M blocks is p(t) = 1 − ρ(t). Window [t_s, t_e] = seed flags ``--increase-start``,
``--increase-end``. ``t_s == t_e`` means plain N:M from the first step: ρ = 1 before t_s and 0 from
t_s on (t_s = t_e = 0 gives ρ = 0 everywhere in training).

| name   | ρ(t) inside the window (1 before t_s, 0 from t_e on)                 |
|--------|-----------------------------------------------------------------------|
| linear | 1 − u,  u = (t − t_s)/(t_e − t_s)                                     |
| cubic  | (1 − u)³                                                              |
| cos    | cos(π/2 · u)                                                          |
| exp    | 1 − s(t − t_s)/s(t_e − t_s − 1),  s(j) = 1 − e^(−0.05·j)  (clipped ≥ 0) |

For t_e − t_s <= 1 the exp denominator vanishes; ``exp`` then falls back to ``linear``.
"""
from __future__ import annotations

import math
from typing import Callable

__all__ = ["SCHEDULES", "dense_fraction", "LR_SCHEDULES", "lr_at"]


def _u(t: float, start: float, end: float) -> float:
    return (t - start) / (end - start)


def _linear(t: float, start: float, end: float) -> float:
    return 1.0 - _u(t, start, end)


def _cubic(t: float, start: float, end: float) -> float:
    return (1.0 - _u(t, start, end)) ** 3


def _cos(t: float, start: float, end: float) -> float:
    return math.cos(math.pi / 2 * _u(t, start, end))


def _exp(t: float, start: float, end: float) -> float:
    def s(j: float) -> float:
        return 1.0 - math.exp(-0.05 * j)

    if end - start <= 1:
        return _linear(t, start, end)
    return 1.0 - s(t - start) / s(end - start - 1)


#: schedule name -> ρ inside the window, f(t, start, end) with start <= t < end
SCHEDULES: dict[str, Callable[[float, float, float], float]] = {
    "linear": _linear,
    "cubic": _cubic,
    "cos": _cos,
    "exp": _exp,
}


def dense_fraction(epoch: float, start: float, end: float, schedule: str = "linear") -> float:
    """ρ(t): fraction of blocks kept dense at (fractional) epoch t; 1 before ``start``, 0 from
    ``end`` on, the named schedule in between, clipped to [0, 1]."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if end < start:
        raise ValueError(f"end must be >= start, got start={start}, end={end}")
    if epoch < start:
        return 1.0
    if epoch >= end:
        return 0.0
    return min(1.0, max(0.0, SCHEDULES[schedule](float(epoch), float(start), float(end))))


# ----------------------------------------------------------------------------------------------
# learning rate
# ----------------------------------------------------------------------------------------------
LR_SCHEDULES = ("cosine", "step")


def lr_at(epoch: float, base_lr: float, epochs: int, warmup: float = 0, kind: str = "cosine", *,
          step_size: int = 30, gamma: float = 0.1) -> float:
    """Learning rate at (fractional) epoch ``epoch`` (method.md §9).

    Warmup (epoch < warmup): linear, ``base_lr · (epoch + 1) / warmup``.
    cosine: ``0.5 · (1 + cos(π · e / E)) · base_lr`` with e = epoch − warmup,
    E = epochs − warmup
    ("cosine per epoch": pass the integer epoch to update once per epoch).
    step: ``base_lr · gamma ** floor(epoch / step_size)``.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"kind must be one of {LR_SCHEDULES}, got {kind!r}")
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if epoch < warmup:
        return base_lr * (epoch + 1) / warmup
    if kind == "step":
        return base_lr * gamma ** math.floor(epoch / step_size)
    e, es = epoch - warmup, max(epochs - warmup, 1e-12)
    return 0.5 * (1.0 + math.cos(math.pi * min(e, es) / es)) * base_lr
