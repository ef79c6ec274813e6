"""Where a study's report goes and what guards it: the report folder, tables written as CSV and
Markdown (atomically), the refusal to replace a committed report with less
(:class:`ReportRefused`), the batch runner's status table, and the report's lines about the runs
found (where, how many, which are corrupt, which machines made them)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from maxq import paths, provenance, records, studies
from maxq.result_frames import Results, load

def report_dir(results_or_study: Any, reports_root: str | os.PathLike | None = None) -> Path:
    study = results_or_study.study if isinstance(results_or_study, Results) else results_or_study
    return studies.report_dir(str(study), reports_root)


def save_table(table: pd.DataFrame, path_stem: str | os.PathLike,
               markdown: str | None = None) -> list[Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` atomically (Markdown: ``markdown`` or a plain
    rendering of the table)."""
    stem = Path(path_stem)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    frame = table.copy()
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, dict)).any():
            frame[column] = frame[column].map(lambda v: "; ".join(f"{k}={x}" for k, x in v.items())
                                              if isinstance(v, dict) else v)
    records.atomic_write_text(csv_path, frame.to_csv(index=False))
    records.atomic_write_text(md_path, markdown if markdown is not None else _plain_md(frame))
    return [csv_path, md_path]


def _plain_md(frame: pd.DataFrame) -> str:
    """A table without its own Markdown writer: every cell as :func:`_cell` writes it."""
    if not len(frame):
        return "_empty_\n"
    return frame.map(_cell).to_markdown(index=False, disable_numparse=True) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------- report helpers
def status_frame(study: Any, runs_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """``<runs_root>/<study>/status.csv`` of the batch runner as a DataFrame."""
    name = results_name(study)
    lines = studies.read_status(name, runs_root)
    return pd.DataFrame(list(lines.values()), columns=list(studies.STATUS_COLUMNS))


def results_name(study: Any) -> str:
    if isinstance(study, Results):
        return str(study.study)
    try:
        return studies.load_study(study).name
    except studies.StudyError:
        return str(study)

def runs_note(results: Results, runs_root: str | os.PathLike | None = None) -> str:
    """One Markdown line for the report: how many runs were found where, or, plainly, that the
    study has none yet and the command that makes them."""
    folder = paths.shown(studies.runs_root(runs_root) / str(results.study))
    if not len(results.runs):
        return (f"**No runs of study `{results.study}` yet** (nothing in `{folder}`): the tables "
                f"and figures below are empty. Make the runs with `maxq batch {results.study}`.")
    done = int(results.runs["finished"].sum())
    return (f"{len(results.runs)} runs in `{folder}`, {done} finished.\n\n"
            + corrupt_markdown(results) + machines_markdown(results.runs) + "\n"
            + commits_markdown(results.runs) + "\n" + rendered_markdown())


def rendered_markdown(state: dict[str, Any] | None = None) -> str:
    """Which code rendered the report: the kit's commit (``state``: a
    :func:`maxq.provenance.git_state`, default this kit's), flagged when the kit's tracked files
    had uncommitted changes."""
    state = provenance.git_state() if state is None else state
    if not state.get("commit"):
        import maxq

        return f"Rendered by maxq {maxq.__version__} outside a git checkout (no commit known).\n"
    changed = " with uncommitted changes to the kit" if state.get("dirty") else ""
    return f"Rendered by the kit at commit `{state['commit'][:7]}`{changed}.\n"


def corrupt_markdown(results: Results) -> str:
    """One line per run left out because a record is corrupt ('' when none)."""
    bad = results.corrupt
    if bad is None or not len(bad):
        return ""
    lines = "".join(f"- `{r.run}`: `{Path(r.file).name}`: {r.problem}\n" for r in bad.itertuples())
    return (f"**{len(bad)} run(s) left out: a record is corrupt** (fix or remove the file, or "
            f"re-run with `maxq batch {results.study} --force`):\n\n{lines}\n")

def _counts(runs: pd.DataFrame, column: str) -> dict[str, int]:
    if not len(runs) or column not in runs.columns:
        return {}
    return {str(k): int(v) for k, v in runs[column].value_counts(sort=False).items()}


def machines(runs: pd.DataFrame) -> dict[str, int]:
    """Machine label (see :func:`maxq.provenance.machine_label`) → number of runs made there."""
    return _counts(runs, "machine")


def commits_markdown(runs: pd.DataFrame) -> str:
    """Which commits of the kit trained the runs (:func:`maxq.provenance.commit_label`), with
    how many runs each: one Markdown line, '' without runs."""
    def shown(label: str) -> str:
        if label == "commit not recorded":
            return label
        commit, _, changed = label.partition(" ")
        return f"`{commit}` {changed}".rstrip()

    found = _counts(runs, "commit")
    if not found:
        return ""
    return "Trained by the kit at: " + "; ".join(
        f"{shown(label)} ({n} run{'s' if n != 1 else ''})" for label, n in found.items()) + ".\n"


def machines_markdown(runs: pd.DataFrame, rerun: pd.DataFrame | None = None) -> str:
    """Which machines made the runs (and, given a re-run, the re-run's): Markdown lines."""
    def listing(frame: pd.DataFrame) -> str:
        found = machines(frame)
        return "; ".join(f"{label} ({n} run{'s' if n != 1 else ''})"
                         for label, n in found.items()) or "unknown"

    if rerun is None:
        return f"Made on: {listing(runs)}.\n"
    return (f"Machines compared: reference runs on {listing(runs)}; re-run on "
            f"{listing(rerun)}.\n\n")

# ----------------------------------------------------------------------------- the report guard
class ReportRefused(studies.StudyError):
    """A report would replace a committed one with less (no finished run, or fewer runs)."""


def committed_runs(report_folder: str | os.PathLike) -> int | None:
    """Finished runs of the report in ``report_folder`` (its ``runs.csv``); ``None``: no report
    there, or a ``runs.csv`` that cannot be read (then nothing is compared)."""
    path = Path(report_folder) / "runs.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError):
        return None
    if "finished" not in frame.columns:
        return len(frame)
    return int(frame["finished"].astype(str).str.lower().isin(("true", "1")).sum())


def check_report(res: Results, reports_root: str | os.PathLike | None = None, *,
                 force: bool = False, runs_root: str | os.PathLike | None = None) -> None:
    """Refuse (:class:`ReportRefused`, one line) a report of ``res`` that has no finished run,
    or (without ``force``) fewer finished runs than the report already in ``reports_root``."""
    target = report_dir(res, reports_root)
    done = int(res.runs["finished"].sum()) if len(res.runs) else 0
    if done == 0:
        folder = studies.runs_root(runs_root) / str(res.study)
        raise ReportRefused(f"study {res.study!r} has no finished runs in {folder}: no report "
                            f"rendered, {target} left as it is (make the runs with "
                            f"`maxq batch {res.study}`)")
    before = committed_runs(target)
    if before is not None and done < before and not force:
        raise ReportRefused(f"study {res.study!r}: {done} finished run(s), fewer than the "
                            f"{before} of the report in {target} (its runs.csv); nothing was "
                            f"changed: use `maxq report {res.study} --force` to replace it")


def open_report(study: Any, runs_root: str | os.PathLike | None = None,
                reports_root: str | os.PathLike | None = None, *,
                force: bool = False, folder: str | os.PathLike | None = None
                ) -> tuple[Results, Path]:
    """What ``report.ipynb`` starts with: the study's results and its report folder, after
    :func:`check_report` (so the notebook run alone, e.g. by papermill, refuses the same reports
    ``maxq report`` refuses, before it writes anything). ``folder``: write there instead of
    ``<reports_root>/<study>`` (``maxq report``'s temporary folder; the check still compares
    with the report in ``reports_root``)."""
    res = load(study, runs_root)
    check_report(res, reports_root, force=force, runs_root=runs_root)
    out = Path(folder) if folder is not None else report_dir(res, reports_root)
    out.mkdir(parents=True, exist_ok=True)
    return res, out
