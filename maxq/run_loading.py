"""Loading a trained run for export: the checkpoint (a run directory's best or last, or one
file; the authors' files mapped), the facts to rebuild it (``config.json``, else what the
state_dict's shapes say), and the sparse model rebuilt with its stored masks (:func:`load_run`
→ :class:`LoadedRun`). Refusals are :class:`ExportError`, one line. Re-exported by
:mod:`maxq.export`."""
from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maxq import data as data_mod
from maxq import methods, models, records
from maxq import sparse as sp


class ExportError(ValueError):
    """A refusal the user can act on (not N:M, wrong arch, unreadable file): one line, no output."""


class NotNMError(ExportError):
    """A sparse layer of the folded model breaks the N:M pattern."""


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
    arch = _run_arch(arch, fields, meta, ckpt, run_dir)
    spec = _run_method(method or fields["method"] or "SoftSRSTEConv2dBN", ckpt)
    N = N if N is not None else fields["N"]
    M = M if M is not None else fields["M"]
    if N is None or M is None:
        raise ExportError(f"N:M unknown for {ckpt}: no config.json; pass --nm N:M")
    N, M = int(N), int(M)
    num_classes, in_channels, small_input, image_size = _input_shape(
        fields, _infer_shapes(state), arch, image_size)
    state = _kit_state(state, ckpt, meta, arch, N, M, spec.name)
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


def _run_arch(arch: str | None, fields: dict, meta: dict, ckpt: Path,
              run_dir: Path | None) -> str:
    """The run's architecture (config.json, else the checkpoint's ``arch`` entry, else the
    caller's); refused where two of them disagree or none names a known one."""
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
    return arch


def _run_method(method: str, ckpt: Path) -> methods.MethodSpec:
    """The registry's spec of the run's method; a dense one is refused (nothing to export)."""
    try:
        spec = methods.get(method)
    except (ValueError, KeyError) as exc:
        raise ExportError(str(exc).strip("'\"")) from None
    if not spec.sparse:
        raise ExportError(f"{ckpt} is a dense run (conv_bn_type {method}): there is no N:M "
                          f"pattern to export; export a sparse run")
    return spec


def _input_shape(fields: dict, inferred: dict, arch: str,
                 image_size: int | None) -> tuple[int, int, bool, int]:
    """(num_classes, in_channels, small_input, image_size) of the run: config.json, else the
    data set's registry entry, else what the state_dict's shapes say."""
    num_classes = int(fields["num_classes"] or inferred.get("num_classes") or 1000)
    in_channels = int(fields["in_channels"] or inferred.get("in_channels") or 3)
    spec_ds = data_mod.DATASETS.get(fields["set"]) if fields["set"] else None
    small_input = fields["small_input"]
    if small_input is None:
        if spec_ds is not None:
            small_input = spec_ds.small_input
        else:  # no config: a 3x3 ResNet stem means the small-input stem
            small_input = models.get(arch).family == "resnet" and inferred.get("stem_kernel") == 3
    small_input = bool(small_input)
    if image_size is None:
        image_size = fields["image_size"]
        if image_size is None:
            image_size = spec_ds.image_size if spec_ds else (32 if small_input else 224)
    return num_classes, in_channels, small_input, int(image_size)


def _kit_state(state: dict, ckpt: Path, meta: dict, arch: str, N: int, M: int,
               method: str) -> dict:
    """The state_dict in the kit's keys (an authors' checkpoint is mapped), refused when it
    holds no masks (a dense checkpoint)."""
    from maxq import official                   # an authors' checkpoint: map it (--arch, --nm)

    candidate, _ = official.unwrap(state, str(ckpt))
    if official.is_official_state(candidate):
        try:
            state = official.kit_state_for(ckpt, candidate, meta, arch, N, M, method)
        except official.OfficialCheckpointError as exc:
            raise ExportError(str(exc)) from None
    if not any(k.endswith(".weight_mask") for k in state):
        raise ExportError(f"{ckpt} holds no N:M masks (no '*.weight_mask' buffers): it is a dense "
                          f"checkpoint; nothing to export as {N}:{M}")
    return state


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
