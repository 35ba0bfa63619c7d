"""Pure decision rules: ranking with exploration, discounted returns, escalation thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.decisions import discounted_returns, rank_estimates, threshold_for_budget
from langchain_kd_memory.episodes import RewardEstimate
from langchain_kd_memory.errors import InsufficientDataError, InvalidArgumentError

BINNER = RewardBinner(0.0, 1.0, num_bins=8)


def estimate(probs: list[float]) -> RewardEstimate:
    p = np.asarray(probs, dtype=np.float64) / np.sum(probs)
    return RewardEstimate(float(BINNER.expected(p[None])[0]), float(BINNER.std(p[None])[0]), p,
                          BINNER.centers, int(p.argmax()))


SURE_GOOD = estimate([0, 0, 0, 0, 0, 1, 2, 1])           # ~0.69, narrow
UNSURE = estimate([1, 1, 1, 1, 1, 1, 1, 1])              # 0.5, wide
SURE_BAD = estimate([1, 2, 1, 0, 0, 0, 0, 0])             # ~0.19, narrow


def test_greedy_ranking_is_by_expected_reward() -> None:
    order = rank_estimates([UNSURE, SURE_BAD, SURE_GOOD])
    assert [i for i, _ in order] == [2, 0, 1]
    assert [score for _, score in order] == [SURE_GOOD.expected, UNSURE.expected,
                                             SURE_BAD.expected]


def test_ucb_prefers_the_uncertain_candidate_when_exploring_enough() -> None:
    assert rank_estimates([SURE_GOOD, UNSURE], explore=0.1)[0][0] == 0
    assert rank_estimates([SURE_GOOD, UNSURE], explore=2.0)[0][0] == 1


def test_thompson_draws_follow_the_distributions_and_a_seed_repeats_them() -> None:
    wins = [rank_estimates([SURE_GOOD, UNSURE], explore=1.0, exploration="thompson",
                           rng=np.random.default_rng(seed))[0][0] for seed in range(400)]
    share_uncertain = wins.count(1) / len(wins)
    assert 0.07 < share_uncertain < 0.2  # P(uniform draw > good draw) = 0.125
    again = [rank_estimates([SURE_GOOD, UNSURE], explore=1.0, exploration="thompson",
                            rng=np.random.default_rng(seed))[0][0] for seed in range(400)]
    assert again == wins


def test_bad_exploration_settings_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="explore must be"):
        rank_estimates([UNSURE], explore=-1)
    with pytest.raises(InvalidArgumentError, match="exploration must be one of"):
        rank_estimates([UNSURE], explore=1, exploration="softmax")  # type: ignore[arg-type]


def test_discounted_returns() -> None:
    assert discounted_returns([0, 0, 1], 0.5) == [0.25, 0.5, 1.0]
    assert discounted_returns([1, 1, 1], 1.0) == [3.0, 2.0, 1.0]
    assert discounted_returns([1, 0, 2], 0.0) == [1.0, 0.0, 2.0]
    assert discounted_returns([], 0.9) == []


def test_threshold_for_budget() -> None:
    values = list(np.linspace(0, 1, 101))
    assert threshold_for_budget(values, 0.2) == pytest.approx(0.2)
    assert sum(v < threshold_for_budget(values, 0.3) for v in values) == 30
    with pytest.raises(InsufficientDataError, match="no stored queries"):
        threshold_for_budget([], 0.2)
