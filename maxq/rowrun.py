"""One run of a study, written once: decide what to do with it (:func:`plan_row`), run it
(:func:`run_row`: ``row.ipynb`` through :func:`maxq.notebook_exec.execute_notebook`), and
record it in the study's ``status.csv`` (:class:`StatusTable`). Every executor of
:mod:`maxq.executors` calls :func:`run_row`, on a thread here or inside a submitit job.

The row notebook receives the run's training options as one ``config`` mapping (the fields of
:class:`maxq.config.TrainConfig` it sets; the others keep their defaults).
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from maxq import config, paths, records
from maxq.notebook_exec import (PAPERMILL_LOG, ROW_NOTEBOOK, NotebookError, execute_notebook,
                                notebook_parameters)
from maxq.studies import STATUS_COLUMNS, Row, read_status, read_status_file, status_path

#: the row notebook's one parameter: the run's training options
CONFIG_PARAMETER = "config"


# ----------------------------------------------------------------------------- status table
def utc_now() -> str:
    """The time as status.csv and job events record it (UTC, seconds: 2026-12-07T15:05:54Z)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusTable:
    """Thread-safe ``status.csv``: every update rewrites the file atomically."""

    def __init__(self, study: str, root: str | os.PathLike | None = None):
        self.path = status_path(study, root)
        self.lines = read_status(study, root)
        self.lock = threading.Lock()

    def update(self, row: str, **values: Any) -> None:
        with self.lock, self._file_lock():
            # another batch (another shard) may have written rows since: merge, then write
            self.lines = {**self.lines, **read_status_file(self.path)}
            line = self.lines.setdefault(row, {c: "" for c in STATUS_COLUMNS})
            line["row"] = row
            for key, value in values.items():
                if key == "seconds" and isinstance(value, float):
                    value = f"{value:.1f}"
                if key in ("run_dir", "notebook") and value:   # as reports show paths
                    value = paths.shown(value)
                line[key] = "" if value is None else str(value)
            line["updated"] = utc_now()
            self._write()

    def _file_lock(self):
        """An exclusive ``flock`` on ``.status.lock`` beside status.csv for one update."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path.parent / ".status.lock", "a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:                       # no flock on this file system: unlocked
            pass
        return handle                         # closing it (end of `with`) drops the lock

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=STATUS_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for line in self.lines.values():
            writer.writerow({c: line.get(c, "") for c in STATUS_COLUMNS})
        records.atomic_write_text(self.path, buffer.getvalue())


# ----------------------------------------------------------------------------- one run
def config_mismatch(row: Row, run_dir: str | os.PathLike) -> str:
    """Why a finished run directory does not belong to ``row`` ('' when it does)."""
    try:
        stored = records.read_config(run_dir)
    except (records.RunRecordError, OSError, ValueError) as exc:
        return f"unreadable run directory: {exc}"
    wanted = row.parameters()
    diffs = []
    for key, value in sorted(wanted.items()):
        if key in config.ROW_CHECK_IGNORED or key not in stored:
            continue
        if not _same(stored[key], value):
            diffs.append(f"{key}: {stored[key]!r} there, {value!r} in the study")
    return "; ".join(diffs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@dataclass
class Outcome:
    row: Row
    state: str
    seconds: float = 0.0
    error: str = ""


def plan_row(row: Row, root: Path, force: bool) -> tuple[str, str, dict]:
    """Decide what to do with a run: ("skip"|"fail"|"corrupt"|"run", message, extra
    options: ``overwrite`` for a forced re-run or a retry of an unfinished one)."""
    run_dir = row.run_dir(root)
    if records.is_finished(run_dir) and not force:
        mismatch = config_mismatch(row, run_dir)
        if mismatch:
            return "fail", (f"{run_dir} holds a finished run written by another config "
                            f"({mismatch}); not overwritten: use --force to re-run it"), {}
        try:
            records.read_run(run_dir)         # every record checked: a bad one is not "done"
        except records.CorruptRecord as exc:
            return "corrupt", (f"{exc}; not overwritten: fix or remove the file, or use --force "
                               f"to re-run it"), {}
        return "skip", "", {}
    if force or (run_dir / records.CONFIG).exists():
        # a forced re-run, or a retry of an unfinished run: start again from scratch
        return "run", "", {"overwrite": True}
    return "run", "", {}


def check_row_notebook(path: str | os.PathLike) -> None:
    """:class:`NotebookError` unless ``path`` is a notebook with a ``parameters`` cell that
    sets ``config`` (the mapping the runner injects)."""
    if CONFIG_PARAMETER not in notebook_parameters(path):
        raise NotebookError(f"notebook {path}: its parameters cell does not set "
                            f"{CONFIG_PARAMETER!r} (the runner passes a run's training options "
                            f"as one mapping: `{CONFIG_PARAMETER} = {{}}`)")


def row_config(row: Row, root: str | os.PathLike, extra: dict[str, Any]) -> dict[str, Any]:
    """The training options the row notebook receives (its ``config`` parameter)."""
    options = row.parameters(root, **extra)
    options["save_dir"] = str(Path(row.run_dir(root)).resolve())
    return options


def run_row(row: Row, *, root: str | os.PathLike, notebook: str | os.PathLike,
            extra: dict[str, Any], timeout: float | None = None, jobs: int = 1,
            cwd: str | os.PathLike | None = None, output: Path | None = None,
            log: Path | None = None) -> Outcome:
    """Execute the row notebook for one run; the run is done when ``result.json`` exists.

    ``output``/``log``: where this process's executed notebook and papermill log go (default:
    the run directory's ``row.ipynb`` and ``papermill.log``); the other ranks of a multi-GPU
    job write theirs to the job folder and leave judging the run to rank 0."""
    run_dir = Path(row.run_dir(root)).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    primary = output is None
    start = time.monotonic()
    parameters = {CONFIG_PARAMETER: row_config(row, root, extra)}
    ok, error = execute_notebook(notebook, output or run_dir / ROW_NOTEBOOK, parameters,
                                 log_path=log or run_dir / PAPERMILL_LOG, cwd=cwd,
                                 timeout=timeout, jobs=jobs)
    seconds = time.monotonic() - start
    if ok and primary and not records.is_finished(run_dir):
        ok, error = False, f"the notebook finished but {run_dir / records.RESULT} was not written"
    return Outcome(row, "done" if ok else "failed", seconds, error)
