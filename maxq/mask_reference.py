"""Plain sort-based reference formulation of the MaxQ mask equations (docs/method.md §1–§5).

This is the equality reference for ``maxq.masks`` (tests compare with ``torch.equal``) and the
baseline of ``benchmarks/masks.py``. It is deliberately straightforward: every selection is a full
``torch.sort`` (stable, so that among equal values the lower index comes first = is kept).

Float conventions shared with ``maxq.masks`` (so that results are bit-identical):
``A = |W|`` in float32; block L1 = a_0 + a_1 + ... + a_{M-1} left to right; ``k = (M-N)·L // M``;
``thr = (x(k) + x(k+1)) / 2``; ``Q = H * sigmoid((x - thr) / tau)``; ``S = B * ((1 + Q_f) + Q_k)``;
counts from fractions are ``floor(x + 1e-9)``.
"""
from __future__ import annotations

import math

import torch


def _floor(x: float) -> int:
    return int(math.floor(x + 1e-9))


def blocks_of(A: torch.Tensor, M: int) -> torch.Tensor:
    """(G, M) blocks, g in (co, h, w, ci // M) order: permute to (Co, kh, kw, Ci) and reshape."""
    if A.dim() == 4:
        return A.permute(0, 2, 3, 1).reshape(-1, M)
    return A.reshape(-1, M)


def unblock(Bg: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of blocks_of for a (G, M) tensor."""
    if len(shape) == 4:
        Co, Ci, kh, kw = shape
        return Bg.reshape(Co, kh, kw, Ci).permute(0, 3, 1, 2)
    return Bg.reshape(shape)


def reference_nm_mask(weight: torch.Tensor, N: int, M: int,
                      n_keep: int | None = None) -> torch.Tensor:
    """Hard N:M mask (float32, shape of weight): stable descending sort of each block, keep the
    first ``n_keep`` (default N)."""
    A = weight.detach().abs().float()
    blocks = blocks_of(A, M)
    n_keep = N if n_keep is None else n_keep
    order = torch.sort(blocks, dim=1, descending=True, stable=True).indices
    B = torch.zeros_like(blocks)
    B.scatter_(1, order[:, :n_keep], 1.0)
    return unblock(B, A.shape)


def reference_query(X: torch.Tensor, k: int, tau: float, hard: bool = False) -> torch.Tensor:
    """Q on the rows of X (R, L): keep the L-k largest (stable sort: ties -> lower index kept);
    thr = (x(k) + x(k+1)) / 2; Q = H * sigmoid((X - thr)/tau) (or H when hard)."""
    R, L = X.shape
    vals, idx = torch.sort(X, dim=1, descending=True, stable=True)
    H = torch.zeros_like(X)
    H.scatter_(1, idx[:, : L - k], 1.0)
    if hard:
        return H
    if k == 0:
        thr = vals[:, L - 1]                        # x(1): the k = 0 edge rule
    else:
        thr = (vals[:, L - k] + vals[:, L - k - 1]) / 2   # (x(k) + x(k+1)) / 2
    return torch.sigmoid((X - thr[:, None]) / tau) * H


def reference_maxq_mask(weight: torch.Tensor, N: int, M: int, *, dense_fraction: float = 0.0,
                        tau: float = 0.01, axis: str = "soft", selection: str = "smallest",
                        progressive: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """S = B * ((1 + Q_filter) + Q_kernel), by full sorts. Same signature as maxq.masks.maxq_mask
    (without cache)."""
    if N == M:
        return torch.ones_like(weight)
    A = weight.detach().abs().float()
    rho = float(dense_fraction)
    blocks = blocks_of(A, M)
    G = blocks.shape[0]

    # B: N largest of each block (progressive: M - floor((M-N)(1-rho)) largest)
    n_keep = M - _floor((M - N) * (1.0 - rho)) if progressive else N
    order = torch.sort(blocks, dim=1, descending=True, stable=True).indices
    Bg = torch.zeros_like(blocks)
    Bg.scatter_(1, order[:, :n_keep], 1.0)

    # dense blocks: floor(rho*G) by L1 norm
    if not progressive:
        n_dense = min(G, _floor(rho * G))
        if n_dense > 0:
            if selection == "random":
                chosen = torch.randperm(G, generator=generator)[:n_dense]
            else:
                l1 = blocks[:, 0].clone()
                for j in range(1, M):
                    l1 = l1 + blocks[:, j]
                desc = selection == "largest"
                chosen = torch.sort(l1, descending=desc, stable=True).indices[:n_dense]
            Bg[chosen] = 1.0
    B = unblock(Bg, A.shape)
    if axis == "none":
        return B.contiguous().to(weight.dtype)

    hard = axis == "hard"
    Co, Ci = A.shape[0], A.shape[1]
    khkw = A[0, 0].numel()
    Xf = A.reshape(Co, Ci * khkw)
    Qf = reference_query(Xf, (M - N) * Xf.shape[1] // M, tau, hard).reshape(A.shape)
    if khkw > 1:
        Xk = A.reshape(Co * Ci, khkw).t()
        Qk = reference_query(Xk, (M - N) * Xk.shape[1] // M, tau, hard).t().reshape(A.shape)
    else:
        Qk = torch.zeros_like(A)
    S = B * ((1 + Qf) + Qk)
    return S.contiguous().to(weight.dtype)
