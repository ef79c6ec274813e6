"""Mask-path benchmark: the sync-free torch path vs the C kernel, cold and warm, and what each
costs in the training step, side by side in one run.

Weights: the 52 sparse convs of torchvision ResNet-50 (every Conv2d with groups == 1 and
in_channels % M == 0 except the stem ``conv1``: layer1..layer4 incl. downsample; 23.4 M weights,
19 distinct shapes).

**Mask refresh** (2:4, dense fraction 0). Each round moves the weights by one SGD-like step
(w <- w - lr·(g + wd·w), lr 0.1, wd 1e-4, g ~ N(0, (step·std(w)/lr)²) per layer, a relative change
~``step`` per weight), then times on those same weights:

* ``sort-based reference``  ``maxq/mask_reference.py`` (full ``torch.sort`` formulation), layer
  by layer: the ratio column divides by its minimum;
* ``torch path, per layer`` ``maxq_mask`` with ``MAXQ_NATIVE=0``, one call per layer (cold: the
  torch path keeps no state, so cold and warm are the same);
* ``torch path, stacked``   the registered op ``maxq::maxq_mask`` on the torch path, one call
  per distinct shape (what the model refresh does on CUDA and without the C kernel);
* ``C kernel cold``         ``maxq_mask`` with the C kernel and no cache (one fresh call);
* ``C kernel warm``         the same with one cache per layer kept across rounds (what training
  with the mask recomputed every step costs).

Every output is checked with ``torch.equal`` against the reference.

**Training step** (``benchmarks/train_step.py``'s setting: ResNet-50, 32 px, batch 64, SGD,
``SoftMaxQConv2DBN`` 2:4, masks recomputed on every forward): dense, MaxQ with the C kernel (warm,
layers side by side on the threads) and MaxQ on the torch path (``MAXQ_NATIVE=0`` around its
steps, stacked refresh), round-robin on the same data; min and median per step, ratio of minima
to dense. The last line applies the issue's rule: keep the C kernel where its training step is
>= 1.3x faster than the torch path's.

On a shared machine the minima over rounds are the honest numbers (the medians show the noise).
Run: ``python benchmarks/masks.py`` (options: --threads, --rounds, --step-rounds, --warmup,
--clock cpu for process CPU time instead of wall time).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time

import torch
import torchvision

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, _HERE)
from maxq.mask_reference import reference_maxq_mask  # noqa: E402
from train_step import make_step  # noqa: E402

from maxq import mask_op, native, sparse  # noqa: E402
from maxq.masks import maxq_mask  # noqa: E402


@contextlib.contextmanager
def torch_path():
    """maxq_mask (and the op's CPU kernel) on the pure-torch path inside."""
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


def stacked(weights, N, M) -> list[torch.Tensor]:
    """The model refresh's stacking: one op call per distinct shape, masks in layer order."""
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault(tuple(w.shape), []).append(i)
    out: list = [None] * len(weights)
    for idx in groups.values():
        S = mask_op.maxq_mask(torch.stack([weights[i] for i in idx]), N, M, 0.0, 0.01, "soft",
                              "smallest", False)
        for i, s in zip(idx, S.unbind(0)):
            out[i] = s
    return out


def refresh_rows(args, clock) -> list[tuple]:
    N, M = 2, 4
    weights = resnet50_sparse_weights(M)
    gen = torch.Generator().manual_seed(1)
    caches = [{} for _ in weights]
    have_c = native.lib() is not None
    for _ in range(args.warmup):                          # prime the warm caches
        if have_c:
            [maxq_mask(w, N, M, cache=c) for w, c in zip(weights, caches)]
        weights = sgd_like_step(weights, args.step, gen)
    variants = {"sort-based reference": lambda ws: [reference_maxq_mask(w, N, M) for w in ws]}

    def on_torch(fn):
        def run(ws):
            with torch_path():
                return fn(ws)
        return run
    variants["torch path, per layer (cold = warm)"] = on_torch(
        lambda ws: [maxq_mask(w, N, M) for w in ws])
    variants["torch path, stacked (19 op calls)"] = on_torch(lambda ws: stacked(ws, N, M))
    if have_c:
        variants["C kernel cold (no cache)"] = lambda ws: [maxq_mask(w, N, M, cache={})
                                                           for w in ws]
        variants["C kernel warm (cache per layer)"] = lambda ws: [
            maxq_mask(w, N, M, cache=c) for w, c in zip(ws, caches)]
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        weights = sgd_like_step(weights, args.step, gen)
        ref = None
        for name, fn in variants.items():
            t = clock()
            out = fn(weights)
            times[name].append(clock() - t)
            if ref is None:
                ref = out
            assert all(torch.equal(a, b) for a, b in zip(ref, out)), f"{name} != reference"
    base = min(times["sort-based reference"])
    return [("refresh 52 convs", name, min(ts), statistics.median(ts), min(ts) / base)
            for name, ts in times.items()]


def step_rows(args, clock) -> tuple[list[tuple], dict]:
    torch.manual_seed(0)
    dense = torchvision.models.resnet50()
    models = {"dense ResNet-50": dense}
    models["MaxQ 2:4, torch path (stacked op)"] = sparse.sparsify(copy.deepcopy(dense),
                                                                "SoftMaxQConv2DBN", 2, 4)
    if native.lib() is not None:
        models["MaxQ 2:4, C kernel (warm)"] = sparse.sparsify(copy.deepcopy(dense),
                                                            "SoftMaxQConv2DBN", 2, 4)
    steps = {name: make_step(m.train(), 0.0) for name, m in models.items()}
    plain = steps["MaxQ 2:4, torch path (stacked op)"]

    def torch_step(x, y):
        with torch_path():
            return plain(x, y)
    steps["MaxQ 2:4, torch path (stacked op)"] = torch_step
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(args.batch, 3, args.size, args.size, generator=g),
             torch.randint(0, 1000, (args.batch,), generator=g)) for _ in range(2)]
    times = {name: [] for name in steps}
    for i in range(1 + args.step_rounds):                 # one untimed warm-up step each
        x, y = data[i % len(data)]
        for name, step in steps.items():
            t = clock()
            step(x, y)
            if i:
                times[name].append(clock() - t)
    base = min(times["dense ResNet-50"])
    rows = [(f"train step {args.size}px b{args.batch}", name, min(ts), statistics.median(ts),
             min(ts) / base) for name, ts in times.items()]
    return rows, {name: min(ts) for name, ts in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="timed mask-refresh rounds")
    p.add_argument("--step-rounds", type=int, default=4, help="timed training steps per model")
    p.add_argument("--warmup", type=int, default=3, help="SGD-like steps priming the C caches")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--step", type=float, default=1e-3,
                   help="relative per-step weight change between refresh rounds")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or process CPU time (robust on a shared machine with "
                        "--threads 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    rows = refresh_rows(args, clock)
    srows, best = step_rows(args, clock)
    rows += srows
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.clock} clock, "
          f"refresh rounds {args.rounds}, train steps {args.step_rounds}, load average at start "
          f"{load}; C kernel: {'built' if native.lib() is not None else native.error()}")
    print("every mask identical to the sort-based reference (torch.equal); ratio = min / min of "
          "the first row of its group")
    print(f"| {'what':<24} | {'variant':<37} | {'min s':>7} | {'median s':>8} | {'ratio':>6} |")
    print(f"|{'-' * 26}|{'-' * 39}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    for what, name, tmin, tmed, ratio in rows:
        print(f"| {what:<24} | {name:<37} | {tmin:7.3f} | {tmed:8.3f} | {ratio:6.3f} |")
    c_step = best.get("MaxQ 2:4, C kernel (warm)")
    if c_step is not None:
        gain = best["MaxQ 2:4, torch path (stacked op)"] / c_step
        verdict = "keep the C kernel on the CPU" if gain >= 1.3 else "delete the C kernel"
        print(f"C kernel vs torch path in the training step: {gain:.2f}x faster "
              f"(rule: keep where >= 1.3x) -> {verdict}")


if __name__ == "__main__":
    main()
