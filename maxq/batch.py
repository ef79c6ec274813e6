"""The study runner: a study's runs → papermill notebooks → ``status.csv`` → report.

What a study is (the TOML schema, its runs, filters and shards) lives in :mod:`maxq.studies`;
this module executes them. A run is the notebook ``notebooks/row.ipynb`` executed by papermill
into ``<runs_root>/<study>/<run_id>/row.ipynb``; the training writes its run directory (see
:mod:`maxq.records`) into the same folder.

:func:`run_batch` checks everything first (the study, its training options against
:class:`maxq.config.TrainConfig`, the filter, shard and executor: every problem printed, exit 2,
nothing written), then hands the runs to an executor of :mod:`maxq.executors` (``threads``
by default: ``jobs`` papermill subprocesses at a time, one kernel each), skips finished runs,
keeps going past failures, records every run's state in ``<runs_root>/<study>/status.csv``
(:mod:`maxq.rowrun`) and finally renders the report with :func:`render_report`. One batch per
study (per shard) runs at a time: it holds the study's lock (:func:`study_lock`) and a second
one is refused; SIGTERM and SIGHUP are handled like Ctrl-C (the kernels are stopped and waited
for, the running rows marked ``interrupted``).

Imports go one way: studies -> notebook_exec -> rowrun -> jobs -> executors -> batch -> cli
(tests/test_imports.py).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tabulate import tabulate

from maxq import records, slurm_options
from maxq.paths import base, base_relative
from maxq.errors import StudyError, StudyOptionsError
from maxq.executors import (DEFAULT_EXECUTOR, EXECUTORS, Batch, executor_class,
                            print_status)
# the notebook and run-one-row pieces, importable from here as before the split
from maxq.notebook_exec import (PACKAGE_ROOT, PAPERMILL_LOG, REPORT_NOTEBOOK,  # noqa: F401
                                ROW_NOTEBOOK, STOP, NotebookError, _kernel_env,
                                execute_notebook, notebook_parameters, notebook_path, one_line)
from maxq.rowrun import Outcome, StatusTable, check_row_notebook, plan_row  # noqa: F401
from maxq.studies import (Row, Study, load_study, option_errors, parse_shard,  # noqa: F401
                          report_dir, reports_root, resolve, runs_root, status_path)


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
        if not STOP.is_set():
            STOP.set()
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


@contextlib.contextmanager
def _one_batch_per_study(spec: Study, runs: "str | os.PathLike | None", shard: str | None):
    """Hold the study's lock for the whole batch (a second batch of the same study and shard
    is refused with the holder's pid) and handle SIGTERM and SIGHUP like Ctrl-C (kernels
    stopped, rows marked interrupted)."""
    lock = study_lock(spec.name, runs, shard)
    created = not lock.directory.exists()
    try:
        with lock:
            restore = _stop_on_signals()
            try:
                yield
            finally:
                restore()
                STOP.clear()
    finally:
        if created:
            try:
                lock.directory.rmdir()   # only when the batch left nothing there
            except OSError:
                pass


def check_input(study: "str | os.PathLike | Study", *, rows: str | None = None,
                shard: str | None = None, options: dict[str, Any] | None = None,
                executor: str = DEFAULT_EXECUTOR, slurm: dict[str, Any] | None = None,
                jobs: int = 1, timeout: float | None = None, dry_run: bool = False, **_: Any):
    """Everything a batch is given, checked before anything is written or launched: the study,
    its training options (every problem of every row: :class:`StudyOptionsError`), the filter,
    shard, executor, SLURM options and (unless ``dry_run``) ``jobs``, ``timeout`` and whether
    the executor can run here. Returns ``(study, runs, executor class, SLURM options)``."""
    spec = load_study(study)
    selected = resolve(spec, rows=rows, shard=shard, options=options)
    errors = option_errors(spec, options)
    if errors:
        raise StudyOptionsError(errors)
    cls = executor_class(executor)
    job_options = slurm_options.options_from(spec.slurm, **(slurm or {}))
    if not dry_run:
        check_batch_numbers(jobs, timeout)
        cls.check()
    return spec, selected, cls, job_options


def run_batch(study: "str | os.PathLike", *, rows: str | None = None, shard: str | None = None,
              jobs: int = 1, force: bool = False, dry_run: bool = False,
              runs: str | os.PathLike | None = None, reports: str | os.PathLike | None = None,
              notebook: str | os.PathLike | None = None, report: bool = True,
              options: dict[str, Any] | None = None, timeout: float | None = None,
              echo: Callable[[str], None] = print, progress: bool = True,
              executor: str = DEFAULT_EXECUTOR, slurm: dict[str, Any] | None = None) -> BatchResult:
    """Run (or, with ``dry_run``, list) the runs of a study; then render its report.

    ``executor``: a name of :data:`maxq.executors.EXECUTORS` (``threads``: papermill kernels on
    local threads; ``submitit-local`` / ``slurm``: one submitit job per run); ``slurm``: the
    ``--slurm-*`` values, over the study's ``[slurm]`` table.

    Raises :class:`StudyError` for an unknown study, filter, shard or executor, and
    :class:`StudyOptionsError` for training options the config refuses (nothing is run or
    written). Every other problem is per run: recorded in ``status.csv``, printed, and the
    batch goes on."""
    spec, selected, cls, job_options = check_input(   # bad input: refused before the lock
        study, rows=rows, shard=shard, options=options, executor=executor, slurm=slurm,
        jobs=jobs, timeout=timeout, dry_run=dry_run)
    root = runs_root(runs)
    table = status_path(spec.name, root)
    if dry_run:
        _dry_run(spec, selected, root, cls.preview(spec.name, root, job_options), echo)
        return BatchResult(spec.name, selected, [], table)
    with _one_batch_per_study(spec, runs, shard):
        return _run_locked(spec, selected, cls, job_options, root, table, jobs=jobs,
                           force=force, reports=reports, notebook=notebook, report=report,
                           timeout=timeout, echo=echo, progress=progress)


def _run_locked(spec: Study, selected: list[Row], cls, job_options, root: Path, table: Path, *,
                jobs: int, force: bool, reports, notebook, report: bool,
                timeout: float | None, echo: Callable[[str], None],
                progress: bool) -> BatchResult:
    """The batch proper, under the study's lock: queue, run, summarise, report."""
    nb_path = Path(notebook) if notebook else (
        (spec.path.parent / spec.notebook) if spec.notebook else notebook_path(ROW_NOTEBOOK))
    status = StatusTable(spec.name, root)
    try:
        check_row_notebook(nb_path)
    except NotebookError as exc:
        return _notebook_unusable(spec, selected, status, root, nb_path, exc, echo)
    outcomes, todo = _queue(selected, status, root, force, cls.queued, echo)
    skipped = sum(o.state == "skipped" for o in outcomes)
    echo(f"maxq batch: study {spec.name!r}: {len(selected)} run(s): {len(todo)} to run, "
         f"{skipped} already finished, {len(outcomes) - skipped} refused; "
         f"{jobs} at a time; status in {table}")
    bar = _progress_bar(len(todo), spec.name, progress)
    try:
        outcomes.extend(cls(Batch(spec.name, root, nb_path, status, job_options, jobs, timeout,
                                  echo, bar)).run(todo))
    finally:
        bar.close()
    outcomes.sort(key=lambda o: o.row.index)
    result = BatchResult(spec.name, selected, outcomes, table)
    _summarise(result, echo)
    if report:
        _report(result, spec, root, reports, timeout, echo)
    return result


def _dry_run(spec: Study, selected: list[Row], root: Path, preview: str,
             echo: Callable[[str], None]) -> None:
    echo(format_rows(selected, root))
    echo(f"{len(selected)} run(s) of study {spec.name!r} ({spec.path}); "
         f"run directories under {root / spec.name}")
    shared = [r for r in selected if r.home]
    if shared:
        echo(f"{len(shared)} of them shared with {', '.join(sorted({r.home for r in shared}))}"
             f" (same options, option by option): their run directories are that study's, "
             f"trained once")
    if preview:
        echo(preview)


def _notebook_unusable(spec: Study, selected: list[Row], status: StatusTable, root: Path,
                       nb_path: Path, exc: NotebookError,
                       echo: Callable[[str], None]) -> BatchResult:
    """Every run failed with the notebook's problem (recorded, as a failed run is)."""
    outcomes = []
    for row in selected:
        outcomes.append(Outcome(row, "failed", 0.0, str(exc)))
        status.update(row.id, state="failed", seconds=0.0, error=one_line(str(exc)),
                      run_dir=row.run_dir(root), notebook=nb_path, method=row.method,
                      seed=row.seed)
    echo(f"maxq batch: {exc}")
    echo(f"maxq batch: {len(selected)} run(s) marked failed in {status.path}")
    return BatchResult(spec.name, selected, outcomes, status.path)


def _queue(selected: list[Row], status: StatusTable, root: Path, force: bool,
           queued: dict[str, str], echo: Callable[[str], None]):
    """Each run skipped (finished), refused (another config's, corrupt) or queued; returns
    ``(outcomes of the ones not run, [(row, extra options)] to run)``."""
    outcomes: list[Outcome] = []
    todo: list[tuple[Row, dict]] = []
    for row in selected:
        action, message, extra = plan_row(row, root, force)
        common = dict(run_dir=row.run_dir(root), method=row.method, seed=row.seed)
        if action == "skip":
            previous = status.lines.get(row.id, {})
            status.update(row.id, state="skipped", error="", seconds=previous.get("seconds", ""),
                          notebook=previous.get("notebook") or row.run_dir(root) / ROW_NOTEBOOK,
                          **common)
            outcomes.append(Outcome(row, "skipped"))
        elif action in ("fail", "corrupt"):
            state = "failed" if action == "fail" else "corrupt"
            status.update(row.id, state=state, seconds=0.0, error=one_line(message),
                          notebook="", **common)
            outcomes.append(Outcome(row, state, 0.0, message))
            echo(f"maxq batch: {row.id}: {state.upper()}: {message}")
        else:
            status.update(row.id, state="pending", seconds="", error="",
                          notebook=row.run_dir(root) / ROW_NOTEBOOK, **common, **queued)
            todo.append((row, extra))
    return outcomes, todo


def _summarise(result: BatchResult, echo: Callable[[str], None]) -> None:
    outcomes, failed = result.outcomes, result.failed
    echo(f"maxq batch: {sum(o.state == 'done' for o in outcomes)} done, "
         f"{sum(o.state == 'skipped' for o in outcomes)} skipped, {len(failed)} failed "
         f"(status: {result.status_path})")
    for o in failed:
        echo(f"  {o.state.upper()} {o.row.id}: {one_line(o.error, 300)}")


def _report(result: BatchResult, spec: Study, root: Path, reports: str | os.PathLike | None,
            timeout: float | None, echo: Callable[[str], None]) -> None:
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
    # the notebook runs in paths.base() and gets paths relative to it (when inside): the
    # committed report.ipynb and papermill.log name no machine's folders
    parameters = {"study": base_relative(spec.path), "runs_root": base_relative(runs_root(runs))}
    if rerun is not None and Path(rerun).suffix == ".csv":
        parameters["rerun_root"] = base_relative(results.rerun_table(rerun, spec.name)[1])
    elif rerun is not None:
        rerun_dir = runs_root(rerun).resolve()
        if not (rerun_dir / spec.name).is_dir():
            raise StudyError(f"--rerun-root {rerun}: no run directories of study "
                             f"'{spec.name}' in {rerun_dir / spec.name}")
        parameters["rerun_root"] = base_relative(rerun_dir)
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.render-", dir=root))
    staged = stage / spec.name
    try:
        parameters.update(reports_root=base_relative(root), force=bool(force),
                          report_folder=base_relative(staged))
        staged_html = staged / "report.html"
        ok, error = execute_notebook(base_relative(nb), base_relative(staged / REPORT_NOTEBOOK),
                                     parameters, log_path=staged / PAPERMILL_LOG, cwd=base(),
                                     html_path=base_relative(staged_html) if html else None,
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
        return False, f"the rendered {REPORT_NOTEBOOK} does not read back: {one_line(exc, 200)}"
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
    parser.add_argument("--executor", default=DEFAULT_EXECUTOR, choices=tuple(EXECUTORS),
                        help="threads: papermill kernels here (--jobs at a time); slurm: one "
                             "SLURM job per run through submitit; submitit-local: the same jobs "
                             "as local processes (--jobs at a time)")
    slurm_options.add_arguments(parser)


def run_batch_command(args: argparse.Namespace) -> int:
    """``maxq batch``: 0 when every run is done or skipped, 1 when some failed, 2 on bad input."""
    try:
        if getattr(args, "status", False):
            print_status(args.study, root=args.runs_root, rows=args.rows,
                                   shard=args.shard)
            return 0
        result = run_batch(args.study, rows=args.rows, shard=args.shard, jobs=args.jobs,
                           force=args.force, dry_run=args.dry_run, runs=args.runs_root,
                           reports=args.reports_root, notebook=args.notebook,
                           report=not args.no_report, options=_parse_options(args.option),
                           timeout=args.timeout, progress=not args.no_progress,
                           executor=getattr(args, "executor", DEFAULT_EXECUTOR),
                           slurm=slurm_options.flag_values(args))
    except StudyOptionsError as exc:           # every bad option, one line each
        for line in exc.errors:
            print(f"maxq batch: error: {line}", file=sys.stderr)
        return 2
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
    parser = argparse.ArgumentParser(prog="python -m maxq.batch",
                                     description="run a study (same as `maxq batch`)")
    add_batch_arguments(parser)
    return run_batch_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
