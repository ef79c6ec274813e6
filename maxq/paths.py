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
