"""The ``maxq`` command line (also ``python -m maxq``; under ``torchrun ... -m maxq train``).

``maxq train DATA --set ImageNet -a resnet50 --N 2 --M 4 --conv-bn-type SoftMaxQConv2DBN ...``
takes every flag of the seed's ``pruning_train.py`` with the same name, default and meaning
(boolean seed flags take a value: ``--no-bn-decay True``, ``--nesterov False``), plus the kit's
own (subsets, device, AMP, snapshots, ...). ``--evaluate --pretrained PATH`` is the seed's test
command.

Subcommands live in :data:`SUBCOMMANDS` (name -> :class:`Subcommand`). A subcommand's functions may
be given as ``"module:function"`` strings: the module is imported only when that subcommand runs,
so ``maxq train`` does not import the report or export machinery. Other modules add theirs with
:func:`register` or by an entry below (the registration points are marked).

Errors the user can fix (``ValueError``, ``OSError``: bad flags, missing data, refused run
directory) print ONE line ``error: ...`` to stderr and exit with status 2; set ``MAXQ_DEBUG=1`` for
the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` unless the default is None/False-y noise or the help names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``error: ...``) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Subcommand:
    """``add_arguments(parser)`` and ``run(args) -> exit status``; each a callable or a
    ``"module:function"`` string resolved when the subcommand is used."""

    help: str
    add_arguments: str | Callable[[argparse.ArgumentParser], None]
    run: str | Callable[[argparse.Namespace], int | None]

    @staticmethod
    def resolve(target: str | Callable) -> Callable:
        if callable(target):
            return target
        module, _, name = target.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{target} is not available: {exc}") from None


# ============================================================================ maxq train
def _bool(text: str) -> bool:
    """The seed's boolean flags take a value: True/False, 1/0, yes/no, on/off (any case)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _snapshots(text: str) -> int | list[int] | None:
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


def _resume(text: str) -> bool | str:
    """``--resume`` alone or ``--resume True``: this save_dir's checkpoint; otherwise a path."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "false", "0", "no"):
        return _bool(value)
    return text


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of the seed's README (same names and defaults) plus the kit's own."""
    from maxq import data, methods, models, schedules
    from maxq.train import AMP_MODES, DECAY_TYPES, DEVICES, TrainConfig

    d = TrainConfig()
    parser.formatter_class = _HelpFormatter
    seed = parser.add_argument_group("seed flags (pruning_train.py)")
    seed.add_argument("data", nargs="?", default=d.data, metavar="DATA",
                      help="path to the dataset (ImageNet: DATA/train and DATA/val class folders; "
                           "optional for FashionMNIST, found in /usr/share/datasets)")
    seed.add_argument("--set", dest="set", default=d.set,
                      help=f"dataset; one of {', '.join(data.DATASETS)}")
    seed.add_argument("-a", "--arch", default=d.arch,
                      help=f"model; one of {', '.join(models.ARCHS)}")
    seed.add_argument("--conv-bn-type", dest="conv_bn_type", default=d.conv_bn_type,
                      help=f"method (conv/bn type); one of {', '.join(methods.METHODS)}")
    seed.add_argument("--save_dir", "--save-dir", dest="save_dir", default=d.save_dir,
                      help="run directory for config, metrics, masks, checkpoints and log "
                           "(default: runs/<set>_<arch>_<method>_<N>of<M>_s<seed>)")
    seed.add_argument("-e", "--evaluate", action="store_true",
                      help="evaluate --pretrained (or the --resume checkpoint) on the validation "
                           "set and stop")
    seed.add_argument("--pretrained", default=d.pretrained, metavar="PATH",
                      help="checkpoint to evaluate or to start from (loaded with weights_only)")
    seed.add_argument("--N", dest="N", type=int, default=d.N, help="N of N:M sparsity")
    seed.add_argument("--M", dest="M", type=int, default=d.M, help="M of N:M sparsity")
    seed.add_argument("--decay", type=float, default=d.decay, help="SR-STE decay lambda")
    seed.add_argument("--decay-type", dest="decay_type", default=d.decay_type,
                      help=f"SR-STE decay type; one of {', '.join(DECAY_TYPES)} (v2 means no "
                           f"decay in the authors' code: accepted with a warning, = --decay 0)")
    seed.add_argument("--increase-start", "--decay-start", dest="increase_start", type=int,
                      default=d.increase_start,
                      help="epoch where the share of N:M blocks starts to grow (--decay-start: "
                           "the authors' scripts' name)")
    seed.add_argument("--increase-end", "--decay-end", dest="increase_end", type=int,
                      default=d.increase_end,
                      help="epoch from which every block is N:M (must be <= --epochs; "
                           "--decay-end: the authors' scripts' name)")
    seed.add_argument("--tau", type=float, default=d.tau, help="temperature of MaxQ's soft queries")
    seed.add_argument("--prune-schedule", dest="prune_schedule", default=d.prune_schedule,
                      help=f"incremental schedule; one of {', '.join(schedules.SCHEDULES)}")
    seed.add_argument("--no-bn-decay", dest="no_bn_decay", type=_bool, nargs="?", const=True,
                      default=d.no_bn_decay, metavar="BOOL",
                      help="no weight decay on BatchNorm and bias parameters (default: True for "
                           "ImageNet sets, as the authors' scripts, False otherwise)")
    seed.add_argument("--warmup-length", dest="warmup_length", type=int, default=d.warmup_length,
                      help="epochs of linear learning-rate warm-up")
    seed.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float,
                      default=d.weight_decay, help="SGD weight decay")
    seed.add_argument("--nesterov", type=_bool, nargs="?", const=True, default=d.nesterov,
                      metavar="BOOL", help="Nesterov momentum")
    seed.add_argument("-j", "--workers", type=int, default=d.workers,
                      help="data loading workers (DALI threads for ImageNetDali)")
    seed.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    seed.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=d.batch_size,
                      help="GLOBAL batch size (each of K torchrun processes takes 1/K of it)")
    seed.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=d.lr,
                      help="base learning rate")
    seed.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    seed.add_argument("--seed", type=int, default=d.seed,
                      help="seed of initialisation, data order, augmentation")
    seed.add_argument("--resume", nargs="?", const=True, default=d.resume, type=_resume,
                      metavar="CHECKPOINT",
                      help="continue the run in --save_dir from its checkpoint.pth (or from the "
                           "given checkpoint; --save_dir defaults to its folder); the config "
                           "must be the same")
    seed.add_argument("-p", "--print-freq", dest="print_freq", type=int, default=d.print_freq,
                      help="log a 'Prec@1 ... Prec@5 ...' line every this many batches")

    kit = parser.add_argument_group("kit flags")
    kit.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --save_dir (finished or not); without it "
                          "such a directory is refused and left untouched")
    kit.add_argument("--mask-interval", dest="mask_interval", type=int, default=d.mask_interval,
                     metavar="K",
                     help="recompute the masks every K-th training step and keep them in between "
                          "(1, the paper's setting: every step)")
    kit.add_argument("--lighting", default=d.lighting,
                     help="colour augmentation of the ImageNet sets: authors (their "
                          "ColorAugmentation), pca (AlexNet PCA lighting) or none")
    kit.add_argument("--width-mult", dest="width_mult", type=float, default=d.width_mult,
                     help="channel width multiplier of the architecture (1.0: the paper's nets; "
                          "smaller for CPU proxies)")
    kit.add_argument("--recalibrate-bn", dest="recalibrate_bn", type=int,
                     default=d.recalibrate_bn, metavar="K",
                     help="recompute BatchNorm running statistics from K training batches before "
                          "every evaluation (0: off, the authors' recipe); for nets whose BN "
                          "momentum is too slow for short runs, e.g. MobileNetV3 (0.01)")
    kit.add_argument("--lr-policy", dest="lr_policy", default=d.lr_policy,
                     help="learning-rate schedule, updated once per epoch: cosine or step "
                          "(x0.1 every 30 epochs)")
    kit.add_argument("--label-smoothing", dest="label_smoothing", type=float,
                     default=d.label_smoothing,
                     help="label smoothing (default: 0.1 for ImageNet sets, 0 otherwise)")
    kit.add_argument("--image-size", dest="image_size", type=int, default=d.image_size,
                     help="training image size (default: the set's, 224 for ImageNet)")
    kit.add_argument("--train-subset", dest="train_subset", type=int, default=d.train_subset,
                     metavar="K", help="train on a class-balanced subset of K images")
    kit.add_argument("--val-subset", dest="val_subset", type=int, default=d.val_subset,
                     metavar="K", help="evaluate on a fixed class-balanced subset of K images")
    kit.add_argument("--small-input", dest="small_input", type=_bool, nargs="?", const=True,
                     default=d.small_input, metavar="BOOL",
                     help="CIFAR-style stem (stride 1, no max-pool); default: the set's choice")
    kit.add_argument("--device", default=d.device, help=f"one of {', '.join(DEVICES)}")
    kit.add_argument("--amp", default=d.amp,
                     help=f"mixed precision, one of {', '.join(AMP_MODES)} (auto: bf16 where "
                          f"supported else fp16 with a grad scaler on CUDA; off on CPU; bf16 also runs on "
                          f"CPU with CPU autocast; fp16 needs CUDA)")
    kit.add_argument("--channels-last", dest="channels_last", type=_bool, nargs="?", const=True,
                     default=d.channels_last, metavar="BOOL",
                     help="channels_last memory format (default: on for CUDA)")
    kit.add_argument("--sync-bn", dest="sync_bn", type=_bool, nargs="?", const=True,
                     default=d.sync_bn, metavar="BOOL",
                     help="synchronise BatchNorm statistics over torchrun processes (default: on "
                          "with several processes, so K processes equal one with the same "
                          "global batch)")
    kit.add_argument("--deterministic", type=_bool, nargs="?", const=True,
                     default=d.deterministic, metavar="BOOL",
                     help="deterministic algorithms (default: on for CPU)")
    kit.add_argument("--snapshot-epochs", dest="snapshot_epochs", type=_snapshots,
                     default=d.snapshot_epochs, metavar="K|A,B,..",
                     help="save masks every K-th epoch, or at the listed epochs (counted from 0; "
                          "'5,' is epoch 5 alone); the first and last epoch always")
    kit.add_argument("--progress", dest="progress", type=_bool, nargs="?", const=True,
                     default=d.progress, metavar="BOOL",
                     help="tqdm bar per epoch (default: when stderr is a terminal)")
    kit.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar")
    kit.add_argument("--study", default=d.study, help="study label written to config.json")
    kit.add_argument("--row", default=d.row, help="row label written to config.json")


def config_from_args(args: argparse.Namespace):
    """The :class:`maxq.train.TrainConfig` of parsed ``maxq train`` arguments."""
    from maxq.train import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def run_train(args: argparse.Namespace) -> int:
    from maxq import records
    from maxq.train import evaluate, train

    config = config_from_args(args)
    main_rank = os.environ.get("RANK", "0") == "0"
    if config.evaluate:
        stats = evaluate(config, explicit=getattr(args, "explicit_options", None))
        if main_rank:
            print(f"evaluate: Prec@1 {stats['top1']:.3f} Prec@5 {stats['top5']:.3f} "
                  f"Loss {stats['loss']:.4f} on {stats['images']} images")
        return 0
    run_dir = train(config)
    if main_rank:
        result = records.read_json(run_dir / records.RESULT)
        print(f"best top-1 {result['best_top1']:.3f} top-5 {result['best_top5']:.3f} (epoch "
              f"{result['best_epoch']}); last top-1 {result['last_top1']:.3f} top-5 "
              f"{result['last_top5']:.3f}; run directory {run_dir}")
    return 0


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations ``argv`` sets itself (not left at their defaults)."""
    saved = {action: action.default for action in parser._actions}  # noqa: SLF001
    try:
        for action in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved.items():
            action.default = default
    return set(vars(namespace))


def split_glued_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """The seed README glues a value to the next flag (``--save_dir DIR--warmup-length 0``):
    split such a token when what follows the ``--`` is one of ``parser``'s flags."""
    flags = set(parser._option_string_actions)  # noqa: SLF001 - argparse keeps no public list
    out: list[str] = []
    for token in argv:
        head, sep, tail = token.partition("--")
        if head and sep and not token.startswith("-") and f"--{tail.split('=')[0]}" in flags:
            out += [head, f"--{tail}"]
        else:
            out.append(token)
    return out


# ============================================================================ the registry
SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("train one run, or evaluate a checkpoint (the seed's pruning_train.py)",
                        add_train_arguments, run_train),
    # ---- registration points: commands of other modules, imported only when used ----
    "batch": Subcommand("run a study: its rows as papermill notebooks, then the report",
                        "maxq.batch:add_batch_arguments", "maxq.batch:run_batch_command"),
    "report": Subcommand("render a study's report from its run directories",
                         "maxq.batch:add_report_arguments", "maxq.batch:run_report_command"),
    "export": Subcommand("fold masks and export a run (torchvision, ONNX, 2:4 kernels, INT8)",
                         "maxq.export:add_arguments", "maxq.export:run"),
}


def register(name: str, help: str, add_arguments, run) -> None:  # noqa: A002 - argparse word
    """Add (or replace) a subcommand: ``maxq NAME ...``."""
    SUBCOMMANDS[name] = Subcommand(help, add_arguments, run)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``maxq`` parser; only the ``selected`` subcommand's arguments are built (imported)."""
    import maxq

    parser = OneLineParser(prog="maxq", allow_abbrev=False,
                           description="MaxQ reproducibility kit: N:M sparse training of CNNs.")
    parser.add_argument("--version", action="version", version=f"maxq {maxq.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    parser.subcommand_parsers = {}
    for name, command in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, allow_abbrev=False)
        parser.subcommand_parsers[name] = p
        if name == selected:
            Subcommand.resolve(command.add_arguments)(p)
            p.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    selected = selected if selected in SUBCOMMANDS else None
    debug = os.environ.get("MAXQ_DEBUG", "") not in ("", "0")
    try:
        parser = build_parser(selected)
        if selected == "train":
            argv = split_glued_flags(argv, parser.subcommand_parsers["train"])
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:       # --help, --version, usage errors (already printed)
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help()
            return 2
        if selected == "train":
            args.explicit_options = explicit_options(parser.subcommand_parsers["train"],
                                                     argv[argv.index("train") + 1:])
        status = Subcommand.resolve(args._run)(args)  # noqa: SLF001 - set by build_parser
        return int(status or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ArithmeticError) as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1 if isinstance(exc, ArithmeticError) else 2


if __name__ == "__main__":
    sys.exit(main())
