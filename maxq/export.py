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
onnx and onnxruntime are optional dependencies, imported where they are used. Loading a run is
:mod:`maxq.run_loading`, the ONNX side :mod:`maxq.onnx_export`; their names are importable here.
"""
from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tabulate import tabulate
from torch import nn

from maxq import data as data_mod
from maxq import methods, records
from maxq import sparse as sp
from maxq.int8 import evaluate_int8
from maxq.kernels24 import sparse24_check, sparse24_support
from maxq.onnx_export import (ONNX_ATOL, ONNX_BATCH_SIZES, ONNX_RTOL,  # noqa: F401
                              _onnx_bytes, _onnx_nm_check, verify_onnx, write_onnx)
# loading a run lives in maxq.run_loading; its names stay importable from here
from maxq.run_loading import (ExportError, LoadedRun, NotNMError,  # noqa: F401
                              _config_fields, _read_checkpoint, _resolve_checkpoint, load_run)

__all__ = [
    "ExportError", "NotNMError", "LoadedRun", "load_run", "export", "ExportResult", "nm_report",
    "format_nm_table", "verify_onnx", "load_folded", "add_arguments", "run",
]

FORMATS = ("torchvision", "onnx", "sparse24", "int8")
DEFAULT_NAMES = {"torchvision": "model_torchvision.pth", "onnx": "model.onnx",
                 "sparse24": "sparse24.json", "int8": "int8.json"}
EXPORT_DIR = "export"


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
        _write_torchvision(loaded, stock, out, info, rows, fold_diff, log)
        return result

    if format == "onnx":
        result.extra = write_onnx(stock, _example_input(loaded, 1), out, loaded.N, loaded.M,
                                  methods.get(loaded.method).grouping, atol=onnx_atol,
                                  rtol=onnx_rtol, batch_sizes=batch_sizes, log=log)
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


def _write_torchvision(loaded: LoadedRun, stock: nn.Module, out: Path, info: dict,
                       rows: list[dict], fold_diff: float, log) -> None:
    """The plain state_dict at ``out`` and its ``.json`` sidecar (how to rebuild and load it)."""
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
