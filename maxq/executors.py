"""How the runs of a batch are executed: one :class:`Executor` interface, three executors, chosen
in one place (:data:`EXECUTORS`, name -> class; ``maxq batch --executor NAME``).

* ``threads`` (:class:`ThreadsExecutor`, the default): papermill kernels here, ``--jobs`` at a
  time on threads (never multiprocessing);
* ``submitit-local`` (:class:`SubmititLocalExecutor`): each run a job of submitit's local
  executor (a controller process with one subprocess per task), ``--jobs`` at a time;
* ``slurm`` (:class:`SlurmExecutor`): each run one SLURM job (``sbatch`` through submitit) with
  the resources of :class:`maxq.slurm_options.SlurmOptions`; the scheduler queues them.

Every one of them runs a row with :func:`maxq.rowrun.run_row` (the submitit ones inside
:class:`maxq.jobs.RowJob`) and records it in the same ``status.csv``. ``maxq batch STUDY
--status`` prints that table, refreshed by each line's executor, without launching anything.
"""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from tabulate import tabulate

from maxq import jobs as submitit_jobs
from maxq import notebook_exec, records, studies
from maxq.errors import StudyError
from maxq.jobs import (MAX_TIMEOUTS, SCHEDULER_STATES, RowJob,  # noqa: F401 (re-exported)
                       end_local_job, job_state, jobs_folder, read_events, sbatch_script)
from maxq.notebook_exec import one_line
from maxq.rowrun import Outcome, StatusTable, run_row
from maxq.slurm_options import (SlurmOptions, describe, minutes,  # noqa: F401
                                options_from)


@dataclass
class Batch:
    """What an executor needs to know about the batch it runs."""

    study: str
    root: Path
    notebook: Path
    status: StatusTable
    options: SlurmOptions = field(default_factory=SlurmOptions)
    jobs: int = 1
    timeout: float | None = None
    echo: Callable[[str], None] = print
    bar: Any = None

    def say(self, message: str) -> None:
        """A line of progress, above the progress bar when there is one."""
        if self.bar is not None and not getattr(self.bar, "disable", True):
            self.bar.write(message)
        else:
            self.echo(f"maxq batch: {message}")

    def finished(self, outcome: Outcome, suffix: str = "") -> None:
        message = f"{outcome.row.id}: {outcome.state} in {outcome.seconds:.0f} s{suffix}"
        if outcome.error:
            message += f": {one_line(outcome.error, 300)}"
        self.say(message)
        if self.bar is not None:
            self.bar.update(1)


class Executor:
    """The interface: :meth:`check` refuses what cannot run (before anything is written),
    :meth:`run` executes the queued runs and returns their outcomes, :meth:`refresh` reads a
    status line's state for ``--status``."""

    name: ClassVar[str]
    #: status.csv columns written when a run is queued (submitit ones: set on submission)
    queued: ClassVar[dict[str, str]] = {}

    def __init__(self, batch: Batch):
        self.batch = batch

    @classmethod
    def check(cls) -> None:
        """Raise :class:`StudyError` when this executor cannot run here."""

    @classmethod
    def preview(cls, study: str, root: Path, options: SlurmOptions) -> str:
        """What ``--dry-run`` adds about this executor ('' : nothing)."""
        return ""

    def run(self, todo: Sequence[tuple[studies.Row, dict]]) -> list[Outcome]:
        raise NotImplementedError

    @classmethod
    def refresh(cls, line: dict[str, str], folder: Path) -> tuple[str, str]:
        """``(state, scheduler state)`` of a pending or running status line."""
        return line.get("state", ""), line.get("job_state", "")


class ThreadsExecutor(Executor):
    """papermill kernels on ``jobs`` local threads; Ctrl-C, SIGTERM and SIGHUP stop them."""

    name = "threads"
    queued = {"executor": name, "job_id": "", "job_state": ""}

    def run(self, todo: Sequence[tuple[studies.Row, dict]]) -> list[Outcome]:
        b = self.batch
        pool = ThreadPoolExecutor(max_workers=b.jobs)
        try:
            outcomes = list(pool.map(self._work, todo))
            pool.shutdown(wait=True)
            return outcomes
        except KeyboardInterrupt:
            # stop launching, end the running kernels (they are in their own sessions), record
            # the runs as interrupted (retried next time), leave the others pending
            notebook_exec.STOP.set()
            notebook_exec.kill_active()
            pool.shutdown(wait=True, cancel_futures=True)
            for row, _ in todo:
                if b.status.lines.get(row.id, {}).get("state") == "running":
                    b.status.update(row.id, state="interrupted", error="interrupted")
            b.echo(f"maxq batch: interrupted; status in {b.status.path}")
            raise
        finally:
            notebook_exec.STOP.clear()

    def _work(self, item: tuple[studies.Row, dict]) -> Outcome:
        (row, extra), b = item, self.batch
        if notebook_exec.STOP.is_set():
            return Outcome(row, "pending")
        attempts = int(b.status.lines.get(row.id, {}).get("attempts") or 0) + 1
        b.status.update(row.id, state="running", attempts=attempts)
        try:
            outcome = run_row(row, root=b.root, notebook=b.notebook, extra=extra,
                              timeout=b.timeout, jobs=b.jobs)
        except Exception as exc:  # noqa: BLE001 - a runner bug must not stop other rows
            outcome = Outcome(row, "failed", 0.0, f"{type(exc).__name__}: {exc}")
        if notebook_exec.STOP.is_set() and outcome.state == "failed":
            outcome.state, outcome.error = "interrupted", "interrupted"
        b.status.update(row.id, state=outcome.state, seconds=outcome.seconds,
                        error=one_line(outcome.error))
        b.finished(outcome)
        return outcome


@dataclass
class _Job:
    """A submitted run being followed."""

    row: studies.Row
    job: Any
    base: int                    # attempts before this job
    state: str = "pending"
    raw: str | None = None
    requeues: int = 0


class SubmititExecutor(Executor):
    """Each run a submitit job (:class:`maxq.jobs.RowJob`), followed into ``status.csv``."""

    local: ClassVar[bool]
    #: seconds between two looks at the jobs
    poll_s: ClassVar[float]

    def limit(self, todo: Sequence) -> int:
        """Jobs submitted at a time."""
        raise NotImplementedError

    def follow_live(self, queue: list, active: dict[str, _Job]) -> None:
        """Take over jobs of an earlier batch that are still queued or running."""

    def interrupted(self, active: dict[str, _Job]) -> None:
        """Ctrl-C with ``active`` jobs."""

    def run(self, todo: Sequence[tuple[studies.Row, dict]]) -> list[Outcome]:
        b = self.batch                   # batch.check_input ran cls.check() before the lock
        self.folder = jobs_folder(b.study, b.root)
        self.executor = submitit_jobs.submitit_executor(self.folder, b.options, local=self.local,
                                                        name=f"maxq-{b.study}")
        queue, active, outcomes = list(todo), {}, []
        self.follow_live(queue, active)
        limit = self.limit(todo)
        try:
            while queue or active:
                while queue and len(active) < limit:
                    self._submit(*queue.pop(0), active)
                for rid, item in list(active.items()):
                    outcome = self._poll(item)
                    if outcome is not None:
                        outcomes.append(outcome)
                        del active[rid]
                if queue or active:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self.interrupted(active)
            raise
        return outcomes

    def _submit(self, row: studies.Row, extra: dict, active: dict[str, _Job]) -> None:
        b = self.batch
        job = submitit_jobs.submit(self.executor, RowJob(
            row, b.root, b.notebook, extra, timeout=b.timeout, jobs=b.jobs if self.local else 1))
        base = int(b.status.lines.get(row.id, {}).get("attempts") or 0)
        b.status.update(row.id, state="pending", executor=self.name, job_id=job.job_id,
                        job_state=submitit_jobs.raw_state(job), attempts=base, error="")
        active[row.id] = _Job(row, job, base)
        b.say(f"{row.id}: submitted job {job.job_id}")

    def _poll(self, item: _Job) -> Outcome | None:
        """One look at a job: its status line updated; its outcome once it has finished."""
        b, job, rid = self.batch, item.job, item.row.id
        raw = submitit_jobs.raw_state(job)
        events = read_events(self.folder / str(job.job_id))
        starts = sum(e["event"] == "running" for e in events)
        finished = job.done()
        state = job_state(raw, events)
        # a requeue is read from the job's events, not from the polled state: the requeued job
        # may be running again (or done) before the next poll
        requeues = sum(e["event"] == "requeued" for e in events)
        announced = requeues > item.requeues
        for _ in range(requeues - item.requeues):
            b.say(f"{rid}: requeued (job {job.job_id}, {raw})")
        if finished:
            outcome = submitit_jobs.job_outcome(job, item.row, events)
            b.status.update(rid, state=outcome.state, seconds=outcome.seconds,
                            error=one_line(outcome.error), job_state=raw,
                            attempts=item.base + starts)
            b.finished(outcome, f" (job {job.job_id})")
            return outcome
        if (state, raw, requeues) != (item.state, item.raw, item.requeues):
            b.status.update(rid, state=state, job_state=raw, attempts=item.base + starts)
            # (a requeue the scheduler reports without an event is said here)
            if state != item.state and not (state == "requeued" and announced):
                b.say(f"{rid}: {state} (job {job.job_id}, {raw})")
            item.state, item.raw, item.requeues = state, raw, requeues
        return None

    @classmethod
    def refresh(cls, line: dict[str, str], folder: Path) -> tuple[str, str]:
        raw = line.get("job_state", "")
        return job_state(raw, read_events(folder / line["job_id"])), raw


class SubmititLocalExecutor(SubmititExecutor):
    """submitit's local executor: the SLURM code path minus ``sbatch``; Ctrl-C ends the jobs."""

    name = "submitit-local"
    local = True
    poll_s = 1.0                 # the local controller is a process

    def limit(self, todo: Sequence) -> int:
        return max(1, self.batch.jobs)

    def interrupted(self, active: dict[str, _Job]) -> None:
        for rid, item in active.items():
            item.job.cancel(check=False)
            end_local_job(item.job)
            self.batch.status.update(rid, state="interrupted", error="interrupted",
                                     job_state="CANCELLED")


class SlurmExecutor(SubmititExecutor):
    """One SLURM job per run, all submitted at once; they outlive a Ctrl-C of the batch, and a
    later batch follows the ones still queued or running instead of submitting them again."""

    name = "slurm"
    local = False
    poll_s = 30.0                # sacct is slower

    @classmethod
    def check(cls) -> None:
        if shutil.which("sbatch") is None:
            raise StudyError("--executor slurm needs SLURM's sbatch on PATH (run maxq batch "
                             "on a login node); --executor submitit-local runs the same jobs "
                             "here")

    @classmethod
    def preview(cls, study: str, root: Path, options: SlurmOptions) -> str:
        return (f"each run is one SLURM job ({describe(options)}); its sbatch file:\n"
                + sbatch_script(options, jobs_folder(study, root), f"maxq-{study}"))

    def limit(self, todo: Sequence) -> int:
        return max(1, len(todo))

    def follow_live(self, queue: list, active: dict[str, _Job]) -> None:
        for row, extra in list(queue):
            line = self.batch.status.lines.get(row.id, {})
            job = _live_slurm_job(line, self.folder)
            if job is not None:
                queue.remove((row, extra))
                active[row.id] = _Job(row, job, int(line.get("attempts") or 0), state="")
                self.batch.echo(f"maxq batch: {row.id}: following job {job.job_id} "
                                f"(already submitted)")

    def interrupted(self, active: dict[str, _Job]) -> None:
        if active:
            study = self.batch.study
            self.batch.echo(f"maxq batch: {len(active)} SLURM job(s) keep running; `maxq batch "
                            f"{study} --status` shows them, `maxq batch {study} --executor "
                            f"slurm` follows them")

    @classmethod
    def refresh(cls, line: dict[str, str], folder: Path) -> tuple[str, str]:
        if shutil.which("sacct") is None:   # the recorded state, as for a local job
            return super().refresh(line, folder)
        return _slurm_state(submitit_jobs.slurm_job(folder, line["job_id"]), folder)


def _slurm_state(job, folder: Path) -> tuple[str, str]:
    """``(state, raw sacct state)`` of a SLURM job of ``folder``, asked once."""
    raw = submitit_jobs.raw_state(job)
    return job_state(raw, read_events(folder / str(job.job_id))), raw


def _live_slurm_job(line: dict[str, str], folder: Path):
    """The SLURM job of a status line when it is still queued or running (else None)."""
    if line.get("executor") != SlurmExecutor.name or not line.get("job_id") \
            or shutil.which("sacct") is None:
        return None
    job = submitit_jobs.slurm_job(folder, line["job_id"])
    state, _ = _slurm_state(job, folder)
    return job if state in ("pending", "running", "requeued") else None


#: the executors by name: the one place an executor is chosen
EXECUTORS: dict[str, type[Executor]] = {
    cls.name: cls for cls in (ThreadsExecutor, SubmititLocalExecutor, SlurmExecutor)}
DEFAULT_EXECUTOR = ThreadsExecutor.name


def executor_class(name: str) -> type[Executor]:
    """The executor called ``name`` (:class:`StudyError` naming the choices otherwise)."""
    try:
        return EXECUTORS[name]
    except KeyError:
        raise StudyError(f"unknown --executor {name!r}; choose one of "
                         f"{', '.join(EXECUTORS)}") from None


# ----------------------------------------------------------------------------- --status
STATUS_VIEW = ("run", "state", "executor", "job_id", "job_state", "attempts", "seconds",
               "updated", "error")


def status_rows(study: str | os.PathLike, *, root: str | os.PathLike | None = None,
                rows: str | None = None, shard: str | None = None) -> list[dict[str, str]]:
    """The status table of a study's runs (every run, in study order), refreshed without
    launching anything: a run whose ``result.json`` exists is done; a job that is not finished
    is asked for its state by its executor (SLURM: ``sacct``, when there; a local job: its
    events)."""
    spec = studies.load_study(study)
    selected = studies.resolve(spec, rows=rows, shard=shard)
    root = studies.runs_root(root)
    lines = studies.read_status(spec.name, root)
    folder = jobs_folder(spec.name, root)
    out = []
    for row in selected:
        line = dict(lines.get(row.id, {}))
        view = {c: line.get(c, "") for c in STATUS_VIEW if c != "run"}
        view["run"] = row.id
        view["state"] = view["state"] or "not started"
        if view["state"] in ("pending", "running", "requeued") and line.get("job_id") \
                and line.get("executor") in EXECUTORS:
            view["state"], view["job_state"] = EXECUTORS[line["executor"]].refresh(line, folder)
        if records.is_finished(row.run_dir(root)) and view["state"] not in ("done", "skipped"):
            view["state"] = "done"
        out.append(view)
    return out


def format_status(table: list[dict[str, str]]) -> str:
    header = tuple(STATUS_VIEW)
    lines = [tuple(one_line(r.get(c, ""), 80) for c in header) for r in table]
    return tabulate(lines, headers=header, tablefmt="plain", disable_numparse=True)


def print_status(study: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 rows: str | None = None, shard: str | None = None,
                 echo: Callable[[str], None] = print) -> list[dict[str, str]]:
    table = status_rows(study, root=root, rows=rows, shard=shard)
    echo(format_status(table))
    counts: dict[str, int] = {}
    for line in table:
        counts[line["state"]] = counts.get(line["state"], 0) + 1
    spec = studies.load_study(study)
    echo(f"{len(table)} run(s) of study {spec.name!r}: "
         + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
         + f" (status: {studies.status_path(spec.name, root)})")
    return table
