"""One path policy (maxq.paths): the same runs and reports roots from the command line, the
study loader and the notebooks' kernels, whatever the working directory; the kit's notebooks and
studies are package data with one copy in the checkout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from maxq import batch, paths, studies

ROOT = Path(__file__).resolve().parents[1]

#: what each entry point resolves: the paths module, the study loader, the runner's run folder
#: and the report's parameters
PROBE = """
import json
from maxq import batch, paths, studies
row = studies.resolve("smoke")[0]
print(json.dumps({"paths": [str(paths.runs_root()), str(paths.reports_root())],
                  "studies": [str(studies.runs_root()), str(studies.reports_root())],
                  "save_dir": row.parameters()["save_dir"],
                  "notebook": str(batch.notebook_path("row.ipynb")),
                  "study": str(studies.load_study("smoke").path)}))
"""


def _probe(cwd: Path, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("MAXQ_RUNS_ROOT",
                                                                  "MAXQ_REPORTS_ROOT")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_entry_point_uses_the_checkout_roots_from_any_directory(tmp_path):
    expected = [str(ROOT / "runs"), str(ROOT / "reports")]
    for cwd in (ROOT, ROOT / "notebooks", tmp_path):     # the root, a kernel, anywhere else
        seen = _probe(cwd)
        assert seen["paths"] == expected and seen["studies"] == expected, (cwd, seen)
        assert seen["save_dir"] == str(ROOT / "runs" / "smoke" / "resnet18-2of4-SoftMaxQConv2DBN-s0")
        assert seen["notebook"] == str(ROOT / "notebooks" / "row.ipynb")
        assert seen["study"] == str(ROOT / "studies" / "smoke.toml")


def test_the_variables_override_and_relative_values_resolve_against_the_checkout(tmp_path):
    seen = _probe(tmp_path, MAXQ_RUNS_ROOT=str(tmp_path / "r"), MAXQ_REPORTS_ROOT="elsewhere")
    assert seen["paths"] == seen["studies"] == [str(tmp_path / "r"), str(ROOT / "elsewhere")]
    assert seen["save_dir"].startswith(str(tmp_path / "r" / "smoke") + os.sep)


def test_the_command_line_writes_under_the_checkout_roots_from_elsewhere(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAXQ_RUNS_ROOT", "MAXQ_REPORTS_ROOT")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "maxq", "batch", "smoke", "--dry-run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"run directories under {ROOT / 'runs' / 'smoke'}" in done.stdout
    assert not list(tmp_path.iterdir())                      # nothing written where it ran


def test_relative_roots_given_in_code_resolve_against_the_base(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert paths.base() == ROOT and paths.IS_CHECKOUT
    assert paths.runs_root("x") == ROOT / "x" and paths.runs_root(tmp_path) == tmp_path
    assert studies.runs_root is paths.runs_root and studies.reports_root is paths.reports_root
    assert batch.runs_root is paths.runs_root


def test_an_installed_kit_uses_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "IS_CHECKOUT", False)
    monkeypatch.delenv("MAXQ_RUNS_ROOT", raising=False)
    monkeypatch.delenv("MAXQ_REPORTS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.runs_root() == tmp_path / "runs" and paths.reports_root() == tmp_path / "reports"
    assert paths.shown(tmp_path / "runs" / "smoke") == "runs/smoke"


def test_paths_for_the_report_notebook_are_relative_inside_the_checkout_else_absolute(
        monkeypatch, tmp_path):
    """What ``maxq report`` hands its notebook (run in the base): a committed report then
    records ``reports/claims``, never the machine's checkout; outside the base the path stays
    usable by the notebook (absolute, no ``~`` as :func:`paths.shown` writes for messages)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.base_relative(ROOT / "reports" / "claims") == "reports/claims"
    assert paths.base_relative(ROOT) == "."
    assert paths.base_relative(tmp_path / "runs") == str((tmp_path / "runs").resolve())
    assert paths.shown(tmp_path / "runs") == "~/runs"


def test_notebooks_and_studies_are_package_data_with_one_copy():
    """maxq/notebooks and maxq/studies are links to the top-level folders (no second copy that
    could drift), and pyproject ships exactly those files."""
    for name in paths.KIT_DIRS:
        link = ROOT / "maxq" / name
        assert link.is_symlink() and os.readlink(link) == f"../{name}"
        assert paths.kit_dir(name) == ROOT / name
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert package_data["include-package-data"] is False
    assert set(package_data["package-data"]["maxq"]) == {
        "_native.c", "notebooks/*.ipynb", "studies/*.toml"}
    assert {p.name for p in (ROOT / "notebooks").iterdir() if p.suffix == ".ipynb"} == {
        "row.ipynb", "report.ipynb", "masks.ipynb"}


def test_kit_dir_refuses_an_unknown_folder():
    with pytest.raises(ValueError, match="there are: notebooks, studies"):
        paths.kit_dir("runs")


def test_the_lab_treats_the_package_data_link_as_the_templates():
    """JupyterLab shows the templates twice (notebooks/ and its link maxq/notebooks/): saving
    through either strips the outputs; executed copies elsewhere are kept as they are."""
    from maxq import lab

    assert lab.is_template("notebooks/masks.ipynb") and lab.is_template("/maxq/notebooks/row.ipynb")
    assert not lab.is_template("runs/smoke/x/row.ipynb")
    assert not lab.is_template("maxq/notebooks/sub/row.ipynb")
    assert not lab.is_template("reports/smoke/report.ipynb")


def test_status_lines_show_paths_as_the_reports_do(tmp_path):
    """The roots are absolute now; status.csv (shown in every report) keeps run folders inside
    the checkout relative to it, so committed reports hold no machine's paths."""
    table = batch.StatusTable("shown", tmp_path)
    table.update("a", run_dir=ROOT / "runs" / "shown" / "a",
                 notebook=ROOT / "runs" / "shown" / "a" / "row.ipynb")
    table.update("b", run_dir=tmp_path / "shown" / "b")
    lines = studies.read_status("shown", tmp_path)
    assert lines["a"]["run_dir"] == "runs/shown/a"
    assert lines["a"]["notebook"] == "runs/shown/a/row.ipynb"
    assert lines["b"]["run_dir"] == str(tmp_path / "shown" / "b")


def test_runs_table_shows_run_folders_as_the_reports_do(tmp_path):
    """The runs table (runs.csv of every report) names run folders inside the checkout
    relative to it, like status.csv; outside it, as they are."""
    import json

    from maxq import results

    for root in (ROOT / "runs", tmp_path):
        folder = root / "shown-runs-table" / "r1"
        folder.mkdir(parents=True)
        try:
            (folder / "config.json").write_text(json.dumps({"method": "SoftMaxQConv2DBN",
                                                            "seed": 0, "N": 2, "M": 4}))
            table = results.load_run(folder).runs
            expected = ("runs/shown-runs-table/r1" if root != tmp_path else str(folder))
            assert list(table["run_dir"]) == [expected]
        finally:
            if root != tmp_path:
                import shutil
                shutil.rmtree(root / "shown-runs-table")
