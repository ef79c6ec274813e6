"""The scale a study ran at, said in words (data set, subsets, input size, batch, epochs, window,
device, time), and the incremental schedules' N:M share over the epochs for its figure."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from maxq import schedules as sched
from maxq.methods import is_maxq
from maxq.result_frames import Results

def scale_summary(results: Results) -> str:
    """A Markdown paragraph stating the scale the study ran at (from the runs' configs)."""
    runs = results.runs
    if not len(runs):
        return "No run directories found yet.\n"

    def values(key: str, unset: str = "?") -> str:
        """The key's distinct values; ``unset`` for a run that left the option at None."""
        vals = [unset if v is None else v for v in runs[key].tolist()
                if not (isinstance(v, float) and math.isnan(v))]
        vals = list(dict.fromkeys(str(v) for v in vals))
        return ", ".join(vals) if vals else "?"

    done = results.finished
    wall = pd.to_numeric(done["wall_seconds"], errors="coerce").sum() if len(done) else 0.0
    text = (f"**Scale.** {len(runs)} run(s) ({len(done)} finished) of study "
            f"`{results.study}`: data set {values('set')}, train subset "
            f"{values('train_subset', 'all')} images, validation subset "
            f"{values('val_subset', 'all')} images, input {values('image_size', 'native')} "
            f"px, batch {values('batch_size')}, {values('epochs')} epochs, incremental window "
            f"epochs {values('increase_start')}–{values('increase_end')} "
            f"({values('prune_schedule')} schedule), device {values('device')}; "
            f"training time {wall / 60:.1f} min in total "
            f"({wall / max(1, len(done)):.0f} s per finished run).")
    note = getattr(results.spec, "scale_note", "")
    if note:
        text += f" {note}"
    return text + "\n"


def schedule_frame(start: int, end: int, epochs: int,
                   schedules: Iterable[str] | None = None) -> pd.DataFrame:
    """Share of N:M blocks ``1 − ρ(t)`` for every schedule over ``0..epochs`` (columns: epoch,
    schedule, dense_fraction, nm_share), from :func:`maxq.schedules.dense_fraction`."""
    names = list(schedules) if schedules is not None else list(sched.SCHEDULES)
    grid = np.linspace(0, max(1, int(epochs)), 200)
    out = []
    for name in names:
        for t in grid:
            rho = float(sched.dense_fraction(float(t), start, end, name))
            out.append({"epoch": float(t), "schedule": name, "dense_fraction": rho,
                        "nm_share": 1.0 - rho})
    return pd.DataFrame(out)


def study_window(results: Results) -> tuple[int, int, int, str]:
    """(increase_start, increase_end, epochs, prune_schedule) of the study's MaxQ runs."""
    runs = results.runs
    if not len(runs):
        return 0, 0, 1, "linear"
    maxq = runs[runs["method"].map(is_maxq).astype(bool)]
    pick = maxq if len(maxq) else runs
    first = pick.iloc[0]

    def num(value: Any, default: int) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            return default

    schedule = first["prune_schedule"] if isinstance(first["prune_schedule"], str) else "linear"
    return (num(first["increase_start"], 0), num(first["increase_end"], 0),
            num(first["epochs"], 1), schedule)
