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

The notebook ``notebooks/row.ipynb`` receives a run's options as one ``config`` mapping and
builds the config with ``TrainConfig(**config)`` (a new field needs no notebook edit); a study's
options are checked field by field before a batch launches (:func:`option_problems`, from the
same metadata: type from the annotation, choices, range); a run directory's options are read
back with :func:`maxq.records.read_config`.

Seed flags keep their names in snake_case (``--no-bn-decay`` is ``no_bn_decay``) and their
defaults; ``None`` means "resolved from the rest" (see :meth:`TrainConfig.resolved`).

Importing this module is cheap (no torch, no torchvision): ``maxq batch`` and the reports read
the field list; checks and resolution import what they ask.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import sys
import typing
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


def _names(module: str, attr: str) -> Callable[[], tuple[str, ...]]:
    """The keys of a registry, read when they are asked for (the registries import torch)."""
    def names() -> tuple[str, ...]:
        import importlib

        return tuple(getattr(importlib.import_module(f"maxq.{module}"), attr))
    return names


def option(default: Any, *flags: str, help: str, group: str = KIT_GROUP,  # noqa: A002
           type: Callable | None = None, kind: str = "value", metavar: str | None = None,  # noqa: A002
           choices: Callable[[], Iterable[str]] | Iterable[str] | None = None,
           fingerprint: bool = True, row_check: bool | None = None,
           negative: str | None = None, minimum: float | None = None,
           maximum: float | None = None, exclusive: str = "") -> Any:
    """A :class:`TrainConfig` field and everything said about it once.

    ``flags``: the option strings (none: derived from the name, ``--increase-end``; a plain
    word: the positional argument). ``kind``: ``value`` (``type`` parses it), ``bool`` (the
    seed's ``--flag True``; the bare flag means True), ``switch`` (``store_true``), ``optional``
    (the bare flag means True, or ``type`` parses a value: ``--resume [CHECKPOINT]``).
    ``choices``: the accepted values, listed in the help where it says ``{choices}`` (a
    function: read late). ``minimum``/``maximum``: the accepted range of a number
    (``exclusive``: ``"min"``, ``"max"`` or ``"both"`` ends left out); numbers are also held
    to :data:`UPPER_BOUNDS`. The value's type is the field's annotation.
    ``fingerprint``: the option changes what a run computes (compared on ``--resume``).
    ``row_check``: ``maxq batch`` compares it when it checks that a finished run belongs to a
    study row (default: as ``fingerprint``). ``negative``: a second flag that sets False."""
    return dataclasses.field(default=default, metadata={
        "flags": flags, "help": help, "group": group, "type": type, "kind": kind,
        "metavar": metavar, "choices": choices, "fingerprint": fingerprint,
        "row_check": fingerprint if row_check is None else row_check,
        "negative": negative, "minimum": minimum, "maximum": maximum, "exclusive": exclusive})


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
        None, type=int, minimum=8,
        help="training image size (default: the set's, 224 for ImageNet)")
    train_subset: int | None = option(None, type=int, metavar="K", minimum=1,
                                      help="train on a class-balanced subset of K images")
    val_subset: int | None = option(None, type=int, metavar="K", minimum=1,
                                    help="evaluate on a fixed class-balanced subset of K images")
    workers: int = option(4, "-j", "--workers", group=SEED_GROUP, type=int, fingerprint=False,
                          minimum=0,
                          help="data loading workers (DALI threads for ImageNetDali)")
    lighting: str = option("authors", choices=_names("data", "LIGHTINGS"),
                           help="colour augmentation of the ImageNet sets: authors (their "
                                "ColorAugmentation), pca (AlexNet PCA lighting) or none")
    # model and method
    arch: str = option("resnet18", "-a", "--arch", group=SEED_GROUP,
                       choices=_names("models", "ARCHS"), help="model; one of {choices}")
    small_input: bool | None = option(
        None, kind="bool", help="CIFAR-style stem (stride 1, no max-pool); default: the set's "
                                "choice")
    width_mult: float = option(1.0, type=float, minimum=0, maximum=4, exclusive="min",
                               help="channel width multiplier of the architecture (1.0: the "
                                    "paper's nets; smaller for CPU proxies)")
    conv_bn_type: str = option("SoftMaxQConv2DBN", "--conv-bn-type", group=SEED_GROUP,
                               choices=_names("methods", "METHODS"),
                               help="method (conv/bn type); one of {choices}")
    N: int = option(2, "--N", group=SEED_GROUP, type=int, minimum=1, help="N of N:M sparsity")
    M: int = option(4, "--M", group=SEED_GROUP, type=int, minimum=1, help="M of N:M sparsity")
    decay: float = option(2e-4, group=SEED_GROUP, type=float, minimum=0, help="SR-STE decay lambda")
    decay_type: str = option("v1", group=SEED_GROUP, choices=DECAY_TYPES,
                             help="SR-STE decay type; one of {choices} (v2 means no decay in the "
                                  "authors' code: accepted with a warning, = --decay 0)")
    increase_start: int = option(
        0, "--increase-start", "--decay-start", group=SEED_GROUP, type=int, minimum=0,
        help="epoch where the share of N:M blocks starts to grow (--decay-start: the authors' "
             "scripts' name)")
    increase_end: int = option(
        90, "--increase-end", "--decay-end", group=SEED_GROUP, type=int, minimum=0,
        help="epoch from which every block is N:M (must be <= --epochs; --decay-end: the "
             "authors' scripts' name)")
    tau: float = option(0.01, group=SEED_GROUP, type=float, minimum=0, exclusive="min",
                        help="temperature of MaxQ's soft queries")
    prune_schedule: str = option("linear", group=SEED_GROUP,
                                 choices=_names("schedules", "SCHEDULES"),
                                 help="incremental schedule; one of {choices}")
    mask_interval: int = option(1, type=int, metavar="K", minimum=1,
                                help="recompute the masks every K-th training step and keep "
                                     "them in between (1, the paper's setting: every step)")
    # optimisation
    epochs: int = option(120, group=SEED_GROUP, type=int, minimum=1, help="training epochs")
    batch_size: int = option(256, "-b", "--batch-size", group=SEED_GROUP, type=int, minimum=1,
                             help="GLOBAL batch size (each of K torchrun processes takes 1/K "
                                  "of it)")
    lr: float = option(0.1, "--lr", "--learning-rate", group=SEED_GROUP, type=float,
                       minimum=0, exclusive="min",
                       help="base learning rate")
    lr_policy: str = option("cosine", choices=_names("schedules", "LR_SCHEDULES"),
                            help="learning-rate schedule, updated once per epoch: cosine or "
                                 "step (x0.1 every 30 epochs)")
    warmup_length: int = option(0, group=SEED_GROUP, type=int, minimum=0,
                                help="epochs of linear learning-rate warm-up")
    momentum: float = option(0.9, group=SEED_GROUP, type=float, minimum=0, maximum=1,
                             exclusive="max", help="SGD momentum")
    nesterov: bool = option(False, group=SEED_GROUP, kind="bool", help="Nesterov momentum")
    weight_decay: float = option(1e-4, "--weight-decay", "--wd", group=SEED_GROUP, type=float,
                                 minimum=0,
                                 help="SGD weight decay")
    no_bn_decay: bool | None = option(
        None, group=SEED_GROUP, kind="bool",
        help="no weight decay on BatchNorm and bias parameters (default: True for ImageNet "
             "sets, as the authors' scripts, False otherwise)")
    label_smoothing: float | None = option(
        None, type=float, minimum=0, maximum=1, exclusive="max",
        help="label smoothing (default: 0.1 for ImageNet sets, 0 otherwise)")
    seed: int = option(0, group=SEED_GROUP, type=int, minimum=0,
                       help="seed of initialisation, data order, augmentation")
    recalibrate_bn: int = option(
        0, type=int, metavar="K", minimum=0,
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
    print_freq: int = option(100, "-p", "--print-freq", group=SEED_GROUP, type=int, minimum=1,
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
        """Raise ``ValueError`` with one line for the first problem; return ``self``. Each
        option is checked against its own definition (:func:`option_problem`: type, choices,
        range), then the options against each other."""
        for f in dataclasses.fields(self):
            problem = option_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(problem)
        return self._check_together()

    def _check_together(self) -> "TrainConfig":
        """The checks that involve several options, the file system or the machine."""
        import torch

        from maxq import methods

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

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
        need(not (self.nesterov and self.momentum == 0), "--nesterov True needs --momentum > 0")
        snapshot_epochs(self.snapshot_epochs, self.epochs)  # raises on a bad value
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


# ============================================================================ one option
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
#: each field's accepted types, read from its annotation
_TYPES = {name: tuple(typing.get_args(hint) or (hint,)) for name, hint in
          typing.get_type_hints(TrainConfig).items() if name in _FIELDS}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
               type(None): "None"}


def option_flag(name: str) -> str:
    """How messages name an option: its long flag (``--batch-size``), ``DATA`` for the
    positional."""
    names = [n for n in flags(_FIELDS[name]) if n.startswith("--")]
    return names[0] if names else name.upper()


def choices_of(name: str) -> tuple[str, ...] | None:
    """The values an option accepts when it is one of a list (read from its registry)."""
    choices = _FIELDS[name].metadata["choices"]
    return None if choices is None else tuple(choices() if callable(choices) else choices)


def _has_type(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if kind is float:
        return _is_number(value)
    if kind is str:
        return isinstance(value, (str, os.PathLike))
    if typing.get_origin(kind) is list:       # list[int]: the snapshot epochs
        return isinstance(value, (list, tuple)) and all(_has_type(v, int) for v in value)
    return isinstance(value, kind)


def _range_text(meta: Mapping[str, Any], integer: bool) -> str:
    lo, hi, open_ends = meta["minimum"], meta["maximum"], meta["exclusive"]
    if lo is not None and hi is not None:
        return (f"in {'(' if open_ends in ('min', 'both') else '['}{lo:g}, "
                f"{hi:g}{')' if open_ends in ('max', 'both') else ']'}")
    strict = open_ends in ("min", "both")
    return (f"an integer {'>' if strict else '>='} {lo:g}" if integer
            else f"{'>' if strict else '>='} {lo:g}")


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi, open_ends = meta["minimum"], meta["maximum"], meta["exclusive"]
    if lo is not None and (value <= lo if open_ends in ("min", "both") else value < lo):
        return False
    return hi is None or (value < hi if open_ends in ("max", "both") else value <= hi)


def option_problem(name: str, value: Any) -> str:
    """What is wrong with ``value`` for the option ``name`` ('' : nothing), from the option's
    definition only: its type (the annotation), its choices, its range and upper bound."""
    meta, kinds = _FIELDS[name].metadata, _TYPES[name]
    flag, choices = option_flag(name), choices_of(name)
    if choices is not None and value is not None and value not in choices:
        return f"unknown {flag} {value!r}; choose one of {', '.join(choices)}"
    numeric = meta["minimum"] is not None and (int in kinds or float in kinds)
    if not any(_has_type(value, kind) for kind in kinds):
        if numeric:
            return f"{flag} must be {_range_text(meta, float not in kinds)}; got {value!r}"
        words = " or ".join(_TYPE_WORDS.get(k, "a list of integers") for k in kinds
                            if k is not type(None))
        return f"{flag} must be {words}; got {value!r}"
    if not _is_number(value):
        return ""
    if float in kinds and not math.isfinite(value):  # inf passes "> 0"; nan fails unclearly
        return f"{flag} must be a finite number; got {value!r}"
    if numeric and not _in_range(value, meta):
        return f"{flag} must be {_range_text(meta, float not in kinds)}; got {value!r}"
    if name in UPPER_BOUNDS and value > UPPER_BOUNDS[name]:  # issue 27: nothing absurd
        return f"{flag} must be <= {UPPER_BOUNDS[name]:g}; got {value!r}"
    return ""


def option_problems(values: Mapping[str, Any]) -> list[str]:
    """One line per problem of ``values`` (option name -> value, e.g. a study's
    ``[defaults]``): unknown names (with the closest option) and :func:`option_problem`."""
    out = []
    for name, value in values.items():
        if name not in _FIELDS:
            hint = difflib.get_close_matches(name, sorted(_FIELDS), n=1)
            out.append(f"unknown training option {name!r}"
                       + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        else:
            problem = option_problem(name, value)
            if problem:
                out.append(problem)
    return out


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
            choices = ", ".join(choices() if callable(choices) else choices)
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


