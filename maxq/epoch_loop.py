"""The loops over batches of one run: one epoch of training (AMP, SR-STE decay after unscale,
before the step), one pass of evaluation, the BatchNorm recalibration, and what they print
(:class:`RunLog`, the seed's log lines) and count (:class:`Meter`, on the device)."""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maxq import sparse
from maxq.config import TrainConfig
from maxq.distributed import Runtime, all_reduce_sum

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
        # torch.full, not torch.tensor(n, device=...): the latter copies from the host and
        # blocks on CUDA until the step's queued work is done
        self.sums += torch.stack([loss.detach().double() * n, hits[:, :1].sum().double(),
                                  hits.sum().double(),
                                  torch.full((), float(n), dtype=torch.float64,
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

def check_finite(va: dict[str, float], tr: dict[str, float], epoch: int) -> None:
    """A validation loss or accuracy that is not finite: the run diverged (failed, not a result,
    issue 27): ``FloatingPointError`` before the epoch's records or checkpoint are written."""
    bad = {k: va[k] for k in ("loss", "top1", "top5") if not math.isfinite(va[k])}
    if bad:
        raise FloatingPointError(
            f"validation {', '.join(f'{k} is {v}' for k, v in bad.items())} in epoch "
            f"{epoch} (training loss {tr['loss']:.4g}): the run diverged; stopping "
            f"before its records or checkpoint are written")


def epoch_line(epoch: int, epochs: int, lr: float, rho: float, tr: dict[str, float],
               va: dict[str, float], nm_share: float | None, seconds: float) -> str:
    """The log line closing an epoch: schedule, training and validation loss and accuracy."""
    return (f"Epoch [{epoch}/{epochs}] lr {lr:.5f} rho {rho:.3f} | train Loss "
            f"{tr['loss']:.4f} Prec@1 {tr['top1']:.3f} Prec@5 {tr['top5']:.3f} | val Loss "
            f"{va['loss']:.4f} Prec@1 {va['top1']:.3f} Prec@5 {va['top5']:.3f} | N:M share "
            f"{'-' if nm_share is None else f'{nm_share:.3f}'} | {seconds:.1f} s, "
            f"{tr['images_per_s']:.1f} images/s")


def finished_line(best: dict[str, Any], last: dict[str, Any], run_dir: Path) -> str:
    """The log line closing a run: best and last evaluation."""
    return (f"finished: best Prec@1 {best['top1']:.3f} Prec@5 {best['top5']:.3f} (epoch "
            f"{best['epoch']}), last Prec@1 {last['top1']:.3f} Prec@5 {last['top5']:.3f}; "
            f"{run_dir}")
