"""The report's main tables: the summary table (paper vs ours per method and row, mean ± std over
seeds, MaxQ − SR-STE, cost at the paper's scale) and the ablation table (each arm's seed-paired
difference to its group's baseline, with the verdict of :func:`maxq.stats.verdict`), each as a
DataFrame and as Markdown."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from maxq import stats
from maxq.result_frames import Results
from maxq.row_cost import paper_cost
from maxq.stats import MAXQ, SRSTE

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
