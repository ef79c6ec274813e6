"""The runner: notebooks, status table and the runner's refusals, the command line (fast: no
papermill, no training; the end-to-end runs are in test_notebooks.py; studies, filters and
shards: test_studies.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maxq import batch, records, studies
from test_studies import PAPER_TABLE, TINY, write_study  # noqa: F401  (shared fixtures)

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- notebooks
def test_shipped_notebooks_have_parameters_cells():
    for name in ("row.ipynb", "report.ipynb", "masks.ipynb"):
        assert batch.notebook_parameters(ROOT / "notebooks" / name)


def test_row_notebook_takes_the_options_as_one_config_mapping():
    """The parameters cell restates no default: one ``config = {}`` (every default), handed to
    TrainConfig whole, so a new training option needs no notebook edit."""
    params = batch.notebook_parameters(ROOT / "notebooks" / "row.ipynb")
    assert params == {"config": "{}"}
    source = (ROOT / "notebooks" / "row.ipynb").read_text()
    assert "TrainConfig(**config)" in source
    batch.check_row_notebook(ROOT / "notebooks" / "row.ipynb")


def test_a_row_notebook_without_config_is_refused(tmp_path):
    import nbformat

    cell = nbformat.v4.new_code_cell("epochs = 1")
    cell.metadata["tags"] = ["parameters"]
    path = tmp_path / "old.ipynb"
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))
    with pytest.raises(batch.NotebookError, match="does not set 'config'"):
        batch.check_row_notebook(path)


def test_the_row_config_is_what_the_study_says(tmp_path):
    path = write_study(tmp_path / "tiny.toml", TINY)
    row = studies.expand(path)[0]
    from maxq import rowrun

    options = rowrun.row_config(row, tmp_path, {"overwrite": True})
    assert options["save_dir"] == str(row.run_dir(tmp_path).resolve())
    assert (options["study"], options["row"], options["seed"]) == ("tiny", row.id, row.seed)
    assert options["conv_bn_type"] == row.method and options["overwrite"] is True
    from maxq.config import TrainConfig

    assert TrainConfig(**options).epochs == row.params["epochs"]


def test_notebook_without_parameters_cell(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "bare.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(batch.NotebookError, match="no cell tagged 'parameters'"):
        batch.notebook_parameters(path)
    with pytest.raises(batch.NotebookError, match="does not exist"):
        batch.notebook_parameters(tmp_path / "missing.ipynb")


def test_batch_with_a_notebook_without_parameters_records_every_row(tmp_path, capsys):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "bare.ipynb"
    nbformat.write(nb, str(path))
    result = batch.run_batch("smoke", runs=tmp_path / "runs", notebook=path, report=False,
                             progress=False)
    assert not result.ok and len(result.failed) == 4
    status = studies.read_status("smoke", tmp_path / "runs")
    assert {line["state"] for line in status.values()} == {"failed"}
    assert all("no cell tagged 'parameters'" in line["error"] for line in status.values())
    assert "no cell tagged 'parameters'" in capsys.readouterr().out


# ----------------------------------------------------------------------------- status, refusals
def test_status_table_is_rewritten_atomically_and_merged(tmp_path):
    table = batch.StatusTable("s", tmp_path)
    table.update("a", state="pending")
    table.update("b", state="failed", error="boom", seconds=1.25)
    again = batch.StatusTable("s", tmp_path)
    again.update("a", state="done", seconds=3.0)
    lines = studies.read_status("s", tmp_path)
    assert list(lines) == ["a", "b"]
    assert lines["a"]["state"] == "done" and lines["a"]["seconds"] == "3.0"
    assert lines["b"]["error"] == "boom" and lines["b"]["seconds"] == "1.2"
    header = (tmp_path / "s" / "status.csv").read_text().splitlines()[0].split(",")
    assert header == list(studies.STATUS_COLUMNS)
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")]


def fake_finished_run(row: studies.Row, root: Path, **changes) -> Path:
    run_dir = row.run_dir(root)
    args = {**row.parameters(root), **changes}
    records.write_json(run_dir / records.CONFIG, {"args": args})
    records.write_json(run_dir / records.RESULT, {
        "best_top1": 50.0, "best_top5": 90.0, "best_epoch": 0, "last_top1": 50.0,
        "last_top5": 90.0, "epochs": 1, "wall_seconds": 1.0})
    return run_dir


def test_finished_runs_are_skipped_and_foreign_ones_refused(tmp_path):
    path = write_study(tmp_path / "tiny.toml", TINY)
    runs = studies.expand(path)
    root = tmp_path / "runs"
    fake_finished_run(runs[0], root)
    fake_finished_run(runs[1], root, epochs=7, device="cuda")   # device is not compared
    assert batch.plan_row(runs[0], root, False)[0] == "skip"
    action, message, _ = batch.plan_row(runs[1], root, False)
    assert action == "fail" and "written by another config" in message and "epochs: 7" in message
    assert "--force" in message
    assert batch.plan_row(runs[1], root, True) == ("run", "", {"overwrite": True})
    assert batch.plan_row(runs[2], root, False) == ("run", "", {})


def test_unfinished_runs_are_restarted(tmp_path):
    path = write_study(tmp_path / "tiny.toml", TINY)
    row = studies.expand(path)[0]
    records.write_json(row.run_dir(tmp_path) / records.CONFIG, {"args": {}})
    assert batch.plan_row(row, tmp_path, False) == ("run", "", {"overwrite": True})


def test_an_unknown_option_is_refused_before_anything_runs(tmp_path):
    text = TINY.replace('seeds = [3]', 'seeds = [3]\nepoch = 2')
    path = write_study(tmp_path / "tiny.toml", text)
    with pytest.raises(studies.StudyError) as info:
        batch.run_batch(path, runs=tmp_path / "runs", report=False, progress=False)
    assert "'epoch' (did you mean 'epochs'?)" in str(info.value)
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- command line
def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maxq", "batch", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_dry_run_prints_the_resolved_rows(tmp_path):
    done = run_cli("paper", "--dry-run", "--runs-root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for arch, N, M, epochs, _, _ in PAPER_TABLE:
        assert f"{arch}-{N}of{M}-SoftMaxQConv2DBN-s0" in done.stdout
    assert "12 run(s) of study 'paper'" in done.stdout
    assert not (tmp_path / "paper").exists()      # nothing written
    done = run_cli("cpu", "--dry-run", "--rows", "mobilenet_v2*", "--shard", "2/2")
    assert done.returncode == 0 and "3 run(s)" in done.stdout


@pytest.mark.parametrize("args, message", [
    (("nosuchstudy",), "unknown study 'nosuchstudy'"),
    (("cpu", "--rows", "vgg16*"), "matches no run"),
    (("cpu", "--shard", "3/2"), "shards are numbered 1..n"),
    (("cpu", "--option", "seed=3", "--dry-run"), "set by the batch runner"),
])
def test_bad_input_exits_2_with_a_clear_message(args, message):
    done = run_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_option_values_are_typed():
    assert batch._parse_options(["epochs=3", "lr=1e-3", "data=/x/y", "amp=off", "nesterov=true",
                                 "snapshot_epochs=[0, 2]"]) == {
        "epochs": 3, "lr": 1e-3, "data": "/x/y", "amp": "off", "nesterov": True,
        "snapshot_epochs": [0, 2]}


def test_kernel_environment_splits_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 8)
    env = batch._kernel_env(jobs=4)
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"
    assert env["PYTHONPATH"].split(batch.os.pathsep)[0] == str(batch.PACKAGE_ROOT)
    assert env["TQDM_DISABLE"] == "1"
    assert batch._kernel_env(jobs=16)["OMP_NUM_THREADS"] == "1"


def test_status_columns_documented():
    assert studies.STATUS_COLUMNS[:6] == ("row", "state", "seconds", "error", "run_dir", "notebook")
    assert json.loads(json.dumps(list(studies.STATES)))
