"""Studies as data: the TOML schema, its expansion into runs, filters, shards, and the status
table's location and reading. Used by the runner (:mod:`maxq.batch`), the executors and the
results (:mod:`maxq.results`), none of which owns a study's meaning. :func:`option_errors`
checks a study's training options against :class:`maxq.config.TrainConfig` before a batch
launches anything.

A **study** is a data file, ``studies/<name>.toml``::

    [study]
    description = "what this study is for"
    methods = ["SoftMaxQConv2DBN", "SoftSRSTEConv2dBN"]   # each row runs once per method ...
    seeds = [0, 1, 2]                                      # ... and per seed

    [defaults]          # training options shared by every row (maxq.config.TrainConfig fields)
    set = "FashionMNIST"
    epochs = 4

    [[rows]]            # one line of the results table
    id = "resnet50-2of4"            # optional; default "<arch>-<N>of<M>"
    arch = "resnet50"
    N = 2
    M = 4
    paper_top1 = 77.6               # every paper_* key is kept beside the row, for the report
    paper_top5 = 93.7
    # methods / seeds / arms = {...} / any training option: override the study's for this row

    [[claims]]          # optional: the paper's claims, checked by maxq.stats on seed pairs
    claim = "MaxQ beats SR-STE at 2:4"
    row_a = "resnet50-2of4"
    method_a = "SoftMaxQConv2DBN"
    row_b = "resnet50-2of4"
    method_b = "SoftSRSTEConv2dBN"
    # margin = 1.0     # "A within margin points of B" claims

A row × method × seed is one **run** (:class:`Row`), ``run_id`` ``<row id>-<method>-s<seed>``,
e.g. ``resnet50-2of4-SoftMaxQConv2DBN-s0``; its folder is ``<runs_root>/<study>/<run_id>/``.
"""
from __future__ import annotations

import csv
import difflib
import fnmatch
import math
import os
import re
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from maxq import paths
from maxq.errors import StudyError
from maxq.slurm_options import SlurmOptions

STATUS = "status.csv"
STATUS_COLUMNS = ("row", "state", "seconds", "error", "run_dir", "notebook",
                  "method", "seed", "attempts", "updated",
                  "executor", "job_id", "job_state")    # the last three: submitit executors
STATES = ("pending", "running", "done", "failed", "skipped", "requeued", "interrupted",
          "corrupt")
DEFAULT_METHODS = ("SoftMaxQConv2DBN",)
DEFAULT_SEEDS = (0,)
#: training options the runner sets itself; a study may not set them
RUNNER_KEYS = ("study", "row", "seed", "conv_bn_type", "save_dir", "overwrite", "resume")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STUDY_KEYS = {"study", "defaults", "rows", "claims", "slurm"}
#: keys of a [[claims]] entry: claim text, the paper's statement, run A vs run B (table-row id
#: and method each), and for "margin" claims the margin in points (A within ``margin`` of B)
_CLAIM_KEYS = {"claim", "paper", "row_a", "method_a", "row_b", "method_b", "margin"}
_STUDY_META_KEYS = {"description", "methods", "seeds", "notebook", "method_labels", "focus",
                    "scale_note", "replicates", "share"}
_ROW_META_KEYS = {"id", "methods", "method", "seeds", "arms", "note"}


# ----------------------------------------------------------------------------- locations
#: the roots of runs and reports: one policy, :mod:`maxq.paths` (absolute paths: the checkout's
#: ``runs/`` and ``reports/`` whatever the working directory, ``$MAXQ_RUNS_ROOT`` /
#: ``$MAXQ_REPORTS_ROOT`` override)
runs_root = paths.runs_root
reports_root = paths.reports_root


def studies_dirs() -> list[Path]:
    """Where study names are looked up: ``$MAXQ_STUDIES``, ``./studies``, the kit's studies
    (package data, :func:`maxq.paths.kit_dir`)."""
    dirs = [Path(p) for p in os.environ.get("MAXQ_STUDIES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "studies", paths.kit_dir("studies")]
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def available_studies() -> list[str]:
    names: set[str] = set()
    for d in studies_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


# ----------------------------------------------------------------------------- studies
@dataclass
class Study:
    name: str
    path: Path
    description: str
    defaults: dict[str, Any]
    rows: list[dict[str, Any]]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    notebook: str | None = None
    method_labels: dict[str, str] = field(default_factory=dict)
    focus: str | None = None
    scale_note: str = ""
    claims: list[dict[str, Any]] = field(default_factory=list)
    #: the study whose claims this one re-tests on new seeds (``[study] replicates``)
    replicates: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)   # [slurm]: see maxq.executors
    #: [study].share: studies whose runs this one reuses when the full option set is equal
    share: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """One run of a study: a table row × method × seed."""

    study: str
    id: str                      # run id, the folder name under <runs_root>/<study>/
    table_row: str               # id of the table row (the paper's line)
    method: str                  # --conv-bn-type
    seed: int
    index: int                   # position in the study's full run list
    params: dict[str, Any]       # notebook parameters (training options), runner keys excluded
    paper: dict[str, Any]        # paper_* values of the table row
    arms: dict[str, str]         # ablation labels {group: arm}
    #: a run shared with another study ([study].share): that study's name and run id; its run
    #: directory is that study's, so it is trained once ("" : the run is this study's own)
    home: str = ""
    home_id: str = ""

    def run_dir(self, root: str | os.PathLike | None = None) -> Path:
        if self.home:
            return runs_root(root) / self.home / self.home_id
        return runs_root(root) / self.study / self.id

    def parameters(self, root: str | os.PathLike | None = None, **extra: Any) -> dict[str, Any]:
        """Everything injected into ``row.ipynb`` (a shared run is recorded as its home
        study's run)."""
        out = dict(self.params)
        out.update(study=self.home or self.study, row=self.home_id or self.id,
                   conv_bn_type=self.method, seed=self.seed, save_dir=str(self.run_dir(root)))
        out.update(extra)
        return out


def find_study(study: str | os.PathLike) -> Path:
    """Path of a study given by name (``cpu``) or by file path (``studies/cpu.toml``)."""
    text = str(study)
    candidate = Path(text)
    if candidate.suffix == ".toml" or os.sep in text or "/" in text:
        if candidate.is_file():
            return candidate
        raise StudyError(f"study file {text!r} does not exist")
    if not _SAFE_ID.fullmatch(text):
        raise StudyError(f"study name {text!r} is not a valid name (letters, digits, . _ -)")
    for d in studies_dirs():
        if (d / f"{text}.toml").is_file():
            return d / f"{text}.toml"
    known = available_studies()
    hint = difflib.get_close_matches(text, known, n=1)
    raise StudyError(f"unknown study {text!r}; known studies: {', '.join(known) or 'none'}"
                     + (f" (did you mean {hint[0]!r}?)" if hint else "")
                     + "; a path to a .toml study file works too")


def load_study(study: "str | os.PathLike | Study") -> Study:
    """Read and check a study file (by name or path)."""
    if isinstance(study, Study):
        return study
    path = find_study(study)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study file {path} is not valid TOML: {exc}") from None
    name = path.stem
    if not _SAFE_ID.fullmatch(name):          # the name is a folder of the runs and reports roots
        raise StudyError(f"study file {path}: its name {name!r} is not a valid study name "
                         f"(letters, digits, . _ -, starting with a letter or digit); runs and "
                         f"reports go to <root>/<name>/: rename the file")
    where = f"study {name!r} ({path})"
    unknown = set(data) - _STUDY_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown top-level tables {sorted(unknown)}; "
                         f"allowed: [study], [defaults], [[rows]], [[claims]], [slurm]")
    meta = data.get("study", {})
    unknown = set(meta) - _STUDY_META_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown keys in [study]: {sorted(unknown)}; "
                         f"allowed: {sorted(_STUDY_META_KEYS)}")
    defaults = dict(data.get("defaults", {}))
    _check_runner_keys(defaults, f"{where} [defaults]")
    rows = data.get("rows", [])
    if not isinstance(rows, list) or not rows:
        raise StudyError(f"{where} has no [[rows]]")
    methods = _as_tuple(meta.get("methods", DEFAULT_METHODS), str, f"{where} [study].methods")
    seeds = _as_tuple(meta.get("seeds", DEFAULT_SEEDS), int, f"{where} [study].seeds")
    seen: set[str] = set()
    checked = []
    for i, row in enumerate(rows):
        row = dict(row)
        label = f"{where} row {i + 1}"
        if "id" not in row:
            if not {"arch", "N", "M"} <= (set(row) | set(defaults)):
                raise StudyError(f"{label}: needs an 'id' or arch, N and M")
            merged = {**defaults, **row}
            row["id"] = f"{merged['arch']}-{merged['N']}of{merged['M']}"
        row["id"] = str(row["id"])
        if not _SAFE_ID.fullmatch(row["id"]):
            raise StudyError(f"{label}: id {row['id']!r} is not filesystem-safe "
                             f"(letters, digits, . _ - only)")
        if row["id"] in seen:
            raise StudyError(f"{label}: duplicate row id {row['id']!r}")
        seen.add(row["id"])
        _check_runner_keys(row, f"{label} ({row['id']})")
        if "method" in row and "methods" in row:
            raise StudyError(f"{label}: give 'method' or 'methods', not both")
        if "arms" in row and not isinstance(row["arms"], dict):
            raise StudyError(f"{label}: 'arms' must be a table {{group = \"arm\"}}")
        checked.append(row)
    claims = [_check_claim(c, i, where, seen) for i, c in enumerate(data.get("claims", []))]
    replicates = meta.get("replicates")
    if replicates is not None and not (isinstance(replicates, str) and _SAFE_ID.fullmatch(replicates)):
        raise StudyError(f"{where}: [study].replicates must be a study name; got {replicates!r}")
    share = _as_tuple(meta.get("share", []) or [""], str, f"{where} [study].share")
    share = tuple(s for s in share if s)
    for other in share:
        if other == name:
            raise StudyError(f"{where}: [study].share names the study itself")
        find_study(other)                     # an unknown name fails here, one line
    slurm = data.get("slurm", {})
    if slurm:
        SlurmOptions.from_table(slurm, f"{where} [slurm]")
    return Study(name=name, path=path, description=str(meta.get("description", "")),
                 defaults=defaults, rows=checked, methods=methods, seeds=seeds,
                 notebook=meta.get("notebook"),
                 method_labels=dict(meta.get("method_labels", {})),
                 focus=meta.get("focus"), scale_note=str(meta.get("scale_note", "")),
                 claims=claims, replicates=replicates, slurm=dict(slurm), share=share)


def _check_claim(claim: Any, i: int, where: str, row_ids: set[str]) -> dict[str, Any]:
    label = f"{where} claim {i + 1}"
    if not isinstance(claim, dict):
        raise StudyError(f"{label}: must be a table")
    unknown = set(claim) - _CLAIM_KEYS
    missing = {"claim", "row_a", "method_a", "row_b", "method_b"} - set(claim)
    if unknown or missing:
        raise StudyError(f"{label}: unknown keys {sorted(unknown)}, missing {sorted(missing)}; "
                         f"allowed: {sorted(_CLAIM_KEYS)}")
    for key in ("row_a", "row_b"):
        if claim[key] not in row_ids:
            raise StudyError(f"{label}: {key} {claim[key]!r} is not a row id of the study")
    if "margin" in claim and not (isinstance(claim["margin"], (int, float))
                                  and not isinstance(claim["margin"], bool)
                                  and claim["margin"] >= 0):
        raise StudyError(f"{label}: margin must be a number >= 0 (points)")
    return dict(claim)


def _check_runner_keys(table: dict, where: str) -> None:
    bad = sorted(set(table) & set(RUNNER_KEYS))
    if bad:
        raise StudyError(f"{where}: {bad} are set by the batch runner "
                         f"(use 'methods'/'seeds' for conv_bn_type/seed)")


def _as_tuple(value: Any, kind: type, where: str) -> tuple:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise StudyError(f"{where} must be a non-empty list of {kind.__name__}; got {value!r}")
    return tuple(values)


def option_errors(study: "str | os.PathLike | Study",
                  options: dict[str, Any] | None = None) -> list[str]:
    """Every training option of the study (``[defaults]``, each row, its methods and seeds)
    and of ``options`` (``--option``) checked against the option's definition in
    :class:`maxq.config.TrainConfig` (name, type, choices, range): one line per problem, each
    naming the study file and the row ([] : none)."""
    from maxq import config                  # the registries behind the choices import torch

    study = load_study(study)
    tables = [(f"{study.path} [defaults]", dict(study.defaults)),
              (f"{study.path} [study]", {"conv_bn_type": list(study.methods),
                                         "seed": list(study.seeds)})]
    for row in study.rows:
        own = _row_options(row)
        if "method" in row or "methods" in row:
            own["conv_bn_type"] = row.get("method", row.get("methods"))
        if "seeds" in row:
            own["seed"] = row["seeds"]
        tables.append((f"{study.path} row {row['id']!r}", own))
    tables.append(("--option", dict(options or {})))
    errors = []
    for where, table in tables:
        for key, value in table.items():
            values = value if key in ("conv_bn_type", "seed") and isinstance(value, list) \
                else [value]
            errors += [f"{where}: {problem}" for v in values
                       for problem in config.option_problems({key: v})]
    return errors


def _row_options(row: dict[str, Any]) -> dict[str, Any]:
    """A ``[[rows]]`` table's training options: all but its runner keys (id, method(s),
    seeds, arms, ...) and its ``paper_*`` figures."""
    return {k: v for k, v in row.items() if k not in _ROW_META_KEYS and not k.startswith("paper_")}


def run_id(table_row: str, method: str, seed: int) -> str:
    return f"{table_row}-{method}-s{seed}"


def expand(study: "str | os.PathLike | Study",
           options: dict[str, Any] | None = None, *, share: bool = True) -> list[Row]:
    """Every run of a study, in study order (rows, then methods, then seeds). With
    ``[study].share = ["other"]`` a run whose full option set equals a run of study ``other``
    is that run (:attr:`Row.home`): same run directory, trained once (``share=False``: not)."""
    study = load_study(study)
    options = dict(options or {})
    _check_runner_keys(options, "--option")
    out: list[Row] = []
    for row in study.rows:
        if "method" in row:
            methods = _as_tuple(row["method"], str, f"row {row['id']} method")
        else:
            methods = _as_tuple(row.get("methods", study.methods), str, f"row {row['id']} methods")
        seeds = _as_tuple(row.get("seeds", study.seeds), int, f"row {row['id']} seeds")
        params = dict(study.defaults)
        params.update(_row_options(row))
        params.update(options)
        paper = {k: v for k, v in row.items() if k.startswith("paper_")}
        arms = {str(k): str(v) for k, v in row.get("arms", {}).items()}
        for method in methods:
            for seed in seeds:
                rid = run_id(row["id"], method, seed)
                if not _SAFE_ID.fullmatch(rid):
                    raise StudyError(f"run id {rid!r} is not filesystem-safe")
                out.append(Row(study=study.name, id=rid, table_row=row["id"], method=method,
                               seed=seed, index=len(out), params=params, paper=paper, arms=arms))
    if study.share and share:
        out = [_shared(r, study.share, options) for r in out]
    return out


def _full_options(params: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    """Every training option of a run (TrainConfig's defaults filled in), runner paths aside."""
    from maxq.config import TrainConfig      # config is heavier; only sharing needs it

    options = TrainConfig().to_dict()
    options.update(params)
    options.update(conv_bn_type=method, seed=seed)
    for key in ("study", "row", "save_dir", "overwrite", "resume"):
        options.pop(key, None)
    return options


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def same_options(a: Row, b: Row) -> list[str]:
    """The training options in which two runs differ, option by option ([] : the same run)."""
    oa, ob = _full_options(a.params, a.method, a.seed), _full_options(b.params, b.method, b.seed)
    return [k for k in sorted(set(oa) | set(ob))
            if k not in oa or k not in ob or not _same_value(oa[k], ob[k])]


def _shared(run: Row, others: Sequence[str], options: dict[str, Any]) -> Row:
    """``run`` pointed at the run directory of the first study in ``others`` that has a run with
    exactly its options (compared option by option, :func:`same_options`); else unchanged."""
    import dataclasses

    for other in others:
        for candidate in expand(other, options, share=False):
            if candidate.method == run.method and candidate.seed == run.seed \
                    and not same_options(run, candidate):
                return dataclasses.replace(run, home=candidate.study, home_id=candidate.id)
    return run


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (1 ≤ i ≤ n) → ``(i, n)``."""
    if shard is None or isinstance(shard, tuple):
        return shard
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not match:
        raise StudyError(f"--shard must look like i/n (e.g. 1/3); got {shard!r}")
    i, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= i <= n:
        raise StudyError(f"--shard {shard}: shards are numbered 1..n (n >= 1); got i={i}, n={n}")
    return i, n


def filter_rows(runs: Sequence[Row], rows: str | Iterable[str] | None) -> list[Row]:
    """Keep the runs matching a filter: comma-separated patterns, each a run id, a table-row id,
    a run-id prefix, or a glob (``resnet50*``, ``*SRSTE*``). A pattern that matches nothing is an
    error (so a typo never silently runs nothing)."""
    if rows is None:
        return list(runs)
    patterns = [p.strip() for p in (rows.split(",") if isinstance(rows, str) else rows)]
    patterns = [p for p in patterns if p]
    if not patterns:
        raise StudyError("--rows: empty filter")
    keep: set[str] = set()
    for pattern in patterns:
        hits = {r.id for r in runs if _matches(r, pattern)}
        if not hits:
            ids = sorted({r.table_row for r in runs})
            hint = difflib.get_close_matches(pattern, ids + [r.id for r in runs], n=1)
            raise StudyError(f"--rows: {pattern!r} matches no run of study "
                             f"{runs[0].study if runs else '?'}; rows: {', '.join(ids)}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        keep |= hits
    return [r for r in runs if r.id in keep]


def _matches(row: Row, pattern: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(row.id, pattern) or fnmatch.fnmatchcase(row.table_row, pattern)
    return row.id == pattern or row.table_row == pattern or row.id.startswith(pattern + "-")


def resolve(study: "str | os.PathLike | Study", rows: str | Iterable[str] | None = None,
            shard: str | tuple[int, int] | None = None,
            options: dict[str, Any] | None = None) -> list[Row]:
    """The runs to execute: the study expanded, filtered by ``rows``, then this shard's share
    (round robin over the filtered list, so shards are disjoint and together complete)."""
    runs = filter_rows(expand(study, options), rows)
    spec = parse_shard(shard)
    if spec:
        i, n = spec
        runs = runs[i - 1::n]
    return runs



# ----------------------------------------------------------------------------- status table (read)
def status_path(study: str, root: str | os.PathLike | None = None) -> Path:
    return runs_root(root) / study / STATUS


def read_status(study: str, root: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """``status.csv`` as ``{row: {column: value}}`` (empty when there is none yet)."""
    return read_status_file(status_path(study, root))


def read_status_file(path: Path) -> dict[str, dict[str, str]]:
    """The lines of a ``status.csv``, each checked (row id, state, numbers); a garbled line or
    file is left out with a warning naming the file (the table is bookkeeping: the run
    directories are the record, and the next update rewrites it)."""
    if not path.exists():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            lines = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        warnings.warn(f"{path} is garbled ({exc}); its lines are ignored", stacklevel=2)
        return {}
    out = {}
    for number, line in enumerate(lines, 2):
        problem = _status_line_problem(line)
        if problem:
            warnings.warn(f"{path} line {number}: {problem}; line ignored", stacklevel=2)
            continue
        out[line["row"]] = {k: v or "" for k, v in line.items()}
    return out


def _status_line_problem(line: dict) -> str:
    if None in line or None in line.values():
        return "wrong number of fields"
    if not _SAFE_ID.fullmatch(line.get("row") or ""):
        return f"row {line.get('row')!r} is not a run id"
    if line.get("state", "") not in ("", *STATES):
        return f"state {line.get('state')!r} is not one of {', '.join(STATES)}"
    for key, kind in (("attempts", int), ("seconds", float)):
        value = line.get(key) or ""
        try:
            if value and not (kind(value) >= 0 and math.isfinite(float(value))):
                return f"{key} {value!r} is negative or not finite"
        except ValueError:
            return f"{key} {value!r} is not a number"
    return ""



def report_dir(study: str, root: str | os.PathLike | None = None) -> Path:
    return reports_root(root) / study
