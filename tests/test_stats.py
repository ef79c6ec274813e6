"""maxq.stats: intervals, seed pairing, verdicts, dense reference — on run tables shaped like
``maxq.results.load(...).runs``."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from maxq import stats


def _runs(cells: dict[tuple[str, str], list[float]], arch: str = "resnet18") -> pd.DataFrame:
    """A runs table: ``{(row, method): [top-1 per seed 0, 1, ...]}``."""
    lines = []
    for (row, method), values in cells.items():
        N, M = (2, 4) if row in ("dense", "2of4") else (1, 16)
        for seed, value in enumerate(values):
            lines.append({"row": row, "method": method, "method_label": method, "seed": seed,
                          "arch": arch, "N": N, "M": M, "width_mult": 0.25, "finished": True,
                          "best_top1": value, "best_top5": 99.0, "paper_top1": 75.2,
                          "dead_weight_share": 0.0 if method != stats.DENSE else np.nan})
    return pd.DataFrame(lines)


def test_mean_interval_is_student_t():
    values = [80.0, 81.0, 82.5, 79.5, 80.5]
    mean, std, low, high, n = stats.mean_interval(values)
    half = 2.7764451051977987 * np.std(values, ddof=1) / math.sqrt(5)   # t(0.975, 4)
    assert n == 5 and mean == pytest.approx(np.mean(values))
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert std == pytest.approx(np.std(values, ddof=1))


def test_one_value_has_no_interval_and_no_verdict():
    mean, std, low, high, n = stats.mean_interval([80.0, float("nan")])
    assert (mean, n) == (80.0, 1) and math.isnan(low) and math.isnan(high)
    assert stats.verdict(low, high, n) == "no verdict (n < 2)"


@pytest.mark.parametrize("low, high, margin, expected", [
    (0.1, 0.9, None, "ahead"), (-0.9, -0.1, None, "behind"), (-0.2, 0.4, None, "within noise"),
    (-0.5, 0.3, 1.0, "within margin"), (-2.5, -1.2, 1.0, "outside margin"),
    (-1.5, -0.2, 1.0, "undecided"),
])
def test_verdicts_follow_the_interval(low, high, margin, expected):
    assert stats.verdict(low, high, 5, margin) == expected


def test_claims_pair_by_seed():
    """A consistent +1 per seed is 'ahead' though the two groups' intervals overlap widely."""
    base = [70.0, 75.0, 80.0, 85.0, 90.0]
    runs = _runs({("1of16", "SR"): base, ("1of16", "MQ"): [v + 1.0 for v in base]})
    claims = [{"claim": "MQ beats SR", "row_a": "1of16", "method_a": "MQ", "row_b": "1of16",
               "method_b": "SR"}]
    table = stats.claim_table(runs, claims)
    line = table.iloc[0]
    assert line["n_pairs"] == 5 and line["delta_mean"] == pytest.approx(1.0)
    assert line["verdict"] == "ahead"
    summary = stats.summary(runs).set_index("method")
    assert summary.loc["MQ", "top1_ci95_low"] < summary.loc["SR", "top1_ci95_high"]


def test_claims_use_only_seeds_both_sides_finished():
    runs = _runs({("1of16", "SR"): [80.0, 81.0, 79.0], ("1of16", "MQ"): [81.0, 80.0]})
    runs.loc[(runs["method"] == "SR") & (runs["seed"] == 0), "finished"] = False
    claims = [{"claim": "c", "row_a": "1of16", "method_a": "MQ", "row_b": "1of16",
               "method_b": "SR"}]
    line = stats.claim_table(runs, claims).iloc[0]
    assert line["n_pairs"] == 1 and line["delta_mean"] == pytest.approx(-1.0)
    assert line["verdict"] == "no verdict (n < 2)"


def test_margin_claim_against_a_dense_row():
    runs = _runs({("dense", stats.DENSE): [85.0, 85.2, 84.8, 85.1, 85.0],
                  ("2of4", "MQ"): [84.6, 84.9, 84.5, 84.7, 84.6]})
    claims = [{"claim": "within 1", "row_a": "2of4", "method_a": "MQ", "row_b": "dense",
               "method_b": stats.DENSE, "margin": 1.0}]
    line = stats.claim_table(runs, claims).iloc[0]
    assert line["verdict"] == "within margin" and line["margin"] == 1.0
    # the summary finds the dense-only row as the reference of a sparse row of the same arch
    summary = stats.summary(runs).set_index(["row", "method"])
    assert summary.loc[("2of4", "MQ"), "delta_to_dense"] == pytest.approx(-0.36)
    assert math.isnan(summary.loc[("dense", stats.DENSE), "delta_to_dense"])


def test_pairwise_per_row_and_robustness():
    runs = _runs({("1of16", "SR"): [80.0, 81.0, 82.0], ("1of16", "MQ"): [79.0, 80.5, 80.0]})
    pairs = stats.pairwise(runs, "MQ", "SR")
    assert list(pairs["row"]) == ["1of16"] and pairs["delta_mean"].iloc[0] == pytest.approx(-7 / 6)
    shifted = runs.assign(best_top1=runs["best_top1"] + 0.1)
    robust = stats.robustness(runs, shifted)
    assert robust["mean_shift"].tolist() == pytest.approx([0.1, 0.1])
    assert (robust["shift_over_ci_width"] > 0).all()
    assert robust["largest_run_change"].tolist() == pytest.approx([0.1, 0.1])
    # a re-run that flips one seed of MQ far enough changes the claim's verdict, and says so
    claim = [{"claim": "MQ beats SR", "row_a": "1of16", "method_a": "MQ",
              "row_b": "1of16", "method_b": "SR"}]
    flipped = runs.copy()
    flipped.loc[flipped["method"] == "MQ", "best_top1"] = [85.0, 86.0, 85.5]
    compared = stats.claims_rerun(runs, flipped, claim)
    assert compared["verdict"].tolist() == ["within noise"]
    assert compared["verdict_rerun"].tolist() == ["ahead"]
    assert not compared["same_verdict"].iloc[0]
    text = stats.robustness_markdown(stats.robustness(runs, flipped), compared, (1, 2))
    assert "some claims changed verdict" in text and "more than its CI's width" in text
    steady = stats.robustness_markdown(robust, stats.claims_rerun(runs, shifted, claim))
    assert "every claim kept its verdict" in steady and "within its CI's width" in steady
    # claims whose runs the re-run lacks are left out
    assert not len(stats.claims_rerun(runs, runs[runs["method"] == "SR"], claim))


def test_markdown_renders_every_claim_and_row():
    runs = _runs({("1of16", "SR"): [80.0, 81.0], ("1of16", "MQ"): [81.0, 82.5]})
    claims = stats.claim_table(runs, [{"claim": "MQ beats SR", "paper": "+2.8", "row_a": "1of16",
                                       "method_a": "MQ", "row_b": "1of16", "method_b": "SR"}])
    text = stats.verdicts_markdown(claims)
    assert "MQ beats SR" in text and "+2.8" in text and "+1.25" in text
    assert "1of16" in stats.summary_markdown(stats.summary(runs))
    assert "no claims" in stats.verdicts_markdown(claims.iloc[0:0])


def test_convergence_of_the_dense_runs():
    runs = _runs({("dense", stats.DENSE): [85.0, 86.0], ("2of4", "MQ"): [84.0, 85.0]})
    runs["run"] = [f"r{i}" for i in range(len(runs))]
    curves = {"r0": [80.0, 84.8, 84.9, 85.0], "r1": [80.0, 84.0, 85.0, 86.0]}
    epochs = pd.DataFrame([{"run": run, "epoch": e, "val_top1": v}
                           for run, curve in curves.items() for e, v in enumerate(curve)])
    table = stats.convergence(epochs, runs)
    assert table["gain_last_two_epochs"].tolist() == pytest.approx([0.2, 2.0])
    assert table["converged"].tolist() == [True, False]
    assert "not converged" in stats.convergence_markdown(table)


# ----------------------------------------------------------------------------- replication
_CLAIM = [{"claim": "MQ beats SR", "row_a": "1of16", "method_a": "MQ", "row_b": "1of16",
           "method_b": "SR"}]


def _shifted(runs: pd.DataFrame, by: int) -> pd.DataFrame:
    out = runs.copy()
    out["seed"] = out["seed"] + by
    out["last_top1"] = out["best_top1"]
    return out


def test_replication_calls_a_verdict_replicated_only_when_both_halves_agree():
    base = [70.0, 75.0, 80.0, 85.0, 90.0]
    ahead = _shifted(_runs({("1of16", "SR"): base, ("1of16", "MQ"): [v + 1.0 for v in base]}), 0)
    noisy = _shifted(_runs({("1of16", "SR"): base,
                            ("1of16", "MQ"): [v + d for v, d in zip(base, [3, -2, 2, -3, 1])]}), 5)
    table = stats.replication(ahead, noisy, _CLAIM, metrics=("best_top1",))
    line = table.iloc[0]
    assert (line["verdict_discovery"], line["verdict_heldout"]) == ("ahead", "within noise")
    assert not line["replicated"]
    assert line["seeds_discovery"] == "0–4" and line["seeds_heldout"] == "5–9"
    # the pooled verdict is the claim table's on all ten seeds
    pooled = stats.claim_table(pd.concat([ahead, noisy]), _CLAIM).iloc[0]
    assert line["verdict_all"] == pooled["verdict"]
    assert line["delta_all"].startswith(f"{pooled['delta_mean']:+.2f} [")
    again = _shifted(ahead, 5)
    same = stats.replication(ahead, again, _CLAIM, metrics=("best_top1",)).iloc[0]
    assert same["replicated"] and same["verdict_heldout"] == "ahead"
    text = stats.replication_markdown(stats.replication(ahead, again, _CLAIM))
    assert "1 of 1 claims" in text and "**replicated**" in text


def test_replication_needs_two_pairs_per_half_and_new_seeds():
    base = [70.0, 75.0, 80.0]
    a = _shifted(_runs({("1of16", "SR"): base, ("1of16", "MQ"): [v + 1 for v in base]}), 0)
    one = _shifted(_runs({("1of16", "SR"): [70.0], ("1of16", "MQ"): [71.0]}), 5)
    line = stats.replication(a, one, _CLAIM, metrics=("best_top1",)).iloc[0]
    assert line["verdict_heldout"] == "no verdict (n < 2)" and not line["replicated"]
    with pytest.raises(ValueError, match="share seeds"):
        stats.replication(a, a, _CLAIM)
