"""Studies as data: the shipped study files, expansion into runs, bad files, filters and shards
(maxq.studies; fast, nothing runs)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from maxq import studies

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
    assert {r.seed for r in runs} == {0, 1, 2, 3, 4}
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
