"""maxq.explorer: finding runs, following layer and epoch across runs, and the ipywidgets
explorer driven through its real widgets (no frontend: the state and the figures)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maxq import explorer, paths, plots, records

RESNET = ("layer1.0.conv1", "layer2.0.conv2")
MOBILENET = ("features.1.1.0", "features.2.1.0")


def write_run(run_dir: Path, arch: str, layers, epochs, *, method="SoftMaxQConv2DBN",
              study=None, seed=0) -> Path:
    """A run directory in the records format: config.json, layers.jsonl and mask snapshots
    whose blocks of 4 turn from dense to 2:4 one epoch after another."""
    records.write_json(run_dir / records.CONFIG, {"args": {
        "arch": arch, "conv_bn_type": method, "N": 2, "M": 4, "study": study}})
    rng = np.random.default_rng(seed)
    for i, epoch in enumerate(epochs):
        masks = {}
        for name in layers:
            soft = rng.uniform(1.0, 3.0, size=(8, 8, 3, 3)).astype(np.float32)
            blocks = soft.reshape(8, 2, 4, 3, 3)
            sparse_blocks = min(2, i)                     # epoch i: i of 2 blocks are 2:4
            blocks[:, :sparse_blocks, 2:] = 0.0
            masks[name] = torch.from_numpy(soft)
        records.save_mask_snapshot(run_dir, epoch, masks)
        # network order (reverse of the sorted names the snapshot stores)
        records.append_jsonl(run_dir / records.LAYERS, [
            {"epoch": epoch, "layer": name, "nm_share": 0.0, "flipped": None, "hist_counts": []}
            for name in reversed(layers)])
    return run_dir


@pytest.fixture()
def root(tmp_path):
    """A runs root with a study (ResNet MaxQ + SR-STE), a single MobileNet run and a run
    directory without snapshots."""
    base = tmp_path / "runs"
    write_run(base / "smoke" / "r18-maxq", "resnet18", RESNET, [0, 1, 2], study="smoke")
    write_run(base / "smoke" / "r18-srste", "resnet18", RESNET, [0, 1, 2], study="smoke",
              method="SoftSRSTEConv2dBN", seed=1)
    write_run(base / "demo", "mobilenet_v1", MOBILENET, [0, 3])
    records.write_json(base / "smoke" / "unstarted" / records.CONFIG, {"args": {"arch": "x"}})
    return base


def test_find_runs_of_studies_single_runs_and_paths(root, tmp_path):
    found = explorer.find_runs(root)
    assert [r.label for r in found.runs] == ["demo", "smoke/r18-maxq", "smoke/r18-srste"]
    assert found.skipped == ["smoke/unstarted"]
    demo = found.get("demo")
    assert demo.arch == "mobilenet_v1" and demo.epochs == (0, 3) and demo.M == 4
    assert demo.layers == tuple(reversed(MOBILENET))            # network order of layers.jsonl
    assert found.get(root / "smoke" / "r18-maxq").label == "smoke/r18-maxq"
    only = explorer.find_runs(root, study="smoke")
    assert [r.label for r in only.runs] == ["smoke/r18-maxq", "smoke/r18-srste"]
    elsewhere = write_run(tmp_path / "elsewhere" / "mine", "resnet18", RESNET, [0])
    extra = explorer.find_runs(root, run_paths=[str(elsewhere)])
    assert extra.get(str(elsewhere)).label == str(elsewhere) and len(extra) == 4


def test_no_runs_says_where_it_looked_and_the_command(tmp_path):
    found = explorer.find_runs(tmp_path / "nothing")
    text = found.message()
    assert str(tmp_path / "nothing") in text and explorer.MAKE_RUNS in text
    ui = explorer.Explorer(found)
    assert ui.info is None and explorer.MAKE_RUNS in ui.message.value
    fig = ui.figure()
    assert any(explorer.MAKE_RUNS in t.get_text() for ax in fig.axes for t in ax.texts)


def test_runs_root_respects_the_environment_and_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("MAXQ_RUNS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)                          # like a kernel started in notebooks/
    assert paths.runs_root() == paths.REPO_ROOT / "runs"
    assert paths.runs_root("runs") == paths.REPO_ROOT / "runs"
    assert paths.reports_root() == paths.REPO_ROOT / "reports"
    monkeypatch.setenv("MAXQ_RUNS_ROOT", str(tmp_path / "elsewhere"))
    assert paths.runs_root() == tmp_path / "elsewhere"
    assert explorer.find_runs().searched == [tmp_path / "elsewhere"]


def test_follow_keeps_layer_and_epoch_or_says_what_changed(root):
    found = explorer.find_runs(root)
    r18, demo = found.get("smoke/r18-maxq"), found.get("demo")
    assert explorer.follow(r18, "layer1.0.conv1", 2) == ("layer1.0.conv1", 2, [])
    layer, epoch, notes = explorer.follow(demo, "layer1.0.conv1", 2)
    assert layer == demo.layers[0] and epoch == 3             # nearest of (0, 3)
    assert "no layer layer1.0.conv1" in notes[0] and "showing epoch 3, the nearest" in notes[1]
    assert explorer.nearest([0, 3], 1) == 0 and explorer.nearest([0, 2, 4], 3) == 4
    assert explorer.nearest([0, 3], None) == 3
    assert explorer.partner(found, r18).label == "smoke/r18-srste"


def test_widget_switches_run_layer_epoch_and_views(root):
    found = explorer.find_runs(root)
    ui = explorer.Explorer(found, run="smoke/r18-maxq")
    assert ui.title == "smoke/r18-maxq · layer2.0.conv2 · epoch 2" and ui.other.label == \
        "smoke/r18-srste"
    ui.layer_w.value = "layer1.0.conv1"
    ui.run_w.value = "demo"                                   # another architecture
    assert list(ui.layer_w.options) == list(demo_layers := found.get("demo").layers)
    assert ui.layer == demo_layers[0] and ui.epoch == 3
    assert ui.title == f"demo · {demo_layers[0]} · epoch 3"
    assert any("nearest" in n for n in ui.notes) and "nearest" in ui.note_w.value
    ui.epoch_w.value = 0
    assert ui.title.endswith("epoch 0") and ui.notes == []
    ui.run_w.value = "smoke/r18-srste"                        # back: first layer, epoch kept
    assert (ui.layer, ui.epoch) == ("layer2.0.conv2", 0)
    ui.view_w.value = "compare"
    ui.other_w.value = "smoke/r18-maxq"
    assert ui.title == "smoke/r18-srste vs smoke/r18-maxq · layer2.0.conv2 · epoch 0"
    ui.view_w.value = "evolution"
    assert ui.title == "smoke/r18-srste · layer2.0.conv2 · epochs 0, 1, 2"
    ui.zoom_w.value = "16 × 24"
    ui.row_w.value, ui.col_w.value = 5, 30
    assert ui.window() == (0, 8, 28, 24)                       # 8 rows; columns on blocks of 4
    assert ui.errors == []


def test_widget_shows_errors_in_the_output(root):
    found = explorer.find_runs(root)
    ui = explorer.Explorer(found, run="demo")
    (found.get("demo").path / records.MASKS / "epoch_000.npz").unlink()
    explorer._layer_cached.cache_clear()
    ui.epoch_w.value = 0
    assert ui.errors and "no mask snapshot for epoch 0" in ui.errors[-1]
    assert any("no mask snapshot for epoch 0" in o.get("text", "") for o in ui.out.outputs)


def test_compare_share_and_evolution_figures(root):
    found = explorer.find_runs(root)
    a, b = found.get("smoke/r18-maxq"), found.get("smoke/r18-srste")
    ha = explorer.load_layer(a, 2, "layer1.0.conv1")["hard"]
    hb = explorer.load_layer(b, 2, "layer1.0.conv1")["hard"]
    assert explorer.differ_share(ha, ha) == 0.0
    assert explorer.differ_share(ha, hb) == 0.0               # same pattern (2:4 in both blocks)
    flipped = ha.copy()
    flipped[0, 0, 0, 0] = not flipped[0, 0, 0, 0]
    assert explorer.differ_share(ha, flipped) == pytest.approx(1 / ha.size)
    fig = explorer.compare_figure(a, b, "layer1.0.conv1", 2)
    assert "differ on 0.0% of the layer's entries" in fig._suptitle.get_text()
    fig = explorer.evolution_figure(a, "layer1.0.conv1")
    titles = [ax.get_title() for ax in fig.axes]
    assert "epoch 0: N:M blocks 0%" in titles and "epoch 2: N:M blocks 100%" in titles
    assert "epoch 1: N:M blocks 50%" in titles


def test_mask_window_and_detail_figure_state_the_crop():
    hard = np.ones((256, 64, 3, 3), dtype=bool)
    window = plots.mask_window(hard.shape, 250, 64, 7, 96, 4)
    assert window == (192, 64, 4, 96)
    assert plots.window_text(hard.shape, window) == "rows 192–255 of 256 · columns 4–99 of 576"
    fig = plots.mask_detail(hard, hard.astype(np.float32), 4, title="t",
                            window=plots.mask_window(hard.shape, 0, 64, 0, 96, 4))
    assert "rows 0–63 of 256" in fig._suptitle.get_text()
    mask_ax, _, block_ax = fig.axes[0], fig.axes[1], fig.axes[2]
    assert mask_ax.get_xlim() == block_ax.get_xlim()          # block view: the same columns
    assert mask_ax.get_ylabel() == "output channel" and "input channel" in mask_ax.get_xlabel()
    assert len(mask_ax.get_xticks()) > 2
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert any("soft mask value" in lab for lab in labels)      # colour bars with units
    assert any("kept entries per block of 4" in lab for lab in labels)
