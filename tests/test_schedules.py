"""Tests of maxq.schedules against method.md §5 (and the LR schedule of §9)."""
from __future__ import annotations

import math

import pytest

from maxq.schedules import SCHEDULES, dense_fraction, lr_at


def nm_share(epoch, start, end, schedule):
    """method.md's p(t) = 1 - rho(t), the share of N:M blocks."""
    return 1.0 - dense_fraction(epoch, start, end, schedule)

P15 = {"linear": 0.500, "cubic": 0.875, "cos": 0.293, "exp": 0.689}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_method_md_values(name):
    assert nm_share(15, 0, 30, name) == pytest.approx(P15[name], abs=5e-4)
    assert nm_share(30, 0, 30, name) == 1.0
    assert nm_share(31.5, 0, 30, name) == 1.0
    assert dense_fraction(0, 0, 30, name) == 1.0        # window start: all blocks dense
    assert dense_fraction(-1, 0, 30, name) == 1.0


def test_exact_formulas():
    assert dense_fraction(10, 0, 40, "linear") == pytest.approx(0.75)
    assert dense_fraction(10, 0, 40, "cubic") == pytest.approx(0.75 ** 3)
    assert dense_fraction(10, 0, 40, "cos") == pytest.approx(math.cos(math.pi / 8))
    s = lambda j: 1 - math.exp(-0.05 * j)  # noqa: E731
    assert dense_fraction(10, 0, 40, "exp") == pytest.approx(1 - s(10) / s(39))
    assert dense_fraction(39, 0, 40, "exp") == 0.0        # s(39)/s(39) = 1
    assert dense_fraction(25, 5, 45, "linear") == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_monotone_and_bounded(name):
    vals = [dense_fraction(t / 4, 2, 32, name) for t in range(0, 140)]
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert all(a >= b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_start_equals_end_is_plain_nm(name):
    assert dense_fraction(0, 0, 0, name) == 0.0
    assert dense_fraction(0.001, 0, 0, name) == 0.0
    assert dense_fraction(4, 5, 5, name) == 1.0
    assert dense_fraction(5, 5, 5, name) == 0.0


def test_fractional_epochs_and_iterations():
    assert dense_fraction(7.5, 0, 30) == pytest.approx(0.75)
    assert dense_fraction(750 / 100, 0, 30) == pytest.approx(0.75)      # iteration 750 of 100/epoch
    assert dense_fraction(3000 / 100, 0, 30) == 0.0


def test_bad_names():
    with pytest.raises(ValueError, match="linear"):
        dense_fraction(1, 0, 30, "quadratic")
    with pytest.raises(ValueError, match="end"):
        dense_fraction(1, 30, 0)
    with pytest.raises(ValueError, match="cosine"):
        lr_at(1, 0.1, 120, 0, kind="poly")


def test_lr():
    assert lr_at(0, 0.1, 120) == pytest.approx(0.1)
    assert lr_at(60, 0.1, 120) == pytest.approx(0.05)
    assert lr_at(120, 0.1, 120) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 0.1, 120, warmup=5) == pytest.approx(0.02)
    assert lr_at(4, 0.1, 120, warmup=5) == pytest.approx(0.1)
    assert lr_at(5, 0.1, 120, warmup=5) == pytest.approx(0.1)
    assert lr_at(29, 0.1, 90, kind="step") == pytest.approx(0.1)
    assert lr_at(30, 0.1, 90, kind="step") == pytest.approx(0.01)
    assert lr_at(61.5, 0.1, 90, kind="step") == pytest.approx(0.001)
    vals = [lr_at(e / 3, 0.1, 120) for e in range(360)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
