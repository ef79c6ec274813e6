"""Where the runs and reports of the repository are, for code that does not start at its root.

The notebooks' kernels start in ``notebooks/``; a relative ``runs`` there is not the
repository's ``runs/``. These functions resolve relative paths against the repository root.
"""
from __future__ import annotations

import os
from pathlib import Path

#: the repository (the folder holding ``maxq/``, ``notebooks/``, ``runs/``, ``reports/``)
REPO_ROOT = Path(__file__).resolve().parent.parent


def in_repo(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute (``~`` expanded), else relative to the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def runs_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAXQ_RUNS_ROOT``, else ``runs``; relative ones against the repository."""
    return in_repo(path or os.environ.get("MAXQ_RUNS_ROOT") or "runs")


def reports_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAXQ_REPORTS_ROOT``, else ``reports``; relative ones against the
    repository."""
    return in_repo(path or os.environ.get("MAXQ_REPORTS_ROOT") or "reports")


def shown(path: str | os.PathLike) -> str:
    """``path`` as a report or message shows it: relative to the repository root when inside it
    (``runs/claims``), so committed reports hold no machine's absolute paths; else as given,
    the home folder written ``~``."""
    path = Path(path).expanduser()
    try:
        return path.resolve().relative_to(REPO_ROOT.resolve()).as_posix() or "."
    except ValueError:
        home = str(Path.home())
        text = str(path)
        return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + "/") \
            else text
