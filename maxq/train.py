"""The training recipe: ``train(config) -> run_dir``, ``evaluate(config)``, resume and DDP.

Read :func:`train` top to bottom like torchvision's ``references/classification/train.py``: claim
the run, set it up (data, model, optimizer, records), train its epochs, finish it. Its pieces live
in modules named for what they own (all re-exported here, ``maxq.train.<name>`` keeps working):

* :mod:`maxq.random_states` — seeding from ``(seed, epoch)``, the RNG states of a checkpoint
* :mod:`maxq.run_claim` — the run directory: start, resume or refuse; its lock; the runtime
* :mod:`maxq.train_setup` — data, model, optimizer, per-epoch schedules, the opening lines
* :mod:`maxq.epoch_loop` — one epoch of training, one pass of evaluation, BN recalibration
* :mod:`maxq.checkpointing` — config.json, the epoch's records, checkpoint.pth, result.json
* :mod:`maxq.evaluation` — ``--evaluate``: a checkpoint's settings and its top-1/top-5

The options are :class:`maxq.config.TrainConfig`; processes, devices and synchronised BatchNorm
are :mod:`maxq.distributed`.

**Epochs are numbered from 0, as in the seed's logs and the schedules.** Training epoch ``t``
(``t = 0 .. epochs-1``) runs with the dense fraction ``rho(t)`` of ``maxq.schedules.dense_fraction``
and the learning rate ``lr_at(t)``. Every record uses that same ``t``: the ``epoch`` of a
metrics.jsonl / layers.jsonl row is the epoch just finished, ``masks/epoch_000.npz`` holds the
masks after the first epoch, ``best_epoch`` in result.json is a ``t``, and checkpoint.pth's
``epoch`` is the last finished one (training resumes at ``epoch + 1``). ``result.json``'s
``epochs`` is the count of finished epochs.

Per epoch ``t``: reseed every RNG from ``(seed, t)``; set ``rho(t)`` on the sparse layers (0 for
methods that are not incremental) and the learning rate; train (the sparse layers recompute their
mask on every training forward; SR-STE decay after backward, after AMP unscale, before the
step); recompute every mask from the epoch's final weights (as the authors do before
validating and saving); optionally recompute BatchNorm statistics (``recalibrate_bn``); evaluate
with those masks; then, on rank 0, append the metrics.jsonl
row and the layers.jsonl rows (``flipped`` is measured against the previous epoch's hard masks, or
null for the first epoch), write the mask snapshot when ``t`` is a snapshot epoch (every
``snapshot_epochs``-th, i.e. ``(t + 1) % k == 0``, or the listed ones; always the first and the
last), best.pth when top-1 improved and finally checkpoint.pth. Every file goes through :mod:`maxq.records` (atomic).

Reproducibility: on CPU the run is deterministic (``torch.use_deterministic_algorithms``, data
order and augmentation are functions of ``(seed, epoch, rank)`` in :mod:`maxq.data`, the global
RNGs are reseeded at the start of every epoch), so a run resumed after ``kill -9`` ends with the
same metrics as an uninterrupted one. Checkpoints also carry the RNG states, restored on resume.

Multi-GPU / multi-process: launched by ``torchrun`` (``WORLD_SIZE > 1``, see
:mod:`maxq.distributed`), ``batch_size`` is the GLOBAL batch (each process takes
``batch_size // world_size``), the data are sharded like ``DistributedSampler``, the model is
wrapped in ``DistributedDataParallel`` and, by default (``sync_bn=None``), BatchNorm statistics are
synchronised over the processes so that K processes compute what one process with the same
global batch computes. Metrics are summed over ranks; only rank 0 writes files. The masks are
computed on every rank from the same (all-reduced) weights, so they are identical: the final mask
checksums of all ranks are stored in result.json (``mask_checksums``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from maxq import methods, records, sparse
from maxq.config import TrainConfig, snapshot_epochs
from maxq.distributed import barrier
# noqa: F401 below: the pieces of a run, re-exported for the callers of maxq.train
from maxq.checkpointing import (Progress, config_json_mismatch, end_epoch,  # noqa: F401
                                finish_run, load_checkpoint, mask_checksum, open_records,
                                record_epoch, run_environment)
from maxq.epoch_loop import (Meter, RunLog, check_finite, epoch_line,  # noqa: F401
                             evaluate_model, finished_line, recalibrate_batchnorm,
                             train_one_epoch)
from maxq.evaluation import (CHECKPOINT_DEFINES, adopt_checkpoint_settings,  # noqa: F401
                             checkpoint_settings, evaluate)
from maxq.random_states import rng_state, seed_everything, set_rng_state  # noqa: F401
from maxq.run_claim import RunClaim, claim_run_dir, claimed_run, plan_run_dir  # noqa: F401
from maxq.train_setup import (announce_run, build_loaders, build_model,  # noqa: F401
                              build_optimizer, build_run_model, dense_fraction, distribute,
                              learning_rate, place, read_weights, set_epoch_schedule)


def train(config: TrainConfig) -> Path:
    """Train (or, with ``config.evaluate``, only evaluate) one run; return its run directory.

    Claim the run (its directory and the runtime), set it up (data, model, optimizer, records),
    train its epochs (each: schedule, one epoch, masks from the final weights, BatchNorm,
    evaluation, records), then finish it (result.json)."""
    if config.evaluate:
        evaluate(config)
        return Path(config.resolved().save_dir)
    config.validate()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = config.resolved(world_size)
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) is not divisible by the "
                         f"{world_size} processes")
    run_dir = Path(cfg.save_dir)
    with claimed_run(cfg) as (rt, resume_from):    # refusals come before anything is written
        seed_everything(cfg.seed)
        spec = methods.METHODS[cfg.conv_bn_type]

        # data (errors surface here, before anything is written)
        loaders = build_loaders(cfg, rt, drop_last=True)

        # model: weights from --pretrained, masks from sparsify, the resumed state, then DDP
        model_without_ddp, layer_table, checkpoint = build_run_model(cfg, rt, loaders, resume_from)
        model = distribute(model_without_ddp, cfg, rt)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        optimizer = build_optimizer(cfg, model_without_ddp)
        scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

        # records: config.json of a fresh run, or the state of the resumed one
        log = RunLog(run_dir / records.LOG, enabled=rt.is_main)
        progress = open_records(run_dir, cfg, rt, spec=spec, loaders=loaders,
                                layer_table=layer_table, checkpoint=checkpoint,
                                model=model_without_ddp, optimizer=optimizer, scaler=scaler)
        decay_on = cfg.decay_type == "v1"
        announce_run(log, run_dir, cfg, rt, spec, loaders, layer_table, decay_on=decay_on,
                     resumed=checkpoint is not None, start_epoch=progress.start_epoch)
        snapshot_at = snapshot_epochs(cfg.snapshot_epochs, cfg.epochs)
        sparse.set_mask_interval(model_without_ddp, cfg.mask_interval,
                                 forwards=progress.start_epoch * len(loaders.train))
        started = time.perf_counter()

        # epochs
        for epoch in range(progress.start_epoch, cfg.epochs):
            seed_everything(cfg.seed, epoch)
            loaders.train.set_epoch(epoch)
            rho, lr = set_epoch_schedule(cfg, epoch, model_without_ddp, optimizer)
            epoch_start = time.perf_counter()
            tr = train_one_epoch(model, criterion, optimizer, scaler, loaders.train, epoch=epoch,
                                 cfg=cfg, rt=rt, log=log,
                                 srste=spec.sparse and spec.srste_decay and decay_on)
            # as the authors do after every epoch (show_zero_num_and_update_mask): every mask
            # from the final weights, so evaluation, statistics, snapshots, checkpoints agree
            sparse.refresh_masks(model_without_ddp)
            if cfg.recalibrate_bn:
                loaders.train.set_epoch(epoch)
                recalibrate_batchnorm(model_without_ddp, loaders.train, cfg.recalibrate_bn, rt=rt,
                                      channels_last=bool(cfg.channels_last))
            # without the DDP wrapper: ranks may hold different numbers of val batches
            va = evaluate_model(model_without_ddp, criterion, loaders.val, rt=rt,
                                channels_last=bool(cfg.channels_last), log=log,
                                print_freq=cfg.print_freq)
            check_finite(va, tr, epoch)
            seconds = time.perf_counter() - epoch_start
            nm_share = end_epoch(run_dir, cfg, rt, epoch=epoch, lr=lr, tr=tr, va=va,
                                 seconds=seconds, snapshot=epoch in snapshot_at,
                                 model=model_without_ddp, optimizer=optimizer, scaler=scaler,
                                 progress=progress, started=started)
            log(epoch_line(epoch, cfg.epochs, lr, rho, tr, va, nm_share, seconds))
            barrier(rt)

        # finish: result.json
        result = finish_run(run_dir, cfg, rt, model_without_ddp, progress,
                            wall_seconds=progress.wall_before + time.perf_counter() - started)
        if len(set(result["mask_checksums"])) > 1:
            log(f"WARNING: the masks differ between processes: {result['mask_checksums']}")
        log(finished_line(progress.best, progress.last, run_dir))
        barrier(rt)
        return run_dir
