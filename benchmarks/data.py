"""DALI vs torchvision DataLoader, side by side: training images/s on an ImageFolder of JPEGs.

Writes a real ImageFolder tree (Fashion-MNIST upscaled to ``--src-size`` px, RGB JPEG q90) to a
temporary directory, then times full training epochs of

* ``ImageNet``      -- ``maxq.data`` torchvision path: PIL decode, RandomResizedCrop, flip,
  ToTensor, PCA lighting, Normalize; ``DataLoader(num_workers=--workers)``;
* ``ImageNetDali``  -- ``maxq.data`` DALI path, the same augmentation: ROI JPEG decode with a
  random crop, resize, mirror, normalise with lighting; CPU pipeline (``device_id=None``) with
  ``num_threads=--workers``, or the GPU pipeline with ``--device cuda``.

Both are built with :func:`maxq.data.build_loaders` -- exactly what training iterates -- and
timed in one process, alternating (torchvision, DALI, torchvision, ...) so that load from other
processes on a shared machine hits both alike.  Each epoch includes its start-up (worker fork /
pipeline build), as in training.  The table gives median and best images/s and their ratio.

    python benchmarks/data.py [--images 1000] [--src-size 224] [--size 224] [--batch 64]
        [--workers 2] [--repeats 5] [--device cpu] [--keep DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from maxq import data as md  # noqa: E402


def time_epoch(loader) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    for images, labels in loader:
        n += int(labels.shape[0])
    return time.perf_counter() - t, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="training JPEGs (10 classes)")
    ap.add_argument("--src-size", type=int, default=224, help="JPEG side in px")
    ap.add_argument("--size", type=int, default=224, help="training crop size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2,
                    help="DataLoader workers / DALI threads")
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs per loader")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for DALI's GPU pipeline")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write (or reuse) the JPEG tree here instead of a temp dir")
    args = ap.parse_args(argv)

    tmp = None
    if args.keep is not None:
        root = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="maxq-bench-data-")
        root = Path(tmp.name)
    try:
        if not (root / "train").is_dir():
            t = time.perf_counter()
            md.write_imagefolder(root, n_train_per_class=max(1, args.images // 10),
                                 n_val_per_class=2, size=args.src_size, seed=0)
            print(f"wrote {args.images} JPEGs of {args.src_size}x{args.src_size} to {root} "
                  f"in {time.perf_counter() - t:.1f}s")
        kw = dict(batch_size=args.batch, workers=args.workers, image_size=args.size, seed=0,
                  device=args.device, drop_last=True)
        loaders = {
            "ImageNet": md.build_loaders("ImageNet", root, **kw).train,
            "ImageNetDali": md.build_loaders("ImageNetDali", root, **kw).train,
        }
        labels = {
            "ImageNet": f"torchvision DataLoader ({args.workers} workers)",
            "ImageNetDali": (f"DALI {'GPU' if args.device.startswith('cuda') else 'CPU'} "
                             f"({args.workers} threads)"),
        }
        for loader in loaders.values():  # warm-up: imports, page cache, first pipeline build
            time_epoch(loader)
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        for r in range(args.repeats):
            for name, loader in loaders.items():
                loader.set_epoch(r + 1)
                seconds, n = time_epoch(loader)
                rates[name].append(n / seconds)
                print(f"  epoch {r + 1}: {name:13s} {n} images in {seconds:6.2f}s "
                      f"= {n / seconds:7.1f} images/s", flush=True)

        med = {k: statistics.median(v) for k, v in rates.items()}
        best = {k: max(v) for k, v in rates.items()}
        print()
        print(f"ImageFolder JPEGs {args.src_size}px -> train crop {args.size}px, batch "
              f"{args.batch}, {args.repeats} epochs each, torch threads "
              f"{torch.get_num_threads()}")
        w = max(len(s) for s in labels.values())
        print(f"| {'loader':{w}s} | median images/s | best images/s |")
        print(f"| {'-' * w} | --------------: | ------------: |")
        for k in loaders:
            print(f"| {labels[k]:{w}s} | {med[k]:15.1f} | {best[k]:13.1f} |")
        ratio_med = med["ImageNetDali"] / med["ImageNet"]
        ratio_best = best["ImageNetDali"] / best["ImageNet"]
        print(f"| {'ratio DALI / torchvision':{w}s} | {ratio_med:14.2f}x | {ratio_best:12.2f}x |")
        print(f"target >= 1.30x: {'met' if ratio_med >= 1.3 else 'NOT met'} (median)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
