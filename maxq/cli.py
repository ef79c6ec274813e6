"""The ``maxq`` command line (also ``python -m maxq``; under ``torchrun ... -m maxq train``).

``maxq train DATA --set ImageNet -a resnet50 --N 2 --M 4 --conv-bn-type SoftMaxQConv2DBN ...``
takes every flag of the seed's ``pruning_train.py`` with the same name, default and meaning
(boolean seed flags take a value: ``--no-bn-decay True``, ``--nesterov False``), plus the kit's
own (subsets, device, AMP, snapshots, ...). ``--evaluate --pretrained PATH`` is the seed's test
command.

Subcommands live in :data:`SUBCOMMANDS` (name -> :class:`Subcommand`): each names the function
that adds its arguments and the one that runs it. The ``train`` flags are generated from
:class:`maxq.config.TrainConfig` (one place for names, aliases, defaults and help). The modules
that import torch (:mod:`maxq.train`, :mod:`maxq.export`) are imported by the functions of their
subcommands, so that ``maxq batch`` (``--status``, ``--dry-run``, its papermill runner) and
``maxq report`` start in a fraction of a second; everything else is imported here.

Errors the user can fix (``ValueError``, ``OSError``: bad flags, missing data, refused run
directory) print ONE line ``error: ...`` to stderr and exit with status 2; set ``MAXQ_DEBUG=1`` for
the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import maxq
from maxq import batch, config, records
from maxq.config import TrainConfig


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
    """``add_arguments(parser)`` and ``run(args) -> exit status``."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


# ============================================================================ maxq train
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of the seed's README (same names and defaults) plus the kit's own: generated
    from :class:`maxq.config.TrainConfig`'s field metadata."""
    parser.formatter_class = _HelpFormatter
    config.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`maxq.config.TrainConfig` of parsed ``maxq train`` arguments."""
    return TrainConfig.from_args(args)


def run_train(args: argparse.Namespace) -> int:
    from maxq.train import evaluate, train      # torch: see the module docstring

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


# ============================================================================ maxq export
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from maxq import export                     # torch: see the module docstring

    export.add_arguments(parser)


def run_export(args: argparse.Namespace) -> int:
    from maxq import export

    return export.run(args)


# ============================================================================ maxq import-official
def add_import_official_arguments(parser: argparse.ArgumentParser) -> None:
    from maxq import official                   # torch: see the module docstring

    official.add_import_arguments(parser)


def run_import_official(args: argparse.Namespace) -> int:
    from maxq import official

    return official.run_import(args)


# ============================================================================ the registry
SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("train one run, or evaluate a checkpoint (the seed's pruning_train.py)",
                        add_train_arguments, run_train),
    "batch": Subcommand("run a study: its rows as papermill notebooks, then the report",
                        batch.add_batch_arguments, batch.run_batch_command),
    "report": Subcommand("render a study's report from its run directories",
                         batch.add_report_arguments, batch.run_report_command),
    "export": Subcommand("fold masks and export a run (torchvision, ONNX, 2:4 kernels, INT8)",
                         add_export_arguments, run_export),
    "import-official": Subcommand("import the authors' released checkpoint (and training log) "
                                  "as a kit run directory", add_import_official_arguments,
                                  run_import_official),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``maxq`` parser; only the ``selected`` subcommand's arguments are built."""
    parser = OneLineParser(prog="maxq", allow_abbrev=False,
                           description="MaxQ reproducibility kit: N:M sparse training of CNNs.")
    parser.add_argument("--version", action="version", version=f"maxq {maxq.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    parser.subcommand_parsers = {}
    for name, command in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, allow_abbrev=False)
        parser.subcommand_parsers[name] = p
        if name == selected:
            command.add_arguments(p)
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
        status = args._run(args)  # noqa: SLF001 - set by build_parser
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
