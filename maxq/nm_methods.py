"""The rules of three published N:M training methods as pure tensor functions (no modules).

Specified from the authors' code in ``shared/docs/nm-methods.md`` (§3 LBC, §4 Bi-Mask, §5 SpRe)
and re-read in zyxxmu/LBC, zyxxmu/Bi-Mask and zyxxmu/SpRE; written anew here. The module
wrappers that use them are in :mod:`maxq.nm_layers`; docs/method.md §"Other N:M methods" says
where the kit deviates.

Shapes: a conv weight ``W`` is ``(O, I, kh, kw)``. "Input-channel groups" are M consecutive input
channels at fixed ``(o, kh, kw)`` (``W.permute(0, 2, 3, 1)``: SR-STE, LBC, SpRe, the kit);
"row groups" are M consecutive entries of the flattened ``(I, kh, kw)`` row ``W.reshape(O, -1)``
(Bi-Mask's forward mask). Ties among equal magnitudes: the lower index is kept (a stable sort),
as the kit's :func:`maxq.masks.nm_mask` does; the authors' ``argsort`` leaves them unspecified.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad


# ============================================================================ common
def _keep_top(groups: torch.Tensor, N: int) -> torch.Tensor:
    """0/1 mask of a ``(G, M)`` tensor keeping the N largest entries of every row (stable: among
    equal values the lower index wins)."""
    order = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :N]
    return torch.zeros_like(groups).scatter_(1, order, 1.0)


def input_groups(weight: torch.Tensor, M: int) -> torch.Tensor:
    """``(G, M)`` view of a conv weight in input-channel groups (a copy for a conv)."""
    return weight.permute(0, 2, 3, 1).reshape(-1, M) if weight.dim() == 4 else weight.reshape(-1, M)


def from_input_groups(groups: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`input_groups` for a weight of ``shape``."""
    if len(shape) == 4:
        O, I, kh, kw = shape
        return groups.reshape(O, kh, kw, I).permute(0, 3, 1, 2)
    return groups.reshape(shape)


# ============================================================================ LBC (§3)
def lbc_combinations(N: int, M: int) -> torch.Tensor:
    """``(C, M)`` 0/1 matrix, C = C(M, N): one row per N-subset of the M positions, in
    ``itertools.combinations`` order (the authors' ``index_list``)."""
    rows = list(itertools.combinations(range(M), N))
    table = torch.zeros(len(rows), M)
    for r, subset in enumerate(rows):
        table[r, list(subset)] = 1.0
    return table


def lbc_initial_scores(groups: int, N: int, M: int) -> torch.Tensor:
    """``(G, C)`` scores, all ``1 / C(M-1, N-1)``: every position starts with soft mask 1 (each
    position lies in C(M-1, N-1) combinations)."""
    return torch.full((groups, math.comb(M, N)), 1.0 / math.comb(M - 1, N - 1))


class _MaskSTE(torch.autograd.Function):
    """Forward ``soft != 0`` as 0/1; backward the identity (LBC's ``GetMask``)."""

    @staticmethod
    def forward(ctx, soft):
        return (soft != 0).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def lbc_mask(scores: torch.Tensor, combinations: torch.Tensor) -> torch.Tensor:
    """``(G, M)`` 0/1 mask: a position is kept iff a live (non-zero) combination covers it.

    Differentiable in ``scores``: d mask / d soft is the identity (straight-through) and
    soft = (scores ⊙ [scores != 0]) @ combinations, so dL/dα[g, c] = Σ_{j ∈ c} dL/dmask[g, j]
    for live scores and 0 for removed ones."""
    live = scores * (scores != 0).to(scores.dtype)
    return _MaskSTE.apply(live @ combinations)


@torch.no_grad()
def lbc_remove_(scores: torch.Tensor, k: int) -> torch.Tensor:
    """In place, before every training forward (the authors' ``remove_alpha``): in every row, rank
    already-zero scores first (minus 1000), then set the k smallest signed values to 0."""
    if k <= 0:
        return scores
    ranked = scores - 1000.0 * (scores == 0).to(scores.dtype)
    index = torch.argsort(ranked, dim=1, stable=True)[:, :k]
    return scores.scatter_(1, index, 0.0)


def lbc_removed(epoch: int, C: int, t_i: int, t_f: int) -> int:
    """k, the combinations removed per group in ``epoch``: the cubic decay of the survivors,
    ``card = 1 + ceil((C-1)(1 - (e - t_i)/(t_f - t_i))^3)``, ``k = C - card``, from 0 at t_i to
    C - 1 at t_f and after (the authors update k while k < C - 1; it only grows, so this
    closed form is their recursion)."""
    if C <= 1 or epoch >= t_f:
        return max(C - 1, 0)
    if epoch <= t_i:
        return 0
    frac = 1.0 - (epoch - t_i) / (t_f - t_i)
    card = 1 + math.ceil((C - 1) * frac ** 3)
    return min(max(C - card, 0), C - 1)


# ============================================================================ Bi-Mask (§4)
def row_nm_mask(weight: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """Bi-Mask's forward mask m_f: top-N |W| in every group of M consecutive entries of the
    flattened ``(I, kh, kw)`` row (kw fastest), same shape as ``weight``."""
    groups = weight.detach().abs().reshape(-1, M)
    return _keep_top(groups, N).reshape(weight.shape).to(weight.dtype)


def bimask_backward_mask(weight: torch.Tensor, forward_mask: torch.Tensor,
                         permutation: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """Bi-Mask's backward mask m_b ⊆ m_f, same shape as ``weight``.

    Permute the output channels (rows of ``(W ⊙ m_f).reshape(O, K)``) by π, form groups of M
    consecutive permuted output channels at each fixed k (the flat ``(K, O)`` transpose), keep
    the N largest |W ⊙ m_f| in each (forward-pruned zeros are chosen last and removed again by
    ⊙ m_f), then undo the permutation."""
    O = weight.shape[0]
    ws = (weight.detach() * forward_mask).reshape(O, -1)[permutation]       # (O, K), rows in π order
    mf = forward_mask.reshape(O, -1)[permutation]
    kept = _keep_top(ws.t().abs().reshape(-1, M), N).reshape(ws.t().shape).t() * mf
    out = torch.empty_like(kept)
    out[permutation] = kept
    return out.reshape(weight.shape)


def bimask_search_permutation(weight: torch.Tensor, forward_mask: torch.Tensor, N: int, M: int,
                              candidates: int, generator: torch.Generator) -> torch.Tensor:
    """The authors' ``get_best_permutation``: ``candidates`` uniformly random permutations of the
    O output channels; the first with the most weights kept by both masks (|m_b|) wins."""
    O = weight.shape[0]
    best, best_kept = torch.arange(O), -1.0
    for _ in range(candidates):
        perm = torch.randperm(O, generator=generator)
        kept = float(bimask_backward_mask(weight, forward_mask, perm.to(weight.device), N, M).sum())
        if kept > best_kept:
            best, best_kept = perm, kept
    return best.to(weight.device)


class BiMaskConv2dFunction(torch.autograd.Function):
    """Conv with W ⊙ m_f forward; backward dL/dx through W ⊙ m_b and the dense dL/dW
    (straight-through; the SR-STE term λ(1 - m_f)W is added by the training loop)."""

    @staticmethod
    def forward(ctx, x, weight, forward_mask, backward_mask, bias, stride, padding, dilation,
                groups):
        ctx.save_for_backward(x, weight, backward_mask)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        return F.conv2d(x, weight * forward_mask, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight, backward_mask = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        grad_x = grad_w = grad_b = None
        # under autocast the forward conv ran in the autocast dtype: so do the backward convs
        # (the gradient's dtype), each gradient returned in its input's dtype
        work = grad.dtype
        if ctx.needs_input_grad[0]:
            grad_x = nn_grad.conv2d_input(x.shape, (weight * backward_mask).to(work), grad,
                                          stride, padding, dilation, groups).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = nn_grad.conv2d_weight(x.to(work), weight.shape, grad, stride, padding,
                                           dilation, groups).to(weight.dtype)
        if has_bias and ctx.needs_input_grad[4]:
            grad_b = grad.sum(dim=(0, 2, 3)).to(weight.dtype)
        return grad_x, grad_w, None, None, grad_b, None, None, None, None


# ============================================================================ SpRe (§5)
def spre_spatial_mask(weight: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """SpRe's ``(kh, kw)`` 0/1 spatial mask s of a main-branch weight: prune the
    ``int(numel (1 - N/M))`` smallest |W| of the layer (unstructured), measure each kernel
    position's sparsity over its O·I entries, keep the positions strictly below 1 - N/M."""
    O, I, kh, kw = weight.shape
    rate = 1.0 - N / M
    flat = weight.detach().abs().reshape(-1)
    pruned = int(flat.numel() * rate)
    if pruned == 0:
        keep = torch.ones_like(flat)
    else:   # the pruned-th smallest |w| is the threshold (O(n); the authors sort, same set
        #     without ties, which continuous weights do not have)
        keep = (flat > torch.kthvalue(flat, pruned).values).to(flat.dtype)
    keep = keep.reshape(O * I, kh * kw)
    sparsity = 1.0 - keep.sum(dim=0) / (O * I)
    return (sparsity < rate).to(weight.dtype).reshape(kh, kw)


def bn_scale_shift(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = t·x + c`` per channel: ``t = γ/√(σ²+ε)``, ``c = β - μ·t``."""
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return t, bn.bias - bn.running_mean * t


def spre_fold(main_weight: torch.Tensor, main_bn: torch.nn.BatchNorm2d,
              branch_weight: torch.Tensor, branch_bn: torch.nn.BatchNorm2d
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SpRe's ``get_equivalent_kernel_bias``: the one conv (kernel, bias) equal in eval mode to
    ``BN_a(conv(x, main_weight)) + BN_b(conv(x, branch_weight))`` (the weights already masked)."""
    t_a, c_a = bn_scale_shift(main_bn)
    t_b, c_b = bn_scale_shift(branch_bn)
    kernel = main_weight * t_a.view(-1, 1, 1, 1) + branch_weight * t_b.view(-1, 1, 1, 1)
    return kernel, c_a + c_b


def spre_fold_stock(main_weight: torch.Tensor, main_bn: torch.nn.BatchNorm2d,
                    branch_weight: torch.Tensor, branch_bn: torch.nn.BatchNorm2d
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spre_fold` written back into the stock ``conv -> BN_a`` pair, so the exported model
    keeps torchvision's modules and keys: returns (conv weight, new ``BN_a.bias``) with
    ``BN_a(conv(x, weight)) = conv(x, kernel) + bias`` of :func:`spre_fold`. Needs γ_a ≠ 0."""
    t_a, _ = bn_scale_shift(main_bn)
    if bool((t_a == 0).any()):
        raise ValueError("SpRe fold: a main-branch BatchNorm has gamma == 0; the branch cannot "
                         "be folded into the stock conv -> BN pair")
    t_b, c_b = bn_scale_shift(branch_bn)
    weight = main_weight + branch_weight * (t_b / t_a).view(-1, 1, 1, 1)
    return weight, main_bn.bias + c_b
