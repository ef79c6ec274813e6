"""ONNX export of a folded (stock) model: serialisation (the TorchScript exporter, else
torch.export), the check under onnxruntime against PyTorch at batch sizes 1 and 8, and the count
of N:M conv weights in the graph. onnx and onnxruntime are optional dependencies, imported where
they are used. Re-exported by :mod:`maxq.export`."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from maxq import records
from maxq import sparse as sp
from maxq.run_loading import ExportError

ONNX_BATCH_SIZES = (1, 8)
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4


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


def _onnx_nm_check(onnx_bytes: bytes, N: int, M: int, grouping: str = "input") -> dict[str, int]:
    """How many conv weights in the ONNX graph are N:M (BN may be fused in: zeros survive);
    ``grouping``: the method's N:M groups (``"row"``: Bi-Mask's, see maxq.sparse._blocks)."""
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
        if int(sp.block_nonzeros(w, M, grouping).max()) <= N:
            nm += 1
    return {"conv_weights": total, "nm_conv_weights": nm}


def write_onnx(stock: nn.Module, example: torch.Tensor, out: Path, N: int, M: int,
               grouping: str = "input", *, atol: float = ONNX_ATOL, rtol: float = ONNX_RTOL,
               batch_sizes: Sequence[int] = ONNX_BATCH_SIZES, log=print) -> dict[str, Any]:
    """Export the folded stock model to ONNX, verify it under onnxruntime at ``batch_sizes``
    (refused, nothing written, beyond ``atol + rtol * max |logit|``), count its N:M conv weights,
    write ``out``; returns what the export summary adds."""
    data, exporter = _onnx_bytes(stock, example)
    diffs = verify_onnx(data, stock, example.shape, batch_sizes)
    worst = max(d["max_abs_diff"] for d in diffs.values())
    scale = max(d["scale"] for d in diffs.values())
    tol = atol + rtol * scale
    per_batch = ", ".join(f"batch {b}: {d['max_abs_diff']:.3g}" for b, d in diffs.items())
    if not worst <= tol:
        raise ExportError(f"ONNX outputs differ from PyTorch: max abs diff {worst:.3g} > "
                          f"{tol:.3g} ({per_batch}); nothing written")
    nm = _onnx_nm_check(data, N, M, grouping)
    records.atomic_write_bytes(out, data)
    log(f"onnxruntime vs PyTorch: max abs diff {worst:.3g} ({per_batch}; tolerance {tol:.3g})")
    log(f"ONNX conv weights that are {N}:{M}: {nm['nm_conv_weights']} of "
        f"{nm['conv_weights']} with M-divisible inputs")
    log(f"wrote {out} ({len(data) / 1e6:.1f} MB, {exporter} exporter, dynamic batch axis)")
    return {"exporter": exporter, "onnx_max_abs_diff": worst,
            "onnx_max_abs_diff_per_batch": {str(b): d["max_abs_diff"] for b, d in diffs.items()},
            "onnx_tolerance": tol, **nm}
