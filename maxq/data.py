"""Datasets by ``--set`` name: loaders, transforms, DALI, and a JPEG-tree writer.

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

import contextlib
import dataclasses
import functools
import gzip
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "DataError",
    "DatasetSpec",
    "DATASETS",
    "Loaders",
    "build_loaders",
    "write_imagefolder",
    "find_fashion_mnist",
    "read_idx",
    "read_cifar",
    "Lighting",
    "imagenet_transforms",
    "balanced_subset",
    "dali_pipeline",
    "TensorLoader",
    "FolderLoader",
    "DaliLoader",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FOLDERS",
    "IMAGENET_PCA",
    "AUTHORS_COLOR",
    "LIGHTINGS",
]


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


# --------------------------------------------------------------------------------------------
# IDX (Fashion-MNIST) and CIFAR readers
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (raw or ``.gz``) into a numpy array."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"not an IDX file: {path}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(f"IDX file {path} is truncated or corrupt "
                        f"({len(raw) - offset} bytes of data, expected {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(tuple(dims))


_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
#: Where Debian's package puts the files (monkeypatched in tests).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Where a download goes when no ``data`` directory is given.
DEFAULT_DOWNLOAD_ROOT = Path(os.environ.get("MAXQ_DATA_CACHE", "~/.cache/maxq")).expanduser()


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _fmnist_dir(directory: Path) -> Path | None:
    """``directory`` itself or a known sub-folder holding all four IDX files."""
    for d in (directory, directory / "fashion-mnist", directory / "FashionMNIST" / "raw",
              directory / "FashionMNIST"):
        if d.is_dir() and all(_idx_file(d, s) for s in _FMNIST_FILES.values()):
            return d
    return None


def _download_fashion_mnist(root: Path) -> Path:
    import torchvision

    for train in (True, False):
        torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def find_fashion_mnist(data: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The directory holding the Fashion-MNIST IDX files.

    Looks in ``data`` (itself, ``data/fashion-mnist``, ``data/FashionMNIST/raw``), then in
    Debian's ``/usr/share/datasets/fashion-mnist``, then downloads with torchvision into
    ``data`` (or ``~/.cache/maxq``) when ``download`` and online.  Raises :class:`DataError`
    naming the places it looked when none works.
    """
    looked: list[str] = []
    if data is not None and str(data) != "":
        d = Path(data).expanduser()
        looked.append(str(d))
        if d.is_dir() and (found := _fmnist_dir(d)):
            return found
    looked.append(str(DEBIAN_FASHION_MNIST))
    if found := _fmnist_dir(DEBIAN_FASHION_MNIST):
        return found
    why = "download disabled"
    if download:
        root = Path(data).expanduser() if data else DEFAULT_DOWNLOAD_ROOT
        try:
            found = _fmnist_dir(_download_fashion_mnist(root))
            if found:
                return found
            why = f"download into {root} gave no IDX files"
        except Exception as e:  # offline, proxy, disk: any failure means "not available"
            first = str(e).splitlines()[0] if str(e) else ""
            why = f"download into {root} failed: {type(e).__name__}: {first}"
    raise DataError(
        f"Fashion-MNIST IDX files not found (looked in {', '.join(looked)}; {why}); "
        f"put train/t10k-*-ubyte[.gz] in --data DIR or install Debian's fashion-mnist package"
    )


def _load_fashion_mnist(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = find_fashion_mnist(data)
    files = tuple(_idx_file(d, s) for s in _FMNIST_FILES.values())
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    return _parse_fashion_mnist(key)


@functools.lru_cache(maxsize=2)
def _parse_fashion_mnist(key) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parsed arrays (read-only), cached per file identity: building loaders again is free."""
    d = Path(key[0][0]).parent
    arrays = {k: read_idx(entry[0]) for k, entry in zip(_FMNIST_FILES, key)}
    for split in ("train", "val"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST files in {d} have inconsistent shapes "
                            f"{x.shape} / {y.shape}")
    out = (arrays["train_images"][:, None], arrays["train_labels"].astype(np.int64),
           arrays["val_images"][:, None], arrays["val_labels"].astype(np.int64))
    for a in out:
        a.flags.writeable = False
    return out


_CIFAR_LAYOUT = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels",
                 "fine_label_names"),
}


#: the only globals a data pickle may name: numpy's array and scalar reconstruction (numpy 1
#: and 2 module paths), protocol 2's spelling of bytes and sets; lists, dicts, tuples, numbers,
#: strings and bytes need none
_DATA_PICKLE_GLOBALS = frozenset(
    [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
     for n in ("_reconstruct", "scalar")]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [(m, n) for m in ("builtins", "__builtin__")
       for n in ("set", "frozenset", "bytearray", "complex")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")])


class DataPickleError(pickle.UnpicklingError):
    """A data pickle names something other than plain data (it could run code)."""


class _DataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that loads data only: every global outside
    :data:`_DATA_PICKLE_GLOBALS` is refused before it is imported or called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _DATA_PICKLE_GLOBALS:
            raise DataPickleError(f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise DataPickleError(f"persistent id {pid!r}")


def load_data_pickle(path: str | os.PathLike, encoding: str = "bytes"):
    """Unpickle a data file (containers, numbers, strings, bytes, numpy arrays) without running
    code: anything else raises :class:`DataError` naming the file and what it asked for."""
    with open(path, "rb") as f:
        try:
            return _DataUnpickler(f, encoding=encoding).load()
        except DataPickleError as e:
            raise DataError(f"refusing to load {path}: it names {e}, which is not data (only "
                            f"containers, numbers, strings, bytes and numpy arrays are read)"
                            ) from None


def _unpickle(path: Path) -> dict:
    try:
        d = load_data_pickle(path)
    except FileNotFoundError:
        raise DataError(f"missing CIFAR file {path}") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read CIFAR file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR file {path} does not hold a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar(set_name: str, data: str | os.PathLike | None):
    """``(x_train, y_train, x_val, y_val, classes)`` from the torchvision python layout:
    ``data/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` or
    ``data/cifar-100-python/{train,test,meta}`` (``data`` may also be that folder itself).
    Images are uint8 ``(N, 3, 32, 32)``, labels int64."""
    folder, train_files, test_files, meta_file, label_key, names_key = _CIFAR_LAYOUT[set_name]
    if data is None or str(data) == "":
        raise DataError(f"{set_name} needs --data DIR holding {folder}/")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"{set_name} data directory does not exist: {root}")
    d = root if root.name == folder else root / folder
    if not d.is_dir():
        raise DataError(f"{set_name}: no {folder}/ in {root} (torchvision python layout expected)")

    def load(files):
        xs, ys = [], []
        for name in files:
            entry = _unpickle(d / name)
            if "data" not in entry or label_key not in entry:
                raise DataError(f"CIFAR file {d / name} lacks 'data' or '{label_key}'")
            x = np.asarray(entry["data"], dtype=np.uint8)
            y = np.asarray(entry[label_key], dtype=np.int64)
            if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise DataError(f"CIFAR file {d / name} has data {x.shape} and "
                                f"{len(y)} labels; expected (N, 3072) and N")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = load(train_files)
    x_val, y_val = load(test_files)
    classes: tuple[str, ...] = ()
    if (d / meta_file).is_file():
        names = _unpickle(d / meta_file).get(names_key, [])
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return x_train, y_train, x_val, y_val, classes


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


class _EpochBatches:
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


class TensorLoader(_EpochBatches):
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


def _load_rgb(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {path}: not an image format PIL reads") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot decode image {path}: {first}") from None


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


class FolderLoader(_EpochBatches):
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
# DALI path
# --------------------------------------------------------------------------------------------


def _import_dali():
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError:
        raise DataError("ImageNetDali needs NVIDIA DALI: pip install .[dali] "
                        "(nvidia-dali-cuda120; .[dali-cuda110] for CUDA 11)") from None
    return fn, pipeline_def, types, DALIGenericIterator, LastBatchPolicy


def dali_pipeline(files: Sequence[str], labels: Sequence[int], *, batch_size: int, size: int,
                  train: bool, num_threads: int, seed: int, device_id: int | None = None,
                  lighting: str | bool = "authors", prefetch: int = 2):
    """A built DALI pipeline over ``files`` in the given order: outputs ``images`` (float CHW,
    ImageNet-normalised) and ``labels``; reader name ``"Reader"``.

    Train: ``decoders.image_random_crop`` (area 0.08-1, aspect 3/4-4/3, as RandomResizedCrop)
    -> resize to ``size`` -> random mirror -> normalise, with PCA lighting folded into a
    per-image mean.  Eval: decode -> resize shorter side to ``size*256/224`` -> centre crop.
    ``device_id=None`` runs everything on the CPU; otherwise decoding is "mixed" (nvJPEG).
    """
    fn, pipeline_def, types, _, _ = _import_dali()
    gpu = device_id is not None
    decoder = "mixed" if gpu else "cpu"
    op_dev = "gpu" if gpu else "cpu"
    mean255 = [m * 255 for m in IMAGENET_MEAN]
    std255 = [s * 255 for s in IMAGENET_STD]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=seed % (2 ** 31 - 1), prefetch_queue_depth=prefetch)
    def pipe():
        jpegs, labs = fn.readers.file(files=list(files), labels=list(labels),
                                      random_shuffle=False, pad_last_batch=True,
                                      name="Reader")
        if train:
            images = fn.decoders.image_random_crop(
                jpegs, device=decoder, output_type=types.RGB,
                random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10)
            images = fn.resize(images, device=op_dev, resize_x=size, resize_y=size,
                               interp_type=types.INTERP_LINEAR, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
            mean: Any = mean255
            pca = lighting_pca(lighting)
            if pca is not None:
                alpha = fn.random.normal(shape=[3], stddev=LIGHTING_STD)
                ev, V = pca["eigval"], pca["eigvec"]
                a = [alpha[j] * ev[j] for j in range(3)]
                # img01 + rgb, then normalise == (img255 - (mean255 - 255*rgb)) / std255
                mean = fn.stack(*[mean255[c] - 255.0 * (V[c][0] * a[0] + V[c][1] * a[1]
                                                        + V[c][2] * a[2]) for c in range(3)])
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                              crop=(size, size), mean=mean, std=std255,
                                              mirror=mirror)
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(images, device=op_dev, resize_shorter=int(size * 256 / 224),
                               interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                              crop=(size, size), mean=mean255, std=std255)
        if gpu:
            labs = labs.gpu()
        return images, labs

    p = pipe()
    p.build()
    return p


_DALI_PATH = re.compile(r"(/[^\s'\"]+?\.(?:jpe?g|png|bmp|tiff?|webp|ppm|pgm|pnm|jp2))", re.I)


class DaliLoader(_EpochBatches):
    """DALI over an explicit, per-epoch file list: the order is ``DistributedSampler``'s (the
    same as :class:`FolderLoader`), so sharding and ``set_epoch`` behave identically.  A
    pipeline is built per pass (cheap next to an epoch)."""

    def __init__(self, samples, *, batch_size: int, workers: int, train: bool, size: int,
                 seed: int, rank: int, world_size: int, drop_last: bool, device: str,
                 lighting: str | bool = "authors"):
        _import_dali()
        self.samples = samples
        self.train = train
        self.batch_size = batch_size
        self.size = size
        self.threads = max(1, int(workers))
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = drop_last if train else False
        self.lighting = lighting
        self._prefetch = 2
        dev = _torch_device(device)
        self.device_id = (dev.index if dev.index is not None else torch.cuda.current_device()) \
            if dev.type == "cuda" else None
        self.epoch = 0
        self._epoch_set = False

    @property
    def dataset_size(self) -> int:
        return len(self.samples)

    def _raise(self, err: Exception, files: list[str], done: int):
        """Re-raise a DALI failure as one line naming the file.  DALI does not name it, so
        decode with PIL the batches that can be in flight (``done`` delivered + prefetch)."""
        text = str(err)
        lo = done * self.batch_size
        window = files[lo:lo + (self._prefetch + 2) * self.batch_size]
        named = [p for p in _DALI_PATH.findall(text) if p in set(window)]
        bad = named[0] if named else None
        for p in window if bad is None else ():
            try:
                _load_rgb(p)
            except DataError:
                bad = p
                break
        if bad is not None:
            raise DataError(f"cannot decode image {bad} (DALI)") from None
        lines = [ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.startswith("Critical error")]
        why = next((ln for ln in lines if "failure" in ln or "rror" in ln), lines[0] if lines
                   else type(err).__name__)
        near = window[0] if window else "?"
        raise DataError(f"DALI pipeline failed near {near}: {why}") from None

    def __iter__(self):
        _, _, _, DALIGenericIterator, LastBatchPolicy = _import_dali()
        epoch = self.epoch
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        idx = self.indices(epoch)
        nb = _n_batches(len(idx), self.batch_size, self.drop_last)
        idx = idx[:nb * self.batch_size] if self.drop_last else idx
        if not idx:
            return
        files = [self.samples[i][0] for i in idx]
        labels = [int(self.samples[i][1]) for i in idx]
        seed = _mix(self.seed, epoch, self.rank, 0xDA11)
        done = 0
        try:
            pipe = dali_pipeline(files, labels, batch_size=self.batch_size, size=self.size,
                                 train=self.train, num_threads=self.threads, seed=seed,
                                 device_id=self.device_id, lighting=self.lighting,
                                 prefetch=self._prefetch)
            it = DALIGenericIterator([pipe], ["images", "labels"], reader_name="Reader",
                                     last_batch_policy=LastBatchPolicy.PARTIAL,
                                     auto_reset=False)
        except RuntimeError as e:
            self._raise(e, files, done)
        while True:
            try:
                out = next(it)
            except StopIteration:
                break
            except RuntimeError as e:
                self._raise(e, files, done)
            images = out[0]["images"]
            labs = out[0]["labels"].reshape(-1).long()
            done += 1
            yield images, labs
        del it, pipe


def _dali_loaders(tr_samples, va_samples, *, size, workers, device, drop_last,
                  lighting="authors", **common):
    train = DaliLoader(tr_samples, size=size, workers=workers, train=True, device=device,
                       drop_last=drop_last, lighting=lighting, **common)
    val = DaliLoader(va_samples, size=size, workers=workers, train=False, device=device,
                     drop_last=False, **common)
    return train, val


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


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
