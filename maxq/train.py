"""The training loop: ``train(config) -> run_dir``, ``evaluate(config)``, resume and DDP.

Read it top to bottom like torchvision's ``references/classification/train.py``: the pieces of
one run (random states, logging and meters, model and optimizer, one epoch of training, one pass
of evaluation, the run directory and its checkpoints), then :func:`train` and :func:`evaluate`,
which put them together. The options are :class:`maxq.config.TrainConfig`; processes, devices and
synchronised BatchNorm are :mod:`maxq.distributed`.

**Epochs are numbered from 0, as in the seed's logs and the schedules.** Training epoch ``t``
(``t = 0 .. epochs-1``) runs with the dense fraction ``rho(t)`` of ``maxq.schedules.dense_fraction``
and the learning rate ``lr_at(t)``. Every record uses that same ``t``: the ``epoch`` of a
metrics.jsonl / layers.jsonl row is the epoch just finished, ``masks/epoch_000.npz`` holds the
masks after the first epoch, ``best_epoch`` in result.json is a ``t``, and checkpoint.pth's
``epoch`` is the last finished one (training resumes at ``epoch + 1``). ``result.json``'s
``epochs`` is the count of finished epochs.

Per epoch ``t``: reseed every RNG from ``(seed, t)``; set ``rho(t)`` on the sparse layers (0 for
methods that are not incremental) and the learning rate; train (the sparse layers recompute their
mask on every training forward; SR-STE decay after backward, after AMP unscale, before the
step); recompute every mask from the epoch's final weights (as the authors do before
validating and saving); optionally recompute BatchNorm statistics (``recalibrate_bn``); evaluate
with those masks; then, on rank 0, append the metrics.jsonl
row and the layers.jsonl rows (``flipped`` is measured against the previous epoch's hard masks, or
null for the first epoch), write the mask snapshot when ``t`` is a snapshot epoch (every
``snapshot_epochs``-th, i.e. ``(t + 1) % k == 0``, or the listed ones; always the first and the
last), best.pth when top-1 improved and finally checkpoint.pth. Every file goes through :mod:`maxq.records` (atomic).

Reproducibility: on CPU the run is deterministic (``torch.use_deterministic_algorithms``, data
order and augmentation are functions of ``(seed, epoch, rank)`` in :mod:`maxq.data`, the global
RNGs are reseeded at the start of every epoch), so a run resumed after ``kill -9`` ends with the
same metrics as an uninterrupted one. Checkpoints also carry the RNG states, restored on resume.

Multi-GPU / multi-process: launched by ``torchrun`` (``WORLD_SIZE > 1``, see
:mod:`maxq.distributed`), ``batch_size`` is the GLOBAL batch (each process takes
``batch_size // world_size``), the data are sharded like ``DistributedSampler``, the model is
wrapped in ``DistributedDataParallel`` and, by default (``sync_bn=None``), BatchNorm statistics are
synchronised over the processes so that K processes compute what one process with the same
global batch computes. Metrics are summed over ranks; only rank 0 writes files. The masks are
computed on every rank from the same (all-reduced) weights, so they are identical: the final mask
checksums of all ranks are stored in result.json (``mask_checksums``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
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
from maxq import methods, models, provenance, records, schedules, sparse
from maxq.config import TrainConfig, snapshot_epochs
from maxq.distributed import (Runtime, all_reduce_sum, barrier, convert_sync_batchnorm,
                              setup_runtime, teardown_runtime)


# ============================================================================ random states
def seed_everything(seed: int, *parts: int) -> None:
    """Seed python, numpy and torch (all devices) from ``(seed, *parts)``."""
    s = int(np.random.SeedSequence([int(seed), *map(int, parts)]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ============================================================================ logging
class RunLog:
    """Seed-style log lines ``[YYYY-mm-dd HH:MM:SS] ...`` into log.txt and to stdout (rank 0)."""

    def __init__(self, path: Path | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.bar = None  # a live tqdm bar: write through it so it is not torn

    def __call__(self, message: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"[{stamp}] {line}" for line in str(message).splitlines() or [""]]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        if echo:
            if self.bar is not None:
                for line in lines:
                    self.bar.write(line)
            else:
                print("\n".join(lines), flush=True)


class Meter:
    """Running sums of loss and top-1/top-5 hits, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, hit1, hit5, n

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(target.view(-1, 1))
        self.sums += torch.stack([loss.detach().double() * n, hits[:, :1].sum().double(),
                                  hits.sum().double(), torch.tensor(n, dtype=torch.float64,
                                                                    device=hits.device)])

    def totals(self, rt: Runtime | None = None) -> dict[str, float]:
        """Mean loss and top-1/top-5 in percent, summed over all processes when ``rt`` is given."""
        values = self.sums.tolist()
        if rt is not None:
            values = all_reduce_sum(rt, values)
        loss, hit1, hit5, n = values
        n = max(n, 1.0)
        return {"loss": loss / n, "top1": 100.0 * hit1 / n, "top5": 100.0 * hit5 / n,
                "images": int(round(values[3]))}


# ============================================================================ data, model, optimizer
def build_loaders(cfg: TrainConfig, rt: Runtime, *, drop_last: bool) -> maxq_data.Loaders:
    """This process's share of the data: ``batch_size`` is global, each rank takes 1/K of it."""
    return maxq_data.build_loaders(
        cfg.set, cfg.data, batch_size=max(1, cfg.batch_size // rt.world_size),
        workers=cfg.workers, image_size=cfg.image_size, train_subset=cfg.train_subset,
        val_subset=cfg.val_subset, seed=cfg.seed, distributed=rt.distributed, rank=rt.rank,
        world_size=rt.world_size, device=str(rt.device), drop_last=drop_last,
        lighting=cfg.lighting)


def place(model: nn.Module, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    """The model on this process's device, in channels_last when asked; returns it."""
    model.to(rt.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int,
                pretrained: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Stock architecture, optional dense pretrained weights, then the method's sparse layers."""
    model = models.build(cfg.arch, num_classes, in_channels=in_channels,
                         small_input=bool(cfg.small_input), width_mult=float(cfg.width_mult))
    has_masks = pretrained is not None and any(k.endswith("weight_mask") for k in pretrained)
    if pretrained is not None and not has_masks:
        # dense weights go in before sparsify: the first masks (ASP's frozen one) come from them
        _load_state(model, pretrained)
    sparse.sparsify(model, cfg.conv_bn_type, cfg.N, cfg.M, tau=cfg.tau, seed=cfg.seed)
    if pretrained is not None and has_masks:
        _load_state(model, pretrained)
    return model


def read_weights(path: str | os.PathLike, cfg: TrainConfig | None = None
                 ) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (ours, the seed's ``{"state_dict": ...}`` or a bare
    state dict), loaded with ``weights_only=True``; a DDP ``module.`` prefix is dropped. With
    ``cfg``, an authors' released checkpoint is mapped onto the kit's model of ``cfg.arch`` at
    ``cfg.N:cfg.M`` (:mod:`maxq.official`: numpy-1 scalars allowed, ``_orig_mod.`` dropped,
    every key checked)."""
    from maxq import official

    if cfg is not None:
        obj = official.safe_load(path)
        try:
            state, meta = official.unwrap(obj, str(path))
        except official.OfficialCheckpointError:
            state, meta = {}, {}               # not a state dict: said below
        if official.is_official_state(state):
            return official.kit_state_for(path, state, meta, cfg.arch, cfg.N, cfg.M,
                                          cfg.conv_bn_type)
    else:
        try:
            obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint not found: {path}") from None
        except Exception as exc:  # pickle/zip errors: say which file, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot load checkpoint {path}: {first}") from None
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no model state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` whose mismatch is one line naming a few keys."""
    result = model.load_state_dict(state, strict=False)
    missing = result.missing_keys
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if result.unexpected_keys:
            extra = result.unexpected_keys
            parts.append(f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else ""))
        raise ValueError(f"checkpoint does not fit --arch/--set/--conv-bn-type: {'; '.join(parts)}")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD; with ``no_bn_decay`` the 1-D parameters (BatchNorm, biases) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if cfg.no_bn_decay and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def dense_fraction(cfg: TrainConfig, epoch: int) -> float:
    """rho(t) of the incremental schedule; 0 for methods that are not incremental."""
    if not methods.METHODS[cfg.conv_bn_type].incremental:
        return 0.0
    return float(schedules.dense_fraction(epoch, cfg.increase_start, cfg.increase_end,
                                          cfg.prune_schedule))


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    return float(schedules.lr_at(float(epoch), cfg.lr, cfg.epochs, cfg.warmup_length,
                                 kind=cfg.lr_policy))


# ============================================================================ one epoch
def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, loader, *, epoch: int, cfg: TrainConfig,
                    rt: Runtime, log: RunLog, srste: bool) -> dict[str, float]:
    """One pass over the training data; returns loss/top1/top5 (all processes) and timing."""
    model.train()
    meter = Meter(rt.device)
    steps = len(loader)
    bar = None
    if cfg.progress and rt.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="batch", leave=False,
                   dynamic_ncols=True, file=sys.stderr)
        log.bar = bar
    start = time.perf_counter()
    seen = 0
    try:
        for step, (images, target) in enumerate(loader):
            images = images.to(rt.device, non_blocking=True)
            target = target.to(rt.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(rt):
                output = model(images)
                loss = criterion(output, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)            # true gradients before the SR-STE term
            if srste:
                sparse.srste_decay_(model, cfg.decay)
            scaler.step(optimizer)
            scaler.update()
            meter.update(loss, output.float(), target)
            seen += target.shape[0] * rt.world_size
            if (step + 1) % cfg.print_freq == 0 or step + 1 == steps:
                so_far = meter.totals()
                rate = seen / max(time.perf_counter() - start, 1e-9)
                log(f"Epoch: [{epoch}][{step + 1}/{steps}]\tLoss {so_far['loss']:.4f}\t"
                    f"Prec@1 {so_far['top1']:.3f}\tPrec@5 {so_far['top5']:.3f}\t"
                    f"{rate:.1f} images/s", echo=bar is None)
                if bar is not None:
                    bar.set_postfix(loss=f"{so_far['loss']:.3f}", top1=f"{so_far['top1']:.1f}",
                                    img_s=f"{rate:.0f}", refresh=False)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
            log.bar = None
    seconds = time.perf_counter() - start
    stats = meter.totals(rt)
    if not math.isfinite(stats["loss"]):
        raise FloatingPointError(f"training loss is {stats['loss']} in epoch {epoch}; stopping "
                                 f"before the checkpoint is overwritten")
    stats["seconds"] = seconds
    stats["images_per_s"] = stats["images"] / max(seconds, 1e-9)
    stats["step_seconds"] = seconds / max(steps, 1)     # mean time of one training step
    return stats


@torch.no_grad()
def evaluate_model(model: nn.Module, criterion: nn.Module, loader, *, rt: Runtime,
                   channels_last: bool = False, log: RunLog | None = None,
                   print_freq: int = 100) -> dict[str, float]:
    """Loss and top-1/top-5 (percent) over the validation data, summed over all processes; the
    seed's ``Test: [i/n] ... Prec@1 ... Prec@5`` lines go to ``log``."""
    model.eval()
    meter = Meter(rt.device)
    steps = len(loader)
    for step, (images, target) in enumerate(loader):
        images = images.to(rt.device, non_blocking=True)
        target = target.to(rt.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(rt):
            output = model(images)
            loss = criterion(output.float(), target)
        meter.update(loss, output.float(), target)
        if log is not None and ((step + 1) % print_freq == 0):
            so_far = meter.totals()
            log(f"Test: [{step + 1}/{steps}]\tLoss {so_far['loss']:.4f}\t"
                f"Prec@1 {so_far['top1']:.3f}\tPrec@5 {so_far['top5']:.3f}", echo=False)
    stats = meter.totals(rt)
    if log is not None:
        log(f" * Prec@1 {stats['top1']:.3f} Prec@5 {stats['top5']:.3f} "
            f"Error@1 {100 - stats['top1']:.3f}")
    return stats


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, batches: int, *, rt: Runtime,
                          channels_last: bool = False) -> int:
    """Recompute every BatchNorm's running statistics from ``batches`` training batches
    ("precise BN"): reset them, then average the batch statistics with equal weights
    (``momentum=None``). Only the BN layers run in training mode; the sparse layers stay in
    eval mode, so their stored masks are used and nothing else changes. Returns the batches used.

    Why: evaluation uses running statistics, an exponential average with BN's momentum. With
    torchvision's MobileNetV3 (momentum 0.01) a run of a few hundred steps leaves them far from
    the network's current statistics, and evaluation sits at chance though training learns."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in norms}
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    used = 0
    try:
        for images, _ in loader:
            if used >= batches:
                break
            images = images.to(rt.device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(rt):
                model(images)
            used += 1
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return used


def _autocast(rt: Runtime):
    if rt.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=rt.amp_dtype)


# ============================================================================ run directory
def _run_files(run_dir: Path) -> list[Path]:
    names = (records.CONFIG, records.METRICS, records.LAYERS, records.CHECKPOINT, records.BEST,
             records.RESULT, records.LOG)
    files = [run_dir / n for n in names if (run_dir / n).exists()]
    return files + sorted((run_dir / records.MASKS).glob("epoch_*.npz"))


def plan_run_dir(cfg: TrainConfig) -> Path | None:
    """Decide what to do with ``save_dir`` before anything is written: the checkpoint to resume
    from (None: start afresh). Refuses (``ValueError``) to touch a finished or unfinished run
    unless ``resume``/``overwrite`` says so."""
    run_dir = Path(cfg.save_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--save_dir {run_dir} exists and is not a directory")
    if cfg.overwrite:
        return None
    if records.is_finished(run_dir):
        raise ValueError(f"{run_dir} holds a finished run ({records.RESULT}); nothing was "
                         f"changed: use --overwrite to train it again or another --save_dir")
    checkpoint = run_dir / records.CHECKPOINT
    if isinstance(cfg.resume, str):
        checkpoint = Path(cfg.resume)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume checkpoint not found: {checkpoint}")
        if checkpoint.resolve().parent != run_dir.resolve():
            raise ValueError(f"--resume {checkpoint} is not in --save_dir {run_dir}; pass "
                             f"--save_dir {checkpoint.parent}")
    if cfg.resume:
        return checkpoint if checkpoint.is_file() else None
    if _run_files(run_dir):
        hint = "--resume to continue it" if checkpoint.is_file() else "--resume to restart it"
        raise ValueError(f"{run_dir} holds an unfinished run; nothing was changed: use {hint} "
                         f"or --overwrite to start again")
    return None


class RunClaim:
    """What :func:`claim_run_dir` took: the run directory's lock (rank 0), and whether this run
    created the directory (removed again when the run leaves nothing in it)."""

    def __init__(self, run_dir: Path, lock: records.RunLock | None, created: bool,
                 fresh: bool):
        self.run_dir, self.lock, self.created, self.fresh = run_dir, lock, created, fresh

    def data_error(self, exc: Exception) -> None:
        """A bad data file stopped the run. Before the first checkpoint the files this run wrote
        are removed (a fixed rerun starts cleanly); after it they are kept and the message says
        how to go on."""
        if self.lock is None:
            return
        if (self.run_dir / records.CHECKPOINT).is_file():
            raise maxq_data.DataError(f"{exc}; the run in {self.run_dir} is kept: fix or remove that file, "
                            f"then continue it with --resume") from None
        if self.fresh:
            for path in _run_files(self.run_dir):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.lock is None:
            return
        self.lock.release()
        self.lock = None
        if self.created:
            for folder in (self.run_dir / records.MASKS, self.run_dir):
                try:
                    folder.rmdir()            # only when empty
                except OSError:
                    pass


def claim_run_dir(cfg: TrainConfig) -> tuple[Path | None, RunClaim]:
    """:func:`plan_run_dir` under the run directory's lock: one writer per run directory. Rank 0
    holds the lock until the run ends; a second process is refused ("in use by pid ...") before
    any other refusal. Stale temporaries of a killed atomic write are removed once locked."""
    run_dir = Path(cfg.save_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return plan_run_dir(cfg), RunClaim(run_dir, None, False, False)
    records.check_unlocked(run_dir)
    plan_run_dir(cfg)                         # refusals write nothing, not even the lock
    created = not run_dir.exists()
    lock = records.RunLock(run_dir).acquire()
    claim = RunClaim(run_dir, lock, created, fresh=True)
    try:
        resume_from = plan_run_dir(cfg)       # again: the previous holder may have finished it
        records.remove_stale_temporaries(run_dir)
    except BaseException:
        claim.close()
        raise
    claim.fresh = resume_from is None
    return resume_from, claim


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


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True,
                                    timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def run_environment(rt: Runtime) -> dict[str, Any]:
    """Versions and device, for config.json."""
    device = {"type": rt.device.type, "world_size": rt.world_size,
              "amp": str(rt.amp_dtype).removeprefix("torch.") if rt.amp_dtype else "off",
              "threads": torch.get_num_threads(),
              "host_sha256": provenance.host_hash(),
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
        "git": _git_commit(),
        "device": device,
        # CPU model and flags, torch build (BLAS, oneDNN), threads, host hash: maxq.provenance
        "provenance": provenance.provenance(),
        "command": list(sys.argv),
    }


def mask_checksum(model: nn.Module) -> str:
    """SHA-256 over every sparse layer's stored mask (names in order, float32 bytes)."""
    digest = hashlib.sha256()
    for name, mask in sorted(sparse.current_masks(model).items()):
        digest.update(name.encode())
        digest.update(mask.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ============================================================================ the run's records
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


# ============================================================================ train
def train(config: TrainConfig) -> Path:
    """Train (or, with ``config.evaluate``, only evaluate) one run; return its run directory.

    Open the run (claim its directory, runtime, data, model, optimizer, records), train its
    epochs (each: schedule, one epoch, masks from the final weights, BatchNorm, evaluation,
    records), then finish it (result.json)."""
    if config.evaluate:
        evaluate(config)
        return Path(config.resolved().save_dir)
    config.validate()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = config.resolved(world_size)
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) is not divisible by the "
                         f"{world_size} processes")
    resume_from, claim = claim_run_dir(cfg)  # refuses before anything is written; locks it
    run_dir = Path(cfg.save_dir)
    try:
        rt = setup_runtime(cfg.device, cfg.amp)
    except BaseException:
        claim.close()
        raise
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        barrier(rt)                           # every rank has checked save_dir before rank 0 writes
        torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=True)
        if rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        seed_everything(cfg.seed)
        spec = methods.METHODS[cfg.conv_bn_type]

        # data (errors surface here, before anything is written)
        loaders = build_loaders(cfg, rt, drop_last=True)

        # model: weights from --pretrained, masks from sparsify, then DDP
        pretrained = read_weights(cfg.pretrained, cfg) if cfg.pretrained else None
        model = build_model(cfg, loaders.spec.num_classes, loaders.spec.in_channels, pretrained)
        size = int(loaders.spec.image_size)
        layer_table = sparse.describe(model, input_size=(1, loaders.spec.in_channels, size, size))
        checkpoint = load_checkpoint(resume_from, cfg) if resume_from is not None else None
        if checkpoint is not None:
            model.load_state_dict(checkpoint["state_dict"])
        if cfg.sync_bn and rt.distributed:
            model = convert_sync_batchnorm(model, rt.device)
        place(model, cfg, rt)
        model_without_ddp = model
        if rt.distributed:
            # with synchronised BatchNorm every buffer (running statistics, masks) is computed
            # alike on every rank: no need to broadcast rank 0's before each forward
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                broadcast_buffers=not cfg.sync_bn)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        optimizer = build_optimizer(cfg, model_without_ddp)
        scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

        # records: config.json of a fresh run, or the state of the resumed one
        log = RunLog(run_dir / records.LOG, enabled=rt.is_main)
        progress = open_records(run_dir, cfg, rt, spec=spec, loaders=loaders,
                                layer_table=layer_table, checkpoint=checkpoint,
                                model=model_without_ddp, optimizer=optimizer, scaler=scaler)
        log(f"{'resuming' if checkpoint else 'starting'} {run_dir} at epoch "
            f"{progress.start_epoch}: {cfg.arch} {cfg.conv_bn_type} {cfg.N}:{cfg.M} on {cfg.set} "
            f"({loaders.train_size} train / {loaders.val_size} val images), {rt.device.type} x "
            f"{rt.world_size}, amp {cfg.amp}")
        log(sparse.format_table(layer_table))
        if spec.incremental and cfg.increase_end >= cfg.epochs:
            log(f"WARNING: --increase-end {cfg.increase_end} >= --epochs {cfg.epochs}: the last "
                f"epoch still keeps dense blocks, the final model is not fully {cfg.N}:{cfg.M}")
        decay_on = cfg.decay_type == "v1"
        if not decay_on:
            log(f"WARNING: --decay-type {cfg.decay_type} applies no SR-STE decay (in the authors' "
                f"code it calls a method no layer defines): this run equals --decay 0")
        snapshot_at = snapshot_epochs(cfg.snapshot_epochs, cfg.epochs)
        sparse.set_mask_interval(model_without_ddp, cfg.mask_interval,
                                 forwards=progress.start_epoch * len(loaders.train))
        started = time.perf_counter()

        # epochs
        for epoch in range(progress.start_epoch, cfg.epochs):
            seed_everything(cfg.seed, epoch)
            loaders.train.set_epoch(epoch)
            rho = dense_fraction(cfg, epoch)
            sparse.set_dense_fraction(model_without_ddp, rho)
            sparse.start_epoch(model_without_ddp, epoch, cfg.epochs)   # LBC's schedule
            lr = learning_rate(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            epoch_start = time.perf_counter()
            tr = train_one_epoch(model, criterion, optimizer, scaler, loaders.train, epoch=epoch,
                                 cfg=cfg, rt=rt, log=log,
                                 srste=spec.sparse and spec.srste_decay and decay_on)
            # as the authors do after every epoch (show_zero_num_and_update_mask): recompute
            # every mask from the epoch's final weights, so evaluation, statistics, snapshots
            # and checkpoints all use the mask of the weights they store
            sparse.refresh_masks(model_without_ddp)
            if cfg.recalibrate_bn:
                loaders.train.set_epoch(epoch)
                recalibrate_batchnorm(model_without_ddp, loaders.train, cfg.recalibrate_bn, rt=rt,
                                      channels_last=bool(cfg.channels_last))
            # without the DDP wrapper: ranks may hold different numbers of val batches
            va = evaluate_model(model_without_ddp, criterion, loaders.val, rt=rt,
                                channels_last=bool(cfg.channels_last), log=log,
                                print_freq=cfg.print_freq)
            bad = {k: va[k] for k in ("loss", "top1", "top5") if not math.isfinite(va[k])}
            if bad:                           # diverged: failed, not a result (issue 27)
                raise FloatingPointError(
                    f"validation {', '.join(f'{k} is {v}' for k, v in bad.items())} in epoch "
                    f"{epoch} (training loss {tr['loss']:.4g}): the run diverged; stopping "
                    f"before its records or checkpoint are written")
            seconds = time.perf_counter() - epoch_start
            layer_stats, hard = sparse.mask_stats(model_without_ddp, progress.previous_hard)
            nm_share = sparse.nm_share(model_without_ddp, layer_stats)
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
                    "density": sparse.density(model_without_ddp)},
                    layer_stats=layer_stats, snapshot=epoch in snapshot_at, improved=improved,
                    model=model_without_ddp, optimizer=optimizer, scaler=scaler,
                    progress=progress, hard=hard,
                    wall_seconds=progress.wall_before + time.perf_counter() - started)
            progress.previous_hard = hard
            log(f"Epoch [{epoch}/{cfg.epochs}] lr {lr:.5f} rho {rho:.3f} | train Loss "
                f"{tr['loss']:.4f} Prec@1 {tr['top1']:.3f} Prec@5 {tr['top5']:.3f} | val Loss "
                f"{va['loss']:.4f} Prec@1 {va['top1']:.3f} Prec@5 {va['top5']:.3f} | N:M share "
                f"{'-' if nm_share is None else f'{nm_share:.3f}'} | {seconds:.1f} s, "
                f"{tr['images_per_s']:.1f} images/s")
            barrier(rt)

        # finish: result.json
        result = finish_run(run_dir, cfg, rt, model_without_ddp, progress,
                            wall_seconds=progress.wall_before + time.perf_counter() - started)
        if len(set(result["mask_checksums"])) > 1:
            log(f"WARNING: the masks differ between processes: {result['mask_checksums']}")
        best, last = progress.best, progress.last
        log(f"finished: best Prec@1 {best['top1']:.3f} Prec@5 {best['top5']:.3f} (epoch "
            f"{best['epoch']}), last Prec@1 {last['top1']:.3f} Prec@5 {last['top5']:.3f}; "
            f"{run_dir}")
        barrier(rt)
        return run_dir
    except maxq_data.DataError as exc:
        claim.data_error(exc)                 # leaves the directory so that a rerun is accepted
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        teardown_runtime(rt)
        claim.close()


# ============================================================================ evaluate
#: what ``--evaluate`` takes from the stored config of the checkpoint it evaluates (flag names)
CHECKPOINT_DEFINES = {"arch": "--arch", "conv_bn_type": "--conv-bn-type", "N": "--N",
                      "M": "--M", "small_input": "--small-input"}


def checkpoint_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The :data:`CHECKPOINT_DEFINES` values a maxq checkpoint stores (its ``config``; best.pth
    also its ``arch``); empty for checkpoints without them (the seed's, bare state dicts)."""
    obj = None
    for mmap in (True, False):                # mmap: cheap; the legacy (non-zip) format has none
        try:
            from maxq import official     # also reads the authors' files (numpy-1 scalars)

            obj = official.safe_load(path, mmap=mmap)
            break
        except Exception:  # noqa: BLE001 - unreadable files are reported by read_weights
            continue
    if not isinstance(obj, dict):
        return {}
    stored = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    if "arch" not in stored and isinstance(obj.get("arch"), str):
        stored = {**stored, "arch": obj["arch"]}
    return {k: stored[k] for k in CHECKPOINT_DEFINES if k in stored}


def adopt_checkpoint_settings(config: TrainConfig, path: str | os.PathLike,
                              explicit: set[str] | None = None) -> TrainConfig:
    """``config`` with arch, method, N, M and stem taken from the checkpoint at ``path``. A value
    given explicitly (``explicit``: the fields set on the command line; None: those that differ
    from the defaults) that contradicts the checkpoint is an error naming both values."""
    stored = checkpoint_settings(path)
    if explicit is None:
        defaults = TrainConfig()
        explicit = {k for k in CHECKPOINT_DEFINES if getattr(config, k) != getattr(defaults, k)}
    clashes = [f"{CHECKPOINT_DEFINES[k]} {getattr(config, k)} but the checkpoint has "
               f"{CHECKPOINT_DEFINES[k]} {stored[k]}"
               for k in CHECKPOINT_DEFINES
               if k in stored and k in explicit and getattr(config, k) is not None
               and getattr(config, k) != stored[k]]
    if clashes:
        raise ValueError(f"--evaluate {path}: {'; '.join(clashes)}; drop the flag (the "
                         f"checkpoint's value is used) or evaluate another checkpoint")
    return dataclasses.replace(config, **stored)


def evaluate(config: TrainConfig, explicit: set[str] | None = None) -> dict[str, float]:
    """The seed's ``--evaluate --pretrained PATH``: top-1/top-5 of those weights on the
    validation data (the resume checkpoint when no ``pretrained``). Arch, method, N, M and stem
    come from the checkpoint when it stores them (see :func:`adopt_checkpoint_settings`;
    ``explicit``: the fields given on the command line). Writes nothing but log lines (appended
    to ``save_dir/log.txt`` when ``save_dir`` is given)."""
    config.validate()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = config.resolved(world_size)
    weights_path = cfg.pretrained
    if weights_path is None:
        weights_path = cfg.resume if isinstance(cfg.resume, str) else str(
            Path(cfg.save_dir) / records.CHECKPOINT)
    config = adopt_checkpoint_settings(config, weights_path, explicit).validate()
    cfg = config.resolved(world_size)
    rt = setup_runtime(cfg.device, cfg.amp)
    try:
        seed_everything(cfg.seed)
        loaders = build_loaders(cfg, rt, drop_last=False)
        model = place(build_model(cfg, loaders.spec.num_classes, loaders.spec.in_channels,
                                  read_weights(weights_path, cfg)), cfg, rt)
        log = RunLog(Path(config.save_dir) / records.LOG if config.save_dir else None,
                     enabled=rt.is_main)
        log(f"evaluating {weights_path}: {cfg.arch} {cfg.conv_bn_type} {cfg.N}:{cfg.M} on "
            f"{cfg.set} ({loaders.val_size} val images)")
        log(sparse.format_table(sparse.describe(model)))
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        return evaluate_model(model, criterion, loaders.val, rt=rt,
                              channels_last=bool(cfg.channels_last), log=log,
                              print_freq=cfg.print_freq)
    finally:
        teardown_runtime(rt)
