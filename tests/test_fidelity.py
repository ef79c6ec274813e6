"""What the kit does like the authors' code (JingyangXiang/MaxQ), each point tested against an
independent restatement: masks stored with checkpoints, ImageNet defaults, flag aliases, the
colour augmentation, MobileNetV1's initialisation, the V1 arm, the CIFAR ResNet-18.
Differences kept on purpose are listed in docs/method.md ("Differences from the authors' code").
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from maxq import data, masks, methods, models, records, schedules, sparse
from maxq.cli import build_parser, config_from_args
from maxq.config import TrainConfig
from maxq.train import build_optimizer, train


# ----------------------------------------------------------------------------- stored masks
@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """ResNet-18 MaxQ 2:4, two epochs with the window 0..1 (rho 1 then 0), small-input stem."""
    return train(TrainConfig(
        set="FashionMNIST", arch="resnet18", width_mult=0.25, small_input=True, image_size=16,
        train_subset=128, val_subset=64, batch_size=32, epochs=2, increase_start=0,
        increase_end=1, lr=0.2, workers=0, snapshot_epochs=None, progress=False,
        save_dir=str(tmp_path_factory.mktemp("fid") / "run")))


@pytest.mark.parametrize("name", [records.CHECKPOINT, records.BEST])
def test_stored_masks_are_the_masks_of_the_stored_weights(two_epoch_run, name):
    """The authors recompute every mask from the final weights after each epoch, before
    validating and saving: every stored ``weight_mask`` is maxq_mask of the stored weight at
    the epoch's dense fraction."""
    ckpt = torch.load(two_epoch_run / name, map_location="cpu", weights_only=True)
    args = records.read_json(two_epoch_run / records.CONFIG)["args"]
    rho = schedules.dense_fraction(ckpt["epoch"], args["increase_start"], args["increase_end"],
                                   args["prune_schedule"])
    state = ckpt["state_dict"]
    names = [k[:-len(".weight_mask")] for k in state if k.endswith(".weight_mask")]
    assert len(names) > 10
    for layer in names:
        expected = masks.maxq_mask(state[f"{layer}.weight"], args["N"], args["M"],
                                   dense_fraction=float(rho), tau=args["tau"])
        assert torch.equal(state[f"{layer}.weight_mask"], expected), (name, layer)


def test_evaluation_uses_the_refreshed_masks(two_epoch_run):
    """The last mask snapshot holds the checkpoint's masks (the same refreshed tensors; the
    snapshot stores S at reduced precision, the hard mask exactly)."""
    ckpt = torch.load(two_epoch_run / records.CHECKPOINT, map_location="cpu", weights_only=True)
    snapshot = records.load_mask_snapshot(two_epoch_run, ckpt["epoch"])
    for layer, mask in snapshot.items():
        stored = ckpt["state_dict"][f"{layer}.weight_mask"]
        assert torch.equal(torch.from_numpy(mask["hard"]), stored != 0), layer
        assert torch.allclose(torch.from_numpy(mask["soft"]), stored, rtol=1e-3), layer


# ----------------------------------------------------------------------------- flags, defaults
def _parse(*argv):
    parser = build_parser("train")
    return config_from_args(parser.parse_args(["train", *argv]))


def test_decay_start_and_end_are_aliases_of_the_increase_window():
    cfg = _parse("--set", "FashionMNIST", "--decay-start", "3", "--decay-end", "30")
    assert (cfg.increase_start, cfg.increase_end) == (3, 30)


@pytest.mark.parametrize("set_name, expected", [("ImageNet", True), ("ImageNetDali", True),
                                                ("FashionMNIST", False), ("CIFAR100", False)])
def test_no_bn_decay_defaults_to_true_for_imagenet_sets(set_name, expected):
    assert TrainConfig(set=set_name, data=".").resolved().no_bn_decay is expected
    # still overridable both ways
    assert TrainConfig(set=set_name, data=".", no_bn_decay=not expected).resolved() \
        .no_bn_decay is (not expected)


def test_resolved_no_bn_decay_reaches_the_optimizer():
    model = models.build("resnet18", 10)
    groups = build_optimizer(TrainConfig(set="ImageNet", data=".").resolved(), model).param_groups
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]


def test_decay_type_v2_trains_like_decay_0(tmp_path):
    """The authors' --decay-type v2 calls a method no layer defines: no decay. Accepted with a
    warning in the log; the run's weights equal a --decay 0 run's."""
    common = dict(set="FashionMNIST", arch="resnet18", width_mult=0.25, small_input=True,
                  image_size=16, train_subset=64, val_subset=32, batch_size=32, epochs=1,
                  increase_end=0, conv_bn_type="SoftSRSTEConv2dBN", workers=0,
                  snapshot_epochs=None, progress=False)
    v2 = train(TrainConfig(**common, decay_type="v2", save_dir=str(tmp_path / "v2")))
    zero = train(TrainConfig(**common, decay=0.0, save_dir=str(tmp_path / "zero")))
    plain = train(TrainConfig(**common, save_dir=str(tmp_path / "plain")))
    assert "equals --decay 0" in (v2 / records.LOG).read_text()
    load = lambda run: torch.load(run / records.CHECKPOINT, weights_only=True)["state_dict"]  # noqa: E731
    a, b, c = load(v2), load(zero), load(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)      # the decay does change a v1 run


# ----------------------------------------------------------------------------- augmentation
def test_authors_color_augmentation_is_pinned():
    """Their ColorAugmentation: ``(eig_val * alpha) @ eig_vec`` with the AlexNet numbers, i.e.
    the rows of the AlexNet matrix are its eigenvectors; principal one (0.4009, 0.7192, -0.5675)."""
    V = torch.tensor(data.AUTHORS_COLOR["eigvec"])          # columns: eigenvectors
    assert torch.allclose(V[:, 0], torch.tensor([0.4009, 0.7192, -0.5675]))
    assert torch.allclose(V[:, 1], torch.tensor([-0.8140, -0.0045, -0.5808]))
    assert torch.allclose(V[:, 2], torch.tensor([0.4203, -0.6948, -0.5836]))
    assert data.AUTHORS_COLOR["eigval"] == (0.2175, 0.0188, 0.0045)
    # the standard AlexNet lighting stays selectable, principal direction a brightness shift
    assert torch.allclose(torch.tensor(data.IMAGENET_PCA["eigvec"])[:, 0],
                          torch.tensor([-0.5675, -0.5808, -0.5836]))


def test_lighting_reproduces_the_authors_shift():
    """Same alpha draw -> the same colour shift as a restatement of their transform."""
    light = data.Lighting(eigval=data.AUTHORS_COLOR["eigval"],
                          eigvec=data.AUTHORS_COLOR["eigvec"])
    img = torch.rand(3, 5, 5)
    torch.manual_seed(3)
    ours = light(img)
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.1
    their_eig_vec = torch.tensor([[0.4009, 0.7192, -0.5675],      # as printed in their code
                                  [-0.8140, -0.0045, -0.5808],
                                  [0.4203, -0.6948, -0.5836]])
    their_eig_val = torch.tensor([[0.2175, 0.0188, 0.0045]])
    shift = torch.mm(their_eig_val * alpha, their_eig_vec)
    assert torch.allclose(ours, img + shift.view(3, 1, 1), atol=1e-7)


def test_imagenet_transforms_default_to_the_authors_lighting():
    steps = data.imagenet_transforms(32, train=True).transforms
    (light,) = [s for s in steps if isinstance(s, data.Lighting)]
    assert torch.equal(light.eigvec, torch.tensor(data.AUTHORS_COLOR["eigvec"]))
    assert not any(isinstance(s, data.Lighting)
                   for s in data.imagenet_transforms(32, train=True, lighting="none").transforms)
    with pytest.raises(data.DataError, match="unknown lighting"):
        data.imagenet_transforms(32, train=True, lighting="sepia")


# ----------------------------------------------------------------------------- MobileNetV1
def test_mobilenet_v1_uses_pytorch_default_initialisation():
    """The authors' MobileNetV1 leaves every layer at PyTorch's default init: kaiming-uniform
    (a=sqrt(5)) convs, i.e. |w| <= 1/sqrt(fan_in); Kaiming-normal fan_out would exceed it."""
    torch.manual_seed(0)
    model = models.build("mobilenet_v1", 1000)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            assert m.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7, name
        if isinstance(m, nn.Linear):
            assert m.bias.abs().max() > 0        # default bias init, not zeros


# ----------------------------------------------------------------------------- the V1 arm
def _v1_restated(w: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """The authors' MaxQ V1 mask restated with stable sorts (ties: lower index kept):
    N:M local mask * (1 + filter-axis top share + kernel-position top share), where the
    kernel-position rows span all Co*Ci weights at one (kh, kw) — also for 1x1 convs."""
    A = w.abs()
    Co, Ci, kh, kw = A.shape

    def keep_top(X: torch.Tensor, prune: int) -> torch.Tensor:
        order = torch.sort(-X, dim=1, stable=True).indices       # largest first, lower index first
        keep = torch.zeros_like(X)
        keep.scatter_(1, order[:, :X.shape[1] - prune], 1.0)
        return keep

    blocks = A.permute(0, 2, 3, 1).reshape(-1, M)
    local = keep_top(blocks, M - N).reshape(Co, kh, kw, Ci).permute(0, 3, 1, 2)
    L = Ci * kh * kw
    filt = keep_top(A.reshape(Co, L), (M - N) * L // M).reshape(A.shape)
    P = Co * Ci
    position = keep_top(A.reshape(P, kh * kw).T, (M - N) * P // M).T.reshape(A.shape)
    return local * (1 + filt + position)


@pytest.mark.parametrize("shape", [(32, 16, 3, 3), (24, 32, 1, 1), (16, 8, 3, 3)])
@pytest.mark.parametrize("N, M", [(2, 4), (1, 4), (2, 8)])
def test_maxq_v1_mask_matches_a_restatement_of_the_authors_v1(shape, N, M):
    torch.manual_seed(sum(shape) + N * M)
    w = torch.randn(shape)
    assert torch.equal(masks.maxq_v1_mask(w, N, M), _v1_restated(w, N, M))


def test_v1_on_a_1x1_conv_takes_values_0_to_3():
    torch.manual_seed(0)
    S = masks.maxq_v1_mask(torch.randn(64, 64, 1, 1), 2, 4)
    assert set(S.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    hard_axis = masks.maxq_mask(torch.randn(64, 64, 1, 1), 2, 4, axis="hard")
    assert set(hard_axis.unique().tolist()) == {0.0, 1.0, 2.0}   # the other arm: no kernel term


def test_maxq_v1_arm_trains_without_incremental_sparsity(tmp_path):
    spec = methods.get("MaxQV1")
    assert spec.mask == "maxq_v1" and not spec.incremental
    model = models.build("resnet18", 10, in_channels=1, small_input=True, width_mult=0.25)
    sparse.sparsify(model, "MaxQV1", 2, 4)
    sparse.set_dense_fraction(model, 1.0)             # ignored: V1 is not incremental
    model.train()
    model(torch.randn(4, 1, 16, 16)).sum().backward()
    for layer in sparse.sparse_layers(model).values():
        assert torch.equal(layer.weight_mask, masks.maxq_v1_mask(layer.weight.detach(), 2, 4))
    assert "V1" in methods.get("MaxQV1").description
    assert "not the authors' V1" in methods.get("MaxQHardAxis").description


# ----------------------------------------------------------------------------- CIFAR ResNet-18
def _c_resnet18_layers():
    """The authors' c_resnet18 (models/cifar_resnet.py), restated as (kind, in, out, k, stride,
    sparse) per conv/fc in forward order: 3x3 stride-1 stem (dense), BasicBlocks [2, 2, 2, 2]
    whose 3x3 convs and 1x1 shortcut convs are the builder's sparse conv-BN layers, and a 1x1
    conv classifier with bias after a 4x4 average pool (= a linear layer on 32 px inputs)."""
    rows = [("conv", 3, 64, 3, 1, False)]
    cin = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            rows += [("conv", cin, planes, 3, s, True), ("conv", planes, planes, 3, 1, True)]
            if s != 1 or cin != planes:
                rows.append(("conv", cin, planes, 1, s, True))
            cin = planes
    rows.append(("fc", 512, 100, 1, 1, False))
    return rows


def test_resnet18_small_input_is_the_authors_c_resnet18():
    model = models.build("resnet18", 100, small_input=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sparse.describe(model, 2, 4)
    ours = []
    modules = dict(model.named_modules())
    for row in table:
        m = modules[row["layer"]]
        if isinstance(m, nn.Linear):
            ours.append(("fc", m.in_features, m.out_features, 1, 1, row["sparse"]))
        else:
            ours.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0],
                         row["sparse"]))
    # torchvision runs a block's downsample after its two convs, like the authors' shortcut
    assert sorted(ours) == sorted(_c_resnet18_layers())
    assert len(ours) == len(_c_resnet18_layers()) == 21      # 1 stem + 16 + 3 shortcuts + fc
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


# ----------------------------------------------------------------------------- paper studies
def test_paper_scripts_study_is_the_authors_window():
    from maxq import studies

    readme, scripts = studies.expand("paper"), studies.expand("paper-scripts")
    assert len(readme) == len(scripts) == 12
    assert [r.table_row for r in readme] == [r.table_row for r in scripts]
    for run in scripts:
        assert (run.params["increase_start"], run.params["increase_end"]) == (0, 30)
        assert run.params["epochs"] == 120 and run.params["amp"] == "fp16"
        assert run.params["no_bn_decay"] is True
    r50_116 = [r for r in readme if r.table_row == "resnet50-1of16"][0]
    assert (r50_116.params["epochs"], r50_116.params["increase_end"]) == (200, 90)


def test_paper_cifar100_study_is_the_authors_grid():
    from maxq import studies

    runs = studies.expand("paper-cifar100")
    ratios = {(r.params["N"], r.params["M"]) for r in runs}
    assert ratios == {(1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (2, 16), (4, 8), (4, 16), (8, 16)}
    windows = {(r.params["increase_start"], r.params["increase_end"]) for r in runs
               if r.method == "SoftMaxQConv2DBN"}
    assert windows == {(0, 30), (0, 60), (0, 90), (30, 60), (30, 90), (60, 90)}
    assert {r.method for r in runs} == {"SoftMaxQConv2DBN", "SoftSRSTEConv2dBN"}
    assert len(runs) == 9 * (1 + 6) * 10
    p = runs[0].params
    assert (p["set"], p["arch"], p["small_input"], p["weight_decay"], p["nesterov"],
            p["no_bn_decay"], p["label_smoothing"]) == ("CIFAR100", "resnet18", True, 5e-4, True,
                                                         False, 0.0)
