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

Counts derived from fractions use ``floor(x + 1e-9)`` (so ``0.29 · 100`` gives 29, not 28).

**Two paths, one result.** On the CPU, :func:`maxq_mask` and :func:`nm_mask` use fused passes in
C (``maxq/_native.c`` through :mod:`maxq.native`; :func:`_native_maxq_mask`): B (and block L1)
in one pass over W, each axis's warm window verified and its statistics picked in one pass (an
exact quickselect where a window misses twice, and cold), the terms ``(x - thr) / tau`` (B and H
applied, else -inf) in one pass, torch's ``sigmoid_`` on each whole tensor, ``S = (Q_f + B) + Q_k``
in one pass. Elsewhere (CUDA, no C compiler, ``MAXQ_NATIVE=0``, a NaN weight) the torch path
below runs. Both are ``torch.equal`` to the reference; the tests run on both.

How it is fast (the mask is recomputed at every training step) while staying bit-identical to
the sort-based reference (``maxq/mask_reference.py``):

* Block ranks by pairwise comparisons (small M): ``rank_j = #{i: a_i > a_j or (a_i == a_j and
  i < j)}``, kept iff ``rank_j < N``; no sort.
* Row order statistics ``x(k), x(k+1)`` without sorting rows: a per-row window ``[lo, hi]``
  is *verified* by counting, per chunk of the row, the entries below ``lo`` and above ``hi``
  (two compare passes): if ``c_lo = #(x < lo) <= k-1`` and ``#(x > hi) <= L-k-1`` both
  statistics are in the window, namely the ``(k - c_lo)``-th and next smallest in-window
  entries, which are gathered from the few chunks holding any and sorted. Warm (``cache``),
  the window is the previous call's statistics widened by a few spacings and the recent
  shift of thr (weights move little per training step); a row whose window misses keeps the
  bound it verified and is refined from there. Cold, a few counting rounds narrow a certified
  bracket (sample order statistics, then interpolation of the empirical CDF). ``kthvalue`` is
  only a last resort. The result never depends on the cache.
* Composition without mask passes: ``Y = addcmul(-thr, A, B)`` is ``fl(A - thr)`` where B = 1
  and ``-thr <= 0`` where B = 0; ``threshold_(Y, 0, -inf)`` then drops the pruned entries and the
  ``k`` smallest (``x > thr`` iff ``fl(x - thr) > 0``, and when ``x(k) < thr < x(k+1)`` that
  is exactly H; rows with ties or adjacent boundary floats are patched exactly); ``Y /= tau``;
  ``sigmoid_`` (-inf -> exactly 0); ``S = (Y_f + B) + Y_k``. ``sigmoid`` is applied to whole,
  identically laid-out tensors as in the reference, because torch's vectorised and scalar
  sigmoid paths can differ in the last bit.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F

from maxq import native

AXES = ("soft", "hard", "none")
SELECTIONS = ("smallest", "largest", "random")
_CHUNK = 64          # entries per chunk when counting window hits
_FILTER_CHUNK = 8    # entries per chunk on the (short) filter-axis rows

__all__ = ["AXES", "SELECTIONS", "nm_mask", "maxq_mask", "maxq_v1_mask", "axis_query",
           "block_l1", "dense_blocks", "query_k"]


# ----------------------------------------------------------------------------------------------
# per-stage profile (benchmarks/train_step.py reports where a refresh spends its time)
# ----------------------------------------------------------------------------------------------
_PROFILE: dict | None = None          # stage -> seconds, while profile_stages() is active
_PROFILE_CLOCK = time.perf_counter


@contextlib.contextmanager
def profile_stages(clock=time.perf_counter):
    """Accumulate the time :func:`maxq_mask` spends per stage into the yielded dict.

    For benchmarks: the stages are timed with ``clock`` (``time.process_time`` on a busy machine,
    with one thread), so call the masks one after another (not from several threads) while it is
    active. Off (the default), each stage mark costs one attribute test."""
    global _PROFILE, _PROFILE_CLOCK
    previous = _PROFILE, _PROFILE_CLOCK
    _PROFILE, _PROFILE_CLOCK = {}, clock
    try:
        yield _PROFILE
    finally:
        _PROFILE, _PROFILE_CLOCK = previous


class _Lap:
    """Stage marks of one :func:`maxq_mask` call: ``lap("name")`` charges the time since the
    previous mark to ``name`` (no-op unless :func:`profile_stages` is active)."""

    __slots__ = ("prof", "t")

    def __init__(self):
        self.prof = _PROFILE
        self.t = _PROFILE_CLOCK() if self.prof is not None else 0.0

    def __call__(self, name: str) -> None:
        if self.prof is not None:
            t = _PROFILE_CLOCK()
            self.prof[name] = self.prof.get(name, 0.0) + t - self.t
            self.t = t


# ----------------------------------------------------------------------------------------------
# validation and small helpers
# ----------------------------------------------------------------------------------------------
def _check(weight, N, M, *, dense_fraction=0.0, tau=0.01, axis="soft", selection="smallest"):
    """Validate arguments; return dense_fraction as float. Raises ValueError naming the argument."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype={weight.dtype}")
    if weight.dim() not in (2, 4):
        raise ValueError(f"weight must be 2-D (out, in) or 4-D (Co, Ci, kh, kw), "
                         f"got shape {tuple(weight.shape)}")
    for name, v in (("N", N), ("M", M)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if M < 1:
        raise ValueError(f"M must be >= 1, got M={M}")
    if not 1 <= N <= M:
        raise ValueError(f"N must satisfy 1 <= N <= M, got N={N}, M={M}")
    if weight.shape[1] % M:
        raise ValueError(f"weight.shape[1]={weight.shape[1]} is not divisible by M={M}")
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


def _floor(x: float) -> int:
    """floor with a 1e-9 guard against float round-off (0.29 * 100 -> 29)."""
    return int(math.floor(x + 1e-9))


def query_k(L: int, N: int, M: int) -> int:
    """Number of dropped entries of a query row: k = floor((M - N) · L / M), exact."""
    return (M - N) * L // M


def _gen_device(generator, like: torch.Tensor) -> torch.device:
    """Device for random draws: the generator's own device, else that of ``like``."""
    return generator.device if generator is not None else like.device


def _buffer(cache, name, shape, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Scratch tensor; reused from ``cache`` between calls (saves page faults), else new."""
    if cache is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    ws = cache.setdefault("workspace", {})
    buf = ws.get(name)
    if (buf is None or buf.shape != torch.Size(shape) or buf.dtype != dtype
            or buf.device != like.device):
        buf = ws[name] = torch.empty(shape, dtype=dtype, device=like.device)
    return buf


def _magnitudes(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A = |W| in float32, contiguous, detached."""
    w = weight.detach()
    if w.dtype == torch.float32 and w.is_contiguous() and out is not None:
        return torch.abs(w, out=out)
    return w.abs().to(torch.float32).contiguous()


def _block_view(A: torch.Tensor, M: int) -> torch.Tensor:
    """View of A as (Co, Ci/M, M, kh·kw): element j of every block is ``[:, :, j, :]``."""
    return A.view(A.shape[0], A.shape[1] // M, M, -1)


def _count(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact counts of a float 0/1 tensor along ``dim`` (float32 is exact below 2**24)."""
    dtype = torch.float32 if mask.shape[dim] < 2 ** 24 else torch.float64
    return mask.sum(dim, dtype=dtype)


def _ninf(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(-math.inf, device=like.device)


# ----------------------------------------------------------------------------------------------
# hard N:M mask
# ----------------------------------------------------------------------------------------------
def _block_keep(A: torch.Tensor, n_keep: int, M: int, out: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
    """Float 0/1 in block view (Co, Ci/M, M, kh·kw): 1 on the ``n_keep`` largest of every
    block; ties: the lower index is kept.

    * M = 4: a min/max network gives every block's ``n_keep``-th and next largest values
      t_n >= t_n1; ``a >= t_n`` keeps exactly ``n_keep`` entries when t_n > t_n1. Blocks with
      t_n == t_n1 (ties) are redone by rank counting.
    * other M <= 8 with ``n_keep >= M/2``: rank counting (:func:`_rank_keep`).
    * otherwise ``n_keep`` rounds: the block maximum wins (the first maximal index among ties),
      then is masked out.
    """
    A4 = _block_view(A, M)
    if out is None:
        out = torch.empty(A4.shape, dtype=torch.float32, device=A.device)
    keep = out.view(A4.shape)
    if n_keep >= M:
        return keep.fill_(1.0)
    if M == 4:
        t_n, t_n1 = _network4(A4, n_keep, cache)
        tie = torch.eq(t_n, t_n1, out=_buffer(cache, "tie", t_n.shape, A, torch.bool))
        # (an explicitly expanded view iterates faster than implicit broadcasting here)
        torch.ge(A4, t_n.unsqueeze(2).expand(A4.shape), out=keep)
        if int(tie.view(torch.uint8).max()):                     # (faster than tie.any())
            idx = tie.nonzero(as_tuple=True)                     # (co, block, position)
            blocks = A4[idx[0], idx[1], :, idx[2]]               # (n, M)
            kept = _rank_keep(list(blocks.unbind(1)), n_keep)
            keep[idx[0], idx[1], :, idx[2]] = torch.stack(kept, 1).to(keep.dtype)
        return keep
    if M <= 8 and 2 * n_keep >= M and n_keep > 1:
        cols = [A4[:, :, j, :] for j in range(M)]
        for j, kj in enumerate(_rank_keep(cols, n_keep, cache)):
            keep[:, :, j, :].copy_(kj)
        return keep
    work = A4
    for i in range(n_keep):
        won = keep if n_keep == 1 else torch.empty_like(keep)
        torch.ge(work, _block_max(work).expand(work.shape), out=won)
        many = won.sum(2) > 1                                    # ties for the maximum
        if int(many.view(torch.uint8).max()):                    # first maximal index wins
            idx = many.nonzero(as_tuple=True)
            first = work[idx[0], idx[1], :, idx[2]].argmax(1)
            won[idx[0], idx[1], :, idx[2]] = torch.nn.functional.one_hot(first, M).to(won.dtype)
        if n_keep > 1:
            if i == 0:
                keep.copy_(won)
            else:
                keep.add_(won)
            work = work - won * (work + 1)    # winners -> -1 (|w| >= 0: they never win again)
    return keep


def _block_max(A4: torch.Tensor) -> torch.Tensor:
    """Maximum over dim 2 of (Co, Ci/M, M, P), as a (Co, Ci/M, 1, P) tensor: a halving tree of
    elementwise maximums when M is a power of two (faster than a strided reduction)."""
    m = A4
    while m.shape[2] > 1 and m.shape[2] % 2 == 0:
        h = m.shape[2] // 2
        m = torch.maximum(m[:, :, :h], m[:, :, h:])
    return m if m.shape[2] == 1 else m.amax(2, keepdim=True)


def _network4(A4: torch.Tensor, n_keep: int, cache):
    """n-th and (n+1)-th largest of every 4-block (min/max network), each (Co, Ci/4, kh·kw)."""
    a0, a1, a2, a3 = (A4[:, :, j, :] for j in range(4))
    shape = a0.shape
    h01, l01, h23, l23 = (_buffer(cache, f"net{i}", shape, A4) for i in range(4))
    torch.maximum(a0, a1, out=h01)
    torch.minimum(a0, a1, out=l01)
    torch.maximum(a2, a3, out=h23)
    torch.minimum(a2, a3, out=l23)
    if n_keep == 1:                                   # largest, second largest
        second = torch.maximum(torch.minimum(h01, h23), torch.maximum(l01, l23))
        return torch.maximum(h01, h23, out=h01), second
    # P = min(h01, h23), Q = max(l01, l23): second = max(P, Q), third = min(P, Q)
    P = torch.minimum(h01, h23)
    Q = torch.maximum(l01, l23)
    third = torch.minimum(P, Q, out=h23)
    if n_keep == 2:
        return torch.maximum(P, Q, out=h01), third
    return third, torch.minimum(l01, l23, out=l01)     # third, smallest


def _rank_keep(cols, n_keep: int, cache=None):
    """Kept indicator (uint8 0/1) of every column of blocks given as a list of M columns.

    ``rank_j = #{i: a_i > a_j or (a_i == a_j and i < j)}``; kept iff ``rank_j < n_keep``. For
    i < j the one comparison ``c = a_i >= a_j`` says "i beats j" (c) and "j beats i" (1 - c).
    Ranks are uint8, start at ``M-1-j`` (as if j lost to every later entry), and
    ``rank_j += c; rank_i -= c``."""
    M, shape, like = len(cols), cols[0].shape, cols[0]
    rank = [_buffer(cache, f"rank{j}", shape, like, torch.uint8).fill_(M - 1 - j)
            for j in range(M)]
    c = _buffer(cache, "beats", shape, like, torch.bool)
    cu = c.view(torch.uint8)
    for i in range(M):
        for j in range(i + 1, M):
            torch.ge(cols[i], cols[j], out=c)
            rank[j] += cu
            rank[i] -= cu
    # rank < n_keep  <=>  bit 7 of (rank - n_keep) mod 256, as ranks < M <= 128
    return [r.sub_(n_keep).bitwise_right_shift_(7) for r in rank]


def nm_mask(weight: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """Hard N:M mask B (method.md §2): 0/1, same shape and dtype as ``weight``.

    Blocks are M consecutive input channels (dim 1) at fixed (out, kh, kw) for a conv weight
    (Co, Ci, kh, kw), or M consecutive inputs for a linear weight (out, in). Each block keeps
    its N largest |w|; among equal |w| the lower index is kept. ``N == M`` gives ones.
    """
    _check(weight, N, M)
    if N < M:
        B = _native_block_keep(weight, N, M)
        if B is not None:
            return B.to(weight.dtype)
    A = _magnitudes(weight)
    return _block_keep(A, N, M).view(weight.shape).to(weight.dtype)


# ----------------------------------------------------------------------------------------------
# rows of a query axis
# ----------------------------------------------------------------------------------------------
class _FilterRows:
    """Rows of a contiguous (R, L) tensor X: the filter axis (``A.view(Co, -1)``) or block L1
    norms (R = 1). Chunk c of a row holds the entries c, c + nch, c + 2·nch, ... (C of them),
    so that per-chunk sums add contiguous memory."""

    def __init__(self, X: torch.Tensor, chunk: int = _CHUNK):
        self.X = X
        self.R, self.L = X.shape
        self.C = math.gcd(self.L, chunk)
        self.nch = self.L // self.C

    def rows(self, idx=None) -> torch.Tensor:
        return self.X if idx is None else self.X[idx]

    def row_max(self) -> torch.Tensor:
        return self.X.amax(1)

    def counts(self, lo, hi, scratch):
        """#(x < lo) and #(x > hi) per row (float32), lo, hi per row."""
        b = scratch.view(-1)[: self.R * self.L].view(self.R, self.L)
        torch.lt(self.X, lo[:, None], out=b)
        c_lo = _count(b, 1)
        torch.gt(self.X, hi[:, None], out=b)
        return c_lo.float(), _count(b, 1).float()

    def chunk_counts(self, lo, hi, scratch):
        """#(x < lo) and #(x > hi) per chunk (float (R, nch)); lo, hi per row."""
        b = scratch.view(-1)[: self.R * self.L].view(self.R, self.L)
        torch.lt(self.X, lo[:, None], out=b)
        s_lo = b.view(self.R, self.C, self.nch).sum(1)
        torch.gt(self.X, hi[:, None], out=b)
        return s_lo, b.view(self.R, self.C, self.nch).sum(1)

    def gather(self, r, ch) -> torch.Tensor:
        """(n, C) values of chunks (r, ch)."""
        return self.X.view(self.R, self.C, self.nch)[r, :, ch]

    def addcmul(self, A, B, thr, out):
        """out <- -thr + A·B (row-wise thr)."""
        torch.addcmul(-thr[:, None], A.view(self.R, self.L), B.view(self.R, self.L),
                      out=out.view(self.R, self.L))

    def gt(self, A, thr, out):
        torch.gt(A.view(self.R, self.L), thr[:, None], out=out.view(self.R, self.L))

    def rows_of(self, t: torch.Tensor, idx) -> torch.Tensor:
        return t.view(self.R, self.L)[idx]

    def set_rows(self, t: torch.Tensor, idx, values):
        t.view(self.R, self.L)[idx] = values


class _KernelRows:
    """Kernel axis of a (Co, Ci, kh, kw) tensor: row p = spatial position (P = kh·kw rows),
    entry e = co·Ci + ci, i.e. ``X[p, e] = A.view(-1)[e·P + p]``. Chunk c holds the entries
    c·T .. c·T + T - 1. Per-row values are tiled to (T·P,) so that compares run over
    contiguous memory."""

    def __init__(self, A: torch.Tensor, chunk: int = _CHUNK):
        self.A = A
        self.P = A.shape[2] * A.shape[3]
        self.E = A.shape[0] * A.shape[1]
        self.R, self.L = self.P, self.E
        self.C = math.gcd(self.E, chunk)
        self.nch = self.E // self.C
        self.flat = A.view(self.nch, self.C * self.P)

    def rows(self, idx=None) -> torch.Tensor:
        X = self.A.view(self.E, self.P).t()
        return X if idx is None else X[idx]

    def row_max(self) -> torch.Tensor:
        return self.A.view(self.E, self.P).amax(0)

    def _tiled(self, v):
        return v.repeat(self.C)

    def counts(self, lo, hi, scratch):
        s_lo, s_hi = self.chunk_counts(lo, hi, scratch)
        return _count(s_lo, 1).float(), _count(s_hi, 1).float()

    def chunk_counts(self, lo, hi, scratch):
        b = scratch.view(-1)[: self.E * self.P].view(self.flat.shape)
        torch.lt(self.flat, self._tiled(lo), out=b)
        s_lo = b.view(self.nch, self.C, self.P).sum(1).t()
        torch.gt(self.flat, self._tiled(hi), out=b)
        return s_lo, b.view(self.nch, self.C, self.P).sum(1).t()

    def gather(self, r, ch) -> torch.Tensor:
        return self.A.view(self.nch, self.C, self.P)[ch, :, r]

    def addcmul(self, A, B, thr, out):
        shape = self.flat.shape
        torch.addcmul(-self._tiled(thr), A.view(shape), B.view(shape), out=out.view(shape))

    def gt(self, A, thr, out):
        shape = self.flat.shape
        torch.gt(A.view(shape), self._tiled(thr), out=out.view(shape))

    def rows_of(self, t: torch.Tensor, idx) -> torch.Tensor:
        return t.view(self.E, self.P)[:, idx].t()

    def set_rows(self, t: torch.Tensor, idx, values):
        t.view(self.E, self.P)[:, idx] = values.t()


# ----------------------------------------------------------------------------------------------
# exact row order statistics
# ----------------------------------------------------------------------------------------------
def _kth_pair(X: torch.Tensor, k: int):
    """(x(k), x(k+1)) of every row of X by two kthvalue calls (last resort)."""
    return torch.kthvalue(X, k, dim=1).values, torch.kthvalue(X, k + 1, dim=1).values


def _window_select(rows, k: int, lo, hi, scratch):
    """(x(k), x(k+1), ok, n_in, c_lo, c_hi) of every row whose window [lo, hi] brackets both
    statistics.

    ``c_lo = #(x < lo)``, ``c_hi = #(x > hi)``; ``ok``: ``c_lo <= k-1`` (so x(k) >= lo) and
    ``c_hi <= L-k-1`` (so x(k+1) <= hi). The window is counted per chunk; only chunks with
    in-window entries are gathered; sorted by (row, value) (values >= 0, so their bit patterns
    sort like them), the in-window entries hold x(k) at rank ``k - c_lo``. ``n_in``: in-window
    entries per row. Rows that are not ok get garbage values."""
    s_lo, s_hi = rows.chunk_counts(lo, hi, scratch)
    c_lo, c_hi = _count(s_lo, 1), _count(s_hi, 1)
    ok = (c_lo <= k - 1) & (c_hi <= rows.L - k - 1)
    hit = torch.lt(s_lo.add_(s_hi), rows.C).reshape(-1).nonzero().squeeze(1)  # 1-D: faster
    r = hit.div(s_lo.shape[1], rounding_mode="floor")
    ch = hit - r * s_lo.shape[1]
    vals = rows.gather(r, ch)                                        # (n, C)
    inside = (vals >= lo[r][:, None]) & (vals <= hi[r][:, None])
    flat = inside.view(-1).nonzero().squeeze(1)
    v, row = vals.view(-1)[flat], r[flat // rows.C]
    v = v[torch.sort((row << 32) | v.view(torch.int32).to(torch.int64)).indices]
    n_in = torch.bincount(row, minlength=rows.R)
    if v.numel() < 2:
        v = torch.zeros(2, dtype=v.dtype, device=v.device)
    j = (torch.cumsum(n_in, 0) - n_in + (k - c_lo.long()) - 1).clamp(0, v.numel() - 2)
    return v[j], v[j + 1], ok, n_in, c_lo, c_hi


class _Bracket:
    """Per-row certified bracket of x(k), x(k+1): ``#(x < lo) = n_lo <= k-1`` (so x(k) >= lo)
    and ``#(x > hi) <= L-k-1`` (so x(k+1) <= hi); ``n_hi`` estimates ``#(x > hi)`` after a
    miss. Starts as [0, inf] (inf is replaced by the row maximum when needed)."""

    def __init__(self, R: int, device):
        self.lo = torch.zeros(R, device=device)
        self.hi = torch.full((R,), math.inf, device=device)
        self.n_lo = torch.zeros(R, device=device)
        self.n_hi = torch.zeros(R, device=device)

    def update(self, k: int, L: int, lo, hi, c_lo, c_hi) -> None:
        """Tighten with the counts ``c_lo = #(x < lo)``, ``c_hi = #(x > hi)`` of a window."""
        ok_lo, ok_hi = c_lo <= k - 1, c_hi <= L - k - 1
        self.lo, self.n_lo = torch.where(ok_lo, lo, self.lo), torch.where(ok_lo, c_lo, self.n_lo)
        self.hi, self.n_hi = torch.where(ok_hi, hi, self.hi), torch.where(ok_hi, c_hi, self.n_hi)
        above = c_lo >= k + 1                                # x(k+1) < lo
        self.hi = torch.where(above, torch.minimum(self.hi, lo), self.hi)
        self.n_hi = torch.where(above, torch.maximum(self.n_hi, L - c_lo), self.n_hi)
        below = c_hi >= L - k + 1                            # x(k) > hi
        self.lo = torch.where(below, torch.maximum(self.lo, hi), self.lo)
        self.n_lo = torch.where(below, torch.maximum(self.n_lo, L - c_hi), self.n_lo)


def _refine(rows, k: int, scratch, bracket: _Bracket, lo, hi, rounds: int = 6):
    """Exact (x(k), x(k+1), n_in, bracket) of every row, from a bracket and a first proposal
    window [lo, hi].

    Each round is one counting pass over the rows; a bound that verifies tightens the bracket;
    the next proposal interpolates the empirical CDF inside the bracket (position
    ± 1.5·sqrt(entries) + 2). When rows have max(32, L/256) entries left on average (or after
    ``rounds``), :func:`_window_select` extracts the statistics from the brackets;
    ``kthvalue`` is the last resort."""
    R, L = rows.R, rows.L
    target = max(32, L // 256)                         # in-window entries per row to stop at
    b = bracket
    for _ in range(max(1, rounds)):                    # (the first round also bounds b.hi)
        hi = torch.maximum(lo, hi)
        c_lo, c_hi = rows.counts(lo, hi, scratch)
        b.update(k, L, lo, hi, c_lo, c_hi)
        if bool(torch.isinf(b.hi).any()):
            b.hi = torch.where(torch.isinf(b.hi), rows.row_max(), b.hi)
        w = (L - b.n_lo - b.n_hi).clamp_min(1)
        if float(w.mean()) <= target:
            break
        width = b.hi - b.lo
        pos = b.lo + width * ((k - b.n_lo - 0.5) / w).clamp(0, 1)
        half = width * (1.5 * w.sqrt() + 2) / w
        lo = torch.maximum(b.lo, pos - half)
        hi = torch.minimum(b.hi, pos + half)
    vk, vk1, ok, n_in, _, _ = _window_select(rows, k, b.lo, b.hi, scratch)
    bad = (~ok).nonzero().flatten()
    if bad.numel():
        vk[bad], vk1[bad] = _kth_pair(rows.rows(bad), k)
    return vk, vk1, n_in, b


def _bracket_search(rows, k: int, scratch, rounds: int = 6):
    """Exact (x(k), x(k+1), n_in, bracket) of every row without a previous window (cold).

    The first proposal comes from the order statistics of a sample of ~sqrt(L) (64 .. 2048)
    entries of the row (± 3 standard deviations of the sample rank); then :func:`_refine`."""
    R, L = rows.R, rows.L
    X = rows.rows()
    step = max(1, L // min(2048, max(64, math.isqrt(L))))
    sample = torch.sort(X[:, ::step], dim=1).values
    ns = sample.shape[1]
    q = k / L
    sd = math.sqrt(ns * q * (1 - q)) + 1
    lo = sample[:, max(0, math.floor(q * ns - 3 * sd) - 1)]
    hi = sample[:, min(ns - 1, math.ceil(q * ns + 3 * sd))]
    return _refine(rows, k, scratch, _Bracket(R, X.device), lo, hi, rounds)


# warm windows (see _order_stats)
_WARM_SPACINGS = 8.0     # margin: this many spacings of the order statistics near thr ...
_WARM_SHIFTS = 2.0       # ... plus this many times the recent shift of thr per call
_SHIFT_DECAY = 0.5       # recent shift = max(|thr - previous thr|, decay · previous shift)


def _order_stats(rows, k: int, state: dict | None, scratch):
    """Exact (x(k), x(k+1)), 1 <= k < L, of every row; ``state`` (a dict, updated in place)
    carries the window to the next call.

    Warm: the window is ``[x(k) - m, x(k+1) + m]`` around the previous call's statistics with
    ``m = 8·spacing + 2·shift`` (spacing: the mean gap between order statistics near thr, from
    the previous window; shift: a decaying maximum of the per-call move of thr). Rows whose
    window misses keep what it certified (a bound on one side, and how many entries lie beyond
    the other) and are refined from a window moved past the miss by the missing count times the
    spacing (:func:`_refine`, on those rows only). Cold: :func:`_bracket_search`."""
    R, L = rows.R, rows.L
    warm = state is not None and "vk" in state and state["vk"].shape[0] == R
    if not warm:
        vk, vk1, n_in, b = _bracket_search(rows, k, scratch)
        lo, hi = b.lo, b.hi
    else:
        spacing = state["spacing"]
        m = _WARM_SPACINGS * spacing + _WARM_SHIFTS * state["shift"] + 1e-30
        lo = (state["vk"] - m).clamp_min(0.0)
        hi = state["vk1"] + m
        vk, vk1, ok, n_in, c_lo, c_hi = _window_select(rows, k, lo, hi, scratch)
        bad = (~ok).nonzero().flatten()
        if bad.numel():
            vk, vk1, lo, hi = _redo_missed(rows, k, scratch, bad, vk, vk1, lo, hi, n_in,
                                           c_lo[bad], c_hi[bad], spacing[bad])
    if state is not None:
        thr = (vk + vk1) / 2
        shift = (torch.maximum((thr - state["thr"]).abs(), _SHIFT_DECAY * state["shift"])
                 if warm else torch.zeros_like(thr))
        spacing = (hi - lo) / n_in.clamp_min(1).to(lo.dtype)
        state.update(vk=vk.clone(), vk1=vk1.clone(), thr=thr, shift=shift, spacing=spacing)
    return vk, vk1


def _redo_missed(rows, k, scratch, bad, vk, vk1, lo, hi, n_in, c_lo, c_hi, spacing):
    """Refine the rows ``bad`` whose warm window [lo, hi] missed; returns (vk, vk1, lo, hi)
    with those rows' entries replaced (lo, hi: their final brackets; n_in updated in place)."""
    L = rows.L
    sub = _FilterRows(rows.rows(bad).contiguous(), _FILTER_CHUNK)
    lo_b, hi_b = lo[bad], hi[bad]
    b = _Bracket(bad.numel(), lo.device)
    b.update(k, L, lo_b, hi_b, c_lo, c_hi)
    # the statistics lie about d entries beyond the side that missed
    low_side = c_lo >= k
    d = torch.where(low_side, c_lo - k + 1, (c_hi - (L - k) + 1).clamp_min(1))
    pos = torch.where(low_side, lo_b - d * spacing, hi_b + d * spacing)
    half = (2 * d.sqrt() + 0.5 * d + 8) * spacing + 1e-30
    vk_b, vk1_b, n_b, b = _refine(sub, k, scratch, b, (pos - half).clamp_min(0.0), pos + half)
    vk, vk1, lo, hi = vk.clone(), vk1.clone(), lo.clone(), hi.clone()
    vk[bad], vk1[bad], lo[bad], hi[bad], n_in[bad] = vk_b, vk1_b, b.lo, b.hi, n_b
    return vk, vk1, lo, hi


def _keep_high(X: torch.Tensor, k: int, vk) -> torch.Tensor:
    """Bool: the L-k largest entries of every row of X, ties at the boundary: lower index kept."""
    H = X > vk[:, None]
    need = (X.shape[1] - k) - H.sum(1)                  # boundary-valued entries still to keep
    eq = X == vk[:, None]
    return H | (eq & (eq.cumsum(1) <= need[:, None]))


def _keep_low(X: torch.Tensor, k: int, vk) -> torch.Tensor:
    """Bool: the k smallest entries of every row of X, ties at the boundary: lower index kept."""
    D = X < vk[:, None]
    need = k - D.sum(1)
    eq = X == vk[:, None]
    return D | (eq & (eq.cumsum(1) <= need[:, None]))


def axis_query(X: torch.Tensor, k: int, tau: float = 0.01, hard: bool = False) -> torch.Tensor:
    """Q on the rows of a 2-D X (plain, kthvalue-based): H ⊙ sigmoid((x - thr)/tau), or H.

    k = 0 keeps every entry with thr = x(1)."""
    if k == 0:
        H = torch.ones(X.shape, dtype=torch.bool, device=X.device)
        thr = X.amin(1)
    else:
        vk, vk1 = _kth_pair(X, k)
        H, thr = _keep_high(X, k, vk), (vk + vk1) / 2
    if hard:
        return H.to(torch.float32)
    return torch.sigmoid((X - thr[:, None]) / tau) * H


# ----------------------------------------------------------------------------------------------
# dense-block selection (incremental sparsity, §5)
# ----------------------------------------------------------------------------------------------
def block_l1(A: torch.Tensor, M: int) -> torch.Tensor:
    """Block L1 norms of A = |W| in block order g: float32 a_0 + a_1 + ... left to right."""
    A4 = _block_view(A, M)                           # (Co, Ci/M, M, khkw)
    l1 = A4[:, :, 0, :].clone()
    for j in range(1, M):
        l1 += A4[:, :, j, :]
    return l1.permute(0, 2, 1).reshape(-1)           # (Co, khkw, Ci/M) -> g order


def dense_blocks(l1: torch.Tensor, n: int, selection: str = "smallest",
                 generator: torch.Generator | None = None, state: dict | None = None,
                 scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (G,): the n blocks kept dense, from L1 norms in g order.

    ``smallest`` / ``largest`` L1 (ties: lower g first) or ``random``
    (``torch.randperm(G, generator=generator)[:n]``). ``state`` warm-starts the selection."""
    G = l1.numel()
    if selection == "random" or n <= 0 or n >= G:
        sel = torch.zeros(G, dtype=torch.bool, device=l1.device)
        if n >= G:
            sel.fill_(True)
        elif n > 0:
            perm = torch.randperm(G, generator=generator, device=_gen_device(generator, l1))
            sel[perm[:n].to(l1.device)] = True
        return sel
    rows = _FilterRows(l1.view(1, G))
    k = n if selection == "smallest" else G - n
    if scratch is None:
        scratch = torch.empty(G, device=l1.device)
    vk, _ = _order_stats(rows, k, state, scratch)
    if selection == "smallest":
        return _keep_low(rows.X, k, vk).view(G)
    return _keep_high(rows.X, k, vk).view(G)


def _apply_dense(B4: torch.Tensor, dense: torch.Tensor) -> None:
    """B = 1 on the dense blocks (dense: bool in g order; B4: float block view)."""
    Co, nb, _, P = B4.shape
    d = dense.view(Co, P, nb).permute(0, 2, 1).unsqueeze(2).to(B4.dtype)
    torch.maximum(B4, d, out=B4)


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
        cache: optional dict (one per layer) holding warm-start windows and scratch buffers
            between calls; the output is identical with or without it.
    Returns:
        A new tensor S with the shape and dtype of ``weight``: 0 (pruned) or 1 .. 3 (kept).
        Computed in float32. Ties: the lower index wins everywhere (module doc).
    """
    lap = _Lap()
    rho = _check(weight, N, M, dense_fraction=dense_fraction, tau=tau, axis=axis,
                 selection=selection)
    if N == M:
        return torch.ones_like(weight)
    if cache is not None:
        signature = (tuple(weight.shape), str(weight.device), N, M)
        if cache.get("signature") != signature:
            cache.clear()
            cache["signature"] = signature
    S = _native_maxq_mask(weight, N, M, rho, tau, axis, selection, progressive, generator,
                          cache, lap)
    if S is not None:
        return S
    shape = weight.shape
    A = _magnitudes(weight, _buffer(cache, "A", shape, weight))
    scratch = _buffer(cache, "scratch", shape, weight)
    lap("A = |W|")

    # hard mask B (with dense blocks, or progressive N)
    if axis == "none":
        Bf = torch.empty(shape, device=A.device)            # the result itself
    else:
        Bf = _buffer(cache, "B", shape, weight)
    B4 = _block_view(Bf, M)
    if progressive:
        _block_keep(A, M - _floor((M - N) * (1.0 - rho)), M, B4, cache)
    else:
        _block_keep(A, N, M, B4, cache)
        lap("block ranks (B)")
        G = A.numel() // M
        n_dense = min(G, _floor(rho * G))
        if n_dense > 0:
            state = None if cache is None else cache.setdefault("dense", {})
            dense = dense_blocks(block_l1(A, M), n_dense, selection, generator, state, scratch)
            _apply_dense(B4, dense)
    lap("block ranks (B)" if progressive else "dense-block selection")
    if axis == "none":
        return Bf.to(weight.dtype)

    # axis queries
    axes = [_FilterRows(A.view(shape[0], -1), _FILTER_CHUNK)]
    if A.dim() == 4 and shape[2] * shape[3] > 1:
        axes.append(_KernelRows(A))
    terms = []
    for i, rows in enumerate(axes):
        state = None if cache is None else cache.setdefault(f"axis{i}", {})
        k = query_k(rows.L, N, M)
        vk, vk1 = _order_stats(rows, k, state, scratch)
        lap(("filter", "kernel")[i] + "-axis order statistics")
        Y = _buffer(cache, f"Y{i}", shape, weight) if i else torch.empty_like(A)
        _axis_term(rows, A, Bf, k, vk, vk1, tau, axis == "hard", Y)
        terms.append(Y)
        lap(("filter", "kernel")[i] + "-axis sigmoid term")
    S = terms[0].add_(Bf)                              # (Q_f + B): fresh tensor, returned
    if len(terms) > 1:
        S.add_(terms[1])
    S = S.to(weight.dtype)
    lap("final write S = (Q_f + B) + Q_k")
    return S


def _axis_term(rows, A, Bf, k, vk, vk1, tau, hard, Y) -> None:
    """Y <- B ⊙ Q of one axis (B ⊙ H when hard).

    Normal rows (x(k) < thr < x(k+1), thr not tiny): H is exactly ``x > thr``, and
    ``fl(x - thr) > 0`` iff ``x > thr``; pruned entries give ``-thr <= 0``. Other rows (ties,
    adjacent floats) are recomputed from the exact tie rule."""
    thr = (vk + vk1) / 2
    special = ((vk >= thr) | (thr >= vk1) | (thr < 1e-30)).nonzero().flatten()
    if hard:
        rows.gt(A, thr, Y)
        Y.mul_(Bf)
    else:
        rows.addcmul(A, Bf, thr, Y)
        F.threshold_(Y, 0.0, -math.inf)
        Y.div_(tau)
    if special.numel():
        X = rows.rows(special)
        H = _keep_high(X, k, vk[special]) & (rows.rows_of(Bf, special) > 0)
        if hard:
            vals = H.to(torch.float32)
        else:
            vals = torch.where(H, (X - thr[special][:, None]) / tau, _ninf(X))
        rows.set_rows(Y, special, vals)
    if not hard:
        Y.sigmoid_()


# ----------------------------------------------------------------------------------------------
# fused CPU passes (maxq/_native.c through maxq/native.py)
# ----------------------------------------------------------------------------------------------
def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _native_input(weight: torch.Tensor, M: int):
    """(library, contiguous float32 weight, Co, Ci, P) when the native path applies, else None:
    a CPU weight, M <= 64, at most 64 kernel positions, the library built and enabled."""
    if weight.device.type != "cpu" or M > 64:
        return None
    P = weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 1
    if P > 64:
        return None
    lib = native.lib()
    if lib is None:
        return None
    w = weight.detach()
    if w.dtype != torch.float32:
        w = w.float()
    return lib, w.contiguous(), weight.shape[0], weight.shape[1], P


def _native_block_keep(weight, n_keep, M, cache=None, l1=None):
    """B (uint8 0/1, weight's shape) by the native pass, or None when it does not apply."""
    got = _native_input(weight, M)
    if got is None:
        return None
    lib, w, Co, Ci, P = got
    B = _buffer(cache, "native B", weight.shape, w, torch.uint8)
    lib.maxq_block_keep(w.data_ptr(), Co, Ci, P, M, n_keep, B.data_ptr(), _ptr(l1))
    return B


def _native_maxq_mask(weight, N, M, rho, tau, axis, selection, progressive, generator, cache,
                      lap):
    """maxq_mask by the fused native passes (same result), or None when they do not apply.

    One pass gives B (and the block L1 norms when dense blocks are picked by L1), one pass per
    axis verifies the warm window of every row and extracts x(k), x(k+1) from the entries inside
    (an exact quickselect where a window misses, and cold), one pass writes both axes' terms
    before the sigmoid ((x - thr) / tau where B and H, else -inf), torch applies the sigmoid to
    each whole tensor (as the reference: same values, same vectorised code path), and one pass
    writes S = (Q_f + B) + Q_k. State per layer in ``cache["native"]``: each row's statistics,
    spacing and recent shift of thr (the warm window), as in the torch path."""
    got = _native_input(weight, M)
    if got is None:
        return None
    lib, w, Co, Ci, P = got
    shape, n = weight.shape, w.numel()
    st = {} if cache is None else cache.setdefault("native", {})
    G = n // M
    n_keep = M - _floor((M - N) * (1.0 - rho)) if progressive else N
    n_dense = 0 if progressive else min(G, _floor(rho * G))
    l1 = _buffer(cache, "native l1", (G,), w) if n_dense and selection != "random" else None
    B = _native_block_keep(w.view(shape), n_keep, M, cache, l1)
    lap("block ranks (B), |W| fused")
    if n_dense:
        state = None if cache is None else cache.setdefault("dense", {})
        dense = dense_blocks(l1 if l1 is not None else w.view(-1)[:G], n_dense, selection,
                             generator, state, _buffer(cache, "scratch", (G,), w))
        _apply_dense(_block_view(B, M), dense)
    lap("dense-block selection")
    if axis == "none":
        return B.to(weight.dtype)

    S = torch.empty(shape, dtype=torch.float32)
    kernel = w.dim() == 4 and P > 1
    Yk = _buffer(cache, "native Yk", shape, w) if kernel else None
    fstate = st.get("filter")
    warm = fstate is not None
    if not warm:
        fstate = st["filter"] = torch.zeros(Co, 4)
    fneed = _buffer(cache, "native fneed", (Co,), w, torch.int32)
    L = Ci * P
    scratch = _buffer(cache, "native row", (L + 16,), w)
    missed = lib.maxq_select_rows(w.data_ptr(), Co, L, query_k(L, N, M), int(warm),
                                  fstate.data_ptr(), fneed.data_ptr(), scratch.data_ptr())
    if missed < 0:                                    # NaN: the torch path decides
        st.clear()
        return None
    st["filter missed"] = missed
    lap("filter-axis order statistics")
    kstate = kneed = kcount = None
    if kernel:
        kstate = st.get("kernel")
        warm = kstate is not None
        if not warm:
            kstate = st["kernel"] = torch.zeros(P, 4)
        kneed = _buffer(cache, "native kneed", (P,), w, torch.int32)
        kcount = _buffer(cache, "native kcount", (2 * P,), w, torch.int64)
        missed = lib.maxq_select_cols(w.data_ptr(), Co * Ci, P, query_k(Co * Ci, N, M),
                                      int(warm), kstate.data_ptr(), kneed.data_ptr(),
                                      Yk.data_ptr(), kcount.data_ptr())
        if missed < 0:
            st.clear()
            return None
        st["kernel missed"] = missed
        lap("kernel-axis order statistics")
    hard = axis == "hard"
    lib.maxq_compose(w.data_ptr(), Co, Ci, P, B.data_ptr(), fstate.data_ptr(), fneed.data_ptr(),
                     _ptr(kstate), _ptr(kneed), float(tau), int(hard), S.data_ptr(), _ptr(Yk),
                     _ptr(kcount))
    lap("axis terms (x - thr) / tau, both axes")
    if not hard:
        S.sigmoid_()
        lap("filter-axis sigmoid")
        if kernel:
            Yk.sigmoid_()
            lap("kernel-axis sigmoid")
    lib.maxq_finish(S.data_ptr(), B.data_ptr(), _ptr(Yk), S.data_ptr(), n)
    lap("final write S = (Q_f + B) + Q_k")
    return S.to(weight.dtype)


# ----------------------------------------------------------------------------------------------
# the authors' first variant ("V1"), an ablation arm
# ----------------------------------------------------------------------------------------------
def maxq_v1_mask(weight: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """The authors' MaxQ "V1" mask: ``S = B ⊙ ((1 + H_filter) + H_kernel)`` with 0/1 indicators.

    Differs from :func:`maxq_mask` with ``axis="hard"`` in one place: the kernel-axis term is
    also applied to 1x1 convs (and linears), where its single row spans all ``Co·Ci`` weights,
    so a 1x1 mask takes the values 0, 1, 2, 3. V1 has no incremental sparsity (no dense blocks).
    ``H`` keeps the ``L - k`` largest of a row, ``k = floor((M-N)·L/M)``; ties: lower index
    kept, as everywhere in this module. Plain (kthvalue-based) selections: an ablation arm.
    """
    _check(weight, N, M)
    if N == M:
        return torch.ones_like(weight)
    A = _magnitudes(weight)
    A4 = A if A.dim() == 4 else A.view(*A.shape, 1, 1)
    Co, Ci, kh, kw = A4.shape
    B = _block_keep(A, N, M).view(A4.shape)
    Xf = A4.reshape(Co, Ci * kh * kw)
    Hf = axis_query(Xf, query_k(Xf.shape[1], N, M), hard=True).view(A4.shape)
    Xk = A4.reshape(Co * Ci, kh * kw).T
    Hk = axis_query(Xk, query_k(Xk.shape[1], N, M), hard=True).T.reshape(A4.shape)
    S = B.to(torch.float32) * ((1 + Hf) + Hk)
    return S.view(weight.shape).to(weight.dtype)
