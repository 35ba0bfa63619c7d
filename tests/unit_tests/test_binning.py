import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.episodes import RewardEstimate
from langchain_kd_memory.errors import ConfigError, InvalidArgumentError, InvalidRewardError


def peak_bins(binner: RewardBinner, rewards: list[float]) -> list[int]:
    """The most likely bin of each reward's soft target (what a prediction's bin means)."""
    return binner.soft_targets(rewards).argmax(axis=1).tolist()


def test_fit_takes_the_range_from_the_data():
    binner = RewardBinner.fit([2.0, 5.0, 3.0], num_bins=10)
    assert (binner.low, binner.high) == (2.0, 5.0)
    assert binner.centers.shape == (10,)
    assert binner.centers[0] == pytest.approx(2.15)
    assert binner.centers[-1] == pytest.approx(4.85)
    assert peak_bins(binner, [2.0, 5.0, 3.49, 3.51]) == [0, 9, 4, 5]


def test_declared_range_is_used_and_enforced():
    binner = RewardBinner.fit([4.0, 6.0], low=1, high=10, num_bins=9)
    assert (binner.low, binner.high) == (1.0, 10.0)
    assert peak_bins(binner, [1.0, 10.0, 5.5]) == [0, 8, 4]
    with pytest.raises(InvalidRewardError, match="outside the declared range"):
        RewardBinner.fit([0.5, 6.0], low=1, high=10)


def test_all_equal_rewards_give_finite_targets_centred_on_the_value():
    binner = RewardBinner.fit([7.0] * 20, num_bins=64)
    assert binner.low < 7.0 < binner.high
    targets = binner.soft_targets([7.0, 7.0])
    assert np.all(np.isfinite(targets))
    assert binner.expected(targets) == pytest.approx([7.0, 7.0], abs=1e-6)


def test_soft_targets_are_ordinal_distributions():
    binner = RewardBinner.fit([0.0, 1.0], num_bins=64, width=2.0)
    targets = binner.soft_targets([0.0, 0.5, 1.0])
    assert targets.shape == (3, 64) and targets.dtype == np.float32
    assert targets.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    middle = targets[1]
    peak = int(middle.argmax())
    assert peak in (31, 32)
    # probability falls off with the distance from the reward's bin, on both sides
    assert np.all(np.diff(middle[peak:]) <= 0) and np.all(np.diff(middle[: peak + 1]) >= 0)
    assert middle[peak + 1] > middle[peak + 10] > 0


def test_wider_soft_targets_spread_more():
    rewards = [0.5]
    narrow = RewardBinner.fit([0.0, 1.0], width=1.0)
    wide = RewardBinner.fit([0.0, 1.0], width=4.0)
    assert wide.std(wide.soft_targets(rewards))[0] > 2 * narrow.std(narrow.soft_targets(rewards))[0]


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1.0, max_value=10.0), st.sampled_from([0.5, 2.0, 8.0]))
def test_soft_targets_have_the_reward_as_their_mean_even_near_the_ends(reward, width):
    binner = RewardBinner.fit([1.0, 10.0], num_bins=64, width=width)
    reachable = np.clip(reward, binner.centers[0], binner.centers[-1])
    assert binner.expected(binner.soft_targets([reward]))[0] == pytest.approx(reachable, abs=1e-3)


def test_rewards_outside_the_fitted_range_are_clipped():
    binner = RewardBinner.fit([0.0, 1.0], num_bins=8)
    assert peak_bins(binner, [-5.0, 5.0]) == [0, 7]
    np.testing.assert_allclose(binner.soft_targets([5.0]), binner.soft_targets([1.0]))
    assert not binner.contains([0.5, 1.5]) and binner.contains([0.0, 1.0])


def test_std_and_quantile_of_distributions():
    binner = RewardBinner.fit([0.0, 4.0], num_bins=4)  # centres 0.5 1.5 2.5 3.5
    one_hot = np.array([[0.0, 0.0, 1.0, 0.0]])
    assert binner.std(one_hot)[0] == 0.0
    assert binner.expected(one_hot)[0] == 2.5
    two_point = np.array([[0.5, 0.0, 0.0, 0.5]])
    assert binner.expected(two_point)[0] == 2.0
    assert binner.std(two_point)[0] == pytest.approx(1.5)
    estimate = RewardEstimate(2.0, 1.5, two_point[0], binner.centers, predicted_bin=0)
    assert estimate.quantile(0.25) == 0.5
    assert estimate.quantile(0.75) == 3.5
    assert estimate.quantile(1.0) == 3.5
    for bad in (1.5, -0.1, float("nan"), "0.5", True):
        with pytest.raises(InvalidArgumentError, match=r"q must be a finite number in \[0"):
            estimate.quantile(bad)


def test_round_trip_through_json():
    binner = RewardBinner.fit([1.0, 3.0, 10.0], num_bins=32, width=1.5)
    again = RewardBinner.from_dict(json.loads(json.dumps(binner.to_dict())))
    assert again == binner
    np.testing.assert_array_equal(again.centers, binner.centers)


@pytest.mark.parametrize(
    "data",
    [{"low": 1.0}, {"low": 2.0, "high": 1.0, "num_bins": 8, "width": 1.0},
     {"low": 0.0, "high": 1.0, "num_bins": "x", "width": 1.0}],
)
def test_from_dict_refuses_bad_binning(data):
    with pytest.raises(ConfigError):
        RewardBinner.from_dict(data)


@pytest.mark.parametrize("rewards", [[], [1.0, float("nan")], [float("inf")]])
def test_fit_refuses_empty_or_non_finite_rewards(rewards):
    with pytest.raises(InvalidRewardError):
        RewardBinner.fit(rewards)


@pytest.mark.parametrize(
    "kwargs", [{"num_bins": 1}, {"num_bins": 8, "width": 0.0}, {"num_bins": 8, "width": -1.0}]
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        RewardBinner.fit([0.0, 1.0], **kwargs)
