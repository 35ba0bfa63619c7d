"""Recall ranking as pure functions: value of each candidate, the blended score, the Document.

`DistilledEpisodicMemory` fetches the most similar episodes from Chroma and asks the value model
about the unrated ones; everything else happens here, without Chroma or torch:

    score = (1 - w) * similarity + w * value

where `value` is the reward mapped to [0, 1] by the reward range: observed when the episode is
rated, else the teacher's prediction from its stored query and response (when given), else 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.documents import Document

from langchain_kd_memory.episodes import Episode

NEUTRAL_VALUE = 0.5
"""The value of an episode whose reward is unknown and cannot be predicted."""


@dataclass(frozen=True)
class Candidate:
    """One recalled episode with its similarity to the query, value and blended score."""

    episode: Episode
    similarity: float
    value: float
    value_source: str
    score: float


def unit_value(reward: float, low: float, high: float) -> float:
    """`reward` mapped from [low, high] to [0, 1] (clipped); 0.5 when the range is empty."""
    if high <= low:
        return NEUTRAL_VALUE
    return min(1.0, max(0.0, (reward - low) / (high - low)))


def observed_range(episodes: Sequence[Episode]) -> tuple[float, float]:
    """The lowest and highest observed reward among `episodes` ((0, 0) if none is rated)."""
    observed = [e.reward for e in episodes if e.reward is not None]
    return (min(observed), max(observed)) if observed else (0.0, 0.0)


def blend(similarity: float, value: float, weight: float) -> float:
    """The recall score: `(1 - weight) * similarity + weight * value`."""
    return (1.0 - weight) * similarity + weight * value


def rank(
    hits: Sequence[tuple[Episode, float]],
    predicted: Mapping[int, float],
    reward_range: tuple[float, float],
    weight: float,
) -> list[Candidate]:
    """Score and sort `hits` ((episode, similarity) pairs), best first.

    Args:
        hits: Episodes with their cosine similarity to the query.
        predicted: Predicted reward of unrated hits, by their index in `hits`.
        reward_range: (low, high) used to map rewards to [0, 1].
        weight: The weight of the value in the score (0 = similarity only).
    """
    low, high = reward_range
    candidates = []
    for i, (episode, similarity) in enumerate(hits):
        if episode.reward is not None:
            value, source = unit_value(episode.reward, low, high), "observed"
        elif i in predicted:
            value, source = unit_value(predicted[i], low, high), "predicted"
        else:
            value, source = NEUTRAL_VALUE, "neutral"
        score = blend(similarity, value, weight)
        candidates.append(Candidate(episode, similarity, value, source, score))
    return sorted(candidates, key=lambda c: c.score, reverse=True)


def format_episode(query: str, response: str) -> str:
    """The `page_content` of a recalled episode."""
    return f"Query: {query}\nResponse: {response}" if response else f"Query: {query}"


def to_document(
    candidate: Candidate, *, model_namespace: str | None, model_version: int | None
) -> Document:
    """A recalled episode as a LangChain `Document` (see `DistilledEpisodicMemory`).

    `model_namespace` and `model_version` name the value model that answered (None, None when
    none is trained).
    """
    episode = candidate.episode
    metadata: dict[str, Any] = {
        **episode.metadata,
        "id": episode.id,
        "query": episode.query,
        "response": episode.response,
        "reward": episode.reward,
        "similarity": candidate.similarity,
        "value": candidate.value,
        "value_source": candidate.value_source,
        "score": candidate.score,
        "namespace": episode.namespace,
        "created_at": episode.created_at.isoformat(),
        "model_namespace": model_namespace,
        "model_version": model_version,
    }
    return Document(
        id=episode.id, page_content=format_episode(episode.query, episode.response),
        metadata=metadata,
    )
