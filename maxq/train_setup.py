"""The set-up of a run: this process's share of the data, the model (stock architecture,
pretrained weights, the method's sparse layers, the resumed state, synchronised BatchNorm, DDP),
the optimizer, the per-epoch schedules (dense fraction, learning rate) and the lines that
announce the run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maxq import data as maxq_data
from maxq import methods, models, schedules, sparse
from maxq.checkpointing import load_checkpoint
from maxq.config import TrainConfig
from maxq.distributed import Runtime, convert_sync_batchnorm
from maxq.epoch_loop import RunLog

def build_loaders(cfg: TrainConfig, rt: Runtime, *, drop_last: bool) -> maxq_data.Loaders:
    """This process's share of the data: ``batch_size`` is global, each rank takes 1/K of it."""
    return maxq_data.build_loaders(
        cfg.set, cfg.data, batch_size=max(1, cfg.batch_size // rt.world_size),
        workers=cfg.workers, image_size=cfg.image_size, train_subset=cfg.train_subset,
        val_subset=cfg.val_subset, seed=cfg.seed, distributed=rt.distributed, rank=rt.rank,
        world_size=rt.world_size, device=str(rt.device), drop_last=drop_last,
        lighting=cfg.lighting)


def place(model: nn.Module, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    """The model on this process's device, in channels_last when asked; returns it."""
    model.to(rt.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int,
                pretrained: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Stock architecture, optional dense pretrained weights, then the method's sparse layers."""
    model = models.build(cfg.arch, num_classes, in_channels=in_channels,
                         small_input=bool(cfg.small_input), width_mult=float(cfg.width_mult))
    has_masks = pretrained is not None and any(k.endswith("weight_mask") for k in pretrained)
    if pretrained is not None and not has_masks:
        # dense weights go in before sparsify: the first masks (ASP's frozen one) come from them
        _load_state(model, pretrained)
    sparse.sparsify(model, cfg.conv_bn_type, cfg.N, cfg.M, tau=cfg.tau, seed=cfg.seed)
    if pretrained is not None and has_masks:
        _load_state(model, pretrained)
    return model


def read_weights(path: str | os.PathLike, cfg: TrainConfig | None = None
                 ) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (ours, the seed's ``{"state_dict": ...}`` or a bare
    state dict), loaded with ``weights_only=True``; a DDP ``module.`` prefix is dropped. With
    ``cfg``, an authors' released checkpoint is mapped onto the kit's model of ``cfg.arch`` at
    ``cfg.N:cfg.M`` (:mod:`maxq.official`: numpy-1 scalars allowed, ``_orig_mod.`` dropped,
    every key checked)."""
    from maxq import official

    if cfg is not None:
        obj = official.safe_load(path)
        try:
            state, meta = official.unwrap(obj, str(path))
        except official.OfficialCheckpointError:
            state, meta = {}, {}               # not a state dict: said below
        if official.is_official_state(state):
            return official.kit_state_for(path, state, meta, cfg.arch, cfg.N, cfg.M,
                                          cfg.conv_bn_type)
    else:
        try:
            obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint not found: {path}") from None
        except Exception as exc:  # pickle/zip errors: say which file, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot load checkpoint {path}: {first}") from None
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no model state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` whose mismatch is one line naming a few keys."""
    result = model.load_state_dict(state, strict=False)
    missing = result.missing_keys
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if result.unexpected_keys:
            extra = result.unexpected_keys
            parts.append(f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else ""))
        raise ValueError(f"checkpoint does not fit --arch/--set/--conv-bn-type: {'; '.join(parts)}")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD; with ``no_bn_decay`` the 1-D parameters (BatchNorm, biases) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if cfg.no_bn_decay and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def dense_fraction(cfg: TrainConfig, epoch: int) -> float:
    """rho(t) of the incremental schedule; 0 for methods that are not incremental."""
    if not methods.METHODS[cfg.conv_bn_type].incremental:
        return 0.0
    return float(schedules.dense_fraction(epoch, cfg.increase_start, cfg.increase_end,
                                          cfg.prune_schedule))


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    return float(schedules.lr_at(float(epoch), cfg.lr, cfg.epochs, cfg.warmup_length,
                                 kind=cfg.lr_policy))

def build_run_model(cfg: TrainConfig, rt: Runtime, loaders: maxq_data.Loaders,
                    resume_from: Path | None
                    ) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any] | None]:
    """``(model, layer table, checkpoint or None)`` of a training run: weights from
    ``--pretrained``, masks from sparsify, the layer table, then the resumed state, synchronised
    BatchNorm when asked, on this process's device (not yet wrapped in DDP: :func:`distribute`)."""
    pretrained = read_weights(cfg.pretrained, cfg) if cfg.pretrained else None
    model = build_model(cfg, loaders.spec.num_classes, loaders.spec.in_channels, pretrained)
    size = int(loaders.spec.image_size)
    layer_table = sparse.describe(model, input_size=(1, loaders.spec.in_channels, size, size))
    checkpoint = load_checkpoint(resume_from, cfg) if resume_from is not None else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
    if cfg.sync_bn and rt.distributed:
        model = convert_sync_batchnorm(model, rt.device)
    place(model, cfg, rt)
    return model, layer_table, checkpoint


def distribute(model: nn.Module, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel for a multi-process run, else itself."""
    if not rt.distributed:
        return model
    # with synchronised BatchNorm every buffer (running statistics, masks) is computed
    # alike on every rank: no need to broadcast rank 0's before each forward
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
        broadcast_buffers=not cfg.sync_bn)


def set_epoch_schedule(cfg: TrainConfig, epoch: int, model: nn.Module,
                       optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """Epoch ``epoch``'s dense fraction rho(t) on the sparse layers (and LBC's schedule) and its
    learning rate on every parameter group; returns ``(rho, lr)``."""
    rho = dense_fraction(cfg, epoch)
    sparse.set_dense_fraction(model, rho)
    sparse.start_epoch(model, epoch, cfg.epochs)   # LBC's schedule
    lr = learning_rate(cfg, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return rho, lr


def announce_run(log: RunLog, run_dir: Path, cfg: TrainConfig, rt: Runtime,
                 spec: methods.MethodSpec, loaders: maxq_data.Loaders,
                 layer_table: list[dict[str, Any]], *, resumed: bool, start_epoch: int,
                 decay_on: bool) -> None:
    """The run's first log lines: what trains where, its layer table, and the warnings of a
    window that does not end before the last epoch and of a decay type without SR-STE decay."""
    log(f"{'resuming' if resumed else 'starting'} {run_dir} at epoch "
        f"{start_epoch}: {cfg.arch} {cfg.conv_bn_type} {cfg.N}:{cfg.M} on {cfg.set} "
        f"({loaders.train_size} train / {loaders.val_size} val images), {rt.device.type} x "
        f"{rt.world_size}, amp {cfg.amp}")
    log(sparse.format_table(layer_table))
    if spec.incremental and cfg.increase_end >= cfg.epochs:
        log(f"WARNING: --increase-end {cfg.increase_end} >= --epochs {cfg.epochs}: the last "
            f"epoch still keeps dense blocks, the final model is not fully {cfg.N}:{cfg.M}")
    if not decay_on:
        log(f"WARNING: --decay-type {cfg.decay_type} applies no SR-STE decay (in the authors' "
            f"code it calls a method no layer defines): this run equals --decay 0")
