"""Run directories → tidy pandas DataFrames, and the tables of the report.

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
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from maxq import cost, models, paths, provenance, records, stats, studies
from maxq import schedules as sched
from maxq.methods import METHODS, is_maxq
from maxq.studies import Study
# the authors' logs, for the paper study's report (re-exported: maxq.results.read_official_log)
from maxq.official_logs import (official_comparison, official_curves,  # noqa: F401
                                official_overlay, official_summary, read_official_log,
                                read_official_results, read_official_test_log)
from maxq.official_logs import overlay_figure as official_overlay_figure  # noqa: F401

MAXQ = "SoftMaxQConv2DBN"
SRSTE = "SoftSRSTEConv2dBN"
#: options copied from config.json into ``runs`` (those absent in a run stay NaN)
SCALE_KEYS = ("set", "epochs", "batch_size", "image_size", "train_subset", "val_subset", "lr",
              "lr_policy", "weight_decay", "label_smoothing", "increase_start", "increase_end",
              "prune_schedule", "tau", "decay", "device", "amp", "width_mult", "small_input",
              "recalibrate_bn")
RUN_COLUMNS = ("study", "run", "row", "arch", "N", "M", "method", "method_label", "seed",
               "finished", "best_top1", "best_top5", "best_epoch", "last_top1", "last_top5",
               "epochs_done", "wall_seconds", "paper_top1", "paper_top5", "paper_epochs",
               *SCALE_KEYS, "in_channels", "dead_weight_share", "threads", "machine", "arms", "run_dir")
CORRUPT_COLUMNS = ("run", "file", "problem", "run_dir")
#: the paper's input (ImageNet, 224 px) for the cost columns
PAPER_INPUT = (3, 224, 224)


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
    runs, epochs, layers, run_dirs, corrupt = [], [], [], {}, []
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
        share = rec["config"].get("dead_weight_share")
        line["dead_weight_share"] = np.nan if share is None else share
        line["arms"] = dict(plan.arms) if plan and plan.arms else {}
        line["run_dir"] = paths.shown(d)   # relative inside the checkout: reports hold no machine paths
        runs.append(line)
        run_dirs[run] = d
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
                   pd.DataFrame(corrupt, columns=CORRUPT_COLUMNS))


def _table_row(run: str, method: Any, seed: Any) -> str:
    suffix = f"-{method}-s{seed}"
    return run[: -len(suffix)] if run.endswith(suffix) else run


def load_masks(run_dir: str | os.PathLike, epochs: Iterable[int] | None = None,
               layers: Iterable[str] | None = None) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Mask snapshots ``{epoch: {layer: {"hard": bool, "soft": float32}}}`` of one run."""
    available = records.mask_snapshot_epochs(run_dir)
    wanted = available if epochs is None else [e for e in epochs if e in available]
    keep = None if layers is None else set(layers)
    out = {}
    for epoch in wanted:
        snap = records.load_mask_snapshot(run_dir, epoch)
        out[epoch] = {k: v for k, v in snap.items() if keep is None or k in keep}
    return out


def pick_epochs(epochs: Sequence[int], k: int = 4) -> list[int]:
    """Up to ``k`` epochs spread evenly over ``epochs`` (first and last included)."""
    epochs = sorted(set(int(e) for e in epochs))
    if len(epochs) <= k:
        return epochs
    idx = np.linspace(0, len(epochs) - 1, k).round().astype(int)
    return [epochs[i] for i in sorted(set(idx))]


def pick_layers(layer_names: Sequence[str], k: int = 3) -> list[str]:
    """Up to ``k`` layers spread over the network's depth (first, middle, last)."""
    names = list(dict.fromkeys(layer_names))
    if len(names) <= k:
        return names
    idx = np.linspace(0, len(names) - 1, k).round().astype(int)
    return [names[i] for i in sorted(set(idx))]


def focus_runs(results: Results, per_method: int = 1) -> list[str]:
    """Runs shown in the per-layer figures: the study's ``focus`` row if set, else the first
    finished row with a MaxQ run (:attr:`maxq.methods.MethodSpec.maxq`), else the first with a
    sparse run, else the first; one run (the lowest seed) per method of that row."""
    runs = results.finished
    if not len(runs):
        runs = results.runs[results.runs["epochs_done"] > 0] if len(results.runs) else runs
    if not len(runs):
        return []
    focus = getattr(results.spec, "focus", None)
    if focus in set(runs["row"]):
        row = focus
    else:           # a dense-only row has no masks to show: the first row with MaxQ, else sparse
        spec = [METHODS.get(m) for m in runs["method"]]
        ranked = [0 if s is not None and s.maxq else 1 if s is not None and s.sparse else 2
                  for s in spec]
        row = runs["row"].iloc[int(np.argmin(ranked))]
    picked = runs[runs["row"] == row].sort_values("seed").groupby("method", sort=False).head(
        per_method)
    return list(picked["run"])


def has_mask_records(results: Results, runs: Sequence[str]) -> bool:
    """Whether any of ``runs`` (e.g. :func:`focus_runs`) is a sparse run with per-layer mask
    records (``layers.jsonl``): what the report's mask-evolution section shows."""
    if not len(results.layers) or not len(runs):
        return False
    method_of = results.runs.set_index("run")["method"] if len(results.runs) else {}
    recorded = set(results.layers["run"])
    return any(run in recorded and METHODS.get(method_of.get(run)) is not None
               and METHODS[method_of.get(run)].sparse for run in runs)


# ----------------------------------------------------------------------------- tables
def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if n > 1 else 0.0, n


def _fmt(mean: float, std: float, n: int, digits: int = 2) -> str:
    if n == 0 or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}f}"
    if n > 1:
        text += f" ± {std:.{digits}f}"
    return text + f" (n={n})"


def summary_table(results: Results, *, cost: bool = True) -> pd.DataFrame:
    """One line per table row: paper top-1/top-5, ours (best-epoch top-1/top-5, mean ± std over
    seeds) per method, MaxQ − SR-STE, and FLOPs/params of the row at the paper's scale
    (ImageNet model, 224 px, via :func:`maxq.cost.cost`)."""
    runs = results.finished
    rows = _row_order(results)
    methods = _method_order(results)
    labels = results.labels()
    out = []
    for row in rows:
        sub = results.runs[results.runs["row"] == row]
        done = runs[runs["row"] == row] if len(runs) else runs
        first = sub.iloc[0]
        line: dict[str, Any] = {"row": row, "arch": first["arch"], "N": first["N"],
                                "M": first["M"], "paper_top1": first["paper_top1"],
                                "paper_top5": first["paper_top5"],
                                "paper_epochs": first["paper_epochs"]}
        for method in methods:
            label = labels.get(method, method)
            values = done[done["method"] == method] if len(done) else done
            for metric in ("top1", "top5"):
                mean, std, n = _mean_std(values[f"best_{metric}"]) if len(values) else (
                    math.nan, math.nan, 0)
                line[f"{label} {metric} mean"] = mean
                line[f"{label} {metric} std"] = std
                line[f"{label} n"] = n
        if MAXQ in methods and SRSTE in methods:
            a, b = labels.get(MAXQ, MAXQ), labels.get(SRSTE, SRSTE)
            for metric in ("top1", "top5"):
                line[f"{a} - {b} {metric}"] = line[f"{a} {metric} mean"] - line[f"{b} {metric} mean"]
        if cost:
            line.update(paper_cost(first["arch"], first["N"], first["M"]))
        out.append(line)
    return pd.DataFrame(out)


def summary_markdown(table: pd.DataFrame, results: Results) -> str:
    """The summary table as Markdown, ``mean ± std (n)`` per method."""
    if not len(table):
        return "_no runs yet_\n"
    labels = results.labels()
    methods = [labels.get(m, m) for m in _method_order(results)]
    columns: dict[str, list[str]] = {
        "row": [str(r) for r in table["row"]],
        "N:M": [f"{_int(n)}:{_int(m)}" for n, m in zip(table["N"], table["M"])],
        "paper top-1": [_num(v) for v in table["paper_top1"]],
        "paper top-5": [_num(v) for v in table["paper_top5"]],
    }
    for m in methods:
        for metric, name in (("top1", "top-1"), ("top5", "top-5")):
            columns[f"{m} {name}"] = [
                _fmt(r.get(f"{m} {metric} mean", math.nan), r.get(f"{m} {metric} std", math.nan),
                     int(r.get(f"{m} n", 0))) for _, r in table.iterrows()]
    for c in [c for c in table.columns if " - " in c and c.endswith("top1")]:
        columns["Δ top-1 " + c.rsplit(" ", 1)[0]] = [_num(v, signed=True) for v in table[c]]
    if "sparse_gflops" in table.columns:
        columns["GFLOPs dense → sparse"] = [f"{_num(a)} → {_num(b)}" for a, b in
                                            zip(table["dense_gflops"], table["sparse_gflops"])]
        columns["params (M) dense → sparse"] = [f"{_num(a)} → {_num(b)}" for a, b in
                                                zip(table["dense_mparams"], table["sparse_mparams"])]
    return pd.DataFrame(columns).to_markdown(index=False, disable_numparse=True) + "\n"


def _num(value: Any, signed: bool = False, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _int(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def _row_order(results: Results) -> list[str]:
    return list(dict.fromkeys(results.runs["row"])) if len(results.runs) else []


def _method_order(results: Results) -> list[str]:
    methods = list(dict.fromkeys(results.runs["method"])) if len(results.runs) else []
    preferred = [m for m in (MAXQ, SRSTE) if m in methods]
    return preferred + [m for m in methods if m not in preferred]


ABLATION_COLUMNS = ("group", "arm", "baseline", "n", "mean", "std", "ci95_low", "ci95_high",
                    "n_pairs", "delta_mean", "delta_ci95_low", "delta_ci95_high", "verdict",
                    "runs")


def ablation_table(results: Results, metric: str = "best_top1") -> pd.DataFrame:
    """Per (group, arm): mean, std and 95 % CI over seeds, and the arm's **seed-paired
    difference to its group's baseline** (the group's first arm in study order) with its 95 % CI
    and a verdict (:func:`maxq.stats.verdict`: ``ahead`` / ``behind`` / ``within noise``;
    the baseline's own line says ``baseline``).

    Rows with ``arms = {group = "arm", ...}`` in the study file form the groups (one row can be
    the baseline of several groups); rows without arms are grouped by table row with the
    method as the arm (for the main studies: the methods of each row against its first)."""
    runs = results.finished
    if not len(runs):
        return pd.DataFrame(columns=list(ABLATION_COLUMNS))
    labels = results.labels()
    items = []
    for _, r in runs.iterrows():
        arms = r["arms"] if isinstance(r["arms"], dict) and r["arms"] else {
            r["row"]: labels.get(r["method"], r["method"])}
        for group, arm in arms.items():
            items.append({"group": group, "arm": arm, "seed": r["seed"], metric: r[metric],
                          "run": r["run"]})
    frame = pd.DataFrame(items)
    out = []
    for group, members in frame.groupby("group", sort=False):
        arms = list(dict.fromkeys(members["arm"]))
        base = members[members["arm"] == arms[0]]
        for arm in arms:
            sub = members[members["arm"] == arm]
            mean, std, low, high, n = stats.mean_interval(sub[metric])
            line = {"group": group, "arm": arm, "baseline": arms[0], "n": n, "mean": mean,
                    "std": std if n > 1 else 0.0, "ci95_low": low, "ci95_high": high,
                    "n_pairs": 0, "delta_mean": math.nan, "delta_ci95_low": math.nan,
                    "delta_ci95_high": math.nan, "verdict": "baseline",
                    "runs": " ".join(sub["run"])}
            if arm != arms[0]:
                d_mean, _, d_low, d_high, pairs = stats.mean_interval(
                    stats.paired_differences(sub, base, metric))
                line.update(n_pairs=pairs, delta_mean=d_mean, delta_ci95_low=d_low,
                            delta_ci95_high=d_high, verdict=stats.verdict(d_low, d_high, pairs))
            out.append(line)
    return pd.DataFrame(out, columns=list(ABLATION_COLUMNS))


def ablation_markdown(table: pd.DataFrame, metric: str = "best top-1") -> str:
    """The ablation table as Markdown: per (group, arm) the mean [95 % CI] over seeds and the
    seed-paired difference to the group's baseline [95 % CI] with its verdict."""
    if not len(table):
        return "_no finished runs_\n"
    frame = pd.DataFrame({
        "group": table["group"], "arm": table["arm"],
        f"{metric} mean [95 % CI]": [
            stats.interval_text(m, lo, hi) for m, lo, hi in
            zip(table["mean"], table["ci95_low"], table["ci95_high"])],
        "Δ to baseline [95 % CI]": [
            "–" if v == "baseline" else f"{stats.interval_text(m, lo, hi, signed=True)} vs {b}"
            for m, lo, hi, b, v in zip(table["delta_mean"], table["delta_ci95_low"],
                                       table["delta_ci95_high"], table["baseline"],
                                       table["verdict"])],
        "verdict": table["verdict"],
        "n": table["n"],
    })
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"


# ----------------------------------------------------------------------------- cost at paper scale
@functools.lru_cache(maxsize=None)
def _paper_cost_cached(arch: str, N: int, M: int) -> tuple[tuple[str, float], ...]:
    model = models.build(arch, num_classes=1000)
    totals = cost.cost(model, PAPER_INPUT, N=N, M=M).totals()
    return (("dense_gflops", totals["dense_flops"] / 1e9),
            ("sparse_gflops", totals["sparse_flops"] / 1e9),
            ("dense_mparams", totals["dense_params"] / 1e6),
            ("sparse_mparams", totals["sparse_params"] / 1e6))


def paper_cost(arch: Any, N: Any, M: Any) -> dict[str, float]:
    """FLOPs (G) and params (M), dense and N:M sparse, of ``arch`` at the paper's scale
    (1000 classes, 224 px). NaN when the cost counter is unavailable or the row is invalid."""
    empty = {k: math.nan for k in ("dense_gflops", "sparse_gflops", "dense_mparams",
                                   "sparse_mparams")}
    try:
        return dict(_paper_cost_cached(str(arch), int(N), int(M)))
    except Exception:  # noqa: BLE001 - an unknown arch or missing module leaves the columns empty
        return empty


# ----------------------------------------------------------------------------- scale and schedules
def scale_summary(results: Results) -> str:
    """A Markdown paragraph stating the scale the study ran at (from the runs' configs)."""
    runs = results.runs
    if not len(runs):
        return "No run directories found yet.\n"

    def values(key: str, unset: str = "?") -> str:
        """The key's distinct values; ``unset`` for a run that left the option at None."""
        vals = [unset if v is None else v for v in runs[key].tolist()
                if not (isinstance(v, float) and math.isnan(v))]
        vals = list(dict.fromkeys(str(v) for v in vals))
        return ", ".join(vals) if vals else "?"

    done = results.finished
    wall = pd.to_numeric(done["wall_seconds"], errors="coerce").sum() if len(done) else 0.0
    text = (f"**Scale.** {len(runs)} run(s) ({len(done)} finished) of study "
            f"`{results.study}`: data set {values('set')}, train subset "
            f"{values('train_subset', 'all')} images, validation subset "
            f"{values('val_subset', 'all')} images, input {values('image_size', 'native')} "
            f"px, batch {values('batch_size')}, {values('epochs')} epochs, incremental window "
            f"epochs {values('increase_start')}–{values('increase_end')} "
            f"({values('prune_schedule')} schedule), device {values('device')}; "
            f"training time {wall / 60:.1f} min in total "
            f"({wall / max(1, len(done)):.0f} s per finished run).")
    note = getattr(results.spec, "scale_note", "")
    if note:
        text += f" {note}"
    return text + "\n"


def schedule_frame(start: int, end: int, epochs: int,
                   schedules: Iterable[str] | None = None) -> pd.DataFrame:
    """Share of N:M blocks ``1 − ρ(t)`` for every schedule over ``0..epochs`` (columns: epoch,
    schedule, dense_fraction, nm_share), from :func:`maxq.schedules.dense_fraction`."""
    names = list(schedules) if schedules is not None else list(sched.SCHEDULES)
    grid = np.linspace(0, max(1, int(epochs)), 200)
    out = []
    for name in names:
        for t in grid:
            rho = float(sched.dense_fraction(float(t), start, end, name))
            out.append({"epoch": float(t), "schedule": name, "dense_fraction": rho,
                        "nm_share": 1.0 - rho})
    return pd.DataFrame(out)


def study_window(results: Results) -> tuple[int, int, int, str]:
    """(increase_start, increase_end, epochs, prune_schedule) of the study's MaxQ runs."""
    runs = results.runs
    if not len(runs):
        return 0, 0, 1, "linear"
    maxq = runs[runs["method"].map(is_maxq).astype(bool)]
    pick = maxq if len(maxq) else runs
    first = pick.iloc[0]

    def num(value: Any, default: int) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            return default

    schedule = first["prune_schedule"] if isinstance(first["prune_schedule"], str) else "linear"
    return (num(first["increase_start"], 0), num(first["increase_end"], 0),
            num(first["epochs"], 1), schedule)


# ----------------------------------------------------------------------------- writing
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


def heatmap_selection(results: Results, k_epochs: int = 4, k_layers: int = 3
                      ) -> tuple[str | None, dict[int, dict[str, dict[str, np.ndarray]]], list[str]]:
    """For the mask heatmaps: the focus MaxQ run (else the first focus run), its snapshots at up
    to ``k_epochs`` epochs and up to ``k_layers`` layers spread over depth."""
    candidates = focus_runs(results)
    candidates = [r for r in candidates if results.mask_epochs(r)]
    method_of = results.runs.set_index("run")["method"]
    maxq = [r for r in candidates if is_maxq(method_of.get(r))]
    if not candidates:
        return None, {}, []
    run = (maxq or candidates)[0]
    epochs = pick_epochs(results.mask_epochs(run), k_epochs)
    first = records.load_mask_snapshot(results.run_dirs[run], epochs[0])
    layers = pick_layers(layer_order(results, run, first), k_layers)
    return run, load_masks(results.run_dirs[run], epochs=epochs, layers=layers), layers


def layer_order(results: Results, run: str, names: Iterable[str]) -> list[str]:
    """``names`` in network order (the order of ``layers.jsonl``; snapshots sort by name)."""
    names = list(names)
    recorded = list(dict.fromkeys(results.layers.loc[results.layers["run"] == run, "layer"])) \
        if len(results.layers) else []
    known = [n for n in recorded if n in names]
    return known + [n for n in names if n not in known]


def mask_choice(results: Results, run: str | None = None, layer: str | None = None,
                epoch: int | None = None) -> dict[str, Any]:
    """One (run, layer, epoch) mask for the explorer; defaults: first run with snapshots, its
    first sparse layer, its last snapshot epoch. Returns run, layer, epoch, epochs, layers,
    hard, soft, M."""
    runs = [r for r in results.run_dirs if results.mask_epochs(r)]
    if not runs:
        raise records.RunRecordError(f"no run of study {results.study!r} has mask snapshots")
    run = run if run is not None else runs[0]
    if run not in runs:
        raise records.RunRecordError(f"run {run!r} has no mask snapshots; runs with snapshots: "
                                     f"{', '.join(runs)}")
    epochs = results.mask_epochs(run)
    epoch = epochs[-1] if epoch is None else int(epoch)
    snap = records.load_mask_snapshot(results.run_dirs[run], epoch)
    layers = layer_order(results, run, snap)
    layer = layers[0] if layer is None else layer
    if layer not in snap:
        raise records.RunRecordError(f"layer {layer!r} is not a sparse layer of {run}; "
                                     f"layers: {', '.join(layers)}")
    M = results.runs.set_index("run").loc[run, "M"]
    return {"run": run, "layer": layer, "epoch": epoch, "epochs": epochs, "layers": layers,
            "hard": snap[layer]["hard"], "soft": snap[layer]["soft"], "M": int(M),
            "runs": runs}


# ----------------------------------------------------------------------------- cost of the proxy
@functools.lru_cache(maxsize=None)
def _proxy_cost_cached(arch: str, N: int, M: int, dense: bool, width_mult: float,
                       small_input: bool, in_channels: int, image_size: int) -> float:
    model = models.build(arch, num_classes=10, in_channels=in_channels, small_input=small_input,
                         width_mult=width_mult)
    report = cost.cost(model, (in_channels, image_size, image_size),
                         *((None, None) if dense else (N, M)))
    return report.totals()["sparse_flops"] / 1e9


def proxy_gflops(runs: pd.DataFrame) -> pd.DataFrame:
    """GFLOPs per image of every (row, method) at the scale the runs actually trained (their
    arch, width, stem, input size; dense methods counted dense): the x axis of the
    accuracy-vs-FLOPs figure. Columns row, method, gflops."""
    done = runs[runs["finished"].astype(bool)] if len(runs) else runs
    out = []
    for (row, method), sub in done.groupby(["row", "method"], sort=False):
        first = sub.iloc[0]
        width = float(first["width_mult"]) if pd.notna(first["width_mult"]) else 1.0
        small = bool(first["small_input"]) if pd.notna(first["small_input"]) else False
        channels = int(first["in_channels"]) if pd.notna(first["in_channels"]) else 3
        size = int(first["image_size"]) if pd.notna(first["image_size"]) else 224
        dense = method in METHODS and not METHODS[method].sparse
        out.append({"row": row, "method": method, "gflops": _proxy_cost_cached(
            str(first["arch"]), int(first["N"]), int(first["M"]), dense, width, small, channels,
            size)})
    return pd.DataFrame(out, columns=["row", "method", "gflops"])


def runs_note(results: Results, runs_root: str | os.PathLike | None = None) -> str:
    """One Markdown line for the report: how many runs were found where, or, plainly, that the
    study has none yet and the command that makes them."""
    folder = paths.shown(studies.runs_root(runs_root) / str(results.study))
    if not len(results.runs):
        return (f"**No runs of study `{results.study}` yet** (nothing in `{folder}`): the tables "
                f"and figures below are empty. Make the runs with `maxq batch {results.study}`.")
    done = int(results.runs["finished"].sum())
    return (f"{len(results.runs)} runs in `{folder}`, {done} finished.\n\n"
            + corrupt_markdown(results) + machines_markdown(results.runs))


def corrupt_markdown(results: Results) -> str:
    """One line per run left out because a record is corrupt ('' when none)."""
    bad = results.corrupt
    if bad is None or not len(bad):
        return ""
    lines = "".join(f"- `{r.run}`: `{Path(r.file).name}`: {r.problem}\n" for r in bad.itertuples())
    return (f"**{len(bad)} run(s) left out: a record is corrupt** (fix or remove the file, or "
            f"re-run with `maxq batch {results.study} --force`):\n\n{lines}\n")


# ----------------------------------------------------------------------------- replication
def discovery_runs(study: Any, runs_root: str | os.PathLike | None = None,
                   reports_root: str | os.PathLike | None = None) -> tuple[pd.DataFrame, str]:
    """The runs of the study a held-out study replicates (``[study] replicates``), and where they
    came from: its run directories when they are here, else the runs table of its committed
    report (``<reports_root>/<study>/runs.csv``, one line per run as :func:`load` gives it).
    ``ValueError`` when neither exists."""
    from maxq import paths

    res = load(study, runs_root)
    if len(res.finished):
        return res.runs, f"the run directories of study `{res.study}` ({len(res.finished)} finished)"
    table = paths.reports_root(reports_root) / res.study / "runs.csv"
    if not table.is_file():
        raise ValueError(f"study {res.study!r} has no finished runs under "
                         f"{studies.runs_root(runs_root) / res.study} and no committed runs "
                         f"table {table}: nothing to replicate")
    runs = pd.read_csv(table)
    runs["finished"] = runs["finished"].astype(bool)
    return runs, (f"the committed report of study `{res.study}` (`reports/{res.study}/runs.csv`, "
                  f"{int(runs['finished'].sum())} finished runs; their run directories are not "
                  f"on this machine)")


def rerun_table(path: str | os.PathLike, study: str) -> tuple[pd.DataFrame, Path]:
    """The runs of a re-run given as a report's ``runs.csv`` (the robustness section's other
    set when its run directories are gone, e.g. a committed report trained on another machine),
    and the file's resolved path. Its runs of ``study`` only; runs made before provenance was
    recorded get the machine label "not recorded". :class:`studies.StudyError` (one line) when
    the file is missing, unreadable or holds no finished run of the study."""
    file = Path(path).resolve()
    try:
        runs = pd.read_csv(file)
        runs = runs[runs["study"].astype(str) == study].copy()
        runs["finished"] = runs["finished"].astype(bool)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise studies.StudyError(f"--rerun-root {path}: not a readable runs table "
                                 f"({type(exc).__name__}: {exc})") from None
    if not runs["finished"].any():
        raise studies.StudyError(f"--rerun-root {path}: no finished run of study {study!r} "
                                 f"in this runs table")
    if "machine" not in runs.columns:
        runs["machine"] = f"machine not recorded (runs table {file.parent.name}/{file.name})"
    runs["machine"] = runs["machine"].fillna("machine not recorded")
    return runs, file


def rerun_runs(study: Any, path: str | os.PathLike) -> pd.DataFrame:
    """The robustness section's re-run: the runs under a runs root, or a report's runs.csv
    (:func:`rerun_table`)."""
    if Path(path).suffix == ".csv":
        return rerun_table(path, results_name(study))[0]
    return load(study, path).runs


def same_recipe(discovery: pd.DataFrame, heldout: pd.DataFrame) -> list[str]:
    """Where held-out runs were trained with other options than the discovery runs of the same
    (row, method): one line per differing option (empty when the recipes agree)."""
    keys = ["arch", "N", "M", *SCALE_KEYS]
    out = []
    done_a, done_b = stats._finished(discovery), stats._finished(heldout)
    for (row, method), sub in done_b.groupby(["row", "method"], sort=False):
        ref = done_a[(done_a["row"] == row) & (done_a["method"] == method)]
        if not len(ref):
            continue
        for key in keys:
            if key not in sub or key not in ref:
                continue
            mine = {_option_value(v) for v in sub[key]}
            theirs = {_option_value(v) for v in ref[key]}
            if mine != theirs:
                out.append(f"{row} {method}: {key} = {sorted(mine)} (held-out) vs "
                           f"{sorted(theirs)} (discovery)")
    return out


def _option_value(value: Any) -> str:
    """One option's value as a comparable text, the same whether it was read from config.json
    or from a runs.csv (None and NaN alike, 8192 and 8192.0 alike)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)
# ----------------------------------------------------------------------------- N:M benchmark
#: published ImageNet ResNet-50 top-1 (each method's own recipe), ``(method, N, M) -> text``:
#: SR-STE's README, Bi-Mask's README, the MaxQ paper (1:16: 74.6 / 75.2 as reported). No LBC
#: or SpRe number could be read from their READMEs or papers here: left blank.
PUBLISHED_TOP1: dict[tuple[str, int, int], str] = {
    ("SoftSRSTEConv2dBN", 2, 4): "77.0", ("SoftSRSTEConv2dBN", 1, 4): "75.9",
    ("SoftSRSTEConv2dBN", 2, 8): "76.4", ("SoftSRSTEConv2dBN", 4, 8): "77.4",
    ("BiMask", 2, 4): "77.4", ("BiMask", 1, 4): "75.6", ("BiMask", 2, 8): "76.3",
    ("BiMask", 4, 8): "77.5", ("BiMask", 1, 16): "71.4",
    ("SoftMaxQConv2DBN", 2, 4): "77.6", ("SoftMaxQConv2DBN", 1, 16): "74.6 / 75.2",
    ("SoftMaxQConv2DBN", 1, 4): "77.3", ("SoftMaxQConv2DBN", 2, 8): "77.2",   # studies/paper.toml
}


def benchmark_study(results: "Results") -> bool:
    """Whether ``results`` is an N:M method benchmark: a study whose rows run LBC, Bi-Mask or
    SpRe beside MaxQ or SR-STE (the report's leaderboard section shows only then)."""
    methods = set(results.runs["method"]) if len(results.runs) else set()
    if results.spec is not None:
        methods |= {r.method for r in studies.expand(results.spec)}
    new = {m for m in methods if m in METHODS and METHODS[m].layer}
    return bool(new) and bool(methods & {stats.MAXQ, stats.SRSTE})


def step_seconds(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Mean training-step time of every run (``run, row, method, seed, step_seconds``): the
    mean over its epochs of metrics.jsonl's ``step_seconds``; for runs recorded before that
    key existed, ``batch_size / images_per_s`` (the same quantity: training-loop time per
    step, every step a full batch)."""
    if not len(epochs):
        return pd.DataFrame(columns=["run", "row", "method", "seed", "step_seconds"])
    batch = runs.set_index("run")["batch_size"] if len(runs) else pd.Series(dtype=float)
    out = []
    for run, sub in epochs.groupby("run", sort=False):
        measured = pd.to_numeric(sub.get("step_seconds"), errors="coerce") \
            if "step_seconds" in sub else pd.Series([np.nan] * len(sub))
        if measured.notna().any():
            value = float(measured.mean())
        else:
            rate = pd.to_numeric(sub["images_per_s"], errors="coerce")
            value = float((float(batch.get(run, np.nan)) / rate).mean())
        first = sub.iloc[0]
        out.append({"run": run, "row": first["row"], "method": first["method"],
                    "seed": first["seed"], "step_seconds": value})
    return pd.DataFrame(out)


def training_cost(results: "Results") -> pd.DataFrame:
    """Training cost per (row, method): mean step time (s), its ratio to the dense runs' (paired
    by seed, mean and 95 % CI; dense from :func:`maxq.stats.dense_reference`), mean density of
    the sparse layers over the epochs (N/M for an exact N:M method; more for LBC before its
    schedule ends), epochs trained denser than N:M, and the method's extra trainable
    parameters during training (LBC's scores, SpRe's branches and BNs)."""
    runs = results.finished
    cols = ["row", "N", "M", "method", "method_label", "n", "step_seconds", "ratio_to_dense",
            "ratio_ci95_low", "ratio_ci95_high", "mean_density", "epochs_denser",
            "extra_params"]
    if not len(runs):
        return pd.DataFrame(columns=cols)
    steps = step_seconds(results.epochs[results.epochs["run"].isin(runs["run"])], runs)
    out = []
    for (row, method), sub in runs.groupby(["row", "method"], sort=False):
        mine = steps[steps["run"].isin(sub["run"])]
        dense = steps[steps["run"].isin(stats.dense_reference(results.runs, row)["run"])]
        paired = mine.merge(dense[["seed", "step_seconds"]], on="seed", suffixes=("", "_dense"))
        ratio, _, low, high, _ = stats.mean_interval(paired["step_seconds"]
                                                     / paired["step_seconds_dense"])
        N, M = int(sub["N"].iloc[0]), int(sub["M"].iloc[0])
        ep = results.epochs[results.epochs["run"].isin(sub["run"])]
        density = pd.to_numeric(ep["density"], errors="coerce") if "density" in ep \
            else pd.Series(dtype=float)
        dense_method = method == stats.DENSE
        denser = ((density > N / M + 1e-9).groupby(ep["run"]).sum().mean()
                  if density.notna().any() and not dense_method else math.nan)
        out.append({"row": row, "N": N, "M": M, "method": method,
                    "method_label": sub["method_label"].iloc[0], "n": len(mine),
                    "step_seconds": float(mine["step_seconds"].mean()),
                    "ratio_to_dense": ratio, "ratio_ci95_low": low, "ratio_ci95_high": high,
                    "mean_density": (1.0 if dense_method else float(density.mean())
                                     if density.notna().any() else math.nan),
                    "epochs_denser": float(denser) if pd.notna(denser) else math.nan,
                    "extra_params": extra_parameters(method, _layer_rows(results, sub), N, M)})
    return pd.DataFrame(out, columns=cols)


def _layer_rows(results: "Results", sub: pd.DataFrame) -> list[dict]:
    run_dir = results.run_dirs.get(sub["run"].iloc[0])
    if run_dir is None:
        return []
    try:
        return records.read_json(Path(run_dir) / records.CONFIG).get("layers") or []
    except (OSError, ValueError):
        return []


def extra_parameters(method: str, layers: Sequence[dict], N: int, M: int) -> int:
    """Trainable parameters a method adds during training, from a run's layer table
    (config.json ``layers``): LBC C(M, N) scores per group of M weights of every sparse layer;
    SpRe a branch kernel plus a BN (2 · out) per sparse kxk conv; 0 otherwise."""
    spec = METHODS.get(method)
    if spec is None or not spec.layer:
        return 0
    total = 0
    for r in layers:
        if not r.get("sparse"):
            continue
        numel = int(np.prod(r["shape"]))
        if spec.layer == "lbc":
            total += numel // M * math.comb(M, N)
        elif spec.layer == "spre" and r["kind"].startswith("conv") and \
                not r["kind"].startswith("conv1x1"):
            total += numel + 2 * int(r["shape"][0])
    return total


def fairness_card(results: "Results") -> pd.DataFrame:
    """The benchmark's fairness card, one line per (row, method): the one recipe (epochs, lr
    schedule, optimizer, weight decay, label smoothing, batch), seeds, which layers stay dense,
    the mask's grouping axis, the SR-STE lambda the method uses, what it adds in training, FLOPs
    and parameters of the cell (proxy, and ResNet-50 at 224 px), and the published ImageNet
    ResNet-50 top-1 of the method at that N:M (each from its own recipe)."""
    runs = results.finished
    cols = ["row", "N:M", "method", "epochs", "seeds", "recipe", "dense layers", "grouping",
            "SR-STE lambda", "training extra", "proxy GFLOPs", "proxy M params (kept)",
            "R50 GFLOPs", "R50 M params (kept)", "published R50 top-1"]
    if not len(runs):
        return pd.DataFrame(columns=cols)
    flops = proxy_gflops(runs).set_index(["row", "method"])["gflops"]
    out = []
    for (row, method), sub in runs.groupby(["row", "method"], sort=False):
        first = sub.iloc[0]
        spec = METHODS.get(method)
        N, M = int(first["N"]), int(first["M"])
        dense_method = spec is None or not spec.sparse
        layers = _layer_rows(results, sub)
        kept = sum(r["params_kept"] if not dense_method else r["params"] for r in layers)
        epochs = int(first["epochs"]) if pd.notna(first["epochs"]) else None
        extra = ""
        if spec is not None and spec.layer == "lbc":
            from maxq.nm_layers import LBCConv2d

            extra = (f"scores over C({M},{N}) combinations; denser than {N}:{M} until epoch "
                     f"{LBCConv2d.schedule_end(epochs or 1)}")
        elif spec is not None and spec.layer == "spre":
            extra = "second 3x3 branch + BN per 3x3 conv (folded at export)"
        elif spec is not None and spec.layer == "bimask":
            extra = "backward mask over permuted outputs (100 candidates / 100 steps)"
        decay = first.get("decay", np.nan)
        r50 = paper_cost("resnet50", N, M) if not dense_method else paper_cost("resnet50", 2, 4)
        cfg = results.runs[results.runs["run"] == first["run"]].iloc[0]
        recipe = (f"SGD lr {cfg.get('lr')} {cfg.get('lr_policy', '')}, wd "
                  f"{cfg.get('weight_decay')}, batch {cfg.get('batch_size')}")
        out.append({
            "row": row, "N:M": "dense" if dense_method else f"{N}:{M}",
            "method": first["method_label"], "epochs": epochs,
            "seeds": ", ".join(str(int(s)) for s in sorted(sub["seed"])),
            "recipe": recipe,
            "dense layers": ", ".join(r["layer"] for r in layers if not r.get("sparse"))
            if not dense_method else "all",
            "grouping": "-" if dense_method else (
                "flattened (in, kh, kw) row" if spec.grouping == "row"
                else "input channels"),
            "SR-STE lambda": (f"{decay:g}" if not dense_method and spec.srste_decay
                              and pd.notna(decay) else "-"),
            "training extra": extra,
            "proxy GFLOPs": float(flops.get((row, method), np.nan)),
            "proxy M params (kept)": kept / 1e6 if layers else np.nan,
            "R50 GFLOPs": r50["dense_gflops" if dense_method else "sparse_gflops"],
            "R50 M params (kept)": r50["dense_mparams" if dense_method else "sparse_mparams"],
            "published R50 top-1": PUBLISHED_TOP1.get((method, N, M), "") if not dense_method
            else "",
        })
    return pd.DataFrame(out, columns=cols)


def machines(runs: pd.DataFrame) -> dict[str, int]:
    """Machine label (see :func:`maxq.provenance.machine_label`) → number of runs made there."""
    if not len(runs) or "machine" not in runs.columns:
        return {}
    return {str(k): int(v) for k, v in runs["machine"].value_counts(sort=False).items()}


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
