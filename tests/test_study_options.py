"""A study's training options are checked against the training config's own definitions (type,
choices, range of each TrainConfig field) before a batch launches anything; every problem is
printed, one line each, exit 2, nothing written."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from maxq import config, studies
from maxq.config import TrainConfig
from test_studies import TINY, write_study

ROOT = Path(__file__).resolve().parent.parent

THREE_BAD = """
[study]
methods = ["SoftMaxQConv2DBN"]
[defaults]
set = "FashionMNIST"
epochs = 1
lr = -0.5
[[rows]]
id = "a"
arch = "resnet18"
N = 2
M = 4
amp = "fp8"
[[rows]]
id = "b"
arch = "mobilenet_v1"
N = 1
M = 4
batch_size = 2.5
"""


def test_three_bad_values_give_three_lines_exit_2_and_nothing_written(tmp_path):
    path = write_study(tmp_path / "bad.toml", THREE_BAD)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    done = subprocess.run([sys.executable, "-m", "maxq", "batch", str(path), "--runs-root",
                           str(runs), "--reports-root", str(reports), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3, done.stderr
    assert all(line.startswith(f"maxq batch: error: {path}") for line in lines), lines
    assert "[defaults]: --lr must be > 0; got -0.5" in lines[0]
    assert "row 'a': unknown --amp 'fp8'; choose one of" in lines[1]
    assert "row 'b': --batch-size must be an integer >= 1; got 2.5" in lines[2]
    assert "Traceback" not in done.stderr
    assert not runs.exists() and not reports.exists()          # no folder, no status.csv


def test_dry_run_is_refused_too_and_option_overrides_are_checked(tmp_path):
    path = write_study(tmp_path / "tiny.toml", TINY)
    done = subprocess.run([sys.executable, "-m", "maxq", "batch", str(path), "--dry-run",
                           "--runs-root", str(tmp_path / "runs"), "--option", "momentum=1.5",
                           "--option", "lighting=sepia"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["maxq batch: error: --option: --momentum must be in [0, 1); got 1.5",
                     "maxq batch: error: --option: unknown --lighting 'sepia'; choose one of "
                     "authors, pca, none"], lines


def test_methods_and_seeds_are_options_too(tmp_path):
    text = TINY.replace('seeds = [3]', 'seeds = [3]\nmethods = ["MaxQ"]')
    errors = studies.option_errors(write_study(tmp_path / "tiny.toml", text))
    assert errors == [f"{tmp_path / 'tiny.toml'} row 'mbv1': unknown --conv-bn-type 'MaxQ'; "
                      f"choose one of " + ", ".join(config.choices_of("conv_bn_type"))]


@pytest.mark.parametrize("name", studies.available_studies())
def test_every_shipped_study_passes(name):
    assert studies.option_errors(name) == []


def test_the_checks_are_the_configs_own():
    """The per-option check is the one TrainConfig.validate runs: the same line for the same
    bad value; a field's default always passes it."""
    for name, value in (("epochs", 0), ("lr", float("nan")), ("arch", "resnet9"),
                        ("width_mult", 5.0), ("seed", 2**40), ("nesterov", "yes")):
        problem = config.option_problem(name, value)
        assert problem
        with pytest.raises(ValueError) as info:
            dataclasses.replace(TrainConfig(set="FashionMNIST"), **{name: value}).validate()
        assert str(info.value) == problem
    for f in dataclasses.fields(TrainConfig):
        assert config.option_problem(f.name, f.default) == "", f.name
