"""GPU check: the kit's CUDA code paths, measured and checked in one run, one Markdown table
(about 8 min on one GPU). Run it the first time a GPU is there:

    python scripts/gpu_check.py [--out table.md]

Rows of the table:

* **masks** -- ``maxq_mask`` / ``nm_mask`` of ResNet-50's sparse conv shapes on CUDA vs the same
  weights on the CPU (both the sync-free torch path, ``MAXQ_NATIVE=0``): the hard structure
  (zero set, hard-axis and N:M masks) must be identical; the soft values may differ in the last
  bits (CUDA's division by ``tau`` and ``expf`` are not the CPU's vectorised ones), reported as the
  largest absolute difference (target <= 1e-6).
* **no host sync** -- one MaxQ training step (ResNet-50, bf16 AMP, masks refreshed by the stacked
  op) under ``torch.cuda.set_sync_debug_mode("error")``: any host-device synchronisation raises.
* **train step** -- dense ResNet-50 vs MaxQ (``SoftMaxQConv2DBN`` 2:4, masks recomputed on every
  step, dense fraction 0), 224 px, batch 128, SGD, channels_last, AMP fp16 (with a grad scaler)
  and bf16: median ms per step (forward + backward + optimizer step, CUDA-synchronised) and the
  MaxQ ÷ dense ratio; target ≤ 1.05.
* **mask refresh** -- ``maxq.sparse.refresh_masks`` of the MaxQ ResNet-50 (52 convs, one op call
  per distinct shape): median ms, CUDA-synchronised.
* **data** -- the DALI GPU pipeline (``ImageNetDali``, ``device=cuda``) vs torchvision's
  DataLoader (``ImageNet``) on a generated JPEG tree: training images/s over one epoch each
  (:func:`maxq.data.build_loaders`, what training iterates).
* **2:4 kernels** -- the folded 2:4 ResNet-50's eligible layers (1×1 convs and the classifier)
  on ``torch.sparse.to_sparse_semi_structured`` vs dense, end to end, fp16 and bf16, batch 128
  (:func:`maxq.kernels24.sparse24_check`), with the output difference.
* **DDP** -- one training step of ResNet-50 under ``DistributedDataParallel`` in a 1-process
  NCCL group (the kit's multi-GPU path minus the second GPU).
* **train + ONNX** -- a one-epoch ``maxq train`` run on the device, then ``maxq export --format
  onnx`` of it, whose outputs onnxruntime must match PyTorch's.

Without CUDA it prints one line saying so and exits 0 (nothing to check is not a failure); with
CUDA it exits 1 when a row FAILED. ``--cpu`` runs the same code on the CPU at toy sizes
(ResNet-18, 16 px, batch 4, a step or two; bf16 via CPU autocast, fp16 and the CUDA-only rows
marked n/a; gloo for DDP; the DataLoader side; the eligible layers counted, not timed): the test
suite runs that.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maxq import masks, models, sparse  # noqa: E402

HEADER = ("check", "setting", "baseline", "candidate", "ratio", "target", "status")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def build(arch: str, method: str | None, classes: int = 1000) -> torch.nn.Module:
    model = models.build(arch, classes, in_channels=3, small_input=False)
    if method:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sparse.sparsify(model, method, 2, 4, seed=0)
        sparse.set_dense_fraction(model, 0.0)          # full 2:4 masks, recomputed every step
    return model


def train_step(model, device, amp: str, channels_last: bool, batch: int, size: int):
    """A closure doing one training step (the kit's: autocast, grad scaler for fp16)."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss
    return step


def check_train_steps(device, *, arch, size, batch, warmup, steps, log) -> list[tuple]:
    rows = []
    for amp in ("fp16", "bf16"):
        setting = f"{arch} {size}px b{batch} {amp} channels_last"
        if amp == "fp16" and device.type != "cuda":
            rows.append(("train step", setting, "-", "-", "-", "<= 1.05", "n/a (fp16 needs CUDA)"))
            continue
        dense = _median_ms(train_step(build(arch, None), device, amp, True, batch, size), device,
                           warmup, steps)
        maxq = _median_ms(train_step(build(arch, "SoftMaxQConv2DBN"), device, amp, True, batch,
                                     size), device, warmup, steps)
        ratio = maxq / dense
        status = "ok" if ratio <= 1.05 else "SLOWER than target"
        rows.append(("train step", setting, f"dense {dense:.1f} ms", f"MaxQ {maxq:.1f} ms",
                     f"{ratio:.2f}", "<= 1.05", status))
        log(f"train step {setting}: dense {dense:.1f} ms, MaxQ {maxq:.1f} ms ({ratio:.2f}x)")
    return rows


def _resnet50_conv_shapes() -> list[tuple[int, ...]]:
    import torchvision

    model = torchvision.models.resnet50()
    return sorted({tuple(m.weight.shape) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Conv2d) and m.groups == 1
                   and m.in_channels % 4 == 0 and n != "conv1"})


def check_masks_match_cpu(device, *, log) -> list[tuple]:
    """The torch path's masks on ``device`` vs the CPU's, ResNet-50's 19 sparse conv shapes."""
    setting = "ResNet-50 conv shapes, 2:4, dense fraction 0 / 0.3, soft/hard/none"
    if device.type != "cuda":
        return [("masks", setting, "-", "-", "-", "CUDA = CPU", "n/a (needs CUDA)")]
    old = os.environ.get("MAXQ_NATIVE")
    os.environ["MAXQ_NATIVE"] = "0"
    try:
        g = torch.Generator().manual_seed(0)
        structure_ok, soft_diff, cases = True, 0.0, 0
        for shape in _resnet50_conv_shapes():
            w = torch.randn(shape, generator=g) * 0.05
            wd = w.to(device)
            for df in (0.0, 0.3):
                for axis in ("soft", "hard", "none"):
                    cpu = masks.maxq_mask(w, 2, 4, dense_fraction=df, axis=axis)
                    gpu = masks.maxq_mask(wd, 2, 4, dense_fraction=df, axis=axis).cpu()
                    cases += 1
                    if axis == "soft":
                        structure_ok &= torch.equal(cpu != 0, gpu != 0)
                        soft_diff = max(soft_diff, float((cpu - gpu).abs().max()))
                    else:
                        structure_ok &= torch.equal(cpu, gpu)
            structure_ok &= torch.equal(masks.nm_mask(w, 2, 4), masks.nm_mask(wd, 2, 4).cpu())
    finally:
        if old is None:
            del os.environ["MAXQ_NATIVE"]
        else:
            os.environ["MAXQ_NATIVE"] = old
    status = ("ok" if structure_ok and soft_diff <= 1e-6 else
              f"FAILED: {'hard structure differs' if not structure_ok else 'soft values differ'}")
    log(f"masks CUDA vs CPU: {cases} cases, structure identical {structure_ok}, "
        f"soft max |diff| {soft_diff:.1e}")
    return [("masks", setting, f"{cases} cases + nm_mask", f"soft max |diff| {soft_diff:.1e}",
             "-", "hard identical, soft <= 1e-6", status)]


def check_no_sync(device, *, arch, size, batch, log) -> list[tuple]:
    """One MaxQ training step (bf16 AMP, masks refreshed) under sync debug mode "error"."""
    setting = f"MaxQ {arch} {size}px b{batch} bf16, set_sync_debug_mode('error')"
    if device.type != "cuda":
        return [("no host sync", setting, "-", "-", "-", "raises nothing", "n/a (needs CUDA)")]
    step = train_step(build(arch, "SoftMaxQConv2DBN"), device, "bf16", True, batch, size)
    step()                                           # first step: cuDNN autotuning, allocations
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        status = "ok"
    except RuntimeError as exc:
        status = f"FAILED: {str(exc).splitlines()[0][:100]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    log(f"no host sync: {status}")
    return [("no host sync", setting, "-", "-", "-", "raises nothing", status)]


def check_refresh(device, *, arch, warmup, steps, log, **_) -> list[tuple]:
    """Median time of one refresh of every mask of the MaxQ model (stacked op calls)."""
    model = build(arch, "SoftMaxQConv2DBN").to(device).train()
    layers = sparse.sparse_layers(model)
    shapes = len({tuple(m.weight.shape) for m in layers.values()})
    ms = _median_ms(lambda: sparse.refresh_masks(model), device, warmup, steps)
    log(f"mask refresh: {ms:.2f} ms ({len(layers)} layers, {shapes} shapes)")
    return [("mask refresh", f"MaxQ {arch}: {len(layers)} convs, {shapes} shapes, 2:4", "-",
             f"{ms:.2f} ms", "-", "measured", "ok")]


def _epoch_rate(loader, device) -> float:
    start, images = time.perf_counter(), 0
    for x, _ in loader:
        images += x.shape[0]
    _sync(device)
    return images / max(time.perf_counter() - start, 1e-9)


def check_data(device, *, images, size, batch, workers, log) -> list[tuple]:
    from maxq import data as md

    with tempfile.TemporaryDirectory(prefix="maxq-gpu-check-") as tmp:
        root = md.write_imagefolder(Path(tmp) / "tree", n_train_per_class=max(1, images // 10),
                                    n_val_per_class=1, size=size + size // 7)
        kw = dict(batch_size=batch, workers=workers, image_size=size, device=str(device))
        torch_rate = _epoch_rate(md.build_loaders("ImageNet", root, **kw).train, device)
        setting = f"{images} JPEGs -> {size}px b{batch}, {workers} workers/threads"
        if device.type != "cuda":
            return [("data", setting, f"DataLoader {torch_rate:.0f} img/s", "-", "-",
                     "DALI > DataLoader", "n/a (DALI GPU pipeline needs CUDA)")]
        try:
            dali_rate = _epoch_rate(md.build_loaders("ImageNetDali", root, **kw).train, device)
        except Exception as exc:  # noqa: BLE001 - DALI not installed, or its pipeline fails
            return [("data", setting, f"DataLoader {torch_rate:.0f} img/s", "-", "-",
                     "DALI > DataLoader", f"FAILED: {type(exc).__name__}: {exc}"[:120])]
    ratio = dali_rate / torch_rate
    log(f"data: DataLoader {torch_rate:.0f} img/s, DALI {dali_rate:.0f} img/s")
    return [("data", setting, f"DataLoader {torch_rate:.0f} img/s", f"DALI {dali_rate:.0f} img/s",
             f"{ratio:.2f}", "DALI > DataLoader", "ok" if ratio > 1 else "DALI slower")]


def eligible_layers(folded: torch.nn.Module) -> list[str]:
    """The layers a 2:4 kernel can take: linears and 1×1 convs whose weight is 2:4 along the
    input channels (what :func:`maxq.kernels24.semi_structured_linearize` converts, shape limits
    aside)."""
    names = []
    for name, m in folded.named_modules():
        if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d)
                                              and m.kernel_size == (1, 1) and m.groups == 1):
            w = m.weight.detach().reshape(m.weight.shape[0], -1)
            if w.shape[1] % 4 == 0 and int((w != 0).reshape(-1, 4).sum(1).max()) <= 2:
                names.append(name)
    return names


def check_sparse24(device, *, arch, size, batch, log) -> list[tuple]:
    from maxq import kernels24

    folded = sparse.fold(build(arch, "SoftSRSTEConv2dBN").eval())   # masks of the init weights
    names = eligible_layers(folded)
    ok, reason = kernels24.sparse24_support()
    if not ok:
        return [("2:4 kernels", f"folded {arch} 2:4: {len(names)} eligible layers", "-", "-",
                 "-", "2:4 < dense", f"n/a ({reason.split(';')[0][:60]})")]
    report = kernels24.sparse24_check(folded, None, image_size=size, in_channels=3,
                               batch_sizes=(batch,), log=log)
    rows = []
    for r in report["rows"]:
        rows.append(("2:4 kernels", f"folded {arch} {r['dtype']} b{r['batch']}: "
                                    f"{r['converted_layers']}/{len(names)} layers",
                     f"dense {r['dense_ms']:.2f} ms", f"2:4 {r['sparse_ms']:.2f} ms",
                     f"{r['sparse_ms'] / r['dense_ms']:.2f}", "2:4 < dense",
                     f"ok (max rel diff {r['max_rel_diff']:.1e})" if r["speedup"] > 1
                     else f"2:4 slower (max rel diff {r['max_rel_diff']:.1e})"))
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ddp(device, *, arch, size, batch, warmup, steps, log) -> list[tuple]:
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1, **({"device_id": device} if backend == "nccl" else {}))
    try:
        model = build(arch, "SoftMaxQConv2DBN").to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        amp = "bf16" if device.type == "cuda" else "off"
        ms = _median_ms(train_step(ddp, device, amp, device.type == "cuda", batch, size), device,
                        warmup, steps)
        ok = all(torch.isfinite(p).all() for p in model.parameters())
    finally:
        dist.destroy_process_group()
    log(f"DDP {backend} 1 process: {ms:.1f} ms/step")
    return [("DDP", f"1-process {backend}, MaxQ {arch} b{batch}", "-", f"{ms:.1f} ms/step", "-",
             "runs", "ok" if ok else "FAILED: non-finite weights")]


def check_train_and_onnx(device, *, log) -> list[tuple]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    rows = []
    with tempfile.TemporaryDirectory(prefix="maxq-gpu-check-") as tmp:
        run = Path(tmp) / "run"
        train = subprocess.run(
            [sys.executable, "-m", "maxq", "train", "--set", "FashionMNIST", "-a", "resnet18",
             "--conv-bn-type", "SoftSRSTEConv2dBN", "--image-size", "16", "--train-subset", "64",
             "--val-subset", "32", "-b", "32", "--epochs", "1", "--workers", "0", "--device",
             device.type, "--no-progress", "--save_dir", str(run)],
            env=env, capture_output=True, text=True, timeout=600)
        ok = train.returncode == 0
        rows.append(("train", f"maxq train on {device.type} (amp auto), SR-STE 2:4, 1 epoch",
                     "-", "-", "-",
                     "finishes", "ok" if ok else f"FAILED: {train.stderr.strip()[-100:]}"))
        if not ok:
            return rows
        out = subprocess.run([sys.executable, "-m", "maxq", "export", str(run), "--format",
                              "onnx", "--out", str(Path(tmp) / "model.onnx")],
                             env=env, capture_output=True, text=True, timeout=600)
        match = re.search(r"onnxruntime vs PyTorch: max abs diff (\S+)", out.stdout + out.stderr)
        status = "ok" if out.returncode == 0 and match else (
            f"FAILED: {(out.stderr or out.stdout).strip()[-100:]}")
        rows.append(("ONNX", "maxq export --format onnx, onnxruntime", "-",
                     f"max abs diff {match.group(1)}" if match else "-", "-", "matches", status))
    log(f"train + ONNX: {rows[-1][-1]}")
    return rows


def format_table(rows: list[tuple]) -> str:
    lines = [HEADER, tuple("-" * len(h) for h in HEADER)] + [tuple(map(str, r)) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
                     for line in lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="run the CPU-side parts at toy sizes (what the tests run)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["masks", "no-sync", "train-step", "refresh", "data",
                                 "sparse24", "ddp", "onnx"])
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine, nothing checked (run it where a GPU "
              "is; --cpu runs its CPU-side parts at toy sizes)")
        return 0
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    if args.cpu:
        sizes = dict(arch="resnet18", size=16, batch=4, warmup=1, steps=1)
        data = dict(images=20, size=16, batch=4, workers=0)
        where = f"CPU ({os.cpu_count()} cores), toy sizes"
    else:
        torch.backends.cudnn.benchmark = True
        sizes = dict(arch="resnet50", size=224, batch=128, warmup=5, steps=20)
        data = dict(images=2560, size=224, batch=128, workers=8)
        where = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    log = (lambda message: print(f"  {message}", file=sys.stderr, flush=True))
    start = time.perf_counter()
    rows: list[tuple] = []
    if "masks" not in args.skip:
        rows += check_masks_match_cpu(device, log=log)
    if "no-sync" not in args.skip:
        rows += check_no_sync(device, arch=sizes["arch"], size=sizes["size"],
                              batch=sizes["batch"], log=log)
    if "train-step" not in args.skip:
        rows += check_train_steps(device, log=log, **sizes)
    if "refresh" not in args.skip:
        rows += check_refresh(device, log=log, **sizes)
    if "data" not in args.skip:
        rows += check_data(device, log=log, **data)
    if "sparse24" not in args.skip:
        rows += check_sparse24(device, arch=sizes["arch"], size=sizes["size"],
                               batch=sizes["batch"], log=log)
    if "ddp" not in args.skip:
        rows += check_ddp(device, log=log, **sizes)
    if "onnx" not in args.skip:
        rows += check_train_and_onnx(device, log=log)
    table = format_table(rows)
    text = (f"gpu_check on {where}, {time.strftime('%Y-%m-%d')}, "
            f"{time.perf_counter() - start:.0f} s\n\n{table}\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    failed = [r for r in rows if str(r[-1]).startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
