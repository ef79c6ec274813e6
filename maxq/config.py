"""The training configuration, written once: :class:`TrainConfig`.

Every option of a run is one dataclass field whose metadata carries what the rest of the kit
needs to know about it, so that nothing is written twice:

* the command-line flags of ``maxq train`` (the seed's ``pruning_train.py`` names and aliases,
  ``--save_dir``/``--save-dir``, ``--decay-start`` for ``--increase-start``, ...), their help
  and how a value is parsed: :func:`add_arguments` builds the argparse flags from it;
* whether the option changes what a run computes (``fingerprint``): the fingerprint stored in
  checkpoints and compared on ``--resume`` leaves the others out (:data:`NOT_FINGERPRINTED`), and
  ``maxq batch`` ignores those and a few more (:data:`ROW_CHECK_IGNORED`) when it checks that a
  finished run directory belongs to a study row.

The notebook ``notebooks/row.ipynb`` names every field in its parameters cell and builds the
config with :meth:`TrainConfig.from_parameters` (one line); a run directory's options are read
back with :func:`maxq.records.read_config`.

Seed flags keep their names in snake_case (``--no-bn-decay`` is ``no_bn_decay``) and their
defaults; ``None`` means "resolved from the rest" (see :meth:`TrainConfig.resolved`).

Importing this module is cheap (no torch, no torchvision): ``maxq batch`` and the reports read
the field list; checks and resolution import what they ask.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

IMAGENET_SETS = ("ImageNet", "ImageNetDali")
#: "v2" is accepted for the authors' scripts: in their code it calls a method no layer defines,
#: i.e. no decay; the kit warns once and trains as with ``--decay 0``
DECAY_TYPES = ("v1", "v2")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp16", "off")
SEED_GROUP = "seed flags (pruning_train.py)"
KIT_GROUP = "kit flags"


# ============================================================================ flag parsers
def parse_bool(text: str) -> bool:
    """The seed's boolean flags take a value: True/False, 1/0, yes/no, on/off (any case)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_snapshots(text: str) -> int | list[int] | None:
    """``K`` (every K-th epoch), ``A,B,C`` (those epochs, from 0; ``5,`` is epoch 5 alone) or
    ``none`` (first and last only)."""
    value = text.strip().lower()
    if value in ("none", "0", ""):
        return None
    try:
        if "," in value:
            return [int(v) for v in value.split(",") if v.strip()]
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected K (every K-th epoch) or a comma list of epochs, got {text!r}") from None


def parse_resume(text: str) -> bool | str:
    """``--resume`` alone or ``--resume True``: this save_dir's checkpoint; otherwise a path."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "false", "0", "no"):
        return parse_bool(value)
    return text


def _names(module: str, attr: str) -> Callable[[], str]:
    """The keys of a registry, read when the help is built (the registries import torch)."""
    def names() -> str:
        import importlib

        return ", ".join(getattr(importlib.import_module(f"maxq.{module}"), attr))
    return names


def option(default: Any, *flags: str, help: str, group: str = KIT_GROUP,  # noqa: A002
           type: Callable | None = None, kind: str = "value", metavar: str | None = None,  # noqa: A002
           choices: Callable[[], str] | Iterable[str] | None = None,
           fingerprint: bool = True, row_check: bool | None = None,
           negative: str | None = None) -> Any:
    """A :class:`TrainConfig` field and everything said about it once.

    ``flags``: the option strings (none: derived from the name, ``--increase-end``; a plain
    word: the positional argument). ``kind``: ``value`` (``type`` parses it), ``bool`` (the
    seed's ``--flag True``; the bare flag means True), ``switch`` (``store_true``), ``optional``
    (the bare flag means True, or ``type`` parses a value: ``--resume [CHECKPOINT]``).
    ``choices``: names listed in the help where it says ``{choices}`` (a function: read late).
    ``fingerprint``: the option changes what a run computes (compared on ``--resume``).
    ``row_check``: ``maxq batch`` compares it when it checks that a finished run belongs to a
    study row (default: as ``fingerprint``). ``negative``: a second flag that sets False."""
    return dataclasses.field(default=default, metadata={
        "flags": flags, "help": help, "group": group, "type": type, "kind": kind,
        "metavar": metavar, "choices": choices, "fingerprint": fingerprint,
        "row_check": fingerprint if row_check is None else row_check,
        "negative": negative})


# ============================================================================ the fields

#: the largest value each numeric option accepts (issue 27: ``--epochs 9223372036854775807``
#: sat in train() growing its memory, writing nothing); far above any run of the paper
UPPER_BOUNDS: dict[str, float] = {
    "N": 256, "M": 256, "epochs": 10_000, "batch_size": 65_536, "print_freq": 10**9,
    "mask_interval": 10**9, "workers": 256, "increase_start": 10_000, "increase_end": 10_000,
    "warmup_length": 10_000, "seed": 2**32 - 1, "recalibrate_bn": 10**6,
    "train_subset": 10**9, "val_subset": 10**9, "image_size": 4096, "lr": 1e4, "tau": 1e6,
    "decay": 1e3, "weight_decay": 10.0}


@dataclass
class TrainConfig:
    """Every option of a run (see the module docstring); the field order is config.json's."""

    # data
    data: str | None = option(
        None, "data", group=SEED_GROUP, metavar="DATA", fingerprint=False,
        help="path to the dataset (ImageNet: DATA/train and DATA/val class folders; optional "
             "for FashionMNIST, found in /usr/share/datasets)")
    set: str = option("ImageNet", "--set", group=SEED_GROUP, choices=_names("data", "DATASETS"),
                      help="dataset; one of {choices}")
    image_size: int | None = option(
        None, type=int, help="training image size (default: the set's, 224 for ImageNet)")
    train_subset: int | None = option(None, type=int, metavar="K",
                                      help="train on a class-balanced subset of K images")
    val_subset: int | None = option(None, type=int, metavar="K",
                                    help="evaluate on a fixed class-balanced subset of K images")
    workers: int = option(4, "-j", "--workers", group=SEED_GROUP, type=int, fingerprint=False,
                          help="data loading workers (DALI threads for ImageNetDali)")
    lighting: str = option("authors", help="colour augmentation of the ImageNet sets: authors "
                                           "(their ColorAugmentation), pca (AlexNet PCA "
                                           "lighting) or none")
    # model and method
    arch: str = option("resnet18", "-a", "--arch", group=SEED_GROUP,
                       choices=_names("models", "ARCHS"), help="model; one of {choices}")
    small_input: bool | None = option(
        None, kind="bool", help="CIFAR-style stem (stride 1, no max-pool); default: the set's "
                                "choice")
    width_mult: float = option(1.0, type=float,
                               help="channel width multiplier of the architecture (1.0: the "
                                    "paper's nets; smaller for CPU proxies)")
    conv_bn_type: str = option("SoftMaxQConv2DBN", "--conv-bn-type", group=SEED_GROUP,
                               choices=_names("methods", "METHODS"),
                               help="method (conv/bn type); one of {choices}")
    N: int = option(2, "--N", group=SEED_GROUP, type=int, help="N of N:M sparsity")
    M: int = option(4, "--M", group=SEED_GROUP, type=int, help="M of N:M sparsity")
    decay: float = option(2e-4, group=SEED_GROUP, type=float, help="SR-STE decay lambda")
    decay_type: str = option("v1", group=SEED_GROUP, choices=DECAY_TYPES,
                             help="SR-STE decay type; one of {choices} (v2 means no decay in the "
                                  "authors' code: accepted with a warning, = --decay 0)")
    increase_start: int = option(
        0, "--increase-start", "--decay-start", group=SEED_GROUP, type=int,
        help="epoch where the share of N:M blocks starts to grow (--decay-start: the authors' "
             "scripts' name)")
    increase_end: int = option(
        90, "--increase-end", "--decay-end", group=SEED_GROUP, type=int,
        help="epoch from which every block is N:M (must be <= --epochs; --decay-end: the "
             "authors' scripts' name)")
    tau: float = option(0.01, group=SEED_GROUP, type=float,
                        help="temperature of MaxQ's soft queries")
    prune_schedule: str = option("linear", group=SEED_GROUP,
                                 choices=_names("schedules", "SCHEDULES"),
                                 help="incremental schedule; one of {choices}")
    mask_interval: int = option(1, type=int, metavar="K",
                                help="recompute the masks every K-th training step and keep "
                                     "them in between (1, the paper's setting: every step)")
    # optimisation
    epochs: int = option(120, group=SEED_GROUP, type=int, help="training epochs")
    batch_size: int = option(256, "-b", "--batch-size", group=SEED_GROUP, type=int,
                             help="GLOBAL batch size (each of K torchrun processes takes 1/K "
                                  "of it)")
    lr: float = option(0.1, "--lr", "--learning-rate", group=SEED_GROUP, type=float,
                       help="base learning rate")
    lr_policy: str = option("cosine", help="learning-rate schedule, updated once per epoch: "
                                           "cosine or step (x0.1 every 30 epochs)")
    warmup_length: int = option(0, group=SEED_GROUP, type=int,
                                help="epochs of linear learning-rate warm-up")
    momentum: float = option(0.9, group=SEED_GROUP, type=float, help="SGD momentum")
    nesterov: bool = option(False, group=SEED_GROUP, kind="bool", help="Nesterov momentum")
    weight_decay: float = option(1e-4, "--weight-decay", "--wd", group=SEED_GROUP, type=float,
                                 help="SGD weight decay")
    no_bn_decay: bool | None = option(
        None, group=SEED_GROUP, kind="bool",
        help="no weight decay on BatchNorm and bias parameters (default: True for ImageNet "
             "sets, as the authors' scripts, False otherwise)")
    label_smoothing: float | None = option(
        None, type=float, help="label smoothing (default: 0.1 for ImageNet sets, 0 otherwise)")
    seed: int = option(0, group=SEED_GROUP, type=int,
                       help="seed of initialisation, data order, augmentation")
    recalibrate_bn: int = option(
        0, type=int, metavar="K",
        help="recompute BatchNorm running statistics from K training batches before every "
             "evaluation (0: off, the authors' recipe); for nets whose BN momentum is too slow "
             "for short runs, e.g. MobileNetV3 (0.01)")
    # run directory
    save_dir: str | None = option(
        None, "--save_dir", "--save-dir", group=SEED_GROUP, fingerprint=False,
        help="run directory for config, metrics, masks, checkpoints and log (default: "
             "runs/<set>_<arch>_<method>_<N>of<M>_s<seed>)")
    resume: bool | str = option(
        False, group=SEED_GROUP, type=parse_resume, kind="optional", metavar="CHECKPOINT",
        fingerprint=False,
        help="continue the run in --save_dir from its checkpoint.pth (or from the given "
             "checkpoint; --save_dir defaults to its folder); the config must be the same")
    overwrite: bool = option(False, kind="switch", fingerprint=False,
                             help="replace the run already in --save_dir (finished or not); "
                                  "without it such a directory is refused and left untouched")
    evaluate: bool = option(False, "-e", "--evaluate", group=SEED_GROUP, kind="switch",
                            fingerprint=False,
                            help="evaluate --pretrained (or the --resume checkpoint) on the "
                                 "validation set and stop")
    # a path: a finished run moved with its weights still belongs to its row
    pretrained: str | None = option(
        None, group=SEED_GROUP, metavar="PATH", row_check=False,
        help="checkpoint to evaluate or to start from (loaded with weights_only)")
    # hardware
    device: str = option("auto", choices=DEVICES, fingerprint=False, help="one of {choices}")
    # the machine's choice: a study's runs stay valid when --option amp=... picks another
    amp: str = option(
        "auto", choices=AMP_MODES, row_check=False,
        help="mixed precision, one of {choices} (auto: bf16 where supported else fp16 with a "
             "grad scaler on CUDA; off on CPU; bf16 also runs on CPU with CPU autocast; fp16 "
             "needs CUDA)")
    channels_last: bool | None = option(None, kind="bool", fingerprint=False,
                                        help="channels_last memory format (default: on for "
                                             "CUDA)")
    sync_bn: bool | None = option(
        None, kind="bool",
        help="synchronise BatchNorm statistics over torchrun processes (default: on with "
             "several processes, so K processes equal one with the same global batch)")
    deterministic: bool | None = option(None, kind="bool", fingerprint=False,
                                        help="deterministic algorithms (default: on for CPU)")
    # records
    snapshot_epochs: int | list[int] | None = option(
        1, type=parse_snapshots, metavar="K|A,B,..", fingerprint=False,
        help="save masks every K-th epoch (default 1: every epoch; about 1 byte per sparse "
             "weight per saved epoch), or at the listed epochs (counted from 0; '5,' is "
             "epoch 5 alone); the first and last epoch always")
    print_freq: int = option(100, "-p", "--print-freq", group=SEED_GROUP, type=int,
                             fingerprint=False,
                             help="log a 'Prec@1 ... Prec@5 ...' line every this many batches")
    progress: bool | None = option(None, kind="bool", fingerprint=False, negative="--no-progress",
                                   help="tqdm bar per epoch (default: when stderr is a terminal)")
    study: str | None = option(None, fingerprint=False,
                               help="study label written to config.json")
    row: str | None = option(None, fingerprint=False, help="row label written to config.json")

    @classmethod
    def from_parameters(cls, namespace: Mapping[str, Any]) -> "TrainConfig":
        """The config of the fields ``namespace`` names (a notebook's ``globals()``, a dict);
        names that are not fields are ignored, fields it lacks keep their defaults."""
        return cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls)
                      if f.name in namespace})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The config of parsed ``maxq train`` arguments (:func:`add_arguments`)."""
        return cls.from_parameters(vars(args))

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` with one line for the first problem; return ``self``."""
        import torch

        from maxq import data as maxq_data, methods, models, schedules

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        need(self.set in maxq_data.DATASETS,
             f"unknown --set {self.set!r}; choose one of {', '.join(maxq_data.DATASETS)}")
        need(self.arch in models.ARCHS,
             f"unknown --arch {self.arch!r}; choose one of {', '.join(models.ARCHS)}")
        need(self.conv_bn_type in methods.METHODS,
             f"unknown --conv-bn-type {self.conv_bn_type!r}; choose one of "
             f"{', '.join(methods.METHODS)}")
        need(self.prune_schedule in schedules.SCHEDULES,
             f"unknown --prune-schedule {self.prune_schedule!r}; choose one of "
             f"{', '.join(schedules.SCHEDULES)}")
        for name, value, choices in (("--decay-type", self.decay_type, DECAY_TYPES),
                                     ("--lr-policy", self.lr_policy, schedules.LR_SCHEDULES),
                                     ("--device", self.device, DEVICES),
                                     ("--amp", self.amp, AMP_MODES)):
            need(value in choices, f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        need(self.lighting in maxq_data.LIGHTINGS,
             f"unknown --lighting {self.lighting!r}; choose one of "
             f"{', '.join(maxq_data.LIGHTINGS)}")
        for name in ("N", "M", "epochs", "batch_size", "print_freq", "mask_interval"):
            value = getattr(self, name)
            need(is_int(value) and value >= 1, f"--{name.replace('_', '-')} must be an integer "
                                               f">= 1; got {value!r}")
        for name in ("workers", "increase_start", "increase_end", "warmup_length", "seed",
                     "recalibrate_bn"):
            value = getattr(self, name)
            need(is_int(value) and value >= 0, f"--{name.replace('_', '-')} must be an integer "
                                               f">= 0; got {value!r}")
        need(self.N <= self.M, f"N must be <= M; got --N {self.N} --M {self.M}")
        need(self.increase_start <= self.increase_end,
             f"--increase-start ({self.increase_start}) must be <= --increase-end "
             f"({self.increase_end})")
        if methods.METHODS[self.conv_bn_type].incremental:
            need(self.increase_end <= self.epochs,
                 f"--increase-end ({self.increase_end}) must be <= --epochs ({self.epochs}) for "
                 f"the incremental method {self.conv_bn_type}")
        need(self.warmup_length <= self.epochs,
             f"--warmup-length ({self.warmup_length}) must be <= --epochs ({self.epochs})")
        for name in ("lr", "tau", "decay", "weight_decay", "momentum", "label_smoothing"):
            value = getattr(self, name)       # inf passes "> 0"; nan would fail it unclearly
            need(not _is_number(value) or math.isfinite(value),
                 f"--{name.replace('_', '-')} must be a finite number; got {value!r}")
        for name, lo in (("lr", 0.0), ("tau", 0.0)):
            value = getattr(self, name)
            need(_is_number(value) and value > lo, f"--{name} must be > {lo:g}; got {value!r}")
        for name in ("decay", "weight_decay"):
            value = getattr(self, name)
            need(_is_number(value) and value >= 0,
                 f"--{name.replace('_', '-')} must be >= 0; got {value!r}")
        need(_is_number(self.momentum) and 0 <= self.momentum < 1,
             f"--momentum must be in [0, 1); got {self.momentum!r}")
        need(not (self.nesterov and self.momentum == 0), "--nesterov True needs --momentum > 0")
        need(_is_number(self.width_mult) and 0 < self.width_mult <= 4,
             f"--width-mult must be in (0, 4]; got {self.width_mult!r}")
        need(self.label_smoothing is None
             or (_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1),
             f"--label-smoothing must be in [0, 1); got {self.label_smoothing!r}")
        for name, lo in (("train_subset", 1), ("val_subset", 1), ("image_size", 8)):
            value = getattr(self, name)
            need(value is None or (is_int(value) and value >= lo),
                 f"--{name.replace('_', '-')} must be an integer >= {lo}; got {value!r}")
        for name, hi in UPPER_BOUNDS.items():  # issue 27: no option may ask for the absurd
            value = getattr(self, name)
            need(not _is_number(value) or value <= hi,
                 f"--{name.replace('_', '-')} must be <= {hi:g}; got {value!r}")
        snapshot_epochs(self.snapshot_epochs, self.epochs)  # raises on a bad value
        need(isinstance(self.resume, (bool, str, os.PathLike)),
             f"--resume must be a flag or a checkpoint path; got {self.resume!r}")
        if self.data not in (None, ""):
            need(Path(self.data).expanduser().exists(),
                 f"data directory does not exist: {self.data}")
        elif self.set not in ("FashionMNIST",):
            raise ValueError(f"--set {self.set} needs the DATA directory argument")
        if self.pretrained is not None:
            need(Path(self.pretrained).expanduser().is_file(),
                 f"--pretrained checkpoint not found: {self.pretrained}")
        if self.evaluate:
            need(self.pretrained is not None or bool(self.resume),
                 "--evaluate needs --pretrained PATH (or --resume)")
        if self.device == "cuda":
            need(torch.cuda.is_available(), "--device cuda but no CUDA device is available")
        return self

    # ------------------------------------------------------------------ resolution
    def resolved(self, world_size: int = 1) -> "TrainConfig":
        """A copy with every ``None``/``auto`` replaced by what the run will use."""
        import torch

        from maxq import data as maxq_data

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        amp = self.amp
        if amp == "auto":
            amp = "off" if device == "cpu" else (
                "bf16" if torch.cuda.is_bf16_supported() else "fp16")
        if device == "cpu" and amp == "fp16":
            raise ValueError("--amp fp16 needs CUDA (float16 autocast with a gradient scaler); on "
                             "CPU use --amp bf16 (CPU autocast) or --amp off (float32)")
        resume = self.resume
        save_dir = self.save_dir
        if isinstance(resume, (str, os.PathLike)) and not isinstance(resume, bool):
            resume = str(Path(resume).expanduser())
            if save_dir is None:
                save_dir = str(Path(resume).parent)
        if save_dir is None:
            save_dir = str(Path("runs") / f"{self.set}_{self.arch}_{self.conv_bn_type}_"
                                          f"{self.N}of{self.M}_s{self.seed}")
        snapshots = self.snapshot_epochs
        return dataclasses.replace(
            self,
            label_smoothing=float(self.label_smoothing if self.label_smoothing is not None
                                  else (0.1 if self.set in IMAGENET_SETS else 0.0)),
            no_bn_decay=bool(self.set in IMAGENET_SETS if self.no_bn_decay is None
                             else self.no_bn_decay),
            small_input=bool(maxq_data.DATASETS[self.set].small_input
                             if self.small_input is None else self.small_input),
            device=device, amp=amp,
            channels_last=bool(device == "cuda" if self.channels_last is None
                               else self.channels_last),
            sync_bn=bool(world_size > 1 if self.sync_bn is None else self.sync_bn),
            deterministic=bool(device == "cpu" if self.deterministic is None
                               else self.deterministic),
            snapshot_epochs=list(snapshots) if isinstance(snapshots, (list, tuple)) else snapshots,
            save_dir=str(save_dir), resume=resume,
            progress=bool(sys.stderr.isatty() if self.progress is None else self.progress),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """The resolved options that change what a run computes (compared on --resume)."""
        fingerprint = {k: v for k, v in self.to_dict().items() if k not in NOT_FINGERPRINTED}
        for name, default in (("mask_interval", 1), ("width_mult", 1.0), ("recalibrate_bn", 0),
                              ("lighting", "authors")):
            if fingerprint[name] == default:       # the default, unknown to older checkpoints
                del fingerprint[name]
        return fingerprint



#: options that do not change what a run computes: a resume may differ in these
NOT_FINGERPRINTED = frozenset(f.name for f in dataclasses.fields(TrainConfig)
                              if not f.metadata["fingerprint"])
#: options ``maxq batch`` does not compare when it checks that a finished run directory belongs
#: to a study row: the above, and paths or machine choices a study may change for finished runs
ROW_CHECK_IGNORED = frozenset(f.name for f in dataclasses.fields(TrainConfig)
                              if not f.metadata["row_check"])


# ============================================================================ command line
def flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The option strings of a field (``--name-with-dashes`` unless given)."""
    return f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every :class:`TrainConfig` field, from its metadata, in two groups (the
    seed's, then the kit's); every destination is the field's name and every default the
    field's default."""
    groups = {name: parser.add_argument_group(name) for name in (SEED_GROUP, KIT_GROUP)}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        group = groups[meta["group"]]
        choices = meta["choices"]
        if choices is not None:
            choices = choices() if callable(choices) else ", ".join(choices)
        text = meta["help"].replace("{choices}", choices or "")
        names = flags(f)
        kwargs: dict[str, Any] = {"help": text}
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["kind"] == "switch":
            group.add_argument(*names, dest=f.name, action="store_true", **kwargs)
        elif not names[0].startswith("-"):          # the positional DATA
            group.add_argument(f.name, nargs="?", default=f.default, **kwargs)
        elif meta["kind"] == "bool":
            kwargs.setdefault("metavar", "BOOL")
            group.add_argument(*names, dest=f.name, type=parse_bool, nargs="?", const=True,
                               default=f.default, **kwargs)
        elif meta["kind"] == "optional":          # --resume alone, or with a value
            group.add_argument(*names, dest=f.name, type=meta["type"], nargs="?", const=True,
                               default=f.default, **kwargs)
        else:
            group.add_argument(*names, dest=f.name, type=meta["type"], default=f.default,
                               **kwargs)
        if meta["negative"]:
            group.add_argument(meta["negative"], dest=f.name, action="store_false",
                               help=f"the same as {names[0]} False")


# ============================================================================ helpers
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def snapshot_epochs(spec: int | list[int] | None, epochs: int) -> set[int]:
    """Epochs (0-based) whose masks are saved: ``spec`` (every k-th epoch, i.e. t with
    (t + 1) % k == 0, or an explicit list), always plus the first and the last epoch."""
    chosen = {0, epochs - 1}
    if spec is None or spec == 0:
        return chosen
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) and spec > 0:
        return chosen | {t for t in range(epochs) if (t + 1) % int(spec) == 0}
    if isinstance(spec, (list, tuple)) and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in spec):
        bad = [t for t in spec if not 0 <= t < epochs]
        if bad:
            raise ValueError(f"--snapshot-epochs {bad} outside 0..{epochs - 1} (epochs count "
                             f"from 0)")
        return chosen | {int(t) for t in spec}
    raise ValueError(f"--snapshot-epochs must be a positive integer k (every k-th epoch) or a "
                     f"list of epochs; got {spec!r}")


