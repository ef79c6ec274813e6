"""One writer per run directory: what to do with ``save_dir`` before anything is written (start,
resume, refuse), its lock, and :func:`claimed_run`, which holds the claim and the run's runtime
(processes, device, determinism) for the length of a ``with`` block."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from maxq import data as maxq_data
from maxq import records
from maxq.config import TrainConfig
from maxq.distributed import Runtime, barrier, setup_runtime, teardown_runtime

def _run_files(run_dir: Path) -> list[Path]:
    names = (records.CONFIG, records.METRICS, records.LAYERS, records.CHECKPOINT, records.BEST,
             records.RESULT, records.LOG)
    files = [run_dir / n for n in names if (run_dir / n).exists()]
    return files + sorted((run_dir / records.MASKS).glob("epoch_*.npz"))


def plan_run_dir(cfg: TrainConfig) -> Path | None:
    """Decide what to do with ``save_dir`` before anything is written: the checkpoint to resume
    from (None: start afresh). Refuses (``ValueError``) to touch a finished or unfinished run
    unless ``resume``/``overwrite`` says so."""
    run_dir = Path(cfg.save_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--save_dir {run_dir} exists and is not a directory")
    if cfg.overwrite:
        return None
    if records.is_finished(run_dir):
        raise ValueError(f"{run_dir} holds a finished run ({records.RESULT}); nothing was "
                         f"changed: use --overwrite to train it again or another --save_dir")
    checkpoint = run_dir / records.CHECKPOINT
    if isinstance(cfg.resume, str):
        checkpoint = Path(cfg.resume)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume checkpoint not found: {checkpoint}")
        if checkpoint.resolve().parent != run_dir.resolve():
            raise ValueError(f"--resume {checkpoint} is not in --save_dir {run_dir}; pass "
                             f"--save_dir {checkpoint.parent}")
    if cfg.resume:
        return checkpoint if checkpoint.is_file() else None
    if _run_files(run_dir):
        hint = "--resume to continue it" if checkpoint.is_file() else "--resume to restart it"
        raise ValueError(f"{run_dir} holds an unfinished run; nothing was changed: use {hint} "
                         f"or --overwrite to start again")
    return None


class RunClaim:
    """What :func:`claim_run_dir` took: the run directory's lock (rank 0), and whether this run
    created the directory (removed again when the run leaves nothing in it)."""

    def __init__(self, run_dir: Path, lock: records.RunLock | None, created: bool,
                 fresh: bool):
        self.run_dir, self.lock, self.created, self.fresh = run_dir, lock, created, fresh

    def data_error(self, exc: Exception) -> None:
        """A bad data file stopped the run. Before the first checkpoint the files this run wrote
        are removed (a fixed rerun starts cleanly); after it they are kept and the message says
        how to go on."""
        if self.lock is None:
            return
        if (self.run_dir / records.CHECKPOINT).is_file():
            raise maxq_data.DataError(f"{exc}; the run in {self.run_dir} is kept: fix or remove that file, "
                            f"then continue it with --resume") from None
        if self.fresh:
            for path in _run_files(self.run_dir):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.lock is None:
            return
        self.lock.release()
        self.lock = None
        if self.created:
            for folder in (self.run_dir / records.MASKS, self.run_dir):
                try:
                    folder.rmdir()            # only when empty
                except OSError:
                    pass


def claim_run_dir(cfg: TrainConfig) -> tuple[Path | None, RunClaim]:
    """:func:`plan_run_dir` under the run directory's lock: one writer per run directory. Rank 0
    holds the lock until the run ends; a second process is refused ("in use by pid ...") before
    any other refusal. Stale temporaries of a killed atomic write are removed once locked."""
    run_dir = Path(cfg.save_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return plan_run_dir(cfg), RunClaim(run_dir, None, False, False)
    records.check_unlocked(run_dir)
    plan_run_dir(cfg)                         # refusals write nothing, not even the lock
    created = not run_dir.exists()
    lock = records.RunLock(run_dir).acquire()
    claim = RunClaim(run_dir, lock, created, fresh=True)
    try:
        resume_from = plan_run_dir(cfg)       # again: the previous holder may have finished it
        records.remove_stale_temporaries(run_dir)
    except BaseException:
        claim.close()
        raise
    claim.fresh = resume_from is None
    return resume_from, claim

@contextmanager
def claimed_run(cfg: TrainConfig) -> Iterator[tuple[Runtime, Path | None]]:
    """``(runtime, checkpoint to resume from or None)`` for a training run of ``cfg``: the run
    directory claimed (:func:`claim_run_dir`: refusals before anything is written), the runtime
    set up, every rank past the check of ``save_dir``, deterministic algorithms as ``cfg`` asks.
    On leaving: determinism as before, the runtime torn down, the claim closed; a bad data file
    (:class:`maxq.data.DataError`) leaves the directory so that a fixed rerun is accepted."""
    resume_from, claim = claim_run_dir(cfg)  # refuses before anything is written; locks it
    try:
        rt = setup_runtime(cfg.device, cfg.amp)
    except BaseException:
        claim.close()
        raise
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        barrier(rt)                           # every rank has checked save_dir before rank 0 writes
        torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=True)
        if rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        yield rt, resume_from
    except maxq_data.DataError as exc:
        claim.data_error(exc)                 # leaves the directory so that a rerun is accepted
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        teardown_runtime(rt)
        claim.close()
