"""load_chitchat against the real Chit Chat Challenge data (each load parses ~40 MB of JSON)."""

from __future__ import annotations

import statistics

import chitchat_dataset
import pytest

from langchain_kd_memory.datasets import RATING_KEYS, load_chitchat
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def rated() -> list[Episode]:
    return load_chitchat()


@pytest.mark.slow
def test_episodes_follow_the_conversations(rated: list[Episode]) -> None:
    raw = chitchat_dataset.Dataset()
    assert len(rated) > 3000
    for episode in rated[:100]:
        conversation = raw[episode.id]
        ratings = conversation["ratings"]
        assert episode.reward == pytest.approx(statistics.fmean(ratings[k] for k in RATING_KEYS))
        assert 1.0 <= episode.reward <= 10.0
        assert episode.metadata["conversation_id"] == episode.id
        assert {k: episode.metadata[k] for k in RATING_KEYS} == ratings
        turns = [" ".join(" ".join(m["text"] for m in t).split()) for t in conversation["messages"]]
        turns = [t for t in turns if t]
        prompt = (conversation.get("prompt") or "").strip()
        assert episode.metadata["prompt"] == prompt
        query_lines = episode.query.splitlines()
        assert query_lines == ([prompt] if prompt else []) + [
            query_lines[-2][:3] + turns[0], query_lines[-1][:3] + turns[1]
        ]
        response_lines = episode.response.splitlines()
        assert [line[3:] for line in response_lines] == turns[2:]
        assert {line[:3] for line in query_lines[-2:] + response_lines} <= {"A: ", "B: "}
        assert episode.created_at.isoformat().startswith(conversation["start"][:19])


@pytest.mark.slow
def test_limit_takes_a_prefix_of_one_deterministic_order(rated: list[Episode]) -> None:
    assert load_chitchat(20) == rated[:20]


@pytest.mark.slow
def test_unseeded_order_and_longer_queries(rated: list[Episode]) -> None:
    episodes = load_chitchat(20, seed=None, query_messages=4)
    ids = [e.id for e in episodes]
    assert ids == sorted(ids) and ids != [e.id for e in rated[:20]]
    assert all(len(e.query.splitlines()) >= 4 and e.response for e in episodes)


@pytest.mark.slow
def test_unrated_conversations_on_request(rated: list[Episode]) -> None:
    episodes = load_chitchat(400, rated_only=False)
    unrated = [e for e in episodes if e.reward is None]
    assert unrated and all("witty" not in e.metadata for e in unrated)
    assert {e.id for e in episodes if e.reward is not None} <= {e.id for e in rated}


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": -1}, {"limit": 2.5}, {"query_messages": 0}, {"query_messages": True}, {"seed": -1}],
)
def test_arguments_are_validated(kwargs: dict) -> None:
    with pytest.raises(InvalidArgumentError):
        load_chitchat(**kwargs)
