"""Episode, TrainingArrays and RewardEstimate: validation on construction, no I/O."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from langchain_kd_memory.episodes import (
    MAX_METADATA_KEYS,
    MAX_METADATA_STRING,
    MAX_NAMESPACE_LENGTH,
    Episode,
    RewardEstimate,
    TrainingArrays,
)
from langchain_kd_memory.errors import (
    InvalidEpisodeError,
    InvalidNamespaceError,
    InvalidRewardError,
)

scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
metadata = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: not k.startswith("kd_")), scalars, max_size=5
)
episodes = st.builds(
    Episode,
    query=st.text(min_size=1, max_size=50).filter(str.strip),
    response=st.text(max_size=50),
    reward=st.one_of(st.none(), st.floats(-1e12, 1e12)),
    metadata=metadata,
    namespace=st.text(min_size=1, max_size=MAX_NAMESPACE_LENGTH).filter(str.strip),
    id=st.text(min_size=1, max_size=20).filter(str.strip),
    created_at=st.datetimes(timezones=st.just(timezone.utc)),
)


def test_defaults() -> None:
    episode = Episode("What is the capital of France?")
    assert episode.response == ""
    assert episode.reward is None and not episode.is_rated
    assert episode.namespace == "default"
    assert episode.metadata == {}
    assert episode.created_at.tzinfo is not None
    assert episode.id != Episode("What is the capital of France?").id


def test_int_reward_becomes_float_and_naive_time_becomes_utc() -> None:
    episode = Episode("q", reward=np.int64(3), created_at=datetime(2024, 1, 2, 3, 4, 5))
    assert episode.reward == 3.0 and type(episode.reward) is float
    assert episode.created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("query", ["", "   \n", None, 3, b"bytes"])
def test_query_must_be_non_blank_text(query: object) -> None:
    with pytest.raises(InvalidEpisodeError, match="query"):
        Episode(query)  # type: ignore[arg-type]


def test_response_must_be_text() -> None:
    with pytest.raises(InvalidEpisodeError, match="response"):
        Episode("q", response=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("reward", [math.nan, math.inf, -math.inf, True, "1.0", [1.0], np.nan])
def test_reward_must_be_finite_number(reward: object) -> None:
    with pytest.raises(InvalidRewardError):
        Episode("q", reward=reward)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"a": [1, 2]}, "must be str, int, float or bool"),
        ({"a": {"b": 1}}, "must be str, int, float or bool"),
        ({"a": None}, "must be str, int, float or bool"),
        ({"a": math.nan}, "finite"),
        ({"kd_reward": 1.0}, "reserved prefix"),
        ({"": 1}, "non-empty str"),
        ({1: "x"}, "non-empty str"),
        ({"a": "x" * (MAX_METADATA_STRING + 1)}, "limit"),
        ({f"k{i}": i for i in range(MAX_METADATA_KEYS + 1)}, "limit"),
        ([("a", 1)], "must be a dict"),
    ],
)
def test_metadata_must_be_a_small_dict_of_scalars(meta: object, match: str) -> None:
    with pytest.raises(InvalidEpisodeError, match=match):
        Episode("q", metadata=meta)  # type: ignore[arg-type]


def test_metadata_is_copied() -> None:
    meta = {"a": 1}
    episode = Episode("q", metadata=meta)
    meta["a"] = 2
    assert episode.metadata == {"a": 1}


@pytest.mark.parametrize(
    "namespace", ["", "  ", None, 42, ("a", "b"), "x" * (MAX_NAMESPACE_LENGTH + 1)]
)
def test_namespace_must_be_a_short_non_blank_str(namespace: object) -> None:
    with pytest.raises(InvalidNamespaceError):
        Episode("q", namespace=namespace)  # type: ignore[arg-type]


@pytest.mark.parametrize("episode_id", ["", " ", None, 7])
def test_id_must_be_non_empty_str(episode_id: object) -> None:
    with pytest.raises(InvalidEpisodeError, match="id"):
        Episode("q", id=episode_id)  # type: ignore[arg-type]


def test_created_at_must_be_datetime() -> None:
    with pytest.raises(InvalidEpisodeError, match="created_at"):
        Episode("q", created_at="2024-01-01")  # type: ignore[arg-type]


@pytest.mark.slow
@given(episodes)
def test_dict_round_trip_is_exact(episode: Episode) -> None:
    again = Episode.from_dict(episode.to_dict())
    assert again == episode
    assert [type(v) for v in again.metadata.values()] == [
        type(v) for v in episode.metadata.values()
    ]


def test_from_dict_keeps_time_zone_offset() -> None:
    when = datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    again = Episode.from_dict(Episode("q", created_at=when).to_dict())
    assert again.created_at == when and again.created_at.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"query": "q", "colour": "red"}, "unknown episode fields"),
        ({"response": "r"}, "needs a 'query'"),
        ({"query": "q", "created_at": "yesterday"}, "ISO 8601"),
        ({"query": "q", "reward": "high"}, "finite number"),
        ("not a dict", "expected a dict"),
    ],
)
def test_from_dict_rejects_bad_input(data: object, match: str) -> None:
    with pytest.raises(InvalidEpisodeError, match=match):
        Episode.from_dict(data)  # type: ignore[arg-type]


def _arrays(n: int = 3, dim: int = 4) -> TrainingArrays:
    rng = np.random.default_rng(0)
    return TrainingArrays(
        rng.standard_normal((n, dim)), rng.standard_normal((n, dim)), np.arange(n, dtype=float)
    )


def test_training_arrays_are_float32_with_default_ids() -> None:
    arrays = _arrays()
    assert arrays.query_embeddings.dtype == np.float32
    assert arrays.response_embeddings.dtype == np.float32
    assert arrays.rewards.dtype == np.float32
    assert arrays.ids == ("0", "1", "2")
    assert len(arrays) == 3 and arrays.dimension == 4


def test_training_arrays_may_be_empty() -> None:
    empty = TrainingArrays(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0))
    assert len(empty) == 0 and empty.dimension == 4


@pytest.mark.parametrize(
    ("q_shape", "r_shape", "n_rewards", "match"),
    [
        ((3, 4), (3, 5), 3, "one shape"),
        ((3,), (3,), 3, "one shape"),
        ((3, 4), (2, 4), 3, "one shape"),
        ((3, 4), (3, 4), 2, "2 rewards for 3"),
    ],
)
def test_training_arrays_reject_inconsistent_shapes(
    q_shape: tuple[int, ...], r_shape: tuple[int, ...], n_rewards: int, match: str
) -> None:
    with pytest.raises(InvalidEpisodeError, match=match):
        TrainingArrays(np.zeros(q_shape), np.zeros(r_shape), np.zeros(n_rewards))


def test_training_arrays_reject_non_finite_rewards_and_wrong_ids() -> None:
    with pytest.raises(InvalidRewardError):
        TrainingArrays(np.zeros((2, 4)), np.zeros((2, 4)), [1.0, math.inf])
    with pytest.raises(InvalidEpisodeError, match="1 ids for 2"):
        TrainingArrays(np.zeros((2, 4)), np.zeros((2, 4)), [1.0, 2.0], ("a",))


def test_training_arrays_subset_and_concatenate_keep_rows_together() -> None:
    arrays = _arrays(4)
    picked = arrays.subset([3, 1])
    assert picked.ids == ("3", "1")
    np.testing.assert_array_equal(picked.query_embeddings, arrays.query_embeddings[[3, 1]])
    np.testing.assert_array_equal(picked.rewards, [3.0, 1.0])
    joined = TrainingArrays.concatenate([arrays.subset([0]), picked])
    assert joined.ids == ("0", "3", "1")
    np.testing.assert_array_equal(joined.response_embeddings[1], arrays.response_embeddings[3])
    with pytest.raises(InvalidEpisodeError, match="nothing to concatenate"):
        TrainingArrays.concatenate([])


def test_reward_estimate_mode_quantile_and_dict() -> None:
    estimate = RewardEstimate(
        expected=2.2,
        std=0.6,
        distribution=np.array([0.1, 0.6, 0.3]),
        bin_centers=np.array([1.0, 2.0, 3.0]),
        predicted_bin=1,
    )
    assert estimate.mode == 2.0
    assert estimate.quantile(0.05) == 1.0
    assert estimate.quantile(0.5) == 2.0
    assert estimate.quantile(1.0) == 3.0
    assert estimate.to_dict()["distribution"] == [0.1, 0.6, 0.3]
    with pytest.raises(ValueError):
        estimate.quantile(1.5)
