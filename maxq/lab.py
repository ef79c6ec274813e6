"""JupyterLab as ``make lab`` starts it (``jupyter/jupyter_server_config.py``): the notebook
templates of ``notebooks/`` stay as committed, whatever a user runs in them.

:func:`pre_save_hook` is the server's ``FileContentsManager.pre_save_hook``: before a template
is written (autosave or Ctrl+S) it drops the outputs, execution counts and widget state, and
keeps the language and kernel metadata the file on disk has (JupyterLab rewrites them from the
running kernel: another Python patch version would otherwise change the file), so ``git
status`` stays clean after using the explorer. Notebooks anywhere else (copies, the
executed ``reports/<study>/report.ipynb``, ``runs/<study>/<row>/row.ipynb``) are saved as they
are. To keep an executed explorer, save a copy outside ``notebooks/`` (File > Save As).
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

#: the folders (relative to the server's root, the repository) holding the tracked templates:
#: ``notebooks/`` and its package-data link ``maxq/notebooks`` (:mod:`maxq.paths`)
TEMPLATES = ("notebooks", "maxq/notebooks")
#: notebook metadata keys a run adds (widget state) that the templates never carry
_RUN_METADATA = ("widgets",)


def is_template(path: str) -> bool:
    """Whether the API path (relative to the server root) is a notebook template:
    ``notebooks/<name>.ipynb`` (or ``maxq/notebooks/<name>.ipynb``), directly in the folder."""
    parts = PurePosixPath(str(path).lstrip("/"))
    return parts.suffix == ".ipynb" and parts.parent in {PurePosixPath(t) for t in TEMPLATES}


def strip_outputs(nb: dict[str, Any]) -> dict[str, Any]:
    """The notebook (a JSON dict, changed in place and returned) without outputs, execution
    counts and the widget state a run stores in its metadata."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in ("execution", "scrolled", "collapsed"):
            meta.pop(key, None)
    meta = nb.get("metadata", {})
    for key in _RUN_METADATA:
        meta.pop(key, None)
    return nb


def has_outputs(nb: dict[str, Any]) -> bool:
    """Whether a notebook (JSON dict) holds anything a run leaves behind."""
    clean = strip_outputs(__import__("copy").deepcopy(nb))
    return clean != nb


#: notebook metadata the running kernel rewrites; a template keeps the values on disk
_KERNEL_METADATA = ("language_info", "kernelspec")


def pre_save_hook(model: dict[str, Any], path: str, contents_manager: Any = None,
                  **kwargs: Any) -> None:
    """Jupyter server pre-save hook: strip the run's traces from the templates only."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict) \
            or not is_template(path):
        return
    strip_outputs(model["content"])
    root = getattr(contents_manager, "root_dir", None)
    on_disk = Path(root) / str(path).lstrip("/") if root else None
    if on_disk is not None and on_disk.is_file():
        try:
            saved = json.loads(on_disk.read_text(encoding="utf-8")).get("metadata", {})
        except (OSError, ValueError):
            return
        meta = model["content"].setdefault("metadata", {})
        for key in _KERNEL_METADATA:
            if key in saved:
                meta[key] = saved[key]
