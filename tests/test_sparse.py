"""Sparse layers on stock models: policy, gradients, decay, fold, check_nm, state_dict."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from maxq import masks, models, sparse
from maxq.methods import METHODS

torch.manual_seed(0)


def small_model(arch="resnet18", method="SoftMaxQConv2DBN", N=2, M=4, in_channels=1):
    model = models.build(arch, num_classes=10, in_channels=in_channels, small_input=True)
    return sparse.sparsify(model, method, N, M)


def layer(model, name="layer1.0.conv1"):
    return dict(model.named_modules())[name]


@pytest.mark.parametrize("arch", sorted(models.ARCHS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_arch_sparsifies_and_trains_one_step(arch, in_channels):
    model = small_model(arch, in_channels=in_channels)
    assert sparse.sparse_layers(model), "no layer was made sparse"
    x = torch.randn(2, in_channels, 32, 32)
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    for name, module in sparse.sparse_layers(model).items():
        assert module.weight.grad is not None, name
        assert torch.isfinite(module.weight.grad).all(), name
    sparse.check_nm(model)


def test_imagenet_size_models_keep_the_stock_stem():
    stock = models.build("resnet50")
    assert stock.conv1.kernel_size == (7, 7) and stock.conv1.stride == (2, 2)
    small = models.build("resnet50", in_channels=1, small_input=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.in_channels == 1
    assert isinstance(small.maxpool, nn.Identity)


def test_state_dict_keys_stay_torchvision_keys_plus_masks():
    import torchvision

    stock_keys = set(torchvision.models.resnet18(num_classes=10).state_dict())
    model = sparse.sparsify(models.build("resnet18", num_classes=10), "SoftMaxQConv2DBN", 2, 4)
    keys = set(model.state_dict())
    mask_keys = {k for k in keys if k.endswith(".weight_mask")}
    assert keys - mask_keys == stock_keys
    assert {k[: -len("_mask")] for k in mask_keys} == {f"{n}.weight" for n in sparse.sparse_layers(model)}


def test_layer_policy_follows_method_spec():
    rows = {r["layer"]: r for r in sparse.describe(small_model("resnet18"))}
    assert not rows["conv1"]["sparse"] and "stem" in rows["conv1"]["reason"]
    assert not rows["fc"]["sparse"] and "linear" in rows["fc"]["reason"]
    assert rows["layer2.0.downsample.0"]["sparse"]          # 1x1 downsample convs are sparse
    assert rows["layer1.0.conv1"]["sparse"] and rows["layer1.0.conv1"]["valid_2to4"]

    mobile = {r["layer"]: r for r in sparse.describe(small_model("mobilenet_v2", M=16))}
    depthwise = [r for r in mobile.values() if "depthwise" in r["kind"]]
    assert depthwise and not any(r["sparse"] for r in depthwise)
    skipped = [r for r in mobile.values() if r["reason"].startswith("skipped")]
    assert skipped, "mobilenet_v2 has 24-channel layers that 16 does not divide"
    assert all("not divisible by M=16" in r["reason"] for r in skipped)
    assert "skipped" in sparse.format_table(list(mobile.values()))


def test_skipped_layers_are_reported_as_a_warning():
    model = models.build("mobilenet_v2", num_classes=10, small_input=True)
    with pytest.warns(UserWarning, match="not divide"):
        sparse.sparsify(model, "SoftMaxQConv2DBN", 1, 16)


def test_soft_ste_reaches_pruned_weights_and_hard_does_not():
    for method, reaches_pruned in [("SoftMaxQConv2DBN", True), ("HardMaxQConv2DBN", False),
                                   ("SoftSRSTEConv2dBN", True), ("HardSRSTEConv2dBN", False)]:
        torch.manual_seed(0)
        model = small_model(method=method)
        model(torch.randn(4, 1, 32, 32)).logsumexp(1).sum().backward()
        conv = layer(model)
        pruned = conv.weight_mask == 0
        assert pruned.any()
        grad_on_pruned = conv.weight.grad[pruned].abs().sum().item()
        assert (grad_on_pruned > 0) == reaches_pruned, method
        kept = ~pruned
        assert conv.weight.grad[kept].abs().sum() > 0


def test_hard_gradient_is_scaled_by_the_soft_mask():
    torch.manual_seed(0)
    conv = sparse.sparsify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)),
                           "HardMaxQConv2DBN", 2, 4)[1]
    x = torch.randn(2, 8, 6, 6)
    conv(x).sum().backward()
    grad_hard = conv.weight.grad.clone()
    reference = nn.Conv2d(8, 8, 3)
    reference.weight.data.copy_(conv.weight.data * conv.weight_mask)
    reference.bias.data.copy_(conv.bias.data)
    reference(x).sum().backward()
    torch.testing.assert_close(grad_hard, reference.weight.grad * conv.weight_mask)


@pytest.mark.parametrize("method", ["SoftSRSTEConv2dBN", "SoftMaxQConv2DBN", "MaxQHardAxis",
                                    "ASPFixedMask"])
def test_srste_decay_touches_pruned_weights_only(method):
    torch.manual_seed(0)
    model = small_model(method=method)
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    conv = layer(model)
    before = conv.weight.grad.clone()
    sparse.srste_decay_(model, 0.5)
    delta = conv.weight.grad - before
    pruned = conv.weight_mask == 0
    torch.testing.assert_close(delta[pruned], 0.5 * conv.weight[pruned].detach())
    assert torch.equal(delta[~pruned], torch.zeros_like(delta[~pruned]))
    # bit for bit the formula of method.md §6: g + lam * (1 - clip(S, 0, 1)) * W
    formula = before + 0.5 * ((1.0 - conv.weight_mask.clamp(0, 1)) * conv.weight.detach())
    assert torch.equal(conv.weight.grad, formula)


def test_training_forward_recomputes_mask_and_eval_uses_the_stored_one():
    model = small_model()
    conv = layer(model)
    model.eval()
    stored = conv.weight_mask.clone()
    with torch.no_grad():
        conv.weight.mul_(-1).add_(torch.randn_like(conv.weight))
    model(torch.randn(2, 1, 32, 32))
    assert torch.equal(conv.weight_mask, stored)
    model.train()
    model(torch.randn(2, 1, 32, 32))
    assert not torch.equal(conv.weight_mask, stored)
    assert torch.equal(conv.weight_mask, masks.maxq_mask(conv.weight.detach(), 2, 4))


def _masks_now(model):
    return {n: masks.maxq_mask(m.weight.detach(), m.maxq.N, m.maxq.M)
            for n, m in sparse.sparse_layers(model).items()}


def _perturb_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in sparse.sparse_layers(model).values():
            m.weight.add_(0.05 * torch.randn(m.weight.shape, generator=g))


def test_parallel_refresh_equals_one_layer_after_another():
    a, b = small_model("resnet50"), small_model("resnet50")
    b.load_state_dict(a.state_dict())
    _perturb_(a, 1)
    _perturb_(b, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)             # one after another, each op on 2 threads ...
    try:
        assert sparse.refresh_masks(a, workers=1) == 52
    finally:
        torch.set_num_threads(threads)
    assert sparse.refresh_masks(b, workers=2) == 52   # ... vs side by side, 1 thread each
    assert torch.get_num_threads() == threads         # the caller's setting is untouched
    for (name, ma), mb in zip(sparse.current_masks(a).items(), sparse.current_masks(b).values()):
        assert torch.equal(ma, mb), name
    for name, expected in _masks_now(a).items():
        assert torch.equal(sparse.current_masks(a)[name], expected), name


def test_model_forward_refreshes_masks_up_front_and_a_lone_layer_itself():
    model = small_model().train()
    conv = layer(model)
    calls = []
    compute = conv.maxq.compute_mask
    conv.maxq.compute_mask = lambda w: calls.append(1) or compute(w)
    _perturb_(model, 2)
    model(torch.randn(2, 1, 32, 32))
    assert len(calls) == 1                     # by the pre-hook; the layer used that mask
    assert all(torch.equal(sparse.current_masks(model)[n], m) for n, m in _masks_now(model).items())
    _perturb_(model, 3)
    conv(torch.randn(2, 64, 8, 8))             # called alone: recomputes for its new weight
    assert len(calls) == 2
    assert torch.equal(conv.weight_mask, masks.maxq_mask(conv.weight.detach(), 2, 4))


def test_mask_interval_refreshes_every_kth_forward():
    model = small_model().train()
    sparse.set_mask_interval(model, 3)
    conv = layer(model)
    seen = []
    for step in range(7):
        _perturb_(model, 10 + step)
        before = conv.weight_mask.clone()
        model(torch.randn(2, 1, 32, 32))
        changed = not torch.equal(conv.weight_mask, before)
        seen.append(changed)
        if changed:
            assert torch.equal(conv.weight_mask, masks.maxq_mask(conv.weight.detach(), 2, 4))
    assert seen == [True, False, False, True, False, False, True]
    sparse.set_mask_interval(model, 2, forwards=1)          # resumed after an odd step count
    before = conv.weight_mask.clone()
    model(torch.randn(2, 1, 32, 32))
    assert torch.equal(conv.weight_mask, before)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="mask interval"):
            sparse.set_mask_interval(model, bad)


def test_dense_fraction_reaches_the_layers():
    model = small_model()
    sparse.set_dense_fraction(model, 1.0)
    model.train()
    model(torch.randn(2, 1, 32, 32))
    assert sparse.nm_share(model) == 0.0
    sparse.set_dense_fraction(model, 0.5)
    model(torch.randn(2, 1, 32, 32))
    assert sparse.nm_share(model, sparse.mask_stats(model)[0]) == sparse.nm_share(model)
    sparse.set_dense_fraction(model, 0.0)
    model(torch.randn(2, 1, 32, 32))
    assert sparse.nm_share(model) == 1.0
    with pytest.raises(ValueError, match="dense_fraction"):
        sparse.set_dense_fraction(model, 1.5)


def test_asp_fixed_mask_never_changes():
    model = small_model(method="ASPFixedMask")
    conv = layer(model)
    expected = masks.nm_mask(conv.weight.detach(), 2, 4)
    assert torch.equal(conv.weight_mask, expected)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight))
    model.train()
    model(torch.randn(2, 1, 32, 32))
    assert torch.equal(conv.weight_mask, expected)


def test_dense_method_changes_nothing():
    model = small_model(method="DenseConv2dBN")
    assert not sparse.sparse_layers(model)
    assert not any(r["sparse"] for r in sparse.describe(model))


def test_folded_model_matches_eval_output_and_is_plain():
    torch.manual_seed(1)
    model = small_model("resnet18", "SoftMaxQConv2DBN", 2, 4)
    model.train()
    model(torch.randn(8, 1, 32, 32))                      # update masks and BN statistics
    model.eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        folded = sparse.fold(model)
        got = folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert type(dict(folded.named_modules())["layer1.0.conv1"]) is nn.Conv2d
    assert not folded._forward_pre_hooks                  # the mask refresh hook is gone
    assert not any(k.endswith("weight_mask") for k in folded.state_dict())
    rows = sparse.check_nm(folded)
    assert all(r["ok"] and r["valid_2to4"] for r in rows)
    # the folded zero set equals the hard mask's
    conv = layer(model)
    assert torch.equal(layer(folded).weight != 0, (conv.weight_mask != 0) & (conv.weight != 0))


def test_state_dict_round_trip_restores_masks():
    torch.manual_seed(2)
    model = small_model()
    model.train()
    model(torch.randn(2, 1, 32, 32))
    state = model.state_dict()
    fresh = small_model()
    fresh.load_state_dict(state)
    for name, module in sparse.sparse_layers(fresh).items():
        assert torch.equal(module.weight_mask, state[f"{name}.weight_mask"])


@pytest.mark.parametrize("N,M,valid", [(2, 4, True), (1, 4, True), (2, 8, True), (1, 16, True),
                                       (4, 8, False)])
def test_check_nm_reports_2to4_validity(N, M, valid):
    model = small_model(N=N, M=M)
    rows = sparse.check_nm(model)
    assert all(r["ok"] for r in rows)
    assert all(r["valid_2to4"] == valid for r in rows)


def test_check_nm_refuses_a_dense_model():
    model = models.build("resnet18", num_classes=10)
    with pytest.raises(ValueError, match="not 2:4 sparse: layer1.0.conv1"):
        sparse.check_nm(model, 2, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="NoSuchConv"), "conv-bn-type"),
    (dict(N=0), "N must be"),
    (dict(N=5, M=4), "N must be"),
    (dict(N=1, M=7), "divides the input channels of no"),
    (dict(M=0), "M must be"),
])
def test_bad_input_is_one_clear_value_error(kwargs, match):
    args = dict(method="SoftMaxQConv2DBN", N=2, M=4) | kwargs
    with pytest.raises(ValueError, match=match):
        sparse.sparsify(models.build("resnet18", num_classes=10), **args)


def test_unknown_arch_is_a_value_error():
    with pytest.raises(ValueError, match="arch must be one of"):
        models.build("vgg16")


def test_registry_covers_the_seed_names_and_ablations():
    for name in ["DenseConv2dBN", "SoftSRSTEConv2dBN", "HardSRSTEConv2dBN", "SoftMaxQConv2DBN",
                 "HardMaxQConv2DBN", "MaxQHardAxis", "MaxQNoIncremental", "MaxQInverseSelection",
                 "MaxQRandomSelection", "MaxQProgressiveN", "ASPFixedMask"]:
        assert name in METHODS


def test_stacked_refresh_one_op_call_per_shape_and_masks_as_per_layer(monkeypatch):
    """Without the C kernel (CUDA's path), the model refresh stacks the layers of one weight shape
    into one call of the registered op: ResNet-50's 52 sparse convs take one call per distinct
    shape, and every mask equals that layer's own maxq_mask; SR-STE's hard masks likewise."""
    from maxq import mask_op

    monkeypatch.setenv("MAXQ_NATIVE", "0")
    calls = []
    op = mask_op.maxq_mask
    monkeypatch.setattr(mask_op, "maxq_mask", lambda w, *a: calls.append(w.shape[0]) or op(w, *a))
    for method, expected in (("SoftMaxQConv2DBN", masks.maxq_mask), ("SoftSRSTEConv2dBN",
                                                                       masks.nm_mask)):
        model = small_model("resnet50", method)
        _perturb_(model, 4)
        calls.clear()
        assert sparse.refresh_masks(model) == 52
        layers = sparse.sparse_layers(model)
        assert len(calls) == len({tuple(m.weight.shape) for m in layers.values()}) < 52
        assert sum(calls) == 52
        for name, m in layers.items():
            assert torch.equal(m.weight_mask, expected(m.weight.detach(), 2, 4)), name
