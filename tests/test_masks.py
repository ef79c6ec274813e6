"""Tests of maxq.masks against the sort-based reference (maxq/mask_reference.py) and the
properties of method.md §1–§5."""
from __future__ import annotations

import itertools
import math
import sys

import pytest
import torch

from maxq.mask_reference import blocks_of, reference_maxq_mask, reference_nm_mask  # noqa: E402

from maxq import native  # noqa: E402
from maxq.masks import maxq_mask, nm_mask  # noqa: E402

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover
    HAVE_HYPOTHESIS = False

PATTERNS = [(2, 4), (1, 4), (2, 8), (1, 16)]


@pytest.fixture(autouse=True, params=["native", "torch"])
def backend(request, monkeypatch):
    """Every test runs on both paths of maxq_mask/nm_mask: the fused native passes
    (maxq/_native.c) and the pure-torch path (``MAXQ_NATIVE=0``, also what CUDA and machines
    without a C compiler use)."""
    if request.param == "native":
        if native.lib() is None:
            pytest.skip(f"native mask kernels unavailable: {native.error()}")
    else:
        monkeypatch.setenv("MAXQ_NATIVE", "0")
    return request.param


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on a shared 2-core machine: OpenMP barriers under load cost more than the
    work, so run these tests single-threaded (results do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
SHAPES = {"conv3x3": (16, 32, 3, 3), "conv1x1": (24, 64, 1, 1), "linear": (20, 48)}


def rand(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def zeros_per_block(S, M):
    return (blocks_of(S, M) == 0).sum(1)


# ------------------------------------------------------------------------------------ nm_mask
def check_nm_property(w, N, M):
    B = nm_mask(w, N, M)
    assert B.shape == w.shape and B.dtype == w.dtype
    assert set(B.unique().tolist()) <= {0.0, 1.0}
    blocks, keep = blocks_of(w.abs().float(), M), blocks_of(B, M).bool()
    assert (keep.sum(1) == N).all()
    if N < M:  # every kept |w| >= every dropped |w| of the same block
        kept_min = torch.where(keep, blocks, torch.inf).amin(1)
        drop_max = torch.where(keep, -torch.inf, blocks).amax(1)
        assert (kept_min >= drop_max).all()
    assert torch.equal(B.float(), reference_nm_mask(w, N, M))


if HAVE_HYPOTHESIS:
    @settings(max_examples=60, deadline=None)
    @given(nm=st.sampled_from(PATTERNS + [(3, 4), (4, 8), (5, 8), (1, 2), (7, 16)]),
           co=st.integers(1, 9), ci_blocks=st.integers(1, 5), k=st.sampled_from([0, 1, 3, 5]),
           seed=st.integers(0, 2**31 - 1), ties=st.booleans())
    def test_nm_property_random_shapes(nm, co, ci_blocks, k, seed, ties):
        N, M = nm
        shape = (co, ci_blocks * M) if k == 0 else (co, ci_blocks * M, k, k)
        g = torch.Generator().manual_seed(seed)
        w = (torch.randint(-2, 3, shape, generator=g).float() if ties
             else torch.randn(shape, generator=g))
        check_nm_property(w, N, M)

    @settings(max_examples=40, deadline=None)
    @given(nm=st.sampled_from(PATTERNS + [(3, 4), (5, 8)]), co=st.integers(1, 6),
           ci_blocks=st.integers(1, 4), k=st.sampled_from([0, 1, 3]),
           df=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
           axis=st.sampled_from(["soft", "hard", "none"]),
           seed=st.integers(0, 2**31 - 1), ties=st.booleans())
    def test_maxq_equals_reference_random_shapes(nm, co, ci_blocks, k, df, axis, seed, ties):
        N, M = nm
        shape = (co, ci_blocks * M) if k == 0 else (co, ci_blocks * M, k, k)
        g = torch.Generator().manual_seed(seed)
        w = (torch.randint(-2, 3, shape, generator=g).float() if ties
             else torch.randn(shape, generator=g))
        assert torch.equal(maxq_mask(w, N, M, dense_fraction=df, axis=axis),
                           reference_maxq_mask(w, N, M, dense_fraction=df, axis=axis))


@pytest.mark.parametrize("N,M", PATTERNS + [(3, 4)])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_nm_property(N, M, shape):
    for seed in range(3):
        check_nm_property(rand(shape, seed), N, M)


def test_nm_ties_lower_index_wins():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, -2.0, 2.0, 0.1]])
    assert nm_mask(w, 2, 4).tolist() == [[1, 1, 0, 0, 0, 1, 1, 0]]
    assert nm_mask(w, 1, 4).tolist() == [[1, 0, 0, 0, 0, 1, 0, 0]]
    assert nm_mask(w, 3, 4).tolist() == [[1, 1, 1, 0, 1, 1, 1, 0]]
    # conv: the block runs along input channels at fixed (out, h, w)
    wc = torch.ones(1, 4, 2, 2)
    wc[0, 3, 1, 1] = 5.0
    B = nm_mask(wc, 2, 4)
    assert B[0, :, 0, 0].tolist() == [1, 1, 0, 0]
    assert B[0, :, 1, 1].tolist() == [1, 0, 0, 1]


def test_nm_dtype_and_dense():
    w = rand((8, 16, 3, 3), dtype=torch.float16)
    B = nm_mask(w, 2, 4)
    assert B.dtype == torch.float16
    assert torch.equal(B.float(), reference_nm_mask(w, 2, 4))
    assert torch.equal(nm_mask(w, 4, 4), torch.ones_like(w))
    assert torch.equal(maxq_mask(w, 4, 4), torch.ones_like(w))


# ---------------------------------------------------------------------------------- maxq_mask
@pytest.mark.parametrize("N,M", PATTERNS)
@pytest.mark.parametrize("df", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_maxq_equals_reference(N, M, df, shape):
    for seed in range(2):
        w = rand(shape, seed)
        S = maxq_mask(w, N, M, dense_fraction=df)
        assert torch.equal(S, reference_maxq_mask(w, N, M, dense_fraction=df))
        # values: 0 or in [1, 3]; zero set of S == zero set of B (df = 0)
        nz = S[S != 0]
        assert ((nz >= 1) & (nz <= 3)).all()
        if df == 0.0:
            assert torch.equal(S != 0, nm_mask(w, N, M).bool())


@pytest.mark.parametrize("axis", ["soft", "hard", "none"])
@pytest.mark.parametrize("selection", ["smallest", "largest"])
@pytest.mark.parametrize("progressive", [False, True])
def test_arms_equal_reference(axis, selection, progressive):
    for shape, (N, M), df in itertools.product(SHAPES.values(), [(2, 4), (1, 16)], [0.0, 0.4]):
        w = rand(shape, 7)
        kw = dict(dense_fraction=df, axis=axis, selection=selection, progressive=progressive)
        assert torch.equal(maxq_mask(w, N, M, **kw), reference_maxq_mask(w, N, M, **kw))


def test_half_precision_computed_in_float32():
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        w = rand((16, 32, 3, 3), 3, dtype)
        S = maxq_mask(w, 2, 4, dense_fraction=0.2)
        assert S.dtype == dtype and S.shape == w.shape
        assert torch.equal(S, reference_maxq_mask(w, 2, 4, dense_fraction=0.2))


def test_soft_values_structure():
    w = rand((16, 32, 3, 3), 1)
    S = maxq_mask(w, 2, 4)
    assert (S == 0).sum() == w.numel() // 2          # 2:4: half pruned, exactly B's zeros
    assert (S == 1).any() and (S > 2).any() and S.max() <= 3
    # kept and not boosted on either axis -> exactly 1
    Sh = maxq_mask(w, 2, 4, axis="hard")
    assert torch.equal(S == 1, Sh == 1)


def test_hard_axis_values():
    w = rand((16, 32, 3, 3), 2)
    S = maxq_mask(w, 2, 4, axis="hard", dense_fraction=0.3)
    assert set(S.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert {2.0, 3.0} <= set(S.unique().tolist())
    S1 = maxq_mask(rand((16, 32, 1, 1), 2), 2, 4, axis="hard")
    assert set(S1.unique().tolist()) == {0.0, 1.0, 2.0}   # no kernel axis on 1x1


def test_axis_none_is_B():
    w = rand((16, 32, 3, 3), 4)
    assert torch.equal(maxq_mask(w, 2, 4, axis="none"), nm_mask(w, 2, 4))


def test_query_ties_lower_index_kept():
    # all |w| equal: B keeps the first N of each block, H_f keeps the first L-k of each row
    w = torch.ones(2, 8)
    S = maxq_mask(w, 2, 4, axis="hard")
    assert S.tolist() == [[2, 2, 0, 0, 1, 1, 0, 0]] * 2   # L=8, k=4: H_f on indices 0..3
    wc = torch.ones(2, 4, 3, 3)                        # kernel rows: L = Co*Ci = 8, keep first 4
    Sc = maxq_mask(wc, 2, 4, axis="hard")
    assert torch.equal(Sc, reference_maxq_mask(wc, 2, 4, axis="hard"))
    assert Sc[0, :2].eq(3).all() and Sc[1].max() <= 2   # out 0 wins both axes


def test_dense_fraction_picks_smallest_l1():
    w = rand((16, 32, 3, 3), 5)
    M, G = 4, w.numel() // 4
    l1 = blocks_of(w.abs(), M).sum(1)
    for df, sel in itertools.product([0.1, 0.3, 0.77], ["smallest", "largest"]):
        S = maxq_mask(w, 2, M, dense_fraction=df, selection=sel)
        dense = zeros_per_block(S, M) == 0
        assert dense.sum() == math.floor(df * G + 1e-9)
        if sel == "smallest":
            assert l1[dense].max() <= l1[~dense].min()
        else:
            assert l1[dense].min() >= l1[~dense].max()
        # dense blocks still get the boost
        assert (blocks_of(S, M)[dense] >= 1).all()
    assert (maxq_mask(w, 2, M, dense_fraction=1.0) >= 1).all()


def test_dense_block_ties_lower_index_first():
    w = torch.ones(3, 8)                                 # 6 blocks with equal L1
    S = maxq_mask(w, 2, 4, dense_fraction=0.5, axis="none")
    assert (zeros_per_block(S, 4) == 0).tolist() == [True, True, True, False, False, False]
    S = maxq_mask(w, 2, 4, dense_fraction=0.5, axis="none", selection="largest")
    assert (zeros_per_block(S, 4) == 0).tolist() == [True, True, True, False, False, False]


def test_random_selection():
    w = rand((16, 32, 3, 3), 6)
    G = w.numel() // 4

    def run(seed):
        S = maxq_mask(w, 2, 4, dense_fraction=0.3, selection="random",
                      generator=torch.Generator().manual_seed(seed))
        ref = reference_maxq_mask(w, 2, 4, dense_fraction=0.3, selection="random",
                                  generator=torch.Generator().manual_seed(seed))
        assert torch.equal(S, ref)
        return zeros_per_block(S, 4) == 0

    d0, d0b, d1 = run(0), run(0), run(1)
    assert d0.sum() == math.floor(0.3 * G)
    assert torch.equal(d0, d0b) and not torch.equal(d0, d1)


def test_progressive_n():
    w = rand((16, 32, 3, 3), 8)
    for (N, M), df in itertools.product([(2, 4), (1, 16), (2, 8)], [0.0, 0.3, 0.5, 1.0]):
        S = maxq_mask(w, N, M, dense_fraction=df, progressive=True)
        pruned = math.floor((M - N) * (1 - df) + 1e-9)
        assert (zeros_per_block(S, M) == pruned).all()
        assert torch.equal(S, reference_maxq_mask(w, N, M, dense_fraction=df, progressive=True))


@pytest.mark.parametrize("kwargs,name", [
    (dict(N=0, M=4), "N"), (dict(N=5, M=4), "N"), (dict(N=2, M=3), "M=3"),
    (dict(N=2, M=4, axis="diag"), "axis"), (dict(N=2, M=4, selection="median"), "selection"),
    (dict(N=2, M=4, dense_fraction=1.5), "dense_fraction"),
    (dict(N=2, M=4, dense_fraction=-0.1), "dense_fraction"),
    (dict(N=2, M=4, tau=0.0), "tau"),
])
def test_bad_inputs(kwargs, name):
    w = rand((8, 16, 3, 3))
    with pytest.raises(ValueError, match=name):
        maxq_mask(w, **kwargs)


def test_bad_weights():
    with pytest.raises(ValueError, match=r"weight.shape\[1\]=18 is not divisible by M=4"):
        nm_mask(torch.randn(8, 18), 2, 4)
    with pytest.raises(ValueError, match="weight"):
        nm_mask(torch.ones(8, 16, dtype=torch.int64), 2, 4)
    with pytest.raises(ValueError, match="weight"):
        maxq_mask(torch.randn(8, 16, 3), 2, 4)
    with pytest.raises(ValueError, match="axis.*soft"):
        maxq_mask(torch.randn(8, 16), 2, 4, axis="x")
    with pytest.raises(ValueError, match="N"):
        nm_mask(torch.randn(8, 16), 0, 4)


# --------------------------------------------------------------------------------- warm start
def _sgd_sequence(shape, steps, seed, jumps=()):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    for t in range(steps):
        yield w
        if t in jumps:
            w = torch.randn(shape, generator=g) * (0.05 if t % 2 else 3.0)   # large jump
        else:
            w = w + 1e-3 * torch.randn(shape, generator=g)


@pytest.mark.parametrize("shape", list(SHAPES.values()) + [(64, 64, 3, 3)],
                         ids=list(SHAPES) + ["conv64"])
@pytest.mark.parametrize("N,M,df", [(2, 4, 0.0), (2, 4, 0.3), (1, 16, 0.1), (2, 8, 0.0)])
def test_cache_identical_over_sgd_steps(shape, N, M, df):
    cache: dict = {}
    for w in _sgd_sequence(shape, 12, seed=hash((shape, N, M)) % 1000, jumps=(5, 8)):
        S = maxq_mask(w, N, M, dense_fraction=df, cache=cache)
        assert torch.equal(S, maxq_mask(w, N, M, dense_fraction=df))
        assert torch.equal(S, reference_maxq_mask(w, N, M, dense_fraction=df))


def test_cache_tiny_steps_and_ties():
    """Steps far smaller than the gaps, steps that create ties, and a changing dense fraction."""
    cache: dict = {}
    w = rand((32, 32, 3, 3), 11) * 0.05
    for t in range(10):
        if t == 4:
            w = (w * 20).round() / 20                  # massive ties
        elif t == 7:
            w = torch.zeros_like(w)                    # all equal
        else:
            w = w + 1e-7 * torch.randn_like(w)
        for df in (0.0, 0.2 + 0.05 * t):
            S = maxq_mask(w, 2, 4, dense_fraction=df, cache=cache)
            assert torch.equal(S, reference_maxq_mask(w, 2, 4, dense_fraction=df))


def test_cache_survives_shape_and_argument_changes():
    cache: dict = {}
    for shape, (N, M), tau, axis in [((16, 32, 3, 3), (2, 4), 0.01, "soft"),
                                     ((16, 32, 3, 3), (1, 4), 0.01, "soft"),
                                     ((8, 32, 1, 1), (2, 4), 0.05, "hard"),
                                     ((16, 32, 3, 3), (2, 4), 0.01, "soft")]:
        w = rand(shape, 12)
        S = maxq_mask(w, N, M, tau=tau, axis=axis, cache=cache)
        assert torch.equal(S, reference_maxq_mask(w, N, M, tau=tau, axis=axis))


# ------------------------------------------------------------------------- native fused passes
def _steps(shape, n, seed):
    """Weights over n training-like steps whose size varies (tiny, typical, large, a jump), with
    ties, a rescaled filter, a zero filter and an all-zero weight on the way."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    for t in range(n):
        yield w
        scale = (1e-7, 1e-4, 1e-3, 1e-2)[t % 4]
        w = w + scale * torch.randn(shape, generator=g)
        if t == 9:
            w = (w * 40).round() / 40                     # ties at every threshold
        elif t == 13:
            w[0] *= 3.0                                   # one filter jumps
        elif t == 17:
            w[1] = 0.0                                    # a dead filter
        elif t == 21:
            w = torch.randn(shape, generator=g)           # a new draw (cold-like)
        elif t == 25:
            w = torch.zeros(shape)                        # all equal


@pytest.mark.parametrize("shape", [(32, 32, 3, 3), (48, 64, 1, 1), (16, 24, 5, 5), (20, 32),
                                   (8, 16, 1, 3)])
@pytest.mark.parametrize("N,M,axis", [(2, 4, "soft"), (1, 4, "hard"), (2, 8, "soft"),
                                      (3, 4, "soft")])
def test_cache_identical_over_many_changing_steps(shape, N, M, axis):
    """30 steps of changing weights on one cache: every mask equals the reference (the warm
    windows, their widening after a miss and the exact fallback never change a mask)."""
    cache: dict = {}
    for w in _steps(shape, 30, seed=sum(shape) + N + M):
        S = maxq_mask(w, N, M, axis=axis, cache=cache)
        assert torch.equal(S, reference_maxq_mask(w, N, M, axis=axis))


def test_native_warm_windows_verify_after_a_small_step(backend):
    """After a small weight change every row's warm window verifies (no exact quickselect)."""
    if backend != "native":
        pytest.skip("native path")
    w = rand((64, 64, 3, 3), 9) * 0.05
    cache: dict = {}
    maxq_mask(w, 2, 4, cache=cache)
    assert cache["native"]["filter missed"] == 64 and cache["native"]["kernel missed"] == 9
    for _ in range(3):
        w = w + 1e-5 * torch.randn_like(w)
        S = maxq_mask(w, 2, 4, cache=cache)
        assert torch.equal(S, reference_maxq_mask(w, 2, 4))
        assert cache["native"]["filter missed"] == 0 and cache["native"]["kernel missed"] == 0


@pytest.mark.parametrize("scale", [0.6, 1.7, 50.0])
def test_rows_whose_window_misses_stay_exact(scale):
    """Filters rescaled between two calls miss their windows (widened once, then an exact
    quickselect); the mask is still exactly the reference's."""
    w = rand((48, 64, 3, 3), 21)
    cache: dict = {}
    maxq_mask(w, 2, 4, cache=cache)
    w2 = w + 1e-4 * torch.randn_like(w)
    w2[::5] *= scale
    assert torch.equal(maxq_mask(w2, 2, 4, cache=cache), reference_maxq_mask(w2, 2, 4))
    w3 = w2 * scale                                     # every row and kernel position moves
    assert torch.equal(maxq_mask(w3, 2, 4, cache=cache), reference_maxq_mask(w3, 2, 4))


def test_channels_last_and_non_contiguous_weights():
    w = rand((16, 32, 3, 3), 4)
    for v in (w.to(memory_format=torch.channels_last), w.transpose(2, 3)):
        assert torch.equal(maxq_mask(v, 2, 4), reference_maxq_mask(v, 2, 4))
        assert torch.equal(nm_mask(v, 2, 4), reference_nm_mask(v, 2, 4))


def test_nan_weight_gives_the_torch_paths_answer(monkeypatch, backend):
    """A NaN makes the native passes hand the layer to the torch path (same result as it).
    A comparison of the two paths: on the torch arm both sides would be the torch path."""
    if backend != "native":
        pytest.skip("compares the native passes with the torch path: native arm only")
    w = rand((16, 32, 3, 3), 5)
    cache: dict = {}
    maxq_mask(w, 2, 4, cache=cache)
    assert "filter missed" in cache["native"]            # the native passes ran (warm state)
    w[3, 5, 1, 1] = float("nan")
    got = maxq_mask(w, 2, 4, cache=cache)
    assert "filter missed" not in cache["native"]        # ... and handed this weight over
    monkeypatch.setenv("MAXQ_NATIVE", "0")
    want = maxq_mask(w, 2, 4)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("shape", [(16, 32, 3, 3), (8, 16, 1, 1), (8, 16, 5, 5), (12, 16)])
@pytest.mark.parametrize("N", [1, 2, 3])
def test_progressive_keeps_every_block_count(shape, N):
    """Progressive N keeps M - floor((M-N)(1-rho)) of every block: 1 .. M (all) kept, with ties."""
    w = rand(shape, 8)
    for rho in (0.0, 0.3, 0.6, 0.95):
        for v in (w, (w * 3).round()):
            S = maxq_mask(v, N, 4, dense_fraction=rho, progressive=True)
            assert torch.equal(S, reference_maxq_mask(v, N, 4, dense_fraction=rho,
                                                      progressive=True))


# ----------------------------------------------------------- sync-free path: compile, stack, op
COMPILE_CASES = ([((16, 32, 3, 3), 2, 4, axis, df) for axis in ("soft", "hard", "none")
                  for df in (0.0, 0.3, 1.0)]
                 + [((24, 64, 1, 1), 2, 4, "soft", 0.3), ((20, 48), 1, 4, "soft", 0.3),
                    ((12, 16, 3, 3), 2, 8, "hard", 0.0),
                    ((32, 1, 3, 3), 1, 1, "soft", 0.0)])       # depthwise: only M = 1 divides


@pytest.mark.parametrize("shape,N,M,axis,df", COMPILE_CASES)
def test_fullgraph_compile_equals_eager_bit_for_bit(backend, shape, N, M, axis, df):
    """torch.compile(maxq_mask, fullgraph=True) traces the torch path in one graph (no host
    sync, no data-dependent branch) and returns the eager result bit for bit."""
    if backend != "torch":
        pytest.skip("the contract is stated for MAXQ_NATIVE=0")
    torch._dynamo.reset()
    compiled = torch.compile(maxq_mask, backend="eager", fullgraph=True)
    for seed, ties in ((0, False), (1, True)):
        w = rand(shape, seed)
        if ties:
            w = (w * 2).round()
        kw = dict(dense_fraction=df, axis=axis)
        eager = maxq_mask(w, N, M, **kw)
        assert torch.equal(compiled(w, N, M, **kw), eager)
        assert torch.equal(eager, reference_maxq_mask(w, N, M, **kw))


@pytest.mark.parametrize("shape", [(16, 32, 3, 3), (24, 64, 1, 1), (20, 48)])
def test_dynamo_explain_finds_no_graph_break(backend, shape):
    if backend != "torch":
        pytest.skip("the contract is stated for MAXQ_NATIVE=0")
    torch._dynamo.reset()
    for fn, kw in ((maxq_mask, dict(dense_fraction=0.3)), (maxq_mask, dict(axis="hard")),
                   (nm_mask, {})):
        explained = torch._dynamo.explain(fn)(rand(shape, 3), 2, 4, **kw)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


@pytest.mark.parametrize("kw", [dict(), dict(axis="hard", dense_fraction=0.3),
                                dict(axis="none", dense_fraction=0.6, selection="largest"),
                                dict(progressive=True, dense_fraction=0.5)])
@pytest.mark.parametrize("shape", [(8, 16, 3, 3), (6, 32, 1, 1), (10, 24)])
def test_stack_equals_one_layer_at_a_time(shape, kw):
    """maxq_mask_stack and the registered op give every layer of a stack exactly its own mask."""
    from maxq import mask_op
    from maxq.masks import maxq_mask_stack

    stack = torch.stack([rand(shape, s) if s % 2 else (rand(shape, s) * 2).round()
                         for s in range(5)])
    one_by_one = torch.stack([maxq_mask(w, 2, 4, **kw) for w in stack])
    assert torch.equal(maxq_mask_stack(stack, 2, 4, **kw), one_by_one)
    args = (kw.get("dense_fraction", 0.0), 0.01, kw.get("axis", "soft"),
            kw.get("selection", "smallest"), kw.get("progressive", False))
    assert torch.equal(mask_op.maxq_mask(stack, 2, 4, *args), one_by_one)
    assert torch.equal(torch.ops.maxq.maxq_mask(stack, 2, 4, *args), one_by_one)


def test_stack_random_selection_uses_each_layers_generator():
    from maxq.masks import maxq_mask_stack

    stack = torch.stack([rand((8, 16, 3, 3), s) for s in range(3)])
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    got = maxq_mask_stack(stack, 2, 4, dense_fraction=0.3, selection="random", generators=gens)
    for s in range(3):
        want = reference_maxq_mask(stack[s], 2, 4, dense_fraction=0.3, selection="random",
                                   generator=torch.Generator().manual_seed(s))
        assert torch.equal(got[s], want)


def test_registered_op_passes_opcheck_and_refuses_bad_input():
    from maxq import mask_op

    for shape, args in (((3, 8, 16, 3, 3), (2, 4, 0.3, 0.01, "soft", "smallest", False)),
                        ((2, 10, 24), (1, 4, 0.0, 0.05, "hard", "largest", False)),
                        ((2, 6, 8, 1, 1), (2, 4, 0.0, 0.01, "none", "smallest", False))):
        torch.library.opcheck(torch.ops.maxq.maxq_mask.default, (rand(shape, 1), *args))
    with pytest.raises(ValueError, match="random"):
        mask_op.maxq_mask(rand((2, 8, 16)), 2, 4, 0.3, 0.01, "soft", "random", False)
    with pytest.raises(ValueError, match="divisible by M=4"):
        mask_op.maxq_mask(rand((2, 8, 18)), 2, 4, 0.0, 0.01, "soft", "smallest", False)


def test_registered_op_compiles_inside_a_function():
    """The op is one opaque node in a compiled graph (fake kernel: shape and dtype)."""
    from maxq import mask_op  # noqa: F401  (registers the op)

    def masked(w):
        S = torch.ops.maxq.maxq_mask(w.detach(), 2, 4, 0.2, 0.01, "soft", "smallest", False)
        return w * S

    torch._dynamo.reset()
    w = rand((2, 8, 16, 3, 3), 4)
    explained = torch._dynamo.explain(masked)(w)
    assert explained.graph_break_count == 0
    got = torch.compile(masked, backend="eager", fullgraph=True)(w)
    assert torch.equal(got, w * torch.stack([maxq_mask(v, 2, 4, dense_fraction=0.2) for v in w]))
