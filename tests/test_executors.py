"""``maxq batch --executor submitit-local|slurm``: runs as submitit jobs (maxq/executors.py).

End to end with submitit's local executor (real controller and task processes, real papermill
kernels): the smoke study, ``--status``, a re-run that skips everything; a job preempted in the
middle of an epoch (SIGUSR2 to its task, the signal SLURM sends) is requeued by submitit and the
run finishes with the metrics of an uninterrupted run. SLURM itself is not on this machine: the
``sbatch`` file submitit would submit is checked instead, and ``--executor slurm`` without
``sbatch`` is refused.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maxq import batch, executors, jobs, records, studies
from study_files import slow_study

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMING = ("seconds", "images_per_s", "step_seconds")


def maxq_batch(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "maxq", "batch", *args, "--no-progress"]


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("text, expected", [
    (90, 90), ("90", 90), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440), ("1-12:30", 2190),
    ("3-00:00:00", 4320), ("0:00:30", 1)])
def test_slurm_time_limits(text, expected):
    assert executors.minutes(text) == expected


@pytest.mark.parametrize("table, message", [
    ({"gpus": 8}, "unknown keys ['gpus']"),
    ({"gpus_per_run": 0}, "gpus_per_run must be an integer >= 1"),
    ({"gpus_per_run": 6, "nodes": 4}, "must be a multiple of nodes"),
    ({"time": "soon"}, "is not minutes"),
    ({"partition": 3}, "partition must be a string"),
])
def test_bad_slurm_tables_are_refused(tmp_path, table, message):
    with pytest.raises(studies.StudyError, match=None) as info:
        executors.SlurmOptions.from_table(table)
    assert message in str(info.value)
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in table.items()]
    study = tmp_path / "s.toml"
    study.write_text("[slurm]\n" + "\n".join(lines) + "\n[[rows]]\nid = 'a'\n")
    with pytest.raises(studies.StudyError) as info:
        studies.load_study(study)
    assert message in str(info.value) and "[slurm]" in str(info.value)


def test_flags_override_the_study_table():
    options = executors.options_from({"partition": "a", "gpus_per_run": 8, "time": "2-00:00:00"},
                                     partition="b", nodes=2, qos=None)
    assert (options.partition, options.gpus_per_run, options.nodes, options.tasks_per_node,
            options.time) == ("b", 8, 2, 4, "2-00:00:00")


def test_scheduler_states_in_the_status_tables_words():
    started = [{"event": "running"}]
    requeued = started + [{"event": "requeued"}]
    assert executors.job_state("PENDING", []) == "pending"
    assert executors.job_state("PENDING", requeued) == "requeued"
    assert executors.job_state("REQUEUED", started) == "requeued"
    assert executors.job_state("RUNNING", started) == "running"
    assert executors.job_state("RUNNING", requeued) == "requeued"         # local controller
    assert executors.job_state("RUNNING", requeued + started) == "running"
    assert executors.job_state("COMPLETED", started + [{"event": "done"}]) == "done"
    assert executors.job_state("CANCELLED by 42", started) == "failed"
    assert executors.job_state("TIMEOUT", []) == "failed"
    assert set(executors.SCHEDULER_STATES) <= set(studies.STATES)


# ----------------------------------------------------------------------------- slurm (no sbatch)
def test_paper_study_sbatch_file(tmp_path):
    """What `maxq batch paper --executor slurm` submits for each run (the README's command)."""
    done = subprocess.run(maxq_batch(
        "paper", "--executor", "slurm", "--dry-run", "--runs-root", str(tmp_path),
        "--slurm-partition", "gpu", "--slurm-gpus-per-run", "8", "--slurm-nodes", "2",
        "--slurm-time", "2-00:00:00", "--slurm-account", "lab", "--slurm-qos", "high",
        "--slurm-constraint", "a100"), cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "12 run(s) of study 'paper'" in out
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --time=2880", "#SBATCH --account=lab",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --signal=USR2@120",
                 "#SBATCH --cpus-per-task=10", "submitit.core._submit"):
        assert line in out, line
    assert str(tmp_path / "paper" / "jobs") in out
    assert not (tmp_path / "paper").exists()            # a dry run writes nothing


def test_the_preview_is_the_file_the_slurm_executor_writes(tmp_path, monkeypatch):
    """submitit's SlurmExecutor only needs `srun` to exist to be built: with a stand-in on PATH
    (never run), its own sbatch text equals the --dry-run preview."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = executors.SlurmOptions(partition="gpu", gpus_per_run=4, time="12:00:00",
                                     account="lab", constraint="h100")
    folder = tmp_path / "jobs"
    # as SlurmExecutor.run builds it
    inner = jobs.submitit_executor(folder, options, local=executors.SlurmExecutor.local,
                                   name="maxq-x")._executor
    written = inner._make_submission_file_text(inner._submitit_command_str, "uid")
    assert written == executors.sbatch_script(options, folder, name="maxq-x")
    assert inner.max_num_timeout == executors.MAX_TIMEOUTS


def test_slurm_table_of_the_study_file(tmp_path):
    study = tmp_path / "tiny.toml"
    study.write_text('[slurm]\npartition = "short"\ngpus_per_run = 2\ntime = 30\n'
                     '[defaults]\nset = "FashionMNIST"\n[[rows]]\narch = "resnet18"\nN = 2\nM = 4\n')
    done = subprocess.run(maxq_batch(str(study), "--executor", "slurm", "--dry-run",
                                     "--runs-root", str(tmp_path), "--slurm-qos", "low"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for line in ("--partition=short", "--gpus-per-node=2", "--ntasks-per-node=2", "--time=30",
                 "--qos=low"):
        assert f"#SBATCH {line}" in done.stdout, line


def test_slurm_without_sbatch_is_refused_clearly(tmp_path):
    env = {**ENV, "PATH": os.path.dirname(sys.executable)}     # python, but no sbatch
    done = subprocess.run(maxq_batch("smoke", "--executor", "slurm", "--runs-root",
                                     str(tmp_path), "--no-report"),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "needs SLURM's sbatch on PATH" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "smoke" / "jobs").exists()


# ----------------------------------------------------------------------------- submitit-local
@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory):
    """`maxq batch smoke --executor submitit-local` (report included), then `--status`."""
    base = tmp_path_factory.mktemp("local")
    runs, reports = base / "runs", base / "reports"
    done = subprocess.run(maxq_batch("smoke", "--executor", "submitit-local", "--jobs", "2",
                                     "--runs-root", str(runs), "--reports-root", str(reports)),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
    return runs, reports, done


@pytest.mark.e2e
def test_smoke_study_through_the_local_executor(local_smoke):
    runs, reports, done = local_smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 done, 0 skipped, 0 failed" in done.stdout
    assert (reports / "smoke" / "report.html").exists()
    lines = studies.read_status("smoke", runs)
    assert [line["row"] for line in lines.values()] == [r.id for r in studies.resolve("smoke")]
    for row in studies.resolve("smoke"):
        line = lines[row.id]
        assert line["state"] == "done" and line["executor"] == "submitit-local"
        assert line["job_state"] == "FINISHED" and line["attempts"] == "1"
        job = runs / "smoke" / "jobs" / line["job_id"]
        assert f"{row.id}: submitted job {line['job_id']}" in done.stdout
        # the job ran row.ipynb with papermill into the run directory: the same run record
        run_dir = row.run_dir(runs)
        assert (run_dir / batch.ROW_NOTEBOOK).exists() and records.is_finished(run_dir)
        run = records.read_run(run_dir)
        assert run["config"]["args"]["row"] == row.id and run["config"]["args"]["study"] == "smoke"
        assert [e["event"] for e in executors.read_events(job)] == ["running", "done"]
        assert not [p for p in run_dir.iterdir() if "submitit" in p.name or p.suffix == ".pkl"]


@pytest.mark.e2e
def test_status_prints_the_table_without_launching(local_smoke):
    runs, _, done = local_smoke
    assert done.returncode == 0
    before = (runs / "smoke" / "status.csv").read_text()
    jobs = sorted(p.name for p in (runs / "smoke" / "jobs").iterdir())
    shown = subprocess.run(maxq_batch("smoke", "--status", "--runs-root", str(runs)), cwd=ROOT,
                           env=ENV, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()[:5]
    assert header.split() == list(executors.STATUS_VIEW)
    for row, line in zip(studies.resolve("smoke"), rows):
        cells = line.split()
        assert cells[:3] == [row.id, "done", "submitit-local"] and cells[4] == "FINISHED"
    assert "4 run(s) of study 'smoke': 4 done" in shown.stdout
    assert (runs / "smoke" / "status.csv").read_text() == before
    assert sorted(p.name for p in (runs / "smoke" / "jobs").iterdir()) == jobs
    # a fresh runs root: every run "not started"
    empty = subprocess.run(maxq_batch("smoke", "--status", "--runs-root", str(runs / "none")),
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 0 and "4 not started" in empty.stdout
    assert not (runs / "none").exists()


@pytest.mark.e2e
def test_rerun_skips_done_runs_and_submits_nothing(local_smoke):
    runs, _, done = local_smoke
    assert done.returncode == 0
    jobs = sorted(p.name for p in (runs / "smoke" / "jobs").iterdir())
    again = subprocess.run(maxq_batch("smoke", "--executor", "submitit-local", "--runs-root",
                                      str(runs), "--no-report"),
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 to run, 4 already finished" in again.stdout and "submitted" not in again.stdout
    assert sorted(p.name for p in (runs / "smoke" / "jobs").iterdir()) == jobs
    assert {line["state"] for line in studies.read_status("smoke", runs).values()} == {"skipped"}


PREEMPT_STUDY = slow_study(defaults="lr = 0.05\nsnapshot_epochs = 1\n")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"maxq batch ended (rc {proc.returncode}) before {what}: "
                                 f"{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_preempted_job_is_requeued_and_ends_like_an_uninterrupted_run(tmp_path):
    """SIGUSR2 to the job's task in the middle of epoch 1 (after checkpoint.pth of epoch 0):
    submitit calls RowJob.checkpoint, which ends the kernel and requeues the run with
    resume=True; the requeued job resumes from epoch 1 and the run's records equal those of the
    same study run uninterrupted by the threads executor."""
    study = tmp_path / "preempt.toml"
    study.write_text(PREEMPT_STUDY)
    common = ("--no-report", "--jobs", "1")
    reference = subprocess.Popen(maxq_batch(str(study), "--runs-root", str(tmp_path / "ref"),
                                            *common),
                                 cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(maxq_batch(str(study), "--executor", "submitit-local",
                                         "--runs-root", str(tmp_path / "killed"), *common),
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    (row,) = studies.resolve(study)
    run_dir = row.run_dir(tmp_path / "killed")
    log = run_dir / records.LOG
    _wait_for(lambda: log.exists() and "Epoch: [1][2/4]" in log.read_text(), victim,
              "the middle of epoch 1")
    line = studies.read_status("preempt", tmp_path / "killed")[row.id]
    assert line["state"] == "running" and line["executor"] == "submitit-local"
    job_id = int(line["job_id"])
    (task,) = _children(job_id)             # the local controller's one task
    os.kill(task, signal.SIGUSR2)           # what SLURM sends before preempting or at --time
    out, _ = victim.communicate(timeout=900)
    assert victim.returncode == 0, out[-3000:]
    ref_out, _ = reference.communicate(timeout=900)
    assert reference.returncode == 0, ref_out[-3000:]

    assert f"{row.id}: requeued (job {job_id}" in out
    events = executors.read_events(tmp_path / "killed" / "preempt" / "jobs" / str(job_id))
    assert [e["event"] for e in events] == ["running", "requeued", "running", "done"]
    assert [e.get("resume") for e in events if e["event"] == "running"] == [False, True]
    line = studies.read_status("preempt", tmp_path / "killed")[row.id]
    assert (line["state"], line["job_id"], line["attempts"]) == ("done", str(job_id), "2")
    text = log.read_text()
    assert "resuming" in text and "at epoch 1" in text

    a, b = records.read_run(row.run_dir(tmp_path / "ref")), records.read_run(run_dir)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa
    assert [r["epoch"] for r in b["metrics"]] == [0, 1, 2]
    assert strip(a["metrics"]) == strip(b["metrics"])
    assert a["layers"] == b["layers"]
    assert a["mask_epochs"] == b["mask_epochs"] == [0, 1, 2]
    for key in ("best_top1", "best_top5", "best_epoch", "last_top1", "last_top5", "epochs",
                "mask_checksums"):
        assert a["result"][key] == b["result"][key], key
    wa, wb = (torch.load(d / records.CHECKPOINT, map_location="cpu", weights_only=True)
              for d in (row.run_dir(tmp_path / "ref"), run_dir))
    assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])


@pytest.mark.e2e
def test_two_tasks_per_run_train_one_ddp_run(tmp_path):
    """--slurm-gpus-per-run 2 with the local executor on CPU: 2 tasks, each a kernel whose
    process-group variables come from TorchDistributedEnvironment; the kit's DDP path (gloo)
    trains one run of world size 2; rank 1's notebook goes to the job folder."""
    row = "resnet18-2of4-SoftSRSTEConv2dBN-s0"
    done = subprocess.run(maxq_batch("smoke", "--rows", row, "--executor", "submitit-local",
                                     "--slurm-gpus-per-run", "2", "--runs-root", str(tmp_path),
                                     "--no-report"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = records.read_run(tmp_path / "smoke" / row)
    assert run["result"]["world_size"] == 2 and run["config"]["device"]["world_size"] == 2
    assert len(set(run["result"]["mask_checksums"])) == 1
    job = tmp_path / "smoke" / "jobs" / studies.read_status("smoke", tmp_path)[row]["job_id"]
    assert (job / "rank1_row.ipynb").exists() and not (tmp_path / "smoke" / row / "rank1_row.ipynb").exists()


def test_slurm_flags_are_the_options_fields():
    """SlurmOptions is the one definition: the batch parser has a --slurm-<field> flag per
    field, and what they parse is what the study's [slurm] table takes."""
    import argparse
    from dataclasses import fields

    from maxq import slurm_options

    parser = argparse.ArgumentParser()
    batch.add_batch_arguments(parser)
    names = [f.name for f in fields(executors.SlurmOptions)]
    flags = {a.dest: a.option_strings for a in parser._actions if a.dest.startswith("slurm_")}
    assert flags == {f"slurm_{n}": [slurm_options.flag(n)] for n in names}
    args = parser.parse_args(["smoke", "--slurm-gpus-per-run", "4", "--slurm-nodes", "2",
                              "--slurm-time", "90"])
    values = slurm_options.flag_values(args)
    assert set(values) == set(names)
    merged = executors.options_from({"partition": "p"}, **values)
    assert (merged.partition, merged.gpus_per_run, merged.nodes, merged.tasks_per_node,
            merged.time) == ("p", 4, 2, 2, "90")


def test_executors_are_chosen_in_one_registry():
    assert set(executors.EXECUTORS) == {"threads", "submitit-local", "slurm"}
    for name, cls in executors.EXECUTORS.items():
        assert issubclass(cls, executors.Executor) and cls.name == name
    with pytest.raises(studies.StudyError, match="choose one of threads, submitit-local, slurm"):
        executors.executor_class("mpi")
