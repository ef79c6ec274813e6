"""maxq.cost: FLOPs and parameters dense vs N:M, the paper's figures (§10)."""
from __future__ import annotations

import warnings

import pytest

from maxq import cost, models, sparse

ARCH = "resnet18"


# ----------------------------------------------------------------------------- cost (§10)
@pytest.fixture(scope="module")
def resnet50():
    return models.build("resnet50")


@pytest.mark.parametrize("nm, gflops, mparams", [
    (None, 4.11, 25.56), ((2, 4), 2.12, 13.83), ((1, 4), 1.13, 7.97), ((2, 8), 1.13, 7.97),
    ((1, 16), 0.38, 3.58),
])
def test_cost_reproduces_paper_resnet50_figures(resnet50, nm, gflops, mparams):
    N, M = nm or (None, None)
    report = cost.cost(resnet50, (3, 224, 224), N, M)
    assert round(report.dense_flops / 1e9, 2) == 4.11
    assert round(report.dense_params / 1e6, 2) == 25.56
    assert round(report.sparse_flops / 1e9, 2) == gflops
    assert round(report.sparse_params / 1e6, 2) == mparams
    # every parameter counted exactly once
    assert report.dense_params == sum(p.numel() for p in resnet50.parameters())


def test_cost_layers_follow_the_policy(resnet50):
    report = cost.cost(resnet50, 224, 2, 4)
    table = report.table()
    by_name = {r["layer"]: r for r in report.layers}
    assert not by_name["conv1"]["sparse"] and not by_name["fc"]["sparse"]
    assert by_name["layer1.0.downsample.0"]["sparse"]
    assert by_name["layer1.0.conv2"]["sparse_flops"] * 2 == by_name["layer1.0.conv2"]["dense_flops"]
    assert by_name["bn1"]["sparse_flops"] == by_name["bn1"]["dense_flops"] == 64 * 112 * 112
    assert int(table["sparse"].sum()) == 53 - 1  # every conv but the stem
    assert report.totals()["flops_ratio"] == pytest.approx(report.sparse_flops / report.dense_flops)


def test_cost_table_for_the_report(resnet50):
    table = cost.cost_table(resnet50, (3, 224, 224))
    assert list(table["pattern"]) == ["dense", "2:4", "1:4", "2:8", "1:16"]
    assert list(table["gflops"].round(2)) == [4.11, 2.12, 1.13, 1.13, 0.38]
    assert list(table["mparams"].round(2)) == [25.56, 13.83, 7.97, 7.97, 3.58]
    assert list(table["valid_2to4"]) == [False, True, True, True, True]


def test_cost_same_for_sparsified_folded_and_stock_model():
    stock = models.build(ARCH, 10, 1, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsified = sparse.sparsify(models.build(ARCH, 10, 1, True), "SoftSRSTEConv2dBN", 1, 8)
    folded = sparse.fold(sparsified)
    a = cost.cost(stock, (1, 32, 32), 1, 8).totals()
    b = cost.cost(sparsified, (1, 32, 32)).totals()
    c = cost.cost(folded, (1, 32, 32)).totals()
    assert a == b == c
    assert cost.cost(stock, (1, 32, 32)).sparse_flops == a["dense_flops"]  # no N:M: dense
    assert sparsified.training  # mode restored


def test_cost_mobilenet_keeps_depthwise_dense():
    report = cost.cost(models.build("mobilenet_v1"), 224, 2, 4)
    rows = {r["layer"]: r for r in report.layers}
    assert not rows["features.1.0.0"]["sparse"] and "depthwise" in rows["features.1.0.0"]["kind"]
    assert rows["features.1.1.0"]["sparse"]
    assert report.sparse_flops < report.dense_flops
