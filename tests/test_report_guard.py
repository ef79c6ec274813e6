"""Issue 27, part 1: a report never destroys the committed one. A study with no finished runs
is refused (CLI and notebook alike), a report from fewer runs than the committed one needs
--force, and a render that fails half-way (here: the file-size limit standing in for a full
disk) leaves the old report byte for byte. Real CLI, real papermill, real training."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from maxq import batch, cli, records, results
from study_files import tiny_study

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _report(args, **kw):
    return subprocess.run([sys.executable, "-m", "maxq", "report", *map(str, args)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.parametrize("study", ["claims", "cpu"])
def test_report_of_a_fresh_clone_is_refused_and_the_committed_report_kept(tmp_path, study):
    """A fresh clone: the committed reports/<study>, no runs/<study>."""
    reports = tmp_path / "reports"
    shutil.copytree(ROOT / "reports" / study, reports / study)
    before = _files(reports)
    done = _report([study, "--runs-root", tmp_path / "runs", "--reports-root", reports])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"study {study!r} has no finished runs" in done.stderr
    assert _files(reports) == before                  # not one file touched, nothing added
    assert sorted(p.name for p in reports.iterdir()) == [study]


def test_report_notebook_alone_refuses_a_study_without_runs(tmp_path):
    """papermill notebooks/report.ipynb -p study cpu on a fresh clone: the notebook's first
    code cell goes through the same guard and stops before writing anything."""
    reports = tmp_path / "reports"
    shutil.copytree(ROOT / "reports" / "cpu", reports / "cpu")
    before = _files(reports)
    ok, error = batch.execute_notebook(
        ROOT / "notebooks" / "report.ipynb", tmp_path / "out.ipynb",
        {"study": "cpu", "runs_root": str(tmp_path / "runs"), "reports_root": str(reports)},
        log_path=tmp_path / "papermill.log", cwd=ROOT / "notebooks")
    assert not ok and "ReportRefused" in error and "no finished runs" in error, error
    assert _files(reports) == before


TINY_STUDY = tiny_study(study="""\
description = "a tiny study <script>document.title='owned'</script> <img src=x onerror=alert(1)>"
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-run study trained for real (one epoch of 32 images)."""
    base = tmp_path_factory.mktemp("tiny")
    study = base / "tiny.toml"
    study.write_text(TINY_STUDY, encoding="utf-8")
    run = base / "runs" / "tiny" / "r-SoftMaxQConv2DBN-s0"
    code = cli.main(["train", "--set", "FashionMNIST", "-a", "mobilenet_v1", "--image-size",
                     "16", "--train-subset", "32", "--val-subset", "32", "-b", "32", "--epochs",
                     "1", "--increase-start", "0", "--increase-end", "1", "--device", "cpu",
                     "--workers", "0", "--no-progress", "--N", "2", "--M", "4",
                     "--save_dir", str(run)])
    assert code == 0 and records.is_finished(run)
    return study, base / "runs"


def _committed(reports: Path, finished: int) -> dict[str, bytes]:
    """A stand-in committed report: some files and a runs.csv with ``finished`` runs."""
    folder = reports / "tiny"
    (folder / "figures").mkdir(parents=True)
    (folder / "report.html").write_text("<html>committed</html>")
    (folder / "figures" / "top1_bars.svg").write_text("<svg/>")
    (folder / "robustness.md").write_text("a section only a --rerun-root render writes")
    pd.DataFrame({"run": [f"x{i}" for i in range(finished)],
                  "finished": [True] * finished}).to_csv(folder / "runs.csv", index=False)
    return _files(reports)


def test_fewer_runs_than_the_committed_report_need_force(tiny, tmp_path):
    study, runs = tiny
    reports = tmp_path / "reports"
    before = _committed(reports, finished=2)
    done = _report([study, "--runs-root", runs, "--reports-root", reports, "--no-html"])
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "1 finished run(s), fewer than the 2 of the report" in done.stderr
    assert "--force" in done.stderr
    assert _files(reports) == before
    forced = _report([study, "--runs-root", runs, "--reports-root", reports, "--force"])
    assert forced.returncode == 0, forced.stderr
    after = _files(reports)
    assert "tiny/report.html" in after and after["tiny/report.html"] != before["tiny/report.html"]
    assert "tiny/figures/top1_bars.svg" in after      # the new report's own figure
    assert after["tiny/robustness.md"] == before["tiny/robustness.md"]   # kept, not lost
    assert sorted(p.name for p in reports.iterdir()) == ["tiny"]   # no temporary left
    runs_csv = pd.read_csv(reports / "tiny" / "runs.csv")
    assert list(runs_csv["run"]) == ["r-SoftMaxQConv2DBN-s0"]
    # provenance in the report: the machine named (CPU model, host hash, torch)
    html = after["tiny/report.html"].decode()
    assert "Made on: " in html and "host " in html and runs_csv["machine"].notna().all()
    # study-file text is shown, not run
    assert "<script>document.title" not in html and "<img src=x onerror" not in html
    assert "&lt;script&gt;document.title" in html


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_render_that_runs_out_of_space_leaves_the_old_report(tiny, tmp_path):
    """Files larger than 60 kB cannot be written (RLIMIT_FSIZE: what a full disk does to the
    report's notebook and figures): the render fails, the committed report stays as it was and
    no truncated report.ipynb or temporary folder is left."""
    study, runs = tiny
    reports = tmp_path / "reports"
    before = _committed(reports, finished=1)
    done = _report([study, "--runs-root", runs, "--reports-root", reports],
                   preexec_fn=_limit_file_size(60_000))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "left as it was" in done.stderr
    assert _files(reports) == before
    assert sorted(p.name for p in reports.iterdir()) == ["tiny"]
