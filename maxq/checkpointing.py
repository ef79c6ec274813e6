"""The records of a training run (all through :mod:`maxq.records`, atomic): config.json of a fresh
run, a resumed run's state from checkpoint.pth (refused when another configuration wrote it), the
files of every finished epoch (metrics.jsonl and layers.jsonl rows, mask snapshot, best.pth,
checkpoint.pth) and result.json; plus the environment and mask checksum they carry."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch import nn

import maxq
from maxq import data as maxq_data
from maxq import methods, provenance, records, sparse
from maxq.config import TrainConfig
from maxq.distributed import Runtime
from maxq.random_states import rng_state, set_rng_state
from maxq.run_claim import _run_files

def load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """A checkpoint.pth (``weights_only=True``), refused when it was written by another config."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load --resume checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "epoch" not in ckpt:
        raise ValueError(f"{path} is not a maxq training checkpoint")
    stored, wanted = ckpt["config"], cfg.fingerprint()
    diffs = [f"{k} {stored.get(k)!r} there, {wanted.get(k)!r} now"
             for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    if diffs:
        raise ValueError(f"--resume {path} was written by another configuration "
                         f"({'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}); "
                         f"use --overwrite to start again")
    diffs = config_json_mismatch(path.parent, cfg)
    if diffs:
        raise ValueError(f"--resume: {path.parent / records.CONFIG} was written by another "
                         f"configuration than the command ({'; '.join(diffs[:4])}"
                         f"{' ...' if len(diffs) > 4 else ''}); use --overwrite to start again")
    return ckpt


def config_json_mismatch(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """The options (those compared on resume) where ``run_dir``'s config.json differs from
    ``cfg``: one text each; none when config.json agrees or is absent. Issue 27: a folder mixing
    a 2:4 config.json with a 1:4 checkpoint resumed and finished as 1:4."""
    if not (run_dir / records.CONFIG).exists():
        return []
    try:
        stored = records.read_config(run_dir)
    except (records.RunRecordError, OSError, ValueError) as exc:
        return [f"config.json unreadable: {exc}"]
    wanted = json.loads(json.dumps(cfg.fingerprint(), default=str))
    return [f"{k} {stored.get(k)!r} there, {v!r} now" for k, v in sorted(wanted.items())
            if k in stored and stored[k] != v]


def run_environment(rt: Runtime) -> dict[str, Any]:
    """Versions and device, for config.json."""
    # CPU model and flags, torch build (BLAS, oneDNN), threads, git state, host hash: computed
    # once (git runs twice in a subprocess), the older top-level tables take theirs from it
    prov = provenance.provenance()
    device = {"type": rt.device.type, "world_size": rt.world_size,
              "amp": str(rt.amp_dtype).removeprefix("torch.") if rt.amp_dtype else "off",
              "threads": torch.get_num_threads(),
              "host_sha256": prov["host_sha256"],
              "cpu": platform.processor() or platform.machine()}
    if rt.device.type == "cuda":
        device["name"] = torch.cuda.get_device_name(rt.device)
        device["capability"] = list(torch.cuda.get_device_capability(rt.device))
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__,
                     "maxq": maxq.__version__, "cuda": torch.version.cuda,
                     "cudnn": (torch.backends.cudnn.version() if torch.cuda.is_available()
                               else None)},
        "git": prov["git"],
        "device": device,
        "provenance": prov,
        "command": list(sys.argv),
    }


def mask_checksum(model: nn.Module) -> str:
    """SHA-256 over every sparse layer's stored mask (names in order, float32 bytes)."""
    digest = hashlib.sha256()
    for name, mask in sorted(sparse.current_masks(model).items()):
        digest.update(name.encode())
        digest.update(mask.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

@dataclasses.dataclass
class Progress:
    """What a run carries from epoch to epoch besides weights and optimizer (and what
    checkpoint.pth stores of it): the next epoch, the best and the last evaluation, the wall time
    of earlier sessions and the previous epoch's hard masks (for ``flipped``)."""
    start_epoch: int = 0
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    wall_before: float = 0.0
    previous_hard: dict[str, torch.Tensor] | None = None


def open_records(run_dir: Path, cfg: TrainConfig, rt: Runtime, *, spec: methods.MethodSpec,
                 loaders: maxq_data.Loaders, layer_table: list[dict[str, Any]],
                 checkpoint: dict[str, Any] | None, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> Progress:
    """A fresh run starts its directory with config.json; a resumed one restores the optimizer,
    the scaler and every RNG from ``checkpoint`` and forgets the records of the lost epoch."""
    if checkpoint is None:
        if rt.is_main:
            for path in _run_files(run_dir):       # only with --overwrite or --resume of nothing
                path.unlink()
            records.write_json(run_dir / records.CONFIG, {
                "args": cfg.to_dict(), **run_environment(rt),
                "method": dataclasses.asdict(spec),
                "data": {"set": cfg.set, "train_size": loaders.train_size,
                         "val_size": loaders.val_size, "num_classes": loaders.spec.num_classes,
                         "in_channels": loaders.spec.in_channels,
                         "image_size": loaders.spec.image_size},
                "layers": layer_table,
                "dead_weight_share": sparse.weighted_dead_share(layer_table),
                "started": datetime.now().isoformat(timespec="seconds"),
            })
        return Progress()
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    for name, state in checkpoint.get("sparse_rng", {}).items():
        sparse.sparse_layers(model)[name].maxq.generator.set_state(state)
    set_rng_state(checkpoint["rng"])
    if rt.is_main:
        for name in (records.METRICS, records.LAYERS):
            records.truncate_jsonl(run_dir / name, checkpoint["epoch"])
        for epoch in records.mask_snapshot_epochs(run_dir):
            if epoch > checkpoint["epoch"]:
                (run_dir / records.MASKS / f"epoch_{epoch:03d}.npz").unlink()
    return Progress(start_epoch=int(checkpoint["epoch"]) + 1, best=checkpoint["best"],
                    last=checkpoint["last"], wall_before=float(checkpoint["wall_seconds"]),
                    previous_hard=checkpoint["previous_hard"])


def record_epoch(run_dir: Path, cfg: TrainConfig, *, epoch: int, metrics: dict[str, Any],
                 layer_stats: dict[str, dict], snapshot: bool, improved: bool, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 progress: Progress, hard: dict[str, torch.Tensor] | None,
                 wall_seconds: float) -> None:
    """Rank 0's files of a finished epoch, in this order: the metrics.jsonl row, the
    layers.jsonl rows, the mask snapshot, best.pth (when top-1 improved), checkpoint.pth."""
    records.append_jsonl(run_dir / records.METRICS, [{"epoch": epoch, **metrics}])
    records.append_jsonl(run_dir / records.LAYERS, [
        {"epoch": epoch, "layer": name, **stats} for name, stats in layer_stats.items()])
    if snapshot and layer_stats:
        records.save_mask_snapshot(run_dir, epoch, sparse.current_masks(model))
    if improved:
        records.save_torch(run_dir / records.BEST, {
            "state_dict": model.state_dict(), "epoch": epoch, "top1": metrics["val_top1"],
            "top5": metrics["val_top5"], "arch": cfg.arch, "config": cfg.fingerprint()})
    records.save_torch(run_dir / records.CHECKPOINT, {
        "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(), "epoch": epoch, "best": progress.best,
        "last": progress.last, "config": cfg.fingerprint(), "wall_seconds": wall_seconds,
        "rng": rng_state(), "previous_hard": hard,
        "sparse_rng": {name: m.maxq.generator.get_state() for name, m in
                       sparse.sparse_layers(model).items() if m.maxq.generator is not None},
    })


def finish_run(run_dir: Path, cfg: TrainConfig, rt: Runtime, model: nn.Module,
               progress: Progress, wall_seconds: float) -> dict[str, Any]:
    """result.json (the run is finished): best and last evaluation, wall time and the final mask
    checksum of every rank."""
    checksums = [mask_checksum(model)]
    if rt.distributed:
        gathered: list[Any] = [None] * rt.world_size
        dist.all_gather_object(gathered, checksums[0])
        checksums = gathered
    best, last = progress.best, progress.last
    result = {"best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best["epoch"],
              "last_top1": last["top1"], "last_top5": last["top5"], "epochs": cfg.epochs,
              "wall_seconds": wall_seconds, "world_size": rt.world_size,
              "mask_checksums": checksums}
    if rt.is_main:
        records.write_json(run_dir / records.RESULT, result)
    return result

def end_epoch(run_dir: Path, cfg: TrainConfig, rt: Runtime, *, epoch: int, lr: float,
              tr: dict[str, float], va: dict[str, float], seconds: float, snapshot: bool,
              model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              progress: Progress, started: float) -> float | None:
    """Close a trained and evaluated epoch: the masks' statistics (``flipped`` against the
    previous epoch's hard masks), the best and last evaluation in ``progress``, and, on rank 0,
    the epoch's files (:func:`record_epoch`). Returns the share of N:M blocks (None: dense)."""
    layer_stats, hard = sparse.mask_stats(model, progress.previous_hard)
    nm_share = sparse.nm_share(model, layer_stats)
    progress.last = {"top1": va["top1"], "top5": va["top5"], "epoch": epoch}
    improved = progress.best is None or va["top1"] > progress.best["top1"]
    if improved:
        progress.best = dict(progress.last)
    if rt.is_main:
        record_epoch(run_dir, cfg, epoch=epoch, metrics={
            "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"],
            "train_top5": tr["top5"], "val_loss": va["loss"], "val_top1": va["top1"],
            "val_top5": va["top5"], "seconds": seconds,
            "images_per_s": tr["images_per_s"], "nm_share": nm_share,
            "step_seconds": tr["step_seconds"],
            "density": sparse.density(model)},
            layer_stats=layer_stats, snapshot=snapshot, improved=improved,
            model=model, optimizer=optimizer, scaler=scaler,
            progress=progress, hard=hard,
            wall_seconds=progress.wall_before + time.perf_counter() - started)
    progress.previous_hard = hard
    return nm_share
