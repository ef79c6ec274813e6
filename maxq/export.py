"""Deployment of a trained run: fold, check N:M, export (torchvision / ONNX), and the front of
the 2:4 kernel and INT8 checks.

:func:`export` loads a run directory (or one checkpoint of it), rebuilds the sparse model from
``config.json``, folds W ⊙ S, verifies every sparse layer is N:M (and says which are also valid
2:4), and writes either a plain torchvision ``state_dict`` (loads into the stock model with
``strict=True``), an ONNX file verified under onnxruntime at batch sizes 1 and 8, or the JSON
report of the 2:4 kernels (:mod:`maxq.kernels24`) or of INT8 (:mod:`maxq.int8`). Everything is
computed and checked in memory first; a refusal writes nothing. FLOP counts are in
:mod:`maxq.cost`.

The CLI front is ``maxq export RUN_DIR_OR_CHECKPOINT --format torchvision|onnx|sparse24|int8``.
onnx and onnxruntime are optional dependencies, imported where they are used.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tabulate import tabulate
from torch import nn

from maxq import data as data_mod
from maxq import methods, models, records
from maxq import sparse as sp
from maxq.int8 import evaluate_int8
from maxq.kernels24 import sparse24_check, sparse24_support

__all__ = [
    "ExportError", "NotNMError", "LoadedRun", "load_run", "export", "ExportResult", "nm_report",
    "format_nm_table", "verify_onnx", "load_folded", "add_arguments", "run",
]

FORMATS = ("torchvision", "onnx", "sparse24", "int8")
DEFAULT_NAMES = {"torchvision": "model_torchvision.pth", "onnx": "model.onnx",
                 "sparse24": "sparse24.json", "int8": "int8.json"}
EXPORT_DIR = "export"
ONNX_BATCH_SIZES = (1, 8)
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4


class ExportError(ValueError):
    """A refusal the user can act on (not N:M, wrong arch, unreadable file): one line, no output."""


class NotNMError(ExportError):
    """A sparse layer of the folded model breaks the N:M pattern."""


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
        return models.build(self.arch, self.num_classes, self.in_channels, self.small_input,
                            width_mult=self.width_mult)

    def info(self) -> dict[str, Any]:
        return {"arch": self.arch, "method": self.method, "N": self.N, "M": self.M,
                "num_classes": self.num_classes, "in_channels": self.in_channels,
                "small_input": self.small_input, "image_size": self.image_size,
                "checkpoint": str(self.checkpoint), "epoch": self.epoch}


def _resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) for a run directory or a checkpoint file."""
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
    from maxq import official                   # also reads the authors' files (numpy-1 scalars)

    try:
        obj = official.safe_load(path)
    except official.OfficialCheckpointError as exc:
        raise ExportError(f"cannot read checkpoint {path}: {str(exc).split(': ', 1)[-1]}") from None
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
    args = records.read_config(config)
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
        spec_ds = data_mod.DATASETS.get(fields["set"]) if fields["set"] else None
        if spec_ds is not None:
            small_input = spec_ds.small_input
        else:  # no config: a 3x3 ResNet stem means the small-input stem
            small_input = models.get(arch).family == "resnet" and inferred.get("stem_kernel") == 3
    small_input = bool(small_input)
    if image_size is None:
        image_size = fields["image_size"]
        if image_size is None:
            spec_ds = data_mod.DATASETS.get(fields["set"]) if fields["set"] else None
            image_size = spec_ds.image_size if spec_ds else (32 if small_input else 224)
    image_size = int(image_size)

    from maxq import official                   # an authors' checkpoint: map it (--arch, --nm)

    candidate, _ = official.unwrap(state, str(ckpt))
    if official.is_official_state(candidate):
        try:
            state = official.kit_state_for(ckpt, candidate, meta, arch, N, M, spec.name)
        except official.OfficialCheckpointError as exc:
            raise ExportError(str(exc)) from None
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
    out = [tabulate(lines, headers=cols, tablefmt="simple", disable_numparse=True)]
    sparse = [r for r in rows if r["sparse"]]
    out.append(f"{len(sparse)} sparse layers, all {N}:{M}; "
               f"{sum(r['valid_2to4'] for r in sparse)} of them also valid 2:4; "
               f"{len(rows) - len(sparse)} dense layers")
    return "\n".join(out)


def _fold_checked(loaded: LoadedRun) -> tuple[nn.Module, list[dict]]:
    """(stock model with the folded weights loaded strictly, N:M rows)."""
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


def load_folded(path, *, which: str = "auto", log=print, **kwargs):
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
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if format == "sparse24":
        ok, reason = sparse24_support()
        if not ok:
            log(reason)
            return ExportResult(format, None, {}, [], 0.0, {"skipped": reason})
    if out is not None:
        _refuse_record_targets(Path(out), Path(path), format)
    loaded, stock, rows = load_folded(path, arch=arch, N=N, M=M, which=which,
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
        nm = _onnx_nm_check(data, loaded.N, loaded.M, methods.get(loaded.method).grouping)
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


def _int8_for_run(loaded: LoadedRun, stock: nn.Module, *, data: str | None = None,
                  batch_size: int = 128, val_subset: int | None = 2000,
                  calibration_batches: int = 4, log=print) -> dict:
    """INT8 top-1 before/after on the run's own data set (validation split)."""
    fields = _config_fields(loaded.config)
    set_name = fields["set"]
    if set_name is None:
        raise ExportError("int8 needs the run's config.json (data set name) to evaluate top-1")
    if calibration_batches < 1:
        raise ExportError(f"calibration_batches must be >= 1; got {calibration_batches}")
    args = records.read_config(loaded.config if isinstance(loaded.config, dict) else {})
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


#: accepted ranges of maxq export's numeric options (issue 27: every option has an upper bound)
OPTION_RANGES = {"image_size": (8, 4096), "val_subset": (0, 10**8),
                 "calibration_batches": (1, 10**5)}


def run(args: argparse.Namespace) -> int:
    for name, (low, high) in OPTION_RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not low <= value <= high:
            raise ValueError(f"--{name.replace('_', '-')} must be in {low}..{high}; got {value}")
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
