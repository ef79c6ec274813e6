"""maxq.export: torchvision / ONNX export, refusals, 2:4 kernels on CPU, INT8 (the cost counts:
test_cost.py)."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch

from maxq import data, export as ex, int8, kernels24, models, records, sparse

ARCH = "resnet18"


# ----------------------------------------------------------------------------- run fixtures
_MODELS: dict[Path, torch.nn.Module] = {}  # run directory -> the model written into it


def _write_run(root: Path, *, method: str = "SoftMaxQConv2DBN", N: int = 2, M: int = 4,
               arch: str = ARCH, mask: str = "soft", seed: int = 0, last: bool = True) -> Path:
    """A run directory in maxq.train's format (config.json, best.pth and, with ``last``,
    checkpoint.pth) holding a model with non-trivial BN statistics and, for sparse methods, a
    MaxQ-like soft mask S = B ⊙ (1 + U[0, 2)) (``mask="soft"``) or an all-ones mask that is not
    N:M (``"dense"``)."""
    from maxq.methods import get as get_method
    from maxq.config import TrainConfig

    cfg = TrainConfig(set="FashionMNIST", arch=arch, conv_bn_type=method, N=N, M=M, epochs=1,
                      increase_end=0, image_size=16, save_dir=str(root), device="cpu").resolved()
    spec = data.DATASETS["FashionMNIST"]
    torch.manual_seed(seed)
    model = models.build(arch, spec.num_classes, spec.in_channels, cfg.small_input)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    if get_method(method).sparse:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sparse.sparsify(model, "SoftSRSTEConv2dBN", N, M)
        for layer in sparse.sparse_layers(model).values():
            hard = layer.weight_mask
            boost = 1 + 2 * torch.rand(hard.shape, generator=g)
            layer.weight_mask = hard * boost if mask == "soft" else torch.ones_like(hard)
    state = model.state_dict()
    records.write_json(root / records.CONFIG, {
        "args": cfg.to_dict(), "method": dataclasses.asdict(get_method(method)),
        "data": {"set": "FashionMNIST", "num_classes": 10, "in_channels": 1, "image_size": 16}})
    records.save_torch(root / records.BEST, {"state_dict": state, "epoch": 0, "arch": arch})
    if last:
        records.save_torch(root / records.CHECKPOINT, {"state_dict": state, "epoch": 0})
    _MODELS[root] = model.eval()
    return root


@pytest.fixture(scope="module")
def soft_run(tmp_path_factory):
    """Synthetic MaxQ-like run at 1:8 (soft mask values in [1, 3): folding is not trivial)."""
    return _write_run(tmp_path_factory.mktemp("soft") / "run", N=1, M=8)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real (tiny) run of maxq.train: Fashion-MNIST, 128 training images, one epoch, 2:4."""
    from maxq.config import TrainConfig
    from maxq.train import train

    try:
        data.find_fashion_mnist(None, download=False)
    except data.DataError as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    root = tmp_path_factory.mktemp("trained") / "run"
    cfg = TrainConfig(set="FashionMNIST", arch=ARCH, conv_bn_type="SoftSRSTEConv2dBN", N=2, M=4,
                      epochs=1, increase_end=0, train_subset=128, val_subset=64, batch_size=64,
                      image_size=16, lr=0.05, save_dir=str(root), device="cpu",
                      snapshot_epochs=None, print_freq=1000, progress=False)
    return train(cfg)


@pytest.fixture(scope="module")
def trained_export(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tv") / "model_torchvision.pth"
    return ex.export(trained_run, "torchvision", out, log=_quiet)


def _quiet(*_args, **_kwargs):
    pass


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _stock_from(path: Path, **build) -> torch.nn.Module:
    stock = models.build(ARCH, 10, **build)
    stock.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return stock


# ----------------------------------------------------------------------------- torchvision
def test_torchvision_round_trip_of_a_trained_run(trained_export):
    result = trained_export
    assert result.out.is_file() and result.out.with_suffix(".json").is_file()
    assert result.fold_max_abs_diff <= 1e-5
    assert sum(r["sparse"] for r in result.layers) == 19
    assert all(r["nm_ok"] and r["valid_2to4"] for r in result.layers if r["sparse"])
    state = torch.load(result.out, weights_only=True)
    assert not any(k.endswith("weight_mask") for k in state)
    # the stock torchvision resnet18 with the kit's 1-channel small-input stem, strict=True
    stock = _stock_from(result.out, in_channels=1, small_input=True)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(stock, x), _logits(result.loaded.model, x),
                               rtol=1e-5, atol=1e-5)
    # the exported zeros are an N:M pattern, checked independently of the exporter
    rows = sparse.check_nm(stock, 2, 4)
    assert len(rows) == 19 and all(r["ok"] and r["valid_2to4"] for r in rows)
    meta = json.loads(result.out.with_suffix(".json").read_text())
    assert (meta["arch"], meta["N"], meta["M"], meta["method"]) == (ARCH, 2, 4, "SoftSRSTEConv2dBN")


def test_cli_export_soft_mask_run_to_default_place(soft_run, capsys):
    """MaxQ soft mask (values 1..3) at 1:8 through ``maxq export``; default output path."""
    from maxq.cli import main

    assert main(["export", str(soft_run), "--format", "torchvision"]) == 0
    printed = capsys.readouterr().out
    assert "19 sparse layers, all 1:8; 19 of them also valid 2:4" in printed
    out = soft_run / "export" / "model_torchvision.pth"
    stock = _stock_from(out, in_channels=1, small_input=True)
    written = _MODELS[soft_run]
    assert float(written.layer1[0].conv1.weight_mask.max()) > 2  # really a soft mask
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(_logits(stock, x), _logits(written, x), rtol=1e-5, atol=1e-5)


def test_imagenet_shaped_export_loads_into_plain_torchvision(tmp_path):
    """Stock stem (3 channels, 7x7): the export loads into torchvision.models.resnet18 itself."""
    import torchvision

    torch.manual_seed(0)
    model = models.build(ARCH, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse.sparsify(model, "SoftSRSTEConv2dBN", 1, 4)
    ckpt = tmp_path / "bare.pth"
    torch.save(model.state_dict(), ckpt)  # a bare state_dict, no config.json beside it
    out = tmp_path / "out.pth"
    ex.export(ckpt, "torchvision", out, arch=ARCH, N=1, M=4, log=_quiet)
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(plain, x), _logits(model, x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- ONNX
def test_onnx_matches_pytorch_at_batch_1_and_8(trained_export, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    result = ex.export(trained_export.loaded.checkpoint, "onnx", out, log=_quiet)
    assert out.is_file()
    per_batch = result.extra["onnx_max_abs_diff_per_batch"]
    assert set(per_batch) == {"1", "8"}
    assert result.extra["onnx_max_abs_diff"] <= 1e-4
    assert result.extra["nm_conv_weights"] == result.extra["conv_weights"] == 19

    # independent check: onnxruntime vs the soft-mask PyTorch model
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(batch))
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        torch.testing.assert_close(got, _logits(trained_export.loaded.model, x),
                                   rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- refusals
def _no_export_written(run: Path, out: Path | None = None) -> bool:
    return not (run / "export").exists() and (out is None or not out.exists())


def test_dense_run_is_refused(tmp_path):
    run = _write_run(tmp_path / "dense", method="DenseConv2dBN")
    with pytest.raises(ex.ExportError, match="dense run"):
        ex.export(run, "torchvision", log=_quiet)
    assert _no_export_written(run)


def test_checkpoint_whose_weights_are_not_nm_is_refused(tmp_path):
    run = _write_run(tmp_path / "notnm", mask="dense", last=False)  # masks all ones: not 2:4
    with pytest.raises(ex.NotNMError, match="not 2:4 sparse: layer1.0.conv1"):
        ex.export(run, "onnx", log=_quiet)
    assert _no_export_written(run)


def test_dense_checkpoint_given_as_sparse_is_refused(tmp_path):
    ckpt = tmp_path / "dense.pth"
    torch.save(models.build(ARCH, 10).state_dict(), ckpt)
    out = tmp_path / "out.pth"
    with pytest.raises(ex.ExportError, match="no N:M masks"):
        ex.export(ckpt, "torchvision", out, arch=ARCH, N=2, M=4, log=_quiet)
    assert not out.exists() and not (tmp_path / "export").exists()


def test_corrupt_checkpoint_is_refused(tmp_path, soft_run):
    run = tmp_path / "corrupt"
    run.mkdir()
    (run / records.CONFIG).write_bytes((soft_run / records.CONFIG).read_bytes())
    good = (soft_run / records.BEST).read_bytes()
    (run / records.BEST).write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ex.ExportError, match="cannot read checkpoint"):
        ex.export(run, "torchvision", log=_quiet)
    (run / records.BEST).write_bytes(b"not a checkpoint at all")
    with pytest.raises(ex.ExportError, match="cannot read checkpoint"):
        ex.export(run / records.BEST, "onnx", log=_quiet)
    assert _no_export_written(run)


def test_wrong_arch_is_refused(tmp_path, soft_run):
    with pytest.raises(ex.ExportError, match="arch mismatch.*'resnet18', not 'resnet34'"):
        ex.export(soft_run, "torchvision", tmp_path / "x.pth", arch="resnet34", log=_quiet)
    # without config.json the weights themselves do not fit
    ckpt = tmp_path / "bare.pth"
    torch.save(torch.load(soft_run / records.BEST, weights_only=True)["state_dict"], ckpt)
    with pytest.raises(ex.ExportError, match="does not fit arch 'resnet34'.*missing keys"):
        ex.export(ckpt, "torchvision", tmp_path / "y.pth", arch="resnet34", N=1, M=8, log=_quiet)
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "y.pth").exists()
    assert not (tmp_path / "export").exists()


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    from maxq.cli import main

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    assert main(["export", str(bad), "--format", "torchvision", "--arch", ARCH, "--nm", "2:4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read checkpoint") and "\n" not in err
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


# ----------------------------------------------------------------------------- 2:4 kernels
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_sparse24_on_cpu_explains_and_exits_0(soft_run, capsys):
    import importlib.util

    from maxq.cli import main

    assert main(["export", str(soft_run), "--format", "sparse24"]) == 0
    assert kernels24.SPARSE24_CPU_MESSAGE in capsys.readouterr().out
    assert not (soft_run / "export" / "sparse24.json").exists()
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "sparse_kernels.py"
    spec = importlib.util.spec_from_file_location("sparse_kernels_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([]) == 0
    assert kernels24.SPARSE24_CPU_MESSAGE in capsys.readouterr().out


@pytest.mark.skipif(not kernels24.sparse24_support()[0], reason="needs an NVIDIA GPU with CC >= 8.0")
def test_sparse24_kernels_match_dense_on_gpu(trained_export):
    stock = _stock_from(trained_export.out, in_channels=1, small_input=True)
    report = kernels24.sparse24_check(stock, trained_export.loaded, batch_sizes=(8,),
                               dtypes=(torch.float16,), log=_quiet)
    assert report["rows"][0]["converted_layers"] >= 3  # the 1x1 downsample convs
    assert report["rows"][0]["max_rel_diff"] < 2e-2


# ----------------------------------------------------------------------------- INT8
def test_int8_keeps_top1_and_nm(trained_export):
    stock = _stock_from(trained_export.out, in_channels=1, small_input=True)
    loaders = data.build_loaders("FashionMNIST", None, batch_size=32, image_size=16,
                                 train_subset=32, val_subset=64, drop_last=False)
    report = int8.evaluate_int8(stock, loaders.train, loaders.val, N=2, M=4,
                              num_calibration_batches=1)
    assert report["eval_images"] == 64
    assert abs(report["drop"]) <= 10.0
    assert report["agreement"] >= 0.75
    assert report["int8_nm"]["nm_ok"] and report["int8_nm"]["checked_layers"] == 19
