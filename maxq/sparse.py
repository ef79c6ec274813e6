"""Sparse layers on stock models: sparsify, fold, check_nm, describe, SR-STE decay, mask statistics.

The model stays stock (as with ``torch.ao`` parametrizations, the mask lives beside the weight):
a sparse conv/linear keeps ``weight`` and ``bias`` where torchvision keeps them, so state_dict keys
stay torchvision keys, and gains one buffer ``weight_mask`` (the soft mask S, which round-trips
through ``state_dict``). Its class becomes a thin subclass of the stock one
(:class:`SparseConv2d` / :class:`SparseLinear`) whose forward uses W ⊙ S:

* in training mode the mask is recomputed from the current weight on every forward;
* in eval mode the stored buffer is used (as the authors' code does); the training loop
  refreshes it from the final weights after every epoch, before evaluating and saving (as the
  authors' loop does), so a stored mask is always the mask of the stored weight.

The recomputation happens up front: :func:`sparsify` adds a forward pre-hook to the model that
refreshes all its masks before each training forward (:func:`refresh_masks`, layers side by side
on the CPU threads), and each layer then uses the mask made for its current weight. A sparse layer
called on its own, outside the model's forward, recomputes its mask itself.
:func:`set_mask_interval` makes the refresh happen every k-th forward instead (the stored masks
are used in between); the paper's setting, and the default, is every forward.

Gradients (method.md §6): "soft" STE passes the gradient to every latent weight unchanged; "hard"
multiplies it by S. The SR-STE decay is :func:`srste_decay_`, called by the loop after backward.

Which layers are sparse (method.md §7): every conv with ``groups == 1`` whose input channels are
divisible by M, except the stem (the first conv, which sees the image). Depthwise/grouped convs and
linear layers (the classifier) stay dense. :func:`describe` says for every layer which and why.
"""
from __future__ import annotations

import copy
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from maxq import masks as mask_math
# the layer policy and the per-layer table live in maxq.layer_table; importable from here too
from maxq.layer_table import (_unwrap, dead_weight_share, describe, format_table,  # noqa: F401
                              input_sizes, layer_policy, weighted_dead_share)
from maxq.methods import MethodSpec, get as get_method
from maxq.records import HIST_EDGES


# the layer classes, their state and gradients live in maxq.sparse_layers; importable from here
from maxq.sparse_layers import (SparseConv2d, SparseLinear, SparseState,  # noqa: F401
                                _SparseMixin, _weight_key)

_SPARSE_CLASS = {nn.Conv2d: SparseConv2d, nn.Linear: SparseLinear}
_STOCK_CLASS = {SparseConv2d: nn.Conv2d, SparseLinear: nn.Linear}


def _sparse_class(spec: MethodSpec, module: nn.Module) -> type:
    """The sparse class of ``module``: the kit's, or the layer family of ``spec.layer``
    (:data:`maxq.nm_layers.LAYERS`: LBC, Bi-Mask, SpRe)."""
    if not spec.layer:
        return _SPARSE_CLASS[type(module)]
    from maxq import nm_layers               # imports this module: import on first use

    return nm_layers.layer_class(spec.layer, module)


def _stock_class(module: nn.Module) -> type:
    return next(stock for cls, stock in _STOCK_CLASS.items() if isinstance(module, cls))


def _check_nm_args(N: Any, M: Any) -> tuple[int, int]:
    if not isinstance(M, int) or isinstance(M, bool) or M < 1:
        raise ValueError(f"M must be a positive integer; got {M!r}")
    if not isinstance(N, int) or isinstance(N, bool) or not 1 <= N <= M:
        raise ValueError(f"N must be an integer with 1 <= N <= M={M}; got {N!r}")
    return N, M


# ----------------------------------------------------------------------------- sparsify
def sparsify(model: nn.Module, method: str, N: int = 2, M: int = 4, *, tau: float = 0.01,
             seed: int = 0, init_masks: bool = True) -> nn.Module:
    """Make ``model`` sparse-trainable in place with ``method`` (a seed ``--conv-bn-type`` name).

    Sparse layers get the buffer ``weight_mask``, computed now from the current weights (so eval
    works before any training step; for ``ASPFixedMask`` this is the frozen magnitude mask).
    ``seed`` seeds the per-layer generators of the random-selection arm. ``init_masks=False``
    leaves the masks at ones, for a model whose state_dict (masks included) is loaded next.
    """
    spec = get_method(method)
    N, M = _check_nm_args(N, M)
    if not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau!r}")
    if sparse_layers(model):
        raise ValueError("model is already sparsified; build a fresh model or fold() it first")
    policy = layer_policy(model, M)
    model.maxq_method = {"method": spec.name, "N": N, "M": M, "tau": tau,
                         "grouping": spec.grouping}
    if not spec.sparse:
        return model
    candidates = [n for n, (sparse, _) in policy.items() if sparse]
    if not candidates:
        raise ValueError(f"M={M} divides the input channels of no sparsifiable layer of this model")
    skipped = [n for n, (_, reason) in policy.items() if reason.startswith("skipped")]
    if skipped:
        warnings.warn(f"dense because M={M} does not divide their input channels: "
                      f"{', '.join(skipped)}", stacklevel=2)
    modules = dict(model.named_modules())
    for index, name in enumerate(candidates):
        module = modules[name]
        generator = None
        if spec.selection == "random":
            generator = torch.Generator().manual_seed(seed * 100003 + index)
        module.__class__ = _sparse_class(spec, module)
        module.maxq = SparseState(spec, N, M, float(tau), generator=generator)
        module.register_buffer("weight_mask", torch.ones_like(module.weight, requires_grad=False))
        if hasattr(module, "setup_method"):   # a method's own state (maxq.nm_layers)
            module.setup_method(model, name, seed, index)
    if init_masks:
        _refresh(list(sparse_layers(model).values()))
        for module in sparse_layers(model).values():
            module.maxq.fresh_for = None
    model.register_forward_pre_hook(_refresh_before_forward)
    return model


# ----------------------------------------------------------------------------- mask refresh
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _single_threaded() -> None:
    torch.set_num_threads(1)      # per worker thread (OpenMP's setting is per thread)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="maxq-mask",
                                                 initializer=_single_threaded)
        return _POOLS[workers]


def refresh_masks(model: nn.Module, workers: int | None = None) -> int:
    """Recompute the mask of every trainable sparse layer from its current weight, now.

    Layers are independent, so they are computed side by side on ``workers`` threads (default
    ``torch.get_num_threads()``; each single-threaded, largest layers first): on a 2-core CPU
    this is faster than one layer after another with 2 threads per op. Where the C kernel does not
    run (CUDA, ``MAXQ_NATIVE=0``), layers of one weight shape and setting are stacked into one
    call of the op ``maxq::maxq_mask`` instead (:func:`_refresh_stacked`). Every mask is computed
    exactly as alone, so the result does not depend on ``workers`` or the stacking. The next training forward
    uses these masks instead of recomputing them. Returns the number of masks refreshed.
    """
    return _refresh([m for m in sparse_layers(model).values() if m.maxq.trainable], workers)


def _stack_key(m: nn.Module) -> tuple | None:
    """Layers with equal keys get their masks from one stacked call of the registered op
    ``maxq::maxq_mask`` (:mod:`maxq.mask_op`); None: the layer computes its own mask (random
    dense blocks need its generator; the fixed and V1 masks; an instance-level ``compute_mask``;
    and, on the CPU with the C kernel built, every layer: it keeps per-layer warm windows)."""
    st, w = m.maxq, m.weight
    spec = st.method
    if "compute_mask" in vars(st) or spec.mask not in ("maxq", "nm"):
        return None
    if spec.mask == "maxq" and spec.selection == "random":
        return None
    if w.device.type == "cpu" and mask_math._use_native(w, st.cache):
        return None
    if spec.mask == "nm":
        args = (0.0, st.tau, "none", "smallest", False)
    else:
        args = (st.dense_fraction if spec.incremental else 0.0, st.tau, spec.axis,
                spec.selection, spec.progressive)
    return (tuple(w.shape), w.dtype, w.device, st.N, st.M) + args


def _refresh_stacked(layers: list[nn.Module]) -> list[nn.Module]:
    """Refresh the layers that share a :func:`_stack_key` with one op call per key (so the
    launches grow with the distinct shapes, not with the layers); returns the other layers."""
    from maxq import mask_op

    groups: dict[tuple, list[nn.Module]] = {}
    rest = []
    for m in layers:
        key = _stack_key(m)
        (rest if key is None else groups.setdefault(key, [])).append(m)
    with torch.no_grad():
        for key, group in groups.items():
            N, M, rho, tau, axis, selection, progressive = key[3:]
            stack = torch.stack([m.weight.detach() for m in group])
            out = mask_op.maxq_mask(stack, N, M, rho, tau, axis, selection, progressive)
            for m, mask in zip(group, out.unbind(0)):
                m.weight_mask = mask
                m.maxq.fresh_for = _weight_key(m.weight)
    return rest


def _refresh(layers: list[nn.Module], workers: int | None = None) -> int:
    count = len(layers)
    layers = _refresh_stacked(layers)
    if not layers:
        return count
    workers = max(1, min(len(layers), workers or torch.get_num_threads()))
    if workers == 1 or any(m.weight.device.type != "cpu" for m in layers):
        for m in layers:
            m.refresh_mask()
    else:
        layers = sorted(layers, key=lambda m: -m.weight.numel())
        for future in [_pool(workers).submit(m.refresh_mask) for m in layers]:
            future.result()
    return count


def set_mask_interval(model: nn.Module, every: int, forwards: int = 0) -> None:
    """Recompute masks on every ``every``-th training forward of the model (1, the paper's
    setting: every step); in between, training uses the stored masks. ``forwards``: training
    forwards already done (a resumed run passes its step count, so refreshes fall on the same
    steps as in an uninterrupted run)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"mask interval must be an integer >= 1; got {every!r}")
    for module in sparse_layers(model).values():
        module.maxq.every, module.maxq.forwards = every, int(forwards)


def set_mask_workers(model: nn.Module, workers: int | None) -> None:
    """Threads the training forward's mask refresh uses (None: ``torch.get_num_threads()``;
    1: one layer after another, each op on torch's threads)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"mask workers must be None or an integer >= 1; got {workers!r}")
    for module in sparse_layers(model).values():
        module.maxq.workers = workers


def _refresh_before_forward(model: nn.Module, args) -> None:
    """Forward pre-hook of a sparsified model: in training mode, refresh the masks of its
    trainable sparse layers before the forward runs (every ``every``-th forward)."""
    if not model.training:
        return
    layers = [m for m in sparse_layers(model).values() if m.training and m.maxq.trainable]
    if not layers:
        return
    state = layers[0].maxq
    due = state.forwards % state.every == 0
    for m in layers:
        m.maxq.forwards += 1
    if due:
        _refresh(layers, state.workers)


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Sparse layers of a sparsified model, by name (unwraps DDP's ``module.`` prefix)."""
    model = _unwrap(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, _SparseMixin)}


def set_dense_fraction(model: nn.Module, rho: float) -> None:
    """Set the incremental schedule's ρ (fraction of blocks kept dense) on every sparse layer."""
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"dense_fraction must be in [0, 1]; got {rho}")
    for module in sparse_layers(model).values():
        module.maxq.dense_fraction = rho


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The stored soft mask S of every sparse layer."""
    return {name: m.weight_mask for name, m in sparse_layers(model).items()}


def start_epoch(model: nn.Module, epoch: int, epochs: int) -> None:
    """Tell every sparse layer with a per-epoch schedule (LBC's combination removal,
    :mod:`maxq.nm_layers`) that training epoch ``epoch`` of ``epochs`` begins."""
    for module in sparse_layers(model).values():
        if hasattr(module, "start_epoch"):
            module.start_epoch(epoch, epochs)


@torch.no_grad()
def density(model: nn.Module) -> float | None:
    """Share of the sparse layers' weights their stored masks keep (N/M for an exact N:M
    model; more for LBC before its schedule ends, or MaxQ's dense blocks); None if none."""
    kept = total = 0
    for module in sparse_layers(model).values():
        kept += int((module.weight_mask != 0).sum())
        total += module.weight_mask.numel()
    return kept / total if total else None


@torch.no_grad()
def srste_decay_(model: nn.Module, lam: float) -> None:
    """SR-STE decay (method.md §6): ``g_W += lam * (1 - clip(S, 0, 1)) * W`` — pruned weights only.

    Call after backward (after AMP unscale) and before the optimizer step.
    """
    if lam == 0:
        return
    for module in sparse_layers(model).values():
        grad = module.weight.grad
        if grad is not None:
            # every mask value is 0 or >= 1 (S = B ⊙ (1 + Q_f + Q_k), Q >= 0; B; ASP's 0/1),
            # so 1 - clip(S, 0, 1) is exactly the indicator S == 0
            pruned = module.weight_mask == 0
            grad.add_(torch.where(pruned, module.weight, 0.0), alpha=lam)


# ----------------------------------------------------------------------------- statistics
def _blocks(t: torch.Tensor, M: int, grouping: str = "input") -> torch.Tensor:
    """(G, M) view of a conv (Co, Ci, kh, kw) or linear (out, in) tensor: M consecutive inputs
    (``grouping="input"``), or M consecutive entries of the flattened (Ci, kh, kw) row
    (``"row"``: Bi-Mask's forward mask; the same for 1x1 convs and linears)."""
    if t.dim() == 4 and grouping != "row":
        t = t.permute(0, 2, 3, 1)
    return t.reshape(-1, M)


def block_nonzeros(t: torch.Tensor, M: int, grouping: str = "input") -> torch.Tensor:
    """Non-zeros in every block of ``M`` consecutive input channels (dim 1) of a conv
    (Co, Ci, kh, kw) or linear (out, in) tensor, shape (G,): the one count behind the N:M
    statistics, :func:`check_nm` and the checks of the exported, 2:4 and INT8 models.
    ``grouping="row"``: blocks of the flattened row instead (:func:`_blocks`)."""
    return _blocks(t != 0, M, grouping).sum(dim=1)


@torch.no_grad()
def mask_stats(model: nn.Module, previous_hard: dict[str, torch.Tensor] | None = None,
               hist_edges: tuple[float, ...] | None = None):
    """Per sparse layer: share of N:M blocks, fraction of hard-mask entries flipped, histogram of S.

    Returns ``(stats, hard)``: ``stats[name] = {"nm_share", "flipped", "hist_counts"}`` and the
    current hard masks (bool) to pass as ``previous_hard`` next time. A block counts as N:M when
    it keeps at most N weights; ``flipped`` is None when there is no previous mask.
    """
    edges = torch.tensor(hist_edges or HIST_EDGES, dtype=torch.float32)
    stats, hard_masks = {}, {}
    for name, module in sparse_layers(model).items():
        soft = module.weight_mask.float()
        hard = soft != 0
        kept = block_nonzeros(hard, module.maxq.M, module.maxq.method.grouping)
        flipped = None
        if previous_hard is not None and name in previous_hard:
            flipped = (hard != previous_hard[name].to(hard.device)).float().mean().item()
        counts = torch.histogram(soft.cpu().reshape(-1), bins=edges).hist
        stats[name] = {
            "nm_share": (kept <= module.maxq.N).float().mean().item(),
            "flipped": flipped,
            "hist_counts": [int(c) for c in counts.tolist()],
        }
        hard_masks[name] = hard.cpu()
    return stats, hard_masks


def nm_share(model: nn.Module, stats: dict[str, dict] | None = None) -> float | None:
    """Share of N:M blocks over all sparse layers, weighted by block count (None if none).

    ``stats`` from :func:`mask_stats` of the same masks saves recounting the blocks.
    """
    total = nm = 0
    for name, module in sparse_layers(model).items():
        if stats is not None:
            blocks = module.weight_mask.numel() // module.maxq.M
            nm += round(stats[name]["nm_share"] * blocks)
        else:
            kept = block_nonzeros(module.weight_mask, module.maxq.M, module.maxq.method.grouping)
            blocks = kept.numel()
            nm += int((kept <= module.maxq.N).sum())
        total += blocks
    return nm / total if total else None


# ----------------------------------------------------------------------------- fold / check
@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """A deep copy with W ← W ⊙ S folded in: plain stock modules, no mask buffers, same outputs.

    The zero set of the folded weight equals the hard mask's, so the N:M pattern is unchanged.
    The copy remembers N, M and the sparse layer names in ``maxq_folded`` (a plain attribute,
    not in state_dict) so :func:`check_nm` works on it without arguments.
    """
    model = copy.deepcopy(_unwrap(model))
    info = dict(getattr(model, "maxq_method", {}) or {})
    layers = sparse_layers(model)
    for module in layers.values():
        module.weight.mul_(module.weight_mask.to(module.weight.dtype))
        if hasattr(module, "fold_method"):    # a method's own state folds away (nm_layers)
            module.fold_method(model)
        del module._buffers["weight_mask"]
        del module.maxq
        module.__class__ = _stock_class(module)
    if hasattr(model, "maxq_method"):
        del model.maxq_method
    for key, hook in list(model._forward_pre_hooks.items()):
        if hook is _refresh_before_forward:
            del model._forward_pre_hooks[key]
    model.maxq_folded = {"N": info.get("N"), "M": info.get("M"), "method": info.get("method"),
                         "layers": sorted(layers), "grouping": info.get("grouping", "input")}
    return model


@torch.no_grad()
def check_nm(model: nn.Module, N: int | None = None, M: int | None = None) -> list[dict]:
    """Verify every sparse layer keeps at most N non-zeros per block of M consecutive inputs.

    Works on a sparsified model (checks W ⊙ S with the stored masks), on a folded model, or on a
    plain model given N and M (then the layers of the §7 policy are checked). Returns one row per
    checked layer (``layer, N, M, max_nonzeros, ok, valid_2to4``); raises ``ValueError`` naming
    the offending layers if any breaks the pattern. ``valid_2to4`` is measured on the weights:
    at most 2 non-zeros in every group of 4 consecutive input channels.
    """
    base = _unwrap(model)
    info = getattr(base, "maxq_method", None) or getattr(base, "maxq_folded", None) or {}
    N = N if N is not None else info.get("N")
    M = M if M is not None else info.get("M")
    if N is None or M is None:
        raise ValueError("check_nm() needs N and M for a model that is not sparsified or folded")
    N, M = _check_nm_args(N, M)
    layers = sparse_layers(base)
    modules = dict(base.named_modules())
    if layers:
        weights = {n: m.weight * m.weight_mask for n, m in layers.items()}
    else:
        names = info.get("layers") or [n for n, (s, _) in layer_policy(base, M).items() if s]
        weights = {n: modules[n].weight for n in names}
    if not weights:
        raise ValueError("no sparse layer to check")
    grouping = info.get("grouping", "input")
    rows, broken = [], []
    for name, weight in weights.items():
        max_nz = int(block_nonzeros(weight, M, grouping).max())
        valid_2to4 = weight.shape[1] % 4 == 0 and int(block_nonzeros(weight, 4).max()) <= 2
        rows.append({"layer": name, "N": N, "M": M, "max_nonzeros": max_nz,
                     "ok": max_nz <= N, "valid_2to4": bool(valid_2to4)})
        if max_nz > N:
            broken.append(f"{name} ({max_nz} non-zeros in a block of {M})")
    if broken:
        raise ValueError(f"not {N}:{M} sparse: {', '.join(broken[:5])}"
                         + (f" and {len(broken) - 5} more" if len(broken) > 5 else ""))
    return rows
