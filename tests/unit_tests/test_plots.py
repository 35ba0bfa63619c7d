"""What the plots draw, checked without drawing."""

from __future__ import annotations

import pytest
from test_decisions import NOISY, estimate

from langchain_kd_memory.plots import std_band


def test_the_std_band_of_the_distribution_plot_stays_within_the_bins() -> None:
    """(Before: expected - std of a bottom-heavy estimate went below the lowest reward.)"""
    low_heavy = estimate([6, 1, 0, 0, 0, 0, 0, 1], 0.01)
    assert low_heavy.expected - low_heavy.std < 0.0
    assert std_band(low_heavy) == (0.0, pytest.approx(low_heavy.expected + low_heavy.std))
    assert std_band(NOISY) == pytest.approx((NOISY.expected - NOISY.std,
                                             NOISY.expected + NOISY.std))
