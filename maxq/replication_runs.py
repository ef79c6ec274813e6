"""What a held-out study is compared with: the runs of the study it replicates (its run
directories, else its committed runs table) and the options where the two recipes differ; and
the robustness section's re-run given as a report's runs table (:func:`rerun_runs`)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maxq import paths, stats, studies
from maxq.report_output import results_name
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


def rerun_table(path: str | os.PathLike, study: str) -> tuple[pd.DataFrame, Path]:
    """The runs of a re-run given as a report's ``runs.csv`` (the robustness section's other
    set when its run directories are gone, e.g. a committed report trained on another machine),
    and the file's resolved path. Its runs of ``study`` only; runs made before provenance was
    recorded get the machine label "not recorded". :class:`studies.StudyError` (one line) when
    the file is missing, unreadable or holds no finished run of the study."""
    file = Path(path).resolve()
    try:
        runs = pd.read_csv(file)
        runs = runs[runs["study"].astype(str) == study].copy()
        runs["finished"] = runs["finished"].astype(bool)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise studies.StudyError(f"--rerun-root {path}: not a readable runs table "
                                 f"({type(exc).__name__}: {exc})") from None
    if not runs["finished"].any():
        raise studies.StudyError(f"--rerun-root {path}: no finished run of study {study!r} "
                                 f"in this runs table")
    if "machine" not in runs.columns:
        runs["machine"] = f"machine not recorded (runs table {file.parent.name}/{file.name})"
    runs["machine"] = runs["machine"].fillna("machine not recorded")
    return runs, file


def rerun_runs(study: Any, path: str | os.PathLike) -> pd.DataFrame:
    """The robustness section's re-run: the runs under a runs root, or a report's runs.csv
    (:func:`rerun_table`)."""
    if Path(path).suffix == ".csv":
        return rerun_table(path, results_name(study))[0]
    return load(study, path).runs


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
