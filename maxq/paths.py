"""The kit's one path policy: where runs and reports go, and where its notebooks and studies are.

**Runs and reports** (``maxq batch``, ``maxq report``, the notebooks, ``make lab``):

1. an explicit path (``--runs-root``, a notebook parameter) wins; else
2. ``$MAXQ_RUNS_ROOT`` / ``$MAXQ_REPORTS_ROOT``; else
3. ``runs`` / ``reports``.

A relative path resolves against the **base**: the checkout's root when ``maxq`` is imported
from a checkout (the folder holding ``maxq/`` has ``pyproject.toml`` and ``studies/``), whatever
the working directory (a notebook kernel starts in ``notebooks/``, a user may run ``maxq batch``
from anywhere); for an installed kit (``pip install .``, ``maxq`` in site-packages) it is the
current working directory, as with ``git`` (run ``maxq batch`` where the runs should go, or set
the variables). The roots returned are absolute.

**Notebooks and studies** are package data of ``maxq`` (``maxq/notebooks``, ``maxq/studies``;
in a checkout these are links to the top-level ``notebooks/`` and ``studies/`` the README
shows, so there is one copy), read through :mod:`importlib.resources`.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: the folder holding the ``maxq`` package: a checkout's root (with ``notebooks/``, ``runs/``,
#: ``reports/``), or ``site-packages`` for an installed kit
REPO_ROOT = Path(__file__).resolve().parent.parent
#: whether ``maxq`` runs from a checkout (else an installed kit): decided once, at import
IS_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "studies").is_dir()
#: the package-data folders of the kit (under ``maxq/``)
KIT_DIRS = ("notebooks", "studies")


def base() -> Path:
    """The folder relative paths resolve against: the checkout's root, or (installed kit)
    the current working directory."""
    return REPO_ROOT if IS_CHECKOUT else Path.cwd()


def in_repo(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute (``~`` expanded), else relative to :func:`base`."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else base() / path


def runs_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAXQ_RUNS_ROOT``, else ``runs``; relative ones against :func:`base`."""
    return in_repo(path or os.environ.get("MAXQ_RUNS_ROOT") or "runs")


def reports_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAXQ_REPORTS_ROOT``, else ``reports``; relative ones against
    :func:`base`."""
    return in_repo(path or os.environ.get("MAXQ_REPORTS_ROOT") or "reports")


def kit_dir(name: str) -> Path:
    """A package-data folder of the kit (``"notebooks"`` or ``"studies"``) as a real folder:
    papermill and the study loader need file paths. In a checkout, the top-level folder the
    link points to (``notebooks/``, ``studies/``)."""
    if name not in KIT_DIRS:
        raise ValueError(f"no kit folder {name!r} (there are: {', '.join(KIT_DIRS)})")
    folder = resources.files("maxq").joinpath(name)
    if not isinstance(folder, Path):
        raise RuntimeError(f"maxq is installed in an archive ({folder}); install it as a folder "
                           f"(pip install .) to run its notebooks")
    return folder.resolve()


def kit_file(name: str, file: str) -> Path:
    """One file of a kit folder, e.g. ``kit_file("notebooks", "row.ipynb")``."""
    return kit_dir(name) / file


def _inside_base(path: Path) -> str | None:
    """``path`` relative to :func:`base` (``"."`` for the base itself), or None outside it."""
    try:
        return path.resolve().relative_to(base().resolve()).as_posix() or "."
    except ValueError:
        return None


def base_relative(path: str | os.PathLike) -> str:
    """``path`` for a process that runs in :func:`base` (the report notebook): relative to it
    when inside, so what that process records names no machine's folders; else absolute."""
    path = Path(path).expanduser()
    inside = _inside_base(path)
    return inside if inside is not None else str(path.resolve())


def shown(path: str | os.PathLike) -> str:
    """``path`` as a report or message shows it: relative to :func:`base` when inside it
    (``runs/claims``), so committed reports hold no machine's absolute paths; else as given,
    the home folder written ``~``."""
    path = Path(path).expanduser()
    inside = _inside_base(path)
    if inside is not None:
        return inside
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + "/") \
        else text
