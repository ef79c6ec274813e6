"""Deployment: fold + export (torchvision / ONNX), cost accounting, real 2:4 kernels, INT8.

* :func:`cost` counts FLOPs and parameters dense vs sparse, per layer and in total, the way the
  paper does (method.md §10): every conv and linear layer costs its multiply-accumulates plus one
  op per output, every BatchNorm one op per output; a sparse conv's FLOPs and weight count scale
  by N/M; the stem, depthwise convs, BN and the classifier stay dense; activations, pooling and
  residual additions are free. This reproduces the paper's ResNet-50 figures at 224²
  (4.11 G / 25.56 M dense, 2.12 G / 13.83 M at 2:4, 1.13 G / 7.97 M at 1:4 and 2:8,
  0.38 G / 3.58 M at 1:16).
* :func:`export` loads a run directory (or one checkpoint of it), rebuilds the sparse model from
  ``config.json``, folds W ⊙ S, verifies every sparse layer is N:M (and says which are also
  valid 2:4), and writes either a plain torchvision ``state_dict`` (loads into the stock model
  with ``strict=True``) or an ONNX file verified under onnxruntime at batch sizes 1 and 8.
  Everything is computed and checked in memory first; a refusal writes nothing.
* :func:`semi_structured_linearize` swaps matmul-shaped layers (linear, 1×1 conv) of a folded 2:4
  model for ``torch.sparse.to_sparse_semi_structured`` weights (NVIDIA GPUs with compute
  capability >= 8.0 only); ``benchmarks/sparse_kernels.py`` times them against dense.
* :func:`quantize_int8` / :func:`evaluate_int8`: post-training static INT8 (torch.ao FX graph
  mode, x86 backend) of a folded model on CPU, top-1 before/after, and whether N:M survives.

The CLI front is ``maxq export RUN_DIR_OR_CHECKPOINT --format torchvision|onnx|sparse24|int8``.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "ExportError", "NotNMError", "CostReport", "cost", "cost_table", "LoadedRun", "load_run", "export", "ExportResult",
    "nm_report", "format_nm_table", "verify_onnx", "SPARSE24_CPU_MESSAGE", "sparse24_support",
    "semi_structured_linearize", "sparse24_check", "quantize_int8", "evaluate_int8",
    "int8_nm_check", "add_arguments", "run",
]

FORMATS = ("torchvision", "onnx", "sparse24", "int8")
DEFAULT_NAMES = {"torchvision": "model_torchvision.pth", "onnx": "model.onnx",
                 "sparse24": "sparse24.json", "int8": "int8.json"}
EXPORT_DIR = "export"
ONNX_BATCH_SIZES = (1, 8)
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4
SPARSE24_CPU_MESSAGE = ("no 2:4 sparse kernel on CPU: torch.sparse.to_sparse_semi_structured needs an "
                        "NVIDIA GPU with compute capability >= 8.0")


class ExportError(ValueError):
    """A refusal the user can act on (not N:M, wrong arch, unreadable file): one line, no output."""


class NotNMError(ExportError):
    """A sparse layer of the folded model breaks the N:M pattern."""


# ============================================================================ cost accounting
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
        import pandas as pd

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
    from maxq import sparse as sp

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
        from maxq.methods import get as get_method

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
    from maxq import sparse as sp

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
    import pandas as pd

    if isinstance(model, str):
        from maxq import models

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


# ============================================================================ loading a run
@dataclass
class LoadedRun:
    """A rebuilt sparse model with its checkpoint loaded (eval mode) and what describes it."""

    model: nn.Module
    arch: str
    method: str
    N: int
    M: int
    num_classes: int
    in_channels: int
    small_input: bool
    image_size: int
    checkpoint: Path
    run_dir: Path | None
    config: dict = field(default_factory=dict)
    epoch: int | None = None
    width_mult: float = 1.0

    def build_stock(self) -> nn.Module:
        from maxq import models

        return models.build(self.arch, self.num_classes, self.in_channels, self.small_input,
                            width_mult=self.width_mult)

    def info(self) -> dict[str, Any]:
        return {"arch": self.arch, "method": self.method, "N": self.N, "M": self.M,
                "num_classes": self.num_classes, "in_channels": self.in_channels,
                "small_input": self.small_input, "image_size": self.image_size,
                "checkpoint": str(self.checkpoint), "epoch": self.epoch}


def _resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) for a run directory or a checkpoint file."""
    from maxq import records

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist")
    if path.is_dir():
        order = ([records.CHECKPOINT, records.BEST] if which == "last"
                 else [records.BEST, records.CHECKPOINT])
        for name in order:
            if (path / name).is_file():
                return path / name, path
        raise ExportError(f"{path} holds no checkpoint ({records.BEST} or {records.CHECKPOINT})")
    run_dir = path.parent if (path.parent / records.CONFIG).is_file() else None
    return path, run_dir


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state_dict, other scalar entries such as arch/epoch) of a checkpoint file, loaded
    with ``weights_only=True``; a clear one-line error if it is unreadable."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            AttributeError, ImportError, IndexError, TypeError) as exc:
        raise ExportError(f"cannot read checkpoint {path}: not a PyTorch checkpoint or corrupt "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise ExportError(f"cannot read checkpoint {path}: not a PyTorch checkpoint or corrupt "
                          f"({type(exc).__name__})") from None
    state, meta = obj, {}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "model_state"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                meta = {k: v for k, v in obj.items()
                        if k != key and isinstance(v, (str, int, float, bool))}
                break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ExportError(f"{path} holds no model state_dict (expected a dict of tensors, "
                          f"or one under the key 'state_dict')")
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state, meta


def _config_fields(config: dict) -> dict[str, Any]:
    """What rebuilding needs, from ``config.json`` as :func:`maxq.train.train` writes it
    (``args``: the resolved TrainConfig; ``data``: num_classes, in_channels, image_size)."""
    config = config if isinstance(config, dict) else {}
    args = config.get("args") if isinstance(config.get("args"), dict) else config
    data = config.get("data") if isinstance(config.get("data"), dict) else {}

    def pick(*keys, default=None):
        for key in keys:
            for source in (args, data, config):
                value = source.get(key)
                if value is not None and not isinstance(value, (dict, list)):
                    return value
        return default

    return {
        "arch": pick("arch"), "method": pick("conv_bn_type"),
        "N": pick("N"), "M": pick("M"), "num_classes": pick("num_classes"),
        "in_channels": pick("in_channels"), "small_input": pick("small_input"),
        "image_size": pick("image_size"), "tau": pick("tau", default=0.01), "set": pick("set"),
        "width_mult": pick("width_mult", default=1.0),
    }


def _infer_shapes(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """num_classes / in_channels / small_input from a stock-keyed state_dict (no config.json)."""
    weights = [(k, v) for k, v in state.items() if k.endswith(".weight")]
    convs = [(k, v) for k, v in weights if v.dim() == 4]
    linears = [(k, v) for k, v in weights if v.dim() == 2]
    out: dict[str, Any] = {}
    if convs:
        stem = convs[0][1]
        out["in_channels"] = int(stem.shape[1])
        out["small_input"] = None  # decided from the stride, which a state_dict does not hold
        out["stem_kernel"] = int(stem.shape[2])
    if linears:
        out["num_classes"] = int(linears[-1][1].shape[0])
    return out


def load_run(path: str | Path, *, arch: str | None = None, N: int | None = None,
             M: int | None = None, method: str | None = None, which: str = "best",
             image_size: int | None = None) -> LoadedRun:
    """Rebuild the sparse model of a run directory (or one checkpoint file) and load its weights.

    Reads ``config.json`` beside the checkpoint (arch, conv_bn_type, N, M, data set shape).
    ``arch``: if given and the run says otherwise, refuse. Without a config.json, ``arch``, ``N``
    and ``M`` are needed (method defaults to SoftSRSTEConv2dBN; the mask buffers come from the
    checkpoint). The model is returned in eval mode; the stored masks are what it uses.
    """
    from maxq import methods, models, records
    from maxq import sparse as sp

    if which not in ("best", "last", "auto"):
        raise ExportError(f"which must be 'best', 'last' or 'auto'; got {which!r}")
    ckpt, run_dir = _resolve_checkpoint(path, which)
    config: dict = {}
    if run_dir is not None:
        try:
            config = records.read_json(run_dir / records.CONFIG)
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"cannot read {run_dir / records.CONFIG}: {exc}") from None
    fields = _config_fields(config)
    state, meta = _read_checkpoint(ckpt)
    inferred = _infer_shapes(state)

    run_arch = fields["arch"] or meta.get("arch")
    if fields["arch"] and meta.get("arch") and fields["arch"] != meta["arch"]:
        raise ExportError(f"arch mismatch: {ckpt} says {meta['arch']!r} but its run's config.json "
                          f"says {fields['arch']!r}")
    if arch is not None and run_arch is not None and arch != run_arch:
        where = run_dir / records.CONFIG if fields["arch"] else ckpt
        raise ExportError(f"arch mismatch: the checkpoint was trained as {run_arch!r}, not "
                          f"{arch!r} ({where})")
    arch = arch or run_arch
    if arch is None:
        raise ExportError(f"no config.json beside {ckpt}: pass --arch (and --nm N:M)")
    try:
        models.get(arch)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    method = method or fields["method"] or "SoftSRSTEConv2dBN"
    try:
        spec = methods.get(method)
    except (ValueError, KeyError) as exc:
        raise ExportError(str(exc).strip("'\"")) from None
    if not spec.sparse:
        raise ExportError(f"{ckpt} is a dense run (conv_bn_type {method}): there is no N:M "
                          f"pattern to export; export a sparse run")
    N = N if N is not None else fields["N"]
    M = M if M is not None else fields["M"]
    if N is None or M is None:
        raise ExportError(f"N:M unknown for {ckpt}: no config.json; pass --nm N:M")
    N, M = int(N), int(M)
    num_classes = int(fields["num_classes"] or inferred.get("num_classes") or 1000)
    in_channels = int(fields["in_channels"] or inferred.get("in_channels") or 3)
    small_input = fields["small_input"]
    if small_input is None:
        from maxq import data as data_mod

        spec_ds = data_mod.DATASETS.get(fields["set"]) if fields["set"] else None
        if spec_ds is not None:
            small_input = spec_ds.small_input
        else:  # no config: a 3x3 ResNet stem means the small-input stem
            small_input = models.get(arch).family == "resnet" and inferred.get("stem_kernel") == 3
    small_input = bool(small_input)
    if image_size is None:
        image_size = fields["image_size"]
        if image_size is None:
            from maxq import data as data_mod

            spec_ds = data_mod.DATASETS.get(fields["set"]) if fields["set"] else None
            image_size = spec_ds.image_size if spec_ds else (32 if small_input else 224)
    image_size = int(image_size)

    if not any(k.endswith(".weight_mask") for k in state):
        raise ExportError(f"{ckpt} holds no N:M masks (no '*.weight_mask' buffers): it is a dense "
                          f"checkpoint; nothing to export as {N}:{M}")
    width_mult = float(fields["width_mult"])
    model = models.build(arch, num_classes, in_channels, small_input, width_mult=width_mult)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # every mask is replaced by the checkpoint's buffer below: skip computing them
            sp.sparsify(model, spec.name, N, M, tau=float(fields["tau"] or 0.01), init_masks=False)
        except ValueError as exc:
            raise ExportError(f"cannot rebuild {arch} as {N}:{M} {spec.name}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(_state_mismatch(ckpt, arch, model.state_dict(), state, exc)) from None
    model.eval()
    return LoadedRun(model=model, arch=arch, method=spec.name, N=N, M=M, num_classes=num_classes,
                     in_channels=in_channels, small_input=small_input, image_size=image_size,
                     checkpoint=ckpt, run_dir=run_dir, config=config, epoch=meta.get("epoch"),
                     width_mult=width_mult)


def _state_mismatch(ckpt: Path, arch: str, expected: dict, got: dict, exc: Exception) -> str:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and expected[k].shape != got[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint "
                     f"{tuple(got[k].shape)} vs model {tuple(expected[k].shape)})")
    detail = "; ".join(parts) or str(exc).splitlines()[0]
    return f"{ckpt} does not fit arch {arch!r} (wrong arch or N:M?): {detail}"


# ============================================================================ N:M verification
def nm_report(folded: nn.Module, N: int, M: int) -> list[dict]:
    """One row per conv/linear of a folded model: sparse?, N:M ok, valid 2:4, non-zeros kept.

    Raises :class:`ExportError` if a sparse layer breaks N:M (via :func:`maxq.sparse.check_nm`).
    """
    from maxq import sparse as sp

    try:
        checked = {r["layer"]: r for r in sp.check_nm(folded, N, M)}
    except ValueError as exc:
        raise NotNMError(f"refusing to export: {exc}") from None
    rows = []
    for row in sp.describe(folded, N, M):
        name = row["layer"]
        module = folded.get_submodule(name)
        weight = module.weight.detach()
        nonzero = int((weight != 0).sum())
        ck = checked.get(name)
        rows.append({
            "layer": name, "kind": row["kind"], "shape": row["shape"],
            "sparse": ck is not None,
            "nm_ok": bool(ck["ok"]) if ck else None,
            "max_nonzeros": ck["max_nonzeros"] if ck else None,
            "valid_2to4": bool(ck["valid_2to4"]) if ck else False,
            "nonzero": nonzero, "params": weight.numel(),
            "reason": row["reason"] if ck is None else f"sparse {N}:{M}",
        })
    return rows


def format_nm_table(rows: list[dict], N: int, M: int) -> str:
    cols = ("layer", "kind", "shape", "sparse", f"{N}:{M} ok", "valid 2:4", "non-zero / params")
    lines = []
    for r in rows:
        lines.append((r["layer"], r["kind"], "x".join(map(str, r["shape"])),
                      "yes" if r["sparse"] else "no",
                      ("yes" if r["nm_ok"] else "NO") if r["sparse"] else "-",
                      ("yes" if r["valid_2to4"] else "no") if r["sparse"] else "-",
                      f"{r['nonzero']:,} / {r['params']:,}"))
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    sparse = [r for r in rows if r["sparse"]]
    out.append(f"{len(sparse)} sparse layers, all {N}:{M}; "
               f"{sum(r['valid_2to4'] for r in sparse)} of them also valid 2:4; "
               f"{len(rows) - len(sparse)} dense layers")
    return "\n".join(out)


def _fold_checked(loaded: LoadedRun) -> tuple[nn.Module, list[dict]]:
    """(stock model with the folded weights loaded strictly, N:M rows)."""
    from maxq import sparse as sp

    folded = sp.fold(loaded.model)
    rows = nm_report(folded, loaded.N, loaded.M)
    stock = loaded.build_stock()
    try:
        stock.load_state_dict(folded.state_dict(), strict=True)
    except RuntimeError as exc:  # would be a bug in fold(): keys must be torchvision's
        raise ExportError(f"folded state_dict does not load into stock {loaded.arch}: "
                          f"{str(exc).splitlines()[0]}") from None
    stock.eval()
    stock.maxq_folded = folded.maxq_folded  # plain attribute: N, M, sparse layer names
    return stock, rows


def _example_input(loaded: LoadedRun, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, loaded.in_channels, loaded.image_size, loaded.image_size, generator=g)


@torch.no_grad()
def _max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return float((a(x) - b(x)).abs().max())


# ============================================================================ ONNX
def _onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int | None = None) -> tuple[bytes, str]:
    """Serialized ONNX of ``model`` with a dynamic batch axis: (bytes, exporter used)."""
    kwargs = dict(input_names=["input"], output_names=["logits"])
    errors = []
    try:  # the TorchScript exporter: quick, no extra dependencies, dynamic_axes
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buffer, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset or 17, do_constant_folding=True, **kwargs)
        return buffer.getvalue(), "torchscript"
    except Exception as exc:  # removed in a later torch: fall back to torch.export
        errors.append(f"torchscript: {type(exc).__name__}: {exc}")
    try:
        import contextlib

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                        opset_version=opset, **kwargs)
        proto = program.model_proto
        return proto.SerializeToString(), "dynamo"
    except Exception as exc:
        errors.append(f"dynamo: {type(exc).__name__}: {exc}")
    raise ExportError("ONNX export failed: " + " | ".join(e.splitlines()[0] for e in errors))


def verify_onnx(onnx_model: bytes | str | Path, model: nn.Module, example_shape: Sequence[int],
                batch_sizes: Iterable[int] = ONNX_BATCH_SIZES, seed: int = 0) -> dict[int, dict]:
    """Per batch size: ``{"max_abs_diff"`` onnxruntime (CPU) vs PyTorch logits, ``"scale"``
    max |PyTorch logit|``}``."""
    import numpy as np
    import onnxruntime as ort

    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    diffs = {}
    model.eval()
    for batch in batch_sizes:
        g = torch.Generator().manual_seed(seed + batch)
        x = torch.randn(batch, *example_shape[1:], generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} at batch {batch}")
        diffs[int(batch)] = {"max_abs_diff": float(np.abs(got - ref).max()),
                             "scale": float(np.abs(ref).max())}
    return diffs


def _onnx_nm_check(onnx_bytes: bytes, N: int, M: int) -> dict[str, int]:
    """How many conv weights in the ONNX graph are N:M (BN may be fused in: zeros survive)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    inits = {i.name: i for i in proto.graph.initializer}
    total = nm = 0
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = torch.from_numpy(numpy_helper.to_array(inits[node.input[1]]).copy())
        if w.dim() != 4 or w.shape[1] % M:
            continue
        total += 1
        if int((w != 0).permute(0, 2, 3, 1).reshape(-1, M).sum(1).max()) <= N:
            nm += 1
    return {"conv_weights": total, "nm_conv_weights": nm}


# ============================================================================ export
@dataclass
class ExportResult:
    format: str
    out: Path | None
    info: dict
    layers: list[dict]
    fold_max_abs_diff: float
    extra: dict = field(default_factory=dict)
    #: the rebuilt soft-mask model and its description (not part of the summary)
    loaded: LoadedRun | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        sparse = [r for r in self.layers if r["sparse"]]
        return {"format": self.format, "out": str(self.out) if self.out else None, **self.info,
                "sparse_layers": len(sparse), "valid_2to4_layers": sum(r["valid_2to4"] for r in sparse),
                "fold_max_abs_diff": self.fold_max_abs_diff, **self.extra}


def _load_folded(path, *, which: str = "auto", log=print, **kwargs):
    """(loaded run, stock model with folded weights, N:M rows). ``which="auto"`` on a run
    directory: best.pth, or the last checkpoint if the best epoch is not N:M yet (an incremental
    run whose best epoch came before its window closed)."""
    candidates = ["best", "last"] if which == "auto" and Path(path).is_dir() else [which]
    tried: list[Path] = []
    for index, choice in enumerate(candidates):
        loaded = load_run(path, which=choice, **kwargs)
        if loaded.checkpoint in tried:
            break
        tried.append(loaded.checkpoint)
        try:
            stock, rows = _fold_checked(loaded)
            return loaded, stock, rows
        except NotNMError as exc:
            if index == len(candidates) - 1:
                raise
            first_error = exc
            log(f"{loaded.checkpoint.name} (epoch {loaded.epoch}) is not {loaded.N}:{loaded.M} "
                f"yet; trying the last checkpoint")
    raise first_error


def _default_out(loaded: LoadedRun, fmt: str) -> Path:
    base = loaded.run_dir if loaded.run_dir is not None else loaded.checkpoint.parent
    return base / EXPORT_DIR / DEFAULT_NAMES[fmt]


def _refuse_record_targets(out: Path, source: Path, fmt: str) -> None:
    """``--out`` may not name a file of a run directory (torchvision's ``.json`` sidecar
    included) nor the checkpoint being exported."""
    from maxq import records

    targets = [out] + ([out.with_suffix(".json")] if fmt == "torchvision" else [])
    for target in targets:
        if records.is_record_path(target) or (
                source.is_file() and target.expanduser().resolve() == source.resolve()):
            raise ExportError(f"--out {out} would overwrite {target}, a file of a run record; "
                              f"nothing was written: choose another --out (default: "
                              f"RUN/{EXPORT_DIR}/{DEFAULT_NAMES[fmt]})")


def export(path: str | Path, format: str = "torchvision", out: str | Path | None = None, *,
           arch: str | None = None, N: int | None = None, M: int | None = None,
           which: str = "auto", image_size: int | None = None, log=print,
           onnx_atol: float = ONNX_ATOL, onnx_rtol: float = ONNX_RTOL,
           batch_sizes: Sequence[int] = ONNX_BATCH_SIZES, int8_options: dict | None = None) -> ExportResult:
    """Fold, verify and write one export of a run directory or checkpoint file.

    ``format``: "torchvision" (plain state_dict + a ``.json`` sidecar describing how to rebuild),
    "onnx" (verified under onnxruntime), "sparse24" (CUDA only: 2:4 kernels check and timing,
    JSON report; on CPU it explains and writes nothing) or "int8" (post-training INT8 on CPU,
    top-1 before/after on the run's validation set, JSON report). Refusals raise
    :class:`ExportError` before anything is written.
    """
    from maxq import records

    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if format == "sparse24":
        ok, reason = sparse24_support()
        if not ok:
            log(reason)
            return ExportResult(format, None, {}, [], 0.0, {"skipped": reason})
    if out is not None:
        _refuse_record_targets(Path(out), Path(path), format)
    loaded, stock, rows = _load_folded(path, arch=arch, N=N, M=M, which=which,
                                       image_size=image_size, log=log)
    x = _example_input(loaded, 2)
    fold_diff = _max_abs_diff(loaded.model, stock, x)
    log(format_nm_table(rows, loaded.N, loaded.M))
    log(f"folded W*S vs soft-mask model: max abs diff {fold_diff:.3g}")
    out = Path(out) if out is not None else _default_out(loaded, format)
    info = loaded.info()
    result = ExportResult(format, out, info, rows, fold_diff, loaded=loaded)

    if format == "torchvision":
        state = {k: v.detach().clone().contiguous() for k, v in stock.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        meta = {**info, "format": "torchvision state_dict", "layers": rows,
                "fold_max_abs_diff": fold_diff,
                "load": (f"maxq.models.build({loaded.arch!r}, num_classes={loaded.num_classes}, "
                         f"in_channels={loaded.in_channels}, small_input={loaded.small_input})"
                         f".load_state_dict(torch.load(PATH), strict=True)")}
        records.atomic_write_bytes(out, buffer.getvalue())
        records.write_json(out.with_suffix(".json"), meta)
        log(f"wrote {out} ({len(state)} tensors; loads into stock {loaded.arch} with strict=True)")
        return result

    if format == "onnx":
        example = _example_input(loaded, 1)
        data, exporter = _onnx_bytes(stock, example)
        diffs = verify_onnx(data, stock, example.shape, batch_sizes)
        worst = max(d["max_abs_diff"] for d in diffs.values())
        scale = max(d["scale"] for d in diffs.values())
        tol = onnx_atol + onnx_rtol * scale
        per_batch = ", ".join(f"batch {b}: {d['max_abs_diff']:.3g}" for b, d in diffs.items())
        if not worst <= tol:
            raise ExportError(f"ONNX outputs differ from PyTorch: max abs diff {worst:.3g} > "
                              f"{tol:.3g} ({per_batch}); nothing written")
        nm = _onnx_nm_check(data, loaded.N, loaded.M)
        records.atomic_write_bytes(out, data)
        result.extra = {"exporter": exporter, "onnx_max_abs_diff": worst,
                        "onnx_max_abs_diff_per_batch": {str(b): d["max_abs_diff"] for b, d in diffs.items()},
                        "onnx_tolerance": tol, **nm}
        log(f"onnxruntime vs PyTorch: max abs diff {worst:.3g} ({per_batch}; tolerance {tol:.3g})")
        log(f"ONNX conv weights that are {loaded.N}:{loaded.M}: {nm['nm_conv_weights']} of "
            f"{nm['conv_weights']} with M-divisible inputs")
        log(f"wrote {out} ({len(data) / 1e6:.1f} MB, {exporter} exporter, dynamic batch axis)")
        return result

    if format == "sparse24":
        report = sparse24_check(stock, loaded, log=log)
        records.write_json(out, {**info, **report})
        result.extra = report
        log(f"wrote {out}")
        return result

    # int8
    report = _int8_for_run(loaded, stock, log=log, **(int8_options or {}))
    records.write_json(out, {**info, **report})
    result.extra = report
    log(f"wrote {out}")
    return result


# ============================================================================ 2:4 kernels
def sparse24_support() -> tuple[bool, str]:
    """(available, reason): semi-structured kernels need CUDA and compute capability >= 8.0."""
    if not torch.cuda.is_available():
        return False, SPARSE24_CPU_MESSAGE
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return False, (f"no 2:4 sparse kernel on this GPU (compute capability {major}.{minor}): "
                       f"torch.sparse.to_sparse_semi_structured needs >= 8.0")
    return True, ""


class SemiStructuredLinear(nn.Module):
    """A linear layer whose weight is a ``SparseSemiStructuredTensor`` (2:4 kernels)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(to_sparse_semi_structured(weight.contiguous()), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = nn.functional.linear(x.reshape(-1, shape[-1]), self.weight, self.bias)
        return y.reshape(*shape[:-1], y.shape[-1])


class SemiStructuredConv1x1(nn.Module):
    """A 1×1 conv run as a matmul: (B·H·W, Ci) @ (Ci, Co) with a 2:4 sparse weight."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.stride = conv.stride
        self.linear = SemiStructuredLinear(conv.weight.detach().reshape(conv.out_channels, -1),
                                           conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1):
            x = x[:, :, ::self.stride[0], ::self.stride[1]]
        b, c, h, w = x.shape
        y = self.linear(x.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return y.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _semi_structured_shape_ok(rows: int, cols: int, dtype: torch.dtype) -> tuple[bool, str]:
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    cls = (SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS
           else SparseSemiStructuredTensorCUSPARSELT)
    c = cls._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if c is None:
        return False, f"dtype {dtype} not supported by {cls.__name__}"
    if rows % c.sparse_min_rows or cols % c.sparse_min_cols or rows < c.sparse_min_rows \
            or cols < c.sparse_min_cols:
        return False, (f"weight {rows}x{cols} not a multiple of ({c.sparse_min_rows}, "
                       f"{c.sparse_min_cols})")
    return True, ""


def semi_structured_linearize(model: nn.Module, *, dtype: torch.dtype = torch.float16,
                              layers: Iterable[str] | None = None) -> tuple[nn.Module, list[dict]]:
    """A copy of a folded model on CUDA in ``dtype`` with 2:4 matmul-shaped layers made sparse.

    Converted: every ``nn.Linear`` and 1×1 ``nn.Conv2d`` (groups 1, no padding/dilation) whose
    weight is a valid 2:4 pattern along the input channels and fits the kernel's shape
    constraints; ``layers`` restricts the candidates. Returns ``(model, rows)`` with one row per
    candidate: layer, converted, reason. 3×3 convs stay dense (cuSPARSELt has no conv kernel).
    """
    ok, reason = sparse24_support()
    if not ok:
        raise RuntimeError(reason)
    wanted = set(layers) if layers is not None else None
    model = copy.deepcopy(model).to(device="cuda", dtype=dtype).eval()
    rows = []
    for name, module in list(model.named_modules()):
        if wanted is not None and name not in wanted:
            continue
        if isinstance(module, nn.Linear):
            weight = module.weight.detach()
        elif (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
              and module.padding in ((0, 0), 0) and module.dilation == (1, 1)):
            weight = module.weight.detach().reshape(module.out_channels, -1)
        else:
            continue
        nz = weight != 0
        if weight.shape[1] % 4 or int(nz.reshape(-1, 4).sum(1).max()) > 2:
            rows.append({"layer": name, "converted": False, "reason": "weight is not 2:4"})
            continue
        fits, why = _semi_structured_shape_ok(*weight.shape, dtype)
        if not fits:
            rows.append({"layer": name, "converted": False, "reason": why})
            continue
        new = (SemiStructuredLinear(weight, module.bias) if isinstance(module, nn.Linear)
               else SemiStructuredConv1x1(module))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        rows.append({"layer": name, "converted": True, "reason": "2:4 semi-structured",
                     "shape": list(weight.shape)})
    return model, rows


def cuda_time(fn, *, warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


@torch.no_grad()
def sparse24_check(folded: nn.Module, loaded: LoadedRun | None = None, *,
                   image_size: int | None = None, in_channels: int | None = None,
                   dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16),
                   batch_sizes: Sequence[int] = (1, 8, 64), log=print) -> dict:
    """Convert, compare outputs and time dense vs 2:4 end to end (CUDA only)."""
    ok, reason = sparse24_support()
    if not ok:
        return {"skipped": reason}
    size = image_size or (loaded.image_size if loaded else 224)
    chans = in_channels or (loaded.in_channels if loaded else 3)
    results = []
    for dtype in dtypes:
        dense = copy.deepcopy(folded).to(device="cuda", dtype=dtype).eval()
        sparse, rows = semi_structured_linearize(folded, dtype=dtype)
        n_conv = sum(r["converted"] for r in rows)
        for batch in batch_sizes:
            x = torch.randn(batch, chans, size, size, device="cuda", dtype=dtype)
            ref, got = dense(x).float(), sparse(x).float()
            diff = float((ref - got).abs().max())
            rel = diff / max(float(ref.abs().max()), 1e-6)
            t_dense = cuda_time(lambda: dense(x))
            t_sparse = cuda_time(lambda: sparse(x))
            row = {"dtype": str(dtype).replace("torch.", ""), "batch": batch,
                   "converted_layers": n_conv, "dense_ms": t_dense, "sparse_ms": t_sparse,
                   "speedup": t_dense / t_sparse, "max_abs_diff": diff, "max_rel_diff": rel}
            results.append(row)
            log(f"{row['dtype']:>8} batch {batch:>4}: dense {t_dense:.3f} ms, 2:4 {t_sparse:.3f} ms "
                f"({row['speedup']:.2f}x), {n_conv} layers converted, max abs diff {diff:.3g}")
    return {"device": torch.cuda.get_device_name(), "image_size": size, "rows": results,
            "converted": rows}


# ============================================================================ INT8
def quantize_int8(folded: nn.Module, calibration: Iterable, *, backend: str = "x86",
                  num_batches: int = 8, example: torch.Tensor | None = None) -> nn.Module:
    """Post-training static INT8 of a folded (plain) model on CPU with torch.ao FX graph mode.

    ``calibration``: iterable of ``(images, labels)`` or of image tensors; ``num_batches`` of it
    are run through the observers. Weights: per-channel symmetric int8 (zero stays exactly 0, so
    the N:M zero set survives); activations: per-tensor uint8. Returns the converted model (CPU).
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine {backend!r} not available "
                           f"(have {torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = backend
    model = copy.deepcopy(folded).cpu().float().eval()
    batches = []
    for i, batch in enumerate(calibration):
        if i >= num_batches:
            break
        batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    if not batches and example is None:
        raise ValueError("calibration data is empty")
    example = example if example is not None else batches[0][:1].cpu().float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping(backend), example_inputs=(example,))
        with torch.no_grad():
            for x in batches:
                prepared(x.cpu().float())
        return convert_fx(prepared)


def int8_nm_check(quantized: nn.Module, N: int, M: int, layers: Iterable[str] | None = None) -> dict:
    """Do the int8 weights of the quantized convs still keep <= N non-zeros per block of M?"""
    total = ok = 0
    names = set(layers) if layers is not None else None
    for name, module in quantized.named_modules():
        weight_fn = getattr(module, "weight", None)
        if not callable(weight_fn) or "Conv" not in type(module).__name__:
            continue
        if names is not None and name not in names:
            continue
        w = weight_fn()
        w = w.int_repr() if w.is_quantized else w
        if w.dim() != 4 or w.shape[1] % M:
            continue
        total += 1
        if int((w != 0).permute(0, 2, 3, 1).reshape(-1, M).sum(1).max()) <= N:
            ok += 1
    return {"checked_layers": total, "nm_layers": ok, "nm_ok": total > 0 and ok == total}


def evaluate_int8(folded: nn.Module, calibration: Iterable, evaluation: Iterable, *,
                  N: int | None = None, M: int | None = None, backend: str = "x86",
                  num_calibration_batches: int = 8, max_eval_batches: int | None = None) -> dict:
    """Top-1 (%) of the folded fp32 model and of its INT8 version on ``evaluation`` (CPU).

    Also ``agreement``: the share of images on which both predict the same class, and
    ``int8_nm``: whether the int8 conv weights still keep the N:M zero pattern.
    """
    t0 = time.perf_counter()
    quantized = quantize_int8(folded, calibration, backend=backend, num_batches=num_calibration_batches)
    t_quant = time.perf_counter() - t0
    fp32 = copy.deepcopy(folded).cpu().float().eval()
    correct_fp32 = correct_int8 = same = seen = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(evaluation):
            if max_eval_batches is not None and i >= max_eval_batches:
                break
            x, y = x.cpu().float(), y.cpu()
            p32, p8 = fp32(x).argmax(1), quantized(x).argmax(1)
            correct_fp32 += int((p32 == y).sum())
            correct_int8 += int((p8 == y).sum())
            same += int((p32 == p8).sum())
            seen += int(y.numel())
    if not seen:
        raise ValueError("evaluation data is empty")
    info = getattr(folded, "maxq_folded", {}) or {}
    N = N if N is not None else info.get("N")
    M = M if M is not None else info.get("M")
    out = {"backend": backend, "top1_fp32": 100.0 * correct_fp32 / seen,
           "top1_int8": 100.0 * correct_int8 / seen, "agreement": same / seen,
           "eval_images": seen, "quantize_seconds": t_quant}
    out["drop"] = out["top1_fp32"] - out["top1_int8"]
    if N is not None and M is not None:
        out["int8_nm"] = int8_nm_check(quantized, N, M, info.get("layers"))
    return out


def _int8_for_run(loaded: LoadedRun, stock: nn.Module, *, data: str | None = None,
                  batch_size: int = 128, val_subset: int | None = 2000,
                  calibration_batches: int = 4, log=print) -> dict:
    """INT8 top-1 before/after on the run's own data set (validation split)."""
    from maxq import data as data_mod

    fields = _config_fields(loaded.config)
    set_name = fields["set"]
    if set_name is None:
        raise ExportError("int8 needs the run's config.json (data set name) to evaluate top-1")
    if calibration_batches < 1:
        raise ExportError(f"calibration_batches must be >= 1; got {calibration_batches}")
    args = loaded.config.get("args", {}) if isinstance(loaded.config, dict) else {}
    data = data or args.get("data")
    try:
        loaders = data_mod.build_loaders(set_name, data, batch_size=batch_size,
                                         image_size=loaded.image_size, val_subset=val_subset,
                                         train_subset=batch_size * calibration_batches,
                                         seed=0, drop_last=False)
    except (data_mod.DataError, OSError) as exc:
        raise ExportError(f"int8: cannot load {set_name}: {exc}") from None
    report = evaluate_int8(stock, loaders.train, loaders.val, N=loaded.N, M=loaded.M,
                           num_calibration_batches=calibration_batches)
    report.update({"set": set_name, "val_subset": val_subset,
                   "calibration_images": batch_size * calibration_batches})
    log(f"INT8 ({report['backend']}, {report['eval_images']} {set_name} val images): top-1 "
        f"{report['top1_fp32']:.2f}% fp32 -> {report['top1_int8']:.2f}% int8 "
        f"(drop {report['drop']:.2f}, same prediction on {100 * report['agreement']:.1f}%); "
        f"N:M kept in int8 weights: "
        f"{report.get('int8_nm', {}).get('nm_layers')} of {report.get('int8_nm', {}).get('checked_layers')}")
    return report


# ============================================================================ CLI
def _parse_nm(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise ExportError(f"--nm must look like N:M (e.g. 2:4); got {text!r}") from None
    return n, m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a run directory (uses best.pth, else checkpoint.pth) or a checkpoint file")
    parser.add_argument("--format", choices=FORMATS, default="torchvision",
                        help="torchvision: plain state_dict; onnx: verified under onnxruntime; "
                             "sparse24: 2:4 kernel check and timing (CUDA only); int8: PTQ top-1")
    parser.add_argument("--out", default=None,
                        help=f"output file (default RUN/{EXPORT_DIR}/" + "{" +
                             ",".join(DEFAULT_NAMES.values()) + "})")
    parser.add_argument("--arch", default=None, help="expected architecture (refused if the run differs)")
    parser.add_argument("--nm", default=None, metavar="N:M",
                        help="N:M of a checkpoint without config.json")
    parser.add_argument("--checkpoint", choices=("auto", "best", "last"), default="auto",
                        help="which checkpoint of a run directory: best.pth, checkpoint.pth (last "
                             "epoch), or auto (default): best unless it is not N:M yet, then last")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size for ONNX / timing (default: the run's)")
    parser.add_argument("--data", default=None, help="data folder for --format int8")
    parser.add_argument("--val-subset", type=int, default=2000,
                        help="int8: class-balanced validation images to score (0: all)")
    parser.add_argument("--calibration-batches", type=int, default=4,
                        help="int8: training batches of 128 images run through the observers")


def run(args: argparse.Namespace) -> int:
    N, M = _parse_nm(getattr(args, "nm", None))
    if args.format == "sparse24":
        ok, reason = sparse24_support()
        if not ok:
            print(reason)
            return 0
    result = export(args.path, args.format, args.out, arch=args.arch, N=N, M=M,
                    which=args.checkpoint, image_size=args.image_size,
                    int8_options={"data": args.data, "val_subset": args.val_subset or None,
                                  "calibration_batches": args.calibration_batches}
                    if args.format == "int8" else None)
    summary = result.summary()
    print(json.dumps({k: v for k, v in summary.items() if k in (
        "format", "out", "arch", "N", "M", "sparse_layers", "valid_2to4_layers", "fold_max_abs_diff",
        "onnx_max_abs_diff", "top1_fp32", "top1_int8")}, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m maxq.export ...``); ``maxq export`` is the usual front."""
    import sys

    parser = argparse.ArgumentParser(prog="maxq export", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
