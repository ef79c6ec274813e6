"""maxq.plots: one function per figure, DataFrames in, Figure out; PNG + SVG written atomically."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from maxq import plots, records, results, stats  # noqa: E402
from test_results import fake_study  # noqa: E402,F401  (fixture)


@pytest.fixture()
def res(fake_study):  # noqa: F811
    path, root = fake_study
    return results.load(path, root)


def _check(fig: Figure, tmp_path, name: str) -> None:
    assert isinstance(fig, Figure)
    paths = plots.save_figure(fig, tmp_path / "figs" / name, close=True)
    assert [p.suffix for p in paths] == [".png", ".svg"]
    for p in paths:
        assert p.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    assert not [p for p in paths[0].parent.iterdir() if p.name.endswith(".tmp")]


def test_every_report_figure_from_fake_runs(res, tmp_path):
    focus = results.focus_runs(res)
    run, snaps, layers = results.heatmap_selection(res)
    start, end, epochs, chosen = results.study_window(res)
    figures = {
        "accuracy_vs_paper": plots.accuracy_vs_paper(res.runs),
        "training_curves": plots.training_curves(res.epochs, res.runs),
        "nm_share_per_layer": plots.nm_share_per_layer(res.layers, focus),
        "flipped_per_layer": plots.flipped_per_layer(res.layers, focus),
        "soft_histograms": plots.soft_histograms(res.layers, focus),
        "mask_heatmaps": plots.mask_heatmaps(snaps, layers),
        "schedule_curves": plots.schedule_curves(results.schedule_frame(start, end, epochs),
                                                 chosen=chosen, window=(start, end)),
        "ablation_bars": plots.ablation_bars(results.ablation_table(res)),
        "accuracy_vs_flops": plots.accuracy_vs_flops(stats.summary(res.runs),
                                                     results.proxy_gflops(res.runs)),
        "top1_bars": plots.top1_bars(res.runs),
        "paired_differences": plots.paired_differences(
            stats.pairwise(res.runs, "SoftMaxQConv2DBN", "SoftSRSTEConv2dBN")),
    }
    assert set(figures) == set(plots.REPORT_FIGURES)
    for name, fig in figures.items():
        _check(fig, tmp_path, name)


def test_figures_have_the_expected_content(res):
    fig = plots.accuracy_vs_paper(res.runs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "paper (ImageNet)" in labels and "ours: MaxQ" in labels and "ours: SR-STE" in labels
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet18-2of4", "mbv1-1of4"]
    fig = plots.training_curves(res.epochs, res.runs)
    first = fig.axes[0]
    assert first.get_title() == "resnet18-2of4"
    assert any(type(p).__name__ in ("Polygon", "Rectangle") for p in first.patches)  # window
    fig = plots.nm_share_per_layer(res.layers, ["resnet18-2of4-SoftMaxQConv2DBN-s0"])
    assert len(fig.axes[0].lines) == 3                 # one line per layer


def test_empty_input_draws_a_placeholder(tmp_path):
    empty = results.load("nothing", tmp_path)
    for fig in (plots.accuracy_vs_paper(empty.runs), plots.training_curves(empty.epochs),
                plots.nm_share_per_layer(empty.layers), plots.flipped_per_layer(empty.layers),
                plots.soft_histograms(empty.layers), plots.mask_heatmaps({}),
                plots.schedule_curves(pd.DataFrame()), plots.ablation_bars(
                    results.ablation_table(empty))):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert any("no" in t for t in texts)
        _check(fig, tmp_path, "empty")


def test_mask_matrix_and_block_view():
    soft = np.zeros((2, 8, 3, 3), dtype=np.float32)
    soft[:, 0:2] = 1.0                                 # in every block of 4: 2 kept in block 0
    soft[:, 4:8] = 2.0                                 # block 1 dense
    view = plots.mask_matrix(soft)
    assert view.shape == (2, 72)
    # (out, kh, kw, in): the 8 input channels of position (0, 0) come first
    assert list(view[0, :8]) == [1, 1, 0, 0, 2, 2, 2, 2]
    blocks = plots.block_view(soft != 0, 4)
    assert blocks.shape == (2, 18)
    assert list(blocks[0, :2]) == [2, 4]
    fig = plots.mask_detail(soft != 0, soft, 4, title="t")
    assert len(fig.axes) >= 4


def test_save_figure_keeps_dots_in_names(tmp_path):
    fig = plots.schedule_curves(results.schedule_frame(0, 4, 6), chosen="cos")
    paths = plots.save_figure(fig, tmp_path / "layer1.0.conv1", close=True)
    assert [p.name for p in paths] == ["layer1.0.conv1.png", "layer1.0.conv1.svg"]


def test_the_same_figure_saves_to_the_same_bytes(res, tmp_path):
    # a report re-rendered from the same runs must not churn its committed figures
    # (matplotlib writes the date into an SVG and random element ids by default)
    finished = res.runs[res.runs["finished"].astype(bool)]
    runs = pd.concat([finished.assign(seed=finished["seed"] + 10 * k,
                                      best_top1=finished["best_top1"] + 0.37 * k * k)
                      for k in range(5)], ignore_index=True)   # 5+ distinct values per bar
    saved = []
    for folder in ("first", "second"):
        fig = plots.top1_bars(runs)       # its CI is a bootstrap: resampled the same way
        saved.append([p.read_bytes() for p in plots.save_figure(fig, tmp_path / folder / "top1_bars",
                                                                close=True)])
    assert saved[0] == saved[1]
    assert b"<dc:date>" not in saved[0][1]


def test_evidence_figures_show_intervals_and_start_bars_at_zero(res):
    summary = stats.summary(res.runs)
    fig = plots.accuracy_vs_flops(summary, results.proxy_gflops(res.runs))
    ax = fig.axes[0]
    assert "per image" in ax.get_xlabel() and "95 % CI" in ax.get_ylabel()
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"MaxQ", "SR-STE"}
    bars = plots.top1_bars(res.runs).axes[0]
    assert bars.get_ylim()[0] == 0
    pairs = stats.pairwise(res.runs, "SoftMaxQConv2DBN", "SoftSRSTEConv2dBN")
    labels = [t.get_text() for t in plots.paired_differences(pairs).axes[0].get_yticklabels()]
    assert len(labels) == len(pairs) and all("n=" in label for label in labels)


def test_accuracy_vs_flops_labels_of_equal_density_patterns_do_not_overlap():
    """1:4 and 2:8 keep the same share of weights, so they share an x: their labels stack."""
    summary = pd.DataFrame({
        "row": ["r1of4", "r2of8", "r2of4"], "arch": ["resnet50"] * 3, "N": [1, 2, 2],
        "M": [4, 8, 4], "method": ["SoftSRSTEConv2dBN"] * 3, "method_label": ["SR-STE"] * 3,
        "top1_mean": [71.65, 71.70, 76.0], "top1_ci95_low": [np.nan] * 3,
        "top1_ci95_high": [np.nan] * 3})
    gflops = pd.DataFrame({"row": ["r1of4", "r2of8", "r2of4"],
                           "method": ["SoftSRSTEConv2dBN"] * 3, "gflops": [0.5, 0.5, 1.0]})
    ax = plots.accuracy_vs_flops(summary, gflops).axes[0]
    notes = {t.get_text(): t for t in ax.texts}
    assert set(notes) == {"1:4", "2:8", "2:4"}
    fig = ax.figure
    fig.canvas.draw()
    boxes = {k: t.get_window_extent() for k, t in notes.items()}
    assert not boxes["1:4"].overlaps(boxes["2:8"])


def test_one_colour_per_method_in_every_figure(res):
    """The palette is keyed by method: the registry's colour, else a fixed fallback; the same
    method has the same colour whatever else a figure shows, and no two methods share one."""
    from maxq.methods import METHODS

    colours = plots.palette()
    assert colours["SoftMaxQConv2DBN"] == METHODS["SoftMaxQConv2DBN"].color
    assert colours["SoftSRSTEConv2dBN"] == METHODS["SoftSRSTEConv2dBN"].color
    assert len(set(map(matplotlib.colors.to_hex, colours.values()))) == len(colours)
    assert plots.method_color("MaxQ") == colours["SoftMaxQConv2DBN"]        # by label too
    assert plots.method_color("not a method") == plots.method_color("not a method")

    def line_colours(fig):
        return {line.get_label().split(" s")[0]: matplotlib.colors.to_hex(line.get_color())
                for ax in fig.axes for line in ax.lines if not line.get_label().startswith("_")}

    both = line_colours(plots.training_curves(res.epochs, res.runs))
    srste_only = res.epochs[res.epochs["method"] == "SoftSRSTEConv2dBN"]
    alone = line_colours(plots.training_curves(srste_only, res.runs))
    assert alone["SR-STE"] == both["SR-STE"] == matplotlib.colors.to_hex(colours["SoftSRSTEConv2dBN"])
    bars = plots.ablation_bars(results.ablation_table(res),
                               run_methods=res.runs.set_index("run")["method"])
    faces = {matplotlib.colors.to_hex(p.get_facecolor()) for ax in bars.axes for p in ax.patches}
    assert matplotlib.colors.to_hex(colours["SoftMaxQConv2DBN"]) in faces


def test_focus_row_is_a_row_with_masks(res):
    """Without a focus in the study file, the per-layer figures take the first row with a MaxQ
    run, not a dense-only row (which has no masks)."""
    import pandas as pd

    dense = res.runs.iloc[[0]].copy()
    dense["row"], dense["run"], dense["method"] = "dense", "dense-DenseConv2dBN-s0", "DenseConv2dBN"
    res.runs = pd.concat([dense, res.runs], ignore_index=True)
    assert res.spec.focus is None
    focus = results.focus_runs(res)
    assert focus and all(f != "dense-DenseConv2dBN-s0" for f in focus)
    run, snaps, layers = results.heatmap_selection(res)
    assert run is not None and snaps and layers


def test_the_dense_baseline_is_found_by_the_registry_not_by_name():
    """accuracy_vs_density draws the registry's dense method as the ceiling line (its colour),
    not as a density point; training_cost_bars leaves it out (its ratio to itself is 1)."""
    from matplotlib.colors import to_rgba

    from maxq.methods import METHODS

    dense = next(name for name, spec in METHODS.items() if not spec.sparse)
    rows = []
    for method, shift in (("SoftMaxQConv2DBN", 1.0), ("SoftSRSTEConv2dBN", 0.0)):
        for N, M in ((2, 4), (1, 16)):
            rows.append({"metric": "best_top1", "method": method, "method_label": method,
                         "N": N, "M": M, "density": N / M, "mean": 80.0 + shift + N / M,
                         "ci95_low": 79.0, "ci95_high": 82.0})
    rows.append({"metric": "best_top1", "method": dense, "method_label": "dense", "N": 1,
                 "M": 1, "density": 1.0, "mean": 85.0, "ci95_low": 84.5, "ci95_high": 85.5})
    ax = plots.accuracy_vs_density(pd.DataFrame(rows)).axes[0]
    ceiling = [line for line in ax.get_lines() if set(line.get_ydata()) == {85.0}]
    assert len(ceiling) == 1 and to_rgba(ceiling[0].get_color()) == to_rgba(
        plots.method_color(dense))
    assert sorted(float(t) for t in ax.get_xticks()) == [1 / 16, 2 / 4]   # no point at 1.0
    cost = pd.DataFrame([{"row": r, "method": m, "method_label": m, "ratio_to_dense": ratio,
                          "ratio_ci95_low": ratio - 0.1, "ratio_ci95_high": ratio + 0.1}
                         for r in ("a-2of4", "a-1of16")
                         for m, ratio in ((dense, 1.0), ("SoftMaxQConv2DBN", 1.8))])
    bars = plots.training_cost_bars(cost).axes[0].patches
    assert len(bars) == 2 and {round(b.get_height(), 6) for b in bars} == {1.8}
