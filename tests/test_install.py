"""The kit installed (``pip install .``, not editable) runs a study outside any checkout.

The package is built from a copy of the checkout's tracked files (the build writes ``build/``
and ``*.egg-info`` beside the sources: not in the checkout) into a fresh venv; the dependencies
come from this interpreter's site-packages through a ``.pth`` line (the tests run offline), so
the only ``maxq`` the new venv can import is the installed one. Then ``maxq batch smoke`` runs
from an empty folder: its runs and report must land there (the installed kit's path policy,
:mod:`maxq.paths`), read from the notebooks and the study shipped as package data.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


def _copy_tracked(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source, target = ROOT / name, dest / name
        if name.startswith(("runs/", "reports/", "samples/")):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        elif source.is_file():
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the kit installed from a copy of this checkout; its ``bin``."""
    base = tmp_path_factory.mktemp("install")
    src, venv = base / "src", base / "venv"
    _copy_tracked(src)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "maxq-test-dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-v",
                           "--no-deps", "--no-build-isolation", "--no-index", str(src)],
                          cwd=base, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    build_output = done.stdout + done.stderr                 # -v: the build backend's own output
    assert "build_py" in build_output                        # the backend's output is shown
    for noise in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "is deprecated",
                  "Package would be ignored"):                # quiet set-up (SPDX licence)
        assert noise not in build_output, noise
    return venv / "bin"


def _user_env(bin_dir: Path) -> dict[str, str]:
    """A user of the installed kit: no checkout on the path, no root variables; the Jupyter
    data files (nbconvert's templates) of the borrowed dependencies."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MAXQ_RUNS_ROOT", "MAXQ_REPORTS_ROOT", "MAXQ_STUDIES")}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    return env


def test_the_installed_kit_carries_its_notebooks_and_studies(installed, tmp_path):
    code = ("import maxq, maxq.paths as p; print(maxq.__file__); print(p.IS_CHECKOUT); "
            "print(p.kit_file('notebooks', 'row.ipynb')); print(p.runs_root())")
    out = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path,
                         env=_user_env(installed), capture_output=True, text=True, check=True)
    module, checkout, row, runs = out.stdout.split("\n")[:4]
    venv = installed.parent.resolve()
    assert Path(module).resolve().is_relative_to(venv) and checkout == "False"
    assert Path(row).is_file() and Path(row).resolve().is_relative_to(venv)
    assert Path(runs) == tmp_path / "runs"                       # the working directory's runs/
    for name in ("row.ipynb", "report.ipynb", "masks.ipynb"):    # the same bytes as the checkout
        assert (Path(row).parent / name).read_bytes() == (ROOT / "notebooks" / name).read_bytes()
    shipped = {p.name for p in (venv / Path(module).parent.relative_to(venv) / "studies")
               .glob("*.toml")}
    assert shipped == {p.name for p in (ROOT / "studies").glob("*.toml")}


def test_maxq_batch_smoke_runs_and_reports_from_an_empty_folder(installed, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    done = subprocess.run([str(installed / "maxq"), "batch", "smoke", "--jobs", "2"], cwd=work,
                          env=_user_env(installed), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(work / "runs" / "smoke" / "status.csv", newline="") as f:
        states = {line["row"]: line["state"] for line in csv.DictReader(f)}
    assert len(states) == 4 and set(states.values()) == {"done"}, states
    report = work / "reports" / "smoke"
    assert (report / "report.ipynb").is_file() and (report / "report.html").is_file()
    assert "the report failed" not in done.stdout + done.stderr
    assert sorted(p.name for p in work.iterdir()) == ["reports", "runs"]
