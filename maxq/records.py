"""The run directory: the one contract between training and everything after it.

A run directory (``--save_dir``) holds::

    config.json      resolved arguments, versions, git commit, device, per-layer table (describe)
    metrics.jsonl    one JSON object per finished epoch (see METRIC_KEYS)
    layers.jsonl     one JSON object per (epoch, sparse layer) (see LAYER_KEYS)
    masks/epoch_XXX.npz  hard masks (packed bits) and soft masks (float16) of every sparse layer
    checkpoint.pth   last epoch (model, optimizer, scaler, epoch, best, RNG states), for --resume
    best.pth         best-top-1 model weights
    result.json      written last, when the run finished (see RESULT_KEYS)
    log.txt          human-readable log in the seed's style
    .lock            present while a process writes the run (see :class:`RunLock`)

Epochs count from 0 everywhere (as in the seed's logs and ``maxq.schedules``): the ``epoch`` of a
metrics/layers row, ``masks/epoch_000.npz`` (the masks after the first epoch), ``best_epoch`` and
checkpoint.pth's ``epoch`` are the index ``t`` of the epoch just finished; ``epochs`` in result.json
is the count of finished epochs.

Every file is written atomically (temporary file in the same directory + ``os.replace``), so a run
killed at any moment leaves either the old or the new version of a file, never half of one.
Everything after training reads run directories only through this module.

**One writer per run directory.** A process that writes a run holds :class:`RunLock`, an
exclusive ``flock`` on ``RUN/.lock``, from before its first write to its end; a second writer is
refused with "run directory ... in use by pid ...". The kernel drops the lock when its holder
dies (``kill -9`` included), so a lock file left by a dead process never blocks.
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAYERS = "layers.jsonl"
MASKS = "masks"
CHECKPOINT = "checkpoint.pth"
BEST = "best.pth"
RESULT = "result.json"
LOG = "log.txt"
LOCK = ".lock"
#: the files of a run directory (besides ``masks/epoch_XXX.npz``)
RECORD_FILES = (CONFIG, METRICS, LAYERS, CHECKPOINT, BEST, RESULT, LOG, LOCK)

METRIC_KEYS = (
    "epoch", "lr", "train_loss", "train_top1", "train_top5",
    "val_loss", "val_top1", "val_top5", "seconds", "images_per_s", "nm_share",
    "step_seconds", "density",
)
LAYER_KEYS = ("epoch", "layer", "nm_share", "flipped", "hist_counts")
RESULT_KEYS = (
    "best_top1", "best_top5", "best_epoch", "last_top1", "last_top5", "epochs", "wall_seconds",
)
#: Bin edges of the soft-mask value histogram in layers.jsonl: 0 (pruned) gets its own bin
#: [0, 0.5), kept values 1..3 are split in 20 bins of width 0.1.
HIST_EDGES = tuple([0.0, 0.5] + [round(1.0 + 0.1 * i, 1) for i in range(21)])


class RunRecordError(ValueError):
    """A run directory is missing, incomplete or belongs to another configuration."""


class CorruptRecord(RunRecordError):
    """A record file that cannot be what training wrote (not JSON, wrong schema, types or
    ranges): ``path`` names the file, ``problem`` says what is wrong with it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"corrupt record {path}: {problem}")


class RunDirBusy(RunRecordError):
    """Another process holds the lock of a run directory (or of a study's status)."""


# ----------------------------------------------------------------------------- one writer
class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``DIR/.lock`` (the directory is created).

    ``acquire()`` raises :class:`RunDirBusy` naming the holder's pid (written into the file by
    the holder) when another process holds it. ``release()`` removes the file and drops the lock;
    a lock file left behind by a process that died is not locked (the kernel released it with the
    process) and is taken over. Where the file system has no ``flock`` (some network mounts) the
    run goes on unlocked, with a warning. Use as a context manager or acquire/release."""

    def __init__(self, directory: str | os.PathLike, what: str = "run directory",
                 name: str = LOCK):
        self.directory = Path(directory)
        self.path = self.directory / name
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(10):          # the file may be removed by its releasing holder meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirBusy(f"{self.what} {self.directory} in use by {holder}; nothing was "
                                 f"changed: wait for it to end or stop it") from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    warnings.warn(f"cannot lock {self.path} ({exc.strerror}): this file system "
                                  f"has no flock; nothing stops a second writer", stacklevel=2)
                    return self
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:                 # locked a file its holder had just removed: retry
                os.close(fd)
                continue
            self.fd = fd
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            except BaseException:
                self.release()
                raise
            return self
        raise RunDirBusy(f"{self.what} {self.directory}: could not take {self.path}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)         # still locked: a newcomer retries on a fresh file
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)            # closing drops the flock
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text if text.startswith("pid ") else "another process"


def check_unlocked(directory: str | os.PathLike, what: str = "run directory",
                   name: str = LOCK) -> None:
    """Raise :class:`RunDirBusy` when another process holds ``directory``'s lock; writes nothing
    (used before refusals, so that a busy run is reported as busy)."""
    path = Path(directory) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise RunDirBusy(f"{what} {directory} in use by {_read_holder(fd)}; nothing was "
                         f"changed: wait for it to end or stop it") from None
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (``.NAME.XXXX.tmp``) that a writer killed during an atomic write
    left in ``run_dir`` and ``run_dir/masks``; only call while holding the run's lock."""
    run_dir = Path(run_dir)
    names = [name for name in RECORD_FILES if name != LOCK]
    stale = [p for name in names for p in run_dir.glob(f".{name}.*.tmp")]
    stale += list((run_dir / MASKS).glob(".epoch_*.npz.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def is_record_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (would be) a file of a run directory: a record name in a folder that
    holds ``config.json``, or a mask snapshot in such a folder's ``masks/``."""
    path = Path(path).expanduser().absolute()
    if path.name in RECORD_FILES and (path.parent / CONFIG).is_file():
        return True
    return (path.parent.name == MASKS and path.name.startswith("epoch_")
            and path.name.endswith(".npz") and (path.parent.parent / CONFIG).is_file())


# ----------------------------------------------------------------------------- atomic writing
def _file_mode() -> int:
    """0o666 minus the process umask: what a plain ``open(path, "w")`` would create."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)   # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows atomically: the whole file is rewritten with the new lines (files stay small)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    new = "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in rows)
    atomic_write_bytes(path, old + new.encode("utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_jsonl(path: str | os.PathLike, max_epoch: int) -> None:
    """Drop rows with ``epoch > max_epoch`` (used by --resume to forget a lost partial epoch)."""
    path = Path(path)
    if path.exists():
        rows = [r for r in read_jsonl(path) if r["epoch"] <= max_epoch]
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- mask snapshots
def save_mask_snapshot(run_dir: str | os.PathLike, epoch: int, masks: dict[str, Any]) -> Path:
    """Store hard (packed bits) and soft (float16) masks of every sparse layer for one epoch.

    ``masks`` maps layer name → soft mask tensor S (hard mask is ``S != 0``).
    """
    arrays: dict[str, np.ndarray] = {}
    for name, soft in masks.items():
        s = soft.detach().float().cpu().numpy()
        arrays[f"{name}/shape"] = np.asarray(s.shape, dtype=np.int64)
        arrays[f"{name}/hard"] = np.packbits((s != 0).reshape(-1))
        arrays[f"{name}/soft"] = s.astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = Path(run_dir) / MASKS / f"epoch_{epoch:03d}.npz"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def mask_snapshot_epochs(run_dir: str | os.PathLike) -> list[int]:
    folder = Path(run_dir) / MASKS
    if not folder.is_dir():
        return []
    return sorted(int(p.stem[6:]) for p in folder.glob("epoch_*.npz") if p.stem[6:].isdigit())


def load_mask_snapshot(run_dir: str | os.PathLike, epoch: int,
                       layers: Iterable[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Return ``{layer: {"hard": bool array, "soft": float32 array}}`` for one snapshot epoch
    (only ``layers`` when given: the others are not decompressed)."""
    path = Path(run_dir) / MASKS / f"epoch_{epoch:03d}.npz"
    if not path.exists():
        raise RunRecordError(f"no mask snapshot for epoch {epoch} in {run_dir} "
                             f"(have: {mask_snapshot_epochs(run_dir)})")
    check_mask_snapshot(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        names = sorted({key.rsplit("/", 1)[0] for key in data.files})
        if layers is not None:
            wanted = set(layers)
            names = [name for name in names if name in wanted]
        for name in names:
            shape = tuple(int(v) for v in data[f"{name}/shape"])
            size = int(np.prod(shape))
            hard = np.unpackbits(data[f"{name}/hard"])[:size].reshape(shape).astype(bool)
            out[name] = {"hard": hard, "soft": data[f"{name}/soft"].astype(np.float32)}
    return out


# ----------------------------------------------------------------------------- reading a run
def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / RESULT).exists()


def read_config(run: str | os.PathLike | dict) -> dict[str, Any]:
    """The training options a run was made with: ``config.json``'s ``args`` (the resolved
    :class:`maxq.config.TrainConfig` as :func:`maxq.train.train` writes it). ``run`` is a run
    directory or its already read ``config.json``; ``{}`` when there is no ``args`` table."""
    config = run if isinstance(run, dict) else read_json(Path(run) / CONFIG)
    args = config.get("args") if isinstance(config, dict) else None
    return dict(args) if isinstance(args, dict) else {}


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything of one run directory except checkpoints and mask snapshots (whose names and
    array headers are checked). Every record is checked on read (:func:`checked_json`,
    :func:`checked_jsonl`, :func:`check_mask_snapshot`): :class:`CorruptRecord` names the first
    bad file."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise RunRecordError(f"{run_dir} is not a run directory (no {CONFIG})")
    result = run_dir / RESULT
    config = checked_json(run_dir / CONFIG, check_config)
    metrics = checked_jsonl(run_dir / METRICS, check_metrics_row)
    _check_epoch_order(run_dir / METRICS, metrics)
    layers = checked_jsonl(run_dir / LAYERS, check_layers_row)
    folder = run_dir / MASKS
    if folder.is_dir():
        for path in sorted(folder.glob("*.npz")):
            check_mask_snapshot(path)
    return {
        "dir": run_dir,
        "config": config,
        "metrics": metrics,
        "layers": layers,
        "result": checked_json(result, check_result) if result.exists() else None,
        "mask_epochs": mask_snapshot_epochs(run_dir),
    }


def result_problem(run_dir: str | os.PathLike) -> str:
    """'' when ``run_dir``'s result.json is a valid record, else what is wrong (file named);
    for a run that has no result.json, ''."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return ""
    try:
        checked_json(path, check_result)
    except CorruptRecord as exc:
        return str(exc)
    return ""


# ----------------------------------------------------------------------------- record checks
#: percentages (top-1/top-5) of result.json and metrics.jsonl: in [0, 100]
PERCENT_KEYS = ("best_top1", "best_top5", "last_top1", "last_top5", "train_top1", "train_top5",
                "val_top1", "val_top5")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_value(key: str, value: Any) -> str:
    """What is wrong with one numeric record value ('' when fine); ``None`` is allowed (a value
    the source did not have, e.g. an imported log's missing top-5)."""
    if value is None:
        return ""
    if not _is_real(value):
        return f"{key} is {value!r} ({type(value).__name__}), not a number"
    if value != value or value in (float("inf"), float("-inf")):
        return f"{key} is {value!r}, not finite"
    if key in PERCENT_KEYS and not 0 <= value <= 100:
        return f"{key} is {value!r}, outside [0, 100]"
    return ""


def check_result(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    missing = [k for k in RESULT_KEYS if k not in obj]
    if missing:
        return f"missing keys {missing}"
    for key in RESULT_KEYS:
        problem = _check_value(key, obj[key])
        if problem:
            return problem
    for key, low in (("best_epoch", 0), ("epochs", 1)):
        if obj[key] is not None and not _is_count(obj[key], low):
            return f"{key} is {obj[key]!r}, not an integer >= {low}"
    if obj["wall_seconds"] is not None and obj["wall_seconds"] < 0:
        return f"wall_seconds is {obj['wall_seconds']!r} < 0"
    if None not in (obj["best_epoch"], obj["epochs"]) and obj["best_epoch"] >= obj["epochs"]:
        return f"best_epoch {obj['best_epoch']} is not below epochs {obj['epochs']}"
    return ""


def check_config(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    for key in ("args", "device", "data", "provenance"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            return f"{key} is {type(obj[key]).__name__}, not a table"
    if obj.get("layers") is not None and not isinstance(obj["layers"], list):
        return f"layers is {type(obj['layers']).__name__}, not a list"
    return ""


def _epoch_row_problem(obj: Any) -> str:
    """What is wrong with the part every per-epoch row shares (an object with an epoch)."""
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    if not _is_count(obj.get("epoch")):
        return f"epoch is {obj.get('epoch')!r}, not an integer >= 0"
    return ""


def check_metrics_row(obj: Any) -> str:
    problem = _epoch_row_problem(obj)
    if problem:
        return problem
    for key in METRIC_KEYS[1:]:
        problem = _check_value(key, obj.get(key))
        if problem:
            return problem
    return ""


def check_layers_row(obj: Any) -> str:
    problem = _epoch_row_problem(obj)
    if problem:
        return problem
    if not isinstance(obj.get("layer"), str):
        return f"layer is {obj.get('layer')!r}, not a name"
    for key in ("nm_share", "flipped"):
        problem = _check_value(key, obj.get(key))
        if problem:
            return problem
    return ""


def checked_json(path: Path, check) -> Any:
    """``path`` read as JSON and checked (``check(obj)`` returns what is wrong, '' if nothing):
    :class:`CorruptRecord` naming the file when it is not valid UTF-8 JSON or fails the check."""
    try:
        obj = read_json(path)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecord(path, f"not valid JSON ({exc})") from None
    problem = check(obj)
    if problem:
        raise CorruptRecord(path, problem)
    return obj


def checked_jsonl(path: Path, check) -> list[dict]:
    """:func:`read_jsonl` with every line checked: :class:`CorruptRecord` naming the file and
    line."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptRecord(path, f"not UTF-8 text ({exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptRecord(path, f"line {number} is not valid JSON ({exc})") from None
        problem = check(obj)
        if problem:
            raise CorruptRecord(path, f"line {number}: {problem}")
        rows.append(obj)
    return rows


def _check_epoch_order(path: Path, rows: list[dict]) -> None:
    epochs = [r["epoch"] for r in rows]
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise CorruptRecord(path, f"epochs {epochs} are not increasing")


def check_mask_snapshot(path: str | os.PathLike) -> None:
    """A mask snapshot's name (``epoch_XXX.npz``) and, from the array headers only (nothing
    decompressed but the small ``shape`` arrays), that every layer has ``shape``, ``hard`` and
    ``soft`` arrays that agree: :class:`CorruptRecord` otherwise."""
    import zipfile

    path = Path(path)
    stem = path.stem
    if not (stem.startswith("epoch_") and stem[6:].isdigit()):
        raise CorruptRecord(path, "not a mask snapshot name (epoch_XXX.npz)")
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise CorruptRecord(path, f"member {info.filename!r} is not an array")
                with archive.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(handle)
                                       if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(handle))
                    if info.filename.endswith("/shape.npy"):
                        headers[info.filename[:-4]] = np.lib.format.read_array(
                            archive.open(info), allow_pickle=False)
                    else:
                        headers[info.filename[:-4]] = (tuple(shape), dtype)
    except CorruptRecord:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad header: all the same to a reader
        raise CorruptRecord(path, f"not a readable .npz ({type(exc).__name__}: {exc})") from None
    layers = {key.rsplit("/", 1)[0] for key in headers}
    for layer in sorted(layers):
        parts = [f"{layer}/{p}" for p in ("shape", "hard", "soft")]
        if not all(p in headers for p in parts):
            raise CorruptRecord(path, f"layer {layer!r} lacks one of shape/hard/soft")
        shape = headers[parts[0]]
        if not isinstance(shape, np.ndarray) or shape.ndim != 1 or (shape < 0).any():
            raise CorruptRecord(path, f"layer {layer!r}: shape is not a list of sizes")
        size = int(np.prod(shape))
        hard, soft = headers[parts[1]], headers[parts[2]]
        if hard[0] != ((size + 7) // 8,):
            raise CorruptRecord(path, f"layer {layer!r}: hard mask holds {hard[0]} bytes, "
                                      f"shape {tuple(int(v) for v in shape)} needs "
                                      f"{(size + 7) // 8}")
        if soft[0] != tuple(int(v) for v in shape):
            raise CorruptRecord(path, f"layer {layer!r}: soft mask shape {soft[0]} is not "
                                      f"{tuple(int(v) for v in shape)}")
