"""The ImageFolder path (ImageNet): torchvision transforms with the authors' colour lighting,
a DataLoader whose per-item augmentation is seeded by (seed, epoch, index); the DALI variant
is :mod:`maxq.data.dali`. Also :func:`write_imagefolder`, a real JPEG tree from Fashion-MNIST
for the tests and ``benchmarks/data.py``."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from maxq.data.common import (FASHION_MNIST_FOLDERS, IMAGENET_MEAN, IMAGENET_PCA, IMAGENET_STD,
                              LIGHTING_STD, DataError, EpochBatches, Loaders, _mix,
                              _torch_device, balanced_subset, lighting_pca)
from maxq.data.dali import _dali_loaders
from maxq.data.readers import _load_fashion_mnist, _load_rgb

# --------------------------------------------------------------------------------------------
# ImageFolder (torchvision) path
# --------------------------------------------------------------------------------------------


class Lighting:
    """AlexNet-style PCA lighting noise on a CHW float tensor in [0, 1]:
    ``img + eigvec @ (alpha * eigval)`` with ``alpha ~ N(0, alphastd^2)`` per image."""

    def __init__(self, alphastd: float = LIGHTING_STD, eigval=IMAGENET_PCA["eigval"],
                 eigvec=IMAGENET_PCA["eigvec"]):
        self.alphastd = float(alphastd)
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = (self.eigvec * (alpha * self.eigval).view(1, 3)).sum(1)
        return img + rgb.view(3, 1, 1).to(img.dtype)

    def __repr__(self) -> str:
        return f"Lighting(alphastd={self.alphastd})"


def imagenet_transforms(size: int = 224, *, train: bool, lighting: str | bool = "authors"):
    """The paper's torchvision transforms at ``size`` (eval: resize ``size*256/224``);
    ``lighting``: ``"authors"`` (their ColorAugmentation), ``"pca"`` (AlexNet) or ``"none"``."""
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()]
        pca = lighting_pca(lighting)
        if pca is not None:
            steps.append(Lighting(eigval=pca["eigval"], eigvec=pca["eigvec"]))
        return T.Compose(steps + [normalize])
    return T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                      normalize])


def _scan_imagefolder(root: Path, split: str):
    """``(samples, classes)`` of ``root/split`` via torchvision's ImageFolder scan."""
    from torchvision.datasets import ImageFolder

    d = root / split
    if not root.is_dir():
        raise DataError(f"data directory does not exist: {root}")
    if not d.is_dir():
        raise DataError(f"missing {split} directory: {d} "
                        f"(expected {root}/{{train,val}}/<class>/*.jpg)")
    try:
        ds = ImageFolder(str(d))
    except (FileNotFoundError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"no images in {d}: {first}") from None
    if not ds.samples:
        raise DataError(f"no images in {d}")
    return ds.samples, tuple(ds.classes)


class _FolderDataset(torch.utils.data.Dataset):
    """Samples ``(path, label)``; the transform for item ``i`` in epoch ``e`` runs under a torch
    RNG seeded by ``(seed, e, i)``, so the augmentation does not depend on workers or order."""

    def __init__(self, samples, transform, seed: int, train: bool):
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.train = train
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img = _load_rgb(path)
        if not self.train:
            return self.transform(img), label
        # torch.manual_seed would also queue CUDA seeding (slow, records a stack per call):
        # only the CPU generator drives torchvision's CPU transforms.
        gen = torch.default_generator
        in_main = torch.utils.data.get_worker_info() is None
        saved = gen.get_state() if in_main else None  # keep the main process RNG untouched
        gen.manual_seed(_mix(self.seed, self.epoch, i, 0xF01D))
        try:
            return self.transform(img), label
        finally:
            if saved is not None:
                gen.set_state(saved)


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, fn: Callable[[], list[int]]):
        self.fn = fn

    def __iter__(self):
        return iter(self.fn())

    def __len__(self):
        return len(self.fn())


_WORKER_ERROR = re.compile(r"^(?:[\w.]*\.)?DataError: (.*)$", re.M)


class FolderLoader(EpochBatches):
    """A torch DataLoader over an ImageFolder split with ``set_epoch``/``indices``; an unreadable
    image surfaces as one :class:`DataError` line, also from a worker process."""

    def __init__(self, samples, transform, *, batch_size: int, workers: int, train: bool,
                 seed: int, rank: int, world_size: int, drop_last: bool, pin_memory: bool):
        self.dataset = _FolderDataset(samples, transform, seed, train)
        self.train = train
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = drop_last if train else False
        self.epoch = 0
        self._epoch_set = False
        self._current: list[int] = []
        self._generator = torch.Generator()  # worker base seeds; never the global RNG
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, sampler=_ListSampler(lambda: self._current),
            num_workers=workers, pin_memory=pin_memory, drop_last=self.drop_last,
            persistent_workers=False, generator=self._generator,
        )

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        epoch = self.epoch
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        self._current = self.indices(epoch)
        self.dataset.epoch = epoch  # workers are forked per pass and copy this
        self._generator.manual_seed(_mix(self.seed, epoch, self.rank, 0xB45E))
        it = iter(self.loader)
        while True:
            try:
                images, labels = next(it)
            except StopIteration:
                return
            except DataError as e:
                m = _WORKER_ERROR.findall(str(e))
                msg = m[-1] if m else str(e).splitlines()[-1]
                raise DataError(msg) from None
            yield images, labels


def _imagefolder_loaders(spec, data, *, batch_size, workers, image_size, train_subset,
                         val_subset, seed, rank, world_size, device, drop_last,
                         lighting="authors") -> Loaders:
    if data is None or str(data) == "":
        raise DataError(f"{spec.name} needs --data DIR with train/ and val/ ImageFolder trees")
    root = Path(data).expanduser()
    size = int(image_size or spec.image_size)
    tr_samples, classes = _scan_imagefolder(root, "train")
    va_samples, va_classes = _scan_imagefolder(root, "val")
    if va_classes != classes:
        raise DataError(f"class folders differ between {root / 'train'} ({len(classes)}) "
                        f"and {root / 'val'} ({len(va_classes)})")
    tr = balanced_subset([s[1] for s in tr_samples], train_subset, seed)
    va = balanced_subset([s[1] for s in va_samples], val_subset, 0)
    tr_samples = [tr_samples[i] for i in tr]
    va_samples = [va_samples[i] for i in va]
    out_spec = dataclasses.replace(spec, image_size=size, num_classes=len(classes),
                                   classes=classes, eval_resize=int(size * 256 / 224))
    common = dict(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
    if spec.kind == "dali":
        train, val = _dali_loaders(tr_samples, va_samples, size=size, workers=workers,
                                   device=device, drop_last=drop_last, lighting=lighting, **common)
    else:
        pin = _torch_device(device).type == "cuda"
        train = FolderLoader(tr_samples, imagenet_transforms(size, train=True, lighting=lighting),
                             workers=workers,
                             train=True, drop_last=drop_last, pin_memory=pin, **common)
        val = FolderLoader(va_samples, imagenet_transforms(size, train=False), workers=workers,
                           train=False, drop_last=False, pin_memory=pin, **common)
    if len(train) == 0:
        raise DataError(f"{root / 'train'}: {len(tr_samples)} images give no batch of "
                        f"{batch_size} per rank (world_size {world_size}, drop_last)")
    return Loaders(train, val, out_spec, len(tr_samples), len(va_samples))


# --------------------------------------------------------------------------------------------
# JPEG-tree writer
# --------------------------------------------------------------------------------------------


def write_imagefolder(root: str | os.PathLike, *, n_train_per_class: int, n_val_per_class: int,
                      size: int | None = None, source: str = "fashion-mnist", seed: int = 0,
                      data: str | os.PathLike | None = None, quality: int = 90) -> Path:
    """Write a real ImageFolder tree of RGB JPEGs from Fashion-MNIST and return ``root``.

    ``root/train/<k>_<name>/train_<index>.jpg`` from the training split and
    ``root/val/<k>_<name>/val_<index>.jpg`` from the test split, ``n_*_per_class`` images per
    class chosen at random with ``seed``; grey replicated to RGB, bilinearly upscaled to
    ``size`` when given (28 otherwise), JPEG ``quality`` 90.  Folder names sort in label order,
    so ImageFolder's class index equals the Fashion-MNIST label.
    """
    from PIL import Image

    if source != "fashion-mnist":
        raise DataError(f"unknown write_imagefolder source {source!r}; only 'fashion-mnist'")
    if n_train_per_class < 0 or n_val_per_class < 0:
        raise DataError("n_train_per_class and n_val_per_class must be >= 0")
    xtr, ytr, xva, yva = _load_fashion_mnist(data)
    root = Path(root)
    rng = np.random.Generator(np.random.PCG64(_mix(seed, 0x1F01)))
    for split, x, y, n in (("train", xtr, ytr, n_train_per_class),
                           ("val", xva, yva, n_val_per_class)):
        for label, folder in enumerate(FASHION_MNIST_FOLDERS):
            d = root / split / folder
            d.mkdir(parents=True, exist_ok=True)
            pool = np.flatnonzero(y == label)
            for i in np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False)):
                img = Image.fromarray(x[i, 0], mode="L").convert("RGB")
                if size is not None and size != img.width:
                    img = img.resize((size, size), Image.BILINEAR)
                img.save(d / f"{split}_{i:05d}.jpg", format="JPEG", quality=quality)
    return root
