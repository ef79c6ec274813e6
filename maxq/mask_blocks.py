"""The N:M block layout, the counts and the dense-block selection of the masks (method.md §2,
§5): shared by the torch path (:mod:`maxq.masks`, which re-exports every name here) and the C
path (:mod:`maxq.native`), below both so that neither imports the other back. Pure tensor
functions; ties: the lower index wins (as everywhere in :mod:`maxq.masks`).
"""
from __future__ import annotations

import math

import torch


def _floor(x: float) -> int:
    """floor with a 1e-9 guard against float round-off (0.29 * 100 -> 29)."""
    return int(math.floor(x + 1e-9))


def query_k(L: int, N: int, M: int) -> int:
    """Number of dropped entries of a query row: k = floor((M - N) · L / M), exact."""
    return (M - N) * L // M


def _blocks5(A: torch.Tensor, M: int) -> torch.Tensor:
    """View of a contiguous stack A (L, Co, Ci, ...) as (L, Co, Ci/M, M, P): element j of every
    block is ``[:, :, :, j, :]`` (P = kh·kw, 1 for a linear weight)."""
    return A.view(A.shape[0], A.shape[1], A.shape[2] // M, M, -1)


def _keep_high(X, k: int, vk, above=None, n_above=None) -> torch.Tensor:
    """Bool: the L-k largest entries of every row of X, ties at the boundary: lower index kept
    (= the first L-k of a stable descending sort)."""
    if above is None:
        above = X > vk.unsqueeze(-1)
        n_above = above.sum(-1)
    need = (X.shape[-1] - k) - n_above                   # boundary-valued entries still to keep
    eq = X == vk.unsqueeze(-1)
    return above | (eq & (eq.cumsum(-1, dtype=torch.int32) <= need.unsqueeze(-1)))


def _keep_low(X, k: int, vk) -> torch.Tensor:
    """Bool: the k smallest entries of every row of X, ties at the boundary: lower index kept
    (= the first k of a stable ascending sort)."""
    below = X < vk.unsqueeze(-1)
    need = k - below.sum(-1)
    eq = X == vk.unsqueeze(-1)
    return below | (eq & (eq.cumsum(-1, dtype=torch.int32) <= need.unsqueeze(-1)))


def _select(l1: torch.Tensor, n: int, selection: str) -> torch.Tensor:
    """Bool (L, G): per row the n blocks of smallest / largest L1 (ties: lower g), 0 < n < G."""
    G = l1.shape[-1]
    if selection == "smallest":
        return _keep_low(l1, n, torch.kthvalue(l1, n, dim=-1).values)
    return _keep_high(l1, G - n, torch.kthvalue(l1, G - n, dim=-1).values)


def _random_blocks(G: int, n: int, generator, device) -> torch.Tensor:
    """Bool (G,): ``torch.randperm(G, generator=generator)[:n]`` (generator's own device)."""
    gdev = generator.device if generator is not None else device
    perm = torch.randperm(G, generator=generator, device=gdev)[:n].to(device)
    return torch.zeros(G, dtype=torch.bool, device=device).index_fill(0, perm, True)


def dense_blocks(l1: torch.Tensor, n: int, selection: str = "smallest",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (G,): the n blocks kept dense, from L1 norms in g order.

    ``smallest`` / ``largest`` L1 (ties: lower g first) or ``random``
    (``torch.randperm(G, generator=generator)[:n]``)."""
    G = l1.numel()
    if n >= G:
        return torch.ones(G, dtype=torch.bool, device=l1.device)
    if n <= 0:
        return torch.zeros(G, dtype=torch.bool, device=l1.device)
    if selection == "random":
        return _random_blocks(G, n, generator, l1.device)
    return _select(l1.reshape(1, G), n, selection)[0]


def _apply_dense(B5: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """B = 1 on the dense blocks (dense: bool (L, G) in g order; B5: float block view)."""
    L, Co, nb, _, P = B5.shape
    d = dense.view(L, Co, P, nb).permute(0, 1, 3, 2).unsqueeze(3).to(B5.dtype)
    return torch.maximum(B5, d)
