"""The ImageNetDali path: the same recipe in an NVIDIA DALI pipeline (GPU decoding with CUDA, a
CPU pipeline otherwise). DALI is an optional dependency, imported when a DALI loader is built."""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from maxq.data.common import (IMAGENET_MEAN, IMAGENET_STD, LIGHTING_STD, DataError, EpochBatches,
                              _mix, _n_batches, _torch_device, lighting_pca)
from maxq.data.readers import _load_rgb

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


class DaliLoader(EpochBatches):
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
