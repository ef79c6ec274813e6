"""Reliability (issue 11): one writer per run directory and per study, SIGTERM to ``maxq batch``,
data files that cannot run code, ``--evaluate`` that trusts its checkpoint, a corrupt image that
does not block the rerun, ``export --out`` that cannot replace a run record, stale temporaries,
non-finite options. Real processes, real files, real training (seconds-scale)."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maxq import batch, cli, records, studies
from maxq.data import DataError, build_loaders, write_imagefolder

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
TINY = ["--set", "FashionMNIST", "-a", "mobilenet_v3_small", "--train-subset", "32",
        "--val-subset", "32", "-b", "32", "--epochs", "1", "--increase-end", "1", "--workers",
        "0", "--no-progress"]


def _run(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout} s")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ----------------------------------------------------------------------------- 1. one writer
def test_second_writer_of_a_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "maxq", "train", *TINY, "--train-subset", "2048", "--epochs", "3",
         "--increase-end", "2", "--save_dir", str(run)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / records.LOG).exists(), first, "log.txt")
        before = _files(run)
        code, _, err = _run(capsys, ["train", *TINY, "--save_dir", str(run)])
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("error: ") and f"in use by pid {first.pid} " in err, err
        # also with --overwrite or --resume: nothing of the running run is touched
        for extra in (["--overwrite"], ["--resume"]):
            code, _, err = _run(capsys, ["train", *TINY, "--save_dir", str(run), *extra])
            assert code == 2 and f"in use by pid {first.pid}" in err, err
        after = _files(run)
        assert all(after.get(name) is not None for name in before if name != records.LOG)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel dropped the dead holder's lock: its file is left, and it does not block
    assert (run / records.LOCK).read_text().startswith(f"pid {first.pid} ")
    records.check_unlocked(run)
    with records.RunLock(run) as lock:
        assert lock.held and f"pid {os.getpid()} " in (run / records.LOCK).read_text()
    assert not (run / records.LOCK).exists()          # released: removed


def test_second_batch_of_a_study_is_refused(tmp_path):
    study, runs = _sleeping_study(tmp_path)
    first = _start_batch(study, runs, tmp_path)
    try:
        pid_file = runs / "sleepy" / "r-SoftMaxQConv2DBN-s0" / "kernel.pid"
        _wait_for(pid_file.exists, first, "the kernel's pid file")
        status_before = (runs / "sleepy" / studies.STATUS).read_bytes()
        second = subprocess.run(
            [sys.executable, "-m", "maxq", "batch", str(study), "--runs-root", str(runs),
             "--notebook", str(tmp_path / "sleep.ipynb"), "--no-report", "--no-progress"],
            env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"in use by pid {first.pid} " in second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert (runs / "sleepy" / studies.STATUS).read_bytes() == status_before
    finally:
        first.send_signal(signal.SIGTERM)             # stops its kernel (see the next test)
        first.communicate(timeout=120)


def test_status_updates_of_two_tables_merge(tmp_path):
    """Two batches of one study (two shards) share status.csv: neither loses the other's rows."""
    a, b = batch.StatusTable("s", tmp_path), batch.StatusTable("s", tmp_path)
    a.update("row-a", state="running")
    b.update("row-b", state="running")
    a.update("row-a", state="done")
    lines = studies.read_status("s", tmp_path)
    assert lines["row-a"]["state"] == "done" and lines["row-b"]["state"] == "running"
    assert batch.study_lock("s", tmp_path).path != batch.study_lock("s", tmp_path, "1/2").path


# ----------------------------------------------------------------------------- 2. SIGTERM
def _sleeping_study(tmp_path: Path) -> tuple[Path, Path]:
    """A one-run study whose notebook writes its kernel's pid, then sleeps (a long training)."""
    import nbformat

    study = tmp_path / "sleepy.toml"
    study.write_text('[study]\n[defaults]\nset = "FashionMNIST"\nepochs = 1\n'
                     '[[rows]]\nid = "r"\narch = "resnet18"\nN = 2\nM = 4\n', encoding="utf-8")
    params = nbformat.v4.new_code_cell("config = {}")     # the row's options, as row.ipynb
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import os, pathlib, time\n"
        "pathlib.Path(config['save_dir'], 'kernel.pid').write_text(str(os.getpid()))\n"
        "time.sleep(600)")
    notebook = nbformat.v4.new_notebook(cells=[params, body])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, str(tmp_path / "sleep.ipynb"))
    return study, tmp_path / "runs"


def _start_batch(study: Path, runs: Path, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "maxq", "batch", str(study), "--runs-root", str(runs),
         "--notebook", str(tmp_path / "sleep.ipynb"), "--no-report", "--no-progress"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.e2e
def test_sigterm_stops_the_kernels_and_marks_the_rows_interrupted(tmp_path):
    study, runs = _sleeping_study(tmp_path)
    proc = _start_batch(study, runs, tmp_path)
    pid_file = runs / "sleepy" / "r-SoftMaxQConv2DBN-s0" / "kernel.pid"
    try:
        _wait_for(pid_file.exists, proc, "the kernel's pid file")
        kernel = int(pid_file.read_text())
        assert _alive(kernel)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (out, err)
    assert "interrupted (SIGTERM)" in err
    assert not _alive(kernel)                       # stopped and waited for, not orphaned
    line = studies.read_status("sleepy", runs)["r-SoftMaxQConv2DBN-s0"]
    assert line["state"] == "interrupted"
    assert not (runs / "sleepy" / ".lock").exists()


# ----------------------------------------------------------------------------- 3. data are data
class _Payload:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    touched = tmp_path / "touched"
    batch_1 = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1],
               b"note": _Payload(touched)}
    (d / "data_batch_1").write_bytes(pickle.dumps(batch_1, protocol=2))
    with pytest.raises(DataError) as info:
        build_loaders("CIFAR10", tmp_path, batch_size=2)
    assert not touched.exists()                       # refused before anything was called
    message = str(info.value)
    assert "data_batch_1" in message and "system" in message and "not data" in message


def test_cifar_pickles_of_numpy_arrays_still_load(tmp_path):
    """Plain data in protocols 2 (the real files), 4 and 5, with numpy 1's module path too."""
    from maxq.data import load_data_pickle

    obj = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2],
           b"batch_label": b"x", "set": {1, 2}, "scalar": np.float32(0.5)}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}"
        raw = pickle.dumps(obj, protocol=protocol)
        if protocol == 2:
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        path.write_bytes(raw)
        back = load_data_pickle(path)
        assert np.array_equal(back[b"data"], obj[b"data"]) and back[b"labels"] == [1, 2]
        assert back["set"] == {1, 2} and back["scalar"] == np.float32(0.5)


# ----------------------------------------------------------------------------- 4. evaluate
def test_evaluate_takes_n_m_method_and_arch_from_the_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _run(capsys, ["train", *TINY, "--N", "2", "--M", "4", "--save_dir", str(run)])
    assert code == 0, err
    result = records.read_json(run / records.RESULT)
    best = str(run / records.BEST)
    common = ["--set", "FashionMNIST", "--val-subset", "32", "-b", "32", "--workers", "0",
              "--no-progress", "--evaluate", "--pretrained", best]
    code, _, err = _run(capsys, ["train", *common, "-a", "mobilenet_v3_small", "--N", "1",
                                 "--M", "4"])
    assert code == 2 and err.count("\n") == 1, err
    assert "--N 1 but the checkpoint has --N 2" in err and "--M" not in err.split("has --N 2")[1]
    code, _, err = _run(capsys, ["train", *common, "-a", "resnet18"])
    assert code == 2 and "--arch resnet18 but the checkpoint has --arch mobilenet_v3_small" in err
    # no arch, N, M: the checkpoint's (the defaults, resnet18 and 2:4, would not even load)
    code, out, err = _run(capsys, ["train", *common, "--N", "2"])
    assert code == 0, err
    assert "mobilenet_v3_small SoftMaxQConv2DBN 2:4" in out
    assert f"Prec@1 {result['best_top1']:.3f} Prec@5 {result['best_top5']:.3f}" in out


# ----------------------------------------------------------------------------- 5. corrupt image
def test_corrupt_image_leaves_nothing_that_blocks_the_rerun(tmp_path, capsys):
    tree = write_imagefolder(tmp_path / "tree", n_train_per_class=2, n_val_per_class=1)
    bad = sorted((tree / "train").rglob("*.jpg"))[3]
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])                       # truncated JPEG
    run = tmp_path / "run"
    argv = ["train", str(tree), "--set", "ImageNet", "-a", "mobilenet_v3_small", "--image-size",
            "16", "-b", "20", "--epochs", "1", "--increase-end", "1", "--workers", "0",
            "--no-progress", "--save_dir", str(run)]
    code, _, err = _run(capsys, argv)
    assert code == 2 and err.count("\n") == 1 and bad.name in err, err
    assert not run.exists()
    bad.write_bytes(good)                                         # fixed: the rerun is accepted
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    assert records.is_finished(run)


# ----------------------------------------------------------------------------- 6. export --out
def test_export_refuses_to_overwrite_run_records(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _run(capsys, ["train", *TINY, "--conv-bn-type", "SoftSRSTEConv2dBN",
                                 "--save_dir", str(run)])
    assert code == 0, err
    before = _files(run)
    for out, fmt in ((run / records.BEST, "torchvision"), (run / records.CHECKPOINT, "onnx"),
                     (run / "config.pth", "torchvision"),     # its sidecar is config.json
                     (run / "masks" / "epoch_000.npz", "int8")):
        code, _, err = _run(capsys, ["export", str(run), "--format", fmt, "--out", str(out)])
        assert code == 2 and err.count("\n") == 1 and "a file of a run record" in err, err
    assert _files(run) == before
    code, _, err = _run(capsys, ["export", str(run), "--out", str(run / "mine.pth")])
    assert code == 0, err
    assert (run / "mine.pth").is_file() and (run / "mine.json").is_file()


# ----------------------------------------------------------------------------- 7. temporaries
def test_stale_checkpoint_temporaries_are_removed_on_start_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".checkpoint.pth.k9x2_1ab.tmp", run / ".metrics.jsonl.zz.tmp"]
    (run / "masks").mkdir()
    stale.append(run / "masks" / ".epoch_000.npz.abc.tmp")
    mine = run / "notes.tmp"
    for path in [*stale, mine]:
        path.write_bytes(b"half a file")
    code, _, err = _run(capsys, ["train", *TINY, "--save_dir", str(run)])
    assert code == 0, err
    assert not [p for p in stale if p.exists()] and mine.exists()
    # a resume (here of a finished epoch count: nothing to train) cleans them too
    (run / records.RESULT).unlink()
    stale[0].write_bytes(b"half a file")
    code, _, err = _run(capsys, ["train", *TINY, "--save_dir", str(run), "--resume"])
    assert code == 0, err
    assert not stale[0].exists() and "resuming" in (run / records.LOG).read_text()


# ----------------------------------------------------------------------------- 8. non-finite
@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--decay", "inf"),
                                         ("--weight-decay", "inf"), ("--tau", "inf"),
                                         ("--momentum", "nan"), ("--label-smoothing", "nan")])
def test_non_finite_numbers_are_refused_up_front(capsys, tmp_path, flag, value):
    run = tmp_path / "run"
    code, _, err = _run(capsys, ["train", *TINY, "--save_dir", str(run), flag, value])
    assert code == 2 and err.count("\n") == 1, err
    assert f"{flag} must be a finite number; got {value}" in err
    assert not run.exists()


def test_batch_timeout_must_be_finite(tmp_path):
    done = subprocess.run([sys.executable, "-m", "maxq", "batch", "smoke", "--runs-root",
                           str(tmp_path), "--timeout", "nan"], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--timeout must be a finite number" in done.stderr
    assert not (tmp_path / "smoke").exists()
