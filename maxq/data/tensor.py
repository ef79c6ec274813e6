"""The in-memory loader of FashionMNIST and CIFAR: whole uint8 tensors on the device,
augmentation per batch (pad, random crop, flip) from a generator seeded by (seed, epoch, rank)."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import numpy as np
import torch

from maxq.data.common import (DataError, DatasetSpec, EpochBatches, Loaders, _mix, _n_batches,
                              _torch_device, balanced_subset)

# --------------------------------------------------------------------------------------------
# Tensor-backed loader (FashionMNIST, CIFAR): whole uint8 tensors, per-batch augmentation
# --------------------------------------------------------------------------------------------


def _fit_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NCHW to ``size`` x ``size``: zero-pad when at most 8 px larger (28 -> 32 pads 2 px
    each side), centre-crop when at most 8 px smaller, bilinear (antialiased) resize otherwise."""
    h = x.shape[-1]
    if h == size:
        return x
    diff = size - h
    if 0 < diff <= 8:
        a = diff // 2
        return torch.nn.functional.pad(x, (a, diff - a, a, diff - a))
    if -8 <= diff < 0:
        a = (-diff) // 2
        return x[..., a:a + size, a:a + size]
    y = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


@contextlib.contextmanager
def _single_thread(device: torch.device):
    """Batch-sized CPU ops are faster on one thread than on an OpenMP team that must wait for a
    core shared with the training step (or other processes); restore the count afterwards."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class TensorLoader(EpochBatches):
    """Batches from in-memory uint8 tensors; augmentation runs on whole batches.

    Train: zero-pad ``pad`` px, random ``size`` crop per image, horizontal flip with p=0.5;
    randomness from a ``torch.Generator`` seeded by ``(seed, epoch, rank)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 train: bool, size: int, mean, std, seed: int, rank: int, world_size: int,
                 drop_last: bool, device: torch.device):
        self.device = device
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.train = train
        self.size = size
        self.pad = max(1, round(size / 8))  # 4 px at 32
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = drop_last if train else False
        self.epoch = 0
        self._epoch_set = False
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Zero-pad, crop at a random offset per image, mirror half of them (RandomCrop +
        RandomHorizontalFlip, batched): index a strided view of every possible crop."""
        b, c, s, p = x.shape[0], x.shape[1], self.size, self.pad
        q = s + 2 * p
        x = torch.nn.functional.pad(x, (p, p, p, p)).contiguous()
        oy = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
        flip = (torch.rand(b, generator=g) < 0.5).to(x.device)
        crops = x.as_strided((b, 2 * p + 1, 2 * p + 1, c, s, s), (c * q * q, q, 1, q * q, q, 1))
        out = crops[torch.arange(b, device=x.device), oy, ox]
        return torch.where(flip[:, None, None, None], out.flip(-1), out)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        if not self._epoch_set:
            self.epoch += 1  # no set_epoch: the next pass is the next epoch
        self._epoch_set = False
        idx = torch.as_tensor(self.indices(epoch), dtype=torch.long)
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, self.rank, 0xA06))
        nb = _n_batches(len(idx), self.batch_size, self.drop_last)
        for i in range(nb):
            with _single_thread(self.device):
                bidx = idx[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
                x = _fit_size(self.images[bidx], self.size)
                if self.train:
                    x = self._augment(x, g)
                x = ((x.float() - self.mean) / self.std).contiguous()
                y = self.labels[bidx]
            yield x, y


def _tensor_loaders(spec: DatasetSpec, xtr, ytr, xva, yva, *, classes, batch_size, image_size,
                    train_subset, val_subset, seed, rank, world_size, device,
                    drop_last) -> Loaders:
    size = int(image_size or spec.image_size)
    tr = balanced_subset(ytr, train_subset, seed)
    va = balanced_subset(yva, val_subset, 0)
    dev = _torch_device(device)
    common = dict(batch_size=batch_size, size=size, mean=spec.mean, std=spec.std, seed=seed,
                  rank=rank, world_size=world_size, device=dev)
    train = TensorLoader(torch.from_numpy(np.ascontiguousarray(xtr[tr])),
                         torch.from_numpy(np.ascontiguousarray(ytr[tr])), train=True,
                         drop_last=drop_last, **common)
    val = TensorLoader(torch.from_numpy(np.ascontiguousarray(xva[va])),
                       torch.from_numpy(np.ascontiguousarray(yva[va])), train=False,
                       drop_last=False, **common)
    n_classes = int(max(ytr.max(initial=-1), yva.max(initial=-1))) + 1
    out_spec = dataclasses.replace(spec, image_size=size, classes=tuple(classes) or spec.classes,
                                   num_classes=max(spec.num_classes, n_classes))
    if len(train) == 0:
        raise DataError(f"{spec.name}: {len(tr)} training images give no batch of "
                        f"{batch_size} per rank (world_size {world_size}, drop_last)")
    return Loaders(train, val, out_spec, len(tr), len(va))
