"""Which masks the report and the explorer show: the focus runs of a study, a few epochs and
layers spread over training and depth, and one (run, layer, epoch) mask for the explorer."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from maxq import records
from maxq.methods import METHODS, is_maxq
from maxq.result_frames import Results, load_masks

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
