"""Train-step benchmark: dense ResNet-50 vs MaxQ (mask recomputed every step) vs SR-STE vs MaxQ
with the sort-based reference mask, side by side in one process.

Setting (the issue's): stock torchvision ResNet-50, 32x32 input, batch 64, SGD (lr 0.1,
momentum 0.9, weight decay 1e-4), cross-entropy; one step = forward + backward + optimizer step.
MaxQ = ``maxq.sparse.sparsify(model, "SoftMaxQConv2DBN", 2, 4)``: the 52 sparse convs recompute
their mask ``maxq_mask(..., cache=...)`` on every training forward (dense fraction ρ = 0, i.e.
the full N:M + axis-query mask), all up front, layers side by side on the CPU threads
(``maxq.sparse.refresh_masks``). With more than one thread the table adds the same model with
the layers' masks computed one after another (``set_mask_workers(model, 1)``), to show what the
side-by-side refresh gains. ``--decay`` adds the SR-STE decay step of the recipe to the MaxQ rows.
SR-STE = ``sparsify(model, "SoftSRSTEConv2dBN", 2, 4)``: its hard N:M mask (``nm_mask``) every
step and its decay (``--decay``, else the recipe's 2e-4) after backward. Where the fused native
mask passes are built (``maxq/native.py``), a row with the same MaxQ model on the pure-torch mask
path (``MAXQ_NATIVE=0`` around its steps: the sync-free formulation, equal-shaped layers stacked
into one call of the op ``maxq::maxq_mask``; same masks) shows what they gain
(``--no-torch-path`` drops it).

The models start from the same weights and take the same steps on the same data, round
by round (``--rounds``), after ``--warmup`` untimed steps. The table reports min and median per
step and the ratio of minima to the dense step.

Run: ``python benchmarks/train_step.py`` (options: --threads, --rounds, --warmup, --decay,
--clock cpu for process CPU time instead of wall time; on a busy machine use
``--threads 1 --clock cpu``).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
from maxq.mask_reference import reference_maxq_mask  # noqa: E402

from maxq import native, sparse  # noqa: E402


def mask_path() -> str:
    """Which maxq_mask path the MaxQ rows use: the fused native passes or the torch path."""
    if native.lib() is not None:
        return "fused native passes (maxq/_native.c)"
    why = native.error() or "MAXQ_NATIVE=0"
    return f"pure torch ({why})"


def use_reference_masks(model) -> None:
    """Make every sparse layer compute its mask with the sort-based reference."""
    for module in sparse.sparse_layers(model).values():
        st = module.maxq

        def compute(weight, st=st):
            return reference_maxq_mask(weight, st.N, st.M, dense_fraction=st.dense_fraction,
                                       tau=st.tau, axis=st.method.axis,
                                       selection=st.method.selection,
                                       progressive=st.method.progressive,
                                       generator=st.generator)
        st.compute_mask = compute


TORCH_PATH = "MaxQ 2:4, torch-path masks (MAXQ_NATIVE=0)"


def torch_path(step):
    """The step with maxq_mask on its pure-torch path (the fused native passes switched off)."""
    def run(x, y):
        old = os.environ.get("MAXQ_NATIVE")
        os.environ["MAXQ_NATIVE"] = "0"
        try:
            return step(x, y)
        finally:
            if old is None:
                del os.environ["MAXQ_NATIVE"]
            else:
                os.environ["MAXQ_NATIVE"] = old
    return run


def make_step(model, decay: float):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    is_sparse = bool(sparse.sparse_layers(model))

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if is_sparse and decay:
            sparse.srste_decay_(model, decay)
        opt.step()
        return loss.detach()
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--decay", type=float, default=0.0, help="SR-STE decay (recipe: 2e-4)")
    p.add_argument("--no-reference", action="store_true", help="skip the sort-based variant")
    p.add_argument("--no-torch-path", action="store_true",
                   help="skip the MaxQ row with the pure-torch mask path (MAXQ_NATIVE=0)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or process CPU time (robust on a shared machine with "
                        "--threads 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dense = torchvision.models.resnet50()
    models = {"dense ResNet-50": dense}
    maxq_model = sparse.sparsify(copy.deepcopy(dense), "SoftMaxQConv2DBN", 2, 4)
    models["MaxQ 2:4, maxq_mask every step"] = maxq_model
    if torch.get_num_threads() > 1:
        one_by_one = sparse.sparsify(copy.deepcopy(dense), "SoftMaxQConv2DBN", 2, 4)
        sparse.set_mask_workers(one_by_one, 1)
        models["  same, layers one after another"] = one_by_one
    models["SR-STE 2:4, nm_mask every step"] = sparse.sparsify(copy.deepcopy(dense),
                                                               "SoftSRSTEConv2dBN", 2, 4)
    if native.lib() is not None and not args.no_torch_path:
        models[TORCH_PATH] = sparse.sparsify(copy.deepcopy(dense), "SoftMaxQConv2DBN", 2, 4)
    if not args.no_reference:
        ref_model = sparse.sparsify(copy.deepcopy(dense), "SoftMaxQConv2DBN", 2, 4)
        use_reference_masks(ref_model)
        models["MaxQ 2:4, sort-based mask every step"] = ref_model
    steps = {name: make_step(m.train(), (args.decay or 2e-4) if name.startswith("SR-STE")
                             else args.decay) for name, m in models.items()}
    if TORCH_PATH in steps:
        steps[TORCH_PATH] = torch_path(steps[TORCH_PATH])

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(args.batch, 3, args.size, args.size, generator=g),
             torch.randint(0, 1000, (args.batch,), generator=g)) for _ in range(4)]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    times = {name: [] for name in models}
    for i in range(args.warmup + args.rounds):
        x, y = data[i % len(data)]
        for name, step in steps.items():
            t = clock()
            step(x, y)
            dt = clock() - t
            if i >= args.warmup:
                times[name].append(dt)

    base = min(times["dense ResNet-50"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ResNet-50, "
          f"{args.size}x{args.size}, batch {args.batch}, rounds {args.rounds} "
          f"(after {args.warmup} warm-up), decay: MaxQ {args.decay:g}, SR-STE "
          f"{args.decay or 2e-4:g}, {args.clock} clock")
    print(f"mask path: {mask_path()}; load average before the rounds: {load}")
    print(f"{'variant':<40} {'min s':>8} {'median s':>9} {'ratio':>7}")
    for name, ts in times.items():
        print(f"{name:<40} {min(ts):8.3f} {statistics.median(ts):9.3f} {min(ts) / base:7.3f}")


if __name__ == "__main__":
    main()
