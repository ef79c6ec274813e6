"""The N:M method benchmark's tables: whether a study is one, the mean training-step time of
every run, the training cost per (row, method) against the dense runs, the parameters a method
adds in training, and the fairness card (one recipe, seeds, dense layers, grouping, cost,
published ImageNet numbers)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from maxq import stats, studies
from maxq.methods import METHODS, is_dense
from maxq.result_frames import Results
from maxq.row_cost import paper_cost, proxy_gflops

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
        dense_method = is_dense(method)
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
    """The layer table of the first run of ``sub`` (config.json's, read when it was loaded)."""
    return results.layer_tables.get(sub["run"].iloc[0], [])


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
        recipe = (f"SGD lr {first.get('lr')} {first.get('lr_policy', '')}, wd "
                  f"{first.get('weight_decay')}, batch {first.get('batch_size')}")
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
