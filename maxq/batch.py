"""The study runner: a study's runs → papermill notebooks → ``status.csv`` → report.

What a study is (the TOML schema, its runs, filters and shards) lives in :mod:`maxq.studies`;
this module executes them. A run is the notebook ``notebooks/row.ipynb`` executed by papermill
into ``<runs_root>/<study>/<run_id>/row.ipynb``; the training writes its run directory (see
:mod:`maxq.records`) into the same folder.

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
import functools
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from tabulate import tabulate

from maxq import config, paths, records
from maxq.studies import (PACKAGE_ROOT, STATUS_COLUMNS, Row, Study, StudyError, load_study,
                          parse_shard, read_status, read_status_file, report_dir, reports_root,
                          resolve, runs_root, status_path)

ROW_NOTEBOOK = "row.ipynb"
REPORT_NOTEBOOK = "report.ipynb"
PAPERMILL_LOG = "papermill.log"
KERNEL_NAME = "python3"


class NotebookError(ValueError):
    """A notebook cannot be used (missing, unreadable, or without a ``parameters`` cell)."""


# ----------------------------------------------------------------------------- notebooks
def notebook_path(name: str) -> Path:
    """A notebook of the kit (``row.ipynb``, ``report.ipynb``, ``masks.ipynb``)."""
    for base in (Path.cwd() / "notebooks", paths.kit_dir("notebooks")):
        if (base / name).exists():
            return base / name
    return paths.kit_file("notebooks", name)


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

            # a reader's page: no code cells or prompts, titled by the report's folder (study);
            # raw HTML in Markdown (text from study files) escaped
            body, _ = html_exporter().from_notebook_node(
                nbformat.read(spec["output"], as_version=4), resources={
                    "metadata": {"name": f"MaxQ report: {Path(spec['html']).parent.name}"}})
            records.atomic_write_text(spec["html"], body)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes the row's error line
        ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
        message = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
        Path(error_file).write_text(_one_line(message), encoding="utf-8")
        print(f"maxq batch: {message}", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------- status table
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


def _prepare(row: Row, root: Path, force: bool, allowed: set[str] | None) -> tuple[str, str, dict]:
    """Decide what to do with a run: ("skip"|"fail"|"corrupt"|"run", message, extra
    parameters)."""
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
        return [o for o in self.outcomes if o.state in ("failed", "corrupt")]

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


#: the most kernels (or local jobs) at a time, and the longest --timeout of one run (30 days)
MAX_JOBS, MAX_TIMEOUT_S = 256, 30 * 24 * 3600.0


def check_batch_numbers(jobs: Any, timeout: Any) -> None:
    """``--jobs`` in 1..MAX_JOBS, ``--timeout`` in (0, MAX_TIMEOUT_S]: else one line
    (:class:`StudyError`), before anything is written."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise StudyError(f"--jobs must be an integer in 1..{MAX_JOBS}; got {jobs!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout)
                                    and 0 < timeout <= MAX_TIMEOUT_S):
        raise StudyError(f"--timeout must be a finite number of seconds > 0 and <= "
                         f"{MAX_TIMEOUT_S:g}; got {timeout!r}")


def _one_batch_per_study(run: Callable[..., "BatchResult"]) -> Callable[..., "BatchResult"]:
    """Around :func:`run_batch`: hold the study's lock for the whole batch (a second batch of
    the same study and shard is refused with the holder's pid) and handle SIGTERM and SIGHUP
    like Ctrl-C (kernels stopped, rows marked interrupted)."""

    @functools.wraps(run)
    def wrapper(study, **kwargs):
        if kwargs.get("dry_run"):
            return run(study, **kwargs)
        spec = load_study(study)             # bad input is refused before the lock is taken
        check_batch_numbers(kwargs.get("jobs", 1), kwargs.get("timeout"))
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
        from maxq import executors   # executors import batch: a real cycle

        if executor not in executors.EXECUTORS:
            raise StudyError(f"unknown --executor {executor!r}; choose one of "
                             f"{', '.join(executors.EXECUTORS)}")
        job_options = executors.options_from(spec.slurm, **(slurm or {}))
    if dry_run:
        echo(format_rows(selected, root))
        echo(f"{len(selected)} run(s) of study {spec.name!r} ({spec.path}); "
             f"run directories under {root / spec.name}")
        shared = [r for r in selected if r.home]
        if shared:
            echo(f"{len(shared)} of them shared with {', '.join(sorted({r.home for r in shared}))}"
                 f" (same options, option by option): their run directories are that study's, "
                 f"trained once")
        if executor == "slurm":
            echo(f"each run is one SLURM job ({executors.describe(job_options)}); its sbatch "
                 f"file:\n" + executors.sbatch_script(
                     job_options, executors.jobs_folder(spec.name, root), f"maxq-{spec.name}"))
        return BatchResult(spec.name, selected, [], table)
    check_batch_numbers(jobs, timeout)
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
        elif action in ("fail", "corrupt"):
            state = "failed" if action == "fail" else "corrupt"
            status.update(row.id, state=state, seconds=0.0, error=_one_line(message),
                          notebook="", **common)
            outcomes.append(Outcome(row, state, 0.0, message))
            echo(f"maxq batch: {row.id}: {state.upper()}: {message}")
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
    failed = [o for o in outcomes if o.state in ("failed", "corrupt")]
    echo(f"maxq batch: {sum(o.state == 'done' for o in outcomes)} done, "
         f"{sum(o.state == 'skipped' for o in outcomes)} skipped, {len(failed)} failed "
         f"(status: {table})")
    for o in failed:
        echo(f"  {o.state.upper()} {o.row.id}: {_one_line(o.error, 300)}")
    result = BatchResult(spec.name, selected, outcomes, table)
    if report:
        echo(f"maxq batch: rendering the report of study {spec.name!r} ...")
        try:
            ok, error, html = render_report(spec, runs=root, reports=reports, timeout=timeout)
        except StudyError as exc:          # refused (no finished run, fewer than committed)
            ok, error, html = False, str(exc), report_dir(spec.name, reports) / "report.html"
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
    shared = any(r.home for r in rows)
    header = ("run", "arch", "N:M", "method", "seed", "epochs", "finished", "run_dir") + (
        ("shared with",) if shared else ())
    lines = []
    for r in rows:
        p = r.params
        lines.append((r.id, str(p.get("arch", "")), f"{p.get('N', '?')}:{p.get('M', '?')}",
                      r.method, str(r.seed), str(p.get("epochs", "")),
                      "yes" if records.is_finished(r.run_dir(root)) else "no",
                      str(r.run_dir(root))) + ((f"{r.home}/{r.home_id}" if r.home else "-",)
                                               if shared else ()))
    return tabulate(lines, headers=header, tablefmt="plain", disable_numparse=True)


# ----------------------------------------------------------------------------- report
def render_report(study: "str | os.PathLike | Study", *, runs: str | os.PathLike | None = None,
                  reports: str | os.PathLike | None = None, notebook: str | os.PathLike | None = None,
                  html: bool = True, timeout: float | None = None,
                  rerun: str | os.PathLike | None = None,
                  force: bool = False) -> tuple[bool, str, Path]:
    """Execute ``report.ipynb`` for a study and convert it to ``report.html``; the report
    replaces ``<reports_root>/<study>/`` only when it is complete.

    Refused first (:class:`maxq.results.ReportRefused`, a :class:`StudyError`; nothing written)
    when the study has no finished run, or, without ``force``, fewer finished runs than the
    report already there (its ``runs.csv``). The notebook then runs into a fresh folder beside
    the target (``<reports_root>/.<study>.render-XXXX/<study>/``, the notebook's
    ``report_folder``); when papermill, the HTML and
    a final check that ``report.ipynb`` reads back succeed, that folder is swapped in (the old
    report is kept until the swap and removed after it). On failure the old report is untouched,
    the temporary folder is removed and its ``papermill.log`` kept in the system's temporary
    directory (named in the error). ``rerun``: a runs root holding a re-run of some of the
    study's runs (same seeds, another thread count or machine), or the ``runs.csv`` of a report
    made from such runs (e.g. a committed report's, copied before it is re-rendered), for the
    robustness section.
    Returns ``(ok, error, html_path)`` (the path in the final folder)."""
    from maxq import results

    spec = load_study(study)
    root = reports_root(reports)
    out = report_dir(spec.name, reports)
    nb = Path(notebook) if notebook else notebook_path(REPORT_NOTEBOOK)
    html_path = out / "report.html"
    try:
        notebook_parameters(nb)
    except NotebookError as exc:
        return False, str(exc), html_path
    results.check_report(results.load(spec, runs), reports, force=force, runs_root=runs)
    parameters = {"study": str(spec.path.resolve()), "runs_root": str(runs_root(runs).resolve())}
    if rerun is not None and Path(rerun).suffix == ".csv":
        parameters["rerun_root"] = str(results.rerun_table(rerun, spec.name)[1])
    elif rerun is not None:
        rerun_dir = runs_root(rerun).resolve()
        if not (rerun_dir / spec.name).is_dir():
            raise StudyError(f"--rerun-root {rerun}: no run directories of study "
                             f"'{spec.name}' in {rerun_dir / spec.name}")
        parameters["rerun_root"] = str(rerun_dir)
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.render-", dir=root))
    staged = stage / spec.name
    try:
        parameters.update(reports_root=str(root.resolve()), force=bool(force),
                          report_folder=str(staged.resolve()))
        staged_html = staged / "report.html"
        ok, error = execute_notebook(nb, staged / REPORT_NOTEBOOK, parameters,
                                     log_path=staged / PAPERMILL_LOG,
                                     html_path=str(staged_html) if html else None,
                                     timeout=timeout)
        if ok:
            ok, error = _check_rendered(staged, html)
        if not ok:
            kept = _keep_log(staged / PAPERMILL_LOG, spec.name)
            where = f"; its log: {kept}" if kept else ""
            return False, f"{error} ({out} left as it was{where})", html_path
        _swap_in(staged, out, stage)
        return True, "", html_path
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_rendered(folder: Path, html: bool) -> tuple[bool, str]:
    """The rendered report reads back: report.ipynb is a valid notebook, report.html exists."""
    import nbformat

    try:
        nbformat.read(str(folder / REPORT_NOTEBOOK), as_version=4)
    except Exception as exc:  # noqa: BLE001 - a truncated or garbled notebook: not swapped in
        return False, f"the rendered {REPORT_NOTEBOOK} does not read back: {_one_line(exc, 200)}"
    if html and not (folder / "report.html").is_file():
        return False, "report.html was not written"
    return True, ""


def _keep_log(log: Path, name: str) -> str:
    try:
        fd, kept = tempfile.mkstemp(prefix=f"maxq-report-{name}-", suffix=".log")
        with os.fdopen(fd, "wb") as handle:
            handle.write(log.read_bytes())
        return kept
    except OSError:
        return ""


def _swap_in(new: Path, target: Path, stage: Path) -> None:
    """Put the complete folder ``new`` at ``target``: files only the old one has are copied
    into ``new``, the old one moves aside into ``stage`` (same file system: renames), comes
    back when the second rename fails, and is removed with ``stage`` afterwards."""
    old = stage / ".previous"
    had_old = target.exists()
    if had_old:
        # files of the old report the new one did not write (e.g. robustness.* of a render
        # with --rerun-root) are kept, as rendering in place kept them: nothing is lost
        for path in sorted(target.rglob("*")):
            kept = new / path.relative_to(target)
            if path.is_file() and not kept.exists():
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, kept)
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if had_old:
            os.rename(old, target)
        raise


def html_exporter():
    """nbconvert's HTML exporter with the raw HTML of Markdown (cells and outputs) escaped: text
    from study files (``[study] description``, labels, claims) is shown, never run."""
    import nbconvert
    from jinja2 import pass_context
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class EscapingHTMLExporter(nbconvert.HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            renderer = IPythonRenderer(
                escape=True, attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links, **self.lexer_options)
            return MarkdownWithMath(renderer=renderer).render(source)

    return EscapingHTMLExporter(exclude_input=True, exclude_input_prompt=True,
                                exclude_output_prompt=True)


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
            from maxq import executors   # executors import batch: a real cycle

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
    parser.add_argument("--rerun-root", default=None, metavar="DIR|CSV",
                        help="runs root with a re-run of some of the study's runs (same seeds, "
                             "another thread count or machine), or the runs.csv of a report "
                             "made from such runs: adds the robustness section")
    parser.add_argument("--force", action="store_true",
                        help="replace a report made from more finished runs than there are now")


def run_report_command(args: argparse.Namespace) -> int:
    """``maxq report``: render ``reports/<study>/`` from the run directories."""
    try:
        ok, error, html = render_report(args.study, runs=args.runs_root,
                                        reports=args.reports_root, html=not args.no_html,
                                        rerun=args.rerun_root,
                                        force=getattr(args, "force", False))
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
