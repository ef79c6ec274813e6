"""Readers of the files behind the sets: IDX (Fashion-MNIST: found locally, Debian's package,
or downloaded), CIFAR's python pickles (through a restricted unpickler) and single images
(PIL, one-line errors naming the file)."""
from __future__ import annotations

import functools
import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from maxq.data.common import DataError

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
