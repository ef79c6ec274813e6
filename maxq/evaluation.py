"""``maxq train --evaluate``: top-1/top-5 of a checkpoint's weights on the validation data, with
the architecture, method, N:M and stem the checkpoint stores (a contradicting flag is an
error naming both values)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import nn

from maxq import records, sparse
from maxq.config import TrainConfig
from maxq.distributed import setup_runtime, teardown_runtime
from maxq.epoch_loop import RunLog, evaluate_model
from maxq.random_states import seed_everything
from maxq.train_setup import build_loaders, build_model, place, read_weights

#: what ``--evaluate`` takes from the stored config of the checkpoint it evaluates (flag names)
CHECKPOINT_DEFINES = {"arch": "--arch", "conv_bn_type": "--conv-bn-type", "N": "--N",
                      "M": "--M", "small_input": "--small-input"}


def checkpoint_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The :data:`CHECKPOINT_DEFINES` values a maxq checkpoint stores (its ``config``; best.pth
    also its ``arch``); empty for checkpoints without them (the seed's, bare state dicts)."""
    obj = None
    for mmap in (True, False):                # mmap: cheap; the legacy (non-zip) format has none
        try:
            from maxq import official     # also reads the authors' files (numpy-1 scalars)

            obj = official.safe_load(path, mmap=mmap)
            break
        except Exception:  # noqa: BLE001 - unreadable files are reported by read_weights
            continue
    if not isinstance(obj, dict):
        return {}
    stored = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    if "arch" not in stored and isinstance(obj.get("arch"), str):
        stored = {**stored, "arch": obj["arch"]}
    return {k: stored[k] for k in CHECKPOINT_DEFINES if k in stored}


def adopt_checkpoint_settings(config: TrainConfig, path: str | os.PathLike,
                              explicit: set[str] | None = None) -> TrainConfig:
    """``config`` with arch, method, N, M and stem taken from the checkpoint at ``path``. A value
    given explicitly (``explicit``: the fields set on the command line; None: those that differ
    from the defaults) that contradicts the checkpoint is an error naming both values."""
    stored = checkpoint_settings(path)
    if explicit is None:
        defaults = TrainConfig()
        explicit = {k for k in CHECKPOINT_DEFINES if getattr(config, k) != getattr(defaults, k)}
    clashes = [f"{CHECKPOINT_DEFINES[k]} {getattr(config, k)} but the checkpoint has "
               f"{CHECKPOINT_DEFINES[k]} {stored[k]}"
               for k in CHECKPOINT_DEFINES
               if k in stored and k in explicit and getattr(config, k) is not None
               and getattr(config, k) != stored[k]]
    if clashes:
        raise ValueError(f"--evaluate {path}: {'; '.join(clashes)}; drop the flag (the "
                         f"checkpoint's value is used) or evaluate another checkpoint")
    return dataclasses.replace(config, **stored)


def evaluate(config: TrainConfig, explicit: set[str] | None = None) -> dict[str, float]:
    """The seed's ``--evaluate --pretrained PATH``: top-1/top-5 of those weights on the
    validation data (the resume checkpoint when no ``pretrained``). Arch, method, N, M and stem
    come from the checkpoint when it stores them (see :func:`adopt_checkpoint_settings`;
    ``explicit``: the fields given on the command line). Writes nothing but log lines (appended
    to ``save_dir/log.txt`` when ``save_dir`` is given)."""
    config.validate()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = config.resolved(world_size)
    weights_path = cfg.pretrained
    if weights_path is None:
        weights_path = cfg.resume if isinstance(cfg.resume, str) else str(
            Path(cfg.save_dir) / records.CHECKPOINT)
    config = adopt_checkpoint_settings(config, weights_path, explicit).validate()
    cfg = config.resolved(world_size)
    rt = setup_runtime(cfg.device, cfg.amp)
    try:
        seed_everything(cfg.seed)
        loaders = build_loaders(cfg, rt, drop_last=False)
        model = place(build_model(cfg, loaders.spec.num_classes, loaders.spec.in_channels,
                                  read_weights(weights_path, cfg)), cfg, rt)
        log = RunLog(Path(config.save_dir) / records.LOG if config.save_dir else None,
                     enabled=rt.is_main)
        log(f"evaluating {weights_path}: {cfg.arch} {cfg.conv_bn_type} {cfg.N}:{cfg.M} on "
            f"{cfg.set} ({loaders.val_size} val images)")
        log(sparse.format_table(sparse.describe(model)))
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        return evaluate_model(model, criterion, loaders.val, rt=rt,
                              channels_last=bool(cfg.channels_last), log=log,
                              print_freq=cfg.print_freq)
    finally:
        teardown_runtime(rt)
