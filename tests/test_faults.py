"""Issue 27, the fault battery: each trial that failed on the old code, as a test. Real CLI,
real training, real submitit-local jobs; synchronised on files and process exits, no sleeps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from maxq import records, studies
from study_files import slow_study, tiny_study

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def maxq(*args: str) -> list[str]:
    return [sys.executable, "-m", "maxq", *map(str, args)]


def _until(check, proc: subprocess.Popen, what: str, timeout: float = 600):
    """Poll ``check`` (a file appearing, a line in a log) until true; fail when ``proc`` ends
    first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended (rc {proc.returncode}) before {what}: "
                                 f"{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- SIGTERM
SLOW_STUDY = slow_study()


@pytest.mark.e2e
def test_sigterm_to_a_submitit_local_batch_stops_its_job(tmp_path):
    """SIGTERM to `maxq batch --executor submitit-local` in the middle of an epoch: the batch
    exits 143 and every process it started (controller, task, papermill, kernel) ends; the run
    is not finished behind the user's back."""
    study = tmp_path / "slow.toml"
    study.write_text(SLOW_STUDY)
    batch = subprocess.Popen(maxq("batch", study, "--executor", "submitit-local", "--runs-root",
                                  tmp_path / "runs", "--no-report", "--no-progress"),
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    (row,) = studies.resolve(study)
    run_dir = row.run_dir(tmp_path / "runs")
    log = run_dir / records.LOG
    _until(lambda: log.exists() and "Epoch: [0][2/4]" in log.read_text(), batch,
           "the middle of epoch 0")
    started = psutil.Process(batch.pid).children(recursive=True)
    assert len(started) >= 3                       # controller, task, papermill (+ kernel)
    batch.send_signal(signal.SIGTERM)
    out, _ = batch.communicate(timeout=300)
    assert batch.returncode == 143, out[-3000:]
    _, alive = psutil.wait_procs(started, timeout=120)
    assert not alive, [p.info if hasattr(p, "info") else p for p in alive]
    assert not records.is_finished(run_dir)
    line = studies.read_status("slow", tmp_path / "runs")[row.id]
    assert line["state"] == "interrupted", line


# ----------------------------------------------------------------------------- a small study
TWO_SEEDS = tiny_study(study="""\
description = "two seeds of one tiny cell"
seeds = [0, 1]
""", defaults="snapshot_epochs = 1\n")


def _train(run_dir: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(maxq("train", "--set", "FashionMNIST", "-a", "mobilenet_v1",
                               "--image-size", "16", "--train-subset", "32", "--val-subset",
                               "32", "-b", "32", "--increase-start", "0", "--increase-end", "1",
                               "--device", "cpu", "--workers", "0", "--no-progress",
                               "--save_dir", run_dir, *extra),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """The study file and a runs root with both of its runs trained for real (the study's own
    row options, as `maxq batch` would; `maxq train` saves two kernels' start-up)."""
    base = tmp_path_factory.mktemp("two")
    study = base / "two.toml"
    study.write_text(TWO_SEEDS)
    for row in studies.resolve(study):
        done = _train(row.run_dir(base / "runs"), "--epochs", "1", "--N", "2", "--M", "4",
                      "--seed", str(row.seed), "--snapshot-epochs", "1", "--study", "two",
                      "--row", row.id)
        assert done.returncode == 0, done.stderr[-3000:]
    return study, base / "runs"


def _copy_runs(two_seeds, tmp_path: Path) -> tuple[Path, Path, list]:
    import shutil

    study, runs = two_seeds
    shutil.copytree(runs, tmp_path / "runs")
    return study, tmp_path / "runs", studies.resolve(study)


def _rewrite_json(path: Path, **changes):
    import json

    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _bad_masks(path: Path):
    """A mask snapshot whose soft array disagrees with its stored shape."""
    import numpy as np

    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    soft = next(k for k in arrays if k.endswith("/soft"))
    arrays[soft] = arrays[soft].reshape(-1)[:-1]
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


CORRUPTIONS = {
    "result-truncated": (records.RESULT, _truncate, "not valid JSON"),
    "result-empty": (records.RESULT, lambda p: p.write_text(""), "not valid JSON"),
    "result-not-object": (records.RESULT, lambda p: p.write_text("[1, 2]"), "not a JSON object"),
    "result-top1-150": (records.RESULT, lambda p: _rewrite_json(p, best_top1=150),
                        "best_top1 is 150, outside [0, 100]"),
    "result-top1-string": (records.RESULT, lambda p: _rewrite_json(p, best_top1="88.5"),
                           "best_top1 is '88.5' (str), not a number"),
    "metrics-garbled": (records.METRICS, lambda p: p.write_text('{"epoch": 0, "val_'),
                        "line 1 is not valid JSON"),
    "metrics-nan-loss": (records.METRICS, lambda p: p.write_text(
        p.read_text().replace('"val_loss": ', '"val_loss": NaN, "x": ')), "val_loss is nan"),
    "config-not-object": (records.CONFIG, lambda p: p.write_text('"text"'),
                          "not a JSON object"),
    "masks-shape": (f"{records.MASKS}/epoch_000.npz", _bad_masks, "soft mask shape"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_record_marks_its_run_and_the_study_still_loads(two_seeds, tmp_path, kind):
    """One record of seed 0's run spoiled: loading the study names that file and leaves the
    run out (not in summary); seed 1 loads as before; `maxq batch` marks the run `corrupt` (not
    skipped as done) with the file named, trains nothing and exits non-zero."""
    from maxq import results

    name, spoil, problem = CORRUPTIONS[kind]
    study, runs, (bad, good) = _copy_runs(two_seeds, tmp_path)
    path = bad.run_dir(runs) / name
    spoil(path)
    res = results.load(study, runs)
    assert list(res.runs["run"]) == [good.id] and bool(res.runs["finished"].all())
    (line,) = res.corrupt.itertuples()
    assert line.run == bad.id and Path(line.file) == path and problem in line.problem, line
    assert f"`{path.name}`" in results.runs_note(res, runs)
    before = {p: p.read_bytes() for p in bad.run_dir(runs).rglob("*") if p.is_file()}
    done = subprocess.run(maxq("batch", study, "--runs-root", runs, "--no-report",
                               "--no-progress"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    status = studies.read_status("two", runs)
    assert status[bad.id]["state"] == "corrupt" and str(path) in status[bad.id]["error"]
    assert status[good.id]["state"] == "skipped"
    after = {p: p.read_bytes() for p in bad.run_dir(runs).rglob("*") if p.is_file()
             if p.name not in ("status.csv",)}
    assert after == before                                         # nothing overwritten


def test_a_garbled_status_table_does_not_stop_the_study(two_seeds, tmp_path):
    from maxq import results

    study, runs, (bad, good) = _copy_runs(two_seeds, tmp_path)
    table = runs / "two" / studies.STATUS
    table.write_text("row,state,seconds\n"
                     f"{good.id},done,1.5\n"
                     "../../etc,done,1\n"
                     f"{bad.id},exploded,x\n"
                     "\x00\x01garbage\n")
    with pytest.warns(UserWarning, match="status.csv line"):
        frame = results.status_frame(study, runs)
    assert list(frame["row"]) == [good.id]
    table.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.warns(UserWarning, match="garbled"):
        assert studies.read_status("two", runs) == {}
    assert len(results.load(study, runs).finished) == 2


# ----------------------------------------------------------------------------- divergence
@pytest.mark.e2e
def test_a_diverged_run_is_failed_not_done(tmp_path):
    """lr at its upper bound: finite training loss in the one step, non-finite validation loss
    after it. The run is `failed` with the reason, has no result.json and is not in summary."""
    from maxq import results

    study = tmp_path / "diverge.toml"
    study.write_text(TWO_SEEDS.replace("seeds = [0, 1]", "seeds = [0]")
                     .replace("\nepochs = 1\n", "\nepochs = 1\nlr = 10000.0\n"))
    done = subprocess.run(maxq("batch", study, "--runs-root", tmp_path / "runs", "--no-report",
                               "--no-progress"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    (row,) = studies.resolve(study)
    line = studies.read_status("diverge", tmp_path / "runs")[row.id]
    assert line["state"] == "failed" and "FloatingPointError: validation loss is nan" in \
        line["error"] and "diverged" in line["error"], line
    assert not records.is_finished(row.run_dir(tmp_path / "runs"))
    assert not len(results.load(study, tmp_path / "runs").finished)


# ----------------------------------------------------------------------------- names, bounds
def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("command", ["batch", "report"])
def test_a_study_named_dotdot_is_refused_and_nothing_written(tmp_path, command):
    """`...toml` has the stem `..`: its status and report would land outside the roots."""
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    study = inner / "...toml"
    study.write_text(TWO_SEEDS)
    before = _tree(tmp_path)
    done = subprocess.run(maxq(command, study, "--runs-root", inner / "runs", "--reports-root",
                               inner / "reports", *(["--no-progress"] if command == "batch"
                                                    else [])),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not a valid study name" in done.stderr and done.stderr.count("\n") == 1
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("flag, value", [("--epochs", "9223372036854775807"),
                                         ("--batch-size", "1000000000"), ("--M", "100000"),
                                         ("--lr", "1e6"), ("--image-size", "100000"),
                                         ("--seed", str(2**40))])
def test_absurd_numeric_options_are_refused(tmp_path, flag, value):
    done = _train(tmp_path / "run", flag, value, timeout=120)   # refused in seconds
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{flag} must be <= " in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "run").exists()


def test_batch_jobs_0_leaves_nothing_on_disk(tmp_path):
    done = subprocess.run(maxq("batch", "smoke", "--jobs", "0", "--runs-root", tmp_path / "runs",
                               "--no-progress"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--jobs must be an integer in 1..256" in done.stderr
    assert _tree(tmp_path) == []


# ----------------------------------------------------------------------------- resume
def test_resume_checks_config_json_too(two_seeds, tmp_path):
    """A folder whose checkpoint is 2:4 and whose config.json says 1:4 (seed 0's run, result
    removed, config.json edited): `--resume` with the checkpoint's 2:4 used to finish it as 2:4
    under the 1:4 config.json; now it is refused, config.json named, the folder unchanged."""
    import json

    study, runs, (row, _) = _copy_runs(two_seeds, tmp_path)
    run_dir = row.run_dir(runs)
    (run_dir / records.RESULT).unlink()
    config = json.loads((run_dir / records.CONFIG).read_text())
    config["args"]["N"] = 1                        # config.json now 1:4, the checkpoint 2:4
    (run_dir / records.CONFIG).write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    done = _train(run_dir, "--epochs", "1", "--N", "2", "--M", "4", "--seed", "0",
                  "--snapshot-epochs", "1", "--study", "two", "--row", row.id, "--resume")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "config.json was written by another configuration" in done.stderr
    assert "N 1 there, 2 now" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: b for p, b in before.items() if p.name != ".lock"}
    assert not records.is_finished(run_dir)


@pytest.mark.parametrize("table, message", [({"gpus_per_run": 10**9}, "gpus_per_run must be <="),
                                            ({"nodes": 10**6}, "nodes must be <="),
                                            ({"time": "100000-00:00:00"}, "is over 365 days")])
def test_absurd_slurm_options_are_refused(table, message):
    from maxq import executors

    with pytest.raises(studies.StudyError, match=message):
        executors.SlurmOptions.from_table(table)


@pytest.mark.parametrize("flag, value", [("--image-size", "1000000"),
                                         ("--calibration-batches", "1000000000")])
def test_absurd_export_options_are_refused(tmp_path, flag, value):
    done = subprocess.run(maxq("export", tmp_path / "nowhere", "--format", "int8", flag, value),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and f"{flag} must be in " in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and _tree(tmp_path) == []
