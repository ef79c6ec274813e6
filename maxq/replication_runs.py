"""What a held-out study is compared with: the runs of the study it replicates (its run
directories, else its committed runs table) and the options where the two recipes differ."""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd

from maxq import paths, stats, studies
from maxq.result_frames import SCALE_KEYS, load

def discovery_runs(study: Any, runs_root: str | os.PathLike | None = None,
                   reports_root: str | os.PathLike | None = None) -> tuple[pd.DataFrame, str]:
    """The runs of the study a held-out study replicates (``[study] replicates``), and where they
    came from: its run directories when they are here, else the runs table of its committed
    report (``<reports_root>/<study>/runs.csv``, one line per run as :func:`load` gives it).
    ``ValueError`` when neither exists."""
    res = load(study, runs_root)
    if len(res.finished):
        return res.runs, f"the run directories of study `{res.study}` ({len(res.finished)} finished)"
    table = paths.reports_root(reports_root) / res.study / "runs.csv"
    if not table.is_file():
        raise ValueError(f"study {res.study!r} has no finished runs under "
                         f"{studies.runs_root(runs_root) / res.study} and no committed runs "
                         f"table {table}: nothing to replicate")
    runs = pd.read_csv(table)
    runs["finished"] = runs["finished"].astype(bool)
    return runs, (f"the committed report of study `{res.study}` (`reports/{res.study}/runs.csv`, "
                  f"{int(runs['finished'].sum())} finished runs; their run directories are not "
                  f"on this machine)")


def same_recipe(discovery: pd.DataFrame, heldout: pd.DataFrame) -> list[str]:
    """Where held-out runs were trained with other options than the discovery runs of the same
    (row, method): one line per differing option (empty when the recipes agree)."""
    keys = ["arch", "N", "M", *SCALE_KEYS]
    out = []
    done_a, done_b = stats._finished(discovery), stats._finished(heldout)
    for (row, method), sub in done_b.groupby(["row", "method"], sort=False):
        ref = done_a[(done_a["row"] == row) & (done_a["method"] == method)]
        if not len(ref):
            continue
        for key in keys:
            if key not in sub or key not in ref:
                continue
            mine = {_option_value(v) for v in sub[key]}
            theirs = {_option_value(v) for v in ref[key]}
            if mine != theirs:
                out.append(f"{row} {method}: {key} = {sorted(mine)} (held-out) vs "
                           f"{sorted(theirs)} (discovery)")
    return out


def _option_value(value: Any) -> str:
    """One option's value as a comparable text, the same whether it was read from config.json
    or from a runs.csv (None and NaN alike, 8192 and 8192.0 alike)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)
