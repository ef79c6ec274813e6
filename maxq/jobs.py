"""The submitit side of the executors (:mod:`maxq.executors`): a study's run as a submitit job.

The ``submitit-local`` and ``slurm`` executors hand each run to `submitit
<https://github.com/facebookincubator/submitit>`_, the launcher of torchvision's
``references/classification/run_with_submitit.py``:

* ``slurm``: one SLURM job per run (``sbatch`` through submitit), with the options of
  :class:`maxq.slurm_options.SlurmOptions` (``--slurm-*`` flags, or a ``[slurm]`` table of the study file);
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
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

from maxq import notebook_exec, studies
from maxq.rowrun import Outcome, run_row, utc_now
from maxq.slurm_options import SlurmOptions, minutes

JOBS_DIR = "jobs"
EVENTS = "events.jsonl"
#: time limit of a local job when none is given (the local executor needs one)
LOCAL_TIME_MIN = 30 * 24 * 60
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
        if rank == 0:
            _event(folder, "running", resume=bool(self.extra.get("resume")),
                   tasks=job_env.num_tasks)
            output = log = None                      # the run directory's row.ipynb and log
        else:
            output, log = folder / f"rank{rank}_row.ipynb", folder / f"rank{rank}_papermill.log"
        outcome = run_row(self.row, root=self.root, notebook=self.notebook, extra=self.extra,
                          timeout=self.timeout, jobs=self.jobs, cwd=self.cwd, output=output,
                          log=log)
        if rank == 0:
            _event(folder, outcome.state, seconds=round(outcome.seconds, 1), error=outcome.error)
        return {"state": outcome.state, "seconds": outcome.seconds, "error": outcome.error,
                "rank": rank}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Preempted or at the time limit: end this task's kernel and requeue the run with
        ``resume=True`` (it continues from the run directory's ``checkpoint.pth``)."""
        import submitit

        # signal only: waiting here (inside a signal handler) could deadlock on the Popen the
        # main thread waits on; execute_notebook reaps the process group when the job exits
        notebook_exec.signal_active(signal.SIGTERM)
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
    line = {"event": event, "time": utc_now(), "host": socket.gethostname(), "pid": os.getpid(),
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


# ----------------------------------------------------------------------------- executors
def jobs_folder(study: str, root: str | os.PathLike) -> Path:
    """``<runs_root>/<study>/jobs``; a job's files are in ``jobs/<job id>/``."""
    return (studies.runs_root(root) / study / JOBS_DIR).resolve()


def job_parameters(options: SlurmOptions, *, local: bool) -> dict[str, Any]:
    """submitit's generic job parameters of one run (torchvision's run_with_submitit.py);
    ``local``: submitit's local executor (one task per GPU there is; on a CPU machine CPU
    tasks), else SLURM."""
    gpus = options.tasks_per_node
    if local:
        gpus = min(gpus, _local_gpus())
    timeout = minutes(options.time) if options.time is not None else (
        LOCAL_TIME_MIN if local else 24 * 60)
    return dict(timeout_min=timeout, nodes=options.nodes, tasks_per_node=options.tasks_per_node,
                gpus_per_node=gpus, cpus_per_task=options.cpus_per_task or (1 if local else 10))


def slurm_parameters(options: SlurmOptions) -> dict[str, Any]:
    """The SLURM-only ones (None: not passed to sbatch)."""
    return dict(partition=options.partition, account=options.account, qos=options.qos,
                constraint=options.constraint, signal_delay_s=SIGNAL_DELAY_S)


def submitit_executor(folder: Path, options: SlurmOptions, *, local: bool, name: str = "maxq"):
    """A submitit executor for the runs' jobs (``local``: submitit's local one)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="local" if local else "slurm",
                                     slurm_max_num_timeout=MAX_TIMEOUTS)
    executor.update_parameters(name=name, **job_parameters(options, local=local),
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

    generic = job_parameters(options, local=False)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder / "%j"))])
    return slurm._make_sbatch_string(                        # noqa: SLF001 - preview only
        command=command, folder=folder / "%j", job_name=name, time=generic["timeout_min"],
        nodes=generic["nodes"], ntasks_per_node=generic["tasks_per_node"],
        gpus_per_node=generic["gpus_per_node"], cpus_per_task=generic["cpus_per_task"],
        **slurm_parameters(options))


def submit(executor, job: RowJob):
    import submitit

    # the job imports this maxq (the one beside the notebooks), whatever else is installed
    path = notebook_exec.package_pythonpath(os.environ.get("PYTHONPATH"))
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


def job_outcome(job, row: studies.Row, events: Sequence[dict[str, Any]]) -> Outcome:
    """The run's outcome from a finished job: rank 0's result, or the job's error."""
    try:
        result = job.results()[0]
    except Exception as exc:  # noqa: BLE001 - the job's traceback or submitit's reason
        lines = [x for x in str(exc).splitlines() if x.strip()]
        text = lines[-1] if lines else type(exc).__name__
        ends = [e for e in events if e["event"] in ("done", "failed")]
        if ends and ends[-1]["event"] == "failed" and ends[-1].get("error"):
            text = ends[-1]["error"]
        return Outcome(row, "failed", 0.0, f"job {job.job_id}: {text}")
    return Outcome(row, result["state"], float(result["seconds"]), result["error"])


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


def raw_state(job) -> str:
    """The scheduler's word for a job's state now (UNKNOWN while sacct does not answer)."""
    try:
        return str(job.state)
    except Exception:  # noqa: BLE001 - sacct unreachable for a moment
        return "UNKNOWN"




def slurm_job(folder: Path, job_id: str):
    """The SLURM job ``job_id`` whose files are under ``folder`` (asked with sacct)."""
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob(folder=folder / "%j", job_id=job_id)
