"""Pure decision rules: ranking with exploration, discounted returns, escalation thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.decisions import (
    RankedResponse,
    discounted_returns,
    n_step_returns,
    rank_estimates,
    threshold_for_budget,
)
from langchain_kd_memory.episodes import RewardEstimate
from langchain_kd_memory.errors import InsufficientDataError, InvalidArgumentError

BINNER = RewardBinner(0.0, 1.0, num_bins=8)


def estimate(probs: list[float], uncertainty: float) -> RewardEstimate:
    p = np.asarray(probs, dtype=np.float64) / np.sum(probs)
    return RewardEstimate(float(BINNER.expected(p[None])[0]), float(BINNER.std(p[None])[0]), p,
                          BINNER.centers, int(p.argmax()), uncertainty=uncertainty)


SURE_GOOD = estimate([0, 0, 0, 0, 0, 1, 2, 1], 0.01)      # ~0.69, known well
UNKNOWN = estimate([0, 0, 0, 1, 1, 0, 0, 0], 0.3)        # 0.5 but never tried: unsure
NOISY = estimate([1, 1, 1, 1, 1, 1, 1, 1], 0.01)         # 0.5, outcomes vary, known well
SURE_BAD = estimate([1, 2, 1, 0, 0, 0, 0, 0], 0.01)       # ~0.19


def test_greedy_ranking_is_by_expected_reward() -> None:
    order = rank_estimates([UNKNOWN, SURE_BAD, SURE_GOOD])
    assert [i for i, _ in order] == [2, 0, 1]
    assert [score for _, score in order] == [SURE_GOOD.expected, UNKNOWN.expected,
                                             SURE_BAD.expected]


def test_ucb_explores_what_the_model_does_not_know_not_what_varies() -> None:
    assert rank_estimates([SURE_GOOD, UNKNOWN], explore=0.1, exploration="ucb")[0][0] == 0
    assert rank_estimates([SURE_GOOD, UNKNOWN], explore=2.0, exploration="ucb")[0][0] == 1
    # Outcomes that vary (a wide distribution) are no reason to explore: NOISY has the
    # widest distribution but the model knows its value.
    assert NOISY.std > UNKNOWN.std
    assert rank_estimates([NOISY, UNKNOWN], explore=2.0, exploration="ucb")[0][0] == 1
    assert rank_estimates([SURE_GOOD, NOISY], explore=2.0, exploration="ucb")[0][0] == 0


def test_thompson_ranks_by_the_draws_blended_in_by_explore() -> None:
    draws = [0.4, 0.9]
    assert [i for i, _ in rank_estimates([SURE_GOOD, UNKNOWN], explore=1.0, draws=draws)] == [1, 0]
    half = rank_estimates([SURE_GOOD, UNKNOWN], explore=0.5, draws=draws)
    assert dict(half) == pytest.approx({0: SURE_GOOD.expected + 0.5 * (0.4 - SURE_GOOD.expected),
                                        1: 0.5 + 0.5 * (0.9 - 0.5)})
    assert rank_estimates([SURE_GOOD, UNKNOWN], explore=0.0)[0][0] == 0  # greedy: no draws


def test_bad_exploration_settings_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="explore must be"):
        rank_estimates([UNKNOWN], explore=-1)
    with pytest.raises(InvalidArgumentError, match="exploration must be one of"):
        rank_estimates([UNKNOWN], explore=1, exploration="softmax")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="one draw per estimate"):
        rank_estimates([UNKNOWN, SURE_BAD], explore=1, draws=[0.5])


def test_discounted_returns() -> None:
    assert discounted_returns([0, 0, 1], 0.5) == [0.25, 0.5, 1.0]
    assert discounted_returns([1, 1, 1], 1.0) == [3.0, 2.0, 1.0]
    assert discounted_returns([1, 0, 2], 0.0) == [1.0, 0.0, 2.0]
    assert discounted_returns([], 0.9) == []


def test_n_step_returns_bootstrap_from_the_value_n_steps_ahead() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert n_step_returns([0, 0, 0, 1], values, 0.5, 1) == [10.0, 15.0, 20.0, 1.0]
    assert n_step_returns([1, 0, 0, 1], values, 0.5, 2) == [8.5, 10.0, 0.5, 1.0]
    rewards = [0.3, 0.0, 1.0, 0.5]  # n as long as the run: Monte-Carlo
    for n in (4, 9):
        assert n_step_returns(rewards, values, 0.9, n) == pytest.approx(
            discounted_returns(rewards, 0.9))


def test_threshold_for_budget() -> None:
    values = list(np.linspace(0, 1, 101))
    assert threshold_for_budget(values, 0.2) == pytest.approx(0.2)
    assert sum(v < threshold_for_budget(values, 0.3) for v in values) == 30
    with pytest.raises(InsufficientDataError, match="no stored queries"):
        threshold_for_budget([], 0.2)


def test_printing_a_ranked_response_shows_no_arrays() -> None:
    text = repr(RankedResponse("Sure.", 0, NOISY, 0.5))
    assert "array" not in text and "distribution" not in text and len(text) < 300
