"""The resources of one run's SLURM job, defined once: :class:`SlurmOptions`.

The same dataclass is the ``[slurm]`` table of a study file (:meth:`SlurmOptions.from_table`,
checked when the study is loaded), the ``--slurm-*`` flags of ``maxq batch``
(:func:`add_arguments` builds them from the fields, :func:`flag_values` reads them back) and
what :mod:`maxq.jobs` hands to submitit. A new option is one field here.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from maxq.errors import StudyError

#: upper bounds of the [slurm] options (time in minutes: 365 days)
SLURM_MAX = {"gpus_per_run": 4096, "nodes": 1024, "cpus_per_task": 1024, "time": 365 * 1440}


def _option(default: Any, help: str, metavar: str, kind: type = str) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help, "metavar": metavar, "type": kind})


@dataclass
class SlurmOptions:
    """Resources of one run's job. ``gpus_per_run`` GPUs (one task each) over ``nodes`` nodes;
    ``time`` is the job's limit (minutes, ``HH:MM:SS`` or ``D-HH:MM:SS``): when it is reached
    the job is requeued and the run resumes from its checkpoint. ``partition``, ``account``,
    ``qos`` and ``constraint`` are passed to ``sbatch`` as given."""

    partition: str | None = _option(None, "", "NAME")
    gpus_per_run: int = _option(1, "GPUs per run, one task (process) each (default 1)", "K", int)
    nodes: int = _option(1, "nodes per run; the GPUs are split evenly (default 1)", "K", int)
    time: str | int | None = _option(
        None, "time limit per job (minutes, HH:MM:SS or D-HH:MM:SS; default 24 h); a job at its "
              "limit or preempted is requeued and resumes", "LIMIT")
    account: str | None = _option(None, "", "NAME")
    qos: str | None = _option(None, "", "NAME")
    constraint: str | None = _option(None, "", "EXPR")
    cpus_per_task: int | None = _option(None, "CPU cores per task (per GPU; default 10)", "K", int)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str = "[slurm]") -> "SlurmOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise StudyError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**table).check(where)

    def merged(self, **overrides: Any) -> "SlurmOptions":
        """A copy with the ``overrides`` that are not None (command-line flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).check(
            "--slurm-*")

    def check(self, where: str) -> "SlurmOptions":
        for name in ("gpus_per_run", "nodes", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise StudyError(f"{where}: {name} must be an integer >= 1; got {value!r}")
            if value is not None and value > SLURM_MAX[name]:
                raise StudyError(f"{where}: {name} must be <= {SLURM_MAX[name]}; got {value!r}")
        if self.gpus_per_run % self.nodes:
            raise StudyError(f"{where}: gpus_per_run ({self.gpus_per_run}) must be a "
                             f"multiple of nodes ({self.nodes}): the same GPUs per node")
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise StudyError(f"{where}: {name} must be a string; got {value!r}")
        if self.time is not None and minutes(self.time, where) > SLURM_MAX["time"]:
            raise StudyError(f"{where}: time limit {self.time!r} is over "
                             f"{SLURM_MAX['time'] // 1440} days")
        return self

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_run // self.nodes


def minutes(value: str | int, where: str = "--slurm-time") -> int:
    """A SLURM time limit in minutes: ``90``, ``"90"``, ``"MM:SS"``, ``"HH:MM:SS"``,
    ``"D-HH"``, ``"D-HH:MM"`` or ``"D-HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match or isinstance(value, bool):
        raise StudyError(f"{where}: time limit {value!r} is not minutes, HH:MM:SS or "
                         f"D-HH:MM:SS")
    days, a, b, c = match.groups()
    a, b, c = int(a), int(b or 0), int(c or 0)
    if days is not None:                       # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + a * 3600 + b * 60 + c
    elif match.group(4) is not None:           # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif match.group(3) is not None:           # MM:SS
        seconds = a * 60 + b
    else:                                      # MM
        seconds = a * 60
    if seconds <= 0:
        raise StudyError(f"{where}: time limit {value!r} must be > 0")
    return -(-seconds // 60)


# ----------------------------------------------------------------------------- command line
def flag(name: str) -> str:
    """The command-line flag of a field: ``gpus_per_run`` -> ``--slurm-gpus-per-run``."""
    return "--slurm-" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--slurm-<field>`` flag per field of :class:`SlurmOptions` (default None: the
    study's ``[slurm]`` table, then the field's default)."""
    group = parser.add_argument_group(
        "SLURM (--executor slurm; also a [slurm] table of the study file, which these override)")
    for f in fields(SlurmOptions):
        group.add_argument(flag(f.name), dest=f"slurm_{f.name}", default=None,
                           type=f.metadata["type"], metavar=f.metadata["metavar"],
                           help=f.metadata["help"] or None)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--slurm-*`` values of parsed arguments, by field name (None: not given)."""
    return {f.name: getattr(args, f"slurm_{f.name}", None) for f in fields(SlurmOptions)}


def options_from(study_table: dict[str, Any] | None, **flags: Any) -> SlurmOptions:
    """The study's ``[slurm]`` table, overridden by the ``--slurm-*`` flags that were given."""
    return SlurmOptions.from_table(dict(study_table or {})).merged(**flags)


def describe(options: SlurmOptions) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(options).items() if v is not None)
