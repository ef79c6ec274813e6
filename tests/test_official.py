"""The authors' released checkpoints and logs (maxq.official, maxq.official_logs).

Checkpoints are built here in the authors' format from the key fixtures
(../shared/reference/official_state_dicts/*.json: every key, shape and dtype their models save):
random tensors of the listed shapes, soft masks with the stored structure (exact N:M over blocks
of M consecutive input channels, kept entries 1 + filter term + position term in [1, 3], the
position term only on 3x3 convs). Their logits are compared with an eval forward written here
from the documented semantics (official_formats.md §3: W * stored mask, then the ``scale``
BatchNorm from running statistics), independent of the kit's model code.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from maxq import cli, explorer, official, official_logs, records, results
from maxq import export as ex
from maxq.config import TrainConfig
from maxq.train import build_model, read_weights

REFERENCE = Path(os.environ.get("MAXQ_SHARED", Path(__file__).resolve().parents[2] / "shared")
                 ) / "reference"
if not REFERENCE.is_dir():
    REFERENCE = Path("/work/shared/reference")
FIXTURES = REFERENCE / "official_state_dicts"
LOGS = REFERENCE / "official_logs"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="no official key fixtures")

#: (fixture, N, M) of every table row of the seed README whose model code the authors published,
#: plus ResNet-18 (in the fixtures, not in the table); the shapes do not depend on N:M
ROWS = [("resnet34-2of4", 1, 4), ("resnet34-2of4", 2, 4), ("resnet50-2of4", 1, 4),
        ("resnet50-1of16", 1, 16), ("resnet50-2of4", 2, 4), ("resnet50-2of4", 2, 8),
        ("mobilenet_v1-2of4", 1, 4), ("mobilenet_v1-2of4", 2, 4), ("resnet18-2of4", 2, 4)]
SIZE = 64          # input side: every stage still sees >= 2x2 maps, fast on a CPU


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# ----------------------------------------------------------------------------- authors' format
def soft_mask(weight: torch.Tensor, N: int, M: int, g: torch.Generator) -> torch.Tensor:
    """A mask with the stored structure: N of every M consecutive input channels kept (largest
    |w|), kept entries 1 + f + p with f, p in [0, 1] (some exactly 0 or 1), p only for 3x3."""
    co, ci, kh, kw = weight.shape
    blocks = weight.abs().permute(0, 2, 3, 1).reshape(-1, M)
    keep = torch.zeros_like(blocks)
    keep.scatter_(1, blocks.topk(N, dim=1).indices, 1.0)
    local = keep.reshape(co, kh, kw, ci).permute(0, 3, 1, 2)

    def term() -> torch.Tensor:
        t = torch.rand(weight.shape, generator=g)
        t[t < 0.3] = 0.0
        t[t > 0.9] = 1.0
        return t

    position = term() if kh == 3 else torch.zeros(weight.shape)
    return (local * (1.0 + term() + position)).contiguous()


def official_state(name: str, N: int, M: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """An authors'-layout state dict of the fixture ``name`` at N:M (every listed key)."""
    spec = fixture(name)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for entry in spec["state_dict"]:
        key, shape, dtype = entry["key"], entry["shape"], getattr(torch, entry["dtype"])
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=dtype)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("mask"):
            continue                                   # made from its weight below
        elif len(shape) == 1 and key.endswith("weight"):   # BN gamma: small, keeps values sane
            state[key] = 0.3 + 0.4 * torch.rand(shape, generator=g)
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    for key in spec["mask_keys"]:
        module = key[:-len(".mask")]
        state[key] = soft_mask(state[f"{module}.conv.weight"], N, M, g)
    ordered = {e["key"]: state[e["key"]] for e in spec["state_dict"]}
    assert len(ordered) == spec["n_entries"]
    return ordered


def save_checkpoint(path: Path, state: dict, arch: str, *, lr=None, extra: dict | None = None,
                    prefix: str = "", wrap: bool = True) -> Path:
    """``torch.save`` of the authors' top level (epoch, arch, state_dict, best_acc1, optimizer
    with SGD momentum buffers and float64 numpy learning rates)."""
    state = {prefix + k: v for k, v in state.items()}
    if wrap:
        params = [v for k, v in state.items() if v.is_floating_point()]
        optimizer = {"state": {i: {"momentum_buffer": torch.zeros(1)} for i in range(2)},
                     "param_groups": [
                         {"lr": np.float64(0.1) if lr is None else lr, "momentum": 0.9,
                          "weight_decay": 0, "params": [0]},
                         {"lr": np.float64(0.1) if lr is None else lr, "momentum": 0.9,
                          "weight_decay": 1e-4, "params": [1]}]}
        assert params
        obj = {"epoch": 120, "arch": arch, "state_dict": state, "best_acc1": 77.576,
               "optimizer": optimizer, **(extra or {})}
    else:
        obj = state
    torch.save(obj, path)
    return path


def rewrite_pickle(path: Path, replacements: list[tuple[bytes, bytes]]) -> None:
    """Rewrite ``data.pkl`` of a torch zip checkpoint (byte replacements, each must occur)."""
    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info.filename)) for info in zf.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                for old, new in replacements:
                    assert old in data, old
                    data = data.replace(old, new)
            zf.writestr(info, data)
    path.write_bytes(out.getvalue())


def as_numpy1_and_cuda(path: Path) -> Path:
    """The file as the authors' set-up wrote it: numpy 1's ``numpy.core`` scalar path and every
    storage tagged ``cuda:0`` (protocol-2 GLOBAL and BINUNICODE opcodes rewritten)."""
    rewrite_pickle(path, [(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n"),
                          (b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")])
    return path


# ----------------------------------------------------------------------------- reference forward
class Tracked(dict):
    """A state dict that records which keys were read."""

    def __init__(self, *a):
        super().__init__(*a)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def _bn(s, x, p):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"],
                        s[f"{p}.bias"], False, 0.0, 1e-5)


def _convbn(s, x, m, stride, groups=1):
    w = s[f"{m}.conv.weight"] * s[f"{m}.mask"]                 # the stored mask, as it is
    y = F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)
    return _bn(s, y, f"{m}.scale")


def reference_resnet(s, x):
    x = F.relu(_bn(s, F.conv2d(x, s["conv1.weight"], None, 2, 3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    bottleneck = "layer1.0.convbn3.mask" in s
    for stage in (1, 2, 3, 4):
        blocks = sorted({int(k.split(".")[1]) for k in s if k.startswith(f"layer{stage}.")})
        for b in blocks:
            m, stride = f"layer{stage}.{b}", (2 if stage > 1 and b == 0 else 1)
            if bottleneck:               # v1.5: the stride sits on the 3x3
                out = F.relu(_convbn(s, x, f"{m}.convbn1", 1))
                out = F.relu(_convbn(s, out, f"{m}.convbn2", stride))
                out = _convbn(s, out, f"{m}.convbn3", 1)
            else:
                out = F.relu(_convbn(s, x, f"{m}.convbn1", stride))
                out = _convbn(s, out, f"{m}.convbn2", 1)
            short = (_convbn(s, x, f"{m}.downsample", stride)
                     if dict.__contains__(s, f"{m}.downsample.mask") else x)
            x = F.relu(out + short)
    return F.linear(x.mean((2, 3)), s["fc.weight"], s["fc.bias"])


MOBILENET_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


def reference_mobilenet_v1(s, x):
    x = F.relu(_bn(s, F.conv2d(x, s["conv1.0.weight"], None, 2, 1), "conv1.1"))
    for i, stride in enumerate(MOBILENET_STRIDES):
        w = s[f"features.{i}.0.weight"]
        x = F.relu(_bn(s, F.conv2d(x, w, None, stride, 1, 1, w.shape[0]), f"features.{i}.1"))
        x = F.relu(_convbn(s, x, f"features.{i}.3", 1))
    return F.linear(x.mean((2, 3)), s["fc.weight"], s["fc.bias"])


def reference(state, x):
    s = Tracked(state)
    with torch.no_grad():
        fn = reference_mobilenet_v1 if "conv1.0.weight" in state else reference_resnet
        logits = fn(s, x)
    return logits, s.read


def images(n=2, seed=1):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ============================================================================ evaluation
@pytest.mark.parametrize("name,N,M", ROWS, ids=[f"{r[0].split('-')[0]}-{r[1]}of{r[2]}" for r in ROWS])
def test_stored_soft_masks_give_the_authors_eval_logits(name, N, M, tmp_path):
    arch = fixture(name)["arch"]
    state = official_state(name, N, M)
    kept = torch.cat([v[v != 0] for k, v in state.items() if k.endswith(".mask")])
    assert float(kept.min()) >= 1.0 and float(kept.max()) <= 3.0 and bool((kept > 1).any())
    path = save_checkpoint(tmp_path / f"best.{arch}.pth.tar", state, arch)
    model = official.load_official(path, arch, N, M)
    x = images()
    expected, read = reference(state, x)
    with torch.no_grad():
        got = model(x)
    assert float(expected.abs().max()) > 1e-3                     # not a degenerate network
    assert float((got - expected).abs().max()) <= 1e-4
    # every key the authors' forward reads, and every other key (BN counters), was consumed
    ckpt = official.read_official(path, arch, N, M)
    assert ckpt.n_keys == fixture(name)["n_entries"] == len(ckpt.state)
    assert read | {k for k in state if k.endswith("num_batches_tracked")} == set(state)
    # the kit's buffers are the stored masks themselves, not binarised or recomputed
    masks = {k: v for k, v in model.state_dict().items() if k.endswith("weight_mask")}
    assert len(masks) == len(fixture(name)["mask_keys"])
    assert sorted(float(v.max()) for v in masks.values())[-1] > 1.0


def test_seed_evaluate_path_reads_the_authors_file(tmp_path):
    """What ``maxq train ... --pretrained P --evaluate`` builds: read_weights + build_model."""
    state = official_state("resnet18-2of4", 2, 4)
    path = as_numpy1_and_cuda(save_checkpoint(tmp_path / "best.pth.tar", state, "resnet18"))
    cfg = TrainConfig(set="ImageNet", arch="resnet18", N=2, M=4,
                      conv_bn_type="SoftMaxQConv2DBN", pretrained=str(path), evaluate=True)
    model = build_model(cfg, 1000, 3, read_weights(path, cfg)).eval()
    x = images()
    with torch.no_grad():
        assert float((model(x) - reference(state, x)[0]).abs().max()) <= 1e-4


# ============================================================================ file handling
def test_numpy1_scalars_and_cuda_tags_load_safely(tmp_path):
    state = official_state("resnet18-2of4", 2, 4)
    path = as_numpy1_and_cuda(save_checkpoint(tmp_path / "c.pth.tar", state, "resnet18"))
    raw = path.read_bytes()
    assert b"numpy.core.multiarray" in raw and b"cuda:0" in raw
    # the plain safe loader refuses the numpy-1 name, even with numpy 2's scalar allow-listed
    with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
        torch.load(path, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype,
                                           np.dtypes.Float64DType]):
        with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
            torch.load(path, map_location="cpu", weights_only=True)
    if not torch.cuda.is_available():       # the storages really are tagged CUDA
        with torch.serialization.safe_globals(official._numpy_safe_globals()):
            with pytest.raises(RuntimeError, match="CUDA"):
                torch.load(path, weights_only=True)
    obj = official.safe_load(path)
    assert obj["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1)
    assert all(v.device.type == "cpu" for v in obj["state_dict"].values())
    assert official.read_official(path, "resnet18", 2, 4).meta["best_acc1"] == 77.576


@pytest.mark.parametrize("prefix,wrap", [("module.", True), ("_orig_mod.", True),
                                         ("_orig_mod.module.", False), ("", False)])
def test_prefixes_and_bare_state_dicts(prefix, wrap, tmp_path):
    state = official_state("mobilenet_v1-2of4", 2, 4)
    path = save_checkpoint(tmp_path / "c.pth", state, "mobilenet_v1", prefix=prefix, wrap=wrap)
    model = official.load_official(path, "mobilenet_v1", 2, 4)
    x = images()
    with torch.no_grad():
        assert float((model(x) - reference(state, x)[0]).abs().max()) <= 1e-4


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_are_refused_naming_the_first_mismatch(tmp_path):
    state = official_state("resnet50-2of4", 2, 4)
    good = save_checkpoint(tmp_path / "good.pth", state, "resnet50")
    bad = tmp_path / "bad.pth"        # each bad file overwrites the last: one ResNet-50 on disk

    def refusal(bad_state: dict, **kwargs) -> str:
        save_checkpoint(bad, bad_state, "resnet50", **kwargs)
        return _error(official.read_official, bad, "resnet50", 2, 4)

    assert "keys are those of resnet50" in _error(official.read_official, good, "resnet18", 2, 4)
    msg = _error(official.read_official, good, "resnet50", 1, 4)
    assert "--N 1 --M 4 does not fit" in msg and "layer1.0.convbn1.mask" in msg and "2:4" in msg
    assert "looks 1:16" in refusal(official_state("resnet50-1of16", 1, 16))
    missing = dict(state)
    del missing["layer3.2.convbn2.scale.running_var"]
    assert "missing key layer3.2.convbn2.scale.running_var" in refusal(missing)
    extra = {**state, "layer4.2.convbn3.extra": torch.zeros(1)}
    assert "unexpected key layer4.2.convbn3.extra" in refusal(extra)
    shaped = {**state, "fc.weight": torch.zeros(10, 2048)}
    assert "fc.bias has shape [1000], resnet50 needs [10]" in refusal(shaped)
    binary = {k: (v.clamp(max=1) * 0.5 if k.endswith(".mask") else v) for k, v in state.items()}
    assert "soft-mask range" in refusal(binary)
    assert "pickled objects" in refusal(state, extra={"args": pickle.PicklingError("x")})
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in _error(official.read_official, bad, "resnet50", 2, 4)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, bad)
    assert "not an authors' checkpoint" in _error(official.read_official, bad, "resnet50", 2, 4)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_torchvision_named_mobilenets_are_mapped_on_the_documented_assumption(arch, tmp_path):
    """MobileNetV2/V3 (no authors' model code): the conv-BN scheme on torchvision's names, e.g.
    ``features.2.conv.0.0``/``.0.1`` -> ``features.2.conv.0.{conv,scale,mask}``, the
    projection ``features.2.conv.2``/``.conv.3`` -> ``features.2.conv.2.{conv,scale,mask}``,
    and a sparse conv without BN (V3's squeeze-excitation ``fc1``) -> ``fc1.{conv,mask}``."""
    import torchvision

    stock = getattr(torchvision.models, arch)(num_classes=1000).eval()
    g = torch.Generator().manual_seed(0)
    theirs: dict[str, torch.Tensor] = {}
    sparse = {}
    for name, module in stock.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups == 1 and name != "features.0.0":
            sparse[name] = module
    for key, value in stock.state_dict().items():
        module, _, param = key.rpartition(".")
        if module in sparse:
            owner = module[:-2] if module.endswith(".0") else module
            theirs[f"{owner}.conv.{param}"] = value
            if param == "weight":
                theirs[f"{owner}.mask"] = soft_mask(value, 2, 4, g)
        elif module.endswith(".1") and module[:-2] + ".0" in sparse:
            theirs[f"{module[:-2]}.scale.{param}"] = value
        elif (module.rpartition(".")[0] + "." + str(int(module.rpartition(".")[2]) - 1)
              in sparse if module.rpartition(".")[2].isdigit() else False):
            # BN right after a projection conv (features.1.conv.2 after .conv.1; else .conv.3)
            head, _, idx = module.rpartition(".")
            theirs[f"{head}.{int(idx) - 1}.scale.{param}"] = value
        else:
            theirs[key] = value
    if arch == "mobilenet_v2":
        assert "features.2.conv.2.mask" in theirs and "features.2.conv.0.scale.weight" in theirs
    else:
        assert "features.1.block.1.fc1.conv.bias" in theirs and "features.1.block.2.mask" in theirs
    path = save_checkpoint(tmp_path / "v.pth", theirs, arch)
    model = official.load_official(path, arch, 2, 4)
    # the same network with W * mask folded in, in torchvision's own module
    with torch.no_grad():
        for name, module in sparse.items():
            owner = name[:-2] if name.endswith(".0") else name
            module.weight.mul_(theirs[f"{owner}.mask"])
        x = images()
        assert float((model(x) - stock(x)).abs().max()) <= 1e-4
    first = next(k for k in theirs if k.endswith(".mask"))[:-len("mask")]
    unknown = {k.replace(first, first + "other."): v for k, v in theirs.items()}
    msg = _error(official.read_official, save_checkpoint(tmp_path / "u.pth", unknown, arch),
                 arch, 2, 4)
    assert f"missing key {first}" in msg and "unknown layout" in msg


# ============================================================================ logs
def test_training_log_is_parsed_line_for_line():
    path = LOGS / "resnet50-2of4-train.log"
    df = official_logs.read_official_log(path)
    lines = path.read_text().splitlines()
    ends = [line.split("] ", 1)[1] for line in lines if "] => Epoch: " in line]
    summaries = [line.split("] ", 1)[1].split() for line in lines if "]  * Prec@1" in line]
    assert list(df["epoch"]) == [int(e.split(",")[0].split()[-1]) for e in ends]
    assert list(df["lr"]) == [float(e.split("LR: ")[1].split(",")[0]) for e in ends]
    assert list(df["best_top1"]) == [float(e.rsplit(" ", 1)[1].rstrip("%")) for e in ends]
    assert list(df["val_top1"]) == [float(s[2]) for s in summaries]
    assert list(df["val_top5"]) == [float(s[4]) for s in summaries]
    # train_*: the running mean of each epoch's last printed batch
    last_train = {}
    for line in lines:
        if "] Epoch: [" in line:
            fields = line.split("\t")
            last_train[int(line.split("[")[2].split("]")[0])] = fields
    for e, fields in last_train.items():
        loss_avg = float(fields[3].split("(")[1].rstrip(")"))
        top1_avg = float(fields[4].split("(")[1].rstrip(")"))
        assert df.loc[df["epoch"] == e, "train_loss"].item() == loss_avg
        assert df.loc[df["epoch"] == e, "train_top1"].item() == top1_avg
    log = official_logs.parse_official_log(path)
    assert len(log.batches) == sum(1 for line in lines if "] Epoch: [" in line or "] Test: [" in line)
    assert log.arch == "resnet50" and log.compress_rate == 50.0
    assert set(records.METRIC_KEYS) & set(df.columns) >= {"epoch", "lr", "train_loss",
                                                          "val_top1", "val_top5"}


def test_test_log_and_results_csv():
    path = LOGS / "resnet50-2of4-test.log"
    df = official_logs.read_official_test_log(path)
    last = path.read_text().splitlines()[-1].split()
    assert len(df) == 1 and df["val_top1"].item() == float(last[4])
    assert df["val_top5"].item() == float(last[6]) and df["error1"].item() == float(last[8])
    assert df["checkpoint"].item().endswith(".pth.tar")
    csv = official_logs.read_official_results(LOGS / "results.csv")
    assert csv[["arch", "N", "M", "best_top1"]].iloc[0].tolist() == ["resnet50", 2, 4, 46.87]
    assert results.read_official_log is official_logs.read_official_log


def test_logs_of_another_format_are_refused(tmp_path):
    text = (LOGS / "resnet50-2of4-train.log").read_text().splitlines()
    cases = {
        "kit.log": "epoch 0: loss 1.0\n",
        "edited.log": "\n".join(text[:300] + [text[300].replace("\tLoss", " Loss")] + text[301:]),
        "cut.log": "\n".join(text[:400]),
        "empty.log": "",
    }
    expect = {"kit.log": "line 1", "edited.log": "line 301", "cut.log": "cut off",
              "empty.log": "empty"}
    for name, content in cases.items():
        (tmp_path / name).write_text(content)
        assert expect[name] in _error(official_logs.read_official_log, tmp_path / name)
    assert "testing (--evaluate) log" in _error(official_logs.read_official_log,
                                                 LOGS / "resnet50-2of4-test.log")


# ============================================================================ import / export
@pytest.mark.e2e
def test_import_explore_export_onnx_end_to_end(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    state = official_state("resnet18-2of4", 2, 4)
    ckpt = as_numpy1_and_cuda(save_checkpoint(tmp_path / "best.resnet18.x.pth.tar", state,
                                              "resnet18"))
    log = LOGS / "resnet50-2of4-train.log"
    out = tmp_path / "runs" / "official" / "resnet18-2of4"
    argv = ["import-official", str(ckpt), "--arch", "resnet18", "--N", "2", "--M", "4",
            "--out", str(out)]
    assert cli.main(argv) == 0
    config = records.read_json(out / records.CONFIG)
    assert config["imported"]["sha256"] == official.file_sha256(ckpt)
    assert config["imported"]["file"] == ckpt.name and config["args"]["arch"] == "resnet18"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli.main(argv) == 0 and "already imported" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # another checkpoint at the same place is refused, nothing changes
    other = save_checkpoint(tmp_path / "other.pth", official_state("resnet18-2of4", 2, 4, 1),
                            "resnet18")
    assert cli.main(["import-official", str(other), "--arch", "resnet18", "--N", "2", "--M",
                     "4", "--out", str(out)]) == 2
    assert "already holds an import of" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # a log of another arch is refused before anything is written
    fresh = tmp_path / "runs" / "official" / "fresh"
    assert cli.main(argv[:-1] + [str(fresh), "--log", str(log)]) == 2
    assert "trained 'resnet50', not resnet18" in capsys.readouterr().err and not fresh.exists()

    # the explorer lists and draws it like a kit run
    found = explorer.find_runs(tmp_path / "runs")
    info = found.get(out)
    assert (info.arch, info.N, info.M) == ("resnet18", 2, 4) and info.layers
    soft = records.load_mask_snapshot(out, info.epochs[0], [info.layers[0]])[info.layers[0]]["soft"]
    assert float(soft.max()) > 1.0                               # the stored soft mask
    fig = explorer.detail_figure(info, info.layers[0], info.epochs[0])
    assert fig is not None

    # export: fold W * stored mask, verified N:M, ONNX checked under onnxruntime
    res = ex.export(out, "onnx", out=tmp_path / "m.onnx", log=lambda *_: None)
    sparse_rows = [r for r in res.layers if r["sparse"]]
    assert res.out.is_file() and len(sparse_rows) == len(fixture("resnet18-2of4")["mask_keys"])
    assert all(r["nm_ok"] and r["max_nonzeros"] == 2 for r in sparse_rows)
    tv = ex.export(out, "torchvision", out=tmp_path / "m.pth", log=lambda *_: None)
    import onnxruntime as ort
    import torchvision

    stock = torchvision.models.resnet18(num_classes=1000).eval()
    stock.load_state_dict(torch.load(tv.out, weights_only=True), strict=True)
    x = images(1)
    expected = reference(state, x)[0]
    with torch.no_grad():
        assert float((stock(x) - expected).abs().max()) <= 1e-4
    session = ort.InferenceSession(str(res.out), providers=["CPUExecutionProvider"])
    onnx_x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    got = session.run(None, {session.get_inputs()[0].name: onnx_x.numpy()})[0]
    assert np.abs(got - reference(state, onnx_x)[0].numpy()).max() <= 1e-3


def test_import_with_log_gives_metrics_and_report_tables(tmp_path):
    state = official_state("resnet50-2of4", 2, 4)
    ckpt = save_checkpoint(tmp_path / "best.resnet50.pth.tar", state, "resnet50")
    log = LOGS / "resnet50-2of4-train.log"
    root = tmp_path / "runs"
    out, written = official.import_official(ckpt, "resnet50", 2, 4, log=log, runs_root=root)
    assert written and out == root / "official" / "resnet50-2of4"
    metrics = records.read_jsonl(out / records.METRICS)
    parsed = official_logs.read_official_log(log)
    assert [m["val_top1"] for m in metrics] == list(parsed["val_top1"])
    run = results.load_run(out)
    assert run.runs["arch"].item() == "resnet50" and run.runs["finished"].item()
    assert list(run.epochs["val_top1"]) == list(parsed["val_top1"])
    curves = official_logs.official_curves(["resnet50-2of4", "resnet34-1of4"], root)
    assert set(curves["row"]) == {"resnet50-2of4"} and list(curves["val_top1"]) == list(
        parsed["val_top1"])
    (root / "official" / "resnet34-1of4").mkdir(parents=True)
    (root / "official" / "resnet34-1of4" / "test.log").write_text(
        (LOGS / "resnet50-2of4-test.log").read_text())
    table = official_logs.official_summary(["resnet50-2of4", "resnet34-1of4"], root)
    assert table.set_index("row").loc["resnet50-2of4", "official_best_top1"] == parsed[
        "best_top1"].iloc[-1]
    assert table.set_index("row").loc["resnet34-1of4", "official_test_top1"] == 75.47


def test_seed_test_command_evaluates_an_authors_checkpoint(tmp_path, capsys):
    """``maxq train DATA --set ImageNet -a resnet18 --N 2 --M 4 --conv-bn-type SoftMaxQConv2DBN
    --pretrained AUTHORS.pth --evaluate`` on a 1000-class ImageFolder: its printed loss is the
    cross-entropy of the independent eval forward over the same validation images."""
    from PIL import Image

    from maxq import train as tr
    from maxq.distributed import setup_runtime, teardown_runtime

    tree = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(1000):
            folder = tree / split / f"n{c:05d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / "0.png")
    state = official_state("resnet18-2of4", 2, 4)
    ckpt = as_numpy1_and_cuda(save_checkpoint(tmp_path / "best.resnet18.pth.tar", state,
                                              "resnet18"))
    argv = ["train", str(tree), "--set", "ImageNet", "-a", "resnet18", "--N", "2", "--M", "4",
            "--conv-bn-type", "SoftMaxQConv2DBN", "--pretrained", str(ckpt), "--evaluate",
            "--image-size", str(SIZE), "--val-subset", "6", "-b", "8", "--workers", "0",
            "--amp", "off", "--device", "cpu"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("evaluate: Prec@1") and "on 6 images" in out
    printed_loss = float(out.split("Loss ")[1].split()[0])
    cfg = TrainConfig(data=str(tree), set="ImageNet", arch="resnet18", N=2, M=4,
                      conv_bn_type="SoftMaxQConv2DBN", image_size=SIZE, val_subset=6,
                      batch_size=8, workers=0, amp="off", device="cpu").resolved()
    rt = setup_runtime(cfg.device, cfg.amp)
    try:
        loaders = tr.build_loaders(cfg, rt, drop_last=False)
        losses = [F.cross_entropy(reference(state, x)[0], y, reduction="sum",
                                  label_smoothing=cfg.label_smoothing) for x, y in loaders.val]
    finally:
        teardown_runtime(rt)
    assert printed_loss == pytest.approx(float(sum(losses)) / 6, abs=1e-4)
    # the same command at another N:M is refused in one line
    assert cli.main([a if a != "2" else "1" for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--N 1 --M 4 does not fit" in err[0]


def test_export_reads_an_authors_checkpoint_directly(tmp_path, capsys):
    """``maxq export AUTHORS.pth --arch mobilenet_v1 --nm 1:4``: fold W * stored mask into the
    kit's torchvision-named MobileNetV1, verified 1:4; the wrong N:M writes nothing."""
    state = official_state("mobilenet_v1-2of4", 1, 4)
    ckpt = as_numpy1_and_cuda(save_checkpoint(tmp_path / "best.mobilenet_v1.pth.tar", state,
                                              "mobilenet_v1"))
    out = tmp_path / "mv1.pth"
    assert cli.main(["export", str(ckpt), "--arch", "mobilenet_v1", "--nm", "2:4",
                     "--out", str(out)]) == 2
    assert "does not fit" in capsys.readouterr().err and not out.exists()
    assert cli.main(["export", str(ckpt), "--arch", "mobilenet_v1", "--nm", "1:4",
                     "--out", str(out)]) == 0
    folded = torch.load(out, weights_only=True)
    stock = official.models.build("mobilenet_v1", 1000).eval()
    stock.load_state_dict(folded, strict=True)
    x = images()
    with torch.no_grad():
        assert float((stock(x) - reference(state, x)[0]).abs().max()) <= 1e-4
    pw = folded["features.1.1.0.weight"]
    assert int((pw != 0).reshape(pw.shape[0], -1, 4).sum(-1).max()) == 1


def test_authors_curves_beside_the_kit_runs_of_a_study(tmp_path):
    """The report's overlay and table: rows with ``runs/official/<row id>/train.log``."""
    import matplotlib

    matplotlib.use("Agg")
    root = tmp_path / "runs"
    folder = official_logs.official_dir("resnet50-2of4", root)
    folder.mkdir(parents=True)
    (folder / "train.log").write_text((LOGS / "resnet50-2of4-train.log").read_text())
    runs = pd.DataFrame({"row": ["resnet50-2of4", "resnet50-2of4", "resnet34-1of4"],
                         "run": ["a", "b", "c"], "method": ["SoftMaxQConv2DBN"] * 3,
                         "finished": [True, True, True], "best_top1": [40.0, 42.0, 30.0],
                         "paper_top1": [77.6, 77.6, 74.2]})
    epochs = pd.DataFrame({"row": ["resnet50-2of4"] * 2 + ["resnet34-1of4"],
                           "run": ["a", "a", "c"], "method": ["SoftMaxQConv2DBN"] * 3,
                           "epoch": [0, 1, 0], "val_top1": [30.0, 40.0, 30.0]})
    res = results.Results("paper", runs, epochs, pd.DataFrame())
    table = results.official_comparison(res, root)
    theirs = official_logs.read_official_log(folder / "train.log")
    assert table[["row", "n", "kit_best_top1"]].values.tolist() == [["resnet50-2of4", 2, 41.0]]
    assert table["official_best_top1"].item() == theirs["best_top1"].iloc[-1]
    assert table["official_last_top1"].item() == theirs["val_top1"].iloc[-1]
    overlay = results.official_overlay(res, root)
    assert set(overlay["row"]) == {"resnet50-2of4"}
    assert list(overlay.loc[overlay["source"] != "kit", "val_top1"]) == list(theirs["val_top1"])
    assert len(official_logs.overlay_figure(overlay).axes) == 1
    empty = results.official_comparison(res, tmp_path / "nowhere")
    assert empty.empty and results.official_overlay(res, tmp_path / "nowhere").empty
    # the report notebook's cell, run on these frames: the table and the figure are written
    import nbformat
    from IPython.display import Markdown

    from maxq import paths, plots

    nb = nbformat.read(str(paths.REPO_ROOT / "notebooks" / "report.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == "report-official")
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    shown = []
    exec(cell.source, {"results": results, "plots": plots, "res": res, "runs_root": root,
                       "out": out, "figures": out / "figures", "Markdown": Markdown,
                       "display": shown.append})
    assert (out / "official.csv").is_file() and shown
    assert list((out / "figures").glob("official_curves.*"))


def test_readme_commands_per_table_row_parse_and_match_the_seed_table():
    """The README's "Evaluate the authors' released models" table: one command per seed-table
    row, each a valid ``maxq train`` evaluation of that row's arch and N:M, with its top-1."""
    import csv

    from maxq import paths

    readme = (paths.REPO_ROOT / "README.md").read_text()
    section = readme.split("## Evaluate the authors' released models", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "`maxq train" in line]
    seed = list(csv.DictReader((REFERENCE / "seed_table.csv").open()))
    assert len(lines) == len(seed)
    for line, row in zip(lines, seed):
        cells = [c.strip() for c in line.strip("|").split("|")]
        command = cells[5].strip("`").split()[1:]
        args = cli.build_parser("train").parse_args(command)
        cfg = cli.config_from_args(args)
        assert (cfg.arch, cfg.N, cfg.M, cfg.evaluate) == (row["arch"], int(row["N"]),
                                                           int(row["M"]), True)
        assert cells[1] == f"{row['N']}:{row['M']}" and cells[3] == row["top1"]
