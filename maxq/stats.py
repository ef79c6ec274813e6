"""Statistics of a study: per-(row, method) means with 95 % confidence intervals, paired per-seed
differences for the study's claims, and a verdict per claim computed from those numbers.

DataFrames in (``maxq.results.Results.runs``), DataFrames out; nothing is written here.

* Interval of a mean: Student t over the seeds, ``mean ± t(0.975, n-1) · s / sqrt(n)``
  (``scipy.stats.t``); with one run there is no interval (NaN) and no verdict.
* A claim compares run A (row_a, method_a) with run B (row_b, method_b) **paired by seed**:
  ``d_s = A_s − B_s`` for every seed both finished; the interval is Student t over the ``d_s``.
* Verdicts (:func:`verdict`): a difference claim ("A beats B") is ``ahead`` when the whole
  interval of ``A − B`` is above 0, ``behind`` when it is below 0, ``within noise`` otherwise.
  A margin claim ("A within m points of B") is ``within margin`` when the interval's low end is
  above ``−m``, ``outside margin`` when its high end is below ``−m``, ``undecided`` otherwise.
  Fewer than 2 pairs: ``no verdict (n < 2)``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from maxq.methods import METHODS, is_dense

#: the registry's dense baseline (the one method without a mask), for tables and callers; which
#: runs are dense is asked of the registry (:func:`maxq.methods.is_dense`), never of this name
DENSE = next(name for name, spec in METHODS.items() if not spec.sparse)
METRIC = "best_top1"          # the paper's metric: best-epoch top-1
CONFIDENCE = 0.95
SUMMARY_COLUMNS = ("row", "arch", "N", "M", "method", "method_label", "n", "top1_mean",
                   "top1_std", "top1_ci95_low", "top1_ci95_high", "top5_mean",
                   "delta_to_dense", "dead_weight_share", "paper_top1", "gap_to_paper")
CLAIM_COLUMNS = ("claim", "paper", "row", "method_a", "method_b", "row_b", "n_pairs",
                 "delta_mean", "delta_ci95_low", "delta_ci95_high", "margin", "verdict")


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE
                  ) -> tuple[float, float, float, float, int]:
    """``(mean, std, low, high, n)`` of ``values`` (NaNs dropped); Student t interval, NaN
    bounds for fewer than two values."""
    x = pd.to_numeric(pd.Series(list(values), dtype="float64"), errors="coerce").dropna()
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan, n
    std = float(x.std(ddof=1))
    if std == 0:
        return mean, 0.0, mean, mean, n
    low, high = scipy_stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return mean, std, float(low), float(high), n


def verdict(low: float, high: float, n: int, margin: float | None = None) -> str:
    """The verdict of a claim from the interval of ``A − B`` (see the module doc)."""
    if n < 2 or not (np.isfinite(low) and np.isfinite(high)):
        return "no verdict (n < 2)"
    if margin is None:
        if low > 0:
            return "ahead"
        if high < 0:
            return "behind"
        return "within noise"
    if low > -margin:
        return "within margin"
    if high < -margin:
        return "outside margin"
    return "undecided"


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, metric: str = METRIC) -> pd.Series:
    """``A_s − B_s`` of ``metric`` for every seed s that both run tables hold."""
    paired = a[["seed", metric]].merge(b[["seed", metric]], on="seed", suffixes=("_a", "_b"))
    return paired[f"{metric}_a"] - paired[f"{metric}_b"]


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    if not len(runs):
        return runs
    return runs[runs["finished"].astype(bool)]


def _dense(methods: pd.Series) -> pd.Series:
    """Which of ``methods`` are dense (:func:`maxq.methods.is_dense`), as a boolean Series."""
    return methods.map(is_dense).astype(bool)


def dense_reference(runs: pd.DataFrame, row: str) -> pd.DataFrame:
    """The dense runs a row is compared with: the row's own runs of a dense method
    (:func:`maxq.methods.is_dense`), else those of the study's dense-only rows of the same
    architecture and width."""
    runs = _finished(runs)
    own = runs[(runs["row"] == row) & _dense(runs["method"])]
    if len(own) or not len(runs):
        return own
    this = runs[runs["row"] == row]
    if not len(this):
        return own
    arch, width = this["arch"].iloc[0], this["width_mult"].iloc[0]
    dense_rows = [r for r, sub in runs.groupby("row", sort=False)
                  if _dense(sub["method"]).all()]
    same = runs[runs["row"].isin(dense_rows) & (runs["arch"] == arch)]
    if "width_mult" in same and pd.notna(width):
        same = same[same["width_mult"] == width]
    return same


def summary(runs: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """One line per (row, method), in study order: n, mean/std/95 % CI of top-1, mean top-5,
    Δ to dense (mean of the seed-paired differences when seeds match, else of the means), the
    run's dead-weight share, the paper's top-1 and the gap ours − paper."""
    done = _finished(runs)
    out = []
    if not len(done):
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    for (row, method), sub in done.groupby(["row", "method"], sort=False):
        mean, std, low, high, n = mean_interval(sub[metric])
        top5 = metric.replace("top1", "top5")
        dense = dense_reference(runs, row)
        delta = math.nan
        if not is_dense(method) and len(dense):
            diffs = paired_differences(sub, dense, metric)
            delta = (float(diffs.mean()) if len(diffs)
                     else mean - float(dense[metric].mean()))
        share = pd.to_numeric(sub["dead_weight_share"], errors="coerce")
        if share.isna().all():               # dense runs: the share of the row's sparse layers
            share = pd.to_numeric(done.loc[done["row"] == row, "dead_weight_share"],
                                  errors="coerce")
        paper = sub["paper_top1"].iloc[0] if "paper_top1" in sub else math.nan
        out.append({
            "row": row, "arch": sub["arch"].iloc[0], "N": sub["N"].iloc[0], "M": sub["M"].iloc[0],
            "method": method, "method_label": sub["method_label"].iloc[0], "n": n,
            "top1_mean": mean, "top1_std": std, "top1_ci95_low": low, "top1_ci95_high": high,
            "top5_mean": float(pd.to_numeric(sub[top5], errors="coerce").mean()),
            "delta_to_dense": delta,
            "dead_weight_share": float(share.max()) if share.notna().any() else math.nan,
            "paper_top1": paper,
            "gap_to_paper": mean - paper if pd.notna(paper) else math.nan,
        })
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def claim_table(runs: pd.DataFrame, claims: Sequence[dict[str, Any]],
                metric: str = METRIC) -> pd.DataFrame:
    """One line per claim: seed-paired ``A − B`` (mean, 95 % CI, pairs) and the verdict."""
    done = _finished(runs)
    out = []
    for claim in claims:
        a = done[(done["row"] == claim["row_a"]) & (done["method"] == claim["method_a"])] \
            if len(done) else done
        b = done[(done["row"] == claim["row_b"]) & (done["method"] == claim["method_b"])] \
            if len(done) else done
        diffs = (paired_differences(a, b, metric) if len(a) and len(b)
                 else pd.Series([], dtype="float64"))
        mean, _, low, high, n = mean_interval(diffs)
        margin = claim.get("margin")
        out.append({
            "claim": claim["claim"], "paper": claim.get("paper", ""), "row": claim["row_a"],
            "method_a": claim["method_a"], "method_b": claim["method_b"],
            "row_b": claim["row_b"], "n_pairs": n, "delta_mean": mean,
            "delta_ci95_low": low, "delta_ci95_high": high,
            "margin": math.nan if margin is None else float(margin),
            "verdict": verdict(low, high, n, None if margin is None else float(margin)),
        })
    return pd.DataFrame(out, columns=list(CLAIM_COLUMNS))


def pairwise(runs: pd.DataFrame, method_a: str, method_b: str,
             metric: str = METRIC) -> pd.DataFrame:
    """Per row where both methods ran: seed-paired ``A − B`` with its 95 % CI and verdict (the
    MaxQ − SR-STE line of every row of a table)."""
    done = _finished(runs)
    out = []
    if not len(done):
        return pd.DataFrame(columns=["row", "n_pairs", "delta_mean", "delta_ci95_low",
                                     "delta_ci95_high", "verdict"])
    for row, sub in done.groupby("row", sort=False):
        a, b = sub[sub["method"] == method_a], sub[sub["method"] == method_b]
        if not (len(a) and len(b)):
            continue
        mean, _, low, high, n = mean_interval(paired_differences(a, b, metric))
        out.append({"row": row, "n_pairs": n, "delta_mean": mean, "delta_ci95_low": low,
                    "delta_ci95_high": high, "verdict": verdict(low, high, n)})
    return pd.DataFrame(out, columns=["row", "n_pairs", "delta_mean", "delta_ci95_low",
                                      "delta_ci95_high", "verdict"])


def robustness(reference: pd.DataFrame, rerun: pd.DataFrame,
               metric: str = METRIC) -> pd.DataFrame:
    """How far per-(row, method) means move between two sets of the same runs (e.g. another
    thread count or machine), next to the width of the reference's 95 % CI; also the largest
    change of a single run (same row, method and seed in both)."""
    ref, new = summary(reference, metric), summary(rerun, metric)
    merged = ref.merge(new, on=["row", "method"], suffixes=("", "_rerun"))
    merged["mean_shift"] = merged["top1_mean_rerun"] - merged["top1_mean"]
    merged["ci95_width"] = merged["top1_ci95_high"] - merged["top1_ci95_low"]
    merged["shift_over_ci_width"] = merged["mean_shift"].abs() / merged["ci95_width"]
    keys = ["row", "method", "seed"]
    runs = _finished(reference)[keys + [metric]].merge(
        _finished(rerun)[keys + [metric]], on=keys, suffixes=("", "_rerun"))
    runs["change"] = (runs[f"{metric}_rerun"] - runs[metric]).abs()
    largest = runs.groupby(["row", "method"], sort=False)["change"].max().rename(
        "largest_run_change").reset_index()
    merged = merged.merge(largest, on=["row", "method"], how="left")
    return merged[["row", "method", "n", "n_rerun", "top1_mean", "top1_mean_rerun",
                   "mean_shift", "ci95_width", "shift_over_ci_width", "largest_run_change"]]


def claims_rerun(reference: pd.DataFrame, rerun: pd.DataFrame,
                 claims: Sequence[dict[str, Any]], metric: str = METRIC) -> pd.DataFrame:
    """Each claim whose runs the re-run holds: Δ (mean [95 % CI]) and verdict in the reference
    and in the re-run, and whether the verdict is the same."""
    done = _finished(rerun)
    pairs = {(r, m) for r, m in zip(done["row"], done["method"])} if len(done) else set()
    held = [c for c in claims if (c["row_a"], c["method_a"]) in pairs
            and (c["row_b"], c["method_b"]) in pairs]
    cols = ["claim", "delta_mean", "delta_ci95_low", "delta_ci95_high", "n_pairs", "verdict"]
    ref, new = claim_table(reference, held, metric)[cols], claim_table(rerun, held, metric)[cols]
    out = ref.merge(new, on="claim", suffixes=("", "_rerun"))
    out["same_verdict"] = out["verdict"] == out["verdict_rerun"]
    return out


def robustness_markdown(table: pd.DataFrame, claims: pd.DataFrame,
                        threads: tuple[Any, Any] | None = None) -> str:
    """The robustness section: per (row, method) the mean's shift next to the CI width, each
    claim's verdict in both sets, and one sentence computed from those numbers."""
    if not len(table):
        return "_no run of the re-run matches a finished run of this study_\n"
    lines = []
    if threads is not None:
        lines.append(f"Reference runs: {threads[0]} thread(s) per run; re-run: {threads[1]}.\n")
    frame = pd.DataFrame({
        "row": table["row"], "method": table["method"],
        "n (ref / rerun)": [f"{a} / {b}" for a, b in zip(table["n"], table["n_rerun"])],
        "mean (ref → rerun)": [f"{a:.2f} → {b:.2f}" for a, b in
                               zip(table["top1_mean"], table["top1_mean_rerun"])],
        "shift": [f"{x:+.2f}" for x in table["mean_shift"]],
        "95 % CI width": [f"{x:.2f}" for x in table["ci95_width"]],
        # no "|" in a header: Markdown reads it as a cell border and prints the table as text
        "abs(shift) / CI width": [f"{x:.2f}" for x in table["shift_over_ci_width"]],
        "largest single-run change": [f"{x:.2f}" for x in table["largest_run_change"]],
    })
    lines.append(frame.to_markdown(index=False, disable_numparse=True) + "\n")
    if len(claims):
        cf = pd.DataFrame({
            "claim": claims["claim"],
            "Δ reference": [interval_text(m, lo, hi, signed=True) for m, lo, hi in zip(
                claims["delta_mean"], claims["delta_ci95_low"], claims["delta_ci95_high"])],
            "verdict": claims["verdict"],
            "Δ re-run": [interval_text(m, lo, hi, signed=True) for m, lo, hi in zip(
                claims["delta_mean_rerun"], claims["delta_ci95_low_rerun"],
                claims["delta_ci95_high_rerun"])],
            "verdict (re-run)": claims["verdict_rerun"],
        })
        lines.append(cf.to_markdown(index=False, disable_numparse=True) + "\n")
    ratio = pd.to_numeric(table["shift_over_ci_width"], errors="coerce")
    ratio = ratio[np.isfinite(ratio)]
    sentence = (f"The means moved by at most {table['mean_shift'].abs().max():.2f} points; "
                f"single runs changed by up to {table['largest_run_change'].max():.2f} points. ")
    if not len(ratio):
        sentence += "No 95 % CI to compare with (n < 2 per row and method)"
    elif ratio.max() < 1:
        sentence += (f"Every mean stayed within its CI's width (largest |shift| = "
                     f"{ratio.max():.2f} × the CI width)")
    else:
        sentence += (f"Some mean moved by more than its CI's width (largest |shift| = "
                     f"{ratio.max():.2f} × the CI width)")
    if len(claims):
        same = bool(claims["same_verdict"].all())
        sentence += ("; every claim kept its verdict." if same
                     else "; some claims changed verdict (see above).")
    else:
        sentence += "."
    lines.append(sentence + "\n")
    return "\n".join(lines)


def verdicts_markdown(claims: pd.DataFrame) -> str:
    """The report's first section: claim, the paper's statement, the proxy's Δ with CI,
    verdict — every number from ``claims`` (:func:`claim_table`)."""
    if not len(claims):
        return "_this study makes no claims (no [[claims]] in its study file)_\n"
    frame = pd.DataFrame({
        "claim": claims["claim"], "paper": claims["paper"],
        "Δ top-1 (A − B), mean [95 % CI]": [
            interval_text(m, lo, hi, signed=True) for m, lo, hi in zip(
                claims["delta_mean"], claims["delta_ci95_low"], claims["delta_ci95_high"])],
        "pairs": claims["n_pairs"], "verdict": [f"**{v}**" for v in claims["verdict"]],
    })
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"


def summary_markdown(table: pd.DataFrame) -> str:
    """The per-(row, method) table as Markdown: mean [95 % CI] (n), Δ to dense, gap to paper."""
    if not len(table):
        return "_no finished runs yet_\n"
    def num(values, fmt: str) -> list[str]:
        return [format(v, fmt) if pd.notna(v) else "–" for v in values]

    frame = pd.DataFrame({
        "row": table["row"],
        "N:M": ["dense" if is_dense(method) else f"{n}:{m}"
                for method, n, m in zip(table["method"], table["N"], table["M"])],
        "method": table["method_label"],
        "top-1 mean [95 % CI]": [interval_text(m, lo, hi) for m, lo, hi in zip(
            table["top1_mean"], table["top1_ci95_low"], table["top1_ci95_high"])],
        "n": table["n"], "std": num(table["top1_std"], ".2f"),
        "Δ to dense": num(table["delta_to_dense"], "+.2f"),
        "dead weights": num(table["dead_weight_share"], ".0%"),
        "paper top-1": num(table["paper_top1"], ".1f"),
        "ours − paper": num(table["gap_to_paper"], "+.1f"),
    })
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"


def interval_text(mean: float, low: float, high: float, signed: bool = False) -> str:
    """``mean [low, high]`` with 2 decimals (signed for differences); says so when n < 2."""
    if not np.isfinite(mean):
        return "–"
    fmt = "+.2f" if signed else ".2f"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:{fmt}} (no CI: n < 2)"
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def convergence(epochs: pd.DataFrame, runs: pd.DataFrame, threshold: float = 0.5,
                method: str | None = None) -> pd.DataFrame:
    """Did training converge? Per finished run of ``method`` (None: of the dense methods,
    :func:`maxq.methods.is_dense`): validation top-1 gained over its last two epochs (last − two
    epochs before) and whether that gain is below ``threshold`` points."""
    done = _finished(runs)
    if len(done):
        done = done[_dense(done["method"]) if method is None else done["method"] == method]
    out = []
    for run in done["run"] if len(done) else []:
        curve = epochs[epochs["run"] == run].sort_values("epoch")["val_top1"].tolist()
        if len(curve) < 3:
            continue
        gain = curve[-1] - curve[-3]
        out.append({"run": run, "last_top1": curve[-1], "gain_last_two_epochs": gain,
                    "converged": bool(gain < threshold)})
    return pd.DataFrame(out, columns=["run", "last_top1", "gain_last_two_epochs", "converged"])


def convergence_markdown(table: pd.DataFrame, threshold: float = 0.5) -> str:
    """One sentence and the table: the dense runs' gain over their last two epochs."""
    if not len(table):
        return "_no finished dense run with 3 or more epochs: convergence not checked_\n"
    met = int(table["converged"].sum())
    text = (f"Dense runs' validation top-1 gain over their last two epochs: mean "
            f"{table['gain_last_two_epochs'].mean():+.2f} points (range "
            f"{table['gain_last_two_epochs'].min():+.2f} to "
            f"{table['gain_last_two_epochs'].max():+.2f}); below {threshold} points in {met} of "
            f"{len(table)} runs: **{'converged' if met == len(table) else 'not converged'}** by "
            f"that criterion.\n\n")
    return text + table.round(2).to_markdown(index=False) + "\n"


# ----------------------------------------------------------------------------- replication
REPLICATION_COLUMNS = ("claim", "metric", "seeds_discovery", "delta_discovery",
                       "verdict_discovery", "seeds_heldout", "delta_heldout", "verdict_heldout",
                       "delta_all", "verdict_all", "replicated")


def _seed_text(runs: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in runs["seed"].dropna()}) if len(runs) else []
    if not seeds:
        return "–"
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def replication(discovery: pd.DataFrame, heldout: pd.DataFrame,
                claims: Sequence[dict[str, Any]],
                metrics: Sequence[str] = (METRIC, "last_top1")) -> pd.DataFrame:
    """Does each claim's verdict replicate on held-out seeds? Per claim and metric: the
    seed-paired ``A − B`` with its 95 % CI and verdict on the discovery seeds, on the held-out
    seeds and on both pooled; ``replicated`` only when both halves have a verdict (≥ 2 pairs)
    and it is the same one. The two run tables must not share a (row, method, seed)."""
    keys = ["row", "method", "seed"]
    a, b = _finished(discovery), _finished(heldout)
    if len(a) and len(b):
        shared = a[keys].merge(b[keys], on=keys)
        if len(shared):
            first = shared.iloc[0]
            raise ValueError(f"discovery and held-out runs share seeds, e.g. row "
                             f"{first['row']!r}, method {first['method']!r}, seed "
                             f"{first['seed']}: held-out seeds must be new seeds")
    pooled = pd.concat([a, b], ignore_index=True) if len(a) or len(b) else a
    out = []
    for claim in claims:
        for metric in metrics:
            parts = {}
            for name, runs in (("discovery", a), ("heldout", b), ("all", pooled)):
                line = claim_table(runs, [claim], metric).iloc[0]
                parts[name] = line
            vd, vh = parts["discovery"]["verdict"], parts["heldout"]["verdict"]
            decided = parts["discovery"]["n_pairs"] >= 2 and parts["heldout"]["n_pairs"] >= 2
            cells = {"claim": claim["claim"], "metric": metric}
            for name, line in parts.items():
                cells[f"delta_{name}"] = interval_text(
                    line["delta_mean"], line["delta_ci95_low"], line["delta_ci95_high"],
                    signed=True) + f" (n = {line['n_pairs']})"
                cells[f"verdict_{name}"] = line["verdict"]
            for name, runs in (("discovery", a), ("heldout", b)):
                used = runs[((runs["row"] == claim["row_a"]) & (runs["method"] == claim["method_a"]))
                            ] if len(runs) else runs
                cells[f"seeds_{name}"] = _seed_text(used)
            cells["replicated"] = bool(decided and vd == vh)
            out.append(cells)
    return pd.DataFrame(out, columns=list(REPLICATION_COLUMNS))


def replication_markdown(table: pd.DataFrame, discovery_source: str = "") -> str:
    """The replication section: per claim and metric the verdict on each half and pooled, and
    one sentence counting the claims whose verdict replicated by the paper's metric."""
    if not len(table):
        return "_no claims to replicate_\n"
    names = {METRIC: "best epoch", "last_top1": "last epoch"}
    frame = pd.DataFrame({
        "claim": table["claim"],
        "top-1": [names.get(m, m) for m in table["metric"]],
        "discovery seeds": table["seeds_discovery"],
        "Δ discovery [95 % CI]": table["delta_discovery"],
        "verdict": table["verdict_discovery"],
        "held-out seeds": table["seeds_heldout"],
        "Δ held-out [95 % CI]": table["delta_heldout"],
        "verdict (held-out)": table["verdict_heldout"],
        "Δ all seeds [95 % CI]": table["delta_all"],
        "verdict (all)": table["verdict_all"],
        "replicated": ["**replicated**" if r else "not replicated" for r in table["replicated"]],
    })
    main = table[table["metric"] == METRIC]
    agree = main[main["replicated"]]
    text = (f"By best-epoch top-1 (the paper's metric) {len(agree)} of {len(main)} claims give the "
            f"same verdict on the held-out seeds as on the discovery seeds")
    if len(agree):
        text += ": " + "; ".join(f"{c} ({v})" for c, v in
                                 zip(agree["claim"], agree["verdict_discovery"]))
    text += ". A verdict is called replicated only when both halves agree.\n"
    source = f"Discovery runs: {discovery_source}.\n\n" if discovery_source else ""
    return source + frame.to_markdown(index=False, disable_numparse=True) + "\n\n" + text
# ============================================================================ N:M leaderboard
#: the leaderboard's default references, the paper's own comparison (data, like a study file's
#: method list: which methods to compare with, not what a method is; ``references`` overrides)
MAXQ = "SoftMaxQConv2DBN"
SRSTE = "SoftSRSTEConv2dBN"
LEADERBOARD_COLUMNS = ("row", "N", "M", "density", "method", "method_label", "metric", "n",
                       "mean", "ci95_low", "ci95_high", "vs_maxq_n", "vs_maxq_mean",
                       "vs_maxq_low", "vs_maxq_high", "vs_maxq_verdict", "vs_srste_n",
                       "vs_srste_mean", "vs_srste_low", "vs_srste_high", "vs_srste_verdict")


def leaderboard(runs: pd.DataFrame, metrics: Sequence[str] = ("best_top1", "last_top1"),
                references: dict[str, str] | None = None) -> pd.DataFrame:
    """The N:M leaderboard: one line per (row, method, metric) in study order, for the best- and
    the last-epoch top-1: n, mean and 95 % CI over the seeds, and the seed-paired difference
    ``method − reference`` (mean, CI, pairs, :func:`verdict`) against MaxQ and against SR-STE
    in the same row (NaN / "" for the reference itself or where it did not run). ``density`` is
    N/M (1 for dense). ``references``: ``{"maxq": method, "srste": method}`` to compare with
    other methods."""
    refs = {"maxq": MAXQ, "srste": SRSTE, **(references or {})}
    done = _finished(runs)
    out = []
    if not len(done):
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    for metric in metrics:
        for (row, method), sub in done.groupby(["row", "method"], sort=False):
            mean, _, low, high, n = mean_interval(sub[metric])
            N, M = int(sub["N"].iloc[0]), int(sub["M"].iloc[0])
            line = {"row": row, "N": N, "M": M,
                    "density": 1.0 if is_dense(method) else N / M, "method": method,
                    "method_label": sub["method_label"].iloc[0], "metric": metric, "n": n,
                    "mean": mean, "ci95_low": low, "ci95_high": high}
            for key, ref in (("vs_maxq", refs["maxq"]), ("vs_srste", refs["srste"])):
                other = done[(done["row"] == row) & (done["method"] == ref)]
                if method == ref or is_dense(method) or not len(other):
                    line.update({f"{key}_n": 0, f"{key}_mean": math.nan, f"{key}_low": math.nan,
                                 f"{key}_high": math.nan, f"{key}_verdict": ""})
                    continue
                d_mean, _, d_low, d_high, d_n = mean_interval(
                    paired_differences(sub, other, metric))
                line.update({f"{key}_n": d_n, f"{key}_mean": d_mean, f"{key}_low": d_low,
                             f"{key}_high": d_high, f"{key}_verdict": verdict(d_low, d_high, d_n)})
            out.append(line)
    return pd.DataFrame(out, columns=list(LEADERBOARD_COLUMNS))


def leaderboard_markdown(table: pd.DataFrame, metric: str = "best_top1") -> str:
    """The leaderboard of one metric as Markdown: per N:M row, each method's mean top-1 [95 %
    CI] (n), and its paired difference to MaxQ and to SR-STE with the verdict."""
    sub = table[table["metric"] == metric]
    if not len(sub):
        return "_no finished runs yet_\n"

    def delta(r, key: str) -> str:
        if not r[f"{key}_verdict"]:
            return "-"
        return (f"{interval_text(r[f'{key}_mean'], r[f'{key}_low'], r[f'{key}_high'], True)} "
                f"{r[f'{key}_verdict']}")
    frame = pd.DataFrame({
        "N:M": [("dense" if is_dense(r["method"]) else f"{r['N']}:{r['M']}")
                for _, r in sub.iterrows()],
        "method": sub["method_label"],
        "top-1 [95 % CI]": [interval_text(r["mean"], r["ci95_low"], r["ci95_high"])
                            for _, r in sub.iterrows()],
        "n": sub["n"].astype(int),
        "vs MaxQ": [delta(r, "vs_maxq") for _, r in sub.iterrows()],
        "vs SR-STE": [delta(r, "vs_srste") for _, r in sub.iterrows()],
    })
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"
