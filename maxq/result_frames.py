"""Run directories -> the :class:`Results` of a study: three tidy pandas DataFrames.

Everything is read through :mod:`maxq.records` (``config.json``, ``metrics.jsonl``,
``layers.jsonl``, ``result.json``, mask snapshots); no text log is parsed.

``load(study)`` returns a :class:`Results` with three DataFrames:

``runs``    one line per run directory: study, run, row, arch, N, M, method, method_label, seed,
            finished, best_top1, best_top5, best_epoch, last_top1, last_top5, epochs,
            wall_seconds, the paper_* values of the study row, the scale of the run (set,
            train_subset, val_subset, image_size, batch_size, increase_start, increase_end,
            prune_schedule, ...), arms (ablation labels), run_dir
``epochs``  one line per run and finished epoch (the keys of ``metrics.jsonl``)
``layers``  one line per run, epoch and sparse layer (nm_share, flipped, hist_counts)

The tables, figures' selections and report files built from them are the modules that
:mod:`maxq.results` gathers; this one only loads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from maxq import paths, provenance, records, studies
from maxq.methods import METHODS
from maxq.studies import Study

#: options copied from config.json into ``runs`` (those absent in a run stay NaN)
SCALE_KEYS = ("set", "epochs", "batch_size", "image_size", "train_subset", "val_subset", "lr",
              "lr_policy", "weight_decay", "label_smoothing", "increase_start", "increase_end",
              "prune_schedule", "tau", "decay", "device", "amp", "width_mult", "small_input",
              "recalibrate_bn")
RUN_COLUMNS = ("study", "run", "row", "arch", "N", "M", "method", "method_label", "seed",
               "finished", "best_top1", "best_top5", "best_epoch", "last_top1", "last_top5",
               "epochs_done", "wall_seconds", "paper_top1", "paper_top5", "paper_epochs",
               *SCALE_KEYS, "in_channels", "dead_weight_share", "threads", "machine", "commit", "arms",
               "run_dir")
CORRUPT_COLUMNS = ("run", "file", "problem", "run_dir")

@dataclass
class Results:
    """The runs of one study (or of a single run directory) as DataFrames."""

    study: str | None
    runs: pd.DataFrame
    epochs: pd.DataFrame
    layers: pd.DataFrame
    spec: Any = None                      # maxq.studies.Study when the study file was found
    run_dirs: dict[str, Path] = field(default_factory=dict)
    #: runs left out because a record is corrupt (:class:`maxq.records.CorruptRecord`): run,
    #: file, problem, run_dir
    corrupt: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CORRUPT_COLUMNS))
    #: run → its layer table as config.json records it (one dict per weighted layer: layer,
    #: kind, shape, sparse, params, params_kept), read with the run
    layer_tables: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["finished"]] if len(self.runs) else self.runs

    def masks(self, run: str, epochs: Iterable[int] | None = None,
              layers: Iterable[str] | None = None) -> dict[int, dict[str, dict[str, np.ndarray]]]:
        """Mask snapshots of one run: ``{epoch: {layer: {"hard", "soft"}}}``."""
        return load_masks(self.run_dirs[run], epochs=epochs, layers=layers)

    def mask_epochs(self, run: str) -> list[int]:
        return records.mask_snapshot_epochs(self.run_dirs[run])

    def labels(self) -> dict[str, str]:
        """Method name → short label: the registry's, then the study's ``method_labels``."""
        return method_labels(self.spec)


def method_labels(spec: Study | None) -> dict[str, str]:
    """The registry's short label of every method, overridden by the study's
    ``[study].method_labels`` when ``spec`` is given."""
    out = {name: method.label for name, method in METHODS.items()}
    if spec is not None:
        out.update(spec.method_labels)
    return out

# ----------------------------------------------------------------------------- loading
def load(study: Any, runs_root: str | os.PathLike | None = None) -> Results:
    """Every run directory under ``<runs_root>/<study>/`` (finished or not).

    ``study`` is a name, a study file path, or a :class:`maxq.studies.Study`; when the study file
    is found its rows give the paper values, table-row ids and ablation arms."""
    spec = None
    try:
        spec = studies.load_study(study)
        name = spec.name
    except studies.StudyError:
        if isinstance(study, (str, os.PathLike)) and (Path(study).suffix == ".toml"
                                                      or os.sep in str(study)):
            raise
        name = str(study)
    # a run shared with another study ([study].share) lives in that study's folder, named there
    planned = {(r.home_id if r.home else r.id): r
               for r in studies.expand(spec)} if spec is not None else {}
    folder = studies.runs_root(runs_root) / name
    dirs = sorted(p for p in folder.iterdir() if (p / records.CONFIG).exists()) \
        if folder.is_dir() else []
    dirs += [r.run_dir(runs_root) for r in planned.values()
             if r.home and (r.run_dir(runs_root) / records.CONFIG).exists()]
    order = {rid: i for i, rid in enumerate(planned)}
    dirs.sort(key=lambda p: (order.get(p.name, len(order)), p.name))
    return _collect(name, dirs, planned, spec)


def load_run(run_dir: str | os.PathLike) -> Results:
    """One run directory (for the row notebook)."""
    run_dir = Path(run_dir)
    return _collect(None, [run_dir], {}, None)


def _collect(name: str | None, dirs: Sequence[Path], planned: dict, spec: Any) -> Results:
    runs, epochs, layers, run_dirs, corrupt, layer_tables = [], [], [], {}, [], {}
    labels = method_labels(spec)
    for d in dirs:
        try:
            rec = records.read_run(d)
        except records.CorruptRecord as exc:   # that run is marked, the others still load
            corrupt.append({"run": d.name, "file": str(exc.path), "problem": exc.problem,
                            "run_dir": str(d)})
            continue
        cfg = records.read_config(rec["config"])
        run = d.name
        plan = planned.get(run)
        method = cfg.get("conv_bn_type", plan.method if plan else None)
        seed = cfg.get("seed", plan.seed if plan else None)
        row = plan.table_row if plan else _table_row(run, method, seed)
        result = rec["result"] or {}
        line: dict[str, Any] = {
            "study": name if name is not None else cfg.get("study"),
            "run": run, "row": row, "arch": cfg.get("arch"), "N": cfg.get("N"),
            "M": cfg.get("M"), "method": method, "method_label": labels.get(method, method),
            "seed": seed, "finished": rec["result"] is not None,
            "epochs_done": len(rec["metrics"]),
        }
        for key in records.RESULT_KEYS:
            if key != "epochs":
                line[key] = result.get(key, np.nan)
        if not line["finished"] and rec["metrics"]:
            line["last_top1"] = rec["metrics"][-1].get("val_top1", np.nan)
            line["last_top5"] = rec["metrics"][-1].get("val_top5", np.nan)
        paper = plan.paper if plan else {}
        for key in ("paper_top1", "paper_top5", "paper_epochs"):
            line[key] = paper.get(key, np.nan)
        for key in SCALE_KEYS:
            line[key] = cfg.get(key, np.nan)
        line["in_channels"] = (rec["config"].get("data") or {}).get("in_channels", np.nan)
        line["threads"] = (rec["config"].get("device") or {}).get("threads", np.nan)
        line["machine"] = provenance.machine_label(rec["config"])
        line["commit"] = provenance.commit_label(rec["config"])   # the code that trained it
        share = rec["config"].get("dead_weight_share")
        line["dead_weight_share"] = np.nan if share is None else share
        line["arms"] = dict(plan.arms) if plan and plan.arms else {}
        line["run_dir"] = paths.shown(d)   # relative inside the checkout: reports hold no machine paths
        runs.append(line)
        run_dirs[run] = d
        layer_tables[run] = rec["config"].get("layers") or []
        keys = dict(run=run, row=row, method=method, seed=seed)
        epochs.extend({**keys, **m} for m in rec["metrics"])
        layers.extend({**keys, **l} for l in rec["layers"])
    runs_df = pd.DataFrame(runs, columns=list(RUN_COLUMNS))
    if len(runs_df):
        runs_df["finished"] = runs_df["finished"].astype(bool)
    epochs_df = pd.DataFrame(epochs, columns=["run", "row", "method", "seed",
                                              *records.METRIC_KEYS])
    if len(epochs):
        extra = [c for c in pd.DataFrame(epochs).columns if c not in epochs_df.columns]
        epochs_df = pd.DataFrame(epochs, columns=list(epochs_df.columns) + extra)
    layers_df = pd.DataFrame(layers, columns=["run", "row", "method", "seed",
                                              *records.LAYER_KEYS])
    return Results(name, runs_df, epochs_df, layers_df, spec, run_dirs,
                   pd.DataFrame(corrupt, columns=CORRUPT_COLUMNS), layer_tables)


def _table_row(run: str, method: Any, seed: Any) -> str:
    suffix = f"-{method}-s{seed}"
    return run[: -len(suffix)] if run.endswith(suffix) else run


def load_masks(run_dir: str | os.PathLike, epochs: Iterable[int] | None = None,
               layers: Iterable[str] | None = None) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Mask snapshots ``{epoch: {layer: {"hard": bool, "soft": float32}}}`` of one run."""
    available = records.mask_snapshot_epochs(run_dir)
    wanted = available if epochs is None else [e for e in epochs if e in available]
    keep = None if layers is None else set(layers)      # a set: read once, used every epoch
    return {epoch: records.load_mask_snapshot(run_dir, epoch, keep) for epoch in wanted}
