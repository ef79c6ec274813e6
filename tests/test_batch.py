"""Studies, row resolution, filters, shards, status table and the runner's refusals (fast: no
papermill, no training; the end-to-end runs are in test_notebooks.py)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from maxq import batch, records, studies

ROOT = Path(__file__).resolve().parent.parent
PAPER_TABLE = [  # the seed's table (shared/reference/seed_table.csv), kept here so tests run
    ("resnet34", 1, 4, 120, 74.2, 91.7), ("resnet34", 2, 4, 120, 74.5, 92.1),
    ("resnet50", 1, 4, 120, 77.3, 93.4), ("resnet50", 1, 16, 200, 75.2, 92.6),
    ("resnet50", 2, 4, 120, 77.6, 93.7), ("resnet50", 2, 8, 120, 77.2, 93.5),
    ("mobilenet_v1", 1, 4, 120, 70.4, 89.5), ("mobilenet_v1", 2, 4, 120, 72.3, 90.8),
    ("mobilenet_v2", 1, 4, 120, 67.0, 87.5), ("mobilenet_v2", 2, 4, 120, 69.8, 89.3),
    ("mobilenet_v3_small", 1, 4, 120, 55.3, 78.9), ("mobilenet_v3_small", 2, 4, 120, 60.8, 82.9),
]


def write_study(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TINY = """
[study]
methods = ["SoftMaxQConv2DBN", "SoftSRSTEConv2dBN"]
seeds = [0, 1]
[defaults]
set = "FashionMNIST"
epochs = 1
[[rows]]
arch = "resnet18"
N = 2
M = 4
paper_top1 = 70.0
[[rows]]
id = "mbv1"
arch = "mobilenet_v1"
N = 1
M = 4
seeds = [3]
"""


# ----------------------------------------------------------------------------- studies
@pytest.mark.parametrize("name", ["paper", "cpu", "ablation", "smoke"])
def test_every_shipped_study_resolves(name):
    runs = studies.resolve(name)
    assert runs and len({r.id for r in runs}) == len(runs)
    for r in runs:
        assert r.id == f"{r.table_row}-{r.method}-s{r.seed}"
        assert studies._SAFE_ID.match(r.id)
        assert {"arch", "N", "M", "epochs", "set"} <= set(r.params)
        assert not set(r.params) & set(studies.RUNNER_KEYS)


@pytest.mark.parametrize("name", ["paper", "cpu"])
def test_paper_and_cpu_studies_cover_the_papers_twelve_rows(name):
    study = studies.load_study(name)
    rows = [(r["arch"], r["N"], r["M"], r["paper_epochs"], r["paper_top1"], r["paper_top5"])
            for r in study.rows]
    assert rows == PAPER_TABLE
    if name == "paper":
        assert [r.params["epochs"] for r in studies.resolve("paper")] == [t[3] for t in PAPER_TABLE]
        assert {r.params["set"] for r in studies.resolve("paper")} == {"ImageNet"}
        assert {r.method for r in studies.resolve("paper")} == {"SoftMaxQConv2DBN"}
    else:
        runs = studies.resolve("cpu")
        assert {r.params["set"] for r in runs} == {"FashionMNIST"}
        assert {r.method for r in runs} == {"DenseConv2dBN", "SoftMaxQConv2DBN",
                                            "SoftSRSTEConv2dBN"}
        assert len(runs) == 36
        for r in runs:   # the incremental window lies inside the epochs
            assert r.params["increase_end"] <= r.params["epochs"]


def test_paper_table_matches_the_shared_reference_when_present():
    table = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed_table.csv"
    if not table.exists():
        pytest.skip("shared/ not present in this checkout")
    with open(table, newline="") as handle:
        ref = [(r["arch"], int(r["N"]), int(r["M"]), int(r["epochs"]), float(r["top1"]),
                float(r["top5"])) for r in csv.DictReader(handle)]
    assert ref == PAPER_TABLE


def test_ablation_study_arms_and_seeds():
    runs = studies.resolve("ablation")
    assert {r.seed for r in runs} == {0, 1, 2}
    groups: dict[str, set[str]] = {}
    for r in runs:
        assert (r.params["arch"], r.params["N"], r.params["M"]) == ("resnet18", 1, 16)
        for group, arm in r.arms.items():
            groups.setdefault(group, set()).add(arm)
    assert groups["method"] == {"SR-STE", "hard-axis MaxQ", "authors' V1",
                                "soft-axis, no incremental", "full MaxQ"}
    assert groups["schedule"] == {"linear", "cos", "exp", "cubic"}
    assert groups["selection"] == {"smallest", "largest", "random"}
    from maxq import methods, schedules

    for r in runs:
        assert r.method in methods.METHODS
        assert r.params["prune_schedule"] in schedules.SCHEDULES


def test_study_options_are_training_options():
    from dataclasses import fields

    from maxq.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    for name in studies.available_studies():
        for r in studies.expand(name):
            assert set(r.params) <= known, (name, set(r.params) - known)


def test_expand_methods_seeds_and_overrides(tmp_path):
    path = write_study(tmp_path / "tiny.toml", TINY)
    runs = studies.expand(path)
    assert [r.id for r in runs] == [
        "resnet18-2of4-SoftMaxQConv2DBN-s0", "resnet18-2of4-SoftMaxQConv2DBN-s1",
        "resnet18-2of4-SoftSRSTEConv2dBN-s0", "resnet18-2of4-SoftSRSTEConv2dBN-s1",
        "mbv1-SoftMaxQConv2DBN-s3", "mbv1-SoftSRSTEConv2dBN-s3"]
    assert runs[0].paper == {"paper_top1": 70.0} and runs[-1].paper == {}
    assert runs[0].study == "tiny"
    params = runs[0].parameters(tmp_path / "runs")
    assert params["study"] == "tiny" and params["row"] == runs[0].id
    assert params["conv_bn_type"] == "SoftMaxQConv2DBN" and params["seed"] == 0
    assert params["save_dir"] == str(tmp_path / "runs" / "tiny" / runs[0].id)
    opts = studies.expand(path, options={"epochs": 3})
    assert {r.params["epochs"] for r in opts} == {3}


@pytest.mark.parametrize("text, message", [
    ("[[rows]]\narch='resnet18'\nN=2\nM=4\nseed=1\n", "set by the batch runner"),
    ("[study]\nmethods=[]\n[[rows]]\nid='a'\n", "non-empty list"),
    ("[study]\n", "has no [[rows]]"),
    ("[[rows]]\nid='a b'\n", "not filesystem-safe"),
    ("[[rows]]\nid='a'\n[[rows]]\nid='a'\n", "duplicate row id"),
    ("[[rows]]\narch='resnet18'\n", "needs an 'id' or arch, N and M"),
    ("[other]\n[[rows]]\nid='a'\n", "unknown top-level"),
    ("[[rows]\n", "not valid TOML"),
])
def test_bad_study_files_are_refused_clearly(tmp_path, text, message):
    path = write_study(tmp_path / "bad.toml", text)
    with pytest.raises(studies.StudyError, match=None) as info:
        studies.resolve(path)
    assert message in str(info.value)


def test_unknown_study_names_the_known_ones():
    with pytest.raises(studies.StudyError) as info:
        studies.resolve("smok")
    text = str(info.value)
    assert "unknown study 'smok'" in text and "smoke" in text and "did you mean 'smoke'" in text
    with pytest.raises(studies.StudyError, match="does not exist"):
        studies.resolve("no/such/study.toml")


# ----------------------------------------------------------------------------- filters, shards
def test_row_filters():
    ids = lambda f: [r.id for r in studies.resolve("cpu", rows=f)]  # noqa: E731
    assert ids("resnet50-2of4") == ["resnet50-2of4-DenseConv2dBN-s0",
                                    "resnet50-2of4-SoftSRSTEConv2dBN-s0",
                                    "resnet50-2of4-SoftMaxQConv2DBN-s0"]
    assert len(ids("resnet50*")) == 12
    assert all("SRSTE" in i for i in ids("*SRSTE*")) and len(ids("*SRSTE*")) == 12
    assert ids("resnet34-1of4-SoftMaxQConv2DBN-s0") == ["resnet34-1of4-SoftMaxQConv2DBN-s0"]
    assert len(ids("resnet34-1of4, mobilenet_v1*")) == 9


def test_unknown_filter_is_an_error():
    with pytest.raises(studies.StudyError) as info:
        studies.resolve("cpu", rows="resnet51*")
    assert "matches no run" in str(info.value) and "resnet50-2of4" in str(info.value)
    with pytest.raises(studies.StudyError, match="did you mean"):
        studies.resolve("cpu", rows="resnet50-2of5")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 24, 30])
def test_shards_are_disjoint_and_complete(n):
    everything = [r.id for r in studies.resolve("cpu")]
    shards = [[r.id for r in studies.resolve("cpu", shard=f"{i}/{n}")] for i in range(1, n + 1)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == sorted(everything) and len(flat) == len(set(flat))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shards_split_after_filtering():
    picked = {r.id for r in studies.resolve("cpu", rows="resnet50*")}
    shards = [{r.id for r in studies.resolve("cpu", rows="resnet50*", shard=f"{i}/3")}
              for i in (1, 2, 3)]
    assert set().union(*shards) == picked and sum(map(len, shards)) == len(picked)


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1/0", "a/b", "1-3", "2"])
def test_bad_shard_specs(spec):
    with pytest.raises(studies.StudyError, match="shard"):
        studies.resolve("cpu", shard=spec)


# ----------------------------------------------------------------------------- notebooks
def test_shipped_notebooks_have_parameters_cells():
    for name in ("row.ipynb", "report.ipynb", "masks.ipynb"):
        assert batch.notebook_parameters(ROOT / "notebooks" / name)


def test_row_notebook_parameters_cover_every_training_option():
    import ast
    from dataclasses import fields

    from maxq.config import TrainConfig

    params = batch.notebook_parameters(ROOT / "notebooks" / "row.ipynb")
    assert set(params) == {f.name for f in fields(TrainConfig)}
    # ... with the config's defaults ...
    wrong = {f.name: params[f.name] for f in fields(TrainConfig)
             if ast.literal_eval(params[f.name]) != f.default}
    assert not wrong, wrong
    # ... and the notebook hands every one of them to TrainConfig
    namespace = {name: ast.literal_eval(text) for name, text in params.items()}
    assert TrainConfig.from_parameters(namespace) == TrainConfig()
    source = (ROOT / "notebooks" / "row.ipynb").read_text()
    assert "config = TrainConfig.from_parameters(globals())" in source


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
    records.write_json(run_dir / records.RESULT, {"best_top1": 50.0})
    return run_dir


def test_finished_runs_are_skipped_and_foreign_ones_refused(tmp_path):
    path = write_study(tmp_path / "tiny.toml", TINY)
    runs = studies.expand(path)
    root = tmp_path / "runs"
    fake_finished_run(runs[0], root)
    fake_finished_run(runs[1], root, epochs=7, device="cuda")   # device is not compared
    allowed = set(runs[0].params)
    assert batch._prepare(runs[0], root, False, allowed)[0] == "skip"
    action, message, _ = batch._prepare(runs[1], root, False, allowed)
    assert action == "fail" and "written by another config" in message and "epochs: 7" in message
    assert "--force" in message
    assert batch._prepare(runs[1], root, True, allowed) == ("run", "", {"overwrite": True})
    assert batch._prepare(runs[2], root, False, allowed) == ("run", "", {})
    action, message, _ = batch._prepare(runs[2], root, False, allowed - {"epochs"})
    assert action == "fail" and "unknown training option" in message and "'epochs'" in message


def test_unfinished_runs_are_restarted(tmp_path):
    path = write_study(tmp_path / "tiny.toml", TINY)
    row = studies.expand(path)[0]
    records.write_json(row.run_dir(tmp_path) / records.CONFIG, {"args": {}})
    assert batch._prepare(row, tmp_path, False, None) == ("run", "", {"overwrite": True})


def test_unknown_option_fails_only_its_row(tmp_path):
    text = TINY.replace('seeds = [3]', 'seeds = [3]\nepoch = 2')
    path = write_study(tmp_path / "tiny.toml", text)
    result = batch.run_batch(path, runs=tmp_path / "runs", rows="mbv1-SoftMaxQConv2DBN-s3",
                             report=False, progress=False)
    (outcome,) = result.outcomes
    assert outcome.state == "failed" and "'epoch' (did you mean 'epochs'?)" in outcome.error
    line = studies.read_status("tiny", tmp_path / "runs")["mbv1-SoftMaxQConv2DBN-s3"]
    assert line["state"] == "failed" and "unknown training option" in line["error"]


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
