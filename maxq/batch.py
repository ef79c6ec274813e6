"""Studies → rows → papermill runs → status table → report.

A **study** is a data file, ``studies/<name>.toml``::

    [study]
    description = "what this study is for"
    methods = ["SoftMaxQConv2DBN", "SoftSRSTEConv2dBN"]   # each row runs once per method ...
    seeds = [0, 1, 2]                                      # ... and per seed

    [defaults]          # training options shared by every row (maxq.train.TrainConfig fields)
    set = "FashionMNIST"
    epochs = 4

    [[rows]]            # one line of the results table
    id = "resnet50-2of4"            # optional; default "<arch>-<N>of<M>"
    arch = "resnet50"
    N = 2
    M = 4
    paper_top1 = 77.6               # every paper_* key is kept beside the row, for the report
    paper_top5 = 93.7
    # methods / seeds / arms = {...} / any training option: override the study's for this row

A row × method × seed is one **run**: the notebook ``notebooks/row.ipynb`` executed by papermill
into ``<runs_root>/<study>/<run_id>/row.ipynb``; the training writes its run directory (see
:mod:`maxq.records`) into the same folder. ``run_id`` is ``<row id>-<method>-s<seed>``, e.g.
``resnet50-2of4-SoftMaxQConv2DBN-s0``.

:func:`run_batch` runs the rows (``jobs`` papermill subprocesses at a time, one kernel each; threads
launch them, never multiprocessing), skips finished runs, keeps going past failures, records
every run's state in ``<runs_root>/<study>/status.csv`` and finally renders the report with
:func:`render_report`. One batch per study (per shard) runs at a time: it holds the study's lock
(:func:`study_lock`) and a second one is refused; SIGTERM and SIGHUP are handled like Ctrl-C (the
kernels are stopped and waited for, the running rows marked ``interrupted``).
"""
from __future__ import annotations

import argparse
import csv
import difflib
import fcntl
import fnmatch
import functools
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from maxq import records

#: the repository root this package lives in (studies/ and notebooks/ sit beside maxq/)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
STATUS = "status.csv"
STATUS_COLUMNS = ("row", "state", "seconds", "error", "run_dir", "notebook",
                  "method", "seed", "attempts", "updated",
                  "executor", "job_id", "job_state")    # the last three: submitit executors
STATES = ("pending", "running", "done", "failed", "skipped", "requeued", "interrupted")
ROW_NOTEBOOK = "row.ipynb"
REPORT_NOTEBOOK = "report.ipynb"
PAPERMILL_LOG = "papermill.log"
KERNEL_NAME = "python3"
DEFAULT_METHODS = ("SoftMaxQConv2DBN",)
DEFAULT_SEEDS = (0,)
#: training options the runner sets itself; a study may not set them
RUNNER_KEYS = ("study", "row", "seed", "conv_bn_type", "save_dir", "overwrite", "resume")
#: options ignored when checking that a finished run belongs to the row (paths, machine, UI)
VOLATILE_KEYS = ("save_dir", "data", "resume", "overwrite", "progress", "workers", "device",
                 "evaluate", "pretrained", "snapshot_epochs", "amp", "channels_last")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STUDY_KEYS = {"study", "defaults", "rows", "claims", "slurm"}
#: keys of a [[claims]] entry: claim text, the paper's statement, run A vs run B (table-row id
#: and method each), and for "margin" claims the margin in points (A within ``margin`` of B)
_CLAIM_KEYS = {"claim", "paper", "row_a", "method_a", "row_b", "method_b", "margin"}
_STUDY_META_KEYS = {"description", "methods", "seeds", "notebook", "method_labels", "focus",
                    "scale_note"}
_ROW_META_KEYS = {"id", "methods", "method", "seeds", "arms", "note"}


class StudyError(ValueError):
    """A study file, a row filter or a shard spec is unusable (nothing was run)."""


class NotebookError(ValueError):
    """A notebook cannot be used (missing, unreadable, or without a ``parameters`` cell)."""


# ----------------------------------------------------------------------------- locations
def runs_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAXQ_RUNS_ROOT``, else ``runs``."""
    return Path(path or os.environ.get("MAXQ_RUNS_ROOT") or "runs")


def reports_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAXQ_REPORTS_ROOT``, else ``reports``."""
    return Path(path or os.environ.get("MAXQ_REPORTS_ROOT") or "reports")


def studies_dirs() -> list[Path]:
    """Where study names are looked up: ``$MAXQ_STUDIES``, ``./studies``, the repo's ``studies/``."""
    dirs = [Path(p) for p in os.environ.get("MAXQ_STUDIES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "studies", PACKAGE_ROOT / "studies"]
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def notebook_path(name: str) -> Path:
    """A notebook of the kit (``row.ipynb``, ``report.ipynb``, ``masks.ipynb``)."""
    for base in (Path.cwd() / "notebooks", PACKAGE_ROOT / "notebooks"):
        if (base / name).exists():
            return base / name
    return PACKAGE_ROOT / "notebooks" / name


def available_studies() -> list[str]:
    names: set[str] = set()
    for d in studies_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


# ----------------------------------------------------------------------------- studies
@dataclass
class Study:
    name: str
    path: Path
    description: str
    defaults: dict[str, Any]
    rows: list[dict[str, Any]]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    notebook: str | None = None
    method_labels: dict[str, str] = field(default_factory=dict)
    focus: str | None = None
    scale_note: str = ""
    claims: list[dict[str, Any]] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)   # [slurm]: see maxq.executors


@dataclass(frozen=True)
class Row:
    """One run of a study: a table row × method × seed."""

    study: str
    id: str                      # run id, the folder name under <runs_root>/<study>/
    table_row: str               # id of the table row (the paper's line)
    method: str                  # --conv-bn-type
    seed: int
    index: int                   # position in the study's full run list
    params: dict[str, Any]       # notebook parameters (training options), runner keys excluded
    paper: dict[str, Any]        # paper_* values of the table row
    arms: dict[str, str]         # ablation labels {group: arm}

    def run_dir(self, root: str | os.PathLike | None = None) -> Path:
        return runs_root(root) / self.study / self.id

    def parameters(self, root: str | os.PathLike | None = None, **extra: Any) -> dict[str, Any]:
        """Everything injected into ``row.ipynb``."""
        out = dict(self.params)
        out.update(study=self.study, row=self.id, conv_bn_type=self.method, seed=self.seed,
                   save_dir=str(self.run_dir(root)))
        out.update(extra)
        return out


def find_study(study: str | os.PathLike) -> Path:
    """Path of a study given by name (``cpu``) or by file path (``studies/cpu.toml``)."""
    text = str(study)
    candidate = Path(text)
    if candidate.suffix == ".toml" or os.sep in text or "/" in text:
        if candidate.is_file():
            return candidate
        raise StudyError(f"study file {text!r} does not exist")
    if not _SAFE_ID.match(text):
        raise StudyError(f"study name {text!r} is not a valid name (letters, digits, . _ -)")
    for d in studies_dirs():
        if (d / f"{text}.toml").is_file():
            return d / f"{text}.toml"
    known = available_studies()
    hint = difflib.get_close_matches(text, known, n=1)
    raise StudyError(f"unknown study {text!r}; known studies: {', '.join(known) or 'none'}"
                     + (f" (did you mean {hint[0]!r}?)" if hint else "")
                     + "; a path to a .toml study file works too")


def load_study(study: "str | os.PathLike | Study") -> Study:
    """Read and check a study file (by name or path)."""
    if isinstance(study, Study):
        return study
    path = find_study(study)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study file {path} is not valid TOML: {exc}") from None
    name = path.stem
    where = f"study {name!r} ({path})"
    unknown = set(data) - _STUDY_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown top-level tables {sorted(unknown)}; "
                         f"allowed: [study], [defaults], [[rows]], [[claims]], [slurm]")
    meta = data.get("study", {})
    unknown = set(meta) - _STUDY_META_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown keys in [study]: {sorted(unknown)}; "
                         f"allowed: {sorted(_STUDY_META_KEYS)}")
    defaults = dict(data.get("defaults", {}))
    _check_runner_keys(defaults, f"{where} [defaults]")
    rows = data.get("rows", [])
    if not isinstance(rows, list) or not rows:
        raise StudyError(f"{where} has no [[rows]]")
    methods = _as_tuple(meta.get("methods", DEFAULT_METHODS), str, f"{where} [study].methods")
    seeds = _as_tuple(meta.get("seeds", DEFAULT_SEEDS), int, f"{where} [study].seeds")
    seen: set[str] = set()
    checked = []
    for i, row in enumerate(rows):
        row = dict(row)
        label = f"{where} row {i + 1}"
        if "id" not in row:
            if not {"arch", "N", "M"} <= (set(row) | set(defaults)):
                raise StudyError(f"{label}: needs an 'id' or arch, N and M")
            merged = {**defaults, **row}
            row["id"] = f"{merged['arch']}-{merged['N']}of{merged['M']}"
        row["id"] = str(row["id"])
        if not _SAFE_ID.match(row["id"]):
            raise StudyError(f"{label}: id {row['id']!r} is not filesystem-safe "
                             f"(letters, digits, . _ - only)")
        if row["id"] in seen:
            raise StudyError(f"{label}: duplicate row id {row['id']!r}")
        seen.add(row["id"])
        _check_runner_keys(row, f"{label} ({row['id']})")
        if "method" in row and "methods" in row:
            raise StudyError(f"{label}: give 'method' or 'methods', not both")
        if "arms" in row and not isinstance(row["arms"], dict):
            raise StudyError(f"{label}: 'arms' must be a table {{group = \"arm\"}}")
        checked.append(row)
    claims = [_check_claim(c, i, where, seen) for i, c in enumerate(data.get("claims", []))]
    slurm = data.get("slurm", {})
    if slurm:
        from maxq.executors import SlurmOptions

        SlurmOptions.from_table(slurm, f"{where} [slurm]")
    return Study(name=name, path=path, description=str(meta.get("description", "")),
                 defaults=defaults, rows=checked, methods=methods, seeds=seeds,
                 notebook=meta.get("notebook"),
                 method_labels=dict(meta.get("method_labels", {})),
                 focus=meta.get("focus"), scale_note=str(meta.get("scale_note", "")),
                 claims=claims, slurm=dict(slurm))


def _check_claim(claim: Any, i: int, where: str, row_ids: set[str]) -> dict[str, Any]:
    label = f"{where} claim {i + 1}"
    if not isinstance(claim, dict):
        raise StudyError(f"{label}: must be a table")
    unknown = set(claim) - _CLAIM_KEYS
    missing = {"claim", "row_a", "method_a", "row_b", "method_b"} - set(claim)
    if unknown or missing:
        raise StudyError(f"{label}: unknown keys {sorted(unknown)}, missing {sorted(missing)}; "
                         f"allowed: {sorted(_CLAIM_KEYS)}")
    for key in ("row_a", "row_b"):
        if claim[key] not in row_ids:
            raise StudyError(f"{label}: {key} {claim[key]!r} is not a row id of the study")
    if "margin" in claim and not (isinstance(claim["margin"], (int, float))
                                  and not isinstance(claim["margin"], bool)
                                  and claim["margin"] >= 0):
        raise StudyError(f"{label}: margin must be a number >= 0 (points)")
    return dict(claim)


def _check_runner_keys(table: dict, where: str) -> None:
    bad = sorted(set(table) & set(RUNNER_KEYS))
    if bad:
        raise StudyError(f"{where}: {bad} are set by the batch runner "
                         f"(use 'methods'/'seeds' for conv_bn_type/seed)")


def _as_tuple(value: Any, kind: type, where: str) -> tuple:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise StudyError(f"{where} must be a non-empty list of {kind.__name__}; got {value!r}")
    return tuple(values)


def run_id(table_row: str, method: str, seed: int) -> str:
    return f"{table_row}-{method}-s{seed}"


def expand(study: "str | os.PathLike | Study",
           options: dict[str, Any] | None = None) -> list[Row]:
    """Every run of a study, in study order (rows, then methods, then seeds)."""
    study = load_study(study)
    options = dict(options or {})
    _check_runner_keys(options, "--option")
    out: list[Row] = []
    for row in study.rows:
        if "method" in row:
            methods = _as_tuple(row["method"], str, f"row {row['id']} method")
        else:
            methods = _as_tuple(row.get("methods", study.methods), str, f"row {row['id']} methods")
        seeds = _as_tuple(row.get("seeds", study.seeds), int, f"row {row['id']} seeds")
        params = dict(study.defaults)
        params.update({k: v for k, v in row.items()
                       if k not in _ROW_META_KEYS and not k.startswith("paper_")})
        params.update(options)
        paper = {k: v for k, v in row.items() if k.startswith("paper_")}
        arms = {str(k): str(v) for k, v in row.get("arms", {}).items()}
        for method in methods:
            for seed in seeds:
                rid = run_id(row["id"], method, seed)
                if not _SAFE_ID.match(rid):
                    raise StudyError(f"run id {rid!r} is not filesystem-safe")
                out.append(Row(study=study.name, id=rid, table_row=row["id"], method=method,
                               seed=seed, index=len(out), params=params, paper=paper, arms=arms))
    return out


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (1 ≤ i ≤ n) → ``(i, n)``."""
    if shard is None or isinstance(shard, tuple):
        return shard
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not match:
        raise StudyError(f"--shard must look like i/n (e.g. 1/3); got {shard!r}")
    i, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= i <= n:
        raise StudyError(f"--shard {shard}: shards are numbered 1..n (n >= 1); got i={i}, n={n}")
    return i, n


def filter_rows(runs: Sequence[Row], rows: str | Iterable[str] | None) -> list[Row]:
    """Keep the runs matching a filter: comma-separated patterns, each a run id, a table-row id,
    a run-id prefix, or a glob (``resnet50*``, ``*SRSTE*``). A pattern that matches nothing is an
    error (so a typo never silently runs nothing)."""
    if rows is None:
        return list(runs)
    patterns = [p.strip() for p in (rows.split(",") if isinstance(rows, str) else rows)]
    patterns = [p for p in patterns if p]
    if not patterns:
        raise StudyError("--rows: empty filter")
    keep: set[str] = set()
    for pattern in patterns:
        hits = {r.id for r in runs if _matches(r, pattern)}
        if not hits:
            ids = sorted({r.table_row for r in runs})
            hint = difflib.get_close_matches(pattern, ids + [r.id for r in runs], n=1)
            raise StudyError(f"--rows: {pattern!r} matches no run of study "
                             f"{runs[0].study if runs else '?'}; rows: {', '.join(ids)}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        keep |= hits
    return [r for r in runs if r.id in keep]


def _matches(row: Row, pattern: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(row.id, pattern) or fnmatch.fnmatchcase(row.table_row, pattern)
    return row.id == pattern or row.table_row == pattern or row.id.startswith(pattern + "-")


def resolve(study: "str | os.PathLike | Study", rows: str | Iterable[str] | None = None,
            shard: str | tuple[int, int] | None = None,
            options: dict[str, Any] | None = None) -> list[Row]:
    """The runs to execute: the study expanded, filtered by ``rows``, then this shard's share
    (round robin over the filtered list, so shards are disjoint and together complete)."""
    runs = filter_rows(expand(study, options), rows)
    spec = parse_shard(shard)
    if spec:
        i, n = spec
        runs = runs[i - 1::n]
    return runs


# ----------------------------------------------------------------------------- notebooks
def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters of a notebook's ``parameters`` cell (name → default as written);
    :class:`NotebookError` when the notebook is missing, unreadable or has no such cell."""
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"notebook {path} does not exist")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise NotebookError(f"notebook {path} cannot be read: {exc}") from None
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise NotebookError(f"notebook {path} has no cell tagged 'parameters' (papermill "
                            f"injects the row's options after that cell; add the tag in "
                            f"JupyterLab: cell → property inspector → tags)")
    import papermill

    try:
        return {name: spec["default"] for name, spec in papermill.inspect_notebook(path).items()}
    except Exception as exc:  # noqa: BLE001
        raise NotebookError(f"notebook {path}: cannot read its parameters cell: {exc}") from None


def _kernel_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if jobs > 1 or key not in env:
            env[key] = threads
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["TQDM_DISABLE"] = "1"          # no progress bars inside kernels: logs stay readable
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MPLBACKEND", None)        # the kernel's inline backend shows the curves
    return env


def execute_notebook(input_path: str | os.PathLike, output_path: str | os.PathLike,
                     parameters: dict[str, Any], *, log_path: str | os.PathLike,
                     cwd: str | os.PathLike | None = None, html_path: str | None = None,
                     timeout: float | None = None, jobs: int = 1) -> tuple[bool, str]:
    """Run one notebook with papermill in its own subprocess (and so its own kernel).

    stdout/stderr of papermill and the kernel go to ``log_path``. Returns ``(ok, error)`` where
    ``error`` is one line (the notebook's exception, a timeout, ...)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    fd, error_file = tempfile.mkstemp(prefix="maxq-batch-", suffix=".err")
    os.close(fd)
    spec = {"input": str(input_path), "output": str(output_path), "parameters": parameters,
            "cwd": str(cwd or Path.cwd()), "error_file": error_file, "html": html_path}
    cmd = [sys.executable, "-m", "maxq.batch", "--execute-notebook", json.dumps(spec)]
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=_kernel_env(jobs),
                                    cwd=str(cwd or Path.cwd()), start_new_session=True)
            with _ACTIVE_LOCK:
                _ACTIVE.add(proc)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return False, f"timed out after {timeout:g} s (see {log_path})"
            except BaseException:
                _kill_group(proc)
                raise
            finally:
                with _ACTIVE_LOCK:
                    _ACTIVE.discard(proc)
        message = Path(error_file).read_text(encoding="utf-8").strip()
        if rc != 0:
            return False, _one_line(message or f"papermill exited with status {rc} "
                                               f"(see {log_path})")
        return True, ""
    finally:
        try:
            os.unlink(error_file)
        except OSError:
            pass


#: papermill subprocesses running now (each the leader of its own session: kernel included)
_ACTIVE: set[subprocess.Popen] = set()
_ACTIVE_LOCK = threading.Lock()
_STOP = threading.Event()


def _kill_active() -> None:
    with _ACTIVE_LOCK:
        procs = list(_ACTIVE)
    for proc in procs:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop papermill's process group and the groups of its descendants (the kernel runs in a
    session of its own, with its data-loader workers): SIGTERM, up to 10 s, then SIGKILL; return
    when all of them have ended."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    groups = {proc.pid}
    for child in descendants:
        try:
            groups.add(os.getpgid(child.pid))
        except OSError:
            pass
    groups.discard(os.getpgrp())              # never our own group
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        for group in groups:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        _, alive = psutil.wait_procs(descendants, timeout=wait)
        if not alive:
            return


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _execute_main(spec_json: str) -> int:
    """Inside the subprocess: papermill (and nbconvert for ``html``)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    spec = json.loads(spec_json)
    error_file = spec["error_file"]
    try:
        import papermill

        papermill.execute_notebook(
            spec["input"], spec["output"], parameters=spec["parameters"],
            kernel_name=KERNEL_NAME, progress_bar=False, log_output=True, cwd=spec["cwd"],
            request_save_on_cell_execute=True)
        if spec.get("html"):
            import nbconvert
            import nbformat

            body, _ = nbconvert.HTMLExporter().from_notebook_node(
                nbformat.read(spec["output"], as_version=4))
            records.atomic_write_text(spec["html"], body)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes the row's error line
        ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
        message = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
        Path(error_file).write_text(_one_line(message), encoding="utf-8")
        print(f"maxq batch: {message}", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------- status table
def status_path(study: str, root: str | os.PathLike | None = None) -> Path:
    return runs_root(root) / study / STATUS


def read_status(study: str, root: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """``status.csv`` as ``{row: {column: value}}`` (empty when there is none yet)."""
    return read_status_file(status_path(study, root))


def read_status_file(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {line["row"]: dict(line) for line in csv.DictReader(handle)}


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
                line[key] = "" if value is None else str(value)
            line["updated"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
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
        stored = _stored_config(records.read_run(run_dir)["config"])
    except (records.RunRecordError, OSError, ValueError) as exc:
        return f"unreadable run directory: {exc}"
    wanted = row.parameters()
    diffs = []
    for key, value in sorted(wanted.items()):
        if key in VOLATILE_KEYS or key not in stored:
            continue
        if not _same(stored[key], value):
            diffs.append(f"{key}: {stored[key]!r} there, {value!r} in the study")
    return "; ".join(diffs)


def _stored_config(config: dict) -> dict:
    """The training options inside ``config.json`` (nested under a key or flat)."""
    for key in ("config", "args", "options", "train"):
        if isinstance(config.get(key), dict):
            return config[key]
    return config


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


def _prepare(row: Row, root: Path, force: bool, allowed: set[str] | None) -> tuple[str, str, dict]:
    """Decide what to do with a run: ("skip"|"fail"|"run", message, extra parameters)."""
    if allowed is not None:
        unknown = sorted(set(row.params) - allowed)
        if unknown:
            hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)"
                                 if (m := difflib.get_close_matches(k, sorted(allowed), n=1))
                                 else "") for k in unknown]
            return "fail", f"unknown training option(s) {', '.join(hints)}", {}
    run_dir = row.run_dir(root)
    if records.is_finished(run_dir) and not force:
        mismatch = config_mismatch(row, run_dir)
        if mismatch:
            return "fail", (f"{run_dir} holds a finished run written by another config "
                            f"({mismatch}); not overwritten: use --force to re-run it"), {}
        return "skip", "", {}
    if force or (run_dir / records.CONFIG).exists():
        # a forced re-run, or a retry of an unfinished run: start again from scratch
        return "run", "", {"overwrite": True}
    return "run", "", {}


def run_row(row: Row, *, root: Path, notebook: Path, extra: dict[str, Any],
            timeout: float | None = None, jobs: int = 1) -> Outcome:
    """Execute ``row.ipynb`` for one run; the run is done when ``result.json`` exists."""
    run_dir = row.run_dir(root)
    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = row.parameters(root, **extra)
    parameters["save_dir"] = str(run_dir.resolve())
    start = time.monotonic()
    ok, error = execute_notebook(notebook, run_dir / ROW_NOTEBOOK, parameters,
                                 log_path=run_dir / PAPERMILL_LOG, timeout=timeout, jobs=jobs)
    seconds = time.monotonic() - start
    if ok and not records.is_finished(run_dir):
        ok, error = False, f"the notebook finished but {run_dir / records.RESULT} was not written"
    return Outcome(row, "done" if ok else "failed", seconds, error)


# ----------------------------------------------------------------------------- the batch
@dataclass
class BatchResult:
    study: str
    runs: list[Row]
    outcomes: list[Outcome]
    status_path: Path
    report: Path | None = None
    report_error: str = ""

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.report_error


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C; ``signum`` gives the exit status 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signals():
    """Turn SIGTERM and SIGHUP into :class:`Interrupted` in the main thread (once); returns the
    function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame):
        if not _STOP.is_set():
            _STOP.set()
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()]


def study_lock(study: str, root: str | os.PathLike | None = None,
               shard: str | tuple[int, int] | None = None) -> records.RunLock:
    """The lock one ``maxq batch`` holds on a study (one per shard) while it runs."""
    spec = parse_shard(shard)
    name = ".lock" if spec is None else f".lock-shard{spec[0]}of{spec[1]}"
    return records.RunLock(runs_root(root) / study, what=f"study {study!r} (status in)",
                           name=name)


def _one_batch_per_study(run: Callable[..., "BatchResult"]) -> Callable[..., "BatchResult"]:
    """Around :func:`run_batch`: hold the study's lock for the whole batch (a second batch of
    the same study and shard is refused with the holder's pid) and handle SIGTERM and SIGHUP
    like Ctrl-C (kernels stopped, rows marked interrupted)."""

    @functools.wraps(run)
    def wrapper(study, **kwargs):
        if kwargs.get("dry_run"):
            return run(study, **kwargs)
        spec = load_study(study)             # bad input is refused before the lock is taken
        resolve(spec, rows=kwargs.get("rows"), shard=kwargs.get("shard"),
                options=kwargs.get("options"))
        lock = study_lock(spec.name, kwargs.get("runs"), kwargs.get("shard"))
        created = not lock.directory.exists()
        try:
            with lock:
                restore = _stop_on_signals()
                try:
                    return run(study, **kwargs)
                finally:
                    restore()
                    _STOP.clear()
        finally:
            if created:
                try:
                    lock.directory.rmdir()   # only when the batch left nothing there
                except OSError:
                    pass

    return wrapper


@_one_batch_per_study
def run_batch(study: "str | os.PathLike", *, rows: str | None = None, shard: str | None = None,
              jobs: int = 1, force: bool = False, dry_run: bool = False,
              runs: str | os.PathLike | None = None, reports: str | os.PathLike | None = None,
              notebook: str | os.PathLike | None = None, report: bool = True,
              options: dict[str, Any] | None = None, timeout: float | None = None,
              echo: Callable[[str], None] = print, progress: bool = True,
              executor: str = "threads", slurm: dict[str, Any] | None = None) -> BatchResult:
    """Run (or, with ``dry_run``, list) the runs of a study; then render its report.

    ``executor``: ``threads`` (papermill kernels on local threads) or ``submitit-local`` /
    ``slurm`` (one submitit job per run, see :mod:`maxq.executors`; ``slurm`` overrides the
    study's ``[slurm]`` table).

    Raises :class:`StudyError` for an unknown study, filter or shard (nothing is run). Every
    other problem is per run: recorded in ``status.csv``, printed, and the batch goes on."""
    spec = load_study(study)
    selected = resolve(spec, rows=rows, shard=shard, options=options)
    root = runs_root(runs)
    table = status_path(spec.name, root)
    job_options = None
    if executor != "threads":
        from maxq import executors

        if executor not in executors.EXECUTORS:
            raise StudyError(f"unknown --executor {executor!r}; choose one of "
                             f"{', '.join(executors.EXECUTORS)}")
        job_options = executors.options_from(spec.slurm, **(slurm or {}))
    if dry_run:
        echo(format_rows(selected, root))
        echo(f"{len(selected)} run(s) of study {spec.name!r} ({spec.path}); "
             f"run directories under {root / spec.name}")
        if executor == "slurm":
            echo(f"each run is one SLURM job ({executors.describe(job_options)}); its sbatch "
                 f"file:\n" + executors.sbatch_script(
                     job_options, executors.jobs_folder(spec.name, root), f"maxq-{spec.name}"))
        return BatchResult(spec.name, selected, [], table)
    if jobs < 1:
        raise StudyError(f"--jobs must be >= 1; got {jobs}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise StudyError(f"--timeout must be a finite number of seconds > 0; got {timeout!r}")
    nb_path = Path(notebook) if notebook else (
        (spec.path.parent / spec.notebook) if spec.notebook else notebook_path(ROW_NOTEBOOK))
    status = StatusTable(spec.name, root)
    outcomes: list[Outcome] = []
    try:
        allowed: set[str] | None = set(notebook_parameters(nb_path))
    except NotebookError as exc:
        for row in selected:
            outcomes.append(Outcome(row, "failed", 0.0, str(exc)))
            status.update(row.id, state="failed", seconds=0.0, error=_one_line(str(exc)),
                          run_dir=row.run_dir(root), notebook=nb_path, method=row.method,
                          seed=row.seed)
        echo(f"maxq batch: {exc}")
        echo(f"maxq batch: {len(selected)} run(s) marked failed in {table}")
        return BatchResult(spec.name, selected, outcomes, table)

    todo: list[tuple[Row, dict]] = []
    for row in selected:
        action, message, extra = _prepare(row, root, force, allowed)
        common = dict(run_dir=row.run_dir(root), method=row.method, seed=row.seed)
        if action == "skip":
            previous = status.lines.get(row.id, {})
            status.update(row.id, state="skipped", error="", seconds=previous.get("seconds", ""),
                          notebook=previous.get("notebook") or row.run_dir(root) / ROW_NOTEBOOK,
                          **common)
            outcomes.append(Outcome(row, "skipped"))
        elif action == "fail":
            status.update(row.id, state="failed", seconds=0.0, error=_one_line(message),
                          notebook="", **common)
            outcomes.append(Outcome(row, "failed", 0.0, message))
            echo(f"maxq batch: {row.id}: FAILED: {message}")
        else:
            status.update(row.id, state="pending", seconds="", error="",
                          notebook=row.run_dir(root) / ROW_NOTEBOOK, **common,
                          **(dict(executor="threads", job_id="", job_state="")
                             if executor == "threads" else {}))  # submitit: set on submission
            todo.append((row, extra))
    skipped = sum(o.state == "skipped" for o in outcomes)
    echo(f"maxq batch: study {spec.name!r}: {len(selected)} run(s): {len(todo)} to run, "
         f"{skipped} already finished, {len(outcomes) - skipped} refused; "
         f"{jobs} at a time; status in {table}")

    bar = _progress_bar(len(todo), spec.name, progress)
    if executor != "threads":
        # submitit: one job per run (maxq/executors.py); nothing is left for the threads below
        try:
            outcomes.extend(executors.run_jobs(
                executor, todo, study=spec.name, status=status, root=root, notebook=nb_path,
                options=job_options, jobs=jobs, timeout=timeout, echo=echo, bar=bar))
        except BaseException:
            bar.close()
            raise
        todo = []

    def work(item: tuple[Row, dict]) -> Outcome:
        row, extra = item
        if _STOP.is_set():
            return Outcome(row, "pending")
        line = status.lines.get(row.id, {})
        attempts = int(line.get("attempts") or 0) + 1
        status.update(row.id, state="running", attempts=attempts)
        try:
            outcome = run_row(row, root=root, notebook=nb_path, extra=extra, timeout=timeout,
                              jobs=jobs)
        except Exception as exc:  # noqa: BLE001 - a runner bug must not stop other rows
            outcome = Outcome(row, "failed", 0.0, f"{type(exc).__name__}: {exc}")
        if _STOP.is_set() and outcome.state == "failed":
            outcome.state, outcome.error = "interrupted", "interrupted"
        status.update(row.id, state=outcome.state, seconds=outcome.seconds,
                      error=_one_line(outcome.error))
        message = f"{row.id}: {outcome.state} in {outcome.seconds:.0f} s"
        if outcome.error:
            message += f": {_one_line(outcome.error, 300)}"
        bar.write(message)
        bar.update(1)
        return outcome

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        outcomes.extend(pool.map(work, todo))
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        # Ctrl-C, SIGTERM, SIGHUP: stop launching, end the running kernels (they are in their
        # own sessions), record the runs as interrupted (retried next time), leave the others
        # pending
        _STOP.set()
        _kill_active()
        pool.shutdown(wait=True, cancel_futures=True)
        for row, _ in todo:
            if status.lines.get(row.id, {}).get("state") == "running":
                status.update(row.id, state="interrupted", error="interrupted")
        echo(f"maxq batch: interrupted; status in {table}")
        raise
    finally:
        _STOP.clear()
        bar.close()
    outcomes.sort(key=lambda o: o.row.index)
    failed = [o for o in outcomes if o.state == "failed"]
    echo(f"maxq batch: {sum(o.state == 'done' for o in outcomes)} done, "
         f"{sum(o.state == 'skipped' for o in outcomes)} skipped, {len(failed)} failed "
         f"(status: {table})")
    for o in failed:
        echo(f"  FAILED {o.row.id}: {_one_line(o.error, 300)}")
    result = BatchResult(spec.name, selected, outcomes, table)
    if report:
        echo(f"maxq batch: rendering the report of study {spec.name!r} ...")
        ok, error, html = render_report(spec, runs=root, reports=reports, timeout=timeout)
        result.report = html
        if ok:
            echo(f"maxq batch: report: {html}")
        else:
            result.report_error = error
            echo(f"maxq batch: the report failed: {error}")
    return result


def _progress_bar(total: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"study {name}", unit="run", disable=not enabled or total == 0,
                file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


def format_rows(rows: Sequence[Row], root: str | os.PathLike | None = None) -> str:
    """A plain-text table of resolved runs (for ``--dry-run``)."""
    header = ("run", "arch", "N:M", "method", "seed", "epochs", "finished", "run_dir")
    lines = [header]
    for r in rows:
        p = r.params
        lines.append((r.id, str(p.get("arch", "")), f"{p.get('N', '?')}:{p.get('M', '?')}",
                      r.method, str(r.seed), str(p.get("epochs", "")),
                      "yes" if records.is_finished(r.run_dir(root)) else "no",
                      str(r.run_dir(root))))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)


# ----------------------------------------------------------------------------- report
def report_dir(study: str, root: str | os.PathLike | None = None) -> Path:
    return reports_root(root) / study


def render_report(study: "str | os.PathLike | Study", *, runs: str | os.PathLike | None = None,
                  reports: str | os.PathLike | None = None, notebook: str | os.PathLike | None = None,
                  html: bool = True, timeout: float | None = None,
                  rerun: str | os.PathLike | None = None) -> tuple[bool, str, Path]:
    """Execute ``report.ipynb`` for a study into ``<reports_root>/<study>/report.ipynb`` and
    convert it to ``report.html``. ``rerun``: a runs root holding a re-run of some of the study's
    runs (same seeds, e.g. another thread count or machine) for the robustness section.
    Returns ``(ok, error, html_path)``."""
    spec = load_study(study)
    out = report_dir(spec.name, reports)
    out.mkdir(parents=True, exist_ok=True)
    nb = Path(notebook) if notebook else notebook_path(REPORT_NOTEBOOK)
    html_path = out / "report.html"
    try:
        notebook_parameters(nb)
    except NotebookError as exc:
        return False, str(exc), html_path
    parameters = {"study": str(spec.path.resolve()), "runs_root": str(runs_root(runs).resolve()),
                  "reports_root": str(reports_root(reports).resolve())}
    if rerun is not None:
        rerun_dir = runs_root(rerun).resolve()
        if not (rerun_dir / spec.name).is_dir():
            raise StudyError(f"--rerun-root {rerun}: no run directories of study "
                             f"'{spec.name}' in {rerun_dir / spec.name}")
        parameters["rerun_root"] = str(rerun_dir)
    ok, error = execute_notebook(nb, out / "report.ipynb", parameters,
                                 log_path=out / PAPERMILL_LOG,
                                 html_path=str(html_path) if html else None, timeout=timeout)
    return ok, error, html_path


# ----------------------------------------------------------------------------- command line
def _parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise StudyError(f"--option expects KEY=VALUE; got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text                       # a bare word: a string
        out[key.strip()] = value
    return out


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study name (studies/<name>.toml: paper, cpu, ablation, "
                                      "smoke) or the path of a study file")
    parser.add_argument("--rows", default=None, metavar="FILTER",
                        help="comma-separated run ids, row ids, prefixes or globs "
                             "(e.g. 'resnet50*', '*SRSTE*')")
    parser.add_argument("--shard", default=None, metavar="i/n",
                        help="run only shard i of n (1-based, round robin over the runs)")
    parser.add_argument("--jobs", type=int, default=1, metavar="K",
                        help="papermill runs at a time (each its own kernel; threads per "
                             "kernel = cores // K)")
    parser.add_argument("--force", action="store_true",
                        help="re-run finished runs too (their run directories are overwritten)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved runs and stop")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="override a training option for every run (repeatable), e.g. "
                             "--option data=/datasets/imagenet --option device=cuda")
    parser.add_argument("--runs-root", default=None,
                        help="where run directories go (default $MAXQ_RUNS_ROOT or runs)")
    parser.add_argument("--reports-root", default=None,
                        help="where reports go (default $MAXQ_REPORTS_ROOT or reports)")
    parser.add_argument("--notebook", default=None, help="row notebook (default notebooks/row.ipynb)")
    parser.add_argument("--no-report", action="store_true", help="do not render the report")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="give up on a run after S seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--status", action="store_true",
                        help="print the runs' status table (refreshed from the run directories "
                             "and SLURM) and stop; nothing is launched")
    parser.add_argument("--executor", default="threads",
                        choices=("threads", "submitit-local", "slurm"),
                        help="threads: papermill kernels here (--jobs at a time); slurm: one "
                             "SLURM job per run through submitit; submitit-local: the same jobs "
                             "as local processes (--jobs at a time)")
    slurm = parser.add_argument_group(
        "SLURM (--executor slurm; also a [slurm] table of the study file, which these override)")
    slurm.add_argument("--slurm-partition", default=None, metavar="NAME")
    slurm.add_argument("--slurm-gpus-per-run", type=int, default=None, metavar="K",
                       help="GPUs per run, one task (process) each (default 1)")
    slurm.add_argument("--slurm-nodes", type=int, default=None, metavar="K",
                       help="nodes per run; the GPUs are split evenly (default 1)")
    slurm.add_argument("--slurm-time", default=None, metavar="LIMIT",
                       help="time limit per job (minutes, HH:MM:SS or D-HH:MM:SS; default 24 h); "
                            "a job at its limit or preempted is requeued and resumes")
    slurm.add_argument("--slurm-account", default=None, metavar="NAME")
    slurm.add_argument("--slurm-qos", default=None, metavar="NAME")
    slurm.add_argument("--slurm-constraint", default=None, metavar="EXPR")
    slurm.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="K",
                       help="CPU cores per task (per GPU; default 10)")


def run_batch_command(args: argparse.Namespace) -> int:
    """``maxq batch``: 0 when every run is done or skipped, 1 when some failed, 2 on bad input."""
    slurm = {name: getattr(args, f"slurm_{name}", None) for name in (
        "partition", "gpus_per_run", "nodes", "time", "account", "qos", "constraint",
        "cpus_per_task")}
    try:
        if getattr(args, "status", False):
            from maxq import executors

            executors.print_status(args.study, root=args.runs_root, rows=args.rows,
                                   shard=args.shard)
            return 0
        result = run_batch(args.study, rows=args.rows, shard=args.shard, jobs=args.jobs,
                           force=args.force, dry_run=args.dry_run, runs=args.runs_root,
                           reports=args.reports_root, notebook=args.notebook,
                           report=not args.no_report, options=_parse_options(args.option),
                           timeout=args.timeout, progress=not args.no_progress,
                           executor=getattr(args, "executor", "threads"), slurm=slurm)
    except (StudyError, records.RunDirBusy) as exc:
        print(f"maxq batch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:           # Ctrl-C 130, SIGTERM 143, SIGHUP 129
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"maxq batch: error: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    return 0 if result.ok else 1


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study name or study file path")
    parser.add_argument("--runs-root", default=None,
                        help="where run directories are (default $MAXQ_RUNS_ROOT or runs)")
    parser.add_argument("--reports-root", default=None,
                        help="where reports go (default $MAXQ_REPORTS_ROOT or reports)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML rendering")
    parser.add_argument("--rerun-root", default=None, metavar="DIR",
                        help="runs root with a re-run of some of the study's runs (same seeds, "
                             "another thread count or machine): adds the robustness section")


def run_report_command(args: argparse.Namespace) -> int:
    """``maxq report``: render ``reports/<study>/`` from the run directories."""
    try:
        ok, error, html = render_report(args.study, runs=args.runs_root,
                                        reports=args.reports_root, html=not args.no_html,
                                        rerun=args.rerun_root)
    except StudyError as exc:
        print(f"maxq report: error: {exc}", file=sys.stderr)
        return 2
    if not ok:
        print(f"maxq report: failed: {error}", file=sys.stderr)
        return 1
    print(f"maxq report: {html if not args.no_html else html.parent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--execute-notebook"] and len(argv) == 2:
        return _execute_main(argv[1])
    parser = argparse.ArgumentParser(prog="python -m maxq.batch",
                                     description="run a study (same as `maxq batch`)")
    add_batch_arguments(parser)
    return run_batch_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
