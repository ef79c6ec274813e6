"""The authors' training and testing logs (and their ``results.csv``) as pandas DataFrames.

The authors' ``pruning_train.py`` writes ``<save_dir>/<arch>.<prefix>.log`` through ``print_log``:
every message line is ``[YYYY-MM-DD HH:MM:SS] <message>``; only the model repr continues on lines
without a timestamp. The line formats (reference: ``official_formats.md`` §4) are matched exactly;
the first line that fits none of them is an :class:`OfficialLogError` naming its number and text.

* :func:`read_official_log` — a training log → one row per epoch with the kit's metric names
  (``records.METRIC_KEYS``): ``epoch, lr, train_loss, train_top1, train_top5, val_loss,
  val_top1, val_top5, seconds`` plus ``best_top1`` (the log's "Best Acc").
  ``train_*`` and ``val_loss`` are the running means of the epoch's **last printed batch**
  (every 100th batch is printed: batch 5000 of 5005 on ImageNet), so they stand for the epoch's
  mean; ``val_top1/top5`` are the exact ``* Prec@1/Prec@5`` summary; ``seconds`` is the time
  from the epoch's header line to its summary line.
* :func:`read_official_test_log` — a ``--pretrained P --evaluate`` log → one row:
  ``val_top1, val_top5, val_loss, error1, checkpoint``.
* :func:`parse_official_log` — both, plus every printed batch line and the header lines.
* :func:`read_official_results` — their ``results.csv`` (comma-and-space separated).
* :func:`official_curves` / :func:`official_summary` — the authors' curves and final/best top-1
  of the paper study's rows (:func:`official_overlay` / :func:`official_comparison`: beside the
  kit's runs of a study; :func:`overlay_figure` draws them), found by the folder convention
  ``<runs_root>/official/<row id>/train.log`` (and ``test.log``), or an imported run's
  ``metrics.jsonl`` there (``maxq import-official ... --log``).

Text and pandas (matplotlib only in :func:`overlay_figure`): no torch.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

__all__ = [
    "OfficialLogError", "OfficialLog", "parse_official_log", "read_official_log",
    "read_official_test_log", "read_official_results", "official_dir", "official_curves",
    "official_summary", "official_comparison", "official_overlay", "overlay_figure",
    "OFFICIAL_DIR", "EPOCH_COLUMNS", "TEST_COLUMNS",
]

#: where the authors' files of a study row live under the runs root: ``official/<row id>/``
OFFICIAL_DIR = "official"
TRAIN_LOG, TEST_LOG = "train.log", "test.log"
EPOCH_COLUMNS = ("epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1",
                 "val_top5", "best_top1", "seconds")
TEST_COLUMNS = ("val_top1", "val_top5", "val_loss", "error1", "checkpoint")


class OfficialLogError(ValueError):
    """The file is not one of the authors' logs (one line naming the first line that differs)."""


_F = r"(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf)"
_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] (.*)$")
_HEADER = [re.compile(p) for p in (
    r"PyThon  version : .*", r"PyTorch version : .*", r"CUDNN   version : .*",
    r"Vision  version : .*", r"GPU  device : .*", r"Parameters: Namespace\(.*\)",
    r"Workers         : .*", r"Learning-Rate   : .*", r"Use Pre-Trained : .*",
    r"lr adjust : .*", r"lr schedule : .*", r"label smoothing: .*",
    r"=> missing_keys'.*'", r"=> unexpected_keys'.*'", r"=> no checkpoint found at '.*'",
    r"=> loading checkpoint '.*'",
)]
_CREATING = re.compile(r"Creating model '(.+)'")
_MODEL = re.compile(r"Model : .*")
_COMPRESS = re.compile(rf"Compress Rate: {_F}%")
_LOADED = re.compile(r"=> loaded checkpoint '(.*)'(?: \(epoch (\d+)\))?")
_EPOCH_HEAD = re.compile(r" \[(\S+)\] :: +(\d+)/ *(\d+) ----- \[\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]\] "
                         r"\[Need: (\d+:\d\d:\d\d)\]")
_PAIR = rf"{_F} \({_F}\)"
_TRAIN = re.compile(rf"Epoch: \[(\d+)\]\[(\d+)/(\d+)\]\tTime {_PAIR}\tData {_PAIR}\tLoss {_PAIR}"
                    rf"\tPrec@1 {_PAIR}\tPrec@5 {_PAIR}")
_TEST = re.compile(rf"Test: \[(\d+)/(\d+)\]\tTime {_PAIR}\tLoss {_PAIR}\tPrec@1 {_PAIR}"
                   rf"\tPrec@5 {_PAIR}")
_SUMMARY = re.compile(rf" \* Prec@1 {_F} Prec@5 {_F} Error@1 {_F}")
_EPOCH_END = re.compile(rf"=> Epoch: (\d+), LR: {_F}, Acc: {_F}%, Best Acc: {_F}%")


@dataclass
class OfficialLog:
    """Everything one authors' log says. ``kind``: "train" (has epochs) or "test"."""

    path: Path
    kind: str
    arch: str | None
    header: dict[str, str]
    epochs: pd.DataFrame
    test: pd.DataFrame
    batches: pd.DataFrame
    checkpoint: str | None = None
    compress_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _fail(path: Path, number: int, line: str, why: str) -> OfficialLogError:
    text = line if len(line) <= 80 else line[:77] + "..."
    return OfficialLogError(f"{path}: not the authors' log format at line {number} ({why}): "
                            f"{text!r}")


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


#: what a batch line reports, each as "value (running average)", in the log's order
_PAIRED = ("time", "data", "loss", "top1", "top5")
BATCH_COLUMNS = ("phase", "epoch", "batch", "batches",
                 *(f"{key}{avg}" for key in _PAIRED for avg in ("", "_avg")), "line")


def _batch_row(phase: str, epoch: int | None, batch: int, batches: int, keys: tuple[str, ...],
               values: list[float], line: int) -> dict[str, Any]:
    """One row of :data:`BATCH_COLUMNS`: ``values`` are the (value, average) pairs of ``keys``
    in order; a key the line does not report (test lines have no data time) is NaN."""
    pairs = dict(zip(keys, zip(values[::2], values[1::2])))
    row: dict[str, Any] = {"phase": phase, "epoch": epoch, "batch": batch, "batches": batches}
    for key in _PAIRED:
        row[key], row[f"{key}_avg"] = pairs.get(key, (math.nan, math.nan))
    row["line"] = line
    return row


class _LogReader:
    """What :func:`parse_official_log` knows of one log while it reads it line by line."""

    def __init__(self, path: Path):
        self.path = path
        self.header: dict[str, str] = {}
        self.arch: str | None = None
        self.checkpoint: str | None = None
        self.compress: float | None = None
        self.epochs: list[dict[str, Any]] = []
        self.tests: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        self.in_model = False
        self.current: dict[str, Any] | None = None     # the open epoch
        self.summary: dict[str, Any] | None = None     # the last " * Prec@1" not yet closed
        self.last_test: dict[str, Any] | None = None
        self.messages = ((_EPOCH_HEAD, self._epoch_head), (_TRAIN, self._train_batch),
                         (_TEST, self._test_batch), (_SUMMARY, self._summary),
                         (_EPOCH_END, self._epoch_end))

    def read(self, number: int, line: str) -> None:
        """One line: a header line, a message of an epoch, or an :class:`OfficialLogError`."""
        m = _TS.match(line)
        if m is None:
            if self.in_model:
                return                         # the model repr's continuation lines
            raise _fail(self.path, number, line, "no [YYYY-MM-DD HH:MM:SS] timestamp")
        stamp, msg = m.group(1), m.group(2)
        self.in_model = False
        if self._header_line(msg):
            return
        for pattern, handle in self.messages:
            if (c := pattern.fullmatch(msg)) is not None:
                handle(c, number, line, stamp)
                return
        raise _fail(self.path, number, line, "no known message")

    def _header_line(self, msg: str) -> bool:
        if _MODEL.fullmatch(msg):
            self.in_model, self.header["model"] = True, msg
        elif (c := _CREATING.fullmatch(msg)) is not None:
            self.arch = c.group(1)
        elif (c := _COMPRESS.fullmatch(msg)) is not None:
            self.compress = float(c.group(1))
        elif (c := _LOADED.fullmatch(msg)) is not None:
            self.checkpoint = c.group(1)
        elif any(p.fullmatch(msg) for p in _HEADER):
            key = msg.split(":", 1)[0].strip() if not msg.startswith("=>") else msg[:20]
            self.header.setdefault(key, msg)
        else:
            return False
        return True

    def _epoch_head(self, c: re.Match, number: int, line: str, stamp: str) -> None:
        if self.current is not None:
            raise _fail(self.path, number, line,
                        f"epoch {self.current['epoch']} has no '=> Epoch:' line")
        if c.group(1) != self.arch:
            raise _fail(self.path, number, line,
                        f"arch {c.group(1)!r} but the log created {self.arch!r}")
        e = int(c.group(2))
        if e != len(self.epochs):
            raise _fail(self.path, number, line, f"epoch {e} follows epoch {len(self.epochs) - 1}")
        self.current = {"epoch": e, "epochs": int(c.group(3)), "start": _stamp(stamp),
                        "train": None, "test": None}
        self.summary = self.last_test = None

    def _train_batch(self, c: re.Match, number: int, line: str, stamp: str) -> None:
        e, i, n = (int(c.group(k)) for k in (1, 2, 3))
        if self.current is None or e != self.current["epoch"] or self.current["test"] is not None:
            raise _fail(self.path, number, line, "training batch outside its epoch")
        row = _batch_row("train", e, i, n, _PAIRED, [float(c.group(k)) for k in range(4, 14)],
                         number)
        self.batches.append(row)
        self.current["train"] = row

    def _test_batch(self, c: re.Match, number: int, line: str, stamp: str) -> None:
        i, n = int(c.group(1)), int(c.group(2))
        row = _batch_row("test", self.current["epoch"] if self.current else None, i, n,
                         ("time", "loss", "top1", "top5"),
                         [float(c.group(k)) for k in range(3, 11)], number)
        self.batches.append(row)
        self.last_test = row
        if self.current is not None:
            self.current["test"] = row

    def _summary(self, c: re.Match, number: int, line: str, stamp: str) -> None:
        top1, top5, err = (float(c.group(k)) for k in (1, 2, 3))
        self.summary = {"val_top1": top1, "val_top5": top5, "error1": err,
                        "val_loss": self.last_test["loss_avg"] if self.last_test else math.nan,
                        "stamp": _stamp(stamp), "line": number}
        if self.current is None:
            self.tests.append({**self.summary, "checkpoint": self.checkpoint})

    def _epoch_end(self, c: re.Match, number: int, line: str, stamp: str) -> None:
        e, current, summary = int(c.group(1)), self.current, self.summary
        if current is None or e != current["epoch"]:
            raise _fail(self.path, number, line, "epoch summary without its epoch header")
        if summary is None:
            raise _fail(self.path, number, line, f"epoch {e} has no ' * Prec@1' line")
        train = current["train"] or {}
        self.epochs.append({
            "epoch": e, "lr": float(c.group(2)),
            "train_loss": train.get("loss_avg", math.nan),
            "train_top1": train.get("top1_avg", math.nan),
            "train_top5": train.get("top5_avg", math.nan),
            "val_loss": summary["val_loss"], "val_top1": summary["val_top1"],
            "val_top5": summary["val_top5"], "best_top1": float(c.group(4)),
            "seconds": (_stamp(stamp) - current["start"]).total_seconds(),
            "acc": float(c.group(3)), "epochs": current["epochs"],
        })
        self.current = self.summary = self.last_test = None

    def result(self) -> OfficialLog:
        """The log read to its end: an :class:`OfficialLog`, or why it is not a finished one."""
        path = self.path
        if self.current is not None:
            raise OfficialLogError(f"{path}: epoch {self.current['epoch']} is cut off (no "
                                   f"'=> Epoch:' line): the log is truncated or the run died")
        if self.arch is None:
            raise OfficialLogError(f"{path}: no \"Creating model '<arch>'\" line: not an "
                                   f"authors' log")
        kind = "train" if self.epochs else "test" if self.tests else None
        if kind is None:
            raise OfficialLogError(f"{path}: neither an epoch summary ('=> Epoch: ...') nor a "
                                   f"test summary (' * Prec@1 ...'): not a finished authors' log")
        return OfficialLog(
            path=path, kind=kind, arch=self.arch, header=self.header,
            epochs=pd.DataFrame(self.epochs, columns=[*EPOCH_COLUMNS, "acc", "epochs"]),
            test=pd.DataFrame(self.tests, columns=list(TEST_COLUMNS)),
            batches=pd.DataFrame(self.batches, columns=list(BATCH_COLUMNS)),
            checkpoint=self.checkpoint, compress_rate=self.compress)


def parse_official_log(path: str | os.PathLike) -> OfficialLog:
    """Parse one authors' log (training or ``--evaluate``); every line must fit its format."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OfficialLogError(f"log not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OfficialLogError(f"cannot read log {path}: {exc}") from None
    lines = text.splitlines()
    if not lines:
        raise OfficialLogError(f"{path}: empty file, not an authors' log")
    reader = _LogReader(path)
    for number, line in enumerate(lines, 1):
        reader.read(number, line)
    return reader.result()


def read_official_log(path: str | os.PathLike) -> pd.DataFrame:
    """The authors' training log → one row per epoch (:data:`EPOCH_COLUMNS`, the kit's metric
    names; ``acc`` is the summary's own 2-decimal Acc, ``epochs`` the run's length).
    ``df.attrs`` holds ``arch``, ``compress_rate`` and ``source``."""
    log = parse_official_log(path)
    if log.kind != "train":
        raise OfficialLogError(f"{path}: a testing (--evaluate) log, no epochs; read it with "
                               f"read_official_test_log")
    df = log.epochs
    df.attrs.update(arch=log.arch, compress_rate=log.compress_rate, source=str(path))
    return df


def read_official_test_log(path: str | os.PathLike) -> pd.DataFrame:
    """The authors' ``--pretrained P --evaluate`` log → one row: ``val_top1, val_top5, val_loss``
    (the last printed batch's running mean), ``error1`` and the ``checkpoint`` it loaded."""
    log = parse_official_log(path)
    if log.kind != "test":
        raise OfficialLogError(f"{path}: a training log ({len(log.epochs)} epochs); read it with "
                               f"read_official_log")
    df = log.test
    df.attrs.update(arch=log.arch, source=str(path))
    return df


#: results.csv header → the kit's names
RESULTS_COLUMNS = {
    "Date Finished": "finished", "N": "N", "M": "M", "Arch": "arch", "Set": "set",
    "Current Val Top 1": "last_top1", "Best Val Top 1": "best_top1", "Device Target": "device",
    "Epochs": "epochs", "Weight Decay": "weight_decay", "Seed": "seed", "Nesterov": "nesterov",
    "LearningRate": "lr", "BatchSize": "batch_size", "ConvBNType": "conv_bn_type",
    "NoBNDecay": "no_bn_decay", "DecayStart": "decay_start", "DecayEnd": "decay_end",
    "PruneSchedule": "prune_schedule",
}


def read_official_results(path: str | os.PathLike) -> pd.DataFrame:
    """The authors' ``results.csv`` (header and rows separated by comma + space), columns renamed
    to the kit's names (:data:`RESULTS_COLUMNS`)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise OfficialLogError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in RESULTS_COLUMNS if c not in df.columns]
    if missing:
        raise OfficialLogError(f"{path}: not the authors' results.csv (no column {missing[0]!r})")
    df = df.rename(columns=RESULTS_COLUMNS)
    df["finished"] = pd.to_datetime(df["finished"], format="%m-%d-%y_%H:%M:%S")
    return df


# ----------------------------------------------------------------------------- study rows
def official_dir(row: str, runs_root: str | os.PathLike | None = None) -> Path:
    """``<runs_root>/official/<row id>/``: where a study row's authors' files are looked for."""
    from maxq import paths

    return paths.runs_root(runs_root) / OFFICIAL_DIR / str(row)


def _row_epochs(folder: Path) -> pd.DataFrame | None:
    if (folder / TRAIN_LOG).is_file():
        return read_official_log(folder / TRAIN_LOG)
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        from maxq import records

        rows = records.read_jsonl(metrics)
        if rows:
            df = pd.DataFrame(rows)
            if "best_top1" not in df and "val_top1" in df:
                df["best_top1"] = df["val_top1"].cummax()
            return df[[c for c in EPOCH_COLUMNS if c in df.columns]]
    return None


def official_curves(rows: Iterable[str], runs_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The authors' accuracy-vs-epoch curve of every row in ``rows`` that has one: columns
    ``row`` then :data:`EPOCH_COLUMNS` plus ``source`` (the file read). Rows without files are
    left out (an empty frame when none has one)."""
    frames = []
    for row in dict.fromkeys(str(r) for r in rows):
        folder = official_dir(row, runs_root)
        df = _row_epochs(folder)
        if df is None or df.empty:
            continue
        df = df.copy()
        df.insert(0, "row", row)
        df["source"] = str(folder / TRAIN_LOG) if (folder / TRAIN_LOG).is_file() else str(
            folder / "metrics.jsonl")
        frames.append(df)
    columns = ["row", *EPOCH_COLUMNS, "source"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    return out[[c for c in columns if c in out.columns]]


def official_summary(rows: Iterable[str], runs_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per row with authors' files: ``official_last_top1`` and ``official_best_top1`` (the
    training curve's last epoch and best), ``official_test_top1/top5`` (``test.log``), NaN where a
    file is absent; rows with no file at all are left out."""
    out = []
    for row in dict.fromkeys(str(r) for r in rows):
        folder = official_dir(row, runs_root)
        curve = _row_epochs(folder)
        test = read_official_test_log(folder / TEST_LOG) if (folder / TEST_LOG).is_file() else None
        if curve is None and test is None:
            continue
        has_curve = curve is not None and not curve.empty
        out.append({
            "row": row,
            "official_epochs": len(curve) if has_curve else 0,
            "official_last_top1": float(curve["val_top1"].iloc[-1]) if has_curve else math.nan,
            "official_best_top1": (float(curve["best_top1"].iloc[-1]) if has_curve
                                   and "best_top1" in curve else math.nan),
            "official_test_top1": float(test["val_top1"].iloc[-1]) if test is not None else math.nan,
            "official_test_top5": float(test["val_top5"].iloc[-1]) if test is not None else math.nan,
        })
    return pd.DataFrame(out, columns=["row", "official_epochs", "official_last_top1",
                                      "official_best_top1", "official_test_top1",
                                      "official_test_top5"])


# ----------------------------------------------------------------------------- beside the kit's
def official_comparison(res: Any, runs_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per study row and kit method (finished runs of ``res``, a :class:`maxq.results.Results`):
    the kit's best top-1 (mean over seeds, ``n``) beside the paper's and the authors' last/best
    (their training log) and tested top-1 (their test log). Only rows with authors' files."""
    runs = res.runs
    rows = list(dict.fromkeys(runs["row"].dropna().astype(str))) if len(runs) else []
    authors = official_summary(rows, runs_root)
    columns = ["row", "method", "n", "kit_best_top1", "paper_top1", "official_last_top1",
               "official_best_top1", "official_test_top1"]
    if authors.empty:
        return pd.DataFrame(columns=columns)
    done = runs[runs["finished"] & runs["row"].astype(str).isin(set(authors["row"]))]
    kit = (done.groupby(["row", "method"], sort=False)
           .agg(n=("best_top1", "count"), kit_best_top1=("best_top1", "mean"),
                paper_top1=("paper_top1", "first")).reset_index())
    out = kit.merge(authors, on="row", how="right")
    return out[columns]


def official_overlay(res: Any, runs_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The kit's validation top-1 per epoch (``res.epochs``) and the authors' curve, one frame:
    ``row, run, method, epoch, val_top1, source`` (``source`` "kit" or the authors' file), only
    for rows with an authors' curve."""
    rows = list(dict.fromkeys(res.runs["row"].dropna().astype(str))) if len(res.runs) else []
    theirs = official_curves(rows, runs_root)
    columns = ["row", "run", "method", "epoch", "val_top1", "source"]
    if theirs.empty:
        return pd.DataFrame(columns=columns)
    ours = res.epochs[res.epochs["row"].astype(str).isin(set(theirs["row"]))]
    ours = ours.assign(source="kit")[["row", "run", "method", "epoch", "val_top1", "source"]]
    theirs = theirs.assign(run="authors", method="authors")[columns]
    return pd.concat([ours, theirs], ignore_index=True)[columns]


def overlay_figure(overlay: pd.DataFrame):
    """One panel per row: the authors' accuracy-vs-epoch curve (black) beside the kit's runs."""
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(overlay["row"]))
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.5 * max(1, len(rows)), 3.2),
                             squeeze=False)
    for ax, row in zip(axes[0], rows):
        part = overlay[overlay["row"] == row]
        for (run, method), line in part.groupby(["run", "method"], sort=False):
            authors = method == "authors"
            ax.plot(line["epoch"], line["val_top1"], color="black" if authors else None,
                    lw=2 if authors else 1, label="authors" if authors else f"{method} ({run})")
        ax.set(title=row, xlabel="epoch", ylabel="val top-1 (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
