"""Which layers of a model are sparse and why (method.md §7: :func:`layer_policy`), and the
per-layer table the CLI prints and ``config.json`` stores (:func:`describe`, one row per
conv/linear layer, keyed ``layer``; :func:`format_table`), with the share of weights that never
touch data at an input size (:func:`dead_weight_share`). Re-exported by :mod:`maxq.sparse`."""
from __future__ import annotations

import torch
from tabulate import tabulate
from torch import nn

from maxq.methods import get as get_method


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_policy(model: nn.Module, M: int) -> dict[str, tuple[bool, str]]:
    """``{layer name: (sparse, reason)}`` for every conv and linear layer (method.md §7)."""
    policy: dict[str, tuple[bool, str]] = {}
    first_conv = next((n for n, m in _weighted_layers(model) if isinstance(m, nn.Conv2d)), None)
    for name, module in _weighted_layers(model):
        if isinstance(module, nn.Linear):
            policy[name] = (False, "linear (classifier) stays dense")
        elif name == first_conv:
            policy[name] = (False, "stem (first conv, sees the image) stays dense")
        elif module.groups != 1:
            policy[name] = (False, f"depthwise/grouped conv (groups={module.groups}) stays dense")
        elif module.in_channels % M != 0:
            policy[name] = (False, f"skipped: in_channels={module.in_channels} not divisible by M={M}")
        else:
            policy[name] = (True, f"sparse: blocks of {M} consecutive input channels")
    return policy


# ----------------------------------------------------------------------------- describe
def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _live_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Kernel taps along one axis that read at least one real (non-padding) input entry at
    some output position of a conv over ``size`` inputs."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    return sum(any(0 <= o * stride - padding + i * dilation < size for o in range(max(out, 0)))
               for i in range(kernel))


def dead_weight_share(conv: nn.Module, input_hw: tuple[int, int] | None) -> float:
    """Share of a conv's weights whose kernel tap never touches data (only zero padding) at the
    input spatial size ``input_hw``: e.g. 8/9 for a 3x3 conv with padding 1 on a 1x1 map.
    Such weights get no gradient from data, so no mask method can rank them by what they do.
    0 for linear layers and 1x1 convs (and when the size is unknown: the layer never ran)."""
    if not isinstance(conv, nn.Conv2d) or input_hw is None:
        return 0.0
    kernel, stride, dilation = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    padding = conv.padding
    if isinstance(padding, str):                     # "valid" / "same"
        padding = tuple(0 if padding == "valid" else dilation[a] * (kernel[a] - 1) // 2
                        for a in range(2))
    padding = _pair(padding)
    live = 1
    for a in range(2):
        live *= _live_taps(int(input_hw[a]), kernel[a], stride[a], padding[a], dilation[a])
    return 1.0 - live / (kernel[0] * kernel[1])


@torch.no_grad()
def input_sizes(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Input spatial size (H, W) of every conv of ``model`` for one input of ``input_size``
    ``(1, C, H, W)``, from one eval-mode forward (stored masks, no refresh; modes restored)."""
    base = _unwrap(model)
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module, args) -> None:            # returns None: the inputs stay as they are
            sizes.setdefault(name, tuple(int(v) for v in args[0].shape[-2:]))
        return hook

    hooks = [m.register_forward_pre_hook(record(name))
             for name, m in base.named_modules() if isinstance(m, nn.Conv2d)]
    modes = {m: m.training for m in base.modules()}
    param = next(base.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        base.eval()
        base(torch.zeros(tuple(int(v) for v in input_size), device=device))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return sizes


def weighted_dead_share(rows: list[dict]) -> float | None:
    """Dead-weight share of all sparse layers of a :func:`describe` table, weighted by their
    parameters (None when the table has no sparse layer or no input size was given)."""
    sparse_rows = [r for r in rows if r["sparse"] and r.get("dead_weight_share") is not None]
    total = sum(r["params"] for r in sparse_rows)
    if not total:
        return None
    return sum(r["params"] * r["dead_weight_share"] for r in sparse_rows) / total


def describe(model: nn.Module, N: int | None = None, M: int | None = None, *,
             input_size: tuple[int, ...] | None = None) -> list[dict]:
    """One row per conv/linear layer: layer (module name), kind, shape, sparse, reason, N, M, params,
    params_kept, valid_2to4.

    For a sparsified model N and M come from the model; for a stock model pass them to see what
    :func:`sparsify` would do. With ``input_size=(1, C, H, W)`` every row also gets the layer's
    ``input_size`` (H, W; None for linear layers) and its ``dead_weight_share``
    (:func:`dead_weight_share`), measured by one forward pass.
    """
    info = getattr(model, "maxq_method", None) or getattr(model, "maxq_folded", None) or {}
    N = N if N is not None else info.get("N")
    M = M if M is not None else info.get("M")
    if N is None or M is None:
        raise ValueError("describe() needs N and M for a model that is not sparsified")
    policy = layer_policy(model, M)
    method = info.get("method")
    dense_method = method is not None and not get_method(method).sparse
    sizes = input_sizes(model, input_size) if input_size is not None else None
    rows = []
    for name, module in _weighted_layers(model):
        sparse, reason = policy[name]
        if sparse and info.get("grouping") == "row":
            reason = f"sparse: blocks of {M} consecutive entries of the (in, kh, kw) row"
        if dense_method:
            sparse, reason = False, f"method {method} is dense"
        weight = module.weight
        kind = "linear" if weight.dim() == 2 else f"conv{weight.shape[2]}x{weight.shape[3]}"
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            kind = f"{kind} depthwise" if module.groups == module.in_channels else f"{kind} grouped"
        params = weight.numel()
        rows.append({
            "layer": name, "kind": kind, "shape": list(weight.shape), "sparse": sparse,
            "reason": reason, "N": N if sparse else None, "M": M if sparse else None,
            "params": params, "params_kept": params * N // M if sparse else params,
            "valid_2to4": bool(sparse and N <= 2 and M % 4 == 0),
        })
        if sizes is not None:
            hw = sizes.get(name)
            rows[-1]["input_size"] = list(hw) if hw is not None else None
            rows[-1]["dead_weight_share"] = dead_weight_share(module, hw)
    return rows


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of :func:`describe` rows (printed by the CLI, logged by runs)."""
    sized = any("dead_weight_share" in r for r in rows)
    cols = ("layer", "kind", "shape", "sparse", "N:M", "params") + (
        ("input", "dead") if sized else ()) + ("reason",)
    lines = []
    for r in rows:
        nm = f"{r['N']}:{r['M']}" if r["sparse"] else "-"
        extra = ()
        if sized:
            hw = r.get("input_size")
            extra = ("x".join(map(str, hw)) if hw else "-", f"{r['dead_weight_share']:.0%}")
        lines.append((r["layer"], r["kind"], "x".join(map(str, r["shape"])),
                      "yes" if r["sparse"] else "no", nm, f"{r['params']:,}", *extra,
                      r["reason"]))
    out = [tabulate(lines, headers=cols, tablefmt="simple", disable_numparse=True)]
    n_sparse = sum(r["sparse"] for r in rows)
    summary = f"{n_sparse} sparse / {len(rows) - n_sparse} dense layers"
    dead = weighted_dead_share(rows) if sized else None
    if dead is not None:
        summary += (f"; {dead:.1%} of the sparse weights never touch data at this input size "
                    f"(kernel taps over padding only)")
    out.append(summary)
    return "\n".join(out)
