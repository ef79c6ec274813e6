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


def test_no_runs_of_a_study_gives_that_study_s_command(tmp_path):
    text = explorer.find_runs(tmp_path / "nothing", study="cpu").message()
    assert "maxq batch cpu" in text and "make study" in text and "smoke" not in text
    text = explorer.find_runs(tmp_path / "nothing", study="claims").message()
    assert "maxq batch claims" in text and "smoke" not in text


def test_fresh_clone_shows_the_committed_sample_runs(monkeypatch, tmp_path):
    """No runs in the repository's runs/ (here: a repository root without any) and no
    $MAXQ_RUNS_ROOT: the explorer lists the committed samples/sample/ runs, every epoch's
    masks, and says that they are samples."""
    monkeypatch.delenv("MAXQ_RUNS_ROOT", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    found = explorer.find_runs()
    assert found.samples and len(found.runs) >= 2
    assert all(r.label.startswith("sample/") for r in found.runs)
    assert "committed sample runs" in found.message() and explorer.MAKE_RUNS in found.message()
    methods = {r.method for r in found.runs}
    assert {"SoftMaxQConv2DBN", "SoftSRSTEConv2dBN"} <= methods
    for info in found.runs:
        epochs = int(records.read_config(info.path)["epochs"])
        assert info.epochs == tuple(range(epochs)) and epochs >= 4     # every epoch's masks
    size = sum(p.stat().st_size for p in explorer.SAMPLES_ROOT.rglob("*") if p.is_file()
               and not p.name.endswith((".pth", ".ipynb", ".log")))
    assert size < 5e6, size                                  # what git holds of the samples
    maxq = next(r for r in found.runs if r.method == "SoftMaxQConv2DBN" and r.N == 2)
    shares = [plots.nm_block_share(explorer.load_layer(maxq, e, maxq.layers[1])["hard"],
                                   maxq.M) for e in maxq.epochs]
    assert shares[0] < shares[-1] == 1.0                     # the N:M share grows to all blocks
    ui = explorer.Explorer(found)                            # opens on real masks, no error
    assert ui.errors == [] and ui.title.startswith("sample/")
    # an explicit runs root or a study's runs: no samples
    assert not explorer.find_runs(tmp_path / "elsewhere").runs
    assert not explorer.find_runs(study="cpu").runs


def test_default_zoom_shows_blocks_with_readable_labels():
    """At the default zoom every block boundary is drawn (zoomed in) for every N:M pattern,
    tick labels are MASK_FONT points on a figure no wider than MASK_WIDTH inches."""
    for M in (4, 8, 16):
        hard = np.ones((64, 64, 3, 3), dtype=bool)
        rows, blocks = explorer.ZOOMS[explorer.DEFAULT_ZOOM]
        window = plots.mask_window(hard.shape, 0, rows, 0, blocks * M, M)
        assert window[3] == blocks * M and window[3] // M <= 48
        for fig in (plots.mask_detail(hard, hard.astype(np.float32), M, window=window),
                    plots.mask_compare(hard, hard, M, window=window),
                    plots.mask_evolution({0: hard, 1: hard}, M, window=window)):
            assert fig.get_size_inches()[0] <= plots.MASK_WIDTH
            ax = fig.axes[0]
            orange = [ln for ln in ax.lines if ln.get_color() == "tab:orange"]
            assert len(orange) == blocks - 1                 # a line between every two blocks
            assert all(t.get_fontsize() >= 9 for t in ax.get_xticklabels() + ax.get_yticklabels())


def test_committed_notebooks_have_no_outputs_and_the_lab_hook_keeps_them_so():
    import copy
    import json

    from maxq import lab

    for path in sorted((paths.REPO_ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert not lab.has_outputs(nb), f"{path.name} holds outputs (run state); strip them"
        run = copy.deepcopy(nb)
        code = next(c for c in run["cells"] if c["cell_type"] == "code")
        code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x\n"}]
        code["execution_count"] = 7
        run["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
        assert lab.has_outputs(run)
        model = {"type": "notebook", "content": run}
        lab.pre_save_hook(model=model, path=f"notebooks/{path.name}")
        assert model["content"] == nb                        # saved exactly as committed
        model = {"type": "notebook", "content": copy.deepcopy(run)}
        lab.pre_save_hook(model=model, path=f"reports/x/{path.name}")     # not a template
        assert model["content"] == run
        # another Python's kernel rewrote the language metadata: the file on disk's is kept
        run["metadata"]["language_info"] = {"name": "python", "version": "3.99.0"}
        model = {"type": "notebook", "content": run}

        class Server:                                        # the contents manager's root
            root_dir = str(paths.REPO_ROOT)
        lab.pre_save_hook(model=model, path=f"notebooks/{path.name}", contents_manager=Server())
        assert model["content"] == nb


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
    ui.view_w.value = "evolution"                             # the strip ends at the slider's epoch
    assert ui.title == "smoke/r18-srste · layer2.0.conv2 · epochs 0"
    ui.epoch_w.value = 2
    assert ui.title == "smoke/r18-srste · layer2.0.conv2 · epochs 0, 1, 2"
    assert ui.zoom_w.value == explorer.DEFAULT_ZOOM == "16 rows × 8 blocks"
    ui.row_w.value, ui.col_w.value = 5, 30
    assert ui.window() == (0, 8, 28, 32)             # 8 rows; 8 blocks of 4 from a block start
    ui.zoom_w.value = "32 rows × 16 blocks"
    ui.col_w.value = 30
    assert ui.window() == (0, 8, 8, 64)                        # clamped to the 72 columns
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
