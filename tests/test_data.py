"""maxq.data: real Fashion-MNIST, CIFAR pickles written here, real JPEG trees, real DALI (CPU)."""
from __future__ import annotations

import gzip
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from maxq import data as md
from maxq.data import readers
from maxq.data import DataError, build_loaders, write_imagefolder

FMNIST = md.DEBIAN_FASHION_MNIST
needs_fmnist = pytest.mark.skipif(
    readers._fmnist_dir(FMNIST) is None, reason=f"Fashion-MNIST IDX files not installed at {FMNIST}")

try:
    import nvidia.dali  # noqa: F401
    HAVE_DALI = True
except ImportError:  # pragma: no cover - dali is in the dev environment
    HAVE_DALI = False
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="nvidia-dali not installed")


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def denorm(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x * s + m) * 255


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """10 classes x 8 train / 3 val RGB JPEGs of 64 px from Fashion-MNIST."""
    if readers._fmnist_dir(FMNIST) is None:
        pytest.skip("Fashion-MNIST not installed")
    root = tmp_path_factory.mktemp("tree")
    return write_imagefolder(root, n_train_per_class=8, n_val_per_class=3, size=64, seed=0)


# ------------------------------------------------------------------------------ registry

def test_registry_and_unknown_set():
    assert set(md.DATASETS) == {"ImageNet", "ImageNetDali", "FashionMNIST", "CIFAR10", "CIFAR100"}
    s = md.DATASETS["FashionMNIST"]
    assert (s.num_classes, s.in_channels, s.image_size, s.small_input) == (10, 1, 32, True)
    assert md.DATASETS["ImageNet"].image_size == 224 and not md.DATASETS["ImageNet"].small_input
    assert md.DATASETS["CIFAR100"].num_classes == 100
    with pytest.raises(ValueError) as e:
        build_loaders("MNIST9", None, batch_size=4)
    assert "MNIST9" in one_line(e) and "FashionMNIST" in str(e.value)


def test_balanced_subset_deterministic():
    y = np.repeat(np.arange(10), 50)
    a = md.balanced_subset(y, 95, seed=3)
    assert len(a) == 95 and len(set(a.tolist())) == 95
    assert sorted(np.bincount(y[a]).tolist()) == [9] * 5 + [10] * 5
    assert np.array_equal(a, md.balanced_subset(y, 95, seed=3))
    assert not np.array_equal(a, md.balanced_subset(y, 95, seed=4))
    assert len(md.balanced_subset(y, None, 0)) == 500
    assert len(md.balanced_subset(y, 10**6, 0)) == 500
    y2 = np.array([0] * 3 + [1] * 100)  # class 0 short of its quota: the rest fills in
    assert len(md.balanced_subset(y2, 20, 0)) == 20


# ------------------------------------------------------------------------------ Fashion-MNIST

@needs_fmnist
def test_fashion_mnist_real_data():
    L = build_loaders("FashionMNIST", None, batch_size=64, train_subset=640, val_subset=200,
                      seed=0)
    assert (L.train_size, L.val_size) == (640, 200)
    assert (len(L.train), len(L.val)) == (10, 4)  # val keeps its last partial batch
    assert L.spec.image_size == 32 and L.spec.in_channels == 1 and L.spec.num_classes == 10
    x, y = next(iter(L.train))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    ys = torch.cat([y for _, y in L.train])
    assert ys.min() >= 0 and ys.max() <= 9 and len(ys) == 640
    assert torch.bincount(ys).tolist() == [64] * 10  # class-balanced subset
    xv = torch.cat([x for x, _ in L.val])
    assert xv.shape == (200, 1, 32, 32)
    assert abs(xv.mean().item()) < 0.4 and 0.7 < xv.std().item() < 1.3  # normalised


@needs_fmnist
def test_fashion_mnist_determinism_and_epochs():
    def batches(seed, epoch=None, n=3):
        L = build_loaders("FashionMNIST", None, batch_size=32, train_subset=320, seed=seed)
        if epoch is not None:
            L.train.set_epoch(epoch)
        return [b for _, b in zip(range(n), L.train)]

    a, b, c = batches(0), batches(0), batches(1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    e1 = batches(0, epoch=1)
    assert not torch.equal(a[0][1], e1[0][1])  # another epoch, another order
    # without set_epoch each pass is the next epoch; set_epoch(1) reproduces the second pass
    L = build_loaders("FashionMNIST", None, batch_size=32, train_subset=320, seed=0)
    first = next(iter(L.train))
    second = next(iter(L.train))
    assert torch.equal(first[0], a[0][0]) and torch.equal(second[0], e1[0][0])
    # the main-process RNG is not consumed
    state = torch.get_rng_state()
    next(iter(L.train))
    assert torch.equal(state, torch.get_rng_state())


@needs_fmnist
def test_fashion_mnist_augmentation_is_padded_crop_and_flip():
    L = build_loaders("FashionMNIST", None, batch_size=16, train_subset=100, val_subset=20,
                      seed=5)
    tl, vl = L.train, L.val
    tl.set_epoch(0)
    idx = tl.indices(0)[:16]
    x, _ = next(iter(tl))
    got = denorm(x, md.FASHION_MNIST_MEAN, md.FASHION_MNIST_STD).round().to(torch.uint8)
    raw = tl.images[torch.tensor(idx)]
    padded = torch.nn.functional.pad(raw, (2 + 4,) * 4)  # 28 -> 32, then RandomCrop pad 4
    n_flipped = 0
    for i in range(16):
        crops = padded[i, 0].unfold(0, 32, 1).unfold(1, 32, 1).reshape(-1, 32, 32)  # 81 crops
        plain = (crops == got[i, 0]).flatten(1).all(1).any().item()
        flipped = (crops.flip(-1) == got[i, 0]).flatten(1).all(1).any().item()
        assert plain or flipped, f"sample {i} is not a crop of the padded image"
        n_flipped += flipped and not plain
    assert 0 < n_flipped < 16
    # val: no augmentation, 2 px zero padding only, unshuffled
    xv, yv = next(iter(vl))
    v = denorm(xv, md.FASHION_MNIST_MEAN, md.FASHION_MNIST_STD).round().to(torch.uint8)
    assert torch.equal(v, torch.nn.functional.pad(vl.images[:16], (2, 2, 2, 2)))
    assert torch.equal(yv, vl.labels[:16])


@needs_fmnist
def test_fashion_mnist_other_sizes():
    L = build_loaders("FashionMNIST", None, batch_size=8, image_size=28, train_subset=40,
                      val_subset=10)
    assert next(iter(L.train))[0].shape == (8, 1, 28, 28) and L.spec.image_size == 28
    L = build_loaders("FashionMNIST", None, batch_size=8, image_size=64, train_subset=40,
                      val_subset=10)
    assert next(iter(L.val))[0].shape == (8, 1, 64, 64)


def write_idx(path, arr: np.ndarray, gz: bool):
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    (gzip.open if gz else open)(path, "wb").write(header + arr.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_find_fashion_mnist_in_data_dir_and_idx_parsing(tmp_path, gz):
    rng = np.random.default_rng(0)
    d = tmp_path / "FashionMNIST" / "raw"
    d.mkdir(parents=True)
    ext = ".gz" if gz else ""
    xtr = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    ytr = np.arange(30, dtype=np.uint8) % 10
    write_idx(d / f"train-images-idx3-ubyte{ext}", xtr, gz)
    write_idx(d / f"train-labels-idx1-ubyte{ext}", ytr, gz)
    write_idx(d / f"t10k-images-idx3-ubyte{ext}", xtr[:10], gz)
    write_idx(d / f"t10k-labels-idx1-ubyte{ext}", ytr[:10], gz)
    assert md.find_fashion_mnist(tmp_path) == d
    assert np.array_equal(md.read_idx(d / f"train-images-idx3-ubyte{ext}"), xtr)
    L = build_loaders("FashionMNIST", tmp_path, batch_size=10, seed=0)
    assert (L.train_size, L.val_size) == (30, 10)
    xv, yv = next(iter(L.val))
    assert torch.equal(yv, torch.arange(10))
    got = denorm(xv, md.FASHION_MNIST_MEAN, md.FASHION_MNIST_STD).round()[:, 0, 2:30, 2:30]
    assert torch.equal(got.to(torch.uint8), torch.from_numpy(xtr[:10]))


def test_fashion_mnist_nowhere_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")

    def offline(root):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(readers, "_download_fashion_mnist", offline)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        md.find_fashion_mnist(tmp_path / "empty")
    msg = one_line(e)
    assert str(tmp_path / "empty") in msg and "no-debian" in msg and "download" in msg
    with pytest.raises(DataError):
        build_loaders("FashionMNIST", tmp_path / "empty", batch_size=4)


def test_corrupt_idx_file(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 3]) + np.array([10, 28, 28], ">u4").tobytes() + b"\0" * 100)
    with pytest.raises(ValueError) as e:
        md.read_idx(p)
    assert str(p) in one_line(e)
    p.write_bytes(b"hello")
    with pytest.raises(ValueError):
        md.read_idx(p)


# ------------------------------------------------------------------------------ CIFAR

def write_cifar(root, set_name: str, n_train: int, n_test: int, seed=0):
    """The torchvision python-pickle layout, with bytes keys as in the real (py2) files."""
    rng = np.random.default_rng(seed)
    n_classes = 10 if set_name == "CIFAR10" else 100
    key = b"labels" if set_name == "CIFAR10" else b"fine_labels"

    def batch(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                key: rng.integers(0, n_classes, n).tolist(), b"batch_label": b"x"}

    if set_name == "CIFAR10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)}
        files["test_batch"] = batch(n_test)
        files["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        files = {"train": batch(n_train), "test": batch(n_test),
                 "meta": {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                          b"coarse_label_names": [b"x"] * 20}}
        files["train"][b"coarse_labels"] = [0] * n_train
    for name, obj in files.items():
        with open(d / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return files


@pytest.mark.parametrize("set_name", ["CIFAR10", "CIFAR100"])
def test_cifar_readers(tmp_path, set_name):
    files = write_cifar(tmp_path, set_name, n_train=100, n_test=30)
    L = build_loaders(set_name, tmp_path, batch_size=16, seed=0)
    ncls = 10 if set_name == "CIFAR10" else 100
    assert (L.train_size, L.val_size) == (100, 30)
    assert L.spec.num_classes == ncls and L.spec.in_channels == 3 and len(L.spec.classes) == ncls
    assert (len(L.train), len(L.val)) == (6, 2)
    x, y = next(iter(L.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # val: the exact pixels of the test batch, normalised, in file order
    test = files["test_batch" if set_name == "CIFAR10" else "test"]
    key = b"labels" if set_name == "CIFAR10" else b"fine_labels"
    xv = torch.cat([x for x, _ in L.val])
    yv = torch.cat([y for _, y in L.val])
    spec = md.DATASETS[set_name]
    pixels = denorm(xv, spec.mean, spec.std).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(test[b"data"]).view(-1, 3, 32, 32))
    assert yv.tolist() == test[key]
    # train labels are the union of the train batches
    full = build_loaders(set_name, tmp_path, batch_size=10)
    ys = sorted(torch.cat([y for _, y in full.train]).tolist())
    if set_name == "CIFAR10":
        expect = sum((files[f"data_batch_{i}"][key] for i in range(1, 6)), [])
    else:
        expect = files["train"][key]
    assert ys == sorted(expect)


def test_cifar_bad_inputs(tmp_path):
    with pytest.raises(ValueError) as e:
        build_loaders("CIFAR10", tmp_path / "nope", batch_size=4)
    assert str(tmp_path / "nope") in one_line(e)
    with pytest.raises(ValueError) as e:
        build_loaders("CIFAR100", tmp_path, batch_size=4)
    assert "cifar-100-python" in one_line(e)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(ValueError) as e:
        build_loaders("CIFAR10", tmp_path, batch_size=4)
    assert "data_batch_1" in one_line(e)


# ------------------------------------------------------------------------------ JPEG trees

def test_write_imagefolder_real_jpegs(tree, tmp_path):
    for split, n in (("train", 8), ("val", 3)):
        classes = sorted(p.name for p in (tree / split).iterdir())
        assert classes == list(md.FASHION_MNIST_FOLDERS)
        for c in classes:
            files = sorted((tree / split / c).glob("*.jpg"))
            assert len(files) == n
        with Image.open(files[0]) as im:
            im.load()
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))
    small = write_imagefolder(tmp_path / "s", n_train_per_class=1, n_val_per_class=1, seed=0)
    names = sorted(p.relative_to(small).as_posix() for p in small.rglob("*.jpg"))
    assert len(names) == 20
    with Image.open(small / names[0]) as im:
        assert im.size == (28, 28)
    again = write_imagefolder(tmp_path / "t", n_train_per_class=1, n_val_per_class=1, seed=0)
    assert names == sorted(p.relative_to(again).as_posix() for p in again.rglob("*.jpg"))
    with pytest.raises(ValueError):
        write_imagefolder(tmp_path / "u", n_train_per_class=1, n_val_per_class=1, source="coco")


# ------------------------------------------------------------------------- ImageNet (torchvision)

def test_imagenet_imagefolder_pipeline(tree):
    L = build_loaders("ImageNet", tree, batch_size=16, workers=0, image_size=48, seed=0)
    assert (L.train_size, L.val_size) == (80, 30)
    assert L.spec.num_classes == 10 and L.spec.classes == md.FASHION_MNIST_FOLDERS
    assert L.spec.image_size == 48 and L.spec.eval_resize == 54
    assert (len(L.train), len(L.val)) == (5, 2)
    state = torch.get_rng_state()
    x, y = next(iter(L.train))
    assert torch.equal(state, torch.get_rng_state())  # workers=0 leaves the global RNG alone
    assert x.shape == (16, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64
    expect = [L.train.dataset.samples[i][1] for i in L.train.indices(0)[:16]]
    assert y.tolist() == expect
    xv = torch.cat([x for x, _ in L.val])
    yv = torch.cat([y for _, y in L.val])
    assert xv.shape == (30, 3, 48, 48) and yv.tolist() == [c for c in range(10) for _ in range(3)]
    # grey images: channels equal before normalisation; values within the [0, 1] range
    pix = denorm(xv, md.IMAGENET_MEAN, md.IMAGENET_STD) / 255
    assert pix.min() > -0.01 and pix.max() < 1.01
    assert (pix[:, 0] - pix[:, 1]).abs().max() < 0.02
    # train adds lighting noise: channels differ slightly, values near [0, 1]
    ptr = denorm(x, md.IMAGENET_MEAN, md.IMAGENET_STD) / 255
    assert -0.2 < ptr.min() and ptr.max() < 1.2
    # same seed, same batch; another seed, another batch
    again = next(iter(build_loaders("ImageNet", tree, batch_size=16, image_size=48, seed=0).train))
    other = next(iter(build_loaders("ImageNet", tree, batch_size=16, image_size=48, seed=1).train))
    assert torch.equal(x, again[0]) and not torch.equal(x, other[0])


def test_lighting_matches_reference():
    torch.manual_seed(0)
    img = torch.rand(3, 4, 4)
    torch.manual_seed(1)
    out = md.Lighting(0.1)(img)
    torch.manual_seed(1)
    alpha = torch.randn(3) * 0.1
    V = torch.tensor(md.IMAGENET_PCA["eigvec"])
    ev = torch.tensor(md.IMAGENET_PCA["eigval"])
    rgb = V @ (alpha * ev)
    assert torch.allclose(out, img + rgb.view(3, 1, 1))


# ------------------------------------------------------------------------------ DALI (CPU)

@needs_dali
def test_dali_cpu_pipeline(tree):
    L = build_loaders("ImageNetDali", tree, batch_size=16, workers=2, image_size=48, seed=0)
    assert (len(L.train), len(L.val)) == (5, 2) and L.spec.num_classes == 10
    samples = L.train.samples
    ys, n = [], 0
    for x, y in L.train:
        assert x.shape == (16, 3, 48, 48) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and x.device.type == "cpu"
        ys += y.tolist()
        n += 1
    assert n == 5
    assert ys == [samples[i][1] for i in L.train.indices(0)[:80]]  # labels = folder classes
    xv = torch.cat([x for x, _ in L.val])
    yv = torch.cat([y for _, y in L.val])
    assert yv.tolist() == [c for c in range(10) for _ in range(3)]
    # eval path agrees with torchvision's Resize/CenterCrop on the same JPEGs
    tv = build_loaders("ImageNet", tree, batch_size=16, image_size=48)
    xt = torch.cat([x for x, _ in tv.val])
    assert xv.shape == xt.shape and (xv - xt).abs().mean() < 0.05
    # deterministic per seed
    L2 = build_loaders("ImageNetDali", tree, batch_size=16, workers=1, image_size=48, seed=0)
    L2.train.set_epoch(0)
    L.train.set_epoch(0)
    assert torch.equal(next(iter(L.train))[0], next(iter(L2.train))[0])


@needs_dali
def test_dali_missing_gives_install_hint(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ValueError) as e:
        build_loaders("ImageNetDali", tree, batch_size=4)
    assert "pip install .[dali]" in one_line(e)


# ------------------------------------------------------------------------------ sharding

def shard_indices(set_name, data, **kw):
    out = []
    for rank in (0, 1):
        L = build_loaders(set_name, data, batch_size=8, distributed=True, rank=rank,
                          world_size=2, seed=7, **kw)
        L.train.set_epoch(3)
        out.append((L, L.train.indices(3), L.val.indices()))
    return out


@pytest.mark.parametrize("set_name", ["FashionMNIST", "ImageNet", "ImageNetDali"])
def test_distributed_sharding_is_disjoint(set_name, tree):
    if set_name == "ImageNetDali" and not HAVE_DALI:
        pytest.skip("nvidia-dali not installed")
    kw = dict(image_size=32)
    if set_name == "FashionMNIST":
        data, kw = None, dict(train_subset=101, val_subset=31)
    else:
        data = tree
    (L0, t0, v0), (L1, t1, v1) = shard_indices(set_name, data, **kw)
    n_train, n_val = L0.train_size, L0.val_size
    assert not set(t0) & set(t1) and len(t0) == len(t1) == n_train // 2
    assert len(set(t0) | set(t1)) == 2 * (n_train // 2)
    assert not set(v0) & set(v1) and sorted(v0 + v1) == list(range(n_val))
    assert t0 == L0.train.indices(3)  # set_epoch-driven, reproducible
    assert t0 != L0.train.indices(4)
    # the batches really come from the shard: labels follow the shard's indices
    labels = (L0.train.labels.tolist() if set_name == "FashionMNIST"
              else [s[1] for s in (L0.train.samples if set_name == "ImageNetDali"
                                   else L0.train.dataset.samples)])
    got = torch.cat([y for _, y in L0.train]).tolist()
    assert got == [labels[i] for i in t0[:len(got)]] and len(got) == len(L0.train) * 8
    gv = torch.cat([y for _, y in L1.val]).tolist()
    assert gv == [(L1.val.labels.tolist() if set_name == "FashionMNIST" else
                   [s[1] for s in (L1.val.samples if set_name == "ImageNetDali"
                                   else L1.val.dataset.samples)])[i] for i in v1]


# ------------------------------------------------------------------------------ bad input

def test_imagefolder_missing_and_empty_dirs(tmp_path):
    for name in ("ImageNet",) + (("ImageNetDali",) if HAVE_DALI else ()):
        with pytest.raises(ValueError) as e:
            build_loaders(name, tmp_path / "missing", batch_size=4)
        assert str(tmp_path / "missing") in one_line(e)
        with pytest.raises(ValueError) as e:
            build_loaders(name, None, batch_size=4)
        one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        build_loaders("ImageNet", tmp_path / "empty", batch_size=4)
    assert str(tmp_path / "empty" / "train") in one_line(e)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    with pytest.raises(ValueError) as e:
        build_loaders("ImageNet", tmp_path / "empty", batch_size=4)
    assert str(tmp_path / "empty" / "train") in one_line(e)


@pytest.fixture(scope="module")
def bad_tree(tree, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(tree, root, dirs_exist_ok=True)
    victim = sorted((root / "train" / "3_dress").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    (root / "val" / "1_trouser" / "zz_garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
    return root, victim, root / "val" / "1_trouser" / "zz_garbage.jpg"


@pytest.mark.parametrize("name,workers", [("ImageNet", 0), ("ImageNet", 2), ("ImageNetDali", 2)])
def test_corrupt_jpeg_is_one_line_naming_the_file(bad_tree, name, workers):
    if name == "ImageNetDali" and not HAVE_DALI:
        pytest.skip("nvidia-dali not installed")
    root, truncated, garbage = bad_tree
    # batches of 4: the bad files are not in the first batch (val: 7th of 31 files)
    L = build_loaders(name, root, batch_size=4, workers=workers, image_size=32)
    for loader, path in ((L.train, truncated), (L.val, garbage)):
        with pytest.raises(ValueError) as e:
            for _ in loader:
                pass
        msg = one_line(e)
        assert str(path) in msg and "decode" in msg
        assert isinstance(e.value, DataError)


def test_bad_arguments(tree):
    with pytest.raises(ValueError):
        build_loaders("ImageNet", tree, batch_size=0)
    with pytest.raises(ValueError):
        build_loaders("ImageNet", tree, batch_size=4, distributed=True, rank=2, world_size=2)
    with pytest.raises(ValueError) as e:  # fewer images than one batch per rank
        build_loaders("ImageNet", tree, batch_size=1000)
    one_line(e)
