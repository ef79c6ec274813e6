"""The N:M benchmark: run sharing between studies ([study].share) and the leaderboard functions
(maxq.stats.leaderboard, maxq.results.training_cost / fairness_card, maxq.plots figures), on
real runs trained here at a tiny scale (every method, two seeds, a few seconds each)."""
from __future__ import annotations

import math

import pytest
from matplotlib.figure import Figure

from maxq import batch, plots, results, stats, studies, train
from maxq.config import TrainConfig

#: end to end: two tiny studies trained for real (every method, two seeds), their report by papermill
pytestmark = pytest.mark.e2e

METHODS = ["SoftSRSTEConv2dBN", "SoftMaxQConv2DBN", "LBC", "BiMask", "SpRe"]
DEFAULTS = """
[defaults]
set = "FashionMNIST"
arch = "resnet18"
width_mult = 0.25
small_input = true
image_size = 16
train_subset = 64
val_subset = 64
batch_size = 32
epochs = 2
increase_start = 0
increase_end = 1
lr = 0.05
weight_decay = 0.0001
decay = 0.0002
workers = 0
device = "cpu"
"""
ROWS = """
[[rows]]
id = "dense"
method = "DenseConv2dBN"
N = 2
M = 4

[[rows]]
id = "2of8"
N = 2
M = 8

[[rows]]
id = "2of4"
N = 2
M = 4
"""


def _write(folder, name: str, meta: str, rows: str = ROWS, defaults: str = DEFAULTS):
    path = folder / f"{name}.toml"
    path.write_text(f"[study]\n{meta}\n{defaults}\n{rows}")
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A tiny benchmark (5 methods x 2 N:M + dense, seeds 0-1) that shares its SR-STE, MaxQ and
    dense runs with a tiny "base" study trained first."""
    root = tmp_path_factory.mktemp("bench")
    studies_dir, runs = root / "studies", root / "runs"
    studies_dir.mkdir()
    _write(studies_dir, "base", 'methods = ["SoftSRSTEConv2dBN", "SoftMaxQConv2DBN"]\n'
                                "seeds = [0, 1]")
    _write(studies_dir, "bench", f"methods = {METHODS!r}\nseeds = [0, 1]\n"
                                 'share = ["base"]'.replace("'", '"'))
    mp = pytest.MonkeyPatch()
    mp.setenv("MAXQ_STUDIES", str(studies_dir))
    for name in ("base", "bench"):
        for row in studies.expand(name):
            if not (row.run_dir(runs) / "result.json").exists():
                train.train(TrainConfig(**row.parameters(runs)))
    yield root, runs
    mp.undo()


def test_share_points_equal_runs_at_the_other_study(bench):
    root, runs = bench
    base = {(r.table_row, r.method, r.seed): r for r in studies.expand("base")}
    rows = studies.expand("bench")
    assert len(rows) == 22
    shared = [r for r in rows if r.home]
    # the "dense" row names its method, so both studies run it: shared too
    assert {r.method for r in shared} == {"SoftSRSTEConv2dBN", "SoftMaxQConv2DBN",
                                          "DenseConv2dBN"}
    assert len(shared) == 10
    for r in shared:
        home = base[(r.table_row, r.method, r.seed)]
        assert r.run_dir(runs) == home.run_dir(runs)
        assert r.home == "base" and not studies.same_options(r, home)
    # the new methods train in the benchmark's own folder
    assert all(r.run_dir(runs).parent.name == "bench" for r in rows if not r.home)


def test_share_is_checked_option_by_option(bench, tmp_path):
    root, runs = bench
    other = _write(root / "studies", "bench-lr", 'methods = ["SoftSRSTEConv2dBN"]\nseeds = [0]\n'
                   'share = ["base"]', defaults=DEFAULTS.replace("lr = 0.05", "lr = 0.04"))
    rows = studies.expand(other)
    assert rows and not any(r.home for r in rows)
    mine = next(r for r in rows if r.id == "2of4-SoftSRSTEConv2dBN-s0")
    base_row = next(r for r in studies.expand("base") if r.id == mine.id)
    assert studies.same_options(mine, base_row) == ["lr"]
    with pytest.raises(studies.StudyError, match="unknown study"):
        studies.load_study(_write(tmp_path, "bad", 'share = ["no-such-study"]'))


def test_dry_run_shows_the_shared_runs(bench, capsys):
    root, runs = bench
    result = batch.run_batch("bench", dry_run=True, runs=str(runs))
    out = capsys.readouterr().out
    assert "shared with" in out and "base/2of4-SoftMaxQConv2DBN-s1" in out
    assert "10 of them shared with base" in out
    assert len(result.runs) == 22


def test_leaderboard_from_real_runs(bench):
    root, runs = bench
    res = results.load("bench", runs)
    assert len(res.finished) == 22 and results.benchmark_study(res)
    assert not results.benchmark_study(results.load("base", runs))
    board = stats.leaderboard(res.runs)
    assert set(board["metric"]) == {"best_top1", "last_top1"}
    for metric in ("best_top1", "last_top1"):
        sub = board[board["metric"] == metric]
        assert len(sub) == 11                                  # 5 methods x 2 rows + dense
        for _, line in sub.iterrows():
            runs_of = res.finished[(res.finished["row"] == line["row"])
                                   & (res.finished["method"] == line["method"])]
            assert line["n"] == 2 and math.isclose(line["mean"], runs_of[metric].mean())
            assert line["ci95_low"] <= line["mean"] <= line["ci95_high"]
            if line["method"] in (stats.MAXQ, stats.DENSE):
                assert line["vs_maxq_verdict"] == ""
                continue
            maxq = res.finished[(res.finished["row"] == line["row"])
                                & (res.finished["method"] == stats.MAXQ)]
            diffs = runs_of.set_index("seed")[metric] - maxq.set_index("seed")[metric]
            assert math.isclose(line["vs_maxq_mean"], diffs.mean(), abs_tol=1e-9)
            assert line["vs_maxq_verdict"] == stats.verdict(line["vs_maxq_low"],
                                                            line["vs_maxq_high"], 2)
    md = stats.leaderboard_markdown(board)
    assert "Bi-Mask" in md and "vs SR-STE" in md and "2:8" in md

    cost = results.training_cost(res)
    assert len(cost) == 11 and (cost["step_seconds"] > 0).all()
    dense = cost[cost["method"] == stats.DENSE].iloc[0]
    assert math.isclose(dense["ratio_to_dense"], 1.0)
    lbc = cost[(cost["method"] == "LBC") & (cost["row"] == "2of4")].iloc[0]
    assert lbc["epochs_denser"] == 1 and lbc["mean_density"] > 0.5       # t_f = epoch 1 of 2
    assert lbc["extra_params"] > 0
    assert cost[cost["method"] == "SpRe"]["extra_params"].gt(0).all()
    srste = cost[cost["method"] == "SoftSRSTEConv2dBN"]
    assert (srste["mean_density"] == srste["N"] / srste["M"]).all()
    assert (srste["extra_params"] == 0).all()

    card = results.fairness_card(res)
    assert len(card) == 11
    bimask = card[card["method"] == "Bi-Mask"]
    assert (bimask["grouping"] == "flattened (in, kh, kw) row").all()
    assert (card[card["method"] == "LBC"]["SR-STE lambda"] == "-").all()
    assert (card[card["method"] == "SR-STE"]["SR-STE lambda"] == "0.0002").all()
    assert set(card[card["method"] == "SR-STE"]["dense layers"]) == {"conv1, fc"}
    assert (card[card["N:M"] == "2:4"].set_index("method").loc["SR-STE", "published R50 top-1"]
            == "77.0")
    assert (card[card["N:M"] == "2:4"].set_index("method").loc["LBC", "published R50 top-1"]
            == "")
    assert (card["R50 GFLOPs"] > 0).all()

    for fig in (plots.accuracy_vs_density(board), plots.accuracy_vs_density(board,
                metric="last_top1"), plots.training_cost_bars(cost)):
        assert isinstance(fig, Figure) and fig.axes


def test_report_renders_the_leaderboard_section(bench):
    """report.ipynb's leaderboard cells run for a benchmark study (not for others: the smoke
    report tests cover that they stay silent) and write their tables and figures."""
    root, runs = bench
    reports = root / "reports"
    ok, error, html = batch.render_report("bench", runs=str(runs), reports=str(reports))
    assert ok, error
    out = reports / "bench"
    board = (out / "leaderboard.md").read_text()
    assert "By best epoch" in board and "By last epoch" in board and "SpRe" in board
    for name in ("training_cost", "fairness_card"):
        assert (out / f"{name}.csv").stat().st_size > 0
    for name in ("accuracy_vs_density_best_top1", "accuracy_vs_density_last_top1",
                 "training_cost"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 2000
    assert "Traceback" not in html.read_text()
