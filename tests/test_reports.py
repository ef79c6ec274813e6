"""The committed reports keep the contract for checks (issue: evidence, item 8) and their numbers
follow from their own runs: every mean and interval of ``summary.csv`` is recomputed from
``runs.csv``, every verdict of ``claims.csv`` and ``ablation.csv`` from its interval."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maxq import stats

REPORTS = Path(__file__).resolve().parents[1] / "reports"
COMMITTED = sorted(p.name for p in REPORTS.iterdir() if (p / "summary.csv").exists())
SUMMARY_CONTRACT = ("row", "arch", "N", "M", "method", "n", "top1_mean", "top1_std",
                    "top1_ci95_low", "top1_ci95_high", "dead_weight_share", "paper_top1")
CLAIMS_CONTRACT = ("claim", "row", "method_a", "method_b", "n_pairs", "delta_mean",
                   "delta_ci95_low", "delta_ci95_high", "verdict")


def _machine_paths(report: str) -> list[str]:
    """The absolute paths a committed report's notebook and papermill log record as its inputs
    and outputs (parameters, papermill's input/output path, the log's first lines)."""
    folder = REPORTS / report
    papermill = json.loads((folder / "report.ipynb").read_text(encoding="utf-8"))[
        "metadata"]["papermill"]
    recorded = [papermill.get("input_path"), papermill.get("output_path"),
                *(value for value in papermill["parameters"].values() if isinstance(value, str))]
    log = (folder / "papermill.log").read_text(encoding="utf-8").splitlines()[:3]
    recorded += [line.split("Notebook:", 1)[1].strip() for line in log if "Notebook:" in line]
    recorded += [line for line in log if "Working directory" in line]
    return [text for text in recorded if text and (text.startswith("/") or "Working" in text)]


@pytest.mark.parametrize("report", COMMITTED)
def test_a_committed_report_names_no_machine_folder(report):
    # the notebook ran in the checkout and got paths relative to it (maxq report)
    assert _machine_paths(report) == []


def test_the_evidence_reports_are_committed():
    assert {"cpu", "claims", "ablation"} <= set(COMMITTED)


@pytest.mark.parametrize("report", COMMITTED)
def test_summary_is_recomputed_from_the_runs(report):
    summary = pd.read_csv(REPORTS / report / "summary.csv")
    assert set(SUMMARY_CONTRACT) <= set(summary.columns)
    runs = pd.read_csv(REPORTS / report / "runs.csv")
    done = runs[runs["finished"].astype(bool)]
    for _, line in summary.iterrows():
        values = done[(done["row"] == line["row"]) & (done["method"] == line["method"])]
        mean, std, low, high, n = stats.mean_interval(values["best_top1"])
        assert line["n"] == n and line["top1_mean"] == pytest.approx(mean), line["row"]
        if n > 1:
            assert (line["top1_std"], line["top1_ci95_low"], line["top1_ci95_high"]) == (
                pytest.approx(std), pytest.approx(low), pytest.approx(high)), line["row"]
        if pd.isna(line["dead_weight_share"]):       # a dense-only row has no sparse layer
            assert set(done.loc[done["row"] == line["row"], "method"]) == {stats.DENSE}, line["row"]
        else:
            assert line["dead_weight_share"] <= 0.05, line["row"]


@pytest.mark.parametrize("report", [r for r in COMMITTED
                                    if (REPORTS / r / "claims.csv").exists()])
def test_claim_verdicts_follow_from_their_intervals(report):
    claims = pd.read_csv(REPORTS / report / "claims.csv")
    assert set(CLAIMS_CONTRACT) <= set(claims.columns) and len(claims)
    for _, c in claims.iterrows():
        margin = None if pd.isna(c["margin"]) else float(c["margin"])
        assert c["n_pairs"] >= 2, c["claim"]          # never a verdict from one run
        assert c["verdict"] == stats.verdict(c["delta_ci95_low"], c["delta_ci95_high"],
                                             c["n_pairs"], margin), c["claim"]
        assert c["delta_ci95_low"] <= c["delta_mean"] <= c["delta_ci95_high"], c["claim"]


@pytest.mark.parametrize("report", [r for r in COMMITTED
                                    if (REPORTS / r / "ablation.csv").exists()])
def test_ablation_verdicts_follow_from_the_seed_pairs(report):
    table = pd.read_csv(REPORTS / report / "ablation.csv")
    runs = pd.read_csv(REPORTS / report / "runs.csv").set_index("run")
    for group, arms in table.groupby("group", sort=False):
        base = arms.iloc[0]
        assert base["verdict"] == "baseline" and (arms["baseline"] == base["arm"]).all()
        base_top1 = runs.loc[base["runs"].split()].set_index("seed")["best_top1"]
        for _, arm in arms.iloc[1:].iterrows():
            top1 = runs.loc[arm["runs"].split()].set_index("seed")["best_top1"]
            diffs = (top1 - base_top1).dropna()
            mean, _, low, high, n = stats.mean_interval(diffs)
            assert arm["n_pairs"] == n and arm["delta_mean"] == pytest.approx(mean)
            if n > 1:
                assert (arm["delta_ci95_low"], arm["delta_ci95_high"]) == (
                    pytest.approx(low), pytest.approx(high))
            assert arm["verdict"] == stats.verdict(low, high, n), (group, arm["arm"])
    assert np.isfinite(table["mean"]).all()
