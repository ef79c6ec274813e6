"""maxq.results: run directories (read through maxq.records) → DataFrames and report tables."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as stats_t

from maxq import batch, records, results, studies

STUDY = """
[study]
methods = ["SoftMaxQConv2DBN", "SoftSRSTEConv2dBN"]
seeds = [0, 1]
[defaults]
set = "FashionMNIST"
epochs = 3
increase_start = 0
increase_end = 2
train_subset = 64
val_subset = 32
image_size = 16
batch_size = 32
[[rows]]
arch = "resnet18"
N = 2
M = 4
paper_top1 = 71.0
paper_top5 = 90.0
paper_epochs = 120
[[rows]]
id = "mbv1-1of4"
arch = "mobilenet_v1"
N = 1
M = 4
"""
LAYERS = ("layer1.0.conv1", "layer2.0.conv2", "fc")


def write_fake_run(row: studies.Row, root: Path, *, top1: float, finished: bool = True,
                   epochs: int | None = None) -> Path:
    """A run directory in the records format with made-up numbers (no training)."""
    import torch

    run_dir = row.run_dir(root)
    args = row.parameters(root)
    n = epochs if epochs is not None else args["epochs"]
    records.write_json(run_dir / records.CONFIG, {"args": args, "layers": []})
    bins = len(records.HIST_EDGES) - 1
    rng = np.random.default_rng(row.seed)
    for epoch in range(n):
        share = min(1.0, (epoch + 1) / max(1, args["increase_end"])) if "MaxQ" in row.method \
            else 1.0
        records.append_jsonl(run_dir / records.METRICS, [{
            "epoch": epoch, "lr": 0.1, "train_loss": 1.0, "train_top1": top1 - 5 + epoch,
            "train_top5": 99.0, "val_loss": 1.1, "val_top1": top1 - (n - 1 - epoch),
            "val_top5": 98.0, "seconds": 1.5, "images_per_s": 40.0, "nm_share": share}])
        records.append_jsonl(run_dir / records.LAYERS, [{
            "epoch": epoch, "layer": name, "nm_share": share,
            "flipped": None if epoch == 0 else float(rng.uniform(0.001, 0.1)),
            "hist_counts": [int(v) for v in rng.integers(0, 100, bins)]} for name in LAYERS])
        masks = {name: torch.from_numpy(rng.choice([0.0, 1.0, 1.5, 2.5], size=(8, 8, 3, 3))
                                        .astype(np.float32)) for name in LAYERS}
        records.save_mask_snapshot(run_dir, epoch, masks)
    if finished:
        records.write_json(run_dir / records.RESULT, {
            "best_top1": top1, "best_top5": 98.0, "best_epoch": n - 1, "last_top1": top1,
            "last_top5": 98.0, "epochs": n, "wall_seconds": 4.5 * n})
    return run_dir


@pytest.fixture()
def fake_study(tmp_path):
    """A study file and a runs root with every run but one finished (made-up numbers)."""
    path = tmp_path / "fake.toml"
    path.write_text(STUDY, encoding="utf-8")
    root = tmp_path / "runs"
    runs = studies.expand(path)
    for i, row in enumerate(runs):
        top1 = 80.0 + (2.0 if row.method == results.MAXQ else 0.0) + row.seed
        write_fake_run(row, root, top1=top1, finished=i != len(runs) - 1,
                       epochs=None if i != len(runs) - 1 else 1)
    return path, root


def test_load_gives_tidy_frames(fake_study):
    path, root = fake_study
    res = results.load(path, root)
    assert res.study == "fake"
    assert len(res.runs) == 8 and list(res.runs.columns) == list(results.RUN_COLUMNS)
    assert res.runs["finished"].sum() == 7
    first = res.runs.iloc[0]
    assert first["run"] == "resnet18-2of4-SoftMaxQConv2DBN-s0" and first["row"] == "resnet18-2of4"
    assert first["method_label"] == "MaxQ" and first["paper_top1"] == 71.0
    assert first["best_top1"] == 82.0 and first["train_subset"] == 64
    assert res.runs[res.runs["row"] == "mbv1-1of4"]["paper_top1"].isna().all()
    unfinished = res.runs[~res.runs["finished"]].iloc[0]
    assert math.isnan(unfinished["best_top1"]) and unfinished["epochs_done"] == 1
    assert len(res.epochs) == 7 * 3 + 1
    assert set(records.METRIC_KEYS) <= set(res.epochs.columns)
    assert len(res.layers) == (7 * 3 + 1) * len(LAYERS)
    assert set(records.LAYER_KEYS) <= set(res.layers.columns)
    assert res.mask_epochs(first["run"]) == [0, 1, 2]
    snaps = res.masks(first["run"], epochs=[0, 2], layers=["fc"])
    assert sorted(snaps) == [0, 2] and list(snaps[0]) == ["fc"]
    assert snaps[0]["fc"]["soft"].shape == (8, 8, 3, 3)


def test_load_unknown_or_empty(tmp_path):
    res = results.load("smoke", tmp_path / "nothing")
    assert res.study == "smoke" and res.runs.empty and res.epochs.empty
    assert results.summary_table(res, cost=False).empty
    assert "No run" in results.scale_summary(res)
    with pytest.raises(studies.StudyError):
        results.load(tmp_path / "missing.toml", tmp_path)


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of a Markdown pipe table (header first, the separator line left out)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return [r for r in rows if not all(set(c) <= set(":-") for c in r)]


def test_summary_table(fake_study):
    path, root = fake_study
    res = results.load(path, root)
    table = results.summary_table(res, cost=False)
    assert list(table["row"]) == ["resnet18-2of4", "mbv1-1of4"]
    r18 = table.iloc[0]
    assert r18["MaxQ top1 mean"] == pytest.approx(82.5) and r18["SR-STE top1 mean"] == 80.5
    assert r18["MaxQ top1 std"] == pytest.approx(np.std([82, 83], ddof=1))
    assert r18["MaxQ n"] == 2 and r18["MaxQ - SR-STE top1"] == pytest.approx(2.0)
    assert table.iloc[1]["SR-STE n"] == 1          # its second seed did not finish
    md = results.summary_markdown(table, res)
    assert markdown_rows(md)[1][:5] == ["resnet18-2of4", "2:4", "71.00", "90.00",
                                        "82.50 ± 0.71 (n=2)"]
    assert "+2.00" in md


def test_summary_table_cost_columns_at_paper_scale(fake_study):
    path, root = fake_study
    res = results.load(path, root)
    table = results.summary_table(res)
    r18 = table.iloc[0]
    assert r18["dense_gflops"] > r18["sparse_gflops"] > 0
    assert r18["dense_mparams"] == pytest.approx(11.69, abs=0.05)   # ResNet-18, 1000 classes
    assert "GFLOPs dense → sparse" in results.summary_markdown(table, res)


def test_paper_cost_resnet50_matches_method_md():
    cost = results.paper_cost("resnet50", 2, 4)
    assert cost["dense_gflops"] == pytest.approx(4.11, abs=0.02)
    assert cost["dense_mparams"] == pytest.approx(25.56, abs=0.02)
    assert cost["sparse_gflops"] == pytest.approx(2.12, abs=0.02)
    assert cost["sparse_mparams"] == pytest.approx(13.83, abs=0.02)
    assert math.isnan(results.paper_cost("vgg99", 2, 4)["dense_gflops"])


def test_ablation_table_groups(fake_study, tmp_path):
    path, root = fake_study
    res = results.load(path, root)
    table = results.ablation_table(res)       # no arms: per row, per method
    assert set(table["group"]) == {"resnet18-2of4", "mbv1-1of4"}
    line = table[(table["group"] == "resnet18-2of4") & (table["arm"] == "MaxQ")].iloc[0]
    assert line["mean"] == pytest.approx(82.5) and line["n"] == 2
    runs = res.finished.set_index("seed")
    in_row = runs[runs["row"] == "resnet18-2of4"]
    maxq_top1 = in_row[in_row["method"] == "SoftMaxQConv2DBN"]["best_top1"]
    half = stats_t.ppf(0.975, 1) * maxq_top1.std(ddof=1) / np.sqrt(2)
    assert line["ci95_low"] == pytest.approx(82.5 - half)
    assert line["ci95_high"] == pytest.approx(82.5 + half)
    assert line["verdict"] == "baseline" and np.isnan(line["delta_mean"])   # the row's first arm
    # every other arm: seed-paired difference to the group's first arm, verdict from its CI
    other = table[(table["group"] == "resnet18-2of4") & (table["arm"] == "SR-STE")].iloc[0]
    diffs = in_row[in_row["method"] == "SoftSRSTEConv2dBN"]["best_top1"] - maxq_top1
    assert other["baseline"] == "MaxQ" and other["n_pairs"] == 2
    # the made-up runs differ by exactly -2 at every seed: a zero-width interval, "behind"
    assert list(diffs) == [-2.0, -2.0]
    assert (other["delta_mean"], other["delta_ci95_low"], other["delta_ci95_high"]) == (
        -2.0, -2.0, -2.0)
    assert other["verdict"] == "behind"
    rows = {tuple(r[:2]): r[2:] for r in markdown_rows(results.ablation_markdown(table))}
    assert rows[("resnet18-2of4", "MaxQ")] == [f"82.50 [{82.5 - half:.2f}, {82.5 + half:.2f}]",
                                               "–", "baseline", "2"]
    assert rows[("resnet18-2of4", "SR-STE")][1] == (
        "-2.00 [-2.00, -2.00] vs MaxQ")
    # arms: one run may be the baseline of several groups
    text = STUDY.replace('id = "mbv1-1of4"', 'id = "mbv1-1of4"\narms = {a = "x", b = "y"}')
    path2 = tmp_path / "arms.toml"
    path2.write_text(text)
    root2 = tmp_path / "runs2"
    for row in studies.expand(path2):
        write_fake_run(row, root2, top1=70.0 + row.seed)
    table = results.ablation_table(results.load(path2, root2))
    assert {"a", "b"} <= set(table["group"])
    assert table[table["group"] == "a"].iloc[0]["n"] == 4


def test_scale_summary_and_schedule_frame(fake_study):
    path, root = fake_study
    res = results.load(path, root)
    text = results.scale_summary(res)
    for fragment in ("FashionMNIST", "train subset 64", "validation subset 32", "input 16 px",
                     "batch 32", "3 epochs", "0–2"):
        assert fragment in text
    res.runs["val_subset"] = None                       # the whole test set
    assert "validation subset all images" in results.scale_summary(res)
    start, end, epochs, chosen = results.study_window(res)
    assert (start, end, epochs, chosen) == (0, 2, 3, "linear")
    frame = results.schedule_frame(0, 30, 40)
    assert set(frame["schedule"]) == {"linear", "cubic", "cos", "exp"}
    at15 = frame[np.isclose(frame["epoch"], 15, atol=0.11)].groupby("schedule")["nm_share"].mean()
    assert at15["linear"] == pytest.approx(0.5, abs=0.01)
    assert at15["cubic"] == pytest.approx(0.875, abs=0.01)


def test_focus_and_heatmap_selection(fake_study):
    path, root = fake_study
    res = results.load(path, root)
    focus = results.focus_runs(res)
    assert focus == ["resnet18-2of4-SoftMaxQConv2DBN-s0", "resnet18-2of4-SoftSRSTEConv2dBN-s0"]
    run, snaps, layers = results.heatmap_selection(res, k_epochs=2, k_layers=2)
    assert run == focus[0] and sorted(snaps) == [0, 2] and layers == ["layer1.0.conv1", "fc"]
    pick = results.mask_choice(res)
    assert pick["epoch"] == 2 and pick["layer"] in LAYERS and pick["M"] == 4
    assert pick["hard"].dtype == bool
    with pytest.raises(records.RunRecordError, match="not a sparse layer"):
        results.mask_choice(res, layer="nope")


def test_save_table_writes_csv_and_markdown(tmp_path, fake_study):
    path, root = fake_study
    res = results.load(path, root)
    written = results.save_table(res.runs, tmp_path / "out" / "runs")
    assert [p.name for p in written] == ["runs.csv", "runs.md"]
    back = pd.read_csv(written[0])
    assert len(back) == 8 and "best_top1" in back.columns
    rows = markdown_rows(written[1].read_text())
    assert rows[0][:2] == ["study", "run"] and len(rows) == 1 + 8
    best = rows[0].index("best_top1")
    assert sorted(r[best] for r in rows[1:]) == sorted(
        "–" if math.isnan(v) else f"{v:.4g}" for v in res.runs["best_top1"])


def test_status_frame(tmp_path):
    table = batch.StatusTable("smoke", tmp_path)
    table.update("a", state="done", seconds=2.0)
    frame = results.status_frame("smoke", tmp_path)
    assert list(frame.columns) == list(studies.STATUS_COLUMNS) and frame.iloc[0]["state"] == "done"


# ----------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One real (tiny) training run written by maxq.train."""
    from maxq.config import TrainConfig
    from maxq.train import train

    root = tmp_path_factory.mktemp("real")
    run_dir = train(TrainConfig(
        set="FashionMNIST", arch="mobilenet_v1", conv_bn_type="SoftMaxQConv2DBN", N=2, M=4,
        image_size=16, train_subset=64, val_subset=32, batch_size=32, epochs=2,
        increase_start=0, increase_end=1, save_dir=str(root / "real" / "row-a"), progress=False,
        study="real", row="row-a"))
    return root, Path(run_dir)


def test_load_real_run_directories(real_run):
    root, run_dir = real_run
    res = results.load("real", root)             # a study without a study file: by folder
    assert len(res.runs) == 1
    run = res.runs.iloc[0]
    assert run["finished"] and run["arch"] == "mobilenet_v1" and run["method"] == results.MAXQ
    assert 0 <= run["best_top1"] <= 100 and run["epochs_done"] == 2
    assert list(res.epochs["epoch"]) == [0, 1]
    assert res.layers["layer"].nunique() > 5 and set(res.layers["epoch"]) == {0, 1}
    single = results.load_run(run_dir)
    assert single.runs.iloc[0]["run"] == "row-a" and len(single.epochs) == 2
    assert res.mask_epochs("row-a") == [0, 1]
    pick = results.mask_choice(res)
    assert pick["soft"].shape == pick["hard"].shape and pick["soft"].max() <= 3.0


def test_discovery_runs_fall_back_to_the_committed_runs_table(tmp_path):
    """A held-out study replicates `claims`, whose run directories are not here: its committed
    report's runs table stands in, and a recipe difference is named option by option."""
    runs, source = results.discovery_runs("claims", runs_root=tmp_path / "runs")
    assert int(runs["finished"].sum()) == len(runs) == 35
    assert "reports/claims/runs.csv" in source
    assert results.same_recipe(runs, runs) == []
    other = runs.copy()
    other.loc[other["row"] == "2of4", "epochs"] = 12
    diff = results.same_recipe(runs, other)
    assert diff and all("epochs" in line and line.startswith("2of4") for line in diff)
    with pytest.raises(ValueError, match="nothing to replicate"):
        results.discovery_runs("smoke", runs_root=tmp_path / "runs",
                               reports_root=tmp_path / "reports")
