"""End to end with real papermill: the `smoke` study through `maxq batch` (every row a kernel,
then the report), a failing row that does not stop the others and is retried alone, and the
mask explorer executed headless."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from maxq import batch, plots, records, results, studies

from study_files import tiny_study
from test_results import markdown_rows

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def outputs_text(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def has_image(path: Path) -> bool:
    nb = nbformat.read(str(path), as_version=4)
    return any("image/png" in out.get("data", {}) for cell in nb.cells
               for out in cell.get("outputs", []))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`python -m maxq batch smoke` into a temporary runs/reports root (the real CLI)."""
    base = tmp_path_factory.mktemp("smoke")
    runs, reports = base / "runs", base / "reports"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "maxq", "batch", "smoke", "--jobs", "2", "--runs-root", str(runs),
         "--reports-root", str(reports)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - start
    print(f"smoke study end to end: {seconds:.0f} s")
    return runs, reports, done, seconds


def test_smoke_batch_finishes_and_prints_the_report(smoke):
    runs, reports, done, seconds = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    html = reports / "smoke" / "report.html"
    assert f"report: {html}" in done.stdout
    assert "4 done, 0 skipped, 0 failed" in done.stdout


def test_smoke_status_table(smoke):
    runs, _, _, _ = smoke
    with open(runs / "smoke" / "status.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [line["row"] for line in lines] == [r.id for r in studies.resolve("smoke")]
    for line in lines:
        assert line["state"] == "done" and line["error"] == "" and float(line["seconds"]) > 0
        assert line["attempts"] == "1"
        assert (line["executor"], line["job_id"], line["job_state"]) == ("threads", "", "")
        assert records.is_finished(line["run_dir"])
        assert Path(line["notebook"]).name == "row.ipynb" and Path(line["notebook"]).exists()


def test_smoke_row_notebooks_ran_in_the_venv_kernel(smoke):
    runs, _, _, _ = smoke
    for row in studies.resolve("smoke"):
        folder = runs / "smoke" / row.id
        text = outputs_text(folder / "row.ipynb")
        assert f"kernel python: {sys.executable}" in text
        assert has_image(folder / "row.ipynb")            # curves shown inline
        log = (folder / "papermill.log").read_text()
        assert "Executing notebook with kernel: python3" in log
        nb = nbformat.read(str(folder / "row.ipynb"), as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and f"\"row\": \"{row.id}\"" in injected[0].source


def test_smoke_results_table_one_line_per_row(smoke):
    _, reports, _, _ = smoke
    table = pd.read_csv(reports / "smoke" / "results.csv")
    assert list(table["row"]) == ["resnet18-2of4", "mobilenet_v1-2of4"]
    for column in ("MaxQ top1 mean", "SR-STE top1 mean", "MaxQ top5 mean", "MaxQ - SR-STE top1",
                   "dense_gflops", "sparse_gflops", "dense_mparams", "sparse_mparams"):
        assert table[column].notna().all(), column
        assert pd.api.types.is_numeric_dtype(table[column]), column
    assert table.loc[1, "paper_top1"] == 72.3
    md = (reports / "smoke" / "results.md").read_text()
    assert "**Scale.**" in md
    assert ["mobilenet_v1-2of4", "2:4", "72.30", "90.80"] in [r[:4] for r in markdown_rows(md)]
    for name in ("runs", "status", "ablation"):
        assert (reports / "smoke" / f"{name}.csv").stat().st_size > 0
        assert (reports / "smoke" / f"{name}.md").stat().st_size > 0


def test_smoke_every_figure_png_and_svg(smoke):
    _, reports, _, _ = smoke
    for name in plots.REPORT_FIGURES:
        for ext in ("png", "svg"):
            path = reports / "smoke" / "figures" / f"{name}.{ext}"
            assert path.exists() and path.stat().st_size > 2000, path


def test_smoke_html_report(smoke):
    _, reports, _, _ = smoke
    html = (reports / "smoke" / "report.html").read_text()
    assert "<table" in html and "mobilenet_v1-2of4" in html and "paper top-1" in html
    assert "Scale." in html and "data:image/png;base64" in html
    assert "Traceback" not in html
    executed = nbformat.read(str(reports / "smoke" / "report.ipynb"), as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", [])
                if o.get("output_type") == "error"]


def report_sections(path: Path) -> list[dict]:
    """The sections of an executed report notebook, in order: each ``## `` heading (of a
    Markdown cell or of a cell's Markdown output) with the figures and tables shown until the
    next heading (Markdown tables counted by their ``|---`` rule lines)."""
    nb = nbformat.read(str(path), as_version=4)
    sections = [{"title": "(top)", "figures": 0, "tables": 0}]

    def markdown(text: str) -> None:
        for line in text.splitlines():
            if line.startswith("## "):
                sections.append({"title": line[3:].strip(), "figures": 0, "tables": 0})
            elif line.startswith("|") and set(line) <= set("|:- "):
                sections[-1]["tables"] += 1

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            markdown(cell.source)
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            markdown(data.get("text/markdown", ""))
            sections[-1]["figures"] += "image/png" in data
            sections[-1]["tables"] += "<table" in data.get("text/html", "")
    return sections[1:]


def test_smoke_report_shows_only_sections_with_something_in_them(smoke):
    """issue 24: a section's heading appears only with its table or figure. The smoke study
    has no claims, no dense row and no re-run: no Verdicts, Convergence or Robustness heading
    (they were empty sections before); every section shown has a figure or a table."""
    _, reports, _, _ = smoke
    sections = report_sections(reports / "smoke" / "report.ipynb")
    titles = [s["title"] for s in sections]
    assert "Mask evolution" in titles and "Ablation" in titles and "Results table" in titles
    for absent in ("Verdicts", "Convergence", "Robustness across machines and thread counts",
                   "N:M method leaderboard", "Replication on held-out seeds"):
        assert absent not in titles, titles
    empty = [s["title"] for s in sections if not s["figures"] + s["tables"]]
    assert not empty, sections


def test_smoke_runs_load_into_pandas(smoke):
    runs, _, _, _ = smoke
    res = results.load("smoke", runs)
    assert len(res.runs) == 4 and res.runs["finished"].all()
    assert res.runs["best_top1"].between(0, 100).all()
    assert set(res.epochs["epoch"]) == {0, 1} and len(res.epochs) == 8
    maxq = res.epochs[res.epochs["method"] == results.MAXQ]
    assert list(maxq.groupby("run")["nm_share"].last()) == [1.0, 1.0]
    assert len(res.layers) > 0 and res.layers["nm_share"].between(0, 1).all()


def test_smoke_rerun_skips_everything(smoke):
    runs, reports, _, _ = smoke
    done = subprocess.run(
        [sys.executable, "-m", "maxq", "batch", "smoke", "--runs-root", str(runs),
         "--reports-root", str(reports), "--no-report"], cwd=ROOT, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "0 done, 4 skipped, 0 failed" in done.stdout
    lines = studies.read_status("smoke", runs)
    assert {line["state"] for line in lines.values()} == {"skipped"}
    assert all(float(line["seconds"]) > 0 for line in lines.values())   # kept from the run


def test_masks_notebook_headless_renders_a_static_figure(smoke, tmp_path):
    runs, _, _, _ = smoke
    out = tmp_path / "masks.ipynb"
    ok, error = batch.execute_notebook(ROOT / "notebooks" / "masks.ipynb", out,
                                       {"study": "smoke", "runs_root": str(runs)},
                                       log_path=tmp_path / "masks.log")
    assert ok, error
    assert has_image(out)
    assert "4 runs with mask snapshots" in outputs_text(out)


def test_notebooks_from_their_folder_with_no_runs_say_so(tmp_path, monkeypatch):
    """As opened in JupyterLab (kernel in notebooks/, default parameters): paths come from
    MAXQ_RUNS_ROOT / MAXQ_REPORTS_ROOT, the report goes there (no stray notebooks/reports/) and
    both notebooks say plainly that there are no runs."""
    monkeypatch.setenv("MAXQ_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("MAXQ_REPORTS_ROOT", str(tmp_path / "reports"))
    for name in ("masks", "report"):
        out = tmp_path / f"{name}.ipynb"
        ok, error = batch.execute_notebook(ROOT / "notebooks" / f"{name}.ipynb", out, {},
                                           log_path=tmp_path / f"{name}.log",
                                           cwd=ROOT / "notebooks")
        if name == "masks":
            assert ok, error
            text = outputs_text(out)
            assert "No run with mask snapshots found" in text and "maxq batch smoke" in text
            assert str(tmp_path / "runs") in text
        else:   # issue 27: a report of no finished run is refused, before anything is written
            assert not ok and "study 'smoke' has no finished runs" in error, error
            assert "maxq batch smoke" in error and str(tmp_path / "runs") in error
    assert not (tmp_path / "reports").exists()
    assert not (ROOT / "notebooks" / "reports").exists()


def test_notebooks_are_stored_clean():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path


def test_report_command_alone(smoke, tmp_path):
    runs, _, _, _ = smoke
    done = subprocess.run(
        [sys.executable, "-m", "maxq", "report", "smoke", "--runs-root", str(runs),
         "--reports-root", str(tmp_path), "--rerun-root", str(runs)], cwd=ROOT,
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "smoke" / "report.html").exists()
    # the runs compared with themselves: the robustness section finds nothing moved
    robust = pd.read_csv(tmp_path / "smoke" / "robustness.csv")
    assert len(robust) == 4 and (robust["mean_shift"] == 0).all()
    robustness = (tmp_path / "smoke" / "robustness.md").read_text()
    assert "moved by at most 0.00 points" in robustness
    # issue 27: the section names the machines it compares (here: the same runs, one machine)
    assert "Machines compared: reference runs on " in robustness and "; re-run on " in robustness
    missing = subprocess.run(
        [sys.executable, "-m", "maxq", "report", "smoke", "--runs-root", str(runs),
         "--reports-root", str(tmp_path), "--rerun-root", str(tmp_path / "nowhere")], cwd=ROOT,
        capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no run directories of study 'smoke'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    # the re-run given as a report's runs table (a committed report whose runs are gone): the
    # same numbers, its machine "not recorded" when the table predates provenance
    table = pd.read_csv(tmp_path / "smoke" / "runs.csv").drop(columns=["machine"])
    table.to_csv(tmp_path / "old-runs.csv", index=False)
    from_table = subprocess.run(
        [sys.executable, "-m", "maxq", "report", "smoke", "--runs-root", str(runs),
         "--reports-root", str(tmp_path), "--rerun-root", str(tmp_path / "old-runs.csv"),
         "--no-html"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert from_table.returncode == 0, from_table.stderr
    robust = pd.read_csv(tmp_path / "smoke" / "robustness.csv")
    assert len(robust) == 4 and (robust["mean_shift"] == 0).all()
    machines = (tmp_path / "smoke" / "robustness.md").read_text()
    assert "re-run on machine not recorded (runs table " in machines and "/old-runs.csv)" in machines
    (tmp_path / "bad.csv").write_text("no,runs\n1,2\n")
    bad = subprocess.run(
        [sys.executable, "-m", "maxq", "report", "smoke", "--runs-root", str(runs),
         "--reports-root", str(tmp_path), "--rerun-root", str(tmp_path / "bad.csv")], cwd=ROOT,
        capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a readable runs table" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- a failing row
FAILING = tiny_study(rows="""\
[[rows]]
id = "good"
arch = "mobilenet_v1"
N = 2
M = 4
[[rows]]
id = "broken"
arch = "mobilenet_v1"
N = {n}
M = 4
""")


def test_a_failing_row_does_not_stop_the_others_and_is_retried_alone(tmp_path, capsys):
    study = tmp_path / "failing.toml"
    study.write_text(FAILING.format(n=5))
    runs = tmp_path / "runs"
    result = batch.run_batch(study, runs=runs, report=False, progress=False)
    states = {o.row.table_row: o.state for o in result.outcomes}
    assert states == {"good": "done", "broken": "failed"}
    status = studies.read_status("failing", runs)
    broken = status["broken-SoftMaxQConv2DBN-s0"]
    assert broken["state"] == "failed" and "N must be <= M" in broken["error"]
    assert "\n" not in broken["error"] and broken["attempts"] == "1"
    assert status["good-SoftMaxQConv2DBN-s0"]["state"] == "done"
    printed = capsys.readouterr()
    assert "N must be <= M" in printed.out + printed.err
    assert (runs / "failing" / "broken-SoftMaxQConv2DBN-s0" / "row.ipynb").exists()

    # the next call retries only the failed row
    result = batch.run_batch(study, runs=runs, report=False, progress=False)
    states = {o.row.table_row: o.state for o in result.outcomes}
    assert states == {"good": "skipped", "broken": "failed"}
    status = studies.read_status("failing", runs)
    assert status["broken-SoftMaxQConv2DBN-s0"]["attempts"] == "2"
    assert status["good-SoftMaxQConv2DBN-s0"]["state"] == "skipped"

    # fixed in the study file: the retry succeeds, the finished row is still not re-run
    study.write_text(FAILING.format(n=2))
    result = batch.run_batch(study, runs=runs, report=False, progress=False)
    states = {o.row.table_row: o.state for o in result.outcomes}
    assert states == {"good": "skipped", "broken": "done"} and result.ok

    # the study changed under a finished run: refused with a clear message, not overwritten
    study.write_text(FAILING.format(n=2).replace("epochs = 1", "epochs = 2"))
    before = (runs / "failing" / "good-SoftMaxQConv2DBN-s0" / records.RESULT).read_bytes()
    result = batch.run_batch(study, runs=runs, report=False, progress=False)
    assert {o.state for o in result.outcomes} == {"failed"}
    assert all("written by another config" in o.error and "epochs" in o.error
               for o in result.outcomes)
    assert (runs / "failing" / "good-SoftMaxQConv2DBN-s0" / records.RESULT).read_bytes() == before
    json.loads(before)
