"""The training loop on Fashion-MNIST subsets: records, determinism, schedule, evaluate, config.

Runs are seconds-scale: mobilenet_v3_small, 128 training / 64 validation images, batches of 32,
one thread (a busy machine makes several threads much slower, never faster).
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from maxq import records
from maxq.config import TrainConfig, snapshot_epochs
from maxq.train import build_optimizer, evaluate, train

TIMING = ("seconds", "images_per_s", "step_seconds")
BASE = dict(set="FashionMNIST", arch="mobilenet_v3_small", train_subset=128, val_subset=64,
            batch_size=32, epochs=3, increase_start=0, increase_end=2, lr=0.05, workers=0,
            snapshot_epochs=None, progress=False, print_freq=2, study="tests", row="short")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    return train(TrainConfig(**BASE, save_dir=str(tmp_path_factory.mktemp("run") / "a")))


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_short_run_writes_every_record(short_run):
    run = records.read_run(short_run)
    config = run["config"]
    assert set(config["args"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert config["args"]["label_smoothing"] == 0.0 and config["args"]["device"] == "cpu"
    assert config["args"]["study"] == "tests" and config["args"]["row"] == "short"
    for key in ("versions", "git", "device", "layers", "method", "data"):
        assert key in config, key
    assert config["versions"]["torch"] == torch.__version__
    assert {"layer", "sparse", "reason", "N", "M", "params"} <= set(config["layers"][0])

    assert [r["epoch"] for r in run["metrics"]] == [0, 1, 2]          # epochs count from 0
    for row in run["metrics"]:
        assert set(row) == set(records.METRIC_KEYS)
        assert row["images_per_s"] > 0 and 0 <= row["val_top1"] <= row["val_top5"] <= 100
    lrs = [r["lr"] for r in run["metrics"]]
    assert lrs[0] == pytest.approx(0.05) and lrs[0] > lrs[1] > lrs[2]   # cosine per epoch

    n_sparse = sum(r["sparse"] for r in config["layers"])
    assert len(run["layers"]) == 3 * n_sparse
    for row in run["layers"]:
        assert set(row) == set(records.LAYER_KEYS)
        assert len(row["hist_counts"]) == len(records.HIST_EDGES) - 1
        assert (row["flipped"] is None) == (row["epoch"] == 0)
        assert row["flipped"] is None or 0 <= row["flipped"] <= 1

    assert run["mask_epochs"] == [0, 2]                                 # first and last
    masks = records.load_mask_snapshot(short_run, 2)
    assert len(masks) == n_sparse

    result = run["result"]
    assert set(records.RESULT_KEYS) <= set(result)
    assert result["epochs"] == 3 and result["wall_seconds"] > 0
    assert result["last_top1"] == run["metrics"][-1]["val_top1"]
    best = max(run["metrics"], key=lambda r: r["val_top1"])
    assert result["best_top1"] == best["val_top1"]

    ckpt = torch.load(short_run / records.CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and {"state_dict", "optimizer", "scaler", "rng", "previous_hard",
                                   "best", "config"} <= set(ckpt)
    best_ckpt = torch.load(short_run / records.BEST, map_location="cpu", weights_only=True)
    assert best_ckpt["epoch"] == result["best_epoch"]
    assert any(k.endswith("weight_mask") for k in best_ckpt["state_dict"])

    log = (short_run / records.LOG).read_text()
    assert "Prec@1" in log and "Prec@5" in log and "Error@1" in log and "stem" in log


def test_incremental_schedule_sets_the_share_of_nm_blocks(short_run):
    # linear window [0, 2]: rho = 1, 0.5, 0 -> share of N:M blocks 0, ~0.5, 1
    run = records.read_run(short_run)
    shares = [r["nm_share"] for r in run["metrics"]]
    assert shares[0] == 0.0 and shares[2] == 1.0
    assert shares[1] == pytest.approx(0.5, abs=0.01)
    for row in run["layers"]:
        expected = {0: 0.0, 1: 0.5, 2: 1.0}[row["epoch"]]
        assert row["nm_share"] == pytest.approx(expected, abs=0.05), row["layer"]


def test_same_seed_same_run(short_run, tmp_path):
    again = train(TrainConfig(**BASE, save_dir=str(tmp_path / "b")))
    first, second = records.read_run(short_run), records.read_run(again)
    assert _without_timing(first["metrics"]) == _without_timing(second["metrics"])
    assert first["layers"] == second["layers"]
    for epoch in first["mask_epochs"]:
        a = records.load_mask_snapshot(short_run, epoch)
        b = records.load_mask_snapshot(again, epoch)
        assert all((a[k]["soft"] == b[k]["soft"]).all() for k in a)
    assert first["result"]["mask_checksums"] == second["result"]["mask_checksums"]


def test_evaluate_pretrained_reproduces_best_top1(short_run):
    result = records.read_json(short_run / records.RESULT)
    stats = evaluate(TrainConfig(**BASE, evaluate=True, pretrained=str(short_run / records.BEST)))
    assert stats["top1"] == pytest.approx(result["best_top1"], abs=1e-9)
    assert stats["top5"] == pytest.approx(result["best_top5"], abs=1e-9)
    assert stats["images"] == 64


def test_method_without_incremental_schedule_is_nm_from_the_start(tmp_path):
    cfg = dict(BASE, epochs=1, train_subset=32, conv_bn_type="SoftSRSTEConv2dBN",
               increase_end=90)  # the window is ignored for a method that is not incremental
    run = records.read_run(train(TrainConfig(**cfg, save_dir=str(tmp_path / "srste"))))
    assert run["metrics"][0]["nm_share"] == 1.0
    assert all(row["nm_share"] == 1.0 for row in run["layers"])


def test_channels_last_code_path_runs_on_cpu(tmp_path):
    cfg = dict(BASE, epochs=1, increase_end=1, train_subset=32, channels_last=True)
    run = records.read_run(train(TrainConfig(**cfg, save_dir=str(tmp_path / "cl"))))
    assert run["config"]["args"]["channels_last"] is True and run["result"]["epochs"] == 1


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path):
    """``--device cpu --amp bf16 --channels-last``: CPU autocast (conv/linear in bfloat16), no
    grad scaler; recorded in config.json; finite losses, not the float32 run's numbers."""
    cfg = dict(BASE, epochs=2, increase_end=1, train_subset=64, device="cpu")
    bf16 = records.read_run(train(TrainConfig(**cfg, amp="bf16", channels_last=True,
                                              save_dir=str(tmp_path / "bf16"))))
    fp32 = records.read_run(train(TrainConfig(**cfg, save_dir=str(tmp_path / "fp32"))))
    args = bf16["config"]["args"]
    assert (args["device"], args["amp"], args["channels_last"]) == ("cpu", "bf16", True)
    assert bf16["config"]["device"]["amp"] == "bfloat16"
    assert fp32["config"]["args"]["amp"] == "off" and fp32["config"]["device"]["amp"] == "off"
    assert bf16["result"]["epochs"] == 2 and len(bf16["metrics"]) == 2
    for a, b in zip(bf16["metrics"], fp32["metrics"]):
        assert all(map(math.isfinite, (a["train_loss"], a["val_loss"])))
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)  # the same training
    assert bf16["metrics"][0]["train_loss"] != fp32["metrics"][0]["train_loss"]  # in bfloat16
    ckpt = torch.load(tmp_path / "bf16" / records.CHECKPOINT, weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["state_dict"].values())  # fp32 weights


@pytest.mark.e2e
def test_learns_fashion_mnist_above_chance(tmp_path):
    # resnet18 on 8 px images, 512 training images, 3 epochs: ~50 steps. SR-STE rather than MaxQ
    # because MaxQ's mask (sorting every layer's weights on each forward) is ~4x slower on CPU.
    cfg = dict(BASE, arch="resnet18", small_input=False, image_size=8, train_subset=512,
               val_subset=256, batch_size=32, epochs=3, increase_end=1, lr=0.05,
               conv_bn_type="SoftSRSTEConv2dBN")
    run = records.read_run(train(TrainConfig(**cfg, save_dir=str(tmp_path / "learn"))))
    losses = [r["train_loss"] for r in run["metrics"]]
    assert losses[0] > losses[1] > losses[2]
    assert run["result"]["best_top1"] > 25.0           # chance is 10 %; this run reaches ~40 %
    assert run["metrics"][-1]["train_top1"] > 15.0


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("change, message", [
    (dict(N=5, M=4), "N must be <= M"),
    (dict(arch="resnet9"), "unknown --arch"),
    (dict(set="MNIST"), "unknown --set"),
    (dict(conv_bn_type="MaxQ"), "unknown --conv-bn-type"),
    (dict(increase_end=200), "--increase-end (200) must be <= --epochs"),
    (dict(increase_start=5, increase_end=3), "--increase-start (5) must be <="),
    (dict(prune_schedule="quadratic"), "unknown --prune-schedule"),
    (dict(decay_type="v9"), "unknown --decay-type"),
    (dict(lr=0.0), "--lr must be > 0"),
    (dict(momentum=0.0, nesterov=True), "--nesterov True needs --momentum > 0"),
    (dict(data="/nonexistent/maxq-data"), "data directory does not exist"),
    (dict(set="ImageNet"), "needs the DATA directory"),
    (dict(evaluate=True), "--evaluate needs --pretrained"),
    (dict(snapshot_epochs=[7]), "--snapshot-epochs [7] outside"),
    (dict(batch_size=0), "--batch-size must be an integer >= 1"),
])
def test_validate_gives_one_line_errors(change, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{**BASE, **change}).validate()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_defaults_follow_the_seed():
    d = TrainConfig()
    assert (d.set, d.arch, d.N, d.M, d.decay, d.decay_type, d.increase_start, d.increase_end,
            d.tau, d.prune_schedule, d.conv_bn_type) == (
        "ImageNet", "resnet18", 2, 4, 2e-4, "v1", 0, 90, 0.01, "linear", "SoftMaxQConv2DBN")
    assert (d.epochs, d.batch_size, d.lr, d.momentum, d.nesterov) == (120, 256, 0.1, 0.9, False)
    resolved = TrainConfig(data=".").resolved()
    assert resolved.label_smoothing == 0.1          # ImageNet sets
    assert d.no_bn_decay is None and resolved.no_bn_decay is True   # the authors' assert
    assert TrainConfig(set="FashionMNIST").resolved().label_smoothing == 0.0
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        TrainConfig(set="FashionMNIST", device="cpu", amp="fp16").resolved()
    assert TrainConfig(set="FashionMNIST", device="cpu", amp="bf16").resolved().amp == "bf16"


def test_config_round_trips_through_json():
    cfg = TrainConfig(**BASE).resolved()
    assert TrainConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_snapshot_epochs_always_include_first_and_last():
    assert snapshot_epochs(None, 5) == {0, 4}
    assert snapshot_epochs(2, 6) == {0, 1, 3, 5}
    assert snapshot_epochs([2], 6) == {0, 2, 5}


def test_no_bn_decay_and_nesterov_reach_the_optimizer():
    from maxq.models import build

    model = build("mobilenet_v3_small", 10, 1)
    opt = build_optimizer(TrainConfig(no_bn_decay=True, nesterov=True, weight_decay=5e-4), model)
    assert opt.defaults["nesterov"] is True
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in free["params"])
    (only,) = build_optimizer(TrainConfig(no_bn_decay=False), model).param_groups
    assert len(only["params"]) == len(list(model.parameters()))
