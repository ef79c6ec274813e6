"""Processes and devices of a run: the runtime (rank, device, precision) under ``torchrun``, and
BatchNorm synchronised over the process group.

Launched by ``torchrun`` (``WORLD_SIZE > 1``), each process joins the process group (nccl on
CUDA, gloo on CPU). With synchronised BatchNorm (:func:`convert_sync_batchnorm`: ``nn.SyncBatchNorm``
on CUDA, the all-reduce BatchNorm below on CPU, where ``nn.SyncBatchNorm`` does not run), K
processes compute what one process with the same global batch computes. Its own module because
none of it is about training: :mod:`maxq.train` asks it for a :class:`Runtime` and a few sums.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Runtime:
    """Where this process runs: its rank in the process group, its device, its precision."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None     # autocast dtype, None when AMP is off
    owns_group: bool = False                 # this call initialised the process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str, amp: str) -> Runtime:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``), pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                **({"device_id": dev} if dev.type == "cuda" else {}))
        owns = True
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return Runtime(rank, world_size, local_rank, dev, amp_dtype, owns)


def teardown_runtime(rt: Runtime) -> None:
    if rt.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def all_reduce_sum(rt: Runtime, values: list[float]) -> list[float]:
    """Sum a few numbers over all processes (float64)."""
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


# ============================================================================ BatchNorm over ranks
class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group; the gradient is summed likewise (every rank's loss depends on
    every rank's input through the statistics)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class _AllReduceBatchNorm:
    """BatchNorm whose training statistics are all-reduced over the process group (autograd
    flows through the all-reduce), for the gloo backend where ``nn.SyncBatchNorm`` does not run.
    Two passes (mean, then centred sum of squares) like a single-process BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var.detach() * (n / (n - 1)).detach()
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y


_ALL_REDUCE_BN = {cls: type(f"AllReduce{cls.__name__}", (_AllReduceBatchNorm, cls), {})
                  for cls in (nn.BatchNorm1d, nn.BatchNorm2d)}


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronise BatchNorm over the process group: ``nn.SyncBatchNorm`` on CUDA, the all-reduce
    BatchNorm above on CPU. Parameter and buffer names stay, so checkpoints are interchangeable."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) in _ALL_REDUCE_BN:
            module.__class__ = _ALL_REDUCE_BN[type(module)]
    return model
