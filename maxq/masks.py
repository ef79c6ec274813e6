"""Pure N:M and MaxQ mask math (docs/method.md §1–§5). Tensors in, tensors out.

Notation (method.md): ``A = |W|`` (float32, no gradient). For a conv weight ``(Co, Ci, kh, kw)``
an N:M **block** is M consecutive input channels at a fixed ``(out, kh, kw)``; block ``g`` is
numbered in the order of ``A.permute(0, 2, 3, 1).reshape(G, M)``, i.e. ``(co, h, w, ci // M)``.
A linear weight ``(out, in)`` has blocks of M consecutive inputs, ``A.reshape(G, M)``.

* ``B``   hard N:M mask: 1 on the N largest ``A`` of every block.
* ``Q``   axis query on a 2-D view ``X`` (R rows of L entries): ``k = floor((M-N)·L/M)``
          (exact integer arithmetic); with ``x(1) <= ... <= x(L)`` a row sorted ascending,
          ``thr = (x(k) + x(k+1)) / 2``; ``H = 1`` on the ``L-k`` largest entries;
          ``Q = H ⊙ sigmoid((x - thr) / tau)``.  Filter axis: ``X = A.reshape(Co, Ci·kh·kw)``;
          kernel axis (only when ``kh·kw > 1``): ``X = A.reshape(Co·Ci, kh·kw).T``.
* ``S = B ⊙ ((1 + Q_filter) + Q_kernel)``, evaluated in float32 in exactly that order
  (``Q_kernel = 0`` for 1x1 convs and linears).
* Incremental sparsity: the ``floor(ρ·G)`` blocks with the smallest L1 norm keep ``B = 1``.
  Block L1 is the float32 sum ``a_0 + a_1 + ... + a_{M-1}``, left to right.

**Ties** (one rule everywhere): among equal values the **lower index wins**, i.e. is kept
(in a block: the lower input channel; in a filter row: the lower flat ``(ci, h, w)`` index; in a
kernel row: the lower ``co·Ci + ci``). Dense-block selection picks the lower block index ``g``
first among equal L1 norms, for ``"smallest"`` and ``"largest"`` alike.

**k = 0 edge**: for ``N < M`` every query has ``1 <= k < L`` (``L >= M``), so it cannot occur;
``N == M`` returns a mask of ones without queries. ``axis_query`` still defines it: ``k = 0``
keeps every entry and uses ``thr = x(1)`` (as if ``x(0) := x(1)``).

Counts derived from fractions use ``floor(x + 1e-9)`` (so ``0.29 · 100`` gives 29, not 28), from
the Python float and the shapes only, never from tensor data.

**One device-generic path, no host syncs.** Every step is a fixed sequence of tensor ops whose
shapes follow from the weight's shape and the Python arguments: no ``.item()``, no
``.nonzero()``, no boolean indexing, no data-dependent Python branch. So the same code runs on
the CPU and on CUDA without a host-device synchronisation, and ``torch.compile(maxq_mask,
fullgraph=True)`` traces it in one graph (tests/test_masks.py checks both). The selections:

* block ranks by pairwise comparisons (M <= 8, ``n_keep >= M/2``):
  ``rank_j = #{i: a_i > a_j or (a_i == a_j and i < j)}``, kept iff ``rank_j < n_keep``; else
  ``n_keep`` rounds of ``argmax`` (the first maximal index among ties) over each block;
* row order statistics: ``x(k) = kthvalue(X, k)``; ``x(k+1)`` is ``x(k)`` when more than ``k``
  entries are ``<= x(k)``, else the smallest entry ``> x(k)``; ``H`` keeps the entries
  ``> x(k)`` and, of those equal to ``x(k)``, the lowest-indexed ones still needed (a cumulative
  count): exactly the stable sort's choice;
* dense blocks: the same on the block L1 norms (``smallest`` keeps the low side).

Every op is elementwise or a row reduction, so a stack of equal-shaped weights (one leading
dimension, :func:`maxq_mask_stack`) costs one launch per op for the whole stack. The sigmoid is
applied, on the CPU, to each layer's tensor laid out as in the reference (torch's vectorised and
scalar CPU sigmoid can differ in the last bit, and which entries take which depends on the
tensor's size), so stacked and single masks are bit-identical to the reference.

The optional C kernel (``maxq/_native.c`` through :mod:`maxq.native`) serves CPU calls that carry a
warm-start ``cache`` (see :mod:`maxq.native`); the registered op :mod:`maxq.mask_op` is the
compiled-training entry point.
"""
from __future__ import annotations

import math

import torch

# the block layout, counts and dense-block selection live in maxq.mask_blocks (maxq.native's C
# path uses them too); importable from here as before
from maxq.mask_blocks import (_apply_dense, _blocks5, _floor, _keep_high,  # noqa: F401
                              _random_blocks, _select, dense_blocks, query_k)

AXES = ("soft", "hard", "none")
SELECTIONS = ("smallest", "largest", "random")

__all__ = ["AXES", "SELECTIONS", "nm_mask", "maxq_mask", "maxq_mask_stack", "maxq_v1_mask",
           "axis_query", "block_l1", "dense_blocks", "query_k"]


# ----------------------------------------------------------------------------------------------
# validation and small helpers
# ----------------------------------------------------------------------------------------------
def _check(weight, N, M, *, dense_fraction=0.0, tau=0.01, axis="soft", selection="smallest",
           stacked=False):
    """Validate arguments; return dense_fraction as float. Raises ValueError naming the argument.
    ``stacked``: ``weight`` has one leading layer dimension."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype={weight.dtype}")
    lead = 1 if stacked else 0
    if weight.dim() - lead not in (2, 4):
        what = "a stack (L, ...) of " if stacked else ""
        raise ValueError(f"weight must be {what}2-D (out, in) or 4-D (Co, Ci, kh, kw), "
                         f"got shape {tuple(weight.shape)}")
    for name, v in (("N", N), ("M", M)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if M < 1:
        raise ValueError(f"M must be >= 1, got M={M}")
    if not 1 <= N <= M:
        raise ValueError(f"N must satisfy 1 <= N <= M, got N={N}, M={M}")
    if weight.shape[1 + lead] % M:
        raise ValueError(f"weight.shape[1]={weight.shape[1 + lead]} is not divisible by M={M}")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    try:
        df = float(dense_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"dense_fraction must be a number in [0, 1], got {dense_fraction!r}")
    if not 0.0 <= df <= 1.0:  # also rejects NaN
        raise ValueError(f"dense_fraction must be in [0, 1], got {dense_fraction!r}")
    if not float(tau) > 0.0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    return df


def _magnitudes(weight: torch.Tensor) -> torch.Tensor:
    """A = |W| in float32, contiguous, detached."""
    return weight.detach().abs().to(torch.float32).contiguous()


# ----------------------------------------------------------------------------------------------
# hard N:M mask
# ----------------------------------------------------------------------------------------------
def _block_keep(A5: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Float 0/1 of the block view's shape: 1 on the ``n_keep`` largest of every block (dim 3);
    ties: the lower index is kept."""
    M = A5.shape[3]
    if n_keep >= M:
        return torch.ones_like(A5)
    if M <= 8 and 2 * n_keep >= M:
        return _rank_keep(A5, n_keep)
    keep = torch.zeros_like(A5)
    work = A5
    for _ in range(n_keep):
        first = work.argmax(dim=3, keepdim=True)          # the first maximal index among ties
        keep = keep.scatter(3, first, 1.0)
        work = work.scatter(3, first, -1.0)               # |w| >= 0: it never wins again
    return keep


def _rank_keep(A5: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Pairwise ranks: ``rank_j`` starts at ``M-1-j`` (as if j lost to every later entry); for
    i < j, ``c = a_i >= a_j`` says "i beats j" (``rank_j += c``) and "j does not beat i"
    (``rank_i -= c``); kept iff ``rank_j < n_keep``."""
    M = A5.shape[3]
    cols = A5.unbind(3)
    rank = [torch.full_like(cols[0], M - 1 - j, dtype=torch.int16) for j in range(M)]
    for i in range(M):
        for j in range(i + 1, M):
            c = (cols[i] >= cols[j]).to(torch.int16)
            rank[j] = rank[j] + c
            rank[i] = rank[i] - c
    return torch.stack([(r < n_keep).to(A5.dtype) for r in rank], 3)


def nm_mask(weight: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """Hard N:M mask B (method.md §2): 0/1, same shape and dtype as ``weight``.

    Blocks are M consecutive input channels (dim 1) at fixed (out, kh, kw) for a conv weight
    (Co, Ci, kh, kw), or M consecutive inputs for a linear weight (out, in). Each block keeps
    its N largest |w|; among equal |w| the lower index is kept. ``N == M`` gives ones.
    """
    _check(weight, N, M)
    if N == M:
        return torch.ones_like(weight)
    if _use_native(weight, None):
        from maxq import native
        B = native.block_keep(weight, N, M)
        if B is not None:
            return B.to(weight.dtype)
    A = _magnitudes(weight).unsqueeze(0)
    return _block_keep(_blocks5(A, M), N).view(weight.shape).to(weight.dtype)


# ----------------------------------------------------------------------------------------------
# row order statistics and keep sets (rows along the last dim; any leading dims)
# ----------------------------------------------------------------------------------------------
def _kth_pair(X: torch.Tensor, k: int):
    """(x(k), x(k+1), #(x > x(k))) of every row (last dim) of X, 1 <= k < L."""
    vk = torch.kthvalue(X, k, dim=-1).values
    above = X > vk.unsqueeze(-1)
    n_above = above.sum(-1)
    nearest = torch.where(above, X, math.inf).amin(-1)     # smallest entry > x(k)
    vk1 = torch.where(X.shape[-1] - n_above >= k + 1, vk, nearest)
    return vk, vk1, above, n_above


def _query(X: torch.Tensor, k: int, tau: float, hard: bool, per_layer: bool) -> torch.Tensor:
    """Q (or H when hard) on the rows of X (L, R, Lrow): ``sigmoid((X - thr) / tau) * H`` with
    the reference's expression; ``per_layer``: that expression once per layer ``X[l]``. The
    selections run on a contiguous copy where X is strided (faster row scans on the CPU)."""
    Xc = X if X.is_contiguous() or X.device.type != "cpu" else X.contiguous()
    vk, vk1, above, n_above = _kth_pair(Xc, k)
    H = _keep_high(Xc, k, vk, above, n_above)
    if hard:
        return H.to(torch.float32)
    thr = (vk + vk1) / 2
    if not per_layer:
        return torch.sigmoid((X - thr.unsqueeze(-1)) / tau) * H
    return torch.stack([torch.sigmoid((x - t[:, None]) / tau) * h
                        for x, t, h in zip(X.unbind(0), thr.unbind(0), H.unbind(0))])


def axis_query(X: torch.Tensor, k: int, tau: float = 0.01, hard: bool = False) -> torch.Tensor:
    """Q on the rows of a 2-D X: H ⊙ sigmoid((x - thr)/tau), or H when hard.

    k = 0 keeps every entry with thr = x(1)."""
    if k == 0:
        H = torch.ones(X.shape, dtype=torch.bool, device=X.device)
        if hard:
            return H.to(torch.float32)
        return torch.sigmoid((X - X.amin(1)[:, None]) / tau) * H
    return _query(X.unsqueeze(0), k, tau, hard, per_layer=True)[0]


# ----------------------------------------------------------------------------------------------
# dense-block selection (incremental sparsity, §5)
# ----------------------------------------------------------------------------------------------
def _block_l1(A5: torch.Tensor) -> torch.Tensor:
    """(L, G) block L1 norms of a block view, g order, float32 a_0 + a_1 + ... left to right."""
    l1 = A5[:, :, :, 0, :]
    for j in range(1, A5.shape[3]):
        l1 = l1 + A5[:, :, :, j, :]
    return l1.permute(0, 1, 3, 2).reshape(A5.shape[0], -1)   # (L, Co, P, Ci/M) -> g order


def block_l1(A: torch.Tensor, M: int) -> torch.Tensor:
    """Block L1 norms of A = |W| in block order g: float32 a_0 + a_1 + ... left to right."""
    return _block_l1(_blocks5(A.contiguous().unsqueeze(0), M))[0]


# ----------------------------------------------------------------------------------------------
# MaxQ soft mask
# ----------------------------------------------------------------------------------------------
def maxq_mask(weight: torch.Tensor, N: int, M: int, *, dense_fraction: float = 0.0,
              tau: float = 0.01, axis: str = "soft", selection: str = "smallest",
              progressive: bool = False, generator: torch.Generator | None = None,
              cache: dict | None = None) -> torch.Tensor:
    """MaxQ soft mask ``S = B ⊙ ((1 + Q_filter) + Q_kernel)`` (method.md §3–§5).

    Args:
        weight: (Co, Ci, kh, kw) conv or (out, in) linear weight; Ci (in) divisible by M.
        N, M: keep N of every M consecutive input channels (1 <= N <= M; N == M gives ones).
        dense_fraction: ρ; the floor(ρ·G) blocks picked by ``selection`` keep B = 1.
        tau: sigmoid temperature on raw magnitudes.
        axis: "soft" (sigmoid queries), "hard" (indicators H: S = B ⊙ (1 + H_f + H_k)),
            "none" (S = B).
        selection: which blocks are dense: "smallest" L1, "largest" L1 (inverse arm), "random".
        progressive: progressive-N arm: every block prunes floor((M-N)·(1-ρ)) weights instead
            of a share of blocks being dense.
        generator: torch.Generator for selection="random".
        cache: optional dict (one per layer): on the CPU with the C kernel built, its warm-start
            windows between calls (:mod:`maxq.native`); ignored by the torch path. The output
            is identical with or without it.
    Returns:
        A new tensor S with the shape and dtype of ``weight``: 0 (pruned) or 1 .. 3 (kept).
        Computed in float32. Ties: the lower index wins everywhere (module doc).
    """
    rho = _check(weight, N, M, dense_fraction=dense_fraction, tau=tau, axis=axis,
                 selection=selection)
    if N == M:
        return torch.ones_like(weight)
    if _use_native(weight, cache):
        from maxq import native
        S = native.maxq_mask(weight, N, M, rho, tau, axis, selection, progressive, generator,
                             cache)
        if S is not None:
            return S
    gens = None if generator is None else [generator]
    S = _maxq_stack(weight.unsqueeze(0), N, M, rho, tau, axis, selection, progressive, gens)
    return S[0]


def maxq_mask_stack(weights: torch.Tensor, N: int, M: int, *, dense_fraction: float = 0.0,
                    tau: float = 0.01, axis: str = "soft", selection: str = "smallest",
                    progressive: bool = False,
                    generators: list | None = None) -> torch.Tensor:
    """:func:`maxq_mask` of every layer of a stack ``weights`` (L, *shape) of equal-shaped
    weights, in one pass of ops over the stack: ``out[l]`` is ``torch.equal`` to
    ``maxq_mask(weights[l], ...)`` (``generators``: one per layer, for selection="random")."""
    rho = _check(weights, N, M, dense_fraction=dense_fraction, tau=tau, axis=axis,
                 selection=selection, stacked=True)
    if N == M:
        return torch.ones(weights.shape, dtype=weights.dtype, device=weights.device)
    return _maxq_stack(weights, N, M, rho, tau, axis, selection, progressive, generators)


def _maxq_stack(W: torch.Tensor, N, M, rho, tau, axis, selection, progressive, generators):
    """The torch path on a stack W (L, Co, Ci[, kh, kw]); arguments validated, N < M."""
    A = _magnitudes(W)
    L, Co, Ci = A.shape[:3]
    P = A[0, 0, 0].numel()
    A5 = _blocks5(A, M)
    G = Co * Ci * P // M
    if progressive:
        B5 = _block_keep(A5, M - _floor((M - N) * (1.0 - rho)))
    else:
        B5 = _block_keep(A5, N)
        n_dense = min(G, _floor(rho * G))
        if n_dense >= G:
            B5 = torch.ones_like(B5)
        elif n_dense > 0:
            if selection == "random":
                dense = torch.stack([_random_blocks(G, n_dense, generators[i] if generators
                                                    else None, A.device) for i in range(L)])
            else:
                dense = _select(_block_l1(A5), n_dense, selection)
            B5 = _apply_dense(B5, dense)
    B = B5.view(A.shape)
    if axis == "none":
        return B.to(W.dtype)
    hard, per_layer = axis == "hard", A.device.type == "cpu"
    Xf = A.view(L, Co, Ci * P)
    S = 1 + _query(Xf, query_k(Ci * P, N, M), tau, hard, per_layer).view(A.shape)
    if P > 1:
        Xk = A.view(L, Co * Ci, P).transpose(1, 2)                 # (L, P, Co·Ci), A's memory
        Qk = _query(Xk, query_k(Co * Ci, N, M), tau, hard, per_layer)
        S = S + Qk.transpose(1, 2).reshape(A.shape)
    return (B * S).to(W.dtype)


def _use_native(weight: torch.Tensor, cache=None) -> bool:
    """Whether a call goes to the C kernel: a CPU weight, eager (not being traced), and
    :mod:`maxq.native` built and enabled (``MAXQ_NATIVE`` not 0). ``cache``: unused (the C
    kernel takes the warm-start windows from it when given)."""
    if weight.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    from maxq import native
    return native.lib() is not None


# ----------------------------------------------------------------------------------------------
# the authors' first variant ("V1"), an ablation arm
# ----------------------------------------------------------------------------------------------
def maxq_v1_mask(weight: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """The authors' MaxQ "V1" mask: ``S = B ⊙ ((1 + H_filter) + H_kernel)`` with 0/1 indicators.

    Differs from :func:`maxq_mask` with ``axis="hard"`` in one place: the kernel-axis term is
    also applied to 1x1 convs (and linears), where its single row spans all ``Co·Ci`` weights,
    so a 1x1 mask takes the values 0, 1, 2, 3. V1 has no incremental sparsity (no dense blocks).
    ``H`` keeps the ``L - k`` largest of a row, ``k = floor((M-N)·L/M)``; ties: lower index
    kept, as everywhere in this module.
    """
    _check(weight, N, M)
    if N == M:
        return torch.ones_like(weight)
    A = _magnitudes(weight)
    A4 = A if A.dim() == 4 else A.view(*A.shape, 1, 1)
    Co, Ci, kh, kw = A4.shape
    B = _block_keep(_blocks5(A4.unsqueeze(0), M), N).view(A4.shape)
    Xf = A4.reshape(Co, Ci * kh * kw)
    Hf = axis_query(Xf, query_k(Xf.shape[1], N, M), hard=True).view(A4.shape)
    Xk = A4.reshape(Co * Ci, kh * kw).T
    Hk = axis_query(Xk, query_k(Xk.shape[1], N, M), hard=True).T.reshape(A4.shape)
    S = B.to(torch.float32) * ((1 + Hf) + Hk)
    return S.view(weight.shape).to(weight.dtype)
