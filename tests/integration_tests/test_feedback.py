"""Feedback rates what it names and nothing else: trajectory keys are the memory's, a trajectory
of any length can be rated. Real Chroma, the real MiniLM (or stored vectors for long runs)."""

from __future__ import annotations

import numpy as np
import pytest

from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import EpisodeNotFoundError, InvalidEpisodeError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.trajectories import TRAJECTORY_KEYS, trajectory_episodes


def test_trajectory_keys_are_reserved_on_every_write_path(tmp_store: EpisodeStore) -> None:
    memory = DistilledEpisodicMemory(store=tmp_store)
    victim = memory.add_trajectory([("look", "north"), ("open", "door"), ("take", "key")],
                                   gamma=0.5, trajectory_id="victim")
    forged = {"trajectory_id": "victim", "trajectory_steps": 3}
    with pytest.raises(InvalidEpisodeError, match="reserved for the steps of a trajectory"):
        memory.add_episode("row 7", "text", episode_id="row7/0", metadata=forged)
    with pytest.raises(InvalidEpisodeError, match="reserved"):  # dicts (an ingest), Episodes
        memory.add_episodes([{"query": "row 8", "id": "row8/0", "metadata": forged}])
    with pytest.raises(InvalidEpisodeError, match="reserved"):
        memory.add_episodes([Episode("row 9", metadata={"trajectory_step": 0}, id="row9/0")])
    with pytest.raises(EpisodeNotFoundError):
        memory.record_feedback("row7", 1.0)
    assert [e.reward for e in memory.store.get(victim)] == [None, None, None]
    assert memory.store.count() == 3  # nothing forged was stored

    # Keys that describe the episode itself are a step's own (e.g. an export ingested again);
    # the length they claim is data, checked before anything is rated.
    claim = dict(zip(TRAJECTORY_KEYS, ("row10", 0, 10_000_000, 0.9), strict=True))
    memory.add_episode("row 10", "text", episode_id="row10/0", metadata=claim)
    with pytest.raises(EpisodeNotFoundError, match="'row10/9999999' is not stored"):
        memory.record_feedback("row10", 1.0)
    assert memory.store.get(["row10/0"])[0].reward is None
    assert memory.record_feedback("victim", 1.0).reward == 1.0  # the real one still rates
    assert [e.reward for e in memory.store.get(victim)] == [0.25, 0.5, 1.0]


@pytest.mark.slow
def test_a_trajectory_longer_than_chromas_largest_batch_is_rated(
    tmp_store: EpisodeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a client taking 500 rows per request: the rating crosses chunk boundaries at a tenth of
    # the rows. (Chroma does not enforce a patched limit; test_storage's update of more ids than
    # Chroma's real limit, 5,461 in Chroma 1.5, checks that it is honoured.)
    monkeypatch.setattr(tmp_store.client, "get_max_batch_size", lambda: 500)
    memory = DistilledEpisodicMemory(store=tmp_store)
    steps = 1_200  # over the client's maximum batch, in three requests
    episodes = trajectory_episodes([(f"step {i}", "") for i in range(steps)], None,
                                   gamma=0.999, trajectory_id="long", namespace=memory.namespace)
    vectors = np.random.default_rng(0).standard_normal((steps, 384)).astype(np.float32)
    memory.store.add(episodes, query_embeddings=vectors, response_embeddings=vectors)
    last = memory.record_feedback("long", 1.0)
    assert (last.id, last.reward) == ("long/1199", 1.0)
    rewards = [e.reward for e in memory.store.get([e.id for e in episodes])]
    assert rewards[0] == pytest.approx(0.999 ** (steps - 1), rel=1e-5)
    assert rewards[-1] == 1.0 and all(r is not None for r in rewards)
