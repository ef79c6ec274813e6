"""``maxq batch --executor submitit-local|slurm``: every run of a study as a submitit job.

The ``threads`` executor (the default, :func:`maxq.batch.run_batch`) runs papermill kernels on
local threads. The two others hand each run to `submitit <https://github.com/facebookincubator/
submitit>`_, the launcher of torchvision's ``references/classification/run_with_submitit.py``:

* ``slurm``: one SLURM job per run (``sbatch`` through submitit), with the options of
  :class:`SlurmOptions` (``--slurm-*`` flags, or a ``[slurm]`` table of the study file);
* ``submitit-local``: submitit's local executor, the same code path minus ``sbatch`` (the job is
  a local controller process with one subprocess per task); the tests use it.

A job is a :class:`RowJob`: it executes the same ``notebooks/row.ipynb`` with papermill into the
same run directory as the threads executor, so a run made on the cluster is the same run record.
Multi-GPU rows get one task per GPU (``gpus_per_run``); each task exports the process-group
variables of :class:`submitit.helpers.TorchDistributedEnvironment` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and runs its own kernel; the training's
``torchrun`` path (:func:`maxq.distributed.setup_runtime`) takes it from there. Rank 0 writes the run
directory and ``row.ipynb``; the other ranks' notebooks and papermill logs go to the job folder.

Preemption and time limits: SLURM (or the local controller) sends ``SIGUSR2`` before it stops
the job; submitit then calls :meth:`RowJob.checkpoint`, which ends the notebook's kernel and
returns the same run with ``resume=True``; submitit requeues it and the training continues from
``checkpoint.pth`` (the last finished epoch), ending with the metrics of an uninterrupted run.

Job folders: ``<runs_root>/<study>/jobs/<job id>/`` (submitit's pickles and logs, and
``events.jsonl``: one line per start, requeue and end of the run, written by the job). The
batch process follows its jobs and writes ``status.csv`` (``executor``, ``job_id``,
``job_state``: the scheduler's own word, and ``state``: pending, running, requeued, done or
failed). ``maxq batch STUDY --status`` prints that table, refreshed from SLURM and the run
directories, without launching anything.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from tabulate import tabulate

from maxq import batch, records, studies

EXECUTORS = ("threads", "submitit-local", "slurm")
JOBS_DIR = "jobs"
EVENTS = "events.jsonl"
#: seconds between two looks at the jobs (the local controller is a process; sacct is slower)
POLL_S = {"submitit-local": 1.0, "slurm": 30.0}
#: time limit of a local job when none is given (the local executor needs one)
LOCAL_TIME_MIN = 30 * 24 * 60
#: upper bounds of the [slurm] options (time in minutes: 365 days)
SLURM_MAX = {"gpus_per_run": 4096, "nodes": 1024, "cpus_per_task": 1024, "time": 365 * 1440}
#: how often a job may hit its time limit and be requeued (preemptions do not count)
MAX_TIMEOUTS = 30
#: SIGUSR2 this many seconds before the time limit (torchvision's setting)
SIGNAL_DELAY_S = 120
#: SLURM's (and submitit's local controller's) states, in the status table's words
SCHEDULER_STATES = {
    "pending": {"PENDING", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                "SPECIAL_EXIT"},
    "running": {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"},
    "requeued": {"REQUEUED", "PREEMPTED"},
    "done": {"COMPLETED", "FINISHED"},
    "failed": {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "INTERRUPTED", "REVOKED"},
}


# ----------------------------------------------------------------------------- options
@dataclass
class SlurmOptions:
    """Resources of one run's job. ``gpus_per_run`` GPUs (one task each) over ``nodes`` nodes;
    ``time`` is the job's limit (minutes, ``HH:MM:SS`` or ``D-HH:MM:SS``): when it is reached
    the job is requeued and the run resumes from its checkpoint. ``partition``, ``account``,
    ``qos`` and ``constraint`` are passed to ``sbatch`` as given."""

    partition: str | None = None
    gpus_per_run: int = 1
    nodes: int = 1
    time: str | int | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str = "[slurm]") -> "SlurmOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise studies.StudyError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**table).check(where)

    def merged(self, **overrides: Any) -> "SlurmOptions":
        """A copy with the ``overrides`` that are not None (command-line flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).check(
            "--slurm-*")

    def check(self, where: str) -> "SlurmOptions":
        for name in ("gpus_per_run", "nodes", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise studies.StudyError(f"{where}: {name} must be an integer >= 1; got {value!r}")
            if value is not None and value > SLURM_MAX[name]:
                raise studies.StudyError(f"{where}: {name} must be <= {SLURM_MAX[name]}; got "
                                         f"{value!r}")
        if self.gpus_per_run % self.nodes:
            raise studies.StudyError(f"{where}: gpus_per_run ({self.gpus_per_run}) must be a "
                                   f"multiple of nodes ({self.nodes}): the same GPUs per node")
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise studies.StudyError(f"{where}: {name} must be a string; got {value!r}")
        if self.time is not None and minutes(self.time, where) > SLURM_MAX["time"]:
            raise studies.StudyError(f"{where}: time limit {self.time!r} is over "
                                     f"{SLURM_MAX['time'] // 1440} days")
        return self

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_run // self.nodes


def minutes(value: str | int, where: str = "--slurm-time") -> int:
    """A SLURM time limit in minutes: ``90``, ``"90"``, ``"MM:SS"``, ``"HH:MM:SS"``,
    ``"D-HH"``, ``"D-HH:MM"`` or ``"D-HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match or isinstance(value, bool):
        raise studies.StudyError(f"{where}: time limit {value!r} is not minutes, HH:MM:SS or "
                               f"D-HH:MM:SS")
    days, a, b, c = match.groups()
    a, b, c = int(a), int(b or 0), int(c or 0)
    if days is not None:                       # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + a * 3600 + b * 60 + c
    elif match.group(4) is not None:           # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif match.group(3) is not None:           # MM:SS
        seconds = a * 60 + b
    else:                                      # MM
        seconds = a * 60
    if seconds <= 0:
        raise studies.StudyError(f"{where}: time limit {value!r} must be > 0")
    return -(-seconds // 60)


# ----------------------------------------------------------------------------- the job
class RowJob:
    """One run of a study, as a submitit job (picklable; :meth:`checkpoint` is submitit's
    requeue hook, as in torchvision's ``Trainer``)."""

    def __init__(self, row: studies.Row, root: str | os.PathLike, notebook: str | os.PathLike,
                 extra: dict[str, Any] | None = None, timeout: float | None = None,
                 jobs: int = 1, cwd: str | os.PathLike | None = None):
        self.row = row
        self.root = str(Path(root).resolve())
        self.notebook = str(Path(notebook).resolve())
        self.extra = dict(extra or {})
        self.timeout = timeout
        self.jobs = jobs
        self.cwd = str(Path(cwd or Path.cwd()).resolve())

    def __call__(self) -> dict[str, Any]:
        import submitit

        job_env = submitit.JobEnvironment()
        rank = job_env.global_rank
        if job_env.num_tasks > 1:
            # the process-group variables torchrun would set; the kit's DDP path reads them
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True)
        if "SLURM_CPUS_PER_TASK" in os.environ and "OMP_NUM_THREADS" not in os.environ:
            os.environ["OMP_NUM_THREADS"] = os.environ["SLURM_CPUS_PER_TASK"]
        folder = job_env.paths.folder
        run_dir = Path(self.row.run_dir(self.root))
        run_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            _event(folder, "running", resume=bool(self.extra.get("resume")),
                   tasks=job_env.num_tasks)
            output, log = run_dir / batch.ROW_NOTEBOOK, run_dir / batch.PAPERMILL_LOG
        else:
            output, log = folder / f"rank{rank}_row.ipynb", folder / f"rank{rank}_papermill.log"
        parameters = self.row.parameters(self.root, **self.extra)
        parameters["save_dir"] = str(run_dir)
        start = time.monotonic()
        ok, error = batch.execute_notebook(self.notebook, output, parameters, log_path=log,
                                           cwd=self.cwd, timeout=self.timeout, jobs=self.jobs)
        seconds = time.monotonic() - start
        if ok and rank == 0 and not records.is_finished(run_dir):
            ok, error = False, f"the notebook finished but {run_dir / records.RESULT} was not written"
        state = "done" if ok else "failed"
        if rank == 0:
            _event(folder, state, seconds=round(seconds, 1), error=error)
        return {"state": state, "seconds": seconds, "error": error, "rank": rank}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Preempted or at the time limit: end this task's kernel and requeue the run with
        ``resume=True`` (it continues from the run directory's ``checkpoint.pth``)."""
        import submitit

        # signal only: waiting here (inside a signal handler) could deadlock on the Popen the
        # main thread waits on; execute_notebook reaps the process group when the job exits
        with batch._ACTIVE_LOCK:
            procs = list(batch._ACTIVE)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            _event(submitit.JobEnvironment().paths.folder, "requeued")
        except Exception:  # noqa: BLE001 - the requeue matters more than the note
            pass
        extra = {k: v for k, v in self.extra.items() if k != "overwrite"}
        extra["resume"] = True
        again = RowJob(self.row, self.root, self.notebook, extra, self.timeout, self.jobs,
                       self.cwd)
        return submitit.helpers.DelayedSubmission(again)


def _event(folder: str | os.PathLike, event: str, **data: Any) -> None:
    """One line of the job's ``events.jsonl`` (started, requeued, done, failed)."""
    line = {"event": event, "time": _now(), "host": socket.gethostname(), "pid": os.getpid(),
            **data}
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / EVENTS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def read_events(folder: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(folder) / EVENTS
    if not path.exists():
        return []
    out = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(text))
        except ValueError:
            pass                                  # a line being written
    return out


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- executors
def jobs_folder(study: str, root: str | os.PathLike) -> Path:
    """``<runs_root>/<study>/jobs``; a job's files are in ``jobs/<job id>/``."""
    return (studies.runs_root(root) / study / JOBS_DIR).resolve()


def job_parameters(kind: str, options: SlurmOptions) -> dict[str, Any]:
    """submitit's generic job parameters of one run (torchvision's run_with_submitit.py)."""
    gpus = options.tasks_per_node
    if kind == "submitit-local":
        gpus = min(gpus, _local_gpus())    # one task per GPU; on a CPU machine CPU tasks
    timeout = minutes(options.time) if options.time is not None else (
        LOCAL_TIME_MIN if kind == "submitit-local" else 24 * 60)
    return dict(timeout_min=timeout, nodes=options.nodes, tasks_per_node=options.tasks_per_node,
                gpus_per_node=gpus,
                cpus_per_task=options.cpus_per_task or (10 if kind == "slurm" else 1))


def slurm_parameters(options: SlurmOptions) -> dict[str, Any]:
    """The SLURM-only ones (None: not passed to sbatch)."""
    return dict(partition=options.partition, account=options.account, qos=options.qos,
                constraint=options.constraint, signal_delay_s=SIGNAL_DELAY_S)


def make_executor(kind: str, folder: Path, options: SlurmOptions, *, name: str = "maxq"):
    """A submitit executor for one run's job."""
    import submitit

    if kind not in ("submitit-local", "slurm"):
        raise studies.StudyError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    cluster = "local" if kind == "submitit-local" else "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster,
                                     slurm_max_num_timeout=MAX_TIMEOUTS)
    executor.update_parameters(name=name, **job_parameters(kind, options),
                               **{f"slurm_{k}": v for k, v in slurm_parameters(options).items()})
    return executor


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def sbatch_script(options: SlurmOptions, folder: Path, name: str = "maxq") -> str:
    """The ``sbatch`` file submitit writes for each run's job (shown by ``--dry-run``; made by
    submitit's own writer, which needs no SLURM on this machine)."""
    import shlex

    from submitit.slurm import slurm

    generic = job_parameters("slurm", options)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder / "%j"))])
    return slurm._make_sbatch_string(                        # noqa: SLF001 - preview only
        command=command, folder=folder / "%j", job_name=name, time=generic["timeout_min"],
        nodes=generic["nodes"], ntasks_per_node=generic["tasks_per_node"],
        gpus_per_node=generic["gpus_per_node"], cpus_per_task=generic["cpus_per_task"],
        **slurm_parameters(options))


def _submit(executor, job: RowJob):
    import submitit

    # the job imports this maxq (the one beside the notebooks), whatever else is installed
    path = os.pathsep.join([str(studies.PACKAGE_ROOT)] + ([os.environ["PYTHONPATH"]]
                                                        if os.environ.get("PYTHONPATH") else []))
    with submitit.helpers.environment_variables(PYTHONPATH=path):
        return executor.submit(job)


def job_state(raw: str, events: Sequence[dict[str, Any]]) -> str:
    """The status-table state of a job: the scheduler's ``raw`` state read with the job's own
    events (a local controller is RUNNING all along, requeues included)."""
    raw = (raw or "").upper().split()[0] if raw and raw.strip() else ""
    last = events[-1]["event"] if events else ""
    if last in ("done", "failed"):
        return last
    for state, names in SCHEDULER_STATES.items():
        if raw in names:
            if state == "pending" and any(e["event"] == "requeued" for e in events):
                return "requeued"
            if state == "running" and last == "requeued":
                return "requeued"
            return state
    return "requeued" if last == "requeued" else ("running" if last == "running" else "pending")


def _outcome(job, row: studies.Row, events: Sequence[dict[str, Any]]) -> batch.Outcome:
    """The run's outcome from a finished job: rank 0's result, or the job's error."""
    try:
        result = job.results()[0]
    except Exception as exc:  # noqa: BLE001 - the job's traceback or submitit's reason
        lines = [x for x in str(exc).splitlines() if x.strip()]
        text = lines[-1] if lines else type(exc).__name__
        ends = [e for e in events if e["event"] in ("done", "failed")]
        if ends and ends[-1]["event"] == "failed" and ends[-1].get("error"):
            text = ends[-1]["error"]
        return batch.Outcome(row, "failed", 0.0, f"job {job.job_id}: {text}")
    return batch.Outcome(row, result["state"], float(result["seconds"]), result["error"])


def run_jobs(kind: str, todo: Sequence[tuple[studies.Row, dict]], *, study: str,
             status: "batch.StatusTable", root: Path, notebook: Path, options: SlurmOptions,
             jobs: int = 1, timeout: float | None = None, echo: Callable[[str], None] = print,
             bar=None, poll_s: float | None = None) -> list[batch.Outcome]:
    """Submit every run of ``todo`` as a job (``submitit-local``: ``jobs`` at a time; ``slurm``:
    all at once, the scheduler queues them), follow them into ``status.csv`` and return their
    outcomes. A SLURM job recorded in ``status.csv`` that is still queued or running is followed,
    not submitted again. Ctrl-C cancels local jobs; SLURM jobs keep running."""
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise studies.StudyError("--executor slurm needs SLURM's sbatch on PATH (run maxq batch "
                               "on a login node); --executor submitit-local runs the same jobs "
                               "here")
    folder = jobs_folder(study, root)
    executor = make_executor(kind, folder, options, name=f"maxq-{study}")
    poll = POLL_S[kind] if poll_s is None else poll_s
    limit = max(1, jobs) if kind == "submitit-local" else max(1, len(todo))
    queue = list(todo)
    active: dict[str, dict[str, Any]] = {}
    outcomes: list[batch.Outcome] = []
    if kind == "slurm":
        for row, extra in list(queue):
            job = _live_slurm_job(status.lines.get(row.id, {}), folder)
            if job is not None:
                queue.remove((row, extra))
                active[row.id] = {"row": row, "job": job, "state": "",
                                  "base": int(status.lines[row.id].get("attempts") or 0)}
                echo(f"maxq batch: {row.id}: following job {job.job_id} (already submitted)")
    try:
        while queue or active:
            while queue and len(active) < limit:
                row, extra = queue.pop(0)
                job = _submit(executor, RowJob(row, root, notebook, extra, timeout=timeout,
                                               jobs=jobs if kind == "submitit-local" else 1))
                base = int(status.lines.get(row.id, {}).get("attempts") or 0)
                status.update(row.id, state="pending", executor=kind, job_id=job.job_id,
                              job_state=_raw_state(job), attempts=base, error="")
                active[row.id] = {"row": row, "job": job, "state": "pending", "base": base}
                _write(bar, echo, f"{row.id}: submitted job {job.job_id}")
            for rid, item in list(active.items()):
                job, row = item["job"], item["row"]
                raw = _raw_state(job)
                events = read_events(folder / str(job.job_id))
                starts = sum(e["event"] == "running" for e in events)
                finished = job.done()
                state = job_state(raw, events)
                # a requeue is read from the job's events, not from the polled state: the
                # requeued job may be running again (or done) before the next poll
                requeues = sum(e["event"] == "requeued" for e in events)
                announced = requeues > item.get("requeues", 0)
                for _ in range(requeues - item.get("requeues", 0)):
                    _write(bar, echo, f"{rid}: requeued (job {job.job_id}, {raw})")
                if finished:
                    outcome = _outcome(job, row, events)
                    status.update(rid, state=outcome.state, seconds=outcome.seconds,
                                  error=batch._one_line(outcome.error), job_state=raw,
                                  attempts=item["base"] + starts)
                    outcomes.append(outcome)
                    del active[rid]
                    message = f"{rid}: {outcome.state} in {outcome.seconds:.0f} s (job {job.job_id})"
                    if outcome.error:
                        message += f": {batch._one_line(outcome.error, 300)}"
                    _write(bar, echo, message)
                    if bar is not None:
                        bar.update(1)
                elif (state, raw, requeues) != (item["state"], item.get("raw"),
                                                item.get("requeues", 0)):
                    status.update(rid, state=state, job_state=raw,
                                  attempts=item["base"] + starts)
                    # (a requeue the scheduler reports without an event is said here)
                    if state != item["state"] and not (state == "requeued" and announced):
                        _write(bar, echo, f"{rid}: {state} (job {job.job_id}, {raw})")
                    item["state"], item["raw"], item["requeues"] = state, raw, requeues
            if queue or active:
                time.sleep(poll)
    except KeyboardInterrupt:
        for rid, item in active.items():
            if kind == "submitit-local":
                item["job"].cancel(check=False)
                end_local_job(item["job"])
                status.update(rid, state="interrupted", error="interrupted",
                              job_state="CANCELLED")
        if kind == "slurm" and active:
            echo(f"maxq batch: {len(active)} SLURM job(s) keep running; `maxq batch {study} "
                 f"--status` shows them, `maxq batch {study} --executor slurm` follows them")
        raise
    return outcomes


def end_local_job(job, grace_s: float = 10.0) -> None:
    """Stop a submitit-local job and everything under it: its controller, the task, the task's
    papermill (a session of its own) and kernel. submitit's cancel is a SIGINT to the
    controller, which does nothing when SIGINT is ignored (a batch started in the background
    by a shell, or under nohup, inherits that), and the task ignores SIGTERM (submitit's
    "bypass"): so SIGTERM goes to every process of the tree (papermill and the kernel end, the
    task's wait returns, the controller sees its task end), then SIGKILL to what is left after
    ``grace_s``. Returns when all of them have ended."""
    import psutil

    process = getattr(job, "_process", None)
    try:
        root = psutil.Process(process.pid if process is not None else int(job.job_id))
        tree = [root, *root.children(recursive=True)]
    except (psutil.Error, ValueError):
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        for proc in tree:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        _, tree = psutil.wait_procs(tree, timeout=wait)
        if not tree:
            break
    if process is not None:
        try:
            process.wait(timeout=0)           # reap the controller (our child)
        except Exception:  # noqa: BLE001
            pass


def _write(bar, echo: Callable[[str], None], message: str) -> None:
    if bar is not None and not getattr(bar, "disable", True):
        bar.write(message)
    else:
        echo(f"maxq batch: {message}")


def _raw_state(job) -> str:
    try:
        return str(job.state)
    except Exception:  # noqa: BLE001 - sacct unreachable for a moment
        return "UNKNOWN"


def _live_slurm_job(line: dict[str, str], folder: Path):
    """The SLURM job of a status line when it is still queued or running (else None)."""
    if line.get("executor") != "slurm" or not line.get("job_id") or shutil.which("sacct") is None:
        return None
    from submitit.slurm.slurm import SlurmJob

    job = SlurmJob(folder=folder / "%j", job_id=line["job_id"])
    state = job_state(_raw_state(job), read_events(folder / line["job_id"]))
    return job if state in ("pending", "running", "requeued") else None


# ----------------------------------------------------------------------------- --status
STATUS_VIEW = ("run", "state", "executor", "job_id", "job_state", "attempts", "seconds",
               "updated", "error")


def status_rows(study: str | os.PathLike, *, root: str | os.PathLike | None = None,
                rows: str | None = None, shard: str | None = None) -> list[dict[str, str]]:
    """The status table of a study's runs (every run, in study order), refreshed without
    launching anything: a run whose ``result.json`` exists is done; a SLURM job that is not
    finished is asked for its state (``sacct``, when there); a local job's events are read."""
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
        if view["state"] in ("pending", "running", "requeued") and line.get("job_id"):
            events = read_events(folder / line["job_id"])
            raw = line.get("job_state", "")
            if line.get("executor") == "slurm" and shutil.which("sacct") is not None:
                from submitit.slurm.slurm import SlurmJob

                raw = _raw_state(SlurmJob(folder=folder / "%j", job_id=line["job_id"]))
            view["state"], view["job_state"] = job_state(raw, events), raw
        if records.is_finished(row.run_dir(root)) and view["state"] not in ("done", "skipped"):
            view["state"] = "done"
        out.append(view)
    return out


def format_status(table: list[dict[str, str]]) -> str:
    header = tuple(STATUS_VIEW)
    lines = [tuple(batch._one_line(r.get(c, ""), 80) for c in header) for r in table]
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


def options_from(study_table: dict[str, Any] | None, **flags: Any) -> SlurmOptions:
    """The study's ``[slurm]`` table, overridden by the ``--slurm-*`` flags that were given."""
    return SlurmOptions.from_table(dict(study_table or {})).merged(**flags)


def describe(options: SlurmOptions) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(options).items() if v is not None)
