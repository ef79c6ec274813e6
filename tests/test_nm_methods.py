"""LBC, Bi-Mask and SpRe (maxq.nm_methods rules, maxq.nm_layers wrappers): each rule against a
small restatement written here, training through ``maxq train``, bit-exact resume after kill -9,
and export to a plain N:M checkpoint (SpRe's branch folded, checked on real images)."""
from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from maxq import cli, data, export as ex, methods, models, nm_layers, nm_methods as rules
from maxq import records, sparse

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
NEW = ("LBC", "BiMask", "SpRe")
TIMING = ("seconds", "images_per_s", "step_seconds")
TRAIN = ["--set", "FashionMNIST", "-a", "resnet18", "--width-mult", "0.25", "--image-size", "16",
         "--train-subset", "256", "--val-subset", "128", "-b", "16", "--epochs", "3", "--lr",
         "0.05", "--workers", "0", "--print-freq", "1", "--snapshot-epochs", "1",
         "--no-progress"]


def _model(method: str, N: int = 2, M: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.build("resnet18", 10, in_channels=1, small_input=True, width_mult=0.25)
    return sparse.sparsify(model, method, N, M, seed=seed)


def _groups_input(t: torch.Tensor, M: int) -> list[list[float]]:
    """Restatement: every group of M consecutive input channels at fixed (o, kh, kw)."""
    O, I, kh, kw = t.shape
    return [[float(t[o, i0 + j, y, x]) for j in range(M)]
            for o in range(O) for y in range(kh) for x in range(kw) for i0 in range(0, I, M)]


def _groups_row(t: torch.Tensor, M: int) -> list[list[float]]:
    """Restatement: every group of M consecutive entries of the (i, kh, kw) row, kw fastest."""
    O, I, kh, kw = t.shape
    flat = [[float(t[o, i, y, x]) for i in range(I) for y in range(kh) for x in range(kw)]
            for o in range(O)]
    return [row[k:k + M] for row in flat for k in range(0, len(row), M)]


# ============================================================================ registry
def test_registry_entries_use_fields_not_names():
    for name in NEW:
        spec = methods.get(name)
        assert spec.sparse and spec.layer in nm_layers.LAYERS and spec.label
    assert methods.get("BiMask").grouping == "row"
    assert methods.get("LBC").grouping == methods.get("SpRe").grouping == "input"
    assert not methods.get("LBC").srste_decay
    assert methods.get("BiMask").srste_decay and methods.get("SpRe").srste_decay
    # stem and classifier stay dense, as with the kit's other methods
    for name in NEW:
        m = _model(name)
        layers = sparse.sparse_layers(m)
        assert "conv1" not in layers and "fc" not in layers and len(layers) == 19


# ============================================================================ LBC
def test_lbc_combinations_and_initial_soft_mask_of_one():
    table = rules.lbc_combinations(2, 4)
    assert [tuple(int(v) for v in r.nonzero().flatten()) for r in table] == \
        list(itertools.combinations(range(4), 2))
    scores = rules.lbc_initial_scores(5, 2, 4)
    assert scores.shape == (5, 6) and torch.allclose(scores @ table, torch.ones(5, 4))


def test_lbc_mask_and_score_gradient_against_restatement():
    g = torch.Generator().manual_seed(0)
    N, M = 2, 4
    table = rules.lbc_combinations(N, M)
    scores = torch.rand(3, 6, generator=g)
    scores[0, :5] = 0            # one combination left: exactly N of M
    scores[1, [0, 1, 2]] = 0     # combinations {0,1},{0,2},{0,3} removed
    scores = scores.requires_grad_()
    upstream = torch.randn(3, M, generator=g)
    mask = rules.lbc_mask(scores, table)
    (mask * upstream).sum().backward()
    grad = scores.grad
    combos = list(itertools.combinations(range(M), N))
    scores = scores.detach()
    for r in range(3):
        live = [c for k, c in enumerate(combos) if float(scores[r, k]) != 0]
        covered = {j for c in live for j in c}
        assert [float(v) for v in mask[r]] == [1.0 if j in covered else 0.0 for j in range(M)]
        for k, c in enumerate(combos):
            want = sum(float(upstream[r, j]) for j in c) if float(scores[r, k]) != 0 else 0.0
            assert math.isclose(float(grad[r, k]), want, abs_tol=1e-6)
    assert int(mask[0].sum()) == N


def test_lbc_removal_ranks_removed_scores_first():
    scores = torch.tensor([[0.5, 0.0, -0.2, 0.9, 0.1, 0.3]], dtype=torch.float64)
    rules.lbc_remove_(scores, 3)
    # the zero counts as removed; then the two smallest signed values (-0.2, 0.1) go
    assert scores.tolist() == [[0.5, 0.0, 0.0, 0.9, 0.0, 0.3]]
    rules.lbc_remove_(scores, 3)             # idempotent at the same k
    assert scores.tolist() == [[0.5, 0.0, 0.0, 0.9, 0.0, 0.3]]


def test_lbc_schedule_over_epochs_is_the_cubic_decay():
    C, t_f = 6, 60                           # 2:4, the README's t_i = 0, t_f = 60

    def restated(e):                         # the authors' recursion, written out
        k = 0
        for epoch in range(e + 1):
            if k < C - 1:
                card = 1 + math.ceil((C - 1) * (1 - epoch / t_f) ** 3)
                k = C - card
        return k
    ks = [rules.lbc_removed(e, C, 0, t_f) for e in range(120)]
    assert ks == [restated(e) for e in range(120)]
    assert ks[4] == 0 and ks[5] == 1                        # first removal at epoch 5
    assert ks[24] == C - 3 and ks[25] == C - 2 and ks[59] == C - 2 and ks[60] == C - 1
    assert all(a <= b for a, b in zip(ks, ks[1:]))


def test_lbc_layer_is_exactly_nm_after_its_schedule_and_masks_the_weight_gradient():
    model = _model("LBC")
    layer = sparse.sparse_layers(model)["layer1.0.conv1"]
    model.train()
    x = torch.randn(4, 1, 16, 16)
    sparse.start_epoch(model, 0, 4)
    model(x).sum().backward()
    assert sparse.density(model) == 1.0 and layer.lbc_alpha.grad is not None
    sparse.start_epoch(model, 2, 4)          # t_f = 2 of 4 epochs: one combination left
    assert not layer.lbc_alpha.requires_grad
    model.zero_grad()
    model(x).sum().backward()
    mask = layer.weight_mask
    assert all(sum(v != 0 for v in grp) == 2 for grp in _groups_input(mask, 4))
    assert torch.equal(layer.weight.grad * (1 - mask), torch.zeros_like(mask))   # masked
    assert sparse.density(model) == 0.5


# ============================================================================ Bi-Mask
def test_bimask_forward_mask_keeps_n_of_m_per_row_group():
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    mask = rules.row_nm_mask(w, 2, 4)
    for wg, mg in zip(_groups_row(w, 4), _groups_row(mask, 4)):
        top = sorted(range(4), key=lambda j: -abs(wg[j]))[:2]
        assert mg == [1.0 if j in top else 0.0 for j in range(4)]
    # not an input-channel N:M mask on a 3x3 conv
    assert any(sum(v != 0 for v in grp) != 2 for grp in _groups_input(mask, 4))


def test_bimask_backward_mask_against_restatement():
    g = torch.Generator().manual_seed(2)
    N, M = 2, 4
    w = torch.randn(8, 4, 3, 3, generator=g)
    mf = rules.row_nm_mask(w, N, M)
    perm = torch.randperm(8, generator=g)
    mb = rules.bimask_backward_mask(w, mf, perm, N, M)
    ws = (w * mf).reshape(8, -1)
    want = torch.zeros_like(ws)
    for k in range(ws.shape[1]):             # groups of M output channels in π order, per k
        for start in range(0, 8, M):
            rows = [int(perm[start + j]) for j in range(M)]
            top = sorted(rows, key=lambda r: -abs(float(ws[r, k])))[:N]
            for r in top:
                want[r, k] = float(mf.reshape(8, -1)[r, k])
    assert torch.equal(mb.reshape(8, -1), want)
    assert bool((mb <= mf).all())


def test_bimask_gradients_dense_weight_sparse_input():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 6, generator=g, requires_grad=True)
    w = torch.randn(8, 4, 3, 3, generator=g, requires_grad=True)
    mf = rules.row_nm_mask(w, 2, 4)
    mb = rules.bimask_backward_mask(w, mf, torch.arange(8), 2, 4)
    up = torch.randn(2, 8, 6, 6, generator=g)
    out = rules.BiMaskConv2dFunction.apply(x, w, mf, mb, None, 1, 1, 1, 1)
    assert torch.allclose(out, F.conv2d(x, w * mf, padding=1))
    (out * up).sum().backward()
    # restated: dL/dW is the gradient w.r.t. the sparse weight, at every position (dense)
    ws = (w * mf).detach().requires_grad_()
    (F.conv2d(x.detach(), ws, padding=1) * up).sum().backward()
    assert torch.allclose(w.grad, ws.grad, atol=1e-5)
    # restated: dL/dx goes through W ⊙ m_b
    xb = x.detach().requires_grad_()
    (F.conv2d(xb, (w * mb).detach(), padding=1) * up).sum().backward()
    assert torch.allclose(x.grad, xb.grad, atol=1e-5)


@pytest.mark.parametrize("method", NEW)
def test_trains_under_autocast(method):
    """A training step under autocast (bfloat16 on the CPU, as fp16 AMP on a GPU): the backward
    of every layer accepts the lower-precision gradient and returns float32 weight gradients."""
    model = _model(method)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 1, 16, 16))
    out.float().sum().backward()
    for layer in sparse.sparse_layers(model).values():
        assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32


def test_bimask_permutation_refreshes_every_100_steps():
    model = _model("BiMask")
    layer = sparse.sparse_layers(model)["layer2.0.conv1"]
    model.train()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        for _ in range(99):
            model(x)
    assert int(layer.bimask_step) == 99 and torch.equal(layer.bimask_perm, torch.arange(32))
    with torch.no_grad():
        model(x)
    perm = layer.bimask_perm.clone()
    assert not torch.equal(perm, torch.arange(32)) and sorted(perm.tolist()) == list(range(32))
    w, mf = layer.weight.detach(), layer.weight_mask
    kept = float(rules.bimask_backward_mask(w, mf, perm, 2, 4).sum())
    assert kept >= float(rules.bimask_backward_mask(w, mf, torch.arange(32), 2, 4).sum())


# ============================================================================ SpRe
def test_spre_spatial_mask_against_restatement():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 8, 3, 3, generator=g)
    w[:, :, 1, 1] *= 4                       # the centre is denser under magnitude pruning
    s = rules.spre_spatial_mask(w, 2, 4)
    values = sorted(abs(float(v)) for v in w.flatten())
    threshold = values[int(w.numel() * 0.5) - 1]
    for y in range(3):
        for x in range(3):
            kept = sum(abs(float(v)) > threshold for v in w[:, :, y, x].flatten())
            assert float(s[y, x]) == float(1 - kept / 64 < 0.5)
    assert float(s[1, 1]) == 1.0


def test_spre_branch_shares_the_main_support_and_gets_a_masked_gradient():
    model = _model("SpRe")
    layers = sparse.sparse_layers(model)
    conv = layers["layer1.0.conv2"]
    assert isinstance(conv, nm_layers.SpReConv2d)
    assert type(layers["layer2.0.downsample.0"]) is sparse.SparseConv2d       # 1x1: SR-STE
    model.train()
    model(torch.randn(4, 1, 16, 16)).sum().backward()
    support = conv.weight_mask * conv.spre_spatial
    assert torch.equal(conv.spre_weight.grad * (1 - support), torch.zeros_like(support))
    assert float(conv.spre_weight.grad.abs().sum()) > 0


# ============================================================================ train, resume, export
def _train(tmp_path: Path, method: str, *extra: str) -> Path:
    run_dir = tmp_path / method
    assert cli.main(["train", *TRAIN, "--conv-bn-type", method, "--save_dir", str(run_dir),
                     *extra]) == 0
    return run_dir


def _maxq(*args: str) -> list[str]:
    return [sys.executable, "-m", "maxq", "train", *TRAIN, *args]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before {text!r}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear in {path}")


@pytest.mark.e2e
@pytest.mark.parametrize("method", NEW)
def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path, method):
    """Learned scores (LBC), permutation, step counter and generator (Bi-Mask), branch weight,
    branch BN and spatial mask (SpRe) all come back from checkpoint.pth: the resumed run ends
    bit-exactly where the uninterrupted one ends (16 steps per epoch)."""
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    args = ["--conv-bn-type", method]
    full = subprocess.Popen(_maxq(*args, "--save_dir", str(full_dir)), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_maxq(*args, "--save_dir", str(killed_dir)), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(killed_dir / records.LOG, "Epoch: [1][3/16]", victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert torch.load(killed_dir / records.CHECKPOINT, weights_only=True)["epoch"] == 0
    resumed = subprocess.run(_maxq(*args, "--save_dir", str(killed_dir), "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert full.wait(timeout=600) == 0, full.stderr.read()[-2000:]
    a, b = records.read_run(full_dir), records.read_run(killed_dir)
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in run["metrics"]]
             for run in (a, b)]
    assert strip[0] == strip[1] and a["layers"] == b["layers"]
    assert a["result"]["mask_checksums"] == b["result"]["mask_checksums"]
    sa = torch.load(full_dir / records.CHECKPOINT, weights_only=True)["state_dict"]
    sb = torch.load(killed_dir / records.CHECKPOINT, weights_only=True)["state_dict"]
    extra = {"LBC": "lbc_alpha", "BiMask": "bimask_perm", "SpRe": "spre_weight"}[method]
    assert any(k.endswith(extra) for k in sa)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", NEW)
def test_train_and_export_to_a_plain_nm_checkpoint(tmp_path, method):
    """``maxq train`` then ``maxq export``: the exported state_dict loads strictly into the stock
    model, every sparse layer is N:M along the method's grouping (the run ends past LBC's
    schedule), and on real validation images the plain model equals the trained one (SpRe:
    the branch and its BN folded into the conv and the following BN) to <= 1e-5."""
    run_dir = _train(tmp_path, method)
    rows = records.read_run(run_dir)["metrics"]
    assert all(r["step_seconds"] > 0 for r in rows)
    if method == "LBC":                        # t_f = round(3 / 2) = 2: denser before it
        assert rows[0]["density"] > 0.5 and rows[-1]["density"] == 0.5
    else:
        assert all(r["density"] == 0.5 for r in rows)
    out = tmp_path / "plain.pth"
    result = ex.export(run_dir, "torchvision", out, which="last", log=lambda *a: None)
    assert all(r["nm_ok"] for r in result.layers if r["sparse"])
    stock = models.build("resnet18", 10, in_channels=1, small_input=True, width_mult=0.25)
    stock.load_state_dict(torch.load(out, weights_only=True), strict=True)
    stock.eval()
    grouping = methods.get(method).grouping
    for name in sparse.sparse_layers(result.loaded.model):
        kept = sparse.block_nonzeros(stock.get_submodule(name).weight, 4, grouping)
        assert int(kept.max()) <= 2
    loaders = data.build_loaders("FashionMNIST", None, batch_size=64, image_size=16,
                                 val_subset=128, train_subset=64)
    trained = result.loaded.model.eval()
    with torch.no_grad():
        for images, _ in loaders.val:
            assert (stock(images) - trained(images)).abs().max().item() <= 1e-5
