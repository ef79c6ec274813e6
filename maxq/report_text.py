"""The section headings and introductions of the study report (``notebooks/report.ipynb``).

The report shows a section only when it has something to show (a table or a figure): its
heading is printed by the cell that computes it, from these texts, so a study without claims
has no empty "Verdicts" section and a report without a re-run no empty "Robustness" one.
"""
from __future__ import annotations

VERDICTS = (
    "## Verdicts\n"
    "Each claim of the study file, tested on the proxy: seed-paired difference A − B, mean with "
    "its 95 % Student-t interval over the pairs, and the verdict computed from that interval "
    "(`maxq.stats`; legend at the top), first by best-epoch top-1 (the authors' metric), then by "
    "last-epoch top-1.")

REPLICATION = (
    "## Replication on held-out seeds\n"
    "This study re-tests the claims of the study named in its `[study] replicates` on new seeds "
    "with the same options. Per claim and metric (best- and last-epoch top-1): the seed-paired "
    "difference A − B with its 95 % Student-t interval and verdict on the replicated study's "
    "seeds (discovery), on this study's seeds (held-out) and on both pooled. A verdict is called "
    "**replicated** only when both halves (≥ 2 pairs each) give the same verdict.")

LEADERBOARD = (
    "## N:M method leaderboard\n"
    "Per N:M row, each method's top-1 by best and by last epoch: mean with its 95 % Student-t "
    "interval over the seeds, and the seed-paired difference to MaxQ and to SR-STE in the same "
    "row with its interval and verdict (`ahead` / `behind` / `within noise`, "
    "`maxq.stats.verdict`). Every method trained with the same recipe, seeds and dense layers: "
    "the fairness card below says what still differs (grouping axis, SR-STE term, training-time "
    "extras) and puts the published ImageNet ResNet-50 numbers beside the cells.")

TRAINING_COST = (
    "### Training cost\n"
    "Mean training-step time per method and its ratio to the dense runs' of the same study "
    "(paired by seed; measured on the machine that trained the runs, on a shared CPU the ratios "
    "carry its load), the sparse layers' mean density over the epochs (N/M for exact N:M "
    "methods; LBC is denser until its schedule ends) and the trainable parameters a method adds "
    "in training.")

FAIRNESS_CARD = "### Fairness card"

CONVERGENCE = (
    "## Convergence\n"
    "Whether the recipe trains the dense baseline to convergence: a dense run counts as "
    "converged when its validation top-1 gains less than 0.5 points over its last two epochs.")

ROBUSTNESS = (
    "## Robustness across machines and thread counts\n"
    "The same runs (same seeds and options) trained again elsewhere (`maxq report STUDY "
    "--rerun-root DIR`): how far each mean moved next to the width of its 95 % CI, the largest "
    "change of a single run, and whether each claim kept its verdict. Float rounding differs "
    "between thread counts and CPUs, so single runs change; a claim is only worth something if "
    "its verdict survives that.")

MASK_EVOLUTION = (
    "## Mask evolution\n"
    "For the focus row, one run per method: the study's `focus` row, else the first row with a "
    "MaxQ run (dense runs have no masks). The heatmaps show that row's MaxQ run.")
