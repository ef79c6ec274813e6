"""Mask-speed benchmark: sort-based reference vs maxq_mask cold vs maxq_mask warm (cache).

Weights: the 52 sparse convs of torchvision ResNet-50 (every Conv2d with groups == 1 and
in_channels % M == 0 except the stem ``conv1``: layer1..layer4 incl. downsample; 23.4 M weights).

Each round moves the weights by one SGD-like step (w <- w - lr·(g + wd·w), lr 0.1, wd 1e-4,
g ~ N(0, (step·std(w)/lr)²) per layer, i.e. a relative change ~``step`` per weight) and then
times, side by side on those same weights:

* ``sort-based reference`` - ``maxq/mask_reference.py`` (full ``torch.sort`` formulation);
* ``maxq_mask cold``       - no cache (what one call from scratch costs);
* ``maxq_mask warm``       - one cache dict per layer, kept across rounds (what a training step
  costs when the mask is recomputed every step);
* ``same, torch path``     - the warm row with the fused native passes switched off
  (``MAXQ_NATIVE=0``; only where they are built).

Every output is checked with ``torch.equal`` against the reference. The warm caches are primed
with ``--warmup`` steps first. Timings on a shared machine are noisy: the table reports min and
median over rounds; the ratio uses the minima.

Run: ``python benchmarks/masks.py`` (options: --threads, --rounds, --patterns, --step,
--clock cpu for process CPU time instead of wall time).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torchvision

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
from maxq.mask_reference import reference_maxq_mask  # noqa: E402

from maxq import native  # noqa: E402
from maxq.masks import maxq_mask  # noqa: E402


@contextlib.contextmanager
def torch_path():
    """maxq_mask on its pure-torch path (the fused native passes switched off) inside."""
    old = os.environ.get("MAXQ_NATIVE")
    os.environ["MAXQ_NATIVE"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["MAXQ_NATIVE"]
        else:
            os.environ["MAXQ_NATIVE"] = old


def resnet50_sparse_weights(M: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """The sparse conv weights of a freshly initialised torchvision ResNet-50."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    return [mod.weight.detach().clone() for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Conv2d) and mod.groups == 1
            and mod.in_channels % M == 0 and name != "conv1"]


def sgd_like_step(weights, step: float, gen: torch.Generator) -> list[torch.Tensor]:
    """w - lr·(g + wd·w), lr = 0.1, wd = 1e-4, g ~ N(0, (step·std(w)/lr)²)."""
    out = []
    for w in weights:
        g = torch.randn(w.shape, generator=gen) * (step * float(w.std()) / 0.1)
        out.append(w - 0.1 * (g + 1e-4 * w))
    return out


_CLOCK = time.perf_counter


def _timed(fn):
    t = _CLOCK()
    out = fn()
    return out, _CLOCK() - t


def run_pattern(N: int, M: int, args) -> list[tuple]:
    weights = resnet50_sparse_weights(M)
    gen = torch.Generator().manual_seed(1)
    kw = dict(dense_fraction=args.dense_fraction)
    caches = [{} for _ in weights]
    torch_caches = [{} for _ in weights]
    compare = native.lib() is not None and not args.no_torch_path
    for _ in range(args.warmup):                       # prime the warm caches
        [maxq_mask(w, N, M, cache=c, **kw) for w, c in zip(weights, caches)]
        if compare:
            with torch_path():
                [maxq_mask(w, N, M, cache=c, **kw) for w, c in zip(weights, torch_caches)]
        weights = sgd_like_step(weights, args.step, gen)
    times = {"ref": [], "cold": [], "warm": []}
    if compare:
        times["torch"] = []
    for _ in range(args.rounds):
        weights = sgd_like_step(weights, args.step, gen)
        ref, t = _timed(lambda: [reference_maxq_mask(w, N, M, **kw) for w in weights])
        times["ref"].append(t)
        cold, t = _timed(lambda: [maxq_mask(w, N, M, **kw) for w in weights])
        times["cold"].append(t)
        warm, t = _timed(lambda: [maxq_mask(w, N, M, cache=c, **kw)
                                  for w, c in zip(weights, caches)])
        times["warm"].append(t)
        assert all(torch.equal(a, b) for a, b in zip(ref, cold)), "cold output != reference"
        assert all(torch.equal(a, b) for a, b in zip(ref, warm)), "warm output != reference"
        if compare:
            with torch_path():
                tw, t = _timed(lambda: [maxq_mask(w, N, M, cache=c, **kw)
                                        for w, c in zip(weights, torch_caches)])
            times["torch"].append(t)
            assert all(torch.equal(a, b) for a, b in zip(ref, tw)), "torch path != reference"
            del tw
        del ref, cold, warm
    base = min(times["ref"])
    label = f"{N}:{M} rho={args.dense_fraction:g}"
    names = {"ref": "sort-based reference", "cold": "maxq_mask cold (no cache)",
             "warm": f"maxq_mask warm (cache, step {args.step:g})",
             "torch": "  same, torch path (MAXQ_NATIVE=0)"}
    return [(label, names[v], min(ts), statistics.median(ts), min(ts) / base)
            for v, ts in times.items()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--patterns", default="2:4,1:16")
    p.add_argument("--dense-fraction", type=float, default=0.0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or process CPU time (robust on a shared machine with "
                        "--threads 1)")
    p.add_argument("--no-torch-path", action="store_true",
                   help="skip the warm row on the pure-torch path (MAXQ_NATIVE=0)")
    p.add_argument("--step", type=float, default=1e-3,
                   help="relative per-step weight change between rounds")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global _CLOCK
    _CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    rows = []
    for pat in args.patterns.split(","):
        N, M = (int(v) for v in pat.split(":"))
        rows += run_pattern(N, M, args)
    n = sum(w.numel() for w in resnet50_sparse_weights())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}, "
          f"warmup {args.warmup}, {args.clock} clock")
    print(f"52 ResNet-50 sparse convs, {n / 1e6:.1f} M weights; every output identical to the "
          f"reference (torch.equal); mask path: "
          f"{'fused native passes' if native.lib() is not None else 'pure torch'}")
    print(f"{'pattern':<14} {'variant':<36} {'min s':>8} {'median s':>9} {'ratio':>7}")
    for pat, name, tmin, tmed, ratio in rows:
        print(f"{pat:<14} {name:<36} {tmin:8.3f} {tmed:9.3f} {ratio:7.3f}")


if __name__ == "__main__":
    main()
