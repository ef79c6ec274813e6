"""What every data path shares: :class:`DataError`, the set registry (:data:`DATASETS`,
normalisation constants, the lighting choices), :class:`Loaders`, seeds, class-balanced
subsets, the ``DistributedSampler``-order sharding and the epoch/length logic of every loader
(:class:`EpochBatches`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

class DataError(ValueError):
    """A data problem the user can fix: one line, naming the path or the name at fault."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AlexNet PCA lighting noise (Krizhevsky et al. 2012): eigenvectors are the COLUMNS of eigvec
# (principal direction (-0.57, -0.58, -0.58), a brightness shift).
IMAGENET_PCA = {
    "eigval": (0.2175, 0.0188, 0.0045),
    "eigvec": (
        (-0.5675, 0.7192, 0.4009),
        (-0.5808, -0.0045, -0.8140),
        (-0.5836, -0.6948, 0.4203),
    ),
}
# The authors' ColorAugmentation (their data/imagenet.py) prints the AlexNet matrix with its
# columns in reverse order and multiplies (eigval * alpha) by it from the left, so its
# eigenvectors are the ROWS of that matrix: colour moves mainly along (0.40, 0.72, -0.57)
# (0.4009, 0.7192, -0.5675 with eigenvalue 0.2175). Stored here in this module's column
# convention (column j pairs with eigval j), so ``Lighting`` reproduces their shift exactly.
_AUTHORS_MATRIX = (                                   # their eig_vec, row i pairs with eigval i
    (0.4009, 0.7192, -0.5675),
    (-0.8140, -0.0045, -0.5808),
    (0.4203, -0.6948, -0.5836),
)
AUTHORS_COLOR = {
    "eigval": (0.2175, 0.0188, 0.0045),
    "eigvec": tuple(zip(*_AUTHORS_MATRIX)),
}
LIGHTING_STD = 0.1
#: ``lighting`` choices of the ImageNet sets: the authors' ColorAugmentation (default), the
#: standard AlexNet PCA lighting, or none
LIGHTINGS = {"authors": AUTHORS_COLOR, "pca": IMAGENET_PCA, "none": None}


def lighting_pca(lighting: str | bool) -> dict | None:
    """The eigen-decomposition behind a ``lighting`` choice (``True``: ``"authors"``, ``False``:
    ``"none"``); ``DataError`` for an unknown name."""
    name = ("authors" if lighting else "none") if isinstance(lighting, bool) else lighting
    if name not in LIGHTINGS:
        raise DataError(f"unknown lighting {lighting!r}; choose one of {', '.join(LIGHTINGS)}")
    return LIGHTINGS[name]

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: Folder names written by :func:`write_imagefolder`; sorted order == label order.
FASHION_MNIST_FOLDERS = (
    "0_tshirt", "1_trouser", "2_pullover", "3_dress", "4_coat",
    "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What the model builder and the training loop need to know about a set.

    ``image_size`` is the training input size (the default; :func:`build_loaders` returns a
    copy with the size actually used, and ``num_classes``/``classes`` read from the data).
    ``small_input`` asks the model registry for a small-input stem (CIFAR-style 3x3, no pool).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    small_input: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str  # "imagefolder" | "dali" | "tensor"
    description: str = ""
    classes: tuple[str, ...] = ()
    eval_resize: int | None = None  # short-side resize before the centre crop (ImageFolder/DALI)


DATASETS: dict[str, DatasetSpec] = {
    "ImageNet": DatasetSpec(
        "ImageNet", 1000, 3, 224, False, IMAGENET_MEAN, IMAGENET_STD, "imagefolder",
        "ImageFolder DATA/train, DATA/val; RandomResizedCrop+flip+colour lighting; "
        "eval Resize 256/CenterCrop 224 (torchvision DataLoader)",
        eval_resize=256,
    ),
    "ImageNetDali": DatasetSpec(
        "ImageNetDali", 1000, 3, 224, False, IMAGENET_MEAN, IMAGENET_STD, "dali",
        "ImageNet recipe with NVIDIA DALI (GPU decode with CUDA, CPU pipeline otherwise)",
        eval_resize=256,
    ),
    "FashionMNIST": DatasetSpec(
        "FashionMNIST", 10, 1, 32, True, FASHION_MNIST_MEAN, FASHION_MNIST_STD, "tensor",
        "Fashion-MNIST IDX files in memory; 28->32 pad, RandomCrop(32, pad 4)+flip",
        classes=FASHION_MNIST_CLASSES,
    ),
    "CIFAR10": DatasetSpec(
        "CIFAR10", 10, 3, 32, True, CIFAR10_MEAN, CIFAR10_STD, "tensor",
        "CIFAR-10 python batches in memory; RandomCrop(32, pad 4)+flip",
    ),
    "CIFAR100": DatasetSpec(
        "CIFAR100", 100, 3, 32, True, CIFAR100_MEAN, CIFAR100_STD, "tensor",
        "CIFAR-100 python batches in memory; RandomCrop(32, pad 4)+flip",
    ),
}


@dataclass
class Loaders:
    """``train``/``val``: iterables of ``(images, labels)`` with ``len()`` and ``set_epoch``.

    ``train_size``/``val_size``: images in the (subset) split, all ranks together.
    """

    train: Any
    val: Any
    spec: DatasetSpec
    train_size: int
    val_size: int


# --------------------------------------------------------------------------------------------
# Small helpers: seeds, subsets, sharding
# --------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from a few ints (splitmix64 chain): stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def balanced_subset(labels: Sequence[int] | np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced random subset of size ``k`` (all when ``k`` is None
    or >= len).  Each class gets ``k // C`` (the first ``k % C`` classes one more); a class with
    too few images gives its share to the others, drawn in the same seeded random order."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if k is None or k >= n:
        return np.arange(n)
    if k <= 0:
        raise DataError(f"subset size must be positive, got {k}")
    rng = np.random.Generator(np.random.PCG64(_mix(seed, 0x5B5E7)))
    perm = rng.permutation(n)
    classes, lab = np.unique(labels[perm], return_inverse=True)  # lab: class id in perm order
    c = len(classes)
    quota = k // c + (np.arange(c) < k % c)
    # rank of each permuted element among its class, in permutation order
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(c))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[lab[order]]
    chosen = rank < quota[lab]
    short = k - int(chosen.sum())
    if short > 0:  # some class had fewer images than its quota: fill in permutation order
        chosen[np.flatnonzero(~chosen)[:short]] = True
    return np.sort(perm[chosen])


def _train_indices(n: int, epoch: int, seed: int, rank: int, world_size: int,
                   drop_last: bool) -> list[int]:
    """Exactly ``DistributedSampler(shuffle=True)``'s indices for this rank and epoch."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return list(sampler)


def _train_count(n: int, world_size: int, drop_last: bool) -> int:
    """``len(DistributedSampler(...))`` without building the permutation."""
    return n // world_size if drop_last else math.ceil(n / world_size)


def _val_indices(n: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, n, world_size))


def _n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def _check_common(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in range for world_size {world_size}")


def _torch_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return dev


class EpochBatches:
    """What every loader shares: ``set_epoch``, the indices a rank visits in an epoch (the
    ``DistributedSampler`` order for training, a strided split for validation) and ``len()``.
    Subclasses set ``train, batch_size, seed, rank, world_size, drop_last, epoch`` and define
    ``dataset_size``."""

    dataset_size: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

    def indices(self, epoch: int | None = None) -> list[int]:
        n = self.dataset_size
        if not self.train:
            return _val_indices(n, self.rank, self.world_size)
        e = self.epoch if epoch is None else epoch
        return _train_indices(n, e, self.seed, self.rank, self.world_size, self.drop_last)

    def __len__(self) -> int:
        n = self.dataset_size
        count = (_train_count(n, self.world_size, self.drop_last) if self.train
                 else len(range(self.rank, n, self.world_size)))
        return _n_batches(count, self.batch_size, self.drop_last)
