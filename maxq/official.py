"""The authors' released checkpoints (JingyangXiang/MaxQ): safe loading, key mapping onto the
kit's models, evaluation with their stored soft masks, and ``maxq import-official``.

The facts this module works from are in ``official_formats.md`` (§1–3): a checkpoint is
``{'epoch', 'arch', 'state_dict', 'best_acc1', 'optimizer'}`` (or a bare state dict), written from
the GPU (every storage tagged ``cuda:0``), with numpy-1 scalars in the optimizer's learning rates.
A sparse layer is one conv-BN module ``<m>`` with ``<m>.mask`` (the soft mask, kept entries in
[1, 3], pruned exactly 0), ``<m>.conv.weight`` (the latent dense weight) and ``<m>.scale.*`` (its
BatchNorm); the authors' eval forward is ``scale(conv(x, W * mask))`` with the stored mask as it
is. The kit's sparse layers do the same in eval mode (``weight * weight_mask`` with the stored
buffer), so mapping every key onto the kit's model reproduces their eval logits.

* :func:`safe_load` — ``torch.load(weights_only=True, map_location="cpu")`` with the numpy
  scalar allow-listed under its numpy-1 name (nothing else is unpickled).
* :func:`unwrap` — ``{'state_dict': ...}`` or bare, ``module.`` / ``_orig_mod.`` prefixes dropped.
* :func:`detect_arch` — resnet18/34/50 or mobilenet_v1 from the keys (their model code), the
  torchvision-named layout for MobileNetV2/V3 (an assumption, see :func:`official_names`).
* :func:`to_kit_state` — every key mapped, every key consumed, shapes and the N:M structure of
  every stored mask checked; the first mismatch is one :class:`OfficialCheckpointError` line.
* :func:`load_official` — the kit model (eval mode, stored masks) of an authors' checkpoint.
* :func:`import_official` — an ordinary kit run directory from a checkpoint (and its log).

MobileNetV2 / V3 (no model code in the authors' repository): the kit maps a checkpoint whose keys
follow the same conv-BN scheme on **torchvision's** layer names (assumption, documented in
:func:`official_names`); any other layout is refused with an error naming the unknown keys.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import tempfile
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maxq import methods, models, paths, records
from maxq import sparse as sp
from maxq.official_logs import OfficialLogError, parse_official_log
from maxq.official_keys import official_names

__all__ = [
    "OfficialCheckpointError", "safe_load", "unwrap", "is_official_state", "detect_arch",
    "official_names", "to_kit_state", "load_official", "import_official", "default_out",
    "file_sha256", "OFFICIAL_ARCHS", "ASSUMED_ARCHS",
]

#: archs whose model code the authors published (key layout known from it)
OFFICIAL_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v1")
#: archs mapped on the assumption that their keys follow the scheme on torchvision's names
ASSUMED_ARCHS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
#: the kit method that evaluates / re-trains an imported checkpoint (the seed's full MaxQ)
DEFAULT_METHOD = "SoftMaxQConv2DBN"
#: kept entries of the authors' soft mask: 1 + filter term + position term, each in [0, 1]
MASK_RANGE = (1.0, 3.0)
_PREFIXES = ("module.", "_orig_mod.")
IMPORT_FORMAT = "maxq.official/1"


class OfficialCheckpointError(ValueError):
    """An authors' checkpoint that cannot be read or does not fit: one line, nothing written."""


# ============================================================================ loading
def _numpy_safe_globals() -> list:
    """The numpy objects a numpy-1 pickle of a float64 learning rate names, allow-listed under
    the names that pickle uses (numpy 2 moved ``numpy.core`` to ``numpy._core``)."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: list = [(scalar, "numpy.core.multiarray.scalar"),
                     (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if dtypes is not None and hasattr(dtypes, name):
            allowed.append(getattr(dtypes, name))
    return allowed


def safe_load(path: str | os.PathLike, **kwargs) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` that also accepts numpy
    scalars pickled by numpy 1 or 2 (the authors' optimizer learning rates): storages tagged CUDA
    are mapped to the CPU, any other object in the pickle is refused. Errors are one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike: one line
        text = str(exc)
        if "Unsupported global" in text or "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise OfficialCheckpointError(
                f"cannot load {path}: it holds pickled objects other than tensors and numbers"
                f"{what}; refused (weights_only)") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise OfficialCheckpointError(f"cannot load {path}: truncated or not a PyTorch "
                                      f"checkpoint ({type(exc).__name__}: {first[:160]})") from None


def unwrap(obj: Any, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of ``{'state_dict': ...}`` or of a bare state dict; ``module.``
    and ``_orig_mod.`` prefixes (DDP, torch.compile) are dropped. ``meta``: the other top-level
    entries that are plain values (epoch, arch, best_acc1)."""
    state, meta = obj, {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        meta = {k: v for k, v in obj.items() if k != "state_dict"
                and isinstance(v, (str, int, float, bool, np.floating, np.integer))}
        meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in meta.items()}
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise OfficialCheckpointError(f"{where} holds no model state_dict (a dict of tensors, "
                                      f"bare or under 'state_dict')")
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out, meta


def is_official_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a (prefix-free) state dict has the authors' conv-BN layout (``<m>.mask`` beside
    ``<m>.conv.weight``)."""
    return any(k.endswith(".mask") and k[:-len("mask")] + "conv.weight" in state for k in state)


def detect_arch(state: dict[str, torch.Tensor]) -> str:
    """The arch an authors' state dict was saved from, from its keys (ResNet depth from the
    number of blocks per stage; MobileNetV1 from its ``conv1.0`` stem and ``features.i.3``
    pointwise layers); ``"torchvision"`` for the torchvision-named layout (MobileNetV2/V3)."""
    if "conv1.0.weight" in state and "features.0.3.mask" in state:
        return "mobilenet_v1"
    if "layer1.0.convbn1.mask" in state:
        blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")})
                       for s in (1, 2, 3, 4))
        bottleneck = "layer1.0.convbn3.mask" in state
        table = {((3, 4, 6, 3), True): "resnet50", ((3, 4, 6, 3), False): "resnet34",
                 ((2, 2, 2, 2), False): "resnet18", ((3, 4, 23, 3), True): "resnet101",
                 ((3, 8, 36, 3), True): "resnet152"}
        found = table.get((blocks, bottleneck))
        if found is None:
            raise OfficialCheckpointError(f"unknown ResNet layout: blocks per stage {blocks}, "
                                          f"{'bottleneck' if bottleneck else 'basic'} blocks")
        return found
    if "features.0.0.weight" in state:
        return "torchvision"
    masks = [k for k in state if k.endswith(".mask")][:2]
    raise OfficialCheckpointError(
        f"unknown authors' layout (masks {', '.join(masks) or 'none'}): neither their ResNet "
        f"(layer1.0.convbn1.*) nor MobileNetV1 (conv1.0.*, features.i.3.*) nor torchvision names")


def _kit_model(arch: str, N: int, M: int, method: str, num_classes: int) -> nn.Module:
    spec = methods.get(method)
    if not spec.sparse:
        raise OfficialCheckpointError(f"--conv-bn-type {method} is dense, but an authors' "
                                      f"checkpoint has N:M masks; use {DEFAULT_METHOD}")
    model = models.build(arch, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp.sparsify(model, method, N, M, init_masks=False)
    return model


def guess_nm(mask: torch.Tensor) -> str | None:
    """The N:M a mask has (every block of M consecutive input channels keeps the same N), for the
    smallest M in 2..32 that divides its input channels; None when none does."""
    for m in (2, 4, 8, 16, 32):
        if mask.shape[1] % m:
            continue
        counts = sp.block_nonzeros(mask, m)
        if bool((counts == counts[0]).all()) and 0 < int(counts[0]) < m:
            return f"{int(counts[0])}:{m}"
    return None


def check_mask(key: str, mask: torch.Tensor, N: int, M: int, where: str) -> None:
    """Refuse a stored mask that is not an exact N:M soft mask of the authors (one line)."""
    if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any()):
        raise OfficialCheckpointError(f"{where}: {key} has negative or non-finite entries: not "
                                      f"an authors' mask")
    kept = mask[mask != 0]
    lo, hi = MASK_RANGE
    if kept.numel() and (float(kept.min()) < lo - 1e-6 or float(kept.max()) > hi + 1e-5):
        raise OfficialCheckpointError(
            f"{where}: {key} keeps entries in [{float(kept.min()):.4g}, {float(kept.max()):.4g}], "
            f"outside the authors' soft-mask range [1, 3]")
    if mask.shape[1] % M:
        raise OfficialCheckpointError(f"{where}: {key} has {mask.shape[1]} input channels, not "
                                      f"divisible by M={M}: the checkpoint is not {N}:{M}")
    counts = sp.block_nonzeros(mask, M)
    bad = counts != N
    if bool(bad.any()):
        found = int(counts[bad][0])
        guess = guess_nm(mask)
        why = (f"it looks {guess}" if guess else
               "dense blocks: a checkpoint from inside the incremental window" if found == M
               else "no uniform N:M")
        raise OfficialCheckpointError(
            f"{where}: --N {N} --M {M} does not fit: {key} has a block of {M} with {found} "
            f"non-zeros, not {N} ({why})")


def to_kit_state(state: dict[str, torch.Tensor], arch: str, N: int, M: int, *,
                 method: str = DEFAULT_METHOD, where: str = "checkpoint",
                 meta: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The kit state dict (torchvision names, ``weight_mask`` buffers) of an authors' state dict
    of ``arch`` at ``N:M``. Every kit key is taken from its authors' key (shape checked), every
    authors' key must be used, and every stored mask must be exact N:M with kept values in
    [1, 3]; the first mismatch raises :class:`OfficialCheckpointError`."""
    detected = detect_arch(state)
    if detected == "torchvision":
        if arch not in ASSUMED_ARCHS:
            raise OfficialCheckpointError(
                f"{where}: torchvision-named keys (features.0.0.*), but --arch {arch} is one of "
                f"the authors' own models ({', '.join(OFFICIAL_ARCHS)}), whose keys differ")
    elif detected != arch:
        raise OfficialCheckpointError(f"{where}: the keys are those of {detected} (authors' "
                                      f"layout), not --arch {arch}")
    stored_arch = (meta or {}).get("arch")
    if isinstance(stored_arch, str) and stored_arch != arch:
        raise OfficialCheckpointError(f"{where}: saved as arch {stored_arch!r}, not --arch {arch}")
    fc = next((v for k, v in state.items() if k.endswith(("fc.weight", "classifier.weight",
                                                           "classifier.3.weight",
                                                           "classifier.1.weight"))
               and v.dim() == 2), None)
    num_classes = int(fc.shape[0]) if fc is not None else 1000
    try:
        model = _kit_model(arch, N, M, method, num_classes)
    except ValueError as exc:
        raise OfficialCheckpointError(f"{where}: cannot build {arch} {N}:{M}: {exc}") from None
    names = official_names(model, arch)
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, theirs in names.items():
        if theirs not in state:
            layout = ("" if arch in OFFICIAL_ARCHS else
                      " (unknown layout: the kit assumes the authors' conv-BN scheme on "
                      "torchvision's layer names for this arch)")
            raise OfficialCheckpointError(f"{where}: missing key {theirs} (the kit's {key}) for "
                                          f"{arch} {N}:{M}{layout}")
        value = state[theirs]
        if tuple(value.shape) != tuple(expected[key].shape):
            raise OfficialCheckpointError(
                f"{where}: {theirs} has shape {list(value.shape)}, {arch} needs "
                f"{list(expected[key].shape)} (the kit's {key})")
        out[key] = value.detach().to(expected[key].dtype).clone()
    used = set(names.values())
    extra = [k for k in state if k not in used]
    if extra:
        raise OfficialCheckpointError(f"{where}: unexpected key {extra[0]}"
                                      f"{f' and {len(extra) - 1} more' if len(extra) > 1 else ''}"
                                      f" for {arch} {N}:{M}")
    for key, theirs in names.items():
        if key.endswith(".weight_mask"):
            check_mask(theirs, out[key], N, M, where)
    return out


@dataclasses.dataclass
class OfficialCheckpoint:
    """An authors' checkpoint mapped onto the kit: its kit state dict and what it said."""

    path: Path
    arch: str
    N: int
    M: int
    method: str
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    n_keys: int

    def model(self) -> nn.Module:
        """The kit's sparse model with this state (eval mode: the stored masks as they are)."""
        model = _kit_model(self.arch, self.N, self.M, self.method,
                           int(self.state[_classifier_key(self.state)].shape[0]))
        model.load_state_dict(self.state, strict=True)
        return model.eval()


def _classifier_key(state: dict[str, torch.Tensor]) -> str:
    return [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2][-1]


def read_official(path: str | os.PathLike, arch: str, N: int, M: int, *,
                  method: str = DEFAULT_METHOD) -> OfficialCheckpoint:
    """Load (safely) and map an authors' checkpoint; see :func:`to_kit_state`."""
    path = Path(path).expanduser()
    state, meta = unwrap(safe_load(path), str(path))
    if not is_official_state(state):
        raise OfficialCheckpointError(f"{path} is not an authors' checkpoint: no '<m>.mask' "
                                      f"beside '<m>.conv.weight' (a kit or torchvision file?)")
    kit = to_kit_state(state, arch, int(N), int(M), method=method, where=str(path), meta=meta)
    return OfficialCheckpoint(path=path, arch=arch, N=int(N), M=int(M), method=method,
                              state=kit, meta=meta, n_keys=len(state))


def load_official(path: str | os.PathLike, arch: str, N: int, M: int, *,
                  method: str = DEFAULT_METHOD) -> nn.Module:
    """The kit model of an authors' checkpoint, in eval mode: its forward is the authors' eval
    forward (W ⊙ stored mask, BatchNorm from running statistics)."""
    return read_official(path, arch, N, M, method=method).model()


# ============================================================================ import
def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_out(arch: str, N: int, M: int, runs_root: str | os.PathLike | None = None) -> Path:
    """``<runs_root>/official/<arch>-<N>of<M>``: the study row id, so reports find it."""
    from maxq.official_logs import OFFICIAL_DIR

    return paths.runs_root(runs_root) / OFFICIAL_DIR / f"{arch}-{N}of{M}"


def _metrics_rows(log) -> list[dict[str, Any]]:
    keys = [k for k in records.METRIC_KEYS if k in log.epochs.columns]
    rows = []
    for rec in log.epochs.to_dict("records"):
        row = {k: rec[k] for k in keys}
        row["best_top1"] = rec["best_top1"]
        rows.append({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()})
    return rows


def _layer_rows(model: nn.Module, epoch: int) -> list[dict[str, Any]]:
    stats, _ = sp.mask_stats(model, None, records.HIST_EDGES)
    return [{"epoch": epoch, "layer": name, **s} for name, s in stats.items()]


def import_official(path: str | os.PathLike, arch: str, N: int, M: int, *,
                    log: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                    method: str = DEFAULT_METHOD, runs_root: str | os.PathLike | None = None,
                    ) -> tuple[Path, bool]:
    """Write an ordinary kit run from an authors' checkpoint (and training log); return
    ``(run directory, written)``. ``written`` is False when the same import is already there
    (idempotent); a different run at ``out`` is refused. Everything is read and checked before
    anything is written, and the directory appears at once (built beside it, then renamed)."""
    from maxq.config import TrainConfig

    path = Path(path).expanduser()
    ckpt = read_official(path, arch, N, M, method=method)
    parsed = _training_log(log, arch, N, M) if log is not None else None
    out = Path(out).expanduser() if out is not None else default_out(arch, N, M, runs_root)
    source = {"format": IMPORT_FORMAT, "file": path.name, "sha256": file_sha256(path),
              "arch": arch, "N": N, "M": M, "method": method,
              "log": None if log is None else {"file": Path(log).name,
                                              "sha256": file_sha256(log)}}
    if _already_imported(out, source):
        return out, False

    model = ckpt.model()
    snap_epoch, result = _import_result(ckpt.meta, parsed.epochs if parsed is not None else None)
    cfg = TrainConfig(set="ImageNet", arch=arch, N=N, M=M, conv_bn_type=method,
                      epochs=result["epochs"] or TrainConfig().epochs, study="official",
                      save_dir=str(out))
    config = _import_config(cfg, source, ckpt, model)
    best = {"state_dict": ckpt.state, "epoch": snap_epoch, "top1": result["best_top1"],
            "top5": result["best_top5"], "arch": arch, "config": cfg.fingerprint()}
    _write_import(out, config=config, metrics=None if parsed is None else _metrics_rows(parsed),
                  model=model, snap_epoch=snap_epoch, best=best, result=result)
    return out, True


def _training_log(log: str | os.PathLike, arch: str, N: int, M: int):
    """The authors' training log given with ``--log``, checked against the import's arch and
    N:M (:class:`OfficialLogError` otherwise)."""
    parsed = parse_official_log(log)
    if parsed.kind != "train":
        raise OfficialLogError(f"--log {log}: a testing (--evaluate) log, not a training log")
    if parsed.arch != arch:
        raise OfficialLogError(f"--log {log}: the log trained {parsed.arch!r}, not {arch}")
    rate = round((M - N) / M * 100, 2)
    if parsed.compress_rate is not None and abs(parsed.compress_rate - rate) > 1e-6:
        raise OfficialLogError(f"--log {log}: compress rate {parsed.compress_rate:.2f}% is not "
                               f"{N}:{M}'s {rate:.2f}%")
    return parsed


def _already_imported(out: Path, source: dict[str, Any]) -> bool:
    """Whether ``out`` holds this very import (``source`` alike); False when ``out`` is free (absent
    or an empty folder); ``FileExistsError`` when it holds anything else."""
    if not out.exists():
        return False
    config_path = out / records.CONFIG
    if config_path.is_file():
        try:
            existing = records.read_json(config_path).get("imported") or {}
        except (OSError, ValueError):
            existing = {}
        same = {k: existing.get(k) for k in source} == source
        if same:
            return True
        what = (f"an import of {existing.get('file')} ({existing.get('arch')} "
                f"{existing.get('N')}:{existing.get('M')})" if existing else "a kit run")
        raise FileExistsError(f"{out} already holds {what}, not this import; choose another "
                              f"--out or remove it")
    if any(out.iterdir()) if out.is_dir() else True:
        raise FileExistsError(f"{out} exists and is not an imported run; choose another --out")
    return False


def _import_result(meta: dict[str, Any], epochs_df) -> tuple[int, dict[str, Any]]:
    """``(epoch of the mask snapshot, result.json)`` of an import: the checkpoint's epoch and best
    top-1, and, from the training log when given, best and last evaluation and the time."""
    epoch = int(meta["epoch"]) - 1 if isinstance(meta.get("epoch"), int) else None
    if epoch is None and epochs_df is not None and len(epochs_df):
        epoch = int(epochs_df["epoch"].iloc[-1])
    snap_epoch = epoch if epoch is not None else 0
    best_top1 = meta.get("best_acc1")
    best_top5 = best_epoch = last_top1 = last_top5 = None
    if epochs_df is not None and len(epochs_df):
        best_row = epochs_df.loc[epochs_df["val_top1"].idxmax()]
        best_top1 = float(best_row["val_top1"]) if best_top1 is None else best_top1
        best_top5, best_epoch = float(best_row["val_top5"]), int(best_row["epoch"])
        last_top1 = float(epochs_df["val_top1"].iloc[-1])
        last_top5 = float(epochs_df["val_top5"].iloc[-1])
    n_epochs = int(epochs_df["epochs"].iloc[-1]) if epochs_df is not None and len(epochs_df) \
        else (epoch + 1 if epoch is not None else None)
    return snap_epoch, {
        "best_top1": best_top1, "best_top5": best_top5, "best_epoch": best_epoch,
        "last_top1": last_top1, "last_top5": last_top5, "epochs": n_epochs,
        "wall_seconds": (float(epochs_df["seconds"].sum()) if epochs_df is not None
                         and len(epochs_df) else None),
        "world_size": None, "mask_checksums": []}


def _import_config(cfg, source: dict[str, Any], ckpt: OfficialCheckpoint,
                   model: nn.Module) -> dict[str, Any]:
    """config.json of an imported run: the options, what was imported, the method, the data."""
    return {
        "args": cfg.to_dict(),
        "imported": {**source, "imported_at": datetime.now().isoformat(timespec="seconds"),
                     "checkpoint_epoch": ckpt.meta.get("epoch"),
                     "best_acc1": ckpt.meta.get("best_acc1"), "keys": ckpt.n_keys,
                     "note": "authors' checkpoint mapped key for key; masks are their stored "
                             "soft masks (eval uses W * mask as is)"},
        "method": dataclasses.asdict(methods.get(cfg.conv_bn_type)),
        "data": {"set": "ImageNet", "train_size": None, "val_size": None,
                 "num_classes": int(model.state_dict()[_classifier_key(ckpt.state)].shape[0]),
                 "in_channels": 3, "image_size": 224},
        "layers": sp.describe(model),
        "dead_weight_share": None,
        "started": None,
    }


def _write_import(out: Path, *, config: dict[str, Any], metrics: list[dict[str, Any]] | None,
                  model: nn.Module, snap_epoch: int, best: dict[str, Any],
                  result: dict[str, Any]) -> None:
    """The imported run's files, built in a folder beside ``out`` and renamed onto it at once."""
    # ``imported`` is compared on the next import: keep only the fields of ``source`` stable
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        records.write_json(tmp / records.CONFIG, config)
        if metrics is not None:
            records.append_jsonl(tmp / records.METRICS, metrics)
        records.append_jsonl(tmp / records.LAYERS, _layer_rows(model, snap_epoch))
        records.save_mask_snapshot(tmp, snap_epoch, sp.current_masks(model))
        records.save_torch(tmp / records.BEST, best)
        records.write_json(tmp / records.RESULT, result)
        if out.is_dir():
            out.rmdir()                        # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def kit_state_for(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict[str, Any],
                  arch: str, N: int, M: int, method: str = DEFAULT_METHOD
                  ) -> dict[str, torch.Tensor]:
    """``state`` itself when it is not an authors' state dict, else its kit mapping (the hook of
    ``maxq train --pretrained`` and ``maxq export``)."""
    if not is_official_state(state):
        return state
    return to_kit_state(state, arch, int(N), int(M), method=method, where=str(path), meta=meta)


# ============================================================================ CLI
def add_import_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="the authors' checkpoint (best.<arch>.<prefix>.pth.tar "
                                           "or a bare state dict)")
    parser.add_argument("--arch", "-a", required=True, choices=list(models.ARCHS))
    parser.add_argument("--N", type=int, required=True)
    parser.add_argument("--M", type=int, required=True)
    parser.add_argument("--log", default=None, help="the authors' training log of this "
                                                   "checkpoint (<arch>.<prefix>.log): metrics.jsonl")
    parser.add_argument("--out", default=None, help="run directory to write (default: "
                                                   "<runs root>/official/<arch>-<N>of<M>)")
    parser.add_argument("--conv-bn-type", default=DEFAULT_METHOD,
                        help="the kit method the run is described as")


def run_import(args) -> int:
    out, written = import_official(args.checkpoint, args.arch, args.N, args.M, log=args.log,
                                   out=args.out, method=args.conv_bn_type)
    if written:
        print(f"imported {args.checkpoint} as {args.arch} {args.N}:{args.M}: {out}")
    else:
        print(f"already imported (same checkpoint and log): {out}")
    return 0
