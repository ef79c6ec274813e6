"""The evidence rules of the committed CPU studies: every sparse weight sees data (dead-weight
share measured by maxq.sparse.describe), a dense baseline per row, seeds where claims are made."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from maxq import data, models, sparse, studies

CPU_STUDIES = ("cpu", "claims", "claims-12ep", "ablation", "ablation-12ep", "smoke")


@pytest.mark.parametrize("kernel, padding, stride, size, dead", [
    (3, 1, 1, 1, 8 / 9),        # 3x3 on a 1x1 map: only the centre tap reads data
    (3, 1, 1, 2, 0.0),          # on 2x2 every tap reads a real pixel at some output
    (3, 1, 2, 4, 0.0),
    (3, 1, 2, 2, 5 / 9),        # stride 2 on 2x2: one output, taps (1..2, 1..2) alive
    (1, 0, 1, 1, 0.0),
    (5, 2, 1, 1, 24 / 25),
])
def test_dead_weight_share_of_one_conv(kernel, padding, stride, size, dead):
    conv = nn.Conv2d(4, 4, kernel, stride, padding)
    assert sparse.dead_weight_share(conv, (size, size)) == pytest.approx(dead)


def test_dead_weight_share_matches_zero_gradients():
    """Independent check: the weights a gradient never reaches are exactly the dead taps."""
    torch.manual_seed(0)
    model = models.build("resnet18", 10, in_channels=1, small_input=False)
    x = torch.randn(4, 1, 16, 16)
    model(x).square().sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = {r["layer"]: r for r in sparse.describe(model, 2, 4, input_size=(1, 1, 16, 16))}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and rows[name]["sparse"]:
            # a kernel tap is alive iff some weight at that tap gets a non-zero gradient
            alive = (m.weight.grad != 0).flatten(0, 1).any(0).float().mean().item()
            assert 1 - alive == pytest.approx(rows[name]["dead_weight_share"], abs=1e-6), name
    assert sparse.weighted_dead_share(list(rows.values())) == pytest.approx(0.8135, abs=1e-3)


@pytest.mark.parametrize("study", CPU_STUDIES)
def test_every_row_of_the_cpu_studies_exercises_its_sparse_weights(study):
    """<= 5 % of the sparse weights of every row may be dead at the row's input size."""
    seen = set()
    for run in studies.expand(study):
        p = run.params
        key = (p["arch"], p.get("N"), p.get("M"), p.get("small_input"), p.get("width_mult", 1.0),
               p.get("image_size"))
        if key in seen:
            continue
        seen.add(key)
        spec = data.DATASETS[p["set"]]
        small = spec.small_input if p.get("small_input") is None else p["small_input"]
        model = models.build(p["arch"], spec.num_classes, spec.in_channels, small_input=small,
                             width_mult=p.get("width_mult", 1.0))
        size = p.get("image_size") or spec.image_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = sparse.describe(model, p["N"], p["M"],
                                   input_size=(1, spec.in_channels, size, size))
        share = sparse.weighted_dead_share(rows)
        assert share is not None and share <= 0.05, (study, run.table_row, share)


@pytest.mark.parametrize("study", ["cpu", "claims", "claims-12ep"])
def test_rows_have_a_dense_baseline_and_claims_have_seeds(study):
    spec = studies.load_study(study)
    runs = studies.expand(spec)
    methods = {r.method for r in runs}
    assert "DenseConv2dBN" in methods
    if spec.claims:
        assert len(spec.seeds) >= 5
        ids = {r.table_row for r in runs}
        assert all(c["row_a"] in ids and c["row_b"] in ids for c in spec.claims)


def test_claims_in_a_study_file_are_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\narch = "resnet18"\nN = 2\nM = 4\n[[rows]]\nid = "a"\n'
                   '[[claims]]\nclaim = "x"\nrow_a = "a"\nmethod_a = "m"\nrow_b = "zz"\n'
                   'method_b = "m"\n')
    with pytest.raises(studies.StudyError, match="row_b 'zz' is not a row id"):
        studies.load_study(bad)


def test_recalibrate_batchnorm_averages_batch_statistics_and_leaves_masks_alone():
    from maxq.distributed import Runtime
    from maxq.train import recalibrate_batchnorm

    torch.manual_seed(0)
    model = models.build("mobilenet_v3_small", 10, in_channels=1, small_input=True)
    sparse.sparsify(model, "SoftMaxQConv2DBN", 2, 4)
    model.train()
    masks = {k: v.clone() for k, v in sparse.current_masks(model).items()}
    forwards = next(iter(sparse.sparse_layers(model).values())).maxq.forwards
    batches = [(torch.randn(8, 1, 16, 16) * (i + 1), torch.zeros(8, dtype=torch.long))
               for i in range(4)]
    used = recalibrate_batchnorm(model, batches, 3, rt=Runtime())
    assert used == 3
    stem, bn = model.features[0][0], model.features[0][1]
    with torch.no_grad():
        expected = torch.stack([stem(x).mean((0, 2, 3)) for x, _ in batches[:3]]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.momentum == 0.01 and model.training and bn.training       # restored
    assert all(torch.equal(masks[k], v) for k, v in sparse.current_masks(model).items())
    assert next(iter(sparse.sparse_layers(model).values())).maxq.forwards == forwards


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2",
                                  "mobilenet_v3_small"])
def test_width_multiplier_keeps_names_and_shrinks_channels(arch):
    stock = models.build(arch, 10, in_channels=1, small_input=True)
    narrow = models.build(arch, 10, in_channels=1, small_input=True, width_mult=0.25)
    assert list(stock.state_dict()) == list(narrow.state_dict())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < 0.3 * count(stock)
    assert narrow(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    if arch.startswith("resnet"):
        assert narrow.layer1[0].conv1.in_channels == 16       # 64 x 0.25, a multiple of 16
