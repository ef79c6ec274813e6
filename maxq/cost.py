"""Cost accounting: FLOPs and parameters, dense vs N:M sparse, per layer and in total.

:func:`cost` counts the way the paper does (method.md §10): every conv and linear layer costs its
multiply-accumulates plus one op per output, every BatchNorm one op per output; a sparse conv's
FLOPs and weight count scale by N/M; the stem, depthwise convs, BN and the classifier stay dense;
activations, pooling and residual additions are free. This reproduces the paper's ResNet-50
figures at 224² (4.11 G / 25.56 M dense, 2.12 G / 13.83 M at 2:4, 1.13 G / 7.97 M at 1:4 and 2:8,
0.38 G / 3.58 M at 1:16).

Its own module so that the results and reports count FLOPs without importing the deployment
code (:mod:`maxq.export`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from maxq import models
from maxq import sparse as sp
from maxq.methods import get as get_method

__all__ = ["CostReport", "cost", "cost_table"]


@dataclass
class CostReport:
    """FLOPs and parameters, dense vs sparse, per layer and in total.

    ``layers``: one dict per counted module (conv, linear, BatchNorm) in forward order with
    ``layer, kind, shape, sparse, N, M, dense_flops, sparse_flops, dense_params, sparse_params``.
    Totals include every parameter of the model (also those of modules not listed, if any).
    """

    layers: list[dict]
    input_size: tuple[int, ...]
    N: int | None
    M: int | None
    dense_flops: int
    sparse_flops: int
    dense_params: int
    sparse_params: int

    def table(self):
        """Per-layer pandas DataFrame."""
        return pd.DataFrame(self.layers)

    def totals(self) -> dict[str, Any]:
        return {
            "N": self.N, "M": self.M, "input_size": list(self.input_size),
            "dense_flops": self.dense_flops, "sparse_flops": self.sparse_flops,
            "dense_params": self.dense_params, "sparse_params": self.sparse_params,
            "flops_ratio": self.sparse_flops / self.dense_flops if self.dense_flops else None,
            "params_ratio": self.sparse_params / self.dense_params if self.dense_params else None,
        }

    def summary(self) -> str:
        nm = f"{self.N}:{self.M}" if self.N is not None else "dense"
        return (f"{nm} @ {'x'.join(map(str, self.input_size))}: "
                f"FLOPs {self.dense_flops / 1e9:.2f} G dense -> {self.sparse_flops / 1e9:.2f} G sparse, "
                f"params {self.dense_params / 1e6:.2f} M dense -> {self.sparse_params / 1e6:.2f} M sparse")

    def __str__(self) -> str:  # pragma: no cover - formatting only
        return self.summary()


def _normalise_input_size(input_size: Any, in_channels: int) -> tuple[int, ...]:
    if isinstance(input_size, int):
        return (1, in_channels, input_size, input_size)
    size = tuple(int(v) for v in input_size)
    if len(size) == 2:
        return (1, in_channels) + size
    if len(size) == 3:
        return (1,) + size
    if len(size) == 4:
        return (1,) + size[1:]
    raise ValueError(f"input_size must be an int, (H, W), (C, H, W) or (B, C, H, W); got {input_size!r}")


def _first_conv_in_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _shape_forward(model: nn.Module, shape: tuple[int, ...], types) -> list[tuple[str, nn.Module, Any]]:
    """``(name, module, output)`` of every module of ``types`` in one eval forward at ``shape``.

    Runs on a meta-device copy (shapes only, no arithmetic); falls back to a real forward on
    zeros (no_grad, eval, mode restored) if the model cannot run on meta.
    """
    def run(forward, x: torch.Tensor) -> list:
        calls: list = []
        handles = [module.register_forward_hook(
            lambda mod, inp, out, _n=name: calls.append((_n, mod, out)))
            for name, module in model.named_modules() if isinstance(module, types)]
        try:
            with torch.no_grad():
                forward(x)
        finally:
            for h in handles:
                h.remove()
        return calls

    try:  # swap every parameter and buffer for a meta tensor for one call: nothing is copied
        from torch.func import functional_call

        meta_state = {k: torch.empty_like(v, device="meta")
                      for k, v in list(model.named_parameters()) + list(model.named_buffers())}
        was_training = model.training
        model.eval()
        try:
            return run(lambda x: functional_call(model, meta_state, (x,)),
                       torch.empty(shape, device="meta"))
        finally:
            model.train(was_training)
    except Exception:  # an op without a meta kernel: count on a real forward instead
        pass
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        return run(model, torch.zeros(shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)


def _sparse_plan(model: nn.Module, N: int | None, M: int | None) -> tuple[set[str], int | None, int | None]:
    """(sparse layer names, N, M) of a sparsified, folded or stock model."""
    base = sp._unwrap(model)
    info = getattr(base, "maxq_method", None) or getattr(base, "maxq_folded", None) or {}
    layers = sp.sparse_layers(base)
    if layers:
        first = next(iter(layers.values())).maxq
        N = first.N if N is None else N
        M = first.M if M is None else M
        return set(layers), N, M
    if info.get("layers") and (N is None or (N, M) == (info.get("N"), info.get("M"))):
        return set(info["layers"]), info.get("N"), info.get("M")
    N = info.get("N") if N is None else N
    M = info.get("M") if M is None else M
    if info.get("method") is not None:
        if not get_method(info["method"]).sparse:
            return set(), None, None
    if N is None or M is None:
        return set(), None, None
    sp._check_nm_args(N, M)
    policy = sp.layer_policy(base, M)
    return {name for name, (sparse, _) in policy.items() if sparse}, N, M


@torch.no_grad()
def cost(model: nn.Module, input_size: Any = (3, 224, 224), N: int | None = None,
         M: int | None = None) -> CostReport:
    """FLOPs and params dense vs sparse per layer and in total (method.md §10).

    ``model``: a sparsified model (its sparse layers, N and M are used), a folded one, or a stock
    model with ``N`` and ``M`` (the §7 layer policy of :func:`maxq.sparse.layer_policy` decides
    which layers are sparse). Without N:M the sparse columns equal the dense ones.
    ``input_size``: int (square, channels of the stem), (C, H, W) or (B, C, H, W); counted at
    batch 1. Counting: conv/linear = MACs + one op per output; BatchNorm = one op per output;
    sparse conv FLOPs and weight params × N/M; all else dense; activations/pooling/adds free.
    """
    base = sp._unwrap(model)
    if (N is None) != (M is None):
        raise ValueError("pass both N and M, or neither")
    sparse_names, N, M = _sparse_plan(base, N, M)
    ratio = N / M if sparse_names else 1.0
    shape = _normalise_input_size(input_size, _first_conv_in_channels(base))
    rows: list[dict] = []

    def hook(name, module, output):
        out = output.numel()
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = out * (module.in_channels // module.groups) * kh * kw
            kind = f"conv{kh}x{kw}" + (" depthwise" if module.groups > 1 and module.groups ==
                                       module.in_channels else " grouped" if module.groups > 1 else "")
        elif isinstance(module, nn.Linear):
            macs = out * module.in_features
            kind = "linear"
        else:
            macs = 0
            kind = "batchnorm"
        is_sparse = name in sparse_names
        r = ratio if is_sparse else 1.0
        dense_flops = macs + out
        weight = getattr(module, "weight", None)
        w_params = weight.numel() if isinstance(weight, torch.Tensor) else 0
        other = sum(p.numel() for n, p in module.named_parameters(recurse=False) if n != "weight")
        rows.append({
            "layer": name, "kind": kind,
            "shape": list(weight.shape) if isinstance(weight, torch.Tensor) else [],
            "output": list(output.shape[1:]), "sparse": is_sparse,
            "N": N if is_sparse else None, "M": M if is_sparse else None,
            "dense_flops": int(dense_flops), "sparse_flops": dense_flops * r,
            "dense_params": int(w_params + other), "sparse_params": w_params * r + other,
        })

    counted = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    for name, module, output in _shape_forward(base, shape, counted):
        hook(name, module, output)
    seen = {r["layer"] for r in rows}
    missing = [n for n in sparse_names if n not in seen]
    if missing:
        raise ValueError(f"sparse layers not reached by the forward pass: {', '.join(sorted(missing))}")
    # parameters of modules that were not counted above (stay dense)
    counted_params = {id(p) for m in base.modules() if isinstance(m, counted)
                      for p in m.parameters(recurse=False)}
    extra = sum(p.numel() for p in base.parameters() if id(p) not in counted_params)
    for r in rows:  # sparse figures are whole numbers when M divides the weight (always for N:M)
        r["sparse_flops"] = int(round(r["sparse_flops"]))
        r["sparse_params"] = int(round(r["sparse_params"]))
    return CostReport(
        layers=rows, input_size=shape[1:], N=N if sparse_names else None,
        M=M if sparse_names else None,
        dense_flops=sum(r["dense_flops"] for r in rows),
        sparse_flops=sum(r["sparse_flops"] for r in rows),
        dense_params=sum(r["dense_params"] for r in rows) + extra,
        sparse_params=sum(r["sparse_params"] for r in rows) + extra,
    )


def cost_table(model: nn.Module | str, input_size: Any = (3, 224, 224),
               patterns: Iterable[tuple[int, int] | None] = (None, (2, 4), (1, 4), (2, 8), (1, 16)),
               *, num_classes: int = 1000):
    """One row per pattern (``None`` = dense): GFLOPs and M params as §10 counts them.

    ``model``: a stock model or an arch name of :mod:`maxq.models` (built with ``num_classes``).
    Columns: pattern, gflops, mparams, flops, params, flops_ratio, params_ratio, valid_2to4.
    """
    if isinstance(model, str):
        model = models.build(model, num_classes)
    rows = []
    for nm in patterns:
        N, M = nm if nm is not None else (None, None)
        r = cost(model, input_size, N, M)
        rows.append({"pattern": "dense" if nm is None else f"{N}:{M}",
                     "gflops": r.sparse_flops / 1e9, "mparams": r.sparse_params / 1e6,
                     "flops": r.sparse_flops, "params": r.sparse_params,
                     "flops_ratio": r.sparse_flops / r.dense_flops,
                     "params_ratio": r.sparse_params / r.dense_params,
                     "valid_2to4": bool(nm is not None and N <= 2 and M % 4 == 0)})
    return pd.DataFrame(rows)
