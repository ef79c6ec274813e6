"""Datasets by ``--set`` name: loaders, transforms, DALI, and a JPEG-tree writer.

The package: :mod:`~maxq.data.common` (registry, subsets, sharding), :mod:`~maxq.data.readers`
(IDX, CIFAR pickles, images), :mod:`~maxq.data.tensor` (in-memory sets),
:mod:`~maxq.data.folder` (ImageFolder, the JPEG-tree writer) and :mod:`~maxq.data.dali`
(optional DALI); this module holds the entry point and names what the rest of the kit uses.

One entry point, :func:`build_loaders`, turns a set name and a data directory into a
:class:`Loaders` bundle.  Every loader it returns

* yields ``(images, labels)``: ``images`` float32 NCHW, normalised with the set's mean/std;
  ``labels`` int64 of shape ``(B,)``;
* has ``len()`` (batches per epoch on this rank) and ``set_epoch(epoch)``;
* is deterministic: the order of samples and every random augmentation are functions of
  ``(seed, epoch, rank)`` only -- never of the global RNG, the number of workers or the device.
  ``set_epoch(e)`` selects the epoch for the next pass; without it, each pass advances the
  epoch by one (0, 1, 2, ...), so two loaders built alike give the same stream either way;
* has ``indices(epoch)``: the dataset indices (into the possibly subset dataset) this rank
  visits in that epoch, in order -- what the tests use to check sharding.

Sets (the :data:`DATASETS` registry):

``ImageNet``      torchvision ImageFolder ``DATA/train``, ``DATA/val``; the paper's recipe
                  (RandomResizedCrop 224, flip, PCA lighting; eval Resize 256 / CenterCrop 224).
``ImageNetDali``  the same recipe with NVIDIA DALI (GPU decoding when CUDA is available and
                  ``device`` is cuda, a CPU-only pipeline otherwise).
``FashionMNIST``  the embedded default for CPU work; IDX files, held in memory as uint8
                  tensors, augmented per batch (28 -> 32 px by zero padding, then
                  RandomCrop(32, padding 4) + flip).
``CIFAR10/100``   the torchvision "python pickle" layout, same in-memory batch augmentation
                  (RandomCrop(32, padding 4) + flip; the authors' ablation recipe).

Subsets: ``train_subset=k`` picks ``k`` training images class-balanced (``k // C`` per class,
the remainder to the lowest class ids), chosen at random with ``seed``; ``val_subset`` does the
same with a fixed seed (0), so every run of a study is scored on the same images.

Distributed: train uses ``DistributedSampler(num_replicas=world_size, rank=rank, shuffle=True,
seed=seed, drop_last=drop_last)`` semantics (the same permutation on every rank, rank ``r``
takes every ``world_size``-th element); val is split without shuffling, rank ``r`` takes
indices ``r, r + world_size, ...`` and nothing is padded, so summing counts over ranks scores
every validation image exactly once.  ``Loaders.train_size``/``val_size`` are the global
(all ranks) dataset sizes after subsetting.

Devices: tensor-backed sets (FashionMNIST, CIFAR) produce batches on ``device`` (their uint8
data is moved there once); torchvision loaders give CPU tensors (pinned when ``device`` is
cuda); DALI gives GPU tensors from a GPU pipeline, CPU tensors otherwise.

Bad input (missing or empty directory, unreadable image, unknown set) raises
:class:`DataError` (a ``ValueError``) with a one-line message naming the path.
"""

from __future__ import annotations

import os

import torch

from maxq.data.common import (AUTHORS_COLOR, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN,
                              CIFAR100_STD, DATASETS, FASHION_MNIST_CLASSES,
                              FASHION_MNIST_FOLDERS, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                              IMAGENET_MEAN, IMAGENET_PCA, IMAGENET_STD, LIGHTING_STD, LIGHTINGS,
                              DataError, DatasetSpec, Loaders, _check_common, balanced_subset,
                              lighting_pca)
from maxq.data.dali import DaliLoader, dali_pipeline
from maxq.data.folder import (FolderLoader, Lighting, _imagefolder_loaders, imagenet_transforms,
                              write_imagefolder)
from maxq.data.readers import (DEBIAN_FASHION_MNIST, DataPickleError, _load_fashion_mnist,
                               find_fashion_mnist, load_data_pickle, read_cifar, read_idx)
from maxq.data.tensor import TensorLoader, _tensor_loaders

__all__ = [
    "DataError", "DatasetSpec", "DATASETS", "Loaders", "build_loaders", "write_imagefolder",
    "find_fashion_mnist", "read_idx", "read_cifar", "load_data_pickle", "DataPickleError",
    "Lighting", "imagenet_transforms", "balanced_subset", "lighting_pca", "dali_pipeline",
    "TensorLoader", "FolderLoader", "DaliLoader", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FOLDERS",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_PCA",
    "AUTHORS_COLOR", "LIGHTING_STD", "LIGHTINGS", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN",
    "CIFAR100_STD", "DEBIAN_FASHION_MNIST",
]


def build_loaders(set_name: str, data: str | os.PathLike | None, *, batch_size: int,
                  workers: int = 0, image_size: int | None = None, train_subset: int | None = None,
                  val_subset: int | None = None, seed: int = 0, distributed: bool = False,
                  rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                  drop_last: bool = True, lighting: str = "authors") -> Loaders:
    """Train and val loaders for ``set_name`` (a key of :data:`DATASETS`); see the module doc.

    ``lighting`` (ImageNet sets): the colour augmentation, one of :data:`LIGHTINGS`.

    ``workers``: DataLoader worker processes (ImageNet), DALI threads (ImageNetDali); the
    in-memory sets run in the main process and ignore it.  ``distributed=False`` forces
    ``rank=0, world_size=1``.
    """
    if set_name not in DATASETS:
        raise DataError(f"unknown data set {set_name!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[set_name]
    if not distributed:
        rank, world_size = 0, 1
    _check_common(batch_size, rank, world_size)
    if image_size is not None and int(image_size) < 8:
        raise DataError(f"image_size must be at least 8, got {image_size}")
    common = dict(batch_size=batch_size, image_size=image_size, train_subset=train_subset,
                  val_subset=val_subset, seed=seed, rank=rank, world_size=world_size,
                  device=device, drop_last=drop_last)
    if spec.kind == "tensor":
        if set_name == "FashionMNIST":
            xtr, ytr, xva, yva = _load_fashion_mnist(data)
            classes: tuple[str, ...] = FASHION_MNIST_CLASSES
        else:
            xtr, ytr, xva, yva, classes = read_cifar(set_name, data)
        return _tensor_loaders(spec, xtr, ytr, xva, yva, classes=classes, **common)
    lighting_pca(lighting)                            # an unknown name fails before any scan
    return _imagefolder_loaders(spec, data, workers=workers, lighting=lighting, **common)
