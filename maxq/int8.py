"""INT8: post-training static quantization of a folded model on CPU, and whether N:M survives.

:func:`quantize_int8` / :func:`evaluate_int8`: torch.ao FX graph mode, x86 backend; weights
per-channel symmetric int8 (zero stays exactly 0, so the N:M zero set survives), activations
per-tensor uint8; top-1 before/after and :func:`int8_nm_check` on the int8 weights.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Iterable

import torch
from torch import nn

from maxq import sparse as sp

__all__ = ["quantize_int8", "int8_nm_check", "evaluate_int8"]


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
        if int(sp.block_nonzeros(w, M).max()) <= N:
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
