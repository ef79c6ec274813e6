"""The install surfaces agree: pyproject pins, environment.yml, Makefile, CI script."""
from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    return next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)


def test_torch_pins_are_exact():
    deps = _pyproject()["project"]["dependencies"]
    assert "torch==2.14.1" in deps
    assert "torchvision==0.29.1" in deps


def test_other_dependencies_have_lower_bounds_only():
    project = _pyproject()["project"]
    every = list(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        if name != "dali-cuda110":           # the only CUDA 11 DALI that installs is 1.34.0
            every += extra
    for dep in every:
        if dep.startswith(("torch==", "torchvision==")):
            continue
        assert ">=" in dep and "==" not in dep, dep
    assert project["optional-dependencies"]["dali-cuda110"] == ["nvidia-dali-cuda110==1.34.0"]


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    expected = set(project["dependencies"])
    for name in ("notebooks", "onnx", "dali", "dev"):     # what scripts/setup-env.sh installs
        expected |= set(extras[name])
    pip = _pip_section()
    assert "-e ." in pip
    assert set(pip) - {"-e ."} == expected


def test_setup_installs_the_extras_the_environment_lists():
    setup = (ROOT / "scripts" / "setup-env.sh").read_text()
    assert 'EXTRAS=${EXTRAS:-notebooks,onnx,dali,dev}' in setup
    assert "dataset-fashion-mnist" in setup


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make study" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_opens_the_explorer_with_make_lab():
    project = _pyproject()["project"]
    assert "jupyterlab>=4.0" in project["optional-dependencies"]["notebooks"]
    assert "make lab" in (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "\nlab: setup\n" in makefile
    assert "--ServerApp.ip=127.0.0.1" in makefile and "notebooks/masks.ipynb" in makefile


def test_the_licence_is_an_spdx_string():
    """PEP 639: ``license = "MIT"`` (a table is deprecated and makes setuptools print pages of
    warnings); the build backend must be one that reads it."""
    pyproject = _pyproject()
    assert pyproject["project"]["license"] == "MIT"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
