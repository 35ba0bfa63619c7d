"""Property tests (hypothesis): Episode validation and reward binning hold for any input.

Validation is checked against an independent statement of the rules: an `Episode` is built
exactly when every field is valid, and otherwise the error is one of the package's own
(`InvalidEpisodeError`, `InvalidNamespaceError`), never a `TypeError` or a crash further down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.episodes import (
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_STRING,
    MAX_NAMESPACE_LENGTH,
    MAX_REWARD_MAGNITUDE,
    MAX_TEXT_LENGTH,
    Episode,
    check_reward_in_range,
    validate_reward_range,
)
from langchain_kd_memory.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidNamespaceError,
    InvalidRewardError,
)

# ------------------------------------------------------------------ the rules, restated


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_text(value: object, *, blank_ok: bool, limit: int = MAX_TEXT_LENGTH) -> bool:
    return (isinstance(value, str) and (blank_ok or bool(value.strip()))
            and len(value) <= limit and encodable(value))


def valid_reward(value: object) -> bool:
    if value is None:
        return True
    number = isinstance(value, (int, float, np.integer, np.floating))
    return number and not isinstance(value, bool) and abs(value) <= MAX_REWARD_MAGNITUDE  # type: ignore[operator]


def valid_metadata(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, Mapping) or len(value) > MAX_METADATA_KEYS:
        return False
    for key, item in value.items():
        if not valid_text(key, blank_ok=True, limit=MAX_METADATA_KEY_LENGTH) or not key or (
            key.startswith("kd_")
        ):
            return False
        if isinstance(item, str):
            if not valid_text(item, blank_ok=True, limit=MAX_METADATA_STRING):
                return False
        elif isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif not isinstance(item, (int, bool)):
            return False
    return True


def valid_namespace(value: object) -> bool:
    return valid_text(value, blank_ok=False, limit=MAX_NAMESPACE_LENGTH)


# ------------------------------------------------------------------ strategies

any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates included
texts = st.one_of(
    any_text,
    st.sampled_from(["", " ", "\t\n", "q", "héllo 用户", "\ud800", "a\udfffb"]),
    st.sampled_from([MAX_TEXT_LENGTH, MAX_TEXT_LENGTH + 1]).map(lambda n: "x" * n),
)
not_text = st.one_of(st.none(), st.integers(), st.binary(max_size=4), st.lists(st.integers()))
numbers = st.one_of(
    st.floats(), st.integers(), st.booleans(), st.none(),
    st.sampled_from([MAX_REWARD_MAGNITUDE, -MAX_REWARD_MAGNITUDE, 10**400, -(10**400),
                     int(MAX_REWARD_MAGNITUDE) + 1, np.float64(2e12)]),
    st.floats(width=32).map(np.float32), st.integers(-5, 5).map(np.int64),
    st.sampled_from(["0.5", "nan", [1.0], {"r": 1}, complex(1, 0)]),
)
scalar = st.one_of(
    st.floats(), st.integers(), st.booleans(), any_text,
    st.sampled_from(["x" * MAX_METADATA_STRING, "x" * (MAX_METADATA_STRING + 1)]),
)
values = st.one_of(scalar, st.none(), st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
keys = st.one_of(any_text, st.sampled_from(["kd_reward", "kd_", "topic", "$and", "",
                                            "k" * MAX_METADATA_KEY_LENGTH,
                                            "k" * (MAX_METADATA_KEY_LENGTH + 1)]),
                 st.integers(0, 3))
metadata = st.one_of(
    st.none(),
    st.dictionaries(keys, values, max_size=4),
    st.integers(MAX_METADATA_KEYS, MAX_METADATA_KEYS + 1).map(
        lambda n: {f"k{i}": i for i in range(n)}),
    st.sampled_from(["topic=a", [("a", 1)]]),
)
namespaces = st.one_of(texts, not_text, st.just("n" * MAX_NAMESPACE_LENGTH),
                       st.just("n" * (MAX_NAMESPACE_LENGTH + 1)))


# ------------------------------------------------------------------ Episode


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.one_of(texts, not_text), response=st.one_of(texts, not_text), reward=numbers,
    meta=metadata, namespace=namespaces,
)
def test_an_episode_is_built_exactly_when_every_field_is_valid(
    query: Any, response: Any, reward: Any, meta: Any, namespace: Any
) -> None:
    valid = (
        valid_text(query, blank_ok=False) and valid_text(response, blank_ok=True)
        and valid_reward(reward) and valid_metadata(meta) and valid_namespace(namespace)
    )
    if not valid:
        with pytest.raises((InvalidEpisodeError, InvalidNamespaceError)):
            Episode(query, response, reward, meta, namespace)
        return
    episode = Episode(query, response, reward, meta, namespace)
    assert (episode.query, episode.response, episode.namespace) == (query, response, namespace)
    assert episode.reward is None or (type(episode.reward) is float
                                      and episode.reward == float(reward))
    assert episode.metadata == (meta or {}) and episode.metadata is not meta
    assert Episode.from_dict(episode.to_dict()) == episode


@given(st.one_of(numbers, st.tuples(numbers, numbers), st.lists(numbers, max_size=3)))
@example((-2.99e-99, np.float32(0.0)))  # compared in float32, -2.99e-99 is -0.0: not below 0
def test_a_reward_range_is_accepted_exactly_when_it_is_two_storable_increasing_numbers(
    value: Any,
) -> None:
    if value is None:  # no range declared
        assert validate_reward_range(value) is None
        return
    pair = isinstance(value, (tuple, list)) and len(value) == 2
    ok = pair and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        and abs(v) <= MAX_REWARD_MAGNITUDE for v in value
    ) and float(value[0]) < float(value[1])  # in float64, as the library compares
    if ok:
        assert validate_reward_range(value) == (float(value[0]), float(value[1]))
    else:
        with pytest.raises(InvalidArgumentError, match="reward_range"):
            validate_reward_range(value)


finite = st.floats(min_value=-1e6, max_value=1e6)


@given(finite, finite, finite)
def test_rewards_outside_a_declared_range_are_refused(a: float, b: float, reward: float) -> None:
    low, high = sorted((a, b))
    if low == high:
        return
    if low <= reward <= high:
        check_reward_in_range(reward, (low, high))
    else:
        with pytest.raises(InvalidRewardError, match="outside the declared reward_range"):
            check_reward_in_range(reward, (low, high))


# ------------------------------------------------------------------ reward binning

rewards = st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20)
bins = st.integers(min_value=2, max_value=128)
widths = st.floats(min_value=0.25, max_value=8.0)


@settings(max_examples=300, deadline=None)
@given(rewards, bins, widths)
def test_binning_any_finite_rewards(values: list[float], num_bins: int, width: float) -> None:
    try:
        binner = RewardBinner.fit(values, num_bins=num_bins, width=width)
    except InvalidRewardError as exc:  # only beyond +-1e12 or for spans floats cannot divide
        assert "rescale the rewards" in str(exc)
        assert max(abs(v) for v in values) > 1e11 or max(values) - min(values) < 1e-6 * max(
            abs(v) for v in values)
        return
    array = np.asarray(values)
    assert binner.low <= array.min() and binner.high >= array.max() and binner.low < binner.high
    assert binner.contains(values)
    assert np.all(np.isfinite(binner.centers)) and np.all(np.diff(binner.centers) > 0)
    order = np.argsort(array, kind="stable")
    unit = binner.to_unit(array)
    assert np.all((unit >= 0) & (unit <= 1))
    assert np.all(np.diff(unit[order]) >= 0)  # a larger reward never maps lower
    targets = binner.soft_targets(array)
    assert targets.shape == (len(values), num_bins)
    assert np.all(np.isfinite(targets)) and np.all(targets >= 0)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    reachable = np.clip(array, binner.centers[0], binner.centers[-1])
    span = binner.high - binner.low
    np.testing.assert_allclose(binner.expected(targets), reachable, atol=1e-3 * span)
    assert np.all(binner.std(targets) >= 0)
    assert RewardBinner.from_dict(binner.to_dict()) == binner


@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(1, 10), bins)
def test_all_equal_rewards_bin_around_their_value(value: float, n: int, num_bins: int) -> None:
    try:
        binner = RewardBinner.fit([value] * n, num_bins=num_bins)
    except InvalidRewardError as exc:  # beyond +-1e12 only
        assert "rescale the rewards" in str(exc) and abs(value) > 1e11
        return
    assert binner.low < value < binner.high
    assert np.all(np.isfinite(binner.soft_targets([value])))


@given(rewards, finite, finite)
def test_a_declared_range_is_used_as_is_or_refused(
    values: list[float], a: float, b: float
) -> None:
    low, high = sorted((a, b))
    if low == high:
        with pytest.raises((ConfigError, InvalidRewardError)):
            RewardBinner.fit(values, low=low, high=high)
        return
    inside = all(low <= v <= high for v in values)
    if inside:
        binner = RewardBinner.fit(values, low=low, high=high)
        assert (binner.low, binner.high) == (low, high)
    else:
        with pytest.raises(InvalidRewardError, match="outside the declared range"):
            RewardBinner.fit(values, low=low, high=high)


@given(st.lists(st.one_of(st.floats(), st.just(math.nan), st.just(-math.inf)), min_size=1))
def test_non_finite_rewards_are_refused(values: list[float]) -> None:
    if all(math.isfinite(v) for v in values):
        return
    with pytest.raises(InvalidRewardError, match="finite"):
        RewardBinner.fit(values)
